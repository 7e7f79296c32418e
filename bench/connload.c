/* connload: the load client and server of bench/connbench.py, the same for every configuration.
 *
 *   connload server ADDR PORT THREADS
 *       TCP: THREADS threads accept() and close() on one listener (SO_REUSEADDR, backlog 65535);
 *       UDP: one thread echoes each datagram. Prints "ready" once listening; runs until killed.
 *   connload tcp ADDR PORT THREADS SECONDS WARMUP
 *       each thread: socket(), connect() (timed), close() with SO_LINGER 0, in a loop.
 *   connload udp ADDR PORT THREADS SECONDS WARMUP
 *       each thread: socket(), bind() to the next port of its own slice, sendto(), recv() the
 *       echo (timed from before sendto), close(): a new source port, so a new conntrack flow;
 *       after each pass over its ports, the next of 16 server ports.
 *
 * Clients run for WARMUP + SECONDS; only connections started after WARMUP are timed and counted.
 * They print one JSON object: count, rate, errors and latency percentiles (µs).
 *
 *   connload paced ADDR PORT RATE SECONDS
 *       the steady client of bench/disturb.py: one TCP connect (as above) every 1/RATE s on a
 *       fixed schedule, for SECONDS or until killed; a line per connect as it ends:
 *       "START_NS LATENCY_NS ERRNO" (CLOCK_MONOTONIC, the clock of every process here; ERRNO 0:
 *       connected). A slot that comes while a connect still waits is skipped, so a stall shows
 *       as one long connect, not as a burst of quick ones after it.
 *   connload once ADDR PORT
 *       one such connect and its line: a new process that connects (disturb.py runs it, and
 *       padded copies of it, as another user). Exit status 0 when it connected.
 *
 * Why SO_LINGER 0: close() then sends RST, so the client keeps no TIME_WAIT socket and ~95k
 * connections/s never run out of ephemeral ports; conntrack treats a SYN on a tuple whose entry
 * saw our RST as a new connection (ctstate NEW), so every connect is queued (connbench checks
 * this against the kernel's queue counter). Why explicit UDP ports, and 16 server ports: a
 * (source port, server port) pair must not come back while conntrack still holds the earlier
 * flow's entry (1 s, set by connbench), or the flow is not NEW and skips the queue; a random
 * port may well come back, and 50,000 ports alone last only 0.7 s at 71k flows/s (measured).
 * A connect or echo that takes longer than 3 s is counted as a timeout, so the loop is bounded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES (1u << 22) /* per thread: 16 MB of uint32 ns; more connects are counted only */
#define UDP_PORT_LO 10000
#define UDP_PORT_HI 60000
#define UDP_DPORTS 16 /* the server echoes on PORT..PORT+15: 16 x 50,000 distinct flows */
#define IO_TIMEOUT_S 3

struct worker {
    pthread_t tid;
    int index;
    int nthreads;
    uint32_t *samples; /* latency in ns (a 3 s timeout keeps it below 2^32) */
    uint64_t nsamples;
    uint64_t count;     /* timed successes, after warm-up */
    uint64_t attempts;  /* every connect / sendto, warm-up included (to check the queue) */
    uint64_t refused, timeouts, other_errors;
    int last_errno;
};

static struct sockaddr_in target;
static int mode_udp;
static double run_seconds, warm_seconds;
static pthread_barrier_t start_barrier;

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void record(struct worker *w, uint64_t ns)
{
    w->count++;
    if (w->nsamples < MAX_SAMPLES)
        w->samples[w->nsamples++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void fail(struct worker *w, int err, int counted)
{
    w->last_errno = err;
    if (!counted)
        return;
    if (err == ECONNREFUSED)
        w->refused++;
    else if (err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS || err == ETIMEDOUT)
        w->timeouts++;
    else
        w->other_errors++;
}

static int one_tcp(struct worker *w, uint64_t *ns)
{
    static const struct linger rst = {1, 0};
    static const struct timeval limit = {IO_TIMEOUT_S, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit); /* bounds connect() */
    w->attempts++;
    uint64_t t0 = now_ns();
    int rc = connect(fd, (struct sockaddr *)&target, sizeof target);
    *ns = now_ns() - t0;
    int err = rc == 0 ? 0 : errno;
    close(fd);
    return err;
}

static int one_udp(struct worker *w, uint64_t *ns, uint16_t *port, unsigned *pass)
{
    static const struct timeval limit = {IO_TIMEOUT_S, 0};
    uint16_t span = (UDP_PORT_HI - UDP_PORT_LO) / w->nthreads;
    uint16_t lo = UDP_PORT_LO + span * w->index;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    struct sockaddr_in me = {.sin_family = AF_INET};
    int bound = -1;
    for (int tries = 0; tries < 16 && bound != 0; tries++) { /* skip a port still in use */
        if (*port + 1 >= lo + span || *port < lo) {
            *port = lo;
            ++*pass;
        } else {
            *port = *port + 1;
        }
        me.sin_port = htons(*port);
        bound = bind(fd, (struct sockaddr *)&me, sizeof me);
    }
    if (bound != 0) {
        int err = errno;
        close(fd);
        return err;
    }
    char buf[16] = "x";
    struct sockaddr_in to = target;
    to.sin_port = htons((uint16_t)(ntohs(target.sin_port) + *pass % UDP_DPORTS));
    w->attempts++;
    uint64_t t0 = now_ns();
    int err = 0;
    if (sendto(fd, buf, 1, 0, (struct sockaddr *)&to, sizeof to) != 1)
        err = errno;
    else if (recv(fd, buf, sizeof buf, 0) < 0)
        err = errno;
    *ns = now_ns() - t0;
    close(fd);
    return err;
}

static void *client_thread(void *arg)
{
    struct worker *w = arg;
    uint16_t port = 0;
    unsigned pass = (unsigned)getpid(); /* another server port than the last run, likely */
    pthread_barrier_wait(&start_barrier);
    uint64_t begin = now_ns();
    uint64_t warm_end = begin + (uint64_t)(warm_seconds * 1e9);
    uint64_t end = warm_end + (uint64_t)(run_seconds * 1e9);
    for (;;) {
        uint64_t started = now_ns();
        if (started >= end)
            break;
        uint64_t ns = 0;
        int err = mode_udp ? one_udp(w, &ns, &port, &pass) : one_tcp(w, &ns);
        int counted = started >= warm_end;
        if (err)
            fail(w, err, counted);
        else if (counted)
            record(w, ns);
    }
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* A percentile in µs as JSON: null when nothing was timed. */
static const char *pct(char *out, const uint32_t *v, uint64_t n, double p)
{
    if (n == 0)
        return "null";
    uint64_t i = (uint64_t)(p * (double)(n - 1) + 0.5);
    snprintf(out, 32, "%.2f", v[i] / 1000.0);
    return out;
}

static int run_clients(int nthreads)
{
    struct worker *ws = calloc((size_t)nthreads, sizeof *ws);
    if (!ws)
        return 1;
    pthread_barrier_init(&start_barrier, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++) {
        ws[i].index = i;
        ws[i].nthreads = nthreads;
        ws[i].samples = malloc(MAX_SAMPLES * sizeof(uint32_t));
        if (!ws[i].samples || pthread_create(&ws[i].tid, NULL, client_thread, &ws[i]) != 0) {
            fprintf(stderr, "connload: cannot start thread %d\n", i);
            return 1;
        }
    }
    pthread_barrier_wait(&start_barrier);
    uint64_t total = 0, nsamples = 0, attempts = 0, refused = 0, timeouts = 0, other = 0;
    int last_errno = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(ws[i].tid, NULL);
        total += ws[i].count;
        nsamples += ws[i].nsamples;
        attempts += ws[i].attempts;
        refused += ws[i].refused;
        timeouts += ws[i].timeouts;
        other += ws[i].other_errors;
        if (ws[i].last_errno)
            last_errno = ws[i].last_errno;
    }
    uint32_t *all = malloc((nsamples ? nsamples : 1) * sizeof(uint32_t));
    if (!all)
        return 1;
    uint64_t k = 0;
    double sum = 0;
    for (int i = 0; i < nthreads; i++) {
        memcpy(all + k, ws[i].samples, ws[i].nsamples * sizeof(uint32_t));
        k += ws[i].nsamples;
        for (uint64_t j = 0; j < ws[i].nsamples; j++)
            sum += ws[i].samples[j];
        free(ws[i].samples);
    }
    qsort(all, nsamples, sizeof(uint32_t), cmp_u32);
    char b50[32], b90[32], b99[32], b999[32], bmax[32];
    printf("{\"mode\": \"%s\", \"threads\": %d, \"seconds\": %.3f, \"warmup\": %.3f, "
           "\"count\": %llu, \"rate\": %.1f, \"attempts\": %llu, \"refused\": %llu, "
           "\"timeouts\": %llu, \"other_errors\": %llu, \"last_error\": \"%s\", "
           "\"samples\": %llu, \"mean_us\": %.2f, \"p50_us\": %s, \"p90_us\": %s, "
           "\"p99_us\": %s, \"p999_us\": %s, \"max_us\": %s}\n",
           mode_udp ? "udp" : "tcp", nthreads, run_seconds, warm_seconds,
           (unsigned long long)total, total / run_seconds, (unsigned long long)attempts,
           (unsigned long long)refused, (unsigned long long)timeouts, (unsigned long long)other,
           last_errno ? strerror(last_errno) : "", (unsigned long long)nsamples,
           nsamples ? sum / nsamples / 1000.0 : 0.0, pct(b50, all, nsamples, 0.50),
           pct(b90, all, nsamples, 0.90), pct(b99, all, nsamples, 0.99),
           pct(b999, all, nsamples, 0.999), pct(bmax, all, nsamples, 1.0));
    free(all);
    free(ws);
    return 0;
}

/* One timed connect, printed as a line of the paced mode; returns its errno (0: connected). */
static int one_line(void)
{
    struct worker w = {0};
    uint64_t started = now_ns(), ns = 0;
    int err = one_tcp(&w, &ns);
    printf("%llu %llu %d\n", (unsigned long long)started, (unsigned long long)ns, err);
    fflush(stdout);
    return err;
}

static int run_paced(double rate, double seconds)
{
    uint64_t period = (uint64_t)(1e9 / rate);
    uint64_t next = now_ns();
    uint64_t end = next + (uint64_t)(seconds * 1e9);
    while (next < end) {
        struct timespec at = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
            ;
        one_line();
        uint64_t now = now_ns();
        next += period;
        if (next <= now) /* skip the slots a slow connect took */
            next += ((now - next) / period + 1) * period;
    }
    return 0;
}

static int tcp_listener;

static void *accept_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept4(tcp_listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd);
        else if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN && errno != EMFILE)
            return NULL;
    }
}

static void *echo_thread(void *arg)
{
    int fd = *(int *)arg;
    char buf[2048];
    struct sockaddr_in peer;
    for (;;) {
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n >= 0)
            sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
        else if (errno != EINTR)
            return NULL;
    }
}

static int run_server(int nthreads)
{
    static int udp[UDP_DPORTS];
    int one = 1;
    tcp_listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(tcp_listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(tcp_listener, (struct sockaddr *)&target, sizeof target) != 0 ||
        listen(tcp_listener, 65535) != 0) {
        perror("connload: server: tcp");
        return 1;
    }
    pthread_t tid;
    for (int i = 0; i < UDP_DPORTS; i++) {
        struct sockaddr_in at = target;
        at.sin_port = htons((uint16_t)(ntohs(target.sin_port) + i));
        udp[i] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (bind(udp[i], (struct sockaddr *)&at, sizeof at) != 0) {
            perror("connload: server: udp");
            return 1;
        }
        pthread_create(&tid, NULL, echo_thread, &udp[i]);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_create(&tid, NULL, accept_thread, NULL);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    if (argc < 4 || (argc < 5 && strcmp(argv[1], "once") != 0)) {
        fprintf(stderr, "usage: connload server ADDR PORT THREADS\n"
                        "       connload tcp|udp ADDR PORT THREADS SECONDS WARMUP\n"
                        "       connload paced ADDR PORT RATE SECONDS\n"
                        "       connload once ADDR PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1) {
        fprintf(stderr, "connload: bad IPv4 address %s\n", argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "once") == 0)
        return one_line() == 0 ? 0 : 1;
    if (strcmp(argv[1], "paced") == 0) {
        double rate = argc > 5 ? atof(argv[4]) : 0, seconds = argc > 5 ? atof(argv[5]) : 0;
        if (rate <= 0 || rate > 10000 || seconds <= 0 || seconds > 86400) {
            fprintf(stderr, "connload: paced RATE must be in (0, 10000], SECONDS in (0, 86400]\n");
            return 2;
        }
        return run_paced(rate, seconds);
    }
    int nthreads = atoi(argv[4]);
    if (nthreads < 1 || nthreads > 64) {
        fprintf(stderr, "connload: THREADS must be 1..64\n");
        return 2;
    }
    if (strcmp(argv[1], "server") == 0)
        return run_server(nthreads);
    if (argc < 7)
        return 2;
    mode_udp = strcmp(argv[1], "udp") == 0;
    if (!mode_udp && strcmp(argv[1], "tcp") != 0)
        return 2;
    run_seconds = atof(argv[5]);
    warm_seconds = atof(argv[6]);
    if (run_seconds <= 0 || run_seconds > 600 || warm_seconds < 0 || warm_seconds > 60) {
        fprintf(stderr, "connload: SECONDS must be in (0, 600], WARMUP in [0, 60]\n");
        return 2;
    }
    return run_clients(nthreads);
}
