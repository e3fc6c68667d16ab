/* Tests for coord/openai: request parsing (every field's valid and invalid
 * forms, defaults, limits, the kvtier object), the error JSON shape, the
 * response builders round-tripped through cJSON with their exact fields,
 * invalid UTF-8 in generated text, SSE chunk framing, and the stop-string
 * and UTF-8 holdback helpers a streamer relies on.  Out-of-memory paths are
 * driven with kvt_alloc_fail_after. */
#include "coord/openai.h"

#include "common/alloc.h"
#include "common/log.h"

#include <cjson/cJSON.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static const kvt_openai_limits_t LIM = {.max_prompt_bytes = 1000, .max_tokens = 512};

static kvt_status_t parse(const char *json, kvt_openai_completion_t *r, kvt_openai_error_t *e)
{
    memset(e, 0, sizeof(*e));
    return kvt_openai_parse_completion(json, strlen(json), &LIM, r, e);
}

/* json must be refused with status and param ("" for none). */
static void expect_error(const char *json, unsigned status, const char *param)
{
    kvt_openai_completion_t r;
    kvt_openai_error_t e;
    kvt_status_t st = parse(json, &r, &e);
    if (st == KVT_OK) {
        kvt_openai_completion_cleanup(&r);
        fail_msg("accepted: %s", json);
    }
    assert_int_equal(st, KVT_ERR_INVALID);
    if (e.status != status || strcmp(e.param, param) != 0)
        fail_msg("%s: got status %u param '%s' (%s), want %u '%s'", json, e.status, e.param,
                 e.message, status, param);
    assert_string_equal(e.type, "invalid_request_error");
    assert_true(e.message[0] != '\0');
}

static void expect_ok(const char *json, kvt_openai_completion_t *r)
{
    kvt_openai_error_t e;
    kvt_status_t st = parse(json, r, &e);
    if (st != KVT_OK)
        fail_msg("refused: %s: %s (param '%s')", json, e.message, e.param);
}

/* ----------------------------------------------------------- parsing */

static void test_defaults(void **state)
{
    kvt_openai_completion_t r;
    expect_ok("{\"model\":\"m\",\"prompt\":\"def f(\",\"unknown\":{\"x\":[1]},\"best_of\":1}", &r);
    assert_string_equal(r.model, "m");
    assert_string_equal(r.prompt, "def f(");
    assert_int_equal(r.prompt_len, 6);
    assert_null(r.suffix);
    assert_int_equal(r.max_tokens, 16);
    assert_true(r.temperature == 1.0 && !r.has_temperature);
    assert_true(r.top_p == 1.0);
    assert_false(r.has_seed);
    assert_int_equal(r.n_stop, 0);
    assert_false(r.stream);
    assert_int_equal(r.format, KVT_OPENAI_FORMAT_PLAIN);
    assert_true(r.cache);
    kvt_openai_completion_cleanup(&r);
    /* a suffix makes EFIM the default; nulls mean "not given" */
    expect_ok("{\"model\":\"m\",\"prompt\":[\"a\"],\"suffix\":\"b\",\"max_tokens\":null,"
              "\"temperature\":null,\"stop\":null,\"seed\":null,\"kvtier\":null}", &r);
    assert_string_equal(r.prompt, "a");
    assert_string_equal(r.suffix, "b");
    assert_int_equal(r.format, KVT_OPENAI_FORMAT_EFIM);
    assert_int_equal(r.max_tokens, 16);
    kvt_openai_completion_cleanup(&r);
}

static void test_all_fields(void **state)
{
    kvt_openai_completion_t r;
    expect_ok("{\"model\":\"qwen\",\"prompt\":\"p\",\"suffix\":null,\"max_tokens\":0,"
              "\"temperature\":0,\"top_p\":0.5,\"seed\":42,\"stop\":[\"\\n\\n\",\"```\"],"
              "\"stream\":true,\"n\":1,\"echo\":false,\"logprobs\":null,\"user\":\"u\","
              "\"kvtier\":{\"format\":\"fim\",\"cache\":false}}", &r);
    assert_int_equal(r.max_tokens, 0);
    assert_true(r.temperature == 0.0 && r.has_temperature);
    assert_true(r.top_p == 0.5);
    assert_true(r.has_seed);
    assert_int_equal(r.seed, 42);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[0], "\n\n");
    assert_int_equal(r.stop_len[0], 2);
    assert_string_equal(r.stop[1], "```");
    assert_true(r.stream);
    assert_int_equal(r.format, KVT_OPENAI_FORMAT_FIM);
    assert_false(r.cache);
    kvt_openai_completion_cleanup(&r);
    /* bounds that pass */
    expect_ok("{\"model\":\"m\",\"prompt\":\"p\",\"max_tokens\":512,\"temperature\":2,"
              "\"top_p\":1,\"stop\":\"x\",\"logprobs\":0,\"seed\":0,"
              "\"kvtier\":{\"format\":\"plain\"}}", &r);
    assert_int_equal(r.max_tokens, 512);
    assert_int_equal(r.n_stop, 1);
    assert_int_equal(r.format, KVT_OPENAI_FORMAT_PLAIN);
    kvt_openai_completion_cleanup(&r);
    expect_ok("{\"model\":\"m\",\"prompt\":\"p\",\"kvtier\":{\"format\":\"efim\"}}", &r);
    assert_int_equal(r.format, KVT_OPENAI_FORMAT_EFIM);
    kvt_openai_completion_cleanup(&r);
    /* stop strings of exactly 256 bytes, four of them */
    char json[2048], s256[257];
    memset(s256, 's', 256);
    s256[256] = '\0';
    snprintf(json, sizeof(json), "{\"model\":\"m\",\"prompt\":\"p\",\"stop\":[\"%s\",\"a\",\"b\",\"c\"]}",
             s256);
    expect_ok(json, &r);
    assert_int_equal(r.n_stop, 4);
    assert_int_equal(r.stop_len[0], 256);
    kvt_openai_completion_cleanup(&r);
}

static void test_type_errors(void **state)
{
    static const struct {
        const char *json, *param;
    } cases[] = {
        {"{\"model\":1,\"prompt\":\"p\"}", "model"},
        {"{\"prompt\":\"p\"}", "model"},
        {"{\"model\":\"m\"}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":null}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":5}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[1,2,3]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[[1,2]]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"suffix\":3}", "suffix"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"max_tokens\":\"5\"}", "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"max_tokens\":1.5}", "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"max_tokens\":-1}", "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"max_tokens\":513}", "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"temperature\":\"hot\"}", "temperature"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"temperature\":-0.1}", "temperature"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"temperature\":2.01}", "temperature"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"top_p\":0}", "top_p"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"top_p\":1.1}", "top_p"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"top_p\":true}", "top_p"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"seed\":-1}", "seed"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"seed\":1.5}", "seed"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"seed\":\"1\"}", "seed"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"stop\":5}", "stop"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"stop\":\"\"}", "stop"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"stop\":[\"a\",1]}", "stop"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"stream\":\"yes\"}", "stream"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"stream\":1}", "stream"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"n\":2}", "n"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"n\":\"1\"}", "n"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"echo\":true}", "echo"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"echo\":0}", "echo"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"logprobs\":5}", "logprobs"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"logprobs\":true}", "logprobs"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"user\":7}", "user"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"kvtier\":true}", "kvtier"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"kvtier\":{\"format\":\"psm\"}}", "kvtier.format"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"kvtier\":{\"format\":1}}", "kvtier.format"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"kvtier\":{\"cache\":\"no\"}}", "kvtier.cache"},
        {"{\"model\":\"m\",\"prompt\":\"p\",\"kvtier\":{\"cahce\":false}}", "kvtier"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_error(cases[i].json, 400, cases[i].param);
    char json[512], s257[258];
    memset(s257, 's', 257);
    s257[257] = '\0';
    snprintf(json, sizeof(json), "{\"model\":\"m\",\"prompt\":\"p\",\"stop\":\"%s\"}", s257);
    expect_error(json, 400, "stop");
}

static void test_not_json(void **state)
{
    const char *bad[] = {"", "not json", "[1,2]", "\"str\"", "42", "{\"model\":\"m\",",
                         "{\"model\":\"m\",\"prompt\":\"p\"} trailing", "null"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_error(bad[i], 400, "");
    /* trailing whitespace is fine; the length bounds the parse */
    kvt_openai_completion_t r;
    const char body[] = "{\"model\":\"m\",\"prompt\":\"p\"}\n  GARBAGE";
    kvt_openai_error_t e;
    assert_int_equal(kvt_openai_parse_completion(body, strlen(body) - 7, &LIM, &r, &e), KVT_OK);
    kvt_openai_completion_cleanup(&r);
    assert_int_equal(kvt_openai_parse_completion(NULL, 0, &LIM, &r, &e), KVT_ERR_INVALID);
}

static void test_prompt_limit(void **state)
{
    char *json = malloc(4096);
    char big[1001];
    memset(big, 'x', 1000);
    big[1000] = '\0';
    kvt_openai_completion_t r;
    snprintf(json, 4096, "{\"model\":\"m\",\"prompt\":\"%s\"}", big);
    expect_ok(json, &r); /* exactly the cap */
    assert_int_equal(r.prompt_len, 1000);
    kvt_openai_completion_cleanup(&r);
    /* prompt + suffix over the cap: 413 */
    snprintf(json, 4096, "{\"model\":\"m\",\"prompt\":\"%s\",\"suffix\":\"y\"}", big);
    kvt_openai_error_t e;
    assert_int_equal(parse(json, &r, &e), KVT_ERR_INVALID);
    assert_int_equal(e.status, 413);
    assert_string_equal(e.param, "prompt");
    assert_string_equal(e.code, "prompt_too_large");
    /* no limits at all */
    assert_int_equal(kvt_openai_parse_completion(json, strlen(json), NULL, &r, &e), KVT_OK);
    kvt_openai_completion_cleanup(&r);
    free(json);
}

static void test_parse_out_of_memory(void **state)
{
    const char json[] = "{\"model\":\"m\",\"prompt\":\"p\",\"suffix\":\"s\",\"stop\":[\"a\",\"b\"]}";
    int failures = 0;
    for (long n = 0; n < 64; n++) {
        kvt_openai_completion_t r;
        kvt_openai_error_t e;
        kvt_alloc_fail_after(n);
        kvt_status_t st = kvt_openai_parse_completion(json, strlen(json), &LIM, &r, &e);
        kvt_alloc_fail_after(-1);
        if (st == KVT_OK) {
            kvt_openai_completion_cleanup(&r);
            break;
        }
        assert_int_equal(st, KVT_ERR_NOMEM);
        assert_int_equal(e.status, 500);
        assert_string_equal(e.type, "server_error");
        failures++;
    }
    assert_int_equal(failures, 5); /* model, prompt, suffix, two stops */
}

/* ------------------------------------------------------------ errors */

static void test_error_json(void **state)
{
    assert_string_equal(kvt_openai_error_type(400), "invalid_request_error");
    assert_string_equal(kvt_openai_error_type(404), "invalid_request_error");
    assert_string_equal(kvt_openai_error_type(413), "invalid_request_error");
    assert_string_equal(kvt_openai_error_type(401), "authentication_error");
    assert_string_equal(kvt_openai_error_type(429), "rate_limit_error");
    assert_string_equal(kvt_openai_error_type(500), "server_error");
    assert_string_equal(kvt_openai_error_type(503), "server_error");

    char *s = kvt_openai_error_json(404, "no such model \"x\"", NULL, "model", "model_not_found");
    cJSON *o = cJSON_Parse(s);
    assert_non_null(o);
    assert_int_equal(cJSON_GetArraySize(o), 1);
    cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    assert_int_equal(cJSON_GetArraySize(err), 4);
    assert_string_equal(cJSON_GetObjectItem(err, "message")->valuestring, "no such model \"x\"");
    assert_string_equal(cJSON_GetObjectItem(err, "type")->valuestring, "invalid_request_error");
    assert_string_equal(cJSON_GetObjectItem(err, "param")->valuestring, "model");
    assert_string_equal(cJSON_GetObjectItem(err, "code")->valuestring, "model_not_found");
    cJSON_Delete(o);
    kvt_free(s);

    s = kvt_openai_error_json(503, "busy", "server_error", NULL, NULL);
    assert_string_equal(s, "{\"error\":{\"message\":\"busy\",\"type\":\"server_error\","
                           "\"param\":null,\"code\":null}}");
    kvt_free(s);

    kvt_openai_completion_t r;
    kvt_openai_error_t e;
    assert_int_equal(parse("{\"model\":\"m\",\"prompt\":\"p\",\"top_p\":2}", &r, &e),
                     KVT_ERR_INVALID);
    s = kvt_openai_error_json_from(&e);
    o = cJSON_Parse(s);
    err = cJSON_GetObjectItemCaseSensitive(o, "error");
    assert_string_equal(cJSON_GetObjectItem(err, "param")->valuestring, "top_p");
    assert_string_equal(cJSON_GetObjectItem(err, "type")->valuestring, "invalid_request_error");
    cJSON_Delete(o);
    kvt_free(s);
}

/* ---------------------------------------------------------- responses */

static void check_choice(cJSON *o, const char *text, const char *finish)
{
    assert_string_equal(cJSON_GetObjectItem(o, "object")->valuestring, "text_completion");
    cJSON *choices = cJSON_GetObjectItemCaseSensitive(o, "choices");
    assert_int_equal(cJSON_GetArraySize(choices), 1);
    cJSON *c = cJSON_GetArrayItem(choices, 0);
    assert_int_equal(cJSON_GetArraySize(c), 4);
    assert_string_equal(cJSON_GetObjectItem(c, "text")->valuestring, text);
    assert_int_equal(cJSON_GetObjectItem(c, "index")->valueint, 0);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(c, "logprobs")));
    cJSON *f = cJSON_GetObjectItem(c, "finish_reason");
    if (finish)
        assert_string_equal(f->valuestring, finish);
    else
        assert_true(cJSON_IsNull(f));
}

static void test_completion_json(void **state)
{
    kvt_openai_usage_t u = {.prompt_tokens = 100, .completion_tokens = 7, .cached_tokens = 64};
    char *s = kvt_openai_completion_json("cmpl-1", 1700000000, "qwen", "x = 1\n", 6, "stop", &u);
    cJSON *o = cJSON_Parse(s);
    assert_non_null(o);
    assert_int_equal(cJSON_GetArraySize(o), 6);
    assert_string_equal(cJSON_GetObjectItem(o, "id")->valuestring, "cmpl-1");
    assert_true(cJSON_GetObjectItem(o, "created")->valuedouble == 1700000000.0);
    assert_string_equal(cJSON_GetObjectItem(o, "model")->valuestring, "qwen");
    check_choice(o, "x = 1\n", "stop");
    cJSON *us = cJSON_GetObjectItem(o, "usage");
    assert_int_equal(cJSON_GetArraySize(us), 4);
    assert_int_equal(cJSON_GetObjectItem(us, "prompt_tokens")->valueint, 100);
    assert_int_equal(cJSON_GetObjectItem(us, "completion_tokens")->valueint, 7);
    assert_int_equal(cJSON_GetObjectItem(us, "total_tokens")->valueint, 107);
    cJSON *det = cJSON_GetObjectItem(us, "prompt_tokens_details");
    assert_int_equal(cJSON_GetObjectItem(det, "cached_tokens")->valueint, 64);
    cJSON_Delete(o);
    kvt_free(s);
}

static void test_invalid_utf8_text(void **state)
{
    /* a valid 2-byte char, a lone continuation, a truncated 3-byte char, NUL,
     * an overlong '/', a surrogate, then a valid 4-byte char */
    const char text[] = "\xc3\xa9" "\x80" "\xe2\x82" "\x00" "\xc0\xaf" "\xed\xa0\x80" "\xf0\x9f\x98\x80";
    kvt_openai_usage_t u = {0};
    char *s = kvt_openai_completion_json("id", 1, "m", text, sizeof(text) - 1, "length", &u);
    cJSON *o = cJSON_Parse(s);
    assert_non_null(o);
    check_choice(o, "\xc3\xa9" "\xef\xbf\xbd" "\xef\xbf\xbd\xef\xbf\xbd" "\xef\xbf\xbd"
                    "\xef\xbf\xbd\xef\xbf\xbd" "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                    "\xf0\x9f\x98\x80", "length");
    cJSON_Delete(o);
    kvt_free(s);
    /* an error message with bad bytes is still valid JSON */
    s = kvt_openai_error_json(400, "bad \xff byte", NULL, NULL, NULL);
    o = cJSON_Parse(s);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "message")->valuestring,
                        "bad \xef\xbf\xbd byte");
    cJSON_Delete(o);
    kvt_free(s);
}

static void test_sse_chunks(void **state)
{
    size_t len = 0;
    char *ev = kvt_openai_chunk_sse("cmpl-2", 5, "m", "he\"llo\n", 7, NULL, NULL, &len);
    assert_non_null(ev);
    assert_int_equal(len, strlen(ev));
    assert_memory_equal(ev, "data: {", 7);
    assert_memory_equal(ev + len - 3, "}\n\n", 3);
    assert_null(memchr(ev, '\n', len - 2)); /* one line: newlines in text are escaped */
    cJSON *o = cJSON_ParseWithLength(ev + 6, len - 8);
    assert_non_null(o);
    assert_int_equal(cJSON_GetArraySize(o), 5); /* no usage on intermediate chunks */
    check_choice(o, "he\"llo\n", NULL);
    cJSON_Delete(o);
    kvt_free(ev);

    kvt_openai_usage_t u = {.prompt_tokens = 3, .completion_tokens = 2, .cached_tokens = 0};
    ev = kvt_openai_chunk_sse("cmpl-2", 5, "m", "", 0, "length", &u, NULL);
    o = cJSON_ParseWithLength(ev + 6, strlen(ev) - 8);
    check_choice(o, "", "length");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "usage"), "total_tokens")->valueint,
                     5);
    cJSON_Delete(o);
    kvt_free(ev);
    assert_string_equal(KVT_OPENAI_SSE_DONE, "data: [DONE]\n\n");
}

static void test_models_json(void **state)
{
    const char *names[] = {"qwen2.5-coder-1.5b", "tiny"};
    char *s = kvt_openai_models_json(names, 2, 123);
    cJSON *o = cJSON_Parse(s);
    assert_string_equal(cJSON_GetObjectItem(o, "object")->valuestring, "list");
    cJSON *data = cJSON_GetObjectItem(o, "data");
    assert_int_equal(cJSON_GetArraySize(data), 2);
    for (int i = 0; i < 2; i++) {
        cJSON *m = cJSON_GetArrayItem(data, i);
        assert_int_equal(cJSON_GetArraySize(m), 4);
        assert_string_equal(cJSON_GetObjectItem(m, "id")->valuestring, names[i]);
        assert_string_equal(cJSON_GetObjectItem(m, "object")->valuestring, "model");
        assert_int_equal(cJSON_GetObjectItem(m, "created")->valueint, 123);
        assert_string_equal(cJSON_GetObjectItem(m, "owned_by")->valuestring, "kvtier");
    }
    cJSON_Delete(o);
    kvt_free(s);
    s = kvt_openai_models_json(NULL, 0, 0);
    assert_string_equal(s, "{\"object\":\"list\",\"data\":[]}");
    kvt_free(s);
}

/* ------------------------------------------------------ stop strings */

static void test_stop_find(void **state)
{
    const char *stops[] = {"\n\n", "```", "x"};
    const char t[] = "abc```def\n\nx";
    size_t cut = 99;
    assert_true(kvt_openai_stop_find(t, strlen(t), stops, 3, &cut));
    assert_int_equal(cut, 3); /* the earliest match wins, whatever the list order */
    assert_true(kvt_openai_stop_find(t + 4, strlen(t) - 4, stops, 3, &cut));
    assert_int_equal(cut, 5); /* "``def" -> the "\n\n" at 5 */
    cut = 99;
    assert_false(kvt_openai_stop_find("abc", 3, stops, 3, &cut));
    assert_int_equal(cut, 99);
    assert_false(kvt_openai_stop_find(t, strlen(t), stops, 0, &cut));
    /* a match at the very start and at the very end */
    assert_true(kvt_openai_stop_find("```", 3, stops, 3, &cut));
    assert_int_equal(cut, 0);
    assert_true(kvt_openai_stop_find("ab\n\n", 4, stops, 2, &cut));
    assert_int_equal(cut, 2);
}

static void test_stop_holdback(void **state)
{
    const char *stops[] = {"</code>", "\n\n"};
    assert_int_equal(kvt_openai_stop_holdback("abc", 3, stops, 2), 0);
    assert_int_equal(kvt_openai_stop_holdback("abc\n", 4, stops, 2), 1);
    assert_int_equal(kvt_openai_stop_holdback("abc</co", 7, stops, 2), 4);
    assert_int_equal(kvt_openai_stop_holdback("</code", 6, stops, 2), 6);
    assert_int_equal(kvt_openai_stop_holdback("<", 1, stops, 2), 1);
    assert_int_equal(kvt_openai_stop_holdback("a<b", 3, stops, 2), 0);
    assert_int_equal(kvt_openai_stop_holdback("", 0, stops, 2), 0);
    const char *one[] = {"x"};
    assert_int_equal(kvt_openai_stop_holdback("abx", 3, one, 1), 0); /* a match, not a prefix */
    /* streaming check: hold back, then release once the text decides */
    const char *s2[] = {"ab"};
    assert_int_equal(kvt_openai_stop_holdback("xa", 2, s2, 1), 1);
    assert_int_equal(kvt_openai_stop_holdback("xac", 3, s2, 1), 0);
}

static void test_utf8_holdback(void **state)
{
    assert_int_equal(kvt_openai_utf8_holdback("abc", 3), 0);
    assert_int_equal(kvt_openai_utf8_holdback("a\xc3", 2), 1);
    assert_int_equal(kvt_openai_utf8_holdback("a\xc3\xa9", 3), 0);
    assert_int_equal(kvt_openai_utf8_holdback("\xe2\x82", 2), 2);
    assert_int_equal(kvt_openai_utf8_holdback("\xf0\x9f\x98", 3), 3);
    assert_int_equal(kvt_openai_utf8_holdback("\xf0\x9f\x98\x80", 4), 0);
    assert_int_equal(kvt_openai_utf8_holdback("a\xff", 2), 0);     /* invalid: no point waiting */
    assert_int_equal(kvt_openai_utf8_holdback("\xe0\x80", 2), 0);  /* overlong start */
    assert_int_equal(kvt_openai_utf8_holdback("", 0), 0);
}

int main(void)
{
    kvt_log_set_level(KVT_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_fields),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_prompt_limit),
        cmocka_unit_test(test_parse_out_of_memory),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_completion_json),
        cmocka_unit_test(test_invalid_utf8_text),
        cmocka_unit_test(test_sse_chunks),
        cmocka_unit_test(test_models_json),
        cmocka_unit_test(test_stop_find),
        cmocka_unit_test(test_stop_holdback),
        cmocka_unit_test(test_utf8_holdback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
