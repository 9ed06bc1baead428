/* events.c: the event socket: multicast subscription, the kernel's drop
 * counter, the BPF filter built by libnetfilter_conntrack's nfct_filter,
 * and ctpy_events_next, which reads events with rx_next (ctpy_int.h),
 * parses them with parse_fast and filters them with ctpy_match.
 */
#include "ctpy_int.h"

#include <poll.h>
#include <linux/sock_diag.h>

int ctpy_events_subscribe(struct ctpy_sock *s, uint32_t types)
{
    static const struct { uint32_t type; int group; } groups[] = {
        {CTPY_EV_NEW, NFNLGRP_CONNTRACK_NEW},
        {CTPY_EV_UPDATE, NFNLGRP_CONNTRACK_UPDATE},
        {CTPY_EV_DESTROY, NFNLGRP_CONNTRACK_DESTROY},
    };
    size_t i;

    for (i = 0; i < sizeof(groups) / sizeof(groups[0]); i++) {
        int g = groups[i].group;
        if (!(types & groups[i].type))
            continue;
        if (setsockopt(s->fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)) < 0)
            return -errno;
    }
    s->len = s->off = 0;
    if (ctpy_events_drops(s, &s->drops_base) < 0)
        s->drops_base = 0;
    return 0;
}

int ctpy_events_fd(const struct ctpy_sock *s)
{
    return s->fd;
}

/* The kernel's count of messages it dropped for this socket because the
 * receive buffer was full (netlink_overrun): SK_MEMINFO_DROPS.  Messages
 * that a socket filter rejects are not counted. */
int ctpy_events_drops(const struct ctpy_sock *s, uint32_t *drops)
{
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t len = sizeof(mem);

    memset(mem, 0, sizeof(mem));
    if (getsockopt(s->fd, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0)
        return -errno;
    if (len < (SK_MEMINFO_DROPS + 1) * sizeof(uint32_t))
        return -EOPNOTSUPP;
    *drops = mem[SK_MEMINFO_DROPS];
    return 0;
}

int ctpy_events_bpf_zone(void)
{
#ifdef CTPY_HAVE_NFCT_FILTER_ZONE
    return 1;
#else
    return 0;
#endif
}

static uint32_t word_at(const uint8_t *p)
{
    uint32_t w;

    memcpy(&w, p, 4);
    return ntohl(w);
}

/* Add one address/mask to nfct_filter: its BPF code loads the address with
 * BPF_W (network to host order), so the values go in host order. */
static void bpf_addr(struct nfct_filter *f, const struct ctpy_cidr *c, int src)
{
    if (c->family == AF_INET) {
        struct nfct_filter_ipv4 v4;
        v4.addr = word_at(c->addr);
        v4.mask = word_at(c->mask);
        nfct_filter_add_attr(f, src ? NFCT_FILTER_SRC_IPV4 : NFCT_FILTER_DST_IPV4, &v4);
        nfct_filter_set_logic(f, src ? NFCT_FILTER_SRC_IPV4 : NFCT_FILTER_DST_IPV4,
                              NFCT_FILTER_LOGIC_POSITIVE);
    } else {
        struct nfct_filter_ipv6 v6;
        int k;
        for (k = 0; k < 4; k++) {
            v6.addr[k] = word_at(c->addr + 4 * k);
            v6.mask[k] = word_at(c->mask + 4 * k);
        }
        nfct_filter_add_attr(f, src ? NFCT_FILTER_SRC_IPV6 : NFCT_FILTER_DST_IPV6, &v6);
        nfct_filter_set_logic(f, src ? NFCT_FILTER_SRC_IPV6 : NFCT_FILTER_DST_IPV6,
                              NFCT_FILTER_LOGIC_POSITIVE);
    }
}

/* Compile b into libnetfilter_conntrack's event filter and attach it to the
 * socket (SO_ATTACH_FILTER).  Its program lets a message through when an
 * attribute it looks for is missing (an UPDATE without protocol info under
 * a state test, an IPv4 event under an IPv6 address test), so it only
 * narrows what ctpy_match then checks in full.  Its IPv4 address tests
 * search past the address nest and may drop an IPv6 event; a filter with
 * an IPv4 address never matches one (tests/test_events_bpf.py). */
int ctpy_events_bpf(struct ctpy_sock *s, const struct ctpy_bpf *b)
{
    struct nfct_filter *f;
    int rc;

    if (!b->fields)
        return 0;
    if ((b->fields & CTPY_B_ZONE) && !ctpy_events_bpf_zone())
        return -EOPNOTSUPP;
    f = nfct_filter_create();
    if (!f)
        return -ENOMEM;
    if (b->fields & CTPY_B_PROTO) {
        nfct_filter_add_attr_u32(f, NFCT_FILTER_L4PROTO, b->proto);
        nfct_filter_set_logic(f, NFCT_FILTER_L4PROTO, NFCT_FILTER_LOGIC_POSITIVE);
    }
    if (b->fields & CTPY_B_STATE) {
        uint16_t st;
        for (st = 0; st < 16; st++) {
            struct nfct_filter_proto fp = {IPPROTO_TCP, st};
            if (b->states & (1u << st))
                nfct_filter_add_attr(f, NFCT_FILTER_L4PROTO_STATE, &fp);
        }
        nfct_filter_set_logic(f, NFCT_FILTER_L4PROTO_STATE, NFCT_FILTER_LOGIC_POSITIVE);
    }
    if (b->fields & CTPY_B_SRC)
        bpf_addr(f, &b->src, 1);
    if (b->fields & CTPY_B_DST)
        bpf_addr(f, &b->dst, 0);
    if (b->fields & CTPY_B_MARK) {
        struct nfct_filter_dump_mark m = {b->mark_val, b->mark_mask};
        nfct_filter_add_attr(f, NFCT_FILTER_MARK, &m);
        nfct_filter_set_logic(f, NFCT_FILTER_MARK, NFCT_FILTER_LOGIC_POSITIVE);
    }
#ifdef CTPY_HAVE_NFCT_FILTER_ZONE
    if (b->fields & CTPY_B_ZONE) {
        uint16_t z = b->zone;
        nfct_filter_add_attr(f, NFCT_FILTER_ZONE, &z);
        nfct_filter_set_logic(f, NFCT_FILTER_ZONE, NFCT_FILTER_LOGIC_POSITIVE);
    }
#endif
    rc = nfct_filter_attach(s->fd, f) < 0 ? -errno : 0;
    nfct_filter_destroy(f);
    return rc;
}

static uint8_t event_type(const struct nlmsghdr *nlh)
{
    if ((nlh->nlmsg_type & 0xff) == IPCTNL_MSG_CT_DELETE)
        return CTPY_EV_DESTROY;
    if (nlh->nlmsg_flags & (NLM_F_CREATE | NLM_F_EXCL))
        return CTPY_EV_NEW;
    return CTPY_EV_UPDATE;
}

/* Up to max events that match uf.  Waits up to timeout_ms (-1: forever)
 * once, for the first message, and otherwise takes only what is already
 * queued, so the call returns to Python (signals, idle timeout) after every
 * wake-up even when nothing matched.
 *
 * A full receive buffer (the kernel dropped events) counts in *overflows.
 * The kernel reports ENOBUFS before the messages still queued, which were
 * all sent before the loss, and drops everything until the queue is empty:
 * so the loss sits where the queue runs dry.  The overflow is reported only
 * then, after the events returned with it (the caller yields them first);
 * until then it stays pending on the socket, and *lost grows by the
 * events the kernel dropped since the previous report (-1: unknown).
 * Returns the number of events or -errno. */
int ctpy_events_next(struct ctpy_sock *s, const struct ctpy_filter *uf,
                     struct ctpy_record *out, uint8_t *types, int max,
                     char *pool, uint32_t pool_size, int timeout_ms,
                     uint32_t *overflows, int64_t *lost)
{
    static const struct ctpy_rx rx = {0, 0, RX_EVENTS};
    uint32_t used = 0;
    int n = 0, waited = 0;

    while (n < max) {
        const struct nlmsghdr *nlh;
        uint32_t before;
        uint8_t type;
        int rc;

        if (s->off >= s->len) {
            int wait = (n > 0 || waited || s->overflow) ? 0 : timeout_ms;
            struct pollfd pfd = {s->fd, POLLIN, 0};
            int ready = poll(&pfd, 1, wait);

            waited = 1;
            if (ready < 0)  /* EINTR: back to Python, which handles the signal */
                return errno == EINTR ? n : -errno;
            if (ready == 0)
                goto drained;
        }
        rc = rx_next(s, &rx, &nlh);
        if (rc < 0)
            return rc;
        if (rc != RX_MSG)  /* RX_EMPTY: nothing queued */
            goto drained;
        if (pool_size - used < nlh->nlmsg_len) {
            if (n > 0) {
                rx_putback(s, nlh);  /* the next call starts with it */
                return n;
            }
            continue;
        }
        before = used;
        type = event_type(nlh);
        if (parse_fast(nlh, &out[n], pool, &used) == 0) {
            const struct ctpy_filter *f = uf;
            struct ctpy_filter no_labels;
            /* The kernel sends no labels with DESTROY: unknown, not zero. */
            if (type == CTPY_EV_DESTROY && (uf->fields & CTPY_F_LABELS) &&
                !(out[n].present & CTPY_HAS_LABELS)) {
                no_labels = *uf;
                no_labels.fields &= ~(uint32_t)CTPY_F_LABELS;
                f = &no_labels;
            }
            if (ctpy_match(f, &out[n])) {
                types[n] = type;
                n++;
                continue;
            }
        }
        used = before;
    }
    return n;

drained:
    if (s->overflow) {
        uint32_t drops;
        s->overflow = 0;
        (*overflows)++;
        /* The queue is empty, so the kernel has left its congested state:
         * every event lost so far is in the counter.  One that it drops
         * later raises ENOBUFS again and is reported with the next
         * overflow, so the reports add up to the counter. */
        if (*lost >= 0 && ctpy_events_drops(s, &drops) == 0) {
            *lost += (uint32_t)(drops - s->drops_base);
            s->drops_base = drops;
        } else {
            *lost = -1;
        }
    }
    return n;
}
