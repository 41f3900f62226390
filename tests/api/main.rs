//! HTTP behaviour of the service, through its public interface.

mod browser;
mod helpers;
mod ops;
mod session;
mod tokens;
mod upstream;
