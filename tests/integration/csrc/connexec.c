/* connexec HOST PORT PROGRAM [ARGS...]: a non-blocking connect(), then at once execv(PROGRAM).
 * The socket stays open across the exec (no CLOEXEC): afterwards /proc shows PROGRAM holding it,
 * though this program connected it (issue 14). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: connexec HOST PORT PROGRAM [ARGS...]\n");
		return 2;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	inet_pton(AF_INET, argv[1], &a.sin_addr);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
		perror("connect");
		return 1;
	}
	execv(argv[3], argv + 3);
	perror("execv");
	return 1;
}
