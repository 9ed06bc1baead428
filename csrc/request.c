/* request.c: requests and their acknowledgements: one request (get,
 * create, update, delete) with ctpy_request, a flush, and batches of many
 * creates or deletes per sendmsg with ctpy_batch.  The conntrack attributes
 * of a request come from build_request (nfct.c); the replies are read with
 * rx_next (ctpy_int.h).
 */
#include "ctpy_int.h"

int exchange(struct ctpy_sock *s, const struct nlmsghdr *req,
             reply_cb cb, void *data)
{
    const struct ctpy_rx rx = {req->nlmsg_seq, 1, RX_REPLY};
    int err;

    if (s->dumping)
        return -EBUSY;
    s->len = s->off = 0;  /* what an earlier exchange left unread is stale */
    err = send_all(s, req, req->nlmsg_len);
    if (err)
        return err;
    for (;;) {
        const struct nlmsghdr *nlh;
        int rc = rx_next(s, &rx, &nlh);

        if (rc != RX_MSG)
            return rc;
        if (cb)
            cb(nlh, data);
    }
}

struct one_record {
    struct ctpy_record *out;
    char *pool;
    uint32_t pool_size;
    int stored;
    int bad;                /* the reply broke the ABI */
};

static void keep_first_record(const struct nlmsghdr *nlh, void *data)
{
    struct one_record *o = data;
    uint32_t used = 0;

    if (o->out && !o->stored && o->pool_size >= nlh->nlmsg_len) {
        if (parse_fast(nlh, o->out, o->pool, &used) == 0)
            o->stored = 1;
        else
            o->bad = 1;
    }
}

int ctpy_request(struct ctpy_sock *s, uint8_t msg, uint16_t flags,
                 const struct ctpy_record *r, const char *pool,
                 struct ctpy_record *out, char *out_pool,
                 uint32_t out_pool_size)
{
    char buf[CTPY_MSG_BUF];
    struct one_record o = {out, out_pool, out_pool_size, 0, 0};
    int len, err;

    len = build_request(buf, msg, flags | NLM_F_ACK, r, pool, 1, ++s->seq);
    if (len < 0)
        return len;
    err = exchange(s, (struct nlmsghdr *)buf, keep_first_record, &o);
    if (err < 0)
        return err;
    return o.bad ? -EBADMSG : o.stored;
}

int ctpy_flush(struct ctpy_sock *s, uint8_t family,
               const struct ctpy_kfilter *kf)
{
    char buf[CTPY_MSG_BUF];
    struct nlmsghdr *nlh;

    /* Version 1 makes the kernel honour the family; with version 0 (what
     * conntrack(8) sends) a flush of one family empties all of them. */
    nlh = put_header(buf, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, family, 1, ++s->seq);
    put_kfilter(nlh, kf);
    return exchange(s, nlh, NULL, NULL);
}

/* ---- batched requests (deletes, creates) --------------------------------------------------- */

/* Count one acknowledgement of a batch whose first request (index start)
 * carried sequence number first_seq. */
static void count_ack(const struct nlmsghdr *nlh, uint32_t first_seq, int start,
                      struct ctpy_batch_result *res)
{
    uint32_t k = nlh->nlmsg_seq - first_seq;
    int e = rx_ack_error(nlh);

    if (e == 0) {
        res->done++;
    } else if (e == -ENOENT) {
        res->vanished++;
    } else {
        if (!res->failed) {
            res->first_errno = -e;
            res->first_failed = start + (int)k;
        }
        res->failed++;
    }
}

int ctpy_batch(struct ctpy_sock *s, uint8_t msg, uint16_t flags,
               const struct ctpy_record *recs, const char *pool, int n,
               int pin_id, struct ctpy_batch_result *res)
{
    struct ctpy_rx rx = {0, 0, RX_ACKS};
    char *chunk;
    int i = 0;

    memset(res, 0, sizeof(*res));
    if (s->dumping)
        return -EBUSY;
    chunk = malloc(CTPY_SEND_CHUNK);
    if (!chunk)
        return -ENOMEM;
    while (i < n) {
        uint32_t first_seq = s->seq + 1;
        size_t used = 0;
        int start = i, pending, err;

        /* Many requests in one sendmsg; the kernel handles them in order
         * and acknowledges each.  A chunk is small enough that its
         * acknowledgements fit the receive buffer. */
        while (i < n && i - start < s->max_inflight &&
               CTPY_SEND_CHUNK - used >= CTPY_MSG_BUF) {
            int len = build_request(chunk + used, msg, flags | NLM_F_ACK,
                                    &recs[i], pool, pin_id, ++s->seq);
            if (len < 0) {
                free(chunk);
                return len;
            }
            used += NLMSG_ALIGN((size_t)len);
            i++;
        }
        s->len = s->off = 0;  /* what an earlier exchange left unread is stale */
        err = send_all(s, chunk, used);
        if (err) {
            free(chunk);
            return err;
        }
        pending = i - start;
        rx.seq = first_seq;
        rx.nseq = (uint32_t)pending;
        while (pending > 0) {
            const struct nlmsghdr *nlh;
            int rc = rx_next(s, &rx, &nlh);

            if (rc < 0) {
                /* A receive error (ENOBUFS: the kernel dropped replies).
                 * The acknowledgements still queued are requests the
                 * kernel carried out: count them, then empty the queue. */
                rx.queued_only = 1;
                while (rx_next(s, &rx, &nlh) == RX_MSG)
                    if (nlh->nlmsg_type == NLMSG_ERROR)
                        count_ack(nlh, first_seq, start, res);
                rx_drain(s);
                free(chunk);
                return rc;
            }
            if (rc != RX_MSG || nlh->nlmsg_type != NLMSG_ERROR)
                continue;
            if (nlh->nlmsg_seq == first_seq && rx_ack_error(nlh) == -EPERM) {
                /* nfnetlink checks CAP_NET_ADMIN once per sendmsg: it
                 * acks the first request with EPERM and drops the rest,
                 * whose acks never come.  Every request is refused. */
                if (!res->failed) {
                    res->first_errno = EPERM;
                    res->first_failed = start;
                }
                res->failed += n - start;
                free(chunk);
                rx_drain(s);  /* the socket stays usable */
                return 0;
            }
            pending--;
            count_ack(nlh, first_seq, start, res);
        }
    }
    free(chunk);
    return 0;
}
