/* GPU runtime wrappers (kernels/gpu.h): the CUDA runtime and cuBLAS seen
 * from C.
 *
 * Every CUDA error is converted here, at the boundary, into a kvt_status_t
 * and logged once with the CUDA error string.  Opaque handles are the CUDA
 * handles themselves, cast: kvt_gpu_stream_t is a cudaStream_t (NULL is the
 * legacy default stream), kvt_gpu_event_t a cudaEvent_t, kvt_gpu_graph_t a
 * cudaGraphExec_t; kvt_gpu_blas_t is a cublasHandle_t with its workspace.
 * Streams are created non-blocking, so they never
 * serialise behind work on the legacy default stream.
 *
 * kvt_gpu_copy_batch is a loop of cudaMemcpyAsync: cudaMemcpyBatchAsync
 * changed its signature between CUDA 12.8 and 13, and a loop is as fast for
 * the few large copies (whole block images) the tiers make. */
#include "kernels/gpu.h"

#include "common/log.h"
#include "kernels/kernelsInt.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

kvt_status_t kvt_gpu_status(int cuda_err, const char *what)
{
    cudaError_t err = (cudaError_t)cuda_err;
    if (err == cudaSuccess)
        return KVT_OK;
    (void)cudaGetLastError(); /* clear a non-sticky error */
    kvt_log_error("cuda call failed what=%s err=%s (%s)", what, cudaGetErrorName(err),
                  cudaGetErrorString(err));
    switch (err) {
    case cudaErrorMemoryAllocation:
        return KVT_ERR_NOMEM;
    case cudaErrorNoDevice:
    case cudaErrorInvalidDevice:
    case cudaErrorInsufficientDriver:
        return KVT_ERR_NOT_FOUND;
    default:
        return KVT_ERR_IO;
    }
}

kvt_status_t kvt_gpu_launch_status(const char *what)
{
    return kvt_gpu_status((int)cudaGetLastError(), what);
}

static const char *cublas_err_name(cublasStatus_t st)
{
    switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "not_initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "alloc_failed";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "invalid_value";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "arch_mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "execution_failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "not_supported";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "internal_error";
    default:
        return "other";
    }
}

static kvt_status_t blas_status(cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS)
        return KVT_OK;
    kvt_log_error("cublas call failed what=%s err=%s code=%d", what, cublas_err_name(st), (int)st);
    return st == CUBLAS_STATUS_ALLOC_FAILED ? KVT_ERR_NOMEM : KVT_ERR_IO;
}

/* --- devices --- */

int kvt_gpu_device_count(void)
{
    int n = 0;
    /* No driver, no device, a driver too old: all mean "no GPU" here, and
     * none is worth a log line (CI machines have no GPU). */
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0 ? n : 0;
}

kvt_status_t kvt_gpu_use(int device)
{
    int n = kvt_gpu_device_count();
    if (device < 0 || device >= n) {
        kvt_log_error("no such gpu device=%d devices=%d", device, n);
        return KVT_ERR_NOT_FOUND;
    }
    return kvt_gpu_status((int)cudaSetDevice(device), "cudaSetDevice");
}

void kvt_gpu_describe(int device, char *text, size_t cap)
{
    if (!text || cap == 0)
        return;
    struct cudaDeviceProp p;
    if (device < 0 || device >= kvt_gpu_device_count() ||
        cudaGetDeviceProperties(&p, device) != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(text, cap, "no gpu %d", device);
        return;
    }
    int drv = 0, rt = 0;
    if (cudaDriverGetVersion(&drv) != cudaSuccess)
        drv = 0;
    if (cudaRuntimeGetVersion(&rt) != cudaSuccess)
        rt = 0;
    (void)cudaGetLastError();
    snprintf(text, cap, "%s, %d SMs, %.1f GiB, cc %d.%d, driver %d.%d, runtime %d.%d", p.name,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
             p.major, p.minor, drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
}

/* --- memory --- */

kvt_status_t kvt_gpu_malloc(void **ptr_p, size_t bytes, const char *what)
{
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        kvt_log_error("gpu alloc failed what=%s bytes=%zu", what ? what : "?", bytes);
        return kvt_gpu_status((int)err, "cudaMalloc");
    }
    *ptr_p = p;
    return KVT_OK;
}

void kvt_gpu_free(void *ptr)
{
    if (ptr)
        (void)kvt_gpu_status((int)cudaFree(ptr), "cudaFree");
}

kvt_status_t kvt_gpu_host_alloc(void **ptr_p, size_t bytes, const char *what)
{
    void *p = NULL;
    cudaError_t err = cudaMallocHost(&p, bytes);
    if (err != cudaSuccess) {
        kvt_log_error("pinned host alloc failed what=%s bytes=%zu", what ? what : "?", bytes);
        return kvt_gpu_status((int)err, "cudaMallocHost");
    }
    *ptr_p = p;
    return KVT_OK;
}

void kvt_gpu_host_free(void *ptr)
{
    if (ptr)
        (void)kvt_gpu_status((int)cudaFreeHost(ptr), "cudaFreeHost");
}

kvt_status_t kvt_gpu_host_register(void *ptr, size_t bytes)
{
    return kvt_gpu_status((int)cudaHostRegister(ptr, bytes, cudaHostRegisterDefault),
                          "cudaHostRegister");
}

void kvt_gpu_host_unregister(void *ptr)
{
    if (ptr)
        (void)kvt_gpu_status((int)cudaHostUnregister(ptr), "cudaHostUnregister");
}

/* --- streams and copies --- */

kvt_status_t kvt_gpu_stream_create(kvt_gpu_stream_t *s_p)
{
    cudaStream_t s;
    kvt_status_t st =
        kvt_gpu_status((int)cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream create");
    if (st == KVT_OK)
        *s_p = (kvt_gpu_stream_t)s;
    return st;
}

void kvt_gpu_stream_destroy(kvt_gpu_stream_t s)
{
    if (s)
        (void)kvt_gpu_status((int)cudaStreamDestroy((cudaStream_t)s), "stream destroy");
}

kvt_status_t kvt_gpu_stream_sync(kvt_gpu_stream_t s)
{
    return kvt_gpu_status((int)cudaStreamSynchronize((cudaStream_t)s), "stream sync");
}

static kvt_status_t copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                         kvt_gpu_stream_t s, const char *what)
{
    if (bytes == 0)
        return KVT_OK;
    return kvt_gpu_status((int)cudaMemcpyAsync(dst, src, bytes, kind, (cudaStream_t)s), what);
}

kvt_status_t kvt_gpu_h2d(void *dst, const void *src, size_t bytes, kvt_gpu_stream_t s)
{
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, s, "copy h2d");
}

kvt_status_t kvt_gpu_d2h(void *dst, const void *src, size_t bytes, kvt_gpu_stream_t s)
{
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, s, "copy d2h");
}

kvt_status_t kvt_gpu_d2d(void *dst, const void *src, size_t bytes, kvt_gpu_stream_t s)
{
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, s, "copy d2d");
}

kvt_status_t kvt_gpu_memset(void *dst, int value, size_t bytes, kvt_gpu_stream_t s)
{
    if (bytes == 0)
        return KVT_OK;
    return kvt_gpu_status((int)cudaMemsetAsync(dst, value, bytes, (cudaStream_t)s), "memset");
}

kvt_status_t kvt_gpu_copy_batch(void *const *dst, const void *const *src, const size_t *bytes,
                                size_t n, int kind, kvt_gpu_stream_t s)
{
    static const enum cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                                 cudaMemcpyDeviceToDevice};
    static const char *const names[3] = {"copy batch h2d", "copy batch d2h", "copy batch d2d"};
    if (kind < 0 || kind > 2 || (n > 0 && (!dst || !src || !bytes))) {
        kvt_log_error("gpu copy batch: bad arguments kind=%d n=%zu", kind, n);
        return KVT_ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        kvt_status_t st = copy(dst[i], src[i], bytes[i], kinds[kind], s, names[kind]);
        if (st != KVT_OK)
            return st;
    }
    return KVT_OK;
}

/* --- events --- */

kvt_status_t kvt_gpu_event_create(kvt_gpu_event_t *e_p)
{
    cudaEvent_t e;
    kvt_status_t st = kvt_gpu_status((int)cudaEventCreate(&e), "event create");
    if (st == KVT_OK)
        *e_p = (kvt_gpu_event_t)e;
    return st;
}

void kvt_gpu_event_destroy(kvt_gpu_event_t e)
{
    if (e)
        (void)kvt_gpu_status((int)cudaEventDestroy((cudaEvent_t)e), "event destroy");
}

kvt_status_t kvt_gpu_event_record(kvt_gpu_event_t e, kvt_gpu_stream_t s)
{
    return kvt_gpu_status((int)cudaEventRecord((cudaEvent_t)e, (cudaStream_t)s), "event record");
}

kvt_status_t kvt_gpu_event_elapsed_ms(kvt_gpu_event_t start, kvt_gpu_event_t end, float *ms_p)
{
    kvt_status_t st =
        kvt_gpu_status((int)cudaEventSynchronize((cudaEvent_t)end), "event synchronize");
    if (st != KVT_OK)
        return st;
    float ms = 0.0f;
    st = kvt_gpu_status((int)cudaEventElapsedTime(&ms, (cudaEvent_t)start, (cudaEvent_t)end),
                        "event elapsed");
    if (st == KVT_OK)
        *ms_p = ms;
    return st;
}

/* --- graphs --- */

kvt_status_t kvt_gpu_capture_begin(kvt_gpu_stream_t s)
{
    /* Thread-local: other threads' CUDA calls (another engine's block
     * moves) neither break this capture nor are refused by it. */
    return kvt_gpu_status(
        (int)cudaStreamBeginCapture((cudaStream_t)s, cudaStreamCaptureModeThreadLocal),
        "stream begin capture");
}

kvt_status_t kvt_gpu_capture_end(kvt_gpu_stream_t s, bool discard, kvt_gpu_graph_t *g_p)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    kvt_status_t st = kvt_gpu_status((int)cudaStreamEndCapture((cudaStream_t)s, &graph),
                                     "stream end capture");
    if (st == KVT_OK && !discard)
        st = kvt_gpu_status((int)cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
    if (graph)
        (void)cudaGraphDestroy(graph);
    if (st != KVT_OK || discard) {
        if (exec)
            (void)cudaGraphExecDestroy(exec);
        return st != KVT_OK ? st : KVT_ERR_AGAIN;
    }
    *g_p = (kvt_gpu_graph_t)exec;
    return KVT_OK;
}

kvt_status_t kvt_gpu_graph_launch(kvt_gpu_graph_t g, kvt_gpu_stream_t s)
{
    return kvt_gpu_status((int)cudaGraphLaunch((cudaGraphExec_t)g, (cudaStream_t)s),
                          "graph launch");
}

void kvt_gpu_graph_destroy(kvt_gpu_graph_t g)
{
    if (g)
        (void)kvt_gpu_status((int)cudaGraphExecDestroy((cudaGraphExec_t)g), "graph destroy");
}

/* --- cuBLAS --- */

/* The handle and its workspace: cuBLAS takes a workspace of its own per
 * stream otherwise, allocated on first use, which a stream capture cannot
 * do; one set at create serves plain launches and graph captures alike, so
 * both pick the same algorithms. */
struct kvt_gpu_blas {
    cublasHandle_t h;
    void *ws;
};

#define BLAS_WORKSPACE ((size_t)32 << 20) /* cuBLAS's own default on Hopper */

kvt_status_t kvt_gpu_blas_create(kvt_gpu_stream_t s, kvt_gpu_blas_t *h_p)
{
    struct kvt_gpu_blas *b = calloc(1, sizeof(*b));
    if (!b)
        return KVT_ERR_NOMEM;
    kvt_status_t st = blas_status(cublasCreate(&b->h), "cublasCreate");
    if (st != KVT_OK) {
        free(b);
        return st;
    }
    st = blas_status(cublasSetStream(b->h, (cudaStream_t)s), "cublasSetStream");
    if (st == KVT_OK)
        st = blas_status(cublasSetMathMode(b->h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    if (st == KVT_OK)
        st = kvt_gpu_malloc(&b->ws, BLAS_WORKSPACE, "cublas workspace");
    if (st == KVT_OK)
        st = blas_status(cublasSetWorkspace(b->h, b->ws, BLAS_WORKSPACE), "cublasSetWorkspace");
    if (st != KVT_OK) {
        kvt_gpu_blas_destroy(b);
        return st;
    }
    *h_p = b;
    return KVT_OK;
}

void kvt_gpu_blas_destroy(kvt_gpu_blas_t b)
{
    if (!b)
        return;
    (void)blas_status(cublasDestroy(b->h), "cublasDestroy");
    kvt_gpu_free(b->ws);
    free(b);
}

kvt_status_t kvt_gpu_gemm_bf16(kvt_gpu_blas_t h, const uint16_t *w, const uint16_t *x, float *y,
                               size_t rows, size_t in, size_t out, float beta)
{
    if (rows == 0 || out == 0)
        return KVT_OK;
    if (!h || in == 0 || rows > INT_MAX || in > INT_MAX || out > INT_MAX ||
        (beta != 0.0f && beta != 1.0f)) {
        kvt_log_error("gemm bf16: bad arguments rows=%zu in=%zu out=%zu beta=%g", rows, in, out,
                      (double)beta);
        return KVT_ERR_INVALID;
    }
    /* Column-major view: W [out][in] row-major is in x out with ld in, so
     * op(A) = W^T' = A^T gives out x in; x [rows][in] is in x rows; y is
     * out x rows with ld out. */
    const float alpha = 1.0f;
    int m = (int)out, n = (int)rows, k = (int)in;
    return blas_status(cublasGemmEx(h->h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha,
                                    w, CUDA_R_16BF, k, x, CUDA_R_16BF, k, &beta, y, CUDA_R_32F, m,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "cublasGemmEx");
}
