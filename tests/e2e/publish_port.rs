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
