/* `kvtier bench engine`: engine prefill and decode throughput, each
 * beside a same-run reference (STYLE.md: benchmarks are programs).  With
 * --device cuda:N the GPU engine is measured instead (cli/bench_engine_gpu.c).
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
#include "cli/bench_engine.h"
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
double kvt_bench_token_flops(const kvt_model_config_t *c, double ctx)
{
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double proj = 2.0 * c->hidden * (q + 2 * kv + q);
    double mlp = 2.0 * 3.0 * c->hidden * c->intermediate;
    double attn = 4.0 * q * ctx;
    return (proj + mlp + attn) * c->n_layers;
}

double kvt_bench_lm_head_flops(const kvt_model_config_t *c)
{
    return 2.0 * c->hidden * c->vocab_size;
}

void kvt_bench_fill_tokens(uint32_t *ids, size_t n, uint32_t vocab, uint64_t seed)
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
    kvt_bench_fill_tokens(b->ids, n, b->cfg->vocab_size, seed);
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
        kvt_bench_fill_tokens(b->ids, DECODE_CONTEXT, b->cfg->vocab_size, 1000 + s);
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

int kvt_bench_cmp_double(const void *x, const void *y)
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
    qsort(sec, rounds, sizeof(double), kvt_bench_cmp_double);
    double s = sec[rounds / 2];
    double flops = kvt_bench_token_flops(b->cfg, (double)n / 2) * (double)n + kvt_bench_lm_head_flops(b->cfg);
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
    double per_tok = kvt_bench_token_flops(b->cfg, ctx) + kvt_bench_lm_head_flops(b->cfg);
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
    return KVT_DEVICE_IS_CUDA(dev) ? kvt_bench_engine_gpu(&cfg, dir, dev) : run_bench(&cfg, dir);
}
