//! A container on the default network gets the address the port layer assigned (the
//! network's next free one, as VIC's bridge IPAM gives it), a default route, the gateway as
//! its name server and host names, and the port layer sees them in the written-back config
//! (`vch inspect`).

use e2e::Vch;

#[test]
fn assigned_address_is_configured_and_written_back() {
    let vch = Vch::new();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--name",
        "dhcp1",
        "--hostname",
        "web",
        "busybox",
        "sh",
        "-c",
        "ip -4 addr show dev eth0; ip route; echo ==; cat /etc/resolv.conf; echo ==; cat /etc/hosts; \
         echo ==; ip addr show dev eth0 | grep inet6 || echo no-inet6; \
         cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6",
    ]);
    assert_eq!(code, 0, "run: {err}");
    let mut parts = out.split("==\n");
    let (ip, resolv, hosts, v6) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    // IPv4 only, as docker has a network without IPv6: not even a link-local address.
    assert_eq!(v6, "no-inet6\n1\n", "{out}");
    assert!(ip.contains("inet 172.16.0.2/16"), "addresses: {ip}");
    assert!(
        ip.contains("default via 172.16.0.1 dev eth0"),
        "routes: {ip}"
    );
    // No configured name server: the gateway is (lifecycle §6.6), where the network's
    // segment answers.
    assert_eq!(
        resolv,
        "nameserver 172.16.0.1\noptions timeout:15\noptions attempts:5\n"
    );
    let hosts: Vec<&str> = hosts.lines().collect();
    assert!(hosts.contains(&"172.16.0.2 bridge.localhost"), "{hosts:?}");
    assert!(hosts.contains(&"127.0.1.1 web"), "{hosts:?}");
    assert!(
        hosts
            .iter()
            .any(|l| l.starts_with("127.0.0.1 ") && l.contains(" localhost")),
        "{hosts:?}"
    );

    // What the tether wrote back, as the port layer reads it.
    let info = vch.inspect("dhcp1");
    let bridge = &info["NetworkSettings"]["Networks"]["bridge"];
    assert_eq!(bridge["IPAddress"], "172.16.0.2", "{bridge}");
    assert_eq!(bridge["IPPrefixLen"], 16, "{bridge}");
    assert_eq!(bridge["Gateway"], "172.16.0.1", "{bridge}");
    // A static endpoint publishes the configured name servers: none.
    assert_eq!(bridge["DNS"], serde_json::json!([]), "{bridge}");
}

#[test]
fn static_address_and_routes_of_a_second_network() {
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&[
        "network",
        "create",
        "--subnet",
        "10.20.0.0/24",
        "--gateway",
        "10.20.0.1",
        "--dns",
        "10.20.0.53",
        "--route",
        "10.30.0.0/16",
        "back",
    ]);
    assert_eq!(code, 0, "network create: {err}");
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--name",
        "st1",
        "--ip",
        "172.16.0.10",
        "--network",
        "bridge",
        "--network",
        "back",
        "busybox",
        "sh",
        "-c",
        "ip -4 addr; echo ==; ip route; echo ==; cat /etc/resolv.conf /etc/hosts",
    ]);
    assert_eq!(code, 0, "run: {err}");
    let mut parts = out.split("==\n");
    let (addrs, routes, files) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    assert!(
        addrs.contains("inet 172.16.0.10/16"),
        "static address: {addrs}"
    );
    assert!(
        addrs.contains("inet 10.20.0."),
        "second network's address: {addrs}"
    );
    let routes: Vec<&str> = routes.lines().map(str::trim).collect();
    assert!(
        routes.contains(&"default via 172.16.0.1 dev eth0"),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"10.30.0.0/16 via 10.20.0.1 dev eth1"),
        "the listed destination is not routed via the second network: {routes:?}"
    );
    assert_eq!(
        routes.iter().filter(|r| r.starts_with("default")).count(),
        1,
        "only the first network carries the default route: {routes:?}"
    );
    assert!(files.contains("nameserver 10.20.0.53\n"), "{files}");
    assert!(files.contains("172.16.0.10 bridge.localhost"), "{files}");
    assert!(files.contains(" back.localhost"), "{files}");
    let info = vch.inspect("st1");
    assert_eq!(
        info["NetworkSettings"]["Networks"]["bridge"]["IPAddress"],
        "172.16.0.10"
    );
}

/// `--nic-model virtio` gives a virtio-net NIC, whose interface sits one level deeper in
/// sysfs than vmxnet3's: the tether still finds it by slot and configures it.
#[test]
fn virtio_nic_model_gets_its_lease() {
    let vch = Vch::new();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--name",
        "vnet",
        "--nic-model",
        "virtio",
        "busybox",
        "sh",
        "-c",
        "ip -4 addr show dev eth0; ls /sys/bus/pci/devices/0000:00:15.1/0000:*:00.0/",
    ]);
    assert_eq!(code, 0, "run: {err}");
    assert!(out.contains("inet 172.16.0.2/16"), "addresses: {out}");
    // It really is the virtio model: the PCI device holds a virtio device, not `net`.
    assert!(
        out.lines().any(|l| l.starts_with("virtio")) && !out.lines().any(|l| l == "net"),
        "not a virtio NIC: {out}"
    );
    assert_eq!(
        vch.inspect("vnet")["NetworkSettings"]["Networks"]["bridge"]["IPAddress"],
        "172.16.0.2"
    );
}

/// `--network none`: no NIC at all, only the loopback interface, up with 127.0.0.1 and, as
/// docker has it for a container without an IPv6 network, IPv6 off (no `::1`).
#[test]
fn network_none_has_only_loopback() {
    let vch = Vch::new();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net; echo ==; cat /sys/class/net/lo/operstate; echo ==; \
         ip addr show dev lo; echo ==; \
         cd /proc/sys/net/ipv6/conf && cat all/disable_ipv6 default/disable_ipv6 lo/disable_ipv6; \
         echo ==; ping -c 1 -W 5 127.0.0.1 >/dev/null && echo reached; \
         echo ==; grep '^::1' /etc/hosts >/dev/null && echo hosts-has-ipv6; \
         echo ==; echo 0 > lo/disable_ipv6 && ip addr show dev lo | grep -o 'inet6 ::1'",
    ]);
    assert_eq!(code, 0, "run: {err}");
    let parts: Vec<&str> = out.split("==\n").collect();
    assert_eq!(
        parts[..2],
        ["lo\n", "unknown\n"],
        "interfaces besides lo, or lo down: {out}"
    );
    let lo = parts.get(2).copied().unwrap_or("");
    assert!(lo.contains("inet 127.0.0.1/8"), "{lo}");
    assert!(!lo.contains("inet6"), "IPv6 on lo: {lo}");
    // As in a docker container without an IPv6 network.
    assert_eq!(parts.get(3).copied(), Some("1\n1\n1\n"), "{out}");
    assert_eq!(parts.get(4).copied(), Some("reached\n"), "{out}");
    // docker's /etc/hosts keeps its IPv6 lines; a workload may turn IPv6 back on.
    assert_eq!(parts.get(5).copied(), Some("hosts-has-ipv6\n"), "{out}");
    assert_eq!(parts.get(6).copied(), Some("inet6 ::1\n"), "{out}");
}

/// The most networks a container can join: 11, the last NIC behind root port 1f.1. Every
/// interface gets its network's address; a 12th network is refused before anything starts.
#[test]
fn eleven_networks_each_get_their_address() {
    let vch = Vch::new();
    let mut nets = vec!["bridge".to_owned()];
    for i in 1..=10 {
        let name = format!("n{i}");
        let (code, _, err) = vch.cmd(&["network", "create", &name]);
        assert_eq!(code, 0, "network create {name}: {err}");
        nets.push(name);
    }
    let script = "for i in 0 1 2 3 4 5 6 7 8 9 10; do ip -4 -o addr show dev eth$i | \
                  awk '{print $2, $4}'; done; ls /sys/bus/pci/devices/0000:00:1f.1/0000:*:00.0/net";
    let run = |name: &str, nets: &[String]| {
        let mut args = vec!["run", "--timeout", "180", "--name", name];
        for n in nets {
            args.extend(["--network", n.as_str()]);
        }
        args.extend(["busybox", "sh", "-c", script]);
        vch.cmd(&args)
    };
    let (code, out, err) = run("many", &nets);
    assert_eq!(code, 0, "run: {err}");
    // bridge is 172.16.0.0/16, then each created network the next free /16.
    let want: Vec<String> = (0..=10)
        .map(|i| format!("eth{i} 172.{}.0.2/16", 16 + i))
        .chain(["eth10".to_owned()])
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    let info = vch.inspect("many");
    for (i, n) in nets.iter().enumerate() {
        assert_eq!(
            info["NetworkSettings"]["Networks"][n]["IPAddress"],
            format!("172.{}.0.2", 16 + i),
            "{n}: {}",
            info["NetworkSettings"]
        );
    }

    let (code, _, err) = vch.cmd(&["network", "create", "n11"]);
    assert_eq!(code, 0, "network create n11: {err}");
    nets.push("n11".into());
    let (code, out, err) = run("toomany", &nets);
    assert_eq!((code, out.as_str()), (125, ""), "stderr: {err}");
    assert!(
        err.contains("a container can join at most 11 networks"),
        "{err}"
    );
}
