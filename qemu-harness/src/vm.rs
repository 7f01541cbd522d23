//! Creating and running container VMs under QEMU.
//!
//! [`create`] makes the VM's folder (disk, config store, metadata). [`keep`] runs it: QEMU
//! under a hard timeout, the guestinfo channel served from the store, the output channel
//! appended to `output.log`, the back-channel (the port layer's SSH client) and the control
//! socket other `vch` invocations use. It returns when QEMU has exited.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guestinfo::store::{FileStore, Store};
use guestinfo::transport::qemu::HostServer;
use guestinfo::ContainerConfig;
use iolog::{Body, Item, Stream};
use tokio::sync::mpsc;

use crate::artifacts;
use crate::config::{self, ComposeError, ContainerSpec};
use crate::control;
use crate::image::{self, ImageError, Resolved, Source};
use crate::images::{ImageStore, Silent, Terminal};
use crate::network::{self, AttachedNic, NetworkError, NetworkRequest, NetworkStore};
use crate::portlayer::PortLayer;
use crate::state::{self, Meta, State, StateError};
use crate::volume::{self, AttachedVolume, VolumeError, VolumeSpec, VolumeStore};

/// Port names, shared with the tether.
pub use backchannel::ports as port;

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
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// the config could not be encoded or stored
    #[error("container config: {0}")]
    Config(String),
    /// no command to run
    #[error("no command given (the image has no default command)")]
    NoCommand,
    /// a bad option value
    #[error("{0}")]
    Usage(String),
    /// volume problem
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// network problem
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// mounts and networks that do not fit together
    #[error(transparent)]
    Compose(#[from] ComposeError),
    /// a network's segment could not be had
    #[error(transparent)]
    Netd(#[from] crate::netd::NetdError),
    /// the accelerator asked for cannot be had
    #[error(transparent)]
    Accel(#[from] crate::accel::AccelError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VmError + 'a {
    move |source| VmError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Where the VM's back-channel goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backchannel {
    /// A virtio-serial port to the harness's port layer (the QEMU default).
    #[default]
    Virtio,
    /// The first emulated 16550 UART (`/dev/ttyS0`), as on vSphere.
    Uart,
    /// The VM's device dials this external endpoint (`host:port`): another port layer
    /// drives the VM; `vch exec`/`attach` are then not available here.
    External(String),
}

impl Backchannel {
    /// Parses `virtio`, `uart` or `tcp://HOST:PORT`. A `+noise` suffix (a test aid) makes
    /// the port layer send line garbage before each handshake.
    pub fn parse(s: &str) -> Result<Backchannel, VmError> {
        match s.trim_end_matches("+noise") {
            "" | "virtio" => Ok(Backchannel::Virtio),
            "uart" | "serial" => Ok(Backchannel::Uart),
            other => match other.strip_prefix("tcp://") {
                Some(hp) if hp.contains(':') => Ok(Backchannel::External(hp.to_owned())),
                _ => Err(VmError::Usage(format!(
                    "--vch wants tcp://HOST:PORT, got {other:?}"
                ))),
            },
        }
    }

    /// The form `parse` reads.
    pub fn describe(&self) -> String {
        match self {
            Backchannel::Virtio => "virtio".into(),
            Backchannel::Uart => "uart".into(),
            Backchannel::External(hp) => format!("tcp://{hp}"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub spec: ContainerSpec,
    /// The image as the user named it: a name, ID or ID prefix of the image store, or a root
    /// filesystem directory.
    pub image: String,
    /// The image as the engine resolved it (and merged its config into `spec`); `None`:
    /// resolved by [`create`], whose caller gives the whole command itself.
    pub resolved: Option<Resolved>,
    /// Show the progress of building an image's disk on stderr when it is a terminal (`vch`;
    /// never the daemon).
    pub progress: bool,
    /// Hard limit on the VM's whole life; QEMU is killed when it passes.
    pub timeout: Duration,
    pub memory_mb: u32,
    pub disk_mb: u64,
    pub backchannel: Backchannel,
    /// Send line garbage before each back-channel handshake (robustness tests).
    pub line_noise: bool,
    /// Be the original port layer: a 512-bit RSA host key and `none` authentication.
    pub vic_compat: bool,
    /// Output channel format: `""` (ours) or `vic` (the original's, for a VIC VCH).
    pub log_format: String,
    /// Boot this ISO instead of the default (the boot benchmark's bare init).
    pub iso: Option<PathBuf>,
    /// Give the VM a raw virtio-serial port `org.tether.bench` on `<vm dir>/bench.sock`
    /// (QEMU dials it): the benchmarks' baseline channel.
    pub bench_port: bool,
    /// The accelerator (`--accel`; default `$VCH_ACCEL`, else `auto`).
    pub accel: crate::accel::Request,
    /// Raw extraConfig entries set after the composed config (tests use it to inject
    /// malformed keys).
    pub extra_config: Vec<(String, String)>,
    /// `-v` volumes. Volumes the image declares are added to these.
    pub volumes: Vec<VolumeSpec>,
    /// Networks, static address, published ports, NIC model. The default here is no NIC
    /// (what the tests and benchmarks have always booted); `vch run` asks for `bridge`
    /// unless told `--network none`.
    pub network: NetworkRequest,
    /// Host-side settings (labels, `--rm`, restart policy, stop timeout, ...).
    pub settings: state::Settings,
}

impl RunOptions {
    /// Defaults for an image and command.
    pub fn new(image: &str, command: &[&str]) -> RunOptions {
        RunOptions {
            spec: ContainerSpec {
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            image: image.into(),
            resolved: None,
            progress: false,
            timeout: Duration::from_secs(600),
            memory_mb: 256,
            disk_mb: 256,
            backchannel: Backchannel::Virtio,
            line_noise: false,
            vic_compat: false,
            log_format: String::new(),
            iso: None,
            bench_port: false,
            // A malformed `$VCH_ACCEL` is reported by `vch` itself; here it means `auto`.
            accel: crate::accel::Request::from_env().unwrap_or_default(),
            extra_config: Vec::new(),
            volumes: Vec::new(),
            network: NetworkRequest::default(),
            settings: state::Settings::default(),
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
    /// Damaged stretches on the output channel.
    pub damaged_records: u64,
    /// The VM's folder.
    pub dir: PathBuf,
    /// From QEMU's start to the first byte on the output channel (the entrypoint's first
    /// output), and to QEMU's exit.
    pub first_output: Option<Duration>,
    pub vm_lifetime: Duration,
}

/// Where the container's output goes as it arrives.
pub trait OutputHandler: Send {
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A VM whose folder is ready.
#[derive(Debug, Clone)]
pub struct Created {
    pub meta: Meta,
    pub dir: PathBuf,
}

/// Creates a VM: disk, config, metadata. Nothing runs yet.
pub fn create(state: &State, mut opts: RunOptions) -> Result<Created, VmError> {
    if opts.spec.command.is_empty() {
        return Err(VmError::NoCommand);
    }
    let iso = opts.iso.clone().unwrap_or_else(artifacts::iso);
    if !iso.is_file() {
        return Err(VmError::NoIso(iso));
    }
    if opts.spec.id.is_empty() {
        opts.spec.id = crate::records::new_id();
    }
    if opts.spec.name.is_empty() {
        opts.spec.name = opts.spec.id.chars().take(12).collect();
    }
    state.check_name(&opts.spec.name)?;
    // `--accel kvm` where KVM does not run a guest fails here, before anything is made
    // (the verdict is cached per host boot).
    if opts.accel == crate::accel::Request::Kvm {
        crate::accel::resolve(opts.accel, state.root())?;
    }

    // Everything the user asked for is checked before anything is made: the image, a
    // config the codec can carry, the volumes and the networks.
    let images = ImageStore::new(state.root());
    let resolved = match opts.resolved.take() {
        Some(r) => r,
        None => image::resolve(&images, &opts.image)?,
    };
    guestinfo::encode(&config::compose(&opts.spec))
        .map_err(|e| VmError::Config(format!("encoding the config failed: {e}")))?;
    let volumes = VolumeStore::new(state.root());
    let in_use = |name: &str| volume_user(state, name);
    let plan = volume::plan(
        &volumes,
        &opts.volumes,
        &declared_volumes(&resolved, &opts.image)?,
        &in_use,
    )?;
    let nics = network::attach(
        &NetworkStore::new(state.root()),
        &opts.network,
        &opts.spec.id,
        &|owner, net, ip| state.holds_address(owner, net, ip),
    )?;
    if let (Some(name), true) = (plan.local_nfs(), nics.is_empty()) {
        return Err(ComposeError::NfsNeedsNetwork(name.to_owned()).into());
    }

    let dir = state.vm_dir(&opts.spec.id);
    {
        // The name is taken under the state's lock: the folder with a first meta.json
        // reserves it against every other `vch` or daemon creating at the same time.
        let _lock = state.lock()?;
        state.check_name(&opts.spec.name)?;
        // The engine removes images under this lock: an image still here now stays until
        // this container is gone (its meta names it from here on).
        if let Source::Stored(id) = &resolved.source {
            images
                .resolve(id.as_str())
                .map_err(|_| ImageError::NotFound(opts.image.clone()))?;
        }
        state.save(&Meta {
            id: opts.spec.id.clone(),
            name: opts.spec.name.clone(),
            image: opts.image.clone(),
            image_id: resolved.id(),
            command: opts.spec.command.clone(),
            created: now_secs(),
            ..Default::default()
        })?;
    }
    let networks = NetworkStore::new(state.root());
    let attached = match volume::realize(&volumes, &plan) {
        Ok(a) => a,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            network::release(&networks, &nics, &opts.spec.id);
            return Err(e.into());
        }
    };
    match prepare(
        state,
        &opts,
        &images,
        &resolved,
        &dir,
        attached.clone(),
        nics.clone(),
    ) {
        Ok(meta) => Ok(Created { meta, dir }),
        Err(e) => {
            // Nothing was started: leave no half-made container behind.
            let _ = fs::remove_dir_all(&dir);
            volume::release(&volumes, &attached);
            network::release(&networks, &nics, &opts.spec.id);
            Err(e)
        }
    }
}

/// The running container that has the disk volume `name` attached, if any.
pub fn volume_user(state: &State, name: &str) -> Option<String> {
    state
        .list()
        .into_iter()
        .find(|m| {
            m.qemu_pid.map(state::pid_alive).unwrap_or(false)
                && m.volumes.iter().any(|v| v.volume.name == name)
        })
        .map(|m| m.name)
}

/// The volumes an image declares, each a clean absolute path: a store image's config
/// `Volumes`, or a directory's `DIR.image.json`.
fn declared_volumes(image: &Resolved, name: &str) -> Result<Vec<String>, VolumeError> {
    if let Source::Directory(_) = image.source {
        return volume::image_volumes(name);
    }
    let mut out: Vec<String> = Vec::new();
    let declared = image.config.as_ref().and_then(|c| c.volumes.as_ref());
    for dest in declared.into_iter().flat_map(|v| v.keys()) {
        let clean = volume::clean_dest(dest).ok_or_else(|| VolumeError::BadSpec {
            spec: dest.clone(),
            why: format!("declared by image {name}: not an absolute path other than /"),
        })?;
        if !out.contains(&clean) {
            out.push(clean);
        }
    }
    Ok(out)
}

fn prepare(
    state: &State,
    opts: &RunOptions,
    images: &ImageStore,
    resolved: &Resolved,
    dir: &Path,
    volumes: Vec<AttachedVolume>,
    nics: Vec<AttachedNic>,
) -> Result<Meta, VmError> {
    let terminal;
    let progress: &dyn crate::images::Progress = if opts.progress {
        terminal = Terminal::stderr();
        &terminal
    } else {
        &Silent
    };
    let disk = image::container_disk(images, resolved, dir, opts.disk_mb, progress)?;
    let mut cfg = config::compose(&opts.spec);
    config::add_attachments(&mut cfg, &volumes, &nics)?;
    cfg.key = crate::keys::host_key(opts.vic_compat).map_err(|e| VmError::Config(e.to_string()))?;
    cfg.tether.log_format = opts.log_format.clone();
    if !opts.vic_compat {
        cfg.tether.vch_client_key = crate::keys::client_key(state.root())
            .map_err(|e| VmError::Config(e.to_string()))?
            .1;
    }
    let store =
        FileStore::open(dir.join("config.vmx")).map_err(|e| VmError::Config(e.to_string()))?;
    guestinfo::store::write_config(&store, &cfg).map_err(|e| VmError::Config(e.to_string()))?;
    if !opts.extra_config.is_empty() {
        store
            .set_all(&opts.extra_config)
            .map_err(|e| VmError::Config(e.to_string()))?;
    }
    let meta = Meta {
        id: opts.spec.id.clone(),
        name: opts.spec.name.clone(),
        image: opts.image.clone(),
        image_id: resolved.id(),
        command: opts.spec.command.clone(),
        created: now_secs(),
        qemu_pid: None,
        keeper_pid: None,
        disk: disk.path.display().to_string(),
        disk_format: disk.format.to_owned(),
        memory_mb: opts.memory_mb,
        timeout_secs: opts.timeout.as_secs(),
        backchannel: format!(
            "{}{}",
            opts.backchannel.describe(),
            if opts.line_noise { "+noise" } else { "" }
        ),
        log_format: opts.log_format.clone(),
        iso: opts
            .iso
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        bench_port: opts.bench_port,
        accel: opts.accel.as_str().to_owned(),
        accel_used: String::new(),
        volumes,
        nics,
        settings: opts.settings.clone(),
        starts: 0,
        timed_out: false,
        attach_port: None,
        qemu_started: 0,
    };
    state.save(&meta)?;
    Ok(meta)
}

/// Creates and runs a VM in the foreground until it powers off, streaming its output.
/// Blocking: runs its own runtime.
pub fn run(
    state: &State,
    opts: RunOptions,
    out: &mut dyn OutputHandler,
) -> Result<RunOutcome, VmError> {
    let created = create(state, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("start runtime", &created.dir))?;
    rt.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let keeper = tokio::spawn(keep(state.clone(), created, Some(tx), None));
        while let Some(item) = rx.recv().await {
            if let Item::Record(r) = item {
                if let Body::Data(d) = r.body {
                    out.output(r.stream, &d);
                }
            }
        }
        keeper
            .await
            .map_err(|e| VmError::Config(format!("keeper task: {e}")))?
    })
}

/// Hooks into a running keeper (for `vch run -it`).
#[derive(Debug, Clone)]
pub struct Live {
    pub portlayer: Arc<PortLayer>,
    pub guestinfo: HostServer,
}

/// Runs a created VM until QEMU exits (or the timeout kills it). `items` receives the
/// primary session's output records as they arrive; `live` receives the keeper's handles
/// once the VM is starting.
///
/// A keeper that finds the VM's QEMU already running (its keeper was killed) adopts it
/// instead of starting another: it serves the same channels again (QEMU redials the
/// guestinfo socket and the back-channel port), keeps the hard timeout and does the
/// clean-up when QEMU exits. One keeper per VM at a time (`keeper.lock`).
pub async fn keep(
    state: State,
    created: Created,
    items: Option<mpsc::UnboundedSender<Item>>,
    live: Option<tokio::sync::oneshot::Sender<Live>>,
) -> Result<RunOutcome, VmError> {
    keep_as(state, created, items, live, false).await
}

/// Runs a container's VM for maintenance (files copied in or out of a stopped container):
/// `created.dir` is a folder of its own with a config whose primary session is held, and the
/// container's metadata is left as it is (the container stays stopped).
pub async fn keep_for_maintenance(
    state: State,
    created: Created,
    live: tokio::sync::oneshot::Sender<Live>,
) -> Result<RunOutcome, VmError> {
    keep_as(state, created, None, Some(live), true).await
}

async fn keep_as(
    state: State,
    created: Created,
    items: Option<mpsc::UnboundedSender<Item>>,
    live: Option<tokio::sync::oneshot::Sender<Live>>,
    maintenance: bool,
) -> Result<RunOutcome, VmError> {
    let Created { mut meta, dir } = created;
    let _keeper_lock = match state::flock(&dir.join("keeper.lock"), false) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            return Err(VmError::Usage(format!(
                "container {} already has a keeper",
                meta.name
            )))
        }
        Err(e) => return Err(io_err("lock", &dir)(e)),
    };
    // Read again under the lock: a keeper that ran meanwhile may have changed it. A
    // maintenance VM's metadata is its own (held, without networks) and is never adopted.
    if !maintenance {
        if let Ok(m) = state.meta(&meta.id) {
            meta = m;
        }
    }
    let adopt = !maintenance && state::qemu_alive(&meta);
    let iso = if meta.iso.is_empty() {
        artifacts::iso()
    } else {
        PathBuf::from(&meta.iso)
    };
    let store = Arc::new(
        FileStore::open(dir.join("config.vmx")).map_err(|e| VmError::Config(e.to_string()))?,
    );
    let store_dyn: Arc<dyn Store> = store.clone();
    let guestinfo = HostServer::new(store_dyn.clone());
    guestinfo.set_dynamic(Arc::new(host_keys));
    let backchannel = Backchannel::parse(&meta.backchannel)?;
    // Decided at every start (the probe's verdict is cached per host boot): a container
    // made on a host without KVM gets it once it runs where KVM works.
    let accel = {
        let (req, root) = (
            crate::accel::Request::parse(&meta.accel)?,
            state.root().to_owned(),
        );
        tokio::task::spawn_blocking(move || crate::accel::resolve(req, &root))
            .await
            .map_err(|e| VmError::Config(format!("accelerator probe: {e}")))??
    };
    tracing::debug!(id = %meta.id, accel = accel.as_str(), asked = %meta.accel, "accelerator");
    meta.accel_used = accel.as_str().to_owned();

    let sock = |n: &str| dir.join(n);
    for n in ["gi.sock", "ctl.sock"] {
        let _ = fs::remove_file(sock(n));
    }
    if !adopt {
        let _ = fs::remove_file(sock("qmp.sock"));
    }
    let gi_listener = crate::private::bind_unix(&sock("gi.sock"))
        .and_then(|l| l.set_nonblocking(false).map(|()| l))
        .map_err(io_err("listen", &dir))?;
    let client_key = crate::keys::client_key(state.root())
        .map_err(|e| VmError::Config(e.to_string()))?
        .0;
    let portlayer = PortLayer::new(meta.backchannel.ends_with("+noise"), client_key);
    let attach_port = match &backchannel {
        Backchannel::External(_) => None,
        _ => {
            // An adopting keeper must listen where the running QEMU dials.
            let want = if adopt {
                meta.attach_port.unwrap_or(0)
            } else {
                0
            };
            let l = tokio::net::TcpListener::bind(("127.0.0.1", want))
                .await
                .map_err(io_err("listen", &dir))?;
            let port = l.local_addr().map_err(io_err("listen", &dir))?.port();
            tokio::spawn(portlayer.clone().serve(l));
            Some(port)
        }
    };

    // The networks' segments, held while the VM runs; the first network publishes the
    // ports (`-p`) at the container's address (already done when adopting).
    let segments = {
        let (root, nics) = (state.root().to_owned(), meta.nics.clone());
        tokio::task::spawn_blocking(move || crate::netd::ensure_all(&root, &nics))
            .await
            .map_err(|e| VmError::Config(format!("network set-up: {e}")))??
    };
    let nic_args = nic_args(&meta, &segments)?;
    let published = if adopt {
        match (meta.nics.first(), segments.first()) {
            (Some(nic), Some(hold)) if !nic.ports.is_empty() => Some(hold.segment.clone()),
            _ => None,
        }
    } else {
        publish(&meta, &segments).await?
    };
    let nics = Arc::new(crate::hotplug::Nics::new(
        state.root(),
        &dir,
        &meta.nics,
        segments,
    ));
    let log_path = dir.join("output.log");
    // Output written before this boot (an earlier start of the same container) is not
    // this run's.
    let log_start = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let mut child = None;
    if adopt {
        tracing::info!(id = %meta.id, pid = ?meta.qemu_pid, "adopting the running VM");
    } else {
        let mut cmd = qemu_command(
            &dir,
            &iso,
            &meta,
            accel,
            &backchannel,
            attach_port,
            &nic_args,
        );
        if maintenance {
            // A maintenance VM belongs to the command that copies: it ends with it, also when
            // that command is killed.
            cmd.kill_on_drop(true);
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of
            // the parent; it runs in the child between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let c = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                withdraw(&meta.id, published).await;
                return Err(VmError::Qemu(qemu_binary(), e));
            }
        };
        // In memory also for a maintenance VM (its hard timeout counts from here), saved
        // only for the container's own run: a copy leaves the container's state as it was.
        meta.qemu_pid = c.id();
        meta.qemu_started = now_secs();
        meta.starts += 1;
        meta.timed_out = false;
        meta.attach_port = attach_port;
        child = Some(c);
    }
    let started_at = tokio::time::Instant::now();
    meta.keeper_pid = Some(std::process::id());
    if !maintenance {
        state.save(&meta)?;
    }

    // guestinfo: QEMU (re)connects once it is listening; serve it on a thread (the server is
    // blocking). QEMU redials after a keeper that served it is gone, so later connections
    // are served too.
    let gi = guestinfo.clone();
    std::thread::spawn(move || {
        for stream in gi_listener.incoming() {
            let Ok(stream) = stream else { break };
            let _ = gi.serve_stream(stream);
        }
    });
    let ctl = crate::private::bind_tokio(&sock("ctl.sock")).map_err(io_err("listen", &dir))?;
    let keeper = control::Keeper {
        id: meta.id.clone(),
        store: store_dyn,
        guestinfo: guestinfo.clone(),
        portlayer: portlayer.clone(),
        nics: nics.clone(),
    };
    let ctl_task = tokio::spawn(control::serve(ctl, keeper));
    if let Some(live) = live {
        let _ = live.send(Live {
            portlayer: portlayer.clone(),
            guestinfo: guestinfo.clone(),
        });
    }

    // QEMU appends the output channel to output.log itself (a file-backed port, as the
    // original's output serial port is a file on the datastore): nothing is lost while no
    // keeper runs. The keeper follows the file for whoever streams the output.
    let primary = meta.id.clone();
    let vic_format = meta.log_format == "vic";
    let (qemu_gone, gone_rx) = tokio::sync::watch::channel(false);
    let output_task = tokio::spawn(async move {
        let r = crate::logs::follow(
            &log_path,
            log_start,
            gone_rx,
            &primary,
            vic_format,
            items.as_ref(),
        )
        .await;
        (
            r.damaged,
            r.first.map(|t| t.saturating_duration_since(started_at)),
        )
    });

    let elapsed = u64::try_from(now_secs().saturating_sub(meta.qemu_started)).unwrap_or(0);
    let timeout = Duration::from_secs(meta.timeout_secs.max(1).saturating_sub(elapsed).max(1));
    let timed_out = match child.as_mut() {
        Some(child) => tokio::select! {
            _ = child.wait() => false,
            _ = tokio::time::sleep(timeout) => {
                let _ = child.kill().await;
                true
            }
        },
        None => {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if !state::qemu_alive(&meta) {
                    break false;
                }
                if tokio::time::Instant::now() >= deadline {
                    if let Some(pid) = meta.qemu_pid.and_then(|p| i32::try_from(p).ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    break true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let vm_lifetime = started_at.elapsed();
    // QEMU is gone, so the log is complete: the follower reads the rest and ends.
    let _ = qemu_gone.send(true);
    let (damaged, first_output) = tokio::time::timeout(Duration::from_secs(5), output_task)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or((0, None));
    ctl_task.abort();
    withdraw(&meta.id, published).await;
    nics.release_all();
    for n in ["gi.sock", "ctl.sock", "bench.sock", "qmp.sock"] {
        let _ = fs::remove_file(sock(n));
    }
    // What others changed while the VM ran (a network connected, a rename) stays: the
    // metadata is read again rather than written from this copy.
    if !maintenance {
        meta = state.meta(&meta.id).unwrap_or(meta);
        meta.qemu_pid = None;
        meta.keeper_pid = None;
        meta.attach_port = None;
        meta.timed_out = timed_out;
        state.save(&meta)?;
    }

    let (started, exit_code) = match load_config(&dir) {
        Ok(cfg) if cfg.sessions.contains_key(&meta.id) => session_result(&cfg, &meta.id),
        // A config the codec refuses (the malformed-key scenarios), or one whose session
        // list lost the container's own, still carries the tether's verdict in plain keys.
        _ => raw_session_result(&*store, &meta.id),
    };
    Ok(RunOutcome {
        id: meta.id.clone(),
        started,
        exit_code,
        timed_out,
        damaged_records: damaged,
        dir,
        first_output,
        vm_lifetime,
    })
}

/// What the guest gets afresh with each config read, never stored: this machine's clock
/// (the tether sets the guest's from it) and 32 random bytes that seed its CRNG.
fn host_keys() -> Vec<(String, String)> {
    use rand_core::RngCore;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut keys = vec![(
        guestinfo::transport::HOST_TIME_KEY.to_owned(),
        now.to_string(),
    )];
    // `VCH_NO_ENTROPY_SEED` (any value) leaves the seed out: for measuring what it changes.
    if std::env::var_os("VCH_NO_ENTROPY_SEED").is_none() {
        let mut seed = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut seed);
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        keys.push((guestinfo::transport::ENTROPY_SEED_KEY.to_owned(), hex));
    }
    keys
}

/// The primary session's `started` text and exit status from a config.
pub fn session_result(cfg: &ContainerConfig, id: &str) -> (String, i64) {
    match cfg.sessions.get(id) {
        Some(s) => (s.started.clone(), s.exit_status),
        None => (String::new(), 0),
    }
}

/// `started` and `status` of a session read straight from the store's keys.
pub fn raw_session_result(store: &dyn Store, id: &str) -> (String, i64) {
    let get = |leaf: &str| {
        store
            .get(&format!("guestinfo.vice..sessions|{id}.{leaf}"))
            .ok()
            .flatten()
            .map(|v| if v == "<nil>" { String::new() } else { v })
            .unwrap_or_default()
    };
    (get("started"), get("status").parse().unwrap_or(0))
}

/// Reads a VM's current config from its store, including the fields the tether writes back.
pub fn load_config(dir: &Path) -> Result<ContainerConfig, VmError> {
    let store =
        FileStore::open(dir.join("config.vmx")).map_err(|e| VmError::Config(e.to_string()))?;
    guestinfo::store::read_config(&store).map_err(|e| VmError::Config(e.to_string()))
}

/// The QEMU binary: `$QEMU`, else `qemu-system-x86_64`.
pub fn qemu_binary() -> String {
    std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// QEMU arguments for a VM's NICs (see [`network`] for the layout): each NIC on the
/// segment of its network (`segments`, in NIC order, from [`crate::netd::ensure_all`]).
pub fn nic_args(meta: &Meta, segments: &[crate::netd::Hold]) -> Result<Vec<String>, NetworkError> {
    let devices = meta
        .nics
        .iter()
        .zip(segments)
        .map(|(n, h)| n.device(&h.segment.switch_sock()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(network::qemu_nic_args(
        &devices,
        &network::spare_slots(&meta.nics),
    ))
}

/// Publishes the container's ports (`-p`, on its first network) at its address; returns
/// the segment to withdraw them from when the VM is gone.
async fn publish(
    meta: &Meta,
    segments: &[crate::netd::Hold],
) -> Result<Option<crate::netd::Segment>, VmError> {
    let (Some(nic), Some(hold)) = (meta.nics.first(), segments.first()) else {
        return Ok(None);
    };
    if nic.ports.is_empty() {
        return Ok(None);
    }
    let (segment, id, guest, ports) = (
        hold.segment.clone(),
        meta.id.clone(),
        nic.guest_address(),
        nic.ports.clone(),
    );
    tokio::task::spawn_blocking(move || segment.forward(&id, guest, &ports).map(|()| Some(segment)))
        .await
        .map_err(|e| VmError::Config(format!("publishing ports: {e}")))?
        .map_err(VmError::from)
}

/// Withdraws what [`publish`] published (a netd that is gone has nothing to withdraw).
async fn withdraw(id: &str, published: Option<crate::netd::Segment>) {
    let Some(segment) = published else { return };
    let id = id.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = segment.unforward(&id) {
            tracing::debug!(error = %e, "withdrawing published ports");
        }
    })
    .await;
}

fn qemu_command(
    dir: &Path,
    iso: &Path,
    meta: &Meta,
    accel: crate::accel::Accel,
    backchannel: &Backchannel,
    attach_port: Option<u16>,
    nic_args: &[String],
) -> tokio::process::Command {
    let d = |name: &str| dir.join(name).display().to_string();
    let mut cmd = tokio::process::Command::new(qemu_binary());
    cmd.args(["-machine", "q35"])
        .args(accel.qemu_args())
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        // QEMU's monitor, for NICs added and removed while the VM runs (`network connect`).
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", d("qmp.sock")),
        ])
        .args([
            "-m",
            &meta.memory_mb.to_string(),
            "-smp",
            &meta.settings.cpus.max(1).to_string(),
        ])
        // The NICs' root ports take fixed root-bus slots: before any device QEMU places itself.
        .args(nic_args)
        .args(if meta.settings.no_rng {
            &[][..]
        } else {
            &["-device", "virtio-rng-pci"][..]
        })
        .args([
            "-drive",
            &format!(
                "file={},media=cdrom,readonly=on,if=ide,index=2",
                iso.display()
            ),
            "-boot",
            "d",
        ])
        .args([
            "-drive",
            &format!(
                "file={},format={},if=none,id=root,cache=writeback",
                meta.disk, meta.disk_format
            ),
        ])
        .args(["-device", "virtio-blk-pci,drive=root"]);
    // Volumes: one virtio disk each, like the port layer's independent-persistent disks. The
    // guest finds them by label; writeback caching is safe because the guest flushes
    // (ext4 journal commits, unmount at shutdown) and QEMU writes its cache out at exit.
    for (i, v) in meta.volumes.iter().enumerate() {
        if let Some(disk) = &v.disk {
            cmd.args([
                "-drive",
                &format!(
                    "file={},format=raw,if=none,id=vol{i},cache=writeback",
                    disk.display()
                ),
            ])
            .args(["-device", &format!("virtio-blk-pci,drive=vol{i}")]);
        }
    }
    // The back-channel's chardev: QEMU dials the port layer and redials after a drop, as
    // a vSphere network serial port does.
    let attach_chardev = match (backchannel, attach_port) {
        (Backchannel::External(hp), _) => {
            let (host, port) = hp.rsplit_once(':').unwrap_or((hp.as_str(), "2377"));
            Some(format!(
                "socket,id=att,host={host},port={port},server=off,reconnect=1"
            ))
        }
        (_, Some(port)) => Some(format!(
            "socket,id=att,host=127.0.0.1,port={port},server=off,reconnect=1,nodelay=on"
        )),
        _ => None,
    };
    // ttyS0 is the back-channel on vSphere (here only in UART mode); ttyS1 the kernel console.
    match (backchannel, &attach_chardev) {
        (Backchannel::Uart, Some(c)) => {
            cmd.args(["-chardev", c]).args(["-serial", "chardev:att"]);
        }
        _ => {
            cmd.args(["-serial", "null"]);
        }
    }
    cmd.args(["-serial", &format!("file:{}", d("console.log"))])
        .args(["-device", "virtio-serial-pci,max_ports=8"])
        // QEMU redials the guestinfo socket after a drop (a keeper killed and another
        // adopting the VM).
        .args([
            "-chardev",
            &format!("socket,id=gi,path={},server=off,reconnect=1", d("gi.sock")),
        ])
        .args([
            "-device",
            &format!("virtserialport,chardev=gi,name={}", port::GUESTINFO),
        ])
        .args([
            "-chardev",
            &format!("file,id=dbg,path={}", d("tether.debug")),
        ])
        .args([
            "-device",
            &format!("virtserialport,chardev=dbg,name={}", port::DEBUG),
        ])
        // The output channel goes straight to output.log (appended across starts): it does
        // not depend on the keeper being there.
        .args([
            "-chardev",
            &format!("file,id=out,path={},append=on", d("output.log")),
        ])
        .args([
            "-device",
            &format!("virtserialport,chardev=out,name={}", port::OUTPUT),
        ]);
    if meta.bench_port {
        cmd.args([
            "-chardev",
            &format!("socket,id=bench,path={},server=off", d("bench.sock")),
        ])
        .args([
            "-device",
            "virtserialport,chardev=bench,name=org.tether.bench",
        ]);
    }
    if let (Backchannel::Virtio | Backchannel::External(_), Some(c)) =
        (backchannel, &attach_chardev)
    {
        cmd.args(["-chardev", c]).args([
            "-device",
            &format!("virtserialport,chardev=att,name={}", port::ATTACH),
        ]);
    }
    let log = File::create(dir.join("qemu.log")).ok();
    let log2 = log.as_ref().and_then(|l| l.try_clone().ok());
    cmd.stdin(std::process::Stdio::null())
        .stdout(
            log.map(std::process::Stdio::from)
                .unwrap_or_else(std::process::Stdio::null),
        )
        .stderr(
            log2.map(std::process::Stdio::from)
                .unwrap_or_else(std::process::Stdio::null),
        )
        .kill_on_drop(true);
    // SAFETY: umask is async-signal-safe and touches nothing but the child's own mask.
    // QEMU's monitor socket (full control of the VM) and the files it creates (output,
    // console, debug log) are the owner's only.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            Ok(())
        });
    }
    cmd
}
