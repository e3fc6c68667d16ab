/* Pool <-> tier block moves (tier_io.h).
 *
 * On a GPU engine blocks cross the bus in batches: a load reads up to
 * kvt_engine_stage_blocks images from the tier straight into the engine's
 * pinned staging and puts them with one kvt_engine_pool_put_batch (one
 * host-to-device copy, merged where slots are consecutive); a store takes
 * kvt_engine_batch_blocks blocks per kvt_engine_seq_blocks (one
 * device-to-host copy) and hands each image to the tier from the staging.
 * On the CPU the same code moves one block at a time through the pool's
 * own memory. */
#include "engine/tier_io.h"

#include "common/alloc.h"
#include "common/log.h"

#include <string.h>

/* Blocks per store batch on the CPU (pointers into the pool, no copies). */
#define STORE_BATCH_CPU 64

static void count_from(kvt_tier_load_stats_t *st, kvt_tier_id_t from)
{
    st->loaded_blocks++;
    if (from == KVT_TIER_HOST)
        st->t1_blocks++;
    else
        st->t2_blocks++;
}

static void load_failed(kvt_tier_load_stats_t *st, size_t i, kvt_status_t s)
{
    /* Recompute from here on: never use a block we could not check. */
    kvt_log_warn("tier block not loaded, recomputing from it index=%zu status=%s", i,
                 kvt_status_str(s));
    st->failed_blocks = 1;
}

/* One block at a time through a host buffer (the CPU engine). */
static kvt_status_t load_each(kvt_engine_t *engine, kvt_tier_t *tier,
                              const kvt_block_key_t *keys, size_t n, kvt_tier_load_stats_t *st)
{
    uint64_t cap = kvt_block_layout_payload_bytes(&kvt_engine_identity(engine)->layout);
    void *buf = kvt_malloc("tier load buffer", cap);
    if (!buf)
        return KVT_ERR_NOMEM;
    kvt_block_header_t hdr;
    for (size_t i = st->loaded_blocks; i < n; i++) {
        kvt_tier_id_t from;
        kvt_status_t s = kvt_tier_get(tier, &keys[i], &hdr, buf, cap, &from);
        if (s == KVT_OK)
            s = kvt_engine_pool_put(engine, &hdr, buf, hdr.payload_len);
        if (s == KVT_ERR_EXISTS)
            s = KVT_OK;
        if (s != KVT_OK) {
            load_failed(st, i, s);
            break;
        }
        count_from(st, from);
    }
    kvt_free(buf);
    return KVT_OK;
}

/* Batches through the engine's staging (the GPU engine). */
static kvt_status_t load_batched(kvt_engine_t *engine, kvt_tier_t *tier,
                                 const kvt_block_key_t *keys, size_t n,
                                 kvt_tier_load_stats_t *st)
{
    size_t S = kvt_engine_stage_blocks(engine);
    uint64_t cap = kvt_block_layout_payload_bytes(&kvt_engine_identity(engine)->layout);
    kvt_block_header_t *hdrs = kvt_malloc("tier load headers", S * sizeof(*hdrs));
    const void **bufs = kvt_malloc("tier load payloads", S * sizeof(*bufs));
    kvt_status_t *sts = kvt_malloc("tier load statuses", S * sizeof(*sts));
    kvt_tier_id_t *from = kvt_malloc("tier load sources", S * sizeof(*from));
    kvt_status_t ret = hdrs && bufs && sts && from ? KVT_OK : KVT_ERR_NOMEM;
    size_t i = st->loaded_blocks;
    while (ret == KVT_OK && i < n && !st->failed_blocks) {
        size_t m = 0;
        kvt_status_t s = KVT_OK;
        for (; m < S && i + m < n; m++) {
            bufs[m] = kvt_engine_stage_buf(engine, m);
            s = kvt_tier_get(tier, &keys[i + m], &hdrs[m], kvt_engine_stage_buf(engine, m), cap,
                             &from[m]);
            if (s != KVT_OK)
                break;
        }
        if (m > 0)
            (void)kvt_engine_pool_put_batch(engine, hdrs, bufs, m, sts);
        for (size_t j = 0; j < m; j++) {
            if (sts[j] != KVT_OK && sts[j] != KVT_ERR_EXISTS) {
                load_failed(st, i + j, sts[j]);
                break;
            }
            count_from(st, from[j]);
        }
        if (s != KVT_OK && !st->failed_blocks)
            load_failed(st, i + m, s);
        i += m;
    }
    kvt_free(hdrs);
    kvt_free(bufs);
    kvt_free(sts);
    kvt_free(from);
    return ret;
}

kvt_status_t kvt_engine_tier_load(kvt_engine_t *engine, kvt_tier_t *tier,
                                  const kvt_block_key_t *keys, size_t n_keys,
                                  kvt_tier_load_stats_t *stats_p)
{
    kvt_tier_load_stats_t st = {0};
    size_t n = 0;
    if (n_keys && kvt_tier_longest_prefix(tier, keys, n_keys, NULL, &n) != KVT_OK)
        n = 0;
    st.stored_blocks = n;
    st.loaded_blocks = kvt_engine_pool_match(engine, keys, n);
    kvt_status_t s = KVT_OK;
    if (n > st.loaded_blocks)
        s = kvt_engine_stage_blocks(engine) ? load_batched(engine, tier, keys, n, &st)
                                            : load_each(engine, tier, keys, n, &st);
    if (s == KVT_OK)
        *stats_p = st;
    return s;
}

kvt_status_t kvt_engine_tier_store(kvt_engine_t *engine, kvt_tier_t *tier, const kvt_seq_t *seq,
                                   size_t from, size_t to, size_t *stored_p)
{
    size_t stored = 0;
    size_t full = kvt_engine_seq_n_full_blocks(seq);
    size_t batch = kvt_engine_batch_blocks(engine);
    batch = batch < STORE_BATCH_CPU ? batch : STORE_BATCH_CPU;
    if (kvt_engine_stage_blocks(engine))
        batch = kvt_engine_stage_blocks(engine);
    if (to > full)
        to = full;
    kvt_block_header_t *hdrs = NULL;
    const void **payloads = NULL;
    if (from < to) {
        hdrs = kvt_malloc("tier store headers", batch * sizeof(*hdrs));
        payloads = kvt_malloc("tier store payloads", batch * sizeof(*payloads));
        if (!hdrs || !payloads) {
            kvt_free(hdrs);
            kvt_free(payloads);
            return KVT_ERR_NOMEM;
        }
    }
    bool stop = false;
    for (size_t i = from; i < to && !stop; i += batch) {
        size_t m = to - i < batch ? to - i : batch;
        kvt_status_t s = kvt_engine_seq_blocks(engine, seq, i, m, hdrs, payloads);
        for (size_t j = 0; j < m && !stop; j++) {
            if (s == KVT_OK) {
                s = kvt_tier_put(tier, &hdrs[j], payloads[j]);
                s = s == KVT_ERR_EXISTS ? KVT_OK : s;
            }
            if (s != KVT_OK) {
                /* Later blocks would lack their parent: stop here. */
                kvt_log_warn("tier refused a block, not storing the rest index=%zu status=%s",
                             i + j, kvt_status_str(s));
                stop = true;
                break;
            }
            stored++;
        }
    }
    kvt_free(hdrs);
    kvt_free(payloads);
    *stored_p = stored;
    return KVT_OK;
}
