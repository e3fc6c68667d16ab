/* The coordinator's network thread (coordInt.h): nodes, the global index,
 * routing, requests in flight, retries. */
#include "coord/coordInt.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/time.h"
#include "decode/decode.h"
#include "proto/msg.h"

#include <stdio.h>
#include <string.h>

#define LOOP_WAIT_MS 20
#define NODE_SILENT_NS (5000ull * 1000000ull) /* five missed heartbeats */
#define NO_NODE_WAIT_NS (10000ull * 1000000ull) /* a request waits this long for nodes */
#define EP_HELLO ((void *)1)

static uint64_t now_ns(void) { return kvt_time_ns(); }

/* --- sending --- */

static kvt_status_t send_to(kvt_coord_t *c, int slot, kvt_msg_t *env)
{
    cnode_t *nd = &c->nodes[slot];
    if (!nd->alive || !nd->ep)
        return KVT_ERR_CLOSED;
    uint8_t *buf;
    size_t len;
    kvt_status_t st = kvt_msg_encode(env, &buf, &len);
    if (st == KVT_OK) {
        st = kvt_net_send(nd->ep, 0, 0, buf, len);
        kvt_free(buf);
    }
    return st;
}

static void send_cancel(kvt_coord_t *c, int slot, const char *id)
{
    if (slot < 0)
        return;
    Kvtier__Cancel m = KVTIER__CANCEL__INIT;
    m.request_id = (char *)id;
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_CANCEL;
    env.cancel = &m;
    (void)send_to(c, slot, &env);
}

/* --- requests in flight --- */

static void list_remove(kvt_coord_t *c, creq_t *r)
{
    for (creq_t **pp = &c->reqs; *pp; pp = &(*pp)->next_net)
        if (*pp == r) {
            *pp = r->next_net;
            return;
        }
}

static creq_t *find_req(kvt_coord_t *c, const char *id)
{
    for (creq_t *r = c->reqs; r; r = r->next_net)
        if (strcmp(r->id, id) == 0)
            return r;
    return NULL;
}

/* Undo the node counters of the current attempt. */
static void release_attempt(kvt_coord_t *c, creq_t *r, bool cancel_nodes)
{
    pthread_mutex_lock(&c->nodes_lock);
    if (r->state == R_PREFILL && r->prefill_node >= 0) {
        cnode_t *p = &c->nodes[r->prefill_node];
        p->queued_tokens = p->queued_tokens > r->n ? p->queued_tokens - r->n : 0;
    }
    if (r->state == R_DECODE && r->decode_node >= 0 && c->nodes[r->decode_node].decoding)
        c->nodes[r->decode_node].decoding--;
    pthread_mutex_unlock(&c->nodes_lock);
    if (cancel_nodes) {
        send_cancel(c, r->state == R_PREFILL ? r->prefill_node : -1, r->id);
        send_cancel(c, r->state == R_DECODE ? r->decode_node : -1, r->id);
    }
    r->prefill_node = r->decode_node = -1;
}

static void finish(kvt_coord_t *c, creq_t *r, const char *reason, unsigned err, const char *why)
{
    release_attempt(c, r, err != 0);
    r->state = R_DONE;
    list_remove(c, r);
    if (err)
        atomic_fetch_add(&c->m_errors, 1);
    kvt_creq_finish(r, reason, err, why);
    kvt_creq_unref(r);
}

/* Append token `pos` of the answer; false if a retry disagrees with what
 * the client has already (never serve a different answer). */
static bool deliver(kvt_coord_t *c, creq_t *r, uint32_t pos, uint32_t tok)
{
    bool ok = true;
    pthread_mutex_lock(&r->lock);
    if (pos < r->n_out) {
        ok = r->out[pos] == tok;
    } else if (pos == r->n_out && r->n_out < r->max_tokens) {
        if (r->n_out == r->cap_out) {
            size_t cap = r->cap_out ? 2 * r->cap_out : 64;
            uint32_t *o = kvt_realloc("coord tokens", r->out, cap * sizeof(*o));
            if (!o) {
                pthread_mutex_unlock(&r->lock);
                return false;
            }
            r->out = o;
            r->cap_out = cap;
        }
        r->out[r->n_out++] = tok;
        if (r->n_out == 1) {
            r->t_first = now_ns();
            atomic_fetch_add(&c->m_ttft_us_sum, (r->t_first - r->t_submit) / 1000);
            atomic_fetch_add(&c->m_ttft_count, 1);
        }
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    return ok;
}

static void dispatch(kvt_coord_t *c, creq_t *r);

/* The node failed this attempt (died, erred, timed out): try again
 * elsewhere while attempts and time are left. */
static void attempt_fail(kvt_coord_t *c, creq_t *r, const char *why)
{
    kvt_log_warn("request attempt failed id=%s attempt=%u state=%d why=\"%s\"", r->id,
                 r->attempts, (int)r->state, why);
    release_attempt(c, r, true);
    r->attempts++;
    if (r->attempts >= c->p.max_attempts || now_ns() >= r->deadline_ns) {
        char msg[256];
        snprintf(msg, sizeof(msg), "no node could serve the request (%s)", why);
        finish(c, r, NULL, 503, msg);
        return;
    }
    atomic_fetch_add(&c->m_retries, 1);
    r->state = R_NEW;
    dispatch(c, r);
}

static bool is_stop_id(const creq_t *r, uint32_t tok)
{
    for (size_t i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == tok)
            return true;
    return false;
}

/* --- routing --- */

static kvt_status_t chain_keys(kvt_coord_t *c, creq_t *r)
{
    if (r->keys && r->n_keys)
        return KVT_OK;
    kvt_block_key_t root;
    kvt_status_t st = kvt_block_key_root(c->fingerprint, r->tenant, strlen(r->tenant), &root);
    size_t max = r->n / c->block_tokens;
    kvt_free(r->keys);
    r->keys = kvt_calloc("coord keys", max + 1, sizeof(*r->keys));
    if (!r->keys)
        return KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = kvt_block_key_chain(&root, c->block_tokens, r->tokens, r->n, r->keys, max,
                                 &r->n_keys);
    return st;
}

static bool usable(const cnode_t *nd, const char *role)
{
    return nd->used && nd->alive && nd->registered && strcmp(nd->role, role) == 0;
}

static int pick_decode(kvt_coord_t *c, creq_t *r, const kvt_gindex_match_t *m)
{
    kvt_route_decode_node_t dn[NODE_MAX];
    for (int i = 0; i < NODE_MAX; i++) {
        const cnode_t *nd = &c->nodes[i];
        dn[i] = (kvt_route_decode_node_t){.usable = usable(nd, "decode")};
        if (!dn[i].usable)
            continue;
        dn[i].active = nd->decoding;
        dn[i].free_slots = nd->kv_slots > nd->decoding ? nd->kv_slots - nd->decoding : 0;
        dn[i].pool_prefix = m ? m[i].n_gpu : 0;
    }
    kvt_route_decode_t d;
    kvt_route_decode(&c->costs, dn, NODE_MAX, r->n_keys, 1, &d);
    kvt_log_debug("route decode id=%s node=%d pull_blocks=%u cost=%.1f", r->id, d.node,
                  d.pull_blocks, d.cost);
    return d.node;
}

static void fill_decode(kvt_coord_t *c, creq_t *r, Kvtier__DecodeRequest *m)
{
    m->request_id = r->id;
    m->tokens = r->tokens;
    m->n_tokens = r->n;
    m->max_tokens = r->max_tokens;
    m->temperature = r->temperature;
    m->top_p = r->top_p;
    m->seed = r->seed;
    m->tenant_salt = (ProtobufCBinaryData){strlen(r->tenant), (uint8_t *)r->tenant};
    m->cache = r->cache;
    m->first_token = KVT_DECODE_NO_FIRST_TOKEN;
}

static void send_decode(kvt_coord_t *c, creq_t *r, int slot, const Kvtier__PrefillResult *pr)
{
    Kvtier__DecodeRequest m = KVTIER__DECODE_REQUEST__INIT;
    fill_decode(c, r, &m);
    if (pr) {
        const cnode_t *p = &c->nodes[r->prefill_node];
        m.first_token = pr->first_token;
        m.first_draws = pr->first_draws;
        m.tail_tokens = pr->tail_tokens;
        m.peer = (char *)p->ucx;
        m.prefill_node = (char *)p->id;
        m.peer_blocks = pr->stored_blocks;
    }
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_DECODE_REQUEST;
    env.decode_request = &m;
    release_attempt(c, r, false);
    r->state = R_DECODE;
    r->decode_node = slot;
    r->pos = 0;
    r->attempt_deadline_ns = now_ns() + (uint64_t)c->p.attempt_timeout_ms * 1000000ull;
    pthread_mutex_lock(&c->nodes_lock);
    c->nodes[slot].decoding++;
    pthread_mutex_unlock(&c->nodes_lock);
    if (send_to(c, slot, &env) != KVT_OK)
        attempt_fail(c, r, "cannot send to the decode node");
}

static void send_prefill(kvt_coord_t *c, creq_t *r, const kvt_route_prefill_t *d)
{
    Kvtier__PrefillRequest m = KVTIER__PREFILL_REQUEST__INIT;
    m.request_id = r->id;
    m.tokens = r->tokens;
    m.n_tokens = r->n;
    m.tenant_salt = (ProtobufCBinaryData){strlen(r->tenant), (uint8_t *)r->tenant};
    m.max_tokens = r->max_tokens;
    m.temperature = r->temperature;
    m.top_p = r->top_p;
    m.seed = r->seed;
    m.cache = true;
    if (d->peer >= 0) {
        m.peer = c->nodes[d->peer].ucx;
        m.peer_blocks = d->reuse_blocks;
    }
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_PREFILL_REQUEST;
    env.prefill_request = &m;
    r->state = R_PREFILL;
    r->prefill_node = d->node;
    r->attempt_deadline_ns = now_ns() + (uint64_t)c->p.attempt_timeout_ms * 1000000ull;
    pthread_mutex_lock(&c->nodes_lock);
    c->nodes[d->node].queued_tokens += r->n;
    pthread_mutex_unlock(&c->nodes_lock);
    if (send_to(c, d->node, &env) != KVT_OK)
        attempt_fail(c, r, "cannot send to the prefill node");
}

static void route_prefill(kvt_coord_t *c, creq_t *r, const kvt_gindex_match_t *m,
                          kvt_route_prefill_t *d)
{
    kvt_route_prefill_node_t pn[NODE_MAX];
    for (int i = 0; i < NODE_MAX; i++) {
        const cnode_t *nd = &c->nodes[i];
        pn[i] = (kvt_route_prefill_node_t){.usable = usable(nd, "prefill"),
                                           .queued_tokens = nd->queued_tokens};
        /* Peers serve from their block server: prefill nodes only, alive. */
        if (usable(nd, "prefill") && nd->ucx[0])
            pn[i].local = m[i];
    }
    kvt_route_prefill(&c->costs, pn, NODE_MAX, r->n, c->block_tokens, d);
    char why[256];
    kvt_route_prefill_describe(d, why, sizeof(why));
    kvt_log_debug("route prefill id=%s tokens=%zu %s", r->id, r->n, why);
}

/* Send the request's next step to the nodes the index and loads favour. */
static void dispatch(kvt_coord_t *c, creq_t *r)
{
    uint64_t now = now_ns();
    if (now >= r->deadline_ns) {
        finish(c, r, NULL, 503, "request timed out");
        return;
    }
    bool have_nodes = c->have_fingerprint && kvt_coord_alive_nodes(c, "decode") > 0 &&
                      (!r->cache || kvt_coord_alive_nodes(c, "prefill") > 0);
    if (!have_nodes || chain_keys(c, r) != KVT_OK) {
        r->state = R_NEW; /* the sweep tries again until NO_NODE_WAIT_NS */
        if (!r->attempt_deadline_ns)
            r->attempt_deadline_ns = now + NO_NODE_WAIT_NS;
        return;
    }
    kvt_gindex_match_t *m = kvt_calloc("coord match", NODE_MAX, sizeof(*m));
    if (!m) {
        finish(c, r, NULL, 500, "out of memory");
        return;
    }
    kvt_gindex_match(c->gindex, r->keys, r->n_keys, m);
    if (!r->cache) {
        int d = pick_decode(c, r, NULL);
        if (d < 0)
            finish(c, r, NULL, 503, "no decode node has room");
        else
            send_decode(c, r, d, NULL);
    } else {
        kvt_route_prefill_t d;
        route_prefill(c, r, m, &d);
        if (d.node < 0)
            finish(c, r, NULL, 503, "no prefill node available");
        else
            send_prefill(c, r, &d);
    }
    kvt_free(m);
}

/* --- messages from nodes --- */

static void on_prefill_result(kvt_coord_t *c, int slot, const Kvtier__PrefillResult *pr)
{
    creq_t *r = find_req(c, pr->request_id);
    if (!r || r->state != R_PREFILL || r->prefill_node != slot)
        return; /* a late answer to an attempt given up */
    pthread_mutex_lock(&r->lock);
    r->cached_tokens = pr->cached_tokens;
    pthread_mutex_unlock(&r->lock);
    /* The first token reaches the client now (TTFT); the decode node's
     * stream starts with it again and is checked against it. */
    if (r->max_tokens > 0 && !is_stop_id(r, pr->first_token) &&
        !deliver(c, r, 0, pr->first_token)) {
        attempt_fail(c, r, "prefill node's first token differs from a previous attempt's");
        return;
    }
    kvt_gindex_match_t *m = kvt_calloc("coord match", NODE_MAX, sizeof(*m));
    if (m)
        kvt_gindex_match(c->gindex, r->keys, r->n_keys, m);
    int d = pick_decode(c, r, m);
    kvt_free(m);
    if (d < 0) {
        attempt_fail(c, r, "no decode node has room");
        return;
    }
    send_decode(c, r, d, pr);
}

static void on_tokens(kvt_coord_t *c, int slot, const Kvtier__TokenStream *ts)
{
    creq_t *r = find_req(c, ts->request_id);
    if (!r || r->state != R_DECODE || r->decode_node != slot)
        return;
    r->attempt_deadline_ns = now_ns() + (uint64_t)c->p.attempt_timeout_ms * 1000000ull;
    for (size_t i = 0; i < ts->n_tokens; i++) {
        if (!deliver(c, r, r->pos++, ts->tokens[i])) {
            finish(c, r, NULL, 500, "a retried attempt produced different tokens");
            return;
        }
    }
    if (!ts->done)
        return;
    if (strcmp(ts->finish_reason, "error") == 0)
        attempt_fail(c, r, ts->error[0] ? ts->error : "decode node failed");
    else
        finish(c, r, strcmp(ts->finish_reason, "stop") == 0 ? "stop" : "length", 0, NULL);
}

static void on_error(kvt_coord_t *c, int slot, const Kvtier__Error *e)
{
    kvt_log_warn("node error node=%s request=%s code=%u message=\"%s\"", c->nodes[slot].id,
                 e->request_id, e->code, e->message);
    creq_t *r = e->request_id[0] ? find_req(c, e->request_id) : NULL;
    if (r && ((r->state == R_PREFILL && r->prefill_node == slot) ||
              (r->state == R_DECODE && r->decode_node == slot)))
        attempt_fail(c, r, e->message);
}

/* --- membership --- */

static int slot_of(kvt_net_ep_t *ep)
{
    intptr_t u = (intptr_t)kvt_net_ep_user(ep);
    return u >= 2 ? (int)(u - 2) : -1;
}

static void on_hello(kvt_coord_t *c, kvt_net_ep_t *ep, const Kvtier__Hello *h)
{
    uint8_t fp[KVT_FINGERPRINT_LEN];
    if (strlen(h->model_fingerprint) != 2 * KVT_FINGERPRINT_LEN ||
        kvt_unhex(h->model_fingerprint, fp, sizeof(fp)) != KVT_OK) {
        kvt_log_warn("node refused: bad fingerprint node=%s", h->node_id);
        return;
    }
    pthread_mutex_lock(&c->nodes_lock);
    if (!c->have_fingerprint) {
        memcpy(c->fingerprint, fp, sizeof(fp));
        c->have_fingerprint = true;
    }
    bool same = memcmp(c->fingerprint, fp, sizeof(fp)) == 0;
    pthread_mutex_unlock(&c->nodes_lock);
    if (!same) {
        kvt_log_error("node refused: another model or KV layout node=%s fingerprint=%.16s",
                      h->node_id, h->model_fingerprint);
        return;
    }
    kvt_net_ep_set_user(ep, EP_HELLO);
}

static int find_slot(kvt_coord_t *c, const char *node_id)
{
    int free_slot = -1;
    for (int i = 0; i < NODE_MAX; i++) {
        if (c->nodes[i].used && strcmp(c->nodes[i].id, node_id) == 0)
            return i;
        if (!c->nodes[i].used && free_slot < 0)
            free_slot = i;
    }
    return free_slot;
}

static void node_dead(kvt_coord_t *c, int slot, const char *why);

static void on_register(kvt_coord_t *c, kvt_net_ep_t *ep, const Kvtier__NodeRegister *m)
{
    if (kvt_net_ep_user(ep) != EP_HELLO)
        return; /* no Hello, or a refused one */
    bool role_ok = strcmp(m->role, "prefill") == 0 || strcmp(m->role, "decode") == 0;
    int slot = find_slot(c, m->node_id);
    if (!role_ok || slot < 0 || m->block_tokens == 0 ||
        (c->block_tokens && m->block_tokens != c->block_tokens)) {
        kvt_log_error("node refused node=%s role=%s slot=%d block_tokens=%u", m->node_id,
                      m->role, slot, m->block_tokens);
        return;
    }
    if (c->nodes[slot].used && c->nodes[slot].alive && c->nodes[slot].ep != ep)
        node_dead(c, slot, "replaced by a new connection");
    pthread_mutex_lock(&c->nodes_lock);
    cnode_t *nd = &c->nodes[slot];
    *nd = (cnode_t){.used = true, .alive = true, .registered = true, .ep = ep,
                    .block_tokens = m->block_tokens, .kv_slots = m->kv_slots ? m->kv_slots : 1,
                    .last_seen_ns = now_ns()};
    snprintf(nd->id, sizeof(nd->id), "%s", m->node_id);
    snprintf(nd->role, sizeof(nd->role), "%s", m->role);
    snprintf(nd->ucx, sizeof(nd->ucx), "%s", m->ucx_address);
    snprintf(nd->device, sizeof(nd->device), "%s", m->device);
    c->block_tokens = m->block_tokens;
    pthread_mutex_unlock(&c->nodes_lock);
    kvt_net_ep_set_user(ep, (void *)(intptr_t)(slot + 2));
    kvt_log_info("node registered node=%s role=%s slot=%d blocks=%s device=%s", nd->id, nd->role,
                 slot, nd->ucx, nd->device);
}

static kvt_tier_id_t tier_of(Kvtier__Tier t)
{
    return t == KVTIER__TIER__TIER_GPU ? KVT_TIER_GPU
         : t == KVTIER__TIER__TIER_HOST ? KVT_TIER_HOST : KVT_TIER_DISK;
}

static void on_events(kvt_coord_t *c, int slot, bool snapshot, uint64_t seq,
                      Kvtier__KvEvent **ev, size_t n)
{
    kvt_gindex_event_t *ge = kvt_calloc("coord events", n ? n : 1, sizeof(*ge));
    if (!ge)
        return;
    for (size_t i = 0; i < n; i++) {
        ge[i].kind = ev[i]->kind == KVTIER__KV_EVENT__KIND__STORED    ? KVT_EVENT_STORED
                   : ev[i]->kind == KVTIER__KV_EVENT__KIND__EVICTED ? KVT_EVENT_EVICTED
                                                                      : KVT_EVENT_DROPPED;
        ge[i].tier = tier_of(ev[i]->tier);
        memcpy(ge[i].key.b, ev[i]->key.data, KVT_KEY_LEN);
    }
    kvt_status_t st = snapshot ? kvt_gindex_snapshot(c->gindex, (uint32_t)slot, seq, ge, n)
                               : kvt_gindex_delta(c->gindex, (uint32_t)slot, seq, ge, n);
    kvt_free(ge);
    if (st == KVT_ERR_AGAIN) { /* a gap: ask for the whole state again */
        Kvtier__SnapshotRequest sr = KVTIER__SNAPSHOT_REQUEST__INIT;
        kvt_msg_t env = KVTIER__ENVELOPE__INIT;
        env.body_case = KVTIER__ENVELOPE__BODY_SNAPSHOT_REQUEST;
        env.snapshot_request = &sr;
        kvt_log_info("kv event gap, asking for a snapshot node=%s seq=%llu", c->nodes[slot].id,
                     (unsigned long long)seq);
        (void)send_to(c, slot, &env);
    }
}

static void on_heartbeat(kvt_coord_t *c, int slot, const Kvtier__Heartbeat *hb)
{
    pthread_mutex_lock(&c->nodes_lock);
    cnode_t *nd = &c->nodes[slot];
    nd->hb_active = hb->active_sequences;
    nd->hb_free = hb->free_kv_slots;
    nd->hb_queued = hb->queued_requests;
    pthread_mutex_unlock(&c->nodes_lock);
}

static void on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                   size_t len, void *arg)
{
    (void)req_id, (void)flags;
    kvt_coord_t *c = arg;
    kvt_msg_t *m;
    kvt_status_t st = kvt_msg_decode(data, len, &m);
    if (st != KVT_OK) {
        kvt_log_warn("coordinator drops a bad message peer=%s err=%s", kvt_net_ep_peer(ep),
                     kvt_status_str(st));
        return;
    }
    int slot = slot_of(ep);
    if (slot >= 0)
        c->nodes[slot].last_seen_ns = now_ns();
    switch (m->body_case) {
    case KVTIER__ENVELOPE__BODY_HELLO: on_hello(c, ep, m->hello); break;
    case KVTIER__ENVELOPE__BODY_NODE_REGISTER: on_register(c, ep, m->node_register); break;
    default:
        if (slot < 0) {
            kvt_log_debug("message from an unregistered peer dropped body=%s",
                          kvt_msg_body_name(m->body_case));
            break;
        }
        switch (m->body_case) {
        case KVTIER__ENVELOPE__BODY_HEARTBEAT: on_heartbeat(c, slot, m->heartbeat); break;
        case KVTIER__ENVELOPE__BODY_KV_SNAPSHOT:
            on_events(c, slot, true, m->kv_snapshot->seq, m->kv_snapshot->blocks,
                      m->kv_snapshot->n_blocks);
            break;
        case KVTIER__ENVELOPE__BODY_KV_DELTA:
            on_events(c, slot, false, m->kv_delta->seq, m->kv_delta->events,
                      m->kv_delta->n_events);
            break;
        case KVTIER__ENVELOPE__BODY_PREFILL_RESULT: on_prefill_result(c, slot, m->prefill_result); break;
        case KVTIER__ENVELOPE__BODY_TOKEN_STREAM: on_tokens(c, slot, m->token_stream); break;
        case KVTIER__ENVELOPE__BODY_ERROR: on_error(c, slot, m->error); break;
        default: break;
        }
    }
    kvt_msg_free(m);
}

/* Every request the node was working on is retried elsewhere. */
static void node_dead(kvt_coord_t *c, int slot, const char *why)
{
    cnode_t *nd = &c->nodes[slot];
    if (!nd->alive)
        return;
    kvt_log_warn("node lost node=%s role=%s why=\"%s\"", nd->id, nd->role, why);
    atomic_fetch_add(&c->m_node_deaths, 1);
    pthread_mutex_lock(&c->nodes_lock);
    nd->alive = false;
    pthread_mutex_unlock(&c->nodes_lock);
    kvt_gindex_drop_node(c->gindex, (uint32_t)slot);
    for (creq_t *r = c->reqs, *next; r; r = next) {
        next = r->next_net;
        if ((r->state == R_PREFILL && r->prefill_node == slot) ||
            (r->state == R_DECODE && r->decode_node == slot))
            attempt_fail(c, r, why);
    }
    if (nd->ep) {
        kvt_net_ep_set_user(nd->ep, NULL);
        kvt_net_ep_close(nd->ep);
        nd->ep = NULL;
    }
}

static void on_conn(kvt_net_ep_t *ep, bool up, void *arg)
{
    kvt_coord_t *c = arg;
    if (up)
        return;
    int slot = slot_of(ep);
    if (slot >= 0 && c->nodes[slot].ep == ep)
        node_dead(c, slot, "connection lost");
    else
        kvt_net_ep_close(ep);
}

/* --- the loop --- */

static void sweep(kvt_coord_t *c)
{
    uint64_t now = now_ns();
    for (int i = 0; i < NODE_MAX; i++)
        if (c->nodes[i].alive && now - c->nodes[i].last_seen_ns > NODE_SILENT_NS)
            node_dead(c, i, "no heartbeat");
    for (creq_t *r = c->reqs, *next; r; r = next) {
        next = r->next_net;
        if (r->state == R_NEW) {
            if (now >= r->attempt_deadline_ns || now >= r->deadline_ns)
                finish(c, r, NULL, 503, "no prefill and decode nodes are available");
            else
                dispatch(c, r);
        } else if (now >= r->attempt_deadline_ns) {
            attempt_fail(c, r, "node timed out");
        }
    }
}

static void take_inbox(kvt_coord_t *c)
{
    for (creq_t *r; (r = kvt_queue_pop(c->inbox, 0));) {
        r->next_net = c->reqs;
        c->reqs = r;
        r->prefill_node = r->decode_node = -1;
        dispatch(c, r);
    }
    for (creq_t *r; (r = kvt_queue_pop(c->cancels, 0));) {
        if (r->state != R_DONE && find_req(c, r->id) == r)
            finish(c, r, "cancelled", 0, NULL);
        kvt_creq_unref(r);
    }
}

static void *net_main(void *arg)
{
    kvt_coord_t *c = arg;
    uint64_t next_sweep = 0;
    while (!atomic_load(&c->stop)) {
        kvt_net_worker_wait(c->worker, LOOP_WAIT_MS);
        take_inbox(c);
        if (now_ns() >= next_sweep) {
            sweep(c);
            next_sweep = now_ns() + 100000000ull;
        }
    }
    take_inbox(c);
    while (c->reqs)
        finish(c, c->reqs, NULL, 503, "coordinator stopping");
    return NULL;
}

/* --- public (coordInt.h) --- */

kvt_status_t kvt_coord_submit(kvt_coord_t *c, creq_t *r)
{
    if (atomic_load(&c->stop))
        return KVT_ERR_CLOSED;
    pthread_mutex_lock(&r->lock);
    r->refs++;
    pthread_mutex_unlock(&r->lock);
    kvt_status_t st = kvt_queue_push(c->inbox, r);
    if (st != KVT_OK)
        kvt_creq_unref(r);
    else
        kvt_net_worker_signal(c->worker);
    return st;
}

void kvt_coord_cancel(kvt_coord_t *c, creq_t *r)
{
    pthread_mutex_lock(&r->lock);
    r->refs++;
    r->cancel = true;
    pthread_mutex_unlock(&r->lock);
    if (kvt_queue_push(c->cancels, r) != KVT_OK)
        kvt_creq_unref(r);
    else
        kvt_net_worker_signal(c->worker);
}

size_t kvt_coord_alive_nodes(kvt_coord_t *c, const char *role)
{
    size_t n = 0;
    pthread_mutex_lock(&c->nodes_lock);
    for (int i = 0; i < NODE_MAX; i++)
        n += usable(&c->nodes[i], role);
    pthread_mutex_unlock(&c->nodes_lock);
    return n;
}

kvt_status_t kvt_coord_net_start(kvt_coord_t *c)
{
    kvt_net_worker_params_t wp = {.max_msg_bytes = KVT_PROTO_MAX_MSG, .on_msg = on_msg,
                                  .on_conn = on_conn, .arg = c};
    kvt_status_t st = kvt_net_worker_create(&wp, &c->worker);
    if (st == KVT_OK)
        st = kvt_net_listen(c->worker, c->p.listen, &c->listener);
    if (st == KVT_OK)
        st = kvt_queue_create(65536, &c->inbox);
    if (st == KVT_OK)
        st = kvt_queue_create(65536, &c->cancels);
    if (st == KVT_OK)
        st = kvt_gindex_create(1u << 24, &c->gindex);
    if (st != KVT_OK)
        return st;
    kvt_route_costs_default(&c->costs, false);
    if (pthread_create(&c->thread, NULL, net_main, c) != 0)
        return KVT_ERR_NOMEM;
    c->started = true;
    return KVT_OK;
}

void kvt_coord_net_stop(kvt_coord_t *c)
{
    if (c->started) {
        atomic_store(&c->stop, true);
        kvt_net_worker_signal(c->worker);
        pthread_join(c->thread, NULL);
        c->started = false;
    }
    for (creq_t *r; c->inbox && (r = kvt_queue_pop(c->inbox, 0));) {
        kvt_creq_finish(r, NULL, 503, "coordinator stopping");
        kvt_creq_unref(r);
    }
    for (creq_t *r; c->cancels && (r = kvt_queue_pop(c->cancels, 0));)
        kvt_creq_unref(r);
}

void kvt_coord_net_free(kvt_coord_t *c)
{
    kvt_coord_net_stop(c); /* what came in since */
    if (c->listener)
        kvt_net_listener_destroy(c->listener);
    if (c->worker)
        kvt_net_worker_destroy(c->worker);
    kvt_queue_destroy(c->inbox);
    kvt_queue_destroy(c->cancels);
    kvt_gindex_destroy(c->gindex);
}
