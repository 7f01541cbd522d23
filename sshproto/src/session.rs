//! The connection driver: one future per connection that owns the byte stream and runs
//! the version exchange, key exchanges, user authentication and the connection layer.
//!
//! It is a hand-written poll loop rather than an async fn so that reading, writing,
//! timers and the handles' requests all make progress from one task without any
//! cancellation hazards: every piece of state lives in the struct between polls.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::{debug, trace, warn};

use crate::cipher::{OpenState, PacketCipher};
use crate::config::{ClientConfig, Config, Handlers, NoneAuth, ServerConfig};
use crate::conn::{
    ChanPhase, ChannelOpenRequest, ChannelRequest, Connection, GlobalReply, GlobalRequest,
    GlobalWaiter, ReplySlot, SessionInfo, Shared,
};
use crate::error::{DisconnectReason, Error, OpenFailureReason, Result};
use crate::kex::{self, HashInputs, Negotiated};
use crate::keys::{PublicKey, SignatureAlgorithm};
use crate::msg::{self, AuthMethod, Message};
use crate::wire;

/// Junk accepted before the peer's version line (lines not starting with `SSH-`).
const MAX_PRE_VERSION: usize = 64 * 1024;
/// Longest line accepted during the version exchange.
const MAX_VERSION_LINE: usize = 8 * 1024;
/// Encrypted bytes waiting to be written before queued channel data stops being sealed.
const WBUF_SOFT: usize = 256 * 1024;
/// Encrypted bytes waiting to be written before the driver stops reading: only a peer
/// that floods requests without reading replies gets here.
const WBUF_HARD: usize = 4 * 1024 * 1024;
/// Packets decoded per loop round before other work gets a turn.
const PACKETS_PER_ROUND: usize = 64;
/// Loop rounds per poll before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 32;

enum Role {
    Server(Arc<ServerConfig>),
    Client(Arc<ClientConfig>),
}

enum KexState {
    Idle,
    /// Our KEXINIT is out; waiting for the peer's.
    SentInit {
        ours: Vec<u8>,
    },
    /// Both KEXINITs known; the ECDH messages are being exchanged.
    Exchanging {
        ours: Vec<u8>,
        theirs: Vec<u8>,
        neg: Negotiated,
        secret: Option<x25519_dalek::StaticSecret>,
        skip_next: bool,
    },
    /// Our NEWKEYS is out (outgoing keys switched); waiting for the peer's.
    AwaitNewKeys {
        rx_keys: crate::cipher::DirectionKeys,
        neg: Negotiated,
    },
}

impl KexState {
    /// Whether connection-layer messages must wait (RFC 4253 §7.1: from our KEXINIT to
    /// our NEWKEYS only transport messages may be sent).
    fn holds_outbound(&self) -> bool {
        matches!(
            self,
            KexState::SentInit { .. } | KexState::Exchanging { .. }
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ClientAuth {
    Waiting,
    ServiceRequested,
    TriedNone,
    TriedPublicKey,
}

/// Drives one connection. Poll it (spawn it, or `await` it alongside the work) for as
/// long as the connection should live; it resolves when the connection ends: `Ok` if it
/// ended cleanly (either side disconnected by application, or the stream ended between
/// packets after authentication), `Err` otherwise. Dropping it ends the connection.
pub struct Driver<S> {
    io: S,
    shared: Arc<Shared>,
    role: Role,
    handlers: Handlers,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    open_state: OpenState,
    rx: PacketCipher,
    rx_seq: u32,
    rx_bytes: u64,
    wbuf: Vec<u8>,
    wpos: usize,
    need_flush: bool,
    tx: PacketCipher,
    tx_seq: u32,
    tx_bytes: u64,
    our_version: Vec<u8>,
    peer_version: Option<Vec<u8>>,
    pre_version: usize,
    kex: KexState,
    session_id: Option<Vec<u8>>,
    strict: bool,
    initial_kex_done: bool,
    kex_count: u64,
    negotiated: Option<Negotiated>,
    host_key: Option<PublicKey>,
    client_key: Option<PublicKey>,
    user: String,
    authenticated: bool,
    client_auth: ClientAuth,
    service_accepted: bool,
    auth_attempts: u32,
    kex_timer: Option<Pin<Box<Sleep>>>,
    rekey_timer: Option<Pin<Box<Sleep>>>,
    keepalive_timer: Option<Pin<Box<Sleep>>>,
    keepalive_missed: u32,
    peer_eof: bool,
    closing: bool,
    shutdown_done: bool,
    finished: bool,
}

impl<S> std::fmt::Debug for Driver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("server", &matches!(self.role, Role::Server(_)))
            .field("authenticated", &self.authenticated)
            .field("kex_count", &self.kex_count)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

fn validate_common(c: &Config) -> Result<()> {
    let v = &c.version;
    if !(v.starts_with("SSH-2.0-") && v.len() <= 253 && !v.contains(['\r', '\n'])) {
        return Err(Error::Config(format!("bad version line {v:?}")));
    }
    let a = &c.algorithms;
    if a.kex.is_empty() || a.host_key.is_empty() || a.cipher.is_empty() {
        return Err(Error::Config("empty algorithm list".into()));
    }
    if a.mac.is_empty() && a.cipher.iter().any(|c| !c.is_aead()) {
        return Err(Error::Config("a non-AEAD cipher needs a MAC".into()));
    }
    if c.limits.max_packet_len < 35000 {
        return Err(Error::Config(
            "max_packet_len must be at least 35000".into(),
        ));
    }
    Ok(())
}

/// The server role.
#[derive(Debug, Clone, Copy)]
pub struct Server;

impl Server {
    /// Runs the server handshake (version exchange, key exchange, user authentication)
    /// on `stream`, bounded by the handshake timeout. On success returns the connection
    /// handle and the driver, which must then be polled (e.g. `tokio::spawn(driver)`).
    pub async fn accept<S>(stream: S, config: Arc<ServerConfig>) -> Result<(Connection, Driver<S>)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        validate_common(&config.common)?;
        if config.offered_host_algs().is_empty() {
            return Err(Error::Config(
                "no host key for any enabled host key algorithm".into(),
            ));
        }
        let timeout = config.common.handshake_timeout;
        let driver = Driver::new(stream, Role::Server(config))?;
        handshake(driver, timeout).await
    }
}

/// The client role.
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Runs the client handshake on `stream`, bounded by the handshake timeout. On
    /// success returns the connection handle and the driver, which must then be polled.
    pub async fn connect<S>(stream: S, config: Arc<ClientConfig>) -> Result<(Connection, Driver<S>)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        validate_common(&config.common)?;
        let timeout = config.common.handshake_timeout;
        let driver = Driver::new(stream, Role::Client(config))?;
        handshake(driver, timeout).await
    }
}

async fn handshake<S>(mut driver: Driver<S>, timeout: Duration) -> Result<(Connection, Driver<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let conn = Connection {
        shared: driver.shared.clone(),
    };
    let res = tokio::time::timeout(
        timeout,
        std::future::poll_fn(|cx| {
            if driver.authenticated {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut driver).poll(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Err(Error::ConnectionClosed)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending if driver.authenticated => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            }
        }),
    )
    .await;
    match res {
        Err(_) => {
            driver.finish(Some("handshake timed out".into()));
            Err(Error::Timeout("the handshake"))
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok((conn, driver)),
    }
}

fn disconnect_reason(e: &Error) -> Option<DisconnectReason> {
    Some(match e {
        Error::Io(_) | Error::Eof | Error::ConnectionClosed | Error::Disconnected { .. } => {
            return None
        }
        Error::Mac => DisconnectReason::MAC_ERROR,
        Error::NoCommonAlgorithm { .. } | Error::Kex(_) | Error::BadSignature => {
            DisconnectReason::KEY_EXCHANGE_FAILED
        }
        Error::HostKeyRejected(_) => DisconnectReason::HOST_KEY_NOT_VERIFIABLE,
        Error::Version(_) => DisconnectReason::VERSION_NOT_SUPPORTED,
        Error::AuthFailed(_) => DisconnectReason::NO_MORE_AUTH_METHODS,
        Error::KeepaliveTimeout | Error::Timeout(_) => DisconnectReason::CONNECTION_LOST,
        _ => DisconnectReason::PROTOCOL_ERROR,
    })
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn new(io: S, role: Role) -> Result<Self> {
        let common = match &role {
            Role::Server(c) => &c.common,
            Role::Client(c) => &c.common,
        };
        let shared = Arc::new(Shared::new(&common.limits, common.request_timeout));
        let max = usize::try_from(common.limits.max_packet_len).unwrap_or(usize::MAX / 2);
        let rbuf_len = max.saturating_add(64 * 1024 + 128);
        let user = match &role {
            Role::Client(c) => c.user.clone(),
            Role::Server(_) => String::new(),
        };
        let mut d = Self {
            io,
            shared,
            handlers: common.handlers.clone(),
            rbuf: vec![0u8; rbuf_len].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            open_state: OpenState::default(),
            rx: PacketCipher::None,
            rx_seq: 0,
            rx_bytes: 0,
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            need_flush: false,
            tx: PacketCipher::None,
            tx_seq: 0,
            tx_bytes: 0,
            our_version: common.version.as_bytes().to_vec(),
            peer_version: None,
            pre_version: 0,
            kex: KexState::Idle,
            session_id: None,
            strict: false,
            initial_kex_done: false,
            kex_count: 0,
            negotiated: None,
            host_key: None,
            client_key: None,
            user,
            authenticated: false,
            client_auth: ClientAuth::Waiting,
            service_accepted: false,
            auth_attempts: 0,
            kex_timer: None,
            rekey_timer: None,
            keepalive_timer: None,
            keepalive_missed: 0,
            peer_eof: false,
            closing: false,
            shutdown_done: false,
            finished: false,
            role,
        };
        d.wbuf.extend_from_slice(&d.our_version);
        d.wbuf.extend_from_slice(b"\r\n");
        // Our KEXINIT goes out right behind the version line, saving a round trip.
        d.start_kex()?;
        Ok(d)
    }

    fn common(&self) -> &Config {
        match &self.role {
            Role::Server(c) => &c.common,
            Role::Client(c) => &c.common,
        }
    }

    fn is_server(&self) -> bool {
        matches!(self.role, Role::Server(_))
    }

    /// Seals a packet straight into the write buffer.
    fn send(&mut self, payload: &[u8]) {
        trace!(
            msg = payload.first().copied().unwrap_or(0),
            len = payload.len(),
            "send"
        );
        let before = self.wbuf.len();
        self.tx.seal(self.tx_seq, payload, &mut self.wbuf);
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.tx_bytes = self
            .tx_bytes
            .saturating_add((self.wbuf.len() - before) as u64);
    }

    fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    // ---------------------------------------------------------------- key exchange

    fn start_kex(&mut self) -> Result<()> {
        let mut cookie = [0u8; 16];
        OsRng
            .try_fill_bytes(&mut cookie)
            .map_err(|_| Error::Kex("the OS random number generator failed"))?;
        let first = !self.initial_kex_done;
        let common = self.common();
        let (host_algs, marker) = match &self.role {
            Role::Server(c) => (c.offered_host_algs(), kex::STRICT_SERVER),
            Role::Client(c) => (c.common.algorithms.host_key.clone(), kex::STRICT_CLIENT),
        };
        // The strict-kex marker only means something in the first KEXINIT.
        let extra: Vec<&str> = if first && common.strict_kex {
            vec![marker]
        } else {
            vec![]
        };
        let payload = kex::build_kexinit(cookie, &common.algorithms, &host_algs, &extra);
        let timeout = common.handshake_timeout;
        debug!(first, "sending KEXINIT");
        self.send(&payload);
        self.kex = KexState::SentInit { ours: payload };
        self.kex_timer = Some(Box::pin(tokio::time::sleep(timeout)));
        Ok(())
    }

    fn on_kexinit(&mut self, seq: u32, payload: &[u8], theirs: &msg::KexInit<'_>) -> Result<()> {
        if matches!(self.kex, KexState::Idle) {
            self.start_kex()?;
        }
        let ours = match std::mem::replace(&mut self.kex, KexState::Idle) {
            KexState::SentInit { ours } => ours,
            _ => return Err(Error::Protocol("KEXINIT during a key exchange".into())),
        };
        if !self.initial_kex_done {
            let peer_marker = if self.is_server() {
                kex::STRICT_CLIENT
            } else {
                kex::STRICT_SERVER
            };
            self.strict =
                self.common().strict_kex && wire::names(theirs.kex).any(|n| n == peer_marker);
            if self.strict && seq != 0 {
                return Err(Error::Protocol(
                    "strict key exchange: KEXINIT was not the first packet".into(),
                ));
            }
        }
        let ours_parsed = match Message::parse(&ours)? {
            Message::KexInit(k) => k,
            _ => return Err(Error::Kex("internal: our KEXINIT does not parse")),
        };
        let (c, s) = if self.is_server() {
            (theirs, &ours_parsed)
        } else {
            (&ours_parsed, theirs)
        };
        let neg = kex::negotiate(c, s, self.is_server())?;
        let skip_next = theirs.first_kex_follows && kex::guess_was_wrong(c, s);
        debug!(?neg, strict = self.strict, "negotiated");
        let secret = if self.is_server() {
            None
        } else {
            let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            let q_c = x25519_dalek::PublicKey::from(&secret);
            self.send(&msg::kex_ecdh_init(q_c.as_bytes()));
            Some(secret)
        };
        self.kex = KexState::Exchanging {
            ours,
            theirs: payload.to_vec(),
            neg,
            secret,
            skip_next,
        };
        Ok(())
    }

    fn on_ecdh_init(&mut self, q_c: &[u8]) -> Result<()> {
        let Role::Server(cfg) = &self.role else {
            return Err(Error::Protocol("ECDH_INIT sent to a client".into()));
        };
        let cfg = cfg.clone();
        let (ours, theirs, neg) = match &mut self.kex {
            KexState::Exchanging { skip_next, .. } if *skip_next => {
                *skip_next = false;
                return Ok(());
            }
            KexState::Exchanging {
                ours, theirs, neg, ..
            } => (std::mem::take(ours), std::mem::take(theirs), *neg),
            _ => return Err(Error::Protocol("unexpected ECDH_INIT".into())),
        };
        let key = cfg
            .host_keys
            .iter()
            .find(|k| k.algorithms().contains(&neg.host_key))
            .ok_or(Error::Kex("no host key for the negotiated algorithm"))?;
        let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        let q_s = x25519_dalek::PublicKey::from(&secret);
        let k = kex::x25519_shared(&secret, q_c)?;
        let k_mpint = kex::encode_shared_secret(&*k);
        let k_s = key.public_key().to_blob().to_vec();
        let peer_version = self.peer_version.clone().unwrap_or_default();
        let h = kex::exchange_hash(
            &HashInputs {
                v_c: &peer_version,
                v_s: &self.our_version,
                i_c: &theirs,
                i_s: &ours,
                k_s: &k_s,
                q_c,
                q_s: q_s.as_bytes(),
            },
            &k_mpint,
        );
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        let sig = key.sign(neg.host_key, &h)?;
        self.send(&msg::kex_ecdh_reply(&k_s, q_s.as_bytes(), &sig));
        let keys = kex::derive_session_keys(&neg, &k_mpint, &h, &sid);
        self.send(&[msg::NEWKEYS]);
        self.tx = PacketCipher::new(&keys.s2c)?;
        if self.strict {
            self.tx_seq = 0;
        }
        if self.host_key.is_none() {
            self.host_key = Some(key.public_key().clone());
        }
        self.kex = KexState::AwaitNewKeys {
            rx_keys: keys.c2s,
            neg,
        };
        Ok(())
    }

    fn on_ecdh_reply(&mut self, k_s: &[u8], q_s: &[u8], sig: &[u8]) -> Result<()> {
        let Role::Client(cfg) = &self.role else {
            return Err(Error::Protocol("ECDH_REPLY sent to a server".into()));
        };
        let cfg = cfg.clone();
        let (ours, theirs, neg, secret) = match &mut self.kex {
            KexState::Exchanging { skip_next, .. } if *skip_next => {
                *skip_next = false;
                return Ok(());
            }
            KexState::Exchanging {
                ours,
                theirs,
                neg,
                secret,
                ..
            } => (
                std::mem::take(ours),
                std::mem::take(theirs),
                *neg,
                secret.take().ok_or(Error::Kex("no ephemeral key"))?,
            ),
            _ => return Err(Error::Protocol("unexpected ECDH_REPLY".into())),
        };
        let host = PublicKey::from_blob(k_s)?;
        if !host.supports(neg.host_key) {
            return Err(Error::Kex(
                "host key does not match the negotiated algorithm",
            ));
        }
        match &self.host_key {
            None => {
                if !cfg.host_key_check.accepts(&host) {
                    return Err(Error::HostKeyRejected(host.fingerprint()));
                }
            }
            // A re-key must not switch host keys.
            Some(prev) if *prev != host => return Err(Error::HostKeyRejected(host.fingerprint())),
            Some(_) => {}
        }
        let k = kex::x25519_shared(&secret, q_s)?;
        let k_mpint = kex::encode_shared_secret(&*k);
        let q_c = x25519_dalek::PublicKey::from(&secret);
        let peer_version = self.peer_version.clone().unwrap_or_default();
        let h = kex::exchange_hash(
            &HashInputs {
                v_c: &self.our_version,
                v_s: &peer_version,
                i_c: &ours,
                i_s: &theirs,
                k_s,
                q_c: q_c.as_bytes(),
                q_s,
            },
            &k_mpint,
        );
        host.verify(neg.host_key, &h, sig)?;
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        let keys = kex::derive_session_keys(&neg, &k_mpint, &h, &sid);
        self.send(&[msg::NEWKEYS]);
        self.tx = PacketCipher::new(&keys.c2s)?;
        if self.strict {
            self.tx_seq = 0;
        }
        self.host_key = Some(host);
        self.kex = KexState::AwaitNewKeys {
            rx_keys: keys.s2c,
            neg,
        };
        Ok(())
    }

    fn on_newkeys(&mut self) -> Result<()> {
        let (rx_keys, neg) = match std::mem::replace(&mut self.kex, KexState::Idle) {
            KexState::AwaitNewKeys { rx_keys, neg } => (rx_keys, neg),
            _ => return Err(Error::Protocol("unexpected NEWKEYS".into())),
        };
        self.rx = PacketCipher::new(&rx_keys)?;
        self.open_state = OpenState::default();
        if self.strict {
            self.rx_seq = 0;
        }
        self.kex_timer = None;
        self.kex_count += 1;
        self.rx_bytes = 0;
        self.tx_bytes = 0;
        self.negotiated = Some(neg);
        if let Some(iv) = self.common().rekey_interval {
            self.rekey_timer = Some(Box::pin(tokio::time::sleep(iv)));
        }
        debug!(kex_count = self.kex_count, "key exchange complete");
        if self.authenticated {
            let mut g = self.shared.lock();
            if let Some(info) = g.info.as_mut() {
                info.algorithms = neg;
                info.kex_count = self.kex_count;
            }
        }
        if !self.initial_kex_done {
            self.initial_kex_done = true;
            if !self.is_server() {
                self.send(&msg::service_request("ssh-userauth"));
                self.client_auth = ClientAuth::ServiceRequested;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- user auth

    fn set_authenticated(&mut self) {
        self.authenticated = true;
        let info = SessionInfo {
            peer_version: String::from_utf8_lossy(self.peer_version.as_deref().unwrap_or_default())
                .into_owned(),
            user: self.user.clone(),
            algorithms: self.negotiated.unwrap_or(Negotiated {
                kex: kex::KexAlgorithm::Curve25519Sha256,
                host_key: SignatureAlgorithm::Ed25519,
                cipher_c2s: crate::Cipher::ChaCha20Poly1305,
                cipher_s2c: crate::Cipher::ChaCha20Poly1305,
                mac_c2s: None,
                mac_s2c: None,
            }),
            strict_kex: self.strict,
            kex_count: self.kex_count,
            session_id: self.session_id.clone().unwrap_or_default(),
            host_key: self.host_key.clone(),
            client_key: self.client_key.clone(),
        };
        {
            let mut g = self.shared.lock();
            g.authenticated = true;
            g.info = Some(info);
        }
        if let Some(k) = self.common().keepalive {
            self.keepalive_timer = Some(Box::pin(tokio::time::sleep(k.interval)));
        }
        debug!(user = %self.user, "authenticated");
    }

    fn on_userauth_request(
        &mut self,
        user: &str,
        service: &str,
        method: &AuthMethod<'_>,
    ) -> Result<()> {
        let Role::Server(cfg) = &self.role else {
            return Err(Error::Protocol("USERAUTH_REQUEST sent to a client".into()));
        };
        let cfg = cfg.clone();
        if self.authenticated {
            // RFC 4252 §5.1: requests after success are ignored.
            return Ok(());
        }
        if !self.service_accepted {
            return Err(Error::Protocol(
                "USERAUTH_REQUEST before ssh-userauth was accepted".into(),
            ));
        }
        self.auth_attempts += 1;
        if self.auth_attempts > self.common().limits.max_auth_attempts {
            return Err(Error::AuthFailed("too many attempts".into()));
        }
        let mut methods: Vec<&str> = Vec::new();
        if !cfg.auth.authorized_keys.is_empty() {
            methods.push("publickey");
        }
        let fail = |d: &mut Self| d.send(&msg::userauth_failure(&methods, false));
        if service != "ssh-connection" {
            fail(self);
            return Ok(());
        }
        match method {
            AuthMethod::None => {
                let ok = match &cfg.auth.none {
                    NoneAuth::Deny => false,
                    NoneAuth::AnyUser => true,
                    NoneAuth::Users(users) => users.iter().any(|u| u == user),
                };
                if ok {
                    self.user = user.to_string();
                    self.send(&[msg::USERAUTH_SUCCESS]);
                    self.set_authenticated();
                } else {
                    fail(self);
                }
            }
            AuthMethod::PublicKey {
                algorithm,
                blob,
                signature,
            } => {
                let alg = SignatureAlgorithm::from_name(algorithm);
                let key = PublicKey::from_blob(blob).ok();
                let authorized = key.as_ref().is_some_and(|k| {
                    cfg.auth.authorized_keys.iter().any(|a| {
                        a.to_blob().len() == k.to_blob().len()
                            && bool::from(a.to_blob().ct_eq(k.to_blob()))
                    })
                });
                match (alg, key, authorized) {
                    (Some(alg), Some(key), true) if key.supports(alg) => match signature {
                        None => self.send(&msg::userauth_pk_ok(algorithm, blob)),
                        Some(sig) => {
                            let sid = self.session_id.clone().unwrap_or_default();
                            let signed = msg::userauth_pk_signed_data(&sid, user, algorithm, blob);
                            if key.verify(alg, &signed, sig).is_ok() {
                                self.user = user.to_string();
                                self.client_key = Some(key);
                                self.send(&[msg::USERAUTH_SUCCESS]);
                                self.set_authenticated();
                            } else {
                                debug!("publickey signature did not verify");
                                fail(self);
                            }
                        }
                    },
                    _ => fail(self),
                }
            }
            AuthMethod::Password | AuthMethod::Other(_) => fail(self),
        }
        Ok(())
    }

    fn on_userauth_failure(&mut self, methods: &str) -> Result<()> {
        let Role::Client(cfg) = &self.role else {
            return Err(Error::Protocol("USERAUTH_FAILURE sent to a server".into()));
        };
        let cfg = cfg.clone();
        if self.client_auth == ClientAuth::TriedNone
            && wire::names(methods).any(|m| m == "publickey")
        {
            if let Some(key) = &cfg.key {
                let alg = match cfg.key_algorithm {
                    Some(a) => a,
                    None => *key
                        .algorithms()
                        .first()
                        .ok_or(Error::AuthFailed("the user key cannot sign".into()))?,
                };
                let sid = self.session_id.clone().unwrap_or_default();
                let blob = key.public_key().to_blob().to_vec();
                let signed = msg::userauth_pk_signed_data(&sid, &self.user, alg.name(), &blob);
                let sig = key.sign(alg, &signed)?;
                let m = msg::userauth_pk_request(&self.user, alg.name(), &blob, Some(&sig));
                self.send(&m);
                self.client_auth = ClientAuth::TriedPublicKey;
                return Ok(());
            }
        }
        Err(Error::AuthFailed(methods.to_string()))
    }

    // ---------------------------------------------------------------- connection layer

    fn on_connection_message(&mut self, m: Message<'_>) -> Result<()> {
        let shared = self.shared.clone();
        let max_pending = shared.max_pending;
        match m {
            Message::GlobalRequest {
                name,
                want_reply,
                data,
            } => {
                let slot = if want_reply {
                    let s = Arc::new(ReplySlot::default());
                    let mut g = shared.lock();
                    if g.global_slots.len() >= max_pending {
                        return Err(Error::Limit("unanswered global requests"));
                    }
                    g.global_slots.push_back(s.clone());
                    Some(s)
                } else {
                    None
                };
                trace!(name, want_reply, "global request");
                let req = GlobalRequest::new(
                    name.to_string(),
                    want_reply,
                    data.to_vec(),
                    slot,
                    shared.wake.clone(),
                );
                let h = self
                    .handlers
                    .global
                    .get(name)
                    .or(self.handlers.global_fallback.as_ref())
                    .cloned();
                match h {
                    Some(h) => h(req),
                    None => drop(req),
                }
                shared.wake.replies_dirty.store(true, Ordering::Release);
            }
            Message::RequestSuccess { data } | Message::RequestFailure { data } => {
                let success = matches!(m, Message::RequestSuccess { .. });
                let waiter = shared.lock().global_pending.pop_front();
                match waiter {
                    Some(GlobalWaiter::App(tx)) => {
                        let _ = tx.send(GlobalReply {
                            success,
                            data: data.to_vec(),
                        });
                    }
                    Some(GlobalWaiter::Keepalive) => self.keepalive_missed = 0,
                    None => return Err(Error::Protocol("global reply without a request".into())),
                }
            }
            Message::ChannelOpen {
                channel_type,
                sender,
                window,
                max_packet,
                data,
            } => {
                {
                    let mut g = shared.lock();
                    if g.channels.len() + g.pending_opens >= shared.max_channels {
                        g.push(msg::channel_open_failure(
                            sender,
                            OpenFailureReason::RESOURCE_SHORTAGE.0,
                            "too many channels",
                        ));
                        return Ok(());
                    }
                    g.pending_opens += 1;
                }
                debug!(channel_type, data_len = data.len(), "channel open");
                let req = ChannelOpenRequest::new(
                    shared.clone(),
                    channel_type.to_string(),
                    data.to_vec(),
                    sender,
                    window,
                    max_packet,
                );
                match self.handlers.channel_open.clone() {
                    Some(h) => h(req),
                    None => req.reject(
                        OpenFailureReason::UNKNOWN_CHANNEL_TYPE,
                        &format!("unknown channel type {channel_type}"),
                    ),
                }
            }
            Message::ChannelOpenConfirmation {
                recipient,
                sender,
                window,
                max_packet,
            } => {
                let mut g = shared.lock();
                let Some(ch) = g.channels.get_mut(&recipient) else {
                    return Err(Error::Protocol(format!(
                        "confirmation for unknown channel {recipient}"
                    )));
                };
                let ChanPhase::Opening(tx) = &mut ch.phase else {
                    return Err(Error::Protocol(format!(
                        "channel {recipient} confirmed twice"
                    )));
                };
                let tx = tx.take();
                ch.phase = ChanPhase::Open;
                ch.remote_id = sender;
                ch.remote_window = window;
                ch.remote_max_packet = max_packet;
                let delivered = tx.is_some_and(|tx| tx.send(Ok(())).is_ok());
                if !delivered {
                    // The opener gave up waiting: close what nobody will use.
                    ch.close_sent = true;
                    let m = msg::channel_simple(msg::CHANNEL_CLOSE, sender);
                    g.push(m);
                }
            }
            Message::ChannelOpenFailure {
                recipient,
                reason,
                description,
            } => {
                let mut g = shared.lock();
                match g
                    .channels
                    .get(&recipient)
                    .map(|c| matches!(c.phase, ChanPhase::Opening(_)))
                {
                    Some(true) => {
                        if let Some(mut ch) = g.channels.remove(&recipient) {
                            if let ChanPhase::Opening(Some(tx)) =
                                std::mem::replace(&mut ch.phase, ChanPhase::Open)
                            {
                                let _ = tx.send(Err((reason, description)));
                            }
                        }
                    }
                    _ => {
                        return Err(Error::Protocol(format!(
                            "open failure for channel {recipient}"
                        )))
                    }
                }
            }
            Message::ChannelWindowAdjust { recipient, bytes } => {
                let mut g = shared.lock();
                if let Some(ch) = g.channels.get_mut(&recipient) {
                    ch.remote_window = ch.remote_window.saturating_add(bytes);
                    ch.wake_writers();
                }
            }
            Message::ChannelData { recipient, data } => {
                self.on_channel_data(recipient, None, data)?
            }
            Message::ChannelExtendedData {
                recipient,
                code,
                data,
            } => self.on_channel_data(recipient, Some(code), data)?,
            Message::ChannelEof { recipient } => {
                let mut g = shared.lock();
                if let Some(ch) = g.channels.get_mut(&recipient) {
                    ch.eof_received = true;
                    ch.wake_all();
                }
            }
            Message::ChannelClose { recipient } => {
                let mut g = shared.lock();
                let Some(ch) = g.channels.get_mut(&recipient) else {
                    debug!(recipient, "close for unknown channel");
                    return Ok(());
                };
                if !ch.is_open() {
                    return Err(Error::Protocol(format!(
                        "close for unconfirmed channel {recipient}"
                    )));
                }
                ch.close_received = true;
                let mut reply = None;
                if !ch.close_sent {
                    ch.close_sent = true;
                    reply = Some(msg::channel_simple(msg::CHANNEL_CLOSE, ch.remote_id));
                }
                ch.pending_replies.clear();
                ch.reply_slots.clear();
                ch.wake_all();
                let remove = ch.finished();
                if let Some(m) = reply {
                    g.push(m);
                }
                if remove {
                    g.channels.remove(&recipient);
                }
            }
            Message::ChannelRequest {
                recipient,
                name,
                want_reply,
                data,
            } => self.on_channel_request(recipient, name, want_reply, data)?,
            Message::ChannelSuccess { recipient } | Message::ChannelFailure { recipient } => {
                let ok = matches!(m, Message::ChannelSuccess { .. });
                let mut g = shared.lock();
                if let Some(ch) = g.channels.get_mut(&recipient) {
                    match ch.pending_replies.pop_front() {
                        Some(Some(tx)) => {
                            let _ = tx.send(ok);
                        }
                        Some(None) => {}
                        None => {
                            return Err(Error::Protocol("channel reply without a request".into()))
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_channel_data(&mut self, id: u32, ext: Option<u32>, data: &[u8]) -> Result<()> {
        let shared = self.shared.clone();
        let mut g = shared.lock();
        let Some(ch) = g.channels.get_mut(&id) else {
            debug!(id, "data for unknown channel");
            return Ok(());
        };
        if !ch.is_open() {
            return Err(Error::Protocol(format!("data on unconfirmed channel {id}")));
        }
        let len = u32::try_from(data.len()).map_err(|_| Error::Limit("channel data"))?;
        if len > ch.local_window {
            return Err(Error::Protocol(format!("channel {id} window exceeded")));
        }
        if len > ch.local_max_packet {
            // Tolerated, as OpenSSH does: the window alone bounds what is buffered.
            debug!(
                id,
                len, "channel data larger than the agreed maximum packet"
            );
        }
        ch.local_window -= len;
        let keep = match ext {
            None => ch.data_readers > 0,
            Some(crate::channel::EXTENDED_DATA_STDERR) => ch.keeps_stderr(),
            Some(_) => false,
        } && !ch.close_sent;
        if keep {
            if ext.is_some() {
                ch.ext.extend(data);
                if let Some(w) = ch.ext_waker.take() {
                    w.wake();
                }
            } else {
                ch.data.extend(data);
                if let Some(w) = ch.read_waker.take() {
                    w.wake();
                }
            }
        } else {
            ch.consumed = ch.consumed.saturating_add(len);
            g.maybe_adjust(id);
        }
        Ok(())
    }

    fn on_channel_request(
        &mut self,
        id: u32,
        name: &str,
        want_reply: bool,
        data: &[u8],
    ) -> Result<()> {
        let shared = self.shared.clone();
        let handler = self.handlers.channel.get(name).cloned();
        let req = {
            let mut g = shared.lock();
            let Some(ch) = g.channels.get_mut(&id) else {
                debug!(id, name, "request for unknown channel");
                return Ok(());
            };
            if !ch.is_open() {
                return Err(Error::Protocol(format!(
                    "request on unconfirmed channel {id}"
                )));
            }
            if ch.close_sent {
                // Nothing may follow our CLOSE, not even a reply.
                return Ok(());
            }
            let slot = if want_reply {
                if ch.reply_slots.len() >= shared.max_pending {
                    return Err(Error::Limit("unanswered channel requests"));
                }
                let s = Arc::new(ReplySlot::default());
                ch.reply_slots.push_back(s.clone());
                Some(s)
            } else {
                None
            };
            trace!(id, name, want_reply, "channel request");
            let req = ChannelRequest::new(
                id,
                name.to_string(),
                want_reply,
                data.to_vec(),
                slot,
                shared.wake.clone(),
            );
            match name {
                "exit-status" if handler.is_none() => {
                    ch.exit_status = req.exit_status().ok();
                    ch.wake_all();
                    Some(req)
                }
                "exit-signal" if handler.is_none() => {
                    ch.exit_signal = crate::channel::ExitSignal::decode(data).ok();
                    ch.wake_all();
                    Some(req)
                }
                _ if handler.is_some() => Some(req),
                _ if ch.handles > 0
                    && !ch.requests_dropped
                    && ch.requests.len() < shared.max_pending =>
                {
                    ch.requests.push_back(req);
                    if let Some(w) = ch.requests_waker.take() {
                        w.wake();
                    }
                    None
                }
                _ => Some(req),
            }
        };
        if let Some(req) = req {
            match (handler, req.name()) {
                (Some(h), _) => h(req),
                (None, "exit-status" | "exit-signal") => req.succeed(),
                (None, _) => drop(req),
            }
        }
        shared.wake.replies_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Moves answered replies, in order, into the outbound queue.
    fn flush_replies(&mut self) {
        if !self.shared.wake.replies_dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut g = self.shared.lock();
        while g.global_slots.front().is_some_and(|s| s.is_filled()) {
            if let Some((ok, data)) = g.global_slots.pop_front().and_then(|s| s.take()) {
                g.push(msg::request_reply(ok, &data));
            }
        }
        let mut replies = Vec::new();
        for ch in g.channels.values_mut() {
            while ch.reply_slots.front().is_some_and(|s| s.is_filled()) {
                if let Some((ok, _)) = ch.reply_slots.pop_front().and_then(|s| s.take()) {
                    if !ch.close_sent {
                        let n = if ok {
                            msg::CHANNEL_SUCCESS
                        } else {
                            msg::CHANNEL_FAILURE
                        };
                        replies.push(msg::channel_simple(n, ch.remote_id));
                    }
                }
            }
        }
        for r in replies {
            g.push(r);
        }
    }

    /// Seals queued connection-layer messages into the write buffer.
    fn drain_outbound(&mut self, all: bool) -> bool {
        if self.kex.holds_outbound() || !self.authenticated {
            return false;
        }
        let rekey_bytes = self.common().rekey_bytes;
        let mut moved = false;
        let mut batch = Vec::new();
        {
            let mut g = self.shared.lock();
            let mut budget = WBUF_SOFT.saturating_sub(self.pending_write());
            while let Some(m) = g.outbound.front() {
                if !all && (budget == 0 || m.len() > budget && moved) {
                    break;
                }
                budget = budget.saturating_sub(m.len() + 64);
                if let Some(m) = g.outbound.pop_front() {
                    g.outbound_bytes = g.outbound_bytes.saturating_sub(m.len());
                    batch.push(m);
                    moved = true;
                }
                if !all && batch.len() >= 256 {
                    break;
                }
            }
            if moved && g.outbound_bytes < self.shared.outbound_limit {
                for w in g.outbound_waiters.drain(..) {
                    w.wake();
                }
            }
        }
        for m in batch {
            self.send(&m);
        }
        if self.tx_bytes > rekey_bytes {
            self.shared.lock().rekey_requested = true;
        }
        moved
    }

    // ---------------------------------------------------------------- packet dispatch

    fn handle_packet(&mut self, seq: u32, payload: &[u8]) -> Result<()> {
        let n = payload
            .first()
            .copied()
            .ok_or(Error::Malformed("empty payload"))?;
        trace!(msg = n, len = payload.len(), seq, "recv");
        if let Some(k) = self.common().keepalive {
            self.keepalive_missed = 0;
            if let Some(t) = self.keepalive_timer.as_mut() {
                t.as_mut().reset(Instant::now() + k.interval);
            }
        }
        if self.strict && !self.initial_kex_done && !msg::is_kex_message(n) {
            return Err(Error::Protocol(format!(
                "strict key exchange: message {n} during the initial key exchange"
            )));
        }
        let m = Message::parse(payload)?;
        match m {
            Message::Disconnect {
                reason,
                description,
            } => {
                debug!(reason, %description, "peer disconnected");
                self.closing = true;
                self.shutdown_done = true;
                if reason == DisconnectReason::BY_APPLICATION.0 && self.authenticated {
                    return Err(Error::ConnectionClosed);
                }
                return Err(Error::Disconnected {
                    reason: DisconnectReason(reason),
                    description,
                });
            }
            Message::Ignore | Message::ExtInfo => {}
            Message::Unimplemented { seq } => {
                debug!(seq, "peer does not implement a message we sent")
            }
            Message::Debug { message } => debug!(%message, "peer debug message"),
            Message::KexInit(k) => self.on_kexinit(seq, payload, &k)?,
            Message::NewKeys => self.on_newkeys()?,
            Message::KexEcdhInit { q_c } => self.on_ecdh_init(q_c)?,
            Message::KexEcdhReply {
                k_s,
                q_s,
                signature,
            } => self.on_ecdh_reply(k_s, q_s, signature)?,
            Message::ServiceRequest { name } => {
                if !self.is_server() || !self.initial_kex_done {
                    return Err(Error::Protocol("unexpected SERVICE_REQUEST".into()));
                }
                if name == "ssh-userauth" && !self.service_accepted {
                    self.service_accepted = true;
                    self.send(&msg::service_accept(name));
                } else {
                    return Err(Error::Protocol(format!("service {name} not available")));
                }
            }
            Message::ServiceAccept { name } => {
                if self.is_server()
                    || self.client_auth != ClientAuth::ServiceRequested
                    || name != "ssh-userauth"
                {
                    return Err(Error::Protocol("unexpected SERVICE_ACCEPT".into()));
                }
                let m = msg::userauth_none(&self.user);
                self.send(&m);
                self.client_auth = ClientAuth::TriedNone;
            }
            Message::UserauthRequest {
                user,
                service,
                method,
            } => self.on_userauth_request(user, service, &method)?,
            Message::UserauthFailure { methods, .. } => {
                if !self.authenticated {
                    self.on_userauth_failure(methods)?;
                }
            }
            Message::UserauthSuccess => {
                if self.is_server() || self.client_auth == ClientAuth::Waiting {
                    return Err(Error::Protocol("unexpected USERAUTH_SUCCESS".into()));
                }
                if !self.authenticated {
                    self.set_authenticated();
                }
            }
            Message::UserauthBanner { message } => debug!(%message, "auth banner"),
            Message::UserauthPkOk { .. } => {}
            Message::Unknown(n) => {
                if self.strict && !self.initial_kex_done {
                    return Err(Error::Protocol(format!("unknown message {n}")));
                }
                debug!(n, "unknown message");
                self.send(&msg::unimplemented(seq));
            }
            other => {
                if !self.authenticated {
                    return Err(Error::Protocol(format!(
                        "message {n} before authentication"
                    )));
                }
                self.on_connection_message(other)?;
            }
        }
        Ok(())
    }

    /// Parses the peer's version line out of the input; `false` if more input is needed.
    fn read_version(&mut self) -> Result<bool> {
        loop {
            let avail = self.rbuf.get(self.rstart..self.rend).unwrap_or(&[]);
            let Some(i) = avail.iter().position(|&b| b == b'\n') else {
                if avail.len() >= MAX_VERSION_LINE {
                    return Err(Error::Version("line too long".into()));
                }
                return Ok(false);
            };
            let mut line = avail.get(..i).unwrap_or(&[]);
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            let line = line.to_vec();
            self.rstart += i + 1;
            if line.starts_with(b"SSH-") {
                if !(line.starts_with(b"SSH-2.0-") || line.starts_with(b"SSH-1.99-")) {
                    return Err(Error::Version(String::from_utf8_lossy(&line).into_owned()));
                }
                debug!(version = %String::from_utf8_lossy(&line), "peer version");
                self.peer_version = Some(line);
                return Ok(true);
            }
            self.pre_version += i + 1;
            if self.pre_version > MAX_PRE_VERSION {
                return Err(Error::Version("no version line".into()));
            }
        }
    }

    /// Decodes and handles buffered packets; returns how many.
    fn process_input(&mut self) -> Result<usize> {
        let mut count = 0;
        if self.peer_version.is_none() {
            if !self.read_version()? {
                return Ok(0);
            }
            count += 1;
        }
        let max = self.common().limits.max_packet_len;
        while count < PACKETS_PER_ROUND && !self.closing {
            let seq = self.rx_seq;
            let Some(buf) = self.rbuf.get_mut(self.rstart..self.rend) else {
                break;
            };
            let Some(opened) = self.rx.open(seq, buf, &mut self.open_state, max)? else {
                break;
            };
            let range = (self.rstart + opened.payload.start)..(self.rstart + opened.payload.end);
            self.rstart += opened.consumed;
            self.rx_seq = seq.wrapping_add(1);
            self.rx_bytes = self.rx_bytes.saturating_add(opened.consumed as u64);
            // Borrow the buffer out of self so the handlers can take `&mut self`.
            let rbuf = std::mem::take(&mut self.rbuf);
            let res = match rbuf.get(range) {
                Some(payload) => self.handle_packet(seq, payload),
                None => Err(Error::Malformed("payload range")),
            };
            self.rbuf = rbuf;
            res?;
            count += 1;
        }
        if self.rx_bytes > self.common().rekey_bytes {
            self.shared.lock().rekey_requested = true;
        }
        Ok(count)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize>> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() || self.rstart > self.rbuf.len() / 2 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let Some(space) = self.rbuf.get_mut(self.rend..) else {
            return Poll::Ready(Ok(0));
        };
        if space.is_empty() {
            // Cannot happen: packet lengths are checked against a limit below the buffer
            // size. Treated as a protocol error rather than a hang.
            return Poll::Ready(Err(Error::Limit("input buffer")));
        }
        let mut rb = ReadBuf::new(space);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.rend += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Result<bool> {
        let mut progress = false;
        while self.wpos < self.wbuf.len() {
            let chunk = self.wbuf.get(self.wpos..).unwrap_or(&[]);
            match Pin::new(&mut self.io).poll_write(cx, chunk) {
                Poll::Ready(Ok(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    self.need_flush = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => break,
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > 4 * WBUF_SOFT {
                self.wbuf.shrink_to(WBUF_SOFT);
            }
            if self.need_flush {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.need_flush = false,
                    Poll::Ready(Err(e)) => return Err(e.into()),
                    Poll::Pending => {}
                }
            }
        } else if self.wpos > WBUF_SOFT {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(progress)
    }

    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Result<()> {
        if let Some(t) = self.kex_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Err(Error::Timeout("the key exchange"));
            }
        }
        if let Some(t) = self.rekey_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                self.rekey_timer = None;
                self.shared.lock().rekey_requested = true;
            }
        }
        if let (Some(k), Some(t)) = (self.common().keepalive, self.keepalive_timer.as_mut()) {
            if t.as_mut().poll(cx).is_ready() {
                if self.keepalive_missed >= k.max_missed {
                    return Err(Error::KeepaliveTimeout);
                }
                self.keepalive_missed += 1;
                t.as_mut().reset(Instant::now() + k.interval);
                // Poll once more so the new deadline is registered with the timer.
                let _ = t.as_mut().poll(cx);
                let mut g = self.shared.lock();
                g.push(msg::global_request("keepalive@openssh.com", true, &[]));
                g.global_pending.push_back(GlobalWaiter::Keepalive);
            }
        }
        Ok(())
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.wake.register(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            let mut progress = false;
            if !self.closing {
                self.poll_timers(cx)?;
                let (rekey, disconnect) = {
                    let mut g = self.shared.lock();
                    (std::mem::take(&mut g.rekey_requested), g.disconnect.take())
                };
                if rekey && matches!(self.kex, KexState::Idle) && self.initial_kex_done {
                    self.start_kex()?;
                }
                self.flush_replies();
                if let Some((reason, description)) = disconnect {
                    // Send what is queued first, unless a key exchange holds it.
                    self.drain_outbound(true);
                    self.send(&msg::disconnect(reason, &description));
                    self.closing = true;
                } else {
                    progress |= self.drain_outbound(false);
                }
            }
            progress |= self.poll_write_out(cx)?;
            if self.closing {
                if self.pending_write() > 0 {
                    return Poll::Pending;
                }
                if !self.shutdown_done {
                    match Pin::new(&mut self.io).poll_shutdown(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(_) => self.shutdown_done = true,
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if !self.peer_eof && self.pending_write() < WBUF_HARD {
                match self.poll_fill(cx)? {
                    Poll::Ready(0) => {
                        self.peer_eof = true;
                        progress = true;
                    }
                    Poll::Ready(_) => progress = true,
                    Poll::Pending => {}
                }
            }
            let handled = self.process_input()?;
            if handled > 0 {
                progress = true;
            }
            if self.peer_eof && handled == 0 && !self.closing {
                let clean = self.authenticated && self.rstart == self.rend;
                // Get out whatever we still have (e.g. replies), best effort.
                let _ = self.poll_write_out(cx);
                return Poll::Ready(if clean { Ok(()) } else { Err(Error::Eof) });
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Plenty of work left: yield so other tasks on this thread get to run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Ends the connection for every handle.
    fn finish(&mut self, reason: Option<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let wakers = self.shared.lock().mark_closed(reason);
        for w in wakers {
            w.wake();
        }
    }
}

impl<S> Future for Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Ok(()));
        }
        match this.poll_drive(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                debug!("connection closed");
                this.finish(Some("closed".into()));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(Error::ConnectionClosed)) => {
                debug!("peer disconnected by application");
                this.finish(Some("the peer disconnected".into()));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                if let Some(reason) = disconnect_reason(&e) {
                    warn!(error = %e, "closing connection");
                    // Best effort: tell the peer why, without waiting.
                    self_disconnect(this, cx, reason, &e.to_string());
                } else {
                    debug!(error = %e, "connection ended");
                }
                this.finish(Some(e.to_string()));
                Poll::Ready(Err(e))
            }
        }
    }
}

fn self_disconnect<S>(d: &mut Driver<S>, cx: &mut Context<'_>, reason: DisconnectReason, text: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if d.shutdown_done {
        return;
    }
    d.send(&msg::disconnect(reason.0, text));
    let _ = d.poll_write_out(cx);
    let _ = Pin::new(&mut d.io).poll_shutdown(cx);
    d.shutdown_done = true;
}

impl<S> Drop for Driver<S> {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let wakers = self
                .shared
                .lock()
                .mark_closed(Some("the driver was dropped".into()));
            for w in wakers {
                w.wake();
            }
        }
    }
}
