#!/usr/bin/env python3
"""Boot-time benchmark of container-VM kernels under QEMU/TCG with a trivial init.

    bench.py [options] LABEL=KERNEL[@EXTRA CMDLINE] ...

KERNEL is a bzImage or a directory holding `vmlinuz` (a build-kernel.sh or fetch-debian-kernel.sh
cache dir). EXTRA CMDLINE is appended to the base command line for that entry, so the same kernel
can be measured with different boot parameters:

    bench.py --runs 7 lz4=$(./build-kernel.sh) 'lz4+nts=DIR@no_timer_check' debian=$(./fetch-debian-kernel.sh)

Each run starts QEMU (q35, TCG, -nodefaults, -no-reboot, virtio-rng, under `timeout -s KILL 60`)
with the kernel and an initramfs holding only bench/init.c: it prints `BENCH-INIT-MARKER` on the
serial console and powers off. The serial console is QEMU's stdout, read here unbuffered and
timestamped, so the times are from just before QEMU is started to:
  marker  the init's marker line arrived (BIOS + kernel load + decompression + kernel init + PID 1)
  exit    QEMU exited after reboot(RB_POWER_OFF)
and `QEMU CPU` is the CPU time QEMU used (user+sys): less disturbed by other load than wall time.
and `pid1` is CLOCK_BOOTTIME read by the init (the kernel's own time from timekeeping start to
PID 1, a guest clock: decompression and firmware are not in it).
Runs are interleaved (one of each entry per round) so machine load drifts hit all entries alike.
The summary (medians, min-max) is a Markdown table on stdout; per-run lines go to stderr.
"""
import argparse
import gzip
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = b"BENCH-INIT-MARKER"
BASE_CMDLINE = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init"


def build_init(work):
    out = os.path.join(work, "init")
    subprocess.run(["gcc", "-static", "-nostdlib", "-Os", "-fno-stack-protector",
                    "-fno-asynchronous-unwind-tables", "-s", "-o", out,
                    os.path.join(HERE, "init.c")], check=True)
    return out


def newc(entries):
    """A newc cpio archive (what `cpio -o -H newc -R 0:0` writes) of (name, mode, rdev, data).

    Written here rather than with cpio(1) so that /dev/console can be included without root
    (mknod) and the archive is byte-for-byte reproducible."""
    out = bytearray()

    def pad4():
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, rdev, data) in enumerate(entries + [("TRAILER!!!", 0, (0, 0), b"")], 1):
        nameb = name.encode() + b"\0"
        fields = [ino if name != "TRAILER!!!" else 0, mode, 0, 0, 2 if mode & 0o040000 else 1, 0,
                  len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(nameb)
        pad4()
        out.extend(data)
        pad4()
    return bytes(out)


def build_initramfs(work, init_path):
    with open(init_path, "rb") as f:
        init = f.read()
    archive = newc([
        ("dev", 0o040755, (0, 0), b""),
        # The kernel opens /dev/console for PID 1's stdin/stdout/stderr before running it.
        ("dev/console", 0o020600, (5, 1), b""),
        ("init", 0o100755, (0, 0), init),
    ])
    out = os.path.join(work, "initrd.gz")
    with gzip.open(out, "wb") as f:   # gzip, like the bootstrap ISO's initrd
        f.write(archive)
    return out


def build_iso(work, name, kernel, initrd, cmdline):
    """An isolinux ISO laid out like the bootstrap ISO (bootstrap-iso crate)."""
    tree = os.path.join(work, "iso-" + name)
    os.makedirs(os.path.join(tree, "isolinux"))
    os.makedirs(os.path.join(tree, "boot"))
    for f in ("isolinux.bin", "ldlinux.c32"):
        for d in ("/usr/lib/ISOLINUX", "/usr/lib/syslinux/modules/bios"):
            if os.path.exists(os.path.join(d, f)):
                shutil.copy(os.path.join(d, f), os.path.join(tree, "isolinux", f))
                break
        else:
            sys.exit(f"bench: {f} not found (apt-get install isolinux syslinux-common)")
    shutil.copy(kernel, os.path.join(tree, "boot/vmlinuz"))
    shutil.copy(initrd, os.path.join(tree, "boot/initrd.gz"))
    with open(os.path.join(tree, "isolinux/isolinux.cfg"), "w") as f:
        f.write(f"default bench\nprompt 0\ntimeout 0\nlabel bench\n  kernel /boot/vmlinuz\n"
                f"  initrd /boot/initrd.gz\n  append {cmdline}\n")
    iso = os.path.join(work, name + ".iso")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-V", "BENCH", "-J", "-R",
                    "-isohybrid-mbr", "/usr/lib/ISOLINUX/isohdpfx.bin", "-c", "isolinux/boot.cat",
                    "-b", "isolinux/isolinux.bin", "-no-emul-boot", "-boot-load-size", "4",
                    "-boot-info-table", tree], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return iso


def run_once(args, entry, log_path):
    # A negative niceness (root only) keeps other work on a shared machine from inflating the
    # times: TCG runs the guest on one host thread, so every stolen millisecond shows up.
    nice = ["nice", "-n", str(args.nice)] if args.nice else []
    cmd = nice + ["timeout", "-s", "KILL", str(args.timeout), args.qemu,
           "-machine", args.machine, "-accel", "tcg", "-m", str(args.memory), "-smp", str(args.smp),
           "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
           "-no-reboot", "-device", "virtio-rng-pci", "-serial", "stdio"]
    if entry["iso"]:
        cmd += ["-drive", f"file={entry['iso']},media=cdrom,readonly=on,if=ide,index=2",
                "-boot", "d"]
    else:
        cmd += ["-kernel", entry["kernel"], "-initrd", entry["initrd"], "-append", entry["cmdline"]]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    fd = proc.stdout.fileno()
    buf = bytearray()
    t_marker = None
    while True:
        r, _, _ = select.select([fd], [], [], args.timeout + 5)
        if not r:
            proc.kill()
            break
        chunk = os.read(fd, 65536)
        now = time.monotonic()
        if not chunk:
            break
        buf.extend(chunk)
        if t_marker is None and MARKER in buf:
            t_marker = now - t0
    # wait4: the rusage of `timeout` includes QEMU's (its waited-for child). QEMU's CPU time is
    # a second measure that other load on the machine disturbs much less than wall time.
    _, status, ru = os.wait4(proc.pid, 0)
    t_exit = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    with open(log_path, "wb") as f:
        f.write(buf)
    pid1 = None
    i = buf.find(MARKER + b" boottime_us=")
    if i >= 0:
        digits = buf[i + len(MARKER) + 13:].split(b"\n")[0].strip()
        if digits.isdigit():
            pid1 = int(digits) / 1e6
    # timeout(1) exits 137 when it had to kill QEMU: the VM did not power off by itself.
    ok = t_marker is not None and proc.returncode == 0
    return ok, t_marker, t_exit, pid1, cpu, proc.returncode


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entries", nargs="+", metavar="LABEL=KERNEL[@EXTRA]")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--machine", default="q35")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--iso", action="store_true", help="boot from an isolinux ISO (as production) instead of -kernel/-initrd")
    ap.add_argument("--cmdline", default=BASE_CMDLINE, help=f"base kernel command line (default: {BASE_CMDLINE})")
    ap.add_argument("--timeout", type=int, default=60, help="hard limit per QEMU run, seconds")
    ap.add_argument("--nice", type=int, default=0, help="run QEMU at this niceness (e.g. -10 as root on a busy machine)")
    ap.add_argument("--qemu", default=os.environ.get("QEMU", "qemu-system-x86_64"))
    ap.add_argument("--keep", help="keep console logs and media in this directory")
    args = ap.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="tether-kbench-")
    os.makedirs(work, exist_ok=True)
    initrd = build_initramfs(work, build_init(work))
    entries = []
    for spec in args.entries:
        label, _, rest = spec.partition("=")
        kernel, _, extra = rest.partition("@")
        if os.path.isdir(kernel):
            kernel = os.path.join(kernel, "vmlinuz")
        if not os.path.isfile(kernel):
            sys.exit(f"bench: {spec}: no kernel at {kernel}")
        cmdline = (args.cmdline + " " + extra).strip()
        e = {"label": label, "kernel": kernel, "initrd": initrd, "cmdline": cmdline,
             "size": os.path.getsize(kernel), "iso": None, "runs": []}
        if args.iso:
            e["iso"] = build_iso(work, f"{len(entries)}-{label}", kernel, initrd, cmdline)
        entries.append(e)

    for r in range(args.runs):
        for e in entries:
            log = os.path.join(work, f"{e['label']}.{r}.log")
            ok, tm, te, pid1, cpu, rc = run_once(args, e, log)
            e["runs"].append((ok, tm, te, pid1, cpu))
            print(f"run {r + 1}/{args.runs} {e['label']:<24} marker={tm if tm is None else round(tm, 3)}"
                  f" exit={te:.3f} pid1={pid1} cpu={cpu:.3f} rc={rc}{'' if ok else '  FAILED, log: ' + log}",
                  file=sys.stderr, flush=True)

    mode = "ISO" if args.iso else "-kernel/-initrd"
    print(f"\nmachine={args.machine} accel=tcg smp={args.smp} mem={args.memory}M boot={mode} runs={args.runs}"
          f" nice={args.nice} load(1/5/15 min)={' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"base cmdline: {args.cmdline}\n")
    print("| entry | extra cmdline | start->marker median (min-max) | start->exit median (min-max) | kernel pid1 (BOOTTIME) | QEMU CPU | bzImage | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for e in entries:
        good = [x for x in e["runs"] if x[0]]
        tm = [x[1] for x in good]
        te = [x[2] for x in good]
        p1 = [x[3] for x in good if x[3] is not None]
        cpu = [x[4] for x in good]
        extra = e["cmdline"][len(args.cmdline):].strip() or "-"
        rng = lambda xs: f"{med(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f})" if xs else "n/a"
        print(f"| {e['label']} | {extra} | {rng(tm)} | {rng(te)} | {med(p1):.2f} s | {med(cpu):.2f} s | "
              f"{e['size'] / 1048576:.2f} MiB | {len(good)}/{len(e['runs'])} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
