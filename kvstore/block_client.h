/* Pulling blocks from a peer's block server (kvstore/block_server.h).
 *
 * pull sends one fetch request for a list of keys, reads every block the
 * server pinned with RMA straight into the caller's buffers, releases the
 * lease, and checks each block (DESIGN.md invariant 3): the header decodes
 * and names the requested key, the key names the header's tokens, the
 * layout and model are the expected ones, the payload fits, and its xxh3
 * checksum matches.  Each item gets its own status, so the caller knows
 * exactly which blocks to recompute; nothing unchecked is ever reported OK.
 *
 * A client uses the caller's net worker and so the caller's thread. */
#ifndef KVT_KVSTORE_BLOCK_CLIENT_H
#define KVT_KVSTORE_BLOCK_CLIENT_H

#include "kvstore/block.h"
#include "net/net.h"

typedef struct kvt_block_client kvt_block_client_t;

typedef struct {
    kvt_block_key_t key;        /* in */
    void *dst;                  /* in: payload destination */
    size_t cap;                 /* in: bytes at dst */
    kvt_block_header_t hdr;     /* out: the block's header when status is OK */
    kvt_status_t status;        /* out: KVT_OK, KVT_ERR_NOT_FOUND (peer lacks it),
                                   KVT_ERR_CORRUPT (bad header or checksum),
                                   KVT_ERR_MISMATCH (other model/layout),
                                   KVT_ERR_TOO_LARGE (cap short), or why the
                                   transfer failed (KVT_ERR_IO, _CLOSED, _AGAIN) */
} kvt_pull_t;

kvt_status_t kvt_block_client_connect(kvt_net_worker_t *worker, const char *peer, int timeout_ms,
                                      kvt_block_client_t **client_p);
void kvt_block_client_close(kvt_block_client_t *client);

/* Pull items[0..n).  expect may be NULL (then any identity is accepted).
 * Returns KVT_OK when the exchange ran (see each item's status), or the
 * transport's error (then every item carries it: none counts as read). */
kvt_status_t kvt_block_client_pull(kvt_block_client_t *client, kvt_pull_t *items, size_t n,
                                   const kvt_block_identity_t *expect, int timeout_ms);

/* The connection is still up (a dead peer's client should be closed). */
bool kvt_block_client_alive(const kvt_block_client_t *client);

/* Clients of several peers on one worker, connected on first use and
 * reconnected when their peer died: the prefill and decode nodes pull
 * from whichever node the coordinator names.  At most 64 peers (the least
 * recently used one is closed beyond).  Same thread as the worker. */
typedef struct kvt_block_peers kvt_block_peers_t;
kvt_status_t kvt_block_peers_create(kvt_net_worker_t *worker, kvt_block_peers_t **peers_p);
void kvt_block_peers_destroy(kvt_block_peers_t *peers);
/* The client of `addr` (HOST:PORT); NULL (logged) when it cannot connect
 * within timeout_ms. */
kvt_block_client_t *kvt_block_peers_get(kvt_block_peers_t *peers, const char *addr,
                                        int timeout_ms);

#endif
