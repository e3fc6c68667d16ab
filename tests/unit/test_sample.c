/* Sampling (engine/sample.h): greedy and its ties, temperature 0 vs > 0,
 * top-k = 1 and a tiny top-p reducing to greedy, seeded reproducibility,
 * the drawn distribution on a fixed logit vector (with temperature, top-k
 * and top-p) over many draws, and rejected parameters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/sample.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

static uint32_t one(const kvt_sample_params_t *p, const float *logits, uint32_t vocab)
{
    kvt_sampler_t s;
    assert_int_equal(kvt_sampler_init(&s, p, vocab), KVT_OK);
    uint32_t t = kvt_sampler_next(&s, logits);
    kvt_sampler_cleanup(&s);
    return t;
}

static void test_greedy_ties(void **state)
{
    (void)state;
    kvt_sample_params_t p = {.temperature = 0.0f, .top_p = 1.0f};
    float l[6] = {0.5f, 2.0f, -1.0f, 2.0f, NAN, 1.0f};
    assert_int_equal(one(&p, l, 6), 1); /* tie 1 vs 3: the lowest id */
    float m[4] = {NAN, -INFINITY, -3.0f, -3.0f};
    assert_int_equal(one(&p, m, 4), 2);
    float n[3] = {-INFINITY, INFINITY, INFINITY};
    assert_int_equal(one(&p, n, 3), 1);
    /* Logits are not modified. */
    float copy[6];
    memcpy(copy, l, sizeof(l));
    p.temperature = 1.0f;
    one(&p, l, 6);
    assert_int_equal(memcmp(copy, l, sizeof(l)), 0);
}

static void test_reduces_to_greedy(void **state)
{
    (void)state;
    float l[50];
    for (int i = 0; i < 50; i++)
        l[i] = (float)((i * 37) % 50) * 0.1f; /* max 4.9 at i = 27 */
    kvt_sample_params_t greedy = {.temperature = 0.0f, .top_p = 1.0f, .seed = 1};
    kvt_sample_params_t k1 = {.temperature = 1.5f, .top_k = 1, .top_p = 1.0f, .seed = 2};
    kvt_sample_params_t p0 = {.temperature = 1.5f, .top_p = 1e-6f, .seed = 3};
    kvt_sampler_t a, b, c;
    assert_int_equal(kvt_sampler_init(&a, &greedy, 50), KVT_OK);
    assert_int_equal(kvt_sampler_init(&b, &k1, 50), KVT_OK);
    assert_int_equal(kvt_sampler_init(&c, &p0, 50), KVT_OK);
    for (int i = 0; i < 200; i++) {
        assert_int_equal(kvt_sampler_next(&a, l), 27);
        assert_int_equal(kvt_sampler_next(&b, l), 27);
        assert_int_equal(kvt_sampler_next(&c, l), 27);
    }
    kvt_sampler_cleanup(&a);
    kvt_sampler_cleanup(&b);
    kvt_sampler_cleanup(&c);
}

static void draw_n(const kvt_sample_params_t *p, const float *l, uint32_t vocab, int n,
                   uint32_t *out)
{
    kvt_sampler_t s;
    assert_int_equal(kvt_sampler_init(&s, p, vocab), KVT_OK);
    for (int i = 0; i < n; i++)
        out[i] = kvt_sampler_next(&s, l);
    kvt_sampler_cleanup(&s);
}

static void test_seeded(void **state)
{
    (void)state;
    float l[64] = {0}; /* uniform */
    uint32_t a[300], b[300], c[300];
    kvt_sample_params_t p = {.temperature = 1.0f, .top_p = 1.0f, .seed = 42};
    draw_n(&p, l, 64, 300, a);
    draw_n(&p, l, 64, 300, b);
    assert_memory_equal(a, b, sizeof(a));
    p.seed = 43;
    draw_n(&p, l, 64, 300, c);
    assert_memory_not_equal(a, c, sizeof(a));
    /* Temperature > 0 on a flat distribution actually samples. */
    int distinct = 0;
    bool seen[64] = {0};
    for (int i = 0; i < 300; i++)
        if (!seen[a[i]]) {
            seen[a[i]] = true;
            distinct++;
        }
    assert_true(distinct > 50);
    /* Fixed vectors pin the generator and the walk (same on every machine). */
    uint32_t first[8];
    p.seed = 0;
    draw_n(&p, l, 64, 8, first);
    const uint32_t want[8] = {38, 47, 6, 26, 46, 63, 27, 34};
    assert_memory_equal(first, want, sizeof(want));
}

/* A sampler that skips the draws another sampler made continues exactly
 * where that one would; greedy steps and greedy logits make no draw. */
static void test_skip_continues(void **state)
{
    (void)state;
    float flat[64] = {0}, peaked[64] = {0};
    peaked[5] = 1e30f;
    peaked[6] = INFINITY; /* non-finite best: greedy, no draw */
    kvt_sample_params_t p = {.temperature = 0.7f, .top_p = 0.9f, .seed = 9};
    kvt_sampler_t whole, first, rest;
    assert_int_equal(kvt_sampler_init(&whole, &p, 64), KVT_OK);
    assert_int_equal(kvt_sampler_init(&first, &p, 64), KVT_OK);
    assert_int_equal(kvt_sampler_init(&rest, &p, 64), KVT_OK);
    for (int split = 0; split < 3; split++) {
        const float *l = split == 1 ? peaked : flat;
        assert_int_equal(kvt_sampler_next(&first, l), kvt_sampler_next(&whole, l));
    }
    assert_int_equal(first.draws, 2);
    kvt_sampler_skip(&rest, first.draws);
    assert_int_equal(rest.draws, 2);
    for (int i = 0; i < 50; i++)
        assert_int_equal(kvt_sampler_next(&rest, flat), kvt_sampler_next(&whole, flat));
    /* One draw too few gives another stream. */
    kvt_sampler_t off;
    assert_int_equal(kvt_sampler_init(&off, &p, 64), KVT_OK);
    kvt_sampler_skip(&off, 1);
    int differ = 0;
    kvt_sampler_t ref;
    assert_int_equal(kvt_sampler_init(&ref, &p, 64), KVT_OK);
    kvt_sampler_skip(&ref, 2);
    for (int i = 0; i < 20; i++)
        differ += kvt_sampler_next(&off, flat) != kvt_sampler_next(&ref, flat);
    assert_true(differ > 0);
    kvt_sampler_cleanup(&whole);
    kvt_sampler_cleanup(&first);
    kvt_sampler_cleanup(&rest);
    kvt_sampler_cleanup(&off);
    kvt_sampler_cleanup(&ref);
}

/* Frequencies of ids 0..3 over n draws against expected probabilities. */
static void check_freq(const kvt_sample_params_t *p, const double *want)
{
    const int n = 100000;
    float l[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    int count[4] = {0};
    kvt_sampler_t s;
    assert_int_equal(kvt_sampler_init(&s, p, 4), KVT_OK);
    for (int i = 0; i < n; i++)
        count[kvt_sampler_next(&s, l)]++;
    kvt_sampler_cleanup(&s);
    for (int i = 0; i < 4; i++) {
        double f = (double)count[i] / n;
        if (fabs(f - want[i]) > 0.01 || (want[i] == 0.0 && count[i] != 0))
            fail_msg("id %d: frequency %.4f, expected %.4f", i, f, want[i]);
    }
}

static void test_distribution(void **state)
{
    (void)state;
    kvt_sample_params_t p = {.temperature = 1.0f, .top_p = 1.0f, .seed = 7};
    check_freq(&p, (double[]){0.1, 0.2, 0.3, 0.4});
    /* Temperature 2: p^(1/2), renormalised. */
    double r[4] = {sqrt(0.1), sqrt(0.2), sqrt(0.3), sqrt(0.4)}, sum = r[0] + r[1] + r[2] + r[3];
    p.temperature = 2.0f;
    check_freq(&p, (double[]){r[0] / sum, r[1] / sum, r[2] / sum, r[3] / sum});
    p.temperature = 1.0f;
    p.top_k = 2;
    check_freq(&p, (double[]){0.0, 0.0, 3.0 / 7, 4.0 / 7});
    p.top_k = 0;
    p.top_p = 0.5f; /* 0.4 < 0.5: 0.3 joins */
    check_freq(&p, (double[]){0.0, 0.0, 3.0 / 7, 4.0 / 7});
    p.top_p = 0.35f;
    check_freq(&p, (double[]){0.0, 0.0, 0.0, 1.0});
    p.top_p = 0.95f; /* 0.4 + 0.3 + 0.2 = 0.9 < 0.95: all four */
    check_freq(&p, (double[]){0.1, 0.2, 0.3, 0.4});
    p.top_k = 3;
    p.top_p = 0.7f; /* top-k first (2/9, 3/9, 4/9), then 4/9 + 3/9 >= 0.7 */
    check_freq(&p, (double[]){0.0, 0.0, 3.0 / 7, 4.0 / 7});
    p.top_p = 0.8f; /* 7/9 < 0.8: the third stays */
    check_freq(&p, (double[]){0.0, 2.0 / 9, 3.0 / 9, 4.0 / 9});
}

static void test_invalid(void **state)
{
    (void)state;
    kvt_sampler_t s;
    kvt_sample_params_t p = {.temperature = -0.1f, .top_p = 1.0f};
    assert_int_equal(kvt_sampler_init(&s, &p, 10), KVT_ERR_INVALID);
    p.temperature = NAN;
    assert_int_equal(kvt_sampler_init(&s, &p, 10), KVT_ERR_INVALID);
    p.temperature = INFINITY;
    assert_int_equal(kvt_sampler_init(&s, &p, 10), KVT_ERR_INVALID);
    p.temperature = 1.0f;
    p.top_p = 0.0f;
    assert_int_equal(kvt_sampler_init(&s, &p, 10), KVT_ERR_INVALID);
    p.top_p = 1.5f;
    assert_int_equal(kvt_sampler_init(&s, &p, 10), KVT_ERR_INVALID);
    p.top_p = NAN;
    assert_int_equal(kvt_sampler_init(&s, &p, 10), KVT_ERR_INVALID);
    p.top_p = 1.0f;
    assert_int_equal(kvt_sampler_init(&s, &p, 0), KVT_ERR_INVALID);
    assert_int_equal(kvt_sampler_init(&s, NULL, 10), KVT_ERR_INVALID);
    assert_int_equal(kvt_sampler_init(&s, &p, 10), KVT_OK);
    kvt_sampler_cleanup(&s);
    kvt_sampler_cleanup(&s); /* idempotent */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_ties),
        cmocka_unit_test(test_reduces_to_greedy),
        cmocka_unit_test(test_seeded),
        cmocka_unit_test(test_skip_continues),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
