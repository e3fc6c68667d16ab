/* net rendezvous receives: messages that UCX announces and hands over
 * only once we post a buffer for them (large ones, NET_RNDV_FROM in
 * send.c), their budget, and the ones waiting for budget.
 *
 * Ownership: a receive's buffer belongs to UCX until rndv_done; a waiting
 * message's descriptor belongs to UCX until it is received or released.
 * Failure: a receive whose endpoint went away completes into nothing; the
 * waiting messages of a closed or failed endpoint are released, never
 * started (kvt_net_rndv_forget), and past NET_DEFER_EP_MAX waiting on one
 * endpoint the newest is dropped, logged. */
#include "net/netInt.h"

#include "common/alloc.h"
#include "common/log.h"

/* Rendezvous budget: a receive holds its buffer and record from the
 * header until the peer sends the data, so what the receives in flight may
 * hold is capped per worker and per endpoint (ep NULL: it was detached and
 * its share went with it). */
static size_t rndv_charge(size_t len) { return len + sizeof(net_rndv_t); }

static void rndv_unreserve(kvt_net_worker_t *w, kvt_net_ep_t *ep, size_t len)
{
    w->rndv_bytes -= rndv_charge(len);
    if (ep)
        ep->rndv_bytes -= rndv_charge(len);
}

static bool rndv_fits(const kvt_net_worker_t *w, const kvt_net_ep_t *ep, size_t len)
{
    size_t c = rndv_charge(len);
    return w->rndv_bytes + c <= w->rndv_cap && ep->rndv_bytes + c <= w->rndv_ep_cap;
}

static void rndv_reserve(kvt_net_worker_t *w, kvt_net_ep_t *ep, size_t len)
{
    w->rndv_bytes += rndv_charge(len);
    ep->rndv_bytes += rndv_charge(len);
}

static void rndv_link(kvt_net_worker_t *w, net_rndv_t *r)
{
    r->prev = NULL;
    r->next = w->rndv;
    if (w->rndv)
        w->rndv->prev = r;
    w->rndv = r;
}

static void rndv_unlink(kvt_net_worker_t *w, net_rndv_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        w->rndv = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
}

/* Completion, from UCX (request set) or from rndv_start (request NULL). */
static void rndv_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    net_rndv_t *r = user_data;
    kvt_net_worker_t *w = r->worker;
    rndv_unlink(w, r);
    rndv_unreserve(w, r->ep, r->len);
    if (request)
        ucp_request_free(request);
    if (status == UCS_OK && length == r->len && r->ep && !r->ep->closing) {
        kvt_net_deliver(w, r->ep, r->req_id, r->flags, r->buf, r->len);
    } else {
        kvt_log_debug("net rendezvous receive dropped status=%s len=%zu got=%zu",
                      ucs_status_string(status), r->len, length);
        kvt_net_buf_free(w, r->buf, r->len);
    }
    kvt_free(r);
}

/* Starts receiving into a buffer of our own, charged to the budget (which
 * the caller checked).  Without memory the message is released: dropped,
 * and the sender's send completes. */
static void rndv_start(kvt_net_worker_t *w, kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags,
                       void *desc, size_t len)
{
    net_rndv_t *r = kvt_calloc("net rndv", 1, sizeof(*r));
    void *buf = r ? kvt_net_buf_alloc(w, len) : NULL;
    if (!buf) {
        kvt_free(r);
        ucp_am_data_release(w->uw, desc);
        return;
    }
    rndv_reserve(w, ep, len);
    *r = (net_rndv_t){.worker = w, .ep = ep, .req_id = req_id, .flags = flags, .len = len,
                      .buf = buf};
    /* Linked first, so every path out goes through rndv_done's unlink:
     * completion can be immediate (a zero-length message, for one). */
    rndv_link(w, r);
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                               UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.recv_am = rndv_done,
                               .user_data = r};
    void *req = ucp_am_recv_data_nbx(w->uw, desc, buf, len, &prm);
    if (req == NULL) {
        rndv_done(NULL, UCS_OK, len, r);
    } else if (UCS_PTR_IS_ERR(req)) {
        kvt_log_warn("net rendezvous receive failed peer=%s len=%zu cause=%s", ep->peer, len,
                     ucs_status_string(UCS_PTR_STATUS(req)));
        rndv_done(NULL, UCS_PTR_STATUS(req), 0, r);
    }
}

/* A rendezvous message announced: received now if the budget has room and
 * none of its endpoint's is waiting (per-endpoint order), else kept for
 * kvt_net_rndv_resume (UCS_INPROGRESS keeps UCX's descriptor).  Only a peer with
 * NET_DEFER_EP_MAX already waiting loses one (logged once per endpoint). */
ucs_status_t kvt_net_rndv_arrive(kvt_net_worker_t *w, kvt_net_ep_t *ep, uint64_t req_id,
                                 uint32_t flags, void *desc, size_t len)
{
    if (ep->n_defer == 0 && rndv_fits(w, ep, len)) {
        rndv_start(w, ep, req_id, flags, desc, len);
        return UCS_OK;
    }
    net_defer_t *d = ep->n_defer < NET_DEFER_EP_MAX ? kvt_calloc("net defer", 1, sizeof(*d)) : NULL;
    if (!d) {
        if (!ep->rndv_warned)
            kvt_log_warn("net rendezvous dropped, too many waiting peer=%s len=%zu waiting=%zu",
                         ep->peer, len, ep->n_defer);
        ep->rndv_warned = true;
        return UCS_OK; /* UCX drops it; the sender's send completes */
    }
    *d = (net_defer_t){.ep = ep, .req_id = req_id, .flags = flags, .desc = desc, .len = len};
    if (w->defer_tail)
        w->defer_tail->next = d;
    else
        w->defer_head = d;
    w->defer_tail = d;
    ep->n_defer++;
    return UCS_INPROGRESS;
}

/* Unlinks d (whose predecessor is prev) from the waiting list. */
static void defer_unlink(kvt_net_worker_t *w, net_defer_t *prev, net_defer_t *d)
{
    if (prev)
        prev->next = d->next;
    else
        w->defer_head = d->next;
    if (w->defer_tail == d)
        w->defer_tail = prev;
    d->ep->n_defer--;
}

/* Starts the waiting messages that fit now, in order per endpoint; runs
 * after progress returns (never inside a UCX callback).  Returns how many
 * started.  An endpoint going away releases its own (kvt_net_rndv_forget). */
unsigned kvt_net_rndv_resume(kvt_net_worker_t *w)
{
    unsigned started = 0;
    net_defer_t *prev = NULL, *d = w->defer_head;
    while (d) {
        net_defer_t *next = d->next;
        if (!d->ep->alive) { /* its peer failed: the message goes with it */
            defer_unlink(w, prev, d);
            ucp_am_data_release(w->uw, d->desc);
            kvt_free(d);
        } else if (!d->ep->defer_blocked && rndv_fits(w, d->ep, d->len)) {
            defer_unlink(w, prev, d);
            rndv_start(w, d->ep, d->req_id, d->flags, d->desc, d->len);
            kvt_free(d);
            started++;
        } else {
            d->ep->defer_blocked = true;
            prev = d;
        }
        d = next;
    }
    for (d = w->defer_head; d; d = d->next)
        d->ep->defer_blocked = false;
    return started;
}

/* Releases the waiting messages of ep (all of them when ep is NULL). */
void kvt_net_rndv_forget(kvt_net_worker_t *w, const kvt_net_ep_t *ep)
{
    net_defer_t *prev = NULL, *d = w->defer_head;
    while (d) {
        net_defer_t *next = d->next;
        if (!ep || d->ep == ep) {
            defer_unlink(w, prev, d);
            ucp_am_data_release(w->uw, d->desc);
            kvt_free(d);
        } else {
            prev = d;
        }
        d = next;
    }
}

void kvt_net_rndv_orphan(kvt_net_worker_t *w, const kvt_net_ep_t *ep)
{
    for (net_rndv_t *r = w->rndv; r; r = r->next)
        if (r->ep == ep)
            r->ep = NULL;
}

/* Their buffers are left allocated, not freed: with UCX's put-based
 * rendezvous the sender writes into them (over cma, straight into our
 * memory), and a sender that has not heard of the rebuild yet could still
 * do so; a buffer reused meanwhile would be corrupted.  The budget must
 * come back, though, or after a few rebuilds a worker at its cap would
 * never start another rendezvous receive. */
size_t kvt_net_rndv_abandon(kvt_net_worker_t *w)
{
    size_t leaked = 0;
    while (w->rndv) {
        net_rndv_t *r = w->rndv;
        rndv_unlink(w, r);
        rndv_unreserve(w, r->ep, r->len);
        leaked += r->len;
        kvt_free(r);
    }
    return leaked;
}
