//! NICs added to and removed from a running container VM: `network connect` and
//! `disconnect`, done by the VM's keeper (it owns the VM's config store and its QEMU).
//!
//! Connect: the network's segment is held ([`crate::netd::ensure`]), QEMU's monitor adds a
//! stream netdev to the segment and the NIC on the slot's root port (PCIe hot-plug: the
//! guest kernel's pciehp brings it up), the endpoint goes into the config store and the
//! tether is told to reload; it waits for the NIC, configures it and writes the address
//! back. Disconnect: the endpoint leaves the config's list of networks and the tether
//! reloads (it deconfigures the interface), then QEMU's monitor removes the NIC (the guest
//! releases the slot: pciehp's 5-second grace for an attention button) and the netdev, and
//! the segment is let go.
//!
//! The root ports of a running VM are fixed at boot: one per NIC, plus
//! [`crate::network::SPARE_SLOTS`] empty ones for NICs to come.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::netd::Hold;
use crate::network::{AttachedNic, NicPlacement};

/// How long one monitor exchange may take.
const QMP_WAIT: Duration = Duration::from_secs(10);
/// How long the guest may take to give a NIC back (pciehp waits 5 s after the button).
const UNPLUG_WAIT: Duration = Duration::from_secs(30);

/// A change to a running VM's networks (the payload of the keeper's network request).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// Adds `nic`; `entries` are the config keys to set (its endpoint and the new list).
    Connect {
        nic: AttachedNic,
        entries: Vec<(String, String)>,
    },
    /// Removes the NIC of `network` on `slot`; `entries` is the new list of networks.
    Disconnect {
        network: String,
        slot: u32,
        entries: Vec<(String, String)>,
    },
}

/// The keeper's hold on its NICs' segments (a segment lives while a NIC on it does).
#[derive(Debug)]
pub struct Nics {
    state_root: PathBuf,
    vm_dir: PathBuf,
    holds: Mutex<Vec<(String, Hold)>>,
    /// One change at a time (QEMU's monitor takes one client).
    busy: tokio::sync::Mutex<()>,
}

impl Nics {
    /// The NICs a VM boots with, `holds` in NIC order.
    pub fn new(state_root: &Path, vm_dir: &Path, nics: &[AttachedNic], holds: Vec<Hold>) -> Nics {
        Nics {
            state_root: state_root.to_owned(),
            vm_dir: vm_dir.to_owned(),
            holds: Mutex::new(
                nics.iter()
                    .map(|n| n.network.name.clone())
                    .zip(holds)
                    .collect(),
            ),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Vec<(String, Hold)>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets every segment go (the VM is gone).
    pub fn release_all(&self) {
        self.holds().clear();
    }

    /// Makes a change; `store` and `reload` are the keeper's config store and its way to
    /// tell the tether to reload.
    pub async fn apply(
        &self,
        change: Change,
        store: &dyn guestinfo::store::Store,
        reload: impl Fn() -> Result<(), String>,
    ) -> Result<(), String> {
        let _one = self.busy.lock().await;
        match change {
            Change::Connect { nic, entries } => {
                let placement = NicPlacement::for_slot(nic.slot).map_err(|e| e.to_string())?;
                let hold = {
                    let (root, net) = (self.state_root.clone(), nic.network.clone());
                    tokio::task::spawn_blocking(move || {
                        let store = crate::network::NetworkStore::new(&root);
                        crate::netd::ensure(
                            &root,
                            &crate::netd::defined(&store, &net),
                            &crate::netd::vch_exe(),
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
                };
                let device = nic
                    .device(&hold.segment.switch_sock())
                    .map_err(|e| e.to_string())?;
                let mut qmp = Qmp::connect(&self.vm_dir.join("qmp.sock")).await?;
                qmp.execute("netdev_add", netdev_props(&device.netdev)?)
                    .await
                    .map_err(|e| format!("adding the network backend: {e}"))?;
                if let Err(e) = qmp.execute("device_add", device_props(&device)).await {
                    let _ = qmp
                        .execute("netdev_del", json!({ "id": device.netdev_id }))
                        .await;
                    return Err(if e.contains("not found") || e.contains("Bus") {
                        format!(
                            "no free slot for another NIC in the running VM (it has room for {} networks connected while it runs; connect it while it is stopped): {e}",
                            crate::network::SPARE_SLOTS
                        )
                    } else {
                        format!("adding the NIC on {}: {e}", placement.root_port_addr())
                    });
                }
                self.holds().push((nic.network.name.clone(), hold));
                store.set_all(&entries).map_err(|e| e.to_string())?;
                reload()
            }
            Change::Disconnect {
                network,
                slot,
                entries,
            } => {
                let placement = NicPlacement::for_slot(slot).map_err(|e| e.to_string())?;
                // The tether lets go of the interface first; the guest's slot power-off
                // takes seconds, by when it has.
                store.set_all(&entries).map_err(|e| e.to_string())?;
                reload()?;
                let id = format!("nic{:02x}", placement.bridge_dev);
                let netdev = format!("net{:02x}", placement.bridge_dev);
                let mut qmp = Qmp::connect(&self.vm_dir.join("qmp.sock")).await?;
                match qmp.execute("device_del", json!({ "id": id })).await {
                    Ok(_) => {
                        if !qmp
                            .wait_event(
                                "DEVICE_DELETED",
                                |d| d["device"] == id.as_str(),
                                UNPLUG_WAIT,
                            )
                            .await
                        {
                            return Err(format!(
                                "the VM did not give the NIC of network {network} back within {UNPLUG_WAIT:?}"
                            ));
                        }
                    }
                    // Already gone (an earlier disconnect that timed out).
                    Err(e) if e.contains("not found") => {}
                    Err(e) => return Err(format!("removing the NIC: {e}")),
                }
                let _ = qmp.execute("netdev_del", json!({ "id": netdev })).await;
                let mut holds = self.holds();
                if let Some(i) = holds.iter().position(|(n, _)| *n == network) {
                    holds.remove(i);
                }
                Ok(())
            }
        }
    }
}

/// `netdev_add` arguments from a `-netdev stream,...` argument.
fn netdev_props(arg: &str) -> Result<Value, String> {
    let mut props = serde_json::Map::new();
    let mut addr = serde_json::Map::new();
    let mut parts = split_escaped(arg).into_iter();
    props.insert("type".into(), json!(parts.next().unwrap_or_default()));
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("bad netdev option {p:?}"))?;
        match k.strip_prefix("addr.") {
            Some(sub) => {
                addr.insert(sub.into(), json!(v));
            }
            None if k == "server" => {
                props.insert(k.into(), json!(v == "on"));
            }
            None => {
                props.insert(k.into(), json!(v));
            }
        }
    }
    if !addr.is_empty() {
        props.insert("addr".into(), Value::Object(addr));
    }
    Ok(Value::Object(props))
}

/// Splits QEMU's option syntax at single commas (`,,` is a comma).
fn split_escaped(arg: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                if let Some(last) = out.last_mut() {
                    last.push(',');
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// `device_add` arguments for a NIC.
fn device_props(d: &crate::network::NicDevice) -> Value {
    let mut props = serde_json::Map::new();
    let mut parts = split_escaped(&d.device_arg()).into_iter();
    props.insert("driver".into(), json!(parts.next().unwrap_or_default()));
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            props.insert(k.into(), json!(v));
        }
    }
    Value::Object(props)
}

/// A QEMU monitor (QMP) connection.
struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: Vec<Value>,
}

impl Qmp {
    async fn connect(path: &Path) -> Result<Qmp, String> {
        let stream = tokio::time::timeout(QMP_WAIT, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| format!("QEMU's monitor {} does not answer", path.display()))?
            .map_err(|e| format!("QEMU's monitor {}: {e}", path.display()))?;
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            reader: BufReader::new(r),
            writer: w,
            events: Vec::new(),
        };
        // The greeting, then the capabilities handshake.
        q.read(QMP_WAIT).await?;
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    async fn read(&mut self, limit: Duration) -> Result<Value, String> {
        let mut line = String::new();
        let n = tokio::time::timeout(limit, self.reader.read_line(&mut line))
            .await
            .map_err(|_| "QEMU's monitor did not answer in time".to_owned())?
            .map_err(|e| format!("QEMU's monitor: {e}"))?;
        if n == 0 {
            return Err("QEMU's monitor closed the connection".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QEMU's monitor: {e}"))
    }

    /// Runs a command; its `return`, or the error's description.
    async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut text = json!({ "execute": command, "arguments": arguments }).to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("QEMU's monitor: {e}"))?;
        loop {
            let msg = self.read(QMP_WAIT).await?;
            if msg.get("event").is_some() {
                self.events.push(msg);
                continue;
            }
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                return Err(e["desc"].as_str().unwrap_or("error").to_owned());
            }
        }
    }

    /// Waits for an event whose data satisfies `matches`.
    async fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> bool {
        let seen = |e: &Value| e["event"] == name && matches(&e["data"]);
        if self.events.iter().any(seen) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.read(left).await {
                Ok(msg) if seen(&msg) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

/// The config keys that add `network`'s endpoint to a running VM whose NICs are now `nics`
/// (the endpoint, with its RW fields cleared, and the new list of networks); with `None`,
/// only the list (a disconnect).
pub fn entries(
    nics: &[AttachedNic],
    network: Option<&str>,
) -> Result<Vec<(String, String)>, String> {
    let mut cfg = guestinfo::ContainerConfig::default();
    for (i, nic) in nics.iter().enumerate() {
        cfg.networks.insert(
            nic.network.name.clone(),
            crate::config::endpoint(nic, i == 0),
        );
    }
    let map = guestinfo::encode(&cfg).map_err(|e| e.to_string())?;
    let list_key = "guestinfo.vice./networks";
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(name) = network {
        let (ro, rw) = (
            format!("guestinfo.vice./networks|{name}/"),
            format!("guestinfo.vice..networks|{name}."),
        );
        out.extend(
            map.iter()
                .filter(|(k, _)| k.starts_with(&ro) || k.starts_with(&rw))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    out.push((
        list_key.to_owned(),
        map.get(list_key).cloned().unwrap_or_default(),
    ));
    // The store's wire form of an empty value.
    Ok(out
        .into_iter()
        .map(|(k, v)| (k, if v.is_empty() { "<nil>".to_owned() } else { v }))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{self, Network};

    fn nic(name: &str, i: usize) -> AttachedNic {
        let mut net = Network::bridge();
        net.name = name.into();
        AttachedNic {
            network: net,
            slot: network::nic_slot(i).unwrap(),
            model: Default::default(),
            mac: network::mac_for("ab", i),
            ip: None,
            address: Some(format!("172.16.0.{}", i + 2).parse().unwrap()),
            aliases: vec![],
            ports: vec![],
        }
    }

    #[test]
    fn monitor_arguments_from_qemu_options() {
        let n = nic("back", 1);
        let d = n.device(Path::new("/s/a,b/sw.sock")).unwrap();
        let props = netdev_props(&d.netdev).unwrap();
        assert_eq!(
            props,
            json!({"type": "stream", "id": "net16", "server": false,
                   "addr": {"type": "unix", "path": "/s/a,b/sw.sock"}})
        );
        let dev = device_props(&d);
        assert_eq!(dev["driver"], "vmxnet3");
        assert_eq!(dev["id"], "nic16");
        assert_eq!(dev["netdev"], "net16");
        assert_eq!(dev["bus"], "nicport161");
        assert_eq!(dev["romfile"], "");
        assert_eq!(split_escaped("a,,b,c"), vec!["a,b", "c"]);
    }

    #[test]
    fn entries_add_one_endpoint_and_the_list() {
        let nics = [nic("bridge", 0), nic("back", 1)];
        let e = entries(&nics, Some("back")).unwrap();
        let get = |k: &str| e.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("guestinfo.vice./networks"), Some("back|bridge"));
        assert_eq!(get("guestinfo.vice./networks|back/Common/id"), Some("1216"));
        assert!(e.iter().all(|(k, _)| !k.contains("|bridge")), "{e:?}");
        assert!(e.iter().all(|(_, v)| !v.is_empty()));
        let e = entries(&nics[..1], None).unwrap();
        assert_eq!(
            e,
            vec![("guestinfo.vice./networks".to_owned(), "bridge".to_owned())]
        );
        let e = entries(&[], None).unwrap();
        assert_eq!(
            e,
            vec![("guestinfo.vice./networks".to_owned(), "<nil>".to_owned())]
        );
    }
}
