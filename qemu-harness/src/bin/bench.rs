//! Benchmarks that boot real VMs and print figures (not timed tests).
//!
//! Every figure is printed beside its baseline measured in the same run, alternating, with
//! the machine's load. `--base-iso ISO` (and `--base-bin TETHER`) add a baseline build of the
//! tether (for example `main`'s, built in another worktree) beside this tree's (the
//! candidate; `$TETHER_ISO` selects another).
//!
//! `bench boot [--runs N] [--base-iso ISO] [--base-bin TETHER] [--control]`: N VMs with a
//! bare init (same kernel, ISO layout and QEMU settings) and N with each tether, round after
//! round, each round in a rotated order; medians and quartiles of QEMU start → the
//! entrypoint's first output byte and each tether's ratio to the bare init (the ratio of
//! medians, and the median of each round's own ratio); with `--control`, the bare init a
//! second time each round (its ratio to itself is the bench's resolution); the tether's own PID 1 → exec time and boot stamps, its binary size and its
//! resident memory while idle with one running session.
//!
//! `bench docker [--runs N] [--client PATH]`: wall time of `docker run --rm busybox true` and
//! `docker exec NAME true` through `vch daemon`, beside `vch run busybox true` and
//! `vch exec NAME true` on the same state directory, alternating: what the API layer adds.
//!
//! `bench network [--runs N] [--mib M]`: TCP throughput between two containers on one
//! network's segment (`dd | nc` of M MiB from one to the other, by name) beside the same
//! transfer from this machine into a container through a published port (`-p`), in the
//! same run, alternating.
//!
//! `bench backchannel [--execs N] [--mib M] [--rounds R] [--base-iso ISO]`: exec round-trip
//! latency of `true` (VMs alternating) with its breakdown (host-side steps, the keeper's
//! part, the guest's from the tether's log), and throughput of M MiB of `/dev/zero` through
//! attach (an exec's stdout), `logs -f` (the primary's stdout) and a raw virtio-serial port
//! of the same VM (R rounds), beside the raw byte round trip; with sshproto's `cipher_speed`
//! example built for the guest (musl), also the guest's own cipher throughput, the ceiling
//! of any SSH attach there.
//!
//! `bench copy [--runs N] [--mib M]`: `vch cp` throughput of an M MiB directory tree (64
//! files in 8 directories) into and out of a running container, beside the attach
//! throughput of `head -c M MiB /dev/zero` (an exec's stdout) in the same VM and run,
//! alternating; medians of N.
//!
//! `bench entropy [--runs N]`: whether the guest's CRNG is initialised when the entrypoint
//! runs (`/proc/sys/kernel/random/entropy_avail` read by it, the kernel's `crng init done`
//! time against the tether's exec stamp), with and without virtio-rng, with the tether's
//! seed from the host and without it (`VCH_NO_ENTROPY_SEED`), alternating.
//!
//! `bench images [--runs N]`: `vch run --network none IMAGE true` (the `vch` binary beside
//! this one) for the built-in busybox image and for a Debian bookworm minbase
//! (`scripts/debian-image`), each as a store image and as a root filesystem directory
//! (every directory run built a fresh disk before the store; now its disk is cached), the first
//! run in a new state directory (cold: the image's disks or the directory's disk are made) and
//! the median of N more; the bytes each extra container adds; the Debian image's import and
//! load times; what a second image on the same Debian base adds to the store.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qemu_harness::control;
use qemu_harness::engine::{Engine, ExecCreate, LogItem, LogOptions};
use qemu_harness::state::State;
use qemu_harness::vm::{self, Captured, RunOptions};
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn arg(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("missing value")?
            .parse()
            .context(name.to_owned()),
        None => Ok(default),
    }
}

/// A path option (`--base-iso PATH`).
fn path_arg(args: &[String], name: &str) -> Option<PathBuf> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tmp = std::env::temp_dir().join(format!("tether-bench-{}", std::process::id()));
    let state = State::open(&tmp)?;
    let r = match args.first().map(String::as_str) {
        Some("boot") => boot(
            &state,
            arg(&args, "--runs", 10)? as usize,
            path_arg(&args, "--base-iso"),
            path_arg(&args, "--base-bin"),
            args.iter().any(|a| a == "--control"),
        ),
        Some("backchannel") => backchannel(
            &state,
            arg(&args, "--execs", 50)? as usize,
            arg(&args, "--mib", 32)?,
            arg(&args, "--rounds", 3)? as usize,
            path_arg(&args, "--base-iso"),
        ),
        Some("docker") => docker(&state, arg(&args, "--runs", 10)? as usize, &args),
        Some("images") => images(&tmp, arg(&args, "--runs", 3)? as usize),
        Some("entropy") => entropy(&tmp, arg(&args, "--runs", 2)? as usize),
        Some("copy") => copy(
            &state,
            &tmp,
            arg(&args, "--runs", 3)? as usize,
            arg(&args, "--mib", 100)?,
        ),
        Some("network") => network(
            &state,
            arg(&args, "--runs", 3)? as usize,
            arg(&args, "--mib", 64)?,
        ),
        _ => bail!("usage: bench boot [--runs N] [--base-iso ISO] [--base-bin TETHER] [--control] | bench backchannel [--execs N] [--mib M] [--rounds R] [--base-iso ISO] | bench docker [--runs N] [--client PATH] | bench images [--runs N] | bench copy [--runs N] [--mib M] | bench entropy [--runs N] | bench network [--runs N] [--mib M]"),
    };
    if r.is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        eprintln!("bench: VM folders kept in {}", tmp.display());
    }
    r
}

/// The bootstrap ISO a label stands for: the candidate (this tree's, or `$TETHER_ISO`) or the
/// baseline given with `--base-iso`.
#[derive(Debug, Clone)]
struct Variant {
    label: &'static str,
    iso: Option<PathBuf>,
}

fn variants(base_iso: Option<PathBuf>) -> Result<Vec<Variant>> {
    let mut v = Vec::new();
    if let Some(b) = base_iso {
        if !b.is_file() {
            bail!("--base-iso {}: no such file", b.display());
        }
        v.push(Variant {
            label: "baseline",
            iso: Some(b),
        });
    }
    v.push(Variant {
        label: "candidate",
        iso: None,
    });
    Ok(v)
}

fn boot(
    state: &State,
    runs: usize,
    base_iso: Option<PathBuf>,
    base_bin: Option<PathBuf>,
    control: bool,
) -> Result<()> {
    let bare = qemu_harness::artifacts::workspace_root().join("target/bootstrap/bare.iso");
    if !bare.is_file() {
        bail!("{} missing: run scripts/build-iso", bare.display());
    }
    let tethers = variants(base_iso)?;
    // Per label: first output (one per round, in round order), power-off, kernel -> PID 1,
    // and every boot stamp after PID 1.
    #[derive(Default)]
    struct Figures {
        first: Vec<f64>,
        off: Vec<f64>,
        kernel: Vec<f64>,
        stages: std::collections::BTreeMap<String, Vec<f64>>,
    }
    const BARE: &str = "bare init";
    // The bare init booted twice a round: how far apart two identical VMs measure here is
    // the resolution of every ratio below.
    const AGAIN: &str = "bare init again";
    let mut figs: std::collections::BTreeMap<&str, Figures> = Default::default();
    let mut labels: Vec<(&str, Option<PathBuf>)> = vec![(BARE, Some(bare.clone()))];
    if control {
        labels.push((AGAIN, Some(bare.clone())));
    }
    labels.extend(tethers.iter().map(|t| (t.label, t.iso.clone())));
    // Every label once a round, round after round (the machine's load shifts over a run), and
    // each round starts one place further along, so that no label always boots in the same
    // place: two copies of the bare init's ISO, always booted second and third, measured
    // 1.116 and 0.993 to the bare init in one run of 10 rounds and 0.955 and 0.976 in the
    // next.
    for r in 0..runs {
        let mut round = labels.clone();
        round.rotate_left(r % labels.len());
        for (label, iso) in round {
            let mut opts = RunOptions::new("busybox", &["echo", "hello"]);
            opts.timeout = Duration::from_secs(60);
            // No NIC (`--network none`), as these figures were always taken.
            opts.network = qemu_harness::network::NetworkRequest::default();
            opts.iso = iso;
            let outcome = vm::run(state, opts, &mut Captured::default())?;
            let f = figs.entry(label).or_default();
            f.first.push(
                outcome
                    .first_output
                    .context("no output from the VM")?
                    .as_secs_f64()
                    * 1000.0,
            );
            f.off.push(outcome.vm_lifetime.as_secs_f64() * 1000.0);
            if label != BARE && label != AGAIN {
                let cfg = vm::load_config(&outcome.dir)?;
                let s = &cfg.tether.boot_stamps;
                if let (Some(p), Some(_)) = (s.get("pid1"), s.get("exec")) {
                    f.kernel.push(*p as f64 / 1000.0);
                    for (name, at) in s.iter().filter(|(n, _)| n.as_str() != "pid1") {
                        f.stages
                            .entry(name.clone())
                            .or_default()
                            .push((at - p) as f64 / 1000.0);
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&outcome.dir);
        }
    }
    println!(
        "boot benchmark: {runs} VMs each, alternating (the order rotated each round), QEMU TCG q35; {}",
        load()
    );
    let bare_first = figs.get(BARE).map(|f| f.first.clone()).unwrap_or_default();
    let b = median(&mut bare_first.clone());
    let b_off = figs.get_mut(BARE).map_or(f64::NAN, |f| median(&mut f.off));
    println!(
        "  bare init: QEMU start -> first output byte {b:.0} ms (quartiles {}), -> power-off {b_off:.0} ms (medians)",
        quartiles(&bare_first)
    );
    // A ratio per round (each VM against the bare init of its own round), then their median:
    // a slow stretch of the machine moves both VMs of a round alike.
    let paired = |v: &[f64]| {
        let mut r: Vec<f64> = v.iter().zip(&bare_first).map(|(t, b)| t / b).collect();
        let q = quartiles(&r);
        (median(&mut r), q)
    };
    if let Some(f) = figs.get(AGAIN) {
        let (p, q) = paired(&f.first);
        println!(
            "  bare init again (the control): first output byte {:.0} ms, ratio to the bare init {:.3} (median of the rounds' ratios {p:.3}, quartiles {q}): the bench's resolution",
            median(&mut f.first.clone()),
            median(&mut f.first.clone()) / b,
        );
    }
    for t in &tethers {
        let Some(f) = figs.get_mut(t.label) else {
            continue;
        };
        let (p, q) = paired(&f.first);
        let spread = quartiles(&f.first);
        let first = median(&mut f.first);
        println!(
            "  {} tether: QEMU start -> first output byte {first:.0} ms (quartiles {spread}), ratio to the bare init {:.3} (median of the rounds' ratios {p:.3}, quartiles {q}); -> power-off {:.0} ms; kernel start -> PID 1 {:.1} ms; PID 1 -> entrypoint exec {:.1} ms",
            t.label,
            first / b,
            median(&mut f.off),
            median(&mut f.kernel),
            f.stages.get_mut("exec").map_or(f64::NAN, |v| median(v)),
        );
        let mut order: Vec<(f64, String)> = f
            .stages
            .iter_mut()
            .map(|(name, v)| (median(v), name.clone()))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let listed: Vec<String> = order
            .iter()
            .map(|(ms, name)| format!("{name} {ms:.1}"))
            .collect();
        println!(
            "    boot stamps, ms after PID 1 (median each): {}",
            listed.join(", ")
        );
    }
    footprint(state, &tethers, base_bin)
}

/// The first and third quartiles of `v`, as `a-b` (values above 10 without decimals).
fn quartiles(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return "-".into();
    }
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.25), at(0.75));
    if hi > 10.0 {
        format!("{lo:.0}-{hi:.0}")
    } else {
        format!("{lo:.3}-{hi:.3}")
    }
}

/// The machine's load as `uptime` tells it (the figures are taken on a shared machine).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| {
            format!(
                "load average {}",
                l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            )
        })
        .unwrap_or_default()
}

/// Binary size and idle RSS of each tether.
fn footprint(state: &State, tethers: &[Variant], base_bin: Option<PathBuf>) -> Result<()> {
    let bin = qemu_harness::artifacts::workspace_root()
        .join("target/x86_64-unknown-linux-musl/release/tether");
    let mut bins = Vec::new();
    if let Some(b) = base_bin {
        bins.push(("baseline", b));
    }
    bins.push(("candidate", bin));
    for (label, b) in bins {
        let size = std::fs::metadata(&b)
            .with_context(|| b.display().to_string())?
            .len();
        println!(
            "  {label} tether binary: {size} bytes ({:.3} MB) [{}]",
            size as f64 / 1e6,
            b.display()
        );
    }
    let rt = runtime()?;
    for t in tethers {
        println!(
            "  {} tether RSS idle with one running session: {}",
            t.label,
            idle_rss(&rt, state, t)?
        );
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A VM with one running session, kept by an in-process keeper.
struct Running {
    engine: Engine,
    id: String,
    dir: PathBuf,
    /// The raw bench port's listener (bound before QEMU starts: QEMU dials it once).
    bench: Option<std::os::unix::net::UnixListener>,
    ctl: PathBuf,
    keeper: tokio::task::JoinHandle<Result<vm::RunOutcome, vm::VmError>>,
}

fn start(
    rt: &tokio::runtime::Runtime,
    state: &State,
    variant: &Variant,
    bench_port: bool,
    command: &[&str],
) -> Result<Running> {
    start_with(
        rt,
        state,
        variant,
        bench_port,
        command,
        RunOptions::new("busybox", &[]).memory_mb,
    )
}

fn start_with(
    rt: &tokio::runtime::Runtime,
    state: &State,
    variant: &Variant,
    bench_port: bool,
    command: &[&str],
    memory_mb: u32,
) -> Result<Running> {
    let mut opts = RunOptions::new("busybox", command);
    opts.memory_mb = memory_mb;
    opts.timeout = Duration::from_secs(1800);
    opts.bench_port = bench_port;
    opts.iso = variant.iso.clone();
    let created = vm::create(state, opts)?;
    let dir = created.dir.clone();
    let bench = if bench_port {
        Some(std::os::unix::net::UnixListener::bind(
            dir.join("bench.sock"),
        )?)
    } else {
        None
    };
    let id = created.meta.id.clone();
    let keeper = rt.spawn(vm::keep(state.clone(), created, None, None));
    let engine = {
        let _guard = rt.enter();
        Engine::new(state.clone(), std::env::current_exe()?)
    };
    Ok(Running {
        engine,
        id,
        bench,
        ctl: dir.join("ctl.sock"),
        dir,
        keeper,
    })
}

impl Running {
    fn stop(self, rt: &tokio::runtime::Runtime) {
        let _ = rt.block_on(async {
            if let Ok(conn) = control::connect(&self.ctl).await {
                let _ = control::request(&conn, control::REQ_KILL, b"KILL").await;
            }
            tokio::time::timeout(Duration::from_secs(60), self.keeper).await
        });
    }
}

async fn connect(ctl: &std::path::Path) -> Result<()> {
    for _ in 0..1200 {
        if control::connect(ctl).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("keeper did not come up")
}

fn sh(script: &str) -> ExecCreate {
    ExecCreate {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// An exec's (exit status, stdout, time from its first to its last byte).
async fn exec_collect(
    engine: &Engine,
    id: &str,
    spec: ExecCreate,
) -> Result<(i64, Vec<u8>, Duration)> {
    Ok(engine.exec_collect(id, spec).await?)
}

fn idle_rss(rt: &tokio::runtime::Runtime, state: &State, variant: &Variant) -> Result<String> {
    let vm = start(rt, state, variant, false, &["sleep", "600"])?;
    let out = rt.block_on(async {
        connect(&vm.ctl).await?;
        let (_, out, _) =
            exec_collect(&vm.engine, &vm.id, sh("grep -E 'VmRSS' /proc/1/status")).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).trim().to_owned())
    });
    vm.stop(rt);
    out
}

/// The guest's end of the raw bench port, found by name as the tether finds its own.
const FIND_PORT: &str = "for p in /sys/class/virtio-ports/*; do if [ \"$(cat $p/name)\" = org.tether.bench ]; then d=/dev/${p##*/}; fi; done; exec 3<>$d; ";

/// The keeper's exec timings (`control::EXEC_PHASES` events), captured in this process:
/// [read, encode, store, announce] in microseconds.
static KEEPER_PHASES: std::sync::Mutex<Vec<[u64; 4]>> = std::sync::Mutex::new(Vec::new());

struct PhaseLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PhaseLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct V([u64; 4]);
        impl tracing::field::Visit for V {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                let i = match field.name() {
                    "read_us" => 0,
                    "encode_us" => 1,
                    "store_us" => 2,
                    "announce_us" => 3,
                    _ => return,
                };
                self.0[i] = value;
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if event.metadata().target() == control::EXEC_PHASES {
            let mut v = V([0; 4]);
            event.record(&mut v);
            KEEPER_PHASES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(v.0);
        }
    }
}

fn take_keeper_phases() -> Vec<[u64; 4]> {
    std::mem::take(&mut *KEEPER_PHASES.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The guest's side of each attached exec, from the tether's log (info lines, stamped with
/// the guest's uptime): the `reload` command received -> the exec waits for `unblock`
/// (config re-read, decoded, reconciled) -> the process started (attach, unblock, spawn)
/// -> it exited. Milliseconds per exec.
fn guest_phases(debug_log: &std::path::Path) -> Vec<[f64; 3]> {
    let text = std::fs::read_to_string(debug_log).unwrap_or_default();
    let stamp = |line: &str| -> Option<f64> {
        line.split_whitespace()
            .next()?
            .strip_suffix('s')?
            .parse::<f64>()
            .ok()
            .map(|s| s * 1000.0)
    };
    let session = |line: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("session="))
            .map(str::to_owned)
    };
    let mut reload = None;
    let mut open: std::collections::HashMap<String, (f64, f64, Option<f64>)> = Default::default();
    let mut done = Vec::new();
    for line in text.lines() {
        let Some(at) = stamp(line) else { continue };
        if line.contains("host command") && line.contains("Reload") {
            reload = Some(at);
        } else if line.contains("waiting for unblock") {
            if let (Some(r), Some(s)) = (reload.take(), session(line)) {
                open.insert(s, (r, at, None));
            }
        } else if line.contains("session started") {
            if let Some(e) = session(line).and_then(|s| open.get_mut(&s)) {
                e.2 = Some(at);
            }
        } else if line.contains("session exited") {
            if let Some((r, w, Some(st))) = session(line).and_then(|s| open.remove(&s)) {
                done.push([w - r, st - w, at - st]);
            }
        }
    }
    done
}

/// Exec round trips, per VM: host-side steps, the keeper's and the guest's.
#[derive(Default)]
struct ExecFigures {
    total: Vec<f64>,
    /// start -> announced -> bound -> unblocked -> EOF -> exit status
    host: [Vec<f64>; 5],
    keeper: [Vec<f64>; 4],
    guest: [Vec<f64>; 3],
}

fn ms(a: std::time::Instant, b: Option<std::time::Instant>) -> f64 {
    b.map(|b| b.saturating_duration_since(a).as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Bulk {
    raw: Vec<f64>,
    raw_piped: Vec<f64>,
    attach: Vec<f64>,
    /// Seconds of CPU the VM's QEMU spent on each attach transfer.
    attach_cpu: Vec<f64>,
    logs: Vec<f64>,
}

/// CPU seconds (user and system, all threads) QEMU has spent on VM `id` so far. Under TCG this
/// is the guest's work whatever else the machine is doing, where a transfer's wall time also
/// counts the host's other processes: the steadier measure of what a change costs the guest.
fn qemu_cpu_secs(state: &State, id: &str) -> Option<f64> {
    let pid = state.meta(id).ok()?.qemu_pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime and
    // stime the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(ticks as f64 / hz as f64)
}

fn backchannel(
    state: &State,
    execs: usize,
    mib: u64,
    rounds: usize,
    base_iso: Option<PathBuf>,
) -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    let _ =
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PhaseLayer));
    let bytes = mib * 1024 * 1024;
    let vs = variants(base_iso)?;
    let rt = runtime()?;
    // The data: `bytes` of 64-byte lines (`logs` hands out lines: /dev/zero's bytes would
    // make one line that never ends), made once in the guest's memory. The primary writes
    // it to its stdout each time a line comes through the FIFO /tmp/go: the `logs -f`
    // transfer. Waiting on the FIFO costs the guest nothing, where polling for a file (a
    // `sleep` forked every few milliseconds) took its CPU from the transfers measured.
    let primary = format!(
        "yes {} | head -c {bytes} > /tmp/data; \
         mkfifo /tmp/go; while true; do read x < /tmp/go; cat /tmp/data; done",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrs"[..63].to_owned()
    );
    let mut vms = Vec::new();
    for v in &vs {
        vms.push(start(&rt, state, v, true, &["sh", "-c", &primary])?);
    }
    let result = rt.block_on(async {
        let mut raws = Vec::new();
        for vm in vms.iter_mut() {
            let listener = vm.bench.take().context("bench port")?;
            listener.set_nonblocking(true)?;
            let listener = tokio::net::UnixListener::from_std(listener)?;
            connect(&vm.ctl).await?;
            let (raw, _) = tokio::time::timeout(Duration::from_secs(180), listener.accept())
                .await
                .context("bench port")??;
            // Warm-up exec: the first one also waits for the back-channel to connect.
            exec_collect(&vm.engine, &vm.id, sh("true")).await?;
            raws.push(raw);
        }
        take_keeper_phases();

        // Exec round trip of `true`, alternating between the VMs.
        let mut ex: Vec<ExecFigures> = vms.iter().map(|_| ExecFigures::default()).collect();
        for _ in 0..execs {
            for (vm, f) in vms.iter().zip(ex.iter_mut()) {
                let (code, _, _, s) = vm
                    .engine
                    .exec_collect_stamped(
                        &vm.id,
                        ExecCreate {
                            command: vec!["true".into()],
                            ..Default::default()
                        },
                    )
                    .await?;
                anyhow::ensure!(code == 0, "true exited {code}");
                f.total.push(ms(s.start, s.finished));
                let steps = [s.announced, s.bound, s.unblocked, s.eof, s.finished];
                let mut from = s.start;
                for (i, at) in steps.iter().enumerate() {
                    f.host[i].push(ms(from, *at));
                    from = at.unwrap_or(from);
                }
                for k in take_keeper_phases() {
                    for (v, us) in f.keeper.iter_mut().zip(k) {
                        v.push(us as f64 / 1000.0);
                    }
                }
            }
        }
        for (vm, f) in vms.iter().zip(ex.iter_mut()) {
            for g in guest_phases(&vm.dir.join("tether.debug")) {
                for (v, ms) in f.guest.iter_mut().zip(g) {
                    v.push(ms);
                }
            }
        }

        // Raw port round trip (the first VM with a bench port: the candidate when alone):
        // an echo loop in the guest, one byte at a time.
        let mut rtt_ms = Vec::new();
        {
            let vm = vms.last().context("no VM")?;
            let raw = raws.last_mut().context("no raw port")?;
            let (e2, id2) = (vm.engine.clone(), vm.id.clone());
            let echo = tokio::spawn(async move {
                exec_collect(&e2, &id2, sh(&format!("{FIND_PORT} cat <&3 >&3"))).await
            });
            let mut b = [0u8; 1];
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 0..execs {
                let t = Instant::now();
                raw.write_all(&[i as u8]).await?;
                raw.read_exact(&mut b).await?;
                rtt_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            echo.abort();
            let _ = exec_collect(&vm.engine, &vm.id, sh("killall cat")).await;
        }

        // Bulk: raw port, attach (an exec's stdout), `logs -f` (the primary's stdout
        // through the output channel and log), the same bytes, round after round.
        let mut bulk: Vec<Bulk> = vms.iter().map(|_| Bulk::default()).collect();
        for _ in 0..rounds {
            for ((vm, raw), b) in vms.iter().zip(raws.iter_mut()).zip(bulk.iter_mut()) {
                b.raw.push(raw_bulk(vm, raw, "cat /tmp/data", bytes).await?);
                b.raw_piped
                    .push(raw_bulk(vm, raw, "cat /tmp/data | dd bs=32k 2>/dev/null", bytes).await?);

                let cpu0 = qemu_cpu_secs(state, &vm.id);
                let (code, out, span) =
                    exec_collect(&vm.engine, &vm.id, sh("cat /tmp/data")).await?;
                if let (Some(c0), Some(c1)) = (cpu0, qemu_cpu_secs(state, &vm.id)) {
                    b.attach_cpu.push(c1 - c0);
                }
                anyhow::ensure!(
                    code == 0 && out.len() as u64 == bytes,
                    "attach transfer: code {code}, {} bytes",
                    out.len()
                );
                b.attach.push(span.as_secs_f64());

                let (_, mut rx) = vm.engine.logs(
                    &vm.id,
                    LogOptions {
                        follow: true,
                        tail: Some(0),
                        ..Default::default()
                    },
                )?;
                // Timed from the exec that lets the primary start: timing from the first line
                // the follower saw counted only what came after it, and a first line late
                // behind a burst printed hundreds of MB/s. The exec's round trip is in the
                // figure, the same for every variant.
                let from = Instant::now();
                exec_collect(&vm.engine, &vm.id, sh("echo go > /tmp/go")).await?;
                let mut got = 0u64;
                while got < bytes {
                    match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
                        Ok(Some(LogItem::Line(l))) => got += l.bytes.len() as u64,
                        other => bail!("logs -f ended after {got} bytes: {other:?}"),
                    }
                }
                b.logs.push(from.elapsed().as_secs_f64());
            }
        }
        // What any SSH attach can reach in this guest: the cipher's own throughput, from
        // sshproto's `cipher_speed` example run in the candidate's VM (when it is built).
        let cipher = match cipher_speed_binary() {
            Some(bin) => {
                let vm = vms.last().context("no VM")?;
                Some(guest_cipher_speed(vm, &bin).await?)
            }
            None => None,
        };
        anyhow::Ok((ex, rtt_ms, bulk, cipher))
    });
    for vm in vms {
        vm.stop(&rt);
    }
    let (mut ex, mut rtt_ms, mut bulk, cipher) = result?;
    let r = median(&mut rtt_ms);
    let mb = bytes as f64 / 1e6;
    println!(
        "back-channel benchmark (QEMU TCG q35, VMs alternating); {}",
        load()
    );
    println!("  raw virtio-serial byte round trip (median of {execs}): {r:.2} ms");
    for (v, f) in vs.iter().zip(ex.iter_mut()) {
        let e = median(&mut f.total);
        let h: Vec<f64> = f.host.iter_mut().map(|v| median(v)).collect();
        let k: Vec<f64> = f.keeper.iter_mut().map(|v| median(v)).collect();
        let g: Vec<f64> = f.guest.iter_mut().map(|v| median(v)).collect();
        println!(
            "  {} exec round trip of `true` (median of {execs}): {e:.1} ms (ratio to the raw byte round trip {:.0})",
            v.label,
            e / r
        );
        println!(
            "    host: exec request -> ID announced {:.1}, -> attach channel bound {:.1}, -> unblock sent {:.1}, -> output EOF {:.1}, -> exit status {:.1} ms",
            h[0], h[1], h[2], h[3], h[4]
        );
        println!(
            "    keeper (inside 'ID announced'): config read {:.2}, encode {:.2}, store write {:.2}, reload pushed -> ID announced {:.1} ms",
            k[0], k[1], k[2], k[3]
        );
        println!(
            "    guest (tether log, all execs of the VM): reload received -> waiting for unblock {:.1}, -> process started {:.1}, -> process exited {:.1} ms",
            g[0], g[1], g[2]
        );
    }
    println!(
        "  raw = the same bytes from a guest process to this one over a virtio-serial port of the \
         same VM without SSH: `cat` (sendfile: the port's ceiling) and `cat | dd bs=32k` \
         (through a pipe and write() of 32 KiB, as the tether does with attach output)"
    );
    for (v, b) in vs.iter().zip(bulk.iter_mut()) {
        let (raw, piped, att, logs) = (
            mb / median(&mut b.raw),
            mb / median(&mut b.raw_piped),
            mb / median(&mut b.attach),
            mb / median(&mut b.logs),
        );
        println!(
            "  {} {mib} MiB of 64-byte lines (median of {rounds}): raw {raw:.2} MB/s, raw through a pipe {piped:.2} MB/s; attach (exec stdout over SSH) {att:.2} MB/s, ratio {:.2} (to the piped raw {:.2}); logs -f {logs:.2} MB/s, ratio {:.2}",
            v.label,
            att / raw,
            att / piped,
            logs / raw
        );
        if !b.attach_cpu.is_empty() {
            println!(
                "    the VM's CPU (its QEMU's user and system time) per attach transfer: {:.0} ms (median of {}; the exec's own setup included)",
                median(&mut b.attach_cpu) * 1000.0,
                b.attach_cpu.len()
            );
        }
        if let Some(c) = cipher {
            println!(
                "    attach against the in-guest cipher ceiling ({CIPHER_LINE}, {c:.1} MB/s, sshproto's cipher_speed in the candidate's VM): ratio {:.2}",
                att / c
            );
        }
    }
    if cipher.is_none() {
        println!(
            "  (the in-guest cipher ceiling: `cargo build --release -p sshproto --example cipher_speed --target x86_64-unknown-linux-musl` first)"
        );
    }
    Ok(())
}

/// The line of `cipher_speed`'s output the back-channel's default cipher has.
const CIPHER_LINE: &str = "chacha20-poly1305@openssh.com (seal)";

/// sshproto's `cipher_speed` example, built static for the guest, if it is.
fn cipher_speed_binary() -> Option<PathBuf> {
    let p = qemu_harness::artifacts::workspace_root()
        .join("target/x86_64-unknown-linux-musl/release/examples/cipher_speed");
    p.is_file().then_some(p)
}

/// MB/s of the back-channel's cipher sealing 32 KiB packets in `vm`'s guest.
async fn guest_cipher_speed(vm: &Running, bin: &std::path::Path) -> Result<f64> {
    vm.engine
        .copy_to_container(
            &vm.id,
            qemu_harness::engine::LocalEnd::Path(bin.to_owned()),
            "/tmp",
            false,
            false,
            &mut tokio::io::empty(),
        )
        .await?;
    let (code, out, _) = exec_collect(&vm.engine, &vm.id, sh("/tmp/cipher_speed 16")).await?;
    let text = String::from_utf8_lossy(&out);
    anyhow::ensure!(code == 0, "cipher_speed exited {code}: {text}");
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(CIPHER_LINE)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {CIPHER_LINE} line in {text}"))
}

/// Seconds from the first to the last of `bytes` that `command` (run in the guest with the
/// raw bench port on fd 3) writes to the port.
async fn raw_bulk(
    vm: &Running,
    raw: &mut tokio::net::UnixStream,
    command: &str,
    bytes: u64,
) -> Result<f64> {
    let (e, id) = (vm.engine.clone(), vm.id.clone());
    let script = format!("{FIND_PORT} {command} >&3");
    let writer = tokio::spawn(async move { exec_collect(&e, &id, sh(&script)).await });
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut first = None;
    while got < bytes {
        let n = raw.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "bench port closed");
        first.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    let _ = writer.await;
    Ok(secs)
}

/// The `vch` binary built beside this one (`cargo build --release -p qemu-harness`).
fn sibling_vch() -> Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("bench has no folder")?
        .join("vch");
    if !p.is_file() {
        bail!(
            "{} missing: build it with `cargo build --release -p qemu-harness`",
            p.display()
        );
    }
    Ok(p)
}

/// Runs a command to its end: its wall time in ms, after checking it succeeded.
fn timed(cmd: &mut std::process::Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

fn docker(state: &State, runs: usize, args: &[String]) -> Result<()> {
    let vch = sibling_vch()?;
    let client = args
        .iter()
        .position(|a| a == "--client")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker"));
    let sock = state.root().join("docker.sock");
    let mut daemon = std::process::Command::new(&vch)
        .arg("--state")
        .arg(state.root())
        .arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let config = state.root().join("docker-config");
    std::fs::create_dir_all(&config)?;
    let docker = |args: &[&str]| {
        let mut c = std::process::Command::new(&client);
        c.env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", &config)
            .env_remove("DOCKER_CONTEXT")
            .args(args);
        c
    };
    let vch_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(&vch);
        c.arg("--state").arg(state.root()).args(args);
        c
    };
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while timed(&mut docker(&["version"])).is_err() {
            if Instant::now() > deadline {
                bail!("vch daemon did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (mut d_run, mut v_run, mut d_exec, mut v_exec) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..2 * runs {
            if i % 2 == 0 {
                d_run.push(timed(&mut docker(&["run", "--rm", "busybox", "true"]))?);
            } else {
                v_run.push(timed(&mut vch_cmd(&["run", "busybox", "true"]))?);
            }
        }
        timed(&mut docker(&[
            "run", "-d", "--name", "bench", "busybox", "sleep", "900",
        ]))?;
        // A first exec also waits for the back-channel.
        timed(&mut docker(&["exec", "bench", "true"]))?;
        for i in 0..2 * runs {
            if i % 2 == 0 {
                d_exec.push(timed(&mut docker(&["exec", "bench", "true"]))?);
            } else {
                v_exec.push(timed(&mut vch_cmd(&["exec", "bench", "true"]))?);
            }
        }
        let _ = docker(&["rm", "-f", "bench"]).output();
        // What each client costs by itself: a request that reads one directory.
        let (mut d_ps, mut v_ps) = (Vec::new(), Vec::new());
        for i in 0..4 * runs {
            if i % 2 == 0 {
                d_ps.push(timed(&mut docker(&["ps", "-q"]))?);
            } else {
                v_ps.push(timed(&mut vch_cmd(&["ps", "-q"]))?);
            }
        }
        let (dr, vr, de, ve) = (
            median(&mut d_run),
            median(&mut v_run),
            median(&mut d_exec),
            median(&mut v_exec),
        );
        let (dp, vp) = (median(&mut d_ps), median(&mut v_ps));
        println!(
            "docker endpoint benchmark: {runs} runs each, alternating, QEMU TCG q35, client {}",
            client.display()
        );
        println!("  docker run --rm busybox true: {dr:.0} ms; vch run busybox true: {vr:.0} ms; ratio {:.3}", dr / vr);
        println!(
            "  docker exec NAME true: {de:.0} ms; vch exec NAME true: {ve:.0} ms; ratio {:.3}",
            de / ve
        );
        println!("  the clients alone (ps -q): docker {dp:.1} ms, vch {vp:.1} ms");
        let (ar, ae) = (dr - vr - (dp - vp), de - ve - (dp - vp));
        println!(
            "  added by the API layer beyond the client's own start: run {ar:.0} ms ({:.1} %), exec {ae:.0} ms ({:.1} %)",
            100.0 * ar / vr,
            100.0 * ae / ve
        );
        Ok(())
    })();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    result
}

/// Sends `mib` MiB to `127.0.0.1:port` and waits until the receiver closes: the time in ms.
fn send_through_published_port(port: u16, mib: u64) -> Result<f64> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..mib * 16 {
        s.write_all(&chunk)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // The container's `nc` closes once it has read everything.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn network(state: &State, runs: usize, mib: u64) -> Result<()> {
    let vch = sibling_vch()?;
    let vch_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(&vch);
        c.arg("--state").arg(state.root()).args(args);
        c
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    timed(&mut vch_cmd(&["network", "create", "benchnet"]))?;
    // One receiver for both paths: port 5001 on the segment, 5002 published on this
    // machine; each `nc -l` takes one transfer and the loop listens again. busybox's `nc`
    // ends a connection when its stdin ends, so its stdin is a FIFO that never does.
    let publish = format!("127.0.0.1:{port}:5002");
    timed(&mut vch_cmd(&[
        "run",
        "-d",
        "--name",
        "sink",
        "--network",
        "benchnet",
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        "mkfifo /tmp/f; (while true; do nc -l -p 5001 <>/tmp/f | wc -c >>/tmp/got5001; done) & \
         while true; do nc -l -p 5002 <>/tmp/f | wc -c >>/tmp/got5002; done",
    ]))?;
    timed(&mut vch_cmd(&[
        "run",
        "-d",
        "--name",
        "src",
        "--network",
        "benchnet",
        "busybox",
        "sleep",
        "3600",
    ]))?;
    let result = (|| -> Result<()> {
        let script = format!(
            "time -p sh -c 'dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc sink 5001'",
            mib * 16
        );
        // The listeners come up with the container; wait until both take a transfer.
        let deadline = Instant::now() + Duration::from_secs(120);
        while timed(&mut vch_cmd(&[
            "exec",
            "src",
            "sh",
            "-c",
            "echo | nc sink 5001",
        ]))
        .is_err()
            || send_through_published_port(port, 0).is_err()
        {
            if Instant::now() > deadline {
                bail!("the receivers did not come up");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // Between transfers: the receiver's loop listens again.
        let settle = || std::thread::sleep(Duration::from_millis(500));
        let mut exec_true = Vec::new();
        for _ in 0..runs {
            exec_true.push(timed(&mut vch_cmd(&["exec", "src", "true"]))?);
        }
        let exec_overhead = median(&mut exec_true);
        let (mut seg, mut seg_guest, mut published) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            settle();
            let t = Instant::now();
            let out = vch_cmd(&["exec", "src", "sh", "-c", &script]).output()?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if !out.status.success() {
                bail!(
                    "segment transfer failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            seg.push(ms - exec_overhead);
            // `time -p`'s "real S.ss", the guest's own clock.
            if let Some(real) = String::from_utf8_lossy(&out.stderr)
                .lines()
                .find_map(|l| l.strip_prefix("real "))
                .and_then(|v| v.trim().parse::<f64>().ok())
            {
                seg_guest.push(real * 1000.0);
            }
            settle();
            published.push(send_through_published_port(port, mib)?);
        }
        // Every timed transfer arrived whole (the receivers counted the bytes).
        let want = (mib * 1024 * 1024).to_string();
        for file in ["/tmp/got5001", "/tmp/got5002"] {
            let out = vch_cmd(&["exec", "sink", "cat", file]).output()?;
            let whole = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.trim() == want)
                .count();
            if whole < runs {
                bail!(
                    "{file}: {whole} of {runs} transfers arrived whole: {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                );
            }
        }
        let rate = |ms: f64| mib as f64 / (ms / 1000.0);
        let (s, g, p) = (
            median(&mut seg),
            median(&mut seg_guest),
            median(&mut published),
        );
        println!(
            "network benchmark: {mib} MiB over TCP, {runs} runs each, alternating, QEMU TCG q35, vmxnet3"
        );
        println!(
            "  container -> container on one segment (dd | nc by name): {s:.0} ms, {:.1} MiB/s (guest clock: {g:.0} ms, {:.1} MiB/s; vch exec's own {exec_overhead:.0} ms taken off)",
            rate(s),
            rate(g)
        );
        println!(
            "  this machine -> container through -p (127.0.0.1:{port} -> libslirp -> segment): {p:.0} ms, {:.1} MiB/s",
            rate(p)
        );
        println!("  ratio segment / published: {:.2}", rate(s) / rate(p));
        Ok(())
    })();
    let _ = vch_cmd(&["rm", "-f", "sink", "src"]).output();
    result
}

/// `vch --state STATE ARGS` with the `vch` binary beside this one: its wall time, or the
/// failure with its stderr.
fn vch_timed(state: &std::path::Path, args: &[&str]) -> Result<(Duration, String)> {
    let exe = std::env::current_exe()?.with_file_name("vch");
    if !exe.is_file() {
        bail!(
            "{} missing: cargo build --release -p qemu-harness",
            exe.display()
        );
    }
    let t = Instant::now();
    let out = std::process::Command::new(&exe)
        .arg("--state")
        .arg(state)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "vch {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `vch run --network none IMAGE true` in `state`: the first run, then the median of `runs`
/// more (seconds).
fn run_true(state: &std::path::Path, image: &str, runs: usize) -> Result<(f64, f64)> {
    let args = [
        "run",
        "--network",
        "none",
        "--timeout",
        "300",
        image,
        "true",
    ];
    let first = vch_timed(state, &args)?.0.as_secs_f64();
    let mut again = Vec::new();
    for _ in 0..runs {
        again.push(vch_timed(state, &args)?.0.as_secs_f64());
    }
    Ok((first, median(&mut again)))
}

/// Bytes the newest container's VM folder takes (its overlay and config; a directory
/// image's hard-linked disk is the cache's, not the container's).
fn newest_container_bytes(state: &std::path::Path) -> Result<(u64, u64)> {
    let st = State::open(state)?;
    let meta = st.list().pop().context("no container")?;
    let dir = st.vm_dir(&meta.id);
    let overlay = qemu_harness::images::disk_usage(&dir.join("disk.qcow2"));
    let shared = qemu_harness::images::disk_usage(&dir.join("image.ext4"));
    let all = qemu_harness::images::disk_usage(&dir);
    Ok((overlay, all - shared))
}

fn images(tmp: &std::path::Path, runs: usize) -> Result<()> {
    use qemu_harness::images::ImageStore;
    let root = qemu_harness::artifacts::workspace_root();
    let debian = std::process::Command::new(root.join("scripts/debian-image")).output()?;
    if !debian.status.success() {
        bail!("scripts/debian-image failed (mmdebstrap, Debian's archive)");
    }
    let tarball = PathBuf::from(String::from_utf8_lossy(&debian.stdout).trim());
    let busybox_dir =
        qemu_harness::image::rootfs("busybox", &qemu_harness::artifacts::cache_dir())?;
    let debian_dir = tmp.join("debian-rootfs");
    std::fs::create_dir_all(&debian_dir)?;
    let ok = std::process::Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&debian_dir)
        .status()?
        .success();
    if !ok {
        bail!("unpacking {} failed", tarball.display());
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("image benchmark: vch run --network none IMAGE true, QEMU TCG q35; first run in a new state directory, then the median of {runs}");

    // The built-in image: the first run also loads it into the new store.
    let s = tmp.join("busybox-store");
    let (cold, warm) = run_true(&s, "busybox", runs)?;
    let (overlay, vm) = newest_container_bytes(&s)?;
    println!("  busybox, store image:           first {cold:.2} s, then {warm:.2} s; per extra container {:.2} MiB on disk (overlay {:.2} MiB)", mib(vm), mib(overlay));
    let s = tmp.join("busybox-dir");
    let dir = busybox_dir.display().to_string();
    let (cold, warm) = run_true(&s, &dir, runs)?;
    let (overlay, vm) = newest_container_bytes(&s)?;
    println!("  busybox, directory image:       first {cold:.2} s, then {warm:.2} s; per extra container {:.2} MiB (overlay {:.2} MiB)", mib(vm), mib(overlay));

    // Debian: imported from the tarball, and as the same root unpacked into a directory.
    let s = tmp.join("debian-store");
    let tar_s = tarball.display().to_string();
    let (import, _) = vch_timed(&s, &["import", &tar_s, "debian:bookworm"])?;
    let usage = ImageStore::new(&s).usage();
    let (cold, warm) = run_true(&s, "debian:bookworm", runs)?;
    let (overlay, vm) = newest_container_bytes(&s)?;
    println!("  debian minbase, store image:    first {cold:.2} s, then {warm:.2} s; per extra container {:.2} MiB (overlay {:.2} MiB)", mib(vm), mib(overlay));
    let s2 = tmp.join("debian-dir");
    let dir = debian_dir.display().to_string();
    let (cold, warm) = run_true(&s2, &dir, runs)?;
    let (overlay, vm) = newest_container_bytes(&s2)?;
    println!("  debian minbase, directory image: first {cold:.2} s, then {warm:.2} s; per extra container {:.2} MiB (overlay {:.2} MiB)", mib(vm), mib(overlay));
    let size = std::fs::metadata(&tarball)?.len();
    println!(
        "  debian minbase import ({:.0} MiB tarball): {:.2} s; store: layers {:.1} MiB, disks {:.1} MiB",
        mib(size),
        import.as_secs_f64(),
        mib(usage.layers),
        mib(usage.disks)
    );
    let saved = tmp.join("debian-save.tar");
    let saved_s = saved.display().to_string();
    vch_timed(&s, &["save", "-o", &saved_s, "debian:bookworm"])?;
    let s3 = tmp.join("debian-load");
    let (load, _) = vch_timed(&s3, &["load", "-i", &saved_s])?;
    println!(
        "  debian minbase load (docker save archive, {:.0} MiB): {:.2} s",
        mib(std::fs::metadata(&saved)?.len()),
        load.as_secs_f64()
    );

    // A second image on the same base: the Debian layer plus 16 MiB of new files.
    let before = ImageStore::new(&s).usage();
    let derived = derived_archive(&s, &tarball, 16)?;
    let derived_s = derived.display().to_string();
    let (took, _) = vch_timed(&s, &["load", "-i", &derived_s])?;
    let after = ImageStore::new(&s).usage();
    println!(
        "  second image on the debian base (+1 layer, 16 MiB of files): load {:.2} s; the store grew by {:.1} MiB (layers {:.1}, disks {:.1}) against {:.1} MiB for the base",
        took.as_secs_f64(),
        mib((after.layers + after.disks).saturating_sub(before.layers + before.disks)),
        mib(after.layers.saturating_sub(before.layers)),
        mib(after.disks.saturating_sub(before.disks)),
        mib(before.layers + before.disks)
    );
    Ok(())
}

/// A `docker save` archive of an image whose first layer is `base_tar` (byte for byte, so the
/// same diff ID as the imported image's layer) and whose second adds `mib` MiB of files.
fn derived_archive(
    state: &std::path::Path,
    base_tar: &std::path::Path,
    mib: usize,
) -> Result<PathBuf> {
    use qemu_harness::images::Digest;
    let mut upper = tar::Builder::new(Vec::new());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..mib {
        // Incompressible-looking bytes (xorshift), so that the figure is the bytes' own.
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        upper.append_data(&mut h, format!("opt/app/blob{i}"), &data[..])?;
    }
    let upper = upper.into_inner()?;
    let base_id = {
        let mut f = std::fs::File::open(base_tar)?;
        let mut h = qemu_harness::images::digest::Hasher::new();
        std::io::copy(&mut f, &mut h)?;
        h.finish().0
    };
    let upper_id = Digest::of(&upper);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2025-01-01T00:00:00Z",
        "config": {"Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [base_id.to_string(), upper_id.to_string()]},
    }))?;
    let cfg_name = format!("{}.json", Digest::of(&cfg).hex());
    let out = state.join("derived.tar");
    let mut ar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&out)?));
    let mut put = |name: &str, size: u64, r: &mut dyn std::io::Read| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        ar.append_data(&mut h, name, r)?;
        Ok(())
    };
    let base_name = format!("{}/layer.tar", base_id.hex());
    let upper_name = format!("{}/layer.tar", upper_id.hex());
    put(
        &base_name,
        std::fs::metadata(base_tar)?.len(),
        &mut std::fs::File::open(base_tar)?,
    )?;
    put(&upper_name, upper.len() as u64, &mut &upper[..])?;
    put(&cfg_name, cfg.len() as u64, &mut &cfg[..])?;
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": cfg_name, "RepoTags": ["debian-derived:1"], "Layers": [base_name, upper_name],
    }]))?;
    put("manifest.json", manifest.len() as u64, &mut &manifest[..])?;
    ar.into_inner()?.flush()?;
    Ok(out)
}

/// A directory tree of `mib` MiB: 8 directories of 8 files, of bytes that do not compress.
fn make_tree(root: &std::path::Path, mib: u64) -> Result<u64> {
    let per_file = (mib * 1024 * 1024 / 64) as usize;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut total = 0u64;
    for d in 0..8 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..8 {
            let mut data = vec![0u8; per_file];
            for chunk in data.chunks_mut(8) {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x.to_le_bytes();
                chunk.copy_from_slice(&b[..chunk.len()]);
            }
            std::fs::write(dir.join(format!("f{f}")), &data)?;
            total += data.len() as u64;
        }
    }
    Ok(total)
}

fn tree_bytes(root: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += tree_bytes(&p);
            } else if let Ok(md) = p.metadata() {
                total += md.len();
            }
        }
    }
    total
}

fn copy(state: &State, tmp: &std::path::Path, runs: usize, mib: u64) -> Result<()> {
    use qemu_harness::engine::LocalEnd;
    let tree = tmp.join("tree");
    let bytes = make_tree(&tree, mib)?;
    // The guest holds the tree on its disk; memory for its page cache.
    let rt = runtime()?;
    let this_tree = Variant {
        label: "candidate",
        iso: None,
    };
    let vm = start_with(&rt, state, &this_tree, false, &["sleep", "600"], 512)?;
    let result = rt.block_on(async {
        connect(&vm.ctl).await?;
        let (engine, id) = (&vm.engine, vm.id.as_str());
        exec_collect(engine, id, sh("true")).await?;
        let (mut ins, mut outs, mut attach) = (Vec::new(), Vec::new(), Vec::new());
        let mb = bytes as f64 / 1e6;
        for run in 0..runs {
            let dest = format!("/tmp/run{run}");
            exec_collect(engine, id, sh(&format!("mkdir -p {dest}"))).await?;
            let t = Instant::now();
            engine
                .copy_to_container(
                    id,
                    LocalEnd::Path(tree.clone()),
                    &dest,
                    false,
                    false,
                    &mut tokio::io::empty(),
                )
                .await?;
            ins.push(mb / t.elapsed().as_secs_f64());
            let out = tmp.join(format!("out{run}"));
            let t = Instant::now();
            engine
                .copy_from_container(
                    id,
                    &format!("{dest}/tree"),
                    false,
                    LocalEnd::Path(out.clone()),
                    &mut tokio::io::sink(),
                )
                .await?;
            outs.push(mb / t.elapsed().as_secs_f64());
            let got = tree_bytes(&out);
            anyhow::ensure!(got == bytes, "copied out {got} bytes of {bytes}");
            std::fs::remove_dir_all(&out)?;
            exec_collect(engine, id, sh(&format!("rm -rf {dest}"))).await?;
            let t = Instant::now();
            let (code, out, _) =
                exec_collect(engine, id, sh(&format!("head -c {bytes} /dev/zero"))).await?;
            anyhow::ensure!(code == 0 && out.len() as u64 == bytes, "attach transfer");
            attach.push(mb / t.elapsed().as_secs_f64());
        }
        anyhow::Ok((ins, outs, attach))
    });
    vm.stop(&rt);
    let (mut ins, mut outs, mut attach) = result?;
    println!("copy benchmark (one VM, QEMU TCG q35, 512 MiB; median of {runs})");
    println!(
        "  {mib} MiB tree (64 files): vch cp in {:.2} MB/s, out {:.2} MB/s; attach (exec stdout of the same bytes) {:.2} MB/s",
        median(&mut ins),
        median(&mut outs),
        median(&mut attach)
    );
    Ok(())
}

fn entropy(tmp: &std::path::Path, runs: usize) -> Result<()> {
    let state = tmp.join("entropy");
    let script =
        "cat /proc/sys/kernel/random/entropy_avail; dmesg | grep 'crng init done' | head -1";
    let configs = [
        ("virtio-rng, seed", false, false),
        ("no virtio-rng, seed", true, false),
        ("virtio-rng, no seed", false, true),
        ("no virtio-rng, no seed", true, true),
    ];
    let mut rows: Vec<(usize, Vec<f64>, Vec<f64>)> = vec![(0, Vec::new(), Vec::new()); 4];
    for run in 0..runs {
        for (i, (_, no_rng, no_seed)) in configs.iter().enumerate() {
            let name = format!("e{run}-{i}");
            let mut args = vec!["run", "--timeout", "120", "--name", &name];
            if *no_rng {
                args.push("--no-rng");
            }
            args.extend(["busybox", "sh", "-c", script]);
            let exe = std::env::current_exe()?.with_file_name("vch");
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("--state").arg(&state).args(&args);
            if *no_seed {
                cmd.env("VCH_NO_ENTROPY_SEED", "1");
            } else {
                cmd.env_remove("VCH_NO_ENTROPY_SEED");
            }
            let out = cmd.output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let ready = text.lines().next().map(str::trim) == Some("256");
            let (_, doc) = vch_timed(&state, &["inspect", &name])?;
            let doc: serde_json::Value = serde_json::from_str(&doc)?;
            let pid1 = doc["Boot"]["KernelToPid1Ms"].as_f64().unwrap_or(f64::NAN);
            let exec = pid1 + doc["Boot"]["Pid1ToExecMs"].as_f64().unwrap_or(f64::NAN);
            let crng = text
                .lines()
                .nth(1)
                .and_then(|l| l.trim_start_matches('[').split(']').next())
                .and_then(|t| t.trim().parse::<f64>().ok())
                .map(|s| s * 1000.0);
            let row = &mut rows[i];
            if ready {
                row.0 += 1;
            }
            if let Some(c) = crng {
                row.1.push(c - pid1);
            }
            row.2.push(exec - pid1);
        }
    }
    println!("entropy benchmark: is getrandom ready when the entrypoint runs? (QEMU TCG q35; {runs} runs each, alternating)");
    for (i, (label, _, _)) in configs.iter().enumerate() {
        let (ready, crng, exec) = &mut rows[i];
        let crng_text = if crng.is_empty() {
            "not initialised before the entrypoint looked".to_owned()
        } else {
            format!(
                "CRNG initialised {:.0} ms after PID 1 (median)",
                median(crng)
            )
        };
        println!(
            "  {label:<24} ready at exec in {ready}/{runs}; {crng_text}; exec {:.0} ms after PID 1",
            median(exec)
        );
    }
    Ok(())
}
