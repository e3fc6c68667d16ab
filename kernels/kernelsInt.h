/* kernels/ internals shared by gpu.c, the .cu files and the references.
 *
 * C and CUDA C++ both include this header; everything is extern "C" so the
 * .cu files and gpu.c link as one C library. */
#ifndef KVT_KERNELS_KERNELS_INT_H
#define KVT_KERNELS_KERNELS_INT_H

#include "common/status.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Map a cudaError_t (passed as int, so C files need no CUDA header) to a
 * status, logging `what` and the CUDA error string once when it is not
 * success: NOMEM for out-of-memory, NOT_FOUND for a missing device, IO
 * otherwise.  Clears the runtime's last-error state. */
kvt_status_t kvt_gpu_status(int cuda_err, const char *what);

/* Check the launch just made on this thread (cudaGetLastError). */
kvt_status_t kvt_gpu_launch_status(const char *what);

#ifdef __cplusplus
}
#endif

/* bf16 <-> f32 for the references: round to nearest even, NaN stays NaN
 * (the rule of engine/ops.h, which kernels/ may not include from .cu). */
static inline uint16_t kvt_k_f32_to_bf16(float f)
{
    union {
        float f;
        uint32_t u;
    } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40u);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}

static inline float kvt_k_bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

#endif
