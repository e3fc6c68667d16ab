/* Model loading from a Hugging Face directory (contract: model.h).
 *
 * kvt_model_load: config.json -> kvt_model_config_t; the expected tensor
 * list of that config (kvt_mspecs) is looked up in model.safetensors, or
 * through model.safetensors.index.json's weight_map in its shards; every
 * tensor must be there with exactly the expected shape (extra tensors are
 * ignored, and lm_head.weight is ignored when the embeddings are tied).
 * The weights are converted to f32 into one page-aligned arena owned by
 * the model, in parallel chunks; in the same parallel pass each tensor's
 * raw bytes are hashed with xxh3-128 for the digest.  The mapped files are
 * closed before returning, so a loaded model holds only its f32 arena.
 *
 * Digest (docs/model.md): SHA-256 over
 *     "kvtier-model-digest-v1\n"
 *     u32le(len) canonical config text (kvt_model_config_canonical)
 *     SHA-256(tokenizer.json bytes)
 *     u32le(n_tensors), then per tensor in strcmp order of names:
 *         u32le(len) name, u32le(dtype: 1 f32, 2 bf16, 3 f16), u32le(rank),
 *         u64le(dim) * rank, xxh3-128 of the raw bytes (canonical, 16 bytes)
 * so it names the config, tokenizer and weights exactly as stored, and
 * hashing 16 GB costs about one pass of memory bandwidth. */
#include "engine/modelInt.h"
#include "engine/safetensors.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/le.h"
#include "common/log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_SHARDS 4096
#define MAX_INDEX_BYTES (64u << 20)
#define CONVERT_CHUNK (1u << 22) /* elements per conversion job */
#define ARENA_ALIGN 64           /* bytes; each tensor starts on a cache line */

typedef struct {
    void *arena;
    size_t arena_bytes;
} model_priv_t;

/* ---- the tensor list of a config ---- */

static void spec_add(kvt_mspec_t *s, size_t *n, kvt_mweight_t which, uint32_t layer,
                     const char *name, uint64_t d0, uint64_t d1)
{
    kvt_mspec_t *p = &s[(*n)++];
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->which = which;
    p->layer = layer;
    p->rank = d1 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->n_elems = d1 ? d0 * d1 : d0;
}

static void layer_specs(const kvt_model_config_t *c, uint32_t l, kvt_mspec_t *s, size_t *n)
{
    static const struct {
        kvt_mweight_t which;
        const char *suffix;
    } names[] = {
        {KVT_MW_ATTN_NORM, "input_layernorm.weight"}, {KVT_MW_WQ, "self_attn.q_proj.weight"},
        {KVT_MW_WK, "self_attn.k_proj.weight"},       {KVT_MW_WV, "self_attn.v_proj.weight"},
        {KVT_MW_BQ, "self_attn.q_proj.bias"},         {KVT_MW_BK, "self_attn.k_proj.bias"},
        {KVT_MW_BV, "self_attn.v_proj.bias"},         {KVT_MW_WO, "self_attn.o_proj.weight"},
        {KVT_MW_MLP_NORM, "post_attention_layernorm.weight"},
        {KVT_MW_GATE, "mlp.gate_proj.weight"},        {KVT_MW_UP, "mlp.up_proj.weight"},
        {KVT_MW_DOWN, "mlp.down_proj.weight"},
    };
    uint64_t h = c->hidden, q = (uint64_t)c->n_heads * c->head_dim,
             kv = (uint64_t)c->n_kv_heads * c->head_dim, f = c->intermediate;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        kvt_mweight_t w = names[i].which;
        if ((w == KVT_MW_BQ || w == KVT_MW_BK || w == KVT_MW_BV) && !c->qkv_bias)
            continue;
        uint64_t d0, d1 = 0;
        switch (w) {
        case KVT_MW_WQ: d0 = q, d1 = h; break;
        case KVT_MW_WK: case KVT_MW_WV: d0 = kv, d1 = h; break;
        case KVT_MW_BQ: d0 = q; break;
        case KVT_MW_BK: case KVT_MW_BV: d0 = kv; break;
        case KVT_MW_WO: d0 = h, d1 = q; break;
        case KVT_MW_GATE: case KVT_MW_UP: d0 = f, d1 = h; break;
        case KVT_MW_DOWN: d0 = h, d1 = f; break;
        default: d0 = h; break; /* the two norms */
        }
        char name[KVT_MSPEC_NAME];
        snprintf(name, sizeof(name), "model.layers.%u.%s", l, names[i].suffix);
        spec_add(s, n, w, l, name, d0, d1);
    }
}

kvt_status_t kvt_mspecs(const kvt_model_config_t *cfg, kvt_mspec_t **specs_p, size_t *n_p)
{
    size_t cap = 3 + (size_t)cfg->n_layers * 12;
    kvt_mspec_t *s = kvt_calloc("model tensor list", cap, sizeof(*s));
    if (!s)
        return KVT_ERR_NOMEM;
    size_t n = 0;
    spec_add(s, &n, KVT_MW_EMBED, 0, "model.embed_tokens.weight", cfg->vocab_size, cfg->hidden);
    for (uint32_t l = 0; l < cfg->n_layers; l++)
        layer_specs(cfg, l, s, &n);
    spec_add(s, &n, KVT_MW_FINAL_NORM, 0, "model.norm.weight", cfg->hidden, 0);
    if (!cfg->tie_embeddings)
        spec_add(s, &n, KVT_MW_LM_HEAD, 0, "lm_head.weight", cfg->vocab_size, cfg->hidden);
    *specs_p = s;
    *n_p = n;
    return KVT_OK;
}

float **kvt_mspec_slot(kvt_model_t *m, const kvt_mspec_t *spec)
{
    kvt_layer_weights_t *l = &m->layers[spec->layer];
    switch (spec->which) {
    case KVT_MW_EMBED: return &m->embed;
    case KVT_MW_FINAL_NORM: return &m->final_norm;
    case KVT_MW_LM_HEAD: return &m->lm_head;
    case KVT_MW_ATTN_NORM: return &l->attn_norm;
    case KVT_MW_WQ: return &l->wq;
    case KVT_MW_WK: return &l->wk;
    case KVT_MW_WV: return &l->wv;
    case KVT_MW_BQ: return &l->bq;
    case KVT_MW_BK: return &l->bk;
    case KVT_MW_BV: return &l->bv;
    case KVT_MW_WO: return &l->wo;
    case KVT_MW_MLP_NORM: return &l->mlp_norm;
    case KVT_MW_GATE: return &l->w_gate;
    case KVT_MW_UP: return &l->w_up;
    default: return &l->w_down;
    }
}

uint64_t kvt_model_n_params(const kvt_model_config_t *c)
{
    uint64_t h = c->hidden, q = (uint64_t)c->n_heads * c->head_dim,
             kv = (uint64_t)c->n_kv_heads * c->head_dim, f = c->intermediate;
    uint64_t layer = 2 * h + q * h + 2 * kv * h + h * q + 3 * f * h;
    if (c->qkv_bias)
        layer += q + 2 * kv;
    uint64_t emb = (uint64_t)c->vocab_size * h;
    return emb * (c->tie_embeddings ? 1 : 2) + h + layer * c->n_layers;
}

/* ---- allocation ---- */

kvt_status_t kvt_model_alloc(const kvt_model_config_t *cfg, kvt_model_t **model_p)
{
    kvt_mspec_t *specs;
    size_t n;
    kvt_status_t st = kvt_mspecs(cfg, &specs, &n);
    if (st != KVT_OK)
        return st;
    kvt_model_t *m = kvt_calloc("model", 1, sizeof(*m));
    model_priv_t *priv = kvt_calloc("model private", 1, sizeof(*priv));
    kvt_layer_weights_t *layers = kvt_calloc("model layers", cfg->n_layers, sizeof(*layers));
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += (specs[i].n_elems * sizeof(float) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    void *arena = m && priv && layers ? kvt_alloc_large("model weights", bytes) : NULL;
#ifdef MADV_HUGEPAGE
    /* Gigabytes of f32 in 4 KiB pages cost a page fault each on first
     * touch; huge pages, where the system grants them on request, cut that
     * 512-fold.  Advice only: failure changes nothing. */
    if (arena)
        madvise(arena, bytes, MADV_HUGEPAGE);
#endif
    if (!arena) {
        kvt_free(m);
        kvt_free(priv);
        kvt_free(layers);
        kvt_free(specs);
        return KVT_ERR_NOMEM;
    }
    m->cfg = *cfg;
    m->layers = layers;
    m->priv = priv;
    priv->arena = arena;
    priv->arena_bytes = bytes;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        *kvt_mspec_slot(m, &specs[i]) = (float *)((char *)arena + at);
        at += (specs[i].n_elems * sizeof(float) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    }
    if (cfg->tie_embeddings)
        m->lm_head = m->embed;
    kvt_free(specs);
    *model_p = m;
    return KVT_OK;
}

void kvt_model_destroy(kvt_model_t *model)
{
    if (!model)
        return;
    model_priv_t *priv = model->priv;
    if (priv)
        kvt_free_large(priv->arena, priv->arena_bytes);
    kvt_free(priv);
    kvt_free(model->layers);
    free(model->dir);
    kvt_free(model);
}

void kvt_model_fingerprint(const kvt_model_t *model, kvt_dtype_t kv_dtype,
                           uint32_t block_tokens, uint8_t out[KVT_FINGERPRINT_LEN])
{
    static const char tag[] = "kvtier-model-v1";
    uint8_t buf[sizeof(tag) - 1 + 32 + 8];
    memcpy(buf, tag, sizeof(tag) - 1);
    memcpy(buf + sizeof(tag) - 1, model->digest, 32);
    kvt_le_put32(buf + sizeof(tag) - 1 + 32, (uint32_t)kv_dtype);
    kvt_le_put32(buf + sizeof(tag) - 1 + 36, block_tokens);
    if (kvt_sha256(buf, sizeof(buf), out) != KVT_OK)
        memset(out, 0, KVT_FINGERPRINT_LEN); /* logged by kvt_sha256 */
}

/* ---- files, threads ---- */

kvt_status_t kvt_model_read_file(const char *path, size_t max, char **buf_p, size_t *len_p)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        kvt_log_error("cannot open file=%s err=\"%s\"", path, strerror(e));
        return e == ENOENT ? KVT_ERR_NOT_FOUND : KVT_ERR_IO;
    }
    struct stat sb;
    kvt_status_t st = KVT_OK;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        kvt_log_error("not a regular file file=%s", path);
        st = KVT_ERR_IO;
    } else if ((uint64_t)sb.st_size > max) {
        kvt_log_error("file too large file=%s bytes=%lld max=%zu", path, (long long)sb.st_size,
                      max);
        st = KVT_ERR_TOO_LARGE;
    }
    size_t len = st == KVT_OK ? (size_t)sb.st_size : 0, got = 0;
    char *buf = st == KVT_OK ? kvt_malloc("file contents", len + 1) : NULL;
    if (st == KVT_OK && !buf)
        st = KVT_ERR_NOMEM;
    while (st == KVT_OK && got < len) {
        ssize_t k = read(fd, buf + got, len - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            kvt_log_error("read failed file=%s err=\"%s\"", path, k ? strerror(errno) : "eof");
            st = KVT_ERR_IO;
        } else {
            got += (size_t)k;
        }
    }
    close(fd);
    if (st != KVT_OK) {
        kvt_free(buf);
        return st;
    }
    buf[len] = '\0';
    *buf_p = buf;
    *len_p = len;
    return KVT_OK;
}

typedef struct {
    size_t n_jobs;
    _Atomic size_t next;
    void (*fn)(void *, size_t);
    void *arg;
} par_t;

static void *par_worker(void *p)
{
    par_t *par = p;
    size_t j;
    while ((j = atomic_fetch_add(&par->next, 1)) < par->n_jobs)
        par->fn(par->arg, j);
    return NULL;
}

void kvt_model_parallel(size_t n_jobs, unsigned n_threads, void (*fn)(void *arg, size_t job),
                        void *arg)
{
    enum { MAX_THREADS = 64 };
    if (n_threads == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (unsigned)cpus;
    }
    if (n_threads > MAX_THREADS)
        n_threads = MAX_THREADS;
    if (n_threads > n_jobs)
        n_threads = n_jobs ? (unsigned)n_jobs : 1;
    par_t par = {.n_jobs = n_jobs, .fn = fn, .arg = arg};
    atomic_init(&par.next, 0);
    pthread_t th[MAX_THREADS];
    unsigned started = 0;
    while (started + 1 < n_threads && pthread_create(&th[started], NULL, par_worker, &par) == 0)
        started++; /* fewer threads if creation fails: the work still gets done */
    par_worker(&par);
    for (unsigned i = 0; i < started; i++)
        pthread_join(th[i], NULL);
}

static kvt_status_t join_path(char *out, const char *dir, const char *name)
{
    if (snprintf(out, PATH_MAX, "%s/%s", dir, name) >= PATH_MAX) {
        kvt_log_error("path too long dir=%s name=%s", dir, name);
        return KVT_ERR_INVALID;
    }
    return KVT_OK;
}

/* ---- weight sources: one file, or shards through the index ---- */

typedef struct {
    char *name;
    uint32_t file;
} wm_entry_t;

typedef struct {
    kvt_st_file_t **files;
    size_t n_files;
    wm_entry_t *wm; /* sorted by name; NULL when there is a single file */
    size_t n_wm;
    char *wm_names;  /* names and shard file names, owned */
    char index_path[PATH_MAX];
} wsrc_t;

static void wsrc_close(wsrc_t *ws)
{
    for (size_t i = 0; i < ws->n_files; i++)
        kvt_st_close(ws->files[i]);
    kvt_free(ws->files);
    for (size_t i = 0; i < ws->n_wm; i++)
        kvt_free(ws->wm[i].name);
    kvt_free(ws->wm);
    memset(ws, 0, sizeof(*ws));
}

static bool shard_name_ok(const char *s)
{
    return *s && strlen(s) < 256 && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..");
}

static int cmp_wm(const void *a, const void *b)
{
    return strcmp(((const wm_entry_t *)a)->name, ((const wm_entry_t *)b)->name);
}

/* Shard index of file name `shard`, adding it to `names` on first sight. */
static kvt_status_t shard_id(const char **names, size_t *n, const char *shard, uint32_t *id_p)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(names[i], shard)) {
            *id_p = (uint32_t)i;
            return KVT_OK;
        }
    if (*n >= MAX_SHARDS)
        return KVT_ERR_TOO_LARGE;
    names[*n] = shard;
    *id_p = (uint32_t)(*n)++;
    return KVT_OK;
}

static kvt_status_t index_err(const wsrc_t *ws, const char *field, const char *why,
                              kvt_status_t st)
{
    kvt_log_error("bad weight index file=%s field=%s error=\"%s\"", ws->index_path, field, why);
    return st;
}

/* weight_map -> ws->wm (sorted) and the shard names to open. */
static kvt_status_t parse_weight_map(wsrc_t *ws, const cJSON *map, const char **shards,
                                     size_t *n_shards)
{
    int n = cJSON_GetArraySize(map);
    if (!(ws->wm = kvt_calloc("weight map", n > 0 ? (size_t)n : 1, sizeof(*ws->wm))))
        return KVT_ERR_NOMEM;
    for (const cJSON *e = map->child; e; e = e->next) {
        if (!cJSON_IsString(e))
            return index_err(ws, "weight_map", "value is not a file name", KVT_ERR_INVALID);
        if (!shard_name_ok(e->valuestring)) {
            kvt_log_error("bad shard file name file=%s field=weight_map tensor=%.128s "
                          "shard=\"%.128s\" error=\"must be a plain file name in the directory\"",
                          ws->index_path, e->string, e->valuestring);
            return KVT_ERR_INVALID;
        }
        wm_entry_t *w = &ws->wm[ws->n_wm];
        if (shard_id(shards, n_shards, e->valuestring, &w->file) != KVT_OK)
            return index_err(ws, "weight_map", "too many shard files", KVT_ERR_TOO_LARGE);
        if (!(w->name = strdup(e->string)))
            return KVT_ERR_NOMEM;
        ws->n_wm++;
    }
    qsort(ws->wm, ws->n_wm, sizeof(*ws->wm), cmp_wm);
    for (size_t i = 1; i < ws->n_wm; i++)
        if (!strcmp(ws->wm[i - 1].name, ws->wm[i].name))
            return index_err(ws, "weight_map", "tensor listed twice", KVT_ERR_CORRUPT);
    return KVT_OK;
}

static kvt_status_t open_files(wsrc_t *ws, const char *dir, const char **names, size_t n)
{
    if (!(ws->files = kvt_calloc("weight files", n ? n : 1, sizeof(*ws->files))))
        return KVT_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        kvt_status_t st = join_path(path, dir, names[i]);
        if (st == KVT_OK)
            st = kvt_st_open(path, &ws->files[i]);
        if (st != KVT_OK)
            return st;
        ws->n_files++;
    }
    return KVT_OK;
}

static kvt_status_t wsrc_open_index(wsrc_t *ws, const char *dir)
{
    char *text;
    size_t len;
    kvt_status_t st = kvt_model_read_file(ws->index_path, MAX_INDEX_BYTES, &text, &len);
    if (st != KVT_OK)
        return st;
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const char **shards = kvt_calloc("shard names", MAX_SHARDS, sizeof(*shards));
    size_t n_shards = 0;
    if (!shards)
        st = KVT_ERR_NOMEM;
    else if (!root || !cJSON_IsObject(root))
        st = index_err(ws, "(file)", "not a JSON object", KVT_ERR_INVALID);
    else if (!cJSON_IsObject(map))
        st = index_err(ws, "weight_map", "missing or not an object", KVT_ERR_INVALID);
    else
        st = parse_weight_map(ws, map, shards, &n_shards);
    if (st == KVT_OK)
        st = open_files(ws, dir, shards, n_shards);
    kvt_free(shards);
    cJSON_Delete(root);
    kvt_free(text);
    return st;
}

/* model.safetensors if present (as transformers prefers it), else the
 * index and its shards. */
static kvt_status_t wsrc_open(wsrc_t *ws, const char *dir)
{
    memset(ws, 0, sizeof(*ws));
    char single[PATH_MAX];
    kvt_status_t st = join_path(single, dir, "model.safetensors");
    if (st == KVT_OK)
        st = join_path(ws->index_path, dir, "model.safetensors.index.json");
    if (st != KVT_OK)
        return st;
    struct stat sb;
    if (stat(single, &sb) == 0) {
        const char *name = "model.safetensors";
        st = open_files(ws, dir, &name, 1);
    } else if (stat(ws->index_path, &sb) == 0) {
        st = wsrc_open_index(ws, dir);
    } else {
        kvt_log_error("no weights in model directory dir=%s expected=model.safetensors or "
                      "model.safetensors.index.json",
                      dir);
        st = KVT_ERR_NOT_FOUND;
    }
    if (st != KVT_OK)
        wsrc_close(ws);
    return st;
}

static const kvt_st_tensor_t *wsrc_find(const wsrc_t *ws, const char *name, const char **file_p)
{
    size_t file = 0;
    *file_p = ws->wm ? ws->index_path : kvt_st_path(ws->files[0]);
    if (ws->wm) {
        wm_entry_t key = {.name = (char *)name};
        const wm_entry_t *e = bsearch(&key, ws->wm, ws->n_wm, sizeof(key), cmp_wm);
        if (!e)
            return NULL;
        file = e->file;
        *file_p = kvt_st_path(ws->files[file]);
    }
    return kvt_st_find(ws->files[file], name);
}

/* ---- resolve, convert, hash ---- */

typedef struct {
    const kvt_mspec_t *spec;
    const kvt_st_tensor_t *t;
    uint8_t xxh[16];
    float *dst; /* NULL when only hashing */
} wref_t;

static void fmt_shape(char *out, size_t cap, uint32_t rank, const uint64_t *shape)
{
    size_t at = (size_t)snprintf(out, cap, "[");
    for (uint32_t i = 0; i < rank && at < cap; i++)
        at += (size_t)snprintf(out + at, cap - at, i ? ",%llu" : "%llu",
                               (unsigned long long)shape[i]);
    if (at < cap)
        snprintf(out + at, cap - at, "]");
}

static kvt_status_t resolve(const wsrc_t *ws, const kvt_mspec_t *specs, size_t n, wref_t *refs)
{
    for (size_t i = 0; i < n; i++) {
        const char *file;
        const kvt_st_tensor_t *t = wsrc_find(ws, specs[i].name, &file);
        if (!t) {
            kvt_log_error("missing tensor file=%s tensor=%s", file, specs[i].name);
            return KVT_ERR_NOT_FOUND;
        }
        bool same = t->rank == specs[i].rank;
        for (uint32_t d = 0; same && d < t->rank; d++)
            same = t->shape[d] == specs[i].shape[d];
        if (!same) {
            char want[64], got[96];
            fmt_shape(want, sizeof(want), specs[i].rank, specs[i].shape);
            fmt_shape(got, sizeof(got), t->rank, t->shape);
            kvt_log_error("tensor shape does not match config.json file=%s tensor=%s "
                          "field=shape expected=%s got=%s",
                          file, specs[i].name, want, got);
            return KVT_ERR_MISMATCH;
        }
        refs[i] = (wref_t){.spec = &specs[i], .t = t};
    }
    return KVT_OK;
}

typedef struct {
    wref_t *refs;
    size_t n_refs;
    size_t *chunk_start; /* [n_refs + 1]: first conversion job of each ref */
} work_t;

/* Unmap file pages already hashed or converted from this process (they
 * stay in the page cache), so a 16 GB model does not add 16 GB resident to
 * its f32 copy.  The mapping is private and never written: a job still
 * reading a dropped page (the hash of a tensor whose chunks are converted
 * meanwhile, a neighbour sharing an edge page) faults it back in. */
static void drop_pages(const void *p, uint64_t len)
{
    uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + ps - 1) & ~(ps - 1), hi = ((uintptr_t)p + len) & ~(ps - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static void work_job(void *arg, size_t job)
{
    work_t *w = arg;
    if (job < w->n_refs) {
        wref_t *r = &w->refs[job];
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(r->t->data, r->t->nbytes));
        memcpy(r->xxh, c.digest, 16);
        drop_pages(r->t->data, r->t->nbytes);
        return;
    }
    size_t j = job - w->n_refs, lo = 0, hi = w->n_refs;
    while (hi - lo > 1) { /* the ref whose chunk range holds j */
        size_t mid = (lo + hi) / 2;
        if (w->chunk_start[mid] <= j)
            lo = mid;
        else
            hi = mid;
    }
    wref_t *r = &w->refs[lo];
    uint64_t first = (uint64_t)(j - w->chunk_start[lo]) * CONVERT_CHUNK;
    uint64_t count = r->t->n_elems - first < CONVERT_CHUNK ? r->t->n_elems - first : CONVERT_CHUNK;
    kvt_st_to_f32(r->t, first, count, r->dst + first);
    size_t es = r->t->dtype == KVT_DTYPE_F32 ? 4 : 2;
    drop_pages(r->t->data + first * es, count * es);
}

/* Hash every tensor; with dst set, convert it too. */
static kvt_status_t run_work(wref_t *refs, size_t n, bool convert)
{
    work_t w = {.refs = refs, .n_refs = n};
    if (!(w.chunk_start = kvt_calloc("convert jobs", n + 1, sizeof(size_t))))
        return KVT_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        w.chunk_start[i + 1] =
            w.chunk_start[i] +
            (convert ? (size_t)((refs[i].t->n_elems + CONVERT_CHUNK - 1) / CONVERT_CHUNK) : 0);
    kvt_model_parallel(n + w.chunk_start[n], 0, work_job, &w);
    kvt_free(w.chunk_start);
    return KVT_OK;
}

static int cmp_ref_name(const void *a, const void *b)
{
    const wref_t *x = *(const wref_t *const *)a, *y = *(const wref_t *const *)b;
    return strcmp(x->spec->name, y->spec->name);
}

static void sha_u32(kvt_sha256_t *h, uint32_t v)
{
    uint8_t b[4];
    kvt_le_put32(b, v);
    kvt_sha256_update(h, b, 4);
}

static kvt_status_t compute_digest(const kvt_model_config_t *cfg, const uint8_t tok[32],
                                   wref_t *refs, size_t n, uint8_t out[32])
{
    const wref_t **sorted = kvt_malloc("digest order", (n ? n : 1) * sizeof(*sorted));
    kvt_sha256_t h;
    if (!sorted)
        return KVT_ERR_NOMEM;
    if (kvt_sha256_init(&h) != KVT_OK) {
        kvt_free(sorted);
        return KVT_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        sorted[i] = &refs[i];
    qsort(sorted, n, sizeof(*sorted), cmp_ref_name);
    char canon[1024];
    size_t clen = kvt_model_config_canonical(cfg, canon, sizeof(canon));
    kvt_sha256_update(&h, "kvtier-model-digest-v1\n", 23);
    sha_u32(&h, (uint32_t)clen);
    kvt_sha256_update(&h, canon, clen);
    kvt_sha256_update(&h, tok, 32);
    sha_u32(&h, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const kvt_st_tensor_t *t = sorted[i]->t;
        size_t len = strlen(sorted[i]->spec->name);
        sha_u32(&h, (uint32_t)len);
        kvt_sha256_update(&h, sorted[i]->spec->name, len);
        sha_u32(&h, (uint32_t)t->dtype);
        sha_u32(&h, t->rank);
        for (uint32_t d = 0; d < t->rank; d++) {
            uint8_t b[8];
            kvt_le_put64(b, t->shape[d]);
            kvt_sha256_update(&h, b, 8);
        }
        kvt_sha256_update(&h, sorted[i]->xxh, 16);
    }
    kvt_sha256_final(&h, out);
    kvt_free(sorted);
    return KVT_OK;
}

/* SHA-256 of DIR/tokenizer.json, streamed. */
static kvt_status_t hash_tokenizer(const char *dir, uint8_t out[32])
{
    char path[PATH_MAX];
    kvt_status_t st = join_path(path, dir, "tokenizer.json");
    if (st != KVT_OK)
        return st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno; /* the log call may change errno */
        kvt_log_error("cannot open tokenizer file=%s err=\"%s\"", path, strerror(err));
        return err == ENOENT ? KVT_ERR_NOT_FOUND : KVT_ERR_IO;
    }
    kvt_sha256_t h;
    if ((st = kvt_sha256_init(&h)) != KVT_OK) {
        close(fd);
        return st;
    }
    static _Thread_local uint8_t buf[1 << 16];
    for (;;) {
        ssize_t k = read(fd, buf, sizeof(buf));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            kvt_log_error("read failed file=%s err=\"%s\"", path, strerror(errno));
            st = KVT_ERR_IO;
        }
        if (k <= 0)
            break;
        kvt_sha256_update(&h, buf, (size_t)k);
    }
    close(fd);
    if (st == KVT_OK)
        kvt_sha256_final(&h, out);
    else
        kvt_sha256_cleanup(&h);
    return st;
}

static kvt_status_t read_config(const char *dir, kvt_model_config_t *cfg)
{
    char path[PATH_MAX], *text;
    size_t len;
    kvt_status_t st = join_path(path, dir, "config.json");
    if (st == KVT_OK)
        st = kvt_model_read_file(path, KVT_CONFIG_MAX_BYTES, &text, &len);
    if (st != KVT_OK)
        return st;
    st = kvt_model_config_parse(text, len, path, cfg);
    kvt_free(text);
    return st;
}

/* Load (model != NULL: convert into it) or only inspect a directory. */
static kvt_status_t load_dir(const char *dir, kvt_model_config_t *cfg, kvt_model_t **model_p,
                             uint8_t digest[32])
{
    uint8_t tok[32];
    kvt_mspec_t *specs = NULL;
    size_t n = 0;
    wref_t *refs = NULL;
    wsrc_t ws;
    kvt_status_t st = read_config(dir, cfg);
    if (st == KVT_OK)
        st = hash_tokenizer(dir, tok);
    if (st != KVT_OK)
        return st;
    if ((st = wsrc_open(&ws, dir)) != KVT_OK)
        return st;
    if ((st = kvt_mspecs(cfg, &specs, &n)) == KVT_OK &&
        !(refs = kvt_calloc("tensor refs", n, sizeof(*refs))))
        st = KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = resolve(&ws, specs, n, refs);
    kvt_model_t *m = NULL;
    if (st == KVT_OK && model_p && (st = kvt_model_alloc(cfg, &m)) == KVT_OK)
        for (size_t i = 0; i < n; i++)
            refs[i].dst = *kvt_mspec_slot(m, refs[i].spec);
    if (st == KVT_OK)
        st = run_work(refs, n, model_p != NULL);
    if (st == KVT_OK)
        st = compute_digest(cfg, tok, refs, n, digest);
    wsrc_close(&ws);
    kvt_free(refs);
    kvt_free(specs);
    if (st != KVT_OK) {
        kvt_model_destroy(m);
        return st;
    }
    if (model_p)
        *model_p = m;
    return KVT_OK;
}

kvt_status_t kvt_model_inspect(const char *dir, kvt_model_config_t *cfg_p, uint8_t digest[32])
{
    kvt_model_config_t cfg;
    uint8_t d[32];
    kvt_status_t st = load_dir(dir, &cfg, NULL, d);
    if (st == KVT_OK) {
        *cfg_p = cfg;
        memcpy(digest, d, 32);
    }
    return st;
}

kvt_status_t kvt_model_load(const char *dir, kvt_model_t **model_p)
{
    kvt_model_config_t cfg;
    uint8_t d[32];
    kvt_model_t *m = NULL;
    kvt_status_t st = load_dir(dir, &cfg, &m, d);
    if (st != KVT_OK)
        return st;
    memcpy(m->digest, d, 32);
    if (!(m->dir = strdup(dir))) {
        kvt_model_destroy(m);
        return KVT_ERR_NOMEM;
    }
    *model_p = m;
    kvt_log_info("model loaded dir=%s arch=%s layers=%u params=%llu", dir,
                 kvt_model_arch_class(cfg.arch), cfg.n_layers,
                 (unsigned long long)kvt_model_n_params(&cfg));
    return KVT_OK;
}
