//! The connection driver: one future per connection that owns the byte stream and runs
//! the version exchange, key exchanges, user authentication and the connection layer.
//!
//! It is a hand-written poll loop rather than an async fn so that reading, writing,
//! timers and the handles' requests all make progress from one task without any
//! cancellation hazards: every piece of state lives in the struct between polls.
//!
//! This file holds the [`Driver`] itself, the two roles' entry points and the packet
//! dispatch; the driver's other methods are grouped by protocol layer:
//! [`key_exchange`] (RFC 4253 §7), [`auth`] (RFC 4252), [`connection`] (RFC 4254) and
//! [`stream`] (version exchange, packet I/O, timers and the poll loop).

mod auth;
mod connection;
mod key_exchange;
mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tracing::{debug, trace, warn};

use crate::cipher::{OpenState, PacketCipher};
use crate::config::{ClientConfig, Config, Handlers, ServerConfig};
use crate::conn::Connection;
use crate::error::{DisconnectReason, Error, Result};
use crate::kex::Negotiated;
use crate::keys::PublicKey;
use crate::msg::{self, Message};
use crate::shared::Shared;

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

    pub(super) fn common(&self) -> &Config {
        match &self.role {
            Role::Server(c) => &c.common,
            Role::Client(c) => &c.common,
        }
    }

    pub(super) fn is_server(&self) -> bool {
        matches!(self.role, Role::Server(_))
    }

    /// Seals a packet straight into the write buffer.
    pub(super) fn send(&mut self, payload: &[u8]) {
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

    pub(super) fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Handles one decoded packet: transport and authentication messages here (or in
    /// [`key_exchange`] and [`auth`]), the rest in [`connection`] once authenticated; [`stream`] reads them.
    pub(super) fn handle_packet(&mut self, seq: u32, payload: &[u8]) -> Result<()> {
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
