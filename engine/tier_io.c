/* Pool <-> tier block moves (tier_io.h). */
#include "engine/tier_io.h"

#include "common/alloc.h"
#include "common/log.h"

#include <string.h>

kvt_status_t kvt_engine_tier_load(kvt_engine_t *engine, kvt_tier_t *tier,
                                  const kvt_block_key_t *keys, size_t n_keys,
                                  kvt_tier_load_stats_t *stats_p)
{
    kvt_tier_load_stats_t st = {0};
    size_t n = 0;
    if (n_keys && kvt_tier_longest_prefix(tier, keys, n_keys, NULL, &n) != KVT_OK)
        n = 0;
    st.stored_blocks = n;
    size_t in_pool = kvt_engine_pool_match(engine, keys, n);
    st.loaded_blocks = in_pool;
    uint64_t cap = kvt_block_layout_payload_bytes(&kvt_engine_identity(engine)->layout);
    void *buf = n > in_pool ? kvt_malloc("tier load buffer", cap) : NULL;
    if (n > in_pool && !buf)
        return KVT_ERR_NOMEM;
    kvt_block_header_t hdr;
    for (size_t i = in_pool; i < n; i++) {
        kvt_tier_id_t from;
        kvt_status_t s = kvt_tier_get(tier, &keys[i], &hdr, buf, cap, &from);
        if (s == KVT_OK)
            s = kvt_engine_pool_put(engine, &hdr, buf, hdr.payload_len);
        if (s == KVT_ERR_EXISTS)
            s = KVT_OK;
        if (s != KVT_OK) {
            /* Recompute from here on: never use a block we could not check. */
            kvt_log_warn("tier block not loaded, recomputing from it index=%zu status=%s", i,
                         kvt_status_str(s));
            st.failed_blocks = 1;
            break;
        }
        st.loaded_blocks++;
        if (from == KVT_TIER_HOST)
            st.t1_blocks++;
        else
            st.t2_blocks++;
    }
    kvt_free(buf);
    *stats_p = st;
    return KVT_OK;
}

kvt_status_t kvt_engine_tier_store(kvt_engine_t *engine, kvt_tier_t *tier, const kvt_seq_t *seq,
                                   size_t from, size_t to, size_t *stored_p)
{
    size_t stored = 0;
    size_t full = kvt_engine_seq_n_full_blocks(seq);
    if (to > full)
        to = full;
    for (size_t i = from; i < to; i++) {
        kvt_block_header_t hdr;
        const void *payload;
        kvt_status_t s = kvt_engine_seq_block(engine, seq, i, &hdr, &payload);
        if (s == KVT_OK)
            s = kvt_tier_put(tier, &hdr, payload);
        if (s == KVT_ERR_EXISTS)
            s = KVT_OK;
        if (s != KVT_OK) {
            /* Later blocks would lack their parent: stop here. */
            kvt_log_warn("tier refused a block, not storing the rest index=%zu status=%s", i,
                         kvt_status_str(s));
            break;
        }
        stored++;
    }
    *stored_p = stored;
    return KVT_OK;
}
