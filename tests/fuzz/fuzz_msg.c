/* Fuzz target for the wire-message codec (proto/msg.h).
 *
 * Whatever the input, decode must not crash, leak or read out of bounds,
 * and must fail with one of its documented statuses leaving the output
 * pointer alone.  When it accepts, the message must hold the bounds the
 * codec promises (re-checked here for the key lists, independently of
 * msg.c), re-encoding must succeed, the re-encoded bytes must decode to
 * the same body type, and encoding that again must give the same bytes
 * (one canonical form: a decoded message that re-encodes differently each
 * time would make digests and dedup of messages unstable).  Any violation
 * aborts.
 *
 * Built with libFuzzer (clang -fsanitize=fuzzer) and with fuzz_msg_driver.c
 * for compilers without it. */
#include "proto/msg.h"

#include "common/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_keys(size_t n, const ProtobufCBinaryData *keys)
{
    if (n > KVT_PROTO_MAX_KEYS)
        abort();
    for (size_t i = 0; i < n; i++)
        if (keys[i].len != 32 || !keys[i].data)
            abort();
}

static void check_events(size_t n, Kvtier__KvEvent *const *ev)
{
    if (n > KVT_PROTO_MAX_KEYS)
        abort();
    for (size_t i = 0; i < n; i++)
        if (ev[i]->key.len != 32 || ev[i]->parent.len != 32 || (unsigned)ev[i]->kind > 3 ||
            (unsigned)ev[i]->tier > 3)
            abort();
}

static void check_accepted(const kvt_msg_t *m)
{
    if (m->version != KVT_PROTO_VERSION || m->body_case == KVTIER__ENVELOPE__BODY__NOT_SET)
        abort();
    switch (m->body_case) {
    case KVTIER__ENVELOPE__BODY_FETCH_REQUEST:
        check_keys(m->fetch_request->n_keys, m->fetch_request->keys);
        break;
    case KVTIER__ENVELOPE__BODY_PREFILL_RESULT:
        check_keys(m->prefill_result->n_block_keys, m->prefill_result->block_keys);
        break;
    case KVTIER__ENVELOPE__BODY_DECODE_REQUEST:
        check_keys(m->decode_request->n_block_keys, m->decode_request->block_keys);
        break;
    case KVTIER__ENVELOPE__BODY_KV_SNAPSHOT:
        check_events(m->kv_snapshot->n_blocks, m->kv_snapshot->blocks);
        break;
    case KVTIER__ENVELOPE__BODY_KV_DELTA:
        check_events(m->kv_delta->n_events, m->kv_delta->events);
        break;
    case KVTIER__ENVELOPE__BODY_FETCH_REPLY:
        for (size_t i = 0; i < m->fetch_reply->n_blocks; i++)
            if (m->fetch_reply->blocks[i]->key.len != 32 ||
                (unsigned)m->fetch_reply->blocks[i]->status >
                    KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY)
                abort();
        break;
    default:
        break;
    }
}

/* decode(encode(m)) is the same body type and encodes to the same bytes. */
static void check_reencode(kvt_msg_t *m)
{
    uint8_t *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    kvt_msg_t *m2 = NULL;
    if (kvt_msg_encode(m, &b1, &l1) != KVT_OK)
        abort();
    if (kvt_msg_decode(b1, l1, &m2) != KVT_OK || m2->body_case != m->body_case)
        abort();
    check_accepted(m2);
    if (kvt_msg_encode(m2, &b2, &l2) != KVT_OK || l2 != l1 || memcmp(b1, b2, l1) != 0)
        abort();
    kvt_msg_free(m2);
    kvt_free(b1);
    kvt_free(b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int sentinel;
    kvt_msg_t *m = (kvt_msg_t *)&sentinel;
    kvt_status_t st = kvt_msg_decode(data, size, &m);
    if (st != KVT_OK) {
        if (m != (kvt_msg_t *)&sentinel)
            abort();
        if (st != KVT_ERR_TOO_LARGE && st != KVT_ERR_CORRUPT && st != KVT_ERR_MISMATCH &&
            st != KVT_ERR_INVALID)
            abort();
        return 0;
    }
    check_accepted(m);
    check_reencode(m);
    kvt_msg_free(m);
    return 0;
}
