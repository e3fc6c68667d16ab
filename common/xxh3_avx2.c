/* xxh3-64 for CPUs with AVX2: this file alone is built with -mavx2, so
 * libxxhash's inlined header picks its AVX2 loop (~30 GB/s here).  Only
 * called after a runtime check (common/hash.c).  Bit for bit XXH3_64bits(). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/xxh3_impl.h"

uint64_t kvt_xxh3_64_avx2(const void *data, size_t len) { return XXH3_64bits(data, len); }
