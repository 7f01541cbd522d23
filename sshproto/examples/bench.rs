//! Throughput of channel data: our client to our server over loopback TCP for each
//! cipher, beside OpenSSH's `ssh` to a private `sshd` moving the same amount.
//!
//! `cargo run --release -p sshproto --example bench [MiB]` (default 256 MiB).
//! Each side runs on its own thread with a current-thread runtime, as the tether does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "a benchmark run by hand: it stops at the first failure"
)]

#[path = "../tests/support/openssh.rs"]
mod openssh;

use std::sync::Arc;
use std::time::Instant;

use sshproto::{
    Algorithms, Cipher, Client, ClientConfig, Handlers, KexAlgorithm, Mac, PrivateKey, Server,
    ServerConfig, SignatureAlgorithm,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Seconds to move `total` bytes client -> server through one channel.
fn ours(cipher: Cipher, mac: Option<Mac>, total: usize) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let (sock, _) = listener.accept().await.expect("accept");
            sock.set_nodelay(true).expect("nodelay");
            let handlers = Handlers::new().on_channel_open(|open| {
                let Ok(mut ch) = open.accept() else { return };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut n = 0u64;
                    loop {
                        match ch.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k as u64,
                        }
                    }
                    let _ = ch.write_all(&n.to_be_bytes()).await;
                    let _ = ch.eof();
                    ch.close();
                });
            });
            let cfg = ServerConfig::new(PrivateKey::generate_ed25519())
                .allow_none_for(["bench"])
                .handlers(handlers);
            let (_conn, driver) = Server::accept(sock, Arc::new(cfg)).await.expect("accept");
            let _ = driver.await;
        })
    });
    let secs = runtime().block_on(async move {
        let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        let mut cfg = ClientConfig::new("bench");
        cfg.common.algorithms = Algorithms {
            kex: vec![KexAlgorithm::Curve25519Sha256],
            host_key: vec![SignatureAlgorithm::Ed25519],
            cipher: vec![cipher],
            mac: mac.map(|m| vec![m]).unwrap_or_else(|| Mac::ALL.to_vec()),
        };
        let (conn, driver) = Client::connect(sock, Arc::new(cfg)).await.expect("connect");
        let drv = tokio::spawn(driver);
        let ch = conn.open_channel("bench", b"").await.expect("open");
        let chunk = vec![0u8; 256 * 1024];
        let t0 = Instant::now();
        let (mut r, mut w) = ch.split();
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await.expect("write");
            left -= n;
        }
        w.eof().expect("eof");
        let mut count = [0u8; 8];
        r.read_exact(&mut count).await.expect("count");
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(u64::from_be_bytes(count), total as u64, "short transfer");
        conn.disconnect("done");
        let _ = drv.await;
        secs
    });
    server.join().expect("server thread");
    secs
}

/// Seconds for `head -c N /dev/zero | ssh ... 'cat > /dev/null'`.
fn openssh(
    sshd: &openssh::Sshd,
    key: &std::path::Path,
    cipher: &str,
    mac: Option<&str>,
    total: usize,
) -> f64 {
    let user = openssh::current_user();
    let mac_opt = mac.map(|m| format!("-o MACs={m}")).unwrap_or_default();
    let cmd = format!(
        "head -c {total} /dev/zero | {} -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o BatchMode=yes -o LogLevel=ERROR -o Ciphers={cipher} {mac_opt} -o KexAlgorithms=curve25519-sha256 -i {} -p {} {user}@127.0.0.1 'cat > /dev/null'",
        openssh::SSH,
        key.display(),
        sshd.port
    );
    let t0 = Instant::now();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .status()
        .expect("run ssh");
    let secs = t0.elapsed().as_secs_f64();
    assert!(st.success(), "ssh failed: {cmd}\n{}", sshd.log());
    secs
}

/// OpenSSH's figure without its connection setup (our figure excludes ours): the time of
/// the same command moving nothing is subtracted.
fn openssh_transfer(
    sshd: &openssh::Sshd,
    key: &std::path::Path,
    cipher: &str,
    mac: Option<&str>,
    total: usize,
) -> f64 {
    let setup = openssh(sshd, key, cipher, mac, 0);
    (openssh(sshd, key, cipher, mac, total) - setup).max(1e-6)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let total = mib * 1024 * 1024;
    let cases: [(Cipher, Option<Mac>); 5] = [
        (Cipher::ChaCha20Poly1305, None),
        (Cipher::Aes128Ctr, Some(Mac::HmacSha256Etm)),
        (Cipher::Aes128Ctr, Some(Mac::HmacSha256)),
        (Cipher::Aes256Ctr, Some(Mac::HmacSha256Etm)),
        (Cipher::Aes256Ctr, Some(Mac::HmacSha256)),
    ];
    // The OpenSSH side: a private sshd and a client key ssh will accept (mode 0600).
    let dir = openssh::TempDir::new("bench");
    let key = openssh::keygen(dir.path(), "client", "ed25519", None);
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let sshd = openssh::Sshd::start(&[pubkey.trim().to_string()]);

    println!("packet crypto only (seal / open of 32 KiB packets, one core), {mib} MiB");
    for (cipher, mac) in cases {
        let (seal, open) = sshproto::testing::seal_open_seconds(cipher, mac, total);
        let mbs = |s: f64| total as f64 / s / 1_000_000.0;
        let label = format!("{} {}", cipher.name(), mac.map(|m| m.name()).unwrap_or(""));
        println!(
            "{label:<46} seal {:>8.1} MB/s  open {:>8.1} MB/s",
            mbs(seal),
            mbs(open)
        );
    }
    println!();
    println!("channel data, client -> server, {mib} MiB, loopback TCP");
    println!(
        "{:<46} {:>12} {:>12}",
        "cipher / MAC", "sshproto", "OpenSSH"
    );
    for (cipher, mac) in cases {
        let label = format!("{} {}", cipher.name(), mac.map(|m| m.name()).unwrap_or(""));
        let a = ours(cipher, mac, total);
        let b = openssh_transfer(&sshd, &key, cipher.name(), mac.map(|m| m.name()), total);
        let mbs = |s: f64| total as f64 / s / 1_000_000.0;
        println!("{label:<46} {:>8.1} MB/s {:>8.1} MB/s", mbs(a), mbs(b));
    }
}
