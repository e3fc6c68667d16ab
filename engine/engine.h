/* Engine: the transformer forward pass over a paged, content-indexed KV
 * pool (DESIGN.md invariants 1, 2, 4, 5; the CPU reference path).
 *
 * The pool is an array of block slots, each holding one block image in the
 * layout of invariant 2: [layer][K,V][token][kv_head][head_dim] in the KV
 * dtype (bf16 by default, f32 for exactness tests).  A sequence holds a
 * block table: its full blocks, each named by its content key
 * (kvt_block_key_next from the sequence's root key), plus one partial tail
 * slot that only it writes.  When the tail fills up it gets its key and
 * enters the content index, so later sequences with the same tokens share
 * it (refcounted).  Unreferenced indexed blocks stay in the pool as a cache
 * and are evicted least-recently-used, leaves first (a block with resident
 * children is never evicted before them), so the pool is prefix-closed.  On
 * the GPU this pool is the T0 hot cache.
 *
 * Determinism: the KV of a token and the logits of a position depend only
 * on the tokens up to it, never on how the work was split (one-shot
 * prefill, prefill resumed from cached blocks, chunked prefill, batched
 * decode): every reduction runs in a fixed order per row.  With f32 KV,
 * resumed and one-shot prefill give bitwise identical blocks.
 *
 * Threads: one engine is driven by one caller thread at a time; it runs
 * its own worker threads (opts.n_threads) inside each call. */
#ifndef KVT_ENGINE_ENGINE_H
#define KVT_ENGINE_ENGINE_H

#include "common/status.h"
#include "engine/model.h"
#include "kvstore/block.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_engine kvt_engine_t;
typedef struct kvt_seq kvt_seq_t;

typedef struct {
    uint32_t block_tokens;    /* B; 0 = 16 */
    kvt_dtype_t kv_dtype;     /* KVT_DTYPE_BF16 or KVT_DTYPE_F32; 0 = bf16 */
    uint32_t n_blocks;        /* pool slots; 0 = enough for 8 x max_pos tokens, capped at 1 GiB */
    uint32_t n_threads;       /* 0 = the machine's online cores */
    uint32_t prefill_chunk;   /* tokens per prefill pass; 0 = 256 */
} kvt_engine_opts_t;

enum {
    KVT_ENGINE_LOGITS_ALL = 1u << 0, /* prefill: logits of every new position */
};

/* The engine borrows `model` (it must outlive the engine). */
kvt_status_t kvt_engine_create(const kvt_model_t *model, const kvt_engine_opts_t *opts,
                               kvt_engine_t **engine_p);
/* Every sequence must have been destroyed first. */
void kvt_engine_destroy(kvt_engine_t *engine);
/* Layout and fingerprint of the blocks this engine computes. */
const kvt_block_identity_t *kvt_engine_identity(const kvt_engine_t *engine);
const kvt_model_t *kvt_engine_model(const kvt_engine_t *engine);

/* --- the pool (T0) --- */

/* How many leading keys of keys[0..n) the pool holds. */
size_t kvt_engine_pool_match(kvt_engine_t *engine, const kvt_block_key_t *keys, size_t n);
/* Copy a block image into the pool as an unreferenced cached block.  The
 * header must match the engine's identity and its key must name its
 * tokens; the payload is verified (invariant 3).  Its parent must be
 * resident unless it is block 0 (prefix closure).  KVT_ERR_EXISTS if the
 * key is already there (not an error for callers that import chains),
 * KVT_ERR_NO_PARENT, KVT_ERR_MISMATCH, KVT_ERR_CORRUPT, KVT_ERR_FULL
 * (every slot referenced). */
kvt_status_t kvt_engine_pool_put(kvt_engine_t *engine, const kvt_block_header_t *hdr,
                                 const void *payload, size_t payload_len);
/* Slots in use / total, and indexed (keyed) blocks. */
void kvt_engine_pool_stats(const kvt_engine_t *engine, uint32_t *used_p, uint32_t *total_p,
                           uint32_t *indexed_p);

/* --- sequences --- */

/* An empty sequence whose blocks chain from `root` (kvt_block_key_root of
 * the engine's fingerprint and the tenant's salt). */
kvt_status_t kvt_engine_seq_create(kvt_engine_t *engine, const kvt_block_key_t *root,
                                   kvt_seq_t **seq_p);
/* Releases the sequence's references; its full blocks stay cached. */
void kvt_engine_seq_destroy(kvt_engine_t *engine, kvt_seq_t *seq);
/* On an empty sequence: take the longest run of leading full blocks of
 * tokens[0..n) that the pool holds; *n_reused_p = tokens covered (a
 * multiple of B).  At most n - 1 tokens are reused, so that a prefill
 * always has at least one token to compute logits from. */
kvt_status_t kvt_engine_seq_reuse(kvt_engine_t *engine, kvt_seq_t *seq, const uint32_t *tokens,
                                  size_t n, size_t *n_reused_p);
/* Append n >= 1 tokens and compute their KV (in chunks of
 * opts.prefill_chunk).  logits: NULL, [vocab] for the last position, or
 * [n][vocab] with KVT_ENGINE_LOGITS_ALL.  KVT_ERR_TOO_LARGE past max_pos,
 * KVT_ERR_FULL if the pool has no free slot; on error the sequence keeps
 * the tokens it had before the call. */
kvt_status_t kvt_engine_prefill(kvt_engine_t *engine, kvt_seq_t *seq, const uint32_t *tokens,
                                size_t n, float *logits, unsigned flags);
/* One decode step for n_seqs different sequences (of any lengths):
 * append tokens[i] to seqs[i] and write its next-token logits to
 * logits[i*vocab ..].  Equal to prefilling each token alone. */
kvt_status_t kvt_engine_decode(kvt_engine_t *engine, kvt_seq_t *const *seqs,
                               const uint32_t *tokens, size_t n_seqs, float *logits);

size_t kvt_engine_seq_len(const kvt_seq_t *seq);
/* The sequence's tokens (n = seq_len). */
const uint32_t *kvt_engine_seq_tokens(const kvt_seq_t *seq);
size_t kvt_engine_seq_n_full_blocks(const kvt_seq_t *seq);
/* Full block i: its header (made by kvt_block_header_make) and payload in
 * the pool, valid while the sequence lives. */
kvt_status_t kvt_engine_seq_block(const kvt_engine_t *engine, const kvt_seq_t *seq, size_t i,
                                  kvt_block_header_t *hdr_p, const void **payload_p);

#endif
