//! Bad configuration at volume, in real VMs: a sample of the malformed configs that the
//! tether's in-process test (`tether/tests/bad_config.rs`, over a thousand) runs through its
//! config path, each booted in its own VM: the error reaches the host as `started` with
//! docker's 125, nothing runs, and the VM powers off by itself.
//!
//! Duplicate case-insensitive keys are left to the in-process test: the host's store is
//! case-insensitive like a VMX, so it cannot hold two spellings of one key. Invalid UTF-8
//! likewise cannot be written to it; the in-process test puts it on the wire.

use std::sync::Mutex;
use std::time::Instant;

use e2e::RunOptions;
use guestinfo::malformed::{mutations, Kind};

const ID: &str = "badc0ffee0000000000000000000000000000000000000000000000000000003";
/// VMs per kind of damage (5 kinds).
const PER_KIND: usize = 5;
/// VMs booted at once: the machine has two cores, and each VM is one QEMU under TCG.
const PARALLEL: usize = 2;

fn options() -> RunOptions {
    let mut opts = RunOptions::new("busybox", &["sh", "-c", "echo never; exit 3"]);
    opts.spec.id = ID.into();
    opts.spec.env = vec!["A=1".into(), "B=two words".into()];
    opts
}

#[test]
fn malformed_configs_end_in_a_clear_error_and_a_clean_power_off() {
    let start = Instant::now();
    let base = guestinfo::encode(&qemu_harness::config::compose(&options().spec))
        .expect("encode the composed config");
    let all = mutations(&base, 15, 120).expect("the composed config is a valid base");
    let mut chosen = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::DuplicateKey {
            continue;
        }
        chosen.extend(
            all.iter()
                .filter(|m| m.kind == kind)
                .take(PER_KIND)
                .cloned(),
        );
    }
    assert!(chosen.len() >= 20, "{}", chosen.len());
    let total = chosen.len();
    let queue = Mutex::new(chosen);
    let failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let Some(m) = queue.lock().unwrap().pop() else {
                    return;
                };
                let mut opts = options();
                opts.extra_config = m.overrides(&base);
                let r = e2e::run_with(opts);
                let started = &r.outcome.started;
                let mut problems = Vec::new();
                if r.outcome.timed_out {
                    problems.push("did not power off by itself".to_owned());
                }
                if !(started.starts_with("invalid container config: ")
                    || started.starts_with("cannot read the container config: "))
                {
                    problems.push(format!("started = {:?}", clip(started)));
                }
                if started.len() > 1024 {
                    problems.push(format!("started is {} bytes", started.len()));
                }
                if r.outcome.exit_code != 125 {
                    problems.push(format!("exit code {}", r.outcome.exit_code));
                }
                if !r.stdout.is_empty() {
                    problems.push(format!("the command ran: {:?}", r.stdout));
                }
                if !problems.is_empty() {
                    failures.lock().unwrap().push(format!(
                        "{:?} {}: {}\n{}",
                        m.kind,
                        m.what,
                        problems.join("; "),
                        clip(&r.debug_log())
                    ));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    eprintln!("{total} malformed configs booted in {:?}", start.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn clip(s: &str) -> String {
    s.chars().take(2000).collect()
}
