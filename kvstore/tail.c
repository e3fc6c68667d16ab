/* Partial tails: key and image size (tail.h). */
#include "kvstore/tail.h"

uint64_t kvt_tail_bytes(const kvt_block_layout_t *layout, uint32_t t)
{
    uint64_t block = kvt_block_layout_payload_bytes(layout);
    if (block == 0 || t == 0 || t >= layout->block_tokens)
        return 0;
    return block / layout->block_tokens * t;
}

kvt_status_t kvt_tail_key(const kvt_block_key_t *parent, uint32_t t, const uint32_t *tokens,
                          kvt_block_key_t *key_p)
{
    if (t == 0 || t >= KVT_BLOCK_MAX_TOKENS)
        return KVT_ERR_INVALID;
    return kvt_block_key_next(parent, t, tokens, key_p);
}
