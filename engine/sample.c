/* Sampling; see sample.h.
 *
 * Order of the filters, as in Hugging Face generate(): temperature, then
 * top-k, then top-p.  Exactly:
 *   - temperature 0: argmax, lowest id on ties (no random draw is made);
 *   - z_i = logit_i / temperature; NaN logits count as -inf;
 *   - candidates sorted by (z descending, id ascending) -- a total order,
 *     so the sort is reproducible -- when top-k or top-p is on;
 *   - top-k keeps the first k; p_i = exp(z_i - z_max) in double;
 *   - top-p keeps the shortest prefix whose mass reaches top_p of the
 *     total (always at least one token);
 *   - one draw u = (xoshiro256** >> 11) * 2^-53 in [0, 1), scaled by the
 *     kept mass, picks the first candidate whose running sum exceeds it
 *     (in sorted order, or in id order when no filter is on).
 * The generator is seeded from params.seed through splitmix64, so the same
 * seed and logits give the same tokens everywhere. */
#include "engine/sample.h"

#include "common/alloc.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double p;
    float z;
    uint32_t id;
} cand_t;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

kvt_status_t kvt_sampler_init(kvt_sampler_t *s, const kvt_sample_params_t *params, uint32_t vocab)
{
    memset(s, 0, sizeof(*s));
    if (!params || vocab == 0 || !(params->temperature >= 0.0f) || isinf(params->temperature) ||
        !(params->top_p > 0.0f && params->top_p <= 1.0f))
        return KVT_ERR_INVALID;
    s->scratch = kvt_malloc("sampler.candidates", (size_t)vocab * sizeof(cand_t));
    if (!s->scratch)
        return KVT_ERR_NOMEM;
    s->params = *params;
    s->vocab = vocab;
    uint64_t x = params->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    return KVT_OK;
}

void kvt_sampler_cleanup(kvt_sampler_t *s)
{
    kvt_free(s->scratch);
    s->scratch = NULL;
}

static uint32_t argmax(const float *logits, uint32_t n)
{
    uint32_t best = 0;
    float bv = -INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        /* Strictly greater: the lowest id wins ties; NaN never wins. */
        if (logits[i] > bv) {
            bv = logits[i];
            best = i;
        }
    }
    return best;
}

static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->z != y->z)
        return x->z > y->z ? -1 : 1;
    return x->id < y->id ? -1 : 1;
}

/* The first candidate whose running sum exceeds u * mass. */
static uint32_t draw(kvt_sampler_t *s, const cand_t *c, size_t n, double mass)
{
    s->draws++;
    double u = (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53 * mass;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc)
            return c[i].id;
    }
    /* Rounding left u at or past the sum: the last candidate with mass. */
    for (size_t i = n; i-- > 0;)
        if (c[i].p > 0.0)
            return c[i].id;
    return c[0].id;
}

void kvt_sampler_skip(kvt_sampler_t *s, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        (void)xoshiro_next(s->rng);
    s->draws += n;
}

uint32_t kvt_sampler_next(kvt_sampler_t *s, const float *logits)
{
    const kvt_sample_params_t *pr = &s->params;
    uint32_t best = argmax(logits, s->vocab);
    if (pr->temperature == 0.0f || pr->top_k == 1 || !isfinite(logits[best]))
        return best;
    cand_t *c = s->scratch;
    float zmax = logits[best] / pr->temperature;
    /* A temperature so small that the top logit overflows: the limit of
     * the distribution is the greedy choice (and z - zmax would be NaN). */
    if (!isfinite(zmax))
        return best;
    for (uint32_t i = 0; i < s->vocab; i++) {
        float z = isnan(logits[i]) ? -INFINITY : logits[i] / pr->temperature;
        c[i] = (cand_t){.z = z, .id = i};
    }
    size_t n = s->vocab;
    bool filtered = pr->top_k > 0 || pr->top_p < 1.0f;
    if (filtered) {
        qsort(c, n, sizeof(*c), cand_cmp);
        if (pr->top_k > 0 && pr->top_k < n)
            n = pr->top_k;
    }
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        c[i].p = exp((double)c[i].z - (double)zmax);
        total += c[i].p;
    }
    if (pr->top_p < 1.0f) {
        double want = (double)pr->top_p * total, acc = 0.0;
        size_t keep = 0;
        while (keep < n && (keep == 0 || acc < want))
            acc += c[keep++].p;
        n = keep;
        total = acc;
    }
    return draw(s, c, n, total);
}
