/* Tests for proto/msg: the checked codec of kvtier wire messages.
 *
 * One sample of every body type, with every field away from its default,
 * round-trips byte for byte.  Every rejection path is driven with an input
 * that differs from an accepted one only in the field under test, and the
 * accepted neighbour is checked too (31 and 33 byte keys beside 32, one
 * item over a list bound beside the bound), so a check that was dropped or
 * moved fails here.  Rejections are also matched against their debug log
 * line (stderr captured), which names the field and the reason: a message
 * rejected for some other reason does not pass.
 *
 * Invalid messages are built with the protobuf-c packer directly, since
 * kvt_msg_encode sets the version and (by contract) checks only the size. */
#include "proto/msg.h"

#include "common/alloc.h"
#include "common/log.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define ENV_CASE(x) KVTIER__ENVELOPE__BODY_##x
#define N_BODIES 17
#define BIG 16384

/* --- samples of every body --- */

static uint8_t g_key[4][32];
static uint8_t g_big[BIG]; /* backing store for oversized bytes and strings */
static uint32_t g_tokens[] = {1, 127, 128, 50000, 0xffffffffu};
static ProtobufCBinaryData g_keys[3];
static kvt_msg_t g_env;

static Kvtier__Hello s_hello;
static Kvtier__NodeRegister s_reg;
static Kvtier__Heartbeat s_hb;
static Kvtier__KvEvent s_ev[2];
static Kvtier__KvEvent *s_evp[2];
static Kvtier__KvEventSnapshot s_snap;
static Kvtier__KvEventDelta s_delta;
static Kvtier__PrefillRequest s_preq;
static Kvtier__PrefillResult s_pres;
static Kvtier__DecodeRequest s_dreq;
static Kvtier__TokenStream s_ts;
static Kvtier__BlockFetchRequest s_freq;
static Kvtier__BlockDescriptor s_desc[2];
static Kvtier__BlockDescriptor *s_descp[2];
static Kvtier__BlockFetchReply s_frep;
static Kvtier__LeaseRenew s_lr;
static Kvtier__Release s_rel;
static Kvtier__Ack s_ack;
static Kvtier__Error s_err;
static Kvtier__TailFetch s_tf;
static Kvtier__TailReply s_tr;

static ProtobufCBinaryData bd(const uint8_t *p, size_t n)
{
    return (ProtobufCBinaryData){n, (uint8_t *)p};
}

static void init_keys(void)
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 32; j++)
            g_key[i][j] = (uint8_t)(i * 32 + j + 1);
    for (int i = 0; i < 3; i++)
        g_keys[i] = bd(g_key[i], 32);
    for (size_t i = 0; i < BIG; i++)
        g_big[i] = (uint8_t)('a' + i % 26);
}

static void mk_events(size_t *n_p, Kvtier__KvEvent ***v_p)
{
    for (int i = 0; i < 2; i++) {
        s_ev[i] = (Kvtier__KvEvent)KVTIER__KV_EVENT__INIT;
        s_ev[i].kind = KVTIER__KV_EVENT__KIND__STORED + i;
        s_ev[i].tier = KVTIER__TIER__TIER_HOST + i;
        s_ev[i].key = bd(g_key[i + 1], 32);
        s_ev[i].parent = bd(g_key[i], 32);
        s_ev[i].index = 7u + (unsigned)i;
        s_evp[i] = &s_ev[i];
    }
    *n_p = 2;
    *v_p = s_evp;
}

static void mk_membership(void)
{
    s_hello = (Kvtier__Hello)KVTIER__HELLO__INIT;
    s_hello.node_id = "node-a";
    s_hello.role = "store";
    s_hello.model_fingerprint = "00ff";
    s_reg = (Kvtier__NodeRegister)KVTIER__NODE_REGISTER__INIT;
    s_reg.node_id = "node-b";
    s_reg.role = "decode";
    s_reg.ucx_address = "10.0.0.2:13337";
    s_reg.http_address = "10.0.0.2:8080";
    s_reg.host_capacity_bytes = 1ull << 40;
    s_reg.disk_capacity_bytes = UINT64_MAX;
    s_hb = (Kvtier__Heartbeat)KVTIER__HEARTBEAT__INIT;
    s_hb.node_id = "node-c";
    s_hb.seq = 99;
    s_hb.active_sequences = 3;
    s_hb.free_kv_slots = 4;
    s_hb.queued_requests = 5;
    s_snap = (Kvtier__KvEventSnapshot)KVTIER__KV_EVENT_SNAPSHOT__INIT;
    s_snap.node_id = "node-d";
    s_snap.seq = 1000;
    mk_events(&s_snap.n_blocks, &s_snap.blocks);
    s_delta = (Kvtier__KvEventDelta)KVTIER__KV_EVENT_DELTA__INIT;
    s_delta.node_id = "node-e";
    s_delta.seq = 1001;
    mk_events(&s_delta.n_events, &s_delta.events);
}

static void mk_requests(void)
{
    s_preq = (Kvtier__PrefillRequest)KVTIER__PREFILL_REQUEST__INIT;
    s_preq.request_id = "req-1";
    s_preq.n_tokens = 5;
    s_preq.tokens = g_tokens;
    s_preq.tenant_salt = bd((const uint8_t *)"tenant-a", 8);
    s_preq.decode_node = "node-b";
    s_preq.max_tokens = 64;
    s_preq.temperature = 0.7f;
    s_preq.top_p = 0.9f;
    s_preq.seed = 42;
    s_preq.cache = 1;
    s_pres = (Kvtier__PrefillResult)KVTIER__PREFILL_RESULT__INIT;
    s_pres.request_id = "req-1";
    s_pres.first_token = 17;
    s_pres.n_block_keys = 3;
    s_pres.block_keys = g_keys;
    s_pres.cached_tokens = 32;
    s_pres.tail_tokens = 3;
    s_pres.first_draws = 1;
    s_dreq = (Kvtier__DecodeRequest)KVTIER__DECODE_REQUEST__INIT;
    s_dreq.request_id = "req-1";
    s_dreq.n_tokens = 5;
    s_dreq.tokens = g_tokens;
    s_dreq.n_block_keys = 2;
    s_dreq.block_keys = g_keys;
    s_dreq.prefill_node = "node-a";
    s_dreq.tail_tokens = 3;
    s_dreq.first_draws = 1;
    s_dreq.max_tokens = 64;
    s_dreq.temperature = 1.5f;
    s_dreq.top_p = 0.5f;
    s_dreq.seed = 43;
    s_dreq.n_stop_tokens = 2;
    s_dreq.stop_tokens = g_tokens + 3;
    s_ts = (Kvtier__TokenStream)KVTIER__TOKEN_STREAM__INIT;
    s_ts.request_id = "req-1";
    s_ts.n_tokens = 3;
    s_ts.tokens = g_tokens;
    s_ts.done = 1;
    s_ts.finish_reason = "stop";
}

static void mk_blocks(void)
{
    s_freq = (Kvtier__BlockFetchRequest)KVTIER__BLOCK_FETCH_REQUEST__INIT;
    s_freq.n_keys = 3;
    s_freq.keys = g_keys;
    s_freq.lease_ms = 500;
    for (int i = 0; i < 2; i++) {
        s_desc[i] = (Kvtier__BlockDescriptor)KVTIER__BLOCK_DESCRIPTOR__INIT;
        s_desc[i].key = bd(g_key[i], 32);
        s_desc[i].status = i ? KVTIER__BLOCK_DESCRIPTOR__STATUS__MISSING
                             : KVTIER__BLOCK_DESCRIPTOR__STATUS__OK;
        s_desc[i].addr = 0x7f0000001000ull;
        s_desc[i].length = 65536;
        s_desc[i].header = bd(g_big, 216);
        s_descp[i] = &s_desc[i];
    }
    s_frep = (Kvtier__BlockFetchReply)KVTIER__BLOCK_FETCH_REPLY__INIT;
    s_frep.lease_id = 5;
    s_frep.lease_ms = 1000;
    s_frep.rkey = bd(g_big, 300);
    s_frep.n_blocks = 2;
    s_frep.blocks = s_descp;
    s_lr = (Kvtier__LeaseRenew)KVTIER__LEASE_RENEW__INIT;
    s_lr.lease_id = 5;
    s_lr.lease_ms = 2000;
    s_rel = (Kvtier__Release)KVTIER__RELEASE__INIT;
    s_rel.lease_id = 5;
    s_ack = (Kvtier__Ack)KVTIER__ACK__INIT;
    s_ack.lease_id = 6;
    s_err = (Kvtier__Error)KVTIER__ERROR__INIT;
    s_err.code = 4;
    s_err.message = "no such block";
    s_tf = (Kvtier__TailFetch)KVTIER__TAIL_FETCH__INIT;
    s_tf.key = bd(g_key[3], 32);
    s_tf.release = 1;
    s_tr = (Kvtier__TailReply)KVTIER__TAIL_REPLY__INIT;
    s_tr.found = 1;
    s_tr.key = bd(g_key[3], 32);
    s_tr.parent = bd(g_key[2], 32);
    s_tr.n_tokens = 5;
    s_tr.tokens = g_tokens;
    s_tr.checksum = 0x0123456789abcdefull;
    s_tr.payload = bd(g_big, 1000);
}

static const Kvtier__Envelope__BodyCase ALL_BODIES[N_BODIES] = {
    ENV_CASE(HELLO),          ENV_CASE(NODE_REGISTER),  ENV_CASE(HEARTBEAT),
    ENV_CASE(KV_SNAPSHOT),    ENV_CASE(KV_DELTA),       ENV_CASE(PREFILL_REQUEST),
    ENV_CASE(PREFILL_RESULT), ENV_CASE(DECODE_REQUEST), ENV_CASE(TOKEN_STREAM),
    ENV_CASE(FETCH_REQUEST),  ENV_CASE(FETCH_REPLY),    ENV_CASE(LEASE_RENEW),
    ENV_CASE(RELEASE),        ENV_CASE(ACK),            ENV_CASE(ERROR),
    ENV_CASE(TAIL_FETCH),     ENV_CASE(TAIL_REPLY)};

/* The sample of body type bc in g_env (version 1); fields can be edited. */
static kvt_msg_t *build(Kvtier__Envelope__BodyCase bc)
{
    void *const bodies[] = {&s_hello, &s_reg,  &s_hb,  &s_snap, &s_delta,
                            &s_preq,  &s_pres, &s_dreq, &s_ts,  &s_freq,
                            &s_frep,  &s_lr,   &s_rel, &s_ack, &s_err,
                            [ENV_CASE(TAIL_FETCH) - ENV_CASE(HELLO)] = &s_tf, &s_tr};
    mk_membership();
    mk_requests();
    mk_blocks();
    g_env = (kvt_msg_t)KVTIER__ENVELOPE__INIT;
    g_env.version = KVT_PROTO_VERSION;
    g_env.body_case = bc;
    g_env.hello = bodies[bc - ENV_CASE(HELLO)]; /* the union holds one pointer */
    return &g_env;
}

/* --- helpers --- */

/* Pack as is (no version set, no size check), for inputs that must fail. */
static uint8_t *pack_raw(const kvt_msg_t *m, size_t *len_p)
{
    size_t n = kvtier__envelope__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    assert_int_equal(kvtier__envelope__pack(m, buf), n);
    *len_p = n;
    return buf;
}

/* Decode with debug logging captured; why gets the log text.  On failure
 * the output pointer must be left alone. */
static kvt_status_t decode_why(const void *buf, size_t len, char *why, size_t cap)
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), 2) >= 0);
    kvt_log_set_level(KVT_LOG_DEBUG);
    kvt_msg_t *m = (kvt_msg_t *)&g_env; /* sentinel */
    kvt_status_t st = kvt_msg_decode(buf, len, &m);
    kvt_log_set_level(KVT_LOG_WARN);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t n = fread(why, 1, cap - 1, tmp);
    why[n] = '\0';
    fclose(tmp);
    if (st == KVT_OK) {
        assert_ptr_not_equal(m, &g_env);
        kvt_msg_free(m);
    } else {
        assert_ptr_equal(m, &g_env);
    }
    return st;
}

/* Pack m raw and decode it; the status, with the log line in why. */
static kvt_status_t try_msg(const kvt_msg_t *m, char *why, size_t cap)
{
    size_t len;
    uint8_t *buf = pack_raw(m, &len);
    kvt_status_t st = decode_why(buf, len, why, cap);
    free(buf);
    return st;
}

/* m is rejected as INVALID with a log line containing both fragments. */
static void assert_rejected(const kvt_msg_t *m, const char *frag1, const char *frag2)
{
    char why[2048];
    kvt_status_t st = try_msg(m, why, sizeof(why));
    if (st != KVT_ERR_INVALID || !strstr(why, frag1) || !strstr(why, frag2))
        fail_msg("want invalid with '%s' '%s', got st=%d log='%s'", frag1, frag2, st, why);
}

static void assert_accepted(const kvt_msg_t *m)
{
    char why[2048];
    kvt_status_t st = try_msg(m, why, sizeof(why));
    if (st != KVT_OK)
        fail_msg("want ok, got st=%d log='%s'", st, why);
}

/* A NUL-terminated string of n bytes in g_big (n < BIG). */
static char *long_string(size_t n)
{
    static char s[BIG];
    memcpy(s, g_big, n);
    s[n] = '\0';
    return s;
}

/* --- round trips --- */

static void test_roundtrip_all_bodies(void **state)
{
    for (int i = 0; i < N_BODIES; i++) {
        uint8_t *b1, *b2;
        size_t l1, l2;
        kvt_msg_t *m = build(ALL_BODIES[i]);
        m->version = 0;
        assert_int_equal(kvt_msg_encode(m, &b1, &l1), KVT_OK);
        assert_int_equal(m->version, KVT_PROTO_VERSION);
        assert_true(l1 >= 7); /* version, body tag and length, a field */
        kvt_msg_t *d = NULL;
        assert_int_equal(kvt_msg_decode(b1, l1, &d), KVT_OK);
        assert_int_equal(d->body_case, ALL_BODIES[i]);
        assert_int_equal(kvt_msg_encode(d, &b2, &l2), KVT_OK);
        assert_int_equal(l1, l2);
        assert_memory_equal(b1, b2, l1);
        kvt_msg_free(d);
        kvt_free(b1);
        kvt_free(b2);
    }
}

/* Byte equality could hide a codec that drops a field on both sides. */
static void test_roundtrip_fields(void **state)
{
    uint8_t *b;
    size_t l;
    kvt_msg_t *d = NULL;
    assert_int_equal(kvt_msg_encode(build(ENV_CASE(DECODE_REQUEST)), &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    const Kvtier__DecodeRequest *r = d->decode_request;
    assert_string_equal(r->request_id, "req-1");
    assert_int_equal(r->n_tokens, 5);
    assert_memory_equal(r->tokens, g_tokens, sizeof(g_tokens));
    assert_int_equal(r->n_block_keys, 2);
    assert_memory_equal(r->block_keys[1].data, g_key[1], 32);
    assert_int_equal(r->n_stop_tokens, 2);
    assert_int_equal(r->stop_tokens[1], 0xffffffffu);
    assert_true(r->temperature == 1.5f && r->top_p == 0.5f && r->seed == 43);
    assert_true(r->tail_tokens == 3 && r->first_draws == 1);
    kvt_msg_free(d);
    kvt_free(b);

    assert_int_equal(kvt_msg_encode(build(ENV_CASE(PREFILL_RESULT)), &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    assert_true(d->prefill_result->tail_tokens == 3 && d->prefill_result->first_draws == 1);
    kvt_msg_free(d);
    kvt_free(b);

    assert_int_equal(kvt_msg_encode(build(ENV_CASE(FETCH_REPLY)), &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    const Kvtier__BlockFetchReply *f = d->fetch_reply;
    assert_int_equal(f->n_blocks, 2);
    assert_int_equal(f->blocks[1]->status, KVTIER__BLOCK_DESCRIPTOR__STATUS__MISSING);
    assert_int_equal(f->blocks[0]->header.len, 216);
    assert_memory_equal(f->blocks[0]->key.data, g_key[0], 32);
    assert_int_equal(f->rkey.len, 300);
    assert_true(f->blocks[0]->addr == 0x7f0000001000ull && f->lease_ms == 1000);
    kvt_msg_free(d);
    kvt_free(b);
}

static void test_roundtrip_tail(void **state)
{
    uint8_t *b;
    size_t l;
    kvt_msg_t *d = NULL;
    assert_int_equal(kvt_msg_encode(build(ENV_CASE(TAIL_FETCH)), &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    assert_int_equal(d->tail_fetch->key.len, 32);
    assert_memory_equal(d->tail_fetch->key.data, g_key[3], 32);
    assert_true(d->tail_fetch->release);
    kvt_msg_free(d);
    kvt_free(b);

    assert_int_equal(kvt_msg_encode(build(ENV_CASE(TAIL_REPLY)), &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    const Kvtier__TailReply *r = d->tail_reply;
    assert_true(r->found);
    assert_memory_equal(r->key.data, g_key[3], 32);
    assert_memory_equal(r->parent.data, g_key[2], 32);
    assert_int_equal(r->n_tokens, 5);
    assert_memory_equal(r->tokens, g_tokens, sizeof(g_tokens));
    assert_true(r->checksum == 0x0123456789abcdefull);
    assert_int_equal(r->payload.len, 1000);
    assert_memory_equal(r->payload.data, g_big, 1000);
    kvt_msg_free(d);
    kvt_free(b);

    /* Not found: nothing but the flag, and empty key and parent pass. */
    kvt_msg_t *m = build(ENV_CASE(TAIL_REPLY));
    *m->tail_reply = (Kvtier__TailReply)KVTIER__TAIL_REPLY__INIT;
    assert_int_equal(kvt_msg_encode(m, &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    assert_int_equal(d->body_case, ENV_CASE(TAIL_REPLY));
    assert_false(d->tail_reply->found);
    assert_int_equal(d->tail_reply->key.len, 0);
    kvt_msg_free(d);
    kvt_free(b);
}

static void test_encode_error(void **state)
{
    uint8_t *b;
    size_t l;
    kvt_msg_t *d = NULL;
    assert_int_equal(kvt_msg_encode_error(KVT_ERR_NOT_FOUND, "no such block", &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    assert_int_equal(d->body_case, ENV_CASE(ERROR));
    assert_int_equal(d->error->code, 4);
    assert_string_equal(d->error->message, "no such block");
    kvt_msg_free(d);
    kvt_free(b);

    assert_int_equal(kvt_msg_encode_error(KVT_ERR_BUSY, NULL, &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    assert_int_equal(d->error->code, 11);
    assert_string_equal(d->error->message, "");
    kvt_msg_free(d);
    kvt_free(b);

    /* Too long for a peer to accept: cut to the bound, never inside a
     * UTF-8 sequence (4095 ASCII bytes, then a 2-byte character). */
    char *s = long_string(KVT_PROTO_MAX_STRING + 1);
    s[KVT_PROTO_MAX_STRING - 1] = (char)0xc3;
    s[KVT_PROTO_MAX_STRING] = (char)0xa9;
    assert_int_equal(kvt_msg_encode_error(KVT_ERR_IO, s, &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    assert_int_equal(strlen(d->error->message), KVT_PROTO_MAX_STRING - 1);
    kvt_msg_free(d);
    kvt_free(b);
    s = long_string(2 * KVT_PROTO_MAX_STRING);
    assert_int_equal(kvt_msg_encode_error(KVT_ERR_IO, s, &b, &l), KVT_OK);
    assert_int_equal(kvt_msg_decode(b, l, &d), KVT_OK);
    assert_int_equal(strlen(d->error->message), KVT_PROTO_MAX_STRING);
    kvt_msg_free(d);
    kvt_free(b);
}

static void test_body_names(void **state)
{
    assert_string_equal(kvt_msg_body_name(KVTIER__ENVELOPE__BODY__NOT_SET), "none");
    assert_string_equal(kvt_msg_body_name((Kvtier__Envelope__BodyCase)99), "unknown");
    assert_string_equal(kvt_msg_body_name(ENV_CASE(FETCH_REQUEST)), "fetch_request");
    assert_string_equal(kvt_msg_body_name(ENV_CASE(ERROR)), "error");
    assert_string_equal(kvt_msg_body_name(ENV_CASE(TAIL_FETCH)), "tail_fetch");
    assert_string_equal(kvt_msg_body_name(ENV_CASE(TAIL_REPLY)), "tail_reply");
    for (int i = 0; i < N_BODIES; i++) {
        const char *a = kvt_msg_body_name(ALL_BODIES[i]);
        assert_string_not_equal(a, "none");
        assert_string_not_equal(a, "unknown");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(a, kvt_msg_body_name(ALL_BODIES[j]));
    }
}

/* --- envelope-level rejections --- */

static void test_too_large(void **state)
{
    /* Exactly the bound is accepted: hello plus an unknown field (99) as
     * padding. */
    size_t max = KVT_PROTO_MAX_MSG;
    uint8_t *buf = calloc(1, max + 1);
    assert_non_null(buf);
    size_t pad = max - 10, o = 0;
    const uint8_t head[] = {0x08, KVT_PROTO_VERSION, 0x52, 0x00, 0x9a, 0x06};
    memcpy(buf, head, sizeof(head));
    o = sizeof(head);
    for (size_t v = pad; v; v >>= 7)
        buf[o++] = (uint8_t)(v & 0x7f) | (v >= 0x80 ? 0x80 : 0);
    assert_int_equal(o + pad, max);
    char why[1024];
    assert_int_equal(decode_why(buf, max, why, sizeof(why)), KVT_OK);
    /* One byte more is refused before protobuf-c sees it. */
    buf[max] = 0x00;
    assert_int_equal(decode_why(buf, max + 1, why, sizeof(why)), KVT_ERR_TOO_LARGE);
    assert_non_null(strstr(why, "reason=too large"));
    assert_int_equal(decode_why(buf, SIZE_MAX, why, sizeof(why)), KVT_ERR_TOO_LARGE);
    free(buf);
}

static void test_garbage(void **state)
{
    static const struct {
        uint8_t b[12];
        size_t n;
    } g[] = {
        {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 12},
        {{0x08}, 1},                               /* varint missing */
        {{0x08, 0x81}, 2},                         /* varint cut */
        {{0x0f, 0x01}, 2},                         /* wire type 7 */
        {{0x08, KVT_PROTO_VERSION, 0x52, 0x05, 0x0a}, 5},       /* hello longer than the input */
        {{0x08, KVT_PROTO_VERSION, 0x52, 0x02, 0x0a, 0x05}, 6}, /* string longer than hello */
        {{0x00, 0x01}, 2},                         /* field number 0 */
        {{0x08, KVT_PROTO_VERSION, 0x52, 0x01, 0xff}, 5},       /* hello holding garbage */
    };
    char why[1024];
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        kvt_status_t st = decode_why(g[i].b, g[i].n, why, sizeof(why));
        if (st != KVT_ERR_CORRUPT)
            fail_msg("garbage %zu: st=%d", i, st);
        assert_non_null(strstr(why, "reason=not a protobuf envelope"));
    }
    /* The well-formed neighbour of the last one. */
    const uint8_t ok[] = {0x08, KVT_PROTO_VERSION, 0x52, 0x02, 0x0a, 0x00};
    assert_int_equal(decode_why(ok, sizeof(ok), why, sizeof(why)), KVT_OK);
}

/* Every proper prefix of every sample fails: the empty one on the version,
 * the bare version on the missing body, the rest in protobuf-c. */
static void test_truncated(void **state)
{
    char why[1024];
    for (int i = 0; i < N_BODIES; i++) {
        size_t len;
        uint8_t *buf = pack_raw(build(ALL_BODIES[i]), &len);
        assert_int_equal(decode_why(buf, len, why, sizeof(why)), KVT_OK);
        for (size_t n = 0; n < len; n++) {
            uint8_t *cut = malloc(n ? n : 1); /* exact size, so ASan sees overreads */
            assert_non_null(cut);
            memcpy(cut, buf, n);
            kvt_status_t want = n == 0 ? KVT_ERR_MISMATCH : n == 2 ? KVT_ERR_INVALID
                                                                   : KVT_ERR_CORRUPT;
            kvt_status_t st = decode_why(cut, n, why, sizeof(why));
            if (st != want)
                fail_msg("body %d cut at %zu of %zu: st=%d want=%d", i, n, len, st, want);
            free(cut);
        }
        free(buf);
    }
}

static void test_version(void **state)
{
    const uint32_t bad[] = {0, KVT_PROTO_VERSION - 1, KVT_PROTO_VERSION + 1, 255, UINT32_MAX};
    char why[1024];
    kvt_msg_t *m = build(ENV_CASE(ACK));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        m->version = bad[i];
        assert_int_equal(try_msg(m, why, sizeof(why)), KVT_ERR_MISMATCH);
        assert_non_null(strstr(why, "reason=version"));
    }
    m->version = KVT_PROTO_VERSION;
    assert_int_equal(try_msg(m, why, sizeof(why)), KVT_OK);
}

static void test_no_body(void **state)
{
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.version = KVT_PROTO_VERSION;
    assert_rejected(&m, "body=none", "reason=no body");
    /* A body of a type this schema does not know: field 40, and field 9. */
    const uint8_t unknown40[] = {0x08, KVT_PROTO_VERSION, 0xc2, 0x02, 0x03, 0x0a, 0x01, 0x61};
    const uint8_t unknown9[] = {0x08, KVT_PROTO_VERSION, 0x48, 0x05};
    char why[1024];
    assert_int_equal(decode_why(unknown40, sizeof(unknown40), why, sizeof(why)),
                     KVT_ERR_INVALID);
    assert_non_null(strstr(why, "reason=no body"));
    assert_int_equal(decode_why(unknown9, sizeof(unknown9), why, sizeof(why)), KVT_ERR_INVALID);
    /* The same unknown field beside a known body is kept, not rejected. */
    const uint8_t beside[] = {0x08, KVT_PROTO_VERSION, 0xba, 0x01, 0x00, 0xc2, 0x02, 0x01, 0x61};
    kvt_msg_t *d = NULL;
    assert_int_equal(kvt_msg_decode(beside, sizeof(beside), &d), KVT_OK);
    assert_int_equal(d->body_case, ENV_CASE(ACK));
    assert_int_equal(d->base.n_unknown_fields, 1);
    kvt_msg_free(d);
}

/* Pack m, turn the one unknown field 16 = 5 (0x80 0x01 0x05) into field
 * 0 with a padded tag (0x80 0x00 0x05, same length) and decode. */
static kvt_status_t try_field_zero(const kvt_msg_t *m, char *why, size_t cap)
{
    size_t len, at = 0;
    uint8_t *buf = pack_raw(m, &len);
    for (size_t i = 0; i + 2 < len; i++)
        if (buf[i] == 0x80 && buf[i + 1] == 0x01 && buf[i + 2] == 0x05)
            at = i + 1;
    assert_true(at > 0);
    buf[at] = 0x00;
    kvt_status_t st = decode_why(buf, len, why, cap);
    free(buf);
    return st;
}

/* protobuf-c takes field number 0 in a padded tag (0x80 0x00) as an
 * unknown field and writes it back as 0x00, which it refuses: accepting it
 * would let a relayed message turn invalid.  Refused at every level. */
static void test_field_zero(void **state)
{
    const uint8_t env[] = {0x08, KVT_PROTO_VERSION, 0xba, 0x01, 0x00, 0x80, 0x00, 0x05};
    const uint8_t body[] = {0x08, KVT_PROTO_VERSION, 0xba, 0x01, 0x03, 0x80, 0x00, 0x05};
    const uint8_t canonical[] = {0x08, KVT_PROTO_VERSION, 0xba, 0x01, 0x02, 0x00, 0x05};
    char why[1024];
    assert_int_equal(decode_why(env, sizeof(env), why, sizeof(why)), KVT_ERR_INVALID);
    assert_non_null(strstr(why, "reason=field number 0"));
    assert_int_equal(decode_why(body, sizeof(body), why, sizeof(why)), KVT_ERR_INVALID);
    assert_non_null(strstr(why, "reason=field number 0"));
    assert_int_equal(decode_why(canonical, sizeof(canonical), why, sizeof(why)),
                     KVT_ERR_CORRUPT);
    /* In a list item: field 16 (tag 0x80 0x01) patched to a padded 0. */
    ProtobufCMessageUnknownField uf = {16, PROTOBUF_C_WIRE_TYPE_VARINT, 1, (uint8_t *)"\x05"};
    kvt_msg_t *m = build(ENV_CASE(KV_DELTA));
    m->kv_delta->events[1]->base.n_unknown_fields = 1;
    m->kv_delta->events[1]->base.unknown_fields = &uf;
    assert_int_equal(try_field_zero(m, why, sizeof(why)), KVT_ERR_INVALID);
    assert_non_null(strstr(why, "field=unknown item=1 reason=field number 0"));
    m = build(ENV_CASE(FETCH_REPLY));
    m->fetch_reply->blocks[0]->base.n_unknown_fields = 1;
    m->fetch_reply->blocks[0]->base.unknown_fields = &uf;
    assert_accepted(m); /* field 16 itself is kept */
    assert_int_equal(try_field_zero(m, why, sizeof(why)), KVT_ERR_INVALID);
    assert_non_null(strstr(why, "field=unknown item=0 reason=field number 0"));
}

/* Two bodies on the wire: the last one wins (protobuf oneof rule). */
static void test_last_body_wins(void **state)
{
    const uint8_t two[] = {0x08, KVT_PROTO_VERSION, 0x52, 0x02, 0x0a, 0x00, 0xba, 0x01, 0x02, 0x08, 0x07};
    kvt_msg_t *d = NULL;
    assert_int_equal(kvt_msg_decode(two, sizeof(two), &d), KVT_OK);
    assert_int_equal(d->body_case, ENV_CASE(ACK));
    assert_int_equal(d->ack->lease_id, 7);
    kvt_msg_free(d);
}

static void test_bad_args(void **state)
{
    kvt_msg_t *d = NULL;
    uint8_t *b = NULL;
    size_t l = 0;
    const uint8_t ok[] = {0x08, KVT_PROTO_VERSION, 0xba, 0x01, 0x00};
    assert_int_equal(kvt_msg_decode(NULL, 5, &d), KVT_ERR_INVALID);
    assert_int_equal(kvt_msg_decode(ok, sizeof(ok), NULL), KVT_ERR_INVALID);
    assert_int_equal(kvt_msg_decode(NULL, 0, &d), KVT_ERR_MISMATCH); /* empty: version 0 */
    assert_null(d);
    assert_int_equal(kvt_msg_encode(NULL, &b, &l), KVT_ERR_INVALID);
    assert_int_equal(kvt_msg_encode(build(ENV_CASE(ACK)), NULL, &l), KVT_ERR_INVALID);
    assert_int_equal(kvt_msg_encode(build(ENV_CASE(ACK)), &b, NULL), KVT_ERR_INVALID);
    assert_null(b);
    kvt_msg_free(NULL);
}

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

/* --- encode --- */

static void test_encode_too_large(void **state)
{
    size_t n = KVT_PROTO_MAX_MSG;
    uint32_t *tokens = calloc(n, sizeof(*tokens)); /* zeros: one byte each */
    assert_non_null(tokens);
    kvt_msg_t *m = build(ENV_CASE(TOKEN_STREAM));
    m->token_stream->request_id = "";
    m->token_stream->finish_reason = "";
    m->token_stream->done = 0;
    m->token_stream->tokens = tokens;
    /* Find the token count whose envelope is exactly the bound. */
    for (int i = 0; i < 4; i++) {
        m->token_stream->n_tokens = n;
        n -= kvtier__envelope__get_packed_size(m) - KVT_PROTO_MAX_MSG;
    }
    m->token_stream->n_tokens = n;
    assert_int_equal(kvtier__envelope__get_packed_size(m), KVT_PROTO_MAX_MSG);
    uint8_t *b = NULL;
    size_t l = 0;
    assert_int_equal(kvt_msg_encode(m, &b, &l), KVT_OK);
    assert_int_equal(l, KVT_PROTO_MAX_MSG);
    kvt_free(b);
    b = NULL;
    l = 0;
    m->token_stream->n_tokens = n + 1;
    assert_int_equal(kvt_msg_encode(m, &b, &l), KVT_ERR_TOO_LARGE);
    assert_null(b);
    assert_int_equal(l, 0);
    free(tokens);
}

static void test_encode_nomem(void **state)
{
    uint8_t *b = NULL;
    size_t l = 0;
    kvt_alloc_fail_after(0);
    assert_int_equal(kvt_msg_encode(build(ENV_CASE(HELLO)), &b, &l), KVT_ERR_NOMEM);
    kvt_alloc_fail_after(-1);
    assert_null(b);
    assert_int_equal(kvt_msg_encode(build(ENV_CASE(HELLO)), &b, &l), KVT_OK);
    kvt_free(b);
}

/* 1.5M empty events in 3 MB would unpack to well over 100 MB: refused by
 * the decode budget before protobuf-c allocates it all. */
static void test_decode_budget(void **state)
{
    (void)state;
    size_t n_events = 1500000, body = 2 * n_events;
    uint8_t *buf = malloc(body + 16);
    size_t len = 0;
    buf[len++] = 0x08; /* version */
    buf[len++] = KVT_PROTO_VERSION;
    buf[len++] = (14 << 3) | 2; /* kv_delta */
    for (size_t v = body; ; v >>= 7) { /* varint length */
        buf[len++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        if (v <= 0x7f)
            break;
    }
    for (size_t i = 0; i < n_events; i++) {
        buf[len++] = (3 << 3) | 2; /* events: an empty KvEvent */
        buf[len++] = 0;
    }
    kvt_msg_t *m = NULL;
    assert_true(len <= KVT_PROTO_MAX_MSG);
    assert_int_equal(kvt_msg_decode(buf, len, &m), KVT_ERR_TOO_LARGE);
    assert_null(m);
    free(buf);
}

int main(void)
{
    init_keys();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_all_bodies),
        cmocka_unit_test(test_roundtrip_fields),
        cmocka_unit_test(test_roundtrip_tail),
        cmocka_unit_test(test_encode_error),
        cmocka_unit_test(test_body_names),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_no_body),
        cmocka_unit_test(test_field_zero),
        cmocka_unit_test(test_last_body_wins),
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_key_length),
        cmocka_unit_test(test_tail_bounds),
        cmocka_unit_test(test_list_bounds),
        cmocka_unit_test(test_event_count),
        cmocka_unit_test(test_string_length),
        cmocka_unit_test(test_blob_length),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_floats),
        cmocka_unit_test(test_encode_too_large),
        cmocka_unit_test(test_encode_nomem),
        cmocka_unit_test(test_decode_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
