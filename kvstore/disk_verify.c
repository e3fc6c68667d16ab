/* T2 disk tier, scans: foreach lists headers; verify reads every image,
 * checks it against its meta record and the tier identity, finds orphans
 * (prefix closure) and with repair deletes what is bad, with descendants. */
#include "kvstore/disk_tierInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <string.h>

/* --- foreach and verify --- */

kvt_status_t kvt_disk_tier_foreach(kvt_disk_tier_t *tier, kvt_disk_visit_fn fn, void *arg)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator(tier->db, tier->scan_ropts);
    kvt_status_t st = KVT_OK;
    kvt_block_header_t hdr;
    for (kvt_disk_iter_family(it, FAM_BLOCK); st == KVT_OK && kvt_disk_iter_in_family(it, FAM_BLOCK);
         rocksdb_iter_next(it)) {
        size_t dbklen, vlen, hlen;
        const char *dbk = rocksdb_iter_key(it, &dbklen);
        const char *k = kvt_disk_dbkey_in(dbk, dbklen, FAM_BLOCK);
        size_t klen = dbklen - 1;
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vlen);
        if (!k || kvt_block_header_decode(v, vlen, &hdr, &hlen) != KVT_OK ||
            memcmp(hdr.key.b, k, KVT_KEY_LEN) != 0) {
            kvt_log_warn("disk tier foreach skips a bad block klen=%zu vlen=%zu", klen, vlen);
            continue;
        }
        st = fn(&hdr, vlen, arg);
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    if (err) {
        kvt_status_t io = kvt_disk_rdb_fail("scan blocks", err);
        return st == KVT_OK ? io : st;
    }
    return st;
}

enum { V_GOOD, V_BAD, V_ORPHAN, V_META_ONLY };

typedef struct {
    kvt_block_key_t key;
    kvt_block_key_t parent;
    uint32_t index;
    uint8_t kind;
} vrec_t;

typedef struct {
    vrec_t *r;
    size_t n, cap;
    rocksdb_writebatch_t *raw; /* deletes of records whose key is not 32 bytes */
    kvt_disk_verify_report_t rep;
} vscan_t;

static kvt_status_t vscan_push(vscan_t *vs, const vrec_t *rec)
{
    if (vs->n == vs->cap) {
        size_t cap = vs->cap ? 2 * vs->cap : 256;
        vrec_t *r = kvt_realloc("disk tier verify records", vs->r, cap * sizeof(*r));
        if (!r)
            return KVT_ERR_NOMEM;
        vs->r = r;
        vs->cap = cap;
    }
    vs->r[vs->n++] = *rec;
    return KVT_OK;
}

/* Delete a record whose block key (after the family byte) is malformed. */
static void raw_delete(vscan_t *vs, char fam, const char *k, size_t klen)
{
    char buf[256];
    if (klen + 1 > sizeof(buf))
        return; /* RocksDB keys that long are not ours to have written */
    buf[0] = fam;
    memcpy(buf + 1, k, klen);
    rocksdb_writebatch_delete(vs->raw, buf, klen + 1);
}

static int keycmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

static void verify_bad(const char *what, const kvt_block_key_t *key, const char *reason)
{
    char hex[2 * KVT_KEY_LEN + 1];
    kvt_block_key_hex(key, hex);
    kvt_log_warn("disk tier verify found a bad %s key=%s reason=%s", what, hex, reason);
}

/* One block image (and its meta record, NULL if none). */
static kvt_status_t verify_block(kvt_disk_tier_t *tier, vscan_t *vs, const char *k, size_t klen,
                                 const uint8_t *img, size_t len, const char *m, size_t mlen)
{
    vs->rep.blocks++;
    vs->rep.bytes += len;
    if (klen != KVT_KEY_LEN) {
        kvt_log_warn("disk tier verify found a block with a bad key klen=%zu", klen);
        vs->rep.corrupt++;
        raw_delete(vs, FAM_BLOCK, k, klen);
        raw_delete(vs, FAM_META, k, klen);
        return KVT_OK;
    }
    vrec_t rec = {.kind = V_GOOD};
    memcpy(rec.key.b, k, KVT_KEY_LEN);
    kvt_block_header_t hdr;
    entry_t me;
    size_t hlen;
    const char *reason = NULL;
    if (kvt_disk_image_check(tier, &rec.key, img, len, &hdr, &hlen, &reason) != KVT_OK)
        ;
    else if (!m)
        reason = "meta record missing";
    else if (!kvt_disk_meta_decode(tier, k, klen, m, mlen, &me))
        reason = "meta record corrupt";
    else if (!kvt_block_key_eq(&me.parent, &hdr.parent) || me.index != hdr.index ||
             me.bytes != len)
        reason = "meta record differs from the block";
    if (reason) {
        verify_bad("block", &rec.key, reason);
        vs->rep.corrupt++;
        rec.kind = V_BAD;
    } else {
        rec.parent = hdr.parent;
        rec.index = hdr.index;
    }
    return vscan_push(vs, &rec);
}

/* A meta record without a block image: the index names a block that is not
 * there, which counts as corruption (but not as a block). */
static kvt_status_t verify_meta_only(kvt_disk_tier_t *tier, vscan_t *vs, const char *k,
                                     size_t klen)
{
    vs->rep.corrupt++;
    if (klen != KVT_KEY_LEN) {
        kvt_log_warn("disk tier verify found a meta record with a bad key klen=%zu", klen);
        raw_delete(vs, FAM_META, k, klen);
        return KVT_OK;
    }
    vrec_t rec = {.kind = V_META_ONLY};
    memcpy(rec.key.b, k, KVT_KEY_LEN);
    verify_bad("meta record", &rec.key, "block image missing");
    return vscan_push(vs, &rec);
}

/* Merge-join of blocks and meta, both in key order, on one snapshot so a
 * concurrent put is seen in both or in neither. */
static kvt_status_t verify_scan(kvt_disk_tier_t *tier, vscan_t *vs)
{
    const rocksdb_snapshot_t *snap = rocksdb_create_snapshot(tier->db);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(ro, 0);
    rocksdb_readoptions_set_snapshot(ro, snap);
    rocksdb_iterator_t *bi = rocksdb_create_iterator(tier->db, ro);
    rocksdb_iterator_t *mi = rocksdb_create_iterator(tier->db, ro);
    kvt_status_t st = KVT_OK;
    kvt_disk_iter_family(bi, FAM_BLOCK);
    kvt_disk_iter_family(mi, FAM_META);
    while (st == KVT_OK &&
           (kvt_disk_iter_in_family(bi, FAM_BLOCK) || kvt_disk_iter_in_family(mi, FAM_META))) {
        size_t bkl = 0, mkl = 0, bvl = 0, mvl = 0;
        /* Keys without their family byte, so both sides compare as block keys. */
        const char *bk = kvt_disk_iter_in_family(bi, FAM_BLOCK) ? rocksdb_iter_key(bi, &bkl) : NULL;
        const char *mk = kvt_disk_iter_in_family(mi, FAM_META) ? rocksdb_iter_key(mi, &mkl) : NULL;
        if (bk)
            bk++, bkl--;
        if (mk)
            mk++, mkl--;
        int c = !bk ? 1 : !mk ? -1 : keycmp(bk, bkl, mk, mkl);
        if (c > 0) {
            st = verify_meta_only(tier, vs, mk, mkl);
            rocksdb_iter_next(mi);
            continue;
        }
        const uint8_t *bv = (const uint8_t *)rocksdb_iter_value(bi, &bvl);
        const char *mv = c == 0 ? rocksdb_iter_value(mi, &mvl) : NULL;
        st = verify_block(tier, vs, bk, bkl, bv, bvl, mv, mvl);
        rocksdb_iter_next(bi);
        if (c == 0)
            rocksdb_iter_next(mi);
    }
    char *berr = NULL, *merr = NULL;
    rocksdb_iter_get_error(bi, &berr);
    rocksdb_iter_get_error(mi, &merr);
    rocksdb_iter_destroy(bi);
    rocksdb_iter_destroy(mi);
    rocksdb_readoptions_destroy(ro);
    rocksdb_release_snapshot(tier->db, snap);
    if (berr)
        st = kvt_disk_rdb_fail("verify scan blocks", berr);
    if (merr)
        st = kvt_disk_rdb_fail("verify scan meta", merr);
    return st;
}

/* Good blocks whose chain does not reach an index-0 block through good
 * blocks are orphans. */
static kvt_status_t verify_closure(vscan_t *vs)
{
    kvt_keymap_t good;
    uint32_t n = (uint32_t)vs->n;
    kvt_status_t st = kvt_keymap_init(&good, n + 1);
    if (st != KVT_OK)
        return st;
    uint32_t *pid = kvt_malloc("disk tier verify parents", (size_t)n * sizeof(*pid) + 1);
    uint32_t *idx = kvt_malloc("disk tier verify indices", (size_t)n * sizeof(*idx) + 1);
    uint32_t *path = kvt_malloc("disk tier verify path", (size_t)n * sizeof(*path) + 1);
    uint8_t *state = kvt_malloc("disk tier verify state", (size_t)n + 1);
    if (!pid || !idx || !path || !state)
        st = KVT_ERR_NOMEM;
    for (uint32_t i = 0; st == KVT_OK && i < n; i++)
        if (vs->r[i].kind == V_GOOD)
            st = kvt_keymap_put(&good, &vs->r[i].key, i);
    for (uint32_t i = 0; st == KVT_OK && i < n; i++) {
        state[i] = vs->r[i].kind == V_GOOD ? R_UNKNOWN : R_SKIP;
        idx[i] = vs->r[i].index;
        if (!kvt_keymap_get(&good, &vs->r[i].parent, &pid[i]))
            pid[i] = ID_NONE;
    }
    if (st == KVT_OK)
        kvt_disk_closure_mark(n, pid, idx, state, path);
    for (uint32_t i = 0; st == KVT_OK && i < n; i++) {
        if (state[i] == R_ROOTED) {
            vs->rep.ok++;
        } else if (vs->r[i].kind == V_GOOD) {
            vs->rep.orphans++;
            vs->r[i].kind = V_ORPHAN;
            verify_bad("block", &vs->r[i].key, "parent absent (orphan)");
        }
    }
    kvt_free(pid);
    kvt_free(idx);
    kvt_free(path);
    kvt_free(state);
    kvt_keymap_cleanup(&good);
    return st;
}

/* Deletes every bad record with its descendants in the index.  Keys the
 * index does not hold get a DELETING marker entry, so a put of the same key
 * waits for the delete instead of being overtaken by it.  Mutex held. */
static kvt_status_t verify_repair_locked(kvt_disk_tier_t *tier, vscan_t *vs, idvec_t *dels,
                                         evbuf_t *evs, uint64_t *meta_only_p)
{
    kvt_status_t st = KVT_OK;
    for (size_t i = 0; st == KVT_OK && i < vs->n; i++) {
        const vrec_t *r = &vs->r[i];
        if (r->kind == V_GOOD)
            continue;
        uint32_t id;
        entry_t *e = kvt_disk_lookup(tier, &r->key, &id);
        size_t before = dels->n;
        if (e && e->state == E_RESIDENT) {
            if (r->kind == V_BAD || r->kind == V_META_ONLY)
                tier->c[C_CORRUPT]++;
            st = kvt_disk_subtree_unlink(tier, id, e->gen, dels, evs);
            if (st == KVT_ERR_NOT_FOUND)
                st = KVT_OK; /* went while we waited */
        } else if (!e && (st = kvt_disk_entry_new(tier, &r->key, &id)) == KVT_OK) {
            tier->ents[id].state = E_DELETING;
            if ((st = kvt_disk_idvec_push(dels, id)) != KVT_OK)
                kvt_disk_entry_free(tier, id);
        }
        if (r->kind == V_META_ONLY && dels->n > before)
            (*meta_only_p)++;
    }
    if (dels->n) {
        kvt_status_t cst = kvt_disk_dels_commit(tier, dels);
        st = st == KVT_OK ? cst : st;
    }
    return st;
}

static kvt_status_t verify_repair(kvt_disk_tier_t *tier, vscan_t *vs)
{
    idvec_t dels = {0};
    evbuf_t evs = {0};
    uint64_t meta_only = 0;
    pthread_mutex_lock(&tier->mu);
    kvt_status_t st = verify_repair_locked(tier, vs, &dels, &evs, &meta_only);
    pthread_mutex_unlock(&tier->mu);
    vs->rep.repaired += dels.n - meta_only;
    kvt_free(dels.ids);
    kvt_disk_ev_emit(tier, &evs);
    int raw = rocksdb_writebatch_count(vs->raw);
    if (raw > 0) {
        char *err = NULL;
        rocksdb_write(tier->db, tier->wopts, vs->raw, &err);
        if (err)
            return kvt_disk_rdb_fail("repair delete bad keys", err);
    }
    return st;
}

kvt_status_t kvt_disk_tier_verify(kvt_disk_tier_t *tier, bool repair,
                                  kvt_disk_verify_report_t *report_p)
{
    if (repair && tier->read_only) {
        kvt_log_error("disk tier verify cannot repair reason=opened read-only");
        return KVT_ERR_INVALID;
    }
    vscan_t vs = {.raw = rocksdb_writebatch_create()};
    kvt_status_t st = verify_scan(tier, &vs);
    if (st == KVT_OK)
        st = verify_closure(&vs);
    if (st == KVT_OK && repair)
        st = verify_repair(tier, &vs);
    if (st == KVT_OK)
        *report_p = vs.rep;
    kvt_log_info("disk tier verify blocks=%llu ok=%llu corrupt=%llu orphans=%llu repaired=%llu "
                 "status=%s", (unsigned long long)vs.rep.blocks, (unsigned long long)vs.rep.ok,
                 (unsigned long long)vs.rep.corrupt, (unsigned long long)vs.rep.orphans,
                 (unsigned long long)vs.rep.repaired, kvt_status_str(st));
    rocksdb_writebatch_destroy(vs.raw);
    kvt_free(vs.r);
    return st;
}
