//! How shared state lives beside the requests: housekeeping that ends with its owner,
//! and the one lock policy.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Every `every` (the first time one period from now), runs the step that `step` gives,
/// until `step` gives none because what it tends is gone. Outside a Tokio runtime
/// (plain unit tests) nothing is started.
pub fn spawn_while_alive<F, Fut>(every: Duration, mut step: F)
where
    F: FnMut() -> Option<Fut> + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(run) = step() else { return };
            run.await;
        }
    });
}

/// Locks state that stays consistent through a panic elsewhere (every update is
/// finished before its guard drops), so a poisoned lock is taken over: the service
/// keeps serving rather than failing every later request.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
