/* A parallel loop over a small pool of threads that belongs to one user
 * (e.g. a block client): kvt_pfor_run(pf, n, fn, arg) calls fn(arg, i) for
 * every i in [0, n) exactly once, on the caller's thread and the pool's,
 * and returns when every call has returned.  Items are handed out one at a
 * time (an atomic counter), so uneven items balance themselves.
 *
 * Ownership: the pool's threads are its own; destroy joins them.  One
 * kvt_pfor_run at a time per pool (the owner's thread); fn must be safe to
 * call from several threads at once for different i.  A process that
 * forks keeps the pool only in the parent. */
#ifndef KVT_COMMON_PFOR_H
#define KVT_COMMON_PFOR_H

#include "common/status.h"

#include <stddef.h>

typedef struct kvt_pfor kvt_pfor_t;

/* A pool of n_helpers threads (0: every loop runs on the caller alone).
 * KVT_ERR_NOMEM, or KVT_ERR_IO when a thread cannot be started. */
kvt_status_t kvt_pfor_create(unsigned n_helpers, kvt_pfor_t **pf_p);
void kvt_pfor_destroy(kvt_pfor_t *pf);
/* fn(arg, i) for i in [0, n); pf may be NULL (then all on the caller). */
void kvt_pfor_run(kvt_pfor_t *pf, size_t n, void (*fn)(void *arg, size_t i), void *arg);

#endif
