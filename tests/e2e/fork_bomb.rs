//! A fork bomb in the container (`:(){ :|:& };:` under a shell) does not take the tether
//! with it: `vch exec` answers or fails with a clear error, `vch stop` ends the VM within its
//! grace period plus a stated bound, and the kernel does not panic.

use std::time::{Duration, Instant};

use e2e::Vch;

/// The grace `vch stop` is given, and what a stop may take beyond it: the SIGKILL of a
/// session full of processes, the unmounts and the power-off under TCG on a busy machine.
const GRACE_SECS: u64 = 3;
const STOP_BOUND: Duration = Duration::from_secs(30);

#[test]
fn fork_bomb_leaves_the_tether_in_charge() {
    let vch = Vch::new();
    // busybox ash refuses a function named `:` (bash's spelling of the bomb); the same bomb
    // under another name. Its first pipeline ends at once (each call only starts
    // the next ones in the background), so the primary process goes on as `sleep` (exec: no
    // fork needed).
    let id = vch.run_detached(&[
        "--name",
        "bomb",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo armed; b(){ b|b& };b; exec sleep 1000",
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || vch
            .cmd(&["logs", "bomb"])
            .1
            .contains("armed")),
        "the bomb never started: {:?}",
        vch.cmd(&["logs", "bomb"])
    );
    // Let it fill the process table.
    std::thread::sleep(Duration::from_secs(15));

    // An exec either runs or says why it could not; it never hangs.
    let t = Instant::now();
    let (code, out, err) = vch.cmd(&[
        "exec",
        "bomb",
        "sh",
        "-c",
        "echo alive; ls -d /proc/[0-9]* | wc -l",
    ]);
    let took = t.elapsed();
    eprintln!("exec during the bomb: {code} after {took:?}: {out:?} {err:?}");
    if code == 0 {
        assert!(out.starts_with("alive\n"), "{out}");
    } else {
        assert!(
            !err.trim().is_empty(),
            "exec failed ({code}) without a reason"
        );
    }
    assert_eq!(vch.inspect("bomb")["State"], "Up");

    // `top` and `cp` run on threads of the tether's, which the kernel may refuse while the
    // bomb holds every pid: each answers or says why, and the VM stays up (tokio's blocking
    // pool panicked PID 1 there).
    for (what, args) in [
        ("top", &["top", "bomb"][..]),
        ("cp", &["cp", "bomb:/etc/hostname", "-"][..]),
    ] {
        let t = Instant::now();
        let (code, out, err) = vch.cmd(args);
        eprintln!(
            "{what} during the bomb: {code} after {:?}: {} bytes, {err:?}",
            t.elapsed(),
            out.len()
        );
        assert!(
            code == 0 || !err.trim().is_empty(),
            "{what} failed ({code}) without a reason"
        );
        assert_eq!(vch.inspect("bomb")["State"], "Up", "after {what}");
    }

    let t = Instant::now();
    let (code, _, err) = vch.cmd(&["stop", "-t", &GRACE_SECS.to_string(), "bomb"]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(
        took < Duration::from_secs(GRACE_SECS) + STOP_BOUND,
        "stop took {took:?}"
    );
    eprintln!("stop during the bomb: {took:?} (grace {GRACE_SECS} s)");
    let doc = vch.inspect("bomb");
    let state = doc["State"].as_str().unwrap_or_default().to_owned();
    assert!(state.starts_with("Exited ("), "{doc}");
    // The VM powered off by itself (not killed at the host's hard bound) and the kernel
    // did not panic on the way.
    let dir = vch.dir.path().join("vms").join(&id[..12]);
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    assert!(!console.contains("Kernel panic"), "{console}");
    assert!(!doc["TimedOut"].as_bool().unwrap_or(false), "{doc}");
}
