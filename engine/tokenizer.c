/* Tokenizer: the public API of engine/tokenizer.h.
 *
 * A kvt_tokenizer is built once by tokenizer_load.c from tokenizer.json
 * (and tokenizer_config.json) and is read-only afterwards.  encode() runs
 * the pipeline of tokenizer_pre.c and tokenizer_bpe.c with a working state
 * of its own (tok_ws_t: PCRE2 match data, span lists, the BPE symbol list
 * and merge heap), so calls from many threads share one tokenizer.
 * decode() concatenates per-id byte strings computed at load (HF's
 * ByteLevel decoder applied to each vocabulary token, added tokens as their
 * content), which makes decode(encode(x)) == x for any valid UTF-8 x under
 * a tokenizer whose vocabulary holds the 256 byte characters.
 *
 * NFC normalizer: there is no Unicode normalization library among our
 * dependencies, so kvtier's NFC is exact only for input already in NFC
 * (what editors send) and otherwise passes text through unchanged, logging
 * that once at debug level (tokenizer_pre.c says how it is detected).
 *
 * Files are read whole, bounded by KVT_TOK_MAX_FILE before any allocation. */
#include "engine/tokenizerInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- loading --- */

static kvt_status_t read_file(const char *path, char **buf_p, size_t *len_p)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e != ENOENT)
            kvt_log_error("tokenizer: cannot open path=%s error=\"%s\"", path, strerror(e));
        return e == ENOENT ? KVT_ERR_NOT_FOUND : KVT_ERR_IO;
    }
    struct stat sb;
    kvt_status_t st = KVT_OK;
    char *buf = NULL;
    size_t len = 0;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        kvt_log_error("tokenizer: not a regular file path=%s", path);
        st = KVT_ERR_IO;
    } else if ((uint64_t)sb.st_size > KVT_TOK_MAX_FILE) {
        kvt_log_error("tokenizer: file too large path=%s size=%lld max=%u", path,
                      (long long)sb.st_size, KVT_TOK_MAX_FILE);
        st = KVT_ERR_TOO_LARGE;
    } else if (!(buf = kvt_malloc("tokenizer file", (size_t)sb.st_size + 1))) {
        st = KVT_ERR_NOMEM;
    }
    while (st == KVT_OK && len < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)sb.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            kvt_log_error("tokenizer: read failed path=%s error=\"%s\"", path,
                          n < 0 ? strerror(errno) : "file shrank");
            st = KVT_ERR_IO;
        }
        len += n > 0 ? (size_t)n : 0;
    }
    close(fd);
    if (st != KVT_OK) {
        kvt_free(buf);
        return st;
    }
    *buf_p = buf;
    *len_p = len;
    return KVT_OK;
}

kvt_status_t kvt_tokenizer_load(const char *json_path, const char *config_path,
                                kvt_tokenizer_t **tok_p)
{
    char *json = NULL, *config = NULL;
    size_t len = 0, config_len = 0;
    if (!json_path || !tok_p)
        return KVT_ERR_INVALID;
    kvt_status_t st = read_file(json_path, &json, &len);
    if (st == KVT_ERR_NOT_FOUND)
        kvt_log_error("tokenizer: no such file path=%s", json_path);
    if (st == KVT_OK && config_path) {
        st = read_file(config_path, &config, &config_len);
        if (st == KVT_ERR_NOT_FOUND) {
            kvt_log_debug("tokenizer: no tokenizer_config.json, defaults path=%s", config_path);
            st = KVT_OK;
        }
    }
    if (st == KVT_OK)
        st = kvt_tokenizer_load_mem(json, len, config, config_len, tok_p);
    kvt_free(json);
    kvt_free(config);
    return st;
}

kvt_status_t kvt_tokenizer_load_mem(const char *json, size_t len, const char *config_json,
                                    size_t config_len, kvt_tokenizer_t **tok_p)
{
    if (!json || !tok_p)
        return KVT_ERR_INVALID;
    if (len > KVT_TOK_MAX_FILE || (config_json && config_len > KVT_TOK_MAX_FILE)) {
        kvt_log_error("tokenizer: json too large len=%zu config_len=%zu max=%u", len,
                      config_json ? config_len : 0, KVT_TOK_MAX_FILE);
        return KVT_ERR_TOO_LARGE;
    }
    kvt_tokenizer_t *tok = kvt_calloc("tokenizer", 1, sizeof(*tok));
    if (!tok)
        return KVT_ERR_NOMEM;
    tok->vs.max = tok->dec.max = tok->added_text.max = UINT32_MAX;
    kvt_status_t st = tok_load_json(tok, json, len);
    if (st == KVT_OK && config_json)
        st = tok_load_config(tok, config_json, config_len);
    if (st != KVT_OK) {
        kvt_tokenizer_destroy(tok);
        return st;
    }
    kvt_log_debug("tokenizer: loaded vocab_size=%u added=%u merges=%u stages=%d nfc=%d",
                  tok->vocab_size, tok->n_added, tok->merges.n, tok->n_stages, tok->nfc);
    *tok_p = tok;
    return KVT_OK;
}

void kvt_tokenizer_destroy(kvt_tokenizer_t *tok)
{
    if (!tok)
        return;
    tok_free_parts(tok);
    kvt_free(tok);
}

/* --- encode / decode --- */

static void ws_cleanup(tok_ws_t *ws)
{
    pcre2_match_data_free(ws->md);
    kvt_free(ws->spans[0].v);
    kvt_free(ws->spans[1].v);
    kvt_free(ws->matches.v);
    tok_buf_free(&ws->scratch);
    kvt_free(ws->sym);
    kvt_free(ws->heap);
}

kvt_status_t kvt_tokenizer_encode(const kvt_tokenizer_t *tok, const char *text, size_t len,
                                  unsigned flags, uint32_t *ids, size_t cap, size_t *n_p)
{
    if (!tok || (!text && len) || (!ids && cap) || !n_p)
        return KVT_ERR_INVALID;
    if (len > KVT_TOK_MAX_TEXT) {
        kvt_log_debug("tokenizer: text too large to encode len=%zu max=%u", len,
                      KVT_TOK_MAX_TEXT);
        *n_p = 0;
        return KVT_ERR_TOO_LARGE;
    }
    if (!tok_utf8_valid(text, len)) {
        kvt_log_debug("tokenizer: text to encode is not valid utf-8 len=%zu", len);
        return KVT_ERR_INVALID;
    }
    tok_ws_t ws = {.tok = tok, .flags = flags, .ids = ids, .cap = cap};
    ws.scratch.max = len + 1;
    ws.md = pcre2_match_data_create(1, NULL);
    kvt_status_t st = ws.md ? KVT_OK : KVT_ERR_NOMEM;
    if (st == KVT_OK && len > 0)
        st = tok_encode_text(&ws, text, len);
    ws_cleanup(&ws);
    if (st != KVT_OK)
        return st;
    *n_p = ws.n;
    return ws.n > cap ? KVT_ERR_TOO_LARGE : KVT_OK;
}

static bool id_ok(const kvt_tokenizer_t *tok, uint32_t id)
{
    return id < tok->vocab_size && (tok->flags[id] & TOK_F_PRESENT);
}

kvt_status_t kvt_tokenizer_decode(const kvt_tokenizer_t *tok, const uint32_t *ids, size_t n,
                                  unsigned flags, char *out, size_t cap, size_t *len_p)
{
    if (!tok || (!ids && n) || (!out && cap) || !len_p)
        return KVT_ERR_INVALID;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (!id_ok(tok, id)) {
            kvt_log_debug("tokenizer: decode of an id outside the vocabulary id=%u", id);
            return KVT_ERR_INVALID;
        }
        if ((flags & KVT_TOK_SKIP_SPECIAL) && (tok->flags[id] & TOK_F_SPECIAL))
            continue;
        size_t len = tok->dec_len[id];
        if (total + len <= cap)
            memcpy(out + total, tok->dec.p + tok->dec_off[id], len);
        total += len;
    }
    *len_p = total;
    return total > cap ? KVT_ERR_TOO_LARGE : KVT_OK;
}

const char *kvt_tokenizer_token_bytes(const kvt_tokenizer_t *tok, uint32_t id, size_t *len_p)
{
    if (!tok || !id_ok(tok, id))
        return NULL;
    if (len_p)
        *len_p = tok->dec_len[id];
    return tok->dec.p + tok->dec_off[id];
}

/* --- lookups --- */

int64_t kvt_tokenizer_find(const kvt_tokenizer_t *tok, const char *token)
{
    if (!tok || !token)
        return -1;
    size_t n = strlen(token);
    uint32_t i = tok_strmap_get(&tok->added_map, token, n);
    if (i != TOK_NONE)
        return tok->added[i].id;
    uint32_t id = tok_strmap_get(&tok->vocab_map, token, n);
    return id == TOK_NONE ? -1 : (int64_t)id;
}

uint32_t kvt_tokenizer_vocab_size(const kvt_tokenizer_t *tok)
{
    return tok ? tok->vocab_size : 0;
}

bool kvt_tokenizer_is_special(const kvt_tokenizer_t *tok, uint32_t id)
{
    return tok && id_ok(tok, id) && (tok->flags[id] & TOK_F_SPECIAL);
}

bool kvt_tokenizer_add_bos(const kvt_tokenizer_t *tok, uint32_t *bos_p)
{
    if (!tok || !tok->add_bos)
        return false;
    if (bos_p)
        *bos_p = tok->bos;
    return true;
}

bool kvt_tokenizer_eos(const kvt_tokenizer_t *tok, uint32_t *eos_p)
{
    if (!tok || !tok->has_eos)
        return false;
    if (eos_p)
        *eos_p = tok->eos;
    return true;
}

/* --- FIM tokens --- */

/* One family's three tokens, also tried with SentencePiece's "▁" prefix
 * (CodeLlama's files name some of them "▁<PRE>"). */
static bool fim_family(const kvt_tokenizer_t *tok, const char *const names[3], uint32_t out[3])
{
    for (int i = 0; i < 3; i++) {
        char alt[64];
        int64_t id = kvt_tokenizer_find(tok, names[i]);
        if (id < 0 && strlen(names[i]) < sizeof(alt) - 4) {
            snprintf(alt, sizeof(alt), "\xe2\x96\x81%s", names[i]);
            id = kvt_tokenizer_find(tok, alt);
        }
        if (id < 0)
            return false;
        out[i] = (uint32_t)id;
    }
    return true;
}

void kvt_tokenizer_fim_tokens(const kvt_tokenizer_t *tok, kvt_fim_tokens_t *fim_p)
{
    static const char *const families[][3] = {
        {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"},              /* Qwen */
        {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"},                    /* StarCoder */
        {"<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",             /* DeepSeek */
         "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
         "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>"},
        {"<PRE>", "<SUF>", "<MID>"},                                         /* CodeLlama */
    };
    static const char *const eots[] = {
        "<|endoftext|>", "<|fim_pad|>",
        "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", "<EOT>",
        "\xe2\x96\x81<EOT>"};
    kvt_fim_tokens_t fim = {0};
    uint32_t ids[3];
    for (size_t f = 0; tok && !fim.found && f < sizeof(families) / sizeof(families[0]); f++) {
        if (fim_family(tok, families[f], ids)) {
            fim.found = true;
            fim.pre = ids[0];
            fim.suf = ids[1];
            fim.mid = ids[2];
        }
    }
    for (size_t e = 0; tok && !fim.has_eot && e < sizeof(eots) / sizeof(eots[0]); e++) {
        int64_t id = kvt_tokenizer_find(tok, eots[e]);
        if (id >= 0) {
            fim.has_eot = true;
            fim.eot = (uint32_t)id;
        }
    }
    *fim_p = fim;
}
