/* Tests for engine/model_config.c, engine/safetensors.c and engine/model.c:
 * config.json parsing (real configs, defaults, every malformed case),
 * safetensors round trips with exact f16/bf16 conversions, every header
 * check of the reader on hand-made images, and model directories built
 * here (single file, sharded, broken in one way each). */
#include "engine/model.h"
#include "engine/modelInt.h"
#include "engine/safetensors.h"
#include "tests/support/testutil.h"

#include "common/alloc.h"
#include "common/le.h"

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

/* ---- config.json ---- */

static kvt_status_t parse(const char *json, kvt_model_config_t *cfg)
{
    return kvt_model_config_parse(json, strlen(json), "test/config.json", cfg);
}

static const char LLAMA32_1B[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
    " \"attention_dropout\": 0.0, \"bos_token_id\": 128000,"
    " \"eos_token_id\": [128001, 128008, 128009], \"head_dim\": 64, \"hidden_act\": \"silu\","
    " \"hidden_size\": 2048, \"initializer_range\": 0.02, \"intermediate_size\": 8192,"
    " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 16, \"num_key_value_heads\": 8,"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 32.0,"
    " \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
    " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
    " \"rope_theta\": 500000.0, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.45.0.dev0\", \"use_cache\": true, \"vocab_size\": 128256}";

static const char QWEN25_CODER[] =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 151643, \"eos_token_id\": 151643, \"hidden_act\": \"silu\","
    " \"hidden_size\": 1536, \"initializer_range\": 0.02, \"intermediate_size\": 8960,"
    " \"max_position_embeddings\": 32768, \"max_window_layers\": 21, \"model_type\": \"qwen2\","
    " \"num_attention_heads\": 12, \"num_hidden_layers\": 28, \"num_key_value_heads\": 2,"
    " \"rms_norm_eps\": 1e-06, \"rope_scaling\": null, \"rope_theta\": 1000000.0,"
    " \"sliding_window\": 131072, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
    " \"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": 151936}";

static const char DEEPSEEK_67B[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"bos_token_id\": 32013,"
    " \"eos_token_id\": 32021, \"hidden_act\": \"silu\", \"hidden_size\": 4096,"
    " \"intermediate_size\": 11008, \"max_position_embeddings\": 16384,"
    " \"model_type\": \"llama\", \"num_attention_heads\": 32, \"num_hidden_layers\": 32,"
    " \"num_key_value_heads\": 32, \"rms_norm_eps\": 1e-06,"
    " \"rope_scaling\": {\"factor\": 4.0, \"type\": \"linear\"}, \"rope_theta\": 100000,"
    " \"tie_word_embeddings\": false, \"vocab_size\": 32256}";

static void test_config_llama3(void **state)
{
    kvt_model_config_t c;
    assert_int_equal(parse(LLAMA32_1B, &c), KVT_OK);
    assert_int_equal(c.arch, KVT_ARCH_LLAMA);
    assert_int_equal(c.vocab_size, 128256);
    assert_int_equal(c.hidden, 2048);
    assert_int_equal(c.intermediate, 8192);
    assert_int_equal(c.n_layers, 16);
    assert_int_equal(c.n_heads, 32);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.max_pos, 131072);
    assert_true(c.rms_eps == 1e-5f);
    assert_true(c.rope_theta == 500000.0f);
    assert_false(c.qkv_bias);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.rope_scaling, KVT_ROPE_LLAMA3);
    assert_true(c.rope_factor == 32.0f && c.rope_low_freq_factor == 1.0f &&
                c.rope_high_freq_factor == 4.0f);
    assert_int_equal(c.rope_orig_max_pos, 8192);
    assert_true(c.has_bos);
    assert_int_equal(c.bos_id, 128000);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_ids[0], 128001);
    assert_int_equal(c.eos_ids[2], 128009);
    assert_int_equal(kvt_model_n_params(&c), 1235814400ull);
}

static void test_config_qwen2(void **state)
{
    kvt_model_config_t c;
    assert_int_equal(parse(QWEN25_CODER, &c), KVT_OK);
    assert_int_equal(c.arch, KVT_ARCH_QWEN2);
    assert_int_equal(c.head_dim, 128); /* 1536 / 12 */
    assert_int_equal(c.n_kv_heads, 2);
    assert_true(c.qkv_bias); /* always for Qwen2 */
    assert_true(c.tie_embeddings);
    assert_int_equal(c.rope_scaling, KVT_ROPE_NONE);
    assert_true(c.rope_theta == 1e6f);
    assert_true(c.rms_eps == 1e-6f);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_ids[0], 151643);
    assert_int_equal(kvt_model_n_params(&c), 1543714304ull); /* Qwen2.5-Coder-1.5B */
}

static void test_config_linear(void **state)
{
    kvt_model_config_t c;
    assert_int_equal(parse(DEEPSEEK_67B, &c), KVT_OK);
    assert_int_equal(c.rope_scaling, KVT_ROPE_LINEAR);
    assert_true(c.rope_factor == 4.0f);
    assert_true(c.rope_theta == 100000.0f);
    assert_false(c.tie_embeddings);
    assert_int_equal(c.head_dim, 128);
    /* "rope_type" works as well as "type". */
    assert_int_equal(parse("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,"
                           "\"hidden_size\":8,\"intermediate_size\":4,\"num_hidden_layers\":1,"
                           "\"num_attention_heads\":2,\"rope_scaling\":{\"rope_type\":\"linear\","
                           "\"factor\":2}}",
                           &c),
                     KVT_OK);
    assert_true(c.rope_factor == 2.0f);
}

#define MIN_LLAMA                                                                          \
    "\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"      \
    "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4"

static void test_config_defaults(void **state)
{
    kvt_model_config_t c;
    assert_int_equal(parse("{" MIN_LLAMA "}", &c), KVT_OK);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_true(c.rms_eps == 1e-6f);
    assert_true(c.rope_theta == 10000.0f);
    assert_false(c.tie_embeddings);
    assert_false(c.qkv_bias);
    assert_int_equal(c.rope_scaling, KVT_ROPE_NONE);
    assert_true(c.has_bos); /* LlamaConfig's 1 and 2 */
    assert_int_equal(c.bos_id, 1);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_ids[0], 2);
    assert_int_equal(c.max_pos, 2048);
    /* Qwen2 defaults: no bos/eos, bias on. */
    assert_int_equal(parse("{\"model_type\":\"qwen2\",\"vocab_size\":100,\"hidden_size\":64,"
                           "\"intermediate_size\":128,\"num_hidden_layers\":2,"
                           "\"num_attention_heads\":4}",
                           &c),
                     KVT_OK);
    assert_int_equal(c.arch, KVT_ARCH_QWEN2);
    assert_false(c.has_bos);
    assert_int_equal(c.n_eos, 0);
    assert_true(c.qkv_bias);
    /* Explicit head_dim need not be hidden / heads; null ids; attention_bias. */
    assert_int_equal(parse("{" MIN_LLAMA ",\"head_dim\":32,\"bos_token_id\":null,"
                           "\"eos_token_id\":null,\"attention_bias\":true,\"num_key_value_heads\":"
                           "null}",
                           &c),
                     KVT_OK);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.n_kv_heads, 4);
    assert_false(c.has_bos);
    assert_int_equal(c.n_eos, 0);
    assert_true(c.qkv_bias);
    /* transformers 5: rope_parameters holds rope_theta and the type. */
    assert_int_equal(parse("{" MIN_LLAMA ",\"rope_parameters\":{\"rope_type\":\"default\","
                           "\"rope_theta\":250000.0}}",
                           &c),
                     KVT_OK);
    assert_true(c.rope_theta == 250000.0f);
    assert_int_equal(c.rope_scaling, KVT_ROPE_NONE);
    assert_int_equal(parse("{" MIN_LLAMA ",\"rope_parameters\":{\"rope_type\":\"llama3\","
                           "\"rope_theta\":500000,\"factor\":8,\"low_freq_factor\":1,"
                           "\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}}",
                           &c),
                     KVT_OK);
    assert_int_equal(c.rope_scaling, KVT_ROPE_LLAMA3);
    assert_true(c.rope_theta == 500000.0f && c.rope_factor == 8.0f);
}

/* MIN_LLAMA with the fields of `override` ({...} text) replaced or added. */
static kvt_status_t parse_override(const char *override, kvt_model_config_t *cfg)
{
    cJSON *base = cJSON_Parse("{" MIN_LLAMA "}"), *o = cJSON_Parse(override);
    assert_non_null(base);
    assert_non_null(o);
    for (cJSON *e = o->child; e; e = e->next) {
        cJSON_DeleteItemFromObjectCaseSensitive(base, e->string);
        cJSON_AddItemToObject(base, e->string, cJSON_Duplicate(e, 1));
    }
    char *text = cJSON_PrintUnformatted(base);
    kvt_status_t st = parse(text, cfg);
    free(text);
    cJSON_Delete(base);
    cJSON_Delete(o);
    return st;
}

static void check_rejects(const char *json, bool override, kvt_status_t want)
{
    kvt_model_config_t c;
    memset(&c, 0x5a, sizeof(c));
    kvt_status_t st = override ? parse_override(json, &c) : parse(json, &c);
    if (st != want)
        fprintf(stderr, "config %s: got %d, want %d\n", json, st, want);
    assert_int_equal(st, want);
    assert_int_equal(c.vocab_size, 0x5a5a5a5au); /* untouched on failure */
}

static void test_config_malformed(void **state)
{
    static const struct {
        const char *json;
        kvt_status_t want;
    } whole[] = {
        {"", KVT_ERR_INVALID},
        {"{", KVT_ERR_INVALID},
        {"[1,2]", KVT_ERR_INVALID},
        {"{" MIN_LLAMA "} x", KVT_ERR_INVALID},
        {"{" MIN_LLAMA ",\"hidden_size\":64}", KVT_ERR_INVALID}, /* a key twice */
        {"{" MIN_LLAMA ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2,\"factor\":4}}",
         KVT_ERR_INVALID},
        {"{\"vocab_size\":100}", KVT_ERR_INVALID}, /* no architecture */
        {"{\"architectures\":[\"LlamaForCausalLM\"]}", KVT_ERR_INVALID},
        {"{\"architectures\":[\"GPT2LMHeadModel\"],\"vocab_size\":1}", KVT_ERR_INVALID},
        {"{\"architectures\":\"LlamaForCausalLM\"}", KVT_ERR_INVALID},
        {"{\"architectures\":[7]}", KVT_ERR_INVALID},
        {"{\"model_type\":\"mistral\"}", KVT_ERR_INVALID},
    };
    static const struct {
        const char *fields;
        kvt_status_t want;
    } over[] = {
        {"{\"model_type\":\"qwen2\"}", KVT_ERR_INVALID},
        {"{\"model_type\":3}", KVT_ERR_INVALID},
        {"{\"hidden_size\":\"64\"}", KVT_ERR_INVALID},
        {"{\"hidden_size\":null}", KVT_ERR_INVALID},
        {"{\"num_hidden_layers\":true}", KVT_ERR_INVALID},
        {"{\"num_hidden_layers\":0}", KVT_ERR_INVALID},
        {"{\"vocab_size\":0}", KVT_ERR_INVALID},
        {"{\"vocab_size\":-5}", KVT_ERR_INVALID},
        {"{\"vocab_size\":100.5}", KVT_ERR_INVALID},
        {"{\"vocab_size\":1e300}", KVT_ERR_TOO_LARGE},
        {"{\"vocab_size\":8388608}", KVT_ERR_TOO_LARGE},
        {"{\"hidden_size\":262144,\"head_dim\":16}", KVT_ERR_TOO_LARGE},
        {"{\"num_hidden_layers\":513}", KVT_ERR_TOO_LARGE},
        {"{\"intermediate_size\":4294967296}", KVT_ERR_TOO_LARGE},
        {"{\"intermediate_size\":0}", KVT_ERR_INVALID},
        {"{\"num_key_value_heads\":3}", KVT_ERR_INVALID},
        {"{\"num_key_value_heads\":8}", KVT_ERR_INVALID},
        {"{\"num_key_value_heads\":0}", KVT_ERR_INVALID},
        {"{\"num_key_value_heads\":\"2\"}", KVT_ERR_INVALID},
        {"{\"num_attention_heads\":0}", KVT_ERR_INVALID},
        {"{\"num_attention_heads\":5}", KVT_ERR_INVALID}, /* 64 % 5, no head_dim */
        {"{\"num_attention_heads\":64,\"head_dim\":4096}", KVT_ERR_TOO_LARGE},
        {"{\"head_dim\":15}", KVT_ERR_INVALID},
        {"{\"head_dim\":0}", KVT_ERR_INVALID},
        {"{\"head_dim\":8192}", KVT_ERR_TOO_LARGE},
        {"{\"rms_norm_eps\":0}", KVT_ERR_INVALID},
        {"{\"rms_norm_eps\":\"1e-5\"}", KVT_ERR_INVALID},
        {"{\"rope_theta\":-1}", KVT_ERR_INVALID},
        {"{\"rope_theta\":1e300}", KVT_ERR_TOO_LARGE},
        {"{\"tie_word_embeddings\":1}", KVT_ERR_INVALID},
        {"{\"attention_bias\":\"no\"}", KVT_ERR_INVALID},
        {"{\"hidden_act\":\"gelu\"}", KVT_ERR_INVALID},
        {"{\"mlp_bias\":true}", KVT_ERR_INVALID},
        {"{\"use_sliding_window\":true}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"rope_type\":\"dynamic\",\"factor\":4}}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"factor\":4}}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"type\":7,\"factor\":4}}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"type\":\"linear\"}}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"type\":\"linear\",\"factor\":0}}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":\"linear\"}", KVT_ERR_INVALID},
        {"{\"rope_parameters\":{\"rope_type\":\"longrope\"}}", KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
         "\"high_freq_factor\":4}}",
         KVT_ERR_INVALID},
        {"{\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,"
         "\"high_freq_factor\":4,\"original_max_position_embeddings\":8}}",
         KVT_ERR_INVALID},
        {"{\"eos_token_id\":100}", KVT_ERR_INVALID}, /* not below vocab_size */
        {"{\"eos_token_id\":[1,2,3,4,5,6,7,8,9]}", KVT_ERR_TOO_LARGE},
        {"{\"eos_token_id\":[1,\"2\"]}", KVT_ERR_INVALID},
        {"{\"eos_token_id\":[1,null]}", KVT_ERR_INVALID},
        {"{\"eos_token_id\":\"</s>\"}", KVT_ERR_INVALID},
        {"{\"bos_token_id\":[1]}", KVT_ERR_INVALID},
        {"{\"bos_token_id\":-1}", KVT_ERR_INVALID},
        {"{\"max_position_embeddings\":0}", KVT_ERR_INVALID},
        {"{\"max_position_embeddings\":1e10}", KVT_ERR_TOO_LARGE},
    };
    for (size_t i = 0; i < sizeof(whole) / sizeof(whole[0]); i++)
        check_rejects(whole[i].json, false, whole[i].want);
    for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++)
        check_rejects(over[i].fields, true, over[i].want);
    /* The base itself is fine, an embedded NUL is not, and size is bounded. */
    kvt_model_config_t c;
    assert_int_equal(parse_override("{}", &c), KVT_OK);
    assert_int_equal(kvt_model_config_parse("{}\0{}", 5, "x", &c), KVT_ERR_INVALID);
    assert_int_equal(kvt_model_config_parse("{}", (1u << 20) + 1, "x", &c), KVT_ERR_TOO_LARGE);
}

/* ---- conversions ---- */

static float bits_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static void test_half_conversions(void **state)
{
    assert_true(kvt_f16_to_f32(0x3c00) == 1.0f);
    assert_true(kvt_f16_to_f32(0xc000) == -2.0f);
    assert_true(kvt_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(kvt_f16_to_f32(0x0400) == ldexpf(1.0f, -14));  /* smallest normal */
    assert_true(kvt_f16_to_f32(0x0001) == ldexpf(1.0f, -24));  /* smallest subnormal */
    assert_true(kvt_f16_to_f32(0x03ff) == 1023.0f * ldexpf(1.0f, -24));
    assert_true(kvt_f16_to_f32(0x8001) == -ldexpf(1.0f, -24));
    assert_int_equal(f32_bits(kvt_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
    assert_true(isinf(kvt_f16_to_f32(0x7c00)) && kvt_f16_to_f32(0x7c00) > 0);
    assert_true(isinf(kvt_f16_to_f32(0xfc00)) && kvt_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(kvt_f16_to_f32(0x7e00)));
    assert_true(isnan(kvt_f16_to_f32(0x7c01)));
    /* Every finite half survives f16 -> f32 -> f16. */
    for (uint32_t h = 0; h < 0x10000; h++)
        if ((h & 0x7c00) != 0x7c00)
            assert_int_equal(kvt_f32_to_f16(kvt_f16_to_f32((uint16_t)h)), h);
    /* Round to nearest even, subnormals, overflow. */
    assert_int_equal(kvt_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);     /* tie -> even */
    assert_int_equal(kvt_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02); /* tie -> even */
    assert_int_equal(kvt_f32_to_f16(1.0f + ldexpf(1.0f, -11) + ldexpf(1.0f, -20)), 0x3c01);
    assert_int_equal(kvt_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(kvt_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(kvt_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(kvt_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);         /* tie -> even 0 */
    assert_int_equal(kvt_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    assert_int_equal(kvt_f32_to_f16(ldexpf(1.5f, -24)), 0x0002);         /* tie -> even */
    assert_int_equal(kvt_f32_to_f16(ldexpf(1.0f, -14) - ldexpf(1.0f, -25)), 0x0400);
    assert_int_equal(kvt_f32_to_f16(-ldexpf(1.0f, -30)), 0x8000);
    assert_int_equal(kvt_f32_to_f16(ldexpf(1.0f, -14)), 0x0400);
    assert_true((kvt_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (kvt_f32_to_f16(NAN) & 0x3ff));
    /* bf16 */
    assert_true(kvt_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(kvt_bf16_to_f32(0xc0a0) == -5.0f);
    assert_true(kvt_bf16_to_f32(0x0001) == bits_f32(0x00010000u)); /* subnormal */
    assert_int_equal(kvt_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);     /* tie -> even */
    assert_int_equal(kvt_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82); /* tie -> even */
    assert_int_equal(kvt_f32_to_bf16(1.0f + ldexpf(1.0f, -8) + ldexpf(1.0f, -20)), 0x3f81);
    assert_int_equal(kvt_f32_to_bf16(bits_f32(0x7f7fffffu)), 0x7f80); /* rounds to inf */
    assert_int_equal(kvt_f32_to_bf16(-INFINITY), 0xff80);
    assert_true(isnan(kvt_bf16_to_f32(kvt_f32_to_bf16(bits_f32(0x7f800001u)))));
    for (uint32_t b = 0; b < 0x10000; b++)
        if ((b & 0x7f80) != 0x7f80)
            assert_int_equal(kvt_f32_to_bf16(kvt_bf16_to_f32((uint16_t)b)), b);
}

/* ---- safetensors ---- */

static char *g_tmp;

static int setup_tmp(void **state)
{
    g_tmp = tu_tmpdir("test_model");
    return 0;
}

static int teardown_tmp(void **state)
{
    tu_rmtree(g_tmp);
    free(g_tmp);
    return 0;
}

static char *tmp_path(const char *name)
{
    static char path[4096];
    snprintf(path, sizeof(path), "%s/%s", g_tmp, name);
    return path;
}

static void test_st_round_trip(void **state)
{
    const float f32v[6] = {1.5f, -2.25f, 0.0f, 1e-30f, 3.0e38f, -0.0f};
    const uint16_t bf16v[4] = {0x3f80, 0xc0a0, 0x0001, 0x7f80};
    const uint16_t f16v[5] = {0x3c00, 0x0001, 0x03ff, 0xfc00, 0x7bff};
    kvt_st_spec_t specs[4] = {
        {"w.f32", KVT_DTYPE_F32, 2, {2, 3}},
        {"b\"odd\\name", KVT_DTYPE_BF16, 1, {4}},
        {"h", KVT_DTYPE_F16, 3, {1, 5, 1}},
        {"scalar", KVT_DTYPE_F32, 0, {0}},
    };
    const char *path = tmp_path("rt.safetensors");
    kvt_st_writer_t *w;
    assert_int_equal(kvt_st_writer_create(path, specs, 4, &w), KVT_OK);
    float one = 7.0f;
    /* Out of order and in pieces, as threads would put them. */
    assert_int_equal(kvt_st_writer_put(w, 2, 0, f16v, sizeof(f16v)), KVT_OK);
    assert_int_equal(kvt_st_writer_put(w, 0, 12, f32v + 3, 12), KVT_OK);
    assert_int_equal(kvt_st_writer_put(w, 0, 0, f32v, 12), KVT_OK);
    assert_int_equal(kvt_st_writer_put(w, 1, 0, bf16v, sizeof(bf16v)), KVT_OK);
    assert_int_equal(kvt_st_writer_put(w, 1, 6, bf16v, 4), KVT_ERR_INVALID); /* past the end */
    assert_int_equal(kvt_st_writer_put(w, 4, 0, bf16v, 1), KVT_ERR_INVALID);
    assert_int_equal(kvt_st_writer_put(w, 3, 0, &one, 4), KVT_OK);
    assert_int_equal(kvt_st_writer_finish(w), KVT_OK);

    kvt_st_file_t *f;
    assert_int_equal(kvt_st_open(path, &f), KVT_OK);
    assert_int_equal(kvt_st_count(f), 4);
    const kvt_st_tensor_t *t = kvt_st_find(f, "w.f32");
    assert_non_null(t);
    assert_int_equal(t->rank, 2);
    assert_int_equal(t->shape[1], 3);
    float out[8];
    kvt_st_to_f32(t, 0, 6, out);
    assert_memory_equal(out, f32v, sizeof(f32v));
    t = kvt_st_find(f, "b\"odd\\name");
    assert_non_null(t);
    kvt_st_to_f32(t, 0, 4, out);
    assert_true(out[0] == 1.0f && out[1] == -5.0f && out[2] == bits_f32(0x00010000u));
    assert_true(isinf(out[3]));
    t = kvt_st_find(f, "h");
    assert_int_equal(t->n_elems, 5);
    kvt_st_to_f32(t, 1, 4, out);
    assert_true(out[0] == ldexpf(1.0f, -24) && out[1] == 1023.0f * ldexpf(1.0f, -24));
    assert_true(isinf(out[2]) && out[2] < 0 && out[3] == 65504.0f);
    t = kvt_st_find(f, "scalar");
    assert_int_equal(t->rank, 0);
    assert_int_equal(t->n_elems, 1);
    kvt_st_to_f32(t, 0, 1, out);
    assert_true(out[0] == 7.0f);
    assert_null(kvt_st_find(f, "missing"));
    assert_null(kvt_st_find(f, "__metadata__"));
    /* Sorted by name. */
    for (size_t i = 1; i < kvt_st_count(f); i++)
        assert_true(strcmp(kvt_st_at(f, i - 1)->name, kvt_st_at(f, i)->name) < 0);
    kvt_st_close(f);

    /* Header layout as Hugging Face writes it. */
    char *buf;
    size_t len;
    assert_int_equal(kvt_model_read_file(path, 1 << 20, &buf, &len), KVT_OK);
    uint64_t hlen = kvt_le_get64((const uint8_t *)buf);
    assert_int_equal((8 + hlen) % 8, 0);
    assert_int_equal(memcmp(buf + 8, "{\"__metadata__\":{\"format\":\"pt\"}", 31), 0);
    assert_int_equal(len, 8 + hlen + 24 + 8 + 10 + 4);
    kvt_free(buf);
    /* No overwriting, and an unfinished writer leaves nothing. */
    assert_int_equal(kvt_st_writer_create(path, specs, 1, &w), KVT_ERR_EXISTS);
    assert_int_equal(kvt_st_writer_create(tmp_path("gone.safetensors"), specs, 1, &w), KVT_OK);
    kvt_st_writer_destroy(w);
    assert_int_equal(access(tmp_path("gone.safetensors"), F_OK), -1);
    assert_int_equal(access(tmp_path("gone.safetensors.partial"), F_OK), -1);
    /* finish with bytes missing fails and removes the file. */
    assert_int_equal(kvt_st_writer_create(tmp_path("short.safetensors"), specs, 2, &w), KVT_OK);
    assert_int_equal(kvt_st_writer_put(w, 0, 0, f32v, 24), KVT_OK);
    assert_int_equal(kvt_st_writer_finish(w), KVT_ERR_TRUNCATED);
    assert_int_equal(access(tmp_path("short.safetensors"), F_OK), -1);
    /* Bad specs. */
    kvt_st_spec_t dup[2] = {{"a", KVT_DTYPE_F32, 1, {1}}, {"a", KVT_DTYPE_F32, 1, {1}}};
    assert_int_equal(kvt_st_writer_create(tmp_path("dup"), dup, 2, &w), KVT_ERR_INVALID);
    kvt_st_spec_t bad = {"a", KVT_DTYPE_F8E4M3, 1, {1}};
    assert_int_equal(kvt_st_writer_create(tmp_path("bad"), &bad, 1, &w), KVT_ERR_INVALID);
}

/* An image: u64le(len(header)) header data[data_len] (zeros). */
static uint8_t *image(const char *header, size_t data_len, size_t *len_p)
{
    size_t h = strlen(header);
    uint8_t *b = calloc(1, 8 + h + data_len + 1);
    kvt_le_put64(b, h);
    memcpy(b + 8, header, h);
    *len_p = 8 + h + data_len;
    return b;
}

static kvt_status_t open_image(const char *header, size_t data_len)
{
    size_t len;
    uint8_t *b = image(header, data_len, &len);
    kvt_st_file_t *f = (kvt_st_file_t *)(uintptr_t)0x1;
    kvt_status_t st = kvt_st_open_mem(b, len, "test image", &f);
    if (st == KVT_OK)
        kvt_st_close(f);
    else
        assert_true(f == (kvt_st_file_t *)(uintptr_t)0x1); /* untouched */
    free(b);
    return st;
}

#define T(name, dtype, shape, b, e)                                                    \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e \
    "]}"

static void test_st_reader_checks(void **state)
{
    assert_int_equal(open_image("{" T("a", "F32", "[2,2]", 0, 16) "}", 16), KVT_OK);
    assert_int_equal(open_image("{\"__metadata__\":{\"format\":\"pt\"}," T("a", "BF16", "[3]", 0, 6)
                                "," T("b", "F16", "[]", 6, 8) "}  \n ",
                                8),
                     KVT_OK);
    assert_int_equal(open_image("{}", 0), KVT_OK); /* no tensors */
    assert_int_equal(open_image("{" T("z", "F32", "[0,5]", 0, 0) "," T("y", "F32", "[1]", 0, 4)
                                "}",
                                4),
                     KVT_OK); /* an empty tensor overlaps nothing */
    static const struct {
        const char *header;
        size_t data;
        kvt_status_t want;
    } cases[] = {
        {"", 0, KVT_ERR_INVALID},
        {"{", 0, KVT_ERR_INVALID},
        {"[]", 0, KVT_ERR_INVALID},
        {"{} x", 0, KVT_ERR_INVALID},
        {"{\"__metadata__\":3}", 0, KVT_ERR_INVALID},
        {"{\"a\":3}", 0, KVT_ERR_INVALID},
        {"{" T("a", "I8", "[2]", 0, 2) "}", 2, KVT_ERR_INVALID},
        {"{" T("a", "F64", "[2]", 0, 16) "}", 16, KVT_ERR_INVALID},
        {"{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KVT_ERR_INVALID},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, KVT_ERR_INVALID},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, KVT_ERR_INVALID},
        {"{" T("a", "F32", "[1,1,1,1,1]", 0, 4) "}", 4, KVT_ERR_TOO_LARGE},
        {"{" T("a", "F32", "[-1]", 0, 4) "}", 4, KVT_ERR_INVALID},
        {"{" T("a", "F32", "[1.5]", 0, 4) "}", 4, KVT_ERR_INVALID},
        {"{" T("a", "F32", "[\"1\"]", 0, 4) "}", 4, KVT_ERR_INVALID},
        {"{" T("a", "F32", "[4294967296,4294967296]", 0, 4) "}", 4, KVT_ERR_TOO_LARGE},
        {"{" T("a", "F32", "[1]", 0, 8) "}", 8, KVT_ERR_CORRUPT},  /* size mismatch */
        {"{" T("a", "F32", "[2]", 0, 8) "}", 4, KVT_ERR_CORRUPT},  /* past the data */
        {"{" T("a", "F32", "[1]", 8, 4) "}", 8, KVT_ERR_CORRUPT},  /* begin > end */
        {"{" T("a", "F32", "[1]", -4, 0) "}", 8, KVT_ERR_INVALID},
        {"{" T("a", "F32", "[1]", 0, 4) "," T("b", "F32", "[2]", 2, 10) "}", 12, KVT_ERR_CORRUPT},
        {"{" T("a", "F32", "[1]", 0, 4) "," T("a", "F32", "[1]", 4, 8) "}", 8, KVT_ERR_CORRUPT},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, KVT_ERR_INVALID},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KVT_ERR_INVALID},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvt_status_t st = open_image(cases[i].header, cases[i].data);
        if (st != cases[i].want)
            fprintf(stderr, "case %zu: %s -> %d\n", i, cases[i].header, st);
        assert_int_equal(st, cases[i].want);
    }
    /* Length field: short file, past the end, above 100 MB, NUL inside. */
    kvt_st_file_t *f;
    uint8_t b[64] = {0};
    assert_int_equal(kvt_st_open_mem(b, 5, "x", &f), KVT_ERR_TRUNCATED);
    kvt_le_put64(b, 57);
    memcpy(b + 8, "{}", 2);
    assert_int_equal(kvt_st_open_mem(b, 64, "x", &f), KVT_ERR_TRUNCATED);
    kvt_le_put64(b, 100000001);
    assert_int_equal(kvt_st_open_mem(b, 64, "x", &f), KVT_ERR_TOO_LARGE);
    kvt_le_put64(b, UINT64_MAX);
    assert_int_equal(kvt_st_open_mem(b, 64, "x", &f), KVT_ERR_TOO_LARGE);
    kvt_le_put64(b, 4);
    memcpy(b + 8, "{}\0 ", 4);
    assert_int_equal(kvt_st_open_mem(b, 12, "x", &f), KVT_ERR_INVALID);
}

static void test_st_truncated_file(void **state)
{
    kvt_st_spec_t spec = {"w", KVT_DTYPE_BF16, 2, {4, 4}};
    const char *path = tmp_path("trunc.safetensors");
    kvt_st_writer_t *w;
    uint16_t data[16] = {0};
    assert_int_equal(kvt_st_writer_create(path, &spec, 1, &w), KVT_OK);
    assert_int_equal(kvt_st_writer_put(w, 0, 0, data, sizeof(data)), KVT_OK);
    assert_int_equal(kvt_st_writer_finish(w), KVT_OK);
    kvt_st_file_t *f;
    assert_int_equal(kvt_st_open(path, &f), KVT_OK);
    kvt_st_close(f);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(truncate(path, sb.st_size - 1), 0);
    assert_int_equal(kvt_st_open(path, &f), KVT_ERR_CORRUPT); /* data cut */
    assert_int_equal(truncate(path, 40), 0);
    assert_int_equal(kvt_st_open(path, &f), KVT_ERR_TRUNCATED); /* header cut */
    assert_int_equal(truncate(path, 3), 0);
    assert_int_equal(kvt_st_open(path, &f), KVT_ERR_TRUNCATED);
    assert_int_equal(kvt_st_open(tmp_path("nope.safetensors"), &f), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_st_open(g_tmp, &f), KVT_ERR_IO); /* a directory */
}

/* ---- model directories ---- */

#define SMALL_CFG                                                                          \
    "{\"architectures\":[\"%s\"],\"vocab_size\":40,\"hidden_size\":16,"                   \
    "\"intermediate_size\":24,\"num_hidden_layers\":2,\"num_attention_heads\":4,"          \
    "\"num_key_value_heads\":2,\"head_dim\":6,\"tie_word_embeddings\":%s}"

/* Value of element i of a tensor (exact in bf16 and f16). */
static float value_of(const char *name, uint64_t i)
{
    uint32_t h = 2166136261u;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return (float)((int)((h + i * 2654435761u) % 61) - 30) / 16.0f;
}

typedef struct {
    const char *arch;      /* "LlamaForCausalLM" */
    bool tied;
    bool lm_head_anyway;   /* write lm_head.weight although tied */
    const char *skip;      /* a tensor to leave out */
    const char *reshape;   /* a tensor written with a wrong shape */
    kvt_dtype_t dtype;
    int shards;            /* 0: model.safetensors; else this many + index */
    const char *shard_name_override; /* written into the index for shard 1 */
    bool no_tokenizer;
} dir_opts_t;

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < sizeof(path));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void put_tensor(kvt_st_writer_t *w, size_t idx, const kvt_st_spec_t *s, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        float v = value_of(s->name, i);
        uint16_t h = s->dtype == KVT_DTYPE_BF16 ? kvt_f32_to_bf16(v) : kvt_f32_to_f16(v);
        size_t es = s->dtype == KVT_DTYPE_F32 ? 4 : 2;
        assert_int_equal(kvt_st_writer_put(w, idx, i * es, es == 4 ? (void *)&v : (void *)&h, es),
                         KVT_OK);
    }
}

static void write_weights(const char *dir, const dir_opts_t *o, const kvt_model_config_t *cfg)
{
    kvt_mspec_t *ms;
    size_t n;
    assert_int_equal(kvt_mspecs(cfg, &ms, &n), KVT_OK);
    kvt_st_spec_t specs[64];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (o->skip && !strcmp(o->skip, ms[i].name))
            continue;
        specs[k] = (kvt_st_spec_t){ms[i].name, o->dtype ? o->dtype : KVT_DTYPE_F32, ms[i].rank,
                                   {ms[i].shape[0], ms[i].shape[1]}};
        if (o->reshape && !strcmp(o->reshape, ms[i].name))
            specs[k].shape[0]++;
        k++;
    }
    if (o->lm_head_anyway)
        specs[k++] = (kvt_st_spec_t){"lm_head.weight", KVT_DTYPE_F32, 2, {40, 16}};
    int n_files = o->shards ? o->shards : 1;
    char index[8192] = "{\"metadata\":{\"total_size\":0},\"weight_map\":{";
    for (int fi = 0; fi < n_files; fi++) {
        size_t lo = k * (size_t)fi / (size_t)n_files, hi = k * (size_t)(fi + 1) / (size_t)n_files;
        char name[64], path[4200];
        if (o->shards)
            snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", fi + 1, n_files);
        else
            snprintf(name, sizeof(name), "model.safetensors");
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        kvt_st_writer_t *w;
        assert_int_equal(kvt_st_writer_create(path, specs + lo, hi - lo, &w), KVT_OK);
        for (size_t i = lo; i < hi; i++) {
            uint64_t ne = specs[i].shape[0] * (specs[i].rank == 2 ? specs[i].shape[1] : 1);
            put_tensor(w, i - lo, &specs[i], ne);
            const char *in_index = fi == 1 && o->shard_name_override ? o->shard_name_override
                                                                     : name;
            size_t at = strlen(index);
            snprintf(index + at, sizeof(index) - at, "%s\"%s\":\"%s\"", i ? "," : "",
                     specs[i].name, in_index);
        }
        assert_int_equal(kvt_st_writer_finish(w), KVT_OK);
    }
    strcat(index, "}}");
    if (o->shards)
        write_text(dir, "model.safetensors.index.json", index);
    kvt_free(ms);
}

/* A fresh model directory under g_tmp; returns its path (static). */
static const char *make_dir(const char *tag, const dir_opts_t *o)
{
    static char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", g_tmp, tag);
    tu_rmtree(dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    char cfg_text[1024];
    snprintf(cfg_text, sizeof(cfg_text), SMALL_CFG, o->arch ? o->arch : "LlamaForCausalLM",
             o->tied ? "true" : "false");
    write_text(dir, "config.json", cfg_text);
    if (!o->no_tokenizer)
        write_text(dir, "tokenizer.json", "{\"model\":{\"type\":\"BPE\"}}");
    kvt_model_config_t cfg;
    assert_int_equal(parse(cfg_text, &cfg), KVT_OK);
    write_weights(dir, o, &cfg);
    return dir;
}

static void check_values(const float *got, const char *name, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (got[i] != value_of(name, i)) {
            fprintf(stderr, "%s[%llu] = %g, want %g\n", name, (unsigned long long)i, got[i],
                    value_of(name, i));
            fail();
        }
}

static void test_load_dir(void **state)
{
    dir_opts_t o = {0};
    kvt_model_t *m;
    assert_int_equal(kvt_model_load(make_dir("plain", &o), &m), KVT_OK);
    assert_int_equal(m->cfg.n_layers, 2);
    assert_int_equal(m->cfg.head_dim, 6);
    assert_non_null(strstr(m->dir, "/plain"));
    check_values(m->embed, "model.embed_tokens.weight", 40 * 16);
    check_values(m->lm_head, "lm_head.weight", 40 * 16);
    check_values(m->final_norm, "model.norm.weight", 16);
    check_values(m->layers[1].wq, "model.layers.1.self_attn.q_proj.weight", 24 * 16);
    check_values(m->layers[1].wk, "model.layers.1.self_attn.k_proj.weight", 12 * 16);
    check_values(m->layers[0].wo, "model.layers.0.self_attn.o_proj.weight", 16 * 24);
    check_values(m->layers[0].w_down, "model.layers.0.mlp.down_proj.weight", 16 * 24);
    check_values(m->layers[1].mlp_norm, "model.layers.1.post_attention_layernorm.weight", 16);
    assert_null(m->layers[0].bq);
    assert_true(m->lm_head != m->embed);
    uint8_t zero[32] = {0}, d1[32], fp1[32], fp2[32], fp3[32];
    assert_memory_not_equal(m->digest, zero, 32);
    memcpy(d1, m->digest, 32);
    kvt_model_fingerprint(m, KVT_DTYPE_BF16, 16, fp1);
    kvt_model_fingerprint(m, KVT_DTYPE_F16, 16, fp2);
    kvt_model_fingerprint(m, KVT_DTYPE_BF16, 32, fp3);
    assert_memory_not_equal(fp1, fp2, 32);
    assert_memory_not_equal(fp1, fp3, 32);
    kvt_model_destroy(m);

    /* Same content, same digest; inspect agrees; a tokenizer change shows. */
    kvt_model_config_t cfg;
    uint8_t d2[32];
    assert_int_equal(kvt_model_inspect(make_dir("plain", &o), &cfg, d2), KVT_OK);
    assert_memory_equal(d1, d2, 32);
    const char *dir = make_dir("plain2", &o);
    write_text(dir, "tokenizer.json", "{\"model\":{\"type\":\"WordPiece\"}}");
    assert_int_equal(kvt_model_inspect(dir, &cfg, d2), KVT_OK);
    assert_memory_not_equal(d1, d2, 32);
    /* The same values stored as bf16: loads equal, digest differs (bytes differ). */
    o.dtype = KVT_DTYPE_BF16;
    assert_int_equal(kvt_model_load(make_dir("bf16", &o), &m), KVT_OK);
    check_values(m->layers[1].w_up, "model.layers.1.mlp.up_proj.weight", 24 * 16);
    assert_memory_not_equal(m->digest, d1, 32);
    kvt_model_destroy(m);
    o.dtype = KVT_DTYPE_F16;
    assert_int_equal(kvt_model_load(make_dir("f16", &o), &m), KVT_OK);
    check_values(m->layers[0].w_gate, "model.layers.0.mlp.gate_proj.weight", 24 * 16);
    kvt_model_destroy(m);
}

static void test_load_tied_and_qwen2(void **state)
{
    dir_opts_t o = {.tied = true};
    kvt_model_t *m;
    assert_int_equal(kvt_model_load(make_dir("tied", &o), &m), KVT_OK);
    assert_ptr_equal(m->lm_head, m->embed);
    kvt_model_destroy(m);
    o.lm_head_anyway = true; /* present but tied: the embeddings are used */
    assert_int_equal(kvt_model_load(make_dir("tied2", &o), &m), KVT_OK);
    assert_ptr_equal(m->lm_head, m->embed);
    check_values(m->lm_head, "model.embed_tokens.weight", 40 * 16);
    kvt_model_destroy(m);
    dir_opts_t q = {.arch = "Qwen2ForCausalLM"};
    assert_int_equal(kvt_model_load(make_dir("qwen2", &q), &m), KVT_OK);
    assert_true(m->cfg.qkv_bias);
    check_values(m->layers[1].bq, "model.layers.1.self_attn.q_proj.bias", 24);
    check_values(m->layers[1].bk, "model.layers.1.self_attn.k_proj.bias", 12);
    check_values(m->layers[0].bv, "model.layers.0.self_attn.v_proj.bias", 12);
    kvt_model_destroy(m);
    q.skip = "model.layers.1.self_attn.v_proj.bias";
    assert_int_equal(kvt_model_load(make_dir("qwen2b", &q), &m), KVT_ERR_NOT_FOUND);
}

static void test_load_broken_dirs(void **state)
{
    kvt_model_t *m = NULL;
    dir_opts_t o = {.skip = "model.layers.1.mlp.up_proj.weight"};
    assert_int_equal(kvt_model_load(make_dir("missing", &o), &m), KVT_ERR_NOT_FOUND);
    dir_opts_t r = {.reshape = "model.layers.0.self_attn.k_proj.weight"};
    assert_int_equal(kvt_model_load(make_dir("shape", &r), &m), KVT_ERR_MISMATCH);
    dir_opts_t t = {.no_tokenizer = true};
    assert_int_equal(kvt_model_load(make_dir("notok", &t), &m), KVT_ERR_NOT_FOUND);
    dir_opts_t plain = {0};
    const char *dir = make_dir("noweights", &plain);
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    unlink(path);
    assert_int_equal(kvt_model_load(dir, &m), KVT_ERR_NOT_FOUND);
    dir = make_dir("badcfg", &plain);
    write_text(dir, "config.json", "{\"architectures\":[\"LlamaForCausalLM\"]");
    assert_int_equal(kvt_model_load(dir, &m), KVT_ERR_INVALID);
    dir = make_dir("nocfg", &plain);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    assert_int_equal(kvt_model_load(dir, &m), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_model_load(tmp_path("no-such-dir"), &m), KVT_ERR_NOT_FOUND);
    assert_null(m);
}

static void test_load_sharded(void **state)
{
    dir_opts_t single = {0}, sharded = {.shards = 3};
    kvt_model_t *m;
    uint8_t d1[32];
    kvt_model_config_t cfg;
    assert_int_equal(kvt_model_inspect(make_dir("one", &single), &cfg, d1), KVT_OK);
    assert_int_equal(kvt_model_load(make_dir("three", &sharded), &m), KVT_OK);
    check_values(m->embed, "model.embed_tokens.weight", 40 * 16);
    check_values(m->lm_head, "lm_head.weight", 40 * 16);
    check_values(m->layers[1].w_down, "model.layers.1.mlp.down_proj.weight", 16 * 24);
    /* The digest names tensors, not files. */
    assert_memory_equal(m->digest, d1, 32);
    kvt_model_destroy(m);
    /* A shard name that leaves the directory, or names a subdirectory. */
    static const char *const bad[] = {"../model-00002-of-00003.safetensors",
                                      "sub/model.safetensors", "..", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        dir_opts_t o = {.shards = 3, .shard_name_override = bad[i]};
        assert_int_equal(kvt_model_load(make_dir("evil", &o), &m), KVT_ERR_INVALID);
    }
    /* The index names a shard that lacks the tensor. */
    dir_opts_t o = {.shards = 3, .shard_name_override = "model-00001-of-00003.safetensors"};
    assert_int_equal(kvt_model_load(make_dir("wrongshard", &o), &m), KVT_ERR_NOT_FOUND);
    /* Broken index files. */
    const char *dir = make_dir("badindex", &sharded);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":[]}");
    assert_int_equal(kvt_model_load(dir, &m), KVT_ERR_INVALID);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":1}}");
    assert_int_equal(kvt_model_load(dir, &m), KVT_ERR_INVALID);
    write_text(dir, "model.safetensors.index.json", "not json");
    assert_int_equal(kvt_model_load(dir, &m), KVT_ERR_INVALID);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"missing.safetensors\"}}");
    assert_int_equal(kvt_model_load(dir, &m), KVT_ERR_NOT_FOUND);
}

static void test_alloc_and_params(void **state)
{
    kvt_model_config_t c;
    assert_int_equal(parse(QWEN25_CODER, &c), KVT_OK);
    c.n_layers = 2;
    c.vocab_size = 1000;
    kvt_model_t *m;
    assert_int_equal(kvt_model_alloc(&c, &m), KVT_OK);
    assert_ptr_equal(m->lm_head, m->embed);
    assert_non_null(m->layers[1].bv);
    assert_true(m->layers[1].w_down[1536 * 8960 - 1] == 0.0f);
    assert_true(m->embed[1000 * 1536 - 1] == 0.0f);
    assert_null(m->dir);
    assert_true(((uintptr_t)m->layers[0].wq & 63) == 0);
    kvt_model_destroy(m);
    kvt_model_destroy(NULL);
    c.tie_embeddings = false;
    c.qkv_bias = false;
    assert_int_equal(kvt_model_alloc(&c, &m), KVT_OK);
    assert_true(m->lm_head != m->embed);
    assert_null(m->layers[0].bq);
    kvt_model_destroy(m);
    kvt_alloc_fail_after(0);
    assert_int_equal(kvt_model_alloc(&c, &m), KVT_ERR_NOMEM);
    kvt_alloc_fail_after(2);
    assert_int_equal(kvt_model_alloc(&c, &m), KVT_ERR_NOMEM);
    kvt_alloc_fail_after(-1);
    /* Llama 3.1 8B and DeepSeek-Coder 6.7B parameter counts. */
    assert_int_equal(parse(DEEPSEEK_67B, &c), KVT_OK);
    assert_int_equal(kvt_model_n_params(&c), 6740512768ull);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_llama3),
        cmocka_unit_test(test_config_qwen2),
        cmocka_unit_test(test_config_linear),
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_config_malformed),
        cmocka_unit_test(test_half_conversions),
        cmocka_unit_test(test_st_round_trip),
        cmocka_unit_test(test_st_reader_checks),
        cmocka_unit_test(test_st_truncated_file),
        cmocka_unit_test(test_load_dir),
        cmocka_unit_test(test_load_tied_and_qwen2),
        cmocka_unit_test(test_load_broken_dirs),
        cmocka_unit_test(test_load_sharded),
        cmocka_unit_test(test_alloc_and_params),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
