//! `/volumes/...`: over the volume store (`local` driver: ext4 disks; `nfs` for exports).

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::http::nullable;
use super::http::{empty, json, read_json, rfc3339, ApiError, ApiResult, Query};
use super::ApiState;
use crate::engine::VolumeView;
use crate::volume::{self, CreateVolume};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    #[serde(deserialize_with = "nullable")]
    driver_opts: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
}

fn volume_json(v: &VolumeView) -> serde_json::Value {
    let mut options = serde_json::Map::new();
    match &v.volume.backing {
        volume::Backing::Disk { label, size } => {
            options.insert("size".into(), volume::format_size(*size).into());
            options.insert("label".into(), label.clone().into());
        }
        volume::Backing::Nfs {
            host,
            path,
            options: o,
        } => {
            options.insert("type".into(), "nfs".into());
            options.insert("device".into(), format!("{host}:{path}").into());
            if !o.is_empty() {
                options.insert("o".into(), o.clone().into());
            }
        }
    }
    serde_json::json!({
        "Name": v.volume.name,
        "Driver": "local",
        "Mountpoint": v.mountpoint,
        "CreatedAt": rfc3339(v.volume.created),
        "Labels": {},
        "Scope": "local",
        "Options": options,
        "UsageData": { "Size": -1, "RefCount": v.used_by.len() },
    })
}

/// `POST /volumes/create`: driver `local` with the option `size` (and dockerd's
/// `type=nfs,device=HOST:/PATH,o=OPTIONS` for an NFS export); no name = anonymous-style
/// random name.
pub async fn create(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let b: CreateBody = read_json(req).await?;
    if !matches!(b.driver.as_str(), "" | "local") {
        return Err(ApiError::bad_request(format!(
            "volume driver {:?} is not available (local)",
            b.driver
        )));
    }
    let _ = b.labels;
    let mut size = None;
    let mut nfs = None;
    let mut nfs_options = None;
    let mut kind = String::new();
    for (k, v) in &b.driver_opts {
        match k.as_str() {
            "size" => {
                size =
                    Some(volume::parse_size(v).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            "type" => kind = v.clone(),
            "device" => nfs = Some(v.trim_start_matches(':').to_owned()),
            "o" => {
                // dockerd's NFS form carries `addr=HOST` in o; the tether fills in addr.
                nfs_options = Some(v.clone());
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown volume option {other:?} (size, or type=nfs with device and o)"
                )))
            }
        }
    }
    if kind == "nfs" {
        if nfs.is_none() {
            return Err(ApiError::bad_request("type=nfs needs device=HOST:/PATH"));
        }
    } else if !kind.is_empty() {
        return Err(ApiError::bad_request(format!(
            "volume type {kind:?} is not supported (nfs)"
        )));
    } else if nfs.is_some() || nfs_options.is_some() {
        return Err(ApiError::bad_request("device and o are for type=nfs"));
    }
    let name = if b.name.is_empty() {
        crate::records::new_id()
    } else {
        b.name
    };
    // Creating a volume that exists returns it, as dockerd does.
    if let Ok(v) = state.engine.volume(&name) {
        return Ok(json(StatusCode::CREATED, &volume_json(&v)));
    }
    let v = state.engine.volume_create(&CreateVolume {
        name,
        size,
        label: None,
        nfs,
        nfs_options,
        anonymous: false,
    })?;
    Ok(json(StatusCode::CREATED, &volume_json(&v)))
}

/// `GET /volumes` (filters `name`, `dangling`).
pub fn list(state: &ApiState, req: &Request<Incoming>) -> ApiResult {
    let filters = Query::parse(req).filters()?;
    let all: Vec<serde_json::Value> = state
        .engine
        .volumes()
        .iter()
        .filter(|v| {
            filters.iter().all(|(k, vals)| {
                vals.iter().any(|want| match k.as_str() {
                    "name" => v.volume.name.contains(want.as_str()),
                    "dangling" => (want == "true" || want == "1") == v.used_by.is_empty(),
                    "driver" => want == "local",
                    _ => false,
                })
            })
        })
        .map(volume_json)
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "Volumes": all, "Warnings": [] }),
    ))
}

/// `GET /volumes/{name}`.
pub fn inspect(state: &ApiState, name: &str) -> ApiResult {
    Ok(json(
        StatusCode::OK,
        &volume_json(&state.engine.volume(name)?),
    ))
}

/// `DELETE /volumes/{name}?force=`.
pub fn remove(state: &ApiState, name: &str, req: &Request<Incoming>) -> ApiResult {
    let force = Query::parse(req).flag("force")?;
    state.engine.volume_remove(name, force)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /volumes/prune`.
pub fn prune(state: &ApiState) -> ApiResult {
    let (deleted, bytes) = state.engine.volume_prune()?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "VolumesDeleted": deleted, "SpaceReclaimed": bytes }),
    ))
}
