/* Same-host local reads for the block client (block_client.h): a server
 * on this host pins the blocks under a lease and names where they are in
 * its memory; the client copies them into the caller's buffers itself,
 * from the server's pool mapped here (net/peer_map.c) or with
 * process_vm_readv (net/peer_read.c), and checks each at once.  Which
 * pulls ask for that (kvt_block_pull_local), and reading such a reply
 * (kvt_block_read_local).  Failure: a block that cannot be read fails
 * alone (IO, CLOSED); a kernel that refuses the reads turns them off for
 * this client, and its blocks are asked for inline again. */
#include "kvstore/block_clientInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Whether a pass asks to read the server's memory itself: only over a
 * same-host lane (the server checks that too), for blocks of 512 KiB and
 * more, and while this client can map the server's pool, for blocks of 64
 * KiB and more when the pass asks for 2 MiB or more in all.  Below
 * those the inline reply was as fast or faster, as a request trip bounds
 * both (kvtier bench pull, bench/RESULTS.md 2026-11-23):
 *   - mapped, 64 KiB blocks, 16 a pull (1 MiB): 4.1-5.3 GB/s, inline
 *     5.0-5.1; 32 a pull: 5.7-7.1 against 5.2-5.3; 64: 7.7-8.6 against
 *     5.7; 256 KiB, 16 a pull: 7.9-8.3 against 6.0-6.4;
 *   - process_vm_readv, 256 KiB: 4.9-5.9 against inline's 4.3-6.8; 512
 *     KiB: 7.6-8.1 against 6.5.  It pays a system call per block and
 *     leaves the server idle while the client copies every byte, where
 *     the inline reply's copy by the server overlaps the client's
 *     reading. */
#define LOCAL_MAPPED_MIN_BYTES (64u << 10)
#define LOCAL_MAPPED_MIN_PASS_BYTES (2u << 20)
#define LOCAL_READ_BLOCK_BYTES (512u << 10)

bool kvt_block_pull_local(const kvt_block_client_t *c, const kvt_pull_t *items,
                          const size_t *pending, size_t n)
{
    if (!n || !c->local_reads || !kvt_net_ep_lane(c->ep))
        return false;
    size_t cap = items[pending[0]].cap;
    if (cap >= LOCAL_READ_BLOCK_BYTES)
        return true;
    if (!c->local_maps || c->map_refused.pid != 0)
        return false;
    uint64_t pass = 0;
    for (size_t k = 0; k < n && pass < LOCAL_MAPPED_MIN_PASS_BYTES; k++)
        pass += items[pending[k]].cap;
    return cap >= LOCAL_MAPPED_MIN_BYTES && pass >= LOCAL_MAPPED_MIN_PASS_BYTES;
}

/* Local reply (same host): read every described block out of the server
 * process's memory (kvt_net_local_read), each checked right after its
 * read, while it is still in cache.  The server named its pid; the
 * checksums, not the pid, are what make a block OK.  A reply of 1 MiB and
 * more is read by the client's readers (local_readers) and the caller's
 * thread together, a block each at a time: one thread's copy and checksum
 * ran at about half of what two reached on the 2-core benchmark machine
 * (bench/RESULTS.md 2026-11-23).  If the kernel refuses the reads
 * (another user, a ptrace policy), this client stops asking for them and
 * the refused blocks are marked RETRY, to come back inline in the next
 * pass. */
#define LOCAL_PARALLEL_MIN_BYTES (1u << 20)
#define LOCAL_READERS_DEFAULT 2 /* threads reading one reply, the caller's included */

typedef struct {
    kvt_block_client_t *c;
    const kvt_net_peer_map_t *map; /* NULL: process_vm_readv per block */
    const Kvtier__BlockFetchReply *rep;
    kvt_pull_t *items;
    const size_t *pending;
    const size_t *to_read; /* reply positions k to read */
} local_job_t;

static void local_read_one(void *arg, size_t t)
{
    local_job_t *j = arg;
    size_t k = j->to_read[t];
    const Kvtier__BlockDescriptor *d = j->rep->blocks[k];
    kvt_pull_t *item = &j->items[j->pending[k]];
    item->status = j->map ? kvt_net_peer_map_read(j->map, item->dst, d->addr, d->length)
                          : kvt_net_local_read((int)j->rep->local_pid, item->dst, d->addr, d->length);
    if (item->status != KVT_ERR_DENIED)
        kvt_block_verify_payload(j->c, item, d->length);
}

/* The client's reader threads, started on its first large local reply;
 * NULL (the caller reads alone) with KVT_PULL_READERS=1 or when they
 * cannot start. */
static kvt_pfor_t *local_readers(kvt_block_client_t *c)
{
    if (c->readers_tried)
        return c->readers;
    c->readers_tried = true;
    const char *env = getenv("KVT_PULL_READERS");
    long n = env && *env ? strtol(env, NULL, 10) : LOCAL_READERS_DEFAULT;
    n = n < 1 ? 1 : n > 64 ? 64 : n;
    if (n > 1 && kvt_pfor_create((unsigned)n - 1, &c->readers) != KVT_OK) {
        kvt_log_warn("block client reads local replies on one thread peer=%s", c->peer);
        c->readers = NULL;
    }
    return c->readers;
}

/* The server's pool, mapped once per region the server names (a restarted
 * server names another).  A region that cannot be mapped (an older kernel,
 * a permission; not a lack of fds or memory, which may pass), or a reply
 * that names none (a pool without memfd), is remembered until the next
 * reconnect: its blocks are read with process_vm_readv, which the kernel
 * may still allow, and pull_local asks for local reads of large blocks
 * only. */
static const kvt_net_peer_map_t *local_map(kvt_block_client_t *c,
                                           const Kvtier__BlockFetchReply *rep)
{
    const Kvtier__LocalMap *lm = rep->local_map;
    if (!c->local_maps || rep->local_pid > INT_MAX)
        return NULL;
    if (!lm || lm->fd > INT_MAX) { /* a server that offers none: as refused */
        c->map_refused = (kvt_net_peer_region_t){.pid = (int)rep->local_pid, .fd = -1};
        return NULL;
    }
    kvt_net_peer_region_t r = {.pid = (int)rep->local_pid, .fd = (int)lm->fd,
                               .inode = lm->inode, .base = lm->addr, .length = lm->length};
    if (kvt_net_peer_map_is(c->map, &r))
        return c->map;
    if (kvt_net_peer_region_same(&r, &c->map_refused))
        return NULL;
    kvt_net_peer_map_close(c->map);
    c->map = NULL;
    kvt_status_t st = kvt_net_peer_map_open(&r, &c->map);
    if (st != KVT_OK) {
        kvt_log_info("block client cannot map the server's pool, reads it block by block "
                     "peer=%s pid=%d err=\"%s\"", c->peer, r.pid, kvt_status_str(st));
        if (st != KVT_ERR_NOMEM) /* out of fds or memory may pass: try at the next reply */
            c->map_refused = r;
    }
    return c->map;
}

void kvt_block_read_local(kvt_block_client_t *c, const Kvtier__BlockFetchReply *rep,
                          kvt_pull_t *items, const size_t *pending, size_t n,
                          const kvt_block_identity_t *expect, bool *retry)
{
    size_t *to_read = kvt_malloc("pull local reads", (n + 1) * sizeof(*to_read)), n_to_read = 0;
    uint64_t bytes = 0;
    for (size_t k = 0; k < n; k++) {
        const Kvtier__BlockDescriptor *d = rep->blocks[k];
        kvt_pull_t *item = &items[pending[k]];
        /* Out of memory for the list: every block again, next pass. */
        retry[k] =
            d->status == KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY || !c->local_reads || !to_read;
        if (retry[k])
            continue;
        item->status = kvt_block_describe(d, item, expect);
        if (item->status == KVT_OK) {
            to_read[n_to_read++] = k;
            bytes += d->length;
        }
    }
    local_job_t job = {.c = c, .map = n_to_read ? local_map(c, rep) : NULL, .rep = rep,
                       .items = items, .pending = pending, .to_read = to_read};
    bool parallel = n_to_read >= 2 && bytes >= LOCAL_PARALLEL_MIN_BYTES;
    kvt_pfor_run(parallel ? local_readers(c) : NULL, n_to_read, local_read_one, &job);
    for (size_t t = 0; t < n_to_read; t++) {
        kvt_pull_t *item = &items[pending[to_read[t]]];
        if (item->status == KVT_ERR_DENIED) {
            if (c->local_reads)
                kvt_log_warn("block client may not read the server's memory, pulls inline from "
                             "now peer=%s pid=%u",
                             kvt_net_ep_peer(c->ep), rep->local_pid);
            c->local_reads = false;
            retry[to_read[t]] = true;
        }
        c->n_local += item->status == KVT_OK;
        c->n_mapped += item->status == KVT_OK && job.map;
    }
    kvt_free(to_read);
}
