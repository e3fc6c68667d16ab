/* Tests for engine/model_init.c (`kvtier model init`): the tiny presets
 * written to a scratch directory load back with the preset's shapes and
 * the intended weight distributions; the digest depends on the seed only
 * (not on the thread count or the sharding); bf16 and f32 both load and
 * agree up to bf16 rounding; a non-empty directory is refused; failures
 * leave nothing behind; tokenizer.json is the asset byte for byte. */
#include "engine/model.h"
#include "engine/modelInt.h"
#include "engine/model_init.h"
#include "engine/safetensors.h"
#include "tests/support/testutil.h"

#include "common/alloc.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static char *g_tmp;

static int setup_tmp(void **state)
{
    g_tmp = tu_tmpdir("test_model_init");
    return 0;
}

static int teardown_tmp(void **state)
{
    tu_rmtree(g_tmp);
    free(g_tmp);
    return 0;
}

static const char *out_dir(const char *tag)
{
    static char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", g_tmp, tag);
    return dir;
}

static kvt_model_init_result_t init_ok(const char *preset, const char *tag, uint64_t seed,
                                       kvt_dtype_t dtype, unsigned threads, uint64_t shard)
{
    kvt_model_init_params_t p = {.preset = preset, .out_dir = out_dir(tag), .seed = seed,
                                 .dtype = dtype, .n_threads = threads, .max_shard_bytes = shard};
    kvt_model_init_result_t r;
    assert_int_equal(kvt_model_init(&p, &r), KVT_OK);
    return r;
}

static char *read_all(const char *path, size_t *len)
{
    char *buf;
    assert_int_equal(kvt_model_read_file(path, 64u << 20, &buf, len), KVT_OK);
    return buf;
}

static void mean_std(const float *x, size_t n, double *mean, double *std)
{
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
    }
    *mean = s / (double)n;
    *std = sqrt(s2 / (double)n - *mean * *mean);
}

static void check_stats(const kvt_model_t *m)
{
    const kvt_model_config_t *c = &m->cfg;
    double mean, std;
    mean_std(m->embed, (size_t)c->vocab_size * c->hidden, &mean, &std);
    assert_true(fabs(mean) < 0.001 && fabs(std - 0.02) < 0.001);
    mean_std(m->layers[1].w_gate, (size_t)c->intermediate * c->hidden, &mean, &std);
    assert_true(fabs(mean) < 0.002 && fabs(std - 0.02) < 0.002);
    mean_std(m->layers[0].attn_norm, c->hidden, &mean, &std);
    assert_true(fabs(mean - 1.0) < 0.05 && fabs(std - 0.1) < 0.03);
    mean_std(m->final_norm, c->hidden, &mean, &std);
    assert_true(fabs(mean - 1.0) < 0.05 && fabs(std - 0.1) < 0.03);
    /* Tensors differ from each other (their seeds include the name). */
    assert_memory_not_equal(m->layers[0].wk, m->layers[0].wv,
                            (size_t)c->n_kv_heads * c->head_dim * c->hidden * 4);
}

static void test_init_tiny(void **state)
{
    kvt_model_init_result_t r = init_ok("tiny", "tiny", 1, KVT_DTYPE_BF16, 0, 0);
    const kvt_model_preset_t *p = kvt_model_preset_find("tiny");
    assert_non_null(p);
    assert_int_equal(r.n_shards, 0);
    assert_int_equal(r.n_params, kvt_model_n_params(&p->cfg));
    assert_int_equal(r.n_params, 2189632);
    kvt_model_t *m;
    assert_int_equal(kvt_model_load(out_dir("tiny"), &m), KVT_OK);
    const kvt_model_config_t *c = &m->cfg;
    assert_int_equal(c->arch, KVT_ARCH_LLAMA);
    assert_int_equal(c->vocab_size, 16384);
    assert_int_equal(c->hidden, 64);
    assert_int_equal(c->intermediate, 176);
    assert_int_equal(c->n_layers, 2);
    assert_int_equal(c->n_heads, 4);
    assert_int_equal(c->n_kv_heads, 2);
    assert_int_equal(c->head_dim, 16);
    assert_int_equal(c->max_pos, 4096);
    assert_true(c->rms_eps == 1e-5f && c->rope_theta == 10000.0f);
    assert_false(c->tie_embeddings);
    assert_false(c->qkv_bias);
    assert_false(c->has_bos);
    assert_int_equal(c->n_eos, 1);
    assert_int_equal(c->eos_ids[0], KVT_MODEL_INIT_EOS_ID);
    assert_true(m->lm_head != m->embed);
    assert_null(m->layers[0].bq);
    assert_memory_equal(m->digest, r.digest, 32);
    check_stats(m);
    kvt_model_destroy(m);
}

static void test_init_tiny_qwen2(void **state)
{
    kvt_model_init_result_t r = init_ok("tiny-qwen2", "q", 1, KVT_DTYPE_BF16, 0, 0);
    kvt_model_t *m;
    assert_int_equal(kvt_model_load(out_dir("q"), &m), KVT_OK);
    assert_int_equal(m->cfg.arch, KVT_ARCH_QWEN2);
    assert_true(m->cfg.qkv_bias);
    assert_true(m->cfg.tie_embeddings);
    assert_true(m->cfg.rope_theta == 1e6f && m->cfg.rms_eps == 1e-6f);
    assert_ptr_equal(m->lm_head, m->embed);
    double mean, std;
    mean_std(m->layers[1].bq, 64, &mean, &std);
    assert_true(std > 0.01 && std < 0.03);
    assert_memory_equal(m->digest, r.digest, 32);
    check_stats(m);
    kvt_model_destroy(m);
    /* config.json names what transformers needs. */
    char path[4200];
    size_t len;
    snprintf(path, sizeof(path), "%s/config.json", out_dir("q"));
    char *text = read_all(path, &len);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "model_type")->valuestring, "qwen2");
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "architectures"), 0)->valuestring,
                        "Qwen2ForCausalLM");
    assert_string_equal(cJSON_GetObjectItem(j, "hidden_act")->valuestring, "silu");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "bos_token_id")));
    assert_int_equal(cJSON_GetObjectItem(j, "eos_token_id")->valueint, 0);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "use_sliding_window")));
    assert_non_null(strstr(text, "\"rope_theta\": 1000000.0,"));
    assert_non_null(strstr(text, "\"rms_norm_eps\": 1e-06,"));
    cJSON_Delete(j);
    kvt_free(text);
}

static void test_init_deterministic(void **state)
{
    kvt_model_init_result_t a = init_ok("tiny", "d1", 7, KVT_DTYPE_BF16, 1, 0);
    kvt_model_init_result_t b = init_ok("tiny", "d2", 7, KVT_DTYPE_BF16, 2, 0);
    kvt_model_init_result_t c = init_ok("tiny", "d3", 8, KVT_DTYPE_BF16, 0, 0);
    assert_memory_equal(a.digest, b.digest, 32);
    assert_memory_not_equal(a.digest, c.digest, 32);
    /* Byte for byte, not only by digest. */
    char pa[4200], pb[4200];
    snprintf(pa, sizeof(pa), "%s/model.safetensors", out_dir("d1"));
    snprintf(pb, sizeof(pb), "%s/model.safetensors", out_dir("d2"));
    size_t la, lb;
    char *fa = read_all(pa, &la), *fb = read_all(pb, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(fa, fb, la);
    kvt_free(fa);
    kvt_free(fb);
    /* Sharding changes files, not the digest. */
    kvt_model_init_result_t s = init_ok("tiny", "d4", 7, KVT_DTYPE_BF16, 0, 1u << 20);
    assert_int_equal(s.n_shards, 3); /* embed alone, the layers and norm, lm_head alone */
    assert_memory_equal(s.digest, a.digest, 32);
    char idx[4200];
    snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", out_dir("d4"));
    size_t li;
    char *text = read_all(idx, &li);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    const cJSON *meta = cJSON_GetObjectItem(j, "metadata");
    assert_true(cJSON_GetObjectItem(meta, "total_size")->valuedouble == 2.0 * (double)a.n_params);
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "weight_map"), "lm_head.weight")->valuestring,
        "model-00003-of-00003.safetensors");
    cJSON_Delete(j);
    kvt_free(text);
    kvt_model_t *m;
    assert_int_equal(kvt_model_load(out_dir("d4"), &m), KVT_OK);
    kvt_model_destroy(m);
}

static void test_init_bf16_vs_f32(void **state)
{
    kvt_model_init_result_t a = init_ok("tiny", "f32", 3, KVT_DTYPE_F32, 0, 0);
    kvt_model_init_result_t b = init_ok("tiny", "bf16", 3, KVT_DTYPE_BF16, 0, 0);
    assert_memory_not_equal(a.digest, b.digest, 32); /* stored bytes differ */
    /* Data plus a header of a few KiB. */
    assert_true(a.weight_bytes > 4 * a.n_params && a.weight_bytes < 4 * a.n_params + 16384);
    assert_true(b.weight_bytes > 2 * b.n_params && b.weight_bytes < 2 * b.n_params + 16384);
    kvt_model_t *mf, *mb;
    assert_int_equal(kvt_model_load(out_dir("f32"), &mf), KVT_OK);
    assert_int_equal(kvt_model_load(out_dir("bf16"), &mb), KVT_OK);
    /* The bf16 model is the f32 draw rounded to nearest even. */
    size_t n = (size_t)mf->cfg.intermediate * mf->cfg.hidden;
    for (size_t i = 0; i < n; i++)
        assert_true(kvt_bf16_to_f32(kvt_f32_to_bf16(mf->layers[0].w_up[i])) ==
                    mb->layers[0].w_up[i]);
    n = (size_t)mf->cfg.vocab_size * mf->cfg.hidden;
    for (size_t i = 0; i < n; i++)
        assert_true(kvt_bf16_to_f32(kvt_f32_to_bf16(mf->lm_head[i])) == mb->lm_head[i]);
    check_stats(mf);
    kvt_model_destroy(mf);
    kvt_model_destroy(mb);
}

static void test_init_refuses(void **state)
{
    const char *dir = out_dir("full");
    assert_int_equal(mkdir(dir, 0755), 0);
    char keep[4200];
    snprintf(keep, sizeof(keep), "%s/notes.txt", dir);
    FILE *f = fopen(keep, "w");
    assert_non_null(f);
    fputs("mine", f);
    fclose(f);
    kvt_model_init_params_t p = {.preset = "tiny", .out_dir = dir};
    kvt_model_init_result_t r;
    assert_int_equal(kvt_model_init(&p, &r), KVT_ERR_EXISTS);
    assert_int_equal(access(keep, F_OK), 0);
    snprintf(keep, sizeof(keep), "%s/config.json", dir);
    assert_int_equal(access(keep, F_OK), -1);
    p.out_dir = keep; /* a file, not a directory */
    f = fopen(keep, "w");
    fclose(f);
    assert_int_equal(kvt_model_init(&p, &r), KVT_ERR_EXISTS);
    /* An empty existing directory is fine; unknown presets and dtypes are not. */
    const char *empty = out_dir("empty");
    assert_int_equal(mkdir(empty, 0755), 0);
    p.out_dir = empty;
    assert_int_equal(kvt_model_init(&p, &r), KVT_OK);
    p.out_dir = out_dir("x");
    p.preset = "llama-9";
    assert_int_equal(kvt_model_init(&p, &r), KVT_ERR_INVALID);
    p.preset = "tiny";
    p.dtype = KVT_DTYPE_F8E4M3;
    assert_int_equal(kvt_model_init(&p, &r), KVT_ERR_INVALID);
    assert_int_equal(access(out_dir("x"), F_OK), -1);
    /* Nested directories are created. */
    p.dtype = KVT_DTYPE_BF16;
    p.out_dir = out_dir("a/b/c");
    assert_int_equal(kvt_model_init(&p, &r), KVT_OK);
}

/* An allocation failing anywhere leaves no directory behind. */
static void test_init_cleans_up(void **state)
{
    int failures = 0;
    for (long n = 0; n < 400; n += 7) {
        char tag[32];
        snprintf(tag, sizeof(tag), "fail%ld", n);
        kvt_model_init_params_t p = {.preset = "tiny-qwen2", .out_dir = out_dir(tag),
                                     .n_threads = 1};
        kvt_model_init_result_t r;
        kvt_alloc_fail_after(n);
        kvt_status_t st = kvt_model_init(&p, &r);
        kvt_alloc_fail_after(-1);
        if (st != KVT_OK) {
            failures++;
            assert_int_equal(access(out_dir(tag), F_OK), -1);
        }
    }
    assert_true(failures > 5);
}

static void test_tokenizer_asset(void **state)
{
    init_ok("tiny", "tok", 0, KVT_DTYPE_BF16, 0, 0);
    char path[4200];
    size_t la, lb;
    snprintf(path, sizeof(path), "%s/../../engine/assets/code.tokenizer.json", KVT_FIXTURES);
    char *asset = read_all(path, &la);
    snprintf(path, sizeof(path), "%s/tokenizer.json", out_dir("tok"));
    char *written = read_all(path, &lb);
    assert_int_equal(la, kvt_asset_code_tokenizer_json_len);
    assert_int_equal(la, lb);
    assert_memory_equal(asset, written, la);
    assert_memory_equal(asset, kvt_asset_code_tokenizer_json, la);
    /* The ids model init writes into the configs are the asset's. */
    cJSON *j = cJSON_Parse(asset);
    assert_non_null(j);
    int seen = 0;
    cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(j, "added_tokens"))
    {
        const char *s = cJSON_GetObjectItem(t, "content")->valuestring;
        int id = cJSON_GetObjectItem(t, "id")->valueint;
        if (!strcmp(s, "<|endoftext|>"))
            seen += id == KVT_MODEL_INIT_EOS_ID;
        if (!strcmp(s, "<|fim_pad|>"))
            seen += id == KVT_MODEL_INIT_PAD_ID;
    }
    assert_int_equal(seen, 2);
    cJSON_Delete(j);
    kvt_free(asset);
    kvt_free(written);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", out_dir("tok"));
    char *tc = read_all(path, &la);
    assert_non_null(strstr(tc, "\"tokenizer_class\": \"PreTrainedTokenizerFast\""));
    assert_non_null(strstr(tc, "\"eos_token\": \"<|endoftext|>\""));
    assert_non_null(strstr(tc, "\"model_max_length\": 4096"));
    kvt_free(tc);
}

static void test_presets(void **state)
{
    /* Every preset parses back from the config.json model init would write
     * for it: checked through the canonical text and the parameter count of
     * the real models. */
    static const struct {
        const char *name;
        uint64_t params;
    } want[] = {
        {"tiny", 2189632ull},
        {"tiny-qwen2", 1141312ull},
        {"llama-3.2-1b", 1235814400ull},
        {"qwen2.5-coder-1.5b", 1543714304ull},
        {"deepseek-coder-6.7b", 6740512768ull},
        {"llama-3.1-8b", 8030261248ull},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const kvt_model_preset_t *p = kvt_model_preset_find(want[i].name);
        assert_non_null(p);
        assert_int_equal(kvt_model_n_params(&p->cfg), want[i].params);
    }
    const kvt_model_preset_t *s = kvt_model_preset_find("small");
    assert_true(kvt_model_n_params(&s->cfg) > 15000000 && kvt_model_n_params(&s->cfg) < 17000000);
    assert_int_equal(kvt_model_preset_count(), 7);
    assert_null(kvt_model_preset_find("nope"));
    assert_null(kvt_model_preset_at(7));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_init_tiny),
        cmocka_unit_test(test_init_tiny_qwen2),
        cmocka_unit_test(test_init_deterministic),
        cmocka_unit_test(test_init_bf16_vs_f32),
        cmocka_unit_test(test_init_refuses),
        cmocka_unit_test(test_init_cleans_up),
        cmocka_unit_test(test_tokenizer_asset),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
