//! `guestinfo`: inspect a container VM's extraConfig.
//!
//! ```text
//! guestinfo decode [--tether]   flat map on stdin ⇒ config JSON on stdout
//! guestinfo encode [--wire]     config JSON on stdin ⇒ flat map JSON (sorted keys) on stdout
//! guestinfo keys                flat map on stdin ⇒ the keys a guest can write, in write order
//! ```
//!
//! The flat map is a JSON object of string to string, or VMX-style `key = "value"` lines
//! (a `.vmx` file works: keys the schema does not know are ignored). `<nil>` reads as the
//! empty string. `decode | encode` reproduces any map the original port layer wrote.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use guestinfo::store::parse_vmx;
use guestinfo::transport::{from_wire, to_wire};
use guestinfo::{ContainerConfig, Map};

const USAGE: &str = "usage: guestinfo decode [--tether] | encode [--wire] | keys
  decode    read a flat map (JSON object or `key = \"value\"` lines) on stdin,
            print the decoded container config as JSON
            --tether: the tether's view (skip-decode fields not read)
  encode    read config JSON on stdin, print the flat map as a JSON object
            --wire: write empty values as <nil>, as stored in a .vmx
  keys      read a flat map on stdin, print the guest-writable keys in write order";

fn read_stdin() -> Result<String> {
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .context("reading stdin")?;
    Ok(text)
}

fn read_map(text: &str) -> Result<Map> {
    if text.trim_start().starts_with('{') {
        // A JSON map holds plain values (as `encode` prints them); only `<nil>` needs undoing.
        let map: Map =
            serde_json::from_str(text).context("stdin is not a JSON object of strings")?;
        return Ok(map
            .into_iter()
            .map(|(k, v)| {
                if v == "<nil>" {
                    (k, String::new())
                } else {
                    (k, v)
                }
            })
            .collect());
    }
    // VMX lines hold wire values: `<nil>` is the empty string, an empty value is absent.
    let entries = parse_vmx(text).context("stdin is neither JSON nor `key = \"value\"` lines")?;
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| from_wire(&v).map(|v| (k, v)))
        .collect())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).context("writing JSON")?;
    writeln!(out).context("writing stdout")?;
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let flags: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match (args.first().map(String::as_str), flags.as_slice()) {
        (Some("decode"), rest @ ([] | ["--tether"])) => {
            let map = read_map(&read_stdin()?)?;
            let cfg = if rest.is_empty() {
                guestinfo::decode(&map)?
            } else {
                let mut cfg = ContainerConfig::default();
                guestinfo::decode_into(&map, &mut cfg)?;
                cfg
            };
            print_json(&cfg)
        }
        (Some("encode"), rest @ ([] | ["--wire"])) => {
            let cfg: ContainerConfig =
                serde_json::from_str(&read_stdin()?).context("stdin is not config JSON")?;
            let map = guestinfo::encode(&cfg)?;
            let wire = !rest.is_empty();
            let map: Map = map
                .into_iter()
                .map(|(k, v)| {
                    let v = if wire { to_wire(&v).to_owned() } else { v };
                    (k, v)
                })
                .collect();
            print_json(&map)
        }
        (Some("keys"), []) => {
            let cfg = guestinfo::decode(&read_map(&read_stdin()?)?)?;
            let mut out = io::stdout().lock();
            for (k, v) in guestinfo::guest_writeback(&cfg)? {
                writeln!(out, "{k} = {v:?}").context("writing stdout")?;
            }
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guestinfo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
