//! The tether after boot: the config and the run-time state of every session and exec, what
//! changes them (reloads, launches, exits, host commands, the back-channel's requests), and
//! the write-backs that tell the host. [`crate::supervisor`] runs it.
//!
//! Everything runs on one current-thread runtime. Shared state sits behind one mutex that
//! is never held across an `await`; blocking transport calls (a few milliseconds each)
//! happen outside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use guestinfo::{ContainerConfig, HostCommand, SessionConfig};
use tokio::sync::{oneshot, watch};

use crate::output::OutputSink;
use crate::reaper::{self, Reaper};
use crate::session::{self, Session, SessionMut};
use crate::writeback::{write_keys, WriteBack};
use crate::{clock, signals};

/// How long a process may hold the output pipes after the session process exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Grace between the stop signal and SIGKILL when the host halts the VM, unless the config
/// says otherwise.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the tether's own deferrable work (write-backs, parsing the host key) stays out
/// of the way of a starting entrypoint that neither prints nor exits. Under TCG a round
/// trip to the host or a key parse during the entrypoint's first milliseconds delays its
/// first output by about as long as they take; the host sees `started` at most this late.
pub const STARTUP_GRACE: Duration = Duration::from_millis(100);
/// First and longest pause before relaunching a session with a restart policy.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// Why a signal did not reach a session.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// the signal is not one
    #[error(transparent)]
    Signal(#[from] signals::SignalError),
    /// the session has no process (yet)
    #[error("the session {0} hasn't launched yet")]
    NotLaunched(String),
    /// the kernel refused
    #[error("failed to signal {id}: {source}")]
    Send {
        id: String,
        #[source]
        source: nix::Error,
    },
}

/// Why an `attach` channel is refused. The messages are the original's: the port layer
/// shows them to the user.
#[derive(Debug, thiserror::Error)]
pub enum AttachRefusal {
    /// no such session or exec
    #[error("session {0} is invalid")]
    Invalid(String),
    /// its launch failed (the reason is what `started` holds)
    #[error("launch failed with: {0}")]
    LaunchFailed(String),
    /// it has exited
    #[error("process finished with exit code: {0}")]
    Finished(i64),
}

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

    /// A session's config and run-time state, to record what happened to it.
    pub fn session_mut(&mut self, id: &str) -> Option<SessionMut<'_>> {
        let cfg = if self.cfg.execs.contains_key(id) {
            self.cfg.execs.get_mut(id)
        } else {
            self.cfg.sessions.get_mut(id)
        }?;
        let rt = self.sessions.get_mut(id)?;
        Some(SessionMut { cfg, rt })
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
    /// Set when the primary's start-up is over (see [`Tether::end_startup`]).
    startup_over: watch::Sender<bool>,
    /// Bumped whenever the set of attachable IDs may have changed (reload, exit), so the
    /// back-channel can push `container-ids`.
    ids_changed: watch::Sender<u64>,
    /// The networks configured and their leases (networks come and go on reloads).
    networks: crate::net::Leases,
    /// The host's keys as of the last reload, with the tether's own writes since laid over
    /// them: what a reload compares the host's keys with to see what the host changed.
    seen: Mutex<Option<guestinfo::Map>>,
}

impl Tether {
    /// The tether of `cfg`, with no session started yet (see [`Tether::reconcile`]);
    /// `networks` are the endpoints configured at boot and their leases.
    pub fn new(
        cfg: ContainerConfig,
        transport: WriteBack,
        reaper: Reaper,
        sink: OutputSink,
        networks: crate::net::Leases,
    ) -> Arc<Tether> {
        Arc::new(Tether {
            state: Mutex::new(State {
                cfg,
                sessions: HashMap::new(),
            }),
            transport,
            reaper,
            sink,
            shutdown: watch::channel(false).0,
            startup_over: watch::channel(false).0,
            ids_changed: watch::channel(0).0,
            networks,
            seen: Mutex::new(None),
        })
    }

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

    /// The output channel the sessions' records go to.
    pub fn sink(&self) -> &OutputSink {
        &self.sink
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
        let (kvs, oom) = {
            let mut st = self.lock();
            let kvs = guestinfo::session_writeback(&st.cfg, id);
            (kvs, oom_key(&mut st, id))
        };
        match kvs {
            Ok(kvs) => write_keys(
                &self.transport,
                kvs.into_iter().chain(oom),
                "session write-back",
            ),
            Err(e) => tracing::error!(session = id, error = %e, "cannot encode session write-back"),
        }
    }

    /// Records a renewed DHCP lease and, when what the host sees changed (address, gateway,
    /// name servers), writes the networks' RW keys back (the original's W5).
    pub fn lease_renewed(&self, r: &crate::net::Renewal) {
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
            Ok(kvs) => write_keys(
                &self.transport,
                kvs.into_iter()
                    .filter(|(k, _)| k.starts_with("guestinfo.vice..networks|")),
                "lease write-back",
            ),
            Err(e) => tracing::warn!(error = %e, "cannot encode the lease write-back"),
        }
    }

    /// Resolves once the primary session's start-up is over (see [`STARTUP_GRACE`]) and the
    /// supervisor has let the held write-backs go: for work that can wait until then.
    pub async fn started_up(&self) {
        self.transport.released().await;
    }

    /// Ends the start-up: the supervisor sets up what only a running container needs, then
    /// lets the held write-backs go ([`Tether::release_writes`]).
    pub fn end_startup(&self) {
        self.startup_over.send_replace(true);
    }

    /// Resolves once [`Tether::end_startup`] has been called.
    pub async fn startup_ending(&self) {
        let mut over = self.startup_over.subscribe();
        let _ = over.wait_for(|o| *o).await;
    }

    /// Lets the held write-backs go out: the host learns the container started.
    pub fn release_writes(&self) {
        self.transport.release();
    }

    /// Takes the boot stamps into the config once the primary's first exec is stamped, and
    /// writes them back.
    fn stamp_exec(&self) {
        let stamps = {
            let mut st = self.lock();
            if st.cfg.tether.boot_stamps.contains_key("exec") {
                return;
            }
            st.cfg.tether.boot_stamps = clock::boot_stamps();
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
            Ok(map) => write_keys(
                &self.transport,
                map.iter()
                    .filter(|(k, _)| k.starts_with("guestinfo.vice..tether.bootstamps")),
                "boot stamp write-back",
            ),
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
                .filter(|(_, s)| live(s) && launch_not_failed(s))
                .map(|(id, _)| id.clone()),
        );
        ids
    }

    /// The original's rules for accepting an `attach` channel.
    pub fn check_attach(&self, id: &str) -> Result<(), AttachRefusal> {
        let st = self.lock();
        let Some(sc) = st.session_cfg(id) else {
            return Err(AttachRefusal::Invalid(id.to_owned()));
        };
        if !launch_not_failed(sc) {
            return Err(AttachRefusal::LaunchFailed(sc.started.clone()));
        }
        if sc.detail.stop_time != 0 {
            return Err(AttachRefusal::Finished(sc.exit_status));
        }
        if !st.sessions.contains_key(id) {
            return Err(AttachRefusal::Invalid(id.to_owned()));
        }
        Ok(())
    }

    /// Acts on a command from the host.
    pub fn host_command(self: &Arc<Self>, cmd: HostCommand) {
        tracing::info!(?cmd, "host command");
        let (sig, group) = match &cmd {
            HostCommand::Reload => return self.reload(),
            HostCommand::Halt => return self.halt(),
            HostCommand::Kill(sig) => (sig, false),
            HostCommand::GroupKill(sig) => (sig, true),
        };
        if let Err(e) = self.signal(&self.primary_id(), sig, group) {
            tracing::error!("{}: {e}", cmd.verb());
        }
    }

    /// Re-reads the config from the host and acts on what changed.
    pub fn reload(self: &Arc<Self>) {
        let map = match guestinfo::Transport::get_all(&self.transport) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "reload: keeping the previous config");
                return;
            }
        };
        tracing::debug!(keys = map.len(), "reload: config read");
        // An exec's reload (the common one) adds one exec and changes nothing else the
        // tether did not write itself: only its keys are decoded. Anything else takes the
        // whole decode, which merges every key into the config.
        let fast = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let written = self.transport.take_written();
            let st = self.lock();
            let fast = seen.as_mut().and_then(|s| {
                s.extend(written);
                new_execs_only(s, &map, &st.cfg)
            });
            drop(st);
            // Set again once the decode succeeded: after a failed one the next reload
            // decodes the whole config again.
            *seen = None;
            fast
        };
        let fast_path = fast.is_some();
        let decoded = match fast {
            Some(new) => Ok(new),
            None => {
                // Decoded into a copy: a config that does not decode leaves the current one
                // whole. Nothing else changes the state meanwhile (this runs on the runtime
                // thread).
                let mut cfg = self.lock().cfg.clone();
                guestinfo::decode_into(&map, &mut cfg).map(|()| {
                    self.lock().cfg = cfg;
                    Vec::new()
                })
            }
        };
        match decoded {
            Ok(new) => {
                let mut st = self.lock();
                for (id, exec) in new {
                    st.cfg.execs.insert(id, exec);
                }
                drop(st);
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(map.clone());
            }
            Err(e) => {
                tracing::error!(error = %e, "reload: keeping the previous config");
                return;
            }
        }
        tracing::debug!(fast = fast_path, "config reloaded");
        self.reconcile();
        self.reload_networks(
            map.get(crate::net::reload::NETWORKS_KEY)
                .map(String::as_str),
        );
    }

    /// Networks connected or disconnected while the container runs (see
    /// [`crate::net::reload`]), done off the runtime (a new NIC is waited for), one reload
    /// after the other; what changed is written back as a DHCP renewal is.
    fn reload_networks(self: &Arc<Self>, listed: Option<&str>) {
        // The host's list of networks (`listed`, from the reload's own read of every key:
        // no round trip of its own on an exec's way): a reload merges maps, so the config
        // keeps networks the host no longer lists.
        let listed = crate::net::reload::listed(listed);
        let Some(listed) = listed else {
            return;
        };
        let t = self.clone();
        let job = crate::blocking::spawn("net-reload", move || {
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
                Ok(kvs) => write_keys(
                    &t.transport,
                    kvs.into_iter()
                        .filter(|(k, _)| k.starts_with("guestinfo.vice..networks|")),
                    "network write-back",
                ),
                Err(e) => tracing::warn!(error = %e, "cannot encode the network write-back"),
            }
        });
        if let Err(e) = job {
            tracing::error!(error = %e, "network reload");
        }
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
        let ok = st.session_cfg(id).map(launch_not_failed).unwrap_or(false);
        if ok {
            if let Some(latch) = st.sessions.get_mut(id).and_then(|s| s.latch.take()) {
                let _ = latch.send(());
            }
        }
        ok
    }

    /// Sends a signal to a session's process, or its process group.
    pub fn signal(&self, id: &str, sig: &str, group: bool) -> Result<(), KillError> {
        let signo = signals::parse(sig)?;
        let pid = self.lock().sessions.get(id).and_then(|s| s.pid);
        let Some(pid) = pid else {
            return Err(KillError::NotLaunched(id.to_owned()));
        };
        let target = if group { -pid.as_raw() } else { pid.as_raw() };
        signals::send(target, signo).map_err(|source| KillError::Send {
            id: id.to_owned(),
            source,
        })
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
            let grace = match u64::try_from(st.cfg.tether.stop_timeout) {
                Ok(secs) if secs > 0 => Duration::from_secs(secs),
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

    /// Waits (at most `limit`) until every launched session has written its last output
    /// records: once every process is gone, every pump reaches its end. One that never
    /// launched never finishes, hence the bound.
    pub async fn sessions_done(&self, limit: Duration) {
        let mut dones: Vec<watch::Receiver<bool>> = self
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
        let _ = tokio::time::timeout(limit, all_done).await;
    }
}

/// Our extension key `guestinfo.vice..sessions|ID.oomkilled` (`execs|` for an exec): `true`
/// once the OOM killer acted while the session ran, `false` again after a later run ended
/// without; written only when it changes, so a VIC port layer (which ignores it) sees no
/// extra writes in the ordinary case.
fn oom_key(st: &mut State, id: &str) -> Option<(String, String)> {
    let map = if st.cfg.execs.contains_key(id) {
        "execs"
    } else {
        "sessions"
    };
    let rt = st.sessions.get_mut(id)?;
    if rt.oom_killed == rt.oom_written {
        return None;
    }
    rt.oom_written = rt.oom_killed;
    Some((
        format!("guestinfo.vice..{map}|{id}.{OOM_KILLED_KEY}"),
        rt.oom_killed.to_string(),
    ))
}

/// The leaf of the OOM key (see [`oom_key`]).
pub const OOM_KILLED_KEY: &str = "oomkilled";

/// Whether a session's launch has not failed: `started` is empty (not launched yet) or
/// `true`; anything else is the launch error.
fn launch_not_failed(s: &SessionConfig) -> bool {
    s.started.is_empty() || s.started == "true"
}

impl Tether {
    /// Records a session SIGKILL could not end before the power-off as killed by it (128 +
    /// 9, with the stop time), as a reaped one would be: otherwise its status would read as
    /// the 0 of a process still running.
    async fn record_unreaped_kill(&self, id: &str) {
        if let Some(mut s) = self.lock().session_mut(id) {
            s.record_unreaped_kill(clock::now_secs());
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
/// The execs a reload adds, decoded from their keys alone, when that is all the host
/// changed: every key of `map` that differs from `seen` (the host's keys as of the last
/// reload with the tether's own writes laid over them) belongs to an exec the config does
/// not have yet, or is the execs' key list, which only grew. `None`: something else
/// changed (or nothing did), and the whole config is decoded.
fn new_execs_only(
    seen: &guestinfo::Map,
    map: &guestinfo::Map,
    cfg: &ContainerConfig,
) -> Option<Vec<(String, SessionConfig)>> {
    const LIST: &str = "guestinfo.vice./execs@non-persistent";
    if seen.keys().any(|k| !map.contains_key(k)) {
        return None;
    }
    let mut small = guestinfo::Map::new();
    let mut ids: Vec<String> = Vec::new();
    for (k, v) in map {
        if seen.get(k) == Some(v) {
            continue;
        }
        // Answered afresh on every read and never stored (the host's clock, a seed): they
        // differ on every reload and mean nothing after boot. Counted as a change, they kept
        // every exec on the whole decode (12-16 ms of an exec's 40 under TCG).
        if k == guestinfo::transport::HOST_TIME_KEY || k == guestinfo::transport::ENTROPY_SEED_KEY {
            continue;
        }
        if k == LIST {
            let old = seen.get(k).map(String::as_str).unwrap_or("");
            let new: Vec<&str> = v.split('|').collect();
            if !old
                .split('|')
                .filter(|i| !i.is_empty())
                .all(|i| new.contains(&i))
            {
                return None;
            }
            small.insert(k.clone(), v.clone());
            continue;
        }
        let id = exec_id_of(k)?;
        if cfg.execs.contains_key(id) || cfg.sessions.contains_key(id) {
            return None;
        }
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_owned());
        }
        // A reload never reads these (the tether's own write-backs); leaving them out
        // gives the plain decode below the same result.
        let leaf = k.trim_end_matches("@non-persistent");
        if [
            ".started",
            ".status",
            ".detail.starttime",
            ".detail.stoptime",
        ]
        .iter()
        .any(|s| leaf.ends_with(s))
        {
            continue;
        }
        small.insert(k.clone(), v.clone());
    }
    if ids.is_empty() || !small.contains_key(LIST) {
        return None;
    }
    let mut decoded = guestinfo::decode(&small).ok()?;
    ids.into_iter()
        .map(|id| decoded.execs.remove(&id).map(|e| (id, e)))
        .collect()
}

/// The exec ID in an exec's key (`guestinfo.vice./execs|ID/...`, `guestinfo.vice..execs|ID.started`).
fn exec_id_of(key: &str) -> Option<&str> {
    let rest = key
        .strip_prefix("guestinfo.vice./execs|")
        .or_else(|| key.strip_prefix("guestinfo.vice..execs|"))?;
    let end = rest.find(['/', '.', '@', '|', '~']).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

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
        if let Some(count) = t.lock().session_mut(&id).map(|mut s| s.record_restart()) {
            tracing::info!(session = %id, count, "restarting");
        }
        t.write_back(&id).await;
    }
    t.bump_ids();
    if primary {
        t.begin_shutdown();
    }
}

/// One launch. Returns the exit code, or `None` when the launch failed.
///
/// The order matters to the host: it has the launch error (or the exit status) before an
/// attached client is told the session ended, since the client then reads it back.
async fn launch_and_wait(t: &Arc<Tether>, id: &str) -> Option<i64> {
    let (sc, io, group) = {
        let mut st = t.lock();
        let group = if st.cfg.execs.contains_key(id) {
            crate::cgroup::Group::Exec
        } else {
            crate::cgroup::Group::Container
        };
        let mut s = st.session_mut(id)?;
        (s.cfg.clone(), s.launch_io(), group)
    };
    let launched = session::launch(id, &sc, io, &t.reaper, &t.sink, group);
    let now = clock::now_secs();
    let mut running = match launched {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(session = %id, error = %e, "launch failed");
            if let Some(mut s) = t.lock().session_mut(id) {
                s.record_launch_failure(&e, now);
            }
            t.write_back(id).await;
            finish(t, id);
            return None;
        }
    };
    tracing::info!(session = %id, pid = running.pid.as_raw(), "session started");
    let primary = id == t.primary_id();
    if primary {
        clock::stamp("exec");
    }
    if let Some(mut s) = t.lock().session_mut(id) {
        s.record_start(&mut running, now);
    }
    let mut code = None;
    if primary {
        code = startup(t, id, &mut running.exit).await;
        // Queued: the write-back thread makes the round trips once the start-up is over.
        // Encoded here, not before the start-up: the host sees it no sooner either way
        // (the queue is held until then), and its first-run code would stand between the
        // entrypoint and its first output reaching the host.
        t.queue_write_back(id);
        t.end_startup();
        t.stamp_exec();
    } else {
        t.queue_write_back(id);
    }
    let code = match code {
        Some(c) => c,
        None => (&mut running.exit).await.unwrap_or(255),
    };
    if !session::drain(&mut running.pumps, DRAIN_AFTER_EXIT).await {
        tracing::info!(session = %id, "descendants still hold the output after exit; not waiting for them");
    }
    tracing::info!(session = %id, code, "session exited");
    if let Some(mut s) = t.lock().session_mut(id) {
        s.record_exit(code, clock::now_secs());
        let victims = s.record_oom();
        if !victims.is_empty() {
            tracing::warn!(session = %id, code, ?victims, "the kernel's OOM killer acted while the session ran");
        }
    }
    t.write_back(id).await;
    finish(t, id);
    Some(code)
}

/// Tells the session's attached clients it is over.
fn finish(t: &Tether, id: &str) {
    if let Some(rt) = t.lock().sessions.get_mut(id) {
        rt.finish();
    }
}

/// The primary's start-up: until its first output, the end of its output (both streams
/// closed: it exited, or handed them on), its exit (returned) or the end of
/// [`STARTUP_GRACE`] after the runtime started (a timer in the supervisor ends it). The
/// reaper's thread starts only after the start-up, so an exit during it is seen through the
/// output's end.
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
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            code = &mut *exit => return Some(code.unwrap_or(255)),
            chunk = out.recv(), if out_open => match chunk {
                Some(_) => return None,
                None => out_open = false,
            },
            chunk = err.recv(), if err_open => match chunk {
                Some(_) => return None,
                None => err_open = false,
            },
            () = t.started_up() => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str, cmd: &str) -> SessionConfig {
        let mut e = SessionConfig::default();
        e.common.id = id.into();
        e.cmd.path = cmd.into();
        e.cmd.args = vec![cmd.into(), "-x".into()];
        e.cmd.env = vec!["A=b".into()];
        e.run_block = true;
        e.active = true;
        e.attach = true;
        e
    }

    fn keys(cfg: &ContainerConfig) -> guestinfo::Map {
        guestinfo::encode(cfg).unwrap().into_iter().collect()
    }

    #[test]
    fn a_new_exec_alone_is_decoded_as_the_whole_decode_would() {
        let mut cfg = ContainerConfig::default();
        cfg.common.id = "c1".into();
        cfg.sessions.insert("c1".into(), exec("c1", "/bin/sleep"));
        cfg.execs.insert("e1".into(), exec("e1", "/bin/true"));
        let seen = keys(&cfg);
        let mut with = cfg.clone();
        let mut e2 = exec("e2", "/bin/ls");
        // Keys a reload never reads, whatever the host wrote there.
        e2.started = "true".into();
        e2.exit_status = 3;
        with.execs.insert("e2".into(), e2);
        let mut map = keys(&with);
        // The host's answered-afresh keys differ on every read.
        let mut seen = seen;
        seen.insert(guestinfo::transport::HOST_TIME_KEY.into(), "1".into());
        map.insert(guestinfo::transport::HOST_TIME_KEY.into(), "2".into());
        map.insert(guestinfo::transport::ENTROPY_SEED_KEY.into(), "ab".into());

        let fast = new_execs_only(&seen, &map, &cfg).expect("the fast path");
        let mut full = cfg.clone();
        guestinfo::decode_into(&map, &mut full).unwrap();
        assert_eq!(fast.len(), 1);
        assert_eq!(fast[0].0, "e2");
        assert_eq!(Some(&fast[0].1), full.execs.get("e2"));
        assert_eq!(fast[0].1.cmd.args, vec!["/bin/ls", "-x"]);
        assert_eq!((fast[0].1.started.as_str(), fast[0].1.exit_status), ("", 0));
    }

    #[test]
    fn anything_else_changed_takes_the_whole_decode() {
        let mut cfg = ContainerConfig::default();
        cfg.common.id = "c1".into();
        cfg.sessions.insert("c1".into(), exec("c1", "/bin/sleep"));
        cfg.execs.insert("e1".into(), exec("e1", "/bin/true"));
        let seen = keys(&cfg);
        // Nothing changed.
        assert!(new_execs_only(&seen, &seen, &cfg).is_none());
        // A new exec and a change to the primary session.
        let mut with = cfg.clone();
        with.execs.insert("e2".into(), exec("e2", "/bin/ls"));
        if let Some(s) = with.sessions.get_mut("c1") {
            s.cmd.args.push("more".into());
        }
        assert!(new_execs_only(&seen, &keys(&with), &cfg).is_none());
        // A change to a known exec.
        let mut with = cfg.clone();
        if let Some(e) = with.execs.get_mut("e1") {
            e.active = false;
        }
        assert!(new_execs_only(&seen, &keys(&with), &cfg).is_none());
    }

    #[test]
    fn exec_ids_in_keys() {
        assert_eq!(
            exec_id_of("guestinfo.vice./execs|ab12/cmd/Path@non-persistent"),
            Some("ab12")
        );
        assert_eq!(
            exec_id_of("guestinfo.vice..execs|ab12.started@non-persistent"),
            Some("ab12")
        );
        assert_eq!(exec_id_of("guestinfo.vice./execs@non-persistent"), None);
        assert_eq!(exec_id_of("guestinfo.vice./sessions|ab12/cmd/Path"), None);
    }

    #[test]
    fn attach_refusals_say_what_the_original_said() {
        assert_eq!(
            AttachRefusal::Invalid("abc".into()).to_string(),
            "session abc is invalid"
        );
        assert_eq!(
            AttachRefusal::LaunchFailed("stat /x: no such file or directory".into()).to_string(),
            "launch failed with: stat /x: no such file or directory"
        );
        assert_eq!(
            AttachRefusal::Finished(3).to_string(),
            "process finished with exit code: 3"
        );
    }

    #[test]
    fn a_session_is_found_with_its_config_exec_first() {
        let mut state = State {
            cfg: ContainerConfig::default(),
            sessions: HashMap::new(),
        };
        state
            .cfg
            .sessions
            .insert("a".into(), SessionConfig::default());
        assert!(state.session_mut("a").is_none(), "no run-time state yet");
        state.sessions.insert("a".into(), Session::new());
        let exec = SessionConfig {
            tty: true,
            ..SessionConfig::default()
        };
        state.cfg.execs.insert("a".into(), exec);
        let found = state.session_mut("a").map(|s| s.cfg.tty);
        assert_eq!(found, Some(true), "an ID in both maps is the exec");
        assert!(state.session_cfg("a").is_some_and(|s| s.tty));
    }
}
