//! The port layer's end of the back-channel: the VM's serial device dials our TCP listener
//! (as a vSphere network serial port dials the VCH), we run the serial handshake as the
//! client, then SSH as the client, and keep the connection for attach and exec.
//!
//! Each (re)connection of the VM's device is a new TCP connection; the newest one wins.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use backchannel::{handshake, requests as req};
use sshproto::{Client, ClientConfig, Connection, GlobalRequest, Handlers};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Per-attempt handshake read timeout (the original port layer used 1 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Handshake attempts on one TCP connection before giving it up.
const HANDSHAKE_ATTEMPTS: u32 = 60;

/// The port layer's view of one VM's back-channel.
#[derive(Debug)]
pub struct PortLayer {
    /// The live connection, numbered so a closing connection only clears itself.
    conn: watch::Sender<Option<(u64, Connection)>>,
    next: std::sync::atomic::AtomicU64,
    /// IDs the tether said are attachable (its answer to `container-ids` and its pushes).
    ids: watch::Sender<BTreeSet<String>>,
    /// Send line garbage before each handshake (robustness tests).
    noise: bool,
    /// Offered after `none` is refused (a tether given our public key refuses `none`).
    key: sshproto::PrivateKey,
}

impl PortLayer {
    pub fn new(noise: bool, key: sshproto::PrivateKey) -> Arc<PortLayer> {
        Arc::new(PortLayer {
            conn: watch::channel(None).0,
            next: Default::default(),
            ids: watch::channel(BTreeSet::new()).0,
            noise,
            key,
        })
    }

    /// Accepts the VM's connections until the listener fails (the task is aborted when the
    /// VM is gone).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "back-channel accept");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move { me.handle(stream).await });
        }
    }

    async fn handle(self: Arc<Self>, mut stream: TcpStream) {
        if self.noise {
            // What a line keeps from an earlier connection: a half SYN, SSH bytes, junk.
            use tokio::io::AsyncWriteExt;
            let _ = stream
                .write_all(b"\x16\x00SSH-2.0-stale\r\n\x00\xff\x06\x15garbage")
                .await;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            match handshake::client(&mut stream, HANDSHAKE_TIMEOUT).await {
                Ok(()) => break,
                Err(handshake::HandshakeError::Closed | handshake::HandshakeError::Io(_)) => return,
                Err(e) if attempts >= HANDSHAKE_ATTEMPTS => {
                    tracing::warn!(error = %e, "back-channel handshake gave up");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "back-channel handshake retry"),
            }
        }
        let ids = self.ids.clone();
        let handlers = Handlers::new().on_global_request(
            req::GLOBAL_CONTAINER_IDS,
            move |r: GlobalRequest| {
                // The tether pushes exec IDs after each reload.
                if let Some(list) = req::parse_id_list(r.data()) {
                    ids.send_modify(|set| set.extend(list));
                }
                r.succeed(Vec::new());
            },
        );
        let config = Arc::new(
            ClientConfig::new("daemon")
                .key(self.key.clone())
                .handlers(handlers),
        );
        let (conn, driver) = match Client::connect(stream, config).await {
            Ok(x) => x,
            // A VM that powers off during the handshake (a container that ran briefly)
            // closes the stream: normal, and not worth a warning on `vch run`'s stderr.
            Err(sshproto::Error::Eof) => {
                tracing::debug!("back-channel closed during the SSH handshake");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "back-channel SSH");
                return;
            }
        };
        let driver = tokio::spawn(driver);
        match conn.global_request(req::GLOBAL_CONTAINER_IDS, &[]).await {
            Ok(reply) if reply.success => {
                if let Some(list) = req::parse_id_list(&reply.data) {
                    self.ids.send_modify(|set| set.extend(list));
                }
            }
            // The VM powered off right after the handshake (a container that ran briefly;
            // seen under load in `original_vic_log_format_on_request`): normal, as above.
            Err(sshproto::Error::ConnectionClosed) => {
                tracing::debug!("back-channel closed before container-ids was answered");
                return;
            }
            other => {
                tracing::warn!(reply = ?other.map(|r| r.success), "container-ids failed; dropping the connection");
                conn.disconnect("container-ids failed");
                return;
            }
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conn.send_replace(Some((n, conn.clone())));
        tracing::debug!(n, "back-channel connected");
        conn.closed().await;
        self.conn.send_if_modified(|c| {
            let same = matches!(c, Some((m, _)) if *m == n);
            if same {
                *c = None;
            }
            same
        });
        driver.abort();
    }

    /// The current connection, waiting up to `timeout` for one.
    pub async fn connection(&self, timeout: Duration) -> Option<Connection> {
        let mut rx = self.conn.subscribe();
        let got = tokio::time::timeout(
            timeout,
            rx.wait_for(|c| c.as_ref().map(|(_, c)| !c.is_closed()).unwrap_or(false)),
        )
        .await;
        match got {
            Ok(Ok(c)) => c.as_ref().map(|(_, c)| c.clone()),
            _ => None,
        }
    }

    /// Waits until the tether lists `id` as attachable.
    pub async fn wait_for_id(&self, id: &str, timeout: Duration) -> bool {
        let mut rx = self.ids.subscribe();
        let found = tokio::time::timeout(timeout, rx.wait_for(|set| set.contains(id)))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        found
    }

    /// Drops the current connection, as a VCH restart or network blip would.
    pub fn drop_connection(&self) {
        if let Some((_, c)) = self.conn.borrow().as_ref() {
            c.disconnect("dropped by request");
        }
    }
}
