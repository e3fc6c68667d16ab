/* kvt_pfor: see pfor.h.  A loop is published under the lock with a new
 * generation number; helpers that see it take items from the shared
 * counter until it runs past n, then check in.  The caller takes items
 * too and returns only after every helper has checked in for this
 * generation, so no helper touches fn or arg after kvt_pfor_run returns. */
#include "common/pfor.h"

#include "common/alloc.h"
#include "common/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct kvt_pfor {
    pthread_mutex_t lock;
    pthread_cond_t go, done;
    pthread_t *threads;
    unsigned n_threads;     /* started */
    uint64_t gen;           /* the loop being run; under lock */
    unsigned out;           /* helpers yet to check in for gen; under lock */
    bool stop;              /* under lock */
    size_t n;               /* the loop: set under lock before gen moves */
    void (*fn)(void *, size_t);
    void *arg;
    _Atomic size_t next;
};

static void take_items(kvt_pfor_t *pf)
{
    size_t i;
    while ((i = atomic_fetch_add(&pf->next, 1)) < pf->n)
        pf->fn(pf->arg, i);
}

static void *helper_main(void *p)
{
    kvt_pfor_t *pf = p;
    uint64_t seen = 0; /* the generation at create: a loop published before
                          this thread first runs is still this thread's */
    pthread_mutex_lock(&pf->lock);
    for (;;) {
        while (!pf->stop && pf->gen == seen)
            pthread_cond_wait(&pf->go, &pf->lock);
        if (pf->stop)
            break;
        seen = pf->gen;
        pthread_mutex_unlock(&pf->lock);
        take_items(pf);
        pthread_mutex_lock(&pf->lock);
        if (--pf->out == 0)
            pthread_cond_signal(&pf->done);
    }
    pthread_mutex_unlock(&pf->lock);
    return NULL;
}

kvt_status_t kvt_pfor_create(unsigned n_helpers, kvt_pfor_t **pf_p)
{
    kvt_pfor_t *pf = kvt_calloc("pfor", 1, sizeof(*pf));
    if (!pf)
        return KVT_ERR_NOMEM;
    pthread_mutex_init(&pf->lock, NULL);
    pthread_cond_init(&pf->go, NULL);
    pthread_cond_init(&pf->done, NULL);
    if (n_helpers && !(pf->threads = kvt_calloc("pfor threads", n_helpers, sizeof(pthread_t)))) {
        kvt_pfor_destroy(pf);
        return KVT_ERR_NOMEM;
    }
    for (unsigned i = 0; i < n_helpers; i++) {
        int rc = pthread_create(&pf->threads[i], NULL, helper_main, pf);
        if (rc != 0) {
            kvt_log_error("pfor cannot start a thread n=%u started=%u rc=%d", n_helpers, i, rc);
            kvt_pfor_destroy(pf);
            return KVT_ERR_IO;
        }
        pf->n_threads++;
    }
    *pf_p = pf;
    return KVT_OK;
}

void kvt_pfor_destroy(kvt_pfor_t *pf)
{
    if (!pf)
        return;
    pthread_mutex_lock(&pf->lock);
    pf->stop = true;
    pthread_cond_broadcast(&pf->go);
    pthread_mutex_unlock(&pf->lock);
    for (unsigned i = 0; i < pf->n_threads; i++)
        pthread_join(pf->threads[i], NULL);
    kvt_free(pf->threads);
    pthread_cond_destroy(&pf->done);
    pthread_cond_destroy(&pf->go);
    pthread_mutex_destroy(&pf->lock);
    kvt_free(pf);
}

void kvt_pfor_run(kvt_pfor_t *pf, size_t n, void (*fn)(void *arg, size_t i), void *arg)
{
    if (!pf || pf->n_threads == 0 || n < 2) {
        for (size_t i = 0; i < n; i++)
            fn(arg, i);
        return;
    }
    pthread_mutex_lock(&pf->lock);
    pf->n = n;
    pf->fn = fn;
    pf->arg = arg;
    atomic_store(&pf->next, 0);
    pf->out = pf->n_threads;
    pf->gen++;
    pthread_cond_broadcast(&pf->go);
    pthread_mutex_unlock(&pf->lock);
    take_items(pf);
    pthread_mutex_lock(&pf->lock);
    while (pf->out > 0)
        pthread_cond_wait(&pf->done, &pf->lock);
    pthread_mutex_unlock(&pf->lock);
}
