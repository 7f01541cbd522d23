//! The container configuration as the VIC port layer writes it (executor-config.md), plus our
//! own extension keys.
//!
//! Each struct mirrors a Go struct field for field; its `*_TAGS` table carries the Go tags.
//! Field order matters only for write order: [`SessionConfig`] follows the *tether's* Go struct
//! (`Detail` first) so that a session write-back goes out in the original order.
//! The serde derives serve two purposes: the VIC codec (via the tag tables) and plain JSON for
//! the `guestinfo` inspect command, where Rust field names are used.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::tags::{hidden, ro, rw, tagged, untagged, FieldTag};
use crate::value::GoTime;

/// Trust levels of `NetworkEndpoint.network.trust_level` (`executor.TrustLevel`).
/// The firewall a network gets in the guest (tether-lifecycle.md §7).
pub mod trust_level {
    /// Not set: treated as [`PUBLISHED`].
    pub const UNSPECIFIED: i64 = 0;
    /// Outbound traffic, ping, and the published ports.
    pub const PUBLISHED: i64 = 1;
    /// Everything in and out.
    pub const OPEN: i64 = 2;
    /// Nothing.
    pub const CLOSED: i64 = 3;
    /// Outbound traffic and its replies only.
    pub const OUTBOUND: i64 = 4;
    /// Outbound traffic, and anything from the network's own address pools.
    pub const PEERS: i64 = 5;
}

/// Values of `MountSpec.copy_mode` (`executor.CopyMode`).
/// Whether a volume gets the image's content at its mount point (copy-up).
pub mod copy_mode {
    /// Not set: no copy.
    pub const UNSET: i64 = 0;
    /// `CopyNever`: no copy.
    pub const NEVER: i64 = 1;
    /// `CopyNew`: the image's content is copied into the volume when it is empty.
    pub const NEW: i64 = 2;
}

/// The whole container VM config: the PL's `executor.ExecutorConfig` plus our extensions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// Container id/name/notes. The PL writes the name as a *hidden* key (`H:common/name`,
    /// invisible to the guest): read the name with [`ContainerConfig::name`], which falls back
    /// to `RO:common/name` ([`ContainerConfig::visible_name`]).
    pub common: Common,
    /// `RW:createtime`, nanoseconds since the epoch.
    pub create_time: i64,
    /// `diagnostics/…`: the debug level, relaunch and exit records.
    pub diagnostics: Diagnostics,
    /// `RO:sessions`, keyed by session id; the primary session's id is the container id.
    pub sessions: BTreeMap<String, SessionConfig>,
    /// `RO:execs@non-persistent`: exec tasks; every key below carries `@non-persistent`.
    pub execs: BTreeMap<String, SessionConfig>,
    /// `RO:mounts`, keyed by volume id.
    pub mounts: BTreeMap<String, MountSpec>,
    /// `RO:networks`, keyed by network (scope) name.
    pub networks: BTreeMap<String, NetworkEndpoint>,
    /// `RO:key`: PEM bytes of the attach server's RSA host key (base64 on the wire).
    #[serde(with = "crate::value::bytes_b64")]
    pub key: Vec<u8>,
    /// `RO:layerid`.
    pub layer_id: String,
    /// `RO:imageid`.
    pub image_id: String,
    /// `H:annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `RO:repo`.
    pub repo_name: String,
    /// `RO:version/…`; `None` when the PL wrote no version.
    pub version: Option<Build>,
    /// `RO:asymrouting`.
    pub asymmetric_routing: bool,
    /// `RO:hostname`.
    pub hostname: String,
    /// `RO:domainname`.
    pub domainname: String,
    /// `RO:common/name`: where port layers before docker-rename put the container name (and
    /// where the original tether still looks). Kept separately so such maps re-encode exactly.
    pub visible_name: Option<String>,
    /// Our own additions (not VIC): see [`TetherExtensions`].
    pub tether: TetherExtensions,
}

impl ContainerConfig {
    /// The container name from whichever key carries it (hidden first, then visible).
    pub fn name(&self) -> &str {
        if !self.common.name.is_empty() {
            return &self.common.name;
        }
        self.visible_name.as_deref().unwrap_or("")
    }

    /// The primary session (the one whose id is the container id), if present.
    pub fn primary(&self) -> Option<&SessionConfig> {
        self.sessions.get(&self.common.id)
    }
}

pub(crate) const CONTAINER_TAGS: &[FieldTag] = &[
    ro("common", "common").nested(EXECUTOR_COMMON_TAGS),
    rw("create_time", "createtime"),
    ro("diagnostics", "diagnostics"),
    ro("sessions", "sessions"),
    tagged("execs", "read-only,non-persistent", "execs"),
    ro("mounts", "mounts"),
    ro("networks", "networks"),
    ro("key", "key"),
    ro("layer_id", "layerid"),
    ro("image_id", "imageid"),
    hidden("annotations", "annotations"),
    ro("repo_name", "repo"),
    ro("version", "version"),
    ro("asymmetric_routing", "asymrouting"),
    ro("hostname", "hostname"),
    ro("domainname", "domainname"),
    ro("visible_name", "common/name"),
    ro("tether", "tether"),
];

/// `executor.Common`: identity shared by sessions, networks and the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Common {
    /// Untagged `ExecutionEnvironment`.
    pub execution_environment: String,
    /// `id` (RO).
    pub id: String,
    /// `name`: RO for sessions and networks, hidden for the container.
    pub name: String,
    /// `notes` (hidden).
    pub notes: String,
}

pub(crate) const COMMON_TAGS: &[FieldTag] = &[
    untagged("execution_environment", "ExecutionEnvironment"),
    ro("id", "id"),
    ro("name", "name"),
    hidden("notes", "notes"),
];

/// `executor.ExecutorConfigCommon`: the container's [`Common`], name hidden.
pub(crate) const EXECUTOR_COMMON_TAGS: &[FieldTag] = &[
    untagged("execution_environment", "ExecutionEnvironment"),
    ro("id", "id"),
    hidden("name", "name"),
    hidden("notes", "notes"),
];

/// `executor.Diagnostics` (container and session level).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Diagnostics {
    /// `debug` (RO): 0 info, >0 debug, >1 tracing, >3 extraconfig tracing.
    pub debug_level: i64,
    /// `resurrections` (RW): relaunch counter.
    pub resurrection_count: i64,
    /// `exitlogs` (RW): never populated by the original.
    pub exit_logs: Vec<ExitLog>,
    /// `syslog` (RO).
    pub syslog: Option<SysLogConfig>,
}

/// Session diagnostics are the same Go type as the container's.
pub type SessionDiagnostics = Diagnostics;

pub(crate) const DIAGNOSTICS_TAGS: &[FieldTag] = &[
    ro("debug_level", "debug"),
    rw("resurrection_count", "resurrections"),
    rw("exit_logs", "exitlogs"),
    ro("syslog", "syslog"),
];

/// `executor.SysLogConfig` (untagged fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SysLogConfig {
    /// `Network`: udp, tcp, udp6 or tcp6.
    pub network: String,
    /// `RAddr`: remote address.
    pub raddr: String,
}

pub(crate) const SYSLOG_TAGS: &[FieldTag] =
    &[untagged("network", "Network"), untagged("raddr", "RAddr")];

/// `executor.ExitLog` (untagged fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitLog {
    /// When the process exited.
    pub time: GoTime,
    /// Its exit status.
    pub exit_status: i64,
    /// Why, when it was not a plain exit (`killed by signal N`).
    pub message: String,
}

pub(crate) const EXIT_LOG_TAGS: &[FieldTag] = &[
    untagged("time", "Time"),
    untagged("exit_status", "ExitStatus"),
    untagged("message", "Message"),
];

/// A session (process tree root) or exec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// `common` (RO); the primary session's id is the container id.
    pub common: Common,
    /// `detail` (RW).
    pub detail: Detail,
    /// `diagnostics` (RW in the tether's struct; keys identical to the PL's RO).
    pub diagnostics: SessionDiagnostics,
    /// `cmd` (RO).
    pub cmd: Cmd,
    /// `status` (RW, skip-decode): exit code, -1 when killed by a signal.
    pub exit_status: i64,
    /// `started` (RW, skip-decode): "" not launched, "true" launched, else the launch error.
    pub started: String,
    /// `attach` (RO).
    pub attach: bool,
    /// `openstdin` (RO).
    pub open_stdin: bool,
    /// `runblock` (RW): wait for an attach `unblock` before launching.
    pub run_block: bool,
    /// `active` (RO).
    pub active: bool,
    /// `tty` (RO).
    pub tty: bool,
    /// `restart` (RO).
    pub restart: bool,
    /// `stopSignal` (RO); empty means TERM.
    pub stop_signal: String,
    /// `User` (RO; the tether reads `user`, matched case-insensitively).
    pub user: String,
    /// `Group` (RO).
    pub group: String,
}

pub(crate) const SESSION_TAGS: &[FieldTag] = &[
    ro("common", "common"),
    rw("detail", "detail"),
    rw("diagnostics", "diagnostics"),
    ro("cmd", "cmd"),
    rw("exit_status", "status").skip_decode(),
    rw("started", "started").skip_decode(),
    ro("attach", "attach"),
    ro("open_stdin", "openstdin"),
    rw("run_block", "runblock"),
    ro("active", "active"),
    ro("tty", "tty"),
    ro("restart", "restart"),
    ro("stop_signal", "stopSignal"),
    ro("user", "User"),
    ro("group", "Group"),
];

/// `executor.Detail`: task timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Detail {
    /// `createtime` (RW), seconds.
    pub create_time: i64,
    /// `starttime` (RW, skip-decode), UTC seconds at successful launch.
    pub start_time: i64,
    /// `stoptime` (RW, skip-decode), UTC seconds at exit.
    pub stop_time: i64,
}

pub(crate) const DETAIL_TAGS: &[FieldTag] = &[
    rw("create_time", "createtime"),
    rw("start_time", "starttime").skip_decode(),
    rw("stop_time", "stoptime").skip_decode(),
];

/// `executor.Cmd`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cmd {
    /// `Path`.
    pub path: String,
    /// `Args`, including `argv[0]`.
    pub args: Vec<String>,
    /// `Env`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `Dir`.
    pub dir: String,
}

pub(crate) const CMD_TAGS: &[FieldTag] = &[
    ro("path", "Path"),
    ro("args", "Args"),
    ro("env", "Env"),
    ro("dir", "Dir"),
];

/// `executor.MountSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountSpec {
    /// `source`: `label` (path = filesystem label) or `nfs` (host + path).
    pub source: Url,
    /// `dest`: mount point in the container.
    pub path: String,
    /// `mode`: `rw`/`ro` for labels, mount options for nfs.
    pub mode: String,
    /// `copymode`: see [`copy_mode`].
    pub copy_mode: i64,
}

pub(crate) const MOUNT_TAGS: &[FieldTag] = &[
    ro("source", "source"),
    ro("path", "dest"),
    ro("mode", "mode"),
    ro("copy_mode", "copymode"),
];

/// Go 1.8 `url.URL`'s exported fields (untagged). `User` has no exported fields and is
/// never transmitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Url {
    /// `Scheme`: `label` or `nfs` for a volume source.
    pub scheme: String,
    /// `Opaque`.
    pub opaque: String,
    /// `Host`: the NFS server.
    pub host: String,
    /// `Path`: the disk label or the NFS export.
    pub path: String,
    /// `RawPath`.
    pub raw_path: String,
    /// `ForceQuery`.
    pub force_query: bool,
    /// `RawQuery`.
    pub raw_query: String,
    /// `Fragment`.
    pub fragment: String,
}

pub(crate) const URL_TAGS: &[FieldTag] = &[
    untagged("scheme", "Scheme"),
    untagged("opaque", "Opaque"),
    untagged("host", "Host"),
    untagged("path", "Path"),
    untagged("raw_path", "RawPath"),
    untagged("force_query", "ForceQuery"),
    untagged("raw_query", "RawQuery"),
    untagged("fragment", "Fragment"),
];

/// A Go `net.IPNet` (untagged `IP`, `Mask`). Addresses keep their wire length: a 16-byte
/// IPv4 stays `::ffff:a.b.c.d` (see [`crate::value::ip_from_bytes`]). The mask is held as an
/// address of the same family (`255.255.255.0`) so non-contiguous masks survive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpNet {
    /// `IP`: the address; `None` is Go's nil.
    #[serde(with = "crate::value::ip_opt")]
    pub ip: Option<IpAddr>,
    /// `Mask`, as an address of the same family.
    #[serde(with = "crate::value::ip_opt")]
    pub mask: Option<IpAddr>,
}

impl IpNet {
    /// An IPv4 or IPv6 network from an address and a prefix length (4-byte IPv4 forms).
    pub fn new(ip: IpAddr, prefix: u8) -> IpNet {
        let mask = match ip {
            IpAddr::V4(_) => {
                let bits = u32::MAX
                    .checked_shl(32 - u32::from(prefix.min(32)))
                    .unwrap_or(0);
                IpAddr::from(bits.to_be_bytes())
            }
            IpAddr::V6(_) => {
                let bits = u128::MAX
                    .checked_shl(128 - u32::from(prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::from(bits.to_be_bytes())
            }
        };
        IpNet {
            ip: Some(ip),
            mask: Some(mask),
        }
    }

    /// The prefix length, if the mask is contiguous. A 4-byte mask applied to a 16-byte IPv4
    /// address is accepted as Go does.
    pub fn prefix_len(&self) -> Option<u8> {
        let bits = match self.mask? {
            IpAddr::V4(m) => u128::from(u32::from(m)) << 96,
            IpAddr::V6(m) => u128::from(m),
        };
        let ones = bits.leading_ones();
        u8::try_from(ones)
            .ok()
            .filter(|_| bits.checked_shl(ones).unwrap_or(0) == 0)
    }

    /// True when no address is set (Go's nil IP).
    pub fn is_unset(&self) -> bool {
        self.ip.is_none()
    }
}

pub(crate) const IPNET_TAGS: &[FieldTag] = &[untagged("ip", "IP"), untagged("mask", "Mask")];

/// `executor.NetworkEndpoint`: the container's presence on one network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkEndpoint {
    /// Untagged `Common`: `id` = PCI slot (decimal), `name` = interface alias.
    pub common: Common,
    /// `static`: the user supplied the IP.
    pub static_ip: bool,
    /// `ip`: address to assign; `None` ⇒ DHCP.
    pub ip: Option<IpNet>,
    /// `assigned` (RW): address actually configured.
    pub assigned: IpNet,
    /// `network`.
    pub network: ContainerNetwork,
    /// `ports`: `[hostport:]port[-range]/proto`.
    pub ports: Vec<String>,
    /// `internal`.
    pub internal: bool,
}

pub(crate) const ENDPOINT_TAGS: &[FieldTag] = &[
    untagged("common", "Common"),
    ro("static_ip", "static"),
    ro("ip", "ip"),
    rw("assigned", "assigned"),
    ro("network", "network"),
    ro("ports", "ports"),
    ro("internal", "internal"),
];

/// `executor.ContainerNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerNetwork {
    /// Untagged `Common`: `name` = network name.
    pub common: Common,
    /// `type` (RW): `bridge` or `external`.
    pub network_type: String,
    /// `destinations`: routes via the gateway.
    pub destinations: Vec<IpNet>,
    /// `gateway`.
    pub gateway: IpNet,
    /// `default`: default route via this network.
    pub default: bool,
    /// `dns`.
    #[serde(with = "crate::value::ip_vec")]
    pub nameservers: Vec<IpAddr>,
    /// `pools`.
    pub pools: Vec<IpRange>,
    /// `aliases` (hidden).
    pub aliases: Vec<String>,
    /// Untagged `TrustLevel`: see [`trust_level`].
    pub trust_level: i64,
    /// `assigned` (RW).
    pub assigned: AssignedNetwork,
}

pub(crate) const CONTAINER_NETWORK_TAGS: &[FieldTag] = &[
    untagged("common", "Common"),
    rw("network_type", "type"),
    ro("destinations", "destinations"),
    ro("gateway", "gateway"),
    ro("default", "default"),
    ro("nameservers", "dns"),
    ro("pools", "pools"),
    hidden("aliases", "aliases"),
    untagged("trust_level", "TrustLevel"),
    rw("assigned", "assigned"),
];

/// The anonymous `ContainerNetwork.Assigned` struct: what the guest actually uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssignedNetwork {
    /// `gateway` (RW).
    pub gateway: IpNet,
    /// `dns` (RW).
    #[serde(with = "crate::value::ip_vec")]
    pub nameservers: Vec<IpAddr>,
}

pub(crate) const ASSIGNED_TAGS: &[FieldTag] = &[rw("gateway", "gateway"), rw("nameservers", "dns")];

/// `ip.Range`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpRange {
    /// `first`.
    #[serde(with = "crate::value::ip_opt")]
    pub first: Option<IpAddr>,
    /// `last`.
    #[serde(with = "crate::value::ip_opt")]
    pub last: Option<IpAddr>,
}

pub(crate) const IP_RANGE_TAGS: &[FieldTag] = &[ro("first", "first"), ro("last", "last")];

/// `version.Build` (untagged fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Build {
    /// `Version`.
    pub version: String,
    /// `GitCommit`.
    pub git_commit: String,
    /// `BuildDate`.
    pub build_date: String,
    /// `BuildNumber`.
    pub build_number: String,
    /// `State`.
    pub state: String,
    /// `PluginVersion`: the container data version used by VCH migration.
    pub plugin_version: i64,
}

pub(crate) const BUILD_TAGS: &[FieldTag] = &[
    untagged("version", "Version"),
    untagged("git_commit", "GitCommit"),
    untagged("build_date", "BuildDate"),
    untagged("build_number", "BuildNumber"),
    untagged("state", "State"),
    untagged("plugin_version", "PluginVersion"),
];

/// Our additions, under `guestinfo.vice./tether/…` (RO, written by the host) and
/// `guestinfo.vice..tether.…` (RW, written by the guest). A VIC port layer has no field for
/// `tether` and ignores these keys; empty values are not written at all, so a config without
/// extensions encodes exactly like the original.
///
/// | field | key |
/// |---|---|
/// | `vch_client_key` | `guestinfo.vice./tether/vchclientkey` |
/// | `log_format` | `guestinfo.vice./tether/logformat` |
/// | `boot_stamps` | `guestinfo.vice..tether.bootstamps` (names), `guestinfo.vice..tether.bootstamps|<name>` |
/// | `stop_timeout` | `guestinfo.vice./tether/stoptimeout` |
/// | `panic_after_ms` | `guestinfo.vice./tether/panicafter` |
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TetherExtensions {
    /// OpenSSH public key line of the client allowed on the attach back-channel (instead of
    /// the original's `none` authentication).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vch_client_key: String,
    /// Session log format on ttyS2: `""` = ours, `"vic"` = the original iolog framing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_format: String,
    /// Boot timing: stage name ⇒ `CLOCK_BOOTTIME` in microseconds, written by the guest.
    pub boot_stamps: BTreeMap<String, i64>,
    /// Seconds between the stop signal and SIGKILL when the host halts the VM (`0` = the
    /// tether's default of 10 s, the original's fixed wait).
    #[serde(skip_serializing_if = "is_zero")]
    pub stop_timeout: i64,
    /// Test hook: the tether panics this many milliseconds after the first launch, so the
    /// end-to-end suite can prove the panic path flushes and unmounts volumes. `0` = never;
    /// a real port layer never sets it.
    #[serde(skip_serializing_if = "is_zero")]
    pub panic_after_ms: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

pub(crate) const TETHER_TAGS: &[FieldTag] = &[
    ro("vch_client_key", "vchclientkey"),
    ro("log_format", "logformat"),
    rw("boot_stamps", "bootstamps"),
    ro("stop_timeout", "stoptimeout"),
    ro("panic_after_ms", "panicafter"),
];

/// Tag tables of the container schema, by serde struct name.
pub(crate) fn registry(name: &str) -> Option<&'static [FieldTag]> {
    Some(match name {
        "ContainerConfig" => CONTAINER_TAGS,
        "Common" => COMMON_TAGS,
        "Diagnostics" => DIAGNOSTICS_TAGS,
        "SysLogConfig" => SYSLOG_TAGS,
        "ExitLog" => EXIT_LOG_TAGS,
        "SessionConfig" => SESSION_TAGS,
        "Detail" => DETAIL_TAGS,
        "Cmd" => CMD_TAGS,
        "MountSpec" => MOUNT_TAGS,
        "Url" => URL_TAGS,
        "IpNet" => IPNET_TAGS,
        "NetworkEndpoint" => ENDPOINT_TAGS,
        "ContainerNetwork" => CONTAINER_NETWORK_TAGS,
        "AssignedNetwork" => ASSIGNED_TAGS,
        "IpRange" => IP_RANGE_TAGS,
        "Build" => BUILD_TAGS,
        "TetherExtensions" => TETHER_TAGS,
        _ => return None,
    })
}
