/* sock.c: the netlink socket (open in a namespace, close, timeout), sending,
 * and the receive side of the one receive loop (rx_next in ctpy_int.h).
 */
#include "ctpy_int.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/time.h>

#ifndef CTPY_NFCT_VERSION  /* build_ffi.py defines it from pkg-config */
#define CTPY_NFCT_VERSION "unknown"
#endif

static int set_buf(int fd, int force_opt, int opt, int size)
{
    if (setsockopt(fd, SOL_SOCKET, force_opt, &size, sizeof(size)) == 0)
        return 0;
    /* Without CAP_NET_ADMIN the FORCE variant fails: take what rmem_max
     * allows. */
    return setsockopt(fd, SOL_SOCKET, opt, &size, sizeof(size));
}

static int open_here(int rcvbuf)
{
    int fd, one = 1;
    struct sockaddr_nl sa;

    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0)
        return -errno;
    set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, rcvbuf);
    set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, 4 * CTPY_SEND_CHUNK);
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

struct ctpy_sock *ctpy_open(int netns_fd, int rcvbuf, int *err)
{
    struct ctpy_sock *s;
    struct sockaddr_nl sa;
    socklen_t salen = sizeof(sa);
    int fd;

    *err = 0;
    if (netns_fd >= 0) {
        /* setns() moves only this thread; move it back whatever happens. */
        int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (self < 0) {
            *err = errno;
            return NULL;
        }
        if (setns(netns_fd, CLONE_NEWNET) < 0) {
            *err = errno;
            close(self);
            return NULL;
        }
        fd = open_here(rcvbuf);
        if (setns(self, CLONE_NEWNET) < 0) {
            /* The thread is stuck in the wrong namespace: refuse to go on. */
            if (fd >= 0)
                close(fd);
            close(self);
            *err = -1;
            return NULL;
        }
        close(self);
    } else {
        fd = open_here(rcvbuf);
    }
    if (fd < 0) {
        *err = -fd;
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s)
        s->buf = malloc(CTPY_RECV_BUF);
    if (!s || !s->buf) {
        free(s);
        close(fd);
        *err = ENOMEM;
        return NULL;
    }
    if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0)
        s->portid = sa.nl_pid;
    s->fd = fd;
    {
        int rb = 0;
        socklen_t rl = sizeof(rb);
        if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, &rl) < 0 || rb <= 0)
            rb = 212992;
        /* half the buffer, so replies queued meanwhile never tip it over */
        s->max_inflight = rb / 2 / CTPY_ACK_TRUESIZE;
        if (s->max_inflight < 1)
            s->max_inflight = 1;
    }
    s->seq = (uint32_t)getpid() ^ (uint32_t)(uintptr_t)s;
    s->done = 1;
    return s;
}

/* Bound every blocking recv (request/acknowledge exchanges, dumps): a
 * kernel that never answers makes recv fail with EAGAIN instead of hanging.
 * ms <= 0: wait forever. */
int ctpy_set_timeout(struct ctpy_sock *s, int ms)
{
    struct timeval tv = {0, 0};

    if (ms > 0) {
        tv.tv_sec = ms / 1000;
        tv.tv_usec = (ms % 1000) * 1000;
    }
    if (setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        return -errno;
    return 0;
}

/* The socket's descriptor (tests inspect it; nothing else uses it). */
int ctpy_sock_fd(const struct ctpy_sock *s)
{
    return s->fd;
}

void ctpy_close(struct ctpy_sock *s)
{
    if (!s)
        return;
    close(s->fd);
    free(s->buf);
    free(s);
}

int send_all(struct ctpy_sock *s, const void *buf, size_t len)
{
    struct sockaddr_nl sa;
    ssize_t n;

    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    do {
        n = sendto(s->fd, buf, len, 0, (struct sockaddr *)&sa, sizeof(sa));
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if ((size_t)n != len)
        return -EMSGSIZE;
    return 0;
}

struct nlmsghdr *put_header(char *buf, uint8_t msg, uint16_t flags,
                            uint8_t family, uint8_t version, uint32_t seq)
{
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    struct nfgenmsg *nfh;

    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | msg;
    nlh->nlmsg_flags = NLM_F_REQUEST | flags;
    nlh->nlmsg_seq = seq;
    nfh = mnl_nlmsg_put_extra_header(nlh, sizeof(*nfh));
    nfh->nfgen_family = family;
    nfh->version = version;
    nfh->res_id = 0;
    return nlh;
}
/* After a receive error (ENOBUFS: replies were dropped) the queue still
 * holds stale replies and the socket stays congested: the kernel then drops
 * further replies without reporting it, and the next exchange waits
 * forever.  Empty the queue so the socket is usable again. */
void rx_drain(struct ctpy_sock *s)
{
    ssize_t n;

    s->len = s->off = 0;
    while ((n = recv(s->fd, s->buf, CTPY_RECV_BUF, MSG_DONTWAIT)) > 0 || (n < 0 && errno == EINTR))
        ;
}

/* End the exchange rx with err (ctpy_int.h's rule: the buffer is dropped, a
 * request socket's queue drained). */
int rx_fail(struct ctpy_sock *s, const struct ctpy_rx *rx, int err)
{
    s->len = s->off = 0;
    if (rx->kind == RX_REPLY)
        rx_drain(s);
    return err;
}

/* Refill the empty buffer with one recv(): RX_MSG when something came, else
 * RX_EMPTY (events: nothing queued) or -errno (the rule in ctpy_int.h). */
int rx_recv(struct ctpy_sock *s, const struct ctpy_rx *rx)
{
    int events = rx->kind == RX_EVENTS, nowait = events || rx->queued_only;

    for (;;) {
        ssize_t n = recv(s->fd, s->buf, CTPY_RECV_BUF, nowait ? MSG_DONTWAIT : 0);

        if (n > 0) {
            s->len = (size_t)n;
            s->off = 0;
            return RX_MSG;
        }
        s->len = s->off = 0;
        if (n == 0)
            return rx_fail(s, rx, -EPIPE);
        if (errno == EINTR) {
            if (events)
                return RX_EMPTY;
            continue;
        }
        if (events && errno == ENOBUFS) {
            s->overflow = 1;  /* the queued messages came before the loss */
            continue;
        }
        if (nowait && errno == EAGAIN)
            return RX_EMPTY;
        return rx_fail(s, rx, -errno);
    }
}

int ctpy_setns(int netns_fd)
{
    return setns(netns_fd, CLONE_NEWNET) < 0 ? -errno : 0;
}

/* Move the calling thread into a new, empty network namespace (for probes). */
int ctpy_unshare_netns(void)
{
    return unshare(CLONE_NEWNET) < 0 ? -errno : 0;
}

const char *ctpy_nfct_version(void)
{
    return CTPY_NFCT_VERSION;
}
