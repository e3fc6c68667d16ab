/* The partial tail of a prompt: the KV of its last t = n % B tokens
 * (1 <= t < B), which no full block covers (invariant 1: only full blocks
 * have keys and live in the tiers).  The prefill node computes it and holds
 * it for the decode node for a short time under a lease, so the decode
 * node need not compute it again (DESIGN.md section 4, step 3).
 *
 * A tail is named by the key formula of invariant 1 applied to its t tokens:
 *     tail_key = SHA-256(parent || u32le(t) || tokens as u32le)
 * where parent is the key of the prompt's last full block (the root key
 * when there is none).  Since t < B and B is part of the model fingerprint
 * (so of every root key), a tail key never equals a block key; and since
 * the chain starts at the tenant's root, tenants never share tails
 * (invariant 6).  Both nodes compute the key from the request's tokens:
 * the decode node asks for the key it expects and checks what comes back.
 *
 * Its payload is the compact image `[layer][K,V][t][kv_head][head_dim]` in
 * the KV dtype: the first t token rows of each (layer, K/V) section of a
 * block image (invariant 2), so a tail is never larger than a block. */
#ifndef KVT_KVSTORE_TAIL_H
#define KVT_KVSTORE_TAIL_H

#include "kvstore/block.h"

#include <stddef.h>
#include <stdint.h>

/* Bytes of the image of a t-token tail of this layout; 0 when the layout
 * is invalid or t is not in [1, B). */
uint64_t kvt_tail_bytes(const kvt_block_layout_t *layout, uint32_t t);

/* The key of the tail tokens[0..t) after parent.  KVT_ERR_INVALID when t
 * is 0 or not below KVT_BLOCK_MAX_TOKENS. */
kvt_status_t kvt_tail_key(const kvt_block_key_t *parent, uint32_t t, const uint32_t *tokens,
                          kvt_block_key_t *key_p);

#endif
