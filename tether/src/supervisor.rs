//! Runs the container once boot is done: starts the reaper, the output channel, the
//! back-channel server and lease renewal around the [`Tether`], passes it the host's
//! commands until the primary session ends (or the host halts the VM), then stops every
//! process and flushes the output channel.
//!
//! It sits above the runtime and the back-channel, which know nothing of each other's
//! start: the runtime keeps the state, [`crate::attach`] serves clients from it.

use std::time::Duration;

use guestinfo::{ContainerConfig, HostCommand, Transport};
use tokio::sync::mpsc;

use crate::platform::Platform;
use crate::reaper::Reaper;
use crate::runtime::{Tether, STARTUP_GRACE};
use crate::writeback::WriteBack;
use crate::{attach, net, output, shutdown};

/// How long the sessions get to write their last output records once every process is gone.
const SESSIONS_DONE_WAIT: Duration = Duration::from_secs(3);
/// How long the output channel gets to drain before the VM powers off.
const OUTPUT_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Why the container could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// the reaper thread could not start
    #[error("start reaper: {0}")]
    Reaper(#[source] std::io::Error),
}

/// Runs the container until its primary session ends (or the host halts it), then stops
/// every process and flushes the output channel.
pub async fn run(
    cfg: ContainerConfig,
    transport: WriteBack,
    platform: Platform,
    leases: net::Leases,
) -> Result<(), RunError> {
    // Its thread starts with the rest after the start-up (below); the entrypoint's launch
    // registers with it before.
    let reaper = Reaper::prepare().map_err(RunError::Reaper)?;
    let format = if cfg.tether.log_format == "vic" {
        output::Format::Vic {
            primary: cfg.common.id.clone(),
        }
    } else {
        output::Format::Tether
    };
    let sink = output::start(platform.output_channel(), format);
    let panic_after = cfg.tether.panic_after_ms;
    let transport_clock = transport.clone();
    let t = Tether::new(cfg, transport.clone(), reaper.clone(), sink, leases.clone());
    t.reconcile();
    let timer = t.clone();
    tokio::spawn(async move {
        tokio::time::sleep(STARTUP_GRACE).await;
        timer.end_startup();
    });
    if panic_after > 0 {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(panic_after.unsigned_abs())).await;
            // The panic hook, not this task, decides what happens next: that is under test.
            panic!("test hook tether/panicafter fired after {panic_after} ms");
        });
    }

    // What only a running container needs waits for the entrypoint's start-up: under TCG
    // the code it runs for the first time (the signal driver, the reaper's and other
    // threads, the tasks' first polls) stood between the launch and the pumps' first read.
    // An entrypoint that exits in silence ends the start-up when its output closes; its
    // exit is collected once the reaper runs. The host learns that the container started
    // only from the write-backs let go below, after all of it is in place: a reload
    // (SIGHUP, ignored until then) follows an exec, which follows that. A host command sent
    // sooner waits in the transport's queue.
    let mut stop = t.shutdown_signal();
    tokio::select! {
        () = t.startup_ending() => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    reaper.run().map_err(RunError::Reaper)?;
    t.sink().start_writer();
    let mut commands = bridge_commands(&transport);
    // The container runs on without it: reloads also come as host commands.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::error!(error = %e, "SIGHUP cannot be caught: reloads come only as host commands"))
        .ok();
    tokio::spawn(attach::serve(t.clone(), platform.attach_channel()));
    tokio::spawn(crate::clock::keep_in_step(transport_clock));
    let renewer = t.clone();
    tokio::spawn(net::maintain(leases.clone(), move |r| {
        renewer.lease_renewed(&r)
    }));
    t.release_writes();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(cmd) = commands.recv() => t.host_command(cmd),
            // The hypervisor's reload path in the original (the toolbox signals PID 1).
            Some(()) = hangup(&mut hup) => t.reload(),
        }
    }

    tracing::info!("stopping remaining processes");
    shutdown::terminate_all(&reaper, shutdown::TERM_GRACE).await;
    t.sessions_done(SESSIONS_DONE_WAIT).await;
    if !t.sink().flush(OUTPUT_FLUSH_WAIT) {
        tracing::warn!("output channel did not drain in time");
    }
    if !leases.is_empty() {
        if let Err(e) =
            crate::blocking::run("dhcp-release", move || net::release_all(&leases)).await
        {
            tracing::warn!(error = %e, "DHCP leases not released");
        }
    }
    Ok(())
}

/// The next SIGHUP; never, without a handler.
async fn hangup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
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
