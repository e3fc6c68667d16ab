/* A blocking FIFO of pointers between threads (the nodes hand requests
 * from their network thread to their engine thread with it).
 *
 * Bounded: push fails with KVT_ERR_FULL at max items, so a flood of
 * requests is refused instead of queued without limit.  Items are the
 * caller's; the queue never frees them (drain before destroy). */
#ifndef KVT_COMMON_QUEUE_H
#define KVT_COMMON_QUEUE_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct kvt_queue kvt_queue_t;

kvt_status_t kvt_queue_create(size_t max_items, kvt_queue_t **queue_p);
void kvt_queue_destroy(kvt_queue_t *queue);
/* KVT_ERR_FULL at max_items, KVT_ERR_NOMEM. */
kvt_status_t kvt_queue_push(kvt_queue_t *queue, void *item);
/* The oldest item, waiting up to timeout_ms (0: do not wait); NULL if none
 * came or the queue was woken by kvt_queue_wake. */
void *kvt_queue_pop(kvt_queue_t *queue, int timeout_ms);
/* Remove and return the first item for which match(item, arg) is true. */
void *kvt_queue_remove(kvt_queue_t *queue, bool (*match)(const void *item, const void *arg),
                       const void *arg);
size_t kvt_queue_len(kvt_queue_t *queue);
/* Wake a thread blocked in pop (it returns NULL). */
void kvt_queue_wake(kvt_queue_t *queue);

#endif
