/* The block server's promotion thread, with real UCX endpoints on
 * 127.0.0.1 and a real RocksDB tier: blocks only T2 holds are served
 * through it (inline and RMA, data checked), and the network thread does
 * not wait for it.  The test holds the thread (kvt_block_server_promote_hold)
 * to keep a cold fetch queued as long as it likes: meanwhile a hot fetch
 * from another client is answered; a client that goes away gets its pins
 * given back, exactly once; a full queue answers RETRY / BUSY and the
 * client gets the rest later; and stop drops what is queued.  Clients
 * whose fetch is held pull on their own thread and worker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "common/time.h"
#include "kvstore/block_client.h"
#include "kvstore/block_server.h"
#include "proto/msg.h"
#include "tests/support/testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#define TIMEOUT_MS 3000
#define HELD_PULL_MS 120000 /* a held pull must not time out before the test lets it go */
#define WAIT_MS 20000       /* how long a condition on the server may take to show */
#define BUSY_PULL_MS 1000   /* a pull the test expects to end BUSY: long enough for any
                               round trip on a loaded machine, short enough to wait out */

static kvt_block_identity_t g_id;

typedef struct {
    char *dir;
    kvt_tier_t *tier;
    kvt_block_server_t *srv;
    tu_chain_t a;
    char addr[64];
    kvt_net_worker_t *worker;
    kvt_block_client_t *client;
} fx_t;

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    fx->dir = tu_tmpdir("promote");
    tu_chain_make(&fx->a, &g_id, 8, 1, NULL, 0);
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *fx = *state;
    kvt_block_client_close(fx->client);
    if (fx->worker)
        kvt_net_worker_destroy(fx->worker);
    kvt_block_server_stop(fx->srv);
    kvt_tier_close(fx->tier);
    tu_chain_free(&fx->a);
    tu_rmtree(fx->dir);
    free(fx->dir);
    free(fx);
    return 0;
}

/* Chain a stored in T2 only (T1 empty, as after a restart); blocks
 * [0, warm) promoted into T1 again. */
static void open_cold(fx_t *fx, int warm)
{
    kvt_tier_params_t p = {.data_dir = fx->dir, .identity = &g_id,
                           .host_capacity_bytes = 32 * tu_payload_len(&g_id)};
    assert_int_equal(kvt_tier_open(&p, &fx->tier), KVT_OK);
    for (int i = 0; i < fx->a.n; i++)
        assert_int_equal(kvt_tier_put(fx->tier, &fx->a.hdr[i], fx->a.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(fx->tier), KVT_OK);
    kvt_tier_close(fx->tier);
    p.identity = NULL;
    assert_int_equal(kvt_tier_open(&p, &fx->tier), KVT_OK);
    for (int i = 0; i < warm; i++) {
        kvt_block_view_t v;
        assert_int_equal(kvt_tier_pin(fx->tier, &fx->a.hdr[i].key, &v), KVT_OK);
        kvt_tier_unpin(fx->tier, &v);
    }
}

static bool in_t1(fx_t *fx, int i)
{
    return kvt_host_pool_contains(kvt_tier_host(fx->tier), &fx->a.hdr[i].key);
}

static void start_server(fx_t *fx, bool rma, uint32_t max_promotions)
{
    kvt_block_server_params_t sp = {.tier = fx->tier, .listen = "127.0.0.1:0", .rma = rma,
                                    .max_promotions = max_promotions};
    assert_int_equal(kvt_block_server_start(&sp, &fx->srv), KVT_OK);
    snprintf(fx->addr, sizeof(fx->addr), "127.0.0.1:%u", kvt_block_server_port(fx->srv));
    kvt_net_worker_params_t wp = {0};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
}

static kvt_block_server_stats_t stats(fx_t *fx)
{
    kvt_block_server_stats_t s;
    kvt_block_server_stats(fx->srv, &s);
    return s;
}

static uint64_t t1_pinned(fx_t *fx)
{
    kvt_tier_stats_all_t ts;
    kvt_tier_stats(fx->tier, &ts);
    return ts.host.pinned;
}

/* Waits (progressing our worker, so that our sends go out) until the
 * server's counter `field` reaches want; false after WAIT_MS. */
#define WAIT_STAT(fx, field, want) wait_until(fx, offsetof(kvt_block_server_stats_t, field), want)

static bool wait_until(fx_t *fx, size_t offset, uint64_t want)
{
    uint64_t end = kvt_time_ns() + (uint64_t)WAIT_MS * 1000000;
    while (kvt_time_ns() < end) {
        kvt_block_server_stats_t s = stats(fx);
        uint64_t v;
        memcpy(&v, (const uint8_t *)&s + offset, sizeof(v));
        if (v == want)
            return true;
        kvt_net_worker_wait(fx->worker, 5);
    }
    return false;
}

/* Zero-copy replies unpin when their send is done, just after the client
 * has the data: not necessarily before the pull returns. */
static bool t1_pins_drop_to(fx_t *fx, uint64_t want)
{
    uint64_t end = kvt_time_ns() + (uint64_t)WAIT_MS * 1000000;
    while (t1_pinned(fx) != want && kvt_time_ns() < end)
        kvt_net_worker_wait(fx->worker, 5);
    return t1_pinned(fx) == want;
}

static kvt_pull_t *items_for(const tu_chain_t *c, const int *idx, int n)
{
    kvt_pull_t *items = calloc((size_t)n, sizeof(*items));
    for (int k = 0; k < n; k++) {
        items[k].key = c->hdr[idx[k]].key;
        items[k].cap = tu_payload_len(&g_id);
        items[k].dst = calloc(1, items[k].cap);
    }
    return items;
}

static void items_free(kvt_pull_t *items, int n)
{
    for (int k = 0; k < n; k++)
        free(items[k].dst);
    free(items);
}

static void expect_ok(fx_t *fx, const kvt_pull_t *items, const int *idx, int n)
{
    for (int k = 0; k < n; k++) {
        assert_int_equal(items[k].status, KVT_OK);
        assert_true(tu_payload_ok(&g_id, &fx->a.hdr[idx[k]].key, items[k].dst));
        assert_int_equal(items[k].hdr.index, (uint32_t)idx[k]);
    }
}

/* Pulls a's blocks idx[0..n) on the caller's client, expecting every one. */
static void pull_ok(fx_t *fx, const int *idx, int n)
{
    kvt_pull_t *items = items_for(&fx->a, idx, n);
    assert_int_equal(kvt_block_client_pull(fx->client, items, (size_t)n, &g_id, TIMEOUT_MS), KVT_OK);
    expect_ok(fx, items, idx, n);
    items_free(items, n);
}

static const int ALL[8] = {0, 1, 2, 3, 4, 5, 6, 7};

/* --- a client on its own thread, for pulls the test holds --- */

typedef struct {
    const char *addr;
    kvt_pull_t *items;
    int n;
    kvt_status_t st;
    _Atomic bool done;
    pthread_t thread;
} puller_t;

static void *puller_main(void *arg)
{
    puller_t *p = arg;
    kvt_net_worker_params_t wp = {0};
    kvt_net_worker_t *w = NULL;
    kvt_block_client_t *c = NULL;
    p->st = kvt_net_worker_create(&wp, &w);
    if (p->st == KVT_OK)
        p->st = kvt_block_client_connect(w, p->addr, TIMEOUT_MS, &c);
    if (p->st == KVT_OK)
        p->st = kvt_block_client_pull(c, p->items, (size_t)p->n, &g_id, HELD_PULL_MS);
    kvt_block_client_close(c);
    kvt_net_worker_destroy(w);
    atomic_store(&p->done, true);
    return NULL;
}

static void puller_start(puller_t *p, fx_t *fx, const int *idx, int n)
{
    *p = (puller_t){.addr = fx->addr, .items = items_for(&fx->a, idx, n), .n = n};
    assert_int_equal(pthread_create(&p->thread, NULL, puller_main, p), 0);
}

static void puller_join(puller_t *p) { pthread_join(p->thread, NULL); }

/* --- tests --- */

/* Blocks only T2 holds come back right, through the promotion thread, and
 * end up in T1; a second pull of them is served without it. */
static void test_cold_pull_promoted(void **state)
{
    fx_t *fx = *state;
    open_cold(fx, 0);
    start_server(fx, false, 0);
    pull_ok(fx, ALL, 8);
    assert_true(WAIT_STAT(fx, promotions_out, 0)); /* counted down after the reply */
    kvt_block_server_stats_t s = stats(fx);
    assert_true(s.promotions >= 1);
    assert_int_equal(s.blocks_served, 8);
    assert_int_equal(s.fetches_busy, 0);
    for (int i = 0; i < 8; i++)
        assert_true(in_t1(fx, i));
    pull_ok(fx, ALL, 8);
    assert_int_equal(stats(fx).promotions, s.promotions);
    assert_true(t1_pins_drop_to(fx, 0));
}

/* The same under RMA: the promoted blocks are read under a lease, which
 * the client releases. */
static void test_cold_pull_promoted_rma(void **state)
{
    fx_t *fx = *state;
    open_cold(fx, 2);
    start_server(fx, true, 0);
    pull_ok(fx, ALL, 8);
    assert_int_equal(stats(fx).promotions, 1);
    assert_true(WAIT_STAT(fx, leases_active, 0)); /* released (one-way, so not at once) */
    assert_int_equal(stats(fx).leases_released, 1);
    assert_int_equal(t1_pinned(fx), 0);
}

/* While a cold fetch is held at the promotion thread, another client's hot
 * fetch is answered; the held one is answered, right, once let go. */
static void test_hot_answered_while_cold_held(void **state)
{
    fx_t *fx = *state;
    open_cold(fx, 4);
    start_server(fx, false, 0);
    kvt_block_server_promote_hold(fx->srv, true);
    puller_t cold;
    puller_start(&cold, fx, ALL + 4, 4);
    assert_true(WAIT_STAT(fx, promotions_out, 1));
    pull_ok(fx, ALL, 4);
    assert_false(atomic_load(&cold.done));
    assert_int_equal(stats(fx).promotions_out, 1);
    assert_false(in_t1(fx, 4)); /* nothing was read from disk */
    kvt_block_server_promote_hold(fx->srv, false);
    puller_join(&cold);
    assert_int_equal(cold.st, KVT_OK);
    expect_ok(fx, cold.items, ALL + 4, 4);
    items_free(cold.items, 4);
    assert_true(WAIT_STAT(fx, promotions_out, 0));
    assert_true(t1_pins_drop_to(fx, 0));
}

static void encode_fetch(fx_t *fx, const int *idx, int n, uint8_t **buf_p, size_t *len_p)
{
    ProtobufCBinaryData keys[8];
    for (int k = 0; k < n; k++)
        keys[k] = (ProtobufCBinaryData){KVT_KEY_LEN, fx->a.hdr[idx[k]].key.b};
    Kvtier__BlockFetchRequest fr = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    fr.accept_rma = true; /* as a client that trusts an --rma server */
    fr.n_keys = (size_t)n;
    fr.keys = keys;
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_FETCH_REQUEST;
    m.fetch_request = &fr;
    assert_int_equal(kvt_msg_encode(&m, buf_p, len_p), KVT_OK);
}

/* A client that goes away while its fetch is queued: the job is dropped
 * when it comes back, its pin on the hot block given back exactly once
 * (the test's own pin on that block survives), and its cold blocks are
 * never read.  The server goes on serving. */
static void test_client_gone_while_queued(void **state)
{
    fx_t *fx = *state;
    open_cold(fx, 2);
    start_server(fx, false, 0);
    kvt_block_view_t ours;
    assert_int_equal(kvt_tier_pin(fx->tier, &fx->a.hdr[1].key, &ours), KVT_OK);
    kvt_block_server_promote_hold(fx->srv, true);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(fx->worker, fx->addr, TIMEOUT_MS, &ep), KVT_OK);
    uint8_t *buf;
    size_t len;
    encode_fetch(fx, ALL + 1, 3, &buf, &len); /* 1 hot, 2 and 3 cold */
    assert_int_equal(kvt_net_send(ep, 77, 0, buf, len), KVT_OK);
    kvt_free(buf);
    assert_true(WAIT_STAT(fx, promotions_out, 1));
    assert_int_equal(t1_pinned(fx), 1); /* block 1: ours and the job's */
    kvt_net_ep_close(ep);
    assert_true(WAIT_STAT(fx, promotions_orphaned, 1));
    kvt_block_server_promote_hold(fx->srv, false);
    assert_true(WAIT_STAT(fx, promotions_out, 0)); /* counted down once dropped */
    assert_int_equal(t1_pinned(fx), 1);
    kvt_tier_unpin(fx->tier, &ours);
    assert_int_equal(t1_pinned(fx), 0);
    assert_false(in_t1(fx, 2));
    assert_int_equal(stats(fx).fetches, 0); /* nobody was answered */
    pull_ok(fx, ALL, 8);
    assert_true(t1_pins_drop_to(fx, 0));
}

/* A full queue (one fetch, held): a pull gets what T1 holds at once, and
 * the cold rest is BUSY when nothing was served for its timeout; the held
 * fetch and a later pull of the rest get every block.  Inline, the cold
 * blocks come back RETRY in the reply; under RMA, beside a lease on the
 * hot ones. */
static void full_queue_busy(fx_t *fx, bool rma)
{
    open_cold(fx, 4);
    start_server(fx, rma, 1);
    kvt_block_server_promote_hold(fx->srv, true);
    puller_t held;
    puller_start(&held, fx, ALL + 4, 2);
    assert_true(WAIT_STAT(fx, promotions_out, 1));
    static const int mixed[4] = {0, 1, 6, 7};
    kvt_pull_t *items = items_for(&fx->a, mixed, 4);
    assert_int_equal(kvt_block_client_pull(fx->client, items, 4, &g_id, BUSY_PULL_MS), KVT_OK);
    expect_ok(fx, items, mixed, 2);
    assert_int_equal(items[2].status, KVT_ERR_BUSY);
    assert_int_equal(items[3].status, KVT_ERR_BUSY);
    items_free(items, 4);
    kvt_block_server_stats_t s = stats(fx);
    assert_true(s.fetches_busy >= 2); /* the mixed fetch (RETRY), then BUSY */
    assert_int_equal(s.promotions, 1);
    assert_false(atomic_load(&held.done));
    kvt_block_server_promote_hold(fx->srv, false);
    puller_join(&held);
    assert_int_equal(held.st, KVT_OK);
    expect_ok(fx, held.items, ALL + 4, 2);
    items_free(held.items, 2);
    pull_ok(fx, ALL + 6, 2);
    assert_true(WAIT_STAT(fx, leases_active, 0));
    assert_true(t1_pins_drop_to(fx, 0));
}

static void test_full_queue_busy(void **state) { full_queue_busy(*state, false); }

static void test_full_queue_busy_rma(void **state) { full_queue_busy(*state, true); }

/* T1 full of pinned blocks: the first cold block cannot be promoted, so
 * neither can any after it.  Each is FAILED, only the first is read from
 * T2 (the others are not: the promotion thread is every client's), and
 * once T1 has room the same pull gets every block. */
static void test_t1_full_reads_once(void **state)
{
    fx_t *fx = *state;
    size_t bl = tu_payload_len(&g_id);
    kvt_tier_params_t p = {.data_dir = fx->dir, .identity = &g_id, .host_capacity_bytes = 4 * bl};
    assert_int_equal(kvt_tier_open(&p, &fx->tier), KVT_OK);
    for (int i = 0; i < fx->a.n; i++)
        assert_int_equal(kvt_tier_put(fx->tier, &fx->a.hdr[i], fx->a.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(fx->tier), KVT_OK);
    kvt_tier_close(fx->tier);
    assert_int_equal(kvt_tier_open(&p, &fx->tier), KVT_OK); /* T1 empty, a in T2 */
    tu_chain_t b;
    tu_chain_make(&b, &g_id, 4, 2, NULL, 0);
    kvt_block_view_t pins[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(kvt_tier_put(fx->tier, &b.hdr[i], b.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(fx->tier), KVT_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(kvt_tier_pin(fx->tier, &b.hdr[i].key, &pins[i]), KVT_OK);
    assert_false(in_t1(fx, 0));
    start_server(fx, false, 0);
    kvt_tier_stats_all_t t0, t1;
    kvt_tier_stats(fx->tier, &t0);
    kvt_pull_t *items = items_for(&fx->a, ALL, 8);
    assert_int_equal(kvt_block_client_pull(fx->client, items, 8, &g_id, TIMEOUT_MS), KVT_OK);
    for (int k = 0; k < 8; k++)
        assert_int_equal(items[k].status, KVT_ERR_IO); /* FAILED */
    items_free(items, 8);
    kvt_tier_stats(fx->tier, &t1);
    assert_int_equal(t1.disk.hits - t0.disk.hits, 1);
    assert_int_equal(stats(fx).blocks_failed, 8);
    assert_int_equal(t1_pinned(fx), 4); /* ours; the fetch left none */
    for (int i = 0; i < 4; i++)
        kvt_tier_unpin(fx->tier, &pins[i]);
    assert_int_equal(t1_pinned(fx), 0);
    tu_chain_free(&b);
    static const int head[4] = {0, 1, 2, 3};
    pull_ok(fx, head, 4);
    assert_true(t1_pins_drop_to(fx, 0));
}

/* One connection has at most four fetches at the promotion thread: its
 * fifth gets Error BUSY at once, and the four are answered when let go. */
typedef struct {
    fx_t *fx;
    kvt_net_req_t reqs[5];
    kvt_status_t st;
} burst_t;

static void *burst_main(void *arg)
{
    burst_t *b = arg;
    kvt_net_worker_params_t wp = {0};
    kvt_net_worker_t *w = NULL;
    kvt_net_ep_t *ep = NULL;
    b->st = kvt_net_worker_create(&wp, &w);
    if (b->st == KVT_OK)
        b->st = kvt_net_connect(w, b->fx->addr, TIMEOUT_MS, &ep);
    if (b->st == KVT_OK)
        b->st = kvt_net_request_many(ep, b->reqs, 5, HELD_PULL_MS);
    kvt_net_ep_close(ep);
    kvt_net_worker_destroy(w);
    return NULL;
}

static void test_per_connection_bound(void **state)
{
    fx_t *fx = *state;
    open_cold(fx, 4);
    start_server(fx, false, 0);
    kvt_block_server_promote_hold(fx->srv, true);
    burst_t b = {.fx = fx};
    static const int one[5][1] = {{4}, {5}, {6}, {7}, {4}};
    for (int i = 0; i < 5; i++) {
        uint8_t *buf;
        encode_fetch(fx, one[i], 1, &buf, &b.reqs[i].len);
        b.reqs[i].data = buf;
    }
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, burst_main, &b), 0);
    assert_true(WAIT_STAT(fx, fetches_busy, 1)); /* the fifth */
    assert_int_equal(stats(fx).promotions_out, 4);
    kvt_block_server_promote_hold(fx->srv, false);
    pthread_join(th, NULL);
    assert_int_equal(b.st, KVT_OK);
    for (int i = 0; i < 5; i++) {
        kvt_msg_t *m = NULL;
        const uint8_t *att;
        size_t att_len;
        assert_int_equal(b.reqs[i].status, KVT_OK);
        assert_int_equal(kvt_msg_decode_attached(b.reqs[i].reply, b.reqs[i].reply_len, &m, &att,
                                                 &att_len), KVT_OK);
        if (i == 4) {
            assert_int_equal(m->body_case, KVTIER__ENVELOPE__BODY_ERROR);
            assert_int_equal(m->error->code, (uint32_t)-KVT_ERR_BUSY);
        } else {
            assert_int_equal(m->body_case, KVTIER__ENVELOPE__BODY_FETCH_REPLY);
            const Kvtier__BlockDescriptor *d = m->fetch_reply->blocks[0];
            assert_int_equal(d->status, KVTIER__BLOCK_DESCRIPTOR__STATUS__OK);
            assert_true(d->attach_offset + d->length <= att_len);
            assert_true(tu_payload_ok(&g_id, &fx->a.hdr[one[i][0]].key, att + d->attach_offset));
        }
        kvt_msg_free(m);
        kvt_free(b.reqs[i].reply);
        kvt_free((void *)b.reqs[i].data);
    }
    assert_int_equal(stats(fx).promotions, 4);
    assert_true(t1_pins_drop_to(fx, 0));
}

/* Stop with a fetch queued: it is dropped (the client's pull fails, as
 * for any server that goes away), its pins given back, the threads
 * joined. */
static void test_stop_with_fetch_queued(void **state)
{
    fx_t *fx = *state;
    open_cold(fx, 4);
    start_server(fx, false, 0);
    kvt_block_server_promote_hold(fx->srv, true);
    puller_t held;
    puller_start(&held, fx, ALL + 3, 3); /* 3 hot, pinned while it waits */
    assert_true(WAIT_STAT(fx, promotions_out, 1));
    assert_int_equal(t1_pinned(fx), 1);
    kvt_block_server_stop(fx->srv);
    fx->srv = NULL;
    assert_int_equal(t1_pinned(fx), 0);
    assert_false(in_t1(fx, 4));
    puller_join(&held);
    assert_int_not_equal(held.st, KVT_OK);
    for (int k = 0; k < 3; k++)
        assert_int_equal(held.items[k].status, held.st);
    items_free(held.items, 3);
}

int main(void)
{
    g_id = tu_identity();
    setenv("KVT_PULL_RMA", "1", 1); /* the clients take RMA replies from --rma servers */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cold_pull_promoted, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cold_pull_promoted_rma, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_hot_answered_while_cold_held, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_client_gone_while_queued, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_busy, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_busy_rma, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_t1_full_reads_once, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_per_connection_bound, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_fetch_queued, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
