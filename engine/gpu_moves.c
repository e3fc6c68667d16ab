/* The GPU engine's block moves between the device pool (T0) and host
 * memory (engine.h: seq_blocks, pool_put_batch, the staging), through the
 * engine's pinned staging on the copy stream.  Compiled only when CUDA is
 * built in; the state lives in kvt_gpu_engine_t (gpu_engineInt.h). */
#include "engine/gpu_engineInt.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/time.h"

#include <string.h>
#include <xxhash.h>

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
 * least `bytes` and a multiple of the host threads (a block's checksum is
 * one thread's sequential work: a last round of fewer blocks than threads
 * would leave cores idle). */
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
        g->mv_st[i] = kvt_block_header_make(&j->hdrs[i], &e->identity, parent, (uint32_t)b,
                                            j->seq->tokens + b * e->B, j->payloads[i]);
    }
}

/* Copy an image into its staging slot and hash what was copied, a piece
 * at a time, so the hash reads each piece from this core's cache right
 * after the copy left it there (one pass over the source, none over the
 * staging from memory). */
#define COPY_HASH_PIECE ((size_t)64 << 10)

static kvt_status_t copy_hash(uint8_t *dst, const uint8_t *src, size_t len, uint64_t *sum_p)
{
    XXH3_state_t *xs = XXH3_createState();
    if (!xs)
        return KVT_ERR_NOMEM;
    (void)XXH3_64bits_reset(xs);
    for (size_t at = 0; at < len; at += COPY_HASH_PIECE) {
        size_t n = len - at < COPY_HASH_PIECE ? len - at : COPY_HASH_PIECE;
        memcpy(dst + at, src + at, n);
        (void)XXH3_64bits_update(xs, dst + at, n);
    }
    *sum_p = XXH3_64bits_digest(xs);
    XXH3_freeState(xs);
    return KVT_OK;
}

/* The image into its staging slot (unless it is there already) and
 * kvt_kv_pool_put_verify's checks, in its order, on the staged bytes:
 * identity, key, length (before anything is copied), then the xxh3
 * checksum (invariant 3) of exactly the bytes that go to the device. */
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
        uint64_t sum = 0;
        if (st == KVT_OK && src != sb)
            st = copy_hash(sb, src, h->payload_len, &sum);
        else if (st == KVT_OK)
            sum = kvt_xxh3_64(sb, h->payload_len);
        if (st == KVT_OK && sum != h->checksum)
            st = KVT_ERR_CORRUPT;
        g->mv_st[j->sbase + b] = st;
    }
}

/* Out: every part's copy is issued at once, an event after each; the
 * headers (an xxh3 checksum over each image) of part k are made on every
 * core as soon as its event has passed, while later parts still copy. */
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
 * verified on every core, its blocks begun in the pool in order (a
 * chain's parent comes first) and its copies issued with an event after
 * them; before part p + R reuses the region, that event is waited for and
 * part p's blocks are ended.  So host work of one part overlaps the copies
 * of the R - 1 before it, across the whole batch.  A failed copy aborts
 * every block begun and not yet ended; blocks ended before stay stored. */
kvt_status_t kvt_gpu_engine_put_batch(kvt_engine_t *e, const kvt_block_header_t *hdrs,
                                      const void *const *payloads, size_t n, kvt_status_t *st)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t S = g->stage_blocks, stride = e->pool.stride;
    size_t q = move_part(e, n < S ? n : S, KVT_GPU_MOVE_IN_BYTES), R = S / q, nc = 0;
    size_t na[KVT_GPU_MOVE_PARTS] = {0}; /* blocks begun per region */
    size_t p0 = 0, p = 0;                /* parts [p0, p) issued, not yet ended */
    R = R < KVT_GPU_MOVE_PARTS ? R : KVT_GPU_MOVE_PARTS;
    for (size_t i = 0; i < n; i++)
        st[i] = KVT_ERR_IO; /* for blocks a failed copy leaves unprocessed */
    move_job_t job = {.e = e, .in_hdrs = hdrs, .in_payloads = payloads};
    uint64_t t0 = kvt_time_ns();
    kvt_status_t cs = kvt_gpu_use(g->device);
    if (cs == KVT_OK)
        cs = kvt_gpu_event_record(g->ev[0], g->copy);
    for (; p * q < n && cs == KVT_OK; p++) {
        size_t r = p % R, k0 = p * q, k1 = n - k0 < q ? n : k0 + q;
        if (p - p0 == R) { /* region r still holds part p0 = p - R */
            float ms;
            uint64_t t1 = kvt_time_ns();
            cs = kvt_gpu_event_elapsed_ms(g->ev[0], g->ev[r + 1], &ms);
            g->mv_in_wait_ns += kvt_time_ns() - t1;
            if (cs != KVT_OK)
                break;
            for (size_t j = 0; j < na[r]; j++)
                kvt_kv_pool_put_end(&e->pool, g->put_slot[r * q + j], g->put_parent[r * q + j]);
            na[r] = 0;
            p0++;
        }
        job.base = k0;
        job.sbase = r * q;
        uint64_t t1 = kvt_time_ns();
        kvt_threads_for(g->threads, k1 - k0, 1, verify_run, &job);
        g->mv_in_host_ns += kvt_time_ns() - t1;
        nc = 0;
        for (size_t i = k0; i < k1; i++) {
            uint32_t slot, parent;
            size_t sl = r * q + (i - k0);
            st[i] = g->mv_st[sl];
            if (st[i] != KVT_OK) {
                kvt_log_warn("kv pool put rejected index=%u err=%s", hdrs[i].index,
                             kvt_status_str(st[i]));
                continue;
            }
            /* Verified above: begin checks only what needs the pool. */
            st[i] = kvt_kv_pool_put_begin(&e->pool, &e->identity, &hdrs[i], NULL, 0, &slot,
                                          &parent);
            if (st[i] != KVT_OK)
                continue;
            g->put_slot[r * q + na[r]] = slot;
            g->put_parent[r * q + na[r]] = parent;
            g->put_idx[r * q + na[r]++] = i;
            copy_add(e, &nc, 0, kvt_kv_pool_data(&e->pool, slot), g->stage + sl * stride);
        }
        cs = copy_issue(e, 0, nc, 0);
        if (cs == KVT_OK)
            cs = kvt_gpu_event_record(g->ev[r + 1], g->copy);
    }
    uint64_t t1 = kvt_time_ns();
    kvt_status_t ss = kvt_gpu_stream_sync(g->copy);
    g->mv_in_wait_ns += kvt_time_ns() - t1;
    g->mv_in_ns += kvt_time_ns() - t0;
    g->mv_in_bytes += n * e->pool.payload_len;
    cs = cs == KVT_OK ? ss : cs;
    if (cs != KVT_OK) {
        kvt_log_error("engine: block copy to the device failed blocks=%zu status=%s", n,
                      kvt_status_str(cs));
        /* Children after parents: abort the newest part first. */
        for (size_t pp = p; pp-- > p0;) {
            size_t r = pp % R;
            for (size_t j = na[r]; j-- > 0;) {
                kvt_kv_pool_put_abort(&e->pool, g->put_slot[r * q + j],
                                      g->put_parent[r * q + j]);
                st[g->put_idx[r * q + j]] = KVT_ERR_IO;
            }
        }
        for (size_t i = p0 * q; i < n; i++)
            if (st[i] == KVT_OK)
                st[i] = KVT_ERR_IO;
        return KVT_ERR_IO;
    }
    for (size_t pp = p0; pp < p; pp++) {
        size_t r = pp % R;
        for (size_t j = 0; j < na[r]; j++)
            kvt_kv_pool_put_end(&e->pool, g->put_slot[r * q + j], g->put_parent[r * q + j]);
    }
    return KVT_OK;
}
