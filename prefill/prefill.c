/* The prefill node (prefill.h). */
#include "prefill/prefill.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/queue.h"
#include "common/time.h"
#include "engine/request.h"
#include "engine/sample.h"
#include "kvstore/block_client.h"
#include "kvstore/block_server.h"
#include "kvstore/node_link.h"
#include "kvstore/tail.h"
#include "kvstore/tier.h"
#include "net/net.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define ADDR_MAX 256
#define PEER_CONNECT_MS 3000

typedef struct {
    kvt_node_req_t req;
    uint64_t t_recv;
} job_t;

/* What a request produced for the PrefillResult. */
typedef struct {
    uint32_t first, draws; /* the first token and the sampler's draws for it */
    uint32_t tail;         /* tokens of the partial tail held for the decode node */
    kvt_prompt_stats_t ps;
} outcome_t;

struct kvt_prefill {
    kvt_prefill_params_t p;
    kvt_tier_t *tier;
    kvt_engine_t *engine;
    kvt_block_server_t *server;
    kvt_tail_store_t *tails;      /* partial tails held for decode nodes */
    kvt_node_link_t *link;
    kvt_queue_t *queue;
    char advertise[ADDR_MAX];

    /* engine thread only */
    kvt_net_worker_t *worker;     /* for pulls from peers */
    kvt_block_peers_t *peers;
    float *logits;
    uint32_t tok_vocab;

    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t stats_lock;
    kvt_prefill_stats_t stats;
};

static void job_free(job_t *j)
{
    if (j) {
        kvt_node_req_cleanup(&j->req);
        kvt_free(j);
    }
}

/* --- from the link thread --- */

static job_t *job_from(const Kvtier__PrefillRequest *m)
{
    job_t *j = kvt_calloc("prefill job", 1, sizeof(*j));
    if (j && kvt_node_req_init(&j->req, m->request_id, m->tokens, m->n_tokens,
                               m->tenant_salt.data, m->tenant_salt.len, m->temperature, m->top_p,
                               m->seed, m->cache, m->peer, m->peer_blocks) != KVT_OK) {
        kvt_free(j);
        j = NULL;
    }
    if (j)
        j->t_recv = kvt_time_ns();
    return j;
}

static bool job_is(const void *item, const void *id)
{
    return strcmp(((const job_t *)item)->req.id, id) == 0;
}

static void on_msg(const kvt_msg_t *msg, void *arg)
{
    kvt_prefill_t *node = arg;
    if (msg->body_case == KVTIER__ENVELOPE__BODY_CANCEL) {
        job_free(kvt_queue_remove(node->queue, job_is, msg->cancel->request_id));
        return;
    }
    if (msg->body_case != KVTIER__ENVELOPE__BODY_PREFILL_REQUEST) {
        kvt_log_debug("prefill node ignores message body=%s", kvt_msg_body_name(msg->body_case));
        return;
    }
    const Kvtier__PrefillRequest *m = msg->prefill_request;
    job_t *j = job_from(m);
    kvt_status_t st = j ? kvt_queue_push(node->queue, j) : KVT_ERR_NOMEM;
    if (st != KVT_OK) {
        job_free(j);
        kvt_node_link_send_error(node->link, m->request_id, st, "prefill node queue full");
    }
}

static void on_load(kvt_node_load_t *load, void *arg)
{
    kvt_prefill_t *node = arg;
    load->queued = (uint32_t)kvt_queue_len(node->queue);
    load->active = 0;
    load->free_slots = 1;
}

/* --- the engine thread --- */

static kvt_status_t sample_first(kvt_prefill_t *node, const job_t *j, outcome_t *o)
{
    uint32_t vocab = node->p.model->cfg.vocab_size;
    for (uint32_t i = node->tok_vocab; i < vocab; i++)
        node->logits[i] = -INFINITY; /* ids with no text are never sampled */
    kvt_sampler_t s;
    kvt_status_t st = kvt_sampler_init(&s, &j->req.sp, vocab);
    if (st != KVT_OK)
        return st;
    o->first = kvt_sampler_next(&s, node->logits);
    o->draws = (uint32_t)s.draws;
    kvt_sampler_cleanup(&s);
    return KVT_OK;
}

static kvt_status_t send_result(kvt_prefill_t *node, const job_t *j, const outcome_t *o)
{
    const kvt_prompt_stats_t *ps = &o->ps;
    Kvtier__PrefillResult r = KVTIER__PREFILL_RESULT__INIT;
    r.request_id = (char *)j->req.id;
    r.first_token = o->first;
    r.first_draws = o->draws;
    r.tail_tokens = o->tail;
    r.cached_tokens = (uint32_t)ps->cached_tokens;
    r.stored_blocks = (uint32_t)ps->stored_blocks;
    r.peer_blocks = (uint32_t)ps->peer_blocks;
    r.failed_blocks = (uint32_t)ps->failed_blocks;
    r.prefill_us = (kvt_time_ns() - j->t_recv) / 1000;
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_PREFILL_RESULT;
    env.prefill_result = &r;
    return kvt_node_link_send(node->link, &env);
}

/* Hold the prompt's partial tail for the decode node, but only when this
 * node serves every full block before it (else the decode node computes
 * from the first block it lacks anyway).  Best effort: without the tail
 * the decode node computes it. */
static uint32_t hold_tail(kvt_prefill_t *node, const job_t *j, const kvt_seq_t *seq,
                          const kvt_block_key_t *root, const kvt_prompt_stats_t *ps)
{
    uint32_t b = kvt_engine_identity(node->engine)->layout.block_tokens, t = 0;
    if (!j->req.cache || ps->stored_blocks < j->req.n / b)
        return 0;
    kvt_status_t st = kvt_engine_tail_hold(node->engine, seq, root, node->tails, &t);
    if (st != KVT_OK) {
        kvt_log_warn("prefill node cannot hold the tail id=%s status=%s", j->req.id,
                     kvt_status_str(st));
        return 0;
    }
    return t;
}

static kvt_status_t run_job(kvt_prefill_t *node, const job_t *j, outcome_t *o)
{
    if (j->req.n == 0 || j->req.n > node->p.model->cfg.max_pos)
        return KVT_ERR_TOO_LARGE;
    kvt_block_key_t root;
    kvt_status_t st = kvt_node_req_root(node->engine, &j->req, &root);
    if (st != KVT_OK)
        return st;
    kvt_prompt_src_t src = {.reuse = j->req.cache, .tier = node->tier, .store = j->req.cache};
    if (j->req.cache && j->req.peer[0] && j->req.peer_blocks) {
        src.peer = kvt_block_peers_get(node->peers, j->req.peer, PEER_CONNECT_MS);
        src.peer_blocks = j->req.peer_blocks;
    }
    kvt_seq_t *seq;
    st = kvt_engine_run_prompt(node->engine, &root, j->req.tokens, j->req.n, &src, &seq,
                               node->logits, &o->ps);
    if (st != KVT_OK)
        return st;
    o->tail = hold_tail(node, j, seq, &root, &o->ps);
    kvt_engine_seq_destroy(node->engine, seq); /* its blocks stay cached (T0) */
    return sample_first(node, j, o);
}

static void handle(kvt_prefill_t *node, job_t *j)
{
    outcome_t o = {0};
    const kvt_prompt_stats_t *ps = &o.ps;
    kvt_status_t st = run_job(node, j, &o);
    if (st == KVT_OK)
        st = send_result(node, j, &o);
    else
        kvt_node_link_send_error(node->link, j->req.id, st, "prefill failed");
    kvt_log_debug("prefill done id=%s tokens=%zu cached=%zu peer_blocks=%zu failed_blocks=%zu "
                  "stored=%zu tail=%u status=%s us=%llu", j->req.id, j->req.n, ps->cached_tokens,
                  ps->peer_blocks, ps->failed_blocks, ps->stored_blocks, o.tail,
                  kvt_status_str(st), (unsigned long long)((kvt_time_ns() - j->t_recv) / 1000));
    pthread_mutex_lock(&node->stats_lock);
    node->stats.requests++;
    node->stats.failed += st != KVT_OK;
    node->stats.cached_tokens += ps->cached_tokens;
    node->stats.computed_tokens += st == KVT_OK ? j->req.n - ps->cached_tokens : 0;
    node->stats.peer_blocks += ps->peer_blocks;
    node->stats.failed_blocks += ps->failed_blocks;
    node->stats.held_tails += o.tail > 0;
    pthread_mutex_unlock(&node->stats_lock);
}

static void *engine_main(void *arg)
{
    kvt_prefill_t *node = arg;
    while (!atomic_load(&node->stop)) {
        job_t *j = kvt_queue_pop(node->queue, 100);
        if (!j)
            continue;
        handle(node, j);
        job_free(j);
    }
    return NULL;
}

/* --- start / stop --- */

static kvt_status_t open_tier(kvt_prefill_t *node)
{
    kvt_tier_params_t tp = {
        .data_dir = node->p.data_dir,
        .identity = kvt_engine_identity(node->engine),
        .host_capacity_bytes = node->p.host_capacity_bytes ? node->p.host_capacity_bytes
                                                           : (1ull << 30),
        .disk_capacity_bytes = node->p.disk_capacity_bytes,
        .on_event = kvt_node_link_event,
        .event_arg = node->link,
    };
    kvt_status_t st = kvt_tier_open(&tp, &node->tier);
    if (st != KVT_OK)
        kvt_log_error("prefill node cannot open its tier data=%s status=%s", node->p.data_dir,
                      kvt_status_str(st));
    else /* what T2 already holds goes into the first snapshot */
        kvt_disk_tier_resident(kvt_tier_disk(node->tier), kvt_node_link_event, node->link);
    return st;
}

static kvt_status_t start_link(kvt_prefill_t *node)
{
    char dev[32];
    kvt_device_name(node->p.engine.device, dev, sizeof(dev));
    kvt_node_link_params_t lp = {
        .coord = node->p.coord, .node_id = node->p.node_id, .role = "prefill",
        .ucx_address = "", /* set once the block server is up */
        .http_address = "", .device = dev,
        .block_tokens = kvt_engine_identity(node->engine)->layout.block_tokens,
        .kv_slots = 1, .host_capacity_bytes = node->p.host_capacity_bytes,
        .disk_capacity_bytes = node->p.disk_capacity_bytes,
        .heartbeat_ms = node->p.heartbeat_ms, .on_msg = on_msg, .load = on_load, .arg = node,
    };
    memcpy(lp.fingerprint, kvt_engine_identity(node->engine)->fingerprint, KVT_FINGERPRINT_LEN);
    return kvt_node_link_create(&lp, &node->link);
}

/* HOST of listen (or advertise_host) with the port actually bound. */
static void make_advertise(kvt_prefill_t *node)
{
    const char *host = node->p.advertise_host;
    size_t hl = host ? strlen(host) : 0;
    if (!host) {
        const char *colon = strrchr(node->p.listen, ':');
        host = node->p.listen;
        hl = colon ? (size_t)(colon - host) : strlen(host);
    }
    snprintf(node->advertise, sizeof(node->advertise), "%.*s:%u", (int)hl, host,
             kvt_block_server_port(node->server));
}

static kvt_status_t start_parts(kvt_prefill_t *node)
{
    const kvt_model_t *m = node->p.model;
    uint32_t tv = kvt_tokenizer_vocab_size(node->p.tok);
    node->tok_vocab = tv < m->cfg.vocab_size ? tv : m->cfg.vocab_size;
    node->logits = kvt_malloc("prefill logits", (size_t)m->cfg.vocab_size * sizeof(float));
    kvt_status_t st = node->logits ? KVT_OK : KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = kvt_queue_create(node->p.max_queue ? node->p.max_queue : 256, &node->queue);
    if (st == KVT_OK)
        st = kvt_engine_create(m, &node->p.engine, &node->engine);
    if (st == KVT_OK)
        st = start_link(node); /* before the tier: it takes the tier's events */
    if (st == KVT_OK)
        st = open_tier(node);
    if (st == KVT_OK) {
        kvt_engine_set_event_fn(node->engine, kvt_node_link_event, node->link);
        kvt_tail_store_params_t tp = {0};
        st = kvt_tail_store_create(&tp, &node->tails);
    }
    if (st == KVT_OK) {
        kvt_block_server_params_t sp = {.tier = node->tier, .listen = node->p.listen,
                                        .tails = node->tails};
        st = kvt_block_server_start(&sp, &node->server);
    }
    if (st == KVT_OK) {
        make_advertise(node);
        st = kvt_node_link_set_ucx_address(node->link, node->advertise);
    }
    if (st == KVT_OK) {
        kvt_net_worker_params_t wp = {.max_msg_bytes = KVT_PROTO_MAX_MSG};
        st = kvt_net_worker_create(&wp, &node->worker);
    }
    if (st == KVT_OK)
        st = kvt_block_peers_create(node->worker, &node->peers);
    return st;
}

kvt_status_t kvt_prefill_start(const kvt_prefill_params_t *params, kvt_prefill_t **node_p)
{
    if (!params->model || !params->tok || !params->data_dir || !params->listen ||
        !params->coord || !params->node_id)
        return KVT_ERR_INVALID;
    kvt_prefill_t *node = kvt_calloc("prefill node", 1, sizeof(*node));
    if (!node)
        return KVT_ERR_NOMEM;
    node->p = *params;
    pthread_mutex_init(&node->stats_lock, NULL);
    kvt_status_t st = start_parts(node);
    /* The engine thread takes over the worker (single-threaded UCX). */
    if (st == KVT_OK && pthread_create(&node->thread, NULL, engine_main, node) != 0)
        st = KVT_ERR_NOMEM;
    node->started = st == KVT_OK;
    if (st == KVT_OK)
        st = kvt_node_link_start(node->link);
    if (st != KVT_OK) {
        kvt_prefill_stop(node);
        return st;
    }
    kvt_log_info("prefill node started id=%s blocks=%s coord=%s", node->p.node_id,
                 node->advertise, node->p.coord);
    *node_p = node;
    return KVT_OK;
}

void kvt_prefill_stop(kvt_prefill_t *node)
{
    if (!node)
        return;
    if (node->started) {
        atomic_store(&node->stop, true);
        kvt_queue_wake(node->queue);
        pthread_join(node->thread, NULL);
    }
    kvt_block_peers_destroy(node->peers);
    if (node->worker)
        kvt_net_worker_destroy(node->worker);
    kvt_block_server_stop(node->server);
    kvt_tail_store_destroy(node->tails);
    if (node->engine)
        kvt_engine_set_event_fn(node->engine, NULL, NULL);
    if (node->tier) /* its last events still reach the link */
        kvt_tier_close(node->tier);
    if (node->engine)
        kvt_engine_destroy(node->engine);
    kvt_node_link_destroy(node->link); /* no more requests arrive */
    for (job_t *j; node->queue && (j = kvt_queue_pop(node->queue, 0));)
        job_free(j);
    kvt_queue_destroy(node->queue);
    kvt_free(node->logits);
    pthread_mutex_destroy(&node->stats_lock);
    kvt_free(node);
}

void kvt_prefill_stats(kvt_prefill_t *node, kvt_prefill_stats_t *stats_p)
{
    pthread_mutex_lock(&node->stats_lock);
    *stats_p = node->stats;
    pthread_mutex_unlock(&node->stats_lock);
    stats_p->queued = (uint32_t)kvt_queue_len(node->queue);
}

uint16_t kvt_prefill_port(const kvt_prefill_t *node)
{
    return kvt_block_server_port(node->server);
}

bool kvt_prefill_ready(kvt_prefill_t *node) { return kvt_node_link_connected(node->link); }
