/* Stand-alone driver for fuzz_safetensors.c, for builds without libFuzzer.
 *
 * Builds seed images here (valid files with every dtype, rank 0 to 4,
 * metadata, padding, escaped names, empty tensors; and a few that must be
 * rejected), runs LLVMFuzzerTestOneInput over them and then over N
 * deterministic mutations: bit flips, interesting bytes, truncations,
 * extensions, the length field set near its value or to extremes, numbers
 * in the header replaced by interesting ones (offsets and dims), dtype
 * names swapped, JSON tokens inserted.  The target aborts on a violation;
 * this driver also fails if a seed is not decoded as expected or if the
 * mutations never produced an accepted image and each kind of rejection.
 *
 *   fuzz_safetensors_driver [N] [FILE...]        N mutations (default 200000)
 *   fuzz_safetensors_driver --write-seeds DIR    write the seeds as files */
#include "tests/fuzz/driver_util.h"
#include "engine/safetensors.h"

#include "common/le.h"
#include "common/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEEDS 16
#define SEED_CAP 4096 /* the libFuzzer run's -max_len */

typedef struct {
    uint8_t bytes[SEED_CAP];
    size_t len;
    kvt_status_t want;
} input_t;

static input_t g_seeds[MAX_SEEDS];
static int g_n_seeds;
static uint64_t g_rng = 0x7361666574656e73ull;

static uint64_t rnd(void) { return fuzz_splitmix64(&g_rng); }

/* header, padded with spaces to a multiple of 8 when `pad`, then data_len
 * pseudo-random data bytes. */
static void add_seed(const char *header, int pad, size_t data_len, kvt_status_t want)
{
    input_t *in = &g_seeds[g_n_seeds++];
    size_t h = strlen(header);
    memcpy(in->bytes + 8, header, h);
    while (pad && (8 + h) % 8)
        in->bytes[8 + h++] = ' ';
    kvt_le_put64(in->bytes, h);
    for (size_t i = 0; i < data_len; i++)
        in->bytes[8 + h + i] = (uint8_t)rnd();
    in->len = 8 + h + data_len;
    in->want = want;
}

static void build_seeds(void)
{
    add_seed("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 0, 16, KVT_OK);
    add_seed("{\"__metadata__\":{\"format\":\"pt\"},"
             "\"model.embed_tokens.weight\":{\"dtype\":\"BF16\",\"shape\":[4,3],"
             "\"data_offsets\":[0,24]},"
             "\"model.norm.weight\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[24,30]}}",
             1, 30, KVT_OK);
    add_seed("{}", 1, 0, KVT_OK);
    add_seed("{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
             "\"r4\":{\"dtype\":\"F16\",\"shape\":[1,2,1,3],\"data_offsets\":[4,16]},"
             "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,7],\"data_offsets\":[16,16]}}",
             1, 16, KVT_OK);
    add_seed("{\"a\\\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
             "\"\\u00e9t\\u00e9\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"__metadata__\":{}}",
             0, 8, KVT_OK);
    add_seed("{\"q\":{\"dtype\":\"BF16\",\"shape\":[8,8],\"data_offsets\":[0,128]},"
             "\"k\":{\"dtype\":\"BF16\",\"shape\":[4,8],\"data_offsets\":[128,192]},"
             "\"v\":{\"dtype\":\"BF16\",\"shape\":[4,8],\"data_offsets\":[192,256]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[256,288]}}",
             1, 288, KVT_OK);
    add_seed("{\"x\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 1, 2,
             KVT_ERR_INVALID);
    add_seed("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             1, 8, KVT_ERR_CORRUPT);
    add_seed("{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 1, 4,
             KVT_ERR_TOO_LARGE);
}

/* A run of digits in the header, replaced by an interesting number. */
static void mutate_number(input_t *in)
{
    static const char *const nums[] = {"0",  "1",  "2",  "3",  "4",  "7",  "8",
                                       "15", "16", "17", "-1", "1.5", "1e3", "4294967296",
                                       "9007199254740992", "9007199254740993",
                                       "18446744073709551616", "100000001"};
    size_t hlen = in->len >= 8 ? (size_t)kvt_le_get64(in->bytes) : 0;
    if (hlen > in->len - 8 || hlen == 0)
        return;
    size_t at = 8 + (size_t)(rnd() % hlen), end = at;
    while (at < 8 + hlen && (in->bytes[at] < '0' || in->bytes[at] > '9'))
        at++;
    for (end = at; end < 8 + hlen && in->bytes[end] >= '0' && in->bytes[end] <= '9'; end++)
        ;
    if (at >= end)
        return;
    const char *num = nums[rnd() % (sizeof(nums) / sizeof(nums[0]))];
    size_t nl = strlen(num), tail = in->len - end;
    if (in->len - (end - at) + nl > SEED_CAP)
        return;
    memmove(in->bytes + at + nl, in->bytes + end, tail);
    memcpy(in->bytes + at, num, nl);
    in->len = in->len - (end - at) + nl;
    kvt_le_put64(in->bytes, hlen - (end - at) + nl); /* the header keeps its extent */
}

/* Insert text at a random place in the header, keeping the length right. */
static void insert_text(input_t *in, const char *text, int dtype_only)
{
    size_t hlen = in->len >= 8 ? (size_t)kvt_le_get64(in->bytes) : 0;
    size_t tl = strlen(text);
    if (hlen > in->len - 8 || hlen == 0 || in->len + tl > SEED_CAP)
        return;
    size_t at = 8 + (size_t)(rnd() % hlen);
    if (dtype_only) { /* overwrite the value of a "dtype" instead */
        uint8_t *p = memmem(in->bytes + 8, hlen, "\"dtype\":\"", 9);
        if (!p)
            return;
        at = (size_t)(p - in->bytes) + 9;
        size_t e = at;
        while (e < 8 + hlen && in->bytes[e] != '"')
            e++;
        memmove(in->bytes + at, in->bytes + e, in->len - e);
        in->len -= e - at;
        hlen -= e - at;
    }
    memmove(in->bytes + at + tl, in->bytes + at, in->len - at);
    memcpy(in->bytes + at, text, tl);
    in->len += tl;
    kvt_le_put64(in->bytes, hlen + tl);
}

static void mutate_length(input_t *in)
{
    static const uint64_t vals[] = {0, 1, 2, 7, 8, KVT_ST_MAX_HEADER, KVT_ST_MAX_HEADER + 1,
                                    UINT32_MAX, UINT64_MAX, UINT64_MAX / 2};
    if (in->len < 8)
        return;
    uint64_t v = kvt_le_get64(in->bytes), r = rnd();
    v = r % 2 ? v + (r >> 8) % 9 - 4 : vals[(r >> 8) % (sizeof(vals) / sizeof(vals[0]))];
    kvt_le_put64(in->bytes, v);
}

static void mutate_once(input_t *in)
{
    static const char *const tokens[] = {"[", "]", "{", "}", ",", "\"", ":", " ", "null",
                                         "\"__metadata__\":{},", "\"x\":1,"};
    static const char *const dtypes[] = {"F32", "BF16", "F16", "I8", "F64", "BOOL", "F8_E4M3", ""};
    uint64_t r = rnd();
    size_t at = in->len ? (size_t)((r >> 8) % in->len) : 0;
    switch (r % 8) {
    case 0:
        if (in->len)
            in->bytes[at] ^= (uint8_t)(1u << ((r >> 40) % 8));
        break;
    case 1:
        if (in->len)
            in->bytes[at] = (uint8_t)(r >> 48);
        break;
    case 2:
        in->len = in->len ? (size_t)((r >> 8) % in->len) : 0;
        break;
    case 3:
        for (size_t i = 0, add = (r >> 8) % 64; i < add && in->len < SEED_CAP; i++)
            in->bytes[in->len++] = (uint8_t)rnd();
        break;
    case 4:
        mutate_length(in);
        break;
    case 5:
        insert_text(in, tokens[(r >> 8) % (sizeof(tokens) / sizeof(tokens[0]))], 0);
        break;
    case 6:
        insert_text(in, dtypes[(r >> 8) % (sizeof(dtypes) / sizeof(dtypes[0]))], 1);
        break;
    default:
        mutate_number(in);
        break;
    }
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
        kvt_st_file_t *f = NULL;
        kvt_status_t st = kvt_st_open_mem(g_seeds[i].bytes, g_seeds[i].len, "seed", &f);
        if (st != g_seeds[i].want) {
            fprintf(stderr, "seed %d: status %d, expected %d\n", i, st, g_seeds[i].want);
            return 1;
        }
        kvt_st_close(f);
        LLVMFuzzerTestOneInput(g_seeds[i].bytes, g_seeds[i].len);
    }
    return 0;
}

static int run_mutations(long n)
{
    static input_t in;
    long by_status[16] = {0};
    for (long i = 0; i < n; i++) {
        in = g_seeds[rnd() % (uint64_t)g_n_seeds];
        int k = 1 + (int)(rnd() % 3);
        for (int j = 0; j < k; j++)
            mutate_once(&in);
        kvt_st_file_t *f = NULL;
        int st = -(int)kvt_st_open_mem(in.bytes, in.len, "mutant", &f);
        kvt_st_close(f);
        by_status[st >= 0 && st < 16 ? st : 15]++;
        LLVMFuzzerTestOneInput(in.bytes, in.len);
    }
    printf("mutations=%ld ok=%ld invalid=%ld corrupt=%ld too_large=%ld truncated=%ld\n", n,
           by_status[0], by_status[-KVT_ERR_INVALID], by_status[-KVT_ERR_CORRUPT],
           by_status[-KVT_ERR_TOO_LARGE], by_status[-KVT_ERR_TRUNCATED]);
    if (n >= 1000 && (!by_status[0] || !by_status[-KVT_ERR_INVALID] ||
                      !by_status[-KVT_ERR_CORRUPT] || !by_status[-KVT_ERR_TOO_LARGE] ||
                      !by_status[-KVT_ERR_TRUNCATED])) {
        fprintf(stderr, "mutations did not reach every check\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    kvt_log_set_level((kvt_log_level_t)-1); /* every rejection would log a line */
    build_seeds();
    return fuzz_driver_main(argc, argv, write_seeds, run_seeds, run_mutations);
}
