//! The tether's life: synchronous early boot, then a current-thread runtime that runs the
//! container's primary session until it ends, then the way out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use guestinfo::{ContainerConfig, Transport};
use nix::mount::MsFlags;

use crate::clock::boottime_us;
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

/// Boots and runs the container. Returns when the VM should power off.
pub fn run() -> anyhow::Result<()> {
    let mut stamps = std::collections::BTreeMap::new();
    stamps.insert("pid1".to_owned(), boottime_us());
    early::mount_kernel_filesystems()?;
    crate::services::protect_from_oom_killer();
    early::ensure_dev_nodes();
    let modules = early::load_modules(Path::new("/lib/modules"))?;
    let platform = platform::detect()?;
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
    // however this function returns.
    let writeback = WriteBack::start(Arc::from(transport));
    // Held until the entrypoint has started (see `runtime::STARTUP_GRACE`); anything that
    // waits for the writes, the guard included, releases them.
    writeback.hold();
    let _flush_at_exit = writeback.flush_on_drop();
    let transport: Box<dyn Transport> = Box::new(writeback.clone());
    let raw = transport.get_all().context("read config")?;
    crate::clock::apply_boot_keys(&raw, crate::clock::monotonic_now_ns());
    let decoded = guestinfo::decode(&raw).map_err(InvalidConfig::from);
    let mut cfg = match decoded.and_then(|c| validate(&c).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("invalid container config: {e}");
            report_to_all_sessions(&*transport, &raw, &msg);
            anyhow::bail!(msg);
        }
    };
    if cfg.diagnostics.debug_level > 0 {
        log::set_level(tracing::Level::DEBUG);
    }
    stamps.insert("config".to_owned(), boottime_us());
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
    stamps.insert("disks".to_owned(), boottime_us());
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
    stamps.insert("network".to_owned(), boottime_us());
    cfg.tether.boot_stamps = stamps;
    // The initial write-back (W1). Encoding the whole config is work too, so the write-back
    // thread does it, from a copy, ahead of every later write, while the launch goes on.
    let (w1, host) = (cfg.clone(), raw.clone());
    writeback.defer(move |transport| match guestinfo::guest_writeback(&w1) {
        // The original rewrote every key here; a value the host already holds changes
        // nothing it can observe, and each write is a round trip.
        Ok(kvs) => write_keys(
            transport,
            kvs.into_iter().filter(|(k, v)| host.get(k) != Some(v)),
            "initial write-back",
        ),
        Err(e) => tracing::error!(error = %e, "cannot encode the config write-back"),
    });

    // After the network: NFS volumes need it. Before the first launch: the entrypoint
    // expects its volumes.
    if let Err(e) = volumes::mount_all(&cfg.mounts) {
        let msg = e.to_string();
        report_to_all_sessions(&*transport, &raw, &msg);
        return Err(e.into());
    }

    set_rlimits();
    write_pid_file();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Blocking threads run the tether's deferrable work (parsing the host key).
        .on_thread_start(crate::writeback::background_priority)
        .build()
        .context("start runtime")?;
    runtime.block_on(supervisor::run(cfg, writeback, platform, leases))?;
    Ok(())
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

/// Writes `msg` as the launch error of every session the raw config names, so the host sees
/// why nothing started even when the config could not be decoded.
fn report_to_all_sessions(transport: &dyn Transport, raw: &guestinfo::Map, msg: &str) {
    tracing::error!("{msg}");
    let ids = raw
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("guestinfo.vice./sessions"))
        .map(|(_, v)| {
            v.split('|')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    // A session ID that would corrupt the key is not written to.
    let status = crate::launch::START_FAILED.to_string();
    let pairs = ids
        .iter()
        .filter(|id| !id.contains(['/', '.', '@']))
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
