//! The docker-like sections of `vch inspect` built from a container's metadata and its
//! config as the tether wrote it back.

use guestinfo::ContainerConfig;

use crate::state::Meta;
use crate::volume;

/// `Mounts` of `vch inspect`, docker-style.
pub fn mounts(meta: &Meta) -> serde_json::Value {
    let mounts: Vec<serde_json::Value> = meta
        .volumes
        .iter()
        .map(|v| {
            let source = match (&v.disk, &v.volume.backing) {
                (Some(d), _) => d.display().to_string(),
                (None, volume::Backing::Nfs { host, path, .. }) => format!("{host}:{path}"),
                (None, _) => String::new(),
            };
            serde_json::json!({
                "Type": "volume",
                "Name": v.volume.name,
                "Driver": v.volume.driver(),
                "Source": source,
                "Destination": v.dest,
                "Mode": if v.read_only { "ro" } else { "rw" },
                "RW": !v.read_only,
                "Label": v.volume.label(),
                "CopyMode": v.copy_mode,
                "Anonymous": v.volume.anonymous,
            })
        })
        .collect();
    serde_json::Value::Array(mounts)
}

/// `NetworkSettings` of `vch inspect`: per network what was asked for (slot, MAC, static
/// address, ports) and what the tether reports it configured (`assigned`,
/// `network.assigned.gateway`, `network.assigned.dns`), once it has written them back.
pub fn network_settings(meta: &Meta, cfg: &ContainerConfig) -> serde_json::Value {
    // Unset and 0.0.0.0 (what the port layer writes back on unbind) both mean "none yet".
    let show = |ip: Option<std::net::IpAddr>| match ip.map(|i| i.to_canonical()) {
        Some(i) if !i.is_unspecified() => i.to_string(),
        _ => String::new(),
    };
    let mut nets = serde_json::Map::new();
    let mut ports = serde_json::Map::new();
    for (i, nic) in meta.nics.iter().enumerate() {
        let ep = cfg.networks.get(&nic.network.name);
        let assigned = ep.map(|e| e.assigned.clone()).unwrap_or_default();
        let (gateway, dns) = ep
            .map(|e| {
                (
                    show(e.network.assigned.gateway.ip),
                    e.network
                        .assigned
                        .nameservers
                        .iter()
                        .map(|d| d.to_canonical().to_string())
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or_default();
        nets.insert(
            nic.network.name.clone(),
            serde_json::json!({
                "IPAddress": show(assigned.ip),
                "IPPrefixLen": if show(assigned.ip).is_empty() {
                    0
                } else {
                    assigned.prefix_len().unwrap_or(0)
                },
                "Gateway": gateway,
                "DNS": dns,
                "MacAddress": nic.mac,
                "PciSlot": nic.slot,
                "StaticIP": nic.ip,
                "Aliases": nic.aliases,
                "Default": i == 0,
                "Type": nic.network.kind.as_str(),
                "Model": nic.model.device(),
            }),
        );
        for p in &nic.ports {
            for k in 0..p.count {
                ports.insert(
                    format!("{}/{}", p.container_port + k, p.proto.as_str()),
                    serde_json::json!([{
                        "HostIp": p.host_ip.to_string(),
                        "HostPort": (p.host_port + k).to_string(),
                    }]),
                );
            }
        }
    }
    serde_json::json!({ "Networks": nets, "Ports": ports })
}

/// The boot stages the tether stamps, in the order it passes them.
const BOOT_STAGES: [&str; 5] = ["pid1", "config", "disks", "network", "exec"];

/// `Boot` of `vch inspect`: the tether's `CLOCK_BOOTTIME` stamps in milliseconds, the
/// kernel's own time to PID 1 and what each stage of the tether's start took. Empty before
/// the tether has written its stamps back.
pub fn boot(cfg: &ContainerConfig) -> serde_json::Value {
    let stamps = &cfg.tether.boot_stamps;
    let ms = |us: i64| (us as f64 / 100.0).round() / 10.0;
    let Some(&pid1) = stamps.get("pid1") else {
        return serde_json::json!({});
    };
    let mut stages = Vec::new();
    let mut prev = pid1;
    for name in BOOT_STAGES.iter().skip(1) {
        if let Some(&at) = stamps.get(*name) {
            stages.push(serde_json::json!({
                "Stage": name,
                "AtMs": ms(at),
                "SincePid1Ms": ms(at - pid1),
                "TookMs": ms(at - prev),
            }));
            prev = at;
        }
    }
    let exec = stamps.get("exec").map(|&e| ms(e - pid1));
    serde_json::json!({
        "KernelToPid1Ms": ms(pid1),
        "Pid1ToExecMs": exec,
        "Stages": stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{self, AttachedNic, Network, NicModel};
    use crate::volume::{AttachedVolume, Backing, Volume};
    use std::net::{IpAddr, Ipv4Addr};

    fn meta() -> Meta {
        Meta {
            id: "abc".into(),
            volumes: vec![AttachedVolume {
                volume: Volume {
                    name: "data".into(),
                    backing: Backing::Disk {
                        label: "0123456789abcdef".into(),
                        size: 1 << 30,
                    },
                    anonymous: false,
                    created: 0,
                },
                dest: "/data".into(),
                read_only: true,
                copy_mode: 2,
                disk: Some("/state/volumes/data/disk.img".into()),
            }],
            nics: vec![AttachedNic {
                network: Network::bridge(),
                slot: 0x4A0,
                model: NicModel::Vmxnet3,
                mac: "00:50:56:00:00:01".into(),
                ip: None,
                address: None,
                aliases: vec![],
                ports: vec![network::parse_port_spec("8080-8081:80-81").unwrap()],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn mounts_section() {
        let m = mounts(&meta());
        assert_eq!(m[0]["Name"], "data");
        assert_eq!(m[0]["Destination"], "/data");
        assert_eq!(m[0]["Mode"], "ro");
        assert_eq!(m[0]["RW"], false);
        assert_eq!(m[0]["Driver"], "vsphere");
        assert_eq!(m[0]["Label"], "0123456789abcdef");
        assert_eq!(m[0]["Source"], "/state/volumes/data/disk.img");
    }

    #[test]
    fn network_section_shows_what_the_tether_wrote_back() {
        let meta = meta();
        let mut cfg = ContainerConfig::default();
        crate::config::add_attachments(&mut cfg, &meta.volumes, &meta.nics).unwrap();
        // Before the tether writes anything: the request only.
        let n = network_settings(&meta, &cfg);
        let b = &n["Networks"]["bridge"];
        assert_eq!(b["IPAddress"], "");
        assert_eq!(b["Gateway"], "");
        assert_eq!(b["PciSlot"], 1184);
        assert_eq!(b["Default"], true);
        assert_eq!(n["Ports"]["80/tcp"][0]["HostPort"], "8080");
        assert_eq!(n["Ports"]["81/tcp"][0]["HostIp"], "127.0.0.1");

        // The tether's write-back (16-byte IPv4 forms are shown as IPv4).
        let ep = cfg.networks.get_mut("bridge").unwrap();
        ep.assigned = guestinfo::IpNet::new(IpAddr::V4(Ipv4Addr::new(172, 16, 0, 2)), 16);
        ep.network.assigned.gateway.ip = Some("::ffff:172.16.0.1".parse().unwrap());
        ep.network.assigned.nameservers = vec!["172.16.255.254".parse().unwrap()];
        // Round-trip through the wire format, as `vch inspect` reads it.
        let cfg = guestinfo::decode(&guestinfo::encode(&cfg).unwrap()).unwrap();
        let n = network_settings(&meta, &cfg);
        let b = &n["Networks"]["bridge"];
        assert_eq!(b["IPAddress"], "172.16.0.2");
        assert_eq!(b["IPPrefixLen"], 16);
        assert_eq!(b["Gateway"], "172.16.0.1");
        assert_eq!(b["DNS"][0], "172.16.255.254");

        // 0.0.0.0 (unbound) counts as no address.
        let mut cfg = cfg;
        cfg.networks.get_mut("bridge").unwrap().assigned =
            guestinfo::IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        assert_eq!(
            network_settings(&meta, &cfg)["Networks"]["bridge"]["IPAddress"],
            ""
        );
    }

    #[test]
    fn boot_section_in_milliseconds_and_stage_order() {
        let mut cfg = ContainerConfig::default();
        assert_eq!(boot(&cfg), serde_json::json!({}));
        for (k, v) in [
            ("pid1", 500_000),
            ("config", 540_000),
            ("disks", 590_250),
            ("network", 600_000),
            ("exec", 640_000),
        ] {
            cfg.tether.boot_stamps.insert(k.into(), v);
        }
        let b = boot(&cfg);
        assert_eq!(b["KernelToPid1Ms"], 500.0);
        assert_eq!(b["Pid1ToExecMs"], 140.0);
        assert_eq!(b["Stages"][1]["Stage"], "disks");
        assert_eq!(b["Stages"][1]["AtMs"], 590.3);
        assert_eq!(b["Stages"][1]["TookMs"], 50.3);
        assert_eq!(b["Stages"][3]["SincePid1Ms"], 140.0);
    }
}
