//! The image store from the command line, for experiments and measurements until `vch`
//! carries these commands:
//!
//! ```sh
//! cargo run --release -p qemu-harness --example image-store -- load -i busybox.tar
//! cargo run --release -p qemu-harness --example image-store -- import rootfs.tar debian:12
//! cargo run --release -p qemu-harness --example image-store -- images
//! cargo run --release -p qemu-harness --example image-store -- disk debian:12 /tmp/vm
//! cargo run --release -p qemu-harness --example image-store -- du
//! ```
//!
//! The state directory is `--state`, else vch's (`$VCH_STATE`, ...).

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use qemu_harness::images::{ImageStore, ImportOptions, Removed, Terminal};

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    state: Option<PathBuf>,
    /// Image filesystem size in MiB.
    #[arg(long)]
    disk_mb: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a docker-save archive or OCI layout (stdin without -i).
    Load {
        #[arg(short)]
        i: Option<PathBuf>,
    },
    /// Import a rootfs tarball (`-` = stdin).
    Import {
        file: String,
        reference: Option<String>,
        #[arg(short, long)]
        change: Vec<String>,
        #[arg(short, long)]
        message: Option<String>,
    },
    Images,
    Inspect {
        reference: String,
    },
    Tag {
        source: String,
        target: String,
    },
    Rmi {
        #[arg(short, long)]
        force: bool,
        reference: String,
    },
    Save {
        #[arg(short)]
        o: PathBuf,
        references: Vec<String>,
    },
    /// Make a container disk (overlay) of an image in a directory.
    Disk {
        reference: String,
        vm_dir: PathBuf,
    },
    /// Bytes on disk of the store's parts.
    Du,
}

fn input(path: Option<&std::path::Path>) -> io::Result<Box<dyn Read>> {
    Ok(match path {
        Some(p) if p.as_os_str() != "-" => Box::new(File::open(p)?),
        _ => Box::new(io::stdin()),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let state = cli
        .state
        .unwrap_or_else(qemu_harness::state::State::default_dir);
    let mut store = ImageStore::new(&state);
    if let Some(mb) = cli.disk_mb {
        store = store.with_disk_size(mb << 20);
    }
    let progress = Terminal::stderr();
    let t = Instant::now();
    match cli.cmd {
        Cmd::Load { i } => {
            for img in store.load(input(i.as_deref())?, &progress)? {
                for (tag, old) in &img.moved {
                    println!(
                        "The image {tag} already exists, renaming the old one with ID {old} to empty string"
                    );
                }
                if img.tags.is_empty() {
                    println!("Loaded image ID: {}", img.id);
                }
                for t in &img.tags {
                    println!("Loaded image: {t}");
                }
            }
        }
        Cmd::Import {
            file,
            reference,
            change,
            message,
        } => {
            let opts = ImportOptions {
                reference,
                changes: change,
                message,
            };
            let img = store.import(input(Some(file.as_ref()))?, &opts, &progress)?;
            println!("{}", img.id);
        }
        Cmd::Images => {
            println!("{:<40} {:<14} {:>10}", "REPOSITORY:TAG", "IMAGE ID", "SIZE");
            for i in store.list()? {
                let size = format!("{:.1}MB", i.size as f64 / 1e6);
                if i.repo_tags.is_empty() {
                    println!("{:<40} {:<14} {:>10}", "<none>:<none>", i.id.short(), size);
                }
                for t in &i.repo_tags {
                    println!("{t:<40} {:<14} {size:>10}", i.id.short());
                }
            }
        }
        Cmd::Inspect { reference } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&store.inspect(&reference)?)?
            );
        }
        Cmd::Tag { source, target } => store.tag(&source, &target)?,
        Cmd::Rmi { force, reference } => {
            for r in store.remove(&reference, force, &|_| None)? {
                match r {
                    Removed::Untagged(t) => println!("Untagged: {t}"),
                    Removed::Deleted(id) => println!("Deleted: {id}"),
                }
            }
        }
        Cmd::Save { o, references } => {
            let refs: Vec<&str> = references.iter().map(String::as_str).collect();
            store.save(&refs, io::BufWriter::new(File::create(o)?))?;
        }
        Cmd::Disk { reference, vm_dir } => {
            let id = store.resolve(&reference)?;
            let disk = store.container_disk(&id, &vm_dir, &progress)?;
            println!("{} ({})", disk.path.display(), disk.format);
        }
        Cmd::Du => {
            let u = store.usage();
            println!(
                "layers {} B\ndisks  {} B\ndirs   {} B",
                u.layers, u.disks, u.dirs
            );
        }
    }
    eprintln!("({:.2} s)", t.elapsed().as_secs_f64());
    Ok(())
}
