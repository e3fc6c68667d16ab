#include "kvstore/events.h"

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
