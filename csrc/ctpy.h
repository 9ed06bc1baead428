/* ctpy.h: the C helper's interface.
 *
 * build_ffi.py feeds this file verbatim to cffi's cdef() and the helper's
 * modules (csrc/<topic>.c, through ctpy_int.h) #include it, so the struct layouts
 * are written once.  Each group of functions below names its module.  Keep
 * it to what cdef can parse: no #include, no #if, no function-like macros.
 */

/* Bits of ctpy_record.present: which optional fields carry a value. */
#define CTPY_HAS_STATUS      0x00001
#define CTPY_HAS_TIMEOUT     0x00002
#define CTPY_HAS_MARK        0x00004
#define CTPY_HAS_ID          0x00008
#define CTPY_HAS_USE         0x00010
#define CTPY_HAS_STATE       0x00020
#define CTPY_HAS_ZONE        0x00040
#define CTPY_HAS_COUNTERS    0x00080
#define CTPY_HAS_TS_START    0x00100
#define CTPY_HAS_TS_STOP     0x00200
#define CTPY_HAS_LABELS      0x00400
#define CTPY_HAS_HELPER      0x00800
#define CTPY_HAS_SECCTX      0x01000
#define CTPY_HAS_MASTER      0x02000
#define CTPY_HAS_REPLY       0x04000
#define CTPY_HAS_ORIG        0x08000

/* One direction of a flow.  Addresses are in network byte order; an IPv4
 * address fills the first 4 bytes.  Ports and the ICMP id are host order. */
struct ctpy_tuple {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport;
    uint16_t dport;
    uint16_t icmp_id;
    uint16_t zone;          /* direction-specific zone (has_zone set) */
    uint8_t icmp_type;
    uint8_t icmp_code;
    uint8_t family;         /* AF_INET / AF_INET6 */
    uint8_t proto;          /* IPPROTO_* */
    uint8_t has_zone;
    uint8_t has_icmp;
};

/* One conntrack entry, flat, as the dump loop writes it.  Strings live in
 * the batch's pool at [off, off + len). */
struct ctpy_record {
    struct ctpy_tuple orig;
    struct ctpy_tuple reply;
    struct ctpy_tuple master;
    uint64_t counters[4];   /* orig packets, orig bytes, reply packets, reply bytes */
    uint64_t ts_start;      /* ns since the epoch */
    uint64_t ts_stop;
    uint32_t present;       /* CTPY_HAS_* */
    uint32_t status;        /* IPS_* bits */
    uint32_t timeout;       /* seconds */
    uint32_t mark;
    uint32_t id;
    uint32_t use;
    uint32_t helper_off;
    uint32_t secctx_off;
    uint16_t helper_len;
    uint16_t secctx_len;
    uint16_t zone;
    uint8_t state;          /* TCP, SCTP or DCCP state, by orig.proto */
    uint8_t labels[16];     /* bit n of label set = labels[n / 8] >> (n % 8) on
                             * every host: the parser decodes the kernel's
                             * native-endian words into this order */
};

/* Bits of ctpy_filter.fields. */
#define CTPY_F_FAMILY     0x0001
#define CTPY_F_PROTO      0x0002
#define CTPY_F_ORIG_SRC   0x0004
#define CTPY_F_ORIG_DST   0x0008
#define CTPY_F_REPLY_SRC  0x0010
#define CTPY_F_REPLY_DST  0x0020
#define CTPY_F_SPORT      0x0040
#define CTPY_F_DPORT      0x0080
#define CTPY_F_STATE      0x0100
#define CTPY_F_STATUS     0x0200
#define CTPY_F_MARK       0x0400
#define CTPY_F_ZONE       0x0800
#define CTPY_F_LABELS     0x1000
#define CTPY_F_SRC_NAT    0x2000
#define CTPY_F_DST_NAT    0x4000
#define CTPY_F_ANY_NAT    0x8000
#define CTPY_F_ORIG_ZONE  0x10000
#define CTPY_F_REPLY_ZONE 0x20000

struct ctpy_cidr {
    uint8_t addr[16];       /* already masked */
    uint8_t mask[16];
    uint8_t family;
};

/* A NAT match (conntrack's --src-nat/--dst-nat/--any-nat [ADDR[:PORT]]). */
struct ctpy_nat {
    uint8_t addr[16];       /* the translated address, when has_addr */
    uint16_t port;          /* the translated port, when has_port */
    uint8_t family;
    uint8_t has_addr;
    uint8_t has_port;
};

/* The userspace filter, evaluated in C on every parsed record. */
struct ctpy_filter {
    uint32_t fields;        /* CTPY_F_* */
    uint32_t states;        /* bit n set: state value n matches */
    uint32_t status_val;
    uint32_t status_mask;
    uint32_t mark_val;
    uint32_t mark_mask;
    struct ctpy_cidr orig_src;
    struct ctpy_cidr orig_dst;
    struct ctpy_cidr reply_src;
    struct ctpy_cidr reply_dst;
    uint16_t sport_lo;
    uint16_t sport_hi;
    uint16_t dport_lo;
    uint16_t dport_hi;
    uint16_t zone;
    uint16_t orig_zone;     /* a zone of the original direction only */
    uint16_t reply_zone;    /* a zone of the reply direction only */
    uint8_t family;
    uint8_t proto;
    uint8_t labels_val[16];
    uint8_t labels_mask[16];
    struct ctpy_nat src_nat;
    struct ctpy_nat dst_nat;
    struct ctpy_nat any_nat;
};

/* Bits of ctpy_kfilter.fields: what the kernel is asked to filter. */
#define CTPY_K_MARK    0x01
#define CTPY_K_STATUS  0x02
#define CTPY_K_ZONE    0x04
#define CTPY_K_TUPLE   0x08

/* CTA_FILTER flags (the kernel's CTA_FILTER_F_*, a stable uAPI value set
 * that no installed header exports). */
#define CTPY_CTA_IP_SRC      0x001
#define CTPY_CTA_IP_DST      0x002
#define CTPY_CTA_TUPLE_ZONE  0x004
#define CTPY_CTA_PROTO_NUM   0x008
#define CTPY_CTA_SRC_PORT    0x010
#define CTPY_CTA_DST_PORT    0x020

/* The part of a filter sent to the kernel with a dump or flush request. */
struct ctpy_kfilter {
    uint32_t fields;        /* CTPY_K_* */
    uint32_t mark_val;
    uint32_t mark_mask;
    uint32_t status_val;
    uint32_t status_mask;
    uint32_t orig_flags;    /* CTPY_CTA_* for the original tuple */
    uint32_t reply_flags;   /* CTPY_CTA_* for the reply tuple */
    struct ctpy_tuple orig;
    struct ctpy_tuple reply;
    uint16_t zone;
};

/* Outcome of a batch of requests (deletes or creates). */
struct ctpy_batch_result {
    uint32_t done;
    uint32_t vanished;      /* ENOENT: gone before we got to it */
    uint32_t failed;        /* any other error */
    int first_errno;
    uint32_t first_failed;  /* index of the first failed record */
};

/* What one counting dump learns about the matching entries. */
struct ctpy_summary {
    uint64_t total;
    uint64_t unreplied;     /* no SEEN_REPLY */
    uint64_t assured;
    uint64_t by_proto[256];
    uint64_t tcp_states[32];
};

/* Top talkers: what a key is made of (ctpy_topspec.kind[]). */
#define CTPY_TOP_SRC      1
#define CTPY_TOP_DST      2
#define CTPY_TOP_SPORT    3
#define CTPY_TOP_DPORT    4
#define CTPY_TOP_PROTO    5
#define CTPY_TOP_STATE    6
#define CTPY_TOP_ZONE     7
#define CTPY_TOP_MARK     8
#define CTPY_TOP_FAMILY   9
#define CTPY_TOP_MAXPARTS 4

struct ctpy_topspec {
    uint8_t n;                          /* parts in a key, 1..CTPY_TOP_MAXPARTS */
    uint8_t kind[4];                    /* CTPY_TOP_* */
    uint8_t plen4[4];                   /* SRC/DST: IPv4 prefix length (32: whole address) */
    uint8_t plen6[4];                   /* SRC/DST: IPv6 prefix length (128: whole address) */
};

/* A hash table of distinct keys and their counts (opaque). */
struct ctpy_top;

/* Per-CPU statistics (IPCTNL_MSG_CT_GET_STATS_CPU). */
struct ctpy_cpu_stats {
    uint32_t cpu;
    uint32_t present;          /* bit i: the i-th counter below was sent by the kernel */
    uint32_t found;
    uint32_t invalid;
    uint32_t ignore;           /* removed from the kernel's statistics in 5.13 */
    uint32_t insert;
    uint32_t insert_failed;
    uint32_t drop;
    uint32_t early_drop;
    uint32_t error;
    uint32_t search_restart;
    uint32_t clash_resolve;
    uint32_t chaintoolong;
};

/* Event types (ctpy_events_next fills one per record). */
#define CTPY_EV_NEW      0x1
#define CTPY_EV_UPDATE   0x2
#define CTPY_EV_DESTROY  0x4
#define CTPY_EV_SNAPSHOT 0x8    /* not a kernel event: an entry of a resync dump */
#define CTPY_EV_SNAPSHOT_BEGIN 0x10  /* a resync dump starts */
#define CTPY_EV_SNAPSHOT_END   0x20  /* a resync dump is complete */
#define CTPY_EV_OVERFLOW 0x80   /* not a kernel event: events were lost */

/* Bits of ctpy_bpf.fields: the part of a filter the event socket's BPF
 * program (libnetfilter_conntrack's nfct_filter) checks in the kernel. */
#define CTPY_B_PROTO 0x01
#define CTPY_B_STATE 0x02       /* TCP states */
#define CTPY_B_SRC   0x04       /* original source address/mask */
#define CTPY_B_DST   0x08       /* original destination address/mask */
#define CTPY_B_MARK  0x10
#define CTPY_B_ZONE  0x20       /* libnetfilter_conntrack >= 1.1.0 */

struct ctpy_bpf {
    uint32_t fields;        /* CTPY_B_* */
    uint32_t states;        /* bit n set: TCP state n passes (n < 16) */
    uint32_t mark_val;
    uint32_t mark_mask;
    struct ctpy_cidr src;   /* network byte order, as in ctpy_filter */
    struct ctpy_cidr dst;
    uint16_t zone;
    uint8_t proto;
};

struct ctpy_sock;

/* sock.c */
struct ctpy_sock *ctpy_open(int netns_fd, int rcvbuf, int *err);
void ctpy_close(struct ctpy_sock *s);
int ctpy_set_timeout(struct ctpy_sock *s, int ms);
int ctpy_sock_fd(const struct ctpy_sock *s);

/* dump.c (and top.c: ctpy_top_*) */
int ctpy_dump_start(struct ctpy_sock *s, uint8_t family,
                    const struct ctpy_kfilter *kf);
int ctpy_dump_next(struct ctpy_sock *s, const struct ctpy_filter *uf,
                   struct ctpy_record *out, int max,
                   char *pool, uint32_t pool_size);
int ctpy_dump_done(const struct ctpy_sock *s);
int ctpy_dump_interrupted(const struct ctpy_sock *s);
int ctpy_dump_count(struct ctpy_sock *s, const struct ctpy_filter *uf,
                    uint64_t *count);
int ctpy_dump_summary(struct ctpy_sock *s, const struct ctpy_filter *uf,
                      struct ctpy_summary *out);
int ctpy_top_keylen(const struct ctpy_topspec *spec);
struct ctpy_top *ctpy_top_new(const struct ctpy_topspec *spec);
void ctpy_top_free(struct ctpy_top *t);
int ctpy_dump_top(struct ctpy_sock *s, const struct ctpy_filter *uf,
                  struct ctpy_top *t, struct ctpy_summary *sum);
uint64_t ctpy_top_total(const struct ctpy_top *t);
uint64_t ctpy_top_distinct(const struct ctpy_top *t);
int ctpy_top_result(struct ctpy_top *t, int max, uint8_t *keys, uint64_t *counts);
/* crosscheck.c */
int ctpy_dump_crosscheck(struct ctpy_sock *s, uint64_t *checked,
                         uint64_t *mismatched, struct ctpy_record *first_fast,
                         struct ctpy_record *first_ref);
int ctpy_parse_message(const void *msg, uint32_t len, struct ctpy_record *out,
                       char *pool, uint32_t pool_size, struct ctpy_record *ref,
                       char *ref_pool, int *ref_rc, int *differ);

/* request.c */
int ctpy_request(struct ctpy_sock *s, uint8_t msg, uint16_t flags,
                 const struct ctpy_record *r, const char *pool,
                 struct ctpy_record *out, char *out_pool,
                 uint32_t out_pool_size);
int ctpy_flush(struct ctpy_sock *s, uint8_t family,
               const struct ctpy_kfilter *kf);
int ctpy_batch(struct ctpy_sock *s, uint8_t msg, uint16_t flags,
               const struct ctpy_record *recs, const char *pool, int n,
               int pin_id, struct ctpy_batch_result *res);

/* stats.c */
int ctpy_global_stats(struct ctpy_sock *s, uint32_t *entries,
                      uint32_t *max_entries);
int ctpy_cpu_stats(struct ctpy_sock *s, struct ctpy_cpu_stats *out, int max);

/* match.c */
int ctpy_match(const struct ctpy_filter *f, const struct ctpy_record *r);
/* events.c */
int ctpy_events_subscribe(struct ctpy_sock *s, uint32_t types);
int ctpy_events_next(struct ctpy_sock *s, const struct ctpy_filter *uf,
                     struct ctpy_record *out, uint8_t *types, int max,
                     char *pool, uint32_t pool_size, int timeout_ms,
                     uint32_t *overflows, int64_t *lost);
int ctpy_events_fd(const struct ctpy_sock *s);
int ctpy_events_drops(const struct ctpy_sock *s, uint32_t *drops);
int ctpy_events_bpf(struct ctpy_sock *s, const struct ctpy_bpf *b);
int ctpy_events_bpf_zone(void);
/* sock.c */
int ctpy_setns(int netns_fd);
int ctpy_unshare_netns(void);
const char *ctpy_nfct_version(void);
