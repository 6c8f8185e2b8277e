/* C baseline for bench/bench_attr.py: N KVM_GET_DEVICE_ATTR round trips in a
 * tight loop, timed with clock_gettime(CLOCK_MONOTONIC).
 *
 *   attr_loop TARGET N REPEATS REQUEST GROUP ATTR [DEVICE]
 *
 * TARGET is "system" (the /dev/kvm fd) or "vcpu" (vCPU 0 of a new VM).
 * REQUEST, GROUP and ATTR are the ioctl number and kvm_device_attr fields;
 * bench_attr.py passes kvmdev's own values (kvmdev.get_arch().request/const),
 * so the C loop issues exactly the ioctl kvmdev issues.  REQUEST is checked
 * against KVM_GET_DEVICE_ATTR of the system <linux/kvm.h> and a mismatch is
 * reported on stderr (not fatal).  GROUP/ATTR are not taken from the header:
 * older headers lack KVM_X86_GRP_SYSTEM.
 * KVM_CREATE_VM and KVM_CREATE_VCPU (set-up only, not timed) come from
 * <linux/kvm.h>.  DEVICE defaults to /dev/kvm.
 *
 * Output on stdout, one line per repeat:  ns_per_call <float>
 * plus a first line:  value <u64>  (the attribute's value, as a sanity check).
 * Exit status 0 on success, 2 on usage errors, 1 on a failing syscall.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static unsigned long long parse(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end || end == s) {
		fprintf(stderr, "attr_loop: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	if (argc != 7 && argc != 8) {
		fprintf(stderr, "usage: %s system|vcpu N REPEATS REQUEST GROUP ATTR [DEVICE]\n", argv[0]);
		return 2;
	}
	const char *target = argv[1];
	long n = (long)parse(argv[2], "N");
	long repeats = (long)parse(argv[3], "REPEATS");
	unsigned long request = (unsigned long)parse(argv[4], "REQUEST");
	uint32_t group = (uint32_t)parse(argv[5], "GROUP");
	uint64_t attr = (uint64_t)parse(argv[6], "ATTR");
	const char *device = argc == 8 ? argv[7] : "/dev/kvm";
	if (n <= 0 || repeats <= 0) {
		fprintf(stderr, "attr_loop: N and REPEATS must be positive\n");
		return 2;
	}
#ifdef KVM_GET_DEVICE_ATTR
	if (request != (unsigned long)KVM_GET_DEVICE_ATTR)
		fprintf(stderr, "attr_loop: warning: REQUEST %#lx differs from <linux/kvm.h> "
			"KVM_GET_DEVICE_ATTR %#lx\n", request, (unsigned long)KVM_GET_DEVICE_ATTR);
#endif

	int kvm = open(device, O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		fprintf(stderr, "attr_loop: open %s: %s\n", device, strerror(errno));
		return 1;
	}
	int fd = kvm;
	if (strcmp(target, "vcpu") == 0) {
		int vm = ioctl(kvm, KVM_CREATE_VM, 0);
		if (vm < 0) {
			perror("attr_loop: KVM_CREATE_VM");
			return 1;
		}
		fd = ioctl(vm, KVM_CREATE_VCPU, 0);
		if (fd < 0) {
			perror("attr_loop: KVM_CREATE_VCPU");
			return 1;
		}
	} else if (strcmp(target, "system") != 0) {
		fprintf(stderr, "attr_loop: TARGET must be system or vcpu, not %s\n", target);
		return 2;
	}

	volatile uint64_t value = 0;
	struct kvm_device_attr da;
	memset(&da, 0, sizeof(da));
	da.group = group;
	da.attr = attr;
	da.addr = (uint64_t)(uintptr_t)&value;

	/* warm-up: page in, first vcpu_load, branch predictors */
	for (long i = 0; i < (n < 100 ? n : 100); i++) {
		if (ioctl(fd, request, &da) < 0) {
			fprintf(stderr, "attr_loop: KVM_GET_DEVICE_ATTR group %u attr %" PRIu64 ": %s\n",
				group, attr, strerror(errno));
			return 1;
		}
	}
	printf("value %" PRIu64 "\n", (uint64_t)value);

	for (long r = 0; r < repeats; r++) {
		uint64_t t0 = now_ns();
		for (long i = 0; i < n; i++) {
			if (__builtin_expect(ioctl(fd, request, &da) < 0, 0)) {
				perror("attr_loop: KVM_GET_DEVICE_ATTR");
				return 1;
			}
		}
		uint64_t t1 = now_ns();
		printf("ns_per_call %.2f\n", (double)(t1 - t0) / (double)n);
	}
	fflush(stdout);
	return 0;
}
