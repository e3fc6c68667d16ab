/* Internals of the disk tier, shared by disk_tier.c (open, put, get),
 * disk_index.c (the in-memory index and its rebuild from meta) and
 * disk_verify.c (foreach, verify, repair).  Not for other modules.
 *
 * Locking: the functions below that take the tier and touch the index run
 * with tier->mu held, unless their comment says otherwise. */
#ifndef KVT_KVSTORE_DISK_TIERINT_H
#define KVT_KVSTORE_DISK_TIERINT_H

#include "common/le.h"
#include "kvstore/disk_tier.h"
#include "kvstore/keymap.h"
#include "kvstore/lru_heap.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <string.h>

#define STORE_VERSION 1
#define IDENT_LEN 68
#define COUNTERS_LEN 64
#define META_LEN 64
#define DIRTY_MAX 1024 /* touched keys whose tick is written lazily */
#define SPARE_BATCHES 4 /* cleared write batches kept for reuse */
#define ID_NONE UINT32_MAX
#define ENTRIES_MAX (UINT32_MAX / 2)

/* Everything lives in RocksDB's default column family, as key families:
 *     "identity", "counters"   the tier's records
 *     'b' || key[32]           block image (header || payload), in blob files
 *     'm' || key[32]           meta record
 * One column family on purpose: when several share the WAL, RocksDB syncs
 * every closed WAL before a memtable flush, so each payload reached the
 * disk twice (WAL, then blob file).  With one, the WAL of a flushed
 * memtable is deleted before writeback and the payload is written once;
 * a block and its meta still go in one atomic batch. */
enum { FAM_BLOCK = 'b', FAM_META = 'm' };
#define DBKEY_LEN (1 + KVT_KEY_LEN)
enum { E_FREE, E_RESIDENT, E_WRITING, E_DELETING };
enum { C_HITS, C_MISSES, C_PUTS, C_EVICTIONS, C_CORRUPT, C_NO_PARENT, C_N };

typedef struct {
    kvt_block_key_t key;
    kvt_block_key_t parent;
    uint64_t tick;
    uint64_t bytes; /* image bytes */
    uint64_t gen;   /* distinguishes reincarnations of a key */
    uint32_t index;
    uint32_t n_children; /* resident and in-flight children */
    uint32_t pins;
    uint32_t next_free;
    uint8_t state;
    uint8_t dirty; /* tick not yet persisted, key is in the dirty list */
} entry_t;

typedef struct {
    uint32_t *ids;
    size_t n, cap;
} idvec_t;

typedef struct {
    kvt_block_event_t *ev;
    size_t n, cap;
} evbuf_t;

struct kvt_disk_tier {
    kvt_block_identity_t identity;
    uint64_t image_len; /* every image of this identity has this size */
    uint64_t capacity;
    bool read_only;
    kvt_block_event_fn on_event;
    void *event_arg;

    rocksdb_options_t *opts;
    rocksdb_t *db;
    rocksdb_writeoptions_t *wopts;
    rocksdb_readoptions_t *ropts;
    rocksdb_readoptions_t *scan_ropts; /* scans do not evict hot blocks from the cache */
    rocksdb_flushoptions_t *fopts;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t settled;
    rocksdb_writebatch_t *spare[SPARE_BATCHES]; /* a batch keeps its buffer when
                                                   cleared: reusing it spares
                                                   faulting in ~1 MiB per put */
    uint32_t n_spare;
    kvt_keymap_t map;
    entry_t *ents;
    uint32_t *pos; /* heap positions, by id */
    uint32_t cap, free_head;
    kvt_lru_heap_t lru;
    uint64_t used, tick, gen;
    uint32_t n_blocks, n_pinned;
    kvt_block_key_t *dirty;
    uint32_t n_dirty;
    uint64_t c[C_N];
};

enum { R_UNKNOWN, R_ROOTED, R_ORPHAN, R_VISITING, R_SKIP };

/* --- keys of the families --- */

typedef struct {
    char b[DBKEY_LEN];
} dbkey_t;

static inline dbkey_t kvt_disk_dbkey(char fam, const void *key)
{
    dbkey_t k;
    k.b[0] = fam;
    memcpy(k.b + 1, key, KVT_KEY_LEN);
    return k;
}

/* The block key inside a RocksDB key of family fam, or NULL. */
static inline const char *kvt_disk_dbkey_in(const char *k, size_t klen, char fam)
{
    return klen == DBKEY_LEN && k[0] == fam ? k + 1 : NULL;
}

static inline void kvt_disk_wb_delete(rocksdb_writebatch_t *wb, char fam, const void *key)
{
    dbkey_t k = kvt_disk_dbkey(fam, key);
    rocksdb_writebatch_delete(wb, k.b, DBKEY_LEN);
}

/* An iterator over one family: first key, and whether it is still in it. */
static inline void kvt_disk_iter_family(rocksdb_iterator_t *it, char fam)
{
    rocksdb_iter_seek(it, &fam, 1);
}

static inline bool kvt_disk_iter_in_family(rocksdb_iterator_t *it, char fam)
{
    if (!rocksdb_iter_valid(it))
        return false;
    size_t klen;
    const char *k = rocksdb_iter_key(it, &klen);
    return klen > 0 && k[0] == fam;
}

/* --- records and helpers (disk_index.c) --- */

void kvt_disk_meta_encode(const entry_t *e, uint8_t out[META_LEN]);
/* Fills e's key, parent, index, bytes and tick; false if the record is not
 * exactly one well-formed record for this key and this tier's image size. */
bool kvt_disk_meta_decode(const kvt_disk_tier_t *tier, const char *key, size_t klen,
                          const char *val, size_t vlen, entry_t *e);
/* Logs a RocksDB error string, frees it and returns KVT_ERR_IO. */
kvt_status_t kvt_disk_rdb_fail(const char *what, char *err);
kvt_status_t kvt_disk_idvec_push(idvec_t *v, uint32_t id);
void kvt_disk_ev_push(evbuf_t *b, kvt_event_kind_t kind, const entry_t *e);
/* Calls the event callback for each event and empties b; no lock held. */
void kvt_disk_ev_emit(kvt_disk_tier_t *tier, evbuf_t *b);

/* --- the in-memory index (disk_index.c) --- */

/* A zeroed entry (state E_FREE, caller sets it) indexed under key. */
kvt_status_t kvt_disk_entry_new(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint32_t *id_p);
void kvt_disk_entry_free(kvt_disk_tier_t *tier, uint32_t id);
/* The entry of key in any state, or NULL. */
entry_t *kvt_disk_lookup(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint32_t *id_p);
entry_t *kvt_disk_lookup_resident(kvt_disk_tier_t *tier, const kvt_block_key_t *key,
                                  uint32_t *id_p);
void kvt_disk_heap_sync(kvt_disk_tier_t *tier, uint32_t id);
void kvt_disk_child_added(kvt_disk_tier_t *tier, uint32_t pid);
void kvt_disk_child_removed(kvt_disk_tier_t *tier, const entry_t *child);
void kvt_disk_entry_unlink(kvt_disk_tier_t *tier, uint32_t id);
void kvt_disk_victims_restore(kvt_disk_tier_t *tier, const idvec_t *victims);
void kvt_disk_ticks_flush(kvt_disk_tier_t *tier);
void kvt_disk_touch(kvt_disk_tier_t *tier, uint32_t id);
kvt_status_t kvt_disk_subtree_unlink(kvt_disk_tier_t *tier, uint32_t root, uint64_t gen,
                                     idvec_t *dels, evbuf_t *evs);
kvt_status_t kvt_disk_dels_commit(kvt_disk_tier_t *tier, idvec_t *dels);
/* Called without the mutex. */
bool kvt_disk_block_drop(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint64_t gen,
                         const char *reason);
void kvt_disk_closure_mark(uint32_t n, const uint32_t *pid, const uint32_t *idx, uint8_t *state,
                           uint32_t *path);
/* At open, before the tier is shared. */
kvt_status_t kvt_disk_index_load(kvt_disk_tier_t *tier);

/* --- images (disk_tier.c) --- */

/* Every check a stored image must pass; *reason_p names the first failure. */
kvt_status_t kvt_disk_image_check(const kvt_disk_tier_t *tier, const kvt_block_key_t *key,
                                  const uint8_t *img, size_t len, kvt_block_header_t *hdr,
                                  size_t *hlen_p, const char **reason_p);

#endif
