/* top.c: top talkers, the key table behind ctpy_dump_top (dump.c).  One
 * dump, each matching entry counted under a key built from its fields, in
 * an open-addressing hash table of distinct keys (the memory is bounded by
 * the keys, not by the entries).  A key is the concatenation of its parts,
 * packed:
 *   CTPY_TOP_SRC/DST  family (1) + address masked to the prefix (16)
 *   CTPY_TOP_SPORT/DPORT  has-port (1) + port, host order (2)
 *   CTPY_TOP_PROTO  protocol (1); CTPY_TOP_FAMILY  family (1)
 *   CTPY_TOP_STATE  protocol (1) + has-state (1) + state (1), all 0 without one
 *   CTPY_TOP_ZONE  zone (2); CTPY_TOP_MARK  mark (4)
 * A slot is a uint64_t count (0: empty) followed by the key. */
#include "ctpy_int.h"

struct ctpy_top {
    struct ctpy_topspec spec;
    size_t keylen;
    size_t slot;            /* bytes per slot, a multiple of 8 */
    size_t cap;             /* slots, a power of two */
    size_t used;
    uint64_t total;
    char *slots;
};

static size_t top_part_len(uint8_t kind)
{
    switch (kind) {
    case CTPY_TOP_SRC: case CTPY_TOP_DST: return 17;
    case CTPY_TOP_SPORT: case CTPY_TOP_DPORT: case CTPY_TOP_STATE: return 3;
    case CTPY_TOP_PROTO: case CTPY_TOP_FAMILY: return 1;
    case CTPY_TOP_ZONE: return 2;
    case CTPY_TOP_MARK: return 4;
    }
    return 0;
}

int ctpy_top_keylen(const struct ctpy_topspec *spec)
{
    size_t len = 0;
    int i;

    if (spec->n == 0 || spec->n > CTPY_TOP_MAXPARTS)
        return -EINVAL;
    for (i = 0; i < spec->n; i++) {
        size_t l = top_part_len(spec->kind[i]);
        if (!l || spec->plen4[i] > 32 || spec->plen6[i] > 128)
            return -EINVAL;
        len += l;
    }
    return (int)len;
}

struct ctpy_top *ctpy_top_new(const struct ctpy_topspec *spec)
{
    struct ctpy_top *t;
    int len = ctpy_top_keylen(spec);

    if (len < 0)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->spec = *spec;
    t->keylen = (size_t)len;
    t->slot = (8 + t->keylen + 7) & ~(size_t)7;
    t->cap = 1024;
    t->slots = calloc(t->cap, t->slot);
    if (!t->slots) {
        free(t);
        return NULL;
    }
    return t;
}

void ctpy_top_free(struct ctpy_top *t)
{
    if (t) {
        free(t->slots);
        free(t);
    }
}

uint64_t ctpy_top_total(const struct ctpy_top *t)
{
    return t->total;
}

uint64_t ctpy_top_distinct(const struct ctpy_top *t)
{
    return t->used;
}

static void top_addr(uint8_t *k, const struct ctpy_tuple *o, const uint8_t *addr,
                     uint8_t plen4, uint8_t plen6)
{
    int n = o->family == AF_INET ? 4 : 16;
    int bits = o->family == AF_INET ? plen4 : plen6;
    int i;

    k[0] = o->family;
    memset(k + 1, 0, 16);
    for (i = 0; i < n && bits > 0; i++, bits -= 8)
        k[1 + i] = bits >= 8 ? addr[i] : (uint8_t)(addr[i] & (0xff00 >> bits));
}

static void top_key(const struct ctpy_top *t, const struct ctpy_record *r, uint8_t *k)
{
    const struct ctpy_tuple *o = &r->orig;
    int i;

    for (i = 0; i < t->spec.n; i++) {
        uint8_t kind = t->spec.kind[i];
        uint16_t u16;
        switch (kind) {
        case CTPY_TOP_SRC:
            top_addr(k, o, o->src, t->spec.plen4[i], t->spec.plen6[i]);
            break;
        case CTPY_TOP_DST:
            top_addr(k, o, o->dst, t->spec.plen4[i], t->spec.plen6[i]);
            break;
        case CTPY_TOP_SPORT:
        case CTPY_TOP_DPORT:
            k[0] = (uint8_t)has_ports(o->proto);
            u16 = k[0] ? (kind == CTPY_TOP_SPORT ? o->sport : o->dport) : 0;
            memcpy(k + 1, &u16, 2);
            break;
        case CTPY_TOP_PROTO:
            k[0] = o->proto;
            break;
        case CTPY_TOP_FAMILY:
            k[0] = o->family;
            break;
        case CTPY_TOP_STATE: /* one "no state" key whatever the protocol */
            k[1] = (r->present & CTPY_HAS_STATE) && (o->proto == IPPROTO_TCP ||
                   o->proto == IPPROTO_SCTP || o->proto == IPPROTO_DCCP);
            k[0] = k[1] ? o->proto : 0;
            k[2] = k[1] ? r->state : 0;
            break;
        case CTPY_TOP_ZONE:
            memcpy(k, &r->zone, 2);
            break;
        case CTPY_TOP_MARK:
            memcpy(k, &r->mark, 4);
            break;
        }
        k += top_part_len(kind);
    }
}

static uint64_t top_hash(const uint8_t *k, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= k[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

/* The slot holding key k, or the empty slot where it goes. */
static char *top_find(char *slots, size_t cap, size_t slot, size_t keylen, const uint8_t *k)
{
    size_t i = (size_t)top_hash(k, keylen) & (cap - 1);

    for (;;) {
        char *e = slots + i * slot;
        uint64_t c;
        memcpy(&c, e, 8);
        if (!c || !memcmp(e + 8, k, keylen))
            return e;
        i = (i + 1) & (cap - 1);
    }
}

static int top_grow(struct ctpy_top *t)
{
    size_t cap = t->cap * 2, i;
    char *slots = calloc(cap, t->slot);

    if (!slots)
        return -ENOMEM;
    for (i = 0; i < t->cap; i++) {
        char *e = t->slots + i * t->slot;
        uint64_t c;
        memcpy(&c, e, 8);
        if (c)
            memcpy(top_find(slots, cap, t->slot, t->keylen, (uint8_t *)e + 8), e, t->slot);
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

int top_add(struct ctpy_top *t, const struct ctpy_record *r)
{
    uint8_t k[CTPY_TOP_MAXPARTS * 17];
    char *e;
    uint64_t c;

    top_key(t, r, k);
    e = top_find(t->slots, t->cap, t->slot, t->keylen, k);
    memcpy(&c, e, 8);
    if (!c) {
        if ((t->used + 1) * 10 > t->cap * 7) {
            int err = top_grow(t);
            if (err)
                return err;
            e = top_find(t->slots, t->cap, t->slot, t->keylen, k);
        }
        memcpy(e + 8, k, t->keylen);
        t->used++;
    }
    c++;
    memcpy(e, &c, 8);
    t->total++;
    return 0;
}
/* Descending count, then ascending key: a stable order for ties. */
static int top_cmp(const void *a, const void *b, void *keylen)
{
    uint64_t ca, cb;

    memcpy(&ca, a, 8);
    memcpy(&cb, b, 8);
    if (ca != cb)
        return ca > cb ? -1 : 1;
    return memcmp((const char *)a + 8, (const char *)b + 8, *(size_t *)keylen);
}

/* Sort the keys (the table is no longer usable for counting afterwards)
 * and copy the first max into keys[] (keylen bytes each) and counts[].
 * Returns how many were copied. */
int ctpy_top_result(struct ctpy_top *t, int max, uint8_t *keys, uint64_t *counts)
{
    size_t i, n = 0;

    for (i = 0; i < t->cap; i++) {
        char *e = t->slots + i * t->slot;
        uint64_t c;
        memcpy(&c, e, 8);
        if (c) {
            if (n != i)
                memcpy(t->slots + n * t->slot, e, t->slot);
            n++;
        }
    }
    memset(t->slots + n * t->slot, 0, (t->cap - n) * t->slot);
    qsort_r(t->slots, n, t->slot, top_cmp, &t->keylen);
    if ((size_t)max > n)
        max = (int)n;
    for (i = 0; i < (size_t)max; i++) {
        memcpy(&counts[i], t->slots + i * t->slot, 8);
        memcpy(keys + i * t->keylen, t->slots + i * t->slot + 8, t->keylen);
    }
    return max;
}
