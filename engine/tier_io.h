/* Moving blocks between the engine's pool (T0) and the node's tier (T1 over
 * T2): the longest stored prefix of a prompt comes in before prefill, the
 * prompt's new full blocks go out after it.
 *
 * Invariant 3: a block that cannot be read or fails verification stops the
 * import there (it and everything after it are recomputed) and is counted;
 * it is never used.  Storing is best effort: a block the tier refuses is
 * logged and counted, and generation goes on (the KV is still correct in
 * the pool). */
#ifndef KVT_ENGINE_TIER_IO_H
#define KVT_ENGINE_TIER_IO_H

#include "engine/engine.h"
#include "kvstore/tier.h"

typedef struct {
    size_t stored_blocks;  /* longest prefix the tier held */
    size_t loaded_blocks;  /* of those, now in the pool (imported or already there) */
    size_t failed_blocks;  /* reads or verifications that failed (0 or 1) */
    size_t t1_blocks, t2_blocks; /* where the loaded ones came from */
} kvt_tier_load_stats_t;

/* Import into the engine's pool the longest prefix of keys[0..n_keys) that
 * the tier holds.  Fails only on allocation failure. */
kvt_status_t kvt_engine_tier_load(kvt_engine_t *engine, kvt_tier_t *tier,
                                  const kvt_block_key_t *keys, size_t n_keys,
                                  kvt_tier_load_stats_t *stats_p);
/* Put the sequence's full blocks [from, to) into the tier; *stored_p =
 * blocks the tier took (already-present blocks count as stored). */
kvt_status_t kvt_engine_tier_store(kvt_engine_t *engine, kvt_tier_t *tier, const kvt_seq_t *seq,
                                   size_t from, size_t to, size_t *stored_p);

#endif
