//! `/images/...`: what can be run. There is no registry to pull from.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::http::{json, rfc3339, ApiError, ApiResult, Query};
use super::ApiState;
use crate::engine::ImageView;

fn summary(i: &ImageView) -> serde_json::Value {
    serde_json::json!({
        "Id": i.id,
        "ParentId": "",
        "RepoTags": i.repo_tags,
        "RepoDigests": [],
        "Created": i.created,
        "Size": i.size,
        "SharedSize": -1,
        "VirtualSize": i.size,
        "Labels": {},
        "Containers": i.containers,
    })
}

/// `GET /images/json`.
pub fn list(state: &ApiState) -> ApiResult {
    let all = state.engine.images()?;
    Ok(json(
        StatusCode::OK,
        &all.iter().map(summary).collect::<Vec<_>>(),
    ))
}

/// `GET /images/{name}/json`.
pub fn inspect(state: &ApiState, name: &str) -> ApiResult {
    let i = state.engine.image(name)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "Id": i.id,
            "RepoTags": i.repo_tags,
            "RepoDigests": [],
            "Parent": "",
            "Comment": "built in: Debian's busybox-static",
            "Created": rfc3339(i.created),
            "Container": "",
            "DockerVersion": "",
            "Author": "",
            "Config": {
                "Env": [format!("PATH={}", crate::config::DEFAULT_PATH)],
                "Cmd": null,
                "Entrypoint": null,
                "WorkingDir": "",
                "Labels": null,
            },
            "Architecture": "amd64",
            "Os": "linux",
            "Size": i.size,
            "VirtualSize": i.size,
            "GraphDriver": { "Name": "qemu-vm", "Data": null },
            "RootFS": { "Type": "layers", "Layers": [] },
            "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
        }),
    ))
}

/// `POST /images/create`: a pull, which this VCH cannot do (no registry is reachable).
pub fn create(req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let image = q.get("fromImage");
    let tag = q.get("tag");
    if image.is_empty() {
        return Err(ApiError::not_implemented(
            "importing images is not supported by this VCH yet",
        ));
    }
    let full = if tag.is_empty() {
        image.to_owned()
    } else {
        format!("{image}:{tag}")
    };
    Err(ApiError::not_found(format!(
        "pull access denied for {full}: this VCH has no registry to pull from; it runs the built-in busybox image"
    )))
}

/// `DELETE /images/{name}`: the built-in image cannot be removed.
pub fn remove(state: &ApiState, name: &str) -> ApiResult {
    let i = state.engine.image(name)?;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "conflict: unable to remove image {name} ({}): it is built into this VCH",
            i.id
        ),
    ))
}
