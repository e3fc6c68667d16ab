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
 * What: kvt_net_step reports every busy wakeup after a progress pass that
 * did nothing; once that has lasted wedge_ns without a pass that did
 * something, the worker is marked wedged, and the next top-level call
 * (kvt_net_worker_wait or _progress, or kvt_net_connect; never inside a
 * blocking call's wait) rebuilds it: every endpoint is reported down and
 * closed at the UCX level (the kvt_net_ep_t stays the user's until
 * kvt_net_ep_close), listeners close, the old UCX worker is destroyed
 * (which closes its sockets, so peers notice at once) and a fresh one
 * listens again on the same ports.
 * Clients reconnect; nothing that was stored is touched.
 *
 * The one false alarm: a send waiting on a same-host peer's full queue
 * also keeps the wakeup busy, so a peer stopped (SIGSTOP, a debugger) with
 * its queue full for wedge_ns costs a rebuild too -- a reconnect for every
 * client, no lost data.  (Wakeups for arrivals only would tell the two
 * apart, but UCX 1.13's rendezvous needs send completions to wake us.)
 *
 * Ownership: the rebuild runs only where no UCX object of the user's can
 * point into the old worker: registrations belong to the UCX context, and
 * rkeys live inside one blocking pull, which never reaches a top-level
 * call.  Sends the old worker never completed are finished with
 * KVT_ERR_CLOSED. */
#include "net/netInt.h"

#include "common/log.h"
#include "common/time.h"

#include <stdlib.h>

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

void kvt_net_wedge_note_busy(kvt_net_worker_t *w, uint64_t now_ns)
{
    if (!w->wedge_ns)
        return;
    if (!w->busy_since_ns)
        w->busy_since_ns = now_ns;
    else if (now_ns - w->busy_since_ns >= w->wedge_ns)
        w->wedged = true;
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
        kvt_net_ep_force_close(ep);
    }
    return n;
}

kvt_status_t kvt_net_worker_rebuild(kvt_net_worker_t *w)
{
    w->wedged = false;
    w->busy_since_ns = 0;
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
        for (kvt_net_listener_t *l = w->listeners; l; l = l->next)
            kvt_net_listener_rebind(l);
        return st;
    }
    ucp_worker_destroy(old); /* callbacks of what was still in flight run here */
    kvt_net_sends_abandon(w); /* and those that never will */
    if (w->rndv)
        kvt_log_warn("net rebuild left rendezvous receives that never completed");
    kvt_net_lane_setup(w);
    for (kvt_net_listener_t *l = w->listeners; l; l = l->next)
        kvt_net_listener_rebind(l);
    w->busy_since_ns = 0;
    w->wedged = false;
    w->rebuilds++;
    kvt_log_info("net worker rebuilt conns_dropped=%zu sends_in_flight=%zu rebuilds=%llu", n_eps,
                 w->n_sends, (unsigned long long)w->rebuilds);
    return KVT_OK;
}

void kvt_net_wedge_check(kvt_net_worker_t *w)
{
    if (!w->wedged)
        return;
    kvt_log_error("net worker wedged: UCX reported work for %llu ms and did none (a same-host "
                  "peer killed while sending leaves UCX 1.13's shared-memory queue stuck); "
                  "rebuilding it, every connection is dropped",
                  (unsigned long long)(w->wedge_ns / 1000000ull));
    if (kvt_net_worker_rebuild(w) != KVT_OK)
        kvt_log_error("net worker rebuild failed, keeping the wedged worker");
}

uint64_t kvt_net_worker_rebuilds(const kvt_net_worker_t *w) { return w->rebuilds; }
