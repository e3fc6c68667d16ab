/* Partial tails on the GPU engine: kvt_dev_tail_copy (engine/engineInt.h)
 * between a device slot and a host image in kvstore/tail.h's compact
 * layout.
 *
 * A slot holds one block image [layer][K,V][B][kv_head][head_dim]; a tail
 * of t < B tokens is the first t rows of each of its 2 * n_layers
 * sections, so on the device it is 2 * n_layers pieces B rows apart, and
 * in the compact image the same pieces back to back.  They move as one
 * batched copy on the copy stream between the slot and staging buffer 0
 * (pinned, one slot stride >= a block >= a tail), then one memcpy between
 * the staging and the caller's buffer, which need not be pinned.  The pass
 * stream is idle whenever the engine is called (every pass waits for its
 * end), so the copy never races a pass writing the slot. */
#include "engine/gpu_engineInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <string.h>

kvt_status_t kvt_gpu_engine_tail_copy(const kvt_engine_t *e, uint32_t slot, uint32_t t,
                                      void *host, bool to_host)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t n = 2 * (size_t)e->cfg.n_layers;
    size_t section = (size_t)e->B * e->kv_row * e->kv_size;
    size_t rows = (size_t)t * e->kv_row * e->kv_size;
    /* The copy list: n_layers is bounded by the layout (KVT_BLOCK_MAX_LAYERS),
     * not by the staging's block lists (g->cp_*), so it gets its own. */
    void **list = kvt_malloc("engine.tail_copy", n * (2 * sizeof(void *) + sizeof(size_t)));
    if (!list)
        return KVT_ERR_NOMEM;
    void **dst = list;
    const void **src = (const void **)(list + n);
    size_t *bytes = (size_t *)(list + 2 * n);
    /* Device address of the slot: pool->region is device memory, only
     * offset here, never dereferenced (the slots are e->pool.stride apart). */
    uint8_t *dev = kvt_kv_pool_data(&e->pool, slot);
    for (size_t i = 0; i < n; i++) {
        uint8_t *d = dev + i * section, *s = g->stage + i * rows;
        dst[i] = to_host ? (void *)s : (void *)d;
        src[i] = to_host ? d : s;
        bytes[i] = rows;
    }
    if (!to_host)
        memmove(g->stage, host, n * rows); /* host may already be staging buffer 0 */
    kvt_status_t st = kvt_gpu_use(g->device);
    if (st == KVT_OK)
        st = kvt_gpu_copy_batch((void *const *)dst, (const void *const *)src, bytes, n,
                                to_host ? 1 : 0, g->copy);
    /* Wait even after a failed issue: the copies queued before it use the
     * staging, which must be idle when the call returns. */
    kvt_status_t ss = kvt_gpu_stream_sync(g->copy);
    st = st == KVT_OK ? ss : st;
    kvt_free(list);
    if (st != KVT_OK) {
        kvt_log_error("engine: tail copy %s failed slot=%u tokens=%u bytes=%zu status=%s",
                      to_host ? "to the host" : "to the device", slot, t, n * rows,
                      kvt_status_str(st));
        return KVT_ERR_IO;
    }
    if (to_host)
        memmove(host, g->stage, n * rows);
    return KVT_OK;
}
