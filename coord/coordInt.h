/* Coordinator internals shared by coord.c (HTTP side), coord_req.c
 * (requests: prompts, waiting, answers) and coord_net.c (the network
 * thread).  Not for other modules.
 *
 * A request (creq_t) is created by an HTTP thread, handed to the network
 * thread through `inbox`, and shared by both until both let go (refs under
 * `lock`).  Fields marked [net] are the network thread's alone; [lock]
 * fields are read and written under the request's lock; the rest is fixed
 * before the hand-over. */
#ifndef KVT_COORD_COORD_INT_H
#define KVT_COORD_COORD_INT_H

#include "common/queue.h"
#include "coord/anchors.h"
#include "coord/coord.h"
#include "coord/gindex.h"
#include "coord/route.h"
#include "engine/model.h"
#include "engine/prompt.h"
#include "engine/tokenizer.h"
#include "kvstore/block.h"
#include "net/http.h"
#include "net/net.h"

#include <pthread.h>
#include <stdatomic.h>

#define NODE_MAX KVT_GINDEX_MAX_NODES
#define NODE_ID_MAX 128
#define ADDR_MAX 256
#define TENANT_MAX 128
#define MAX_STOP_IDS 32
#define MAX_KEYS 64

typedef enum { R_NEW, R_PREFILL, R_DECODE, R_DONE } rstate_t;

typedef struct creq {
    char id[48];
    char tenant[TENANT_MAX];
    uint32_t *tokens;            /* the prompt */
    size_t n;
    uint32_t stop_ids[MAX_STOP_IDS];
    size_t n_stop_ids;
    float temperature, top_p;
    uint64_t seed;
    uint32_t max_tokens;
    bool cache;
    uint64_t t_submit, deadline_ns;

    /* [net] */
    struct creq *next_net;
    rstate_t state;
    uint32_t attempts;
    int prefill_node, decode_node;
    uint32_t pos;                /* tokens of this attempt's stream so far */
    uint64_t attempt_deadline_ns;
    kvt_block_key_t *keys;
    size_t n_keys;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;                    /* [lock] */
    uint32_t *out;               /* [lock] generated tokens */
    size_t n_out, cap_out;       /* [lock] */
    uint32_t cached_tokens;      /* [lock] */
    bool done;                   /* [lock] */
    bool cancel;                 /* [lock] the client left, or a stop string ended it */
    const char *finish;          /* [lock] "stop" | "length" */
    unsigned err_status;         /* [lock] 0, or the HTTP status of a failure */
    char error[256];             /* [lock] */
    uint64_t t_first;            /* [lock] */
} creq_t;

typedef struct {
    bool used, alive, registered;
    char id[NODE_ID_MAX];
    char role[16];
    char ucx[ADDR_MAX];
    char device[32];
    kvt_net_ep_t *ep;
    uint32_t block_tokens, kv_slots;
    uint32_t hb_active, hb_free, hb_queued;
    uint64_t last_seen_ns;
    uint64_t queued_tokens;      /* prefill tokens sent and not answered */
    uint32_t decoding;           /* decode requests sent and not finished */
} cnode_t;

typedef struct {
    char key[128];
    char tenant[TENANT_MAX];
} api_key_t;

struct kvt_coord {
    kvt_coord_params_t p;
    char model_name[256];
    kvt_model_config_t cfg;
    kvt_tokenizer_t *tok;
    kvt_fim_tokens_t fim;
    bool have_fim;
    uint32_t stop_ids[MAX_STOP_IDS];
    size_t n_stop_ids;
    uint32_t tok_vocab;
    api_key_t *keys;
    size_t n_keys;
    kvt_anchors_t *anchors;
    kvt_http_server_t *http;

    /* the network thread */
    kvt_net_worker_t *worker;
    kvt_net_listener_t *listener;
    kvt_queue_t *inbox;          /* creq_t* to dispatch, refs held */
    kvt_queue_t *cancels;        /* creq_t* whose client left, refs held */
    kvt_gindex_t *gindex;
    kvt_route_costs_t costs;
    creq_t *reqs;                /* [net] in flight */
    pthread_t thread;
    atomic_bool stop;
    bool started;

    /* node table: written by the network thread under nodes_lock, read by
     * HTTP threads (readyz, metrics) under it */
    pthread_mutex_t nodes_lock;
    cnode_t nodes[NODE_MAX];
    bool have_fingerprint;
    uint8_t fingerprint[KVT_FINGERPRINT_LEN];
    uint32_t block_tokens;

    /* metrics */
    atomic_uint_fast64_t m_requests, m_errors, m_prompt_tokens, m_cached_tokens,
        m_completion_tokens, m_retries, m_node_deaths;
    atomic_uint_fast64_t m_ttft_us_sum, m_ttft_count;
    atomic_uint_fast64_t req_counter;
};

/* coord_net.c */
kvt_status_t kvt_coord_net_start(kvt_coord_t *c);
/* Stop the thread and end every request in flight with an error. */
void kvt_coord_net_stop(kvt_coord_t *c);
/* Then, with no HTTP thread left, free the rest. */
void kvt_coord_net_free(kvt_coord_t *c);
/* Hand a request to the network thread (takes a reference). */
kvt_status_t kvt_coord_submit(kvt_coord_t *c, creq_t *r);
/* The client left or a stop string ended it: stop the nodes' work. */
void kvt_coord_cancel(kvt_coord_t *c, creq_t *r);
size_t kvt_coord_alive_nodes(kvt_coord_t *c, const char *role);

/* coord_req.c */
creq_t *kvt_creq_new(void);
void kvt_creq_unref(creq_t *r);
/* Finish under the lock (first finish wins) and wake the waiters. */
void kvt_creq_finish(creq_t *r, const char *finish, unsigned err_status, const char *error);
/* Answer POST /v1/completions. */
void kvt_coord_completions(kvt_coord_t *c, kvt_http_req_t *req);

#endif
