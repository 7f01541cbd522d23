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

use crate::network::{Network, NetworkError};

/// How long a claim without metadata behind it is held for a container being created.
const YOUNG: Duration = Duration::from_secs(120);

fn claims_dir(state_root: &Path, network: &str) -> PathBuf {
    state_root.join("networks").join(".ipam").join(network)
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Addresses no container may have: the network and broadcast addresses, the gateway and
/// the gateway's DNS forwarder.
pub fn reserved(net: &Network, ip: Ipv4Addr) -> bool {
    !net.subnet.is_host(ip) || ip == net.gateway || ip == net.slirp_dns()
}

/// Claims an address of `net` for container `id`: `want` (a user's `--ip`), else the lowest
/// free one.
pub fn claim(
    state_root: &Path,
    net: &Network,
    id: &str,
    want: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, NetworkError> {
    let dir = claims_dir(state_root, &net.name);
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    if let Some(ip) = want {
        if reserved(net, ip) {
            return Err(NetworkError::Invalid(format!(
                "--ip {ip} is not a free address of network {} ({}, gateway {}, DNS {})",
                net.name,
                net.subnet,
                net.gateway,
                net.slirp_dns()
            )));
        }
        return match try_claim(state_root, &dir, &net.name, ip, id)? {
            true => Ok(ip),
            false => Err(NetworkError::Invalid(format!(
                "address {ip} is already in use on network {}",
                net.name
            ))),
        };
    }
    let first = u32::from(net.subnet.network()) + 1;
    let last = u32::from(net.subnet.broadcast());
    for n in first..last {
        let ip = Ipv4Addr::from(n);
        if reserved(net, ip) {
            continue;
        }
        if try_claim(state_root, &dir, &net.name, ip, id)? {
            return Ok(ip);
        }
    }
    Err(NetworkError::Invalid(format!(
        "no free address left on network {} ({})",
        net.name, net.subnet
    )))
}

/// Takes `ip` for `id` if nobody validly holds it. Whether it was taken.
fn try_claim(
    state_root: &Path,
    dir: &Path,
    network: &str,
    ip: Ipv4Addr,
    id: &str,
) -> Result<bool, NetworkError> {
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
                if holds(state_root, network, ip, &owner, &path) {
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
fn holds(state_root: &Path, network: &str, ip: Ipv4Addr, owner: &str, path: &Path) -> bool {
    let young = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < YOUNG);
    let short: String = owner.chars().take(12).collect();
    if owner.is_empty() || short.contains(['/', '.']) {
        return young;
    }
    let meta = fs::read_to_string(state_root.join("vms").join(&short).join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<crate::state::Meta>(&t).ok());
    match meta {
        Some(m) => m
            .nics
            .iter()
            .any(|n| n.network.name == network && n.address() == Some(ip)),
        None => young,
    }
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

    #[test]
    fn claims_are_exclusive_and_skip_reserved_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let mut net = Network::bridge();
        net.name = "small".into();
        net.subnet = "10.1.0.0/29".parse().unwrap();
        net.gateway = ip("10.1.0.1");
        // .0 network, .1 gateway, .6 DNS forwarder, .7 broadcast: .2-.5 are free.
        let a = claim(dir.path(), &net, "aaaa", None).unwrap();
        let b = claim(dir.path(), &net, "bbbb", None).unwrap();
        assert_eq!((a, b), (ip("10.1.0.2"), ip("10.1.0.3")));
        // The same owner claiming again gets its own address back.
        assert_eq!(claim(dir.path(), &net, "aaaa", Some(a)).unwrap(), a);
        assert!(claim(dir.path(), &net, "cccc", Some(a)).is_err(), "taken");
        assert!(claim(dir.path(), &net, "cccc", Some(ip("10.1.0.1"))).is_err());
        assert!(claim(dir.path(), &net, "cccc", Some(ip("10.1.0.6"))).is_err());
        assert!(claim(dir.path(), &net, "cccc", Some(ip("10.2.0.2"))).is_err());
        assert_eq!(
            claim(dir.path(), &net, "cccc", Some(ip("10.1.0.5"))).unwrap(),
            ip("10.1.0.5")
        );
        assert_eq!(
            claim(dir.path(), &net, "dddd", None).unwrap(),
            ip("10.1.0.4")
        );
        assert!(claim(dir.path(), &net, "eeee", None).is_err(), "full");
        // A release frees the address for the next one; someone else's release does not.
        release(dir.path(), "small", b, "zzzz");
        assert!(claim(dir.path(), &net, "eeee", None).is_err());
        release(dir.path(), "small", b, "bbbb");
        assert_eq!(claim(dir.path(), &net, "eeee", None).unwrap(), b);
    }

    #[test]
    fn stale_claims_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut net = Network::bridge();
        net.name = "n".into();
        net.subnet = "10.1.0.0/29".parse().unwrap();
        net.gateway = ip("10.1.0.1");
        let path = claims_dir(dir.path(), "n").join("10.1.0.2");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "0123456789abcdef").unwrap();
        // Young: held for a container being created.
        assert_eq!(
            claim(dir.path(), &net, "new", None).unwrap(),
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
            claim(dir.path(), &net, "new2", None).unwrap(),
            ip("10.1.0.2")
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "new2");
    }
}
