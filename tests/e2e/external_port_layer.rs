//! `vch run --vch tcp://HOST:PORT` points the VM's back-channel at another port layer, as a
//! vSphere serial port points at the VCH. Here the test is that port layer: it accepts the
//! VM's connection, runs the handshake and SSH as the original port layer would (`none`
//! auth, 512-bit RSA host key), and checks the protocol, including bad input: unknown
//! channel types and IDs, malformed payloads are refused with a message and the
//! connection survives.

use std::sync::Arc;
use std::time::Duration;

use backchannel::{handshake, requests as req};
use sshproto::{Client, ClientConfig};
use tokio::io::AsyncReadExt;

#[test]
fn another_port_layer_drives_the_vm() {
    let vch = e2e::Vch::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let id = vch.run_detached(&[
        "--name",
        "ext",
        "--vic-compat",
        "--vch",
        &format!("tcp://127.0.0.1:{port}"),
        "busybox",
        "sh",
        "-c",
        "trap 'echo got USR1' USR1; echo hello external; while true; do sleep 0.2; done",
    ]);
    rt.block_on(async move {
        let (mut tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
            .await
            .expect("the VM dials us")
            .unwrap();
        let mut ok = false;
        for _ in 0..30 {
            if handshake::client(&mut tcp, Duration::from_secs(1))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
        }
        assert!(ok, "serial handshake");
        let (conn, driver) = Client::connect(tcp, Arc::new(ClientConfig::new("daemon")))
            .await
            .expect("SSH with none auth");
        tokio::spawn(driver);
        let info = conn.info().unwrap();
        assert_eq!(
            info.host_key.as_ref().map(|k| k.rsa_bits()),
            Some(512),
            "the original port layer's 512-bit host key"
        );

        let v = conn.global_request(req::GLOBAL_VERSION, &[]).await.unwrap();
        assert!(v.success);
        assert_eq!(req::parse_version(&v.data), Some(10));
        let ids = conn
            .global_request(req::GLOBAL_CONTAINER_IDS, &[])
            .await
            .unwrap();
        assert_eq!(req::parse_id_list(&ids.data), Some(vec![id.clone()]));
        let unknown = conn.global_request("no-such-request", &[]).await.unwrap();
        assert!(!unknown.success);
        assert_eq!(
            String::from_utf8_lossy(&unknown.data),
            "unknown global request type: no-such-request"
        );

        // Bad channel opens are refused with the original's messages.
        let e = conn
            .open_channel("bogus", b"")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown channel type bogus"), "{e}");
        let e = conn
            .open_channel(req::CHANNEL_ATTACH, b"nosuchid")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("session nosuchid is invalid"), "{e}");

        // The connection survived: attach to the primary and read its output.
        let ch = conn
            .open_channel(req::CHANNEL_ATTACH, id.as_bytes())
            .await
            .expect("attach");
        let (mut r, w) = ch.split();
        assert!(w.request(req::REQ_PING, req::PING_PAYLOAD).await.unwrap());
        assert!(
            !w.request(req::REQ_PING, b"Pong").await.unwrap(),
            "a wrong ping payload fails"
        );
        assert!(
            !w.request(req::REQ_WINDOW_CHANGE, &[1, 2, 3]).await.unwrap(),
            "malformed window-change fails"
        );
        assert!(
            !w.request(
                req::REQ_WINDOW_CHANGE,
                &req::WindowSize {
                    cols: 80,
                    rows: 24,
                    width_px: 0,
                    height_px: 0
                }
                .payload()
            )
            .await
            .unwrap(),
            "no pty: window-change fails"
        );
        assert!(!w.request("bogus-request", &[]).await.unwrap());
        // The output so far was before we attached; a signal the shell traps makes new
        // output, on this channel.
        assert!(
            w.request(req::REQ_SIGNAL, &req::signal_payload("USR1"))
                .await
                .unwrap(),
            "signal request"
        );
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.ends_with(b"got USR1\n") {
                let n = r.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(
            got.is_ok(),
            "no trap output: {:?}",
            String::from_utf8_lossy(&seen)
        );
        assert_eq!(String::from_utf8_lossy(&seen), "got USR1\n");
        // SIGKILL ends the session: its output ends and the exit status comes on the channel.
        assert!(w
            .request(req::REQ_SIGNAL, &req::signal_payload("KILL"))
            .await
            .unwrap());
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut rest))
            .await
            .expect("the channel's output ends")
            .expect("read");
        assert_eq!(String::from_utf8_lossy(&rest), "", "output after the kill");
        tokio::time::timeout(Duration::from_secs(5), w.wait_closed())
            .await
            .expect("the channel closes");
        assert_eq!(
            w.exit_status(),
            Some(137),
            "the killed session's exit status on the channel"
        );
    });
}
