/* Rebuilding a wedged UCX worker.
 *
 * Why: UCX 1.13's shared-memory transports (sysv, posix) deliver through a
 * queue in the receiver's memory.  A sender first claims a slot (moves the
 * queue's head), then fills it, then marks it ready; the receiver reads the
 * slots strictly in order.  A sender SIGKILLed between the claim and the
 * mark leaves a slot that never becomes ready: nothing behind it is read
 * again, and UCX's wakeup then says "busy" for ever, so the owning thread
 * spins at 100% CPU.  Every same-host peer talks to us through that queue
 * (a client-server endpoint's wireup does too, lane or not), so new
 * clients cannot connect and lane replies stop.  Found with a debug UCX
 * build under gdb: a kv serve daemon's queue head at 210, its read index
 * stuck at 199, slot 199 never marked (docs/net.md, "Known limits").
 *
 * What: kvt_net_step reports what ucp_worker_arm says after every progress
 * pass that did nothing.  Busy arms, none more than 2 x NET_POLL_MS apart
 * and no "not busy" between them, for wedge_ns make the worker suspect --
 * the progress count is no sign of health: UCX's keepalive and the peers'
 * keepalive messages make a wedged worker's progress report work every
 * second.  Busy arms also come from healthy causes (a send waiting on a
 * slow or stopped peer's full queue, a sender between its claim and its
 * mark), so a suspect worker is probed at the next top-level call
 * (kvt_net_worker_wait or _progress, or kvt_net_connect; never inside a
 * blocking call's wait): a second UCX worker of our own, on shared memory
 * only, sends it a message through that same queue.  If it arrives within
 * NET_PROBE_MS the queue moves and nothing happens; if not, the worker is
 * rebuilt: every endpoint is reported down and closed at the UCX level
 * (the kvt_net_ep_t stays the user's until kvt_net_ep_close), listeners
 * close, the old UCX worker is destroyed (which closes its sockets, so
 * peers notice at once) and a fresh one listens again on the same ports.
 * Clients reconnect; nothing that was stored is touched.
 *
 * Ownership: the rebuild runs only where no UCX object of the user's can
 * point into the old worker: registrations belong to the UCX context, and
 * rkeys live inside one blocking pull, which never reaches a top-level
 * call (net.h: an rkey must not be held across one).  Sends the old worker
 * never completed are finished with KVT_ERR_CLOSED.  kvt_net_worker_signal
 * writes our own eventfd, never UCX's, so other threads may signal through
 * a rebuild.  The prober is ours alone, on this thread. */
#include "net/netInt.h"

#include "common/log.h"
#include "common/time.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void kvt_net_wedge_setup(kvt_net_worker_t *w)
{
    /* KVT_NET_WEDGE_MS=0 turns rebuilding off. */
    const char *env = getenv("KVT_NET_WEDGE_MS");
    char *end = NULL;
    long ms = env ? strtol(env, &end, 10) : NET_WEDGE_MS;
    if (env && (end == env || *end != '\0' || ms < 0)) {
        kvt_log_warn("net KVT_NET_WEDGE_MS is not a number of ms, using the default value=%s "
                     "default_ms=%d", env, NET_WEDGE_MS);
        ms = NET_WEDGE_MS;
    }
    w->wedge_ns = (uint64_t)ms * 1000000ull;
}

void kvt_net_wedge_note_arm(kvt_net_worker_t *w, uint64_t now_ns, bool busy)
{
    if (!busy || !w->wedge_ns) {
        w->busy_since_ns = 0;
        return;
    }
    /* Busy arms far apart (a keepalive timer, a signal) are no streak. */
    if (!w->busy_since_ns || now_ns - w->busy_last_ns > 2ull * NET_POLL_MS * 1000000ull)
        w->busy_since_ns = now_ns;
    w->busy_last_ns = now_ns;
    if (now_ns - w->busy_since_ns >= w->wedge_ns)
        w->wedged = true;
}

/* --- the probe --- */

ucs_status_t kvt_net_probe_cb(void *arg, const void *header, size_t header_length, void *data,
                              size_t length, const ucp_am_recv_param_t *param)
{
    (void)data, (void)length, (void)param;
    kvt_net_worker_t *w = arg;
    if (header_length == sizeof(uint64_t))
        memcpy(&w->probe_seen, header, sizeof(uint64_t));
    return UCS_OK;
}

void kvt_net_probe_destroy(kvt_net_worker_t *w)
{
    if (w->probe_ep) {
        ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                   .flags = UCP_EP_CLOSE_FLAG_FORCE};
        void *req = ucp_ep_close_nbx(w->probe_ep, &prm);
        if (UCS_PTR_IS_PTR(req)) {
            for (int i = 0; i < 1000 && ucp_request_check_status(req) == UCS_INPROGRESS; i++) {
                ucp_worker_progress(w->probe_uw);
                ucp_worker_progress(w->uw);
            }
            ucp_request_free(req);
        }
    }
    if (w->probe_uw)
        ucp_worker_destroy(w->probe_uw);
    if (w->probe_ctx)
        ucp_cleanup(w->probe_ctx);
    w->probe_ep = NULL;
    w->probe_uw = NULL;
    w->probe_ctx = NULL;
}

/* A UCX context and worker of our own on shared memory only ("sm": sysv,
 * posix, cma), with an endpoint to our worker's address: what it sends
 * lands in the same queue as a same-host peer's. */
static bool probe_open(kvt_net_worker_t *w)
{
    if (!w->addr)
        return false;
    ucp_config_t *cfg;
    if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK)
        return false;
    ucs_status_t us = ucp_config_modify(cfg, "TLS", "sm");
    ucp_params_t p = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
    if (us == UCS_OK)
        us = ucp_init(&p, cfg, &w->probe_ctx);
    ucp_config_release(cfg);
    if (us != UCS_OK) {
        w->probe_ctx = NULL;
        return false;
    }
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS,
                          .address = w->addr};
    if (ucp_worker_create(w->probe_ctx, &wp, &w->probe_uw) != UCS_OK) {
        w->probe_uw = NULL;
        kvt_net_probe_destroy(w);
        return false;
    }
    if (ucp_ep_create(w->probe_uw, &ep, &w->probe_ep) != UCS_OK) {
        w->probe_ep = NULL;
        kvt_net_probe_destroy(w);
        return false;
    }
    return true;
}

/* true: a message of ours went through our shared-memory queue within
 * NET_PROBE_MS; false: it did not (or no probe could be sent: then the
 * rebuild is the only repair we have). */
static bool probe_passes(kvt_net_worker_t *w)
{
    if (!w->probe_ep && !probe_open(w))
        return false;
    uint64_t nonce = ++w->probes;
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                               .flags = UCP_AM_SEND_FLAG_EAGER};
    void *req = ucp_am_send_nbx(w->probe_ep, NET_AM_PROBE, &nonce, sizeof(nonce), NULL, 0, &prm);
    if (UCS_PTR_IS_ERR(req))
        return false;
    uint64_t deadline = kvt_net_deadline(NET_PROBE_MS);
    bool seen = false;
    while (!seen && kvt_time_ns() < deadline) {
        unsigned n = ucp_worker_progress(w->probe_uw) + ucp_worker_progress(w->uw);
        seen = w->probe_seen == nonce;
        if (!n && !seen)
            usleep(100);
    }
    bool sent = !UCS_PTR_IS_PTR(req) || ucp_request_check_status(req) != UCS_INPROGRESS;
    if (UCS_PTR_IS_PTR(req))
        ucp_request_free(req); /* UCX completes it on its own if still running */
    if (!seen || !sent)
        kvt_net_probe_destroy(w); /* a fresh prober next time */
    return seen;
}

/* Report every endpoint down and close it at the UCX level on the old
 * worker; endpoints the user never saw go at once.  Returns how many the
 * user held. */
static size_t drop_endpoints(kvt_net_worker_t *w)
{
    size_t n = 0;
    kvt_net_ep_t *ep = w->eps, *next;
    for (; ep; ep = next) {
        next = ep->next;
        if (!ep->published) {
            kvt_net_ep_detach(ep);
            kvt_net_ep_finish(ep, UCP_EP_CLOSE_FLAG_FORCE, NET_CLOSE_MS);
            continue;
        }
        n++;
        kvt_net_ep_fail(ep, UCS_ERR_CANCELED);
        kvt_net_lane_forget(ep); /* nothing more reaches it by its lane token */
        kvt_net_rndv_orphan(w, ep);
        kvt_net_ep_force_close(ep);
    }
    return n;
}

kvt_status_t kvt_net_worker_rebuild(kvt_net_worker_t *w)
{
    w->wedged = false;
    w->busy_since_ns = 0;
    kvt_net_probe_destroy(w); /* it points at the old worker */
    size_t n_eps = drop_endpoints(w);
    for (kvt_net_listener_t *l = w->listeners; l; l = l->next)
        kvt_net_listener_unbind(l);
    /* Let the forced closes complete the old worker's sends and receives
     * (their callbacks run in its progress). */
    uint64_t deadline = kvt_net_deadline(NET_CLOSE_MS);
    while ((w->n_sends || w->rndv) && kvt_time_ns() < deadline)
        kvt_net_step(w, deadline, false);
    kvt_net_rndv_forget(w, NULL); /* waiting messages hold the old worker's data */
    kvt_net_zombies_free(w);
    ucp_worker_h old = w->uw;
    int old_efd = w->efd;
    kvt_net_lane_cleanup(w);
    kvt_status_t st = kvt_net_worker_setup(w);
    if (st != KVT_OK) {
        /* Keep the wedged one: it still serves TCP peers. */
        w->uw = old;
        w->efd = old_efd;
        kvt_net_lane_setup(w);
        kvt_net_listeners_rebind(w);
        return st;
    }
    ucp_worker_destroy(old); /* callbacks of what was still in flight run here */
    size_t n_abandoned = w->n_sends;
    kvt_net_sends_abandon(w); /* and those that never will */
    size_t leaked = kvt_net_rndv_abandon(w);
    if (leaked)
        kvt_log_warn("net rebuild left rendezvous receives that never completed; their budget "
                     "is back, their buffers stay allocated bytes=%zu",
                     leaked);
    kvt_net_lane_setup(w);
    kvt_net_listeners_rebind(w);
    w->busy_since_ns = 0;
    w->wedged = false;
    w->rebuilds++;
    kvt_log_info("net worker rebuilt conns_dropped=%zu sends_abandoned=%zu rebuilds=%llu", n_eps,
                 n_abandoned, (unsigned long long)w->rebuilds);
    return KVT_OK;
}

#define LISTEN_RETRY_MS 1000

/* Listeners without a UCX listener listen again; w->listen_down says
 * whether some still cannot, and the next try is LISTEN_RETRY_MS on. */
static void listeners_try(kvt_net_worker_t *w, bool log_failure)
{
    bool down = false;
    for (kvt_net_listener_t *l = w->listeners; l; l = l->next) {
        if (l->ul)
            continue;
        if (kvt_net_listener_rebind(l) == KVT_OK) {
            if (w->listen_down)
                kvt_log_info("net listening again port=%u", l->port);
            continue;
        }
        down = true;
        if (log_failure)
            kvt_log_error("net cannot listen again after a rebuild, not accepting; trying "
                          "every %d ms port=%u",
                          LISTEN_RETRY_MS, l->port);
    }
    w->listen_down = down;
    w->listen_retry_ns = kvt_time_ns() + LISTEN_RETRY_MS * 1000000ull;
}

void kvt_net_listeners_rebind(kvt_net_worker_t *w)
{
    w->listen_down = false;
    listeners_try(w, true);
}

void kvt_net_wedge_check(kvt_net_worker_t *w)
{
    if (w->listen_down && kvt_time_ns() >= w->listen_retry_ns)
        listeners_try(w, false);
    if (!w->wedged)
        return;
    w->wedged = false;
    w->busy_since_ns = 0;
    if (probe_passes(w)) {
        kvt_log_debug("net worker busy but its shared memory moves, no rebuild probes=%llu",
                      (unsigned long long)w->probes);
        return;
    }
    kvt_log_error("net worker wedged: UCX stayed busy for %llu ms and a probe of its "
                  "shared-memory queue did not arrive in %d ms (a same-host peer killed while "
                  "sending leaves UCX 1.13's queue stuck); rebuilding it, every connection is "
                  "dropped",
                  (unsigned long long)(w->wedge_ns / 1000000ull), NET_PROBE_MS);
    if (kvt_net_worker_rebuild(w) != KVT_OK)
        kvt_log_error("net worker rebuild failed, keeping the wedged worker");
}

uint64_t kvt_net_worker_rebuilds(const kvt_net_worker_t *w) { return w->rebuilds; }
