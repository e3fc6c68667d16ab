/* The GPU engine's state and calls, shared by device.c (the dispatch, only
 * with KVT_HAVE_CUDA), forward_cuda.c (create, the pass, block moves),
 * gpu_weights.c (weight upload), gpu_tail.c (partial tails) and
 * gpu_refs.c (bench references).  The files that include this header are
 * compiled only when CUDA is built in.
 *
 * Device memory of one GPU engine:
 *   weights  one allocation: embed and lm_head (bf16, shared when tied),
 *            per layer attn_norm/mlp_norm (f32), w_qkv = [wq; wk; wv]
 *            ([q_dim + 2 kv_dim][hidden] bf16) and its bias (f32, Qwen2),
 *            wo, w_gu = [w_gate; w_up] ([2 inter][hidden]), w_down (bf16),
 *            final_norm and inv_freq (f32, as the CPU engine computes it);
 *   scratch  one allocation, rows_cap rows: x (f32 residual), hn (bf16
 *            normed input), qkv (f32), q and att (bf16), gu (f32), act
 *            (bf16), logits (f32, logit_rows rows) and the pass's upload;
 *   pool     the slots (kv_pool's region; the bookkeeping stays on the
 *            host in e->pool).
 * Pinned host memory: the pass's upload staging, the logits staging and
 * the block staging (stage_blocks images). */
#ifndef KVT_ENGINE_GPU_ENGINE_INT_H
#define KVT_ENGINE_GPU_ENGINE_INT_H

#include "engine/device.h"
#include "engine/engineInt.h"
#include "kernels/gpu.h"
#include "kernels/kernels.h"

/* Rows of one decode pass on the GPU (bigger batches run in passes of
 * this many). */
#define KVT_GPU_DECODE_ROWS 256
/* Logit rows per lm_head product (LOGITS_ALL prefill runs several). */
#define KVT_GPU_LOGIT_ROWS 128
/* Block-table entries one pass uploads at most. */
#define KVT_GPU_MAX_TABLE (16u << 20)
/* Pinned staging for block moves: 256 MiB, but at least 64 blocks (a
 * move in parts of one block per host thread) and at most 1024. */
#define KVT_GPU_STAGE_BYTES (256ull << 20)
#define KVT_GPU_STAGE_MIN_BLOCKS 64
#define KVT_GPU_STAGE_MAX_BLOCKS 1024
/* Default pool cap on the GPU (engine.h: halved until it fits). */
#define KVT_GPU_POOL_DEFAULT_BYTES (24ull << 30)
#define KVT_GPU_POOL_MIN_BLOCKS 64
/* Parts a block move is cut into, so host work overlaps the copies: at
 * most this many, of at least these many bytes out (seq_blocks) and in
 * (pool_put_batch). */
#define KVT_GPU_MOVE_PARTS 32
#define KVT_GPU_MOVE_OUT_BYTES ((size_t)8 << 20)
#define KVT_GPU_MOVE_IN_BYTES ((size_t)32 << 20)

/* Decode-step graphs kept (forward_cuda.c: keyed by rows and attention
 * chunk rows, least recently used replaced). */
#define KVT_GPU_GRAPHS 8

typedef struct {
    kvt_gpu_graph_t exec; /* NULL: free */
    uint32_t rows, chunk_cap;
    uint64_t used;
} kvt_gpu_graph_slot_t;

typedef struct {
    const float *attn_norm, *mlp_norm; /* [hidden] */
    const uint16_t *w_qkv;             /* [q_dim + 2 kv_dim][hidden] */
    const float *b_qkv;                /* [q_dim + 2 kv_dim] or NULL */
    const uint16_t *wo;                /* [hidden][q_dim] */
    const uint16_t *w_gu;              /* [2 inter][hidden] */
    const uint16_t *w_down;            /* [hidden][inter] */
} kvt_gpu_layer_t;

struct kvt_gpu_engine {
    int device;
    kvt_gpu_stream_t stream; /* passes */
    kvt_gpu_stream_t copy;   /* block moves */
    kvt_gpu_blas_t blas;     /* on stream */
    kvt_threads_t *threads;  /* host work of block moves and the weight upload */
    kvt_k_kv_t kv;           /* the pool as the kernels see it */
    /* weights */
    uint8_t *wmem;
    size_t wbytes;
    const uint16_t *embed, *lm_head;
    const float *final_norm, *inv_freq;
    kvt_gpu_layer_t *layers; /* host array of device pointers */
    /* scratch */
    uint8_t *smem;
    float *x, *qkv, *gu, *logits;
    uint16_t *hn, *q, *att, *act;
    uint32_t *d_up;   /* the pass's upload (device) */
    uint32_t *h_up;   /* its pinned staging */
    size_t up_cap;    /* u32 entries of both */
    size_t max_table; /* block-table entries of one pass */
    float *h_logits;  /* pinned [logit_rows][vocab] */
    size_t logit_rows;
    /* block moves */
    uint8_t *stage;   /* pinned [stage_blocks][pool stride] */
    size_t stage_blocks;
    void **cp_dst;    /* [stage_blocks] copy lists */
    const void **cp_src;
    size_t *cp_bytes;
    uint32_t *put_slot, *put_parent; /* [stage_blocks] blocks begun in a batch */
    size_t *put_idx;
    kvt_status_t *mv_st;  /* [stage_blocks] per-block results of the parallel step */
    /* xxh3 of images on the device (kvt_k_xxh3_64), [stage_blocks] each */
    const uint8_t **xx_bufs_h; /* pinned: device addresses of the images */
    uint64_t *xx_sums_h;       /* pinned: their checksums, back from the device */
    const uint8_t **xx_bufs_d; /* device copies */
    uint64_t *xx_sums_d;
    kvt_gpu_event_t ev[KVT_GPU_MOVE_PARTS + 1]; /* start + one per part / ring region */
    /* decode graphs (KVT_GPU_GRAPHS=0 in the environment turns them off) */
    bool graphs_on;
    kvt_gpu_graph_slot_t graphs[KVT_GPU_GRAPHS];
    uint64_t graph_tick, graph_captures, graph_launches;
    size_t graph_last_rows;   /* rows of the previous pass if it was a decode step */
    void *dec_scratch;        /* the graphs' decode attention partials */
    size_t dec_scratch_bytes;
    /* block move phases, ns since create (logged at destroy) */
    uint64_t mv_out_ns, mv_out_wait_ns, mv_out_host_ns, mv_out_bytes;
    uint64_t mv_in_ns, mv_in_wait_ns, mv_in_host_ns, mv_in_bytes;
};

/* forward_cuda.c (gpu_moves.c: put_batch, seq_blocks, stage_*) */
kvt_status_t kvt_gpu_engine_create(kvt_engine_t *e, uint32_t n_blocks);
void kvt_gpu_engine_destroy(kvt_engine_t *e);
kvt_status_t kvt_gpu_engine_pass(kvt_engine_t *e, const kvt_fwd_group_t *groups,
                                 size_t n_groups, size_t n_rows, float *logits,
                                 size_t logits_row0, size_t n_logits);
kvt_status_t kvt_gpu_engine_put_batch(kvt_engine_t *e, const kvt_block_header_t *hdrs,
                                      const void *const *payloads, size_t n, kvt_status_t *st);
kvt_status_t kvt_gpu_engine_seq_blocks(const kvt_engine_t *e, const kvt_seq_t *seq,
                                       size_t from, size_t n, kvt_block_header_t *hdrs,
                                       const void **payloads);
size_t kvt_gpu_engine_stage_blocks(const kvt_engine_t *e);
/* gpu_moves.c: the staging and the move lists (create; KVT_ERR_NOMEM) and
 * their release (destroy; safe on a partly made engine). */
kvt_status_t kvt_gpu_moves_alloc(kvt_engine_t *e, kvt_gpu_engine_t *g);
void kvt_gpu_moves_free(kvt_gpu_engine_t *g);
void *kvt_gpu_engine_stage_buf(const kvt_engine_t *e, size_t i);

/* gpu_tail.c: engineInt.h's kvt_dev_tail_copy on the GPU. */
kvt_status_t kvt_gpu_engine_tail_copy(const kvt_engine_t *e, uint32_t slot, uint32_t t,
                                      void *host, bool to_host);

/* gpu_weights.c: upload the model (and e->inv_freq) into g->wmem and set
 * the weight pointers; KVT_ERR_NOMEM / KVT_ERR_IO.  free releases them. */
kvt_status_t kvt_gpu_weights_upload(kvt_engine_t *e, kvt_gpu_engine_t *g);
void kvt_gpu_weights_free(kvt_gpu_engine_t *g);

/* gpu_refs.c: engine/device.h's references on CUDA device `dev`. */
kvt_status_t kvt_gpu_ref_gemm(int dev, size_t m, size_t k, size_t n, double *tflops_p);
kvt_status_t kvt_gpu_ref_copy(int dev, size_t bytes, size_t piece, kvt_device_copy_ref_t *ref_p);

#endif
