//! Register-level access to the VMware backdoor, behind a trait so that the message state
//! machine can be tested against a simulated VMX.

/// The registers the backdoor protocol uses (low 32 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// eax: the magic on the way in, a result on the way out.
    pub ax: u32,
    /// ebx: an argument or a result.
    pub bx: u32,
    /// ecx: the command (and message type) in, the status out.
    pub cx: u32,
    /// edx: the port (and channel ID) in.
    pub dx: u32,
    /// esi: the channel's cookie, or a transfer's source.
    pub si: u32,
    /// edi: the channel's cookie, or a transfer's destination.
    pub di: u32,
    /// ebp: a transfer's address on the high-bandwidth port.
    pub bp: u32,
}

/// The three backdoor instructions.
pub trait Port: Send + Sync + std::fmt::Debug {
    /// Low-bandwidth call: `in eax, dx` with every register loaded from `regs`.
    fn call(&self, regs: Regs) -> Regs;
    /// High-bandwidth guest→host transfer: `rep outsb` of `data` (`rsi` = `data`, `rcx` =
    /// its length; `regs.si` and `regs.cx` are ignored).
    fn hb_out(&self, regs: Regs, data: &[u8]) -> Regs;
    /// High-bandwidth host→guest transfer: `rep insb` into `buf` (`rdi` = `buf`, `rcx` = its
    /// length; `regs.di` and `regs.cx` are ignored).
    fn hb_in(&self, regs: Regs, buf: &mut [u8]) -> Regs;
}

/// Whether this CPU is a VMware virtual CPU: CPUID leaf 1 ECX bit 31 (hypervisor present)
/// and leaf `0x40000000` signature `VMwareVMware` (guestinfo.md §2).
pub fn is_vmware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers;
        // leaf 0x40000000 is reserved for hypervisors and returns zeros on bare metal.
        #[allow(unused_unsafe)]
        let (leaf1, hv) = unsafe { (__cpuid(1), __cpuid(0x4000_0000)) };
        if leaf1.ecx & (1 << 31) == 0 {
            return false;
        }
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&hv.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
        sig[8..].copy_from_slice(&hv.edx.to_le_bytes());
        &sig == b"VMwareVMware"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The real backdoor I/O ports. Only constructible after [`is_vmware`]: on other hypervisors
/// or bare metal the `in`/`outsb`/`insb` instructions fault (no I/O privilege), while VMware
/// intercepts them on its backdoor ports before the privilege check, so no `iopl` is needed.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct IoPort {
    _checked: (),
}

#[cfg(target_arch = "x86_64")]
impl IoPort {
    /// The backdoor ports, if this is a VMware virtual CPU.
    pub fn new() -> Option<IoPort> {
        is_vmware().then_some(IoPort { _checked: () })
    }
}

/// A register's value as the backdoor protocol means it: its values are 32 bits wide, and
/// the upper half of the 64-bit register is not part of the reply.
#[cfg(target_arch = "x86_64")]
#[allow(
    clippy::cast_possible_truncation,
    reason = "dropping the upper half is the point"
)]
fn low32(r: u64) -> u32 {
    r as u32
}

/// The registers as an asm block left them (`[ax, bx, cx, dx, si, di, bp]`), low halves.
fn regs_from([ax, bx, cx, dx, si, di, bp]: [u64; 7]) -> Regs {
    Regs {
        ax: low32(ax),
        bx: low32(bx),
        cx: low32(cx),
        dx: low32(dx),
        si: low32(si),
        di: low32(di),
        bp: low32(bp),
    }
}

#[cfg(target_arch = "x86_64")]
impl Port for IoPort {
    fn call(&self, r: Regs) -> Regs {
        let (mut ax, mut bx, mut cx, mut dx) = (
            u64::from(r.ax),
            u64::from(r.bx),
            u64::from(r.cx),
            u64::from(r.dx),
        );
        let (mut si, mut di, mut bp) = (u64::from(r.si), u64::from(r.di), u64::from(r.bp));
        // SAFETY: `IoPort` exists only on a VMware virtual CPU (checked in `new`), where
        // `in eax, dx` on the backdoor port traps to the VMX instead of touching hardware; it
        // reads and writes only the listed registers, no memory. rbx and rbp cannot be asm
        // operands (LLVM reserves them), so they are swapped with scratch registers and
        // restored before the block ends; nothing addresses memory through rbp in between,
        // and no stack is used.
        unsafe {
            core::arch::asm!(
                "xchg rbx, {bx}",
                "xchg rbp, {bp}",
                "in eax, dx",
                "xchg rbp, {bp}",
                "xchg rbx, {bx}",
                bx = inout(reg) bx,
                bp = inout(reg) bp,
                inout("rax") ax,
                inout("rcx") cx,
                inout("rdx") dx,
                inout("rsi") si,
                inout("rdi") di,
                options(nostack, nomem),
            );
        }
        regs_from([ax, bx, cx, dx, si, di, bp])
    }

    fn hb_out(&self, r: Regs, data: &[u8]) -> Regs {
        let (mut ax, mut bx, mut dx) = (u64::from(r.ax), u64::from(r.bx), u64::from(r.dx));
        let (mut di, mut bp) = (u64::from(r.di), u64::from(r.bp));
        let mut cx = data.len() as u64;
        let mut si = data.as_ptr() as u64;
        // SAFETY: VMware virtual CPU (checked in `new`). `rep outsb` reads exactly `rcx` =
        // `data.len()` bytes starting at `rsi` = `data.as_ptr()`, all inside the borrowed
        // slice, and writes no memory (hence `readonly`). The direction flag is clear on
        // entry to asm blocks, so the copy runs forwards. rbx/rbp are saved and restored
        // around the instruction as in `call`; no stack is used.
        unsafe {
            core::arch::asm!(
                "xchg rbx, {bx}",
                "xchg rbp, {bp}",
                "rep outsb",
                "xchg rbp, {bp}",
                "xchg rbx, {bx}",
                bx = inout(reg) bx,
                bp = inout(reg) bp,
                inout("rax") ax,
                inout("rcx") cx,
                inout("rdx") dx,
                inout("rsi") si,
                inout("rdi") di,
                options(nostack, readonly),
            );
        }
        regs_from([ax, bx, cx, dx, si, di, bp])
    }

    fn hb_in(&self, r: Regs, buf: &mut [u8]) -> Regs {
        let (mut ax, mut bx, mut dx) = (u64::from(r.ax), u64::from(r.bx), u64::from(r.dx));
        let (mut si, mut bp) = (u64::from(r.si), u64::from(r.bp));
        let mut cx = buf.len() as u64;
        let mut di = buf.as_mut_ptr() as u64;
        // SAFETY: VMware virtual CPU (checked in `new`). `rep insb` writes exactly `rcx` =
        // `buf.len()` bytes starting at `rdi` = `buf.as_mut_ptr()`, all inside the exclusively
        // borrowed slice, and reads no memory. The direction flag is clear on entry, so the
        // copy runs forwards. rbx/rbp are saved and restored as in `call`; no stack is used.
        unsafe {
            core::arch::asm!(
                "xchg rbx, {bx}",
                "xchg rbp, {bp}",
                "rep insb",
                "xchg rbp, {bp}",
                "xchg rbx, {bx}",
                bx = inout(reg) bx,
                bp = inout(reg) bp,
                inout("rax") ax,
                inout("rcx") cx,
                inout("rdx") dx,
                inout("rsi") si,
                inout("rdi") di,
                options(nostack),
            );
        }
        regs_from([ax, bx, cx, dx, si, di, bp])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn not_vmware_here() {
        // CI and development machines are not VMware guests; the check must say so without
        // faulting.
        if !super::is_vmware() {
            #[cfg(target_arch = "x86_64")]
            assert!(super::IoPort::new().is_none());
        }
    }
}
