//! Volumes and networks: the stores' operations with the checks that need the containers
//! (what is in use by whom).

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::events::{Event, EventKind};
use super::{Engine, EngineError};
use crate::network::{CreateNetwork, Network, NetworkError, NetworkStore};
use crate::state::Meta;
use crate::volume::{self, CreateVolume, Volume, VolumeError, VolumeStore};

/// A volume and who uses it.
#[derive(Debug, Clone)]
pub struct VolumeView {
    pub volume: Volume,
    /// The disk image, or `HOST:PATH` of an NFS export.
    pub mountpoint: String,
    /// Containers that refer to it: (name, running).
    pub used_by: Vec<(String, bool)>,
}

/// A network and who is on it.
#[derive(Debug, Clone)]
pub struct NetworkView {
    pub network: Network,
    /// A stable 64-hex-digit ID (docker addresses networks by ID too).
    pub id: String,
    /// Containers with a NIC on it: (container ID, name, running).
    pub containers: Vec<(String, String, bool)>,
    /// Their NICs on it, in the same order.
    pub endpoints: Vec<crate::network::AttachedNic>,
}

/// A network's ID: derived from its name, so that it is stable without being stored.
pub fn network_id(name: &str) -> String {
    let digest = Sha256::digest(format!("tether-vch network {name}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    pub(super) fn running(meta: &Meta) -> bool {
        super::containers::qemu_alive(meta) || super::containers::keeper_alive(meta)
    }

    fn volume_store(&self) -> VolumeStore {
        VolumeStore::new(self.state().root())
    }

    fn network_store(&self) -> NetworkStore {
        NetworkStore::new(self.state().root())
    }

    fn volume_view(&self, volume: Volume, metas: &[Meta]) -> VolumeView {
        let mountpoint = match &volume.backing {
            volume::Backing::Disk { .. } => self
                .volume_store()
                .disk_path(&volume.name)
                .display()
                .to_string(),
            volume::Backing::Nfs { host, path, .. } => format!("{host}:{path}"),
        };
        let used_by = metas
            .iter()
            .filter(|m| m.volumes.iter().any(|v| v.volume.name == volume.name))
            .map(|m| (m.name.clone(), Self::running(m)))
            .collect();
        VolumeView {
            volume,
            mountpoint,
            used_by,
        }
    }

    /// Creates a volume.
    pub fn volume_create(&self, req: &CreateVolume) -> Result<VolumeView, EngineError> {
        let v = {
            let _lock = self.state().lock()?;
            self.volume_store().create(req)?
        };
        self.publish(Event::new(EventKind::Volume, "create", &v.name).with("driver", v.driver()));
        Ok(self.volume_view(v, &[]))
    }

    /// All volumes.
    pub fn volumes(&self) -> Vec<VolumeView> {
        let metas = self.state().list();
        self.volume_store()
            .list()
            .into_iter()
            .map(|v| self.volume_view(v, &metas))
            .collect()
    }

    /// One volume.
    pub fn volume(&self, name: &str) -> Result<VolumeView, EngineError> {
        let v = self.volume_store().get(name)?;
        Ok(self.volume_view(v, &self.state().list()))
    }

    /// Removes a volume: never one a running container uses; one a stopped container
    /// refers to only with `force`.
    pub fn volume_remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let _lock = self.state().lock()?;
        let view = self.volume(name)?;
        let names = |running: bool| {
            view.used_by
                .iter()
                .filter(|(_, r)| !running || *r)
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if view.used_by.iter().any(|(_, r)| *r) {
            return Err(VolumeError::InUse {
                name: name.into(),
                containers: format!("{} (running)", names(true)),
            }
            .into());
        }
        if !force && !view.used_by.is_empty() {
            return Err(VolumeError::InUse {
                name: name.into(),
                containers: format!("{} (stopped; rm -f removes it anyway)", names(false)),
            }
            .into());
        }
        self.volume_store().remove(name)?;
        self.publish(Event::new(EventKind::Volume, "destroy", name));
        Ok(())
    }

    /// Removes every volume no container refers to; returns their names and the bytes
    /// freed.
    pub fn volume_prune(&self) -> Result<(Vec<String>, u64), EngineError> {
        let mut removed = Vec::new();
        let mut bytes = 0;
        for v in self.volumes() {
            if !v.used_by.is_empty() {
                continue;
            }
            let used = match v.volume.backing {
                volume::Backing::Disk { .. } => allocated_bytes(&PathBuf::from(&v.mountpoint)),
                volume::Backing::Nfs { .. } => 0,
            };
            match self.volume_remove(&v.volume.name, false) {
                Ok(()) => {
                    bytes += used;
                    removed.push(v.volume.name);
                }
                // Taken meanwhile: not unused after all.
                Err(e) => tracing::debug!(volume = %v.volume.name, error = %e, "prune"),
            }
        }
        Ok((removed, bytes))
    }

    fn network_view(&self, network: Network, metas: &[Meta]) -> NetworkView {
        let on: Vec<(&Meta, &crate::network::AttachedNic)> = metas
            .iter()
            .filter_map(|m| Some((m, m.nics.iter().find(|n| n.network.name == network.name)?)))
            .collect();
        NetworkView {
            id: network_id(&network.name),
            containers: on
                .iter()
                .map(|(m, _)| (m.id.clone(), m.name.clone(), Self::running(m)))
                .collect(),
            endpoints: on.iter().map(|(_, n)| (*n).clone()).collect(),
            network,
        }
    }

    /// Creates a network.
    pub fn network_create(&self, req: &CreateNetwork) -> Result<NetworkView, EngineError> {
        let n = {
            let _lock = self.state().lock()?;
            self.network_store().create(req)?
        };
        let view = self.network_view(n, &[]);
        self.publish(
            Event::new(EventKind::Network, "create", &view.id)
                .with("name", view.network.name.clone())
                .with("type", view.network.kind.as_str()),
        );
        Ok(view)
    }

    /// All networks (`bridge` first).
    pub fn networks(&self) -> Vec<NetworkView> {
        let metas = self.state().list();
        self.network_store()
            .list()
            .into_iter()
            .map(|n| self.network_view(n, &metas))
            .collect()
    }

    /// A network by name, ID or unique ID prefix.
    pub fn network(&self, name: &str) -> Result<NetworkView, EngineError> {
        let all = self.networks();
        if let Some(v) = all.iter().find(|v| v.network.name == name || v.id == name) {
            return Ok(v.clone());
        }
        let mut prefixed = all
            .iter()
            .filter(|v| !name.is_empty() && v.id.starts_with(name));
        match (prefixed.next(), prefixed.next()) {
            (Some(v), None) => Ok(v.clone()),
            _ => Err(NetworkError::NoSuch(name.into()).into()),
        }
    }

    /// Removes a network no running container is on.
    pub fn network_remove(&self, name: &str) -> Result<(), EngineError> {
        let _lock = self.state().lock()?;
        let view = self.network(name)?;
        if view.network.is_builtin() {
            return Err(NetworkError::Builtin(view.network.name).into());
        }
        let running: Vec<&str> = view
            .containers
            .iter()
            .filter(|(_, _, r)| *r)
            .map(|(_, n, _)| n.as_str())
            .collect();
        if !running.is_empty() {
            return Err(NetworkError::InUse {
                name: view.network.name.clone(),
                containers: running.join(", "),
            }
            .into());
        }
        self.network_store().remove(&view.network.name)?;
        self.publish(
            Event::new(EventKind::Network, "destroy", &view.id)
                .with("name", view.network.name.clone()),
        );
        Ok(())
    }

    /// Removes every user-defined network no container is on; returns their names.
    pub fn network_prune(&self) -> Result<Vec<String>, EngineError> {
        let mut removed = Vec::new();
        for v in self.networks() {
            if v.network.is_builtin() || !v.containers.is_empty() {
                continue;
            }
            if self.network_remove(&v.network.name).is_ok() {
                removed.push(v.network.name);
            }
        }
        Ok(removed)
    }
}

/// Bytes a sparse file takes on disk.
fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}
