/* Device-side pieces of the attention kernels (kernels/attention.cu): the
 * pool view the kernels address K/V through, bf16 packing, and thin
 * wrappers over the PTX the tensor-core path uses (ldmatrix, mma.sync
 * m16n8k16 bf16 -> f32, cp.async with zero fill).  Only attention.cu
 * includes this file. */
#ifndef KVT_KERNELS_ATTENTIONINT_CUH
#define KVT_KERNELS_ATTENTIONINT_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace kvt_attn {

/* One layer of the pool as the kernels see it: K of (slot, token, kv head)
 * at base + slot * slot_bytes + layer_off + token * tok_stride
 * + kv_head * head_bytes, its V kv_off bytes further. */
struct KvView {
    const uint8_t *base;
    size_t slot_bytes;
    size_t layer_off;
    size_t kv_off;
    uint32_t tok_stride; /* bytes between two tokens of a block: n_kv * hd * esz */
    uint32_t head_bytes; /* hd * esz */
    uint32_t B;          /* tokens per block */
    int32_t B_shift;     /* log2(B) when B is a power of two, else -1 */
    uint32_t n_kv;
    uint32_t hd;
};

/* The group of a pass (same layout as kvt_k_group_t). */
struct Group {
    uint32_t row0, n, pos0, table_off;
};

/* Byte address of the K row of position p of a sequence, kv head g. */
__device__ __forceinline__ const uint8_t *key_ptr(const KvView &kv, const uint32_t *table,
                                                   uint32_t p, uint32_t g)
{
    uint32_t page, tok;
    if (kv.B_shift >= 0) {
        page = p >> kv.B_shift;
        tok = p & (kv.B - 1);
    } else {
        page = p / kv.B;
        tok = p - page * kv.B;
    }
    uint32_t slot = table[page];
    return kv.base + (size_t)slot * kv.slot_bytes + kv.layer_off + (size_t)tok * kv.tok_stride +
           (size_t)g * kv.head_bytes;
}

__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ float bf16_f(uint16_t v) { return __uint_as_float((uint32_t)v << 16); }

/* Two floats -> packed bf16x2 (lo in the low half), round to nearest even. */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint16_t to_bf16(float f)
{
    __nv_bfloat16 v = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&v);
}

/* 16 bytes through the read-only path (K/V and q are never written while
 * a kernel reads them). */
__device__ __forceinline__ uint4 ld16(const void *p) { return __ldg(reinterpret_cast<const uint4 *>(p)); }

/* Eight K/V elements as floats: one 16-byte load (bf16) or two (f32). */
template <bool F32>
__device__ __forceinline__ void load8(const uint8_t *p, float (&x)[8])
{
    if (F32) {
        float4 a = __ldg(reinterpret_cast<const float4 *>(p));
        float4 b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
        x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
    } else {
        uint4 v = ld16(p);
        x[0] = bf16_lo(v.x), x[1] = bf16_hi(v.x), x[2] = bf16_lo(v.y), x[3] = bf16_hi(v.y);
        x[4] = bf16_lo(v.z), x[5] = bf16_hi(v.z), x[6] = bf16_lo(v.w), x[7] = bf16_hi(v.w);
    }
}

/* The same eight elements as raw words (4 for bf16, 8 for f32), so a
 * step can have all its loads in flight before converting any. */
template <bool F32>
__device__ __forceinline__ void load_raw(const uint8_t *p, uint32_t (&w)[F32 ? 8 : 4])
{
    uint4 a = ld16(p);
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w;
    if constexpr (F32) {
        uint4 b = ld16(p + 16);
        w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
    }
}

template <bool F32>
__device__ __forceinline__ void unpack8(const uint32_t (&w)[F32 ? 8 : 4], float (&x)[8])
{
    if constexpr (F32) {
#pragma unroll
        for (int e = 0; e < 8; e++)
            x[e] = __uint_as_float(w[e]);
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            x[2 * e] = bf16_lo(w[e]);
            x[2 * e + 1] = bf16_hi(w[e]);
        }
    }
}

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros
 * (rows past the context: P.V must never meet garbage, 0 * NaN = NaN). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, uint32_t src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* d += a (16x16 bf16, row) . b (16x8 bf16, col), f32 accumulators. */
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

} /* namespace kvt_attn */

#endif
