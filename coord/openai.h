/* coord/openai: the shapes of the OpenAI-compatible completions API
 * (DESIGN.md section 5), over cJSON.  Pure functions: no I/O, no global
 * state, safe on any thread.
 *
 * Owner: coord/ (openai.c).  Parsing validates every known field and names
 * the offending one in the error's param; unknown top-level fields are
 * ignored (OpenAI clients send extras such as best_of or stream_options),
 * unknown fields inside the kvtier object are refused (our own namespace:
 * a typo there should not pass silently).  A JSON null in an optional
 * field means "not given".  Builders return malloc'd text (free with
 * kvt_free), or NULL when memory runs out; generated text may hold any
 * bytes and is emitted as valid UTF-8 (invalid sequences and NUL become
 * U+FFFD, one per byte). */
#ifndef KVT_COORD_OPENAI_H
#define KVT_COORD_OPENAI_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_OPENAI_MAX_STOPS 4
#define KVT_OPENAI_MAX_STOP_BYTES 256
#define KVT_OPENAI_DEFAULT_MAX_TOKENS 16
#define KVT_OPENAI_SSE_DONE "data: [DONE]\n\n"

typedef enum {
    KVT_OPENAI_FORMAT_PLAIN = 0, /* the prompt as is */
    KVT_OPENAI_FORMAT_EFIM = 1,  /* fill-in-the-middle, EFIM layout (cacheable prefix) */
    KVT_OPENAI_FORMAT_FIM = 2,   /* fill-in-the-middle, the model's usual FIM layout */
} kvt_openai_format_t;

typedef struct {
    size_t max_prompt_bytes; /* prompt + suffix bytes; over it: 413 (0: no limit) */
    unsigned max_tokens;     /* max_tokens above it: 400 (0: no limit) */
} kvt_openai_limits_t;

/* A parsed POST /v1/completions body.  Strings are NUL-terminated malloc'd
 * copies owned by the struct (kvt_openai_completion_cleanup). */
typedef struct {
    char *model;
    char *prompt;
    size_t prompt_len;
    char *suffix;            /* NULL when absent or null */
    size_t suffix_len;
    unsigned max_tokens;     /* default 16; 0 is allowed (nothing generated) */
    double temperature;      /* 0..2; default 1 as in OpenAI's API.  The
                                coordinator may override has_temperature ==
                                false with its own default (greedy for code) */
    bool has_temperature;
    double top_p;            /* (0, 1]; default 1 */
    bool has_seed;
    uint64_t seed;           /* 0..2^53 */
    const char *stop[KVT_OPENAI_MAX_STOPS]; /* owned; each 1..256 bytes */
    size_t stop_len[KVT_OPENAI_MAX_STOPS];
    unsigned n_stop;
    bool stream;
    kvt_openai_format_t format; /* default: EFIM when suffix given, else PLAIN;
                                   EFIM/FIM asked without a suffix: an empty one */
    bool cache;                 /* kvtier.cache, default true */
} kvt_openai_completion_t;

/* Why a request was refused: what goes into kvt_openai_error_json. */
typedef struct {
    unsigned status;      /* 400, 413; 500 when memory ran out */
    char message[256];
    const char *type;     /* static: "invalid_request_error" or "server_error" */
    char param[32];       /* "" for none (null in JSON) */
    const char *code;     /* static or NULL */
} kvt_openai_error_t;

/* Parse and validate a completions request.  KVT_OK with *req_p filled;
 * KVT_ERR_INVALID (not JSON, not an object, a wrong type or value: 400;
 * prompt + suffix over lim->max_prompt_bytes: 413, code
 * "prompt_too_large") or KVT_ERR_NOMEM (500), with *err_p filled and
 * *req_p untouched.  lim may be NULL (no limits). */
kvt_status_t kvt_openai_parse_completion(const char *body, size_t len,
                                         const kvt_openai_limits_t *lim,
                                         kvt_openai_completion_t *req_p, kvt_openai_error_t *err_p);
void kvt_openai_completion_cleanup(kvt_openai_completion_t *req);

/* --- errors --- */

/* OpenAI's error type for an HTTP status: 401 "authentication_error",
 * 403 "permission_error", 429 "rate_limit_error", 5xx "server_error" (503
 * too: OpenAI reports overload as a server error, code "overloaded" is the
 * caller's choice), every other status "invalid_request_error". */
const char *kvt_openai_error_type(unsigned status);

/* {"error": {"message","type","param","code"}}: type NULL takes
 * kvt_openai_error_type(status); param and code NULL (or "") become JSON
 * null.  message bytes are made valid UTF-8. */
char *kvt_openai_error_json(unsigned status, const char *message, const char *type,
                            const char *param, const char *code);
/* The same from a parse error. */
char *kvt_openai_error_json_from(const kvt_openai_error_t *err);

/* --- responses --- */

typedef struct {
    uint64_t prompt_tokens, completion_tokens, cached_tokens;
} kvt_openai_usage_t;

/* {"id","object":"text_completion","created","model","choices":[{"text",
 * "index":0,"logprobs":null,"finish_reason"}],"usage":{"prompt_tokens",
 * "completion_tokens","total_tokens","prompt_tokens_details":
 * {"cached_tokens"}}}.  finish_reason NULL becomes null. */
char *kvt_openai_completion_json(const char *id, int64_t created, const char *model,
                                 const char *text, size_t text_len, const char *finish_reason,
                                 const kvt_openai_usage_t *usage);

/* One SSE event "data: {...}\n\n" with the same object as above but one
 * piece of text; finish_reason (NULL: null) and usage (NULL: left out) go
 * on the last chunk.  *len_p (may be NULL) gets the length. */
char *kvt_openai_chunk_sse(const char *id, int64_t created, const char *model, const char *text,
                           size_t text_len, const char *finish_reason,
                           const kvt_openai_usage_t *usage, size_t *len_p);

/* {"object":"list","data":[{"id","object":"model","created","owned_by":"kvtier"}]} */
char *kvt_openai_models_json(const char *const *names, size_t n, int64_t created);

/* --- streaming text --- */

/* Earliest match of any stop string in text[0..len): true with *cut_p =
 * where the match starts (the text to return is text[0..cut)). */
bool kvt_openai_stop_find(const char *text, size_t len, const char *const *stops,
                          unsigned n_stops, size_t *cut_p);
/* How many trailing bytes of text could still be the start of a stop
 * string (a proper prefix of one): a streamer holds them back until more
 * text decides.  Call after kvt_openai_stop_find found nothing. */
size_t kvt_openai_stop_holdback(const char *text, size_t len, const char *const *stops,
                                unsigned n_stops);
/* How many trailing bytes are an unfinished but so far valid UTF-8
 * sequence (0..3): a streamer holds them back so a character split across
 * tokens is not sent as U+FFFD. */
size_t kvt_openai_utf8_holdback(const char *text, size_t len);

#endif
