//! `vch run -t` holds the launch until the terminal is bound (`runblock`), so even output
//! printed at once is not lost; `-i` sends stdin.

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
