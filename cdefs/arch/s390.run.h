	/* s390 (__KVM_S390): the PSW sits between the head and the exit union */
	__u64 psw_mask;
	__u64 psw_addr;
