/* Returned errors are -errno: reading the C errno through ffi.errno costs a
 * second call per ioctl on the hot path. */
long kvmdev_ioctl(int fd, unsigned long request, void *arg)
{
	long r = ioctl(fd, request, arg);
	return r < 0 ? -errno : r;
}

long kvmdev_ioctl_val(int fd, unsigned long request, unsigned long arg)
{
	long r = ioctl(fd, request, arg);
	return r < 0 ? -errno : r;
}

/* KVM_{HAS,GET,SET}_DEVICE_ATTR with struct kvm_device_attr built on the C
 * stack: the per-call Python work is one call and no struct allocation. */
long kvmdev_attr(int fd, unsigned long request, __u32 group, __u64 attr, void *addr)
{
	struct kvm_device_attr a = { .flags = 0, .group = group, .attr = attr,
				     .addr = (__u64)(uintptr_t)addr };
	long r = ioctl(fd, request, &a);
	return r < 0 ? -errno : r;
}

/* Device-attr ioctls in order, for save/restore walks: one C call for many
 * attributes.  Stops at the first failure; returns how many succeeded and sets
 * *err to 0 or to that failure's -errno. */
int kvmdev_attr_batch(int fd, unsigned long request, struct kvm_device_attr *attrs,
		      int count, int *err)
{
	*err = 0;
	for (int i = 0; i < count; i++) {
		if (ioctl(fd, request, &attrs[i]) < 0) {
			*err = -errno;
			return i;
		}
	}
	return count;
}

/* copy_from_user / copy_to_user for the mock backend: process_vm_readv and
 * process_vm_writev on our own pid fault with EFAULT instead of SIGSEGV, so
 * a bad user pointer behaves as it does in the kernel. */
int kvmdev_copy_from_user(void *dst, uint64_t src, size_t len)
{
	struct iovec local = { dst, len }, remote = { (void *)(uintptr_t)src, len };
	if (len == 0)
		return 0;
	ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
	return n == (ssize_t)len ? 0 : -EFAULT;
}

int kvmdev_copy_to_user(uint64_t dst, const void *src, size_t len)
{
	struct iovec local = { (void *)src, len }, remote = { (void *)(uintptr_t)dst, len };
	if (len == 0)
		return 0;
	ssize_t n = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
	return n == (ssize_t)len ? 0 : -EFAULT;
}

/* Vcpu.request_exit: a signal whose handler does nothing, installed without
 * SA_RESTART, so that a thread blocked in KVM_RUN (or about to enter it) gets
 * EINTR; no Python code runs in the handler, and any thread can install it
 * (signal.signal works only in the main thread).  0, -EBUSY if another
 * handler owns the signal, or -errno. */
#include <signal.h>
#include <string.h>

static void kvmdev_kick_handler(int sig)
{
	(void)sig;
}

int kvmdev_install_kick_handler(int sig)
{
	struct sigaction sa, old;

	if (sigaction(sig, NULL, &old) < 0)
		return -errno;
	if (old.sa_handler == kvmdev_kick_handler)
		return 0;
	if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN)
		return -EBUSY;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kvmdev_kick_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;	/* no SA_RESTART: KVM_RUN returns EINTR */
	return sigaction(sig, &sa, NULL) < 0 ? -errno : 0;
}

/* fd cells: an int that holds a kernel fd from the moment the kernel returns it
 * until it is closed.  The ioctl stores the new fd in C and the close takes it
 * out with one atomic exchange, so a Python exception (a signal handler's
 * KeyboardInterrupt) landing anywhere between two Python steps can neither lose
 * the fd nor close it twice: what is in the cell is closed by whoever empties it,
 * at the latest when the cell is freed (ffi.gc). */
long kvmdev_ioctl_val_fd(int fd, unsigned long request, unsigned long arg, int *cell)
{
	long r = ioctl(fd, request, arg);
	if (r < 0)
		return -errno;
	__atomic_store_n(cell, (int)r, __ATOMIC_SEQ_CST);
	return r;
}

/* the new fd is an int at byte offset `off` of arg (struct kvm_create_device.fd) */
long kvmdev_ioctl_fd_at(int fd, unsigned long request, void *arg, size_t off, int *cell)
{
	long r = ioctl(fd, request, arg);
	if (r < 0)
		return -errno;
	__atomic_store_n(cell, *(int *)((char *)arg + off), __ATOMIC_SEQ_CST);
	return r;
}

int kvmdev_open_fd(const char *path, int flags, int *cell)
{
	int fd = open(path, flags);
	if (fd < 0)
		return -errno;
	__atomic_store_n(cell, fd, __ATOMIC_SEQ_CST);
	return fd;
}

/* 1 if this call closed the cell's fd, 0 if it was empty */
int kvmdev_cell_close(int *cell)
{
	int fd = __atomic_exchange_n(cell, -1, __ATOMIC_SEQ_CST);
	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

void kvmdev_cell_free(int *cell)
{
	kvmdev_cell_close(cell);
}

/* A vCPU's kvm_run mapping held the same way: mmap(2) stores the address in the
 * cell before returning, and freeing the cell (ffi.gc) unmaps it, so no
 * exception between the two can leak a mapping (one that pins the vCPU file,
 * and with it the whole VM, after close). */
int kvmdev_map_fd(int fd, size_t len, struct kvmdev_map *m)
{
	void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (a == MAP_FAILED)
		return -errno;
	m->len = len;
	__atomic_store_n(&m->addr, a, __ATOMIC_SEQ_CST);
	return 0;
}

void kvmdev_map_free(struct kvmdev_map *m)
{
	void *a = __atomic_exchange_n(&m->addr, NULL, __ATOMIC_SEQ_CST);
	if (a)
		munmap(a, m->len);
}

/* A typed integer attribute (__u8 .. __u64) in one call: the buffer is the
 * attribute's own width on the C stack, the value comes back by value and the
 * error as -errno beside it (no per-call allocation, no second call). */
union kvmdev_int_buf {
	__u8 u8;
	__u16 u16;
	__u32 u32;
	__u64 u64;
};

struct kvmdev_attr_int kvmdev_attr_get_int(int fd, unsigned long request, __u32 group, __u64 attr, int width)
{
	union kvmdev_int_buf b = { .u64 = 0 };
	struct kvm_device_attr a = { .flags = 0, .group = group, .attr = attr,
				     .addr = (__u64)(uintptr_t)&b };
	struct kvmdev_attr_int r = { 0, 0 };

	if (ioctl(fd, request, &a) < 0) {
		r.err = -errno;
		return r;
	}
	switch (width) {
	case 1: r.val = b.u8; break;
	case 2: r.val = b.u16; break;
	case 4: r.val = b.u32; break;
	default: r.val = b.u64; break;
	}
	return r;
}

long kvmdev_attr_set_int(int fd, unsigned long request, __u32 group, __u64 attr, int width,
			 unsigned long long value)
{
	union kvmdev_int_buf b = { .u64 = 0 };
	struct kvm_device_attr a = { .flags = 0, .group = group, .attr = attr,
				     .addr = (__u64)(uintptr_t)&b };

	switch (width) {
	case 1: b.u8 = (__u8)value; break;
	case 2: b.u16 = (__u16)value; break;
	case 4: b.u32 = (__u32)value; break;
	default: b.u64 = value; break;
	}
	long r = ioctl(fd, request, &a);
	return r < 0 ? -errno : r;
}

/* Vcpu.run/request_exit on the real backend.  The protocol the Python code
 * had under two locks, under one pthread mutex (taken with the GIL released):
 * one KVM_RUN per vCPU at a time (a second gets KVMDEV_RUN_BUSY and waits in
 * Python, where a signal can interrupt it); immediate_exit is set before the
 * ioctl when asked; a kick (kick_pending + immediate_exit + the signal to the
 * thread in KVM_RUN) is never lost: set before the run it is seen through
 * immediate_exit, during it the signal makes KVM_RUN return EINTR, after it it
 * stays pending (immediate_exit = 1) for the next run, and only a run that
 * returns EINTR clears it. */
#include <pthread.h>
#include <stdlib.h>

struct kvmdev_runctl {
	pthread_mutex_t lock;
	struct kvm_run *run;
	pthread_t thread;	/* valid while running */
	int running;
	int kick_pending;
};

struct kvmdev_runctl *kvmdev_runctl_new(struct kvm_run *run)
{
	struct kvmdev_runctl *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	c->run = run;
	return c;
}

void kvmdev_runctl_free(struct kvmdev_runctl *c)
{
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* KVM_RUN: the exit reason (>= 0), -errno, or -KVMDEV_RUN_BUSY. */
long kvmdev_vcpu_run(int fd, unsigned long request, struct kvmdev_runctl *c, int immediate)
{
	pthread_mutex_lock(&c->lock);
	if (c->running) {
		pthread_mutex_unlock(&c->lock);
		return -KVMDEV_RUN_BUSY;
	}
	c->running = 1;
	c->thread = pthread_self();
	if (immediate)
		c->run->immediate_exit = 1;
	pthread_mutex_unlock(&c->lock);

	long r = ioctl(fd, request, 0);
	r = r < 0 ? -errno : (long)c->run->exit_reason;

	pthread_mutex_lock(&c->lock);
	c->running = 0;
	if (r == -EINTR)		/* this run is what the kick stopped */
		c->kick_pending = 0;
	/* a kick that came after the exit stays for the next run */
	c->run->immediate_exit = c->kick_pending ? 1 : 0;
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* request_exit: 0 or -errno of pthread_kill. */
int kvmdev_vcpu_kick(struct kvmdev_runctl *c, int sig)
{
	int r = 0;

	pthread_mutex_lock(&c->lock);
	c->kick_pending = 1;
	c->run->immediate_exit = 1;
	if (c->running)
		r = -pthread_kill(c->thread, sig);
	pthread_mutex_unlock(&c->lock);
	return r;
}
