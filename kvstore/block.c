/* Block identity, layout and header encoding; see block.h for the format. */
#include "kvstore/block.h"

#include "common/le.h"
#include "common/log.h"

#include <string.h>

static const uint8_t g_magic[4] = {'K', 'V', 'T', 'B'};

/* --- identity --- */

kvt_status_t kvt_block_key_root(const uint8_t fingerprint[KVT_FINGERPRINT_LEN],
                                const void *salt, size_t salt_len, kvt_block_key_t *root_p)
{
    kvt_sha256_t ctx;
    kvt_status_t st = kvt_sha256_init(&ctx);
    if (st != KVT_OK)
        return st;
    kvt_sha256_update(&ctx, "kvtier-v1", 9);
    kvt_sha256_update(&ctx, fingerprint, KVT_FINGERPRINT_LEN);
    if (salt_len)
        kvt_sha256_update(&ctx, salt, salt_len);
    kvt_sha256_final(&ctx, root_p->b);
    return KVT_OK;
}

kvt_status_t kvt_block_key_next(const kvt_block_key_t *parent, uint32_t block_tokens,
                                const uint32_t *tokens, kvt_block_key_t *key_p)
{
    if (block_tokens == 0 || block_tokens > KVT_BLOCK_MAX_TOKENS)
        return KVT_ERR_INVALID;
    uint8_t buf[KVT_KEY_LEN + 4 + 4 * KVT_BLOCK_MAX_TOKENS];
    memcpy(buf, parent->b, KVT_KEY_LEN);
    kvt_le_put32(buf + KVT_KEY_LEN, block_tokens);
    for (uint32_t i = 0; i < block_tokens; i++)
        kvt_le_put32(buf + KVT_KEY_LEN + 4 + 4 * i, tokens[i]);
    return kvt_sha256(buf, KVT_KEY_LEN + 4 + 4 * (size_t)block_tokens, key_p->b);
}

kvt_status_t kvt_block_key_chain(const kvt_block_key_t *root, uint32_t block_tokens,
                                 const uint32_t *tokens, size_t n_tokens,
                                 kvt_block_key_t *keys, size_t max_keys, size_t *n_keys_p)
{
    if (block_tokens == 0 || block_tokens > KVT_BLOCK_MAX_TOKENS)
        return KVT_ERR_INVALID;
    size_t n = n_tokens / block_tokens;
    if (n > max_keys)
        n = max_keys;
    const kvt_block_key_t *parent = root;
    for (size_t i = 0; i < n; i++) {
        kvt_status_t st = kvt_block_key_next(parent, block_tokens, tokens + i * block_tokens,
                                             &keys[i]);
        if (st != KVT_OK)
            return st;
        parent = &keys[i];
    }
    *n_keys_p = n;
    return KVT_OK;
}

bool kvt_block_key_eq(const kvt_block_key_t *a, const kvt_block_key_t *b)
{
    return memcmp(a->b, b->b, KVT_KEY_LEN) == 0;
}

void kvt_block_key_hex(const kvt_block_key_t *key, char out[2 * KVT_KEY_LEN + 1])
{
    kvt_hex(key->b, KVT_KEY_LEN, out);
}

/* --- layout --- */

size_t kvt_dtype_size(kvt_dtype_t dtype)
{
    switch (dtype) {
    case KVT_DTYPE_F32: return 4;
    case KVT_DTYPE_BF16: return 2;
    case KVT_DTYPE_F16: return 2;
    case KVT_DTYPE_F8E4M3: return 1;
    }
    return 0;
}

const char *kvt_dtype_name(kvt_dtype_t dtype)
{
    switch (dtype) {
    case KVT_DTYPE_F32: return "f32";
    case KVT_DTYPE_BF16: return "bf16";
    case KVT_DTYPE_F16: return "f16";
    case KVT_DTYPE_F8E4M3: return "f8e4m3";
    }
    return "unknown";
}

kvt_status_t kvt_block_layout_check(const kvt_block_layout_t *l)
{
    if (!l->n_layers || !l->n_kv_heads || !l->head_dim || !l->block_tokens ||
        !kvt_dtype_size(l->dtype))
        return KVT_ERR_INVALID;
    if (l->n_layers > KVT_BLOCK_MAX_LAYERS || l->n_kv_heads > KVT_BLOCK_MAX_KV_HEADS ||
        l->head_dim > KVT_BLOCK_MAX_HEAD_DIM || l->block_tokens > KVT_BLOCK_MAX_TOKENS)
        return KVT_ERR_TOO_LARGE;
    /* Each factor is bounded, so the product fits in 64 bits (2^51 at most). */
    uint64_t bytes = (uint64_t)l->n_layers * 2 * l->block_tokens * l->n_kv_heads * l->head_dim *
                     kvt_dtype_size(l->dtype);
    return bytes > KVT_BLOCK_MAX_PAYLOAD ? KVT_ERR_TOO_LARGE : KVT_OK;
}

uint64_t kvt_block_layout_payload_bytes(const kvt_block_layout_t *l)
{
    if (kvt_block_layout_check(l) != KVT_OK)
        return 0;
    return (uint64_t)l->n_layers * 2 * l->block_tokens * l->n_kv_heads * l->head_dim *
           kvt_dtype_size(l->dtype);
}

bool kvt_block_layout_eq(const kvt_block_layout_t *a, const kvt_block_layout_t *b)
{
    return a->n_layers == b->n_layers && a->n_kv_heads == b->n_kv_heads &&
           a->head_dim == b->head_dim && a->block_tokens == b->block_tokens &&
           a->dtype == b->dtype;
}

/* --- header --- */

kvt_status_t kvt_block_header_make_sum(kvt_block_header_t *hdr, const kvt_block_identity_t *id,
                                       const kvt_block_key_t *parent, uint32_t index,
                                       const uint32_t *tokens, uint64_t checksum)
{
    kvt_status_t st = kvt_block_layout_check(&id->layout);
    if (st != KVT_OK)
        return st;
    memset(hdr, 0, sizeof(*hdr));
    hdr->parent = *parent;
    memcpy(hdr->fingerprint, id->fingerprint, KVT_FINGERPRINT_LEN);
    hdr->index = index;
    hdr->layout = id->layout;
    hdr->payload_len = kvt_block_layout_payload_bytes(&id->layout);
    hdr->checksum = checksum;
    memcpy(hdr->tokens, tokens, 4 * (size_t)id->layout.block_tokens);
    return kvt_block_key_next(parent, id->layout.block_tokens, tokens, &hdr->key);
}

kvt_status_t kvt_block_header_make(kvt_block_header_t *hdr, const kvt_block_identity_t *id,
                                   const kvt_block_key_t *parent, uint32_t index,
                                   const uint32_t *tokens, const void *payload)
{
    uint64_t len = kvt_block_layout_payload_bytes(&id->layout);
    if (len == 0)
        return kvt_block_layout_check(&id->layout);
    return kvt_block_header_make_sum(hdr, id, parent, index, tokens, kvt_xxh3_64(payload, len));
}

kvt_status_t kvt_block_header_encode(const kvt_block_header_t *hdr, uint8_t *buf, size_t cap,
                                     size_t *len_p)
{
    const kvt_block_layout_t *l = &hdr->layout;
    if (kvt_block_layout_check(l) != KVT_OK)
        return KVT_ERR_INVALID;
    size_t len = kvt_block_header_size(l->block_tokens);
    if (cap < len)
        return KVT_ERR_TOO_LARGE;
    memcpy(buf, g_magic, 4);
    kvt_le_put16(buf + 4, KVT_BLOCK_FORMAT_VERSION);
    kvt_le_put16(buf + 6, (uint16_t)len);
    memcpy(buf + 8, hdr->key.b, KVT_KEY_LEN);
    memcpy(buf + 40, hdr->parent.b, KVT_KEY_LEN);
    memcpy(buf + 72, hdr->fingerprint, KVT_FINGERPRINT_LEN);
    kvt_le_put32(buf + 104, hdr->index);
    kvt_le_put32(buf + 108, l->block_tokens);
    kvt_le_put32(buf + 112, l->n_layers);
    kvt_le_put32(buf + 116, l->n_kv_heads);
    kvt_le_put32(buf + 120, l->head_dim);
    kvt_le_put32(buf + 124, (uint32_t)l->dtype);
    kvt_le_put64(buf + 128, hdr->payload_len);
    kvt_le_put64(buf + 136, hdr->checksum);
    for (uint32_t i = 0; i < l->block_tokens; i++)
        kvt_le_put32(buf + 144 + 4 * i, hdr->tokens[i]);
    kvt_le_put64(buf + len - 8, kvt_xxh3_64(buf, len - 8));
    *len_p = len;
    return KVT_OK;
}

kvt_status_t kvt_block_header_decode(const uint8_t *buf, size_t len, kvt_block_header_t *hdr_p,
                                     size_t *len_p)
{
    if (len < 8)
        return KVT_ERR_TRUNCATED;
    if (memcmp(buf, g_magic, 4) != 0)
        return KVT_ERR_CORRUPT;
    if (kvt_le_get16(buf + 4) != KVT_BLOCK_FORMAT_VERSION)
        return KVT_ERR_INVALID;
    size_t hlen = kvt_le_get16(buf + 6);
    if (hlen < KVT_BLOCK_HEADER_FIXED || hlen > KVT_BLOCK_HEADER_MAX ||
        (hlen - KVT_BLOCK_HEADER_FIXED) % 4 != 0)
        return KVT_ERR_INVALID;
    if (len < hlen)
        return KVT_ERR_TRUNCATED;
    if (kvt_le_get64(buf + hlen - 8) != kvt_xxh3_64(buf, hlen - 8))
        return KVT_ERR_CORRUPT;
    kvt_block_header_t h;
    memcpy(h.key.b, buf + 8, KVT_KEY_LEN);
    memcpy(h.parent.b, buf + 40, KVT_KEY_LEN);
    memcpy(h.fingerprint, buf + 72, KVT_FINGERPRINT_LEN);
    h.index = kvt_le_get32(buf + 104);
    h.layout.block_tokens = kvt_le_get32(buf + 108);
    h.layout.n_layers = kvt_le_get32(buf + 112);
    h.layout.n_kv_heads = kvt_le_get32(buf + 116);
    h.layout.head_dim = kvt_le_get32(buf + 120);
    h.layout.dtype = (kvt_dtype_t)kvt_le_get32(buf + 124);
    h.payload_len = kvt_le_get64(buf + 128);
    h.checksum = kvt_le_get64(buf + 136);
    kvt_status_t st = kvt_block_layout_check(&h.layout);
    if (st != KVT_OK)
        return st;
    if (kvt_block_header_size(h.layout.block_tokens) != hlen)
        return KVT_ERR_INVALID;
    if (h.payload_len != kvt_block_layout_payload_bytes(&h.layout))
        return KVT_ERR_INVALID;
    for (uint32_t i = 0; i < h.layout.block_tokens; i++)
        h.tokens[i] = kvt_le_get32(buf + 144 + 4 * i);
    /* Copy only the used token prefix: the struct is ~1 KiB. */
    memcpy(hdr_p, &h, offsetof(kvt_block_header_t, tokens) + 4 * (size_t)h.layout.block_tokens);
    *len_p = hlen;
    return KVT_OK;
}

kvt_status_t kvt_block_header_check_key(const kvt_block_header_t *hdr)
{
    kvt_block_key_t k;
    kvt_status_t st = kvt_block_key_next(&hdr->parent, hdr->layout.block_tokens, hdr->tokens, &k);
    if (st != KVT_OK)
        return st;
    return kvt_block_key_eq(&k, &hdr->key) ? KVT_OK : KVT_ERR_CORRUPT;
}

kvt_status_t kvt_block_header_check_identity(const kvt_block_header_t *hdr,
                                             const kvt_block_identity_t *id)
{
    if (!kvt_block_layout_eq(&hdr->layout, &id->layout) ||
        memcmp(hdr->fingerprint, id->fingerprint, KVT_FINGERPRINT_LEN) != 0)
        return KVT_ERR_MISMATCH;
    return KVT_OK;
}

kvt_status_t kvt_block_payload_verify(const kvt_block_header_t *hdr, const void *payload,
                                      size_t payload_len)
{
    if (payload_len != hdr->payload_len)
        return KVT_ERR_CORRUPT;
    return kvt_xxh3_64(payload, payload_len) == hdr->checksum ? KVT_OK : KVT_ERR_CORRUPT;
}
