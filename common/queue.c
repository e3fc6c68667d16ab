/* Blocking bounded FIFO (queue.h): a linked list under one mutex. */
#include "common/queue.h"

#include "common/alloc.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

typedef struct node {
    struct node *next;
    void *item;
} node_t;

struct kvt_queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    node_t *head, *tail;
    size_t len, max;
    bool woken;
};

kvt_status_t kvt_queue_create(size_t max_items, kvt_queue_t **queue_p)
{
    kvt_queue_t *q = kvt_calloc("queue", 1, sizeof(*q));
    if (!q)
        return KVT_ERR_NOMEM;
    pthread_mutex_init(&q->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    q->max = max_items ? max_items : 1;
    *queue_p = q;
    return KVT_OK;
}

void kvt_queue_destroy(kvt_queue_t *q)
{
    if (!q)
        return;
    while (q->head) {
        node_t *n = q->head;
        q->head = n->next;
        kvt_free(n);
    }
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    kvt_free(q);
}

kvt_status_t kvt_queue_push(kvt_queue_t *q, void *item)
{
    node_t *n = kvt_malloc("queue node", sizeof(*n));
    if (!n)
        return KVT_ERR_NOMEM;
    n->next = NULL;
    n->item = item;
    pthread_mutex_lock(&q->lock);
    if (q->len >= q->max) {
        pthread_mutex_unlock(&q->lock);
        kvt_free(n);
        return KVT_ERR_FULL;
    }
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    q->len++;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return KVT_OK;
}

static void *take_locked(kvt_queue_t *q, node_t *prev, node_t *n)
{
    if (prev)
        prev->next = n->next;
    else
        q->head = n->next;
    if (q->tail == n)
        q->tail = prev;
    q->len--;
    void *item = n->item;
    kvt_free(n);
    return item;
}

void *kvt_queue_pop(kvt_queue_t *q, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->lock);
    while (!q->head && !q->woken && timeout_ms > 0)
        if (pthread_cond_timedwait(&q->cond, &q->lock, &until) == ETIMEDOUT)
            break;
    q->woken = false;
    void *item = q->head ? take_locked(q, NULL, q->head) : NULL;
    pthread_mutex_unlock(&q->lock);
    return item;
}

void *kvt_queue_remove(kvt_queue_t *q, bool (*match)(const void *, const void *), const void *arg)
{
    void *item = NULL;
    pthread_mutex_lock(&q->lock);
    for (node_t *prev = NULL, *n = q->head; n; prev = n, n = n->next) {
        if (match(n->item, arg)) {
            item = take_locked(q, prev, n);
            break;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return item;
}

size_t kvt_queue_len(kvt_queue_t *q)
{
    pthread_mutex_lock(&q->lock);
    size_t n = q->len;
    pthread_mutex_unlock(&q->lock);
    return n;
}

void kvt_queue_wake(kvt_queue_t *q)
{
    pthread_mutex_lock(&q->lock);
    q->woken = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}
