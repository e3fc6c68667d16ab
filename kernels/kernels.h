/* The engine's CUDA kernels, callable from C, each with a CPU reference.
 *
 * Every kvt_k_<op> launches on a stream and takes device pointers; its
 * twin kvt_k_<op>_ref does the same arithmetic on host pointers with plain
 * loops (the semantics the kernel must match; tests compare the two on
 * random inputs: bf16 outputs within ~1e-2 relative, f32 within ~1e-5).
 * Launch functions check the launch (not the completion) and return
 * KVT_ERR_INVALID for bad sizes, KVT_ERR_IO for a CUDA error (logged).
 * Shapes follow engine/engineInt.h: one "row" is one token of a pass.
 *
 * bf16 values are stored as uint16_t (the upper half of an f32; conversion
 * from f32 rounds to nearest even, as engine/ops does).
 *
 * The paged KV pool (DESIGN.md invariant 2): slot s holds one block image,
 * [layer][K,V][token][kv_head][head_dim] in the KV dtype, at
 * base + s * slot_bytes.  A sequence's block table lists its slots in
 * position order: position p is token p % B of slot table[p / B]. */
#ifndef KVT_KERNELS_KERNELS_H
#define KVT_KERNELS_KERNELS_H

#include "common/status.h"
#include "kernels/gpu.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    void *base;          /* slot 0 (device memory for kernels, host for refs) */
    size_t slot_bytes;   /* one block image */
    uint32_t block_tokens;
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    bool f32;            /* KV dtype f32 (else bf16) */
} kvt_k_kv_t;

/* One sequence's rows in a pass: rows [row0, row0 + n) are its positions
 * [pos0, pos0 + n); it attends to positions [0, pos0 + n) causally through
 * tables[table_off ..]. */
typedef struct {
    uint32_t row0, n, pos0, table_off;
} kvt_k_group_t;

/* x[r][:] = f32(embed[tokens[r]][:]), embed bf16 [vocab][hidden]. */
kvt_status_t kvt_k_embed(const uint16_t *embed, const uint32_t *tokens, size_t rows,
                         size_t hidden, float *x, kvt_gpu_stream_t s);
void kvt_k_embed_ref(const uint16_t *embed, const uint32_t *tokens, size_t rows, size_t hidden,
                     float *x);

/* out[r] = bf16(x[r] / sqrt(mean(x[r]^2) + eps) * w), f32 math. */
kvt_status_t kvt_k_rmsnorm(const float *x, const float *w, size_t rows, size_t dim, float eps,
                           uint16_t *out, kvt_gpu_stream_t s);
void kvt_k_rmsnorm_ref(const float *x, const float *w, size_t rows, size_t dim, float eps,
                       uint16_t *out);

/* After the fused QKV projection qkv[rows][q_dim + 2*kv_dim] (f32): add the
 * biases (bias NULL: none), apply RoPE (HF rotate_half: pairs (i, i+hd/2);
 * angle = pos[r] * inv_freq[i], computed in double) to q and k, write
 * q_out[rows][q_dim] as bf16, and store k and v, rounded to the KV dtype,
 * into the pool at layer `layer`, slot slot[r], token tok[r] (= pos % B). */
kvt_status_t kvt_k_qkv_rope_store(const float *qkv, const float *bias, const uint32_t *pos,
                                  const float *inv_freq, uint32_t n_heads, const kvt_k_kv_t *kv,
                                  uint32_t layer, const uint32_t *slot, const uint32_t *tok,
                                  size_t rows, uint16_t *q_out, kvt_gpu_stream_t s);
void kvt_k_qkv_rope_store_ref(const float *qkv, const float *bias, const uint32_t *pos,
                              const float *inv_freq, uint32_t n_heads, const kvt_k_kv_t *kv,
                              uint32_t layer, const uint32_t *slot, const uint32_t *tok,
                              size_t rows, uint16_t *q_out);

/* Causal GQA attention of the pass's rows over the paged pool:
 * out[r][h][:] = softmax(scale * q[r][h] . K[0..p]) . V[0..p] with p the
 * row's position and K/V from kv head h / (n_heads / n_kv_heads); f32
 * softmax (online, flash-style), bf16 out [rows][n_heads * head_dim].
 * groups/tables are device arrays; max_n = the largest group's n and
 * max_ctx = the largest pos0 + n (launch sizing).  prefill: tensor-core
 * tiles, for groups of many rows; decode: for groups of one row (it must
 * also accept n > 1, more slowly). */
kvt_status_t kvt_k_attn_prefill(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q,
                                uint32_t n_heads, const kvt_k_group_t *groups,
                                uint32_t n_groups, const uint32_t *tables, uint32_t max_n,
                                uint32_t max_ctx, float scale, uint16_t *out,
                                kvt_gpu_stream_t s);
kvt_status_t kvt_k_attn_decode(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q,
                               uint32_t n_heads, const kvt_k_group_t *groups, uint32_t n_groups,
                               const uint32_t *tables, uint32_t max_n, uint32_t max_ctx,
                               float scale, uint16_t *out, kvt_gpu_stream_t s);
/* Decode attention for a CUDA graph: one captured launch serves every
 * context length.  The launch shape is fixed by (n_groups, max_n,
 * chunk_cap); the step's chunking, plan = {chunk, n_chunks} (device, two
 * words), is read when the graph runs, and the caller refreshes it before
 * each replay from kvt_k_attn_decode_plan for the step's max_ctx (with the
 * same kv, q, out, n_heads, n_groups, max_n), needing n_chunks <=
 * chunk_cap.  scratch: kvt_k_attn_decode_scratch(..., chunk_cap) bytes of
 * device memory (may be NULL when chunk_cap is 1).  Same arithmetic as
 * kvt_k_attn_decode given the same chunking, so bitwise equal to it. */
kvt_status_t kvt_k_attn_decode_plan(const kvt_k_kv_t *kv, const uint16_t *q, const uint16_t *out,
                                    uint32_t n_heads, uint32_t n_groups, uint32_t max_n,
                                    uint32_t max_ctx, uint32_t plan[2]);
size_t kvt_k_attn_decode_scratch(const kvt_k_kv_t *kv, uint32_t n_heads, uint32_t n_groups,
                                 uint32_t max_n, uint32_t chunk_cap);
kvt_status_t kvt_k_attn_decode_graph(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q,
                                     uint32_t n_heads, const kvt_k_group_t *groups,
                                     uint32_t n_groups, const uint32_t *tables, uint32_t max_n,
                                     const uint32_t *plan, uint32_t chunk_cap, void *scratch,
                                     float scale, uint16_t *out, kvt_gpu_stream_t s);
/* Reference for both (host arrays; double accumulation). */
void kvt_k_attn_ref(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q, uint32_t n_heads,
                    const kvt_k_group_t *groups, uint32_t n_groups, const uint32_t *tables,
                    float scale, uint16_t *out);

/* out[r][i] = bf16(silu(gu[r][i]) * gu[r][inter + i]) from the fused
 * gate|up projection gu[rows][2*inter] (f32). */
kvt_status_t kvt_k_swiglu(const float *gu, size_t rows, size_t inter, uint16_t *out,
                          kvt_gpu_stream_t s);
void kvt_k_swiglu_ref(const float *gu, size_t rows, size_t inter, uint16_t *out);

/* Gather rows: dst[i][:] = src[idx[i]][:] (f32, dim wide). */
kvt_status_t kvt_k_gather_rows(const float *src, const uint32_t *idx, size_t n, size_t dim,
                               float *dst, kvt_gpu_stream_t s);

/* f32 -> bf16 (round to nearest even), n elements. */
kvt_status_t kvt_k_to_bf16(const float *in, size_t n, uint16_t *out, kvt_gpu_stream_t s);

/* Sampling on the GPU, one row of logits[rows][vocab] per sequence, with
 * the semantics of engine/sample.c given the same uniform draw u[r] in
 * [0,1) per row: temperature 0 = argmax (lowest id on ties); else softmax
 * of logits / temperature restricted to the top_k (0 = all) highest, then
 * to the smallest prefix of those sorted by probability whose mass reaches
 * top_p, and the token where the cumulative mass passes u * total.
 * tokens[r] out (device). */
kvt_status_t kvt_k_sample(const float *logits, size_t rows, uint32_t vocab, float temperature,
                          uint32_t top_k, float top_p, const float *u, uint32_t *tokens,
                          kvt_gpu_stream_t s);
void kvt_k_sample_ref(const float *logits, size_t rows, uint32_t vocab, float temperature,
                      uint32_t top_k, float top_p, const float *u, uint32_t *tokens);

/* Checksums of block images in device memory (kernels/xxh3.cu): out[i] =
 * XXH3_64bits(bufs[i], len) (seed 0, default secret), bit for bit what
 * common/hash.h's kvt_xxh3_64 computes on the host, for every len from 0
 * to KVT_K_XXH3_MAX_LEN.  No _ref twin: the CPU reference is libxxhash
 * itself (kvt_xxh3_64).  bufs (n device pointers) and out (n u64) are
 * device arrays, read and written when the stream runs; each bufs[i]
 * should be 8-byte aligned (a misaligned image is hashed correctly but
 * slowly), and only bytes [bufs[i], bufs[i] + len) are read (with len 0,
 * not even bufs).  Needs no scratch, allocates nothing and never
 * synchronizes (so it can be captured in a graph): one launch, one CTA
 * per image, so a batch of many large images runs near device memory
 * bandwidth (64 x 2 MiB: ~2.2 TB/s on an H100) while one image alone is
 * bound by the algorithm's sequential chain (~45 GB/s).  KVT_ERR_INVALID
 * for NULL arrays or n or len over the bounds (n == 0 is a no-op, with
 * any arrays), KVT_ERR_IO if the launch fails. */
#define KVT_K_XXH3_MAX_N 65535u
#define KVT_K_XXH3_MAX_LEN ((size_t)1 << 30)
kvt_status_t kvt_k_xxh3_64(const uint8_t *const *bufs, size_t n, size_t len, uint64_t *out,
                           kvt_gpu_stream_t s);

#endif
