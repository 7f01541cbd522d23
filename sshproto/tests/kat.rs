//! Known-answer tests. The expected values were computed independently by
//! `tests/kat/gen_kat.py` (Python hashlib + the `cryptography` package).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "a test: a panic is its failure, and its numbers are small"
)]

mod common;

use common::*;
use sshproto::testing::{self, HashInputs};
use sshproto::{Cipher, KexAlgorithm, Mac, Negotiated, PrivateKey, SignatureAlgorithm};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn string(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

const Q_C: &str = "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c";
const Q_S: &str = "5869aff450549732cbaaed5e5df9b30a6da31cb0e5742bad5ad4a1a768f1a67b";
const K: &str = "a84dc7c3c8f058b1b2dc4cd1e9b5dc0a7987f88b6a9564cde3391fc421159e77";
const H: &str = "5bae22e7076aaea0932cdaa16689395deac215509ca0ce785fcbf2fb662d4db9";
const KEY_A: &str = "94ea9d8a819d24ea23b5829fd816855f";
const KEY_B: &str = "401889550a0acaebaaca68e09587401c";
const KEY_C: &str = "a22240d9a45651fab6d0c786262c066a4536440007f67c527b6098dab652eb06";
const KEY_D64: &str = "6fa1e6086dc25ed287bf8fcdc0c525599818167d3ec4a542aec891f50a10be0f\
                       8a01ffafb76778dd65db54f5a9d4688e072669e62d1e44918288b363cf326fe8";
const KEY_E: &str = "7f370382778254791d9a23dab4928d4c1140177289a52b562d6ca980db974e3a";
const KEY_F: &str = "a77d9c50061a44f4f298c485f57f34e1a865fdf80db0b29ac443c33ad5841f32";
const ED25519_SIG_OVER_H: &str = "a5c9053be4a56a914524979442e17b594331fcfe7dd1e3c51864ea0f0ef5c111\
                                  824d80773a743b8ddd7265436acc23531e9283e5f58f780f9c419d059cc1980b";

const MSG: &[u8] = b"sshproto known-answer message";
const RSA2048_SHA256: &str = "202dfa8fdbe313e363342ee22e11c6a278354af586285327bc5ebc18cb53705e54d167fccc7cace726ca9ccf5a0bc63c0e99292bef4779101da2a7db5b77589a0d86265264318df168e83bc5d10290c31c402c541833c24f5a5e5b3e809ef27b736b6ae6669b05faefa63d75e520b4b8ce0f78d3a711661bc21000bb987198fceba1a478126b02af17a28a342784fbf511d3885bcd15c9dc17b14107b3ea16c2e96fbf89c312ee01f9f2d2d58c87d7f2a0ab921b3f1130dca1081b90ad52097dfb4eec92ff30262907f897a1b4ca35f63ba46133d22f1a062f718d3916bf47ad20853db71b5405efc8e4d969a1363b080289a752f905da9098e195cdb64cbbca";
const RSA2048_SHA512: &str = "574995731e904e6a466b1329344c98c9d067bbe68f3f9ec3b54f3658f5d421878a015976de101f87f2718f1953831eeab76e42e69698505bfb08158540914bf134224a9b00adec0af45bb6fc9b440ca62082b9f15ae7458ec442c510779fc477dfe3b388ff45386e070aa223851fd6ebfdafcb6d0122a1d53cff1748db87c8bc9b78119f68b9330ed8448b4e39f3a892e7da329b2c4ca5cdd608419285918e58ae3c399ab4a6ef96bda1970a84e1362f46503cec0a502b05eb76d1c5079fb646d62dd9f299ea1b0939506171258b5cbc8471c1980f3d854f2e65606aefb4c0f74cb54226113d7aa7a5193fcf8c998620d9ee798e8a443088bbc4d0ebc75f151a";
const RSA512_SHA1: &str = "2e5bfeeb879df6276111adc8b52e4e1307735ba1b354ac3be43153be18a7989087eef905363759917d0d2db27e4249f1fd6a5da042d057dd4cabd2bdf9a19852";
const RSA512_SHA256: &str = "5fc7205674884771b4eb9f3a381a8ca7fd1661d7a5af3013cf993dad0557671d43b064c1a9cd336fd548e2fc94ad6fa6577fd0b63c5bf02a246fa18b97182388";
const ED25519_FILE_SIG: &str = "b64d634e1dc8ac71c918b53bf875ba8354fd509b6bfc3f9d5dc9d045fb28cf8fda58bbbf2a2c62cae2bbbc7ab801c587b10752da94626da896f7257c65ade309";

fn fixed_secrets() -> ([u8; 32], [u8; 32]) {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    for i in 0..32 {
        a[i] = i as u8 + 1;
        b[i] = i as u8 + 33;
    }
    (a, b)
}

fn fixed_exchange() -> (Vec<u8>, [u8; 32]) {
    let (a, b) = fixed_secrets();
    let q_c = testing::x25519_public(a);
    let q_s = testing::x25519_public(b);
    assert_eq!(q_c.to_vec(), hex(Q_C));
    assert_eq!(q_s.to_vec(), hex(Q_S));
    let k = testing::x25519_shared(a, &q_s).expect("shared");
    assert_eq!(k, testing::x25519_shared(b, &q_c).expect("shared"));
    assert_eq!(k.to_vec(), hex(K));
    let host = PrivateKey::from_ed25519_seed([7; 32]);
    let i_c = [&[20u8][..], b"client-kexinit-fixture"].concat();
    let i_s = [&[20u8][..], b"server-kexinit-fixture"].concat();
    let k_mpint = testing::encode_shared_secret(&k).to_vec();
    let h = testing::exchange_hash(
        &HashInputs {
            v_c: b"SSH-2.0-VIC",
            v_s: b"SSH-2.0-Go",
            i_c: &i_c,
            i_s: &i_s,
            k_s: host.public_key().to_blob(),
            q_c: &q_c,
            q_s: &q_s,
        },
        &k_mpint,
    );
    (k_mpint, h)
}

#[test]
fn exchange_hash_matches() {
    let (_, h) = fixed_exchange();
    assert_eq!(h.to_vec(), hex(H));
}

#[test]
fn session_keys_match() {
    let (k_mpint, h) = fixed_exchange();
    let neg = Negotiated {
        kex: KexAlgorithm::Curve25519Sha256,
        host_key: SignatureAlgorithm::Ed25519,
        cipher_c2s: Cipher::Aes256Ctr,
        cipher_s2c: Cipher::Aes128Ctr,
        mac_c2s: Some(Mac::HmacSha256),
        mac_s2c: Some(Mac::HmacSha256Etm),
    };
    let keys = testing::derive_session_keys(&neg, &k_mpint, &h, &h);
    let ((iv_c, key_c, mac_c), (iv_s, key_s, mac_s)) = testing::key_material(&keys);
    assert_eq!(iv_c, hex(KEY_A));
    assert_eq!(iv_s, hex(KEY_B));
    assert_eq!(key_c, hex(KEY_C));
    assert_eq!(key_s, hex(KEY_D64)[..16].to_vec());
    assert_eq!(mac_c, hex(KEY_E));
    assert_eq!(mac_s, hex(KEY_F));
    // chacha20-poly1305 needs 64 key bytes: the derivation's extension step.
    let neg = Negotiated {
        cipher_s2c: Cipher::ChaCha20Poly1305,
        mac_s2c: None,
        ..neg
    };
    let keys = testing::derive_session_keys(&neg, &k_mpint, &h, &h);
    let (_, (iv_s, key_s, mac_s)) = testing::key_material(&keys);
    assert!(iv_s.is_empty() && mac_s.is_empty());
    assert_eq!(key_s, hex(KEY_D64));
}

#[test]
fn ed25519_signature_matches() {
    let (_, h) = fixed_exchange();
    let key = PrivateKey::from_ed25519_seed([7; 32]);
    let sig = key.sign_raw(SignatureAlgorithm::Ed25519, &h).expect("sign");
    assert_eq!(sig, hex(ED25519_SIG_OVER_H));
    let blob = key.sign(SignatureAlgorithm::Ed25519, &h).expect("sign");
    assert_eq!(blob, [string(b"ssh-ed25519"), string(&sig)].concat());
    key.public_key()
        .verify(SignatureAlgorithm::Ed25519, &h, &blob)
        .expect("verify");
    assert!(key
        .public_key()
        .verify(SignatureAlgorithm::Ed25519, b"other", &blob)
        .is_err());

    let file_key = ed25519();
    assert_eq!(
        file_key
            .sign_raw(SignatureAlgorithm::Ed25519, MSG)
            .expect("sign"),
        hex(ED25519_FILE_SIG)
    );
}

#[test]
fn rsa_signatures_match() {
    let k2048 = rsa2048();
    let k512 = rsa512();
    assert_eq!(k512.public_key().rsa_bits(), 512);
    for (key, alg, expected) in [
        (&k2048, SignatureAlgorithm::RsaSha256, RSA2048_SHA256),
        (&k2048, SignatureAlgorithm::RsaSha512, RSA2048_SHA512),
        (&k512, SignatureAlgorithm::RsaSha1, RSA512_SHA1),
        (&k512, SignatureAlgorithm::RsaSha256, RSA512_SHA256),
    ] {
        let sig = key.sign_raw(alg, MSG).expect("sign");
        assert_eq!(sig, hex(expected), "{alg}");
        let blob = key.sign(alg, MSG).expect("sign");
        assert_eq!(blob, [string(alg.name().as_bytes()), string(&sig)].concat());
        key.public_key().verify(alg, MSG, &blob).expect("verify");
        assert!(
            key.public_key().verify(alg, b"tampered", &blob).is_err(),
            "{alg}"
        );
    }
    // A 512-bit modulus cannot hold a SHA-512 DigestInfo.
    assert_eq!(
        k512.algorithms(),
        vec![SignatureAlgorithm::RsaSha256, SignatureAlgorithm::RsaSha1]
    );
    assert!(k512.sign_raw(SignatureAlgorithm::RsaSha512, MSG).is_err());
}

#[test]
fn key_files_load() {
    // PKCS#1 (the original's container config), OpenSSH, PKCS#8.
    for (name, ty) in [
        ("rsa512.pem", "ssh-rsa"),
        ("rsa2048", "ssh-rsa"),
        ("ed25519", "ssh-ed25519"),
        ("client_rsa", "ssh-rsa"),
        ("ed25519_pkcs8.pem", "ssh-ed25519"),
        ("rsa1024_pkcs8.pem", "ssh-rsa"),
    ] {
        assert_eq!(key(name).public_key().key_type(), ty, "{name}");
    }
    // Public halves agree with ssh-keygen's .pub files.
    for name in ["rsa2048", "ed25519", "client_rsa", "client_ed25519"] {
        let line = std::fs::read_to_string(key_path(&format!("{name}.pub"))).expect("pub");
        let pk = sshproto::PublicKey::from_openssh(&line).expect("parse pub");
        assert_eq!(&pk, key(name).public_key(), "{name}");
        assert!(line.starts_with(&pk.to_openssh()));
    }
    assert!(PrivateKey::from_pem(b"not a key").is_err());
    assert!(PrivateKey::from_pem(
        b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
    )
    .is_err());
}
