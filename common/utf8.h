/* UTF-8 checks shared by everything that turns model output (bytes that a
 * token boundary may have cut anywhere) into JSON text. */
#ifndef KVT_COMMON_UTF8_H
#define KVT_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one
 * (overlong forms, surrogates, code points past U+10FFFF and NUL are
 * invalid).  *partial_p (may be NULL) says whether the bytes are a valid
 * start cut short by n. */
size_t kvt_utf8_seq(const unsigned char *s, size_t n, bool *partial_p);
/* A NUL-terminated valid UTF-8 copy of bytes[0..len) in which every byte
 * that starts no valid sequence became U+FFFD; malloc'd (kvt_free), NULL
 * when memory ran out. */
char *kvt_utf8_lossy(const char *bytes, size_t len);

#endif
