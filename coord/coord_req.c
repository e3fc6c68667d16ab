/* POST /v1/completions on the coordinator (coordInt.h): authenticate,
 * parse, apply EFIM anchors, tokenize, hand the request to the network
 * thread, then answer -- all at once, or as SSE events while tokens come.
 *
 * Text is the detokenized answer so far; stop strings cut it (and end the
 * work on the nodes); a stream holds back bytes that may still become a
 * stop string or that end inside a UTF-8 character. */
#include "coord/coordInt.h"
#include "coord/openai.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define WAIT_SLICE_MS 50

/* --- request objects --- */

creq_t *kvt_creq_new(void)
{
    creq_t *r = kvt_calloc("coord request", 1, sizeof(*r));
    if (!r)
        return NULL;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    r->refs = 1;
    return r;
}

void kvt_creq_unref(creq_t *r)
{
    pthread_mutex_lock(&r->lock);
    bool last = --r->refs == 0;
    pthread_mutex_unlock(&r->lock);
    if (!last)
        return;
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    kvt_free(r->tokens);
    kvt_free(r->keys);
    kvt_free(r->out);
    kvt_free(r);
}

void kvt_creq_finish(creq_t *r, const char *finish, unsigned err_status, const char *error)
{
    pthread_mutex_lock(&r->lock);
    if (!r->done) {
        r->done = true;
        r->finish = finish;
        r->err_status = err_status;
        if (error)
            snprintf(r->error, sizeof(r->error), "%s", error);
    }
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Wait up to ms for more than `have` tokens or the end. */
static void creq_wait(creq_t *r, size_t have, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += (long)ms * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&r->lock);
    while (!r->done && r->n_out <= have)
        if (pthread_cond_timedwait(&r->cond, &r->lock, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&r->lock);
}

/* --- answering --- */

static void respond_error(kvt_http_req_t *req, unsigned status, const char *msg,
                          const char *param, const char *code)
{
    char *body = kvt_openai_error_json(status, msg, kvt_openai_error_type(status), param, code);
    if (!body) {
        kvt_http_respond(req, 500, "application/json", "{}", 2);
        return;
    }
    kvt_http_respond(req, status, "application/json", body, strlen(body));
    kvt_free(body);
}

/* The tenant of the request's API key; NULL (after a 401) when keys are
 * configured and the request's is missing or wrong. */
static const char *authenticate(kvt_coord_t *c, kvt_http_req_t *req)
{
    if (c->n_keys == 0)
        return "";
    const char *auth = kvt_http_req_header(req, "Authorization");
    const char *key = auth && strncmp(auth, "Bearer ", 7) == 0 ? auth + 7 : NULL;
    for (size_t i = 0; key && i < c->n_keys; i++)
        if (strcmp(c->keys[i].key, key) == 0)
            return c->keys[i].tenant;
    kvt_http_add_header(req, "WWW-Authenticate", "Bearer");
    respond_error(req, 401, key ? "Incorrect API key provided." : "Missing API key.", NULL,
                  "invalid_api_key");
    return NULL;
}

/* The text of tokens out[0..n): malloc'd, *len_p bytes. */
static char *detok(kvt_coord_t *c, const uint32_t *ids, size_t n, size_t *len_p)
{
    size_t need = 0;
    kvt_status_t st = kvt_tokenizer_decode(c->tok, ids, n, KVT_TOK_SKIP_SPECIAL, NULL, 0, &need);
    if (st != KVT_OK && st != KVT_ERR_TOO_LARGE)
        return NULL;
    char *text = kvt_malloc("coord text", need + 1);
    if (text && kvt_tokenizer_decode(c->tok, ids, n, KVT_TOK_SKIP_SPECIAL, text, need + 1,
                                     len_p) != KVT_OK) {
        kvt_free(text);
        return NULL;
    }
    return text;
}

/* A copy of the request's tokens so far (under its lock). */
static uint32_t *snapshot_out(creq_t *r, size_t *n_p, bool *done_p)
{
    pthread_mutex_lock(&r->lock);
    size_t n = r->n_out;
    uint32_t *ids = kvt_malloc("coord out", (n ? n : 1) * sizeof(*ids));
    if (ids)
        memcpy(ids, r->out, n * sizeof(*ids));
    *n_p = n;
    *done_p = r->done;
    pthread_mutex_unlock(&r->lock);
    return ids;
}

/* --- building the prompt --- */

typedef struct {
    kvt_openai_completion_t oa;
    const char *tenant;
    size_t anchor_len;
} prep_t;

static kvt_status_t tokenize(kvt_coord_t *c, const prep_t *pp, uint32_t **ids_p, size_t *n_p,
                             size_t *stable_p)
{
    kvt_prompt_t pr = {
        .format = pp->oa.format == KVT_OPENAI_FORMAT_EFIM  ? KVT_FORMAT_EFIM
                : pp->oa.format == KVT_OPENAI_FORMAT_FIM ? KVT_FORMAT_FIM : KVT_FORMAT_PLAIN,
        .prefix = pp->oa.prompt, .prefix_len = pp->oa.prompt_len,
        .suffix = pp->oa.suffix ? pp->oa.suffix : "", .suffix_len = pp->oa.suffix_len,
        .anchor_len = pp->anchor_len,
    };
    pr.add_bos = kvt_tokenizer_add_bos(c->tok, &pr.bos);
    size_t need = 0;
    kvt_status_t st = kvt_prompt_build(c->tok, &c->fim, &pr, NULL, 0, &need, NULL);
    if (st != KVT_OK && st != KVT_ERR_TOO_LARGE)
        return st;
    uint32_t *ids = kvt_malloc("coord prompt", (need ? need : 1) * sizeof(*ids));
    if (!ids)
        return KVT_ERR_NOMEM;
    st = kvt_prompt_build(c->tok, &c->fim, &pr, ids, need, n_p, stable_p);
    if (st != KVT_OK) {
        kvt_free(ids);
        return st;
    }
    *ids_p = ids;
    return KVT_OK;
}

/* EFIM: the anchor whose prefix0 the prompt extends, or a new one; a new
 * one too when inc has grown past the rebase limit. */
static kvt_status_t build_tokens(kvt_coord_t *c, prep_t *pp, creq_t *r)
{
    kvt_openai_completion_t *oa = &pp->oa;
    bool efim = oa->format == KVT_OPENAI_FORMAT_EFIM;
    pp->anchor_len = oa->prompt_len;
    bool found = efim && oa->cache &&
                 kvt_anchors_find(c->anchors, pp->tenant, c->model_name, oa->suffix,
                                  oa->suffix_len, oa->prompt, oa->prompt_len, &pp->anchor_len);
    size_t stable = 0;
    kvt_status_t st = tokenize(c, pp, &r->tokens, &r->n, &stable);
    if (st == KVT_OK && found && r->n - stable > c->p.rebase_tokens) {
        kvt_log_debug("efim rebase inc_tokens=%zu limit=%u", r->n - stable, c->p.rebase_tokens);
        kvt_free(r->tokens);
        r->tokens = NULL;
        pp->anchor_len = oa->prompt_len;
        found = false;
        st = tokenize(c, pp, &r->tokens, &r->n, &stable);
    }
    if (st == KVT_OK && efim && oa->cache && !found)
        (void)kvt_anchors_add(c->anchors, pp->tenant, c->model_name, oa->suffix, oa->suffix_len,
                              oa->prompt, oa->prompt_len); /* a hint: failure is not fatal */
    return st;
}

static void fill_request(kvt_coord_t *c, const prep_t *pp, creq_t *r)
{
    const kvt_openai_completion_t *oa = &pp->oa;
    snprintf(r->id, sizeof(r->id), "cmpl-%llx%06llx", (unsigned long long)(time(NULL) & 0xffffffff),
             (unsigned long long)atomic_fetch_add(&c->req_counter, 1));
    snprintf(r->tenant, sizeof(r->tenant), "%s", pp->tenant);
    r->temperature = (float)(oa->has_temperature ? oa->temperature : c->p.temperature);
    r->top_p = (float)oa->top_p;
    r->seed = oa->has_seed ? oa->seed : 0;
    r->max_tokens = oa->max_tokens;
    r->cache = oa->cache;
    memcpy(r->stop_ids, c->stop_ids, c->n_stop_ids * sizeof(uint32_t));
    r->n_stop_ids = c->n_stop_ids;
    r->t_submit = kvt_time_ns();
    r->deadline_ns = r->t_submit + (uint64_t)c->p.request_timeout_ms * 1000000ull;
}

/* Parse, check and tokenize; on any problem the client has its 4xx and
 * NULL comes back. */
static creq_t *prepare(kvt_coord_t *c, kvt_http_req_t *req, prep_t *pp)
{
    size_t len;
    const char *body = kvt_http_req_body(req, &len);
    kvt_openai_limits_t lim = {.max_prompt_bytes = 4u << 20, .max_tokens = c->p.max_tokens};
    kvt_openai_error_t err;
    if (kvt_openai_parse_completion(body, len, &lim, &pp->oa, &err) != KVT_OK) {
        respond_error(req, err.status, err.message, err.param[0] ? err.param : NULL, err.code);
        return NULL;
    }
    if (strcmp(pp->oa.model, c->model_name) != 0) {
        char msg[320];
        snprintf(msg, sizeof(msg), "The model `%.200s` does not exist.", pp->oa.model);
        respond_error(req, 404, msg, "model", "model_not_found");
        return NULL;
    }
    if (pp->oa.format != KVT_OPENAI_FORMAT_PLAIN && !c->have_fim) {
        respond_error(req, 400, "this model has no fill-in-the-middle tokens", "suffix", NULL);
        return NULL;
    }
    creq_t *r = kvt_creq_new();
    kvt_status_t st = r ? build_tokens(c, pp, r) : KVT_ERR_NOMEM;
    if (st != KVT_OK) {
        respond_error(req, st == KVT_ERR_INVALID ? 400 : 500,
                      st == KVT_ERR_INVALID ? "the prompt is not valid UTF-8 text"
                                            : "cannot tokenize the prompt",
                      "prompt", NULL);
    } else if (r->n == 0 || r->n + pp->oa.max_tokens > c->cfg.max_pos) {
        char msg[256];
        snprintf(msg, sizeof(msg), "This model's maximum context length is %u tokens. However, "
                 "you requested %zu tokens (%zu in the prompt, %u for the completion).",
                 c->cfg.max_pos, r->n + pp->oa.max_tokens, r->n, pp->oa.max_tokens);
        respond_error(req, 400, msg, "prompt", "context_length_exceeded");
        st = KVT_ERR_TOO_LARGE;
    }
    if (st != KVT_OK) {
        if (r)
            kvt_creq_unref(r);
        return NULL;
    }
    fill_request(c, pp, r);
    return r;
}

/* --- non-streaming --- */

static void answer_whole(kvt_coord_t *c, kvt_http_req_t *req, creq_t *r, const prep_t *pp)
{
    size_t n;
    bool done;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        done = r->done;
        pthread_mutex_unlock(&r->lock);
        if (done)
            break;
        if (atomic_load(&c->stop)) /* a request that came in as the thread left */
            kvt_creq_finish(r, NULL, 503, "coordinator stopping");
        creq_wait(r, SIZE_MAX / 2, 1000);
    }
    if (r->err_status) {
        respond_error(req, r->err_status, r->error, NULL, NULL);
        return;
    }
    uint32_t *ids = snapshot_out(r, &n, &done);
    size_t len = 0;
    char *text = ids ? detok(c, ids, n, &len) : NULL;
    const char *finish = r->finish;
    size_t cut;
    if (text && kvt_openai_stop_find(text, len, pp->oa.stop, pp->oa.n_stop, &cut)) {
        len = cut;
        finish = "stop";
    }
    kvt_openai_usage_t u = {.prompt_tokens = r->n, .completion_tokens = n,
                            .cached_tokens = r->cached_tokens};
    char *body = text ? kvt_openai_completion_json(r->id, (int64_t)time(NULL), c->model_name,
                                                   text, len, finish, &u)
                      : NULL;
    if (body)
        kvt_http_respond(req, 200, "application/json", body, strlen(body));
    else
        respond_error(req, 500, "cannot build the answer", NULL, NULL);
    atomic_fetch_add(&c->m_completion_tokens, n);
    atomic_fetch_add(&c->m_cached_tokens, r->cached_tokens);
    kvt_free(body);
    kvt_free(text);
    kvt_free(ids);
}

/* --- streaming --- */

typedef struct {
    kvt_coord_t *c;
    creq_t *r;
    prep_t *pp;
    size_t sent;            /* bytes of the answer's text already sent */
    char *buf;              /* formatted events not yet handed out */
    size_t len, at;
    bool finished, over;
} stream_t;

static void stream_put(stream_t *s, char *ev, size_t n)
{
    if (!ev)
        return;
    size_t live = s->len - s->at;
    if (s->at) { /* drop what was handed out already */
        memmove(s->buf, s->buf + s->at, live);
        s->len = live;
        s->at = 0;
    }
    char *nb = kvt_realloc("coord stream", s->buf, live + n);
    if (nb) {
        memcpy(nb + live, ev, n);
        s->buf = nb;
        s->len = live + n;
    }
    kvt_free(ev);
}

static void stream_chunk(stream_t *s, const char *text, size_t len, const char *finish,
                         const kvt_openai_usage_t *u)
{
    size_t n = 0;
    char *ev = kvt_openai_chunk_sse(s->r->id, (int64_t)time(NULL), s->c->model_name, text, len,
                                    finish, u, &n);
    stream_put(s, ev, n);
}

/* Turn what the request has now into events. */
static void stream_fill(stream_t *s)
{
    kvt_coord_t *c = s->c;
    creq_t *r = s->r;
    size_t n, len = 0;
    bool done;
    uint32_t *ids = snapshot_out(r, &n, &done);
    char *text = ids ? detok(c, ids, n, &len) : NULL;
    kvt_free(ids);
    if (!text)
        return;
    const char *finish = done ? r->finish : NULL;
    size_t cut, end = len;
    if (kvt_openai_stop_find(text, len, s->pp->oa.stop, s->pp->oa.n_stop, &cut)) {
        end = cut;
        finish = "stop";
        if (!done)
            kvt_coord_cancel(c, r);
        done = true;
    } else if (!done) {
        size_t hold = kvt_openai_stop_holdback(text, len, s->pp->oa.stop, s->pp->oa.n_stop);
        size_t uh = kvt_openai_utf8_holdback(text, len);
        hold = hold > uh ? hold : uh;
        end = len > hold ? len - hold : 0;
    }
    if (end > s->sent) {
        stream_chunk(s, text + s->sent, end - s->sent, NULL, NULL);
        s->sent = end;
    }
    if (done) {
        if (r->err_status) {
            char *e = kvt_openai_error_json(r->err_status, r->error,
                                            kvt_openai_error_type(r->err_status), NULL, NULL);
            char *ev = e ? kvt_malloc("coord sse", strlen(e) + 9) : NULL;
            if (ev)
                sprintf(ev, "data: %s\n\n", e);
            stream_put(s, ev, ev ? strlen(ev) : 0);
            kvt_free(e);
        } else {
            kvt_openai_usage_t u = {.prompt_tokens = r->n, .completion_tokens = n,
                                    .cached_tokens = r->cached_tokens};
            stream_chunk(s, "", 0, finish ? finish : "length", &u);
            atomic_fetch_add(&c->m_completion_tokens, n);
            atomic_fetch_add(&c->m_cached_tokens, r->cached_tokens);
        }
        char *d = kvt_malloc("coord sse", sizeof(KVT_OPENAI_SSE_DONE));
        if (d)
            memcpy(d, KVT_OPENAI_SSE_DONE, sizeof(KVT_OPENAI_SSE_DONE));
        stream_put(s, d, sizeof(KVT_OPENAI_SSE_DONE) - 1);
        s->finished = true;
    }
    kvt_free(text);
}

static long stream_next(void *arg, char *out, size_t cap)
{
    stream_t *s = arg;
    if (s->at == s->len) {
        if (s->finished)
            return KVT_HTTP_STREAM_END;
        pthread_mutex_lock(&s->r->lock);
        size_t have = s->r->n_out;
        pthread_mutex_unlock(&s->r->lock);
        creq_wait(s->r, have, WAIT_SLICE_MS);
        if (atomic_load(&s->c->stop))
            kvt_creq_finish(s->r, NULL, 503, "coordinator stopping");
        stream_fill(s);
        if (s->at == s->len)
            return s->finished ? KVT_HTTP_STREAM_END : 0;
    }
    size_t n = s->len - s->at < cap ? s->len - s->at : cap;
    memcpy(out, s->buf + s->at, n);
    s->at += n;
    return (long)n;
}

static void stream_done(void *arg, bool client_gone)
{
    stream_t *s = arg;
    if (client_gone)
        kvt_coord_cancel(s->c, s->r);
    kvt_creq_unref(s->r);
    kvt_openai_completion_cleanup(&s->pp->oa);
    kvt_free(s->pp);
    kvt_free(s->buf);
    kvt_free(s);
}

void kvt_coord_completions(kvt_coord_t *c, kvt_http_req_t *req)
{
    if (strcmp(kvt_http_req_method(req), "POST") != 0) {
        respond_error(req, 405, "use POST", NULL, NULL);
        return;
    }
    const char *tenant = authenticate(c, req);
    if (!tenant)
        return;
    prep_t *pp = kvt_calloc("coord prep", 1, sizeof(*pp));
    if (!pp) {
        respond_error(req, 500, "out of memory", NULL, NULL);
        return;
    }
    pp->tenant = tenant;
    creq_t *r = prepare(c, req, pp);
    atomic_fetch_add(&c->m_requests, 1);
    if (r) {
        atomic_fetch_add(&c->m_prompt_tokens, r->n);
        if (kvt_coord_submit(c, r) != KVT_OK) {
            respond_error(req, 429, "too many requests in flight", NULL, NULL);
        } else if (pp->oa.stream) {
            stream_t *s = kvt_calloc("coord stream", 1, sizeof(*s));
            if (s) {
                *s = (stream_t){.c = c, .r = r, .pp = pp};
                if (kvt_http_respond_stream(req, 200, "text/event-stream", stream_next,
                                            stream_done, s) == KVT_OK)
                    return; /* stream_done frees r, pp and s */
                kvt_free(s);
            }
            kvt_coord_cancel(c, r);
            respond_error(req, 500, "cannot start the stream", NULL, NULL);
        } else {
            answer_whole(c, req, r, pp);
        }
        kvt_creq_unref(r);
    }
    kvt_openai_completion_cleanup(&pp->oa);
    kvt_free(pp);
}
