/* C helpers compiled into every kvmdev._kvm_<arch> module (cdefs/helpers.c). */
struct kvmdev_ioctl_desc {
	const char *name;
	int dir;            /* 0 none, 1 write, 2 read, 3 read|write (kvmdev.arch maps to bits) */
	unsigned int nr;
	unsigned int size;
};
const struct kvmdev_ioctl_desc *kvmdev_ioctl_table(int *count);

long kvmdev_ioctl(int fd, unsigned long request, void *arg);
long kvmdev_ioctl_val(int fd, unsigned long request, unsigned long arg);
long kvmdev_attr(int fd, unsigned long request, __u32 group, __u64 attr, void *addr);
int kvmdev_attr_batch(int fd, unsigned long request, struct kvm_device_attr *attrs,
		      int count, int *err);
int kvmdev_copy_from_user(void *dst, uint64_t src, size_t len);
int kvmdev_copy_to_user(uint64_t dst, const void *src, size_t len);
int kvmdev_install_kick_handler(int sig);
long kvmdev_ioctl_val_fd(int fd, unsigned long request, unsigned long arg, int *cell);
long kvmdev_ioctl_fd_at(int fd, unsigned long request, void *arg, size_t off, int *cell);
int kvmdev_open_fd(const char *path, int flags, int *cell);
int kvmdev_cell_close(int *cell);
void kvmdev_cell_free(int *cell);
struct kvmdev_map {
	void *addr;
	size_t len;
};
int kvmdev_map_fd(int fd, size_t len, struct kvmdev_map *m);
void kvmdev_map_free(struct kvmdev_map *m);

/* Hot paths of the real backend (helpers.c): a typed integer attribute in one
 * call, and KVM_RUN with the request_exit protocol in C. */
struct kvmdev_attr_int { long long err; unsigned long long val; };
struct kvmdev_attr_int kvmdev_attr_get_int(int fd, unsigned long request, __u32 group, __u64 attr, int width);
long kvmdev_attr_set_int(int fd, unsigned long request, __u32 group, __u64 attr, int width,
			 unsigned long long value);
#define KVMDEV_RUN_BUSY 1048576
struct kvmdev_runctl;
struct kvmdev_runctl *kvmdev_runctl_new(struct kvm_run *run);
void kvmdev_runctl_free(struct kvmdev_runctl *ctl);
long kvmdev_vcpu_run(int fd, unsigned long request, struct kvmdev_runctl *ctl, int immediate);
int kvmdev_vcpu_kick(struct kvmdev_runctl *ctl, int sig);
