/* net receive buffers: large message buffers are kept for reuse instead of
 * going back to malloc.
 *
 * Why: a pull moves a 0.5-2 MiB reply every few hundred microseconds.  With
 * glibc's defaults each such buffer is a fresh mmap (or heap growth that
 * is trimmed again at free), so every receive paid a page fault per 4 KiB
 * before UCX could write into it: pulls from a separately started block
 * server ran at 0.3 GB/s instead of 2.2 (bench/RESULTS.md, 2026-11-22).
 * A process whose malloc had been warmed up by earlier large frees did not
 * show it, which is why the benchmark's own server child hid it.
 *
 * Buffers of at least NET_BUF_MIN bytes are allocated with their size
 * rounded up to NET_BUF_ROUND, so a buffer handed back with its message
 * length is known to have that rounded capacity; they are plain malloc
 * memory, so a user may still kvt_free one (it is then simply not reused).
 * At most NET_BUF_IDLE bytes wait idle per worker; beyond, a handed-back
 * buffer is freed. */
#include "net/netInt.h"

#include "common/alloc.h"

static size_t buf_cap(size_t len)
{
    return (len + NET_BUF_ROUND - 1) / NET_BUF_ROUND * NET_BUF_ROUND;
}

void *kvt_net_buf_get(kvt_net_worker_t *w, size_t len)
{
    if (len < NET_BUF_MIN)
        return kvt_malloc("net message", len ? len : 1);
    size_t cap = buf_cap(len);
    for (size_t i = w->n_bufs; i-- > 0;) {
        if (w->bufs[i].cap != cap)
            continue;
        void *p = w->bufs[i].p;
        w->bufs[i] = w->bufs[--w->n_bufs];
        w->bufs_idle -= cap;
        return p;
    }
    return kvt_malloc("net message", cap);
}

void kvt_net_buf_put(kvt_net_worker_t *w, void *buf, size_t len)
{
    if (!buf)
        return;
    size_t cap = buf_cap(len);
    if (len < NET_BUF_MIN || w->n_bufs == NET_BUF_SLOTS || w->bufs_idle + cap > NET_BUF_IDLE) {
        kvt_free(buf);
        return;
    }
    w->bufs[w->n_bufs++] = (net_buf_t){.p = buf, .cap = cap};
    w->bufs_idle += cap;
}

void kvt_net_buf_destroy_all(kvt_net_worker_t *w)
{
    while (w->n_bufs)
        kvt_free(w->bufs[--w->n_bufs].p);
    w->bufs_idle = 0;
}

void kvt_net_reply_free(kvt_net_worker_t *w, void *reply, size_t len)
{
    if (w)
        kvt_net_buf_put(w, reply, len);
    else
        kvt_free(reply);
}
