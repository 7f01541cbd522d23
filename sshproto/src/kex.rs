//! Key exchange (RFC 4253 §7–8, RFC 8731): KEXINIT, algorithm negotiation, the
//! curve25519-sha256 exchange hash and the session key derivation.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cipher::{Cipher, DirectionKeys, Mac};
use crate::error::{Error, Result};
use crate::keys::SignatureAlgorithm;
use crate::msg::{self, KexInit};
use crate::wire;

/// The marker a client adds to its first KEXINIT to ask for strict key exchange.
pub const STRICT_CLIENT: &str = "kex-strict-c-v00@openssh.com";
/// The marker a server adds to its first KEXINIT to offer strict key exchange.
pub const STRICT_SERVER: &str = "kex-strict-s-v00@openssh.com";

/// A key exchange method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KexAlgorithm {
    /// `curve25519-sha256` (RFC 8731).
    Curve25519Sha256,
    /// `curve25519-sha256@libssh.org`: the same method under its older name (what
    /// x/crypto, and so the original port layer, offers).
    Curve25519Sha256Libssh,
}

impl KexAlgorithm {
    /// Every supported method, in default preference order.
    pub const ALL: [KexAlgorithm; 2] = [
        KexAlgorithm::Curve25519Sha256,
        KexAlgorithm::Curve25519Sha256Libssh,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            KexAlgorithm::Curve25519Sha256 => "curve25519-sha256",
            KexAlgorithm::Curve25519Sha256Libssh => "curve25519-sha256@libssh.org",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for KexAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Algorithm preference lists. Every list must be non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Algorithms {
    /// Key exchange methods.
    pub kex: Vec<KexAlgorithm>,
    /// Host key signature algorithms (the server offers those its keys can make).
    pub host_key: Vec<SignatureAlgorithm>,
    /// Ciphers, both directions.
    pub cipher: Vec<Cipher>,
    /// MACs, both directions (unused with an AEAD cipher).
    pub mac: Vec<Mac>,
}

impl Default for Algorithms {
    fn default() -> Self {
        Self {
            kex: KexAlgorithm::ALL.to_vec(),
            host_key: SignatureAlgorithm::ALL.to_vec(),
            cipher: Cipher::ALL.to_vec(),
            mac: Mac::ALL.to_vec(),
        }
    }
}

/// What a key exchange settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Key exchange method.
    pub kex: KexAlgorithm,
    /// Host key signature algorithm.
    pub host_key: SignatureAlgorithm,
    /// Cipher client to server.
    pub cipher_c2s: Cipher,
    /// Cipher server to client.
    pub cipher_s2c: Cipher,
    /// MAC client to server (None with an AEAD cipher).
    pub mac_c2s: Option<Mac>,
    /// MAC server to client (None with an AEAD cipher).
    pub mac_s2c: Option<Mac>,
}

/// Builds a KEXINIT payload.
pub fn build_kexinit(
    cookie: [u8; 16],
    algs: &Algorithms,
    host_key_algs: &[SignatureAlgorithm],
    extra_kex: &[&str],
) -> Vec<u8> {
    let mut v = vec![msg::KEXINIT];
    v.extend_from_slice(&cookie);
    let mut kex: Vec<&str> = algs.kex.iter().map(|k| k.name()).collect();
    kex.extend_from_slice(extra_kex);
    wire::put_name_list(&mut v, &kex);
    let hk: Vec<&str> = host_key_algs.iter().map(|a| a.name()).collect();
    wire::put_name_list(&mut v, &hk);
    let ciphers: Vec<&str> = algs.cipher.iter().map(|c| c.name()).collect();
    wire::put_name_list(&mut v, &ciphers);
    wire::put_name_list(&mut v, &ciphers);
    let macs: Vec<&str> = algs.mac.iter().map(|m| m.name()).collect();
    wire::put_name_list(&mut v, &macs);
    wire::put_name_list(&mut v, &macs);
    wire::put_name_list(&mut v, &["none"]);
    wire::put_name_list(&mut v, &["none"]);
    wire::put_name_list::<&str>(&mut v, &[]);
    wire::put_name_list::<&str>(&mut v, &[]);
    wire::put_bool(&mut v, false);
    wire::put_u32(&mut v, 0);
    v
}

/// The first name of the client's list that the server also has (RFC 4253 §7.1).
fn choose<'a>(kind: &'static str, client: &'a str, server: &str) -> Result<&'a str> {
    wire::names(client)
        .find(|c| wire::names(server).any(|s| s == *c))
        .ok_or_else(|| Error::NoCommonAlgorithm {
            kind,
            ours: String::new(),
            theirs: String::new(),
        })
}

fn no_common(kind: &'static str, ours: &str, theirs: &str) -> Error {
    Error::NoCommonAlgorithm {
        kind,
        ours: ours.to_string(),
        theirs: theirs.to_string(),
    }
}

/// Negotiates from both KEXINITs. Our lists only name algorithms we implement, so the
/// match is always one we can look up.
pub fn negotiate(
    client: &KexInit<'_>,
    server: &KexInit<'_>,
    we_are_server: bool,
) -> Result<Negotiated> {
    let pick = |kind: &'static str, c: &str, s: &str| -> Result<String> {
        choose(kind, c, s).map(str::to_string).map_err(|_| {
            let (ours, theirs) = if we_are_server { (s, c) } else { (c, s) };
            no_common(kind, ours, theirs)
        })
    };
    let kex_name = pick("key exchange", client.kex, server.kex)?;
    let kex = KexAlgorithm::from_name(&kex_name)
        .ok_or_else(|| no_common("key exchange", client.kex, server.kex))?;
    let hk_name = pick("host key", client.host_key, server.host_key)?;
    let host_key = SignatureAlgorithm::from_name(&hk_name)
        .ok_or_else(|| no_common("host key", client.host_key, server.host_key))?;
    let c2s = pick("cipher", client.cipher_c2s, server.cipher_c2s)?;
    let cipher_c2s = Cipher::from_name(&c2s)
        .ok_or_else(|| no_common("cipher", client.cipher_c2s, server.cipher_c2s))?;
    let s2c = pick("cipher", client.cipher_s2c, server.cipher_s2c)?;
    let cipher_s2c = Cipher::from_name(&s2c)
        .ok_or_else(|| no_common("cipher", client.cipher_s2c, server.cipher_s2c))?;
    let mac_for = |cipher: Cipher, c: &str, s: &str| -> Result<Option<Mac>> {
        if cipher.is_aead() {
            return Ok(None);
        }
        let name = pick("MAC", c, s)?;
        Mac::from_name(&name)
            .map(Some)
            .ok_or_else(|| no_common("MAC", c, s))
    };
    let mac_c2s = mac_for(cipher_c2s, client.mac_c2s, server.mac_c2s)?;
    let mac_s2c = mac_for(cipher_s2c, client.mac_s2c, server.mac_s2c)?;
    pick("compression", client.comp_c2s, server.comp_c2s).and_then(|c| {
        if c == "none" {
            Ok(c)
        } else {
            Err(no_common("compression", client.comp_c2s, server.comp_c2s))
        }
    })?;
    pick("compression", client.comp_s2c, server.comp_s2c).and_then(|c| {
        if c == "none" {
            Ok(c)
        } else {
            Err(no_common("compression", client.comp_s2c, server.comp_s2c))
        }
    })?;
    Ok(Negotiated {
        kex,
        host_key,
        cipher_c2s,
        cipher_s2c,
        mac_c2s,
        mac_s2c,
    })
}

/// Whether a KEXINIT with `first_kex_packet_follows` guessed wrong (RFC 4253 §7): the
/// guess is right only if both the kex method and host key algorithm are each side's first.
pub fn guess_was_wrong(client: &KexInit<'_>, server: &KexInit<'_>) -> bool {
    let first = |l: &str| wire::names(l).next().map(str::to_string);
    first(client.kex) != first(server.kex) || first(client.host_key) != first(server.host_key)
}

/// Inputs of the curve25519-sha256 exchange hash (RFC 8731 §3, RFC 5656 §4).
#[derive(Debug)]
pub struct HashInputs<'a> {
    /// Client version line without CR LF.
    pub v_c: &'a [u8],
    /// Server version line without CR LF.
    pub v_s: &'a [u8],
    /// Client KEXINIT payload.
    pub i_c: &'a [u8],
    /// Server KEXINIT payload.
    pub i_s: &'a [u8],
    /// Server host key blob.
    pub k_s: &'a [u8],
    /// Client ephemeral public key.
    pub q_c: &'a [u8],
    /// Server ephemeral public key.
    pub q_s: &'a [u8],
}

/// The shared secret as the mpint the hash and the key derivation use.
pub fn encode_shared_secret(k: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(k.len() + 5));
    wire::put_mpint_positive(&mut v, k);
    v
}

/// H = SHA-256 over the inputs and K.
pub fn exchange_hash(inp: &HashInputs<'_>, k_mpint: &[u8]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(
        inp.v_c.len() + inp.v_s.len() + inp.i_c.len() + inp.i_s.len() + inp.k_s.len() + 200,
    );
    for part in [
        inp.v_c, inp.v_s, inp.i_c, inp.i_s, inp.k_s, inp.q_c, inp.q_s,
    ] {
        wire::put_string(&mut buf, part);
    }
    let mut h = Sha256::new();
    h.update(&buf);
    h.update(k_mpint);
    h.finalize().into()
}

/// Derives `len` bytes for letter `x` (RFC 4253 §7.2).
pub fn derive_key(
    k_mpint: &[u8],
    h: &[u8],
    x: u8,
    session_id: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut d = Sha256::new();
    d.update(k_mpint);
    d.update(h);
    d.update([x]);
    d.update(session_id);
    out.extend_from_slice(&d.finalize());
    while out.len() < len {
        let mut d = Sha256::new();
        d.update(k_mpint);
        d.update(h);
        d.update(&*out);
        out.extend_from_slice(&d.finalize());
    }
    out.truncate(len);
    out
}

/// Both directions' keys.
#[derive(Debug)]
pub struct SessionKeys {
    pub(crate) c2s: DirectionKeys,
    pub(crate) s2c: DirectionKeys,
}

/// Derives all six keys for the negotiated algorithms.
pub fn derive_session_keys(
    neg: &Negotiated,
    k_mpint: &[u8],
    h: &[u8],
    session_id: &[u8],
) -> SessionKeys {
    let dir = |cipher: Cipher, mac: Option<Mac>, iv: u8, key: u8, integ: u8| DirectionKeys {
        cipher,
        mac,
        iv: derive_key(k_mpint, h, iv, session_id, cipher.iv_len()),
        key: derive_key(k_mpint, h, key, session_id, cipher.key_len()),
        mac_key: derive_key(k_mpint, h, integ, session_id, mac.map_or(0, Mac::key_len)),
    };
    SessionKeys {
        c2s: dir(neg.cipher_c2s, neg.mac_c2s, b'A', b'C', b'E'),
        s2c: dir(neg.cipher_s2c, neg.mac_s2c, b'B', b'D', b'F'),
    }
}

impl SessionKeys {
    /// (iv, key, mac key) client to server, for tests.
    pub fn c2s_material(&self) -> (&[u8], &[u8], &[u8]) {
        (&self.c2s.iv, &self.c2s.key, &self.c2s.mac_key)
    }

    /// (iv, key, mac key) server to client, for tests.
    pub fn s2c_material(&self) -> (&[u8], &[u8], &[u8]) {
        (&self.s2c.iv, &self.s2c.key, &self.s2c.mac_key)
    }
}

/// Computes the X25519 shared secret, refusing the all-zero result (RFC 8731 §3).
pub fn x25519_shared(
    secret: &x25519_dalek::StaticSecret,
    peer_public: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    let arr: [u8; 32] = peer_public
        .try_into()
        .map_err(|_| Error::Kex("ephemeral public key is not 32 bytes"))?;
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(arr));
    if !shared.was_contributory() {
        return Err(Error::Kex("all-zero shared secret"));
    }
    Ok(Zeroizing::new(*shared.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Message;

    fn parse(v: &[u8]) -> KexInit<'_> {
        match Message::parse(v) {
            Ok(Message::KexInit(k)) => k,
            other => panic!("not a kexinit: {other:?}"),
        }
    }

    #[test]
    fn negotiation_prefers_client_order() {
        let c_algs = Algorithms {
            cipher: vec![Cipher::Aes128Ctr, Cipher::ChaCha20Poly1305],
            ..Default::default()
        };
        let c = build_kexinit([0; 16], &c_algs, &SignatureAlgorithm::ALL, &[STRICT_CLIENT]);
        let s = build_kexinit(
            [1; 16],
            &Algorithms::default(),
            &[SignatureAlgorithm::RsaSha256, SignatureAlgorithm::RsaSha1],
            &[STRICT_SERVER],
        );
        let n = negotiate(&parse(&c), &parse(&s), true).expect("negotiate");
        assert_eq!(n.cipher_c2s, Cipher::Aes128Ctr);
        assert_eq!(n.mac_c2s, Some(Mac::HmacSha256Etm));
        assert_eq!(n.host_key, SignatureAlgorithm::RsaSha256);
        assert_eq!(n.kex, KexAlgorithm::Curve25519Sha256);
    }

    #[test]
    fn aead_needs_no_mac() {
        let c_algs = Algorithms {
            mac: vec![],
            ..Default::default()
        };
        let c = build_kexinit([0; 16], &c_algs, &SignatureAlgorithm::ALL, &[]);
        let s = build_kexinit(
            [1; 16],
            &Algorithms::default(),
            &[SignatureAlgorithm::Ed25519],
            &[],
        );
        let n = negotiate(&parse(&c), &parse(&s), false).expect("negotiate");
        assert_eq!(n.cipher_c2s, Cipher::ChaCha20Poly1305);
        assert_eq!(n.mac_c2s, None);
    }

    #[test]
    fn no_common_cipher_fails() {
        let c_algs = Algorithms {
            cipher: vec![Cipher::Aes128Ctr],
            ..Default::default()
        };
        let s_algs = Algorithms {
            cipher: vec![Cipher::Aes256Ctr],
            ..Default::default()
        };
        let c = build_kexinit([0; 16], &c_algs, &SignatureAlgorithm::ALL, &[]);
        let s = build_kexinit([1; 16], &s_algs, &[SignatureAlgorithm::Ed25519], &[]);
        assert!(matches!(
            negotiate(&parse(&c), &parse(&s), false),
            Err(Error::NoCommonAlgorithm { kind: "cipher", .. })
        ));
    }
}
