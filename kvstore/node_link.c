/* The node's link to the coordinator (node_link.h): one thread, one UCX
 * worker, one endpoint.  Other threads only touch the mirror, the pending
 * events and the outbox, all under `lock`, then signal the worker. */
#include "kvstore/node_link.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/time.h"
#include "kvstore/keymap.h"
#include "net/net.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define CHUNK_EVENTS 16384        /* events per snapshot/delta message (~1.3 MB) */
#define DELTA_DELAY_NS 20000000ull /* batch events this long before a delta */
#define OUTBOX_MAX_BYTES (64u << 20)
#define PENDING_MAX (1u << 22)    /* beyond this, resnapshot instead */
#define CONNECT_TIMEOUT_MS 2000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

typedef struct out_msg {
    struct out_msg *next;
    size_t len;
    uint8_t data[];
} out_msg_t;

typedef struct {
    kvt_event_kind_t kind;
    kvt_tier_id_t tier;
    kvt_block_key_t key;
} pending_t;

struct kvt_node_link {
    kvt_node_link_params_t p;
    char *coord, *node_id, *role, *ucx_address, *http_address, *device;

    pthread_mutex_t lock;         /* mirror, pending, outbox, stats */
    kvt_keymap_t mirror;          /* key -> bitmask of tiers (1 << kvt_tier_id_t) */
    pending_t *pending;
    size_t n_pending, cap_pending;
    bool pending_overflow;        /* too many events queued: resnapshot */
    out_msg_t *out_head, *out_tail;
    size_t out_bytes;
    kvt_node_link_stats_t stats;

    /* link thread only */
    kvt_net_worker_t *worker;
    kvt_net_ep_t *ep;
    bool ep_dead;
    uint64_t seq;                 /* last snapshot/delta sequence number sent */
    uint64_t hb_seq, next_hb_ns, first_pending_ns;

    atomic_bool connected, stop, snapshot_wanted;
    pthread_t thread;
    bool started;
};

/* --- the mirror and pending events (any thread) --- */

static void pending_push(kvt_node_link_t *l, kvt_event_kind_t kind, kvt_tier_id_t tier,
                         const kvt_block_key_t *key)
{
    if (!atomic_load(&l->connected) || l->pending_overflow)
        return; /* a snapshot follows the next (re)connect or overflow */
    if (l->n_pending == l->cap_pending) {
        size_t cap = l->cap_pending ? 2 * l->cap_pending : 1024;
        pending_t *np = cap <= PENDING_MAX ? kvt_realloc("node link events", l->pending,
                                                         cap * sizeof(*np))
                                           : NULL;
        if (!np) {
            l->pending_overflow = true;
            l->n_pending = 0;
            return;
        }
        l->pending = np;
        l->cap_pending = cap;
    }
    if (l->n_pending == 0)
        l->first_pending_ns = kvt_time_ns();
    l->pending[l->n_pending++] = (pending_t){kind, tier, *key};
}

void kvt_node_link_event(const kvt_block_event_t *ev, void *arg)
{
    kvt_node_link_t *l = arg;
    if (ev->tier < KVT_TIER_GPU || ev->tier > KVT_TIER_DISK)
        return;
    uint32_t bit = 1u << ev->tier, mask = 0;
    pthread_mutex_lock(&l->lock);
    bool had = kvt_keymap_get(&l->mirror, &ev->key, &mask);
    if (ev->kind == KVT_EVENT_STORED) {
        mask |= bit;
        if (kvt_keymap_put(&l->mirror, &ev->key, mask) != KVT_OK)
            l->pending_overflow = true; /* out of memory: the next snapshot says less */
    } else if (had) {
        mask &= ~bit;
        if (mask)
            (void)kvt_keymap_put(&l->mirror, &ev->key, mask); /* overwrite: no growth */
        else
            kvt_keymap_del(&l->mirror, &ev->key);
    }
    pending_push(l, ev->kind, ev->tier, &ev->key);
    l->stats.events++;
    pthread_mutex_unlock(&l->lock);
    if (l->worker)
        kvt_net_worker_signal(l->worker);
}

/* --- outbox --- */

static kvt_status_t outbox_push_locked(kvt_node_link_t *l, const uint8_t *buf, size_t len)
{
    if (l->out_bytes + len > OUTBOX_MAX_BYTES)
        return KVT_ERR_FULL;
    out_msg_t *m = kvt_malloc("node link message", sizeof(*m) + len);
    if (!m)
        return KVT_ERR_NOMEM;
    m->next = NULL;
    m->len = len;
    memcpy(m->data, buf, len);
    if (l->out_tail)
        l->out_tail->next = m;
    else
        l->out_head = m;
    l->out_tail = m;
    l->out_bytes += len;
    return KVT_OK;
}

static void outbox_clear_locked(kvt_node_link_t *l)
{
    while (l->out_head) {
        out_msg_t *m = l->out_head;
        l->out_head = m->next;
        kvt_free(m);
    }
    l->out_tail = NULL;
    l->out_bytes = 0;
}

kvt_status_t kvt_node_link_send(kvt_node_link_t *l, kvt_msg_t *msg)
{
    uint8_t *buf;
    size_t len;
    if (!atomic_load(&l->connected))
        return KVT_ERR_CLOSED;
    kvt_status_t st = kvt_msg_encode(msg, &buf, &len);
    if (st != KVT_OK)
        return st;
    pthread_mutex_lock(&l->lock);
    st = atomic_load(&l->connected) ? outbox_push_locked(l, buf, len) : KVT_ERR_CLOSED;
    pthread_mutex_unlock(&l->lock);
    kvt_free(buf);
    if (st == KVT_OK)
        kvt_net_worker_signal(l->worker);
    return st;
}

bool kvt_node_link_connected(kvt_node_link_t *l) { return atomic_load(&l->connected); }

kvt_status_t kvt_node_link_send_error(kvt_node_link_t *l, const char *request_id,
                                      kvt_status_t code, const char *message)
{
    Kvtier__Error err = KVTIER__ERROR__INIT;
    err.code = (uint32_t)-(int64_t)code;
    err.message = (char *)message;
    err.request_id = (char *)request_id;
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_ERROR;
    env.error = &err;
    return kvt_node_link_send(l, &env);
}

void kvt_node_link_stats(kvt_node_link_t *l, kvt_node_link_stats_t *stats_p)
{
    pthread_mutex_lock(&l->lock);
    *stats_p = l->stats;
    stats_p->mirror_blocks = l->mirror.count;
    pthread_mutex_unlock(&l->lock);
}

/* --- sending (link thread) --- */

static kvt_status_t send_env(kvt_node_link_t *l, kvt_msg_t *env)
{
    uint8_t *buf;
    size_t len;
    kvt_status_t st = kvt_msg_encode(env, &buf, &len);
    if (st != KVT_OK)
        return st;
    st = kvt_net_send(l->ep, 0, 0, buf, len);
    kvt_free(buf);
    if (st == KVT_OK) {
        pthread_mutex_lock(&l->lock);
        l->stats.sent++;
        pthread_mutex_unlock(&l->lock);
    }
    return st;
}

static Kvtier__Tier tier_to_proto(kvt_tier_id_t t)
{
    return t == KVT_TIER_GPU ? KVTIER__TIER__TIER_GPU
         : t == KVT_TIER_HOST ? KVTIER__TIER__TIER_HOST : KVTIER__TIER__TIER_DISK;
}

static Kvtier__KvEvent__Kind kind_to_proto(kvt_event_kind_t k)
{
    return k == KVT_EVENT_STORED ? KVTIER__KV_EVENT__KIND__STORED
         : k == KVT_EVENT_EVICTED ? KVTIER__KV_EVENT__KIND__EVICTED
                                  : KVTIER__KV_EVENT__KIND__DROPPED;
}

static const uint8_t g_zero_key[KVT_KEY_LEN];

/* One snapshot (first = true) or delta message of events[0..n). */
static kvt_status_t send_events(kvt_node_link_t *l, bool snapshot, const pending_t *ev, size_t n)
{
    Kvtier__KvEvent *items = kvt_calloc("node link events", n ? n : 1, sizeof(*items));
    Kvtier__KvEvent **ptrs = kvt_calloc("node link events", n ? n : 1, sizeof(*ptrs));
    kvt_status_t st = KVT_ERR_NOMEM;
    if (!items || !ptrs)
        goto out;
    for (size_t i = 0; i < n; i++) {
        kvtier__kv_event__init(&items[i]);
        items[i].kind = kind_to_proto(ev[i].kind);
        items[i].tier = tier_to_proto(ev[i].tier);
        items[i].key = (ProtobufCBinaryData){KVT_KEY_LEN, (uint8_t *)ev[i].key.b};
        items[i].parent = (ProtobufCBinaryData){KVT_KEY_LEN, (uint8_t *)g_zero_key};
        ptrs[i] = &items[i];
    }
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    Kvtier__KvEventSnapshot snap = KVTIER__KV_EVENT_SNAPSHOT__INIT;
    Kvtier__KvEventDelta delta = KVTIER__KV_EVENT_DELTA__INIT;
    l->seq++;
    if (snapshot) {
        snap.node_id = l->node_id;
        snap.seq = l->seq;
        snap.n_blocks = n;
        snap.blocks = ptrs;
        env.body_case = KVTIER__ENVELOPE__BODY_KV_SNAPSHOT;
        env.kv_snapshot = &snap;
    } else {
        delta.node_id = l->node_id;
        delta.seq = l->seq;
        delta.n_events = n;
        delta.events = ptrs;
        env.body_case = KVTIER__ENVELOPE__BODY_KV_DELTA;
        env.kv_delta = &delta;
    }
    st = send_env(l, &env);
out:
    kvt_free(items);
    kvt_free(ptrs);
    return st;
}

typedef struct {
    pending_t *ev;
    size_t n;
} dump_t;

static void dump_one(const kvt_block_key_t *key, uint32_t mask, void *arg)
{
    dump_t *d = arg;
    for (int t = KVT_TIER_GPU; t <= KVT_TIER_DISK; t++)
        if (mask & (1u << t))
            d->ev[d->n++] = (pending_t){KVT_EVENT_STORED, (kvt_tier_id_t)t, *key};
}

/* The mirror as a snapshot (its first chunk) plus deltas of STORED events;
 * the pending events are dropped (the snapshot covers them). */
static kvt_status_t send_snapshot(kvt_node_link_t *l)
{
    pthread_mutex_lock(&l->lock);
    dump_t d = {kvt_calloc("node link snapshot", (size_t)l->mirror.count * 3 + 1,
                           sizeof(pending_t)), 0};
    if (d.ev)
        kvt_keymap_foreach(&l->mirror, dump_one, &d);
    l->n_pending = 0;
    l->pending_overflow = false;
    l->stats.snapshots++;
    pthread_mutex_unlock(&l->lock);
    if (!d.ev)
        return KVT_ERR_NOMEM;
    kvt_status_t st = KVT_OK;
    for (size_t at = 0; st == KVT_OK && (at < d.n || at == 0); at += CHUNK_EVENTS) {
        size_t n = d.n - at < CHUNK_EVENTS ? d.n - at : CHUNK_EVENTS;
        st = send_events(l, at == 0, d.ev + at, n);
        if (d.n == 0)
            break;
    }
    kvt_log_debug("node link snapshot sent blocks=%zu seq=%llu", d.n, (unsigned long long)l->seq);
    kvt_free(d.ev);
    return st;
}

static kvt_status_t flush_pending(kvt_node_link_t *l, bool force)
{
    pthread_mutex_lock(&l->lock);
    bool overflow = l->pending_overflow;
    size_t n = l->n_pending;
    bool due = n && (force || n >= CHUNK_EVENTS ||
                     kvt_time_ns() - l->first_pending_ns >= DELTA_DELAY_NS);
    pending_t *ev = NULL;
    if (!overflow && due) {
        ev = l->pending;
        l->pending = NULL;
        l->n_pending = l->cap_pending = 0;
        l->stats.deltas++;
    }
    pthread_mutex_unlock(&l->lock);
    if (overflow)
        return send_snapshot(l);
    kvt_status_t st = KVT_OK;
    for (size_t at = 0; ev && st == KVT_OK && at < n; at += CHUNK_EVENTS)
        st = send_events(l, false, ev + at, n - at < CHUNK_EVENTS ? n - at : CHUNK_EVENTS);
    kvt_free(ev);
    return st;
}

static kvt_status_t flush_outbox(kvt_node_link_t *l)
{
    pthread_mutex_lock(&l->lock);
    out_msg_t *m = l->out_head;
    l->out_head = l->out_tail = NULL;
    l->out_bytes = 0;
    pthread_mutex_unlock(&l->lock);
    kvt_status_t st = KVT_OK;
    while (m) {
        out_msg_t *next = m->next;
        if (st == KVT_OK)
            st = kvt_net_send(l->ep, 0, 0, m->data, m->len);
        kvt_free(m);
        m = next;
    }
    return st;
}

static kvt_status_t send_heartbeat(kvt_node_link_t *l)
{
    kvt_node_load_t load = {0};
    if (l->p.load)
        l->p.load(&load, l->p.arg);
    Kvtier__Heartbeat hb = KVTIER__HEARTBEAT__INIT;
    hb.node_id = l->node_id;
    hb.seq = ++l->hb_seq;
    hb.active_sequences = load.active;
    hb.free_kv_slots = load.free_slots;
    hb.queued_requests = load.queued;
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    pthread_mutex_lock(&l->lock);
    l->stats.heartbeats++;
    pthread_mutex_unlock(&l->lock);
    return send_env(l, &env);
}

static kvt_status_t send_hello(kvt_node_link_t *l)
{
    char fp[2 * KVT_FINGERPRINT_LEN + 1];
    kvt_hex(l->p.fingerprint, KVT_FINGERPRINT_LEN, fp);
    Kvtier__Hello hello = KVTIER__HELLO__INIT;
    hello.node_id = l->node_id;
    hello.role = l->role;
    hello.model_fingerprint = fp;
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_HELLO;
    env.hello = &hello;
    kvt_status_t st = send_env(l, &env);
    if (st != KVT_OK)
        return st;
    Kvtier__NodeRegister reg = KVTIER__NODE_REGISTER__INIT;
    reg.node_id = l->node_id;
    reg.role = l->role;
    reg.ucx_address = l->ucx_address;
    reg.http_address = l->http_address;
    reg.device = l->device;
    reg.host_capacity_bytes = l->p.host_capacity_bytes;
    reg.disk_capacity_bytes = l->p.disk_capacity_bytes;
    reg.block_tokens = l->p.block_tokens;
    reg.kv_slots = l->p.kv_slots;
    env.body_case = KVTIER__ENVELOPE__BODY_NODE_REGISTER;
    env.node_register = &reg;
    return send_env(l, &env);
}

/* --- receiving (link thread, inside progress) --- */

static void on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                   size_t len, void *arg)
{
    (void)ep, (void)req_id, (void)flags;
    kvt_node_link_t *l = arg;
    kvt_msg_t *msg;
    kvt_status_t st = kvt_msg_decode(data, len, &msg);
    if (st != KVT_OK) {
        kvt_log_warn("node link drops a bad message from the coordinator len=%zu err=%s", len,
                     kvt_status_str(st));
        pthread_mutex_lock(&l->lock);
        l->stats.bad_messages++;
        pthread_mutex_unlock(&l->lock);
        return;
    }
    if (msg->body_case == KVTIER__ENVELOPE__BODY_SNAPSHOT_REQUEST)
        atomic_store(&l->snapshot_wanted, true);
    else if (l->p.on_msg)
        l->p.on_msg(msg, l->p.arg);
    kvt_msg_free(msg);
}

static void on_conn(kvt_net_ep_t *ep, bool up, void *arg)
{
    kvt_node_link_t *l = arg;
    if (!up && ep == l->ep)
        l->ep_dead = true;
}

/* --- the thread --- */

static void sleep_ms_unless_stopped(kvt_node_link_t *l, int ms)
{
    for (int waited = 0; waited < ms && !atomic_load(&l->stop); waited += 50)
        kvt_net_worker_wait(l->worker, 50);
}

static void disconnect(kvt_node_link_t *l)
{
    bool was = atomic_exchange(&l->connected, false);
    if (l->ep)
        kvt_net_ep_close(l->ep);
    l->ep = NULL;
    l->ep_dead = false;
    pthread_mutex_lock(&l->lock);
    outbox_clear_locked(l);
    l->n_pending = 0;
    pthread_mutex_unlock(&l->lock);
    if (was) {
        kvt_log_warn("node link lost the coordinator coord=%s", l->coord);
        if (l->p.on_up)
            l->p.on_up(false, l->p.arg);
    }
}

static bool connect_once(kvt_node_link_t *l)
{
    if (kvt_net_connect(l->worker, l->coord, CONNECT_TIMEOUT_MS, &l->ep) != KVT_OK) {
        l->ep = NULL;
        return false;
    }
    /* Connected before the snapshot is taken: events from here on are
     * queued as deltas after it. */
    atomic_store(&l->connected, true);
    atomic_store(&l->snapshot_wanted, false);
    if (send_hello(l) != KVT_OK || send_snapshot(l) != KVT_OK) {
        disconnect(l);
        return false;
    }
    pthread_mutex_lock(&l->lock);
    l->stats.connects++;
    pthread_mutex_unlock(&l->lock);
    l->next_hb_ns = 0;
    kvt_log_info("node link connected coord=%s node=%s role=%s", l->coord, l->node_id, l->role);
    if (l->p.on_up)
        l->p.on_up(true, l->p.arg);
    return true;
}

static kvt_status_t serve_once(kvt_node_link_t *l)
{
    kvt_net_worker_wait(l->worker, 10);
    if (l->ep_dead)
        return KVT_ERR_CLOSED;
    kvt_status_t st = KVT_OK;
    if (atomic_exchange(&l->snapshot_wanted, false))
        st = send_snapshot(l);
    if (st == KVT_OK)
        st = flush_outbox(l);
    if (st == KVT_OK)
        st = flush_pending(l, false);
    uint64_t now = kvt_time_ns();
    if (st == KVT_OK && now >= l->next_hb_ns) {
        st = send_heartbeat(l);
        l->next_hb_ns = now + (uint64_t)l->p.heartbeat_ms * 1000000ull;
    }
    return st;
}

static void *link_main(void *arg)
{
    kvt_node_link_t *l = arg;
    int backoff = BACKOFF_MIN_MS;
    while (!atomic_load(&l->stop)) {
        if (!l->ep) {
            if (!connect_once(l)) {
                sleep_ms_unless_stopped(l, backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            backoff = BACKOFF_MIN_MS;
        }
        if (serve_once(l) != KVT_OK)
            disconnect(l);
    }
    if (l->ep) {
        (void)flush_outbox(l);
        (void)flush_pending(l, true);
    }
    disconnect(l);
    return NULL;
}

/* --- create / start / destroy --- */

static char *dup_str(const char *s)
{
    s = s ? s : "";
    size_t n = strlen(s) + 1;
    char *d = kvt_malloc("node link string", n);
    if (d)
        memcpy(d, s, n);
    return d;
}

kvt_status_t kvt_node_link_create(const kvt_node_link_params_t *params, kvt_node_link_t **link_p)
{
    if (!params->coord || !params->node_id || !params->role)
        return KVT_ERR_INVALID;
    kvt_node_link_t *l = kvt_calloc("node link", 1, sizeof(*l));
    if (!l)
        return KVT_ERR_NOMEM;
    l->p = *params;
    if (!l->p.heartbeat_ms)
        l->p.heartbeat_ms = 1000;
    l->coord = dup_str(params->coord);
    l->node_id = dup_str(params->node_id);
    l->role = dup_str(params->role);
    l->ucx_address = dup_str(params->ucx_address);
    l->http_address = dup_str(params->http_address);
    l->device = dup_str(params->device);
    pthread_mutex_init(&l->lock, NULL);
    kvt_net_worker_params_t wp = {.max_msg_bytes = KVT_PROTO_MAX_MSG, .on_msg = on_msg,
                                  .on_conn = on_conn, .arg = l};
    kvt_status_t st = KVT_ERR_NOMEM;
    if (l->coord && l->node_id && l->role && l->ucx_address && l->http_address && l->device)
        st = kvt_keymap_init(&l->mirror, 1024);
    if (st == KVT_OK)
        st = kvt_net_worker_create(&wp, &l->worker);
    if (st != KVT_OK) {
        kvt_node_link_destroy(l);
        return st;
    }
    *link_p = l;
    return KVT_OK;
}

kvt_status_t kvt_node_link_set_ucx_address(kvt_node_link_t *l, const char *ucx_address)
{
    char *a = dup_str(ucx_address);
    if (!a)
        return KVT_ERR_NOMEM;
    kvt_free(l->ucx_address);
    l->ucx_address = a;
    return KVT_OK;
}

kvt_status_t kvt_node_link_start(kvt_node_link_t *l)
{
    if (pthread_create(&l->thread, NULL, link_main, l) != 0)
        return KVT_ERR_NOMEM;
    l->started = true;
    return KVT_OK;
}

void kvt_node_link_destroy(kvt_node_link_t *l)
{
    if (!l)
        return;
    if (l->started) {
        atomic_store(&l->stop, true);
        kvt_net_worker_signal(l->worker);
        pthread_join(l->thread, NULL);
    }
    if (l->worker)
        kvt_net_worker_destroy(l->worker);
    outbox_clear_locked(l);
    if (l->mirror.keys)
        kvt_keymap_cleanup(&l->mirror);
    kvt_free(l->pending);
    pthread_mutex_destroy(&l->lock);
    kvt_free(l->coord);
    kvt_free(l->node_id);
    kvt_free(l->role);
    kvt_free(l->ucx_address);
    kvt_free(l->http_address);
    kvt_free(l->device);
    kvt_free(l);
}
