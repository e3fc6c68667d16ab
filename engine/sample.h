/* Sampling: next token from logits -- greedy, temperature, top-k, top-p,
 * seeded and reproducible (the same seed and logits give the same tokens on
 * every machine).  Greedy (temperature 0) takes the highest logit, the
 * lowest id on ties.  A sampler is caller-owned storage for one sequence;
 * not thread-safe. */
#ifndef KVT_ENGINE_SAMPLE_H
#define KVT_ENGINE_SAMPLE_H

#include "common/status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float temperature; /* 0 = greedy */
    uint32_t top_k;    /* 0 = off */
    float top_p;       /* 1 = off; (0, 1] */
    uint64_t seed;
} kvt_sample_params_t;

typedef struct {
    kvt_sample_params_t params; /* read-only */
    uint64_t draws;             /* read-only: random draws made so far */
    uint64_t rng[4];            /* private: xoshiro256** state */
    uint32_t vocab;             /* private */
    void *scratch;              /* private: [vocab] candidates */
} kvt_sampler_t;

/* KVT_ERR_INVALID for temperature < 0, top_p outside (0, 1], vocab 0. */
kvt_status_t kvt_sampler_init(kvt_sampler_t *s, const kvt_sample_params_t *params,
                              uint32_t vocab);
void kvt_sampler_cleanup(kvt_sampler_t *s);
/* The next token from logits[vocab]; logits are not modified. */
uint32_t kvt_sampler_next(kvt_sampler_t *s, const float *logits);
/* Advance the generator by n draws, as if n tokens had been sampled here
 * that took a draw each: a decode node continues a sequence whose first
 * token another node's sampler (same params) drew, and samples every later
 * token exactly as one sampler over the whole answer would. */
void kvt_sampler_skip(kvt_sampler_t *s, uint64_t n);

#endif
