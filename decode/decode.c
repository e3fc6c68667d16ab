/* The decode node (decode.h): continuous batching on the engine thread. */
#include "decode/decode.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/queue.h"
#include "common/time.h"
#include "engine/prompt.h"
#include "engine/request.h"
#include "engine/sample.h"
#include "kvstore/block_client.h"
#include "kvstore/node_link.h"
#include "net/net.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define MAX_STOP 32
#define PEER_CONNECT_MS 3000

typedef struct {
    kvt_node_req_t req;
    uint32_t first_token, first_draws, max_tokens;
    uint32_t tail_tokens;    /* the peer holds the prompt's partial tail */
    uint32_t stop[MAX_STOP];
    size_t n_stop;
    /* running */
    kvt_seq_t *seq;
    kvt_sampler_t sampler;
    bool sampler_ready;
    uint32_t n_gen, next;
    bool done;
    kvt_prompt_stats_t ps;
} dseq_t;

typedef struct {
    char id[KVT_NODE_REQ_ID_MAX];
} cancel_t;

struct kvt_decode {
    kvt_decode_params_t p;
    kvt_engine_t *engine;
    kvt_node_link_t *link;
    kvt_queue_t *queue;      /* admitted by the engine thread */
    kvt_queue_t *cancels;    /* ids from the link thread */
    uint32_t default_stop[MAX_STOP];
    size_t n_default_stop;

    /* engine thread only */
    kvt_net_worker_t *worker;
    kvt_block_peers_t *peers;
    dseq_t **active;
    size_t n_active;
    float *logits;           /* [max_seqs][vocab] */
    kvt_seq_t **step_seqs;
    uint32_t *step_tokens;
    uint32_t tok_vocab;

    pthread_t thread;
    bool started;
    atomic_bool stop;
    atomic_uint n_running;
    pthread_mutex_t stats_lock;
    kvt_decode_stats_t stats;
};

static void dseq_free(kvt_decode_t *node, dseq_t *d)
{
    if (!d)
        return;
    if (d->seq)
        kvt_engine_seq_destroy(node->engine, d->seq);
    if (d->sampler_ready)
        kvt_sampler_cleanup(&d->sampler);
    kvt_node_req_cleanup(&d->req);
    kvt_free(d);
}

/* --- from the link thread --- */

static dseq_t *dseq_from(kvt_decode_t *node, const Kvtier__DecodeRequest *m)
{
    dseq_t *d = kvt_calloc("decode request", 1, sizeof(*d));
    if (d && kvt_node_req_init(&d->req, m->request_id, m->tokens, m->n_tokens,
                               m->tenant_salt.data, m->tenant_salt.len, m->temperature, m->top_p,
                               m->seed, m->cache, m->peer, m->peer_blocks) != KVT_OK) {
        kvt_free(d);
        return NULL;
    }
    if (!d)
        return NULL;
    d->first_token = m->first_token;
    d->first_draws = m->first_draws;
    d->tail_tokens = m->tail_tokens;
    d->max_tokens = m->max_tokens;
    memcpy(d->stop, node->default_stop, node->n_default_stop * sizeof(uint32_t));
    d->n_stop = node->n_default_stop;
    for (size_t i = 0; i < m->n_stop_tokens && d->n_stop < MAX_STOP; i++)
        d->stop[d->n_stop++] = m->stop_tokens[i];
    return d;
}

static bool dseq_is(const void *item, const void *id)
{
    return strcmp(((const dseq_t *)item)->req.id, id) == 0;
}

static void on_msg(const kvt_msg_t *msg, void *arg)
{
    kvt_decode_t *node = arg;
    if (msg->body_case == KVTIER__ENVELOPE__BODY_CANCEL) {
        dseq_free(node, kvt_queue_remove(node->queue, dseq_is, msg->cancel->request_id));
        cancel_t *c = kvt_calloc("decode cancel", 1, sizeof(*c));
        if (c) {
            snprintf(c->id, sizeof(c->id), "%s", msg->cancel->request_id);
            if (kvt_queue_push(node->cancels, c) != KVT_OK)
                kvt_free(c);
        }
        return;
    }
    if (msg->body_case != KVTIER__ENVELOPE__BODY_DECODE_REQUEST) {
        kvt_log_debug("decode node ignores message body=%s", kvt_msg_body_name(msg->body_case));
        return;
    }
    const Kvtier__DecodeRequest *m = msg->decode_request;
    dseq_t *d = dseq_from(node, m);
    kvt_status_t st = d ? kvt_queue_push(node->queue, d) : KVT_ERR_NOMEM;
    if (st != KVT_OK) {
        dseq_free(node, d);
        kvt_node_link_send_error(node->link, m->request_id, st, "decode node queue full");
    }
}

static void on_load(kvt_node_load_t *load, void *arg)
{
    kvt_decode_t *node = arg;
    uint32_t running = atomic_load(&node->n_running);
    uint32_t queued = (uint32_t)kvt_queue_len(node->queue);
    load->active = running;
    load->queued = queued;
    load->free_slots = node->p.max_seqs > running + queued ? node->p.max_seqs - running - queued
                                                           : 0;
}

/* --- tokens out (engine thread) --- */

static kvt_status_t send_tokens(kvt_decode_t *node, dseq_t *d, const uint32_t *toks, size_t n,
                                const char *finish, const char *error, bool first)
{
    Kvtier__TokenStream ts = KVTIER__TOKEN_STREAM__INIT;
    ts.request_id = d->req.id;
    ts.tokens = (uint32_t *)toks;
    ts.n_tokens = n;
    ts.done = finish != NULL;
    ts.finish_reason = (char *)(finish ? finish : "");
    ts.error = (char *)(error ? error : "");
    if (first) {
        ts.pulled_blocks = (uint32_t)d->ps.peer_blocks;
        ts.reused_blocks = (uint32_t)(d->ps.cached_tokens /
                                      kvt_engine_identity(node->engine)->layout.block_tokens);
    }
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_TOKEN_STREAM;
    env.token_stream = &ts;
    return kvt_node_link_send(node->link, &env);
}

static bool is_stop(const dseq_t *d, uint32_t id)
{
    for (size_t i = 0; i < d->n_stop; i++)
        if (d->stop[i] == id)
            return true;
    return false;
}

/* One sampled token: stop, or append it (and maybe reach max_tokens).
 * Sends it; a send that fails (coordinator gone) ends the sequence. */
static void take_token(kvt_decode_t *node, dseq_t *d, uint32_t tok, bool first)
{
    const char *finish = NULL;
    size_t n = 0;
    if (is_stop(d, tok)) {
        finish = "stop";
    } else {
        n = 1;
        d->n_gen++;
        d->next = tok;
        if (d->n_gen >= d->max_tokens)
            finish = "length";
    }
    if (send_tokens(node, d, &tok, n, finish, NULL, first) != KVT_OK) {
        kvt_log_warn("decode node cannot stream, dropping the request id=%s", d->req.id);
        finish = "error";
    }
    d->done = finish != NULL;
    pthread_mutex_lock(&node->stats_lock);
    node->stats.tokens += n;
    pthread_mutex_unlock(&node->stats_lock);
}

static uint32_t sample(kvt_decode_t *node, dseq_t *d, float *logits)
{
    uint32_t vocab = node->p.model->cfg.vocab_size;
    for (uint32_t i = node->tok_vocab; i < vocab; i++)
        logits[i] = -INFINITY; /* ids with no text are never sampled */
    return kvt_sampler_next(&d->sampler, logits);
}

/* --- admitting a request (engine thread) --- */

static kvt_status_t start_seq(kvt_decode_t *node, dseq_t *d)
{
    if (d->req.n == 0 || d->req.n > node->p.model->cfg.max_pos ||
        d->max_tokens > node->p.model->cfg.max_pos - d->req.n)
        return KVT_ERR_TOO_LARGE;
    kvt_status_t st = kvt_sampler_init(&d->sampler, &d->req.sp, node->p.model->cfg.vocab_size);
    if (st != KVT_OK)
        return st;
    d->sampler_ready = true;
    kvt_block_key_t root;
    st = kvt_node_req_root(node->engine, &d->req, &root);
    if (st != KVT_OK)
        return st;
    kvt_prompt_src_t src = {.reuse = d->req.cache};
    if (d->req.cache && d->req.peer[0] && (d->req.peer_blocks || d->tail_tokens)) {
        src.peer = kvt_block_peers_get(node->peers, d->req.peer, PEER_CONNECT_MS);
        src.peer_blocks = d->req.peer_blocks;
        src.peer_tail = d->tail_tokens;
    }
    /* With the prefill node's first token no logits are needed: the prompt
     * may then be adopted whole, its tail pulled instead of computed. */
    bool have_first = d->first_token != KVT_DECODE_NO_FIRST_TOKEN;
    return kvt_engine_run_prompt(node->engine, &root, d->req.tokens, d->req.n, &src, &d->seq,
                                 have_first ? NULL : node->logits, &d->ps);
}

static void admit(kvt_decode_t *node, dseq_t *d)
{
    kvt_status_t st = start_seq(node, d);
    if (st != KVT_OK) {
        kvt_log_warn("decode request failed id=%s status=%s", d->req.id, kvt_status_str(st));
        send_tokens(node, d, NULL, 0, "error", kvt_status_str(st), true);
        pthread_mutex_lock(&node->stats_lock);
        node->stats.requests++;
        node->stats.failed++;
        pthread_mutex_unlock(&node->stats_lock);
        dseq_free(node, d);
        return;
    }
    uint32_t tok = d->first_token;
    if (tok == KVT_DECODE_NO_FIRST_TOKEN)
        tok = sample(node, d, node->logits);
    else /* the prefill node drew it: continue its random stream */
        kvt_sampler_skip(&d->sampler, d->first_draws);
    pthread_mutex_lock(&node->stats_lock);
    node->stats.requests++;
    node->stats.pulled_blocks += d->ps.peer_blocks;
    node->stats.failed_blocks += d->ps.failed_blocks;
    node->stats.reused_blocks += d->ps.pool_blocks;
    node->stats.pulled_tails += d->ps.tail_tokens > 0;
    node->stats.adopted += d->ps.adopted;
    pthread_mutex_unlock(&node->stats_lock);
    if (d->max_tokens == 0) {
        send_tokens(node, d, NULL, 0, "length", NULL, true);
        dseq_free(node, d);
        return;
    }
    take_token(node, d, tok, true);
    if (d->done) {
        dseq_free(node, d);
        return;
    }
    node->active[node->n_active++] = d;
    atomic_store(&node->n_running, (unsigned)node->n_active);
}

/* --- the batch (engine thread) --- */

static void drop_finished(kvt_decode_t *node)
{
    size_t k = 0;
    for (size_t i = 0; i < node->n_active; i++) {
        if (node->active[i]->done)
            dseq_free(node, node->active[i]);
        else
            node->active[k++] = node->active[i];
    }
    node->n_active = k;
    atomic_store(&node->n_running, (unsigned)k);
}

static void apply_cancels(kvt_decode_t *node)
{
    for (cancel_t *c; (c = kvt_queue_pop(node->cancels, 0));) {
        for (size_t i = 0; i < node->n_active; i++)
            if (strcmp(node->active[i]->req.id, c->id) == 0)
                node->active[i]->done = true;
        kvt_free(c);
    }
    drop_finished(node);
}

static void step(kvt_decode_t *node)
{
    size_t n = node->n_active, vocab = node->p.model->cfg.vocab_size;
    for (size_t i = 0; i < n; i++) {
        node->step_seqs[i] = node->active[i]->seq;
        node->step_tokens[i] = node->active[i]->next;
    }
    kvt_status_t st = kvt_engine_decode(node->engine, node->step_seqs, node->step_tokens, n,
                                        node->logits);
    for (size_t i = 0; i < n; i++) {
        dseq_t *d = node->active[i];
        if (st != KVT_OK) {
            send_tokens(node, d, NULL, 0, "error", kvt_status_str(st), false);
            d->done = true;
            continue;
        }
        take_token(node, d, sample(node, d, node->logits + i * vocab), false);
    }
    if (st != KVT_OK)
        kvt_log_error("decode step failed batch=%zu status=%s", n, kvt_status_str(st));
    pthread_mutex_lock(&node->stats_lock);
    node->stats.steps++;
    node->stats.failed += st != KVT_OK ? n : 0;
    pthread_mutex_unlock(&node->stats_lock);
    drop_finished(node);
}

static void *engine_main(void *arg)
{
    kvt_decode_t *node = arg;
    while (!atomic_load(&node->stop)) {
        while (node->n_active < node->p.max_seqs) {
            dseq_t *d = kvt_queue_pop(node->queue, node->n_active ? 0 : 100);
            if (!d)
                break;
            admit(node, d);
        }
        apply_cancels(node);
        if (node->n_active)
            step(node);
    }
    for (size_t i = 0; i < node->n_active; i++)
        dseq_free(node, node->active[i]);
    node->n_active = 0;
    return NULL;
}

/* --- start / stop --- */

static kvt_status_t start_link(kvt_decode_t *node)
{
    char dev[32];
    kvt_device_name(node->p.engine.device, dev, sizeof(dev));
    kvt_node_link_params_t lp = {
        .coord = node->p.coord, .node_id = node->p.node_id, .role = "decode",
        .ucx_address = "", .http_address = "", .device = dev,
        .block_tokens = kvt_engine_identity(node->engine)->layout.block_tokens,
        .kv_slots = node->p.max_seqs, .heartbeat_ms = node->p.heartbeat_ms,
        .on_msg = on_msg, .load = on_load, .arg = node,
    };
    memcpy(lp.fingerprint, kvt_engine_identity(node->engine)->fingerprint, KVT_FINGERPRINT_LEN);
    kvt_status_t st = kvt_node_link_create(&lp, &node->link);
    if (st == KVT_OK)
        kvt_engine_set_event_fn(node->engine, kvt_node_link_event, node->link);
    return st;
}

static kvt_status_t start_parts(kvt_decode_t *node)
{
    const kvt_model_t *m = node->p.model;
    size_t vocab = m->cfg.vocab_size, ms = node->p.max_seqs;
    uint32_t tv = kvt_tokenizer_vocab_size(node->p.tok);
    node->tok_vocab = tv < vocab ? tv : (uint32_t)vocab;
    kvt_fim_tokens_t fim = {0};
    bool have_fim = kvt_prompt_fim_tokens(node->p.tok, NULL, &fim) == KVT_OK;
    node->n_default_stop = kvt_prompt_stop_ids(&m->cfg, node->p.tok, have_fim ? &fim : NULL,
                                               node->default_stop, MAX_STOP);
    node->logits = kvt_malloc("decode logits", ms * vocab * sizeof(float));
    node->active = kvt_calloc("decode active", ms, sizeof(*node->active));
    node->step_seqs = kvt_calloc("decode step seqs", ms, sizeof(*node->step_seqs));
    node->step_tokens = kvt_calloc("decode step tokens", ms, sizeof(*node->step_tokens));
    if (!node->logits || !node->active || !node->step_seqs || !node->step_tokens)
        return KVT_ERR_NOMEM;
    kvt_status_t st = kvt_queue_create(4 * ms, &node->queue);
    if (st == KVT_OK)
        st = kvt_queue_create(1024, &node->cancels);
    if (st == KVT_OK)
        st = kvt_engine_create(m, &node->p.engine, &node->engine);
    if (st == KVT_OK)
        st = start_link(node);
    kvt_net_worker_params_t wp = {.max_msg_bytes = KVT_PROTO_MAX_MSG};
    if (st == KVT_OK)
        st = kvt_net_worker_create(&wp, &node->worker);
    if (st == KVT_OK)
        st = kvt_block_peers_create(node->worker, &node->peers);
    return st;
}

kvt_status_t kvt_decode_start(const kvt_decode_params_t *params, kvt_decode_t **node_p)
{
    if (!params->model || !params->tok || !params->coord || !params->node_id)
        return KVT_ERR_INVALID;
    kvt_decode_t *node = kvt_calloc("decode node", 1, sizeof(*node));
    if (!node)
        return KVT_ERR_NOMEM;
    node->p = *params;
    if (!node->p.max_seqs)
        node->p.max_seqs = 16;
    pthread_mutex_init(&node->stats_lock, NULL);
    kvt_status_t st = start_parts(node);
    if (st == KVT_OK && pthread_create(&node->thread, NULL, engine_main, node) != 0)
        st = KVT_ERR_NOMEM;
    node->started = st == KVT_OK;
    if (st == KVT_OK)
        st = kvt_node_link_start(node->link);
    if (st != KVT_OK) {
        kvt_decode_stop(node);
        return st;
    }
    kvt_log_info("decode node started id=%s coord=%s max_seqs=%u", node->p.node_id,
                 node->p.coord, node->p.max_seqs);
    *node_p = node;
    return KVT_OK;
}

void kvt_decode_stop(kvt_decode_t *node)
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
    if (node->engine)
        kvt_engine_set_event_fn(node->engine, NULL, NULL);
    kvt_node_link_destroy(node->link);
    for (dseq_t *d; node->queue && (d = kvt_queue_pop(node->queue, 0));)
        dseq_free(node, d);
    for (cancel_t *c; node->cancels && (c = kvt_queue_pop(node->cancels, 0));)
        kvt_free(c);
    kvt_queue_destroy(node->queue);
    kvt_queue_destroy(node->cancels);
    if (node->engine)
        kvt_engine_destroy(node->engine);
    kvt_free(node->logits);
    kvt_free(node->active);
    kvt_free(node->step_seqs);
    kvt_free(node->step_tokens);
    pthread_mutex_destroy(&node->stats_lock);
    kvt_free(node);
}

void kvt_decode_stats(kvt_decode_t *node, kvt_decode_stats_t *stats_p)
{
    pthread_mutex_lock(&node->stats_lock);
    *stats_p = node->stats;
    pthread_mutex_unlock(&node->stats_lock);
    stats_p->active = atomic_load(&node->n_running);
    stats_p->queued = (uint32_t)kvt_queue_len(node->queue);
}

bool kvt_decode_ready(kvt_decode_t *node) { return kvt_node_link_connected(node->link); }
