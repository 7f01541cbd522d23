//! The VCH's Docker Engine API endpoint (`vch daemon`): what the real `docker` client talks
//! to. Every request is parsed here and answered by one [`Engine`] call; the
//! engine does the work, this module only speaks HTTP and docker's JSON.
//!
//! One file per area of the API, as moby's routers: [`system`] (`/_ping`, `/version`,
//! `/info`, `/events`), [`containers`], [`exec`], [`volumes`], [`networks`], [`images`]; the
//! hijacked streams of attach and exec in [`stream`]; routing in [`router`].

mod containers;
mod exec;
pub mod http;
pub mod images;
mod networks;
mod router;
mod services;
mod stream;
mod system;
pub mod tls;
mod volumes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::engine::Engine;

/// The API version this endpoint speaks: Debian 12's docker 20.10 client's; newer clients
/// negotiate down to it.
pub const API_VERSION: &str = "1.41";
/// The oldest version accepted in a request path.
pub const MIN_API_VERSION: &str = "1.12";

/// Daemon errors (at start; requests answer with [`http::ApiError`]).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another daemon serves {0} (its lock {1} is held)")]
    AlreadyRunning(PathBuf, PathBuf),
    #[error("invalid -H {0:?}: {1}")]
    BadAddress(String, String),
    #[error("refusing to listen on {0}: the endpoint starts VMs, so an address other than loopback needs --tlsverify with --tlscacert, --tlscert and --tlskey")]
    InsecureTcp(SocketAddr),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Address {
    /// Parses dockerd's `-H` forms: `unix:///path`, `tcp://HOST:PORT`, `fd://` is not
    /// supported.
    pub fn parse(s: &str) -> Result<Address, DaemonError> {
        let bad = |why: &str| DaemonError::BadAddress(s.into(), why.into());
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(bad("no path"));
            }
            return Ok(Address::Unix(PathBuf::from(p)));
        }
        if let Some(hp) = s.strip_prefix("tcp://") {
            let hp = hp.trim_end_matches('/');
            let addr = if hp.starts_with(':') {
                format!("127.0.0.1{hp}")
            } else {
                hp.to_owned()
            };
            return std::net::ToSocketAddrs::to_socket_addrs(&addr)
                .map_err(|e| bad(&e.to_string()))?
                .next()
                .map(Address::Tcp)
                .ok_or_else(|| bad("no address"));
        }
        Err(bad("use unix:///PATH or tcp://HOST:PORT"))
    }

    /// The form `DOCKER_HOST` takes.
    pub fn docker_host(&self) -> String {
        match self {
            Address::Unix(p) => format!("unix://{}", p.display()),
            Address::Tcp(a) => format!("tcp://{a}"),
        }
    }
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub addresses: Vec<Address>,
    /// Client-certificate TLS for TCP listeners.
    pub tls: Option<tls::TlsFiles>,
    /// Hard limit on each container VM's life (the harness's safety net).
    pub container_timeout: Duration,
}

/// What every request handler works with.
#[derive(Debug)]
pub struct ApiState {
    pub engine: Engine,
    pub container_timeout: Duration,
    /// Tasks serving a client after its handler returned (waits, logs, events, hijacked
    /// streams): `/info` reports them as `NGoroutines`, so that a leak shows.
    pub streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl ApiState {
    pub fn new(engine: Engine, container_timeout: Duration) -> ApiState {
        ApiState {
            engine,
            container_timeout,
            streams: Arc::default(),
        }
    }

    /// Counts a streaming task while the guard lives.
    pub fn stream_guard(&self) -> StreamGuard {
        self.streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StreamGuard(self.streams.clone())
    }
}

/// See [`ApiState::stream_guard`].
#[derive(Debug)]
pub struct StreamGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Holds the state directory's daemon lock while alive.
#[derive(Debug)]
pub struct DaemonLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Takes `<state>/daemon.lock`: one daemon per state directory.
pub fn daemon_lock(state_root: &Path) -> Result<DaemonLock, DaemonError> {
    let path = state_root.join("daemon.lock");
    match crate::state::flock(&path, false) {
        Ok(l) => Ok(DaemonLock(l)),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            Err(DaemonError::AlreadyRunning(state_root.to_owned(), path))
        }
        Err(source) => Err(DaemonError::Io {
            what: "lock",
            path,
            source,
        }),
    }
}

/// A listening socket of the daemon.
pub enum Listener {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listener({})", self.docker_host())
    }
}

impl Listener {
    /// Where it listens, as `DOCKER_HOST` takes it.
    pub fn docker_host(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix://{}", p.display()),
            Listener::Tcp(l, _) => l
                .local_addr()
                .map(|a| format!("tcp://{a}"))
                .unwrap_or_else(|_| "tcp://?".into()),
        }
    }
}

/// Binds the daemon's sockets: a Unix socket only its owner can open (dockerd's is 0660
/// root:docker; here there is no group to trust), TCP on loopback, or on any address with
/// client-certificate TLS. A stale Unix socket (no daemon holds the lock) is replaced.
pub async fn bind(opts: &DaemonOptions) -> Result<Vec<Listener>, DaemonError> {
    let acceptor = opts.tls.as_ref().map(tls::acceptor).transpose()?;
    let mut out = Vec::new();
    for a in &opts.addresses {
        match a {
            Address::Unix(path) => {
                // Created with no access for others from the first moment.
                let l = crate::private::bind_tokio(path).map_err(|source| DaemonError::Io {
                    what: "listen on",
                    path: path.clone(),
                    source,
                })?;
                out.push(Listener::Unix(l, path.clone()));
            }
            Address::Tcp(addr) => {
                if acceptor.is_none() && !addr.ip().is_loopback() {
                    return Err(DaemonError::InsecureTcp(*addr));
                }
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Io {
                        what: "listen on",
                        path: PathBuf::from(addr.to_string()),
                        source,
                    })?;
                out.push(Listener::Tcp(l, acceptor.clone()));
            }
        }
    }
    Ok(out)
}

/// Serves the listeners until `shutdown` resolves. Containers are not touched: their
/// keepers run on, and a daemon started later serves them again.
pub async fn serve(
    state: Arc<ApiState>,
    listeners: Vec<Listener>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let adopted = state.engine.adopt();
    tracing::info!(
        running = adopted,
        "serving containers found in the state directory"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let state = state.clone();
        tasks.spawn(accept_loop(state, l));
    }
    shutdown.await;
    tracing::info!("daemon stopping; containers keep running");
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(state: Arc<ApiState>, listener: Listener) {
    loop {
        match &listener {
            Listener::Unix(l, _) => match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve_connection(state.clone(), s));
                }
                Err(e) => accept_error(e).await,
            },
            Listener::Tcp(l, acceptor) => match l.accept().await {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    let state = state.clone();
                    match acceptor.clone() {
                        None => {
                            tokio::spawn(serve_connection(state, s));
                        }
                        Some(acc) => {
                            tokio::spawn(async move {
                                // The handshake is bounded: a peer that never finishes it
                                // must not hold a task forever.
                                match tokio::time::timeout(Duration::from_secs(10), acc.accept(s))
                                    .await
                                {
                                    Ok(Ok(tls)) => serve_connection(state, tls).await,
                                    Ok(Err(e)) => {
                                        tracing::warn!(%peer, error = %e, "TLS handshake refused")
                                    }
                                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => accept_error(e).await,
            },
        }
    }
}

async fn accept_error(e: std::io::Error) {
    // Out of descriptors and the like: wait a little instead of spinning.
    tracing::warn!(error = %e, "accept");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection<S>(state: Arc<ApiState>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(router::route(state, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        // A client that opens a connection and sends nothing is dropped.
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection");
    }
}
