/* The presets of `kvtier model init` (model_init.h): the exact shapes of
 * real models, so random-weight directories exercise the same memory, KV
 * block sizes and compute as the real checkpoints, plus tiny ones for
 * tests.  Every preset uses the code tokenizer (ids < 16384), with no BOS
 * and <|endoftext|> (id 0) as EOS. */
#include "engine/model_init.h"

#include <string.h>

#define EOS .n_eos = 1, .eos_ids = {KVT_MODEL_INIT_EOS_ID}

static const kvt_model_preset_t g_presets[] = {
    {"tiny", "Llama, 2 layers, hidden 64 (tests)",
     {.arch = KVT_ARCH_LLAMA, .vocab_size = 16384, .hidden = 64, .intermediate = 176,
      .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16, .max_pos = 4096,
      .rms_eps = 1e-5f, .rope_theta = 10000.0f, .rope_factor = 1.0f, EOS}},
    {"tiny-qwen2", "Qwen2, 2 layers, hidden 64, q/k/v bias, tied (tests)",
     {.arch = KVT_ARCH_QWEN2, .vocab_size = 16384, .hidden = 64, .intermediate = 176,
      .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16, .max_pos = 4096,
      .rms_eps = 1e-6f, .rope_theta = 1000000.0f, .qkv_bias = true, .tie_embeddings = true,
      .rope_factor = 1.0f, EOS}},
    {"small", "Llama, 6 layers, hidden 384, tied",
     {.arch = KVT_ARCH_LLAMA, .vocab_size = 16384, .hidden = 384, .intermediate = 1024,
      .n_layers = 6, .n_heads = 6, .n_kv_heads = 2, .head_dim = 64, .max_pos = 8192,
      .rms_eps = 1e-5f, .rope_theta = 500000.0f, .tie_embeddings = true, .rope_factor = 1.0f,
      EOS}},
    {"llama-3.2-1b", "Llama 3.2 1B shapes (llama3 RoPE scaling, tied)",
     {.arch = KVT_ARCH_LLAMA, .vocab_size = 128256, .hidden = 2048, .intermediate = 8192,
      .n_layers = 16, .n_heads = 32, .n_kv_heads = 8, .head_dim = 64, .max_pos = 131072,
      .rms_eps = 1e-5f, .rope_theta = 500000.0f, .tie_embeddings = true,
      .rope_scaling = KVT_ROPE_LLAMA3, .rope_factor = 32.0f, .rope_low_freq_factor = 1.0f,
      .rope_high_freq_factor = 4.0f, .rope_orig_max_pos = 8192, EOS}},
    {"qwen2.5-coder-1.5b", "Qwen2.5-Coder 1.5B shapes (q/k/v bias, tied)",
     {.arch = KVT_ARCH_QWEN2, .vocab_size = 151936, .hidden = 1536, .intermediate = 8960,
      .n_layers = 28, .n_heads = 12, .n_kv_heads = 2, .head_dim = 128, .max_pos = 32768,
      .rms_eps = 1e-6f, .rope_theta = 1000000.0f, .qkv_bias = true, .tie_embeddings = true,
      .rope_factor = 1.0f, EOS}},
    {"deepseek-coder-6.7b", "DeepSeek-Coder 6.7B shapes (linear RoPE scaling x4)",
     {.arch = KVT_ARCH_LLAMA, .vocab_size = 32256, .hidden = 4096, .intermediate = 11008,
      .n_layers = 32, .n_heads = 32, .n_kv_heads = 32, .head_dim = 128, .max_pos = 16384,
      .rms_eps = 1e-6f, .rope_theta = 100000.0f, .rope_scaling = KVT_ROPE_LINEAR,
      .rope_factor = 4.0f, EOS}},
    {"llama-3.1-8b", "Llama 3.1 8B shapes (llama3 RoPE scaling)",
     {.arch = KVT_ARCH_LLAMA, .vocab_size = 128256, .hidden = 4096, .intermediate = 14336,
      .n_layers = 32, .n_heads = 32, .n_kv_heads = 8, .head_dim = 128, .max_pos = 131072,
      .rms_eps = 1e-5f, .rope_theta = 500000.0f, .rope_scaling = KVT_ROPE_LLAMA3,
      .rope_factor = 8.0f, .rope_low_freq_factor = 1.0f, .rope_high_freq_factor = 4.0f,
      .rope_orig_max_pos = 8192, EOS}},
};

size_t kvt_model_preset_count(void) { return sizeof(g_presets) / sizeof(g_presets[0]); }

const kvt_model_preset_t *kvt_model_preset_at(size_t i)
{
    return i < kvt_model_preset_count() ? &g_presets[i] : NULL;
}

const kvt_model_preset_t *kvt_model_preset_find(const char *name)
{
    for (size_t i = 0; name && i < kvt_model_preset_count(); i++)
        if (!strcmp(g_presets[i].name, name))
            return &g_presets[i];
    return NULL;
}
