/* Tests for envelope attachments (proto/msg.h, proto/attach.c): the bytes
 * that announce one (kvt_msg_attach_prefix) and the decode that leaves it
 * in the input buffer (kvt_msg_decode_attached).
 *
 * A fetch reply whose descriptors locate their payloads by attach_offset
 * is sent the way a server sends it, kvt_msg_encode(msg) || prefix(n) ||
 * n bytes, and must decode with the attachment pointing into the input (no
 * copy) while plain kvt_msg_decode of the same bytes copies it.  Every
 * malformed neighbour (attachment not last, twice, a length past the end,
 * every proper prefix, another version, over the size bound) is refused
 * with its own status, and the outputs stay untouched on failure.  Inputs
 * are copied into buffers of their exact size, so ASan sees any overread. */
#include "proto/msg.h"

#include "common/alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ATT_LEN 4000u
#define PAY0_LEN 1000u /* descriptor 0: [0, 1000); descriptor 1: [1000, 4000) */

static uint8_t g_key[2][32];
static uint8_t g_att[ATT_LEN];
static uint8_t g_hdr[216];

static Kvtier__BlockDescriptor s_desc[2];
static Kvtier__BlockDescriptor *s_descp[2];
static Kvtier__BlockFetchReply s_frep;
static kvt_msg_t g_env;

static ProtobufCBinaryData bd(const uint8_t *p, size_t n)
{
    return (ProtobufCBinaryData){n, (uint8_t *)p};
}

static void init_data(void)
{
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 32; j++)
            g_key[i][j] = (uint8_t)(i * 32 + j + 1);
    for (size_t i = 0; i < ATT_LEN; i++)
        g_att[i] = (uint8_t)(i * 131u + (i >> 8) + 7u);
    for (size_t i = 0; i < sizeof(g_hdr); i++)
        g_hdr[i] = (uint8_t)('a' + i % 26);
}

/* An inline fetch reply: two blocks whose payloads lie in the attachment. */
static kvt_msg_t *build_reply(void)
{
    for (int i = 0; i < 2; i++) {
        s_desc[i] = (Kvtier__BlockDescriptor)KVTIER__BLOCK_DESCRIPTOR__INIT;
        s_desc[i].key = bd(g_key[i], 32);
        s_desc[i].status = KVTIER__BLOCK_DESCRIPTOR__STATUS__OK;
        s_desc[i].header = bd(g_hdr, sizeof(g_hdr));
        s_descp[i] = &s_desc[i];
    }
    s_desc[0].attach_offset = 0;
    s_desc[0].length = PAY0_LEN;
    s_desc[1].attach_offset = PAY0_LEN;
    s_desc[1].length = ATT_LEN - PAY0_LEN;
    s_frep = (Kvtier__BlockFetchReply)KVTIER__BLOCK_FETCH_REPLY__INIT;
    s_frep.n_blocks = 2;
    s_frep.blocks = s_descp;
    g_env = (kvt_msg_t)KVTIER__ENVELOPE__INIT;
    g_env.body_case = KVTIER__ENVELOPE__BODY_FETCH_REPLY;
    g_env.fetch_reply = &s_frep;
    return &g_env;
}

/* A growable byte string; every piece is appended with cat(). */
typedef struct {
    uint8_t *b;
    size_t len;
} bytes_t;

static void cat(bytes_t *s, const void *p, size_t n)
{
    s->b = realloc(s->b, s->len + n + 1);
    assert_non_null(s->b);
    if (n)
        memcpy(s->b + s->len, p, n);
    s->len += n;
}

static void cat_encoded(bytes_t *s, kvt_msg_t *m)
{
    uint8_t *enc;
    size_t n;
    assert_int_equal(kvt_msg_encode(m, &enc, &n), KVT_OK);
    cat(s, enc, n);
    kvt_free(enc);
}

static void cat_prefix(bytes_t *s, size_t att_len)
{
    uint8_t pre[KVT_MSG_ATTACH_PREFIX_MAX];
    cat(s, pre, kvt_msg_attach_prefix(att_len, pre));
}

/* The encoded reply with the attachment (n bytes of g_att) after it. */
static bytes_t attached_reply(size_t n)
{
    bytes_t s = {0};
    cat_encoded(&s, build_reply());
    cat_prefix(&s, n);
    cat(&s, g_att, n);
    return s;
}

/* decode_attached on an exact-size copy of [p, p+n); on failure the
 * outputs must be left as they were. */
static kvt_status_t try_attached(const uint8_t *p, size_t n)
{
    uint8_t *cut = malloc(n ? n : 1);
    assert_non_null(cut);
    if (n)
        memcpy(cut, p, n);
    kvt_msg_t *m = &g_env; /* sentinels */
    const uint8_t *att = g_att;
    size_t att_len = 12345;
    kvt_status_t st = kvt_msg_decode_attached(cut, n, &m, &att, &att_len);
    if (st == KVT_OK) {
        assert_ptr_not_equal(m, &g_env);
        assert_true(att == NULL || (att >= cut && att + att_len <= cut + n));
        kvt_msg_free(m);
    } else {
        assert_ptr_equal(m, &g_env);
        assert_ptr_equal(att, g_att);
        assert_int_equal(att_len, 12345);
    }
    free(cut);
    return st;
}

/* --- the prefix --- */

static void test_prefix_bytes(void **state)
{
    static const struct {
        size_t len;
        uint8_t want[KVT_MSG_ATTACH_PREFIX_MAX];
        size_t n;
    } v[] = {
        {0, {0x12, 0x00}, 2},
        {1, {0x12, 0x01}, 2},
        {127, {0x12, 0x7f}, 2},
        {128, {0x12, 0x80, 0x01}, 3},
        {300, {0x12, 0xac, 0x02}, 3},
        {16383, {0x12, 0xff, 0x7f}, 3},
        {16384, {0x12, 0x80, 0x80, 0x01}, 4},
        {(size_t)1 << 32, {0x12, 0x80, 0x80, 0x80, 0x80, 0x10}, 6},
        {SIZE_MAX, {0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 11},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint8_t out[KVT_MSG_ATTACH_PREFIX_MAX + 1];
        memset(out, 0xee, sizeof(out));
        size_t n = kvt_msg_attach_prefix(v[i].len, out);
        if (n != v[i].n || memcmp(out, v[i].want, n) != 0)
            fail_msg("prefix of %zu: %zu bytes, want %zu", v[i].len, n, v[i].n);
        assert_true(n <= KVT_MSG_ATTACH_PREFIX_MAX);
        assert_int_equal(out[n], 0xee); /* nothing written past what it says */
    }
}

/* The prefix is what protobuf-c itself writes before a bytes field 2. */
static void test_prefix_matches_protobuf(void **state)
{
    static uint8_t data[16385];
    const size_t lens[] = {1, 127, 128, 16383, 16384, 16385};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        kvt_msg_t m = KVTIER__ENVELOPE__INIT; /* version 0: nothing but field 2 */
        m.attachment = bd(data, lens[i]);
        size_t n = kvtier__envelope__get_packed_size(&m);
        uint8_t *buf = malloc(n);
        assert_non_null(buf);
        assert_int_equal(kvtier__envelope__pack(&m, buf), n);
        uint8_t pre[KVT_MSG_ATTACH_PREFIX_MAX];
        size_t pn = kvt_msg_attach_prefix(lens[i], pre);
        assert_int_equal(pn + lens[i], n);
        assert_memory_equal(buf, pre, pn);
        free(buf);
    }
}

/* --- decoding in place --- */

static void test_attached_in_place(void **state)
{
    bytes_t s = attached_reply(ATT_LEN);
    kvt_msg_t *m = NULL;
    const uint8_t *att = NULL;
    size_t att_len = 0;
    assert_int_equal(kvt_msg_decode_attached(s.b, s.len, &m, &att, &att_len), KVT_OK);
    /* In place: the last ATT_LEN bytes of the input, not a copy. */
    assert_ptr_equal(att, s.b + s.len - ATT_LEN);
    assert_int_equal(att_len, ATT_LEN);
    assert_int_equal(m->attachment.len, 0);
    assert_int_equal(m->version, KVT_PROTO_VERSION);
    assert_int_equal(m->body_case, KVTIER__ENVELOPE__BODY_FETCH_REPLY);
    const Kvtier__BlockFetchReply *r = m->fetch_reply;
    assert_int_equal(r->n_blocks, 2);
    for (int i = 0; i < 2; i++) {
        const Kvtier__BlockDescriptor *d = r->blocks[i];
        assert_memory_equal(d->key.data, g_key[i], 32);
        assert_int_equal(d->header.len, sizeof(g_hdr));
        assert_true(d->attach_offset + d->length <= att_len);
        assert_memory_equal(att + d->attach_offset, g_att + s_desc[i].attach_offset,
                            s_desc[i].length);
    }
    assert_int_equal(r->blocks[0]->attach_offset, 0);
    assert_int_equal(r->blocks[1]->attach_offset, PAY0_LEN);
    assert_int_equal(r->blocks[1]->length, ATT_LEN - PAY0_LEN);
    kvt_msg_free(m);
    assert_int_equal(try_attached(s.b, s.len), KVT_OK); /* exact-size copy */
    free(s.b);
}

/* The same bytes are a valid envelope for plain decode, which copies. */
static void test_plain_decode_copies(void **state)
{
    bytes_t s = attached_reply(ATT_LEN);
    kvt_msg_t *m = NULL;
    assert_int_equal(kvt_msg_decode(s.b, s.len, &m), KVT_OK);
    assert_int_equal(m->attachment.len, ATT_LEN);
    assert_memory_equal(m->attachment.data, g_att, ATT_LEN);
    const uint8_t *d = m->attachment.data;
    assert_true(d + ATT_LEN <= s.b || d >= s.b + s.len); /* its own memory */
    assert_int_equal(m->fetch_reply->n_blocks, 2);
    kvt_msg_free(m);
    free(s.b);
}

static void test_no_attachment(void **state)
{
    bytes_t s = {0};
    cat_encoded(&s, build_reply());
    kvt_msg_t *m = NULL;
    const uint8_t *att = g_att;
    size_t att_len = 99;
    assert_int_equal(kvt_msg_decode_attached(s.b, s.len, &m, &att, &att_len), KVT_OK);
    assert_null(att);
    assert_int_equal(att_len, 0);
    assert_int_equal(m->attachment.len, 0);
    assert_int_equal(m->fetch_reply->n_blocks, 2);
    kvt_msg_free(m);
    free(s.b);
}

static void test_zero_length_attachment(void **state)
{
    bytes_t s = attached_reply(0);
    kvt_msg_t *m = NULL;
    const uint8_t *att = g_att;
    size_t att_len = 99;
    assert_int_equal(kvt_msg_decode_attached(s.b, s.len, &m, &att, &att_len), KVT_OK);
    assert_int_equal(att_len, 0);
    assert_true(att == NULL || att == s.b + s.len);
    assert_int_equal(m->attachment.len, 0);
    assert_int_equal(m->fetch_reply->n_blocks, 2);
    kvt_msg_free(m);
    assert_int_equal(try_attached(s.b, s.len), KVT_OK);
    free(s.b);
}

/* --- malformed neighbours --- */

/* kvt_msg_encode writes a set attachment in field order, before the body;
 * so does a field that follows an appended attachment. */
static void test_attachment_not_last(void **state)
{
    kvt_msg_t *r = build_reply();
    r->attachment = bd(g_att, 100);
    bytes_t s = {0};
    cat_encoded(&s, r);
    kvt_msg_t *m = NULL;
    assert_int_equal(kvt_msg_decode(s.b, s.len, &m), KVT_OK); /* valid protobuf */
    assert_int_equal(m->attachment.len, 100);
    kvt_msg_free(m);
    assert_int_equal(try_attached(s.b, s.len), KVT_ERR_INVALID);
    free(s.b);

    s = attached_reply(100);
    const uint8_t version[] = {0x08, KVT_PROTO_VERSION}; /* field 1 again */
    cat(&s, version, sizeof(version));
    assert_int_equal(try_attached(s.b, s.len), KVT_ERR_INVALID);
    free(s.b);
}

static void test_attachment_twice(void **state)
{
    bytes_t s = attached_reply(100);
    cat_prefix(&s, 50);
    cat(&s, g_att, 50);
    assert_int_equal(try_attached(s.b, s.len), KVT_ERR_INVALID);
    free(s.b);

    s = attached_reply(0); /* an empty one counts too */
    cat_prefix(&s, 0);
    assert_int_equal(try_attached(s.b, s.len), KVT_ERR_INVALID);
    free(s.b);

    kvt_msg_t *r = build_reply(); /* one in the middle, one last */
    r->attachment = bd(g_att, 10);
    s = (bytes_t){0};
    cat_encoded(&s, r);
    cat_prefix(&s, 10);
    cat(&s, g_att, 10);
    assert_int_equal(try_attached(s.b, s.len), KVT_ERR_INVALID);
    free(s.b);
}

static void test_length_past_end(void **state)
{
    bytes_t enc = {0};
    cat_encoded(&enc, build_reply());
    static const struct {
        uint8_t tail[12];
        size_t n;
    } t[] = {
        {{0x12}, 1},                   /* tag, no length */
        {{0x12, 0x80}, 2},             /* length varint cut */
        {{0x12, 0xff, 0xff}, 3},       /* ... two bytes in */
        {{0x12, 0x05, 1, 2, 3, 4}, 6}, /* one byte short */
        {{0x12, 0x80, 0x80, 0x80, 0x80, 0x10, 1}, 7}, /* 4 GiB announced */
        {{0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 9}, /* 10-byte varint cut */
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        bytes_t s = {0};
        cat(&s, enc.b, enc.len);
        cat(&s, t[i].tail, t[i].n);
        kvt_status_t st = try_attached(s.b, s.len);
        if (st != KVT_ERR_CORRUPT)
            fail_msg("tail %zu: st=%d want corrupt", i, st);
        free(s.b);
    }
    /* An 11-byte varint (over 64 bits) is refused as well. */
    bytes_t s = {0};
    cat(&s, enc.b, enc.len);
    const uint8_t over[] = {0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                            0x01};
    cat(&s, over, sizeof(over));
    assert_int_equal(try_attached(s.b, s.len), KVT_ERR_CORRUPT);
    free(s.b);
    /* Truncated inside the attachment, with a 3-byte length. */
    s = attached_reply(ATT_LEN);
    assert_int_equal(try_attached(s.b, s.len - 1), KVT_ERR_CORRUPT);
    assert_int_equal(try_attached(s.b, s.len - ATT_LEN + 1), KVT_ERR_CORRUPT);
    assert_int_equal(try_attached(s.b, s.len), KVT_OK); /* the neighbour */
    free(s.b);
    free(enc.b);
}

/* Every proper prefix fails, but for the one that ends with the envelope
 * (a valid message without attachment): the empty one on the version, the
 * bare version on the missing body, the rest as corrupt. */
static void test_every_prefix(void **state)
{
    bytes_t enc = {0};
    cat_encoded(&enc, build_reply());
    bytes_t s = attached_reply(300); /* a 2-byte length to cut through */
    for (size_t n = 0; n < s.len; n++) {
        kvt_status_t want = n == 0 ? KVT_ERR_MISMATCH
                          : n == 2 ? KVT_ERR_INVALID
                          : n == enc.len ? KVT_OK : KVT_ERR_CORRUPT;
        kvt_status_t st = try_attached(s.b, n);
        if (st != want)
            fail_msg("cut at %zu of %zu (envelope %zu): st=%d want=%d", n, s.len, enc.len, st,
                     want);
    }
    assert_int_equal(try_attached(s.b, s.len), KVT_OK);
    free(s.b);
    free(enc.b);
}

static void test_version_mismatch(void **state)
{
    kvt_msg_t *r = build_reply();
    const uint32_t bad[] = {0, 1, KVT_PROTO_VERSION + 1, UINT32_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r->version = bad[i]; /* packed raw: kvt_msg_encode would set ours */
        size_t n = kvtier__envelope__get_packed_size(r);
        bytes_t s = {.b = malloc(n + 1), .len = n};
        assert_non_null(s.b);
        assert_int_equal(kvtier__envelope__pack(r, s.b), n);
        cat_prefix(&s, 100);
        cat(&s, g_att, 100);
        assert_int_equal(try_attached(s.b, s.len), KVT_ERR_MISMATCH);
        free(s.b);
    }
}

/* Exactly KVT_PROTO_MAX_MSG bytes decode (in place); one more is refused. */
static void test_too_large(void **state)
{
    bytes_t enc = {0};
    cat_encoded(&enc, build_reply());
    size_t max = KVT_PROTO_MAX_MSG;
    size_t att_len = max - enc.len - 5; /* a 5-byte prefix: 2^21 <= att_len < 2^28 */
    uint8_t pre[KVT_MSG_ATTACH_PREFIX_MAX];
    assert_int_equal(kvt_msg_attach_prefix(att_len, pre), 5);
    uint8_t *buf = calloc(1, max + 8);
    assert_non_null(buf);
    memcpy(buf, enc.b, enc.len);
    memcpy(buf + enc.len, pre, 5);
    kvt_msg_t *m = NULL;
    const uint8_t *att = NULL;
    size_t got = 0;
    assert_int_equal(kvt_msg_decode_attached(buf, max, &m, &att, &got), KVT_OK);
    assert_ptr_equal(att, buf + enc.len + 5);
    assert_int_equal(got, att_len);
    kvt_msg_free(m);

    assert_int_equal(kvt_msg_attach_prefix(att_len + 1, pre), 5);
    memcpy(buf + enc.len, pre, 5);
    m = &g_env;
    att = g_att;
    got = 7;
    assert_int_equal(kvt_msg_decode_attached(buf, max + 1, &m, &att, &got), KVT_ERR_TOO_LARGE);
    assert_ptr_equal(m, &g_env);
    assert_ptr_equal(att, g_att);
    assert_int_equal(got, 7);
    assert_int_equal(kvt_msg_decode_attached(buf, SIZE_MAX, &m, &att, &got), KVT_ERR_TOO_LARGE);
    free(buf);
    free(enc.b);
}

static void test_bad_args(void **state)
{
    bytes_t s = attached_reply(10);
    kvt_msg_t *m = NULL;
    const uint8_t *att = NULL;
    size_t n = 0;
    assert_int_equal(kvt_msg_decode_attached(s.b, s.len, NULL, &att, &n), KVT_ERR_INVALID);
    assert_int_equal(kvt_msg_decode_attached(s.b, s.len, &m, NULL, &n), KVT_ERR_INVALID);
    assert_int_equal(kvt_msg_decode_attached(s.b, s.len, &m, &att, NULL), KVT_ERR_INVALID);
    assert_int_equal(kvt_msg_decode_attached(NULL, s.len, &m, &att, &n), KVT_ERR_INVALID);
    assert_null(m);
    assert_null(att);
    assert_int_equal(kvt_msg_decode_attached(s.b, s.len, &m, &att, &n), KVT_OK);
    assert_int_equal(n, 10);
    kvt_msg_free(m);
    free(s.b);
}

int main(void)
{
    init_data();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_bytes),
        cmocka_unit_test(test_prefix_matches_protobuf),
        cmocka_unit_test(test_attached_in_place),
        cmocka_unit_test(test_plain_decode_copies),
        cmocka_unit_test(test_no_attachment),
        cmocka_unit_test(test_zero_length_attachment),
        cmocka_unit_test(test_attachment_not_last),
        cmocka_unit_test(test_attachment_twice),
        cmocka_unit_test(test_length_past_end),
        cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_version_mismatch),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
