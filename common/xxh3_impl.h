/* Private to common/: the xxh3-64 builds that kvt_xxh3_64() picks from at
 * run time (common/hash.c).  Each returns exactly XXH3_64bits(data, len). */
#ifndef KVT_COMMON_XXH3_IMPL_H
#define KVT_COMMON_XXH3_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* The AVX2 build exists on x86-64 unless a build that compiles common/ by
 * hand leaves it out (the libFuzzer targets: -DKVT_XXH3_NO_AVX2). */
#if defined(__x86_64__) && !defined(KVT_XXH3_NO_AVX2)
#define KVT_XXH3_AVX2 1
#endif

uint64_t kvt_xxh3_64_sse2(const void *data, size_t len);
#ifdef KVT_XXH3_AVX2
uint64_t kvt_xxh3_64_avx2(const void *data, size_t len);
#endif

#endif
