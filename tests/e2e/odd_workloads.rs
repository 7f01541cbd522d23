//! Workloads that do odd things with their output or cannot run at all: one closes its
//! stdout and stderr early; one leaves a daemonised grandchild holding the output pipe
//! after it exits (the exit is still reported, within a stated bound); a binary for another
//! architecture and a script whose interpreter is missing fail with 126 / 127 and a message
//! that says why.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use e2e::{RunOptions, Vch};

/// How long after the main process's exit its status must reach the host when a
/// daemonised grandchild still holds the output pipe.
const EXIT_REPORT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn closing_stdout_and_stderr_early() {
    let r = e2e::run(
        "busybox",
        &[
            "sh",
            "-c",
            "echo first; echo first-err >&2; exec >&- 2>&-; sleep 1; echo lost; exit 5",
        ],
    );
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "first\n");
    assert_eq!(r.stderr, "first-err\n");
    assert_eq!(r.outcome.exit_code, 5);
}

#[test]
fn daemonised_grandchild_holding_the_pipe() {
    let vch = Vch::new();
    // The grandchild is in its own session, re-parented to PID 1, with the container's
    // stdout and stderr: the pipe stays open after the main process exits.
    let id = vch.run_detached(&[
        "--name",
        "parent",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo main; (setsid sh -c 'sleep 2; echo grandchild; exec sleep 600' &); sleep 4; echo main-exits; exit 6",
    ]);
    let mut exited_at = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        let logs = vch.cmd(&["logs", &id]).1;
        if exited_at.is_none() && logs.contains("main-exits") {
            exited_at = Some(Instant::now());
        }
        let state = vch.inspect(&id)["State"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if state.starts_with("Exited") {
            let seen = exited_at
                .expect("the exit's last line was in the log")
                .elapsed();
            assert_eq!(state, "Exited (6)");
            assert!(
                seen < EXIT_REPORT_BOUND,
                "the exit was reported {seen:?} after the main process's last line"
            );
            eprintln!("daemonised grandchild: exit reported {seen:?} after the last line");
            let logs = vch.cmd(&["logs", &id]).1;
            assert_eq!(logs, "main\ngrandchild\nmain-exits\n");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the exit was never reported; logs: {:?}",
        vch.cmd(&["logs", &id])
    );
}

/// An ELF header of a 64-bit little-endian executable for AArch64: the kernel refuses it
/// with ENOEXEC before reading further.
fn aarch64_elf() -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1; // version
    h[16] = 2; // ET_EXEC
    h[18] = 183; // EM_AARCH64
    h[20] = 1; // version
    h[52] = 64; // header size
    h
}

#[test]
fn foreign_binary_and_missing_interpreter() {
    let elf = aarch64_elf();
    let (_guard, root) = e2e::busybox_image_with(
        &[
            ("/bin/arm-app", &elf),
            ("/bin/script", b"#!/no/such/interpreter\necho hi\n"),
        ],
        &[],
    );
    for f in ["bin/arm-app", "bin/script"] {
        std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let image = root.to_str().expect("utf-8 path");

    let r = e2e::run_with(RunOptions::new(image, &["/bin/arm-app"]));
    r.assert_clean_power_off();
    assert_eq!(r.outcome.exit_code, 126, "{:?}", r.outcome);
    assert!(
        r.outcome.started.contains("exec format error"),
        "{:?}",
        r.outcome.started
    );

    let r = e2e::run_with(RunOptions::new(image, &["/bin/script"]));
    r.assert_clean_power_off();
    assert_eq!(r.outcome.exit_code, 127, "{:?}", r.outcome);
    assert!(
        r.outcome.started.contains("/no/such/interpreter"),
        "the message does not name the missing interpreter: {:?}",
        r.outcome.started
    );
}
