/* `kvtier kv stats|verify|ls`: inspect a node's tier from outside.
 *
 * A node's data directory holds its T2 RocksDB at DIR/t2 (kvstore/tier.h).
 * These tools open it read-only and adopt the stored identity, so they work
 * beside a running node (no DB lock taken, nothing written); only
 * `verify --repair` opens it read-write, which needs the node stopped.
 * T1 lives in a running node's memory, so stats reports it as not running
 * with the capacity it would have (--host-capacity). */
#include "cli/cli.h"
#include "cli/json_out.h"

#include "common/hash.h"
#include "common/log.h"
#include "kvstore/disk_tier.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define KV_STOP KVT_ERR_AGAIN /* ls: foreach callback's "enough" */

/* Open DIR/t2; logs the reason and returns KVT_EXIT_FAIL when there is no
 * directory or no DB there. */
static int open_t2(const char *data, bool read_only, uint64_t capacity, kvt_disk_tier_t **tier_p)
{
    struct stat st;
    if (stat(data, &st) != 0 || !S_ISDIR(st.st_mode)) {
        kvt_log_error("no such data directory data=%s", data);
        return KVT_EXIT_FAIL;
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/t2", data) >= (int)sizeof(path)) {
        kvt_log_error("data path too long data=%s", data);
        return KVT_EXIT_FAIL;
    }
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        kvt_log_error("no tier database in data directory data=%s expected=%s", data, path);
        return KVT_EXIT_FAIL;
    }
    kvt_disk_tier_params_t p = {
        .path = path,
        .identity = NULL,
        .capacity_bytes = capacity,
        .read_only = read_only,
    };
    kvt_status_t s = kvt_disk_tier_open(&p, tier_p);
    if (s != KVT_OK) {
        kvt_log_error("cannot open tier database path=%s status=\"%s\"", path,
                      kvt_status_str(s));
        return KVT_EXIT_FAIL;
    }
    return KVT_EXIT_OK;
}

/* The required --data flag, then its tier: KVT_EXIT_USAGE without it. */
static int open_data_t2(const kvt_config_t *cfg, bool read_only, uint64_t capacity,
                        const char **data_p, kvt_disk_tier_t **tier_p)
{
    *data_p = kvt_cli_require(cfg, "data");
    if (!*data_p)
        return KVT_EXIT_USAGE;
    return open_t2(*data_p, read_only, capacity, tier_p);
}

/* ---- kv stats ---- */

static const kvt_opt_t g_stats_opts[] = {
    {"data", KVT_OPT_STR, NULL, "the node's data directory (its tier DB is DIR/t2); required"},
    {"host-capacity", KVT_OPT_SIZE, "0",
     "T1 capacity to report for the host pool (T1 lives in a running node; 0 = not given)"},
    {"disk-capacity", KVT_OPT_SIZE, "0", "T2 capacity to report, 0 = unlimited"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

/* cap_zero: what a capacity of 0 means for this tier. */
static void print_stats_row(const char *name, const char *state, const kvt_tier_stats_t *s,
                            const char *cap_zero)
{
    char bytes[32], cap[32];
    kvt_cli_fmt_bytes(s->bytes, bytes, sizeof(bytes));
    if (s->capacity_bytes)
        kvt_cli_fmt_bytes(s->capacity_bytes, cap, sizeof(cap));
    else
        snprintf(cap, sizeof(cap), "%s", cap_zero);
    printf("%-5s %-12s %8llu %12s %12s %8llu %8llu %8llu %9llu %8llu\n", name, state,
           (unsigned long long)s->blocks, bytes, cap, (unsigned long long)s->hits,
           (unsigned long long)s->misses, (unsigned long long)s->puts,
           (unsigned long long)s->evictions, (unsigned long long)s->corrupt);
}

static void print_stats_text(const char *data, const kvt_block_identity_t *id,
                             const kvt_tier_stats_t *host, const kvt_tier_stats_t *disk)
{
    const kvt_block_layout_t *l = &id->layout;
    char fp[2 * KVT_FINGERPRINT_LEN + 1], payload[32];
    kvt_hex(id->fingerprint, KVT_FINGERPRINT_LEN, fp);
    kvt_cli_fmt_bytes(kvt_block_layout_payload_bytes(l), payload, sizeof(payload));
    printf("data         %s\n", data);
    printf("fingerprint  %.16s...\n", fp);
    printf("layout       dtype=%s n_layers=%u n_kv_heads=%u head_dim=%u block_tokens=%u "
           "payload=%s\n\n",
           kvt_dtype_name(l->dtype), l->n_layers, l->n_kv_heads, l->head_dim, l->block_tokens,
           payload);
    printf("%-5s %-12s %8s %12s %12s %8s %8s %8s %9s %8s\n", "tier", "state", "blocks", "bytes",
           "capacity", "hits", "misses", "puts", "evictions", "corrupt");
    print_stats_row("host", "not running", host, "-");
    print_stats_row("disk", "on disk", disk, "unlimited");
}

static int print_stats_json(const char *data, const kvt_block_identity_t *id,
                            const kvt_tier_stats_t *host, const kvt_tier_stats_t *disk)
{
    cJSON *o = cJSON_CreateObject(), *tiers = cJSON_CreateObject();
    if (!o || !tiers) {
        cJSON_Delete(o);
        cJSON_Delete(tiers);
        return kvt_json_print(NULL);
    }
    cJSON_AddStringToObject(o, "data", data);
    cJSON_AddItemToObject(o, "identity", kvt_json_identity(id));
    cJSON_AddItemToObject(tiers, "host", kvt_json_tier_stats(host, "not running"));
    cJSON_AddItemToObject(tiers, "disk", kvt_json_tier_stats(disk, "on disk"));
    cJSON_AddItemToObject(o, "tiers", tiers);
    return kvt_json_print(o);
}

static int kv_stats(int argc, char **argv)
{
    kvt_config_t cfg;
    int n = (int)(sizeof(g_stats_opts) / sizeof(g_stats_opts[0]));
    int rc = kvt_cli_parse(&cfg, g_stats_opts, n, argc, argv,
                           "usage: kvtier kv stats --data DIR [--json]",
                           "Print a node's tier: block layout and model fingerprint, then per\n"
                           "tier the blocks and bytes held, capacity and lifetime counters.\n"
                           "Opens DIR/t2 read-only, so it is safe beside a running node.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    const char *data;
    kvt_disk_tier_t *t2;
    rc = open_data_t2(&cfg, true, kvt_config_u64(&cfg, "disk-capacity", 0), &data, &t2);
    if (rc != KVT_EXIT_OK)
        return rc;
    kvt_tier_stats_t host = {.capacity_bytes = kvt_config_u64(&cfg, "host-capacity", 0)};
    kvt_tier_stats_t disk;
    kvt_disk_tier_stats(t2, &disk);
    kvt_block_identity_t id = *kvt_disk_tier_identity(t2);
    kvt_disk_tier_close(t2);
    if (kvt_config_bool(&cfg, "json"))
        return print_stats_json(data, &id, &host, &disk);
    print_stats_text(data, &id, &host, &disk);
    return KVT_EXIT_OK;
}

/* ---- kv verify ---- */

static const kvt_opt_t g_verify_opts[] = {
    {"data", KVT_OPT_STR, NULL, "the node's data directory (its tier DB is DIR/t2); required"},
    {"repair", KVT_OPT_BOOL, NULL,
     "delete corrupt and orphaned blocks (and their descendants); opens the DB "
     "read-write, so stop the node first"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

static int print_verify(const char *data, const kvt_disk_verify_report_t *r, bool repair,
                        bool json)
{
    if (json) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddStringToObject(o, "data", data);
            kvt_json_add_u64(o, "blocks", r->blocks);
            kvt_json_add_u64(o, "ok", r->ok);
            kvt_json_add_u64(o, "corrupt", r->corrupt);
            kvt_json_add_u64(o, "orphans", r->orphans);
            kvt_json_add_u64(o, "bytes", r->bytes);
            kvt_json_add_u64(o, "repaired", r->repaired);
            cJSON_AddBoolToObject(o, "repair", repair);
        }
        return kvt_json_print(o);
    }
    char bytes[32];
    kvt_cli_fmt_bytes(r->bytes, bytes, sizeof(bytes));
    printf("blocks    %llu\nok        %llu\ncorrupt   %llu\norphans   %llu\nbytes     %s\n",
           (unsigned long long)r->blocks, (unsigned long long)r->ok,
           (unsigned long long)r->corrupt, (unsigned long long)r->orphans, bytes);
    if (repair)
        printf("repaired  %llu blocks removed\n", (unsigned long long)r->repaired);
    if (r->corrupt || r->orphans)
        printf("result    %s\n", repair ? "damage found and repaired" :
                                          "damage found (run again with --repair to remove it)");
    else
        printf("result    ok\n");
    return 0;
}

static int kv_verify(int argc, char **argv)
{
    kvt_config_t cfg;
    int n = (int)(sizeof(g_verify_opts) / sizeof(g_verify_opts[0]));
    int rc = kvt_cli_parse(
        &cfg, g_verify_opts, n, argc, argv, "usage: kvtier kv verify --data DIR [--repair] [--json]",
        "Read every block in DIR/t2 and check its header, key, identity, payload\n"
        "checksum, meta record and prefix closure (every block's parent present).\n"
        "Without --repair the DB is opened read-only and nothing is changed.\n"
        "Exit status: 0 when every block is intact; 1 when corruption or orphans\n"
        "were found -- also with --repair, which then reports them as repaired\n"
        "(run verify again to see a clean result); 2 on usage errors.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    bool repair = kvt_config_bool(&cfg, "repair");
    const char *data;
    kvt_disk_tier_t *t2;
    rc = open_data_t2(&cfg, !repair, 0, &data, &t2);
    if (rc != KVT_EXIT_OK)
        return rc;
    kvt_disk_verify_report_t r;
    memset(&r, 0, sizeof(r));
    kvt_status_t s = kvt_disk_tier_verify(t2, repair, &r);
    kvt_disk_tier_close(t2);
    if (s != KVT_OK) {
        kvt_log_error("verify failed data=%s status=\"%s\"", data, kvt_status_str(s));
        return KVT_EXIT_FAIL;
    }
    if (r.corrupt || r.orphans)
        kvt_log_warn("verify found damage data=%s corrupt=%llu orphans=%llu repaired=%llu", data,
                     (unsigned long long)r.corrupt, (unsigned long long)r.orphans,
                     (unsigned long long)r.repaired);
    if (print_verify(data, &r, repair, kvt_config_bool(&cfg, "json")))
        return KVT_EXIT_FAIL;
    return (r.corrupt || r.orphans) ? KVT_EXIT_FAIL : KVT_EXIT_OK;
}

/* ---- kv ls ---- */

static const kvt_opt_t g_ls_opts[] = {
    {"data", KVT_OPT_STR, NULL, "the node's data directory (its tier DB is DIR/t2); required"},
    {"limit", KVT_OPT_U64, "0", "list at most N blocks, 0 = all"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

typedef struct {
    uint64_t limit;
    uint64_t count;
    cJSON *array; /* NULL: print text */
} ls_ctx_t;

static kvt_status_t ls_visit(const kvt_block_header_t *hdr, uint64_t image_bytes, void *arg)
{
    ls_ctx_t *ctx = arg;
    if (ctx->limit && ctx->count >= ctx->limit)
        return KV_STOP;
    char hex[2 * KVT_KEY_LEN + 1];
    kvt_block_key_hex(&hdr->key, hex);
    if (ctx->array) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            return KVT_ERR_NOMEM;
        cJSON_AddStringToObject(o, "key", hex);
        kvt_json_add_u64(o, "index", hdr->index);
        kvt_json_add_u64(o, "tokens", hdr->layout.block_tokens);
        kvt_json_add_u64(o, "image_bytes", image_bytes);
        cJSON_AddItemToArray(ctx->array, o);
    } else {
        printf("%s %8u %6u %12llu\n", hex, hdr->index, hdr->layout.block_tokens,
               (unsigned long long)image_bytes);
    }
    ctx->count++;
    return KVT_OK;
}

static int kv_ls_run(const char *data, kvt_disk_tier_t *t2, ls_ctx_t *ctx)
{
    kvt_tier_stats_t st;
    kvt_disk_tier_stats(t2, &st);
    cJSON *o = NULL;
    if (ctx->array) {
        o = cJSON_CreateObject();
        if (!o)
            return kvt_json_print(NULL);
        cJSON_AddStringToObject(o, "data", data);
        cJSON_AddItemToObject(o, "blocks", ctx->array);
    } else {
        printf("%-64s %8s %6s %12s\n", "key", "index", "tokens", "image_bytes");
    }
    kvt_status_t s = kvt_disk_tier_foreach(t2, ls_visit, ctx);
    if (s != KVT_OK && s != KV_STOP) {
        kvt_log_error("listing blocks failed data=%s status=\"%s\"", data, kvt_status_str(s));
        cJSON_Delete(o);
        return KVT_EXIT_FAIL;
    }
    if (!o)
        return KVT_EXIT_OK;
    kvt_json_add_u64(o, "count", ctx->count);
    kvt_json_add_u64(o, "total", st.blocks);
    return kvt_json_print(o);
}

static int kv_ls(int argc, char **argv)
{
    kvt_config_t cfg;
    int n = (int)(sizeof(g_ls_opts) / sizeof(g_ls_opts[0]));
    int rc = kvt_cli_parse(&cfg, g_ls_opts, n, argc, argv,
                           "usage: kvtier kv ls --data DIR [--limit N] [--json]",
                           "List the blocks stored in DIR/t2 in key order: key (hex), index in\n"
                           "its chain, token count and image bytes (header + payload).  Opens\n"
                           "the tier read-only.  Text output starts with one header line.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    const char *data;
    kvt_disk_tier_t *t2;
    rc = open_data_t2(&cfg, true, 0, &data, &t2);
    if (rc != KVT_EXIT_OK)
        return rc;
    ls_ctx_t ctx = {.limit = kvt_config_u64(&cfg, "limit", 0)};
    if (kvt_config_bool(&cfg, "json") && !(ctx.array = cJSON_CreateArray())) {
        kvt_disk_tier_close(t2);
        return kvt_json_print(NULL);
    }
    rc = kv_ls_run(data, t2, &ctx);
    kvt_disk_tier_close(t2);
    return rc;
}

/* ---- dispatch ---- */

static const char g_kv_usage[] =
    "usage: kvtier kv <stats|verify|ls|serve> --data DIR [flags]\n"
    "\n"
    "  stats    layout, identity, blocks and lifetime counters of the tier\n"
    "  verify   read and check every block (--repair removes bad ones)\n"
    "  ls       list stored blocks\n"
    "  serve    serve the tier's blocks to peers (UCX block pulls)\n"
    "\n"
    "run 'kvtier kv <subcommand> --help' for its flags\n";

int kvt_cmd_kv(int argc, char **argv)
{
    if (argc < 2) {
        fputs(g_kv_usage, stderr);
        return KVT_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "help") || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        fputs(g_kv_usage, stdout);
        return KVT_EXIT_OK;
    }
    if (!strcmp(sub, "stats"))
        return kv_stats(argc - 1, argv + 1);
    if (!strcmp(sub, "verify"))
        return kv_verify(argc - 1, argv + 1);
    if (!strcmp(sub, "ls"))
        return kv_ls(argc - 1, argv + 1);
    if (!strcmp(sub, "serve"))
        return kvt_cmd_kv_serve(argc - 1, argv + 1);
    kvt_log_error("unknown kv subcommand subcommand=\"%s\"", sub);
    fputs(g_kv_usage, stderr);
    return KVT_EXIT_USAGE;
}
