//! Our client against our server over an in-memory pipe.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "a test: a panic is its failure, and its numbers are small"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sshproto::{
    decode_name_list, encode_name_list, Algorithms, Channel, Cipher, ClientConfig, Error, Handlers,
    HostKeyCheck, KexAlgorithm, Mac, OpenFailureReason, ServerConfig, SignatureAlgorithm,
    WindowChange,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that accepts `session` channels and echoes their data back.
fn echo_handlers() -> Handlers {
    Handlers::new().on_channel_open(|open| {
        if open.channel_type() != "session" {
            let msg = format!("unknown channel type {}", open.channel_type());
            open.reject(OpenFailureReason::UNKNOWN_CHANNEL_TYPE, &msg);
            return;
        }
        let Ok(ch) = open.accept() else { return };
        tokio::spawn(async move {
            let (mut r, mut w) = ch.split();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = w.send_exit_status(0);
            let _ = w.eof();
            w.close();
        });
    })
}

async fn echo_round_trip(ch: &mut Channel, data: &[u8]) {
    let mut got = vec![0u8; data.len()];
    let (mut r, mut w) = tokio::io::split(ch);
    let data2 = data.to_vec();
    let writer = async move {
        w.write_all(&data2).await.expect("write");
        w
    };
    let reader = async {
        r.read_exact(&mut got).await.expect("read");
    };
    let (_w, ()) = tokio::join!(writer, reader);
    assert_eq!(got, data);
}

#[tokio::test]
async fn handshake_and_echo() {
    let server = ServerConfig::new(ed25519())
        .allow_none_for(["daemon"])
        .handlers(echo_handlers());
    let client = ClientConfig::new("daemon");
    let (sconn, cconn, _sj, _cj) = connect(server, client).await;
    let info = cconn.info().expect("info");
    assert_eq!(info.peer_version, "SSH-2.0-Go");
    assert!(info.strict_kex);
    assert_eq!(sconn.info().expect("info").peer_version, "SSH-2.0-VIC");
    assert_eq!(sconn.info().expect("info").user, "daemon");
    let mut ch = cconn.open_session().await.expect("open");
    echo_round_trip(&mut ch, b"hello world").await;
    ch.eof().expect("eof");
    let mut rest = Vec::new();
    ch.read_to_end(&mut rest).await.expect("read to end");
    assert!(rest.is_empty());
    ch.wait_closed().await;
    assert_eq!(ch.exit_status(), Some(0));
}

#[tokio::test]
async fn every_algorithm_combination() {
    let rsa512 = rsa512();
    let rsa2048 = rsa2048();
    let ed = ed25519();
    let mut combos = 0;
    for kex in KexAlgorithm::ALL {
        for host in SignatureAlgorithm::ALL {
            let key = match host {
                SignatureAlgorithm::Ed25519 => ed.clone(),
                SignatureAlgorithm::RsaSha512 => rsa2048.clone(),
                _ => rsa512.clone(),
            };
            for cipher in Cipher::ALL {
                let macs: Vec<Option<Mac>> = if cipher.is_aead() {
                    vec![None]
                } else {
                    Mac::ALL.iter().copied().map(Some).collect()
                };
                for mac in macs {
                    for strict in [true, false] {
                        let algs = Algorithms {
                            kex: vec![kex],
                            host_key: vec![host],
                            cipher: vec![cipher],
                            mac: mac.map(|m| vec![m]).unwrap_or_else(|| Mac::ALL.to_vec()),
                        };
                        let mut server = ServerConfig::new(key.clone())
                            .allow_none_for(["daemon"])
                            .handlers(echo_handlers());
                        server.common.strict_kex = strict;
                        let mut client = ClientConfig::new("daemon")
                            .host_key_check(HostKeyCheck::Known(vec![key.public_key().clone()]));
                        client.common.algorithms = algs;
                        let (_s, cconn, _sj, _cj) = connect(server, client).await;
                        let info = cconn.info().expect("info");
                        assert_eq!(info.algorithms.kex, kex);
                        assert_eq!(info.algorithms.host_key, host);
                        assert_eq!(info.algorithms.cipher_c2s, cipher);
                        assert_eq!(info.algorithms.cipher_s2c, cipher);
                        assert_eq!(info.algorithms.mac_c2s, mac);
                        assert_eq!(info.strict_kex, strict);
                        let mut ch = cconn.open_session().await.expect("open");
                        echo_round_trip(&mut ch, &pattern(100_000, combos)).await;
                        cconn.disconnect("done");
                        combos += 1;
                    }
                }
            }
        }
    }
    assert_eq!(combos, 2 * 4 * 5 * 2);
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a tether-like server knows about its sessions.
fn tether_handlers(log: Arc<Mutex<Vec<String>>>) -> Handlers {
    let log_open = log.clone();
    Handlers::new()
        .on_channel_open(move |open| {
            if open.channel_type() != "attach" {
                let msg = format!("unknown channel type {}", open.channel_type());
                open.reject(OpenFailureReason::UNKNOWN_CHANNEL_TYPE, &msg);
                return;
            }
            let id = String::from_utf8_lossy(open.data()).into_owned();
            if id != "abc" {
                open.reject(
                    OpenFailureReason::ADMINISTRATIVELY_PROHIBITED,
                    &format!("session {id} is invalid"),
                );
                return;
            }
            let Ok(ch) = open.accept() else { return };
            let log = log_open.clone();
            let mut requests = ch.requests();
            tokio::spawn(async move {
                let stderr = ch.stderr_writer();
                let (mut reader, mut writer) = ch.split();
                let mut stderr = stderr;
                while let Some(req) = requests.next().await {
                    log.lock()
                        .unwrap()
                        .push(format!("{}:{}", req.name(), hexs(req.data())));
                    match req.name() {
                        "ping" => {
                            let ok = req.data() == b"Ping";
                            req.reply(ok);
                        }
                        "unblock" => {
                            if req.data() != b"Unblock" {
                                req.fail();
                                continue;
                            }
                            req.succeed();
                            // The session "launches": output on both streams.
                            writer.write_all(b"out from abc\n").await.expect("stdout");
                            stderr.write_all(b"err from abc\n").await.expect("stderr");
                        }
                        "window-change" => {
                            let wc = req.window_change().expect("window-change payload");
                            log.lock().unwrap().push(format!("{}x{}", wc.cols, wc.rows));
                            req.fail();
                        }
                        "close-stdin" => {
                            req.succeed();
                            // Echo stdin until the client's EOF, then finish.
                            let mut input = Vec::new();
                            reader.read_to_end(&mut input).await.expect("stdin");
                            writer.write_all(&input).await.expect("echo");
                            writer.send_exit_status(7).expect("exit-status");
                            writer.eof().expect("eof");
                            writer.close();
                            break;
                        }
                        _ => req.fail(),
                    }
                }
            });
        })
        .on_global_request("version", |req| req.succeed(10u32.to_be_bytes().to_vec()))
        .on_global_request("container-ids", |req| {
            req.succeed(encode_name_list(&["abc", "def"]))
        })
        .on_unknown_global_request(|req| {
            let msg = format!("unknown global request type: {}", req.name());
            req.fail_with(msg.into_bytes())
        })
}

#[tokio::test]
async fn attach_channel_and_custom_requests() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let server = ServerConfig::new(rsa512())
        .allow_none_for(["daemon"])
        .handlers(tether_handlers(log.clone()));
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let pushed2 = pushed.clone();
    let mut client = ClientConfig::new("daemon").handlers(Handlers::new().on_global_request(
        "container-ids",
        move |req| {
            *pushed2.lock().unwrap() = decode_name_list(req.data()).expect("name-list");
            req.succeed(Vec::new());
        },
    ));
    // What the original port layer offers: ssh-rsa only, AES-CTR, curve25519@libssh.
    client.common.algorithms = Algorithms {
        kex: vec![KexAlgorithm::Curve25519Sha256Libssh],
        host_key: vec![SignatureAlgorithm::RsaSha1],
        cipher: vec![Cipher::Aes128Ctr, Cipher::Aes256Ctr],
        mac: vec![Mac::HmacSha256Etm, Mac::HmacSha256],
    };
    client.common.strict_kex = false;
    let (sconn, cconn, sj, cj) = connect(server, client).await;
    assert_eq!(
        cconn.info().expect("info").algorithms.host_key,
        SignatureAlgorithm::RsaSha1
    );

    // Global requests, PL -> tether.
    let r = cconn
        .global_request("container-ids", &[])
        .await
        .expect("container-ids");
    assert!(r.success);
    assert_eq!(
        r.data,
        [0, 0, 0, 7, b'a', b'b', b'c', b',', b'd', b'e', b'f']
    );
    assert_eq!(decode_name_list(&r.data).expect("decode"), ["abc", "def"]);
    let r = cconn.global_request("version", &[]).await.expect("version");
    assert_eq!((r.success, r.data.as_slice()), (true, &[0u8, 0, 0, 10][..]));
    let r = cconn.global_request("bogus", &[]).await.expect("bogus");
    assert!(!r.success);
    assert_eq!(r.data, b"unknown global request type: bogus");

    // Tether -> PL push.
    let r = sconn
        .global_request("container-ids", &encode_name_list(&["e1", "e2"]))
        .await
        .expect("push");
    assert!(r.success);
    assert_eq!(*pushed.lock().unwrap(), ["e1", "e2"]);

    // Channel opens: wrong type, unknown session, then the real one.
    match cconn.open_session().await {
        Err(Error::ChannelOpenFailed { reason, message }) => {
            assert_eq!(reason, OpenFailureReason::UNKNOWN_CHANNEL_TYPE);
            assert_eq!(message, "unknown channel type session");
        }
        other => panic!("session channel not refused: {other:?}"),
    }
    match cconn.open_channel("attach", b"").await {
        Err(Error::ChannelOpenFailed { reason, message }) => {
            assert_eq!(reason, OpenFailureReason::ADMINISTRATIVELY_PROHIBITED);
            assert_eq!(message, "session  is invalid");
        }
        other => panic!("empty id not refused: {other:?}"),
    }
    let mut ch = cconn.open_channel("attach", b"abc").await.expect("attach");
    let mut stderr = ch.stderr();
    assert!(ch.request("ping", b"Ping").await.expect("ping"));
    assert!(!ch.request("ping", b"Pong").await.expect("bad ping"));
    let wc = WindowChange {
        cols: 80,
        rows: 24,
        width_px: 640,
        height_px: 480,
    };
    assert!(!ch.window_change(wc).await.expect("window-change"));
    assert!(!ch.signal("TERM").await.expect("signal"));
    assert!(ch.request("unblock", b"Unblock").await.expect("unblock"));
    let mut out = vec![0u8; 13];
    ch.read_exact(&mut out).await.expect("stdout");
    assert_eq!(out, b"out from abc\n");
    let mut err = vec![0u8; 13];
    stderr.read_exact(&mut err).await.expect("stderr");
    assert_eq!(err, b"err from abc\n");

    ch.write_all(b"some stdin").await.expect("stdin");
    assert!(ch.request("close-stdin", &[]).await.expect("close-stdin"));
    ch.eof().expect("eof");
    let mut echoed = Vec::new();
    ch.read_to_end(&mut echoed).await.expect("echo");
    assert_eq!(echoed, b"some stdin");
    ch.wait_closed().await;
    assert_eq!(ch.exit_status(), Some(7));
    drop(ch);
    drop(stderr);

    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            format!("ping:{}", hexs(b"Ping")),
            format!("ping:{}", hexs(b"Pong")),
            "window-change:000000500000001800000280000001e0".into(),
            "80x24".into(),
            "signal:000000045445524d".into(),
            format!("unblock:{}", hexs(b"Unblock")),
            "close-stdin:".into(),
        ]
    );
    cconn.disconnect("done");
    assert!(cj.await.expect("join").is_ok());
    assert!(sj.await.expect("join").is_ok());
    assert!(sconn.is_closed());
}

/// Sends `data` through an echo channel while reading it back concurrently.
async fn echo_transfer(ch: Channel, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = ch.split();
    let len = data.len();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).await.expect("write");
        }
        w.eof().expect("eof");
        w
    });
    let mut got = Vec::with_capacity(len);
    r.read_to_end(&mut got).await.expect("read");
    let _w = writer.await.expect("join");
    got
}

#[tokio::test]
async fn rekey_in_the_middle_of_a_large_transfer() {
    for cipher in Cipher::ALL {
        let mut server = ServerConfig::new(ed25519())
            .allow_none_for(["daemon"])
            .handlers(echo_handlers());
        server.common.rekey_bytes = 768 * 1024;
        let mut client = ClientConfig::new("daemon");
        // The client re-keys every 256 KiB; the server also asks explicitly below.
        client.common.rekey_bytes = 256 * 1024;
        client.common.algorithms.cipher = vec![cipher];
        let (sconn, cconn, sj, cj) = connect(server, client).await;
        let ch = cconn.open_session().await.expect("open");
        let data = pattern(4 * 1024 * 1024, 42);
        let sconn2 = sconn.clone();
        let kicker = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = sconn2.rekey();
            }
        });
        let got = echo_transfer(ch, data.clone()).await;
        kicker.await.expect("join");
        assert!(got == data, "{cipher}: data corrupted across re-keys");
        let kc = cconn.info().expect("info").kex_count;
        let ks = sconn.info().expect("info").kex_count;
        assert_eq!(kc, ks);
        // 8 MiB crossed the client's 256 KiB limit many times.
        assert!(kc >= 16, "{cipher}: only {kc} key exchanges");
        // The session id never changes.
        assert_eq!(
            cconn.info().expect("info").session_id,
            sconn.info().expect("info").session_id
        );
        cconn.disconnect("done");
        assert!(cj.await.expect("join").is_ok());
        assert!(sj.await.expect("join").is_ok());
    }
}

#[tokio::test]
async fn flow_control_with_a_slow_reader() {
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let written2 = written.clone();
    let total = 1024 * 1024;
    let handlers = Handlers::new().on_channel_open(move |open| {
        let Ok(mut ch) = open.accept() else { return };
        let written = written2.clone();
        tokio::spawn(async move {
            let data = pattern(total, 7);
            for chunk in data.chunks(4096) {
                ch.write_all(chunk).await.expect("write");
                written.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
            ch.eof().expect("eof");
            ch.close();
        });
    });
    let server = ServerConfig::new(ed25519())
        .allow_none_for(["daemon"])
        .handlers(handlers);
    let mut client = ClientConfig::new("daemon");
    client.common.limits.channel_window = 64 * 1024;
    client.common.limits.channel_max_packet = 8 * 1024;
    let (_s, cconn, _sj, _cj) = connect(server, client).await;
    let mut ch = cconn.open_channel("bulk", b"").await.expect("open");
    // Not reading: the writer must stop at the window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(w <= 64 * 1024, "writer got {w} bytes past a 64 KiB window");
    assert!(w >= 32 * 1024, "writer stalled early at {w}");
    // Read slowly for a while, then at full speed; nothing is lost or reordered.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1000];
    for _ in 0..50 {
        let n = ch.read(&mut buf).await.expect("read");
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let w = written.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            w <= got.len() + 64 * 1024,
            "window overrun: written {w}, read {}",
            got.len()
        );
    }
    ch.read_to_end(&mut got).await.expect("read rest");
    assert!(got == pattern(total, 7));
}

#[tokio::test]
async fn stderr_is_separate_and_dropping_it_discards() {
    let handlers = Handlers::new().on_channel_open(|open| {
        let Ok(mut ch) = open.accept() else { return };
        tokio::spawn(async move {
            let mut err = ch.stderr_writer();
            for i in 0..100u32 {
                err.write_all(&[b'e'; 10_000]).await.expect("stderr");
                ch.write_all(format!("line {i}\n").as_bytes())
                    .await
                    .expect("stdout");
            }
            ch.send_exit_status(3).expect("status");
            ch.eof().expect("eof");
        });
    });
    let server = ServerConfig::new(ed25519())
        .allow_none_for(["daemon"])
        .handlers(handlers);
    let mut client = ClientConfig::new("daemon");
    client.common.limits.channel_window = 128 * 1024;
    let (_s, cconn, _sj, _cj) = connect(server, client).await;

    // Reading both streams.
    let mut ch = cconn.open_channel("x", b"").await.expect("open");
    let mut err = ch.stderr();
    let mut out = String::new();
    let mut errs = Vec::new();
    let (a, b) = tokio::join!(ch.read_to_string(&mut out), err.read_to_end(&mut errs));
    a.expect("stdout");
    b.expect("stderr");
    assert_eq!(out.lines().count(), 100);
    assert_eq!(errs.len(), 1_000_000);
    ch.wait_closed().await;
    assert_eq!(ch.exit_status(), Some(3));

    // Reading stdout only, after dropping the stderr reader: 1 MB of stderr does not
    // stall the 128 KiB window.
    let mut ch = cconn.open_channel("x", b"").await.expect("open");
    drop(ch.stderr());
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), ch.read_to_string(&mut out))
        .await
        .expect("stalled")
        .expect("stdout");
    assert_eq!(out.lines().count(), 100);
}

#[tokio::test]
async fn authentication_policies() {
    let authorized = key("client_ed25519");
    // none for daemon only.
    let server = || {
        ServerConfig::new(ed25519())
            .allow_none_for(["daemon"])
            .authorized_keys([authorized.public_key().clone()])
    };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let s = tokio::spawn(sshproto::Server::accept(a, Arc::new(server())));
    let c = sshproto::Client::connect(b, Arc::new(ClientConfig::new("root"))).await;
    match c {
        Err(Error::AuthFailed(m)) => assert_eq!(m, "publickey"),
        other => panic!("root got in with none: {:?}", other.map(|_| ())),
    }
    assert!(s.await.expect("join").is_err());

    // publickey with an authorized key, any user.
    let (sconn, cconn, _sj, _cj) =
        connect(server(), ClientConfig::new("root").key(authorized.clone())).await;
    assert_eq!(sconn.info().expect("info").user, "root");
    assert_eq!(
        sconn.info().expect("info").client_key.as_ref(),
        Some(authorized.public_key())
    );
    cconn.disconnect("bye");

    // RSA user keys with each algorithm (the 512-bit key included).
    for (k, alg) in [
        (rsa512(), SignatureAlgorithm::RsaSha1),
        (rsa512(), SignatureAlgorithm::RsaSha256),
        (rsa2048(), SignatureAlgorithm::RsaSha512),
    ] {
        let server = ServerConfig::new(ed25519()).authorized_keys([k.public_key().clone()]);
        let mut client = ClientConfig::new("u").key(k);
        client.key_algorithm = Some(alg);
        let (sconn, _c, _sj, _cj) = connect(server, client).await;
        assert_eq!(sconn.info().expect("info").user, "u");
    }

    // An unknown key is refused.
    let (a, b) = tokio::io::duplex(64 * 1024);
    let s = tokio::spawn(sshproto::Server::accept(a, Arc::new(server())));
    let c = sshproto::Client::connect(
        b,
        Arc::new(ClientConfig::new("root").key(sshproto::PrivateKey::generate_ed25519())),
    )
    .await;
    assert!(
        matches!(c, Err(Error::AuthFailed(_))),
        "{:?}",
        c.map(|_| ())
    );
    assert!(s.await.expect("join").is_err());
}

#[tokio::test]
async fn host_key_check_rejects_unknown_keys() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let s = tokio::spawn(sshproto::Server::accept(
        a,
        Arc::new(ServerConfig::new(ed25519()).allow_none_for_anyone()),
    ));
    let client = ClientConfig::new("daemon")
        .host_key_check(HostKeyCheck::Known(vec![rsa2048().public_key().clone()]));
    let c = sshproto::Client::connect(b, Arc::new(client)).await;
    assert!(
        matches!(c, Err(Error::HostKeyRejected(_))),
        "{:?}",
        c.map(|_| ())
    );
    assert!(s.await.expect("join").is_err());
}

#[tokio::test]
async fn handshake_timeout() {
    let (a, _b) = tokio::io::duplex(64 * 1024);
    let mut server = ServerConfig::new(ed25519()).allow_none_for_anyone();
    server.common.handshake_timeout = Duration::from_millis(200);
    let t0 = std::time::Instant::now();
    let r = sshproto::Server::accept(a, Arc::new(server)).await;
    assert!(matches!(r, Err(Error::Timeout(_))), "{:?}", r.map(|_| ()));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn request_timeout_keeps_replies_in_order() {
    let parked = Arc::new(Mutex::new(Vec::new()));
    let parked2 = parked.clone();
    let handlers = Handlers::new()
        .on_global_request("slow", move |req| parked2.lock().unwrap().push(req))
        .on_global_request("version", |req| req.succeed(10u32.to_be_bytes().to_vec()));
    let server = ServerConfig::new(ed25519())
        .allow_none_for(["daemon"])
        .handlers(handlers);
    let mut client = ClientConfig::new("daemon");
    client.common.request_timeout = Duration::from_millis(200);
    let (_s, cconn, _sj, _cj) = connect(server, client).await;
    let r = cconn.global_request("slow", &[]).await;
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    // Replies are ordered: "version" waits behind the parked request ...
    let c2 = cconn.clone();
    let v = tokio::spawn(async move { c2.global_request("version", &[]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ... until it is answered (dropped = failure), then gets its own reply.
    parked.lock().unwrap().clear();
    let r = v.await.expect("join").expect("version");
    assert_eq!((r.success, r.data), (true, vec![0, 0, 0, 10]));
}

#[tokio::test]
async fn keepalive_detects_a_dead_peer() {
    // Live peer: keep-alives are answered (with failure, as OpenSSH does) and nothing ends.
    let server = ServerConfig::new(ed25519()).allow_none_for(["daemon"]);
    let mut client = ClientConfig::new("daemon");
    client.common.keepalive = Some(sshproto::Keepalive {
        interval: Duration::from_millis(50),
        max_missed: 2,
    });
    let (_s, cconn, _sj, cj) = connect(server.clone(), client.clone()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!cconn.is_closed());
    cconn.keepalive().await.expect("explicit keepalive");
    cconn.disconnect("bye");
    assert!(cj.await.expect("join").is_ok());

    // Dead peer: the server's driver is never polled after the handshake.
    let (a, b) = tokio::io::duplex(1024 * 1024);
    let s = tokio::spawn(sshproto::Server::accept(a, Arc::new(server)));
    let (cconn, cdrv) = sshproto::Client::connect(b, Arc::new(client))
        .await
        .expect("connect");
    let (_sconn, _parked_driver) = s.await.expect("join").expect("accept");
    let t0 = std::time::Instant::now();
    let r = cdrv.await;
    assert!(matches!(r, Err(Error::KeepaliveTimeout)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(cconn.is_closed());
}

#[tokio::test]
async fn many_channels_at_once() {
    let server = ServerConfig::new(ed25519())
        .allow_none_for(["daemon"])
        .handlers(echo_handlers());
    let (_s, cconn, _sj, _cj) = connect(server, ClientConfig::new("daemon")).await;
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let c = cconn.clone();
        tasks.push(tokio::spawn(async move {
            let ch = c.open_session().await.expect("open");
            let data = pattern(50_000 + i as usize * 100, i);
            let got = echo_transfer(ch, data.clone()).await;
            assert!(got == data, "channel {i} corrupted");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    // Closed channels leave the table once both sides closed and handles are gone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cconn.channel_count(), 0);
}

#[tokio::test]
async fn server_opens_channels_and_typed_requests() {
    // Connection-level channel request handlers on the server: pty-req, exec.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let handlers = Handlers::new()
        .on_channel_open(|open| {
            let Ok(ch) = open.accept() else { return };
            tokio::spawn(async move {
                ch.wait_closed().await;
            });
        })
        .on_channel_request("pty-req", move |req| {
            let p = req.pty_req().expect("pty-req payload");
            s1.lock()
                .unwrap()
                .push(format!("{} {}x{}", p.term, p.size.cols, p.size.rows));
            req.succeed();
        })
        .on_channel_request("exec", move |req| {
            let cmd = req.exec_command().expect("exec payload");
            s2.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&cmd).into_owned());
            req.succeed();
        });
    let server = ServerConfig::new(ed25519())
        .allow_none_for(["daemon"])
        .handlers(handlers);
    // The client accepts channels the server opens and echoes them.
    let client = ClientConfig::new("daemon").handlers(Handlers::new().on_channel_open(|open| {
        assert_eq!(open.channel_type(), "reverse");
        assert_eq!(open.data(), b"type-specific");
        let Ok(mut ch) = open.accept() else { return };
        tokio::spawn(async move {
            let mut buf = [0u8; 5];
            ch.read_exact(&mut buf).await.expect("read");
            ch.write_all(&buf).await.expect("write");
            ch.send_exit_signal(&sshproto::ExitSignal {
                signal: "KILL".into(),
                core_dumped: false,
                message: "killed".into(),
            })
            .expect("exit-signal");
            ch.eof().expect("eof");
        });
    }));
    let (sconn, cconn, _sj, _cj) = connect(server, client).await;

    let ch = cconn.open_session().await.expect("open");
    let pty = sshproto::PtyRequest {
        term: "xterm".into(),
        size: WindowChange {
            cols: 132,
            rows: 43,
            width_px: 0,
            height_px: 0,
        },
        modes: vec![0],
    };
    assert!(ch.pty_req(&pty).await.expect("pty-req"));
    assert!(ch.exec("ls -l").await.expect("exec"));
    assert_eq!(*seen.lock().unwrap(), ["xterm 132x43", "ls -l"]);

    let mut rev = sconn
        .open_channel("reverse", b"type-specific")
        .await
        .expect("reverse open");
    rev.write_all(b"hello").await.expect("write");
    let mut back = Vec::new();
    rev.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"hello");
    rev.wait_closed().await;
    assert_eq!(rev.exit_signal().map(|s| s.signal), Some("KILL".into()));
}
