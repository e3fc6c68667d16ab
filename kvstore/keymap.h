/* Hash map from block key to a u32 value (a slot or entry index).
 *
 * Open addressing with linear probing and backward-shift deletion, so there
 * are no tombstones.  The probe hash is xxh3 of the key with a per-process
 * random seed: keys are SHA-256 outputs, but a seeded hash keeps a client
 * that grinds token sequences from lining keys up in one probe run.  Not
 * thread-safe; owners lock around it.  Grows at 70% load. */
#ifndef KVT_KVSTORE_KEYMAP_H
#define KVT_KVSTORE_KEYMAP_H

#include "kvstore/block.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    kvt_block_key_t *keys; /* private */
    uint32_t *vals;        /* private */
    uint8_t *used;         /* private */
    uint32_t cap;          /* private: power of two */
    uint32_t count;        /* read-only */
} kvt_keymap_t;

kvt_status_t kvt_keymap_init(kvt_keymap_t *map, uint32_t expected);
void kvt_keymap_cleanup(kvt_keymap_t *map);
bool kvt_keymap_get(const kvt_keymap_t *map, const kvt_block_key_t *key, uint32_t *val_p);
/* Insert or overwrite; KVT_ERR_NOMEM if growing fails (map unchanged). */
kvt_status_t kvt_keymap_put(kvt_keymap_t *map, const kvt_block_key_t *key, uint32_t val);
bool kvt_keymap_del(kvt_keymap_t *map, const kvt_block_key_t *key);
/* Visit every entry, in no particular order; the map must not change
 * during the walk. */
typedef void (*kvt_keymap_visit_fn)(const kvt_block_key_t *key, uint32_t val, void *arg);
void kvt_keymap_foreach(const kvt_keymap_t *map, kvt_keymap_visit_fn fn, void *arg);

#endif
