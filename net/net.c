/* net: UCX workers, endpoints and framed messages (contract: net.h);
 * sends are in send.c, rendezvous receives in rndv.c, connect and listen
 * in conn.c, same-host lanes in lane.c, message buffers in buf.c,
 * registration and gets in rma.c.
 *
 * Wire: every message is a UCX active message (id NET_AM_DATA) whose UCX
 * header is 16 bytes {u64 req_id, u32 flags, u32 len} little-endian (24
 * on a same-host lane: the lane token appended, lane.c) and whose data is
 * the payload.  A receiver drops (and logs) anything whose
 * header is malformed, whose len differs from the length UCX delivered, or
 * which exceeds max_msg_bytes.  Connection set-up adds one round trip on
 * NET_AM_CTRL (hello -> ack): a client-server UCX endpoint accepts sends at
 * once, so only the ack proves that the peer is there.
 *
 * Ownership and failure: see netInt.h.  Each endpoint uses peer error
 * handling; the error callback marks it dead, fails the requests waiting on
 * it and queues one on_conn(ep, false).  Keepalive (1 s unless
 * UCX_KEEPALIVE_INTERVAL is set) notices a peer that died silently.  Every
 * blocking call has a deadline; a flush-close that outlives its bound is
 * parked on the zombie list, reaped by later progress, and forced at worker
 * destroy, so nothing blocks for long and no callback sees freed memory. */
#include "net/netInt.h"

#include "common/alloc.h"
#include "common/le.h"
#include "common/log.h"
#include "common/time.h"

#include <poll.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

static void ep_err_cb(void *arg, ucp_ep_h uep, ucs_status_t status);
static bool close_running(void *req);
static void close_free(void *req);

kvt_status_t kvt_net_status(ucs_status_t status)
{
    switch (status) {
    case UCS_OK:
        return KVT_OK;
    case UCS_ERR_NO_MEMORY:
        return KVT_ERR_NOMEM;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
        return KVT_ERR_INVALID;
    case UCS_ERR_TIMED_OUT:
        return KVT_ERR_AGAIN;
    case UCS_ERR_CANCELED:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_NOT_CONNECTED:
        return KVT_ERR_CLOSED;
    default:
        return KVT_ERR_IO;
    }
}

uint64_t kvt_net_deadline(int timeout_ms)
{
    return kvt_time_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
}

/* --- ucp_ep_h -> kvt ep --- */

static size_t bucket_of(ucp_ep_h uep)
{
    uint64_t h = (uint64_t)(uintptr_t)uep * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 56) % NET_EP_BUCKETS;
}

static kvt_net_ep_t *ep_lookup(kvt_net_worker_t *w, ucp_ep_h uep)
{
    for (kvt_net_ep_t *ep = w->buckets[bucket_of(uep)]; ep; ep = ep->hnext)
        if (ep->uep == uep)
            return ep;
    return NULL;
}

static void ep_hash_add(kvt_net_ep_t *ep)
{
    kvt_net_ep_t **b = &ep->worker->buckets[bucket_of(ep->uep)];
    ep->hnext = *b;
    *b = ep;
}

static void ep_hash_del(kvt_net_ep_t *ep)
{
    if (!ep->uep)
        return;
    for (kvt_net_ep_t **pp = &ep->worker->buckets[bucket_of(ep->uep)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == ep) {
            *pp = ep->hnext;
            break;
        }
    }
    ep->hnext = NULL;
}

static void ep_list_add(kvt_net_ep_t **head, kvt_net_ep_t *ep)
{
    ep->prev = NULL;
    ep->next = *head;
    if (*head)
        (*head)->prev = ep;
    *head = ep;
}

static void ep_list_del(kvt_net_ep_t **head, kvt_net_ep_t *ep)
{
    if (ep->prev)
        ep->prev->next = ep->next;
    else
        *head = ep->next;
    if (ep->next)
        ep->next->prev = ep->prev;
    ep->next = ep->prev = NULL;
}

void kvt_net_ep_link(kvt_net_ep_t *ep)
{
    ep_hash_add(ep);
    ep_list_add(&ep->worker->eps, ep);
}

/* --- event queue --- */

/* What an undelivered event holds: its payload and its record, so that a
 * flood of empty messages fills the queue's cap too. */
static size_t ev_cost(size_t len) { return len + sizeof(net_ev_t); }

void kvt_net_ev_push(kvt_net_worker_t *w, net_ev_t *ev)
{
    ev->next = NULL;
    if (w->ev_tail)
        w->ev_tail->next = ev;
    else
        w->ev_head = ev;
    w->ev_tail = ev;
    w->ev_bytes += ev_cost(ev->len);
}

static net_ev_t *ev_pop(kvt_net_worker_t *w)
{
    net_ev_t *ev = w->ev_head;
    if (!ev)
        return NULL;
    w->ev_head = ev->next;
    if (!w->ev_head)
        w->ev_tail = NULL;
    w->ev_bytes -= ev_cost(ev->len);
    return ev;
}

static void ev_free(kvt_net_worker_t *w, net_ev_t *ev)
{
    if (ev->type == NET_EV_MSG)
        kvt_net_buf_free(w, ev->data, ev->len);
    else
        kvt_free(ev->data);
    ev->data = NULL;
    if (!ev->embedded)
        kvt_free(ev);
}

/* Worker teardown: drop what nobody will hear, but a zero-copy send's
 * owner still gets its done callback (its memory is held until then). */
static void ev_discard_all(kvt_net_worker_t *w)
{
    net_ev_t *ev;
    while ((ev = ev_pop(w)) != NULL) {
        if (ev->type == NET_EV_SENT)
            kvt_net_sent_deliver(ev);
        else
            ev_free(w, ev);
    }
}

/* Drop queued events for ep (or for listener); accepts are rejected. */
void kvt_net_ev_purge(kvt_net_worker_t *w, const kvt_net_ep_t *ep, const kvt_net_listener_t *l)
{
    net_ev_t *keep = NULL, *keep_tail = NULL, *ev;
    size_t bytes = 0;
    while ((ev = ev_pop(w)) != NULL) {
        bool drop = (ep && ev->ep == ep) || (l && ev->listener == l);
        if (drop && ev->type == NET_EV_ACCEPT)
            ucp_listener_reject(ev->listener->ul, ev->conn_req);
        if (drop) {
            ev_free(w, ev);
            continue;
        }
        ev->next = NULL;
        if (keep_tail)
            keep_tail->next = ev;
        else
            keep = ev;
        keep_tail = ev;
        bytes += ev_cost(ev->len);
    }
    w->ev_head = keep;
    w->ev_tail = keep_tail;
    w->ev_bytes = bytes;
}

/* --- requests waiting for replies --- */

static void pending_fail(kvt_net_worker_t *w, const kvt_net_ep_t *ep, kvt_status_t status)
{
    for (net_pending_t *p = w->pending; p; p = p->next) {
        if (p->ep == ep && !p->done) {
            p->done = true;
            p->status = status;
        }
    }
}

static void pending_del(kvt_net_worker_t *w, net_pending_t *p)
{
    for (net_pending_t **pp = &w->pending; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            return;
        }
    }
}

/* A complete message with its payload in buf (owned here from now on):
 * a reply goes to its waiter, anything else to the queue. */
void kvt_net_deliver(kvt_net_worker_t *w, kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags,
                     void *buf, size_t len)
{
    if (flags & KVT_NET_FLAG_REPLY) {
        for (net_pending_t *p = w->pending; p; p = p->next) {
            if (p->req_id == req_id && p->ep == ep && !p->done) {
                p->done = true;
                p->status = KVT_OK;
                p->reply = buf;
                p->reply_len = len;
                return;
            }
        }
        kvt_log_debug("net reply dropped, nobody waits peer=%s req_id=%llu len=%zu", ep->peer,
                      (unsigned long long)req_id, len);
        kvt_net_buf_free(w, buf, len);
        return;
    }
    net_ev_t *ev = NULL;
    if (w->ev_bytes + ev_cost(len) <= w->ev_cap)
        ev = kvt_calloc("net event", 1, sizeof(*ev));
    if (!ev) {
        kvt_log_warn("net message dropped, queue full peer=%s len=%zu queued=%zu", ep->peer, len,
                     w->ev_bytes);
        kvt_net_buf_free(w, buf, len);
        return;
    }
    ev->type = NET_EV_MSG;
    ev->ep = ep;
    ev->req_id = req_id;
    ev->flags = flags;
    ev->data = buf;
    ev->len = len;
    kvt_net_ev_push(w, ev);
}

/* --- active message receive --- */

/* The connection a message came from: on a same-host lane the token at
 * the end of the header names it, elsewhere the sender's reply endpoint
 * does.  NULL for a closed or unknown sender or a header of the wrong
 * size; *hdr_ok says which (a wrong size is logged by the caller). */
static kvt_net_ep_t *am_source(kvt_net_worker_t *w, const void *header, size_t header_length,
                               const ucp_am_recv_param_t *param, bool *hdr_ok)
{
    kvt_net_ep_t *ep = NULL;
    bool has_reply_ep = param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP;
    *hdr_ok = header_length == NET_HDR_LEN || header_length == NET_LANE_HDR_LEN;
    /* Lane messages come without a reply endpoint (send.c); one that has
     * one is a peer on a client-server endpoint dressing up as a lane. */
    if (header_length == NET_LANE_HDR_LEN && !has_reply_ep)
        ep = kvt_net_lane_lookup(w, kvt_le_get64((const uint8_t *)header + NET_HDR_LEN));
    else if (header_length == NET_HDR_LEN && has_reply_ep)
        ep = ep_lookup(w, param->reply_ep);
    return ep && !ep->closing ? ep : NULL;
}

static ucs_status_t am_data_cb(void *arg, const void *header, size_t header_length, void *data,
                               size_t length, const ucp_am_recv_param_t *param)
{
    kvt_net_worker_t *w = arg;
    bool hdr_ok;
    kvt_net_ep_t *ep = am_source(w, header, header_length, param, &hdr_ok);
    if (!hdr_ok) {
        kvt_log_warn("net message dropped, bad header hdr_len=%zu len=%zu", header_length, length);
        return UCS_OK;
    }
    if (!ep) {
        kvt_log_debug("net message dropped, sender closed len=%zu", length);
        return UCS_OK;
    }
    const uint8_t *h = header;
    uint64_t req_id = kvt_le_get64(h);
    uint32_t flags = kvt_le_get32(h + 8), hlen = kvt_le_get32(h + 12);
    if (length > w->max_msg || (size_t)hlen != length) {
        kvt_log_warn("net message dropped peer=%s len=%zu header_len=%u max=%zu", ep->peer,
                     length, hlen, w->max_msg);
        return UCS_OK; /* for rendezvous data this tells the sender it is dropped */
    }
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)
        return kvt_net_rndv_arrive(w, ep, req_id, flags, data, length);
    void *buf = kvt_net_buf_alloc(w, length);
    if (!buf)
        return UCS_OK;
    if (length)
        memcpy(buf, data, length);
    kvt_net_deliver(w, ep, req_id, flags, buf, length);
    return UCS_OK;
}

/* A hello with a lane offer is answered from the queue: opening a lane
 * creates an endpoint, which is not for inside a UCX callback. */
static void hello_queue(kvt_net_worker_t *w, kvt_net_ep_t *ep, const void *data, size_t length)
{
    net_ev_t *ev = kvt_calloc("net hello", 1, sizeof(*ev));
    void *copy = ev ? kvt_malloc("net hello", length ? length : 1) : NULL;
    if (!copy) {
        kvt_free(ev);
        return; /* the client's connect times out and may retry */
    }
    if (length)
        memcpy(copy, data, length);
    ev->type = NET_EV_HELLO;
    ev->ep = ep;
    ev->data = copy;
    ev->len = length;
    kvt_net_ev_push(w, ev);
}

static ucs_status_t am_ctrl_cb(void *arg, const void *header, size_t header_length, void *data,
                               size_t length, const ucp_am_recv_param_t *param)
{
    kvt_net_worker_t *w = arg;
    bool hdr_ok;
    kvt_net_ep_t *ep = am_source(w, header, header_length, param, &hdr_ok);
    if (!ep || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV))
        return UCS_OK;
    uint32_t type = kvt_le_get32((const uint8_t *)header + 8);
    if (type == NET_CTRL_HELLO && ep->alive && ep->accepted && length == 0)
        kvt_net_lane_hello(ep, NULL, 0); /* no offer: acked at once, as always */
    else if (type == NET_CTRL_HELLO && ep->alive && ep->accepted && length <= NET_HELLO_MAX)
        hello_queue(w, ep, data, length);
    else if (type == NET_CTRL_ACK && length == 0 && !ep->accepted) {
        ep->hello_acked = true;
        ep->lane_up = header_length == NET_LANE_HDR_LEN;
    }
    return UCS_OK;
}

/* --- progress --- */

static void deliver_one(kvt_net_worker_t *w, net_ev_t *ev);

static unsigned deliver_queued(kvt_net_worker_t *w)
{
    unsigned n = 0;
    net_ev_t *ev;
    /* One at a time from the head: a callback may close endpoints (which
     * purges their events) or block in kvt_net_request (which delivers). */
    while ((ev = ev_pop(w)) != NULL) {
        deliver_one(w, ev);
        n++;
    }
    if (w->defer_head) /* budget freed by receives that completed */
        n += kvt_net_rndv_resume(w);
    return n;
}

void kvt_net_zombies_free(kvt_net_worker_t *w)
{
    while (w->zombies) {
        kvt_net_ep_t *ep = w->zombies;
        close_free(ep->close_req);
        close_free(ep->lane_close_req);
        ep_list_del(&w->zombies, ep);
        ep_hash_del(ep);
        kvt_free(ep);
    }
}

static void reap_zombies(kvt_net_worker_t *w)
{
    kvt_net_ep_t *ep = w->zombies, *next;
    for (; ep; ep = next) {
        next = ep->next;
        if (close_running(ep->close_req) || close_running(ep->lane_close_req))
            continue;
        close_free(ep->close_req);
        close_free(ep->lane_close_req);
        ep_list_del(&w->zombies, ep);
        ep_hash_del(ep);
        kvt_free(ep);
    }
}

void kvt_net_step(kvt_net_worker_t *w, uint64_t deadline_ns, bool deliver_events)
{
    unsigned n = ucp_worker_progress(w->uw);
    if (deliver_events)
        n += deliver_queued(w);
    if (n)
        return;
    uint64_t now = kvt_time_ns();
    if (now >= deadline_ns)
        return;
    uint64_t ms = (deadline_ns - now + 999999) / 1000000;
    if (ms > NET_POLL_MS)
        ms = NET_POLL_MS;
    bool busy = ucp_worker_arm(w->uw) != UCS_OK; /* UCS_ERR_BUSY: more to do at once */
    kvt_net_wedge_note_arm(w, now, busy);
    if (busy)
        return;
    /* Our own eventfd for kvt_net_worker_signal: UCX's goes away when the
     * worker is rebuilt (heal.c) while other threads may still signal. */
    struct pollfd pfd[2] = {{.fd = w->efd, .events = POLLIN}, {.fd = w->sigfd, .events = POLLIN}};
    if (poll(pfd, 2, (int)ms) > 0 && (pfd[1].revents & POLLIN)) {
        uint64_t v;
        (void)!read(w->sigfd, &v, sizeof(v));
    }
}

void kvt_net_worker_progress(kvt_net_worker_t *w)
{
    kvt_net_wedge_check(w);
    ucp_worker_progress(w->uw);
    deliver_queued(w);
    if (w->zombies)
        reap_zombies(w);
}

void kvt_net_worker_signal(kvt_net_worker_t *w)
{
    atomic_store(&w->signaled, true);
    uint64_t one = 1;
    (void)!write(w->sigfd, &one, sizeof(one)); /* nonblocking: a full count is still a wakeup */
}

void kvt_net_worker_wait(kvt_net_worker_t *w, int timeout_ms)
{
    uint64_t deadline = kvt_net_deadline(timeout_ms);
    for (;;) {
        kvt_net_wedge_check(w);
        unsigned n = ucp_worker_progress(w->uw) + deliver_queued(w);
        if (w->zombies)
            reap_zombies(w);
        if (n || atomic_exchange(&w->signaled, false) || kvt_time_ns() >= deadline)
            return;
        kvt_net_step(w, deadline, true);
    }
}

/* --- endpoints --- */

kvt_net_ep_t *kvt_net_ep_alloc(kvt_net_worker_t *w)
{
    kvt_net_ep_t *ep = kvt_calloc("net ep", 1, sizeof(*ep));
    if (!ep)
        return NULL;
    ep->worker = w;
    ep->down_ev.type = NET_EV_DOWN;
    ep->down_ev.embedded = true;
    ep->down_ev.ep = ep;
    return ep;
}

void kvt_net_ep_params(kvt_net_ep_t *ep, ucp_ep_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                    UCP_EP_PARAM_FIELD_USER_DATA;
    p->err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p->err_handler.cb = ep_err_cb;
    p->err_handler.arg = ep;
    p->user_data = ep;
}

static void ep_err_cb(void *arg, ucp_ep_h uep, ucs_status_t status)
{
    (void)uep;
    kvt_net_ep_fail(arg, status);
}

void kvt_net_ep_fail(kvt_net_ep_t *ep, ucs_status_t status)
{
    kvt_net_worker_t *w = ep->worker;
    if (!ep->alive)
        return;
    ep->alive = false;
    ep->err = status;
    if (ep->closing)
        return;
    if (ep->published)
        kvt_log_info("net peer failed peer=%s cause=%s", ep->peer, ucs_status_string(status));
    pending_fail(w, ep, KVT_ERR_CLOSED);
    if (ep->published)
        kvt_net_ev_push(w, &ep->down_ev);
}

/* Start closing uep; the request while it runs, else NULL. */
static void *close_start(ucp_ep_h uep, uint32_t flags)
{
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = flags};
    void *req = ucp_ep_close_nbx(uep, &prm);
    return UCS_PTR_IS_PTR(req) ? req : NULL;
}

static bool close_running(void *req)
{
    return req && ucp_request_check_status(req) == UCS_INPROGRESS;
}

static void close_free(void *req)
{
    if (req)
        ucp_request_free(req);
}

/* Close ep's endpoints (its lane first, so what was sent there goes out
 * before the peer sees the connection end) with the given flags, waiting
 * up to timeout_ms; true when both closes are over. */
static bool close_both(kvt_net_ep_t *ep, uint32_t flags, int timeout_ms)
{
    kvt_net_worker_t *w = ep->worker;
    if (ep->lane) {
        ep->lane_close_req = close_start(ep->lane, flags);
        ep->lane = NULL;
    }
    if (ep->uep)
        ep->close_req = close_start(ep->uep, flags);
    uint64_t deadline = kvt_net_deadline(timeout_ms);
    while ((close_running(ep->close_req) || close_running(ep->lane_close_req)) &&
           kvt_time_ns() < deadline)
        kvt_net_step(w, deadline, false);
    if (close_running(ep->close_req) || close_running(ep->lane_close_req))
        return false;
    close_free(ep->close_req);
    close_free(ep->lane_close_req);
    ep->close_req = ep->lane_close_req = NULL;
    return true;
}

/* Close the UCX endpoints with the given flags, waiting up to timeout_ms;
 * frees ep, or parks it on the zombie list if a close is still running.
 * An accepted ep gives back its place under max_conns here. */
void kvt_net_ep_finish(kvt_net_ep_t *ep, uint32_t flags, int timeout_ms)
{
    kvt_net_worker_t *w = ep->worker;
    ep_list_del(&w->eps, ep);
    kvt_net_sends_orphan(ep);
    kvt_net_lane_forget(ep);
    /* Given back before the close: a parked close is bounded (forced at
     * worker destroy), so a zombie holds no place a new client needs. */
    if (ep->accepted) {
        ep->accepted = false;
        w->n_accepted--;
    }
    if (!close_both(ep, flags, timeout_ms)) {
        if (timeout_ms > 0)
            kvt_log_warn("net close still running, parked peer=%s timeout_ms=%d", ep->peer,
                         timeout_ms);
        ep_list_add(&w->zombies, ep);
        return;
    }
    ep_hash_del(ep);
    kvt_free(ep);
}

/* Forget everything queued or waiting on ep before it goes away. */
void kvt_net_ep_detach(kvt_net_ep_t *ep)
{
    kvt_net_worker_t *w = ep->worker;
    ep->closing = true;
    kvt_net_ev_purge(w, ep, NULL);
    pending_fail(w, ep, KVT_ERR_CLOSED);
    kvt_net_rndv_forget(w, ep);
    kvt_net_rndv_orphan(w, ep);
}

void kvt_net_ep_close(kvt_net_ep_t *ep)
{
    if (!ep)
        return;
    kvt_net_ep_detach(ep);
    bool alive = ep->alive && ep->uep;
    kvt_log_debug("net close peer=%s alive=%d", ep->peer, alive);
    /* A dead endpoint has nothing to flush: its forced close is not waited
     * for here but parked and reaped by later progress, so a server that
     * closes the endpoints of dead clients keeps answering the others. */
    kvt_net_ep_finish(ep, alive ? 0 : UCP_EP_CLOSE_FLAG_FORCE, alive ? NET_CLOSE_MS : 0);
}

void kvt_net_ep_force_close(kvt_net_ep_t *ep)
{
    kvt_net_worker_t *w = ep->worker;
    ep->alive = false;
    pending_fail(w, ep, KVT_ERR_CLOSED);
    kvt_net_rndv_forget(w, ep); /* before UCX drops the endpoint they belong to */
    if (!ep->uep)
        return;
    if (!close_both(ep, UCP_EP_CLOSE_FLAG_FORCE, NET_CLOSE_MS)) {
        /* Left to UCX: a forced close that outlives its bound is its bug. */
        kvt_log_error("net forced close did not complete peer=%s", ep->peer);
        ep->close_req = ep->lane_close_req = NULL;
    }
    ep_hash_del(ep);
    ep->uep = NULL;
}

bool kvt_net_ep_alive(const kvt_net_ep_t *ep) { return ep && ep->alive && ep->uep; }

bool kvt_net_ep_lane(const kvt_net_ep_t *ep) { return ep && (ep->lane_up || ep->lane); }

void kvt_net_ep_set_user(kvt_net_ep_t *ep, void *user) { ep->user = user; }

void *kvt_net_ep_user(const kvt_net_ep_t *ep) { return ep->user; }

const char *kvt_net_ep_peer(const kvt_net_ep_t *ep) { return ep->peer; }

static void deliver_one(kvt_net_worker_t *w, net_ev_t *ev)
{
    /* Copy out and release first: the callback may close ev->ep, and a
     * DOWN event lives inside it. */
    net_ev_t e = *ev;
    ev->data = NULL;
    ev_free(w, ev);
    switch (e.type) {
    case NET_EV_MSG:
        if (w->on_msg)
            w->on_msg(e.ep, e.req_id, e.flags, e.data, e.len, w->arg);
        kvt_net_buf_free(w, e.data, e.len);
        break;
    case NET_EV_DOWN:
        if (w->on_conn)
            w->on_conn(e.ep, false, w->arg);
        break;
    case NET_EV_ACCEPT:
        kvt_net_accept(e.listener, e.conn_req);
        break;
    case NET_EV_SENT:
        kvt_net_sent_deliver(ev); /* embedded in its send: not freed above */
        break;
    case NET_EV_HELLO:
        kvt_net_lane_hello(e.ep, e.data, e.len);
        kvt_free(e.data);
        break;
    }
}

/* --- request / reply --- */

kvt_status_t kvt_net_request(kvt_net_ep_t *ep, const void *data, size_t len, int timeout_ms,
                             void **reply_p, size_t *reply_len_p)
{
    if (!reply_p || !reply_len_p)
        return KVT_ERR_INVALID;
    kvt_net_req_t r = {.data = data, .len = len};
    kvt_status_t st = kvt_net_request_many(ep, &r, 1, timeout_ms);
    if (st != KVT_OK)
        return st;
    *reply_p = r.reply;
    *reply_len_p = r.reply_len;
    return KVT_OK;
}

static bool pending_all_done(const net_pending_t *ps, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!ps[i].done)
            return false;
    return true;
}

/* A request in flight on its own: its pending entry lives on the heap
 * until the caller waits for it or drops it. */
struct kvt_net_call {
    net_pending_t p;
    kvt_net_worker_t *w;
};

kvt_status_t kvt_net_call_start(kvt_net_ep_t *ep, const void *data, size_t len,
                                kvt_net_call_t **call_p)
{
    if (!ep || !call_p || (len && !data))
        return KVT_ERR_INVALID;
    kvt_net_worker_t *w = ep->worker;
    kvt_net_call_t *call = kvt_calloc("net call", 1, sizeof(*call));
    if (!call)
        return KVT_ERR_NOMEM;
    call->w = w;
    call->p = (net_pending_t){.ep = ep, .req_id = w->next_req_id++};
    kvt_status_t st = kvt_net_send(ep, call->p.req_id, 0, data, len);
    if (st != KVT_OK) {
        kvt_free(call);
        return st;
    }
    call->p.next = w->pending;
    w->pending = &call->p;
    *call_p = call;
    return KVT_OK;
}

kvt_status_t kvt_net_call_wait(kvt_net_call_t *call, int timeout_ms, void **reply_p,
                               size_t *reply_len_p)
{
    *reply_p = NULL;
    *reply_len_p = 0;
    kvt_net_worker_t *w = call->w;
    uint64_t deadline = kvt_net_deadline(timeout_ms);
    /* The endpoint may be closed by a callback delivered here: only the
     * call is read after. */
    while (!call->p.done && kvt_time_ns() < deadline)
        kvt_net_step(w, deadline, true);
    if (!call->p.done) { /* still the caller's: wait again or drop it */
        kvt_log_debug("net request not answered yet req_id=%llu timeout_ms=%d",
                      (unsigned long long)call->p.req_id, timeout_ms);
        return KVT_ERR_AGAIN;
    }
    pending_del(w, &call->p);
    kvt_status_t st = call->p.status;
    if (st == KVT_OK) {
        *reply_p = call->p.reply;
        *reply_len_p = call->p.reply_len;
    }
    kvt_free(call);
    return st;
}

void kvt_net_call_drop(kvt_net_call_t *call)
{
    if (!call)
        return;
    pending_del(call->w, &call->p);
    if (call->p.done && call->p.status == KVT_OK)
        kvt_net_buf_free(call->w, call->p.reply, call->p.reply_len);
    kvt_free(call);
}

kvt_status_t kvt_net_request_many(kvt_net_ep_t *ep, kvt_net_req_t *reqs, size_t n, int timeout_ms)
{
    if (!ep || (n && !reqs))
        return KVT_ERR_INVALID;
    kvt_net_worker_t *w = ep->worker;
    net_pending_t *ps = kvt_calloc("net requests", n + 1, sizeof(*ps));
    if (!ps)
        return KVT_ERR_NOMEM;
    size_t sent = 0;
    kvt_status_t st = KVT_OK;
    for (; sent < n; sent++) {
        reqs[sent].reply = NULL;
        reqs[sent].reply_len = 0;
        ps[sent] = (net_pending_t){.ep = ep, .req_id = w->next_req_id++};
        st = kvt_net_send(ep, ps[sent].req_id, 0, reqs[sent].data, reqs[sent].len);
        if (st != KVT_OK)
            break;
        ps[sent].next = w->pending;
        w->pending = &ps[sent];
    }
    uint64_t deadline = kvt_net_deadline(timeout_ms);
    /* ep may be closed by a callback delivered here: only ps is read after. */
    while (!pending_all_done(ps, sent) && kvt_time_ns() < deadline)
        kvt_net_step(w, deadline, true);
    kvt_status_t first = KVT_OK;
    for (size_t i = 0; i < n; i++) {
        kvt_net_req_t *r = &reqs[i];
        if (i < sent)
            pending_del(w, &ps[i]);
        r->status = i >= sent ? st : !ps[i].done ? KVT_ERR_AGAIN : ps[i].status;
        if (i < sent && !ps[i].done)
            kvt_log_debug("net request timed out req_id=%llu timeout_ms=%d",
                          (unsigned long long)ps[i].req_id, timeout_ms);
        if (r->status == KVT_OK) {
            r->reply = ps[i].reply;
            r->reply_len = ps[i].reply_len;
        }
        if (first == KVT_OK)
            first = r->status;
    }
    kvt_free(ps);
    return first;
}

/* --- worker --- */

static kvt_status_t context_create(ucp_context_h *ctx_p)
{
    ucp_config_t *cfg;
    ucs_status_t us = ucp_config_read(NULL, NULL, &cfg);
    if (us != UCS_OK) {
        kvt_log_error("net ucx config failed cause=%s", ucs_status_string(us));
        return KVT_ERR_IO;
    }
    /* Notice a silently dead peer (SIGKILL, cable) within seconds. */
    if (!getenv("UCX_KEEPALIVE_INTERVAL") &&
        (us = ucp_config_modify(cfg, "KEEPALIVE_INTERVAL", "1s")) != UCS_OK)
        kvt_log_warn("net keepalive not set cause=%s", ucs_status_string(us));
    /* Rendezvous by put: the sender writes into the buffer the receiver
     * posted.  UCX 1.13's default on TCP (get-based) spent ~2 ms inside
     * ucp_am_send_nbx for each reply over 512 KiB and made 64 KiB-block
     * pulls 5-8x slower (bench/RESULTS.md, 2026-11-22); with put the
     * receiver also never reads the sender's memory by RMA. */
    if (!getenv("UCX_RNDV_SCHEME") &&
        (us = ucp_config_modify(cfg, "RNDV_SCHEME", "put_zcopy")) != UCS_OK)
        kvt_log_warn("net rendezvous scheme not set cause=%s", ucs_status_string(us));
    /* Shared memory that reports a dead peer (keepalive checks the peer
     * process): without it UCX 1.13 leaves posix and sysv out of every
     * endpoint with peer error handling, same-host lanes included.  Set
     * here under its shared-memory table's name, MM_; the environment's
     * UCX_POSIX_/UCX_SYSV_ERROR_HANDLING win. */
    if (!getenv("UCX_POSIX_ERROR_HANDLING") && !getenv("UCX_SYSV_ERROR_HANDLING") &&
        (us = ucp_config_modify(cfg, "MM_ERROR_HANDLING", "y")) != UCS_OK)
        kvt_log_warn("net shared memory error handling not set cause=%s", ucs_status_string(us));
    /* A rebuilt worker (heal.c) listens again on its port, which the
     * connections it just closed hold in TIME_WAIT. */
    if (!getenv("UCX_CM_REUSEADDR") &&
        (us = ucp_config_modify(cfg, "CM_REUSEADDR", "y")) != UCS_OK)
        kvt_log_warn("net listener address reuse not set cause=%s", ucs_status_string(us));
    ucp_params_t p = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                      .features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP};
    us = ucp_init(&p, cfg, ctx_p);
    ucp_config_release(cfg);
    if (us != UCS_OK) {
        kvt_log_error("net ucx init failed cause=%s", ucs_status_string(us));
        return KVT_ERR_IO;
    }
    return KVT_OK;
}

/* Wakeups for every event type (UCX's default).  Arrivals only
 * (UCP_WAKEUP_RX) would keep a send waiting on a stopped peer's full
 * shared-memory queue from looking like a wedge (heal.c), but pulls fell
 * to 0.01 GB/s at every size: UCX 1.13's rendezvous needs send completions
 * to wake the worker (bench/RESULTS.md, 2026-11-22). */
kvt_status_t kvt_net_worker_setup(kvt_net_worker_t *w)
{
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    ucs_status_t us = ucp_worker_create(w->ctx, &wp, &w->uw);
    if (us != UCS_OK) {
        kvt_log_error("net worker create failed cause=%s", ucs_status_string(us));
        return KVT_ERR_IO;
    }
    us = ucp_worker_get_efd(w->uw, &w->efd);
    static const struct {
        unsigned id;
        ucp_am_recv_callback_t cb;
    } handlers[] = {{NET_AM_DATA, am_data_cb},
                     {NET_AM_CTRL, am_ctrl_cb},
                     {NET_AM_PROBE, kvt_net_probe_cb}};
    for (size_t i = 0; us == UCS_OK && i < sizeof(handlers) / sizeof(handlers[0]); i++) {
        ucp_am_handler_param_t hp = {
            .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                          UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
            .id = handlers[i].id,
            .flags = UCP_AM_FLAG_WHOLE_MSG,
            .cb = handlers[i].cb,
            .arg = w};
        us = ucp_worker_set_am_recv_handler(w->uw, &hp);
    }
    if (us != UCS_OK) {
        kvt_log_error("net worker setup failed cause=%s", ucs_status_string(us));
        ucp_worker_destroy(w->uw);
        return KVT_ERR_IO;
    }
    return KVT_OK;
}

kvt_status_t kvt_net_worker_create(const kvt_net_worker_params_t *params,
                                   kvt_net_worker_t **worker_p)
{
    if (!params || !worker_p)
        return KVT_ERR_INVALID;
    kvt_net_worker_t *w = kvt_calloc("net worker", 1, sizeof(*w));
    if (!w)
        return KVT_ERR_NOMEM;
    w->max_msg = params->max_msg_bytes ? params->max_msg_bytes : NET_DEFAULT_MAX_MSG;
    if (w->max_msg > UINT32_MAX) {
        kvt_free(w);
        return KVT_ERR_INVALID;
    }
    w->ev_cap = 16 * w->max_msg > NET_QUEUE_MIN_BYTES ? 16 * w->max_msg : NET_QUEUE_MIN_BYTES;
    size_t per_msg = w->max_msg + sizeof(net_rndv_t);
    w->rndv_cap = 4 * per_msg > NET_RNDV_MIN_BYTES ? 4 * per_msg : NET_RNDV_MIN_BYTES;
    w->rndv_ep_cap = 2 * per_msg > NET_RNDV_EP_MIN_BYTES ? 2 * per_msg : NET_RNDV_EP_MIN_BYTES;
    w->send_ep_cap = 4 * w->max_msg > NET_SEND_EP_MIN_BYTES ? 4 * w->max_msg : NET_SEND_EP_MIN_BYTES;
    w->max_conns = params->max_conns ? params->max_conns : NET_DEFAULT_MAX_CONNS;
    w->on_msg = params->on_msg;
    w->on_conn = params->on_conn;
    w->arg = params->arg;
    w->next_req_id = 1;
    w->sigfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->sigfd < 0) {
        kvt_log_error("net worker eventfd failed");
        kvt_free(w);
        return KVT_ERR_IO;
    }
    kvt_status_t st = context_create(&w->ctx);
    if (st == KVT_OK && (st = kvt_net_worker_setup(w)) != KVT_OK)
        ucp_cleanup(w->ctx);
    if (st != KVT_OK) {
        close(w->sigfd);
        kvt_free(w);
        return st;
    }
    kvt_net_lane_setup(w);
    kvt_net_wedge_setup(w);
    *worker_p = w;
    return KVT_OK;
}

void kvt_net_worker_destroy(kvt_net_worker_t *w)
{

    if (!w)
        return;
    while (w->listeners)
        kvt_net_listener_destroy(w->listeners);
    ev_discard_all(w);
    while (w->eps) {
        kvt_net_ep_detach(w->eps);
        kvt_net_ep_finish(w->eps, UCP_EP_CLOSE_FLAG_FORCE, NET_CLOSE_MS);
    }
    /* Let sends, rendezvous receives and parked closes complete. */
    uint64_t deadline = kvt_net_deadline(NET_CLOSE_MS);
    while ((w->n_sends || w->rndv || w->zombies) && kvt_time_ns() < deadline) {
        kvt_net_step(w, deadline, false);
        reap_zombies(w);
    }
    if (w->n_sends || w->rndv || w->zombies)
        kvt_log_warn("net worker destroyed with operations in flight sends=%zu rndv=%d zombies=%d",
                     w->n_sends, w->rndv != NULL, w->zombies != NULL);
    ev_discard_all(w);
    kvt_net_rndv_forget(w, NULL);
    kvt_net_mem_destroy_all(w);
    kvt_net_lane_cleanup(w);
    kvt_net_probe_destroy(w);
    ucp_worker_destroy(w->uw); /* releases what is still in flight */
    ev_discard_all(w);         /* sends that completed in there */
    kvt_net_sends_abandon(w);  /* and those that never will */
    while (w->zombies) {
        kvt_net_ep_t *ep = w->zombies;
        ep_list_del(&w->zombies, ep);
        kvt_free(ep);
    }
    kvt_net_buf_destroy_all(w);
    ucp_cleanup(w->ctx);
    close(w->sigfd);
    kvt_free(w);
}

size_t kvt_net_worker_max_msg(const kvt_net_worker_t *worker) { return worker->max_msg; }
