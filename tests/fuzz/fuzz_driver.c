/* Stand-alone driver for fuzz targets, for builds without libFuzzer.
 *
 * Runs LLVMFuzzerTestOneInput over seed inputs (valid encoded block headers
 * built here, some followed by their payload) and then over N deterministic
 * random mutations of them: bit flips, byte sets, truncations, extensions,
 * length-field and layout-field edits, half of them with the header checksum
 * resealed so that the field checks behind it are reached.  The target
 * aborts on a violation; this driver also fails if the seeds are not
 * accepted or if no mutation ever got past the checksum.
 *
 *   fuzz_block_header_driver [N] [FILE...]     N mutations (default 200000)
 *   fuzz_block_header_driver --write-seeds DIR  write the seeds as files */
#include "tests/fuzz/driver_util.h"
#include "kvstore/block.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t fuzz_block_header_reseal(uint8_t *data, size_t size);

#define MAX_SEEDS 16
#define SEED_CAP (KVT_BLOCK_HEADER_MAX + 512)

typedef struct {
    uint8_t bytes[SEED_CAP];
    size_t len;
} input_t;

static input_t g_seeds[MAX_SEEDS];
static int g_n_seeds;
static uint64_t g_rng = 0x66757a7a31ull;

static uint64_t rnd(void) { return fuzz_splitmix64(&g_rng); }

/* One seed: a header for the layout, then `with_payload` payload bytes if
 * the payload is small enough to fit. */
static int add_seed(kvt_block_layout_t layout, uint32_t index, int with_payload)
{
    static uint8_t payload[SEED_CAP];
    kvt_block_identity_t id = {.layout = layout};
    uint32_t tokens[KVT_BLOCK_MAX_TOKENS];
    kvt_block_key_t parent;
    kvt_block_header_t hdr;
    for (int i = 0; i < KVT_FINGERPRINT_LEN; i++)
        id.fingerprint[i] = (uint8_t)i;
    for (uint32_t i = 0; i < layout.block_tokens; i++)
        tokens[i] = (uint32_t)rnd();
    uint64_t plen = kvt_block_layout_payload_bytes(&layout);
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)rnd();
    if (kvt_block_key_root(id.fingerprint, "seed", 4, &parent) != KVT_OK || plen == 0 ||
        plen > sizeof(payload) ||
        kvt_block_header_make(&hdr, &id, &parent, index, tokens, payload) != KVT_OK)
        return -1;
    input_t *in = &g_seeds[g_n_seeds];
    if (kvt_block_header_encode(&hdr, in->bytes, sizeof(in->bytes), &in->len) != KVT_OK)
        return -1;
    if (with_payload && in->len + plen <= sizeof(in->bytes)) {
        memcpy(in->bytes + in->len, payload, plen);
        in->len += plen;
    }
    g_n_seeds++;
    return 0;
}

static int build_seeds(void)
{
    const struct {
        kvt_block_layout_t l;
        uint32_t index;
        int with_payload;
    } s[] = {
        {{1, 1, 1, 1, KVT_DTYPE_F8E4M3}, 0, 1},
        {{2, 1, 4, 4, KVT_DTYPE_F16}, 1, 1},
        {{1, 2, 8, 16, KVT_DTYPE_BF16}, 7, 0},
        {{1, 1, 2, 16, KVT_DTYPE_F32}, 3, 1},
        {{1, 1, 1, KVT_BLOCK_MAX_TOKENS, KVT_DTYPE_F8E4M3}, 9, 0},
        {{3, 2, 8, 5, KVT_DTYPE_BF16}, 0xffffffffu, 0},
    };
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
        if (add_seed(s[i].l, s[i].index, s[i].with_payload) != 0)
            return -1;
    return 0;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t interesting(uint64_t near)
{
    const uint64_t vals[] = {0, 1, 2, 4, 0x7f, 0x80, 0xff, 0xffff, 0x7fffffff, 0xffffffffu,
                             KVT_BLOCK_MAX_TOKENS, KVT_BLOCK_MAX_TOKENS + 1,
                             KVT_BLOCK_HEADER_FIXED, KVT_BLOCK_HEADER_MAX, UINT64_MAX};
    uint64_t r = rnd();
    if (r % 3 == 0)
        return near + (r >> 8) % 9 - 4;
    return r % 3 == 1 ? vals[(r >> 8) % (sizeof(vals) / sizeof(vals[0]))] : r >> 8;
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Field offsets of the encoding (block.h) and their widths. */
static const struct {
    size_t off;
    int width;
} g_fields[] = {{4, 2}, {6, 2}, {104, 4}, {108, 4}, {112, 4}, {116, 4},
                {120, 4}, {124, 4}, {128, 8}, {136, 8}};

static void mutate_once(input_t *in)
{
    uint64_t r = rnd();
    size_t at = in->len ? (size_t)((r >> 8) % in->len) : 0;
    switch (r % 6) {
    case 0:
        if (in->len)
            in->bytes[at] ^= (uint8_t)(1u << ((r >> 40) % 8));
        break;
    case 1:
        if (in->len)
            in->bytes[at] = (uint8_t)interesting(in->bytes[at]);
        break;
    case 2:
        in->len = in->len ? (size_t)((r >> 8) % in->len) : 0;
        break;
    case 3: {
        size_t add = (size_t)((r >> 8) % 64);
        for (size_t i = 0; i < add && in->len < SEED_CAP; i++)
            in->bytes[in->len++] = (uint8_t)rnd();
        break;
    }
    default: {
        size_t f = (size_t)((r >> 8) % (sizeof(g_fields) / sizeof(g_fields[0])));
        if (r % 6 == 4)
            f = 1; /* the length field, twice as often */
        size_t off = g_fields[f].off;
        int w = g_fields[f].width;
        if (off + (size_t)w <= in->len)
            put_le(in->bytes + off, interesting(get_le(in->bytes + off, w)), w);
        break;
    }
    }
}

static void mutate(input_t *in)
{
    int n = 1 + (int)(rnd() % 4);
    for (int i = 0; i < n; i++)
        mutate_once(in);
    if (rnd() & 1)
        fuzz_block_header_reseal(in->bytes, in->len);
}

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
        kvt_block_header_t h;
        size_t len;
        if (kvt_block_header_decode(g_seeds[i].bytes, g_seeds[i].len, &h, &len) != KVT_OK) {
            fprintf(stderr, "seed %d is not accepted\n", i);
            return 1;
        }
        LLVMFuzzerTestOneInput(g_seeds[i].bytes, g_seeds[i].len);
    }
    return 0;
}

/* Mutation runs; counts decode outcomes to show the checksum was passed. */
static int run_mutations(long n)
{
    static input_t in;
    long by_status[16] = {0};
    kvt_block_header_t h;
    for (long i = 0; i < n; i++) {
        in = g_seeds[rnd() % (uint64_t)g_n_seeds];
        mutate(&in);
        size_t len;
        int st = -(int)kvt_block_header_decode(in.bytes, in.len, &h, &len);
        by_status[st >= 0 && st < 16 ? st : 15]++;
        LLVMFuzzerTestOneInput(in.bytes, in.len);
    }
    printf("mutations=%ld ok=%ld invalid=%ld corrupt=%ld too_large=%ld truncated=%ld\n", n,
           by_status[0], by_status[-KVT_ERR_INVALID], by_status[-KVT_ERR_CORRUPT],
           by_status[-KVT_ERR_TOO_LARGE], by_status[-KVT_ERR_TRUNCATED]);
    if (n >= 1000 && (by_status[-KVT_ERR_INVALID] == 0 || by_status[-KVT_ERR_TOO_LARGE] == 0)) {
        fprintf(stderr, "mutations never reached the field checks\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (build_seeds() != 0) {
        fprintf(stderr, "cannot build seeds\n");
        return 1;
    }
    return fuzz_driver_main(argc, argv, write_seeds, run_seeds, run_mutations);
}
