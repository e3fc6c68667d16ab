/* Sampling on the GPU (kvt_k_sample): engine/sample.c's rule, row by row,
 * with the uniform draw u[r] given.
 *
 *   - argmax with the lowest id on ties, NaN never winning (all -inf/NaN:
 *     id 0); it is the answer for temperature 0, top_k 1, or a non-finite
 *     maximum;
 *   - z_i = logit_i / temperature (NaN -> -inf), p_i = exp(z_i - z_max) in
 *     double;
 *   - unfiltered (top_k 0, top_p 1): candidates in id order;
 *   - filtered: candidates sorted by (z descending, id ascending), the
 *     first top_k kept, then the shortest prefix whose mass reaches
 *     top_p * total;
 *   - the first candidate whose running mass exceeds u * kept mass (else
 *     the last one with mass, else the first).
 *
 * Running sums: one block per row walks its candidates in order in tiles
 * of kTile; a thread sums kItems consecutive candidates, a block scan adds
 * the thread totals, and a carry crosses tiles.  Every pass (total, top-p
 * cut, draw) recomputes the same sums in the same order, so they agree
 * with each other bitwise and run to run.  They are not the CPU's strictly
 * sequential sums: a draw that lands within a few ulps of a boundary
 * between two candidates may pick the neighbour (double precision: about
 * 1e-13 of the mass), as may the last-ulp difference between CUDA's and
 * libm's exp.
 *
 * Filtered rows are sorted with cub::DeviceRadixSort on 64-bit keys
 * (row | ~ordered(z) | id), in batches of rows of at most kSortKeys keys.
 * Scratch: two key buffers and CUB's temporary storage, taken with
 * cudaMallocAsync on the caller's stream and freed with cudaFreeAsync
 * behind the kernels (about 16 bytes x rows x vocab, capped at 64 MiB plus
 * CUB's few MiB).  So the memory comes from the device's default
 * stream-ordered pool; kvt_k_sample raises that pool's release threshold
 * to 256 MiB once per device so repeated calls reuse it instead of
 * mapping fresh memory each time.  Unfiltered and greedy rows need no
 * scratch. */
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

constexpr int kThreads = 512;
constexpr int kItems = 8;
constexpr int kTile = kThreads * kItems;
constexpr uint32_t kNone = 0xffffffffu;
constexpr size_t kSortKeys = (size_t)1 << 22; /* keys per sort batch (32 MiB a buffer) */

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

using ArgReduce = cub::BlockReduce<ArgMax, kThreads>;

__device__ uint32_t row_argmax(const float *row, uint32_t vocab, ArgReduce::TempStorage &ts)
{
    ArgMax m = {-INFINITY, kNone};
    if (vocab % 4 == 0 && ((uintptr_t)row & 15) == 0) {
        const float4 *r4 = reinterpret_cast<const float4 *>(row);
        for (uint32_t j = threadIdx.x; j < vocab / 4; j += kThreads) {
            float4 v = r4[j];
            argmax_take(m, v.x, 4 * j);
            argmax_take(m, v.y, 4 * j + 1);
            argmax_take(m, v.z, 4 * j + 2);
            argmax_take(m, v.w, 4 * j + 3);
        }
    } else {
        for (uint32_t j = threadIdx.x; j < vocab; j += kThreads)
            argmax_take(m, row[j], j);
    }
    __shared__ uint32_t best;
    ArgMax b = ArgReduce(ts).Reduce(m, ArgMaxOp());
    if (threadIdx.x == 0)
        best = b.i == kNone ? 0 : b.i;
    __syncthreads();
    return best;
}

/* --- ordered keys for the filtered sort --- */

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

__global__ void make_keys(const float *__restrict__ logits, uint32_t vocab, float temperature,
                          uint32_t id_bits, size_t n, unsigned long long *__restrict__ keys)
{
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / vocab;
        uint32_t id = (uint32_t)(k % vocab);
        uint32_t desc = ~ord(z_of(logits[k], temperature));
        keys[k] = ((unsigned long long)r << (32 + id_bits)) |
                  ((unsigned long long)desc << id_bits) | id;
    }
}

/* --- running sums over one row's candidates, in order --- */

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

/* Candidates in sorted order from the row's sorted keys. */
struct SortedOrder {
    const unsigned long long *keys;
    uint32_t id_bits;
    __device__ __forceinline__ void get(uint32_t i, float &z, uint32_t &id) const
    {
        unsigned long long k = keys[i];
        id = (uint32_t)(k & ((1ull << id_bits) - 1));
        z = unord(~(uint32_t)(k >> id_bits));
    }
};

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

using Scan = cub::BlockScan<double, kThreads>;
using IdxReduce = cub::BlockReduce<uint32_t, kThreads>;

union SampleStorage {
    ArgReduce::TempStorage arg;
    Scan::TempStorage scan;
    IdxReduce::TempStorage idx;
};

enum Mode { kTotal, kFirstGe, kFirstGt, kLastPositive };

/* One walk over candidates [0, n): mode kTotal returns n - 1 and the
 * running sum there; kFirstGe / kFirstGt the first i < limit whose running
 * sum is >= / > target (kNone if none) and that sum; kLastPositive the last
 * i < limit with p_i > 0 (kNone if none).  A prefix value depends only on
 * the candidates before it, so every mode sees the same sums. */
template <class Src>
__device__ uint32_t walk(const Src &src, uint32_t n, double zmax, Mode mode, double target,
                         uint32_t limit, double *sum_p, SampleStorage &ts)
{
    __shared__ uint32_t s_idx;
    __shared__ double s_sum;
    if (threadIdx.x == 0) {
        s_idx = kNone;
        s_sum = 0.0;
    }
    double carry = 0.0;
    for (uint32_t t0 = 0; t0 < n; t0 += kTile) {
        uint32_t first = t0 + threadIdx.x * kItems;
        double p[kItems], local[kItems], acc = 0.0;
#pragma unroll
        for (int j = 0; j < kItems; j++) {
            uint32_t i = first + j;
            p[j] = 0.0;
            if (i < n) {
                float z;
                uint32_t id;
                src.get(i, z, id);
                p[j] = exp((double)z - zmax);
            }
            acc = acc + p[j];
            local[j] = acc;
        }
        double excl, agg;
        __syncthreads(); /* the storage union was used by the last reduction */
        Scan(ts.scan).ExclusiveSum(acc, excl, agg);
        double base = carry + excl, my_sum = 0.0;
        uint32_t mine = kNone;
#pragma unroll
        for (int j = 0; j < kItems; j++) {
            uint32_t i = first + j;
            double sum = base + local[j];
            bool hit;
            if (mode == kTotal)
                hit = i == n - 1;
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

/* Top-p cut, then the draw, over candidates [0, n) in order. */
template <class Src>
__device__ uint32_t choose(const Src &src, uint32_t n, double zmax, float top_p, float u,
                           SampleStorage &ts)
{
    __shared__ uint32_t s_pick;
    double total = 0.0;
    walk(src, n, zmax, kTotal, 0.0, n, &total, ts);
    uint32_t keep = n;
    if (top_p < 1.0f) {
        double want = (double)top_p * total, at = 0.0;
        uint32_t i = walk(src, n, zmax, kFirstGe, want, n, &at, ts);
        /* sample.c keeps at least one, and stops once the kept mass >= want. */
        if (i != kNone) {
            keep = i + 1;
            total = at;
        }
    }
    double us = (double)u * total;
    uint32_t i = walk(src, n, zmax, kFirstGt, us, keep, nullptr, ts);
    if (i == kNone)
        i = walk(src, n, zmax, kLastPositive, 0.0, keep, nullptr, ts);
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

/* Greedy / early exits and unfiltered rows; filtered rows (when `keys`)
 * take their candidates from the sorted keys of this batch. */
__global__ void __launch_bounds__(kThreads)
    sample_rows(const float *__restrict__ logits, uint32_t vocab, Params pr,
                const float *__restrict__ u, const unsigned long long *__restrict__ keys,
                uint32_t id_bits, uint32_t *__restrict__ tokens)
{
    __shared__ SampleStorage ts;
    size_t r = blockIdx.x;
    const float *row = logits + r * (size_t)vocab;
    uint32_t best = row_argmax(row, vocab, ts.arg);
    float lb = row[best];
    uint32_t tok;
    if (pr.temperature == 0.0f || pr.top_k == 1 || !isfinite(lb)) {
        tok = best;
    } else {
        double zmax = (double)__fdiv_rn(lb, pr.temperature);
        float ur = u[r];
        if (keys) {
            uint32_t n = pr.top_k > 0 && pr.top_k < vocab ? pr.top_k : vocab;
            SortedOrder src = {keys + r * (size_t)vocab, id_bits};
            tok = choose(src, n, zmax, pr.top_p, ur, ts);
        } else {
            IdOrder src = {row, pr.temperature};
            tok = choose(src, vocab, zmax, 1.0f, ur, ts);
        }
    }
    if (threadIdx.x == 0)
        tokens[r] = tok;
}

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

kvt_status_t sample_filtered(const float *logits, size_t rows, uint32_t vocab, Params pr,
                             const float *u, uint32_t *tokens, cudaStream_t st)
{
    unsigned id_bits = bits_for(vocab - 1);
    if (id_bits == 0)
        id_bits = 1;
    size_t batch = kSortKeys / vocab;
    if (batch == 0)
        batch = 1;
    if (batch > rows)
        batch = rows;
    unsigned row_bits = bits_for(batch - 1);
    int end_bit = (int)(32 + id_bits + row_bits);
    if (end_bit > 64)
        return KVT_ERR_INVALID;
    size_t n_keys = batch * vocab;

    tune_pool();
    size_t temp_bytes = 0;
    cub::DoubleBuffer<unsigned long long> db(nullptr, nullptr);
    cudaError_t err = cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, db, n_keys, 0, end_bit, st);
    if (err != cudaSuccess)
        return kvt_gpu_status((int)err, "kvt_k_sample sort size");
    void *mem = nullptr;
    size_t key_bytes = n_keys * sizeof(unsigned long long);
    size_t temp_off = 2 * key_bytes;
    err = cudaMallocAsync(&mem, temp_off + temp_bytes, st);
    if (err != cudaSuccess)
        return kvt_gpu_status((int)err, "kvt_k_sample scratch");
    unsigned long long *k0 = (unsigned long long *)mem, *k1 = k0 + n_keys;
    kvt_status_t status = KVT_OK;
    for (size_t r0 = 0; r0 < rows && status == KVT_OK; r0 += batch) {
        size_t nb = rows - r0 < batch ? rows - r0 : batch;
        size_t nk = nb * vocab;
        unsigned blocks = (unsigned)((nk + 255) / 256 < 8192 ? (nk + 255) / 256 : 8192);
        make_keys<<<blocks, 256, 0, st>>>(logits + r0 * vocab, vocab, pr.temperature, id_bits,
                                          nk, k0);
        cub::DoubleBuffer<unsigned long long> keys(k0, k1);
        size_t tb = temp_bytes;
        err = cub::DeviceRadixSort::SortKeys((char *)mem + temp_off, tb, keys, nk, 0, end_bit, st);
        if (err != cudaSuccess) {
            status = kvt_gpu_status((int)err, "kvt_k_sample sort");
            break;
        }
        sample_rows<<<(unsigned)nb, kThreads, 0, st>>>(logits + r0 * vocab, vocab, pr, u + r0,
                                                       keys.Current(), id_bits, tokens + r0);
        status = kvt_gpu_launch_status("kvt_k_sample");
    }
    kvt_status_t fst = kvt_gpu_status((int)cudaFreeAsync(mem, st), "kvt_k_sample scratch free");
    return status != KVT_OK ? status : fst;
}

} // namespace

extern "C" kvt_status_t kvt_k_sample(const float *logits, size_t rows, uint32_t vocab,
                                     float temperature, uint32_t top_k, float top_p,
                                     const float *u, uint32_t *tokens, kvt_gpu_stream_t s)
{
    if (rows == 0)
        return KVT_OK;
    if (!logits || !tokens || vocab == 0 || rows > 0x7fffffffu || !(temperature >= 0.0f) ||
        isinf(temperature) || !(top_p > 0.0f && top_p <= 1.0f) ||
        (temperature > 0.0f && top_k != 1 && !u))
        return KVT_ERR_INVALID;
    cudaStream_t st = (cudaStream_t)s;
    Params pr = {temperature, top_k, top_p};
    bool filtered = temperature > 0.0f && top_k != 1 && (top_k > 0 || top_p < 1.0f);
    if (filtered)
        return sample_filtered(logits, rows, vocab, pr, u, tokens, st);
    sample_rows<<<(unsigned)rows, kThreads, 0, st>>>(logits, vocab, pr, u, nullptr, 0, tokens);
    return kvt_gpu_launch_status("kvt_k_sample");
}
