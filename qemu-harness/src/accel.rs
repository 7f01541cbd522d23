//! Which accelerator a VM gets: KVM where it really runs a guest, TCG otherwise.
//!
//! A `/dev/kvm` that opens proves nothing: on machines without VT-x exposed to them the
//! device opens, a VM and a vCPU can be made and even run a few instructions, but at about
//! 10^5 instructions a second (measured: SeaBIOS under QEMU `-accel kvm` was still in its
//! first loops after 10 s), so a guest never boots. So `auto` decides with a probe that runs
//! a guest at speed: a child process makes a VM and a vCPU with the KVM ioctls, runs a
//! real-mode loop of 20 million rounds that ends in `hlt` and checks its result. The parent waits for it under a deadline and kills it when it passes, so
//! the probe cannot hang the caller. The answer is cached per boot of the host (keyed by
//! `/proc/sys/kernel/random/boot_id`): whether KVM works does not change while it runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long the probe's child may take. A working KVM answers in a few milliseconds; a
/// loaded machine may need some time to fork and page in.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// The environment variable `--accel` defaults to.
pub const ENV: &str = "VCH_ACCEL";

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Request {
    /// KVM when the probe says it works, TCG otherwise.
    #[default]
    Auto,
    /// KVM or an error.
    Kvm,
    /// Always TCG.
    Tcg,
}

impl Request {
    /// Parses `auto`, `kvm` or `tcg` (an empty string is `auto`).
    pub fn parse(s: &str) -> Result<Request, AccelError> {
        match s.trim() {
            "" | "auto" => Ok(Request::Auto),
            "kvm" => Ok(Request::Kvm),
            "tcg" => Ok(Request::Tcg),
            other => Err(AccelError::Unknown(other.to_owned())),
        }
    }

    /// `$VCH_ACCEL`, or `auto` when unset.
    pub fn from_env() -> Result<Request, AccelError> {
        Request::parse(&std::env::var(ENV).unwrap_or_default())
    }

    /// The form [`Request::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Auto => "auto",
            Request::Kvm => "kvm",
            Request::Tcg => "tcg",
        }
    }
}

/// The accelerator a VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU's name for it (`-accel NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The QEMU arguments that select it. Under KVM the guest sees the host's CPU (no
    /// emulated model to translate features for); the kernel config works with both.
    pub fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg"],
        }
    }
}

/// Accelerator errors.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("unknown accelerator {0:?} (auto, kvm, tcg)")]
    Unknown(String),
    #[error("--accel kvm: KVM is not usable on this host: {0}")]
    KvmUnusable(String),
}

/// The probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub usable: bool,
    /// Why not (empty when usable).
    pub reason: String,
}

/// The cached verdict, with the boot it holds for.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    boot_id: String,
    verdict: Verdict,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The probe's verdict, from `cache` when it was written during this boot of the host,
/// else probed now and written there.
pub fn kvm_verdict(cache: &Path) -> Verdict {
    let boot = boot_id();
    if !boot.is_empty() {
        if let Ok(c) = std::fs::read(cache)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<Cached>(&b).map_err(|_| ()))
        {
            if c.boot_id == boot {
                return c.verdict;
            }
        }
    }
    let verdict = probe(PROBE_DEADLINE);
    tracing::debug!(usable = verdict.usable, reason = %verdict.reason, "KVM probe");
    if !boot.is_empty() {
        let c = Cached {
            boot_id: boot,
            verdict: verdict.clone(),
        };
        // A cache that cannot be written only means probing again next time.
        if let Ok(bytes) = serde_json::to_vec(&c) {
            let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, cache);
            }
        }
    }
    verdict
}

/// Where a state directory keeps the verdict.
pub fn cache_path(state_root: &Path) -> PathBuf {
    state_root.join("kvm-probe.json")
}

/// The accelerator for a request: `auto` probes (cached), `kvm` probes and fails clearly.
pub fn resolve(req: Request, state_root: &Path) -> Result<Accel, AccelError> {
    match req {
        Request::Tcg => Ok(Accel::Tcg),
        Request::Auto => Ok(if kvm_verdict(&cache_path(state_root)).usable {
            Accel::Kvm
        } else {
            Accel::Tcg
        }),
        Request::Kvm => {
            let v = kvm_verdict(&cache_path(state_root));
            if v.usable {
                Ok(Accel::Kvm)
            } else {
                Err(AccelError::KvmUnusable(v.reason))
            }
        }
    }
}

/// Runs the probe in a child process and waits at most `deadline` for it (uncached).
pub fn probe(deadline: Duration) -> Verdict {
    // Checked here rather than in the child: a missing device is the common case and
    // needs no process.
    if !Path::new("/dev/kvm").exists() {
        return Verdict {
            usable: false,
            reason: "/dev/kvm does not exist".into(),
        };
    }
    // SAFETY: the child runs only `child_probe`, which makes raw system calls on its own
    // stack and mappings (no allocation, no locks: safe after fork in a threaded process),
    // and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Verdict {
            usable: false,
            reason: format!("fork: {}", std::io::Error::last_os_error()),
        };
    }
    if pid == 0 {
        // SAFETY: see above; `_exit` skips atexit handlers and destructors of the parent.
        unsafe { libc::_exit(child_probe()) }
    }
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child only, with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            return match code {
                0 => Verdict {
                    usable: true,
                    reason: String::new(),
                },
                c => Verdict {
                    usable: false,
                    reason: step_failed(c).into(),
                },
            };
        }
        if r < 0 {
            return Verdict {
                usable: false,
                reason: format!("waitpid: {}", std::io::Error::last_os_error()),
            };
        }
        if start.elapsed() >= deadline {
            // SAFETY: signals our own child, which has not been reaped (same PID).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // A vCPU stuck in the kernel may take a moment to die; reap it if it does, or
            // leave it (a zombie of this process at worst) rather than wait.
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_millis(500) {
                // SAFETY: as above.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            return Verdict {
                usable: false,
                reason: format!(
                    "/dev/kvm opens but a guest did not run {LOOPS} loop rounds to its halt within {} ms (no hardware virtualisation)",
                    deadline.as_millis()
                ),
            };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn step_failed(code: i32) -> &'static str {
    match code {
        10 => "cannot open /dev/kvm",
        11 => "unexpected KVM API version",
        12 => "KVM_CREATE_VM failed",
        13 => "cannot map guest memory",
        14 => "KVM_SET_USER_MEMORY_REGION failed",
        15 => "KVM_CREATE_VCPU failed",
        16 => "KVM_GET_VCPU_MMAP_SIZE failed",
        17 => "cannot map the vCPU's run area",
        18 => "KVM_GET_SREGS failed",
        19 => "KVM_SET_SREGS failed",
        20 => "KVM_SET_REGS failed",
        21 => "KVM_RUN failed",
        22 => "the guest stopped for another reason than its halt",
        23 => "the guest halted with a wrong result",
        _ => "the probe process died",
    }
}

// The KVM ABI (linux/kvm.h), written out here rather than taken from the rust-vmm crates:
// the probe runs in a child forked from a threaded process, where only raw system calls
// are safe, and those crates allocate. The sizes are checked below.
const KVMIO: u64 = 0xAE;
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

#[repr(C)]
struct UserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Segment {
    base: u64,
    limit: u32,
    selector: u16,
    type_: u8,
    present: u8,
    dpl: u8,
    db: u8,
    s: u8,
    l: u8,
    g: u8,
    avl: u8,
    unusable: u8,
    padding: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Dtable {
    base: u64,
    limit: u16,
    padding: [u16; 3],
}

#[repr(C)]
struct Sregs {
    cs: Segment,
    ds: Segment,
    es: Segment,
    fs: Segment,
    gs: Segment,
    ss: Segment,
    tr: Segment,
    ldt: Segment,
    gdt: Dtable,
    idt: Dtable,
    cr0: u64,
    cr2: u64,
    cr3: u64,
    cr4: u64,
    cr8: u64,
    efer: u64,
    apic_base: u64,
    interrupt_bitmap: [u64; 4],
}

/// rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8–r15, rip, rflags.
#[repr(C)]
struct Regs([u64; 18]);
const RAX: usize = 0;
const RIP: usize = 16;
const RFLAGS: usize = 17;

const _: () = assert!(std::mem::size_of::<UserspaceMemoryRegion>() == 32);
const _: () = assert!(std::mem::size_of::<Segment>() == 24);
const _: () = assert!(std::mem::size_of::<Sregs>() == 312);
const _: () = assert!(std::mem::size_of::<Regs>() == 144);

const KVM_GET_API_VERSION: u64 = io(0x00);
const KVM_CREATE_VM: u64 = io(0x01);
const KVM_GET_VCPU_MMAP_SIZE: u64 = io(0x04);
const KVM_CREATE_VCPU: u64 = io(0x41);
const KVM_SET_USER_MEMORY_REGION: u64 = iow(0x46, std::mem::size_of::<UserspaceMemoryRegion>());
const KVM_RUN: u64 = io(0x80);
const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<Regs>());
const KVM_SET_REGS: u64 = iow(0x82, std::mem::size_of::<Regs>());
const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<Sregs>());
const KVM_SET_SREGS: u64 = iow(0x84, std::mem::size_of::<Sregs>());
const KVM_EXIT_HLT: u32 = 5;
/// `exit_reason`'s offset in `struct kvm_run` (after two u8 flags and six bytes of padding).
const EXIT_REASON_OFFSET: usize = 8;

/// Guest code at 0x1000, 16-bit real mode: a loop of `LOOPS` rounds, then
/// `mov ax, 0x1234; add ax, 0x0101; hlt`:
///
/// ```text
///  0: 66 b9 LOOPS    mov ecx, LOOPS
///  6: 66 49          dec ecx
///  8: 75 fc          jnz 6
/// 10: b8 34 12       mov ax, 0x1234
/// 13: 05 01 01       add ax, 0x0101
/// 16: f4             hlt
/// ```
///
/// The loop is what tells a KVM that works from one that runs guests at a crawl (these
/// machines' `/dev/kvm` runs a guest at about 10^5 instructions a second: a firmware never
/// gets through its start): hardware virtualisation runs it in about 10 ms, TCG in about
/// 100 ms; here it would take minutes, and the deadline ends it.
const CODE: [u8; 17] = {
    let l = LOOPS.to_le_bytes();
    [
        0x66, 0xB9, l[0], l[1], l[2], l[3], 0x66, 0x49, 0x75, 0xFC, 0xB8, 0x34, 0x12, 0x05, 0x01,
        0x01, 0xF4,
    ]
};
const LOOPS: u32 = 20_000_000;
const EXPECTED_AX: u64 = 0x1335;
const RCX: usize = 2;
const GUEST_ADDR: u64 = 0x1000;
const PAGE: usize = 0x1000;

/// The probe proper, in the forked child: 0 when the guest ran to its `hlt` with the
/// right result, else the number of the step that failed (see `step_failed`). Raw system
/// calls only (see `probe`); the descriptors and mappings die with the process.
fn child_probe() -> i32 {
    // SAFETY: every call gets valid pointers to locals of the right size (checked above)
    // or to mappings made here; results are checked before use.
    unsafe {
        let kvm = libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if kvm < 0 {
            return 10;
        }
        if libc::ioctl(kvm, KVM_GET_API_VERSION as _, 0) != 12 {
            return 11;
        }
        let vm = libc::ioctl(kvm, KVM_CREATE_VM as _, 0);
        if vm < 0 {
            return 12;
        }
        let mem = libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            return 13;
        }
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.cast::<u8>(), CODE.len());
        let region = UserspaceMemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: GUEST_ADDR,
            memory_size: PAGE as u64,
            userspace_addr: mem as u64,
        };
        if libc::ioctl(vm, KVM_SET_USER_MEMORY_REGION as _, &region) < 0 {
            return 14;
        }
        let vcpu = libc::ioctl(vm, KVM_CREATE_VCPU as _, 0);
        if vcpu < 0 {
            return 15;
        }
        let run_size = libc::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE as _, 0);
        if run_size <= 0 {
            return 16;
        }
        let run = libc::mmap(
            std::ptr::null_mut(),
            run_size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu,
            0,
        );
        if run == libc::MAP_FAILED {
            return 17;
        }
        let mut sregs: Sregs = std::mem::zeroed();
        if libc::ioctl(vcpu, KVM_GET_SREGS as _, &mut sregs) < 0 {
            return 18;
        }
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        if libc::ioctl(vcpu, KVM_SET_SREGS as _, &sregs) < 0 {
            return 19;
        }
        let mut regs = Regs([0; 18]);
        regs.0[RIP] = GUEST_ADDR;
        regs.0[RFLAGS] = 0x2;
        if libc::ioctl(vcpu, KVM_SET_REGS as _, &regs) < 0 {
            return 20;
        }
        if libc::ioctl(vcpu, KVM_RUN as _, 0) < 0 {
            return 21;
        }
        let reason =
            std::ptr::read_volatile(run.cast::<u8>().add(EXIT_REASON_OFFSET).cast::<u32>());
        if reason != KVM_EXIT_HLT {
            return 22;
        }
        if libc::ioctl(vcpu, KVM_GET_REGS as _, &mut regs) < 0
            || regs.0[RAX] & 0xFFFF != EXPECTED_AX
            || regs.0[RCX] & 0xFFFF_FFFF != 0
        {
            return 23;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(Request::parse("").unwrap(), Request::Auto);
        assert_eq!(Request::parse("auto").unwrap(), Request::Auto);
        assert_eq!(Request::parse("kvm").unwrap(), Request::Kvm);
        assert_eq!(Request::parse("tcg").unwrap(), Request::Tcg);
        assert!(Request::parse("hvf").is_err());
    }

    /// On this project's machines `/dev/kvm` opens but never runs a guest: the probe must
    /// say so, and within its deadline (plus the kill's grace), not hang.
    #[test]
    fn probe_says_not_usable_here_within_its_deadline() {
        let deadline = Duration::from_millis(500);
        let t = Instant::now();
        let v = probe(deadline);
        let took = t.elapsed();
        // Without VT-x or AMD-V exposed (these machines) no guest can run; a host that
        // has them may well run one, and then only the deadline is checked.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if !virt {
            assert!(!v.usable, "KVM said usable without vmx/svm");
            assert!(!v.reason.is_empty());
        }
        assert!(
            took < deadline + Duration::from_millis(1500),
            "the probe took {took:?}"
        );
    }

    #[test]
    fn verdict_cached_per_boot() {
        let dir = std::env::temp_dir().join(format!("accel-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = cache_path(&dir);
        // A verdict from another boot is not believed; this boot's is.
        let stale = Cached {
            boot_id: "another-boot".into(),
            verdict: Verdict {
                usable: true,
                reason: String::new(),
            },
        };
        std::fs::write(&cache, serde_json::to_vec(&stale).unwrap()).unwrap();
        let fresh = kvm_verdict(&cache);
        let written: Cached = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(written.boot_id, boot_id());
        assert_eq!(written.verdict, fresh);
        let planted = Cached {
            boot_id: boot_id(),
            verdict: Verdict {
                usable: false,
                reason: "planted".into(),
            },
        };
        std::fs::write(&cache, serde_json::to_vec(&planted).unwrap()).unwrap();
        assert_eq!(kvm_verdict(&cache).reason, "planted");
        assert!(matches!(
            resolve(Request::Kvm, &dir),
            Err(AccelError::KvmUnusable(r)) if r == "planted"
        ));
        assert_eq!(resolve(Request::Auto, &dir).unwrap(), Accel::Tcg);
        assert_eq!(resolve(Request::Tcg, &dir).unwrap(), Accel::Tcg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
