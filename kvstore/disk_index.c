/* T2 disk tier, the in-memory index: entries, keymap and eviction heap,
 * prefix-closed drops of a block with its descendants, lazily persisted
 * access ticks, and the rebuild of all of it from the meta column family at
 * open.  See disk_tier.c for the states an entry goes through and why. */
#include "kvstore/disk_tierInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <string.h>

static uint64_t meta_sum(const kvt_block_key_t *key, const uint8_t *rec)
{
    uint8_t tmp[KVT_KEY_LEN + META_LEN - 8];
    memcpy(tmp, key->b, KVT_KEY_LEN);
    memcpy(tmp + KVT_KEY_LEN, rec, META_LEN - 8);
    return kvt_xxh3_64(tmp, sizeof(tmp));
}

void kvt_disk_meta_encode(const entry_t *e, uint8_t out[META_LEN])
{
    kvt_le_put32(out, STORE_VERSION);
    kvt_le_put32(out + 4, e->index);
    memcpy(out + 8, e->parent.b, KVT_KEY_LEN);
    kvt_le_put64(out + 40, e->bytes);
    kvt_le_put64(out + 48, e->tick);
    kvt_le_put64(out + 56, meta_sum(&e->key, out));
}

/* Fills e's key, parent, index, bytes and tick; false if the record is not
 * exactly one well-formed record for this key and this tier's image size. */
bool kvt_disk_meta_decode(const kvt_disk_tier_t *tier, const char *key, size_t klen,
                          const char *val, size_t vlen, entry_t *e)
{
    const uint8_t *rec = (const uint8_t *)val;
    if (klen != KVT_KEY_LEN || vlen != META_LEN)
        return false;
    memcpy(e->key.b, key, KVT_KEY_LEN);
    if (kvt_le_get32(rec) != STORE_VERSION || kvt_le_get64(rec + 56) != meta_sum(&e->key, rec))
        return false;
    e->index = kvt_le_get32(rec + 4);
    memcpy(e->parent.b, rec + 8, KVT_KEY_LEN);
    e->bytes = kvt_le_get64(rec + 40);
    e->tick = kvt_le_get64(rec + 48);
    return e->bytes == tier->image_len;
}

/* --- small helpers --- */

kvt_status_t kvt_disk_rdb_fail(const char *what, char *err)
{
    kvt_log_error("disk tier rocksdb call failed op=%s err=\"%s\"", what, err);
    rocksdb_free(err);
    return KVT_ERR_IO;
}

kvt_status_t kvt_disk_idvec_push(idvec_t *v, uint32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 16;
        uint32_t *ids = kvt_realloc("disk tier id list", v->ids, cap * sizeof(*ids));
        if (!ids)
            return KVT_ERR_NOMEM;
        v->ids = ids;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return KVT_OK;
}

void kvt_disk_ev_push(evbuf_t *b, kvt_event_kind_t kind, const entry_t *e)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 8;
        kvt_block_event_t *ev = kvt_realloc("disk tier events", b->ev, cap * sizeof(*ev));
        if (!ev) {
            kvt_log_error("disk tier event lost kind=%d index=%u", (int)kind, e->index);
            return;
        }
        b->ev = ev;
        b->cap = cap;
    }
    b->ev[b->n++] = (kvt_block_event_t){.seq = kvt_event_seq_next(), .kind = kind,
                                        .tier = KVT_TIER_DISK, .key = e->key,
                                        .parent = e->parent, .index = e->index};
}

/* Called with no lock held, as events.h requires. */
void kvt_disk_ev_emit(kvt_disk_tier_t *tier, evbuf_t *b)
{
    for (size_t i = 0; tier->on_event && i < b->n; i++)
        tier->on_event(&b->ev[i], tier->event_arg);
    kvt_free(b->ev);
    memset(b, 0, sizeof(*b));
}

/* --- index: entries, keymap and eviction heap (mutex held) --- */

static kvt_status_t ents_grow(kvt_disk_tier_t *tier)
{
    if (tier->cap >= ENTRIES_MAX)
        return KVT_ERR_FULL;
    uint32_t cap = tier->cap ? 2 * tier->cap : 256;
    entry_t *ents = kvt_realloc("disk tier entries", tier->ents, (size_t)cap * sizeof(*ents));
    if (!ents)
        return KVT_ERR_NOMEM;
    tier->ents = ents;
    uint32_t *pos = kvt_realloc("disk tier heap positions", tier->pos, (size_t)cap * sizeof(*pos));
    if (!pos)
        return KVT_ERR_NOMEM; /* ents grew, which is harmless; cap did not */
    tier->pos = pos;
    for (uint32_t id = cap; id-- > tier->cap;) {
        memset(&ents[id], 0, sizeof(ents[id]));
        ents[id].next_free = tier->free_head;
        pos[id] = KVT_LRU_NONE;
        tier->free_head = id;
    }
    tier->cap = cap;
    return KVT_OK;
}

kvt_status_t kvt_disk_entry_new(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint32_t *id_p)
{
    kvt_status_t st;
    if (tier->free_head == ID_NONE && (st = ents_grow(tier)) != KVT_OK)
        return st;
    uint32_t id = tier->free_head;
    if ((st = kvt_keymap_put(&tier->map, key, id)) != KVT_OK)
        return st;
    entry_t *e = &tier->ents[id];
    tier->free_head = e->next_free;
    memset(e, 0, sizeof(*e));
    e->key = *key;
    e->gen = ++tier->gen;
    *id_p = id;
    return KVT_OK;
}

void kvt_disk_entry_free(kvt_disk_tier_t *tier, uint32_t id)
{
    entry_t *e = &tier->ents[id];
    kvt_lru_heap_remove(&tier->lru, tier->pos, id);
    kvt_keymap_del(&tier->map, &e->key);
    e->state = E_FREE;
    e->dirty = 0;
    e->next_free = tier->free_head;
    tier->free_head = id;
}

entry_t *kvt_disk_lookup(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint32_t *id_p)
{
    uint32_t id;
    if (!kvt_keymap_get(&tier->map, key, &id))
        return NULL;
    if (id_p)
        *id_p = id;
    return &tier->ents[id];
}

entry_t *kvt_disk_lookup_resident(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint32_t *id_p)
{
    entry_t *e = kvt_disk_lookup(tier, key, id_p);
    return e && e->state == E_RESIDENT ? e : NULL;
}

/* Keep the heap holding exactly the evictable entries. */
void kvt_disk_heap_sync(kvt_disk_tier_t *tier, uint32_t id)
{
    entry_t *e = &tier->ents[id];
    bool evictable = e->state == E_RESIDENT && e->pins == 0 && e->n_children == 0;
    bool queued = tier->pos[id] != KVT_LRU_NONE;
    if (evictable && !queued) {
        if (kvt_lru_heap_push(&tier->lru, tier->pos, id, e->tick) != KVT_OK)
            kvt_log_warn("disk tier block stays unevictable id=%u reason=heap allocation", id);
    } else if (!evictable && queued) {
        kvt_lru_heap_remove(&tier->lru, tier->pos, id);
    }
}

void kvt_disk_child_added(kvt_disk_tier_t *tier, uint32_t pid)
{
    tier->ents[pid].n_children++;
    kvt_disk_heap_sync(tier, pid);
}

void kvt_disk_child_removed(kvt_disk_tier_t *tier, const entry_t *child)
{
    uint32_t pid;
    if (child->index == 0 || !kvt_disk_lookup_resident(tier, &child->parent, &pid))
        return;
    if (tier->ents[pid].n_children > 0)
        tier->ents[pid].n_children--;
    kvt_disk_heap_sync(tier, pid);
}

/* RESIDENT -> DELETING: no longer counted, evictable or visible. */
void kvt_disk_entry_unlink(kvt_disk_tier_t *tier, uint32_t id)
{
    entry_t *e = &tier->ents[id];
    kvt_lru_heap_remove(&tier->lru, tier->pos, id);
    if (e->state == E_RESIDENT) {
        tier->used -= e->bytes;
        tier->n_blocks--;
        if (e->pins)
            tier->n_pinned--;
        kvt_disk_child_removed(tier, e);
    }
    e->state = E_DELETING;
}

/* DELETING -> RESIDENT after a failed batch; victims are restored in the
 * reverse of eviction order, so parents come back before their children.  A
 * victim whose parent went meanwhile stays out (an orphan on disk, dropped
 * at the next open). */
void kvt_disk_victims_restore(kvt_disk_tier_t *tier, const idvec_t *victims)
{
    for (size_t i = victims->n; i-- > 0;) {
        uint32_t id = victims->ids[i], pid = ID_NONE;
        entry_t *e = &tier->ents[id];
        if (e->index > 0 && !kvt_disk_lookup_resident(tier, &e->parent, &pid)) {
            kvt_disk_entry_free(tier, id);
            continue;
        }
        e->state = E_RESIDENT;
        tier->used += e->bytes;
        tier->n_blocks++;
        if (pid != ID_NONE)
            kvt_disk_child_added(tier, pid);
        kvt_disk_heap_sync(tier, id);
    }
}

/* Access ticks are persisted lazily: only keys in the dirty list get their
 * meta rewritten, at flush/close or when the list fills, so after a crash
 * the LRU order is approximate.  Runs with the mutex held (see the top). */
void kvt_disk_ticks_flush(kvt_disk_tier_t *tier)
{
    if (tier->n_dirty == 0)
        return;
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    for (uint32_t i = 0; i < tier->n_dirty; i++) {
        uint32_t id;
        entry_t *e = kvt_disk_lookup_resident(tier, &tier->dirty[i], &id);
        if (!e || !e->dirty)
            continue;
        uint8_t rec[META_LEN];
        kvt_disk_meta_encode(e, rec);
        dbkey_t mk = kvt_disk_dbkey(FAM_META, e->key.b);
        rocksdb_writebatch_put(wb, mk.b, DBKEY_LEN, (const char *)rec, META_LEN);
        e->dirty = 0;
    }
    char *err = NULL;
    rocksdb_write(tier->db, tier->wopts, wb, &err);
    if (err)
        kvt_disk_rdb_fail("write access ticks", err); /* approximate order is allowed */
    rocksdb_writebatch_destroy(wb);
    tier->n_dirty = 0;
}

void kvt_disk_touch(kvt_disk_tier_t *tier, uint32_t id)
{
    entry_t *e = &tier->ents[id];
    e->tick = ++tier->tick;
    kvt_lru_heap_update(&tier->lru, tier->pos, id, e->tick);
    if (tier->read_only || e->dirty)
        return;
    e->dirty = 1;
    tier->dirty[tier->n_dirty++] = e->key;
    if (tier->n_dirty == DIRTY_MAX)
        kvt_disk_ticks_flush(tier);
}

/* --- subtrees and drops --- */

/* Ids of root and all its resident or in-flight descendants, descendants
 * before their ancestors.  *writing_p tells whether one of them is a put in
 * flight, which the caller must wait for. */
static kvt_status_t subtree_collect(kvt_disk_tier_t *tier, uint32_t root, idvec_t *out,
                                    bool *writing_p)
{
    kvt_status_t st = KVT_OK;
    *writing_p = false;
    out->n = 0;
    if (tier->ents[root].n_children == 0)
        return kvt_disk_idvec_push(out, root);
    uint32_t *first = kvt_malloc("disk tier children", (size_t)tier->cap * sizeof(*first));
    uint32_t *next = kvt_malloc("disk tier siblings", (size_t)tier->cap * sizeof(*next));
    if (!first || !next) {
        st = KVT_ERR_NOMEM;
        goto out;
    }
    memset(first, 0xff, (size_t)tier->cap * sizeof(*first));
    for (uint32_t id = 0; id < tier->cap; id++) {
        const entry_t *e = &tier->ents[id];
        uint32_t pid;
        if ((e->state != E_RESIDENT && e->state != E_WRITING) || e->index == 0 ||
            !kvt_disk_lookup(tier, &e->parent, &pid))
            continue;
        next[id] = first[pid];
        first[pid] = id;
    }
    /* Pre-order by an explicit stack held in `out` itself, then reversed. */
    if ((st = kvt_disk_idvec_push(out, root)) != KVT_OK)
        goto out;
    for (size_t i = 0; i < out->n; i++) {
        uint32_t id = out->ids[i];
        *writing_p |= tier->ents[id].state == E_WRITING;
        for (uint32_t c = first[id]; c != ID_NONE; c = next[c])
            if ((st = kvt_disk_idvec_push(out, c)) != KVT_OK)
                goto out;
    }
    for (size_t i = 0; i < out->n / 2; i++) {
        uint32_t t = out->ids[i];
        out->ids[i] = out->ids[out->n - 1 - i];
        out->ids[out->n - 1 - i] = t;
    }
out:
    kvt_free(first);
    kvt_free(next);
    return st;
}

/* Marks root's subtree DELETING and records DROPPED events; waits (mutex
 * released) while a child put is in flight so no block lands under a
 * dropped parent. */
kvt_status_t kvt_disk_subtree_unlink(kvt_disk_tier_t *tier, uint32_t root, uint64_t gen,
                                     idvec_t *dels, evbuf_t *evs)
{
    idvec_t sub = {0};
    kvt_status_t st;
    for (;;) {
        if (tier->ents[root].state != E_RESIDENT || tier->ents[root].gen != gen) {
            kvt_free(sub.ids);
            return KVT_ERR_NOT_FOUND;
        }
        bool writing;
        if ((st = subtree_collect(tier, root, &sub, &writing)) != KVT_OK)
            break;
        if (!writing)
            break;
        pthread_cond_wait(&tier->settled, &tier->mu);
    }
    for (size_t i = 0; st == KVT_OK && i < sub.n; i++) {
        if ((st = kvt_disk_idvec_push(dels, sub.ids[i])) != KVT_OK)
            break;
        kvt_disk_ev_push(evs, KVT_EVENT_DROPPED, &tier->ents[sub.ids[i]]);
        kvt_disk_entry_unlink(tier, sub.ids[i]);
    }
    kvt_free(sub.ids);
    return st;
}

/* Deletes the DELETING entries in dels from disk (mutex released), then
 * frees them whatever the outcome: a block left on disk by a failed delete
 * is unreachable now and is checked again on the next open or verify. */
kvt_status_t kvt_disk_dels_commit(kvt_disk_tier_t *tier, idvec_t *dels)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    for (size_t i = 0; i < dels->n; i++) {
        const uint8_t *k = tier->ents[dels->ids[i]].key.b;
        kvt_disk_wb_delete(wb, FAM_BLOCK, k);
        kvt_disk_wb_delete(wb, FAM_META, k);
    }
    pthread_mutex_unlock(&tier->mu);
    char *err = NULL;
    /* Read-only (a tool beside a live node): forget the blocks in this
     * process, leave the disk to the node and to verify --repair. */
    if (!tier->read_only)
        rocksdb_write(tier->db, tier->wopts, wb, &err);
    rocksdb_writebatch_destroy(wb);
    pthread_mutex_lock(&tier->mu);
    for (size_t i = 0; i < dels->n; i++)
        kvt_disk_entry_free(tier, dels->ids[i]);
    pthread_cond_broadcast(&tier->settled);
    return err ? kvt_disk_rdb_fail("delete dropped blocks", err) : KVT_OK;
}

/* A block read back bad: drop it and its descendants (prefix closure).
 * False if the entry is no longer the one that was read. */
bool kvt_disk_block_drop(kvt_disk_tier_t *tier, const kvt_block_key_t *key, uint64_t gen,
                         const char *reason)
{
    char hex[2 * KVT_KEY_LEN + 1];
    idvec_t dels = {0};
    evbuf_t evs = {0};
    uint32_t id;
    kvt_block_key_hex(key, hex);
    pthread_mutex_lock(&tier->mu);
    bool found = kvt_disk_lookup_resident(tier, key, &id) && tier->ents[id].gen == gen;
    if (found) {
        tier->c[C_CORRUPT]++;
        kvt_log_error("disk tier block corrupt, dropping it and its descendants key=%s reason=%s",
                      hex, reason);
        if (kvt_disk_subtree_unlink(tier, id, gen, &dels, &evs) != KVT_OK)
            kvt_log_error("disk tier could not drop every descendant key=%s", hex);
        if (dels.n)
            kvt_disk_dels_commit(tier, &dels);
    }
    pthread_mutex_unlock(&tier->mu);
    kvt_free(dels.ids);
    kvt_disk_ev_emit(tier, &evs);
    return found;
}

/* Prefix closure: an item is rooted if its index is 0 or its parent is
 * rooted.  pid[i] is the parent's item or ID_NONE; state[] comes in with
 * R_SKIP or R_UNKNOWN and leaves with R_ROOTED / R_ORPHAN.  Each item is
 * walked once; a cycle (only possible in forged records) counts as orphan. */
void kvt_disk_closure_mark(uint32_t n, const uint32_t *pid, const uint32_t *idx, uint8_t *state,
                           uint32_t *path)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t np = 0, j = i;
        uint8_t res;
        for (;;) {
            if (state[j] == R_ROOTED || state[j] == R_ORPHAN || state[j] == R_SKIP) {
                res = state[j] == R_ROOTED ? R_ROOTED : R_ORPHAN;
                break;
            }
            if (state[j] == R_VISITING) {
                res = R_ORPHAN;
                break;
            }
            state[j] = R_VISITING;
            path[np++] = j;
            if (idx[j] == 0 || pid[j] == ID_NONE) {
                res = idx[j] == 0 ? R_ROOTED : R_ORPHAN;
                break;
            }
            j = pid[j];
        }
        while (np > 0)
            state[path[--np]] = res;
    }
}

/* Drops entries that break prefix closure, then counts children and fills
 * the heap.  Dropped blocks are deleted from disk through junk. */
static kvt_status_t index_close_prefixes(kvt_disk_tier_t *tier, rocksdb_writebatch_t *junk)
{
    uint32_t n = tier->cap;
    uint32_t *pid = kvt_malloc("disk tier open parents", (size_t)n * sizeof(*pid) + 1);
    uint32_t *idx = kvt_malloc("disk tier open indices", (size_t)n * sizeof(*idx) + 1);
    uint32_t *path = kvt_malloc("disk tier open path", (size_t)n * sizeof(*path) + 1);
    uint8_t *state = kvt_malloc("disk tier open state", (size_t)n + 1);
    kvt_status_t st = pid && idx && path && state ? KVT_OK : KVT_ERR_NOMEM;
    for (uint32_t id = 0; st == KVT_OK && id < n; id++) {
        entry_t *e = &tier->ents[id];
        state[id] = e->state == E_RESIDENT ? R_UNKNOWN : R_SKIP;
        idx[id] = e->index;
        pid[id] = ID_NONE;
        if (e->state == E_RESIDENT && e->index > 0)
            kvt_disk_lookup(tier, &e->parent, &pid[id]);
    }
    if (st == KVT_OK)
        kvt_disk_closure_mark(n, pid, idx, state, path);
    for (uint32_t id = 0; st == KVT_OK && id < n; id++) {
        entry_t *e = &tier->ents[id];
        if (state[id] != R_ORPHAN)
            continue;
        char hex[2 * KVT_KEY_LEN + 1];
        kvt_block_key_hex(&e->key, hex);
        kvt_log_warn("disk tier dropping block at open key=%s index=%u reason=parent absent", hex,
                     e->index);
        kvt_disk_wb_delete(junk, FAM_BLOCK, e->key.b);
        kvt_disk_wb_delete(junk, FAM_META, e->key.b);
        tier->used -= e->bytes;
        tier->n_blocks--;
        kvt_disk_entry_free(tier, id);
    }
    for (uint32_t id = 0; st == KVT_OK && id < n; id++)
        if (state[id] == R_ROOTED && idx[id] > 0)
            tier->ents[pid[id]].n_children++;
    for (uint32_t id = 0; st == KVT_OK && id < n; id++)
        if (state[id] == R_ROOTED)
            kvt_disk_heap_sync(tier, id);
    kvt_free(pid);
    kvt_free(idx);
    kvt_free(path);
    kvt_free(state);
    return st;
}

static kvt_status_t index_add_meta(kvt_disk_tier_t *tier, const char *dbk, size_t dbklen,
                                   const char *v, size_t vlen, rocksdb_writebatch_t *junk)
{
    entry_t rec;
    uint32_t id;
    const char *k = kvt_disk_dbkey_in(dbk, dbklen, FAM_META);
    if (!k || !kvt_disk_meta_decode(tier, k, KVT_KEY_LEN, v, vlen, &rec)) {
        char hex[2 * KVT_KEY_LEN + 1] = "";
        if (k)
            kvt_hex((const uint8_t *)k, KVT_KEY_LEN, hex);
        kvt_log_warn("disk tier dropping block at open key=%s klen=%zu vlen=%zu "
                     "reason=meta record corrupt", hex, dbklen, vlen);
        rocksdb_writebatch_delete(junk, dbk, dbklen);
        if (k)
            kvt_disk_wb_delete(junk, FAM_BLOCK, k);
        return KVT_OK;
    }
    kvt_status_t st = kvt_disk_entry_new(tier, &rec.key, &id);
    if (st != KVT_OK)
        return st;
    entry_t *e = &tier->ents[id];
    e->parent = rec.parent;
    e->index = rec.index;
    e->bytes = rec.bytes;
    e->tick = rec.tick;
    e->state = E_RESIDENT;
    tier->used += e->bytes;
    tier->n_blocks++;
    if (e->tick > tier->tick)
        tier->tick = e->tick;
    return KVT_OK;
}

/* Rebuild the index from meta only.  A meta record whose block is missing
 * is not detected here: RocksDB 7.8 iterators load blob values eagerly, so
 * checking would read every payload.  Puts and evictions write block and
 * meta in one batch, so this takes outside damage; get and verify then
 * find it and drop the block like any corrupt one. */
kvt_status_t kvt_disk_index_load(kvt_disk_tier_t *tier)
{
    rocksdb_writebatch_t *junk = rocksdb_writebatch_create();
    rocksdb_iterator_t *it = rocksdb_create_iterator(tier->db, tier->scan_ropts);
    kvt_status_t st = KVT_OK;
    for (kvt_disk_iter_family(it, FAM_META); st == KVT_OK && kvt_disk_iter_in_family(it, FAM_META);
         rocksdb_iter_next(it)) {
        size_t klen, vlen;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *v = rocksdb_iter_value(it, &vlen);
        st = index_add_meta(tier, k, klen, v, vlen, junk);
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    if (err)
        st = kvt_disk_rdb_fail("scan meta", err);
    if (st == KVT_OK)
        st = index_close_prefixes(tier, junk);
    if (st == KVT_OK && !tier->read_only && rocksdb_writebatch_count(junk) > 0) {
        rocksdb_write(tier->db, tier->wopts, junk, &err);
        if (err)
            st = kvt_disk_rdb_fail("delete dropped blocks at open", err);
    }
    rocksdb_writebatch_destroy(junk);
    return st;
}

void kvt_disk_tier_resident(kvt_disk_tier_t *tier, kvt_block_event_fn fn, void *arg)
{
    pthread_mutex_lock(&tier->mu);
    for (uint32_t id = 0; id < tier->cap; id++) {
        const entry_t *e = &tier->ents[id];
        if (e->state != E_RESIDENT)
            continue;
        kvt_block_event_t ev = {.kind = KVT_EVENT_STORED, .tier = KVT_TIER_DISK, .key = e->key,
                                .parent = e->parent, .index = e->index};
        fn(&ev, arg);
    }
    pthread_mutex_unlock(&tier->mu);
}
