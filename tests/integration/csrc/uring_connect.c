/* uring_connect HOST PORT: connect a socket that only io_uring holds (a registered "fixed file";
 * its fd is closed first, so no /proc/<pid>/fd entry names it), with raw syscalls (no liburing).
 * Prints "connected", the error, or "io_uring-refused ERRNO" (exit 3) when the kernel says no. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	alarm(10); /* a dropped SYN must not keep us forever */
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int ring = syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0) {
		printf("io_uring-refused %d\n", errno);
		return 3;
	}
	int fds[1] = {socket(AF_INET, SOCK_STREAM, 0)};
	if (syscall(__NR_io_uring_register, ring, IORING_REGISTER_FILES, fds, 1) < 0) {
		printf("io_uring-refused %d\n", errno);
		return 3;
	}
	close(fds[0]);
	size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	int prot = PROT_READ | PROT_WRITE, flags = MAP_SHARED | MAP_POPULATE;
	char *sq = mmap(0, sq_size, prot, flags, ring, IORING_OFF_SQ_RING);
	char *cq = mmap(0, cq_size, prot, flags, ring, IORING_OFF_CQ_RING);
	struct io_uring_sqe *sqes =
		mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), prot, flags, ring, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	inet_pton(AF_INET, argv[1], &a.sin_addr);
	unsigned tail = *(unsigned *)(sq + p.sq_off.tail);
	unsigned index = tail & *(unsigned *)(sq + p.sq_off.ring_mask);
	struct io_uring_sqe *e = &sqes[index];
	memset(e, 0, sizeof *e);
	e->opcode = IORING_OP_CONNECT;
	e->fd = 0; /* index 0 of the registered files */
	e->flags = IOSQE_FIXED_FILE;
	e->addr = (unsigned long)&a;
	e->off = sizeof a;
	((unsigned *)(sq + p.sq_off.array))[index] = index;
	__atomic_store_n((unsigned *)(sq + p.sq_off.tail), tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
		printf("io_uring-refused %d\n", errno);
		return 3;
	}
	unsigned head = __atomic_load_n((unsigned *)(cq + p.cq_off.head), __ATOMIC_ACQUIRE);
	struct io_uring_cqe *c = (struct io_uring_cqe *)(cq + p.cq_off.cqes) +
				 (head & *(unsigned *)(cq + p.cq_off.ring_mask));
	printf("%s\n", c->res == 0 ? "connected" : strerror(-c->res));
	fflush(stdout);
	return 0;
}
