//! `exec -t` gets a pty whose size is the one the client set before launch, and resizes
//! reach it.

use std::sync::Arc;
use std::time::Duration;

use backchannel::requests::{self as req, WindowSize};
use tokio::io::AsyncReadExt;

async fn read_until(ch: &mut sshproto::ChannelReader, needle: &str) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = ch.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains(needle) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), read).await;
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn exec_tty_size_and_resize() {
    let vch = e2e::Vch::new();
    let id = vch.run_detached(&["--name", "tty", "busybox", "sleep", "600"]);
    let ctl = vch.dir.path().join("vms").join(&id[..12]).join("ctl.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = qemu_harness::control::connect(&ctl).await.unwrap();
        let spec = qemu_harness::control::ExecSpec {
            command: vec![
                "sh".into(),
                "-c".into(),
                "stty size; read x; stty size; tty".into(),
            ],
            tty: true,
            stdin: true,
            ..Default::default()
        };
        let eid = qemu_harness::control::request(
            &conn,
            qemu_harness::control::REQ_EXEC,
            &serde_json::to_vec(&spec).unwrap(),
        )
        .await
        .unwrap();
        let eid = String::from_utf8(eid).unwrap();
        let ch = conn
            .open_channel(req::CHANNEL_ATTACH, eid.as_bytes())
            .await
            .unwrap();
        let (mut r, w) = ch.split();
        let w = Arc::new(tokio::sync::Mutex::new(w));
        // The size is set before the process starts: its first `stty size` sees it.
        let ws = WindowSize {
            cols: 100,
            rows: 40,
            width_px: 0,
            height_px: 0,
        };
        assert!(w
            .lock()
            .await
            .request(req::REQ_WINDOW_CHANGE, &ws.payload())
            .await
            .unwrap());
        assert!(w
            .lock()
            .await
            .request(req::REQ_UNBLOCK, req::UNBLOCK_PAYLOAD)
            .await
            .unwrap());
        let out = read_until(&mut r, "40 100").await;
        assert!(out.contains("40 100"), "first stty size: {out:?}");
        let ws = WindowSize {
            cols: 120,
            rows: 50,
            width_px: 0,
            height_px: 0,
        };
        assert!(w
            .lock()
            .await
            .request(req::REQ_WINDOW_CHANGE, &ws.payload())
            .await
            .unwrap());
        use tokio::io::AsyncWriteExt;
        w.lock().await.write_all(b"go\n").await.unwrap();
        let out = read_until(&mut r, "/dev/pts/").await;
        assert!(out.contains("50 120"), "after resize: {out:?}");
        assert!(out.contains("/dev/pts/"), "not a pty: {out:?}");
    });
}

/// `vch exec -it` typed on a real terminal: the process's pty has the terminal's size from
/// its first instruction, and resizing the terminal (SIGWINCH to vch) resizes it.
#[test]
fn exec_it_follows_the_terminal_size() {
    let vch = e2e::Vch::new();
    vch.run_detached(&["--name", "term", "busybox", "sleep", "600"]);
    let mut t = vch.on_terminal(
        &[
            "exec",
            "-it",
            "term",
            "sh",
            "-c",
            "stty size; while read x; do stty size; done",
        ],
        40,
        100,
    );
    assert!(
        t.expect("40 100", Duration::from_secs(60)),
        "first stty size; screen:\n{}",
        t.screen()
    );
    t.resize(50, 120);
    // SIGWINCH is asynchronous: each line typed has the loop print the size it has now.
    let resized = vch.wait_until(Duration::from_secs(30), || {
        t.type_keys(b"\r");
        t.expect("50 120", Duration::from_secs(1))
    });
    assert!(resized, "resize did not arrive; screen:\n{}", t.screen());
}
