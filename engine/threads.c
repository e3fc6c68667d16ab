/* Persistent thread pool with a parallel-for; see threads.h.
 *
 * A job is published by bumping `gen` after its fields are written; each
 * worker runs chunks taken from the shared `next` counter until the items
 * run out, then decrements `busy`.  The caller runs chunks too, then waits
 * for busy == 0, so at most one job is ever in flight and every worker sees
 * each generation exactly once.
 *
 * Sleeping without lost wake-ups: a waiter announces itself (sleepers /
 * caller_waiting) and re-checks the condition under the mutex; the waker
 * changes the condition first and then reads the announcement.  With
 * sequentially consistent atomics on both sides at least one of them sees
 * the other, and the waker signals under the mutex. */
#include "engine/threads.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

/* How long a waiting thread spins before it sleeps: jobs of one forward
 * pass follow each other within microseconds. */
#define SPIN_NS 200000ull
#define YIELD_NS 5000ull

typedef struct {
    struct kvt_threads *pool;
    uint32_t tid;
} worker_arg_t;

struct kvt_threads {
    uint32_t n;
    pthread_t *tids;
    worker_arg_t *args;
    uint32_t n_started;
    pthread_mutex_t mu;
    pthread_cond_t cv_start;
    pthread_cond_t cv_done;
    _Atomic uint64_t gen;
    _Atomic size_t next;
    _Atomic uint32_t busy;
    _Atomic uint32_t sleepers;
    _Atomic int caller_waiting;
    _Atomic bool stop;
    /* the current job; written before gen is bumped */
    kvt_threads_fn fn;
    void *arg;
    size_t n_items;
    size_t grain;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* True when the spin budget is spent.  Past YIELD_NS a spinning thread
 * also yields: when the machine is oversubscribed, the thread it waits for
 * may be queued behind it on the same CPU. */
static bool spin_or_yield(uint64_t start)
{
    uint64_t spent = kvt_time_ns() - start;
    if (spent > SPIN_NS)
        return true;
    if (spent > YIELD_NS)
        sched_yield();
    return false;
}

static void run_chunks(struct kvt_threads *t, uint32_t tid)
{
    for (;;) {
        size_t b = atomic_fetch_add_explicit(&t->next, t->grain, memory_order_relaxed);
        if (b >= t->n_items)
            break;
        size_t e = b + t->grain < t->n_items ? b + t->grain : t->n_items;
        t->fn(t->arg, b, e, tid);
    }
}

/* Wait until gen moves past `seen` (or stop); returns the new gen. */
static uint64_t wait_job(struct kvt_threads *t, uint64_t seen)
{
    uint64_t start = kvt_time_ns();
    for (unsigned i = 0;; i++) {
        uint64_t g = atomic_load(&t->gen);
        if (g != seen || atomic_load(&t->stop))
            return g;
        if ((i & 63) == 63 && spin_or_yield(start))
            break;
        cpu_relax();
    }
    pthread_mutex_lock(&t->mu);
    atomic_fetch_add(&t->sleepers, 1);
    uint64_t g;
    while ((g = atomic_load(&t->gen)) == seen && !atomic_load(&t->stop))
        pthread_cond_wait(&t->cv_start, &t->mu);
    atomic_fetch_sub(&t->sleepers, 1);
    pthread_mutex_unlock(&t->mu);
    return g;
}

static void *worker_main(void *p)
{
    worker_arg_t *wa = p;
    struct kvt_threads *t = wa->pool;
    uint64_t seen = 0; /* no job is published before create returns */
    for (;;) {
        seen = wait_job(t, seen);
        if (atomic_load(&t->stop))
            break;
        run_chunks(t, wa->tid);
        if (atomic_fetch_sub(&t->busy, 1) == 1 && atomic_load(&t->caller_waiting)) {
            pthread_mutex_lock(&t->mu);
            pthread_cond_signal(&t->cv_done);
            pthread_mutex_unlock(&t->mu);
        }
    }
    return NULL;
}

static void wait_done(struct kvt_threads *t)
{
    uint64_t start = kvt_time_ns();
    for (unsigned i = 0;; i++) {
        if (atomic_load(&t->busy) == 0)
            return;
        if ((i & 63) == 63 && spin_or_yield(start))
            break;
        cpu_relax();
    }
    pthread_mutex_lock(&t->mu);
    atomic_store(&t->caller_waiting, 1);
    while (atomic_load(&t->busy) != 0)
        pthread_cond_wait(&t->cv_done, &t->mu);
    atomic_store(&t->caller_waiting, 0);
    pthread_mutex_unlock(&t->mu);
}

void kvt_threads_for(kvt_threads_t *t, size_t n_items, size_t grain, kvt_threads_fn fn, void *arg)
{
    if (n_items == 0)
        return;
    if (grain == 0) {
        grain = n_items / ((size_t)t->n * 8);
        grain = grain ? grain : 1;
    }
    if (t->n == 1 || n_items <= grain) {
        fn(arg, 0, n_items, 0);
        return;
    }
    t->fn = fn;
    t->arg = arg;
    t->n_items = n_items;
    t->grain = grain;
    atomic_store(&t->next, 0);
    atomic_store(&t->busy, t->n - 1);
    atomic_fetch_add(&t->gen, 1);
    if (atomic_load(&t->sleepers) > 0) {
        pthread_mutex_lock(&t->mu);
        pthread_cond_broadcast(&t->cv_start);
        pthread_mutex_unlock(&t->mu);
    }
    run_chunks(t, 0);
    wait_done(t);
}

static void stop_workers(struct kvt_threads *t)
{
    pthread_mutex_lock(&t->mu);
    atomic_store(&t->stop, true);
    pthread_cond_broadcast(&t->cv_start);
    pthread_mutex_unlock(&t->mu);
    for (uint32_t i = 0; i < t->n_started; i++)
        pthread_join(t->tids[i], NULL);
    t->n_started = 0;
}

kvt_status_t kvt_threads_create(uint32_t n_threads, kvt_threads_t **threads_p)
{
    if (n_threads == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = online > 0 ? (uint32_t)online : 1;
    }
    if (n_threads > KVT_THREADS_MAX)
        n_threads = KVT_THREADS_MAX;
    kvt_status_t st = KVT_ERR_NOMEM;
    struct kvt_threads *t = kvt_calloc("threads", 1, sizeof(*t));
    if (!t)
        return KVT_ERR_NOMEM;
    t->n = n_threads;
    t->tids = kvt_calloc("threads.tids", n_threads, sizeof(*t->tids));
    t->args = kvt_calloc("threads.args", n_threads, sizeof(*t->args));
    if (!t->tids || !t->args)
        goto err_free;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv_start, NULL);
    pthread_cond_init(&t->cv_done, NULL);
    for (uint32_t i = 1; i < n_threads; i++) {
        t->args[i - 1] = (worker_arg_t){.pool = t, .tid = i};
        int rc = pthread_create(&t->tids[i - 1], NULL, worker_main, &t->args[i - 1]);
        if (rc != 0) {
            kvt_log_error("thread start failed n_threads=%u err=%s", n_threads, strerror(rc));
            st = KVT_ERR_INVALID;
            goto err_stop;
        }
        t->n_started++;
    }
    *threads_p = t;
    return KVT_OK;

err_stop:
    stop_workers(t);
    pthread_cond_destroy(&t->cv_done);
    pthread_cond_destroy(&t->cv_start);
    pthread_mutex_destroy(&t->mu);
err_free:
    kvt_free(t->args);
    kvt_free(t->tids);
    kvt_free(t);
    return st;
}

void kvt_threads_destroy(kvt_threads_t *t)
{
    if (!t)
        return;
    stop_workers(t);
    pthread_cond_destroy(&t->cv_done);
    pthread_cond_destroy(&t->cv_start);
    pthread_mutex_destroy(&t->mu);
    kvt_free(t->args);
    kvt_free(t->tids);
    kvt_free(t);
}

uint32_t kvt_threads_count(const kvt_threads_t *t) { return t->n; }
