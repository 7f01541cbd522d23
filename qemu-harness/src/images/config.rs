//! The image config as typed data, and docker's rules for combining it with what the user
//! asks `run` for.
//!
//! The config blob itself is kept byte for byte (its sha256 is the image ID); these types read
//! the parts the harness uses and ignore the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::digest::Digest;

/// The image config blob (docker's image JSON, a superset of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An empty JSON object: the value type of docker's set-like maps (`{"80/tcp": {}}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// What the image says about the containers made from it (`config` in the blob). Every
/// field may be absent or `null` in real configs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Kept only to say that it is ignored: the harness runs no health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
}

/// Docker's `strslice`: a JSON array of strings, a single string, or null.
fn str_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Slice {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Slice>::deserialize(d)? {
        None => None,
        Some(Slice::One(s)) => Some(vec![s]),
        Some(Slice::Many(v)) => Some(v),
    })
}

/// What the user asked `run` (or the API's create) for; `None`/empty = not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRequest {
    /// `--entrypoint`: `Some(vec![])` or `Some(vec!["".into()])` resets it to none.
    pub entrypoint: Option<Vec<String>>,
    /// The words after the image name.
    pub cmd: Vec<String>,
    /// `-e KEY=VALUE`, in order (a bare `KEY` must already be resolved by the client).
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub volumes: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The container's effective settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Empty = the root directory.
    pub working_dir: String,
    /// Empty = root.
    pub user: String,
    pub volumes: Vec<String>,
    pub exposed_ports: Vec<String>,
    /// `None` = SIGTERM.
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What of the image config is not honoured (for a warning).
    pub ignored: Vec<String>,
}

impl RunConfig {
    /// The process to start: entrypoint followed by cmd.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Errors of [`merge`] and [`apply_changes`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// neither the image nor the user gave a command
    #[error("no command specified")]
    NoCommand,
    /// a `--change` line that cannot be applied
    #[error("invalid change {line:?}: {why}")]
    BadChange { line: String, why: String },
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

/// Docker's rules (moby `daemon/create.go` `merge` + `mergeAndVerifyConfig`):
/// - `run IMAGE CMD...` replaces the image's Cmd; the image's Entrypoint stays.
/// - `--entrypoint X` replaces the Entrypoint and drops the image's Cmd (only the user's
///   words follow it); `--entrypoint ""` leaves no entrypoint at all.
/// - Env: the user's entries, then the image's whose key the user did not set.
/// - WorkingDir, User, StopSignal: the user's when given, else the image's.
/// - Volumes, ExposedPorts: the union; Labels: the image's, overridden by the user's per key.
/// - No entrypoint and no cmd left: an error, as docker's "no command specified".
pub fn merge(image: Option<&ContainerConfig>, req: &RunRequest) -> Result<RunConfig, ConfigError> {
    let empty = ContainerConfig::default();
    let image = image.unwrap_or(&empty);
    let (entrypoint, cmd) = match &req.entrypoint {
        Some(ep) => {
            let ep = if ep.len() == 1 && ep[0].is_empty() {
                Vec::new()
            } else {
                ep.clone()
            };
            (ep, req.cmd.clone())
        }
        None => {
            let cmd = if req.cmd.is_empty() {
                image.cmd.clone().unwrap_or_default()
            } else {
                req.cmd.clone()
            };
            (image.entrypoint.clone().unwrap_or_default(), cmd)
        }
    };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(ConfigError::NoCommand);
    }
    let mut env = req.env.clone();
    for e in image.env.iter().flatten() {
        if !req.env.iter().any(|u| env_key(u) == env_key(e)) {
            env.push(e.clone());
        }
    }
    let pick = |user: &Option<String>, img: &Option<String>| {
        user.clone()
            .filter(|s| !s.is_empty())
            .or_else(|| img.clone())
            .unwrap_or_default()
    };
    let mut volumes: Vec<String> = image
        .volumes
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    let mut ports: Vec<String> = image
        .exposed_ports
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    for v in &req.volumes {
        if !volumes.contains(v) {
            volumes.push(v.clone());
        }
    }
    for p in &req.exposed_ports {
        if !ports.contains(p) {
            ports.push(p.clone());
        }
    }
    volumes.sort();
    ports.sort();
    let mut labels = image.labels.clone().unwrap_or_default();
    labels.extend(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut ignored = Vec::new();
    if image.healthcheck.is_some() {
        ignored.push("Healthcheck (the harness runs no health checks)".to_owned());
    }
    Ok(RunConfig {
        entrypoint,
        cmd,
        env,
        working_dir: pick(&req.working_dir, &image.working_dir),
        user: pick(&req.user, &image.user),
        volumes,
        exposed_ports: ports,
        stop_signal: req
            .stop_signal
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| image.stop_signal.clone().filter(|s| !s.is_empty())),
        labels,
        ignored,
    })
}

/// Applies `docker import --change` lines (Dockerfile instructions: CMD, ENTRYPOINT, ENV,
/// EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, ONBUILD) to a config.
pub fn apply_changes(config: &mut ContainerConfig, changes: &[String]) -> Result<(), ConfigError> {
    for line in changes {
        let bad = |why: &str| ConfigError::BadChange {
            line: line.clone(),
            why: why.to_owned(),
        };
        let trimmed = line.trim();
        let (word, rest) = trimmed
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((trimmed, ""));
        match word.to_ascii_uppercase().as_str() {
            "CMD" => config.cmd = Some(exec_or_shell(rest).map_err(|e| bad(&e))?),
            "ENTRYPOINT" => config.entrypoint = Some(exec_or_shell(rest).map_err(|e| bad(&e))?),
            "ENV" => {
                let env = config.env.get_or_insert_with(Vec::new);
                for (k, v) in key_values(rest, "ENV").map_err(|e| bad(&e))? {
                    // In place, as a Dockerfile's ENV replaces an earlier value.
                    let entry = format!("{k}={v}");
                    match env.iter_mut().find(|e| env_key(e) == k) {
                        Some(e) => *e = entry,
                        None => env.push(entry),
                    }
                }
            }
            "LABEL" => {
                let labels = config.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in key_values(rest, "LABEL").map_err(|e| bad(&e))? {
                    labels.insert(k, v);
                }
            }
            "EXPOSE" => {
                let ports = config.exposed_ports.get_or_insert_with(BTreeMap::new);
                for p in words(rest).map_err(|e| bad(&e))? {
                    let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                    let ok_num = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
                    let range_ok = match num.split_once('-') {
                        Some((a, b)) => ok_num(a) && ok_num(b),
                        None => ok_num(num),
                    };
                    if !range_ok || !matches!(proto, "tcp" | "udp" | "sctp") {
                        return Err(bad("a port is NUMBER[-NUMBER][/tcp|udp|sctp]"));
                    }
                    ports.insert(format!("{num}/{proto}"), Empty {});
                }
            }
            "USER" => config.user = Some(one_word(rest).map_err(|e| bad(&e))?),
            "WORKDIR" => {
                let dir = one_word(rest).map_err(|e| bad(&e))?;
                // Relative to the previous WORKDIR, as in a Dockerfile.
                let dir = if dir.starts_with('/') {
                    dir
                } else {
                    let base = config.working_dir.clone().unwrap_or_else(|| "/".into());
                    format!("{}/{dir}", base.trim_end_matches('/'))
                };
                config.working_dir = Some(dir);
            }
            "VOLUME" => {
                let list = if rest.starts_with('[') {
                    serde_json::from_str::<Vec<String>>(rest)
                        .map_err(|e| bad(&format!("not a JSON array of strings: {e}")))?
                } else {
                    words(rest).map_err(|e| bad(&e))?
                };
                if list.iter().any(|v| v.is_empty()) {
                    return Err(bad("empty volume path"));
                }
                let vols = config.volumes.get_or_insert_with(BTreeMap::new);
                for v in list {
                    vols.insert(v, Empty {});
                }
            }
            "STOPSIGNAL" => config.stop_signal = Some(one_word(rest).map_err(|e| bad(&e))?),
            "ONBUILD" => {
                if rest.is_empty() {
                    return Err(bad("ONBUILD needs an instruction"));
                }
                config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(rest.to_owned());
            }
            "" => return Err(bad("empty instruction")),
            _ => return Err(bad(
                "supported: CMD ENTRYPOINT ENV EXPOSE LABEL ONBUILD STOPSIGNAL USER VOLUME WORKDIR",
            )),
        }
    }
    Ok(())
}

/// `["a","b"]` (exec form) or `a b` (shell form, run by `/bin/sh -c`).
fn exec_or_shell(rest: &str) -> Result<Vec<String>, String> {
    if rest.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(rest) {
            return Ok(v);
        }
    }
    if rest.is_empty() {
        return Err("missing command".into());
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.into()])
}

fn one_word(rest: &str) -> Result<String, String> {
    let mut w = words(rest)?;
    match (w.pop(), w.is_empty()) {
        (Some(x), true) => Ok(x),
        _ => Err("takes exactly one argument".into()),
    }
}

/// Splits like a Dockerfile word list: white space separates, double and single quotes group,
/// a backslash escapes the next character (not inside single quotes).
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err("unterminated quote".into()),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => match chars.next() {
                            Some(x) => cur.push(x),
                            None => return Err("unterminated quote".into()),
                        },
                        Some(x) => cur.push(x),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `K=V K2="v 2"`, or the old form `K rest of line` (one pair).
fn key_values(rest: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if first.is_empty() {
        return Err(format!("{what} needs KEY=VALUE"));
    }
    if !first.contains('=') {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{what} {first} needs a value"))?;
        let v = words(v)?.join(" ");
        return Ok(vec![(k.to_owned(), v)]);
    }
    words(rest)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("{w:?} is not KEY=VALUE")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image() -> ContainerConfig {
        serde_json::from_str(
            r#"{"Entrypoint":["/entry"],"Cmd":["serve","--port","80"],
                "Env":["PATH=/usr/bin:/bin","LANG=C"],"WorkingDir":"/app","User":"app",
                "Volumes":{"/data":{}},"ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGQUIT",
                "Labels":{"a":"1","b":"2"},"Healthcheck":{"Test":["CMD","true"]},
                "Hostname":"ignored","OnBuild":null}"#,
        )
        .unwrap()
    }

    #[test]
    fn image_defaults_apply() {
        let rc = merge(Some(&image()), &RunRequest::default()).unwrap();
        assert_eq!(rc.argv(), s(&["/entry", "serve", "--port", "80"]));
        assert_eq!(rc.env, s(&["PATH=/usr/bin:/bin", "LANG=C"]));
        assert_eq!(rc.working_dir, "/app");
        assert_eq!(rc.user, "app");
        assert_eq!(rc.volumes, s(&["/data"]));
        assert_eq!(rc.exposed_ports, s(&["80/tcp"]));
        assert_eq!(rc.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(rc.labels.len(), 2);
        assert_eq!(rc.ignored.len(), 1, "healthcheck noted");
    }

    #[test]
    fn run_args_replace_cmd_only() {
        let req = RunRequest {
            cmd: s(&["status"]),
            ..Default::default()
        };
        let rc = merge(Some(&image()), &req).unwrap();
        assert_eq!(rc.entrypoint, s(&["/entry"]));
        assert_eq!(rc.cmd, s(&["status"]));
    }

    #[test]
    fn entrypoint_override_drops_image_cmd() {
        let req = RunRequest {
            entrypoint: Some(s(&["/bin/sh"])),
            ..Default::default()
        };
        let rc = merge(Some(&image()), &req).unwrap();
        assert_eq!(rc.argv(), s(&["/bin/sh"]));
        let req = RunRequest {
            entrypoint: Some(s(&["/bin/sh"])),
            cmd: s(&["-c", "id"]),
            ..Default::default()
        };
        assert_eq!(
            merge(Some(&image()), &req).unwrap().argv(),
            s(&["/bin/sh", "-c", "id"])
        );
        // --entrypoint "": no entrypoint, and the image's Cmd is not used either.
        let req = RunRequest {
            entrypoint: Some(s(&[""])),
            cmd: s(&["ls"]),
            ..Default::default()
        };
        let rc = merge(Some(&image()), &req).unwrap();
        assert_eq!((rc.entrypoint.len(), rc.argv()), (0, s(&["ls"])));
        let req = RunRequest {
            entrypoint: Some(s(&[""])),
            ..Default::default()
        };
        assert_eq!(merge(Some(&image()), &req), Err(ConfigError::NoCommand));
        assert_eq!(
            merge(None, &RunRequest::default()),
            Err(ConfigError::NoCommand)
        );
    }

    #[test]
    fn env_merges_by_key_user_first() {
        let req = RunRequest {
            cmd: s(&["x"]),
            env: s(&["LANG=C.UTF-8", "NEW=1"]),
            ..Default::default()
        };
        let rc = merge(Some(&image()), &req).unwrap();
        assert_eq!(rc.env, s(&["LANG=C.UTF-8", "NEW=1", "PATH=/usr/bin:/bin"]));
    }

    #[test]
    fn user_settings_win_and_sets_union() {
        let req = RunRequest {
            cmd: s(&["x"]),
            working_dir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            volumes: s(&["/cache", "/data"]),
            exposed_ports: s(&["443/tcp"]),
            stop_signal: Some("SIGINT".into()),
            labels: [("b".to_string(), "user".to_string())].into(),
            ..Default::default()
        };
        let rc = merge(Some(&image()), &req).unwrap();
        assert_eq!(rc.working_dir, "/tmp");
        assert_eq!(rc.user, "1000:1000");
        assert_eq!(rc.volumes, s(&["/cache", "/data"]));
        assert_eq!(rc.exposed_ports, s(&["443/tcp", "80/tcp"]));
        assert_eq!(rc.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(rc.labels["a"], "1");
        assert_eq!(rc.labels["b"], "user");
        // Empty user strings mean "not given", as docker's empty JSON fields do.
        let req = RunRequest {
            cmd: s(&["x"]),
            working_dir: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(merge(Some(&image()), &req).unwrap().working_dir, "/app");
    }

    #[test]
    fn null_and_string_fields_parse() {
        let c: ContainerConfig = serde_json::from_str(
            r#"{"Env":null,"Cmd":"echo hi","Entrypoint":null,"Volumes":null,"Labels":null}"#,
        )
        .unwrap();
        assert_eq!(c.cmd, Some(s(&["echo hi"])));
        assert_eq!(c.entrypoint, None);
        let f: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},
                "rootfs":{"type":"layers","diff_ids":[]},"container_config":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(f.architecture.as_deref(), Some("amd64"));
    }

    #[test]
    fn import_changes() {
        let mut c = ContainerConfig::default();
        apply_changes(
            &mut c,
            &s(&[
                "CMD [\"/bin/sh\", \"-c\", \"echo hi\"]",
                "entrypoint /init --x",
                "ENV A=1 B=\"two words\"",
                "ENV C three words",
                "ENV A=override",
                "LABEL org.x=\"y z\" k=v",
                "EXPOSE 80 53/udp 8000-8010",
                "USER app",
                "WORKDIR /srv",
                "WORKDIR www",
                "VOLUME /data /logs",
                "VOLUME [\"/j\"]",
                "STOPSIGNAL SIGQUIT",
            ]),
        )
        .unwrap();
        assert_eq!(c.cmd, Some(s(&["/bin/sh", "-c", "echo hi"])));
        assert_eq!(c.entrypoint, Some(s(&["/bin/sh", "-c", "/init --x"])));
        assert_eq!(
            c.env,
            Some(s(&["A=override", "B=two words", "C=three words"]))
        );
        let labels = c.labels.clone().unwrap();
        assert_eq!(labels["org.x"], "y z");
        assert_eq!(labels["k"], "v");
        let ports: Vec<_> = c.exposed_ports.clone().unwrap().into_keys().collect();
        assert_eq!(ports, s(&["53/udp", "80/tcp", "8000-8010/tcp"]));
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.working_dir.as_deref(), Some("/srv/www"));
        let vols: Vec<_> = c.volumes.clone().unwrap().into_keys().collect();
        assert_eq!(vols, s(&["/data", "/j", "/logs"]));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        for bad in [
            "RUN apt-get update",
            "EXPOSE http",
            "USER a b",
            "ENV",
            "ENV A",
            "LABEL \"unterminated",
            "CMD",
        ] {
            assert!(
                apply_changes(&mut c, &s(&[bad])).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
