//! Corti's speech socket, opened with a token the service holds. The token travels in
//! the URL's query as Corti requires, so neither the URL nor a connection error's text
//! is ever logged or returned: errors are told by kind only.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::vend::VendError;

/// An open socket to Corti's speech API.
pub type UpstreamSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which of Corti's two speech sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Transcribe,
    Streams { interaction_id: String },
}

impl Target {
    /// The scope a token must carry for this socket.
    pub fn scope(&self) -> &'static str {
        match self {
            Target::Transcribe => "transcribe",
            Target::Streams { .. } => "streams",
        }
    }

    /// The path under the speech API's base.
    pub fn path(&self) -> String {
        match self {
            Target::Transcribe => "/audio-bridge/v2/transcribe".into(),
            Target::Streams { interaction_id } => {
                format!("/audio-bridge/v2/interactions/{interaction_id}/streams")
            }
        }
    }
}

/// Whether an interaction id may be put into the upstream path as it is: Corti's ids
/// are UUIDs; anything else that is not a plain token is refused before any call.
pub fn valid_interaction_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The URL of `target` at `base` for `tenant`, carrying `token`.
fn url(base: &str, target: &Target, tenant: &str, token: &str) -> String {
    let query = serde_urlencoded::to_string([
        ("tenant-name", tenant),
        ("token", &format!("Bearer {token}")),
    ])
    .unwrap_or_default();
    // `+` for a space is form encoding; a URL query is safest with `%20`.
    let query = query.replace('+', "%20");
    format!("{}{}?{query}", base.trim_end_matches('/'), target.path())
}

/// Frames and messages larger than this from Corti end the stream (transcripts are
/// small JSON; the cap keeps one stream's memory bounded).
pub const MAX_DOWNSTREAM_MESSAGE: usize = 1 << 20;

/// Opens the socket, within `timeout`.
pub async fn connect(
    base: &str,
    target: &Target,
    tenant: &str,
    token: &str,
    timeout: Duration,
) -> Result<UpstreamSocket, VendError> {
    let config = WebSocketConfig::default()
        // Small read buffers: a relay holds thousands of mostly idle sockets.
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_DOWNSTREAM_MESSAGE))
        .max_frame_size(Some(MAX_DOWNSTREAM_MESSAGE));
    let url = url(base, target, tenant, token);
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(VendError::SpeechUpstreamTimeout),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(e)) => Err(VendError::SpeechUpstream(kind(&e))),
    }
}

/// What went wrong, without any text that could hold the URL.
fn kind(e: &WsError) -> String {
    match e {
        WsError::Http(response) => format!("HTTP {}", response.status().as_u16()),
        WsError::Io(io) => format!("connection failed ({:?})", io.kind()),
        WsError::Tls(_) => "TLS handshake failed".into(),
        WsError::Url(_) => "the speech API URL is not usable".into(),
        WsError::Protocol(_) => "WebSocket handshake failed".into(),
        _ => "connection failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_carries_tenant_and_bearer_token_encoded() {
        let u = url(
            "wss://api.eu.corti.app/",
            &Target::Transcribe,
            "base",
            "a.b+c",
        );
        assert_eq!(
            u,
            "wss://api.eu.corti.app/audio-bridge/v2/transcribe?tenant-name=base&token=Bearer%20a.b%2Bc"
        );
        let s = Target::Streams {
            interaction_id: "0a1b-2c".into(),
        };
        assert!(url("ws://127.0.0.1:9", &s, "t", "x").starts_with(
            "ws://127.0.0.1:9/audio-bridge/v2/interactions/0a1b-2c/streams?tenant-name=t&"
        ));
    }

    #[test]
    fn interaction_ids_are_plain_tokens() {
        assert!(valid_interaction_id("6c2a4c0e-9f9e-4a8c-8d4e-1f2a3b4c5d6e"));
        for bad in ["", "../x", "a/b", "a?b", "a%2F", &"x".repeat(65)] {
            assert!(!valid_interaction_id(bad), "{bad}");
        }
    }
}
