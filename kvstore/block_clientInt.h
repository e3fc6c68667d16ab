/* Internals of the block client, shared by block_client.c (connect,
 * requests, the pull window, inline and RMA replies, tails) and
 * block_local.c (same-host local reads).  Not for other modules. */
#ifndef KVT_KVSTORE_BLOCK_CLIENTINT_H
#define KVT_KVSTORE_BLOCK_CLIENTINT_H

#include "kvstore/block_client.h"

#include "common/pfor.h"
#include "net/net.h"
#include "proto/msg.h"

#include <stdbool.h>

struct kvt_block_client {
    kvt_net_worker_t *worker;
    kvt_net_ep_t *ep;          /* NULL after a failed reconnect */
    char peer[KVT_BLOCK_PEER_ADDR_MAX]; /* what to connect to again */
    bool local_reads;          /* ask to read a same-host server's memory */
    bool accept_rma;           /* take RMA replies: unpack this server's rkeys */
    bool local_maps;           /* map the server's pool for those reads */
    kvt_net_peer_map_t *map;   /* the server's pool, mapped (local_map) */
    kvt_net_peer_region_t map_refused; /* the last region not mapped (fd -1:
                                          none offered); pid 0: none */
    uint64_t n_local;          /* blocks read that way and found good */
    uint64_t n_mapped;         /* of those, the ones read through map */
    kvt_pfor_t *readers;       /* threads that read local replies with the caller */
    bool readers_tried;
};

/* A descriptor's status and header, checked against the item it answers:
 * KVT_OK when its payload can be read into item->dst. */
kvt_status_t kvt_block_describe(const Kvtier__BlockDescriptor *d, kvt_pull_t *item,
                                const kvt_block_identity_t *expect);
/* item->status becomes CORRUPT (logged) when its payload's checksum fails. */
void kvt_block_verify_payload(kvt_block_client_t *c, kvt_pull_t *item, size_t len);

/* block_local.c: whether a pass of items[pending[0..n)] asks to read the
 * server's memory itself, and the reading of such a reply (its RETRY
 * items, and those to ask inline again, marked in retry). */
bool kvt_block_pull_local(const kvt_block_client_t *c, const kvt_pull_t *items,
                          const size_t *pending, size_t n);
void kvt_block_read_local(kvt_block_client_t *c, const Kvtier__BlockFetchReply *rep,
                          kvt_pull_t *items, const size_t *pending, size_t n,
                          const kvt_block_identity_t *expect, bool *retry);

#endif
