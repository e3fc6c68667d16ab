/* Tests for coord/route: prefill placement (local prefix, queues, peer pulls
 * against recompute, the one-token-computed cap, tier costs, ties) and decode
 * placement (affinity against load, slots, ties), with hand-computed costs. */
#include "coord/route.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

/* Round numbers so every expected cost is exact: B * compute = 16 > peer 8. */
static kvt_route_costs_t costs(void)
{
    kvt_route_costs_t c = {.compute_per_token = 1.0,
                           .fetch_host_per_block = 2.0,
                           .fetch_disk_per_block = 4.0,
                           .fetch_peer_per_block = 8.0,
                           .decode_per_active = 10.0};
    return c;
}

static kvt_route_prefill_node_t pnode(bool usable, uint32_t gpu, uint32_t host, uint32_t disk,
                                      uint64_t queued)
{
    kvt_route_prefill_node_t n = {.usable = usable, .queued_tokens = queued};
    n.local.prefix = gpu + host + disk;
    n.local.n_gpu = gpu;
    n.local.n_host = host;
    n.local.n_disk = disk;
    return n;
}

static void test_longest_local_prefix_wins(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_prefill_node_t nodes[3] = {pnode(true, 2, 0, 0, 0), pnode(true, 5, 0, 0, 0),
                                         pnode(true, 3, 0, 0, 0)};
    kvt_route_prefill_t d;
    kvt_route_prefill(&c, nodes, 3, 100, 16, &d);
    /* Node 0 could pull 3 blocks from node 1 (cost 20 + 24); node 1 computes
     * 100 - 80 = 20 tokens and has no longer peer. */
    assert_int_equal(d.node, 1);
    assert_int_equal(d.peer, -1);
    assert_int_equal(d.reuse_blocks, 5);
    assert_int_equal(d.peer_blocks, 0);
    assert_true(d.compute_cost == 20.0);
    assert_true(d.fetch_cost == 0.0);
    assert_true(d.queue_cost == 0.0);
    assert_true(d.cost == 20.0);
}

static void test_queue_moves_to_idle_node(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_prefill_node_t nodes[2] = {pnode(true, 5, 0, 0, 1000), pnode(true, 0, 0, 0, 0)};
    kvt_route_prefill_t d;
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    /* Node 1 pulls node 0's 5 blocks: 20 + 40 = 60 < 20 + 1000. */
    assert_int_equal(d.node, 1);
    assert_int_equal(d.peer, 0);
    assert_int_equal(d.peer_blocks, 5);
    assert_int_equal(d.reuse_blocks, 5);
    assert_true(d.cost == 60.0);

    /* Without peer pulls the idle node still wins: 100 < 1020. */
    c.fetch_peer_per_block = 100.0;
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    assert_int_equal(d.node, 1);
    assert_int_equal(d.peer, -1);
    assert_true(d.cost == 100.0);

    /* A short queue keeps the request on the node that holds the prefix. */
    c = costs();
    nodes[0].queued_tokens = 10;
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    assert_int_equal(d.node, 0);
    assert_true(d.queue_cost == 10.0);
    assert_true(d.cost == 30.0);
}

static void test_peer_pull_vs_recompute(void **state)
{
    kvt_route_costs_t c = costs();
    /* The peer is not usable for prefill but serves its blocks. */
    kvt_route_prefill_node_t nodes[2] = {pnode(true, 0, 0, 0, 0), pnode(false, 0, 6, 0, 0)};
    kvt_route_prefill_t d;

    c.fetch_peer_per_block = 15.5; /* < 16 * 1.0: pull */
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    assert_int_equal(d.node, 0);
    assert_int_equal(d.peer, 1);
    assert_int_equal(d.peer_blocks, 6);
    assert_int_equal(d.reuse_blocks, 6);
    assert_true(d.compute_cost == 4.0);
    assert_true(d.fetch_cost == 6 * 15.5);

    c.fetch_peer_per_block = 16.0; /* equal: not cheaper, recompute */
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    assert_int_equal(d.node, 0);
    assert_int_equal(d.peer, -1);
    assert_int_equal(d.reuse_blocks, 0);
    assert_true(d.cost == 100.0);

    c.fetch_peer_per_block = 40.0;
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    assert_int_equal(d.peer, -1);
    assert_int_equal(d.peer_blocks, 0);

    /* A zeroed (unreachable) peer is never chosen. */
    c = costs();
    nodes[1].local.prefix = 0;
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    assert_int_equal(d.peer, -1);
    assert_true(d.cost == 100.0);
}

static void test_peer_is_best_other_node(void **state)
{
    kvt_route_costs_t c = costs();
    /* Node 1 has the longest prefix but a long queue; node 0 pulls from node
     * 1 (longest other), node 1's own best peer is node 2. */
    kvt_route_prefill_node_t nodes[3] = {pnode(true, 1, 0, 0, 0), pnode(true, 6, 0, 0, 500),
                                         pnode(false, 3, 0, 0, 0)};
    kvt_route_prefill_t d;
    kvt_route_prefill(&c, nodes, 3, 100, 16, &d);
    assert_int_equal(d.node, 0);
    assert_int_equal(d.peer, 1);
    assert_int_equal(d.peer_blocks, 5);
    assert_int_equal(d.reuse_blocks, 6);
    assert_true(d.cost == 4.0 + 40.0);
}

static void test_one_token_always_computed(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_prefill_node_t nodes[1] = {pnode(true, 4, 0, 0, 0)};
    kvt_route_prefill_t d;

    /* 64 tokens = 4 full blocks, all cached: only (64-1)/16 = 3 reusable. */
    kvt_route_prefill(&c, nodes, 1, 64, 16, &d);
    assert_int_equal(d.reuse_blocks, 3);
    assert_true(d.compute_cost == 16.0);

    kvt_route_prefill(&c, nodes, 1, 65, 16, &d);
    assert_int_equal(d.reuse_blocks, 4);
    assert_true(d.compute_cost == 1.0);

    kvt_route_prefill(&c, nodes, 1, 1, 16, &d);
    assert_int_equal(d.reuse_blocks, 0);
    assert_true(d.compute_cost == 1.0);

    /* The cap also bounds what a peer can give. */
    kvt_route_prefill_node_t two[2] = {pnode(true, 0, 0, 0, 0), pnode(false, 4, 0, 0, 0)};
    kvt_route_prefill(&c, two, 2, 64, 16, &d);
    assert_int_equal(d.peer_blocks, 3);
    assert_true(d.compute_cost == 16.0);

    /* B == 0 cannot reuse anything (and does not divide by zero). */
    kvt_route_prefill(&c, nodes, 1, 64, 0, &d);
    assert_int_equal(d.node, 0);
    assert_int_equal(d.reuse_blocks, 0);
    assert_true(d.compute_cost == 64.0);
}

static void test_tier_costs_and_cap_order(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_prefill_node_t nodes[1] = {pnode(true, 2, 1, 1, 7)};
    kvt_route_prefill_t d;

    /* 2 GPU (free) + 1 host (2) + 1 disk (4); 80 - 64 = 16 computed; 7 queued. */
    kvt_route_prefill(&c, nodes, 1, 80, 16, &d);
    assert_int_equal(d.reuse_blocks, 4);
    assert_true(d.fetch_cost == 6.0);
    assert_true(d.compute_cost == 16.0);
    assert_true(d.queue_cost == 7.0);
    assert_true(d.cost == 29.0);

    /* Capped to 3 blocks: the disk block (the chain's tail) goes first. */
    kvt_route_prefill(&c, nodes, 1, 64, 16, &d);
    assert_int_equal(d.reuse_blocks, 3);
    assert_true(d.fetch_cost == 2.0);

    /* Capped to 2: only the GPU blocks are left. */
    kvt_route_prefill(&c, nodes, 1, 48, 16, &d);
    assert_int_equal(d.reuse_blocks, 2);
    assert_true(d.fetch_cost == 0.0);
}

static void test_prefill_ties(void **state)
{
    kvt_route_costs_t c = costs();
    c.fetch_peer_per_block = 100.0; /* no pulls */
    /* Node 0: 84 computed + 16 queued = 100; node 1: 100 computed, idle. */
    kvt_route_prefill_node_t nodes[3] = {pnode(true, 1, 0, 0, 16), pnode(true, 0, 0, 0, 0),
                                         pnode(true, 0, 0, 0, 0)};
    kvt_route_prefill_t d;
    kvt_route_prefill(&c, nodes, 3, 100, 16, &d);
    assert_true(d.cost == 100.0);
    assert_int_equal(d.node, 1); /* fewer queued, then the lower index (not 2) */

    nodes[0].queued_tokens = 0;
    nodes[0].local = nodes[1].local;
    kvt_route_prefill(&c, nodes, 3, 100, 16, &d);
    assert_int_equal(d.node, 0);
}

static void test_no_usable_node(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_prefill_node_t nodes[2] = {pnode(false, 5, 0, 0, 0), pnode(false, 0, 0, 0, 0)};
    kvt_route_prefill_t d;
    memset(&d, 0x5a, sizeof(d));
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    assert_int_equal(d.node, -1);
    assert_int_equal(d.peer, -1);
    assert_int_equal(d.reuse_blocks, 0);
    assert_true(d.cost == 0.0);

    kvt_route_prefill(&c, NULL, 0, 100, 16, &d);
    assert_int_equal(d.node, -1);
}

static void test_describe(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_prefill_node_t nodes[2] = {pnode(true, 0, 0, 0, 0), pnode(false, 5, 0, 0, 0)};
    kvt_route_prefill_t d;
    kvt_route_prefill(&c, nodes, 2, 100, 16, &d);
    char buf[256];
    kvt_route_prefill_describe(&d, buf, sizeof(buf));
    assert_string_equal(buf, "node=0 cost=60.0 compute=20.0 fetch=40.0 queue=0.0 reuse=5 peer=1 "
                             "peer_blocks=5");
    char small[8];
    kvt_route_prefill_describe(&d, small, sizeof(small));
    assert_string_equal(small, "node=0 ");
}

static kvt_route_decode_node_t dnode(bool usable, uint32_t active, uint32_t slots, uint32_t pool)
{
    kvt_route_decode_node_t n = {
        .usable = usable, .active = active, .free_slots = slots, .pool_prefix = pool};
    return n;
}

static void test_decode_affinity_vs_load(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_decode_node_t nodes[2] = {dnode(true, 3, 4, 10), dnode(true, 0, 4, 0)};
    kvt_route_decode_t d;

    kvt_route_decode(&c, nodes, 2, 10, 1, &d); /* 30 vs 80 */
    assert_int_equal(d.node, 0);
    assert_int_equal(d.pull_blocks, 0);
    assert_true(d.cost == 30.0);

    nodes[0].active = 9; /* 90 vs 80 */
    kvt_route_decode(&c, nodes, 2, 10, 1, &d);
    assert_int_equal(d.node, 1);
    assert_int_equal(d.pull_blocks, 10);
    assert_true(d.cost == 80.0);

    /* A pool holding more than the chain pulls nothing. */
    nodes[1].pool_prefix = 50;
    kvt_route_decode(&c, nodes, 2, 10, 1, &d);
    assert_int_equal(d.node, 1);
    assert_int_equal(d.pull_blocks, 0);
    assert_true(d.cost == 0.0);
}

static void test_decode_slots_and_ties(void **state)
{
    kvt_route_costs_t c = costs();
    kvt_route_decode_node_t nodes[3] = {dnode(true, 0, 1, 10), dnode(true, 5, 2, 0),
                                        dnode(false, 0, 8, 10)};
    kvt_route_decode_t d;

    kvt_route_decode(&c, nodes, 3, 10, 2, &d); /* node 0 lacks slots, node 2 unusable */
    assert_int_equal(d.node, 1);
    assert_int_equal(d.pull_blocks, 10);

    kvt_route_decode(&c, nodes, 3, 10, 3, &d);
    assert_int_equal(d.node, -1);
    assert_int_equal(d.pull_blocks, 0);

    /* Equal costs: more free slots wins, then the lower index. */
    kvt_route_decode_node_t tie[3] = {dnode(true, 1, 2, 5), dnode(true, 1, 3, 5),
                                      dnode(true, 1, 3, 5)};
    kvt_route_decode(&c, tie, 3, 5, 1, &d);
    assert_int_equal(d.node, 1);
    assert_true(d.cost == 10.0);
}

static void test_default_costs(void **state)
{
    for (int gpu = 0; gpu < 2; gpu++) {
        kvt_route_costs_t c;
        memset(&c, 0, sizeof(c));
        kvt_route_costs_default(&c, gpu);
        assert_true(c.compute_per_token > 0 && c.fetch_host_per_block > 0 &&
                    c.fetch_disk_per_block > 0 && c.fetch_peer_per_block > 0 &&
                    c.decode_per_active > 0);
        /* Every stored block (B = 16) is worth loading rather than recomputing. */
        assert_true(c.fetch_host_per_block < c.fetch_disk_per_block);
        assert_true(c.fetch_disk_per_block < 16 * c.compute_per_token);
        assert_true(c.fetch_peer_per_block < 16 * c.compute_per_token);
    }
    kvt_route_costs_t cpu, gpu;
    kvt_route_costs_default(&cpu, false);
    kvt_route_costs_default(&gpu, true);
    assert_true(gpu.compute_per_token < cpu.compute_per_token);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_longest_local_prefix_wins),
        cmocka_unit_test(test_queue_moves_to_idle_node),
        cmocka_unit_test(test_peer_pull_vs_recompute),
        cmocka_unit_test(test_peer_is_best_other_node),
        cmocka_unit_test(test_one_token_always_computed),
        cmocka_unit_test(test_tier_costs_and_cap_order),
        cmocka_unit_test(test_prefill_ties),
        cmocka_unit_test(test_no_usable_node),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_decode_affinity_vs_load),
        cmocka_unit_test(test_decode_slots_and_ties),
        cmocka_unit_test(test_default_costs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
