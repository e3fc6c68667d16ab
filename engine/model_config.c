/* config.json of a Llama-family model -> kvt_model_config_t (model.h).
 *
 * Follows Hugging Face transformers' LlamaConfig / Qwen2Config: the same
 * field names and the same defaults for absent fields (num_key_value_heads
 * = num_attention_heads, head_dim = hidden_size / num_attention_heads,
 * rms_norm_eps 1e-6, rope_theta 10000, tie_word_embeddings false, Llama's
 * bos/eos 1/2).  RoPE comes either as the legacy rope_theta + rope_scaling
 * pair or as transformers 5's rope_parameters object, which holds both;
 * like transformers, a non-null rope_scaling wins.
 *
 * Everything is untrusted: each number is checked to be an integer (or a
 * finite float) within its bound before it is used, each field has the
 * type it should, and the whole is checked for consistency.  Every
 * rejection is one log line naming the file and the field, and
 * KVT_ERR_INVALID (KVT_ERR_TOO_LARGE for a number above its bound). */
#include "engine/modelInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_POS (1u << 24)
#define MAX_ROPE_THETA 1e12
#define MAX_ROPE_FACTOR 1e6

typedef struct {
    const char *what; /* the file, for log lines */
    const char *prefix; /* "" or "rope_scaling." for nested fields */
} pctx_t;

static kvt_status_t field_err(const pctx_t *c, const char *field, kvt_status_t st,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static kvt_status_t field_err(const pctx_t *c, const char *field, kvt_status_t st,
                              const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    kvt_log_error("bad model config file=%s field=%s%s error=\"%s\"", c->what, c->prefix, field,
                  why);
    return st;
}

static const cJSON *get(const cJSON *obj, const char *field)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, field);
    return cJSON_IsNull(item) ? NULL : item;
}

/* An integer field in [min, max]; absent or null -> def (when !required). */
static kvt_status_t get_u32(const pctx_t *c, const cJSON *obj, const char *field, bool required,
                            uint32_t def, uint32_t min, uint32_t max, uint32_t *out)
{
    const cJSON *item = get(obj, field);
    if (!item) {
        if (required)
            return field_err(c, field, KVT_ERR_INVALID, "missing");
        *out = def;
        return KVT_OK;
    }
    if (!cJSON_IsNumber(item))
        return field_err(c, field, KVT_ERR_INVALID, "not a number");
    double v = item->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return field_err(c, field, KVT_ERR_INVALID, "not an integer: %g", v);
    if (v < (double)min)
        return field_err(c, field, KVT_ERR_INVALID, "below its minimum: %.0f", v);
    if (v > (double)max)
        return field_err(c, field, KVT_ERR_TOO_LARGE, "above its bound: %.0f", v);
    *out = (uint32_t)v;
    return KVT_OK;
}

/* A finite number in (lo, hi]. */
static kvt_status_t get_f32(const pctx_t *c, const cJSON *obj, const char *field, bool required,
                            double def, double lo, double hi, float *out)
{
    const cJSON *item = get(obj, field);
    if (!item) {
        if (required)
            return field_err(c, field, KVT_ERR_INVALID, "missing");
        *out = (float)def;
        return KVT_OK;
    }
    if (!cJSON_IsNumber(item))
        return field_err(c, field, KVT_ERR_INVALID, "not a number");
    double v = item->valuedouble;
    if (!isfinite(v) || v <= lo)
        return field_err(c, field, KVT_ERR_INVALID, "out of range: %g", v);
    if (v > hi)
        return field_err(c, field, KVT_ERR_TOO_LARGE, "above its bound: %g", v);
    /* Every float field is positive: one that rounds to 0 or a subnormal in
     * f32 (rope_theta 1e-300) would turn the model's output into NaN. */
    float f = (float)v;
    if (!isnormal(f))
        return field_err(c, field, KVT_ERR_INVALID, "not a normal f32: %g", v);
    *out = f;
    return KVT_OK;
}

static kvt_status_t get_bool(const pctx_t *c, const cJSON *obj, const char *field, bool def,
                             bool *out)
{
    const cJSON *item = get(obj, field);
    if (!item) {
        *out = def;
        return KVT_OK;
    }
    if (!cJSON_IsBool(item))
        return field_err(c, field, KVT_ERR_INVALID, "not true or false");
    *out = cJSON_IsTrue(item);
    return KVT_OK;
}

const char *kvt_model_arch_class(kvt_arch_t arch)
{
    return arch == KVT_ARCH_QWEN2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
}

const char *kvt_model_arch_type(kvt_arch_t arch)
{
    return arch == KVT_ARCH_QWEN2 ? "qwen2" : "llama";
}

/* architectures[] names the class; model_type, when given, must agree. */
static kvt_status_t parse_arch(const pctx_t *c, const cJSON *root, kvt_model_config_t *cfg)
{
    const cJSON *archs = get(root, "architectures"), *type = get(root, "model_type");
    if (archs && !cJSON_IsArray(archs))
        return field_err(c, "architectures", KVT_ERR_INVALID, "not a list");
    if (type && !cJSON_IsString(type))
        return field_err(c, "model_type", KVT_ERR_INVALID, "not a string");
    cfg->arch = 0;
    for (const cJSON *a = archs ? archs->child : NULL; a && !cfg->arch; a = a->next) {
        if (!cJSON_IsString(a))
            return field_err(c, "architectures", KVT_ERR_INVALID, "holds a non-string");
        if (!strcmp(a->valuestring, "LlamaForCausalLM"))
            cfg->arch = KVT_ARCH_LLAMA;
        else if (!strcmp(a->valuestring, "Qwen2ForCausalLM"))
            cfg->arch = KVT_ARCH_QWEN2;
    }
    if (!cfg->arch && archs) {
        kvt_log_error("unknown architecture file=%s field=architectures supported="
                      "LlamaForCausalLM,Qwen2ForCausalLM",
                      c->what);
        return KVT_ERR_INVALID;
    }
    if (!type && !cfg->arch)
        return field_err(c, "architectures", KVT_ERR_INVALID,
                         "missing (and no model_type)");
    if (type) {
        kvt_arch_t t = !strcmp(type->valuestring, "llama")   ? KVT_ARCH_LLAMA
                       : !strcmp(type->valuestring, "qwen2") ? KVT_ARCH_QWEN2
                                                              : 0;
        if (!t || (cfg->arch && t != cfg->arch)) {
            kvt_log_error("unknown or mismatched model type file=%s field=model_type "
                          "model_type=\"%.32s\" supported=llama,qwen2",
                          c->what, type->valuestring);
            return KVT_ERR_INVALID;
        }
        cfg->arch = t;
    }
    return KVT_OK;
}

static kvt_status_t parse_dims(const pctx_t *c, const cJSON *root, kvt_model_config_t *cfg)
{
    kvt_status_t st;
    if ((st = get_u32(c, root, "vocab_size", true, 0, 1, KVT_MODEL_MAX_VOCAB,
                      &cfg->vocab_size)) != KVT_OK ||
        (st = get_u32(c, root, "hidden_size", true, 0, 1, KVT_MODEL_MAX_DIM, &cfg->hidden)) !=
            KVT_OK ||
        (st = get_u32(c, root, "intermediate_size", true, 0, 1, KVT_MODEL_MAX_DIM,
                      &cfg->intermediate)) != KVT_OK ||
        (st = get_u32(c, root, "num_hidden_layers", true, 0, 1, KVT_MODEL_MAX_LAYERS,
                      &cfg->n_layers)) != KVT_OK ||
        (st = get_u32(c, root, "num_attention_heads", true, 0, 1, KVT_MODEL_MAX_DIM,
                      &cfg->n_heads)) != KVT_OK ||
        (st = get_u32(c, root, "num_key_value_heads", false, cfg->n_heads, 1,
                      KVT_BLOCK_MAX_KV_HEADS, &cfg->n_kv_heads)) != KVT_OK ||
        /* transformers' defaults: LlamaConfig 2048, Qwen2Config 32768 */
        (st = get_u32(c, root, "max_position_embeddings", false,
                      cfg->arch == KVT_ARCH_QWEN2 ? 32768 : 2048, 1, MAX_POS,
                      &cfg->max_pos)) != KVT_OK)
        return st;
    if (!get(root, "head_dim") && cfg->hidden % cfg->n_heads != 0)
        return field_err(c, "hidden_size", KVT_ERR_INVALID,
                         "not a multiple of num_attention_heads, and no head_dim");
    st = get_u32(c, root, "head_dim", false, cfg->hidden / cfg->n_heads, 1,
                 KVT_BLOCK_MAX_HEAD_DIM, &cfg->head_dim);
    if (st != KVT_OK)
        return st;
    if (cfg->head_dim % 2)
        return field_err(c, "head_dim", KVT_ERR_INVALID, "odd (RoPE rotates pairs): %u",
                         cfg->head_dim);
    if ((uint64_t)cfg->n_heads * cfg->head_dim > KVT_MODEL_MAX_DIM)
        return field_err(c, "num_attention_heads", KVT_ERR_TOO_LARGE,
                         "num_attention_heads * head_dim above its bound");
    if (cfg->n_kv_heads > cfg->n_heads || cfg->n_heads % cfg->n_kv_heads != 0)
        return field_err(c, "num_key_value_heads", KVT_ERR_INVALID,
                         "does not divide num_attention_heads: %u", cfg->n_kv_heads);
    return KVT_OK;
}

/* Fields that select code we do not have: refuse rather than compute
 * something else than the model. */
static kvt_status_t parse_flags(const pctx_t *c, const cJSON *root, kvt_model_config_t *cfg)
{
    const cJSON *act = get(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return field_err(c, "hidden_act", KVT_ERR_INVALID, "only \"silu\" is supported");
    bool b = false; /* gcc 13 cannot see that get_bool sets it on success */
    kvt_status_t st = get_bool(c, root, "mlp_bias", false, &b);
    if (st == KVT_OK && b)
        st = field_err(c, "mlp_bias", KVT_ERR_INVALID, "true is not supported");
    if (st == KVT_OK)
        st = get_bool(c, root, "use_sliding_window", false, &b);
    if (st == KVT_OK && b)
        st = field_err(c, "use_sliding_window", KVT_ERR_INVALID,
                       "sliding-window attention is not supported");
    if (st == KVT_OK)
        st = get_bool(c, root, "tie_word_embeddings", false, &cfg->tie_embeddings);
    if (st == KVT_OK)
        st = get_bool(c, root, "attention_bias", false, &cfg->qkv_bias);
    if (cfg->arch == KVT_ARCH_QWEN2)
        cfg->qkv_bias = true; /* Qwen2Attention always has q/k/v bias */
    if (st == KVT_OK)
        st = get_f32(c, root, "rms_norm_eps", false, 1e-6, 0.0, 1.0, &cfg->rms_eps);
    return st;
}

static kvt_status_t parse_llama3(const pctx_t *c, const cJSON *rs, kvt_model_config_t *cfg)
{
    kvt_status_t st;
    if ((st = get_f32(c, rs, "factor", true, 0, 0.0, MAX_ROPE_FACTOR, &cfg->rope_factor)) !=
            KVT_OK ||
        (st = get_f32(c, rs, "low_freq_factor", true, 0, 0.0, MAX_ROPE_FACTOR,
                      &cfg->rope_low_freq_factor)) != KVT_OK ||
        (st = get_f32(c, rs, "high_freq_factor", true, 0, 0.0, MAX_ROPE_FACTOR,
                      &cfg->rope_high_freq_factor)) != KVT_OK ||
        (st = get_u32(c, rs, "original_max_position_embeddings", true, 0, 1, MAX_POS,
                      &cfg->rope_orig_max_pos)) != KVT_OK)
        return st;
    /* The llama3 smoothing divides by high - low. */
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        return field_err(c, "high_freq_factor", KVT_ERR_INVALID,
                         "must be above low_freq_factor");
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        return field_err(c, "high_freq_factor", KVT_ERR_INVALID,
                         "not above low_freq_factor");
    return KVT_OK;
}

/* rs: the rope_scaling (or rope_parameters) object, or NULL. */
static kvt_status_t parse_scaling(const pctx_t *c, const cJSON *rs, kvt_model_config_t *cfg)
{
    cfg->rope_scaling = KVT_ROPE_NONE;
    cfg->rope_factor = 1.0f;
    if (!rs)
        return KVT_OK;
    const cJSON *type = get(rs, "rope_type");
    if (!type)
        type = get(rs, "type");
    if (!type)
        return field_err(c, "rope_type", KVT_ERR_INVALID, "missing");
    if (!cJSON_IsString(type))
        return field_err(c, "rope_type", KVT_ERR_INVALID, "not a string");
    if (!strcmp(type->valuestring, "default"))
        return KVT_OK;
    if (!strcmp(type->valuestring, "linear")) {
        cfg->rope_scaling = KVT_ROPE_LINEAR;
        return get_f32(c, rs, "factor", true, 0, 0.0, MAX_ROPE_FACTOR, &cfg->rope_factor);
    }
    if (!strcmp(type->valuestring, "llama3")) {
        cfg->rope_scaling = KVT_ROPE_LLAMA3;
        return parse_llama3(c, rs, cfg);
    }
    kvt_log_error("unsupported rope scaling file=%s field=%srope_type rope_type=\"%.32s\" "
                  "supported=default,linear,llama3",
                  c->what, c->prefix, type->valuestring);
    return KVT_ERR_INVALID;
}

static kvt_status_t parse_rope(const pctx_t *c, const cJSON *root, kvt_model_config_t *cfg)
{
    const cJSON *scaling = get(root, "rope_scaling"), *params = get(root, "rope_parameters");
    pctx_t nested = {c->what, scaling ? "rope_scaling." : "rope_parameters."};
    const cJSON *rs = scaling ? scaling : params;
    if (rs && !cJSON_IsObject(rs))
        return field_err(c, scaling ? "rope_scaling" : "rope_parameters", KVT_ERR_INVALID,
                         "not an object or null");
    /* rope_theta inside the object first (transformers 5), then top level. */
    kvt_status_t st;
    if (rs && get(rs, "rope_theta"))
        st = get_f32(&nested, rs, "rope_theta", true, 0, 0.0, MAX_ROPE_THETA, &cfg->rope_theta);
    else
        st = get_f32(c, root, "rope_theta", false, 10000.0, 0.0, MAX_ROPE_THETA,
                     &cfg->rope_theta);
    return st == KVT_OK ? parse_scaling(&nested, rs, cfg) : st;
}

/* bos/eos: a number, a list of numbers, or null; each below vocab_size. */
static kvt_status_t parse_ids(const pctx_t *c, const cJSON *root, const char *field,
                              bool has_def, uint32_t def, uint32_t *ids, uint32_t max_ids,
                              uint32_t *n_p, uint32_t vocab)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!item) {
        *n_p = has_def ? 1 : 0;
        ids[0] = def;
    } else if (cJSON_IsNull(item)) {
        *n_p = 0;
    } else if (cJSON_IsNumber(item)) {
        kvt_status_t st = get_u32(c, root, field, true, 0, 0, UINT32_MAX, &ids[0]);
        if (st != KVT_OK)
            return st;
        *n_p = 1;
    } else if (cJSON_IsArray(item) && max_ids > 1) {
        if (cJSON_GetArraySize(item) > (int)max_ids)
            return field_err(c, field, KVT_ERR_TOO_LARGE, "more than %u ids", max_ids);
        uint32_t n = 0;
        for (const cJSON *e = item->child; e; e = e->next, n++) {
            double v = cJSON_IsNumber(e) ? e->valuedouble : -1.0;
            if (!(v >= 0.0 && v <= (double)UINT32_MAX) || v != floor(v))
                return field_err(c, field, KVT_ERR_INVALID, "holds a non-id");
            ids[n] = (uint32_t)v;
        }
        *n_p = n;
    } else {
        return field_err(c, field, KVT_ERR_INVALID, "not a token id, a list or null");
    }
    for (uint32_t i = 0; i < *n_p; i++)
        if (ids[i] >= vocab)
            return field_err(c, field, KVT_ERR_INVALID, "id %u not below vocab_size", ids[i]);
    return KVT_OK;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* cJSON finds the first of two equal keys and Python's json keeps the last:
 * a file with both would load as two different models, so refuse it. */
static kvt_status_t check_unique_keys(const pctx_t *c, const cJSON *obj)
{
    size_t n = (size_t)cJSON_GetArraySize(obj), i = 0;
    const cJSON **keys = kvt_malloc("config keys", (n ? n : 1) * sizeof(*keys));
    if (!keys)
        return KVT_ERR_NOMEM;
    for (const cJSON *e = obj->child; e; e = e->next)
        keys[i++] = e;
    qsort(keys, n, sizeof(*keys), cmp_key);
    kvt_status_t st = KVT_OK;
    for (i = 1; i < n && st == KVT_OK; i++)
        if (!strcmp(keys[i - 1]->string, keys[i]->string))
            st = field_err(c, keys[i]->string, KVT_ERR_INVALID, "given twice");
    for (i = 0; i < n && st == KVT_OK; i++)
        if (cJSON_IsObject(keys[i]))
            st = check_unique_keys(c, keys[i]);
    kvt_free(keys);
    return st;
}

static kvt_status_t parse_root(const pctx_t *c, const cJSON *root, kvt_model_config_t *cfg)
{
    kvt_status_t st;
    if ((st = check_unique_keys(c, root)) != KVT_OK || (st = parse_arch(c, root, cfg)) != KVT_OK ||
        (st = parse_dims(c, root, cfg)) != KVT_OK ||
        (st = parse_flags(c, root, cfg)) != KVT_OK || (st = parse_rope(c, root, cfg)) != KVT_OK)
        return st;
    bool llama = cfg->arch == KVT_ARCH_LLAMA;
    uint32_t n_bos;
    st = parse_ids(c, root, "bos_token_id", llama, 1, &cfg->bos_id, 1, &n_bos, cfg->vocab_size);
    if (st != KVT_OK)
        return st;
    cfg->has_bos = n_bos == 1;
    if (!cfg->has_bos)
        cfg->bos_id = 0;
    return parse_ids(c, root, "eos_token_id", llama, 2, cfg->eos_ids, KVT_MODEL_MAX_EOS,
                     &cfg->n_eos, cfg->vocab_size);
}

kvt_status_t kvt_model_config_parse(const char *json, size_t len, const char *what,
                                    kvt_model_config_t *cfg_p)
{
    pctx_t c = {what ? what : "config.json", ""};
    if (len > KVT_CONFIG_MAX_BYTES)
        return field_err(&c, "(file)", KVT_ERR_TOO_LARGE, "larger than %u bytes",
                         KVT_CONFIG_MAX_BYTES);
    /* A NUL-terminated copy: cJSON then never looks past the text. */
    char *text = kvt_malloc("config text", len + 1);
    if (!text)
        return KVT_ERR_NOMEM;
    memcpy(text, json, len);
    text[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    kvt_status_t st = KVT_OK;
    if (!root || !end)
        st = field_err(&c, "(file)", KVT_ERR_INVALID, "not valid JSON");
    for (; st == KVT_OK && end < text + len; end++)
        if (*end != ' ' && *end != '\n' && *end != '\r' && *end != '\t')
            st = field_err(&c, "(file)", KVT_ERR_INVALID, "bytes after the JSON value");
    if (st == KVT_OK && !cJSON_IsObject(root))
        st = field_err(&c, "(file)", KVT_ERR_INVALID, "not a JSON object");
    kvt_model_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    if (st == KVT_OK)
        st = parse_root(&c, root, &cfg);
    cJSON_Delete(root);
    kvt_free(text);
    if (st == KVT_OK)
        *cfg_p = cfg;
    return st;
}

size_t kvt_model_config_canonical(const kvt_model_config_t *cfg, char *out, size_t cap)
{
    static const char *const rope[] = {"none", "linear", "llama3"};
    int n = snprintf(out, cap,
                     "arch=%s\nvocab_size=%u\nhidden_size=%u\nintermediate_size=%u\n"
                     "num_hidden_layers=%u\nnum_attention_heads=%u\nnum_key_value_heads=%u\n"
                     "head_dim=%u\nrms_norm_eps=%.9g\nrope_theta=%.9g\nqkv_bias=%d\n"
                     "tie_word_embeddings=%d\nrope_scaling=%s\n",
                     kvt_model_arch_type(cfg->arch), cfg->vocab_size, cfg->hidden,
                     cfg->intermediate, cfg->n_layers, cfg->n_heads, cfg->n_kv_heads,
                     cfg->head_dim, (double)cfg->rms_eps, (double)cfg->rope_theta,
                     (int)cfg->qkv_bias, (int)cfg->tie_embeddings,
                     rope[cfg->rope_scaling <= KVT_ROPE_LLAMA3 ? cfg->rope_scaling : 0]);
    if (n < 0 || (size_t)n >= cap)
        return n < 0 ? 0 : cap - 1;
    int m = 0;
    if (cfg->rope_scaling == KVT_ROPE_LINEAR)
        m = snprintf(out + n, cap - (size_t)n, "rope_factor=%.9g\n", (double)cfg->rope_factor);
    else if (cfg->rope_scaling == KVT_ROPE_LLAMA3)
        m = snprintf(out + n, cap - (size_t)n,
                     "rope_factor=%.9g\nrope_low_freq_factor=%.9g\nrope_high_freq_factor=%.9g\n"
                     "rope_original_max_position_embeddings=%u\n",
                     (double)cfg->rope_factor, (double)cfg->rope_low_freq_factor,
                     (double)cfg->rope_high_freq_factor, cfg->rope_orig_max_pos);
    if (m < 0)
        return (size_t)n;
    return (size_t)n + (size_t)m >= cap ? cap - 1 : (size_t)n + (size_t)m;
}
