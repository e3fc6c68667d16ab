/* Block server: a network thread with one UCX worker, a promotion
 * thread, leases over pinned T1 blocks.
 *
 * Everything below runs on the network thread (the worker is
 * single-thread) except start/stop/stats/promote_hold, which only touch
 * the thread handle, the stop flag, the stats under their mutex and the
 * promotion queue's hold under its lock.  The network thread never reads
 * the disk: a fetch pins what T1 holds (kvt_tier_pin_resident) and is
 * answered at once when no block it names is in T2 only.  Otherwise the
 * fetch becomes a job of the promotion thread (kvstore/block_promote.h),
 * which owns the job's keys and pins until it posts the job back
 * promoted; the network thread then answers it with the request id it
 * came with.  When the promotion queue is full (max_promotions jobs, 4
 * per connection) the fetch is not queued: what T1 holds is served and
 * the rest comes back RETRY, or, when nothing could be served, the answer
 * is Error BUSY; the client asks again.  A job whose client went away
 * comes back without an endpoint and is dropped; at stop, every job
 * still out is dropped, unanswered, once the promotion thread is joined.
 *
 * A lease owns pins (views) in the host pool: it ends by Release, by
 * expiry, by its client's disconnect or by stop, and each of those unpins
 * every view exactly once.  A job owns its pins the same way until they
 * become its reply's or its lease's, or it is dropped. */
#include "kvstore/block_server.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "kvstore/block_promote.h"
#include "net/net.h"
#include "proto/msg.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_LEASE_MS 30000
#define DEFAULT_MAX_LEASE_MS 300000
#define DEFAULT_MAX_LEASES 4096
#define MAX_KEYS_PER_FETCH 4096
#define MAX_LEASES_PER_CONN 64          /* one client cannot take every lease */
#define MAX_LEASE_LIFETIME_NS (600ull * 1000000000ull) /* renewals stop here */
#define LOOP_WAIT_MS 50
#define CLIENT_DEFAULT_MAX_REPLY (4u << 20) /* what a client that names none accepts */
#define REPLY_SLACK 4096                   /* envelope and reply fields */
#define DESC_OVERHEAD 96                   /* key, tags, lengths of one descriptor */
/* Inline replies aim at this size: on UCX 1.13 over TCP (loopback, this
 * project's VM) 768 KiB replies measured best, and multi-MiB replies of
 * many blocks still ran far slower per byte (bench/RESULTS.md).  A block
 * larger than this still goes alone, up to the client's cap. */
#define INLINE_TARGET_BYTES (768u << 10)
/* A leased reply (local or RMA) pins at most this much; the rest of the
 * fetch comes back RETRY.  A local lease lives at most LOCAL_LEASE_MAX_MS,
 * renewals included: its reader copies the blocks at once, and a lane
 * proves only that the client said it is on this host (net/lane.c), so
 * what a local client may hold is kept small. */
#define LEASED_REPLY_MAX_BYTES (64ull << 20)
#define LOCAL_LEASE_MAX_MS 10000

/* An inline reply being sent from a gathered buffer (the worker's message
 * buffers, kvt_net_buf_alloc: a fresh multi-MiB buffer per reply cost its
 * page faults every time and made 64 KiB-block pulls several times
 * slower). */
typedef struct {
    kvt_block_server_t *srv;
    uint8_t *data;
    size_t len;
} wire_buf_t;

typedef struct lease {
    uint64_t id;
    uint64_t created_ns;
    uint64_t expires_ns;
    kvt_net_ep_t *ep;
    kvt_block_view_t *views;
    size_t n_views;
    bool local;  /* read by a same-host client itself: short-lived */
    struct lease *next;
} lease_t;

/* The decoder bounds a tail's tokens for the store (proto cannot include
 * kvstore/block.h): keep the two equal. */
_Static_assert(KVT_PROTO_MAX_TAIL_TOKENS == KVT_BLOCK_MAX_TOKENS - 1,
               "proto's tail token bound is not the block's");

struct kvt_block_server {
    kvt_tier_t *tier;
    kvt_tail_store_t *tails;
    char *listen;
    uint32_t lease_ms, max_lease_ms, max_leases;
    bool rma;
    pthread_t thread;
    _Atomic bool stop;
    /* start-up handshake: the worker is made on the server thread */
    pthread_mutex_t start_lock;
    pthread_cond_t started;
    bool start_done;
    kvt_status_t start_status;
    uint16_t port;
    /* server thread only */
    kvt_net_worker_t *worker;
    kvt_net_listener_t *listener;
    kvt_net_mem_t *mem;
    Kvtier__LocalMap local_map; /* the pool's memfd, for local replies */
    bool local_map_set;         /* it has one (local_map_init) */
    lease_t *leases;
    uint32_t n_leases;
    kvt_net_ep_t **dead; /* endpoints to close after progress returns */
    size_t n_dead, cap_dead;
    kvt_block_promote_t *promote; /* made and destroyed on the network thread */
    uint32_t max_promotions;
    /* stats */
    pthread_mutex_t stats_lock;
    kvt_block_server_stats_t stats;
};

#define STAT_ADD(srv, field, v)                   \
    do {                                          \
        pthread_mutex_lock(&(srv)->stats_lock);   \
        (srv)->stats.field += (v);                \
        pthread_mutex_unlock(&(srv)->stats_lock); \
    } while (0)

/* --- replies --- */

static kvt_status_t send_envelope(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                                  kvt_msg_t *msg)
{
    uint8_t *buf;
    size_t len;
    kvt_status_t st = kvt_msg_encode(msg, &buf, &len);
    if (st == KVT_OK) {
        st = kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, buf, len);
        kvt_free(buf);
    }
    if (st != KVT_OK)
        kvt_log_warn("block server reply not sent peer=%s err=\"%s\"", kvt_net_ep_peer(ep),
                     kvt_status_str(st));
    return st;
}

static void send_error(kvt_net_ep_t *ep, uint64_t req_id, kvt_status_t code, const char *message)
{
    uint8_t *buf;
    size_t len;
    if (kvt_msg_encode_error(code, message, &buf, &len) != KVT_OK)
        return;
    kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, buf, len);
    kvt_free(buf);
}

static void reply_error(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                        kvt_status_t code, const char *message)
{
    STAT_ADD(srv, bad_messages, 1);
    kvt_log_info("block server refused a request peer=%s err=\"%s\" reason=\"%s\"",
                 kvt_net_ep_peer(ep), kvt_status_str(code), message);
    send_error(ep, req_id, code, message);
}

static void reply_ack(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                      uint64_t lease_id)
{
    Kvtier__Ack ack = KVTIER__ACK__INIT;
    ack.lease_id = lease_id;
    kvt_msg_t msg = KVTIER__ENVELOPE__INIT;
    msg.body_case = KVTIER__ENVELOPE__BODY_ACK;
    msg.ack = &ack;
    send_envelope(srv, ep, req_id, &msg);
}

/* --- reply buffers --- */

static kvt_status_t wire_get(kvt_block_server_t *srv, size_t need, wire_buf_t **wb_p)
{
    wire_buf_t *wb = kvt_malloc("block server reply", sizeof(*wb));
    uint8_t *data = wb ? kvt_net_buf_alloc(srv->worker, need) : NULL;
    if (!data) {
        kvt_free(wb);
        return KVT_ERR_NOMEM;
    }
    *wb = (wire_buf_t){.srv = srv, .data = data, .len = need};
    *wb_p = wb;
    return KVT_OK;
}

static void wire_put(wire_buf_t *wb)
{
    kvt_net_buf_free(wb->srv->worker, wb->data, wb->len);
    kvt_free(wb);
}

/* --- leases --- */

static void lease_free(kvt_block_server_t *srv, lease_t *lease)
{
    for (size_t i = 0; i < lease->n_views; i++)
        kvt_tier_unpin(srv->tier, &lease->views[i]);
    kvt_free(lease->views);
    kvt_free(lease);
}

/* Unlinks and frees every lease for which `match` holds. */
static size_t leases_drop(kvt_block_server_t *srv, bool (*match)(const lease_t *, const void *),
                          const void *arg)
{
    size_t dropped = 0;
    for (lease_t **pp = &srv->leases; *pp;) {
        lease_t *lease = *pp;
        if (!match(lease, arg)) {
            pp = &lease->next;
            continue;
        }
        *pp = lease->next;
        srv->n_leases--;
        lease_free(srv, lease);
        dropped++;
    }
    if (dropped) {
        pthread_mutex_lock(&srv->stats_lock);
        srv->stats.leases_active = srv->n_leases;
        pthread_mutex_unlock(&srv->stats_lock);
    }
    return dropped;
}

static bool lease_expired(const lease_t *lease, const void *now) { return lease->expires_ns <= *(const uint64_t *)now; }
static bool lease_of_ep(const lease_t *lease, const void *ep) { return lease->ep == ep; }
static bool lease_any(const lease_t *lease, const void *unused) { (void)lease; (void)unused; return true; }
static bool lease_is(const lease_t *lease, const void *target) { return lease == target; }

static lease_t *lease_find(kvt_block_server_t *srv, uint64_t id, const kvt_net_ep_t *ep)
{
    for (lease_t *l = srv->leases; l; l = l->next)
        if (l->id == id && l->ep == ep) /* a lease id is only good on its own connection */
            return l;
    return NULL;
}

static uint32_t leases_of(const kvt_block_server_t *srv, const kvt_net_ep_t *ep)
{
    uint32_t n = 0;
    for (const lease_t *l = srv->leases; l; l = l->next)
        n += l->ep == ep;
    return n;
}

static uint64_t lease_id_new(void)
{
    uint64_t id = 0;
    while (id == 0) /* 0 means "no lease" on the wire */
        if (getrandom(&id, sizeof(id), 0) != sizeof(id))
            id = kvt_time_ns() * 0x9e3779b97f4a7c15ull;
    return id;
}

static uint32_t lease_ms_for(const kvt_block_server_t *srv, uint32_t asked)
{
    if (asked == 0)
        return srv->lease_ms;
    return asked > srv->max_lease_ms ? srv->max_lease_ms : asked;
}

/* How long a lease holds for a client that asked for `asked` ms. */
static uint32_t lease_ms_of(const kvt_block_server_t *srv, const lease_t *lease, uint32_t asked)
{
    uint32_t ms = lease_ms_for(srv, asked);
    return lease->local && ms > LOCAL_LEASE_MAX_MS ? LOCAL_LEASE_MAX_MS : ms;
}

/* --- fetch --- */

/* What an inline reply may carry: what the client accepts (and we can
 * send), less room for the envelope. */
static size_t inline_budget(const kvt_block_server_t *srv, uint32_t max_reply_bytes)
{
    size_t budget = max_reply_bytes ? max_reply_bytes : CLIENT_DEFAULT_MAX_REPLY;
    size_t ours = kvt_net_worker_max_msg(srv->worker);
    if (budget > ours)
        budget = ours;
    return budget > REPLY_SLACK ? budget - REPLY_SLACK : 0;
}

/* Describes one pinned block.  Inline (inline_left != NULL): its payload
 * goes in the reply's attachment at *attach_used if it still fits, else it
 * is unpinned and the descriptor says RETRY.  Leased: its address, unless
 * the lease would pin more than LEASED_REPLY_MAX_BYTES (*inline_used
 * counts what it pins), then RETRY too.  Returns false when the block was
 * not kept. */
static bool describe_pinned(kvt_block_server_t *srv, Kvtier__BlockDescriptor *d,
                            kvt_block_view_t *v, size_t *inline_left, size_t *inline_used,
                            uint64_t *attach_used)
{
    size_t need = v->header_len + v->payload_len + DESC_OVERHEAD;
    bool over_target = inline_used && *inline_used > 0 && *inline_used + need > INLINE_TARGET_BYTES;
    bool over_lease = !inline_left && *inline_used > 0 &&
                      *inline_used + v->payload_len > LEASED_REPLY_MAX_BYTES;
    if ((inline_left && (need > *inline_left || over_target)) || over_lease) {
        kvt_tier_unpin(srv->tier, v);
        d->status = KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY;
        return false;
    }
    d->status = KVTIER__BLOCK_DESCRIPTOR__STATUS__OK;
    d->length = v->payload_len;
    d->header.data = v->header;
    d->header.len = v->header_len;
    if (inline_left) {
        d->attach_offset = *attach_used; /* sent from T1 where it lies */
        *attach_used += v->payload_len;
        *inline_left -= need;
        *inline_used += need;
    } else {
        d->addr = (uint64_t)(uintptr_t)v->payload;
        *inline_used += v->payload_len; /* what the lease pins */
    }
    return true;
}

/* An inline reply's send is over: its buffer goes back to the pool. */
static void inline_sent(kvt_status_t status, void *arg)
{
    wire_buf_t *wb = arg;
    if (status != KVT_OK)
        kvt_log_info("block server inline reply not delivered err=\"%s\"", kvt_status_str(status));
    wire_put(wb);
}

/* A zero-copy inline reply in flight: its envelope and attachment prefix
 * (head), and the lease whose pinned views UCX reads until the send is
 * done; the pins keep those blocks in T1 until then. */
typedef struct {
    kvt_block_server_t *srv;
    lease_t *lease;
    uint8_t head[];
} zc_reply_t;

static void zc_sent(kvt_status_t status, void *arg)
{
    zc_reply_t *z = arg;
    if (status != KVT_OK)
        kvt_log_info("block server inline reply not delivered err=\"%s\"", kvt_status_str(status));
    lease_free(z->srv, z->lease);
    kvt_free(z);
}

/* Sends msg with the payloads of lease's views as its attachment straight
 * from T1, as a list of segments; *lease_taken: the send now owns the lease
 * and unpins it when done.  Only on a same-host lane (net.h): there UCX
 * reads the segments with one process_vm_writev, and skipping the gather
 * made 64 KiB-1 MiB pulls ~35% faster; over TCP segments went at half the
 * speed of one buffer (send_attached). */
static kvt_status_t send_attached_zcopy(kvt_block_server_t *srv, kvt_net_ep_t *ep,
                                        uint64_t req_id, kvt_msg_t *msg, lease_t *lease,
                                        size_t att, bool *lease_taken)
{
    size_t env_len = kvt_msg_encoded_len(msg);
    size_t head_cap = env_len + KVT_MSG_ATTACH_PREFIX_MAX;
    zc_reply_t *z = kvt_malloc("block server zero-copy reply", sizeof(*z) + head_cap);
    kvt_net_iov_t *iov = kvt_malloc("block server reply segments",
                                    (lease->n_views + 1) * sizeof(*iov));
    kvt_status_t st = z && iov ? KVT_OK : KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = kvt_msg_encode_to(msg, z->head, head_cap, &env_len);
    if (st == KVT_OK) {
        *z = (zc_reply_t){.srv = srv, .lease = lease};
        size_t head_len = env_len + kvt_msg_attach_prefix(att, z->head + env_len);
        iov[0] = (kvt_net_iov_t){z->head, head_len};
        for (size_t i = 0; i < lease->n_views; i++)
            iov[i + 1] = (kvt_net_iov_t){lease->views[i].payload, lease->views[i].payload_len};
        st = kvt_net_sendv(ep, req_id, KVT_NET_FLAG_REPLY, iov, lease->n_views + 1, zc_sent, z);
    }
    kvt_free(iov); /* sendv keeps its own copy of the list */
    if (st == KVT_OK) {
        *lease_taken = true;
        return KVT_OK;
    }
    kvt_free(z);
    kvt_log_warn("block server reply not sent peer=%s err=\"%s\"", kvt_net_ep_peer(ep),
                 kvt_status_str(st));
    return st;
}

/* Sends msg with the payloads of lease's views as its attachment.  Over a
 * same-host lane they go from where they lie (send_attached_zcopy);
 * elsewhere they are gathered once into a pooled buffer, which UCX sends
 * without another copy: UCX 1.13 over TCP sent a list of segments by
 * rendezvous at about half the speed of one contiguous buffer (kvtier
 * bench pull), and a pooled buffer costs no page faults. */
static kvt_status_t send_attached(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                                  kvt_msg_t *msg, lease_t *lease, bool *lease_taken)
{
    size_t att = 0;
    for (size_t i = 0; i < lease->n_views; i++)
        att += lease->views[i].payload_len;
    size_t env_len = kvt_msg_encoded_len(msg);
    size_t need = env_len + KVT_MSG_ATTACH_PREFIX_MAX + att;
    if (need <= KVT_PROTO_MAX_MSG && kvt_net_ep_lane(ep))
        return send_attached_zcopy(srv, ep, req_id, msg, lease, att, lease_taken);
    wire_buf_t *wb = NULL;
    kvt_status_t st = need > KVT_PROTO_MAX_MSG ? KVT_ERR_TOO_LARGE : wire_get(srv, need, &wb);
    if (st == KVT_OK && (st = kvt_msg_encode_to(msg, wb->data, wb->len, &env_len)) != KVT_OK)
        wire_put(wb);
    if (st == KVT_OK) {
        uint8_t *p = wb->data + env_len;
        p += kvt_msg_attach_prefix(att, p);
        for (size_t i = 0; i < lease->n_views; i++) {
            memcpy(p, lease->views[i].payload, lease->views[i].payload_len);
            p += lease->views[i].payload_len;
        }
        kvt_net_iov_t iov = {wb->data, (size_t)(p - wb->data)};
        st = kvt_net_sendv(ep, req_id, KVT_NET_FLAG_REPLY, &iov, 1, inline_sent, wb);
        if (st != KVT_OK)
            wire_put(wb);
    }
    if (st != KVT_OK)
        kvt_log_warn("block server reply not sent peer=%s err=\"%s\"", kvt_net_ep_peer(ep),
                     kvt_status_str(st));
    return st;
}

/* An inline reply has no lease, no rkey and no pid: that is how the client
 * tells.  A kept lease is read by the client, locally (our pid: it reads
 * our memory itself) or by RMA (the rkey). */
static kvt_status_t fetch_reply(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                                lease_t *lease, bool keep, bool local,
                                Kvtier__BlockDescriptor **ptrs, size_t n, bool *lease_taken)
{
    Kvtier__BlockFetchReply rep = KVTIER__BLOCK_FETCH_REPLY__INIT;
    if (keep) {
        rep.lease_id = lease->id;
        rep.lease_ms = (lease->expires_ns - kvt_time_ns()) / 1000000;
    }
    if (keep && local) {
        rep.local_pid = (uint32_t)getpid();
        rep.local_map = srv->local_map_set ? &srv->local_map : NULL;
    } else if (keep) {
        size_t rkey_len;
        const void *rkey = kvt_net_mem_rkey(srv->mem, &rkey_len);
        rep.rkey.data = (uint8_t *)rkey;
        rep.rkey.len = rkey_len;
    }
    rep.n_blocks = n;
    rep.blocks = ptrs;
    kvt_msg_t msg = KVTIER__ENVELOPE__INIT;
    msg.body_case = KVTIER__ENVELOPE__BODY_FETCH_REPLY;
    msg.fetch_reply = &rep;
    return keep ? send_envelope(srv, ep, req_id, &msg)
                : send_attached(srv, ep, req_id, &msg, lease, lease_taken);
}

/* --- a fetch, at once or through the promotion thread --- */

typedef kvt_block_promote_job_t fetch_t;

static void fetch_free(kvt_block_server_t *srv, fetch_t *f)
{
    kvt_block_promote_job_destroy(srv->tier, f);
}

static void fetch_drop(fetch_t *f, void *srv) { fetch_free(srv, f); }

/* The request, copied: a fetch outlives its message when it is promoted. */
static fetch_t *fetch_new(kvt_net_ep_t *ep, uint64_t req_id, const Kvtier__BlockFetchRequest *req)
{
    fetch_t *f = kvt_block_promote_job_create(req->n_keys);
    if (!f)
        return NULL;
    for (size_t i = 0; i < req->n_keys; i++)
        memcpy(f->keys[i].b, req->keys[i].data, KVT_KEY_LEN); /* 32 bytes: checked by the decoder */
    f->ep = ep;
    f->req_id = req_id;
    f->lease_ms = req->lease_ms;
    f->max_reply_bytes = req->max_reply_bytes;
    /* Only a client on our host can read our memory, and only one that
     * came over a same-host lane proved it is (net/lane.c). */
    f->local_read = req->local_read && kvt_net_ep_lane(ep);
    f->accept_rma = req->accept_rma;
    return f;
}

/* Whether f is answered under a lease that the client reads: locally,
 * or by RMA where both sides chose it (a client unpacks a server's rkey
 * only when it trusts that server: kvt_block_client_accept_rma). */
static bool fetch_leased(const kvt_block_server_t *srv, const fetch_t *f)
{
    return (srv->rma && f->accept_rma) || f->local_read;
}

/* Describes every key of f; the lease takes over f's pins, keeps those it
 * describes (moved down its views) and unpins those that do not fit an
 * inline reply (inline_left != NULL: RETRY).  Keys still cold (the
 * promotion queue was full) are RETRY too: *busy_p counts them.  Returns
 * how many descriptors are not RETRY. */
static size_t fetch_describe(kvt_block_server_t *srv, fetch_t *f, lease_t *lease,
                             Kvtier__BlockDescriptor *descs, Kvtier__BlockDescriptor **ptrs,
                             size_t *inline_left, size_t *busy_p)
{
    uint64_t missing = 0, failed = 0, attached = 0;
    size_t used = 0, busy = 0;
    lease->views = f->views;
    f->views = NULL;
    for (size_t i = 0; i < f->n_keys; i++) {
        Kvtier__BlockDescriptor *d = &descs[i];
        kvtier__block_descriptor__init(d);
        ptrs[i] = d;
        d->key = (ProtobufCBinaryData){KVT_KEY_LEN, f->keys[i].b};
        if (f->state[i] == KVT_PROMOTE_PINNED) {
            kvt_block_view_t *v = &lease->views[lease->n_views]; /* n_views <= i */
            *v = lease->views[i];
            lease->n_views += describe_pinned(srv, d, v, inline_left, &used, &attached);
        } else if (f->state[i] == KVT_PROMOTE_COLD) {
            d->status = KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY;
            busy++;
        } else if (f->state[i] == KVT_PROMOTE_MISSING) {
            d->status = KVTIER__BLOCK_DESCRIPTOR__STATUS__MISSING;
            missing++;
        } else {
            d->status = KVTIER__BLOCK_DESCRIPTOR__STATUS__FAILED;
            failed++;
        }
    }
    pthread_mutex_lock(&srv->stats_lock);
    srv->stats.fetches++;
    srv->stats.fetches_busy += busy > 0;
    srv->stats.blocks_served += lease->n_views;
    srv->stats.blocks_missing += missing;
    srv->stats.blocks_failed += failed;
    pthread_mutex_unlock(&srv->stats_lock);
    *busy_p = busy;
    return lease->n_views + missing + failed;
}

/* Answers f from what it holds; lease (allocated) takes f's pins. */
static void fetch_answer(kvt_block_server_t *srv, fetch_t *f, lease_t *lease,
                         Kvtier__BlockDescriptor *descs, Kvtier__BlockDescriptor **ptrs)
{
    kvt_net_ep_t *ep = f->ep;
    lease->ep = ep;
    lease->id = lease_id_new();
    lease->created_ns = kvt_time_ns();
    lease->local = f->local_read;
    uint32_t lease_ms = lease_ms_of(srv, lease, f->lease_ms);
    lease->expires_ns = lease->created_ns + (uint64_t)lease_ms * 1000000;
    size_t left = inline_budget(srv, f->max_reply_bytes), busy;
    bool leased = fetch_leased(srv, f);
    size_t settled = fetch_describe(srv, f, lease, descs, ptrs, leased ? NULL : &left, &busy);
    if (busy > 0 && settled == 0) {
        /* Not a reply of RETRYs only: to a client that means a block too
         * large for any reply. */
        kvt_log_debug("block server busy promoting peer=%s", kvt_net_ep_peer(ep));
        send_error(ep, f->req_id, KVT_ERR_BUSY, "promotion queue full, ask again");
        lease_free(srv, lease);
        return;
    }
    bool keep = leased && lease->n_views > 0;
    if (keep) { /* held before the client can know of it */
        lease->next = srv->leases;
        srv->leases = lease;
        srv->n_leases++;
        STAT_ADD(srv, leases_active, 1);
    }
    bool taken = false; /* by a zero-copy reply, which unpins when sent */
    kvt_status_t st =
        fetch_reply(srv, ep, f->req_id, lease, keep, f->local_read, ptrs, f->n_keys, &taken);
    if (keep && st != KVT_OK)
        leases_drop(srv, lease_is, lease); /* the client never learnt its id */
    else if (!keep && !taken)
        lease_free(srv, lease); /* inline: the reply holds copies now */
}

/* The last step of every fetch, at once or back from the promotion
 * thread: answers f and frees it. */
static void fetch_finish(kvt_block_server_t *srv, fetch_t *f)
{
    lease_t *lease = kvt_calloc("block server lease", 1, sizeof(*lease));
    Kvtier__BlockDescriptor *descs = kvt_calloc("block server descs", f->n_keys + 1, sizeof(*descs));
    Kvtier__BlockDescriptor **ptrs = kvt_calloc("block server desc ptrs", f->n_keys + 1, sizeof(*ptrs));
    if (lease && descs && ptrs) {
        fetch_answer(srv, f, lease, descs, ptrs);
    } else {
        reply_error(srv, f->ep, f->req_id, KVT_ERR_NOMEM, "server out of memory");
        kvt_free(lease);
    }
    kvt_free(descs);
    kvt_free(ptrs);
    fetch_free(srv, f); /* the pins it holds if the lease did not take them */
}

static void promotions_out_stat(kvt_block_server_t *srv)
{
    uint32_t out = kvt_block_promote_out(srv->promote, NULL);
    pthread_mutex_lock(&srv->stats_lock);
    srv->stats.promotions_out = out;
    pthread_mutex_unlock(&srv->stats_lock);
}

/* A job back from the promotion thread (out of the count already; the
 * stat follows once its pins are settled). */
static void fetch_promoted(fetch_t *f, void *arg)
{
    kvt_block_server_t *srv = arg;
    if (kvt_net_ep_alive(f->ep))
        fetch_finish(srv, f);
    else /* gone (NULL), or going: on_conn drops its leases */
        fetch_free(srv, f);
    promotions_out_stat(srv);
}

static void handle_fetch(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                         const Kvtier__BlockFetchRequest *req)
{
    if (!kvt_net_ep_alive(ep))
        return; /* its leases are gone already: do not pin for it */
    if (req->n_keys > MAX_KEYS_PER_FETCH) {
        reply_error(srv, ep, req_id, KVT_ERR_TOO_LARGE, "too many keys in one fetch");
        return;
    }
    fetch_t *f = fetch_new(ep, req_id, req);
    if (!f) {
        reply_error(srv, ep, req_id, KVT_ERR_NOMEM, "server out of memory");
        return;
    }
    /* A fetch at the promotion thread holds a lease's place already. */
    if (fetch_leased(srv, f) &&
        (srv->n_leases + kvt_block_promote_out(srv->promote, NULL) >= srv->max_leases ||
         leases_of(srv, ep) + kvt_block_promote_out(srv->promote, ep) >= MAX_LEASES_PER_CONN)) {
        reply_error(srv, ep, req_id, KVT_ERR_FULL, "too many leases held");
        fetch_free(srv, f);
        return;
    }
    if (kvt_block_promote_job_pin_resident(srv->tier, f) > 0 &&
        kvt_block_promote_submit(srv->promote, f) == KVT_OK) {
        STAT_ADD(srv, promotions, 1);
        promotions_out_stat(srv);
        return; /* answered when it comes back (fetch_promoted) */
    }
    fetch_finish(srv, f);
}

static void handle_renew(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                         const Kvtier__LeaseRenew *req)
{
    lease_t *lease = lease_find(srv, req->lease_id, ep);
    if (!lease) {
        reply_error(srv, ep, req_id, KVT_ERR_NOT_FOUND, "no such lease on this connection");
        return;
    }
    uint64_t expires = kvt_time_ns() + (uint64_t)lease_ms_of(srv, lease, req->lease_ms) * 1000000;
    uint64_t lifetime = lease->local ? LOCAL_LEASE_MAX_MS * 1000000ull : MAX_LEASE_LIFETIME_NS;
    if (expires - lease->created_ns > lifetime) {
        reply_error(srv, ep, req_id, KVT_ERR_BUSY, "lease renewed past its lifetime");
        return;
    }
    lease->expires_ns = expires;
    reply_ack(srv, ep, req_id, lease->id);
}

static void handle_release(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                           const Kvtier__Release *req)
{
    lease_t *lease = lease_find(srv, req->lease_id, ep);
    if (!lease) {
        reply_error(srv, ep, req_id, KVT_ERR_NOT_FOUND, "no such lease on this connection");
        return;
    }
    leases_drop(srv, lease_is, lease);
    STAT_ADD(srv, leases_released, 1);
    if (req_id != 0) /* 0: a one-way release, nobody waits for the ack */
        reply_ack(srv, ep, req_id, req->lease_id);
}

/* --- partial tails --- */

typedef struct {
    uint8_t *buf;
    size_t len;
} encoded_t;

/* Runs under the tail store's lock: the reply is encoded (the payload
 * copied) before a release can free the tail. */
static kvt_status_t tail_encode(const kvt_tail_view_t *tail, void *arg)
{
    Kvtier__TailReply rep = KVTIER__TAIL_REPLY__INIT;
    rep.found = 1;
    rep.key = (ProtobufCBinaryData){KVT_KEY_LEN, (uint8_t *)tail->key->b};
    rep.parent = (ProtobufCBinaryData){KVT_KEY_LEN, (uint8_t *)tail->parent->b};
    rep.n_tokens = tail->t;
    rep.tokens = (uint32_t *)tail->tokens;
    rep.checksum = tail->checksum;
    rep.payload = (ProtobufCBinaryData){tail->len, (uint8_t *)tail->payload};
    kvt_msg_t msg = KVTIER__ENVELOPE__INIT;
    msg.body_case = KVTIER__ENVELOPE__BODY_TAIL_REPLY;
    msg.tail_reply = &rep;
    encoded_t *out = arg;
    return kvt_msg_encode(&msg, &out->buf, &out->len);
}

static void handle_tail_fetch(kvt_block_server_t *srv, kvt_net_ep_t *ep, uint64_t req_id,
                              const Kvtier__TailFetch *req)
{
    if (!kvt_net_ep_alive(ep))
        return; /* nobody to hand it to: keep the hold */
    kvt_block_key_t key;
    memcpy(key.b, req->key.data, KVT_KEY_LEN); /* 32 bytes: checked by the decoder */
    encoded_t enc = {0};
    kvt_status_t st = srv->tails ? kvt_tail_store_get(srv->tails, &key, req->release,
                                                      tail_encode, &enc)
                                 : KVT_ERR_NOT_FOUND;
    if (st == KVT_ERR_NOT_FOUND) {
        STAT_ADD(srv, tails_missing, 1);
        Kvtier__TailReply rep = KVTIER__TAIL_REPLY__INIT; /* found = false */
        kvt_msg_t msg = KVTIER__ENVELOPE__INIT;
        msg.body_case = KVTIER__ENVELOPE__BODY_TAIL_REPLY;
        msg.tail_reply = &rep;
        send_envelope(srv, ep, req_id, &msg);
        return;
    }
    if (st != KVT_OK) {
        reply_error(srv, ep, req_id, st, "tail reply not encoded");
        return;
    }
    STAT_ADD(srv, tails_served, 1);
    st = kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, enc.buf, enc.len);
    if (st != KVT_OK)
        kvt_log_warn("block server tail reply not sent peer=%s err=\"%s\"", kvt_net_ep_peer(ep),
                     kvt_status_str(st));
    kvt_free(enc.buf);
}

static void on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                   size_t len, void *arg)
{
    kvt_block_server_t *srv = arg;
    kvt_msg_t *msg = NULL;
    kvt_status_t st = kvt_msg_decode(data, len, &msg);
    if (st != KVT_OK) {
        reply_error(srv, ep, req_id, st, "message does not decode");
        return;
    }
    switch (msg->body_case) {
    case KVTIER__ENVELOPE__BODY_FETCH_REQUEST: handle_fetch(srv, ep, req_id, msg->fetch_request); break;
    case KVTIER__ENVELOPE__BODY_LEASE_RENEW: handle_renew(srv, ep, req_id, msg->lease_renew); break;
    case KVTIER__ENVELOPE__BODY_RELEASE: handle_release(srv, ep, req_id, msg->release); break;
    case KVTIER__ENVELOPE__BODY_TAIL_FETCH: handle_tail_fetch(srv, ep, req_id, msg->tail_fetch); break;
    default:
        reply_error(srv, ep, req_id, KVT_ERR_INVALID, "message type not served by a block server");
    }
    kvt_msg_free(msg);
}

static void on_conn(kvt_net_ep_t *ep, bool up, void *arg)
{
    kvt_block_server_t *srv = arg;
    if (up)
        return;
    size_t orphaned = kvt_block_promote_forget(srv->promote, ep);
    if (orphaned) {
        STAT_ADD(srv, promotions_orphaned, orphaned);
        kvt_log_info("block server dropped the promotions of a lost client peer=%s fetches=%zu",
                     kvt_net_ep_peer(ep), orphaned);
    }
    size_t n = leases_drop(srv, lease_of_ep, ep);
    if (n) {
        STAT_ADD(srv, leases_released, n);
        kvt_log_info("block server released leases of a lost client peer=%s leases=%zu",
                     kvt_net_ep_peer(ep), n);
    }
    /* Closing frees ep: not from inside the progress that reported it. */
    if (srv->n_dead == srv->cap_dead) {
        size_t cap = srv->cap_dead ? 2 * srv->cap_dead : 16;
        kvt_net_ep_t **d = kvt_realloc("block server dead eps", srv->dead, cap * sizeof(*d));
        if (!d)
            return; /* the worker closes it at stop */
        srv->dead = d;
        srv->cap_dead = cap;
    }
    srv->dead[srv->n_dead++] = ep;
}

/* --- the thread --- */

/* A same-host client may map the pool's memfd and copy pinned payloads out
 * of it (net/peer_map.c) instead of a process_vm_readv per block.  A pool
 * without one (no memfd) is read block by block. */
static void local_map_init(kvt_block_server_t *srv, void *region, size_t region_len)
{
    int fd = kvt_host_pool_region_fd(kvt_tier_host(srv->tier));
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0)
        return;
    Kvtier__LocalMap m = KVTIER__LOCAL_MAP__INIT;
    m.fd = (uint32_t)fd;
    m.inode = (uint64_t)sb.st_ino;
    m.addr = (uint64_t)(uintptr_t)region;
    m.length = region_len;
    srv->local_map = m;
    srv->local_map_set = true;
}

static kvt_status_t serve_setup(kvt_block_server_t *srv)
{
    kvt_net_worker_params_t wp = {.max_msg_bytes = KVT_PROTO_MAX_MSG, .on_msg = on_msg,
                                  .on_conn = on_conn, .arg = srv};
    kvt_status_t st = kvt_net_worker_create(&wp, &srv->worker);
    if (st != KVT_OK)
        return st;
    kvt_block_promote_params_t pp = {.tier = srv->tier, .worker = srv->worker,
                                     .max_jobs = srv->max_promotions};
    if ((st = kvt_block_promote_create(&pp, &srv->promote)) != KVT_OK)
        return st;
    size_t region_len;
    void *region = kvt_host_pool_region(kvt_tier_host(srv->tier), &region_len);
    local_map_init(srv, region, region_len);
    if (srv->rma && (st = kvt_net_mem_register(srv->worker, region, region_len, &srv->mem)) != KVT_OK)
        return st;
    if ((st = kvt_net_listen(srv->worker, srv->listen, &srv->listener)) != KVT_OK)
        return st;
    srv->port = kvt_net_listener_port(srv->listener);
    return KVT_OK;
}

static void serve_teardown(kvt_block_server_t *srv)
{
    kvt_block_promote_destroy(srv->promote, fetch_drop, srv); /* joins its thread */
    leases_drop(srv, lease_any, NULL);
    if (srv->listener)
        kvt_net_listener_destroy(srv->listener);
    if (srv->mem)
        kvt_net_mem_deregister(srv->mem);
    if (srv->worker)
        kvt_net_worker_destroy(srv->worker); /* closes the endpoints still open */
    kvt_free(srv->dead);
}

static void serve_loop(kvt_block_server_t *srv)
{
    while (!atomic_load(&srv->stop)) {
        kvt_net_worker_wait(srv->worker, LOOP_WAIT_MS);
        for (size_t i = 0; i < srv->n_dead; i++)
            kvt_net_ep_close(srv->dead[i]);
        srv->n_dead = 0;
        kvt_block_promote_collect(srv->promote, fetch_promoted, srv);
        uint64_t now = kvt_time_ns();
        size_t n = leases_drop(srv, lease_expired, &now);
        if (n) {
            STAT_ADD(srv, leases_expired, n);
            kvt_log_info("block server leases expired count=%zu", n);
        }
    }
}

static void *serve_main(void *arg)
{
    kvt_block_server_t *srv = arg;
    kvt_status_t st = serve_setup(srv);
    pthread_mutex_lock(&srv->start_lock);
    srv->start_status = st;
    srv->start_done = true;
    pthread_cond_broadcast(&srv->started);
    pthread_mutex_unlock(&srv->start_lock);
    if (st == KVT_OK)
        serve_loop(srv);
    serve_teardown(srv);
    return NULL;
}

/* --- start / stop --- */

static void server_free(kvt_block_server_t *srv)
{
    pthread_mutex_destroy(&srv->start_lock);
    pthread_cond_destroy(&srv->started);
    pthread_mutex_destroy(&srv->stats_lock);
    kvt_free(srv->listen);
    kvt_free(srv);
}

kvt_status_t kvt_block_server_start(const kvt_block_server_params_t *params,
                                    kvt_block_server_t **server_p)
{
    if (!params->tier || !params->listen)
        return KVT_ERR_INVALID;
    kvt_block_server_t *srv = kvt_calloc("block server", 1, sizeof(*srv));
    if (!srv)
        return KVT_ERR_NOMEM;
    srv->tier = params->tier;
    srv->tails = params->tails;
    srv->listen = kvt_malloc("block server listen", strlen(params->listen) + 1);
    if (!srv->listen) {
        kvt_free(srv);
        return KVT_ERR_NOMEM;
    }
    strcpy(srv->listen, params->listen);
    srv->lease_ms = params->lease_ms ? params->lease_ms : DEFAULT_LEASE_MS;
    srv->max_lease_ms = params->max_lease_ms ? params->max_lease_ms : DEFAULT_MAX_LEASE_MS;
    srv->max_leases = params->max_leases ? params->max_leases : DEFAULT_MAX_LEASES;
    srv->rma = params->rma;
    srv->max_promotions = params->max_promotions;
    pthread_mutex_init(&srv->start_lock, NULL);
    pthread_cond_init(&srv->started, NULL);
    pthread_mutex_init(&srv->stats_lock, NULL);
    if (pthread_create(&srv->thread, NULL, serve_main, srv) != 0) {
        server_free(srv);
        return KVT_ERR_NOMEM;
    }
    pthread_mutex_lock(&srv->start_lock);
    while (!srv->start_done)
        pthread_cond_wait(&srv->started, &srv->start_lock);
    kvt_status_t st = srv->start_status;
    pthread_mutex_unlock(&srv->start_lock);
    if (st != KVT_OK) {
        pthread_join(srv->thread, NULL);
        kvt_log_error("block server failed to start listen=%s err=\"%s\"", params->listen,
                      kvt_status_str(st));
        server_free(srv);
        return st;
    }
    kvt_log_info("block server listening listen=%s port=%u mode=%s", srv->listen, srv->port,
                 srv->rma ? "rma" : "inline");
    *server_p = srv;
    return KVT_OK;
}

uint16_t kvt_block_server_port(const kvt_block_server_t *server) { return server->port; }

void kvt_block_server_stats(kvt_block_server_t *server, kvt_block_server_stats_t *stats_p)
{
    pthread_mutex_lock(&server->stats_lock);
    *stats_p = server->stats;
    pthread_mutex_unlock(&server->stats_lock);
}

void kvt_block_server_promote_hold(kvt_block_server_t *server, bool hold)
{
    kvt_block_promote_hold(server->promote, hold);
}

void kvt_block_server_stop(kvt_block_server_t *server)
{
    if (!server)
        return;
    atomic_store(&server->stop, true);
    pthread_join(server->thread, NULL);
    server_free(server);
}
