/* Pull: fetch requests (several at once), the payloads copied into the
 * caller's buffers -- out of an inline reply, by RMA, or, from a server on
 * this host, straight out of its memory (block_local.c) -- a release for a
 * lease, and every block checked before it is reported OK (invariant 3).  A
 * partial tail comes inline in one TailFetch/TailReply exchange through
 * the same request path, checked as strictly.
 *
 * A client keeps its peer's address, so when the endpoint dies (peer
 * restarted, network cut) the next pull or pull_tail closes it and
 * connects once more before asking; ep is NULL between a failed reconnect
 * and the next try, and nothing past ensure_connected runs then. */
#include "kvstore/block_clientInt.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/pfor.h"
#include "common/time.h"
#include "proto/msg.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


kvt_status_t kvt_block_client_connect(kvt_net_worker_t *worker, const char *peer, int timeout_ms,
                                      kvt_block_client_t **client_p)
{
    if (!worker || !peer || !client_p || strlen(peer) >= KVT_BLOCK_PEER_ADDR_MAX)
        return KVT_ERR_INVALID;
    kvt_block_client_t *c = kvt_calloc("block client", 1, sizeof(*c));
    if (!c)
        return KVT_ERR_NOMEM;
    c->worker = worker;
    memcpy(c->peer, peer, strlen(peer) + 1);
    /* On unless turned off (to compare, or where reading another process
     * is not wanted); the kernel may refuse it too (block_local.c). */
    const char *env = getenv("KVT_NET_LOCAL_READS");
    c->local_reads = !(env && strcmp(env, "0") == 0);
    /* On unless turned off: reads from the server's pool mapped here, else
     * process_vm_readv per block (local_map). */
    env = getenv("KVT_NET_LOCAL_MAP");
    c->local_maps = !(env && strcmp(env, "0") == 0);
    /* Off unless asked for: an rkey is unpacked by UCX, which trusts its
     * bytes, so only a server this client trusts may send one. */
    env = getenv("KVT_PULL_RMA");
    c->accept_rma = env && strcmp(env, "1") == 0;
    kvt_status_t st = kvt_net_connect(worker, peer, timeout_ms, &c->ep);
    if (st != KVT_OK) {
        kvt_log_error("block client cannot connect peer=%s err=\"%s\"", peer, kvt_status_str(st));
        kvt_free(c);
        return st;
    }
    *client_p = c;
    return KVT_OK;
}

void kvt_block_client_close(kvt_block_client_t *client)
{
    if (!client)
        return;
    kvt_net_ep_close(client->ep);
    kvt_net_peer_map_close(client->map);
    kvt_pfor_destroy(client->readers);
    kvt_free(client);
}

/* A dead endpoint is closed and replaced by one new connection, within
 * timeout_ms; on failure the client stays closed (ep NULL) and the next
 * call tries again.  The connect has logged why it failed. */
static kvt_status_t ensure_connected(kvt_block_client_t *c, int timeout_ms)
{
    if (kvt_net_ep_alive(c->ep))
        return KVT_OK;
    kvt_net_ep_close(c->ep);
    c->ep = NULL;
    /* The map would keep a dead server's pool alive; the next server's
     * replies name its own, or none. */
    kvt_net_peer_map_close(c->map);
    c->map = NULL;
    c->map_refused = (kvt_net_peer_region_t){0};
    kvt_status_t st = kvt_net_connect(c->worker, c->peer, timeout_ms, &c->ep);
    if (st != KVT_OK)
        return st;
    kvt_log_info("block client reconnected peer=%s", c->peer);
    return KVT_OK;
}

/* A decoded reply and the bytes it arrived in: an inline fetch reply's
 * payloads are read where they landed, in the attachment. */
typedef struct {
    kvt_msg_t *msg;
    kvt_net_worker_t *worker;     /* raw goes back to it, for reuse */
    void *raw;
    size_t raw_len;
    const uint8_t *att;
    size_t att_len;
} reply_t;

static void reply_free(reply_t *r)
{
    kvt_msg_free(r->msg);
    kvt_net_buf_free(r->worker, r->raw, r->raw_len);
    *r = (reply_t){0};
}

/* The Error reply's code as our status; only known codes are believed
 * (the code comes from the peer). */
static kvt_status_t refused(const kvt_block_client_t *c, const Kvtier__Error *e)
{
    kvt_status_t st = e->code >= 1 && e->code <= (uint32_t)-KVT_ERR_DENIED
                          ? (kvt_status_t)-(int)e->code
                          : KVT_ERR_IO;
    if (st == KVT_ERR_BUSY) /* asked again (pull); a busy server says it often */
        kvt_log_debug("block server busy peer=%s message=\"%s\"", kvt_net_ep_peer(c->ep),
                      e->message);
    else
        kvt_log_warn("block server refused peer=%s code=%u message=\"%s\"",
                     kvt_net_ep_peer(c->ep), e->code, e->message);
    return st;
}

/* Decodes a reply that arrived in raw (taken over: freed with *r, or here
 * on an error); an Error reply becomes its status. */
static kvt_status_t reply_take(kvt_block_client_t *c, void *raw, size_t len, reply_t *r)
{
    *r = (reply_t){.worker = c->worker, .raw = raw, .raw_len = len};
    kvt_status_t st = kvt_msg_decode_attached(raw, len, &r->msg, &r->att, &r->att_len);
    if (st != KVT_OK) {
        kvt_log_error("block client got an undecodable reply peer=%s err=\"%s\"",
                      kvt_net_ep_peer(c->ep), kvt_status_str(st));
        kvt_net_buf_free(c->worker, raw, len);
        *r = (reply_t){0};
        return KVT_ERR_CORRUPT;
    }
    if (r->msg->body_case == KVTIER__ENVELOPE__BODY_ERROR) {
        st = refused(c, r->msg->error);
        reply_free(r);
        return st;
    }
    return KVT_OK;
}

/* One request, one decoded reply.  On KVT_OK the caller frees *r with
 * reply_free. */
static kvt_status_t exchange(kvt_block_client_t *c, kvt_msg_t *req, int timeout_ms, reply_t *r)
{
    *r = (reply_t){0};
    uint8_t *buf;
    size_t len;
    kvt_status_t st = kvt_msg_encode(req, &buf, &len);
    if (st != KVT_OK)
        return st;
    void *raw;
    size_t rep_len;
    st = kvt_net_request(c->ep, buf, len, timeout_ms, &raw, &rep_len);
    kvt_free(buf);
    return st != KVT_OK ? st : reply_take(c, raw, rep_len, r);
}

/* How long a local reply's pins may wait for this client: it reads them
 * at once, and a lease it loses track of (a request dropped after a
 * failure) must not hold the server's memory for the default 30 s. */
#define PULL_LOCAL_LEASE_MS 5000

/* The fetch request for the keys of items[pending[0..n)], encoded; local:
 * it asks to read the payloads itself (pull_local). */
static kvt_status_t fetch_encode(const kvt_block_client_t *c, const kvt_pull_t *items,
                                 const size_t *pending, size_t n, bool local, uint8_t **buf_p,
                                 size_t *len_p)
{
    ProtobufCBinaryData *keys = kvt_calloc("pull keys", n + 1, sizeof(*keys));
    if (!keys)
        return KVT_ERR_NOMEM;
    for (size_t k = 0; k < n; k++) {
        keys[k].data = (uint8_t *)items[pending[k]].key.b;
        keys[k].len = KVT_KEY_LEN;
    }
    size_t max_reply = kvt_net_worker_max_msg(c->worker);
    Kvtier__BlockFetchRequest fr = KVTIER__BLOCK_FETCH_REQUEST__INIT;
    fr.n_keys = n;
    fr.keys = keys;
    fr.max_reply_bytes = max_reply > UINT32_MAX ? UINT32_MAX : (uint32_t)max_reply;
    fr.local_read = local;
    fr.lease_ms = local ? PULL_LOCAL_LEASE_MS : 0;
    fr.accept_rma = c->accept_rma;
    kvt_msg_t req = KVTIER__ENVELOPE__INIT;
    req.body_case = KVTIER__ENVELOPE__BODY_FETCH_REQUEST;
    req.fetch_request = &fr;
    kvt_status_t st = kvt_msg_encode(&req, buf_p, len_p);
    kvt_free(keys);
    return st;
}

/* The reply to a fetch of n keys, decoded and checked to answer it. */
static kvt_status_t fetch_reply_take(kvt_block_client_t *c, kvt_net_req_t *rq, size_t n,
                                     reply_t *r)
{
    kvt_status_t st = reply_take(c, rq->reply, rq->reply_len, r);
    rq->reply = NULL;
    if (st == KVT_OK && (r->msg->body_case != KVTIER__ENVELOPE__BODY_FETCH_REPLY ||
                         r->msg->fetch_reply->n_blocks != n)) {
        kvt_log_error("block client got a reply that does not answer the fetch peer=%s",
                      kvt_net_ep_peer(c->ep));
        reply_free(r);
        st = KVT_ERR_CORRUPT;
    }
    return st;
}

/* The descriptor's header, checked against what was asked for. */
kvt_status_t kvt_block_describe(const Kvtier__BlockDescriptor *d, kvt_pull_t *item,
                                const kvt_block_identity_t *expect)
{
    if (d->status == KVTIER__BLOCK_DESCRIPTOR__STATUS__MISSING)
        return KVT_ERR_NOT_FOUND;
    if (d->status != KVTIER__BLOCK_DESCRIPTOR__STATUS__OK)
        return KVT_ERR_IO;
    size_t hlen;
    if (kvt_block_header_decode(d->header.data, d->header.len, &item->hdr, &hlen) != KVT_OK ||
        !kvt_block_key_eq(&item->hdr.key, &item->key) ||
        kvt_block_header_check_key(&item->hdr) != KVT_OK || d->length != item->hdr.payload_len)
        return KVT_ERR_CORRUPT;
    if (expect && kvt_block_header_check_identity(&item->hdr, expect) != KVT_OK)
        return KVT_ERR_MISMATCH;
    return d->length > item->cap ? KVT_ERR_TOO_LARGE : KVT_OK;
}

void kvt_block_verify_payload(kvt_block_client_t *c, kvt_pull_t *item, size_t len)
{
    if (item->status != KVT_OK || kvt_block_payload_verify(&item->hdr, item->dst, len) == KVT_OK)
        return;
    char hex[2 * KVT_KEY_LEN + 1];
    kvt_block_key_hex(&item->key, hex);
    kvt_log_error("pulled block failed its checksum key=%s peer=%s", hex, kvt_net_ep_peer(c->ep));
    item->status = KVT_ERR_CORRUPT;
}

/* Inline reply: copy each payload out of the attachment and check it;
 * RETRY items are marked.  A descriptor pointing outside the attachment
 * is CORRUPT (the peer's word is not trusted).  A reply that serves none
 * of its blocks means its first one cannot fit in any reply (the server
 * sends a lone block whenever it fits the client's cap): TOO_LARGE. */
static void read_inline(kvt_block_client_t *c, const reply_t *r, kvt_pull_t *items,
                        const size_t *pending, size_t n, const kvt_block_identity_t *expect,
                        bool *retry)
{
    const Kvtier__BlockFetchReply *rep = r->msg->fetch_reply;
    for (size_t k = 0; k < n; k++) {
        const Kvtier__BlockDescriptor *d = rep->blocks[k];
        kvt_pull_t *item = &items[pending[k]];
        retry[k] = d->status == KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY;
        if (retry[k])
            continue;
        item->status = kvt_block_describe(d, item, expect);
        if (item->status == KVT_OK &&
            (d->attach_offset > r->att_len || d->length > r->att_len - d->attach_offset))
            item->status = KVT_ERR_CORRUPT;
        if (item->status == KVT_OK)
            memcpy(item->dst, r->att + d->attach_offset, d->length);
        kvt_block_verify_payload(c, item, d->length);
    }
    size_t served = 0;
    for (size_t k = 0; k < n; k++)
        served += !retry[k];
    if (n > 0 && served == 0) {
        retry[0] = false;
        items[pending[0]].status = KVT_ERR_TOO_LARGE;
    }
}

/* RMA reply: read every described block; statuses land in items, RETRY
 * items (the server was busy promoting them) are marked. */
static kvt_status_t read_rma(kvt_block_client_t *c, const Kvtier__BlockFetchReply *rep,
                             kvt_pull_t *items, const size_t *pending, size_t n,
                             const kvt_block_identity_t *expect, bool *retry, int timeout_ms)
{
    kvt_net_get_t *ops = kvt_calloc("pull ops", n + 1, sizeof(*ops));
    size_t *which = kvt_calloc("pull op items", n + 1, sizeof(*which));
    kvt_net_rkey_t *rkey = NULL;
    kvt_status_t st = ops && which ? KVT_OK : KVT_ERR_NOMEM;
    size_t n_ops = 0;
    for (size_t k = 0; st == KVT_OK && k < n; k++) {
        kvt_pull_t *item = &items[pending[k]];
        retry[k] = rep->blocks[k]->status == KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY;
        if (retry[k])
            continue;
        item->status = kvt_block_describe(rep->blocks[k], item, expect);
        if (item->status != KVT_OK)
            continue;
        ops[n_ops] = (kvt_net_get_t){.local = item->dst, .remote_addr = rep->blocks[k]->addr,
                                     .len = rep->blocks[k]->length};
        which[n_ops++] = pending[k];
    }
    if (st == KVT_OK && n_ops > 0)
        st = kvt_net_rkey_unpack(c->ep, rep->rkey.data, rep->rkey.len, &rkey);
    if (st == KVT_OK && n_ops > 0)
        kvt_net_get_batch(c->ep, rkey, ops, n_ops, timeout_ms);
    for (size_t k = 0; k < n_ops; k++) {
        kvt_pull_t *item = &items[which[k]];
        item->status = st != KVT_OK ? st : ops[k].status;
        kvt_block_verify_payload(c, item, ops[k].len);
    }
    if (rkey)
        kvt_net_rkey_destroy(rkey);
    kvt_free(ops);
    kvt_free(which);
    return st;
}

/* One-way (request id 0): the next pull need not wait a round trip for an
 * ack.  A release that is lost is covered by the lease's expiry. */
static void release(kvt_block_client_t *c, uint64_t lease_id)
{
    if (!lease_id || !kvt_net_ep_alive(c->ep))
        return; /* a dead connection's leases are dropped by the server */
    Kvtier__Release rel = KVTIER__RELEASE__INIT;
    rel.lease_id = lease_id;
    kvt_msg_t req = KVTIER__ENVELOPE__INIT;
    req.body_case = KVTIER__ENVELOPE__BODY_RELEASE;
    req.release = &rel;
    uint8_t *buf;
    size_t len;
    if (kvt_msg_encode(&req, &buf, &len) != KVT_OK)
        return;
    kvt_net_send(c->ep, 0, 0, buf, len);
    kvt_free(buf);
}

/* What one fetch request asks for, and how many are in flight at once:
 * a pass keeps a window of requests out and sends the next one as soon as
 * the oldest reply is in, before reading it, so replies travel while
 * others are read and the connection never idles between batches.  512
 * KiB of payload per request, so that its reply, headers included, fits
 * the block server's 768 KiB inline target (a larger request comes back
 * partly RETRY and costs another pass).  Over TCP two in flight, not more:
 * on UCX 1.13 over one TCP lane, eight 512 KiB replies in flight collapsed
 * to ~0.3 GB/s (rendezvous and eager alike), and so did two 4 MiB ones,
 * where two of about 1 MiB held 1.4-2.6 GB/s (kvtier bench pull,
 * bench/RESULTS.md 2026-11-22).  Over a same-host lane (shared memory)
 * four, which keeps the server sending while the client reads.  At most 2
 * MiB of destination is asked for at once (one request at least), well
 * within what the receiving worker takes in flight by rendezvous (at
 * least 16 MiB per endpoint, net/netInt.h): a reply over that budget
 * waits for room. */
#define PULL_CHUNK_BYTES (512u << 10)
#define PULL_WINDOW_BYTES (2u << 20)
/* Read locally (kvt_block_read_local), a reply carries no payload and the request
 * and reply trip is the cost per request: 16 MiB per request (several
 * blocks, which the client's readers share), 64 MiB in flight (leases pin
 * that much for the time the client reads it). */
#define PULL_LOCAL_CHUNK_BYTES (16u << 20)
#define PULL_LOCAL_WINDOW_BYTES (64u << 20)
#define PULL_MAX_REQUESTS 4       /* on a same-host lane */
#define PULL_MAX_REQUESTS_TCP 2

/* Splits pending[0..n) into runs of about chunk_bytes of destination
 * capacity and at most PULL_MAX_KEYS keys (the block server takes 4096 a
 * fetch), at least one key each: starts[0..count] bound them (starts has
 * room for n + 1). */
#define PULL_MAX_KEYS 1024

static size_t chunk_split(const kvt_pull_t *items, const size_t *pending, size_t n,
                          size_t chunk_bytes, size_t *starts)
{
    size_t count = 0, run = 0;
    starts[0] = 0;
    for (size_t k = 0; k < n; k++) {
        size_t cap = items[pending[k]].cap;
        if (k > starts[count] && (run + cap > chunk_bytes || k - starts[count] >= PULL_MAX_KEYS)) {
            starts[++count] = k;
            run = 0;
        }
        run += cap;
    }
    starts[++count] = n;
    return n ? count : 0;
}

/* A reply in a mode this client did not ask for: every block of it is
 * CORRUPT and nothing of it is used.  An rkey is not unpacked (UCX parses
 * packed rkeys without a length and trusts them; only a server the client
 * trusts may send one, KVT_PULL_RMA=1); a local reply is not read (else a
 * server could make the client read some process's memory on its word;
 * asked only over a same-host lane). */
static kvt_status_t unasked_reply(kvt_block_client_t *c, const char *mode, kvt_pull_t *items,
                                  const size_t *pending, size_t n)
{
    kvt_log_error("block client refused a reply it did not ask for peer=%s mode=%s",
                  kvt_net_ep_peer(c->ep), mode);
    for (size_t k = 0; k < n; k++)
        items[pending[k]].status = KVT_ERR_CORRUPT;
    return KVT_ERR_CORRUPT;
}

/* Reads one decoded reply's blocks into items[pending[0..n)]; local: its
 * request asked to read locally. */
static kvt_status_t read_reply(kvt_block_client_t *c, const reply_t *r, kvt_pull_t *items,
                               const size_t *pending, size_t n, const kvt_block_identity_t *expect,
                               bool local, bool *retry, int timeout_ms)
{
    const Kvtier__BlockFetchReply *rep = r->msg->fetch_reply;
    kvt_status_t st = KVT_OK;
    if (rep->local_pid != 0 && local && kvt_net_ep_lane(c->ep))
        kvt_block_read_local(c, rep, items, pending, n, expect, retry);
    else if (rep->local_pid != 0)
        st = unasked_reply(c, "local", items, pending, n);
    else if (rep->rkey.len != 0 && c->accept_rma)
        st = read_rma(c, rep, items, pending, n, expect, retry, timeout_ms);
    else if (rep->rkey.len != 0)
        st = unasked_reply(c, "rma", items, pending, n);
    else
        read_inline(c, r, items, pending, n, expect, retry);
    release(c, rep->lease_id);
    return st;
}

/* One request of a pass in flight: which chunk, how much destination it
 * asks for, its encoded bytes (kept until its reply is read). */
typedef struct {
    kvt_net_call_t *call;
    size_t chunk;
    size_t bytes;
    uint8_t *buf;
} pull_call_t;

/* The fetch window of a pass, a ring of calls in chunk order. */
typedef struct {
    kvt_block_client_t *c;
    const kvt_pull_t *items;
    const size_t *pending, *starts;
    size_t n_chunks, next;       /* chunks made; the next one to send */
    size_t max_calls, max_bytes; /* the window's bounds */
    bool local;                  /* the requests ask to read locally */
    pull_call_t ring[PULL_MAX_REQUESTS];
    size_t head, count, bytes;   /* calls out, oldest at head */
} pull_window_t;

static size_t chunk_cap(const pull_window_t *pw, size_t chunk)
{
    size_t bytes = 0;
    for (size_t k = pw->starts[chunk]; k < pw->starts[chunk + 1]; k++)
        bytes += pw->items[pw->pending[k]].cap;
    return bytes;
}

/* Sends chunks until the window is full (at least one call is out unless
 * every chunk was sent); the first send error stops it. */
static kvt_status_t window_fill(pull_window_t *pw)
{
    while (pw->next < pw->n_chunks && pw->count < pw->max_calls) {
        size_t at = pw->starts[pw->next], cnt = pw->starts[pw->next + 1] - at;
        size_t bytes = chunk_cap(pw, pw->next);
        if (pw->count > 0 && pw->bytes + bytes > pw->max_bytes)
            break;
        pull_call_t *pc = &pw->ring[(pw->head + pw->count) % PULL_MAX_REQUESTS];
        size_t len;
        *pc = (pull_call_t){.chunk = pw->next, .bytes = bytes};
        kvt_status_t st =
            fetch_encode(pw->c, pw->items, pw->pending + at, cnt, pw->local, &pc->buf, &len);
        if (st == KVT_OK)
            st = kvt_net_call_start(pw->c->ep, pc->buf, len, &pc->call);
        if (st != KVT_OK) {
            kvt_free(pc->buf);
            return st;
        }
        pw->count++;
        pw->bytes += bytes;
        pw->next++;
    }
    return KVT_OK;
}

/* The oldest call's reply (its slot is freed; *pc keeps its chunk).  On
 * KVT_ERR_AGAIN (no reply in time) pc->call is still out, for
 * window_drop; otherwise it is over (NULL). */
static kvt_status_t window_take(pull_window_t *pw, int timeout_ms, pull_call_t *pc,
                                kvt_net_req_t *rq)
{
    *pc = pw->ring[pw->head];
    pw->head = (pw->head + 1) % PULL_MAX_REQUESTS;
    pw->count--;
    pw->bytes -= pc->bytes;
    *rq = (kvt_net_req_t){0};
    kvt_status_t st = kvt_net_call_wait(pc->call, timeout_ms, &rq->reply, &rq->reply_len);
    if (st != KVT_ERR_AGAIN)
        pc->call = NULL;
    kvt_free(pc->buf);
    pc->buf = NULL;
    return st;
}

/* The lease a reply that will not be read holds, given back. */
static void release_unread(kvt_block_client_t *c, void *raw, size_t len)
{
    reply_t r;
    if (reply_take(c, raw, len, &r) != KVT_OK)
        return; /* freed there */
    if (r.msg->body_case == KVTIER__ENVELOPE__BODY_FETCH_REPLY)
        release(c, r.msg->fetch_reply->lease_id);
    reply_free(&r);
}

/* After a failure, the calls still out: while the connection lives, their
 * replies get PULL_DROP_GRACE_MS in all to come, so that a lease one of
 * them holds is released at once rather than pinning the server's memory
 * until it expires (enough of those and the server refuses leases, FULL);
 * the rest are dropped (their leases end by expiry or with the
 * connection). */
#define PULL_DROP_GRACE_MS 200

static void call_settle(kvt_block_client_t *c, kvt_net_call_t *call, uint64_t until)
{
    uint64_t now = kvt_time_ns();
    if (kvt_net_ep_alive(c->ep) && now < until) {
        void *raw;
        size_t len;
        kvt_status_t st =
            kvt_net_call_wait(call, (int)((until - now) / 1000000ull) + 1, &raw, &len);
        if (st == KVT_OK)
            release_unread(c, raw, len);
        if (st != KVT_ERR_AGAIN)
            return; /* the call is over */
    }
    kvt_net_call_drop(call);
}

/* late: a call window_take gave up on (older than the ring's), or NULL. */
static void window_drop(pull_window_t *pw, kvt_net_call_t *late)
{
    uint64_t until = kvt_time_ns() + (uint64_t)PULL_DROP_GRACE_MS * 1000000ull;
    if (late)
        call_settle(pw->c, late, until);
    for (; pw->count > 0; pw->count--, pw->head = (pw->head + 1) % PULL_MAX_REQUESTS) {
        call_settle(pw->c, pw->ring[pw->head].call, until);
        kvt_free(pw->ring[pw->head].buf);
    }
}

/* One pass over items[pending[0..*n_p)]: every key is asked for once,
 * through the window.  Leaves in pending the items to fetch again (the
 * server's inline reply was full, or it was busy promoting them from
 * disk); after a failure, the status. */
static kvt_status_t pull_pass(kvt_block_client_t *c, kvt_pull_t *items, size_t *pending,
                              size_t *n_p, bool *retry, const kvt_block_identity_t *expect,
                              int timeout_ms)
{
    size_t n = *n_p;
    bool local = kvt_block_pull_local(c, items, pending, n);
    size_t *starts = kvt_malloc("pull chunks", (n + 1) * sizeof(*starts));
    if (!starts)
        return KVT_ERR_NOMEM;
    pull_window_t pw = {
        .c = c, .items = items, .pending = pending, .starts = starts,
        .n_chunks = chunk_split(items, pending, n,
                                local ? PULL_LOCAL_CHUNK_BYTES : PULL_CHUNK_BYTES, starts),
        .max_calls = kvt_net_ep_lane(c->ep) ? PULL_MAX_REQUESTS : PULL_MAX_REQUESTS_TCP,
        .max_bytes = local ? PULL_LOCAL_WINDOW_BYTES : PULL_WINDOW_BYTES,
        .local = local};
    memset(retry, 0, n * sizeof(*retry));
    kvt_status_t st = window_fill(&pw);
    kvt_net_call_t *late = NULL; /* not answered in time */
    while (st == KVT_OK && pw.count > 0) {
        pull_call_t pc;
        kvt_net_req_t rq;
        st = window_take(&pw, timeout_ms, &pc, &rq);
        late = pc.call;
        size_t at = starts[pc.chunk], cnt = starts[pc.chunk + 1] - at;
        reply_t r;
        kvt_status_t rs = st == KVT_OK ? fetch_reply_take(c, &rq, cnt, &r) : st;
        /* BUSY: its promotion queue is full; FULL: it holds as many leases
         * as it gives (ours, maybe, from requests dropped after a timeout,
         * until they expire).  Every key again, after a pause if nothing
         * else settles. */
        bool again = rs == KVT_ERR_BUSY || rs == KVT_ERR_FULL;
        if (rs == KVT_OK || again)
            st = window_fill(&pw); /* the next request travels while this is read */
        if (again) {
            for (size_t k = at; k < at + cnt; k++)
                retry[k] = true;
        } else if (rs == KVT_OK) {
            kvt_status_t rd = read_reply(c, &r, items, pending + at, cnt, expect, local,
                                         retry + at, timeout_ms);
            st = st == KVT_OK ? rd : st;
            reply_free(&r);
        } else {
            st = rs;
        }
        kvt_net_buf_free(c->worker, rq.reply, rq.reply_len);
    }
    window_drop(&pw, late);
    kvt_free(starts);
    size_t left = 0;
    for (size_t k = 0; k < n; k++)
        if (retry[k])
            pending[left++] = pending[k];
    *n_p = left;
    return st;
}

/* A pass that settled nothing (the server is busy promoting, or says so
 * forever) is followed by a pause, doubling from BUSY_PAUSE_MIN_MS up to
 * BUSY_PAUSE_MAX_MS, while the worker progresses; false when the deadline
 * has passed. */
#define BUSY_PAUSE_MIN_MS 1
#define BUSY_PAUSE_MAX_MS 64

static bool busy_pause(kvt_block_client_t *c, uint64_t deadline, int *pause_ms)
{
    uint64_t now = kvt_time_ns();
    if (now >= deadline)
        return false;
    uint64_t until = now + (uint64_t)*pause_ms * 1000000;
    if (until > deadline)
        until = deadline;
    while ((now = kvt_time_ns()) < until)
        kvt_net_worker_wait(c->worker, (int)((until - now + 999999) / 1000000));
    *pause_ms = *pause_ms * 2 > BUSY_PAUSE_MAX_MS ? BUSY_PAUSE_MAX_MS : *pause_ms * 2;
    return true;
}

/* A block the server FAILED while one before it in the same pull was
 * still pending is asked for once more, once everything before it has
 * settled.  T1 takes no block without its parent, so when one request of
 * a pull is refused BUSY (the promotion queue is full) while a later one
 * is promoted, that one's first block fails for want of its parent: a hit
 * lost to load, not a bad block (kvstore/block_promote.c).  Asked again
 * after its parent was served, it is served too; asked while the parent
 * is still refused, it would fail again.  Once per block, so a block that
 * keeps failing ends the pull as it did; one whose predecessors are never
 * served stays FAILED.  pending (sorted by item) gets the union; mark is
 * scratch, one per item, kept across passes. */
#define MARK_PENDING 1u
#define MARK_BEHIND 2u /* failed behind a pending item: to ask again after it */
#define MARK_ASKED 4u  /* asked again already */

static size_t ask_failed_again(const kvt_pull_t *items, size_t n, size_t *pending,
                               size_t n_pending, uint8_t *mark)
{
    size_t first = n_pending ? pending[0] : n; /* the earliest still pending */
    for (size_t k = 0; k < n_pending; k++)
        mark[pending[k]] |= MARK_PENDING;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (mark[i] & MARK_PENDING) {
            mark[i] &= (uint8_t)~MARK_PENDING;
            pending[m++] = i;
            continue;
        }
        if (items[i].status == KVT_ERR_IO && first < i && !(mark[i] & (MARK_BEHIND | MARK_ASKED)))
            mark[i] |= MARK_BEHIND;
        if ((mark[i] & MARK_BEHIND) && first > i) {
            mark[i] = (uint8_t)((mark[i] & ~MARK_BEHIND) | MARK_ASKED);
            pending[m++] = i;
        }
    }
    return m;
}

kvt_status_t kvt_block_client_pull(kvt_block_client_t *client, kvt_pull_t *items, size_t n,
                                   const kvt_block_identity_t *expect, int timeout_ms)
{
    if (n == 0)
        return KVT_OK;
    if (!client || !items)
        return KVT_ERR_INVALID;
    kvt_status_t st = ensure_connected(client, timeout_ms);
    if (st != KVT_OK) { /* as for any transport error: every item carries it */
        for (size_t i = 0; i < n; i++)
            items[i].status = st;
        return st;
    }
    size_t *pending = kvt_malloc("pull pending", n * sizeof(*pending));
    bool *retry = kvt_malloc("pull retry", n * sizeof(*retry));
    uint8_t *mark = kvt_calloc("pull marks", n, sizeof(*mark));
    st = pending && retry && mark ? KVT_OK : KVT_ERR_NOMEM;
    size_t n_pending = n;
    for (size_t i = 0; st == KVT_OK && i < n; i++)
        pending[i] = i;
    /* A pass settles at least one item per inline reply (read_inline)
     * unless the server was busy.  Passes that settle nothing pause, and
     * stop timeout_ms after the last one that did, so even a server that
     * answers RETRY or BUSY forever cannot keep this looping. */
    uint64_t timeout_ns = (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000;
    uint64_t deadline = kvt_time_ns() + timeout_ns;
    int pause_ms = BUSY_PAUSE_MIN_MS;
    while (st == KVT_OK && n_pending > 0) {
        size_t before = n_pending;
        st = pull_pass(client, items, pending, &n_pending, retry, expect, timeout_ms);
        if (st != KVT_OK)
            break;
        bool settled = n_pending < before;
        n_pending = ask_failed_again(items, n, pending, n_pending, mark);
        if (settled) {
            deadline = kvt_time_ns() + timeout_ns;
            pause_ms = BUSY_PAUSE_MIN_MS;
        } else if (!busy_pause(client, deadline, &pause_ms)) {
            break;
        }
    }
    if (st != KVT_OK) /* nothing was read, or not all of it: none counts */
        for (size_t i = 0; i < n; i++)
            items[i].status = st;
    else /* still busy at the deadline: these were not served */
        for (size_t k = 0; k < n_pending; k++)
            items[pending[k]].status = KVT_ERR_BUSY;
    kvt_free(pending);
    kvt_free(retry);
    kvt_free(mark);
    return st;
}

/* --- partial tails --- */

#define TAIL_REPLY_SLACK 4096 /* envelope, key, parent, tokens, checksum */

/* The reply names exactly the tail that was asked for (invariant 3). */
static kvt_status_t tail_check_identity(const Kvtier__TailReply *rep, const kvt_block_key_t *want,
                                        const kvt_block_key_t *parent, uint32_t t,
                                        const uint32_t *tokens)
{
    if (rep->key.len != KVT_KEY_LEN || memcmp(rep->key.data, want->b, KVT_KEY_LEN) != 0 ||
        rep->parent.len != KVT_KEY_LEN || memcmp(rep->parent.data, parent->b, KVT_KEY_LEN) != 0 ||
        rep->n_tokens != t || memcmp(rep->tokens, tokens, (size_t)t * sizeof(*tokens)) != 0)
        return KVT_ERR_CORRUPT;
    /* The key the reply's own fields name: it must be the one it states. */
    kvt_block_key_t rep_parent, named;
    memcpy(rep_parent.b, rep->parent.data, KVT_KEY_LEN);
    if (kvt_tail_key(&rep_parent, t, rep->tokens, &named) != KVT_OK ||
        memcmp(named.b, rep->key.data, KVT_KEY_LEN) != 0)
        return KVT_ERR_CORRUPT;
    return KVT_OK;
}

static kvt_status_t tail_check(kvt_block_client_t *c, const Kvtier__TailReply *rep,
                               const kvt_block_key_t *want, const kvt_block_key_t *parent,
                               uint32_t t, const uint32_t *tokens, uint64_t expect_len)
{
    if (!rep->found)
        return KVT_ERR_NOT_FOUND;
    char hex[2 * KVT_KEY_LEN + 1];
    kvt_block_key_hex(want, hex);
    if (tail_check_identity(rep, want, parent, t, tokens) != KVT_OK) {
        kvt_log_error("pulled tail names another tail key=%s peer=%s", hex, kvt_net_ep_peer(c->ep));
        return KVT_ERR_CORRUPT;
    }
    if (rep->payload.len != expect_len) {
        kvt_log_error("pulled tail has another layout's length key=%s peer=%s len=%zu want=%" PRIu64,
                      hex, kvt_net_ep_peer(c->ep), rep->payload.len, expect_len);
        return KVT_ERR_MISMATCH;
    }
    if (kvt_xxh3_64(rep->payload.data, rep->payload.len) != rep->checksum) {
        kvt_log_error("pulled tail failed its checksum key=%s peer=%s", hex, kvt_net_ep_peer(c->ep));
        return KVT_ERR_CORRUPT;
    }
    return KVT_OK;
}

kvt_status_t kvt_block_client_pull_tail(kvt_block_client_t *c, const kvt_block_key_t *parent,
                                        uint32_t t, const uint32_t *tokens,
                                        const kvt_block_layout_t *layout, bool release, void *dst,
                                        size_t cap, size_t *len_p, int timeout_ms)
{
    if (!c || !parent || !tokens || !layout || !dst || !len_p)
        return KVT_ERR_INVALID;
    uint64_t expect_len = kvt_tail_bytes(layout, t);
    kvt_block_key_t want;
    if (expect_len == 0 || kvt_tail_key(parent, t, tokens, &want) != KVT_OK)
        return KVT_ERR_INVALID;
    if (expect_len > cap || expect_len + TAIL_REPLY_SLACK > kvt_net_worker_max_msg(c->worker))
        return KVT_ERR_TOO_LARGE; /* known before asking; the reply's length is checked */
    kvt_status_t st = ensure_connected(c, timeout_ms);
    if (st != KVT_OK)
        return st;
    Kvtier__TailFetch tf = KVTIER__TAIL_FETCH__INIT;
    tf.key = (ProtobufCBinaryData){KVT_KEY_LEN, want.b};
    tf.release = release;
    kvt_msg_t req = KVTIER__ENVELOPE__INIT;
    req.body_case = KVTIER__ENVELOPE__BODY_TAIL_FETCH;
    req.tail_fetch = &tf;
    reply_t r;
    st = exchange(c, &req, timeout_ms, &r);
    kvt_msg_t *reply = r.msg;
    if (st != KVT_OK)
        return st;
    if (reply->body_case != KVTIER__ENVELOPE__BODY_TAIL_REPLY) {
        kvt_log_error("block client got a reply that does not answer the tail fetch peer=%s",
                      kvt_net_ep_peer(c->ep));
        st = KVT_ERR_CORRUPT;
    } else {
        st = tail_check(c, reply->tail_reply, &want, parent, t, tokens, expect_len);
    }
    if (st == KVT_OK) {
        memcpy(dst, reply->tail_reply->payload.data, reply->tail_reply->payload.len);
        *len_p = reply->tail_reply->payload.len;
    }
    reply_free(&r);
    return st;
}

bool kvt_block_client_alive(const kvt_block_client_t *client)
{
    return client && kvt_net_ep_alive(client->ep);
}

void kvt_block_client_accept_rma(kvt_block_client_t *client, bool accept)
{
    if (client)
        client->accept_rma = accept;
}

uint64_t kvt_block_client_local_reads(const kvt_block_client_t *client)
{
    return client ? client->n_local : 0;
}

uint64_t kvt_block_client_mapped_reads(const kvt_block_client_t *client)
{
    return client ? client->n_mapped : 0;
}

bool kvt_block_client_lane(const kvt_block_client_t *client)
{
    return kvt_block_client_alive(client) && kvt_net_ep_lane(client->ep);
}
