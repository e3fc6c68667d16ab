/* XXH3-64 (seed 0, default secret) on the GPU, bit-for-bit equal to
 * libxxhash's XXH3_64bits(): the checksum of every KV block image, computed
 * where the image lies in device memory (kernels/kernels.h, kvt_k_xxh3_64).
 *
 * The algorithm (xxHash's doc/xxhash_spec.md) has four short paths, chosen
 * by length alone (0-16, 17-128, 129-240 bytes: a handful of 16-byte
 * multiplications each) and one long path.  The long path keeps 8 u64
 * accumulator lanes, starts them at fixed primes, and walks the input in
 * 1024-byte blocks of 16 stripes of 64 bytes:
 *
 *   for each full block b (b < nb = (len - 1) / 1024):
 *       acc = scramble(acc + S_b)
 *   acc += T            (the stripes of the last, partial block, plus the
 *                        stripe at len - 64 with secret offset 121)
 *   hash = merge(acc, len)
 *
 * where S_b[j] is the sum over the 16 stripes of the block of each stripe's
 * contribution to lane j: the data word j^1 plus the 32x32 product of the
 * halves of (data word j ^ secret word stripe + j).  The reference adds the
 * contributions to acc one stripe at a time; since they are plain u64
 * additions (mod 2^64, associative and commutative), summing a block's 16
 * contributions first and adding the sum once gives the same acc.  Only the
 * scramble between blocks ((x ^ x >> 47 ^ key) * PRIME32_1) is order
 * dependent, and it is a chain of nb dependent steps per image that no
 * number of threads can shorten: ~22 ns a step on an H100, so one 2 MiB
 * image alone takes ~45 us (~45 GB/s) however it is split.
 *
 * Design: one CTA per image, warp-specialised, no scratch memory, no
 * global flags, one launch.  Producer warps stream the image (coalesced
 * 8-byte loads, 16 per lane in flight) and reduce each block to its S_b
 * (8 u64, three shuffles); one chain warp consumes the S_b in order, runs
 * the scramble chain, adds T (which a producer computes like a block) and
 * merges.  They meet in a shared-memory ring of 4 rounds, handed over with
 * named barriers (bar.arrive by producers, bar.sync by the consumer: the
 * PTX producer/consumer pattern, whose arrive orders the stores before
 * it), so an image's chain runs while its later blocks and the other
 * images load.  Measured on an H100 (tests/gpu/test_xxh3.c prints it):
 * 64 x 2 MiB ~2.2 TB/s, where a device-to-device copy of the same bytes
 * moves ~2.8 TB/s (read+write); 132 x 2 MiB ~2.7 TB/s; 1024 x 64 KiB ~1.8
 * TB/s.  With fewer images than SMs, one SM's load rate (~35-45 GB/s
 * with this much in flight) and the chain bound each image.  Inputs up to
 * 240 bytes take one thread per image (the short paths).
 *
 * Alignment: bufs[i] should be 8-byte aligned (the long path's loads are
 * 8 bytes wide); an image that is not is still hashed correctly, by byte
 * loads, slowly.  Reads never touch a byte outside [bufs[i], bufs[i]+len).
 *
 * The helpers are __host__ __device__ so the decomposition can be replayed
 * on a CPU against libxxhash. */
extern "C" {
#include "kernels/kernels.h"
}
#include "kernels/kernelsInt.h"

#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

namespace {

typedef unsigned long long u64; /* the type __shfl_*_sync takes */

constexpr uint32_t kP32_1 = 0x9E3779B1u;
constexpr uint32_t kP32_2 = 0x85EBCA77u;
constexpr uint32_t kP32_3 = 0xC2B2AE3Du;
constexpr u64 kP64_1 = 0x9E3779B185EBCA87ull;
constexpr u64 kP64_2 = 0xC2B2AE3D27D4EB4Full;
constexpr u64 kP64_3 = 0x165667B19E3779F9ull;
constexpr u64 kP64_4 = 0x85EBCA77C2B2AE63ull;
constexpr u64 kP64_5 = 0x27D4EB2F165667C5ull;

/* The spec's default 192-byte secret (kSecret), as bytes: its words are
 * read at unaligned offsets (121, 11, ...), so bytes are the one source. */
#define KVT_XXH3_SECRET                                                                          \
    {0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad,     \
     0x1c, 0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3,     \
     0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc,     \
     0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6,     \
     0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65,     \
     0x8b, 0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19,     \
     0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9,     \
     0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31,     \
     0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb,     \
     0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0,     \
     0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16, 0xbe, 0x58, 0x7d,     \
     0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f,     \
     0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e}
constexpr int kSecretSize = 192;
__constant__ __align__(16) uint8_t c_secret[kSecretSize] = KVT_XXH3_SECRET;

/* Long-path layout, fixed by the default secret's size. */
constexpr size_t kStripe = 64;
constexpr size_t kBlock = 1024;          /* 16 stripes: (192 - 64) / 8 */
constexpr int kScrambleKey = 192 - 64;   /* scramble's secret offset */
constexpr int kLastStripeKey = 192 - 64 - 7;
constexpr int kMergeKey = 11;
constexpr size_t kMidMax = 240;          /* longest input of the short paths */
constexpr size_t kSmallImage = 512 << 10; /* below: the small CTA shape (see Shape) */

/* --- little-endian reads (host and device are both little-endian) --- */

/* Reads at any alignment without touching a byte outside [p, p + 8): an
 * aligned word is one load, anything else is assembled from bytes (only
 * the short paths, the last stripe and misaligned images come here). */
__host__ __device__ inline u64 rd64(const uint8_t *p)
{
#ifdef __CUDA_ARCH__
    if (((uintptr_t)p & 7) == 0)
        return *reinterpret_cast<const u64 *>(p);
    u64 v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
#else
    u64 v;
    memcpy(&v, p, 8);
    return v;
#endif
}

__host__ __device__ inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

__host__ __device__ inline const uint8_t *secret()
{
#ifdef __CUDA_ARCH__
    return c_secret;
#else
    alignas(16) static const uint8_t h_secret[kSecretSize] = KVT_XXH3_SECRET; /* for CPU replays */
    return h_secret;
#endif
}

__host__ __device__ inline u64 key64(int off) { return rd64(secret() + off); }

/* --- mixers of the spec --- */

/* Low ^ high half of the 128-bit product. */
__host__ __device__ inline u64 mul128_fold64(u64 a, u64 b)
{
#ifdef __CUDA_ARCH__
    return (a * b) ^ __umul64hi(a, b);
#else
    unsigned __int128 p = (unsigned __int128)a * b;
    return (u64)p ^ (u64)(p >> 64);
#endif
}

__host__ __device__ inline u64 avalanche_xxh64(u64 h)
{
    h ^= h >> 33;
    h *= kP64_2;
    h ^= h >> 29;
    h *= kP64_3;
    return h ^ (h >> 32);
}

__host__ __device__ inline u64 avalanche_xxh3(u64 h)
{
    h ^= h >> 37;
    h *= 0x165667919E3779F9ull;
    return h ^ (h >> 32);
}

__host__ __device__ inline u64 bswap64(u64 x)
{
#ifdef __CUDA_ARCH__
    uint32_t lo = __byte_perm((uint32_t)x, 0, 0x0123);
    uint32_t hi = __byte_perm((uint32_t)(x >> 32), 0, 0x0123);
    return (u64)lo << 32 | hi;
#else
    return __builtin_bswap64(x);
#endif
}

__host__ __device__ inline u64 rotl64(u64 x, int r) { return (x << r) | (x >> (64 - r)); }

/* rrmxmx: the stronger finaliser of the 4-8 byte path. */
__host__ __device__ inline u64 rrmxmx(u64 h, u64 len)
{
    h ^= rotl64(h, 49) ^ rotl64(h, 24);
    h *= 0x9FB21C651E98DF25ull;
    h ^= (h >> 35) + len;
    h *= 0x9FB21C651E98DF25ull;
    return h ^ (h >> 28);
}

/* 16 input bytes against 16 secret bytes (seed 0). */
__host__ __device__ inline u64 mix16(const uint8_t *in, int key_off)
{
    return mul128_fold64(rd64(in) ^ key64(key_off), rd64(in + 8) ^ key64(key_off + 8));
}

/* --- short paths: len <= 240 --- */

__host__ __device__ inline u64 hash_0to16(const uint8_t *in, size_t len)
{
    if (len > 8) {
        u64 lo = rd64(in) ^ (key64(24) ^ key64(32));
        u64 hi = rd64(in + len - 8) ^ (key64(40) ^ key64(48));
        u64 acc = len + bswap64(lo) + hi + mul128_fold64(lo, hi);
        return avalanche_xxh3(acc);
    }
    if (len >= 4) {
        /* first and last 4 bytes (overlapping when len < 8), first on top */
        u64 v = (u64)rd32(in + len - 4) + ((u64)rd32(in) << 32);
        return rrmxmx(v ^ (key64(8) ^ key64(16)), len);
    }
    if (len > 0) {
        /* first, middle, last byte and the length, packed in 32 bits */
        uint32_t c = (uint32_t)in[0] << 16 | (uint32_t)in[len >> 1] << 24 |
                     (uint32_t)in[len - 1] | (uint32_t)len << 8;
        return avalanche_xxh64((u64)c ^ (u64)(rd32(secret()) ^ rd32(secret() + 4)));
    }
    return avalanche_xxh64(key64(56) ^ key64(64));
}

/* 17-128: pairs of 16-byte chunks taken from both ends, moving inwards. */
__host__ __device__ inline u64 hash_17to128(const uint8_t *in, size_t len)
{
    u64 acc = len * kP64_1;
    int pairs = (int)((len - 1) / 32); /* 0..3 extra pairs */
    for (int i = pairs; i >= 0; i--) {
        acc += mix16(in + 16 * i, 32 * i);
        acc += mix16(in + len - 16 * (i + 1), 32 * i + 16);
    }
    return avalanche_xxh3(acc);
}

/* 129-240: the first 8 chunks, avalanched, then the rest with the secret
 * shifted by 3 and the last 16 bytes at secret offset 136 - 17. */
__host__ __device__ inline u64 hash_129to240(const uint8_t *in, size_t len)
{
    u64 acc = len * kP64_1;
    for (int i = 0; i < 8; i++)
        acc += mix16(in + 16 * i, 16 * i);
    acc = avalanche_xxh3(acc);
    int rounds = (int)(len / 16);
    for (int i = 8; i < rounds; i++)
        acc += mix16(in + 16 * i, 16 * (i - 8) + 3);
    acc += mix16(in + len - 16, 136 - 17);
    return avalanche_xxh3(acc);
}

__host__ __device__ inline u64 hash_short(const uint8_t *in, size_t len)
{
    if (len <= 16)
        return hash_0to16(in, len);
    if (len <= 128)
        return hash_17to128(in, len);
    return hash_129to240(in, len);
}

/* --- long path pieces --- */

__host__ __device__ inline u64 acc_init(int j)
{
    switch (j) {
    case 0: return kP32_3;
    case 1: return kP64_1;
    case 2: return kP64_2;
    case 3: return kP64_3;
    case 4: return kP64_4;
    case 5: return kP32_2;
    case 6: return kP64_5;
    default: return kP32_1;
    }
}

/* A data word's product term for its own lane: lo32 * hi32 of word ^ key. */
__host__ __device__ inline u64 word_product(u64 w, u64 key)
{
    u64 dk = w ^ key;
    return (u64)(uint32_t)dk * (dk >> 32);
}

/* One step of the chain.  Written as (acc + s) then * PRIME32_1 so the
 * compiler folds the next step's + s into the multiply (IMAD.WIDE with an
 * addend): the chain's latency is the whole cost of a long hash. */
__host__ __device__ inline u64 scramble_step(u64 acc, u64 s, u64 key)
{
    u64 x = acc + s;
    x ^= x >> 47;
    x ^= key;
    return x * kP32_1;
}

/* merge: four 128-bit folds of lane pairs against the secret at 11. */
__host__ __device__ inline u64 merge_lanes(const u64 acc[8], size_t len)
{
    u64 r = (u64)len * kP64_1;
    for (int i = 0; i < 4; i++)
        r += mul128_fold64(acc[2 * i] ^ key64(kMergeKey + 16 * i),
                           acc[2 * i + 1] ^ key64(kMergeKey + 16 * i + 8));
    return avalanche_xxh3(r);
}

/* --- the long kernel --- */

/* A CTA of W warps (W a multiple of 4).  An SM issues warp w on scheduler
 * w % 4, so the chain warp (3) gets scheduler 3 to itself: the other warps
 * w % 4 == 3 leave at once and the 3W/4 producers share schedulers 0-2.
 * (Sharing a scheduler with producers slows the chain by a quarter; the
 * mapping is the hardware's habit, not a promise: only speed depends on
 * it.)  Large images take W = 24, so one CTA keeps ~72 KiB of loads in
 * flight; small ones W = 8, so several CTAs share an SM and one image's
 * chain overlaps with the next image's loads. */
constexpr int kChainWarp = 3;
constexpr int kUnitsPerWarp = 4; /* blocks a producer warp loads per round */
constexpr int kSlots = 4;        /* ring slots (rounds) */
constexpr int kBarFull = 1;      /* named barriers 1..4: slot s filled */
constexpr int kBarEmpty = 5;     /* 5..8: slot s drained (0 is __syncthreads) */
constexpr int kBatch = 12;       /* S values the chain reads ahead */

template <int W> struct Shape {
    static constexpr int kProducers = W - W / 4;
    static constexpr int kBarThreads = (kProducers + 1) * 32; /* at each named barrier */
    static constexpr int kRound = kProducers * kUnitsPerWarp; /* blocks per ring slot */
    static_assert(W % 4 == 0 && kRound % kBatch == 0, "round of whole batches");
    typedef u64 ring_t[kSlots][kRound][8];
};

/* Named barriers are warp-aligned: __syncwarp first makes sure the whole
 * warp arrives together after the lane-divergent code before them. */
template <int W> __device__ __forceinline__ void bar_sync(int id)
{
    __syncwarp();
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(Shape<W>::kBarThreads) : "memory");
}

template <int W> __device__ __forceinline__ void bar_arrive(int id)
{
    __syncwarp();
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(Shape<W>::kBarThreads) : "memory");
}

template <bool kAligned> __device__ __forceinline__ u64 ld_word(const uint8_t *p)
{
    if (kAligned)
        return __ldg(reinterpret_cast<const u64 *>(p));
    return rd64(p);
}

/* Producer lane layout: lane 8 g + j owns word j (= accumulator lane j) of
 * stripes g, g+4, g+8, g+12 of a block, so each warp load covers 256
 * contiguous bytes and a lane's 4 secret words stay in registers.  Its
 * share of S[j]: its products plus the words of lane j^1 (one shuffle),
 * summed over g (xor 8, 16); lanes 0..7 end with S. */
__device__ __forceinline__ u64 lane_sum(u64 prod, u64 data)
{
    u64 v = prod + __shfl_xor_sync(0xffffffffu, data, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 8);
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    return v;
}

/* This lane's share of a full block's S. */
__device__ __forceinline__ u64 block_sum(const u64 w[4], const u64 key[4])
{
    u64 prod = 0, data = 0;
#pragma unroll
    for (int m = 0; m < 4; m++) {
        prod += word_product(w[m], key[m]);
        data += w[m];
    }
    return lane_sum(prod, data);
}

/* This lane's share of T: the partial block's stripes st < partial
 * (normal keys) and, in group 0, the stripe at len - 64 (key offset 121,
 * any alignment).  Loaded here, not with the blocks: one warp pays one
 * more memory latency per image, and the block loads stay simple (folding
 * these into them costs a quarter of the speed). */
template <bool kAligned>
__device__ __forceinline__ u64 tail_sum(const uint8_t *p, size_t len, size_t nb, int partial,
                                        const u64 key[4])
{
    const int g = (threadIdx.x >> 3) & 3, j = threadIdx.x & 7;
    u64 w[4], last = 0;
#pragma unroll
    for (int m = 0; m < 4; m++) {
        int st = g + 4 * m;
        w[m] = st < partial ? ld_word<kAligned>(p + nb * kBlock + st * kStripe + j * 8) : 0;
    }
    if (g == 0)
        last = rd64(p + len - kStripe + j * 8);
    u64 prod = 0, data = last;
#pragma unroll
    for (int m = 0; m < 4; m++) {
        if (g + 4 * m < partial) /* a zero word would still add a product */
            prod += word_product(w[m], key[m]);
        data += w[m];
    }
    if (g == 0)
        prod += word_product(last, key64(kLastStripeKey + 8 * j));
    return lane_sum(prod, data);
}

/* Units 0..nb-1 are the full blocks, unit nb is T; round r fills ring slot
 * r % kSlots with units [r R, (r + 1) R), R = Shape<W>::kRound. */
template <int W, bool kAligned>
__device__ void produce(int pw, const uint8_t *p, size_t len, size_t nb, uint32_t rounds,
                        typename Shape<W>::ring_t &ring)
{
    constexpr int R = Shape<W>::kRound;
    const int g = (threadIdx.x >> 3) & 3, j = threadIdx.x & 7;
    const int partial = (int)(((len - 1) - nb * kBlock) / kStripe); /* T's stripes, 0..15 */
    u64 key[4];
#pragma unroll
    for (int m = 0; m < 4; m++)
        key[m] = key64(8 * (g + 4 * m + j));
    for (uint32_t r = 0; r < rounds; r++) {
        const int slot = (int)(r % kSlots);
        const size_t u0 = (size_t)r * R + (size_t)pw * kUnitsPerWarp;
        /* all loads first, 16 words in flight per lane; before waiting for
         * the slot, since they do not touch the ring */
        u64 w[kUnitsPerWarp][4];
#pragma unroll
        for (int i = 0; i < kUnitsPerWarp; i++) {
            const uint8_t *b = p + (u0 + i) * kBlock + g * kStripe + j * 8;
#pragma unroll
            for (int m = 0; m < 4; m++)
                w[i][m] = u0 + i < nb ? ld_word<kAligned>(b + m * 4 * kStripe) : 0;
        }
        if (r >= kSlots)
            bar_sync<W>(kBarEmpty + slot);
#pragma unroll
        for (int i = 0; i < kUnitsPerWarp; i++) {
            const size_t u = u0 + i;
            if (u > nb)
                break; /* warp-uniform: past the image */
            u64 s = u < nb ? block_sum(w[i], key) : tail_sum<kAligned>(p, len, nb, partial, key);
            if ((threadIdx.x & 31) < 8)
                ring[slot][u - (size_t)r * R][j] = s;
        }
        bar_arrive<W>(kBarFull + slot);
    }
}

/* The chain warp: lane j (mod 8) owns accumulator lane j.  S values are
 * read kBatch at a time into registers so that no shared-memory latency
 * sits between two steps of the chain. */
template <int W>
__device__ u64 chain(size_t len, size_t nb, uint32_t rounds, const typename Shape<W>::ring_t &ring)
{
    constexpr int R = Shape<W>::kRound;
    const int j = threadIdx.x & 7;
    const u64 key = key64(kScrambleKey + 8 * j);
    u64 acc = acc_init(j), tail = 0;
    for (uint32_t r = 0; r < rounds; r++) {
        const u64(*slot)[8] = ring[r % kSlots];
        bar_sync<W>(kBarFull + (int)(r % kSlots));
        const size_t u0 = (size_t)r * R;
        const int full = nb <= u0 ? 0 : nb - u0 >= (size_t)R ? R : (int)(nb - u0);
        int u = 0;
        for (; u + kBatch <= full; u += kBatch) {
            u64 sv[kBatch];
#pragma unroll
            for (int i = 0; i < kBatch; i++)
                sv[i] = slot[u + i][j];
#pragma unroll
            for (int i = 0; i < kBatch; i++)
                acc = scramble_step(acc, sv[i], key);
        }
        for (; u < full; u++)
            acc = scramble_step(acc, slot[u][j], key);
        if (nb - u0 < (size_t)R) /* T is in this (the last) round */
            tail = slot[nb - u0][j];
        if (r + kSlots < rounds)
            bar_arrive<W>(kBarEmpty + (int)(r % kSlots));
    }
    acc += tail;
    u64 lanes[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        lanes[i] = __shfl_sync(0xffffffffu, acc, i);
    return merge_lanes(lanes, len);
}

template <int W>
__global__ void __launch_bounds__(W * 32)
    xxh3_long_kernel(const uint8_t *const *bufs, size_t len, uint64_t *out)
{
    __shared__ typename Shape<W>::ring_t ring;
    const int warp = (int)(threadIdx.x >> 5);
    if (warp % 4 == kChainWarp % 4 && warp != kChainWarp)
        return; /* keeps the chain's scheduler free */
    const uint8_t *p = bufs[blockIdx.x];
    const size_t nb = (len - 1) / kBlock;
    const uint32_t rounds = (uint32_t)((nb + Shape<W>::kRound) / Shape<W>::kRound);
    if (warp == kChainWarp) {
        u64 h = chain<W>(len, nb, rounds, ring);
        if (threadIdx.x % 32 == 0)
            out[blockIdx.x] = h;
        return;
    }
    const int pw = warp - warp / 4; /* producer index */
    if (((uintptr_t)p & 7) == 0)
        produce<W, true>(pw, p, len, nb, rounds, ring);
    else
        produce<W, false>(pw, p, len, nb, rounds, ring);
}

__global__ void xxh3_short_kernel(const uint8_t *const *bufs, size_t n, size_t len,
                                  uint64_t *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = hash_short(len ? bufs[i] : NULL, len);
}

} // namespace

extern "C" {

kvt_status_t kvt_k_xxh3_64(const uint8_t *const *bufs, size_t n, size_t len, uint64_t *out,
                           kvt_gpu_stream_t s)
{
    if (n == 0)
        return KVT_OK;
    if (!bufs || !out || n > KVT_K_XXH3_MAX_N || len > KVT_K_XXH3_MAX_LEN)
        return KVT_ERR_INVALID;
    cudaStream_t st = (cudaStream_t)s;
    if (len <= kMidMax)
        xxh3_short_kernel<<<(unsigned)((n + 127) / 128), 128, 0, st>>>(bufs, n, len, out);
    else if (len < kSmallImage)
        xxh3_long_kernel<8><<<(unsigned)n, 8 * 32, 0, st>>>(bufs, len, out);
    else
        xxh3_long_kernel<24><<<(unsigned)n, 24 * 32, 0, st>>>(bufs, len, out);
    return kvt_gpu_launch_status("kvt_k_xxh3_64");
}

} // extern "C"
