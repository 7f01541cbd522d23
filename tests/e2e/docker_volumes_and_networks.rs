//! Volumes and networks through docker: data persists across containers on a named
//! volume; a container on a created network publishes a port reached with a real HTTP
//! request.

use std::io::{Read, Write};
use std::time::Duration;

use e2e::docker::Daemon;

#[test]
fn docker_volume_persists_across_containers() {
    let d = Daemon::start();
    assert_eq!(
        d.ok(&["volume", "create", "--opt", "size=64M", "data"]),
        "data"
    );
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "data");
    let (code, _, err) = d.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = d.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "busybox",
        "cat",
        "/data/f",
    ]);
    assert_eq!((code, out.as_str()), (0, "kept\n"), "{err}");
    assert_eq!(
        d.ok(&[
            "volume",
            "inspect",
            "-f",
            "{{.Driver}} {{.Options.size}}",
            "data"
        ]),
        "local 64M"
    );
    // In use by a stopped container: refused until that container is gone.
    d.ok(&[
        "create", "--name", "user", "-v", "data:/d", "busybox", "true",
    ]);
    let (code, _, err) = d.docker(&["volume", "rm", "data"]);
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    d.ok(&["rm", "user"]);
    assert_eq!(d.ok(&["volume", "rm", "data"]), "data");
    let (code, _, err) = d.docker(&["volume", "inspect", "data"]);
    assert_eq!(code, 1);
    assert!(err.contains("No such volume: data"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn docker_network_and_published_port() {
    let d = Daemon::start();
    let net = d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.77.0.0/24",
        "--gateway",
        "10.77.0.1",
        "front",
    ]);
    assert_eq!(net.len(), 64);
    assert_eq!(
        d.ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
            "front"
        ]),
        "10.77.0.0/24 10.77.0.1"
    );
    let port = free_port();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "sh",
        "-c",
        "mkdir /www && echo served-by-vm > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some(r) = http_get(port, "/index.html").filter(|r| r.contains("200 OK")) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no HTTP answer on port {port}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(body.ends_with("served-by-vm\n"), "{body}");
    let ip = d.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"front\").IPAddress}}",
        "web",
    ]);
    assert!(ip.starts_with("10.77.0."), "{ip}");
    assert_eq!(
        d.ok(&["port", "web"]).lines().next().unwrap_or_default(),
        format!("80/tcp -> 127.0.0.1:{port}")
    );
    // A network a running container is on cannot be removed.
    let (code, _, err) = d.docker(&["network", "rm", "front"]);
    assert_eq!(code, 1);
    assert!(err.contains("has active endpoints"), "{err}");
    d.ok(&["rm", "-f", "web"]);
    assert_eq!(d.ok(&["network", "rm", "front"]), "front");
}
