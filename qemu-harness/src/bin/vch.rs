//! `vch`: a docker-like command for container VMs under QEMU.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;

use iolog::Stream;
use qemu_harness::config::ContainerSpec;
use qemu_harness::network::{self, NetworkRequest, NetworkStore};
use qemu_harness::state::{self, State};
use qemu_harness::vm::{self, Passthrough, RunOptions};
use qemu_harness::volume::{self, VolumeStore};
use qemu_harness::{client, control, inspect, logs};

#[derive(Debug, Parser)]
#[command(
    name = "vch",
    about = "Run containers as VMs under QEMU, the way a VIC VCH runs them on vSphere"
)]
struct Cli {
    /// State directory (default: $VCH_STATE or ~/.local/state/tether-vch)
    #[arg(long, global = true)]
    state: Option<std::path::PathBuf>,
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
        /// Mount a volume: NAME:/PATH[:ro|rw][,nocopy] (created if missing), or /PATH for a
        /// new anonymous volume
        #[arg(short = 'v', long = "volume", value_name = "SPEC")]
        volumes: Vec<String>,
        /// Connect to a network (repeatable; the first carries the default route); "none"
        /// for no NIC [default: bridge]
        #[arg(long = "network", alias = "net", value_name = "NAME")]
        networks: Vec<String>,
        /// Static IPv4 address on the first network (default: DHCP)
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// Publish a container port on this machine: [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]
        /// (IP defaults to 127.0.0.1)
        #[arg(short = 'p', long = "publish", value_name = "SPEC")]
        publish: Vec<String>,
        /// NIC model: vmxnet3 (vSphere's; the tether finds it at <device>/net/) or virtio
        /// (its interface is one level deeper, <device>/virtioN/net/)
        #[arg(long = "nic-model", default_value = "vmxnet3")]
        nic_model: String,
        /// A root filesystem directory, or "busybox"
        image: String,
        /// Command and arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
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
    /// Send a signal to a container's primary process
    Kill {
        /// Signal (name or number)
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        names: Vec<String>,
    },
    /// Stop containers: the stop signal, then SIGKILL after the grace period
    Stop {
        /// Seconds to wait before killing
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        names: Vec<String>,
    },
    /// Drops a running VM's back-channel connection, as a VCH restart would (it reconnects)
    #[command(hide = true, name = "debug-drop-backchannel")]
    DropBackchannel { name: String },
    /// Keeps a VM running (started by `run -d` and `run -it`; not for direct use)
    #[command(hide = true)]
    Keeper { id: String },
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
    /// Create a network (one QEMU user-mode network per container NIC)
    Create {
        /// Subnet in CIDR form [default: the next free /16 of 172.16.0.0/12]
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway (the address of this machine as containers see it) [default: the
        /// subnet's first address]
        #[arg(long)]
        gateway: Option<std::net::Ipv4Addr>,
        /// Nameserver for containers (repeatable) [default: ask DHCP]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vch: {e:#}");
            // docker's code for "the daemon could not run the container"
            ExitCode::from(125)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let state = State::open(cli.state.clone().unwrap_or_else(State::default_dir))?;
    match cli.cmd {
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
            backchannel,
            vic_compat,
            log_format,
            timeout,
            memory,
            volumes,
            networks,
            ip,
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
            opts.network = NetworkRequest {
                networks: match networks.as_slice() {
                    [] => vec![network::BRIDGE.to_owned()],
                    [only] if only == network::NONE => Vec::new(),
                    _ => networks,
                },
                ip,
                ports: publish
                    .iter()
                    .map(|p| network::parse_port_spec(p))
                    .collect::<Result<_, _>>()?,
                model: nic_model.parse()?,
            };
            opts.spec = ContainerSpec {
                name: name.unwrap_or_default(),
                command,
                env,
                workdir: workdir.unwrap_or_default(),
                user: user.unwrap_or_default(),
                hostname: hostname.unwrap_or_default(),
                tty,
                open_stdin: interactive,
                restart: match restart.as_str() {
                    "no" => false,
                    "always" | "unless-stopped" | "on-failure" => true,
                    other => bail!("unknown restart policy {other:?} (no, always)"),
                },
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
            if detach || interactive || tty {
                return run_background(&state, opts, detach);
            }
            let outcome = vm::run(&state, opts, &mut Passthrough)?;
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
            let meta = running(&state, &name)?;
            let spec = control::ExecSpec {
                command,
                env,
                user: user.unwrap_or_default(),
                workdir: workdir.unwrap_or_default(),
                tty,
                stdin: interactive,
            };
            let rt = runtime()?;
            rt.block_on(async {
                let conn = control::connect(&state.vm_dir(&meta.id).join("ctl.sock"))
                    .await
                    .context("connect to the container")?;
                let payload = serde_json::to_vec(&spec)?;
                let id = control::request(&conn, control::REQ_EXEC, &payload)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let id = String::from_utf8_lossy(&id).into_owned();
                let opts = client::AttachOptions {
                    tty,
                    stdin: interactive,
                    unblock: true,
                    detach_keys: tty,
                };
                let ended = client::attach(&conn, &id, opts)
                    .await
                    .map_err(anyhow::Error::msg)?;
                if ended == client::Ended::Detached {
                    return Ok(ExitCode::SUCCESS);
                }
                // What the tether wrote back is authoritative (and says why a launch failed).
                let cfg = vm::load_config(&state.vm_dir(&meta.id))?;
                let exec = cfg.execs.get(&id).cloned().unwrap_or_default();
                if exec.started != "true" && !exec.started.is_empty() {
                    eprintln!("vch: exec failed: {}", exec.started);
                }
                let code = match ended {
                    client::Ended::Exited(code) => code,
                    _ => exec.exit_status,
                };
                Ok(ExitCode::from(code.clamp(0, 255) as u8))
            })
        }
        Cmd::Attach { name } => {
            let meta = running(&state, &name)?;
            let cfg = vm::load_config(&state.vm_dir(&meta.id))?;
            let primary = cfg.sessions.get(&meta.id).cloned().unwrap_or_default();
            let rt = runtime()?;
            let ended = rt.block_on(async {
                let conn = control::connect(&state.vm_dir(&meta.id).join("ctl.sock"))
                    .await
                    .context("connect to the container")?;
                let opts = client::AttachOptions {
                    tty: primary.tty,
                    stdin: primary.open_stdin,
                    unblock: true,
                    detach_keys: true,
                };
                client::attach(&conn, &meta.id, opts)
                    .await
                    .map_err(anyhow::Error::msg)
            })?;
            match ended {
                client::Ended::Exited(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Kill { signal, names } => for_each(&state, &names, |meta| {
            control_request(&state, meta, control::REQ_KILL, signal.as_bytes())
        }),
        Cmd::Stop { time, names } => for_each(&state, &names, |meta| {
            if control_request(&state, meta, control::REQ_STOP, time.to_string().as_bytes())
                .is_err()
            {
                // The keeper could not be reached: power the VM off hard.
                kill_qemu(meta);
            }
            // The port layer's own limit: the grace period plus time to power off, then a
            // hard power-off.
            if !wait_stopped(&state, &meta.id, Duration::from_secs(time + 15)) {
                kill_qemu(meta);
                wait_stopped(&state, &meta.id, Duration::from_secs(10));
            }
            Ok(())
        }),
        Cmd::DropBackchannel { name } => for_each(&state, &[name], |meta| {
            control_request(&state, meta, control::REQ_DROP, &[])
        }),
        Cmd::Keeper { id } => {
            let meta = state.meta(&id)?;
            let created = vm::Created {
                dir: state.vm_dir(&meta.id),
                meta,
            };
            let rt = runtime()?;
            rt.block_on(vm::keep(state.clone(), created, None, None))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs {
            follow,
            timestamps,
            since,
            tail,
            stdout,
            stderr,
            name,
        } => {
            let meta = state.resolve(&name)?;
            let path = state.vm_dir(&meta.id).join("output.log");
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let since_ns = match since {
                Some(s) => logs::parse_since(&s, now_ns).map_err(anyhow::Error::msg)?,
                None => 0,
            };
            let tail: Option<usize> = match tail.as_str() {
                "all" => None,
                n => Some(n.parse().with_context(|| format!("invalid --tail {n:?}"))?),
            };
            let want = |l: &logs::LogLine| {
                let stream_ok = match (stdout, stderr) {
                    (true, false) => l.stream == Stream::Stdout,
                    (false, true) => l.stream == Stream::Stderr,
                    _ => true,
                };
                stream_ok && l.time_ns >= since_ns
            };
            let print = |lines: Vec<logs::LogLine>| -> Result<()> {
                let mut out = std::io::stdout().lock();
                let mut err = std::io::stderr().lock();
                for l in lines {
                    let w: &mut dyn Write = if l.stream == Stream::Stderr {
                        &mut err
                    } else {
                        &mut out
                    };
                    if timestamps {
                        write!(w, "{} ", logs::format_time(l.time_ns))?;
                    }
                    w.write_all(&l.bytes)?;
                }
                out.flush()?;
                Ok(())
            };
            let running = |id: &str| state.meta(id).map(|m| is_running(&m)).unwrap_or(false);
            if !(path.exists() || follow && running(&meta.id)) {
                return Ok(ExitCode::SUCCESS);
            }
            while !path.exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut reader = logs::LogReader::open(&path, &meta.id)?;
            if meta.log_format == "vic" {
                reader = reader.vic();
            }
            let mut lines: Vec<logs::LogLine> =
                reader.poll()?.into_iter().filter(|l| want(l)).collect();
            let live = follow && running(&meta.id);
            if !live {
                lines.extend(reader.finish().into_iter().filter(|l| want(l)));
            }
            if let Some(n) = tail {
                let skip = lines.len().saturating_sub(n);
                lines.drain(..skip);
            }
            print(lines)?;
            if live {
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    let alive = running(&meta.id);
                    print(reader.poll()?.into_iter().filter(|l| want(l)).collect())?;
                    if !alive {
                        print(reader.finish().into_iter().filter(|l| want(l)).collect())?;
                        break;
                    }
                }
            }
            if reader.damaged > 0 || reader.lost > 0 {
                eprintln!(
                    "vch: the log had {} damaged stretches; {} records were lost to damage",
                    reader.damaged, reader.lost
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { name } => {
            let meta = state.resolve(&name)?;
            let cfg = vm::load_config(&state.vm_dir(&meta.id))?;
            let doc = serde_json::json!({
                "Id": meta.id,
                "Name": meta.name,
                "Image": meta.image,
                "Created": meta.created,
                "State": state_text(&meta, &cfg),
                "Mounts": inspect::mounts(&meta),
                "NetworkSettings": inspect::network_settings(&meta, &cfg),
                "Boot": inspect::boot(&cfg),
                "Config": cfg,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ps { all, quiet } => {
            if quiet {
                for meta in state.list().into_iter().filter(|m| all || is_running(m)) {
                    println!("{}", meta.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<14}{:<16}{:<10}{:<30}STATUS",
                "CONTAINER ID", "NAME", "IMAGE", "COMMAND"
            );
            for meta in state.list() {
                let cfg = vm::load_config(&state.vm_dir(&meta.id)).ok();
                if !all && !is_running(&meta) {
                    continue;
                }
                let status = cfg
                    .as_ref()
                    .map(|c| state_text(&meta, c))
                    .unwrap_or_else(|| "unknown".into());
                let mut cmd = meta.command.join(" ");
                if cmd.len() > 28 {
                    cmd.truncate(25);
                    cmd.push_str("...");
                }
                println!(
                    "{:<14}{:<16}{:<10}{:<30}{}",
                    &meta.id[..12.min(meta.id.len())],
                    meta.name,
                    meta.image,
                    format!("\"{cmd}\""),
                    status
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Volume(cmd) => volume_cmd(&state, cmd),
        Cmd::Network(cmd) => network_cmd(&state, cmd),
        Cmd::Rm { force, names } => {
            let mut failed = false;
            for n in names {
                let r = (|| -> Result<()> {
                    let meta = state.resolve(&n)?;
                    if is_running(&meta) {
                        if !force {
                            bail!("container {n} is running: stop it first or use rm -f");
                        }
                        kill_qemu(&meta);
                        wait_stopped(&state, &meta.id, Duration::from_secs(10));
                    }
                    state.remove(&meta.id)?;
                    // Anonymous volumes belong to the container (docker's `rm -v`).
                    volume::release(&VolumeStore::new(state.root()), &meta.volumes);
                    println!("{n}");
                    Ok(())
                })();
                if let Err(e) = r {
                    eprintln!("vch: {e:#}");
                    failed = true;
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn volume_cmd(state: &State, cmd: VolumeCmd) -> Result<ExitCode> {
    let store = VolumeStore::new(state.root());
    match cmd {
        VolumeCmd::Create {
            size,
            label,
            nfs,
            nfs_opts,
            name,
        } => {
            let v = store.create(&volume::CreateVolume {
                name,
                size: size.as_deref().map(volume::parse_size).transpose()?,
                label,
                nfs,
                nfs_options: nfs_opts,
                anonymous: false,
            })?;
            println!("{}", v.name);
            Ok(ExitCode::SUCCESS)
        }
        VolumeCmd::Ls { quiet } => {
            let all = store.list();
            if quiet {
                all.iter().for_each(|v| println!("{}", v.name));
                return Ok(ExitCode::SUCCESS);
            }
            let w = all
                .iter()
                .map(|v| v.name.len() + 2)
                .max()
                .unwrap_or(0)
                .max(24);
            println!("{:<10}{:<w$}{:<8}SOURCE", "DRIVER", "VOLUME NAME", "SIZE");
            for v in all {
                let (size, source) = match &v.backing {
                    volume::Backing::Disk { label, size } => {
                        (volume::format_size(*size), format!("label={label}"))
                    }
                    volume::Backing::Nfs { host, path, .. } => {
                        ("-".to_owned(), format!("{host}:{path}"))
                    }
                };
                println!("{:<10}{:<w$}{:<8}{source}", v.driver(), v.name, size);
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCmd::Rm { force, names } => each_name(&names, |name| {
            store.get(name)?;
            let users: Vec<state::Meta> = state
                .list()
                .into_iter()
                .filter(|m| m.volumes.iter().any(|v| v.volume.name == name))
                .collect();
            let list = |ms: &[&state::Meta]| {
                ms.iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let running: Vec<&state::Meta> = users.iter().filter(|m| is_running(m)).collect();
            if !running.is_empty() {
                bail!(volume::VolumeError::InUse {
                    name: name.into(),
                    containers: format!("{} (running)", list(&running)),
                });
            }
            if !force && !users.is_empty() {
                let all: Vec<&state::Meta> = users.iter().collect();
                bail!(volume::VolumeError::InUse {
                    name: name.into(),
                    containers: format!("{} (stopped; rm -f removes it anyway)", list(&all)),
                });
            }
            store.remove(name)?;
            Ok(())
        }),
        VolumeCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                let v = store.get(n)?;
                out.push(serde_json::json!({
                    "Name": v.name,
                    "Driver": v.driver(),
                    "Mountpoint": match v.backing {
                        volume::Backing::Disk { .. } => store.disk_path(&v.name).display().to_string(),
                        volume::Backing::Nfs { ref host, ref path, .. } => format!("{host}:{path}"),
                    },
                    "CreatedAt": v.created,
                    "Anonymous": v.anonymous,
                    "Options": v.backing,
                    "UsedBy": state.list().into_iter()
                        .filter(|m| m.volumes.iter().any(|a| a.volume.name == v.name))
                        .map(|m| m.name).collect::<Vec<_>>(),
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn network_cmd(state: &State, cmd: NetworkCmd) -> Result<ExitCode> {
    let store = NetworkStore::new(state.root());
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
            let n = store.create(&network::CreateNetwork {
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
            println!("{}", n.name);
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Ls { quiet } => {
            let all = store.list();
            if quiet {
                all.iter().for_each(|n| println!("{}", n.name));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16}{:<10}{:<20}{:<16}DNS",
                "NAME", "TYPE", "SUBNET", "GATEWAY"
            );
            for n in all {
                let dns = if n.dns.is_empty() {
                    "(DHCP)".to_owned()
                } else {
                    n.dns
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{:<16}{:<10}{:<20}{:<16}{dns}",
                    n.name,
                    n.kind.as_str(),
                    n.subnet.to_string(),
                    n.gateway.to_string()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Rm { names } => each_name(&names, |name| {
            let n = store.get(name)?;
            if n.is_builtin() {
                bail!(network::NetworkError::Builtin(name.into()));
            }
            let running: Vec<String> = state
                .list()
                .into_iter()
                .filter(|m| is_running(m) && m.nics.iter().any(|n| n.network.name == name))
                .map(|m| m.name)
                .collect();
            if !running.is_empty() {
                bail!(network::NetworkError::InUse {
                    name: name.into(),
                    containers: running.join(", "),
                });
            }
            store.remove(name)?;
            Ok(())
        }),
        NetworkCmd::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let n = store.get(name)?;
                out.push(serde_json::json!({
                    "Name": n.name,
                    "Type": n.kind.as_str(),
                    "Subnet": n.subnet.to_string(),
                    "Gateway": n.gateway,
                    "DNS": n.dns,
                    "Routes": n.routes.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "TrustLevel": n.trust,
                    "Builtin": n.is_builtin(),
                    // How QEMU's user networking realises it.
                    "Slirp": {
                        "Host": n.gateway,
                        "DNS": n.slirp_dns(),
                        "DHCPStart": n.dhcp_start(),
                    },
                    "Containers": state.list().into_iter()
                        .filter(|m| m.nics.iter().any(|c| c.network.name == n.name))
                        .map(|m| m.name).collect::<Vec<_>>(),
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `f` for each name, printing the name on success and the error otherwise.
fn each_name(names: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<ExitCode> {
    let mut failed = false;
    for n in names {
        match f(n) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("vch: {e:#}");
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

fn state_text(meta: &state::Meta, cfg: &guestinfo::ContainerConfig) -> String {
    let running = is_running(meta);
    let (started, code) = vm::session_result(cfg, &meta.id);
    match (running, started.as_str()) {
        (true, "true") => "Up".into(),
        (true, _) => "Starting".into(),
        (false, "true") => format!("Exited ({code})"),
        (false, "") => "Created".into(),
        (false, _) => format!("Failed ({code})"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn is_running(meta: &state::Meta) -> bool {
    meta.qemu_pid.map(state::pid_alive).unwrap_or(false)
}

fn running(state: &State, name: &str) -> Result<state::Meta> {
    let meta = state.resolve(name)?;
    if !is_running(&meta) {
        bail!("container {name} is not running");
    }
    if meta.backchannel.starts_with("tcp://") {
        bail!(
            "container {name}'s back-channel goes to an external port layer ({})",
            meta.backchannel
        );
    }
    Ok(meta)
}

fn for_each(
    state: &State,
    names: &[String],
    mut f: impl FnMut(&state::Meta) -> Result<()>,
) -> Result<ExitCode> {
    each_name(names, |n| running(state, n).and_then(|m| f(&m)))
}

fn control_request(state: &State, meta: &state::Meta, name: &str, data: &[u8]) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let conn = control::connect(&state.vm_dir(&meta.id).join("ctl.sock"))
            .await
            .context("connect to the container")?;
        control::request(&conn, name, data)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(())
    })
}

fn kill_qemu(meta: &state::Meta) {
    if let Some(pid) = meta.qemu_pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Waits until the VM's keeper has finished (QEMU gone, state saved).
fn wait_stopped(state: &State, id: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        match state.meta(id) {
            Ok(m) if m.keeper_pid.map(state::pid_alive).unwrap_or(false) || is_running(&m) => {}
            _ => return true,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
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
            &outcome.id[..12.min(outcome.id.len())]
        );
        let code = if outcome.exit_code > 0 {
            outcome.exit_code
        } else {
            125
        };
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    if outcome.damaged_records > 0 {
        eprintln!(
            "vch: warning: {} stretches of output were damaged in transit",
            outcome.damaged_records
        );
    }
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}

/// `run -d` and `run -it`: the VM is kept by a background `vch keeper`, so it outlives this
/// command (detach) and other commands can reach it.
fn run_background(state: &State, mut opts: RunOptions, detach: bool) -> Result<ExitCode> {
    let interactive = opts.spec.open_stdin || opts.spec.tty;
    if !detach {
        // Hold the launch until our terminal is bound, so not a byte of output is lost.
        opts.spec.run_block = true;
    }
    let created = vm::create(state, opts.clone())?;
    let id = created.meta.id.clone();
    let exe = std::env::current_exe().context("locate vch")?;
    let log = std::fs::File::create(created.dir.join("keeper.log"))?;
    {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("--state")
            .arg(state.root())
            .arg("keeper")
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            // Its own process group: ctrl-c in this terminal must not reach the VM's keeper.
            .process_group(0)
            .spawn()
            .context("start the VM keeper")?;
    }
    if detach {
        // docker run -d returns once the container started (or failed to).
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let cfg = vm::load_config(&created.dir)?;
            let (started, code) = vm::session_result(&cfg, &id);
            if started == "true" {
                println!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            if !started.is_empty() {
                eprintln!("vch: container {} failed to start: {started}", &id[..12]);
                return Ok(ExitCode::from(code.clamp(1, 255) as u8));
            }
            let meta = state.meta(&id)?;
            if std::time::Instant::now() > deadline
                || (meta.keeper_pid.is_some()
                    && !is_running(&meta)
                    && !meta.keeper_pid.map(state::pid_alive).unwrap_or(false))
            {
                bail!(
                    "container {} did not start (debug log: {})",
                    &id[..12],
                    created.dir.join("tether.debug").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let rt = runtime()?;
    let ctl = created.dir.join("ctl.sock");
    let ended = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let conn = loop {
            match control::connect(&ctl).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(anyhow::anyhow!("the VM keeper did not come up: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let opts = client::AttachOptions {
            tty: opts.spec.tty,
            stdin: interactive && opts.spec.open_stdin,
            unblock: true,
            detach_keys: true,
        };
        client::attach(&conn, &id, opts)
            .await
            .map_err(anyhow::Error::msg)
    })?;
    if ended == client::Ended::Detached {
        return Ok(ExitCode::SUCCESS);
    }
    // The session ended: the VM powers off; report what the tether wrote back.
    wait_stopped(state, &id, Duration::from_secs(30));
    let cfg = vm::load_config(&created.dir)?;
    let (started, code) = vm::session_result(&cfg, &id);
    if started != "true" {
        eprintln!("vch: container {} failed to start: {started}", &id[..12]);
        return Ok(ExitCode::from(code.clamp(1, 255) as u8));
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
