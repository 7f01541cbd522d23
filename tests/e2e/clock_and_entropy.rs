//! The guest's clock is the host's at boot and again within seconds after the VM was
//! paused (QEMU's `stop`/`cont` and a SIGSTOP of QEMU); the kernel's CRNG is ready before
//! the entrypoint runs, also without a virtio-rng device (the tether seeds it from the
//! host).
//!
//! The pauses last 8 s; with `TETHER_E2E_LONG` set (CI) they last 30 s.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::Vch;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// How far the guest's clock is from this machine's: 0 when the guest's reading falls
/// between the host's before and after the exec that read it, else the distance (s).
fn offset(vch: &Vch) -> f64 {
    let before = now();
    let (code, out, err) = vch.cmd(&["exec", "clock", "date", "+%s"]);
    let after = now();
    assert_eq!(code, 0, "{err}");
    let guest: f64 = out.trim().parse().unwrap();
    // `date +%s` truncates: the guest's second covers [guest, guest + 1).
    if guest + 1.0 < before {
        guest + 1.0 - before
    } else if guest > after {
        guest - after
    } else {
        0.0
    }
}

/// Pauses the VM with `pause`, resumes it with `resume`; returns (offset right after,
/// seconds until the clock was right again).
fn pause_and_check(
    vch: &Vch,
    pause_for: Duration,
    pause: &mut dyn FnMut(),
    resume: &mut dyn FnMut(),
) -> (f64, f64) {
    pause();
    std::thread::sleep(pause_for);
    resume();
    let resumed = now();
    let first = offset(vch);
    let mut off = first;
    while off.abs() > 1.0 && now() - resumed < 20.0 {
        std::thread::sleep(Duration::from_millis(500));
        off = offset(vch);
    }
    assert!(
        off.abs() <= 1.0,
        "the guest's clock is still {off:.1} s off 20 s after the pause (right after: {first:.1} s)"
    );
    (first, now() - resumed)
}

fn qmp(sock: &std::path::Path, command: &str) {
    let s = UnixStream::connect(sock).expect("qmp socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    for c in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\": \"{c}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.contains("\"return\"") || line.contains("\"error\"") {
                assert!(line.contains("\"return\""), "{c}: {line}");
                break;
            }
        }
    }
}

#[test]
fn clock_right_after_pauses_and_entropy_ready_without_rng() {
    let pause_for = if e2e::faults::long_scenarios() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(8)
    };
    let vch = Vch::new();
    let id = vch.run_detached(&["--name", "clock", "busybox", "sleep", "3600"]);
    assert!(vch.wait_until(Duration::from_secs(60), || {
        vch.cmd(&["exec", "clock", "true"]).0 == 0
    }));
    let at_boot = offset(&vch);
    assert!(at_boot.abs() <= 1.0, "off by {at_boot} s after boot");

    let dir = vch.dir.path().join("vms").join(&id[..12]);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let qemu = meta["qemu_pid"].as_i64().expect("qemu pid") as i32;
    let sig = |s: i32| {
        // SAFETY: kill(2) on a process this test's VM owns.
        assert_eq!(unsafe { libc::kill(qemu, s) }, 0);
    };
    let (first, took) = pause_and_check(&vch, pause_for, &mut || sig(libc::SIGSTOP), &mut || {
        sig(libc::SIGCONT)
    });
    eprintln!("SIGSTOP {pause_for:?}: off by {first:.1} s after, right within {took:.1} s");
    let qmp_sock = dir.join("qmp.sock");
    let (first, took) =
        pause_and_check(&vch, pause_for, &mut || qmp(&qmp_sock, "stop"), &mut || {
            qmp(&qmp_sock, "cont")
        });
    eprintln!("QMP stop {pause_for:?}: off by {first:.1} s after, right within {took:.1} s");
    vch.cmd(&["rm", "-f", "clock"]);

    // No virtio-rng: the CRNG is initialised before the entrypoint looks.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--no-rng",
        "busybox",
        "sh",
        "-c",
        "cat /proc/sys/kernel/random/entropy_avail; dmesg | grep -c 'crng init done'",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["256", "1"], "entropy_avail, crng init lines: {out}");
}
