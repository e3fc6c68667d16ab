/* The block server: peers pull blocks out of this node's host pool (T1).
 *
 * The server owns one thread with its own UCX worker.  A fetch request
 * names keys; the server pins each block in T1 (promoting it from T2 when
 * needed) and answers in one of two modes:
 *
 *   inline (the default): the reply carries the headers and payloads,
 *     up to what the client said it accepts (the rest: RETRY); the pins
 *     end once the reply is encoded.
 *   RMA (params.rma): the reply carries a lease, the rkey of the host
 *     pool region and each block's address; the client reads with RMA and
 *     releases the lease.  A lease that is neither released nor renewed
 *     expires by itself (default 30 s); a client that disconnects loses
 *     its leases at once, so a dead client cannot hold T1 hostage.
 *
 * RMA is opt-in because it trusts the peer: where UCX emulates RMA in
 * software (TCP) a remote read is not bounded by the rkey, so a hostile
 * peer could read any server memory or crash it; and even real RMA opens
 * the whole host pool to whoever holds the rkey.  Use it on RDMA fabrics
 * between trusted nodes.
 *
 * Partial tails (kvstore/tail.h): a TailFetch names a tail key; the
 * server answers from its tail store with the tail inline (found=false
 * when it holds no such tail, or has no store).  There is no lease id: the
 * lease is the store's hold and TTL, and a fetch with release drops the
 * hold once the reply is encoded.
 *
 * Bad input: a message that does not decode, has another protocol version
 * or a body this server does not serve gets an Error reply; the
 * connection and every other client go on being served. */
#ifndef KVT_KVSTORE_BLOCK_SERVER_H
#define KVT_KVSTORE_BLOCK_SERVER_H

#include "kvstore/tail.h"
#include "kvstore/tier.h"

typedef struct kvt_block_server kvt_block_server_t;

typedef struct {
    kvt_tier_t *tier;           /* borrowed; must outlive the server */
    const char *listen;         /* "HOST:PORT" (port 0: any free port) */
    uint32_t lease_ms;          /* default lease; 0: 30000 */
    uint32_t max_lease_ms;      /* longest lease a client may ask for; 0: 300000 */
    uint32_t max_leases;        /* leases held at once; 0: 4096 (and at most 64
                                   per connection; a lease can be renewed up to
                                   10 minutes after it was made) */
    bool rma;                   /* serve by RMA (see above); false: inline */
    kvt_tail_store_t *tails;    /* borrowed, may be NULL (no tails held); must
                                   outlive the server */
} kvt_block_server_params_t;

typedef struct {
    uint64_t fetches;           /* fetch requests answered */
    uint64_t blocks_served;     /* blocks pinned for a client */
    uint64_t blocks_missing;
    uint64_t blocks_failed;
    uint64_t leases_active;
    uint64_t leases_expired;
    uint64_t leases_released;   /* by Release or by the client's disconnect */
    uint64_t bad_messages;      /* answered with Error */
    uint64_t tails_served;      /* TailFetches answered with the tail */
    uint64_t tails_missing;     /* TailFetches answered found=false */
} kvt_block_server_stats_t;

/* Start listening and serving on a new thread.  KVT_ERR_IO if the address
 * cannot be bound. */
kvt_status_t kvt_block_server_start(const kvt_block_server_params_t *params,
                                    kvt_block_server_t **server_p);
/* The port actually bound (useful with port 0). */
uint16_t kvt_block_server_port(const kvt_block_server_t *server);
void kvt_block_server_stats(kvt_block_server_t *server, kvt_block_server_stats_t *stats_p);
/* Stop the thread, release every lease, close every connection. */
void kvt_block_server_stop(kvt_block_server_t *server);

#endif
