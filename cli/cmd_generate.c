/* `kvtier generate`: one request in-process, no server -- the reference
 * path (DESIGN.md section 5).
 *
 * Loads the model directory, builds the prompt (plain, FIM or EFIM with the
 * model's FIM tokens), runs prefill and decode on the engine (the CPU, or
 * a GPU with --device cuda:N) and prints
 * the text (or, with --json, text, token ids, prompt/cached token counts,
 * TTFT and decode speed).  With --data DIR it uses the node's tier: the
 * longest stored prefix of the prompt is loaded into the engine's pool
 * before prefill (cached_tokens), and the prompt's new full blocks are
 * stored after it, so a later run whose prompt shares the prefix resumes
 * from them.
 *
 * TTFT runs from the start of tokenization (the model already loaded) to
 * the first sampled token; decode tokens/s counts the tokens after it. */
#include "cli/cli.h"
#include "cli/json_out.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/prompt.h"
#include "engine/sample.h"
#include "engine/request.h"
#include "engine/tokenizer.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kvt_opt_t g_opts[] = {
    {"model", KVT_OPT_STR, NULL, "model directory (config.json, safetensors, tokenizer.json)"},
    {"prompt", KVT_OPT_STR, NULL, "the prompt (for infilling: the text before the cursor)"},
    {"suffix", KVT_OPT_STR, NULL, "infilling: the text after the cursor"},
    {"anchor", KVT_OPT_STR, NULL,
     "efim: the prefix as first seen (prefix0; a prefix of --prompt); default all of it"},
    {"format", KVT_OPT_STR, NULL, "efim|fim|plain (default efim with --suffix, else plain)"},
    {"fim-tokens", KVT_OPT_STR, NULL, "PRE,SUF,MID token strings (default: the tokenizer's)"},
    {"max-tokens", KVT_OPT_U64, "64", "tokens to generate at most"},
    {"temperature", KVT_OPT_F64, "0", "sampling temperature (0 = greedy)"},
    {"top-k", KVT_OPT_U64, "0", "sample from the k most likely tokens (0 = off)"},
    {"top-p", KVT_OPT_F64, "1", "nucleus sampling mass (1 = off)"},
    {"seed", KVT_OPT_U64, "0", "sampling seed"},
    {"data", KVT_OPT_STR, NULL, "the node's tier (reuse and store the prompt's blocks)"},
    {"host-capacity", KVT_OPT_SIZE, "256M", "with --data: host pool (T1) size"},
    {"tenant", KVT_OPT_STR, "", "tenant salt of the key chain (invariant 6)"},
    {"device", KVT_OPT_STR, "cpu", "cpu|cuda:N (cuda:N needs a build with CUDA)"},
    {"threads", KVT_OPT_U64, "0", "worker threads (0 = all cores)"},
    {"kv-dtype", KVT_OPT_STR, "bf16", "KV cache dtype: bf16|f32"},
    {"block-tokens", KVT_OPT_U64, "16", "tokens per KV block (B)"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

static const char g_usage[] =
    "usage: kvtier generate --model DIR --prompt TEXT [--suffix TEXT --format efim|fim|plain]\n"
    "                       [--max-tokens N] [--seed N] [--data DIR] [--json]";
static const char g_about[] =
    "Run one request in-process on the engine (CPU or --device cuda:N) and print the\n"
    "generated text.\n"
    "With --data DIR, the prompt's blocks are reused from and stored into the node's tier.";

#define MAX_STOP 16

typedef struct {
    kvt_model_t *model;
    kvt_tokenizer_t *tok;
    kvt_engine_t *engine;
    kvt_tier_t *tier;
    kvt_seq_t *seq;
    kvt_sampler_t sampler;
    bool sampler_ready;
    float *logits;
    uint32_t *ids;      /* prompt ids, then generated ones appended */
    size_t n_prompt, n_gen, cap;
    size_t n_decode_steps;
    uint32_t tok_vocab; /* ids at or past this have no text: never sampled */
    uint32_t stop[MAX_STOP];
    size_t n_stop;
    /* results */
    kvt_prompt_stats_t ps;
    uint64_t t_start, t_first, t_end;
    const char *finish;
} gen_t;

static void gen_cleanup(gen_t *g)
{
    if (g->seq)
        kvt_engine_seq_destroy(g->engine, g->seq);
    if (g->engine)
        kvt_engine_destroy(g->engine);
    if (g->tier)
        kvt_tier_close(g->tier);
    if (g->sampler_ready)
        kvt_sampler_cleanup(&g->sampler);
    kvt_tokenizer_destroy(g->tok);
    kvt_model_destroy(g->model);
    kvt_free(g->logits);
    kvt_free(g->ids);
}

static kvt_status_t load_tokenizer(const char *dir, kvt_tokenizer_t **tok_p)
{
    char json[PATH_MAX], cfg[PATH_MAX];
    if ((size_t)snprintf(json, sizeof(json), "%s/tokenizer.json", dir) >= sizeof(json) ||
        (size_t)snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", dir) >= sizeof(cfg))
        return KVT_ERR_INVALID;
    return kvt_tokenizer_load(json, cfg, tok_p);
}

static bool is_stop(const gen_t *g, uint32_t id)
{
    for (size_t i = 0; i < g->n_stop; i++)
        if (g->stop[i] == id)
            return true;
    return false;
}

static kvt_status_t parse_kv_dtype(const char *name, kvt_dtype_t *dtype_p)
{
    if (strcmp(name, "bf16") == 0)
        *dtype_p = KVT_DTYPE_BF16;
    else if (strcmp(name, "f32") == 0)
        *dtype_p = KVT_DTYPE_F32;
    else
        return KVT_ERR_INVALID;
    return KVT_OK;
}

/* Everything the flags say, checked before any heavy work. */
typedef struct {
    const char *model_dir, *prompt, *suffix, *anchor, *data, *tenant, *fim_spec;
    kvt_prompt_format_t format;
    kvt_engine_opts_t eopts;
    kvt_sample_params_t sp;
    uint64_t max_tokens, host_capacity;
    bool json;
} gen_args_t;

static int parse_args(const kvt_config_t *cfg, gen_args_t *a)
{
    memset(a, 0, sizeof(*a));
    a->model_dir = kvt_cli_require(cfg, "model");
    a->prompt = kvt_config_str(cfg, "prompt");
    if (!a->model_dir || !a->prompt) {
        if (!a->prompt)
            kvt_log_error("missing required option option=--prompt");
        return KVT_EXIT_USAGE;
    }
    a->suffix = kvt_config_str(cfg, "suffix");
    a->anchor = kvt_config_str(cfg, "anchor");
    a->data = kvt_config_str(cfg, "data");
    a->tenant = kvt_config_str(cfg, "tenant");
    a->fim_spec = kvt_config_str(cfg, "fim-tokens");
    a->json = kvt_config_bool(cfg, "json");
    const char *fmt = kvt_config_str(cfg, "format");
    a->format = a->suffix ? KVT_FORMAT_EFIM : KVT_FORMAT_PLAIN;
    if (fmt && kvt_prompt_format_parse(fmt, &a->format) != KVT_OK) {
        kvt_log_error("bad format value=\"%s\" expected=efim|fim|plain", fmt);
        return KVT_EXIT_USAGE;
    }
    if (a->anchor && (a->format != KVT_FORMAT_EFIM ||
                      strncmp(a->anchor, a->prompt, strlen(a->anchor)) != 0)) {
        kvt_log_error("--anchor needs --format efim and must be a prefix of --prompt");
        return KVT_EXIT_USAGE;
    }
    /* A device this build or machine lacks is a usage error, like any
     * other bad flag value (kvt_device_parse logs which). */
    if (kvt_device_parse(kvt_config_str(cfg, "device"), &a->eopts.device) != KVT_OK)
        return KVT_EXIT_USAGE;
    if (parse_kv_dtype(kvt_config_str(cfg, "kv-dtype"), &a->eopts.kv_dtype) != KVT_OK) {
        kvt_log_error("bad kv dtype value=\"%s\" expected=bf16|f32",
                      kvt_config_str(cfg, "kv-dtype"));
        return KVT_EXIT_USAGE;
    }
    uint64_t b = kvt_config_u64(cfg, "block-tokens", 16);
    uint64_t threads = kvt_config_u64(cfg, "threads", 0);
    if (b == 0 || b > KVT_BLOCK_MAX_TOKENS || threads > 1024) {
        kvt_log_error("bad --block-tokens or --threads block_tokens=%llu threads=%llu",
                      (unsigned long long)b, (unsigned long long)threads);
        return KVT_EXIT_USAGE;
    }
    a->eopts.block_tokens = (uint32_t)b;
    a->eopts.n_threads = (uint32_t)threads;
    a->max_tokens = kvt_config_u64(cfg, "max-tokens", 64);
    a->host_capacity = kvt_config_u64(cfg, "host-capacity", 256u << 20);
    double temp = kvt_config_f64(cfg, "temperature", 0), top_p = kvt_config_f64(cfg, "top-p", 1);
    uint64_t top_k = kvt_config_u64(cfg, "top-k", 0);
    if (temp < 0 || !(top_p > 0 && top_p <= 1) || top_k > UINT32_MAX) {
        kvt_log_error("bad sampling flags temperature=%g top_p=%g top_k=%llu expected="
                      "temperature>=0,0<top_p<=1",
                      temp, top_p, (unsigned long long)top_k);
        return KVT_EXIT_USAGE;
    }
    a->sp.temperature = (float)temp;
    a->sp.top_p = (float)top_p;
    a->sp.top_k = (uint32_t)top_k;
    a->sp.seed = kvt_config_u64(cfg, "seed", 0);
    return KVT_EXIT_CONTINUE;
}

/* Tokenize the prompt into g->ids (room for max_tokens more). */
static kvt_status_t build_prompt(gen_t *g, const gen_args_t *a)
{
    kvt_fim_tokens_t fim = {0};
    bool have_fim = kvt_prompt_fim_tokens(g->tok, a->fim_spec, &fim) == KVT_OK;
    if (a->format != KVT_FORMAT_PLAIN && !have_fim) {
        kvt_log_error("the model's tokenizer has no fim tokens; give --fim-tokens PRE,SUF,MID "
                      "or --format plain");
        return KVT_ERR_INVALID;
    }
    kvt_prompt_t pr = {
        .format = a->format,
        .prefix = a->prompt,
        .prefix_len = strlen(a->prompt),
        .suffix = a->suffix,
        .suffix_len = a->suffix ? strlen(a->suffix) : 0,
    };
    pr.anchor_len = a->anchor ? strlen(a->anchor) : pr.prefix_len;
    pr.add_bos = kvt_tokenizer_add_bos(g->tok, &pr.bos);
    g->n_stop = kvt_prompt_stop_ids(&g->model->cfg, g->tok, have_fim ? &fim : NULL, g->stop,
                                    MAX_STOP);
    size_t need = 0;
    kvt_status_t st = kvt_prompt_build(g->tok, &fim, &pr, NULL, 0, &need, NULL);
    if (st != KVT_OK && st != KVT_ERR_TOO_LARGE)
        return st;
    size_t max_pos = g->model->cfg.max_pos;
    if (need == 0 || need > max_pos || a->max_tokens > max_pos - need) {
        kvt_log_error("prompt does not fit the context prompt_tokens=%zu max_tokens=%llu "
                      "max_position_embeddings=%zu",
                      need, (unsigned long long)a->max_tokens, max_pos);
        return KVT_ERR_TOO_LARGE;
    }
    g->cap = need + a->max_tokens;
    g->ids = kvt_calloc("generate token ids", g->cap, sizeof(uint32_t));
    if (!g->ids)
        return KVT_ERR_NOMEM;
    return kvt_prompt_build(g->tok, &fim, &pr, g->ids, g->cap, &g->n_prompt, NULL);
}

/* --data: open the node's tier (process start-up, not part of TTFT). */
static kvt_status_t open_tier(gen_t *g, const gen_args_t *a)
{
    kvt_tier_params_t tp = {
        .data_dir = a->data,
        .identity = kvt_engine_identity(g->engine),
        .host_capacity_bytes = a->host_capacity,
    };
    kvt_status_t st = kvt_tier_open(&tp, &g->tier);
    if (st != KVT_OK)
        kvt_log_error("cannot open the tier data=%s status=%s", a->data, kvt_status_str(st));
    return st;
}

/* A model's vocabulary is often padded past its tokenizer's (and random
 * weights favour the padding): ids with no text are never sampled. */
static void mask_untokenizable(gen_t *g)
{
    for (uint32_t i = g->tok_vocab; i < g->model->cfg.vocab_size; i++)
        g->logits[i] = -INFINITY;
}

static kvt_status_t decode_loop(gen_t *g, uint64_t max_tokens)
{
    g->finish = "length";
    while (g->n_gen < max_tokens) {
        mask_untokenizable(g);
        uint32_t next = kvt_sampler_next(&g->sampler, g->logits);
        if (g->n_gen == 0)
            g->t_first = kvt_time_ns();
        if (is_stop(g, next)) {
            g->finish = "stop";
            break;
        }
        g->ids[g->n_prompt + g->n_gen++] = next;
        if (g->n_gen == max_tokens)
            break;
        kvt_status_t st = kvt_engine_decode(g->engine, &g->seq, &next, 1, g->logits);
        if (st != KVT_OK)
            return st;
        g->n_decode_steps++;
    }
    if (g->n_gen == 0 && max_tokens == 0)
        g->t_first = kvt_time_ns();
    g->t_end = kvt_time_ns();
    return KVT_OK;
}

/* Model, tokenizer, the prompt's tokens, then an engine whose pool holds
 * exactly this request (prompt + max_tokens), and the tier.  Tokenizing is
 * timed (it is part of the request); loading and start-up are not. */
static kvt_status_t setup(gen_t *g, const gen_args_t *a, uint64_t *tokenize_ns_p)
{
    kvt_status_t st = kvt_model_load(a->model_dir, &g->model);
    if (st == KVT_OK)
        st = load_tokenizer(a->model_dir, &g->tok);
    if (st != KVT_OK)
        return st;
    uint32_t vocab = g->model->cfg.vocab_size, tv = kvt_tokenizer_vocab_size(g->tok);
    g->tok_vocab = tv < vocab ? tv : vocab;
    g->logits = kvt_malloc("generate logits", (size_t)vocab * sizeof(float));
    if (!g->logits)
        return KVT_ERR_NOMEM;
    st = kvt_sampler_init(&g->sampler, &a->sp, vocab);
    if (st != KVT_OK)
        return st;
    g->sampler_ready = true;
    uint64_t t0 = kvt_time_ns();
    st = build_prompt(g, a);
    *tokenize_ns_p = kvt_time_ns() - t0;
    if (st != KVT_OK)
        return st;
    kvt_engine_opts_t eo = a->eopts;
    /* +2: the tail, and a cached block that reuse leaves for recompute */
    eo.n_blocks = (uint32_t)((g->cap + eo.block_tokens - 1) / eo.block_tokens + 2);
    st = kvt_engine_create(g->model, &eo, &g->engine);
    if (st == KVT_OK && a->data)
        st = open_tier(g, a);
    return st;
}

static kvt_status_t run(gen_t *g, const gen_args_t *a)
{
    uint64_t tokenize_ns = 0;
    kvt_status_t st = setup(g, a, &tokenize_ns);
    if (st != KVT_OK)
        return st;
    g->t_start = kvt_time_ns() - tokenize_ns;
    kvt_block_key_t root;
    const kvt_block_identity_t *id = kvt_engine_identity(g->engine);
    st = kvt_block_key_root(id->fingerprint, a->tenant, strlen(a->tenant), &root);
    /* The same path as the prefill node's: the tier's longest prefix in,
     * the rest computed, the prompt's full blocks stored. */
    kvt_prompt_src_t src = {.reuse = true, .tier = g->tier, .store = true};
    if (st == KVT_OK)
        st = kvt_engine_run_prompt(g->engine, &root, g->ids, g->n_prompt, &src, &g->seq,
                                   g->logits, &g->ps);
    if (st == KVT_OK)
        st = decode_loop(g, a->max_tokens);
    return st;
}

static char *decode_text(const gen_t *g, size_t *len_p)
{
    size_t need = 0;
    const uint32_t *gen = g->ids + g->n_prompt;
    kvt_status_t st = kvt_tokenizer_decode(g->tok, gen, g->n_gen, KVT_TOK_SKIP_SPECIAL, NULL, 0,
                                           &need);
    if (st != KVT_OK && st != KVT_ERR_TOO_LARGE)
        return NULL;
    char *text = kvt_malloc("generate text", need + 1);
    if (!text)
        return NULL;
    if (kvt_tokenizer_decode(g->tok, gen, g->n_gen, KVT_TOK_SKIP_SPECIAL, text, need + 1,
                             len_p) != KVT_OK) {
        kvt_free(text);
        return NULL;
    }
    text[*len_p] = '\0';
    return text;
}

static int print_result(const gen_t *g, const gen_args_t *a)
{
    size_t len = 0;
    char *text = decode_text(g, &len);
    if (!text) {
        kvt_log_error("cannot decode the generated tokens");
        return KVT_EXIT_FAIL;
    }
    double ttft_ms = (double)(g->t_first - g->t_start) / 1e6;
    double decode_s = (double)(g->t_end - g->t_first) / 1e9;
    double tps = g->n_decode_steps && decode_s > 0 ? (double)g->n_decode_steps / decode_s : 0;
    if (!a->json) {
        fwrite(text, 1, len, stdout);
        fputc('\n', stdout);
        kvt_free(text);
        return KVT_EXIT_OK;
    }
    cJSON *o = cJSON_CreateObject();
    kvt_json_add_bytes_as_text(o, "text", text, len);
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    for (size_t i = 0; toks && i < g->n_gen; i++)
        cJSON_AddItemToArray(toks, cJSON_CreateNumber(g->ids[g->n_prompt + i]));
    kvt_json_add_u64(o, "prompt_tokens", g->n_prompt);
    kvt_json_add_u64(o, "completion_tokens", g->n_gen);
    kvt_json_add_u64(o, "cached_tokens", g->ps.cached_tokens);
    cJSON_AddNumberToObject(o, "ttft_ms", ttft_ms);
    cJSON_AddNumberToObject(o, "decode_tokens_per_s", tps);
    cJSON_AddStringToObject(o, "finish_reason", g->finish);
    cJSON_AddStringToObject(o, "format", kvt_prompt_format_name(a->format));
    if (g->tier) {
        kvt_json_add_u64(o, "tier_blocks_loaded", g->ps.pool_blocks + g->ps.tier_blocks);
        kvt_json_add_u64(o, "tier_blocks_failed", g->ps.failed_blocks);
        kvt_json_add_u64(o, "tier_blocks_stored", g->ps.stored_blocks);
    }
    kvt_free(text);
    return kvt_json_print(o);
}

int kvt_cmd_generate(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, g_opts, (int)(sizeof(g_opts) / sizeof(g_opts[0])), argc, argv,
                           g_usage, g_about);
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    gen_args_t a;
    rc = parse_args(&cfg, &a);
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    gen_t g = {0};
    kvt_status_t st = run(&g, &a);
    if (st == KVT_OK)
        rc = print_result(&g, &a);
    else
        kvt_log_error("generate failed status=%s", kvt_status_str(st));
    gen_cleanup(&g);
    return st == KVT_OK ? rc : KVT_EXIT_FAIL;
}
