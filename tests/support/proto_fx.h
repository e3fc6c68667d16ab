/* Shared by the proto/msg tests (test_proto.c, test_proto_bounds.c): one
 * sample of every body type with every field away from its default
 * (build), and the helpers that pack a message raw and check how the
 * decoder takes it, with its debug log line captured (assert_rejected,
 * assert_accepted).  Test programs only: static data and functions, one
 * copy per test file. */
#ifndef KVT_TESTS_SUPPORT_PROTO_FX_H
#define KVT_TESTS_SUPPORT_PROTO_FX_H

#include "proto/msg.h"

#include "common/alloc.h"
#include "common/log.h"

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
static Kvtier__LocalMap s_lm;
static Kvtier__LeaseRenew s_lr;
static Kvtier__Release s_rel;
static Kvtier__Ack s_ack;
static Kvtier__Error s_err;
static Kvtier__TailFetch s_tf;
static Kvtier__TailReply s_tr;

static inline ProtobufCBinaryData bd(const uint8_t *p, size_t n)
{
    return (ProtobufCBinaryData){n, (uint8_t *)p};
}

static inline void init_keys(void)
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 32; j++)
            g_key[i][j] = (uint8_t)(i * 32 + j + 1);
    for (int i = 0; i < 3; i++)
        g_keys[i] = bd(g_key[i], 32);
    for (size_t i = 0; i < BIG; i++)
        g_big[i] = (uint8_t)('a' + i % 26);
}

static inline void mk_events(size_t *n_p, Kvtier__KvEvent ***v_p)
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

static inline void mk_membership(void)
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

static inline void mk_requests(void)
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

static inline void mk_blocks(void)
{
    s_freq = (Kvtier__BlockFetchRequest)KVTIER__BLOCK_FETCH_REQUEST__INIT;
    s_freq.n_keys = 3;
    s_freq.keys = g_keys;
    s_freq.lease_ms = 500;
    s_freq.max_reply_bytes = 1 << 20;
    s_freq.local_read = 1;
    s_freq.accept_rma = 1;
    for (int i = 0; i < 2; i++) {
        s_desc[i] = (Kvtier__BlockDescriptor)KVTIER__BLOCK_DESCRIPTOR__INIT;
        s_desc[i].key = bd(g_key[i], 32);
        s_desc[i].status = i ? KVTIER__BLOCK_DESCRIPTOR__STATUS__MISSING
                             : KVTIER__BLOCK_DESCRIPTOR__STATUS__OK;
        s_desc[i].addr = 0x7f0000001000ull;
        s_desc[i].length = 65536;
        s_desc[i].header = bd(g_big, 216);
        s_desc[i].attach_offset = 4096u * (unsigned)i;
        s_descp[i] = &s_desc[i];
    }
    s_frep = (Kvtier__BlockFetchReply)KVTIER__BLOCK_FETCH_REPLY__INIT;
    s_frep.lease_id = 5;
    s_frep.lease_ms = 1000;
    s_frep.rkey = bd(g_big, 300);
    s_frep.n_blocks = 2;
    s_frep.blocks = s_descp;
    s_frep.local_pid = 4242;
    s_lm = (Kvtier__LocalMap)KVTIER__LOCAL_MAP__INIT;
    s_lm.fd = 7;
    s_lm.inode = 123456;
    s_lm.addr = 0x7f0000000000ull;
    s_lm.length = 1ull << 30;
    s_frep.local_map = &s_lm;
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
static inline kvt_msg_t *build(Kvtier__Envelope__BodyCase bc)
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
static inline uint8_t *pack_raw(const kvt_msg_t *m, size_t *len_p)
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
static inline kvt_status_t decode_why(const void *buf, size_t len, char *why, size_t cap)
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
static inline kvt_status_t try_msg(const kvt_msg_t *m, char *why, size_t cap)
{
    size_t len;
    uint8_t *buf = pack_raw(m, &len);
    kvt_status_t st = decode_why(buf, len, why, cap);
    free(buf);
    return st;
}

/* m is rejected as INVALID with a log line containing both fragments. */
static inline void assert_rejected(const kvt_msg_t *m, const char *frag1, const char *frag2)
{
    char why[2048];
    kvt_status_t st = try_msg(m, why, sizeof(why));
    if (st != KVT_ERR_INVALID || !strstr(why, frag1) || !strstr(why, frag2))
        fail_msg("want invalid with '%s' '%s', got st=%d log='%s'", frag1, frag2, st, why);
}

static inline void assert_accepted(const kvt_msg_t *m)
{
    char why[2048];
    kvt_status_t st = try_msg(m, why, sizeof(why));
    if (st != KVT_OK)
        fail_msg("want ok, got st=%d log='%s'", st, why);
}

/* A NUL-terminated string of n bytes in g_big (n < BIG). */
static inline char *long_string(size_t n)
{
    static char s[BIG];
    memcpy(s, g_big, n);
    s[n] = '\0';
    return s;
}

#endif
