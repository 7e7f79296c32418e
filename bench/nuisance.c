/* nuisance: what bench/disturb.py runs as an unprivileged user to load snitchd the way a hostile
 * program of that user could. Bounded: each mode ends by itself after SECONDS.
 *
 *   nuisance hold PROCS FDS SECONDS
 *       forks PROCS children that each hold FDS file descriptors (dups of one UDP socket: every
 *       one is a "socket:[N]" link that snitchd's owner scan must read) and sleep. Prints
 *       "ready PIDS..." once all hold them. Ends after SECONDS or on SIGTERM, and first ends
 *       its children by pid (they also get SIGKILL if it dies: PR_SET_PDEATHSIG).
 *   nuisance flood ADDR PORT SPORT COUNT SECONDS
 *       COUNT UDP datagrams of one 5-tuple (bound to SPORT), spread evenly over SECONDS: one flow
 *       for conntrack as long as its gaps stay below the UDP timeout. Prints "sent N errors E".
 *   nuisance dns ADDR SECONDS
 *       DNS queries (A flood.example.org, ids counting up) from one UDP socket to ADDR port 53,
 *       as fast as the socket takes them, for SECONDS; answers are read and thrown away. Each
 *       query passes snitchd's DNS queue. Prints "queries N".
 *   nuisance connects ADDR PORT SECONDS
 *       non-blocking TCP connects to ADDR PORT, each socket closed at once, as fast as one
 *       process makes them, for SECONDS: every one a new flow (a new source port) whose SYN
 *       snitchd must decide. Prints "connects N".
 *   nuisance forks SECONDS
 *       forks short-lived children (each exits at once and is reaped) as fast as it can for
 *       SECONDS: the proc connector reports each fork to snitchd's exec watcher. Prints
 *       "forks N".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 1000

static pid_t kids[MAX_PROCS];
static int nkids;
static volatile sig_atomic_t quit;

static void on_signal(int sig)
{
    (void)sig;
    quit = 1;
}

static int child(int fds, int ready_fd, pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(1);
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        _exit(1);
    int held = 1;
    while (held < fds && dup(sock) >= 0)
        held++;
    if (write(ready_fd, "x", 1) != 1)
        _exit(1);
    close(ready_fd);
    for (;;)
        pause();
}

static int hold(int procs, int fds, int seconds)
{
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return 1;
    signal(SIGTERM, on_signal);
    signal(SIGALRM, on_signal);
    alarm((unsigned)seconds);
    pid_t me = getpid();
    for (nkids = 0; nkids < procs && !quit; nkids++) {
        pid_t pid = fork();
        if (pid == 0) {
            close(pipefd[0]);
            return child(fds, pipefd[1], me);
        }
        if (pid < 0)
            break;
        kids[nkids] = pid;
    }
    close(pipefd[1]);
    char byte;
    int ready = 0;
    while (ready < nkids && !quit && read(pipefd[0], &byte, 1) == 1)
        ready++;
    if (ready == nkids && !quit) {
        printf("ready");
        for (int i = 0; i < nkids; i++)
            printf(" %d", (int)kids[i]);
        printf("\n");
        fflush(stdout);
    }
    while (!quit)
        pause();
    for (int i = 0; i < nkids; i++)
        kill(kids[i], SIGKILL);
    for (int i = 0; i < nkids; i++)
        waitpid(kids[i], NULL, 0);
    return ready == nkids ? 0 : 1;
}

static int flood(const char *addr, int port, int sport, long count, double seconds)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sport)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || inet_pton(AF_INET, addr, &to.sin_addr) != 1)
        return 2;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0) {
        perror("nuisance: flood: bind");
        return 1;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double start = (double)t0.tv_sec + t0.tv_nsec / 1e9;
    long sent = 0, errors = 0;
    for (long i = 0; i < count; i++) {
        double due = start + seconds * (double)i / (double)count;
        struct timespec at = {(time_t)due, (long)((due - (double)(time_t)due) * 1e9)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
            ;
        if (sendto(fd, "flood", 5, 0, (struct sockaddr *)&to, sizeof to) == 5)
            sent++;
        else
            errors++;
    }
    printf("sent %ld errors %ld\n", sent, errors);
    return 0;
}

static double since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (now.tv_nsec - t0->tv_nsec) / 1e9;
}

static int dns(const char *addr, double seconds)
{
    static const unsigned char question[] = "\5flood\7example\3org\0\0\1\0\1";
    unsigned char query[12 + sizeof question] = {0, 0, 1, 0, 0, 1}; /* RD, one question */
    memcpy(query + 12, question, sizeof question);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(53)};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || inet_pton(AF_INET, addr, &to.sin_addr) != 1)
        return 2;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long sent = 0;
    char answer[512];
    while (since(&t0) < seconds) {
        query[0] = (unsigned char)(sent >> 8);
        query[1] = (unsigned char)sent;
        if (sendto(fd, query, sizeof query, 0, (struct sockaddr *)&to, sizeof to) > 0) {
            sent++;
        } else {
            struct pollfd out = {.fd = fd, .events = POLLOUT};
            poll(&out, 1, 10);
        }
        while (recv(fd, answer, sizeof answer, 0) > 0)
            ;
    }
    printf("queries %ld\n", sent);
    return 0;
}

static int connects(const char *addr, int port, double seconds)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &to.sin_addr) != 1)
        return 2;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long made = 0;
    while (since(&t0) < seconds) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            perror("nuisance: connects: socket");
            return 1;
        }
        if (connect(fd, (struct sockaddr *)&to, sizeof to) == 0 || errno == EINPROGRESS)
            made++;
        close(fd);
    }
    printf("connects %ld\n", made);
    return 0;
}

static int forks(double seconds)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long made = 0;
    while (since(&t0) < seconds) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0) {
            perror("nuisance: forks: fork");
            return 1;
        }
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        made++;
    }
    printf("forks %ld\n", made);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "hold") == 0) {
        int procs = atoi(argv[2]), fds = atoi(argv[3]), seconds = atoi(argv[4]);
        if (procs < 1 || procs > MAX_PROCS || fds < 1 || fds > 1000000 || seconds < 1) {
            fprintf(stderr, "nuisance: hold PROCS (1..%d) FDS (1..1000000) SECONDS (>= 1)\n",
                    MAX_PROCS);
            return 2;
        }
        return hold(procs, fds, seconds);
    }
    if (argc == 7 && strcmp(argv[1], "flood") == 0) {
        long count = atol(argv[5]);
        double seconds = atof(argv[6]);
        if (count < 1 || count > 10000000 || seconds < 0 || seconds > 3600)
            return 2;
        return flood(argv[2], atoi(argv[3]), atoi(argv[4]), count, seconds);
    }
    if (argc == 4 && strcmp(argv[1], "dns") == 0) {
        double seconds = atof(argv[3]);
        if (seconds <= 0 || seconds > 3600)
            return 2;
        return dns(argv[2], seconds);
    }
    if (argc == 5 && strcmp(argv[1], "connects") == 0) {
        double seconds = atof(argv[4]);
        if (seconds <= 0 || seconds > 3600)
            return 2;
        return connects(argv[2], atoi(argv[3]), seconds);
    }
    if (argc == 3 && strcmp(argv[1], "forks") == 0) {
        double seconds = atof(argv[2]);
        if (seconds <= 0 || seconds > 3600)
            return 2;
        return forks(seconds);
    }
    fprintf(stderr, "usage: nuisance hold PROCS FDS SECONDS\n"
                    "       nuisance flood ADDR PORT SPORT COUNT SECONDS\n"
                    "       nuisance dns ADDR SECONDS\n"
                    "       nuisance connects ADDR PORT SECONDS\n"
                    "       nuisance forks SECONDS\n");
    return 2;
}
