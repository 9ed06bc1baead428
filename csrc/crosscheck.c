/* crosscheck.c: the one-pass parser (parse.c) against libnetfilter_conntrack's
 * own (nfct_nlmsg_parse + fill_record, nfct.c), on every entry of a live
 * dump (ctpy_dump_crosscheck) or on one message (ctpy_parse_message, the
 * fuzz tests' entry point).  Tests only: nothing on a user's path calls it.
 */
#include "ctpy_int.h"

/* The same record from libnetfilter_conntrack's parser, normalised where it
 * cannot know more: it keeps one ICMP type, code and id (the original's). */
static int records_differ(const struct ctpy_record *fast, const char *fpool,
                          struct ctpy_record *ref, const char *rpool)
{
    if (ref->reply.has_icmp) {
        ref->reply.icmp_type = fast->reply.icmp_type;
        ref->reply.icmp_code = fast->reply.icmp_code;
        ref->reply.icmp_id = fast->reply.icmp_id;
    }
    if (fast->helper_len != ref->helper_len || fast->secctx_len != ref->secctx_len ||
        memcmp(fpool + fast->helper_off, rpool + ref->helper_off, fast->helper_len) ||
        memcmp(fpool + fast->secctx_off, rpool + ref->secctx_off, fast->secctx_len))
        return 1;
    ref->helper_off = fast->helper_off;
    ref->secctx_off = fast->secctx_off;
    return memcmp(fast, ref, sizeof(*fast)) != 0;
}

int ctpy_dump_crosscheck(struct ctpy_sock *s, uint64_t *checked,
                         uint64_t *mismatched, struct ctpy_record *first_fast,
                         struct ctpy_record *first_ref)
{
    const struct ctpy_rx rx = {s->dump_seq, 1, RX_DUMP};
    char fpool[8192], rpool[8192]; /* per call: callers may run in parallel */

    *checked = *mismatched = 0;
    while (s->dumping) {
        const struct nlmsghdr *nlh;
        struct ctpy_record fast, ref;
        struct nf_conntrack *ct;
        uint32_t fused = 0, rused = 0;
        int rc = rx_next(s, &rx, &nlh);

        if (rc != RX_MSG)
            return dump_end(s, rc);
        if (nlh->nlmsg_len > sizeof(fpool))
            return dump_end(s, -EMSGSIZE);
        ct = nfct_new();
        if (!ct)
            return dump_end(s, -ENOMEM);
        memset(&ref, 0, sizeof(ref));
        if (nfct_nlmsg_parse(nlh, ct) >= 0)
            fill_record(ct, &ref, rpool, &rused);
        nfct_destroy(ct);
        (*checked)++;
        if (parse_fast(nlh, &fast, fpool, &fused) < 0 ||
            records_differ(&fast, fpool, &ref, rpool)) {
            if (!*mismatched) {
                *first_fast = fast;
                *first_ref = ref;
            }
            (*mismatched)++;
        }
    }
    return 0;
}

/* One netlink message of len bytes, for tests.  The fast parser's record
 * goes to out (strings to pool) and, when ref is given, nfct_nlmsg_parse's
 * to ref (strings to ref_pool, also pool_size bytes; only for well-formed
 * messages: it reads a secctx up to its NUL), normalised as in the
 * cross-check; *ref_rc is nfct_nlmsg_parse's return and *differ whether
 * the records differ.  The
 * message is copied to a buffer of exactly its length first, so that
 * AddressSanitizer and valgrind see any read past its end.  Returns 0, or
 * -EMSGSIZE (len cannot hold the header or nlmsg_len, or a pool is smaller
 * than nlmsg_len), -EPROTO (not a ctnetlink conntrack message) or -EBADMSG
 * (the fast parser refuses it; ref is still filled). */
int ctpy_parse_message(const void *msg, uint32_t len, struct ctpy_record *out,
                       char *pool, uint32_t pool_size, struct ctpy_record *ref,
                       char *ref_pool, int *ref_rc, int *differ)
{
    struct nlmsghdr *nlh;
    char *copy, *fpool;
    uint32_t used = 0, rused = 0;
    int rc = 0, type;

    *ref_rc = 0;
    *differ = 0;
    if (len < NLMSG_HDRLEN)
        return -EMSGSIZE;
    copy = malloc(len);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, msg, len);
    nlh = (struct nlmsghdr *)copy;
    type = nlh->nlmsg_type;
    if (nlh->nlmsg_len < NLMSG_HDRLEN || nlh->nlmsg_len > len ||
        pool_size < nlh->nlmsg_len) {
        free(copy);
        return -EMSGSIZE;
    }
    if ((type >> 8) != NFNL_SUBSYS_CTNETLINK ||
        ((type & 0xff) != IPCTNL_MSG_CT_NEW && (type & 0xff) != IPCTNL_MSG_CT_DELETE)) {
        free(copy);
        return -EPROTO;
    }
    fpool = malloc(nlh->nlmsg_len ? nlh->nlmsg_len : 1);
    if (!fpool) {
        free(copy);
        return -ENOMEM;
    }
    if (parse_fast(nlh, out, fpool, &used) < 0)
        rc = -EBADMSG;
    else
        memcpy(pool, fpool, used);
    if (ref) {
        struct nf_conntrack *ct = nfct_new();
        memset(ref, 0, sizeof(*ref));
        if (!ct) {
            rc = -ENOMEM;
        } else {
            *ref_rc = nfct_nlmsg_parse(nlh, ct);
            if (*ref_rc >= 0) {
                fill_record(ct, ref, ref_pool, &rused);
                if (rc == 0)
                    *differ = records_differ(out, pool, ref, ref_pool);
            }
            nfct_destroy(ct);
        }
    }
    free(fpool);
    free(copy);
    return rc;
}
