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
 * pull_tail fetches a prompt's partial tail (kvstore/tail.h) the same way,
 * inline in the reply, and checks it just as strictly.
 *
 * A client uses the caller's net worker and so the caller's thread.  It
 * keeps its peer's address: when the connection dies (the peer restarted,
 * the network cut it), the client stays valid, and its next pull or
 * pull_tail connects again (once, within that call's timeout_ms) before
 * asking; if that fails, the call returns the connect's error and the call
 * after tries again.  So a call that reconnects can take up to twice its
 * timeout_ms. */
#ifndef KVT_KVSTORE_BLOCK_CLIENT_H
#define KVT_KVSTORE_BLOCK_CLIENT_H

#include "kvstore/block.h"
#include "kvstore/tail.h"
#include "net/net.h"

typedef struct kvt_block_client kvt_block_client_t;

#define KVT_BLOCK_PEER_ADDR_MAX 256 /* a peer's "HOST:PORT", with its NUL */

typedef struct {
    kvt_block_key_t key;        /* in */
    void *dst;                  /* in: payload destination */
    size_t cap;                 /* in: bytes at dst */
    kvt_block_header_t hdr;     /* out: the block's header when status is OK */
    kvt_status_t status;        /* out: KVT_OK, KVT_ERR_NOT_FOUND (peer lacks it),
                                   KVT_ERR_CORRUPT (bad header or checksum),
                                   KVT_ERR_MISMATCH (other model/layout),
                                   KVT_ERR_TOO_LARGE (cap short), KVT_ERR_BUSY
                                   (the peer was still too busy reading its disk
                                   to serve it), or why the transfer failed
                                   (KVT_ERR_IO, _CLOSED, _AGAIN) */
} kvt_pull_t;

/* Connect to peer ("HOST:PORT", copied; under 256 bytes) within
 * timeout_ms.  KVT_ERR_INVALID on a bad argument, else the connect's error
 * (KVT_ERR_IO refused or unreachable, KVT_ERR_AGAIN timeout); *client_p is
 * set only on KVT_OK. */
kvt_status_t kvt_block_client_connect(kvt_net_worker_t *worker, const char *peer, int timeout_ms,
                                      kvt_block_client_t **client_p);
void kvt_block_client_close(kvt_block_client_t *client);

/* Pull items[0..n).  expect may be NULL (then any identity is accepted).
 * Blocks the server answers RETRY (its reply was full, or its promotion
 * queue was: block_server.h) or BUSY are asked for again; once no round
 * has served anything for timeout_ms, with short growing pauses between,
 * the rest get KVT_ERR_BUSY.  Returns KVT_OK when the exchange ran (see
 * each item's status), or the transport's error, a failed reconnect's
 * included (then every item carries it: none counts as read). */
kvt_status_t kvt_block_client_pull(kvt_block_client_t *client, kvt_pull_t *items, size_t n,
                                   const kvt_block_identity_t *expect, int timeout_ms);

/* Fetch the partial tail tokens[0..t) after parent, whose image under
 * layout is kvt_tail_bytes(layout, t) bytes, into dst[0..cap); *len_p =
 * its length.  release: the caller is done with it (the peer drops its
 * hold).  The key asked for is computed here; KVT_OK only when the reply
 * names that key, parent and exactly those tokens, and the payload has the
 * layout's length and its checksum.  KVT_ERR_NOT_FOUND (the peer holds no
 * such tail: other tokens or parent name another key), KVT_ERR_CORRUPT (a
 * reply naming another tail, or a bad checksum), KVT_ERR_MISMATCH (payload
 * length not the layout's), KVT_ERR_TOO_LARGE (cap short, or the tail
 * cannot fit in a message of this client's worker), KVT_ERR_INVALID (t not
 * in [1, B) or a bad layout), or the transport's error, a failed
 * reconnect's included (KVT_ERR_IO, _CLOSED, _AGAIN on timeout).  dst is
 * written only on KVT_OK. */
kvt_status_t kvt_block_client_pull_tail(kvt_block_client_t *client, const kvt_block_key_t *parent,
                                        uint32_t t, const uint32_t *tokens,
                                        const kvt_block_layout_t *layout, bool release, void *dst,
                                        size_t cap, size_t *len_p, int timeout_ms);

/* The connection is up now.  A client that is not alive stays usable:
 * its next pull or pull_tail connects again.  False for NULL. */
bool kvt_block_client_alive(const kvt_block_client_t *client);
/* The server sends to this client over a same-host lane (shared memory
 * when UCX can: net.h, kvt_net_ep_lane).  False for NULL or while down. */
bool kvt_block_client_lane(const kvt_block_client_t *client);
/* Whether this client takes RMA replies from a `kv serve --rma` server
 * (it then unpacks that server's rkey, which UCX parses trusting its
 * bytes: only for a server it trusts, on an RDMA fabric between trusted
 * nodes).  Off by default, or on with KVT_PULL_RMA=1 in the environment at
 * connect.  A client that does not take them asks that server for inline
 * replies, and an RMA reply it did not ask for fails its blocks CORRUPT
 * without the rkey being unpacked. */
void kvt_block_client_accept_rma(kvt_block_client_t *client, bool accept);
/* Blocks this client has read straight out of a same-host server's memory
 * and found good (block_local.c; pulls over a lane of blocks of 512 KiB
 * and more, or of 64 KiB and more in a pull of 2 MiB while the server's
 * pool maps; unless KVT_NET_LOCAL_READS=0), and of those, the ones copied
 * from the server's pool mapped here (net/peer_map.c; unless
 * KVT_NET_LOCAL_MAP=0) rather than by process_vm_readv.  0 for NULL. */
uint64_t kvt_block_client_local_reads(const kvt_block_client_t *client);
uint64_t kvt_block_client_mapped_reads(const kvt_block_client_t *client);

/* Clients of several peers on one worker, connected on first use and
 * reconnected by kvt_block_peers_get when their peer died (so that it can
 * answer NULL for a peer that is down): the prefill and decode nodes pull
 * from whichever node the coordinator names.  At most 64 peers (the least
 * recently used one is closed beyond).  Same thread as the worker. */
typedef struct kvt_block_peers kvt_block_peers_t;
kvt_status_t kvt_block_peers_create(kvt_net_worker_t *worker, kvt_block_peers_t **peers_p);
void kvt_block_peers_destroy(kvt_block_peers_t *peers);
/* The client of `addr` (HOST:PORT); NULL (logged) when it cannot connect
 * within timeout_ms.  Valid until the next get or destroy: a get closes
 * every dead peer's client (and the least recently used one beyond 64). */
kvt_block_client_t *kvt_block_peers_get(kvt_block_peers_t *peers, const char *addr,
                                        int timeout_ms);

#endif
