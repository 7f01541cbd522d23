//! Composing a container's config the way the VIC port layer does.

use guestinfo::{ContainerConfig, SessionConfig};

/// Docker's default PATH for containers.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub id: String,
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// `user[:group]`.
    pub user: String,
    pub hostname: String,
    pub tty: bool,
    pub open_stdin: bool,
    /// Relaunch the process when it exits.
    pub restart: bool,
    /// Hold the launch until a client attaches and unblocks it.
    pub run_block: bool,
}

/// The container config for a spec: one primary session whose ID is the container ID.
pub fn compose(spec: &ContainerSpec) -> ContainerConfig {
    let mut cfg = ContainerConfig::default();
    cfg.common.id = spec.id.clone();
    cfg.common.name = spec.name.clone();
    cfg.hostname = spec.hostname.clone();

    let mut s = SessionConfig::default();
    s.common.id = spec.id.clone();
    s.common.name = spec.name.clone();
    let path = spec.command.first().cloned().unwrap_or_default();
    s.cmd.path = path;
    // The port layer sets argv to [Path] + arguments.
    s.cmd.args = spec.command.clone();
    let mut env = Vec::new();
    if !spec.env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.extend(spec.env.iter().cloned());
    s.cmd.env = env;
    s.cmd.dir = if spec.workdir.is_empty() {
        "/".into()
    } else {
        spec.workdir.clone()
    };
    let (user, group) = match spec.user.split_once(':') {
        Some((u, g)) => (u.to_owned(), g.to_owned()),
        None => (spec.user.clone(), String::new()),
    };
    s.user = user;
    s.group = group;
    s.tty = spec.tty;
    s.open_stdin = spec.open_stdin;
    s.attach = spec.tty || spec.open_stdin || spec.run_block;
    s.run_block = spec.run_block;
    s.restart = spec.restart;
    s.active = true;
    s.stop_signal = "TERM".into();
    cfg.sessions.insert(spec.id.clone(), s);
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_session_mirrors_the_port_layer() {
        let spec = ContainerSpec {
            id: "abc".into(),
            name: "web".into(),
            command: vec!["echo".into(), "hi".into()],
            env: vec!["A=1".into()],
            user: "user:wheel".into(),
            ..Default::default()
        };
        let cfg = compose(&spec);
        let s = &cfg.sessions["abc"];
        assert_eq!(s.cmd.path, "echo");
        assert_eq!(s.cmd.args, vec!["echo", "hi"]);
        assert_eq!(
            s.cmd.env,
            vec![format!("PATH={DEFAULT_PATH}"), "A=1".into()]
        );
        assert_eq!((s.user.as_str(), s.group.as_str()), ("user", "wheel"));
        assert_eq!(s.cmd.dir, "/");
        assert!(s.active);
        // The whole config encodes (no value the format cannot carry).
        assert!(guestinfo::encode(&cfg).is_ok());
    }
}
