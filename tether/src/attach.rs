//! The back-channel server: what the VCH port layer talks to for `attach` and `exec`.
//!
//! The host reaches the tether over a byte stream (`/dev/ttyS0` on vSphere, a virtio-serial
//! port under QEMU) that comes and goes with the host's connection. For each connection:
//! the serial handshake, then our SSH-2 server (`sshproto`), then `attach` channels bound to
//! session I/O. When the host goes away, processes keep running and the next connection is
//! served the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backchannel::{handshake, requests as req};
use guestinfo::ContainerConfig;
use sshproto::{
    Channel, ChannelRequest, GlobalRequest, Handlers, NoneAuth, OpenFailureReason, PrivateKey,
    PublicKey, Server, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Tether;
use crate::stdio::{AsyncStream, StdinMsg};

/// Back-channel errors.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// the host key in the config is unusable
    #[error("host key (guestinfo.vice./key): {0}")]
    HostKey(String),
    /// the VCH client key in the config is unusable
    #[error("VCH client key: {0}")]
    ClientKey(String),
}

/// How long each read of the handshake may wait; the host sends its SYN at once.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before retrying when the host side is not connected (the device reports EOF).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The SSH server configuration from the container config: the config's host key (the
/// original's PEM RSA key, or an OpenSSH key) and, when the config names a VCH client key,
/// that key and nothing else; otherwise `none` for user `daemon`, as the original.
pub fn server_config(
    cfg: &ContainerConfig,
    handlers: Handlers,
) -> Result<ServerConfig, AttachError> {
    let host_key = if cfg.key.is_empty() {
        // The port layer always sends one; without it, a fresh key still lets a client that
        // does not pin host keys (the original port layer does not) connect.
        tracing::warn!("no host key in the config; using a generated one");
        PrivateKey::generate_ed25519()
    } else {
        PrivateKey::from_pem(&cfg.key)
            .or_else(|_| PrivateKey::from_openssh(&cfg.key))
            .map_err(|e| AttachError::HostKey(e.to_string()))?
    };
    // The original port layer's 512-bit RSA key is only used because the config carries it
    // (the VIC-compatible mode); a key that weak is worth a line in the log every time.
    let public = host_key.public_key();
    if public.rsa_bits() > 0 {
        tracing::warn!(
            bits = public.rsa_bits(),
            "back-channel host key is RSA as the config asks (VIC-compatible mode); weak below 2048 bits"
        );
    } else {
        tracing::info!(key_type = public.key_type(), "back-channel host key");
    }
    let mut config = ServerConfig::new(host_key).handlers(handlers);
    // A serial line has no connection state: without probes a VCH that vanished is only
    // noticed when the next connection's bytes arrive. Any reply counts, and every SSH
    // peer answers an unknown want-reply request, so the original port layer qualifies.
    config.common.keepalive = Some(sshproto::Keepalive {
        interval: Duration::from_secs(10),
        max_missed: 3,
    });
    if cfg.tether.vch_client_key.trim().is_empty() {
        tracing::warn!(
            "no VCH client key in the config: `none` authentication for user daemon (VIC-compatible mode)"
        );
        config = config.allow_none_for(["daemon"]);
    } else {
        let key = PublicKey::from_openssh(cfg.tether.vch_client_key.trim())
            .map_err(|e| AttachError::ClientKey(e.to_string()))?;
        config = config.authorized_keys([key]);
        config.auth.none = NoneAuth::Deny;
    }
    Ok(config)
}

/// Opens the device: raw 8N1 at 115200 without flow control for a UART (what the
/// original's serial library set; a no-op on a virtual port), as is for a virtio port.
fn open_device(path: &Path) -> std::io::Result<AsyncStream> {
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::OpenOptionsExt;
    let is_uart = path
        .file_name()
        .map(|n| n.to_string_lossy().starts_with("ttyS"))
        .unwrap_or(false);
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        // A UART must not become PID 1's controlling terminal.
        .custom_flags(if is_uart { libc::O_NOCTTY } else { 0 })
        .open(path)?;
    if is_uart {
        raw_uart(&file).map_err(std::io::Error::from)?;
    }
    AsyncStream::new(OwnedFd::from(file))
}

/// Raw mode with nix's termios (the serialport crate did this before, at the price of a
/// second copy of nix in the binary).
fn raw_uart(file: &std::fs::File) -> nix::Result<()> {
    use nix::sys::termios::{self, BaudRate, ControlFlags, InputFlags, SetArg};
    let mut t = termios::tcgetattr(file)?;
    termios::cfmakeraw(&mut t);
    t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
    t.control_flags &= !(ControlFlags::CSTOPB | ControlFlags::PARENB | ControlFlags::CRTSCTS);
    t.input_flags &= !(InputFlags::IXON | InputFlags::IXOFF | InputFlags::IXANY);
    termios::cfsetspeed(&mut t, BaudRate::B115200)?;
    termios::tcsetattr(file, SetArg::TCSANOW, &t)
}

/// Serves the back-channel until shutdown.
pub async fn serve(t: Arc<Tether>, path: PathBuf) {
    // Parsing the host key (RSA in VIC mode) is heavy under TCG: it waits for the end of
    // the entrypoint's start-up, and runs on a blocking thread so that it does not hold up
    // the runtime thread, which forwards output.
    t.started_up().await;
    let handlers = handlers(&t);
    let cfg = t.lock().cfg.clone();
    let parsed = crate::blocking::run("host-key", move || server_config(&cfg, handlers)).await;
    let config = match parsed {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => {
            // No attach, but the container still runs and its output is still logged.
            tracing::error!(error = %e, "back-channel disabled");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "back-channel disabled: key parsing did not finish");
            return;
        }
    };
    let mut stop = t.shutdown_signal();
    while !t.shutting_down() {
        let mut dev = match open_device(&path) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(device = %path.display(), error = %e, "cannot open the back-channel");
                return;
            }
        };
        // Handshake attempts until one succeeds: line garbage, a half-finished earlier
        // attempt and an absent host all just cost a retry.
        loop {
            let attempt = tokio::select! {
                r = handshake::server(&mut dev, HANDSHAKE_TIMEOUT) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match attempt {
                Ok(()) => break,
                Err(handshake::HandshakeError::Closed) => tokio::time::sleep(RECONNECT_PAUSE).await,
                Err(e) => tracing::debug!(error = %e, "back-channel handshake"),
            }
        }
        tracing::debug!("back-channel handshake done");
        let (conn, driver) = match Server::accept(dev, config.clone()).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "back-channel SSH handshake failed");
                continue;
            }
        };
        tracing::info!("VCH connected on the back-channel");
        let driver = tokio::spawn(driver);
        // Push the exec IDs on every change, as the original did after each reload.
        let mut ids = t.ids_changed();
        let pusher_t = t.clone();
        let pusher_conn = conn.clone();
        let pusher = tokio::spawn(async move {
            while ids.changed().await.is_ok() {
                let payload = req::id_list_payload(&pusher_t.attachable_ids(true));
                if let Err(e) = pusher_conn
                    .global_request(req::GLOBAL_CONTAINER_IDS, &payload)
                    .await
                {
                    tracing::debug!(error = %e, "container-ids push");
                }
            }
        });
        tokio::select! {
            _ = conn.closed() => tracing::info!(reason = ?conn.close_reason(), "VCH disconnected from the back-channel"),
            _ = stop.wait_for(|s| *s) => conn.disconnect("container VM shutting down"),
        }
        pusher.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
    }
}

fn handlers(t: &Arc<Tether>) -> Handlers {
    let t_open = t.clone();
    let t_ids = t.clone();
    Handlers::new()
        .on_channel_open(move |open| {
            // Our extensions (backchannel::services): a VIC port layer never opens them.
            if crate::services::handles(open.channel_type()) {
                crate::services::open(open);
                return;
            }
            if open.channel_type() != req::CHANNEL_ATTACH {
                let msg = format!("unknown channel type {}", open.channel_type());
                open.reject(OpenFailureReason::UNKNOWN_CHANNEL_TYPE, &msg);
                return;
            }
            let id = String::from_utf8_lossy(open.data()).into_owned();
            if let Err(refusal) = t_open.check_attach(&id) {
                open.reject(
                    OpenFailureReason::ADMINISTRATIVELY_PROHIBITED,
                    &refusal.to_string(),
                );
                return;
            }
            match open.accept() {
                Ok(ch) => {
                    tokio::spawn(serve_attach(t_open.clone(), id, ch));
                }
                Err(e) => tracing::warn!(error = %e, "accepting an attach channel"),
            }
        })
        .on_global_request(req::GLOBAL_CONTAINER_IDS, move |r: GlobalRequest| {
            r.succeed(req::id_list_payload(&t_ids.attachable_ids(false)));
        })
        .on_global_request(req::GLOBAL_VERSION, |r: GlobalRequest| {
            r.succeed(req::version_payload())
        })
        .on_unknown_global_request(|r: GlobalRequest| {
            let msg = format!("unknown global request type: {}", r.name());
            r.fail_with(msg.into_bytes());
        })
}

/// Binds one `attach` channel to a session: its output to the channel, the channel's data
/// to the session's stdin, and the channel requests.
async fn serve_attach(t: Arc<Tether>, id: String, ch: Channel) {
    let bound = {
        let st = t.lock();
        match (st.sessions.get(&id), st.session_cfg(&id)) {
            (Some(rt), Some(sc)) => Some((
                rt.stdout.subscribe(),
                rt.stderr.subscribe(),
                rt.stdin.clone(),
                sc.tty,
                rt.done.subscribe(),
            )),
            _ => None,
        }
    };
    let Some((mut out, mut err, stdin, tty, mut done)) = bound else {
        ch.close();
        return;
    };
    tracing::debug!(session = %id, "attached");
    let requests = ch.requests();
    let (mut reader, writer) = ch.split();
    let mut stderr_writer = writer.stderr_writer();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));

    // Output: stdout as channel data, stderr as extended data 1 (a tty has only stdout).
    let out_writer = writer.clone();
    let output = tokio::spawn(async move {
        let copy_out = async {
            while let Some(chunk) = out.recv().await {
                if out_writer.lock().await.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        };
        let copy_err = async {
            while let Some(chunk) = err.recv().await {
                if stderr_writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(copy_out, copy_err);
    });

    // Input: channel data to the session's stdin until the client's EOF.
    let _ = stdin.send(StdinMsg::SourceAdded).await;
    let input_stdin = stdin.clone();
    let input = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input_stdin
                        .send(StdinMsg::Data(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        // The process has no stdin: keep reading so the window stays open.
                        continue;
                    }
                }
            }
        }
        let _ = input_stdin.send(StdinMsg::SourceEnded).await;
    });

    let req_t = t.clone();
    let req_id = id.clone();
    let req_writer = writer.clone();
    let request_loop = tokio::spawn(async move {
        let mut requests = requests;
        while let Some(r) = requests.next().await {
            if !handle_request(&req_t, &req_id, r, &stdin, tty).await {
                // `unblock` of a failed launch: the original closed the channel.
                req_writer.lock().await.close();
                return;
            }
        }
    });

    // The session's output ended: tell the client (EOF, then the exit status), then close.
    let _ = output.await;
    let _ = done.wait_for(|d| *d).await;
    {
        let w = writer.lock().await;
        let _ = w.eof();
        let status = t
            .lock()
            .session_cfg(&id)
            .map(|s| s.exit_status)
            .unwrap_or(0);
        let _ = w.send_exit_status(u32::try_from(status).unwrap_or(255));
        w.close();
    }
    input.abort();
    request_loop.abort();
    tracing::debug!(session = %id, "detached");
}

/// Answers one channel request. Returns `false` when the channel must be closed.
async fn handle_request(
    t: &Arc<Tether>,
    id: &str,
    r: ChannelRequest,
    stdin: &tokio::sync::mpsc::Sender<StdinMsg>,
    tty: bool,
) -> bool {
    match r.name() {
        req::REQ_PING => {
            let ok = r.data() == req::PING_PAYLOAD;
            r.reply(ok);
        }
        req::REQ_UNBLOCK => {
            if r.data() != req::UNBLOCK_PAYLOAD {
                r.fail();
                return true;
            }
            if !t.unblock(id) {
                r.fail();
                return false;
            }
            r.succeed();
        }
        req::REQ_WINDOW_CHANGE => {
            let ok = tty
                && req::WindowSize::parse(r.data())
                    .map(|ws| {
                        t.lock()
                            .sessions
                            .get_mut(id)
                            .map(|s| s.resize(ws).is_ok())
                            .unwrap_or(false)
                    })
                    .unwrap_or(false);
            r.reply(ok);
        }
        req::REQ_CLOSE_STDIN => {
            let _ = stdin.send(StdinMsg::CloseWhenDone).await;
            r.succeed();
        }
        req::REQ_SIGNAL => {
            let ok = match req::parse_signal(r.data()) {
                Some(name) => match t.signal(id, &name, false) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(session = id, "signal {name}: {e}");
                        false
                    }
                },
                None => false,
            };
            r.reply(ok);
        }
        other => {
            tracing::debug!(session = id, request = other, "unknown channel request");
            r.fail();
        }
    }
    true
}
