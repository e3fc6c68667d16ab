/* Internals of `kvtier bench engine` shared by its CPU half
 * (cli/cmd_bench_engine.c) and its GPU half (cli/bench_engine_gpu.c). */
#ifndef KVT_CLI_BENCH_ENGINE_H
#define KVT_CLI_BENCH_ENGINE_H

#include "cli/cli.h"
#include "engine/engine.h"
#include "engine/model.h"

#include <stddef.h>
#include <stdint.h>

/* FLOPs of one token through the decoder layers at context length ctx. */
double kvt_bench_token_flops(const kvt_model_config_t *c, double ctx);
/* FLOPs of the lm_head for one position. */
double kvt_bench_lm_head_flops(const kvt_model_config_t *c);
/* n pseudo-random token ids below vocab from seed (xorshift). */
void kvt_bench_fill_tokens(uint32_t *ids, size_t n, uint32_t vocab, uint64_t seed);
/* qsort comparator of doubles, ascending. */
int kvt_bench_cmp_double(const void *x, const void *y);

/* The GPU bench on device dev (flags already parsed and checked): exit code. */
int kvt_bench_engine_gpu(const kvt_config_t *cfg, const char *dir, kvt_device_t dev);

#endif
