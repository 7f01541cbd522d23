//! A user publishes a container port (`-p`) and reaches a server in the container from the
//! host: a busybox httpd behind QEMU user networking.

use std::io::{Read, Write};
use std::time::Duration;

use e2e::Vch;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn httpd_in_the_container_answers_on_the_published_port() {
    let vch = Vch::new();
    let port = free_port();
    let publish = format!("{port}:80");
    let id = vch.run_detached(&[
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www; echo hello-from-the-container > /www/index.html; exec httpd -f -p 80 -h /www",
    ]);
    let mut reply = String::new();
    let answered = vch.wait_until(Duration::from_secs(60), || match http_get(port) {
        Some(r) if r.contains("200 OK") => {
            reply = r;
            true
        }
        _ => false,
    });
    assert!(
        answered,
        "no HTTP answer on 127.0.0.1:{port}; last: {reply:?}"
    );
    assert!(reply.contains("hello-from-the-container"), "{reply}");
    let info = vch.inspect(&id);
    assert!(
        info["NetworkSettings"]["Ports"]
            .to_string()
            .contains(&port.to_string()),
        "inspect does not show the published port: {}",
        info["NetworkSettings"]
    );
}

/// Two consecutive ports free on every loopback address.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base < u16::MAX && std::net::TcpListener::bind(("0.0.0.0", base + 1)).is_ok() {
            return base;
        }
    }
    panic!("no two consecutive free ports");
}

fn http_get_at(addr: &str, port: u16) -> Result<String, std::io::Error> {
    let mut s = std::net::TcpStream::connect((addr, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Every `-p` form the README names: the 127.0.0.1 default bind (another local address is
/// refused), an explicit host IP, a port range, and `/udp` to a UDP server in the container.
#[test]
fn explicit_ip_range_udp_and_the_default_bind() {
    let vch = Vch::new();
    let (default, explicit, range, udp) = (free_port(), free_port(), free_port_pair(), free_port());
    let specs = [
        format!("{default}:80"),
        format!("127.0.0.3:{explicit}:81"),
        format!("{range}-{}:8000-8001", range + 1),
        format!("{udp}:67/udp"),
    ];
    // httpd on 80, 81, 8000 and 8001, each saying which; udhcpd as the UDP server (busybox
    // has no other), which logs every datagram that is not DHCP.
    let script = "for p in 80 81 8000 8001; do mkdir -p /www/$p; echo port-$p > /www/$p/index.html; \
                  httpd -p $p -h /www/$p; done; \
                  printf 'interface eth0\\nstart 172.16.0.100\\nend 172.16.0.110\\nlease_file /tmp/leases\\n' > /tmp/u.conf; \
                  touch /tmp/leases; exec udhcpd -f /tmp/u.conf";
    let mut args = vec!["--name", "pub"];
    for s in &specs {
        args.extend(["-p", s.as_str()]);
    }
    args.extend(["busybox", "sh", "-c", script]);
    vch.run_detached(&args);

    let answers = |addr: &str, port: u16, want: &str| {
        vch.wait_until(Duration::from_secs(60), || {
            http_get_at(addr, port).is_ok_and(|r| r.contains("200 OK") && r.contains(want))
        })
    };
    assert!(answers("127.0.0.1", default, "port-80"), "default bind");
    assert!(answers("127.0.0.3", explicit, "port-81"), "explicit IP");
    assert!(answers("127.0.0.1", range, "port-8000"), "range, first");
    assert!(
        answers("127.0.0.1", range + 1, "port-8001"),
        "range, second"
    );
    // Bound to one address only: the others refuse the connection.
    for (addr, port) in [("127.0.0.2", default), ("127.0.0.1", explicit)] {
        let e = http_get_at(addr, port).expect_err("answered on an address it was not bound to");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}:{port}: {e}"
        );
    }

    // UDP: datagrams to the host port reach the server's port 67 in the container.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let arrived = vch.wait_until(Duration::from_secs(60), || {
        let _ = sock.send_to(b"not-dhcp", ("127.0.0.1", udp));
        std::thread::sleep(Duration::from_millis(200));
        vch.cmd(&["logs", "pub"])
            .2
            .contains("packet with bad magic")
    });
    assert!(
        arrived,
        "no datagram reached the container; logs: {:?}",
        vch.cmd(&["logs", "pub"])
    );
    let ports = &vch.inspect("pub")["NetworkSettings"]["Ports"];
    let bind = |port: &str| {
        (
            ports[port][0]["HostIp"].as_str().unwrap_or("").to_owned(),
            ports[port][0]["HostPort"].as_str().unwrap_or("").to_owned(),
        )
    };
    let lo = "127.0.0.1".to_owned();
    assert_eq!(bind("80/tcp"), (lo.clone(), default.to_string()), "{ports}");
    assert_eq!(
        bind("81/tcp"),
        ("127.0.0.3".to_owned(), explicit.to_string()),
        "{ports}"
    );
    assert_eq!(
        bind("8001/tcp"),
        (lo.clone(), (range + 1).to_string()),
        "{ports}"
    );
    assert_eq!(bind("67/udp"), (lo, udp.to_string()), "{ports}");
}
