//! Shared network segments: one `vch netd` process per network in use, the L2 segment its
//! containers' NICs share, with the VCH's gateway on it.
//!
//! ```text
//!  QEMU (container A) ─┐ stream socket                 ┌──────────── vch netd <network> ───────────┐
//!  QEMU (container B) ─┼─ <state>/netd/<key>/sw.sock ──│ switch (learned MACs, flooding)            │
//!  QEMU (container C) ─┘   4-byte length + frame       │   ├─ gateway: libslirp (ARP, NAT out, -p)   │
//!                                                      │   └─ DNS at the gateway: container names,   │
//!                                                      │      aliases, short IDs; the rest upstream  │
//!  keepers, the engine ─── ctl.sock (JSON lines) ──────│ published ports per container               │
//!                                                      └────────────────────────────────────────────┘
//! ```
//!
//! Every NIC of a container VM is `-netdev stream,server=off` to its network's switch
//! socket, so the containers of one network are on one Ethernet segment and reach each
//! other on any port, and containers of different networks share nothing. The gateway is
//! libslirp, the user-mode TCP/IP stack QEMU itself uses for `-netdev user`: it answers ARP
//! for the gateway address, NATs the containers' connections out through ordinary sockets of
//! this process (the gateway address itself stands for this machine's loopback, as with QEMU
//! user networking), and publishes ports (`-p`) with its host forwards. Its DHCP server is
//! off: the port layer assigns each container its address ([`crate::ipam`]). DNS queries to
//! the gateway are answered by the segment's own resolver ([`dns`]) from the state
//! directory: a running container on this network by name, short or full ID and its
//! `--network-alias` names (user-defined networks only, docker's rule), anything else
//! forwarded to this machine's name servers.
//!
//! Life: the first container (or `network connect`) to need a network starts its netd
//! ([`ensure`]), in a process group of its own so that it outlives whoever started it (a
//! `vch run`, a keeper, the daemon). Whoever starts a VM on the network holds a shared lock
//! on `users.lock` for the VM's life; the netd ends when that lock is free and no QEMU is
//! connected, after removing its sockets under an exclusive hold of the same lock, so a
//! container starting at that moment waits and then starts a new one. A netd found running
//! is used as it is: a restarted `vch daemon` finds every segment where it was.

mod daemon;
pub mod dns;
mod slirp;
pub mod switch;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::network::{Network, PortSpec};

pub use daemon::run;

/// How long a starter waits for a new netd to answer.
const START_WAIT: Duration = Duration::from_secs(20);
/// How long a control request may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// Segment errors.
#[derive(Debug, thiserror::Error)]
pub enum NetdError {
    /// a file or socket operation failed
    #[error("network {network}: {what} {}: {source}", path.display())]
    Io {
        network: String,
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// the netd process could not be started or did not answer
    #[error("network {network}: its segment (vch netd) did not start: {why}")]
    Start { network: String, why: String },
    /// the netd refused a request
    #[error("network {network}: {message}")]
    Refused { network: String, message: String },
    /// the netd's definition file is damaged
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// libslirp could not be set up
    #[error("network {network}: the gateway (libslirp) could not be set up: {why}")]
    Slirp { network: String, why: String },
}

/// Where one network's segment lives: `<state>/netd/<key>/`, the key a hash of what the
/// segment is made of (name, subnet, gateway, creation time), so that a network removed and
/// made again differently never finds the old segment's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub network: Network,
    pub dir: PathBuf,
}

impl Segment {
    pub fn new(state_root: &Path, network: &Network) -> Segment {
        let id = format!(
            "{} {} {} {}",
            network.name, network.subnet, network.gateway, network.created
        );
        let digest = Sha256::digest(id.as_bytes());
        let key: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Segment {
            network: network.clone(),
            dir: state_root.join("netd").join(key),
        }
    }

    /// The switch's socket, which QEMU connects to.
    pub fn switch_sock(&self) -> PathBuf {
        self.dir.join("sw.sock")
    }

    /// The control socket.
    pub fn ctl_sock(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    fn users_lock(&self) -> PathBuf {
        self.dir.join("users.lock")
    }

    fn netd_lock(&self) -> PathBuf {
        self.dir.join("netd.lock")
    }

    fn definition(&self) -> PathBuf {
        self.dir.join("network.json")
    }

    /// The netd's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("netd.log")
    }

    fn io(&self, what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NetdError {
        let network = self.network.name.clone();
        let path = path.to_owned();
        move |source| NetdError::Io {
            network,
            what,
            path,
            source,
        }
    }

    /// Whether a netd serves this segment now.
    pub fn running(&self) -> bool {
        self.request(&Request::Ping).is_ok()
    }

    /// Sends one control request.
    fn request(&self, req: &Request) -> Result<Reply, NetdError> {
        let path = self.ctl_sock();
        let io = |what| self.io(what, &path);
        let mut s = UnixStream::connect(&path).map_err(io("connect"))?;
        s.set_read_timeout(Some(CTL_TIMEOUT))
            .map_err(io("set up"))?;
        s.set_write_timeout(Some(CTL_TIMEOUT))
            .map_err(io("set up"))?;
        let mut line = serde_json::to_vec(req).map_err(|source| NetdError::Json {
            path: path.clone(),
            source,
        })?;
        line.push(b'\n');
        s.write_all(&line).map_err(io("write"))?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(io("read"))?;
        let reply: Reply = serde_json::from_str(&answer).map_err(|source| NetdError::Json {
            path: path.clone(),
            source,
        })?;
        match reply.error {
            Some(message) => Err(NetdError::Refused {
                network: self.network.name.clone(),
                message,
            }),
            None => Ok(reply),
        }
    }

    /// Publishes `ports` of container `owner` (at `guest`) on this segment's gateway; an
    /// error (a host port in use) says which.
    pub fn forward(
        &self,
        owner: &str,
        guest: std::net::Ipv4Addr,
        ports: &[PortSpec],
    ) -> Result<(), NetdError> {
        if ports.is_empty() {
            return Ok(());
        }
        self.request(&Request::Forward {
            owner: owner.to_owned(),
            guest,
            ports: ports.to_vec(),
        })
        .map(drop)
    }

    /// Withdraws every port `owner` published.
    pub fn unforward(&self, owner: &str) -> Result<(), NetdError> {
        self.request(&Request::Unforward {
            owner: owner.to_owned(),
        })
        .map(drop)
    }

    /// What the netd reports about itself.
    pub fn status(&self) -> Result<Status, NetdError> {
        self.request(&Request::Status)?
            .status
            .ok_or_else(|| NetdError::Refused {
                network: self.network.name.clone(),
                message: "no status in the reply".into(),
            })
    }
}

/// A control request (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Ping,
    Status,
    Forward {
        owner: String,
        guest: std::net::Ipv4Addr,
        ports: Vec<PortSpec>,
    },
    Unforward {
        owner: String,
    },
}

/// A control reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// A netd's view of its segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    /// QEMU NICs connected.
    pub ports: usize,
    /// MAC addresses learned.
    pub macs: usize,
    /// Published ports: `owner host->guest`.
    pub forwards: Vec<String>,
    /// Frames switched, and dropped for a full receiver.
    pub frames: u64,
    pub dropped: u64,
    /// DNS queries answered from the segment's names, and forwarded.
    pub dns_local: u64,
    pub dns_forwarded: u64,
}

/// A hold on a segment: while it lives, the segment's netd stays (see the module docs).
#[derive(Debug)]
pub struct Hold {
    pub segment: Segment,
    _users: nix::fcntl::Flock<fs::File>,
}

/// The `vch` binary that runs netd processes: `$VCH_EXE`, this program if it is `vch`, else
/// a `vch` beside it or one directory up (a test or bench binary of the same build).
pub fn vch_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("VCH_EXE") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vch"));
    if me.file_name().is_some_and(|n| n == "vch") {
        return me;
    }
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    [dir.join("vch"), dir.join("../vch")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vch"))
}

/// Makes sure `network`'s segment runs and holds it (see [`Hold`]): starts `exe netd DIR` if
/// no netd serves it, and waits until it answers.
pub fn ensure(state_root: &Path, network: &Network, exe: &Path) -> Result<Hold, NetdError> {
    let segment = Segment::new(state_root, network);
    fs::create_dir_all(&segment.dir).map_err(segment.io("create", &segment.dir))?;
    let users_path = segment.users_lock();
    let users = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&users_path)
        .map_err(segment.io("open", &users_path))?;
    // Shared: every user at once; blocks only while a netd is shutting down.
    let users = nix::fcntl::Flock::lock(users, nix::fcntl::FlockArg::LockShared)
        .map_err(|(_, e)| segment.io("lock", &users_path)(e.into()))?;
    if segment.running() {
        return Ok(Hold {
            segment,
            _users: users,
        });
    }
    write_definition(&segment)?;
    let log_path = segment.log();
    let log = fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(segment.io("open", &log_path))?;
    let start = || -> io::Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("--state")
            .arg(state_root)
            .arg("netd")
            .arg(&segment.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            // Its own process group: the segment outlives the process that started it and
            // a signal to that process's group (a ctrl-c) does not reach it.
            .process_group(0)
            .spawn()
    };
    let mut child = start().map_err(|e| NetdError::Start {
        network: network.name.clone(),
        why: format!("{}: {e}", exe.display()),
    })?;
    let deadline = Instant::now() + START_WAIT;
    let outcome = loop {
        if segment.running() {
            break Ok(());
        }
        // A netd that exits at once lost the race to another one, which answers soon, or
        // failed: its log says why.
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() {
                break Err(last_line(&log_path));
            }
        }
        if Instant::now() > deadline {
            break Err(format!("no answer within {START_WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Reaped on a thread: the netd outlives this process if it must, and leaves no zombie
    // if it ends first.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    outcome.map_err(|why| NetdError::Start {
        network: network.name.clone(),
        why: format!("{why} (see {})", log_path.display()),
    })?;
    Ok(Hold {
        segment,
        _users: users,
    })
}

fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("it exited")
        .trim()
        .to_owned()
}

fn write_definition(segment: &Segment) -> Result<(), NetdError> {
    let path = segment.definition();
    let tmp = segment
        .dir
        .join(format!("network.json.{}", std::process::id()));
    let text =
        serde_json::to_string_pretty(&segment.network).map_err(|source| NetdError::Json {
            path: path.clone(),
            source,
        })?;
    fs::write(&tmp, text).map_err(segment.io("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(segment.io("rename", &path))
}

fn read_definition(dir: &Path) -> Result<Network, NetdError> {
    let path = dir.join("network.json");
    let text = fs::read_to_string(&path).map_err(|source| NetdError::Io {
        network: String::new(),
        what: "read",
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| NetdError::Json { path, source })
}

/// The network as the store defines it, when the NIC's copy is of that definition (the
/// copy carries a container's `--dns`, which is no business of the segment's); else the
/// copy (the network was removed since, or made again differently).
pub fn defined(store: &crate::network::NetworkStore, copy: &Network) -> Network {
    match store.get(&copy.name) {
        Ok(n) if Segment::new(Path::new(""), &n).dir == Segment::new(Path::new(""), copy).dir => n,
        _ => copy.clone(),
    }
}

/// Holds the segments of a VM's NICs (in NIC order) for as long as it runs.
pub fn ensure_all(
    state_root: &Path,
    nics: &[crate::network::AttachedNic],
) -> Result<Vec<Hold>, NetdError> {
    let exe = vch_exe();
    let store = crate::network::NetworkStore::new(state_root);
    nics.iter()
        .map(|n| ensure(state_root, &defined(&store, &n.network), &exe))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines() {
        let r = Request::Forward {
            owner: "abc".into(),
            guest: "10.0.0.2".parse().unwrap(),
            ports: vec![crate::network::parse_port_spec("8080:80").unwrap()],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"op":"forward","owner":"abc","guest":"10.0.0.2""#));
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::Ping).unwrap(),
            r#"{"op":"ping"}"#
        );
        assert_eq!(serde_json::to_string(&Reply::default()).unwrap(), "{}");
    }

    #[test]
    fn segments_differ_by_definition() {
        let root = Path::new("/state");
        let a = Network::bridge();
        let mut b = a.clone();
        b.created = 5;
        let (sa, sb) = (Segment::new(root, &a), Segment::new(root, &b));
        assert_ne!(sa.dir, sb.dir);
        assert!(sa.dir.starts_with("/state/netd"));
        assert_eq!(sa, Segment::new(root, &a), "stable");
        // The DNS servers a container overrides do not make a segment of their own.
        let mut c = a.clone();
        c.dns = vec!["10.0.0.53".parse().unwrap()];
        assert_eq!(Segment::new(root, &c).dir, sa.dir);
    }
}
