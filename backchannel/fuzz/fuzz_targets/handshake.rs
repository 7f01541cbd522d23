//! The back-channel below SSH: the serial handshake in both roles against a scripted hostile
//! peer, then an honest peer that must still get in; and the custom requests' payload
//! parsers on arbitrary bytes, which must round-trip whatever they accept.
//!
//! The clock is paused, so a read that would wait for the handshake timeout ends at once,
//! and both ends run on one thread: a run is reproducible.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use backchannel::requests as req;
use backchannel::testing::{client_with_token, server_with_token, HandshakeError};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The honest peer's retries before it must be in (the port layer retries without limit).
const HONEST_TRIES: usize = 8;

#[derive(Debug, Arbitrary)]
enum Step {
    /// Bytes on the line.
    Send(Vec<u8>),
    /// Let the side under test run (and time out, if it waits).
    Pause(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// The tether's role (server) or the port layer's (client) is under test.
    test_server: bool,
    /// The tokens both sides draw.
    ours: u8,
    theirs: u8,
    /// What the hostile peer does first.
    script: Vec<Step>,
    /// Request payloads for the parsers.
    payloads: Vec<Vec<u8>>,
}

/// Reads whatever is already there, without waiting.
async fn drain<R: AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), r.read(&mut buf)).await {
        if n == 0 {
            return;
        }
    }
}

async fn hostile_then_honest(input: &Input) {
    // Room for every byte either side can write, so no write waits for a reader.
    let cap = 64 * 1024 + input.script.len() * 16;
    let (mut peer, mut ours) = tokio::io::duplex(cap);
    let (test_server, token) = (input.test_server, input.ours);
    // The side under test, as the tether (or the port layer) runs it: attempt after attempt
    // until one succeeds or the line closes. Bounded: each failed attempt costs the
    // hostile peer bytes or a timeout, and the run must end.
    let under_test = tokio::spawn(async move {
        for _ in 0..10_000 {
            let r = if test_server {
                server_with_token(&mut ours, TIMEOUT, token).await
            } else {
                client_with_token(&mut ours, TIMEOUT, token).await
            };
            match r {
                Ok(()) => return Some(ours),
                Err(HandshakeError::Closed) => return None,
                Err(_) => {}
            }
        }
        None
    });
    for step in &input.script {
        match step {
            Step::Send(b) => {
                if peer.write_all(b).await.is_err() {
                    break;
                }
            }
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(u64::from(*ms))).await,
        }
        if under_test.is_finished() {
            break;
        }
    }
    // The honest peer: whatever the hostile one left behind, it gets in after a few tries.
    if !under_test.is_finished() {
        drain(&mut peer).await;
        let mut ok = false;
        for _ in 0..HONEST_TRIES {
            let r = if test_server {
                client_with_token(&mut peer, TIMEOUT, input.theirs).await
            } else {
                server_with_token(&mut peer, TIMEOUT, input.theirs).await
            };
            if r.is_ok() {
                ok = true;
                break;
            }
            if under_test.is_finished() {
                break;
            }
        }
        if ok {
            // Both ends agree, and the byte after the handshake is the first SSH byte.
            let Ok(Some(mut ours)) = under_test.await else {
                panic!("the honest peer finished the handshake but our side did not");
            };
            peer.write_all(b"S").await.ok();
            ours.write_all(b"T").await.ok();
            let (mut a, mut b) = ([0u8; 1], [0u8; 1]);
            ours.read_exact(&mut a).await.ok();
            peer.read_exact(&mut b).await.ok();
            assert_eq!(
                (a, b),
                (*b"S", *b"T"),
                "bytes lost or added after the handshake"
            );
            return;
        }
        // Our side can still be mid-attempt with the peer's last bytes: it may only
        // succeed or end, never panic.
        drop(peer);
        let _ = under_test.await;
        panic!("an honest peer did not get in after {HONEST_TRIES} tries");
    }
    drop(peer);
    let _ = under_test.await;
}

fn payloads(ps: &[Vec<u8>]) {
    for p in ps {
        if let Some(v) = req::parse_version(p) {
            assert_eq!(v.to_be_bytes(), p[..4]);
        }
        if let Some(ids) = req::parse_id_list(p) {
            assert!(ids.iter().all(|id| !id.is_empty() && !id.contains(',')));
            assert_eq!(req::parse_id_list(&req::id_list_payload(&ids)), Some(ids));
        }
        if let Some(ws) = req::WindowSize::parse(p) {
            assert_eq!(ws.payload(), p[..16]);
        }
        if let Some(name) = req::parse_signal(p) {
            let again = req::signal_payload(&name);
            assert_eq!(again, p[..again.len()]);
        }
    }
}

fuzz_target!(|input: Input| {
    payloads(&input.payloads);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    rt.block_on(hostile_then_honest(&input));
});
