//! Host and user keys: loading, public key blobs, signing and verification.
//!
//! Key files are parsed by `rsa` (PKCS#1 / PKCS#8 PEM), `ed25519-dalek` (PKCS#8 PEM) and
//! `ssh-key` (OpenSSH private key files). Signatures are made and checked by `rsa` and
//! `ed25519-dalek` directly, because `ssh-key` refuses RSA keys under 2048 bits and the
//! original port layer only accepts `ssh-rsa` signatures from a 512-bit key.

use std::fmt;

use base64::Engine as _;
use rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::Digest as _;

use crate::error::{Error, KeyError};
use crate::wire::{self, Reader};

/// Largest RSA modulus accepted from a peer, in bits (OpenSSH's own limit).
const MAX_RSA_BITS: usize = 16384;

/// Bytes of PKCS#1 v1.5 overhead beyond the DigestInfo: 0x00 0x01, at least eight 0xff, 0x00.
const PKCS1_OVERHEAD: usize = 11;

/// A public-key signature algorithm (the names of RFC 8332 / RFC 8709 / RFC 4253).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// `ssh-ed25519`.
    Ed25519,
    /// `rsa-sha2-512`: RSA PKCS#1 v1.5 with SHA-512.
    RsaSha512,
    /// `rsa-sha2-256`: RSA PKCS#1 v1.5 with SHA-256.
    RsaSha256,
    /// `ssh-rsa`: RSA PKCS#1 v1.5 with SHA-1 (legacy; what the original port layer uses).
    RsaSha1,
}

impl SignatureAlgorithm {
    /// Every supported algorithm, in default preference order.
    pub const ALL: [SignatureAlgorithm; 4] = [
        SignatureAlgorithm::Ed25519,
        SignatureAlgorithm::RsaSha512,
        SignatureAlgorithm::RsaSha256,
        SignatureAlgorithm::RsaSha1,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithm::Ed25519 => "ssh-ed25519",
            SignatureAlgorithm::RsaSha512 => "rsa-sha2-512",
            SignatureAlgorithm::RsaSha256 => "rsa-sha2-256",
            SignatureAlgorithm::RsaSha1 => "ssh-rsa",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    fn is_rsa(self) -> bool {
        !matches!(self, SignatureAlgorithm::Ed25519)
    }

    /// DigestInfo prefix + hash length: what PKCS#1 v1.5 needs room for.
    fn rsa_digest_info_len(self) -> usize {
        match self {
            SignatureAlgorithm::Ed25519 => 0,
            SignatureAlgorithm::RsaSha512 => 19 + 64,
            SignatureAlgorithm::RsaSha256 => 19 + 32,
            SignatureAlgorithm::RsaSha1 => 15 + 20,
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum PrivateKind {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    Rsa(Box<RsaPrivateKey>),
}

/// A private key: a server's host key or a client's user key.
pub struct PrivateKey {
    kind: PrivateKind,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("PrivateKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        let kind = match &self.kind {
            PrivateKind::Ed25519(k) => PrivateKind::Ed25519(k.clone()),
            PrivateKind::Rsa(k) => PrivateKind::Rsa(k.clone()),
        };
        Self {
            kind,
            public: self.public.clone(),
        }
    }
}

fn pem_label(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = text.get(start..)?;
    let end = rest.find("-----")?;
    rest.get(..end)
}

impl PrivateKey {
    /// Loads a PEM key file of any supported kind: PKCS#1 `RSA PRIVATE KEY` (what the
    /// original's container config carries), PKCS#8 `PRIVATE KEY` (RSA or Ed25519), or an
    /// OpenSSH `OPENSSH PRIVATE KEY` file (RSA or Ed25519, unencrypted).
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(pem.as_ref()).map_err(|_| KeyError::UnknownFormat)?;
        match pem_label(text) {
            Some("RSA PRIVATE KEY") => {
                if text.contains("ENCRYPTED") {
                    return Err(KeyError::Encrypted);
                }
                use rsa::pkcs1::DecodeRsaPrivateKey;
                let key = RsaPrivateKey::from_pkcs1_pem(text.trim())
                    .map_err(|e| KeyError::Parse(e.to_string()))?;
                Self::from_rsa(key)
            }
            Some("PRIVATE KEY") => {
                use rsa::pkcs8::DecodePrivateKey;
                if let Ok(key) = RsaPrivateKey::from_pkcs8_pem(text.trim()) {
                    return Self::from_rsa(key);
                }
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(text.trim())
                    .map_err(|e| KeyError::Parse(e.to_string()))?;
                Ok(Self::from_ed25519_seed(key.to_bytes()))
            }
            Some("ENCRYPTED PRIVATE KEY") => Err(KeyError::Encrypted),
            Some("OPENSSH PRIVATE KEY") => Self::from_openssh(text),
            Some(other) => Err(KeyError::UnsupportedType(other.to_string())),
            None => Err(KeyError::UnknownFormat),
        }
    }

    /// Loads an OpenSSH private key file (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub fn from_openssh(pem: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let key = ssh_key::PrivateKey::from_openssh(pem.as_ref())
            .map_err(|e| KeyError::Parse(e.to_string()))?;
        if key.is_encrypted() {
            return Err(KeyError::Encrypted);
        }
        match key.key_data() {
            ssh_key::private::KeypairData::Ed25519(kp) => {
                Ok(Self::from_ed25519_seed(kp.private.to_bytes()))
            }
            ssh_key::private::KeypairData::Rsa(kp) => {
                // Built from the components here rather than through ssh-key's conversion,
                // which refuses keys under 2048 bits.
                let big = |m: &ssh_key::Mpint| -> Result<BigUint, KeyError> {
                    let bytes = m
                        .as_positive_bytes()
                        .ok_or_else(|| KeyError::Parse("negative RSA component".into()))?;
                    Ok(BigUint::from_bytes_be(bytes))
                };
                let key = RsaPrivateKey::from_components(
                    big(&kp.public.n)?,
                    big(&kp.public.e)?,
                    big(&kp.private.d)?,
                    vec![big(&kp.private.p)?, big(&kp.private.q)?],
                )
                .map_err(|e| KeyError::Parse(e.to_string()))?;
                Self::from_rsa(key)
            }
            other => Err(KeyError::UnsupportedType(
                other
                    .algorithm()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "unknown".into()),
            )),
        }
    }

    /// An Ed25519 key from its 32-byte seed.
    pub fn from_ed25519_seed(seed: [u8; 32]) -> Self {
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = PublicKey::from_ed25519(sk.verifying_key());
        Self {
            kind: PrivateKind::Ed25519(Box::new(sk)),
            public,
        }
    }

    /// Wraps an RSA private key (any size the `rsa` crate accepts, including 512 bits).
    pub fn from_rsa(key: RsaPrivateKey) -> Result<Self, KeyError> {
        key.validate().map_err(|e| KeyError::Parse(e.to_string()))?;
        let public = PublicKey::from_rsa(key.to_public_key());
        Ok(Self {
            kind: PrivateKind::Rsa(Box::new(key)),
            public,
        })
    }

    /// A fresh random Ed25519 key.
    pub fn generate_ed25519() -> Self {
        let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
        Self::from_ed25519_seed(sk.to_bytes())
    }

    /// A fresh random RSA key of `bits` bits.
    pub fn generate_rsa(bits: usize) -> Result<Self, KeyError> {
        let key =
            RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| KeyError::Parse(e.to_string()))?;
        Self::from_rsa(key)
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The signature algorithms this key can make, best first. A 512-bit RSA key cannot
    /// hold a SHA-512 DigestInfo, so `rsa-sha2-512` is left out for keys that small.
    pub fn algorithms(&self) -> Vec<SignatureAlgorithm> {
        match &self.kind {
            PrivateKind::Ed25519(_) => vec![SignatureAlgorithm::Ed25519],
            PrivateKind::Rsa(k) => {
                let size = k.size();
                [
                    SignatureAlgorithm::RsaSha512,
                    SignatureAlgorithm::RsaSha256,
                    SignatureAlgorithm::RsaSha1,
                ]
                .into_iter()
                .filter(|a| a.rsa_digest_info_len() + PKCS1_OVERHEAD <= size)
                .collect()
            }
        }
    }

    /// Signs `data`, returning the raw signature bytes (not the SSH signature blob).
    pub fn sign_raw(&self, alg: SignatureAlgorithm, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !self.algorithms().contains(&alg) {
            return Err(KeyError::UnsupportedAlgorithm(alg.name()));
        }
        match (&self.kind, alg) {
            (PrivateKind::Ed25519(sk), SignatureAlgorithm::Ed25519) => {
                use ed25519_dalek::Signer;
                Ok(sk.sign(data).to_bytes().to_vec())
            }
            (PrivateKind::Rsa(k), alg) => {
                let (scheme, hashed) = rsa_scheme(alg, data)?;
                // Blinding (the RNG) keeps the private-key operation's timing independent
                // of the key.
                k.sign_with_rng(&mut OsRng, scheme, &hashed)
                    .map_err(|e| KeyError::Sign(e.to_string()))
            }
            _ => Err(KeyError::UnsupportedAlgorithm(alg.name())),
        }
    }

    /// Signs `data`, returning the SSH signature blob (`string alg, string sig`).
    pub fn sign(&self, alg: SignatureAlgorithm, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        let raw = self.sign_raw(alg, data)?;
        let mut blob = Vec::with_capacity(raw.len() + 24);
        wire::put_string(&mut blob, alg.name().as_bytes());
        wire::put_string(&mut blob, &raw);
        Ok(blob)
    }
}

fn rsa_scheme(alg: SignatureAlgorithm, data: &[u8]) -> Result<(Pkcs1v15Sign, Vec<u8>), KeyError> {
    Ok(match alg {
        SignatureAlgorithm::RsaSha512 => (
            Pkcs1v15Sign::new::<sha2::Sha512>(),
            sha2::Sha512::digest(data).to_vec(),
        ),
        SignatureAlgorithm::RsaSha256 => (
            Pkcs1v15Sign::new::<sha2::Sha256>(),
            sha2::Sha256::digest(data).to_vec(),
        ),
        SignatureAlgorithm::RsaSha1 => (
            Pkcs1v15Sign::new::<sha1::Sha1>(),
            sha1::Sha1::digest(data).to_vec(),
        ),
        SignatureAlgorithm::Ed25519 => return Err(KeyError::UnsupportedAlgorithm(alg.name())),
    })
}

#[derive(Clone)]
enum PublicKind {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(RsaPublicKey),
}

/// A public key (Ed25519 or RSA), identified by its SSH wire blob.
#[derive(Clone)]
pub struct PublicKey {
    blob: Vec<u8>,
    kind: PublicKind,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.blob == other.blob
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.key_type(), self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_openssh())
    }
}

impl PublicKey {
    fn from_ed25519(vk: ed25519_dalek::VerifyingKey) -> Self {
        let mut blob = Vec::with_capacity(51);
        wire::put_string(&mut blob, b"ssh-ed25519");
        wire::put_string(&mut blob, vk.as_bytes());
        Self {
            blob,
            kind: PublicKind::Ed25519(vk),
        }
    }

    fn from_rsa(pk: RsaPublicKey) -> Self {
        let mut blob = Vec::with_capacity(pk.size() + 32);
        wire::put_string(&mut blob, b"ssh-rsa");
        wire::put_mpint_positive(&mut blob, &pk.e().to_bytes_be());
        wire::put_mpint_positive(&mut blob, &pk.n().to_bytes_be());
        Self {
            blob,
            kind: PublicKind::Rsa(pk),
        }
    }

    /// Parses an SSH public key blob (RFC 4253 §6.6).
    pub fn from_blob(blob: &[u8]) -> Result<Self, KeyError> {
        let mut r = Reader::new(blob);
        let ty = r.string().map_err(|_| KeyError::Blob("truncated"))?;
        let kind = match ty {
            b"ssh-ed25519" => {
                let raw = r.string().map_err(|_| KeyError::Blob("truncated"))?;
                let arr: [u8; 32] = raw.try_into().map_err(|_| KeyError::Blob("bad length"))?;
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&arr)
                    .map_err(|_| KeyError::Blob("not a curve point"))?;
                PublicKind::Ed25519(vk)
            }
            b"ssh-rsa" => {
                let e = r.mpint().map_err(|_| KeyError::Blob("truncated"))?;
                let n = r.mpint().map_err(|_| KeyError::Blob("truncated"))?;
                if e.first().is_some_and(|b| b & 0x80 != 0)
                    || n.first().is_some_and(|b| b & 0x80 != 0)
                {
                    return Err(KeyError::Blob("negative RSA component"));
                }
                let pk = RsaPublicKey::new_with_max_size(
                    BigUint::from_bytes_be(n),
                    BigUint::from_bytes_be(e),
                    MAX_RSA_BITS,
                )
                .map_err(|_| KeyError::Blob("invalid RSA key"))?;
                PublicKind::Rsa(pk)
            }
            other => {
                return Err(KeyError::UnsupportedType(
                    String::from_utf8_lossy(other).into_owned(),
                ))
            }
        };
        if r.remaining() != 0 {
            return Err(KeyError::Blob("trailing bytes"));
        }
        Ok(Self {
            blob: blob.to_vec(),
            kind,
        })
    }

    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA... comment`), as found in
    /// `*.pub` and `authorized_keys` files (without options).
    pub fn from_openssh(line: &str) -> Result<Self, KeyError> {
        let mut parts = line.split_whitespace();
        let ty = parts.next().ok_or(KeyError::UnknownFormat)?;
        let b64 = parts.next().ok_or(KeyError::UnknownFormat)?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| KeyError::Parse(e.to_string()))?;
        let key = Self::from_blob(&blob)?;
        if key.key_type() != ty {
            return Err(KeyError::Parse(format!(
                "key type {ty} does not match its blob"
            )));
        }
        Ok(key)
    }

    /// The wire blob.
    pub fn to_blob(&self) -> &[u8] {
        &self.blob
    }

    /// The OpenSSH one-line form, without comment.
    pub fn to_openssh(&self) -> String {
        format!(
            "{} {}",
            self.key_type(),
            base64::engine::general_purpose::STANDARD.encode(&self.blob)
        )
    }

    /// `ssh-ed25519` or `ssh-rsa`.
    pub fn key_type(&self) -> &'static str {
        match self.kind {
            PublicKind::Ed25519(_) => "ssh-ed25519",
            PublicKind::Rsa(_) => "ssh-rsa",
        }
    }

    /// RSA modulus size in bits (0 for Ed25519).
    pub fn rsa_bits(&self) -> usize {
        match &self.kind {
            PublicKind::Ed25519(_) => 0,
            PublicKind::Rsa(pk) => pk.n().bits(),
        }
    }

    /// The OpenSSH SHA-256 fingerprint (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        let digest = sha2::Sha256::digest(&self.blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// Whether `alg` signatures can come from this key.
    pub fn supports(&self, alg: SignatureAlgorithm) -> bool {
        match self.kind {
            PublicKind::Ed25519(_) => alg == SignatureAlgorithm::Ed25519,
            PublicKind::Rsa(_) => alg.is_rsa(),
        }
    }

    /// Checks an SSH signature blob over `data`; the blob's algorithm must be `expected`.
    pub fn verify(
        &self,
        expected: SignatureAlgorithm,
        data: &[u8],
        sig_blob: &[u8],
    ) -> Result<(), Error> {
        let mut r = Reader::new(sig_blob);
        let name = r.utf8()?;
        let raw = r.string()?;
        if name != expected.name() || !self.supports(expected) {
            return Err(Error::BadSignature);
        }
        self.verify_raw(expected, data, raw)
    }

    /// Checks raw signature bytes over `data`.
    pub fn verify_raw(
        &self,
        alg: SignatureAlgorithm,
        data: &[u8],
        raw: &[u8],
    ) -> Result<(), Error> {
        match (&self.kind, alg) {
            (PublicKind::Ed25519(vk), SignatureAlgorithm::Ed25519) => {
                let arr: [u8; 64] = raw.try_into().map_err(|_| Error::BadSignature)?;
                let sig = ed25519_dalek::Signature::from_bytes(&arr);
                vk.verify_strict(data, &sig)
                    .map_err(|_| Error::BadSignature)
            }
            (PublicKind::Rsa(pk), alg) if alg.is_rsa() => {
                let size = pk.size();
                if raw.len() > size {
                    return Err(Error::BadSignature);
                }
                // Some signers strip leading zero bytes; PKCS#1 wants the full width.
                let mut padded = vec![0u8; size - raw.len()];
                padded.extend_from_slice(raw);
                let (scheme, hashed) = rsa_scheme(alg, data).map_err(|_| Error::BadSignature)?;
                pk.verify(scheme, &hashed, &padded)
                    .map_err(|_| Error::BadSignature)
            }
            _ => Err(Error::BadSignature),
        }
    }
}
