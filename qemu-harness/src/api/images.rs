//! `/images/...`: list, inspect, load, import, tag, remove, save, and a "pull" that knows
//! only the built-in busybox image (there is no registry).
//!
//! Archives are big: a load's or import's request body streams into the store on a blocking
//! thread (never through the JSON body limit), and a save's archive streams out as the store
//! writes it.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::sync::mpsc;

use super::http::{empty, json, rfc3339, streaming, ApiError, ApiResult, Query};
use super::ApiState;
use crate::engine::{Engine, EngineError, ImageDetail, ImageView};
use crate::images::{ContainerConfig, ImportOptions, Progress, Reference, Removed};

/// dockerd's `<none>` names of an untagged image (API 1.41).
const NONE_TAG: &str = "<none>:<none>";
const NONE_DIGEST: &str = "<none>@<none>";

fn summary(i: &ImageView) -> serde_json::Value {
    // dockerd 20.10: `<none>` names for an untagged image, no digests (null) otherwise.
    let (tags, digests) = if i.repo_tags.is_empty() {
        (
            serde_json::json!([NONE_TAG]),
            serde_json::json!([NONE_DIGEST]),
        )
    } else {
        (serde_json::json!(i.repo_tags), serde_json::Value::Null)
    };
    serde_json::json!({
        "Id": i.id.as_str(),
        "ParentId": "",
        "RepoTags": tags,
        "RepoDigests": digests,
        "Created": i.created,
        "Size": i.size,
        "SharedSize": -1,
        "VirtualSize": i.size,
        "Labels": if i.labels.is_empty() { serde_json::Value::Null } else { serde_json::json!(i.labels) },
        // dockerd counts only for `system df`; -1 = not counted.
        "Containers": -1,
    })
}

/// Whether an image matches `docker images`' filters: `reference` (a name, `name:tag`, with
/// `*` wildcards), `dangling`, `label` (`KEY` or `KEY=VALUE`).
fn matches(i: &ImageView, filters: &BTreeMap<String, Vec<String>>) -> Result<bool, ApiError> {
    for (key, values) in filters {
        if values.is_empty() {
            continue;
        }
        let ok = match key.as_str() {
            "reference" => values.iter().any(|want| {
                i.repo_tags.iter().any(|t| {
                    let name = t.rsplit_once(':').map_or(t.as_str(), |(n, _)| n);
                    glob(want, t) || glob(want, name)
                })
            }),
            "dangling" => values.iter().any(|v| match v.as_str() {
                "true" | "1" => i.repo_tags.is_empty(),
                _ => !i.repo_tags.is_empty(),
            }),
            "label" => values.iter().all(|want| match want.split_once('=') {
                Some((k, v)) => i.labels.get(k).map(String::as_str) == Some(v),
                None => i.labels.contains_key(want.as_str()),
            }),
            "before" | "since" | "until" => {
                return Err(ApiError::bad_request(format!(
                    "the {key} filter is not supported by this VCH"
                )))
            }
            other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `*` matches any run of characters except `/` (docker's `path.Match` on references).
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len())
                .take_while(|&k| k == 0 || t[k - 1] != b'/')
                .any(|k| go(rest, &t[k..])),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// `GET /images/json`.
pub fn list(state: &ApiState, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let filters = q.filters()?;
    let mut out = Vec::new();
    for i in state.engine.images()? {
        if matches(&i, &filters)? {
            out.push(summary(&i));
        }
    }
    Ok(json(StatusCode::OK, &out))
}

/// The image config as dockerd's inspect shows it: every field present.
fn config_json(c: &ContainerConfig) -> serde_json::Value {
    let mut v = serde_json::json!({
        "Hostname": "",
        "Domainname": "",
        "User": c.user.clone().unwrap_or_default(),
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "Tty": false,
        "OpenStdin": false,
        "StdinOnce": false,
        "Env": c.env,
        "Cmd": c.cmd,
        "Image": "",
        "Volumes": c.volumes,
        "WorkingDir": c.working_dir.clone().unwrap_or_default(),
        "Entrypoint": c.entrypoint,
        "OnBuild": c.on_build,
        "Labels": c.labels,
    });
    if let serde_json::Value::Object(m) = &mut v {
        if let Some(p) = &c.exposed_ports {
            m.insert("ExposedPorts".into(), serde_json::json!(p));
        }
        if let Some(s) = &c.stop_signal {
            m.insert("StopSignal".into(), serde_json::json!(s));
        }
        if let Some(h) = &c.healthcheck {
            m.insert("Healthcheck".into(), h.clone());
        }
    }
    v
}

/// An image as dockerd's `GET /images/{name}/json` shows it (also what `vch image inspect` prints).
pub fn inspect_json(d: &ImageDetail) -> serde_json::Value {
    let i = &d.image;
    let digests: Vec<String> = Vec::new();
    let mut v = serde_json::json!({
        "Id": i.id.as_str(),
        "RepoTags": i.repo_tags,
        "RepoDigests": digests,
        "Parent": "",
        "Comment": i.comment.clone().unwrap_or_default(),
        "Created": i.created.clone().unwrap_or_else(|| rfc3339(0)),
        "Container": "",
        "ContainerConfig": config_json(&ContainerConfig::default()),
        "DockerVersion": "",
        "Author": i.author.clone().unwrap_or_default(),
        "Config": config_json(&i.config),
        "Architecture": i.architecture.clone().unwrap_or_default(),
        "Os": i.os.clone().unwrap_or_default(),
        "Size": i.size,
        "VirtualSize": i.size,
        "GraphDriver": {
            "Name": "qemu-vm",
            "Data": { "Store": "ext4 disks per layer chain, qcow2 overlays per container" },
        },
        "RootFS": {
            "Type": "layers",
            "Layers": i.layers.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        },
        "Metadata": { "LastTagTime": rfc3339(i.loaded) },
    });
    if let (Some(variant), serde_json::Value::Object(m)) = (&i.variant, &mut v) {
        m.insert("Variant".into(), serde_json::json!(variant));
    }
    v
}

/// `GET /images/{name}/json`.
pub fn inspect(state: &ApiState, name: &str) -> ApiResult {
    let d = state.engine.image(name)?;
    Ok(json(StatusCode::OK, &inspect_json(&d)))
}

/// `POST /images/{name}/tag?repo=&tag=`.
pub fn tag(state: &ApiState, name: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let repo = q.get("repo");
    if repo.is_empty() {
        return Err(ApiError::bad_request(
            "repository name (repo) must be given",
        ));
    }
    let target = match q.get("tag") {
        "" => repo.to_owned(),
        t => format!("{repo}:{t}"),
    };
    state.engine.image_tag(name, &target)?;
    Ok(empty(StatusCode::CREATED))
}

/// `DELETE /images/{name}?force=&noprune=`: dockerd's list of what was untagged and
/// deleted.
pub fn remove(state: &ApiState, name: &str, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req);
    let force = q.flag("force")?;
    let removed = state.engine.image_remove(name, force)?;
    let out: Vec<serde_json::Value> = removed
        .iter()
        .map(|r| match r {
            Removed::Untagged(t) => serde_json::json!({ "Untagged": t }),
            Removed::Deleted(id) => serde_json::json!({ "Deleted": id.as_str() }),
        })
        .collect();
    Ok(json(StatusCode::OK, &out))
}

// ------------------------------------------------------------------ streaming bodies

/// A request body as a blocking reader: a task feeds its chunks through a bounded channel
/// (the client is slowed down rather than the body buffered), the store reads them on a
/// blocking thread. A body that breaks off (the client went away) is an error, never a
/// short archive.
struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl BodyReader {
    fn new(body: Incoming, guard: super::StreamGuard) -> BodyReader {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
        tokio::spawn(async move {
            let _guard = guard;
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue, // trailers
                    },
                    Err(e) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the request body broke off: {e}"),
                    )),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        BodyReader {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// A response body as a blocking writer (a save's archive): chunks of 64 KiB go to the
/// response as they fill. The client going away is a write error, which ends the save.
struct BodyWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const WRITE_CHUNK: usize = 64 << 10;

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// One message of docker's JSON stream (`load`, `import`, `pull`).
fn message(v: serde_json::Value) -> Bytes {
    let mut b = serde_json::to_vec(&v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn error_message(e: &str) -> Bytes {
    message(serde_json::json!({ "errorDetail": { "message": e }, "error": e }))
}

/// Progress as docker's JSON messages (`status`, `progressDetail`), at most ten a second:
/// the client draws them on a terminal and skips them otherwise.
struct JsonProgress {
    tx: mpsc::Sender<Bytes>,
    state: Mutex<(String, Option<u64>, Option<Instant>)>,
}

impl JsonProgress {
    fn send(&self, v: serde_json::Value) {
        // A client that went away loses its progress; the operation goes on.
        let _ = self.tx.blocking_send(message(v));
    }
}

impl Progress for JsonProgress {
    fn start(&self, step: &str, total: Option<u64>) {
        if let Ok(mut st) = self.state.lock() {
            *st = (step.to_owned(), total, None);
        }
    }

    fn update(&self, done: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st
            .2
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        st.2 = Some(Instant::now());
        let detail = match st.1 {
            Some(total) => serde_json::json!({ "current": done, "total": total }),
            None => serde_json::json!({ "current": done }),
        };
        let step = st.0.clone();
        drop(st);
        self.send(serde_json::json!({ "status": step, "progressDetail": detail }));
    }

    fn finish(&self) {
        // The step's last state: complete. A status line without progress would be printed
        // by a client whose output is not a terminal, which dockerd's import never makes it.
        let Ok(st) = self.state.lock() else {
            return;
        };
        if let Some(total) = st.1 {
            let step = st.0.clone();
            drop(st);
            self.send(serde_json::json!({
                "status": step,
                "progressDetail": { "current": total, "total": total },
            }));
        }
    }
}

/// `POST /images/load?quiet=`: a `docker save` archive or OCI layout as the body (plain or
/// compressed). Replies `{"stream":"Loaded image: NAME\n"}` per name (`Loaded image ID: ` for
/// an untagged image), as dockerd does.
pub async fn load(state: Arc<ApiState>, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let quiet = q.flag("quiet")?;
    let body = req.into_body();
    run_json_op(&state, body, quiet, |engine, reader, progress| {
        let loaded = engine.image_load(reader, progress)?;
        let mut out = Vec::new();
        for img in loaded {
            for (tag, old) in &img.moved {
                out.push(message(serde_json::json!({
                    "stream": format!("The image {tag} already exists, renaming the old one with ID {old} to empty string\n")
                })));
            }
            if img.tags.is_empty() {
                out.push(message(serde_json::json!({
                    "stream": format!("Loaded image ID: {}\n", img.id)
                })));
            }
            for t in &img.tags {
                out.push(message(
                    serde_json::json!({ "stream": format!("Loaded image: {t}\n") }),
                ));
            }
        }
        Ok(out)
    })
    .await
}

/// Runs a store operation that reads the request body on a blocking thread, answering with
/// docker's JSON stream. `quiet`: nothing is sent before the end, so a failure is an HTTP
/// error (as dockerd answers a quiet load); otherwise progress flows at once and a failure
/// is an error message in the stream (the status line is out already).
async fn run_json_op<F>(state: &ApiState, body: Incoming, quiet: bool, op: F) -> ApiResult
where
    F: FnOnce(&Engine, BodyReader, &dyn Progress) -> Result<Vec<Bytes>, EngineError>
        + Send
        + 'static,
{
    let engine = state.engine.clone();
    let reader = BodyReader::new(body, state.stream_guard());
    if quiet {
        let lines =
            tokio::task::spawn_blocking(move || op(&engine, reader, &crate::images::Silent))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        let (resp, tx) = streaming(StatusCode::OK, "application/json");
        for l in lines {
            // The channel holds 64 messages; a load names a handful of images.
            let _ = tx.try_send(l);
        }
        return Ok(resp);
    }
    let (resp, tx) = streaming(StatusCode::OK, "application/json");
    let guard = state.stream_guard();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let progress = JsonProgress {
            tx: tx.clone(),
            state: Mutex::new((String::new(), None, None)),
        };
        match op(&engine, reader, &progress) {
            Ok(lines) => {
                for l in lines {
                    let _ = tx.blocking_send(l);
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(error_message(&e.to_string()));
            }
        }
    });
    Ok(resp)
}

/// Every value of a repeated query parameter (`names=a&names=b`, `changes=...`).
fn all_values(req: &Request<Incoming>, key: &str) -> Vec<String> {
    req.uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /images/create`: `fromSrc=-` imports the body as a root filesystem tarball
/// (`docker import`; the tag may ride inside `repo`); `fromImage` is a pull, which only the
/// built-in busybox answers.
pub async fn create(state: Arc<ApiState>, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let from_image = q.get("fromImage").to_owned();
    let from_src = q.get("fromSrc").to_owned();
    let tag = q.get("tag").to_owned();
    if !from_image.is_empty() {
        let full = if tag.is_empty() {
            from_image.clone()
        } else {
            format!("{from_image}:{tag}")
        };
        let engine = state.engine.clone();
        let wanted = full.clone();
        let id = tokio::task::spawn_blocking(move || engine.image_pull(&wanted))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        let name = Reference::parse(&full)
            .map(|r| r.with_default_tag().familiar())
            .unwrap_or(full);
        let (resp, tx) = streaming(StatusCode::OK, "application/json");
        for m in [
            serde_json::json!({ "status": format!("{name}: the built-in image (Debian's busybox-static), no registry needed") }),
            serde_json::json!({ "status": format!("Digest: {id}") }),
            serde_json::json!({ "status": format!("Status: Image is up to date for {name}") }),
        ] {
            let _ = tx.try_send(message(m));
        }
        return Ok(resp);
    }
    match from_src.as_str() {
        "-" => {}
        "" => {
            return Err(ApiError::bad_request(
                "give fromImage (a pull) or fromSrc=- (an import of the request body)",
            ))
        }
        url => {
            return Err(ApiError::not_implemented(format!(
                "importing from {url} is not supported by this VCH: download it and import the file (docker import FILE)"
            )))
        }
    }
    let platform = q.get("platform");
    if !platform.is_empty() && !platform.starts_with("linux") {
        return Err(ApiError::bad_request(format!(
            "platform {platform} is not supported: container VMs here run linux/amd64"
        )));
    }
    let repo = q.get("repo");
    let reference = match (repo, tag.as_str()) {
        ("", _) => None,
        (r, "") => Some(r.to_owned()),
        (r, t) => Some(format!("{r}:{t}")),
    };
    let opts = ImportOptions {
        reference,
        changes: all_values(&req, "changes"),
        message: Some(q.get("message").to_owned()).filter(|m| !m.is_empty()),
    };
    let body = req.into_body();
    // dockerd streams an import's progress: the client draws it on a terminal and prints
    // only the final status (the image ID) otherwise.
    run_json_op(&state, body, false, move |engine, reader, progress| {
        let image = engine.image_import(reader, &opts, progress)?;
        Ok(vec![message(
            serde_json::json!({ "status": image.id.as_str() }),
        )])
    })
    .await
}

/// `GET /images/{name}/get` and `GET /images/get?names=...`: the archive of `docker save`,
/// streamed as it is written. Names are checked first, so that a wrong one is an HTTP error
/// and not a broken archive.
pub fn save(state: &ApiState, req: &Request<Incoming>, name: Option<String>) -> ApiResult {
    let names = match name {
        Some(n) => vec![n],
        None => all_values(req, "names"),
    };
    if names.is_empty() {
        return Err(ApiError::bad_request("no image names given (names=...)"));
    }
    for n in &names {
        state.engine.image(n)?;
    }
    let (resp, tx) = streaming(StatusCode::OK, "application/x-tar");
    let engine = state.engine.clone();
    let guard = state.stream_guard();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let writer = BodyWriter {
            tx,
            buf: Vec::with_capacity(WRITE_CHUNK),
        };
        if let Err(e) = engine.image_save(&names, writer) {
            // The status line went out already: the client sees the archive end early.
            tracing::warn!(error = %e, "save");
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_globs() {
        assert!(glob("busybox", "busybox"));
        assert!(glob("busy*", "busybox"));
        assert!(glob("*:latest", "busybox:latest"));
        assert!(!glob("*", "quay.io/x"));
        assert!(!glob("busybox", "busybox2"));
    }

    #[test]
    fn filters_select_images() {
        let i = ImageView {
            id: crate::images::Digest::of(b"x"),
            repo_tags: vec!["busybox:latest".into()],
            created: 0,
            size: 1,
            labels: [("a".to_string(), "1".to_string())].into(),
            containers: 0,
        };
        let f = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), vec![v.to_owned()])]);
        assert!(matches(&i, &f("reference", "busybox")).unwrap());
        assert!(matches(&i, &f("reference", "busybox:latest")).unwrap());
        assert!(!matches(&i, &f("reference", "debian")).unwrap());
        assert!(!matches(&i, &f("dangling", "true")).unwrap());
        assert!(matches(&i, &f("label", "a=1")).unwrap());
        assert!(!matches(&i, &f("label", "a=2")).unwrap());
        assert!(matches(&i, &f("bogus", "x")).is_err());
    }
}
