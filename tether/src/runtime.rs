//! The tether after boot: sessions and execs, reloads, host commands, and the way out.
//!
//! Everything runs on one current-thread runtime. Shared state sits behind one mutex that
//! is never held across an `await`; blocking transport calls (a few milliseconds each)
//! happen outside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use guestinfo::{ContainerConfig, ExitLog, HostCommand, SessionConfig, Transport};
use tokio::sync::{mpsc, oneshot, watch};

use crate::output::{self, OutputSink};
use crate::platform::Platform;
use crate::reaper::{self, Reaper};
use crate::session::{self, LaunchIo, Session};
use crate::writeback::WriteBack;
use crate::{shutdown, signals};

/// How long a process may hold the output pipes after the session process exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Grace between the stop signal and SIGKILL when the host halts the VM, unless the config
/// says otherwise.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Exit records kept per session (the original's unused `MaxDeathRecords`).
const EXIT_LOGS_KEPT: usize = 5;
/// How long the tether's own deferrable work (write-backs, parsing the host key) stays out
/// of the way of a starting entrypoint that neither prints nor exits. Under TCG a round
/// trip to the host or a key parse during the entrypoint's first milliseconds delays its
/// first output by about as long as they take; the host sees `started` at most this late.
pub const STARTUP_GRACE: Duration = Duration::from_millis(100);
/// First and longest pause before relaunching a session with a restart policy.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// The config and the run-time state of every session and exec.
#[derive(Debug)]
pub struct State {
    pub cfg: ContainerConfig,
    pub sessions: HashMap<String, Session>,
}

impl State {
    /// A session's or exec's config; an ID in both maps is the exec, as in the original.
    pub fn session_cfg(&self, id: &str) -> Option<&SessionConfig> {
        self.cfg.execs.get(id).or_else(|| self.cfg.sessions.get(id))
    }

    fn session_cfg_mut(&mut self, id: &str) -> Option<&mut SessionConfig> {
        if self.cfg.execs.contains_key(id) {
            self.cfg.execs.get_mut(id)
        } else {
            self.cfg.sessions.get_mut(id)
        }
    }
}

/// The running tether.
#[derive(Debug)]
pub struct Tether {
    state: Mutex<State>,
    /// Writes go through the write-back thread (see [`crate::writeback`]).
    transport: WriteBack,
    reaper: Reaper,
    sink: OutputSink,
    shutdown: watch::Sender<bool>,
    /// Bumped whenever the set of attachable IDs may have changed (reload, exit), so the
    /// back-channel can push `container-ids`.
    ids_changed: watch::Sender<u64>,
    /// The networks configured and their leases (networks come and go on reloads).
    networks: crate::net::Leases,
}

impl Tether {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn primary_id(&self) -> String {
        self.lock().cfg.common.id.clone()
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn ids_changed(&self) -> watch::Receiver<u64> {
        self.ids_changed.subscribe()
    }

    fn bump_ids(&self) {
        self.ids_changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Writes a session's or exec's RW keys back to the host and waits until the host has
    /// them, without holding up the runtime (the write-back thread makes the round trips).
    /// Failures are logged: the VM keeps running whether or not the host heard us.
    pub async fn write_back(&self, id: &str) {
        self.queue_write_back(id);
        self.transport.written().await;
    }

    /// Queues a session's or exec's write-back without waiting for the host.
    fn queue_write_back(&self, id: &str) {
        let kvs = guestinfo::session_writeback(&self.lock().cfg, id);
        match kvs {
            Ok(kvs) => {
                for (k, v) in kvs {
                    if let Err(e) = self.transport.set(&k, &v) {
                        tracing::error!(key = %k, error = %e, "write-back failed");
                    }
                }
            }
            Err(e) => tracing::error!(session = id, error = %e, "cannot encode session write-back"),
        }
    }

    /// Records a renewed DHCP lease and, when what the host sees changed (address, gateway,
    /// name servers), writes the networks' RW keys back (the original's W5).
    fn lease_renewed(&self, r: &crate::net::Renewal) {
        let kvs = {
            let mut st = self.lock();
            match crate::net::record_renewal(&mut st.cfg, r) {
                Ok(true) => guestinfo::guest_writeback(&st.cfg),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot apply the renewed lease to the config");
                    return;
                }
            }
        };
        match kvs {
            Ok(kvs) => {
                for (k, v) in kvs
                    .iter()
                    .filter(|(k, _)| k.starts_with("guestinfo.vice..networks|"))
                {
                    if let Err(e) = self.transport.set(k, v) {
                        tracing::warn!(key = %k, error = %e, "lease write-back failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the lease write-back"),
        }
    }

    /// Resolves once the primary session's start-up is over (see [`STARTUP_GRACE`]): for
    /// work that can wait until then.
    pub async fn started_up(&self) {
        self.transport.released().await;
    }

    /// Ends the start-up: the held write-backs go out, deferred work may run.
    fn end_startup(&self) {
        self.transport.release();
    }

    /// Records the primary's first exec (at `at`, CLOCK_BOOTTIME µs) in the boot stamps and
    /// writes them back.
    fn stamp_exec(&self, at: i64) {
        let stamps = {
            let mut st = self.lock();
            if st.cfg.tether.boot_stamps.contains_key("exec") {
                return;
            }
            st.cfg.tether.boot_stamps.insert("exec".into(), at);
            st.cfg.tether.boot_stamps.clone()
        };
        let us = |k: &str| stamps.get(k).copied().unwrap_or(0);
        tracing::info!(
            kernel_to_pid1_us = us("pid1"),
            config_us = us("config") - us("pid1"),
            disks_us = us("disks") - us("pid1"),
            pid1_to_exec_us = us("exec") - us("pid1"),
            "boot stamps"
        );
        // A config holding only the stamps: encoding the whole config here would cost ten
        // times as much, on the runtime thread, between the launch and the pumps' first read.
        let mut only = ContainerConfig::default();
        only.tether.boot_stamps = stamps;
        match guestinfo::encode(&only) {
            Ok(map) => {
                for (k, v) in map
                    .iter()
                    .filter(|(k, _)| k.starts_with("guestinfo.vice..tether.bootstamps"))
                {
                    if let Err(e) = self.transport.set(k, v) {
                        tracing::warn!(key = %k, error = %e, "boot stamp write-back failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode boot stamps"),
        }
    }

    /// IDs a client may attach to: active sessions that have not stopped and active execs
    /// that have not stopped or failed (the original's `container-ids` rule).
    pub fn attachable_ids(&self, execs_only: bool) -> Vec<String> {
        let st = self.lock();
        let live = |s: &SessionConfig| s.active && s.detail.stop_time == 0;
        let mut ids: Vec<String> = Vec::new();
        if !execs_only {
            ids.extend(
                st.cfg
                    .sessions
                    .iter()
                    .filter(|(id, s)| live(s) && !st.cfg.execs.contains_key(*id))
                    .map(|(id, _)| id.clone()),
            );
        }
        ids.extend(
            st.cfg
                .execs
                .iter()
                .filter(|(_, s)| live(s) && (s.started.is_empty() || s.started == "true"))
                .map(|(id, _)| id.clone()),
        );
        ids
    }

    /// Re-reads the config from the host and acts on what changed.
    pub fn reload(self: &Arc<Self>) {
        let map = match self.transport.get_all() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "reload: cannot read the config");
                return;
            }
        };
        if let Err(e) = guestinfo::decode_into(&map, &mut self.lock().cfg) {
            tracing::error!(error = %e, "reload: config does not decode; keeping the previous one");
            return;
        }
        tracing::debug!("config reloaded");
        self.reconcile();
        self.reload_networks(&map);
    }

    /// Networks connected or disconnected while the container runs (see
    /// [`crate::net::reload`]), done off the runtime (a new NIC is waited for), one reload
    /// after the other; what changed is written back as a DHCP renewal is.
    fn reload_networks(self: &Arc<Self>, map: &guestinfo::Map) {
        let Some(listed) = crate::net::reload::listed(map) else {
            return;
        };
        let t = self.clone();
        tokio::task::spawn_blocking(move || {
            let kvs = {
                let _one_at_a_time = crate::net::reload::serialize();
                let (changes, mut cfg) = {
                    let mut st = t.lock();
                    let c = crate::net::reload::changes(&mut st.cfg, &listed, &t.networks);
                    (c, st.cfg.clone())
                };
                if changes.is_empty() {
                    return;
                }
                let hostname =
                    crate::etc::hostname_for(&cfg.common.id, &cfg.hostname, &cfg.domainname);
                for e in
                    crate::net::reload::apply_changes(&mut cfg, &changes, &hostname, &t.networks)
                {
                    tracing::error!(error = %e, "network reload");
                }
                let mut st = t.lock();
                for name in &changes.added {
                    if let Some(ep) = cfg.networks.get(name) {
                        st.cfg.networks.insert(name.clone(), ep.clone());
                    }
                }
                guestinfo::guest_writeback(&st.cfg)
            };
            match kvs {
                Ok(kvs) => {
                    for (k, v) in kvs
                        .iter()
                        .filter(|(k, _)| k.starts_with("guestinfo.vice..networks|"))
                    {
                        if let Err(e) = t.transport.set(k, v) {
                            tracing::warn!(key = %k, error = %e, "network write-back failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode the network write-back"),
            }
        });
    }

    /// Starts what should run, releases latches `runblock` no longer holds, stops what was
    /// deactivated.
    pub fn reconcile(self: &Arc<Self>) {
        let mut to_launch = Vec::new();
        {
            let mut st = self.lock();
            let ids: Vec<String> = st
                .cfg
                .sessions
                .keys()
                .chain(st.cfg.execs.keys())
                .cloned()
                .collect();
            for id in ids {
                let Some(sc) = st.session_cfg(&id).cloned() else {
                    continue;
                };
                let rt = st.sessions.entry(id.clone()).or_default();
                if !rt.launched {
                    if !sc.active || self.shutting_down() {
                        continue;
                    }
                    let latch = if sc.run_block {
                        let (tx, rx) = oneshot::channel();
                        rt.latch = Some(tx);
                        Some(rx)
                    } else {
                        None
                    };
                    rt.launched = true;
                    to_launch.push((id, latch));
                    continue;
                }
                if !sc.run_block {
                    if let Some(latch) = rt.latch.take() {
                        let _ = latch.send(());
                    }
                }
                if let (Some(pid), false) = (rt.pid, sc.active) {
                    let sig = signals::parse(stop_signal(&sc)).unwrap_or(libc::SIGTERM);
                    tracing::info!(session = %id, "deactivated: sending its stop signal");
                    let _ = signals::send(pid.as_raw(), sig);
                }
            }
        }
        for (id, latch) in to_launch {
            tokio::spawn(run_session(self.clone(), id, latch));
        }
        self.bump_ids();
    }

    /// Releases a session held by `runblock` (the `unblock` request). Returns whether the
    /// session exists and did not fail to launch.
    pub fn unblock(&self, id: &str) -> bool {
        let mut st = self.lock();
        let ok = st
            .session_cfg(id)
            .map(|s| s.started.is_empty() || s.started == "true")
            .unwrap_or(false);
        if ok {
            if let Some(latch) = st.sessions.get_mut(id).and_then(|s| s.latch.take()) {
                let _ = latch.send(());
            }
        }
        ok
    }

    /// Sends a signal to a session's process, or its process group.
    pub fn signal(&self, id: &str, sig: &str, group: bool) -> Result<(), String> {
        let signo = signals::parse(sig).map_err(|e| e.to_string())?;
        let pid = self.lock().sessions.get(id).and_then(|s| s.pid);
        let Some(pid) = pid else {
            return Err(format!("the session {id} hasn't launched yet"));
        };
        let target = if group { -pid.as_raw() } else { pid.as_raw() };
        signals::send(target, signo).map_err(|e| format!("failed to signal {id}: {e}"))
    }

    /// The host's halt: the primary's stop signal, SIGKILL after the grace period if it is
    /// still there. Returns at once; the primary's exit ends the VM.
    pub fn halt(self: &Arc<Self>) {
        let id = self.primary_id();
        let (sig, grace) = {
            let st = self.lock();
            let sig = st
                .session_cfg(&id)
                .map(|s| stop_signal(s).to_owned())
                .unwrap_or_else(|| "TERM".into());
            let grace = match st.cfg.tether.stop_timeout {
                t if t > 0 => Duration::from_secs(t as u64),
                _ => DEFAULT_STOP_GRACE,
            };
            (sig, grace)
        };
        let pid = self.lock().sessions.get(&id).and_then(|s| s.pid);
        if pid.is_none() {
            // Nothing runs (blocked or failed): there is nothing to wait for.
            self.begin_shutdown();
            return;
        }
        if let Err(e) = self.signal(&id, &sig, false) {
            tracing::warn!(error = %e, "halt: stop signal");
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut done = match me.lock().sessions.get(&id) {
                Some(s) => s.done.subscribe(),
                None => return,
            };
            if tokio::time::timeout(grace, done.wait_for(|d| *d))
                .await
                .is_err()
            {
                tracing::info!(session = %id, "still running {grace:?} after its stop signal: SIGKILL");
                let _ = me.signal(&id, "KILL", true);
                let _ = me.signal(&id, "KILL", false);
                // A process in uninterruptible sleep dies only when it wakes (never, for a
                // write to an NFS server that is gone), and a grandchild may hold the
                // output open: the VM powers off all the same.
                let pid = me.lock().sessions.get(&id).and_then(|s| s.pid);
                let stuck =
                    || pid.is_some_and(|p| crate::shutdown::in_uninterruptible_sleep(p.as_raw()));
                let ended = crate::shutdown::wait_unless_stuck(
                    crate::shutdown::KILL_WAIT,
                    || *done.borrow(),
                    stuck,
                )
                .await;
                if !ended {
                    tracing::warn!(session = %id, "not gone after SIGKILL: shutting down without it");
                    me.record_unreaped_kill(&id).await;
                    me.begin_shutdown();
                }
            }
        });
    }
}

impl Tether {
    /// Records a session SIGKILL could not end before the power-off as killed by it (128 +
    /// 9, with the stop time), as a reaped one would be: otherwise its status would read as
    /// the 0 of a process still running.
    async fn record_unreaped_kill(&self, id: &str) {
        {
            let mut st = self.lock();
            if let Some(s) = st.session_cfg_mut(id) {
                let stop = session::now_secs();
                s.exit_status = 128 + i64::from(libc::SIGKILL);
                s.detail.stop_time = stop;
                s.diagnostics.exit_logs.push(ExitLog {
                    time: guestinfo::value::GoTime::from_unix(stop, 0),
                    exit_status: s.exit_status,
                    message: "killed by signal 9, still in uninterruptible sleep at power-off"
                        .into(),
                });
                let excess = s.diagnostics.exit_logs.len().saturating_sub(EXIT_LOGS_KEPT);
                s.diagnostics.exit_logs.drain(..excess);
            }
        }
        self.write_back(id).await;
    }
}

fn stop_signal(s: &SessionConfig) -> &str {
    if s.stop_signal.is_empty() {
        "TERM"
    } else {
        &s.stop_signal
    }
}

/// The life of one session or exec: wait for `runblock`, launch, wait for the exit, write
/// back, and relaunch while a restart policy says so.
async fn run_session(t: Arc<Tether>, id: String, latch: Option<oneshot::Receiver<()>>) {
    let primary = id == t.primary_id();
    if let Some(latch) = latch {
        tracing::info!(session = %id, "waiting for unblock");
        if primary {
            // Nothing starts until a client attaches and unblocks: let it.
            t.end_startup();
        }
        let mut stop = t.shutdown_signal();
        tokio::select! {
            _ = latch => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let mut backoff = RESTART_BACKOFF.0;
    loop {
        let code = launch_and_wait(&t, &id).await;
        let again = {
            let st = t.lock();
            let sc = st.session_cfg(&id);
            code.is_some()
                && sc.map(|s| s.restart && s.active).unwrap_or(false)
                && !t.shutting_down()
        };
        if !again {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESTART_BACKOFF.1);
        {
            let mut st = t.lock();
            if let Some(s) = st.session_cfg_mut(&id) {
                s.diagnostics.resurrection_count += 1;
                tracing::info!(session = %id, count = s.diagnostics.resurrection_count, "restarting");
            }
            if let Some(rt) = st.sessions.get_mut(&id) {
                rt.reset_io();
            }
        }
        t.write_back(&id).await;
    }
    t.bump_ids();
    if primary {
        t.begin_shutdown();
    }
}

/// One launch. Returns the exit code, or `None` when the launch failed.
async fn launch_and_wait(t: &Arc<Tether>, id: &str) -> Option<i64> {
    let prepared = {
        let mut st = t.lock();
        let sc = st.session_cfg(id).cloned();
        match (sc, st.sessions.get_mut(id)) {
            (Some(sc), Some(rt)) => Some((
                sc,
                LaunchIo {
                    stdout: rt.stdout.clone(),
                    stderr: rt.stderr.clone(),
                    winsize: rt.winsize,
                    stdin: rt.stdin_rx.take(),
                },
            )),
            _ => None,
        }
    };
    let (sc, io) = prepared?;
    let launched = session::launch(id, &sc, io, &t.reaper, &t.sink);
    let now = session::now_secs();
    let mut running = match launched {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(session = %id, error = %e, "launch failed");
            {
                let mut st = t.lock();
                if let Some(s) = st.session_cfg_mut(id) {
                    s.started = e.to_string();
                    s.exit_status = e.exit_status();
                    s.detail.stop_time = now;
                    s.run_block = false;
                }
            }
            // The host has the reason before an attached client is told the session ended
            // (it reads `started` once the channel closes).
            t.write_back(id).await;
            if let Some(rt) = t.lock().sessions.get_mut(id) {
                rt.stdout.close();
                rt.stderr.close();
                rt.done.send_replace(true);
            }
            return None;
        }
    };
    tracing::info!(session = %id, pid = running.pid.as_raw(), "session started");
    let exec_at = crate::boot::boottime_us();
    {
        let mut st = t.lock();
        if let Some(s) = st.session_cfg_mut(id) {
            s.started = "true".into();
            s.detail.start_time = now;
            s.detail.stop_time = 0;
            s.exit_status = 0;
            s.run_block = false;
        }
        if let Some(rt) = st.sessions.get_mut(id) {
            rt.pid = Some(running.pid);
            rt.pty = running.pty.take();
        }
    }
    // Queued: the write-back thread makes the round trips once the start-up is over.
    t.queue_write_back(id);
    let mut code = None;
    if id == t.primary_id() {
        code = startup(t, id, &mut running.exit).await;
        t.end_startup();
        t.stamp_exec(exec_at);
    }
    let code = match code {
        Some(c) => c,
        None => (&mut running.exit).await.unwrap_or(255),
    };
    if !session::drain(&mut running.pumps, DRAIN_AFTER_EXIT).await {
        tracing::info!(session = %id, "descendants still hold the output after exit; not waiting for them");
    }
    tracing::info!(session = %id, code, "session exited");
    {
        let mut st = t.lock();
        let stop = session::now_secs();
        if let Some(s) = st.session_cfg_mut(id) {
            s.exit_status = code;
            s.detail.stop_time = stop;
            let message = if code > 128 {
                format!("killed by signal {}", code - 128)
            } else {
                String::new()
            };
            s.diagnostics.exit_logs.push(ExitLog {
                time: guestinfo::value::GoTime::from_unix(stop, 0),
                exit_status: code,
                message,
            });
            let excess = s.diagnostics.exit_logs.len().saturating_sub(EXIT_LOGS_KEPT);
            s.diagnostics.exit_logs.drain(..excess);
        }
        if let Some(rt) = st.sessions.get_mut(id) {
            rt.pid = None;
            rt.pty = None;
        }
    }
    // The host has the exit status before attached clients are sent it.
    t.write_back(id).await;
    if let Some(rt) = t.lock().sessions.get_mut(id) {
        // Output that a lingering descendant writes later still reaches the log, but
        // attached clients are told the session ended.
        rt.stdout.close();
        rt.stderr.close();
        rt.done.send_replace(true);
    }
    Some(code)
}

/// The primary's start-up: until its first output, its exit (returned) or the end of
/// [`STARTUP_GRACE`] after the runtime started (a timer in `run` ends it).
async fn startup(
    t: &Arc<Tether>,
    id: &str,
    exit: &mut oneshot::Receiver<reaper::ExitCode>,
) -> Option<i64> {
    // Subscribed before the first await: the pumps have not read anything yet.
    let streams = t
        .lock()
        .sessions
        .get(id)
        .map(|s| (s.stdout.subscribe(), s.stderr.subscribe()));
    let (mut out, mut err) = streams?;
    tokio::select! {
        code = exit => Some(code.unwrap_or(255)),
        Some(_) = out.recv() => None,
        Some(_) = err.recv() => None,
        () = t.started_up() => None,
        else => None,
    }
}

/// Forwards host commands from the transport's thread into the runtime.
fn bridge_commands(transport: &dyn Transport) -> mpsc::Receiver<HostCommand> {
    let (tx, rx) = mpsc::channel(16);
    if let Some(commands) = transport.commands() {
        let spawned = std::thread::Builder::new()
            .name("host-commands".into())
            .spawn(move || {
                while let Ok(c) = commands.recv() {
                    if tx.blocking_send(c).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the host command thread");
        }
    }
    rx
}

/// Runs the container until its primary session ends (or the host halts it), then stops
/// every process and flushes the output channel.
pub async fn run(
    cfg: ContainerConfig,
    transport: WriteBack,
    platform: Platform,
    leases: crate::net::Leases,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let reaper = Reaper::start().context("start reaper")?;
    let format = if cfg.tether.log_format == "vic" {
        output::Format::Vic {
            primary: cfg.common.id.clone(),
        }
    } else {
        output::Format::Tether
    };
    let sink = output::start(platform.output_channel(), format);
    let mut commands = bridge_commands(&transport);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("SIGHUP handler")?;
    let t = Arc::new(Tether {
        state: Mutex::new(State {
            cfg,
            sessions: HashMap::new(),
        }),
        transport,
        reaper: reaper.clone(),
        sink,
        shutdown: watch::channel(false).0,
        ids_changed: watch::channel(0).0,
        networks: leases.clone(),
    });
    t.reconcile();
    let timer = t.clone();
    tokio::spawn(async move {
        tokio::time::sleep(STARTUP_GRACE).await;
        timer.end_startup();
    });
    tokio::spawn(crate::attach::serve(t.clone(), platform.attach_channel()));
    let renewer = t.clone();
    tokio::spawn(crate::net::maintain(leases.clone(), move |r| {
        renewer.lease_renewed(&r)
    }));
    let panic_after = t.lock().cfg.tether.panic_after_ms;
    if panic_after > 0 {
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(panic_after.unsigned_abs())).await;
            // The panic hook, not this task, decides what happens next: that is under test.
            panic!("test hook tether/panicafter fired after {panic_after} ms");
        });
    }

    let mut stop = t.shutdown_signal();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(cmd) = commands.recv() => {
                tracing::info!(?cmd, "host command");
                let primary = t.primary_id();
                match cmd {
                    HostCommand::Reload => t.reload(),
                    HostCommand::Kill(sig) => if let Err(e) = t.signal(&primary, &sig, false) { tracing::error!("kill: {e}") },
                    HostCommand::GroupKill(sig) => if let Err(e) = t.signal(&primary, &sig, true) { tracing::error!("group-kill: {e}") },
                    HostCommand::Halt => t.halt(),
                }
            }
            // The hypervisor's reload path in the original (the toolbox signals PID 1).
            Some(()) = hup.recv() => t.reload(),
        }
    }

    tracing::info!("stopping remaining processes");
    shutdown::terminate_all(&reaper, shutdown::TERM_GRACE).await;
    // Every process is gone, so every pump reaches EOF: wait for the sessions to finish
    // writing their records (bounded: one that never launched never finishes).
    let mut dones: Vec<watch::Receiver<bool>> = t
        .lock()
        .sessions
        .values()
        .filter(|s| s.launched)
        .map(|s| s.done.subscribe())
        .collect();
    let all_done = async {
        for d in dones.iter_mut() {
            let _ = d.wait_for(|v| *v).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), all_done).await;
    if !t.sink.flush(Duration::from_secs(5)) {
        tracing::warn!("output channel did not drain in time");
    }
    if !leases.is_empty() {
        let _ = tokio::task::spawn_blocking(move || crate::net::release_all(&leases)).await;
    }
    Ok(())
}
