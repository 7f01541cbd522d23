//! `/containers/{id}/exec` and `/exec/{id}/...`.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::http::{empty, json, read_json, ApiResult};

use super::http::nullable;
use super::stream::{self, Streams};
use super::ApiState;
use crate::engine::{DetachKeys, ExecCreate};

/// How long a tty exec's launch waits for the client's first resize (it arrives on its own
/// request right after the start), so that the process starts with the right size.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    detach_keys: String,
    tty: bool,
    #[serde(deserialize_with = "nullable")]
    env: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    cmd: Vec<String>,
    user: String,
    working_dir: String,
    privileged: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StartBody {
    detach: bool,
    tty: bool,
}

/// `POST /containers/{id}/exec`.
pub async fn create(state: &ApiState, id: &str, req: Request<Incoming>) -> ApiResult {
    let b: CreateBody = read_json(req).await?;
    if !b.detach_keys.is_empty() {
        DetachKeys::parse(&b.detach_keys)?;
    }
    let _ = b.privileged;
    let exec_id = state.engine.exec_create(
        id,
        ExecCreate {
            command: b.cmd,
            env: b.env,
            user: b.user,
            workdir: b.working_dir,
            tty: b.tty,
            stdin: b.attach_stdin,
            stdout: b.attach_stdout,
            stderr: b.attach_stderr,
            detach_keys: (!b.detach_keys.is_empty()).then_some(b.detach_keys),
        },
    )?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "Id": exec_id }),
    ))
}

/// `POST /exec/{id}/start`: hijacked, or a plain 200 with `Detach`.
pub async fn start(state: &ApiState, id: &str, req: Request<Incoming>) -> ApiResult {
    let view = state.engine.exec_inspect(id)?;
    let (mut parts, body) = req.into_parts();
    let on = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let start: StartBody = parse_start(body).await?;
    let _ = start.tty;
    if start.detach {
        state.engine.exec_start(id, true).await?;
        return Ok(empty(StatusCode::OK));
    }
    let spec = view.spec.clone();
    let detach_keys = match &spec.detach_keys {
        Some(k) => Some(DetachKeys::parse(k)?),
        None => Some(DetachKeys::default()),
    };
    let engine = state.engine.clone();
    let exec_id = id.to_owned();
    let guard = state.stream_guard();
    stream::hijack_parts(&parts.headers, on, move |io| async move {
        let _guard = guard;
        let (rd, wr) = tokio::io::split(io);
        let wr = Arc::new(Mutex::new(wr));
        let att = match engine.exec_start(&exec_id, false).await {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e) => {
                stream::fail(&wr, spec.tty, &e.to_string()).await;
                return;
            }
        };
        if spec.tty {
            engine.wait_for_size(&exec_id, FIRST_SIZE_WAIT).await;
        }
        att.control.unblock().await;
        // An exec that attached neither output still gets both (an old client's default).
        let neither = !spec.stdout && !spec.stderr;
        let streams = Streams {
            tty: spec.tty,
            stdin: spec.stdin,
            stdout: spec.stdout || neither,
            stderr: spec.stderr || neither,
            detach_keys,
        };
        stream::bridge(rd, wr, att, streams).await;
    })
}

async fn parse_start(body: Incoming) -> Result<StartBody, super::http::ApiError> {
    super::http::read_json(Request::new(body)).await
}

/// `POST /exec/{id}/resize?h=&w=`.
pub async fn resize(state: &ApiState, id: &str, req: &Request<Incoming>) -> ApiResult {
    let size = super::containers::size_param(req)?;
    state.engine.exec_resize(id, size).await?;
    Ok(empty(StatusCode::CREATED))
}

/// `GET /exec/{id}/json`.
pub fn inspect(state: &ApiState, id: &str) -> ApiResult {
    let v = state.engine.exec_inspect(id)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "ID": v.id,
            "Running": v.running,
            "ExitCode": v.exit_code,
            "ProcessConfig": {
                "tty": v.spec.tty,
                "entrypoint": v.spec.command.first().cloned().unwrap_or_default(),
                "arguments": v.spec.command.iter().skip(1).collect::<Vec<_>>(),
                "privileged": false,
                "user": v.spec.user,
            },
            "OpenStdin": v.spec.stdin,
            "OpenStderr": v.spec.stderr,
            "OpenStdout": v.spec.stdout,
            "CanRemove": false,
            "ContainerID": v.container_id,
            "DetachKeys": v.spec.detach_keys.clone().unwrap_or_default(),
            "Pid": 0,
        }),
    ))
}
