/* Envelope attachments (contract: msg.h): the bytes that announce one, and
 * a decode that leaves it where it landed.
 *
 * Why not just kvt_msg_decode: protobuf-c copies every bytes field into
 * memory of its own, so a reply carrying a megabyte of payloads would be
 * copied once more on each side.  The attachment is the envelope's field 2
 * (wire type 2: a varint length, then the bytes), written last; protobuf
 * fields may come in any order, so envelope || field 2 is still a valid
 * envelope, which is all the sender needs.  The receiver walks the
 * top-level fields (tag varint, then a body whose size the wire type
 * gives), finds field 2, and hands protobuf-c only the bytes before it.
 *
 * Failure: the walk is bounded by len at every step; a length past the
 * end is CORRUPT, an attachment that is not last or comes twice INVALID.
 * Nothing is allocated but what kvt_msg_decode allocates. */
#include "proto/msg.h"

#include "common/log.h"

#include <stdbool.h>

#define ATTACH_FIELD 2u
#define WIRE_VARINT 0u
#define WIRE_I64 1u
#define WIRE_LEN 2u
#define WIRE_I32 5u

size_t kvt_msg_attach_prefix(size_t att_len, uint8_t out[KVT_MSG_ATTACH_PREFIX_MAX])
{
    size_t n = 0;
    out[n++] = (uint8_t)(ATTACH_FIELD << 3 | WIRE_LEN);
    uint64_t v = att_len;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        out[n++] = v ? (uint8_t)(b | 0x80) : b;
    } while (v);
    return n;
}

/* Reads a varint at *pos; false when it runs past len or past 10 bytes. */
static bool varint_read(const uint8_t *p, size_t len, size_t *pos, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 70 && *pos < len; shift += 7) {
        uint8_t b = p[(*pos)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* Skips one field body of wire type wt starting at *pos; false when it
 * does not fit.  Group wire types (3, 4) and unknown ones are left to
 * protobuf-c, which refuses them: walking stops there (*stop). */
static bool field_skip(const uint8_t *p, size_t len, size_t *pos, unsigned wt, uint64_t *body_len,
                       bool *stop)
{
    uint64_t v;
    *body_len = 0;
    switch (wt) {
    case WIRE_VARINT: return varint_read(p, len, pos, &v);
    case WIRE_I64: *body_len = 8; break;
    case WIRE_I32: *body_len = 4; break;
    case WIRE_LEN:
        if (!varint_read(p, len, pos, body_len))
            return false;
        break;
    default: *stop = true; return true;
    }
    if (*body_len > len - *pos)
        return false;
    *pos += *body_len;
    return true;
}

/* Finds the attachment among the top-level fields: *start is where its
 * tag begins (len when there is none), [*att, *att + *att_len) its bytes. */
static kvt_status_t find_attachment(const uint8_t *p, size_t len, size_t *start,
                                    const uint8_t **att, size_t *att_len)
{
    size_t pos = 0;
    bool stop = false;
    *start = len;
    *att = NULL;
    *att_len = 0;
    while (pos < len && !stop) {
        size_t field_at = pos;
        uint64_t tag, body_len;
        if (!varint_read(p, len, &pos, &tag) || !field_skip(p, len, &pos, tag & 7, &body_len, &stop))
            return KVT_ERR_CORRUPT;
        if ((tag >> 3) != ATTACH_FIELD || (tag & 7) != WIRE_LEN || stop)
            continue;
        if (*start != len || pos != len) {
            kvt_log_debug("proto message rejected reason=attachment not last or repeated len=%zu",
                          len);
            return KVT_ERR_INVALID;
        }
        *start = field_at;
        *att = p + pos - body_len;
        *att_len = (size_t)body_len;
    }
    return KVT_OK;
}

kvt_status_t kvt_msg_decode_attached(const void *buf, size_t len, kvt_msg_t **msg_p,
                                     const uint8_t **att_p, size_t *att_len_p)
{
    if (!msg_p || !att_p || !att_len_p || (!buf && len))
        return KVT_ERR_INVALID;
    if (len > KVT_PROTO_MAX_MSG)
        return kvt_msg_decode(buf, len, msg_p); /* its size check and log line */
    size_t start;
    const uint8_t *att;
    size_t att_len;
    kvt_status_t st = find_attachment(buf, len, &start, &att, &att_len);
    if (st == KVT_ERR_CORRUPT)
        kvt_log_debug("proto message rejected reason=field past the end len=%zu", len);
    if (st == KVT_OK)
        st = kvt_msg_decode(buf, start, msg_p);
    if (st != KVT_OK)
        return st;
    *att_p = att;
    *att_len_p = att_len;
    return KVT_OK;
}
