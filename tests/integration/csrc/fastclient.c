/* One process that connects again and again, as told on stdin, one word per line out:
 *
 *   tcp HOST PORT      connect (2 s at most), close: connected | refused | timeout | error:ERRNO
 *   exec PROGRAM ARG…  execv() PROGRAM: the same process (pid, start time), another executable
 *
 * The fast path (snitchd.fastpath) keys on the process, so its tests need one process making
 * many connects, and one that becomes another program (test_fast_path.py; an interpreter's
 * process, whose script is part of who it is, has a test of its own there).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>

static const char *attempt(const char *host, int port)
{
	static char word[32];
	struct sockaddr_storage ss = {0};
	socklen_t len;
	struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		len = sizeof(*in4);
	} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		len = sizeof(*in6);
	} else {
		return "error:address";
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return "error:socket";
	const char *out = "connected";
	if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int err = errno, soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (err != EINPROGRESS) {
			snprintf(word, sizeof(word), "error:%d", err);
			out = word;
		} else if (poll(&p, 1, 2000) == 0) {
			out = "timeout";
		} else {
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
			if (soerr == ECONNREFUSED) {
				out = "refused";
			} else if (soerr) {
				snprintf(word, sizeof(word), "error:%d", soerr);
				out = word;
			}
		}
	}
	close(fd);
	return out;
}

int main(void)
{
	char line[1024];

	while (fgets(line, sizeof(line), stdin)) {
		char *argv[16] = {0};
		int argc = 0;
		for (char *tok = strtok(line, " \n"); tok && argc < 15; tok = strtok(NULL, " \n"))
			argv[argc++] = tok;
		if (argc == 3 && strcmp(argv[0], "tcp") == 0) {
			printf("%s\n", attempt(argv[1], atoi(argv[2])));
			fflush(stdout);
		} else if (argc >= 2 && strcmp(argv[0], "exec") == 0) {
			execv(argv[1], &argv[1]);
			return 127;
		}
	}
	return 0;
}
