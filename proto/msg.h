/* kvtier wire messages: the generated protobuf-c code for kvtier.proto
 * behind a small checked codec.
 *
 * Everything that crosses the network is one kvtier.Envelope.  Decoding
 * bounds the input size, rejects anything protobuf-c cannot parse, a
 * version other than ours, an envelope without a body (an unknown message
 * type decodes as one) and fields out of their bounds (keys of the wrong
 * length, too many keys or tokens, oversized headers, tails of a block or
 * more), so the code that handles a body may rely on those bounds. */
#ifndef KVT_PROTO_MSG_H
#define KVT_PROTO_MSG_H

#include "common/status.h"
#include "kvtier.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define KVT_PROTO_VERSION 2           /* 2: inline payloads in the attachment */
#define KVT_PROTO_MAX_MSG (16u << 20)  /* encoded envelope bytes: a 4 MiB block
                                          inline, with room to spare */
#define KVT_PROTO_MAX_KEYS 65536       /* keys in one fetch / result / event list */
#define KVT_PROTO_MAX_TOKENS (1u << 20)
#define KVT_PROTO_MAX_STRING 4096      /* ids, addresses, messages */
#define KVT_PROTO_MAX_DECODE_BYTES (64u << 20) /* heap one decode may use */
#define KVT_PROTO_MAX_TAIL_TOKENS 255  /* tokens of a partial tail: below a block's
                                          (KVT_BLOCK_MAX_TOKENS - 1, kvstore/block.h) */

typedef Kvtier__Envelope kvt_msg_t;

/* Decode and check one envelope; *msg_p is freed with kvt_msg_free.
 * KVT_ERR_TOO_LARGE (len over KVT_PROTO_MAX_MSG, or a message that would
 * take over KVT_PROTO_MAX_DECODE_BYTES of heap), KVT_ERR_CORRUPT (not a
 * protobuf envelope), KVT_ERR_MISMATCH (another protocol version),
 * KVT_ERR_INVALID (no body, or a field out of bounds); the reason is logged
 * at debug level (peers can make these cheaply; the caller reports). */
kvt_status_t kvt_msg_decode(const void *buf, size_t len, kvt_msg_t **msg_p);
void kvt_msg_free(kvt_msg_t *msg);

/* Encode msg (its version is set here) into a malloc'd buffer the caller
 * frees with kvt_free.  KVT_ERR_TOO_LARGE over KVT_PROTO_MAX_MSG,
 * KVT_ERR_NOMEM, KVT_ERR_INVALID for NULL arguments.  Field bounds are not
 * checked here: a handler must respect them (peers check on decode). */
kvt_status_t kvt_msg_encode(kvt_msg_t *msg, uint8_t **buf_p, size_t *len_p);

/* Attachments.  Envelope.attachment carries bulk bytes (an inline fetch
 * reply's payloads) and is written as the envelope's last field, so that
 * neither end copies them through protobuf-c: the sender sends
 *   kvt_msg_encode(msg) || kvt_msg_attach_prefix(n) || the n bytes
 * as one message from wherever the bytes lie (that is a valid encoding of
 * msg with attachment set), and the receiver decodes the rest in place.
 * KVT_MSG_ATTACH_PREFIX_MAX bounds what kvt_msg_attach_prefix writes. */
#define KVT_MSG_ATTACH_PREFIX_MAX 11
size_t kvt_msg_attach_prefix(size_t att_len, uint8_t out[KVT_MSG_ATTACH_PREFIX_MAX]);

/* Decode as kvt_msg_decode, except that an attachment that is the
 * envelope's last field is not copied: *att_p points into buf (valid as
 * long as buf is) and *att_len_p is its length; (NULL, 0) when there is
 * none.  (*msg_p)->attachment is then empty.  KVT_ERR_CORRUPT also for a
 * wire structure that does not parse (a length past the end), and
 * KVT_ERR_INVALID for an attachment that is not last or appears twice. */
kvt_status_t kvt_msg_decode_attached(const void *buf, size_t len, kvt_msg_t **msg_p,
                                     const uint8_t **att_p, size_t *att_len_p);

/* Encoding into the caller's buffer: encoded_len sets msg's version and
 * says how many bytes encode_to will write; encode_to writes them at buf
 * (KVT_ERR_TOO_LARGE when they exceed cap or KVT_PROTO_MAX_MSG). */
size_t kvt_msg_encoded_len(kvt_msg_t *msg);
kvt_status_t kvt_msg_encode_to(kvt_msg_t *msg, uint8_t *buf, size_t cap, size_t *len_p);

/* An Error envelope, encoded. */
kvt_status_t kvt_msg_encode_error(kvt_status_t code, const char *message, uint8_t **buf_p,
                                  size_t *len_p);

/* "fetch_request", "error", ... ; "none" for an unset body. */
const char *kvt_msg_body_name(Kvtier__Envelope__BodyCase body);

#endif
