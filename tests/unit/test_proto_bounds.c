/* Tests for proto/msg: the decoder's field bounds.  Every bound is driven
 * with an input one step past it beside one at it (31 and 33 byte keys
 * beside 32, one item over a list bound beside the bound), and each
 * rejection is matched against its debug log line, which names the field
 * and the reason (tests/support/proto_fx.h).  Envelope-level rejections
 * and round trips are in test_proto.c. */
#include "tests/support/proto_fx.h"

#include <math.h>

/* --- field bounds --- */

typedef void (*set_key_fn)(kvt_msg_t *m, ProtobufCBinaryData k);
static void k_snap_key(kvt_msg_t *m, ProtobufCBinaryData k)
{
    m->kv_snapshot->blocks[1]->key = k;
}
static void k_delta_parent(kvt_msg_t *m, ProtobufCBinaryData k)
{
    m->kv_delta->events[0]->parent = k;
}
static void k_pres(kvt_msg_t *m, ProtobufCBinaryData k)
{
    m->prefill_result->block_keys[2] = k;
}
static void k_dreq(kvt_msg_t *m, ProtobufCBinaryData k)
{
    m->decode_request->block_keys[0] = k;
}
static void k_freq(kvt_msg_t *m, ProtobufCBinaryData k)
{
    m->fetch_request->keys[1] = k;
}
static void k_desc(kvt_msg_t *m, ProtobufCBinaryData k)
{
    m->fetch_reply->blocks[1]->key = k;
}
static void k_tail_fetch(kvt_msg_t *m, ProtobufCBinaryData k)
{
    m->tail_fetch->key = k;
}

static void test_key_length(void **state)
{
    static const struct {
        Kvtier__Envelope__BodyCase bc;
        set_key_fn set;
        const char *field;
    } t[] = {
        {ENV_CASE(KV_SNAPSHOT), k_snap_key, "field=key item=1"},
        {ENV_CASE(KV_DELTA), k_delta_parent, "field=parent item=0"},
        {ENV_CASE(PREFILL_RESULT), k_pres, "field=block_keys item=2"},
        {ENV_CASE(DECODE_REQUEST), k_dreq, "field=block_keys item=0"},
        {ENV_CASE(FETCH_REQUEST), k_freq, "field=keys item=1"},
        {ENV_CASE(FETCH_REPLY), k_desc, "field=key item=1"},
        {ENV_CASE(TAIL_FETCH), k_tail_fetch, "body=tail_fetch field=key"},
    };
    const size_t bad[] = {0, 1, 31, 33, 64};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
            kvt_msg_t *m = build(t[i].bc);
            t[i].set(m, bd(g_big, bad[j]));
            assert_rejected(m, t[i].field, "reason=key length");
        }
        kvt_msg_t *m = build(t[i].bc);
        t[i].set(m, bd(g_big, 32));
        assert_accepted(m);
    }
}

/* A TailReply's key and parent may be absent (found = false), else are
 * 32 bytes; its tokens, and the tail_tokens of the requests, stay below a
 * block's bound (KVT_BLOCK_MAX_TOKENS = 256). */
static void test_tail_bounds(void **state)
{
    const size_t bad[] = {1, 5, 31, 33, 64};
    for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
        kvt_msg_t *m = build(ENV_CASE(TAIL_REPLY));
        m->tail_reply->key = bd(g_big, bad[j]);
        assert_rejected(m, "body=tail_reply field=key", "reason=key length");
        m = build(ENV_CASE(TAIL_REPLY));
        m->tail_reply->parent = bd(g_big, bad[j]);
        assert_rejected(m, "body=tail_reply field=parent", "reason=key length");
    }
    kvt_msg_t *m = build(ENV_CASE(TAIL_REPLY));
    m->tail_reply->key = bd(g_big, 0);
    m->tail_reply->parent = bd(g_big, 0);
    assert_accepted(m);

    static uint32_t tokens[256];
    m = build(ENV_CASE(TAIL_REPLY));
    m->tail_reply->tokens = tokens;
    m->tail_reply->n_tokens = 255;
    assert_accepted(m);
    m->tail_reply->n_tokens = 256;
    assert_rejected(m, "body=tail_reply field=tokens", "reason=too many items");

    m = build(ENV_CASE(PREFILL_RESULT));
    m->prefill_result->tail_tokens = 255;
    assert_accepted(m);
    m->prefill_result->tail_tokens = 256;
    assert_rejected(m, "field=tail_tokens", "reason=out of range");
    m->prefill_result->tail_tokens = UINT32_MAX;
    assert_rejected(m, "field=tail_tokens", "reason=out of range");
    m = build(ENV_CASE(DECODE_REQUEST));
    m->decode_request->tail_tokens = 255;
    m->decode_request->first_draws = 1;
    assert_accepted(m);
    m->decode_request->tail_tokens = 256;
    assert_rejected(m, "body=decode_request field=tail_tokens", "reason=out of range");
    /* One token takes at most one draw: a count that would make the decode
     * node spin its sampler is refused. */
    m->decode_request->tail_tokens = 3;
    m->decode_request->first_draws = 2;
    assert_rejected(m, "body=decode_request field=first_draws", "reason=out of range");
    m = build(ENV_CASE(PREFILL_RESULT));
    m->prefill_result->first_draws = UINT32_MAX;
    assert_rejected(m, "body=prefill_result field=first_draws", "reason=out of range");
}

/* Sets one list of body bc to n items (each a valid key or token). */
typedef void (*set_list_fn)(kvt_msg_t *m, size_t n, void *items);
static void l_pres(kvt_msg_t *m, size_t n, void *v)
{
    m->prefill_result->n_block_keys = n;
    m->prefill_result->block_keys = v;
}
static void l_dreq(kvt_msg_t *m, size_t n, void *v)
{
    m->decode_request->n_block_keys = n;
    m->decode_request->block_keys = v;
}
static void l_freq(kvt_msg_t *m, size_t n, void *v)
{
    m->fetch_request->n_keys = n;
    m->fetch_request->keys = v;
}
static void l_desc(kvt_msg_t *m, size_t n, void *v)
{
    m->fetch_reply->n_blocks = n;
    m->fetch_reply->blocks = v;
}
static void l_preq_tok(kvt_msg_t *m, size_t n, void *v)
{
    m->prefill_request->n_tokens = n;
    m->prefill_request->tokens = v;
}
static void l_dreq_tok(kvt_msg_t *m, size_t n, void *v)
{
    m->decode_request->n_tokens = n;
    m->decode_request->tokens = v;
}
static void l_dreq_stop(kvt_msg_t *m, size_t n, void *v)
{
    m->decode_request->n_stop_tokens = n;
    m->decode_request->stop_tokens = v;
}
static void l_ts_tok(kvt_msg_t *m, size_t n, void *v)
{
    m->token_stream->n_tokens = n;
    m->token_stream->tokens = v;
}

static void test_list_bounds(void **state)
{
    const size_t nk = KVT_PROTO_MAX_KEYS + 1, nt = KVT_PROTO_MAX_TOKENS + 1;
    ProtobufCBinaryData *keys = malloc(nk * sizeof(*keys));
    Kvtier__BlockDescriptor **descs = malloc(nk * sizeof(*descs));
    Kvtier__BlockDescriptor small = KVTIER__BLOCK_DESCRIPTOR__INIT; /* key only */
    uint32_t *tokens = calloc(nt, sizeof(*tokens));
    assert_true(keys && descs && tokens);
    small.key = g_keys[0];
    for (size_t i = 0; i < nk; i++) {
        keys[i] = g_keys[i % 3];
        descs[i] = &small;
    }
    const struct {
        Kvtier__Envelope__BodyCase bc;
        set_list_fn set;
        void *items;
        size_t max;
        const char *field;
    } t[] = {
        {ENV_CASE(PREFILL_RESULT), l_pres, keys, KVT_PROTO_MAX_KEYS, "field=block_keys"},
        {ENV_CASE(DECODE_REQUEST), l_dreq, keys, KVT_PROTO_MAX_KEYS, "field=block_keys"},
        {ENV_CASE(FETCH_REQUEST), l_freq, keys, KVT_PROTO_MAX_KEYS, "field=keys"},
        {ENV_CASE(FETCH_REPLY), l_desc, descs, KVT_PROTO_MAX_KEYS, "field=blocks"},
        {ENV_CASE(PREFILL_REQUEST), l_preq_tok, tokens, KVT_PROTO_MAX_TOKENS, "field=tokens"},
        {ENV_CASE(DECODE_REQUEST), l_dreq_tok, tokens, KVT_PROTO_MAX_TOKENS, "field=tokens"},
        {ENV_CASE(DECODE_REQUEST), l_dreq_stop, tokens, KVT_PROTO_MAX_TOKENS, "field=stop_tokens"},
        {ENV_CASE(TOKEN_STREAM), l_ts_tok, tokens, KVT_PROTO_MAX_TOKENS, "field=tokens"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        kvt_msg_t *m = build(t[i].bc);
        t[i].set(m, t[i].max, t[i].items);
        assert_accepted(m);
        t[i].set(m, t[i].max + 1, t[i].items);
        assert_rejected(m, t[i].field, "reason=too many items");
    }
    free(keys);
    free(descs);
    free(tokens);
}

/* Valid events of the bound's number do not fit in KVT_PROTO_MAX_MSG, so
 * only the reason in the log tells the count check from the event check. */
static void test_event_count(void **state)
{
    const size_t n = KVT_PROTO_MAX_KEYS + 1;
    Kvtier__KvEvent empty = KVTIER__KV_EVENT__INIT;
    Kvtier__KvEvent **ev = malloc(n * sizeof(*ev));
    assert_non_null(ev);
    for (size_t i = 0; i < n; i++)
        ev[i] = &empty;
    kvt_msg_t *m = build(ENV_CASE(KV_DELTA));
    m->kv_delta->n_events = n;
    m->kv_delta->events = ev;
    assert_rejected(m, "field=events", "reason=too many items");
    m = build(ENV_CASE(KV_SNAPSHOT));
    m->kv_snapshot->n_blocks = n - 1;
    m->kv_snapshot->blocks = ev;
    assert_rejected(m, "field=key item=0", "reason=key length");
    m->kv_snapshot->n_blocks = n;
    assert_rejected(m, "field=events", "reason=too many items");
    free(ev);
}

static const struct {
    Kvtier__Envelope__BodyCase bc;
    size_t off;
    const char *field;
} STRINGS[] = {
    {ENV_CASE(HELLO), offsetof(Kvtier__Hello, node_id), "field=node_id"},
    {ENV_CASE(HELLO), offsetof(Kvtier__Hello, role), "field=role"},
    {ENV_CASE(HELLO), offsetof(Kvtier__Hello, model_fingerprint), "field=model_fingerprint"},
    {ENV_CASE(NODE_REGISTER), offsetof(Kvtier__NodeRegister, node_id), "field=node_id"},
    {ENV_CASE(NODE_REGISTER), offsetof(Kvtier__NodeRegister, role), "field=role"},
    {ENV_CASE(NODE_REGISTER), offsetof(Kvtier__NodeRegister, ucx_address), "field=ucx_address"},
    {ENV_CASE(NODE_REGISTER), offsetof(Kvtier__NodeRegister, http_address), "field=http_address"},
    {ENV_CASE(HEARTBEAT), offsetof(Kvtier__Heartbeat, node_id), "field=node_id"},
    {ENV_CASE(KV_SNAPSHOT), offsetof(Kvtier__KvEventSnapshot, node_id), "field=node_id"},
    {ENV_CASE(KV_DELTA), offsetof(Kvtier__KvEventDelta, node_id), "field=node_id"},
    {ENV_CASE(PREFILL_REQUEST), offsetof(Kvtier__PrefillRequest, request_id), "field=request_id"},
    {ENV_CASE(PREFILL_REQUEST), offsetof(Kvtier__PrefillRequest, decode_node), "field=decode_node"},
    {ENV_CASE(PREFILL_RESULT), offsetof(Kvtier__PrefillResult, request_id), "field=request_id"},
    {ENV_CASE(DECODE_REQUEST), offsetof(Kvtier__DecodeRequest, request_id), "field=request_id"},
    {ENV_CASE(DECODE_REQUEST), offsetof(Kvtier__DecodeRequest, prefill_node), "field=prefill_node"},
    {ENV_CASE(TOKEN_STREAM), offsetof(Kvtier__TokenStream, request_id), "field=request_id"},
    {ENV_CASE(TOKEN_STREAM), offsetof(Kvtier__TokenStream, finish_reason), "field=finish_reason"},
    {ENV_CASE(ERROR), offsetof(Kvtier__Error, message), "field=message"},
};

static void test_string_length(void **state)
{
    for (size_t i = 0; i < sizeof(STRINGS) / sizeof(STRINGS[0]); i++) {
        kvt_msg_t *m = build(STRINGS[i].bc);
        char **slot = (char **)((char *)m->hello + STRINGS[i].off);
        *slot = long_string(KVT_PROTO_MAX_STRING);
        assert_accepted(m);
        *slot = long_string(KVT_PROTO_MAX_STRING + 1);
        assert_rejected(m, STRINGS[i].field, "reason=string too long");
    }
}

static void test_blob_length(void **state)
{
    kvt_msg_t *m = build(ENV_CASE(PREFILL_REQUEST));
    m->prefill_request->tenant_salt = bd(g_big, KVT_PROTO_MAX_STRING);
    assert_accepted(m);
    m->prefill_request->tenant_salt.len++;
    assert_rejected(m, "field=tenant_salt", "reason=bytes too long");

    m = build(ENV_CASE(FETCH_REPLY));
    m->fetch_reply->rkey = bd(g_big, 4096);
    assert_accepted(m);
    m->fetch_reply->rkey.len++;
    assert_rejected(m, "field=rkey", "reason=bytes too long");

    m = build(ENV_CASE(FETCH_REPLY));
    m->fetch_reply->blocks[1]->header = bd(g_big, 1176); /* KVT_BLOCK_HEADER_MAX */
    assert_accepted(m);
    m->fetch_reply->blocks[1]->header.len++;
    assert_rejected(m, "field=header item=1", "reason=bytes too long");
}

static void test_enums(void **state)
{
    const int bad[] = {-1, 4, 100, INT32_MIN, INT32_MAX};
    const int bad_status[] = {-1, 4, 100, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvt_msg_t *m = build(ENV_CASE(KV_DELTA));
        m->kv_delta->events[1]->kind = (Kvtier__KvEvent__Kind)bad[i];
        assert_rejected(m, "field=kind item=1", "reason=unknown enum value");
        m = build(ENV_CASE(KV_SNAPSHOT));
        m->kv_snapshot->blocks[0]->tier = (Kvtier__Tier)bad[i];
        assert_rejected(m, "field=tier item=0", "reason=unknown enum value");
        m = build(ENV_CASE(FETCH_REPLY));
        m->fetch_reply->blocks[0]->status = (Kvtier__BlockDescriptor__Status)bad_status[i];
        assert_rejected(m, "field=status item=0", "reason=unknown enum value");
    }
    for (int v = 0; v <= 3; v++) { /* every named value passes */
        kvt_msg_t *m = build(ENV_CASE(KV_DELTA));
        m->kv_delta->events[0]->kind = (Kvtier__KvEvent__Kind)v;
        m->kv_delta->events[1]->tier = (Kvtier__Tier)v;
        assert_accepted(m);
        m = build(ENV_CASE(FETCH_REPLY));
        m->fetch_reply->blocks[1]->status = (Kvtier__BlockDescriptor__Status)v; /* 0..3: OK..RETRY */
        assert_accepted(m);
    }
}

static void test_floats(void **state)
{
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < 3; i++) {
        kvt_msg_t *m = build(ENV_CASE(PREFILL_REQUEST));
        m->prefill_request->temperature = bad[i];
        assert_rejected(m, "field=temperature", "reason=not finite");
        m = build(ENV_CASE(DECODE_REQUEST));
        m->decode_request->top_p = bad[i];
        assert_rejected(m, "field=top_p", "reason=not finite");
    }
    kvt_msg_t *m = build(ENV_CASE(DECODE_REQUEST));
    m->decode_request->temperature = -0.0f;
    m->decode_request->top_p = 3.4e38f;
    assert_accepted(m);
}

int main(void)
{
    init_keys();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_length),
        cmocka_unit_test(test_tail_bounds),
        cmocka_unit_test(test_list_bounds),
        cmocka_unit_test(test_event_count),
        cmocka_unit_test(test_string_length),
        cmocka_unit_test(test_blob_length),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_floats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
