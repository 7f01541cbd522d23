//! Garbage and malformed input: errors, never panics or hangs.
//!
//! Every test runs on tokio's paused clock: time moves only when no task can make progress,
//! so each timeout below fires when a side is stuck, never because the machine is slow.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "a test: a panic is its failure, and its numbers are small"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sshproto::{Client, ClientConfig, Error, Handlers, Server, ServerConfig};
use tokio::io::AsyncWriteExt;

fn server_config() -> Arc<ServerConfig> {
    let mut c = ServerConfig::new(ed25519()).allow_none_for(["daemon"]);
    c.common.handshake_timeout = Duration::from_secs(2);
    Arc::new(c)
}

fn client_config() -> Arc<ClientConfig> {
    let mut c = ClientConfig::new("daemon");
    c.common.handshake_timeout = Duration::from_secs(2);
    Arc::new(c)
}

/// Feeds `input` to a server and a client and expects both to fail cleanly.
async fn feed_both(input: Vec<u8>) {
    for server_side in [true, false] {
        let (ours, mut theirs) = tokio::io::duplex(1024 * 1024);
        // The whole input fits the pipe; `theirs` stays alive (unread) until the end.
        theirs.write_all(&input).await.expect("fill pipe");
        theirs.shutdown().await.expect("shutdown");
        let r = if server_side {
            tokio::time::timeout(
                Duration::from_secs(5),
                Server::accept(ours, server_config()),
            )
            .await
            .map(|r| r.map(|_| ()))
        } else {
            tokio::time::timeout(
                Duration::from_secs(5),
                Client::connect(ours, client_config()),
            )
            .await
            .map(|r| r.map(|_| ()))
        };
        let r = r.expect("hung on garbage");
        assert!(r.is_err(), "garbage accepted");
        drop(theirs);
    }
}

#[tokio::test(start_paused = true)]
async fn random_bytes() {
    for seed in 1..60u64 {
        let len = (seed as usize * 97) % 5000;
        feed_both(pattern(len, seed)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn version_line_then_random_bytes() {
    for seed in 1..60u64 {
        let mut input = b"SSH-2.0-Garbage\r\n".to_vec();
        input.extend(pattern((seed as usize * 131) % 3000, seed));
        feed_both(input).await;
    }
}

#[tokio::test(start_paused = true)]
async fn bad_version_lines() {
    feed_both(b"SSH-1.5-old\r\n".to_vec()).await;
    feed_both(vec![b'x'; 100_000]).await;
    feed_both(b"junk\r\n".repeat(20_000)).await;
    feed_both(
        b"SSH-2.0-"
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'a', 10_000))
            .collect(),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn bad_packet_lengths() {
    for len in [0u32, 1, 4, 0x7fff_ffff, 0xffff_ffff, 300_000] {
        let mut input = b"SSH-2.0-X\r\n".to_vec();
        input.extend_from_slice(&len.to_be_bytes());
        input.extend_from_slice(&[4, 20, 0, 0, 0, 0, 0, 0]);
        feed_both(input).await;
    }
    // Padding length larger than the packet; padding under 4 bytes.
    for (plen, pad) in [(12u32, 200u8), (12, 2), (5, 4)] {
        let mut input = b"SSH-2.0-X\r\n".to_vec();
        input.extend_from_slice(&plen.to_be_bytes());
        input.push(pad);
        input.extend(vec![20u8; plen as usize - 1]);
        feed_both(input).await;
    }
}

#[tokio::test(start_paused = true)]
async fn truncated_and_mangled_kexinit() {
    // A real KEXINIT captured from our own client, then cut and mangled.
    let (a, mut b) = tokio::io::duplex(1024 * 1024);
    let c = tokio::spawn(Client::connect(a, client_config()));
    let mut buf = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut b, &mut buf)
        .await
        .expect("read");
    drop(b);
    let _ = c.await;
    let hello = buf[..n].to_vec();
    for cut in (0..hello.len()).step_by(7) {
        feed_both(hello[..cut].to_vec()).await;
    }
    for i in (20..hello.len()).step_by(11) {
        let mut m = hello.clone();
        m[i] ^= 0x5a;
        feed_both(m).await;
    }
}

/// Flips one byte in the encrypted stream after the handshake: the receiver reports a
/// MAC failure (or a bad length) and both sides end without panicking.
#[tokio::test(start_paused = true)]
async fn corrupted_ciphertext_is_detected() {
    for cipher in sshproto::Cipher::ALL {
        let (a, a2) = tokio::io::duplex(256 * 1024);
        let (b, b2) = tokio::io::duplex(256 * 1024);
        // a2 <-> proxy <-> b2; the proxy corrupts client->server traffic once armed.
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let armed2 = armed.clone();
        tokio::spawn(async move {
            let (mut ar, mut aw) = tokio::io::split(a2);
            let (mut br, mut bw) = tokio::io::split(b2);
            let up = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match tokio::io::AsyncReadExt::read(&mut br, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if armed2.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        buf[n / 2] ^= 0x01;
                    }
                    if aw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = aw.shutdown().await;
            };
            let down = async {
                let _ = tokio::io::copy(&mut ar, &mut bw).await;
                let _ = bw.shutdown().await;
            };
            tokio::join!(up, down);
        });
        let mut client = ClientConfig::new("daemon");
        client.common.algorithms.cipher = vec![cipher];
        let server = ServerConfig::new(ed25519()).allow_none_for(["daemon"]);
        let (_sconn, cconn, sj, cj) = connect_over(a, b, server, client).await;
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = cconn.global_request("x", &[0u8; 1000]).await;
        let s = sj.await.expect("server task panicked");
        assert!(
            matches!(s, Err(Error::Mac) | Err(Error::PacketLength(_))),
            "{cipher}: {s:?}"
        );
        let c = cj.await.expect("client task panicked");
        assert!(c.is_err(), "{cipher}: client ended cleanly");
    }
}

/// Malformed connection-layer messages through a valid encrypted session.
#[tokio::test(start_paused = true)]
async fn malformed_messages_after_auth() {
    let mut payloads: Vec<Vec<u8>> = vec![
        vec![80],                                                  // global request without a name
        vec![80, 0, 0, 0, 9, b'x'],                                // truncated name
        vec![80, 0, 0, 0, 2, 0xff, 0xfe, 1],                       // invalid UTF-8 name
        vec![90, 0, 0, 0, 6, b'a', b't'],                          // truncated channel open
        vec![91, 0, 0, 0, 99, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], // confirm unknown channel
        vec![92, 0, 0, 0, 99, 0, 0, 0, 1],                         // failure for unknown channel
        vec![93, 0, 0, 0, 99, 0xff, 0xff, 0xff, 0xff],             // adjust unknown channel
        vec![94, 0, 0, 0, 99, 0, 0, 0, 1, b'a'],                   // data for unknown channel
        vec![94, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],              // bogus data length
        vec![95, 0, 0, 0, 0],                                      // truncated extended data
        vec![96],                                                  // EOF without recipient
        vec![97, 0, 0, 0, 99],                                     // close unknown channel
        vec![98, 0, 0, 0, 99, 0, 0, 0, 1, b'x', 1],                // request on unknown channel
        vec![99, 0, 0, 0, 99],                                     // success for unknown channel
        vec![81],                                                  // reply without a request
        vec![50, 0, 0, 0, 1],                                      // userauth after auth, truncated
        vec![21],                                                  // NEWKEYS out of the blue
        vec![31, 0, 0, 0, 0],                                      // ECDH reply out of the blue
        vec![200, 1, 2, 3],                                        // unknown message number
        vec![2],                                                   // IGNORE without data
        vec![4, 1],                                                // DEBUG truncated
        vec![5, 0, 0, 0, 4, b'n', b'o', b'p', b'e'],               // service request after auth
    ];
    for seed in 1..40u64 {
        let mut p = pattern((seed as usize * 37) % 200 + 1, seed);
        p[0] = 80 + (seed % 21) as u8;
        payloads.push(p);
    }
    for p in payloads {
        let handlers =
            Handlers::new().on_global_request("version", |r| r.succeed(vec![0, 0, 0, 10]));
        let server = ServerConfig::new(ed25519())
            .allow_none_for(["daemon"])
            .handlers(handlers);
        let (_sconn, cconn, sj, _cj) = connect(server, ClientConfig::new("daemon")).await;
        // Also have an open channel, so channel messages can hit a real one.
        let _ch = cconn.open_channel("x", b"").await;
        sshproto::testing::inject(&cconn, p.clone());
        let alive =
            tokio::time::timeout(Duration::from_secs(2), cconn.global_request("version", &[]))
                .await;
        match alive {
            Ok(Ok(r)) => assert!(r.success, "{p:?}"),
            Ok(Err(_)) | Err(_) => {
                // The server rejected the message and ended the connection.
                let r = tokio::time::timeout(Duration::from_secs(2), sj)
                    .await
                    .expect("server hung");
                let r = r.expect("server task panicked");
                assert!(r.is_err(), "{p:?}: server ended cleanly");
            }
        }
    }
}
