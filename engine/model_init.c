/* `kvtier model init` (contract and weight distribution: model_init.h).
 *
 * Steps: check/create the output directory; plan files (one
 * model.safetensors, or shards of at most max_shard_bytes in tensor
 * order); draw every (tensor, chunk) on the thread pool straight into its
 * writer; write config.json, tokenizer files and the index; read the whole
 * directory back with kvt_model_inspect, which both proves it loads and
 * gives the digest.  On any failure the files named here are removed.
 *
 * JSON is written the way transformers' save_pretrained writes it
 * (json.dumps(indent=2, sort_keys=True)): sorted keys, two-space indent,
 * floats in Python's repr ("1e-05", "500000.0", "32.0"), so a directory
 * made here diffs cleanly against one transformers re-saves.
 *
 * Determinism of the draw needs IEEE double arithmetic without FMA
 * contraction: the build is ISO C11 (-std=c11), for which gcc contracts
 * nothing (-ffp-contract=off), and x86-64 / AArch64 doubles are IEEE. */
#include "engine/model_init.h"
#include "engine/modelInt.h"
#include "engine/safetensors.h"

#include "common/alloc.h"
#include "common/log.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_SHARD_FILES 9999

/* ---- deterministic draws ---- */

typedef struct {
    uint64_t s[4];
} xo_t;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** (Blackman and Vigna). */
static uint64_t xo_next(xo_t *r)
{
    uint64_t *s = r->s, result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [-1, 1), 53 bits. */
static double xo_sym(xo_t *r) { return (double)(xo_next(r) >> 11) * 0x1.0p-52 - 1.0; }

/* ln(x) for x in (0, 1] from exact operations only (libm's log may differ
 * in the last bit between machines): x = m * 2^e with m in [sqrt(1/2),
 * sqrt(2)), ln m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172, by its series
 * to s^23 (error < 1e-19). */
static double det_log(double x)
{
    static const double inv_odd[] = {1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9,  1.0 / 11, 1.0 / 13,
                                     1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21, 1.0 / 23};
    int e;
    double m = frexp(x, &e); /* exact */
    if (m < 0.70710678118654752440) {
        m *= 2.0;
        e--;
    }
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, term = s, sum = s;
    for (size_t k = 0; k < sizeof(inv_odd) / sizeof(inv_odd[0]); k++) {
        term *= s2;
        sum += term * inv_odd[k];
    }
    return 2.0 * sum + (double)e * 0.69314718055994530942;
}

/* Fill out[0..count) for chunk `chunk` of a tensor. */
static void draw_chunk(uint64_t seed, const kvt_mspec_t *spec, uint64_t chunk, float *out,
                       size_t count)
{
    bool norm = spec->which == KVT_MW_ATTN_NORM || spec->which == KVT_MW_MLP_NORM ||
                spec->which == KVT_MW_FINAL_NORM;
    double mean = norm ? 1.0 : 0.0, std = norm ? 0.1 : 0.02;
    uint64_t x = XXH3_64bits_withSeed(spec->name, strlen(spec->name), seed) ^
                 (chunk + 1) * 0xd1b54a32d192ed03ull;
    xo_t r;
    for (int i = 0; i < 4; i++)
        r.s[i] = splitmix64(&x);
    for (size_t i = 0; i < count; i += 2) {
        double u, v, s; /* Marsaglia's polar method: two deviates per accepted pair */
        do {
            u = xo_sym(&r);
            v = xo_sym(&r);
            s = u * u + v * v;
        } while (s >= 1.0 || s == 0.0);
        double f = sqrt(-2.0 * det_log(s) / s);
        out[i] = (float)(mean + std * (u * f));
        if (i + 1 < count)
            out[i + 1] = (float)(mean + std * (v * f));
    }
}

/* ---- weight files ---- */

typedef struct {
    uint64_t seed;
    kvt_dtype_t dtype;
    const kvt_mspec_t *specs;
    size_t n;
    uint32_t *file_of;        /* [n] writer of each tensor */
    size_t *index_in_file;    /* [n] its index in that writer */
    size_t *job_start;        /* [n + 1] first chunk job of each tensor */
    kvt_st_writer_t **writers;
    uint32_t n_files;
    _Atomic int status;
} gen_t;

static void gen_job(void *arg, size_t job)
{
    gen_t *g = arg;
    if (atomic_load(&g->status) != KVT_OK)
        return;
    size_t lo = 0, hi = g->n;
    while (hi - lo > 1) { /* the tensor whose job range holds this job */
        size_t mid = (lo + hi) / 2;
        if (g->job_start[mid] <= job)
            lo = mid;
        else
            hi = mid;
    }
    const kvt_mspec_t *spec = &g->specs[lo];
    uint64_t chunk = job - g->job_start[lo], first = chunk * KVT_MODEL_INIT_CHUNK;
    size_t count = (size_t)(spec->n_elems - first < KVT_MODEL_INIT_CHUNK
                                ? spec->n_elems - first : KVT_MODEL_INIT_CHUNK);
    float *f = kvt_malloc("init chunk", count * sizeof(float) + count * sizeof(uint16_t));
    if (!f) {
        atomic_store(&g->status, KVT_ERR_NOMEM);
        return;
    }
    draw_chunk(g->seed, spec, chunk, f, count);
    const void *bytes = f;
    size_t esize = sizeof(float);
    if (g->dtype == KVT_DTYPE_BF16) {
        uint16_t *b = (uint16_t *)(f + count);
        for (size_t i = 0; i < count; i++)
            b[i] = kvt_f32_to_bf16(f[i]); /* little-endian host: file order */
        bytes = b;
        esize = sizeof(uint16_t);
    }
    kvt_status_t st = kvt_st_writer_put(g->writers[g->file_of[lo]], g->index_in_file[lo],
                                        first * esize, bytes, count * esize);
    if (st != KVT_OK)
        atomic_store(&g->status, st);
    kvt_free(f);
}

static void shard_name(char *out, size_t cap, uint32_t i, uint32_t n_files)
{
    if (n_files == 1)
        snprintf(out, cap, "model.safetensors");
    else
        snprintf(out, cap, "model-%05u-of-%05u.safetensors", i + 1, n_files);
}

/* Tensors go into files in order; a file closes when the next tensor would
 * take it past max_bytes (a tensor larger than that gets a file alone). */
static void plan_files(gen_t *g, uint64_t max_bytes)
{
    uint64_t esize = g->dtype == KVT_DTYPE_BF16 ? 2 : 4, in_file = 0;
    uint32_t file = 0;
    size_t idx = 0;
    for (size_t i = 0; i < g->n; i++) {
        uint64_t b = g->specs[i].n_elems * esize;
        if (idx > 0 && in_file + b > max_bytes) {
            file++;
            idx = 0;
            in_file = 0;
        }
        g->file_of[i] = file;
        g->index_in_file[i] = idx++;
        in_file += b;
        g->job_start[i + 1] = g->job_start[i] + (g->specs[i].n_elems + KVT_MODEL_INIT_CHUNK - 1) /
                                                    KVT_MODEL_INIT_CHUNK;
    }
    g->n_files = file + 1;
}

static kvt_status_t open_writers(gen_t *g, const char *dir)
{
    kvt_st_spec_t *ss = kvt_calloc("init specs", g->n, sizeof(*ss));
    if (!ss)
        return KVT_ERR_NOMEM;
    kvt_status_t st = KVT_OK;
    for (uint32_t f = 0; f < g->n_files && st == KVT_OK; f++) {
        size_t k = 0;
        for (size_t i = 0; i < g->n; i++) {
            if (g->file_of[i] != f)
                continue;
            ss[k] = (kvt_st_spec_t){.name = g->specs[i].name, .dtype = g->dtype,
                                    .rank = g->specs[i].rank};
            memcpy(ss[k].shape, g->specs[i].shape, sizeof(g->specs[i].shape));
            k++;
        }
        char name[64], path[PATH_MAX];
        shard_name(name, sizeof(name), f, g->n_files);
        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
            st = KVT_ERR_INVALID;
        else
            st = kvt_st_writer_create(path, ss, k, &g->writers[f]);
    }
    kvt_free(ss);
    return st;
}

/* Draw and write every tensor; on success the files are complete. */
static kvt_status_t write_weights(gen_t *g, const char *dir, unsigned n_threads,
                                  uint64_t *bytes_p)
{
    kvt_status_t st = open_writers(g, dir);
    if (st == KVT_OK) {
        kvt_model_parallel(g->job_start[g->n], n_threads, gen_job, g);
        st = (kvt_status_t)atomic_load(&g->status);
    }
    uint64_t bytes = 0;
    for (uint32_t f = 0; f < g->n_files; f++) {
        if (!g->writers[f])
            continue;
        bytes += kvt_st_writer_file_bytes(g->writers[f]);
        if (st == KVT_OK)
            st = kvt_st_writer_finish(g->writers[f]);
        else
            kvt_st_writer_destroy(g->writers[f]);
        g->writers[f] = NULL;
    }
    *bytes_p = bytes;
    return st;
}

/* ---- JSON the way transformers writes it ---- */

/* Python's repr of a float: the shortest digits that read back to the same
 * value (as a float when single, else as a double), fixed notation for
 * exponents -4..15 with at least one decimal, else d.ddde+XX. */
static void py_float(double v, bool single, char *out, size_t cap)
{
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof(buf), "%.*e", p - 1, v);
        double back = strtod(buf, NULL);
        if (single ? (float)back == (float)v : back == v)
            break;
    }
    char digits[24];
    int nd = 0, exp;
    const char *q = buf;
    bool neg = *q == '-';
    q += neg;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            digits[nd++] = *q;
    exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    size_t at = 0;
    char o[64];
    if (neg)
        o[at++] = '-';
    if (exp >= 16 || exp < -4) {
        o[at++] = digits[0];
        if (nd > 1)
            o[at++] = '.';
        for (int i = 1; i < nd; i++)
            o[at++] = digits[i];
        at += (size_t)snprintf(o + at, sizeof(o) - at, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
    } else if (exp >= 0) {
        for (int i = 0; i <= exp; i++)
            o[at++] = i < nd ? digits[i] : '0';
        o[at++] = '.';
        if (nd <= exp + 1)
            o[at++] = '0';
        for (int i = exp + 1; i < nd; i++)
            o[at++] = digits[i];
    } else {
        o[at++] = '0';
        o[at++] = '.';
        for (int i = 0; i < -exp - 1; i++)
            o[at++] = '0';
        for (int i = 0; i < nd; i++)
            o[at++] = digits[i];
    }
    o[at < sizeof(o) ? at : sizeof(o) - 1] = '\0';
    snprintf(out, cap, "%s", o);
}

static cJSON *jfloat(double v, bool single)
{
    char text[48];
    py_float(v, single, text, sizeof(text));
    return cJSON_CreateRaw(text);
}

static void pj_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\u%04x", c); /* our files are ASCII; Python escapes the rest */
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

static void pj_value(FILE *f, const cJSON *v, int depth);

static void pj_container(FILE *f, const cJSON *v, int depth, bool object)
{
    size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
    if (n == 0) {
        fputs(object ? "{}" : "[]", f);
        return;
    }
    const cJSON **items = kvt_malloc("json items", n * sizeof(*items));
    if (!items) {
        fputs("<out of memory>", f); /* makes the file invalid; never silent */
        return;
    }
    for (const cJSON *c = v->child; c; c = c->next)
        items[i++] = c;
    if (object)
        qsort(items, n, sizeof(*items), cmp_key);
    fputs(object ? "{\n" : "[\n", f);
    for (i = 0; i < n; i++) {
        fprintf(f, "%*s", 2 * (depth + 1), "");
        if (object) {
            pj_string(f, items[i]->string);
            fputs(": ", f);
        }
        pj_value(f, items[i], depth + 1);
        fputs(i + 1 < n ? ",\n" : "\n", f);
    }
    fprintf(f, "%*s%c", 2 * depth, "", object ? '}' : ']');
    kvt_free(items);
}

static void pj_value(FILE *f, const cJSON *v, int depth)
{
    if (cJSON_IsNull(v))
        fputs("null", f);
    else if (cJSON_IsBool(v))
        fputs(cJSON_IsTrue(v) ? "true" : "false", f);
    else if (cJSON_IsRaw(v))
        fputs(v->valuestring, f);
    else if (cJSON_IsString(v))
        pj_string(f, v->valuestring);
    else if (cJSON_IsNumber(v))
        fprintf(f, "%.0f", v->valuedouble); /* integers only; floats are raw */
    else
        pj_container(f, v, depth, cJSON_IsObject(v));
}

static kvt_status_t write_file(const char *dir, const char *name, const cJSON *json,
                               const void *bytes, size_t len)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
        return KVT_ERR_INVALID;
    FILE *f = fopen(path, "wbx");
    if (!f) {
        kvt_log_error("cannot create file file=%s err=\"%s\"", path, strerror(errno));
        return errno == EEXIST ? KVT_ERR_EXISTS : KVT_ERR_IO;
    }
    if (json) {
        pj_value(f, json, 0);
        fputc('\n', f);
    } else {
        fwrite(bytes, 1, len, f);
    }
    int err = ferror(f);
    if (fclose(f) != 0 || err) {
        kvt_log_error("cannot write file file=%s err=\"%s\"", path, strerror(errno));
        return KVT_ERR_IO;
    }
    return KVT_OK;
}

static void add_ids(cJSON *o, const char *key, uint32_t n, const uint32_t *ids)
{
    if (n == 0) {
        cJSON_AddNullToObject(o, key);
    } else if (n == 1) {
        cJSON_AddNumberToObject(o, key, ids[0]);
    } else {
        cJSON *a = cJSON_AddArrayToObject(o, key);
        for (uint32_t i = 0; a && i < n; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    }
}

static cJSON *rope_json(const kvt_model_config_t *c)
{
    if (c->rope_scaling == KVT_ROPE_NONE)
        return cJSON_CreateNull();
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "rope_type",
                            c->rope_scaling == KVT_ROPE_LINEAR ? "linear" : "llama3");
    cJSON_AddItemToObject(r, "factor", jfloat(c->rope_factor, true));
    if (c->rope_scaling == KVT_ROPE_LLAMA3) {
        cJSON_AddItemToObject(r, "low_freq_factor", jfloat(c->rope_low_freq_factor, true));
        cJSON_AddItemToObject(r, "high_freq_factor", jfloat(c->rope_high_freq_factor, true));
        cJSON_AddNumberToObject(r, "original_max_position_embeddings", c->rope_orig_max_pos);
    }
    return r;
}

/* config.json: transformers' LlamaConfig / Qwen2Config fields. */
static cJSON *config_json(const kvt_model_config_t *c, kvt_dtype_t dtype)
{
    cJSON *o = cJSON_CreateObject(), *archs = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString(kvt_model_arch_class(c->arch)));
    cJSON_AddStringToObject(o, "model_type", kvt_model_arch_type(c->arch));
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    const char *dt = dtype == KVT_DTYPE_F32 ? "float32" : "bfloat16";
    cJSON_AddStringToObject(o, "dtype", dt);
    cJSON_AddStringToObject(o, "torch_dtype", dt); /* transformers < 4.56 reads this one */
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    cJSON_AddItemToObject(o, "rms_norm_eps", jfloat(c->rms_eps, true));
    cJSON_AddItemToObject(o, "rope_theta", jfloat(c->rope_theta, true));
    cJSON_AddItemToObject(o, "rope_scaling", rope_json(c));
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddItemToObject(o, "initializer_range", jfloat(0.02, false));
    cJSON_AddItemToObject(o, "attention_dropout", jfloat(0.0, false));
    add_ids(o, "bos_token_id", c->has_bos ? 1 : 0, &c->bos_id);
    add_ids(o, "eos_token_id", c->n_eos, c->eos_ids);
    cJSON_AddBoolToObject(o, "use_cache", true);
    if (c->arch == KVT_ARCH_LLAMA) {
        cJSON_AddBoolToObject(o, "attention_bias", c->qkv_bias);
        cJSON_AddBoolToObject(o, "mlp_bias", false);
        cJSON_AddNumberToObject(o, "pretraining_tp", 1);
    } else {
        cJSON_AddBoolToObject(o, "use_sliding_window", false);
        cJSON_AddNullToObject(o, "sliding_window");
        cJSON_AddNumberToObject(o, "max_window_layers", c->n_layers);
    }
    return o;
}

static cJSON *tokenizer_config_json(const kvt_model_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddBoolToObject(o, "add_bos_token", false);
    cJSON_AddNullToObject(o, "bos_token");
    cJSON_AddStringToObject(o, "eos_token", "<|endoftext|>");
    cJSON_AddStringToObject(o, "pad_token", "<|fim_pad|>");
    cJSON_AddNumberToObject(o, "model_max_length", c->max_pos);
    return o;
}

static cJSON *generation_config_json(const kvt_model_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    add_ids(o, "bos_token_id", c->has_bos ? 1 : 0, &c->bos_id);
    add_ids(o, "eos_token_id", c->n_eos, c->eos_ids);
    cJSON_AddNumberToObject(o, "pad_token_id", KVT_MODEL_INIT_PAD_ID);
    return o;
}

static cJSON *index_json(const gen_t *g)
{
    cJSON *o = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(o, "metadata");
    cJSON *map = cJSON_AddObjectToObject(o, "weight_map");
    uint64_t total = 0, esize = g->dtype == KVT_DTYPE_BF16 ? 2 : 4;
    for (size_t i = 0; i < g->n; i++) {
        char name[64];
        shard_name(name, sizeof(name), g->file_of[i], g->n_files);
        cJSON_AddStringToObject(map, g->specs[i].name, name);
        total += g->specs[i].n_elems * esize;
    }
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    return o;
}

/* The small files.  cJSON allocation failures surface as a NULL tree or
 * missing members; either makes the read-back check fail. */
static kvt_status_t write_meta(const char *dir, const kvt_model_config_t *cfg, const gen_t *g)
{
    cJSON *j[4] = {config_json(cfg, g->dtype), tokenizer_config_json(cfg),
                   generation_config_json(cfg), g->n_files > 1 ? index_json(g) : NULL};
    static const char *const names[] = {"config.json", "tokenizer_config.json",
                                        "generation_config.json", "model.safetensors.index.json"};
    kvt_status_t st = KVT_OK;
    for (int i = 0; i < 4 && st == KVT_OK; i++) {
        if (i == 3 && g->n_files == 1)
            break;
        st = j[i] ? write_file(dir, names[i], j[i], NULL, 0) : KVT_ERR_NOMEM;
    }
    for (int i = 0; i < 4; i++)
        cJSON_Delete(j[i]);
    if (st == KVT_OK)
        st = write_file(dir, "tokenizer.json", NULL, kvt_asset_code_tokenizer_json,
                        kvt_asset_code_tokenizer_json_len);
    return st;
}

/* ---- the directory ---- */

static kvt_status_t mkdir_p(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
        return KVT_ERR_INVALID;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            break;
        *p = '/';
    }
    if (mkdir(path, 0755) != 0) {
        kvt_log_error("cannot create directory dir=%s err=\"%s\"", dir, strerror(errno));
        return KVT_ERR_IO;
    }
    return KVT_OK;
}

static kvt_status_t prepare_dir(const char *dir, bool *created_p)
{
    struct stat sb;
    *created_p = false;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT) {
            kvt_log_error("cannot use output directory dir=%s err=\"%s\"", dir, strerror(errno));
            return KVT_ERR_IO;
        }
        kvt_status_t st = mkdir_p(dir);
        *created_p = st == KVT_OK;
        return st;
    }
    DIR *d = S_ISDIR(sb.st_mode) ? opendir(dir) : NULL;
    if (!d) {
        kvt_log_error("output path exists and is not a usable directory dir=%s", dir);
        return KVT_ERR_EXISTS;
    }
    bool empty = true;
    for (struct dirent *e; empty && (e = readdir(d));)
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    if (!empty) {
        kvt_log_error("output directory is not empty, refusing to overwrite dir=%s", dir);
        return KVT_ERR_EXISTS;
    }
    return KVT_OK;
}

static void remove_outputs(const char *dir, const gen_t *g, bool created)
{
    static const char *const names[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                        "generation_config.json", "model.safetensors.index.json"};
    char path[PATH_MAX], name[64];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (snprintf(path, sizeof(path), "%s/%s", dir, names[i]) < (int)sizeof(path))
            unlink(path);
    for (uint32_t f = 0; f < g->n_files; f++) {
        shard_name(name, sizeof(name), f, g->n_files);
        if (snprintf(path, sizeof(path), "%s/%s", dir, name) < (int)sizeof(path))
            unlink(path);
    }
    if (created)
        rmdir(dir);
}

static kvt_status_t gen_setup(gen_t *g, const kvt_model_init_params_t *p,
                              const kvt_model_config_t *cfg)
{
    kvt_mspec_t *specs;
    kvt_status_t st = kvt_mspecs(cfg, &specs, &g->n);
    if (st != KVT_OK)
        return st;
    g->specs = specs;
    g->file_of = kvt_calloc("init plan", g->n, sizeof(*g->file_of));
    g->index_in_file = kvt_calloc("init plan", g->n, sizeof(*g->index_in_file));
    g->job_start = kvt_calloc("init plan", g->n + 1, sizeof(*g->job_start));
    if (!g->file_of || !g->index_in_file || !g->job_start)
        return KVT_ERR_NOMEM;
    plan_files(g, p->max_shard_bytes ? p->max_shard_bytes : KVT_MODEL_INIT_SHARD_BYTES);
    if (g->n_files > MAX_SHARD_FILES) {
        kvt_log_error("too many shard files files=%u max=%u", g->n_files, MAX_SHARD_FILES);
        return KVT_ERR_INVALID;
    }
    g->writers = kvt_calloc("init writers", g->n_files, sizeof(*g->writers));
    return g->writers ? KVT_OK : KVT_ERR_NOMEM;
}

static void gen_cleanup(gen_t *g)
{
    kvt_free((void *)g->specs);
    kvt_free(g->file_of);
    kvt_free(g->index_in_file);
    kvt_free(g->job_start);
    kvt_free(g->writers);
}

/* Read back: the directory must load as the preset it was made from. */
static kvt_status_t verify_dir(const char *dir, const kvt_model_config_t *want,
                               kvt_model_init_result_t *res)
{
    kvt_status_t st = kvt_model_inspect(dir, &res->cfg, res->digest);
    if (st != KVT_OK)
        return st;
    char a[1024], b[1024];
    kvt_model_config_canonical(want, a, sizeof(a));
    kvt_model_config_canonical(&res->cfg, b, sizeof(b));
    if (strcmp(a, b) != 0 || res->cfg.max_pos != want->max_pos) {
        kvt_log_error("written config.json reads back different dir=%s", dir);
        return KVT_ERR_CORRUPT;
    }
    return KVT_OK;
}

kvt_status_t kvt_model_init(const kvt_model_init_params_t *p, kvt_model_init_result_t *res_p)
{
    const kvt_model_preset_t *preset = kvt_model_preset_find(p->preset);
    kvt_dtype_t dtype = p->dtype ? p->dtype : KVT_DTYPE_BF16;
    if (!preset || (dtype != KVT_DTYPE_BF16 && dtype != KVT_DTYPE_F32) || !p->out_dir) {
        kvt_log_error("bad model init request preset=%s dtype=%d", p->preset ? p->preset : "-",
                      (int)dtype);
        return KVT_ERR_INVALID;
    }
    bool created;
    kvt_status_t st = prepare_dir(p->out_dir, &created);
    if (st != KVT_OK)
        return st;
    gen_t g = {.seed = p->seed, .dtype = dtype};
    atomic_init(&g.status, KVT_OK);
    kvt_model_init_result_t res;
    memset(&res, 0, sizeof(res));
    st = gen_setup(&g, p, &preset->cfg);
    if (st == KVT_OK)
        st = write_weights(&g, p->out_dir, p->n_threads, &res.weight_bytes);
    if (st == KVT_OK)
        st = write_meta(p->out_dir, &preset->cfg, &g);
    if (st == KVT_OK)
        st = verify_dir(p->out_dir, &preset->cfg, &res);
    if (st != KVT_OK) {
        remove_outputs(p->out_dir, &g, created);
        gen_cleanup(&g);
        return st;
    }
    res.n_params = kvt_model_n_params(&res.cfg);
    res.n_shards = g.n_files > 1 ? g.n_files : 0;
    gen_cleanup(&g);
    *res_p = res;
    return KVT_OK;
}
