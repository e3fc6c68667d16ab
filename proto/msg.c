/* The checked codec over the protobuf-c code generated from kvtier.proto.
 *
 * Decoding is the trust boundary for everything a peer sends: the input
 * size is capped before protobuf-c sees it, protobuf-c parses (it checks
 * the wire structure, not values), and then every field that later code
 * indexes or copies is checked against its bound: keys are exactly 32
 * bytes, lists, strings and blobs have maxima, enums are among the values
 * this schema knows (proto3 enums are open, so protobuf-c stores any int),
 * floats are finite.  A body that passes may be used without re-checking
 * those bounds.
 *
 * Unknown fields inside a known body are accepted (and kept: re-encoding
 * writes them back), as proto3 requires for forward compatibility; an
 * unknown body type leaves the oneof unset and is rejected.
 *
 * Rejections are logged at debug level only: any peer can produce them
 * cheaply, and the caller decides whether to report (it answers Error). */
#include "proto/msg.h"

#include "common/alloc.h"
#include "common/log.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define KEY_LEN 32
/* Encoded block header bound; the true bound is KVT_BLOCK_HEADER_MAX in
 * kvstore/block.h (152 fixed bytes + 4 per token, 256 tokens), which the
 * protocol layer must not include.  Keep the two equal. */
#define BLOCK_HEADER_MAX (152 + 4 * 256)
#define RKEY_MAX 4096 /* packed UCX rkeys are a few hundred bytes */

#define CHECK(expr)                         \
    do {                                    \
        kvt_status_t check_st_ = (expr);    \
        if (check_st_ != KVT_OK)            \
            return check_st_;               \
    } while (0)

/* What is being checked, for the log line of a rejection. */
typedef struct {
    const char *body;
    size_t item; /* index in the list being walked, or (size_t)-1 */
} ctx_t;

static kvt_status_t reject(const ctx_t *c, const char *field, const char *reason, size_t len,
                           size_t max)
{
    if (c->item == (size_t)-1)
        kvt_log_debug("proto message rejected body=%s field=%s reason=%s len=%zu max=%zu",
                      c->body, field, reason, len, max);
    else
        kvt_log_debug("proto message rejected body=%s field=%s item=%zu reason=%s len=%zu "
                      "max=%zu",
                      c->body, field, c->item, reason, len, max);
    return KVT_ERR_INVALID;
}

/* --- field checks --- */

static kvt_status_t check_str(const ctx_t *c, const char *field, const char *s)
{
    size_t n = s ? strnlen(s, KVT_PROTO_MAX_STRING + 1) : 0;
    if (n > KVT_PROTO_MAX_STRING)
        return reject(c, field, "string too long", n, KVT_PROTO_MAX_STRING);
    return KVT_OK;
}

static kvt_status_t check_blob(const ctx_t *c, const char *field, const ProtobufCBinaryData *b,
                               size_t max)
{
    if (b->len > max)
        return reject(c, field, "bytes too long", b->len, max);
    return KVT_OK;
}

static kvt_status_t check_key(const ctx_t *c, const char *field, const ProtobufCBinaryData *b)
{
    if (b->len != KEY_LEN)
        return reject(c, field, "key length", b->len, KEY_LEN);
    return KVT_OK;
}

/* A key that may be absent (empty): a TailReply that found nothing. */
static kvt_status_t check_opt_key(const ctx_t *c, const char *field, const ProtobufCBinaryData *b)
{
    return b->len == 0 ? KVT_OK : check_key(c, field, b);
}

static kvt_status_t check_max(const ctx_t *c, const char *field, uint32_t v, uint32_t max)
{
    if (v > max)
        return reject(c, field, "out of range", v, max);
    return KVT_OK;
}

static kvt_status_t check_count(const ctx_t *c, const char *field, size_t n, size_t max)
{
    if (n > max)
        return reject(c, field, "too many items", n, max);
    return KVT_OK;
}

static kvt_status_t check_keys(const ctx_t *c, const char *field, size_t n,
                               const ProtobufCBinaryData *keys)
{
    CHECK(check_count(c, field, n, KVT_PROTO_MAX_KEYS));
    ctx_t ci = *c;
    for (ci.item = 0; ci.item < n; ci.item++)
        CHECK(check_key(&ci, field, &keys[ci.item]));
    return KVT_OK;
}

/* Enums arrive as any int32; max is the highest value the schema names. */
static kvt_status_t check_enum(const ctx_t *c, const char *field, int v, int max)
{
    if (v < 0 || v > max)
        return reject(c, field, "unknown enum value", (size_t)(unsigned)v, (size_t)max);
    return KVT_OK;
}

/* protobuf-c keeps unknown fields and writes them back on encode.  It
 * accepts field number 0 when the tag is a padded varint (0x80 0x00) but
 * writes it back as 0x00, which it then refuses: a message we accept must
 * re-encode to one we accept, so field 0 is refused here. */
static kvt_status_t check_unknown(const ctx_t *c, const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return reject(c, "unknown", "field number 0", m->unknown_fields[i].len, 0);
    return KVT_OK;
}

static kvt_status_t check_float(const ctx_t *c, const char *field, float v)
{
    if (!isfinite(v))
        return reject(c, field, "not finite", 0, 0);
    return KVT_OK;
}

static kvt_status_t check_sampling(const ctx_t *c, float temperature, float top_p)
{
    CHECK(check_float(c, "temperature", temperature));
    return check_float(c, "top_p", top_p);
}

/* --- bodies --- */

static kvt_status_t check_hello(const ctx_t *c, const Kvtier__Hello *m)
{
    CHECK(check_str(c, "node_id", m->node_id));
    CHECK(check_str(c, "role", m->role));
    return check_str(c, "model_fingerprint", m->model_fingerprint);
}

static kvt_status_t check_node_register(const ctx_t *c, const Kvtier__NodeRegister *m)
{
    CHECK(check_str(c, "node_id", m->node_id));
    CHECK(check_str(c, "role", m->role));
    CHECK(check_str(c, "ucx_address", m->ucx_address));
    CHECK(check_str(c, "device", m->device));
    return check_str(c, "http_address", m->http_address);
}

static kvt_status_t check_event(const ctx_t *c, const Kvtier__KvEvent *e)
{
    if (!e)
        return reject(c, "event", "missing", 0, 0);
    CHECK(check_unknown(c, &e->base));
    CHECK(check_enum(c, "kind", (int)e->kind, KVTIER__KV_EVENT__KIND__DROPPED));
    CHECK(check_enum(c, "tier", (int)e->tier, KVTIER__TIER__TIER_DISK));
    CHECK(check_key(c, "key", &e->key));
    return check_key(c, "parent", &e->parent);
}

static kvt_status_t check_events(const ctx_t *c, const char *node_id, size_t n,
                                 Kvtier__KvEvent *const *events)
{
    CHECK(check_str(c, "node_id", node_id));
    CHECK(check_count(c, "events", n, KVT_PROTO_MAX_KEYS));
    ctx_t ci = *c;
    for (ci.item = 0; ci.item < n; ci.item++)
        CHECK(check_event(&ci, events[ci.item]));
    return KVT_OK;
}

static kvt_status_t check_prefill_request(const ctx_t *c, const Kvtier__PrefillRequest *m)
{
    CHECK(check_str(c, "request_id", m->request_id));
    CHECK(check_count(c, "tokens", m->n_tokens, KVT_PROTO_MAX_TOKENS));
    CHECK(check_blob(c, "tenant_salt", &m->tenant_salt, KVT_PROTO_MAX_STRING));
    CHECK(check_str(c, "decode_node", m->decode_node));
    CHECK(check_str(c, "peer", m->peer));
    return check_sampling(c, m->temperature, m->top_p);
}

static kvt_status_t check_prefill_result(const ctx_t *c, const Kvtier__PrefillResult *m)
{
    CHECK(check_str(c, "request_id", m->request_id));
    CHECK(check_max(c, "tail_tokens", m->tail_tokens, KVT_PROTO_MAX_TAIL_TOKENS));
    /* A sampler makes at most one random draw per token. */
    CHECK(check_max(c, "first_draws", m->first_draws, 1));
    return check_keys(c, "block_keys", m->n_block_keys, m->block_keys);
}

static kvt_status_t check_decode_request(const ctx_t *c, const Kvtier__DecodeRequest *m)
{
    CHECK(check_str(c, "request_id", m->request_id));
    CHECK(check_count(c, "tokens", m->n_tokens, KVT_PROTO_MAX_TOKENS));
    CHECK(check_keys(c, "block_keys", m->n_block_keys, m->block_keys));
    CHECK(check_str(c, "prefill_node", m->prefill_node));
    CHECK(check_str(c, "peer", m->peer));
    CHECK(check_blob(c, "tenant_salt", &m->tenant_salt, KVT_PROTO_MAX_STRING));
    CHECK(check_sampling(c, m->temperature, m->top_p));
    CHECK(check_max(c, "tail_tokens", m->tail_tokens, KVT_PROTO_MAX_TAIL_TOKENS));
    CHECK(check_max(c, "first_draws", m->first_draws, 1)); /* one draw per token at most */
    return check_count(c, "stop_tokens", m->n_stop_tokens, KVT_PROTO_MAX_TOKENS);
}

static kvt_status_t check_token_stream(const ctx_t *c, const Kvtier__TokenStream *m)
{
    CHECK(check_str(c, "request_id", m->request_id));
    CHECK(check_count(c, "tokens", m->n_tokens, KVT_PROTO_MAX_TOKENS));
    CHECK(check_str(c, "error", m->error));
    return check_str(c, "finish_reason", m->finish_reason);
}

static kvt_status_t check_descriptor(const ctx_t *c, const Kvtier__BlockDescriptor *d)
{
    if (!d)
        return reject(c, "blocks", "missing", 0, 0);
    CHECK(check_unknown(c, &d->base));
    CHECK(check_key(c, "key", &d->key));
    CHECK(check_enum(c, "status", (int)d->status, KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY));
    return check_blob(c, "header", &d->header, BLOCK_HEADER_MAX);
}

static kvt_status_t check_fetch_reply(const ctx_t *c, const Kvtier__BlockFetchReply *m)
{
    CHECK(check_blob(c, "rkey", &m->rkey, RKEY_MAX));
    CHECK(check_count(c, "blocks", m->n_blocks, KVT_PROTO_MAX_KEYS));
    if (m->local_map)
        CHECK(check_unknown(c, &m->local_map->base));
    ctx_t ci = *c;
    for (ci.item = 0; ci.item < m->n_blocks; ci.item++)
        CHECK(check_descriptor(&ci, m->blocks[ci.item]));
    return KVT_OK;
}

static kvt_status_t check_tail_reply(const ctx_t *c, const Kvtier__TailReply *m)
{
    CHECK(check_opt_key(c, "key", &m->key));
    CHECK(check_opt_key(c, "parent", &m->parent));
    CHECK(check_count(c, "tokens", m->n_tokens, KVT_PROTO_MAX_TAIL_TOKENS));
    return check_blob(c, "payload", &m->payload, KVT_PROTO_MAX_MSG);
}

static kvt_status_t check_error(const ctx_t *c, const Kvtier__Error *m)
{
    CHECK(check_str(c, "request_id", m->request_id));
    return check_str(c, "message", m->message);
}

/* The body's pointer is non-NULL after unpack (protobuf-c allocates the
 * member it parsed); the check is for envelopes built in memory. */
static kvt_status_t check_body(const kvt_msg_t *m)
{
    const ctx_t c = {kvt_msg_body_name(m->body_case), (size_t)-1};
    if (m->body_case == KVTIER__ENVELOPE__BODY__NOT_SET)
        return reject(&c, "body", "no body or unknown body type", 0, 0);
    if (!m->hello) /* any member of the union */
        return reject(&c, "body", "missing", 0, 0);
    CHECK(check_unknown(&c, &m->base));
    CHECK(check_unknown(&c, &m->hello->base));
    switch (m->body_case) {
    case KVTIER__ENVELOPE__BODY_HELLO: return check_hello(&c, m->hello);
    case KVTIER__ENVELOPE__BODY_NODE_REGISTER: return check_node_register(&c, m->node_register);
    case KVTIER__ENVELOPE__BODY_HEARTBEAT: return check_str(&c, "node_id", m->heartbeat->node_id);
    case KVTIER__ENVELOPE__BODY_KV_SNAPSHOT:
        return check_events(&c, m->kv_snapshot->node_id, m->kv_snapshot->n_blocks,
                            m->kv_snapshot->blocks);
    case KVTIER__ENVELOPE__BODY_KV_DELTA:
        return check_events(&c, m->kv_delta->node_id, m->kv_delta->n_events,
                            m->kv_delta->events);
    case KVTIER__ENVELOPE__BODY_PREFILL_REQUEST:
        return check_prefill_request(&c, m->prefill_request);
    case KVTIER__ENVELOPE__BODY_PREFILL_RESULT: return check_prefill_result(&c, m->prefill_result);
    case KVTIER__ENVELOPE__BODY_DECODE_REQUEST: return check_decode_request(&c, m->decode_request);
    case KVTIER__ENVELOPE__BODY_TOKEN_STREAM: return check_token_stream(&c, m->token_stream);
    case KVTIER__ENVELOPE__BODY_FETCH_REQUEST:
        return check_keys(&c, "keys", m->fetch_request->n_keys, m->fetch_request->keys);
    case KVTIER__ENVELOPE__BODY_FETCH_REPLY: return check_fetch_reply(&c, m->fetch_reply);
    case KVTIER__ENVELOPE__BODY_LEASE_RENEW:
    case KVTIER__ENVELOPE__BODY_RELEASE:
    case KVTIER__ENVELOPE__BODY_ACK: return KVT_OK; /* integers only */
    case KVTIER__ENVELOPE__BODY_ERROR: return check_error(&c, m->error);
    case KVTIER__ENVELOPE__BODY_SNAPSHOT_REQUEST: return KVT_OK; /* empty */
    case KVTIER__ENVELOPE__BODY_CANCEL: return check_str(&c, "request_id", m->cancel->request_id);
    case KVTIER__ENVELOPE__BODY_TAIL_FETCH: return check_key(&c, "key", &m->tail_fetch->key);
    case KVTIER__ENVELOPE__BODY_TAIL_REPLY: return check_tail_reply(&c, m->tail_reply);
    default: return reject(&c, "body", "unknown body type", (size_t)m->body_case, 0);
    }
}

/* --- public --- */

/* protobuf-c allocates the whole message before any of our checks run; a
 * hostile 4 MiB envelope of empty repeated items unpacks to ~40x its size.
 * The budget bounds that.  Blocks come from malloc, so kvt_msg_free frees
 * them with protobuf-c's default allocator. */
typedef struct {
    size_t left;
    bool exceeded;
} decode_budget_t;

static void *budget_alloc(void *data, size_t size)
{
    decode_budget_t *b = data;
    if (size > b->left) {
        b->exceeded = true;
        return NULL;
    }
    b->left -= size;
    return malloc(size);
}

static void budget_free(void *data, void *ptr)
{
    (void)data;
    free(ptr);
}

kvt_status_t kvt_msg_decode(const void *buf, size_t len, kvt_msg_t **msg_p)
{
    if (!msg_p || (!buf && len))
        return KVT_ERR_INVALID;
    if (len > KVT_PROTO_MAX_MSG) {
        kvt_log_debug("proto message rejected reason=too large len=%zu max=%u", len,
                      KVT_PROTO_MAX_MSG);
        return KVT_ERR_TOO_LARGE;
    }
    decode_budget_t budget = {.left = KVT_PROTO_MAX_DECODE_BYTES};
    ProtobufCAllocator alloc = {.alloc = budget_alloc, .free = budget_free,
                                .allocator_data = &budget};
    kvt_msg_t *m = kvtier__envelope__unpack(&alloc, len, buf);
    if (!m && budget.exceeded) {
        kvt_log_debug("proto message rejected reason=decoded size over budget len=%zu max=%u",
                      len, KVT_PROTO_MAX_DECODE_BYTES);
        return KVT_ERR_TOO_LARGE;
    }
    if (!m) {
        kvt_log_debug("proto message rejected reason=not a protobuf envelope len=%zu", len);
        return KVT_ERR_CORRUPT;
    }
    kvt_status_t st;
    if (m->version != KVT_PROTO_VERSION) {
        kvt_log_debug("proto message rejected reason=version version=%u want=%d", m->version,
                      KVT_PROTO_VERSION);
        st = KVT_ERR_MISMATCH;
        goto err_free_msg;
    }
    st = check_body(m);
    if (st != KVT_OK)
        goto err_free_msg;
    *msg_p = m;
    return KVT_OK;

err_free_msg:
    kvtier__envelope__free_unpacked(m, NULL);
    return st;
}

void kvt_msg_free(kvt_msg_t *msg)
{
    if (msg)
        kvtier__envelope__free_unpacked(msg, NULL);
}

kvt_status_t kvt_msg_encode(kvt_msg_t *msg, uint8_t **buf_p, size_t *len_p)
{
    if (!msg || !buf_p || !len_p)
        return KVT_ERR_INVALID;
    size_t n = kvt_msg_encoded_len(msg);
    if (n > KVT_PROTO_MAX_MSG) {
        kvt_log_debug("proto encode refused body=%s reason=too large len=%zu max=%u",
                      kvt_msg_body_name(msg->body_case), n, KVT_PROTO_MAX_MSG);
        return KVT_ERR_TOO_LARGE;
    }
    uint8_t *buf = kvt_malloc("proto message", n ? n : 1);
    if (!buf)
        return KVT_ERR_NOMEM;
    kvt_status_t st = kvt_msg_encode_to(msg, buf, n, len_p);
    if (st != KVT_OK) {
        kvt_free(buf);
        return st;
    }
    *buf_p = buf;
    return KVT_OK;
}

size_t kvt_msg_encoded_len(kvt_msg_t *msg)
{
    msg->version = KVT_PROTO_VERSION;
    return kvtier__envelope__get_packed_size(msg);
}

kvt_status_t kvt_msg_encode_to(kvt_msg_t *msg, uint8_t *buf, size_t cap, size_t *len_p)
{
    if (!msg || !buf || !len_p)
        return KVT_ERR_INVALID;
    size_t n = kvt_msg_encoded_len(msg);
    if (n > cap || n > KVT_PROTO_MAX_MSG)
        return KVT_ERR_TOO_LARGE;
    size_t w = kvtier__envelope__pack(msg, buf);
    if (w != n) { /* protobuf-c disagreeing with itself: a bug, not input */
        kvt_log_error("proto encode size mismatch body=%s packed=%zu sized=%zu",
                      kvt_msg_body_name(msg->body_case), w, n);
        return KVT_ERR_INVALID;
    }
    *len_p = n;
    return KVT_OK;
}

/* Longest prefix of s of at most max bytes that does not end inside a
 * UTF-8 sequence (a peer may validate UTF-8 strictly). */
static size_t utf8_prefix(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

kvt_status_t kvt_msg_encode_error(kvt_status_t code, const char *message, uint8_t **buf_p,
                                  size_t *len_p)
{
    char text[KVT_PROTO_MAX_STRING + 1];
    size_t n = message ? utf8_prefix(message, KVT_PROTO_MAX_STRING) : 0;
    if (n)
        memcpy(text, message, n);
    text[n] = '\0';
    Kvtier__Error err = KVTIER__ERROR__INIT;
    err.code = (uint32_t)-(int64_t)code;
    err.message = text;
    kvt_msg_t env = KVTIER__ENVELOPE__INIT;
    env.body_case = KVTIER__ENVELOPE__BODY_ERROR;
    env.error = &err;
    return kvt_msg_encode(&env, buf_p, len_p);
}

const char *kvt_msg_body_name(Kvtier__Envelope__BodyCase body)
{
    switch (body) {
    case KVTIER__ENVELOPE__BODY__NOT_SET: return "none";
    case KVTIER__ENVELOPE__BODY_HELLO: return "hello";
    case KVTIER__ENVELOPE__BODY_NODE_REGISTER: return "node_register";
    case KVTIER__ENVELOPE__BODY_HEARTBEAT: return "heartbeat";
    case KVTIER__ENVELOPE__BODY_KV_SNAPSHOT: return "kv_snapshot";
    case KVTIER__ENVELOPE__BODY_KV_DELTA: return "kv_delta";
    case KVTIER__ENVELOPE__BODY_PREFILL_REQUEST: return "prefill_request";
    case KVTIER__ENVELOPE__BODY_PREFILL_RESULT: return "prefill_result";
    case KVTIER__ENVELOPE__BODY_DECODE_REQUEST: return "decode_request";
    case KVTIER__ENVELOPE__BODY_TOKEN_STREAM: return "token_stream";
    case KVTIER__ENVELOPE__BODY_FETCH_REQUEST: return "fetch_request";
    case KVTIER__ENVELOPE__BODY_FETCH_REPLY: return "fetch_reply";
    case KVTIER__ENVELOPE__BODY_LEASE_RENEW: return "lease_renew";
    case KVTIER__ENVELOPE__BODY_RELEASE: return "release";
    case KVTIER__ENVELOPE__BODY_ACK: return "ack";
    case KVTIER__ENVELOPE__BODY_ERROR: return "error";
    case KVTIER__ENVELOPE__BODY_SNAPSHOT_REQUEST: return "snapshot_request";
    case KVTIER__ENVELOPE__BODY_CANCEL: return "cancel";
    case KVTIER__ENVELOPE__BODY_TAIL_FETCH: return "tail_fetch";
    case KVTIER__ENVELOPE__BODY_TAIL_REPLY: return "tail_reply";
    default: return "unknown";
    }
}
