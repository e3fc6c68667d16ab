/* Device facts and reference measurements for `kvtier bench engine`
 * (STYLE.md: every figure beside a same-run reference).  Implemented in
 * engine/device.c, the one engine file that knows whether CUDA is built
 * in, so callers need no CUDA header: without CUDA (or for the CPU device)
 * the GPU calls answer KVT_ERR_NOT_FOUND. */
#ifndef KVT_ENGINE_DEVICE_H
#define KVT_ENGINE_DEVICE_H

#include "common/status.h"
#include "engine/engine.h"

#include <stdbool.h>
#include <stddef.h>

/* Whether this build has the CUDA engine. */
bool kvt_device_have_cuda(void);
/* The GPU's name, SMs, memory and driver (kvt_gpu_describe), or "cpu". */
kvt_status_t kvt_device_describe(kvt_device_t device, char *text, size_t cap);

/* cuBLAS bf16 product through kvt_gpu_gemm_bf16 -- y[m][n] (f32) =
 * x[m][k] (bf16) . W[n][k]^T (bf16), the engine's projection shape -- on
 * random data: TFLOP/s (2mkn per product), the best of a few timed runs
 * of >= ~50 ms after a warm-up, timed with CUDA events. */
kvt_status_t kvt_device_ref_gemm(kvt_device_t device, size_t m, size_t k, size_t n,
                                 double *tflops_p);

typedef struct {
    double d2d_gbs; /* device-to-device copy, bytes read + written per second / 1e9 */
    double h2d_gbs; /* pinned host -> device, bytes per second / 1e9 */
    double d2h_gbs; /* device -> pinned host */
} kvt_device_copy_ref_t;

/* Copy bandwidths for `bytes` moved in copies of `piece` bytes (0: one
 * copy), pinned host memory, one stream, after a warm-up; the best of 3. */
kvt_status_t kvt_device_ref_copy(kvt_device_t device, size_t bytes, size_t piece,
                                 kvt_device_copy_ref_t *ref_p);

#endif
