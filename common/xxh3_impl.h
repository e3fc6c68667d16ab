/* Private to common/: the xxh3-64 builds that kvt_xxh3_64() picks from at
 * run time (common/hash.c).  Each returns exactly XXH3_64bits(data, len). */
#ifndef KVT_COMMON_XXH3_IMPL_H
#define KVT_COMMON_XXH3_IMPL_H

#include <stddef.h>
#include <stdint.h>

uint64_t kvt_xxh3_64_sse2(const void *data, size_t len);
#if defined(__x86_64__)
uint64_t kvt_xxh3_64_avx2(const void *data, size_t len);
#endif

#endif
