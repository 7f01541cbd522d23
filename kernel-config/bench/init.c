/*
 * Boot-benchmark init: the smallest possible PID 1.
 *
 * It prints one marker line on its standard output (the kernel's /dev/console, i.e. the serial
 * console) carrying CLOCK_BOOTTIME at the moment it runs (the kernel's own time from timekeeping
 * start to PID 1), then powers the VM off with reboot(RB_POWER_OFF). The host measures QEMU start
 * -> marker and QEMU start -> QEMU exit (bench.py).
 *
 * Freestanding (no libc, raw system calls) so that it is a few kilobytes and the initramfs costs
 * nothing to load or unpack: the benchmark measures the kernel, not the init.
 *   gcc -static -nostdlib -Os -fno-stack-protector -fno-asynchronous-unwind-tables -o init init.c
 */
typedef unsigned long u64;

static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static long sys4(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return ret;
}

#define SYS_write 1
#define SYS_clock_gettime 228
#define SYS_reboot 169
#define SYS_exit 60
#define SYS_ioctl 16
#define TCSBRK 0x5409
#define CLOCK_BOOTTIME 7
#define LINUX_REBOOT_MAGIC1 0xfee1dead
#define LINUX_REBOOT_MAGIC2 672274793
#define LINUX_REBOOT_CMD_POWER_OFF 0x4321fedc

struct timespec { long tv_sec; long tv_nsec; };

static char *put_str(char *p, const char *s) { while (*s) *p++ = *s++; return p; }

static char *put_u64(char *p, u64 v)
{
	char tmp[24];
	int n = 0;
	do { tmp[n++] = '0' + v % 10; v /= 10; } while (v);
	while (n) *p++ = tmp[--n];
	return p;
}

void _start(void)
{
	struct timespec ts;
	char buf[96], *p = buf;

	sys3(SYS_clock_gettime, CLOCK_BOOTTIME, (long)&ts, 0);
	p = put_str(p, "\nBENCH-INIT-MARKER boottime_us=");
	p = put_u64(p, (u64)ts.tv_sec * 1000000 + (u64)ts.tv_nsec / 1000);
	p = put_str(p, "\n");
	sys3(SYS_write, 1, (long)buf, p - buf);
	/* tcdrain(): a tty write only queues the bytes for the UART; power-off does not wait for
	 * them, so wait here until the marker has left the serial port. */
	sys3(SYS_ioctl, 1, TCSBRK, 1);
	sys4(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_POWER_OFF, 0);
	/* Only reached without ACPI: exiting PID 1 panics, and panic=-1 + -no-reboot end QEMU. */
	sys3(SYS_exit, 1, 0, 0);
	for (;;) {}
}
