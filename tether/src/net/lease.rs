//! DHCP lease maintenance (lifecycle §6.7): renew each NIC's lease at half its time; after
//! a failure retry after `max(1 min, lease / d)` with `d` starting at 4 and doubling; on
//! success re-apply the NIC's addresses and routes and report, so the runtime records the
//! new values in the config and writes it back (W5). On shutdown the leases are released.
//!
//! Like the original, an expired lease is not dropped: the address stays and renewals go
//! on at the shortest interval. Renewals are unicast to the granting server (RENEWING);
//! there is no REBINDING broadcast.

use std::sync::Arc;
use std::time::Duration;

use guestinfo::ContainerConfig;
use tokio::time::Instant;

use super::apply::{self, Leases, NicLease, Paths, RoutePlan, BRIDGE_OUT_TABLE};
use super::dhcp::{self, Lease};
use super::link::Netlink;
use super::NetError;

/// The shortest pause between renewal attempts.
const MIN_RETRY: Duration = Duration::from_secs(60);
/// The first retry divisor of the lease time.
const FIRST_DIVISOR: u32 = 4;

/// A successful renewal, for the runtime to record with [`record_renewal`].
#[derive(Debug, Clone)]
pub struct Renewal {
    pub ifname: String,
    /// The endpoints (`networks|<name>`) sharing the lease.
    pub endpoints: Vec<String>,
    pub old: Lease,
    pub new: Lease,
    paths: Arc<Paths>,
}

impl Renewal {
    /// Whether anything the config publishes changed (else no write-back is needed).
    pub fn changed(&self) -> bool {
        let (o, n) = (&self.old, &self.new);
        (o.addr, o.mask, o.gateway, &o.dns) != (n.addr, n.mask, n.gateway, &n.dns)
    }
}

/// When the next renewal of a lease is due after a success.
fn after_success(lease: &Lease) -> Option<Duration> {
    lease.duration().map(|d| d / 2)
}

/// When to retry after a failure, and the next divisor.
fn after_failure(lease: &Lease, divisor: u32) -> (Duration, u32) {
    let d = lease.duration().unwrap_or(Duration::ZERO);
    let wait = (d / divisor.max(1)).max(MIN_RETRY);
    (wait, divisor.saturating_mul(2))
}

#[derive(Debug)]
struct Schedule {
    next: Instant,
    divisor: u32,
}

/// Keeps every lease in `leases` renewed; runs until dropped (returns at once when no lease
/// needs renewing). After each successful renewal `on_renew` is called on the runtime
/// thread; it should pass the renewal to [`record_renewal`] and, if that returns true,
/// write the whole config back (W5). The DHCP and netlink work runs on the blocking pool.
pub async fn maintain<F>(leases: Leases, on_renew: F)
where
    F: FnMut(Renewal),
{
    // The exchange blocks (raw sockets, timeouts): a thread of its own.
    let renew = |job: NicLease| async move {
        crate::blocking::run("dhcp-renew", move || renew_and_reapply(&job))
            .await
            .unwrap_or_else(|e| Err(format!("renewal task failed: {e}")))
    };
    run(leases, renew, on_renew).await
}

/// [`maintain`] with the renewal itself as a parameter (tests replace it with one that
/// needs no thread, so tokio's paused clock stays exact).
async fn run<R, Fut, F>(leases: Leases, renew: R, mut on_renew: F)
where
    R: Fn(NicLease) -> Fut,
    Fut: std::future::Future<Output = Result<Lease, String>>,
    F: FnMut(Renewal),
{
    let now = Instant::now();
    let mut plan: Vec<Option<Schedule>> = leases
        .snapshot()
        .iter()
        .map(|l| {
            let due = after_success(&l.lease)?;
            let since = l.granted.elapsed();
            Some(Schedule {
                next: now + due.saturating_sub(since),
                divisor: FIRST_DIVISOR,
            })
        })
        .collect();
    loop {
        let Some((i, next)) = plan
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.next)))
            .min_by_key(|(_, next)| *next)
        else {
            tracing::debug!("no DHCP lease to maintain");
            return;
        };
        tokio::time::sleep_until(next).await;
        let Some(nic) = leases.lock().get(i).cloned() else {
            return;
        };
        let outcome = renew(nic.clone()).await;
        let slot = &mut plan[i];
        match outcome {
            Ok(new) => {
                tracing::info!(ifname = %nic.ifname, address = %new.addr, lease_s = new.lease_secs,
                    "DHCP lease renewed");
                if let Some(l) = leases.lock().get_mut(i) {
                    l.lease = new.clone();
                    l.granted = std::time::Instant::now();
                }
                *slot = after_success(&new).map(|d| Schedule {
                    next: Instant::now() + d,
                    divisor: FIRST_DIVISOR,
                });
                on_renew(Renewal {
                    ifname: nic.ifname.clone(),
                    endpoints: nic.endpoints.clone(),
                    old: nic.lease.clone(),
                    new,
                    paths: leases.paths.clone(),
                });
            }
            Err(e) => {
                let divisor = slot.as_ref().map_or(FIRST_DIVISOR, |s| s.divisor);
                let (wait, divisor) = after_failure(&nic.lease, divisor);
                tracing::warn!(ifname = %nic.ifname, error = %e, retry_s = wait.as_secs(),
                    "DHCP renewal failed");
                *slot = Some(Schedule {
                    next: Instant::now() + wait,
                    divisor,
                });
            }
        }
    }
}

/// Renews one NIC's lease and, if the address or gateway moved, moves them on the link.
fn renew_and_reapply(nic: &NicLease) -> Result<Lease, String> {
    let new = dhcp::renew(&nic.params, &nic.lease).map_err(|e| e.to_string())?;
    let old = &nic.lease;
    if (old.addr, old.mask, old.gateway) == (new.addr, new.mask, new.gateway) {
        return Ok(new);
    }
    // The lease is renewed either way; a link that cannot follow is logged and retried at
    // the next renewal, which sees the same difference.
    if let Err(e) = move_address(nic, &new) {
        tracing::error!(ifname = %nic.ifname, error = %e, "cannot apply the renewed lease");
    }
    Ok(new)
}

fn move_address(nic: &NicLease, new: &Lease) -> Result<(), super::link::LinkError> {
    let old = &nic.lease;
    let mut nl = Netlink::open()?;
    let idx = nic.params.ifindex;
    if (old.addr, old.mask) != (new.addr, new.mask) {
        nl.delete_address(idx, old.addr, old.prefix_len())?;
        nl.add_address(idx, new.addr, new.prefix_len())?;
        let link = nl.link_by_index(idx)?;
        apply::announce(&link, new.addr);
    }
    // Routes via the router follow it (an address change may also have taken them away).
    if let Some(gw) = new.gateway {
        if nic.default_route || !nic.destinations.is_empty() {
            let plan = RoutePlan {
                ifindex: idx,
                gateway: gw,
                prefix: new.prefix_len(),
                default: nic.default_route,
                destinations: nic.destinations.clone(),
                table201: nl.rule_uses_table(BRIDGE_OUT_TABLE).unwrap_or(false),
            };
            plan.apply(&mut nl, old.gateway)?;
        }
    }
    Ok(())
}

/// Records a renewal in the config: the endpoints' `assigned`, gateway and name servers,
/// then `/etc/hosts` and `/etc/resolv.conf`. Returns whether the config changed, i.e.
/// whether the runtime should write it back.
pub fn record_renewal(cfg: &mut ContainerConfig, r: &Renewal) -> Result<bool, NetError> {
    if !r.changed() {
        return Ok(false);
    }
    let prefix = r.new.prefix_len();
    for name in &r.endpoints {
        if let Some(ep) = cfg.networks.get_mut(name) {
            apply::publish_endpoint(ep, r.new.addr, prefix, Some(&r.new));
        }
    }
    apply::publish_names(cfg, &r.paths)?;
    Ok(true)
}

/// Releases every lease (shutdown). Failures are logged: the server reclaims the address
/// when the lease runs out anyway.
pub fn release_all(leases: &Leases) {
    for nic in leases.snapshot() {
        match dhcp::release(&nic.params, &nic.lease) {
            Ok(()) => tracing::debug!(ifname = %nic.ifname, "DHCP lease released"),
            Err(e) => tracing::warn!(ifname = %nic.ifname, error = %e, "DHCP release failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn lease(secs: u32) -> Lease {
        Lease {
            addr: Ipv4Addr::new(192, 0, 2, 10),
            mask: Ipv4Addr::new(255, 255, 255, 0),
            gateway: None,
            dns: vec![],
            server: Ipv4Addr::new(192, 0, 2, 1),
            lease_secs: secs,
        }
    }

    #[test]
    fn renewal_schedule() {
        assert_eq!(after_success(&lease(3600)), Some(Duration::from_secs(1800)));
        assert_eq!(after_success(&lease(u32::MAX)), None);
        let l = lease(3600);
        let (w, d) = after_failure(&l, FIRST_DIVISOR);
        assert_eq!((w, d), (Duration::from_secs(900), 8));
        let (w, d) = after_failure(&l, d);
        assert_eq!((w, d), (Duration::from_secs(450), 16));
        let (w, _) = after_failure(&l, 64);
        assert_eq!(w, MIN_RETRY);
        // A short lease never retries more often than once a minute.
        assert_eq!(after_failure(&lease(100), 4).0, MIN_RETRY);
        assert_eq!(after_failure(&l, u32::MAX).1, u32::MAX);
    }

    #[test]
    fn renewal_change_detection_and_recording() {
        let d = std::env::temp_dir().join(format!("tether-renew-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let paths = Arc::new(Paths {
            private_etc: d.clone(),
            etc: None,
            ..Paths::default()
        });
        let r = Renewal {
            ifname: "eth0".into(),
            endpoints: vec!["bridge".into()],
            old: lease(3600),
            new: lease(7200),
            paths,
        };
        assert!(!r.changed());
        let mut cfg = ContainerConfig::default();
        let mut ep = guestinfo::config::NetworkEndpoint::default();
        ep.network.common.name = "bridge".into();
        apply::publish_endpoint(&mut ep, r.old.addr, 24, Some(&r.old));
        cfg.networks.insert("bridge".into(), ep);
        let before = cfg.clone();
        assert!(!record_renewal(&mut cfg, &r).unwrap());
        assert_eq!(cfg, before);

        let moved = Renewal {
            new: Lease {
                addr: Ipv4Addr::new(192, 0, 2, 11),
                dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
                ..lease(3600)
            },
            ..r
        };
        assert!(moved.changed());
        assert!(record_renewal(&mut cfg, &moved).unwrap());
        let ep = &cfg.networks["bridge"];
        assert_eq!(
            ep.assigned,
            guestinfo::config::IpNet::new(Ipv4Addr::new(192, 0, 2, 11).into(), 24)
        );
        assert_eq!(
            ep.network.assigned.nameservers,
            vec![std::net::IpAddr::from(Ipv4Addr::new(192, 0, 2, 53))]
        );
        let hosts = std::fs::read_to_string(d.join("hosts")).unwrap();
        assert!(hosts.ends_with("192.0.2.11 bridge.localhost\n"), "{hosts}");
        let resolv = std::fs::read_to_string(d.join("resolv.conf")).unwrap();
        assert!(resolv.starts_with("nameserver 192.0.2.53\n"), "{resolv}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn nic(secs: u32) -> NicLease {
        NicLease {
            ifname: "eth0".into(),
            params: dhcp::Params {
                ifindex: 2,
                mac: [2, 0, 0, 0, 0, 1],
                client_id: vec![0xff],
                hostname: None,
                want_router: true,
                want_dns: true,
            },
            lease: lease(secs),
            granted: std::time::Instant::now(),
            endpoints: vec!["bridge".into(), "other".into()],
            default_route: true,
            destinations: Vec::new(),
        }
    }

    fn assert_send<T: Send>(_: &T) {}

    /// On tokio's paused clock, which moves only when every task waits on a timer (the
    /// renewal here is immediate): the schedule is checked exactly, however slowly the
    /// machine runs the test.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn renews_at_half_the_lease_and_reports() {
        let real = std::time::Instant::now();
        let leases = Leases::from_parts(vec![nic(2), nic(u32::MAX)], Paths::default());
        // Each renewal moves the address up by one.
        let renew = |n: NicLease| {
            let mut l = n.lease;
            l.addr = Ipv4Addr::from(u32::from(l.addr) + 1);
            std::future::ready(Ok(l))
        };
        let mut seen = Vec::new();
        let start = Instant::now();
        let fut = run(leases.clone(), renew, |r| seen.push((start.elapsed(), r)));
        assert_send(&fut);
        let _ = tokio::time::timeout(Duration::from_millis(2500), fut).await;
        // The grant's age is real time (the lease was granted before the clock paused).
        let granted_before_start = real.elapsed();
        // Renewed at 1 s (half of the 2 s lease, counted from the grant) and 1 s after that;
        // the infinite lease never.
        assert_eq!(seen.len(), 2, "{seen:?}");
        let second = Duration::from_secs(1);
        assert!(seen[0].0 <= second, "{seen:?}");
        assert!(seen[0].0 + granted_before_start >= second, "{seen:?}");
        assert_eq!(seen[1].0 - seen[0].0, second, "{seen:?}");
        let (_, r) = &seen[1];
        assert_eq!(r.endpoints, ["bridge", "other"]);
        assert_eq!(r.old.addr, Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(r.new.addr, Ipv4Addr::new(192, 0, 2, 12));
        assert!(r.changed());
        let now = leases.snapshot();
        assert_eq!(now[0].lease.addr, Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(now[1].lease.addr, Ipv4Addr::new(192, 0, 2, 10));
    }

    /// Against the kernel in a private network namespace. Root and `ip` are prerequisites
    /// of the suite (scripts/setup, CI): without them this fails rather than passing
    /// untested.
    #[test]
    fn a_moved_lease_moves_address_and_routes() {
        let ip_ok = std::process::Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ip_ok, "`ip` (iproute2) is needed");
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root, for a private network namespace"
        );
        // This thread alone moves into the new namespace; the rest of the test binary stays.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("network namespace");
        let sh = |c: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", c])
                .output()
                .unwrap();
            assert!(out.status.success(), "{c}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        sh("ip link add v0 type veth peer name v1 && ip link set v1 up && ip link set v0 up");
        sh("ip addr add 192.0.2.10/24 dev v0 && ip route add default via 192.0.2.1 dev v0");
        sh("ip route add 203.0.113.0/24 via 192.0.2.1 dev v0");
        let mut nl = Netlink::open().unwrap();
        let v0 = nl.link_by_name("v0").unwrap();
        let mut n = nic(3600);
        n.params.ifindex = v0.index;
        n.lease.gateway = Some(Ipv4Addr::new(192, 0, 2, 1));
        n.destinations = vec![(Ipv4Addr::new(203, 0, 113, 0), 24)];
        let new = Lease {
            addr: Ipv4Addr::new(198, 51, 100, 20),
            gateway: Some(Ipv4Addr::new(198, 51, 100, 1)),
            ..n.lease.clone()
        };
        move_address(&n, &new).unwrap();
        assert_eq!(
            nl.addresses(v0.index).unwrap(),
            vec![(Ipv4Addr::new(198, 51, 100, 20), 24)]
        );
        assert_eq!(
            nl.default_gateway(v0.index).unwrap(),
            Some(Ipv4Addr::new(198, 51, 100, 1))
        );
        let routes = sh("ip -4 route show 203.0.113.0/24");
        assert_eq!(routes.trim(), "203.0.113.0/24 via 198.51.100.1 dev v0");
    }

    #[test]
    fn maintain_is_send() {
        assert_send(&maintain(Leases::default(), |_| {}));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_to_maintain_returns() {
        let mut called = false;
        maintain(Leases::default(), |_| called = true).await;
        assert!(!called);
    }
}
