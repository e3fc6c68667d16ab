/* Engine: creation, the pool's public face, sequences, and the prefill and
 * decode calls around the forward pass (forward.c).
 *
 * Failure without damage: a prefill or decode call first checks its
 * arguments, grows the sequences' arrays, computes the keys of the blocks
 * the new tokens will complete and reserves a slot for every block the new
 * positions fall in.  Only then does it compute, and from there nothing can
 * fail (the scratch, the pool's index and its eviction heap are all sized
 * at create).  A failure before that point releases what the call took, so
 * the sequences keep exactly the tokens they had.
 *
 * Blocks enter the content index right after the pass that filled them
 * (kvt_kv_pool_publish): then a sequence started later with the same
 * tokens reuses them, and two sequences that compute the same block end up
 * sharing one slot.
 *
 * Devices: everything here is host bookkeeping and runs the same for a GPU
 * engine; the pass, the slots' memory and block copies go through device.c
 * (kvt_dev_*).  A GPU pass can fail (a device fault): the call then keeps
 * the chunks that completed, releases the slots it reserved for the rest
 * and marks the engine failed. */
#include "engine/engineInt.h"

#include "common/alloc.h"
#include "common/log.h"
#include "engine/ops.h"
#include "kvstore/tail.h"

#include <string.h>

#define POOL_DEFAULT_BYTES (1ull << 30)

static kvt_status_t check_config(const kvt_model_config_t *c)
{
    if (c->vocab_size == 0 || c->hidden == 0 || c->intermediate == 0 || c->n_layers == 0 ||
        c->n_heads == 0 || c->n_kv_heads == 0 || c->head_dim == 0 || c->max_pos == 0 ||
        c->head_dim % 2 != 0 || c->n_heads % c->n_kv_heads != 0) {
        kvt_log_error("engine: unusable model config vocab=%u hidden=%u layers=%u heads=%u "
                      "kv_heads=%u head_dim=%u max_pos=%u", c->vocab_size, c->hidden,
                      c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->max_pos);
        return KVT_ERR_INVALID;
    }
    return KVT_OK;
}

static kvt_status_t resolve_opts(const kvt_engine_opts_t *in, kvt_engine_opts_t *out)
{
    kvt_engine_opts_t o = in ? *in : (kvt_engine_opts_t){0};
    o.block_tokens = o.block_tokens ? o.block_tokens : 16;
    o.kv_dtype = o.kv_dtype ? o.kv_dtype : KVT_DTYPE_BF16;
    o.prefill_chunk = o.prefill_chunk ? o.prefill_chunk
                                      : KVT_DEVICE_IS_CUDA(o.device) ? 2048 : 256;
    if (o.device < 0) {
        kvt_log_error("engine: bad device value=%d", (int)o.device);
        return KVT_ERR_INVALID;
    }
    if (o.block_tokens > KVT_BLOCK_MAX_TOKENS ||
        (o.kv_dtype != KVT_DTYPE_BF16 && o.kv_dtype != KVT_DTYPE_F32) ||
        o.prefill_chunk > KVT_ENGINE_MAX_CHUNK) {
        kvt_log_error("engine: bad options block_tokens=%u kv_dtype=%d prefill_chunk=%u (max %u)",
                      o.block_tokens, (int)o.kv_dtype, o.prefill_chunk, KVT_ENGINE_MAX_CHUNK);
        return KVT_ERR_INVALID;
    }
    *out = o;
    return KVT_OK;
}

static uint32_t default_n_blocks(const kvt_engine_t *e, uint64_t payload)
{
    uint64_t n = (8ull * e->cfg.max_pos + e->B - 1) / e->B;
    uint64_t cap = POOL_DEFAULT_BYTES / payload;
    n = n < cap ? n : cap;
    return n ? (uint32_t)(n < UINT32_MAX ? n : UINT32_MAX - 1) : 1;
}

/* The per-row arrays both devices use (the GPU engine keeps its own
 * scratch in device memory). */
static kvt_status_t alloc_rows(kvt_engine_t *e)
{
    size_t R = e->rows_cap;
    e->row_tok = kvt_malloc("engine.row_tok", R * sizeof(uint32_t));
    e->row_pos = kvt_malloc("engine.row_pos", R * sizeof(uint32_t));
    e->row_seq = kvt_malloc("engine.row_seq", R * sizeof(*e->row_seq));
    e->groups = kvt_malloc("engine.groups", R * sizeof(*e->groups));
    return e->row_tok && e->row_pos && e->row_seq && e->groups ? KVT_OK : KVT_ERR_NOMEM;
}

/* One allocation for all per-row and per-thread scratch. */
static kvt_status_t alloc_scratch(kvt_engine_t *e)
{
    const kvt_model_config_t *c = &e->cfg;
    size_t R = e->rows_cap, T = kvt_threads_count(e->threads);
    size_t per_row = 3 * (size_t)c->hidden + 2 * e->q_dim + 2 * e->kv_row +
                     2 * (size_t)c->intermediate + c->head_dim;
    e->att_scratch_floats = (kvt_fwd_att_scratch_floats(e) + 15) & ~(size_t)15;
    float *f = kvt_malloc("engine.scratch",
                          (R * per_row + T * e->att_scratch_floats) * sizeof(float));
    e->items = kvt_malloc("engine.items", R * c->n_kv_heads * sizeof(*e->items));
    e->att_ptrs = kvt_malloc("engine.att_ptrs", T * kvt_fwd_att_scratch_ptrs(e) * sizeof(void *));
    e->scratch = f;
    if (!f || !e->items || !e->att_ptrs)
        return KVT_ERR_NOMEM;
    e->x = f, f += R * c->hidden;
    e->h = f, f += R * c->hidden;
    e->o = f, f += R * c->hidden;
    e->q = f, f += R * e->q_dim;
    e->att = f, f += R * e->q_dim;
    e->k = f, f += R * e->kv_row;
    e->v = f, f += R * e->kv_row;
    e->gate = f, f += R * c->intermediate;
    e->up = f, f += R * c->intermediate;
    e->cos_t = f, f += R * (c->head_dim / 2);
    e->sin_t = f, f += R * (c->head_dim / 2);
    e->att_scratch = f;
    return KVT_OK;
}

static void free_scratch(kvt_engine_t *e)
{
    kvt_free(e->scratch);
    kvt_free(e->row_tok);
    kvt_free(e->row_pos);
    kvt_free(e->row_seq);
    kvt_free(e->groups);
    kvt_free(e->items);
    kvt_free(e->att_ptrs);
    kvt_free(e->inv_freq);
}

static void setup_dims(kvt_engine_t *e, const kvt_engine_opts_t *o)
{
    const kvt_model_config_t *c = &e->cfg;
    e->B = o->block_tokens;
    e->kv_dtype = o->kv_dtype;
    e->kv_size = kvt_dtype_size(o->kv_dtype);
    e->kv_row = (size_t)c->n_kv_heads * c->head_dim;
    e->q_dim = (size_t)c->n_heads * c->head_dim;
    e->n_rep = c->n_heads / c->n_kv_heads;
    e->att_q = e->n_rep >= KVT_ENGINE_ATT_ROWS ? 1 : KVT_ENGINE_ATT_ROWS / e->n_rep;
    e->att_rows = (size_t)e->att_q * e->n_rep;
    e->att_span = (KVT_ENGINE_ATT_SPAN + e->B - 1) / e->B * e->B;
    e->chunk = o->prefill_chunk;
    e->rows_cap = e->chunk > KVT_ENGINE_DECODE_ROWS ? e->chunk : KVT_ENGINE_DECODE_ROWS;
    e->decode_rows = e->rows_cap;
    e->device = o->device;
    e->identity.layout = (kvt_block_layout_t){
        .n_layers = c->n_layers,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .block_tokens = e->B,
        .dtype = e->kv_dtype,
    };
}

/* The rest of create for a GPU engine: no worker threads and no host
 * scratch beyond the row arrays; device.c sets up the pool and the pass. */
static kvt_status_t create_gpu(kvt_engine_t *e, const kvt_engine_opts_t *o,
                               kvt_engine_t **engine_p)
{
    e->inv_freq = kvt_malloc("engine.inv_freq", (e->cfg.head_dim / 2) * sizeof(float));
    kvt_status_t st = e->inv_freq ? alloc_rows(e) : KVT_ERR_NOMEM;
    if (st == KVT_OK) {
        kvt_ops_rope_inv_freq(&e->cfg, e->inv_freq);
        st = kvt_dev_create(e, o->n_blocks);
    }
    if (st != KVT_OK) {
        free_scratch(e);
        kvt_free(e);
        return st;
    }
    *engine_p = e;
    return KVT_OK;
}

kvt_status_t kvt_engine_create(const kvt_model_t *model, const kvt_engine_opts_t *opts,
                               kvt_engine_t **engine_p)
{
    kvt_engine_opts_t o;
    kvt_status_t st = check_config(&model->cfg);
    if (st == KVT_OK)
        st = resolve_opts(opts, &o);
    if (st != KVT_OK)
        return st;
    kvt_engine_t *e = kvt_calloc("engine", 1, sizeof(*e));
    if (!e)
        return KVT_ERR_NOMEM;
    e->model = model;
    e->cfg = model->cfg;
    setup_dims(e, &o);
    st = kvt_block_layout_check(&e->identity.layout);
    if (st != KVT_OK)
        goto err_free;
    kvt_model_fingerprint(model, e->kv_dtype, e->B, e->identity.fingerprint);
    if (KVT_DEVICE_IS_CUDA(o.device))
        return create_gpu(e, &o, engine_p);
    uint64_t payload = kvt_block_layout_payload_bytes(&e->identity.layout);
    uint32_t n_blocks = o.n_blocks ? o.n_blocks : default_n_blocks(e, payload);
    st = kvt_kv_pool_init(&e->pool, &e->identity.layout, n_blocks);
    if (st != KVT_OK)
        goto err_free;
    st = kvt_threads_create(o.n_threads, &e->threads);
    if (st != KVT_OK)
        goto err_pool;
    e->inv_freq = kvt_malloc("engine.inv_freq", (e->cfg.head_dim / 2) * sizeof(float));
    st = e->inv_freq ? alloc_rows(e) : KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = alloc_scratch(e);
    if (st != KVT_OK)
        goto err_scratch;
    kvt_ops_rope_inv_freq(&e->cfg, e->inv_freq);
    kvt_log_debug("engine created blocks=%u block_tokens=%u kv_dtype=%s threads=%u chunk=%zu "
                  "isa=%s", n_blocks, e->B, kvt_dtype_name(e->kv_dtype),
                  kvt_threads_count(e->threads), e->chunk, kvt_ops_isa());
    *engine_p = e;
    return KVT_OK;

err_scratch:
    free_scratch(e);
    kvt_threads_destroy(e->threads);
err_pool:
    kvt_kv_pool_cleanup(&e->pool);
err_free:
    kvt_free(e);
    return st;
}

void kvt_engine_destroy(kvt_engine_t *e)
{
    if (!e)
        return;
    if (e->n_live_seqs)
        kvt_log_warn("engine destroyed with live sequences n=%u", e->n_live_seqs);
    if (e->gpu)
        kvt_dev_destroy(e);
    free_scratch(e);
    kvt_threads_destroy(e->threads);
    kvt_kv_pool_cleanup(&e->pool);
    kvt_free(e);
}

const kvt_block_identity_t *kvt_engine_identity(const kvt_engine_t *e) { return &e->identity; }

const kvt_model_t *kvt_engine_model(const kvt_engine_t *e) { return e->model; }

kvt_device_t kvt_engine_device(const kvt_engine_t *e) { return e->device; }

/* --- the pool --- */

size_t kvt_engine_pool_match(kvt_engine_t *e, const kvt_block_key_t *keys, size_t n)
{
    return kvt_kv_pool_match(&e->pool, keys, n);
}

kvt_status_t kvt_engine_pool_put(kvt_engine_t *e, const kvt_block_header_t *hdr,
                                 const void *payload, size_t payload_len)
{
    if (!e->gpu)
        return kvt_kv_pool_put(&e->pool, &e->identity, hdr, payload, payload_len);
    if (!payload)
        return KVT_ERR_INVALID; /* as the CPU path answers */
    /* The batch takes the image's length from the header: check the
     * caller's length as the CPU path's verification does. */
    if (payload_len != hdr->payload_len) {
        kvt_log_warn("kv pool put rejected index=%u err=%s", hdr->index,
                     kvt_status_str(KVT_ERR_CORRUPT));
        return KVT_ERR_CORRUPT;
    }
    kvt_status_t one, st = kvt_dev_pool_put_batch(e, hdr, &payload, 1, &one);
    return st != KVT_OK ? st : one;
}

kvt_status_t kvt_engine_pool_put_batch(kvt_engine_t *e, const kvt_block_header_t *hdrs,
                                       const void *const *payloads, size_t n, kvt_status_t *st)
{
    return kvt_dev_pool_put_batch(e, hdrs, payloads, n, st);
}

size_t kvt_engine_stage_blocks(const kvt_engine_t *e) { return kvt_dev_stage_blocks(e); }

void *kvt_engine_stage_buf(kvt_engine_t *e, size_t i) { return kvt_dev_stage_buf(e, i); }

size_t kvt_engine_batch_blocks(const kvt_engine_t *e)
{
    return e->gpu ? kvt_dev_stage_blocks(e) : SIZE_MAX;
}

void kvt_engine_pool_stats(const kvt_engine_t *e, uint32_t *used_p, uint32_t *total_p,
                           uint32_t *indexed_p)
{
    kvt_kv_pool_stats(&e->pool, used_p, total_p, indexed_p);
}

void kvt_engine_set_event_fn(kvt_engine_t *e, kvt_block_event_fn fn, void *arg)
{
    e->pool.on_event = fn;
    e->pool.event_arg = arg;
}

void kvt_engine_pool_foreach(const kvt_engine_t *e, kvt_block_event_fn fn, void *arg)
{
    for (uint32_t i = 0; i < e->pool.n_slots; i++) {
        const kvt_kv_slot_t *s = &e->pool.slots[i];
        if (s->state != KVT_SLOT_INDEXED)
            continue;
        kvt_block_event_t ev = {.kind = KVT_EVENT_STORED, .tier = KVT_TIER_GPU, .key = s->key,
                                .parent = s->parent, .index = s->index};
        fn(&ev, arg);
    }
}

/* --- sequences --- */

kvt_status_t kvt_engine_seq_create(kvt_engine_t *e, const kvt_block_key_t *root,
                                   kvt_seq_t **seq_p)
{
    kvt_seq_t *s = kvt_calloc("engine.seq", 1, sizeof(*s));
    if (!s)
        return KVT_ERR_NOMEM;
    s->root = *root;
    s->B = e->B;
    e->n_live_seqs++;
    *seq_p = s;
    return KVT_OK;
}

void kvt_engine_seq_destroy(kvt_engine_t *e, kvt_seq_t *s)
{
    if (!s)
        return;
    size_t n_blocks = (s->n_tokens + e->B - 1) / e->B;
    for (size_t b = 0; b < n_blocks; b++)
        kvt_kv_pool_unref(&e->pool, s->slots[b]);
    kvt_free(s->tokens);
    kvt_free(s->slots);
    kvt_free(s->keys);
    kvt_free(s);
    e->n_live_seqs--;
}

/* Room for n_tokens tokens (n_tokens <= max_pos, checked by callers). */
static kvt_status_t seq_grow(kvt_engine_t *e, kvt_seq_t *s, size_t n_tokens)
{
    if (n_tokens > s->cap_tokens) {
        size_t cap = s->cap_tokens * 2 > n_tokens ? s->cap_tokens * 2 : n_tokens;
        cap = cap < 64 ? 64 : cap;
        cap = cap > e->cfg.max_pos ? e->cfg.max_pos : cap;
        uint32_t *t = kvt_realloc("engine.seq.tokens", s->tokens, cap * sizeof(*t));
        if (!t)
            return KVT_ERR_NOMEM;
        s->tokens = t;
        s->cap_tokens = cap;
    }
    size_t n_blocks = (n_tokens + e->B - 1) / e->B;
    if (n_blocks > s->cap_blocks) {
        size_t cap = (s->cap_tokens + e->B - 1) / e->B;
        uint32_t *sl = kvt_realloc("engine.seq.slots", s->slots, cap * sizeof(*sl));
        if (!sl)
            return KVT_ERR_NOMEM;
        s->slots = sl;
        kvt_block_key_t *k = kvt_realloc("engine.seq.keys", s->keys, cap * sizeof(*k));
        if (!k)
            return KVT_ERR_NOMEM;
        s->keys = k;
        s->cap_blocks = cap;
    }
    return KVT_OK;
}

/* Keys of the blocks that tokens [0, n_tokens) complete beyond the
 * sequence's current full blocks (s->tokens must hold them). */
static kvt_status_t seq_keys(const kvt_engine_t *e, kvt_seq_t *s, size_t n_tokens)
{
    for (size_t b = s->n_tokens / e->B; b < n_tokens / e->B; b++) {
        const kvt_block_key_t *parent = b ? &s->keys[b - 1] : &s->root;
        kvt_status_t st = kvt_block_key_next(parent, e->B, s->tokens + b * e->B, &s->keys[b]);
        if (st != KVT_OK)
            return st;
    }
    return KVT_OK;
}

/* Private slots for the blocks positions [n_tokens, n_tokens + n) start. */
static kvt_status_t seq_alloc(kvt_engine_t *e, kvt_seq_t *s, size_t n)
{
    size_t b0 = (s->n_tokens + e->B - 1) / e->B, b1 = (s->n_tokens + n + e->B - 1) / e->B;
    for (size_t b = b0; b < b1; b++) {
        kvt_status_t st = kvt_kv_pool_alloc(&e->pool, &s->slots[b]);
        if (st != KVT_OK) {
            while (b-- > b0)
                kvt_kv_pool_unref(&e->pool, s->slots[b]);
            return st;
        }
    }
    return KVT_OK;
}

static void seq_release_new(kvt_engine_t *e, kvt_seq_t *s, size_t n)
{
    size_t b0 = (s->n_tokens + e->B - 1) / e->B, b1 = (s->n_tokens + n + e->B - 1) / e->B;
    for (size_t b = b0; b < b1; b++)
        kvt_kv_pool_unref(&e->pool, s->slots[b]);
}

/* The sequence now holds n_tokens tokens: index the blocks that filled. */
static void seq_advance(kvt_engine_t *e, kvt_seq_t *s, size_t n_tokens)
{
    for (size_t b = s->n_tokens / e->B; b < n_tokens / e->B; b++) {
        const kvt_block_key_t *parent = b ? &s->keys[b - 1] : &s->root;
        s->slots[b] = kvt_kv_pool_publish(&e->pool, s->slots[b], &s->keys[b], parent,
                                          (uint32_t)b);
    }
    s->n_tokens = n_tokens;
}

static kvt_status_t check_tokens(const kvt_engine_t *e, const uint32_t *tokens, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] >= e->cfg.vocab_size) {
            kvt_log_warn("engine: token out of range token=%u vocab=%u", tokens[i],
                         e->cfg.vocab_size);
            return KVT_ERR_INVALID;
        }
    }
    return KVT_OK;
}

kvt_status_t kvt_engine_seq_reuse(kvt_engine_t *e, kvt_seq_t *s, const uint32_t *tokens,
                                  size_t n, size_t *n_reused_p)
{
    if (s->n_tokens != 0 || (n && !tokens))
        return KVT_ERR_INVALID;
    kvt_status_t st = check_tokens(e, tokens, n);
    if (st != KVT_OK)
        return st;
    size_t max_blocks = n > 1 ? (n - 1) / e->B : 0;
    if (max_blocks * e->B > e->cfg.max_pos)
        max_blocks = e->cfg.max_pos / e->B;
    st = seq_grow(e, s, max_blocks * e->B);
    if (st != KVT_OK)
        return st;
    size_t b = 0;
    for (; b < max_blocks; b++) {
        const kvt_block_key_t *parent = b ? &s->keys[b - 1] : &s->root;
        st = kvt_block_key_next(parent, e->B, tokens + b * e->B, &s->keys[b]);
        if (st != KVT_OK)
            break;
        uint32_t slot = kvt_kv_pool_find(&e->pool, &s->keys[b]);
        if (slot == KVT_SLOT_NONE)
            break;
        kvt_kv_pool_ref(&e->pool, slot);
        s->slots[b] = slot;
    }
    if (st != KVT_OK) {
        while (b-- > 0)
            kvt_kv_pool_unref(&e->pool, s->slots[b]);
        return st;
    }
    if (b)
        memcpy(s->tokens, tokens, b * e->B * sizeof(uint32_t));
    s->n_tokens = b * e->B;
    *n_reused_p = s->n_tokens;
    return KVT_OK;
}

/* Checks, keys and slots for appending tokens[0..n) to s. */
static kvt_status_t prepare_append(kvt_engine_t *e, kvt_seq_t *s, const uint32_t *tokens,
                                   size_t n)
{
    if (n > e->cfg.max_pos || s->n_tokens + n > e->cfg.max_pos) {
        kvt_log_warn("engine: sequence would exceed max_pos len=%zu add=%zu max_pos=%u",
                     s->n_tokens, n, e->cfg.max_pos);
        return KVT_ERR_TOO_LARGE;
    }
    kvt_status_t st = seq_grow(e, s, s->n_tokens + n);
    if (st != KVT_OK)
        return st;
    memcpy(s->tokens + s->n_tokens, tokens, n * sizeof(uint32_t));
    return seq_keys(e, s, s->n_tokens + n);
}

kvt_status_t kvt_engine_prefill(kvt_engine_t *e, kvt_seq_t *s, const uint32_t *tokens,
                                size_t n, float *logits, unsigned flags)
{
    if (n == 0 || !tokens)
        return KVT_ERR_INVALID;
    if (e->failed)
        return e->failed;
    kvt_status_t st = check_tokens(e, tokens, n);
    if (st == KVT_OK)
        st = prepare_append(e, s, tokens, n);
    if (st == KVT_OK)
        st = seq_alloc(e, s, n);
    if (st != KVT_OK)
        return st;
    size_t P = s->n_tokens, V = e->cfg.vocab_size;
    for (size_t c0 = 0; c0 < n; c0 += e->chunk) {
        size_t cn = n - c0 < e->chunk ? n - c0 : e->chunk;
        memcpy(e->row_tok, tokens + c0, cn * sizeof(uint32_t));
        kvt_fwd_group_t g = {.seq = s, .pos0 = P + c0, .row0 = 0, .n = cn};
        float *lg = NULL;
        size_t lr0 = 0, nl = 0;
        if (logits && (flags & KVT_ENGINE_LOGITS_ALL)) {
            lg = logits + c0 * V;
            nl = cn;
        } else if (logits && c0 + cn == n) {
            lg = logits;
            lr0 = cn - 1;
            nl = 1;
        }
        st = kvt_dev_pass(e, &g, 1, cn, lg, lr0, nl);
        if (st != KVT_OK) {
            /* GPU only: keep the chunks that completed, release the rest. */
            seq_release_new(e, s, n - c0);
            e->failed = st;
            return st;
        }
        seq_advance(e, s, P + c0 + cn);
    }
    return KVT_OK;
}

static kvt_status_t decode_prepare(kvt_engine_t *e, kvt_seq_t *const *seqs,
                                   const uint32_t *tokens, size_t n_seqs)
{
    kvt_status_t st = check_tokens(e, tokens, n_seqs);
    for (size_t i = 0; i < n_seqs && st == KVT_OK; i++) {
        for (size_t j = 0; j < i; j++)
            if (seqs[i] == seqs[j]) {
                kvt_log_warn("engine: a sequence appears twice in one decode batch");
                return KVT_ERR_INVALID;
            }
        st = prepare_append(e, seqs[i], &tokens[i], 1);
    }
    if (st != KVT_OK)
        return st;
    for (size_t i = 0; i < n_seqs; i++) {
        st = seq_alloc(e, seqs[i], 1);
        if (st != KVT_OK) {
            while (i-- > 0)
                seq_release_new(e, seqs[i], 1);
            return st;
        }
    }
    return KVT_OK;
}

kvt_status_t kvt_engine_decode(kvt_engine_t *e, kvt_seq_t *const *seqs, const uint32_t *tokens,
                               size_t n_seqs, float *logits)
{
    if (n_seqs == 0)
        return KVT_OK;
    if (!seqs || !tokens)
        return KVT_ERR_INVALID;
    if (e->failed)
        return e->failed;
    kvt_status_t st = decode_prepare(e, seqs, tokens, n_seqs);
    if (st != KVT_OK)
        return st;
    for (size_t i0 = 0; i0 < n_seqs; i0 += e->decode_rows) {
        size_t m = n_seqs - i0 < e->decode_rows ? n_seqs - i0 : e->decode_rows;
        for (size_t i = 0; i < m; i++) {
            e->groups[i] = (kvt_fwd_group_t){
                .seq = seqs[i0 + i], .pos0 = seqs[i0 + i]->n_tokens, .row0 = i, .n = 1};
            e->row_tok[i] = tokens[i0 + i];
        }
        st = kvt_dev_pass(e, e->groups, m, m, logits ? logits + i0 * e->cfg.vocab_size : NULL,
                          0, logits ? m : 0);
        if (st != KVT_OK) {
            /* GPU only: no sequence advances; the step's slots go back. */
            for (size_t i = 0; i < n_seqs; i++)
                seq_release_new(e, seqs[i], 1);
            e->failed = st;
            return st;
        }
    }
    for (size_t i = 0; i < n_seqs; i++)
        seq_advance(e, seqs[i], seqs[i]->n_tokens + 1);
    return KVT_OK;
}

size_t kvt_engine_seq_len(const kvt_seq_t *s) { return s->n_tokens; }

const uint32_t *kvt_engine_seq_tokens(const kvt_seq_t *s) { return s->tokens; }

size_t kvt_engine_seq_n_full_blocks(const kvt_seq_t *s)
{
    return s->n_tokens / s->B;
}

kvt_status_t kvt_engine_seq_block(const kvt_engine_t *e, const kvt_seq_t *s, size_t i,
                                  kvt_block_header_t *hdr_p, const void **payload_p)
{
    if (i >= s->n_tokens / e->B)
        return KVT_ERR_NOT_FOUND;
    if (e->gpu)
        return kvt_dev_seq_blocks(e, s, i, 1, hdr_p, payload_p);
    const kvt_block_key_t *parent = i ? &s->keys[i - 1] : &s->root;
    const uint8_t *payload = kvt_kv_pool_data(&e->pool, s->slots[i]);
    kvt_status_t st = kvt_block_header_make(hdr_p, &e->identity, parent, (uint32_t)i,
                                            s->tokens + i * e->B, payload);
    if (st == KVT_OK)
        *payload_p = payload;
    return st;
}

kvt_status_t kvt_engine_seq_blocks(const kvt_engine_t *e, const kvt_seq_t *s, size_t from,
                                   size_t n, kvt_block_header_t *hdrs, const void **payloads)
{
    if (from > s->n_tokens / e->B || n > s->n_tokens / e->B - from)
        return KVT_ERR_NOT_FOUND;
    if (n > kvt_engine_batch_blocks(e))
        return KVT_ERR_TOO_LARGE;
    return kvt_dev_seq_blocks(e, s, from, n, hdrs, payloads);
}

/* --- partial tails --- */

kvt_status_t kvt_engine_seq_tail(const kvt_engine_t *e, const kvt_seq_t *s, void *dst,
                                 size_t cap, size_t *len_p)
{
    uint32_t t = (uint32_t)(s->n_tokens % e->B);
    if (t == 0)
        return KVT_ERR_NOT_FOUND;
    uint64_t bytes = kvt_tail_bytes(&e->identity.layout, t);
    if (cap < bytes)
        return KVT_ERR_TOO_LARGE;
    if (!dst)
        return KVT_ERR_INVALID;
    kvt_status_t st = kvt_dev_tail_copy(e, s->slots[s->n_tokens / e->B], t, dst, true);
    if (st == KVT_OK)
        *len_p = (size_t)bytes;
    return st;
}

/* seq_adopt's argument checks, in prefill's order (tokens, then max_pos),
 * then the tail's. */
static kvt_status_t adopt_check(const kvt_engine_t *e, const kvt_seq_t *s,
                                const uint32_t *tokens, size_t n, const void *tail,
                                size_t tail_len)
{
    if (s->n_tokens != 0 || n == 0 || !tokens)
        return KVT_ERR_INVALID;
    if (e->failed)
        return e->failed;
    kvt_status_t st = check_tokens(e, tokens, n);
    if (st != KVT_OK)
        return st;
    if (n > e->cfg.max_pos) {
        kvt_log_warn("engine: adopted sequence exceeds max_pos len=%zu max_pos=%u", n,
                     e->cfg.max_pos);
        return KVT_ERR_TOO_LARGE;
    }
    uint32_t t = (uint32_t)(n % e->B);
    uint64_t want = kvt_tail_bytes(&e->identity.layout, t);
    if (t > 0 && (!tail || tail_len != want)) {
        kvt_log_warn("engine: adopt with a bad tail tokens=%u len=%zu want=%llu", t,
                     tail ? tail_len : 0, (unsigned long long)want);
        return KVT_ERR_INVALID;
    }
    return KVT_OK;
}

kvt_status_t kvt_engine_seq_adopt(kvt_engine_t *e, kvt_seq_t *s, const uint32_t *tokens,
                                  size_t n, const void *tail, size_t tail_len)
{
    kvt_status_t st = adopt_check(e, s, tokens, n, tail, tail_len);
    if (st == KVT_OK) /* the sequence is empty: tokens and the keys of every full block */
        st = prepare_append(e, s, tokens, n);
    if (st != KVT_OK)
        return st;
    size_t nb = n / e->B;
    uint32_t t = (uint32_t)(n % e->B);
    size_t have = kvt_kv_pool_match(&e->pool, s->keys, nb);
    if (have < nb) {
        kvt_log_warn("engine: adopt lacks a full block index=%zu blocks=%zu", have, nb);
        return KVT_ERR_NOT_FOUND;
    }
    /* References first, so that the tail's slot cannot evict one of them. */
    for (size_t b = 0; b < nb; b++) {
        s->slots[b] = kvt_kv_pool_find(&e->pool, &s->keys[b]);
        kvt_kv_pool_ref(&e->pool, s->slots[b]);
    }
    if (t > 0) {
        /* Only rows 0..t-1 are written: rows t..B-1 keep whatever the slot
         * held, and each later step writes its row before attention reads
         * it (attention reads positions up to the sequence's length). */
        st = kvt_kv_pool_alloc(&e->pool, &s->slots[nb]);
        if (st == KVT_OK) {
            st = kvt_dev_tail_copy(e, s->slots[nb], t, (void *)tail, false);
            if (st != KVT_OK)
                kvt_kv_pool_unref(&e->pool, s->slots[nb]);
        }
        if (st != KVT_OK) {
            for (size_t b = 0; b < nb; b++)
                kvt_kv_pool_unref(&e->pool, s->slots[b]);
            return st;
        }
    }
    s->n_tokens = n;
    return KVT_OK;
}
