//! Files of a stopped container: its VM booted for maintenance, with the primary process
//! held (it never runs), its disk and volumes mounted by the tether as for a start, and the
//! same archive channels as a running container's. Nothing of the container's state changes:
//! the VM runs from a folder of its own (`<vm>/maintenance/`) with a copy of the config, and
//! the container stays stopped.
//!
//! Why a VM rather than `debugfs` on the host: a container's root disk is a qcow2 overlay
//! over its image's chain of disks, which debugfs cannot read (it would first need a raw
//! copy of the whole chain, `qemu-img convert`, and a new overlay written back after a
//! change; `qemu-nbd` needs root and the nbd module); its volumes are more disks whose
//! contents appear at paths inside the root, or NFS exports; and docker's rules for `cp`
//! (symlinks, owners, `DIR/.`, escapes) would have to be written a second time against
//! debugfs's view of ext4. The VM costs a boot (about 3 s per command under TCG) and gives the same
//! result as for a running container, from one implementation in the tether. QEMU's image
//! locks keep a `start` from booting the same disk meanwhile.

use std::path::PathBuf;
use std::time::Duration;

use guestinfo::store::FileStore;
use guestinfo::transport::qemu::HostServer;
use guestinfo::HostCommand;
use sshproto::Connection;

use super::{Engine, EngineError};
use crate::state::Meta;
use crate::vm;

/// How long the maintenance VM may take to boot and connect its back-channel.
const CONNECT_WAIT: Duration = Duration::from_secs(90);
/// The maintenance VM's hard limit.
const HARD_LIMIT_SECS: u64 = 600;
/// How long a halted maintenance VM gets to power off.
const HALT_WAIT: Duration = Duration::from_secs(30);

/// A stopped container's VM running for maintenance.
#[derive(Debug)]
pub(super) struct Maintenance {
    pub(super) conn: Connection,
    guestinfo: HostServer,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<vm::RunOutcome, vm::VmError>>>>,
    dir: PathBuf,
    /// `<vm>/maintenance.lock`, held while the VM runs: a folder left by a process that
    /// died is known to be stale.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Maintenance {
    /// Halts the VM and waits for it to power off (once; later calls wait for the first).
    pub(super) async fn end(&self) {
        let mut task = self.task.lock().await;
        if let Some(t) = task.take() {
            let _ = self.guestinfo.push(HostCommand::Halt);
            if tokio::time::timeout(HALT_WAIT, t).await.is_err() {
                tracing::warn!(dir = %self.dir.display(), "the maintenance VM did not power off");
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Engine {
    /// Boots a stopped container's VM for maintenance and connects to its tether.
    pub(super) async fn maintenance(&self, meta: &Meta) -> Result<Maintenance, EngineError> {
        let vm_dir = self.state().vm_dir(&meta.id);
        let dir = vm_dir.join("maintenance");
        let lock = match crate::state::flock(&vm_dir.join("maintenance.lock"), false) {
            Ok(l) => l,
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                return Err(EngineError::Conflict(format!(
                    "container {} is being copied to or from; try again",
                    meta.name
                )))
            }
            Err(source) => {
                return Err(EngineError::Io {
                    what: "lock for the copy".into(),
                    source,
                })
            }
        };
        // Left by a process that ended without cleaning up (its VM died with it).
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let prepared = self.maintenance_config(meta, &vm_dir, &dir);
        if let Err(e) = prepared {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let mut m = meta.clone();
        // No networks (nothing runs that would use them), a bound on its life.
        m.nics.clear();
        m.timeout_secs = HARD_LIMIT_SECS;
        let created = vm::Created {
            meta: m,
            dir: dir.clone(),
        };
        let (live_tx, live_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(vm::keep_for_maintenance(
            self.state().clone(),
            created,
            live_tx,
        ));
        let cleanup = |dir: &PathBuf| {
            let _ = std::fs::remove_dir_all(dir);
        };
        let live = match live_rx.await {
            Ok(l) => l,
            Err(_) => {
                let why = match task.await {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the VM did not start".into(),
                };
                cleanup(&dir);
                return Err(EngineError::Backchannel(format!(
                    "cannot boot container {} for the copy: {why}",
                    meta.name
                )));
            }
        };
        let Some(conn) = live.portlayer.connection(CONNECT_WAIT).await else {
            let _ = live.guestinfo.push(HostCommand::Halt);
            let _ = tokio::time::timeout(HALT_WAIT, task).await;
            cleanup(&dir);
            return Err(EngineError::Backchannel(format!(
                "container {}'s VM booted for the copy did not connect its back-channel",
                meta.name
            )));
        };
        Ok(Maintenance {
            conn,
            guestinfo: live.guestinfo,
            task: tokio::sync::Mutex::new(Some(task)),
            dir,
            _lock: lock,
        })
    }

    /// The container's config for a maintenance boot: the primary session held by
    /// `runblock` (never unblocked), no execs, no networks.
    fn maintenance_config(
        &self,
        meta: &Meta,
        vm_dir: &std::path::Path,
        dir: &std::path::Path,
    ) -> Result<(), EngineError> {
        let config_err = |e: String| EngineError::Vm(vm::VmError::Config(e));
        let mut cfg = vm::load_config(vm_dir)?;
        let Some(primary) = cfg.sessions.get_mut(&meta.id) else {
            return Err(config_err(format!(
                "container {} has no primary session",
                meta.name
            )));
        };
        primary.run_block = true;
        primary.attach = true;
        primary.restart = false;
        primary.started.clear();
        primary.detail.stop_time = 0;
        cfg.execs.clear();
        cfg.networks.clear();
        let store =
            FileStore::open(dir.join("config.vmx")).map_err(|e| config_err(e.to_string()))?;
        guestinfo::store::write_config(&store, &cfg).map_err(|e| config_err(e.to_string()))
    }
}
