/* net same-host lanes: a second UCX endpoint, by worker address, for what
 * a server sends to a client on the same host.
 *
 * Why: UCX 1.13 wires client-server (sockaddr) endpoints over network
 * transports only, so two processes on one host talk over TCP on loopback
 * even though UCX has shared memory (posix, sysv, cma) between them.  An
 * endpoint created from a worker address gets every transport UCX can
 * reach, shared memory included (docs/net.md has the figures).
 *
 * How: the client's hello carries a lane offer: a random 64-bit token, its
 * host identity (host_identity below) and its UCX worker address.  A
 * server with the same identity creates the lane, an endpoint to that
 * address that it owns, and from then on sends everything for that
 * connection on the lane, the ack first, each message with the token
 * appended to the frame header.  The client finds the connection by the
 * token (the lane's far end is an endpoint UCX made internally, which the
 * client never uses).  The client's own sends stay on the client-server
 * endpoint: only one side creates an endpoint by address, so UCX's
 * matching of endpoints created from both sides is never involved.
 *
 * Failure: a server on another host, or one that cannot create the lane,
 * acks on the client-server endpoint and the connection works as before.
 * The lane has peer error handling like every endpoint, its error callback
 * is the connection's, and net.c turns on UCX's error handling for posix
 * and sysv shared memory (keepalive checks that the peer process lives),
 * without which UCX 1.13 would wire a peer-handled lane over TCP again.  A
 * lane UCX cannot wire shows as a missing ack: kvt_net_connect then tries
 * once more without an offer.  tests/integration/test_pull_lane.c kills
 * readers and the daemon mid-transfer.  A client offers a lane unless
 * KVT_NET_LANES=0 is in its environment; servers always accept them. */
#include "net/netInt.h"

#include "common/alloc.h"
#include "common/le.h"
#include "common/log.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* Hello payload: u32 magic, u64 token, u16 host_len, host, u32 addr_len,
 * addr; little-endian. */
#define LANE_MAGIC 0x4e4c564bu /* "KVLN" */
#define LANE_HELLO_FIXED (4u + 8u + 2u + 4u)

/* Who may share memory with us: same hostname and kernel boot, same IPC
 * and pid namespaces (a container has its own /dev/shm and pids, and UCX's
 * shared memory needs both), same user (UCX's segments are private to it).
 * Processes that differ in any of these get no lane. */
static void host_identity(char *out, size_t cap)
{
    char host[64] = "?", boot[40] = "?", ipc[64] = "?", pid[64] = "?";
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "?");
    host[sizeof(host) - 1] = '\0';
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, boot, sizeof(boot) - 1);
        boot[n > 0 ? n : 0] = '\0';
        close(fd);
        boot[strcspn(boot, "\n")] = '\0';
    }
    ssize_t n = readlink("/proc/self/ns/ipc", ipc, sizeof(ipc) - 1);
    ipc[n > 0 ? n : 1] = '\0';
    n = readlink("/proc/self/ns/pid", pid, sizeof(pid) - 1);
    pid[n > 0 ? n : 1] = '\0';
    snprintf(out, cap, "%s/%s/%s/%s/uid=%u", host, boot, ipc, pid, (unsigned)getuid());
}

void kvt_net_lane_setup(kvt_net_worker_t *w)
{
    /* On unless turned off: KVT_NET_LANES=0 keeps every reply on the
     * client-server endpoint (TCP), e.g. to compare the two. */
    const char *env = getenv("KVT_NET_LANES");
    w->lanes = !(env && strcmp(env, "0") == 0);
    host_identity(w->host_id, sizeof(w->host_id));
    if (getrandom(&w->token_next, sizeof(w->token_next), 0) != (ssize_t)sizeof(w->token_next))
        w->token_next = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
    ucs_status_t us = ucp_worker_get_address(w->uw, &w->addr, &w->addr_len);
    if (us != UCS_OK) {
        kvt_log_warn("net worker address unavailable, no same-host lanes cause=%s",
                     ucs_status_string(us));
        w->addr = NULL;
        w->addr_len = 0;
        w->lanes = false;
    }
}

void kvt_net_lane_cleanup(kvt_net_worker_t *w)
{
    if (w->addr)
        ucp_worker_release_address(w->uw, w->addr);
    w->addr = NULL;
}

/* --- token -> client ep --- */

static size_t tbucket_of(uint64_t token)
{
    return (size_t)((token * 0x9e3779b97f4a7c15ull) >> 56) % NET_EP_BUCKETS;
}

kvt_net_ep_t *kvt_net_lane_lookup(kvt_net_worker_t *w, uint64_t token)
{
    for (kvt_net_ep_t *ep = w->tbuckets[tbucket_of(token)]; ep; ep = ep->tnext)
        if (ep->lane_token == token)
            return ep;
    return NULL;
}

void kvt_net_lane_forget(kvt_net_ep_t *ep)
{
    if (!ep->lane_token || ep->lane)
        return; /* not a client ep with an offer out */
    for (kvt_net_ep_t **pp = &ep->worker->tbuckets[tbucket_of(ep->lane_token)]; *pp;
         pp = &(*pp)->tnext) {
        if (*pp == ep) {
            *pp = ep->tnext;
            break;
        }
    }
    ep->tnext = NULL;
    ep->lane_token = 0;
}

/* --- client: the offer --- */

kvt_status_t kvt_net_lane_offer(kvt_net_ep_t *ep, void **hello_p, size_t *len_p)
{
    kvt_net_worker_t *w = ep->worker;
    *hello_p = NULL;
    *len_p = 0;
    if (!w->lanes)
        return KVT_OK;
    size_t host_len = strlen(w->host_id);
    size_t len = LANE_HELLO_FIXED + host_len + w->addr_len;
    uint8_t *p = kvt_malloc("net lane offer", len);
    if (!p)
        return KVT_ERR_NOMEM;
    /* A fresh nonzero token no other ep of this worker holds. */
    do {
        w->token_next = w->token_next * 6364136223846793005ull + 1442695040888963407ull;
    } while (!w->token_next || kvt_net_lane_lookup(w, w->token_next));
    ep->lane_token = w->token_next;
    kvt_net_ep_t **b = &w->tbuckets[tbucket_of(ep->lane_token)];
    ep->tnext = *b;
    *b = ep;
    uint8_t *q = p;
    kvt_le_put32(q, LANE_MAGIC);
    kvt_le_put64(q + 4, ep->lane_token);
    q[12] = (uint8_t)host_len;
    q[13] = (uint8_t)(host_len >> 8);
    memcpy(q + 14, w->host_id, host_len);
    q += 14 + host_len;
    kvt_le_put32(q, (uint32_t)w->addr_len);
    memcpy(q + 4, w->addr, w->addr_len);
    *hello_p = p;
    *len_p = len;
    return KVT_OK;
}

/* --- server: the hello --- */

typedef struct {
    uint64_t token;
    const char *host;
    size_t host_len;
    const void *addr;
    size_t addr_len;
} lane_offer_t;

static bool offer_parse(const uint8_t *p, size_t len, lane_offer_t *o)
{
    if (len < LANE_HELLO_FIXED || kvt_le_get32(p) != LANE_MAGIC)
        return false;
    o->token = kvt_le_get64(p + 4);
    o->host_len = (size_t)p[12] | (size_t)p[13] << 8;
    o->host = (const char *)p + 14;
    if (o->host_len > len - LANE_HELLO_FIXED)
        return false;
    const uint8_t *q = p + 14 + o->host_len;
    o->addr_len = kvt_le_get32(q);
    o->addr = q + 4;
    return o->token != 0 && o->addr_len > 0 && o->addr_len == len - LANE_HELLO_FIXED - o->host_len;
}

/* Open the lane to the offer's worker address: on success ep->lane is the
 * endpoint and every later send of ep goes there. */
static void lane_open(kvt_net_ep_t *ep, const lane_offer_t *o)
{
    kvt_net_worker_t *w = ep->worker;
    ucp_ep_params_t p;
    kvt_net_ep_params(ep, &p);
    p.field_mask |= UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    p.address = o->addr;
    ucp_ep_h lane;
    ucs_status_t us = ucp_ep_create(w->uw, &p, &lane);
    if (us != UCS_OK) {
        kvt_log_warn("net same-host lane not opened, client-server endpoint kept peer=%s cause=%s",
                     ep->peer, ucs_status_string(us));
        return;
    }
    ep->lane = lane;
    ep->lane_token = o->token;
    kvt_log_debug("net same-host lane opened peer=%s", ep->peer);
}

void kvt_net_lane_hello(kvt_net_ep_t *ep, const void *hello, size_t len)
{
    kvt_net_worker_t *w = ep->worker;
    if (!ep->alive || ep->closing || ep->hello_acked)
        return; /* died meanwhile, or a second hello */
    ep->hello_acked = true; /* answered once */
    lane_offer_t o;
    if (len && !offer_parse(hello, len, &o))
        kvt_log_warn("net hello with a malformed lane offer, ignored peer=%s len=%zu", ep->peer,
                     len);
    else if (len && o.host_len == strlen(w->host_id) && memcmp(o.host, w->host_id, o.host_len) == 0)
        lane_open(ep, &o);
    (void)kvt_net_am_send(ep, NET_AM_CTRL, 0, NET_CTRL_ACK, NULL, 0);
}
