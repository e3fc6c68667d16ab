/* Tokenizer: hash maps and the BPE merge loop.
 *
 * The merge loop is the one of Hugging Face tokenizers (models/bpe/word.rs,
 * as of 0.23): the symbols of a pre-token form a doubly linked list; a
 * binary min-heap holds candidate merges ordered by (rank, position of the
 * left symbol); a popped candidate is applied only if its left symbol is
 * still there and still forms the same pair with its right neighbour, and
 * each merge pushes the two pairs it creates.  That is O(n log n) in the
 * pre-token's length, which matters: real text holds pre-tokens of many
 * kilobytes (runs of spaces, base64, minified code).  Ties in rank go to the
 * leftmost pair, exactly as HF's heap order does, so ids are identical.
 *
 * Maps are open addressing with linear probing, sized at most half full
 * when built, never resized afterwards. */
#include "engine/tokenizerInt.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"

#include <string.h>

kvt_status_t tok_buf_append(tok_buf_t *b, const void *p, size_t n, const char *what)
{
    if (n > b->max || b->len > b->max - n) {
        kvt_log_error("tokenizer: %s exceeds its bound max=%zu", what, b->max);
        return KVT_ERR_TOO_LARGE;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        char *q = kvt_realloc(what, b->p, cap);
        if (!q)
            return KVT_ERR_NOMEM;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return KVT_OK;
}

void tok_buf_free(tok_buf_t *b)
{
    kvt_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

uint32_t tok_hash(const char *s, size_t n)
{
    return (uint32_t)kvt_xxh3_64(s, n);
}

static uint32_t table_size(uint32_t n_max)
{
    uint32_t size = 16;
    while (size < 2 * (uint64_t)n_max)
        size *= 2;
    return size;
}

kvt_status_t tok_strmap_init(tok_strmap_t *m, uint32_t n_max, const char *arena,
                             const uint32_t *off, const uint16_t *len)
{
    uint32_t size = table_size(n_max);
    memset(m, 0, sizeof(*m));
    m->slots = kvt_calloc("tokenizer string map", size, sizeof(uint32_t));
    m->hashes = kvt_calloc("tokenizer string map", size, sizeof(uint32_t));
    if (!m->slots || !m->hashes) {
        tok_strmap_free(m);
        return KVT_ERR_NOMEM;
    }
    m->mask = size - 1;
    m->arena = arena;
    m->off = off;
    m->len = len;
    return KVT_OK;
}

static bool strmap_key_eq(const tok_strmap_t *m, uint32_t value, const char *s, size_t n)
{
    return m->len[value] == n && memcmp(m->arena + m->off[value], s, n) == 0;
}

/* The slot holding s, or the empty slot where it would go. */
static uint32_t strmap_find(const tok_strmap_t *m, const char *s, size_t n, uint32_t h)
{
    uint32_t i = h & m->mask;
    while (m->slots[i] != 0) {
        if (m->hashes[i] == h && strmap_key_eq(m, m->slots[i] - 1, s, n))
            return i;
        i = (i + 1) & m->mask;
    }
    return i;
}

kvt_status_t tok_strmap_put(tok_strmap_t *m, uint32_t value)
{
    const char *s = m->arena + m->off[value];
    size_t n = m->len[value];
    uint32_t h = tok_hash(s, n);
    uint32_t i = strmap_find(m, s, n, h);
    if (m->slots[i] != 0)
        return KVT_ERR_EXISTS;
    if (m->n + 1 > (m->mask + 1) / 2)
        return KVT_ERR_FULL; /* sized by the caller; never expected */
    m->slots[i] = value + 1;
    m->hashes[i] = h;
    m->n++;
    return KVT_OK;
}

uint32_t tok_strmap_get(const tok_strmap_t *m, const char *s, size_t n)
{
    if (!m->slots)
        return TOK_NONE;
    uint32_t i = strmap_find(m, s, n, tok_hash(s, n));
    return m->slots[i] ? m->slots[i] - 1 : TOK_NONE;
}

void tok_strmap_free(tok_strmap_t *m)
{
    kvt_free(m->slots);
    kvt_free(m->hashes);
    m->slots = m->hashes = NULL;
}

kvt_status_t tok_pairmap_init(tok_pairmap_t *m, uint32_t n_max)
{
    uint32_t size = table_size(n_max);
    memset(m, 0, sizeof(*m));
    m->keys = kvt_malloc("tokenizer merges", (size_t)size * sizeof(uint64_t));
    m->rank = kvt_malloc("tokenizer merges", (size_t)size * sizeof(uint32_t));
    m->merged = kvt_malloc("tokenizer merges", (size_t)size * sizeof(uint32_t));
    if (!m->keys || !m->rank || !m->merged) {
        tok_pairmap_free(m);
        return KVT_ERR_NOMEM;
    }
    memset(m->keys, 0xff, (size_t)size * sizeof(uint64_t));
    m->mask = size - 1;
    return KVT_OK;
}

static uint32_t pair_slot(const tok_pairmap_t *m, uint64_t key)
{
    uint64_t h = key * 0x9e3779b97f4a7c15ull;
    uint32_t i = (uint32_t)(h >> 32) & m->mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key)
        i = (i + 1) & m->mask;
    return i;
}

void tok_pairmap_put(tok_pairmap_t *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged)
{
    uint64_t key = (uint64_t)a << 32 | b;
    uint32_t i = pair_slot(m, key);
    if (m->keys[i] == UINT64_MAX) {
        if (m->n + 1 > (m->mask + 1) / 2)
            return; /* the caller sized the map for every merge */
        m->keys[i] = key;
        m->n++;
    }
    m->rank[i] = rank;
    m->merged[i] = merged;
}

bool tok_pairmap_get(const tok_pairmap_t *m, uint32_t a, uint32_t b, uint32_t *rank_p,
                     uint32_t *merged_p)
{
    if (!m->keys)
        return false;
    uint32_t i = pair_slot(m, (uint64_t)a << 32 | b);
    if (m->keys[i] == UINT64_MAX)
        return false;
    *rank_p = m->rank[i];
    *merged_p = m->merged[i];
    return true;
}

void tok_pairmap_free(tok_pairmap_t *m)
{
    kvt_free(m->keys);
    kvt_free(m->rank);
    kvt_free(m->merged);
    m->keys = NULL;
    m->rank = m->merged = NULL;
}

void tok_ws_emit(tok_ws_t *ws, uint32_t id)
{
    if (ws->n < ws->cap)
        ws->ids[ws->n] = id;
    ws->n++;
}

/* --- the merge heap: min on (rank, pos) --- */

static bool merge_less(const tok_merge_t *a, const tok_merge_t *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static kvt_status_t heap_push(tok_ws_t *ws, uint32_t rank, uint32_t pos, uint32_t merged)
{
    if (ws->heap_n == ws->heap_cap) {
        size_t cap = ws->heap_cap ? 2 * ws->heap_cap : 64;
        tok_merge_t *h = kvt_realloc("tokenizer merge heap", ws->heap, cap * sizeof(*h));
        if (!h)
            return KVT_ERR_NOMEM;
        ws->heap = h;
        ws->heap_cap = cap;
    }
    tok_merge_t *h = ws->heap;
    size_t i = ws->heap_n++;
    tok_merge_t m = {rank, pos, merged};
    while (i > 0 && merge_less(&m, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = m;
    return KVT_OK;
}

static tok_merge_t heap_pop(tok_ws_t *ws)
{
    tok_merge_t *h = ws->heap;
    tok_merge_t top = h[0];
    tok_merge_t last = h[--ws->heap_n];
    size_t n = ws->heap_n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && merge_less(&h[c + 1], &h[c]))
            c++;
        if (!merge_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (n > 0)
        h[i] = last;
    return top;
}

/* The pair starting at symbol pos, if it merges. */
static kvt_status_t push_pair(tok_ws_t *ws, int32_t pos)
{
    const tok_sym_t *s = ws->sym;
    uint32_t rank, merged;
    if (pos < 0 || s[pos].next < 0)
        return KVT_OK;
    if (!tok_pairmap_get(&ws->tok->merges, s[pos].id, s[s[pos].next].id, &rank, &merged))
        return KVT_OK;
    return heap_push(ws, rank, (uint32_t)pos, merged);
}

static kvt_status_t merge_all(tok_ws_t *ws)
{
    tok_sym_t *s = ws->sym;
    while (ws->heap_n > 0) {
        tok_merge_t top = heap_pop(ws);
        tok_sym_t *left = &s[top.pos];
        if (left->gone || left->next < 0)
            continue;
        int32_t right = left->next;
        uint32_t rank, merged;
        if (!tok_pairmap_get(&ws->tok->merges, left->id, s[right].id, &rank, &merged) ||
            merged != top.merged)
            continue; /* stale: one side was merged away since */
        left->id = top.merged;
        s[right].gone = true;
        left->next = s[right].next;
        if (left->next >= 0)
            s[left->next].prev = (int32_t)top.pos;
        kvt_status_t st = push_pair(ws, left->prev);
        if (st == KVT_OK)
            st = push_pair(ws, (int32_t)top.pos);
        if (st != KVT_OK)
            return st;
    }
    return KVT_OK;
}

static void sym_add(tok_ws_t *ws, size_t *n_p, uint32_t id)
{
    size_t n = (*n_p)++;
    ws->sym[n] = (tok_sym_t){.prev = (int32_t)n - 1, .next = -1, .id = id, .gone = false};
    if (n > 0)
        ws->sym[n - 1].next = (int32_t)n;
}

/* Initial symbols: one per byte; bytes missing from the vocabulary become
 * unk (fused or not) or, without unk_token, are dropped, as in HF. */
static size_t build_symbols(tok_ws_t *ws, const uint8_t *s, size_t n)
{
    const kvt_tokenizer_t *tok = ws->tok;
    size_t count = 0;
    bool unk_pending = false;
    for (size_t i = 0; i < n; i++) {
        uint32_t id = tok->byte_id[s[i]];
        if (id != TOK_NONE) {
            if (unk_pending)
                sym_add(ws, &count, tok->unk_id);
            unk_pending = false;
            sym_add(ws, &count, id);
        } else if (tok->unk_id != TOK_NONE) {
            if (unk_pending && !tok->fuse_unk)
                sym_add(ws, &count, tok->unk_id);
            unk_pending = true;
        }
    }
    if (unk_pending)
        sym_add(ws, &count, tok->unk_id);
    return count;
}

/* ignore_merges: a pre-token that is itself in the vocabulary is one id. */
static bool whole_word(tok_ws_t *ws, const uint8_t *s, size_t n)
{
    if (n > KVT_TOK_MAX_TOKEN_BYTES)
        return false;
    char buf[2 * KVT_TOK_MAX_TOKEN_BYTES];
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += tok_utf8_encode(tok_byte_to_cp(s[i]), buf + len);
    uint32_t id = tok_strmap_get(&ws->tok->vocab_map, buf, len);
    if (id == TOK_NONE)
        return false;
    tok_ws_emit(ws, id);
    return true;
}

kvt_status_t tok_bpe(tok_ws_t *ws, const uint8_t *s, size_t n)
{
    if (n == 0 || (ws->tok->ignore_merges && whole_word(ws, s, n)))
        return KVT_OK;
    if (n > INT32_MAX / 2)
        return KVT_ERR_TOO_LARGE;
    if (n > ws->sym_cap) {
        tok_sym_t *sym = kvt_realloc("tokenizer symbols", ws->sym, n * sizeof(*sym));
        if (!sym)
            return KVT_ERR_NOMEM;
        ws->sym = sym;
        ws->sym_cap = n;
    }
    size_t count = build_symbols(ws, s, n);
    ws->heap_n = 0;
    for (size_t i = 0; i + 1 < count; i++) {
        kvt_status_t st = push_pair(ws, (int32_t)i);
        if (st != KVT_OK)
            return st;
    }
    kvt_status_t st = merge_all(ws);
    if (st != KVT_OK)
        return st;
    for (int32_t i = count ? 0 : -1; i >= 0; i = ws->sym[i].next)
        tok_ws_emit(ws, ws->sym[i].id);
    return KVT_OK;
}
