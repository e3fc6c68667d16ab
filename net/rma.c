/* net RMA: memory registration, packed rkeys and batched gets (net.h).
 *
 * A packed rkey on the wire is our 16-byte frame {u32 magic "KVRK", u32 len,
 * u64 xxh3 of the UCX bytes} followed by the bytes of ucp_rkey_pack.  UCX's
 * unpack takes no length and trusts its input, so the frame is what lets
 * kvt_net_rkey_unpack refuse garbage (KVT_ERR_INVALID) before UCX reads it.
 *
 * Ownership: a registration owns its UCX memory handle and packed buffers,
 * not the memory.  In a batch, each op's slot is handed to UCX with its get
 * and belongs to UCX until the get's callback runs; UCX cannot cancel a
 * get, so at a timeout the endpoint is closed forcibly, which completes
 * every get still in flight before kvt_net_get_batch returns. */
#include "net/netInt.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/le.h"
#include "common/log.h"
#include "common/time.h"

#include <stdint.h>
#include <string.h>

#define RKEY_MAGIC 0x4b52564bu /* "KVRK" */
#define RKEY_HDR 16u
#define RKEY_MAX (64u << 10)   /* far above any real packed rkey */

kvt_status_t kvt_net_mem_register(kvt_net_worker_t *w, void *addr, size_t len,
                                  kvt_net_mem_t **mem_p)
{
    if (!w || !addr || !len || !mem_p)
        return KVT_ERR_INVALID;
    kvt_net_mem_t *m = kvt_calloc("net mem", 1, sizeof(*m));
    if (!m)
        return KVT_ERR_NOMEM;
    m->worker = w;
    ucp_mem_map_params_t mp = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                                             UCP_MEM_MAP_PARAM_FIELD_LENGTH,
                               .address = addr,
                               .length = len};
    ucs_status_t us = ucp_mem_map(w->ctx, &mp, &m->memh);
    if (us != UCS_OK) {
        kvt_log_error("net mem register failed len=%zu cause=%s", len, ucs_status_string(us));
        kvt_free(m);
        return kvt_net_status(us) == KVT_ERR_NOMEM ? KVT_ERR_NOMEM : KVT_ERR_IO;
    }
    size_t rlen = 0;
    us = ucp_rkey_pack(w->ctx, m->memh, &m->ucx_rkey, &rlen);
    if (us != UCS_OK || rlen > RKEY_MAX) {
        kvt_log_error("net rkey pack failed len=%zu cause=%s", rlen, ucs_status_string(us));
        goto err_unmap;
    }
    m->packed_len = RKEY_HDR + rlen;
    m->packed = kvt_malloc("net rkey", m->packed_len);
    if (!m->packed)
        goto err_release;
    kvt_le_put32(m->packed, RKEY_MAGIC);
    kvt_le_put32(m->packed + 4, (uint32_t)rlen);
    kvt_le_put64(m->packed + 8, kvt_xxh3_64(m->ucx_rkey, rlen));
    memcpy(m->packed + RKEY_HDR, m->ucx_rkey, rlen);
    m->next = w->mems;
    if (w->mems)
        w->mems->prev = m;
    w->mems = m;
    *mem_p = m;
    return KVT_OK;

err_release:
    ucp_rkey_buffer_release(m->ucx_rkey);
err_unmap:
    ucp_mem_unmap(w->ctx, m->memh);
    kvt_free(m);
    return KVT_ERR_IO;
}

void kvt_net_mem_deregister(kvt_net_mem_t *m)
{
    if (!m)
        return;
    kvt_net_worker_t *w = m->worker;
    if (m->prev)
        m->prev->next = m->next;
    else
        w->mems = m->next;
    if (m->next)
        m->next->prev = m->prev;
    kvt_free(m->packed);
    ucp_rkey_buffer_release(m->ucx_rkey);
    ucs_status_t us = ucp_mem_unmap(w->ctx, m->memh);
    if (us != UCS_OK)
        kvt_log_warn("net mem deregister failed cause=%s", ucs_status_string(us));
    kvt_free(m);
}

void kvt_net_mem_destroy_all(kvt_net_worker_t *w)
{
    if (w->mems)
        kvt_log_warn("net worker destroyed with memory still registered");
    while (w->mems)
        kvt_net_mem_deregister(w->mems);
}

const void *kvt_net_mem_rkey(const kvt_net_mem_t *m, size_t *len_p)
{
    *len_p = m->packed_len;
    return m->packed;
}

kvt_status_t kvt_net_rkey_unpack(kvt_net_ep_t *ep, const void *packed, size_t len,
                                 kvt_net_rkey_t **rkey_p)
{
    const uint8_t *p = packed;
    if (!ep || !rkey_p || !p || len < RKEY_HDR || len > RKEY_HDR + RKEY_MAX)
        return KVT_ERR_INVALID;
    uint32_t rlen = kvt_le_get32(p + 4);
    if (kvt_le_get32(p) != RKEY_MAGIC || (size_t)rlen != len - RKEY_HDR ||
        kvt_le_get64(p + 8) != kvt_xxh3_64(p + RKEY_HDR, rlen)) {
        kvt_log_warn("net rkey refused, bad frame peer=%s len=%zu", ep->peer, len);
        return KVT_ERR_INVALID;
    }
    if (!kvt_net_ep_alive(ep))
        return KVT_ERR_CLOSED;
    kvt_net_rkey_t *rk = kvt_calloc("net rkey", 1, sizeof(*rk));
    if (!rk)
        return KVT_ERR_NOMEM;
    ucs_status_t us = ucp_ep_rkey_unpack(ep->uep, p + RKEY_HDR, &rk->rkey);
    if (us != UCS_OK) {
        kvt_log_warn("net rkey unpack failed peer=%s cause=%s", ep->peer, ucs_status_string(us));
        kvt_free(rk);
        return KVT_ERR_INVALID;
    }
    *rkey_p = rk;
    return KVT_OK;
}

void kvt_net_rkey_destroy(kvt_net_rkey_t *rk)
{
    if (!rk)
        return;
    ucp_rkey_destroy(rk->rkey);
    kvt_free(rk);
}

/* --- batched gets --- */

typedef struct {
    kvt_net_get_t *ops;
    size_t n_pending;
    bool timed_out;   /* statuses already final: callbacks only count */
} net_batch_t;

typedef struct {
    net_batch_t *batch;
    size_t idx;
} net_get_slot_t;

static void get_done(void *request, ucs_status_t status, void *user_data)
{
    net_get_slot_t *slot = user_data;
    net_batch_t *b = slot->batch;
    if (!b->timed_out)
        b->ops[slot->idx].status = kvt_net_status(status);
    b->n_pending--;
    ucp_request_free(request);
}

static void batch_issue(kvt_net_ep_t *ep, kvt_net_rkey_t *rk, net_batch_t *b,
                        net_get_slot_t *slots, size_t n_ops)
{
    for (size_t i = 0; i < n_ops; i++) {
        kvt_net_get_t *op = &b->ops[i];
        if (!kvt_net_ep_alive(ep)) {
            op->status = KVT_ERR_CLOSED;
            continue;
        }
        slots[i] = (net_get_slot_t){.batch = b, .idx = i};
        ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                                   UCP_OP_ATTR_FIELD_USER_DATA,
                                   .cb.send = get_done,
                                   .user_data = &slots[i]};
        op->status = KVT_ERR_BUSY; /* in flight */
        void *req = ucp_get_nbx(ep->uep, op->local, op->len, op->remote_addr, rk->rkey, &prm);
        if (req == NULL) {
            op->status = KVT_OK;
        } else if (UCS_PTR_IS_ERR(req)) {
            op->status = kvt_net_status(UCS_PTR_STATUS(req));
            kvt_log_warn("net get failed peer=%s len=%zu cause=%s", ep->peer, op->len,
                         ucs_status_string(UCS_PTR_STATUS(req)));
        } else {
            b->n_pending++;
        }
    }
}

/* Timeout: the reads cannot be cancelled, so force the endpoint closed and
 * wait until every callback has run.  False if UCX still holds slots. */
static bool batch_abort(kvt_net_ep_t *ep, net_batch_t *b, size_t n_ops)
{
    b->timed_out = true;
    for (size_t i = 0; i < n_ops; i++)
        if (b->ops[i].status == KVT_ERR_BUSY)
            b->ops[i].status = KVT_ERR_AGAIN;
    kvt_log_warn("net get batch timed out, closing peer=%s in_flight=%zu", ep->peer,
                 b->n_pending);
    kvt_net_ep_force_close(ep);
    uint64_t deadline = kvt_time_ns() + NET_CLOSE_MS * 1000000ull;
    while (b->n_pending && kvt_time_ns() < deadline)
        kvt_net_step(ep->worker, deadline, false);
    if (b->n_pending) {
        kvt_log_error("net get batch left reads in flight after close peer=%s n=%zu", ep->peer,
                      b->n_pending);
        return false;
    }
    return true;
}

kvt_status_t kvt_net_get_batch(kvt_net_ep_t *ep, kvt_net_rkey_t *rk, kvt_net_get_t *ops,
                               size_t n_ops, int timeout_ms)
{
    if (!ep || !rk || (n_ops && !ops) || n_ops > SIZE_MAX / sizeof(net_get_slot_t) - 1)
        return KVT_ERR_INVALID;
    if (n_ops == 0)
        return KVT_OK;
    /* The batch lives with the slots: if UCX kept some after a failed abort,
     * their late callbacks still find it (and leave ops alone). */
    net_batch_t *b = kvt_malloc("net get batch", sizeof(*b) + n_ops * sizeof(net_get_slot_t));
    if (!b)
        return KVT_ERR_NOMEM;
    *b = (net_batch_t){.ops = ops};
    batch_issue(ep, rk, b, (net_get_slot_t *)(b + 1), n_ops);
    uint64_t deadline = kvt_time_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
    /* No user callbacks here (events stay queued), so ep cannot be closed
     * under us; peer failure completes the gets with errors. */
    while (b->n_pending && kvt_time_ns() < deadline)
        kvt_net_step(ep->worker, deadline, false);
    /* Past the deadline, a live peer gets a grace period to finish: on TCP,
     * UCX 1.13 emulates gets with messages, and a forced close while the
     * peer still has our gets queued can abort the peer inside UCX. */
    uint64_t grace = deadline + (uint64_t)KVT_NET_GET_GRACE_MS * 1000000ull;
    while (b->n_pending && ep->alive && kvt_time_ns() < grace)
        kvt_net_step(ep->worker, grace, false);
    if (b->n_pending && !batch_abort(ep, b, n_ops))
        return KVT_ERR_AGAIN; /* b leaks: UCX still holds slots in it */
    kvt_free(b);
    for (size_t i = 0; i < n_ops; i++) {
        if (ops[i].status != KVT_OK)
            return ops[i].status;
    }
    return KVT_OK;
}
