/* Engine internals shared by engine.c (sequences, the pool's public face)
 * and forward.c (the transformer pass).
 *
 * A sequence's block table `slots[b]` covers positions [b*B, (b+1)*B): for
 * b < n_tokens / B a full, INDEXED block with key keys[b]; the last entry,
 * when n_tokens is not a multiple of B, is its PRIVATE tail.  Before a
 * forward pass the engine reserves the slots that the new positions fall
 * in, so the pass itself never allocates and never fails. */
#ifndef KVT_ENGINE_ENGINE_INT_H
#define KVT_ENGINE_ENGINE_INT_H

#include "engine/engine.h"
#include "engine/kv_poolInt.h"
#include "engine/threads.h"

/* Rows of one decode pass on the CPU (larger batches run in several
 * passes; the GPU engine sets its own, e->decode_rows). */
#define KVT_ENGINE_DECODE_ROWS 64
#define KVT_ENGINE_MAX_CHUNK 4096
/* Query rows (positions x heads of one kv head) per attention work item. */
#define KVT_ENGINE_ATT_ROWS 32
/* Keys per online-softmax step (rounded up to a multiple of B). */
#define KVT_ENGINE_ATT_SPAN 64

struct kvt_seq {
    kvt_block_key_t root;
    uint32_t B;            /* the engine's block_tokens */
    uint32_t *tokens;
    size_t n_tokens;
    size_t cap_tokens;
    uint32_t *slots;       /* [ceil(n_tokens / B)] */
    kvt_block_key_t *keys; /* [n_tokens / B] */
    size_t cap_blocks;
};

/* One run of consecutive positions of one sequence in a forward pass. */
typedef struct {
    kvt_seq_t *seq;
    size_t pos0; /* position of the group's first row */
    size_t row0; /* its first row in the pass */
    size_t n;    /* rows */
} kvt_fwd_group_t;

/* An attention work item: n_q positions of one group, one kv head. */
typedef struct {
    uint32_t group;
    uint32_t q0; /* first position, relative to the group */
    uint32_t n_q;
    uint32_t kv_head;
} kvt_att_item_t;

/* The GPU side of an engine (engine/gpu_engineInt.h; NULL on the CPU). */
typedef struct kvt_gpu_engine kvt_gpu_engine_t;

struct kvt_engine {
    const kvt_model_t *model;
    kvt_device_t device;
    kvt_gpu_engine_t *gpu; /* set when device is a GPU */
    kvt_status_t failed;   /* GPU: a pass failed on the device; every later pass fails */
    size_t decode_rows;    /* rows of one decode pass (rows_cap on the CPU) */
    kvt_model_config_t cfg;
    uint32_t B;
    kvt_dtype_t kv_dtype;
    size_t kv_size;   /* bytes per KV element */
    size_t kv_row;    /* n_kv_heads * head_dim: elements per token per K or V */
    size_t q_dim;     /* n_heads * head_dim */
    uint32_t n_rep;   /* query heads per kv head */
    uint32_t att_q;   /* positions per attention item */
    size_t att_rows;  /* att_q * n_rep: query rows per item */
    size_t att_span;  /* keys per online-softmax step: a multiple of B, >= 64 */
    size_t chunk;     /* prefill rows per pass */
    size_t rows_cap;  /* rows the scratch holds */
    kvt_block_identity_t identity;
    kvt_kv_pool_t pool;
    kvt_threads_t *threads;
    uint32_t n_live_seqs;
    float *inv_freq;  /* [head_dim / 2] */
    /* per-row scratch, rows_cap rows, carved out of `scratch` */
    float *scratch;
    kvt_fwd_group_t *groups; /* decode: one per row */
    float *x, *h, *q, *k, *v, *att, *o, *gate, *up, *cos_t, *sin_t;
    uint32_t *row_tok;
    uint32_t *row_pos;
    kvt_seq_t **row_seq;
    kvt_att_item_t *items;
    /* per-thread attention scratch */
    float *att_scratch;
    size_t att_scratch_floats;
    const void **att_ptrs;  /* [n_threads][kvt_fwd_att_scratch_ptrs] */
};

/* --- dispatch (device.c: the one engine file that knows whether CUDA is
 * built in; the CPU versions are exactly the code paths of the CPU engine) --- */

/* GPU engines only: set up the pool (bookkeeping on the host, slots in
 * device memory), the staging, the weights and the pass's scratch.
 * n_blocks 0 = the GPU default (engine.h).  Undone by kvt_dev_destroy. */
kvt_status_t kvt_dev_create(kvt_engine_t *e, uint32_t n_blocks);
void kvt_dev_destroy(kvt_engine_t *e);
/* kvt_fwd_pass on the engine's device; only the GPU can fail (KVT_ERR_IO). */
kvt_status_t kvt_dev_pass(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups,
                          size_t n_rows, float *logits, size_t logits_row0, size_t n_logits);
/* engine.h's pool_put_batch / seq_blocks / stage_* on the engine's device. */
kvt_status_t kvt_dev_pool_put_batch(kvt_engine_t *e, const kvt_block_header_t *hdrs,
                                    const void *const *payloads, size_t n, kvt_status_t *st);
kvt_status_t kvt_dev_seq_blocks(const kvt_engine_t *e, const kvt_seq_t *seq, size_t from,
                                size_t n, kvt_block_header_t *hdrs, const void **payloads);
size_t kvt_dev_stage_blocks(const kvt_engine_t *e);
void *kvt_dev_stage_buf(const kvt_engine_t *e, size_t i);
/* The first t rows of each (layer, K/V) section of pool slot `slot`
 * to (to_host) or from the compact tail image at host (kvstore/tail.h:
 * [layer][K,V][t][kv_head][head_dim], 2 * n_layers pieces of t * kv_row
 * elements).  host is only read when !to_host.  Rows t..B-1 of the slot
 * are never touched.  GPU: one batched copy through staging buffer 0 on
 * the copy stream, waited for; KVT_ERR_IO (logged) if it failed,
 * KVT_ERR_NOMEM for the copy list.  The CPU cannot fail. */
kvt_status_t kvt_dev_tail_copy(const kvt_engine_t *e, uint32_t slot, uint32_t t, void *host,
                               bool to_host);

/* Run the model over the pass's rows (tokens row_tok, positions from the
 * groups), writing each row's K and V into its sequence's reserved slots.
 * Logits of rows [logits_row0, logits_row0 + n_logits) go to logits. */
void kvt_fwd_pass(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups,
                  size_t n_rows, float *logits, size_t logits_row0, size_t n_logits);

/* Per-thread attention scratch: floats and pointers, for engine_create. */
size_t kvt_fwd_att_scratch_floats(const kvt_engine_t *e);
size_t kvt_fwd_att_scratch_ptrs(const kvt_engine_t *e);

#endif
