/* ctpy_int.h: what the C helper's modules share and Python never sees.
 *
 * build_ffi.py compiles the modules listed in its MODULES (sock.c, parse.c,
 * ...) as one translation unit, each through an #include, so the compiler
 * still sees every call; each module also includes this header and compiles
 * on its own.  The functions declared here are internal: hidden from the
 * extension's exported symbols.  The public interface (the cdef) is ctpy.h.
 */
#ifndef CTPY_INT_H
#define CTPY_INT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
/* TCP/SCTP/DCCP state values, for constants.h */
#include <libnetfilter_conntrack/libnetfilter_conntrack_tcp.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_sctp.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_dccp.h>

#include "ctpy.h"

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif

#define CTPY_INTERNAL __attribute__((visibility("hidden")))

#define CTPY_RECV_BUF   (256 * 1024)
#define CTPY_SEND_CHUNK (128 * 1024)
#define CTPY_MSG_BUF    4096

/* What one queued acknowledgement costs in sk_rmem_alloc (skb truesize of
 * a 36-byte NLMSG_ERROR is ~768 bytes; keep a margin). */
#define CTPY_ACK_TRUESIZE 1024

struct ctpy_sock {
    int fd;
    uint32_t portid;
    uint32_t seq;
    uint32_t dump_seq;
    int dumping;
    int done;
    char *buf;              /* received messages: [off, len) not yet handed out */
    size_t len;
    size_t off;
    int max_inflight;       /* requests per sendmsg whose acks fit rcvbuf */
    int overflow;           /* events: ENOBUFS seen, queue not yet drained */
    uint32_t drops_base;    /* events: SK_MEMINFO_DROPS at the last report */
    int dump_intr;          /* a message of this dump had NLM_F_DUMP_INTR */
};

/* ---- sock.c: sending, and the one receive loop --------------------------
 *
 * Every reader of the socket (dumps, the cross-check, request/acknowledge
 * exchanges, batches, events) takes its messages one at a time from
 * rx_next(), with the rule below; what it does with a message stays with it.
 *
 * What to receive: struct ctpy_rx names the replies of one exchange, the
 * sequence numbers [seq, seq + nseq) of the requests sent.
 *
 * The rule:
 * - Stale: on a request socket (every kind but RX_EVENTS) a message whose
 *   nlmsg_seq is outside [seq, seq + nseq), or whose nlmsg_pid is not this
 *   socket's port id, answers an earlier, abandoned request: skipped.
 * - NLM_F_DUMP_INTR on a message of ours sets s->dump_intr (the table changed
 *   under a dump: it may have missed or repeated entries).
 * - NLMSG_DONE ends the exchange: RX_END.
 * - NLMSG_ERROR with error 0 (an acknowledgement) ends it too: RX_END; with
 *   an error, the exchange ends with that -errno.  RX_ACKS (a batch of
 *   requests, each acknowledged) hands every NLMSG_ERROR to the caller
 *   instead, as a message.  An NLMSG_ERROR too short for its error code, or
 *   with a positive one, is -EBADMSG.
 * - Anything else of ours is handed to the caller: RX_MSG, *out set.  It is
 *   consumed; rx_putback() returns it to the buffer (a caller whose output
 *   is full takes it on its next call).
 * - A truncated message (a header that overruns what was received) is
 *   -EBADMSG; recv() returning 0 is -EPIPE.
 * - EINTR: a blocking recv() is retried; the event reader's non-blocking
 *   one returns RX_EMPTY, so Python can run its signal handlers.
 * - queued_only: recv() never waits, and EAGAIN is RX_EMPTY.
 * - ENOBUFS on the event socket (the kernel dropped events) sets
 *   s->overflow and reading goes on (the messages still queued came before
 *   the loss); EAGAIN there is RX_EMPTY: nothing queued.
 * - Any other receive error ends the exchange with -errno: ENOBUFS (replies
 *   were lost), EAGAIN (the socket's timeout).
 * - After a receive error, a truncated message or EOF, the unread buffer is
 *   dropped and, on a request socket (RX_REPLY), which is reused, the
 *   kernel's queue is drained: stale replies and a congested socket would
 *   make the next exchange wait forever.  A batch (RX_ACKS) drains it
 *   itself, counting the acknowledgements still queued (each one is a
 *   request the kernel carried out): it reads on with queued_only set, then
 *   calls rx_drain().  A dump's socket is not drained (its owner closes it;
 *   draining would run the rest of the dump).
 *   An NLMSG_ERROR from the kernel is an answer, not a receive error: what
 *   follows it is left to be skipped as stale.
 * - On the event socket (RX_EVENTS) every message is an event: no sequence
 *   or port id check, and NLMSG_DONE / NLMSG_ERROR are skipped.
 */
enum ctpy_rx_kind {
    RX_REPLY,               /* one request: replies, then NLMSG_DONE or an ack */
    RX_ACKS,                /* a batch: every acknowledgement to the caller */
    RX_DUMP,                /* a dump: replies until NLMSG_DONE */
    RX_EVENTS,              /* multicast events, never blocks */
};

struct ctpy_rx {
    uint32_t seq;           /* the first request's sequence number */
    uint32_t nseq;          /* how many requests: replies carry seq .. seq + nseq - 1 */
    enum ctpy_rx_kind kind;
    int queued_only;        /* never wait: RX_EMPTY once nothing is queued */
};

#define RX_END   0          /* the exchange is over (NLMSG_DONE, an ack) */
#define RX_MSG   1          /* *out is the next message */
#define RX_EMPTY 2          /* RX_EVENTS: nothing queued */

CTPY_INTERNAL int rx_recv(struct ctpy_sock *s, const struct ctpy_rx *rx);
CTPY_INTERNAL int rx_fail(struct ctpy_sock *s, const struct ctpy_rx *rx, int err);
CTPY_INTERNAL void rx_drain(struct ctpy_sock *s);

/* The next message of the exchange rx (the rule above).  Inline: the dump
 * path calls it once per entry, and takes the buffered case without a call. */
static inline int rx_next(struct ctpy_sock *s, const struct ctpy_rx *rx,
                          const struct nlmsghdr **out)
{
    for (;;) {
        const struct nlmsghdr *nlh;

        if (s->off >= s->len) {
            int rc = rx_recv(s, rx);
            if (rc != RX_MSG)
                return rc;
        }
        nlh = (const struct nlmsghdr *)(s->buf + s->off);
        if (!mnl_nlmsg_ok(nlh, (int)(s->len - s->off)))
            return rx_fail(s, rx, -EBADMSG);
        s->off += NLMSG_ALIGN(nlh->nlmsg_len);
        if (rx->kind != RX_EVENTS) {
            if (nlh->nlmsg_seq - rx->seq >= rx->nseq || nlh->nlmsg_pid != s->portid)
                continue;   /* stale: a reply to an abandoned request */
            if (nlh->nlmsg_flags & NLM_F_DUMP_INTR)
                s->dump_intr = 1;
        }
        if (nlh->nlmsg_type == NLMSG_DONE) {
            if (rx->kind == RX_EVENTS)
                continue;
            return RX_END;
        }
        if (nlh->nlmsg_type == NLMSG_ERROR) {
            int err;
            if (rx->kind == RX_EVENTS)
                continue;
            if (nlh->nlmsg_len < NLMSG_HDRLEN + sizeof(int))
                return rx_fail(s, rx, -EBADMSG);
            err = ((const struct nlmsgerr *)NLMSG_DATA(nlh))->error;
            if (err > 0)
                return rx_fail(s, rx, -EBADMSG);
            if (rx->kind == RX_ACKS) {
                *out = nlh;
                return RX_MSG;
            }
            return err < 0 ? err : RX_END;
        }
        *out = nlh;
        return RX_MSG;
    }
}

/* Give back the message rx_next() just returned: the next call returns it again. */
static inline void rx_putback(struct ctpy_sock *s, const struct nlmsghdr *nlh)
{
    s->off = (size_t)((const char *)nlh - s->buf);
}

/* The error code of an NLMSG_ERROR that rx_next() handed over (RX_ACKS). */
static inline int rx_ack_error(const struct nlmsghdr *nlh)
{
    return ((const struct nlmsgerr *)NLMSG_DATA(nlh))->error;
}

CTPY_INTERNAL int send_all(struct ctpy_sock *s, const void *buf, size_t len);
CTPY_INTERNAL struct nlmsghdr *put_header(char *buf, uint8_t msg, uint16_t flags,
                                          uint8_t family, uint8_t version, uint32_t seq);

/* ---- parse.c: the one-pass parser --------------------------------------- */

CTPY_INTERNAL int parse_fast(const struct nlmsghdr *nlh, struct ctpy_record *r,
                             char *pool, uint32_t *used);

/* ---- dump.c: dumps ------------------------------------------------------ */

/* The dump is over (complete, failed, or abandoned by its reader): returns err. */
CTPY_INTERNAL int dump_end(struct ctpy_sock *s, int err);

/* ---- nfct.c: records <-> libnetfilter_conntrack ------------------------- */

CTPY_INTERNAL void fill_record(const struct nf_conntrack *ct, struct ctpy_record *r,
                               char *pool, uint32_t *pool_used);
CTPY_INTERNAL int build_request(char *buf, uint8_t msg, uint16_t flags,
                                const struct ctpy_record *r, const char *pool,
                                int pin_id, uint32_t seq);

/* ---- match.c: the userspace filter -------------------------------------- */

CTPY_INTERNAL int has_ports(uint8_t proto);

/* ---- kfilter.c: the kernel-side filter attributes ----------------------- */

CTPY_INTERNAL void put_kfilter(struct nlmsghdr *nlh, const struct ctpy_kfilter *kf);

/* ---- top.c: the key table of top talkers -------------------------------- */

CTPY_INTERNAL int top_add(struct ctpy_top *t, const struct ctpy_record *r);

/* ---- request.c: request / acknowledge ----------------------------------- */

/* Send one request and receive until its end: the acknowledgement, an
 * error, or NLMSG_DONE for a dump.  Every other reply to it goes to cb
 * (when given).  Returns 0 or -errno. */
typedef void (*reply_cb)(const struct nlmsghdr *nlh, void *data);
CTPY_INTERNAL int exchange(struct ctpy_sock *s, const struct nlmsghdr *req,
                           reply_cb cb, void *data);

#endif
