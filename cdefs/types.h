/* The kernel's fixed-width types (asm-generic/int-ll64.h, used by every
 * Linux architecture's uapi), for cffi's parser only: the compiled C source
 * takes them from <linux/types.h>, which Python.h already includes. */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
