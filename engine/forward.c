/* The transformer pass over a set of rows (Hugging Face Llama / Qwen2
 * semantics): embeddings, per layer RMSNorm -> q/k/v (+bias) -> RoPE ->
 * K/V into the pool -> causal GQA attention through the block table ->
 * o-projection + residual -> RMSNorm -> SwiGLU MLP + residual; then the
 * final norm and the LM head for the rows whose logits are wanted.
 *
 * One pass serves one prefill chunk (one group of consecutive positions)
 * or one decode step (one group per sequence).  Rows are independent
 * except through the pool: a row's K and V are written to its slot in the
 * KV dtype before attention runs, and attention reads every key -- cached
 * or computed in this very pass -- back from the pool.  So with bf16 KV the
 * rounded values are used everywhere, and a position sees the same bytes
 * however the work was split.
 *
 * Attention for one query row walks the row's blocks in order, block 0
 * first, keys of a block in order, with an online softmax (running max m,
 * sum l, accumulator acc; rescaled once per block).  The walk depends only
 * on the row's position, so decode, chunked and resumed prefill compute
 * each row with the same operations.  A work item is n_q positions x the
 * query heads of one kv head: they share each block's K and V (converted
 * to f32 once per item and block when the KV dtype is bf16). */
#include "engine/engineInt.h"

#include "engine/ops.h"

#include <math.h>
#include <string.h>

typedef struct {
    kvt_engine_t *e;
    const kvt_fwd_group_t *groups;
    size_t n_groups;
    size_t n_rows;
    uint32_t layer;
    const float *norm; /* add_norm: the norm weight, or NULL for add only */
    bool add;          /* add_norm: x += o first */
} pass_t;

/* Element offset of (layer, K|V, token) inside a block image. */
static inline size_t kv_off(const kvt_engine_t *e, uint32_t layer, int kv, size_t t)
{
    return (((size_t)layer * 2 + (size_t)kv) * e->B + t) * e->kv_row;
}

/* --- row-wise steps --- */

static void rows_embed(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hidden = e->cfg.hidden, half = e->cfg.head_dim / 2;
    for (size_t r = b; r < end; r++) {
        memcpy(e->x + r * hidden, e->model->embed + (size_t)e->row_tok[r] * hidden,
               hidden * sizeof(float));
        kvt_ops_rope_cos_sin(e->inv_freq, half, e->row_pos[r], e->cos_t + r * half,
                             e->sin_t + r * half);
    }
}

static void rows_add_norm(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hidden = e->cfg.hidden;
    for (size_t r = b; r < end; r++) {
        float *x = e->x + r * hidden;
        if (p->add) {
            const float *o = e->o + r * hidden;
            for (size_t i = 0; i < hidden; i++)
                x[i] += o[i];
        }
        if (p->norm)
            kvt_ops_rmsnorm(e->h + r * hidden, x, p->norm, hidden, e->cfg.rms_eps);
    }
}

/* RoPE on q and k, then K and V into the row's slot in the KV dtype. */
static void rows_rope_store(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hd = e->cfg.head_dim, half = hd / 2;
    for (size_t r = b; r < end; r++) {
        const float *c = e->cos_t + r * half, *s = e->sin_t + r * half;
        float *k = e->k + r * e->kv_row, *v = e->v + r * e->kv_row;
        kvt_ops_rope(e->q + r * e->q_dim, e->cfg.n_heads, hd, c, s);
        kvt_ops_rope(k, e->cfg.n_kv_heads, hd, c, s);
        uint32_t pos = e->row_pos[r];
        uint8_t *blk = kvt_kv_pool_data(&e->pool, e->row_seq[r]->slots[pos / e->B]);
        size_t t = pos % e->B;
        size_t ko = kv_off(e, p->layer, 0, t), vo = kv_off(e, p->layer, 1, t);
        if (e->kv_dtype == KVT_DTYPE_F32) {
            memcpy((float *)blk + ko, k, e->kv_row * sizeof(float));
            memcpy((float *)blk + vo, v, e->kv_row * sizeof(float));
        } else {
            kvt_ops_f32_to_bf16_n((uint16_t *)blk + ko, k, e->kv_row);
            kvt_ops_f32_to_bf16_n((uint16_t *)blk + vo, v, e->kv_row);
        }
    }
}

static void rows_silu_mul(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t inter = e->cfg.intermediate;
    for (size_t r = b; r < end; r++)
        kvt_ops_silu_mul(e->gate + r * inter, e->up + r * inter, inter);
}

/* --- attention --- */

size_t kvt_fwd_att_scratch_floats(const kvt_engine_t *e)
{
    size_t hd = e->cfg.head_dim, rows = e->att_rows;
    /* kbuf, vbuf [B][hd]; scores [rows][B]; m, l [rows]; acc [rows][hd] */
    return 2 * (size_t)e->B * hd + rows * e->B + 2 * rows + rows * hd;
}

typedef struct {
    float *kbuf, *vbuf, *scores, *m, *l, *acc;
    const float **qr;
} att_scratch_t;

/* Fold one block's keys [0, n) into a row's running softmax state. */
static void online_update(float *m, float *l, float *acc, float *s, size_t n, const float *v,
                          size_t ldv, size_t hd, float scale)
{
    float mx = -INFINITY;
    for (size_t j = 0; j < n; j++) {
        s[j] *= scale;
        mx = s[j] > mx ? s[j] : mx;
    }
    float m_new = *m > mx ? *m : mx;
    float c = expf(*m - m_new); /* 0 on the first block (m = -inf) */
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - m_new);
        sum += s[j];
    }
    *l = *l * c + sum;
    *m = m_new;
    kvt_ops_attn_pv(acc, c, s, v, ldv, n, hd);
}

/* K and V of kv head g, tokens [0, n) of a block, as f32 rows. */
static void block_kv(const kvt_engine_t *e, uint32_t slot, uint32_t layer, uint32_t g, size_t n,
                     att_scratch_t *sc, const float **k_p, const float **v_p, size_t *ld_p)
{
    size_t hd = e->cfg.head_dim;
    const uint8_t *blk = kvt_kv_pool_data(&e->pool, slot);
    size_t ko = kv_off(e, layer, 0, 0) + g * hd, vo = kv_off(e, layer, 1, 0) + g * hd;
    if (e->kv_dtype == KVT_DTYPE_F32) {
        *k_p = (const float *)blk + ko;
        *v_p = (const float *)blk + vo;
        *ld_p = e->kv_row;
        return;
    }
    const uint16_t *k16 = (const uint16_t *)blk + ko, *v16 = (const uint16_t *)blk + vo;
    for (size_t t = 0; t < n; t++) {
        kvt_ops_bf16_to_f32_n(sc->kbuf + t * hd, k16 + t * e->kv_row, hd);
        kvt_ops_bf16_to_f32_n(sc->vbuf + t * hd, v16 + t * e->kv_row, hd);
    }
    *k_p = sc->kbuf;
    *v_p = sc->vbuf;
    *ld_p = hd;
}

static void att_item(const pass_t *p, const kvt_att_item_t *it, att_scratch_t *sc)
{
    const kvt_engine_t *e = p->e;
    const kvt_fwd_group_t *g = &p->groups[it->group];
    size_t hd = e->cfg.head_dim, B = e->B, R = (size_t)it->n_q * e->n_rep;
    float scale = 1.0f / sqrtf((float)hd);
    const float **qr = sc->qr;
    for (size_t ri = 0; ri < R; ri++) {
        size_t row = g->row0 + it->q0 + ri / e->n_rep;
        size_t head = (size_t)it->kv_head * e->n_rep + ri % e->n_rep;
        qr[ri] = e->q + row * e->q_dim + head * hd;
        sc->m[ri] = -INFINITY;
        sc->l[ri] = 0.0f;
    }
    memset(sc->acc, 0, R * hd * sizeof(float));
    size_t last = g->pos0 + it->q0 + it->n_q - 1;
    for (size_t b = 0; b * B <= last; b++) {
        size_t nb = last + 1 - b * B < B ? last + 1 - b * B : B;
        const float *K, *V;
        size_t ld;
        block_kv(e, g->seq->slots[b], p->layer, it->kv_head, nb, sc, &K, &V, &ld);
        for (size_t ri = 0; ri < R; ri += KVT_OPS_TILE)
            for (size_t j = 0; j < nb; j += KVT_OPS_TILE)
                kvt_ops_dot_tile(qr + ri, (uint32_t)(R - ri < KVT_OPS_TILE ? R - ri : KVT_OPS_TILE),
                                 K + j * ld, ld,
                                 (uint32_t)(nb - j < KVT_OPS_TILE ? nb - j : KVT_OPS_TILE), hd,
                                 sc->scores + ri * B + j, B);
        for (size_t ri = 0; ri < R; ri++) {
            size_t pos = g->pos0 + it->q0 + ri / e->n_rep;
            if (pos < b * B)
                continue;
            size_t n_valid = pos - b * B + 1 < nb ? pos - b * B + 1 : nb;
            online_update(&sc->m[ri], &sc->l[ri], sc->acc + ri * hd, sc->scores + ri * B,
                          n_valid, V, ld, hd, scale);
        }
    }
    for (size_t ri = 0; ri < R; ri++) {
        size_t row = g->row0 + it->q0 + ri / e->n_rep;
        size_t head = (size_t)it->kv_head * e->n_rep + ri % e->n_rep;
        float *out = e->att + row * e->q_dim + head * hd;
        for (size_t i = 0; i < hd; i++)
            out[i] = sc->acc[ri * hd + i] / sc->l[ri];
    }
}

static void att_run(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hd = e->cfg.head_dim, rows = e->att_rows;
    float *base = e->att_scratch + (size_t)tid * e->att_scratch_floats;
    att_scratch_t sc = {.kbuf = base, .qr = e->att_qptr + (size_t)tid * rows};
    sc.vbuf = sc.kbuf + (size_t)e->B * hd;
    sc.scores = sc.vbuf + (size_t)e->B * hd;
    sc.m = sc.scores + rows * e->B;
    sc.l = sc.m + rows;
    sc.acc = sc.l + rows;
    for (size_t i = b; i < end; i++)
        att_item(p, &e->items[i], &sc);
}

/* Work items, latest positions first: they have the most keys, and
 * starting them early evens out the causal triangle across threads. */
static size_t att_items(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups)
{
    size_t n = 0;
    for (size_t gi = 0; gi < n_groups; gi++) {
        size_t n_tiles = (groups[gi].n + e->att_q - 1) / e->att_q;
        for (size_t t = n_tiles; t-- > 0;) {
            size_t q0 = t * e->att_q;
            size_t nq = groups[gi].n - q0 < e->att_q ? groups[gi].n - q0 : e->att_q;
            for (uint32_t kh = 0; kh < e->cfg.n_kv_heads; kh++)
                e->items[n++] = (kvt_att_item_t){
                    .group = (uint32_t)gi, .q0 = (uint32_t)q0, .n_q = (uint32_t)nq, .kv_head = kh};
        }
    }
    return n;
}

/* --- the pass --- */

static void run_rows(pass_t *p, kvt_threads_fn fn)
{
    /* Element-wise steps are cheap per row: a few rows per chunk, and
     * inline (no wake-ups) for a small decode batch. */
    kvt_threads_for(p->e->threads, p->n_rows, 4, fn, p);
}

static void layer_pass(pass_t *p, size_t n_items)
{
    kvt_engine_t *e = p->e;
    const kvt_layer_weights_t *lw = &e->model->layers[p->layer];
    size_t n = p->n_rows, hidden = e->cfg.hidden;
    kvt_ops_mat_t qkv[3] = {
        {.w = lw->wq, .out = e->q_dim, .bias = lw->bq, .y = e->q},
        {.w = lw->wk, .out = e->kv_row, .bias = lw->bk, .y = e->k},
        {.w = lw->wv, .out = e->kv_row, .bias = lw->bv, .y = e->v},
    };
    kvt_ops_matmul_multi(e->threads, e->h, n, hidden, qkv, 3);
    run_rows(p, rows_rope_store);
    kvt_threads_for(e->threads, n_items, 1, att_run, p);
    kvt_ops_matmul(e->threads, e->att, n, e->q_dim, lw->wo, hidden, NULL, e->o);
    p->add = true;
    p->norm = lw->mlp_norm;
    run_rows(p, rows_add_norm);
    kvt_ops_mat_t mlp[2] = {
        {.w = lw->w_gate, .out = e->cfg.intermediate, .y = e->gate},
        {.w = lw->w_up, .out = e->cfg.intermediate, .y = e->up},
    };
    kvt_ops_matmul_multi(e->threads, e->h, n, hidden, mlp, 2);
    run_rows(p, rows_silu_mul);
    kvt_ops_matmul(e->threads, e->gate, n, e->cfg.intermediate, lw->w_down, hidden, NULL, e->o);
    /* The residual add, fused with the next layer's input norm. */
    p->norm = p->layer + 1 < e->cfg.n_layers ? e->model->layers[p->layer + 1].attn_norm : NULL;
    run_rows(p, rows_add_norm);
}

void kvt_fwd_pass(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups,
                  size_t n_rows, float *logits, size_t logits_row0, size_t n_logits)
{
    for (size_t gi = 0; gi < n_groups; gi++)
        for (size_t i = 0; i < groups[gi].n; i++) {
            e->row_pos[groups[gi].row0 + i] = (uint32_t)(groups[gi].pos0 + i);
            e->row_seq[groups[gi].row0 + i] = groups[gi].seq;
        }
    pass_t p = {.e = e, .groups = groups, .n_groups = n_groups, .n_rows = n_rows};
    run_rows(&p, rows_embed);
    p.norm = e->model->layers[0].attn_norm;
    run_rows(&p, rows_add_norm);
    size_t n_items = att_items(e, groups, n_groups);
    for (uint32_t l = 0; l < e->cfg.n_layers; l++) {
        p.layer = l;
        layer_pass(&p, n_items);
    }
    if (n_logits == 0)
        return;
    size_t hidden = e->cfg.hidden;
    for (size_t r = logits_row0; r < logits_row0 + n_logits; r++)
        kvt_ops_rmsnorm(e->h + r * hidden, e->x + r * hidden, e->model->final_norm, hidden,
                        e->cfg.rms_eps);
    kvt_ops_matmul(e->threads, e->h + logits_row0 * hidden, n_logits, hidden, e->model->lm_head,
                   e->cfg.vocab_size, NULL, logits);
}
