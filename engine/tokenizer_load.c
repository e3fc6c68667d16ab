/* Tokenizer: tokenizer.json and tokenizer_config.json into kvt_tokenizer.
 *
 * tokenizer.json (Hugging Face `tokenizers` serialization), the parts read:
 *
 *   model          {"type": "BPE", "vocab": {token: id}, "merges": ["a b"] or
 *                  [["a","b"]], "ignore_merges", "unk_token", "fuse_unk",
 *                  "dropout" (null or 0), "byte_fallback" (false),
 *                  "continuing_subword_prefix"/"end_of_word_suffix" (null)}
 *   added_tokens   [{"id", "content", "special", "lstrip", "rstrip",
 *                  "single_word", "normalized"}]
 *   normalizer     null, NFC, or a Sequence of NFC
 *   pre_tokenizer  ByteLevel, or a Sequence of Split/Digits/Sequence ending
 *                  in ByteLevel
 *   decoder        ByteLevel
 *   post_processor ignored (encode never adds special tokens);
 *   truncation and padding are ignored with a warning.
 *
 * The file is untrusted: it must be valid UTF-8 (as serde requires), ids
 * are below KVT_TOK_MAX_VOCAB and unique, token strings at most
 * KVT_TOK_MAX_TOKEN_BYTES, merges name vocabulary tokens whose
 * concatenation is in the vocabulary.  Each rejection logs one line naming
 * the field and returns KVT_ERR_INVALID (KVT_ERR_TOO_LARGE for sizes).
 *
 * Added-token ids follow HF, whatever the file's "id" says (HF only warns
 * when they differ, and so do we): a content already in the model
 * vocabulary takes the model's id; the others take, in file order, the ids
 * after the model vocabulary's count of tokens.  For files that HF wrote
 * these are the file's ids. */
#include "engine/tokenizerInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#define FIELD_LEN 96

static const cJSON *get(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

static bool absent(const cJSON *item)
{
    return !item || cJSON_IsNull(item);
}

/* An escaped NUL (\u0000) in a string: cJSON would cut the string there,
 * silently making another token of it. */
static bool has_escaped_nul(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\\')
            continue;
        size_t run = 0;
        while (i < len && s[i] == '\\')
            run++, i++;
        if (run % 2 == 1 && len - i >= 5 && memcmp(s + i, "u0000", 5) == 0)
            return true;
    }
    return false;
}

/* cJSON accepts text after the value; serde (HF) does not, nor do we. */
static cJSON *parse_whole(const char *json, size_t len)
{
    const char *end = NULL;
    if (has_escaped_nul(json, len))
        return NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
    while (root && end && end < json + len && strchr(" \t\r\n", *end) && *end)
        end++;
    if (root && end != json + len) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static kvt_status_t bad(const char *field, const char *why)
{
    kvt_log_error("tokenizer: %s field=%s", why, field);
    return KVT_ERR_INVALID;
}

/* An optional bool: absent or null gives the default. */
static kvt_status_t get_bool(const cJSON *obj, const char *key, bool dflt, const char *field,
                             bool *out_p)
{
    const cJSON *item = get(obj, key);
    if (absent(item)) {
        *out_p = dflt;
        return KVT_OK;
    }
    if (!cJSON_IsBool(item)) {
        kvt_log_error("tokenizer: not a boolean field=%s.%s", field, key);
        return KVT_ERR_INVALID;
    }
    *out_p = cJSON_IsTrue(item);
    return KVT_OK;
}

static bool get_id(const cJSON *item, uint32_t *id_p)
{
    if (!cJSON_IsNumber(item))
        return false;
    double d = item->valuedouble;
    if (!(d >= 0 && d < (double)KVT_TOK_MAX_VOCAB) || (double)(uint32_t)d != d)
        return false;
    *id_p = (uint32_t)d;
    return true;
}

static bool str_is(const cJSON *item, const char *s)
{
    return cJSON_IsString(item) && strcmp(item->valuestring, s) == 0;
}

/* --- model: vocab --- */

/* First pass: count entries and find the largest id. */
static kvt_status_t scan_vocab(const cJSON *vocab, uint32_t *n_p, uint32_t *max_p)
{
    const cJSON *e;
    uint32_t n = 0, max = 0, id = 0;
    if (!cJSON_IsObject(vocab))
        return bad("model.vocab", "missing or not an object");
    cJSON_ArrayForEach(e, vocab)
    {
        if (!get_id(e, &id)) {
            kvt_log_error("tokenizer: id not an integer in [0, %u) field=model.vocab "
                          "token=\"%.64s\"",
                          KVT_TOK_MAX_VOCAB, e->string);
            return KVT_ERR_INVALID;
        }
        if (strlen(e->string) == 0 || strlen(e->string) > KVT_TOK_MAX_TOKEN_BYTES) {
            kvt_log_error("tokenizer: token empty or longer than %d bytes field=model.vocab id=%u",
                          KVT_TOK_MAX_TOKEN_BYTES, id);
            return KVT_ERR_INVALID;
        }
        n++;
        max = id > max ? id : max;
    }
    if (n == 0)
        return bad("model.vocab", "empty vocabulary");
    *n_p = n;
    *max_p = max;
    return KVT_OK;
}

static kvt_status_t fill_vocab(kvt_tokenizer_t *tok, const cJSON *vocab, uint32_t n)
{
    const cJSON *e;
    uint32_t id = 0;
    cJSON_ArrayForEach(e, vocab)
    {
        get_id(e, &id);
        if (tok->flags[id] & TOK_F_PRESENT) {
            kvt_log_error("tokenizer: duplicate id field=model.vocab id=%u", id);
            return KVT_ERR_INVALID;
        }
        size_t len = strlen(e->string);
        tok->flags[id] = TOK_F_PRESENT;
        tok->vs_off[id] = (uint32_t)tok->vs.len;
        tok->vs_len[id] = (uint16_t)len;
        kvt_status_t st = tok_buf_append(&tok->vs, e->string, len, "tokenizer vocab");
        if (st != KVT_OK)
            return st;
    }
    kvt_status_t st = tok_strmap_init(&tok->vocab_map, n, tok->vs.p, tok->vs_off, tok->vs_len);
    for (uint32_t i = 0; i < tok->vocab_size && st == KVT_OK; i++) {
        if (!(tok->flags[i] & TOK_F_PRESENT))
            continue;
        st = tok_strmap_put(&tok->vocab_map, i);
        if (st == KVT_ERR_EXISTS) {
            kvt_log_error("tokenizer: duplicate token field=model.vocab id=%u", i);
            st = KVT_ERR_INVALID;
        }
    }
    return st;
}

/* --- added tokens --- */

static kvt_status_t check_added(const cJSON *e, int i, uint32_t *id_p)
{
    char field[FIELD_LEN];
    snprintf(field, sizeof(field), "added_tokens[%d]", i);
    const cJSON *content = get(e, "content");
    if (!cJSON_IsObject(e) || !get_id(get(e, "id"), id_p))
        return bad(field, "not an object with an integer id below the vocabulary bound");
    if (!cJSON_IsString(content) || strlen(content->valuestring) == 0 ||
        strlen(content->valuestring) > KVT_TOK_MAX_TOKEN_BYTES)
        return bad(field, "content missing, empty or too long");
    return KVT_OK;
}

static kvt_status_t scan_added(const cJSON *added, uint32_t *n_p)
{
    const cJSON *e;
    int i = 0;
    uint32_t id = 0;
    *n_p = 0;
    if (absent(added))
        return KVT_OK;
    if (!cJSON_IsArray(added))
        return bad("added_tokens", "not an array");
    cJSON_ArrayForEach(e, added)
    {
        kvt_status_t st = check_added(e, i++, &id);
        if (st != KVT_OK)
            return st;
    }
    *n_p = (uint32_t)i;
    return KVT_OK;
}

static kvt_status_t added_flags(const cJSON *e, const char *field, tok_added_t *a)
{
    kvt_status_t st = get_bool(e, "special", false, field, &a->special);
    if (st == KVT_OK)
        st = get_bool(e, "lstrip", false, field, &a->lstrip);
    if (st == KVT_OK)
        st = get_bool(e, "rstrip", false, field, &a->rstrip);
    if (st == KVT_OK)
        st = get_bool(e, "single_word", false, field, &a->single_word);
    if (st == KVT_OK)
        st = get_bool(e, "normalized", !a->special, field, &a->normalized);
    return st;
}

/* The id HF gives the token (see the file comment): the vocabulary's, or
 * the next one after the vocabulary and the added tokens so far. */
static kvt_status_t added_id(kvt_tokenizer_t *tok, const char *content, uint32_t file_id,
                             const char *field, uint32_t *id_p)
{
    uint32_t id = tok_strmap_get(&tok->vocab_map, content, strlen(content));
    if (id == TOK_NONE) {
        id = tok->vocab_map.n + tok->n_new_added++;
        if (id >= KVT_TOK_MAX_VOCAB)
            return bad(field, "the id HF gives this token is over the vocabulary bound");
        if (tok->flags[id] & TOK_F_PRESENT)
            return bad(field, "the id HF gives this token names a vocabulary token "
                              "(vocabulary ids with holes)");
    }
    if (id != file_id)
        kvt_log_warn("tokenizer: added token gets another id than the file says, as in HF "
                     "field=%s id=%u file_id=%u",
                     field, id, file_id);
    *id_p = id;
    return KVT_OK;
}

static kvt_status_t add_one(kvt_tokenizer_t *tok, const cJSON *e, uint32_t i)
{
    char field[FIELD_LEN];
    snprintf(field, sizeof(field), "added_tokens[%u]", i);
    tok_added_t *a = &tok->added[i];
    const char *content = get(e, "content")->valuestring;
    uint32_t file_id = 0;
    get_id(get(e, "id"), &file_id);
    kvt_status_t st = added_flags(e, field, a);
    if (st == KVT_OK)
        st = added_id(tok, content, file_id, field, &a->id);
    if (st != KVT_OK)
        return st;
    if (tok->flags[a->id] & TOK_F_ADDED)
        return bad(field, "duplicate added token");
    tok->flags[a->id] |= TOK_F_PRESENT | TOK_F_ADDED | (a->special ? TOK_F_SPECIAL : 0);
    tok->added_off[i] = (uint32_t)tok->added_text.len;
    tok->added_len[i] = (uint16_t)strlen(content);
    return tok_buf_append(&tok->added_text, content, strlen(content), "tokenizer added tokens");
}

static kvt_status_t added_index(kvt_tokenizer_t *tok)
{
    static const char word_class[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
    kvt_status_t st = tok_strmap_init(&tok->added_map, tok->n_added, tok->added_text.p,
                                      tok->added_off, tok->added_len);
    for (uint32_t i = 0; i < tok->n_added && st == KVT_OK; i++) {
        const tok_added_t *a = &tok->added[i];
        const char *s = tok->added_text.p + tok->added_off[i];
        st = tok_strmap_put(&tok->added_map, i);
        if (st == KVT_ERR_EXISTS) {
            kvt_log_error("tokenizer: duplicate content field=added_tokens[%u]", i);
            return KVT_ERR_INVALID;
        }
        if (st == KVT_OK)
            st = tok_trie_add(a->normalized ? &tok->trie_norm : &tok->trie_raw, s,
                              tok->added_len[i], (int32_t)i);
        if (st == KVT_OK && a->single_word && !tok->word_re)
            st = tok_regex_compile(word_class, strlen(word_class), false,
                                   "added_tokens.single_word", &tok->word_re);
    }
    return st;
}

static kvt_status_t fill_added(kvt_tokenizer_t *tok, const cJSON *added)
{
    const cJSON *e;
    uint32_t i = 0;
    if (tok->n_added == 0)
        return KVT_OK;
    tok->added = kvt_calloc("tokenizer added tokens", tok->n_added, sizeof(*tok->added));
    tok->added_off = kvt_calloc("tokenizer added tokens", tok->n_added, sizeof(uint32_t));
    tok->added_len = kvt_calloc("tokenizer added tokens", tok->n_added, sizeof(uint16_t));
    if (!tok->added || !tok->added_off || !tok->added_len)
        return KVT_ERR_NOMEM;
    cJSON_ArrayForEach(e, added)
    {
        kvt_status_t st = add_one(tok, e, i++);
        if (st != KVT_OK)
            return st;
    }
    return added_index(tok);
}

/* --- per-id tables --- */

static kvt_status_t alloc_ids(kvt_tokenizer_t *tok)
{
    uint32_t n = tok->vocab_size;
    tok->flags = kvt_calloc("tokenizer ids", n, 1);
    tok->vs_off = kvt_calloc("tokenizer ids", n, sizeof(uint32_t));
    tok->vs_len = kvt_calloc("tokenizer ids", n, sizeof(uint16_t));
    tok->dec_off = kvt_calloc("tokenizer ids", n, sizeof(uint32_t));
    tok->dec_len = kvt_calloc("tokenizer ids", n, sizeof(uint16_t));
    if (!tok->flags || !tok->vs_off || !tok->vs_len || !tok->dec_off || !tok->dec_len)
        return KVT_ERR_NOMEM;
    return KVT_OK;
}

/* HF's ByteLevel decoder on one token: each character back to its byte;
 * a token with a character outside the byte alphabet stays as it is. */
static size_t byte_level_decode(const char *s, size_t n, char *out)
{
    size_t o = 0, cl;
    for (size_t i = 0; i < n; i += cl) {
        int b = tok_cp_to_byte(tok_utf8_decode(s + i, &cl));
        if (b < 0) {
            memcpy(out, s, n);
            return n;
        }
        out[o++] = (char)b;
    }
    return o;
}

static kvt_status_t fill_decoded(kvt_tokenizer_t *tok)
{
    char buf[KVT_TOK_MAX_TOKEN_BYTES];
    uint32_t *index = kvt_malloc("tokenizer ids", (size_t)tok->vocab_size * sizeof(uint32_t));
    if (!index)
        return KVT_ERR_NOMEM;
    memset(index, 0xff, (size_t)tok->vocab_size * sizeof(uint32_t));
    for (uint32_t i = 0; i < tok->n_added; i++)
        index[tok->added[i].id] = i;
    kvt_status_t st = KVT_OK;
    for (uint32_t id = 0; id < tok->vocab_size && st == KVT_OK; id++) {
        const char *p = buf;
        size_t n = 0;
        if (index[id] != TOK_NONE) {
            p = tok->added_text.p + tok->added_off[index[id]];
            n = tok->added_len[index[id]];
        } else if (tok->flags[id] & TOK_F_PRESENT) {
            n = byte_level_decode(tok->vs.p + tok->vs_off[id], tok->vs_len[id], buf);
        }
        tok->dec_off[id] = (uint32_t)tok->dec.len;
        tok->dec_len[id] = (uint16_t)n;
        st = tok_buf_append(&tok->dec, p, n, "tokenizer decode table");
    }
    kvt_free(index);
    return st;
}

/* --- merges --- */

static kvt_status_t merge_strings(const cJSON *m, const char **a_p, size_t *la_p,
                                  const char **b_p, size_t *lb_p)
{
    if (cJSON_IsString(m)) {
        const char *sp = strchr(m->valuestring, ' ');
        if (!sp)
            return KVT_ERR_INVALID;
        *a_p = m->valuestring;
        *la_p = (size_t)(sp - m->valuestring);
        *b_p = sp + 1;
        *lb_p = strlen(sp + 1);
        return KVT_OK;
    }
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != 2 || !cJSON_IsString(m->child) ||
        !cJSON_IsString(m->child->next))
        return KVT_ERR_INVALID;
    *a_p = m->child->valuestring;
    *la_p = strlen(*a_p);
    *b_p = m->child->next->valuestring;
    *lb_p = strlen(*b_p);
    return KVT_OK;
}

static kvt_status_t add_merge(kvt_tokenizer_t *tok, const cJSON *m, uint32_t rank)
{
    const char *a, *b;
    size_t la, lb;
    char ab[2 * KVT_TOK_MAX_TOKEN_BYTES];
    if (merge_strings(m, &a, &la, &b, &lb) != KVT_OK) {
        kvt_log_error("tokenizer: not \"a b\" or [\"a\",\"b\"] field=model.merges[%u]", rank);
        return KVT_ERR_INVALID;
    }
    uint32_t ia = tok_strmap_get(&tok->vocab_map, a, la);
    uint32_t ib = tok_strmap_get(&tok->vocab_map, b, lb);
    uint32_t iab = TOK_NONE;
    if (la <= KVT_TOK_MAX_TOKEN_BYTES && lb <= KVT_TOK_MAX_TOKEN_BYTES) {
        memcpy(ab, a, la);
        memcpy(ab + la, b, lb);
        iab = tok_strmap_get(&tok->vocab_map, ab, la + lb);
    }
    if (ia == TOK_NONE || ib == TOK_NONE || iab == TOK_NONE) {
        kvt_log_error("tokenizer: merge names a token not in the vocabulary "
                      "field=model.merges[%u] pair=\"%.*s\" \"%.*s\"",
                      rank, (int)(la < 64 ? la : 64), a, (int)(lb < 64 ? lb : 64), b);
        return KVT_ERR_INVALID;
    }
    tok_pairmap_put(&tok->merges, ia, ib, rank, iab);
    return KVT_OK;
}

static kvt_status_t parse_merges(kvt_tokenizer_t *tok, const cJSON *merges)
{
    const cJSON *m;
    uint32_t n = 0;
    if (absent(merges))
        return tok_pairmap_init(&tok->merges, 0);
    if (!cJSON_IsArray(merges))
        return bad("model.merges", "not an array");
    cJSON_ArrayForEach(m, merges)
    {
        if (++n > 2 * KVT_TOK_MAX_VOCAB)
            return bad("model.merges", "more merges than the bound");
    }
    kvt_status_t st = tok_pairmap_init(&tok->merges, n);
    uint32_t rank = 0;
    cJSON_ArrayForEach(m, merges)
    {
        if (st != KVT_OK)
            break;
        st = add_merge(tok, m, rank++);
    }
    return st;
}

/* --- model options --- */

static bool empty_or_null(const cJSON *item)
{
    return absent(item) || str_is(item, "");
}

static kvt_status_t model_options(kvt_tokenizer_t *tok, const cJSON *model)
{
    const cJSON *type = get(model, "type"), *dropout = get(model, "dropout");
    const cJSON *unk = get(model, "unk_token");
    bool byte_fallback;
    if (!absent(type) && !str_is(type, "BPE"))
        return bad("model.type", "unsupported model (only BPE)");
    if (!absent(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return bad("model.dropout", "dropout is not supported");
    if (!empty_or_null(get(model, "continuing_subword_prefix")) ||
        !empty_or_null(get(model, "end_of_word_suffix")))
        return bad("model.continuing_subword_prefix", "subword prefix/suffix not supported");
    kvt_status_t st = get_bool(model, "byte_fallback", false, "model", &byte_fallback);
    if (st == KVT_OK && byte_fallback)
        return bad("model.byte_fallback", "byte_fallback is not supported");
    if (st == KVT_OK)
        st = get_bool(model, "ignore_merges", false, "model", &tok->ignore_merges);
    if (st == KVT_OK)
        st = get_bool(model, "fuse_unk", false, "model", &tok->fuse_unk);
    tok->unk_id = TOK_NONE;
    if (st != KVT_OK || absent(unk))
        return st;
    if (cJSON_IsString(unk))
        tok->unk_id = tok_strmap_get(&tok->vocab_map, unk->valuestring, strlen(unk->valuestring));
    return tok->unk_id == TOK_NONE ? bad("model.unk_token", "not a vocabulary token") : KVT_OK;
}

/* --- normalizer, pre-tokenizer, decoder --- */

static kvt_status_t parse_normalizer(kvt_tokenizer_t *tok, const cJSON *norm)
{
    const cJSON *e;
    if (absent(norm))
        return KVT_OK;
    if (str_is(get(norm, "type"), "Sequence") && cJSON_IsArray(get(norm, "normalizers"))) {
        cJSON_ArrayForEach(e, get(norm, "normalizers"))
        {
            if (!str_is(get(e, "type"), "NFC"))
                return bad("normalizer.normalizers", "unsupported normalizer (null or NFC only)");
        }
    } else if (!str_is(get(norm, "type"), "NFC")) {
        return bad("normalizer.type", "unsupported normalizer (null or NFC only)");
    }
    tok->nfc = true;
    static const char may_change[] =
        "[\\p{M}\\x{1100}-\\x{11FF}\\x{0340}\\x{0341}\\x{0343}\\x{0344}\\x{0374}\\x{037E}"
        "\\x{0387}\\x{1F71}-\\x{1FFD}\\x{2000}\\x{2001}\\x{2126}\\x{212A}\\x{212B}\\x{2329}"
        "\\x{232A}\\x{F900}-\\x{FAFF}\\x{2F800}-\\x{2FA1F}]";
    return tok_regex_compile(may_change, sizeof(may_change) - 1, false, "normalizer",
                             &tok->nfc_re);
}

static tok_stage_t *new_stage(kvt_tokenizer_t *tok, const char *field)
{
    if (tok->n_stages == TOK_MAX_STAGES) {
        bad(field, "too many pre-tokenizers");
        return NULL;
    }
    tok_stage_t *s = &tok->stages[tok->n_stages++];
    memset(s, 0, sizeof(*s));
    return s;
}

static kvt_status_t split_behavior(const cJSON *b, const char *field, tok_behavior_t *out_p)
{
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                        "MergedWithNext", "Contiguous"};
    for (int i = 0; i < 5; i++) {
        if (str_is(b, names[i])) {
            *out_p = (tok_behavior_t)i;
            return KVT_OK;
        }
    }
    return bad(field, "unknown or missing Split behavior");
}

static kvt_status_t parse_split(kvt_tokenizer_t *tok, const cJSON *pt, const char *field)
{
    const cJSON *pat = get(pt, "pattern");
    const cJSON *re = get(pat, "Regex"), *lit = get(pat, "String");
    tok_stage_t *s = new_stage(tok, field);
    if (!s)
        return KVT_ERR_INVALID;
    s->kind = TOK_STAGE_SPLIT;
    kvt_status_t st = split_behavior(get(pt, "behavior"), field, &s->behavior);
    if (st == KVT_OK)
        st = get_bool(pt, "invert", false, field, &s->invert);
    if (st != KVT_OK)
        return st;
    const cJSON *p = cJSON_IsString(re) ? re : lit;
    if (!cJSON_IsObject(pat) || !cJSON_IsString(p))
        return bad(field, "pattern is not {\"Regex\": ...} or {\"String\": ...}");
    return tok_regex_compile(p->valuestring, strlen(p->valuestring), p == lit, field, &s->re);
}

static kvt_status_t parse_digits(kvt_tokenizer_t *tok, const cJSON *pt, const char *field)
{
    bool individual;
    kvt_status_t st = get_bool(pt, "individual_digits", false, field, &individual);
    tok_stage_t *s = st == KVT_OK ? new_stage(tok, field) : NULL;
    if (!s)
        return KVT_ERR_INVALID;
    s->kind = TOK_STAGE_SPLIT;
    s->behavior = individual ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS;
    return tok_regex_compile("\\p{N}", 5, false, field, &s->re);
}

static kvt_status_t parse_byte_level(kvt_tokenizer_t *tok, const cJSON *pt, const char *field)
{
    static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
                               "\\s+(?!\\S)|\\s+";
    bool use_regex;
    tok_stage_t *s = new_stage(tok, field);
    if (!s)
        return KVT_ERR_INVALID;
    s->kind = TOK_STAGE_BYTELEVEL;
    kvt_status_t st = get_bool(pt, "add_prefix_space", true, field, &s->add_prefix_space);
    if (st == KVT_OK)
        st = get_bool(pt, "use_regex", true, field, &use_regex);
    if (st == KVT_OK && use_regex)
        st = tok_regex_compile(gpt2, sizeof(gpt2) - 1, false, field, &s->re);
    return st;
}

static kvt_status_t parse_pre(kvt_tokenizer_t *tok, const cJSON *pt, const char *field, int depth)
{
    const cJSON *type = get(pt, "type"), *e;
    char sub[FIELD_LEN];
    int i = 0;
    if (str_is(type, "Split"))
        return parse_split(tok, pt, field);
    if (str_is(type, "Digits"))
        return parse_digits(tok, pt, field);
    if (str_is(type, "ByteLevel"))
        return parse_byte_level(tok, pt, field);
    if (!str_is(type, "Sequence")) {
        kvt_log_error("tokenizer: unsupported pre-tokenizer field=%s type=\"%.40s\"", field,
                      cJSON_IsString(type) ? type->valuestring : "(none)");
        return KVT_ERR_INVALID;
    }
    if (depth >= TOK_MAX_NESTING || !cJSON_IsArray(get(pt, "pretokenizers")))
        return bad(field, "Sequence without a pretokenizers array, or nested too deep");
    cJSON_ArrayForEach(e, get(pt, "pretokenizers"))
    {
        snprintf(sub, sizeof(sub), "%.60s.pretokenizers[%d]", field, i++);
        kvt_status_t st = parse_pre(tok, e, sub, depth + 1);
        if (st != KVT_OK)
            return st;
    }
    return KVT_OK;
}

static kvt_status_t parse_pipeline(kvt_tokenizer_t *tok, const cJSON *root)
{
    const cJSON *pre = get(root, "pre_tokenizer"), *dec = get(root, "decoder");
    if (!str_is(get(dec, "type"), "ByteLevel"))
        return bad("decoder", "unsupported decoder (ByteLevel only)");
    if (absent(pre))
        return bad("pre_tokenizer", "missing (byte-level BPE needs ByteLevel)");
    kvt_status_t st = parse_normalizer(tok, get(root, "normalizer"));
    if (st == KVT_OK)
        st = parse_pre(tok, pre, "pre_tokenizer", 0);
    if (st != KVT_OK)
        return st;
    for (int i = 0; i < tok->n_stages; i++)
        if ((tok->stages[i].kind == TOK_STAGE_BYTELEVEL) != (i == tok->n_stages - 1))
            return bad("pre_tokenizer", "ByteLevel must come once, last");
    if (tok->n_stages == 0)
        return bad("pre_tokenizer", "no ByteLevel pre-tokenizer");
    if (!absent(get(root, "truncation")) || !absent(get(root, "padding")))
        kvt_log_warn("tokenizer: truncation and padding settings are ignored");
    return KVT_OK;
}

/* --- the whole file --- */

static kvt_status_t load_model(kvt_tokenizer_t *tok, const cJSON *root)
{
    const cJSON *model = get(root, "model"), *added = get(root, "added_tokens");
    uint32_t n_vocab = 0, max_id = 0, last = 0;
    if (!cJSON_IsObject(model))
        return bad("model", "missing or not an object");
    kvt_status_t st = scan_vocab(get(model, "vocab"), &n_vocab, &max_id);
    if (st == KVT_OK)
        st = scan_added(added, &tok->n_added);
    if (st != KVT_OK)
        return st;
    /* Room for every id HF may give: see added_id. */
    tok->vocab_size = max_id + 1 > n_vocab + tok->n_added ? max_id + 1 : n_vocab + tok->n_added;
    st = alloc_ids(tok);
    if (st == KVT_OK)
        st = fill_vocab(tok, get(model, "vocab"), n_vocab);
    if (st == KVT_OK)
        st = model_options(tok, model);
    if (st == KVT_OK)
        st = fill_added(tok, added);
    for (uint32_t id = 0; st == KVT_OK && id < tok->vocab_size; id++)
        last = tok->flags[id] & TOK_F_PRESENT ? id : last;
    tok->vocab_size = last + 1; /* the arrays may be longer */
    if (st == KVT_OK)
        st = fill_decoded(tok);
    if (st == KVT_OK)
        st = parse_merges(tok, get(model, "merges"));
    for (int b = 0; b < 256; b++) {
        char c[4];
        size_t n = tok_utf8_encode(tok_byte_to_cp((uint8_t)b), c);
        tok->byte_id[b] = tok->vocab_map.slots ? tok_strmap_get(&tok->vocab_map, c, n) : TOK_NONE;
    }
    return st;
}

kvt_status_t tok_load_json(kvt_tokenizer_t *tok, const char *json, size_t len)
{
    if (!tok_utf8_valid(json, len))
        return bad("(file)", "tokenizer.json is not valid utf-8");
    cJSON *root = parse_whole(json, len);
    if (!root)
        return bad("(file)", "invalid json");
    kvt_status_t st = cJSON_IsObject(root) ? KVT_OK : bad("(file)", "not a json object");
    if (st == KVT_OK)
        st = load_model(tok, root);
    if (st == KVT_OK)
        st = parse_pipeline(tok, root);
    cJSON_Delete(root);
    return st;
}

/* --- tokenizer_config.json --- */

/* A token name: a string, or an object with "content" (AddedToken form). */
static kvt_status_t config_token(const kvt_tokenizer_t *tok, const cJSON *root, const char *key,
                                 bool *has_p, uint32_t *id_p)
{
    const cJSON *item = get(root, key);
    *has_p = false;
    if (absent(item))
        return KVT_OK;
    if (cJSON_IsObject(item))
        item = get(item, "content");
    if (!cJSON_IsString(item)) {
        kvt_log_error("tokenizer: not a string or {\"content\": string} field=config.%s", key);
        return KVT_ERR_INVALID;
    }
    int64_t id = kvt_tokenizer_find(tok, item->valuestring);
    if (id < 0) {
        kvt_log_error("tokenizer: token not in the vocabulary field=config.%s token=\"%.64s\"",
                      key, item->valuestring);
        return KVT_ERR_INVALID;
    }
    *has_p = true;
    *id_p = (uint32_t)id;
    return KVT_OK;
}

kvt_status_t tok_load_config(kvt_tokenizer_t *tok, const char *json, size_t len)
{
    cJSON *root = parse_whole(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return bad("config", "invalid json or not an object");
    }
    kvt_status_t st = get_bool(root, "add_bos_token", false, "config", &tok->add_bos);
    if (st == KVT_OK)
        st = config_token(tok, root, "bos_token", &tok->has_bos, &tok->bos);
    if (st == KVT_OK)
        st = config_token(tok, root, "eos_token", &tok->has_eos, &tok->eos);
    if (st == KVT_OK && tok->add_bos && !tok->has_bos)
        st = bad("config.add_bos_token", "add_bos_token without a bos_token");
    cJSON_Delete(root);
    return st;
}

void tok_free_parts(kvt_tokenizer_t *tok)
{
    kvt_free(tok->flags);
    kvt_free(tok->vs_off);
    kvt_free(tok->vs_len);
    kvt_free(tok->dec_off);
    kvt_free(tok->dec_len);
    tok_buf_free(&tok->vs);
    tok_buf_free(&tok->dec);
    tok_buf_free(&tok->added_text);
    tok_strmap_free(&tok->vocab_map);
    tok_strmap_free(&tok->added_map);
    tok_pairmap_free(&tok->merges);
    kvt_free(tok->added);
    kvt_free(tok->added_off);
    kvt_free(tok->added_len);
    tok_trie_free(&tok->trie_raw);
    tok_trie_free(&tok->trie_norm);
    pcre2_code_free(tok->word_re);
    pcre2_code_free(tok->nfc_re);
    for (int i = 0; i < tok->n_stages; i++)
        pcre2_code_free(tok->stages[i].re);
}
