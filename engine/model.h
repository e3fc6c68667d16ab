/* Model: the architecture config and the weights of one Llama-family model,
 * loaded from a Hugging Face model directory (DESIGN.md section 5).
 *
 * Accepted: config.json with architectures LlamaForCausalLM or
 * Qwen2ForCausalLM (GQA, RMSNorm, RoPE with rope_theta and the "llama3"
 * rope_scaling, SwiGLU, optional q/k/v bias, tied or untied embeddings,
 * explicit head_dim); model.safetensors or shards listed in
 * model.safetensors.index.json; tensors in BF16, F16 or F32.  Weights are
 * converted to f32 at load (the CPU reference path); the mapped files are
 * released before kvt_model_load returns.
 *
 * Tensor shapes follow Hugging Face's nn.Linear convention: a projection
 * from `in` to `out` features is stored row-major as [out][in], so output
 * feature o is the dot product of row o with the input.
 *
 * Every file is untrusted input: a malformed or inconsistent file is
 * rejected with KVT_ERR_INVALID / KVT_ERR_CORRUPT / KVT_ERR_TOO_LARGE and a
 * log line naming the file and the field; nothing is read out of bounds.
 *
 * The model digest is SHA-256 over the canonical architecture config, the
 * tokenizer.json bytes and every tensor (name, dtype, shape, data).  The
 * fingerprint of invariant 1 adds the KV dtype and block_tokens to it
 * (kvt_model_fingerprint). */
#ifndef KVT_ENGINE_MODEL_H
#define KVT_ENGINE_MODEL_H

#include "common/status.h"
#include "kvstore/block.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_MODEL_MAX_EOS 8
#define KVT_MODEL_MAX_LAYERS 512
#define KVT_MODEL_MAX_VOCAB (1u << 22)
#define KVT_MODEL_MAX_DIM (1u << 17)

typedef enum {
    KVT_ARCH_LLAMA = 1, /* LlamaForCausalLM */
    KVT_ARCH_QWEN2 = 2, /* Qwen2ForCausalLM: q/k/v bias */
} kvt_arch_t;

typedef enum {
    KVT_ROPE_NONE = 0,
    KVT_ROPE_LINEAR = 1, /* positions divided by factor (DeepSeek-Coder) */
    KVT_ROPE_LLAMA3 = 2, /* Llama 3.1 frequency-dependent scaling */
} kvt_rope_scaling_t;

typedef struct {
    kvt_arch_t arch;
    uint32_t vocab_size;
    uint32_t hidden;       /* hidden_size */
    uint32_t intermediate; /* intermediate_size */
    uint32_t n_layers;     /* num_hidden_layers */
    uint32_t n_heads;      /* num_attention_heads */
    uint32_t n_kv_heads;   /* num_key_value_heads (defaults to n_heads) */
    uint32_t head_dim;     /* head_dim (defaults to hidden / n_heads) */
    uint32_t max_pos;      /* max_position_embeddings */
    float rms_eps;         /* rms_norm_eps */
    float rope_theta;
    bool qkv_bias;         /* Qwen2 always; Llama: attention_bias */
    bool tie_embeddings;   /* tie_word_embeddings */
    /* rope_scaling: null, {"rope_type"|"type": "linear", "factor"} or
     * {"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
     * original_max_position_embeddings}; anything else is rejected. */
    kvt_rope_scaling_t rope_scaling;
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    uint32_t rope_orig_max_pos;
    /* bos_token_id / eos_token_id (a number or a list); has_bos false if null */
    bool has_bos;
    uint32_t bos_id;
    uint32_t n_eos;
    uint32_t eos_ids[KVT_MODEL_MAX_EOS];
} kvt_model_config_t;

/* One decoder layer, f32.  [out][in] row-major (see the file comment). */
typedef struct {
    float *attn_norm; /* [hidden] input_layernorm */
    float *wq;        /* [n_heads*head_dim][hidden] */
    float *wk;        /* [n_kv_heads*head_dim][hidden] */
    float *wv;        /* [n_kv_heads*head_dim][hidden] */
    float *bq, *bk, *bv; /* biases, NULL unless cfg.qkv_bias */
    float *wo;        /* [hidden][n_heads*head_dim] */
    float *mlp_norm;  /* [hidden] post_attention_layernorm */
    float *w_gate;    /* [intermediate][hidden] */
    float *w_up;      /* [intermediate][hidden] */
    float *w_down;    /* [hidden][intermediate] */
} kvt_layer_weights_t;

/* Public, read-only after load.  Owned by the model (kvt_model_destroy). */
typedef struct kvt_model {
    kvt_model_config_t cfg;
    float *embed;        /* [vocab][hidden] model.embed_tokens.weight */
    kvt_layer_weights_t *layers; /* [n_layers] */
    float *final_norm;   /* [hidden] model.norm.weight */
    float *lm_head;      /* [vocab][hidden]; == embed when tied */
    uint8_t digest[32];  /* config + tokenizer + weights (file comment) */
    char *dir;           /* the directory it was loaded from (NULL if built) */
    void *priv;          /* private: allocations */
} kvt_model_t;

/* Load config.json, the weights and hash tokenizer.json of `dir`.  The
 * caller destroys *model_p.  Errors as in the file comment. */
kvt_status_t kvt_model_load(const char *dir, kvt_model_t **model_p);
/* Check a model directory as kvt_model_load does (config, tensor names,
 * dtypes and shapes, tokenizer.json) and compute its digest, without
 * converting or keeping the weights: memory stays small whatever the model
 * size.  cfg_p and digest are written only on success. */
kvt_status_t kvt_model_inspect(const char *dir, kvt_model_config_t *cfg_p, uint8_t digest[32]);
/* Parse config.json text (bounded, checked).  `what` names the file in
 * error messages. */
kvt_status_t kvt_model_config_parse(const char *json, size_t len, const char *what,
                                    kvt_model_config_t *cfg_p);
/* Allocate a model with the given config and zeroed weights (tests build
 * models in memory this way; digest is left zero, dir NULL). */
kvt_status_t kvt_model_alloc(const kvt_model_config_t *cfg, kvt_model_t **model_p);
void kvt_model_destroy(kvt_model_t *model);

/* The fingerprint of invariant 1:
 *   SHA-256("kvtier-model-v1" || digest || u32le(kv_dtype) || u32le(B)). */
void kvt_model_fingerprint(const kvt_model_t *model, kvt_dtype_t kv_dtype,
                           uint32_t block_tokens, uint8_t out[KVT_FINGERPRINT_LEN]);

/* "LlamaForCausalLM" / "Qwen2ForCausalLM" (architectures), "llama" /
 * "qwen2" (model_type). */
const char *kvt_model_arch_class(kvt_arch_t arch);
const char *kvt_model_arch_type(kvt_arch_t arch);

/* Parameter count (embeddings counted once when tied). */
uint64_t kvt_model_n_params(const kvt_model_config_t *cfg);

#endif
