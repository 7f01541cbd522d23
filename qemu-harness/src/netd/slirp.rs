//! The segment's gateway: libslirp (the user-mode TCP/IP stack of QEMU's `-netdev user`)
//! through its Rust binding, driven from the netd's poll loop.
//!
//! libslirp is single-threaded and callback-driven: frames for it go in with
//! [`Gateway::input`]; the frames it sends come out of its `send_packet` callback, which
//! queues them for the switch ([`Gateway::take_output`]); its sockets join the loop's
//! `poll` ([`Gateway::fill`] / [`Gateway::dispatch`]); its timers are kept here and fired by
//! the loop ([`Gateway::fire_timers`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use libslirp::{Context, Handler, PollEvents};
use libslirp_sys::{in6_addr, in_addr, SlirpConfig};

use crate::network::{Network, Proto};

/// Frames libslirp sent, waiting for the switch.
type Outbox = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// A libslirp timer.
pub struct Timer {
    /// Expiry in ms of [`Clock`] time; `None` when not armed.
    expire: Cell<Option<i64>>,
    func: RefCell<Box<dyn FnMut()>>,
}

/// The state the callbacks share with the loop.
struct Shared {
    outbox: Outbox,
    timers: RefCell<Vec<Weak<Timer>>>,
    start: Instant,
    /// libslirp asked to be polled again soon (`notify`).
    kicked: Cell<bool>,
}

impl Shared {
    fn now_ns(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }
}

struct Callbacks(Rc<Shared>);

impl Handler for Callbacks {
    type Timer = Rc<Timer>;

    fn clock_get_ns(&mut self) -> i64 {
        self.0.now_ns()
    }

    fn send_packet(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.outbox.borrow_mut().push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn register_poll_fd(&mut self, _fd: RawFd) {}

    fn unregister_poll_fd(&mut self, _fd: RawFd) {}

    fn guest_error(&mut self, msg: &str) {
        tracing::warn!(
            message = msg,
            "gateway: a guest sent something libslirp refuses"
        );
    }

    fn notify(&mut self) {
        self.0.kicked.set(true);
    }

    fn timer_new(&mut self, func: Box<dyn FnMut()>) -> Box<Rc<Timer>> {
        let t = Rc::new(Timer {
            expire: Cell::new(None),
            func: RefCell::new(func),
        });
        self.0.timers.borrow_mut().push(Rc::downgrade(&t));
        Box::new(t)
    }

    fn timer_mod(&mut self, timer: &mut Box<Rc<Timer>>, expire_time: i64) {
        timer.expire.set(Some(expire_time));
    }

    fn timer_free(&mut self, timer: Box<Rc<Timer>>) {
        // Dropping the last strong reference: the weak one in the list dies with it.
        timer.expire.set(None);
    }
}

/// libslirp as the segment's gateway.
pub struct Gateway {
    ctx: Context<Callbacks>,
    shared: Rc<Shared>,
}

fn poll_bits(e: PollEvents) -> libc::c_short {
    let mut b = 0;
    if e.has_in() {
        b |= libc::POLLIN;
    }
    if e.has_out() {
        b |= libc::POLLOUT;
    }
    if e.has_pri() {
        b |= libc::POLLPRI;
    }
    if e.has_err() {
        b |= libc::POLLERR;
    }
    if e.has_hup() {
        b |= libc::POLLHUP;
    }
    b
}

fn slirp_events(b: libc::c_short) -> PollEvents {
    let mut e = PollEvents::empty();
    if b & libc::POLLIN != 0 {
        e |= PollEvents::poll_in();
    }
    if b & libc::POLLOUT != 0 {
        e |= PollEvents::poll_out();
    }
    if b & libc::POLLPRI != 0 {
        e |= PollEvents::poll_pri();
    }
    if b & libc::POLLERR != 0 {
        e |= PollEvents::poll_err();
    }
    if b & (libc::POLLHUP | libc::POLLNVAL) != 0 {
        e |= PollEvents::poll_hup();
    }
    e
}

impl Gateway {
    /// A gateway for `net`: libslirp with the subnet as its network, the gateway as its
    /// host address and the network's DNS address as its name server (the netd answers
    /// DNS itself; libslirp answers ARP for both). No DHCP (the port layer assigns
    /// addresses), no IPv6, no TFTP.
    pub fn new(net: &Network) -> Gateway {
        let shared = Rc::new(Shared {
            outbox: Rc::new(RefCell::new(VecDeque::new())),
            timers: RefCell::new(Vec::new()),
            start: Instant::now(),
            kicked: Cell::new(false),
        });
        let unspecified6 = in6_addr { s6_addr: [0; 16] };
        let config = SlirpConfig {
            version: 2,
            restricted: 0,
            in_enabled: true,
            vnetwork: in_addr::from(net.subnet.network()),
            vnetmask: in_addr::from(net.subnet.mask()),
            vhost: in_addr::from(net.gateway),
            in6_enabled: false,
            vprefix_addr6: unspecified6,
            vprefix_len: 0,
            vhost6: unspecified6,
            vhostname: std::ptr::null(),
            tftp_server_name: std::ptr::null(),
            tftp_path: std::ptr::null(),
            bootfile: std::ptr::null(),
            vdhcp_start: in_addr::from(net.dhcp_start()),
            vnameserver: in_addr::from(net.slirp_dns()),
            vnameserver6: unspecified6,
            vdnssearch: std::ptr::null_mut(),
            vdomainname: std::ptr::null(),
            if_mtu: 1500,
            if_mru: 1500,
            disable_host_loopback: false,
            enable_emu: false,
            outbound_addr: std::ptr::null(),
            outbound_addr6: std::ptr::null(),
            disable_dns: false,
            disable_dhcp: true,
        };
        // libslirp copies what it keeps of the config (addresses; no string is set) before
        // `new_with_config` returns, so the locals above may go.
        let ctx = Context::new_with_config(&config, Callbacks(shared.clone()));
        Gateway { ctx, shared }
    }

    /// A frame from the segment for the gateway.
    pub fn input(&self, frame: &[u8]) {
        self.ctx.input(frame);
    }

    /// The frames the gateway sent since the last call.
    pub fn take_output(&self) -> VecDeque<Vec<u8>> {
        std::mem::take(&mut *self.shared.outbox.borrow_mut())
    }

    /// Appends the gateway's sockets to `fds` and lowers `timeout_ms` to when it next needs
    /// to run. Returns where its entries start.
    pub fn fill(&self, fds: &mut Vec<libc::pollfd>, timeout_ms: &mut u32) -> usize {
        let first = fds.len();
        self.ctx.pollfds_fill(timeout_ms, |fd, events| {
            fds.push(libc::pollfd {
                fd,
                events: poll_bits(events),
                revents: 0,
            });
            i32::try_from(fds.len() - 1).unwrap_or(i32::MAX)
        });
        if self.shared.kicked.replace(false) {
            *timeout_ms = 0;
        }
        if let Some(next) = self.next_timer() {
            *timeout_ms = (*timeout_ms).min(u32::try_from(next.as_millis()).unwrap_or(u32::MAX));
        }
        first
    }

    /// Lets the gateway act on what `poll` returned for its entries of `fds` (made by
    /// [`Gateway::fill`]).
    pub fn dispatch(&self, fds: &[libc::pollfd], poll_failed: bool) {
        self.ctx.pollfds_poll(poll_failed, |idx| {
            usize::try_from(idx)
                .ok()
                .and_then(|i| fds.get(i))
                .map(|p| slirp_events(p.revents))
                .unwrap_or_else(PollEvents::empty)
        });
    }

    fn next_timer(&self) -> Option<Duration> {
        let now_ms = self.shared.now_ns() / 1_000_000;
        self.shared
            .timers
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|t| t.expire.get())
            .min()
            .map(|at| Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)))
    }

    /// Runs the timers that are due.
    pub fn fire_timers(&self) {
        let now_ms = self.shared.now_ns() / 1_000_000;
        // Collected first: a timer's function may create, arm or free timers.
        let due: Vec<Rc<Timer>> = {
            let mut timers = self.shared.timers.borrow_mut();
            timers.retain(|w| w.strong_count() > 0);
            timers
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|t| t.expire.get().is_some_and(|at| at <= now_ms))
                .collect()
        };
        for t in due {
            t.expire.set(None);
            if let Ok(mut f) = t.func.try_borrow_mut() {
                f();
            }
        }
    }

    /// Publishes `host_ip:host_port` (`proto`) to `guest:guest_port`. Fails when the host
    /// port cannot be bound.
    pub fn add_forward(
        &self,
        proto: Proto,
        host_ip: Ipv4Addr,
        host_port: u16,
        guest: Ipv4Addr,
        guest_port: u16,
    ) -> Result<(), ()> {
        // SAFETY: the context pointer is libslirp's live instance, owned by `self.ctx` for
        // as long as `self` exists; the other arguments are plain values. libslirp is used
        // from this thread only.
        let r = unsafe {
            libslirp_sys::slirp_add_hostfwd(
                self.ctx.inner.context,
                i32::from(proto == Proto::Udp),
                in_addr::from(host_ip),
                i32::from(host_port),
                in_addr::from(guest),
                i32::from(guest_port),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Withdraws a published port.
    pub fn remove_forward(&self, proto: Proto, host_ip: Ipv4Addr, host_port: u16) {
        // SAFETY: as in `add_forward`.
        let _ = unsafe {
            libslirp_sys::slirp_remove_hostfwd(
                self.ctx.inner.context,
                i32::from(proto == Proto::Udp),
                in_addr::from(host_ip),
                i32::from(host_port),
            )
        };
    }
}
