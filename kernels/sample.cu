/* Sampling on the GPU (kvt_k_sample): engine/sample.c's rule, row by row,
 * with the uniform draw u[r] given.
 *
 *   - argmax with the lowest id on ties, NaN never winning (all -inf/NaN:
 *     id 0); it is the answer for temperature 0, top_k 1, a non-finite
 *     maximum, or a maximum that overflows when divided by temperature;
 *   - z_i = logit_i / temperature (NaN -> -inf), p_i = exp(z_i - z_max) in
 *     double;
 *   - unfiltered (top_k 0, top_p 1): candidates in id order;
 *   - filtered: candidates sorted by (z descending, id ascending), the
 *     first top_k kept, then the shortest prefix whose mass reaches
 *     top_p * total;
 *   - the first candidate whose running mass exceeds u * kept mass (else
 *     the last one with mass, else the first).
 *
 * Work is split over the vocabulary in chunks of kTile ids, one block per
 * (chunk, row), so one row alone still fills the GPU:
 *   1. argmax partials per chunk; every later kernel reduces them itself;
 *   2. unfiltered: each chunk's mass (in id order); one block per row adds
 *      the chunk masses in order, finds the chunk where the running mass
 *      passes u * total, and walks that chunk alone;
 *   3. top_k in [2, kSelectMax] below the vocabulary: a radix select on
 *      the 64-bit key (~ordered(z) << id_bits | id) -- 11-bit digits,
 *      per-row histograms in integer atomics -- finds the top_k-th key
 *      exactly; the top_k keys at or below it are gathered, sorted in
 *      shared memory (bitonic), and one block per row applies top_p and
 *      the draw;
 *   4. any other filter (top_p alone, larger top_k): cub::DeviceRadixSort
 *      of the rows' keys (row bits on top), then chunk masses over the
 *      first n sorted candidates and one block per row, as in 2, which
 *      finds the top-p cut and the draw each in one chunk.
 *
 * Running sums: a block walks candidates in tiles of kTile, each thread
 * summing kItems consecutive ones, a block scan adding the thread totals,
 * a carry crossing tiles, and the chunk masses added in order by one
 * thread.  Every pass (total, top-p cut, draw) recomputes the same sums in
 * the same order, so they agree with each other bitwise and run to run
 * (integer atomics only count; nothing depends on the order of atomics).
 * They are not the CPU's strictly sequential sums: a draw landing within a
 * few ulps of a boundary between two candidates may pick the neighbour
 * (double precision: ~1e-13 of the mass), as may the last-ulp difference
 * between CUDA's and libm's exp.
 *
 * Scratch: taken with cudaMallocAsync on the caller's stream and freed
 * with cudaFreeAsync behind the kernels: ~16 bytes x rows x chunks always;
 * the select path adds 8 KiB + 8 x top_k bytes a row; the sort path two
 * key buffers of 8 bytes x rows x vocab (rows batched to at most
 * kSortKeys keys, 64 MiB) plus CUB's temporary storage.  The memory comes
 * from the device's default stream-ordered pool; kvt_k_sample raises that
 * pool's release threshold to 256 MiB once per device, so repeated calls
 * reuse it instead of mapping fresh memory each time. */
extern "C" {
#include "kernels/kernels.h"
}
#include "kernels/kernelsInt.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <atomic>

namespace {

typedef unsigned long long u64;

constexpr int kThreads = 256;
constexpr int kItems = 8;
constexpr uint32_t kTile = kThreads * kItems; /* also the chunk length */
constexpr uint32_t kNone = 0xffffffffu;
constexpr size_t kSortKeys = (size_t)1 << 22; /* keys per sort batch (32 MiB a buffer) */
constexpr size_t kMaxGridY = 65535;
constexpr int kSelBits = 11;
constexpr uint32_t kSelBins = 1u << kSelBits;
constexpr uint32_t kSelectMax = 2048; /* top_k up to this: radix select, no sort */

struct Params {
    float temperature;
    uint32_t top_k;
    float top_p;
};

/* --- argmax: larger value, then lower id; NaN and -inf never candidates --- */

struct ArgMax {
    float v;
    uint32_t i;
};

struct ArgMaxOp {
    __device__ __forceinline__ ArgMax operator()(const ArgMax &a, const ArgMax &b) const
    {
        if (b.i == kNone)
            return a;
        if (a.i == kNone)
            return b;
        if (b.v > a.v || (b.v == a.v && b.i < a.i))
            return b;
        return a;
    }
};

__device__ __forceinline__ void argmax_take(ArgMax &m, float v, uint32_t i)
{
    /* sample.c starts at -inf and takes strictly greater values. */
    if (v > -INFINITY && (m.i == kNone || v > m.v || (v == m.v && i < m.i))) {
        m.v = v;
        m.i = i;
    }
}

struct MaxOp {
    __device__ __forceinline__ uint32_t operator()(uint32_t a, uint32_t b) const
    {
        return a > b ? a : b;
    }
};
struct MinOp {
    __device__ __forceinline__ uint32_t operator()(uint32_t a, uint32_t b) const
    {
        return a < b ? a : b;
    }
};

using ArgReduce = cub::BlockReduce<ArgMax, kThreads>;
using Scan = cub::BlockScan<double, kThreads>;
using IdxReduce = cub::BlockReduce<uint32_t, kThreads>;
using CountScan = cub::BlockScan<uint32_t, kThreads>;

union SampleStorage {
    ArgReduce::TempStorage arg;
    Scan::TempStorage scan;
    IdxReduce::TempStorage idx;
    CountScan::TempStorage count;
};

/* --- z, ordered keys --- */

__device__ __forceinline__ float z_of(float logit, float temperature)
{
    float z = isnan(logit) ? -INFINITY : __fdiv_rn(logit, temperature);
    return z == 0.0f ? 0.0f : z; /* -0 and +0 compare equal in sample.c: one key */
}

/* Unsigned order == float order (no NaN here). */
__device__ __forceinline__ uint32_t ord(float f)
{
    uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float unord(uint32_t o)
{
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

/* Ascending key order == (z descending, id ascending). */
__device__ __forceinline__ u64 cand_key(float logit, float temperature, uint32_t id,
                                        uint32_t id_bits)
{
    return ((u64)~ord(z_of(logit, temperature)) << id_bits) | id;
}

/* Candidates in id order from the logits. */
struct IdOrder {
    const float *row;
    float temperature;
    __device__ __forceinline__ void get(uint32_t i, float &z, uint32_t &id) const
    {
        float l = row[i];
        z = isnan(l) ? -INFINITY : __fdiv_rn(l, temperature);
        id = i;
    }
};

/* Candidates in sorted order from a row's sorted keys (row bits ignored). */
struct SortedOrder {
    const u64 *keys;
    uint32_t id_bits;
    __device__ __forceinline__ void get(uint32_t i, float &z, uint32_t &id) const
    {
        u64 k = keys[i];
        id = (uint32_t)(k & ((1ull << id_bits) - 1));
        z = unord(~(uint32_t)(k >> id_bits));
    }
};

/* --- the row's argmax and the early answers --- */

/* Best id from a row's chunk partials (0 when every logit is -inf/NaN). */
__device__ uint32_t best_of(const ArgMax *parts, uint32_t n_chunks, SampleStorage &ts)
{
    __shared__ uint32_t s_best;
    ArgMax m = {-INFINITY, kNone};
    ArgMaxOp op;
    for (uint32_t c = threadIdx.x; c < n_chunks; c += kThreads)
        m = op(m, parts[c]);
    __syncthreads(); /* ts may still be in use by the caller's last step */
    ArgMax b = ArgReduce(ts.arg).Reduce(m, op);
    if (threadIdx.x == 0)
        s_best = b.i == kNone ? 0 : b.i;
    __syncthreads();
    return s_best;
}

/* sample.c answers with the argmax for temperature 0, top_k 1, a
 * non-finite top logit, and a temperature so small that it overflows. */
__device__ __forceinline__ bool early(const Params &pr, float best_logit)
{
    return pr.temperature == 0.0f || pr.top_k == 1 || !isfinite(best_logit) ||
           !isfinite(__fdiv_rn(best_logit, pr.temperature));
}

__global__ void __launch_bounds__(kThreads)
    argmax_parts(const float *__restrict__ logits, uint32_t vocab, uint32_t n_chunks,
                 ArgMax *__restrict__ parts)
{
    __shared__ ArgReduce::TempStorage ts;
    size_t r = blockIdx.y;
    uint32_t c = blockIdx.x, begin = c * kTile, end = min(begin + kTile, vocab);
    const float *row = logits + r * vocab;
    ArgMax m = {-INFINITY, kNone};
    if (vocab % 4 == 0 && ((uintptr_t)logits & 15) == 0) {
        const float4 *r4 = reinterpret_cast<const float4 *>(row);
        for (uint32_t j = begin / 4 + threadIdx.x; j < end / 4; j += kThreads) {
            float4 v = r4[j];
            argmax_take(m, v.x, 4 * j);
            argmax_take(m, v.y, 4 * j + 1);
            argmax_take(m, v.z, 4 * j + 2);
            argmax_take(m, v.w, 4 * j + 3);
        }
    } else {
        for (uint32_t j = begin + threadIdx.x; j < end; j += kThreads)
            argmax_take(m, row[j], j);
    }
    ArgMax b = ArgReduce(ts).Reduce(m, ArgMaxOp());
    if (threadIdx.x == 0)
        parts[r * n_chunks + c] = b;
}

/* --- running sums --- */

enum Mode { kTotal, kFirstGt, kFirstGe, kLastPositive };

/* One walk over candidates [begin, end) whose running sum starts at
 * `offset` (the running sum at i is offset + the chunk's own sum to i).
 * kTotal: the sum at end - 1 in *sum_p, returns end - 1; kFirstGt /
 * kFirstGe: the first i < limit whose sum is > / >= target (kNone if none)
 * and that sum; kLastPositive: the last i < limit with p_i > 0 (kNone if
 * none).  A sum depends only on the candidates before it, so every mode
 * and limit sees the same sums. */
template <class Src>
__device__ uint32_t walk(const Src &src, uint32_t begin, uint32_t end, double zmax, Mode mode,
                         double target, uint32_t limit, double offset, double *sum_p,
                         SampleStorage &ts)
{
    __shared__ uint32_t s_idx;
    __shared__ double s_sum;
    if (threadIdx.x == 0) {
        s_idx = kNone;
        s_sum = 0.0;
    }
    double carry = 0.0;
    for (uint32_t t0 = begin; t0 < end; t0 += kTile) {
        uint32_t first = t0 + threadIdx.x * kItems;
        double p[kItems], local[kItems], acc = 0.0;
#pragma unroll
        for (int j = 0; j < kItems; j++) {
            uint32_t i = first + j;
            p[j] = 0.0;
            if (i < end) {
                float z;
                uint32_t id;
                src.get(i, z, id);
                p[j] = exp((double)z - zmax);
            }
            acc = acc + p[j];
            local[j] = acc;
        }
        double excl, agg;
        __syncthreads(); /* the storage union was used by the last step */
        Scan(ts.scan).ExclusiveSum(acc, excl, agg);
        double base = carry + excl, my_sum = 0.0;
        uint32_t mine = kNone;
#pragma unroll
        for (int j = 0; j < kItems; j++) {
            uint32_t i = first + j;
            double sum = offset + (base + local[j]);
            bool hit;
            if (mode == kTotal)
                hit = i == end - 1;
            else if (mode == kFirstGe)
                hit = i < limit && sum >= target;
            else if (mode == kFirstGt)
                hit = i < limit && sum > target;
            else
                hit = i < limit && p[j] > 0.0;
            if (hit && (mine == kNone || mode == kLastPositive)) {
                mine = i;
                my_sum = sum;
            }
        }
        __syncthreads(); /* ts.scan is reused as ts.idx */
        if (mode == kLastPositive) {
            uint32_t cand = mine == kNone ? 0u : mine + 1; /* 0 = none */
            uint32_t win = IdxReduce(ts.idx).Reduce(cand, MaxOp());
            if (threadIdx.x == 0 && win > 0)
                s_idx = win - 1;
        } else {
            uint32_t win = IdxReduce(ts.idx).Reduce(mine, MinOp());
            if (threadIdx.x == 0 && win != kNone)
                s_idx = win;
        }
        __syncthreads();
        uint32_t found = s_idx;
        if (mode != kLastPositive && found != kNone) {
            if (mine == found)
                s_sum = my_sum;
            break;
        }
        carry = carry + agg;
    }
    __syncthreads();
    if (sum_p)
        *sum_p = s_sum;
    uint32_t found = s_idx;
    __syncthreads(); /* s_idx / s_sum are reset by the next walk */
    return found;
}

/* Top-p cut, then the draw, over sorted candidates [0, n) in one block. */
template <class Src>
__device__ uint32_t choose(const Src &src, uint32_t n, double zmax, float top_p, float u,
                           SampleStorage &ts)
{
    __shared__ uint32_t s_pick;
    double total = 0.0;
    walk(src, 0, n, zmax, kTotal, 0.0, n, 0.0, &total, ts);
    uint32_t keep = n;
    if (top_p < 1.0f) {
        double want = (double)top_p * total, at = 0.0;
        uint32_t i = walk(src, 0, n, zmax, kFirstGe, want, n, 0.0, &at, ts);
        /* sample.c keeps at least one, and stops once the kept mass >= want. */
        if (i != kNone) {
            keep = i + 1;
            total = at;
        }
    }
    double us = (double)u * total;
    uint32_t i = walk(src, 0, n, zmax, kFirstGt, us, keep, 0.0, nullptr, ts);
    if (i == kNone)
        i = walk(src, 0, n, zmax, kLastPositive, 0.0, keep, 0.0, nullptr, ts);
    if (i == kNone)
        i = 0;
    if (threadIdx.x == 0) {
        float z;
        uint32_t id;
        src.get(i, z, id);
        s_pick = id;
    }
    __syncthreads();
    return s_pick;
}

/* --- chunked rows: chunk masses, then one block per row picks --- */

/* A row's candidates in order: by id (keys NULL) or by sorted key. */
struct RowSrc {
    const float *row;
    const u64 *keys;
    float temperature;
    uint32_t id_bits;
    __device__ __forceinline__ void get(uint32_t i, float &z, uint32_t &id) const
    {
        if (keys)
            SortedOrder{keys, id_bits}.get(i, z, id);
        else
            IdOrder{row, temperature}.get(i, z, id);
    }
};

/* The mass of candidates [c * kTile, min((c + 1) * kTile, n)) of each
 * row that is not answered early. */
__global__ void __launch_bounds__(kThreads)
    chunk_mass(const float *__restrict__ logits, uint32_t vocab, Params pr,
               const ArgMax *__restrict__ parts, uint32_t n_chunks, const u64 *__restrict__ keys,
               uint32_t id_bits, uint32_t n, double *__restrict__ mass)
{
    __shared__ SampleStorage ts;
    size_t r = blockIdx.y;
    const float *row = logits + r * vocab;
    uint32_t best = best_of(parts + r * n_chunks, n_chunks, ts);
    if (early(pr, row[best]))
        return;
    double zmax = (double)__fdiv_rn(row[best], pr.temperature);
    RowSrc src{row, keys ? keys + r * vocab : nullptr, pr.temperature, id_bits};
    uint32_t begin = blockIdx.x * kTile, end = min(begin + kTile, n);
    double sum = 0.0;
    walk(src, begin, end, zmax, kTotal, 0.0, end, 0.0, &sum, ts);
    if (threadIdx.x == 0)
        mass[r * n_chunks + blockIdx.x] = sum;
}

/* The first chunk c (< n_mass) whose running end sum is >= (ge) or >
 * `target`, or `stop` if reached first; its starting sum in *base_p.  The
 * chunk masses are added in order, so the running sum at any candidate is
 * base + the chunk's own sum to it, the same in every pass. */
__device__ uint32_t find_chunk(const double *m, uint32_t n_mass, double target, bool ge,
                               uint32_t stop, double *base_p)
{
    double base = 0.0;
    uint32_t c = 0;
    for (; c < n_mass && c != stop; c++) {
        double next = base + m[c];
        if (ge ? next >= target : next > target)
            break;
        base = next;
    }
    *base_p = base;
    return c < n_mass ? c : kNone;
}

/* Greedy and early rows; otherwise the top-p cut and the draw over the
 * first n candidates (mass != NULL). */
__global__ void __launch_bounds__(kThreads)
    pick_chunked(const float *__restrict__ logits, uint32_t vocab, Params pr,
                 const ArgMax *__restrict__ parts, uint32_t n_chunks, const u64 *__restrict__ keys,
                 uint32_t id_bits, uint32_t n, const double *__restrict__ mass,
                 const float *__restrict__ u, uint32_t *__restrict__ tokens)
{
    __shared__ SampleStorage ts;
    __shared__ uint32_t s_chunk;
    __shared__ double s_base;
    size_t r = blockIdx.x;
    const float *row = logits + r * vocab;
    uint32_t best = best_of(parts + r * n_chunks, n_chunks, ts);
    if (!mass || early(pr, row[best])) {
        if (threadIdx.x == 0)
            tokens[r] = best;
        return;
    }
    double zmax = (double)__fdiv_rn(row[best], pr.temperature);
    RowSrc src{row, keys ? keys + r * vocab : nullptr, pr.temperature, id_bits};
    const double *m = mass + r * n_chunks;
    uint32_t n_mass = (n + kTile - 1) / kTile;
    double total = 0.0;
    for (uint32_t c = 0; c < n_mass; c++) /* every thread: the same sum */
        total = total + m[c];
    uint32_t keep = n, keep_chunk = kNone;
    if (pr.top_p < 1.0f) {
        /* sample.c keeps the shortest prefix whose mass reaches top_p of the
         * total (at least one candidate). */
        double want = (double)pr.top_p * total;
        if (threadIdx.x == 0)
            s_chunk = find_chunk(m, n_mass, want, true, kNone, &s_base);
        __syncthreads();
        uint32_t c = s_chunk;
        if (c != kNone) {
            uint32_t begin = c * kTile, end = min(begin + kTile, n);
            double at = 0.0;
            uint32_t i = walk(src, begin, end, zmax, kFirstGe, want, end, s_base, &at, ts);
            if (i != kNone) {
                keep = i + 1;
                keep_chunk = c;
                total = at;
            }
        }
    }
    double us = (double)u[r] * total;
    __syncthreads(); /* s_chunk / s_base reused */
    if (threadIdx.x == 0)
        s_chunk = find_chunk(m, n_mass, us, false, keep_chunk, &s_base);
    __syncthreads();
    uint32_t i = kNone, c = s_chunk;
    if (c != kNone) {
        uint32_t begin = c * kTile, end = min(begin + kTile, n);
        i = walk(src, begin, end, zmax, kFirstGt, us, keep, s_base, nullptr, ts);
    }
    if (i == kNone) /* rounding left u * total at or past the sum */
        i = walk(src, 0, keep, zmax, kLastPositive, 0.0, keep, 0.0, nullptr, ts);
    if (i == kNone)
        i = 0;
    if (threadIdx.x == 0) {
        float z;
        uint32_t id;
        src.get(i, z, id);
        tokens[r] = id;
    }
}

/* --- filtered, sort path --- */

__global__ void make_keys(const float *__restrict__ logits, uint32_t vocab, float temperature,
                          uint32_t id_bits, size_t n, u64 *__restrict__ keys)
{
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / vocab;
        uint32_t id = (uint32_t)(k % vocab);
        keys[k] = ((u64)r << (32 + id_bits)) | cand_key(logits[k], temperature, id, id_bits);
    }
}

/* --- filtered, radix-select path (top_k <= kSelectMax) --- */

struct SelState {
    u64 prefix;         /* the digits of the top_k-th key found so far */
    uint32_t remaining; /* its rank among keys sharing those digits (1-based) */
    uint32_t count;     /* keys gathered */
};

__global__ void sel_init(SelState *st, size_t rows, uint32_t k)
{
    for (size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows;
         r += (size_t)gridDim.x * blockDim.x)
        st[r] = SelState{0, k, 0};
}

/* Histogram of digit [shift, shift + kSelBits) over the keys whose higher
 * digits equal the prefix found so far. */
__global__ void __launch_bounds__(kThreads)
    sel_hist(const float *__restrict__ logits, uint32_t vocab, float temperature,
             uint32_t id_bits, const SelState *__restrict__ st, int shift,
             uint32_t *__restrict__ hist)
{
    __shared__ uint32_t h[kSelBins];
    for (uint32_t b = threadIdx.x; b < kSelBins; b += kThreads)
        h[b] = 0;
    __syncthreads();
    size_t r = blockIdx.y;
    const float *row = logits + r * vocab;
    uint32_t begin = blockIdx.x * kTile, end = min(begin + kTile, vocab);
    int hi = shift + kSelBits;
    bool all = hi >= 64; /* the top digit: every key */
    u64 want = all ? 0 : st[r].prefix >> hi;
    for (uint32_t i = begin + threadIdx.x; i < end; i += kThreads) {
        u64 key = cand_key(row[i], temperature, i, id_bits);
        if (all || (key >> hi) == want)
            atomicAdd(&h[(uint32_t)(key >> shift) & (kSelBins - 1)], 1u);
    }
    __syncthreads();
    uint32_t *g = hist + r * kSelBins;
    for (uint32_t b = threadIdx.x; b < kSelBins; b += kThreads)
        if (h[b])
            atomicAdd(&g[b], h[b]);
}

/* The digit holding the remaining-th key; clears the histogram. */
__global__ void __launch_bounds__(kThreads)
    sel_digit(SelState *__restrict__ st, int shift, uint32_t *__restrict__ hist)
{
    __shared__ CountScan::TempStorage ts;
    constexpr int per = kSelBins / kThreads;
    size_t r = blockIdx.x;
    uint32_t *g = hist + r * kSelBins;
    uint32_t c[per], sum = 0;
    uint32_t want = st[r].remaining; /* read by all before the one writer below */
#pragma unroll
    for (int j = 0; j < per; j++) {
        c[j] = g[threadIdx.x * per + j];
        g[threadIdx.x * per + j] = 0;
        sum += c[j];
    }
    uint32_t before;
    CountScan(ts).ExclusiveSum(sum, before); /* (a barrier) */
#pragma unroll
    for (int j = 0; j < per; j++) {
        if (before < want && want <= before + c[j]) {
            st[r].prefix |= (u64)(threadIdx.x * per + j) << shift;
            st[r].remaining = want - before;
        }
        before += c[j];
    }
}

/* Gather the keys <= the top_k-th: exactly top_k of them (keys are unique). */
__global__ void __launch_bounds__(kThreads)
    sel_gather(const float *__restrict__ logits, uint32_t vocab, float temperature,
               uint32_t id_bits, SelState *__restrict__ st, uint32_t k, u64 *__restrict__ list)
{
    size_t r = blockIdx.y;
    const float *row = logits + r * vocab;
    uint32_t begin = blockIdx.x * kTile, end = min(begin + kTile, vocab);
    u64 kth = st[r].prefix;
    for (uint32_t i = begin + threadIdx.x; i < end; i += kThreads) {
        u64 key = cand_key(row[i], temperature, i, id_bits);
        if (key <= kth) {
            uint32_t at = atomicAdd(&st[r].count, 1u);
            if (at < k)
                list[r * k + at] = key;
        }
    }
}

__global__ void __launch_bounds__(kThreads)
    pick_selected(const float *__restrict__ logits, uint32_t vocab, Params pr,
                  const ArgMax *__restrict__ parts, uint32_t n_chunks,
                  const u64 *__restrict__ list, uint32_t id_bits, const float *__restrict__ u,
                  uint32_t *__restrict__ tokens)
{
    __shared__ SampleStorage ts;
    __shared__ u64 keys[kSelectMax];
    size_t r = blockIdx.x;
    const float *row = logits + r * vocab;
    uint32_t best = best_of(parts + r * n_chunks, n_chunks, ts);
    uint32_t tok = best;
    if (!early(pr, row[best])) {
        uint32_t k = pr.top_k, n2 = 1;
        while (n2 < k)
            n2 <<= 1;
        for (uint32_t i = threadIdx.x; i < n2; i += kThreads)
            keys[i] = i < k ? list[r * k + i] : ~0ull;
        __syncthreads();
        /* bitonic sort, ascending */
        for (uint32_t size = 2; size <= n2; size <<= 1)
            for (uint32_t stride = size / 2; stride > 0; stride >>= 1) {
                for (uint32_t i = threadIdx.x; i < n2; i += kThreads) {
                    uint32_t j = i ^ stride;
                    if (j > i) {
                        bool up = (i & size) == 0;
                        u64 a = keys[i], b = keys[j];
                        if ((a > b) == up) {
                            keys[i] = b;
                            keys[j] = a;
                        }
                    }
                }
                __syncthreads();
            }
        double zmax = (double)__fdiv_rn(row[best], pr.temperature);
        tok = choose(SortedOrder{keys, id_bits}, k, zmax, pr.top_p, u[r], ts);
    }
    if (threadIdx.x == 0)
        tokens[r] = tok;
}

/* --- host side --- */

unsigned bits_for(uint64_t max_value)
{
    unsigned b = 0;
    while (b < 64 && (max_value >> b) != 0)
        b++;
    return b;
}

std::atomic<uint64_t> g_pool_tuned{0}; /* bit d: device d's pool threshold set */

void tune_pool()
{
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        (void)cudaGetLastError();
        return;
    }
    uint64_t bit = 1ull << dev;
    if (g_pool_tuned.fetch_or(bit) & bit)
        return;
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
        uint64_t keep = 256ull << 20;
        (void)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    }
    (void)cudaGetLastError();
}

enum Path { kGreedyOrPlain, kSelect, kSort };

struct Call {
    const float *logits;
    uint32_t vocab;
    Params pr;
    const float *u;
    uint32_t *tokens;
    cudaStream_t st;
    Path path;
    uint32_t n_chunks, id_bits;
    int end_bit;        /* sort path: key bits with the batch's row bits */
    bool plain; /* unfiltered sampling (else greedy only) */
};

size_t align_up(size_t x) { return (x + 255) & ~(size_t)255; }

/* Rows [r0, r0 + nb): the kernels of the call's path on scratch `mem`. */
kvt_status_t run_rows(const Call &c, size_t r0, size_t nb, char *mem, size_t sort_temp)
{
    const float *lg = c.logits + r0 * c.vocab;
    const float *u = c.u ? c.u + r0 : nullptr;
    uint32_t *tok = c.tokens + r0;
    ArgMax *parts = (ArgMax *)mem;
    char *next = mem + align_up(nb * c.n_chunks * sizeof(ArgMax));
    dim3 grid(c.n_chunks, (unsigned)nb);
    argmax_parts<<<grid, kThreads, 0, c.st>>>(lg, c.vocab, c.n_chunks, parts);
    double *mass = nullptr;
    if (c.plain || c.path == kSort) {
        mass = (double *)next;
        next += align_up(nb * c.n_chunks * sizeof(double));
    }
    if (c.path == kGreedyOrPlain) {
        if (c.plain)
            chunk_mass<<<grid, kThreads, 0, c.st>>>(lg, c.vocab, c.pr, parts, c.n_chunks, nullptr,
                                                    0, c.vocab, mass);
        pick_chunked<<<(unsigned)nb, kThreads, 0, c.st>>>(lg, c.vocab, c.pr, parts, c.n_chunks,
                                                          nullptr, 0, c.vocab, mass, u, tok);
    } else if (c.path == kSelect) {
        uint32_t k = c.pr.top_k;
        SelState *st = (SelState *)next;
        uint32_t *hist = (uint32_t *)(next + align_up(nb * sizeof(SelState)));
        u64 *list = (u64 *)((char *)hist + align_up(nb * kSelBins * sizeof(uint32_t)));
        cudaError_t err = cudaMemsetAsync(hist, 0, nb * kSelBins * sizeof(uint32_t), c.st);
        if (err != cudaSuccess)
            return kvt_gpu_status((int)err, "kvt_k_sample memset");
        sel_init<<<(unsigned)((nb + 255) / 256), 256, 0, c.st>>>(st, nb, k);
        int key_bits = 32 + (int)c.id_bits;
        int passes = (key_bits + kSelBits - 1) / kSelBits;
        for (int p = 0; p < passes; p++) {
            int shift = (passes - 1 - p) * kSelBits;
            sel_hist<<<grid, kThreads, 0, c.st>>>(lg, c.vocab, c.pr.temperature, c.id_bits, st,
                                                  shift, hist);
            sel_digit<<<(unsigned)nb, kThreads, 0, c.st>>>(st, shift, hist);
        }
        sel_gather<<<grid, kThreads, 0, c.st>>>(lg, c.vocab, c.pr.temperature, c.id_bits, st, k,
                                                list);
        pick_selected<<<(unsigned)nb, kThreads, 0, c.st>>>(lg, c.vocab, c.pr, parts, c.n_chunks,
                                                           list, c.id_bits, u, tok);
    } else {
        size_t n_keys = nb * c.vocab;
        u64 *k0 = (u64 *)next, *k1 = k0 + n_keys;
        char *temp = (char *)(k1 + n_keys);
        unsigned blocks = (unsigned)((n_keys + 255) / 256 < 8192 ? (n_keys + 255) / 256 : 8192);
        make_keys<<<blocks, 256, 0, c.st>>>(lg, c.vocab, c.pr.temperature, c.id_bits, n_keys,
                                            k0);
        cub::DoubleBuffer<u64> keys(k0, k1);
        size_t tb = sort_temp;
        cudaError_t err =
            cub::DeviceRadixSort::SortKeys(temp, tb, keys, n_keys, 0, c.end_bit, c.st);
        if (err != cudaSuccess)
            return kvt_gpu_status((int)err, "kvt_k_sample sort");
        /* the first n of the sorted candidates: top_k's cut */
        uint32_t n = c.pr.top_k > 0 && c.pr.top_k < c.vocab ? c.pr.top_k : c.vocab;
        dim3 mgrid((n + kTile - 1) / kTile, (unsigned)nb);
        chunk_mass<<<mgrid, kThreads, 0, c.st>>>(lg, c.vocab, c.pr, parts, c.n_chunks,
                                                 keys.Current(), c.id_bits, n, mass);
        pick_chunked<<<(unsigned)nb, kThreads, 0, c.st>>>(lg, c.vocab, c.pr, parts, c.n_chunks,
                                                          keys.Current(), c.id_bits, n, mass, u,
                                                          tok);
    }
    return kvt_gpu_launch_status("kvt_k_sample");
}

} // namespace

extern "C" kvt_status_t kvt_k_sample(const float *logits, size_t rows, uint32_t vocab,
                                     float temperature, uint32_t top_k, float top_p,
                                     const float *u, uint32_t *tokens, kvt_gpu_stream_t s)
{
    if (rows == 0)
        return KVT_OK;
    if (!logits || !tokens || vocab == 0 || !(temperature >= 0.0f) || isinf(temperature) ||
        !(top_p > 0.0f && top_p <= 1.0f) || (temperature > 0.0f && top_k != 1 && !u))
        return KVT_ERR_INVALID;
    Call c = {};
    c.logits = logits;
    c.vocab = vocab;
    c.pr = Params{temperature, top_k, top_p};
    c.u = u;
    c.tokens = tokens;
    c.st = (cudaStream_t)s;
    c.n_chunks = (vocab + kTile - 1) / kTile;
    c.id_bits = bits_for(vocab - 1) ? bits_for(vocab - 1) : 1;
    bool sampling = temperature > 0.0f && top_k != 1;
    bool filtered = sampling && (top_k > 0 || top_p < 1.0f);
    c.plain = sampling && !filtered;
    c.path = !filtered ? kGreedyOrPlain : top_k >= 2 && top_k <= kSelectMax && top_k < vocab
                                              ? kSelect
                                              : kSort;
    if (c.id_bits > 31)
        return KVT_ERR_INVALID;

    /* Rows per batch and the scratch each batch needs. */
    size_t batch = rows < kMaxGridY ? rows : kMaxGridY;
    if (c.path == kSort) {
        size_t by_keys = kSortKeys / vocab ? kSortKeys / vocab : 1;
        batch = batch < by_keys ? batch : by_keys;
    }
    size_t bytes = align_up(batch * c.n_chunks * sizeof(ArgMax));
    size_t sort_temp = 0;
    if (c.plain || c.path == kSort)
        bytes += align_up(batch * c.n_chunks * sizeof(double));
    if (c.path == kSelect)
        bytes += align_up(batch * sizeof(SelState)) +
                 align_up(batch * kSelBins * sizeof(uint32_t)) +
                 align_up(batch * (size_t)top_k * sizeof(u64));
    else if (c.path == kSort) {
        c.end_bit = (int)(32 + c.id_bits + bits_for(batch - 1));
        if (c.end_bit > 64)
            return KVT_ERR_INVALID;
        cub::DoubleBuffer<u64> db(nullptr, nullptr);
        cudaError_t err = cub::DeviceRadixSort::SortKeys(nullptr, sort_temp, db, batch * vocab, 0,
                                                         c.end_bit, c.st);
        if (err != cudaSuccess)
            return kvt_gpu_status((int)err, "kvt_k_sample sort size");
        bytes += 2 * batch * vocab * sizeof(u64) + sort_temp;
    }
    tune_pool();
    void *mem = nullptr;
    cudaError_t err = cudaMallocAsync(&mem, bytes, c.st);
    if (err != cudaSuccess)
        return kvt_gpu_status((int)err, "kvt_k_sample scratch");
    kvt_status_t status = KVT_OK;
    for (size_t r0 = 0; r0 < rows && status == KVT_OK; r0 += batch) {
        size_t nb = rows - r0 < batch ? rows - r0 : batch;
        status = run_rows(c, r0, nb, (char *)mem, sort_temp);
    }
    kvt_status_t fst = kvt_gpu_status((int)cudaFreeAsync(mem, c.st), "kvt_k_sample scratch free");
    return status != KVT_OK ? status : fst;
}
