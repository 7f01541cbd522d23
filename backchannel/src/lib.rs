//! The back-channel between a container VM's tether and the VCH port layer, below and
//! beside SSH: the serial synchronisation handshake that precedes every SSH connection, and
//! the names and payload layouts of the custom SSH requests. Both roles live here so the
//! tether (server) and the harness (client, playing the port layer) cannot drift apart.
//!
//! Every byte layout here is pinned by the tests at the bottom; a change that breaks them is
//! a wire change a VIC port layer would notice.
//!
//! The README follows: what crosses the back-channel and the other transports during an
//! exec, step by step.
#![doc = include_str!("../README.md")]

pub mod chunks;
pub mod handshake;
pub mod ports;
pub mod requests;
pub mod services;

/// Entry points for the fuzz target (`fuzz/`) and tests: the handshake roles with their
/// random token given, so a run is reproducible. Not a stable API.
#[doc(hidden)]
pub mod testing {
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWrite};

    pub use crate::handshake::HandshakeError;

    /// [`crate::handshake::server`] drawing `y` as its token.
    pub async fn server_with_token<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        timeout: Duration,
        y: u8,
    ) -> Result<(), HandshakeError> {
        crate::handshake::server_with_token(s, timeout, y).await
    }

    /// [`crate::handshake::client`] drawing `x` as its token.
    pub async fn client_with_token<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        timeout: Duration,
        x: u8,
    ) -> Result<(), HandshakeError> {
        crate::handshake::client_with_token(s, timeout, x).await
    }
}
