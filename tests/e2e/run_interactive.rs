//! `vch run -t` holds the launch until the terminal is bound (`runblock`), so even output
//! printed at once is not lost and the process starts with the terminal's size; `-i` sends
//! stdin.

use std::time::Duration;

#[test]
fn run_tty_loses_no_early_output() {
    let vch = e2e::Vch::new();
    let (code, out, err) = vch.cmd(&[
        "run",
        "-t",
        "--timeout",
        "120",
        "busybox",
        "sh",
        "-c",
        "echo first; echo second; exit 4",
    ]);
    assert_eq!(code, 4, "stderr: {err}");
    // A pty turns \n into \r\n.
    assert_eq!(out, "first\r\nsecond\r\n");
}

#[test]
fn run_interactive_reads_stdin() {
    let vch = e2e::Vch::new();
    let (code, out, err) = vch.cmd_with_input(
        &[
            "run",
            "-i",
            "--timeout",
            "120",
            "busybox",
            "sh",
            "-c",
            "read a; echo got $a",
        ],
        b"hello\n",
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "got hello\n");
}

/// The launch waits for the user's terminal: its first instruction already sees the size vch
/// sent when it attached. Without `runblock` the process would start at boot, before any
/// attach, on a pty of size 0 0.
#[test]
fn run_it_starts_after_the_terminal_is_attached() {
    let vch = e2e::Vch::new();
    let t = vch.on_terminal(
        &[
            "run",
            "-it",
            "--timeout",
            "120",
            "--name",
            "rb",
            "busybox",
            "sh",
            "-c",
            "stty size; echo first; exit 4",
        ],
        33,
        111,
    );
    // The container ends on its own (whether vch then returns is terminal_session_end's).
    // Until vch has created it, inspect knows no `rb`.
    let state = || {
        let (code, out, _) = vch.cmd(&["inspect", "rb"]);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        (code == 0).then(|| doc["State"].to_string())
    };
    assert!(
        vch.wait_until(Duration::from_secs(120), || state().as_deref()
            == Some("\"Exited (4)\"")),
        "state: {:?}; screen:\n{}",
        state(),
        t.screen()
    );
    let screen = t.screen();
    assert!(
        screen.starts_with("33 111\r\nfirst\r\n"),
        "the process ran before the terminal was attached, or output was lost:\n{screen:?}"
    );
}
