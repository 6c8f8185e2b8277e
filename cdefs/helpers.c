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
