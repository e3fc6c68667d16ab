/* Shared helpers for kvtier tests: key chains with payloads derived from
 * their keys (so any read can be checked), and scratch directories.
 * Header-only so each test stays one executable. */
#ifndef KVT_TESTS_TESTUTIL_H
#define KVT_TESTS_TESTUTIL_H

#include "kvstore/block.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TU_MAX_CHAIN 64

typedef struct {
    kvt_block_header_t hdr[TU_MAX_CHAIN];
    uint8_t *payload[TU_MAX_CHAIN];
    int n;
} tu_chain_t;

/* 2 layers x 2 kv heads x head_dim 8, B = 4, f32: 1 KiB payloads. */
static inline kvt_block_identity_t tu_identity(void)
{
    kvt_block_identity_t id = {
        .layout = {.n_layers = 2, .n_kv_heads = 2, .head_dim = 8, .block_tokens = 4,
                   .dtype = KVT_DTYPE_F32},
    };
    for (int i = 0; i < KVT_FINGERPRINT_LEN; i++)
        id.fingerprint[i] = (uint8_t)(0xa0 + i);
    return id;
}

static inline size_t tu_payload_len(const kvt_block_identity_t *id)
{
    return kvt_block_layout_payload_bytes(&id->layout);
}

/* Payload bytes are a function of the key. */
static inline void tu_fill_payload(const kvt_block_identity_t *id, const kvt_block_key_t *key,
                                   uint8_t *out)
{
    uint64_t x = kvt_xxh3_64(key->b, KVT_KEY_LEN);
    for (size_t i = 0; i < tu_payload_len(id); i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        out[i] = (uint8_t)(x >> 56);
    }
}

static inline int tu_payload_ok(const kvt_block_identity_t *id, const kvt_block_key_t *key,
                                const uint8_t *got)
{
    uint8_t *want = malloc(tu_payload_len(id));
    tu_fill_payload(id, key, want);
    int ok = memcmp(want, got, tu_payload_len(id)) == 0;
    free(want);
    return ok;
}

/* A chain of n blocks whose first `share` blocks are base's (a branch);
 * `seed` picks the other tokens. */
static inline void tu_chain_make(tu_chain_t *c, const kvt_block_identity_t *id, int n,
                                 uint32_t seed, const tu_chain_t *base, int share)
{
    uint32_t bt = id->layout.block_tokens;
    kvt_block_key_t parent;
    kvt_block_key_root(id->fingerprint, NULL, 0, &parent);
    c->n = n;
    for (int i = 0; i < n; i++) {
        uint32_t tokens[KVT_BLOCK_MAX_TOKENS];
        for (uint32_t t = 0; t < bt; t++)
            tokens[t] = i < share ? base->hdr[i].tokens[t]
                                  : seed * 1000003u + (uint32_t)i * bt + t;
        kvt_block_key_t key;
        kvt_block_key_next(&parent, bt, tokens, &key);
        c->payload[i] = malloc(tu_payload_len(id));
        tu_fill_payload(id, &key, c->payload[i]);
        kvt_block_header_make(&c->hdr[i], id, &parent, (uint32_t)i, tokens, c->payload[i]);
        parent = c->hdr[i].key;
    }
}

static inline void tu_chain_free(tu_chain_t *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->payload[i]);
    c->n = 0;
}

/* A fresh directory under $KVT_TEST_TMP (or /tmp); caller frees the path. */
static inline char *tu_tmpdir(const char *tag)
{
    const char *base = getenv("KVT_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0755);
    size_t len = strlen(base) + strlen(tag) + 16;
    char *path = malloc(len);
    snprintf(path, len, "%s/%s-XXXXXX", base, tag);
    if (!mkdtemp(path)) {
        perror("mkdtemp");
        abort();
    }
    return path;
}

static inline int tu_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void tu_rmtree(const char *path)
{
    nftw(path, tu_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
