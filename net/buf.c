/* net message buffers: large message buffers (received messages, and
 * what users send from, kvt_net_buf_alloc) are kept for reuse instead of
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
 * rounded up to NET_BUF_ROUND, so a buffer handed back with its length is
 * known to hold at least that rounded capacity; they are plain malloc
 * memory, so a user may still kvt_free one (it is then simply not reused).
 * At most NET_BUF_IDLE bytes wait idle per worker; beyond, a handed-back
 * buffer is freed. */
#include "net/netInt.h"

#include "common/alloc.h"

static size_t buf_cap(size_t len)
{
    return (len + NET_BUF_ROUND - 1) / NET_BUF_ROUND * NET_BUF_ROUND;
}

/* The smallest idle buffer that holds cap without wasting more than as
 * much again (message sizes vary a little: a block server's replies). */
void *kvt_net_buf_alloc(kvt_net_worker_t *w, size_t len)
{
    if (len < NET_BUF_MIN)
        return kvt_malloc("net message", len ? len : 1);
    size_t cap = buf_cap(len), best = w->n_bufs;
    for (size_t i = 0; i < w->n_bufs; i++)
        if (w->bufs[i].cap >= cap && w->bufs[i].cap / 2 <= cap &&
            (best == w->n_bufs || w->bufs[i].cap < w->bufs[best].cap))
            best = i;
    if (best == w->n_bufs)
        return kvt_malloc("net message", cap);
    void *p = w->bufs[best].p;
    w->bufs_idle -= w->bufs[best].cap;
    w->bufs[best] = w->bufs[--w->n_bufs];
    return p;
}

/* len's rounded capacity is what the buffer is known to hold: a larger
 * idle buffer that alloc handed out is filed under less than it has,
 * which is safe. */
void kvt_net_buf_free(kvt_net_worker_t *w, void *buf, size_t len)
{
    if (!buf)
        return;
    size_t cap = buf_cap(len);
    if (!w || len < NET_BUF_MIN || w->n_bufs == NET_BUF_SLOTS || w->bufs_idle + cap > NET_BUF_IDLE) {
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
