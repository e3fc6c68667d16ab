/* Block identity, layout and the block header (DESIGN.md invariants 1, 2).
 *
 * A block is the KV of B consecutive tokens.  Its key is
 *     key_i    = SHA-256(key_{i-1} || u32le(B) || tokens_i as u32le)
 *     key_{-1} = SHA-256("kvtier-v1" || fingerprint[32] || tenant_salt)
 * Only full blocks have keys.  Its payload is all layers' K and V,
 * `[layer][K,V][token][kv_head][head_dim]` in the KV dtype, contiguous.
 *
 * The header travels beside the payload (wire, RocksDB value prefix, host
 * pool header arena).  Encoding, little-endian, fixed offsets:
 *
 *     0   u8[4]  magic "KVTB"
 *     4   u16    format version (1)
 *     6   u16    header length in bytes (152 + 4*B)
 *     8   u8[32] key
 *     40  u8[32] parent key (the root key for block 0)
 *     72  u8[32] model fingerprint
 *     104 u32    block index in its chain (0 = first block)
 *     108 u32    block_tokens B
 *     112 u32    n_layers
 *     116 u32    n_kv_heads
 *     120 u32    head_dim
 *     124 u32    dtype (1 f32, 2 bf16, 3 f16, 4 f8e4m3)
 *     128 u64    payload length (must equal the layout's size)
 *     136 u64    xxh3-64 of the payload
 *     144 u32[B] the block's tokens
 *     144+4B u64 xxh3-64 of the header bytes before it
 *
 * Decoding bounds every field before use and checks the header checksum, so
 * a truncated or bit-flipped header is rejected, never half-read. */
#ifndef KVT_KVSTORE_BLOCK_H
#define KVT_KVSTORE_BLOCK_H

#include "common/hash.h"
#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_KEY_LEN 32
#define KVT_FINGERPRINT_LEN 32
#define KVT_BLOCK_FORMAT_VERSION 1
#define KVT_BLOCK_MAX_TOKENS 256
#define KVT_BLOCK_MAX_LAYERS 1024
#define KVT_BLOCK_MAX_KV_HEADS 1024
#define KVT_BLOCK_MAX_HEAD_DIM 4096
#define KVT_BLOCK_MAX_PAYLOAD (1ull << 30)
#define KVT_BLOCK_HEADER_FIXED 152
#define KVT_BLOCK_HEADER_MAX (KVT_BLOCK_HEADER_FIXED + 4 * KVT_BLOCK_MAX_TOKENS)

typedef struct {
    uint8_t b[KVT_KEY_LEN];
} kvt_block_key_t;

typedef enum {
    KVT_DTYPE_F32 = 1,
    KVT_DTYPE_BF16 = 2,
    KVT_DTYPE_F16 = 3,
    KVT_DTYPE_F8E4M3 = 4,
} kvt_dtype_t;

typedef struct {
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t block_tokens;
    kvt_dtype_t dtype;
} kvt_block_layout_t;

/* What a tier holds: one model (fingerprint) with one layout. */
typedef struct {
    kvt_block_layout_t layout;
    uint8_t fingerprint[KVT_FINGERPRINT_LEN];
} kvt_block_identity_t;

typedef struct {
    kvt_block_key_t key;
    kvt_block_key_t parent;
    uint8_t fingerprint[KVT_FINGERPRINT_LEN];
    uint32_t index;
    kvt_block_layout_t layout;
    uint64_t payload_len;
    uint64_t checksum;
    uint32_t tokens[KVT_BLOCK_MAX_TOKENS];
} kvt_block_header_t;

/* --- identity (invariant 1) --- */

/* Root key of a (model, tenant); salt may be empty (salt_len 0). */
kvt_status_t kvt_block_key_root(const uint8_t fingerprint[KVT_FINGERPRINT_LEN],
                                const void *salt, size_t salt_len, kvt_block_key_t *root_p);
/* Key of the block of `block_tokens` tokens that follows `parent`. */
kvt_status_t kvt_block_key_next(const kvt_block_key_t *parent, uint32_t block_tokens,
                                const uint32_t *tokens, kvt_block_key_t *key_p);
/* Keys of every full block of tokens[0..n_tokens) after `root`; writes
 * min(n_tokens / B, max_keys) keys and their count. */
kvt_status_t kvt_block_key_chain(const kvt_block_key_t *root, uint32_t block_tokens,
                                 const uint32_t *tokens, size_t n_tokens,
                                 kvt_block_key_t *keys, size_t max_keys, size_t *n_keys_p);
bool kvt_block_key_eq(const kvt_block_key_t *a, const kvt_block_key_t *b);
/* 64 hex characters + NUL. */
void kvt_block_key_hex(const kvt_block_key_t *key, char out[2 * KVT_KEY_LEN + 1]);

/* --- layout (invariant 2) --- */

size_t kvt_dtype_size(kvt_dtype_t dtype); /* 0 for unknown dtypes */
const char *kvt_dtype_name(kvt_dtype_t dtype);
/* Checks every field against its bound; KVT_ERR_INVALID / KVT_ERR_TOO_LARGE. */
kvt_status_t kvt_block_layout_check(const kvt_block_layout_t *layout);
/* Payload bytes of one block; 0 if the layout is invalid. */
uint64_t kvt_block_layout_payload_bytes(const kvt_block_layout_t *layout);
bool kvt_block_layout_eq(const kvt_block_layout_t *a, const kvt_block_layout_t *b);

/* --- header --- */

static inline size_t kvt_block_header_size(uint32_t block_tokens)
{
    return KVT_BLOCK_HEADER_FIXED + 4u * (size_t)block_tokens;
}

/* Fill a header for `payload` (computes payload_len and checksum). */
kvt_status_t kvt_block_header_make(kvt_block_header_t *hdr, const kvt_block_identity_t *id,
                                   const kvt_block_key_t *parent, uint32_t index,
                                   const uint32_t *tokens, const void *payload);
/* The same with the payload's xxh3-64 given (computed where the payload
 * is, e.g. on the GPU), so the caller need not read the payload here. */
kvt_status_t kvt_block_header_make_sum(kvt_block_header_t *hdr, const kvt_block_identity_t *id,
                                       const kvt_block_key_t *parent, uint32_t index,
                                       const uint32_t *tokens, uint64_t checksum);
/* Encode into buf[cap]; KVT_ERR_TOO_LARGE if cap is short. */
kvt_status_t kvt_block_header_encode(const kvt_block_header_t *hdr, uint8_t *buf, size_t cap,
                                     size_t *len_p);
/* Decode and bound-check; sets *len_p to the header's length in buf.
 * KVT_ERR_TRUNCATED, KVT_ERR_CORRUPT (magic, checksum), KVT_ERR_INVALID /
 * KVT_ERR_TOO_LARGE (fields out of bounds or inconsistent). */
kvt_status_t kvt_block_header_decode(const uint8_t *buf, size_t len, kvt_block_header_t *hdr_p,
                                     size_t *len_p);
/* key == SHA-256(parent || B || tokens): the header names its own content. */
kvt_status_t kvt_block_header_check_key(const kvt_block_header_t *hdr);
/* Layout and fingerprint equal the tier's identity; else KVT_ERR_MISMATCH. */
kvt_status_t kvt_block_header_check_identity(const kvt_block_header_t *hdr,
                                             const kvt_block_identity_t *id);
/* Payload length and xxh3 checksum match the header; else KVT_ERR_CORRUPT. */
kvt_status_t kvt_block_payload_verify(const kvt_block_header_t *hdr, const void *payload,
                                      size_t payload_len);

#endif
