//! Configuration of both roles: algorithms, limits, timeouts, keys, auth policy and
//! the handlers for what the peer asks for.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::ChannelOpenRequest;
use crate::kex::Algorithms;
use crate::keys::{PrivateKey, PublicKey, SignatureAlgorithm};
use crate::limits::Limits;
use crate::requests::{ChannelRequest, GlobalRequest};

/// Keep-alive probing: a `keepalive@openssh.com` global request (want-reply) every
/// `interval` of silence from the peer; any reply or packet counts as life. After
/// `max_missed` unanswered probes the connection ends with [`crate::Error::KeepaliveTimeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before a probe.
    pub interval: Duration,
    /// Unanswered probes tolerated.
    pub max_missed: u32,
}

/// Settings both roles share.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our version line, without CR LF (must start with `SSH-2.0-`).
    pub version: String,
    /// Algorithm preferences.
    pub algorithms: Algorithms,
    /// Offer strict key exchange (OpenSSH's Terrapin countermeasure).
    pub strict_kex: bool,
    /// Buffer and size limits.
    pub limits: Limits,
    /// Bound on the version exchange + key exchange + user auth, and on each re-key.
    pub handshake_timeout: Duration,
    /// Bound on waiting for the reply to a request or channel open we send.
    pub request_timeout: Duration,
    /// Keep-alive probing (off by default: the original port layer may not answer).
    pub keepalive: Option<Keepalive>,
    /// Re-key after this many bytes in either direction.
    pub rekey_bytes: u64,
    /// Re-key after this much time.
    pub rekey_interval: Option<Duration>,
    /// What to do with the peer's channel opens and requests.
    pub handlers: Handlers,
}

impl Config {
    fn new(version: &str) -> Self {
        Self {
            version: version.to_string(),
            algorithms: Algorithms::default(),
            strict_kex: true,
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            keepalive: None,
            rekey_bytes: 1 << 30,
            rekey_interval: Some(Duration::from_secs(3600)),
            handlers: Handlers::default(),
        }
    }
}

/// Which users may log in with the `none` method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NoneAuth {
    /// Nobody.
    #[default]
    Deny,
    /// Anybody (the original tether's `NoClientAuth`).
    AnyUser,
    /// Only these user names.
    Users(Vec<String>),
}

/// Server-side user authentication policy.
#[derive(Debug, Clone, Default)]
pub struct ServerAuth {
    /// The `none` method.
    pub none: NoneAuth,
    /// Client keys accepted by `publickey`, for any user.
    pub authorized_keys: Vec<PublicKey>,
}

/// Server role configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Shared settings.
    pub common: Config,
    /// Host keys; the negotiated host key algorithm picks one.
    pub host_keys: Vec<PrivateKey>,
    /// Authentication policy.
    pub auth: ServerAuth,
}

impl ServerConfig {
    /// A server with one host key, no user allowed in yet, and version `SSH-2.0-Go`
    /// (what the original tether sent).
    pub fn new(host_key: PrivateKey) -> Self {
        Self {
            common: Config::new("SSH-2.0-Go"),
            host_keys: vec![host_key],
            auth: ServerAuth::default(),
        }
    }

    /// Adds another host key.
    pub fn host_key(mut self, key: PrivateKey) -> Self {
        self.host_keys.push(key);
        self
    }

    /// Lets these users in with the `none` method.
    pub fn allow_none_for<I, S>(mut self, users: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.auth.none = NoneAuth::Users(users.into_iter().map(Into::into).collect());
        self
    }

    /// Lets any user in with the `none` method.
    pub fn allow_none_for_anyone(mut self) -> Self {
        self.auth.none = NoneAuth::AnyUser;
        self
    }

    /// Accepts these client keys for `publickey`.
    pub fn authorized_keys(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.auth.authorized_keys.extend(keys);
        self
    }

    /// Sets the handlers.
    pub fn handlers(mut self, handlers: Handlers) -> Self {
        self.common.handlers = handlers;
        self
    }

    /// The host key signature algorithms we can offer, in preference order.
    pub(crate) fn offered_host_algs(&self) -> Vec<SignatureAlgorithm> {
        self.common
            .algorithms
            .host_key
            .iter()
            .copied()
            .filter(|a| self.host_keys.iter().any(|k| k.algorithms().contains(a)))
            .collect()
    }
}

/// How the client decides whether to trust the server's host key.
#[derive(Clone, Default)]
pub enum HostKeyCheck {
    /// Trust any key (what the original port layer does).
    #[default]
    AcceptAny,
    /// Trust only these keys.
    Known(Vec<PublicKey>),
    /// Ask a function.
    Callback(Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>),
}

impl fmt::Debug for HostKeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKeyCheck::AcceptAny => f.write_str("AcceptAny"),
            HostKeyCheck::Known(k) => f.debug_tuple("Known").field(k).finish(),
            HostKeyCheck::Callback(_) => f.write_str("Callback"),
        }
    }
}

impl HostKeyCheck {
    pub(crate) fn accepts(&self, key: &PublicKey) -> bool {
        match self {
            HostKeyCheck::AcceptAny => true,
            HostKeyCheck::Known(keys) => keys.iter().any(|k| k == key),
            HostKeyCheck::Callback(f) => f(key),
        }
    }
}

/// Client role configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Shared settings.
    pub common: Config,
    /// User name to log in as.
    pub user: String,
    /// Key for `publickey` (tried after `none` fails).
    pub key: Option<PrivateKey>,
    /// Signature algorithm for an RSA user key (default: the best the key can make).
    pub key_algorithm: Option<SignatureAlgorithm>,
    /// Host key policy.
    pub host_key_check: HostKeyCheck,
}

impl ClientConfig {
    /// A client logging in as `user` with `none` only, trusting any host key, with version
    /// `SSH-2.0-VIC` (what the original port layer sent).
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            common: Config::new("SSH-2.0-VIC"),
            user: user.into(),
            key: None,
            key_algorithm: None,
            host_key_check: HostKeyCheck::AcceptAny,
        }
    }

    /// Authenticates with this key when `none` is refused.
    pub fn key(mut self, key: PrivateKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the host key policy.
    pub fn host_key_check(mut self, check: HostKeyCheck) -> Self {
        self.host_key_check = check;
        self
    }

    /// Sets the handlers.
    pub fn handlers(mut self, handlers: Handlers) -> Self {
        self.common.handlers = handlers;
        self
    }
}

pub(crate) type OpenHandler = Arc<dyn Fn(ChannelOpenRequest) + Send + Sync>;
pub(crate) type GlobalHandler = Arc<dyn Fn(GlobalRequest) + Send + Sync>;
pub(crate) type ChannelRequestHandler = Arc<dyn Fn(ChannelRequest) + Send + Sync>;

/// Handlers for what the peer asks of us, registered by name.
///
/// Handlers run inside the connection driver, so they must not block: answer at once,
/// or move the request object into a task and answer it there. A request object dropped
/// unanswered is answered with failure (a channel open with a refusal).
///
/// Without a handler: channel opens are refused (`unknown channel type <type>`), global
/// requests fail, and channel requests are queued on the channel for
/// [`crate::Channel::requests`] (or fail if nobody can take them).
#[derive(Clone, Default)]
pub struct Handlers {
    pub(crate) channel_open: Option<OpenHandler>,
    pub(crate) global: HashMap<String, GlobalHandler>,
    pub(crate) global_fallback: Option<GlobalHandler>,
    pub(crate) channel: HashMap<String, ChannelRequestHandler>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut g: Vec<&String> = self.global.keys().collect();
        g.sort();
        let mut c: Vec<&String> = self.channel.keys().collect();
        c.sort();
        f.debug_struct("Handlers")
            .field("channel_open", &self.channel_open.is_some())
            .field("global", &g)
            .field("global_fallback", &self.global_fallback.is_some())
            .field("channel", &c)
            .finish()
    }
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides on every channel the peer opens (any type; see
    /// [`ChannelOpenRequest::channel_type`] and [`ChannelOpenRequest::data`]).
    pub fn on_channel_open<F>(mut self, f: F) -> Self
    where
        F: Fn(ChannelOpenRequest) + Send + Sync + 'static,
    {
        self.channel_open = Some(Arc::new(f));
        self
    }

    /// Answers global requests named `name`.
    pub fn on_global_request<F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(GlobalRequest) + Send + Sync + 'static,
    {
        self.global.insert(name.into(), Arc::new(f));
        self
    }

    /// Answers global requests no named handler took.
    pub fn on_unknown_global_request<F>(mut self, f: F) -> Self
    where
        F: Fn(GlobalRequest) + Send + Sync + 'static,
    {
        self.global_fallback = Some(Arc::new(f));
        self
    }

    /// Answers channel requests named `name` on any channel (before the per-channel queue).
    pub fn on_channel_request<F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(ChannelRequest) + Send + Sync + 'static,
    {
        self.channel.insert(name.into(), Arc::new(f));
        self
    }
}
