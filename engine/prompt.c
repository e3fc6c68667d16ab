/* Prompt formats (prompt.h): token sequences for plain, FIM and EFIM. */
#include "engine/prompt.h"

#include "common/log.h"

#include <string.h>

kvt_status_t kvt_prompt_format_parse(const char *name, kvt_prompt_format_t *format_p)
{
    static const struct {
        const char *name;
        kvt_prompt_format_t format;
    } names[] = {{"plain", KVT_FORMAT_PLAIN}, {"fim", KVT_FORMAT_FIM}, {"efim", KVT_FORMAT_EFIM}};
    for (size_t i = 0; name && i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(name, names[i].name) == 0) {
            *format_p = names[i].format;
            return KVT_OK;
        }
    }
    return KVT_ERR_INVALID;
}

const char *kvt_prompt_format_name(kvt_prompt_format_t format)
{
    switch (format) {
    case KVT_FORMAT_PLAIN: return "plain";
    case KVT_FORMAT_FIM: return "fim";
    case KVT_FORMAT_EFIM: return "efim";
    }
    return "unknown";
}

static kvt_status_t find_token(const kvt_tokenizer_t *tok, const char *name, size_t len,
                               uint32_t *id_p)
{
    char buf[KVT_TOK_MAX_TOKEN_BYTES + 1];
    if (len == 0 || len > KVT_TOK_MAX_TOKEN_BYTES)
        return KVT_ERR_INVALID;
    memcpy(buf, name, len);
    buf[len] = '\0';
    int64_t id = kvt_tokenizer_find(tok, buf);
    if (id < 0) {
        kvt_log_error("fim token not in the vocabulary token=\"%s\"", buf);
        return KVT_ERR_NOT_FOUND;
    }
    *id_p = (uint32_t)id;
    return KVT_OK;
}

kvt_status_t kvt_prompt_fim_tokens(const kvt_tokenizer_t *tok, const char *spec,
                                   kvt_fim_tokens_t *fim_p)
{
    kvt_fim_tokens_t fim;
    kvt_tokenizer_fim_tokens(tok, &fim);
    if (spec && *spec) {
        uint32_t ids[3];
        const char *p = spec;
        for (int i = 0; i < 3; i++) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            if ((i < 2) != (comma != NULL)) {
                kvt_log_error("bad fim token list value=\"%s\" expected=PRE,SUF,MID", spec);
                return KVT_ERR_INVALID;
            }
            kvt_status_t st = find_token(tok, p, len, &ids[i]);
            if (st != KVT_OK)
                return st;
            p = comma ? comma + 1 : p + len;
        }
        fim.found = true;
        fim.pre = ids[0];
        fim.suf = ids[1];
        fim.mid = ids[2];
    }
    if (!fim.found)
        return KVT_ERR_NOT_FOUND;
    *fim_p = fim;
    return KVT_OK;
}

/* Appends the tokens of text[len] at ids + *n (capacity permitting); *n
 * grows by the count even when it does not fit, so the caller learns the
 * size it needs. */
static kvt_status_t append_text(const kvt_tokenizer_t *tok, const char *text, size_t len,
                                uint32_t *ids, size_t cap, size_t *n)
{
    if (len == 0)
        return KVT_OK;
    if (len > KVT_TOK_MAX_TEXT) {
        kvt_log_error("prompt piece too long bytes=%zu max=%u", len, (unsigned)KVT_TOK_MAX_TEXT);
        return KVT_ERR_TOO_LARGE;
    }
    size_t room = *n < cap ? cap - *n : 0;
    size_t got = 0;
    kvt_status_t st = kvt_tokenizer_encode(tok, text, len, 0, room ? ids + *n : NULL, room, &got);
    if (st != KVT_OK && st != KVT_ERR_TOO_LARGE)
        return st;
    *n += got;
    return KVT_OK;
}

static void append_id(uint32_t id, uint32_t *ids, size_t cap, size_t *n)
{
    if (*n < cap)
        ids[*n] = id;
    (*n)++;
}

kvt_status_t kvt_prompt_build(const kvt_tokenizer_t *tok, const kvt_fim_tokens_t *fim,
                              const kvt_prompt_t *pr, uint32_t *ids, size_t cap, size_t *n_p,
                              size_t *stable_p)
{
    bool infill = pr->format != KVT_FORMAT_PLAIN;
    if (infill && (!fim || !fim->found)) {
        kvt_log_error("prompt format needs fim tokens format=%s",
                      kvt_prompt_format_name(pr->format));
        return KVT_ERR_INVALID;
    }
    size_t anchor = pr->format == KVT_FORMAT_EFIM ? pr->anchor_len : pr->prefix_len;
    if (anchor > pr->prefix_len) {
        kvt_log_error("anchor past the prefix anchor_len=%zu prefix_len=%zu", anchor,
                      pr->prefix_len);
        return KVT_ERR_INVALID;
    }
    size_t n = 0, stable = 0;
    kvt_status_t st = KVT_OK;
    if (pr->add_bos)
        append_id(pr->bos, ids, cap, &n);
    if (!infill) {
        st = append_text(tok, pr->prefix, pr->prefix_len, ids, cap, &n);
        stable = n;
    } else {
        append_id(fim->pre, ids, cap, &n);
        st = append_text(tok, pr->prefix, anchor, ids, cap, &n);
        if (pr->format == KVT_FORMAT_FIM)
            stable = n;
        append_id(fim->suf, ids, cap, &n);
        if (st == KVT_OK && pr->suffix)
            st = append_text(tok, pr->suffix, pr->suffix_len, ids, cap, &n);
        append_id(fim->mid, ids, cap, &n);
        if (pr->format == KVT_FORMAT_EFIM) {
            stable = n;
            if (st == KVT_OK)
                st = append_text(tok, pr->prefix + anchor, pr->prefix_len - anchor, ids, cap,
                                 &n);
        }
    }
    if (st != KVT_OK)
        return st;
    *n_p = n;
    if (stable_p)
        *stable_p = stable;
    return n > cap ? KVT_ERR_TOO_LARGE : KVT_OK;
}

static size_t add_stop(uint32_t *ids, size_t n, size_t cap, uint32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return n;
    if (n < cap)
        ids[n++] = id;
    return n;
}

size_t kvt_prompt_stop_ids(const kvt_model_config_t *cfg, const kvt_tokenizer_t *tok,
                           const kvt_fim_tokens_t *fim, uint32_t *ids, size_t cap)
{
    size_t n = 0;
    for (uint32_t i = 0; i < cfg->n_eos; i++)
        n = add_stop(ids, n, cap, cfg->eos_ids[i]);
    uint32_t eos;
    if (kvt_tokenizer_eos(tok, &eos))
        n = add_stop(ids, n, cap, eos);
    if (fim && fim->found && fim->has_eot)
        n = add_stop(ids, n, cap, fim->eot);
    return n;
}
