/* The coordinator (coord.h): start/stop, the HTTP routes other than
 * completions (coord_req.c), API keys. */
#include "coord/coordInt.h"
#include "coord/openai.h"

#include "common/alloc.h"
#include "common/log.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_API_KEYS 1024

static void respond_json(kvt_http_req_t *req, unsigned status, const char *body)
{
    kvt_http_respond(req, status, "application/json", body, strlen(body));
}

static void metrics(kvt_coord_t *c, kvt_http_req_t *req)
{
    char buf[4096];
    size_t at = 0;
#define M(name, help, value)                                                                 \
    at += (size_t)snprintf(buf + at, sizeof(buf) - at,                                       \
                           "# HELP kvtier_" name " " help "\n# TYPE kvtier_" name             \
                           " counter\nkvtier_" name " %llu\n",                                \
                           (unsigned long long)(value))
    M("requests_total", "completion requests received", atomic_load(&c->m_requests));
    M("request_errors_total", "requests that ended in an error", atomic_load(&c->m_errors));
    M("prompt_tokens_total", "prompt tokens of the requests", atomic_load(&c->m_prompt_tokens));
    M("cached_tokens_total", "prompt tokens served from the cache",
      atomic_load(&c->m_cached_tokens));
    M("completion_tokens_total", "tokens generated", atomic_load(&c->m_completion_tokens));
    M("retries_total", "request attempts retried on another node", atomic_load(&c->m_retries));
    M("node_losses_total", "nodes lost (died, disconnected, silent)",
      atomic_load(&c->m_node_deaths));
    M("ttft_microseconds_sum", "time to first token, summed", atomic_load(&c->m_ttft_us_sum));
    M("ttft_count", "requests with a first token", atomic_load(&c->m_ttft_count));
#undef M
    at += (size_t)snprintf(buf + at, sizeof(buf) - at,
                           "# HELP kvtier_nodes nodes registered and alive\n"
                           "# TYPE kvtier_nodes gauge\n"
                           "kvtier_nodes{role=\"prefill\"} %zu\nkvtier_nodes{role=\"decode\"} %zu\n",
                           kvt_coord_alive_nodes(c, "prefill"), kvt_coord_alive_nodes(c, "decode"));
    kvt_http_respond(req, 200, "text/plain; version=0.0.4", buf, at < sizeof(buf) ? at : sizeof(buf) - 1);
}

static void handle(kvt_http_req_t *req, void *arg)
{
    kvt_coord_t *c = arg;
    const char *path = kvt_http_req_path(req);
    const char *method = kvt_http_req_method(req);
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool known = strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
                 strcmp(path, "/metrics") == 0 || strcmp(path, "/v1/models") == 0;
    if (strcmp(path, "/v1/completions") == 0) {
        kvt_coord_completions(c, req);
    } else if (known && !get) { /* the other routes are read-only */
        char *body = kvt_openai_error_json(405, "use GET", "invalid_request_error", NULL, NULL);
        respond_json(req, 405, body ? body : "{}");
        kvt_free(body);
    } else if (strcmp(path, "/healthz") == 0) {
        respond_json(req, 200, "{\"status\":\"ok\"}");
    } else if (strcmp(path, "/readyz") == 0) {
        bool ready = kvt_coord_ready(c);
        respond_json(req, ready ? 200 : 503, ready ? "{\"status\":\"ready\"}"
                                                   : "{\"status\":\"waiting for nodes\"}");
    } else if (strcmp(path, "/metrics") == 0) {
        metrics(c, req);
    } else if (strcmp(path, "/v1/models") == 0) {
        const char *names[1] = {c->model_name};
        char *body = kvt_openai_models_json(names, 1, (int64_t)time(NULL));
        if (body)
            respond_json(req, 200, body);
        else
            kvt_http_respond(req, 500, "application/json", "{}", 2);
        kvt_free(body);
    } else {
        char *body = kvt_openai_error_json(404, "no such route", "invalid_request_error", NULL,
                                           NULL);
        respond_json(req, 404, body ? body : "{}");
        kvt_free(body);
    }
}

/* "KEY=TENANT,KEY2=TENANT2": every key maps to its tenant (the salt of
 * that tenant's block keys, invariant 6). */
static kvt_status_t parse_key_list(kvt_coord_t *c, const char *spec);

/* "@FILE": one KEY=TENANT per line; blank lines and lines starting with
 * '#' are skipped (keys stay out of the process list and the environment). */
static kvt_status_t parse_key_file(kvt_coord_t *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        kvt_log_error("cannot read the api key file path=%s", path);
        return KVT_ERR_IO;
    }
    char *list = kvt_calloc("coord api key file", 1, 1u << 20), line[512];
    size_t at = 0;
    kvt_status_t st = list ? KVT_OK : KVT_ERR_NOMEM;
    while (st == KVT_OK && fgets(line, sizeof(line), f)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (n == 0 || line[0] == '#')
            continue;
        if (at + n + 2 >= (1u << 20) || strchr(line, ','))
            st = KVT_ERR_INVALID;
        else
            at += (size_t)sprintf(list + at, "%s%s", at ? "," : "", line);
    }
    fclose(f);
    if (st == KVT_OK)
        st = at ? parse_key_list(c, list) : KVT_ERR_INVALID;
    if (st != KVT_OK)
        kvt_log_error("bad api key file path=%s (want KEY=TENANT lines)", path);
    kvt_free(list);
    return st;
}

static kvt_status_t parse_keys(kvt_coord_t *c, const char *spec)
{
    if (!spec || !*spec)
        return KVT_OK;
    return spec[0] == '@' ? parse_key_file(c, spec + 1) : parse_key_list(c, spec);
}

static kvt_status_t parse_key_list(kvt_coord_t *c, const char *spec)
{
    c->keys = kvt_calloc("coord api keys", MAX_API_KEYS, sizeof(*c->keys));
    if (!c->keys)
        return KVT_ERR_NOMEM;
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        size_t kl = eq ? (size_t)(eq - p) : n, tl = eq ? n - kl - 1 : kl;
        if (kl == 0 || kl >= sizeof(c->keys[0].key) || tl >= TENANT_MAX ||
            c->n_keys == MAX_API_KEYS) {
            kvt_log_error("bad api key entry: want KEY=TENANT, keys under 128 bytes");
            return KVT_ERR_INVALID;
        }
        api_key_t *k = &c->keys[c->n_keys++];
        memcpy(k->key, p, kl);
        /* A key without a tenant is its own tenant. */
        memcpy(k->tenant, eq ? eq + 1 : p, tl);
        p += n + (end ? 1 : 0);
    }
    return KVT_OK;
}

static kvt_status_t load_model_side(kvt_coord_t *c)
{
    char path[PATH_MAX], cfg[PATH_MAX];
    const char *dir = c->p.model_dir;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        kvt_log_error("coordinator cannot read the model config path=%s", path);
        return KVT_ERR_IO;
    }
    char *text = kvt_malloc("coord config", 1 << 20);
    size_t len = text ? fread(text, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    kvt_status_t st = text ? kvt_model_config_parse(text, len, path, &c->cfg) : KVT_ERR_NOMEM;
    kvt_free(text);
    if (st != KVT_OK)
        return st;
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", dir);
    st = kvt_tokenizer_load(path, cfg, &c->tok);
    if (st != KVT_OK)
        return st;
    c->have_fim = kvt_prompt_fim_tokens(c->tok, c->p.fim_tokens, &c->fim) == KVT_OK;
    c->n_stop_ids = kvt_prompt_stop_ids(&c->cfg, c->tok, c->have_fim ? &c->fim : NULL,
                                        c->stop_ids, MAX_STOP_IDS);
    const char *name = c->p.model_name;
    if (!name) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/')
            n--;
        const char *base = dir;
        for (size_t i = 0; i < n; i++)
            if (dir[i] == '/' && i + 1 < n)
                base = dir + i + 1;
        snprintf(c->model_name, sizeof(c->model_name), "%.*s", (int)(n - (size_t)(base - dir)),
                 base);
    } else {
        snprintf(c->model_name, sizeof(c->model_name), "%s", name);
    }
    return KVT_OK;
}

static void set_defaults(kvt_coord_params_t *p)
{
    if (!p->rebase_tokens)
        p->rebase_tokens = 512;
    if (!p->max_anchors)
        p->max_anchors = 65536;
    if (!p->max_tokens)
        p->max_tokens = 4096;
    if (!p->attempt_timeout_ms)
        p->attempt_timeout_ms = 60000;
    if (!p->request_timeout_ms)
        p->request_timeout_ms = 300000;
    if (!p->max_attempts)
        p->max_attempts = 3;
}

kvt_status_t kvt_coord_start(const kvt_coord_params_t *params, kvt_coord_t **coord_p)
{
    if (!params->model_dir || !params->http || !params->listen)
        return KVT_ERR_INVALID;
    kvt_coord_t *c = kvt_calloc("coordinator", 1, sizeof(*c));
    if (!c)
        return KVT_ERR_NOMEM;
    c->p = *params;
    set_defaults(&c->p);
    pthread_mutex_init(&c->nodes_lock, NULL);
    kvt_status_t st = load_model_side(c);
    if (st == KVT_OK)
        st = parse_keys(c, c->p.api_keys);
    if (st == KVT_OK)
        st = kvt_anchors_create(c->p.max_anchors, 256u << 20, &c->anchors);
    if (st == KVT_OK)
        st = kvt_coord_net_start(c);
    kvt_http_params_t hp = {.listen = c->p.http, .handler = handle, .arg = c,
                            .max_body = 8u << 20, .max_connections = 1024};
    if (st == KVT_OK)
        st = kvt_http_start(&hp, &c->http);
    if (st != KVT_OK) {
        kvt_coord_stop(c);
        return st;
    }
    kvt_log_info("coordinator started http=%s:%u ucx_port=%u model=%s keys=%zu",
                 c->p.http, kvt_http_port(c->http), kvt_coord_ucx_port(c), c->model_name,
                 c->n_keys);
    *coord_p = c;
    return KVT_OK;
}

void kvt_coord_stop(kvt_coord_t *c)
{
    if (!c)
        return;
    /* The network thread first: it ends every request in flight, which
     * wakes the HTTP threads waiting on them; then the HTTP server. */
    kvt_coord_net_stop(c);
    if (c->http)
        kvt_http_stop(c->http);
    kvt_coord_net_free(c);
    kvt_anchors_destroy(c->anchors);
    kvt_tokenizer_destroy(c->tok);
    kvt_free(c->keys);
    pthread_mutex_destroy(&c->nodes_lock);
    kvt_free(c);
}

uint16_t kvt_coord_http_port(const kvt_coord_t *c) { return kvt_http_port(c->http); }

uint16_t kvt_coord_ucx_port(const kvt_coord_t *c) { return kvt_net_listener_port(c->listener); }

bool kvt_coord_ready(kvt_coord_t *c)
{
    return kvt_coord_alive_nodes(c, "prefill") > 0 && kvt_coord_alive_nodes(c, "decode") > 0;
}
