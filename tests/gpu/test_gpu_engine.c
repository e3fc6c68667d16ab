/* The GPU engine against the CPU engine, against itself, and against the
 * Hugging Face oracle (label gpu; exit 77 where no CUDA device is found).
 *
 * Models: the `tiny` and `tiny-qwen2` presets (written by kvt_model_init
 * into a temp dir, as test_oracle does) and two made in memory with GQA,
 * head_dim 64 and 128.  bf16 weights on the GPU vs f32 on the CPU, so the
 * tolerance is bf16's: logits within REL_TOL of the largest logit of the
 * position.  Greedy tokens are compared teacher-forced (both engines fed
 * the same tokens) wherever the reference's top two logits are apart by
 * more than the tolerance; the raw agreement is printed.
 *
 *   (a) whole-model logits, GPU vs CPU (bf16 KV both), every position of a
 *       multi-chunk prefill, then decode steps;
 *   (b) resume on the GPU: prefill resumed from cached blocks vs one-shot
 *       (greedy tokens, logits, and whether blocks are bitwise equal);
 *   (c) batched decode == single decode on the GPU, within tolerance;
 *   (d) blocks GPU -> host -> GPU (seq_blocks, pool_put_batch, pool_put)
 *       bitwise unchanged; a corrupted image is refused; the tier path
 *       (kvt_engine_tier_store / tier_load) moves them too;
 *   (e) a block computed on the GPU imports into the CPU engine
 *       (pool_put verifies it) and the CPU engine resumes from it;
 *   (f) the oracle fixtures of test_oracle with f32 KV on the GPU;
 *   (g) decode steps replayed from CUDA graphs == plain launches, bitwise;
 *   (h) a prompt adopted (seq_adopt) from pool blocks and the partial tail
 *       read with seq_tail: the tail reads back byte for byte, it is the
 *       head of the block it fills into, and decode steps give the
 *       prefilled sequence's logits bitwise, in the same engine and in a
 *       second one that imported the blocks; the CPU engine adopts the
 *       same images (within CPU_TOL). */
#include "common/hash.h"
#include "engine/engine.h"
#include "engine/gpu_engineInt.h" /* graph counters (test g) */
#include "engine/model.h"
#include "engine/model_init.h"
#include "engine/tier_io.h"
#include "kernels/gpu.h"
#include "kvstore/tail.h"
#include "tests/support/testutil.h"

// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on
#include "tests/support/random_model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL_TOL 2e-2
/* GPU (bf16 weights and activations) vs CPU (f32): the random-weight
 * in-memory models, with their sharp attention, sit near 2e-2. */
#define CPU_TOL 4e-2
#define N_TOK 300
#define STEPS 12
#define B 16

/* --- models --- */

typedef enum { M_TINY, M_TINY_QWEN2, M_HD64, M_HD128, M_COUNT } model_id_t;

static const char *const g_name[M_COUNT] = {"tiny", "tiny-qwen2", "gqa-hd64", "gqa-hd128"};
static kvt_model_t *g_models[M_COUNT];
static char *g_dirs[2];

static kvt_model_t *memory_model(uint32_t head_dim)
{
    kvt_model_config_t c = {
        .arch = KVT_ARCH_LLAMA, .vocab_size = 1000, .hidden = 4 * head_dim,
        .intermediate = 6 * head_dim, .n_layers = 3, .n_heads = 8, .n_kv_heads = 2,
        .head_dim = head_dim, .max_pos = 4096, .rms_eps = 1e-5f, .rope_theta = 500000.0f,
    };
    return tu_random_model(&c, 0x6e6e0000u + head_dim, (uint8_t)head_dim);
}

static char *preset_dir(const char *preset)
{
    char *dir = tu_tmpdir(preset);
    rmdir(dir); /* model init wants to create it (or find it empty) */
    /* f32 weights, seed 1: the oracle fixtures' directories */
    kvt_model_init_params_t p = {.preset = preset, .out_dir = dir, .seed = 1,
                                 .dtype = KVT_DTYPE_F32};
    kvt_model_init_result_t r;
    assert_int_equal(kvt_model_init(&p, &r), KVT_OK);
    return dir;
}

static int setup_models(void **state)
{
    (void)state;
    g_dirs[0] = preset_dir("tiny");
    g_dirs[1] = preset_dir("tiny-qwen2");
    assert_int_equal(kvt_model_load(g_dirs[0], &g_models[M_TINY]), KVT_OK);
    assert_int_equal(kvt_model_load(g_dirs[1], &g_models[M_TINY_QWEN2]), KVT_OK);
    g_models[M_HD64] = memory_model(64);
    g_models[M_HD128] = memory_model(128);
    return 0;
}

static int teardown_models(void **state)
{
    (void)state;
    for (int i = 0; i < M_COUNT; i++)
        kvt_model_destroy(g_models[i]);
    for (int i = 0; i < 2; i++) {
        tu_rmtree(g_dirs[i]);
        free(g_dirs[i]);
    }
    return 0;
}

/* --- helpers --- */

typedef struct {
    kvt_engine_t *e;
    kvt_block_key_t root;
    uint32_t V;
} fx_t;

static void fx_open(fx_t *fx, const kvt_model_t *m, bool gpu, kvt_dtype_t dt, uint32_t chunk)
{
    kvt_engine_opts_t o = {.block_tokens = B, .kv_dtype = dt, .prefill_chunk = chunk,
                           .device = gpu ? KVT_DEVICE_CUDA(0) : KVT_DEVICE_CPU,
                           .n_blocks = 512, .n_threads = gpu ? 0 : 4};
    assert_int_equal(kvt_engine_create(m, &o, &fx->e), KVT_OK);
    fx->V = m->cfg.vocab_size;
    assert_int_equal(kvt_block_key_root(kvt_engine_identity(fx->e)->fingerprint, "g", 1,
                                        &fx->root), KVT_OK);
}

static kvt_seq_t *seq_new(fx_t *fx)
{
    kvt_seq_t *s = NULL;
    assert_int_equal(kvt_engine_seq_create(fx->e, &fx->root, &s), KVT_OK);
    return s;
}

static void make_tokens(uint32_t *t, size_t n, uint32_t seed, uint32_t vocab)
{
    for (size_t i = 0; i < n; i++)
        t[i] = (uint32_t)((seed * 2654435761u + i * 40503u + (i * i) % 17) % vocab);
}

/* max |got - want| / max |want|. */
static double rel_err(const float *got, const float *want, size_t n)
{
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)got[i] - want[i]));
        m = fmax(m, fabs((double)want[i]));
    }
    return d / m;
}

static uint32_t argmax(const float *l, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

/* Whether the reference's winner is clear of the runner-up by > tol of
 * the largest magnitude (closer than that, bf16 may flip them). */
static bool clear_winner(const float *l, uint32_t n, double tol)
{
    uint32_t w = argmax(l, n);
    double second = -INFINITY, mx = 1e-30;
    for (uint32_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(l[i]));
        if (i != w)
            second = fmax(second, l[i]);
    }
    return l[w] - second > tol * mx;
}

typedef struct {
    double worst;
    int agree, clear, steps;
} cmp_t;

static void cmp_tol(cmp_t *c, const float *got, const float *ref, uint32_t V, const char *what,
                    double tol)
{
    double e = rel_err(got, ref, V);
    c->worst = fmax(c->worst, e);
    if (e > tol)
        fail_msg("%s: relative error %.3g > %.0e", what, e, tol);
    bool same = argmax(got, V) == argmax(ref, V);
    c->agree += same;
    c->steps++;
    if (clear_winner(ref, V, tol)) {
        c->clear++;
        if (!same)
            fail_msg("%s: greedy token differs where the reference's is clear", what);
    }
}

static void cmp_step(cmp_t *c, const float *got, const float *ref, uint32_t V, const char *what)
{
    cmp_tol(c, got, ref, V, what, REL_TOL);
}

/* --- (a) GPU vs CPU --- */

static void test_gpu_vs_cpu(void **state)
{
    (void)state;
    for (int k = 0; k < M_COUNT; k++) {
        const kvt_model_t *m = g_models[k];
        fx_t cpu, gpu;
        fx_open(&cpu, m, false, KVT_DTYPE_BF16, 128);
        fx_open(&gpu, m, true, KVT_DTYPE_BF16, 128);
        uint32_t V = cpu.V, tok[N_TOK];
        make_tokens(tok, N_TOK, 11 + k, V);
        float *lc = malloc((size_t)N_TOK * V * sizeof(float));
        float *lg = malloc((size_t)N_TOK * V * sizeof(float));
        kvt_seq_t *sc = seq_new(&cpu), *sg = seq_new(&gpu);
        assert_int_equal(kvt_engine_prefill(cpu.e, sc, tok, N_TOK, lc, KVT_ENGINE_LOGITS_ALL),
                         KVT_OK);
        assert_int_equal(kvt_engine_prefill(gpu.e, sg, tok, N_TOK, lg, KVT_ENGINE_LOGITS_ALL),
                         KVT_OK);
        cmp_t c = {0};
        char what[96];
        for (size_t t = 0; t < N_TOK; t++) {
            snprintf(what, sizeof(what), "%s prefill position %zu", g_name[k], t);
            cmp_tol(&c, lg + t * V, lc + t * V, V, what, CPU_TOL);
        }
        double prefill_worst = c.worst;
        /* Decode, teacher-forced with the CPU's greedy tokens. */
        float *cur_c = lc + (size_t)(N_TOK - 1) * V, *cur_g = lg + (size_t)(N_TOK - 1) * V;
        cmp_t d = {0};
        for (int i = 0; i < STEPS; i++) {
            uint32_t next = argmax(cur_c, V);
            assert_int_equal(kvt_engine_decode(cpu.e, &sc, &next, 1, lc), KVT_OK);
            assert_int_equal(kvt_engine_decode(gpu.e, &sg, &next, 1, lg), KVT_OK);
            cur_c = lc, cur_g = lg;
            snprintf(what, sizeof(what), "%s decode step %d", g_name[k], i);
            cmp_tol(&d, cur_g, cur_c, V, what, CPU_TOL);
        }
        print_message("gpu vs cpu %-10s prefill worst %.2e, greedy %d/%d (clear %d); decode "
                      "worst %.2e, greedy %d/%d (clear %d)\n", g_name[k], prefill_worst,
                      c.agree, c.steps, c.clear, d.worst, d.agree, d.steps, d.clear);
        kvt_engine_seq_destroy(cpu.e, sc);
        kvt_engine_seq_destroy(gpu.e, sg);
        kvt_engine_destroy(cpu.e);
        kvt_engine_destroy(gpu.e);
        free(lc);
        free(lg);
    }
}

/* --- (b) resume on the GPU --- */

/* Copy of a sequence's full blocks (GPU staging is reused per call). */
static uint8_t *blocks_copy(fx_t *fx, kvt_seq_t *s, size_t *n_p, size_t *len_p)
{
    size_t n = kvt_engine_seq_n_full_blocks(s);
    kvt_block_header_t h;
    const void *p;
    assert_int_equal(kvt_engine_seq_block(fx->e, s, 0, &h, &p), KVT_OK);
    uint8_t *all = malloc(n * h.payload_len);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(kvt_engine_seq_block(fx->e, s, i, &h, &p), KVT_OK);
        memcpy(all + i * h.payload_len, p, h.payload_len);
    }
    *n_p = n;
    *len_p = h.payload_len;
    return all;
}

/* Largest |a - b| over bf16 elements, relative to the largest |a|. */
static double bf16_rel(const uint8_t *a, const uint8_t *b, size_t bytes)
{
    const uint16_t *x = (const uint16_t *)a, *y = (const uint16_t *)b;
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < bytes / 2; i++) {
        union {
            uint32_t u;
            float f;
        } p = {.u = (uint32_t)x[i] << 16}, q = {.u = (uint32_t)y[i] << 16};
        d = fmax(d, fabs((double)p.f - q.f));
        m = fmax(m, fabs((double)p.f));
    }
    return d / m;
}

static void test_gpu_resume(void **state)
{
    (void)state;
    static const size_t cuts[] = {16, 128, 144, 272};
    for (int k = 0; k < M_COUNT; k++) {
        const kvt_model_t *m = g_models[k];
        fx_t one;
        fx_open(&one, m, true, KVT_DTYPE_BF16, 128);
        uint32_t V = one.V, tok[N_TOK + STEPS];
        make_tokens(tok, N_TOK, 5 + k, V);
        float *l1 = malloc(V * sizeof(float)), *l2 = malloc(V * sizeof(float));
        kvt_seq_t *s1 = seq_new(&one);
        assert_int_equal(kvt_engine_prefill(one.e, s1, tok, N_TOK, l1, 0), KVT_OK);
        size_t n1, len;
        uint8_t *b1 = blocks_copy(&one, s1, &n1, &len);
        /* The one-shot sequence's greedy continuation, as the tokens both
         * runs are fed. */
        float *keep = malloc((size_t)(STEPS + 1) * V * sizeof(float));
        memcpy(keep, l1, V * sizeof(float));
        for (int i = 0; i < STEPS; i++) {
            tok[N_TOK + i] = argmax(keep + (size_t)i * V, V);
            assert_int_equal(kvt_engine_decode(one.e, &s1, &tok[N_TOK + i], 1,
                                               keep + (size_t)(i + 1) * V), KVT_OK);
        }
        bool bitwise = true;
        double worst = 0, worst_blk = 0;
        for (size_t ci = 0; ci < sizeof(cuts) / sizeof(cuts[0]); ci++) {
            fx_t res;
            fx_open(&res, m, true, KVT_DTYPE_BF16, 128);
            kvt_seq_t *p = seq_new(&res), *s2 = seq_new(&res);
            assert_int_equal(kvt_engine_prefill(res.e, p, tok, cuts[ci], NULL, 0), KVT_OK);
            size_t reused = 0;
            assert_int_equal(kvt_engine_seq_reuse(res.e, s2, tok, N_TOK, &reused), KVT_OK);
            assert_int_equal(reused, cuts[ci] / B * B);
            assert_int_equal(kvt_engine_prefill(res.e, s2, tok + reused, N_TOK - reused, l2, 0),
                             KVT_OK);
            cmp_t c = {0};
            char what[96];
            snprintf(what, sizeof(what), "%s resume at %zu", g_name[k], cuts[ci]);
            cmp_step(&c, l2, keep, V, what);
            bitwise &= memcmp(l2, keep, V * sizeof(float)) == 0;
            for (int i = 0; i < STEPS; i++) {
                assert_int_equal(kvt_engine_decode(res.e, &s2, &tok[N_TOK + i], 1, l2), KVT_OK);
                snprintf(what, sizeof(what), "%s resume at %zu step %d", g_name[k], cuts[ci], i);
                cmp_step(&c, l2, keep + (size_t)(i + 1) * V, V, what);
                bitwise &= memcmp(l2, keep + (size_t)(i + 1) * V, V * sizeof(float)) == 0;
            }
            worst = fmax(worst, c.worst);
            if (c.agree != c.steps)
                fail_msg("%s resume at %zu: greedy tokens differ (%d/%d)", g_name[k], cuts[ci],
                         c.agree, c.steps);
            size_t n2, len2;
            uint8_t *b2 = blocks_copy(&res, s2, &n2, &len2);
            assert_true(n2 >= n1);
            if (memcmp(b1, b2, n1 * len) != 0) {
                bitwise = false;
                double e = bf16_rel(b1, b2, n1 * len);
                worst_blk = fmax(worst_blk, e);
                if (e > REL_TOL)
                    fail_msg("%s resume at %zu: blocks differ by %.3g", g_name[k], cuts[ci], e);
            }
            free(b2);
            kvt_engine_seq_destroy(res.e, p);
            kvt_engine_seq_destroy(res.e, s2);
            kvt_engine_destroy(res.e);
        }
        print_message("gpu resume %-10s greedy identical, logits worst %.2e, %s (blocks worst "
                      "%.2e)\n", g_name[k], worst,
                      bitwise ? "blocks and logits bitwise identical" : "not bitwise",
                      worst_blk);
        free(b1);
        free(keep);
        free(l1);
        free(l2);
        kvt_engine_seq_destroy(one.e, s1);
        kvt_engine_destroy(one.e);
    }
}

/* --- (c) batched decode == single decode on the GPU --- */

#define NB 5

static void test_gpu_batch_decode(void **state)
{
    (void)state;
    for (int k = 0; k < M_COUNT; k++) {
        const kvt_model_t *m = g_models[k];
        fx_t bat, one;
        fx_open(&bat, m, true, KVT_DTYPE_BF16, 128);
        fx_open(&one, m, true, KVT_DTYPE_BF16, 128);
        uint32_t V = bat.V;
        kvt_seq_t *sb[NB], *so[NB];
        uint32_t tok[NB][200];
        for (int i = 0; i < NB; i++) {
            size_t n = 20 + 37 * (size_t)i;
            make_tokens(tok[i], n, 100 + (uint32_t)i, V);
            sb[i] = seq_new(&bat);
            so[i] = seq_new(&one);
            /* Distinct roots would be cleaner; distinct tokens suffice. */
            assert_int_equal(kvt_engine_prefill(bat.e, sb[i], tok[i], n, NULL, 0), KVT_OK);
            assert_int_equal(kvt_engine_prefill(one.e, so[i], tok[i], n, NULL, 0), KVT_OK);
        }
        float *lb = malloc((size_t)NB * V * sizeof(float)), *lo = malloc(V * sizeof(float));
        cmp_t c = {0};
        bool bitwise = true;
        for (int step = 0; step < 6; step++) {
            uint32_t next[NB];
            for (int i = 0; i < NB; i++)
                next[i] = (uint32_t)(step * 31 + i * 7) % V;
            assert_int_equal(kvt_engine_decode(bat.e, sb, next, NB, lb), KVT_OK);
            for (int i = 0; i < NB; i++) {
                assert_int_equal(kvt_engine_decode(one.e, &so[i], &next[i], 1, lo), KVT_OK);
                char what[96];
                snprintf(what, sizeof(what), "%s batch decode step %d seq %d", g_name[k], step,
                         i);
                cmp_step(&c, lb + (size_t)i * V, lo, V, what);
                bitwise &= memcmp(lb + (size_t)i * V, lo, V * sizeof(float)) == 0;
            }
        }
        print_message("gpu batch decode %-10s worst %.2e greedy %d/%d, %s\n", g_name[k], c.worst,
                      c.agree, c.steps, bitwise ? "bitwise equal" : "not bitwise");
        for (int i = 0; i < NB; i++) {
            kvt_engine_seq_destroy(bat.e, sb[i]);
            kvt_engine_seq_destroy(one.e, so[i]);
        }
        kvt_engine_destroy(bat.e);
        kvt_engine_destroy(one.e);
        free(lb);
        free(lo);
    }
}

/* --- (g) decode steps through CUDA graphs == plain launches, bitwise --- */

/* An engine with decode graphs on or off (KVT_GPU_GRAPHS, read at create). */
static void fx_open_graphs(fx_t *fx, const kvt_model_t *m, bool graphs)
{
    assert_int_equal(setenv("KVT_GPU_GRAPHS", graphs ? "1" : "0", 1), 0);
    fx_open(fx, m, true, KVT_DTYPE_BF16, 128);
    assert_int_equal(unsetenv("KVT_GPU_GRAPHS"), 0);
}

/* Batches of 1 and 3 sequences; contexts cross block boundaries (B = 16)
 * and the decode attention's chunk counts (64 keys a chunk at least), so
 * graphs are replayed, recaptured for a larger chunk grid, and fed block
 * tables that grow.  A prefill between steps and a batch-size change sit
 * in the middle.  Every step's logits must be bitwise the plain pass's,
 * and the graph engine must have launched graphs. */
static void test_gpu_graph_decode(void **state)
{
    (void)state;
    enum { NS = 3, STEPS_G = 40 };
    static const size_t len[NS] = {60, 120, 250};
    for (int k = 0; k < M_COUNT; k++) {
        const kvt_model_t *m = g_models[k];
        fx_t fp, fg;
        fx_open_graphs(&fp, m, false);
        fx_open_graphs(&fg, m, true);
        uint32_t V = fp.V;
        kvt_seq_t *sp[NS], *sg[NS];
        uint32_t tok[300];
        for (int i = 0; i < NS; i++) {
            make_tokens(tok, len[i], 700 + (uint32_t)i, V);
            sp[i] = seq_new(&fp);
            sg[i] = seq_new(&fg);
            assert_int_equal(kvt_engine_prefill(fp.e, sp[i], tok, len[i], NULL, 0), KVT_OK);
            assert_int_equal(kvt_engine_prefill(fg.e, sg[i], tok, len[i], NULL, 0), KVT_OK);
        }
        float *lp = malloc((size_t)NS * V * sizeof(float));
        float *lg = malloc((size_t)NS * V * sizeof(float));
        assert_non_null(lp);
        assert_non_null(lg);
        size_t differ = 0, steps = 0;
        for (int step = 0; step < STEPS_G; step++) {
            /* batch 1 (sequence 0) for the first half, then all three */
            size_t nb = step < STEPS_G / 2 ? 1 : NS;
            uint32_t next[NS];
            for (size_t i = 0; i < nb; i++)
                next[i] = (uint32_t)(step * 13 + i * 5 + 1) % V;
            if (step == STEPS_G / 4) { /* a prefill between steps */
                make_tokens(tok, 5, 999, V);
                assert_int_equal(kvt_engine_prefill(fp.e, sp[1], tok, 5, NULL, 0), KVT_OK);
                assert_int_equal(kvt_engine_prefill(fg.e, sg[1], tok, 5, NULL, 0), KVT_OK);
            }
            assert_int_equal(kvt_engine_decode(fp.e, sp, next, nb, lp), KVT_OK);
            assert_int_equal(kvt_engine_decode(fg.e, sg, next, nb, lg), KVT_OK);
            for (size_t i = 0; i < nb; i++, steps++)
                differ += memcmp(lp + i * V, lg + i * V, V * sizeof(float)) != 0;
        }
        const kvt_gpu_engine_t *g = fg.e->gpu;
        print_message("gpu graph decode %-10s %zu/%zu rows bitwise, captures %llu launches %llu\n",
                      g_name[k], steps - differ, steps, (unsigned long long)g->graph_captures,
                      (unsigned long long)g->graph_launches);
        assert_int_equal(differ, 0);
        assert_true(g->graph_launches >= STEPS_G - 4);
        assert_true(g->graph_captures >= 3); /* batch 1, batch 3, a larger chunk grid */
        assert_int_equal(fp.e->gpu->graph_launches, 0);
        for (int i = 0; i < NS; i++) {
            kvt_engine_seq_destroy(fp.e, sp[i]);
            kvt_engine_seq_destroy(fg.e, sg[i]);
        }
        kvt_engine_destroy(fp.e);
        kvt_engine_destroy(fg.e);
        free(lp);
        free(lg);
    }
}

/* --- (d) block moves, (e) GPU blocks into the CPU engine --- */

static void test_gpu_block_moves(void **state)
{
    (void)state;
    for (int k = 0; k < M_COUNT; k++) {
        const kvt_model_t *m = g_models[k];
        fx_t src, dst, cpu;
        fx_open(&src, m, true, KVT_DTYPE_BF16, 128);
        fx_open(&dst, m, true, KVT_DTYPE_BF16, 128);
        fx_open(&cpu, m, false, KVT_DTYPE_BF16, 128);
        uint32_t V = src.V, tok[N_TOK];
        make_tokens(tok, N_TOK, 77 + k, V);
        kvt_seq_t *s = seq_new(&src);
        assert_int_equal(kvt_engine_prefill(src.e, s, tok, N_TOK, NULL, 0), KVT_OK);
        size_t nb = kvt_engine_seq_n_full_blocks(s), len = 0;
        assert_true(nb <= kvt_engine_batch_blocks(src.e));
        /* Out in one batch; keep the images. */
        kvt_block_header_t *h = malloc(nb * sizeof(*h));
        const void **p = malloc(nb * sizeof(*p));
        assert_int_equal(kvt_engine_seq_blocks(src.e, s, 0, nb, h, p), KVT_OK);
        len = h[0].payload_len;
        uint8_t *img = malloc(nb * len);
        for (size_t i = 0; i < nb; i++) {
            memcpy(img + i * len, p[i], len);
            p[i] = img + i * len;
            assert_int_equal(kvt_block_payload_verify(&h[i], p[i], len), KVT_OK);
        }
        /* A corrupted image is refused and never enters the pool. */
        uint8_t *bad = malloc(len);
        memcpy(bad, img, len);
        bad[len / 2] ^= 1;
        assert_int_equal(kvt_engine_pool_put(dst.e, &h[0], bad, len), KVT_ERR_CORRUPT);
        assert_int_equal(kvt_engine_pool_match(dst.e, &h[0].key, 1), 0);
        free(bad);
        /* A batch with a bit flipped in its third image: the device's
         * checksum refuses it after the copy; the blocks before it are
         * stored, it and every later one are not (invariant 3). */
        if (nb >= 5) {
            fx_t chk;
            fx_open(&chk, m, true, KVT_DTYPE_BF16, 128);
            uint8_t *flip = malloc(len);
            memcpy(flip, p[3], len);
            flip[len - 1] ^= 0x80;
            const void *bp[5] = {p[0], p[1], p[2], flip, p[4]};
            kvt_status_t bst[5];
            assert_int_equal(kvt_engine_pool_put_batch(chk.e, h, bp, 5, bst), KVT_OK);
            assert_int_equal(bst[0], KVT_OK);
            assert_int_equal(bst[1], KVT_OK);
            assert_int_equal(bst[2], KVT_OK);
            assert_int_equal(bst[3], KVT_ERR_CORRUPT);
            assert_int_equal(bst[4], KVT_ERR_AGAIN);
            kvt_block_key_t keys[5];
            for (int i = 0; i < 5; i++)
                keys[i] = h[i].key;
            assert_int_equal(kvt_engine_pool_match(chk.e, keys, 5), 3);
            uint32_t used, total, indexed;
            kvt_engine_pool_stats(chk.e, &used, &total, &indexed);
            assert_int_equal(indexed, 3);
            free(flip);
            kvt_engine_destroy(chk.e);
        }
        /* In: block 0 alone, the rest in one batch (a chain). */
        assert_int_equal(kvt_engine_pool_put(dst.e, &h[0], p[0], len), KVT_OK);
        kvt_status_t *st = malloc(nb * sizeof(*st));
        assert_int_equal(kvt_engine_pool_put_batch(dst.e, h + 1, p + 1, nb - 1, st), KVT_OK);
        for (size_t i = 0; i + 1 < nb; i++)
            assert_int_equal(st[i], KVT_OK);
        assert_int_equal(kvt_engine_pool_put_batch(dst.e, h, p, 1, st), KVT_OK);
        assert_int_equal(st[0], KVT_ERR_EXISTS);
        /* Back out of the second engine: bitwise the same. */
        kvt_seq_t *s2 = seq_new(&dst);
        size_t reused = 0;
        assert_int_equal(kvt_engine_seq_reuse(dst.e, s2, tok, N_TOK, &reused), KVT_OK);
        assert_int_equal(reused, nb * B);
        const void **p2 = malloc(nb * sizeof(*p2));
        kvt_block_header_t *h2 = malloc(nb * sizeof(*h2));
        assert_int_equal(kvt_engine_seq_blocks(dst.e, s2, 0, nb, h2, p2), KVT_OK);
        for (size_t i = 0; i < nb; i++) {
            assert_memory_equal(p2[i], img + i * len, len);
            assert_int_equal(h2[i].checksum, h[i].checksum);
        }
        /* (e) the same images into the CPU engine, which resumes from them. */
        for (size_t i = 0; i < nb; i++)
            assert_int_equal(kvt_engine_pool_put(cpu.e, &h[i], p[i], len), KVT_OK);
        kvt_seq_t *sc = seq_new(&cpu), *sg = seq_new(&src);
        assert_int_equal(kvt_engine_seq_reuse(cpu.e, sc, tok, N_TOK, &reused), KVT_OK);
        assert_int_equal(reused, nb * B);
        float *lc = malloc(V * sizeof(float)), *lg = malloc(V * sizeof(float));
        assert_int_equal(kvt_engine_prefill(cpu.e, sc, tok + reused, N_TOK - reused, lc, 0),
                         KVT_OK);
        /* The GPU's own resumed logits at the same position. */
        assert_int_equal(kvt_engine_seq_reuse(src.e, sg, tok, N_TOK, &reused), KVT_OK);
        assert_int_equal(kvt_engine_prefill(src.e, sg, tok + reused, N_TOK - reused, lg, 0),
                         KVT_OK);
        double e = rel_err(lc, lg, V);
        print_message("gpu blocks %-10s %zu blocks x %zu B moved bitwise; cpu engine resumed "
                      "from them, logits vs gpu %.2e\n", g_name[k], nb, len, e);
        assert_true(e <= CPU_TOL);
        kvt_engine_seq_destroy(cpu.e, sc);
        kvt_engine_seq_destroy(src.e, sg);
        kvt_engine_seq_destroy(src.e, s);
        kvt_engine_seq_destroy(dst.e, s2);
        kvt_engine_destroy(cpu.e);
        kvt_engine_destroy(src.e);
        kvt_engine_destroy(dst.e);
        free(h);
        free(h2);
        free(p);
        free(p2);
        free(img);
        free(st);
        free(lc);
        free(lg);
    }
}

/* Through the tier: tier_store (seq_blocks batches) then tier_load into a
 * fresh GPU engine (pool_put_batch through the staging). */
static void test_gpu_tier_io(void **state)
{
    (void)state;
    const kvt_model_t *m = g_models[M_HD64];
    fx_t src, dst;
    fx_open(&src, m, true, KVT_DTYPE_BF16, 128);
    fx_open(&dst, m, true, KVT_DTYPE_BF16, 128);
    char *data = tu_tmpdir("gpu-tier");
    kvt_tier_params_t tp = {.data_dir = data, .identity = kvt_engine_identity(src.e),
                            .host_capacity_bytes = 64u << 20};
    kvt_tier_t *tier = NULL;
    assert_int_equal(kvt_tier_open(&tp, &tier), KVT_OK);
    uint32_t tok[N_TOK];
    make_tokens(tok, N_TOK, 9, src.V);
    kvt_seq_t *s = seq_new(&src);
    assert_int_equal(kvt_engine_prefill(src.e, s, tok, N_TOK, NULL, 0), KVT_OK);
    size_t nb = kvt_engine_seq_n_full_blocks(s), stored = 0, n1, n2, len;
    assert_int_equal(kvt_engine_tier_store(src.e, tier, s, 0, nb, &stored), KVT_OK);
    assert_int_equal(stored, nb);
    kvt_block_key_t *keys = malloc(nb * sizeof(*keys));
    size_t n_keys = 0;
    assert_int_equal(kvt_block_key_chain(&src.root, B, tok, N_TOK, keys, nb, &n_keys), KVT_OK);
    kvt_tier_load_stats_t ls;
    assert_int_equal(kvt_engine_tier_load(dst.e, tier, keys, n_keys, &ls), KVT_OK);
    assert_int_equal(ls.loaded_blocks, nb);
    assert_int_equal(ls.failed_blocks, 0);
    kvt_seq_t *s2 = seq_new(&dst);
    size_t reused = 0;
    assert_int_equal(kvt_engine_seq_reuse(dst.e, s2, tok, N_TOK, &reused), KVT_OK);
    assert_int_equal(reused, nb * B);
    uint8_t *a = blocks_copy(&src, s, &n1, &len), *b = blocks_copy(&dst, s2, &n2, &len);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1 * len);
    print_message("gpu tier io: %zu blocks stored and loaded back bitwise\n", nb);
    free(a);
    free(b);
    free(keys);
    kvt_engine_seq_destroy(src.e, s);
    kvt_engine_seq_destroy(dst.e, s2);
    kvt_tier_close(tier);
    kvt_engine_destroy(src.e);
    kvt_engine_destroy(dst.e);
    tu_rmtree(data);
    free(data);
}

/* --- (f) the oracle, f32 KV on the GPU --- */

static char *read_all(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len_p = (size_t)n;
    }
    return buf;
}

static void oracle_one(int k, const char *preset)
{
    char path[1024];
    size_t len, flen;
    snprintf(path, sizeof(path), "%s/oracle/%s.json", KVT_FIXTURES, preset);
    char *text = read_all(path, &len);
    assert_non_null(text);
    cJSON *meta = cJSON_Parse(text);
    free(text);
    snprintf(path, sizeof(path), "%s/oracle/%s.logits.f32", KVT_FIXTURES, preset);
    float *want = (float *)read_all(path, &flen);
    assert_non_null(want);
    const kvt_model_t *m = g_models[k];
    uint32_t V = m->cfg.vocab_size;
    size_t stride = (size_t)cJSON_GetNumberValue(cJSON_GetObjectItem(meta, "id_stride"));
    size_t n_sub = (V + stride - 1) / stride;
    fx_t fx;
    fx_open(&fx, m, true, KVT_DTYPE_F32, 0);
    const float *w = want;
    double worst = 0;
    cJSON *pj;
    cJSON_ArrayForEach(pj, cJSON_GetObjectItem(meta, "prompts")) {
        cJSON *ids_j = cJSON_GetObjectItem(pj, "ids");
        size_t n = (size_t)cJSON_GetArraySize(ids_j);
        uint32_t *ids = malloc(n * sizeof(uint32_t));
        for (size_t i = 0; i < n; i++)
            ids[i] = (uint32_t)cJSON_GetNumberValue(cJSON_GetArrayItem(ids_j, (int)i));
        float *lg = malloc(n * V * sizeof(float)), *sub = malloc(n_sub * sizeof(float));
        kvt_seq_t *s = seq_new(&fx);
        assert_int_equal(kvt_engine_prefill(fx.e, s, ids, n, lg, KVT_ENGINE_LOGITS_ALL), KVT_OK);
        for (size_t t = 0; t < n; t++) {
            for (size_t j = 0; j < n_sub; j++)
                sub[j] = lg[t * V + j * stride];
            double e = rel_err(sub, w + t * n_sub, n_sub);
            worst = fmax(worst, e);
            if (e > REL_TOL)
                fail_msg("oracle %s position %zu: relative error %.3g", preset, t, e);
        }
        w += n * n_sub;
        kvt_engine_seq_destroy(fx.e, s);
        free(ids);
        free(lg);
        free(sub);
    }
    print_message("gpu oracle %-10s (f32 KV) worst relative error %.2e\n", preset, worst);
    kvt_engine_destroy(fx.e);
    free(want);
    cJSON_Delete(meta);
}

static void test_gpu_oracle(void **state)
{
    (void)state;
    oracle_one(M_TINY, "tiny");
    oracle_one(M_TINY_QWEN2, "tiny-qwen2");
}

/* --- (h) adopting a prompt: pool blocks plus the tail image --- */

/* The tail of seq (t > 0 tokens) read into a new buffer of *len_p bytes. */
static uint8_t *tail_get(fx_t *fx, const kvt_seq_t *seq, uint32_t t, size_t *len_p)
{
    uint64_t cap = kvt_tail_bytes(&kvt_engine_identity(fx->e)->layout, t);
    assert_true(cap > 0);
    uint8_t *img = malloc(cap);
    assert_non_null(img);
    size_t len = 0;
    assert_int_equal(kvt_engine_seq_tail(fx->e, seq, img, cap, &len), KVT_OK);
    assert_int_equal(len, cap);
    *len_p = len;
    return img;
}

/* Full blocks [0, nb) of seq: headers and images copied out of the
 * staging (seq_tail and seq_adopt reuse its buffer 0). */
static uint8_t *blocks_out(fx_t *fx, kvt_seq_t *seq, size_t nb, kvt_block_header_t *h,
                           const void **p)
{
    assert_true(nb <= kvt_engine_batch_blocks(fx->e));
    assert_int_equal(kvt_engine_seq_blocks(fx->e, seq, 0, nb, h, p), KVT_OK);
    size_t len = h[0].payload_len;
    uint8_t *img = malloc(nb * len);
    assert_non_null(img);
    for (size_t i = 0; i < nb; i++) {
        memcpy(img + i * len, p[i], len);
        p[i] = img + i * len;
    }
    return img;
}

/* One prompt of n tokens on model k: A prefilled on the GPU; C adopts it
 * in the same engine, D in a second GPU engine after pool_put_batch of
 * A's blocks, X in a CPU engine after pool_put of them. */
static void adopt_one(int k, fx_t *src, fx_t *dst, fx_t *cpu, size_t n)
{
    uint32_t V = src->V, tok[N_TOK], t = (uint32_t)(n % B);
    size_t nb = n / B, len = 0;
    make_tokens(tok, n, 500 + 7 * (uint32_t)k + (uint32_t)n, V);
    kvt_seq_t *a = seq_new(src), *c = seq_new(src), *d = seq_new(dst), *x = seq_new(cpu);
    float *la = malloc(V * sizeof(float)), *lc = malloc(V * sizeof(float));
    float *ld = malloc(V * sizeof(float)), *lx = malloc(V * sizeof(float));
    assert_int_equal(kvt_engine_prefill(src->e, a, tok, n, la, 0), KVT_OK);
    uint8_t *tail = NULL;
    if (t) {
        tail = tail_get(src, a, t, &len);
    } else {
        uint8_t none[16];
        size_t l = 777;
        assert_int_equal(kvt_engine_seq_tail(src->e, a, none, sizeof(none), &l),
                         KVT_ERR_NOT_FOUND);
        assert_int_equal(l, 777);
    }
    kvt_block_header_t h[N_TOK / B];
    const void *p[N_TOK / B];
    uint8_t *img = NULL;
    if (nb) {
        img = blocks_out(src, a, nb, h, p);
        kvt_status_t st[N_TOK / B];
        assert_int_equal(kvt_engine_pool_put_batch(dst->e, h, p, nb, st), KVT_OK);
        for (size_t i = 0; i < nb; i++) {
            assert_int_equal(st[i], KVT_OK);
            assert_int_equal(kvt_engine_pool_put(cpu->e, &h[i], p[i], h[i].payload_len), KVT_OK);
        }
    }
    assert_int_equal(kvt_engine_seq_adopt(src->e, c, tok, n, tail, len), KVT_OK);
    assert_int_equal(kvt_engine_seq_adopt(dst->e, d, tok, n, tail, len), KVT_OK);
    assert_int_equal(kvt_engine_seq_adopt(cpu->e, x, tok, n, tail, len), KVT_OK);
    assert_int_equal(kvt_engine_seq_len(c), n);
    assert_int_equal(kvt_engine_seq_len(d), n);
    if (t) { /* the adopted tails read back byte for byte */
        size_t l2;
        uint8_t *bc = tail_get(src, c, t, &l2), *bd = tail_get(dst, d, t, &l2);
        uint8_t *bx = tail_get(cpu, x, t, &l2);
        assert_int_equal(memcmp(bc, tail, len), 0);
        assert_int_equal(memcmp(bd, tail, len), 0);
        assert_int_equal(memcmp(bx, tail, len), 0);
        free(bc), free(bd), free(bx);
    }
    double cpu_err = 0;
    for (int step = 0; step < STEPS; step++) {
        uint32_t next = argmax(la, V);
        assert_int_equal(kvt_engine_decode(src->e, &a, &next, 1, la), KVT_OK);
        assert_int_equal(kvt_engine_decode(src->e, &c, &next, 1, lc), KVT_OK);
        assert_int_equal(kvt_engine_decode(dst->e, &d, &next, 1, ld), KVT_OK);
        assert_int_equal(memcmp(lc, la, V * sizeof(float)), 0);
        assert_int_equal(memcmp(ld, la, V * sizeof(float)), 0);
        if (step == 0) {
            assert_int_equal(kvt_engine_decode(cpu->e, &x, &next, 1, lx), KVT_OK);
            cpu_err = rel_err(lx, la, V);
            assert_true(cpu_err <= CPU_TOL);
        }
    }
    if (t) { /* STEPS > B - t: A's tail filled up into block nb */
        kvt_block_header_t hb;
        const void *pb;
        const kvt_block_layout_t *lay = &kvt_engine_identity(src->e)->layout;
        size_t row = (size_t)lay->n_kv_heads * lay->head_dim * 2; /* bf16 */
        assert_int_equal(kvt_engine_seq_block(src->e, a, nb, &hb, &pb), KVT_OK);
        for (size_t i = 0; i < 2 * (size_t)lay->n_layers; i++)
            assert_int_equal(memcmp(tail + i * t * row, (const uint8_t *)pb + i * B * row,
                                    t * row), 0);
    }
    print_message("gpu adopt %-10s n=%zu (%zu blocks + %u): %d decode steps bitwise in both "
                  "gpu engines; cpu engine adopted it, logits vs gpu %.2e\n", g_name[k], n, nb,
                  t, STEPS, cpu_err);
    kvt_engine_seq_destroy(src->e, a);
    kvt_engine_seq_destroy(src->e, c);
    kvt_engine_seq_destroy(dst->e, d);
    kvt_engine_seq_destroy(cpu->e, x);
    free(tail), free(img);
    free(la), free(lc), free(ld), free(lx);
}

static void test_gpu_adopt(void **state)
{
    (void)state;
    /* a tail after many blocks, no full block, no tail */
    static const size_t ns[] = {N_TOK, 7, 18 * B};
    for (int k = 0; k < M_COUNT; k++) {
        const kvt_model_t *m = g_models[k];
        fx_t src, dst, cpu;
        fx_open(&src, m, true, KVT_DTYPE_BF16, 128);
        fx_open(&dst, m, true, KVT_DTYPE_BF16, 128);
        fx_open(&cpu, m, false, KVT_DTYPE_BF16, 128);
        for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
            adopt_one(k, &src, &dst, &cpu, ns[i]);
        kvt_engine_destroy(src.e);
        kvt_engine_destroy(dst.e);
        kvt_engine_destroy(cpu.e);
    }
}

int main(void)
{
    if (kvt_gpu_device_count() == 0) {
        fprintf(stderr, "test_gpu_engine: no CUDA device, skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_vs_cpu),       cmocka_unit_test(test_gpu_resume),
        cmocka_unit_test(test_gpu_batch_decode), cmocka_unit_test(test_gpu_block_moves),
        cmocka_unit_test(test_gpu_tier_io),      cmocka_unit_test(test_gpu_oracle),
        cmocka_unit_test(test_gpu_graph_decode), cmocka_unit_test(test_gpu_adopt),
    };
    return cmocka_run_group_tests(tests, setup_models, teardown_models);
}
