//! Running a container VM under QEMU.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guestinfo::store::{FileStore, Store};
use guestinfo::transport::qemu::HostServer;
use guestinfo::{ContainerConfig, HostCommand};
use iolog::{Body, Item, Stream};

use crate::artifacts;
use crate::config::{self, ContainerSpec};
use crate::image::{self, ImageError};
use crate::state::{self, Meta, State, StateError};

/// Port names: must match the tether's `platform::port`.
pub mod port {
    pub const GUESTINFO: &str = "org.tether.guestinfo";
    pub const DEBUG: &str = "org.tether.debug";
    pub const OUTPUT: &str = "org.tether.output";
}

/// Harness errors (the user's `vch` command failed before or around the VM).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// image problem
    #[error(transparent)]
    Image(#[from] ImageError),
    /// state directory problem
    #[error(transparent)]
    State(#[from] StateError),
    /// the bootstrap ISO is missing
    #[error("bootstrap ISO not found at {0}: build it with scripts/build-iso (or set TETHER_ISO)")]
    NoIso(PathBuf),
    /// QEMU could not be started
    #[error("cannot start {0}: {1} (apt-get install qemu-system-x86)")]
    Qemu(String, std::io::Error),
    /// a file operation failed
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// the config could not be encoded
    #[error("container config: {0}")]
    Config(String),
    /// no command to run
    #[error("no command given (the busybox image has no default command)")]
    NoCommand,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VmError + 'a {
    move |source| VmError::Io { what, path: path.to_owned(), source }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub spec: ContainerSpec,
    /// A rootfs directory or `busybox`.
    pub image: String,
    /// Hard limit on the VM's whole life; QEMU is killed when it passes.
    pub timeout: Duration,
    pub memory_mb: u32,
    pub disk_mb: u64,
    /// Raw extraConfig entries set after the composed config (tests use it to inject
    /// malformed keys; an empty value removes nothing, it sets `<nil>`).
    pub extra_config: Vec<(String, String)>,
}

impl RunOptions {
    /// Defaults for an image and command.
    pub fn new(image: &str, command: &[&str]) -> RunOptions {
        RunOptions {
            spec: ContainerSpec { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() },
            image: image.into(),
            timeout: Duration::from_secs(120),
            memory_mb: 256,
            disk_mb: 256,
            extra_config: Vec::new(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub id: String,
    /// `true`, or the launch error the tether wrote.
    pub started: String,
    /// The container's exit status as written back (the code, or 128 + signal).
    pub exit_code: i64,
    /// The VM had to be killed at the timeout.
    pub timed_out: bool,
    /// Records that arrived damaged on the output channel.
    pub damaged_records: u64,
    /// The VM's folder.
    pub dir: PathBuf,
}

/// Where the container's output goes as it arrives.
pub trait OutputHandler {
    fn output(&mut self, stream: Stream, bytes: &[u8]);
}

/// Collects output in memory.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl OutputHandler for Captured {
    fn output(&mut self, stream: Stream, bytes: &[u8]) {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(bytes),
            Stream::Stderr => self.stderr.extend_from_slice(bytes),
        }
    }
}

/// Passes output to this process's stdout and stderr.
#[derive(Debug, Default)]
pub struct Passthrough;

impl OutputHandler for Passthrough {
    fn output(&mut self, stream: Stream, bytes: &[u8]) {
        let _ = match stream {
            Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes).and_then(|_| o.flush())
            }
            Stream::Stderr => std::io::stderr().lock().write_all(bytes),
        };
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Creates the VM (disk, config) and runs it in the foreground until it powers off.
pub fn run(state: &State, mut opts: RunOptions, out: &mut dyn OutputHandler) -> Result<RunOutcome, VmError> {
    if opts.spec.command.is_empty() {
        return Err(VmError::NoCommand);
    }
    let iso = artifacts::iso();
    if !iso.is_file() {
        return Err(VmError::NoIso(iso));
    }
    if opts.spec.id.is_empty() {
        opts.spec.id = state::new_id();
    }
    let id = opts.spec.id.clone();
    if opts.spec.name.is_empty() {
        opts.spec.name = id.chars().take(12).collect();
    }
    state.check_name(&opts.spec.name)?;
    let dir = state.vm_dir(&id);
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let prepared = prepare(state, &opts, &id, &dir);
    let (mut meta, disk, store) = match prepared {
        Ok(p) => p,
        Err(e) => {
            // Nothing was started: leave no half-made container behind.
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
    };

    let gi_sock = dir.join("gi.sock");
    let out_sock = dir.join("out.sock");
    let _ = fs::remove_file(&gi_sock);
    let _ = fs::remove_file(&out_sock);
    let gi_listener = UnixListener::bind(&gi_sock).map_err(io_err("listen", &gi_sock))?;
    let out_listener = UnixListener::bind(&out_sock).map_err(io_err("listen", &out_sock))?;

    let mut child = spawn_qemu(&dir, &iso, &disk, &opts)?;
    meta.qemu_pid = Some(child.id());
    state.save(&meta)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (_cmd_tx, cmd_rx) = mpsc::channel::<HostCommand>();
    let gi_thread = {
        let stop = stop.clone();
        let store = store.clone();
        thread::spawn(move || {
            if let Some(stream) = accept_until(&gi_listener, &stop) {
                let server = HostServer::new(store);
                let _ = server.serve(stream, cmd_rx);
            }
        })
    };
    let (item_tx, item_rx) = mpsc::channel::<Item>();
    let out_thread = {
        let stop = stop.clone();
        let log_path = dir.join("output.log");
        thread::spawn(move || {
            let Some(mut stream) = accept_until(&out_listener, &stop) else { return };
            let mut log = File::options().create(true).append(true).open(&log_path).ok();
            let mut dec = iolog::Decoder::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if let Some(l) = log.as_mut() {
                    let _ = l.write_all(chunk);
                }
                dec.push(chunk);
                while let Some(item) = dec.next_item() {
                    if item_tx.send(item).is_err() {
                        return;
                    }
                }
            }
            if let Some(d) = dec.finish() {
                let _ = item_tx.send(Item::Damage(d));
            }
        })
    };

    let deadline = Instant::now() + opts.timeout;
    let mut timed_out = false;
    let mut damaged = 0u64;
    let mut deliver = |item: Item, damaged: &mut u64| match item {
        Item::Record(r) => {
            if let Body::Data(d) = r.body {
                out.output(r.stream, &d);
            }
        }
        Item::Damage(_) => *damaged += 1,
    };
    loop {
        match item_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(item) => deliver(item, &mut damaged),
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
    }
    // QEMU is gone, so its sockets are closed: the reader ends at EOF promptly.
    stop.store(true, Ordering::Relaxed);
    let _ = out_thread.join();
    while let Ok(item) = item_rx.try_recv() {
        deliver(item, &mut damaged);
    }
    let _ = gi_thread.join();
    let _ = fs::remove_file(&gi_sock);
    let _ = fs::remove_file(&out_sock);
    meta.qemu_pid = None;
    state.save(&meta)?;

    let (started, exit_code) = session_result(&load_config(&dir)?, &id);
    Ok(RunOutcome { id, started, exit_code, timed_out, damaged_records: damaged, dir })
}

/// Builds the VM's disk and config store and records it in the state directory.
fn prepare(state: &State, opts: &RunOptions, id: &str, dir: &Path) -> Result<(Meta, image::Disk, Arc<dyn Store>), VmError> {
    let disk = image::container_disk(&opts.image, &artifacts::cache_dir(), dir, opts.disk_mb)?;
    let cfg = config::compose(&opts.spec);
    let map = guestinfo::encode(&cfg).map_err(|e| VmError::Config(e.to_string()))?;
    let store = FileStore::create(dir.join("config.vmx")).map_err(|e| VmError::Config(e.to_string()))?;
    for (k, v) in map.iter().chain(opts.extra_config.iter().map(|(k, v)| (k, v))) {
        store.set(k, v).map_err(|e| VmError::Config(e.to_string()))?;
    }
    let meta = Meta {
        id: id.to_owned(),
        name: opts.spec.name.clone(),
        image: opts.image.clone(),
        command: opts.spec.command.clone(),
        created: now_secs(),
        qemu_pid: None,
    };
    state.save(&meta)?;
    Ok((meta, disk, Arc::new(store)))
}

/// The primary session's `started` text and exit status from a config.
pub fn session_result(cfg: &ContainerConfig, id: &str) -> (String, i64) {
    match cfg.sessions.get(id) {
        Some(s) => (s.started.clone(), s.exit_status),
        None => (String::new(), 0),
    }
}

/// Reads a VM's current config from its store, including the fields the tether writes back.
pub fn load_config(dir: &Path) -> Result<ContainerConfig, VmError> {
    let store = FileStore::open(dir.join("config.vmx")).map_err(|e| VmError::Config(e.to_string()))?;
    guestinfo::decode_full(&store.plain_map()).map_err(|e| VmError::Config(e.to_string()))
}

fn accept_until(listener: &UnixListener, stop: &AtomicBool) -> Option<UnixStream> {
    if listener.set_nonblocking(true).is_err() {
        return None;
    }
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// The QEMU binary: `$QEMU`, else `qemu-system-x86_64`.
pub fn qemu_binary() -> String {
    std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

fn spawn_qemu(dir: &Path, iso: &Path, disk: &image::Disk, opts: &RunOptions) -> Result<Child, VmError> {
    let d = |name: &str| dir.join(name).display().to_string();
    let qemu = qemu_binary();
    let mut cmd = Command::new(&qemu);
    cmd.args(["-machine", "q35", "-accel", "tcg", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-m", &opts.memory_mb.to_string(), "-smp", "1"])
        .args(["-device", "virtio-rng-pci"])
        .args(["-drive", &format!("file={},media=cdrom,readonly=on,if=ide,index=2", iso.display()), "-boot", "d"])
        .args(["-drive", &format!("file={},format={},if=none,id=root,cache=writeback", disk.path.display(), disk.format)])
        .args(["-device", "virtio-blk-pci,drive=root"])
        // ttyS0 is the back-channel on vSphere; ttyS1 the kernel console.
        .args(["-serial", "null", "-serial", &format!("file:{}", d("console.log"))])
        .args(["-device", "virtio-serial-pci,max_ports=8"])
        .args(["-chardev", &format!("socket,id=gi,path={},server=off", d("gi.sock"))])
        .args(["-device", &format!("virtserialport,chardev=gi,name={}", port::GUESTINFO)])
        .args(["-chardev", &format!("file,id=dbg,path={}", d("tether.debug"))])
        .args(["-device", &format!("virtserialport,chardev=dbg,name={}", port::DEBUG)])
        .args(["-chardev", &format!("socket,id=out,path={},server=off", d("out.sock"))])
        .args(["-device", &format!("virtserialport,chardev=out,name={}", port::OUTPUT)])
        .stdin(Stdio::null());
    let log = File::create(dir.join("qemu.log")).map_err(io_err("create", dir))?;
    let log2 = log.try_clone().map_err(io_err("dup", dir))?;
    cmd.stdout(log).stderr(log2);
    cmd.spawn().map_err(|e| VmError::Qemu(qemu, e))
}
