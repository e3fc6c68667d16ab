#include "kvstore/events.h"

#include <stdatomic.h>

static _Atomic uint64_t g_event_seq;

uint64_t kvt_event_seq_next(void)
{
    return atomic_fetch_add_explicit(&g_event_seq, 1, memory_order_relaxed) + 1;
}

const char *kvt_tier_name(kvt_tier_id_t tier)
{
    switch (tier) {
    case KVT_TIER_GPU: return "gpu";
    case KVT_TIER_HOST: return "host";
    case KVT_TIER_DISK: return "disk";
    case KVT_TIER_NONE: break;
    }
    return "none";
}
