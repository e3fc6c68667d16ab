/* Partial tails between real UCX endpoints on 127.0.0.1 (the fixture is
 * tests/support/pull_fx.h): fetched from the server's tail store,
 * released, expired, asked for under other tokens; and replies from a
 * hostile in-process server (its own thread and worker, answering
 * TailFetch with whatever a test picks: a flipped payload byte, another
 * parent or tokens, another tail, another length) that the client must
 * refuse without writing the caller's buffer. */
#include "tests/support/pull_fx.h"

#include "tests/support/net_thread.h"

#include <pthread.h>
#include <stdatomic.h>

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

int main(void)
{
    g_id = tu_identity();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tail_fetch, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_other_tokens, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_no_store, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_expires, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_bad_fetch, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tail_hostile_server, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
