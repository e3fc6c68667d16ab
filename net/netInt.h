/* net internals shared by net.c (worker, connections, messages), send.c
 * (sends), rndv.c (rendezvous receives), conn.c (connect, listen),
 * lane.c (same-host lanes), buf.c
 * (receive buffers), rma.c (registration, rkeys, batched gets) and heal.c
 * (rebuilding a wedged UCX worker); no other module includes this.
 *
 * Ownership: the worker owns every endpoint, listener, registration,
 * queued event and in-flight receive; buffers handed to UCX (send copies,
 * rendezvous targets, get slots) belong to UCX until their completion
 * callback runs, and only that callback frees them.  User callbacks
 * (on_msg, on_conn) never run inside a UCX callback: UCX callbacks only
 * record (queue an event, complete a waiting request), and the queue is
 * delivered after ucp_worker_progress returns, so a user callback may
 * send, close or even block in kvt_net_request. */
#ifndef KVT_NET_NETINT_H
#define KVT_NET_NETINT_H

#include "net/net.h"

#include <stdatomic.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#define NET_AM_DATA 17u            /* user messages */
#define NET_AM_CTRL 18u            /* connection hello / ack */
#define NET_AM_PROBE 19u           /* heal.c: our own probe of our shared memory */
#define NET_HDR_LEN 16u            /* u64 req_id, u32 flags, u32 len, little-endian */
#define NET_LANE_HDR_LEN 24u       /* the same, then the u64 lane token (lane.c) */
#define NET_HELLO_MAX (64u << 10)  /* a hello's lane offer (worker address) */
#define NET_CTRL_HELLO 1u
#define NET_CTRL_ACK 2u
#define NET_DEFAULT_MAX_MSG (4u << 20)
#define NET_DEFAULT_MAX_CONNS 1024u
#define NET_REFUSE_LOG_EVERY 100u  /* log the 1st refusal over the cap, then every Nth */
#define NET_CLOSE_MS 2000          /* bound on a flush-close or a drain */
#define NET_POLL_MS 100            /* longest sleep between progress passes */
#define NET_WEDGE_MS 1000          /* default of KVT_NET_WEDGE_MS (heal.c) */
#define NET_PROBE_MS 1000          /* how long a probe may take to arrive (heal.c) */
#define NET_RETRY_PAUSE_MS 200     /* before a connect's try without a lane offer */
#define NET_EP_BUCKETS 256         /* ucp_ep_h -> kvt ep lookup */
#define NET_QUEUE_MIN_BYTES (64u << 20) /* hard cap on undelivered messages */
/* Floors of the budgets for rendezvous receives in flight (worker-wide, per
 * endpoint): each holds a buffer of its announced length until the peer
 * sends the data, so a peer that announces and stalls must not pin memory
 * without bound.  The caps also allow 4 (2) messages of max_msg_bytes. */
#define NET_RNDV_MIN_BYTES (64u << 20)
#define NET_RNDV_EP_MIN_BYTES (16u << 20)
/* Floor of the bound on bytes an endpoint may have waiting to be sent
 * (also at least 4 messages of max_msg_bytes): a peer that stops reading
 * gets FULL on our sends instead of our memory. */
#define NET_SEND_EP_MIN_BYTES (64u << 20)

typedef enum { NET_EV_MSG, NET_EV_DOWN, NET_EV_ACCEPT, NET_EV_SENT, NET_EV_HELLO } net_ev_type_t;

typedef struct net_send net_send_t; /* a send in flight (send.c) */

/* Message buffers kept for reuse (buf.c). */
#define NET_BUF_MIN (64u << 10)    /* smaller ones come from and go to malloc */
#define NET_BUF_ROUND (64u << 10)  /* capacity = length rounded up to this */
#define NET_BUF_IDLE (32u << 20)   /* idle bytes kept per worker */
#define NET_BUF_SLOTS 64
typedef struct {
    void *p;
    size_t cap;
} net_buf_t;

/* Something UCX told us that the user hears about after progress returns. */
typedef struct net_ev {
    struct net_ev *next;
    net_ev_type_t type;
    bool embedded;                /* lives inside its ep (DOWN) or its send
                                     record (SENT): never freed here */
    kvt_net_ep_t *ep;             /* MSG, DOWN, HELLO */
    kvt_net_listener_t *listener; /* ACCEPT */
    ucp_conn_request_h conn_req;  /* ACCEPT */
    uint64_t req_id;
    uint32_t flags;
    void *data;                   /* MSG, HELLO: kvt_malloc'd, owned by the event */
    size_t len;
} net_ev_t;

/* A kvt_net_request waiting for its reply; lives on the waiter's stack. */
typedef struct net_pending {
    struct net_pending *next;
    kvt_net_ep_t *ep;
    uint64_t req_id;
    bool done;
    kvt_status_t status;
    void *reply;                  /* kvt_malloc'd, handed to the waiter */
    size_t reply_len;
} net_pending_t;

/* A rendezvous receive in flight; its buffer belongs to UCX until done. */
typedef struct net_rndv {
    struct net_rndv *next, *prev;
    kvt_net_worker_t *worker;
    kvt_net_ep_t *ep;             /* NULL once the ep closed: result dropped */
    uint64_t req_id;
    uint32_t flags;
    size_t len;
    void *buf;
} net_rndv_t;

/* A rendezvous message waiting for budget: UCX keeps its descriptor (the
 * handler said UCS_INPROGRESS) and the sender's send stays in flight until
 * the receive starts, so a slow reader pushes back instead of losing it. */
typedef struct net_defer {
    struct net_defer *next;
    kvt_net_ep_t *ep;
    uint64_t req_id;
    uint32_t flags;
    void *desc;
    size_t len;
} net_defer_t;
#define NET_DEFER_EP_MAX 1024      /* per endpoint; dropped (logged) beyond */

struct kvt_net_ep {
    kvt_net_worker_t *worker;
    ucp_ep_h uep;                 /* NULL once closed at the UCX level */
    ucp_ep_h lane;                /* server: same-host lane, where its sends go */
    uint64_t lane_token;          /* client: its offer's token; server: the lane's */
    kvt_net_ep_t *tnext;          /* client: token hash chain (lane.c) */
    void *lane_close_req;         /* zombie: the lane's close still running */
    bool lane_up;                 /* client: the ack came on a lane */
    kvt_net_ep_t *next, *prev;    /* worker->eps, or worker->zombies */
    kvt_net_ep_t *hnext;          /* hash bucket chain, keyed by uep */
    void *user;
    void *close_req;              /* zombie: flush-close still running */
    ucs_status_t err;             /* why it died */
    bool alive;
    bool published;               /* the user holds it: failures are reported */
    bool hello_acked;
    bool closing;
    bool accepted;                /* from a listener: counts in n_accepted */
    bool rndv_warned;             /* a receive over budget was logged */
    bool defer_blocked;           /* kvt_net_rndv_resume: an earlier one waits */
    size_t n_defer;               /* its rendezvous messages waiting for budget */
    bool send_warned;             /* a send over its bound was logged */
    size_t rndv_bytes;            /* charged by its rendezvous receives */
    size_t send_bytes;            /* charged by its sends in flight */
    net_ev_t down_ev;             /* preallocated, so a failure is never lost */
    char peer[64];
};

struct kvt_net_listener {
    kvt_net_worker_t *worker;
    ucp_listener_h ul;            /* NULL: a rebuild could not listen again */
    kvt_net_listener_t *next, *prev;
    uint16_t port;
    struct sockaddr_storage sa;   /* where it listens (bound port), for a rebuild */
    socklen_t salen;
};

struct kvt_net_mem {
    kvt_net_worker_t *worker;
    kvt_net_mem_t *next, *prev;
    ucp_mem_h memh;
    void *ucx_rkey;               /* from ucp_rkey_pack */
    uint8_t *packed;              /* our framing + ucx_rkey */
    size_t packed_len;
};

struct kvt_net_rkey {
    ucp_rkey_h rkey;
};

struct kvt_net_worker {
    ucp_context_h ctx;
    ucp_worker_h uw;
    int efd;
    size_t max_msg;
    kvt_net_msg_fn on_msg;
    kvt_net_conn_fn on_conn;
    void *arg;
    size_t max_conns;             /* cap on n_accepted */
    size_t n_accepted;            /* accepted eps not yet finished */
    size_t n_refused;             /* connection requests rejected at the cap */
    kvt_net_ep_t *eps;
    kvt_net_ep_t *zombies;
    kvt_net_ep_t *buckets[NET_EP_BUCKETS];
    kvt_net_ep_t *tbuckets[NET_EP_BUCKETS]; /* lane token -> client ep */
    bool lanes;                   /* offer same-host lanes when connecting */
    char host_id[256];            /* who may share memory with us (lane.c) */
    ucp_address_t *addr;          /* this worker's address, for lane offers */
    size_t addr_len;
    uint64_t token_next;          /* lane tokens: an LCG from a random seed */
    kvt_net_listener_t *listeners;
    kvt_net_mem_t *mems;
    net_ev_t *ev_head, *ev_tail;
    size_t ev_bytes, ev_cap;      /* undelivered events, payload + record */
    net_pending_t *pending;
    net_rndv_t *rndv;
    net_defer_t *defer_head, *defer_tail; /* FIFO, waiting for budget */
    size_t rndv_bytes, rndv_cap, rndv_ep_cap; /* receives in flight, budgets */
    uint64_t next_req_id;
    net_send_t *sends;            /* sends whose completion has not run */
    size_t n_sends;
    size_t send_ep_cap;           /* bound on an endpoint's send_bytes */
    atomic_bool signaled;         /* kvt_net_worker_signal since the last wait */
    net_buf_t bufs[NET_BUF_SLOTS]; /* idle message buffers (buf.c) */
    size_t n_bufs, bufs_idle;
    /* heal.c: a UCX worker whose wakeup stays busy with nothing to progress
     * for wedge_ns is rebuilt. */
    uint64_t wedge_ns;            /* 0: never rebuild */
    uint64_t busy_since_ns;       /* 0: the last arm was not busy */
    uint64_t busy_last_ns;        /* the last busy arm */
    bool wedged;                  /* probe (and maybe rebuild) at the next top-level call */
    uint64_t rebuilds, probes;
    uint64_t probe_seen;          /* nonce of the last probe that arrived */
    ucp_context_h probe_ctx;      /* the prober: shared memory only, made on first use */
    ucp_worker_h probe_uw;
    ucp_ep_h probe_ep;            /* to uw, over shared memory */
    int sigfd;                    /* eventfd for kvt_net_worker_signal, never replaced */
    bool listen_down;             /* a listener could not listen again after a rebuild */
    uint64_t listen_retry_ns;     /* when to try it again */
};

/* UCX status to ours (peer failures and cancels are KVT_ERR_CLOSED). */
kvt_status_t kvt_net_status(ucs_status_t status);
/* Monotonic deadline timeout_ms from now (negative counts as 0). */
uint64_t kvt_net_deadline(int timeout_ms);

/* Endpoints (net.c).  alloc: zeroed, not yet known to UCX; params: peer
 * error handling and our error callback; link: on the worker's list and
 * lookup table once ep->uep exists; detach: drop its queued events, fail
 * its waiters, orphan its receives; finish: unlink, give back an accepted
 * ep's place under max_conns, close the UCX endpoint (flags: 0 flush or
 * UCP_EP_CLOSE_FLAG_FORCE) within timeout_ms and free, or park it as a
 * zombie if the close is still running.  finish is the one way out for
 * every ep (user close, failed connect, worker destroy), so it alone gives
 * back the place. */
kvt_net_ep_t *kvt_net_ep_alloc(kvt_net_worker_t *worker);
void kvt_net_ep_params(kvt_net_ep_t *ep, ucp_ep_params_t *params);
void kvt_net_ep_link(kvt_net_ep_t *ep);
void kvt_net_ep_detach(kvt_net_ep_t *ep);
void kvt_net_ep_finish(kvt_net_ep_t *ep, uint32_t flags, int timeout_ms);
/* The peer is gone (status says why): fail its waiters and report it down
 * once, as UCX's error callback does. */
void kvt_net_ep_fail(kvt_net_ep_t *ep, ucs_status_t status);
/* Create w->uw (and w->efd) on w->ctx with our handlers. */
kvt_status_t kvt_net_worker_setup(kvt_net_worker_t *w);
/* Free the close requests and memory of every parked ep. */
void kvt_net_zombies_free(kvt_net_worker_t *w);
/* heal.c.  note_arm: what ucp_worker_arm said after a progress pass that
 * did nothing (busy for wedge_ns marks the worker suspect).  check: if
 * marked, probe our shared memory and rebuild if the probe does not
 * arrive (top-level calls only).  probe_cb: the probe's AM handler;
 * probe_destroy: at worker destroy. */
void kvt_net_wedge_setup(kvt_net_worker_t *w);
void kvt_net_wedge_note_arm(kvt_net_worker_t *w, uint64_t now_ns, bool busy);
void kvt_net_wedge_check(kvt_net_worker_t *w);
ucs_status_t kvt_net_probe_cb(void *arg, const void *header, size_t header_length, void *data,
                              size_t length, const ucp_am_recv_param_t *param);
void kvt_net_probe_destroy(kvt_net_worker_t *w);
/* Listeners (conn.c): close the UCX listener (rebuild: before the old
 * worker goes), and listen again on the new worker (KVT_ERR_IO when it
 * cannot, e.g. its port was taken meanwhile; logged at debug only). */
void kvt_net_listener_unbind(kvt_net_listener_t *l);
kvt_status_t kvt_net_listener_rebind(kvt_net_listener_t *l);
/* heal.c: every listener listens again, now and, for those that cannot,
 * once a second at the top-level calls (kvt_net_wedge_check) until they
 * do: a server must not stay deaf because its port was taken for a
 * moment during a rebuild. */
void kvt_net_listeners_rebind(kvt_net_worker_t *w);
/* Sends (send.c).  am_send: a framed active message, the bytes copied
 * first (FULL over the endpoint's send bound).  sent_deliver: run the done
 * callback of the zero-copy send whose SENT event this is (with the
 * send's status), and free the send.  sends_orphan: ep is going
 * away; its sends in flight stop charging it.  sends_abandon: after
 * ucp_worker_destroy, finish what UCX never completed (done: CLOSED). */
kvt_status_t kvt_net_am_send(kvt_net_ep_t *ep, unsigned am_id, uint64_t req_id, uint32_t flags,
                             const void *data, size_t len);
void kvt_net_sent_deliver(net_ev_t *ev);
void kvt_net_sends_orphan(kvt_net_ep_t *ep);
void kvt_net_sends_abandon(kvt_net_worker_t *w);
/* A complete message whose payload is in buf (taken over: a reply goes to
 * its waiter, anything else to the queue) (net.c). */
void kvt_net_deliver(kvt_net_worker_t *worker, kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags,
                     void *buf, size_t len);
/* Rendezvous receives (rndv.c).  arrive: the AM handler's answer to an
 * announcement (start it, or keep it waiting: UCS_INPROGRESS).  resume:
 * start waiting ones the budget now allows (after progress, never inside
 * a UCX callback); returns how many.  forget: release the waiting ones of
 * ep (NULL: all).  orphan: receives in flight for ep complete into
 * nothing.  abandon: after the UCX worker they were posted on is gone
 * (a rebuild), the receives that never completed give their budget back;
 * returns how many bytes of buffers are left behind for good. */
ucs_status_t kvt_net_rndv_arrive(kvt_net_worker_t *worker, kvt_net_ep_t *ep, uint64_t req_id,
                                 uint32_t flags, void *desc, size_t len);
unsigned kvt_net_rndv_resume(kvt_net_worker_t *worker);
void kvt_net_rndv_forget(kvt_net_worker_t *worker, const kvt_net_ep_t *ep);
void kvt_net_rndv_orphan(kvt_net_worker_t *worker, const kvt_net_ep_t *ep);
size_t kvt_net_rndv_abandon(kvt_net_worker_t *worker);
/* Event queue (net.c): push one; purge those of ep or of listener. */
void kvt_net_ev_push(kvt_net_worker_t *worker, net_ev_t *ev);
void kvt_net_ev_purge(kvt_net_worker_t *worker, const kvt_net_ep_t *ep,
                      const kvt_net_listener_t *listener);
/* Create the endpoint for an accepted connection request and report it
 * up (conn.c); called when the ACCEPT event is delivered. */
void kvt_net_accept(kvt_net_listener_t *listener, ucp_conn_request_h conn_req);
/* One pass of a blocking wait: progress (and deliver queued events if
 * deliver), sleeping on the event fd, at most to deadline_ns, when idle. */
void kvt_net_step(kvt_net_worker_t *worker, uint64_t deadline_ns, bool deliver);
/* Close ep's UCX endpoint now with FORCE, waiting (bounded) for it; ep stays
 * the user's but is dead.  Used by get_batch at a timeout. */
void kvt_net_ep_force_close(kvt_net_ep_t *ep);
/* Same-host lanes (lane.c).  setup/cleanup: at worker create/destroy.
 * offer: a client's hello payload (malloc'd; NULL, 0 when it offers none),
 * which also files ep under a fresh token.  lookup: the client ep of a
 * token.  forget: unfile a client ep (on its way out).  hello: the server
 * side of a hello (from the queue when it carries an offer, at once when
 * not): opens the lane if the offer came from this host, then acks (on
 * the lane if there is one). */
void kvt_net_lane_setup(kvt_net_worker_t *worker);
void kvt_net_lane_cleanup(kvt_net_worker_t *worker);
kvt_status_t kvt_net_lane_offer(kvt_net_ep_t *ep, void **hello_p, size_t *len_p);
kvt_net_ep_t *kvt_net_lane_lookup(kvt_net_worker_t *worker, uint64_t token);
void kvt_net_lane_forget(kvt_net_ep_t *ep);
void kvt_net_lane_hello(kvt_net_ep_t *ep, const void *hello, size_t len);
/* Message buffers (buf.c; kvt_net_buf_alloc/free in net.h): free the idle
 * ones at worker destroy. */
void kvt_net_buf_destroy_all(kvt_net_worker_t *worker);
/* Worker teardown of the registrations the user left behind. */
void kvt_net_mem_destroy_all(kvt_net_worker_t *worker);

#endif
