//! A container on the default network gets its address by DHCP (from QEMU user
//! networking's server), a default route, name servers and host names, and the port layer
//! sees the lease in the written-back config (`vch inspect`).

use e2e::Vch;

#[test]
fn dhcp_lease_is_configured_and_written_back() {
    let vch = Vch::new();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--name",
        "dhcp1",
        "--hostname",
        "web",
        "busybox",
        "sh",
        "-c",
        "ip -4 addr show dev eth0; ip route; echo ==; cat /etc/resolv.conf; echo ==; cat /etc/hosts",
    ]);
    assert_eq!(code, 0, "run: {err}");
    let mut parts = out.split("==\n");
    let (ip, resolv, hosts) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    assert!(ip.contains("inet 172.16.0.2/16"), "addresses: {ip}");
    assert!(
        ip.contains("default via 172.16.0.1 dev eth0"),
        "routes: {ip}"
    );
    assert_eq!(
        resolv,
        "nameserver 172.16.255.254\noptions timeout:15\noptions attempts:5\n"
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
    assert_eq!(bridge["DNS"][0], "172.16.255.254", "{bridge}");
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
