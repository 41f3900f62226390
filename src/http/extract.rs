//! Extractors: who is asking, checked before a handler runs. A handler that takes one
//! runs only for a caller who passed; anyone else gets the extractor's [`Problem`].
//!
//! The vend and the relay upgrade do not use these: every attempt of theirs, refused or
//! not, is one audit event, so they check the session inside `Vendor::prepare`.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use crate::catalog::ProblemType;
use crate::session::{Session, SessionError};
use crate::vend::{verify_first, Credentials, SESSION_KEYS_UNAVAILABLE};

use super::problem::Problem;
use super::rate_limit::admit_side;
use super::tokens::credentials;
use super::AppState;

/// A caller with a valid session (bearer or cookie), admitted by the side endpoints'
/// per-address limit first, so garbage costs no signature check.
pub struct SignedIn(pub Session);

/// A signed-in caller holding the audit reader role (`AUDIT_READER_ROLE`).
pub struct AuditReader(pub Session);

type Checked<T> = Pin<Box<dyn Future<Output = Result<T, Problem>>>>;

impl FromRequest for SignedIn {
    type Error = Problem;
    type Future = Checked<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { signed_in(&req, "a valid session is required").await })
    }
}

impl FromRequest for AuditReader {
    type Error = Problem;
    type Future = Checked<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let SignedIn(session) = signed_in(
                &req,
                "a valid session with the audit reader role is required (Authorization: Bearer)",
            )
            .await?;
            let role = &state(&req)?.audit_reader_role;
            if !session.roles.iter().any(|r| r == role) {
                tracing::warn!(subject = %session.subject.escaped(), path = req.path(), "audit read refused: reader role missing");
                return Err(Problem::new(
                    ProblemType::AuditReaderRoleRequired,
                    "this session does not have the audit reader role",
                )
                .at(&req));
            }
            tracing::info!(subject = %session.subject.escaped(), path = req.path(), "audit reader admitted");
            Ok(AuditReader(session))
        })
    }
}

/// The side limit, then the first credential that verifies. `unauthenticated` is the
/// 401's detail: what this endpoint needs.
async fn signed_in(req: &HttpRequest, unauthenticated: &'static str) -> Result<SignedIn, Problem> {
    let state = state(req)?;
    admit_side(req, state).await?;
    let refused = || Problem::unauthenticated(unauthenticated).at(req);
    let tokens = match credentials(req, &state.cookie_name) {
        Credentials::Bearer(t) => vec![t],
        Credentials::Cookie(ts) => ts,
        Credentials::Malformed | Credentials::None => return Err(refused()),
    };
    match verify_first(&state.vendor.sessions, &tokens).await {
        Ok(session) => Ok(SignedIn(session)),
        Err(SessionError::KeysUnavailable) => Err(Problem::new(
            ProblemType::SessionKeysUnavailable,
            SESSION_KEYS_UNAVAILABLE,
        )
        .at(req)),
        Err(_) => Err(refused()),
    }
}

fn state(req: &HttpRequest) -> Result<&AppState, Problem> {
    req.app_data::<web::Data<AppState>>()
        .map(|data| data.get_ref())
        .ok_or_else(|| {
            tracing::error!("the application state is not registered on this route");
            Problem::new(ProblemType::NotReady, "the service is not ready").at(req)
        })
}
