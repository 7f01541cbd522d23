//! `docker run -it` and `docker attach` on a terminal: input, ctrl-p ctrl-q detaches and
//! leaves the container running, an exit in the session ends the client with its code.

use std::time::Duration;

use e2e::docker::Daemon;

#[test]
fn docker_run_it_detach_then_attach_and_exit() {
    let d = Daemon::start();
    let mut run = d.pty(&["run", "-it", "--name", "shell", "busybox", "sh"], 24, 80);
    assert!(
        run.expect("/ #", Duration::from_secs(120)),
        "no prompt: {:?}\n{}",
        run.screen(),
        d.log()
    );
    run.type_keys(b"echo one-$((40+2))\r");
    assert!(
        run.expect("one-42", Duration::from_secs(30)),
        "{:?}",
        run.screen()
    );
    run.type_keys(b"\x10\x11");
    assert_eq!(
        run.wait(Duration::from_secs(30)),
        Some(0),
        "detach: {:?}",
        run.screen()
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "shell"]),
        "true"
    );

    let mut att = d.pty(&["attach", "shell"], 24, 80);
    std::thread::sleep(Duration::from_secs(1));
    att.type_keys(b"echo two-$((40+3))\r");
    assert!(
        att.expect("two-43", Duration::from_secs(30)),
        "{:?}",
        att.screen()
    );
    att.type_keys(b"exit 9\r");
    assert_eq!(
        att.wait(Duration::from_secs(60)),
        Some(9),
        "{:?}",
        att.screen()
    );
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "shell"
        ]),
        "exited 9"
    );
}

#[test]
fn two_attached_clients_both_see_the_output() {
    let d = Daemon::start();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ticks",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done",
    ]);
    let mut a = d.spawn(&["attach", "--sig-proxy=false", "ticks"]);
    let mut b = d.spawn(&["attach", "--sig-proxy=false", "ticks"]);
    assert!(
        a.expect_line("tick", Duration::from_secs(60)).is_some(),
        "first attacher"
    );
    assert!(
        b.expect_line("tick", Duration::from_secs(60)).is_some(),
        "second attacher"
    );
    // One goes away mid-stream; the other keeps receiving, in order.
    a.kill();
    let n: u64 = b
        .expect_line("tick", Duration::from_secs(20))
        .expect("tick")[5..]
        .parse()
        .expect("n");
    let m: u64 = b
        .expect_line("tick", Duration::from_secs(20))
        .expect("tick")[5..]
        .parse()
        .expect("m");
    assert_eq!(m, n + 1);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "ticks"]),
        "true"
    );
}
