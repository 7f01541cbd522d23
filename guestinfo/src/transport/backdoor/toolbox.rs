//! The minimal VMware Tools service the tether embeds (tether-lifecycle.md §13): a TCLO poll
//! loop answering the VMX's requests, turning power operations and relayed VIX
//! `StartProgram` actions into [`HostCommand`]s.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};

use super::channel::{rpci, Channel, TCLO_PROTOCOL};
use super::port::Port;
use super::vix;
use crate::transport::HostCommand;

/// `TOOLS_VERSION_UNMANAGED`.
const TOOLS_VERSION_UNMANAGED: u32 = 0x7fff_ffff;
/// Poll delay ceiling, in 10 ms ticks (`RPCIN_MAX_DELAY`).
pub const MAX_DELAY: u32 = 10;
/// Delay after an RPC error before the channels are reopened (5 s).
pub const RESET_DELAY: u32 = 500;

/// State shared between the poll thread and the [`super::Backdoor`] handle.
#[derive(Debug)]
pub struct ToolboxState {
    /// VIX users allowed to act: the container id and `label` volume labels.
    pub users: Mutex<BTreeSet<String>>,
    /// Answer to `Set_Option broadcastIP 1`.
    pub primary_ip: Mutex<Option<String>>,
    /// Where the commands the VMX sends go (the tether's [`crate::Transport::commands`]).
    pub commands: Sender<HostCommand>,
    next_pid: AtomicU64,
}

impl ToolboxState {
    /// A toolbox that lets nobody act yet and sends commands to `commands`.
    pub fn new(commands: Sender<HostCommand>) -> ToolboxState {
        ToolboxState {
            users: Mutex::new(BTreeSet::new()),
            primary_ip: Mutex::new(None),
            commands,
            next_pid: AtomicU64::new(1),
        }
    }
}

/// Power operations: request name ⇒ `GuestOsState`.
const POWER_OPS: [(&str, u32); 5] = [
    ("OS_Halt", 1),
    ("OS_Reboot", 2),
    ("OS_PowerOn", 3),
    ("OS_Resume", 4),
    ("OS_Suspend", 5),
];

/// Answers one TCLO request. Outbound RPCI messages (capabilities, state changes) go through
/// `port`.
pub fn dispatch(request: &[u8], port: &dyn Port, state: &ToolboxState) -> Vec<u8> {
    let (name, args) = match request.iter().position(|&b| b == b' ') {
        Some(i) => (
            request.get(..i).unwrap_or_default(),
            request.get(i + 1..).unwrap_or_default(),
        ),
        None => (request, &[][..]),
    };
    let end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let name = String::from_utf8_lossy(name.get(..end).unwrap_or_default()).into_owned();
    let send = |msg: &[u8]| {
        if let Err(e) = rpci(port, msg) {
            tracing::warn!("toolbox: sending {:?}: {e}", String::from_utf8_lossy(msg));
        }
    };
    let ok = |data: &[u8]| [b"OK ".as_slice(), data].concat();
    match name.as_str() {
        // The original also sends the NIC info record here; the VCH does not need it.
        "reset" => ok(b"ATR toolbox"),
        "ping" => ok(b""),
        "Set_Option" => {
            if args == b"broadcastIP 1" {
                let ip = state
                    .primary_ip
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(ip) = ip {
                    send(format!("info-set guestinfo.ip {ip}").as_bytes());
                }
            }
            ok(b"")
        }
        "Capabilities_Register" => {
            send(format!("tools.set.version {TOOLS_VERSION_UNMANAGED}").as_bytes());
            send(b"tools.capability.statechange");
            ok(b"")
        }
        "Vix_1_Relayed_Command" => {
            let users = state
                .users
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let mut pid = || state.next_pid.fetch_add(1, Ordering::Relaxed);
            match vix::dispatch(args, &|u| users.contains(u), &mut pid) {
                Ok(out) => {
                    if let Some(cmd) = out.command {
                        let _ = state.commands.send(cmd);
                    }
                    ok(&out.reply)
                }
                Err(e) => {
                    tracing::warn!("toolbox: bad VIX request: {e}");
                    b"ERR ".to_vec()
                }
            }
        }
        op => match POWER_OPS.iter().find(|(n, _)| *n == op) {
            Some(&(_, power_state)) => {
                // Reboot has no handler in a container (reported as failed); halt does.
                let rc = if power_state == 2 { 0 } else { 1 };
                send(format!("tools.os.statechange.status {rc} {power_state}\0").as_bytes());
                if power_state == 1 {
                    let _ = state.commands.send(HostCommand::Halt);
                }
                ok(b"")
            }
            None => {
                tracing::debug!("toolbox: unknown command {op:?}");
                b"Unknown Command".to_vec()
            }
        },
    }
}

/// The TCLO poll loop, one iteration at a time (the thread sleeps `10 ms × delay` between
/// steps).
#[derive(Debug)]
pub struct Service {
    port: Arc<dyn Port>,
    state: Arc<ToolboxState>,
    channel: Option<Channel>,
    response: Vec<u8>,
    /// Ticks of 10 ms to wait before the next step.
    pub delay: u32,
}

impl Service {
    /// A service polling the VMX through `port`, with channels opened on the first step.
    pub fn new(port: Arc<dyn Port>, state: Arc<ToolboxState>) -> Service {
        Service {
            port,
            state,
            channel: None,
            response: Vec::new(),
            delay: 0,
        }
    }

    /// 0 → 1 → 2 → 4 → 8 → 10 ticks while idle. A delay already above the ceiling (after a
    /// reset) is kept until a request arrives, as in the original.
    fn backoff(&mut self) {
        if self.delay < MAX_DELAY {
            self.delay = if self.delay == 0 {
                1
            } else {
                (self.delay * 2).min(MAX_DELAY)
            };
        }
    }

    fn reset(&mut self) {
        if let Some(chan) = self.channel.take() {
            let _ = chan.close(&*self.port);
        }
        self.delay = RESET_DELAY;
    }

    /// Sends the previous response (possibly empty, so the VMX knows we are alive) and
    /// handles the next request, if any.
    pub fn step(&mut self) {
        let chan = match self.channel {
            Some(c) => c,
            None => match Channel::open(&*self.port, TCLO_PROTOCOL) {
                Ok(c) => {
                    self.channel = Some(c);
                    c
                }
                Err(e) => {
                    tracing::debug!("toolbox: {e}");
                    self.delay = RESET_DELAY;
                    return;
                }
            },
        };
        let response = std::mem::take(&mut self.response);
        if let Err(e) = chan.send(&*self.port, &response) {
            tracing::warn!("toolbox: {e}");
            self.reset();
            return;
        }
        match chan.receive(&*self.port) {
            Ok(Some(request)) if !request.is_empty() => {
                self.response = dispatch(&request, &*self.port, &self.state);
                self.delay = 0;
            }
            Ok(_) => self.backoff(),
            Err(e) => {
                tracing::warn!("toolbox: {e}");
                self.reset();
            }
        }
    }

    /// Closes the TCLO channel.
    pub fn close(&mut self) {
        if let Some(chan) = self.channel.take() {
            let _ = chan.close(&*self.port);
        }
    }
}
