/* UTF-8 checks (utf8.h). */
#include "common/utf8.h"

#include "common/alloc.h"

#include <string.h>

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one
 * (overlong forms, surrogates, code points past U+10FFFF and NUL are
 * invalid).  *partial_p (may be NULL) says whether the bytes are a valid
 * start cut short by n. */
size_t kvt_utf8_seq(const unsigned char *s, size_t n, bool *partial_p)
{
    unsigned char c = s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (partial_p)
        *partial_p = false;
    if (len == 0 || c == 0)
        return 0;
    unsigned char lo = 0x80, hi = 0xbf; /* bounds of the second byte */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    for (size_t i = 1; i < len; i++) {
        if (i == n) {
            if (partial_p)
                *partial_p = true;
            return 0;
        }
        unsigned char min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xbf;
        if (s[i] < min || s[i] > max)
            return 0;
    }
    return len;
}

/* A NUL-terminated valid UTF-8 copy: each bad byte becomes U+FFFD. */
char *kvt_utf8_lossy(const char *bytes, size_t len)
{
    char *t = kvt_malloc("utf8 text", 3 * len + 1);
    if (!t)
        return NULL;
    size_t o = 0;
    const unsigned char *s = (const unsigned char *)bytes;
    for (size_t i = 0; i < len;) {
        size_t k = kvt_utf8_seq(s + i, len - i, NULL);
        if (k == 0) {
            memcpy(t + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(t + o, s + i, k);
            o += k;
            i += k;
        }
    }
    t[o] = '\0';
    return t;
}
