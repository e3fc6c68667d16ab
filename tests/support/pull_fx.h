/* The fixture shared by the block-pull tests (test_pull.c, whole blocks;
 * test_pull_tail.c, partial tails): a tier under a fresh directory with
 * two chains that share their first 3 blocks, a block server in this
 * process on its own thread and worker, a client worker, and the raw
 * request helpers that bypass the block client.  Each test file has its
 * own copy of g_id (set by its main) and of these helpers. */
#ifndef KVT_TESTS_SUPPORT_PULL_FX_H
#define KVT_TESTS_SUPPORT_PULL_FX_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "common/time.h"
#include "kvstore/block_client.h"
#include "kvstore/block_server.h"
#include "kvstore/tail.h"
#include "proto/msg.h"
#include "tests/support/testutil.h"

#include <signal.h>
#include <sys/wait.h>

#define TIMEOUT_MS 3000

static kvt_block_identity_t g_id;

typedef struct {
    char *dir;
    kvt_tier_t *tier;
    kvt_block_server_t *srv;
    kvt_tail_store_t *tails; /* handed to the server when set before start */
    tu_chain_t a, b;
    char addr[64];
    kvt_net_worker_t *worker;
    kvt_block_client_t *client;
    pid_t daemon; /* a `kvtier kv serve` to kill at teardown (a failed
                     assertion must not leave it holding ctest's pipes) */
} fx_t;

static inline void fill_tier(fx_t *fx, uint32_t host_slots)
{
    kvt_tier_params_t p = {.data_dir = fx->dir, .identity = &g_id,
                           .host_capacity_bytes = host_slots * tu_payload_len(&g_id)};
    assert_int_equal(kvt_tier_open(&p, &fx->tier), KVT_OK);
    for (int i = 0; i < fx->a.n; i++)
        assert_int_equal(kvt_tier_put(fx->tier, &fx->a.hdr[i], fx->a.payload[i]), KVT_OK);
    for (int i = 3; i < fx->b.n; i++)
        assert_int_equal(kvt_tier_put(fx->tier, &fx->b.hdr[i], fx->b.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(fx->tier), KVT_OK);
}

/* rma: serve by RMA under leases, else inline; client_max_msg: the client
 * worker's message cap (0: the default), which bounds inline replies. */
static inline void start_server_with(fx_t *fx, uint32_t lease_ms, bool rma, size_t client_max_msg)
{
    kvt_block_server_params_t sp = {.tier = fx->tier, .listen = "127.0.0.1:0",
                                    .lease_ms = lease_ms, .rma = rma, .tails = fx->tails};
    assert_int_equal(kvt_block_server_start(&sp, &fx->srv), KVT_OK);
    snprintf(fx->addr, sizeof(fx->addr), "127.0.0.1:%u", kvt_block_server_port(fx->srv));
    kvt_net_worker_params_t wp = {.max_msg_bytes = client_max_msg};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
}

static inline void start_server(fx_t *fx, uint32_t lease_ms) { start_server_with(fx, lease_ms, false, 0); }

static inline void start_rma_server(fx_t *fx, uint32_t lease_ms) { start_server_with(fx, lease_ms, true, 0); }

static inline int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    fx->dir = tu_tmpdir("pull");
    tu_chain_make(&fx->a, &g_id, 8, 1, NULL, 0);
    tu_chain_make(&fx->b, &g_id, 6, 2, &fx->a, 3); /* shares a's first 3 blocks */
    *state = fx;
    return 0;
}

static inline int fx_teardown(void **state)
{
    fx_t *fx = *state;
    kvt_block_client_close(fx->client);
    if (fx->worker)
        kvt_net_worker_destroy(fx->worker);
    if (fx->daemon > 0) {
        kill(fx->daemon, SIGKILL);
        waitpid(fx->daemon, NULL, 0);
    }
    kvt_block_server_stop(fx->srv);
    kvt_tail_store_destroy(fx->tails);
    kvt_tier_close(fx->tier);
    tu_chain_free(&fx->a);
    tu_chain_free(&fx->b);
    tu_rmtree(fx->dir);
    free(fx->dir);
    free(fx);
    return 0;
}

/* items for keys of chain c from..to, each with its own buffer */
static inline kvt_pull_t *items_for(const tu_chain_t *c, int from, int to)
{
    kvt_pull_t *items = calloc((size_t)(to - from), sizeof(*items));
    for (int i = from; i < to; i++) {
        items[i - from].key = c->hdr[i].key;
        items[i - from].cap = tu_payload_len(&g_id);
        items[i - from].dst = calloc(1, items[i - from].cap);
    }
    return items;
}

static inline void items_free(kvt_pull_t *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i].dst);
    free(items);
}

static inline kvt_block_server_stats_t server_stats(fx_t *fx)
{
    kvt_block_server_stats_t s;
    kvt_block_server_stats(fx->srv, &s);
    return s;
}

static inline void pull_chain_ok(fx_t *fx)
{
    kvt_pull_t *items = items_for(&fx->a, 0, 8);
    assert_int_equal(kvt_block_client_pull(fx->client, items, 8, &g_id, TIMEOUT_MS), KVT_OK);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(items[i].status, KVT_OK);
        assert_true(tu_payload_ok(&g_id, &fx->a.hdr[i].key, items[i].dst));
        assert_int_equal(items[i].hdr.index, (uint32_t)i);
    }
    items_free(items, 8);
}

/* --- raw messages --- */

static inline kvt_status_t raw_request(fx_t *fx, const void *buf, size_t len, kvt_msg_t **reply_p)
{
    kvt_block_client_close(fx->client); /* use our own endpoint */
    fx->client = NULL;
    kvt_net_ep_t *ep;
    kvt_status_t st = kvt_net_connect(fx->worker, fx->addr, TIMEOUT_MS, &ep);
    if (st != KVT_OK)
        return st;
    void *rep;
    size_t rep_len;
    st = kvt_net_request(ep, buf, len, TIMEOUT_MS, &rep, &rep_len);
    if (st == KVT_OK) {
        st = kvt_msg_decode(rep, rep_len, reply_p);
        kvt_free(rep);
    }
    kvt_net_ep_close(ep);
    return st;
}

static inline void expect_error(fx_t *fx, const void *buf, size_t len)
{
    kvt_msg_t *rep = NULL;
    assert_int_equal(raw_request(fx, buf, len, &rep), KVT_OK);
    assert_int_equal(rep->body_case, KVTIER__ENVELOPE__BODY_ERROR);
    assert_true(rep->error->code > 0);
    kvt_msg_free(rep);
}

/* Polls the server until no lease is held, at most timeout_ms. */
static inline bool leases_gone(fx_t *fx, int timeout_ms)
{
    uint64_t end = kvt_time_ns() + (uint64_t)timeout_ms * 1000000;
    while (kvt_time_ns() < end) {
        if (server_stats(fx).leases_active == 0)
            return true;
        kvt_net_worker_wait(fx->worker, 20);
    }
    return false;
}

#endif
