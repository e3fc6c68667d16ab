/* Tests for common/config: precedence (argv > KVT_<NAME> env > default),
 * value forms, type checks, size suffixes, positional arguments, --help and
 * the usage text.  Each test clears the environment variables it uses. */
#include "common/config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static const kvt_opt_t OPTS[] = {
    {"data", KVT_OPT_STR, "/var/lib/kvtier", "data directory"},
    {"port", KVT_OPT_U64, "7070", "listen port"},
    {"host-mem", KVT_OPT_SIZE, "1G", "host pool size"},
    {"json", KVT_OPT_BOOL, NULL, "print json"},
    {"verify", KVT_OPT_BOOL, "true", "verify checksums"},
    {"peer", KVT_OPT_STR, NULL, "peer address"},
};
#define N_OPTS ((int)(sizeof(OPTS) / sizeof(OPTS[0])))

static const char *const ENV_NAMES[] = {"KVT_DATA", "KVT_PORT", "KVT_HOST_MEM",
                                        "KVT_JSON", "KVT_VERIFY", "KVT_PEER"};

static int clear_env(void **state)
{
    for (size_t i = 0; i < sizeof(ENV_NAMES) / sizeof(ENV_NAMES[0]); i++)
        unsetenv(ENV_NAMES[i]);
    return 0;
}

/* Parse a NULL-terminated argument list (argv[0] is added here). */
static kvt_status_t parse_args(kvt_config_t *cfg, const char **args)
{
    char *argv[32] = {"kvtier"};
    int argc = 1;
    while (args && args[argc - 1]) {
        assert_true(argc < 32);
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    return kvt_config_parse(cfg, OPTS, N_OPTS, argc, argv);
}

#define PARSE(cfg, ...) parse_args((cfg), (const char *[]){__VA_ARGS__, NULL})

static void test_defaults(void **state)
{
    kvt_config_t cfg;
    assert_int_equal(parse_args(&cfg, NULL), KVT_OK);
    assert_string_equal(kvt_config_str(&cfg, "data"), "/var/lib/kvtier");
    assert_int_equal(kvt_config_u64(&cfg, "port", 1), 7070);
    assert_int_equal(kvt_config_u64(&cfg, "host-mem", 1), 1ull << 30);
    assert_false(kvt_config_bool(&cfg, "json"));
    assert_true(kvt_config_bool(&cfg, "verify"));
    assert_null(kvt_config_str(&cfg, "peer"));
    assert_int_equal(kvt_config_u64(&cfg, "peer", 42), 42);
    assert_false(cfg.help);
    assert_int_equal(cfg.n_positional, 0);
    /* Names not in the table. */
    assert_null(kvt_config_str(&cfg, "nope"));
    assert_null(kvt_config_str(&cfg, "dat"));
    assert_int_equal(kvt_config_u64(&cfg, "nope", 9), 9);
    assert_false(kvt_config_bool(&cfg, "nope"));
}

static void test_env_override(void **state)
{
    kvt_config_t cfg;
    setenv("KVT_DATA", "/env/data", 1);
    setenv("KVT_PORT", "8080", 1);
    setenv("KVT_HOST_MEM", "64M", 1); /* '-' becomes '_', upper case */
    setenv("KVT_JSON", "yes", 1);
    setenv("KVT_VERIFY", "false", 1);
    assert_int_equal(parse_args(&cfg, NULL), KVT_OK);
    assert_string_equal(kvt_config_str(&cfg, "data"), "/env/data");
    assert_int_equal(kvt_config_u64(&cfg, "port", 1), 8080);
    assert_int_equal(kvt_config_u64(&cfg, "host-mem", 1), 64ull << 20);
    assert_true(kvt_config_bool(&cfg, "json"));
    assert_false(kvt_config_bool(&cfg, "verify"));
    /* An empty variable counts as unset. */
    setenv("KVT_DATA", "", 1);
    assert_int_equal(parse_args(&cfg, NULL), KVT_OK);
    assert_string_equal(kvt_config_str(&cfg, "data"), "/var/lib/kvtier");
}

static void test_env_bad_value(void **state)
{
    kvt_config_t cfg;
    setenv("KVT_PORT", "80x", 1);
    assert_int_equal(parse_args(&cfg, NULL), KVT_ERR_USAGE);
    /* The command line wins, so the bad env value is never looked at. */
    assert_int_equal(PARSE(&cfg, "--port", "81"), KVT_OK);
    assert_int_equal(kvt_config_u64(&cfg, "port", 1), 81);
    unsetenv("KVT_PORT");
    setenv("KVT_JSON", "maybe", 1);
    assert_int_equal(parse_args(&cfg, NULL), KVT_ERR_USAGE);
}

static void test_argv_over_env(void **state)
{
    kvt_config_t cfg;
    setenv("KVT_DATA", "/env/data", 1);
    setenv("KVT_PORT", "8080", 1);
    setenv("KVT_VERIFY", "true", 1);
    assert_int_equal(PARSE(&cfg, "--data", "/argv/data", "--port=9090", "--verify=no"), KVT_OK);
    assert_string_equal(kvt_config_str(&cfg, "data"), "/argv/data");
    assert_int_equal(kvt_config_u64(&cfg, "port", 1), 9090);
    assert_false(kvt_config_bool(&cfg, "verify"));
    /* Repeated options: the last one wins. */
    assert_int_equal(PARSE(&cfg, "--port", "1", "--port", "2"), KVT_OK);
    assert_int_equal(kvt_config_u64(&cfg, "port", 0), 2);
}

static void test_equals_forms(void **state)
{
    kvt_config_t cfg;
    assert_int_equal(PARSE(&cfg, "--data=/a=b", "--peer="), KVT_OK);
    assert_string_equal(kvt_config_str(&cfg, "data"), "/a=b");
    assert_string_equal(kvt_config_str(&cfg, "peer"), "");
    /* The value after a space is taken as is, even if it looks like an option. */
    assert_int_equal(PARSE(&cfg, "--peer", "--json"), KVT_OK);
    assert_string_equal(kvt_config_str(&cfg, "peer"), "--json");
    assert_false(kvt_config_bool(&cfg, "json"));
}

static void test_bool_forms(void **state)
{
    kvt_config_t cfg;
    const char *truthy[] = {"--json", "--json=1", "--json=true", "--json=yes"};
    const char *falsy[] = {"--json=0", "--json=false", "--json=no"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(PARSE(&cfg, truthy[i]), KVT_OK);
        assert_true(kvt_config_bool(&cfg, "json"));
    }
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(PARSE(&cfg, falsy[i]), KVT_OK);
        assert_false(kvt_config_bool(&cfg, "json"));
    }
    const char *bad[] = {"--json=", "--json=on", "--json=TRUE", "--json=2", "--json=yess"};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(PARSE(&cfg, bad[i]), KVT_ERR_USAGE);
    /* A bare bool does not swallow the next argument. */
    assert_int_equal(PARSE(&cfg, "--json", "file.bin"), KVT_OK);
    assert_true(kvt_config_bool(&cfg, "json"));
    assert_int_equal(cfg.n_positional, 1);
    assert_string_equal(cfg.positional[0], "file.bin");
}

static void test_unknown_option(void **state)
{
    kvt_config_t cfg;
    assert_int_equal(PARSE(&cfg, "--nope"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--nope=1"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--dat", "x"), KVT_ERR_USAGE);   /* no prefix matching */
    assert_int_equal(PARSE(&cfg, "--datax", "x"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--DATA", "x"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--host_mem", "1G"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--data", "x", "--bogus"), KVT_ERR_USAGE);
}

static void test_missing_value(void **state)
{
    kvt_config_t cfg;
    assert_int_equal(PARSE(&cfg, "--data"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--json", "--port"), KVT_ERR_USAGE);
    assert_int_equal(PARSE(&cfg, "--host-mem"), KVT_ERR_USAGE);
}

static void test_bad_numbers(void **state)
{
    kvt_config_t cfg;
    const char *bad_u64[] = {"", "-1", "+1", " 1", "1 ", "12ab", "0x10", "1K", "1.5",
                             "18446744073709551616", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad_u64) / sizeof(bad_u64[0]); i++) {
        char arg[64];
        snprintf(arg, sizeof(arg), "--port=%s", bad_u64[i]);
        if (PARSE(&cfg, arg) != KVT_ERR_USAGE)
            fail_msg("accepted %s", arg);
    }
    assert_int_equal(PARSE(&cfg, "--port=18446744073709551615"), KVT_OK);
    assert_int_equal(kvt_config_u64(&cfg, "port", 0), UINT64_MAX);
    assert_int_equal(PARSE(&cfg, "--port=0"), KVT_OK);
    assert_int_equal(kvt_config_u64(&cfg, "port", 5), 0);
    const char *bad_size[] = {"", "G", "-1G", "1X", "1GG", "1 G", "1Gx", "1.5G", "0x1G"};
    for (size_t i = 0; i < sizeof(bad_size) / sizeof(bad_size[0]); i++) {
        char arg[64];
        snprintf(arg, sizeof(arg), "--host-mem=%s", bad_size[i]);
        if (PARSE(&cfg, arg) != KVT_ERR_USAGE)
            fail_msg("accepted %s", arg);
    }
}

static void test_size_suffixes(void **state)
{
    struct {
        const char *text;
        uint64_t bytes;
    } ok[] = {
        {"0", 0},           {"123", 123},
        {"64K", 64ull << 10}, {"64k", 64ull << 10},
        {"1M", 1ull << 20}, {"2G", 2ull << 30},
        {"1T", 1ull << 40}, {"3KiB", 3ull << 10},
        {"5GB", 5ull << 30}, {"7gib", 7ull << 30},
        {"18446744073709551615", UINT64_MAX},
        {"16777215T", 16777215ull << 40},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t v = 1;
        if (kvt_config_parse_size(ok[i].text, &v) != KVT_OK)
            fail_msg("rejected %s", ok[i].text);
        assert_int_equal(v, ok[i].bytes);
    }
    const char *bad[] = {"16777216T", "17179869184G", "18014398509481984K",
                         "18446744073709551616", "1P", "1E", "K", "", "1Ki B"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 77;
        if (kvt_config_parse_size(bad[i], &v) == KVT_OK)
            fail_msg("accepted %s", bad[i]);
        assert_int_equal(v, 77);
    }
    uint64_t v = 0;
    assert_int_equal(kvt_config_parse_size(NULL, &v), KVT_ERR_INVALID);
}

static void test_positional(void **state)
{
    kvt_config_t cfg;
    assert_int_equal(PARSE(&cfg, "put", "--port", "1", "a.bin", "--json", "b.bin"), KVT_OK);
    assert_int_equal(cfg.n_positional, 3);
    assert_string_equal(cfg.positional[0], "put");
    assert_string_equal(cfg.positional[1], "a.bin");
    assert_string_equal(cfg.positional[2], "b.bin");
    assert_int_equal(kvt_config_u64(&cfg, "port", 0), 1);
    /* Up to the maximum, and one more is a usage error. */
    const char *args[KVT_CONFIG_MAX_POSITIONAL + 2];
    for (int i = 0; i <= KVT_CONFIG_MAX_POSITIONAL; i++)
        args[i] = "p";
    args[KVT_CONFIG_MAX_POSITIONAL] = NULL;
    assert_int_equal(parse_args(&cfg, args), KVT_OK);
    assert_int_equal(cfg.n_positional, KVT_CONFIG_MAX_POSITIONAL);
    args[KVT_CONFIG_MAX_POSITIONAL] = "p";
    args[KVT_CONFIG_MAX_POSITIONAL + 1] = NULL;
    assert_int_equal(parse_args(&cfg, args), KVT_ERR_USAGE);
}

static void test_help(void **state)
{
    kvt_config_t cfg;
    assert_int_equal(PARSE(&cfg, "--help"), KVT_OK);
    assert_true(cfg.help);
    assert_int_equal(PARSE(&cfg, "stats", "-h", "--port=5"), KVT_OK);
    assert_true(cfg.help);
    assert_int_equal(cfg.n_positional, 1);
    assert_int_equal(kvt_config_u64(&cfg, "port", 0), 5);
    assert_int_equal(PARSE(&cfg, "stats"), KVT_OK);
    assert_false(cfg.help);
}

static void test_usage_text(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    kvt_config_usage(out, OPTS, N_OPTS);
    fclose(out);
    assert_non_null(strstr(text, "--data VALUE"));
    assert_non_null(strstr(text, "data directory (default: /var/lib/kvtier)"));
    assert_non_null(strstr(text, "--port N"));
    assert_non_null(strstr(text, "--host-mem N"));
    assert_non_null(strstr(text, "(default: 1G)"));
    assert_non_null(strstr(text, "--json "));
    assert_null(strstr(text, "--json VALUE"));
    assert_null(strstr(text, "print json (default"));
    int lines = 0;
    for (const char *p = text; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, N_OPTS);
    free(text);
}

static void test_too_many_options(void **state)
{
    kvt_opt_t many[KVT_CONFIG_MAX_OPTS + 1];
    for (int i = 0; i <= KVT_CONFIG_MAX_OPTS; i++)
        many[i] = (kvt_opt_t){"x", KVT_OPT_STR, NULL, "x"};
    char *argv[] = {"kvtier"};
    kvt_config_t cfg;
    assert_int_equal(kvt_config_parse(&cfg, many, KVT_CONFIG_MAX_OPTS + 1, 1, argv),
                     KVT_ERR_INVALID);
    assert_int_equal(kvt_config_parse(&cfg, many, KVT_CONFIG_MAX_OPTS, 1, argv), KVT_OK);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, clear_env, clear_env)
    const struct CMUnitTest tests[] = {
        T(test_defaults),     T(test_env_override),    T(test_env_bad_value),
        T(test_argv_over_env), T(test_equals_forms),   T(test_bool_forms),
        T(test_unknown_option), T(test_missing_value), T(test_bad_numbers),
        T(test_size_suffixes), T(test_positional),     T(test_help),
        T(test_usage_text),   T(test_too_many_options),
    };
#undef T
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
