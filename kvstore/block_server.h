/* The block server: peers pull blocks out of this node's host pool (T1).
 *
 * The server owns two threads: a network thread with its own UCX worker,
 * and a promotion thread that reads T2.  A fetch request names keys; the
 * network thread pins each block T1 holds, and answers at once unless some
 * block is in T2 only.  Such a fetch waits for the promotion thread, which
 * promotes those blocks into T1 and pins them, and is answered when it is
 * done; so a disk read never holds up other clients' requests.  At most
 * max_promotions fetches wait so (4 per connection); past that, a fetch
 * gets what T1 holds and RETRY for the rest, or Error BUSY when that is
 * nothing, and the client asks again (kvt_block_client_pull does, within
 * its timeout).  A client that goes away while its fetch waits loses it:
 * the pins are given back when the promotion is over.  The answer comes in
 * one of three modes:
 *
 *   inline (the default): the reply carries the headers and payloads,
 *     up to what the client said it accepts (the rest: RETRY); the pins
 *     end once the reply is encoded.
 *   RMA (params.rma): the reply carries a lease, the rkey of the host
 *     pool region and each block's address; the client reads with RMA and
 *     releases the lease.  A lease that is neither released nor renewed
 *     expires by itself (default 30 s); a client that disconnects loses
 *     its leases at once, so a dead client cannot hold T1 hostage.
 *   local (the request's local_read, honoured only on a connection that
 *     came with a same-host lane, net.h): a lease as for RMA, this
 *     process's pid and each block's address; the client copies the
 *     payloads out of this process's memory itself (kvt_net_local_read)
 *     and releases the lease.  Whatever params.rma says.
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
    uint32_t max_promotions;    /* fetches waiting for T2 reads at once; 0: 64 */
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
    uint64_t promotions;        /* fetches handed to the promotion thread */
    uint64_t promotions_out;    /* of those, not answered yet (now) */
    uint64_t promotions_orphaned; /* whose client went away first (dropped) */
    uint64_t fetches_busy;      /* answered with RETRY or Error BUSY for blocks
                                   in T2 only: the promotion queue was full */
} kvt_block_server_stats_t;

/* Start listening and serving on a new thread.  KVT_ERR_IO if the address
 * cannot be bound. */
kvt_status_t kvt_block_server_start(const kvt_block_server_params_t *params,
                                    kvt_block_server_t **server_p);
/* The port actually bound (useful with port 0). */
uint16_t kvt_block_server_port(const kvt_block_server_t *server);
void kvt_block_server_stats(kvt_block_server_t *server, kvt_block_server_stats_t *stats_p);
/* For tests: while held, the promotion thread starts no promotion; the
 * fetches handed to it wait (and count against max_promotions). */
void kvt_block_server_promote_hold(kvt_block_server_t *server, bool hold);
/* Stop both threads (fetches waiting for a promotion are dropped, not
 * answered), release every lease, close every connection. */
void kvt_block_server_stop(kvt_block_server_t *server);

#endif
