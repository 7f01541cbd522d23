//! `/containers/...`: create, list, inspect, start, stop, restart, kill, wait, attach,
//! logs, resize, rename, remove, prune (top, stats and archive are in `services.rs`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::http::{self, empty, json, read_json, rfc3339, streaming, ApiError, ApiResult, Query};
use super::http::{nullable, strslice};
use super::{stream, ApiState};
use crate::config::ContainerSpec;
use crate::engine::{
    network_id, ContainerStatus, ContainerView, CreateRequest, ListOptions, LogItem, LogOptions,
    RemoveOptions, WaitCondition,
};
use crate::network::{self, NetworkRequest};
use crate::state::Settings;
use crate::vm::RunOptions;
use crate::volume::{self, VolumeSource, VolumeSpec};

/// The body of `POST /containers/create`: the fields `docker run` sends (others are
/// ignored, as dockerd ignores what it does not know).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    hostname: String,
    domainname: String,
    user: String,
    tty: bool,
    open_stdin: bool,
    stdin_once: bool,
    #[serde(deserialize_with = "nullable")]
    env: Vec<String>,
    #[serde(deserialize_with = "strslice")]
    cmd: Option<Vec<String>>,
    #[serde(deserialize_with = "strslice")]
    entrypoint: Option<Vec<String>>,
    image: String,
    #[serde(deserialize_with = "nullable")]
    volumes: BTreeMap<String, serde_json::Value>,
    working_dir: String,
    #[serde(deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    stop_signal: String,
    stop_timeout: Option<i64>,
    #[serde(deserialize_with = "nullable")]
    host_config: HostConfig,
    #[serde(deserialize_with = "nullable")]
    networking_config: NetworkingConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfig {
    #[serde(deserialize_with = "nullable")]
    binds: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    mounts: Vec<MountBody>,
    network_mode: String,
    #[serde(deserialize_with = "nullable")]
    port_bindings: BTreeMap<String, Option<Vec<PortBinding>>>,
    publish_all_ports: bool,
    #[serde(deserialize_with = "nullable")]
    restart_policy: RestartPolicy,
    auto_remove: bool,
    memory: i64,
    nano_cpus: i64,
    cpu_count: i64,
    #[serde(deserialize_with = "nullable")]
    dns: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    extra_hosts: Vec<String>,
    privileged: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct PortBinding {
    host_ip: String,
    host_port: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RestartPolicy {
    name: String,
    maximum_retry_count: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct MountBody {
    #[serde(rename = "Type")]
    kind: String,
    source: String,
    target: String,
    read_only: bool,
    #[serde(deserialize_with = "nullable")]
    volume_options: VolumeOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct VolumeOptions {
    no_copy: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NetworkingConfig {
    #[serde(deserialize_with = "nullable")]
    endpoints_config: BTreeMap<String, Option<EndpointBody>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EndpointBody {
    #[serde(rename = "IPAMConfig", deserialize_with = "nullable")]
    ipam_config: IpamBody,
    #[serde(deserialize_with = "nullable")]
    aliases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IpamBody {
    #[serde(rename = "IPv4Address")]
    ipv4_address: String,
}

/// Turns a create body into the engine's request.
fn create_request(
    body: CreateBody,
    name: &str,
    timeout: Duration,
) -> Result<(CreateRequest, Vec<String>), ApiError> {
    fn bad(m: impl Into<String>) -> ApiError {
        ApiError::bad_request(m)
    }
    let mut warnings = Vec::new();
    if body.image.is_empty() {
        return Err(bad("No image specified"));
    }
    let hc = body.host_config;
    if hc.privileged {
        warnings.push("Privileged is ignored: a container VM has its own kernel".to_owned());
    }
    if hc.publish_all_ports {
        warnings.push(
            "PublishAllPorts (-P) is not supported: publish each port with -p HOST:CONTAINER"
                .to_owned(),
        );
    }
    let mut volumes: Vec<VolumeSpec> = hc
        .binds
        .iter()
        .map(|b| volume::parse_volume_spec(b).map_err(|e| bad(e.to_string())))
        .collect::<Result<_, _>>()?;
    for m in &hc.mounts {
        match m.kind.as_str() {
            "volume" => volumes.push(VolumeSpec {
                source: if m.source.is_empty() {
                    VolumeSource::Anonymous
                } else {
                    VolumeSource::Named(m.source.clone())
                },
                dest: volume::clean_dest(&m.target)
                    .ok_or_else(|| bad(format!("invalid mount target {:?}", m.target)))?,
                read_only: m.read_only,
                no_copy: m.volume_options.no_copy,
            }),
            other => {
                return Err(bad(format!(
                    "mount type {other:?} is not supported: a container VM cannot see this machine's files; use a volume"
                )))
            }
        }
    }
    // Anonymous volumes the request declares (`docker run -v /path` sends them here too).
    for dest in body.volumes.keys() {
        if !volumes.iter().any(|v| &v.dest == dest) {
            volumes.push(VolumeSpec {
                source: VolumeSource::Anonymous,
                dest: volume::clean_dest(dest)
                    .ok_or_else(|| bad(format!("invalid volume path {dest:?}")))?,
                read_only: false,
                no_copy: false,
            });
        }
    }
    let mode = hc.network_mode.clone();
    let networks = match mode.as_str() {
        "" | "default" | "bridge" => vec![network::BRIDGE.to_owned()],
        "none" => Vec::new(),
        "host" => {
            return Err(bad(
                "network mode host is not supported: each container is a VM with its own network stack",
            ))
        }
        m if m.starts_with("container:") => {
            return Err(bad(
                "network mode container:NAME is not supported: container VMs do not share network stacks",
            ))
        }
        name => vec![name.to_owned()],
    };
    let ip = body
        .networking_config
        .endpoints_config
        .values()
        .flatten()
        .map(|e| e.ipam_config.ipv4_address.as_str())
        .find(|a| !a.is_empty())
        .map(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| bad(format!("invalid IPv4 address {a:?}")))
        })
        .transpose()?;
    // `--network-alias` and compose's service names, per network. docker's client sends
    // the endpoint under the name given with `--network` (an ID works too).
    let aliases: BTreeMap<String, Vec<String>> = body
        .networking_config
        .endpoints_config
        .iter()
        .filter_map(|(net, e)| Some((net.clone(), e.as_ref()?.aliases.clone())))
        .filter(|(_, a)| !a.is_empty())
        .collect();
    let mut ports = Vec::new();
    for (container_port, bindings) in &hc.port_bindings {
        let (port, proto) = container_port
            .split_once('/')
            .unwrap_or((container_port.as_str(), "tcp"));
        for b in bindings.iter().flatten() {
            if b.host_port.is_empty() {
                return Err(bad(format!(
                    "publishing container port {container_port} needs a host port (-p HOSTPORT:{port}): QEMU cannot tell which port it would pick"
                )));
            }
            let ip = if b.host_ip.is_empty() {
                String::new()
            } else {
                format!("{}:", b.host_ip)
            };
            let spec = format!("{ip}{}:{port}/{proto}", b.host_port);
            ports.push(network::parse_port_spec(&spec).map_err(|e| bad(e.to_string()))?);
        }
    }
    let dns: Vec<Ipv4Addr> = hc
        .dns
        .iter()
        .map(|d| {
            d.parse()
                .map_err(|_| bad(format!("invalid DNS server {d:?} (IPv4 only)")))
        })
        .collect::<Result<_, _>>()?;
    let mut run = RunOptions::new(&body.image, &[]);
    run.timeout = timeout;
    run.volumes = volumes;
    run.network = NetworkRequest {
        networks,
        ip,
        ports,
        model: Default::default(),
        dns: dns.clone(),
        aliases,
    };
    if hc.memory > 0 {
        run.memory_mb = u32::try_from((hc.memory >> 20).max(64)).unwrap_or(u32::MAX);
    }
    let cpus = if hc.nano_cpus > 0 {
        (hc.nano_cpus + 999_999_999) / 1_000_000_000
    } else {
        hc.cpu_count.max(1)
    };
    run.spec = ContainerSpec {
        name: name.trim_start_matches('/').to_owned(),
        command: body.cmd.unwrap_or_default(),
        env: body.env,
        workdir: body.working_dir,
        user: body.user,
        hostname: body.hostname.clone(),
        domainname: body.domainname.clone(),
        tty: body.tty,
        open_stdin: body.open_stdin,
        ..Default::default()
    };
    run.settings = Settings {
        labels: body.labels,
        auto_remove: hc.auto_remove,
        restart_policy: hc.restart_policy.name,
        stop_timeout: body.stop_timeout.and_then(|t| u64::try_from(t).ok()),
        stop_signal: body.stop_signal,
        tty: body.tty,
        open_stdin: body.open_stdin,
        stdin_once: body.stdin_once,
        hostname: body.hostname,
        domainname: body.domainname,
        dns,
        extra_hosts: hc.extra_hosts,
        cpus: u32::try_from(cpus.clamp(1, 64)).unwrap_or(1),
        network_mode: if mode.is_empty() {
            "default".into()
        } else {
            mode
        },
        ..Default::default()
    };
    let mut req = CreateRequest::new(run);
    // An entrypoint of `[""]` (`--entrypoint ""`) clears the image's.
    req.entrypoint = body
        .entrypoint
        .map(|e| e.into_iter().filter(|s| !s.is_empty()).collect());
    Ok((req, warnings))
}

/// `POST /containers/create`.
pub async fn create(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let name = q.get("name").to_owned();
    let body: CreateBody = read_json(req).await?;
    let (request, mut warnings) = create_request(body, &name, state.container_timeout)?;
    let created = state.engine.create(request).await?;
    warnings.extend(created.warnings);
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "Id": created.id, "Warnings": warnings }),
    ))
}

/// docker's "Up 5 seconds" / "2 minutes" wording.
fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        _ if s < 48 * 3600 => format!("{} hours", s / 3600),
        _ if s < 7 * 24 * 3600 * 2 => format!("{} days", s / (24 * 3600)),
        _ if s < 30 * 24 * 3600 * 3 => format!("{} weeks", s / (7 * 24 * 3600)),
        _ if s < 365 * 24 * 3600 * 2 => format!("{} months", s / (30 * 24 * 3600)),
        _ => format!("{} years", s / (365 * 24 * 3600)),
    }
}

fn now_secs() -> i64 {
    (crate::engine::now_ns() / 1_000_000_000) as i64
}

fn status_text(v: &ContainerView) -> String {
    match v.status {
        ContainerStatus::Created => "Created".into(),
        ContainerStatus::Running => {
            let since = if v.started_at > 0 {
                v.started_at
            } else {
                v.meta.created
            };
            format!("Up {}", human_duration(now_secs() - since))
        }
        ContainerStatus::Exited if v.timed_out() => format!(
            "Exited ({}) timed out after {} s",
            v.exit_code, v.meta.timeout_secs
        ),
        ContainerStatus::Exited => {
            let at = if v.finished_at > 0 {
                v.finished_at
            } else {
                v.meta.created
            };
            format!(
                "Exited ({}) {} ago",
                v.exit_code,
                human_duration(now_secs() - at)
            )
        }
    }
}

/// The container's command without its entrypoint (docker's `Config.Cmd`).
fn cmd_of(v: &ContainerView) -> Vec<String> {
    v.meta
        .command
        .iter()
        .skip(v.meta.settings.entrypoint.len())
        .cloned()
        .collect()
}

fn port_bindings(v: &ContainerView) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some(nic) = v.meta.nics.first() {
        for p in &nic.ports {
            for k in 0..p.count {
                out.insert(
                    format!("{}/{}", p.container_port + k, p.proto.as_str()),
                    serde_json::json!([{
                        "HostIp": p.host_ip.to_string(),
                        "HostPort": (p.host_port + k).to_string(),
                    }]),
                );
            }
        }
    }
    out
}

/// Per network: (name, assigned address, prefix, gateway, MAC).
fn endpoints(v: &ContainerView) -> Vec<(String, String, u8, String, String)> {
    let show = |ip: Option<std::net::IpAddr>| match ip.map(|i| i.to_canonical()) {
        Some(i) if !i.is_unspecified() => i.to_string(),
        _ => String::new(),
    };
    v.meta
        .nics
        .iter()
        .map(|nic| {
            let ep = v
                .config
                .as_ref()
                .and_then(|c| c.networks.get(&nic.network.name));
            let (ip, prefix, gw) = match ep {
                Some(e) if v.running() => (
                    show(e.assigned.ip),
                    e.assigned.prefix_len().unwrap_or(0),
                    show(e.network.assigned.gateway.ip),
                ),
                _ => (String::new(), 0, String::new()),
            };
            let prefix = if ip.is_empty() { 0 } else { prefix };
            (nic.network.name.clone(), ip, prefix, gw, nic.mac.clone())
        })
        .collect()
}

fn networks_json(v: &ContainerView) -> serde_json::Value {
    let mut nets = serde_json::Map::new();
    for ((name, ip, prefix, gw, mac), nic) in endpoints(v).into_iter().zip(&v.meta.nics) {
        // What the network's DNS answers besides the name: the aliases and, on a
        // user-defined network, the short ID (as docker lists them; compose looks for it).
        let aliases = if nic.network.is_builtin() {
            serde_json::Value::Null
        } else {
            let mut a = nic.aliases.clone();
            a.push(v.meta.id.chars().take(12).collect());
            serde_json::json!(a)
        };
        nets.insert(
            name.clone(),
            serde_json::json!({
                "IPAMConfig": nic.ip.map(|ip| serde_json::json!({ "IPv4Address": ip.to_string() })),
                "Links": null,
                "Aliases": aliases,
                "NetworkID": network_id(&name),
                "EndpointID": if ip.is_empty() { String::new() } else { network_id(&format!("{name}/{}", v.meta.id)) },
                "Gateway": gw,
                "IPAddress": ip,
                "IPPrefixLen": prefix,
                "IPv6Gateway": "",
                "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0,
                "MacAddress": mac,
                "DriverOpts": null,
            }),
        );
    }
    serde_json::Value::Object(nets)
}

fn mounts_json(v: &ContainerView) -> serde_json::Value {
    let mut m = crate::inspect::mounts(&v.meta);
    if let Some(list) = m.as_array_mut() {
        for item in list.iter_mut() {
            if let Some(o) = item.as_object_mut() {
                o.insert("Propagation".into(), "".into());
            }
        }
    }
    m
}

/// docker's `ContainerJSON` (`docker inspect`).
fn inspect_json(v: &ContainerView) -> serde_json::Value {
    let cfg = v.config.clone().unwrap_or_default();
    let primary = v.primary().cloned().unwrap_or_default();
    let s = &v.meta.settings;
    let running = v.running();
    let pid = if running {
        v.meta.qemu_pid.unwrap_or(0)
    } else {
        0
    };
    let error = if v.timed_out() {
        format!(
            "the VM was killed at its time limit ({} s)",
            v.meta.timeout_secs
        )
    } else if v.launch_failed() {
        v.started.clone()
    } else {
        String::new()
    };
    let eps = endpoints(v);
    let (ip, prefix, gw, mac) = eps
        .first()
        .map(|(_, ip, p, gw, mac)| (ip.clone(), *p, gw.clone(), mac.clone()))
        .unwrap_or_default();
    let hostname = if cfg.hostname.is_empty() {
        v.meta.id.chars().take(12).collect()
    } else {
        cfg.hostname.clone()
    };
    let binds: Vec<String> = v
        .meta
        .volumes
        .iter()
        .filter(|a| !a.volume.anonymous)
        .map(|a| {
            format!(
                "{}:{}{}",
                a.volume.name,
                a.dest,
                if a.read_only { ":ro" } else { "" }
            )
        })
        .collect();
    let volumes: serde_json::Map<String, serde_json::Value> = v
        .meta
        .volumes
        .iter()
        .filter(|a| a.volume.anonymous)
        .map(|a| (a.dest.clone(), serde_json::json!({})))
        .collect();
    let exposed: serde_json::Map<String, serde_json::Value> = port_bindings(v)
        .keys()
        .chain(&s.exposed_ports)
        .map(|k| (k.clone(), serde_json::json!({})))
        .collect();
    let log = v.dir.join("output.log").display().to_string();
    let state = serde_json::json!({
        "Status": v.status.as_str(),
        "Running": running,
        "Paused": false,
        "Restarting": false,
        "OOMKilled": v.oom_killed,
        "Dead": false,
        "Pid": pid,
        "ExitCode": v.exit_code,
        "Error": error,
        "StartedAt": rfc3339(v.started_at),
        "FinishedAt": if running { rfc3339(0) } else { rfc3339(v.finished_at) },
    });
    let host_config = serde_json::json!({
        "Binds": binds,
        "NetworkMode": if s.network_mode.is_empty() { "default".to_owned() } else { s.network_mode.clone() },
        "PortBindings": port_bindings(v),
        "RestartPolicy": {
            "Name": if s.restart_policy.is_empty() { "no" } else { s.restart_policy.as_str() },
            "MaximumRetryCount": 0,
        },
        "AutoRemove": s.auto_remove,
        "Memory": u64::from(v.meta.memory_mb) << 20,
        "NanoCpus": u64::from(s.cpus.max(1)) * 1_000_000_000,
        "Dns": s.dns,
        "ExtraHosts": s.extra_hosts,
        "LogConfig": { "Type": "tether", "Config": {} },
        "Privileged": false,
        "Runtime": "tether",
    });
    let user = if primary.group.is_empty() {
        primary.user.clone()
    } else {
        format!("{}:{}", primary.user, primary.group)
    };
    let stop_signal = if primary.stop_signal.is_empty() {
        "SIGTERM".to_owned()
    } else {
        format!("SIG{}", primary.stop_signal.trim_start_matches("SIG"))
    };
    let entrypoint = if s.entrypoint.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!(s.entrypoint)
    };
    let config = serde_json::json!({
        "Hostname": hostname,
        "Domainname": cfg.domainname,
        "User": user,
        "AttachStdin": s.open_stdin,
        "AttachStdout": true,
        "AttachStderr": true,
        "ExposedPorts": exposed,
        "Tty": v.tty(),
        "OpenStdin": primary.open_stdin,
        "StdinOnce": s.stdin_once,
        "Env": primary.cmd.env,
        "Cmd": cmd_of(v),
        "Image": v.meta.image,
        "Volumes": volumes,
        "WorkingDir": primary.cmd.dir,
        "Entrypoint": entrypoint,
        "OnBuild": null,
        "Labels": s.labels,
        "StopSignal": stop_signal,
        "StopTimeout": s.stop_timeout,
    });
    let network_settings = serde_json::json!({
        "Bridge": "",
        "SandboxID": "",
        "HairpinMode": false,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": port_bindings(v),
        "SandboxKey": "",
        "SecondaryIPAddresses": null,
        "SecondaryIPv6Addresses": null,
        "EndpointID": "",
        "Gateway": gw,
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": ip,
        "IPPrefixLen": prefix,
        "IPv6Gateway": "",
        "MacAddress": mac,
        "Networks": networks_json(v),
    });
    // The store image's ID; a directory image has none, its path stands in.
    let image = if v.meta.image_id.is_empty() {
        v.meta.image.clone()
    } else {
        v.meta.image_id.clone()
    };
    serde_json::json!({
        "Id": v.meta.id,
        "Created": rfc3339(v.meta.created),
        "Path": v.meta.command.first().cloned().unwrap_or_default(),
        "Args": v.meta.command.iter().skip(1).collect::<Vec<_>>(),
        "State": state,
        "Image": image,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": log,
        "Name": format!("/{}", v.meta.name),
        "RestartCount": v.meta.starts.saturating_sub(1),
        "Driver": "qemu-vm",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": host_config,
        "GraphDriver": { "Name": "qemu-vm", "Data": { "RootDisk": v.meta.disk } },
        "Mounts": mounts_json(v),
        "Config": config,
        "NetworkSettings": network_settings,
    })
}

/// docker's list entry (`docker ps`).
fn summary_json(v: &ContainerView) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = v
        .meta
        .nics
        .first()
        .map(|nic| {
            nic.ports
                .iter()
                .flat_map(|p| {
                    (0..p.count).map(move |k| {
                        serde_json::json!({
                            "IP": p.host_ip.to_string(),
                            "PrivatePort": p.container_port + k,
                            "PublicPort": p.host_port + k,
                            "Type": p.proto.as_str(),
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "Id": v.meta.id,
        "Names": [format!("/{}", v.meta.name)],
        "Image": v.meta.image,
        "ImageID": if v.meta.image_id.is_empty() { &v.meta.image } else { &v.meta.image_id },
        "Command": v.meta.command.join(" "),
        "Created": v.meta.created,
        "Ports": ports,
        "Labels": v.meta.settings.labels,
        "State": v.status.as_str(),
        "Status": status_text(v),
        "HostConfig": { "NetworkMode": if v.meta.settings.network_mode.is_empty() { "default" } else { v.meta.settings.network_mode.as_str() } },
        "NetworkSettings": { "Networks": networks_json(v) },
        "Mounts": mounts_json(v),
    })
}

/// `GET /containers/json`.
pub fn list(state: &ApiState, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let limit = q
        .int::<i64>("limit")?
        .filter(|n| *n > 0)
        .map(|n| n as usize);
    let filters = q.filters()?;
    for key in filters.keys() {
        if !["name", "id", "status", "label", "ancestor"].contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
        }
    }
    let all = q.flag("all")?;
    let views = state.engine.list(&ListOptions {
        all,
        limit,
        filters,
    });
    Ok(json(
        StatusCode::OK,
        &views.iter().map(summary_json).collect::<Vec<_>>(),
    ))
}

/// `GET /containers/{id}/json`.
pub fn inspect(state: &ApiState, id: &str) -> ApiResult {
    let v = state.engine.inspect(id)?;
    Ok(json(StatusCode::OK, &inspect_json(&v)))
}

/// `POST /containers/{id}/start`.
pub async fn start(state: &ApiState, id: &str) -> ApiResult {
    state.engine.start(id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /containers/{id}/stop?t=`.
pub async fn stop(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let t = Query::parse(req).int::<i64>("t")?.map(|t| t.max(0) as u64);
    state.engine.stop(id, t).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /containers/{id}/restart?t=`.
pub async fn restart(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let t = Query::parse(req).int::<i64>("t")?.map(|t| t.max(0) as u64);
    state.engine.restart(id, t).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /containers/{id}/kill?signal=`.
pub async fn kill(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    state.engine.kill(id, q.get("signal")).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /containers/{id}/wait?condition=`: the headers at once, the status at the end.
pub fn wait(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let condition: WaitCondition = Query::parse(req).get("condition").parse()?;
    // A missing container is a 404 before the stream starts.
    state.engine.resolve(id)?;
    let (resp, tx) = streaming(StatusCode::OK, "application/json");
    let engine = state.engine.clone();
    let id = id.to_owned();
    let guard = state.stream_guard();
    tokio::spawn(async move {
        let _guard = guard;
        let result = tokio::select! {
            r = engine.wait(&id, condition) => r,
            // The client went away: nobody waits any more.
            _ = tx.closed() => return,
        };
        let body = match result {
            Ok(code) => serde_json::json!({ "StatusCode": code, "Error": null }),
            Err(e) => {
                serde_json::json!({ "StatusCode": -1, "Error": { "Message": e.to_string() } })
            }
        };
        let mut line = serde_json::to_vec(&body).unwrap_or_default();
        line.push(b'\n');
        let _ = tx.send(Bytes::from(line)).await;
    });
    Ok(resp)
}

/// `POST /containers/{id}/attach`: hijacked; the 101 goes out before the container starts.
pub async fn attach(state: &ApiState, id: &str, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let stream_on = q.flag("stream")?;
    let logs = q.flag("logs")?;
    let stdin = q.flag("stdin")?;
    let stdout = q.flag("stdout")?;
    let stderr = q.flag("stderr")?;
    let detach_keys = match q.opt("detachKeys") {
        Some(k) if !k.is_empty() => Some(crate::engine::DetachKeys::parse(k)?),
        _ => Some(crate::engine::DetachKeys::default()),
    };
    let view = state.engine.inspect(id)?;
    let tty = view.tty();
    let history = if logs {
        Some(state.engine.logs(
            id,
            LogOptions {
                stdout,
                stderr,
                ..Default::default()
            },
        )?)
    } else {
        None
    };
    let guard = state.stream_guard();
    let streams = stream::Streams {
        tty,
        stdin,
        stdout,
        stderr,
        detach_keys,
    };
    if stream_on && !stdin {
        // Output only: read from the output log, so the launch is not held for it.
        let (_, output) = state.engine.output(id)?;
        return stream::hijack(req, move |io| async move {
            let _guard = guard;
            stream::output_session(io, history.map(|(_, rx)| rx), output, streams).await
        });
    }
    let pending = if stream_on {
        Some(
            state
                .engine
                .attach(id, crate::engine::AttachOptions { stdin })?,
        )
    } else {
        None
    };
    stream::hijack(req, move |io| async move {
        let _guard = guard;
        stream::attach_session(io, history.map(|(_, rx)| rx), pending, streams).await
    })
}

/// `GET /containers/{id}/logs`.
pub fn logs(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let (stdout, stderr) = (q.flag("stdout")?, q.flag("stderr")?);
    if !stdout && !stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let time = |key: &str| -> Result<u64, ApiError> {
        match q.get(key) {
            "" | "0" => Ok(0),
            v => crate::logs::parse_since(v, crate::engine::now_ns())
                .map_err(|e| ApiError::bad_request(format!("invalid {key} {e}"))),
        }
    };
    let tail = match q.get("tail") {
        "" | "all" => None,
        n => match n.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => return Err(ApiError::bad_request(format!("invalid tail {n:?}"))),
        },
    };
    let opts = LogOptions {
        follow: q.flag("follow")?,
        stdout,
        stderr,
        since_ns: time("since")?,
        until_ns: time("until")?,
        tail,
    };
    let timestamps = q.flag("timestamps")?;
    let (view, mut lines) = state.engine.logs(id, opts)?;
    let tty = view.tty();
    let (resp, tx) = streaming(
        StatusCode::OK,
        if tty {
            "application/vnd.docker.raw-stream"
        } else {
            "application/vnd.docker.multiplexed-stream"
        },
    );
    let guard = state.stream_guard();
    tokio::spawn(async move {
        let _guard = guard;
        loop {
            let item = tokio::select! {
                item = lines.recv() => item,
                // The client went away while no line came: stop the reader.
                _ = tx.closed() => return,
            };
            let Some(LogItem::Line(l)) = item else { break };
            let mut payload = Vec::new();
            if timestamps {
                payload.extend_from_slice(crate::logs::format_time(l.time_ns).as_bytes());
                payload.push(b' ');
            }
            payload.extend_from_slice(&l.bytes);
            let chunk = if tty {
                Bytes::from(payload)
            } else {
                http::frame(
                    if l.stream == iolog::Stream::Stderr {
                        2
                    } else {
                        1
                    },
                    &payload,
                )
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}

/// The `h` and `w` parameters of a resize.
pub fn size_param(req: &Request<Incoming>) -> Result<backchannel::requests::WindowSize, ApiError> {
    let q = Query::parse(req);
    let h = q.int::<u32>("h")?.unwrap_or(0);
    let w = q.int::<u32>("w")?.unwrap_or(0);
    Ok(backchannel::requests::WindowSize {
        cols: w,
        rows: h,
        width_px: 0,
        height_px: 0,
    })
}

/// `POST /containers/{id}/resize?h=&w=`.
pub async fn resize(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    state.engine.resize(id, size_param(req)?).await?;
    Ok(empty(StatusCode::OK))
}

/// `POST /containers/{id}/rename?name=`.
pub fn rename(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    state.engine.rename(id, q.get("name"))?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `DELETE /containers/{id}?force=&v=`.
pub async fn remove(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let opts = RemoveOptions {
        force: q.flag("force")?,
        volumes: q.flag("v")?,
    };
    state.engine.remove(id, opts).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /containers/prune`: removes every stopped container.
pub async fn prune(state: &ApiState) -> ApiResult {
    let mut deleted = Vec::new();
    for v in state.engine.list(&ListOptions {
        all: true,
        ..Default::default()
    }) {
        if v.running() {
            continue;
        }
        if state
            .engine
            .remove(&v.meta.id, RemoveOptions::default())
            .await
            .is_ok()
        {
            deleted.push(v.meta.id.clone());
        }
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "ContainersDeleted": deleted, "SpaceReclaimed": 0 }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_run_body_becomes_a_request() {
        // What docker 20.10 sends for
        // `docker run --rm --name web -e A=1 -v data:/data -p 8080:80 --network n1 busybox sh -c 'x'`
        // (trimmed of the fields this endpoint ignores).
        let body = r#"{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":true,"AttachStderr":true,"ExposedPorts":{"80/tcp":{}},"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":["A=1"],"Cmd":["sh","-c","x"],"Image":"busybox","Volumes":{},"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":{"k":"v"},"HostConfig":{"Binds":["data:/data"],"ContainerIDFile":"","LogConfig":{"Type":"","Config":{}},"NetworkMode":"n1","PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8080"}]},"RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":true,"Dns":[],"DnsOptions":[],"ExtraHosts":null,"Memory":0,"NanoCpus":0,"Mounts":null},"NetworkingConfig":{"EndpointsConfig":{"n1":{"IPAMConfig":null,"Links":null,"Aliases":null}}}}"#;
        let body: CreateBody = serde_json::from_str(body).unwrap();
        let (req, warnings) = create_request(body, "web", Duration::from_secs(60)).unwrap();
        assert!(warnings.is_empty());
        let run = &req.run;
        assert_eq!(run.spec.name, "web");
        assert_eq!(run.spec.command, vec!["sh", "-c", "x"]);
        assert_eq!(run.spec.env, vec!["A=1"]);
        assert_eq!(run.network.networks, vec!["n1"]);
        assert_eq!(run.network.ports[0].to_string(), "127.0.0.1:8080->80/tcp");
        assert_eq!(run.volumes[0].dest, "/data");
        assert!(run.settings.auto_remove);
        assert_eq!(run.settings.labels["k"], "v");
        assert!(req.entrypoint.is_none());
    }

    #[test]
    fn refusals_name_the_problem() {
        let host: CreateBody =
            serde_json::from_str(r#"{"Image":"busybox","HostConfig":{"NetworkMode":"host"}}"#)
                .unwrap();
        let e = create_request(host, "", Duration::from_secs(1)).unwrap_err();
        assert!(e.message.contains("host"), "{}", e.message);
        let bind: CreateBody =
            serde_json::from_str(r#"{"Image":"busybox","HostConfig":{"Binds":["/etc:/x"]}}"#)
                .unwrap();
        assert_eq!(
            create_request(bind, "", Duration::from_secs(1))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        let noimage: CreateBody = serde_json::from_str(r#"{"Cmd":"true"}"#).unwrap();
        assert!(create_request(noimage, "", Duration::from_secs(1)).is_err());
        // A string Cmd is a one-element list.
        let s: CreateBody = serde_json::from_str(r#"{"Image":"b","Cmd":"true"}"#).unwrap();
        assert_eq!(s.cmd, Some(vec!["true".to_owned()]));
    }

    #[test]
    fn durations_read_as_dockers() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(5000), "About an hour");
        assert_eq!(human_duration(7 * 3600), "7 hours");
    }
}
