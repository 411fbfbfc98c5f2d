/* A TCP relay that holds every byte for a fixed time in each direction: the delay of a link
 * that the kernel here cannot add (it is built without netem). scripts/bench compiles it and
 * runs it on the host side of a veth pair whose other end is in a network namespace where the
 * job runs, so that the job's traffic crosses a real interface (rate-limited with tbf when
 * asked) and waits the round trip a farther server would cost.
 *
 *   delay-link ONE_WAY_MICROSECONDS LISTEN_ADDRESS PORT:TARGET_HOST:TARGET_PORT ...
 *
 * Each accepted connection gets a connection to its target and two threads per direction: one
 * reads and stamps each chunk with the time it may leave, one writes it then. TCP_NODELAY on
 * both sides, so that nothing but the stated delay is added. It prints "ready" once listening
 * and runs until killed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 262144
#define MAX_QUEUED (32L << 20) /* a direction's bytes in flight before its reader waits */

static long delay_ns;

struct chunk {
    struct chunk *next;
    struct timespec due;
    ssize_t length; /* 0: the sender closed its side */
    char data[];
};

struct direction {
    int from, to;
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    struct chunk *head, *tail;
    long queued;
    int broken;
};

__attribute__((noreturn)) static void fail(const char *what) {
    perror(what);
    exit(1);
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void push(struct direction *d, struct chunk *c) {
    pthread_mutex_lock(&d->mutex);
    while (d->queued > MAX_QUEUED && !d->broken) pthread_cond_wait(&d->changed, &d->mutex);
    if (d->tail) d->tail->next = c; else d->head = c;
    d->tail = c;
    d->queued += c->length;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mutex);
}

static void *reader(void *arg) {
    struct direction *d = arg;
    for (;;) {
        struct chunk *c = malloc(sizeof *c + CHUNK);
        if (!c) fail("malloc");
        c->next = NULL;
        c->length = read(d->from, c->data, CHUNK);
        if (c->length < 0 && errno == EINTR) { free(c); continue; }
        if (c->length < 0) c->length = 0;
        clock_gettime(CLOCK_MONOTONIC, &c->due);
        c->due.tv_nsec += delay_ns;
        c->due.tv_sec += c->due.tv_nsec / 1000000000L;
        c->due.tv_nsec %= 1000000000L;
        int last = c->length == 0;
        push(d, c);
        if (last) return NULL;
    }
}

static int write_all(int fd, const char *p, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= w;
    }
    return 0;
}

static void *writer(void *arg) {
    struct direction *d = arg;
    for (;;) {
        pthread_mutex_lock(&d->mutex);
        while (!d->head) pthread_cond_wait(&d->changed, &d->mutex);
        struct chunk *c = d->head;
        d->head = c->next;
        if (!d->head) d->tail = NULL;
        d->queued -= c->length;
        pthread_cond_broadcast(&d->changed);
        pthread_mutex_unlock(&d->mutex);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &c->due, NULL) == EINTR) {}
        int done = c->length == 0 || write_all(d->to, c->data, c->length) != 0;
        free(c);
        if (done) {
            /* The other side sees the close (or the failure) only after the delay, as on a link. */
            shutdown(d->to, SHUT_WR);
            shutdown(d->from, SHUT_RD);
            pthread_mutex_lock(&d->mutex);
            d->broken = 1;
            pthread_cond_broadcast(&d->changed);
            pthread_mutex_unlock(&d->mutex);
            return NULL;
        }
    }
}

struct relay {
    int client;
    struct addrinfo *target;
};

static void *relay(void *arg) {
    struct relay *r = arg;
    int upstream = socket(r->target->ai_family, SOCK_STREAM, 0);
    if (upstream < 0 || connect(upstream, r->target->ai_addr, r->target->ai_addrlen) != 0) {
        close(r->client);
        if (upstream >= 0) close(upstream);
        free(r);
        return NULL;
    }
    nodelay(upstream);
    nodelay(r->client);
    struct direction ways[2] = {
        {.from = r->client, .to = upstream, .mutex = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER},
        {.from = upstream, .to = r->client, .mutex = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER},
    };
    pthread_t threads[4];
    for (int i = 0; i < 2; i++) {
        pthread_create(&threads[2 * i], NULL, reader, &ways[i]);
        pthread_create(&threads[2 * i + 1], NULL, writer, &ways[i]);
    }
    /* Writers first: a writer that ended shut its reader's socket, so the reader returns. */
    pthread_join(threads[1], NULL);
    pthread_join(threads[3], NULL);
    shutdown(r->client, SHUT_RDWR);
    shutdown(upstream, SHUT_RDWR);
    pthread_join(threads[0], NULL);
    pthread_join(threads[2], NULL);
    for (int i = 0; i < 2; i++)
        for (struct chunk *c = ways[i].head, *n; c; c = n) { n = c->next; free(c); }
    close(r->client);
    close(upstream);
    free(r);
    return NULL;
}

struct listener {
    int fd;
    struct addrinfo *target;
};

static void *accepting(void *arg) {
    struct listener *l = arg;
    for (;;) {
        int client = accept(l->fd, NULL, NULL);
        if (client < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            fail("accept");
        }
        struct relay *r = malloc(sizeof *r);
        r->client = client;
        r->target = l->target;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_create(&t, &attr, relay, r);
        pthread_attr_destroy(&attr);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: delay-link ONE_WAY_MICROSECONDS LISTEN_ADDRESS PORT:TARGET_HOST:TARGET_PORT ...\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    delay_ns = atol(argv[1]) * 1000L;
    pthread_t threads[argc];
    for (int i = 3; i < argc; i++) {
        char port[16], host[256], target_port[16];
        if (sscanf(argv[i], "%15[^:]:%255[^:]:%15s", port, host, target_port) != 3) {
            fprintf(stderr, "delay-link: %s is not PORT:TARGET_HOST:TARGET_PORT\n", argv[i]);
            return 64;
        }
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *target, *local;
        if (getaddrinfo(host, target_port, &hints, &target) != 0 || getaddrinfo(argv[2], port, &hints, &local) != 0) {
            fprintf(stderr, "delay-link: cannot resolve %s\n", argv[i]);
            return 1;
        }
        int fd = socket(local->ai_family, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, local->ai_addr, local->ai_addrlen) != 0 || listen(fd, 128) != 0) fail("listen");
        struct listener *l = malloc(sizeof *l);
        l->fd = fd;
        l->target = target;
        pthread_create(&threads[i], NULL, accepting, l);
    }
    printf("ready\n");
    fflush(stdout);
    pause();
    return 0;
}
