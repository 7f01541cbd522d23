//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sshproto::{Client, ClientConfig, Connection, PrivateKey, Server, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

pub fn key(name: &str) -> PrivateKey {
    let text = std::fs::read(key_path(name)).expect("read key");
    PrivateKey::from_pem(&text).expect("parse key")
}

pub fn rsa512() -> PrivateKey {
    key("rsa512.pem")
}

pub fn rsa2048() -> PrivateKey {
    key("rsa2048")
}

pub fn ed25519() -> PrivateKey {
    key("ed25519")
}

/// Logs to the test output when RUST_LOG-like debugging is wanted (`SSHPROTO_TRACE=1`).
pub fn init_tracing() {
    if std::env::var_os("SSHPROTO_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_test_writer()
            .try_init();
    }
}

/// Connects our client to our server over a stream pair, spawning both drivers.
pub async fn connect_over<A, B>(
    a: A,
    b: B,
    server: ServerConfig,
    client: ClientConfig,
) -> (
    Connection,
    Connection,
    tokio::task::JoinHandle<Result<(), sshproto::Error>>,
    tokio::task::JoinHandle<Result<(), sshproto::Error>>,
)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = tokio::spawn(Server::accept(a, Arc::new(server)));
    let c = Client::connect(b, Arc::new(client))
        .await
        .expect("client handshake");
    let s = s.await.expect("join").expect("server handshake");
    let (sconn, sdrv) = s;
    let (cconn, cdrv) = c;
    let sj = tokio::spawn(sdrv);
    let cj = tokio::spawn(cdrv);
    (sconn, cconn, sj, cj)
}

/// Connects over an in-memory pipe.
pub async fn connect(
    server: ServerConfig,
    client: ClientConfig,
) -> (
    Connection,
    Connection,
    tokio::task::JoinHandle<Result<(), sshproto::Error>>,
    tokio::task::JoinHandle<Result<(), sshproto::Error>>,
) {
    init_tracing();
    let (a, b) = tokio::io::duplex(256 * 1024);
    connect_over(a, b, server, client).await
}

/// A small deterministic byte pattern generator (xorshift) for transfer checks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
