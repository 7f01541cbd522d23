//! `/_ping`, `/version`, `/info` and `/events`.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::http::{json, streaming, ApiError, ApiResult, Body, Query};
use super::{ApiState, API_VERSION, MIN_API_VERSION};
use crate::engine::{ContainerStatus, Event, EventKind, ListOptions};

/// The product version the endpoint reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `HEAD/GET /_ping`: the headers the client negotiates with (without `Api-Version` it
/// falls back to API 1.24).
pub fn ping(method: &Method) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("Api-Version", API_VERSION)
        .header("OSType", "linux")
        .header("Docker-Experimental", "false")
        .header("Builder-Version", "1")
        .header("Cache-Control", "no-cache, no-store, must-revalidate")
        .header("Pragma", "no-cache")
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(if method == Method::HEAD {
            Body::Empty
        } else {
            Body::Full(Some(Bytes::from_static(b"OK")))
        })
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `GET /version`.
pub fn version() -> Response<Body> {
    let kernel = kernel_version();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "Platform": { "Name": "tether VCH (container VMs under QEMU)" },
            "Components": [{
                "Name": "Engine",
                "Version": VERSION,
                "Details": {
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": MIN_API_VERSION,
                    "Os": "linux",
                    "Arch": "amd64",
                    "KernelVersion": kernel,
                    "GitCommit": "",
                    "GoVersion": "",
                    "BuildTime": "",
                    "Experimental": "false",
                },
            }],
            "Version": VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "",
            "Os": "linux",
            "Arch": "amd64",
            "KernelVersion": kernel,
            "BuildTime": "",
        }),
    )
}

/// `GET /info`.
pub fn info(state: &ApiState) -> ApiResult {
    let all = state.engine.list(&ListOptions {
        all: true,
        ..Default::default()
    });
    let running = all.iter().filter(|v| v.running()).count();
    let images = state.engine.images().map_err(ApiError::from)?.len();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "ID": crate::engine::network_id(&state.engine.state().root().display().to_string()),
            "Containers": all.len(),
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": all.iter().filter(|v| v.status != ContainerStatus::Running).count(),
            "Images": images,
            "Driver": "qemu-vm",
            "DriverStatus": [["Isolation", "one VM per container"]],
            "Plugins": {
                "Volume": ["local"],
                "Network": ["bridge", "external"],
                "Authorization": null,
                "Log": ["tether"],
            },
            "MemoryLimit": true,
            "SwapLimit": false,
            "CpuCfsPeriod": false,
            "CpuCfsQuota": false,
            "CPUShares": false,
            "CPUSet": false,
            "PidsLimit": false,
            "IPv4Forwarding": true,
            "BridgeNfIptables": false,
            "BridgeNfIp6tables": false,
            "Debug": false,
            "NFd": 0,
            "OomKillDisable": false,
            "NGoroutines": state.streams.load(std::sync::atomic::Ordering::Relaxed),
            "SystemTime": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            "LoggingDriver": "tether",
            "CgroupDriver": "none",
            "CgroupVersion": "",
            "NEventsListener": 0,
            "KernelVersion": kernel_version(),
            "OperatingSystem": "tether VCH (container VMs under QEMU)",
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": "x86_64",
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {
                "AllowNondistributableArtifactsCIDRs": [],
                "AllowNondistributableArtifactsHostnames": [],
                "InsecureRegistryCIDRs": [],
                "IndexConfigs": {},
                "Mirrors": [],
            },
            "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "MemTotal": mem_total,
            "GenericResources": null,
            "DockerRootDir": state.engine.state().root().display().to_string(),
            "HttpProxy": "",
            "HttpsProxy": "",
            "NoProxy": "",
            "Name": host,
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": VERSION,
            "Runtimes": { "tether": { "path": "qemu-system-x86_64" } },
            "DefaultRuntime": "tether",
            "Swarm": {
                "NodeID": "",
                "NodeAddr": "",
                "LocalNodeState": "inactive",
                "ControlAvailable": false,
                "Error": "",
                "RemoteManagers": null,
            },
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": { "ID": "", "Expected": "" },
            "RuncCommit": { "ID": "", "Expected": "" },
            "InitCommit": { "ID": "", "Expected": "" },
            "SecurityOptions": [],
            "Warnings": [],
        }),
    ))
}

/// A time parameter of `events` (Unix seconds, possibly fractional): ns.
fn time_param(q: &Query, key: &str) -> Result<Option<u64>, ApiError> {
    match q.opt(key) {
        None | Some("") => Ok(None),
        Some(v) => {
            let secs: f64 = v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid {key}: {v:?}")))?;
            Ok(Some((secs.max(0.0) * 1e9) as u64))
        }
    }
}

/// docker's JSON for an event.
fn event_json(e: &Event) -> serde_json::Value {
    let mut v = serde_json::json!({
        "Type": e.kind.as_str(),
        "Action": e.action,
        "Actor": { "ID": e.id, "Attributes": e.attributes },
        "scope": "local",
        "time": e.time_ns / 1_000_000_000,
        "timeNano": e.time_ns,
    });
    if e.kind == EventKind::Container {
        v["status"] = e.action.clone().into();
        v["id"] = e.id.clone().into();
        if let Some(image) = e.attributes.get("image") {
            v["from"] = image.clone().into();
        }
    }
    v
}

fn event_matches(e: &Event, filters: &std::collections::BTreeMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(key, values)| {
        values.is_empty()
            || values.iter().any(|want| match key.as_str() {
                "type" => e.kind.as_str() == want,
                "event" => e.action == *want || e.action.starts_with(&format!("{want}:")),
                "container" => {
                    e.kind == EventKind::Container
                        && (e.id.starts_with(want.as_str())
                            || e.attributes.get("name") == Some(want))
                }
                "image" => e.attributes.get("image") == Some(want),
                "volume" => e.kind == EventKind::Volume && e.id == *want,
                "network" => {
                    e.kind == EventKind::Network
                        && (e.id.starts_with(want.as_str())
                            || e.attributes.get("name") == Some(want))
                }
                "label" => match want.split_once('=') {
                    Some((k, v)) => e.attributes.get(k).map(String::as_str) == Some(v),
                    None => e.attributes.contains_key(want.as_str()),
                },
                _ => false,
            })
    })
}

/// `GET /events`: remembered events since `since`, then live ones until `until` (or the
/// client goes away).
pub fn events(state: &ApiState, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let since = time_param(&q, "since")?;
    let until = time_param(&q, "until")?;
    let filters = q.filters()?;
    let now = crate::engine::now_ns();
    let (past, mut rx) = state.engine.events_since(since.unwrap_or(now));
    let (resp, tx) = streaming(StatusCode::OK, "application/json");
    let guard = state.stream_guard();
    tokio::spawn(async move {
        let _guard = guard;
        let send = |e: &Event| {
            let mut line = serde_json::to_vec(&event_json(e)).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        };
        for e in past.iter().filter(|e| event_matches(e, &filters)) {
            if until.is_some_and(|u| e.time_ns > u) || tx.send(send(e)).await.is_err() {
                return;
            }
        }
        loop {
            let wait_until = async {
                match until {
                    Some(u) => {
                        let left = u.saturating_sub(crate::engine::now_ns());
                        tokio::time::sleep(std::time::Duration::from_nanos(left)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = rx.recv() => match e {
                    Ok(e) if event_matches(&e, &filters) => {
                        if tx.send(send(&e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = wait_until => return,
            }
        }
    });
    Ok(resp)
}
