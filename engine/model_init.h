/* `kvtier model init`: write a random-weight model directory from a preset.
 *
 * The directory is one that both kvt_model_load and Hugging Face
 * transformers accept: config.json in transformers' field names,
 * model.safetensors (or model-0000N-of-0000M.safetensors shards and
 * model.safetensors.index.json above max_shard_bytes), tokenizer.json (the
 * code tokenizer of engine/assets, embedded in the library),
 * tokenizer_config.json and generation_config.json.
 *
 * Weights are a pure function of (seed, tensor name): each tensor is drawn
 * in chunks of KVT_MODEL_INIT_CHUNK elements from a xoshiro256** stream
 * seeded by xxh3-64(name, seed) and the chunk index, normal deviates by
 * Marsaglia's polar method with a logarithm computed here from +, *, / and
 * sqrt only (all correctly rounded in IEEE 754), so the same seed gives the
 * same bytes on every machine and for every thread count.  Linear weights,
 * embeddings and biases ~ N(0, 0.02); norm weights ~ 1 + N(0, 0.1), so the
 * norms matter.  BF16 is rounded to nearest even from the f32 draw.
 *
 * Generation streams: threads draw chunks and write them straight into
 * their place in the file (kvt_st_writer_put), so memory stays a few MiB per
 * thread whatever the model size. */
#ifndef KVT_ENGINE_MODEL_INIT_H
#define KVT_ENGINE_MODEL_INIT_H

#include "engine/model.h"

#include <stddef.h>
#include <stdint.h>

#define KVT_MODEL_INIT_CHUNK (1u << 20)          /* elements per draw */
#define KVT_MODEL_INIT_SHARD_BYTES (4ull << 30)  /* default shard limit */
#define KVT_MODEL_INIT_EOS_ID 0u /* <|endoftext|> in the code tokenizer */
#define KVT_MODEL_INIT_PAD_ID 4u /* <|fim_pad|> */

typedef struct {
    const char *name;  /* "tiny", "llama-3.2-1b", ... */
    const char *about; /* one line for --help */
    kvt_model_config_t cfg;
} kvt_model_preset_t;

size_t kvt_model_preset_count(void);
const kvt_model_preset_t *kvt_model_preset_at(size_t i);
/* NULL for an unknown name. */
const kvt_model_preset_t *kvt_model_preset_find(const char *name);

typedef struct {
    const char *preset;
    const char *out_dir;       /* created if absent; must be empty if present */
    uint64_t seed;
    kvt_dtype_t dtype;         /* KVT_DTYPE_BF16 (0 means this) or KVT_DTYPE_F32 */
    uint64_t max_shard_bytes;  /* 0: KVT_MODEL_INIT_SHARD_BYTES */
    unsigned n_threads;        /* 0: one per online CPU */
} kvt_model_init_params_t;

typedef struct {
    kvt_model_config_t cfg;
    uint64_t n_params;
    uint64_t weight_bytes; /* all safetensors files */
    uint32_t n_shards;     /* 0: a single model.safetensors */
    uint8_t digest[32];    /* as kvt_model_load computes it */
} kvt_model_init_result_t;

/* Write the directory and check it by reading it back (kvt_model_inspect,
 * which gives the digest).  Errors: KVT_ERR_INVALID (unknown preset or
 * dtype), KVT_ERR_EXISTS (out_dir not empty, or not a directory),
 * KVT_ERR_IO / KVT_ERR_NOMEM; on failure the files written are removed
 * (and out_dir, if this call created it). */
kvt_status_t kvt_model_init(const kvt_model_init_params_t *params,
                            kvt_model_init_result_t *result_p);

/* The code tokenizer's tokenizer.json bytes (engine/assets). */
extern const unsigned char kvt_asset_code_tokenizer_json[];
extern const size_t kvt_asset_code_tokenizer_json_len;

#endif
