/* The GPU engine's block moves between the device pool (T0) and host
 * memory (engine.h: seq_blocks, pool_put_batch, the staging), through the
 * engine's pinned staging on the copy stream.  Compiled only when CUDA is
 * built in; the state lives in kvt_gpu_engine_t (gpu_engineInt.h).
 *
 * Checksums (invariant 3) are computed where the bytes are: the xxh3 of
 * every image is taken on the device by kvt_k_xxh3_64, bit for bit the
 * host's, so the host never reads a payload to hash it.  Out, the device
 * hashes the slots before they are copied and the headers carry those
 * sums.  In, the device hashes the slots after the copy, and a block is
 * published in the pool only when its sum equals its header's: the check
 * covers exactly the bytes that landed, the bus included. */
#include "engine/gpu_engineInt.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"

#include <string.h>

/* --- staging --- */

kvt_status_t kvt_gpu_moves_alloc(kvt_engine_t *e, kvt_gpu_engine_t *g)
{
    size_t stride = e->pool.stride;
    size_t n = KVT_GPU_STAGE_BYTES / stride;
    n = n < KVT_GPU_STAGE_MIN_BLOCKS ? KVT_GPU_STAGE_MIN_BLOCKS
        : n > KVT_GPU_STAGE_MAX_BLOCKS ? KVT_GPU_STAGE_MAX_BLOCKS : n;
    g->stage_blocks = n;
    g->cp_dst = kvt_malloc("engine.cp_dst", n * sizeof(void *));
    g->cp_src = kvt_malloc("engine.cp_src", n * sizeof(void *));
    g->cp_bytes = kvt_malloc("engine.cp_bytes", n * sizeof(size_t));
    g->put_slot = kvt_malloc("engine.put_slot", n * sizeof(uint32_t));
    g->put_parent = kvt_malloc("engine.put_parent", n * sizeof(uint32_t));
    g->put_idx = kvt_malloc("engine.put_idx", n * sizeof(size_t));
    g->mv_st = kvt_malloc("engine.mv_st", n * sizeof(kvt_status_t));
    if (!g->cp_dst || !g->cp_src || !g->cp_bytes || !g->put_slot || !g->put_parent ||
        !g->put_idx || !g->mv_st)
        return KVT_ERR_NOMEM;
    kvt_status_t st = kvt_gpu_host_alloc((void **)&g->xx_bufs_h, n * sizeof(void *),
                                         "engine hash addresses");
    if (st == KVT_OK)
        st = kvt_gpu_host_alloc((void **)&g->xx_sums_h, n * sizeof(uint64_t), "engine hash sums");
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&g->xx_bufs_d, n * sizeof(void *), "engine hash addresses");
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&g->xx_sums_d, n * sizeof(uint64_t), "engine hash sums");
    if (st != KVT_OK)
        return st;
    return kvt_gpu_host_alloc((void **)&g->stage, n * stride, "engine block staging");
}

void kvt_gpu_moves_free(kvt_gpu_engine_t *g)
{
    kvt_gpu_host_free(g->stage);
    kvt_free(g->cp_dst);
    kvt_free(g->cp_src);
    kvt_free(g->cp_bytes);
    kvt_free(g->put_slot);
    kvt_free(g->put_parent);
    kvt_free(g->put_idx);
    kvt_free(g->mv_st);
    kvt_gpu_host_free((void *)g->xx_bufs_h);
    kvt_gpu_host_free(g->xx_sums_h);
    kvt_gpu_free((void *)g->xx_bufs_d);
    kvt_gpu_free(g->xx_sums_d);
}

/* Queue on the copy stream the xxh3 of the images whose device addresses
 * are xx_bufs_h[first, first + n): the addresses up, the kernel, the sums
 * back into xx_sums_h[first ..] (valid once the stream has passed). */
static kvt_status_t hash_issue(const kvt_engine_t *e, size_t first, size_t n)
{
    kvt_gpu_engine_t *g = e->gpu;
    if (n == 0)
        return KVT_OK;
    kvt_status_t st = kvt_gpu_h2d((void *)(g->xx_bufs_d + first), g->xx_bufs_h + first,
                                  n * sizeof(void *), g->copy);
    if (st == KVT_OK)
        st = kvt_k_xxh3_64(g->xx_bufs_d + first, n, e->pool.payload_len, g->xx_sums_d + first,
                           g->copy);
    if (st == KVT_OK)
        st = kvt_gpu_d2h(g->xx_sums_h + first, g->xx_sums_d + first, n * sizeof(uint64_t),
                         g->copy);
    return st;
}

/* --- block moves --- */

size_t kvt_gpu_engine_stage_blocks(const kvt_engine_t *e) { return e->gpu->stage_blocks; }

void *kvt_gpu_engine_stage_buf(const kvt_engine_t *e, size_t i)
{
    const kvt_gpu_engine_t *g = e->gpu;
    return i < g->stage_blocks ? g->stage + i * e->pool.stride : NULL;
}

/* Append one block copy to the list, merged into the previous one when
 * both ends continue it (a sequence's slots are often consecutive) and it
 * belongs to the same part (entries from `first` on). */
static void copy_add(const kvt_engine_t *e, size_t *n, size_t first, void *dst, const void *src)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t pad = e->pool.stride - e->pool.payload_len;
    if (*n > first) {
        size_t k = *n - 1, span = g->cp_bytes[k] + pad;
        if ((uint8_t *)g->cp_dst[k] + span == (uint8_t *)dst &&
            (const uint8_t *)g->cp_src[k] + span == (const uint8_t *)src) {
            g->cp_bytes[k] += e->pool.stride;
            return;
        }
    }
    g->cp_dst[*n] = dst;
    g->cp_src[*n] = src;
    g->cp_bytes[*n] = e->pool.payload_len;
    (*n)++;
}

/* Issue list entries [first, n) on the copy stream (no wait). */
static kvt_status_t copy_issue(const kvt_engine_t *e, size_t first, size_t n, int kind)
{
    kvt_gpu_engine_t *g = e->gpu;
    if (n == first)
        return KVT_OK;
    return kvt_gpu_copy_batch(g->cp_dst + first, g->cp_src + first, g->cp_bytes + first,
                              n - first, kind, g->copy);
}

/* Blocks per part of a move (n blocks): host work on one part overlaps
 * the copies of the others.  At most KVT_GPU_MOVE_PARTS parts, each of at
 * least `bytes` and a multiple of the host threads (a block's staging copy
 * is one thread's work: a last round of fewer blocks than threads would
 * leave cores idle). */
static size_t move_part(const kvt_engine_t *e, size_t n, size_t bytes)
{
    size_t threads = kvt_threads_count(e->gpu->threads);
    size_t q = (n + KVT_GPU_MOVE_PARTS - 1) / KVT_GPU_MOVE_PARTS;
    size_t min = (bytes + e->pool.stride - 1) / e->pool.stride;
    q = q > min ? q : min;
    q = (q + threads - 1) / threads * threads;
    return q > n ? (n ? n : 1) : q;
}

/* Host work of a block move, one item per block, run on g->threads. */
typedef struct {
    const kvt_engine_t *e;
    const kvt_seq_t *seq;                /* seq_blocks */
    size_t from;
    kvt_block_header_t *hdrs;
    const void **payloads;
    const kvt_block_header_t *in_hdrs;   /* put */
    const void *const *in_payloads;
    size_t base;                         /* first block of the part */
    size_t sbase;                        /* its first staging slot (put) */
} move_job_t;

static void headers_run(void *arg, size_t b0, size_t b1, uint32_t tid)
{
    const move_job_t *j = arg;
    const kvt_engine_t *e = j->e;
    kvt_gpu_engine_t *g = e->gpu;
    (void)tid;
    for (size_t i = j->base + b0; i < j->base + b1; i++) {
        size_t b = j->from + i;
        const kvt_block_key_t *parent = b ? &j->seq->keys[b - 1] : &j->seq->root;
        j->payloads[i] = g->stage + i * e->pool.stride;
        g->mv_st[i] = kvt_block_header_make_sum(&j->hdrs[i], &e->identity, parent, (uint32_t)b,
                                                j->seq->tokens + b * e->B, g->xx_sums_h[i]);
    }
}

/* The image into its staging slot (unless it is there already) after
 * kvt_kv_pool_put_verify's checks that need no payload: identity, key,
 * length.  Its checksum is checked on the device after the copy
 * (put_batch), over exactly the bytes that landed. */
static void verify_run(void *arg, size_t b0, size_t b1, uint32_t tid)
{
    const move_job_t *j = arg;
    const kvt_engine_t *e = j->e;
    kvt_gpu_engine_t *g = e->gpu;
    (void)tid;
    for (size_t b = b0; b < b1; b++) {
        const kvt_block_header_t *h = &j->in_hdrs[j->base + b];
        const uint8_t *src = j->in_payloads[j->base + b];
        uint8_t *sb = g->stage + (j->sbase + b) * e->pool.stride;
        kvt_status_t st = kvt_block_header_check_identity(h, &e->identity);
        if (st == KVT_OK)
            st = kvt_block_header_check_key(h);
        if (st == KVT_OK && h->payload_len != e->pool.payload_len)
            st = KVT_ERR_CORRUPT;
        if (st == KVT_OK && src != sb)
            memcpy(sb, src, h->payload_len);
        g->mv_st[j->sbase + b] = st;
    }
}

/* Out: the device hashes every slot first, then every part's copy is
 * issued at once, an event after each; the headers of part k (with the
 * device's checksums) are made on every core as soon as its event has
 * passed, while later parts still copy. */
kvt_status_t kvt_gpu_engine_seq_blocks(const kvt_engine_t *e, const kvt_seq_t *s, size_t from,
                                       size_t n, kvt_block_header_t *hdrs,
                                       const void **payloads)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t stride = e->pool.stride, nc = 0, parts = 0;
    size_t q = move_part(e, n, KVT_GPU_MOVE_OUT_BYTES);
    if (n > g->stage_blocks)
        return KVT_ERR_TOO_LARGE;
    uint64_t t0 = kvt_time_ns();
    kvt_status_t st = kvt_gpu_use(g->device);
    if (st == KVT_OK)
        st = kvt_gpu_event_record(g->ev[0], g->copy);
    for (size_t i = 0; i < n; i++)
        g->xx_bufs_h[i] = kvt_kv_pool_data(&e->pool, s->slots[from + i]);
    if (st == KVT_OK)
        st = hash_issue(e, 0, n);
    for (size_t k0 = 0; k0 < n && st == KVT_OK; k0 += q, parts++) {
        size_t first = nc;
        for (size_t i = k0; i < n && i < k0 + q; i++)
            copy_add(e, &nc, first, g->stage + i * stride,
                     kvt_kv_pool_data(&e->pool, s->slots[from + i]));
        st = copy_issue(e, first, nc, 1);
        if (st == KVT_OK)
            st = kvt_gpu_event_record(g->ev[parts + 1], g->copy);
    }
    move_job_t job = {.e = e, .seq = s, .from = from, .hdrs = hdrs, .payloads = payloads};
    for (size_t k = 0; k < parts && st == KVT_OK; k++) {
        float ms;
        uint64_t t1 = kvt_time_ns();
        st = kvt_gpu_event_elapsed_ms(g->ev[0], g->ev[k + 1], &ms); /* waits for part k */
        uint64_t t2 = kvt_time_ns();
        job.base = k * q;
        if (st == KVT_OK)
            kvt_threads_for(g->threads, (n - job.base < q ? n - job.base : q), 1, headers_run,
                            &job);
        g->mv_out_wait_ns += t2 - t1;
        g->mv_out_host_ns += kvt_time_ns() - t2;
    }
    kvt_status_t ss = kvt_gpu_stream_sync(g->copy);
    g->mv_out_ns += kvt_time_ns() - t0;
    g->mv_out_bytes += n * e->pool.payload_len;
    st = st == KVT_OK ? ss : st;
    if (st != KVT_OK) {
        kvt_log_error("engine: block copy to the host failed blocks=%zu status=%s", n,
                      kvt_status_str(st));
        return KVT_ERR_IO;
    }
    for (size_t i = 0; i < n; i++)
        if (g->mv_st[i] != KVT_OK)
            return g->mv_st[i];
    return KVT_OK;
}

/* In: the batch in parts of q blocks through a ring of R = stage / q
 * staging regions (part p in region p mod R).  Part p is staged and
 * checked on every core, its blocks begun in the pool in order (a chain's
 * parent comes first), its copies issued, then the device hashes the
 * slots they landed in, with an event after it; before part p + R reuses
 * the region, that event is waited for and part p's blocks are ended --
 * each only when its device checksum equals its header's.  So host work of
 * one part overlaps the copies of the R - 1 before it, across the whole
 * batch.  A failed copy aborts every block begun and not yet ended
 * (KVT_ERR_IO); a checksum mismatch makes that block KVT_ERR_CORRUPT and
 * aborts it and every block after it (KVT_ERR_AGAIN: not stored; a chain
 * after a bad block could not be stored anyway).  Blocks ended before stay
 * stored. */
typedef struct {
    size_t q, R;   /* blocks per part, regions */
    size_t p0, p;  /* parts [p0, p) issued and not yet ended */
    size_t na[KVT_GPU_MOVE_PARTS]; /* blocks begun from the part in region r */
} put_ring_t;

/* Abort every block begun and not ended, children first (newest part and
 * block first); a block still KVT_OK gets `why`.  The copy stream must
 * be idle: no copy may still write a slot that goes back to the pool. */
static void ring_abort(kvt_engine_t *e, put_ring_t *rg, kvt_status_t *st, kvt_status_t why)
{
    kvt_gpu_engine_t *g = e->gpu;
    for (size_t pp = rg->p; pp-- > rg->p0;) {
        size_t base = pp % rg->R * rg->q;
        for (size_t j = rg->na[pp % rg->R]; j-- > 0;) {
            kvt_kv_pool_put_abort(&e->pool, g->put_slot[base + j], g->put_parent[base + j]);
            if (st[g->put_idx[base + j]] == KVT_OK)
                st[g->put_idx[base + j]] = why;
        }
        rg->na[pp % rg->R] = 0;
    }
    rg->p0 = rg->p;
}

/* End the oldest issued part, whose copies and sums have passed.  False
 * when a block's device checksum differs from its header's (see above). */
static bool end_part(kvt_engine_t *e, put_ring_t *rg, const kvt_block_header_t *hdrs,
                     kvt_status_t *st)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t r = rg->p0 % rg->R, base = r * rg->q, j = 0;
    for (; j < rg->na[r]; j++) {
        size_t k = base + j;
        if (g->xx_sums_h[k] != hdrs[g->put_idx[k]].checksum)
            break;
        kvt_kv_pool_put_end(&e->pool, g->put_slot[k], g->put_parent[k]);
    }
    if (j == rg->na[r]) {
        rg->na[r] = 0;
        rg->p0++;
        return true;
    }
    size_t bad = g->put_idx[base + j], left = rg->na[r] - j;
    kvt_log_warn("kv pool put rejected: checksum differs on the device index=%u",
                 hdrs[bad].index);
    st[bad] = KVT_ERR_CORRUPT;
    memmove(g->put_slot + base, g->put_slot + base + j, left * sizeof(*g->put_slot));
    memmove(g->put_parent + base, g->put_parent + base + j, left * sizeof(*g->put_parent));
    memmove(g->put_idx + base, g->put_idx + base + j, left * sizeof(*g->put_idx));
    rg->na[r] = left;
    (void)kvt_gpu_stream_sync(g->copy); /* later parts' copies land first */
    ring_abort(e, rg, st, KVT_ERR_AGAIN);
    return false;
}

/* Begin blocks [k0, k1) (staged in region r) that passed the host checks,
 * list their copies and their slots' addresses for the device hash. */
static size_t begin_part(kvt_engine_t *e, put_ring_t *rg, size_t k0, size_t k1,
                         const kvt_block_header_t *hdrs, kvt_status_t *st)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t r = rg->p % rg->R, base = r * rg->q, nc = 0;
    for (size_t i = k0; i < k1; i++) {
        uint32_t slot, parent;
        size_t sl = base + (i - k0);
        st[i] = g->mv_st[sl];
        if (st[i] != KVT_OK) {
            kvt_log_warn("kv pool put rejected index=%u err=%s", hdrs[i].index,
                         kvt_status_str(st[i]));
            continue;
        }
        /* Checked above: begin checks only what needs the pool. */
        st[i] = kvt_kv_pool_put_begin(&e->pool, &e->identity, &hdrs[i], NULL, 0, &slot, &parent);
        if (st[i] != KVT_OK)
            continue;
        size_t k = base + rg->na[r]++;
        g->put_slot[k] = slot;
        g->put_parent[k] = parent;
        g->put_idx[k] = i;
        g->xx_bufs_h[k] = kvt_kv_pool_data(&e->pool, slot);
        copy_add(e, &nc, 0, kvt_kv_pool_data(&e->pool, slot), g->stage + sl * e->pool.stride);
    }
    return nc;
}

kvt_status_t kvt_gpu_engine_put_batch(kvt_engine_t *e, const kvt_block_header_t *hdrs,
                                      const void *const *payloads, size_t n, kvt_status_t *st)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t S = g->stage_blocks;
    put_ring_t rg = {.q = move_part(e, n < S ? n : S, KVT_GPU_MOVE_IN_BYTES)};
    rg.R = S / rg.q < KVT_GPU_MOVE_PARTS ? S / rg.q : KVT_GPU_MOVE_PARTS;
    for (size_t i = 0; i < n; i++)
        st[i] = KVT_ERR_IO; /* for blocks a failed copy leaves unprocessed */
    move_job_t job = {.e = e, .in_hdrs = hdrs, .in_payloads = payloads};
    uint64_t t0 = kvt_time_ns();
    bool sums_ok = true;
    kvt_status_t cs = kvt_gpu_use(g->device);
    if (cs == KVT_OK)
        cs = kvt_gpu_event_record(g->ev[0], g->copy);
    for (; rg.p * rg.q < n && cs == KVT_OK; rg.p++) {
        size_t r = rg.p % rg.R, k0 = rg.p * rg.q, k1 = n - k0 < rg.q ? n : k0 + rg.q;
        if (rg.p - rg.p0 == rg.R) { /* region r still holds part p0 = p - R */
            float ms;
            uint64_t t1 = kvt_time_ns();
            cs = kvt_gpu_event_elapsed_ms(g->ev[0], g->ev[r + 1], &ms);
            g->mv_in_wait_ns += kvt_time_ns() - t1;
            if (cs != KVT_OK || !(sums_ok = end_part(e, &rg, hdrs, st)))
                break;
        }
        job.base = k0;
        job.sbase = r * rg.q;
        uint64_t t1 = kvt_time_ns();
        kvt_threads_for(g->threads, k1 - k0, 1, verify_run, &job);
        g->mv_in_host_ns += kvt_time_ns() - t1;
        size_t nc = begin_part(e, &rg, k0, k1, hdrs, st);
        cs = copy_issue(e, 0, nc, 0);
        if (cs == KVT_OK)
            cs = hash_issue(e, r * rg.q, rg.na[r]);
        if (cs == KVT_OK)
            cs = kvt_gpu_event_record(g->ev[r + 1], g->copy);
    }
    uint64_t t1 = kvt_time_ns();
    kvt_status_t ss = kvt_gpu_stream_sync(g->copy);
    g->mv_in_wait_ns += kvt_time_ns() - t1;
    cs = cs == KVT_OK ? ss : cs;
    if (cs != KVT_OK) {
        kvt_log_error("engine: block copy to the device failed blocks=%zu status=%s", n,
                      kvt_status_str(cs));
        ring_abort(e, &rg, st, KVT_ERR_IO);
        g->mv_in_ns += kvt_time_ns() - t0;
        return KVT_ERR_IO;
    }
    while (sums_ok && rg.p0 < rg.p)
        sums_ok = end_part(e, &rg, hdrs, st);
    for (size_t i = 0; !sums_ok && i < n; i++)
        if (st[i] == KVT_ERR_IO) /* never processed: the batch stopped */
            st[i] = KVT_ERR_AGAIN;
    g->mv_in_ns += kvt_time_ns() - t0;
    g->mv_in_bytes += n * e->pool.payload_len;
    return KVT_OK;
}
