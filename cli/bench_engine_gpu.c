/* `kvtier bench engine --device cuda:N`: the GPU half of the engine bench
 * (cli/cmd_bench_engine.c parses the flags and runs the CPU half).
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


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
        kvt_bench_fill_tokens(g->ids, n, g->cfg->vocab_size, g->roots * 7919);
        st = seq_with(g, &root, &holder);
        if (st == KVT_OK)
            st = kvt_engine_prefill(g->e, holder, g->ids, n, NULL, 0);
    }
    for (size_t r = 0; r < rounds && st == KVT_OK; r++) {
        kvt_block_key_t fresh = gpu_root(g);
        kvt_seq_t *s = NULL;
        size_t reused = 0, off = cached ? n : 0;
        kvt_bench_fill_tokens(g->ids + off, n, g->cfg->vocab_size, g->roots * 104729);
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
    qsort(sec, rounds, sizeof(double), kvt_bench_cmp_double);
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
        kvt_bench_fill_tokens(g->ids, ctx, g->cfg->vocab_size, g->roots * 31);
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
    kvt_bench_fill_tokens(g->ids, nb * B, g->cfg->vocab_size, 4242);
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
            double per_tok = kvt_bench_token_flops(c, ctx) + kvt_bench_lm_head_flops(c) / (double)n;
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
        double per_tok = kvt_bench_token_flops(c, (double)p->ctx + 2 + (double)p->steps / 2) +
                         kvt_bench_lm_head_flops(c);
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

int kvt_bench_engine_gpu(const kvt_config_t *cfg, const char *dir, kvt_device_t dev)
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
