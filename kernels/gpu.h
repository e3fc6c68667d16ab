/* GPU runtime wrappers: devices, memory, streams, events, cuBLAS handles.
 *
 * The only place that talks to the CUDA runtime for the engine; every call
 * returns kvt_status_t and logs the CUDA error string where it is first
 * seen (KVT_ERR_NOMEM for out-of-memory, KVT_ERR_IO for any other CUDA
 * failure, KVT_ERR_NOT_FOUND when no usable device exists).  Built only
 * when CUDA is (kernels/ is compiled by nvcc and the CUDA runtime); the CPU
 * build never includes this header.
 *
 * Handles are opaque: kvt_gpu_stream_t is a cudaStream_t, kvt_gpu_graph_t a
 * cudaGraphExec_t, kvt_gpu_blas_t a cublasHandle_t bound to one stream
 * (with its own workspace, so its products can be captured).  Device pointers are plain pointers
 * that host code must never dereference.  Memory given to an async copy
 * belongs to the stream until the stream is synchronized. */
#ifndef KVT_KERNELS_GPU_H
#define KVT_KERNELS_GPU_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_gpu_stream *kvt_gpu_stream_t;
typedef struct kvt_gpu_blas *kvt_gpu_blas_t;
typedef struct kvt_gpu_event *kvt_gpu_event_t;
typedef struct kvt_gpu_graph *kvt_gpu_graph_t;

/* Number of usable devices (0 when the driver or the device is missing;
 * never fails). */
int kvt_gpu_device_count(void);
/* Make `device` current for the calling thread; KVT_ERR_NOT_FOUND if absent. */
kvt_status_t kvt_gpu_use(int device);
/* "NVIDIA H100 80GB HBM3", SMs, memory, driver version, into text. */
void kvt_gpu_describe(int device, char *text, size_t cap);

kvt_status_t kvt_gpu_malloc(void **ptr_p, size_t bytes, const char *what);
void kvt_gpu_free(void *ptr);
/* Page-locked host memory (for async copies at full speed). */
kvt_status_t kvt_gpu_host_alloc(void **ptr_p, size_t bytes, const char *what);
void kvt_gpu_host_free(void *ptr);
/* Page-lock existing host memory (e.g. the T1 pool region) / undo it. */
kvt_status_t kvt_gpu_host_register(void *ptr, size_t bytes);
void kvt_gpu_host_unregister(void *ptr);

kvt_status_t kvt_gpu_stream_create(kvt_gpu_stream_t *s_p);
void kvt_gpu_stream_destroy(kvt_gpu_stream_t s);
kvt_status_t kvt_gpu_stream_sync(kvt_gpu_stream_t s);

/* Async copies on a stream (host memory should be pinned for speed). */
kvt_status_t kvt_gpu_h2d(void *dst, const void *src, size_t bytes, kvt_gpu_stream_t s);
kvt_status_t kvt_gpu_d2h(void *dst, const void *src, size_t bytes, kvt_gpu_stream_t s);
kvt_status_t kvt_gpu_d2d(void *dst, const void *src, size_t bytes, kvt_gpu_stream_t s);
kvt_status_t kvt_gpu_memset(void *dst, int value, size_t bytes, kvt_gpu_stream_t s);
/* Many (dst, src, bytes) copies of one direction as few driver calls as
 * possible (cudaMemcpyBatchAsync where available, else a loop). kind:
 * 0 h2d, 1 d2h, 2 d2d. */
kvt_status_t kvt_gpu_copy_batch(void *const *dst, const void *const *src, const size_t *bytes,
                                size_t n, int kind, kvt_gpu_stream_t s);

kvt_status_t kvt_gpu_event_create(kvt_gpu_event_t *e_p);
void kvt_gpu_event_destroy(kvt_gpu_event_t e);
kvt_status_t kvt_gpu_event_record(kvt_gpu_event_t e, kvt_gpu_stream_t s);
/* Milliseconds between two recorded events (waits for `end`). */
kvt_status_t kvt_gpu_event_elapsed_ms(kvt_gpu_event_t start, kvt_gpu_event_t end, float *ms_p);

/* CUDA graphs: capture what the calling thread queues on s between begin
 * and end (nothing runs meanwhile), then instantiate it.  end with discard
 * (a launch failed during the capture) drops it and returns
 * KVT_ERR_AGAIN; a capture that failed is KVT_ERR_IO, and the stream
 * is usable again either way.  A launched graph runs on s like the work
 * it captured; destroy it only when s is idle. */
kvt_status_t kvt_gpu_capture_begin(kvt_gpu_stream_t s);
kvt_status_t kvt_gpu_capture_end(kvt_gpu_stream_t s, bool discard, kvt_gpu_graph_t *g_p);
kvt_status_t kvt_gpu_graph_launch(kvt_gpu_graph_t g, kvt_gpu_stream_t s);
void kvt_gpu_graph_destroy(kvt_gpu_graph_t g);

/* cuBLAS handle on stream s (tensor-op math allowed). */
kvt_status_t kvt_gpu_blas_create(kvt_gpu_stream_t s, kvt_gpu_blas_t *h_p);
void kvt_gpu_blas_destroy(kvt_gpu_blas_t h);

/* y[rows][out] (f32) = beta * y + x[rows][in] (bf16) . W[out][in]^T (bf16),
 * f32 accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F).  beta is 0 or 1
 * (1 adds into y: the residual stream).  Row-major, HF's [out][in]. */
kvt_status_t kvt_gpu_gemm_bf16(kvt_gpu_blas_t h, const uint16_t *w, const uint16_t *x, float *y,
                               size_t rows, size_t in, size_t out, float beta);

#endif
