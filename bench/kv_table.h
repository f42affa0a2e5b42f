/* kv_table.h — the key-value store of bench/kv_server: a chained hash table of
 * byte-string keys and values, as Redis's dict is for strings.
 *
 * One table serves every fiber of a thread.  No operation switches (nothing here
 * blocks or yields), so the fibers of one thread never see it half-changed and
 * need no lock; kv_server adds a mutex only when it runs several threads.
 *
 * Keys and values are arbitrary bytes (binary-safe).  A key and its value live in
 * one allocation, the value with room to spare, so that rewriting a key with a
 * value of the same or a smaller size (what a SET-heavy benchmark does) allocates
 * nothing.  The table doubles when it holds more keys than buckets, rehashing
 * everything at once: simple, and a pause that only a very large table would
 * notice (Redis rehashes incrementally instead).
 *
 * Header-only like bench_common.h: kv_server.c is its only includer.  Allocation
 * failures return -ENOMEM and leave the table as it was. */
#ifndef GREENRING_BENCH_KV_TABLE_H
#define GREENRING_BENCH_KV_TABLE_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct kv_entry {
	struct kv_entry *next;     /* the bucket's chain */
	uint64_t hash;
	uint32_t klen;
	uint32_t vlen, vcap;       /* the value is data[klen, klen + vlen) */
	char data[];               /* the key, then the value */
};

struct kv_table {
	struct kv_entry **buckets;
	size_t mask;               /* buckets - 1; a power of two minus one */
	size_t count;
	uint64_t seed;             /* per process, so that colliding keys cannot be
				      precomputed */
};

#define KV_TABLE_FIRST_BUCKETS 1024

static inline uint64_t kv_mix(uint64_t h)
{
	h ^= h >> 31;
	h *= UINT64_C(0x94d049bb133111eb);
	h ^= h >> 29;
	return h;
}

/* 8 bytes at a time, each word mixed by a multiplication: fast for the short
 * keys of a cache, and keyed by the seed. */
static inline uint64_t kv_hash(const struct kv_table *t, const char *p, size_t n)
{
	uint64_t h = t->seed ^ ((uint64_t)n * UINT64_C(0x9e3779b97f4a7c15));
	uint64_t w;

	for (; n >= 8; p += 8, n -= 8) {
		memcpy(&w, p, 8);
		h = kv_mix((h ^ w) * UINT64_C(0xbf58476d1ce4e5b9));
	}
	w = 0;
	memcpy(&w, p, n);
	return kv_mix((h ^ w) * UINT64_C(0xbf58476d1ce4e5b9));
}

static inline int kv_table_init(struct kv_table *t, uint64_t seed)
{
	t->buckets = calloc(KV_TABLE_FIRST_BUCKETS, sizeof(*t->buckets));
	if (!t->buckets)
		return -ENOMEM;
	t->mask = KV_TABLE_FIRST_BUCKETS - 1;
	t->count = 0;
	t->seed = seed;
	return 0;
}

static inline void kv_table_destroy(struct kv_table *t)
{
	for (size_t i = 0; i <= t->mask; i++) {
		for (struct kv_entry *e = t->buckets[i], *next; e; e = next) {
			next = e->next;
			free(e);
		}
	}
	free(t->buckets);
	t->buckets = NULL;
}

static inline char *kv_entry_value(struct kv_entry *e)
{
	return e->data + e->klen;
}

/* The link that points at key's entry, or at the NULL ending its chain. */
static inline struct kv_entry **kv_table_slot(struct kv_table *t, const char *key, size_t klen,
					      uint64_t hash)
{
	struct kv_entry **link = &t->buckets[hash & t->mask];

	for (; *link; link = &(*link)->next) {
		struct kv_entry *e = *link;

		if (e->hash == hash && e->klen == klen && memcmp(e->data, key, klen) == 0)
			break;
	}
	return link;
}

/* The entry of key, or NULL.  Valid until the table next changes. */
static inline struct kv_entry *kv_table_get(struct kv_table *t, const char *key, size_t klen)
{
	return *kv_table_slot(t, key, klen, kv_hash(t, key, klen));
}

/* Double the buckets; on allocation failure the table just stays denser. */
static inline void kv_table_grow(struct kv_table *t)
{
	size_t n = (t->mask + 1) * 2;
	struct kv_entry **b = calloc(n, sizeof(*b));

	if (!b)
		return;
	for (size_t i = 0; i <= t->mask; i++) {
		for (struct kv_entry *e = t->buckets[i], *next; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->mask = n - 1;
}

/* Set key to val, creating or replacing it.  0 or -ENOMEM (then nothing
 * changed); *out, if not NULL, gets the entry. */
static inline int kv_table_set(struct kv_table *t, const char *key, size_t klen, const char *val,
			       size_t vlen, struct kv_entry **out)
{
	uint64_t hash = kv_hash(t, key, klen);
	struct kv_entry **link = kv_table_slot(t, key, klen, hash);
	struct kv_entry *e = *link;

	if (klen > UINT32_MAX || vlen > UINT32_MAX)
		return -ENOMEM;
	if (!e || e->vcap < vlen) {
		/* Room to grow by a quarter, so that values that change size a
		 * little (counters, timestamps) are rewritten in place. */
		size_t cap = vlen + vlen / 4 + 8;
		struct kv_entry *n;

		if (cap > UINT32_MAX)
			cap = vlen;
		n = malloc(sizeof(*n) + klen + cap);
		if (!n)
			return -ENOMEM;
		n->hash = hash;
		n->klen = (uint32_t)klen;
		n->vcap = (uint32_t)cap;
		memcpy(n->data, key, klen);
		if (e) {
			n->next = e->next;
			free(e);
		} else {
			n->next = NULL;
			t->count++;
		}
		*link = n;
		e = n;
	}
	memcpy(kv_entry_value(e), val, vlen);
	e->vlen = (uint32_t)vlen;
	if (out)
		*out = e;
	if (t->count > t->mask + 1)
		kv_table_grow(t);
	return 0;
}

/* Remove key; 1 if it existed, else 0. */
static inline int kv_table_del(struct kv_table *t, const char *key, size_t klen)
{
	struct kv_entry **link = kv_table_slot(t, key, klen, kv_hash(t, key, klen));
	struct kv_entry *e = *link;

	if (!e)
		return 0;
	*link = e->next;
	free(e);
	t->count--;
	return 1;
}

#endif /* GREENRING_BENCH_KV_TABLE_H */
