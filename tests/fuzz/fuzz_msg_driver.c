/* Stand-alone driver for fuzz_msg.c, for builds without libFuzzer.
 *
 * Builds seed envelopes here, one valid sample of every body type plus a
 * few that must be rejected (a 31-byte key, an unknown enum value, another
 * version, an unknown body type), runs LLVMFuzzerTestOneInput over them and
 * then over N deterministic random mutations: bit flips, interesting bytes,
 * small adds to a byte (length prefixes and varints), truncations,
 * insertions, deletions, splices of two seeds, and appended well-formed
 * fields with random numbers and wire types (protobuf parses those, so they
 * reach the codec's own checks rather than stopping in protobuf-c).  The
 * target aborts on a violation; this driver also fails if a seed is not
 * decoded as expected or if the mutations never produced an accepted, an
 * invalid and a corrupt message.
 *
 *   fuzz_msg_driver [N] [FILE...]        N mutations (default 200000)
 *   fuzz_msg_driver --write-seeds DIR    write the seeds as files */
#include "tests/fuzz/driver_util.h"
#include "proto/msg.h"

#include "common/alloc.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define MAX_SEEDS 32
#define SEED_CAP 4096 /* the libFuzzer run's -max_len */

typedef struct {
    uint8_t bytes[SEED_CAP];
    size_t len;
    kvt_status_t want; /* decode status of the seed */
} input_t;

static input_t g_seeds[MAX_SEEDS];
static int g_n_seeds;
static uint64_t g_rng = 0x70726f746f31ull;

static uint64_t rnd(void) { return fuzz_splitmix64(&g_rng); }

/* --- seeds --- */

static uint8_t g_key[3][32];
static uint8_t g_blob[1200];
static uint32_t g_tokens[] = {0, 1, 127, 128, 16383, 16384, 151935, 0xffffffffu};
static ProtobufCBinaryData g_keys[3];

static void add_seed(kvt_msg_t *env, uint32_t version, kvt_status_t want)
{
    env->version = version;
    size_t n = kvtier__envelope__get_packed_size(env);
    if (g_n_seeds == MAX_SEEDS || n > SEED_CAP) {
        fprintf(stderr, "seed %d does not fit\n", g_n_seeds);
        exit(1);
    }
    input_t *in = &g_seeds[g_n_seeds++];
    in->len = kvtier__envelope__pack(env, in->bytes);
    in->want = want;
}

/* One body as an envelope; the union holds one pointer, any member sets it. */
static void add_body(Kvtier__Envelope__BodyCase bc, void *body, kvt_status_t want)
{
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = bc;
    env.hello = body;
    add_seed(&env, KVT_PROTO_VERSION, want);
}

static void seeds_membership(void)
{
    Kvtier__Hello h = KVTIER__HELLO__INIT;
    h.node_id = "prefill-0";
    h.role = "prefill";
    h.model_fingerprint = "9f86d081884c7d65";
    add_body(KVTIER__ENVELOPE__BODY_HELLO, &h, KVT_OK);
    Kvtier__NodeRegister r = KVTIER__NODE_REGISTER__INIT;
    r.node_id = "store-1";
    r.role = "store";
    r.ucx_address = "10.0.0.7:13337";
    r.http_address = "10.0.0.7:8080";
    r.host_capacity_bytes = 64ull << 30;
    r.disk_capacity_bytes = 2ull << 40;
    add_body(KVTIER__ENVELOPE__BODY_NODE_REGISTER, &r, KVT_OK);
    Kvtier__Heartbeat hb = KVTIER__HEARTBEAT__INIT;
    hb.node_id = "decode-3";
    hb.seq = 123456;
    hb.active_sequences = 17;
    hb.free_kv_slots = 4096;
    hb.queued_requests = 2;
    add_body(KVTIER__ENVELOPE__BODY_HEARTBEAT, &hb, KVT_OK);
}

static void seeds_events(void)
{
    Kvtier__KvEvent ev[3], *evp[3];
    for (int i = 0; i < 3; i++) {
        ev[i] = (Kvtier__KvEvent)KVTIER__KV_EVENT__INIT;
        ev[i].kind = (Kvtier__KvEvent__Kind)(1 + i);
        ev[i].tier = (Kvtier__Tier)(3 - i);
        ev[i].key = g_keys[(i + 1) % 3];
        ev[i].parent = g_keys[i];
        ev[i].index = (uint32_t)i;
        evp[i] = &ev[i];
    }
    Kvtier__KvEventSnapshot s = KVTIER__KV_EVENT_SNAPSHOT__INIT;
    s.node_id = "store-1";
    s.seq = 40;
    s.n_blocks = 3;
    s.blocks = evp;
    add_body(KVTIER__ENVELOPE__BODY_KV_SNAPSHOT, &s, KVT_OK);
    Kvtier__KvEventDelta d = KVTIER__KV_EVENT_DELTA__INIT;
    d.node_id = "store-1";
    d.seq = 41;
    d.n_events = 2;
    d.events = evp;
    add_body(KVTIER__ENVELOPE__BODY_KV_DELTA, &d, KVT_OK);
    ev[1].kind = (Kvtier__KvEvent__Kind)4; /* unknown enum value */
    add_body(KVTIER__ENVELOPE__BODY_KV_DELTA, &d, KVT_ERR_INVALID);
}

static void seeds_requests(void)
{
    Kvtier__PrefillRequest p = KVTIER__PREFILL_REQUEST__INIT;
    p.request_id = "req-42";
    p.n_tokens = 8;
    p.tokens = g_tokens;
    p.tenant_salt = (ProtobufCBinaryData){8, (uint8_t *)"tenant-a"};
    p.decode_node = "decode-3";
    p.max_tokens = 128;
    p.temperature = 0.8f;
    p.top_p = 0.95f;
    p.seed = 7;
    p.cache = 1;
    add_body(KVTIER__ENVELOPE__BODY_PREFILL_REQUEST, &p, KVT_OK);
    Kvtier__PrefillResult r = KVTIER__PREFILL_RESULT__INIT;
    r.request_id = "req-42";
    r.first_token = 9;
    r.n_block_keys = 3;
    r.block_keys = g_keys;
    r.cached_tokens = 16;
    r.tail_tokens = 7;
    r.first_draws = 1;
    add_body(KVTIER__ENVELOPE__BODY_PREFILL_RESULT, &r, KVT_OK);
    Kvtier__DecodeRequest d = KVTIER__DECODE_REQUEST__INIT;
    d.request_id = "req-42";
    d.n_tokens = 8;
    d.tokens = g_tokens;
    d.n_block_keys = 2;
    d.block_keys = g_keys;
    d.prefill_node = "prefill-0";
    d.tail_tokens = 7;
    d.first_draws = 1;
    d.max_tokens = 128;
    d.temperature = 0.8f;
    d.top_p = 0.95f;
    d.seed = 7;
    d.n_stop_tokens = 2;
    d.stop_tokens = g_tokens + 5;
    add_body(KVTIER__ENVELOPE__BODY_DECODE_REQUEST, &d, KVT_OK);
    Kvtier__TokenStream t = KVTIER__TOKEN_STREAM__INIT;
    t.request_id = "req-42";
    t.n_tokens = 4;
    t.tokens = g_tokens + 2;
    t.done = 1;
    t.finish_reason = "length";
    add_body(KVTIER__ENVELOPE__BODY_TOKEN_STREAM, &t, KVT_OK);
}

/* A tail fetch, a found and a missing tail reply, and a fetch with a
 * 5-byte key (rejected). */
static void seeds_tails(void)
{
    Kvtier__TailFetch f = KVTIER__TAIL_FETCH__INIT;
    f.key = g_keys[2];
    f.release = 1;
    add_body(KVTIER__ENVELOPE__BODY_TAIL_FETCH, &f, KVT_OK);
    Kvtier__TailReply r = KVTIER__TAIL_REPLY__INIT;
    r.found = 1;
    r.key = g_keys[2];
    r.parent = g_keys[1];
    r.n_tokens = 7;
    r.tokens = g_tokens;
    r.checksum = 0x9e3779b97f4a7c15ull;
    r.payload = (ProtobufCBinaryData){448, g_blob};
    add_body(KVTIER__ENVELOPE__BODY_TAIL_REPLY, &r, KVT_OK);
    Kvtier__TailReply none = KVTIER__TAIL_REPLY__INIT;
    add_body(KVTIER__ENVELOPE__BODY_TAIL_REPLY, &none, KVT_OK);
    f.key = (ProtobufCBinaryData){5, g_key[0]};
    add_body(KVTIER__ENVELOPE__BODY_TAIL_FETCH, &f, KVT_ERR_INVALID);
}

static void seeds_blocks(void)
{
    Kvtier__BlockFetchRequest f = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    f.n_keys = 3;
    f.keys = g_keys;
    f.lease_ms = 250;
    add_body(KVTIER__ENVELOPE__BODY_FETCH_REQUEST, &f, KVT_OK);
    /* Descriptors 0..2 carry statuses OK, MISSING, FAILED; an inline reply
     * below carries a payload and RETRY. */
    Kvtier__BlockDescriptor d[3], *dp[3];
    for (int i = 0; i < 3; i++) {
        d[i] = (Kvtier__BlockDescriptor)KVTIER__BLOCK_DESCRIPTOR__INIT;
        d[i].key = g_keys[i];
        d[i].status = (Kvtier__BlockDescriptor__Status)i;
        d[i].addr = 0x7f1234560000ull + 65536ull * (uint64_t)i;
        d[i].length = i ? 0 : 65536;
        d[i].header = (ProtobufCBinaryData){i ? 0 : 216, g_blob};
        dp[i] = &d[i];
    }
    Kvtier__BlockFetchReply r = KVTIER__BLOCK_FETCH_REPLY__INIT;
    r.lease_id = 1234;
    r.lease_ms = 5000;
    r.rkey = (ProtobufCBinaryData){120, g_blob};
    r.n_blocks = 3;
    r.blocks = dp;
    add_body(KVTIER__ENVELOPE__BODY_FETCH_REPLY, &r, KVT_OK);
    d[0].attach_offset = 64;
    d[1].status = KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY;
    Kvtier__BlockFetchReply inl = KVTIER__BLOCK_FETCH_REPLY__INIT;
    inl.n_blocks = 2;
    inl.blocks = dp;
    add_body(KVTIER__ENVELOPE__BODY_FETCH_REPLY, &inl, KVT_OK);
    Kvtier__LeaseRenew lr = KVTIER__LEASE_RENEW__INIT;
    lr.lease_id = 1234;
    lr.lease_ms = 5000;
    add_body(KVTIER__ENVELOPE__BODY_LEASE_RENEW, &lr, KVT_OK);
    Kvtier__Release rel = KVTIER__RELEASE__INIT;
    rel.lease_id = 1234;
    add_body(KVTIER__ENVELOPE__BODY_RELEASE, &rel, KVT_OK);
    Kvtier__Ack ack = KVTIER__ACK__INIT;
    ack.lease_id = 1234;
    add_body(KVTIER__ENVELOPE__BODY_ACK, &ack, KVT_OK);
    Kvtier__Error e = KVTIER__ERROR__INIT;
    e.code = 4;
    e.message = "not found";
    add_body(KVTIER__ENVELOPE__BODY_ERROR, &e, KVT_OK);
    seeds_tails();
    /* Rejected ones: a 31-byte key, another version, no body. */
    g_keys[1].len = 31;
    add_body(KVTIER__ENVELOPE__BODY_FETCH_REQUEST, &f, KVT_ERR_INVALID);
    g_keys[1].len = 32;
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_ACK;
    env.ack = &ack;
    add_seed(&env, KVT_PROTO_VERSION + 1, KVT_ERR_MISMATCH);
    env.body_case = KVTIER__ENVELOPE__BODY__NOT_SET;
    add_seed(&env, KVT_PROTO_VERSION, KVT_ERR_INVALID);
}

static void build_seeds(void)
{
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 32; j++)
            g_key[i][j] = (uint8_t)rnd();
        g_keys[i] = (ProtobufCBinaryData){32, g_key[i]};
    }
    for (size_t i = 0; i < sizeof(g_blob); i++)
        g_blob[i] = (uint8_t)rnd();
    seeds_membership();
    seeds_events();
    seeds_requests();
    seeds_blocks();
}

/* --- mutations --- */

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    for (; v >= 0x80; v >>= 7)
        p[n++] = (uint8_t)(v | 0x80);
    p[n++] = (uint8_t)v;
    return n;
}

/* A well-formed field: number 1..31 (bodies are 10..28), any wire type. */
static void append_field(input_t *in)
{
    uint8_t f[64];
    uint64_t r = rnd();
    unsigned wt = (const unsigned[]){0, 1, 2, 5}[r % 4];
    size_t n = put_varint(f, (uint64_t)(1 + (r >> 8) % 31) << 3 | wt);
    size_t body = wt == 1 ? 8 : wt == 5 ? 4 : wt == 2 ? (size_t)((r >> 16) % 40) : 0;
    if (wt == 0)
        n += put_varint(f + n, (r >> 16) % 3 ? (r >> 40) % 300 : rnd());
    if (wt == 2)
        n += put_varint(f + n, body);
    for (size_t i = 0; i < body; i++)
        f[n++] = (uint8_t)rnd();
    if (in->len + n <= SEED_CAP) {
        memcpy(in->bytes + in->len, f, n);
        in->len += n;
    }
}

static void insert_bytes(input_t *in, size_t at, const uint8_t *src, size_t n)
{
    if (in->len + n > SEED_CAP)
        n = SEED_CAP - in->len;
    memmove(in->bytes + at + n, in->bytes + at, in->len - at);
    memcpy(in->bytes + at, src, n);
    in->len += n;
}

static void mutate_once(input_t *in)
{
    static const uint8_t vals[] = {0x00, 0x01, 0x02, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xff};
    uint64_t r = rnd();
    size_t at = in->len ? (size_t)((r >> 8) % in->len) : 0;
    uint8_t tmp[64];
    switch (r % 9) {
    case 0: if (in->len) in->bytes[at] ^= (uint8_t)(1u << ((r >> 40) % 8)); break;
    case 1: if (in->len) in->bytes[at] = vals[(r >> 40) % sizeof(vals)]; break;
    case 2: if (in->len) in->bytes[at] = (uint8_t)(in->bytes[at] + (r >> 40) % 5 - 2); break;
    case 3: in->len = at; break;
    case 4: {
        size_t n = (size_t)((r >> 40) % 16);
        for (size_t i = 0; i < n; i++)
            tmp[i] = (uint8_t)rnd();
        insert_bytes(in, at, tmp, n);
        break;
    }
    case 5: {
        size_t n = (size_t)((r >> 40) % 16);
        n = n > in->len - at ? in->len - at : n;
        memmove(in->bytes + at, in->bytes + at + n, in->len - at - n);
        in->len -= n;
        break;
    }
    case 6: { /* a chunk of another seed */
        const input_t *o = &g_seeds[rnd() % (uint64_t)g_n_seeds];
        size_t from = (size_t)(rnd() % (o->len + 1)), n = (size_t)(rnd() % 64);
        n = n > o->len - from ? o->len - from : n;
        insert_bytes(in, at, o->bytes + from, n);
        break;
    }
    default: append_field(in); break;
    }
}

static void mutate(input_t *in)
{
    int n = 1 + (int)(rnd() % 3);
    for (int i = 0; i < n; i++)
        mutate_once(in);
}

/* --- runs --- */

static int write_seeds(const char *dir)
{
    for (int i = 0; i < g_n_seeds; i++)
        if (fuzz_write_seed(dir, i, g_seeds[i].bytes, g_seeds[i].len))
            return 1;
    return 0;
}

static int run_seeds(void)
{
    for (int i = 0; i < g_n_seeds; i++) {
        kvt_msg_t *m = NULL;
        kvt_status_t st = kvt_msg_decode(g_seeds[i].bytes, g_seeds[i].len, &m);
        kvt_msg_free(m);
        if (st != g_seeds[i].want) {
            fprintf(stderr, "seed %d decodes as %d, want %d\n", i, st, g_seeds[i].want);
            return 1;
        }
        LLVMFuzzerTestOneInput(g_seeds[i].bytes, g_seeds[i].len);
    }
    return 0;
}

/* Mutation runs; counts decode outcomes to show every stage was reached. */
static int run_mutations(long n)
{
    static input_t in;
    long by_status[16] = {0};
    for (long i = 0; i < n; i++) {
        in = g_seeds[rnd() % (uint64_t)g_n_seeds];
        mutate(&in);
        kvt_msg_t *m = NULL;
        int st = -(int)kvt_msg_decode(in.bytes, in.len, &m);
        kvt_msg_free(m);
        by_status[st >= 0 && st < 16 ? st : 15]++;
        LLVMFuzzerTestOneInput(in.bytes, in.len);
    }
    printf("mutations=%ld ok=%ld invalid=%ld corrupt=%ld mismatch=%ld\n", n, by_status[0],
           by_status[-KVT_ERR_INVALID], by_status[-KVT_ERR_CORRUPT],
           by_status[-KVT_ERR_MISMATCH]);
    if (n >= 1000 && (by_status[0] == 0 || by_status[-KVT_ERR_INVALID] == 0 ||
                      by_status[-KVT_ERR_CORRUPT] == 0)) {
        fprintf(stderr, "mutations never reached one of the decode outcomes\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    build_seeds();
    return fuzz_driver_main(argc, argv, write_seeds, run_seeds, run_mutations);
}
