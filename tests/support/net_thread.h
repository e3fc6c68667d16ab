/* A UCX server on its own thread and worker, listening on 127.0.0.1 (any
 * free port), answering every message with the test's on_msg: the frame
 * for in-process fake peers (hostile block and tail servers).  Start
 * returns once it listens; addr is its "127.0.0.1:PORT".  on_msg runs on
 * the server thread. */
#ifndef KVT_TESTS_SUPPORT_NET_THREAD_H
#define KVT_TESTS_SUPPORT_NET_THREAD_H

#include "net/net.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    pthread_t thread;
    _Atomic bool stop;
    _Atomic uint16_t port;
    kvt_net_msg_fn on_msg;
    void *arg;
    char addr[32];
} tu_net_thread_t;

static void *tu_net_thread_main(void *p)
{
    tu_net_thread_t *t = p;
    kvt_net_worker_params_t wp = {.on_msg = t->on_msg, .arg = t->arg};
    kvt_net_worker_t *w;
    kvt_net_listener_t *l;
    if (kvt_net_worker_create(&wp, &w) != KVT_OK || kvt_net_listen(w, "127.0.0.1:0", &l) != KVT_OK)
        abort();
    atomic_store(&t->port, kvt_net_listener_port(l));
    while (!atomic_load(&t->stop))
        kvt_net_worker_wait(w, 20);
    kvt_net_listener_destroy(l);
    kvt_net_worker_destroy(w);
    return NULL;
}

static inline void tu_net_thread_start(tu_net_thread_t *t, kvt_net_msg_fn on_msg, void *arg)
{
    t->on_msg = on_msg;
    t->arg = arg;
    atomic_store(&t->stop, false);
    atomic_store(&t->port, 0);
    if (pthread_create(&t->thread, NULL, tu_net_thread_main, t) != 0)
        abort();
    while (atomic_load(&t->port) == 0)
        usleep(1000);
    snprintf(t->addr, sizeof(t->addr), "127.0.0.1:%u", (unsigned)atomic_load(&t->port));
}

static inline void tu_net_thread_stop(tu_net_thread_t *t)
{
    atomic_store(&t->stop, true);
    pthread_join(t->thread, NULL);
}

#endif
