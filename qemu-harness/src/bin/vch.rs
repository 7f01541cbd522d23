//! `vch`: a docker-like command for container VMs under QEMU.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;

use iolog::Stream;
use qemu_harness::config::ContainerSpec;
use qemu_harness::engine::{
    self, ContainerStatus, ContainerView, CreateRequest, DetachKeys, Ended, Engine, EngineError,
    ExecCreate, ListOptions, LogItem, LogOptions, RemoveOptions, WaitCondition,
};
use qemu_harness::images;
use qemu_harness::network::{self, NetworkRequest};
use qemu_harness::state::{self, State};
use qemu_harness::vm::{self, Passthrough, RunOptions};
use qemu_harness::volume;
use qemu_harness::{client, inspect, logs};

#[derive(Debug, Parser)]
#[command(
    name = "vch",
    about = "Run containers as VMs under QEMU, the way a VIC VCH runs them on vSphere"
)]
struct Cli {
    /// State directory (default: $VCH_STATE or ~/.local/state/tether-vch)
    #[arg(long, global = true)]
    state: Option<std::path::PathBuf>,
    /// Log what vch does to stderr (RUST_LOG filters override the level)
    #[arg(short = 'D', long, global = true)]
    debug: bool,
    /// Accelerator of the VMs this command (or daemon) creates: auto (KVM when a probe
    /// shows it runs a guest here, else TCG), kvm (an error where it does not) or tcg
    /// [default: $VCH_ACCEL, else auto]
    #[arg(long, global = true, value_name = "auto|kvm|tcg")]
    accel: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per invocation: the size of the `run` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a command in a new container VM
    Run {
        /// Assign a name to the container
        #[arg(long)]
        name: Option<String>,
        /// Run in the background and print the container ID
        #[arg(short = 'd', long)]
        detach: bool,
        /// Keep stdin open and send it to the container
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a pseudo-terminal
        #[arg(short = 't', long)]
        tty: bool,
        /// Set environment variables
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory inside the container
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// Username or UID (format: <name|uid>[:<group|gid>])
        #[arg(short = 'u', long = "user")]
        user: Option<String>,
        /// Container host name
        #[arg(long)]
        hostname: Option<String>,
        /// Restart policy: "no" or "always" (relaunch the process when it exits)
        #[arg(long, default_value = "no")]
        restart: String,
        /// Remove the container when it exits
        #[arg(long)]
        rm: bool,
        /// Overwrite the image's entrypoint (the command's first word)
        #[arg(long)]
        entrypoint: Option<String>,
        /// Signal that stops the container [default: TERM]
        #[arg(long = "stop-signal")]
        stop_signal: Option<String>,
        /// Seconds between the stop signal and SIGKILL [default: 10]
        #[arg(long = "stop-timeout")]
        stop_timeout: Option<u64>,
        /// Set metadata on the container (KEY=VALUE)
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        /// Nameserver for the container (repeatable) [default: the network's]
        #[arg(long)]
        dns: Vec<std::net::Ipv4Addr>,
        /// Virtual CPUs of the VM
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Where the VM's back-channel goes: virtio (default), uart (the 16550 serial port,
        /// as on vSphere) or tcp://HOST:PORT (an external port layer)
        #[arg(long = "vch", default_value = "virtio")]
        backchannel: String,
        /// Be the original VIC port layer on the back-channel: a 512-bit RSA host key
        /// (ssh-rsa/SHA-1) and `none` authentication
        #[arg(long)]
        vic_compat: bool,
        /// Output log format: "tether" (stream-tagged, checked records) or "vic" (the
        /// original's, for a VIC VCH that reads output.log itself)
        #[arg(long, default_value = "tether")]
        log_format: String,
        /// Kill the VM if it runs longer than this many seconds
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// VM memory in MiB
        #[arg(long, default_value_t = 256)]
        memory: u32,
        /// No virtio-rng device in the VM (the tether seeds the guest's CRNG from the host)
        #[arg(long)]
        no_rng: bool,
        /// Mount a volume: NAME:/PATH[:ro|rw][,nocopy] (created if missing), or /PATH for a
        /// new anonymous volume
        #[arg(short = 'v', long = "volume", value_name = "SPEC")]
        volumes: Vec<String>,
        /// Connect to a network (repeatable; the first carries the default route); "none"
        /// for no NIC [default: bridge]
        #[arg(long = "network", alias = "net", value_name = "NAME")]
        networks: Vec<String>,
        /// Static IPv4 address on the first network (default: the next free one)
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// Another name other containers on the first network reach this one by
        /// (repeatable; user-defined networks only)
        #[arg(long = "network-alias", value_name = "NAME")]
        network_aliases: Vec<String>,
        /// Publish a container port on this machine: [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]
        /// (IP defaults to 127.0.0.1)
        #[arg(short = 'p', long = "publish", value_name = "SPEC")]
        publish: Vec<String>,
        /// NIC model: vmxnet3 (vSphere's; the tether finds it at <device>/net/) or virtio
        /// (its interface is one level deeper, <device>/virtioN/net/)
        #[arg(long = "nic-model", default_value = "vmxnet3")]
        nic_model: String,
        /// The image: NAME[:TAG], an image ID or unique ID prefix (vch images), or a root
        /// filesystem directory (a path)
        image: String,
        /// Command and arguments [default: the image's]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Load images from a `docker save` archive or an OCI image layout (tar, plain or
    /// compressed)
    Load {
        /// Read from this file instead of stdin
        #[arg(short = 'i', long = "input")]
        input: Option<std::path::PathBuf>,
        /// Show no progress
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Make an image of a root filesystem tarball (plain or compressed; "-" reads stdin)
    Import {
        /// Apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
        /// ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR)
        #[arg(short = 'c', long = "change")]
        changes: Vec<String>,
        /// Set the commit message of the image
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// The tarball, or "-" for stdin
        file: String,
        /// NAME[:TAG] of the new image
        reference: Option<String>,
    },
    /// List images
    Images {
        /// Show all images (there are no intermediate ones here)
        #[arg(short = 'a', long)]
        all: bool,
        /// Only show image IDs
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Show full image IDs
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        /// Only images of this repository (NAME or NAME:TAG, * matches)
        reference: Option<String>,
    },
    /// Manage images
    #[command(subcommand)]
    Image(ImageCmd),
    /// Remove images
    Rmi {
        /// Untag an image a stopped container uses, or delete an image with several
        /// repositories, anyway
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give an image another name: SOURCE[:TAG] TARGET[:TAG]
    Tag { source: String, target: String },
    /// Write images to a tar archive (`docker save`; also an OCI image layout)
    Save {
        /// Write to this file instead of stdout
        #[arg(short = 'o', long = "output")]
        output: Option<std::path::PathBuf>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Get the built-in busybox image back (there is no registry to pull anything else from)
    Pull { name: String },
    /// Run a command in a running container
    Exec {
        /// Keep stdin open and send it to the command
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a pseudo-terminal
        #[arg(short = 't', long)]
        tty: bool,
        /// Set environment variables
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Username or UID (format: <name|uid>[:<group|gid>])
        #[arg(short = 'u', long = "user")]
        user: Option<String>,
        /// Working directory inside the container
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// Name or ID
        name: String,
        /// Command and arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to a running container's primary process (detach with ctrl-p ctrl-q)
    Attach {
        /// Name or ID
        name: String,
    },
    /// Start stopped containers
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Restart containers
    Restart {
        /// Seconds to wait for the stop before killing
        #[arg(short = 't', long)]
        time: Option<u64>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Rename a container
    Rename { name: String, new_name: String },
    /// Block until containers stop, then print their exit codes
    Wait {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Send a signal to a container's primary process
    Kill {
        /// Signal (name or number)
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        names: Vec<String>,
    },
    /// Stop containers: the stop signal, then SIGKILL after the grace period
    Stop {
        /// Seconds to wait before killing [default: the container's stop timeout, else 10]
        #[arg(short = 't', long)]
        time: Option<u64>,
        names: Vec<String>,
    },
    /// Drops a running VM's back-channel connection, as a VCH restart would (it reconnects)
    #[command(hide = true, name = "debug-drop-backchannel")]
    DropBackchannel { name: String },
    /// Serve the Docker Engine API, so that the docker client drives container VMs
    /// (DOCKER_HOST=unix://STATE/docker.sock)
    Daemon {
        /// Where to listen: unix:///PATH or tcp://HOST:PORT (repeatable)
        /// [default: unix://STATE/docker.sock]
        #[arg(short = 'H', long = "host")]
        hosts: Vec<String>,
        /// Require TLS with client certificates signed by --tlscacert (needed for TCP on an
        /// address other than loopback)
        #[arg(long)]
        tlsverify: bool,
        /// CA certificate that signs the clients' certificates
        #[arg(long)]
        tlscacert: Option<std::path::PathBuf>,
        /// The daemon's certificate
        #[arg(long)]
        tlscert: Option<std::path::PathBuf>,
        /// The daemon's private key
        #[arg(long)]
        tlskey: Option<std::path::PathBuf>,
        /// Hard limit on each container VM's life, in seconds
        #[arg(long, default_value_t = 3600)]
        container_timeout: u64,
    },
    /// Keeps a VM running (started by `run -d` and `run -it`; not for direct use)
    #[command(hide = true)]
    Keeper { id: String },
    /// Runs a network's shared segment: switch, gateway, DNS (started with the first
    /// container on the network; not for direct use)
    #[command(hide = true)]
    Netd { dir: std::path::PathBuf },
    /// Fetch the logs of a container
    Logs {
        /// Follow log output until the container stops
        #[arg(short = 'f', long)]
        follow: bool,
        /// Show timestamps
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Show logs since a time (RFC 3339, Unix seconds) or for a duration ago (10m, 2h)
        #[arg(long)]
        since: Option<String>,
        /// Show logs before a time (same forms as --since)
        #[arg(long)]
        until: Option<String>,
        /// Number of lines to show from the end of the logs ("all" for every line)
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Show only stdout
        #[arg(long)]
        stdout: bool,
        /// Show only stderr
        #[arg(long)]
        stderr: bool,
        /// Name or ID
        name: String,
    },
    /// Copy files between a container and this machine (a running or a stopped container):
    /// CONTAINER:SRC DEST, SRC CONTAINER:DEST, `-` for a tar stream on stdin or stdout
    Cp {
        /// Keep the owners (uid:gid) of the files copied in
        #[arg(short = 'a', long)]
        archive: bool,
        /// Follow a symlink given as the source
        #[arg(short = 'L', long)]
        follow_link: bool,
        src: String,
        dest: String,
    },
    /// Show the processes of a running container (ps columns: -ef, the default, or aux)
    Top {
        /// Name or ID
        name: String,
        /// ps options: -ef or aux
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Show containers' resource use (CPU, memory, network, block I/O, PIDs)
    Stats {
        /// Print one sample and end
        #[arg(long)]
        no_stream: bool,
        /// Names or IDs
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show a container's configuration and state as JSON
    Inspect {
        /// Name or ID
        name: String,
    },
    /// List containers
    Ps {
        /// Show all containers (default shows just running)
        #[arg(short = 'a', long)]
        all: bool,
        /// Only display container IDs
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Remove one or more containers (and their anonymous volumes)
    Rm {
        /// Force the removal of a running container
        #[arg(short = 'f', long)]
        force: bool,
        names: Vec<String>,
    },
    /// Manage volumes
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Manage networks
    #[command(subcommand)]
    Network(NetworkCmd),
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Show images as JSON (docker's fields)
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List images
    #[command(alias = "list")]
    Ls {
        /// Only show image IDs
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Show full image IDs
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        reference: Option<String>,
    },
    /// Remove images
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// Create a volume: an ext4 disk, or an NFS export with --nfs
    Create {
        /// Disk size: a number with K, M, G or T (a bare number is MiB) [default: 1G]
        #[arg(long)]
        size: Option<String>,
        /// ext4 label (at most 16 characters) [default: the port layer's, from the name]
        #[arg(long)]
        label: Option<String>,
        /// An NFS export HOST:/PATH instead of a disk (localhost = this machine)
        #[arg(long, value_name = "HOST:/PATH")]
        nfs: Option<String>,
        /// NFS mount options [default: the VIC port layer's NFSv3 options]
        #[arg(long = "nfs-opts", value_name = "OPTIONS")]
        nfs_opts: Option<String>,
        name: String,
    },
    /// List volumes
    Ls {
        /// Only display volume names
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Remove volumes (never one a running container uses)
    Rm {
        /// Also remove volumes that stopped containers refer to
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show volumes as JSON
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// Create a network (one shared segment: its containers reach each other by name)
    Create {
        /// Subnet in CIDR form [default: the next free /16 of 172.16.0.0/12]
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway (the address of this machine as containers see it) [default: the
        /// subnet's first address]
        #[arg(long)]
        gateway: Option<std::net::Ipv4Addr>,
        /// Nameserver for containers (repeatable) [default: the gateway, which resolves
        /// the network's container names and forwards the rest]
        #[arg(long)]
        dns: Vec<std::net::Ipv4Addr>,
        /// Route CIDR via this network's gateway when it is not the default one (repeatable)
        #[arg(long)]
        route: Vec<String>,
        /// Network type as the tether sees it: bridge or external (a VIC container network)
        #[arg(long = "type", default_value = "bridge")]
        kind: String,
        /// Firewall trust level of an external network: published (default), open, closed,
        /// outbound, peers
        #[arg(long)]
        trust: Option<String>,
        name: String,
    },
    /// List networks
    Ls {
        /// Only display network names
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Remove networks (never one a running container uses)
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show networks as JSON
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container to a network (a running one gets a NIC hot-added)
    Connect {
        /// Another name the container has on the network (repeatable)
        #[arg(long = "alias", value_name = "NAME")]
        aliases: Vec<String>,
        /// Its IPv4 address on the network [default: the next free one]
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network (a running one has its NIC hot-removed)
    Disconnect { network: String, container: String },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // docker's code for a usage error; help and version are no error.
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(125),
            };
        }
    };
    if !matches!(
        cli.cmd,
        Cmd::Daemon { .. } | Cmd::Keeper { .. } | Cmd::Netd { .. }
    ) {
        // A command whose reader went away (`vch inspect x | head`) ends quietly, as Unix
        // tools do. Not the daemon and the keeper: they write to sockets whose peers may
        // vanish at any time.
        // SAFETY: setting a signal's disposition to the default is async-signal-safe and
        // happens before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vch: {e:#}");
            // docker's code for "the daemon could not run the container"
            ExitCode::from(125)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn exit_code(code: i64) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// The harness's own log on stderr: `--debug`, `RUST_LOG`, or warnings only (info for the
/// daemon, whose log is its output).
fn init_log(debug: bool, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "debug"
    } else if daemon {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    init_log(
        cli.debug,
        matches!(cli.cmd, Cmd::Daemon { .. } | Cmd::Netd { .. }),
    );
    if let Cmd::Netd { dir } = &cli.cmd {
        // One thread and no runtime: libslirp is driven from a single poll loop.
        let root = cli.state.clone().unwrap_or_else(State::default_dir);
        qemu_harness::netd::run(&root, dir)?;
        return Ok(ExitCode::SUCCESS);
    }
    // `--accel` travels as `$VCH_ACCEL`, which every container creation reads (the CLI's
    // and the daemon's alike). Set before any thread is started.
    if let Some(a) = &cli.accel {
        std::env::set_var(qemu_harness::accel::ENV, a);
    }
    qemu_harness::accel::Request::from_env()?;
    let state = State::open(cli.state.clone().unwrap_or_else(State::default_dir))?;
    let exe = std::env::current_exe().context("locate vch")?;
    let rt = runtime()?;
    let engine = {
        let _guard = rt.enter();
        Engine::new(state.clone(), exe)
    };
    let code = rt.block_on(command(&engine, cli.cmd));
    // Whatever still waits (a stdin reader blocked on the terminal) must not hold the exit.
    rt.shutdown_background();
    code
}

async fn command(engine: &Engine, cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Run {
            name,
            detach,
            interactive,
            tty,
            env,
            workdir,
            user,
            hostname,
            restart,
            rm,
            entrypoint,
            stop_signal,
            stop_timeout,
            labels,
            dns,
            cpus,
            backchannel,
            vic_compat,
            log_format,
            timeout,
            memory,
            no_rng,
            volumes,
            networks,
            ip,
            network_aliases,
            publish,
            nic_model,
            image,
            command,
        } => {
            let mut opts = RunOptions::new(&image, &[]);
            // Every -v and -p is checked before anything is made.
            opts.volumes = volumes
                .iter()
                .map(|v| volume::parse_volume_spec(v))
                .collect::<Result<_, _>>()?;
            let network_mode = networks
                .first()
                .cloned()
                .unwrap_or_else(|| network::BRIDGE.into());
            let networks = match networks.as_slice() {
                [] => vec![network::BRIDGE.to_owned()],
                [only] if only == network::NONE => Vec::new(),
                _ => networks,
            };
            let mut aliases = std::collections::BTreeMap::new();
            if !network_aliases.is_empty() {
                // docker's rule: the aliases are the first network's.
                let first = networks
                    .first()
                    .cloned()
                    .unwrap_or_else(|| network::NONE.into());
                aliases.insert(first, network_aliases);
            }
            opts.network = NetworkRequest {
                networks,
                ip,
                ports: publish
                    .iter()
                    .map(|p| network::parse_port_spec(p))
                    .collect::<Result<_, _>>()?,
                model: nic_model.parse()?,
                dns: dns.clone(),
                aliases,
            };
            opts.spec = ContainerSpec {
                name: name.unwrap_or_default(),
                command,
                env,
                workdir: workdir.unwrap_or_default(),
                user: user.unwrap_or_default(),
                hostname: hostname.clone().unwrap_or_default(),
                tty,
                open_stdin: interactive,
                ..Default::default()
            };
            opts.settings = state::Settings {
                labels: labels
                    .iter()
                    .map(|l| match l.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (l.clone(), String::new()),
                    })
                    .collect(),
                auto_remove: rm,
                restart_policy: restart,
                stop_timeout,
                stop_signal: stop_signal.unwrap_or_default(),
                tty,
                open_stdin: interactive,
                stdin_once: interactive,
                hostname: hostname.unwrap_or_default(),
                dns,
                cpus,
                no_rng,
                network_mode,
                ..Default::default()
            };
            opts.timeout = Duration::from_secs(timeout);
            opts.memory_mb = memory;
            opts.backchannel = vm::Backchannel::parse(&backchannel)?;
            opts.line_noise = backchannel.ends_with("+noise");
            opts.vic_compat = vic_compat;
            opts.log_format = match log_format.as_str() {
                "tether" => String::new(),
                "vic" => "vic".into(),
                other => bail!("unknown log format {other:?} (tether, vic)"),
            };
            // Building an image's disk (its first container) shows progress on a terminal.
            opts.progress = true;
            let mut req = CreateRequest::new(opts);
            req.entrypoint = entrypoint.map(|e| vec![e]);
            if detach || interactive || tty {
                return run_background(engine, req, detach).await;
            }
            let outcome = engine.run_foreground(req, &mut Passthrough).await?;
            finish_run(&outcome, timeout)
        }
        Cmd::Exec {
            interactive,
            tty,
            env,
            user,
            workdir,
            name,
            command,
        } => {
            let id = engine.exec_create(
                &name,
                ExecCreate {
                    command,
                    env,
                    user: user.unwrap_or_default(),
                    workdir: workdir.unwrap_or_default(),
                    tty,
                    stdin: interactive,
                    stdout: true,
                    stderr: true,
                    detach_keys: None,
                },
            )?;
            let Some(att) = engine.exec_start(&id, false).await? else {
                bail!("the exec did not attach");
            };
            let ended = client::attach(
                att,
                client::TerminalOptions {
                    stdin: interactive,
                    unblock: true,
                    detach_keys: tty.then(DetachKeys::default),
                },
            )
            .await;
            if ended == Ended::Detached {
                return Ok(ExitCode::SUCCESS);
            }
            // What the tether wrote back is authoritative (and says why a launch failed).
            let view = engine.exec_inspect(&id)?;
            if let Some(e) = &view.launch_error {
                eprintln!("vch: exec failed: {e}");
            }
            let code = match ended {
                Ended::Exited(code) => code,
                _ => view.exit_code.unwrap_or(0),
            };
            Ok(exit_code(code))
        }
        Cmd::Attach { name } => {
            let view = engine.inspect(&name)?;
            if !view.running() {
                bail!(EngineError::NotRunning(name));
            }
            let stdin = view.primary().map(|s| s.open_stdin).unwrap_or(false);
            let att = engine
                .attach(&name, engine::AttachOptions { stdin })?
                .bind()
                .await?;
            match client::attach(
                att,
                client::TerminalOptions {
                    stdin,
                    unblock: true,
                    detach_keys: Some(DetachKeys::default()),
                },
            )
            .await
            {
                Ended::Exited(code) => Ok(exit_code(code)),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Start { names } => for_each(&names, |n| async move { engine.start(&n).await }).await,
        Cmd::Restart { time, names } => {
            for_each(&names, |n| async move { engine.restart(&n, time).await }).await
        }
        Cmd::Rename { name, new_name } => {
            engine.rename(&name, &new_name)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Wait { names } => {
            for_each_shown(
                &names,
                |n| async move { engine.wait(&n, WaitCondition::NotRunning).await },
                |_, code| println!("{code}"),
            )
            .await
        }
        Cmd::Kill { signal, names } => {
            let signal = &signal;
            for_each(&names, |n| async move { engine.kill(&n, signal).await }).await
        }
        Cmd::Stop { time, names } => {
            for_each(&names, |n| async move {
                match engine.stop(&n, time).await {
                    // Stopping a stopped container is no failure (docker says nothing).
                    Err(EngineError::AlreadyStopped(_)) => Ok(()),
                    other => other,
                }
            })
            .await
        }
        Cmd::DropBackchannel { name } => {
            engine.drop_backchannel(&name).await?;
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Daemon {
            hosts,
            tlsverify,
            tlscacert,
            tlscert,
            tlskey,
            container_timeout,
        } => {
            daemon(
                engine,
                hosts,
                tlsverify,
                tlscacert,
                tlscert,
                tlskey,
                container_timeout,
            )
            .await
        }
        Cmd::Netd { .. } => bail!("vch netd runs without the engine"),
        Cmd::Keeper { id } => {
            let state = engine.state().clone();
            let meta = state.meta(&id)?;
            let created = vm::Created {
                dir: state.vm_dir(&meta.id),
                meta,
            };
            vm::keep(state, created, None, None).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs {
            follow,
            timestamps,
            since,
            until,
            tail,
            stdout,
            stderr,
            name,
        } => {
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let time = |flag: &str, t: Option<String>| -> Result<u64> {
                Ok(match t {
                    Some(s) => logs::parse_since(&s, now_ns)
                        .map_err(|e| anyhow::anyhow!("invalid --{flag} {e}"))?,
                    None => 0,
                })
            };
            let opts = LogOptions {
                follow,
                stdout,
                stderr,
                since_ns: time("since", since)?,
                until_ns: time("until", until)?,
                tail: match tail.as_str() {
                    "all" => None,
                    n => Some(n.parse().with_context(|| format!("invalid --tail {n:?}"))?),
                },
            };
            let (_, mut lines) = engine.logs(&name, opts)?;
            while let Some(item) = lines.recv().await {
                match item {
                    LogItem::Line(l) => {
                        let r = if l.stream == Stream::Stderr {
                            print_line(&mut std::io::stderr().lock(), &l, timestamps)
                        } else {
                            print_line(&mut std::io::stdout().lock(), &l, timestamps)
                        };
                        if r.is_err() {
                            // The reader went away (`| head`): nothing more to show.
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                    LogItem::End { damaged, lost } => {
                        if damaged > 0 || lost > 0 {
                            eprintln!(
                                "vch: the log had {damaged} damaged stretches; {lost} records were lost to damage"
                            );
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cp {
            archive,
            follow_link,
            src,
            dest,
        } => copy(engine, archive, follow_link, &src, &dest).await,
        Cmd::Top { name, ps_args } => {
            let view = engine.top(&name, &ps_args.join(" ")).await?;
            let titles: Vec<&str> = view.titles.iter().map(String::as_str).collect();
            print_out(&table_dyn(&titles, &view.processes));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { no_stream, names } => stats(engine, no_stream, &names).await,
        Cmd::Inspect { name } => {
            let view = engine.inspect(&name)?;
            let cfg = view.config.clone().unwrap_or_default();
            let doc = serde_json::json!({
                "Id": view.meta.id,
                "Name": view.meta.name,
                "Image": view.meta.image,
                "ImageID": view.meta.image_id,
                "Created": view.meta.created,
                "State": state_text(&view),
                "OOMKilled": view.oom_killed,
                "Mounts": inspect::mounts(&view.meta),
                "NetworkSettings": inspect::network_settings(&view.meta, &cfg),
                "Boot": inspect::boot(&cfg),
                "Accelerator": {
                    "Requested": if view.meta.accel.is_empty() { "auto" } else { view.meta.accel.as_str() },
                    "Used": view.meta.accel_used,
                },
                "Config": cfg,
            });
            print_out(&format!("{}\n", serde_json::to_string_pretty(&doc)?));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ps { all, quiet } => {
            // Oldest first, as vch always listed them.
            let mut views = engine.list(&ListOptions {
                all,
                ..Default::default()
            });
            views.reverse();
            if quiet {
                let ids: String = views.iter().map(|v| format!("{}\n", v.meta.id)).collect();
                print_out(&ids);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = views
                .iter()
                .map(|v| {
                    [
                        short(&v.meta.id).to_owned(),
                        v.meta.name.clone(),
                        v.meta.image.clone(),
                        format!("\"{}\"", ellipsize(&v.meta.command.join(" "), 30)),
                        state_text(v),
                    ]
                })
                .collect();
            print_out(&table(
                &["CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS"],
                &rows,
            ));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Load { input, quiet } => image_load(engine, input, quiet).await,
        Cmd::Import {
            changes,
            message,
            file,
            reference,
        } => image_import(engine, file, reference, changes, message).await,
        Cmd::Images {
            all: _,
            quiet,
            no_trunc,
            reference,
        } => image_list(engine, quiet, no_trunc, reference),
        Cmd::Image(ImageCmd::Ls {
            quiet,
            no_trunc,
            reference,
        }) => image_list(engine, quiet, no_trunc, reference),
        Cmd::Image(ImageCmd::Inspect { names }) => {
            let mut out = Vec::new();
            for n in &names {
                out.push(qemu_harness::api::images::inspect_json(&engine.image(n)?));
            }
            print_out(&format!("{}\n", serde_json::to_string_pretty(&out)?));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rmi { force, names } | Cmd::Image(ImageCmd::Rm { force, names }) => {
            for_each_shown(
                &names,
                |n| async move { engine.image_remove(&n, force) },
                |_, removed| {
                    let mut text = String::new();
                    for r in removed {
                        match r {
                            images::Removed::Untagged(t) => {
                                text.push_str(&format!("Untagged: {t}\n"))
                            }
                            images::Removed::Deleted(id) => {
                                text.push_str(&format!("Deleted: {id}\n"))
                            }
                        }
                    }
                    print_out(&text);
                },
            )
            .await
        }
        Cmd::Tag { source, target } => {
            engine.image_tag(&source, &target)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Save { output, names } => image_save(engine, output, names).await,
        Cmd::Pull { name } => {
            let engine = engine.clone();
            let id = tokio::task::spawn_blocking(move || engine.image_pull(&name)).await??;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Volume(cmd) => volume_cmd(engine, cmd).await,
        Cmd::Network(cmd) => network_cmd(engine, cmd).await,
        Cmd::Rm { force, names } => {
            for_each(&names, |n| async move {
                match engine
                    .remove(
                        &n,
                        RemoveOptions {
                            force,
                            volumes: true,
                        },
                    )
                    .await
                {
                    Err(EngineError::RemoveRunning(_)) => Err(EngineError::Conflict(format!(
                        "container {n} is running: stop it first or use rm -f"
                    ))),
                    other => other,
                }
            })
            .await
        }
    }
}

/// Writes to stdout; a reader that went away (`vch ps | head`) ends the output quietly.
fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn print_line(w: &mut dyn Write, l: &logs::LogLine, timestamps: bool) -> std::io::Result<()> {
    if timestamps {
        write!(w, "{} ", logs::format_time(l.time_ns))?;
    }
    w.write_all(&l.bytes)?;
    w.flush()
}

/// A text cut to `max` characters with `...`.
fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// Columns as wide as their widest cell, three spaces apart.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut width = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

async fn volume_cmd(engine: &Engine, cmd: VolumeCmd) -> Result<ExitCode> {
    match cmd {
        VolumeCmd::Create {
            size,
            label,
            nfs,
            nfs_opts,
            name,
        } => {
            let v = engine.volume_create(&volume::CreateVolume {
                name,
                size: size.as_deref().map(volume::parse_size).transpose()?,
                label,
                nfs,
                nfs_options: nfs_opts,
                anonymous: false,
            })?;
            println!("{}", v.volume.name);
            Ok(ExitCode::SUCCESS)
        }
        VolumeCmd::Ls { quiet } => {
            let all = engine.volumes();
            if quiet {
                print_out(
                    &all.iter()
                        .map(|v| format!("{}\n", v.volume.name))
                        .collect::<String>(),
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 4]> = all
                .iter()
                .map(|v| {
                    let (size, source) = match &v.volume.backing {
                        volume::Backing::Disk { label, size } => {
                            (volume::format_size(*size), format!("label={label}"))
                        }
                        volume::Backing::Nfs { host, path, .. } => {
                            ("-".to_owned(), format!("{host}:{path}"))
                        }
                    };
                    [
                        v.volume.driver().to_owned(),
                        v.volume.name.clone(),
                        size,
                        source,
                    ]
                })
                .collect();
            print_out(&table(&["DRIVER", "VOLUME NAME", "SIZE", "SOURCE"], &rows));
            Ok(ExitCode::SUCCESS)
        }
        VolumeCmd::Rm { force, names } => {
            for_each(&names, |n| async move { engine.volume_remove(&n, force) }).await
        }
        VolumeCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                let v = engine.volume(n)?;
                out.push(serde_json::json!({
                    "Name": v.volume.name,
                    "Driver": v.volume.driver(),
                    "Mountpoint": v.mountpoint,
                    "CreatedAt": v.volume.created,
                    "Anonymous": v.volume.anonymous,
                    "Options": v.volume.backing,
                    "UsedBy": v.used_by.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                }));
            }
            print_out(&format!("{}\n", serde_json::to_string_pretty(&out)?));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn network_cmd(engine: &Engine, cmd: NetworkCmd) -> Result<ExitCode> {
    match cmd {
        NetworkCmd::Create {
            subnet,
            gateway,
            dns,
            route,
            kind,
            trust,
            name,
        } => {
            let n = engine.network_create(&network::CreateNetwork {
                name,
                kind: kind.parse()?,
                subnet: subnet.as_deref().map(str::parse).transpose()?,
                gateway,
                dns,
                routes: route
                    .iter()
                    .map(|r| r.parse())
                    .collect::<Result<_, network::NetworkError>>()?,
                trust: trust.as_deref().map(network::parse_trust).transpose()?,
            })?;
            println!("{}", n.network.name);
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Ls { quiet } => {
            let all = engine.networks();
            if quiet {
                print_out(
                    &all.iter()
                        .map(|n| format!("{}\n", n.network.name))
                        .collect::<String>(),
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = all
                .iter()
                .map(|v| {
                    let n = &v.network;
                    let dns = if n.dns.is_empty() {
                        "(gateway)".to_owned()
                    } else {
                        n.dns
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    [
                        n.name.clone(),
                        n.kind.as_str().to_owned(),
                        n.subnet.to_string(),
                        n.gateway.to_string(),
                        dns,
                    ]
                })
                .collect();
            print_out(&table(&["NAME", "TYPE", "SUBNET", "GATEWAY", "DNS"], &rows));
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Rm { names } => {
            for_each(&names, |n| async move { engine.network_remove(&n) }).await
        }
        NetworkCmd::Connect {
            aliases,
            ip,
            network,
            container,
        } => {
            engine
                .network_connect(&network, &container, engine::ConnectOptions { aliases, ip })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Disconnect { network, container } => {
            engine.network_disconnect(&network, &container).await?;
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let v = engine.network(name)?;
                let n = &v.network;
                out.push(serde_json::json!({
                    "Name": n.name,
                    "Id": v.id,
                    "Type": n.kind.as_str(),
                    "Subnet": n.subnet.to_string(),
                    "Gateway": n.gateway,
                    "DNS": n.dns,
                    "Routes": n.routes.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "TrustLevel": n.trust,
                    "Builtin": n.is_builtin(),
                    // How the harness realises it: the segment's netd, its gateway's DNS
                    // address, whether it runs now.
                    "Segment": segment_json(engine, n),
                    "Containers": v.containers.iter().map(|(_, name, _)| name).collect::<Vec<_>>(),
                }));
            }
            print_out(&format!("{}\n", serde_json::to_string_pretty(&out)?));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A network's segment as `vch network inspect` shows it.
fn segment_json(engine: &Engine, n: &network::Network) -> serde_json::Value {
    let seg = qemu_harness::netd::Segment::new(engine.state().root(), n);
    let status = seg.status().ok();
    serde_json::json!({
        "Dir": seg.dir,
        "Gateway": n.gateway,
        "DNS": n.slirp_dns(),
        "Running": status.is_some(),
        "Status": status,
    })
}

/// Runs an engine operation for each name, printing the name on success and the error
/// otherwise; fails if any failed.
async fn for_each<F, Fut>(names: &[String], f: F) -> Result<ExitCode>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), EngineError>>,
{
    for_each_shown(names, f, |n, ()| println!("{n}")).await
}

/// [`for_each`] with what each success prints made by `show` (the exit code of `wait`,
/// what `rmi` untagged and deleted).
async fn for_each_shown<T, F, Fut>(
    names: &[String],
    f: F,
    show: impl Fn(&str, T),
) -> Result<ExitCode>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    let mut failed = false;
    for n in names {
        match f(n.clone()).await {
            Ok(v) => show(n, v),
            Err(e) => {
                eprintln!("vch: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A container path of `vch cp`: `NAME:PATH`, unless the argument is a local path
/// (docker's rule: one starting with `/` or `.` is local even with a colon).
fn container_path(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    let (name, path) = arg.split_once(':')?;
    (!name.is_empty()).then_some((name, path))
}

async fn copy(
    engine: &Engine,
    archive: bool,
    follow_link: bool,
    src: &str,
    dest: &str,
) -> Result<ExitCode> {
    use qemu_harness::engine::LocalEnd;
    let local = |p: &str| {
        if p == "-" {
            LocalEnd::Stream
        } else {
            LocalEnd::Path(std::path::PathBuf::from(p))
        }
    };
    match (container_path(src), container_path(dest)) {
        (Some((name, path)), None) => {
            let mut out = tokio::io::stdout();
            engine
                .copy_from_container(name, path, follow_link, local(dest), &mut out)
                .await?;
        }
        (None, Some((name, path))) => {
            let mut input = tokio::io::stdin();
            engine
                .copy_to_container(name, local(src), path, archive, follow_link, &mut input)
                .await?;
        }
        (Some(_), Some(_)) => bail!("copying between containers is not supported"),
        (None, None) => {
            bail!("must specify at least one container source (CONTAINER:PATH)")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Four significant digits at most, without trailing zeros (Go's `%.4g` for these sizes).
fn g4(v: f64) -> String {
    let text = if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// docker's binary sizes (`123.4MiB`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{}{}", g4(v), UNITS[u])
}

/// docker's decimal sizes (`1.2MB`).
fn human_si(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{}{}", g4(v), UNITS[u])
}

/// One row of `vch stats`, as docker's client computes it from the stats JSON.
fn stats_row(v: &serde_json::Value) -> Vec<String> {
    let u = |p: &str| v.pointer(p).and_then(|x| x.as_u64()).unwrap_or(0);
    let cpu_delta = u("/cpu_stats/cpu_usage/total_usage")
        .saturating_sub(u("/precpu_stats/cpu_usage/total_usage")) as f64;
    let sys_delta =
        u("/cpu_stats/system_cpu_usage").saturating_sub(u("/precpu_stats/system_cpu_usage")) as f64;
    let cpus = u("/cpu_stats/online_cpus").max(1) as f64;
    let cpu = if sys_delta > 0.0 && u("/precpu_stats/system_cpu_usage") > 0 {
        cpu_delta / sys_delta * cpus * 100.0
    } else {
        0.0
    };
    let usage = u("/memory_stats/usage");
    let mem = usage.saturating_sub(u("/memory_stats/stats/inactive_file"));
    let limit = u("/memory_stats/limit");
    let (mut rx, mut tx) = (0, 0);
    if let Some(nets) = v.get("networks").and_then(|n| n.as_object()) {
        for n in nets.values() {
            rx += n.get("rx_bytes").and_then(|x| x.as_u64()).unwrap_or(0);
            tx += n.get("tx_bytes").and_then(|x| x.as_u64()).unwrap_or(0);
        }
    }
    let (mut read, mut write) = (0, 0);
    if let Some(io) = v
        .pointer("/blkio_stats/io_service_bytes_recursive")
        .and_then(|x| x.as_array())
    {
        for e in io {
            let val = e.get("value").and_then(|x| x.as_u64()).unwrap_or(0);
            match e.get("op").and_then(|x| x.as_str()) {
                Some("read") => read += val,
                Some("write") => write += val,
                _ => {}
            }
        }
    }
    let id = v.get("id").and_then(|x| x.as_str()).unwrap_or("");
    let name = v.get("name").and_then(|x| x.as_str()).unwrap_or("");
    vec![
        short(id).to_owned(),
        name.trim_start_matches('/').to_owned(),
        format!("{cpu:.2}%"),
        format!("{} / {}", human_bytes(mem), human_bytes(limit)),
        format!(
            "{:.2}%",
            if limit > 0 {
                mem as f64 * 100.0 / limit as f64
            } else {
                0.0
            }
        ),
        format!("{} / {}", human_si(rx), human_si(tx)),
        format!("{} / {}", human_si(read), human_si(write)),
        u("/pids_stats/current").to_string(),
    ]
}

const STATS_TITLES: [&str; 8] = [
    "CONTAINER ID",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
];

async fn stats(engine: &Engine, no_stream: bool, names: &[String]) -> Result<ExitCode> {
    // Every container's sampler at once; a row per container, refreshed each second.
    let mut streams = Vec::new();
    for n in names {
        let count = if no_stream { Some(2) } else { None };
        streams.push(engine.stats(n, count).await?);
    }
    let mut rows: Vec<Vec<String>> = vec![Vec::new(); streams.len()];
    loop {
        let mut any = false;
        for (i, s) in streams.iter_mut().enumerate() {
            if let Some(v) = s.recv().await {
                rows[i] = stats_row(&v);
                any = true;
            }
        }
        if !any {
            break;
        }
        if no_stream {
            // The second sample has the CPU deltas.
            let mut more = false;
            for (i, s) in streams.iter_mut().enumerate() {
                if let Some(v) = s.recv().await {
                    rows[i] = stats_row(&v);
                    more = true;
                }
            }
            let _ = more;
            print_out(&table_dyn(&STATS_TITLES, &rows));
            break;
        }
        // Clear the screen and draw the table again, as docker stats does.
        print_out(&format!("\x1b[2J\x1b[H{}", table_dyn(&STATS_TITLES, &rows)));
    }
    Ok(ExitCode::SUCCESS)
}

/// A table with any number of columns (the last one not padded).
fn table_dyn(titles: &[&str], rows: &[Vec<String>]) -> String {
    let n = titles.len();
    let mut widths: Vec<usize> = titles.iter().map(|t| t.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(titles.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn state_text(view: &ContainerView) -> String {
    if view.timed_out() {
        return format!("Killed (timed out after {} s)", view.meta.timeout_secs);
    }
    match (view.status, view.started.as_str()) {
        (ContainerStatus::Running, "true") => "Up".into(),
        (ContainerStatus::Running, _) => "Starting".into(),
        (ContainerStatus::Created, _) => "Created".into(),
        (ContainerStatus::Exited, "true") => format!("Exited ({})", view.exit_code),
        (ContainerStatus::Exited, "") => "Created".into(),
        (ContainerStatus::Exited, _) => format!("Failed ({})", view.exit_code),
    }
}

fn finish_run(outcome: &vm::RunOutcome, timeout: u64) -> Result<ExitCode> {
    if outcome.timed_out {
        bail!(
            "container {} did not finish within {timeout} s; the VM was killed (debug log: {})",
            outcome.id,
            outcome.dir.join("tether.debug").display()
        );
    }
    if outcome.started != "true" {
        let why = if outcome.started.is_empty() {
            format!(
                "the VM powered off before the container started (debug log: {})",
                outcome.dir.join("tether.debug").display()
            )
        } else {
            outcome.started.clone()
        };
        eprintln!(
            "vch: container {} failed to start: {why}",
            short(&outcome.id)
        );
        let code = if outcome.exit_code > 0 {
            outcome.exit_code
        } else {
            125
        };
        return Ok(exit_code(code));
    }
    if outcome.damaged_records > 0 {
        eprintln!(
            "vch: warning: {} stretches of output were damaged in transit",
            outcome.damaged_records
        );
    }
    Ok(exit_code(outcome.exit_code))
}

/// `run -d`, `run -i` and `run -t`: the VM is kept by a `vch keeper` process, so it
/// outlives this command (detach) and other commands can reach it. Attached runs bind
/// before the start, as docker's client does, so not a byte of output is lost.
async fn run_background(engine: &Engine, req: CreateRequest, detach: bool) -> Result<ExitCode> {
    let stdin = req.run.spec.open_stdin;
    let id = engine.create(req).await?.id;
    if detach {
        return match engine.start(&id).await {
            Ok(()) => {
                println!("{id}");
                Ok(ExitCode::SUCCESS)
            }
            Err(EngineError::StartFailed(why)) => {
                let view = engine.inspect(&id)?;
                // The tether's launch error, or why the VM never got that far (a host
                // port in use, a network that could not be had).
                eprintln!(
                    "vch: container {} failed to start: {}",
                    short(&id),
                    if view.started.is_empty() {
                        why
                    } else {
                        view.started
                    }
                );
                Ok(exit_code(view.exit_code.clamp(1, 255)))
            }
            Err(e) => Err(e.into()),
        };
    }
    let pending = engine.attach(&id, engine::AttachOptions { stdin })?;
    // The terminal is bound while the start runs: the start waits for the launch, which
    // waits for this attachment's unblock.
    let session = async {
        let att = pending.bind().await?;
        Ok::<_, EngineError>(
            client::attach(
                att,
                client::TerminalOptions {
                    stdin,
                    unblock: true,
                    detach_keys: Some(DetachKeys::default()),
                },
            )
            .await,
        )
    };
    let (started, ended) = tokio::join!(engine.start(&id), session);
    match (started, ended) {
        (Ok(()) | Err(EngineError::StartFailed(_)), Ok(ended)) => {
            if ended == Ended::Detached {
                return Ok(ExitCode::SUCCESS);
            }
        }
        (Err(EngineError::StartFailed(_)), Err(_)) => {}
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    }
    // The session ended: the VM powers off; report what the tether wrote back.
    let code = tokio::time::timeout(
        Duration::from_secs(30),
        engine.wait(&id, WaitCondition::NotRunning),
    )
    .await
    .ok()
    .and_then(|r| r.ok());
    let view = engine.inspect(&id)?;
    if view.launch_failed() {
        eprintln!(
            "vch: container {} failed to start: {}",
            short(&id),
            view.started
        );
        return Ok(exit_code(view.exit_code.clamp(1, 255)));
    }
    Ok(exit_code(code.unwrap_or(view.exit_code)))
}

/// `vch daemon`: the Docker Engine API over this state directory until SIGTERM or SIGINT.
async fn daemon(
    engine: &Engine,
    hosts: Vec<String>,
    tlsverify: bool,
    ca: Option<std::path::PathBuf>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    container_timeout: u64,
) -> Result<ExitCode> {
    use qemu_harness::api;
    let root = engine.state().root().to_owned();
    let _lock = api::daemon_lock(&root)?;
    let addresses = if hosts.is_empty() {
        vec![api::Address::Unix(root.join("docker.sock"))]
    } else {
        hosts
            .iter()
            .map(|h| api::Address::parse(h))
            .collect::<Result<_, _>>()?
    };
    let tls = match (tlsverify, ca, cert, key) {
        (false, None, None, None) => None,
        (true, Some(ca), Some(cert), Some(key)) => Some(api::tls::TlsFiles { ca, cert, key }),
        _ => bail!("TLS needs all of --tlsverify, --tlscacert, --tlscert and --tlskey"),
    };
    let opts = api::DaemonOptions {
        addresses,
        tls,
        container_timeout: Duration::from_secs(container_timeout),
    };
    let listeners = api::bind(&opts).await?;
    for l in &listeners {
        eprintln!("vch daemon: listening on {}", l.docker_host());
    }
    if let Some(l) = listeners.first() {
        eprintln!("vch daemon: export DOCKER_HOST={}", l.docker_host());
    }
    let state = std::sync::Arc::new(api::ApiState::new(engine.clone(), opts.container_timeout));
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    api::serve(state, listeners, shutdown).await;
    for a in &opts.addresses {
        if let api::Address::Unix(p) = a {
            let _ = std::fs::remove_file(p);
        }
    }
    eprintln!("vch daemon: stopped (containers keep running)");
    Ok(ExitCode::SUCCESS)
}

/// `vch load`: prints what `docker load` prints.
async fn image_load(
    engine: &Engine,
    input: Option<std::path::PathBuf>,
    quiet: bool,
) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let reader: Box<dyn std::io::Read + Send> = match &input {
        Some(p) if p.as_os_str() != "-" => {
            Box::new(std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?)
        }
        _ => {
            if std::io::stdin().is_terminal() {
                bail!(
                    "requested load from stdin, but stdin is a terminal: give -i FILE or redirect"
                );
            }
            Box::new(std::io::stdin())
        }
    };
    let engine = engine.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let progress: Box<dyn images::Progress> = if quiet {
            Box::new(images::Silent)
        } else {
            Box::new(images::Terminal::stderr())
        };
        engine.image_load(
            std::io::BufReader::with_capacity(1 << 20, reader),
            &*progress,
        )
    })
    .await??;
    let mut text = String::new();
    for img in loaded {
        for (tag, old) in &img.moved {
            text.push_str(&format!(
                "The image {tag} already exists, renaming the old one with ID {old} to empty string\n"
            ));
        }
        if img.tags.is_empty() {
            text.push_str(&format!("Loaded image ID: {}\n", img.id));
        }
        for t in &img.tags {
            text.push_str(&format!("Loaded image: {t}\n"));
        }
    }
    print_out(&text);
    Ok(ExitCode::SUCCESS)
}

/// `vch import`: prints the new image's ID, as `docker import` does.
async fn image_import(
    engine: &Engine,
    file: String,
    reference: Option<String>,
    changes: Vec<String>,
    message: Option<String>,
) -> Result<ExitCode> {
    let reader: Box<dyn std::io::Read + Send> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&file).with_context(|| format!("open {file}"))?)
    };
    let opts = images::ImportOptions {
        reference,
        changes,
        message,
    };
    let engine = engine.clone();
    let image = tokio::task::spawn_blocking(move || {
        engine.image_import(
            std::io::BufReader::with_capacity(1 << 20, reader),
            &opts,
            &images::Terminal::stderr(),
        )
    })
    .await??;
    println!("{}", image.id);
    Ok(ExitCode::SUCCESS)
}

/// `vch images`: docker's columns.
fn image_list(
    engine: &Engine,
    quiet: bool,
    no_trunc: bool,
    reference: Option<String>,
) -> Result<ExitCode> {
    let all = engine.images()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let id_text = |id: &images::ImageId| {
        if no_trunc {
            id.to_string()
        } else {
            id.short().to_owned()
        }
    };
    let wanted = |tag: &str| match &reference {
        None => true,
        Some(r) => {
            let name = tag.rsplit_once(':').map_or(tag, |(n, _)| n);
            r == tag || r == name
        }
    };
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for i in &all {
        let created = format!("{} ago", human_duration(now - i.created));
        let size = human_size(i.size);
        if i.repo_tags.is_empty() && reference.is_none() {
            rows.push([
                "<none>".into(),
                "<none>".into(),
                id_text(&i.id),
                created.clone(),
                size.clone(),
            ]);
            ids.push(id_text(&i.id));
        }
        for t in i.repo_tags.iter().filter(|t| wanted(t)) {
            let (repo, tag) = t.rsplit_once(':').unwrap_or((t.as_str(), "<none>"));
            rows.push([
                repo.to_owned(),
                tag.to_owned(),
                id_text(&i.id),
                created.clone(),
                size.clone(),
            ]);
            if !ids.contains(&id_text(&i.id)) {
                ids.push(id_text(&i.id));
            }
        }
    }
    if quiet {
        print_out(&ids.iter().map(|i| format!("{i}\n")).collect::<String>());
    } else {
        print_out(&table(
            &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            &rows,
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `vch save`: to a file (written beside it and renamed at the end, so that a failed save
/// leaves no partial archive) or to stdout, never to a terminal.
async fn image_save(
    engine: &Engine,
    output: Option<std::path::PathBuf>,
    names: Vec<String>,
) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let engine = engine.clone();
    match output {
        Some(path) => {
            let tmp = path.with_file_name(format!(
                ".{}.{}.tmp",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            let file =
                std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            let saved = tokio::task::spawn_blocking(move || {
                engine.image_save(&names, std::io::BufWriter::new(file))
            })
            .await?;
            if let Err(e) = saved {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("rename to {}", path.display()))?;
        }
        None => {
            if std::io::stdout().is_terminal() {
                bail!("cowardly refusing to save to a terminal: use -o FILE or redirect");
            }
            tokio::task::spawn_blocking(move || {
                engine.image_save(&names, std::io::BufWriter::new(std::io::stdout()))
            })
            .await??;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// docker's (go-units) `HumanDuration`: "5 seconds", "About an hour", "3 weeks".
fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (min, hour, day) = (60, 3600, 86400);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        _ if s < min => format!("{s} seconds"),
        _ if s < 2 * min => "About a minute".into(),
        _ if s < hour => format!("{} minutes", s / min),
        _ if s < 2 * hour => "About an hour".into(),
        _ if s < 48 * hour => format!("{} hours", s / hour),
        _ if s < 14 * day => format!("{} days", s / day),
        _ if s < 90 * day => format!("{} weeks", s / (7 * day)),
        _ if s < 730 * day => format!("{} months", s / (30 * day)),
        _ => format!("{} years", s / (365 * day)),
    }
}

/// docker's (go-units) `HumanSizeWithPrecision(size, 3)`: decimal units, three significant
/// digits ("4.26MB", "170MB").
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{v:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{text}{}", units[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_as_docker_prints_them() {
        assert_eq!(human_size(4_261_550), "4.26MB");
        assert_eq!(human_size(170_401_280), "170MB");
        assert_eq!(human_size(12_300), "12.3kB");
        assert_eq!(human_size(4_000_000), "4MB");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_duration(30), "30 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(21 * 86400), "3 weeks");
    }
}
