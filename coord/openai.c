/* coord/openai: OpenAI completions request parsing and response building
 * (openai.h), over cJSON.
 *
 * Owner: coord/.  Pure functions, no shared state; any thread.  Parsing
 * goes field group by field group (prompt, sampling, stop, flags, the
 * kvtier object); each helper fills the request or the error and returns
 * false at the first problem, so exactly one error is reported, naming its
 * field.  Builders go through cJSON and print unformatted; generated text
 * is made valid UTF-8 first (text_lossy), since tokens may split
 * characters and models may emit any bytes. */
#include "coord/openai.h"

#include "common/alloc.h"
#include "common/utf8.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEED 9007199254740992.0 /* 2^53: exact in a JSON number */

/* ------------------------------------------------------------- errors */

const char *kvt_openai_error_type(unsigned status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

__attribute__((format(printf, 5, 6)))
static bool fail(kvt_openai_error_t *e, unsigned status, const char *param, const char *code,
                 const char *fmt, ...)
{
    e->status = status;
    e->type = kvt_openai_error_type(status);
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return false;
}

static bool fail_nomem(kvt_openai_error_t *e)
{
    return fail(e, 500, NULL, NULL, "out of memory");
}

static bool fail_type(kvt_openai_error_t *e, const char *param, const char *want)
{
    return fail(e, 400, param, "invalid_type", "'%s' must be %s", param, want);
}

/* --------------------------------------------------------------- text */

static bool add_text(cJSON *obj, const char *name, const char *bytes, size_t len)
{
    char *t = kvt_utf8_lossy(bytes ? bytes : "", bytes ? len : 0);
    bool ok = t && cJSON_AddStringToObject(obj, name, t);
    kvt_free(t);
    return ok;
}

size_t kvt_openai_utf8_holdback(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t k = 1; k <= 3 && k <= len; k++) {
        if ((s[len - k] & 0xc0) != 0x80) { /* the last lead byte */
            bool partial;
            kvt_utf8_seq(s + len - k, k, &partial);
            return partial ? k : 0;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ parsing */

static char *dup_str(const char *s, size_t *len_p)
{
    size_t n = strlen(s);
    char *d = kvt_malloc("openai string", n + 1);
    if (d) {
        memcpy(d, s, n + 1);
        if (len_p)
            *len_p = n;
    }
    return d;
}

static bool is_given(const cJSON *v) { return v && !cJSON_IsNull(v); }

static bool is_integer(const cJSON *v)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && floor(v->valuedouble) == v->valuedouble;
}

static bool parse_prompt(const cJSON *root, kvt_openai_completion_t *r,
                         const kvt_openai_limits_t *lim, kvt_openai_error_t *e)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!is_given(p))
        return fail(e, 400, "prompt", "missing_required_parameter", "you must provide a prompt");
    if (cJSON_IsArray(p)) {
        if (cJSON_GetArraySize(p) != 1)
            return fail(e, 400, "prompt", "invalid_value", "only one prompt per request");
        p = cJSON_GetArrayItem(p, 0);
    }
    if (!cJSON_IsString(p))
        return fail_type(e, "prompt", "a string (token arrays are not supported)");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "suffix");
    if (is_given(s) && !cJSON_IsString(s))
        return fail_type(e, "suffix", "a string or null");
    size_t total = strlen(p->valuestring) + (is_given(s) ? strlen(s->valuestring) : 0);
    if (lim && lim->max_prompt_bytes && total > lim->max_prompt_bytes)
        return fail(e, 413, "prompt", "prompt_too_large",
                    "prompt and suffix are %zu bytes, over the limit of %zu", total,
                    lim->max_prompt_bytes);
    if (!(r->prompt = dup_str(p->valuestring, &r->prompt_len)))
        return fail_nomem(e);
    if (is_given(s) && !(r->suffix = dup_str(s->valuestring, &r->suffix_len)))
        return fail_nomem(e);
    return true;
}

static bool parse_model(const cJSON *root, kvt_openai_completion_t *r, kvt_openai_error_t *e)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!is_given(m))
        return fail(e, 400, "model", "missing_required_parameter", "you must provide a model");
    if (!cJSON_IsString(m))
        return fail_type(e, "model", "a string");
    if (!(r->model = dup_str(m->valuestring, NULL)))
        return fail_nomem(e);
    return true;
}

/* A number field in [lo, hi] (lo_open: lo itself excluded). */
static bool parse_range(const cJSON *root, const char *name, double lo, bool lo_open, double hi,
                        double *out, bool *given_p, kvt_openai_error_t *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!is_given(v))
        return true;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return fail_type(e, name, "a number");
    double d = v->valuedouble;
    if (d > hi || d < lo || (lo_open && d == lo))
        return fail(e, 400, name, "invalid_value", "'%s' must be %s %g and <= %g", name,
                    lo_open ? ">" : ">=", lo, hi);
    *out = d;
    if (given_p)
        *given_p = true;
    return true;
}

static bool parse_sampling(const cJSON *root, kvt_openai_completion_t *r,
                           const kvt_openai_limits_t *lim, kvt_openai_error_t *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
    if (is_given(v)) {
        if (!is_integer(v))
            return fail_type(e, "max_tokens", "an integer");
        double cap = lim && lim->max_tokens ? lim->max_tokens : (double)UINT32_MAX;
        if (v->valuedouble < 0 || v->valuedouble > cap)
            return fail(e, 400, "max_tokens", "invalid_value",
                        "'max_tokens' must be between 0 and %.0f", cap);
        r->max_tokens = (unsigned)v->valuedouble;
    }
    if (!parse_range(root, "temperature", 0, false, 2, &r->temperature, &r->has_temperature, e) ||
        !parse_range(root, "top_p", 0, true, 1, &r->top_p, NULL, e))
        return false;
    v = cJSON_GetObjectItemCaseSensitive(root, "seed");
    if (is_given(v)) {
        if (!is_integer(v))
            return fail_type(e, "seed", "an integer");
        if (v->valuedouble < 0 || v->valuedouble > MAX_SEED)
            return fail(e, 400, "seed", "invalid_value", "'seed' must be between 0 and 2^53");
        r->seed = (uint64_t)v->valuedouble;
        r->has_seed = true;
    }
    return true;
}

static bool add_stop(kvt_openai_completion_t *r, const cJSON *s, kvt_openai_error_t *e)
{
    if (!cJSON_IsString(s))
        return fail_type(e, "stop", "a string or an array of strings");
    size_t n = strlen(s->valuestring);
    if (n == 0 || n > KVT_OPENAI_MAX_STOP_BYTES)
        return fail(e, 400, "stop", "invalid_value", "each stop string must be 1 to %d bytes",
                    KVT_OPENAI_MAX_STOP_BYTES);
    char *d = dup_str(s->valuestring, NULL);
    if (!d)
        return fail_nomem(e);
    r->stop[r->n_stop] = d;
    r->stop_len[r->n_stop++] = n;
    return true;
}

static bool parse_stop(const cJSON *root, kvt_openai_completion_t *r, kvt_openai_error_t *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (!is_given(v))
        return true;
    if (!cJSON_IsArray(v))
        return add_stop(r, v, e);
    if (cJSON_GetArraySize(v) > KVT_OPENAI_MAX_STOPS)
        return fail(e, 400, "stop", "invalid_value", "at most %d stop strings",
                    KVT_OPENAI_MAX_STOPS);
    const cJSON *s;
    cJSON_ArrayForEach(s, v)
        if (!add_stop(r, s, e))
            return false;
    return true;
}

static bool parse_bool(const cJSON *root, const char *name, bool *out, kvt_openai_error_t *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!is_given(v))
        return true;
    if (!cJSON_IsBool(v))
        return fail_type(e, name, "a boolean");
    *out = cJSON_IsTrue(v);
    return true;
}

/* stream, and the OpenAI fields kvtier takes only in their default form. */
static bool parse_flags(const cJSON *root, kvt_openai_completion_t *r, kvt_openai_error_t *e)
{
    bool echo = false;
    if (!parse_bool(root, "stream", &r->stream, e) || !parse_bool(root, "echo", &echo, e))
        return false;
    if (echo)
        return fail(e, 400, "echo", "unsupported_value", "'echo' is not supported");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "n");
    if (is_given(v) && !is_integer(v))
        return fail_type(e, "n", "an integer");
    if (is_given(v) && v->valuedouble != 1)
        return fail(e, 400, "n", "unsupported_value", "only n = 1 is supported");
    v = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (is_given(v) && !is_integer(v))
        return fail_type(e, "logprobs", "an integer or null");
    if (is_given(v) && v->valuedouble != 0)
        return fail(e, 400, "logprobs", "unsupported_value", "'logprobs' is not supported");
    v = cJSON_GetObjectItemCaseSensitive(root, "user");
    if (is_given(v) && !cJSON_IsString(v))
        return fail_type(e, "user", "a string");
    return true;
}

static bool parse_kvtier(const cJSON *root, kvt_openai_completion_t *r, kvt_openai_error_t *e)
{
    r->format = r->suffix ? KVT_OPENAI_FORMAT_EFIM : KVT_OPENAI_FORMAT_PLAIN;
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "kvtier");
    if (!is_given(k))
        return true;
    if (!cJSON_IsObject(k))
        return fail_type(e, "kvtier", "an object");
    const cJSON *f;
    cJSON_ArrayForEach(f, k) {
        if (strcmp(f->string, "format") == 0 && is_given(f)) {
            const char *s = cJSON_IsString(f) ? f->valuestring : NULL;
            if (!s)
                return fail_type(e, "kvtier.format", "a string");
            if (strcmp(s, "efim") == 0)
                r->format = KVT_OPENAI_FORMAT_EFIM;
            else if (strcmp(s, "fim") == 0)
                r->format = KVT_OPENAI_FORMAT_FIM;
            else if (strcmp(s, "plain") == 0)
                r->format = KVT_OPENAI_FORMAT_PLAIN;
            else
                return fail(e, 400, "kvtier.format", "invalid_value",
                            "'kvtier.format' must be efim, fim or plain");
        } else if (strcmp(f->string, "cache") == 0) {
            if (!parse_bool(k, "cache", &r->cache, e))
                return fail_type(e, "kvtier.cache", "a boolean");
        } else if (strcmp(f->string, "format") != 0) {
            return fail(e, 400, "kvtier", "unknown_parameter", "unknown field 'kvtier.%.64s'",
                        f->string);
        }
    }
    return true; /* efim/fim without a suffix: an empty suffix */
}

/* The body must be one JSON object, with nothing but whitespace after. */
static cJSON *parse_root(const char *body, size_t len, kvt_openai_error_t *e)
{
    const char *end = NULL;
    cJSON *root = body ? cJSON_ParseWithLengthOpts(body, len, &end, false) : NULL;
    if (root && end)
        for (const char *p = end; p < body + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != '\0') {
                cJSON_Delete(root);
                root = NULL;
                break;
            }
    if (!root)
        fail(e, 400, NULL, "invalid_json", "the request body is not valid JSON");
    else if (!cJSON_IsObject(root)) {
        fail(e, 400, NULL, "invalid_json", "the request body must be a JSON object");
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

kvt_status_t kvt_openai_parse_completion(const char *body, size_t len,
                                         const kvt_openai_limits_t *lim,
                                         kvt_openai_completion_t *req_p, kvt_openai_error_t *err_p)
{
    kvt_openai_error_t e = {0};
    kvt_openai_completion_t r = {.max_tokens = KVT_OPENAI_DEFAULT_MAX_TOKENS,
                                 .temperature = 1.0, .top_p = 1.0, .cache = true};
    cJSON *root = parse_root(body, len, &e);
    bool ok = root && parse_model(root, &r, &e) && parse_prompt(root, &r, lim, &e) &&
              parse_sampling(root, &r, lim, &e) && parse_stop(root, &r, &e) &&
              parse_flags(root, &r, &e) && parse_kvtier(root, &r, &e);
    cJSON_Delete(root);
    if (!ok) {
        kvt_openai_completion_cleanup(&r);
        if (err_p)
            *err_p = e;
        return e.status == 500 ? KVT_ERR_NOMEM : KVT_ERR_INVALID;
    }
    *req_p = r;
    return KVT_OK;
}

void kvt_openai_completion_cleanup(kvt_openai_completion_t *req)
{
    if (!req)
        return;
    kvt_free(req->model);
    kvt_free(req->prompt);
    kvt_free(req->suffix);
    for (unsigned i = 0; i < req->n_stop; i++)
        kvt_free((void *)req->stop[i]);
    memset(req, 0, sizeof(*req));
}

/* ----------------------------------------------------------- builders */

/* Print obj unformatted and delete it; NULL on failure (obj may be NULL). */
static char *print_delete(cJSON *obj, bool ok)
{
    char *s = obj && ok ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    return s;
}

static bool add_str_or_null(cJSON *obj, const char *name, const char *s)
{
    return (s && s[0] ? cJSON_AddStringToObject(obj, name, s) : cJSON_AddNullToObject(obj, name)) !=
           NULL;
}

char *kvt_openai_error_json(unsigned status, const char *message, const char *type,
                            const char *param, const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = root ? cJSON_AddObjectToObject(root, "error") : NULL;
    const char *msg = message ? message : "";
    bool ok = err && add_text(err, "message", msg, strlen(msg)) &&
              cJSON_AddStringToObject(err, "type", type ? type : kvt_openai_error_type(status)) &&
              add_str_or_null(err, "param", param) && add_str_or_null(err, "code", code);
    return print_delete(root, ok);
}

char *kvt_openai_error_json_from(const kvt_openai_error_t *err)
{
    return kvt_openai_error_json(err->status, err->message, err->type, err->param, err->code);
}

static bool add_usage(cJSON *obj, const kvt_openai_usage_t *u)
{
    cJSON *us = cJSON_AddObjectToObject(obj, "usage");
    cJSON *det = us ? cJSON_CreateObject() : NULL;
    bool ok = us && det &&
              cJSON_AddNumberToObject(us, "prompt_tokens", (double)u->prompt_tokens) &&
              cJSON_AddNumberToObject(us, "completion_tokens", (double)u->completion_tokens) &&
              cJSON_AddNumberToObject(us, "total_tokens",
                                      (double)(u->prompt_tokens + u->completion_tokens)) &&
              cJSON_AddNumberToObject(det, "cached_tokens", (double)u->cached_tokens);
    if (det && !(ok && cJSON_AddItemToObject(us, "prompt_tokens_details", det))) {
        cJSON_Delete(det);
        ok = false;
    }
    return ok;
}

/* The text_completion object shared by whole replies and stream chunks. */
static cJSON *completion_obj(const char *id, int64_t created, const char *model, const char *text,
                             size_t text_len, const char *finish_reason,
                             const kvt_openai_usage_t *usage)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *choices = root ? cJSON_CreateArray() : NULL;
    cJSON *c = choices ? cJSON_CreateObject() : NULL;
    bool ok = c && cJSON_AddStringToObject(root, "id", id ? id : "") &&
              cJSON_AddStringToObject(root, "object", "text_completion") &&
              cJSON_AddNumberToObject(root, "created", (double)created) &&
              cJSON_AddStringToObject(root, "model", model ? model : "") &&
              add_text(c, "text", text, text_len) && cJSON_AddNumberToObject(c, "index", 0) &&
              cJSON_AddNullToObject(c, "logprobs") &&
              add_str_or_null(c, "finish_reason", finish_reason);
    if (c && !(ok && cJSON_AddItemToArray(choices, c))) {
        cJSON_Delete(c);
        ok = false;
    }
    if (choices && !(ok && cJSON_AddItemToObject(root, "choices", choices))) {
        cJSON_Delete(choices);
        ok = false;
    }
    if (ok && usage)
        ok = add_usage(root, usage);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

char *kvt_openai_completion_json(const char *id, int64_t created, const char *model,
                                 const char *text, size_t text_len, const char *finish_reason,
                                 const kvt_openai_usage_t *usage)
{
    static const kvt_openai_usage_t zero = {0};
    cJSON *o = completion_obj(id, created, model, text, text_len, finish_reason,
                              usage ? usage : &zero);
    return print_delete(o, o != NULL);
}

char *kvt_openai_chunk_sse(const char *id, int64_t created, const char *model, const char *text,
                           size_t text_len, const char *finish_reason,
                           const kvt_openai_usage_t *usage, size_t *len_p)
{
    cJSON *o = completion_obj(id, created, model, text, text_len, finish_reason, usage);
    char *json = print_delete(o, o != NULL);
    if (!json)
        return NULL;
    size_t n = strlen(json);
    char *ev = kvt_malloc("openai sse chunk", n + 9);
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, json, n);
        memcpy(ev + 6 + n, "\n\n", 3);
        if (len_p)
            *len_p = n + 8;
    }
    cJSON_free(json);
    return ev;
}

char *kvt_openai_models_json(const char *const *names, size_t n, int64_t created)
{
    cJSON *root = cJSON_CreateObject();
    bool ok = root && cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = ok ? cJSON_AddArrayToObject(root, "data") : NULL;
    ok = data != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        ok = m && cJSON_AddStringToObject(m, "id", names[i]) &&
             cJSON_AddStringToObject(m, "object", "model") &&
             cJSON_AddNumberToObject(m, "created", (double)created) &&
             cJSON_AddStringToObject(m, "owned_by", "kvtier");
        if (m && !(ok && cJSON_AddItemToArray(data, m))) {
            cJSON_Delete(m);
            ok = false;
        }
    }
    return print_delete(root, ok);
}

/* -------------------------------------------------------- stop strings */

bool kvt_openai_stop_find(const char *text, size_t len, const char *const *stops,
                          unsigned n_stops, size_t *cut_p)
{
    size_t best = SIZE_MAX;
    for (unsigned i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        const char *m = sl ? memmem(text, len, stops[i], sl) : NULL;
        if (m && (size_t)(m - text) < best)
            best = (size_t)(m - text);
    }
    if (best == SIZE_MAX)
        return false;
    *cut_p = best;
    return true;
}

size_t kvt_openai_stop_holdback(const char *text, size_t len, const char *const *stops,
                                unsigned n_stops)
{
    size_t hold = 0;
    for (unsigned i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl < 2)
            continue; /* a one-byte stop has no proper prefix */
        size_t k = sl - 1 < len ? sl - 1 : len;
        for (; k > hold; k--)
            if (memcmp(text + len - k, stops[i], k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}
