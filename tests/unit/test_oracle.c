/* The engine against Hugging Face transformers (the oracle), in f32.
 *
 * tests/fixtures/oracle/<preset>.* were made on a machine with torch and
 * transformers by tools/make_oracle_fixtures.sh: `kvtier model init
 * --preset P --seed 1` wrote the model directory (<preset>.model.json holds
 * its digest), and tools/hf_oracle.py recorded transformers' logits for
 * fixed token ids (every position at ~512 vocabulary ids, and all logits of
 * the first prompt's last position).  Here the same directory is written
 * again -- model init is deterministic on every machine, checked through
 * the digest -- loaded, and run with f32 KV; every recorded logit must
 * agree within 1e-4 relative to the largest logit magnitude of its
 * position, and the greedy token must match wherever transformers' top two
 * logits are clearly apart.
 *
 * usage: test_oracle PRESET...   (ctest runs the small presets as a unit
 * test and llama-3.2-1b, which writes a 2.5 GB directory, as an
 * integration test) */
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_init.h"
#include "common/hash.h"
#include "tests/support/testutil.h"

// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL_TOL 1e-4

static const char *g_preset;

static char *read_file(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len_p = (size_t)n;
    }
    return buf;
}

static cJSON *read_json(const char *suffix)
{
    char path[1024];
    size_t len;
    snprintf(path, sizeof(path), "%s/oracle/%s%s", KVT_FIXTURES, g_preset, suffix);
    char *text = read_file(path, &len);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

/* Write the preset's directory as the fixture's was written; check the
 * digest. */
static void make_model(char *dir, size_t cap)
{
    cJSON *mj = read_json(".model.json");
    const char *dtype = cJSON_GetStringValue(cJSON_GetObjectItem(mj, "dtype"));
    const char *digest = cJSON_GetStringValue(cJSON_GetObjectItem(mj, "digest"));
    assert_non_null(dtype);
    assert_non_null(digest);
    const char *tmp = getenv("KVT_TEST_TMP") ? getenv("KVT_TEST_TMP") : "/tmp";
    snprintf(dir, cap, "%s/oracle-%s-%d", tmp, g_preset, (int)getpid());
    kvt_model_init_params_t p = {
        .preset = g_preset,
        .out_dir = dir,
        .seed = 1,
        .dtype = strcmp(dtype, "f32") == 0 ? KVT_DTYPE_F32 : KVT_DTYPE_BF16,
    };
    kvt_model_init_result_t r;
    assert_int_equal(kvt_model_init(&p, &r), KVT_OK);
    char hex[65];
    kvt_hex(r.digest, 32, hex);
    assert_string_equal(hex, digest);
    cJSON_Delete(mj);
}

/* max |got - want| over the largest |want|, for n values at stride. */
static double rel_err(const float *got, size_t stride, const float *want, size_t n)
{
    double max_diff = 0, max_ref = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i * stride] - want[i]);
        max_diff = d > max_diff ? d : max_diff;
        max_ref = fabs(want[i]) > max_ref ? fabs(want[i]) : max_ref;
    }
    return max_diff / max_ref;
}

/* Greedy token agrees where the oracle's top two are apart by > 1e-3 of
 * the scale (closer than that, rounding may legitimately flip them). */
static void check_argmax(const float *got, const float *full_want, uint32_t vocab)
{
    uint32_t a = 0;
    for (uint32_t i = 1; i < vocab; i++)
        if (got[i] > got[a])
            a = i;
    uint32_t w = 0;
    for (uint32_t i = 1; i < vocab; i++)
        if (full_want[i] > full_want[w])
            w = i;
    float second = -INFINITY;
    for (uint32_t i = 0; i < vocab; i++)
        if (i != w && full_want[i] > second) {
            second = full_want[i];
        }
    if (full_want[w] - second > 1e-3 * fabs(full_want[w]))
        assert_int_equal(a, w);
}

static uint32_t *prompt_ids(const cJSON *prompt, size_t *n_p)
{
    cJSON *ids_j = cJSON_GetObjectItem(prompt, "ids");
    size_t n = (size_t)cJSON_GetArraySize(ids_j);
    uint32_t *ids = malloc(n * sizeof(uint32_t));
    assert_non_null(ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (uint32_t)cJSON_GetNumberValue(cJSON_GetArrayItem(ids_j, (int)i));
    *n_p = n;
    return ids;
}

static void test_oracle_logits(void **state)
{
    (void)state;
    char dir[1024];
    make_model(dir, sizeof(dir));
    cJSON *meta = read_json(".json");
    size_t flen;
    char path[1024];
    snprintf(path, sizeof(path), "%s/oracle/%s.logits.f32", KVT_FIXTURES, g_preset);
    float *want = (float *)read_file(path, &flen);
    assert_non_null(want);

    kvt_model_t *model;
    assert_int_equal(kvt_model_load(dir, &model), KVT_OK);
    uint32_t vocab = model->cfg.vocab_size;
    assert_int_equal(vocab, cJSON_GetNumberValue(cJSON_GetObjectItem(meta, "vocab_size")));
    size_t stride = (size_t)cJSON_GetNumberValue(cJSON_GetObjectItem(meta, "id_stride"));
    size_t n_sub = (vocab + stride - 1) / stride;
    kvt_engine_opts_t eo = {.kv_dtype = KVT_DTYPE_F32};
    kvt_engine_t *engine;
    assert_int_equal(kvt_engine_create(model, &eo, &engine), KVT_OK);

    const float *w = want;
    float *kept = malloc(vocab * sizeof(float)); /* the first prompt's last logits */
    cJSON *prompts = cJSON_GetObjectItem(meta, "prompts"), *pj;
    int pi = 0;
    double worst = 0;
    cJSON_ArrayForEach(pj, prompts) {
        size_t n;
        uint32_t *ids = prompt_ids(pj, &n);
        float *logits = malloc(n * vocab * sizeof(float));
        assert_non_null(logits);
        kvt_block_key_t root = {{(uint8_t)pi}};
        kvt_seq_t *seq;
        assert_int_equal(kvt_engine_seq_create(engine, &root, &seq), KVT_OK);
        assert_int_equal(
            kvt_engine_prefill(engine, seq, ids, n, logits, KVT_ENGINE_LOGITS_ALL), KVT_OK);
        for (size_t t = 0; t < n; t++) {
            double e = rel_err(logits + t * vocab, stride, w + t * n_sub, n_sub);
            worst = e > worst ? e : worst;
            if (e > REL_TOL)
                fail_msg("prompt %d position %zu: relative error %.3g > %.0e", pi, t, e,
                         REL_TOL);
        }
        w += n * n_sub;
        if (pi == 0)
            memcpy(kept, logits + (n - 1) * vocab, vocab * sizeof(float));
        kvt_engine_seq_destroy(engine, seq);
        free(logits);
        free(ids);
        pi++;
    }
    /* The first prompt's full last-position logits follow the subsets. */
    assert_int_equal((size_t)((const char *)w - (const char *)want) + vocab * sizeof(float), flen);
    double e = rel_err(kept, 1, w, vocab);
    print_message("oracle %s: worst relative error %.3g (subsets), %.3g (full last)\n",
                  g_preset, worst, e);
    assert_true(e <= REL_TOL);
    check_argmax(kept, w, vocab);
    free(kept);

    kvt_engine_destroy(engine);
    kvt_model_destroy(model);
    free(want);
    cJSON_Delete(meta);
    tu_rmtree(dir);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_oracle_logits)};
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        g_preset = argv[i];
        char path[1024];
        snprintf(path, sizeof(path), "%s/oracle/%s.json", KVT_FIXTURES, g_preset);
        if (access(path, R_OK) != 0) {
            fprintf(stderr, "no oracle fixture for %s (%s)\n", g_preset, path);
            return 1;
        }
        failed += cmocka_run_group_tests_name(g_preset, tests, NULL, NULL);
    }
    return failed ? 1 : 0;
}
