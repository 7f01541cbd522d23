//! From a request's method and path to its handler.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::http::{ApiError, Body};
use super::{containers, exec, images, networks, services, system, volumes, ApiState};

/// The path without docker's `/vMAJOR.MINOR` prefix, split into segments; an error for a
/// version newer than this endpoint speaks (docker's words).
fn segments(path: &str) -> Result<Vec<String>, String> {
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let version = parts
        .first()
        .and_then(|p| p.strip_prefix('v'))
        .and_then(|v| v.split_once('.'))
        .and_then(|(maj, min)| Some((maj.parse::<u32>().ok()?, min.parse::<u32>().ok()?)));
    if let Some(v) = version {
        let max = (1, 41);
        if v > max {
            return Err(format!(
                "client version {}.{} is too new. Maximum supported API version is {}",
                v.0,
                v.1,
                super::API_VERSION
            ));
        }
        parts.remove(0);
    }
    Ok(parts)
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

/// Answers one request.
pub async fn route(state: Arc<ApiState>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let seg = match segments(req.uri().path()) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e).response(),
    };
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    tracing::debug!(%method, path = %req.uri(), "request");
    let res = match (&method, seg.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => Ok(system::ping(&method)),
        (&Method::GET, ["version"]) => Ok(system::version()),
        (&Method::GET, ["info"]) => system::info(&state),
        (&Method::GET, ["events"]) => system::events(&state, &req),

        (&Method::POST, ["containers", "create"]) => containers::create(&state, req).await,
        (&Method::GET, ["containers", "json"]) => containers::list(&state, &req),
        (&Method::POST, ["containers", "prune"]) => containers::prune(&state).await,
        (&Method::GET, ["containers", id, "json"]) => containers::inspect(&state, id),
        (&Method::POST, ["containers", id, "start"]) => containers::start(&state, id).await,
        (&Method::POST, ["containers", id, "stop"]) => containers::stop(&state, id, &req).await,
        (&Method::POST, ["containers", id, "restart"]) => {
            containers::restart(&state, id, &req).await
        }
        (&Method::POST, ["containers", id, "kill"]) => containers::kill(&state, id, &req).await,
        (&Method::POST, ["containers", id, "wait"]) => containers::wait(&state, id, &req),
        (&Method::POST, ["containers", id, "attach"]) => {
            let id = id.to_string();
            containers::attach(&state, &id, req).await
        }
        (&Method::GET, ["containers", id, "logs"]) => containers::logs(&state, id, &req),
        (&Method::POST, ["containers", id, "resize"]) => containers::resize(&state, id, &req).await,
        (&Method::POST, ["containers", id, "rename"]) => containers::rename(&state, id, &req),
        (&Method::DELETE, ["containers", id]) => containers::remove(&state, id, &req).await,
        (&Method::GET, ["containers", id, "top"]) => services::top(&state, id, &req).await,
        (&Method::GET, ["containers", id, "stats"]) => services::stats(&state, id, &req).await,
        (&Method::GET | &Method::HEAD, ["containers", id, "archive"]) => {
            services::archive_get(&state, id, &req).await
        }
        (&Method::PUT, ["containers", id, "archive"]) => {
            let id = id.to_string();
            services::archive_put(state.clone(), &id, req).await
        }
        (&Method::POST, ["containers", id, "pause" | "unpause"]) => {
            Err(ApiError::not_implemented(format!(
                "cannot pause container {id}: pausing a container VM is not supported by this VCH"
            )))
        }
        (&Method::POST, ["containers", id, "exec"]) => {
            let id = id.to_string();
            exec::create(&state, &id, req).await
        }
        (&Method::POST, ["exec", id, "start"]) => {
            let id = id.to_string();
            exec::start(&state, &id, req).await
        }
        (&Method::POST, ["exec", id, "resize"]) => exec::resize(&state, id, &req).await,
        (&Method::GET, ["exec", id, "json"]) => exec::inspect(&state, id),

        (&Method::POST, ["volumes", "create"]) => volumes::create(&state, req).await,
        (&Method::GET, ["volumes"]) => volumes::list(&state, &req),
        (&Method::POST, ["volumes", "prune"]) => volumes::prune(&state),
        (&Method::GET, ["volumes", name]) => volumes::inspect(&state, name),
        (&Method::DELETE, ["volumes", name]) => volumes::remove(&state, name, &req),

        (&Method::POST, ["networks", "create"]) => networks::create(&state, req).await,
        (&Method::GET, ["networks"]) => networks::list(&state, &req),
        (&Method::POST, ["networks", "prune"]) => networks::prune(&state),
        (&Method::GET, ["networks", id]) => networks::inspect(&state, id),
        (&Method::DELETE, ["networks", id]) => networks::remove(&state, id),
        (&Method::POST, ["networks", id, "connect"]) => networks::connect(&state, id, req).await,
        (&Method::POST, ["networks", id, "disconnect"]) => {
            networks::disconnect(&state, id, req).await
        }

        (&Method::GET, ["images", "json"]) => images::list(&state, &req),
        // Archives in and out: their bodies stream (no JSON body limit).
        (&Method::POST, ["images", "create"]) => images::create(state.clone(), req).await,
        (&Method::POST, ["images", "load"]) => images::load(state.clone(), req).await,
        (&Method::GET, ["images", "get"]) => images::save(&state, &req, None),
        (&Method::GET, ["images", rest @ .., "get"]) if !rest.is_empty() => {
            images::save(&state, &req, Some(rest.join("/")))
        }
        (&Method::GET, ["images", rest @ .., "json"]) if !rest.is_empty() => {
            images::inspect(&state, &rest.join("/"))
        }
        (&Method::POST, ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            images::tag(&state, &rest.join("/"), &req)
        }
        (&Method::POST, ["images", rest @ .., "push"]) if !rest.is_empty() => {
            Err(ApiError::not_implemented(format!(
                "cannot push {}: this VCH has no registry (docker save writes an archive)",
                rest.join("/")
            )))
        }
        (&Method::DELETE, ["images", rest @ ..]) if !rest.is_empty() => {
            images::remove(&state, &rest.join("/"), &req)
        }

        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("page not found: {method} {}", req.uri().path()),
        )),
    };
    match res {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(%method, path = %req_path(&seg), error = %e.message, "request failed");
            } else {
                tracing::debug!(status = %e.status, error = %e.message, "request refused");
            }
            e.response()
        }
    }
}

fn req_path(seg: &[&str]) -> String {
    format!("/{}", seg.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_are_optional() {
        assert_eq!(
            segments("/v1.41/containers/json").unwrap(),
            ["containers", "json"]
        );
        assert_eq!(
            segments("/containers/json").unwrap(),
            ["containers", "json"]
        );
        assert_eq!(segments("/v1.24/_ping").unwrap(), ["_ping"]);
        assert_eq!(
            segments("/v1.41/images/docker.io%2Flibrary%2Fbusybox/json").unwrap(),
            ["images", "docker.io/library/busybox", "json"]
        );
        // A name that looks like a version only in the first place is taken as one.
        assert_eq!(segments("/volumes/v1").unwrap(), ["volumes", "v1"]);
        assert!(segments("/v1.43/info").unwrap_err().contains("too new"));
    }
}
