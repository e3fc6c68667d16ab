/* A request's prompt on the engine (request.h). */
#include "engine/request.h"

#include "common/alloc.h"
#include "common/log.h"
#include "engine/tier_io.h"

#include <stdio.h>
#include <string.h>

#define PEER_BATCH 64

/* Put pulled blocks [0..n) into the pool (and the tier); *ok_p = leading
 * blocks that made it. */
static void import_pulled(kvt_engine_t *e, kvt_pull_t *items, size_t n, kvt_tier_t *tier,
                          size_t *ok_p)
{
    kvt_block_header_t hdrs[PEER_BATCH];
    const void *payloads[PEER_BATCH];
    kvt_status_t st[PEER_BATCH];
    size_t k = 0;
    while (k < n && items[k].status == KVT_OK) {
        hdrs[k] = items[k].hdr;
        payloads[k] = items[k].dst;
        k++;
    }
    *ok_p = 0;
    if (k == 0)
        return;
    (void)kvt_engine_pool_put_batch(e, hdrs, payloads, k, st);
    size_t ok = 0;
    while (ok < k && (st[ok] == KVT_OK || st[ok] == KVT_ERR_EXISTS))
        ok++;
    for (size_t i = 0; tier && i < ok; i++) {
        kvt_status_t ts = kvt_tier_put(tier, &hdrs[i], payloads[i]);
        if (ts != KVT_OK && ts != KVT_ERR_EXISTS)
            kvt_log_warn("pulled block not stored in the tier index=%u status=%s",
                         hdrs[i].index, kvt_status_str(ts));
    }
    *ok_p = ok;
}

kvt_status_t kvt_engine_peer_load(kvt_engine_t *e, kvt_block_client_t *peer,
                                  const kvt_block_key_t *keys, size_t from, size_t to,
                                  kvt_tier_t *tier, int timeout_ms, size_t *imported_p,
                                  size_t *failed_p)
{
    *imported_p = *failed_p = 0;
    if (from >= to)
        return KVT_OK;
    const kvt_block_identity_t *id = kvt_engine_identity(e);
    uint64_t cap = kvt_block_layout_payload_bytes(&id->layout);
    size_t batch = PEER_BATCH, staged = kvt_engine_stage_blocks(e);
    if (staged && staged < batch)
        batch = staged;
    /* GPU: pull straight into the pinned staging (no host copy). */
    uint8_t *host = staged ? NULL : kvt_malloc("peer load buffer", batch * cap);
    kvt_pull_t *items = kvt_calloc("peer load items", batch, sizeof(*items));
    kvt_status_t st = items && (staged || host) ? KVT_OK : KVT_ERR_NOMEM;
    for (size_t at = from; st == KVT_OK && at < to;) {
        size_t n = to - at < batch ? to - at : batch;
        for (size_t i = 0; i < n; i++)
            items[i] = (kvt_pull_t){.key = keys[at + i], .cap = cap,
                                    .dst = staged ? kvt_engine_stage_buf(e, i) : host + i * cap};
        kvt_status_t ps = kvt_block_client_pull(peer, items, n, id, timeout_ms);
        size_t ok = 0;
        if (ps == KVT_OK)
            import_pulled(e, items, n, tier, &ok);
        *imported_p += ok;
        at += ok;
        if (ok < n) {
            kvt_status_t why = ps != KVT_OK ? ps : items[ok].status;
            if (why != KVT_ERR_NOT_FOUND)
                *failed_p = 1;
            kvt_log_warn("peer pull stopped, recomputing from index=%zu status=%s", at,
                         kvt_status_str(why));
            break;
        }
    }
    kvt_free(items);
    kvt_free(host);
    return st;
}

/* Everything cached before the sequence exists: tier, then peer. */
static kvt_status_t import_cached(kvt_engine_t *e, const kvt_block_key_t *keys, size_t n_keys,
                                  const kvt_prompt_src_t *src, kvt_prompt_stats_t *s)
{
    s->pool_blocks = kvt_engine_pool_match(e, keys, n_keys);
    size_t have = s->pool_blocks;
    kvt_status_t st = KVT_OK;
    if (src->tier) {
        kvt_tier_load_stats_t ls = {0};
        st = kvt_engine_tier_load(e, src->tier, keys, n_keys, &ls);
        s->failed_blocks += ls.failed_blocks;
        s->stored_blocks = ls.stored_blocks;
        have = kvt_engine_pool_match(e, keys, n_keys);
        s->tier_blocks = have > s->pool_blocks ? have - s->pool_blocks : 0;
    }
    size_t want = src->peer_blocks < n_keys ? src->peer_blocks : n_keys;
    if (st == KVT_OK && src->peer && want > have) {
        size_t got = 0, failed = 0;
        st = kvt_engine_peer_load(e, src->peer, keys, have, want,
                                  src->store ? src->tier : NULL,
                                  src->peer_timeout_ms ? src->peer_timeout_ms : 10000, &got,
                                  &failed);
        s->peer_blocks = got;
        s->failed_blocks += failed;
    }
    return st;
}

/* The key of the last full block of tokens[0..n) after root (root itself
 * when there is none): the partial tail's parent. */
static kvt_status_t tail_parent(const kvt_block_key_t *root, uint32_t b, const uint32_t *tokens,
                                size_t n, kvt_block_key_t *parent_p)
{
    kvt_block_key_t k = *root;
    for (size_t i = 0; i + b <= n; i += b) {
        kvt_status_t st = kvt_block_key_next(&k, b, tokens + i, &k);
        if (st != KVT_OK)
            return st;
    }
    *parent_p = k;
    return KVT_OK;
}

/* The whole prompt from the pool and the peer's tail, with no pass, when
 * nothing is missing.  KVT_OK with s->adopted false: compute instead (a
 * tail that cannot be pulled or fails verification is counted and then
 * recomputed, invariant 3). */
static kvt_status_t try_adopt(kvt_engine_t *e, kvt_seq_t *seq, const kvt_block_key_t *root,
                              const kvt_block_key_t *keys, size_t n_keys,
                              const uint32_t *tokens, size_t n, const kvt_prompt_src_t *src,
                              kvt_prompt_stats_t *s)
{
    const kvt_block_layout_t *layout = &kvt_engine_identity(e)->layout;
    uint32_t t = (uint32_t)(n % layout->block_tokens);
    if (kvt_engine_pool_match(e, keys, n_keys) < n_keys || (t && (!src->peer || src->peer_tail != t)))
        return KVT_OK;
    uint8_t *tail = NULL;
    size_t len = 0;
    kvt_status_t st = KVT_OK;
    if (t) {
        uint64_t cap = kvt_tail_bytes(layout, t);
        tail = kvt_malloc("prompt tail", cap);
        if (!tail)
            return KVT_OK; /* computing it needs no buffer */
        st = kvt_block_client_pull_tail(src->peer, n_keys ? &keys[n_keys - 1] : root, t,
                                        tokens + n - t, layout, true, tail, cap, &len,
                                        src->peer_timeout_ms ? src->peer_timeout_ms : 10000);
        if (st != KVT_OK) {
            kvt_log_warn("tail pull failed, recomputing it tokens=%u status=%s", t,
                         kvt_status_str(st));
            s->failed_blocks += st != KVT_ERR_NOT_FOUND;
            kvt_free(tail);
            return KVT_OK;
        }
    }
    st = kvt_engine_seq_adopt(e, seq, tokens, n, tail, len);
    kvt_free(tail);
    if (st == KVT_OK) {
        s->adopted = true;
        s->tail_tokens = t;
        s->cached_tokens = n;
    }
    return st == KVT_ERR_NOT_FOUND ? KVT_OK : st;
}

kvt_status_t kvt_engine_run_prompt(kvt_engine_t *e, const kvt_block_key_t *root,
                                   const uint32_t *tokens, size_t n,
                                   const kvt_prompt_src_t *src, kvt_seq_t **seq_p,
                                   float *logits, kvt_prompt_stats_t *stats_p)
{
    kvt_prompt_stats_t s = {0};
    uint32_t b = kvt_engine_identity(e)->layout.block_tokens;
    size_t n_keys = 0;
    kvt_block_key_t *keys = kvt_calloc("prompt key chain", n / b + 1, sizeof(*keys));
    if (!keys)
        return KVT_ERR_NOMEM;
    kvt_status_t st = kvt_block_key_chain(root, b, tokens, n, keys, n / b, &n_keys);
    if (st == KVT_OK && src->reuse)
        st = import_cached(e, keys, n_keys, src, &s);
    kvt_seq_t *seq = NULL;
    if (st == KVT_OK)
        st = kvt_engine_seq_create(e, root, &seq);
    if (st == KVT_OK && src->reuse && !logits && n > 0)
        st = try_adopt(e, seq, root, keys, n_keys, tokens, n, src, &s);
    if (st == KVT_OK && src->reuse && !s.adopted)
        st = kvt_engine_seq_reuse(e, seq, tokens, n, &s.cached_tokens);
    if (st == KVT_OK && !s.adopted)
        st = kvt_engine_prefill(e, seq, tokens + s.cached_tokens, n - s.cached_tokens, logits, 0);
    if (st == KVT_OK && src->reuse && src->store && src->tier) {
        size_t from = s.stored_blocks < n_keys ? s.stored_blocks : n_keys, stored = 0;
        st = kvt_engine_tier_store(e, src->tier, seq, from, n_keys, &stored);
        size_t resident = 0;
        if (st == KVT_OK)
            st = kvt_tier_longest_prefix(src->tier, keys, n_keys, NULL, &resident);
        s.stored_blocks = resident;
    }
    kvt_free(keys);
    if (st != KVT_OK) {
        if (seq)
            kvt_engine_seq_destroy(e, seq);
        return st;
    }
    *seq_p = seq;
    *stats_p = s;
    return KVT_OK;
}

kvt_status_t kvt_engine_tail_hold(kvt_engine_t *e, const kvt_seq_t *seq,
                                  const kvt_block_key_t *root, kvt_tail_store_t *tails,
                                  uint32_t *t_p)
{
    const kvt_block_layout_t *layout = &kvt_engine_identity(e)->layout;
    size_t n = kvt_engine_seq_len(seq);
    uint32_t t = (uint32_t)(n % layout->block_tokens);
    if (t == 0) {
        *t_p = 0;
        return KVT_OK;
    }
    const uint32_t *tokens = kvt_engine_seq_tokens(seq);
    uint64_t cap = kvt_tail_bytes(layout, t);
    uint8_t *buf = kvt_malloc("held tail", cap);
    if (!buf)
        return KVT_ERR_NOMEM;
    kvt_block_key_t parent, key;
    size_t len = 0;
    kvt_status_t st = tail_parent(root, layout->block_tokens, tokens, n, &parent);
    if (st == KVT_OK)
        st = kvt_tail_key(&parent, t, tokens + n - t, &key);
    if (st == KVT_OK)
        st = kvt_engine_seq_tail(e, seq, buf, cap, &len);
    if (st == KVT_OK)
        st = kvt_tail_store_put(tails, &key, &parent, t, tokens + n - t, buf, len);
    kvt_free(buf);
    if (st == KVT_OK)
        *t_p = t;
    return st;
}

kvt_status_t kvt_node_req_init(kvt_node_req_t *r, const char *id, const uint32_t *tokens,
                               size_t n, const void *salt, size_t salt_len, float temperature,
                               float top_p, uint64_t seed, bool cache, const char *peer,
                               uint32_t peer_blocks)
{
    memset(r, 0, sizeof(*r));
    if (salt_len > sizeof(r->salt))
        return KVT_ERR_TOO_LARGE;
    r->tokens = kvt_malloc("node request tokens", (n ? n : 1) * sizeof(uint32_t));
    if (!r->tokens)
        return KVT_ERR_NOMEM;
    if (n)
        memcpy(r->tokens, tokens, n * sizeof(uint32_t));
    r->n = n;
    snprintf(r->id, sizeof(r->id), "%s", id ? id : "");
    if (salt_len)
        memcpy(r->salt, salt, salt_len);
    r->salt_len = salt_len;
    r->sp = (kvt_sample_params_t){.temperature = temperature, .top_p = top_p, .seed = seed};
    r->cache = cache;
    snprintf(r->peer, sizeof(r->peer), "%s", peer ? peer : "");
    r->peer_blocks = peer_blocks;
    return KVT_OK;
}

void kvt_node_req_cleanup(kvt_node_req_t *r)
{
    kvt_free(r->tokens);
    r->tokens = NULL;
}

kvt_status_t kvt_node_req_root(const kvt_engine_t *e, const kvt_node_req_t *r,
                               kvt_block_key_t *root_p)
{
    return kvt_block_key_root(kvt_engine_identity(e)->fingerprint, r->salt, r->salt_len, root_p);
}
