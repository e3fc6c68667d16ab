/* `kvtier model init` + `kvtier generate` end to end, through the binary.
 *
 * A tiny random-weight model is written once; then: plain generation is
 * deterministic; EFIM rounds over the node's tier (--data) reuse the
 * blocks up to MID from round 2 on and give the same tokens as the same
 * prompt computed without the cache; FIM rounds reuse only the prefix
 * part; seeded sampling is reproducible; bad flags and inputs give exit 2
 * (usage) or 1 (failure) with nothing written to stdout. */
#include "tests/support/testutil.h"

// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on
#include "tests/support/runbin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *g_dir;       /* scratch */
static char g_model[512]; /* tiny model */
static char g_prefix[1200], g_suffix[1200];

/* The "tokens":[...] text of the last JSON output. */
static void tokens_of(char *out, size_t cap)
{
    const char *p = strstr(tu_out, "\"tokens\":[");
    assert_non_null(p);
    const char *e = strchr(p, ']');
    assert_non_null(e);
    size_t n = (size_t)(e - p) + 1;
    assert_true(n < cap);
    memcpy(out, p, n);
    out[n] = '\0';
}

static void load_source(void)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tokenizer/samples/gen_key_vectors.py.txt", KVT_FIXTURES);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[2400];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    assert_true(n > 2000);
    memcpy(g_prefix, buf, 1000);
    g_prefix[1000] = '\0';
    memcpy(g_suffix, buf + 1000, 1000);
    g_suffix[1000] = '\0';
}

static int setup(void **state)
{
    (void)state;
    g_dir = tu_tmpdir("generate");
    snprintf(g_model, sizeof(g_model), "%s/tiny", g_dir);
    if (TU_RUN("model", "init", "--preset", "tiny", "--out", g_model, "--seed", "3") != 0)
        return -1;
    load_source();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmtree(g_dir);
    free(g_dir);
    return 0;
}

static void test_plain_is_deterministic(void **state)
{
    (void)state;
    char a[4096], b[4096];
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "def main():",
                            "--max-tokens", "12", "--json"),
                     0);
    assert_int_equal(tu_json_num(tu_out, NULL, "completion_tokens"), 12);
    assert_int_equal(tu_json_num(tu_out, NULL, "cached_tokens"), 0);
    assert_true(tu_json_num(tu_out, NULL, "prompt_tokens") > 0);
    assert_non_null(strstr(tu_out, "\"text\":"));
    assert_non_null(strstr(tu_out, "\"ttft_ms\":"));
    tokens_of(a, sizeof(a));
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "def main():",
                            "--max-tokens", "12", "--json", "--threads", "1"),
                     0);
    tokens_of(b, sizeof(b));
    assert_string_equal(a, b);
    /* Text mode prints the text and nothing else. */
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "x", "--max-tokens",
                            "3"),
                     0);
    assert_null(strstr(tu_out, "{\""));
}

/* A round of a session: the user typed `typed` after the anchor (the
 * prefix as first seen).  data NULL: no tier. */
static int efim_round(const char *data, const char *format, const char *typed)
{
    char prompt[1400];
    snprintf(prompt, sizeof(prompt), "%s%s", g_prefix, typed);
    const char *args[24] = {"generate", "--model", g_model, "--prompt", prompt,
                            "--suffix", g_suffix, "--format", format, "--max-tokens", "8",
                            "--json"};
    int n = 12;
    if (strcmp(format, "efim") == 0) {
        args[n++] = "--anchor";
        args[n++] = g_prefix;
    }
    if (data) {
        args[n++] = "--data";
        args[n++] = data;
    }
    args[n] = NULL;
    return tu_run_env(NULL, args);
}

static void test_efim_rounds_reuse_blocks(void **state)
{
    (void)state;
    char data[600], cold[4096], warm[4096];
    snprintf(data, sizeof(data), "%s/efim-data", g_dir);
    static const char *const typed[] = {"", "    x", "    x = 1", "    x = 1\n    y = 2\n"};
    long long stored_tokens = 0;
    for (int r = 0; r < 4; r++) {
        assert_int_equal(efim_round(data, "efim", typed[r]), 0);
        long long cached = tu_json_num(tu_out, NULL, "cached_tokens");
        long long prompt = tu_json_num(tu_out, NULL, "prompt_tokens");
        if (r == 0) {
            assert_int_equal(cached, 0);
            stored_tokens = 16 * tu_json_num(tu_out, NULL, "tier_blocks_stored");
            assert_true(stored_tokens > 0);
        } else {
            /* Everything up to MID was stored in round 1 (full blocks). */
            assert_true(cached >= stored_tokens);
            assert_true(cached < prompt);
        }
        tokens_of(warm, sizeof(warm));
        /* Same prompt, no cache: the same tokens (resume equality). */
        assert_int_equal(efim_round(NULL, "efim", typed[r]), 0);
        tokens_of(cold, sizeof(cold));
        assert_string_equal(warm, cold);
    }
}

static void test_fim_reuses_only_the_prefix(void **state)
{
    (void)state;
    char data[600];
    snprintf(data, sizeof(data), "%s/fim-data", g_dir);
    assert_int_equal(efim_round(data, "fim", ""), 0);
    assert_int_equal(efim_round(data, "fim", "    x = 1"), 0);
    long long fim_cached = tu_json_num(tu_out, NULL, "cached_tokens");
    snprintf(data, sizeof(data), "%s/efim2-data", g_dir);
    assert_int_equal(efim_round(data, "efim", ""), 0);
    assert_int_equal(efim_round(data, "efim", "    x = 1"), 0);
    long long efim_cached = tu_json_num(tu_out, NULL, "cached_tokens");
    /* FIM's prefix changed: only blocks before the edit are reused, and the
     * suffix after it never is. */
    assert_true(fim_cached < efim_cached);
}

static void test_seeded_sampling(void **state)
{
    (void)state;
    char a[4096], b[4096], c[4096];
    const char *args[] = {"generate", "--model", g_model, "--prompt", "int main(void) {",
                          "--max-tokens", "16", "--temperature", "1.0", "--top-p", "0.95",
                          "--json", "--seed", NULL, NULL};
    args[13] = "7";
    assert_int_equal(tu_run_env(NULL, args), 0);
    tokens_of(a, sizeof(a));
    assert_int_equal(tu_run_env(NULL, args), 0);
    tokens_of(b, sizeof(b));
    assert_string_equal(a, b);
    args[13] = "8";
    assert_int_equal(tu_run_env(NULL, args), 0);
    tokens_of(c, sizeof(c));
    /* 16 draws from a near-uniform 16k vocabulary: equal only by a bug. */
    assert_string_not_equal(a, c);
}

/* Sampled text is always valid UTF-8 JSON, even when a token boundary
 * splits a character (random weights do that all the time). */
static void test_json_text_is_utf8(void **state)
{
    (void)state;
    for (int seed = 0; seed < 4; seed++) {
        char sd[16];
        snprintf(sd, sizeof(sd), "%d", seed);
        assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "héllo wörld",
                                "--max-tokens", "64", "--temperature", "1.5", "--seed", sd,
                                "--json"),
                         0);
        const unsigned char *p = (const unsigned char *)tu_out;
        while (*p) {
            size_t k = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3
                       : (*p & 0xf8) == 0xf0 ? 4 : 0;
            assert_true(k > 0);
            for (size_t i = 1; i < k; i++)
                assert_int_equal(p[i] & 0xc0, 0x80);
            p += k;
        }
    }
}

static void test_bad_input(void **state)
{
    (void)state;
    char data[600], other[600];
    assert_int_equal(TU_RUN("generate", "--prompt", "x"), 2);
    assert_int_equal(TU_RUN("generate", "--model", g_model), 2);
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "x", "--format", "spm"),
                     2);
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "x", "--device",
                            "cuda:99"),
                     2);
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "abc", "--anchor",
                            "xyz", "--suffix", "s"),
                     2);
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "x", "--top-p", "0"),
                     2);
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "x", "--temperature",
                            "-1"),
                     2);
    assert_int_equal(TU_RUN("generate", "--model", "/nonexistent/model", "--prompt", "x"), 1);
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "x", "--max-tokens",
                            "100000"),
                     1);
    assert_string_equal(tu_out, "");
    /* A tier belongs to one model: another model's run is refused. */
    snprintf(data, sizeof(data), "%s/one-model", g_dir);
    snprintf(other, sizeof(other), "%s/tiny-qwen2", g_dir);
    assert_int_equal(TU_RUN("model", "init", "--preset", "tiny-qwen2", "--out", other), 0);
    assert_int_equal(TU_RUN("generate", "--model", g_model, "--prompt", "hello world",
                            "--data", data, "--max-tokens", "2"),
                     0);
    assert_int_equal(TU_RUN("generate", "--model", other, "--prompt", "hello world", "--data",
                            data, "--max-tokens", "2"),
                     1);
}

int main(void)
{
    tu_bin = getenv("KVTIER_BIN");
    if (!tu_bin || access(tu_bin, X_OK) != 0) {
        fprintf(stderr, "KVTIER_BIN not set or not executable\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_is_deterministic),
        cmocka_unit_test(test_efim_rounds_reuse_blocks),
        cmocka_unit_test(test_fim_reuses_only_the_prefix),
        cmocka_unit_test(test_seeded_sampling),
        cmocka_unit_test(test_json_text_is_utf8),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
