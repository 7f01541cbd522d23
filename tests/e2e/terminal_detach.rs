//! On a real terminal, ctrl-p ctrl-q detaches from `vch run -it` and from `vch attach`: the
//! command returns 0 and the container's process keeps running, the same one each time.

use std::time::Duration;

use e2e::{Terminal, Vch};

/// Has the shell print its PID and returns it. The typed line holds `$$` where the answer
/// holds digits, so the terminal's echo of the line cannot be taken for the answer.
fn shell_pid(t: &mut Terminal) -> u32 {
    t.type_keys(b"echo pid-$(( $$ + 0 ))-end\r");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let screen = t.screen();
        let answer = screen.split("pid-").skip(1).find_map(|rest| {
            let (n, _) = rest.split_once("-end")?;
            n.parse::<u32>().ok()
        });
        if let Some(pid) = answer {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no PID from the shell; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn detach(t: &mut Terminal, what: &str) {
    t.type_keys(b"\x10\x11");
    assert_eq!(
        t.wait(Duration::from_secs(30)),
        Some(0),
        "{what}: ctrl-p ctrl-q did not end the command with 0; screen:\n{}",
        t.screen()
    );
}

#[test]
fn ctrl_p_ctrl_q_detaches_run_it_and_attach() {
    let vch = Vch::new();
    let mut run = vch.on_terminal(
        &[
            "run",
            "-it",
            "--timeout",
            "300",
            "--name",
            "shell",
            "busybox",
            "sh",
        ],
        24,
        80,
    );
    assert!(
        run.expect("# ", Duration::from_secs(90)),
        "no prompt; screen:\n{}",
        run.screen()
    );
    let pid = shell_pid(&mut run);
    detach(&mut run, "run -it");
    assert_eq!(vch.inspect("shell")["State"], "Up", "detaching stopped it");

    let mut att = vch.on_terminal(&["attach", "shell"], 24, 80);
    assert_eq!(
        shell_pid(&mut att),
        pid,
        "attach reached another process than the one run -it started"
    );
    detach(&mut att, "attach");
    assert_eq!(vch.inspect("shell")["State"], "Up", "detaching stopped it");
    // Still the same process, and it still takes commands.
    let (code, out, err) = vch.cmd(&[
        "exec",
        "shell",
        "sh",
        "-c",
        &format!("kill -0 {pid} && echo alive"),
    ]);
    assert_eq!((code, out.as_str()), (0, "alive\n"), "{err}");
}
