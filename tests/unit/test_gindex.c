/* Tests for coord/gindex: snapshots and matches over chains of several
 * nodes, deltas per tier, gaps and staleness, snapshot replacement,
 * drop_node, the max_entries bound, argument checks, and a property test of
 * random forests of chains and random snapshots/deltas/drops checked against
 * a brute-force model (which also mirrors the max_entries drops). */
#include "coord/gindex.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Deterministic PRNG (splitmix64) so a failure replays. */
static uint64_t g_rng = 0x67696e646578ull;

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd(void) { return mix(g_rng += 0x9e3779b97f4a7c15ull); }

static uint32_t rnd_below(uint32_t n) { return (uint32_t)(rnd() % n); }

/* Block i of chain c: distinct, deterministic keys. */
static kvt_block_key_t key_of(uint32_t chain, uint32_t i)
{
    kvt_block_key_t k;
    uint64_t seed = ((uint64_t)chain << 32) | i;
    for (int j = 0; j < KVT_KEY_LEN; j += 8) {
        uint64_t r = mix(seed * 4 + (uint64_t)j + 0x1234567ull);
        memcpy(k.b + j, &r, 8);
    }
    return k;
}

static kvt_gindex_event_t ev(kvt_event_kind_t kind, kvt_tier_id_t tier, kvt_block_key_t key)
{
    kvt_gindex_event_t e = {.kind = kind, .tier = tier, .key = key};
    return e;
}

/* Events for blocks [from, to) of a chain. */
static size_t chain_events(kvt_gindex_event_t *out, kvt_event_kind_t kind, kvt_tier_id_t tier,
                           uint32_t chain, uint32_t from, uint32_t to)
{
    for (uint32_t i = from; i < to; i++)
        out[i - from] = ev(kind, tier, key_of(chain, i));
    return to - from;
}

static void chain_keys(kvt_block_key_t *out, uint32_t chain, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        out[i] = key_of(chain, i);
}

static void assert_match(const kvt_gindex_match_t *m, uint32_t prefix, uint32_t gpu,
                         uint32_t host, uint32_t disk)
{
    assert_int_equal(m->prefix, prefix);
    assert_int_equal(m->n_gpu, gpu);
    assert_int_equal(m->n_host, host);
    assert_int_equal(m->n_disk, disk);
}

static kvt_gindex_t *make(size_t max_entries)
{
    kvt_gindex_t *g = NULL;
    assert_int_equal(kvt_gindex_create(max_entries, &g), KVT_OK);
    assert_non_null(g);
    return g;
}

static void test_snapshot_and_match(void **state)
{
    kvt_gindex_t *g = make(1000);
    kvt_gindex_event_t e[32];
    size_t n;
    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 1, 0, 10);
    assert_int_equal(kvt_gindex_snapshot(g, 0, 100, e, n), KVT_OK);
    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_HOST, 1, 0, 5);
    assert_int_equal(kvt_gindex_snapshot(g, 1, 7, e, n), KVT_OK);
    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_DISK, 1, 0, 7);
    n += chain_events(e + n, KVT_EVENT_STORED, KVT_TIER_GPU, 2, 0, 4);
    assert_int_equal(kvt_gindex_snapshot(g, 2, 0, e, n), KVT_OK);
    /* Node 63 holds blocks 0-2 and 4-9: a hole stops its match at 3. */
    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_HOST, 1, 0, 3);
    n += chain_events(e + n, KVT_EVENT_STORED, KVT_TIER_HOST, 1, 4, 10);
    assert_int_equal(kvt_gindex_snapshot(g, 63, 0, e, n), KVT_OK);

    kvt_block_key_t keys[12];
    kvt_gindex_match_t out[KVT_GINDEX_MAX_NODES];
    chain_keys(keys, 1, 12);
    kvt_gindex_match(g, keys, 12, out);
    assert_match(&out[0], 10, 10, 0, 0);
    assert_match(&out[1], 5, 0, 5, 0);
    assert_match(&out[2], 7, 0, 0, 7);
    assert_match(&out[63], 3, 0, 3, 0);
    for (int i = 3; i < 63; i++)
        assert_match(&out[i], 0, 0, 0, 0);

    chain_keys(keys, 2, 6);
    kvt_gindex_match(g, keys, 6, out);
    assert_match(&out[2], 4, 4, 0, 0);
    assert_match(&out[0], 0, 0, 0, 0);
    kvt_gindex_match(g, keys, 0, out);
    assert_match(&out[2], 0, 0, 0, 0);

    kvt_gindex_stats_t st;
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 14);
    assert_int_equal(st.snapshots, 4);
    assert_int_equal(st.dropped_full, 0);
    kvt_gindex_destroy(g);
}

static void test_deltas_per_tier(void **state)
{
    kvt_gindex_t *g = make(1000);
    kvt_gindex_event_t e[32];
    kvt_block_key_t keys[8];
    kvt_gindex_match_t out[KVT_GINDEX_MAX_NODES];
    chain_keys(keys, 3, 8);
    assert_int_equal(kvt_gindex_snapshot(g, 5, 10, NULL, 0), KVT_OK);

    size_t n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 3, 0, 4);
    n += chain_events(e + n, KVT_EVENT_STORED, KVT_TIER_HOST, 3, 0, 6);
    assert_int_equal(kvt_gindex_delta(g, 5, 11, e, n), KVT_OK);
    kvt_gindex_match(g, keys, 8, out);
    assert_match(&out[5], 6, 4, 2, 0);

    n = chain_events(e, KVT_EVENT_EVICTED, KVT_TIER_GPU, 3, 2, 4);
    n += chain_events(e + n, KVT_EVENT_EVICTED, KVT_TIER_GPU, 9, 0, 2); /* never held */
    assert_int_equal(kvt_gindex_delta(g, 5, 12, e, n), KVT_OK);
    kvt_gindex_match(g, keys, 8, out);
    assert_match(&out[5], 6, 2, 4, 0);

    e[0] = ev(KVT_EVENT_DROPPED, KVT_TIER_HOST, keys[4]);
    e[1] = ev(KVT_EVENT_STORED, KVT_TIER_DISK, keys[6]);
    assert_int_equal(kvt_gindex_delta(g, 5, 13, e, 2), KVT_OK);
    kvt_gindex_match(g, keys, 8, out);
    assert_match(&out[5], 4, 2, 2, 0);

    /* Empty deltas advance the sequence too. */
    assert_int_equal(kvt_gindex_delta(g, 5, 14, NULL, 0), KVT_OK);

    /* Removing every tier of a key removes the key. */
    kvt_gindex_stats_t st;
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 6); /* keys 0-3, 5, 6: key 4 left with its last tier */
    e[0] = ev(KVT_EVENT_EVICTED, KVT_TIER_DISK, keys[6]);
    e[1] = ev(KVT_EVENT_EVICTED, KVT_TIER_HOST, keys[5]);
    assert_int_equal(kvt_gindex_delta(g, 5, 15, e, 2), KVT_OK);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.deltas, 5);
    assert_int_equal(st.snapshots, 1);
    kvt_gindex_destroy(g);
}

static void test_gap_marks_stale(void **state)
{
    kvt_gindex_t *g = make(1000);
    kvt_gindex_event_t e[16];
    kvt_block_key_t keys[8];
    kvt_gindex_match_t out[KVT_GINDEX_MAX_NODES];
    chain_keys(keys, 4, 8);

    /* A delta before any snapshot is refused and marks the node stale. */
    size_t n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 4, 0, 2);
    assert_false(kvt_gindex_node_stale(g, 2));
    assert_int_equal(kvt_gindex_delta(g, 2, 1, e, n), KVT_ERR_AGAIN);
    assert_true(kvt_gindex_node_stale(g, 2));
    kvt_gindex_match(g, keys, 8, out);
    assert_int_equal(out[2].prefix, 0);

    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 4, 0, 3);
    assert_int_equal(kvt_gindex_snapshot(g, 2, 5, e, n), KVT_OK);
    assert_false(kvt_gindex_node_stale(g, 2));

    /* seq 7 after 5: a gap; nothing applied, entries stay as hints. */
    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 4, 3, 6);
    assert_int_equal(kvt_gindex_delta(g, 2, 7, e, n), KVT_ERR_AGAIN);
    assert_true(kvt_gindex_node_stale(g, 2));
    kvt_gindex_match(g, keys, 8, out);
    assert_match(&out[2], 3, 3, 0, 0);
    /* Stale: even the "right" next sequence number is refused. */
    assert_int_equal(kvt_gindex_delta(g, 2, 6, e, n), KVT_ERR_AGAIN);
    kvt_gindex_match(g, keys, 8, out);
    assert_int_equal(out[2].prefix, 3);
    /* A replayed old delta is a gap too. */
    assert_int_equal(kvt_gindex_snapshot(g, 2, 20, e, 0), KVT_OK);
    assert_false(kvt_gindex_node_stale(g, 2));
    assert_int_equal(kvt_gindex_delta(g, 2, 20, e, n), KVT_ERR_AGAIN);
    assert_true(kvt_gindex_node_stale(g, 2));

    assert_int_equal(kvt_gindex_snapshot(g, 2, 30, NULL, 0), KVT_OK);
    assert_int_equal(kvt_gindex_delta(g, 2, 31, e, n), KVT_OK);
    assert_false(kvt_gindex_node_stale(g, 2));
    kvt_gindex_match(g, keys, 8, out);
    assert_int_equal(out[2].prefix, 0); /* 3-5 without 0-2 */

    kvt_gindex_stats_t st;
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.gaps, 4);
    assert_int_equal(st.deltas, 1);
    kvt_gindex_destroy(g);
}

static void test_snapshot_replaces_and_drop_node(void **state)
{
    kvt_gindex_t *g = make(1000);
    kvt_gindex_event_t e[32];
    kvt_block_key_t a[10], b[10];
    kvt_gindex_match_t out[KVT_GINDEX_MAX_NODES];
    kvt_gindex_stats_t st;
    chain_keys(a, 5, 10);
    chain_keys(b, 6, 10);

    size_t n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 5, 0, 10);
    assert_int_equal(kvt_gindex_snapshot(g, 0, 1, e, n), KVT_OK);
    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_HOST, 5, 0, 6);
    assert_int_equal(kvt_gindex_snapshot(g, 1, 1, e, n), KVT_OK);

    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_DISK, 6, 0, 8);
    n += chain_events(e + n, KVT_EVENT_STORED, KVT_TIER_GPU, 5, 0, 2);
    assert_int_equal(kvt_gindex_snapshot(g, 0, 50, e, n), KVT_OK);
    kvt_gindex_match(g, a, 10, out);
    assert_match(&out[0], 2, 2, 0, 0);
    assert_match(&out[1], 6, 0, 6, 0);
    kvt_gindex_match(g, b, 10, out);
    assert_match(&out[0], 8, 0, 0, 8);
    assert_int_equal(out[1].prefix, 0);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 6 + 8);

    kvt_gindex_drop_node(g, 1);
    kvt_gindex_match(g, a, 10, out);
    assert_int_equal(out[1].prefix, 0);
    assert_int_equal(out[0].prefix, 2);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 2 + 8);
    /* A dropped node needs a new snapshot before its deltas apply. */
    assert_int_equal(kvt_gindex_delta(g, 1, 2, e, 1), KVT_ERR_AGAIN);
    kvt_gindex_drop_node(g, 1);
    assert_false(kvt_gindex_node_stale(g, 1));

    kvt_gindex_drop_node(g, 0);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 0);
    kvt_gindex_drop_node(g, 64); /* ignored */
    kvt_gindex_destroy(g);
}

static void test_max_entries(void **state)
{
    kvt_gindex_t *g = make(10);
    kvt_gindex_event_t e[32];
    kvt_gindex_stats_t st;
    size_t n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 7, 0, 15);
    assert_int_equal(kvt_gindex_snapshot(g, 0, 0, e, n), KVT_OK);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 10);
    assert_int_equal(st.dropped_full, 5);

    /* Another node or tier of a held key needs no new entry. */
    n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_HOST, 7, 0, 10);
    assert_int_equal(kvt_gindex_snapshot(g, 1, 0, e, n), KVT_OK);
    assert_int_equal(kvt_gindex_delta(g, 0, 1, e, n), KVT_OK);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 10);
    assert_int_equal(st.dropped_full, 5);

    /* A new key is dropped (the delta still succeeds) until one is freed. */
    e[0] = ev(KVT_EVENT_STORED, KVT_TIER_GPU, key_of(8, 0));
    assert_int_equal(kvt_gindex_delta(g, 0, 2, e, 1), KVT_OK);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.dropped_full, 6);
    kvt_gindex_drop_node(g, 1);
    e[0] = ev(KVT_EVENT_EVICTED, KVT_TIER_GPU, key_of(7, 9));
    e[1] = ev(KVT_EVENT_EVICTED, KVT_TIER_HOST, key_of(7, 9));
    e[2] = ev(KVT_EVENT_STORED, KVT_TIER_GPU, key_of(8, 0));
    assert_int_equal(kvt_gindex_delta(g, 0, 3, e, 3), KVT_OK);
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 10);
    assert_int_equal(st.dropped_full, 6);
    kvt_block_key_t k = key_of(8, 0);
    kvt_gindex_match_t out[KVT_GINDEX_MAX_NODES];
    kvt_gindex_match(g, &k, 1, out);
    assert_int_equal(out[0].prefix, 1);
    kvt_gindex_destroy(g);
}

static void test_invalid(void **state)
{
    kvt_gindex_t *g = NULL;
    assert_int_equal(kvt_gindex_create(0, &g), KVT_ERR_INVALID);
    assert_int_equal(kvt_gindex_create((size_t)KVT_GINDEX_MAX_ENTRIES + 1, &g), KVT_ERR_INVALID);
    assert_null(g);
    g = make(100);
    kvt_gindex_event_t e[4];
    size_t n = chain_events(e, KVT_EVENT_STORED, KVT_TIER_GPU, 9, 0, 3);
    assert_int_equal(kvt_gindex_snapshot(g, 64, 0, e, n), KVT_ERR_INVALID);
    assert_int_equal(kvt_gindex_delta(g, 64, 1, e, n), KVT_ERR_INVALID);
    assert_int_equal(kvt_gindex_snapshot(g, 0, 0, NULL, 2), KVT_ERR_INVALID);

    /* A bad event anywhere: nothing applied. */
    e[2].kind = KVT_EVENT_EVICTED; /* not allowed in a snapshot */
    assert_int_equal(kvt_gindex_snapshot(g, 0, 0, e, n), KVT_ERR_INVALID);
    e[2].kind = KVT_EVENT_STORED;
    e[2].tier = KVT_TIER_NONE;
    assert_int_equal(kvt_gindex_snapshot(g, 0, 0, e, n), KVT_ERR_INVALID);
    kvt_gindex_stats_t st;
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.snapshots, 0);

    assert_int_equal(kvt_gindex_snapshot(g, 0, 0, NULL, 0), KVT_OK);
    e[2].tier = (kvt_tier_id_t)3;
    assert_int_equal(kvt_gindex_delta(g, 0, 1, e, n), KVT_ERR_INVALID);
    e[2].tier = KVT_TIER_DISK;
    e[2].kind = (kvt_event_kind_t)0;
    assert_int_equal(kvt_gindex_delta(g, 0, 1, e, n), KVT_ERR_INVALID);
    assert_false(kvt_gindex_node_stale(g, 0));
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 0);
    e[2].kind = KVT_EVENT_DROPPED;
    assert_int_equal(kvt_gindex_delta(g, 0, 1, e, n), KVT_OK); /* seq 1 still expected */
    kvt_gindex_stats(g, &st);
    assert_int_equal(st.entries, 2);
    assert_false(kvt_gindex_node_stale(g, 64));
    kvt_gindex_destroy(g);
    kvt_gindex_destroy(NULL);
}

/* ---- property test against a brute-force model ---- */

#define P_NODES 8
#define P_KEYS 3000

typedef struct {
    kvt_block_key_t key[P_KEYS];
    int parent[P_KEYS]; /* -1: a root */
    uint8_t held[P_KEYS][P_NODES]; /* bit t: held in tier t */
    uint64_t last_seq[P_NODES];
    bool has_snap[P_NODES], stale[P_NODES];
    size_t entries, max_entries;
    uint64_t dropped, gaps;
} model_t;

static bool model_any(const model_t *m, int k)
{
    for (int n = 0; n < P_NODES; n++)
        if (m->held[k][n])
            return true;
    return false;
}

static void model_apply(model_t *m, int node, kvt_event_kind_t kind, int tier, int k)
{
    if (kind == KVT_EVENT_STORED) {
        if (!model_any(m, k)) {
            if (m->entries >= m->max_entries) {
                m->dropped++;
                return;
            }
            m->entries++;
        }
        m->held[k][node] |= (uint8_t)(1u << tier);
    } else if (model_any(m, k)) {
        m->held[k][node] &= (uint8_t)~(1u << tier);
        if (!model_any(m, k))
            m->entries--;
    }
}

static void model_clear(model_t *m, int node)
{
    for (int k = 0; k < P_KEYS; k++) {
        if (!m->held[k][node])
            continue;
        m->held[k][node] = 0;
        if (!model_any(m, k))
            m->entries--;
    }
}

/* A forest: each key's parent is an earlier key (or none), mostly recent
 * ones, so chains are long and share prefixes. */
static void model_init(model_t *m, size_t max_entries)
{
    memset(m, 0, sizeof(*m));
    m->max_entries = max_entries;
    for (int k = 0; k < P_KEYS; k++) {
        m->key[k] = key_of(1000 + (uint32_t)k / 100, (uint32_t)k);
        m->parent[k] = (k == 0 || rnd_below(20) == 0) ? -1 : k - 1 - (int)rnd_below(k < 8 ? k : 8);
    }
}

/* The chain ending at key k, root first; returns its length. */
static size_t model_chain(const model_t *m, int k, int *ids, kvt_block_key_t *keys)
{
    size_t n = 0;
    for (int j = k; j >= 0; j = m->parent[j])
        n++;
    size_t i = n;
    for (int j = k; j >= 0; j = m->parent[j]) {
        ids[--i] = j;
        keys[i] = m->key[j];
    }
    return n;
}

static void model_check_match(const model_t *m, kvt_gindex_t *g, int k)
{
    static int ids[P_KEYS];
    static kvt_block_key_t keys[P_KEYS];
    size_t n = model_chain(m, k, ids, keys);
    kvt_gindex_match_t out[KVT_GINDEX_MAX_NODES];
    kvt_gindex_match(g, keys, n, out);
    for (int node = 0; node < KVT_GINDEX_MAX_NODES; node++) {
        kvt_gindex_match_t want = {0};
        for (size_t i = 0; node < P_NODES && i < n && m->held[ids[i]][node]; i++) {
            uint8_t h = m->held[ids[i]][node];
            want.prefix++;
            if (h & 1)
                want.n_gpu++;
            else if (h & 2)
                want.n_host++;
            else
                want.n_disk++;
        }
        assert_match(&out[node], want.prefix, want.n_gpu, want.n_host, want.n_disk);
    }
}

static size_t random_events(const model_t *m, kvt_gindex_event_t *e, int *ids, bool snapshot)
{
    size_t n = snapshot ? rnd_below(400) : 1 + rnd_below(30);
    int k = (int)rnd_below(P_KEYS);
    for (size_t i = 0; i < n; i++) {
        /* Mostly walk a chain upwards, sometimes jump. */
        k = (rnd_below(4) == 0 || m->parent[k] < 0) ? (int)rnd_below(P_KEYS) : m->parent[k];
        uint32_t r = rnd_below(10);
        kvt_event_kind_t kind = snapshot || r < 6 ? KVT_EVENT_STORED
                                : r < 9           ? KVT_EVENT_EVICTED
                                                  : KVT_EVENT_DROPPED;
        ids[i] = k;
        e[i] = ev(kind, (kvt_tier_id_t)rnd_below(3), m->key[k]);
    }
    return n;
}

static void op_delta(model_t *m, kvt_gindex_t *g, int node)
{
    static kvt_gindex_event_t e[400];
    static int ids[400];
    size_t n = random_events(m, e, ids, false);
    uint64_t seq = m->last_seq[node] + 1;
    if (rnd_below(15) == 0)
        seq += 1 + rnd_below(3);
    kvt_status_t st = kvt_gindex_delta(g, (uint32_t)node, seq, e, n);
    if (!m->has_snap[node] || m->stale[node] || seq != m->last_seq[node] + 1) {
        assert_int_equal(st, KVT_ERR_AGAIN);
        m->stale[node] = true;
        m->gaps++;
        return;
    }
    assert_int_equal(st, KVT_OK);
    m->last_seq[node] = seq;
    for (size_t i = 0; i < n; i++)
        model_apply(m, node, e[i].kind, (int)e[i].tier, ids[i]);
}

static void op_snapshot(model_t *m, kvt_gindex_t *g, int node)
{
    static kvt_gindex_event_t e[400];
    static int ids[400];
    size_t n = random_events(m, e, ids, true);
    uint64_t seq = rnd_below(1000);
    assert_int_equal(kvt_gindex_snapshot(g, (uint32_t)node, seq, e, n), KVT_OK);
    model_clear(m, node);
    for (size_t i = 0; i < n; i++)
        model_apply(m, node, KVT_EVENT_STORED, (int)e[i].tier, ids[i]);
    m->last_seq[node] = seq;
    m->has_snap[node] = true;
    m->stale[node] = false;
}

static void run_property(size_t max_entries, int ops)
{
    static model_t m;
    model_init(&m, max_entries);
    kvt_gindex_t *g = make(max_entries);
    for (int op = 0; op < ops; op++) {
        int node = (int)rnd_below(P_NODES);
        uint32_t r = rnd_below(100);
        if (r < 10) {
            op_snapshot(&m, g, node);
        } else if (r < 12) {
            kvt_gindex_drop_node(g, (uint32_t)node);
            model_clear(&m, node);
            m.has_snap[node] = m.stale[node] = false;
            m.last_seq[node] = 0;
        } else if (r < 70) {
            op_delta(&m, g, node);
        } else {
            model_check_match(&m, g, (int)rnd_below(P_KEYS));
        }
        kvt_gindex_stats_t st;
        kvt_gindex_stats(g, &st);
        assert_int_equal(st.entries, m.entries);
        assert_int_equal(st.dropped_full, m.dropped);
        assert_int_equal(st.gaps, m.gaps);
        assert_true(st.entries <= max_entries);
        for (int n = 0; n < P_NODES; n++)
            assert_int_equal(kvt_gindex_node_stale(g, (uint32_t)n), m.stale[n]);
    }
    for (int k = 0; k < P_KEYS; k += 7)
        model_check_match(&m, g, k);
    kvt_gindex_destroy(g);
}

static void test_property_unbounded(void **state) { run_property(P_KEYS, 2000); }

static void test_property_bounded(void **state) { run_property(500, 2000); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_and_match),
        cmocka_unit_test(test_deltas_per_tier),
        cmocka_unit_test(test_gap_marks_stale),
        cmocka_unit_test(test_snapshot_replaces_and_drop_node),
        cmocka_unit_test(test_max_entries),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_property_unbounded),
        cmocka_unit_test(test_property_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
