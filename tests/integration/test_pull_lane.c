/* Same-host lanes (net/lane.c) between real processes on 127.0.0.1: the
 * real `kvtier kv serve` daemon and clients in this process or in child
 * processes.  Blocks are 512 KiB, so a pull over a lane reads them
 * straight out of the daemon's memory (kvt_net_local_read), or, with
 * KVT_NET_LOCAL_READS=0, gets replies by rendezvous over the lane's shared
 * memory.  A pull over a lane is right and says it used one (lanes are
 * the default: main unsets KVT_NET_LANES) and none with KVT_NET_LANES=0;
 * clients SIGKILLed at staggered moments of their transfers leave the
 * daemon serving (after rebuilding its UCX worker if
 * a kill wedged it, net/heal.c); a daemon SIGKILLed mid-transfer
 * fails the client's pulls within their timeout with no wrong data; and
 * connecting over and over from one worker does not pile up mappings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/time.h"
#include "kvstore/block_client.h"
#include "kvstore/tier.h"
#include "tests/support/kv_serve.h"
#include "tests/support/testutil.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#define TIMEOUT_MS 3000
#define CONNECT_MS 10000 /* a loaded 2-core machine can take seconds to wire */
#define N_BLOCKS 16

static kvt_block_identity_t g_id;

typedef struct {
    char *dir;
    tu_chain_t chain;
    pid_t daemon;
    char addr[64];
    kvt_net_worker_t *worker;
    kvt_block_client_t *client;
} fx_t;

/* 8 layers x 4 kv heads x head_dim 128, B = 16, f32: 512 KiB payloads. */
static kvt_block_identity_t big_identity(void)
{
    kvt_block_identity_t id = tu_identity();
    id.layout = (kvt_block_layout_t){.n_layers = 8, .n_kv_heads = 4, .head_dim = 128,
                                     .block_tokens = 16, .dtype = KVT_DTYPE_F32};
    return id;
}

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    fx->dir = tu_tmpdir("lane");
    tu_chain_make(&fx->chain, &g_id, N_BLOCKS, 7, NULL, 0);
    kvt_tier_params_t p = {.data_dir = fx->dir, .identity = &g_id,
                           .host_capacity_bytes = 4 * tu_payload_len(&g_id)};
    kvt_tier_t *tier;
    assert_int_equal(kvt_tier_open(&p, &tier), KVT_OK);
    for (int i = 0; i < N_BLOCKS; i++)
        assert_int_equal(kvt_tier_put(tier, &fx->chain.hdr[i], fx->chain.payload[i]), KVT_OK);
    assert_int_equal(kvt_tier_flush(tier), KVT_OK);
    kvt_tier_close(tier);
    fx->daemon = tu_kv_serve(fx->dir, "127.0.0.1:0", "16M", fx->addr);
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *fx = *state;
    kvt_block_client_close(fx->client);
    kvt_net_worker_destroy(fx->worker);
    if (fx->daemon > 0) {
        kill(fx->daemon, SIGKILL);
        waitpid(fx->daemon, NULL, 0);
    }
    tu_chain_free(&fx->chain);
    tu_rmtree(fx->dir);
    free(fx->dir);
    free(fx);
    return 0;
}

/* Connect within CONNECT_MS, with a lane unless KVT_NET_LANES=0, trying
 * again after a failure: a killed client can wedge the daemon's shared
 * memory, and the daemon's repair drops every connection, a connecting one
 * included (net/heal.c); that one's second try goes without a lane offer,
 * so it gets in over TCP, and a new connection gets the lane again. */
static kvt_status_t connect_retrying(kvt_net_worker_t *w, const char *addr,
                                     kvt_block_client_t **c)
{
    const char *env = getenv("KVT_NET_LANES");
    bool want_lane = !(env && strcmp(env, "0") == 0);
    uint64_t end = kvt_time_ns() + CONNECT_MS * 1000000ull;
    for (;;) {
        kvt_status_t st = kvt_block_client_connect(w, addr, CONNECT_MS, c);
        if (st == KVT_OK && (kvt_block_client_lane(*c) || !want_lane))
            return KVT_OK;
        if (st == KVT_OK) {
            kvt_block_client_close(*c);
            *c = NULL;
            st = KVT_ERR_AGAIN;
        }
        if (kvt_time_ns() >= end)
            return st;
        usleep(200 * 1000);
    }
}

static void client_start(fx_t *fx)
{
    kvt_net_worker_params_t wp = {0};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(connect_retrying(fx->worker, fx->addr, &fx->client), KVT_OK);
}

/* Pull the whole chain into fresh buffers: the call's status; every item
 * that says OK is checked against its key (never wrong data), and *all_ok
 * says whether every item did. */
static kvt_status_t pull_all(kvt_block_client_t *c, const tu_chain_t *chain, int timeout_ms,
                             bool *all_ok)
{
    size_t len = tu_payload_len(&g_id);
    kvt_pull_t items[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++)
        items[i] = (kvt_pull_t){.key = chain->hdr[i].key, .dst = calloc(1, len), .cap = len};
    kvt_status_t st = kvt_block_client_pull(c, items, N_BLOCKS, &g_id, timeout_ms);
    *all_ok = st == KVT_OK;
    for (int i = 0; i < N_BLOCKS; i++) {
        if (items[i].status == KVT_OK && !tu_payload_ok(&g_id, &chain->hdr[i].key, items[i].dst))
            fail_msg("block %d said OK with wrong bytes", i);
        *all_ok = *all_ok && items[i].status == KVT_OK;
        free(items[i].dst);
    }
    return st;
}

static void pull_all_ok(fx_t *fx)
{
    bool all_ok;
    assert_int_equal(pull_all(fx->client, &fx->chain, TIMEOUT_MS, &all_ok), KVT_OK);
    assert_true(all_ok);
}

/* Over a lane, 512 KiB blocks are read straight out of the daemon's
 * memory (the default), copied from its pool mapped here; with
 * KVT_NET_LOCAL_MAP=0 each by process_vm_readv; with
 * KVT_NET_LOCAL_READS=0 they come inline over the lane instead, just as
 * right. */
static void test_lane_pull(void **state)
{
    fx_t *fx = *state;
    client_start(fx);
    assert_true(kvt_block_client_lane(fx->client));
    for (int i = 0; i < 3; i++)
        pull_all_ok(fx);
    assert_int_equal(kvt_block_client_local_reads(fx->client), 3 * N_BLOCKS);
    assert_int_equal(kvt_block_client_mapped_reads(fx->client), 3 * N_BLOCKS);
}

static void test_lane_unmapped(void **state)
{
    fx_t *fx = *state;
    setenv("KVT_NET_LOCAL_MAP", "0", 1);
    client_start(fx);
    unsetenv("KVT_NET_LOCAL_MAP");
    for (int i = 0; i < 2; i++)
        pull_all_ok(fx);
    assert_int_equal(kvt_block_client_local_reads(fx->client), 2 * N_BLOCKS);
    assert_int_equal(kvt_block_client_mapped_reads(fx->client), 0);
}

static void test_lane_inline(void **state)
{
    fx_t *fx = *state;
    setenv("KVT_NET_LOCAL_READS", "0", 1);
    client_start(fx);
    unsetenv("KVT_NET_LOCAL_READS");
    assert_true(kvt_block_client_lane(fx->client));
    for (int i = 0; i < 2; i++)
        pull_all_ok(fx);
    assert_int_equal(kvt_block_client_local_reads(fx->client), 0);
}

/* Pulls that give up before their replies come (timeout 0) leave no
 * lease pinned in the daemon: the client waits a moment for each late
 * reply and releases its lease.  Were they left to expire, 64 of them
 * would make the daemon refuse this connection more leases (FULL) and the
 * pull after them would fail. */
static void test_timeouts_leave_no_leases(void **state)
{
    fx_t *fx = *state;
    client_start(fx);
    assert_true(kvt_block_client_lane(fx->client));
    pull_all_ok(fx); /* the blocks are in the daemon's T1 now */
    size_t len = tu_payload_len(&g_id);
    kvt_pull_t items[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++)
        items[i] = (kvt_pull_t){.key = fx->chain.hdr[i].key, .dst = calloc(1, len), .cap = len};
    int gave_up = 0;
    for (int round = 0; round < 100; round++)
        gave_up += kvt_block_client_pull(fx->client, items, N_BLOCKS, &g_id, 0) != KVT_OK;
    for (int i = 0; i < N_BLOCKS; i++)
        free(items[i].dst);
    print_message("pulls that gave up: %d of 100\n", gave_up);
    assert_true(gave_up > 64);
    pull_all_ok(fx); /* within TIMEOUT_MS, which is under the leases' 5 s */
}

static void test_lanes_off(void **state)
{
    fx_t *fx = *state;
    setenv("KVT_NET_LANES", "0", 1);
    client_start(fx);
    unsetenv("KVT_NET_LANES"); /* the default: lanes */
    assert_false(kvt_block_client_lane(fx->client));
    pull_all_ok(fx);
}

/* The killed children connect over TCP unless KVT_TEST_CHILD_LANES=1.
 * Either way a child killed in the middle of a shared-memory send (its
 * connection's wireup goes there too) can wedge the daemon's UCX worker,
 * which the daemon then rebuilds (net/heal.c): three copies of this test
 * at once on a 2-core machine hit that now and then. */
static bool child_lanes(void)
{
    const char *v = getenv("KVT_TEST_CHILD_LANES");
    return v && strcmp(v, "1") == 0;
}

/* Child: connect, pull for ever, say "pulling" after the first pull.  No
 * lane unless child_lanes() (KVT_NET_LANES from the parent). */
static int pull_loop_main(const char *addr)
{
    tu_chain_t chain;
    tu_chain_make(&chain, &g_id, N_BLOCKS, 7, NULL, 0);
    kvt_net_worker_params_t wp = {0};
    kvt_net_worker_t *w;
    kvt_block_client_t *c;
    /* The connect may meet the daemon closing the last child's connection. */
    if (kvt_net_worker_create(&wp, &w) != KVT_OK || connect_retrying(w, addr, &c) != KVT_OK ||
        kvt_block_client_lane(c) != child_lanes())
        return 2;
    for (bool said = false;;) {
        bool all_ok;
        if (pull_all(c, &chain, TIMEOUT_MS, &all_ok) != KVT_OK || !all_ok)
            return 3;
        if (!said) {
            printf("pulling\n");
            fflush(stdout);
            said = true;
        }
    }
}

static void test_clients_killed_mid_transfer(void **state)
{
    fx_t *fx = *state;
    setenv("KVT_NET_LANES", child_lanes() ? "1" : "0", 1); /* for the children */
    for (int i = 0; i < 12; i++) {
        char *const argv[] = {"test_pull_lane", "--pull-loop", fx->addr, NULL};
        char line[32];
        pid_t pid = tu_spawn_first_line("/proc/self/exe", argv, line, sizeof(line));
        assert_string_equal(line, "pulling\n");
        usleep((useconds_t)(i * 700)); /* a different point of the transfer each time */
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        assert_int_equal(waitpid(fx->daemon, NULL, WNOHANG), 0); /* the daemon lives */
    }
    unsetenv("KVT_NET_LANES"); /* the default: lanes */
    client_start(fx);
    assert_true(kvt_block_client_lane(fx->client));
    pull_all_ok(fx);
}

static void test_daemon_killed_mid_transfer(void **state)
{
    fx_t *fx = *state;
    client_start(fx);
    assert_true(kvt_block_client_lane(fx->client));
    /* One whole pull before the timer starts, so a loaded machine cannot
     * make the kill land before the first pull (ok would be 0). */
    pull_all_ok(fx);
    pthread_t killer;
    pthread_create(&killer, NULL, tu_kill_in_300ms, &fx->daemon);
    int ok = 1, failed = 0;
    uint64_t worst_ns = 0;
    while (failed < 3) {
        uint64_t t0 = kvt_time_ns();
        bool all_ok;
        (void)pull_all(fx->client, &fx->chain, 1000, &all_ok);
        uint64_t dt = kvt_time_ns() - t0;
        worst_ns = dt > worst_ns ? dt : worst_ns;
        ok += all_ok;
        failed += !all_ok;
    }
    pthread_join(killer, NULL);
    waitpid(fx->daemon, NULL, 0);
    fx->daemon = 0;
    print_message("daemon killed: ok_pulls=%d worst_pull_ms=%.1f\n", ok, worst_ns / 1e6);
    assert_true(ok > 0);
    assert_true(worst_ns < 5000000000ull); /* bounded by the pull timeout, no hang */
}

static int count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0;
    for (int ch; (ch = fgetc(f)) != EOF;)
        n += ch == '\n';
    fclose(f);
    return n;
}

/* Each connection's lane is a second UCX endpoint at both ends; closing
 * the connection must take both away, or a client that reconnects often
 * would collect them. */
static void test_connect_churn(void **state)
{
    fx_t *fx = *state;
    client_start(fx);
    pull_all_ok(fx);
    int before = 0;
    for (int i = 0; i < 120; i++) {
        if (i == 20)
            before = count_maps();
        kvt_block_client_t *c;
        assert_int_equal(kvt_block_client_connect(fx->worker, fx->addr, TIMEOUT_MS, &c), KVT_OK);
        assert_true(kvt_block_client_lane(c));
        kvt_block_client_close(c);
    }
    int after = count_maps();
    print_message("maps after 20 connects: %d, after 120: %d\n", before, after);
    assert_true(after - before < 16);
    pull_all_ok(fx);
}

int main(int argc, char **argv)
{
    g_id = big_identity();
    if (argc == 3 && strcmp(argv[1], "--pull-loop") == 0)
        return pull_loop_main(argv[2]);
    unsetenv("KVT_NET_LANES"); /* the default: lanes */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lane_pull, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lane_unmapped, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lane_inline, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_timeouts_leave_no_leases, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lanes_off, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_clients_killed_mid_transfer, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_daemon_killed_mid_transfer, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_connect_churn, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
