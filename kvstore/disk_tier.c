/* T2 disk tier: RocksDB with blob files, see disk_tier.h for the contract.
 *
 * On-disk records (all little-endian, fixed size, xxh3-64 checksummed):
 *   default "identity"  "KVTI" u32 version, u32 n_layers, n_kv_heads,
 *                       head_dim, block_tokens, dtype, u8[32] fingerprint,
 *                       u64 xxh3 of the bytes before it            (68 bytes)
 *   default "counters"  "KVTC" u32 version, u64 hits, misses, puts,
 *                       evictions, corrupt, no_parent, u64 xxh3       (64 bytes)
 *   meta key[32]        u32 version, u32 index, u8[32] parent, u64 image
 *                       bytes, u64 access tick, u64 xxh3(key || bytes before)
 *                       (64 bytes; the key is in the checksum so a record
 *                       cannot be moved to another key unnoticed)
 *   blocks key[32]      encoded header || payload
 *
 * In memory: a keymap from key to an entry id, an entries array with a free
 * list, and a min-heap of the evictable entries (resident, unpinned, no
 * resident or in-flight child).  An entry is RESIDENT, WRITING (a put whose
 * batch is in flight) or DELETING (an eviction or drop whose batch is in
 * flight).  RocksDB writes run without the mutex; while they do, the keys
 * involved stay in the keymap in a transient state, and a put that meets a
 * transient key or parent waits on `settled`, so the order of writes for one
 * key on disk is the order the index saw them.  The one exception is the
 * lazy access-tick flush, which writes a small meta batch with the mutex held
 * so that it can never resurrect the meta of a block deleted meanwhile.
 *
 * Open rebuilds the index from meta alone and never reads a payload, so a
 * meta record whose block image went missing (outside damage only: block and
 * meta are always written and deleted together) is found by get or verify,
 * not at open.
 *
 * Files: disk_tier.c (records, open/close, put, get), disk_index.c (the
 * in-memory index, drops, rebuild at open), disk_verify.c (foreach, verify,
 * repair); disk_tierInt.h is shared by the three. */
#include "kvstore/disk_tierInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char identity_key[] = "identity";
static const char counters_key[] = "counters";

static void identity_encode(const kvt_block_identity_t *id, uint8_t out[IDENT_LEN])
{
    memcpy(out, "KVTI", 4);
    kvt_le_put32(out + 4, STORE_VERSION);
    kvt_le_put32(out + 8, id->layout.n_layers);
    kvt_le_put32(out + 12, id->layout.n_kv_heads);
    kvt_le_put32(out + 16, id->layout.head_dim);
    kvt_le_put32(out + 20, id->layout.block_tokens);
    kvt_le_put32(out + 24, (uint32_t)id->layout.dtype);
    memcpy(out + 28, id->fingerprint, KVT_FINGERPRINT_LEN);
    kvt_le_put64(out + 60, kvt_xxh3_64(out, 60));
}

static bool identity_decode(const uint8_t *buf, size_t len, kvt_block_identity_t *id)
{
    if (len != IDENT_LEN || memcmp(buf, "KVTI", 4) != 0 || kvt_le_get32(buf + 4) != STORE_VERSION ||
        kvt_le_get64(buf + 60) != kvt_xxh3_64(buf, 60))
        return false;
    id->layout = (kvt_block_layout_t){.n_layers = kvt_le_get32(buf + 8), .n_kv_heads = kvt_le_get32(buf + 12),
                                      .head_dim = kvt_le_get32(buf + 16), .block_tokens = kvt_le_get32(buf + 20),
                                      .dtype = (kvt_dtype_t)kvt_le_get32(buf + 24)};
    memcpy(id->fingerprint, buf + 28, KVT_FINGERPRINT_LEN);
    return kvt_block_layout_check(&id->layout) == KVT_OK;
}

/* --- block images --- */

/* Every check a stored image must pass; *reason_p names the first failure. */
kvt_status_t kvt_disk_image_check(const kvt_disk_tier_t *tier, const kvt_block_key_t *key,
                                  const uint8_t *img, size_t len, kvt_block_header_t *hdr,
                                  size_t *hlen_p, const char **reason_p)
{
    size_t hlen;
    const char *reason = NULL;
    if (len < KVT_BLOCK_HEADER_FIXED)
        reason = "image shorter than a header";
    else if (kvt_block_header_decode(img, len, hdr, &hlen) != KVT_OK)
        reason = "header does not decode";
    else if (!kvt_block_key_eq(&hdr->key, key))
        reason = "header key differs from stored key";
    else if (kvt_block_header_check_key(hdr) != KVT_OK)
        reason = "key does not match parent and tokens";
    else if (kvt_block_header_check_identity(hdr, &tier->identity) != KVT_OK)
        reason = "layout or fingerprint differs from the tier identity";
    else if (len - hlen != hdr->payload_len)
        reason = "payload length differs from header";
    else if (kvt_block_payload_verify(hdr, img + hlen, len - hlen) != KVT_OK)
        reason = "payload checksum mismatch";
    *reason_p = reason;
    if (reason)
        return KVT_ERR_CORRUPT;
    *hlen_p = hlen;
    return KVT_OK;
}

/* --- open and close --- */

static rocksdb_options_t *db_options_create(bool create)
{
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(o, create);
    rocksdb_options_set_max_background_jobs(o, 4);
    rocksdb_options_set_compression(o, rocksdb_no_compression); /* KV is incompressible */
    rocksdb_options_set_write_buffer_size(o, 64u << 20);
    /* Images go to blob files; meta records and the tier's records (well
     * under 4 KiB) stay in the LSM tree. */
    rocksdb_options_set_enable_blob_files(o, 1);
    rocksdb_options_set_min_blob_size(o, 4096);
    rocksdb_options_set_blob_file_size(o, 256u << 20);
    rocksdb_options_set_blob_compression_type(o, rocksdb_no_compression);
    rocksdb_options_set_enable_blob_gc(o, 1);
    return o;
}

static bool db_exists(const char *path)
{
    size_t n = strlen(path) + sizeof("/CURRENT");
    char *name = kvt_malloc("disk tier path", n);
    struct stat sb;
    bool exists = name && (snprintf(name, n, "%s/CURRENT", path), stat(name, &sb) == 0);
    kvt_free(name);
    return exists;
}

static kvt_status_t db_open(kvt_disk_tier_t *tier, const kvt_disk_tier_params_t *params)
{
    bool exists = db_exists(params->path);
    if (!exists && (!params->create_if_missing || params->read_only)) {
        kvt_log_error("disk tier db not found path=%s", params->path);
        return KVT_ERR_NOT_FOUND;
    }
    tier->opts = db_options_create(!exists);
    char *err = NULL;
    /* A bounded max_open_files keeps RocksDB from opening a fully compacted
     * DB in its "compacted" read-only mode, which cannot read blob values. */
    if (params->read_only)
        rocksdb_options_set_max_open_files(tier->opts, 4096);
    if (params->read_only)
        tier->db = rocksdb_open_for_read_only(tier->opts, params->path, 0, &err);
    else
        tier->db = rocksdb_open(tier->opts, params->path, &err);
    if (err) {
        tier->db = NULL;
        kvt_log_error("disk tier open failed path=%s", params->path);
        return kvt_disk_rdb_fail("open", err);
    }
    tier->wopts = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(tier->wopts, params->sync_writes);
    tier->ropts = rocksdb_readoptions_create();
    /* Block reads are checked end to end by our own header checksum and
     * xxh3 payload checksum; RocksDB's blob CRC32c on top of that costs as
     * much as the read itself (measured: 1.1 -> see bench/RESULTS.md). */
    rocksdb_readoptions_set_verify_checksums(tier->ropts, 0);
    tier->scan_ropts = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(tier->scan_ropts, 0);
    tier->fopts = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(tier->fopts, 1);
    return KVT_OK;
}

static void log_identity(const char *which, const kvt_block_identity_t *id)
{
    char fp[2 * KVT_FINGERPRINT_LEN + 1];
    kvt_hex(id->fingerprint, KVT_FINGERPRINT_LEN, fp);
    kvt_log_error("disk tier identity which=%s layers=%u kv_heads=%u head_dim=%u block_tokens=%u "
                  "dtype=%s fingerprint=%s",
                  which, id->layout.n_layers, id->layout.n_kv_heads, id->layout.head_dim,
                  id->layout.block_tokens, kvt_dtype_name(id->layout.dtype), fp);
}

static kvt_status_t identity_load(kvt_disk_tier_t *tier, const kvt_block_identity_t *want,
                                  const char *path)
{
    char *err = NULL;
    size_t len;
    char *v = rocksdb_get(tier->db, tier->ropts, identity_key, sizeof(identity_key) - 1, &len,
                          &err);
    if (err)
        return kvt_disk_rdb_fail("read identity", err);
    if (!v) {
        if (!want || tier->read_only) {
            kvt_log_error("disk tier db has no identity record path=%s", path);
            return KVT_ERR_NOT_FOUND;
        }
        uint8_t rec[IDENT_LEN];
        identity_encode(want, rec);
        rocksdb_put(tier->db, tier->wopts, identity_key, sizeof(identity_key) - 1,
                    (const char *)rec, IDENT_LEN, &err);
        if (err)
            return kvt_disk_rdb_fail("write identity", err);
        tier->identity = *want;
        return KVT_OK;
    }
    kvt_block_identity_t stored;
    bool ok = identity_decode((const uint8_t *)v, len, &stored);
    rocksdb_free(v);
    if (!ok) {
        kvt_log_error("disk tier identity record corrupt path=%s len=%zu", path, len);
        return KVT_ERR_CORRUPT;
    }
    if (want && (!kvt_block_layout_eq(&want->layout, &stored.layout) ||
                 memcmp(want->fingerprint, stored.fingerprint, KVT_FINGERPRINT_LEN) != 0)) {
        kvt_log_error("disk tier db holds another model or layout path=%s", path);
        log_identity("stored", &stored);
        log_identity("requested", want);
        return KVT_ERR_MISMATCH;
    }
    tier->identity = stored;
    return KVT_OK;
}

static kvt_status_t counters_load(kvt_disk_tier_t *tier)
{
    char *err = NULL;
    size_t len;
    char *v = rocksdb_get(tier->db, tier->ropts, counters_key, sizeof(counters_key) - 1, &len,
                          &err);
    if (err)
        return kvt_disk_rdb_fail("read counters", err);
    if (!v)
        return KVT_OK;
    const uint8_t *rec = (const uint8_t *)v;
    if (len == COUNTERS_LEN && memcmp(rec, "KVTC", 4) == 0 && kvt_le_get32(rec + 4) == STORE_VERSION &&
        kvt_le_get64(rec + 56) == kvt_xxh3_64(rec, 56)) {
        for (int i = 0; i < C_N; i++)
            tier->c[i] = kvt_le_get64(rec + 8 + 8 * i);
    } else {
        kvt_log_warn("disk tier counters record corrupt, starting from zero len=%zu", len);
    }
    rocksdb_free(v);
    return KVT_OK;
}

static void counters_save(kvt_disk_tier_t *tier)
{
    uint8_t rec[COUNTERS_LEN];
    memcpy(rec, "KVTC", 4);
    kvt_le_put32(rec + 4, STORE_VERSION);
    pthread_mutex_lock(&tier->mu);
    for (int i = 0; i < C_N; i++)
        kvt_le_put64(rec + 8 + 8 * i, tier->c[i]);
    pthread_mutex_unlock(&tier->mu);
    kvt_le_put64(rec + 56, kvt_xxh3_64(rec, 56));
    char *err = NULL;
    rocksdb_put(tier->db, tier->wopts, counters_key, sizeof(counters_key) - 1, (const char *)rec,
                COUNTERS_LEN, &err);
    if (err)
        kvt_disk_rdb_fail("write counters", err);
}

static void tier_free(kvt_disk_tier_t *tier)
{
    for (uint32_t i = 0; i < tier->n_spare; i++)
        rocksdb_writebatch_destroy(tier->spare[i]);
    if (tier->db)
        rocksdb_close(tier->db);
    if (tier->opts)
        rocksdb_options_destroy(tier->opts);
    if (tier->wopts)
        rocksdb_writeoptions_destroy(tier->wopts);
    if (tier->ropts)
        rocksdb_readoptions_destroy(tier->ropts);
    if (tier->scan_ropts)
        rocksdb_readoptions_destroy(tier->scan_ropts);
    if (tier->fopts)
        rocksdb_flushoptions_destroy(tier->fopts);
    kvt_keymap_cleanup(&tier->map);
    kvt_lru_heap_cleanup(&tier->lru);
    kvt_free(tier->ents);
    kvt_free(tier->pos);
    kvt_free(tier->dirty);
    pthread_cond_destroy(&tier->settled);
    pthread_mutex_destroy(&tier->mu);
    kvt_free(tier);
}

kvt_status_t kvt_disk_tier_open(const kvt_disk_tier_params_t *params, kvt_disk_tier_t **tier_p)
{
    if (!params || !params->path || !tier_p ||
        (params->identity && kvt_block_layout_check(&params->identity->layout) != KVT_OK)) {
        kvt_log_error("disk tier open: invalid parameters");
        return KVT_ERR_INVALID;
    }
    if (params->create_if_missing && !params->identity && !db_exists(params->path)) {
        kvt_log_error("disk tier open: creating a db needs an identity path=%s", params->path);
        return KVT_ERR_INVALID;
    }
    kvt_disk_tier_t *tier = kvt_calloc("disk tier", 1, sizeof(*tier));
    if (!tier)
        return KVT_ERR_NOMEM;
    pthread_mutex_init(&tier->mu, NULL);
    pthread_cond_init(&tier->settled, NULL);
    kvt_lru_heap_init(&tier->lru);
    tier->free_head = ID_NONE;
    tier->capacity = params->capacity_bytes;
    tier->read_only = params->read_only;
    tier->on_event = params->on_event;
    tier->event_arg = params->event_arg;
    kvt_status_t st = kvt_keymap_init(&tier->map, 1024);
    if (st == KVT_OK)
        tier->dirty = kvt_malloc("disk tier dirty keys", DIRTY_MAX * sizeof(*tier->dirty));
    if (st == KVT_OK && !tier->dirty)
        st = KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = db_open(tier, params);
    if (st == KVT_OK)
        st = identity_load(tier, params->identity, params->path);
    if (st == KVT_OK) {
        tier->image_len = kvt_block_header_size(tier->identity.layout.block_tokens) +
                          kvt_block_layout_payload_bytes(&tier->identity.layout);
        st = counters_load(tier);
    }
    if (st == KVT_OK)
        st = kvt_disk_index_load(tier);
    if (st != KVT_OK) {
        tier_free(tier);
        return st;
    }
    kvt_log_info("disk tier open path=%s blocks=%u bytes=%llu capacity=%llu read_only=%d",
                 params->path, tier->n_blocks, (unsigned long long)tier->used,
                 (unsigned long long)tier->capacity, (int)tier->read_only);
    *tier_p = tier;
    return KVT_OK;
}

void kvt_disk_tier_close(kvt_disk_tier_t *tier)
{
    if (!tier)
        return;
    if (!tier->read_only)
        kvt_disk_tier_flush(tier); /* logs its own failure; closing goes on */
    tier_free(tier);
}

kvt_status_t kvt_disk_tier_flush(kvt_disk_tier_t *tier)
{
    if (tier->read_only)
        return KVT_OK; /* nothing was written */
    pthread_mutex_lock(&tier->mu);
    kvt_disk_ticks_flush(tier);
    pthread_mutex_unlock(&tier->mu);
    counters_save(tier);
    /* Memtable first: once it is in (synced) table and blob files the WAL
     * that covered it is obsolete and is never written back, so the WAL
     * sync after it is small.  The other order writes every payload to
     * disk twice. */
    char *err = NULL;
    rocksdb_flush(tier->db, tier->fopts, &err);
    if (err)
        return kvt_disk_rdb_fail("flush memtable", err);
    rocksdb_flush_wal(tier->db, 1, &err);
    if (err)
        return kvt_disk_rdb_fail("flush wal", err);
    return KVT_OK;
}

/* --- put --- */

typedef struct {
    uint32_t id;      /* the new entry, WRITING */
    idvec_t victims;  /* DELETING, in eviction order */
    bool present;     /* already stored: touched, nothing to write */
} put_plan_t;

/* Waits out in-flight writes of the key and its parent, then applies the
 * presence and parent rules.  Mutex held. */
static kvt_status_t put_wait(kvt_disk_tier_t *tier, const kvt_block_header_t *hdr,
                             put_plan_t *plan, uint32_t *pid_p)
{
    for (;;) {
        uint32_t id;
        entry_t *e = kvt_disk_lookup(tier, &hdr->key, &id);
        entry_t *p = hdr->index > 0 ? kvt_disk_lookup(tier, &hdr->parent, pid_p) : NULL;
        if ((e && e->state != E_RESIDENT) || (p && p->state != E_RESIDENT)) {
            pthread_cond_wait(&tier->settled, &tier->mu);
            continue;
        }
        if (e) {
            kvt_disk_touch(tier, id);
            plan->present = true;
            return KVT_OK;
        }
        if (hdr->index > 0 && !p) {
            tier->c[C_NO_PARENT]++;
            return KVT_ERR_NO_PARENT;
        }
        return KVT_OK;
    }
}

/* Reserves the parent, evicts leaves until the image fits and inserts the
 * WRITING entry; undoes everything on failure.  Mutex held. */
static kvt_status_t put_reserve(kvt_disk_tier_t *tier, const kvt_block_header_t *hdr,
                                uint64_t bytes, put_plan_t *plan)
{
    uint32_t pid = ID_NONE, vid;
    kvt_status_t st = put_wait(tier, hdr, plan, &pid);
    if (st != KVT_OK || plan->present)
        return st;
    if (tier->capacity && bytes > tier->capacity)
        return KVT_ERR_FULL;
    /* The reservation keeps the parent off the heap while we evict. */
    if (pid != ID_NONE)
        kvt_disk_child_added(tier, pid);
    while (st == KVT_OK && tier->capacity && tier->used + bytes > tier->capacity) {
        if (!kvt_lru_heap_pop(&tier->lru, tier->pos, &vid))
            st = KVT_ERR_FULL;
        else if ((st = kvt_disk_idvec_push(&plan->victims, vid)) == KVT_OK)
            kvt_disk_entry_unlink(tier, vid);
        else
            kvt_disk_heap_sync(tier, vid);
    }
    if (st == KVT_OK && (st = kvt_disk_entry_new(tier, &hdr->key, &plan->id)) == KVT_OK) {
        entry_t *e = &tier->ents[plan->id];
        e->parent = hdr->parent;
        e->index = hdr->index;
        e->bytes = bytes;
        e->tick = ++tier->tick;
        e->state = E_WRITING;
        tier->used += bytes;
        return KVT_OK;
    }
    kvt_disk_victims_restore(tier, &plan->victims);
    plan->victims.n = 0;
    if (pid != ID_NONE) {
        tier->ents[pid].n_children--;
        kvt_disk_heap_sync(tier, pid);
    }
    return st;
}

/* Settles the plan after the batch: mutex held. */
static void put_settle(kvt_disk_tier_t *tier, put_plan_t *plan, bool written, evbuf_t *evs)
{
    entry_t *e = &tier->ents[plan->id];
    if (written) {
        e->state = E_RESIDENT;
        tier->n_blocks++;
        kvt_disk_heap_sync(tier, plan->id);
        tier->c[C_PUTS]++;
        tier->c[C_EVICTIONS] += plan->victims.n;
        for (size_t i = 0; i < plan->victims.n; i++) {
            kvt_disk_ev_push(evs, KVT_EVENT_EVICTED, &tier->ents[plan->victims.ids[i]]);
            kvt_disk_entry_free(tier, plan->victims.ids[i]);
        }
        kvt_disk_ev_push(evs, KVT_EVENT_STORED, &tier->ents[plan->id]);
    } else {
        tier->used -= e->bytes;
        kvt_disk_child_removed(tier, e);
        kvt_disk_entry_free(tier, plan->id);
        kvt_disk_victims_restore(tier, &plan->victims);
    }
    pthread_cond_broadcast(&tier->settled);
}

static kvt_status_t put_check(const kvt_disk_tier_t *tier, const kvt_block_header_t *hdr,
                              const void *payload)
{
    char hex[2 * KVT_KEY_LEN + 1];
    const char *reason = NULL;
    kvt_status_t st;
    if ((st = kvt_block_header_check_identity(hdr, &tier->identity)) != KVT_OK)
        reason = "layout or fingerprint differs from the tier identity";
    else if (hdr->payload_len != tier->image_len - kvt_block_header_size(hdr->layout.block_tokens))
        st = KVT_ERR_CORRUPT, reason = "payload length differs from the layout";
    else if ((st = kvt_block_header_check_key(hdr)) != KVT_OK)
        reason = "key does not match parent and tokens";
    else if ((st = kvt_block_payload_verify(hdr, payload, hdr->payload_len)) != KVT_OK)
        reason = "payload checksum mismatch";
    if (reason) {
        kvt_block_key_hex(&hdr->key, hex);
        kvt_log_error("disk tier put refused key=%s reason=%s", hex, reason);
    }
    return st;
}

/* The encoded header; the payload goes into the batch as a second slice,
 * so a put copies the payload once (into the batch), not twice. */
typedef struct {
    uint8_t header[KVT_BLOCK_HEADER_MAX];
    size_t header_len;
    const void *payload;
    size_t payload_len;
} image_t;

static kvt_status_t image_build(const kvt_block_header_t *hdr, const void *payload, image_t *img)
{
    img->payload = payload;
    img->payload_len = hdr->payload_len;
    return kvt_block_header_encode(hdr, img->header, sizeof(img->header), &img->header_len);
}

/* The image goes in before the mutex is taken: it is the 1 MiB copy. */
static void put_batch_image(rocksdb_writebatch_t *wb, const kvt_block_key_t *key,
                            const image_t *img)
{
    dbkey_t bk = kvt_disk_dbkey(FAM_BLOCK, key->b);
    const char *k = bk.b;
    size_t k_len = DBKEY_LEN;
    const char *parts[2] = {(const char *)img->header, (const char *)img->payload};
    size_t part_lens[2] = {img->header_len, img->payload_len};
    rocksdb_writebatch_putv(wb, 1, &k, &k_len, 2, parts, part_lens);
}

/* The meta record and the victims' deletes.  Mutex held. */
static void put_batch_fill(kvt_disk_tier_t *tier, rocksdb_writebatch_t *wb,
                           const put_plan_t *plan)
{
    const entry_t *e = &tier->ents[plan->id];
    uint8_t rec[META_LEN];
    kvt_disk_meta_encode(e, rec);
    dbkey_t mk = kvt_disk_dbkey(FAM_META, e->key.b);
    rocksdb_writebatch_put(wb, mk.b, DBKEY_LEN, (const char *)rec, META_LEN);
    for (size_t i = 0; i < plan->victims.n; i++) {
        const uint8_t *k = tier->ents[plan->victims.ids[i]].key.b;
        kvt_disk_wb_delete(wb, FAM_BLOCK, k);
        kvt_disk_wb_delete(wb, FAM_META, k);
    }
}

/* Mutex held. */
static rocksdb_writebatch_t *batch_get(kvt_disk_tier_t *tier)
{
    return tier->n_spare ? tier->spare[--tier->n_spare] : rocksdb_writebatch_create();
}

static void batch_put(kvt_disk_tier_t *tier, rocksdb_writebatch_t *wb)
{
    if (tier->n_spare == SPARE_BATCHES) {
        rocksdb_writebatch_destroy(wb);
        return;
    }
    rocksdb_writebatch_clear(wb);
    tier->spare[tier->n_spare++] = wb;
}

kvt_status_t kvt_disk_tier_put(kvt_disk_tier_t *tier, const kvt_block_header_t *hdr,
                               const void *payload)
{
    if (tier->read_only) {
        kvt_log_error("disk tier put refused reason=opened read-only");
        return KVT_ERR_INVALID;
    }
    kvt_status_t st = put_check(tier, hdr, payload);
    image_t img;
    if (st == KVT_OK)
        st = image_build(hdr, payload, &img);
    if (st != KVT_OK)
        return st;
    put_plan_t plan = {.id = ID_NONE};
    evbuf_t evs = {0};
    pthread_mutex_lock(&tier->mu);
    rocksdb_writebatch_t *wb = batch_get(tier);
    pthread_mutex_unlock(&tier->mu);
    put_batch_image(wb, &hdr->key, &img);
    pthread_mutex_lock(&tier->mu);
    st = put_reserve(tier, hdr, img.header_len + img.payload_len, &plan);
    if (st == KVT_OK && !plan.present) {
        put_batch_fill(tier, wb, &plan);
        pthread_mutex_unlock(&tier->mu);
        char *err = NULL;
        rocksdb_write(tier->db, tier->wopts, wb, &err);
        if (err)
            st = kvt_disk_rdb_fail("write block", err);
        pthread_mutex_lock(&tier->mu);
        put_settle(tier, &plan, st == KVT_OK, &evs);
    }
    batch_put(tier, wb);
    pthread_mutex_unlock(&tier->mu);
    kvt_free(plan.victims.ids);
    kvt_disk_ev_emit(tier, &evs);
    return st;
}

/* --- get, contains, pins, stats --- */

/* Reads and checks the image of key, copies its payload into dst.
 * *img_found_p tells a missing image from a bad one. */
static kvt_status_t get_read(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint64_t bytes,
                             kvt_block_header_t *hdr, void *dst, size_t cap, const char **reason_p,
                             bool *img_found_p)
{
    char *err = NULL;
    dbkey_t bk = kvt_disk_dbkey(FAM_BLOCK, key->b);
    rocksdb_pinnableslice_t *ps = rocksdb_get_pinned(tier->db, tier->ropts, bk.b, DBKEY_LEN, &err);
    if (err)
        return kvt_disk_rdb_fail("read block", err);
    size_t len = 0, hlen = 0;
    const uint8_t *img = ps ? (const uint8_t *)rocksdb_pinnableslice_value(ps, &len) : NULL;
    kvt_status_t st = KVT_ERR_CORRUPT;
    *img_found_p = img != NULL;
    *reason_p = "image missing";
    if (img && (st = kvt_disk_image_check(tier, key, img, len, hdr, &hlen, reason_p)) == KVT_OK &&
        len != bytes) {
        *reason_p = "image length differs from meta";
        st = KVT_ERR_CORRUPT;
    }
    if (st == KVT_OK && hdr->payload_len > cap)
        st = KVT_ERR_TOO_LARGE;
    if (st == KVT_OK)
        memcpy(dst, img + hlen, hdr->payload_len);
    if (ps)
        rocksdb_pinnableslice_destroy(ps);
    return st;
}

kvt_status_t kvt_disk_tier_get(kvt_disk_tier_t *tier, const kvt_block_key_t *key,
                               kvt_block_header_t *hdr_p, void *dst, size_t cap)
{
    uint32_t id;
    pthread_mutex_lock(&tier->mu);
    entry_t *e = kvt_disk_lookup_resident(tier, key, &id);
    uint64_t gen = e ? e->gen : 0, bytes = e ? e->bytes : 0;
    tier->c[C_MISSES] += !e;
    pthread_mutex_unlock(&tier->mu);
    if (!e)
        return KVT_ERR_NOT_FOUND;

    kvt_block_header_t hdr;
    const char *reason = NULL;
    bool img_found = false;
    kvt_status_t st = get_read(tier, key, bytes, &hdr, dst, cap, &reason, &img_found);
    if (st == KVT_ERR_CORRUPT) {
        if (kvt_disk_block_drop(tier, key, gen, reason))
            return KVT_ERR_CORRUPT;
        if (!img_found) { /* evicted between the lookup and the read: a plain miss */
            pthread_mutex_lock(&tier->mu);
            tier->c[C_MISSES]++;
            pthread_mutex_unlock(&tier->mu);
            return KVT_ERR_NOT_FOUND;
        }
        char hex[2 * KVT_KEY_LEN + 1];
        kvt_block_key_hex(key, hex);
        kvt_log_error("disk tier read a corrupt image of a block replaced meanwhile key=%s "
                      "reason=%s", hex, reason);
        return KVT_ERR_CORRUPT;
    }
    if (st != KVT_OK)
        return st;
    pthread_mutex_lock(&tier->mu);
    tier->c[C_HITS]++;
    if (kvt_disk_lookup_resident(tier, key, &id) && tier->ents[id].gen == gen)
        kvt_disk_touch(tier, id);
    pthread_mutex_unlock(&tier->mu);
    if (hdr_p)
        *hdr_p = hdr;
    return KVT_OK;
}

bool kvt_disk_tier_contains(kvt_disk_tier_t *tier, const kvt_block_key_t *key)
{
    pthread_mutex_lock(&tier->mu);
    bool found = kvt_disk_lookup_resident(tier, key, NULL) != NULL;
    pthread_mutex_unlock(&tier->mu);
    return found;
}

kvt_status_t kvt_disk_tier_pin(kvt_disk_tier_t *tier, const kvt_block_key_t *key)
{
    if (tier->read_only) {
        kvt_log_error("disk tier pin refused reason=opened read-only");
        return KVT_ERR_INVALID;
    }
    uint32_t id;
    pthread_mutex_lock(&tier->mu);
    entry_t *e = kvt_disk_lookup_resident(tier, key, &id);
    if (e) {
        if (e->pins++ == 0)
            tier->n_pinned++;
        kvt_disk_heap_sync(tier, id);
    }
    pthread_mutex_unlock(&tier->mu);
    return e ? KVT_OK : KVT_ERR_NOT_FOUND;
}

void kvt_disk_tier_unpin(kvt_disk_tier_t *tier, const kvt_block_key_t *key)
{
    uint32_t id;
    pthread_mutex_lock(&tier->mu);
    entry_t *e = kvt_disk_lookup_resident(tier, key, &id);
    if (e && e->pins > 0) {
        if (--e->pins == 0)
            tier->n_pinned--;
        kvt_disk_heap_sync(tier, id);
    }
    pthread_mutex_unlock(&tier->mu);
}

void kvt_disk_tier_stats(kvt_disk_tier_t *tier, kvt_tier_stats_t *stats_p)
{
    pthread_mutex_lock(&tier->mu);
    *stats_p = (kvt_tier_stats_t){
        .blocks = tier->n_blocks, .bytes = tier->used, .capacity_bytes = tier->capacity,
        .hits = tier->c[C_HITS], .misses = tier->c[C_MISSES], .puts = tier->c[C_PUTS],
        .evictions = tier->c[C_EVICTIONS], .corrupt = tier->c[C_CORRUPT],
        .no_parent = tier->c[C_NO_PARENT], .pinned = tier->n_pinned};
    pthread_mutex_unlock(&tier->mu);
}

const kvt_block_identity_t *kvt_disk_tier_identity(const kvt_disk_tier_t *tier)
{
    return &tier->identity;
}
