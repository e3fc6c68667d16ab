/* SHA-256 through OpenSSL's EVP interface; xxh3 through libxxhash's header,
 * built into common/ (xxh3_sse2.c, xxh3_avx2.c) and picked per CPU here. */
#include "common/hash.h"

#include "common/xxh3_impl.h"

#include "common/log.h"

#include <openssl/evp.h>
#include <string.h>

kvt_status_t kvt_sha256_init(kvt_sha256_t *ctx)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        kvt_log_error("sha256 init failed");
        ctx->evp = NULL;
        return KVT_ERR_NOMEM;
    }
    ctx->evp = md;
    return KVT_OK;
}

void kvt_sha256_update(kvt_sha256_t *ctx, const void *data, size_t len)
{
    EVP_DigestUpdate((EVP_MD_CTX *)ctx->evp, data, len);
}

void kvt_sha256_final(kvt_sha256_t *ctx, uint8_t out[KVT_SHA256_LEN])
{
    unsigned int n = 0;
    EVP_DigestFinal_ex((EVP_MD_CTX *)ctx->evp, out, &n);
    kvt_sha256_cleanup(ctx);
}

void kvt_sha256_cleanup(kvt_sha256_t *ctx)
{
    EVP_MD_CTX_free((EVP_MD_CTX *)ctx->evp);
    ctx->evp = NULL;
}

kvt_status_t kvt_sha256(const void *data, size_t len, uint8_t out[KVT_SHA256_LEN])
{
    kvt_sha256_t ctx;
    kvt_status_t st = kvt_sha256_init(&ctx);
    if (st != KVT_OK)
        return st;
    kvt_sha256_update(&ctx, data, len);
    kvt_sha256_final(&ctx, out);
    return KVT_OK;
}

uint64_t kvt_xxh3_64(const void *data, size_t len)
{
#ifdef KVT_XXH3_AVX2
    /* __builtin_cpu_supports reads what libgcc's constructor filled in. */
    if (__builtin_cpu_supports("avx2"))
        return kvt_xxh3_64_avx2(data, len);
#endif
    return kvt_xxh3_64_sse2(data, len);
}

void kvt_hex(const uint8_t *bytes, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

kvt_status_t kvt_unhex(const char *hex, uint8_t *bytes, size_t len)
{
    if (!hex || strlen(hex) != 2 * len)
        return KVT_ERR_INVALID;
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return KVT_ERR_INVALID;
        bytes[i] = (uint8_t)(hi << 4 | lo);
    }
    return KVT_OK;
}
