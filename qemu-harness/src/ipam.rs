//! Container addresses on a network, assigned by the port layer as VIC's bridge IPAM does:
//! each container's NIC gets an address of the network's subnet when it joins, keeps it while
//! the container exists, and writes it into the endpoint (`ip`, with the subnet's mask), so
//! the tether configures it without asking anyone (no DHCP on the segment).
//!
//! A claim is a file `<state>/networks/.ipam/<network>/<address>` created with `O_EXCL` and
//! holding the container's ID: two `vch` processes (or a `vch` and the daemon) can never
//! claim the same address, without a lock. Nothing has to remember to give a claim back: a
//! claim is valid while the container's metadata still lists that address on that network,
//! or while it is young (the container is being created and has no metadata yet); any other
//! claim is stale and is taken over by the next container that wants the address. Removing
//! a container or disconnecting it releases its claims eagerly all the same.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A network's addresses as the IPAM sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The network's name (claims are kept per network).
    pub network: String,
    /// Host addresses, the first and the last.
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// Host addresses no container may have (the gateway, its DNS forwarder).
    pub reserved: Vec<Ipv4Addr>,
    /// How the network is laid out, for messages (`10.1.0.0/24, gateway 10.1.0.1, …`).
    pub describe: String,
}

impl Pool {
    /// Whether no container may have `ip`.
    pub fn reserved(&self, ip: Ipv4Addr) -> bool {
        ip < self.first || ip > self.last || self.reserved.contains(&ip)
    }
}

/// Whether a container still holds an address: `holder(owner, network, ip)` is
/// `Some(true)` when the container `owner` lists `ip` on `network`, `Some(false)` when it
/// exists without it, `None` when there is no such container (yet).
pub type Holder<'a> = &'a dyn Fn(&str, &str, Ipv4Addr) -> Option<bool>;

/// IPAM errors.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// an address the user asked for is not one a container may have
    #[error("--ip {ip} is not a free address of network {network} ({describe})")]
    Reserved {
        ip: Ipv4Addr,
        network: String,
        describe: String,
    },
    /// the address is someone else's
    #[error("address {ip} is already in use on network {network}")]
    InUse { ip: Ipv4Addr, network: String },
    /// none left
    #[error("no free address left on network {network} ({describe})")]
    Exhausted { network: String, describe: String },
    /// a claim file could not be made or read
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// How long a claim without metadata behind it is held for a container being created.
const YOUNG: Duration = Duration::from_secs(120);

fn claims_dir(state_root: &Path, network: &str) -> PathBuf {
    state_root.join("networks").join(".ipam").join(network)
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IpamError + 'a {
    move |source| IpamError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Claims an address of `pool` for container `id`: `want` (a user's `--ip`), else the
/// lowest free one. `holder` says whether another claimant still holds its address.
pub fn claim(
    state_root: &Path,
    pool: &Pool,
    id: &str,
    want: Option<Ipv4Addr>,
    holder: Holder<'_>,
) -> Result<Ipv4Addr, IpamError> {
    let dir = claims_dir(state_root, &pool.network);
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    if let Some(ip) = want {
        if pool.reserved(ip) {
            return Err(IpamError::Reserved {
                ip,
                network: pool.network.clone(),
                describe: pool.describe.clone(),
            });
        }
        return match try_claim(&dir, &pool.network, ip, id, holder)? {
            true => Ok(ip),
            false => Err(IpamError::InUse {
                ip,
                network: pool.network.clone(),
            }),
        };
    }
    for n in u32::from(pool.first)..=u32::from(pool.last) {
        let ip = Ipv4Addr::from(n);
        if pool.reserved(ip) {
            continue;
        }
        if try_claim(&dir, &pool.network, ip, id, holder)? {
            return Ok(ip);
        }
    }
    Err(IpamError::Exhausted {
        network: pool.network.clone(),
        describe: pool.describe.clone(),
    })
}

/// Takes `ip` for `id` if nobody validly holds it. Whether it was taken.
fn try_claim(
    dir: &Path,
    network: &str,
    ip: Ipv4Addr,
    id: &str,
    holder: Holder<'_>,
) -> Result<bool, IpamError> {
    let path = dir.join(ip.to_string());
    // Two rounds: a stale claim is removed once and the address claimed afresh.
    for _ in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(id.as_bytes()).map_err(io_err("write", &path))?;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&path).unwrap_or_default();
                if owner == id {
                    return Ok(true);
                }
                if holds(holder, network, ip, &owner, &path) {
                    return Ok(false);
                }
                tracing::debug!(%ip, network, stale = %owner, "taking over a stale address claim");
                let _ = fs::remove_file(&path);
            }
            Err(e) => return Err(io_err("create", &path)(e)),
        }
    }
    Ok(false)
}

/// Whether `owner`'s claim on `ip` is valid: its container still has that address on that
/// network, or the claim is too young for the container to have metadata yet.
fn holds(holder: Holder<'_>, network: &str, ip: Ipv4Addr, owner: &str, path: &Path) -> bool {
    let young = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < YOUNG);
    if owner.is_empty() {
        return young;
    }
    holder(owner, network, ip).unwrap_or(young)
}

/// Gives back `id`'s claim on `ip` (only if it is still `id`'s).
pub fn release(state_root: &Path, network: &str, ip: Ipv4Addr, id: &str) {
    let path = claims_dir(state_root, network).join(ip.to_string());
    if fs::read_to_string(&path).is_ok_and(|owner| owner == id) {
        let _ = fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// 10.1.0.0/29 with its gateway at .1 and the DNS forwarder at .6: .2-.5 are free.
    fn pool(name: &str) -> Pool {
        Pool {
            network: name.into(),
            first: ip("10.1.0.1"),
            last: ip("10.1.0.6"),
            reserved: vec![ip("10.1.0.1"), ip("10.1.0.6")],
            describe: "10.1.0.0/29".into(),
        }
    }

    /// No container metadata anywhere (only claims' ages count).
    fn nobody(_: &str, _: &str, _: Ipv4Addr) -> Option<bool> {
        None
    }

    #[test]
    fn claims_are_exclusive_and_skip_reserved_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let net = pool("small");
        // .0 network, .1 gateway, .6 DNS forwarder, .7 broadcast: .2-.5 are free.
        let a = claim(dir.path(), &net, "aaaa", None, &nobody).unwrap();
        let b = claim(dir.path(), &net, "bbbb", None, &nobody).unwrap();
        assert_eq!((a, b), (ip("10.1.0.2"), ip("10.1.0.3")));
        // The same owner claiming again gets its own address back.
        assert_eq!(
            claim(dir.path(), &net, "aaaa", Some(a), &nobody).unwrap(),
            a
        );
        assert!(
            claim(dir.path(), &net, "cccc", Some(a), &nobody).is_err(),
            "taken"
        );
        assert!(claim(dir.path(), &net, "cccc", Some(ip("10.1.0.1")), &nobody).is_err());
        assert!(claim(dir.path(), &net, "cccc", Some(ip("10.1.0.6")), &nobody).is_err());
        assert!(claim(dir.path(), &net, "cccc", Some(ip("10.2.0.2")), &nobody).is_err());
        assert_eq!(
            claim(dir.path(), &net, "cccc", Some(ip("10.1.0.5")), &nobody).unwrap(),
            ip("10.1.0.5")
        );
        assert_eq!(
            claim(dir.path(), &net, "dddd", None, &nobody).unwrap(),
            ip("10.1.0.4")
        );
        assert!(
            claim(dir.path(), &net, "eeee", None, &nobody).is_err(),
            "full"
        );
        // A release frees the address for the next one; someone else's release does not.
        release(dir.path(), "small", b, "zzzz");
        assert!(claim(dir.path(), &net, "eeee", None, &nobody).is_err());
        release(dir.path(), "small", b, "bbbb");
        assert_eq!(claim(dir.path(), &net, "eeee", None, &nobody).unwrap(), b);
    }

    #[test]
    fn stale_claims_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let net = pool("n");
        let path = claims_dir(dir.path(), "n").join("10.1.0.2");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "0123456789abcdef").unwrap();
        // Young: held for a container being created.
        assert_eq!(
            claim(dir.path(), &net, "new", None, &nobody).unwrap(),
            ip("10.1.0.3")
        );
        // Old, and no container has it: stale.
        let old = std::time::SystemTime::now() - Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            claim(dir.path(), &net, "new2", None, &nobody).unwrap(),
            ip("10.1.0.2")
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "new2");
    }
}
