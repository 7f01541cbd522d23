//! Throughput of the packet protocol's primitives on 32 KiB packets (the channel's largest
//! data packet): run it in the guest, or under `qemu-x86_64 -cpu MODEL`, to see what a CPU
//! model's features buy each cipher under TCG.
//!
//! `cargo build --release --example cipher_speed -p sshproto --target x86_64-unknown-linux-musl`

use std::time::Instant;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use hmac::Mac;
use poly1305::universal_hash::KeyInit;

const PACKET: usize = 32 * 1024;

fn run(name: &str, mib: usize, mut f: impl FnMut(&mut [u8])) {
    let mut buf = vec![7u8; PACKET];
    let n = mib * 1024 * 1024 / PACKET;
    f(&mut buf);
    let t = Instant::now();
    for _ in 0..n {
        f(&mut buf);
    }
    let s = t.elapsed().as_secs_f64();
    println!("{name:40} {:8.1} MB/s", (n * PACKET) as f64 / 1e6 / s);
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let key = [3u8; 32];
    let iv = [5u8; 16];
    let nonce = [1u8; 8];
    run("chacha20 (legacy, 64-bit nonce)", mib, |b| {
        let mut c = chacha20::ChaCha20Legacy::new(&key.into(), &nonce.into());
        c.seek(64u64);
        c.apply_keystream(b);
    });
    run("poly1305", mib, |b| {
        let t = poly1305::Poly1305::new(&key.into()).compute_unpadded(b);
        std::hint::black_box(t);
    });
    run("chacha20-poly1305@openssh.com (seal)", mib, |b| {
        let mut l = [0u8; 4];
        chacha20::ChaCha20Legacy::new(&key.into(), &nonce.into()).apply_keystream(&mut l);
        let mut c = chacha20::ChaCha20Legacy::new(&key.into(), &nonce.into());
        let mut pk = [0u8; 32];
        c.apply_keystream(&mut pk);
        c.seek(64u64);
        c.apply_keystream(b);
        let t = poly1305::Poly1305::new(&pk.into()).compute_unpadded(b);
        std::hint::black_box(t);
    });
    let mut a128 = ctr::Ctr128BE::<aes::Aes128>::new(&[3u8; 16].into(), &iv.into());
    run("aes128-ctr", mib, |b| a128.apply_keystream(b));
    let mut a256 = ctr::Ctr128BE::<aes::Aes256>::new(&key.into(), &iv.into());
    run("aes256-ctr", mib, |b| a256.apply_keystream(b));
    let mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new(&[3u8; 64].into());
    run("hmac-sha2-256", mib, |b| {
        let mut m = mac.clone();
        m.update(b);
        std::hint::black_box(m.finalize().into_bytes());
    });
    run("aes128-ctr + hmac-sha2-256-etm", mib, |b| {
        a128.apply_keystream(b);
        let mut m = mac.clone();
        m.update(b);
        std::hint::black_box(m.finalize().into_bytes());
    });
    run("memcpy", mib * 4, |b| {
        let v = b.to_vec();
        std::hint::black_box(v);
    });
}
