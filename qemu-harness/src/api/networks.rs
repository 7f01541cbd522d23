//! `/networks/...`: over the network store.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::http::nullable;
use super::http::{empty, json, read_json, rfc3339, ApiError, ApiResult, Query};
use super::ApiState;
use crate::engine::NetworkView;
use crate::network::{self, CreateNetwork, NetType};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    internal: bool,
    #[serde(rename = "IPAM", deserialize_with = "nullable")]
    ipam: Ipam,
    #[serde(deserialize_with = "nullable")]
    options: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Ipam {
    driver: String,
    #[serde(deserialize_with = "nullable")]
    config: Vec<IpamConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct IpamConfig {
    subnet: String,
    gateway: String,
    #[serde(rename = "IPRange")]
    ip_range: String,
}

fn network_json(v: &NetworkView) -> serde_json::Value {
    let n = &v.network;
    let containers: serde_json::Map<String, serde_json::Value> = v
        .containers
        .iter()
        .zip(&v.endpoints)
        .filter(|((_, _, running), _)| *running)
        .map(|((id, name, _), nic)| {
            let ip = nic
                .address()
                .map(|a| format!("{a}/{}", n.subnet.prefix))
                .unwrap_or_default();
            (
                id.clone(),
                serde_json::json!({
                    "Name": name,
                    "EndpointID": crate::engine::network_id(&format!("{}/{id}", n.name)),
                    "MacAddress": nic.mac,
                    "IPv4Address": ip,
                    "IPv6Address": "",
                }),
            )
        })
        .collect();
    serde_json::json!({
        "Name": n.name,
        "Id": v.id,
        "Created": rfc3339(n.created),
        "Scope": "local",
        "Driver": if n.kind == NetType::External { "external" } else { "bridge" },
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{ "Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string() }],
        },
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": {},
        "Labels": {},
    })
}

/// `POST /networks/create` (driver `bridge`, IPAM subnet and gateway).
pub async fn create(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let b: CreateBody = read_json(req).await?;
    let kind = match b.driver.as_str() {
        "" | "bridge" => NetType::Bridge,
        "external" => NetType::External,
        other => {
            return Err(ApiError::bad_request(format!(
                "network driver {other:?} is not available (bridge, external)"
            )))
        }
    };
    if b.internal {
        return Err(ApiError::bad_request(
            "internal networks are not supported: every network has a gateway to this machine",
        ));
    }
    let _ = (&b.ipam.driver, &b.options, &b.labels);
    if b.ipam.config.len() > 1 {
        return Err(ApiError::bad_request(
            "one IPAM config (subnet) per network",
        ));
    }
    let cfg = b.ipam.config.first();
    if cfg.is_some_and(|c| !c.ip_range.is_empty()) {
        return Err(ApiError::bad_request(
            "IPRange is not supported: containers get the subnet's free addresses in order",
        ));
    }
    let bad = |e: network::NetworkError| ApiError::bad_request(e.to_string());
    let subnet = cfg
        .map(|c| c.subnet.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(bad))
        .transpose()?;
    let gateway = cfg
        .map(|c| c.gateway.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gateway {s:?}")))
        })
        .transpose()?;
    let v = state.engine.network_create(&CreateNetwork {
        name: b.name,
        kind,
        subnet,
        gateway,
        dns: Vec::new(),
        routes: Vec::new(),
        trust: None,
    })?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "Id": v.id, "Warning": "" }),
    ))
}

/// `GET /networks` (filters `name`, `id`, `driver`, `type`).
pub fn list(state: &ApiState, req: &Request<Incoming>) -> ApiResult {
    let filters = Query::parse(req).filters()?;
    let all: Vec<serde_json::Value> = state
        .engine
        .networks()
        .iter()
        .filter(|v| {
            filters.iter().all(|(k, vals)| {
                vals.iter().any(|want| match k.as_str() {
                    "name" => v.network.name.contains(want.as_str()),
                    "id" => v.id.starts_with(want.as_str()),
                    "driver" => network_json(v)["Driver"] == want.as_str(),
                    "type" => (want == "builtin") == v.network.is_builtin(),
                    _ => false,
                })
            })
        })
        .map(network_json)
        .collect();
    Ok(json(StatusCode::OK, &all))
}

/// `GET /networks/{id}`.
pub fn inspect(state: &ApiState, id: &str) -> ApiResult {
    Ok(json(
        StatusCode::OK,
        &network_json(&state.engine.network(id)?),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectBody {
    container: String,
    #[serde(deserialize_with = "nullable")]
    endpoint_config: EndpointConfig,
    force: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EndpointConfig {
    #[serde(deserialize_with = "nullable")]
    aliases: Vec<String>,
    #[serde(rename = "IPAMConfig", deserialize_with = "nullable")]
    ipam_config: IpamAddress,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IpamAddress {
    #[serde(rename = "IPv4Address")]
    ipv4_address: String,
}

/// `POST /networks/{id}/connect`: a running container gets a NIC hot-added.
pub async fn connect(state: &ApiState, id: &str, req: Request<Incoming>) -> ApiResult {
    let b: ConnectBody = read_json(req).await?;
    if b.container.is_empty() {
        return Err(ApiError::bad_request("no container given"));
    }
    let ip = match b.endpoint_config.ipam_config.ipv4_address.as_str() {
        "" => None,
        a => Some(
            a.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid IPv4 address {a:?}")))?,
        ),
    };
    state
        .engine
        .network_connect(
            id,
            &b.container,
            crate::engine::ConnectOptions {
                aliases: b.endpoint_config.aliases,
                ip,
            },
        )
        .await?;
    Ok(empty(StatusCode::OK))
}

/// `POST /networks/{id}/disconnect`: a running container has its NIC hot-removed.
pub async fn disconnect(state: &ApiState, id: &str, req: Request<Incoming>) -> ApiResult {
    let b: ConnectBody = read_json(req).await?;
    if b.container.is_empty() {
        return Err(ApiError::bad_request("no container given"));
    }
    // `Force` is for endpoints of containers that are gone, which this VCH does not keep.
    let _ = b.force;
    state.engine.network_disconnect(id, &b.container).await?;
    Ok(empty(StatusCode::OK))
}

/// `DELETE /networks/{id}`.
pub fn remove(state: &ApiState, id: &str) -> ApiResult {
    state.engine.network_remove(id)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /networks/prune`.
pub fn prune(state: &ApiState) -> ApiResult {
    let deleted = state.engine.network_prune()?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "NetworksDeleted": deleted }),
    ))
}
