/* dump.c: dumps of the table.  ctpy_dump_start sends the request (with the
 * kernel-side filter, kfilter.c); ctpy_dump_next fills records batch by
 * batch, ctpy_dump_count / _summary / _top walk it with nothing kept per
 * entry.  Every walk reads the messages with rx_next (ctpy_int.h), parses
 * them with parse_fast (parse.c) and keeps what ctpy_match (match.c) passes.
 */
#include "ctpy_int.h"

int ctpy_dump_start(struct ctpy_sock *s, uint8_t family,
                    const struct ctpy_kfilter *kf)
{
    char buf[CTPY_MSG_BUF];
    struct nlmsghdr *nlh;
    int err;

    if (s->dumping)
        return -EBUSY;
    s->dump_seq = ++s->seq;
    nlh = put_header(buf, IPCTNL_MSG_CT_GET, NLM_F_DUMP, family, 0, s->dump_seq);
    put_kfilter(nlh, kf);
    err = send_all(s, buf, nlh->nlmsg_len);
    if (err)
        return err;
    s->dumping = 1;
    s->done = 0;
    s->dump_intr = 0;
    s->len = s->off = 0;
    return 0;
}

int ctpy_dump_done(const struct ctpy_sock *s)
{
    return s->done;
}

/* Non-zero when the kernel flagged a message of the current (or last) dump
 * with NLM_F_DUMP_INTR: the table changed under the dump, so it may have
 * missed or repeated entries. */
int ctpy_dump_interrupted(const struct ctpy_sock *s)
{
    return s->dump_intr;
}

/* The dump is over (complete, failed, or abandoned by its reader): returns err. */
int dump_end(struct ctpy_sock *s, int err)
{
    s->dumping = 0;
    s->done = 1;
    return err;
}

/* Walk the dump.  Each matching entry goes to out[] (and its strings to
 * pool) when out is given, else it is only counted.  Returns the number of
 * matches, or -errno. */
static int dump_walk(struct ctpy_sock *s, const struct ctpy_filter *uf,
                     struct ctpy_record *out, int max, char *pool,
                     uint32_t pool_size, uint64_t *count)
{
    const struct ctpy_rx rx = {s->dump_seq, 1, RX_DUMP};
    struct ctpy_record scratch;
    uint32_t used = 0;
    int n = 0;

    if (!s->dumping)
        return 0;
    while (!out || n < max) {
        const struct nlmsghdr *nlh;
        struct ctpy_record *r;
        uint32_t before;
        int rc = rx_next(s, &rx, &nlh);

        if (rc < 0)
            return dump_end(s, rc);
        if (rc != RX_MSG) {  /* RX_END: the dump is complete */
            dump_end(s, 0);
            break;
        }
        if (out && pool_size - used < nlh->nlmsg_len) {
            if (n == 0)  /* cannot happen with a sane pool size */
                return dump_end(s, -ENOBUFS);
            rx_putback(s, nlh);  /* the next batch starts with it */
            break;
        }
        r = out ? &out[n] : &scratch;
        before = used;
        if (parse_fast(nlh, r, pool, &used) < 0)
            /* The kernel broke the ABI: say so rather than skip an entry. */
            return dump_end(s, -EBADMSG);
        if (ctpy_match(uf, r)) {
            n++;
            if (count)
                (*count)++;
        } else {
            used = before;
        }
    }
    return n;
}

int ctpy_dump_next(struct ctpy_sock *s, const struct ctpy_filter *uf,
                   struct ctpy_record *out, int max, char *pool,
                   uint32_t pool_size)
{
    return dump_walk(s, uf, out, max, pool, pool_size, NULL);
}

int ctpy_dump_count(struct ctpy_sock *s, const struct ctpy_filter *uf,
                    uint64_t *count)
{
    /* Count-only walks still need somewhere for strings: a small pool that
     * is reset for every entry is enough. */
    char pool[8192];
    int n;

    *count = 0;
    while (s->dumping) {
        struct ctpy_record r;
        n = dump_walk(s, uf, &r, 1, pool, sizeof(pool), count);
        if (n < 0)
            return n;
    }
    return 0;
}

static void summary_add(struct ctpy_summary *out, const struct ctpy_record *r)
{
    out->total++;
    if (!(r->status & IPS_SEEN_REPLY))
        out->unreplied++;
    if (r->status & IPS_ASSURED)
        out->assured++;
    out->by_proto[r->orig.proto]++;
    if (r->orig.proto == IPPROTO_TCP && (r->present & CTPY_HAS_STATE) && r->state < 32)
        out->tcp_states[r->state]++;
}

int ctpy_dump_summary(struct ctpy_sock *s, const struct ctpy_filter *uf,
                      struct ctpy_summary *out)
{
    return ctpy_dump_top(s, uf, NULL, out);
}

/* The counting dump behind summary() and top(): each matching entry goes
 * into the summary and/or the key table (top.c; either may be NULL). */
int ctpy_dump_top(struct ctpy_sock *s, const struct ctpy_filter *uf,
                  struct ctpy_top *t, struct ctpy_summary *sum)
{
    char pool[8192];

    if (sum)
        memset(sum, 0, sizeof(*sum));
    while (s->dumping) {
        struct ctpy_record r;
        int n = dump_walk(s, uf, &r, 1, pool, sizeof(pool), NULL);
        if (n < 0)
            return n;
        if (n == 1 && sum)
            summary_add(sum, &r);
        if (n == 1 && t) {
            int err = top_add(t, &r);
            if (err)  /* the caller closes the dump socket */
                return dump_end(s, err);
        }
    }
    return 0;
}
