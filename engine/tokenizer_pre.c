/* Tokenizer: from text to pre-tokens, the way Hugging Face tokenizers 0.23
 * does it (tokenizer/added_vocabulary.rs, normalizer.rs, pattern.rs,
 * pre_tokenizers/{split,digits,byte_level}.rs):
 *
 * 1. Added tokens not marked `normalized` are split out of the raw text:
 *    leftmost-longest over all of them (a byte trie), the search going on
 *    after every match even when the match is then dropped (a special token
 *    without KVT_TOK_PARSE_SPECIAL, a single_word token inside a word), as
 *    HF's Aho-Corasick iteration does.  lstrip/rstrip take the Unicode
 *    White_Space around a match into the token.
 * 2. Each remaining piece is normalized (NFC: see below), then split again
 *    on the `normalized` added tokens.
 * 3. Each remaining piece goes through the pre-tokenizer stages: Split
 *    (regex or literal, with HF's five delimiter behaviours and invert) and
 *    Digits (\p{N}, isolated or contiguous), each applied to every split of
 *    the previous stage; then ByteLevel, always last: the prefix space, the
 *    GPT-2 regex when use_regex, and BPE over the bytes of each pre-token
 *    (byte-to-character mapping happens inside the BPE's byte table).
 *
 * Regexes: HF compiles patterns with Oniguruma; we use PCRE2 with UTF and
 * UCP, which agree on everything tokenizer patterns use (\p{..}, \s, (?i:),
 * lookahead, possessive and counted repeats).  Empty matches follow
 * Oniguruma's iterator: an empty match right at the end of the previous
 * match is skipped and the search moves on one character.  \uHHHH escapes
 * (Oniguruma syntax) are rewritten to \x{HHHH}; \h (hex digit in Oniguruma,
 * horizontal space in PCRE2) and \w (PCRE2 lacks marks in it) differ and are
 * left as PCRE2 reads them.
 *
 * NFC: there is no Unicode normalization library among our dependencies,
 * so kvtier's NFC is exact only for input already in NFC (what editors and
 * browsers send) and otherwise passes text through unchanged.  Text that
 * is ASCII, or has no combining mark, Hangul jamo or NFC-unstable singleton
 * (the only characters NFC can change), is already NFC; text with any of
 * them is passed through as is and logged once at debug level. */
#include "engine/tokenizerInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <stdatomic.h>
#include <string.h>

/* --- UTF-8 and the byte-level alphabet --- */

bool tok_utf8_valid(const char *str, size_t n)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t min, cp;
        if ((s[i] & 0xe0) == 0xc0)
            len = 2, min = 0x80, cp = s[i] & 0x1f;
        else if ((s[i] & 0xf0) == 0xe0)
            len = 3, min = 0x800, cp = s[i] & 0x0f;
        else if ((s[i] & 0xf8) == 0xf0)
            len = 4, min = 0x10000, cp = s[i] & 0x07;
        else
            return false;
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

uint32_t tok_utf8_decode(const char *str, size_t *len_p)
{
    const uint8_t *s = (const uint8_t *)str;
    if (s[0] < 0x80) {
        *len_p = 1;
        return s[0];
    }
    size_t len = (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : 4;
    uint32_t cp = s[0] & (0x7f >> len);
    for (size_t k = 1; k < len; k++)
        cp = cp << 6 | (s[k] & 0x3f);
    *len_p = len;
    return cp;
}

size_t tok_utf8_encode(uint32_t cp, char *out)
{
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the 68 others take code points 256.. in byte order. */
uint32_t tok_byte_to_cp(uint8_t b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
        return b;
    if (b <= 32)
        return 256u + b;
    if (b <= 160)
        return b + 162u; /* 127..160 -> 289..322 */
    return 323;          /* 173 */
}

int tok_cp_to_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp >= 256 && cp <= 288)
        return (int)(cp - 256);
    if (cp >= 289 && cp <= 322)
        return (int)(cp - 162);
    return cp == 323 ? 173 : -1;
}

/* --- regexes --- */

/* Oniguruma (HF's regex engine) and PCRE2 read some escapes differently;
 * these are rewritten to what Oniguruma means (checked against HF
 * tokenizers 0.23.2): \s/\S are White_Space (PCRE2 adds U+180E), \w/\W are
 * letters, marks, numbers and connectors (PCRE2 10.42 leaves out marks and
 * connectors other than _), \b/\B are boundaries of that \w, \h/\H are hex digits
 * (horizontal space in PCRE2); NULL where a class cannot hold the rewrite
 * (copied as is: \b in a class is a backspace in both). */
#define ONIG_W_CLASS "\\p{L}\\p{M}\\p{N}\\p{Pc}"
#define ONIG_W "[" ONIG_W_CLASS "]"
static const struct {
    char c;
    const char *out, *in_class;
} g_escapes[] = {
    {'s', "\\p{White_Space}", "\\p{White_Space}"},
    {'S', "\\P{White_Space}", "\\P{White_Space}"},
    {'w', ONIG_W, ONIG_W_CLASS},
    {'W', "[^" ONIG_W_CLASS "]", NULL},
    {'h', "[0-9a-fA-F]", "0-9a-fA-F"},
    {'H', "[^0-9a-fA-F]", NULL},
    {'b', "(?:(?<=" ONIG_W ")(?!" ONIG_W ")|(?<!" ONIG_W ")(?=" ONIG_W "))", NULL},
    {'B', "(?:(?<=" ONIG_W ")(?=" ONIG_W ")|(?<!" ONIG_W ")(?!" ONIG_W "))", NULL},
};
#define TRANSLATE_GROWTH 64 /* longest rewrite per source byte (\\b) */

static size_t emit(char *out, size_t o, const char *s)
{
    size_t n = strlen(s);
    memcpy(out + o, s, n);
    return o + n;
}

static bool hex4(const char *p, size_t n)
{
    if (n < 4)
        return false;
    for (int i = 0; i < 4; i++)
        if (!strchr("0123456789abcdefABCDEF", p[i]) || p[i] == 0)
            return false;
    return true;
}

/* One escape at p[0] == '\\'; returns the bytes consumed. */
static size_t translate_escape(const char *p, size_t n, bool in_class, char *out, size_t *o_p)
{
    if (n < 2) {
        out[(*o_p)++] = p[0];
        return 1;
    }
    if (p[1] == 'u' && hex4(p + 2, n - 2)) { /* \uHHHH -> \x{HHHH} */
        *o_p = emit(out, *o_p, "\\x{");
        memcpy(out + *o_p, p + 2, 4);
        *o_p = emit(out, *o_p + 4, "}");
        return 6;
    }
    for (size_t i = 0; i < sizeof(g_escapes) / sizeof(g_escapes[0]); i++) {
        const char *r = in_class ? g_escapes[i].in_class : g_escapes[i].out;
        if (p[1] == g_escapes[i].c && r) {
            *o_p = emit(out, *o_p, r);
            return 2;
        }
    }
    out[(*o_p)++] = p[0];
    out[(*o_p)++] = p[1];
    return 2;
}

/* Inline options "(?imx-imx" + ':' or ')': Oniguruma's m is PCRE2's s (dot
 * matches newline).  Returns the bytes copied, 0 if p is no such group. */
static size_t translate_options(const char *p, size_t n, char *out, size_t *o_p)
{
    size_t k = 2;
    if (n < 3 || p[0] != '(' || p[1] != '?')
        return 0;
    while (k < n && strchr("imx-", p[k]) && p[k])
        k++;
    if (k == 2 || k == n || (p[k] != ':' && p[k] != ')'))
        return 0;
    for (size_t i = 0; i < k; i++)
        out[(*o_p)++] = i >= 2 && p[i] == 'm' ? 's' : p[i];
    return k;
}

/* Oniguruma syntax -> PCRE2: the escapes above, inline options, and ^ and $
 * outside a class are line anchors (Oniguruma's always are; lines end at \n
 * only). */
static size_t translate_pattern(const char *p, size_t n, char *out)
{
    size_t o = 0;
    bool in_class = false;
    for (size_t i = 0; i < n;) {
        size_t k;
        if (p[i] == '\\') {
            i += translate_escape(p + i, n - i, in_class, out, &o);
        } else if (!in_class && (k = translate_options(p + i, n - i, out, &o)) > 0) {
            i += k;
        } else if (!in_class && p[i] == '^') {
            o = emit(out, o, "(?<![^\\n])");
            i++;
        } else if (!in_class && p[i] == '$') {
            o = emit(out, o, "(?=\\n|\\z)");
            i++;
        } else if (!in_class && p[i] == '[') {
            in_class = true;
            out[o++] = p[i++];
            if (i < n && p[i] == '^')
                out[o++] = p[i++];
            if (i < n && p[i] == ']') /* a leading ] is literal */
                out[o++] = p[i++];
        } else if (in_class && p[i] == '[' && i + 1 < n && p[i + 1] == ':') {
            const char *end = memmem(p + i + 2, n - i - 2, ":]", 2); /* [:alpha:] */
            k = end ? (size_t)(end - p) + 2 - i : 1;
            memcpy(out + o, p + i, k);
            o += k;
            i += k;
        } else {
            in_class = in_class && p[i] != ']';
            out[o++] = p[i++];
        }
    }
    return o;
}

kvt_status_t tok_regex_compile(const char *pat, size_t len, bool literal, const char *field,
                               pcre2_code **re_p)
{
    if (len == 0 || len > TOK_MAX_PATTERN || memchr(pat, 0, len)) {
        kvt_log_error("tokenizer: empty, oversized or NUL-holding pattern field=%s len=%zu",
                      field, len);
        return KVT_ERR_INVALID;
    }
    char *buf = kvt_malloc("tokenizer pattern", TRANSLATE_GROWTH * len + 1);
    if (!buf)
        return KVT_ERR_NOMEM;
    size_t n = literal ? len : translate_pattern(pat, len, buf);
    if (literal)
        memcpy(buf, pat, len);
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C);
    int err;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)buf, n, opts, &err, &at, NULL);
    kvt_free(buf);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof(msg));
        kvt_log_error("tokenizer: invalid regex field=%s offset=%zu error=\"%s\"", field,
                      (size_t)at, (const char *)msg);
        return KVT_ERR_INVALID;
    }
    int jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    if (jit != 0)
        kvt_log_debug("tokenizer: regex without jit field=%s rc=%d", field, jit);
    *re_p = re;
    return KVT_OK;
}

/* 1 match, 0 none, or a negative status. */
static int re_match(tok_ws_t *ws, const pcre2_code *re, const char *s, size_t n, size_t from,
                    uint32_t opts, size_t *ms_p, size_t *me_p)
{
    opts |= PCRE2_NO_UTF_CHECK; /* the whole text was checked once */
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, opts, ws->md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, opts | PCRE2_NO_JIT, ws->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ws->md);
    if (rc < 0 || ov[0] > ov[1] || ov[1] > n || ov[0] < from) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        kvt_log_error("tokenizer: regex match failed rc=%d error=\"%s\" len=%zu", rc,
                      rc < 0 ? (const char *)msg : "bad offsets", n);
        return rc == PCRE2_ERROR_NOMEMORY ? KVT_ERR_NOMEM : KVT_ERR_FULL;
    }
    *ms_p = ov[0];
    *me_p = ov[1];
    return 1;
}

kvt_status_t tok_spans_push(tok_spans_t *v, size_t off, size_t len, bool flag)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        tok_span_t *p = kvt_realloc("tokenizer spans", v->v, cap * sizeof(*p));
        if (!p)
            return KVT_ERR_NOMEM;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = (tok_span_t){off, len, flag};
    return KVT_OK;
}

/* HF's Pattern::find_matches over an Oniguruma regex: matches and the gaps
 * between them, covering s[0..n) in order. */
static kvt_status_t find_matches(tok_ws_t *ws, const pcre2_code *re, const char *s, size_t n,
                                 tok_spans_t *out)
{
    size_t search = 0, prev = 0, last_end = 0, ms, me;
    bool have_last = false;
    kvt_status_t st = KVT_OK;
    out->n = 0;
    while (st == KVT_OK && search <= n) {
        int rc = re_match(ws, re, s, n, search, 0, &ms, &me);
        if (rc < 0)
            return (kvt_status_t)rc;
        if (rc == 0)
            break;
        if (ms == me && have_last && last_end == me) {
            if (search >= n)
                break;
            size_t cl;
            tok_utf8_decode(s + search, &cl);
            search += cl;
            continue;
        }
        search = last_end = me;
        have_last = true;
        if (prev != ms)
            st = tok_spans_push(out, prev, ms - prev, false);
        if (st == KVT_OK)
            st = tok_spans_push(out, ms, me - ms, true);
        prev = me;
    }
    if (st == KVT_OK && prev < n)
        st = tok_spans_push(out, prev, n - prev, false);
    return st;
}

/* --- delimiter behaviours (NormalizedString::split) --- */

/* Contiguous and MergedWithPrevious: fold left, in place. */
static void fold_forward(tok_spans_t *m, tok_behavior_t b)
{
    size_t w = 0;
    bool prev = false;
    for (size_t r = 0; r < m->n; r++) {
        tok_span_t e = m->v[r];
        bool merge = b == TOK_SPLIT_CONTIGUOUS ? e.flag == prev : e.flag && !prev;
        if (merge && w > 0)
            m->v[w - 1].len = e.off + e.len - m->v[w - 1].off;
        else
            m->v[w++] = e;
        prev = e.flag;
    }
    m->n = w;
}

/* MergedWithNext: fold right, in place; returns the first kept index. */
static size_t fold_backward(tok_spans_t *m)
{
    size_t w = m->n;
    bool prev = false;
    for (size_t r = m->n; r-- > 0;) {
        tok_span_t e = m->v[r];
        if (e.flag && !prev && w < m->n) {
            m->v[w].len += m->v[w].off - e.off;
            m->v[w].off = e.off;
        } else {
            m->v[--w] = e;
        }
        prev = e.flag;
    }
    return w;
}

static kvt_status_t split_span(tok_ws_t *ws, const tok_stage_t *stage, const char *base,
                               tok_span_t span, tok_spans_t *out)
{
    tok_spans_t *m = &ws->matches;
    kvt_status_t st = find_matches(ws, stage->re, base + span.off, span.len, m);
    if (st != KVT_OK)
        return st;
    for (size_t i = 0; stage->invert && i < m->n; i++)
        m->v[i].flag = !m->v[i].flag;
    size_t first = 0;
    if (stage->behavior == TOK_SPLIT_CONTIGUOUS || stage->behavior == TOK_SPLIT_MERGED_PREV)
        fold_forward(m, stage->behavior);
    else if (stage->behavior == TOK_SPLIT_MERGED_NEXT)
        first = fold_backward(m);
    for (size_t i = first; i < m->n && st == KVT_OK; i++) {
        const tok_span_t *e = &m->v[i];
        bool removed = stage->behavior == TOK_SPLIT_REMOVED && e->flag;
        if (e->len > 0 && !removed)
            st = tok_spans_push(out, span.off + e->off, e->len, false);
    }
    return st;
}

/* ByteLevel: prefix space, GPT-2 regex, then BPE on each pre-token. */
static kvt_status_t byte_level(tok_ws_t *ws, const tok_stage_t *stage, const char *s, size_t n)
{
    if (stage->add_prefix_space && s[0] != ' ') {
        ws->scratch.len = 0;
        kvt_status_t st = tok_buf_append(&ws->scratch, " ", 1, "tokenizer scratch");
        if (st == KVT_OK)
            st = tok_buf_append(&ws->scratch, s, n, "tokenizer scratch");
        if (st != KVT_OK)
            return st;
        s = ws->scratch.p;
        n = ws->scratch.len;
    }
    if (!stage->re)
        return tok_bpe(ws, (const uint8_t *)s, n);
    kvt_status_t st = find_matches(ws, stage->re, s, n, &ws->matches);
    for (size_t i = 0; i < ws->matches.n && st == KVT_OK; i++) {
        const tok_span_t *e = &ws->matches.v[i];
        st = tok_bpe(ws, (const uint8_t *)s + e->off, e->len);
    }
    return st;
}

static kvt_status_t pre_tokenize(tok_ws_t *ws, const char *s, size_t n)
{
    const kvt_tokenizer_t *tok = ws->tok;
    tok_spans_t *cur = &ws->spans[0], *nxt = &ws->spans[1];
    cur->n = 0;
    kvt_status_t st = tok_spans_push(cur, 0, n, false);
    for (int k = 0; k + 1 < tok->n_stages && st == KVT_OK; k++) {
        nxt->n = 0;
        for (size_t i = 0; i < cur->n && st == KVT_OK; i++)
            st = split_span(ws, &tok->stages[k], s, cur->v[i], nxt);
        tok_spans_t *t = cur;
        cur = nxt;
        nxt = t;
    }
    const tok_stage_t *last = &tok->stages[tok->n_stages - 1];
    for (size_t i = 0; i < cur->n && st == KVT_OK; i++)
        st = byte_level(ws, last, s + cur->v[i].off, cur->v[i].len);
    return st;
}

/* --- added tokens --- */

kvt_status_t tok_trie_add(tok_trie_t *t, const char *s, size_t n, int32_t added)
{
    if (t->cap == 0)
        memset(t->root, 0xff, sizeof(t->root));
    if (t->n + n > t->cap) { /* grow first: `link` below points into nodes */
        uint32_t cap = t->cap ? t->cap : 64;
        while (cap < t->n + n)
            cap *= 2;
        tok_trie_node_t *p = kvt_realloc("tokenizer trie", t->nodes, cap * sizeof(*p));
        if (!p)
            return KVT_ERR_NOMEM;
        t->nodes = p;
        t->cap = cap;
    }
    int32_t *link = &t->root[(uint8_t)s[0]];
    for (size_t d = 0;; d++) {
        if (*link < 0) {
            t->nodes[t->n] = (tok_trie_node_t){-1, -1, -1, (uint8_t)s[d]};
            *link = (int32_t)t->n++;
        }
        tok_trie_node_t *node = &t->nodes[*link];
        if (d + 1 == n) {
            if (node->added < 0)
                node->added = added;
            return KVT_OK;
        }
        link = &node->child;
        while (*link >= 0 && t->nodes[*link].byte != (uint8_t)s[d + 1])
            link = &t->nodes[*link].sibling;
    }
}

void tok_trie_free(tok_trie_t *t)
{
    kvt_free(t->nodes);
    t->nodes = NULL;
    t->n = t->cap = 0;
}

/* Longest added token starting at s; -1 if none. */
static int32_t trie_longest(const tok_trie_t *t, const char *s, size_t n, size_t *len_p)
{
    int32_t best = -1, node = t->root[(uint8_t)s[0]];
    for (size_t d = 1; node >= 0; d++) {
        if (t->nodes[node].added >= 0) {
            best = t->nodes[node].added;
            *len_p = d;
        }
        if (d == n)
            break;
        node = t->nodes[node].child;
        while (node >= 0 && t->nodes[node].byte != (uint8_t)s[d])
            node = t->nodes[node].sibling;
    }
    return best;
}

static bool is_white_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* Rust regex's \w (Alphabetic, marks, decimal digits, connectors, joiners). */
static bool is_word_at(tok_ws_t *ws, const char *s, size_t n)
{
    size_t ms, me;
    return re_match(ws, ws->tok->word_re, s, n, 0, PCRE2_ANCHORED, &ms, &me) == 1;
}

static bool single_word_ok(tok_ws_t *ws, const char *s, size_t n, size_t start, size_t stop)
{
    if (start > 0) {
        size_t b = start - 1;
        while (b > 0 && ((uint8_t)s[b] & 0xc0) == 0x80)
            b--;
        if (is_word_at(ws, s + b, start - b))
            return false;
    }
    return stop == n || !is_word_at(ws, s + stop, n - stop);
}

static size_t white_before(const char *s, size_t start, size_t floor)
{
    while (start > floor) {
        size_t b = start - 1, cl;
        while (b > 0 && ((uint8_t)s[b] & 0xc0) == 0x80)
            b--;
        if (!is_white_space(tok_utf8_decode(s + b, &cl)))
            break;
        start = b;
    }
    return start < floor ? floor : start;
}

static size_t white_after(const char *s, size_t stop, size_t n)
{
    size_t cl;
    while (stop < n && is_white_space(tok_utf8_decode(s + stop, &cl)))
        stop += cl;
    return stop;
}

typedef kvt_status_t (*piece_fn)(tok_ws_t *ws, const char *s, size_t n);

/* AddedVocabulary::find_matches + split_with_indices: added tokens become
 * ids, the text between them goes to `piece`. */
static kvt_status_t split_added(tok_ws_t *ws, const tok_trie_t *trie, const char *s, size_t n,
                                piece_fn piece)
{
    const kvt_tokenizer_t *tok = ws->tok;
    size_t done = 0, i = 0, mlen = 0;
    while (trie->n > 0 && i < n) {
        int32_t a = trie->root[(uint8_t)s[i]] < 0 ? -1 : trie_longest(trie, s + i, n - i, &mlen);
        if (a < 0) {
            i++;
            continue;
        }
        const tok_added_t *t = &tok->added[a];
        size_t start = i, stop = i + mlen;
        i = stop;
        if ((t->special && !(ws->flags & KVT_TOK_PARSE_SPECIAL)) ||
            (t->single_word && !single_word_ok(ws, s, n, start, stop)))
            continue;
        if (t->lstrip)
            start = white_before(s, start, done);
        if (t->rstrip)
            i = stop = white_after(s, stop, n);
        if (done < start) {
            kvt_status_t st = piece(ws, s + done, start - done);
            if (st != KVT_OK)
                return st;
        }
        tok_ws_emit(ws, t->id);
        done = stop;
    }
    return done < n ? piece(ws, s + done, n - done) : KVT_OK;
}

static kvt_status_t normalized_piece(tok_ws_t *ws, const char *s, size_t n)
{
    return pre_tokenize(ws, s, n);
}

static bool has_non_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)s[i] >= 0x80)
            return true;
    return false;
}

static kvt_status_t raw_piece(tok_ws_t *ws, const char *s, size_t n)
{
    static atomic_bool logged;
    size_t ms, me;
    if (ws->tok->nfc && has_non_ascii(s, n) && !atomic_load(&logged) &&
        re_match(ws, ws->tok->nfc_re, s, n, 0, 0, &ms, &me) == 1 &&
        !atomic_exchange(&logged, true))
        kvt_log_debug("tokenizer: nfc normalizer passes text with combining characters "
                      "through unchanged (exact only for text already in nfc)");
    return split_added(ws, &ws->tok->trie_norm, s, n, normalized_piece);
}

kvt_status_t tok_encode_text(tok_ws_t *ws, const char *text, size_t len)
{
    return split_added(ws, &ws->tok->trie_raw, text, len, raw_piece);
}
