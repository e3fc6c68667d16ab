/* A node's HTTP health and metrics endpoints (node_http.h). */
#include "cli/node_http.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    kvt_prefill_t *prefill;
    kvt_decode_t *decode;
} node_ref_t;

static node_ref_t g_ref; /* one node per process */

static size_t counter(char *buf, size_t cap, const char *name, unsigned long long v)
{
    int n = snprintf(buf, cap, "# TYPE kvtier_%s counter\nkvtier_%s %llu\n", name, name, v);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static size_t metrics(char *buf, size_t cap)
{
    size_t at = 0;
#define C(name, v) at += counter(buf + at, cap - at, name, (unsigned long long)(v))
    if (g_ref.prefill) {
        kvt_prefill_stats_t s;
        kvt_prefill_stats(g_ref.prefill, &s);
        C("prefill_requests_total", s.requests);
        C("prefill_failed_total", s.failed);
        C("prefill_cached_tokens_total", s.cached_tokens);
        C("prefill_computed_tokens_total", s.computed_tokens);
        C("prefill_peer_blocks_total", s.peer_blocks);
        C("prefill_failed_blocks_total", s.failed_blocks);
        C("prefill_held_tails_total", s.held_tails);
        C("prefill_queued", s.queued);
    } else {
        kvt_decode_stats_t s;
        kvt_decode_stats(g_ref.decode, &s);
        C("decode_requests_total", s.requests);
        C("decode_failed_total", s.failed);
        C("decode_tokens_total", s.tokens);
        C("decode_steps_total", s.steps);
        C("decode_pulled_blocks_total", s.pulled_blocks);
        C("decode_reused_blocks_total", s.reused_blocks);
        C("decode_failed_blocks_total", s.failed_blocks);
        C("decode_pulled_tails_total", s.pulled_tails);
        C("decode_adopted_prompts_total", s.adopted);
        C("decode_active", s.active);
        C("decode_queued", s.queued);
    }
#undef C
    return at;
}

static void handle(kvt_http_req_t *req, void *arg)
{
    (void)arg;
    const char *path = kvt_http_req_path(req);
    if (strcmp(path, "/healthz") == 0) {
        kvt_http_respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15);
    } else if (strcmp(path, "/readyz") == 0) {
        bool ready = g_ref.prefill ? kvt_prefill_ready(g_ref.prefill)
                                   : kvt_decode_ready(g_ref.decode);
        const char *body = ready ? "{\"status\":\"ready\"}" : "{\"status\":\"no coordinator\"}";
        kvt_http_respond(req, ready ? 200 : 503, "application/json", body, strlen(body));
    } else if (strcmp(path, "/metrics") == 0) {
        char buf[2048];
        size_t n = metrics(buf, sizeof(buf));
        kvt_http_respond(req, 200, "text/plain; version=0.0.4", buf, n);
    } else {
        const char *body = "{\"error\":{\"message\":\"no such route\",\"type\":"
                           "\"invalid_request_error\",\"param\":null,\"code\":null}}";
        kvt_http_respond(req, 404, "application/json", body, strlen(body));
    }
}

kvt_status_t kvt_node_http_start(const char *listen, kvt_prefill_t *prefill,
                                 kvt_decode_t *decode, kvt_http_server_t **srv_p)
{
    g_ref = (node_ref_t){prefill, decode};
    kvt_http_params_t hp = {.listen = listen, .handler = handle, .max_connections = 64};
    return kvt_http_start(&hp, srv_p);
}
