/* C baseline for bench/bench_run.py: N KVM_RUN round trips of a tiny x86
 * real-mode guest, timed with clock_gettime(CLOCK_MONOTONIC).
 *
 *   run_loop MODE N REPEATS [DEVICE]
 *
 * The guest sits at the reset vector (CS base 0xffff0000, IP 0xfff0: one
 * 64 KiB memslot at 0xffff0000) and loops on one instruction that exits:
 *   io          out 0x10, al        KVM_EXIT_IO, nothing to handle
 *   mmio_write  mov [0x1000], al    KVM_EXIT_MMIO write: phys_addr, data, len read
 *   mmio_read   mov al, [0x1000]    KVM_EXIT_MMIO read: the value written back
 * (0x1000 is outside every memslot, so the access is MMIO).  Each exit is
 * checked; the same guest code bench_run.py gives kvmdev.  On arm64 (built
 * for the guests by tools/guests/bench-arm64.sh) the code is at 0x40000000 and
 * accesses x1 = 0x10000000: io is `str w0, [x1]` (an MMIO write nothing
 * reads), mmio_write the same, read through kvm_run.mmio, mmio_read `ldr w0, [x1]`.
 *
 * Output: one line per repeat:  ns_per_call <float>
 * Exit status 0 on success, 2 on usage errors, 1 on a failing syscall.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "run_loop: %s: %s\n", what, strerror(errno));
	exit(1);
}

#if defined(__aarch64__)
/* arm64: RAM at 0x40000000 (the code), x1 = 0x10000000 (no memslot: MMIO);
 * io is an MMIO write that nothing reads (arm64 has no port I/O) */
#define RAM 0x40000000ull
#define MMIO_ADDR 0x10000000ull
static const unsigned char CODE_IO[] = { 0x20, 0x00, 0x00, 0xb9, 0xff, 0xff, 0xff, 0x17 };  /* str w0,[x1]; b .-4 */
static const unsigned char CODE_MW[] = { 0x20, 0x00, 0x00, 0xb9, 0xff, 0xff, 0xff, 0x17 };  /* str w0,[x1]; b .-4 */
static const unsigned char CODE_MR[] = { 0x20, 0x00, 0x40, 0xb9, 0xff, 0xff, 0xff, 0x17 };  /* ldr w0,[x1]; b .-4 */
#define EXIT_IO KVM_EXIT_MMIO
#define READ_LEN 4

static void set_reg(int vcpu, uint64_t id, uint64_t value)
{
	struct kvm_one_reg r = { .id = id, .addr = (uint64_t)(uintptr_t)&value };
	if (ioctl(vcpu, KVM_SET_ONE_REG, &r) < 0) die("KVM_SET_ONE_REG");
}
#define CORE_REG(x) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offsetof(struct kvm_regs, x) / 4))
#else
#define RAM 0xffff0000ull
#define EXIT_IO KVM_EXIT_IO
#define READ_LEN 1
static const unsigned char CODE_IO[] = { 0xe6, 0x10, 0xeb, 0xfc };               /* out 0x10,al; jmp .-4 */
static const unsigned char CODE_MW[] = { 0xa2, 0x00, 0x10, 0xeb, 0xfb };         /* mov [0x1000],al; jmp .-5 */
static const unsigned char CODE_MR[] = { 0xa0, 0x00, 0x10, 0xeb, 0xfb };         /* mov al,[0x1000]; jmp .-5 */
#endif

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s io|mmio_write|mmio_read N REPEATS [DEVICE]\n", argv[0]);
		return 2;
	}
	const char *mode = argv[1];
	long n = atol(argv[2]), repeats = atol(argv[3]);
	const unsigned char *code;
	size_t code_len;
	int want;
	if (!strcmp(mode, "io")) { code = CODE_IO; code_len = sizeof(CODE_IO); want = EXIT_IO; }
	else if (!strcmp(mode, "mmio_write")) { code = CODE_MW; code_len = sizeof(CODE_MW); want = KVM_EXIT_MMIO; }
	else if (!strcmp(mode, "mmio_read")) { code = CODE_MR; code_len = sizeof(CODE_MR); want = KVM_EXIT_MMIO; }
	else { fprintf(stderr, "run_loop: unknown mode %s\n", mode); return 2; }
	if (n <= 0 || repeats <= 0) { fprintf(stderr, "run_loop: N and REPEATS must be positive\n"); return 2; }

	int kvm = open(argc == 5 ? argv[4] : "/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("open");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) die("KVM_CREATE_VM");
	size_t memsz = 0x10000;
	unsigned char *mem = mmap(NULL, memsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) die("mmap memory");
#if defined(__aarch64__)
	memcpy(mem, code, code_len);
#else
	memcpy(mem + 0xfff0, code, code_len);
#endif
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = RAM, .memory_size = memsz,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) die("KVM_CREATE_VCPU");
#if defined(__aarch64__)
	struct kvm_vcpu_init init;
	if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0) die("KVM_ARM_PREFERRED_TARGET");
	init.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
	if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0) die("KVM_ARM_VCPU_INIT");
	set_reg(vcpu, CORE_REG(regs.pc), RAM);
	set_reg(vcpu, CORE_REG(regs.regs[1]), MMIO_ADDR);
#endif
	int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (sz < 0) die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) die("mmap kvm_run");

	volatile uint64_t sink = 0;
	uint8_t value = 0;
	for (long rep = -1; rep < repeats; rep++) {   /* rep -1: warm-up, not printed */
		long count = rep < 0 ? (n < 1000 ? n : 1000) : n;
		uint64_t t0 = now_ns();
		for (long i = 0; i < count; i++) {
			if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
			if (run->exit_reason != (uint32_t)want) {
				fprintf(stderr, "run_loop: exit %u, not %d\n", run->exit_reason, want);
				return 1;
			}
			if (want == KVM_EXIT_MMIO) {
				if (run->mmio.is_write) {
					uint64_t d = 0;
					memcpy(&d, run->mmio.data, run->mmio.len < 8 ? run->mmio.len : 8);
					sink += run->mmio.phys_addr + d;
				} else {
					uint32_t v = value;   /* the guest reads READ_LEN bytes */
					memcpy(run->mmio.data, &v, READ_LEN);
					value++;
				}
			}
		}
		uint64_t t1 = now_ns();
		if (rep >= 0)
			printf("ns_per_call %.3f\n", (double)(t1 - t0) / (double)count);
	}
	fflush(stdout);
	(void)sink;
	return 0;
}
