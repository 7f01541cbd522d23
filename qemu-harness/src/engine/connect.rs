//! Connecting a container to a network and disconnecting it (`network connect` /
//! `disconnect`): a stopped or created container gets (or loses) the NIC in its metadata
//! and config, for its next boot; a running one also has it hot-added or hot-removed by its
//! keeper ([`crate::hotplug`]) and the tether reloads its networks.

use std::net::Ipv4Addr;
use std::time::Duration;

use guestinfo::store::FileStore;

use super::containers::qemu_alive;
use super::events::{Event, EventKind};
use super::{Engine, EngineError};
use crate::control;
use crate::hotplug::Change;
use crate::network::{self, AttachedNic, NetworkError, NetworkStore};
use crate::state::Meta;

/// How long `connect` waits for the tether to report the new address of a running
/// container.
const ADDRESS_WAIT: Duration = Duration::from_secs(60);

/// What `network connect` asks for besides the network and the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// `--alias`: more names on this network.
    pub aliases: Vec<String>,
    /// `--ip`: the address on this network.
    pub ip: Option<Ipv4Addr>,
}

impl Engine {
    /// Connects a container to a network.
    pub async fn network_connect(
        &self,
        network: &str,
        container: &str,
        opts: ConnectOptions,
    ) -> Result<(), EngineError> {
        let view = self.network(network)?;
        let name = view.network.name.clone();
        let store = NetworkStore::new(self.state().root());
        let (meta, nic) = {
            let _lock = self.state().lock()?;
            let mut meta = self.resolve(container)?;
            if meta.nics.iter().any(|n| n.network.name == name) {
                return Err(EngineError::Conflict(format!(
                    "endpoint with name {} already exists in network {name}",
                    meta.name
                )));
            }
            if meta.nics.is_empty() && meta.settings.network_mode == network::NONE {
                return Err(EngineError::BadRequest(
                    "container cannot be connected to multiple networks with one of the networks in private (none) mode".into(),
                ));
            }
            if meta.nics.len() >= network::MAX_NICS {
                return Err(NetworkError::TooMany.into());
            }
            let mut net = store.get(&name)?;
            network::check_aliases(&net, &opts.aliases)?;
            // The slot: the lowest one free (a running VM has root ports for its NICs and
            // the first free slots after them).
            let (index, slot) = (0..network::MAX_NICS)
                .filter_map(|i| Some((i, network::nic_slot(i)?)))
                .find(|(_, s)| !meta.nics.iter().any(|n| n.slot == *s))
                .ok_or(NetworkError::TooMany)?;
            let state = self.state();
            let address = crate::ipam::claim(
                state.root(),
                &net.ipam_pool(),
                &meta.id,
                opts.ip,
                &|owner, net, ip| state.holds_address(owner, net, ip),
            )
            .map_err(NetworkError::from)?;
            if !meta.settings.dns.is_empty() {
                net.dns = meta.settings.dns.clone();
            }
            let nic = AttachedNic {
                network: net,
                slot,
                model: meta.nics.first().map(|n| n.model).unwrap_or_default(),
                mac: network::mac_for(&meta.id, index),
                ip: opts.ip,
                address: Some(address),
                aliases: opts.aliases.clone(),
                ports: Vec::new(),
            };
            meta.nics.push(nic.clone());
            meta.nics.sort_by_key(|n| n.slot);
            if !qemu_alive(&meta) {
                // For the next boot.
                if let Err(e) = self.rewrite_networks(&meta) {
                    crate::ipam::release(self.state().root(), &name, address, &meta.id);
                    return Err(e);
                }
                self.state().save(&meta)?;
                drop(_lock);
                self.publish_connect("connect", &view.id, &name, &meta);
                return Ok(());
            }
            (meta, nic)
        };
        // Running: the keeper adds the NIC; the metadata changes once it is there.
        let change = Change::Connect {
            entries: crate::hotplug::entries(&meta.nics, Some(&name))
                .map_err(EngineError::BadRequest)?,
            nic: nic.clone(),
        };
        let payload =
            serde_json::to_vec(&change).map_err(|e| EngineError::BadRequest(e.to_string()))?;
        if let Err(e) = self.control(&meta, control::REQ_NETWORK, &payload).await {
            if let Some(ip) = nic.address {
                crate::ipam::release(self.state().root(), &name, ip, &meta.id);
            }
            return Err(match e {
                EngineError::Backchannel(m) => EngineError::Conflict(m),
                other => other,
            });
        }
        {
            let _lock = self.state().lock()?;
            let mut now = self.state().meta(&meta.id)?;
            now.nics.retain(|n| n.network.name != name);
            now.nics.push(nic);
            now.nics.sort_by_key(|n| n.slot);
            self.state().save(&now)?;
        }
        self.wait_for_address(&meta, &name).await;
        self.publish_connect("connect", &view.id, &name, &meta);
        Ok(())
    }

    /// Disconnects a container from a network.
    pub async fn network_disconnect(
        &self,
        network: &str,
        container: &str,
    ) -> Result<(), EngineError> {
        let view = self.network(network)?;
        let name = view.network.name.clone();
        let meta = self.resolve(container)?;
        let Some(nic) = meta.nics.iter().find(|n| n.network.name == name).cloned() else {
            return Err(EngineError::Conflict(format!(
                "container {} is not connected to network {name}",
                meta.id
            )));
        };
        let mut after = meta.clone();
        after.nics.retain(|n| n.network.name != name);
        if qemu_alive(&meta) {
            let change = Change::Disconnect {
                network: name.clone(),
                slot: nic.slot,
                entries: crate::hotplug::entries(&after.nics, None)
                    .map_err(EngineError::BadRequest)?,
            };
            let payload =
                serde_json::to_vec(&change).map_err(|e| EngineError::BadRequest(e.to_string()))?;
            self.control(&meta, control::REQ_NETWORK, &payload)
                .await
                .map_err(|e| match e {
                    EngineError::Backchannel(m) => EngineError::Conflict(m),
                    other => other,
                })?;
        }
        {
            let _lock = self.state().lock()?;
            let mut now = self.state().meta(&meta.id)?;
            now.nics.retain(|n| n.network.name != name);
            if !qemu_alive(&now) {
                self.rewrite_networks(&now)?;
            }
            self.state().save(&now)?;
        }
        if let Some(ip) = nic.address {
            crate::ipam::release(self.state().root(), &name, ip, &meta.id);
        }
        self.publish_connect("disconnect", &view.id, &name, &meta);
        Ok(())
    }

    fn publish_connect(&self, action: &str, network_id: &str, name: &str, meta: &Meta) {
        self.publish(
            Event::new(EventKind::Network, action, network_id)
                .with("name", name.to_owned())
                .with("type", "bridge")
                .with("container", meta.id.clone()),
        );
    }

    /// Writes a stopped container's network endpoints anew from its NICs (the first is the
    /// default network), keeping the rest of its config.
    fn rewrite_networks(&self, meta: &Meta) -> Result<(), EngineError> {
        let dir = self.state().vm_dir(&meta.id);
        let path = dir.join("config.vmx");
        let config_err = |e: guestinfo::store::StoreError| {
            EngineError::Vm(crate::vm::VmError::Config(format!(
                "{}: {e}",
                path.display()
            )))
        };
        let store = FileStore::open(&path).map_err(config_err)?;
        let mut cfg = guestinfo::store::read_config(&store).map_err(config_err)?;
        cfg.networks.clear();
        for (i, nic) in meta.nics.iter().enumerate() {
            cfg.networks.insert(
                nic.network.name.clone(),
                crate::config::endpoint(nic, i == 0),
            );
        }
        // Written whole into a new file: keys of the endpoints that went must not stay.
        let tmp = dir.join("config.vmx.net");
        let _ = std::fs::remove_file(&tmp);
        let new = FileStore::open(&tmp).map_err(config_err)?;
        guestinfo::store::write_config(&new, &cfg).map_err(config_err)?;
        drop(new);
        std::fs::rename(&tmp, &path).map_err(|source| EngineError::Io {
            what: format!("rename {}", tmp.display()),
            source,
        })
    }

    /// Waits until the tether has written back its address on `network` (the NIC came up
    /// and was configured), or the container stopped, or the wait is over.
    async fn wait_for_address(&self, meta: &Meta, network: &str) {
        let dir = self.state().vm_dir(&meta.id);
        let deadline = tokio::time::Instant::now() + ADDRESS_WAIT;
        loop {
            let assigned = crate::vm::load_config(&dir)
                .ok()
                .and_then(|c| c.networks.get(network).and_then(|e| e.assigned.ip))
                .is_some_and(|ip| !ip.is_unspecified());
            if assigned {
                return;
            }
            let running = self.state().meta(&meta.id).is_ok_and(|m| qemu_alive(&m));
            if !running || tokio::time::Instant::now() > deadline {
                tracing::warn!(id = %meta.id, network, "connect: no address reported");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
