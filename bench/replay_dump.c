/* replay_dump.c: the C helper's dump path alone, without the kernel.
 *
 * bench/replay.py records one real dump's receive buffers to a file and
 * builds this harness once per source tree, with that tree's modules
 * #included through CTPY_UNITY.  The harness feeds the buffers to
 * ctpy_dump_next (batches of 2,048 records, a 64 KiB pool: the Python
 * side's defaults) or ctpy_dump_count through a SOCK_SEQPACKET socketpair
 * (one recv per recorded buffer, as from the kernel) written by a second
 * thread, and prints the reader thread's best CPU time.
 *
 * usage: replay_dump FILE MODE ROUNDS   MODE 0: dump_next, 1: count,
 *                                       2: count with a TCP-state filter
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include CTPY_UNITY

static char *data;
static size_t dlen;
static int wfd;

static void *writer(void *arg)
{
    size_t off = 8;

    (void)arg;
    while (off < dlen) {
        uint32_t n;
        memcpy(&n, data + off, 4);
        off += 4;
        if (send(wfd, data + off, n, 0) != (ssize_t)n) {
            perror("send");
            exit(1);
        }
        off += n;
    }
    return NULL;
}

static double cpu_now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    static struct ctpy_record recs[2048];
    static char pool[65536];
    struct ctpy_filter uf;
    uint32_t portid, seq;
    uint64_t total = 0;
    double best = 1e9;
    int mode, rounds, r;
    FILE *f;

    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE MODE ROUNDS\n", argv[0]);
        return 2;
    }
    mode = atoi(argv[2]);
    rounds = atoi(argv[3]);
    f = fopen(argv[1], "rb");
    if (!f)
        return 1;
    fseek(f, 0, SEEK_END);
    dlen = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc(dlen);
    if (!data || fread(data, 1, dlen, f) != dlen)
        return 1;
    fclose(f);
    memcpy(&portid, data, 4);
    memcpy(&seq, data + 4, 4);
    memset(&uf, 0, sizeof(uf));
    if (mode == 2) {
        uf.fields = CTPY_F_STATE;
        uf.states = 1u << TCP_CONNTRACK_ESTABLISHED;
    }
    for (r = 0; r < rounds; r++) {
        struct ctpy_sock *s = calloc(1, sizeof(*s));
        int sv[2], size = 8 << 20;
        pthread_t th;
        double t0, t;

        if (!s || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0)
            return 1;
        setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        s->fd = sv[0];
        s->buf = malloc(CTPY_RECV_BUF);
        s->portid = portid;    /* the recorded replies are addressed to it */
        s->dump_seq = seq;
        s->dumping = 1;
        wfd = sv[1];
        pthread_create(&th, NULL, writer, NULL);
        t0 = cpu_now();
        total = 0;
        if (mode == 0) {
            while (s->dumping) {
                int n = ctpy_dump_next(s, &uf, recs, 2048, pool, sizeof(pool));
                if (n < 0) {
                    fprintf(stderr, "ctpy_dump_next: %d\n", n);
                    return 1;
                }
                total += (uint64_t)n;
            }
        } else if (ctpy_dump_count(s, &uf, &total) < 0) {
            return 1;
        }
        t = cpu_now() - t0;
        pthread_join(th, NULL);
        if (t < best)
            best = t;
        close(sv[0]);
        close(sv[1]);
        free(s->buf);
        free(s);
    }
    printf("%llu %.6f\n", (unsigned long long)total, best);
    return 0;
}
