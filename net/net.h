/* net: the UCX transport (ucp).
 *
 * One worker per thread that needs one; every call on a worker, its
 * endpoints, listeners, memory and requests is made from the thread that
 * owns the worker (UCX's UCS_THREAD_MODE_SINGLE), and nothing happens
 * unless that thread drives progress (kvt_net_worker_progress / _wait, or
 * the blocking calls below, which progress while they wait).
 *
 * Messages are UCX active messages carrying a small fixed frame header
 * (request id, flags) and a payload of at most max_msg_bytes; anything
 * larger is refused on send and dropped (and logged) on receive.  Block
 * payloads do not go in messages: they are read with RMA (ucp_get_nbx)
 * from memory the peer registered and described with a packed rkey.
 *
 * Failure: every endpoint uses UCX peer error handling, so a dead or
 * unreachable peer fails every pending operation on it, and the blocking
 * calls also give up at their own timeout: nothing waits forever.  A dead
 * endpoint is reported once to the connection callback and stays usable
 * only for kvt_net_ep_close.  Addresses are "HOST:PORT" (IPv4 or a name);
 * UCX_TLS and the other UCX_* variables are honoured. */
#ifndef KVT_NET_NET_H
#define KVT_NET_NET_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_net_worker kvt_net_worker_t;
typedef struct kvt_net_ep kvt_net_ep_t;
typedef struct kvt_net_listener kvt_net_listener_t;
typedef struct kvt_net_mem kvt_net_mem_t;
typedef struct kvt_net_rkey kvt_net_rkey_t;

#define KVT_NET_FLAG_REPLY 1u /* the message answers the request with its id */

/* An incoming message.  data is valid only during the callback (copy what
 * must outlive it).  Runs inside progress on the worker's thread. */
typedef void (*kvt_net_msg_fn)(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags,
                               const void *data, size_t len, void *arg);
/* An endpoint came up (accepted by a listener) or went down (peer error
 * or closed by the peer).  Runs inside progress. */
typedef void (*kvt_net_conn_fn)(kvt_net_ep_t *ep, bool up, void *arg);

typedef struct {
    size_t max_msg_bytes;        /* 0: 4 MiB */
    size_t max_conns;            /* 0: 1024.  Accepted endpoints (all of this
                                    worker's listeners; not its own connects)
                                    held at once; a connection request beyond
                                    is rejected and its connect fails.  An
                                    endpoint counts until kvt_net_ep_close
                                    (or worker destroy), dead or alive: close
                                    dead ones in on_conn(ep, false). */
    kvt_net_msg_fn on_msg;       /* may be NULL: messages are dropped */
    kvt_net_conn_fn on_conn;     /* may be NULL */
    void *arg;                   /* passed to both */
} kvt_net_worker_params_t;

kvt_status_t kvt_net_worker_create(const kvt_net_worker_params_t *params,
                                   kvt_net_worker_t **worker_p);
/* Closes (forcibly) every endpoint and listener still open, then frees. */
void kvt_net_worker_destroy(kvt_net_worker_t *worker);
/* The largest message this worker sends or accepts. */
size_t kvt_net_worker_max_msg(const kvt_net_worker_t *worker);
/* Make progress without blocking; returns after one pass. */
void kvt_net_worker_progress(kvt_net_worker_t *worker);
/* Progress, sleeping in the kernel until something happens or timeout_ms
 * passes (0: just progress). */
void kvt_net_worker_wait(kvt_net_worker_t *worker, int timeout_ms);

/* Wake the worker's thread out of kvt_net_worker_wait (or a blocking call's
 * wait) at once.  The one call any thread may make on a worker: other
 * threads hand work to the owner through their own queue, then signal. */
void kvt_net_worker_signal(kvt_net_worker_t *worker);

/* Replace the UCX worker with a fresh one: every endpoint is reported down
 * (on_conn(ep, false); close it as after any failure), listeners listen
 * again on the same ports, and nothing else changes.  Done by itself when
 * the worker is wedged -- a same-host peer killed in the middle of a
 * shared-memory send leaves UCX 1.13's queue stuck: UCX keeps reporting
 * work for KVT_NET_WEDGE_MS (default 1000; 0: never) and a probe through
 * that queue does not arrive (net/heal.c) -- at the next
 * kvt_net_worker_wait, kvt_net_worker_progress or kvt_net_connect, so
 * hold no rkey across those.  Callable directly (tests, an operator's
 * reset).  KVT_ERR_IO: no new worker could be made; the old one is kept. */
kvt_status_t kvt_net_worker_rebuild(kvt_net_worker_t *worker);
/* How many times this worker was rebuilt. */
uint64_t kvt_net_worker_rebuilds(const kvt_net_worker_t *worker);

/* --- connections --- */

/* Listen on host:port (port 0: any free port; see kvt_net_listener_port).
 * Accepted endpoints are reported through on_conn(ep, true); requests over
 * the worker's max_conns are rejected (logged, not reported). */
kvt_status_t kvt_net_listen(kvt_net_worker_t *worker, const char *host_port,
                            kvt_net_listener_t **listener_p);
uint16_t kvt_net_listener_port(const kvt_net_listener_t *listener);
void kvt_net_listener_destroy(kvt_net_listener_t *listener);

/* Connect to host:port and wait (progressing) until the endpoint is up.
 * KVT_ERR_IO if refused or unreachable, KVT_ERR_AGAIN on timeout. */
kvt_status_t kvt_net_connect(kvt_net_worker_t *worker, const char *host_port, int timeout_ms,
                             kvt_net_ep_t **ep_p);
/* Connect, retrying with exponential backoff (100 ms doubling, up to 2 s
 * between tries) until total_timeout_ms has passed. */
kvt_status_t kvt_net_connect_retry(kvt_net_worker_t *worker, const char *host_port,
                                   int total_timeout_ms, kvt_net_ep_t **ep_p);
/* Flush and close (forcibly if the peer is dead); frees ep.  Pending
 * operations on it fail. */
void kvt_net_ep_close(kvt_net_ep_t *ep);
bool kvt_net_ep_alive(const kvt_net_ep_t *ep);
/* Caller data attached to an endpoint (e.g. the server's per-client state). */
void kvt_net_ep_set_user(kvt_net_ep_t *ep, void *user);
void *kvt_net_ep_user(const kvt_net_ep_t *ep);
/* The peer sends to us over a same-host lane: a second UCX endpoint that
 * the server side opens to this worker's address when both processes are
 * on one host (same hostname, boot, IPC and pid namespaces and user), so
 * that UCX can use shared memory, which it does not for client-server
 * endpoints.  Offered by every connect unless KVT_NET_LANES=0 is set in
 * the client's environment; a server on another host simply declines. */
bool kvt_net_ep_lane(const kvt_net_ep_t *ep);
/* "host:port" of the peer, for logs. */
const char *kvt_net_ep_peer(const kvt_net_ep_t *ep);

/* --- messages --- */

/* Send a message (the bytes are copied or sent before return).  The send
 * completes in the background; KVT_ERR_TOO_LARGE over max_msg_bytes,
 * KVT_ERR_CLOSED on a dead endpoint, KVT_ERR_FULL when the endpoint's
 * sends in flight already hold its bound (4 x max_msg_bytes, at least
 * 64 MiB): a peer that stops reading. */
kvt_status_t kvt_net_send(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                          size_t len);
/* A zero-copy send: the message is the concatenation of the segments,
 * which UCX reads where they lie, so they must stay valid and unchanged
 * until done runs.  done runs exactly once when kvt_net_sendv returned
 * KVT_OK (never otherwise): inside progress on the worker's thread, with
 * KVT_OK when the message went out or why it did not (KVT_ERR_CLOSED when
 * the endpoint or worker went away first); at the latest in
 * kvt_net_worker_destroy.  Errors as kvt_net_send, and KVT_ERR_INVALID
 * over KVT_NET_MAX_IOV segments. */
typedef struct {
    const void *data;
    size_t len;
} kvt_net_iov_t;
typedef void (*kvt_net_sent_fn)(kvt_status_t status, void *arg);
#define KVT_NET_MAX_IOV 8192
kvt_status_t kvt_net_sendv(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags,
                           const kvt_net_iov_t *iov, size_t n, kvt_net_sent_fn done, void *arg);

/* Send a request with a fresh id and wait (progressing; other messages
 * still go to on_msg) for the message that replies to it.  *reply_p is
 * malloc'd (kvt_free).  KVT_ERR_AGAIN on timeout, KVT_ERR_CLOSED if the
 * endpoint dies first. */
kvt_status_t kvt_net_request(kvt_net_ep_t *ep, const void *data, size_t len, int timeout_ms,
                             void **reply_p, size_t *reply_len_p);

/* Buffers for large messages, kept by the worker for reuse: a fresh
 * multi-MiB allocation pays a page fault per 4 KiB each time (glibc maps
 * it anew), which made pulls several times slower.  alloc: at least len
 * bytes (NULL: out of memory).  free (NULL: no-op): give back a buffer of
 * len bytes, from alloc or a reply of kvt_net_request(_many) with its
 * length; kvt_free is also correct for those, just not reused.  On the
 * worker's thread; idle buffers are freed at worker destroy. */
void *kvt_net_buf_alloc(kvt_net_worker_t *worker, size_t len);
void kvt_net_buf_free(kvt_net_worker_t *worker, void *buf, size_t len);

/* Send every request at once, then wait (as kvt_net_request) until each
 * has its reply or timeout_ms passed: n requests cost one round trip, and
 * the peer's replies stream back to back.  Each gets its own status
 * (KVT_ERR_AGAIN if its reply did not come in time; a send that failed
 * fails it and every later one); a request with status KVT_OK has its
 * malloc'd reply (kvt_free).  Returns the first request's failure, in
 * order, or KVT_OK. */
typedef struct {
    const void *data;   /* in */
    size_t len;         /* in */
    void *reply;        /* out */
    size_t reply_len;   /* out */
    kvt_status_t status;/* out */
} kvt_net_req_t;
kvt_status_t kvt_net_request_many(kvt_net_ep_t *ep, kvt_net_req_t *reqs, size_t n, int timeout_ms);

/* A request whose reply is collected later, so that a caller can keep a
 * window of requests in flight and read each reply while the next ones
 * travel.  kvt_net_call_start sends it (errors as kvt_net_send); every
 * call started must end with a kvt_net_call_wait that does not return
 * KVT_ERR_AGAIN, or with kvt_net_call_drop, before the worker is
 * destroyed.  Wait progresses the worker (as kvt_net_request: other
 * calls' replies are kept for them) until the reply came or timeout_ms
 * passed: KVT_ERR_AGAIN when it has not come (the call is still the
 * caller's: wait again or drop it), else the call is freed and the result
 * is KVT_OK with *reply_p (free with kvt_net_buf_free) or the endpoint's
 * failure.  Drop frees it and whatever reply it got; a reply that comes
 * later is discarded. */
typedef struct kvt_net_call kvt_net_call_t;
kvt_status_t kvt_net_call_start(kvt_net_ep_t *ep, const void *data, size_t len,
                                kvt_net_call_t **call_p);
kvt_status_t kvt_net_call_wait(kvt_net_call_t *call, int timeout_ms, void **reply_p,
                               size_t *reply_len_p);
void kvt_net_call_drop(kvt_net_call_t *call);

/* --- memory and RMA --- */

/* Register [addr, addr+len) for remote reads.  The memory stays the
 * caller's; deregister before freeing it. */
kvt_status_t kvt_net_mem_register(kvt_net_worker_t *worker, void *addr, size_t len,
                                  kvt_net_mem_t **mem_p);
void kvt_net_mem_deregister(kvt_net_mem_t *mem);
/* The packed rkey peers need to read this memory; valid while mem is. */
const void *kvt_net_mem_rkey(const kvt_net_mem_t *mem, size_t *len_p);

/* Unpack a peer's rkey for use on ep; KVT_ERR_INVALID on garbage.  UCX
 * keeps it in the worker's memory: destroy it before the next
 * kvt_net_worker_wait, _progress or kvt_net_connect (a rebuild there
 * replaces the worker). */
kvt_status_t kvt_net_rkey_unpack(kvt_net_ep_t *ep, const void *packed, size_t len,
                                 kvt_net_rkey_t **rkey_p);
void kvt_net_rkey_destroy(kvt_net_rkey_t *rkey);

typedef struct {
    void *local;          /* destination, in memory registered on this worker
                             (or any memory: UCX registers on the fly, slower) */
    uint64_t remote_addr;
    size_t len;
    kvt_status_t status;  /* out: KVT_OK or why this read failed */
} kvt_net_get_t;

/* Same-host read (net/peer_read.c): copy len bytes at remote in process
 * pid into local with process_vm_readv, no UCX involved; for a peer
 * reached over a same-host lane that named its pid.  KVT_OK, or
 * KVT_ERR_DENIED (the kernel refuses: another user, a ptrace policy),
 * KVT_ERR_CLOSED (no such process), KVT_ERR_IO (not mapped there). */
kvt_status_t kvt_net_local_read(int pid, void *local, uint64_t remote, size_t len);

/* Same-host mapping (net/peer_map.c): a peer's region, a sealed memfd
 * (kvt_alloc_shared) that it named, mapped read-only here once; reads are
 * then memcpy at the peer's addresses.  open: KVT_OK, KVT_ERR_DENIED (no
 * permission, no pidfd_getfd, or not sealed against shrinking),
 * KVT_ERR_CLOSED (no such process or fd), KVT_ERR_NOMEM (out of fds or
 * memory: may pass), KVT_ERR_IO (not a tmpfs file, or not the one named);
 * read: KVT_ERR_IO outside the region.  A map keeps the peer's pages alive: close it when the
 * connection ends. */
typedef struct {
    int pid;         /* the peer process */
    int fd;          /* the memfd's number there */
    uint64_t inode;  /* the memfd's st_ino, as the peer saw it */
    uint64_t base;   /* the region's address in the peer */
    uint64_t length; /* its bytes, the file's size */
} kvt_net_peer_region_t;

typedef struct kvt_net_peer_map kvt_net_peer_map_t;

kvt_status_t kvt_net_peer_map_open(const kvt_net_peer_region_t *region, kvt_net_peer_map_t **map_p);
bool kvt_net_peer_region_same(const kvt_net_peer_region_t *a, const kvt_net_peer_region_t *b);
bool kvt_net_peer_map_is(const kvt_net_peer_map_t *map, const kvt_net_peer_region_t *region);
kvt_status_t kvt_net_peer_map_read(const kvt_net_peer_map_t *map, void *local, uint64_t remote,
                                   size_t len);
void kvt_net_peer_map_close(kvt_net_peer_map_t *map);

#define KVT_NET_GET_GRACE_MS 2000

/* Issue every read, then wait (progressing) until all have completed or
 * timeout_ms passed; each op gets its own status.  Returns KVT_OK if all
 * succeeded, else the first failure (KVT_ERR_AGAIN on timeout, KVT_ERR_IO
 * or KVT_ERR_CLOSED when the peer failed).  Reads still in flight at the
 * timeout get KVT_NET_GET_GRACE_MS more while the peer is alive (a forced
 * close with reads queued at a TCP peer can abort that peer inside UCX
 * 1.13); UCX cannot cancel a read, so after that the endpoint is closed
 * forcibly, which completes the rest with errors before return: `local` is
 * the caller's again either way, and the endpoint is dead after a
 * timeout. */
kvt_status_t kvt_net_get_batch(kvt_net_ep_t *ep, kvt_net_rkey_t *rkey, kvt_net_get_t *ops,
                               size_t n_ops, int timeout_ms);

#endif
