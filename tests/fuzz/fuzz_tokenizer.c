/* Fuzz target for the tokenizer (engine/tokenizer.h).
 *
 * The first input byte picks what is fuzzed:
 *
 *   even: the file itself.  The input is  tokenizer.json NUL config NUL text
 *         (config and text optional; an empty config means none).  Loading
 *         must not crash; a loaded tokenizer must encode the text (both with
 *         and without special-token parsing) into ids that are in the
 *         vocabulary, the same ids again, the same count through a short
 *         buffer, and ids that decode; KVT_ERR_INVALID exactly when the text
 *         is not UTF-8.
 *   odd:  the text, under the gpt2 and digits fixtures (tests/fixtures,
 *         loaded once): the same checks, and decode(encode(text)) == text.
 *
 * Any violation aborts.  Built with libFuzzer (clang -fsanitize=fuzzer,
 * KVT_FUZZ_LIBFUZZER defined) and with fuzz_tokenizer_driver.c for
 * compilers without it.  KVT_FIXTURES names the fixture directory. */
#include "engine/tokenizer.h"

#include "common/log.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef KVT_FIXTURES
#error "KVT_FIXTURES must name tests/fixtures"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Outcomes of the files tried, for the deterministic driver's report. */
long fuzz_tokenizer_loaded, fuzz_tokenizer_rejected;

/* Independent of tokenizer_pre.c on purpose. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t c = s[i], need, cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            need = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            need = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            need = 3, cp = c & 0x07;
        else
            return false;
        if (n - i <= need)
            return false;
        for (uint32_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}

static void check_decode(const kvt_tokenizer_t *tok, const uint32_t *ids, size_t n,
                         const char *text, size_t len, bool round_trip)
{
    size_t total = 0, got = SIZE_MAX, kept = 0;
    for (size_t i = 0; i < n; i++) {
        size_t blen = SIZE_MAX;
        if (ids[i] >= kvt_tokenizer_vocab_size(tok) ||
            !kvt_tokenizer_token_bytes(tok, ids[i], &blen) || blen > KVT_TOK_MAX_TOKEN_BYTES)
            abort();
        total += blen;
        kept += kvt_tokenizer_is_special(tok, ids[i]) ? 0 : blen;
    }
    kvt_status_t st = kvt_tokenizer_decode(tok, ids, n, 0, NULL, 0, &got);
    if (st != (total ? KVT_ERR_TOO_LARGE : KVT_OK) || got != total)
        abort();
    char *out = malloc(total + 1);
    if (!out)
        abort();
    if (kvt_tokenizer_decode(tok, ids, n, 0, out, total, &got) != KVT_OK || got != total)
        abort();
    if (round_trip && (total != len || memcmp(out, text, len) != 0))
        abort();
    if (kvt_tokenizer_decode(tok, ids, n, KVT_TOK_SKIP_SPECIAL, out, total, &got) != KVT_OK ||
        got != kept)
        abort();
    free(out);
}

static void check_encode(const kvt_tokenizer_t *tok, const char *text, size_t len, unsigned flags,
                         bool round_trip)
{
    size_t n = SIZE_MAX;
    kvt_status_t st = kvt_tokenizer_encode(tok, text, len, flags, NULL, 0, &n);
    if (!utf8_ok((const uint8_t *)text, len)) {
        if (st != KVT_ERR_INVALID || n != SIZE_MAX)
            abort();
        return;
    }
    if (st == KVT_ERR_FULL && !round_trip)
        return; /* a hostile pattern ran out of PCRE2's match limits */
    /* every id covers at least one byte, or a prefix space of a piece */
    if (st != (n ? KVT_ERR_TOO_LARGE : KVT_OK) || n > 2 * len)
        abort();
    uint32_t *ids = malloc((n + 1) * sizeof(*ids)), *half = malloc((n + 1) * sizeof(*ids));
    size_t n2 = 0, n3 = 0;
    if (!ids || !half || kvt_tokenizer_encode(tok, text, len, flags, ids, n, &n2) != KVT_OK ||
        n2 != n)
        abort();
    st = kvt_tokenizer_encode(tok, text, len, flags, half, n / 2, &n3);
    if (st != (n / 2 < n ? KVT_ERR_TOO_LARGE : KVT_OK) || n3 != n ||
        memcmp(half, ids, n / 2 * sizeof(*ids)) != 0)
        abort();
    check_decode(tok, ids, n, text, len, round_trip);
    free(ids);
    free(half);
}

static kvt_tokenizer_t *g_fixed[2];

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    /* Below error: silent.  Rejections log one line each, and a fuzzing run
     * makes millions of them. */
    kvt_log_set_level((kvt_log_level_t)-1);
    if (kvt_tokenizer_load(KVT_FIXTURES "/tokenizer/gpt2.tokenizer.json", NULL, &g_fixed[0]) !=
            KVT_OK ||
        kvt_tokenizer_load(KVT_FIXTURES "/tokenizer/digits.tokenizer.json", NULL, &g_fixed[1]) !=
            KVT_OK)
        abort();
}

static void fuzz_file(const char *p, size_t size)
{
    const char *nul = memchr(p, 0, size);
    size_t json_len = nul ? (size_t)(nul - p) : size;
    const char *config = NULL, *text = "";
    size_t config_len = 0, text_len = 0;
    if (nul) {
        const char *rest = nul + 1, *end = p + size;
        const char *nul2 = memchr(rest, 0, (size_t)(end - rest));
        config = rest;
        config_len = nul2 ? (size_t)(nul2 - rest) : (size_t)(end - rest);
        text = nul2 ? nul2 + 1 : end;
        text_len = (size_t)(end - text);
        if (config_len == 0)
            config = NULL;
    }
    kvt_tokenizer_t *tok = (kvt_tokenizer_t *)&tok;
    kvt_status_t st = kvt_tokenizer_load_mem(p, json_len, config, config_len, &tok);
    if (st != KVT_OK) {
        if (tok != (kvt_tokenizer_t *)&tok) /* untouched on failure */
            abort();
        fuzz_tokenizer_rejected++;
        return;
    }
    fuzz_tokenizer_loaded++;
    kvt_fim_tokens_t fim;
    kvt_tokenizer_fim_tokens(tok, &fim);
    if ((fim.found && (fim.pre >= kvt_tokenizer_vocab_size(tok) ||
                       fim.suf >= kvt_tokenizer_vocab_size(tok) ||
                       fim.mid >= kvt_tokenizer_vocab_size(tok))) ||
        kvt_tokenizer_vocab_size(tok) == 0)
        abort();
    check_encode(tok, text, text_len, KVT_TOK_PARSE_SPECIAL, false);
    check_encode(tok, text, text_len, 0, false);
    kvt_tokenizer_destroy(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    if (size == 0)
        return 0;
    const char *p = (const char *)data + 1;
    size--;
    if (data[0] % 2 == 0) {
        fuzz_file(p, size);
        return 0;
    }
    for (int k = 0; k < 2; k++) {
        check_encode(g_fixed[k], p, size, KVT_TOK_PARSE_SPECIAL, true);
        check_encode(g_fixed[k], p, size, 0, true);
    }
    return 0;
}
