//! The `vch netd` process: one poll loop over the switch's connections, the gateway's
//! sockets, the upstream name server socket and the control socket (see the module docs of
//! [`super`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::dns::{self, Datagram, Names};
use super::slirp::Gateway;
use super::switch::{self, Out, Port, Switch, GATEWAY};
use super::{read_definition, NetdError, Reply, Request, Segment, Status};
use crate::network::{PortSpec, Proto};

/// Largest frame QEMU sends over a stream netdev (its `NET_BUFSIZE`).
const MAX_FRAME: usize = 4096 + 65536;
/// Bytes queued for one QEMU beyond which the switch stops reading frames from the others
/// until it catches up (TCP between containers then slows down instead of losing
/// segments).
const HIGH_WATER: usize = 512 * 1024;
/// Bytes queued for one QEMU beyond which frames for it are dropped (a VM that does not
/// read must not hold up the segment).
const HARD_LIMIT: usize = 8 * 1024 * 1024;
/// A receiver that has not taken a byte for this long no longer holds the others up.
const STUCK: Duration = Duration::from_secs(1);
/// How often the loop looks after itself (exit, stale forwards).
const TICK: Duration = Duration::from_millis(500);
/// A netd lives at least this long (its starter is about to connect a VM).
const MIN_LIFE: Duration = Duration::from_secs(3);
/// How long a forwarded query waits for this machine's name server.
const UPSTREAM_WAIT: Duration = Duration::from_secs(4);
/// How long the segment's names are reused before the state directory is read again.
const NAMES_FRESH: Duration = Duration::from_millis(250);
/// Published ports of a container that is not running go after this long (its keeper died
/// without withdrawing them).
const ORPHAN_FORWARD: Duration = Duration::from_secs(30);

/// One QEMU NIC on the switch.
struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    last_progress: Instant,
}

impl Conn {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what the socket takes now. `Err` when the peer is gone.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match nix::sys::socket::send(
                self.stream.as_raw_fd(),
                &self.out[self.out_pos..],
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    self.last_progress = now;
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 1024 * 1024 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Reads what is there and returns the whole frames. `Err` when the peer is gone or
    /// broke the framing.
    fn read_frames(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut frames = Vec::new();
        let mut pos = 0;
        while let Some(head) = self.inbuf.get(pos..pos + 4) {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {len} bytes"),
                ));
            }
            let Some(frame) = self.inbuf.get(pos + 4..pos + 4 + len) else {
                break;
            };
            frames.push(frame.to_vec());
            pos += 4 + len;
        }
        self.inbuf.drain(..pos);
        Ok(frames)
    }
}

/// A published port.
#[derive(Debug, Clone)]
struct Forward {
    owner: String,
    proto: Proto,
    host_ip: Ipv4Addr,
    host_port: u16,
    guest: Ipv4Addr,
    guest_port: u16,
    since: Instant,
}

/// A query forwarded to this machine's name server.
struct Pending {
    port: Port,
    query: Datagram,
    id: u16,
    deadline: Instant,
}

/// Queries the segment does not answer itself go to this machine's name servers.
struct Upstream {
    sock: Option<UdpSocket>,
    servers: Vec<SocketAddr>,
    pending: HashMap<u16, Pending>,
    next_id: u16,
}

impl Upstream {
    fn new() -> Upstream {
        let servers: Vec<SocketAddr> =
            dns::host_nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
                .into_iter()
                .filter(SocketAddr::is_ipv4)
                .collect();
        let sock = UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| tracing::warn!(error = %e, "no socket for forwarding DNS queries"))
            .ok();
        Upstream {
            sock,
            servers,
            pending: HashMap::new(),
            next_id: 1,
        }
    }
}

struct Daemon {
    segment: Segment,
    state: crate::state::State,
    gateway: Gateway,
    /// libslirp's MAC addresses (the gateway's and its DNS address's).
    gateway_macs: [[u8; 6]; 2],
    /// Addresses whose port 53 the segment's resolver answers.
    dns_addrs: [Ipv4Addr; 2],
    switch: Switch,
    conns: BTreeMap<Port, Conn>,
    next_port: Port,
    forwards: Vec<Forward>,
    /// The running containers, as last read from the state directory.
    running: Vec<crate::state::Meta>,
    running_at: Option<Instant>,
    upstream: Upstream,
    frames: u64,
    dropped: u64,
    dns_local: u64,
    dns_forwarded: u64,
}

/// Runs the netd of the segment in `dir` until the segment is no longer used.
pub fn run(state_root: &Path, dir: &Path) -> Result<(), NetdError> {
    let network = read_definition(dir)?;
    let segment = Segment {
        network: network.clone(),
        dir: dir.to_owned(),
    };
    let io = |what, path: &Path| segment.io(what, path);
    // One netd per segment: a second one (two starters raced) leaves quietly.
    let netd_lock = segment.netd_lock();
    let _netd = match crate::state::flock(&netd_lock, false) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            tracing::debug!("another netd serves this segment");
            return Ok(());
        }
        Err(e) => return Err(io("lock", &netd_lock)(e)),
    };
    let (sw_path, ctl_path) = (segment.switch_sock(), segment.ctl_sock());
    // The switch carries every container's frames, the control socket publishes ports:
    // the owner's only.
    let sw = crate::private::bind_unix(&sw_path).map_err(io("listen", &sw_path))?;
    let ctl = crate::private::bind_unix(&ctl_path).map_err(io("listen", &ctl_path))?;
    let state = crate::state::State::open(state_root).map_err(|e| NetdError::Start {
        network: network.name.clone(),
        why: e.to_string(),
    })?;
    let gateway = Gateway::new(&network);
    tracing::info!(network = %network.name, subnet = %network.subnet, gateway = %network.gateway,
        pid = std::process::id(), "segment up");
    let mut d = Daemon {
        gateway_macs: [
            switch::slirp_mac(network.gateway),
            switch::slirp_mac(network.slirp_dns()),
        ],
        dns_addrs: [network.gateway, network.slirp_dns()],
        segment,
        state,
        gateway,
        switch: Switch::new(),
        conns: BTreeMap::new(),
        next_port: GATEWAY + 1,
        forwards: Vec::new(),
        running: Vec::new(),
        running_at: None,
        upstream: Upstream::new(),
        frames: 0,
        dropped: 0,
        dns_local: 0,
        dns_forwarded: 0,
    };
    d.run(&sw, &ctl)
}

impl Daemon {
    fn run(&mut self, sw: &UnixListener, ctl: &UnixListener) -> Result<(), NetdError> {
        let started = Instant::now();
        let mut idle_since = started;
        let mut next_tick = started + TICK;
        loop {
            let now = Instant::now();
            // Frames from the VMs are read only while every receiver keeps up.
            let reading = !self
                .conns
                .values()
                .any(|c| c.queued() > HIGH_WATER && now.duration_since(c.last_progress) < STUCK);
            let mut fds = vec![
                pollfd(sw.as_raw_fd(), libc::POLLIN),
                pollfd(ctl.as_raw_fd(), libc::POLLIN),
                pollfd(
                    self.upstream.sock.as_ref().map_or(-1, |s| s.as_raw_fd()),
                    libc::POLLIN,
                ),
            ];
            let mut conn_at = Vec::with_capacity(self.conns.len());
            for (port, c) in &self.conns {
                let mut ev = 0;
                if reading {
                    ev |= libc::POLLIN;
                }
                if c.queued() > 0 {
                    ev |= libc::POLLOUT;
                }
                conn_at.push((*port, fds.len()));
                fds.push(pollfd(c.stream.as_raw_fd(), ev));
            }
            let mut timeout_ms =
                u32::try_from(next_tick.saturating_duration_since(now).as_millis()).unwrap_or(0);
            self.gateway.fill(&mut fds, &mut timeout_ms);
            // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs that
            // poll only reads and whose `revents` it writes.
            let r = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    i32::try_from(timeout_ms).unwrap_or(i32::MAX),
                )
            };
            let failed = r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted;
            self.gateway.dispatch(&fds, failed);
            self.gateway.fire_timers();
            self.pump_gateway();
            let now = Instant::now();

            if fds[0].revents & libc::POLLIN != 0 {
                self.accept(sw, now);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.control(ctl);
            }
            if fds[2].revents & libc::POLLIN != 0 {
                self.upstream_replies();
            }
            for (port, at) in conn_at {
                let revents = fds[at].revents;
                if revents == 0 {
                    continue;
                }
                let mut gone = revents & (libc::POLLERR | libc::POLLNVAL) != 0;
                if !gone && revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                    match self.conns.get_mut(&port).map(Conn::read_frames) {
                        Some(Ok(frames)) => {
                            for f in frames {
                                self.ingress(port, f, now);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(port, error = %e, "NIC disconnected");
                            gone = true;
                        }
                        None => {}
                    }
                }
                if gone {
                    self.drop_conn(port);
                    idle_since = now;
                }
            }
            self.pump_gateway();
            let mut broken = Vec::new();
            for (port, c) in self.conns.iter_mut() {
                if c.queued() > 0 && c.flush(now).is_err() {
                    broken.push(*port);
                }
            }
            for p in broken {
                self.drop_conn(p);
                idle_since = now;
            }

            if now >= next_tick {
                next_tick = now + TICK;
                self.expire_queries(now);
                self.expire_forwards(now);
                if !self.segment.dir.exists() {
                    tracing::info!("the state directory is gone: segment down");
                    return Ok(());
                }
                if self.conns.is_empty()
                    && now.duration_since(started) > MIN_LIFE
                    && now.duration_since(idle_since) > TICK
                    && self.try_exit()
                {
                    return Ok(());
                }
            }
        }
    }

    /// Ends the netd if nobody holds the segment: removes the sockets while holding the
    /// users' lock exclusively, so a starter waiting on it starts a new netd afterwards.
    fn try_exit(&mut self) -> bool {
        let path = self.segment.users_lock();
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            return false;
        };
        let Ok(held) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            return false;
        };
        // Held until the process is gone (the descriptor closes at exit): a starter waiting
        // on the lock must not find this netd's `netd.lock` still taken and give up.
        std::mem::forget(held);
        for p in [self.segment.switch_sock(), self.segment.ctl_sock()] {
            let _ = std::fs::remove_file(p);
        }
        for f in std::mem::take(&mut self.forwards) {
            self.gateway.remove_forward(f.proto, f.host_ip, f.host_port);
        }
        tracing::info!(network = %self.segment.network.name, "no container uses the network: segment down");
        true
    }

    fn accept(&mut self, sw: &UnixListener, now: Instant) {
        loop {
            match sw.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let port = self.next_port;
                    self.next_port += 1;
                    tracing::debug!(port, "NIC connected");
                    self.conns.insert(
                        port,
                        Conn {
                            stream,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            out_pos: 0,
                            last_progress: now,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the switch socket");
                    return;
                }
            }
        }
    }

    fn drop_conn(&mut self, port: Port) {
        self.conns.remove(&port);
        self.switch.forget(port);
    }

    /// Switches the frames the gateway sent.
    fn pump_gateway(&mut self) {
        let now = Instant::now();
        loop {
            let out = self.gateway.take_output();
            if out.is_empty() {
                return;
            }
            for f in out {
                self.ingress(GATEWAY, f, now);
            }
        }
    }

    /// A frame that came in on `port`.
    fn ingress(&mut self, port: Port, frame: Vec<u8>, now: Instant) {
        self.frames += 1;
        if port != GATEWAY {
            if let Some(d) =
                dns::udp_in(&frame).filter(|d| d.dport == 53 && self.dns_addrs.contains(&d.dst))
            {
                // Learned all the same: the answer goes back to this port.
                self.switch.switch(port, &frame, now);
                self.resolve(port, d);
                return;
            }
            if switch::mac(&frame).is_some_and(|m| self.gateway_macs.contains(&m)) {
                self.switch.switch(port, &frame, now);
                self.gateway.input(&frame);
                return;
            }
        }
        match self.switch.switch(port, &frame, now) {
            Out::One(GATEWAY) => self.gateway.input(&frame),
            Out::One(q) => self.deliver(q, &frame),
            Out::Flood => {
                if port != GATEWAY && switch::for_gateway(&frame) {
                    self.gateway.input(&frame);
                }
                let ports: Vec<Port> = self.conns.keys().copied().filter(|q| *q != port).collect();
                for q in ports {
                    self.deliver(q, &frame);
                }
            }
            Out::Drop => {}
        }
    }

    /// Queues a frame for a QEMU NIC.
    fn deliver(&mut self, port: Port, frame: &[u8]) {
        let Some(c) = self.conns.get_mut(&port) else {
            return;
        };
        if c.queued() + frame.len() > HARD_LIMIT {
            self.dropped += 1;
            return;
        }
        c.out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        c.out.extend_from_slice(frame);
    }

    /// The names a container at `asker` resolves; the containers are read again from the
    /// state directory when what was read is old.
    fn names(&mut self, asker: Ipv4Addr) -> Names {
        let fresh = self.running_at.is_some_and(|t| t.elapsed() < NAMES_FRESH);
        if !fresh {
            self.running = running(&self.state);
            self.running_at = Some(Instant::now());
        }
        names_for(&self.running, &self.segment, asker)
    }

    /// A DNS query from a container on `port`.
    fn resolve(&mut self, port: Port, d: Datagram) {
        let Some(q) = dns::parse_query(&d.payload) else {
            return;
        };
        if let Some((rcode, records)) = self.names(d.src).answer(&q) {
            self.dns_local += 1;
            tracing::debug!(name = %q.name, qtype = q.qtype, answers = records.len(), "DNS: the segment's name");
            let payload = dns::response(&q, rcode, &records);
            self.send_datagram(port, &dns::reply_to(&d, payload));
            return;
        }
        // A name without a dot is a container's name or nothing: the segment answers, no
        // name server out there knows it (and one that does not answer would make the
        // container's resolver wait).
        if !q.name.contains('.') {
            self.dns_local += 1;
            let payload = dns::response(&q, dns::RCODE_NXDOMAIN, &[]);
            self.send_datagram(port, &dns::reply_to(&d, payload));
            return;
        }
        self.dns_forwarded += 1;
        let up = &mut self.upstream;
        let sent = match (&up.sock, up.servers.first()) {
            (Some(sock), Some(server)) => {
                let id = up.next_id;
                up.next_id = up.next_id.wrapping_add(1).max(1);
                let ok = sock.send_to(&dns::with_id(&d.payload, id), server).is_ok();
                if ok {
                    up.pending.insert(
                        id,
                        Pending {
                            port,
                            query: d.clone(),
                            id: q.id,
                            deadline: Instant::now() + UPSTREAM_WAIT,
                        },
                    );
                }
                ok
            }
            _ => false,
        };
        if !sent {
            let payload = dns::response(&q, dns::RCODE_SERVFAIL, &[]);
            self.send_datagram(port, &dns::reply_to(&d, payload));
        }
    }

    fn send_datagram(&mut self, port: Port, d: &Datagram) {
        let frame = dns::udp_frame(d);
        self.deliver(port, &frame);
    }

    fn upstream_replies(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(sock) = &self.upstream.sock else {
                return;
            };
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if !self.upstream.servers.contains(&from) {
                continue;
            }
            let msg = &buf[..n];
            let Some(p) = dns::id_of(msg).and_then(|id| self.upstream.pending.remove(&id)) else {
                continue;
            };
            let reply = dns::reply_to(&p.query, dns::with_id(msg, p.id));
            self.send_datagram(p.port, &reply);
        }
    }

    fn expire_queries(&mut self, now: Instant) {
        let late: Vec<u16> = self
            .upstream
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.upstream.pending.remove(&id) {
                if let Some(q) = dns::parse_query(&p.query.payload) {
                    let payload = dns::response(&q, dns::RCODE_SERVFAIL, &[]);
                    self.send_datagram(p.port, &dns::reply_to(&p.query, payload));
                }
            }
        }
    }

    /// Handles the control connections waiting.
    fn control(&mut self, ctl: &UnixListener) {
        loop {
            let stream = match ctl.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if let Err(e) = self.control_one(stream) {
                tracing::debug!(error = %e, "control connection");
            }
        }
    }

    fn control_one(&mut self, stream: UnixStream) -> io::Result<()> {
        // Our own tools on the other end: a short blocking exchange.
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        BufReader::new((&stream).take(64 * 1024)).read_line(&mut line)?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => self.handle(req),
            Err(e) => Reply {
                error: Some(format!("bad request: {e}")),
                status: None,
            },
        };
        let mut text = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        text.push(b'\n');
        (&stream).write_all(&text)
    }

    fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Ping => Reply::default(),
            Request::Status => Reply {
                error: None,
                status: Some(Status {
                    pid: std::process::id(),
                    ports: self.conns.len(),
                    macs: self.switch.len(),
                    forwards: self
                        .forwards
                        .iter()
                        .map(|f| {
                            format!(
                                "{} {}:{}->{}:{}/{}",
                                f.owner,
                                f.host_ip,
                                f.host_port,
                                f.guest,
                                f.guest_port,
                                f.proto.as_str()
                            )
                        })
                        .collect(),
                    frames: self.frames,
                    dropped: self.dropped,
                    dns_local: self.dns_local,
                    dns_forwarded: self.dns_forwarded,
                }),
            },
            Request::Forward {
                owner,
                guest,
                ports,
            } => match self.forward(&owner, guest, &ports) {
                Ok(()) => Reply::default(),
                Err(e) => Reply {
                    error: Some(e),
                    status: None,
                },
            },
            Request::Unforward { owner } => {
                self.unforward(&owner);
                Reply::default()
            }
        }
    }

    /// Publishes a container's ports, all or none.
    fn forward(&mut self, owner: &str, guest: Ipv4Addr, ports: &[PortSpec]) -> Result<(), String> {
        // A container started again publishes afresh.
        self.unforward(owner);
        let mut added: Vec<Forward> = Vec::new();
        let mut fail = None;
        'all: for spec in ports {
            for i in 0..spec.count {
                let f = Forward {
                    owner: owner.to_owned(),
                    proto: spec.proto,
                    host_ip: spec.host_ip,
                    host_port: spec.host_port + i,
                    guest,
                    guest_port: spec.container_port + i,
                    since: Instant::now(),
                };
                let clash = self.forwards.iter().find(|o| {
                    o.proto == f.proto
                        && o.host_port == f.host_port
                        && (o.host_ip == f.host_ip
                            || o.host_ip.is_unspecified()
                            || f.host_ip.is_unspecified())
                });
                if let Some(o) = clash {
                    fail = Some(format!(
                        "host port {}:{}/{} is already published by container {}",
                        f.host_ip,
                        f.host_port,
                        f.proto.as_str(),
                        o.owner.get(..12).unwrap_or(&o.owner)
                    ));
                    break 'all;
                }
                if self
                    .gateway
                    .add_forward(f.proto, f.host_ip, f.host_port, f.guest, f.guest_port)
                    .is_err()
                {
                    fail = Some(format!(
                        "cannot publish {}:{}/{}: the host port is not available (in use?)",
                        f.host_ip,
                        f.host_port,
                        f.proto.as_str()
                    ));
                    break 'all;
                }
                self.forwards.push(f.clone());
                added.push(f);
            }
        }
        if let Some(why) = fail {
            for f in added {
                self.gateway.remove_forward(f.proto, f.host_ip, f.host_port);
            }
            self.forwards.retain(|f| f.owner != owner);
            return Err(why);
        }
        tracing::info!(owner, ports = self.forwards.iter().filter(|f| f.owner == owner).count(), %guest, "ports published");
        Ok(())
    }

    fn unforward(&mut self, owner: &str) {
        let (gone, kept): (Vec<Forward>, Vec<Forward>) = std::mem::take(&mut self.forwards)
            .into_iter()
            .partition(|f| f.owner == owner);
        self.forwards = kept;
        for f in &gone {
            self.gateway.remove_forward(f.proto, f.host_ip, f.host_port);
        }
        if !gone.is_empty() {
            tracing::info!(owner, ports = gone.len(), "ports withdrawn");
        }
    }

    /// Withdraws the ports of containers that stopped without withdrawing them.
    fn expire_forwards(&mut self, now: Instant) {
        let mut owners: Vec<String> = self
            .forwards
            .iter()
            .filter(|f| now.duration_since(f.since) > ORPHAN_FORWARD)
            .map(|f| f.owner.clone())
            .collect();
        owners.dedup();
        for owner in owners {
            let alive = self
                .state
                .meta(&owner)
                .is_ok_and(|m| vm_alive(&m) || keeper_alive(&m));
            if !alive {
                self.unforward(&owner);
            }
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Whether a process with this PID runs and mentions `needle` on its command line (a PID in
/// a metadata file may have been reused since).
fn alive_as(pid: Option<u32>, needle: &str) -> bool {
    let Some(pid) = pid else { return false };
    crate::state::pid_alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
            cmd.windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes())
        })
}

fn vm_alive(m: &crate::state::Meta) -> bool {
    // The PID in the metadata may have been reused since: QEMU's command line names the VM.
    alive_as(m.qemu_pid, m.id.get(..12).unwrap_or(&m.id))
}

fn keeper_alive(m: &crate::state::Meta) -> bool {
    alive_as(m.keeper_pid, &m.id)
}

/// What DNS answers to a container on a segment: the running containers by name, short and
/// full ID and aliases, on every user-defined network the asking container is on (as
/// docker's resolver answers: a container on two networks finds the containers of both,
/// each at its address on that network); none on the default `bridge` (docker's rule: its
/// default bridge network resolves no container names). `asker` is the query's source
/// address on this segment.
pub(super) fn names_for(metas: &[crate::state::Meta], segment: &Segment, asker: Ipv4Addr) -> Names {
    let key = |n: &crate::network::Network| Segment::new(Path::new(""), n).dir;
    let here = key(&segment.network);
    // The asker's networks; a stranger (not a container of the state directory) gets
    // this segment's names.
    let mut networks: Vec<std::path::PathBuf> = metas
        .iter()
        .find(|m| {
            m.nics
                .iter()
                .any(|n| key(&n.network) == here && n.address() == Some(asker))
        })
        .map(|m| m.nics.iter().map(|n| key(&n.network)).collect())
        .unwrap_or_default();
    if !networks.contains(&here) {
        networks.push(here);
    }
    let mut names = Names::default();
    for m in metas {
        for nic in m.nics.iter() {
            if nic.network.is_builtin() || !networks.contains(&key(&nic.network)) {
                continue;
            }
            let Some(addr) = nic.address() else { continue };
            let mut all = vec![m.name.clone()];
            all.extend(m.id.get(..12).map(str::to_owned));
            all.push(m.id.clone());
            all.extend(nic.aliases.iter().cloned());
            names.add(addr, &all);
        }
    }
    names
}

/// The containers of the state directory whose VM runs.
fn running(state: &crate::state::State) -> Vec<crate::state::Meta> {
    state.list().into_iter().filter(vm_alive).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{self, AttachedNic, Network};
    use crate::state::Meta;

    fn net(name: &str, subnet: &str) -> Network {
        let mut n = Network::bridge();
        n.name = name.into();
        n.subnet = subnet.parse().unwrap();
        n.gateway = n
            .subnet
            .network()
            .to_string()
            .replace(".0.0", ".0.1")
            .parse()
            .unwrap();
        n.created = 1;
        n
    }

    fn meta(name: &str, id: &str, nics: &[(&Network, &str, &[&str])]) -> Meta {
        Meta {
            id: id.into(),
            name: name.into(),
            nics: nics
                .iter()
                .enumerate()
                .map(|(i, (n, ip, aliases))| AttachedNic {
                    network: (*n).clone(),
                    slot: network::nic_slot(i).unwrap(),
                    model: Default::default(),
                    mac: network::mac_for(id, i),
                    ip: None,
                    address: Some(ip.parse().unwrap()),
                    aliases: aliases.iter().map(|a| a.to_string()).collect(),
                    ports: vec![],
                })
                .collect(),
            ..Default::default()
        }
    }

    fn ask(names: &Names, name: &str) -> Vec<dns::Record> {
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        let q = dns::parse_query(&m).unwrap();
        names.answer(&q).map(|(_, r)| r).unwrap_or_default()
    }

    #[test]
    fn names_are_those_of_the_askers_networks() {
        let (front, back, bridge) = (
            net("front", "172.17.0.0/16"),
            net("back", "172.18.0.0/16"),
            Network::bridge(),
        );
        let metas = vec![
            meta(
                "web",
                "aaaaaaaaaaaa1111",
                &[
                    (&front, "172.17.0.2", &["www"]),
                    (&bridge, "172.16.0.2", &[]),
                ],
            ),
            meta(
                "db",
                "bbbbbbbbbbbb2222",
                &[(&back, "172.18.0.2", &["database"])],
            ),
            meta(
                "app",
                "cccccccccccc3333",
                &[(&front, "172.17.0.3", &[]), (&back, "172.18.0.3", &[])],
            ),
            meta("lone", "dddddddddddd4444", &[(&bridge, "172.16.0.3", &[])]),
        ];
        let seg = |n: &Network| Segment::new(Path::new("/s"), n);
        let a = |s: &str| vec![dns::Record::A(s.parse().unwrap())];
        // web on front: front's names only, by name, alias, short and full ID.
        let names = names_for(&metas, &seg(&front), "172.17.0.2".parse().unwrap());
        assert_eq!(ask(&names, "app"), a("172.17.0.3"));
        assert_eq!(ask(&names, "WWW"), a("172.17.0.2"));
        assert_eq!(ask(&names, "cccccccccccc"), a("172.17.0.3"));
        assert_eq!(ask(&names, "cccccccccccc3333"), a("172.17.0.3"));
        assert!(ask(&names, "db").is_empty(), "another network");
        assert!(ask(&names, "lone").is_empty(), "the default bridge");
        // app on both: both networks' names, each at its address there.
        let names = names_for(&metas, &seg(&front), "172.17.0.3".parse().unwrap());
        assert_eq!(ask(&names, "db"), a("172.18.0.2"));
        assert_eq!(ask(&names, "database"), a("172.18.0.2"));
        assert_eq!(ask(&names, "web"), a("172.17.0.2"));
        // On the default bridge: no names at all.
        let names = names_for(&metas, &seg(&bridge), "172.16.0.3".parse().unwrap());
        assert!(names.is_empty());
        // A stranger on front gets front's names.
        let names = names_for(&metas, &seg(&front), "172.17.9.9".parse().unwrap());
        assert_eq!(ask(&names, "web"), a("172.17.0.2"));
        assert!(ask(&names, "db").is_empty());
    }
}
