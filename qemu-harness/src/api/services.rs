//! `/containers/{id}/archive` (`HEAD`, `GET`, `PUT`: `docker cp`), `/containers/{id}/top`
//! and `/containers/{id}/stats`, over the engine's guest services.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::http::{json, streaming, ApiError, ApiResult, Body, Query};
use super::ApiState;
use crate::engine::EngineError;
use backchannel::services::{self as svc, PathStat};

/// docker's `X-Docker-Container-Path-Stat` header: base64 of the stat's JSON.
const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

fn stat_header(stat: &PathStat) -> String {
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(stat.mtime_secs).unwrap_or(0),
            stat.mtime_nsecs,
        );
    let value = serde_json::json!({
        "name": stat.name,
        "size": stat.size,
        "mode": stat.go_file_mode(),
        "mtime": humantime::format_rfc3339_nanos(t).to_string(),
        "linkTarget": stat.link_target,
    });
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

/// docker's words for a path that is not there.
fn not_found(e: EngineError, id: &str, path: &str) -> ApiError {
    match e {
        EngineError::PathNotFound(_) => {
            ApiError::not_found(format!("Could not find the file {path} in container {id}"))
        }
        other => other.into(),
    }
}

/// `HEAD` and `GET /containers/{id}/archive?path=P`.
pub async fn archive_get(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let path = q.get("path").to_owned();
    if path.is_empty() {
        return Err(ApiError::bad_request("path is required"));
    }
    let engine = &state.engine;
    if *req.method() == Method::HEAD {
        let stat = engine
            .archive_stat(id, &path)
            .await
            .map_err(|e| not_found(e, id, &path))?;
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(STAT_HEADER, stat_header(&stat))
            .body(Body::Empty)
            .unwrap_or_else(|_| Response::new(Body::Empty)));
    }
    let out = engine
        .archive_get(id, &path)
        .await
        .map_err(|e| not_found(e, id, &path))?;
    let header = stat_header(&out.stat);
    let (mut resp, tx) = streaming(StatusCode::OK, "application/x-tar");
    if let Ok(v) = header.parse() {
        resp.headers_mut().insert(STAT_HEADER, v);
    }
    let guard = state.stream_guard();
    tokio::spawn(async move {
        let _guard = guard;
        let mut out = out;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match out.data.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        if let Err(e) = out.finish().await {
            // The status is sent: a short archive is all the client can be told.
            tracing::warn!(error = %e, "archive ended early");
        }
    });
    Ok(resp)
}

/// `PUT /containers/{id}/archive?path=DIR[&noOverwriteDirNonDir=1][&copyUIDGID=1]`.
pub async fn archive_put(state: Arc<ApiState>, id: &str, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let path = q.get("path").to_owned();
    if path.is_empty() {
        return Err(ApiError::bad_request("path is required"));
    }
    let mut flags = 0;
    if q.flag("noOverwriteDirNonDir")? {
        flags |= svc::ARCHIVE_NO_OVERWRITE_DIR_NON_DIR;
    }
    if q.flag("copyUIDGID")? {
        flags |= svc::ARCHIVE_COPY_OWNERS;
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    let guard = state.stream_guard();
    let mut body = req.into_body();
    tokio::spawn(async move {
        let _guard = guard;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                if tx.send(d.to_vec()).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = crate::engine::chunk_stream(rx);
    state
        .engine
        .archive_put(id, &path, flags, stream)
        .await
        .map_err(|e| not_found(e, id, &path))?;
    Ok(super::http::empty(StatusCode::OK))
}

/// `GET /containers/{id}/top?ps_args=...`.
pub async fn top(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let view = state.engine.top(id, q.get("ps_args")).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "Titles": view.titles, "Processes": view.processes }),
    ))
}

/// `GET /containers/{id}/stats?stream=...&one-shot=...`: a JSON object per second, or one
/// (with `precpu_stats` from a second sample unless `one-shot`). A container that does not
/// run gets docker's zeroed sample.
pub async fn stats(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let stream = q
        .opt("stream")
        .map(|_| q.flag("stream"))
        .transpose()?
        .unwrap_or(true);
    let one_shot = q.flag("one-shot")?;
    let view = state.engine.inspect(id)?;
    if !view.running() {
        let zero = serde_json::json!({
            "read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z",
            "pids_stats": {}, "blkio_stats": {}, "num_procs": 0, "storage_stats": {},
            "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
            "memory_stats": {},
            "name": format!("/{}", view.meta.name), "id": view.meta.id,
        });
        return Ok(json(StatusCode::OK, &zero));
    }
    let count = match (stream, one_shot) {
        (true, _) => None,
        (false, true) => Some(1),
        (false, false) => Some(2),
    };
    let mut samples = state.engine.stats(id, count).await?;
    if !stream {
        let mut last = None;
        while let Some(v) = samples.recv().await {
            last = Some(v);
        }
        let last = last.ok_or_else(|| {
            ApiError::from(EngineError::Backchannel(format!(
                "no stats from container {id}"
            )))
        })?;
        return Ok(json(StatusCode::OK, &last));
    }
    let (resp, tx) = streaming(StatusCode::OK, "application/json");
    let guard = state.stream_guard();
    tokio::spawn(async move {
        let _guard = guard;
        while let Some(v) = samples.recv().await {
            let mut line = v.to_string();
            line.push('\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}
