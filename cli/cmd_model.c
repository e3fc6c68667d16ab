/* `kvtier model init|info`: make a random-weight model directory from a
 * preset, and describe a model directory (engine/model_init.h,
 * engine/model.h).
 *
 * init refuses a non-empty --out and removes what it wrote when it fails;
 * info loads the whole model (as a node would) so that everything it
 * prints, the digest included, is what a node serving it would use. */
#include "cli/cli.h"
#include "cli/json_out.h"

#include "common/hash.h"
#include "common/log.h"
#include "common/time.h"
#include "engine/model.h"
#include "engine/model_init.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const g_kv_dtypes[] = {[KVT_DTYPE_F32] = "f32", [KVT_DTYPE_BF16] = "bf16",
                                          [KVT_DTYPE_F16] = "f16", [KVT_DTYPE_F8E4M3] = "f8e4m3"};

static int parse_dtype(const char *name, int lo, int hi, kvt_dtype_t *dtype_p)
{
    for (int d = lo; d <= hi; d++)
        if (name && !strcmp(name, g_kv_dtypes[d])) {
            *dtype_p = (kvt_dtype_t)d;
            return 0;
        }
    return -1;
}

static void fmt_params(uint64_t n, char *out, size_t cap)
{
    if (n >= 1000000000ull)
        snprintf(out, cap, "%llu (%.2f B)", (unsigned long long)n, (double)n / 1e9);
    else
        snprintf(out, cap, "%llu (%.1f M)", (unsigned long long)n, (double)n / 1e6);
}

/* ---- model init ---- */

static const kvt_opt_t g_init_opts[] = {
    {"preset", KVT_OPT_STR, NULL, "the model shapes (see the list above); required"},
    {"out", KVT_OPT_STR, NULL, "the directory to write (created; must be empty if it exists)"},
    {"seed", KVT_OPT_U64, "0", "weights are a function of (seed, tensor name)"},
    {"dtype", KVT_OPT_STR, "bf16", "weight dtype: bf16|f32"},
    {"max-shard-size", KVT_OPT_SIZE, "4G",
     "largest weight file; larger models are sharded with model.safetensors.index.json"},
    {"threads", KVT_OPT_U64, "0", "generation threads, 0 = one per CPU (output is the same)"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

static void init_about(char *out, size_t cap)
{
    size_t at = (size_t)snprintf(
        out, cap,
        "Write a model directory with random weights that kvtier and Hugging Face\n"
        "transformers both load: config.json, model.safetensors (or shards and\n"
        "model.safetensors.index.json), tokenizer.json (the built-in code\n"
        "tokenizer), tokenizer_config.json, generation_config.json.  Weights are\n"
        "deterministic: the same --preset, --seed and --dtype give the same bytes\n"
        "and digest on every machine.  Presets:\n\n");
    for (size_t i = 0; i < kvt_model_preset_count() && at < cap; i++) {
        const kvt_model_preset_t *p = kvt_model_preset_at(i);
        char params[48];
        fmt_params(kvt_model_n_params(&p->cfg), params, sizeof(params));
        at += (size_t)snprintf(out + at, cap - at, "  %-20s %-26s %s\n", p->name, params,
                               p->about);
    }
}

static int print_init(const kvt_model_init_params_t *p, const kvt_model_init_result_t *r,
                      double secs, bool json)
{
    char digest[65], bytes[32], params[48];
    kvt_hex(r->digest, 32, digest);
    kvt_cli_fmt_bytes(r->weight_bytes, bytes, sizeof(bytes));
    fmt_params(r->n_params, params, sizeof(params));
    const char *dtype = g_kv_dtypes[p->dtype];
    if (!json) {
        printf("dir       %s\npreset    %s (%s)\ndtype     %s\nparams    %s\n", p->out_dir,
               p->preset, kvt_model_arch_class(r->cfg.arch), dtype, params);
        if (r->n_shards)
            printf("weights   %s in %u shards\n", bytes, r->n_shards);
        else
            printf("weights   %s in model.safetensors\n", bytes);
        printf("digest    %s\ntime      %.1f s\n", digest, secs);
        return KVT_EXIT_OK;
    }
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddStringToObject(o, "dir", p->out_dir);
        cJSON_AddStringToObject(o, "preset", p->preset);
        cJSON_AddStringToObject(o, "arch", kvt_model_arch_class(r->cfg.arch));
        cJSON_AddStringToObject(o, "dtype", dtype);
        kvt_json_add_u64(o, "seed", p->seed);
        kvt_json_add_u64(o, "params", r->n_params);
        kvt_json_add_u64(o, "weight_bytes", r->weight_bytes);
        kvt_json_add_u64(o, "shards", r->n_shards);
        cJSON_AddStringToObject(o, "digest", digest);
        cJSON_AddNumberToObject(o, "seconds", secs);
    }
    return kvt_json_print(o);
}

static int model_init(int argc, char **argv)
{
    kvt_config_t cfg;
    static char about[4096];
    init_about(about, sizeof(about));
    int n = (int)(sizeof(g_init_opts) / sizeof(g_init_opts[0]));
    int rc = kvt_cli_parse(&cfg, g_init_opts, n, argc, argv,
                           "usage: kvtier model init --preset NAME --out DIR [--seed N] "
                           "[--dtype bf16|f32] [--json]",
                           about);
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    kvt_model_init_params_t p = {
        .preset = kvt_cli_require(&cfg, "preset"),
        .out_dir = kvt_cli_require(&cfg, "out"),
        .seed = kvt_config_u64(&cfg, "seed", 0),
        .max_shard_bytes = kvt_config_u64(&cfg, "max-shard-size", KVT_MODEL_INIT_SHARD_BYTES),
        .n_threads = (unsigned)kvt_config_u64(&cfg, "threads", 0),
    };
    if (!p.preset || !p.out_dir)
        return KVT_EXIT_USAGE;
    if (!kvt_model_preset_find(p.preset)) {
        kvt_log_error("unknown preset preset=\"%s\" (kvtier model init --help lists them)",
                      p.preset);
        return KVT_EXIT_USAGE;
    }
    if (parse_dtype(kvt_config_str(&cfg, "dtype"), KVT_DTYPE_F32, KVT_DTYPE_BF16, &p.dtype)) {
        kvt_log_error("bad weight dtype dtype=\"%s\" expected=bf16|f32",
                      kvt_config_str(&cfg, "dtype"));
        return KVT_EXIT_USAGE;
    }
    if (p.max_shard_bytes == 0 || p.n_threads > 1024) {
        kvt_log_error("bad --max-shard-size or --threads");
        return KVT_EXIT_USAGE;
    }
    double t0 = kvt_time_s();
    kvt_model_init_result_t r;
    kvt_status_t st = kvt_model_init(&p, &r);
    if (st != KVT_OK) {
        kvt_log_error("model init failed preset=%s out=%s status=\"%s\"", p.preset, p.out_dir,
                      kvt_status_str(st));
        return KVT_EXIT_FAIL;
    }
    return print_init(&p, &r, kvt_time_s() - t0, kvt_config_bool(&cfg, "json"));
}

/* ---- model info ---- */

static const kvt_opt_t g_info_opts[] = {
    {"model", KVT_OPT_STR, NULL, "the model directory; required"},
    {"kv-dtype", KVT_OPT_STR, "bf16", "KV dtype of the fingerprint: f32|bf16|f16|f8e4m3"},
    {"block-tokens", KVT_OPT_U64, "16", "tokens per KV block (B) of the fingerprint"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

static const char *rope_name(kvt_rope_scaling_t r)
{
    return r == KVT_ROPE_LINEAR ? "linear" : r == KVT_ROPE_LLAMA3 ? "llama3" : "none";
}

static cJSON *shape_json(uint64_t d0, uint64_t d1)
{
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateNumber((double)d0));
    if (d1)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)d1));
    return a;
}

/* A float config value as JSON: the shortest decimal that reads back as
 * the same float (1e-05, not the double 9.99999974737875e-06). */
static void add_float(cJSON *o, const char *name, float v)
{
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    cJSON_AddNumberToObject(o, name, strtod(buf, NULL));
}

static cJSON *config_obj(const kvt_model_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model_type", kvt_model_arch_type(c->arch));
    kvt_json_add_u64(o, "vocab_size", c->vocab_size);
    kvt_json_add_u64(o, "hidden_size", c->hidden);
    kvt_json_add_u64(o, "intermediate_size", c->intermediate);
    kvt_json_add_u64(o, "num_hidden_layers", c->n_layers);
    kvt_json_add_u64(o, "num_attention_heads", c->n_heads);
    kvt_json_add_u64(o, "num_key_value_heads", c->n_kv_heads);
    kvt_json_add_u64(o, "head_dim", c->head_dim);
    kvt_json_add_u64(o, "max_position_embeddings", c->max_pos);
    add_float(o, "rms_norm_eps", c->rms_eps);
    add_float(o, "rope_theta", c->rope_theta);
    cJSON_AddStringToObject(o, "rope_scaling", rope_name(c->rope_scaling));
    add_float(o, "rope_factor", c->rope_factor);
    if (c->rope_scaling == KVT_ROPE_LLAMA3) {
        add_float(o, "rope_low_freq_factor", c->rope_low_freq_factor);
        add_float(o, "rope_high_freq_factor", c->rope_high_freq_factor);
        kvt_json_add_u64(o, "rope_original_max_position_embeddings", c->rope_orig_max_pos);
    }
    cJSON_AddBoolToObject(o, "qkv_bias", c->qkv_bias);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    if (c->has_bos)
        kvt_json_add_u64(o, "bos_token_id", c->bos_id);
    else
        cJSON_AddNullToObject(o, "bos_token_id");
    cJSON *eos = cJSON_AddArrayToObject(o, "eos_token_ids");
    for (uint32_t i = 0; eos && i < c->n_eos; i++)
        cJSON_AddItemToArray(eos, cJSON_CreateNumber(c->eos_ids[i]));
    return o;
}

static cJSON *shapes_obj(const kvt_model_config_t *c)
{
    uint64_t h = c->hidden, q = (uint64_t)c->n_heads * c->head_dim,
             kv = (uint64_t)c->n_kv_heads * c->head_dim, f = c->intermediate;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "embed_tokens", shape_json(c->vocab_size, h));
    cJSON_AddItemToObject(o, "q_proj", shape_json(q, h));
    cJSON_AddItemToObject(o, "k_proj", shape_json(kv, h));
    cJSON_AddItemToObject(o, "v_proj", shape_json(kv, h));
    cJSON_AddItemToObject(o, "o_proj", shape_json(h, q));
    cJSON_AddItemToObject(o, "gate_proj", shape_json(f, h));
    cJSON_AddItemToObject(o, "up_proj", shape_json(f, h));
    cJSON_AddItemToObject(o, "down_proj", shape_json(h, f));
    if (!c->tie_embeddings)
        cJSON_AddItemToObject(o, "lm_head", shape_json(c->vocab_size, h));
    return o;
}

static void print_info_text(const kvt_model_t *m, const char *fp, const char *kv_dtype,
                            uint64_t bt)
{
    const kvt_model_config_t *c = &m->cfg;
    uint64_t q = (uint64_t)c->n_heads * c->head_dim, kv = (uint64_t)c->n_kv_heads * c->head_dim;
    char digest[65], params[48];
    kvt_hex(m->digest, 32, digest);
    fmt_params(kvt_model_n_params(c), params, sizeof(params));
    printf("dir          %s\narch         %s (%s)\n", m->dir, kvt_model_arch_class(c->arch),
           kvt_model_arch_type(c->arch));
    printf("config       vocab=%u hidden=%u intermediate=%u layers=%u heads=%u kv_heads=%u "
           "head_dim=%u max_pos=%u\n",
           c->vocab_size, c->hidden, c->intermediate, c->n_layers, c->n_heads, c->n_kv_heads,
           c->head_dim, c->max_pos);
    printf("norm, rope   rms_eps=%g rope_theta=%g scaling=%s", (double)c->rms_eps,
           (double)c->rope_theta, rope_name(c->rope_scaling));
    if (c->rope_scaling == KVT_ROPE_LLAMA3)
        printf(" factor=%g low_freq=%g high_freq=%g original_max_pos=%u",
               (double)c->rope_factor, (double)c->rope_low_freq_factor,
               (double)c->rope_high_freq_factor, c->rope_orig_max_pos);
    else if (c->rope_scaling == KVT_ROPE_LINEAR)
        printf(" factor=%g", (double)c->rope_factor);
    printf("\nshapes       embed [%u,%u] q [%llu,%u] k,v [%llu,%u] o [%u,%llu] gate,up [%u,%u] "
           "down [%u,%u] lm_head %s\n",
           c->vocab_size, c->hidden, (unsigned long long)q, c->hidden, (unsigned long long)kv,
           c->hidden, c->hidden, (unsigned long long)q, c->intermediate, c->hidden, c->hidden,
           c->intermediate, c->tie_embeddings ? "tied" : "untied");
    printf("qkv bias     %s\nparams       %s\ndigest       %s\n", c->qkv_bias ? "yes" : "no",
           params, digest);
    printf("fingerprint  %s (kv %s, B=%llu)\n", fp, kv_dtype, (unsigned long long)bt);
}

static int print_info(const kvt_model_t *m, kvt_dtype_t kv_dtype, uint64_t bt, bool json)
{
    uint8_t fp[KVT_FINGERPRINT_LEN];
    char fph[2 * KVT_FINGERPRINT_LEN + 1], digest[65];
    kvt_model_fingerprint(m, kv_dtype, (uint32_t)bt, fp);
    kvt_hex(fp, KVT_FINGERPRINT_LEN, fph);
    kvt_hex(m->digest, 32, digest);
    if (!json) {
        print_info_text(m, fph, g_kv_dtypes[kv_dtype], bt);
        return KVT_EXIT_OK;
    }
    cJSON *o = cJSON_CreateObject(), *f = cJSON_CreateObject();
    if (o && f) {
        cJSON_AddStringToObject(o, "dir", m->dir);
        cJSON_AddStringToObject(o, "arch", kvt_model_arch_class(m->cfg.arch));
        cJSON_AddItemToObject(o, "config", config_obj(&m->cfg));
        cJSON_AddItemToObject(o, "shapes", shapes_obj(&m->cfg));
        kvt_json_add_u64(o, "params", kvt_model_n_params(&m->cfg));
        cJSON_AddStringToObject(o, "digest", digest);
        cJSON_AddStringToObject(f, "kv_dtype", g_kv_dtypes[kv_dtype]);
        kvt_json_add_u64(f, "block_tokens", bt);
        cJSON_AddStringToObject(f, "hex", fph);
        cJSON_AddItemToObject(o, "fingerprint", f);
        f = NULL;
    }
    cJSON_Delete(f);
    return kvt_json_print(o);
}

static int model_info(int argc, char **argv)
{
    kvt_config_t cfg;
    int n = (int)(sizeof(g_info_opts) / sizeof(g_info_opts[0]));
    int rc = kvt_cli_parse(&cfg, g_info_opts, n, argc, argv,
                           "usage: kvtier model info --model DIR [--json]",
                           "Load a model directory (config.json, safetensors weights,\n"
                           "tokenizer.json) and print its architecture, tensor shapes,\n"
                           "parameter count, digest, and the model fingerprint that keys\n"
                           "its KV blocks for a KV dtype and block size (docs/model.md).");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    const char *dir = kvt_cli_require(&cfg, "model");
    if (!dir)
        return KVT_EXIT_USAGE;
    kvt_dtype_t kv_dtype;
    uint64_t bt = kvt_config_u64(&cfg, "block-tokens", 16);
    if (parse_dtype(kvt_config_str(&cfg, "kv-dtype"), KVT_DTYPE_F32, KVT_DTYPE_F8E4M3,
                    &kv_dtype) ||
        bt == 0 || bt > KVT_BLOCK_MAX_TOKENS) {
        kvt_log_error("bad --kv-dtype or --block-tokens (1..%d)", KVT_BLOCK_MAX_TOKENS);
        return KVT_EXIT_USAGE;
    }
    kvt_model_t *m;
    kvt_status_t st = kvt_model_load(dir, &m);
    if (st != KVT_OK) {
        kvt_log_error("cannot load model dir=%s status=\"%s\"", dir, kvt_status_str(st));
        return KVT_EXIT_FAIL;
    }
    rc = print_info(m, kv_dtype, bt, kvt_config_bool(&cfg, "json"));
    kvt_model_destroy(m);
    return rc;
}

/* ---- dispatch ---- */

static const char g_model_usage[] =
    "usage: kvtier model <init|info> [flags]\n"
    "\n"
    "  init   write a random-weight model directory from a preset\n"
    "  info   load a model directory and print its shapes, digest, fingerprint\n"
    "\n"
    "run 'kvtier model <subcommand> --help' for its flags\n";

int kvt_cmd_model(int argc, char **argv)
{
    if (argc < 2) {
        fputs(g_model_usage, stderr);
        return KVT_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "help") || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        fputs(g_model_usage, stdout);
        return KVT_EXIT_OK;
    }
    if (!strcmp(sub, "init"))
        return model_init(argc - 1, argv + 1);
    if (!strcmp(sub, "info"))
        return model_info(argc - 1, argv + 1);
    kvt_log_error("unknown model subcommand subcommand=\"%s\"", sub);
    fputs(g_model_usage, stderr);
    return KVT_EXIT_USAGE;
}
