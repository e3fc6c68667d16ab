/* Hashing: SHA-256 (OpenSSL libcrypto) for block identity, xxh3-64
 * (libxxhash) for payload checksums.  Both are pure functions of their input
 * bytes; byte order is defined by the callers' encodings. */
#ifndef KVT_COMMON_HASH_H
#define KVT_COMMON_HASH_H

#include "common/status.h"

#include <stddef.h>
#include <stdint.h>

#define KVT_SHA256_LEN 32

/* Incremental SHA-256.  The context is caller-owned storage. */
typedef struct {
    void *evp; /* private: EVP_MD_CTX */
} kvt_sha256_t;

kvt_status_t kvt_sha256_init(kvt_sha256_t *ctx);
void kvt_sha256_update(kvt_sha256_t *ctx, const void *data, size_t len);
/* Writes the digest and releases the context (init again to reuse). */
void kvt_sha256_final(kvt_sha256_t *ctx, uint8_t out[KVT_SHA256_LEN]);
void kvt_sha256_cleanup(kvt_sha256_t *ctx);

/* One-shot SHA-256. */
kvt_status_t kvt_sha256(const void *data, size_t len, uint8_t out[KVT_SHA256_LEN]);

uint64_t kvt_xxh3_64(const void *data, size_t len);

/* Lowercase hex of len bytes into out (2*len+1 bytes). */
void kvt_hex(const uint8_t *bytes, size_t len, char *out);
/* Parse exactly 2*len hex characters; KVT_ERR_INVALID otherwise. */
kvt_status_t kvt_unhex(const char *hex, uint8_t *bytes, size_t len);

#endif
