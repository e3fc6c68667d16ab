/* net sends (contract: net.h): copied sends, zero-copy sends of a list of
 * segments, and the per-endpoint bound on bytes waiting to be sent.
 *
 * Every send is one UCX active message (NET_AM_DATA or NET_AM_CTRL) with
 * the 16-byte frame header of net.c (24 bytes with the token on a
 * same-host lane, lane.c); from NET_RNDV_FROM bytes on it goes by
 * rendezvous, so the receiver takes the data when it has room.
 *
 * Ownership: a send record (net_send_t) belongs to UCX from the send call
 * until send_done.  A copied send's record holds the copy; a zero-copy
 * send's record holds only the segment list, and the segments stay the
 * caller's memory that UCX reads until the caller's done callback, which
 * runs exactly once from the event queue (never inside a UCX callback),
 * at the latest in kvt_net_worker_destroy.  Records in flight are on the
 * worker's list, so an endpoint that goes away forgets its charges and the
 * worker can finish what UCX never completed.
 *
 * Failure: a send over max_msg_bytes is refused (TOO_LARGE), on a dead
 * endpoint CLOSED, and over the endpoint's send bound FULL: a peer that
 * stops reading makes our sends fail instead of growing memory. */
#include "net/netInt.h"

#include "common/alloc.h"
#include "common/le.h"
#include "common/log.h"

#include <stddef.h>
#include <string.h>

/* Messages from this size on go by rendezvous: the receiver then pulls the
 * data when it has room (our rendezvous budget), and UCX 1.13's automatic
 * choice on TCP ran 600 KiB-12 MiB messages ~10x slower per byte than
 * either forced protocol (kvtier bench pull --batch sweeps). */
#define NET_RNDV_FROM (64u << 10)

struct net_send {
    kvt_net_worker_t *worker;
    kvt_net_ep_t *ep;             /* charged; NULL once the ep went away */
    net_send_t *next, *prev;      /* worker->sends */
    size_t len;
    kvt_net_sent_fn done;         /* zero-copy sends only */
    void *arg;
    kvt_status_t status;
    net_ev_t ev;                  /* NET_EV_SENT, queued for done */
    uint8_t hdr[NET_LANE_HDR_LEN];
    size_t hdr_len;
    size_t n_iov;
    ucp_dt_iov_t iov[];           /* zero-copy: the segments; copied: the data follows */
};

static void sends_link(kvt_net_worker_t *w, net_send_t *s)
{
    s->prev = NULL;
    s->next = w->sends;
    if (w->sends)
        w->sends->prev = s;
    w->sends = s;
    w->n_sends++;
    if (s->ep)
        s->ep->send_bytes += s->len;
}

static void sends_unlink(kvt_net_worker_t *w, net_send_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        w->sends = s->next;
    if (s->next)
        s->next->prev = s->prev;
    w->n_sends--;
    if (s->ep)
        s->ep->send_bytes -= s->len;
}

/* The send is over: a copied send's record goes, a zero-copy one waits in
 * the queue for its done callback. */
static void send_finish(net_send_t *s, ucs_status_t status)
{
    kvt_net_worker_t *w = s->worker;
    sends_unlink(w, s);
    if (status != UCS_OK)
        kvt_log_debug("net send completed with error cause=%s", ucs_status_string(status));
    if (!s->done) {
        kvt_free(s);
        return;
    }
    s->status = kvt_net_status(status);
    s->ev = (net_ev_t){.type = NET_EV_SENT, .embedded = true};
    kvt_net_ev_push(w, &s->ev);
}

static void send_done(void *request, ucs_status_t status, void *user_data)
{
    send_finish(user_data, status);
    ucp_request_free(request);
}

void kvt_net_sent_deliver(net_ev_t *ev)
{
    net_send_t *s = (net_send_t *)((char *)ev - offsetof(net_send_t, ev));
    s->done(s->status, s->arg);
    kvt_free(s);
}

void kvt_net_sends_orphan(kvt_net_ep_t *ep)
{
    for (net_send_t *s = ep->worker->sends; s; s = s->next)
        if (s->ep == ep)
            s->ep = NULL;
    ep->send_bytes = 0;
}

void kvt_net_sends_abandon(kvt_net_worker_t *w)
{
    net_send_t *s;
    while ((s = w->sends) != NULL) {
        sends_unlink(w, s);
        if (s->done)
            s->done(KVT_ERR_CLOSED, s->arg);
        kvt_free(s);
    }
}

/* Hands s (linked, charged) to UCX; on an immediate error it is undone. */
static kvt_status_t send_post(kvt_net_ep_t *ep, unsigned am_id, net_send_t *s, const void *buf,
                              size_t count, bool iov)
{
    /* On a lane the token in the header names the connection; elsewhere
     * the receiver looks the sender up by its reply endpoint. */
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_FLAGS | (iov ? UCP_OP_ATTR_FIELD_DATATYPE : 0),
        .flags = (ep->lane ? 0 : UCP_AM_SEND_FLAG_REPLY) |
                 (s->len >= NET_RNDV_FROM ? UCP_AM_SEND_FLAG_RNDV : 0),
        .cb.send = send_done,
        .user_data = s,
        .datatype = iov ? ucp_dt_make_iov() : ucp_dt_make_contig(1)};
    sends_link(ep->worker, s);
    void *req = ucp_am_send_nbx(ep->lane ? ep->lane : ep->uep, am_id, s->hdr, s->hdr_len, buf,
                                count, &prm);
    if (req == NULL) {
        send_finish(s, UCS_OK);
        return KVT_OK;
    }
    if (!UCS_PTR_IS_ERR(req))
        return KVT_OK;
    kvt_log_warn("net send failed peer=%s len=%zu cause=%s", ep->peer, s->len,
                 ucs_status_string(UCS_PTR_STATUS(req)));
    sends_unlink(ep->worker, s);
    kvt_free(s);
    return kvt_net_status(UCS_PTR_STATUS(req));
}

static void send_header(net_send_t *s, uint64_t req_id, uint32_t flags)
{
    kvt_le_put64(s->hdr, req_id);
    kvt_le_put32(s->hdr + 8, flags);
    kvt_le_put32(s->hdr + 12, (uint32_t)s->len);
    s->hdr_len = NET_HDR_LEN;
    if (s->ep && s->ep->lane) {
        kvt_le_put64(s->hdr + NET_HDR_LEN, s->ep->lane_token);
        s->hdr_len = NET_LANE_HDR_LEN;
    }
}

/* Refuses what the peer is not draining fast enough (logged once per ep). */
static kvt_status_t send_admit(kvt_net_ep_t *ep, size_t len)
{
    kvt_net_worker_t *w = ep->worker;
    if (ep->send_bytes + len <= w->send_ep_cap || ep->send_bytes == 0)
        return KVT_OK;
    if (!ep->send_warned)
        kvt_log_warn("net send refused, peer not draining peer=%s len=%zu queued=%zu cap=%zu",
                     ep->peer, len, ep->send_bytes, w->send_ep_cap);
    ep->send_warned = true;
    return KVT_ERR_FULL;
}

kvt_status_t kvt_net_am_send(kvt_net_ep_t *ep, unsigned am_id, uint64_t req_id, uint32_t flags,
                            const void *data, size_t len)
{
    kvt_status_t st = send_admit(ep, len);
    if (st != KVT_OK)
        return st;
    net_send_t *s = kvt_malloc("net send", sizeof(*s) + len);
    if (!s)
        return KVT_ERR_NOMEM;
    *s = (net_send_t){.worker = ep->worker, .ep = ep, .len = len};
    send_header(s, req_id, flags);
    uint8_t *copy = (uint8_t *)s->iov;
    if (len)
        memcpy(copy, data, len);
    return send_post(ep, am_id, s, copy, len, false);
}

/* The checks every user send passes. */
static kvt_status_t send_check(kvt_net_ep_t *ep, size_t len)
{
    if (len > ep->worker->max_msg) {
        kvt_log_warn("net send refused, too large peer=%s len=%zu max=%zu", ep->peer, len,
                     ep->worker->max_msg);
        return KVT_ERR_TOO_LARGE;
    }
    return kvt_net_ep_alive(ep) ? KVT_OK : KVT_ERR_CLOSED;
}

kvt_status_t kvt_net_send(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                          size_t len)
{
    if (!ep || (len && !data))
        return KVT_ERR_INVALID;
    kvt_status_t st = send_check(ep, len);
    return st != KVT_OK ? st : kvt_net_am_send(ep, NET_AM_DATA, req_id, flags, data, len);
}

kvt_status_t kvt_net_sendv(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags,
                           const kvt_net_iov_t *iov, size_t n, kvt_net_sent_fn done, void *arg)
{
    if (!ep || !done || (n && !iov) || n > KVT_NET_MAX_IOV)
        return KVT_ERR_INVALID;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (iov[i].len && !iov[i].data)
            return KVT_ERR_INVALID;
        /* Checked before adding: a sum that wrapped around would pass as small. */
        if (iov[i].len > SIZE_MAX - len) {
            len = SIZE_MAX;
            break;
        }
        len += iov[i].len;
        if (len > ep->worker->max_msg)
            break; /* send_check refuses it */
    }
    kvt_status_t st = send_check(ep, len);
    if (st == KVT_OK)
        st = send_admit(ep, len);
    if (st != KVT_OK)
        return st;
    net_send_t *s = kvt_malloc("net sendv", sizeof(*s) + n * sizeof(ucp_dt_iov_t));
    if (!s)
        return KVT_ERR_NOMEM;
    *s = (net_send_t){.worker = ep->worker, .ep = ep, .len = len, .done = done, .arg = arg,
                      .n_iov = n};
    send_header(s, req_id, flags);
    /* One segment goes as contiguous memory: UCX 1.13 over TCP sends an
     * iov by rendezvous at about half the speed (kvtier bench pull). */
    if (n == 1)
        return send_post(ep, NET_AM_DATA, s, iov[0].data, iov[0].len, false);
    for (size_t i = 0; i < n; i++)
        s->iov[i] = (ucp_dt_iov_t){.buffer = (void *)iov[i].data, .length = iov[i].len};
    return send_post(ep, NET_AM_DATA, s, s->iov, n, true);
}
