//! The keeper's control socket: how separate `vch` invocations (exec, attach, kill, stop)
//! reach a running VM. It speaks SSH too (our `sshproto`, over a Unix socket only the
//! owner can open): `attach` channels are spliced onto the tether's back-channel, and a few
//! global requests drive the VM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backchannel::requests as req;
use guestinfo::store::Store;
use guestinfo::transport::qemu::HostServer;
use guestinfo::{HostCommand, SessionConfig};
use serde::{Deserialize, Serialize};
use sshproto::{
    Channel, ChannelOpenRequest, Client, ClientConfig, Connection, GlobalRequest, Handlers,
    OpenFailureReason, PrivateKey, Server, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::portlayer::PortLayer;

/// Global request: create an exec (payload: JSON [`ExecSpec`]; reply: the exec ID).
pub const REQ_EXEC: &str = "vch-exec@tether";
/// Global request: signal the primary process (payload: the signal).
pub const REQ_KILL: &str = "vch-kill@tether";
/// Global request: stop the container (payload: grace seconds as text).
pub const REQ_STOP: &str = "vch-stop@tether";
/// Global request: drop the back-channel connection (tests and demos of reconnection).
pub const REQ_DROP: &str = "vch-drop-backchannel@tether";
/// Global request: connect or disconnect a network (payload: JSON
/// [`crate::hotplug::Change`]).
pub const REQ_NETWORK: &str = "vch-network@tether";

/// How long to wait for the tether's back-channel when a client needs it.
const BACKCHANNEL_WAIT: Duration = Duration::from_secs(60);

/// What `vch exec` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecSpec {
    /// The exec's ID (the session ID in the guest); a new one when empty.
    #[serde(default)]
    pub id: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub workdir: String,
    pub tty: bool,
    pub stdin: bool,
    /// Runs on its own: nothing will attach, so the launch is not held for an attachment.
    #[serde(default)]
    pub detach: bool,
}

/// What the control server works with.
#[derive(Debug, Clone)]
pub struct Keeper {
    pub id: String,
    pub store: Arc<dyn Store>,
    pub guestinfo: HostServer,
    pub portlayer: Arc<PortLayer>,
    /// The VM's NICs and their segments (networks connected while it runs).
    pub nics: Arc<crate::hotplug::Nics>,
}

/// Serves the control socket until the task is aborted.
pub async fn serve(listener: UnixListener, keeper: Keeper) {
    let config = Arc::new(
        ServerConfig::new(PrivateKey::generate_ed25519())
            .allow_none_for_anyone()
            .handlers(handlers(keeper)),
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let config = config.clone();
        tokio::spawn(async move {
            match Server::accept(stream, config).await {
                Ok((conn, driver)) => {
                    let _ = driver.await;
                    drop(conn);
                }
                Err(e) => tracing::debug!(error = %e, "control connection"),
            }
        });
    }
}

fn handlers(k: Keeper) -> Handlers {
    // Each handler gets its own handle on the keeper.
    let with = |f: fn(&Keeper, GlobalRequest)| {
        let k = k.clone();
        move |r: GlobalRequest| f(&k, r)
    };
    let opener = k.clone();
    Handlers::new()
        .on_channel_open(move |open| {
            let k = opener.clone();
            tokio::spawn(async move { open_upstream(k, open).await });
        })
        .on_global_request(REQ_EXEC, with(exec))
        .on_global_request(REQ_KILL, with(kill))
        .on_global_request(REQ_STOP, with(stop))
        .on_global_request(REQ_DROP, with(drop_backchannel))
        .on_global_request(REQ_NETWORK, with(network))
}

fn exec(k: &Keeper, r: GlobalRequest) {
    let k = k.clone();
    tokio::spawn(async move {
        match create_exec(&k, r.data()).await {
            Ok(id) => r.succeed(id.into_bytes()),
            Err(e) => r.fail_with(e.into_bytes()),
        }
    });
}

fn kill(k: &Keeper, r: GlobalRequest) {
    let sig = String::from_utf8_lossy(r.data()).into_owned();
    match k.guestinfo.push(HostCommand::Kill(sig)) {
        Ok(()) => r.succeed(Vec::new()),
        Err(e) => r.fail_with(e.to_string().into_bytes()),
    }
}

/// The grace period (if given) goes into the config, then `reload` and `halt`: the tether
/// sends the stop signal and SIGKILL after the grace period.
fn stop(k: &Keeper, r: GlobalRequest) {
    let grace = String::from_utf8_lossy(r.data()).trim().to_owned();
    let key = "guestinfo.vice./tether/stoptimeout";
    let done = (|| {
        if !grace.is_empty() {
            k.store.set(key, &grace).map_err(|e| e.to_string())?;
        }
        k.guestinfo
            .push(HostCommand::Reload)
            .map_err(|e| e.to_string())?;
        k.guestinfo
            .push(HostCommand::Halt)
            .map_err(|e| e.to_string())
    })();
    match done {
        Ok(()) => r.succeed(Vec::new()),
        Err(e) => r.fail_with(e.into_bytes()),
    }
}

fn network(k: &Keeper, r: GlobalRequest) {
    let k = k.clone();
    tokio::spawn(async move {
        let change =
            serde_json::from_slice(r.data()).map_err(|e| format!("bad network request: {e}"));
        let reload = || {
            k.guestinfo
                .push(HostCommand::Reload)
                .map_err(|e| e.to_string())
        };
        let done = match change {
            Ok(c) => k.nics.apply(c, &*k.store, reload).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => r.succeed(Vec::new()),
            Err(e) => r.fail_with(e.into_bytes()),
        }
    });
}

fn drop_backchannel(k: &Keeper, r: GlobalRequest) {
    k.portlayer.drop_connection();
    r.succeed(Vec::new());
}

/// Opens the matching channel on the tether and splices the two, or refuses with the
/// tether's own reason.
async fn open_upstream(k: Keeper, open: ChannelOpenRequest) {
    let Some(up_conn) = k.portlayer.connection(BACKCHANNEL_WAIT).await else {
        open.reject(
            OpenFailureReason::CONNECT_FAILED,
            "the container's back-channel is not connected",
        );
        return;
    };
    let ty = open.channel_type().to_owned();
    let data = open.data().to_vec();
    match up_conn.open_channel(&ty, &data).await {
        Ok(up) => match open.accept() {
            Ok(down) => splice(down, up).await,
            Err(e) => tracing::debug!(error = %e, "control channel accept"),
        },
        Err(e) => open.reject(
            OpenFailureReason::ADMINISTRATIVELY_PROHIBITED,
            &e.to_string(),
        ),
    }
}

async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &tokio::sync::Mutex<W>,
) -> bool {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return true,
            Ok(n) => {
                if w.lock().await.write_all(&buf[..n]).await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// Joins a client's channel to the tether's: data both ways, stderr down, requests up,
/// EOF, exit status and close down.
async fn splice(down: Channel, up: Channel) {
    let down_requests = down.requests();
    let up_stderr = up.stderr();
    let (mut down_r, down_w) = down.split();
    let (mut up_r, up_w) = up.split();
    let down_err = down_w.stderr_writer();
    let up_w = Arc::new(tokio::sync::Mutex::new(up_w));
    let down_w = Arc::new(tokio::sync::Mutex::new(down_w));
    let down_err = Arc::new(tokio::sync::Mutex::new(down_err));

    let up_w_in = up_w.clone();
    let input = tokio::spawn(async move {
        if copy(&mut down_r, &up_w_in).await {
            let _ = up_w_in.lock().await.eof();
        }
    });
    let up_w_req = up_w.clone();
    let requests = tokio::spawn(async move {
        let mut reqs = down_requests;
        while let Some(r) = reqs.next().await {
            let name = r.name().to_owned();
            let data = r.data().to_vec();
            let ok = {
                let w = up_w_req.lock().await;
                w.request(&name, &data).await.unwrap_or(false)
            };
            r.reply(ok);
        }
    });
    let mut up_stderr = up_stderr;
    let (_, _) = tokio::join!(copy(&mut up_r, &down_w), copy(&mut up_stderr, &down_err));
    {
        let up = up_w.lock().await;
        // The exit status follows the data's end closely, just before the close.
        let _ = tokio::time::timeout(Duration::from_secs(2), up.wait_closed()).await;
        let down = down_w.lock().await;
        let _ = down.eof();
        if let Some(status) = up.exit_status() {
            let _ = down.send_exit_status(status);
        }
        down.close();
        up.close();
    }
    input.abort();
    requests.abort();
}

/// The `tracing` target of the keeper's exec timings (config read, encode, store write,
/// reload until the tether announced the ID), in microseconds.
pub const EXEC_PHASES: &str = "vch::exec_phases";

async fn create_exec(k: &Keeper, payload: &[u8]) -> Result<String, String> {
    let spec: ExecSpec =
        serde_json::from_slice(payload).map_err(|e| format!("bad exec request: {e}"))?;
    if spec.command.is_empty() {
        return Err("no command given".into());
    }
    let t0 = std::time::Instant::now();
    let cfg = guestinfo::store::read_config(&*k.store).map_err(|e| e.to_string())?;
    let t_read = t0.elapsed();
    let primary = cfg.sessions.get(&k.id).cloned().unwrap_or_default();
    let eid = if spec.id.is_empty() {
        crate::records::new_id()
    } else if spec.id.len() <= 64 && spec.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        spec.id.clone()
    } else {
        return Err(format!("bad exec ID {:?}", spec.id));
    };
    let mut env = primary.cmd.env.clone();
    for e in &spec.env {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|old| old.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let (user, group) = match (spec.user.is_empty(), spec.user.split_once(':')) {
        (true, _) => (primary.user.clone(), primary.group.clone()),
        (false, Some((u, g))) => (u.to_owned(), g.to_owned()),
        (false, None) => (spec.user.clone(), String::new()),
    };
    let mut exec = SessionConfig::default();
    exec.common.id = eid.clone();
    exec.common.name = spec.command.join(" ");
    exec.cmd.path = spec.command[0].clone();
    exec.cmd.args = spec.command.clone();
    exec.cmd.env = env;
    exec.cmd.dir = if spec.workdir.is_empty() {
        primary.cmd.dir.clone()
    } else {
        spec.workdir.clone()
    };
    exec.user = user;
    exec.group = group;
    exec.tty = spec.tty;
    exec.open_stdin = spec.stdin;
    exec.attach = !spec.detach;
    // Held until the client's channel is bound, so no output is lost.
    exec.run_block = !spec.detach;
    exec.active = true;
    exec.stop_signal = "TERM".into();
    let mut with = cfg.clone();
    with.execs.insert(eid.clone(), exec);
    // Only the exec keys: the rest of the store is the tether's to write.
    let entries: Vec<(String, String)> = guestinfo::encode(&with)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(key, _)| key.contains("execs"))
        .map(|(key, v)| {
            let wire = guestinfo::transport::to_wire(&v).to_owned();
            (key, wire)
        })
        .collect();
    let t_encode = t0.elapsed();
    k.store.set_all(&entries).map_err(|e| e.to_string())?;
    let t_store = t0.elapsed();
    k.guestinfo
        .push(HostCommand::Reload)
        .map_err(|e| e.to_string())?;
    if spec.detach {
        return Ok(eid);
    }
    if !k.portlayer.wait_for_id(&eid, BACKCHANNEL_WAIT).await {
        return Err("the container did not start the exec (is it running?)".into());
    }
    // The keeper's share of the round trip, for the bench's breakdown.
    tracing::debug!(
        target: EXEC_PHASES,
        read_us = t_read.as_micros() as u64,
        encode_us = (t_encode - t_read).as_micros() as u64,
        store_us = (t_store - t_encode).as_micros() as u64,
        announce_us = (t0.elapsed() - t_store).as_micros() as u64,
        "exec announced"
    );
    Ok(eid)
}

/// Connects to a running VM's control socket.
pub async fn connect(ctl: &Path) -> std::io::Result<Connection> {
    let stream = tokio::net::UnixStream::connect(ctl).await?;
    let (conn, driver) = Client::connect(stream, Arc::new(ClientConfig::new("vch")))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(driver);
    Ok(conn)
}

/// Sends a control request; returns the reply data, or the refusal's text as an error.
pub async fn request(conn: &Connection, name: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    match conn.global_request(name, data).await {
        Ok(r) if r.success => Ok(r.data),
        Ok(r) => Err(String::from_utf8_lossy(&r.data).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// The data the `attach` channel carries for an ID.
pub fn attach_channel_data(id: &str) -> &[u8] {
    id.as_bytes()
}

/// The channel type of attach.
pub const ATTACH: &str = req::CHANNEL_ATTACH;
