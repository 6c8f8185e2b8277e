/* C baseline for bench/bench_gicstate.py: replays the device-attribute ioctls
 * (and ONE_REG reads) that kvmdev issued for one GIC save or restore.  Built as
 * a shared object and called through ctypes on the same VM's fds, in the same
 * process (KVM refuses a VM's fds to any other process: EIO).
 *
 *   long gic_replay(const struct gic_op *ops, int n);
 *
 * Issues the n ops in order, each with its own u64 buffer on the stack, and
 * returns the nanoseconds taken (CLOCK_MONOTONIC), or -1 - i when op i failed
 * (errno is left set).
 */
#include <errno.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <time.h>

struct gic_op {
	int32_t fd, kind;            /* kind: 0 get, 1 set, 2 has (device attr), 3 KVM_GET_ONE_REG */
	uint64_t group, attr, value; /* ONE_REG: attr is the register id */
};

static long ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

long gic_replay(const struct gic_op *ops, int n)
{
	static const unsigned long req[] = { KVM_GET_DEVICE_ATTR, KVM_SET_DEVICE_ATTR, KVM_HAS_DEVICE_ATTR };
	long t0 = ns();
	for (int i = 0; i < n; i++) {
		const struct gic_op *o = &ops[i];
		uint64_t v = o->value;
		int r;
		if (o->kind == 3) {
			struct kvm_one_reg reg = { .id = o->attr, .addr = (uint64_t)(uintptr_t)&v };
			r = ioctl(o->fd, KVM_GET_ONE_REG, &reg);
		} else {
			struct kvm_device_attr a = { .group = (uint32_t)o->group, .attr = o->attr,
						     .addr = (uint64_t)(uintptr_t)&v };
			r = ioctl(o->fd, req[o->kind], &a);
		}
		if (r < 0)
			return -1 - i;
	}
	return ns() - t0;
}
