//! A UDP peer for the end-to-end scenarios (busybox has neither a UDP client nor a UDP
//! server), built static for the container VMs by `e2e` itself (one file, `std` only):
//!
//! - `udp-peer serve PORT`: answers every datagram with `echo ` and the datagram, and
//!   prints what it got.
//! - `udp-peer ask HOST PORT MESSAGE`: resolves HOST (the container's resolver: its
//!   `/etc/resolv.conf`), sends MESSAGE and prints the answer; sends again every second
//!   for up to 30 s until one comes. Exit 1 when none does.

use std::net::{ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn serve(port: &str) -> Result<(), String> {
    let sock = UdpSocket::bind(format!("0.0.0.0:{port}")).map_err(|e| e.to_string())?;
    println!("serving on {port}");
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        println!("from {from}: {got}");
        let _ = sock.send_to(format!("echo {got}").as_bytes(), from);
    }
}

fn ask(host: &str, port: &str, message: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let addr = match format!("{host}:{port}").to_socket_addrs() {
            Ok(mut a) => a.next(),
            Err(e) => {
                last = format!("resolving {host}: {e}");
                None
            }
        };
        if let Some(addr) = addr {
            if let Err(e) = sock.send_to(message.as_bytes(), addr) {
                last = format!("sending to {addr}: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == addr => {
                    return Ok(format!(
                        "{} (from {from})",
                        String::from_utf8_lossy(&buf[..n])
                    ))
                }
                Ok((_, from)) => last = format!("an answer from {from}, not {addr}"),
                Err(e) => last = format!("no answer from {addr}: {e}"),
            }
        } else {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Err(last)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", port] => serve(port).map(|()| String::new()),
        ["ask", host, port, message] => ask(host, port, message),
        _ => Err("usage: udp-peer serve PORT | udp-peer ask HOST PORT MESSAGE".into()),
    };
    match r {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udp-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
