/* Element-wise kernels of the engine's forward pass (kernels/kernels.h):
 * embedding lookup, RMSNorm, bias + RoPE + KV store, SwiGLU, row gather,
 * f32 -> bf16.
 *
 * Each kernel does the arithmetic of engine/ops.c in the same order, so
 * results match the CPU engine (and the _ref twins in ref.c) bitwise or to
 * the last bit: products and sums that C rounds one by one are written
 * with __fmul_rn / __fadd_rn / __fsub_rn, which nvcc never contracts into
 * an FMA; bf16 rounding is the integer round-to-nearest-even of ops.h
 * (NaN kept quiet); RoPE's cos/sin are computed in double and rounded to
 * f32 as ops.c does; RMSNorm sums squares in double like kvt_ops_rmsnorm.
 *
 * Vector width: rows whose length and base addresses allow it move 16
 * bytes per thread access (float4 in, 4 x bf16 = 8 bytes out); any other
 * shape takes the scalar path of the same kernel. */
extern "C" {
#include "kernels/kernels.h"
}
#include "kernels/kernelsInt.h"

#include <cuda_runtime.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ uint16_t f2bf(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

/* 4 bf16 in one 8-byte store. */
__device__ __forceinline__ void store_bf16x4(uint16_t *dst, float a, float b, float c, float d)
{
    uint2 v;
    v.x = (uint32_t)f2bf(a) | ((uint32_t)f2bf(b) << 16);
    v.y = (uint32_t)f2bf(c) | ((uint32_t)f2bf(d) << 16);
    *reinterpret_cast<uint2 *>(dst) = v;
}

inline bool aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

inline unsigned blocks_for(size_t n, unsigned threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

constexpr unsigned kMaxGrid = 0x7fffffffu;

/* --- embed --- */

__global__ void embed_vec(const uint16_t *__restrict__ embed, const uint32_t *__restrict__ tokens,
                          size_t hidden, float *__restrict__ x)
{
    size_t r = blockIdx.y;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= hidden)
        return;
    const uint16_t *src = embed + (size_t)tokens[r] * hidden + i;
    uint4 v = *reinterpret_cast<const uint4 *>(src);
    float4 lo, hi;
    lo.x = __uint_as_float(v.x << 16);
    lo.y = __uint_as_float(v.x & 0xffff0000u);
    lo.z = __uint_as_float(v.y << 16);
    lo.w = __uint_as_float(v.y & 0xffff0000u);
    hi.x = __uint_as_float(v.z << 16);
    hi.y = __uint_as_float(v.z & 0xffff0000u);
    hi.z = __uint_as_float(v.w << 16);
    hi.w = __uint_as_float(v.w & 0xffff0000u);
    float4 *dst = reinterpret_cast<float4 *>(x + r * hidden + i);
    dst[0] = lo;
    dst[1] = hi;
}

__global__ void embed_scalar(const uint16_t *__restrict__ embed,
                             const uint32_t *__restrict__ tokens, size_t hidden,
                             float *__restrict__ x)
{
    size_t r = blockIdx.y;
    const uint16_t *src = embed + (size_t)tokens[r] * hidden;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < hidden;
         i += (size_t)gridDim.x * blockDim.x)
        x[r * hidden + i] = bf2f(src[i]);
}

/* --- rmsnorm: one block per row --- */

constexpr int kNormThreads = 256;

__device__ double block_sum(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

template <int V>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w, size_t dim, float eps,
                   uint16_t *__restrict__ out)
{
    __shared__ double sh[32];
    size_t r = blockIdx.x;
    const float *xr = x + r * dim;
    uint16_t *orow = out + r * dim;
    double ss = 0.0;
    if (V == 4) {
        for (size_t i = threadIdx.x * 4; i < dim; i += blockDim.x * 4) {
            float4 a = *reinterpret_cast<const float4 *>(xr + i);
            ss += (double)a.x * (double)a.x + (double)a.y * (double)a.y +
                  (double)a.z * (double)a.z + (double)a.w * (double)a.w;
        }
    } else {
        for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
            ss += (double)xr[i] * (double)xr[i];
    }
    ss = block_sum(ss, sh);
    /* kvt_ops_rmsnorm: var in f32, s = 1 / sqrtf(var + eps), y = w * (x * s). */
    float var = (float)(ss / (double)dim);
    float s = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    if (V == 4) {
        for (size_t i = threadIdx.x * 4; i < dim; i += blockDim.x * 4) {
            float4 a = *reinterpret_cast<const float4 *>(xr + i);
            float4 b = *reinterpret_cast<const float4 *>(w + i);
            store_bf16x4(orow + i, __fmul_rn(b.x, __fmul_rn(a.x, s)),
                         __fmul_rn(b.y, __fmul_rn(a.y, s)), __fmul_rn(b.z, __fmul_rn(a.z, s)),
                         __fmul_rn(b.w, __fmul_rn(a.w, s)));
        }
    } else {
        for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
            orow[i] = f2bf(__fmul_rn(w[i], __fmul_rn(xr[i], s)));
    }
}

/* --- qkv bias + RoPE + KV store: one block per row --- */

constexpr int kRopeThreads = 256;
constexpr int kMaxHalf = 256; /* head_dim <= 512 */

/* Element offset of (layer, K|V, token, kv head) inside a block image. */
__device__ __forceinline__ size_t kv_elem(const kvt_k_kv_t &kv, uint32_t layer, int which,
                                          uint32_t t, uint32_t g)
{
    return ((((size_t)layer * 2 + (size_t)which) * kv.block_tokens + t) * kv.n_kv_heads + g) *
           kv.head_dim;
}

__device__ __forceinline__ void kv_put(const kvt_k_kv_t &kv, uint8_t *blk, size_t e, float v)
{
    if (kv.f32)
        reinterpret_cast<float *>(blk)[e] = v;
    else
        reinterpret_cast<uint16_t *>(blk)[e] = f2bf(v);
}

/* V = 4: four consecutive pair indices i..i+3 per thread (head_dim % 8 == 0
 * and 16-byte aligned rows), else one. */
template <int V>
__global__ void __launch_bounds__(kRopeThreads)
    qkv_rope_kernel(const float *__restrict__ qkv, const float *__restrict__ bias,
                    const uint32_t *__restrict__ pos, const float *__restrict__ inv_freq,
                    uint32_t n_heads, kvt_k_kv_t kv, uint32_t layer,
                    const uint32_t *__restrict__ slot, const uint32_t *__restrict__ tok,
                    uint16_t *__restrict__ q_out)
{
    __shared__ float cs[kMaxHalf], sn[kMaxHalf];
    const uint32_t hd = kv.head_dim, half = hd / 2, nkv = kv.n_kv_heads;
    const size_t r = blockIdx.x;
    const size_t q_dim = (size_t)n_heads * hd, kv_dim = (size_t)nkv * hd;
    const float *row = qkv + r * (q_dim + 2 * kv_dim);
    const uint32_t p = pos[r];
    for (uint32_t i = threadIdx.x; i < half; i += blockDim.x) {
        /* kvt_ops_rope_cos_sin: the angle rounded to f32, cos/sin in double. */
        float angle = __fmul_rn((float)p, inv_freq[i]);
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        cs[i] = (float)cd;
        sn[i] = (float)sd;
    }
    __syncthreads();
    uint8_t *blk = (uint8_t *)kv.base + (size_t)slot[r] * kv.slot_bytes;
    const uint32_t t = tok[r];
    const uint32_t groups = half / V; /* per head */
    const uint32_t n_rot = (n_heads + nkv) * groups;
    for (uint32_t j = threadIdx.x; j < n_rot; j += blockDim.x) {
        uint32_t h = j / groups, i = (j % groups) * V;
        bool is_q = h < n_heads;
        size_t off = is_q ? (size_t)h * hd : q_dim + (size_t)(h - n_heads) * hd;
        float a[V], b[V];
        if (V == 4) {
            float4 av = *reinterpret_cast<const float4 *>(row + off + i);
            float4 bv = *reinterpret_cast<const float4 *>(row + off + half + i);
            a[0] = av.x, a[1] = av.y, a[2] = av.z, a[3] = av.w;
            b[0] = bv.x, b[1] = bv.y, b[2] = bv.z, b[3] = bv.w;
            if (bias) {
                float4 ab = *reinterpret_cast<const float4 *>(bias + off + i);
                float4 bb = *reinterpret_cast<const float4 *>(bias + off + half + i);
                a[0] = __fadd_rn(a[0], ab.x), a[1] = __fadd_rn(a[1], ab.y);
                a[2] = __fadd_rn(a[2], ab.z), a[3] = __fadd_rn(a[3], ab.w);
                b[0] = __fadd_rn(b[0], bb.x), b[1] = __fadd_rn(b[1], bb.y);
                b[2] = __fadd_rn(b[2], bb.z), b[3] = __fadd_rn(b[3], bb.w);
            }
        } else {
            a[0] = row[off + i];
            b[0] = row[off + half + i];
            if (bias) {
                a[0] = __fadd_rn(a[0], bias[off + i]);
                b[0] = __fadd_rn(b[0], bias[off + half + i]);
            }
        }
        float ra[V], rb[V];
#pragma unroll
        for (int k = 0; k < V; k++) {
            /* kvt_ops_rope: a = x1*c - x2*s, b = x2*c + x1*s, each product rounded. */
            float c = cs[i + k], s = sn[i + k];
            ra[k] = __fsub_rn(__fmul_rn(a[k], c), __fmul_rn(b[k], s));
            rb[k] = __fadd_rn(__fmul_rn(b[k], c), __fmul_rn(a[k], s));
        }
        if (is_q) {
            uint16_t *qo = q_out + r * q_dim + (size_t)h * hd;
            if (V == 4) {
                store_bf16x4(qo + i, ra[0], ra[1], ra[2], ra[3]);
                store_bf16x4(qo + half + i, rb[0], rb[1], rb[2], rb[3]);
            } else {
                qo[i] = f2bf(ra[0]);
                qo[half + i] = f2bf(rb[0]);
            }
        } else {
            size_t e = kv_elem(kv, layer, 0, t, h - n_heads);
            if (V == 4 && kv.f32) {
                *reinterpret_cast<float4 *>((float *)blk + e + i) =
                    make_float4(ra[0], ra[1], ra[2], ra[3]);
                *reinterpret_cast<float4 *>((float *)blk + e + half + i) =
                    make_float4(rb[0], rb[1], rb[2], rb[3]);
            } else if (V == 4) {
                store_bf16x4((uint16_t *)blk + e + i, ra[0], ra[1], ra[2], ra[3]);
                store_bf16x4((uint16_t *)blk + e + half + i, rb[0], rb[1], rb[2], rb[3]);
            } else {
                kv_put(kv, blk, e + i, ra[0]);
                kv_put(kv, blk, e + half + i, rb[0]);
            }
        }
    }
    /* V: bias only, then the KV dtype. */
    const float *vrow = row + q_dim + kv_dim;
    const float *vb = bias ? bias + q_dim + kv_dim : nullptr;
    size_t ve = kv_elem(kv, layer, 1, t, 0);
    for (uint32_t j = threadIdx.x * V; j < kv_dim; j += blockDim.x * V) {
        if (V == 4) {
            float4 v = *reinterpret_cast<const float4 *>(vrow + j);
            if (vb) {
                float4 bb = *reinterpret_cast<const float4 *>(vb + j);
                v.x = __fadd_rn(v.x, bb.x), v.y = __fadd_rn(v.y, bb.y);
                v.z = __fadd_rn(v.z, bb.z), v.w = __fadd_rn(v.w, bb.w);
            }
            if (kv.f32)
                *reinterpret_cast<float4 *>((float *)blk + ve + j) = v;
            else
                store_bf16x4((uint16_t *)blk + ve + j, v.x, v.y, v.z, v.w);
        } else {
            float v = vb ? __fadd_rn(vrow[j], vb[j]) : vrow[j];
            kv_put(kv, blk, ve + j, v);
        }
    }
}

/* --- swiglu --- */

__device__ __forceinline__ float silu_mul(float g, float u)
{
    /* ops.c: g / (1 + expf(-g)) * u, f32, each step rounded. */
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

__global__ void swiglu_vec(const float *__restrict__ gu, size_t inter, uint16_t *__restrict__ out)
{
    size_t r = blockIdx.y;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= inter)
        return;
    const float *g = gu + r * 2 * inter;
    float4 a = *reinterpret_cast<const float4 *>(g + i);
    float4 b = *reinterpret_cast<const float4 *>(g + inter + i);
    store_bf16x4(out + r * inter + i, silu_mul(a.x, b.x), silu_mul(a.y, b.y), silu_mul(a.z, b.z),
                 silu_mul(a.w, b.w));
}

__global__ void swiglu_scalar(const float *__restrict__ gu, size_t inter,
                              uint16_t *__restrict__ out)
{
    size_t r = blockIdx.y;
    const float *g = gu + r * 2 * inter;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < inter;
         i += (size_t)gridDim.x * blockDim.x)
        out[r * inter + i] = f2bf(silu_mul(g[i], g[inter + i]));
}

/* --- gather rows --- */

__global__ void gather_vec(const float *__restrict__ src, const uint32_t *__restrict__ idx,
                           size_t dim, float *__restrict__ dst)
{
    size_t r = blockIdx.y;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i < dim)
        *reinterpret_cast<float4 *>(dst + r * dim + i) =
            *reinterpret_cast<const float4 *>(src + (size_t)idx[r] * dim + i);
}

__global__ void gather_scalar(const float *__restrict__ src, const uint32_t *__restrict__ idx,
                              size_t dim, float *__restrict__ dst)
{
    size_t r = blockIdx.y;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < dim;
         i += (size_t)gridDim.x * blockDim.x)
        dst[r * dim + i] = src[(size_t)idx[r] * dim + i];
}

/* --- f32 -> bf16 --- */

__global__ void to_bf16_kernel(const float *__restrict__ in, size_t n, uint16_t *__restrict__ out,
                               bool vec)
{
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        size_t n4 = n / 4;
        for (size_t i = t; i < n4; i += stride) {
            float4 v = reinterpret_cast<const float4 *>(in)[i];
            store_bf16x4(out + 4 * i, v.x, v.y, v.z, v.w);
        }
        for (size_t i = n4 * 4 + t; i < n; i += stride)
            out[i] = f2bf(in[i]);
    } else {
        for (size_t i = t; i < n; i += stride)
            out[i] = f2bf(in[i]);
    }
}

/* Rows go on grid y (at most 65535 per launch); longer batches loop. */
constexpr size_t kMaxGridY = 65535;

} // namespace

extern "C" {

kvt_status_t kvt_k_embed(const uint16_t *embed, const uint32_t *tokens, size_t rows,
                         size_t hidden, float *x, kvt_gpu_stream_t s)
{
    if (rows == 0 || hidden == 0)
        return KVT_OK;
    if (!embed || !tokens || !x)
        return KVT_ERR_INVALID;
    cudaStream_t st = (cudaStream_t)s;
    bool vec = hidden % 8 == 0 && aligned(embed, 16) && aligned(x, 16);
    for (size_t r0 = 0; r0 < rows; r0 += kMaxGridY) {
        unsigned ny = (unsigned)(rows - r0 < kMaxGridY ? rows - r0 : kMaxGridY);
        if (vec) {
            dim3 grid(blocks_for(hidden / 8, 128), ny);
            embed_vec<<<grid, 128, 0, st>>>(embed, tokens + r0, hidden, x + r0 * hidden);
        } else {
            unsigned bx = blocks_for(hidden, 256);
            dim3 grid(bx < 64 ? bx : 64, ny);
            embed_scalar<<<grid, 256, 0, st>>>(embed, tokens + r0, hidden, x + r0 * hidden);
        }
    }
    return kvt_gpu_launch_status("kvt_k_embed");
}

kvt_status_t kvt_k_rmsnorm(const float *x, const float *w, size_t rows, size_t dim, float eps,
                           uint16_t *out, kvt_gpu_stream_t s)
{
    if (rows == 0)
        return KVT_OK;
    if (!x || !w || !out || dim == 0 || rows > kMaxGrid)
        return KVT_ERR_INVALID;
    cudaStream_t st = (cudaStream_t)s;
    if (dim % 4 == 0 && aligned(x, 16) && aligned(w, 16) && aligned(out, 8))
        rmsnorm_kernel<4><<<(unsigned)rows, kNormThreads, 0, st>>>(x, w, dim, eps, out);
    else
        rmsnorm_kernel<1><<<(unsigned)rows, kNormThreads, 0, st>>>(x, w, dim, eps, out);
    return kvt_gpu_launch_status("kvt_k_rmsnorm");
}

kvt_status_t kvt_k_qkv_rope_store(const float *qkv, const float *bias, const uint32_t *pos,
                                  const float *inv_freq, uint32_t n_heads, const kvt_k_kv_t *kv,
                                  uint32_t layer, const uint32_t *slot, const uint32_t *tok,
                                  size_t rows, uint16_t *q_out, kvt_gpu_stream_t s)
{
    if (rows == 0)
        return KVT_OK;
    if (!qkv || !pos || !inv_freq || !kv || !kv->base || !slot || !tok || !q_out ||
        n_heads == 0 || kv->n_kv_heads == 0 || n_heads % kv->n_kv_heads != 0 ||
        kv->head_dim == 0 || kv->head_dim % 2 != 0 || kv->head_dim / 2 > (uint32_t)kMaxHalf ||
        layer >= kv->n_layers || rows > kMaxGrid)
        return KVT_ERR_INVALID;
    cudaStream_t st = (cudaStream_t)s;
    bool vec = kv->head_dim % 8 == 0 && aligned(qkv, 16) && (!bias || aligned(bias, 16)) &&
               aligned(q_out, 8) && aligned(kv->base, 16) && kv->slot_bytes % 16 == 0;
    if (vec)
        qkv_rope_kernel<4><<<(unsigned)rows, kRopeThreads, 0, st>>>(
            qkv, bias, pos, inv_freq, n_heads, *kv, layer, slot, tok, q_out);
    else
        qkv_rope_kernel<1><<<(unsigned)rows, kRopeThreads, 0, st>>>(
            qkv, bias, pos, inv_freq, n_heads, *kv, layer, slot, tok, q_out);
    return kvt_gpu_launch_status("kvt_k_qkv_rope_store");
}

kvt_status_t kvt_k_swiglu(const float *gu, size_t rows, size_t inter, uint16_t *out,
                          kvt_gpu_stream_t s)
{
    if (rows == 0 || inter == 0)
        return KVT_OK;
    if (!gu || !out)
        return KVT_ERR_INVALID;
    cudaStream_t st = (cudaStream_t)s;
    bool vec = inter % 4 == 0 && aligned(gu, 16) && aligned(out, 8);
    for (size_t r0 = 0; r0 < rows; r0 += kMaxGridY) {
        unsigned ny = (unsigned)(rows - r0 < kMaxGridY ? rows - r0 : kMaxGridY);
        if (vec) {
            dim3 grid(blocks_for(inter / 4, 128), ny);
            swiglu_vec<<<grid, 128, 0, st>>>(gu + r0 * 2 * inter, inter, out + r0 * inter);
        } else {
            unsigned bx = blocks_for(inter, 256);
            dim3 grid(bx < 64 ? bx : 64, ny);
            swiglu_scalar<<<grid, 256, 0, st>>>(gu + r0 * 2 * inter, inter, out + r0 * inter);
        }
    }
    return kvt_gpu_launch_status("kvt_k_swiglu");
}

kvt_status_t kvt_k_gather_rows(const float *src, const uint32_t *idx, size_t n, size_t dim,
                               float *dst, kvt_gpu_stream_t s)
{
    if (n == 0 || dim == 0)
        return KVT_OK;
    if (!src || !idx || !dst)
        return KVT_ERR_INVALID;
    cudaStream_t st = (cudaStream_t)s;
    bool vec = dim % 4 == 0 && aligned(src, 16) && aligned(dst, 16);
    for (size_t r0 = 0; r0 < n; r0 += kMaxGridY) {
        unsigned ny = (unsigned)(n - r0 < kMaxGridY ? n - r0 : kMaxGridY);
        if (vec) {
            dim3 grid(blocks_for(dim / 4, 128), ny);
            gather_vec<<<grid, 128, 0, st>>>(src, idx + r0, dim, dst + r0 * dim);
        } else {
            unsigned bx = blocks_for(dim, 256);
            dim3 grid(bx < 64 ? bx : 64, ny);
            gather_scalar<<<grid, 256, 0, st>>>(src, idx + r0, dim, dst + r0 * dim);
        }
    }
    return kvt_gpu_launch_status("kvt_k_gather_rows");
}

kvt_status_t kvt_k_to_bf16(const float *in, size_t n, uint16_t *out, kvt_gpu_stream_t s)
{
    if (n == 0)
        return KVT_OK;
    if (!in || !out)
        return KVT_ERR_INVALID;
    bool vec = aligned(in, 16) && aligned(out, 8);
    size_t work = vec ? n / 4 + 1 : n;
    unsigned blocks = blocks_for(work, 256);
    if (blocks > 4096)
        blocks = 4096;
    to_bf16_kernel<<<blocks, 256, 0, (cudaStream_t)s>>>(in, n, out, vec);
    return kvt_gpu_launch_status("kvt_k_to_bf16");
}

} // extern "C"
