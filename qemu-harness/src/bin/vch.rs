//! `vch`: a docker-like command for container VMs under QEMU.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;

use iolog::Stream;
use qemu_harness::config::ContainerSpec;
use qemu_harness::logs;
use qemu_harness::state::{self, State};
use qemu_harness::vm::{self, Passthrough, RunOptions};

#[derive(Debug, Parser)]
#[command(name = "vch", about = "Run containers as VMs under QEMU, the way a VIC VCH runs them on vSphere")]
struct Cli {
    /// State directory (default: $VCH_STATE or ~/.local/state/tether-vch)
    #[arg(long, global = true)]
    state: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a command in a new container VM, in the foreground
    Run {
        /// Assign a name to the container
        #[arg(long)]
        name: Option<String>,
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
        /// Kill the VM if it runs longer than this many seconds
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// VM memory in MiB
        #[arg(long, default_value_t = 256)]
        memory: u32,
        /// A root filesystem directory, or "busybox"
        image: String,
        /// Command and arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
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
    },
    /// Remove one or more containers
    Rm {
        /// Force the removal of a running container
        #[arg(short = 'f', long)]
        force: bool,
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
        Cmd::Run { name, env, workdir, user, hostname, timeout, memory, image, command } => {
            let mut opts = RunOptions::new(&image, &[]);
            opts.spec = ContainerSpec {
                name: name.unwrap_or_default(),
                command,
                env,
                workdir: workdir.unwrap_or_default(),
                user: user.unwrap_or_default(),
                hostname: hostname.unwrap_or_default(),
                ..Default::default()
            };
            opts.timeout = Duration::from_secs(timeout);
            opts.memory_mb = memory;
            let outcome = vm::run(&state, opts, &mut Passthrough)?;
            if outcome.timed_out {
                bail!("container {} did not finish within {timeout} s; the VM was killed (debug log: {})", outcome.id, outcome.dir.join("tether.debug").display());
            }
            if outcome.started != "true" {
                let why = if outcome.started.is_empty() {
                    format!("the VM powered off before the container started (debug log: {})", outcome.dir.join("tether.debug").display())
                } else {
                    outcome.started.clone()
                };
                eprintln!("vch: container {} failed to start: {why}", &outcome.id[..12.min(outcome.id.len())]);
                let code = if outcome.exit_code > 0 { outcome.exit_code } else { 125 };
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            if outcome.damaged_records > 0 {
                eprintln!("vch: warning: {} output records were damaged in transit", outcome.damaged_records);
            }
            Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
        }
        Cmd::Logs { follow, timestamps, since, tail, stdout, stderr, name } => {
            let meta = state.resolve(&name)?;
            let path = state.vm_dir(&meta.id).join("output.log");
            let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
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
                    let w: &mut dyn Write = if l.stream == Stream::Stderr { &mut err } else { &mut out };
                    if timestamps {
                        write!(w, "{} ", logs::format_time(l.time_ns))?;
                    }
                    w.write_all(&l.bytes)?;
                }
                out.flush()?;
                Ok(())
            };
            let running = |id: &str| state.meta(id).ok().and_then(|m| m.qemu_pid).map(state::pid_alive).unwrap_or(false);
            if !path.exists() && !(follow && running(&meta.id)) {
                return Ok(ExitCode::SUCCESS);
            }
            while !path.exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut reader = logs::LogReader::open(&path, &meta.id)?;
            let mut lines: Vec<logs::LogLine> = reader.poll()?.into_iter().filter(|l| want(l)).collect();
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
                eprintln!("vch: the log had {} damaged stretches; {} records were lost to damage", reader.damaged, reader.lost);
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
                "Config": cfg,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ps { all } => {
            println!("{:<14}{:<16}{:<10}{:<30}{}", "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS");
            for meta in state.list() {
                let cfg = vm::load_config(&state.vm_dir(&meta.id)).ok();
                let running = meta.qemu_pid.map(state::pid_alive).unwrap_or(false);
                if !all && !running {
                    continue;
                }
                let status = cfg.as_ref().map(|c| state_text(&meta, c)).unwrap_or_else(|| "unknown".into());
                let mut cmd = meta.command.join(" ");
                if cmd.len() > 28 {
                    cmd.truncate(25);
                    cmd.push_str("...");
                }
                println!("{:<14}{:<16}{:<10}{:<30}{}", &meta.id[..12.min(meta.id.len())], meta.name, meta.image, format!("\"{cmd}\""), status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rm { force, names } => {
            let mut failed = false;
            for n in names {
                let r = (|| -> Result<()> {
                    let meta = state.resolve(&n)?;
                    if let Some(pid) = meta.qemu_pid.filter(|p| state::pid_alive(*p)) {
                        if !force {
                            bail!("container {n} is running: stop it first or use rm -f");
                        }
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).context("kill QEMU")?;
                    }
                    state.remove(&meta.id)?;
                    println!("{n}");
                    Ok(())
                })();
                if let Err(e) = r {
                    eprintln!("vch: {e:#}");
                    failed = true;
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

fn state_text(meta: &state::Meta, cfg: &guestinfo::ContainerConfig) -> String {
    let running = meta.qemu_pid.map(state::pid_alive).unwrap_or(false);
    let (started, code) = vm::session_result(cfg, &meta.id);
    match (running, started.as_str()) {
        (true, "true") => "Up".into(),
        (true, _) => "Starting".into(),
        (false, "true") => format!("Exited ({code})"),
        (false, "") => "Created".into(),
        (false, _) => format!("Failed ({code})"),
    }
}
