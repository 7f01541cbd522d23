//! The reaper in a process of its own (it owns `waitpid(-1)`, so it cannot share a test
//! process with tests that wait for their own children): every launched child's exit code
//! arrives, whenever it exits, and orphans handed to us are all collected.
//!
//! Without libtest's harness (`harness = false`): SIGCHLD must be blocked before any thread
//! exists, as the tether does first thing in `main`, and the harness's threads would take
//! it otherwise (the reaper's slow safety sweep would then be all that is tested).

// A test, though clippy cannot tell without libtest's cfg: failing means panicking.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use nix::unistd::Pid;
use tether::reaper::{no_children, Reaper};

/// Forks a child that exits with `code` after `delay_ms`.
fn fork_exit(code: i32, delay_ms: libc::c_long) -> Result<Pid, nix::Error> {
    // SAFETY: the child calls only async-signal-safe functions (nanosleep via libc, _exit)
    // before it ends, so the other threads' state at the fork does not matter.
    match unsafe { libc::fork() } {
        -1 => Err(nix::Error::last()),
        0 => {
            let ts = libc::timespec {
                tv_sec: delay_ms / 1000,
                tv_nsec: (delay_ms % 1000) * 1_000_000,
            };
            // SAFETY: async-signal-safe calls with a valid timespec; _exit never returns.
            unsafe {
                libc::nanosleep(&ts, std::ptr::null_mut());
                libc::_exit(code)
            }
        }
        pid => Ok(Pid::from_raw(pid)),
    }
}

/// Forks a child that forks `n` grandchildren sleeping `delay_ms`, then exits at once: the
/// grandchildren become orphans of the nearest subreaper, this process.
fn fork_orphans(n: usize, delay_ms: libc::c_long) -> Result<Pid, nix::Error> {
    // SAFETY: as in fork_exit, the child only forks, sleeps and exits.
    match unsafe { libc::fork() } {
        -1 => Err(nix::Error::last()),
        0 => {
            for _ in 0..n {
                // SAFETY: see above.
                if unsafe { libc::fork() } == 0 {
                    let ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: delay_ms * 1_000_000,
                    };
                    // SAFETY: async-signal-safe calls with a valid timespec.
                    unsafe {
                        libc::nanosleep(&ts, std::ptr::null_mut());
                        libc::_exit(0)
                    }
                }
            }
            // SAFETY: ends the intermediate child without running any destructor.
            unsafe { libc::_exit(0) }
        }
        pid => Ok(Pid::from_raw(pid)),
    }
}

fn main() {
    tether::reaper::block_sigchld().unwrap();
    every_exit_reaches_its_launcher_and_orphans_are_collected();
    println!("reaper: every exit reached its launcher; orphans were collected");
}

fn every_exit_reaches_its_launcher_and_orphans_are_collected() {
    // Orphans of our descendants come to us instead of to the host's init.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Prepared, its thread not started, as the boot launches the entrypoint: a child
        // registers and exits, and its exit waits for the thread.
        let reaper = Reaper::prepare().unwrap();
        let (_, mut early) = reaper.spawn(|| fork_exit(5, 0)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(
            early.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        reaper.run().unwrap();
        // A second start is no second thread (waitpid(-1) has one owner).
        reaper.run().unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), early)
                .await
                .unwrap()
                .unwrap(),
            5
        );
        // No child left: idle.
        assert!(reaper.wait_all_gone(Duration::from_secs(5)).await);

        // Children exiting at once (before registration could ever matter) and later, with
        // distinct codes, among a crowd of orphans exiting at the same time.
        let (_, orphan_parent) = reaper.spawn(|| fork_orphans(300, 50)).unwrap();
        let mut launched = Vec::new();
        for i in 0..100 {
            let code = i % 120;
            let (pid, rx) = reaper
                .spawn(|| fork_exit(code, libc::c_long::from(i % 4) * 20))
                .unwrap();
            launched.push((pid, code, rx));
        }
        assert_eq!(orphan_parent.await.unwrap(), 0);
        for (pid, code, rx) in launched {
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(10), rx)
                    .await
                    .unwrap_or_else(|_| panic!("no exit for {pid}"))
                    .unwrap(),
                i64::from(code),
                "{pid}"
            );
        }
        // Well within the safety sweep's period: the signals were read and swept after.
        let swept = std::time::Instant::now();
        assert!(reaper.wait_all_gone(Duration::from_secs(10)).await);
        assert!(no_children());
        assert!(
            swept.elapsed() < tether::reaper::SAFETY_SWEEP / 2,
            "{:?}",
            swept.elapsed()
        );

        // After it went idle, a new launch is still collected (the thread wakes up).
        let (_, rx) = reaper.spawn(|| fork_exit(7, 0)).unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .unwrap()
                .unwrap(),
            7
        );
        assert!(reaper.wait_all_gone(Duration::from_secs(10)).await);

        // A launch that fails registers nothing and leaves the reaper working.
        assert!(reaper.spawn(|| Err::<Pid, _>(nix::Error::EAGAIN)).is_err());
        let (_, rx) = reaper.spawn(|| fork_exit(3, 10)).unwrap();
        assert_eq!(rx.await.unwrap(), 3);
    });
}
