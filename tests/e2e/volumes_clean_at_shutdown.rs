//! However a container VM ends — its process exits, the user stops or kills it, or the
//! tether itself panics — its volumes are flushed and unmounted first: `e2fsck` finds them
//! clean once the VM is gone, and the data written before the end is there.

use std::time::{Duration, Instant};

use e2e::{RunOptions, Vch};

const WRITER: &str = "echo before-the-end > /data/last; echo ready; exec sleep 600";

fn assert_clean_with_data(vch: &Vch, volume: &str, how: &str) {
    let (clean, report) = e2e::fsck_clean(&vch.volume_disk(volume));
    assert!(clean, "{how}: volume not clean:\n{report}");
    assert_eq!(
        vch.volume_file(volume, "last").as_deref(),
        Some(&b"before-the-end\n"[..]),
        "{how}: data written before the end is missing"
    );
}

fn start_writer(vch: &Vch, volume: &str) -> String {
    let id = vch.run_detached(&[
        "--network",
        "none",
        "-v",
        &format!("{volume}:/data"),
        "busybox",
        "sh",
        "-c",
        WRITER,
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || vch
            .cmd(&["logs", &id])
            .1
            .contains("ready")),
        "writer never became ready"
    );
    id
}

fn wait_gone(vch: &Vch, id: &str) {
    assert!(
        vch.wait_until(Duration::from_secs(60), || {
            !vch.cmd(&["ps", "-q"]).1.contains(id)
        }),
        "VM still running"
    );
}

#[test]
fn primary_process_exit_leaves_volumes_clean() {
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "v1:/data",
        "busybox",
        "sh",
        "-c",
        "echo before-the-end > /data/last",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_clean_with_data(&vch, "v1", "exit");
}

#[test]
fn stop_leaves_volumes_clean() {
    let vch = Vch::new();
    let id = start_writer(&vch, "v2");
    assert_eq!(vch.cmd(&["stop", "-t", "1", &id]).0, 0);
    wait_gone(&vch, &id);
    assert_clean_with_data(&vch, "v2", "stop");
}

/// Nothing ends on the stop signal: the process ignores it, and a process of its own session
/// keeps the volume busy and ignores SIGTERM too. The tether must SIGKILL the process after
/// the grace period and then the straggler (its own SIGTERM, then SIGKILL) before the volume
/// can be unmounted clean.
#[test]
fn sigkill_after_the_grace_period_leaves_volumes_clean() {
    let vch = Vch::new();
    let id = vch.run_detached(&[
        "--network",
        "none",
        "-v",
        "v3:/data",
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; echo before-the-end > /data/last; \
         setsid sh -c \"trap '' TERM; cd /data; exec sleep 600\" & \
         echo ready; while true; do sleep 0.2; done",
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || vch
            .cmd(&["logs", &id])
            .1
            .contains("ready")),
        "never became ready"
    );
    let t = Instant::now();
    assert_eq!(vch.cmd(&["stop", "-t", "2", &id]).0, 0);
    let took = t.elapsed();
    wait_gone(&vch, &id);
    assert!(
        took >= Duration::from_secs(2),
        "stopped before the grace period ended ({took:?})"
    );
    assert_eq!(vch.inspect(&id)["State"], "Exited (137)");
    assert_clean_with_data(&vch, "v3", "SIGKILL after the grace period");
}

#[test]
fn tether_panic_leaves_volumes_clean() {
    let mut opts = RunOptions::new(
        "busybox",
        &[
            "sh",
            "-c",
            "echo before-the-end > /data/last; exec sleep 600",
        ],
    );
    opts.timeout = Duration::from_secs(120);
    opts.volumes = vec![qemu_harness::volume::parse_volume_spec("v4:/data").expect("spec")];
    // The test hook: the tether panics 1.5 s after the launch.
    opts.extra_config = vec![("guestinfo.vice./tether/panicafter".into(), "1500".into())];
    let r = e2e::run_with(opts);
    assert!(
        !r.outcome.timed_out,
        "the VM did not power off after the panic"
    );
    let debug = r.debug_log();
    assert!(
        debug.contains("PANIC"),
        "no panic in the debug log:\n{debug}"
    );
    let disk = r.state_dir.join("volumes").join("v4").join("disk.img");
    let (clean, report) = e2e::fsck_clean(&disk);
    assert!(clean, "panic: volume not clean:\n{report}\n{debug}");
    assert_eq!(
        e2e::read_volume_file(&disk, "last").as_deref(),
        Some(&b"before-the-end\n"[..])
    );
}
