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
 * Threads: one engine is driven by one caller thread at a time -- every
 * call, const ones included (on the GPU, kvt_engine_seq_block(s) and
 * kvt_engine_seq_tail write the engine's shared pinned staging); it runs
 * its own worker threads inside each call (opts.n_threads on the CPU; the
 * GPU engine uses one per core for host-side block work).
 *
 * Devices (opts.device): the same engine runs on the CPU (the reference
 * path) or on a CUDA GPU.  On the GPU the pool's slots live in device
 * memory (the T0 hot cache; the bookkeeping -- index, refcounts, LRU,
 * sequences -- stays on the host) and the pass runs the kernels of
 * kernels/ with bf16 weights, so logits agree with the CPU engine within
 * bf16 rounding, not bitwise.  Blocks have the same identity and byte
 * layout on both, so a block computed on one imports into the other.
 * Block images cross the bus through the engine's pinned staging
 * (kvt_engine_stage_*): see seq_block, seq_blocks and pool_put_batch;
 * partial tails (seq_tail, seq_adopt) pass through its buffer 0. */
#ifndef KVT_ENGINE_ENGINE_H
#define KVT_ENGINE_ENGINE_H

#include "common/status.h"
#include "engine/model.h"
#include "kvstore/block.h"
#include "kvstore/events.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_engine kvt_engine_t;
typedef struct kvt_seq kvt_seq_t;

/* Where an engine runs: KVT_DEVICE_CPU (0, so a zeroed opts means the CPU)
 * or CUDA device N, encoded as N + 1 (KVT_DEVICE_CUDA(N)). */
typedef int32_t kvt_device_t;
#define KVT_DEVICE_CPU 0
#define KVT_DEVICE_CUDA(n) ((kvt_device_t)(n) + 1)
#define KVT_DEVICE_IS_CUDA(d) ((d) > 0)
#define KVT_DEVICE_CUDA_INDEX(d) ((int)(d) - 1)

/* "cpu" or "cuda:N" (also "cuda" = cuda:0).  KVT_ERR_INVALID for other
 * text (logged); KVT_ERR_NOT_FOUND (logged) for cuda:N when this build has
 * no CUDA or this machine has no device N. */
kvt_status_t kvt_device_parse(const char *text, kvt_device_t *device_p);
/* "cpu" / "cuda:N" into text. */
void kvt_device_name(kvt_device_t device, char *text, size_t cap);

typedef struct {
    uint32_t block_tokens;    /* B; 0 = 16 */
    kvt_dtype_t kv_dtype;     /* KVT_DTYPE_BF16 or KVT_DTYPE_F32; 0 = bf16 */
    uint32_t n_blocks;        /* pool slots; 0 = enough for 8 x max_pos tokens, capped at 1 GiB */
    uint32_t n_threads;       /* 0 = the machine's online cores */
    uint32_t prefill_chunk;   /* tokens per prefill pass; 0 = 256 (CPU), 2048 (GPU) */
    kvt_device_t device;      /* KVT_DEVICE_CPU (0) or KVT_DEVICE_CUDA(n) */
} kvt_engine_opts_t;

enum {
    KVT_ENGINE_LOGITS_ALL = 1u << 0, /* prefill: logits of every new position */
};

/* The engine borrows `model` (it must outlive the engine).  On a GPU the
 * weights are uploaded here as bf16 (norms and biases f32) and the pool is
 * allocated in device memory: n_blocks 0 then means enough for 8 x max_pos
 * tokens, capped at the larger of 1 GiB and half the device memory left
 * free after the weights and scratch.  KVT_ERR_NOT_FOUND: no such device
 * (or a build without CUDA); KVT_ERR_NOMEM: device memory. */
kvt_status_t kvt_engine_create(const kvt_model_t *model, const kvt_engine_opts_t *opts,
                               kvt_engine_t **engine_p);
/* Every sequence must have been destroyed first. */
void kvt_engine_destroy(kvt_engine_t *engine);
/* Layout and fingerprint of the blocks this engine computes. */
const kvt_block_identity_t *kvt_engine_identity(const kvt_engine_t *engine);
const kvt_model_t *kvt_engine_model(const kvt_engine_t *engine);
kvt_device_t kvt_engine_device(const kvt_engine_t *engine);

/* --- the pool (T0) --- */

/* How many leading keys of keys[0..n) the pool holds. */
size_t kvt_engine_pool_match(kvt_engine_t *engine, const kvt_block_key_t *keys, size_t n);
/* Copy a block image into the pool as an unreferenced cached block.  The
 * header must match the engine's identity and its key must name its
 * tokens; the payload is verified (invariant 3).  Its parent must be
 * resident unless it is block 0 (prefix closure).  KVT_ERR_EXISTS if the
 * key is already there (not an error for callers that import chains),
 * KVT_ERR_NO_PARENT, KVT_ERR_MISMATCH, KVT_ERR_CORRUPT, KVT_ERR_FULL
 * (every slot referenced).  On the GPU the payload is verified on the host,
 * then copied into the device slot (KVT_ERR_IO if that copy fails: the
 * block is then not in the pool). */
kvt_status_t kvt_engine_pool_put(kvt_engine_t *engine, const kvt_block_header_t *hdr,
                                 const void *payload, size_t payload_len);
/* kvt_engine_pool_put of n blocks in order (a chain may come in one call:
 * each block's parent may be an earlier one of the batch); st[i] gets each
 * block's status as pool_put would return it.  On the GPU the accepted
 * images move as a few large copies through the pinned staging: payloads[i]
 * that is kvt_engine_stage_buf(engine, i) (i < stage_blocks) moves without
 * a host copy; any other host pointer is copied into the staging first.
 * Returns KVT_OK unless a copy to the device failed (KVT_ERR_IO: the blocks
 * of that copy are not in the pool and their st[] say so). */
kvt_status_t kvt_engine_pool_put_batch(kvt_engine_t *engine, const kvt_block_header_t *hdrs,
                                       const void *const *payloads, size_t n, kvt_status_t *st);
/* Report every key entering (KVT_EVENT_STORED) or leaving (EVICTED, or
 * DROPPED when a batched put's copy failed) the pool's content index, with
 * tier KVT_TIER_GPU (T0, on the CPU too), so a node can publish its pool to
 * the coordinator (invariant 7).  fn runs inside the engine call that
 * caused the event, on the caller's thread; it must be quick and must not
 * call the engine.  NULL turns reporting off. */
void kvt_engine_set_event_fn(kvt_engine_t *engine, kvt_block_event_fn fn, void *arg);
/* Visit every indexed block of the pool (key, parent, index) -- a snapshot
 * for the same purpose.  fn must not call the engine. */
void kvt_engine_pool_foreach(const kvt_engine_t *engine, kvt_block_event_fn fn, void *arg);
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
 * the tokens it had before the call.  GPU only: KVT_ERR_IO when a pass
 * fails on the device (logged); the sequence then keeps the tokens of the
 * chunks that completed, and the engine answers every later prefill and
 * decode with KVT_ERR_IO (a device fault poisons the CUDA context: destroy
 * the engine). */
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
/* Full block i: its header (made by kvt_block_header_make) and payload.
 * CPU: the payload is the pool slot, valid while the sequence lives.  GPU:
 * the slot is copied into the engine's staging buffer 0 and the payload
 * points there, valid until the next call that moves blocks (seq_block,
 * seq_blocks, seq_tail, seq_adopt, pool_put, pool_put_batch) or destroy.
 * KVT_ERR_NOT_FOUND past the full blocks, KVT_ERR_IO (GPU) if the copy
 * failed. */
kvt_status_t kvt_engine_seq_block(const kvt_engine_t *engine, const kvt_seq_t *seq, size_t i,
                                  kvt_block_header_t *hdr_p, const void **payload_p);
/* Full blocks [from, from + n): headers into hdrs[0..n), payload pointers
 * into payloads[0..n), with seq_block's lifetimes (GPU: staging buffers
 * 0..n-1, filled by one batched device-to-host copy).  n at most
 * kvt_engine_batch_blocks (KVT_ERR_TOO_LARGE beyond); KVT_ERR_NOT_FOUND
 * if a block is not full. */
kvt_status_t kvt_engine_seq_blocks(const kvt_engine_t *engine, const kvt_seq_t *seq,
                                   size_t from, size_t n, kvt_block_header_t *hdrs,
                                   const void **payloads);
/* The most blocks one seq_blocks call moves: the staging's size on the
 * GPU, SIZE_MAX on the CPU. */
size_t kvt_engine_batch_blocks(const kvt_engine_t *engine);

/* --- partial tails (kvstore/tail.h) --- */

/* Copy the image of the sequence's partial tail -- its last t = len % B
 * tokens, in kvstore/tail.h's compact layout [layer][K,V][t][kv_head]
 * [head_dim], kvt_tail_bytes(layout, t) bytes -- into dst; *len_p = those
 * bytes.  KVT_ERR_NOT_FOUND when t == 0 (no tail), KVT_ERR_TOO_LARGE when
 * cap is smaller than the image, KVT_ERR_INVALID for a NULL dst.  GPU: the
 * image passes through staging buffer 0 (ending the lifetime of
 * seq_block(s) payloads there); KVT_ERR_IO (logged) if the copy failed,
 * KVT_ERR_NOMEM for the copy list.  *len_p is set on success only. */
kvt_status_t kvt_engine_seq_tail(const kvt_engine_t *engine, const kvt_seq_t *seq, void *dst,
                                 size_t cap, size_t *len_p);
/* On an EMPTY sequence: take tokens[0..n) as if they had been prefilled,
 * with no forward pass -- the decode node's way in (DESIGN.md section 4,
 * step 4).  Every one of the n / B full blocks must be in the pool under
 * its key (chained from the sequence's root as seq_reuse computes them);
 * each gets a reference.  When t = n % B > 0, a private slot is allocated
 * for the tail and `tail` (tail_len = kvt_tail_bytes(layout, t) bytes, the
 * layout of seq_tail) is written into its first t token rows; when t == 0,
 * tail and tail_len are ignored (tail may be NULL).  A following
 * kvt_engine_decode (or prefill) continues the sequence exactly as it
 * would the prefilled one: the logits are bitwise the same on the same
 * device and KV dtype.
 *
 * The tail bytes are NOT verified here: the caller, which got them from
 * the network, checks their checksum and tail key (kvstore/tail.h) first
 * (invariant 3).
 *
 * KVT_ERR_INVALID: the sequence is not empty, n == 0, tokens NULL, a token
 * outside the vocabulary, tail NULL or tail_len wrong when t > 0;
 * KVT_ERR_TOO_LARGE: n > max_pos; KVT_ERR_NOT_FOUND: the pool lacks one of
 * the full blocks; KVT_ERR_FULL: no slot for the tail; KVT_ERR_NOMEM.
 * GPU: the tail passes through staging buffer 0 (as seq_tail); KVT_ERR_IO
 * (logged) if its copy failed, or the engine's earlier pass failure.  On
 * any error the sequence stays empty and holds nothing: no reference and
 * no slot stay taken (a cached block may have been evicted for the tail
 * slot before a failed GPU copy). */
kvt_status_t kvt_engine_seq_adopt(kvt_engine_t *engine, kvt_seq_t *seq, const uint32_t *tokens,
                                  size_t n, const void *tail, size_t tail_len);

/* --- the staging of block moves (GPU) --- */

/* Block images the staging holds: 0 on the CPU (no staging), else at
 * least 64 (256 MiB of them when that is more, at most 1024). */
size_t kvt_engine_stage_blocks(const kvt_engine_t *engine);
/* Staging buffer i < stage_blocks: one block image of pinned host memory,
 * for callers that read blocks straight into it before pool_put_batch.
 * NULL on the CPU or past the end. */
void *kvt_engine_stage_buf(kvt_engine_t *engine, size_t i);

#endif
