/* net connections: address parsing, connect (with the hello round trip
 * that proves the peer is there) and retry, listeners and accepts.
 *
 * Ownership: a listener belongs to its worker until destroyed; accepted
 * and connected endpoints go on the worker's list and are the user's from
 * the moment they are reported (on_conn up) or returned.  Failure: an
 * endpoint that fails or times out during connect is closed here and never
 * reported; a refused or unreachable peer comes back as KVT_ERR_IO as soon
 * as UCX's error callback fires, not at the timeout.  Connection requests
 * still queued when their listener is destroyed are rejected, and so are
 * those that find the worker holding max_conns accepted endpoints (so a
 * flood of clients cannot take every file descriptor and byte of memory a
 * server has); the count drops in kvt_net_ep_finish. */
#include "net/netInt.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- addresses --- */

/* "HOST:PORT" or "[V6]:PORT"; the host is required (no wildcard default). */
static kvt_status_t addr_parse(const char *host_port, struct sockaddr_storage *sa,
                               socklen_t *len_p)
{
    char host[256];
    const char *colon = host_port ? strrchr(host_port, ':') : NULL;
    if (!colon || colon == host_port || (size_t)(colon - host_port) >= sizeof(host))
        return KVT_ERR_INVALID;
    const char *h = host_port;
    size_t hl = (size_t)(colon - host_port);
    int family = AF_INET; /* names resolve to IPv4, as on both ends */
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
        family = AF_INET6;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535 || hl == 0)
        return KVT_ERR_INVALID;
    struct addrinfo hints = {.ai_family = family, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV}, *ai;
    int rc = getaddrinfo(host, colon + 1, &hints, &ai);
    if (rc != 0) {
        kvt_log_warn("net address not resolved addr=%s cause=%s", host_port, gai_strerror(rc));
        return KVT_ERR_IO;
    }
    memcpy(sa, ai->ai_addr, ai->ai_addrlen);
    *len_p = ai->ai_addrlen;
    freeaddrinfo(ai);
    return KVT_OK;
}

static void addr_format(const struct sockaddr *sa, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        port = ntohs(in6->sin6_port);
    }
    snprintf(out, cap, "%s:%u", ip, port);
}

/* --- connect --- */

static kvt_status_t connect_start(kvt_net_worker_t *w, const char *host_port,
                                  kvt_net_ep_t **ep_p)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    kvt_status_t st = addr_parse(host_port, &sa, &salen);
    if (st != KVT_OK)
        return st;
    kvt_net_ep_t *ep = kvt_net_ep_alloc(w);
    if (!ep)
        return KVT_ERR_NOMEM;
    snprintf(ep->peer, sizeof(ep->peer), "%s", host_port);
    ucp_ep_params_t p;
    kvt_net_ep_params(ep, &p);
    p.field_mask |= UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_FLAGS;
    p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr.addr = (const struct sockaddr *)&sa;
    p.sockaddr.addrlen = salen;
    ucs_status_t us = ucp_ep_create(w->uw, &p, &ep->uep);
    if (us != UCS_OK) {
        kvt_log_warn("net connect failed peer=%s cause=%s", host_port, ucs_status_string(us));
        kvt_free(ep);
        return KVT_ERR_IO;
    }
    ep->alive = true;
    kvt_net_ep_link(ep);
    *ep_p = ep;
    return KVT_OK;
}

/* One connect: the client-server endpoint, then hello -> ack, the hello
 * carrying a same-host lane offer when offer_lane (lane.c). */
static kvt_status_t connect_once(kvt_net_worker_t *w, const char *host_port, uint64_t deadline,
                                 bool offer_lane, kvt_net_ep_t **ep_p, ucs_status_t *why_p)
{
    *why_p = UCS_OK;
    kvt_net_ep_t *ep;
    kvt_status_t st = connect_start(w, host_port, &ep);
    if (st != KVT_OK)
        return st;
    void *hello = NULL;
    size_t hello_len = 0;
    if (offer_lane)
        st = kvt_net_lane_offer(ep, &hello, &hello_len);
    if (st == KVT_OK)
        st = kvt_net_am_send(ep, NET_AM_CTRL, 0, NET_CTRL_HELLO, hello, hello_len);
    kvt_free(hello);
    while (st == KVT_OK && !ep->hello_acked && ep->alive && kvt_time_ns() < deadline)
        kvt_net_step(w, deadline, false);
    if (st == KVT_OK && ep->hello_acked && ep->alive) {
        ep->published = true;
        kvt_log_debug("net connected peer=%s lane=%d", ep->peer, ep->lane_up);
        *ep_p = ep;
        return KVT_OK;
    }
    if (st == KVT_OK)
        st = ep->alive ? KVT_ERR_AGAIN : KVT_ERR_IO;
    *why_p = ep->err;
    kvt_log_info("net connect failed peer=%s status=%s lane_offered=%d cause=%s", host_port,
                 kvt_status_str(st), hello_len > 0,
                 ep->alive ? "timeout" : ucs_status_string(ep->err));
    kvt_net_ep_detach(ep);
    kvt_net_ep_finish(ep, UCP_EP_CLOSE_FLAG_FORCE, NET_CLOSE_MS);
    return st;
}

kvt_status_t kvt_net_connect(kvt_net_worker_t *w, const char *host_port, int timeout_ms,
                             kvt_net_ep_t **ep_p)
{
    uint64_t deadline = kvt_net_deadline(timeout_ms);
    kvt_net_wedge_check(w); /* a connect is a top-level call (net/heal.c) */
    if (!w->lanes)
        return connect_once(w, host_port, deadline, false, ep_p, &(ucs_status_t){0});
    /* With a lane offered, the ack comes on the lane, so a lane UCX cannot
     * wire (shared memory the identity check let through but UCX could not
     * attach) may show only as a missing ack.  Half the time for that try,
     * then the rest for one without an offer.  Not after a refusal: nobody
     * listens, or the server is at its cap. */
    uint64_t now = kvt_time_ns();
    ucs_status_t why;
    kvt_status_t st = connect_once(w, host_port, now + (deadline - now) / 2, true, ep_p, &why);
    bool refused = why == UCS_ERR_NOT_CONNECTED || why == UCS_ERR_REJECTED ||
                   why == UCS_ERR_UNREACHABLE;
    if ((st == KVT_ERR_IO || st == KVT_ERR_AGAIN) && !refused && kvt_time_ns() < deadline) {
        kvt_log_warn("net connect failed with a same-host lane offered, retrying without "
                     "peer=%s status=%s", host_port, kvt_status_str(st));
        kvt_net_wedge_check(w); /* our own worker may be what failed it */
        /* A server rebuilding its worker (net/heal.c) drops connections
         * and listens again ~50 ms later: a try at once would meet that. */
        uint64_t pause = kvt_time_ns() + NET_RETRY_PAUSE_MS * 1000000ull;
        if (pause < deadline)
            while (kvt_time_ns() < pause)
                kvt_net_step(w, pause, false);
        st = connect_once(w, host_port, deadline, false, ep_p, &why);
    }
    return st;
}

kvt_status_t kvt_net_connect_retry(kvt_net_worker_t *w, const char *host_port,
                                   int total_timeout_ms, kvt_net_ep_t **ep_p)
{
    uint64_t deadline = kvt_net_deadline(total_timeout_ms);
    int delay_ms = 100;
    for (;;) {
        uint64_t now = kvt_time_ns();
        int left_ms = now < deadline ? (int)((deadline - now) / 1000000) : 0;
        kvt_status_t st = kvt_net_connect(w, host_port, left_ms, ep_p);
        if (st == KVT_OK || st == KVT_ERR_INVALID || st == KVT_ERR_NOMEM)
            return st;
        uint64_t wake = kvt_time_ns() + (uint64_t)delay_ms * 1000000ull;
        if (wake >= deadline)
            return st;
        while (kvt_time_ns() < wake)
            kvt_net_step(w, wake, false);
        delay_ms = delay_ms * 2 > 2000 ? 2000 : delay_ms * 2;
    }
}

/* --- listeners --- */

/* Reject conn_req if the worker is at its cap.  Logged on the first
 * refusal and every NET_REFUSE_LOG_EVERY-th after: clients that retry in a
 * loop must not flood the log. */
static bool reject_over_cap(kvt_net_listener_t *l, ucp_conn_request_h conn_req)
{
    kvt_net_worker_t *w = l->worker;
    if (w->n_accepted < w->max_conns)
        return false;
    if (w->n_refused++ % NET_REFUSE_LOG_EVERY == 0) {
        char peer[64] = "?";
        ucp_conn_request_attr_t attr = {.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR};
        if (ucp_conn_request_query(conn_req, &attr) == UCS_OK)
            addr_format((const struct sockaddr *)&attr.client_address, peer, sizeof(peer));
        kvt_log_warn("net connection refused, at the cap peer=%s port=%u conns=%zu max_conns=%zu "
                     "refused=%zu", peer, l->port, w->n_accepted, w->max_conns, w->n_refused);
    }
    ucp_listener_reject(l->ul, conn_req);
    return true;
}

/* Requests over the cap are refused here already, so a flood of them does
 * not queue events.  Several can be queued in one progress pass while the
 * worker is under the cap, so kvt_net_accept checks again. */
static void conn_cb(ucp_conn_request_h conn_req, void *arg)
{
    kvt_net_listener_t *l = arg;
    if (reject_over_cap(l, conn_req))
        return;
    net_ev_t *ev = kvt_calloc("net accept", 1, sizeof(*ev));
    if (!ev) {
        ucp_listener_reject(l->ul, conn_req);
        return;
    }
    ev->type = NET_EV_ACCEPT;
    ev->listener = l;
    ev->conn_req = conn_req;
    kvt_net_ev_push(l->worker, ev);
}

void kvt_net_accept(kvt_net_listener_t *l, ucp_conn_request_h conn_req)
{
    kvt_net_worker_t *w = l->worker;
    if (reject_over_cap(l, conn_req))
        return;
    kvt_net_ep_t *ep = kvt_net_ep_alloc(w);
    if (!ep) {
        ucp_listener_reject(l->ul, conn_req);
        return;
    }
    ucp_conn_request_attr_t attr = {.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR};
    if (ucp_conn_request_query(conn_req, &attr) == UCS_OK)
        addr_format((const struct sockaddr *)&attr.client_address, ep->peer, sizeof(ep->peer));
    ucp_ep_params_t p;
    kvt_net_ep_params(ep, &p);
    p.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
    p.conn_request = conn_req;
    ucs_status_t us = ucp_ep_create(w->uw, &p, &ep->uep);
    if (us != UCS_OK) {
        kvt_log_warn("net accept failed peer=%s cause=%s", ep->peer, ucs_status_string(us));
        kvt_free(ep);
        return;
    }
    ep->alive = true;
    ep->published = true;
    ep->accepted = true;
    w->n_accepted++;
    kvt_net_ep_link(ep);
    kvt_log_debug("net accepted peer=%s port=%u conns=%zu", ep->peer, l->port, w->n_accepted);
    if (w->on_conn)
        w->on_conn(ep, true, w->arg);
}

kvt_status_t kvt_net_listen(kvt_net_worker_t *w, const char *host_port,
                            kvt_net_listener_t **listener_p)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    kvt_status_t st = addr_parse(host_port, &sa, &salen);
    if (st != KVT_OK)
        return st;
    kvt_net_listener_t *l = kvt_calloc("net listener", 1, sizeof(*l));
    if (!l)
        return KVT_ERR_NOMEM;
    l->worker = w;
    ucp_listener_params_t p = {.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR |
                                             UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
                               .sockaddr = {.addr = (const struct sockaddr *)&sa, .addrlen = salen},
                               .conn_handler = {.cb = conn_cb, .arg = l}};
    ucs_status_t us = ucp_listener_create(w->uw, &p, &l->ul);
    if (us != UCS_OK) {
        kvt_log_error("net listen failed addr=%s cause=%s", host_port, ucs_status_string(us));
        kvt_free(l);
        return KVT_ERR_IO;
    }
    l->sa = sa;
    l->salen = salen;
    ucp_listener_attr_t attr = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    if (ucp_listener_query(l->ul, &attr) == UCS_OK) {
        const struct sockaddr *la = (const struct sockaddr *)&attr.sockaddr;
        l->port = la->sa_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)la)->sin6_port)
                                            : ntohs(((const struct sockaddr_in *)la)->sin_port);
    }
    /* A rebuild listens on the port we got, not on "any free port". */
    if (l->sa.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&l->sa)->sin6_port = htons(l->port);
    else
        ((struct sockaddr_in *)&l->sa)->sin_port = htons(l->port);
    l->next = w->listeners;
    if (w->listeners)
        w->listeners->prev = l;
    w->listeners = l;
    kvt_log_info("net listening addr=%s port=%u", host_port, l->port);
    *listener_p = l;
    return KVT_OK;
}

uint16_t kvt_net_listener_port(const kvt_net_listener_t *l) { return l->port; }

void kvt_net_listener_unbind(kvt_net_listener_t *l)
{
    kvt_net_ev_purge(l->worker, NULL, l);
    if (l->ul)
        ucp_listener_destroy(l->ul);
    l->ul = NULL;
}

kvt_status_t kvt_net_listener_rebind(kvt_net_listener_t *l)
{
    ucp_listener_params_t p = {.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR |
                                             UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
                               .sockaddr = {.addr = (const struct sockaddr *)&l->sa,
                                            .addrlen = l->salen},
                               .conn_handler = {.cb = conn_cb, .arg = l}};
    ucs_status_t us = ucp_listener_create(l->worker->uw, &p, &l->ul);
    if (us != UCS_OK) {
        kvt_log_debug("net listen again failed port=%u cause=%s", l->port, ucs_status_string(us));
        l->ul = NULL;
        return KVT_ERR_IO;
    }
    return KVT_OK;
}

void kvt_net_listener_destroy(kvt_net_listener_t *l)
{
    if (!l)
        return;
    kvt_net_worker_t *w = l->worker;
    kvt_net_listener_unbind(l);
    if (l->prev)
        l->prev->next = l->next;
    else
        w->listeners = l->next;
    if (l->next)
        l->next->prev = l->prev;
    kvt_free(l);
}

