/* Tests for proto/msg: the checked codec of kvtier wire messages.
 *
 * One sample of every body type, with every field away from its default,
 * round-trips byte for byte.  Every rejection path is driven with an input
 * that differs from an accepted one only in the field under test, and the
 * accepted neighbour is checked too, so a check that was dropped or moved
 * fails here; the field bounds are in test_proto_bounds.c, the samples and
 * helpers in tests/support/proto_fx.h.  Rejections are also matched against their debug log
 * line (stderr captured), which names the field and the reason: a message
 * rejected for some other reason does not pass.
 *
 * Invalid messages are built with the protobuf-c packer directly, since
 * kvt_msg_encode sets the version and (by contract) checks only the size. */
#include "tests/support/proto_fx.h"

#include <math.h>

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
    assert_int_equal(f->blocks[1]->attach_offset, 4096);
    assert_int_equal(f->local_pid, 4242);
    assert_non_null(f->local_map);
    assert_true(f->local_map->fd == 7 && f->local_map->inode == 123456 &&
                f->local_map->addr == 0x7f0000000000ull && f->local_map->length == 1ull << 30);
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
        cmocka_unit_test(test_encode_too_large),
        cmocka_unit_test(test_encode_nomem),
        cmocka_unit_test(test_decode_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
