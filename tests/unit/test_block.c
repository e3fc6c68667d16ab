/* Tests for kvstore/block: key chain against fixed vectors computed outside
 * this code base (tools/gen_key_vectors.py, Python hashlib), layout sizes,
 * and the header codec: round trip, every bit flip, every truncation,
 * forged fields with a valid header checksum, key/identity/payload checks.
 *
 * Forged headers recompute the header checksum with libxxhash directly, so
 * a field check is reached even though the checksum would catch the edit. */
#include "common/hash.h"
#include "common/xxh3_impl.h"
#include "kvstore/block.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include <cmocka.h>

/* --- fixed vectors (tools/gen_key_vectors.py --c) --- */

static const char *const ROOT_EMPTY =
    "c0cb20ba45fc15b27288d1d8c06d19f7d9565fe27e75f8e969b7dec749600639";
static const char *const ROOT_TENANT_A =
    "4271bdb4f4c07a6cc0ef7e236fe221e37df1555bd1f8d047fede1c9562dfadfb";

typedef struct {
    const char *name;
    const char *salt;
    uint32_t block_tokens;
    const char *keys[3];
} vector_t;

static const vector_t VECTORS[] = {
    {"b16", "", 16, /* tokens 0..47 */
     {"d39d98b3726a61d68e409093587e442004a3c28dfd76a1b30b69696f527b9394",
      "7d1dc350a36b1bdb7adb2877bbb6648a555b453dac792cd086a2fda12b3b29ed",
      "631d7eb5aa74bc6eebc99c97d3d0c2f7221e2c8e11bde66891e0808c3ec6c29c"}},
    {"b16_tenant_a", "tenant-a", 16, /* tokens 0..47 */
     {"bd92f4c615dcab450084401210db5cfaf46903505af0c29a8f8af566c24c6c9c",
      "3a59b0e8d43d33a286342d15c1f14d1732836919a50ea1cdd1b811e2dbc9b49d",
      "c1de2728daa915b6a8d45ef0cd1803e47f090841ddf797a5cc6546f337602021"}},
    {"b4", "", 4, /* tokens 0..11 */
     {"635bc2de1ca446697b62f9ac841ee08dc38e6778986a24fdfb96957058a706a3",
      "334b2592457b23616946fdfcf988eba11ceb04819d4732dc91df033354bf4f03",
      "ef0de79f4c7288238fda0c115887b5a5ea084062df6def74e248743faa59c7f2"}},
    {"b4_tenant_a", "tenant-a", 4, /* tokens 0..11 */
     {"af3746402a1edd807d992440e4dda22330924230f76672b5e256683d1642afea",
      "139058e74ee19f713312b177ba085e0830e6287aaf0f175c98037dc956e9f61c",
      "168bc88e599e3df18b033509cc9e287540bdab1ea45796a1f28b788251cb3815"}},
    {"b4_big", "", 4, /* tokens (i+1)*0x9E3779B9 mod 2^32, i=0..11 */
     {"4f837a917871916a22fa535612f12b574da416651233055ac200ba6ebf41a3fc",
      "ce2eb897857082f9e4e91c24b891508ea6e7e422d803c5e832baa20c88dc0e24",
      "25995b70b5367233fb730b054ca1b1bb0bf87ce614eb4d61033c5bd469f03b10"}},
};
#define N_VECTORS (sizeof(VECTORS) / sizeof(VECTORS[0]))

/* --- helpers --- */

static void fixed_fingerprint(uint8_t fp[KVT_FINGERPRINT_LEN])
{
    for (int i = 0; i < KVT_FINGERPRINT_LEN; i++)
        fp[i] = (uint8_t)i;
}

/* Tokens of a vector: 0..n-1, or the "big" sequence that uses all 4 bytes. */
static void vector_tokens(const vector_t *v, uint32_t *tokens, size_t n)
{
    bool big = strcmp(v->name, "b4_big") == 0;
    for (size_t i = 0; i < n; i++)
        tokens[i] = big ? (uint32_t)((i + 1) * 0x9E3779B9ull) : (uint32_t)i;
}

/* Local hex decoder, so the check does not go through common/hash.c. */
static void key_from_hex(const char *hex, kvt_block_key_t *key)
{
    assert_int_equal(strlen(hex), 2 * KVT_KEY_LEN);
    for (int i = 0; i < KVT_KEY_LEN; i++) {
        char byte[3] = {hex[2 * i], hex[2 * i + 1], 0};
        key->b[i] = (uint8_t)strtoul(byte, NULL, 16);
    }
}

static void assert_key_hex(const kvt_block_key_t *key, const char *hex)
{
    kvt_block_key_t want;
    key_from_hex(hex, &want);
    assert_memory_equal(key->b, want.b, KVT_KEY_LEN);
}

static void root_of(const char *salt, kvt_block_key_t *root)
{
    uint8_t fp[KVT_FINGERPRINT_LEN];
    fixed_fingerprint(fp);
    assert_int_equal(kvt_block_key_root(fp, salt, strlen(salt), root), KVT_OK);
}

static void put_u16le(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static void put_u32le(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Rewrite the trailing header checksum for a header of `hlen` bytes. */
static void reseal(uint8_t *buf, size_t hlen)
{
    put_u64le(buf + hlen - 8, XXH3_64bits(buf, hlen - 8));
}

/* A test block: identity, tokens, payload, header and its encoding. */
typedef struct {
    kvt_block_identity_t id;
    uint32_t tokens[KVT_BLOCK_MAX_TOKENS];
    uint8_t *payload;
    size_t payload_len;
    kvt_block_header_t hdr;
    uint8_t enc[KVT_BLOCK_HEADER_MAX + 64];
    size_t enc_len;
} fixture_t;

static void fixture_make(fixture_t *f, uint32_t block_tokens, kvt_dtype_t dtype)
{
    memset(f, 0, sizeof(*f));
    f->id.layout = (kvt_block_layout_t){.n_layers = 3, .n_kv_heads = 2, .head_dim = 8,
                                        .block_tokens = block_tokens, .dtype = dtype};
    fixed_fingerprint(f->id.fingerprint);
    for (uint32_t i = 0; i < block_tokens; i++)
        f->tokens[i] = 1000 + 7 * i;
    f->payload_len = kvt_block_layout_payload_bytes(&f->id.layout);
    assert_true(f->payload_len > 0);
    f->payload = malloc(f->payload_len);
    assert_non_null(f->payload);
    for (size_t i = 0; i < f->payload_len; i++)
        f->payload[i] = (uint8_t)(i * 31 + 7);
    kvt_block_key_t parent;
    root_of("tenant-a", &parent);
    assert_int_equal(kvt_block_header_make(&f->hdr, &f->id, &parent, 5, f->tokens, f->payload),
                     KVT_OK);
    assert_int_equal(kvt_block_header_encode(&f->hdr, f->enc, sizeof(f->enc), &f->enc_len),
                     KVT_OK);
}

static void fixture_free(fixture_t *f) { free(f->payload); }

static void assert_header_eq(const kvt_block_header_t *a, const kvt_block_header_t *b)
{
    assert_memory_equal(a->key.b, b->key.b, KVT_KEY_LEN);
    assert_memory_equal(a->parent.b, b->parent.b, KVT_KEY_LEN);
    assert_memory_equal(a->fingerprint, b->fingerprint, KVT_FINGERPRINT_LEN);
    assert_int_equal(a->index, b->index);
    assert_true(kvt_block_layout_eq(&a->layout, &b->layout));
    assert_int_equal(a->payload_len, b->payload_len);
    assert_int_equal(a->checksum, b->checksum);
    assert_memory_equal(a->tokens, b->tokens, 4 * (size_t)a->layout.block_tokens);
}

static kvt_status_t decode(const uint8_t *buf, size_t len)
{
    kvt_block_header_t h;
    size_t n = 0;
    return kvt_block_header_decode(buf, len, &h, &n);
}

/* --- key chain --- */

static void test_root_vectors(void **state)
{
    kvt_block_key_t root;
    root_of("", &root);
    assert_key_hex(&root, ROOT_EMPTY);
    root_of("tenant-a", &root);
    assert_key_hex(&root, ROOT_TENANT_A);
    /* A NULL salt of length 0 is the empty salt. */
    uint8_t fp[KVT_FINGERPRINT_LEN];
    fixed_fingerprint(fp);
    assert_int_equal(kvt_block_key_root(fp, NULL, 0, &root), KVT_OK);
    assert_key_hex(&root, ROOT_EMPTY);
}

static void test_chain_vectors(void **state)
{
    for (size_t v = 0; v < N_VECTORS; v++) {
        const vector_t *vec = &VECTORS[v];
        uint32_t tokens[48];
        size_t n_tokens = 3 * (size_t)vec->block_tokens, n_keys = 0;
        vector_tokens(vec, tokens, n_tokens);
        kvt_block_key_t root, keys[4];
        root_of(vec->salt, &root);
        assert_int_equal(kvt_block_key_chain(&root, vec->block_tokens, tokens, n_tokens, keys, 4,
                                             &n_keys),
                         KVT_OK);
        assert_int_equal(n_keys, 3);
        for (size_t i = 0; i < 3; i++)
            assert_key_hex(&keys[i], vec->keys[i]);
    }
}

static void test_key_next_matches_vectors(void **state)
{
    for (size_t v = 0; v < N_VECTORS; v++) {
        const vector_t *vec = &VECTORS[v];
        uint32_t tokens[48];
        vector_tokens(vec, tokens, 3 * (size_t)vec->block_tokens);
        kvt_block_key_t parent, key;
        root_of(vec->salt, &parent);
        for (size_t i = 0; i < 3; i++) {
            assert_int_equal(kvt_block_key_next(&parent, vec->block_tokens,
                                                tokens + i * vec->block_tokens, &key),
                             KVT_OK);
            assert_key_hex(&key, vec->keys[i]);
            parent = key;
        }
    }
}

static void test_key_hex_format(void **state)
{
    kvt_block_key_t root;
    char hex[2 * KVT_KEY_LEN + 1];
    root_of("", &root);
    memset(hex, 'x', sizeof(hex));
    kvt_block_key_hex(&root, hex);
    assert_string_equal(hex, ROOT_EMPTY);
}

static void test_chain_truncates_partial(void **state)
{
    uint32_t tokens[48];
    for (uint32_t i = 0; i < 48; i++)
        tokens[i] = i;
    kvt_block_key_t root, keys[4];
    size_t n = 99;
    root_of("", &root);
    assert_int_equal(kvt_block_key_chain(&root, 16, tokens, 47, keys, 4, &n), KVT_OK);
    assert_int_equal(n, 2);
    assert_key_hex(&keys[0], VECTORS[0].keys[0]);
    assert_key_hex(&keys[1], VECTORS[0].keys[1]);
    assert_int_equal(kvt_block_key_chain(&root, 16, tokens, 15, keys, 4, &n), KVT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(kvt_block_key_chain(&root, 16, tokens, 0, keys, 4, &n), KVT_OK);
    assert_int_equal(n, 0);
    /* max_keys caps the count. */
    memset(&keys[1], 0xee, sizeof(keys[1]));
    assert_int_equal(kvt_block_key_chain(&root, 16, tokens, 48, keys, 1, &n), KVT_OK);
    assert_int_equal(n, 1);
    assert_key_hex(&keys[0], VECTORS[0].keys[0]);
    assert_int_equal(keys[1].b[0], 0xee);
}

static void test_chain_rejects_bad_block_tokens(void **state)
{
    uint32_t tokens[KVT_BLOCK_MAX_TOKENS + 1] = {0};
    kvt_block_key_t root, key, keys[2];
    size_t n = 0;
    root_of("", &root);
    assert_int_equal(kvt_block_key_next(&root, 0, tokens, &key), KVT_ERR_INVALID);
    assert_int_equal(kvt_block_key_next(&root, KVT_BLOCK_MAX_TOKENS + 1, tokens, &key),
                     KVT_ERR_INVALID);
    assert_int_equal(kvt_block_key_next(&root, KVT_BLOCK_MAX_TOKENS, tokens, &key), KVT_OK);
    assert_int_equal(kvt_block_key_chain(&root, 0, tokens, 16, keys, 2, &n), KVT_ERR_INVALID);
    assert_int_equal(kvt_block_key_chain(&root, KVT_BLOCK_MAX_TOKENS + 1, tokens,
                                         KVT_BLOCK_MAX_TOKENS + 1, keys, 2, &n),
                     KVT_ERR_INVALID);
}

static void test_salt_separates_tenants(void **state)
{
    uint32_t tokens[48];
    for (uint32_t i = 0; i < 48; i++)
        tokens[i] = i;
    kvt_block_key_t ra, rb, rc, ka[3], kb[3], kc[3];
    size_t na, nb, nc;
    root_of("tenant-a", &ra);
    root_of("tenant-b", &rb);
    root_of("tenant-a", &rc);
    assert_false(kvt_block_key_eq(&ra, &rb));
    assert_true(kvt_block_key_eq(&ra, &rc));
    assert_int_equal(kvt_block_key_chain(&ra, 16, tokens, 48, ka, 3, &na), KVT_OK);
    assert_int_equal(kvt_block_key_chain(&rb, 16, tokens, 48, kb, 3, &nb), KVT_OK);
    assert_int_equal(kvt_block_key_chain(&rc, 16, tokens, 48, kc, 3, &nc), KVT_OK);
    for (int i = 0; i < 3; i++) {
        assert_false(kvt_block_key_eq(&ka[i], &kb[i]));
        assert_true(kvt_block_key_eq(&ka[i], &kc[i]));
    }
    /* A different fingerprint separates models the same way. */
    uint8_t fp[KVT_FINGERPRINT_LEN];
    fixed_fingerprint(fp);
    fp[31] ^= 1;
    assert_int_equal(kvt_block_key_root(fp, "tenant-a", 8, &rb), KVT_OK);
    assert_false(kvt_block_key_eq(&ra, &rb));
}

static void test_token_order_matters(void **state)
{
    uint32_t t1[4] = {1, 2, 3, 4}, t2[4] = {2, 1, 3, 4};
    kvt_block_key_t root, k1, k2;
    root_of("", &root);
    assert_int_equal(kvt_block_key_next(&root, 4, t1, &k1), KVT_OK);
    assert_int_equal(kvt_block_key_next(&root, 4, t2, &k2), KVT_OK);
    assert_false(kvt_block_key_eq(&k1, &k2));
    /* B is hashed: 4 tokens as B=4 differ from the first 4 of B=2 pairs. */
    assert_int_equal(kvt_block_key_next(&root, 2, t1, &k2), KVT_OK);
    assert_false(kvt_block_key_eq(&k1, &k2));
}

/* --- layout --- */

static void test_layout_sizes(void **state)
{
    assert_int_equal(kvt_dtype_size(KVT_DTYPE_F32), 4);
    assert_int_equal(kvt_dtype_size(KVT_DTYPE_BF16), 2);
    assert_int_equal(kvt_dtype_size(KVT_DTYPE_F16), 2);
    assert_int_equal(kvt_dtype_size(KVT_DTYPE_F8E4M3), 1);
    assert_int_equal(kvt_dtype_size((kvt_dtype_t)0), 0);
    assert_int_equal(kvt_dtype_size((kvt_dtype_t)5), 0);
    assert_string_equal(kvt_dtype_name(KVT_DTYPE_BF16), "bf16");
    assert_string_equal(kvt_dtype_name((kvt_dtype_t)9), "unknown");
    /* Llama-3-8B-like: 32 layers, 8 KV heads, head_dim 128, B=16, bf16. */
    kvt_block_layout_t l = {32, 8, 128, 16, KVT_DTYPE_BF16};
    assert_int_equal(kvt_block_layout_check(&l), KVT_OK);
    assert_int_equal(kvt_block_layout_payload_bytes(&l), 32ull * 2 * 16 * 8 * 128 * 2);
    l.dtype = KVT_DTYPE_F8E4M3;
    assert_int_equal(kvt_block_layout_payload_bytes(&l), 32ull * 2 * 16 * 8 * 128);
}

static void test_layout_bounds(void **state)
{
    const kvt_block_layout_t ok = {4, 4, 64, 16, KVT_DTYPE_F16};
    kvt_block_layout_t l;
    struct {
        uint32_t *field;
        uint32_t value;
        kvt_status_t want;
    } cases[] = {
        {&l.n_layers, 0, KVT_ERR_INVALID},
        {&l.n_kv_heads, 0, KVT_ERR_INVALID},
        {&l.head_dim, 0, KVT_ERR_INVALID},
        {&l.block_tokens, 0, KVT_ERR_INVALID},
        {&l.n_layers, KVT_BLOCK_MAX_LAYERS + 1, KVT_ERR_TOO_LARGE},
        {&l.n_kv_heads, KVT_BLOCK_MAX_KV_HEADS + 1, KVT_ERR_TOO_LARGE},
        {&l.head_dim, KVT_BLOCK_MAX_HEAD_DIM + 1, KVT_ERR_TOO_LARGE},
        {&l.block_tokens, KVT_BLOCK_MAX_TOKENS + 1, KVT_ERR_TOO_LARGE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        l = ok;
        *cases[i].field = cases[i].value;
        assert_int_equal(kvt_block_layout_check(&l), cases[i].want);
        assert_int_equal(kvt_block_layout_payload_bytes(&l), 0);
    }
    l = ok;
    l.dtype = (kvt_dtype_t)7;
    assert_int_equal(kvt_block_layout_check(&l), KVT_ERR_INVALID);
    /* Every field at its maximum: the product exceeds the payload bound. */
    l = (kvt_block_layout_t){KVT_BLOCK_MAX_LAYERS, KVT_BLOCK_MAX_KV_HEADS, KVT_BLOCK_MAX_HEAD_DIM,
                             KVT_BLOCK_MAX_TOKENS, KVT_DTYPE_F32};
    assert_int_equal(kvt_block_layout_check(&l), KVT_ERR_TOO_LARGE);
    /* Exactly 1 GiB is allowed: 512 * 2 * 256 * 8 * 128 * 4 = 2^30. */
    l = (kvt_block_layout_t){512, 8, 128, 256, KVT_DTYPE_F32};
    assert_int_equal(kvt_block_layout_check(&l), KVT_OK);
    assert_int_equal(kvt_block_layout_payload_bytes(&l), KVT_BLOCK_MAX_PAYLOAD);
    l.n_layers = 513;
    assert_int_equal(kvt_block_layout_check(&l), KVT_ERR_TOO_LARGE);
}

/* --- header codec --- */

static void test_header_round_trip(void **state)
{
    const uint32_t bs[] = {1, 4, 16, KVT_BLOCK_MAX_TOKENS};
    const kvt_dtype_t dts[] = {KVT_DTYPE_F32, KVT_DTYPE_BF16, KVT_DTYPE_F16, KVT_DTYPE_F8E4M3};
    for (size_t i = 0; i < 4; i++) {
        fixture_t f;
        fixture_make(&f, bs[i], dts[i]);
        assert_int_equal(f.enc_len, KVT_BLOCK_HEADER_FIXED + 4 * (size_t)bs[i]);
        assert_int_equal(f.enc_len, kvt_block_header_size(bs[i]));
        assert_memory_equal(f.enc, "KVTB", 4);
        assert_int_equal(f.enc[4] | f.enc[5] << 8, KVT_BLOCK_FORMAT_VERSION);
        assert_int_equal(f.enc[6] | f.enc[7] << 8, f.enc_len);
        /* Trailing bytes (the payload, on the wire) are not part of it. */
        memset(f.enc + f.enc_len, 0x5a, 64);
        kvt_block_header_t h;
        size_t n = 0;
        assert_int_equal(kvt_block_header_decode(f.enc, f.enc_len + 64, &h, &n), KVT_OK);
        assert_int_equal(n, f.enc_len);
        assert_header_eq(&h, &f.hdr);
        assert_int_equal(h.index, 5);
        assert_int_equal(kvt_block_header_check_key(&h), KVT_OK);
        assert_int_equal(kvt_block_header_check_identity(&h, &f.id), KVT_OK);
        assert_int_equal(kvt_block_payload_verify(&h, f.payload, f.payload_len), KVT_OK);
        fixture_free(&f);
    }
}

static void test_header_field_offsets(void **state)
{
    fixture_t f;
    fixture_make(&f, 4, KVT_DTYPE_BF16);
    const uint8_t *e = f.enc;
    assert_memory_equal(e + 8, f.hdr.key.b, KVT_KEY_LEN);
    assert_memory_equal(e + 40, f.hdr.parent.b, KVT_KEY_LEN);
    assert_memory_equal(e + 72, f.id.fingerprint, KVT_FINGERPRINT_LEN);
    uint8_t want[40];
    put_u32le(want + 0, 5);    /* index */
    put_u32le(want + 4, 4);    /* block_tokens */
    put_u32le(want + 8, 3);    /* n_layers */
    put_u32le(want + 12, 2);   /* n_kv_heads */
    put_u32le(want + 16, 8);   /* head_dim */
    put_u32le(want + 20, KVT_DTYPE_BF16);
    put_u64le(want + 24, 3 * 2 * 4 * 2 * 8 * 2);
    put_u64le(want + 32, XXH3_64bits(f.payload, f.payload_len));
    assert_memory_equal(e + 104, want, sizeof(want));
    for (uint32_t i = 0; i < 4; i++) {
        put_u32le(want, f.tokens[i]);
        assert_memory_equal(e + 144 + 4 * i, want, 4);
    }
    put_u64le(want, XXH3_64bits(e, 160));
    assert_memory_equal(e + 160, want, 8);
    fixture_free(&f);
}

static void test_header_encode_short_buffer(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    uint8_t buf[KVT_BLOCK_HEADER_MAX];
    size_t n = 12345;
    assert_int_equal(kvt_block_header_encode(&f.hdr, buf, f.enc_len - 1, &n), KVT_ERR_TOO_LARGE);
    assert_int_equal(n, 12345);
    assert_int_equal(kvt_block_header_encode(&f.hdr, buf, f.enc_len, &n), KVT_OK);
    assert_int_equal(n, f.enc_len);
    assert_memory_equal(buf, f.enc, n);
    /* An invalid layout is not encoded. */
    f.hdr.layout.n_layers = 0;
    assert_int_equal(kvt_block_header_encode(&f.hdr, buf, sizeof(buf), &n), KVT_ERR_INVALID);
    fixture_free(&f);
}

/* Every single-bit flip is rejected, with the header alone in the buffer
 * and with trailing bytes after it (so a grown length field is not merely
 * "truncated"). */
static void test_header_every_bit_flip_rejected(void **state)
{
    const uint32_t bs[] = {1, 16};
    for (size_t b = 0; b < 2; b++) {
        fixture_t f;
        fixture_make(&f, bs[b], KVT_DTYPE_F16);
        memset(f.enc + f.enc_len, 0, 64);
        for (size_t extra = 0; extra <= 64; extra += 64) {
            for (size_t bit = 0; bit < 8 * f.enc_len; bit++) {
                f.enc[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                kvt_status_t st = decode(f.enc, f.enc_len + extra);
                f.enc[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                if (st == KVT_OK)
                    fail_msg("bit %zu of %zu accepted (B=%u extra=%zu)", bit, 8 * f.enc_len,
                             bs[b], extra);
            }
        }
        assert_int_equal(decode(f.enc, f.enc_len), KVT_OK);
        fixture_free(&f);
    }
}

static void test_header_every_truncation(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_BF16);
    for (size_t len = 0; len < f.enc_len; len++) {
        kvt_block_header_t h;
        size_t n = 777;
        memset(&h, 0xa5, sizeof(h));
        kvt_status_t st = kvt_block_header_decode(f.enc, len, &h, &n);
        if (st != KVT_ERR_TRUNCATED)
            fail_msg("length %zu gave %s", len, kvt_status_str(st));
        assert_int_equal(n, 777);
        assert_int_equal(h.index, 0xa5a5a5a5u);
    }
    fixture_free(&f);
}

static void test_header_bad_magic_and_checksum(void **state)
{
    fixture_t f;
    fixture_make(&f, 4, KVT_DTYPE_F16);
    f.enc[0] = 'X';
    reseal(f.enc, f.enc_len);
    assert_int_equal(decode(f.enc, f.enc_len), KVT_ERR_CORRUPT);
    f.enc[0] = 'K';
    reseal(f.enc, f.enc_len);
    assert_int_equal(decode(f.enc, f.enc_len), KVT_OK);
    f.enc[f.enc_len - 1] ^= 0x80;
    assert_int_equal(decode(f.enc, f.enc_len), KVT_ERR_CORRUPT);
    f.enc[f.enc_len - 1] ^= 0x80;
    f.enc[150] ^= 1; /* a token byte */
    assert_int_equal(decode(f.enc, f.enc_len), KVT_ERR_CORRUPT);
    fixture_free(&f);
}

static void test_header_wrong_version(void **state)
{
    const uint16_t versions[] = {0, 2, 0x100, 0xffff};
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    for (size_t i = 0; i < 4; i++) {
        put_u16le(f.enc + 4, versions[i]);
        reseal(f.enc, f.enc_len);
        assert_int_equal(decode(f.enc, f.enc_len), KVT_ERR_INVALID);
    }
    fixture_free(&f);
}

/* Set a u32 field of a copy of the encoding, reseal, and decode it. */
static kvt_status_t decode_with_u32(const fixture_t *f, size_t off, uint32_t value)
{
    uint8_t buf[sizeof(f->enc)];
    memcpy(buf, f->enc, f->enc_len);
    put_u32le(buf + off, value);
    reseal(buf, f->enc_len);
    return decode(buf, f->enc_len);
}

static void test_header_oversized_fields(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    struct {
        size_t off;
        uint32_t value;
        kvt_status_t want;
    } cases[] = {
        {108, KVT_BLOCK_MAX_TOKENS + 1, KVT_ERR_TOO_LARGE},
        {108, 0xffffffffu, KVT_ERR_TOO_LARGE},
        {108, 0, KVT_ERR_INVALID},
        {108, 15, KVT_ERR_INVALID},  /* B disagrees with the header length */
        {108, 17, KVT_ERR_INVALID},
        {112, KVT_BLOCK_MAX_LAYERS + 1, KVT_ERR_TOO_LARGE},
        {116, KVT_BLOCK_MAX_KV_HEADS + 1, KVT_ERR_TOO_LARGE},
        {120, KVT_BLOCK_MAX_HEAD_DIM + 1, KVT_ERR_TOO_LARGE},
        {112, 0, KVT_ERR_INVALID},
        {124, 0, KVT_ERR_INVALID},   /* dtype */
        {124, 5, KVT_ERR_INVALID},
        {112, 4, KVT_ERR_INVALID},   /* valid layout, payload length now wrong */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvt_status_t st = decode_with_u32(&f, cases[i].off, cases[i].value);
        if (st != cases[i].want)
            fail_msg("case %zu (off %zu value %u): got %s", i, cases[i].off, cases[i].value,
                     kvt_status_str(st));
    }
    /* Sanity: rewriting a field to its own value still decodes. */
    assert_int_equal(decode_with_u32(&f, 112, 3), KVT_OK);
    fixture_free(&f);
}

static void test_header_payload_len_inconsistent(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    const uint64_t good = f.hdr.payload_len;
    const uint64_t bad[] = {0, good - 1, good + 1, good * 2, KVT_BLOCK_MAX_PAYLOAD,
                            UINT64_MAX, good | (1ull << 32)};
    uint8_t buf[sizeof(f.enc)];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memcpy(buf, f.enc, f.enc_len);
        put_u64le(buf + 128, bad[i]);
        reseal(buf, f.enc_len);
        assert_int_equal(decode(buf, f.enc_len), KVT_ERR_INVALID);
    }
    fixture_free(&f);
}

static void test_header_length_field_wrong(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    const uint16_t lens[] = {0, 8, KVT_BLOCK_HEADER_FIXED - 4, KVT_BLOCK_HEADER_FIXED + 1,
                             (uint16_t)(f.enc_len - 2), KVT_BLOCK_HEADER_MAX + 4, 0xffff};
    uint8_t buf[KVT_BLOCK_HEADER_MAX + 64];
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        memset(buf, 0, sizeof(buf));
        memcpy(buf, f.enc, f.enc_len);
        put_u16le(buf + 6, lens[i]);
        assert_int_equal(decode(buf, sizeof(buf)), KVT_ERR_INVALID);
    }
    /* Well-formed lengths that disagree with B, resealed at the new end so
     * only the B/length consistency check can reject them. */
    const uint16_t shifted[] = {KVT_BLOCK_HEADER_FIXED, (uint16_t)(f.enc_len - 4),
                                (uint16_t)(f.enc_len + 4), KVT_BLOCK_HEADER_MAX};
    for (size_t i = 0; i < sizeof(shifted) / sizeof(shifted[0]); i++) {
        memset(buf, 0, sizeof(buf));
        memcpy(buf, f.enc, f.enc_len);
        put_u16le(buf + 6, shifted[i]);
        reseal(buf, shifted[i]);
        assert_int_equal(decode(buf, sizeof(buf)), KVT_ERR_INVALID);
        /* Claimed longer than the buffer: truncated. */
        assert_int_equal(decode(buf, shifted[i] - 1), KVT_ERR_TRUNCATED);
    }
    fixture_free(&f);
}

static void test_decode_failure_leaves_outputs(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    kvt_block_header_t h, before;
    size_t n = 31337;
    memset(&h, 0x3c, sizeof(h));
    before = h;
    assert_int_equal(decode_with_u32(&f, 124, 9), KVT_ERR_INVALID);
    f.enc[20] ^= 4;
    assert_int_equal(kvt_block_header_decode(f.enc, f.enc_len, &h, &n), KVT_ERR_CORRUPT);
    assert_int_equal(n, 31337);
    assert_memory_equal(&h, &before, sizeof(h));
    fixture_free(&f);
}

/* --- content and identity checks --- */

static void test_check_key_catches_tampering(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    kvt_block_header_t h = f.hdr;
    assert_int_equal(kvt_block_header_check_key(&h), KVT_OK);
    h.tokens[3] ^= 1;
    assert_int_equal(kvt_block_header_check_key(&h), KVT_ERR_CORRUPT);
    h = f.hdr;
    h.parent.b[0] ^= 0x80;
    assert_int_equal(kvt_block_header_check_key(&h), KVT_ERR_CORRUPT);
    h = f.hdr;
    h.key.b[31] ^= 1;
    assert_int_equal(kvt_block_header_check_key(&h), KVT_ERR_CORRUPT);
    /* A token edited on the wire with a resealed header decodes, but the
     * key no longer names the content. */
    uint8_t buf[sizeof(f.enc)];
    memcpy(buf, f.enc, f.enc_len);
    buf[144 + 4 * 7] ^= 0x10;
    reseal(buf, f.enc_len);
    size_t n;
    assert_int_equal(kvt_block_header_decode(buf, f.enc_len, &h, &n), KVT_OK);
    assert_int_equal(kvt_block_header_check_key(&h), KVT_ERR_CORRUPT);
    h.layout.block_tokens = 0;
    assert_int_equal(kvt_block_header_check_key(&h), KVT_ERR_INVALID);
    fixture_free(&f);
}

static void test_check_identity_mismatch(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    assert_int_equal(kvt_block_header_check_identity(&f.hdr, &f.id), KVT_OK);
    kvt_block_identity_t id = f.id;
    id.fingerprint[17] ^= 2;
    assert_int_equal(kvt_block_header_check_identity(&f.hdr, &id), KVT_ERR_MISMATCH);
    uint32_t *fields[] = {&id.layout.n_layers, &id.layout.n_kv_heads, &id.layout.head_dim,
                          &id.layout.block_tokens};
    for (size_t i = 0; i < 4; i++) {
        id = f.id;
        *fields[i] += 1;
        assert_int_equal(kvt_block_header_check_identity(&f.hdr, &id), KVT_ERR_MISMATCH);
    }
    id = f.id;
    id.layout.dtype = KVT_DTYPE_BF16; /* same size, different type */
    assert_int_equal(kvt_block_header_check_identity(&f.hdr, &id), KVT_ERR_MISMATCH);
    fixture_free(&f);
}

static void test_payload_verify(void **state)
{
    fixture_t f;
    fixture_make(&f, 4, KVT_DTYPE_F32);
    assert_int_equal(kvt_block_payload_verify(&f.hdr, f.payload, f.payload_len), KVT_OK);
    size_t idx[] = {0, f.payload_len / 2, f.payload_len - 1};
    for (size_t i = 0; i < 3; i++) {
        f.payload[idx[i]] ^= 0x01;
        assert_int_equal(kvt_block_payload_verify(&f.hdr, f.payload, f.payload_len),
                         KVT_ERR_CORRUPT);
        f.payload[idx[i]] ^= 0x01;
    }
    assert_int_equal(kvt_block_payload_verify(&f.hdr, f.payload, f.payload_len - 1),
                     KVT_ERR_CORRUPT);
    assert_int_equal(kvt_block_payload_verify(&f.hdr, f.payload, 0), KVT_ERR_CORRUPT);
    uint8_t *longer = malloc(f.payload_len + 1);
    assert_non_null(longer);
    memcpy(longer, f.payload, f.payload_len);
    longer[f.payload_len] = 0;
    assert_int_equal(kvt_block_payload_verify(&f.hdr, longer, f.payload_len + 1),
                     KVT_ERR_CORRUPT);
    free(longer);
    /* The length is checked on its own, not only through the checksum. */
    kvt_block_header_t h = f.hdr;
    h.checksum = XXH3_64bits(f.payload, f.payload_len - 1);
    assert_int_equal(kvt_block_payload_verify(&h, f.payload, f.payload_len - 1),
                     KVT_ERR_CORRUPT);
    assert_int_equal(kvt_block_payload_verify(&f.hdr, f.payload, f.payload_len), KVT_OK);
    fixture_free(&f);
}

static void test_header_make(void **state)
{
    fixture_t f;
    fixture_make(&f, 16, KVT_DTYPE_F16);
    /* The key is the chain key of the tokens after the parent. */
    kvt_block_key_t want;
    assert_int_equal(kvt_block_key_next(&f.hdr.parent, 16, f.tokens, &want), KVT_OK);
    assert_true(kvt_block_key_eq(&f.hdr.key, &want));
    assert_int_equal(f.hdr.payload_len, 3 * 2 * 16 * 2 * 8 * 2);
    assert_int_equal(f.hdr.checksum, XXH3_64bits(f.payload, f.payload_len));
    kvt_block_identity_t id = f.id;
    id.layout.head_dim = 0;
    kvt_block_header_t h;
    assert_int_equal(kvt_block_header_make(&h, &id, &f.hdr.parent, 0, f.tokens, f.payload),
                     KVT_ERR_INVALID);
    fixture_free(&f);
}

/* kvt_xxh3_64 hashes with libxxhash's header built into common/ (SSE2 and,
 * where the CPU has it, AVX2); every build must equal the shared library's
 * XXH3_64bits, which wrote the checksums already on disk.  Lengths cover
 * each of XXH3's code paths (0-16, 17-128, 129-240, long with partial
 * stripes and blocks) and unaligned starts. */
static void test_xxh3_builds_match_library(void **state)
{
    (void)state;
    size_t cap = (1u << 20) + 4096;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < cap; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    static const size_t lens[] = {0,    1,    3,    4,    8,    9,     16,    17,     64,
                                  128,  129,  200,  240,  241,  1023,  1024,  1025,   4096,
                                  8191, 65536, 65599, 262144, 1u << 20};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        for (size_t off = 0; off < 3; off++) {
            uint64_t want = XXH3_64bits(buf + off, lens[i]);
            assert_true(kvt_xxh3_64(buf + off, lens[i]) == want);
            assert_true(kvt_xxh3_64_sse2(buf + off, lens[i]) == want);
#ifdef KVT_XXH3_AVX2
            if (__builtin_cpu_supports("avx2"))
                assert_true(kvt_xxh3_64_avx2(buf + off, lens[i]) == want);
#endif
        }
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root_vectors),
        cmocka_unit_test(test_chain_vectors),
        cmocka_unit_test(test_key_next_matches_vectors),
        cmocka_unit_test(test_key_hex_format),
        cmocka_unit_test(test_chain_truncates_partial),
        cmocka_unit_test(test_chain_rejects_bad_block_tokens),
        cmocka_unit_test(test_salt_separates_tenants),
        cmocka_unit_test(test_token_order_matters),
        cmocka_unit_test(test_layout_sizes),
        cmocka_unit_test(test_layout_bounds),
        cmocka_unit_test(test_header_round_trip),
        cmocka_unit_test(test_header_field_offsets),
        cmocka_unit_test(test_header_encode_short_buffer),
        cmocka_unit_test(test_header_every_bit_flip_rejected),
        cmocka_unit_test(test_header_every_truncation),
        cmocka_unit_test(test_header_bad_magic_and_checksum),
        cmocka_unit_test(test_header_wrong_version),
        cmocka_unit_test(test_header_oversized_fields),
        cmocka_unit_test(test_header_payload_len_inconsistent),
        cmocka_unit_test(test_header_length_field_wrong),
        cmocka_unit_test(test_decode_failure_leaves_outputs),
        cmocka_unit_test(test_check_key_catches_tampering),
        cmocka_unit_test(test_check_identity_mismatch),
        cmocka_unit_test(test_payload_verify),
        cmocka_unit_test(test_header_make),
        cmocka_unit_test(test_xxh3_builds_match_library),
    };
    return cmocka_run_group_tests_name("block", tests, NULL, NULL);
}
