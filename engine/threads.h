/* A small persistent thread pool with one operation: parallel-for.
 *
 * The engine runs every heavy step (matmul, attention, element-wise passes)
 * as a parallel-for over independent items.  Workers are created once and
 * wait between jobs: they spin briefly (a forward pass issues jobs
 * back-to-back, and a futex wake-up would cost more than most jobs), then
 * sleep on a condition variable, so an idle engine costs no CPU.
 *
 * Items are handed out dynamically in chunks, so which thread runs an item
 * is not fixed.  Callers must therefore make each item's result depend only
 * on the item (never on the thread or on chunk boundaries); that is what
 * keeps the engine's output independent of the thread count.
 *
 * One caller at a time: kvt_threads_for is not re-entrant and must not be
 * called from inside an item. */
#ifndef KVT_ENGINE_THREADS_H
#define KVT_ENGINE_THREADS_H

#include "common/status.h"

#include <stddef.h>
#include <stdint.h>

#define KVT_THREADS_MAX 256

typedef struct kvt_threads kvt_threads_t;

/* Run items [begin, end) on thread `tid` (0 = the caller, < count). */
typedef void (*kvt_threads_fn)(void *arg, size_t begin, size_t end, uint32_t tid);

/* n_threads includes the caller (1 = no workers); 0 = online cores.
 * KVT_ERR_NOMEM, or KVT_ERR_INVALID if a thread cannot be started. */
kvt_status_t kvt_threads_create(uint32_t n_threads, kvt_threads_t **threads_p);
void kvt_threads_destroy(kvt_threads_t *threads);
uint32_t kvt_threads_count(const kvt_threads_t *threads);

/* Call fn over [0, n_items) in chunks of at most `grain` items (0 = pick
 * one), spread over all threads; returns when every item is done. */
void kvt_threads_for(kvt_threads_t *threads, size_t n_items, size_t grain, kvt_threads_fn fn,
                     void *arg);

#endif
