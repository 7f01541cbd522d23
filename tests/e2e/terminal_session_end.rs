//! When the session ends, vch returns with its exit code at once, though the user's terminal
//! stays open: `vch run -it`, `vch exec -it` and `vch attach` each wait for their session and
//! for nothing else (no key press).

use std::time::Duration;

use e2e::{Terminal, Vch};

fn returns_with(t: &mut Terminal, code: i32, what: &str) {
    assert_eq!(
        t.wait(Duration::from_secs(60)),
        Some(code),
        "{what}: vch did not return when the session ended; screen:\n{}",
        t.screen()
    );
}

#[test]
fn run_it_returns_when_the_process_exits() {
    let vch = Vch::new();
    let mut t = vch.on_terminal(
        &[
            "run",
            "-it",
            "--timeout",
            "120",
            "busybox",
            "sh",
            "-c",
            "echo bye; exit 4",
        ],
        24,
        80,
    );
    assert!(
        t.expect("bye", Duration::from_secs(120)),
        "screen:\n{}",
        t.screen()
    );
    returns_with(&mut t, 4, "run -it");
}

#[test]
fn exec_it_and_attach_return_when_their_session_exits() {
    let vch = Vch::new();
    vch.run_detached(&[
        "-it",
        "--name",
        "ends",
        "busybox",
        "sh",
        "-c",
        "read x; exit 6",
    ]);
    let mut exec = vch.on_terminal(
        &["exec", "-it", "ends", "sh", "-c", "echo in-exec; exit 5"],
        24,
        80,
    );
    assert!(
        exec.expect("in-exec", Duration::from_secs(60)),
        "screen:\n{}",
        exec.screen()
    );
    returns_with(&mut exec, 5, "exec -it");

    let mut att = vch.on_terminal(&["attach", "ends"], 24, 80);
    // The line ends the container's `read` (typed early, it waits in the terminal's buffer
    // until vch reads it); the container's pty echoes it.
    att.type_keys(b"go\r");
    assert!(
        att.expect("go", Duration::from_secs(60)),
        "screen:\n{}",
        att.screen()
    );
    returns_with(&mut att, 6, "attach");
}
