/* Internals shared by model_config.c, model.c and model_init.c: the
 * canonical tensor list of an architecture, the canonical config text
 * hashed into the digest, bounded file reads and a parallel-for.  Not for
 * other modules (they use model.h / model_init.h). */
#ifndef KVT_ENGINE_MODEL_INT_H
#define KVT_ENGINE_MODEL_INT_H

#include "engine/model.h"

#include <stddef.h>
#include <stdint.h>

#define KVT_MSPEC_NAME 96
#define KVT_CONFIG_MAX_BYTES (1u << 20) /* config.json and friends */

/* Which weight a tensor is: decides its place in kvt_model_t and, in
 * `model init`, how it is drawn. */
typedef enum {
    KVT_MW_EMBED,
    KVT_MW_FINAL_NORM,
    KVT_MW_LM_HEAD,
    KVT_MW_ATTN_NORM,
    KVT_MW_WQ,
    KVT_MW_WK,
    KVT_MW_WV,
    KVT_MW_BQ,
    KVT_MW_BK,
    KVT_MW_BV,
    KVT_MW_WO,
    KVT_MW_MLP_NORM,
    KVT_MW_GATE,
    KVT_MW_UP,
    KVT_MW_DOWN,
} kvt_mweight_t;

typedef struct {
    char name[KVT_MSPEC_NAME]; /* Hugging Face name, "model.layers.3.mlp.up_proj.weight" */
    kvt_mweight_t which;
    uint32_t layer;            /* for per-layer weights */
    uint32_t rank;             /* 1 (norms, biases) or 2 */
    uint64_t shape[2];
    uint64_t n_elems;
} kvt_mspec_t;

/* Every tensor the config needs, in file order: embed, then per layer
 * input_layernorm, q, k, v (+ biases), o, post_attention_layernorm, gate,
 * up, down; then norm and, when untied, lm_head.  Caller frees *specs_p
 * with kvt_free. */
kvt_status_t kvt_mspecs(const kvt_model_config_t *cfg, kvt_mspec_t **specs_p, size_t *n_p);
/* Where a tensor's f32 copy lives in a model. */
float **kvt_mspec_slot(kvt_model_t *model, const kvt_mspec_t *spec);

/* "arch=llama\nvocab_size=...\n...": every config field that changes what
 * the model computes, one per line, numbers in a fixed format.  Returns the
 * length (truncated to cap - 1 like snprintf; 1024 bytes always suffice). */
size_t kvt_model_config_canonical(const kvt_model_config_t *cfg, char *out, size_t cap);

/* Read a whole file of at most max bytes (NUL-terminated copy; caller
 * kvt_frees).  KVT_ERR_NOT_FOUND, KVT_ERR_TOO_LARGE, KVT_ERR_IO, logged
 * with the path. */
kvt_status_t kvt_model_read_file(const char *path, size_t max, char **buf_p, size_t *len_p);

/* Run fn(arg, job) for job in [0, n_jobs) on up to n_threads threads (0:
 * one per online CPU, at most 64), the caller's thread among them; returns
 * when all are done.  Jobs are taken in order from a shared counter, so the
 * split of work never depends on the thread count.  fn reports errors
 * through arg. */
void kvt_model_parallel(size_t n_jobs, unsigned n_threads, void (*fn)(void *arg, size_t job),
                        void *arg);

#endif
