/* Routing decisions; see route.h for the contract.
 *
 * Prefill: every usable node is scored with the same cost model and the
 * cheapest wins.  The best peer of every node is the one entry with the
 * longest (capped) prefix, found once: O(n_nodes) in all.
 *
 * Owned by the coordinator; stateless, so thread-safe and infallible. */
#include "coord/route.h"

#include <stdio.h>
#include <string.h>

static uint32_t max_reuse_blocks(size_t n_tokens, uint32_t block_tokens)
{
    if (block_tokens == 0 || n_tokens == 0)
        return 0;
    size_t m = (n_tokens - 1) / block_tokens;
    return m > UINT32_MAX ? UINT32_MAX : (uint32_t)m;
}

static uint32_t capped_prefix(const kvt_route_prefill_node_t *n, uint32_t max_reuse)
{
    return n->local.prefix < max_reuse ? n->local.prefix : max_reuse;
}

/* The entry with the longest capped prefix (ties: lower index), -1 if none.
 * It is every node's best peer but its own; for itself no other entry is
 * longer, so it has nothing to pull. */
static int longest_entry(const kvt_route_prefill_node_t *nodes, size_t n_nodes,
                         uint32_t max_reuse)
{
    int best = -1;
    for (size_t i = 0; i < n_nodes; i++) {
        uint32_t p = capped_prefix(&nodes[i], max_reuse);
        if (best < 0 || p > capped_prefix(&nodes[best], max_reuse))
            best = (int)i;
    }
    return best;
}

/* Score node i with peer candidate q (-1: none).  Blocks cut off by the
 * reuse cap come off the slowest tier first: with prefix-closed tiers the
 * GPU-served blocks lead the chain, then host, then disk.  Tier counts that
 * do not add up to prefix are read as disk (the dearest). */
static void score(const kvt_route_costs_t *c, const kvt_route_prefill_node_t *nodes, size_t i,
                  int q, uint32_t max_reuse, size_t n_tokens, uint32_t block_tokens,
                  kvt_route_prefill_t *d)
{
    const kvt_route_prefill_node_t *p = &nodes[i];
    uint32_t local = capped_prefix(p, max_reuse);
    uint32_t gpu = p->local.n_gpu < local ? p->local.n_gpu : local;
    uint32_t host = p->local.n_host < local - gpu ? p->local.n_host : local - gpu;
    uint32_t disk = local - gpu - host;

    uint32_t peer_blocks = 0;
    if (q >= 0 && c->fetch_peer_per_block < (double)block_tokens * c->compute_per_token) {
        uint32_t qp = capped_prefix(&nodes[q], max_reuse);
        if (qp > local)
            peer_blocks = qp - local;
    }
    uint32_t reuse = local + peer_blocks;
    size_t uncached = n_tokens - (size_t)reuse * block_tokens;

    memset(d, 0, sizeof(*d));
    d->node = (int)i;
    d->peer = peer_blocks ? q : -1;
    d->reuse_blocks = reuse;
    d->peer_blocks = peer_blocks;
    d->compute_cost = (double)uncached * c->compute_per_token;
    d->fetch_cost = (double)host * c->fetch_host_per_block +
                    (double)disk * c->fetch_disk_per_block +
                    (double)peer_blocks * c->fetch_peer_per_block;
    d->queue_cost = (double)p->queued_tokens * c->compute_per_token;
    d->cost = d->compute_cost + d->fetch_cost + d->queue_cost;
}

void kvt_route_prefill(const kvt_route_costs_t *costs, const kvt_route_prefill_node_t *nodes,
                       size_t n_nodes, size_t n_tokens, uint32_t block_tokens,
                       kvt_route_prefill_t *out)
{
    uint32_t max_reuse = max_reuse_blocks(n_tokens, block_tokens);
    int longest = longest_entry(nodes, n_nodes, max_reuse);

    memset(out, 0, sizeof(*out));
    out->node = -1;
    out->peer = -1;
    for (size_t i = 0; i < n_nodes; i++) {
        if (!nodes[i].usable)
            continue;
        kvt_route_prefill_t d;
        int q = (int)i == longest ? -1 : longest;
        score(costs, nodes, i, q, max_reuse, n_tokens, block_tokens, &d);
        bool better = out->node < 0 || d.cost < out->cost ||
                      (d.cost == out->cost &&
                       nodes[i].queued_tokens < nodes[out->node].queued_tokens);
        if (better)
            *out = d;
    }
}

void kvt_route_decode(const kvt_route_costs_t *costs, const kvt_route_decode_node_t *nodes,
                      size_t n_nodes, size_t full_blocks, uint32_t need_slots,
                      kvt_route_decode_t *out)
{
    out->node = -1;
    out->pull_blocks = 0;
    out->cost = 0;
    for (size_t i = 0; i < n_nodes; i++) {
        const kvt_route_decode_node_t *n = &nodes[i];
        if (!n->usable || n->free_slots < need_slots)
            continue;
        size_t have = n->pool_prefix < full_blocks ? n->pool_prefix : full_blocks;
        size_t pull = full_blocks - have;
        double cost = (double)pull * costs->fetch_peer_per_block +
                      (double)n->active * costs->decode_per_active;
        bool better = out->node < 0 || cost < out->cost ||
                      (cost == out->cost && n->free_slots > nodes[out->node].free_slots);
        if (better) {
            out->node = (int)i;
            out->pull_blocks = pull > UINT32_MAX ? UINT32_MAX : (uint32_t)pull;
            out->cost = cost;
        }
    }
}

void kvt_route_prefill_describe(const kvt_route_prefill_t *d, char *buf, size_t cap)
{
    if (cap == 0)
        return;
    snprintf(buf, cap,
             "node=%d cost=%.1f compute=%.1f fetch=%.1f queue=%.1f reuse=%u peer=%d "
             "peer_blocks=%u",
             d->node, d->cost, d->compute_cost, d->fetch_cost, d->queue_cost, d->reuse_blocks,
             d->peer, d->peer_blocks);
}

/* Defaults in microseconds, for the models kvtier targets (1-8B, GQA, bf16
 * KV, B = 16).  A block image of a 1B Llama (16 layers x K,V x 16 tokens x 8
 * kv heads x 64 x 2 bytes) is 512 KiB; an 8B one (32 layers, 8 x 128) is
 * 2 MiB.  The figures below sit between the two.
 *
 * GPU: prefill runs ~10-20k tokens/s on one H100 for these sizes -> 60
 * us/token.  A host-pool block is one pinned H2D copy (~20 GB/s, ~50 us for
 * 1 MiB); a RocksDB read of the same is ~4x that on NVMe (~200 us); a peer
 * pull over RDMA/100 GbE with its round trip ~120 us.  So every stored block
 * (16 tokens = 960 us of compute) is worth loading, as the paper finds.
 * decode_per_active: one more running sequence costs ~20 us per decode step
 * (its attention and sampling); over a 128-token answer ~2.5 ms, i.e. a node
 * one sequence busier is worth pulling ~20 blocks to avoid.
 *
 * CPU: prefill ~1k tokens/s on a 16-core host -> 1000 us/token; host block
 * = memcpy (~60 us); disk as above (~250 us); peer over TCP ~10 Gb/s
 * (~800 us per MiB).  A CPU decode step grows ~400 us per sequence ->
 * ~50 ms per 128 tokens. */
void kvt_route_costs_default(kvt_route_costs_t *costs, bool gpu)
{
    if (gpu) {
        costs->compute_per_token = 60.0;
        costs->fetch_host_per_block = 50.0;
        costs->fetch_disk_per_block = 200.0;
        costs->fetch_peer_per_block = 120.0;
        costs->decode_per_active = 2500.0;
    } else {
        costs->compute_per_token = 1000.0;
        costs->fetch_host_per_block = 60.0;
        costs->fetch_disk_per_block = 250.0;
        costs->fetch_peer_per_block = 800.0;
        costs->decode_per_active = 50000.0;
    }
}
