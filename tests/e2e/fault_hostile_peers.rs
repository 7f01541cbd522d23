//! Hostile peers on the back-channel: random bytes, a half-finished handshake, an SSH
//! client that opens thousands of channels and sends huge window adjustments, a peer that
//! stops answering (keep-alives included) while holding the line open. After each the
//! tether is still up and the next honest client (the VCH's key) gets in and sees the
//! container. The test plays the port layer (`--vch tcp://`), so it can be each of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backchannel::{handshake, requests as req};
use sshproto::{Client, ClientConfig, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The VM's next back-channel connection (QEMU redials a second after a drop).
async fn next_line(listener: &TcpListener) -> TcpStream {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
        .await
        .expect("the VM dials the port layer")
        .expect("accept");
    tcp
}

/// Serial handshake then SSH over `io`.
async fn log_in<S>(mut io: S, key: sshproto::PrivateKey) -> Result<Connection, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut shaken = false;
    for _ in 0..30 {
        if handshake::client(&mut io, Duration::from_secs(1))
            .await
            .is_ok()
        {
            shaken = true;
            break;
        }
    }
    if !shaken {
        return Err("serial handshake".into());
    }
    let (conn, driver) = Client::connect(io, Arc::new(ClientConfig::new("daemon").key(key)))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    Ok(conn)
}

/// The honest port layer gets in on the next connection and sees the container.
async fn honest(listener: &TcpListener, key: &sshproto::PrivateKey, id: &str, after: &str) {
    let conn = log_in(next_line(listener).await, key.clone())
        .await
        .unwrap_or_else(|e| panic!("after {after}: the honest client did not get in: {e}"));
    let ids = conn
        .global_request(req::GLOBAL_CONTAINER_IDS, &[])
        .await
        .unwrap_or_else(|e| panic!("after {after}: container-ids: {e}"));
    assert_eq!(
        req::parse_id_list(&ids.data),
        Some(vec![id.to_owned()]),
        "after {after}"
    );
    conn.disconnect("done");
}

/// Pseudo-random bytes (xorshift), the same every run.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn hostile_peers_leave_the_back_channel_to_the_honest_one() {
    let vch = e2e::Vch::new();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let port = listener.local_addr().expect("address").port();
    let id = vch.run_detached(&[
        "--name",
        "hostile",
        "--network",
        "none",
        "--vch",
        &format!("tcp://127.0.0.1:{port}"),
        "busybox",
        "sh",
        "-c",
        "echo up; exec sleep 600",
    ]);
    let (key, _) = qemu_harness::keys::client_key(vch.dir.path()).expect("the VCH's client key");
    let debug_log = vch
        .dir
        .path()
        .join("vms")
        .join(&id[..12])
        .join("tether.debug");

    rt.block_on(async {
        // Random bytes, then the line drops.
        let mut tcp = next_line(&listener).await;
        let _ = tcp.write_all(&noise(256 * 1024)).await;
        drop(tcp);
        honest(&listener, &key, &id, "random bytes").await;

        // A handshake begun and abandoned: a SYN and then silence, with the line held.
        let mut tcp = next_line(&listener).await;
        tcp.write_all(&[handshake::SYN, 7]).await.expect("write");
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(tcp);
        honest(&listener, &key, &id, "a half handshake").await;

        // The serial handshake done, then half an SSH version exchange.
        let mut tcp = next_line(&listener).await;
        let mut shaken = false;
        for _ in 0..30 {
            if handshake::client(&mut tcp, Duration::from_secs(1))
                .await
                .is_ok()
            {
                shaken = true;
                break;
            }
        }
        assert!(shaken, "serial handshake");
        tcp.write_all(b"SSH-2.0-hal").await.expect("write");
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(tcp);
        honest(&listener, &key, &id, "half an SSH version").await;

        // Thousands of channels on one connection, and window adjustments of 4 GiB each on
        // every channel number the tether may have given out.
        let conn = log_in(next_line(&listener).await, key.clone())
            .await
            .expect("log in");
        let (mut opened, mut refused) = (Vec::new(), 0u32);
        for _ in 0..3000 {
            match conn.open_channel(req::CHANNEL_ATTACH, id.as_bytes()).await {
                Ok(ch) => opened.push(ch),
                Err(_) => refused += 1,
            }
            if conn.is_closed() {
                break;
            }
        }
        for recipient in 0..300u32 {
            let mut adjust = vec![93];
            adjust.extend_from_slice(&recipient.to_be_bytes());
            adjust.extend_from_slice(&u32::MAX.to_be_bytes());
            for _ in 0..4 {
                sshproto::testing::inject(&conn, adjust.clone());
            }
        }
        eprintln!(
            "hostile peers: 3000 channel opens: {} accepted, {refused} refused; connection {}",
            opened.len(),
            if conn.is_closed() {
                "closed by the tether"
            } else {
                "still open"
            }
        );
        drop(opened);
        conn.disconnect("done");
        honest(&listener, &key, &id, "thousands of channels").await;

        // A peer that stops answering anything (keep-alives included) but holds the line:
        // the tether gives up on it (3 missed 10 s keep-alives) and waits for the next.
        let ends = || {
            std::fs::read_to_string(&debug_log)
                .unwrap_or_default()
                .matches("VCH disconnected from the back-channel")
                .count()
        };
        let conn = log_in(Relay::start(next_line(&listener).await).await, key.clone())
            .await
            .expect("log in");
        // The tether's log reaches the host a little late: the earlier sessions' ends are
        // all in it once it has this session's start.
        let started = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(&debug_log)
                .unwrap_or_default()
                .matches("VCH connected on the back-channel")
                .count()
                > ends()
        });
        assert!(
            started,
            "the relayed session's start is not in the tether's log"
        );
        let before = ends();
        let frozen_at = Instant::now();
        FREEZE.store(true, std::sync::atomic::Ordering::SeqCst);
        let noticed = loop {
            if ends() > before {
                break Some(frozen_at.elapsed());
            }
            if frozen_at.elapsed() > Duration::from_secs(90) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        drop(conn);
        RELAY_DROP.store(true, std::sync::atomic::Ordering::SeqCst);
        let noticed = noticed.expect("the tether never gave up on the silent peer");
        eprintln!("hostile peers: the tether dropped the silent peer after {noticed:.1?}");
        honest(&listener, &key, &id, "a silent peer").await;
    });
    // The container went on all along: one launch, still up.
    let doc = vch.inspect("hostile");
    assert_eq!(doc["State"], "Up", "{doc}");
    assert_eq!(vch.cmd(&["logs", "hostile"]).1, "up\n");
}

static FREEZE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static RELAY_DROP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A relay between the VM's line and our client that, once [`FREEZE`] is set, moves no more
/// bytes either way but keeps the line open (until [`RELAY_DROP`]).
struct Relay;

impl Relay {
    async fn start(line: TcpStream) -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut lr, mut lw) = line.into_split();
        let (mut tr, mut tw) = tokio::io::split(theirs);
        let frozen = || FREEZE.load(std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while !frozen() {
                let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), lr.read(&mut buf)).await
                else {
                    continue;
                };
                if n == 0 || frozen() || tw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            while !RELAY_DROP.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(lr);
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while !frozen() {
                let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), tr.read(&mut buf)).await
                else {
                    continue;
                };
                if n == 0 || frozen() || lw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            while !RELAY_DROP.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(lw);
        });
        ours
    }
}
