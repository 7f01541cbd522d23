//! The tether's life: synchronous early boot, then a current-thread runtime that runs the
//! container's primary session until it ends, then the way out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use guestinfo::{ContainerConfig, Transport};
use nix::mount::MsFlags;

use crate::platform::Platform;
use crate::writeback::{write_keys, WriteBack};
use crate::{disk, early, etc, log, net, platform, supervisor, volumes};

/// Where the container disk is mounted before it becomes `/`.
const NEW_ROOT: &str = "/root";
/// How long to wait for the container disk to show up.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// A config the tether cannot run, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// the keys do not decode
    #[error(transparent)]
    Decode(#[from] guestinfo::DecodeError),
    /// no container ID
    #[error("no container ID (guestinfo.vice./common/id)")]
    NoId,
    /// no session for the container ID
    #[error("no session for the container ID (guestinfo.vice./sessions|{0})")]
    NoPrimary(String),
    /// the primary session has no command
    #[error("no command (guestinfo.vice./sessions|{0}/cmd/Path)")]
    NoCommand(String),
}

/// The longest launch error boot writes to `started`: one guestinfo value the host shows
/// users (`docker ps`, `inspect`), not a dump of the config.
pub const MAX_STARTED: usize = 1024;
/// The most sessions a config failure is reported to: one write per key and session, and a
/// config may list any number of IDs (the host reads the container's own).
const MAX_REPORTED: usize = 64;
/// The key of the session list, and the prefix of each session's keys.
const SESSIONS_KEY: &str = "guestinfo.vice./sessions";
/// The longest session ID a launch error is written for.
const MAX_ID_LEN: usize = 256;
/// The key of the container ID, which is also its primary session's.
const ID_KEY: &str = "guestinfo.vice./common/id";

/// Why boot has no config to run; the text is what the host sees in `started`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFailure(String);

/// Reads the container config and checks what the tether cannot run without, as boot does
/// before anything else. On failure, the reason (at most [`MAX_STARTED`] bytes) goes to the
/// host as the launch error of the sessions the config names (`started`, and `status` 125)
/// and comes back as the error. The in-process bad-config tests (`tests/bad_config.rs`)
/// call this with the real QEMU transport.
pub fn load_config(
    transport: &dyn Transport,
) -> Result<(guestinfo::Map, ContainerConfig), ConfigFailure> {
    let raw = match transport.get_all() {
        Ok(raw) => raw,
        Err(e) => {
            // The whole config did not come through (the host refused it, or a frame could
            // not be decoded): the session list alone may, and the host learns why.
            let msg = clip_message(format!("cannot read the container config: {e}"));
            let mut ids: Vec<String> = transport.get(ID_KEY).ok().flatten().into_iter().collect();
            if let Ok(Some(list)) = transport.get(SESSIONS_KEY) {
                ids.extend(split_ids(&list));
            }
            report(transport, &ids, &msg);
            return Err(ConfigFailure(msg));
        }
    };
    crate::clock::stamp("fetched");
    // The host's clock is read with the config: step to it before the decode's time passes.
    crate::clock::apply_boot_keys(&raw, crate::clock::monotonic_now_ns());
    let decoded = guestinfo::decode(&raw).map_err(InvalidConfig::from);
    match decoded.and_then(|c| validate(&c).map(|()| c)) {
        Ok(c) => Ok((raw, c)),
        Err(e) => {
            let msg = clip_message(format!("invalid container config: {e}"));
            report_to_all_sessions(transport, &raw, &msg);
            Err(ConfigFailure(msg))
        }
    }
}

/// `msg` cut to [`MAX_STARTED`] bytes at a character boundary.
fn clip_message(mut msg: String) -> String {
    if msg.len() > MAX_STARTED {
        let mut end = MAX_STARTED - '…'.len_utf8();
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    msg
}

/// Boots and runs the container. Returns when the VM should power off.
pub fn run() -> anyhow::Result<()> {
    crate::clock::stamp("pid1");
    early::mount_kernel_filesystems()?;
    crate::services::protect_from_oom_killer();
    early::ensure_dev_nodes();
    let modules = early::load_modules(Path::new("/lib/modules"))?;
    crate::clock::stamp("early");
    let platform = platform::detect()?;
    crate::clock::stamp("platform");
    if let Some(f) = platform.debug_channel() {
        log::set_destination(f);
    }
    tracing::info!(
        modules,
        %platform,
        version = env!("CARGO_PKG_VERSION"),
        "tether started"
    );

    let mut backdoor = None;
    let transport: Box<dyn Transport> = match &platform {
        Platform::Vmware => {
            let b = Arc::new(
                guestinfo::transport::backdoor::Backdoor::open().context("VMware backdoor")?,
            );
            backdoor = Some(b.clone());
            Box::new(SharedBackdoor(b))
        }
        Platform::Qemu { guestinfo } => Box::new(
            guestinfo::transport::qemu::QemuClient::open(guestinfo)
                .with_context(|| format!("open guestinfo channel {}", guestinfo.display()))?,
        ),
    };
    // Writes to the host go out in order on a thread of their own, so no step below waits
    // for the host to store keys; the guard makes the last ones land before power-off,
    // however this function returns. They are held, and the thread not started, until the
    // entrypoint has started (see `runtime::STARTUP_GRACE`); anything that waits for the
    // writes, the guard included, lets them go.
    let writeback = WriteBack::held(Arc::from(transport));
    let _flush_at_exit = writeback.flush_on_drop();
    let transport: Box<dyn Transport> = Box::new(writeback.clone());
    let (raw, mut cfg) = load_config(&*transport)?;
    // Shared with the initial write-back below, which compares with it on its own thread.
    let raw = Arc::new(raw);
    if cfg.diagnostics.debug_level > 0 {
        log::set_level(tracing::Level::DEBUG);
    }
    crate::clock::stamp("config");
    if let Some(b) = &backdoor {
        // The toolbox authenticates the VCH's guest operations by user name: the container
        // ID, or the label of one of its volumes.
        let labels = cfg
            .mounts
            .values()
            .filter(|m| m.source.scheme == "label")
            .map(|m| m.source.path.clone());
        b.authorize_users(std::iter::once(cfg.common.id.clone()).chain(labels));
    }
    tracing::info!(id = %cfg.common.id, "config loaded");

    if let Err(e) = mount_root() {
        let msg = format!("container disk: {e:#}");
        report_to_all_sessions(&*transport, &raw, &msg);
        return Err(e);
    }
    crate::clock::stamp("disks");
    let hostname = etc::hostname_for(&cfg.common.id, &cfg.hostname, &cfg.domainname);
    if let Err(e) = etc::setup_names(Path::new("/.tether/etc"), &hostname, cfg.name()) {
        let msg = format!("hostname: {e}");
        report_to_all_sessions(&*transport, &raw, &msg);
        return Err(e.into());
    }
    let leases = match net::apply(&mut cfg, &hostname) {
        Ok(l) => l,
        Err(e) => {
            let msg = e.to_string();
            report_to_all_sessions(&*transport, &raw, &msg);
            return Err(e.into());
        }
    };
    crate::clock::stamp("network");
    // The initial write-back (W1). Encoding the whole config is work too, so the write-back
    // thread does it, from a copy, ahead of every later write, once the entrypoint's
    // start-up is over; the boot stamps it carries are those taken by then.
    let (mut w1, host) = (cfg.clone(), raw.clone());
    writeback.defer(move |transport| {
        w1.tether.boot_stamps = crate::clock::boot_stamps();
        write_initial(transport, &w1, &host);
    });

    // After the network: NFS volumes need it. Before the first launch: the entrypoint
    // expects its volumes.
    if let Err(e) = volumes::mount_all(&cfg.mounts) {
        let msg = e.to_string();
        report_to_all_sessions(&*transport, &raw, &msg);
        return Err(e.into());
    }

    if let Err(e) = crate::cgroup::setup() {
        tracing::warn!(error = %e, "the container's processes share the CPU with the tether one by one");
    }
    set_rlimits();
    ignore_unused_signals();
    // Tools in the VM look for the pid file; the entrypoint's start does not wait for it:
    // the write-back thread writes it once the start-up is over, after the W1 encode.
    writeback.defer(|_| write_pid_file());

    // No thread of tokio's blocking pool: blocking jobs run through `crate::blocking`
    // (tether/clippy.toml keeps `spawn_blocking` out).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    crate::clock::stamp("runtime");
    runtime.block_on(supervisor::run(cfg, writeback, platform, leases))?;
    Ok(())
}

/// The initial write-back (W1): the guest-writable keys of `cfg` whose values the host does
/// not hold already.
fn write_initial(transport: &dyn Transport, cfg: &ContainerConfig, host: &guestinfo::Map) {
    match guestinfo::guest_writeback(cfg) {
        // The original rewrote every key here; a value the host already holds changes
        // nothing it can observe, and each write is a round trip.
        Ok(kvs) => write_keys(
            transport,
            kvs.into_iter().filter(|(k, v)| host.get(k) != Some(v)),
            "initial write-back",
        ),
        Err(e) => tracing::error!(error = %e, "cannot encode the config write-back"),
    }
}

/// Makes PID 1 deaf to every signal it has no use for. The kernel drops a default-action
/// signal a container process sends to PID 1, yet under a storm of signals from the workload
/// one killed PID 1 ("Attempted to kill init! exitcode=0x32" on a runtime thread, the
/// `signal_storm` scenario; a lone signal 50 does not): most likely one that arrived while the
/// launch had every signal blocked around its vfork-style clone stayed pending and took its
/// default action. Ignored signals are never queued, blocked or not. Only signals
/// still at their default action are touched (the runtime's own handlers stay), SIGCHLD never
/// (ignoring it would let the kernel reap the reaper's children), nor what cannot be caught.
/// The launch resets every disposition to the default in the child, so workloads inherit none
/// of this.
pub fn ignore_unused_signals() {
    for signo in 1..=libc::SIGRTMAX() {
        if matches!(
            signo,
            libc::SIGKILL
                | libc::SIGSTOP
                | libc::SIGCHLD
                | libc::SIGCONT
                | libc::SIGWINCH
                | libc::SIGURG
        ) || (32..libc::SIGRTMIN()).contains(&signo)
        {
            // The C library's own signals (between 31 and SIGRTMIN) are its business.
            continue;
        }
        // SAFETY: a zeroed sigaction is a valid out-parameter; sigaction reads `ign` and
        // writes `old`, both valid locals, and SIG_IGN is a valid disposition for these.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signo, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut ign: libc::sigaction = std::mem::zeroed();
            ign.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(signo, &ign, std::ptr::null_mut());
        }
    }
}

/// Limits every process in the container inherits, as the original set them: many files,
/// unlimited core/memlock/nproc, and an unlimited stack *hard* limit only (an unlimited soft
/// stack switches the kernel to the legacy mmap layout).
fn set_rlimits() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let all = [
        (Resource::RLIMIT_NOFILE, 1_048_576, 1_048_576),
        (Resource::RLIMIT_CORE, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_NPROC, RLIM_INFINITY, RLIM_INFINITY),
    ];
    for (res, soft, hard) in all {
        if let Err(e) = setrlimit(res, soft, hard) {
            tracing::warn!(resource = ?res, error = %e, "setrlimit failed");
        }
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_STACK) {
        if let Err(e) = setrlimit(Resource::RLIMIT_STACK, soft, RLIM_INFINITY) {
            tracing::warn!(error = %e, "setrlimit stack failed");
        }
    }
}

/// `/.tether/run/tether.pid`, as the original wrote it (tools in the VM look for it).
fn write_pid_file() {
    let dir = Path::new("/.tether/run");
    if std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join("tether.pid"), b"1"))
        .is_err()
    {
        tracing::warn!("cannot write /.tether/run/tether.pid");
    }
}

/// The backdoor transport, shared so boot can still reach its toolbox settings.
#[derive(Debug)]
struct SharedBackdoor(Arc<guestinfo::transport::backdoor::Backdoor>);

impl Transport for SharedBackdoor {
    fn get(&self, key: &str) -> Result<Option<String>, guestinfo::transport::TransportError> {
        self.0.get(key)
    }
    fn set(&self, key: &str, value: &str) -> Result<(), guestinfo::transport::TransportError> {
        self.0.set(key, value)
    }
    fn get_all(&self) -> Result<guestinfo::Map, guestinfo::transport::TransportError> {
        self.0.get_all()
    }
    fn commands(&self) -> Option<std::sync::mpsc::Receiver<guestinfo::HostCommand>> {
        self.0.commands()
    }
}

/// Checks what the tether cannot run without.
fn validate(cfg: &ContainerConfig) -> Result<(), InvalidConfig> {
    if cfg.common.id.is_empty() {
        return Err(InvalidConfig::NoId);
    }
    let Some(primary) = cfg.sessions.get(&cfg.common.id) else {
        return Err(InvalidConfig::NoPrimary(cfg.common.id.clone()));
    };
    if primary.cmd.path.is_empty() {
        return Err(InvalidConfig::NoCommand(cfg.common.id.clone()));
    }
    Ok(())
}

/// Writes `msg` as the launch error of the sessions the raw config names, so the host sees
/// why nothing started even when the config could not be decoded.
fn report_to_all_sessions(transport: &dyn Transport, raw: &guestinfo::Map, msg: &str) {
    let value = |key: &str| {
        raw.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    // The container's own session first (the host reads that one), then the listed IDs
    // that have keys of their own, then the other IDs with keys, then the rest of the list.
    let prefix = format!("{SESSIONS_KEY}|");
    let mut with_keys: Vec<&str> = raw
        .keys()
        .filter_map(|k| {
            k.get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(&prefix))?;
            k.get(prefix.len()..)?.split('/').next()
        })
        .collect();
    with_keys.dedup();
    let lowered: std::collections::HashSet<String> =
        with_keys.iter().map(|k| k.to_ascii_lowercase()).collect();
    let listed = value(SESSIONS_KEY).map(split_ids).unwrap_or_default();
    let has_keys = |id: &str| lowered.contains(&id.to_ascii_lowercase());
    let mut ids: Vec<String> = value(ID_KEY).map(str::to_owned).into_iter().collect();
    ids.extend(listed.iter().filter(|id| has_keys(id)).cloned());
    ids.extend(
        with_keys
            .iter()
            .take(MAX_REPORTED)
            .map(|id| (*id).to_owned()),
    );
    ids.extend(listed);
    report(transport, &ids, msg);
}

/// The IDs of a session list value.
fn split_ids(list: &str) -> Vec<String> {
    list.split('|')
        .filter(|s| !s.is_empty())
        .take(MAX_REPORTED * 16)
        .map(str::to_owned)
        .collect()
}

/// Writes `msg` as the launch error of (at most [`MAX_REPORTED`] of) `ids`.
fn report(transport: &dyn Transport, ids: &[String], msg: &str) {
    tracing::error!("{msg}");
    let mut seen = std::collections::HashSet::new();
    let ids = ids
        .iter()
        .filter(|id| !id.is_empty() && seen.insert(id.to_ascii_lowercase()));
    // A session ID that would corrupt the key is not written to, nor one no container
    // has (IDs are 64 hex digits; the bound keeps a config's megabyte "ID" off the host).
    let status = crate::launch::START_FAILED.to_string();
    let pairs = ids
        .filter(|id| id.len() <= MAX_ID_LEN && !id.contains(['/', '.', '@', '|']))
        .take(MAX_REPORTED)
        .flat_map(|id| {
            [
                (format!("guestinfo.vice..sessions|{id}.started"), msg),
                (
                    format!("guestinfo.vice..sessions|{id}.status"),
                    status.as_str(),
                ),
            ]
        });
    write_keys(transport, pairs, "launch error write-back");
}

fn mount_root() -> anyhow::Result<()> {
    let dev = early::wait_for(
        &format!("disk labelled {}", disk::CONTAINERFS_LABEL),
        DISK_WAIT,
        || disk::find_by_label(disk::CONTAINERFS_LABEL),
    )?;
    disk::mount_ext4(&dev, Path::new(NEW_ROOT), MsFlags::MS_NOATIME)?;
    disk::switch_root(Path::new(NEW_ROOT))?;
    tracing::info!(device = %dev.display(), "container root mounted");
    Ok(())
}
