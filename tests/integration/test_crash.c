/* Crash safety of the disk tier: a forked writer puts blocks continuously
 * through the tier (write-behind, evictions included) and is SIGKILLed at
 * a random moment, over many cycles.  After each kill the DB must open,
 * verify clean (no corrupt block, prefix-closed), and every block present
 * must read back with the payload that was written for its key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kvstore/tier.h"
#include "tests/support/testutil.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#define CYCLES 20
#define DISK_BLOCKS 300 /* capacity, so evictions run while we kill */

static kvt_block_identity_t g_id;

static uint64_t image_bytes(void)
{
    return kvt_block_header_size(g_id.layout.block_tokens) + tu_payload_len(&g_id);
}

/* The child: put chains forever (until killed). */
static void writer(const char *dir, unsigned cycle)
{
    kvt_tier_params_t p = {.data_dir = dir, .identity = &g_id,
                           .host_capacity_bytes = 64 * tu_payload_len(&g_id),
                           .disk_capacity_bytes = DISK_BLOCKS * image_bytes(),
                           .write_queue_depth = 16};
    kvt_tier_t *tier = NULL;
    if (kvt_tier_open(&p, &tier) != KVT_OK)
        _exit(3);
    tu_chain_t prev = {.n = 0};
    for (uint32_t round = 0;; round++) {
        tu_chain_t c;
        int share = prev.n ? (int)(round % (unsigned)prev.n) : 0;
        tu_chain_make(&c, &g_id, 16, cycle * 100000u + round, prev.n ? &prev : NULL, share);
        for (int i = 0; i < c.n; i++)
            if (kvt_tier_put(tier, &c.hdr[i], c.payload[i]) != KVT_OK)
                break;
        if (round % 7 == 0)
            kvt_tier_flush(tier);
        tu_chain_free(&prev);
        prev = c;
    }
}

typedef struct {
    kvt_disk_tier_t *disk;
    uint64_t checked;
    uint64_t bad;
} check_ctx_t;

static kvt_status_t check_block(const kvt_block_header_t *hdr, uint64_t image, void *arg)
{
    (void)image;
    check_ctx_t *ctx = arg;
    uint8_t *buf = malloc(tu_payload_len(&g_id));
    kvt_block_header_t h;
    kvt_status_t st = kvt_disk_tier_get(ctx->disk, &hdr->key, &h, buf, tu_payload_len(&g_id));
    if (st != KVT_OK || !tu_payload_ok(&g_id, &hdr->key, buf))
        ctx->bad++;
    ctx->checked++;
    free(buf);
    return KVT_OK;
}

/* Checks the DB after a kill; a writer killed before its first open
 * created the DB leaves none, which is only fine until one has existed. */
static uint64_t check_db(const char *dir, bool *seen_db)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/t2", dir);
    kvt_disk_tier_params_t p = {.path = path, .identity = &g_id,
                                .capacity_bytes = DISK_BLOCKS * image_bytes()};
    kvt_disk_tier_t *disk = NULL;
    kvt_status_t st = kvt_disk_tier_open(&p, &disk);
    if (st == KVT_ERR_NOT_FOUND && !*seen_db)
        return 0;
    assert_int_equal(st, KVT_OK);
    *seen_db = true;
    kvt_disk_verify_report_t r;
    assert_int_equal(kvt_disk_tier_verify(disk, false, &r), KVT_OK);
    assert_int_equal(r.corrupt, 0);
    assert_int_equal(r.orphans, 0);
    assert_int_equal(r.ok, r.blocks);
    check_ctx_t ctx = {.disk = disk};
    assert_int_equal(kvt_disk_tier_foreach(disk, check_block, &ctx), KVT_OK);
    assert_int_equal(ctx.bad, 0);
    assert_int_equal(ctx.checked, r.blocks);
    kvt_tier_stats_t s;
    kvt_disk_tier_stats(disk, &s);
    assert_int_equal(s.blocks, r.blocks);
    kvt_disk_tier_close(disk);
    return r.blocks;
}

static void test_sigkill_cycles(void **state)
{
    (void)state;
    char *dir = tu_tmpdir("crash");
    unsigned seed = (unsigned)time(NULL);
    const char *env = getenv("KVT_CRASH_SEED");
    if (env)
        seed = (unsigned)strtoul(env, NULL, 10);
    print_message("crash seed=%u (KVT_CRASH_SEED replays)\n", seed);
    uint64_t max_blocks = 0;
    bool seen_db = false;
    for (unsigned cycle = 0; cycle < CYCLES; cycle++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            writer(dir, cycle);
        /* 30..400 ms: inside open, mid-put, mid-flush, mid-eviction. */
        struct timespec ts = {0, (30 + rand_r(&seed) % 370) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        assert_true(WIFSIGNALED(status)); /* it was still running: a real crash */
        uint64_t n = check_db(dir, &seen_db);
        if (n > max_blocks)
            max_blocks = n;
    }
    print_message("crash cycles=%d max_blocks_after_kill=%llu\n", CYCLES,
                  (unsigned long long)max_blocks);
    assert_true(max_blocks > 0); /* the writer did get blocks to disk */
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    g_id = tu_identity();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_cycles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
