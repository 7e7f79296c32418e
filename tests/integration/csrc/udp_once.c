/* udp_once HOST PORT: one datagram from a fresh socket, then exit at once (the socket with it). */
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	inet_pton(AF_INET, argv[1], &a.sin_addr);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	return sendto(s, "x", 1, 0, (struct sockaddr *)&a, sizeof a) == 1 ? 0 : 1;
}
