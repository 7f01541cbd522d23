//! The harness's state directory: one folder per VM, like a datastore's VM folders.
//!
//! ```text
//! <state>/vms/<id>/meta.json     name, image, command, created, QEMU pid
//!                  config.vmx    the VM's extraConfig (guestinfo store)
//!                  disk.qcow2    the container's root disk: a qcow2 overlay of its image's cached disk
//!                  image.ext4    a directory image's cached disk, hard-linked (the overlay's backing file)
//!                  output.log    the output channel, as received (iolog frames)
//!                  tether.debug  the tether's debug log
//!                  console.log   the kernel console (ttyS1)
//! <state>/volumes/<name>/           named and anonymous volumes (see [`crate::volume`])
//! <state>/networks/<name>.json      user-defined networks (see [`crate::network`])
//! <state>/images/                   the image store (see [`crate::images`])
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the harness remembers about a VM besides its config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub id: String,
    pub name: String,
    /// The image as the user named it (a name, an ID prefix or a directory).
    pub image: String,
    /// The store image it was made from (`sha256:<hex>`); empty for a directory image. What
    /// `rmi` checks: a tag moved or removed since does not change it.
    #[serde(default)]
    pub image_id: String,
    pub command: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// QEMU's PID while it runs.
    pub qemu_pid: Option<u32>,
    /// PID of the `vch` process keeping the VM (serving its channels) while it runs.
    #[serde(default)]
    pub keeper_pid: Option<u32>,
    /// Root disk and its format.
    #[serde(default)]
    pub disk: String,
    #[serde(default)]
    pub disk_format: String,
    #[serde(default)]
    pub memory_mb: u32,
    /// Hard limit on the VM's life.
    #[serde(default)]
    pub timeout_secs: u64,
    /// `virtio`, `uart` or `tcp://HOST:PORT`.
    #[serde(default)]
    pub backchannel: String,
    /// Output channel format (`""` ours, `vic` the original's).
    #[serde(default)]
    pub log_format: String,
    /// ISO booted instead of the default one (benchmarks).
    #[serde(default)]
    pub iso: String,
    /// A raw `org.tether.bench` virtio port on `bench.sock` (benchmarks).
    #[serde(default)]
    pub bench_port: bool,
    /// The accelerator asked for (`auto`, `kvm`, `tcg`; empty is `auto`).
    #[serde(default)]
    pub accel: String,
    /// The accelerator the last start got (`kvm` or `tcg`).
    #[serde(default)]
    pub accel_used: String,
    /// Volumes attached as extra disks (or NFS mounts), as at creation: the VM is rebuilt
    /// from them, and `rm` removes the anonymous ones.
    #[serde(default)]
    pub volumes: Vec<crate::volume::AttachedVolume>,
    /// NICs, in slot order (the first is the default network).
    #[serde(default)]
    pub nics: Vec<crate::network::AttachedNic>,
    /// What docker's API keeps about a container besides the guest's config.
    #[serde(default)]
    pub settings: Settings,
    /// How often the container was started (the first start included).
    #[serde(default)]
    pub starts: u32,
    /// The last run was killed at its hard time limit (`--timeout`), not ended by itself.
    #[serde(default)]
    pub timed_out: bool,
    /// The TCP port on 127.0.0.1 the VM's back-channel device dials while it runs: a keeper
    /// that adopts the running VM listens there again.
    #[serde(default)]
    pub attach_port: Option<u16>,
    /// When QEMU was started (Unix seconds): an adopting keeper keeps the hard timeout.
    #[serde(default)]
    pub qemu_started: i64,
}

/// A container's settings that only the host uses: the guest never sees them, but `docker
/// inspect` shows them and the engine acts on them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// The image's (or `--entrypoint`'s) part of `command`; the rest is the CMD.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Remove the container when it stops (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// docker's restart policy name (`no`, `always`, `unless-stopped`, `on-failure`).
    #[serde(default)]
    pub restart_policy: String,
    /// Seconds between the stop signal and SIGKILL when no `-t` is given.
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    #[serde(default)]
    pub stop_signal: String,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub domainname: String,
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub cpus: u32,
    /// No virtio-rng device: the guest's CRNG is seeded by the tether alone (the entropy
    /// bench and scenario; `vch run --no-rng`).
    #[serde(default)]
    pub no_rng: bool,
    /// The network mode as asked (`bridge`, `none`, a network name).
    #[serde(default)]
    pub network_mode: String,
    /// Ports the image and the request declare (`80/tcp`), published or not.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

/// State directory errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// no VM has that name or ID (prefix)
    #[error("no such container: {0}")]
    NoSuch(String),
    /// the name is taken
    #[error("Conflict. The container name \"/{0}\" is already in use by container \"{1}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse(String, String),
    /// a file operation failed
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// a metadata file could not be read or written, or is damaged
    #[error(transparent)]
    Record(#[from] crate::records::RecordError),
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct State {
    root: PathBuf,
}

impl State {
    /// `$VCH_STATE`, else `$XDG_STATE_HOME/tether-vch`, else `~/.local/state/tether-vch`.
    pub fn default_dir() -> PathBuf {
        if let Some(p) = std::env::var_os("VCH_STATE") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("tether-vch")
    }

    /// Opens (creating) a state directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<State, StateError> {
        let root = root.into();
        let vms = root.join("vms");
        let new = !root.exists();
        fs::create_dir_all(&vms).map_err(|source| StateError::Io {
            what: "create",
            path: vms,
            source,
        })?;
        if new {
            // Keys, configs with host keys, sockets that start and drive VMs: the owner's
            // only. A directory the user made is left as they made it.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(|source| {
                StateError::Io {
                    what: "chmod",
                    path: root.clone(),
                    source,
                }
            })?;
        }
        Ok(State { root })
    }

    /// Takes the state directory's lock: held by whoever checks and then changes names,
    /// volumes or networks, so that `vch` and the daemon used at the same time cannot both
    /// take the same name. Released when the guard is dropped.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let path = self.root.join(".lock");
        flock(&path, true)
            .map(StateLock)
            .map_err(|source| StateError::Io {
                what: "lock",
                path,
                source,
            })
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of a VM, named by the short ID: QEMU's chardev sockets live in it, and a Unix
    /// socket path must stay under 108 bytes.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        let short: String = id.chars().take(12).collect();
        self.root.join("vms").join(short)
    }

    /// All VMs, oldest first.
    pub fn list(&self) -> Vec<Meta> {
        let mut out: Vec<Meta> = fs::read_dir(self.root.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let text = fs::read_to_string(e.path().join("meta.json")).ok()?;
                serde_json::from_str::<Meta>(&text).ok()
            })
            .collect();
        out.sort_by_key(|m| m.created);
        out
    }

    /// Reads a VM's metadata by exact ID.
    pub fn meta(&self, id: &str) -> Result<Meta, StateError> {
        crate::records::read_json(&self.vm_dir(id).join("meta.json"))?
            .ok_or_else(|| StateError::NoSuch(id.into()))
    }

    /// Writes a VM's metadata (atomically).
    pub fn save(&self, meta: &Meta) -> Result<(), StateError> {
        let dir = self.vm_dir(&meta.id);
        fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(crate::records::write_json(&dir.join("meta.json"), meta)?)
    }

    /// Finds a VM by name, full ID or unique ID prefix, as docker does.
    pub fn resolve(&self, name_or_id: &str) -> Result<Meta, StateError> {
        let all = self.list();
        if let Some(m) = all
            .iter()
            .find(|m| m.name == name_or_id || m.id == name_or_id)
        {
            return Ok(m.clone());
        }
        let mut by_prefix = all
            .iter()
            .filter(|m| !name_or_id.is_empty() && m.id.starts_with(name_or_id));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(m), None) => Ok(m.clone()),
            _ => Err(StateError::NoSuch(name_or_id.into())),
        }
    }

    /// Whether container `owner` (a full ID) lists `ip` on `network` (the IPAM's
    /// [`crate::ipam::Holder`]): `None` when there is no such container (yet).
    pub fn holds_address(
        &self,
        owner: &str,
        network: &str,
        ip: std::net::Ipv4Addr,
    ) -> Option<bool> {
        if owner.contains(['/', '.']) {
            return None;
        }
        let meta = self.meta(owner).ok().filter(|m| m.id == owner)?;
        Some(
            meta.nics
                .iter()
                .any(|n| n.network.name == network && n.address() == Some(ip)),
        )
    }

    /// Checks that `name` is free.
    pub fn check_name(&self, name: &str) -> Result<(), StateError> {
        match self.list().into_iter().find(|m| m.name == name) {
            Some(m) => Err(StateError::NameInUse(name.into(), m.id)),
            None => Ok(()),
        }
    }

    /// Removes a VM's folder.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.vm_dir(id);
        fs::remove_dir_all(&dir).map_err(|source| StateError::Io {
            what: "remove",
            path: dir,
            source,
        })
    }
}

/// An exclusive `flock` on `path` (created if need be), held until the returned value is
/// dropped; `wait` blocks until it is free, else a held lock is an error at once.
pub fn flock(path: &Path, wait: bool) -> io::Result<nix::fcntl::Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let how = if wait {
        nix::fcntl::FlockArg::LockExclusive
    } else {
        nix::fcntl::FlockArg::LockExclusiveNonblock
    };
    nix::fcntl::Flock::lock(file, how).map_err(|(_, errno)| errno.into())
}

/// Whether a keeper holds the VM folder's `keeper.lock` (it does for its whole life; the
/// kernel lets go of it when the keeper dies, however it dies).
pub fn keeper_lock_held(vm_dir: &Path) -> bool {
    let path = vm_dir.join("keeper.lock");
    if !path.exists() {
        return false;
    }
    matches!(flock(&path, false), Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK))
}

/// The state directory's lock, held while alive (see [`State::lock`]).
#[derive(Debug)]
pub struct StateLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

/// Whether a process with this PID runs and its command line mentions `needle`: a PID
/// recorded in a metadata file may have been reused since.
pub fn alive_as(pid: Option<u32>, needle: &str) -> bool {
    let Some(pid) = pid else { return false };
    if !pid_alive(pid) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => cmd
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes()),
        // Gone meanwhile, or not ours to read: trust the PID alone.
        Err(_) => pid_alive(pid),
    }
}

/// The VM of `meta` runs (its QEMU is alive).
pub fn qemu_alive(meta: &Meta) -> bool {
    let short: String = meta.id.chars().take(12).collect();
    alive_as(meta.qemu_pid, &short)
}

/// A keeper process for this container is alive.
pub fn keeper_alive(meta: &Meta) -> bool {
    alive_as(meta.keeper_pid, &meta.id)
}

/// Whether a process is alive.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_state_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        State::open(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // One the user made stays as it is.
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o750)).unwrap();
        State::open(&theirs).unwrap();
        let mode = fs::metadata(&theirs).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
    }

    #[test]
    fn the_keeper_lock_says_whether_a_keeper_lives() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!keeper_lock_held(tmp.path()), "no lock file");
        let held = flock(&tmp.path().join("keeper.lock"), false).unwrap();
        assert!(keeper_lock_held(tmp.path()));
        drop(held);
        assert!(
            !keeper_lock_held(tmp.path()),
            "let go when the keeper is gone"
        );
    }

    #[test]
    fn resolve_by_name_id_and_prefix() {
        let dir = std::env::temp_dir().join(format!("vch-state-{}", std::process::id()));
        let st = State::open(&dir).unwrap();
        let a = Meta {
            id: "abcdef01".into(),
            name: "web".into(),
            image: "busybox".into(),
            created: 1,
            ..Default::default()
        };
        let b = Meta {
            id: "abc99999".into(),
            name: "db".into(),
            created: 2,
            ..a.clone()
        };
        st.save(&a).unwrap();
        st.save(&b).unwrap();
        assert_eq!(st.resolve("web").unwrap().id, "abcdef01");
        assert_eq!(st.resolve("abcd").unwrap().id, "abcdef01");
        assert!(st.resolve("abc").is_err(), "ambiguous prefix");
        assert!(matches!(
            st.check_name("db"),
            Err(StateError::NameInUse(..))
        ));
        assert_eq!(st.list().len(), 2);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(crate::records::new_id().len(), 64);
    }
}
