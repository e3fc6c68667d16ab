/* Causal GQA attention over the paged KV pool (kernels.h: kvt_k_attn_*).
 *
 * Prefill (prefill_tc): flash attention on the tensor cores.  A thread
 * block takes BM = 128 query rows of one group and one kv head (bf16 KV:
 * 4 warps of 32 rows, two blocks an SM), where
 * a row is a (position, query head) pair packed position-major: HS =
 * min(n_rep, BM) heads of the kv head times P = BM / HS positions, so the
 * query heads that share a kv head share every K/V tile the block loads.
 * K/V tiles of 64 keys come from the pages (token p is row p % B of slot
 * table[p / B]) into shared memory through cp.async, double-buffered;
 * S = Q.K^T and O += P.V are mma.sync m16n8k16 bf16 -> f32 with ldmatrix
 * fragments (each K/V fragment feeds both of a warp's m16 tiles), the
 * softmax runs online in f32 registers (log2 domain, scale folded into
 * the exponent's fma, O rescaled only when a row's max moves), the
 * diagonal tile is masked and tiles past the block's last position are
 * never loaded.  Blocks of the latest query tiles are launched first.
 * f32 KV on this path is loaded synchronously (one buffer): each key is
 * split into bf16 hi + lo halves (S = Q.K_hi + Q.K_lo keeps ~16 bits, so
 * large, peaked scores stay accurate) and V is rounded to bf16 (P is
 * rounded to bf16 for the tensor cores anyway); the accumulation stays
 * f32.  head_dim 64 and 128 take it; any other
 * head_dim (<= 256), a pool not 16-byte aligned or a scale not above 0
 * goes to the decode
 * kernels below, which handle groups of any n.
 *
 * Decode (decode_vec, decode_gen, decode_combine): flash-decoding.  A
 * block takes one row, one kv head (up to 8 of its query heads) and one
 * chunk of the context; chunks are sized so the grid fills the GPU even
 * for one sequence.  decode_vec (head_dim 64/128): a token's K or V row is
 * read by hd/8 lanes with 16-byte loads (two for f32), several tokens per
 * warp at once, each lane group keeping its own online softmax; the
 * groups and warps are merged at the end.  decode_gen (any head_dim up to
 * 256): a lane per key for the scores, a lane per dimension for P.V.  With
 * more than one chunk each block leaves (max, sum, unnormalised acc) in a
 * scratch buffer and decode_combine merges them.  The scratch comes from a
 * private stream-ordered memory pool (cudaMallocFromPoolAsync), so calls
 * on different streams never share it and nothing is held between calls
 * but the pool's cached pages.
 *
 * Softmax arithmetic: scores are scale * q.k in f32, exponentials are
 * exp2 of (score - running max) * log2(e); each output is acc / sum in f32
 * rounded to bf16 (nearest even). */
#include "kernels/attentionInt.cuh"

#include <math.h>
#include <pthread.h>
#include <stdint.h>

extern "C" {
#include "common/log.h"
#include "kernels/kernels.h"
}

using namespace kvt_attn;

namespace {

constexpr int DEC_WARPS = 4;
constexpr uint32_t DEC_MIN_CHUNK = 64;   /* keys per block at least */
constexpr uint32_t DEC_MAX_CHUNKS = 1024;
constexpr int PRE_BN = 64;               /* keys per K/V tile */
/* Query rows per prefill block.  bf16 KV: 4 warps of 32 rows (two m16
 * tiles: every K/V fragment read from shared memory feeds twice the
 * mma's), two blocks an SM.  H100, 8k causal, 32/8 heads, hd 128: 317
 * TFLOP/s; 8 warps of 16 rows gave 236 (bound by ldmatrix traffic), 8
 * warps of 32 rows (256-row blocks, one an SM) 322 with 2, 3 or 4 K/V
 * stages but no better at 2k.  f32 KV: 8 warps of 16 rows (its K hi/lo
 * halves take the registers a second m16 tile would). */
constexpr int PRE_BM = 128;
constexpr float LOG2E = 1.4426950408889634f;
constexpr unsigned FULL = 0xffffffffu;

struct DecArgs {
    KvView kv;
    const uint16_t *q;
    uint16_t *out;
    const Group *groups;
    const uint32_t *tables;
    float2 *part_ml;  /* [group * max_n + i][head][chunk]: (max, sum) */
    float *part_acc;  /* [group * max_n + i][head][chunk][hd] */
    /* Graph launches: {chunk, n_chunks} read from the device at run time
     * (the grid has at least n_chunks chunk rows; the rest return), so one
     * captured launch serves every context length.  Null: the fields. */
    const uint32_t *plan;
    uint32_t n_heads, n_rep, n_slices, max_n, chunk, n_chunks;
    float scale_log2;
};

struct PreArgs {
    KvView kv;
    const uint16_t *q;
    uint16_t *out;
    const Group *groups;
    const uint32_t *tables;
    uint32_t n_heads, n_rep, n_groups, n_slices, n_qtiles, HS, P;
    float scale_log2;
};

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL, v, o);
    return v;
}

/* exp2(m - mx) with exp2(-inf - -inf) taken as 0 (an empty partial). */
__device__ __forceinline__ float rescale(float m, float mx)
{
    return m == -INFINITY ? 0.0f : exp2f(m - mx);
}

/* The step's chunking from a.plan (graph launches); false for a block
 * past the chunks in use. */
__device__ __forceinline__ bool dec_plan(DecArgs &a)
{
    if (!a.plan)
        return true;
    a.chunk = __ldg(a.plan);
    a.n_chunks = __ldg(a.plan + 1);
    return blockIdx.y < a.n_chunks;
}

/* One output element of a decode block: the final bf16 when the context
 * is one chunk, else the chunk's partial. */
__device__ __forceinline__ void dec_emit(const DecArgs &a, size_t rowidx, size_t row,
                                         uint32_t head, uint32_t d, float m, float l, float acc)
{
    uint32_t hd = a.kv.hd;
    if (a.n_chunks == 1) {
        a.out[(row * a.n_heads + head) * hd + d] = to_bf16(acc / l);
        return;
    }
    size_t pi = (rowidx * a.n_heads + head) * a.n_chunks + blockIdx.y;
    a.part_acc[pi * hd + d] = acc;
    if (d == 0)
        a.part_ml[pi] = make_float2(m, l);
}

/* Where a decode block works: row i of group gi, kv head, head slice,
 * keys [t_begin, t_end); false when the block has nothing to do. */
struct DecWork {
    Group g;
    uint32_t i, kvh, slice, t_begin, t_end;
    size_t rowidx, row;
};

__device__ __forceinline__ bool dec_work(const DecArgs &a, DecWork &w)
{
    uint32_t bx = blockIdx.x;
    w.slice = bx % a.n_slices;
    bx /= a.n_slices;
    w.kvh = bx % a.kv.n_kv;
    bx /= a.kv.n_kv;
    w.i = bx % a.max_n;
    uint32_t gi = bx / a.max_n;
    w.g = a.groups[gi];
    if (w.i >= w.g.n)
        return false;
    uint32_t pos = w.g.pos0 + w.i;
    w.t_begin = blockIdx.y * a.chunk;
    if (w.t_begin > pos)
        return false;
    w.t_end = min(pos + 1, w.t_begin + a.chunk);
    w.rowidx = (size_t)gi * a.max_n + w.i;
    w.row = (size_t)w.g.row0 + w.i;
    return true;
}

/* Decode, head_dim HD (64 or 128), up to HPB query heads of one kv head. */
template <int HD, int HPB, bool F32>
__global__ void __launch_bounds__(DEC_WARPS * 32) decode_vec(DecArgs a)
{
    constexpr int L = HD / 8, G = 32 / L, ESZ = F32 ? 4 : 2, U = F32 ? 2 : 4, NWD = ESZ * 2;
    __shared__ float s_m[DEC_WARPS][HPB], s_l[DEC_WARPS][HPB];
    __shared__ float s_acc[DEC_WARPS][HPB][HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane % L, grp = lane / L;
    DecWork w;
    if (!dec_plan(a) || !dec_work(a, w))
        return;
    const uint32_t j0 = w.slice * HPB, head0 = w.kvh * a.n_rep + j0;
    const int nh = (int)min((uint32_t)HPB, a.n_rep - j0);
    const uint32_t *table = a.tables + w.g.table_off;

    float q[HPB][8], m[HPB], l[HPB], acc[HPB][8];
#pragma unroll
    for (int h = 0; h < HPB; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++)
            q[h][e] = acc[h][e] = 0.0f;
        if (h < nh) {
            uint4 v = ld16(a.q + (w.row * a.n_heads + head0 + h) * HD + sub * 8);
            uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                q[h][2 * e] = bf16_lo(u[e]) * a.scale_log2;
                q[h][2 * e + 1] = bf16_hi(u[e]) * a.scale_log2;
            }
        }
    }

    for (uint32_t base = w.t_begin + warp * (G * U); base < w.t_end; base += DEC_WARPS * G * U) {
        /* All loads of the step first (raw), then the arithmetic. */
        uint32_t kr[U][NWD], vr[U][NWD];
        bool ok[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            uint32_t t = base + u * G + grp;
            ok[u] = t < w.t_end;
            if (ok[u]) {
                const uint8_t *kp = key_ptr(a.kv, table, t, w.kvh) + sub * 8 * ESZ;
                load_raw<F32>(kp, kr[u]);
                load_raw<F32>(kp + a.kv.kv_off, vr[u]);
            } else {
#pragma unroll
                for (int e = 0; e < NWD; e++)
                    kr[u][e] = vr[u][e] = 0;
            }
        }
        float s[U][HPB];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kx[8];
            unpack8<F32>(kr[u], kx);
#pragma unroll
            for (int h = 0; h < HPB; h++) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    d = fmaf(q[h][e], kx[e], d);
#pragma unroll
                for (int o = L / 2; o > 0; o >>= 1)
                    d += __shfl_xor_sync(FULL, d, o);
                s[u][h] = ok[u] ? d : -INFINITY;
            }
        }
        /* Online softmax per head; s becomes p. */
#pragma unroll
        for (int h = 0; h < HPB; h++) {
            float mx = m[h];
#pragma unroll
            for (int u = 0; u < U; u++)
                mx = fmaxf(mx, s[u][h]);
            float corr = rescale(m[h], mx), ps = 0.0f;
#pragma unroll
            for (int u = 0; u < U; u++) {
                s[u][h] = ok[u] ? exp2f(s[u][h] - mx) : 0.0f;
                ps += s[u][h];
            }
            l[h] = l[h] * corr + ps;
            m[h] = mx;
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc[h][e] *= corr;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vx[8];
            unpack8<F32>(vr[u], vx);
#pragma unroll
            for (int h = 0; h < HPB; h++)
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc[h][e] = fmaf(s[u][h], vx[e], acc[h][e]);
        }
    }

    /* Merge the lane groups of the warp (same sub, other grp). */
#pragma unroll
    for (int o = L; o < 32; o <<= 1) {
#pragma unroll
        for (int h = 0; h < HPB; h++) {
            float mo = __shfl_xor_sync(FULL, m[h], o), lo = __shfl_xor_sync(FULL, l[h], o);
            float mx = fmaxf(m[h], mo), ca = rescale(m[h], mx), cb = rescale(mo, mx);
            l[h] = l[h] * ca + lo * cb;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                float ao = __shfl_xor_sync(FULL, acc[h][e], o);
                acc[h][e] = acc[h][e] * ca + ao * cb;
            }
            m[h] = mx;
        }
    }
    if (grp == 0) {
#pragma unroll
        for (int h = 0; h < HPB; h++) {
            if (sub == 0) {
                s_m[warp][h] = m[h];
                s_l[warp][h] = l[h];
            }
#pragma unroll
            for (int e = 0; e < 8; e++)
                s_acc[warp][h][sub * 8 + e] = acc[h][e];
        }
    }
    __syncthreads();
    /* Merge the warps. */
    for (int idx = threadIdx.x; idx < nh * HD; idx += DEC_WARPS * 32) {
        int h = idx / HD, d = idx % HD;
        float mx = -INFINITY;
        for (int v = 0; v < DEC_WARPS; v++)
            mx = fmaxf(mx, s_m[v][h]);
        float ls = 0.0f, as = 0.0f;
        for (int v = 0; v < DEC_WARPS; v++) {
            float c = rescale(s_m[v][h], mx);
            ls += s_l[v][h] * c;
            as += s_acc[v][h][d] * c;
        }
        dec_emit(a, w.rowidx, w.row, head0 + h, d, mx, ls, as);
    }
}

template <bool F32> __device__ __forceinline__ float ld_elem(const uint8_t *p, uint32_t e)
{
    if (F32)
        return __ldg(reinterpret_cast<const float *>(p) + e);
    return bf16_f(__ldg(reinterpret_cast<const unsigned short *>(p) + e));
}

/* Decode for any head_dim <= 256: a warp per query head of the kv head. */
template <bool F32>
__global__ void __launch_bounds__(DEC_WARPS * 32) decode_gen(DecArgs a)
{
    __shared__ float s_q[DEC_WARPS][256];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    DecWork w;
    if (!dec_plan(a) || !dec_work(a, w))
        return;
    const uint32_t hd = a.kv.hd, *table = a.tables + w.g.table_off;
    for (uint32_t j = warp; j < a.n_rep; j += DEC_WARPS) {
        uint32_t head = w.kvh * a.n_rep + j;
        __syncwarp();
        for (uint32_t d = lane; d < hd; d += 32)
            s_q[warp][d] = bf16_f(a.q[(w.row * a.n_heads + head) * hd + d]) * a.scale_log2;
        __syncwarp();
        float m = -INFINITY, l = 0.0f, acc[8];
#pragma unroll
        for (int k = 0; k < 8; k++)
            acc[k] = 0.0f;
        for (uint32_t t0 = w.t_begin; t0 < w.t_end; t0 += 32) {
            uint32_t t = t0 + lane;
            bool ok = t < w.t_end;
            float s = -INFINITY;
            const uint8_t *vp = nullptr;
            if (ok) {
                const uint8_t *kp = key_ptr(a.kv, table, t, w.kvh);
                float d = 0.0f;
                for (uint32_t e = 0; e < hd; e++)
                    d = fmaf(s_q[warp][e], ld_elem<F32>(kp, e), d);
                s = d;
                vp = kp + a.kv.kv_off;
            }
            float mx = fmaxf(m, warp_max(s)); /* finite: lane 0 holds a key */
            float corr = rescale(m, mx), p = ok ? exp2f(s - mx) : 0.0f;
            l = l * corr + warp_sum(p);
#pragma unroll
            for (int k = 0; k < 8; k++)
                acc[k] *= corr;
            uint32_t nv = min(32u, w.t_end - t0);
            for (uint32_t jj = 0; jj < nv; jj++) {
                float pj = __shfl_sync(FULL, p, jj);
                const uint8_t *vj = reinterpret_cast<const uint8_t *>(
                    __shfl_sync(FULL, reinterpret_cast<unsigned long long>(vp), jj));
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    uint32_t d = lane + 32 * k;
                    if (d < hd)
                        acc[k] = fmaf(pj, ld_elem<F32>(vj, d), acc[k]);
                }
            }
            m = mx;
        }
#pragma unroll
        for (int k = 0; k < 8; k++) {
            uint32_t d = lane + 32 * k;
            if (d < hd)
                dec_emit(a, w.rowidx, w.row, head, d, m, l, acc[k]);
        }
    }
}

/* Sum over a block of 128 threads (every thread gets the result). */
__device__ float block_reduce(float v, bool is_max, float *red)
{
    v = is_max ? warp_max(v) : warp_sum(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < DEC_WARPS; i++)
        r = is_max ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

/* Merge the chunks of one (row, query head). */
__global__ void __launch_bounds__(DEC_WARPS * 32) decode_combine(DecArgs a)
{
    __shared__ float s_w[DEC_MAX_CHUNKS];
    __shared__ float red[DEC_WARPS];
    if (a.plan && (!dec_plan(a) || a.n_chunks == 1))
        return; /* one chunk: the decode blocks wrote the output */
    uint32_t head = blockIdx.x % a.n_heads, rowidx = blockIdx.x / a.n_heads;
    uint32_t i = rowidx % a.max_n, gi = rowidx / a.max_n;
    Group g = a.groups[gi];
    if (i >= g.n)
        return;
    uint32_t nc = (g.pos0 + i) / a.chunk + 1, hd = a.kv.hd;
    size_t pi = ((size_t)rowidx * a.n_heads + head) * a.n_chunks;
    const float2 *ml = a.part_ml + pi;
    float mx = -INFINITY;
    for (uint32_t c = threadIdx.x; c < nc; c += blockDim.x)
        mx = fmaxf(mx, ml[c].x);
    mx = block_reduce(mx, true, red);
    float ls = 0.0f;
    for (uint32_t c = threadIdx.x; c < nc; c += blockDim.x) {
        float2 v = ml[c];
        float wc = exp2f(v.x - mx); /* every chunk < nc holds keys: v.x finite */
        s_w[c] = wc;
        ls += v.y * wc;
    }
    ls = block_reduce(ls, false, red);
    __syncthreads();
    const float *acc = a.part_acc + pi * hd;
    size_t row = (size_t)g.row0 + i;
    /* Four independent sums: four loads in flight per thread. */
    for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        uint32_t c = 0;
        for (; c + 4 <= nc; c += 4) {
            s0 = fmaf(s_w[c], acc[(size_t)c * hd + d], s0);
            s1 = fmaf(s_w[c + 1], acc[(size_t)(c + 1) * hd + d], s1);
            s2 = fmaf(s_w[c + 2], acc[(size_t)(c + 2) * hd + d], s2);
            s3 = fmaf(s_w[c + 3], acc[(size_t)(c + 3) * hd + d], s3);
        }
        for (; c < nc; c++)
            s0 = fmaf(s_w[c], acc[(size_t)c * hd + d], s0);
        a.out[(row * a.n_heads + head) * hd + d] = to_bf16(((s0 + s1) + (s2 + s3)) / ls);
    }
}

/* ---- prefill on the tensor cores ---- */

template <int D> constexpr size_t pre_smem(int bm, int ns)
{
    return (size_t)(bm + 2 * ns * PRE_BN) * (D + 8) * sizeof(uint16_t);
}

/* K and V of keys [kt * BN, kt * BN + BN) into shared memory; keys past
 * `last` are zeros.  bf16: cp.async (the caller commits).  f32: loaded
 * here; K split into bf16 hi (sk) + lo (sk_lo), so Q.K^T keeps ~16 bits
 * of each key, V rounded to bf16 (sv).  A thread keeps one 16-byte
 * column and walks rows STEP apart: one division per tile. */
template <int D, int NT, bool F32>
__device__ __forceinline__ void pre_load_kv(const PreArgs &a, const uint32_t *table,
                                            uint32_t kvh, uint32_t kt, uint32_t last,
                                            uint16_t *sk, uint16_t *sk_lo, uint16_t *sv)
{
    constexpr int CPR = D / 8, LD = D + 8, ESZ = F32 ? 4 : 2, STEP = NT / CPR;
    static_assert(NT % CPR == 0 && PRE_BN % STEP == 0, "loader shape");
    const int cc = threadIdx.x % CPR, r0 = threadIdx.x / CPR;
    uint32_t key = kt * PRE_BN + r0, page = key / a.kv.B, tok = key - page * a.kv.B;
    const size_t col = a.kv.layer_off + (size_t)kvh * a.kv.head_bytes + cc * 8 * ESZ;
#pragma unroll
    for (int rr = r0; rr < PRE_BN; rr += STEP) {
        uint16_t *dk = sk + rr * LD + cc * 8, *dv = sv + rr * LD + cc * 8;
        if (key <= last) {
            const uint8_t *kp =
                a.kv.base + (size_t)table[page] * a.kv.slot_bytes + (size_t)tok * a.kv.tok_stride + col;
            if constexpr (F32) {
                float x[8], y[8], lo[8];
                load8<true>(kp, x);
                load8<true>(kp + a.kv.kv_off, y);
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    lo[e] = x[e] - bf16_f(to_bf16(x[e])); /* exact in f32 */
                }
                *reinterpret_cast<uint4 *>(dk) =
                    make_uint4(pack_bf16(x[0], x[1]), pack_bf16(x[2], x[3]),
                               pack_bf16(x[4], x[5]), pack_bf16(x[6], x[7]));
                *reinterpret_cast<uint4 *>(sk_lo + rr * LD + cc * 8) =
                    make_uint4(pack_bf16(lo[0], lo[1]), pack_bf16(lo[2], lo[3]),
                               pack_bf16(lo[4], lo[5]), pack_bf16(lo[6], lo[7]));
                *reinterpret_cast<uint4 *>(dv) =
                    make_uint4(pack_bf16(y[0], y[1]), pack_bf16(y[2], y[3]),
                               pack_bf16(y[4], y[5]), pack_bf16(y[6], y[7]));
            } else {
                cp_async16(dk, kp, 16);
                cp_async16(dv, kp + a.kv.kv_off, 16);
            }
        } else if constexpr (F32) {
            *reinterpret_cast<uint4 *>(dk) = make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4 *>(sk_lo + rr * LD + cc * 8) = make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4 *>(dv) = make_uint4(0, 0, 0, 0);
        } else {
            cp_async16(dk, a.kv.base, 0);
            cp_async16(dv, a.kv.base, 0);
        }
        key += STEP;
        tok += STEP;
        while (tok >= a.kv.B) {
            tok -= a.kv.B;
            page++;
        }
    }
}

/* Fast 2^x (MUFU, flush to zero): 2^-inf = +0. */
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* A block of NW warps takes BM = 16 * MT * NW query rows; a warp takes
 * MT m16 tiles (32 rows for MT 2: each K/V fragment read from shared
 * memory feeds twice the mma's, which halves the shared-memory traffic
 * per flop; Q is then re-read from shared memory per 16-column step
 * instead of being held in registers).  bf16 K/V tiles go through NS
 * shared-memory stages (NS - 1 tiles in flight while one is computed);
 * f32 ones are loaded synchronously into stage 0 (K's lo half in stage
 * 1's K). */
template <int D, int NW, int MT, int NS, bool F32>
__global__ void __launch_bounds__(NW * 32, MT == 2 && NW == 4 ? 2 : 1) prefill_tc(PreArgs a)
{
    constexpr int WM = 16 * MT, BM = WM * NW, BN = PRE_BN, LD = D + 8, NT = NW * 32,
                  CPR = D / 8;
    extern __shared__ __align__(16) uint16_t smem[];
    uint16_t *sQ = smem, *sK = sQ + BM * LD, *sV = sK + NS * BN * LD;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    const uint32_t per_tile = a.n_groups * a.kv.n_kv * a.n_slices;
    const uint32_t qt = a.n_qtiles - 1 - blockIdx.x / per_tile;
    uint32_t r = blockIdx.x % per_tile;
    const uint32_t slice = r % a.n_slices;
    r /= a.n_slices;
    const uint32_t kvh = r % a.kv.n_kv, gi = r / a.kv.n_kv;
    const Group g = a.groups[gi];
    const uint32_t q0 = qt * a.P;
    if (q0 >= g.n)
        return;
    const uint32_t qn = min(a.P, g.n - q0); /* positions of this block */
    const uint32_t pf = g.pos0 + q0, pl = pf + qn - 1;
    const uint32_t *table = a.tables + g.table_off;

    /* Q rows: (position q0 + rr / HS, head slice * HS + rr % HS). */
    for (int c = tid; c < BM * CPR; c += NT) {
        uint32_t rr = c / CPR, cc = c % CPR, pi = rr / a.HS, j = slice * a.HS + rr % a.HS;
        uint16_t *dq = sQ + rr * LD + cc * 8;
        if (pi < qn && j < a.n_rep)
            cp_async16(dq,
                       a.q + ((size_t)(g.row0 + q0 + pi) * a.n_heads + kvh * a.n_rep + j) * D +
                           cc * 8,
                       16);
        else
            cp_async16(dq, a.q, 0);
    }
    const uint32_t n_kt = pl / BN + 1;
    if constexpr (!F32) {
        pre_load_kv<D, NT, F32>(a, table, kvh, 0, pl, sK, nullptr, sV);
        cp_async_commit();
#pragma unroll
        for (int k = 1; k < NS - 1; k++) {
            if (k < n_kt)
                pre_load_kv<D, NT, F32>(a, table, kvh, k, pl, sK + k * BN * LD, nullptr,
                                        sV + k * BN * LD);
            cp_async_commit();
        }
    } else {
        cp_async_commit();
    }

    /* This thread's rows: quad row lane/4 and lane/4 + 8 of each of the
     * warp's MT m16 tiles; rows past the group see keys up to pl. */
    uint32_t pos_r[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int k = 0; k < 2; k++) {
            uint32_t rr = warp * WM + mt * 16 + (lane >> 2) + 8 * k, pi = rr / a.HS,
                     j = slice * a.HS + rr % a.HS;
            pos_r[mt][k] = pi < qn && j < a.n_rep ? pf + pi : pl;
        }

    float o[MT][D / 8][4], m_r[MT][2], l_r[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        m_r[mt][0] = m_r[mt][1] = -INFINITY;
        l_r[mt][0] = l_r[mt][1] = 0.0f;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++)
            o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
    }
    uint32_t qa[MT == 1 ? D / 16 : 1][4]; /* MT 1: all of the warp's Q */
    const uint16_t *qw =
        sQ + (warp * WM + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;

    for (uint32_t kt = 0; kt < n_kt; kt++) {
        /* bf16: tile kt + 1 flies while kt is computed (two buffers).
         * f32: loaded synchronously, one buffer; K's lo half sits in the
         * second K buffer. */
        if constexpr (F32) {
            pre_load_kv<D, NT, F32>(a, table, kvh, kt, pl, sK, sK + BN * LD, sV);
            cp_async_wait<0>();
        } else {
            if (kt + NS - 1 < n_kt) {
                int nb = (kt + NS - 1) % NS;
                pre_load_kv<D, NT, F32>(a, table, kvh, kt + NS - 1, pl, sK + nb * BN * LD,
                                        nullptr, sV + nb * BN * LD);
            }
            cp_async_commit(); /* possibly empty: one group a tile */
            cp_async_wait<NS - 1>();
        }
        __syncthreads();
        if constexpr (MT == 1) {
            if (kt == 0) {
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++)
                    ldmatrix_x4(qa[kk], qw + kk * 16);
            }
        }
        const int buf = F32 ? 0 : kt % NS;
        const uint16_t *ks = sK + buf * BN * LD, *vs = sV + buf * BN * LD;

        float s[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
                s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qf[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if constexpr (MT == 1) {
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        qf[mt][e] = qa[kk][e];
                } else {
                    ldmatrix_x4(qf[mt], qw + mt * 16 * LD + kk * 16);
                }
            }
#pragma unroll
            for (int np = 0; np < BN / 16; np++) {
                uint32_t b[4];
                int off = (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 +
                          ((lane >> 3) & 1) * 8;
                ldmatrix_x4(b, ks + off);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(s[mt][2 * np], qf[mt], b[0], b[1]);
                    mma_bf16(s[mt][2 * np + 1], qf[mt], b[2], b[3]);
                }
                if constexpr (F32) {
                    ldmatrix_x4(b, sK + BN * LD + off);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma_bf16(s[mt][2 * np], qf[mt], b[0], b[1]);
                        mma_bf16(s[mt][2 * np + 1], qf[mt], b[2], b[3]);
                    }
                }
            }
        }

        /* Scale, mask keys past each row's position (only where some are),
         * online softmax. */
        const bool mask = (kt + 1) * BN - 1 > pf;
        uint32_t pa[MT][BN / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            /* The max is taken over the raw scores (scale > 0, the
             * launcher's rule), the scale folded into the exponent's fma. */
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    uint32_t key = kt * BN + nt * 8 + (lane & 3) * 2 + (e & 1);
                    if (mask && key > pos_r[mt][e >> 1])
                        s[mt][nt][e] = -INFINITY;
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[mt][nt][e]);
                }
            }
            float corr[2], nm[2];
#pragma unroll
            for (int k = 0; k < 2; k++) {
                mx[k] = fmaxf(mx[k], __shfl_xor_sync(FULL, mx[k], 1));
                mx[k] = fmaxf(mx[k], __shfl_xor_sync(FULL, mx[k], 2));
                /* tile 0 holds key 0: the new max is finite */
                float m = fmaxf(m_r[mt][k], mx[k] * a.scale_log2);
                corr[k] = fast_exp2(m_r[mt][k] - m);
                m_r[mt][k] = m;
                nm[k] = -m;
                l_r[mt][k] *= corr[k];
            }
            /* O is rescaled only where some row's max moved (most tiles
             * past the first few leave it). */
            if (__any_sync(FULL, corr[0] != 1.0f || corr[1] != 1.0f)) {
#pragma unroll
                for (int dt = 0; dt < D / 8; dt++) {
                    o[mt][dt][0] *= corr[0];
                    o[mt][dt][1] *= corr[0];
                    o[mt][dt][2] *= corr[1];
                    o[mt][dt][3] *= corr[1];
                }
            }
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float p = fast_exp2(fmaf(s[mt][nt][e], a.scale_log2, nm[e >> 1]));
                    s[mt][nt][e] = p;
                    l_r[mt][e >> 1] += p;
                }
            }
            /* P to bf16 A fragments (the C layout of m16n8 is the A
             * layout of m16k16). */
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                pa[mt][kk][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][kk][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][kk][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][kk][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
        }
        /* O += P . V. */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                         dp * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(o[mt][2 * dp], pa[mt][kk], b[0], b[1]);
                    mma_bf16(o[mt][2 * dp + 1], pa[mt][kk], b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* the buffer is refilled two tiles on */
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int k = 0; k < 2; k++) {
            float l = l_r[mt][k];
            l += __shfl_xor_sync(FULL, l, 1);
            l += __shfl_xor_sync(FULL, l, 2);
            l = 1.0f / l;
            uint32_t rr = warp * WM + mt * 16 + (lane >> 2) + 8 * k, pi = rr / a.HS,
                     j = slice * a.HS + rr % a.HS;
            if (pi >= qn || j >= a.n_rep)
                continue;
            uint16_t *op =
                a.out + ((size_t)(g.row0 + q0 + pi) * a.n_heads + kvh * a.n_rep + j) * D +
                (lane & 3) * 2;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++)
                *reinterpret_cast<uint32_t *>(op + dt * 8) =
                    pack_bf16(o[mt][dt][2 * k] * l, o[mt][dt][2 * k + 1] * l);
        }
}

/* ---- host side ---- */

kvt_status_t cuda_fail(const char *what, cudaError_t e)
{
    kvt_log_error("attention %s failed err=%s", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? KVT_ERR_NOMEM : KVT_ERR_IO;
}

constexpr int MAX_DEVICES = 64;
pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
cudaMemPool_t g_pool[MAX_DEVICES];
int g_sms[MAX_DEVICES];

kvt_status_t device_info(int *dev_p, int *sms_p)
{
    int dev;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return cuda_fail("get device", e);
    if (dev < 0 || dev >= MAX_DEVICES)
        return KVT_ERR_INVALID;
    pthread_mutex_lock(&g_lock);
    if (g_sms[dev] == 0) {
        int n = 0;
        e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
        g_sms[dev] = e == cudaSuccess && n > 0 ? n : 1;
    }
    *sms_p = g_sms[dev];
    pthread_mutex_unlock(&g_lock);
    *dev_p = dev;
    return KVT_OK;
}

/* Scratch for the decode partials, stream-ordered from a private pool that
 * keeps its pages (release threshold: never). */
kvt_status_t scratch_alloc(int dev, size_t bytes, cudaStream_t st, void **p)
{
    cudaError_t e = cudaSuccess;
    pthread_mutex_lock(&g_lock);
    if (!g_pool[dev]) {
        cudaMemPoolProps props = {};
        props.allocType = cudaMemAllocationTypePinned;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = dev;
        e = cudaMemPoolCreate(&g_pool[dev], &props);
        if (e == cudaSuccess) {
            uint64_t keep = UINT64_MAX;
            e = cudaMemPoolSetAttribute(g_pool[dev], cudaMemPoolAttrReleaseThreshold, &keep);
        }
    }
    cudaMemPool_t pool = g_pool[dev];
    pthread_mutex_unlock(&g_lock);
    if (e != cudaSuccess)
        return cuda_fail("scratch pool", e);
    e = cudaMallocFromPoolAsync(p, bytes, pool, st);
    if (e != cudaSuccess)
        return cuda_fail("scratch alloc", e);
    return KVT_OK;
}

kvt_status_t check_args(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q,
                        uint32_t n_heads, const kvt_k_group_t *groups, const uint32_t *tables,
                        uint32_t max_n, uint32_t max_ctx, uint16_t *out)
{
    if (!kv || !kv->base || !q || !groups || !tables || !out || n_heads == 0 ||
        kv->n_kv_heads == 0 || n_heads % kv->n_kv_heads != 0 || kv->head_dim == 0 ||
        kv->head_dim > 256 || kv->block_tokens == 0 || layer >= kv->n_layers ||
        max_ctx < max_n) {
        kvt_log_error("attention bad arguments heads=%u kv_heads=%u head_dim=%u layer=%u",
                      n_heads, kv ? kv->n_kv_heads : 0, kv ? kv->head_dim : 0, layer);
        return KVT_ERR_INVALID;
    }
    size_t esz = kv->f32 ? 4 : 2;
    size_t image = (size_t)kv->n_layers * 2 * kv->block_tokens * kv->n_kv_heads * kv->head_dim * esz;
    if (kv->slot_bytes < image) {
        kvt_log_error("attention slot too small slot_bytes=%zu image=%zu", kv->slot_bytes, image);
        return KVT_ERR_INVALID;
    }
    return KVT_OK;
}

KvView make_view(const kvt_k_kv_t *kv, uint32_t layer)
{
    KvView v;
    uint32_t esz = kv->f32 ? 4 : 2;
    v.base = static_cast<const uint8_t *>(kv->base);
    v.slot_bytes = kv->slot_bytes;
    v.head_bytes = kv->head_dim * esz;
    v.tok_stride = kv->n_kv_heads * v.head_bytes;
    v.kv_off = (size_t)kv->block_tokens * v.tok_stride;
    v.layer_off = (size_t)layer * 2 * v.kv_off;
    v.B = kv->block_tokens;
    v.B_shift = -1;
    for (int b = 0; b < 31; b++)
        if (kv->block_tokens == (1u << b))
            v.B_shift = b;
    v.n_kv = kv->n_kv_heads;
    v.hd = kv->head_dim;
    return v;
}

/* 16-byte loads work when every K/V row, q row and out row is aligned. */
bool aligned16(const kvt_k_kv_t *kv, const void *q, const void *out)
{
    uintptr_t bits = (uintptr_t)kv->base | (uintptr_t)q | (uintptr_t)out | kv->slot_bytes;
    return (bits & 15) == 0 && kv->head_dim % 8 == 0;
}

template <int HD, bool F32> void launch_vec(int hpb, dim3 grid, cudaStream_t st, const DecArgs &a)
{
    switch (hpb) {
    case 1: decode_vec<HD, 1, F32><<<grid, DEC_WARPS * 32, 0, st>>>(a); break;
    case 2: decode_vec<HD, 2, F32><<<grid, DEC_WARPS * 32, 0, st>>>(a); break;
    case 4: decode_vec<HD, 4, F32><<<grid, DEC_WARPS * 32, 0, st>>>(a); break;
    default: decode_vec<HD, 8, F32><<<grid, DEC_WARPS * 32, 0, st>>>(a); break;
    }
}

/* The launch-independent part of a decode: the view, the head slicing and
 * the blocks of one chunk row (grid x). */
kvt_status_t dec_setup(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q, uint32_t n_heads,
                       const kvt_k_group_t *groups, uint32_t n_groups, const uint32_t *tables,
                       uint32_t max_n, float scale, uint16_t *out, DecArgs *a_p, int *hpb_p,
                       bool *vec_p, uint32_t *blocks_p)
{
    DecArgs a = {};
    a.kv = make_view(kv, layer);
    a.q = q;
    a.out = out;
    a.groups = reinterpret_cast<const Group *>(groups);
    a.tables = tables;
    a.n_heads = n_heads;
    a.n_rep = n_heads / kv->n_kv_heads;
    a.max_n = max_n;
    a.scale_log2 = scale * LOG2E;
    uint32_t hd = kv->head_dim;
    bool vec = (hd == 64 || hd == 128) && aligned16(kv, q, out);
    int hpb = 1;
    while (vec && hpb < 8 && (uint32_t)hpb < a.n_rep)
        hpb *= 2;
    a.n_slices = vec ? (a.n_rep + hpb - 1) / hpb : 1;
    uint64_t blocks = (uint64_t)n_groups * max_n * kv->n_kv_heads * a.n_slices;
    if (blocks >= (1ull << 31)) {
        kvt_log_error("attention decode grid too large blocks=%llu", (unsigned long long)blocks);
        return KVT_ERR_INVALID;
    }
    *a_p = a;
    *hpb_p = hpb;
    *vec_p = vec;
    *blocks_p = (uint32_t)blocks;
    return KVT_OK;
}

/* Chunks: enough blocks for ~8 per SM, at least DEC_MIN_CHUNK keys each. */
void dec_chunking(uint64_t blocks, int sms, uint32_t max_ctx, uint32_t *chunk_p,
                  uint32_t *n_chunks_p)
{
    uint64_t target = 8ull * sms, want = (target + blocks - 1) / blocks;
    uint64_t most = (max_ctx + DEC_MIN_CHUNK - 1) / DEC_MIN_CHUNK;
    uint64_t nc = want < most ? want : most;
    if (nc > DEC_MAX_CHUNKS)
        nc = DEC_MAX_CHUNKS;
    if (nc < 1)
        nc = 1;
    uint32_t chunk = (uint32_t)((max_ctx + nc - 1) / nc);
    chunk = (chunk + 31) & ~31u;
    *chunk_p = chunk;
    *n_chunks_p = (max_ctx + chunk - 1) / chunk;
}

/* The decode kernel (grid y = chunk rows) and, with combine, the merge of
 * the chunks. */
cudaError_t dec_launch(const DecArgs &a, const kvt_k_kv_t *kv, bool vec, int hpb, dim3 grid,
                       bool combine, uint32_t n_groups, cudaStream_t st)
{
    uint32_t hd = kv->head_dim;
    if (vec && hd == 64)
        kv->f32 ? launch_vec<64, true>(hpb, grid, st, a) : launch_vec<64, false>(hpb, grid, st, a);
    else if (vec)
        kv->f32 ? launch_vec<128, true>(hpb, grid, st, a)
                : launch_vec<128, false>(hpb, grid, st, a);
    else if (kv->f32)
        decode_gen<true><<<grid, DEC_WARPS * 32, 0, st>>>(a);
    else
        decode_gen<false><<<grid, DEC_WARPS * 32, 0, st>>>(a);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && combine) {
        decode_combine<<<(uint32_t)((uint64_t)n_groups * a.max_n * a.n_heads), DEC_WARPS * 32, 0,
                         st>>>(a);
        e = cudaGetLastError();
    }
    return e;
}

size_t dec_scratch_bytes(uint32_t n_groups, uint32_t max_n, uint32_t n_heads, uint32_t n_chunks,
                         uint32_t hd, size_t *parts_p)
{
    size_t parts = (size_t)n_groups * max_n * n_heads * n_chunks;
    *parts_p = parts;
    return parts * (sizeof(float2) + (size_t)hd * sizeof(float));
}

kvt_status_t run_decode(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q,
                        uint32_t n_heads, const kvt_k_group_t *groups, uint32_t n_groups,
                        const uint32_t *tables, uint32_t max_n, uint32_t max_ctx, float scale,
                        uint16_t *out, cudaStream_t st)
{
    int dev, sms, hpb;
    bool vec;
    uint32_t blocks;
    DecArgs a;
    kvt_status_t rc = device_info(&dev, &sms);
    if (rc == KVT_OK)
        rc = dec_setup(kv, layer, q, n_heads, groups, n_groups, tables, max_n, scale, out, &a,
                       &hpb, &vec, &blocks);
    if (rc != KVT_OK)
        return rc;
    dec_chunking(blocks, sms, max_ctx, &a.chunk, &a.n_chunks);

    void *scratch = nullptr;
    if (a.n_chunks > 1) {
        size_t parts;
        size_t bytes = dec_scratch_bytes(n_groups, max_n, n_heads, a.n_chunks, kv->head_dim, &parts);
        rc = scratch_alloc(dev, bytes, st, &scratch);
        if (rc != KVT_OK)
            return rc;
        a.part_ml = static_cast<float2 *>(scratch);
        a.part_acc = reinterpret_cast<float *>(a.part_ml + parts);
    }
    cudaError_t e = dec_launch(a, kv, vec, hpb, dim3(blocks, a.n_chunks), a.n_chunks > 1,
                               n_groups, st);
    if (scratch) {
        cudaError_t fe = cudaFreeAsync(scratch, st);
        if (e == cudaSuccess)
            e = fe;
    }
    return e == cudaSuccess ? KVT_OK : cuda_fail("decode launch", e);
}

template <int D, int NW, int MT, int NS, bool F32>
cudaError_t launch_prefill(const PreArgs &a, uint32_t blocks, cudaStream_t st)
{
    static_assert(16 * NW * MT == PRE_BM, "block rows");
    static bool attr_set; /* benign race: setting it twice is harmless */
    size_t smem = pre_smem<D>(PRE_BM, NS);
    if (!attr_set) {
        cudaError_t e = cudaFuncSetAttribute(prefill_tc<D, NW, MT, NS, F32>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess)
            return e;
        attr_set = true;
    }
    prefill_tc<D, NW, MT, NS, F32><<<blocks, NW * 32, smem, st>>>(a);
    return cudaGetLastError();
}

} /* namespace */

extern "C" kvt_status_t kvt_k_attn_decode(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q,
                                          uint32_t n_heads, const kvt_k_group_t *groups,
                                          uint32_t n_groups, const uint32_t *tables,
                                          uint32_t max_n, uint32_t max_ctx, float scale,
                                          uint16_t *out, kvt_gpu_stream_t s)
{
    kvt_status_t rc = check_args(kv, layer, q, n_heads, groups, tables, max_n, max_ctx, out);
    if (rc != KVT_OK || n_groups == 0 || max_n == 0)
        return rc;
    return run_decode(kv, layer, q, n_heads, groups, n_groups, tables, max_n, max_ctx, scale, out,
                      reinterpret_cast<cudaStream_t>(s));
}

extern "C" kvt_status_t kvt_k_attn_decode_plan(const kvt_k_kv_t *kv, const uint16_t *q,
                                               const uint16_t *out, uint32_t n_heads,
                                               uint32_t n_groups, uint32_t max_n,
                                               uint32_t max_ctx, uint32_t plan[2])
{
    int dev, sms, hpb;
    bool vec;
    uint32_t blocks;
    DecArgs a;
    if (!kv || kv->n_kv_heads == 0 || n_heads == 0 || n_heads % kv->n_kv_heads != 0 ||
        n_groups == 0 || max_n == 0 || max_ctx < max_n)
        return KVT_ERR_INVALID;
    kvt_status_t rc = device_info(&dev, &sms);
    if (rc == KVT_OK)
        rc = dec_setup(kv, 0, q, n_heads, nullptr, n_groups, nullptr, max_n, 1.0f,
                       const_cast<uint16_t *>(out), &a, &hpb, &vec, &blocks);
    if (rc == KVT_OK)
        dec_chunking(blocks, sms, max_ctx, &plan[0], &plan[1]);
    return rc;
}

extern "C" size_t kvt_k_attn_decode_scratch(const kvt_k_kv_t *kv, uint32_t n_heads,
                                            uint32_t n_groups, uint32_t max_n,
                                            uint32_t chunk_cap)
{
    size_t parts;
    return dec_scratch_bytes(n_groups, max_n, n_heads, chunk_cap, kv->head_dim, &parts);
}

extern "C" kvt_status_t kvt_k_attn_decode_graph(const kvt_k_kv_t *kv, uint32_t layer,
                                                const uint16_t *q, uint32_t n_heads,
                                                const kvt_k_group_t *groups, uint32_t n_groups,
                                                const uint32_t *tables, uint32_t max_n,
                                                const uint32_t *plan, uint32_t chunk_cap,
                                                void *scratch, float scale, uint16_t *out,
                                                kvt_gpu_stream_t s)
{
    int hpb;
    bool vec;
    uint32_t blocks;
    DecArgs a;
    kvt_status_t rc = check_args(kv, layer, q, n_heads, groups, tables, max_n, max_n, out);
    if (rc == KVT_OK && (!plan || chunk_cap == 0 || chunk_cap > DEC_MAX_CHUNKS ||
                         (chunk_cap > 1 && !scratch)))
        rc = KVT_ERR_INVALID;
    if (rc != KVT_OK || n_groups == 0 || max_n == 0)
        return rc;
    rc = dec_setup(kv, layer, q, n_heads, groups, n_groups, tables, max_n, scale, out, &a, &hpb,
                   &vec, &blocks);
    if (rc != KVT_OK)
        return rc;
    size_t parts;
    (void)dec_scratch_bytes(n_groups, max_n, n_heads, chunk_cap, kv->head_dim, &parts);
    a.plan = plan;
    a.part_ml = static_cast<float2 *>(scratch);
    a.part_acc = scratch ? reinterpret_cast<float *>(a.part_ml + parts) : nullptr;
    /* Not read with a plan: every block takes its chunk size and count from
     * the plan in device memory, which changes per step while a captured
     * graph's arguments cannot. */
    a.chunk = 0;
    a.n_chunks = chunk_cap;
    cudaError_t e = dec_launch(a, kv, vec, hpb, dim3(blocks, chunk_cap), chunk_cap > 1, n_groups,
                               reinterpret_cast<cudaStream_t>(s));
    return e == cudaSuccess ? KVT_OK : cuda_fail("decode launch", e);
}

extern "C" kvt_status_t kvt_k_attn_prefill(const kvt_k_kv_t *kv, uint32_t layer,
                                           const uint16_t *q, uint32_t n_heads,
                                           const kvt_k_group_t *groups, uint32_t n_groups,
                                           const uint32_t *tables, uint32_t max_n,
                                           uint32_t max_ctx, float scale, uint16_t *out,
                                           kvt_gpu_stream_t s)
{
    kvt_status_t rc = check_args(kv, layer, q, n_heads, groups, tables, max_n, max_ctx, out);
    if (rc != KVT_OK || n_groups == 0 || max_n == 0)
        return rc;
    cudaStream_t st = reinterpret_cast<cudaStream_t>(s);
    uint32_t hd = kv->head_dim;
    /* The tensor-core path folds the scale into its exponentials after a
     * max over the raw scores: it takes scale > 0 (1/sqrt(hd) always). */
    if ((hd != 64 && hd != 128) || !aligned16(kv, q, out) || !(scale > 0.0f) ||
        isinf(scale))
        return run_decode(kv, layer, q, n_heads, groups, n_groups, tables, max_n, max_ctx, scale,
                          out, st);
    PreArgs a = {};
    a.kv = make_view(kv, layer);
    a.q = q;
    a.out = out;
    a.groups = reinterpret_cast<const Group *>(groups);
    a.tables = tables;
    a.n_heads = n_heads;
    a.n_rep = n_heads / kv->n_kv_heads;
    a.n_groups = n_groups;
    const uint32_t BM = PRE_BM;
    a.HS = a.n_rep < BM ? a.n_rep : BM;
    a.P = BM / a.HS;
    a.n_slices = (a.n_rep + a.HS - 1) / a.HS;
    a.n_qtiles = (max_n + a.P - 1) / a.P;
    a.scale_log2 = scale * LOG2E;
    uint64_t blocks = (uint64_t)a.n_qtiles * n_groups * kv->n_kv_heads * a.n_slices;
    if (blocks >= (1ull << 31)) {
        kvt_log_error("attention prefill grid too large blocks=%llu", (unsigned long long)blocks);
        return KVT_ERR_INVALID;
    }
    cudaError_t e;
    uint32_t nb = (uint32_t)blocks;
    if (hd == 64)
        e = kv->f32 ? launch_prefill<64, 8, 1, 2, true>(a, nb, st)
                    : launch_prefill<64, 4, 2, 2, false>(a, nb, st);
    else
        e = kv->f32 ? launch_prefill<128, 8, 1, 2, true>(a, nb, st)
                    : launch_prefill<128, 4, 2, 2, false>(a, nb, st);
    return e == cudaSuccess ? KVT_OK : cuda_fail("prefill launch", e);
}
