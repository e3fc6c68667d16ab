/* The block server's promotion thread (kvstore/block_server.c only).
 *
 * The server's network thread pins only what T1 holds
 * (kvt_tier_pin_resident).  A fetch that names blocks only T2 holds
 * becomes a job here: one thread takes jobs in order, promotes each such
 * block (kvt_tier_pin_promote: T2 read, checked, put into T1, pinned),
 * queues the job as done and wakes the network thread
 * (kvt_net_worker_signal), which collects it and replies.  A slow disk
 * read so delays only the fetches queued behind it, never the network
 * thread.
 *
 * Ownership: a submitted job's keys, views and states are the promotion
 * thread's until the network thread collects the job; its ep, request
 * fields and the list of jobs out are the network thread's alone, so the
 * promotion thread never sees an endpoint.  A client that goes away while
 * its job is out loses it (forget: ep becomes NULL, and blocks not yet
 * promoted are not); the job still comes back, so its pins are given back
 * exactly once, on the network thread.
 *
 * Every call but hold is made on the network thread. */
#ifndef KVT_KVSTORE_BLOCK_PROMOTE_H
#define KVT_KVSTORE_BLOCK_PROMOTE_H

#include "kvstore/tier.h"
#include "net/net.h"

#include <stdatomic.h>

typedef struct kvt_block_promote kvt_block_promote_t;

/* What a fetch holds for one key (0: not looked at yet). */
enum {
    KVT_PROMOTE_PINNED = 1, /* views[i] is a pin in T1 */
    KVT_PROMOTE_COLD,       /* only T2 holds it: to promote */
    KVT_PROMOTE_MISSING,    /* neither tier holds it */
    KVT_PROMOTE_FAILED,     /* it could not be pinned or promoted */
};

typedef struct kvt_block_promote_job {
    /* The network thread's alone. */
    kvt_net_ep_t *ep;           /* the client; NULL once it went away */
    uint64_t req_id;
    uint32_t lease_ms;          /* as the request asked */
    uint32_t max_reply_bytes;   /* as the request asked */
    bool local_read;            /* the client reads the payloads itself (same host) */
    bool accept_rma;            /* the client takes an RMA reply */
    struct kvt_block_promote_job *out_next;
    /* The promotion thread's while the job is out. */
    size_t n_keys;
    kvt_block_key_t *keys;
    kvt_block_view_t *views;
    uint8_t *state;             /* KVT_PROMOTE_* per key */
    _Atomic bool cancelled;     /* set by forget and destroy: promote no more */
    struct kvt_block_promote_job *next; /* queue link, under the lock */
} kvt_block_promote_job_t;

/* A job handed back; the callee owns it from then on. */
typedef void (*kvt_block_promote_done_fn)(kvt_block_promote_job_t *job, void *arg);

typedef struct {
    kvt_tier_t *tier;           /* borrowed; must outlive the queue */
    kvt_net_worker_t *worker;   /* signalled when a job is done; borrowed */
    uint32_t max_jobs;          /* out at once; 0: 64 */
    uint32_t max_per_conn;      /* out at once for one endpoint; 0: 4 */
} kvt_block_promote_params_t;

/* A job for n_keys keys (the caller fills keys and the network thread's
 * fields), nothing pinned; NULL when out of memory. */
kvt_block_promote_job_t *kvt_block_promote_job_create(size_t n_keys);
/* Unpins what the job still holds (views not taken away) and frees it. */
void kvt_block_promote_job_destroy(kvt_tier_t *tier, kvt_block_promote_job_t *job);
/* Pins the keys T1 holds (kvt_tier_pin_resident: no disk read) and marks
 * the others; returns how many only T2 holds (cold). */
size_t kvt_block_promote_job_pin_resident(kvt_tier_t *tier, kvt_block_promote_job_t *job);

/* Starts the thread.  KVT_ERR_NOMEM when it cannot. */
kvt_status_t kvt_block_promote_create(const kvt_block_promote_params_t *params,
                                      kvt_block_promote_t **promote_p);
/* Stops the thread once its current block is done (the jobs not promoted
 * yet stay so), hands every job still out to done, and frees. */
void kvt_block_promote_destroy(kvt_block_promote_t *promote, kvt_block_promote_done_fn done,
                               void *arg);
/* Hands job out; job->ep counts against its endpoint's bound.
 * KVT_ERR_BUSY when a bound is reached: the job stays the caller's. */
kvt_status_t kvt_block_promote_submit(kvt_block_promote_t *promote, kvt_block_promote_job_t *job);
/* Hands every finished job to done. */
void kvt_block_promote_collect(kvt_block_promote_t *promote, kvt_block_promote_done_fn done,
                               void *arg);
/* ep went away: its jobs lose it (ep NULL, cancelled).  Returns how many. */
size_t kvt_block_promote_forget(kvt_block_promote_t *promote, const kvt_net_ep_t *ep);
/* Jobs out now: of ep, or all when ep is NULL. */
uint32_t kvt_block_promote_out(const kvt_block_promote_t *promote, const kvt_net_ep_t *ep);
/* For tests, from any thread: while held, the thread starts no job
 * (submitted ones wait in the queue, and count against the bounds). */
void kvt_block_promote_hold(kvt_block_promote_t *promote, bool hold);

#endif
