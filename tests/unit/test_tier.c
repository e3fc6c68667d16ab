/* The tier (T1 over T2): write-behind reaches disk, reopen serves from
 * disk and promotes, longest_prefix reports tiers, pin promotes, a T1-only
 * pin never reads the disk, a tiny T1 still stores everything, events
 * fire for both tiers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kvstore/tier.h"
#include "tests/support/testutil.h"

#include <pthread.h>
#include <semaphore.h>
#include <unistd.h>

static kvt_block_identity_t g_id;

typedef struct {
    int stored[3];
    int evicted[3];
} event_count_t;

static void count_event(const kvt_block_event_t *ev, void *arg)
{
    event_count_t *c = arg;
    if (ev->kind == KVT_EVENT_STORED)
        c->stored[ev->tier]++;
    else if (ev->kind == KVT_EVENT_EVICTED)
        c->evicted[ev->tier]++;
}

static kvt_tier_t *open_tier(const char *dir, uint32_t host_slots, bool with_identity,
                             event_count_t *events)
{
    kvt_tier_params_t p = {
        .data_dir = dir, .identity = with_identity ? &g_id : NULL,
        .host_capacity_bytes = (uint64_t)host_slots * tu_payload_len(&g_id),
        .write_queue_depth = 2, .on_event = events ? count_event : NULL, .event_arg = events,
    };
    kvt_tier_t *tier = NULL;
    assert_int_equal(kvt_tier_open(&p, &tier), KVT_OK);
    return tier;
}

static kvt_block_key_t *keys_of(const tu_chain_t *c)
{
    kvt_block_key_t *keys = malloc(sizeof(*keys) * (size_t)c->n);
    for (int i = 0; i < c->n; i++)
        keys[i] = c->hdr[i].key;
    return keys;
}

static void test_write_behind_and_reopen(void **state)
{
    (void)state;
    char *dir = tu_tmpdir("tier");
    event_count_t ev;
    memset(&ev, 0, sizeof(ev));
    kvt_tier_t *tier = open_tier(dir, 64, true, &ev);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 10, 1, NULL, 0);
    for (int i = 0; i < c.n; i++)
        assert_int_equal(kvt_tier_put(tier, &c.hdr[i], c.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(tier), KVT_OK);
    kvt_tier_stats_all_t s;
    kvt_tier_stats(tier, &s);
    assert_int_equal(s.written, 10);
    assert_int_equal(s.queued, 0);
    assert_int_equal(s.disk.blocks, 10);
    assert_int_equal(ev.stored[KVT_TIER_HOST], 10);
    assert_int_equal(ev.stored[KVT_TIER_DISK], 10);
    kvt_tier_close(tier);

    tier = open_tier(dir, 64, false, NULL); /* adopts the stored identity */
    kvt_block_key_t *keys = keys_of(&c);
    kvt_tier_id_t where[10];
    size_t n = 0;
    assert_int_equal(kvt_tier_longest_prefix(tier, keys, 10, where, &n), KVT_OK);
    assert_int_equal(n, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(where[i], KVT_TIER_DISK);
    uint8_t *buf = malloc(tu_payload_len(&g_id));
    kvt_block_header_t h;
    kvt_tier_id_t from;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(kvt_tier_get(tier, &keys[i], &h, buf, tu_payload_len(&g_id), &from), KVT_OK);
        assert_int_equal(from, KVT_TIER_DISK);
        assert_true(tu_payload_ok(&g_id, &keys[i], buf));
    }
    assert_int_equal(kvt_tier_get(tier, &keys[0], &h, buf, tu_payload_len(&g_id), &from), KVT_OK);
    assert_int_equal(from, KVT_TIER_HOST);
    assert_int_equal(kvt_tier_longest_prefix(tier, keys, 10, where, &n), KVT_OK);
    assert_int_equal(n, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(where[i], i < 6 ? KVT_TIER_HOST : KVT_TIER_DISK);
    /* Pin promotes the next block of the chain. */
    kvt_block_view_t v;
    assert_int_equal(kvt_tier_pin(tier, &keys[6], &v), KVT_OK);
    assert_true(tu_payload_ok(&g_id, &keys[6], v.payload));
    kvt_tier_unpin(tier, &v);
    assert_true(kvt_host_pool_contains(kvt_tier_host(tier), &keys[6]));
    /* A chain that branches off after 3 blocks shares exactly 3. */
    tu_chain_t d;
    tu_chain_make(&d, &g_id, 8, 2, &c, 3);
    kvt_block_key_t *dkeys = keys_of(&d);
    assert_int_equal(kvt_tier_longest_prefix(tier, dkeys, 8, NULL, &n), KVT_OK);
    assert_int_equal(n, 3);
    free(dkeys);
    tu_chain_free(&d);
    free(keys);
    free(buf);
    tu_chain_free(&c);
    kvt_tier_close(tier);
    tu_rmtree(dir);
    free(dir);
}

/* pin_resident pins what T1 holds and says which of the rest T2 has,
 * without promoting it; pin_promote then promotes, once. */
static void test_pin_resident_and_promote(void **state)
{
    (void)state;
    char *dir = tu_tmpdir("tier-resident");
    kvt_tier_t *tier = open_tier(dir, 64, true, NULL);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 4, 3, NULL, 0);
    for (int i = 0; i < c.n; i++)
        assert_int_equal(kvt_tier_put(tier, &c.hdr[i], c.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(tier), KVT_OK);
    kvt_tier_close(tier);
    tier = open_tier(dir, 64, false, NULL); /* T1 empty, all in T2 */
    kvt_host_pool_t *host = kvt_tier_host(tier);
    kvt_block_view_t v, w;
    assert_int_equal(kvt_tier_pin_resident(tier, &c.hdr[0].key, &v), KVT_ERR_AGAIN);
    assert_false(kvt_host_pool_contains(host, &c.hdr[0].key)); /* nothing was read */
    kvt_block_key_t nobody = c.hdr[0].key;
    nobody.b[5] ^= 1;
    assert_int_equal(kvt_tier_pin_resident(tier, &nobody, &v), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_tier_pin_promote(tier, &nobody, &v), KVT_ERR_NOT_FOUND);

    kvt_tier_stats_all_t s0, s1;
    kvt_tier_stats(tier, &s0);
    assert_int_equal(kvt_tier_pin_promote(tier, &c.hdr[0].key, &v), KVT_OK);
    assert_true(tu_payload_ok(&g_id, &c.hdr[0].key, v.payload));
    kvt_tier_stats(tier, &s1);
    assert_int_equal(s1.disk.hits, s0.disk.hits + 1);
    assert_int_equal(s1.host.misses, s0.host.misses); /* pin_resident counted it */
    /* Resident now: both pin it from T1, with no disk read. */
    assert_int_equal(kvt_tier_pin_resident(tier, &c.hdr[0].key, &w), KVT_OK);
    assert_int_equal(w.slot, v.slot);
    kvt_tier_unpin(tier, &w);
    assert_int_equal(kvt_tier_pin_promote(tier, &c.hdr[0].key, &w), KVT_OK);
    assert_int_equal(w.slot, v.slot);
    kvt_tier_unpin(tier, &w);
    kvt_tier_stats(tier, &s0);
    assert_int_equal(s0.disk.hits, s1.disk.hits);
    assert_int_equal(s0.host.pinned, 1);
    kvt_tier_unpin(tier, &v);
    kvt_tier_stats(tier, &s0);
    assert_int_equal(s0.host.pinned, 0);
    tu_chain_free(&c);
    kvt_tier_close(tier);
    tu_rmtree(dir);
    free(dir);
}

static void test_small_host_pool_still_persists(void **state)
{
    (void)state;
    char *dir = tu_tmpdir("tier-small");
    kvt_tier_t *tier = open_tier(dir, 3, true, NULL);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 20, 5, NULL, 0);
    for (int i = 0; i < c.n; i++)
        assert_int_equal(kvt_tier_put(tier, &c.hdr[i], c.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(tier), KVT_OK);
    kvt_tier_stats_all_t s;
    kvt_tier_stats(tier, &s);
    assert_int_equal(s.disk.blocks, 20);
    assert_true(s.host.blocks <= 3);
    assert_int_equal(s.write_failed, 0);
    /* Every block is readable and correct, wherever it lives. */
    uint8_t *buf = malloc(tu_payload_len(&g_id));
    kvt_block_header_t h;
    for (int i = 0; i < c.n; i++) {
        assert_int_equal(kvt_tier_get(tier, &c.hdr[i].key, &h, buf, tu_payload_len(&g_id), NULL),
                         KVT_OK);
        assert_true(tu_payload_ok(&g_id, &c.hdr[i].key, buf));
    }
    free(buf);
    tu_chain_free(&c);
    kvt_tier_close(tier);
    tu_rmtree(dir);
    free(dir);
}

static void test_identity_mismatch(void **state)
{
    (void)state;
    char *dir = tu_tmpdir("tier-id");
    kvt_tier_close(open_tier(dir, 4, true, NULL));
    kvt_block_identity_t other = g_id;
    other.fingerprint[5] ^= 1;
    kvt_tier_params_t p = {.data_dir = dir, .identity = &other,
                           .host_capacity_bytes = 4 * tu_payload_len(&g_id)};
    kvt_tier_t *tier = NULL;
    assert_int_equal(kvt_tier_open(&p, &tier), KVT_ERR_MISMATCH);
    p.host_capacity_bytes = 0;
    assert_int_equal(kvt_tier_open(&p, &tier), KVT_ERR_INVALID);
    tu_rmtree(dir);
    free(dir);
}

/* A child can be queued before its parent (the thread that stored the
 * parent in T1 has not queued it yet); T2 must still get the whole chain. */
static void test_child_queued_before_parent(void **state)
{
    (void)state;
    char *dir = tu_tmpdir("tier-order");
    kvt_tier_t *tier = open_tier(dir, 64, true, NULL);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 3, 9, NULL, 0);
    /* "Thread X" stored block 0 in T1 and was preempted before queueing. */
    assert_int_equal(kvt_host_pool_put(kvt_tier_host(tier), &c.hdr[0], c.payload[0]), KVT_OK);
    assert_int_equal(kvt_tier_put(tier, &c.hdr[1], c.payload[1]), KVT_OK);
    assert_int_equal(kvt_tier_put(tier, &c.hdr[2], c.payload[2]), KVT_OK);
    assert_int_equal(kvt_tier_flush(tier), KVT_OK);
    for (int i = 0; i < 3; i++)
        assert_true(kvt_disk_tier_contains(kvt_tier_disk(tier), &c.hdr[i].key));
    kvt_tier_stats_all_t s;
    kvt_tier_stats(tier, &s);
    assert_int_equal(s.write_failed, 0);
    tu_chain_free(&c);
    kvt_tier_close(tier);
    tu_rmtree(dir);
    free(dir);
}

typedef struct {
    kvt_tier_t *tier;
    tu_chain_t *chain;
} filler_t;

/* Like prefill workers sharing a prompt: store whatever is missing. */
static void *fill_missing(void *arg)
{
    filler_t *f = arg;
    kvt_block_key_t *keys = keys_of(f->chain);
    for (;;) {
        size_t n = 0;
        kvt_tier_longest_prefix(f->tier, keys, (size_t)f->chain->n, NULL, &n);
        if (n >= (size_t)f->chain->n)
            break;
        kvt_tier_put(f->tier, &f->chain->hdr[n], f->chain->payload[n]);
    }
    free(keys);
    return NULL;
}

static void test_racing_producers_persist_everything(void **state)
{
    (void)state;
    for (int run = 0; run < 20; run++) {
        char *dir = tu_tmpdir("tier-race");
        kvt_tier_params_t p = {.data_dir = dir, .identity = &g_id,
                               .host_capacity_bytes = 64 * tu_payload_len(&g_id),
                               .write_queue_depth = 1};
        kvt_tier_t *tier = NULL;
        assert_int_equal(kvt_tier_open(&p, &tier), KVT_OK);
        tu_chain_t c;
        tu_chain_make(&c, &g_id, 32, 100u + (uint32_t)run, NULL, 0);
        filler_t f = {.tier = tier, .chain = &c};
        pthread_t th[4];
        for (int i = 0; i < 4; i++)
            pthread_create(&th[i], NULL, fill_missing, &f);
        for (int i = 0; i < 4; i++)
            pthread_join(th[i], NULL);
        assert_int_equal(kvt_tier_flush(tier), KVT_OK);
        kvt_tier_stats_all_t s;
        kvt_tier_stats(tier, &s);
        assert_int_equal(s.disk.blocks, 32);
        assert_int_equal(s.write_failed, 0);
        tu_chain_free(&c);
        kvt_tier_close(tier);
        tu_rmtree(dir);
        free(dir);
    }
}

/* --- close while a put waits on the full queue --- */

static sem_t g_gate;
static int g_disk_stored;

static void gate_first_disk_write(const kvt_block_event_t *ev, void *arg)
{
    (void)arg;
    if (ev->tier == KVT_TIER_DISK && ev->kind == KVT_EVENT_STORED && g_disk_stored++ == 0)
        sem_wait(&g_gate); /* a slow disk: the writer sits on block 0 */
}

typedef struct {
    kvt_tier_t *tier;
    tu_chain_t *chain;
    kvt_status_t st;
} waiter_t;

static void *put_block2(void *arg)
{
    waiter_t *w = arg;
    w->st = kvt_tier_put(w->tier, &w->chain->hdr[2], w->chain->payload[2]);
    return NULL;
}

static void *open_gate_later(void *arg)
{
    (void)arg;
    usleep(50000);
    sem_post(&g_gate);
    return NULL;
}

static void test_close_wakes_waiting_put(void **state)
{
    (void)state;
    sem_init(&g_gate, 0, 0);
    g_disk_stored = 0;
    char *dir = tu_tmpdir("tier-close");
    kvt_tier_params_t p = {.data_dir = dir, .identity = &g_id, .write_queue_depth = 1,
                           .host_capacity_bytes = 16 * tu_payload_len(&g_id),
                           .on_event = gate_first_disk_write};
    kvt_tier_t *tier = NULL;
    assert_int_equal(kvt_tier_open(&p, &tier), KVT_OK);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 3, 77, NULL, 0);
    assert_int_equal(kvt_tier_put(tier, &c.hdr[0], c.payload[0]), KVT_OK);
    kvt_tier_stats_all_t s;
    do { /* the writer has taken block 0 off the ring */
        usleep(1000);
        kvt_tier_stats(tier, &s);
    } while (g_disk_stored == 0);
    assert_int_equal(kvt_tier_put(tier, &c.hdr[1], c.payload[1]), KVT_OK); /* ring full */
    waiter_t w = {.tier = tier, .chain = &c, .st = KVT_OK};
    pthread_t waiter, opener;
    pthread_create(&waiter, NULL, put_block2, &w);
    do {
        usleep(1000);
        kvt_tier_stats(tier, &s);
    } while (s.waits == 0);
    pthread_create(&opener, NULL, open_gate_later, NULL);
    kvt_tier_close(tier); /* must wait for the woken put before freeing */
    pthread_join(waiter, NULL);
    pthread_join(opener, NULL);
    assert_int_equal(w.st, KVT_ERR_CLOSED);
    /* Blocks 0 and 1 were queued before close: they reached the disk. */
    kvt_disk_tier_params_t dp = {.identity = &g_id};
    char path[4096];
    snprintf(path, sizeof(path), "%s/t2", dir);
    dp.path = path;
    kvt_disk_tier_t *disk = NULL;
    assert_int_equal(kvt_disk_tier_open(&dp, &disk), KVT_OK);
    assert_true(kvt_disk_tier_contains(disk, &c.hdr[0].key));
    assert_true(kvt_disk_tier_contains(disk, &c.hdr[1].key));
    kvt_disk_tier_close(disk);
    tu_chain_free(&c);
    sem_destroy(&g_gate);
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    g_id = tu_identity();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_behind_and_reopen),
        cmocka_unit_test(test_pin_resident_and_promote),
        cmocka_unit_test(test_small_host_pool_still_persists),
        cmocka_unit_test(test_identity_mismatch),
        cmocka_unit_test(test_child_queued_before_parent),
        cmocka_unit_test(test_racing_producers_persist_everything),
        cmocka_unit_test(test_close_wakes_waiting_put),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
