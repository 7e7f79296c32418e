/* connlater HOST PORT MILLIS [PROGRAM [ARGS...]]: connect() and print what happened (connected,
 * refused, timeout, error), close, wait MILLIS ms, then execv(PROGRAM) if given. Two copies of
 * it under one name in two folders are two programs with one comm: the second, exec'd by the
 * first after a pause, must be judged as itself (issue 21's exec-identity test). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: connlater HOST PORT MILLIS [PROGRAM [ARGS...]]\n");
		return 2;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	inet_pton(AF_INET, argv[1], &a.sin_addr);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval limit = {.tv_sec = 3};
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
	if (connect(s, (struct sockaddr *)&a, sizeof a) == 0)
		puts("connected");
	else if (errno == ECONNREFUSED)
		puts("refused");
	else if (errno == EINPROGRESS || errno == ETIMEDOUT || errno == EAGAIN)
		puts("timeout");
	else
		printf("error %d\n", errno);
	fflush(stdout);
	close(s);
	long ms = atol(argv[3]);
	struct timespec pause = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	nanosleep(&pause, NULL);
	if (argc > 4) {
		execv(argv[4], argv + 4);
		perror("execv");
		return 1;
	}
	return 0;
}
