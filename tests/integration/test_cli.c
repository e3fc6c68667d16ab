/* The kvtier binary end to end: exit codes, --help, KVT_<FLAG> environment,
 * kv stats/verify/ls on a DB built here through the kvstore API, detection
 * of a value corrupted behind the tier's back (raw RocksDB C API), repair,
 * and the shape of `bench kv --json`.
 *
 * The binary comes from $KVTIER_BIN (set by ctest); it is run with
 * fork/exec and its stdout captured.  JSON is checked with small string
 * scans so the test needs no JSON library. */
#include "kvstore/disk_tier.h"
#include "tests/support/testutil.h"

#include <rocksdb/c.h>

// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on
#include "tests/support/runbin.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define N_BLOCKS 5

/* ---- without a DB ---- */

static void test_help_and_version(void **state)
{
    assert_int_equal(TU_RUN("help"), 0);
    assert_non_null(strstr(tu_out, "kv stats"));
    assert_non_null(strstr(tu_out, "bench kv"));
    assert_int_equal(TU_RUN("version"), 0);
    assert_non_null(strstr(tu_out, "kvtier 0."));
    assert_int_equal(TU_RUN("kv", "stats", "--help"), 0);
    assert_non_null(strstr(tu_out, "--data"));
    assert_non_null(strstr(tu_out, "KVT_"));
    assert_int_equal(TU_RUN("bench", "kv", "--help"), 0);
    assert_non_null(strstr(tu_out, "--block-bytes"));
}

static void test_usage_errors(void **state)
{
    assert_int_equal(TU_RUN("no-such-command"), 2);
    assert_int_equal(TU_RUN("kv"), 2);
    assert_int_equal(TU_RUN("kv", "bogus"), 2);
    assert_int_equal(TU_RUN("kv", "stats"), 2);
    assert_int_equal(TU_RUN("kv", "verify", "--data", "/tmp", "--no-such-flag"), 2);
    assert_int_equal(TU_RUN("kv", "ls", "--data", "/tmp", "--limit", "abc"), 2);
    assert_int_equal(TU_RUN("kv", "stats", "--data", "/tmp", "--log-level", "loud"), 2);
    assert_int_equal(TU_RUN("bench", "kv", "--data", "/tmp", "--block-bytes", "1000"), 2);
    assert_string_equal(tu_out, "");
}

static void test_no_db(void **state)
{
    assert_int_equal(TU_RUN("kv", "stats", "--data", "/nonexistent/kvtier-data"), 1);
    char *empty = tu_tmpdir("cli-empty");
    assert_int_equal(TU_RUN("kv", "stats", "--data", empty), 1);
    assert_int_equal(TU_RUN("kv", "verify", "--data", empty), 1);
    assert_int_equal(TU_RUN("kv", "ls", "--data", empty), 1);
    tu_rmtree(empty);
    free(empty);
}

/* ---- on a DB built here ---- */

typedef struct {
    char *data;
    char db[4096];
    tu_chain_t chain;
} db_fixture_t;

static int db_setup(void **state)
{
    db_fixture_t *f = calloc(1, sizeof(*f));
    kvt_block_identity_t id = tu_identity();
    f->data = tu_tmpdir("cli-db");
    snprintf(f->db, sizeof(f->db), "%s/t2", f->data);
    tu_chain_make(&f->chain, &id, N_BLOCKS, 7, NULL, 0);
    kvt_disk_tier_params_t p = {.path = f->db, .identity = &id, .create_if_missing = true};
    kvt_disk_tier_t *t2;
    if (kvt_disk_tier_open(&p, &t2) != KVT_OK)
        return -1;
    for (int i = 0; i < N_BLOCKS; i++)
        if (kvt_disk_tier_put(t2, &f->chain.hdr[i], f->chain.payload[i]) != KVT_OK)
            return -1;
    kvt_disk_tier_close(t2);
    *state = f;
    return 0;
}

static int db_teardown(void **state)
{
    db_fixture_t *f = *state;
    tu_rmtree(f->data);
    tu_chain_free(&f->chain);
    free(f->data);
    free(f);
    return 0;
}

/* Flip the last payload byte of one block's image: the tier keeps images
 * under 'b' || key (kvstore/disk_tierInt.h). */
static void corrupt_block(const char *db, const kvt_block_key_t *key)
{
    rocksdb_options_t *o = rocksdb_options_create();
    char *err = NULL, k[1 + KVT_KEY_LEN];
    k[0] = 'b';
    memcpy(k + 1, key->b, KVT_KEY_LEN);
    rocksdb_t *rdb = rocksdb_open(o, db, &err);
    assert_null(err);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    size_t vlen = 0;
    char *v = rocksdb_get(rdb, ro, k, sizeof(k), &vlen, &err);
    assert_null(err);
    assert_non_null(v);
    v[vlen - 1] ^= 0x5a;
    rocksdb_put(rdb, wo, k, sizeof(k), v, vlen, &err);
    assert_null(err);
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_flush(rdb, fo, &err);
    assert_null(err);
    rocksdb_free(v);
    rocksdb_close(rdb);
    rocksdb_flushoptions_destroy(fo);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_readoptions_destroy(ro);
    rocksdb_options_destroy(o);
}

static void test_kv_commands(void **state)
{
    db_fixture_t *f = *state;
    assert_int_equal(TU_RUN("kv", "verify", "--data", f->data, "--json"), 0);
    assert_int_equal(tu_json_num(tu_out, NULL, "blocks"), N_BLOCKS);
    assert_int_equal(tu_json_num(tu_out, NULL, "ok"), N_BLOCKS);
    assert_int_equal(tu_json_num(tu_out, NULL, "corrupt"), 0);
    assert_true(tu_json_num(tu_out, NULL, "bytes") >= N_BLOCKS * 1024);
    assert_int_equal(tu_count_of(tu_out, "\n"), 1); /* one JSON object, one line */

    assert_int_equal(TU_RUN("kv", "ls", "--data", f->data, "--limit", "2"), 0);
    char hex[2 * KVT_KEY_LEN + 1];
    int keys = 0;
    for (int i = 0; i < N_BLOCKS; i++) {
        kvt_block_key_hex(&f->chain.hdr[i].key, hex);
        keys += strstr(tu_out, hex) != NULL;
    }
    assert_int_equal(keys, 2);
    assert_int_equal(tu_count_of(tu_out, "\n"), 3); /* header + 2 */

    assert_int_equal(TU_RUN("kv", "stats", "--data", f->data, "--json"), 0);
    assert_int_equal(tu_json_num(tu_out, "\"disk\":", "blocks"), N_BLOCKS);
    assert_int_equal(tu_json_num(tu_out, "\"host\":", "blocks"), 0);
    assert_int_equal(tu_json_num(tu_out, "\"identity\":", "block_tokens"), 4);
    assert_int_equal(TU_RUN("kv", "stats", "--data", f->data), 0);
    assert_non_null(strstr(tu_out, "f32"));

    /* --data from the environment, as KVT_DATA */
    char env[4200];
    snprintf(env, sizeof(env), "KVT_DATA=%s", f->data);
    assert_int_equal(TU_RUN_ENV(env, "kv", "verify", "--json"), 0);
    assert_int_equal(tu_json_num(tu_out, NULL, "blocks"), N_BLOCKS);
}

static void test_corruption_and_repair(void **state)
{
    db_fixture_t *f = *state;
    corrupt_block(f->db, &f->chain.hdr[N_BLOCKS - 1].key);
    assert_int_equal(TU_RUN("kv", "verify", "--data", f->data, "--json"), 1);
    assert_int_equal(tu_json_num(tu_out, NULL, "blocks"), N_BLOCKS);
    assert_int_equal(tu_json_num(tu_out, NULL, "corrupt"), 1);
    assert_int_equal(tu_json_num(tu_out, NULL, "ok"), N_BLOCKS - 1);
    /* read-only verify changed nothing: still there and still bad */
    assert_int_equal(TU_RUN("kv", "verify", "--data", f->data), 1);
    assert_non_null(strstr(tu_out, "--repair"));

    assert_int_equal(TU_RUN("kv", "verify", "--data", f->data, "--repair", "--json"), 1);
    assert_int_equal(tu_json_num(tu_out, NULL, "corrupt"), 1);
    assert_int_equal(tu_json_num(tu_out, NULL, "repaired"), 1);
    assert_int_equal(TU_RUN("kv", "verify", "--data", f->data, "--json"), 0);
    assert_int_equal(tu_json_num(tu_out, NULL, "blocks"), N_BLOCKS - 1);
    assert_int_equal(tu_json_num(tu_out, NULL, "corrupt"), 0);
}

/* ---- bench ---- */

static void test_bench_json(void **state)
{
    char *dir = tu_tmpdir("cli-bench");
    assert_int_equal(TU_RUN("bench", "kv", "--data", dir, "--block-bytes", "64K", "--blocks", "8",
                         "--json"),
                     0);
    assert_non_null(strstr(tu_out, "\"bench\":\"kv\""));
    assert_non_null(strstr(tu_out, "\"machine\":{"));
    assert_non_null(strstr(tu_out, "\"results\":["));
    assert_int_equal(tu_count_of(tu_out, "\n"), 1);
    int n = tu_count_of(tu_out, "{\"name\":");
    assert_true(n >= 16);
    static const char *const fields[] = {"\"value\":", "\"unit\":", "\"ref_name\":",
                                         "\"ref_value\":", "\"ratio\":"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        assert_int_equal(tu_count_of(tu_out, fields[i]), n);
    assert_null(strstr(tu_out, "null")); /* no NaN/inf figures */
    /* scratch space removed without --keep */
    char path[4200];
    snprintf(path, sizeof(path), "%s/bench", dir);
    assert_int_not_equal(access(path, F_OK), 0);
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    tu_bin = getenv("KVTIER_BIN");
    if (!tu_bin || access(tu_bin, X_OK) != 0) {
        fprintf(stderr, "KVTIER_BIN not set or not executable\n");
        return 1;
    }
    /* the tests choose every flag themselves: drop KVT_<FLAG> from the
     * environment (KVT_TEST_TMP is not a flag, tu_tmpdir reads it) */
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "KVT_", 4) || !strncmp(*e, "KVT_TEST_TMP=", 13))
                continue;
            char name[256];
            snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
            unsetenv(name);
            again = 1;
            break;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_no_db),
        cmocka_unit_test_setup_teardown(test_kv_commands, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_corruption_and_repair, db_setup, db_teardown),
        cmocka_unit_test(test_bench_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
