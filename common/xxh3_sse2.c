/* xxh3-64 compiled from libxxhash's header into this file (XXH_INLINE_ALL)
 * at -O3, for the x86-64 baseline (SSE2).  Why not the shared library: the
 * distribution's libxxhash hashes at ~16 GB/s here, the same code inlined and
 * built at -O3 at ~26 GB/s, and every pulled or promoted KV block is hashed
 * once (DESIGN.md invariant 3).  The result is bit for bit XXH3_64bits(). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/xxh3_impl.h"

uint64_t kvt_xxh3_64_sse2(const void *data, size_t len) { return XXH3_64bits(data, len); }
