/* `kvtier bench engine`: engine prefill and decode throughput, each
 * beside a same-run reference (STYLE.md: benchmarks are programs).  With
 * --device cuda:N the GPU engine is measured instead (the second half of
 * this file, "the GPU bench").
 *
 * CPU:
 * The reference is this machine's achieved GFLOP/s on a plain matrix
 * product of the model's largest decoder-layer weight shape ([intermediate]
 * x [hidden]) with the same thread count and the same number of rows as the
 * engine multiplies at once: the prefill chunk for prefill, the batch for
 * decode (a product with few rows streams the weights, like decode does).
 * The engine's figure is turned into GFLOP/s by counting its arithmetic:
 * 2 x (the layer projections + MLP) per token, attention over the context,
 * and the lm_head for the positions whose logits it computes.
 *
 * The plain product is C[M][N] = A[M][K] B[K][N], row-major: 4 x 32 tiles
 * of C kept in vector registers over the k loop (GCC vector extensions, the
 * widest of AVX-512 / AVX2 / SSE the CPU has), tiles dealt over threads:
 * what a careful C programmer writes without a BLAS.  N must be a multiple
 * of 32 (every preset's hidden and intermediate sizes are). */
#include "cli/bench_common.h"
#include "cli/cli.h"
#include "cli/json_out.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "engine/device.h"
#include "engine/engine.h"
#include "engine/model.h"

#include <cjson/cJSON.h>
#include <limits.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const kvt_opt_t g_opts[] = {
    {"model", KVT_OPT_STR, NULL, "model directory"},
    {"device", KVT_OPT_STR, "cpu", "cpu|cuda:N (cuda:N needs a build with CUDA)"},
    {"threads", KVT_OPT_U64, "0", "worker threads (0 = all cores)"},
    {"kv-dtype", KVT_OPT_STR, "bf16", "KV cache dtype: bf16|f32"},
    {"prompt-tokens", KVT_OPT_U64, "512", "cpu: prefill length"},
    {"decode-tokens", KVT_OPT_U64, "32", "decode steps per batch size"},
    {"rounds", KVT_OPT_U64, "3", "prefill repetitions (the median is reported)"},
    {"prefill-sizes", KVT_OPT_STR, "512,2048,8192",
     "cuda: prefill lengths, each fresh and on top of as many cached tokens"},
    {"decode-batches", KVT_OPT_STR, "1,16,64", "cuda: decode batch sizes"},
    {"decode-context", KVT_OPT_U64, "512", "cuda: tokens per sequence before decoding"},
    {"move-blocks", KVT_OPT_U64, "1000", "cuda: blocks moved GPU -> host -> GPU"},
    {"pool-blocks", KVT_OPT_U64, "0", "cuda: pool slots (0 = the engine's default)"},
    {"prefill-chunk", KVT_OPT_U64, "0", "cuda: tokens per prefill pass (0 = default)"},
    {"hf", KVT_OPT_STR, "auto",
     "cuda: auto|off -- run tools/hf_bench.py (transformers, SDPA) as a reference"},
    {"hf-script", KVT_OPT_STR, NULL, "cuda: path of tools/hf_bench.py (default: found)"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

static const char g_usage[] =
    "usage: kvtier bench engine --model DIR [--device cpu|cuda:N] [--threads N] [--json]";
static const char g_about[] =
    "CPU: engine prefill and decode (batch 1 and 8) throughput, each beside this machine's\n"
    "GFLOP/s on a plain matrix product of the model's largest layer shape.\n"
    "cuda:N: prefill TFLOP/s (fresh and on a cached prefix), decode tokens/s and block\n"
    "moves GB/s, beside cuBLAS bf16 products of the same shapes, copy bandwidths, the\n"
    "weight-streaming bound and Hugging Face transformers on the same model.";

#define BATCH_MAX 8
#define DECODE_CONTEXT 64

/* ---- the reference product ---- */

typedef struct {
    const float *a, *b;
    float *c;
    size_t m, k, n;
    unsigned part, parts;
    unsigned reps; /* the product is repeated this many times */
} gemm_job_t;

/* Register tile: up to 4 rows x 32 columns of C held in 8 vectors of 16
 * floats across the whole k loop (GCC vector extensions: AVX-512 registers
 * in the avx512f clone, pairs or quads of narrower ones elsewhere). */
enum { TILE_R = 4, TILE_C = 32 };
typedef float v16f __attribute__((vector_size(64), aligned(4)));

#define GEMM_TILE_BODY                                                                       \
    v16f acc[TILE_R][2] = {{{0}}};                                                           \
    for (size_t kk = 0; kk < j->k; kk++) {                                                   \
        v16f b0 = *(const v16f *)(j->b + kk * j->n + j0);                                    \
        v16f b1 = *(const v16f *)(j->b + kk * j->n + j0 + 16);                               \
        for (size_t r = 0; r < rows; r++) {                                                  \
            float av = j->a[(i0 + r) * j->k + kk];                                           \
            acc[r][0] += av * b0;                                                            \
            acc[r][1] += av * b1;                                                            \
        }                                                                                    \
    }                                                                                        \
    for (size_t r = 0; r < rows; r++) {                                                      \
        *(v16f *)(j->c + (i0 + r) * j->n + j0) = acc[r][0];                                  \
        *(v16f *)(j->c + (i0 + r) * j->n + j0 + 16) = acc[r][1];                             \
    }

__attribute__((target("avx512f,fma"))) static void
gemm_tile_avx512(const gemm_job_t *j, size_t i0, size_t rows, size_t j0)
{
    GEMM_TILE_BODY
}

__attribute__((target("avx2,fma"))) static void
gemm_tile_avx2(const gemm_job_t *j, size_t i0, size_t rows, size_t j0)
{
    GEMM_TILE_BODY
}

static void gemm_tile_plain(const gemm_job_t *j, size_t i0, size_t rows, size_t j0)
{
    GEMM_TILE_BODY
}

typedef void (*gemm_tile_fn)(const gemm_job_t *, size_t, size_t, size_t);

static gemm_tile_fn gemm_tile_pick(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return gemm_tile_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return gemm_tile_avx2;
    return gemm_tile_plain;
}

static void *gemm_worker(void *arg)
{
    const gemm_job_t *j = arg;
    gemm_tile_fn tile = gemm_tile_pick();
    size_t row_blocks = (j->m + TILE_R - 1) / TILE_R, col_tiles = j->n / TILE_C;
    /* Work items are (row block, column tile) pairs dealt round-robin, so a
     * product of one row still spreads over every thread.  Threads repeat
     * their share without meeting in between: no per-product thread start
     * or barrier is charged to the reference. */
    for (unsigned rep = 0; rep < j->reps; rep++) {
        for (size_t w = j->part; w < row_blocks * col_tiles; w += j->parts) {
            size_t i0 = (w / col_tiles) * TILE_R, j0 = (w % col_tiles) * TILE_C;
            tile(j, i0, j->m - i0 < TILE_R ? j->m - i0 : TILE_R, j0);
        }
    }
    return NULL;
}

static void gemm_run(const float *a, const float *b, float *c, size_t m, size_t k, size_t n,
                     unsigned threads, unsigned reps)
{
    pthread_t tid[256];
    gemm_job_t jobs[256];
    if (threads > 256)
        threads = 256;
    for (unsigned t = 0; t < threads; t++) {
        jobs[t] = (gemm_job_t){a, b, c, m, k, n, t, threads, reps};
        if (t > 0 && pthread_create(&tid[t], NULL, gemm_worker, &jobs[t]) != 0)
            jobs[t].parts = 0; /* not started: run it below */
    }
    gemm_worker(&jobs[0]);
    for (unsigned t = 1; t < threads; t++) {
        if (jobs[t].parts)
            pthread_join(tid[t], NULL);
        else
            gemm_worker(&(gemm_job_t){a, b, c, m, k, n, t, threads, reps});
    }
}

/* GFLOP/s of the plain product with m rows, the best of a few runs lasting
 * at least ~0.2 s each. */
static double gemm_gflops(size_t m, size_t k, size_t n, unsigned threads)
{
    float *a = kvt_malloc("bench gemm a", m * k * sizeof(float));
    float *b = kvt_malloc("bench gemm b", k * n * sizeof(float));
    float *c = kvt_malloc("bench gemm c", m * n * sizeof(float));
    double best = 0;
    if (a && b && c) {
        for (size_t i = 0; i < m * k; i++)
            a[i] = (float)((i * 7919) % 1000) * 1e-3f;
        for (size_t i = 0; i < k * n; i++)
            b[i] = (float)((i * 104729) % 1000) * 1e-3f;
        double flop = 2.0 * (double)m * (double)k * (double)(n / TILE_C * TILE_C);
        /* Calibrate the repetitions to ~0.2 s, then keep the best of 3. */
        unsigned reps = 1;
        for (;;) {
            uint64_t t0 = kvt_time_ns();
            gemm_run(a, b, c, m, k, n, threads, reps);
            if (kvt_time_ns() - t0 > 50000000ull || reps >= (1u << 24))
                break;
            reps *= 2;
        }
        reps *= 4;
        for (int round = 0; round < 3; round++) {
            uint64_t t0 = kvt_time_ns();
            gemm_run(a, b, c, m, k, n, threads, reps);
            double g = flop * reps / (double)(kvt_time_ns() - t0);
            if (g > best)
                best = g;
        }
    }
    kvt_free(a);
    kvt_free(b);
    kvt_free(c);
    return best;
}

/* ---- engine arithmetic ---- */

/* FLOPs of one token through the decoder layers at context length ctx. */
static double token_flops(const kvt_model_config_t *c, double ctx)
{
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double proj = 2.0 * c->hidden * (q + 2 * kv + q);
    double mlp = 2.0 * 3.0 * c->hidden * c->intermediate;
    double attn = 4.0 * q * ctx;
    return (proj + mlp + attn) * c->n_layers;
}

static double lm_head_flops(const kvt_model_config_t *c)
{
    return 2.0 * c->hidden * c->vocab_size;
}

static void fill_tokens(uint32_t *ids, size_t n, uint32_t vocab, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids[i] = (uint32_t)(x % vocab);
    }
}

typedef struct {
    kvt_engine_t *engine;
    const kvt_model_config_t *cfg;
    float *logits;
    uint32_t *ids;
} bench_ctx_t;

/* Seconds for one prefill of n tokens into a fresh sequence. */
static kvt_status_t time_prefill(bench_ctx_t *b, size_t n, uint64_t seed, double *sec_p)
{
    kvt_block_key_t root;
    memset(&root, 0, sizeof(root));
    root.b[0] = (uint8_t)seed; /* a fresh chain each round: nothing reused */
    root.b[1] = (uint8_t)(seed >> 8);
    kvt_seq_t *seq;
    kvt_status_t st = kvt_engine_seq_create(b->engine, &root, &seq);
    if (st != KVT_OK)
        return st;
    fill_tokens(b->ids, n, b->cfg->vocab_size, seed);
    uint64_t t0 = kvt_time_ns();
    st = kvt_engine_prefill(b->engine, seq, b->ids, n, b->logits, 0);
    *sec_p = (double)(kvt_time_ns() - t0) / 1e9;
    kvt_engine_seq_destroy(b->engine, seq);
    return st;
}

/* Tokens/s of `steps` decode steps over `batch` sequences of DECODE_CONTEXT
 * tokens each. */
static kvt_status_t time_decode(bench_ctx_t *b, size_t batch, size_t steps, double *tps_p)
{
    kvt_seq_t *seqs[BATCH_MAX] = {0};
    uint32_t next[BATCH_MAX];
    kvt_status_t st = KVT_OK;
    for (size_t s = 0; s < batch && st == KVT_OK; s++) {
        kvt_block_key_t root = {{0}};
        root.b[0] = 0xd0;
        root.b[1] = (uint8_t)s;
        st = kvt_engine_seq_create(b->engine, &root, &seqs[s]);
        fill_tokens(b->ids, DECODE_CONTEXT, b->cfg->vocab_size, 1000 + s);
        if (st == KVT_OK)
            st = kvt_engine_prefill(b->engine, seqs[s], b->ids, DECODE_CONTEXT, NULL, 0);
        next[s] = b->ids[0];
    }
    uint64_t t0 = kvt_time_ns();
    for (size_t i = 0; i < steps && st == KVT_OK; i++)
        st = kvt_engine_decode(b->engine, seqs, next, batch, b->logits);
    double sec = (double)(kvt_time_ns() - t0) / 1e9;
    *tps_p = sec > 0 ? (double)(batch * steps) / sec : 0;
    for (size_t s = 0; s < batch; s++)
        if (seqs[s])
            kvt_engine_seq_destroy(b->engine, seqs[s]);
    return st;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Two rows: tokens/s beside the tokens/s the reference product's GFLOP/s
 * would give at this arithmetic per token, and GFLOP/s beside it. */
static void add_pair(kvt_bench_results_t *res, const char *what, size_t n, double tps,
                     double flops_per_tok, size_t m, const kvt_model_config_t *c, double ref)
{
    char name[48], ref_name[48];
    snprintf(name, sizeof(name), "%s %zu tok/s", what, n);
    snprintf(ref_name, sizeof(ref_name), "gemm %zux%ux%u at same flop", m, c->hidden,
             c->intermediate);
    kvt_bench_add(res, name, tps, "tok/s", ref_name, ref * 1e9 / flops_per_tok, false);
    snprintf(name, sizeof(name), "%s %zu GFLOP/s", what, n);
    snprintf(ref_name, sizeof(ref_name), "gemm %zux%ux%u GFLOP/s", m, c->hidden,
             c->intermediate);
    kvt_bench_add(res, name, tps * flops_per_tok / 1e9, "GFLOP/s", ref_name, ref, false);
}

static kvt_status_t bench_prefill(bench_ctx_t *b, size_t n, unsigned rounds, unsigned threads,
                                  uint32_t chunk, kvt_bench_results_t *res)
{
    double sec[16];
    rounds = rounds < 1 ? 1 : rounds > 16 ? 16 : rounds;
    for (unsigned r = 0; r < rounds; r++) {
        kvt_status_t st = time_prefill(b, n, r + 1, &sec[r]);
        if (st != KVT_OK)
            return st;
    }
    qsort(sec, rounds, sizeof(double), cmp_double);
    double s = sec[rounds / 2];
    double flops = token_flops(b->cfg, (double)n / 2) * (double)n + lm_head_flops(b->cfg);
    size_t m = n < chunk ? n : chunk;
    double ref = gemm_gflops(m, b->cfg->hidden, b->cfg->intermediate, threads);
    add_pair(res, "prefill", n, (double)n / s, flops / (double)n, m, b->cfg, ref);
    return KVT_OK;
}

static kvt_status_t bench_decode(bench_ctx_t *b, size_t batch, size_t steps, unsigned threads,
                                 kvt_bench_results_t *res)
{
    double tps;
    kvt_status_t st = time_decode(b, batch, steps, &tps);
    if (st != KVT_OK)
        return st;
    double ctx = DECODE_CONTEXT + (double)steps / 2;
    double per_tok = token_flops(b->cfg, ctx) + lm_head_flops(b->cfg);
    double ref = gemm_gflops(batch, b->cfg->hidden, b->cfg->intermediate, threads);
    add_pair(res, "decode batch", batch, tps, per_tok, batch, b->cfg, ref);
    return KVT_OK;
}

static int run_bench(const kvt_config_t *cfg, const char *dir)
{
    kvt_engine_opts_t eo = {
        .n_threads = (uint32_t)kvt_config_u64(cfg, "threads", 0),
        .kv_dtype = strcmp(kvt_config_str(cfg, "kv-dtype"), "f32") ? KVT_DTYPE_BF16
                                                                     : KVT_DTYPE_F32,
    };
    unsigned threads = eo.n_threads ? eo.n_threads : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = kvt_config_u64(cfg, "prompt-tokens", 512);
    size_t steps = kvt_config_u64(cfg, "decode-tokens", 32);
    kvt_model_t *model = NULL;
    bench_ctx_t b = {0};
    kvt_bench_results_t res = {0};
    kvt_status_t st = kvt_model_load(dir, &model);
    if (st == KVT_OK && (n == 0 || n >= model->cfg.max_pos || steps == 0 ||
                         steps > model->cfg.max_pos - DECODE_CONTEXT)) {
        kvt_log_error("bad --prompt-tokens or --decode-tokens max_position_embeddings=%u",
                      model->cfg.max_pos);
        st = KVT_ERR_INVALID;
    }
    if (st == KVT_OK)
        st = kvt_engine_create(model, &eo, &b.engine);
    if (st == KVT_OK) {
        b.cfg = &model->cfg;
        b.logits = kvt_malloc("bench logits", (size_t)BATCH_MAX * model->cfg.vocab_size * 4);
        b.ids = kvt_malloc("bench ids", (n > DECODE_CONTEXT ? n : DECODE_CONTEXT) * 4);
        st = b.logits && b.ids ? KVT_OK : KVT_ERR_NOMEM;
    }
    uint32_t chunk = 256; /* the engine's default prefill chunk */
    if (st == KVT_OK)
        st = bench_prefill(&b, n, (unsigned)kvt_config_u64(cfg, "rounds", 3), threads, chunk,
                           &res);
    if (st == KVT_OK)
        st = bench_decode(&b, 1, steps, threads, &res);
    if (st == KVT_OK)
        st = bench_decode(&b, BATCH_MAX, steps, threads, &res);
    int rc = KVT_EXIT_FAIL;
    if (st == KVT_OK) {
        if (kvt_config_bool(cfg, "json"))
            rc = kvt_bench_print_json(&res, "engine", dir, NULL);
        else {
            kvt_bench_print_table(&res);
            rc = KVT_EXIT_OK;
        }
    } else {
        kvt_log_error("bench engine failed status=%s", kvt_status_str(st));
    }
    if (b.engine)
        kvt_engine_destroy(b.engine);
    kvt_model_destroy(model);
    kvt_free(b.logits);
    kvt_free(b.ids);
    return rc;
}

/* ==== the GPU bench (--device cuda:N) ====
 *
 * Engine figures, each timed with kvt_time_ns around whole engine calls
 * (every GPU pass ends with a stream synchronize, so a call's return means
 * its work is done), after a warm-up prefill and decode:
 *   prefill N           N tokens into a fresh sequence (median of --rounds);
 *   prefill N on N      N new tokens resumed on top of N cached ones (the
 *                       prefix is held by another sequence; each round's new
 *                       tokens differ, so nothing past the prefix is reused);
 *   decode batch B      B sequences of --decode-context tokens, then
 *                       --decode-tokens steps of one token each;
 *   block d2h / h2d     --move-blocks full blocks out through
 *                       kvt_engine_seq_blocks (copy + header checksums) and
 *                       back in through kvt_engine_pool_put_batch
 *                       (verification, staging, copy) under another root;
 *   block h2d staged    the same images under a third root, each batch
 *                       placed in kvt_engine_stage_buf first (untimed, as
 *                       tier_io reads into it), then pool_put_batch timed
 *                       (verification and copy only).
 * Timed regions: seq_blocks calls alone (the bench's copy out of the
 * staging is not timed), the one pool_put_batch call (its staging copy
 * from pageable memory included), the staged pool_put_batch calls.
 * References, measured in the same run on the same GPU:
 *   cuBLAS bf16 products [tokens x hidden] x [hidden x intermediate]
 *   through kvt_gpu_gemm_bf16 (the engine's GEMM call), TFLOP/s;
 *   Hugging Face transformers (tools/hf_bench.py: bf16, SDPA) on the same
 *   model directory, run first as a child so it has the GPU to itself;
 *   without python3 + torch + transformers the tok/s rows fall back to the
 *   cuBLAS rate at the same arithmetic, and a note says so;
 *   pinned host <-> device copies of the same bytes in staging-sized
 *   pieces; the decode batch 1 bound of streaming every bf16 weight once
 *   per token at the device-to-device copy rate (bytes read + written). */

#define GPU_LIST_MAX 8

typedef struct {
    size_t prefill[GPU_LIST_MAX], n_prefill;
    size_t batch[GPU_LIST_MAX], n_batch;
    size_t ctx, steps, rounds, move_blocks;
    double hf_prefill[GPU_LIST_MAX][2]; /* [size][cached?] tok/s, 0 = none */
    double hf_decode[GPU_LIST_MAX];
    char hf_note[192];
} gpu_plan_t;

typedef struct {
    kvt_engine_t *e;
    const kvt_model_config_t *cfg;
    float *logits;
    uint32_t *ids;
    size_t ids_cap;
    uint64_t roots;
} gpu_ctx_t;

static bool parse_list(const char *text, size_t *out, size_t *n_p)
{
    size_t n = 0;
    while (text && *text) {
        char *end;
        unsigned long long v = strtoull(text, &end, 10);
        if (end == text || v == 0 || n == GPU_LIST_MAX || (*end && *end != ','))
            return false;
        out[n++] = (size_t)v;
        text = *end ? end + 1 : end;
    }
    *n_p = n;
    return n > 0;
}

static void list_text(const size_t *v, size_t n, char *text, size_t cap)
{
    size_t at = 0;
    text[0] = '\0';
    for (size_t i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(text + at, cap - at, "%s%zu", i ? "," : "", v[i]);
}

/* --hf-script, else tools/hf_bench.py under the working directory or two
 * levels above the binary (build/cli/kvtier -> tools/). */
static bool find_hf_script(const kvt_config_t *cfg, char *path, size_t cap)
{
    const char *given = kvt_config_str(cfg, "hf-script");
    if (given) {
        snprintf(path, cap, "%s", given);
        return access(path, R_OK) == 0;
    }
    snprintf(path, cap, "tools/hf_bench.py");
    if (access(path, R_OK) == 0)
        return true;
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (k <= 0)
        return false;
    exe[k] = '\0';
    for (int up = 0; up < 4; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash)
            return false;
        *slash = '\0';
        if ((size_t)snprintf(path, cap, "%s/tools/hf_bench.py", exe) < cap &&
            access(path, R_OK) == 0)
            return true;
    }
    return false;
}

static void hf_line(gpu_plan_t *p, const char *line)
{
    if (strncmp(line, "hf ", 3) != 0) {
        if (!strncmp(line, "skip ", 5) || !strncmp(line, "error ", 6))
            snprintf(p->hf_note, sizeof(p->hf_note), "hf reference: %.160s", line);
        else
            kvt_log_info("hf_bench: %s", line);
        return;
    }
    cJSON *j = cJSON_Parse(line + 3);
    const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(j, "kind"));
    double tps = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "tok_s"));
    if (kind && !strcmp(kind, "prefill")) {
        double n = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "n"));
        double cached = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "cached"));
        for (size_t i = 0; i < p->n_prefill; i++)
            if ((double)p->prefill[i] == n)
                p->hf_prefill[i][cached > 0] = tps;
    } else if (kind && !strcmp(kind, "decode")) {
        double b = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "batch"));
        for (size_t i = 0; i < p->n_batch; i++)
            if ((double)p->batch[i] == b)
                p->hf_decode[i] = tps;
    }
    cJSON_Delete(j);
}

/* Run tools/hf_bench.py and collect its figures (before our engine takes
 * the GPU's memory). */
static void hf_reference(const kvt_config_t *cfg, const char *dir, int dev, gpu_plan_t *p)
{
    char py[PATH_MAX], script[PATH_MAX], sizes[128], batches[128], devs[16], ctx[24],
        steps[24], rounds[24];
    snprintf(p->hf_note, sizeof(p->hf_note), "hf reference: ok");
    if (!strcmp(kvt_config_str(cfg, "hf"), "off")) {
        snprintf(p->hf_note, sizeof(p->hf_note), "hf reference: off (--hf off)");
        return;
    }
    if (!kvt_bench_which("python3", py, sizeof(py)) || !find_hf_script(cfg, script,
                                                                        sizeof(script))) {
        snprintf(p->hf_note, sizeof(p->hf_note),
                 "hf reference: skipped (no python3 in PATH or no tools/hf_bench.py)");
        return;
    }
    list_text(p->prefill, p->n_prefill, sizes, sizeof(sizes));
    list_text(p->batch, p->n_batch, batches, sizeof(batches));
    snprintf(devs, sizeof(devs), "%d", dev);
    snprintf(ctx, sizeof(ctx), "%zu", p->ctx);
    snprintf(steps, sizeof(steps), "%zu", p->steps);
    snprintf(rounds, sizeof(rounds), "%zu", p->rounds);
    char *argv[] = {py, script, "--model", (char *)dir, "--device", devs, "--prefill", sizes,
                    "--batches", batches, "--context", ctx, "--steps", steps, "--rounds",
                    rounds, NULL};
    kvt_bench_child_t ch;
    if (kvt_bench_child_spawn(&ch, argv, "PYTHONUNBUFFERED=1", true, false) != KVT_OK) {
        snprintf(p->hf_note, sizeof(p->hf_note), "hf reference: skipped (cannot start it)");
        return;
    }
    char line[1024];
    kvt_status_t st;
    while ((st = kvt_bench_child_line(&ch, line, sizeof(line), 1200 * 1000)) == KVT_OK ||
           st == KVT_ERR_TOO_LARGE)
        if (st == KVT_OK)
            hf_line(p, line);
    int code = -1;
    if (kvt_bench_child_wait(&ch, 30000, &code) != KVT_OK)
        kvt_bench_child_stop(&ch, 2000);
    if (st == KVT_ERR_AGAIN)
        snprintf(p->hf_note, sizeof(p->hf_note), "hf reference: timed out, partial");
    else if (code != 0 && !strncmp(p->hf_note, "hf reference: ok", 16))
        snprintf(p->hf_note, sizeof(p->hf_note), "hf reference: exited %d, partial", code);
}

static kvt_block_key_t gpu_root(gpu_ctx_t *g)
{
    kvt_block_key_t r;
    memset(&r, 0, sizeof(r));
    uint64_t v = ++g->roots;
    memcpy(r.b, &v, sizeof(v));
    r.b[31] = 0x9b; /* apart from the CPU bench's roots */
    return r;
}

static kvt_status_t seq_with(gpu_ctx_t *g, const kvt_block_key_t *root, kvt_seq_t **s_p)
{
    return kvt_engine_seq_create(g->e, root, s_p);
}

/* Median seconds of `rounds` prefills of n tokens; cached: on top of n
 * tokens that another sequence holds. */
static kvt_status_t gpu_prefill(gpu_ctx_t *g, size_t n, bool cached, size_t rounds,
                                double *sec_p)
{
    double sec[16];
    rounds = rounds < 1 ? 1 : rounds > 16 ? 16 : rounds;
    kvt_block_key_t root = gpu_root(g);
    kvt_seq_t *holder = NULL;
    kvt_status_t st = KVT_OK;
    if (cached) {
        fill_tokens(g->ids, n, g->cfg->vocab_size, g->roots * 7919);
        st = seq_with(g, &root, &holder);
        if (st == KVT_OK)
            st = kvt_engine_prefill(g->e, holder, g->ids, n, NULL, 0);
    }
    for (size_t r = 0; r < rounds && st == KVT_OK; r++) {
        kvt_block_key_t fresh = gpu_root(g);
        kvt_seq_t *s = NULL;
        size_t reused = 0, off = cached ? n : 0;
        fill_tokens(g->ids + off, n, g->cfg->vocab_size, g->roots * 104729);
        st = seq_with(g, cached ? &root : &fresh, &s);
        if (st == KVT_OK && cached)
            st = kvt_engine_seq_reuse(g->e, s, g->ids, 2 * n, &reused);
        if (st == KVT_OK && reused != off) {
            kvt_log_error("bench: cached prefix not reused reused=%zu want=%zu", reused, off);
            st = KVT_ERR_INVALID;
        }
        uint64_t t0 = kvt_time_ns();
        if (st == KVT_OK)
            st = kvt_engine_prefill(g->e, s, g->ids + off, n, g->logits, 0);
        sec[r] = (double)(kvt_time_ns() - t0) / 1e9;
        if (s)
            kvt_engine_seq_destroy(g->e, s);
    }
    if (holder)
        kvt_engine_seq_destroy(g->e, holder);
    qsort(sec, rounds, sizeof(double), cmp_double);
    *sec_p = sec[rounds / 2];
    return st;
}

static kvt_status_t gpu_decode(gpu_ctx_t *g, size_t batch, size_t ctx, size_t steps,
                               double *tps_p)
{
    kvt_seq_t **seqs = kvt_calloc("bench seqs", batch, sizeof(*seqs));
    uint32_t *next = kvt_calloc("bench next", batch, sizeof(uint32_t));
    kvt_status_t st = seqs && next ? KVT_OK : KVT_ERR_NOMEM;
    for (size_t i = 0; i < batch && st == KVT_OK; i++) {
        kvt_block_key_t root = gpu_root(g);
        fill_tokens(g->ids, ctx, g->cfg->vocab_size, g->roots * 31);
        st = seq_with(g, &root, &seqs[i]);
        if (st == KVT_OK)
            st = kvt_engine_prefill(g->e, seqs[i], g->ids, ctx, NULL, 0);
        next[i] = g->ids[ctx / 2];
    }
    for (int w = 0; w < 2 && st == KVT_OK; w++)
        st = kvt_engine_decode(g->e, seqs, next, batch, g->logits);
    uint64_t t0 = kvt_time_ns();
    for (size_t i = 0; i < steps && st == KVT_OK; i++)
        st = kvt_engine_decode(g->e, seqs, next, batch, g->logits);
    double sec = (double)(kvt_time_ns() - t0) / 1e9;
    *tps_p = sec > 0 ? (double)(batch * steps) / sec : 0;
    for (size_t i = 0; seqs && i < batch; i++)
        if (seqs[i])
            kvt_engine_seq_destroy(g->e, seqs[i]);
    kvt_free(seqs);
    kvt_free(next);
    return st;
}

/* The images again under a fresh root, as tier_io loads them: each batch
 * of the staging's size is copied into kvt_engine_stage_buf (not timed:
 * a tier reads straight into it), then one timed pool_put_batch verifies
 * and copies it from there. */
static kvt_status_t gpu_put_staged(gpu_ctx_t *g, size_t nb, const uint8_t *host,
                                   kvt_block_header_t *hdrs, const void **ptrs,
                                   kvt_status_t *sts, uint64_t *ns_p)
{
    const kvt_block_identity_t *id = kvt_engine_identity(g->e);
    size_t B = id->layout.block_tokens, pay = kvt_block_layout_payload_bytes(&id->layout);
    size_t S = kvt_engine_batch_blocks(g->e);
    kvt_block_key_t parent = gpu_root(g);
    kvt_status_t st = KVT_OK;
    for (size_t i = 0; i < nb && st == KVT_OK; i++) {
        st = kvt_block_header_make(&hdrs[i], id, &parent, (uint32_t)i, g->ids + i * B,
                                   host + i * pay);
        parent = hdrs[i].key;
    }
    *ns_p = 0;
    for (size_t i = 0; i < nb && st == KVT_OK; i += S) {
        size_t m = nb - i < S ? nb - i : S;
        for (size_t j = 0; j < m; j++) {
            ptrs[j] = kvt_engine_stage_buf(g->e, j);
            memcpy((void *)ptrs[j], host + (i + j) * pay, pay);
        }
        uint64_t t0 = kvt_time_ns();
        st = kvt_engine_pool_put_batch(g->e, hdrs + i, ptrs, m, sts);
        *ns_p += kvt_time_ns() - t0;
        for (size_t j = 0; j < m && st == KVT_OK; j++)
            if (sts[j] != KVT_OK) {
                kvt_log_error("bench: staged block put failed index=%zu status=%s", i + j,
                              kvt_status_str(sts[j]));
                st = sts[j];
            }
    }
    return st;
}

/* nb blocks out (seq_blocks) and back in under another root
 * (pool_put_batch from pageable memory, then from the staging); GB/s of
 * payload each way. */
static kvt_status_t gpu_moves(gpu_ctx_t *g, size_t nb, double *d2h_p, double *h2d_p,
                              double *h2d_staged_p)
{
    const kvt_block_identity_t *id = kvt_engine_identity(g->e);
    size_t B = id->layout.block_tokens, pay = kvt_block_layout_payload_bytes(&id->layout);
    size_t S = kvt_engine_batch_blocks(g->e);
    kvt_block_header_t *hdrs = kvt_malloc("bench move headers", nb * sizeof(*hdrs));
    const void **ptrs = kvt_malloc("bench move payloads", nb * sizeof(*ptrs));
    kvt_status_t *sts = kvt_malloc("bench move statuses", nb * sizeof(*sts));
    uint8_t *host = kvt_alloc_large("bench move images", nb * pay);
    kvt_seq_t *s = NULL;
    kvt_block_key_t root = gpu_root(g);
    kvt_status_t st = hdrs && ptrs && sts && host ? KVT_OK : KVT_ERR_NOMEM;
    fill_tokens(g->ids, nb * B, g->cfg->vocab_size, 4242);
    if (st == KVT_OK)
        st = seq_with(g, &root, &s);
    if (st == KVT_OK)
        st = kvt_engine_prefill(g->e, s, g->ids, nb * B, NULL, 0);
    if (st == KVT_OK)
        memset(host, 0, nb * pay); /* fault the pages in before timing */
    uint64_t t_out = 0;
    for (size_t i = 0; i < nb && st == KVT_OK; i += S) {
        size_t m = nb - i < S ? nb - i : S;
        uint64_t t0 = kvt_time_ns();
        st = kvt_engine_seq_blocks(g->e, s, i, m, hdrs + i, ptrs + i);
        t_out += kvt_time_ns() - t0;
        for (size_t j = 0; j < m && st == KVT_OK; j++)
            memcpy(host + (i + j) * pay, ptrs[i + j], pay);
    }
    /* The same images under another root: a chain the pool does not hold. */
    kvt_block_key_t parent = gpu_root(g);
    for (size_t i = 0; i < nb && st == KVT_OK; i++) {
        ptrs[i] = host + i * pay;
        st = kvt_block_header_make(&hdrs[i], id, &parent, (uint32_t)i, g->ids + i * B, ptrs[i]);
        parent = hdrs[i].key;
    }
    uint64_t t0 = kvt_time_ns(), t_in = 0;
    if (st == KVT_OK)
        st = kvt_engine_pool_put_batch(g->e, hdrs, ptrs, nb, sts);
    t_in = kvt_time_ns() - t0;
    for (size_t i = 0; i < nb && st == KVT_OK; i++)
        if (sts[i] != KVT_OK) {
            kvt_log_error("bench: block put failed index=%zu status=%s", i,
                          kvt_status_str(sts[i]));
            st = sts[i];
        }
    uint64_t t_staged = 0;
    if (st == KVT_OK)
        st = gpu_put_staged(g, nb, host, hdrs, ptrs, sts, &t_staged);
    *d2h_p = t_out ? (double)(nb * pay) / (double)t_out : 0; /* bytes/ns = GB/s */
    *h2d_p = t_in ? (double)(nb * pay) / (double)t_in : 0;
    *h2d_staged_p = t_staged ? (double)(nb * pay) / (double)t_staged : 0;
    if (s)
        kvt_engine_seq_destroy(g->e, s);
    kvt_free(hdrs);
    kvt_free(ptrs);
    kvt_free(sts);
    if (host)
        kvt_free_large(host, nb * pay);
    return st;
}

/* bf16 bytes of the weights one decode token reads (embedding row aside). */
static double weight_bytes(const kvt_model_config_t *c)
{
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double layer = c->hidden * (q + 2 * kv) + c->hidden * q + 3.0 * c->hidden * c->intermediate;
    return 2.0 * (layer * c->n_layers + (double)c->vocab_size * c->hidden);
}

/* tok/s beside hf (or cuBLAS at the same arithmetic), and TFLOP/s beside
 * cuBLAS at [m x hidden] x [hidden x inter]. */
static void gpu_rows(kvt_bench_results_t *res, const char *what, double tps,
                     double flops_per_tok, double hf, size_t m, const kvt_model_config_t *c,
                     double gemm_tflops)
{
    char name[48], ref[48];
    snprintf(name, sizeof(name), "%s TFLOP/s", what);
    snprintf(ref, sizeof(ref), "cublas bf16 %zux%ux%u TFLOP/s", m, c->hidden, c->intermediate);
    kvt_bench_add(res, name, tps * flops_per_tok / 1e12, "TFLOP/s", ref, gemm_tflops, false);
    snprintf(name, sizeof(name), "%s tok/s", what);
    if (hf > 0) {
        snprintf(ref, sizeof(ref), "hf sdpa %s", what);
        kvt_bench_add(res, name, tps, "tok/s", ref, hf, false);
    } else {
        snprintf(ref, sizeof(ref), "cublas %zux%ux%u at same flop", m, c->hidden,
                 c->intermediate);
        kvt_bench_add(res, name, tps, "tok/s", ref, gemm_tflops * 1e12 / flops_per_tok, false);
    }
}

static kvt_status_t gpu_measure(gpu_ctx_t *g, gpu_plan_t *p, kvt_device_t dev,
                                kvt_bench_results_t *res)
{
    const kvt_model_config_t *c = g->cfg;
    double sec, tps, tf;
    /* Warm-up: kernels, cuBLAS heuristics, first-touch of the pool. */
    kvt_status_t st = gpu_prefill(g, p->prefill[0] < 512 ? p->prefill[0] : 512, false, 1, &sec);
    for (size_t i = 0; i < p->n_prefill && st == KVT_OK; i++) {
        size_t n = p->prefill[i];
        st = kvt_device_ref_gemm(dev, n, c->hidden, c->intermediate, &tf);
        for (int cached = 0; cached < 2 && st == KVT_OK; cached++) {
            if (cached && 2 * n > c->max_pos)
                break;
            st = gpu_prefill(g, n, cached, p->rounds, &sec);
            char what[40];
            if (cached)
                snprintf(what, sizeof(what), "prefill %zu on %zu cached", n, n);
            else
                snprintf(what, sizeof(what), "prefill %zu", n);
            double ctx = cached ? (double)n + (double)n / 2 : (double)n / 2;
            double per_tok = token_flops(c, ctx) + lm_head_flops(c) / (double)n;
            if (st == KVT_OK)
                gpu_rows(res, what, (double)n / sec, per_tok, p->hf_prefill[i][cached], n, c,
                         tf);
        }
    }
    kvt_device_copy_ref_t cref = {0};
    if (st == KVT_OK)
        st = kvt_device_ref_copy(dev, (size_t)1 << 30, 0, &cref);
    for (size_t i = 0; i < p->n_batch && st == KVT_OK; i++) {
        size_t b = p->batch[i];
        st = kvt_device_ref_gemm(dev, b, c->hidden, c->intermediate, &tf);
        if (st == KVT_OK)
            st = gpu_decode(g, b, p->ctx, p->steps, &tps);
        if (st != KVT_OK)
            break;
        char what[40];
        snprintf(what, sizeof(what), "decode batch %zu", b);
        double per_tok = token_flops(c, (double)p->ctx + 2 + (double)p->steps / 2) +
                         lm_head_flops(c);
        gpu_rows(res, what, tps, per_tok, p->hf_decode[i], b, c, tf);
        if (b == 1) {
            char ref[48];
            snprintf(ref, sizeof(ref), "weight stream at d2d %.0f GB/s", cref.d2d_gbs);
            kvt_bench_add(res, "decode batch 1 tok/s (bound)", tps, "tok/s", ref,
                          cref.d2d_gbs * 1e9 / weight_bytes(c), false);
        }
    }
    if (st == KVT_OK && p->move_blocks) {
        const kvt_block_identity_t *id = kvt_engine_identity(g->e);
        size_t pay = kvt_block_layout_payload_bytes(&id->layout);
        size_t piece = kvt_engine_batch_blocks(g->e) * pay;
        double d2h, h2d, h2d_staged;
        st = gpu_moves(g, p->move_blocks, &d2h, &h2d, &h2d_staged);
        if (st == KVT_OK)
            st = kvt_device_ref_copy(dev, p->move_blocks * pay, piece, &cref);
        if (st == KVT_OK) {
            char name[48];
            snprintf(name, sizeof(name), "block d2h seq_blocks %zu GB/s", p->move_blocks);
            kvt_bench_add(res, name, d2h, "GB/s", "pinned d2h copy same bytes", cref.d2h_gbs,
                          false);
            snprintf(name, sizeof(name), "block h2d put_batch %zu GB/s", p->move_blocks);
            kvt_bench_add(res, name, h2d, "GB/s", "pinned h2d copy same bytes", cref.h2d_gbs,
                          false);
            snprintf(name, sizeof(name), "block h2d put_batch staged %zu GB/s", p->move_blocks);
            kvt_bench_add(res, name, h2d_staged, "GB/s", "pinned h2d copy same bytes",
                          cref.h2d_gbs, false);
        }
    }
    return st;
}

/* Check the plan against the model (without loading its weights). */
static int gpu_plan(const kvt_config_t *cfg, const char *dir, gpu_plan_t *p,
                    kvt_model_config_t *mc)
{
    memset(p, 0, sizeof(*p));
    if (!parse_list(kvt_config_str(cfg, "prefill-sizes"), p->prefill, &p->n_prefill) ||
        !parse_list(kvt_config_str(cfg, "decode-batches"), p->batch, &p->n_batch)) {
        kvt_log_error("bad --prefill-sizes or --decode-batches (comma-separated, at most %d)",
                      GPU_LIST_MAX);
        return KVT_EXIT_USAGE;
    }
    p->ctx = kvt_config_u64(cfg, "decode-context", 512);
    p->steps = kvt_config_u64(cfg, "decode-tokens", 32);
    p->rounds = kvt_config_u64(cfg, "rounds", 3);
    p->move_blocks = kvt_config_u64(cfg, "move-blocks", 1000);
    uint8_t digest[32];
    if (kvt_model_inspect(dir, mc, digest) != KVT_OK)
        return KVT_EXIT_FAIL;
    size_t B = 16;
    for (size_t i = 0; i < p->n_prefill; i++)
        if (p->prefill[i] + 1 > mc->max_pos || p->prefill[i] % B) {
            kvt_log_error("--prefill-sizes: each a multiple of %zu below max_position_"
                          "embeddings=%u", B, mc->max_pos);
            return KVT_EXIT_USAGE;
        }
    if (p->steps == 0 || p->ctx == 0 || p->ctx + p->steps + 3 > mc->max_pos ||
        p->move_blocks > 1000000) {
        kvt_log_error("bad --decode-context/--decode-tokens/--move-blocks max_position_"
                      "embeddings=%u", mc->max_pos);
        return KVT_EXIT_USAGE;
    }
    if (p->move_blocks * B + 1 > mc->max_pos) {
        p->move_blocks = (mc->max_pos - 1) / B;
        kvt_log_warn("bench: --move-blocks reduced to fit max_position_embeddings blocks=%zu",
                     p->move_blocks);
    }
    return KVT_EXIT_CONTINUE;
}

static int gpu_print(const kvt_config_t *cfg, const char *dir, const kvt_bench_results_t *res,
                     const gpu_plan_t *p, kvt_device_t dev, const kvt_engine_t *e)
{
    char desc[256], devname[32];
    kvt_device_describe(dev, desc, sizeof(desc));
    kvt_device_name(dev, devname, sizeof(devname));
    uint32_t total = 0;
    kvt_engine_pool_stats(e, NULL, &total, NULL);
    if (!kvt_config_bool(cfg, "json")) {
        kvt_bench_print_table(res);
        printf("device: %s (%s); pool %u blocks; %s\n", devname, desc, total, p->hf_note);
        return KVT_EXIT_OK;
    }
    cJSON *m = kvt_json_machine(dir);
    if (m) {
        cJSON_AddStringToObject(m, "device", devname);
        cJSON_AddStringToObject(m, "gpu", desc);
        cJSON_AddNumberToObject(m, "pool_blocks", total);
        cJSON_AddStringToObject(m, "note", p->hf_note);
    }
    return kvt_bench_print_json(res, "engine", dir, m);
}

static int run_bench_gpu(const kvt_config_t *cfg, const char *dir, kvt_device_t dev)
{
    gpu_plan_t p;
    kvt_model_config_t mc;
    int rc = gpu_plan(cfg, dir, &p, &mc);
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    hf_reference(cfg, dir, KVT_DEVICE_CUDA_INDEX(dev), &p);
    kvt_engine_opts_t eo = {
        .device = dev,
        .kv_dtype = strcmp(kvt_config_str(cfg, "kv-dtype"), "f32") ? KVT_DTYPE_BF16
                                                                     : KVT_DTYPE_F32,
        .n_blocks = (uint32_t)kvt_config_u64(cfg, "pool-blocks", 0),
        .prefill_chunk = (uint32_t)kvt_config_u64(cfg, "prefill-chunk", 0),
    };
    size_t max_n = p.ctx, max_b = 1;
    for (size_t i = 0; i < p.n_prefill; i++)
        max_n = 2 * p.prefill[i] > max_n ? 2 * p.prefill[i] : max_n;
    max_n = p.move_blocks * 16 > max_n ? p.move_blocks * 16 : max_n;
    for (size_t i = 0; i < p.n_batch; i++)
        max_b = p.batch[i] > max_b ? p.batch[i] : max_b;
    kvt_model_t *model = NULL;
    gpu_ctx_t g = {0};
    kvt_bench_results_t res = {0};
    kvt_status_t st = kvt_model_load(dir, &model);
    if (st == KVT_OK)
        st = kvt_engine_create(model, &eo, &g.e);
    if (st == KVT_OK) {
        g.cfg = &model->cfg;
        g.logits = kvt_malloc("bench logits", max_b * model->cfg.vocab_size * sizeof(float));
        g.ids = kvt_malloc("bench ids", max_n * sizeof(uint32_t));
        g.ids_cap = max_n;
        st = g.logits && g.ids ? KVT_OK : KVT_ERR_NOMEM;
    }
    if (st == KVT_OK)
        st = gpu_measure(&g, &p, dev, &res);
    rc = KVT_EXIT_FAIL;
    if (st == KVT_OK)
        rc = gpu_print(cfg, dir, &res, &p, dev, g.e);
    else
        kvt_log_error("bench engine failed device=cuda:%d status=%s", KVT_DEVICE_CUDA_INDEX(dev),
                      kvt_status_str(st));
    if (g.e)
        kvt_engine_destroy(g.e);
    kvt_model_destroy(model);
    kvt_free(g.logits);
    kvt_free(g.ids);
    return rc;
}

int kvt_cmd_bench_engine(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, g_opts, (int)(sizeof(g_opts) / sizeof(g_opts[0])), argc, argv,
                           g_usage, g_about);
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    const char *dir = kvt_cli_require(&cfg, "model");
    if (!dir)
        return KVT_EXIT_USAGE;
    const char *kv = kvt_config_str(&cfg, "kv-dtype");
    if (strcmp(kv, "bf16") != 0 && strcmp(kv, "f32") != 0) {
        kvt_log_error("bad kv dtype value=\"%s\" expected=bf16|f32", kv);
        return KVT_EXIT_USAGE;
    }
    if (kvt_config_u64(&cfg, "threads", 0) > 1024 ||
        kvt_config_u64(&cfg, "pool-blocks", 0) > UINT32_MAX ||
        kvt_config_u64(&cfg, "prefill-chunk", 0) > UINT32_MAX) {
        kvt_log_error("bad --threads, --pool-blocks or --prefill-chunk (threads <= 1024, "
                      "the others < 2^32)");
        return KVT_EXIT_USAGE;
    }
    kvt_device_t dev;
    if (kvt_device_parse(kvt_config_str(&cfg, "device"), &dev) != KVT_OK)
        return KVT_EXIT_USAGE;
    return KVT_DEVICE_IS_CUDA(dev) ? run_bench_gpu(&cfg, dir, dev) : run_bench(&cfg, dir);
}
