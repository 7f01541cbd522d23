//! Composing a container's config the way the VIC port layer does.

use guestinfo::{
    ContainerConfig, ContainerNetwork, IpNet, MountSpec, NetworkEndpoint, SessionConfig, Url,
};

use crate::network::AttachedNic;
use crate::volume::{self, AttachedVolume, Backing};

use crate::image::DEFAULT_PATH;

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub id: String,
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// `user[:group]`.
    pub user: String,
    pub hostname: String,
    pub tty: bool,
    pub open_stdin: bool,
    /// Relaunch the process when it exits.
    pub restart: bool,
    /// Hold the launch until a client attaches and unblocks it.
    pub run_block: bool,
    /// The signal that stops the container (`TERM` when empty).
    pub stop_signal: String,
    pub domainname: String,
}

/// The container config for a spec: one primary session whose ID is the container ID.
pub fn compose(spec: &ContainerSpec) -> ContainerConfig {
    let mut cfg = ContainerConfig::default();
    cfg.common.id = spec.id.clone();
    cfg.common.name = spec.name.clone();
    cfg.hostname = spec.hostname.clone();
    cfg.domainname = spec.domainname.clone();

    let mut s = SessionConfig::default();
    s.common.id = spec.id.clone();
    s.common.name = spec.name.clone();
    let path = spec.command.first().cloned().unwrap_or_default();
    s.cmd.path = path;
    // The port layer sets argv to [Path] + arguments.
    s.cmd.args = spec.command.clone();
    let mut env = Vec::new();
    if !spec.env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.extend(spec.env.iter().cloned());
    s.cmd.env = env;
    s.cmd.dir = if spec.workdir.is_empty() {
        "/".into()
    } else {
        spec.workdir.clone()
    };
    let (user, group) = match spec.user.split_once(':') {
        Some((u, g)) => (u.to_owned(), g.to_owned()),
        None => (spec.user.clone(), String::new()),
    };
    s.user = user;
    s.group = group;
    s.tty = spec.tty;
    s.open_stdin = spec.open_stdin;
    s.attach = spec.tty || spec.open_stdin || spec.run_block;
    s.run_block = spec.run_block;
    s.restart = spec.restart;
    s.active = true;
    s.stop_signal = if spec.stop_signal.is_empty() {
        "TERM".into()
    } else {
        spec.stop_signal.clone()
    };
    cfg.sessions.insert(spec.id.clone(), s);
    cfg
}

/// Errors composing mounts and endpoints.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// an NFS volume on the harness's machine, but no network to reach it over
    #[error("volume {0} is an NFS export on this machine: the container needs a network to reach it (not --network none)")]
    NfsNeedsNetwork(String),
}

/// The `mounts|<id>` entry for an attached volume, as the port layer's volume join writes it
/// (`lib/portlayer/storage/volume/{vsphere,nfs}/join.go`): a disk is found by its label
/// (scheme `label`, path = label) with mode `rw`/`ro`; an NFS export by host and path, with
/// the mount options as mode. An NFS host `localhost`/`127.0.0.*` is the machine running the
/// harness, which the guest reaches at `first_gateway` (its first network's slirp host
/// address).
pub fn mount_spec(
    v: &AttachedVolume,
    first_gateway: Option<std::net::Ipv4Addr>,
) -> Result<MountSpec, ComposeError> {
    let (source, mode) = match &v.volume.backing {
        Backing::Disk { label, .. } => (
            Url {
                scheme: "label".into(),
                path: label.clone(),
                ..Default::default()
            },
            if v.read_only { "ro" } else { "rw" }.to_owned(),
        ),
        Backing::Nfs {
            host,
            path,
            options,
        } => {
            let host = if volume::is_local_host(host) {
                first_gateway
                    .ok_or_else(|| ComposeError::NfsNeedsNetwork(v.volume.name.clone()))?
                    .to_string()
            } else {
                host.clone()
            };
            let mut mode = if options.is_empty() {
                format!("{},addr={host}", volume::NFS_OPTIONS)
            } else {
                options.clone()
            };
            // The original port layer dropped `:ro` for NFS; our tether honours an `ro`
            // option, so a read-only NFS volume is read-only in the container.
            if v.read_only && !mode.split(',').any(|o| o == "ro") {
                mode.push_str(",ro");
            }
            (
                Url {
                    scheme: "nfs".into(),
                    host,
                    path: path.clone(),
                    ..Default::default()
                },
                mode,
            )
        }
    };
    Ok(MountSpec {
        source,
        path: v.dest.clone(),
        mode,
        copy_mode: v.copy_mode,
    })
}

/// The `networks|<name>` entry for a NIC, as the port layer's `AddContainer` and
/// `BindContainer` fill it (`lib/portlayer/network/context.go`): `Common/id` = the PCI slot
/// (decimal), no interface name, `static` + `ip` (with the subnet's mask) only for a
/// user-given address, the network's name, type, gateway (with the subnet's mask),
/// nameservers, pools (the whole subnet) and trust level, `default` on the first network,
/// `destinations` from `--route`, and the published ports. As on VIC's bridge networks the
/// port layer assigns the address ([`crate::ipam`]) and writes it as `ip`; `static` says
/// whether the user chose it (`--ip`). The tether configures either without DHCP. A NIC
/// without an address (metadata from before addresses were assigned) is left to DHCP.
pub fn endpoint(nic: &AttachedNic, default: bool) -> NetworkEndpoint {
    let net = &nic.network;
    let mut ep = NetworkEndpoint::default();
    ep.common.id = nic.slot.to_string();
    ep.static_ip = nic.ip.is_some();
    ep.ip = nic.address().map(|ip| IpNet {
        ip: Some(ip.into()),
        mask: Some(net.subnet.mask().into()),
    });
    ep.network = ContainerNetwork {
        network_type: net.kind.as_str().into(),
        destinations: net.routes.iter().map(|r| r.normalized().ipnet()).collect(),
        gateway: net.gateway_net().ipnet(),
        default,
        nameservers: net.dns.iter().map(|d| (*d).into()).collect(),
        pools: vec![net.pool()],
        trust_level: net.trust,
        ..Default::default()
    };
    ep.network.common.name = net.name.clone();
    ep.ports = nic.ports.iter().flat_map(|p| p.vic()).collect();
    ep
}

/// Adds the mounts (keyed by volume ID, i.e. name) and network endpoints (keyed by network
/// name; only the first is the default) to a composed config.
pub fn add_attachments(
    cfg: &mut ContainerConfig,
    volumes: &[AttachedVolume],
    nics: &[AttachedNic],
) -> Result<(), ComposeError> {
    let first_gateway = nics.first().map(|n| n.network.gateway);
    for v in volumes {
        cfg.mounts
            .insert(v.volume.name.clone(), mount_spec(v, first_gateway)?);
    }
    for (i, nic) in nics.iter().enumerate() {
        cfg.networks
            .insert(nic.network.name.clone(), endpoint(nic, i == 0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_session_mirrors_the_port_layer() {
        let spec = ContainerSpec {
            id: "abc".into(),
            name: "web".into(),
            command: vec!["echo".into(), "hi".into()],
            env: vec!["A=1".into()],
            user: "user:wheel".into(),
            ..Default::default()
        };
        let cfg = compose(&spec);
        let s = &cfg.sessions["abc"];
        assert_eq!(s.cmd.path, "echo");
        assert_eq!(s.cmd.args, vec!["echo", "hi"]);
        assert_eq!(
            s.cmd.env,
            vec![format!("PATH={DEFAULT_PATH}"), "A=1".into()]
        );
        assert_eq!((s.user.as_str(), s.group.as_str()), ("user", "wheel"));
        assert_eq!(s.cmd.dir, "/");
        assert!(s.active);
        // The whole config encodes (no value the format cannot carry).
        assert!(guestinfo::encode(&cfg).is_ok());
    }

    use crate::network::{self, AttachedNic, Network, NicModel};
    use crate::volume::{AttachedVolume, Backing, Volume};
    use std::net::Ipv4Addr;

    fn disk_volume(name: &str, label: &str) -> AttachedVolume {
        AttachedVolume {
            volume: Volume {
                name: name.into(),
                backing: Backing::Disk {
                    label: label.into(),
                    size: 1 << 30,
                },
                anonymous: false,
                created: 0,
            },
            dest: "/data".into(),
            read_only: false,
            copy_mode: guestinfo::copy_mode::NEW,
            disk: None,
        }
    }

    fn nfs_volume(host: &str, options: &str) -> AttachedVolume {
        AttachedVolume {
            volume: Volume {
                name: "nfsvol".into(),
                backing: Backing::Nfs {
                    host: host.into(),
                    path: "/exports/nfsvol".into(),
                    options: options.into(),
                },
                anonymous: false,
                created: 0,
            },
            dest: "/shared".into(),
            read_only: false,
            copy_mode: guestinfo::copy_mode::NEW,
            disk: None,
        }
    }

    fn bridge_nic(ip: Option<&str>, ports: &[&str]) -> AttachedNic {
        AttachedNic {
            network: Network::bridge(),
            slot: network::nic_slot(0).unwrap(),
            model: NicModel::Virtio,
            mac: network::mac_for("ab", 0),
            ip: ip.map(|i| i.parse().unwrap()),
            address: ip.map(|i| i.parse().unwrap()),
            aliases: vec![],
            ports: ports
                .iter()
                .map(|p| network::parse_port_spec(p).unwrap())
                .collect(),
        }
    }

    fn b64_ip(s: &str) -> String {
        let ip: Ipv4Addr = s.parse().unwrap();
        guestinfo::value::b64_encode(&ip.octets())
    }

    fn encoded(vols: &[AttachedVolume], nics: &[AttachedNic]) -> (ContainerConfig, guestinfo::Map) {
        let mut cfg = compose(&ContainerSpec {
            id: "c0ffee".into(),
            command: vec!["true".into()],
            ..Default::default()
        });
        add_attachments(&mut cfg, vols, nics).unwrap();
        let map = guestinfo::encode(&cfg).unwrap();
        let back = guestinfo::decode(&map).unwrap();
        assert_eq!(back.mounts, cfg.mounts, "mounts round-trip");
        assert_eq!(back.networks, cfg.networks, "networks round-trip");
        (cfg, map)
    }

    fn key<'a>(map: &'a guestinfo::Map, k: &str) -> &'a str {
        map.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no key {k} in {map:#?}"))
    }

    #[test]
    fn label_mount_keys_match_the_port_layer() {
        let (_, map) = encoded(&[disk_volume("vol1", "vol1-label")], &[]);
        let m = "guestinfo.vice./mounts|vol1";
        assert_eq!(key(&map, "guestinfo.vice./mounts"), "vol1");
        assert_eq!(key(&map, &format!("{m}/source/Scheme")), "label");
        assert_eq!(key(&map, &format!("{m}/source/Path")), "vol1-label");
        assert_eq!(key(&map, &format!("{m}/source/Host")), "");
        assert_eq!(key(&map, &format!("{m}/source/ForceQuery")), "false");
        assert_eq!(key(&map, &format!("{m}/dest")), "/data");
        assert_eq!(key(&map, &format!("{m}/mode")), "rw");
        assert_eq!(key(&map, &format!("{m}/copymode")), "2");
        // Exactly the keys the original encoder produced for a label mount.
        let mut names: Vec<&str> = map
            .keys()
            .filter_map(|k| k.strip_prefix("guestinfo.vice./mounts|vol1/"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "copymode",
                "dest",
                "mode",
                "source/ForceQuery",
                "source/Fragment",
                "source/Host",
                "source/Opaque",
                "source/Path",
                "source/RawPath",
                "source/RawQuery",
                "source/Scheme"
            ]
        );

        let mut ro = disk_volume("my.vol-2", "abc");
        ro.read_only = true;
        ro.copy_mode = guestinfo::copy_mode::NEVER;
        let (cfg, map) = encoded(&[ro], &[]);
        // A '.' in a map key becomes '/' in read-only keys, as the original encoder does
        // (guestinfo.md); the name list keeps it, and decoding finds the entry again.
        assert_eq!(key(&map, "guestinfo.vice./mounts"), "my.vol-2");
        assert_eq!(key(&map, "guestinfo.vice./mounts|my/vol-2/mode"), "ro");
        assert_eq!(key(&map, "guestinfo.vice./mounts|my/vol-2/copymode"), "1");
        assert!(cfg.mounts.contains_key("my.vol-2"));
    }

    #[test]
    fn read_only_nfs_volume_carries_ro() {
        let mut v = nfs_volume("10.1.1.1", "");
        v.read_only = true;
        let (_, map) = encoded(&[v], &[]);
        let mode = key(&map, "guestinfo.vice./mounts|nfsvol/mode");
        assert!(mode.ends_with(",addr=10.1.1.1,ro"), "{mode}");
    }

    #[test]
    fn nfs_mount_keys_match_the_port_layer() {
        let (_, map) = encoded(&[nfs_volume("10.118.68.164", "")], &[]);
        let m = "guestinfo.vice./mounts|nfsvol";
        assert_eq!(key(&map, &format!("{m}/source/Scheme")), "nfs");
        assert_eq!(key(&map, &format!("{m}/source/Host")), "10.118.68.164");
        assert_eq!(key(&map, &format!("{m}/source/Path")), "/exports/nfsvol");
        assert_eq!(key(&map, &format!("{m}/dest")), "/shared");
        assert_eq!(
            key(&map, &format!("{m}/mode")),
            "vers=3,rsize=131072,wsize=131072,hard,proto=tcp,timeo=600,sec=sys,mountvers=3,mountproto=tcp,nolock,addr=10.118.68.164"
        );
        // A local export is reached at the first network's gateway (slirp's host address).
        let (_, map) = encoded(&[nfs_volume("localhost", "")], &[bridge_nic(None, &[])]);
        assert_eq!(key(&map, &format!("{m}/source/Host")), "172.16.0.1");
        assert!(key(&map, &format!("{m}/mode")).ends_with(",nolock,addr=172.16.0.1"));
        // Given options are taken as they are.
        let (_, map) = encoded(&[nfs_volume("h", "vers=4,soft")], &[]);
        assert_eq!(key(&map, &format!("{m}/mode")), "vers=4,soft");
        // Without a network the local export is unreachable.
        let mut cfg = ContainerConfig::default();
        assert!(matches!(
            add_attachments(&mut cfg, &[nfs_volume("127.0.0.1", "")], &[]),
            Err(ComposeError::NfsNeedsNetwork(_))
        ));
    }

    #[test]
    fn dhcp_endpoint_keys_match_the_port_layer() {
        let (_, map) = encoded(&[], &[bridge_nic(None, &["8080:80", "0.0.0.0:53:53/udp"])]);
        let n = "guestinfo.vice./networks|bridge";
        assert_eq!(key(&map, "guestinfo.vice./networks"), "bridge");
        assert_eq!(key(&map, &format!("{n}/Common/id")), "1184");
        assert_eq!(key(&map, &format!("{n}/Common/name")), "");
        assert_eq!(key(&map, &format!("{n}/static")), "false");
        assert!(!map.contains_key(&format!("{n}/ip/IP")), "DHCP: no ip");
        assert_eq!(key(&map, &format!("{n}/network/Common/name")), "bridge");
        assert_eq!(
            key(&map, "guestinfo.vice..networks|bridge.network.type"),
            "bridge"
        );
        assert_eq!(key(&map, &format!("{n}/network/default")), "true");
        assert_eq!(
            key(&map, &format!("{n}/network/gateway/IP")),
            b64_ip("172.16.0.1")
        );
        assert_eq!(
            key(&map, &format!("{n}/network/gateway/Mask")),
            b64_ip("255.255.0.0")
        );
        assert_eq!(key(&map, &format!("{n}/network/pools")), "0");
        assert_eq!(
            key(&map, &format!("{n}/network/pools|0/first")),
            b64_ip("172.16.0.0")
        );
        assert_eq!(
            key(&map, &format!("{n}/network/pools|0/last")),
            b64_ip("172.16.255.255")
        );
        assert_eq!(key(&map, &format!("{n}/network/TrustLevel")), "0");
        assert_eq!(key(&map, &format!("{n}/ports")), "1");
        assert_eq!(key(&map, &format!("{n}/ports~")), "8080:80/tcp|53:53/udp");
        assert_eq!(key(&map, &format!("{n}/internal")), "false");
    }

    #[test]
    fn static_endpoints_and_second_networks() {
        let mut other = Network::bridge();
        other.name = "back".into();
        other.kind = crate::network::NetType::External;
        other.subnet = "10.20.0.0/24".parse().unwrap();
        other.gateway = "10.20.0.1".parse().unwrap();
        other.dns = vec!["10.20.0.53".parse().unwrap(), "8.8.8.8".parse().unwrap()];
        other.routes = vec!["10.30.0.0/16".parse().unwrap()];
        other.trust = guestinfo::trust_level::PUBLISHED;
        let second = AttachedNic {
            network: other,
            slot: network::nic_slot(1).unwrap(),
            model: NicModel::Vmxnet3,
            mac: network::mac_for("ab", 1),
            ip: None,
            address: Some("10.20.0.2".parse().unwrap()),
            aliases: vec!["api".into()],
            ports: vec![],
        };
        let (cfg, map) = encoded(&[], &[bridge_nic(Some("172.16.0.10"), &[]), second]);
        let n = "guestinfo.vice./networks|bridge";
        assert_eq!(key(&map, "guestinfo.vice./networks"), "back|bridge");
        assert_eq!(key(&map, &format!("{n}/static")), "true");
        assert_eq!(key(&map, &format!("{n}/ip/IP")), b64_ip("172.16.0.10"));
        assert_eq!(key(&map, &format!("{n}/ip/Mask")), b64_ip("255.255.0.0"));
        let b = "guestinfo.vice./networks|back";
        assert_eq!(key(&map, &format!("{b}/Common/id")), "1216");
        // The port layer's address, not the user's: `static` stays false.
        assert_eq!(key(&map, &format!("{b}/static")), "false");
        assert_eq!(key(&map, &format!("{b}/ip/IP")), b64_ip("10.20.0.2"));
        assert_eq!(key(&map, &format!("{b}/ip/Mask")), b64_ip("255.255.255.0"));
        assert_eq!(key(&map, &format!("{b}/network/default")), "false");
        assert_eq!(
            key(&map, "guestinfo.vice..networks|back.network.type"),
            "external"
        );
        assert_eq!(key(&map, &format!("{b}/network/TrustLevel")), "1");
        assert_eq!(key(&map, &format!("{b}/network/dns")), "1");
        assert_eq!(
            key(&map, &format!("{b}/network/dns|0")),
            b64_ip("10.20.0.53")
        );
        assert_eq!(key(&map, &format!("{b}/network/dns|1")), b64_ip("8.8.8.8"));
        assert_eq!(key(&map, &format!("{b}/network/destinations")), "0");
        assert_eq!(
            key(&map, &format!("{b}/network/destinations|0/IP")),
            b64_ip("10.30.0.0")
        );
        assert_eq!(
            key(&map, &format!("{b}/network/destinations|0/Mask")),
            b64_ip("255.255.0.0")
        );
        assert_eq!(cfg.networks["back"].network.gateway.prefix_len(), Some(24));
    }
}
