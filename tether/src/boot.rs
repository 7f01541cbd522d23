//! The tether's life: synchronous early boot, then a current-thread runtime that runs the
//! container's primary session until it ends, then the way out.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use guestinfo::{ContainerConfig, HostCommand, Transport};
use nix::mount::MsFlags;
use tokio::sync::mpsc;

use crate::platform::Platform;
use crate::reaper::Reaper;
use crate::{disk, early, etc, log, output, platform, session, shutdown, signals};

/// Where the container disk is mounted before it becomes `/`.
const NEW_ROOT: &str = "/root";
/// How long to wait for the container disk to show up.
const DISK_WAIT: Duration = Duration::from_secs(10);
/// How long a process may hold the output pipes after the session process exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long a halted session gets between its stop signal and SIGKILL.
const HALT_GRACE: Duration = Duration::from_secs(10);

/// Boots and runs the container. Returns when the VM should power off.
pub fn run() -> anyhow::Result<()> {
    early::mount_kernel_filesystems()?;
    early::ensure_dev_nodes();
    let modules = early::load_modules(Path::new("/lib/modules"))?;
    let platform = platform::detect()?;
    if let Some(f) = platform.debug_channel() {
        log::set_destination(f);
    }
    tracing::info!(modules, ?platform, version = env!("CARGO_PKG_VERSION"), "tether started");

    let transport: Box<dyn Transport> = match &platform {
        Platform::Vmware => Box::new(guestinfo::transport::backdoor::Backdoor::open().context("VMware backdoor")?),
        Platform::Qemu { guestinfo } => Box::new(
            guestinfo::transport::qemu::QemuClient::open(guestinfo)
                .with_context(|| format!("open guestinfo channel {}", guestinfo.display()))?,
        ),
    };
    let raw = transport.get_all().context("read config")?;
    let cfg = match guestinfo::decode(&raw).map_err(|e| e.to_string()).and_then(|c| validate(&c).map(|()| c)) {
        Ok(c) => c,
        Err(msg) => {
            let msg = format!("invalid container config: {msg}");
            report_to_all_sessions(&*transport, &raw, &msg);
            anyhow::bail!(msg);
        }
    };
    if cfg.diagnostics.debug_level > 0 {
        log::set_level(tracing::Level::DEBUG);
    }
    tracing::info!(id = %cfg.common.id, "config loaded");

    if let Err(e) = mount_root() {
        let msg = format!("container disk: {e:#}");
        report_to_all_sessions(&*transport, &raw, &msg);
        return Err(e);
    }
    let hostname = etc::hostname_for(&cfg.common.id, &cfg.hostname, &cfg.domainname);
    if let Err(e) = etc::setup_names(Path::new("/.tether/etc"), &hostname, &cfg.common.name) {
        let msg = format!("hostname: {e}");
        report_to_all_sessions(&*transport, &raw, &msg);
        return Err(e.into());
    }
    match guestinfo::guest_writeback(&cfg) {
        Ok(kvs) => {
            for (k, v) in kvs {
                if let Err(e) = transport.set(&k, &v) {
                    tracing::warn!(key = %k, error = %e, "initial write-back failed");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode the config write-back"),
    }

    set_rlimits();
    write_pid_file();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start runtime")?;
    runtime.block_on(run_container(cfg, transport, platform))
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
    if std::fs::create_dir_all(dir).and_then(|()| std::fs::write(dir.join("tether.pid"), b"1")).is_err() {
        tracing::warn!("cannot write /.tether/run/tether.pid");
    }
}

/// Checks what the tether cannot run without, naming the key at fault.
fn validate(cfg: &ContainerConfig) -> Result<(), String> {
    if cfg.common.id.is_empty() {
        return Err("no container ID (guestinfo.vice./common/id)".into());
    }
    let Some(primary) = cfg.sessions.get(&cfg.common.id) else {
        return Err(format!("no session for the container ID (guestinfo.vice./sessions|{})", cfg.common.id));
    };
    if primary.cmd.path.is_empty() {
        return Err(format!("no command (guestinfo.vice./sessions|{}/cmd/Path)", cfg.common.id));
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
        .map(|(_, v)| v.split('|').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    for id in ids {
        // A session ID that would corrupt the key is not written to.
        if id.contains(['/', '.', '@']) {
            continue;
        }
        let _ = transport.set(&format!("guestinfo.vice..sessions|{id}.started"), msg);
        let _ = transport.set(&format!("guestinfo.vice..sessions|{id}.status"), "126");
    }
}

fn mount_root() -> anyhow::Result<()> {
    let dev = early::wait_for(&format!("disk labelled {}", disk::CONTAINERFS_LABEL), DISK_WAIT, || {
        disk::find_by_label(disk::CONTAINERFS_LABEL)
    })?;
    disk::mount_ext4(&dev, Path::new(NEW_ROOT), MsFlags::MS_NOATIME)?;
    disk::switch_root(Path::new(NEW_ROOT))?;
    tracing::info!(device = %dev.display(), "container root mounted");
    Ok(())
}

/// Forwards host commands from the transport's thread into the runtime.
fn bridge_commands(transport: &dyn Transport) -> mpsc::Receiver<HostCommand> {
    let (tx, rx) = mpsc::channel(16);
    if let Some(commands) = transport.commands() {
        let spawned = std::thread::Builder::new().name("host-commands".into()).spawn(move || {
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

async fn run_container(mut cfg: ContainerConfig, transport: Box<dyn Transport>, platform: Platform) -> anyhow::Result<()> {
    let reaper = Reaper::start().context("start reaper")?;
    let (sink, writer) = output::start(platform.output_channel(), output::Format::Tether);
    let mut commands = bridge_commands(&*transport);
    let id = cfg.common.id.clone();
    let result = run_primary(&mut cfg, &*transport, &reaper, &sink, &mut commands).await;

    tracing::info!("stopping remaining processes");
    shutdown::terminate_all(&reaper, shutdown::TERM_GRACE).await;
    drop(sink);
    // Pumps of killed processes end now; give their last records to the writer.
    tokio::time::sleep(Duration::from_millis(10)).await;
    if !writer.flush(Duration::from_secs(5)) {
        tracing::warn!("output channel did not drain in time");
    }
    tracing::info!(session = %id, "container finished");
    result
}

async fn run_primary(
    cfg: &mut ContainerConfig,
    transport: &dyn Transport,
    reaper: &Reaper,
    sink: &output::OutputSink,
    commands: &mut mpsc::Receiver<HostCommand>,
) -> anyhow::Result<()> {
    let id = cfg.common.id.clone();
    let Some(scfg) = cfg.sessions.get(&id).cloned() else { anyhow::bail!("primary session vanished") };
    let launched = session::launch(&id, &scfg, reaper, sink);
    let now = session::now_secs();
    let mut running = match launched {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(session = %id, error = %e, "launch failed");
            if let Some(s) = cfg.sessions.get_mut(&id) {
                s.started = e.to_string();
                s.exit_status = e.exit_status();
                s.detail.stop_time = now;
                s.run_block = false;
            }
            session::write_back(transport, cfg, &id);
            return Ok(());
        }
    };
    tracing::info!(session = %id, pid = running.pid.as_raw(), "session started");
    if let Some(s) = cfg.sessions.get_mut(&id) {
        s.started = "true".into();
        s.detail.start_time = now;
        s.detail.stop_time = 0;
        s.exit_status = 0;
        s.run_block = false;
    }
    session::write_back(transport, cfg, &id);

    let code = loop {
        tokio::select! {
            code = &mut running.exit => break code.unwrap_or(255),
            Some(cmd) = commands.recv() => handle_command(cmd, cfg, &id, running.pid, transport).await,
        }
    };
    if !session::drain(&mut running.pumps, DRAIN_AFTER_EXIT).await {
        tracing::info!(session = %id, "descendants still hold the output after exit; continuing");
    }
    tracing::info!(session = %id, code, "session exited");
    if let Some(s) = cfg.sessions.get_mut(&id) {
        s.exit_status = code;
        s.detail.stop_time = session::now_secs();
    }
    session::write_back(transport, cfg, &id);
    Ok(())
}

async fn handle_command(cmd: HostCommand, cfg: &mut ContainerConfig, id: &str, pid: nix::unistd::Pid, transport: &dyn Transport) {
    tracing::info!(?cmd, "host command");
    let signal = |s: &str, group: bool| match signals::parse(s) {
        Ok(n) => {
            let target = if group { -pid.as_raw() } else { pid.as_raw() };
            if let Err(e) = signals::send(target, n) {
                tracing::error!(error = %e, "failed to signal {id}");
            }
        }
        Err(e) => tracing::error!(error = %e, "kill"),
    };
    match cmd {
        HostCommand::Kill(s) => signal(&s, false),
        HostCommand::GroupKill(s) => signal(&s, true),
        HostCommand::Halt => {
            let stop = cfg.sessions.get(id).map(|s| s.stop_signal.clone()).filter(|s| !s.is_empty()).unwrap_or_else(|| "TERM".into());
            signal(&stop, false);
            let pid_raw = pid.as_raw();
            // Escalate only if the process is still there after the grace period; the main
            // loop sees the exit as soon as it happens, so a prompt exit costs no waiting.
            tokio::spawn(async move {
                tokio::time::sleep(HALT_GRACE).await;
                let _ = signals::send(pid_raw, libc::SIGKILL);
            });
        }
        HostCommand::Reload => match transport.get_all().map_err(|e| e.to_string()).and_then(|m| guestinfo::decode_into(&m, cfg).map_err(|e| e.to_string())) {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => tracing::error!(error = %e, "reload failed"),
        },
    }
}
