/* Block pulls between real UCX endpoints on 127.0.0.1: a block server
 * (in this process on its own thread and worker, or the real `kvtier kv
 * serve` daemon) and a client.  Correctness, missing keys, identity and
 * size checks, blocks served from disk, malformed and hostile messages,
 * lease expiry, a client SIGKILLed while holding pins, a server
 * SIGKILLed while a client is pulling, and one client that outlives its
 * server's SIGKILL and pulls again from the restarted daemon.  Partial tails: fetched from the
 * server's tail store, released, expired, asked for under other tokens;
 * and replies from a hostile in-process server (its own thread and
 * worker, answering TailFetch with whatever a test picks: a flipped
 * payload byte, another parent or tokens, another tail, another length)
 * that the client must refuse without writing the caller's buffer. */
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
#include "tests/support/kv_serve.h"
#include "tests/support/net_thread.h"
#include "tests/support/testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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

static void fill_tier(fx_t *fx, uint32_t host_slots)
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
static void start_server_with(fx_t *fx, uint32_t lease_ms, bool rma, size_t client_max_msg)
{
    kvt_block_server_params_t sp = {.tier = fx->tier, .listen = "127.0.0.1:0",
                                    .lease_ms = lease_ms, .rma = rma, .tails = fx->tails};
    assert_int_equal(kvt_block_server_start(&sp, &fx->srv), KVT_OK);
    snprintf(fx->addr, sizeof(fx->addr), "127.0.0.1:%u", kvt_block_server_port(fx->srv));
    kvt_net_worker_params_t wp = {.max_msg_bytes = client_max_msg};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
}

static void start_server(fx_t *fx, uint32_t lease_ms) { start_server_with(fx, lease_ms, false, 0); }

static void start_rma_server(fx_t *fx, uint32_t lease_ms) { start_server_with(fx, lease_ms, true, 0); }

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    fx->dir = tu_tmpdir("pull");
    tu_chain_make(&fx->a, &g_id, 8, 1, NULL, 0);
    tu_chain_make(&fx->b, &g_id, 6, 2, &fx->a, 3); /* shares a's first 3 blocks */
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
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
static kvt_pull_t *items_for(const tu_chain_t *c, int from, int to)
{
    kvt_pull_t *items = calloc((size_t)(to - from), sizeof(*items));
    for (int i = from; i < to; i++) {
        items[i - from].key = c->hdr[i].key;
        items[i - from].cap = tu_payload_len(&g_id);
        items[i - from].dst = calloc(1, items[i - from].cap);
    }
    return items;
}

static void items_free(kvt_pull_t *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i].dst);
    free(items);
}

static kvt_block_server_stats_t server_stats(fx_t *fx)
{
    kvt_block_server_stats_t s;
    kvt_block_server_stats(fx->srv, &s);
    return s;
}

static bool leases_gone(fx_t *fx, int timeout_ms);

static void pull_chain_ok(fx_t *fx)
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

static void test_pull_chain(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_server(fx, 0); /* same host: a lane (the default), and zero-copy replies */
    assert_true(kvt_block_client_lane(fx->client));
    pull_chain_ok(fx);
    assert_int_equal(server_stats(fx).blocks_served, 8);
    assert_int_equal(server_stats(fx).leases_active, 0); /* inline: no lease at all */
    /* A zero-copy reply unpins when its send is done, on the server's
     * thread: soon after the client has the data, not necessarily before. */
    kvt_tier_stats_all_t ts;
    uint64_t end = kvt_time_ns() + 5000000000ull;
    do {
        kvt_tier_stats(fx->tier, &ts);
    } while (ts.host.pinned != 0 && kvt_time_ns() < end && usleep(1000) == 0);
    assert_int_equal(ts.host.pinned, 0);
}

/* A client that accepts small replies gets the chain over several rounds;
 * one that cannot take even one block is told so. */
static void test_inline_reply_limits(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_server_with(fx, 0, false, 4096 + 3 * 1500); /* room for 3 blocks a reply */
    pull_chain_ok(fx);
    assert_true(server_stats(fx).fetches >= 3);
    kvt_block_client_close(fx->client);
    kvt_net_worker_destroy(fx->worker);
    kvt_net_worker_params_t wp = {.max_msg_bytes = 4096}; /* no room for any block */
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
    kvt_pull_t *items = items_for(&fx->a, 0, 2);
    assert_int_equal(kvt_block_client_pull(fx->client, items, 2, &g_id, TIMEOUT_MS), KVT_OK);
    assert_int_equal(items[0].status, KVT_ERR_TOO_LARGE);
    assert_int_equal(items[1].status, KVT_ERR_TOO_LARGE);
    items_free(items, 2);
}

static void test_pull_chain_rma(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_rma_server(fx, 0);
    pull_chain_ok(fx);
    assert_int_equal(server_stats(fx).blocks_served, 8);
    assert_true(leases_gone(fx, 3000)); /* released (one-way, so not at once) */
    assert_int_equal(server_stats(fx).leases_released, 1);
    kvt_tier_stats_all_t ts;
    kvt_tier_stats(fx->tier, &ts);
    assert_int_equal(ts.host.pinned, 0);
}

static kvt_status_t raw_request(fx_t *fx, const void *buf, size_t len, kvt_msg_t **reply_p);

/* A leased reply pins at most 64 MiB: a local fetch of 40 blocks of 2 MiB
 * gets the first 32 under its lease and RETRY for the other 8. */
static void test_leased_reply_bounded(void **state)
{
    fx_t *fx = *state;
    kvt_block_identity_t id = tu_identity();
    id.layout = (kvt_block_layout_t){.n_layers = 32, .n_kv_heads = 4, .head_dim = 128,
                                     .block_tokens = 16, .dtype = KVT_DTYPE_F32};
    size_t len = tu_payload_len(&id);
    assert_int_equal(len, 2u << 20);
    enum { N = 40 };
    tu_chain_t *chain = calloc(1, sizeof(*chain));
    tu_chain_make(chain, &id, N, 9, NULL, 0);
    kvt_tier_params_t tp = {.data_dir = fx->dir, .identity = &id,
                            .host_capacity_bytes = (uint64_t)(N + 8) * len};
    assert_int_equal(kvt_tier_open(&tp, &fx->tier), KVT_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(kvt_tier_put(fx->tier, &chain->hdr[i], chain->payload[i]), KVT_OK);
    start_server(fx, 0);
    ProtobufCBinaryData keys[N];
    for (int i = 0; i < N; i++)
        keys[i] = (ProtobufCBinaryData){KVT_KEY_LEN, chain->hdr[i].key.b};
    Kvtier__BlockFetchRequest fr = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    fr.n_keys = N;
    fr.keys = keys;
    fr.local_read = true;
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_FETCH_REQUEST;
    m.fetch_request = &fr;
    uint8_t *buf;
    size_t blen;
    assert_int_equal(kvt_msg_encode(&m, &buf, &blen), KVT_OK);
    kvt_msg_t *rep = NULL;
    assert_int_equal(raw_request(fx, buf, blen, &rep), KVT_OK); /* over a lane: same host */
    assert_int_equal(rep->body_case, KVTIER__ENVELOPE__BODY_FETCH_REPLY);
    const Kvtier__BlockFetchReply *r = rep->fetch_reply;
    assert_int_equal(r->n_blocks, N);
    assert_true(r->local_pid != 0 && r->lease_id != 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(r->blocks[i]->status, i < 32 ? KVTIER__BLOCK_DESCRIPTOR__STATUS__OK
                                                      : KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY);
    kvt_msg_free(rep);
    kvt_free(buf);
    assert_true(leases_gone(fx, 3000)); /* raw_request closed its connection */
    tu_chain_free(chain);
    free(chain);
}

/* An --rma server answers by RMA only a client that takes RMA replies
 * (kvt_block_client_accept_rma, KVT_PULL_RMA=1): others get inline
 * replies, without a lease, and never see its rkey. */
static void test_rma_needs_client_consent(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_rma_server(fx, 0);
    kvt_block_client_accept_rma(fx->client, false);
    pull_chain_ok(fx);
    assert_int_equal(server_stats(fx).blocks_served, 8);
    assert_int_equal(server_stats(fx).leases_active, 0);
    assert_int_equal(server_stats(fx).leases_released, 0); /* no lease was made */
    kvt_block_client_accept_rma(fx->client, true);
    pull_chain_ok(fx);
    assert_true(leases_gone(fx, 3000));
    assert_int_equal(server_stats(fx).leases_released, 1);
}

/* A fetch asking to read locally (BlockFetchRequest.local_read): over a
 * same-host lane the server pins the blocks under a lease (10 s at most,
 * whatever the client asked) and answers with its pid and their
 * addresses, which hold the blocks' bytes; over a connection without a
 * lane (KVT_NET_LANES=0) it answers inline, as if not asked, since it
 * cannot know that the client is on its host. */
static void test_local_read_needs_lane(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_server(fx, 0);
    ProtobufCBinaryData keys[2] = {{KVT_KEY_LEN, fx->a.hdr[0].key.b},
                                   {KVT_KEY_LEN, fx->a.hdr[1].key.b}};
    Kvtier__BlockFetchRequest fr = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    fr.accept_rma = true; /* as a client that trusts an --rma server */
    fr.n_keys = 2;
    fr.keys = keys;
    fr.local_read = true;
    fr.lease_ms = 300000; /* a local lease is held 10 s at most */
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_FETCH_REQUEST;
    m.fetch_request = &fr;
    uint8_t *buf;
    size_t len;
    assert_int_equal(kvt_msg_encode(&m, &buf, &len), KVT_OK);
    for (int lanes = 1; lanes >= 0; lanes--) {
        kvt_block_client_close(fx->client);
        fx->client = NULL;
        kvt_net_worker_destroy(fx->worker);
        setenv("KVT_NET_LANES", lanes ? "1" : "0", 1);
        kvt_net_worker_params_t wp = {0};
        assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
        unsetenv("KVT_NET_LANES");
        kvt_net_ep_t *ep;
        assert_int_equal(kvt_net_connect(fx->worker, fx->addr, TIMEOUT_MS, &ep), KVT_OK);
        assert_int_equal(kvt_net_ep_lane(ep), lanes);
        void *raw;
        size_t raw_len;
        assert_int_equal(kvt_net_request(ep, buf, len, TIMEOUT_MS, &raw, &raw_len), KVT_OK);
        kvt_msg_t *rep;
        const uint8_t *att;
        size_t att_len;
        assert_int_equal(kvt_msg_decode_attached(raw, raw_len, &rep, &att, &att_len), KVT_OK);
        assert_int_equal(rep->body_case, KVTIER__ENVELOPE__BODY_FETCH_REPLY);
        const Kvtier__BlockFetchReply *fr_rep = rep->fetch_reply;
        assert_int_equal(fr_rep->n_blocks, 2);
        if (lanes) { /* the server is this process: its addresses are ours */
            assert_int_equal(fr_rep->local_pid, (uint32_t)getpid());
            assert_true(fr_rep->lease_id != 0);
            assert_true(fr_rep->lease_ms > 0 && fr_rep->lease_ms <= 10000);
            assert_int_equal(fr_rep->rkey.len, 0);
            assert_int_equal(server_stats(fx).leases_active, 1);
            for (int i = 0; i < 2; i++)
                assert_true(tu_payload_ok(&g_id, &fx->a.hdr[i].key,
                                          (const void *)(uintptr_t)fr_rep->blocks[i]->addr));
        } else {
            assert_int_equal(fr_rep->local_pid, 0);
            assert_int_equal(fr_rep->lease_id, 0);
            assert_int_equal(att_len, 2 * tu_payload_len(&g_id));
        }
        kvt_msg_free(rep);
        kvt_net_buf_free(fx->worker, raw, raw_len);
        kvt_net_ep_close(ep); /* a lost client's lease goes with it */
        assert_true(leases_gone(fx, 3000));
    }
    kvt_free(buf);
}

static void test_missing_mismatch_and_small_buffers(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_server(fx, 0);
    kvt_pull_t *items = items_for(&fx->b, 2, 6); /* b[2] shared, b[3..5] own */
    items[1].key.b[0] ^= 0xff;                  /* a key nobody stored */
    items[2].cap = 100;                         /* buffer too small */
    assert_int_equal(kvt_block_client_pull(fx->client, items, 4, &g_id, TIMEOUT_MS), KVT_OK);
    assert_int_equal(items[0].status, KVT_OK);
    assert_true(tu_payload_ok(&g_id, &fx->b.hdr[2].key, items[0].dst));
    assert_int_equal(items[1].status, KVT_ERR_NOT_FOUND);
    assert_int_equal(items[2].status, KVT_ERR_TOO_LARGE);
    assert_int_equal(items[3].status, KVT_OK);
    assert_true(tu_payload_ok(&g_id, &fx->b.hdr[5].key, items[3].dst));
    items_free(items, 4);
    /* Another model's identity: nothing is accepted. */
    kvt_block_identity_t other = g_id;
    other.fingerprint[0] ^= 1;
    items = items_for(&fx->a, 0, 2);
    assert_int_equal(kvt_block_client_pull(fx->client, items, 2, &other, TIMEOUT_MS), KVT_OK);
    assert_int_equal(items[0].status, KVT_ERR_MISMATCH);
    assert_int_equal(items[1].status, KVT_ERR_MISMATCH);
    items_free(items, 2);
}

static void test_pull_from_disk(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    kvt_tier_close(fx->tier);
    kvt_tier_params_t p = {.data_dir = fx->dir, .host_capacity_bytes = 16 * tu_payload_len(&g_id)};
    assert_int_equal(kvt_tier_open(&p, &fx->tier), KVT_OK); /* T1 empty, all in T2 */
    start_server(fx, 0);
    kvt_pull_t *items = items_for(&fx->a, 0, 8);
    assert_int_equal(kvt_block_client_pull(fx->client, items, 8, &g_id, TIMEOUT_MS), KVT_OK);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(items[i].status, KVT_OK);
        assert_true(tu_payload_ok(&g_id, &fx->a.hdr[i].key, items[i].dst));
    }
    items_free(items, 8);
}

/* --- raw messages --- */

static kvt_status_t raw_request(fx_t *fx, const void *buf, size_t len, kvt_msg_t **reply_p)
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

static void expect_error(fx_t *fx, const void *buf, size_t len)
{
    kvt_msg_t *rep = NULL;
    assert_int_equal(raw_request(fx, buf, len, &rep), KVT_OK);
    assert_int_equal(rep->body_case, KVTIER__ENVELOPE__BODY_ERROR);
    assert_true(rep->error->code > 0);
    kvt_msg_free(rep);
}

static void encode_fetch(size_t n_keys, uint8_t **buf_p, size_t *len_p)
{
    ProtobufCBinaryData *keys = calloc(n_keys, sizeof(*keys));
    static uint8_t key[KVT_KEY_LEN];
    for (size_t i = 0; i < n_keys; i++)
        keys[i] = (ProtobufCBinaryData){.len = KVT_KEY_LEN, .data = key};
    Kvtier__BlockFetchRequest fr = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    fr.accept_rma = true; /* as a client that trusts an --rma server */
    fr.n_keys = n_keys;
    fr.keys = keys;
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_FETCH_REQUEST;
    m.fetch_request = &fr;
    assert_int_equal(kvt_msg_encode(&m, buf_p, len_p), KVT_OK);
    free(keys);
}

static void test_bad_messages(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_server(fx, 0);
    expect_error(fx, "\xff\xff\xff garbage", 12);
    uint8_t *buf;
    size_t len;
    encode_fetch(3, &buf, &len);
    expect_error(fx, buf, len / 2); /* truncated */
    assert_int_equal(buf[0], 0x08); /* field 1 (version), varint */
    buf[1] = 99;                    /* another protocol version */
    expect_error(fx, buf, len);
    kvt_free(buf);
    static const uint8_t no_body[] = {0x08, KVT_PROTO_VERSION};
    expect_error(fx, no_body, sizeof(no_body)); /* unknown or missing body */
    encode_fetch(5000, &buf, &len);             /* over the per-fetch bound */
    expect_error(fx, buf, len);
    kvt_free(buf);
    Kvtier__Release rel = KVTIER__RELEASE__INIT;
    rel.lease_id = 12345; /* nobody's lease */
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_RELEASE;
    m.release = &rel;
    assert_int_equal(kvt_msg_encode(&m, &buf, &len), KVT_OK);
    expect_error(fx, buf, len);
    kvt_free(buf);
    assert_true(server_stats(fx).bad_messages >= 6);
    /* The server still serves. */
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
    kvt_pull_t *items = items_for(&fx->a, 0, 4);
    assert_int_equal(kvt_block_client_pull(fx->client, items, 4, &g_id, TIMEOUT_MS), KVT_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(items[i].status, KVT_OK);
    items_free(items, 4);
}

/* A fetch whose lease is never released nor renewed. */
static void fetch_and_keep(fx_t *fx, kvt_net_worker_t *worker, uint32_t lease_ms, kvt_net_ep_t **ep_p)
{
    ProtobufCBinaryData keys[2] = {{KVT_KEY_LEN, fx->a.hdr[0].key.b}, {KVT_KEY_LEN, fx->a.hdr[1].key.b}};
    Kvtier__BlockFetchRequest fr = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    fr.accept_rma = true; /* as a client that trusts an --rma server */
    fr.n_keys = 2;
    fr.keys = keys;
    fr.lease_ms = lease_ms;
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_FETCH_REQUEST;
    m.fetch_request = &fr;
    uint8_t *buf;
    size_t len;
    void *rep;
    size_t rep_len;
    if (kvt_msg_encode(&m, &buf, &len) != KVT_OK ||
        kvt_net_connect(worker, fx->addr, TIMEOUT_MS, ep_p) != KVT_OK ||
        kvt_net_request(*ep_p, buf, len, TIMEOUT_MS, &rep, &rep_len) != KVT_OK)
        abort();
    kvt_free(buf);
    kvt_free(rep);
}

/* Polls the server until no lease is held, at most timeout_ms. */
static bool leases_gone(fx_t *fx, int timeout_ms)
{
    uint64_t end = kvt_time_ns() + (uint64_t)timeout_ms * 1000000;
    while (kvt_time_ns() < end) {
        if (server_stats(fx).leases_active == 0)
            return true;
        kvt_net_worker_wait(fx->worker, 20);
    }
    return false;
}

static void test_lease_expires(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_rma_server(fx, 300);
    kvt_net_ep_t *ep;
    fetch_and_keep(fx, fx->worker, 0, &ep);
    assert_int_equal(server_stats(fx).leases_active, 1);
    kvt_tier_stats_all_t ts;
    kvt_tier_stats(fx->tier, &ts);
    assert_int_equal(ts.host.pinned, 2);
    assert_true(leases_gone(fx, 3000));
    assert_int_equal(server_stats(fx).leases_expired, 1);
    kvt_tier_stats(fx->tier, &ts);
    assert_int_equal(ts.host.pinned, 0);
    kvt_net_ep_close(ep);
}

/* The holding client runs in a fresh process (this binary re-executed):
 * UCX does not survive fork in a process that already has workers. */
static int hold_client_main(const char *addr, const char *hex0, const char *hex1)
{
    fx_t fx = {0};
    snprintf(fx.addr, sizeof(fx.addr), "%s", addr);
    fx.a.n = 2;
    if (kvt_unhex(hex0, fx.a.hdr[0].key.b, KVT_KEY_LEN) != KVT_OK ||
        kvt_unhex(hex1, fx.a.hdr[1].key.b, KVT_KEY_LEN) != KVT_OK)
        return 2;
    kvt_net_worker_params_t wp = {0};
    kvt_net_worker_t *w;
    kvt_net_ep_t *ep;
    if (kvt_net_worker_create(&wp, &w) != KVT_OK)
        return 3;
    fetch_and_keep(&fx, w, 120000, &ep); /* a two-minute lease, never released */
    printf("holding\n");
    fflush(stdout);
    for (;;)
        kvt_net_worker_wait(w, 100);
}

static void test_client_killed_holding_pins(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_rma_server(fx, 0);
    char hex0[2 * KVT_KEY_LEN + 1], hex1[2 * KVT_KEY_LEN + 1];
    kvt_block_key_hex(&fx->a.hdr[0].key, hex0);
    kvt_block_key_hex(&fx->a.hdr[1].key, hex1);
    int out[2];
    assert_int_equal(pipe(out), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        execl("/proc/self/exe", "test_pull", "--hold-client", fx->addr, hex0, hex1, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[32] = "";
    FILE *f = fdopen(out[0], "r");
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    assert_string_equal(line, "holding\n");
    assert_int_equal(server_stats(fx).leases_active, 1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    assert_true(leases_gone(fx, 10000)); /* long before the lease would end */
    kvt_tier_stats_all_t ts;
    kvt_tier_stats(fx->tier, &ts);
    assert_int_equal(ts.host.pinned, 0);
}

/* --- the real daemon, killed mid-pull --- */

/* Start `kvtier kv serve` on listen; addr gets the address it reports. */
static pid_t spawn_server_at(const char *data, const char *listen, char *addr)
{
    return tu_kv_serve(data, listen, "1M", addr);
}

static pid_t spawn_server(const char *data, char *addr, size_t cap)
{
    (void)cap;
    return spawn_server_at(data, "127.0.0.1:0", addr);
}

static void test_server_killed_mid_pull(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    kvt_tier_close(fx->tier);
    fx->tier = NULL;
    pid_t pid = spawn_server(fx->dir, fx->addr, sizeof(fx->addr));
    kvt_net_worker_params_t wp = {0};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
    /* The kill timer starts after the first whole pull, so a loaded machine
     * cannot make it land before any pull succeeded. */
    pthread_t killer;
    bool armed = false;
    int ok_pulls = 0, failed = 0;
    uint64_t worst_ns = 0;
    for (int round = 0; round < 100000 && failed < 3; round++) {
        kvt_pull_t *items = items_for(&fx->a, 0, 8);
        uint64_t t0 = kvt_time_ns();
        kvt_status_t st = kvt_block_client_pull(fx->client, items, 8, &g_id, 1000);
        uint64_t dt = kvt_time_ns() - t0;
        worst_ns = dt > worst_ns ? dt : worst_ns;
        /* Never wrong data: an item reported OK was checked, and is right.
         * A transfer cut short fails the call or only the items it hit. */
        bool all_ok = st == KVT_OK;
        for (int i = 0; i < 8; i++) {
            if (items[i].status == KVT_OK)
                assert_true(tu_payload_ok(&g_id, &fx->a.hdr[i].key, items[i].dst));
            all_ok = all_ok && items[i].status == KVT_OK;
        }
        ok_pulls += all_ok;
        failed += !all_ok;
        items_free(items, 8);
        if (all_ok && !armed)
            armed = pthread_create(&killer, NULL, tu_kill_in_300ms, &pid) == 0;
    }
    if (armed)
        pthread_join(killer, NULL);
    else
        kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    print_message("server killed: ok_pulls=%d worst_pull_ms=%.1f\n", ok_pulls, worst_ns / 1e6);
    assert_true(ok_pulls > 0);
    assert_int_equal(failed, 3);
    assert_true(worst_ns < 5000000000ull); /* no hang: bounded by the pull timeout */
}

/* A pull whose peer is gone fails with a transport error, every item
 * carrying it. */
static void pull_chain_fails(fx_t *fx)
{
    kvt_pull_t *items = items_for(&fx->a, 0, 8);
    kvt_status_t st = kvt_block_client_pull(fx->client, items, 8, &g_id, TIMEOUT_MS);
    print_message("pull with no server: %s\n", kvt_status_str(st));
    assert_true(st == KVT_ERR_IO || st == KVT_ERR_CLOSED || st == KVT_ERR_AGAIN);
    for (int i = 0; i < 8; i++)
        assert_int_equal(items[i].status, st);
    items_free(items, 8);
}

/* One client object across a server's SIGKILL and restart (same data,
 * same port): pulls fail while nobody serves, and the same client pulls
 * every block, verified, once the daemon is back. */
static void test_client_reconnects(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    kvt_tier_close(fx->tier);
    fx->tier = NULL;
    fx->daemon = spawn_server_at(fx->dir, "127.0.0.1:0", fx->addr);
    kvt_net_worker_params_t wp = {0};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
    pull_chain_ok(fx);

    kill(fx->daemon, SIGKILL);
    waitpid(fx->daemon, NULL, 0);
    fx->daemon = 0;
    pull_chain_fails(fx); /* on the dead endpoint, or a refused reconnect */
    /* The death is noticed (reset, else keepalive); from then on a call
     * goes through the reconnect, which finds nobody and fails too. */
    for (int i = 0; i < 1000 && kvt_block_client_alive(fx->client); i++)
        kvt_net_worker_wait(fx->worker, 10);
    assert_false(kvt_block_client_alive(fx->client));
    pull_chain_fails(fx);
    assert_false(kvt_block_client_alive(fx->client));

    char again[64];
    fx->daemon = spawn_server_at(fx->dir, fx->addr, again);
    assert_string_equal(again, fx->addr);
    pull_chain_ok(fx);
    assert_true(kvt_block_client_alive(fx->client));
    pull_chain_ok(fx); /* and stays connected */

    kvt_block_client_close(fx->client);
    fx->client = NULL;
    kill(fx->daemon, SIGTERM);
    int ws = 0;
    waitpid(fx->daemon, &ws, 0);
    fx->daemon = 0;
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
}

/* One connection cannot hold more than its share of leases. */
static void test_lease_quota_per_connection(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_rma_server(fx, 0);
    kvt_net_ep_t *ep;
    fetch_and_keep(fx, fx->worker, 0, &ep); /* connects ep and holds lease 1 */
    ProtobufCBinaryData key = {KVT_KEY_LEN, fx->a.hdr[0].key.b};
    Kvtier__BlockFetchRequest fr = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    fr.accept_rma = true; /* as a client that trusts an --rma server */
    fr.n_keys = 1;
    fr.keys = &key;
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_FETCH_REQUEST;
    m.fetch_request = &fr;
    uint8_t *buf;
    size_t len;
    assert_int_equal(kvt_msg_encode(&m, &buf, &len), KVT_OK);
    int held = 1, refused = 0;
    for (int i = 0; i < 80; i++) {
        void *rep;
        size_t rep_len;
        kvt_msg_t *r = NULL;
        assert_int_equal(kvt_net_request(ep, buf, len, TIMEOUT_MS, &rep, &rep_len), KVT_OK);
        assert_int_equal(kvt_msg_decode(rep, rep_len, &r), KVT_OK);
        kvt_free(rep);
        held += r->body_case == KVTIER__ENVELOPE__BODY_FETCH_REPLY;
        refused += r->body_case == KVTIER__ENVELOPE__BODY_ERROR;
        kvt_msg_free(r);
    }
    kvt_free(buf);
    assert_int_equal(held, 64);
    assert_int_equal(refused, 81 - 64);
    /* Another connection still gets served. */
    pull_chain_ok(fx);
    kvt_net_ep_close(ep);
    assert_true(leases_gone(fx, 5000));
}

/* --- partial tails --- */

#define TAIL_T 3 /* B = 4 in tu_identity */

typedef struct {
    kvt_block_key_t parent, key;
    uint32_t tokens[TAIL_T];
    uint8_t payload[1024];
    size_t len;
} tail_fx_t;

/* The tail of 3 tokens after a's second block. */
static void tail_make(fx_t *fx, tail_fx_t *t)
{
    t->parent = fx->a.hdr[1].key;
    for (uint32_t i = 0; i < TAIL_T; i++)
        t->tokens[i] = 900 + i;
    assert_int_equal(kvt_tail_key(&t->parent, TAIL_T, t->tokens, &t->key), KVT_OK);
    t->len = kvt_tail_bytes(&g_id.layout, TAIL_T);
    assert_int_equal(t->len, 768);
    tu_fill_payload(&g_id, &t->key, t->payload); /* 1 KiB: the tail is its first 768 */
}

static void start_tail_server(fx_t *fx, uint32_t ttl_ms, tail_fx_t *t)
{
    kvt_tail_store_params_t tp = {.ttl_ms = ttl_ms};
    assert_int_equal(kvt_tail_store_create(&tp, &fx->tails), KVT_OK);
    fill_tier(fx, 64);
    start_server(fx, 0);
    tail_make(fx, t);
    assert_int_equal(kvt_tail_store_put(fx->tails, &t->key, &t->parent, TAIL_T, t->tokens,
                                        t->payload, t->len), KVT_OK);
}

/* Pull t (parent and tokens as given) into a buffer first filled with
 * 0xee; a failed pull must leave it so. */
static kvt_status_t pull_tail(kvt_block_client_t *c, const kvt_block_key_t *parent,
                              const uint32_t *tokens, bool release, uint8_t *dst, size_t *len_p)
{
    memset(dst, 0xee, 1024);
    *len_p = 0;
    kvt_status_t st = kvt_block_client_pull_tail(c, parent, TAIL_T, tokens, &g_id.layout, release,
                                                 dst, 1024, len_p, TIMEOUT_MS);
    if (st != KVT_OK)
        for (size_t i = 0; i < 1024; i++)
            assert_int_equal(dst[i], 0xee);
    return st;
}

static void test_tail_fetch(void **state)
{
    fx_t *fx = *state;
    tail_fx_t t;
    start_tail_server(fx, 0, &t);
    uint8_t dst[1024];
    size_t len;
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, false, dst, &len), KVT_OK);
    assert_int_equal(len, 768);
    assert_memory_equal(dst, t.payload, 768);
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, true, dst, &len), KVT_OK);
    assert_memory_equal(dst, t.payload, 768);
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, false, dst, &len),
                     KVT_ERR_NOT_FOUND); /* released: gone */
    kvt_block_server_stats_t ss = server_stats(fx);
    assert_int_equal(ss.tails_served, 2);
    assert_int_equal(ss.tails_missing, 1);
    kvt_tail_store_stats_t ts;
    kvt_tail_store_stats(fx->tails, &ts);
    assert_int_equal(ts.released, 1);
    assert_int_equal(ts.tails, 0);
}

/* The client asks for the key its own tokens and parent name: other ones
 * name another tail, which the server does not hold. */
static void test_tail_other_tokens(void **state)
{
    fx_t *fx = *state;
    tail_fx_t t;
    start_tail_server(fx, 0, &t);
    uint8_t dst[1024];
    size_t len;
    uint32_t other[TAIL_T] = {t.tokens[0], t.tokens[1], t.tokens[2] + 1};
    assert_int_equal(pull_tail(fx->client, &t.parent, other, true, dst, &len), KVT_ERR_NOT_FOUND);
    assert_int_equal(pull_tail(fx->client, &fx->a.hdr[0].key, t.tokens, true, dst, &len),
                     KVT_ERR_NOT_FOUND);
    /* Two tokens of the three: another key too. */
    assert_int_equal(kvt_block_client_pull_tail(fx->client, &t.parent, TAIL_T - 1, t.tokens,
                                                &g_id.layout, true, dst, sizeof(dst), &len,
                                                TIMEOUT_MS), KVT_ERR_NOT_FOUND);
    /* Refused before asking: a buffer too small, t not in [1, B). */
    assert_int_equal(kvt_block_client_pull_tail(fx->client, &t.parent, TAIL_T, t.tokens,
                                                &g_id.layout, true, dst, 767, &len, TIMEOUT_MS),
                     KVT_ERR_TOO_LARGE);
    assert_int_equal(kvt_block_client_pull_tail(fx->client, &t.parent, 4, t.tokens, &g_id.layout,
                                                true, dst, sizeof(dst), &len, TIMEOUT_MS),
                     KVT_ERR_INVALID);
    assert_int_equal(kvt_block_client_pull_tail(fx->client, &t.parent, 0, t.tokens, &g_id.layout,
                                                true, dst, sizeof(dst), &len, TIMEOUT_MS),
                     KVT_ERR_INVALID);
    assert_int_equal(server_stats(fx).tails_missing, 3);
    /* None of that released the real one. */
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, true, dst, &len), KVT_OK);
    assert_memory_equal(dst, t.payload, 768);
}

static void test_tail_no_store(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64);
    start_server(fx, 0);
    tail_fx_t t;
    tail_make(fx, &t);
    uint8_t dst[1024];
    size_t len;
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, false, dst, &len),
                     KVT_ERR_NOT_FOUND);
    assert_int_equal(server_stats(fx).tails_missing, 1);
    pull_chain_ok(fx); /* blocks are served as ever */
}

static void test_tail_expires(void **state)
{
    fx_t *fx = *state;
    tail_fx_t t;
    start_tail_server(fx, 300, &t);
    uint8_t dst[1024];
    size_t len;
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, false, dst, &len), KVT_OK);
    usleep(500000);
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, false, dst, &len),
                     KVT_ERR_NOT_FOUND);
    kvt_tail_store_stats_t ts;
    kvt_tail_store_stats(fx->tails, &ts);
    assert_int_equal(ts.expired, 1);
    assert_int_equal(ts.tails, 0);
}

static void encode_tail_fetch(const uint8_t *key, size_t key_len, uint8_t **buf_p, size_t *len_p)
{
    Kvtier__TailFetch tf = KVTIER__TAIL_FETCH__INIT;
    tf.key = (ProtobufCBinaryData){key_len, (uint8_t *)key};
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_TAIL_FETCH;
    m.tail_fetch = &tf;
    assert_int_equal(kvt_msg_encode(&m, buf_p, len_p), KVT_OK); /* bounds are the peer's */
}

/* A TailFetch whose key is not 32 bytes gets an Error; the server goes on. */
static void test_tail_bad_fetch(void **state)
{
    fx_t *fx = *state;
    tail_fx_t t;
    start_tail_server(fx, 0, &t);
    uint8_t *buf;
    size_t len;
    encode_tail_fetch(t.key.b, 5, &buf, &len);
    expect_error(fx, buf, len);
    kvt_free(buf);
    encode_tail_fetch(t.key.b, 0, &buf, &len);
    expect_error(fx, buf, len);
    kvt_free(buf);
    /* The right key, raw: a found reply with the whole tail. */
    encode_tail_fetch(t.key.b, KVT_KEY_LEN, &buf, &len);
    kvt_msg_t *rep = NULL;
    assert_int_equal(raw_request(fx, buf, len, &rep), KVT_OK);
    kvt_free(buf);
    assert_int_equal(rep->body_case, KVTIER__ENVELOPE__BODY_TAIL_REPLY);
    assert_true(rep->tail_reply->found);
    assert_int_equal(rep->tail_reply->n_tokens, TAIL_T);
    assert_int_equal(rep->tail_reply->payload.len, 768);
    assert_true(rep->tail_reply->checksum == kvt_xxh3_64(t.payload, 768));
    kvt_msg_free(rep);
    assert_int_equal(server_stats(fx).bad_messages, 2);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &fx->client), KVT_OK);
    uint8_t dst[1024];
    assert_int_equal(pull_tail(fx->client, &t.parent, t.tokens, true, dst, &len), KVT_OK);
    assert_memory_equal(dst, t.payload, 768);
}

/* --- a hostile tail server --- */

typedef enum {
    H_HONEST,
    H_NOT_FOUND,
    H_FLIP_PAYLOAD,   /* a payload byte changed after the checksum */
    H_OTHER_PARENT,   /* the asked key, another parent */
    H_OTHER_TOKENS,   /* the asked key, another token */
    H_FEWER_TOKENS,   /* the asked key, t - 1 tokens */
    H_OTHER_TAIL,     /* a consistent tail, but another one */
    H_SHORT,          /* a shorter payload with its own checksum */
    H_WRONG_BODY,     /* an Ack */
} hmode_t;

typedef struct {
    tu_net_thread_t server;
    _Atomic int mode;
    _Atomic uint64_t fetches;
    const tail_fx_t *tail;
} hostile_t;

static void hostile_reply(hostile_t *h, Kvtier__TailReply *r, uint8_t *payload,
                          uint32_t *tokens, kvt_block_key_t *parent, kvt_block_key_t *key)
{
    size_t len = h->tail->len;
    switch ((hmode_t)atomic_load(&h->mode)) {
    case H_FLIP_PAYLOAD: payload[100] ^= 0x10; break;
    case H_OTHER_PARENT: parent->b[7] ^= 1; break;
    case H_OTHER_TOKENS: tokens[1]++; break;
    case H_FEWER_TOKENS: r->n_tokens--; break;
    case H_OTHER_TAIL:
        tokens[0]++;
        kvt_tail_key(parent, TAIL_T, tokens, key);
        r->checksum = kvt_xxh3_64(payload, len);
        break;
    case H_SHORT:
        len -= 4;
        r->checksum = kvt_xxh3_64(payload, len);
        break;
    default: break;
    }
    r->payload.len = len;
}

static void hostile_on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                           size_t len, void *arg)
{
    hostile_t *h = arg;
    kvt_msg_t *req = NULL;
    if (kvt_msg_decode(data, len, &req) != KVT_OK)
        return;
    atomic_fetch_add(&h->fetches, 1);
    uint8_t payload[1024];
    uint32_t tokens[TAIL_T];
    kvt_block_key_t parent = h->tail->parent, key = h->tail->key;
    memcpy(payload, h->tail->payload, sizeof(payload));
    memcpy(tokens, h->tail->tokens, sizeof(tokens));
    Kvtier__TailReply r = KVTIER__TAIL_REPLY__INIT;
    r.found = atomic_load(&h->mode) != H_NOT_FOUND;
    r.key = (ProtobufCBinaryData){KVT_KEY_LEN, key.b};
    r.parent = (ProtobufCBinaryData){KVT_KEY_LEN, parent.b};
    r.n_tokens = TAIL_T;
    r.tokens = tokens;
    r.checksum = kvt_xxh3_64(payload, h->tail->len);
    r.payload.data = payload;
    hostile_reply(h, &r, payload, tokens, &parent, &key);
    Kvtier__Ack ack = KVTIER__ACK__INIT;
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_TAIL_REPLY;
    m.tail_reply = &r;
    if (atomic_load(&h->mode) == H_WRONG_BODY) {
        m.body_case = KVTIER__ENVELOPE__BODY_ACK;
        m.ack = &ack;
    }
    uint8_t *buf;
    size_t n;
    if (req->body_case == KVTIER__ENVELOPE__BODY_TAIL_FETCH && kvt_msg_encode(&m, &buf, &n) == KVT_OK) {
        kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, buf, n);
        kvt_free(buf);
    }
    kvt_msg_free(req);
}

/* Every way a reply can name another tail, or carry other bytes, is
 * refused; the same server's honest reply passes (so each refusal is the
 * field's doing). */
static void test_tail_hostile_server(void **state)
{
    fx_t *fx = *state;
    fill_tier(fx, 64); /* for a's keys */
    tail_fx_t t;
    tail_make(fx, &t);
    hostile_t h = {.tail = &t};
    tu_net_thread_start(&h.server, hostile_on_msg, &h);
    kvt_net_worker_params_t wp = {0};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, h.server.addr, TIMEOUT_MS, &fx->client), KVT_OK);
    static const struct {
        hmode_t mode;
        kvt_status_t want;
    } cases[] = {
        {H_HONEST, KVT_OK},
        {H_NOT_FOUND, KVT_ERR_NOT_FOUND},
        {H_FLIP_PAYLOAD, KVT_ERR_CORRUPT},
        {H_OTHER_PARENT, KVT_ERR_CORRUPT},
        {H_OTHER_TOKENS, KVT_ERR_CORRUPT},
        {H_FEWER_TOKENS, KVT_ERR_CORRUPT},
        {H_OTHER_TAIL, KVT_ERR_CORRUPT},
        {H_SHORT, KVT_ERR_MISMATCH},
        {H_WRONG_BODY, KVT_ERR_CORRUPT},
        {H_HONEST, KVT_OK},
    };
    uint8_t dst[1024];
    size_t len;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        atomic_store(&h.mode, cases[i].mode);
        kvt_status_t st = pull_tail(fx->client, &t.parent, t.tokens, true, dst, &len);
        if (st != cases[i].want)
            fail_msg("hostile mode %d: st=%d want=%d", cases[i].mode, st, cases[i].want);
        if (st == KVT_OK) {
            assert_int_equal(len, 768);
            assert_memory_equal(dst, t.payload, 768);
        }
    }
    assert_int_equal(atomic_load(&h.fetches), sizeof(cases) / sizeof(cases[0]));
    kvt_block_client_close(fx->client);
    fx->client = NULL;
    tu_net_thread_stop(&h.server);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--hold-client") == 0)
        return hold_client_main(argv[2], argv[3], argv[4]);
    g_id = tu_identity();
    /* The clients here take RMA replies from the --rma servers they start
     * (test_rma_needs_client_consent turns that off for itself). */
    setenv("KVT_PULL_RMA", "1", 1);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pull_chain, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_inline_reply_limits, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pull_chain_rma, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_local_read_needs_lane, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_rma_needs_client_consent, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_leased_reply_bounded, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_missing_mismatch_and_small_buffers, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pull_from_disk, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_messages, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expires, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_client_killed_holding_pins, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lease_quota_per_connection, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_server_killed_mid_pull, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_client_reconnects, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_fetch, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_other_tokens, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_no_store, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_expires, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_bad_fetch, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_hostile_server, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
