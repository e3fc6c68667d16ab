/* The block server's promotion thread: a FIFO of jobs in, a list of done
 * jobs out, one mutex over both, and a condition the thread waits on.
 * The network thread keeps its own list of the jobs out (out_next), which
 * it alone reads and writes: that is what submit counts against the
 * bounds and what forget walks. */
#include "kvstore/block_promote.h"

#include "common/alloc.h"
#include "common/log.h"

#include <pthread.h>
#include <string.h>

#define DEFAULT_MAX_JOBS 64
#define DEFAULT_MAX_PER_CONN 4 /* a block client keeps at most four requests in flight */

typedef kvt_block_promote_job_t job_t;

struct kvt_block_promote {
    kvt_tier_t *tier;
    kvt_net_worker_t *worker;
    uint32_t max_jobs, max_per_conn;
    pthread_t thread;
    pthread_mutex_t lock;       /* guards the queue, done and the flags */
    pthread_cond_t changed;
    job_t *queue, *queue_tail;
    job_t *done, *done_tail;
    bool held, stopping;
    /* network thread only */
    job_t *out;
    uint32_t n_out;
};

static void list_push(job_t **head, job_t **tail, job_t *job)
{
    job->next = NULL;
    if (*tail)
        (*tail)->next = job;
    else
        *head = job;
    *tail = job;
}

/* --- jobs --- */

kvt_block_promote_job_t *kvt_block_promote_job_create(size_t n_keys)
{
    job_t *job = kvt_calloc("block server fetch", 1, sizeof(*job));
    if (!job)
        return NULL;
    job->n_keys = n_keys;
    job->keys = kvt_malloc("block server fetch keys", (n_keys + 1) * sizeof(*job->keys));
    job->views = kvt_calloc("block server views", n_keys + 1, sizeof(*job->views));
    job->state = kvt_calloc("block server fetch states", n_keys + 1, sizeof(*job->state));
    if (!job->keys || !job->views || !job->state) {
        kvt_block_promote_job_destroy(NULL, job); /* nothing pinned */
        return NULL;
    }
    return job;
}

void kvt_block_promote_job_destroy(kvt_tier_t *tier, kvt_block_promote_job_t *job)
{
    for (size_t i = 0; job->views && job->state && i < job->n_keys; i++)
        if (job->state[i] == KVT_PROMOTE_PINNED)
            kvt_tier_unpin(tier, &job->views[i]);
    kvt_free(job->keys);
    kvt_free(job->views);
    kvt_free(job->state);
    kvt_free(job);
}

size_t kvt_block_promote_job_pin_resident(kvt_tier_t *tier, kvt_block_promote_job_t *job)
{
    size_t n_cold = 0;
    for (size_t i = 0; i < job->n_keys; i++) {
        kvt_status_t st = kvt_tier_pin_resident(tier, &job->keys[i], &job->views[i]);
        job->state[i] = st == KVT_OK              ? KVT_PROMOTE_PINNED
                        : st == KVT_ERR_AGAIN     ? KVT_PROMOTE_COLD
                        : st == KVT_ERR_NOT_FOUND ? KVT_PROMOTE_MISSING
                                                  : KVT_PROMOTE_FAILED;
        n_cold += st == KVT_ERR_AGAIN;
    }
    return n_cold;
}

/* --- the thread --- */

/* A fetch names a chain, and T1 takes no block without its parent, so
 * once one promotion fails (T1 full of pinned blocks, or the parent not
 * in T1) every later one would fail too -- each after a full T2 read, on
 * the one thread every client's cold fetch waits for.  So the rest are
 * FAILED unread, and the job logs one line.  (A block that T2 no longer
 * holds is MISSING, as are its descendants, found so without a read.) */
static void promote_job(kvt_block_promote_t *p, job_t *job)
{
    size_t failed = 0, first = 0;
    kvt_status_t why = KVT_OK;
    for (size_t i = 0; i < job->n_keys; i++) {
        if (job->state[i] != KVT_PROMOTE_COLD)
            continue;
        if (atomic_load(&job->cancelled))
            break; /* nobody will read it: the rest stay cold, unpinned */
        kvt_status_t st = failed ? KVT_ERR_NO_PARENT
                                 : kvt_tier_pin_promote(p->tier, &job->keys[i], &job->views[i]);
        job->state[i] = st == KVT_OK                ? KVT_PROMOTE_PINNED
                        : st == KVT_ERR_NOT_FOUND ? KVT_PROMOTE_MISSING
                                                  : KVT_PROMOTE_FAILED;
        if (st != KVT_OK && st != KVT_ERR_NOT_FOUND && failed++ == 0) {
            first = i;
            why = st;
        }
    }
    if (failed) {
        char hex[2 * KVT_KEY_LEN + 1];
        kvt_block_key_hex(&job->keys[first], hex);
        kvt_log_warn("block server promotion failed key=%s err=\"%s\" blocks=%zu", hex,
                     kvt_status_str(why), failed);
    }
}

static void *promote_main(void *arg)
{
    kvt_block_promote_t *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stopping && (p->held || !p->queue))
            pthread_cond_wait(&p->changed, &p->lock);
        if (p->stopping)
            break;
        job_t *job = p->queue;
        p->queue = job->next;
        if (!p->queue)
            p->queue_tail = NULL;
        pthread_mutex_unlock(&p->lock);
        promote_job(p, job);
        pthread_mutex_lock(&p->lock);
        list_push(&p->done, &p->done_tail, job);
        kvt_net_worker_signal(p->worker); /* any thread may */
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* --- create / destroy --- */

kvt_status_t kvt_block_promote_create(const kvt_block_promote_params_t *params,
                                      kvt_block_promote_t **promote_p)
{
    kvt_block_promote_t *p = kvt_calloc("block promote", 1, sizeof(*p));
    if (!p)
        return KVT_ERR_NOMEM;
    p->tier = params->tier;
    p->worker = params->worker;
    p->max_jobs = params->max_jobs ? params->max_jobs : DEFAULT_MAX_JOBS;
    p->max_per_conn = params->max_per_conn ? params->max_per_conn : DEFAULT_MAX_PER_CONN;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->changed, NULL);
    int rc = pthread_create(&p->thread, NULL, promote_main, p);
    if (rc != 0) {
        kvt_log_error("cannot start the block server's promotion thread err=\"%s\"", strerror(rc));
        pthread_cond_destroy(&p->changed);
        pthread_mutex_destroy(&p->lock);
        kvt_free(p);
        return KVT_ERR_NOMEM;
    }
    *promote_p = p;
    return KVT_OK;
}

void kvt_block_promote_destroy(kvt_block_promote_t *p, kvt_block_promote_done_fn done, void *arg)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    for (job_t *job = p->out; job; job = job->out_next)
        atomic_store(&job->cancelled, true); /* the one being promoted stops early */
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    /* Every job out is queued or done now, and ours. */
    while (p->out) {
        job_t *job = p->out;
        p->out = job->out_next;
        done(job, arg);
    }
    pthread_cond_destroy(&p->changed);
    pthread_mutex_destroy(&p->lock);
    kvt_free(p);
}

/* --- the network thread's side --- */

uint32_t kvt_block_promote_out(const kvt_block_promote_t *p, const kvt_net_ep_t *ep)
{
    if (!ep)
        return p->n_out;
    uint32_t n = 0;
    for (const job_t *job = p->out; job; job = job->out_next)
        n += job->ep == ep;
    return n;
}

kvt_status_t kvt_block_promote_submit(kvt_block_promote_t *p, job_t *job)
{
    if (p->n_out >= p->max_jobs || kvt_block_promote_out(p, job->ep) >= p->max_per_conn)
        return KVT_ERR_BUSY;
    atomic_store(&job->cancelled, false);
    job->out_next = p->out;
    p->out = job;
    p->n_out++;
    pthread_mutex_lock(&p->lock);
    list_push(&p->queue, &p->queue_tail, job);
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    return KVT_OK;
}

static void out_remove(kvt_block_promote_t *p, const job_t *job)
{
    for (job_t **pp = &p->out; *pp; pp = &(*pp)->out_next) {
        if (*pp == job) {
            *pp = job->out_next;
            p->n_out--;
            return;
        }
    }
}

void kvt_block_promote_collect(kvt_block_promote_t *p, kvt_block_promote_done_fn done, void *arg)
{
    pthread_mutex_lock(&p->lock);
    job_t *list = p->done;
    p->done = p->done_tail = NULL;
    pthread_mutex_unlock(&p->lock);
    while (list) {
        job_t *job = list;
        list = job->next;
        out_remove(p, job);
        done(job, arg);
    }
}

size_t kvt_block_promote_forget(kvt_block_promote_t *p, const kvt_net_ep_t *ep)
{
    size_t n = 0;
    if (!ep)
        return 0; /* forgotten jobs have no ep: not theirs to count */
    for (job_t *job = p->out; job; job = job->out_next) {
        if (job->ep != ep)
            continue;
        job->ep = NULL;
        atomic_store(&job->cancelled, true);
        n++;
    }
    return n;
}

void kvt_block_promote_hold(kvt_block_promote_t *p, bool hold)
{
    pthread_mutex_lock(&p->lock);
    p->held = hold;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
}
