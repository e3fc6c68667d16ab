/* kvtier: one binary, many subcommands (DESIGN.md section 5).
 *
 * main() only dispatches on argv[1]; each command parses its own flags
 * through kvt_cli_parse() so --help, --log-level, KVT_<FLAG> environment
 * variables and exit codes (0 ok, 1 failure, 2 usage) behave the same
 * everywhere. */
#include "cli/cli.h"

#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char g_usage[] =
    "usage: kvtier <command> [flags]\n"
    "\n"
    "kvtier is a distributed KV-cache tier for LLM serving.  Commands:\n"
    "\n"
    "  serve        all roles in one process (the embedded default): the\n"
    "               OpenAI-compatible API, one prefill and one decode node\n"
    "  coord        the coordinator: HTTP API, EFIM anchors, routing\n"
    "  prefill      a prefill node (computes and serves KV blocks)\n"
    "  decode       a decode node (pulls blocks, continuous batching)\n"
    "  kv stats     a node's tier: layout, identity, blocks, lifetime counters\n"
    "  kv verify    read every stored block and check it (--repair removes bad ones)\n"
    "  kv ls        list stored blocks (key, index, tokens, bytes)\n"
    "  kv serve     serve a tier's blocks to peers over UCX (block pulls)\n"
    "  bench kv     T1 (host pool) and T2 (RocksDB) throughput and latency,\n"
    "               each figure beside memcpy / plain-file references\n"
    "  bench pull   block pulls over UCX beside ucx_perftest and Redis\n"
    "  bench engine CPU engine prefill/decode beside a plain matrix product\n"
    "  generate     one request in-process on the CPU engine (reference path;\n"
    "               --data DIR reuses and stores the prompt's KV blocks)\n"
    "  model init   write a random-weight model directory from a preset\n"
    "  model info   load a model directory: shapes, digest, fingerprint\n"
    "  version      print the version\n"
    "  help         this text\n"
    "\n"
    "Not built yet: warm, kv export|import.\n"
    "\n"
    "Every command documents its flags with --help.  Every flag --name can\n"
    "also be set as KVT_NAME in the environment (upper case, '-' -> '_');\n"
    "the command line wins.  --json prints exactly one JSON object on\n"
    "stdout; logs go to stderr (--log-level error|warn|info|debug).\n"
    "Exit status: 0 success, 1 failure, 2 usage error.\n";

int kvt_cli_parse(kvt_config_t *cfg, const kvt_opt_t *opts, int n_opts, int argc, char **argv,
                  const char *usage, const char *about)
{
    if (kvt_config_parse(cfg, opts, n_opts, argc, argv) != KVT_OK) {
        fprintf(stderr, "%s\nrun with --help for the flags\n", usage);
        return KVT_EXIT_USAGE;
    }
    if (cfg->help) {
        printf("%s\n\n%s\n\nflags (each also settable as KVT_<FLAG>):\n", usage, about);
        kvt_config_usage(stdout, opts, n_opts);
        return KVT_EXIT_OK;
    }
    if (cfg->n_positional > 0) {
        kvt_log_error("unexpected argument arg=\"%s\"", cfg->positional[0]);
        fprintf(stderr, "%s\n", usage);
        return KVT_EXIT_USAGE;
    }
    const char *level_name = kvt_config_str(cfg, "log-level");
    if (level_name) {
        kvt_log_level_t level;
        if (kvt_log_level_parse(level_name, &level) != KVT_OK) {
            kvt_log_error("bad log level value=\"%s\" expected=error|warn|info|debug",
                          level_name);
            return KVT_EXIT_USAGE;
        }
        kvt_log_set_level(level);
    }
    return KVT_EXIT_CONTINUE;
}

const char *kvt_cli_require(const kvt_config_t *cfg, const char *name)
{
    const char *v = kvt_config_str(cfg, name);
    if (!v || !*v) {
        kvt_log_error("missing required option option=--%s", name);
        return NULL;
    }
    return v;
}

void kvt_cli_fmt_bytes(uint64_t bytes, char *out, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 5) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(out, cap, "%llu B", (unsigned long long)bytes);
    else
        snprintf(out, cap, "%.2f %s", v, units[u]);
}

static int cmd_version(int argc, char **argv)
{
    static const kvt_opt_t opts[] = {KVT_CLI_OPT_JSON, KVT_CLI_OPT_LOG_LEVEL};
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, opts, 2, argc, argv, "usage: kvtier version [--json]",
                           "Print the kvtier version.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    if (kvt_config_bool(&cfg, "json"))
        printf("{\"version\":\"%s\"}\n", KVT_VERSION);
    else
        printf("kvtier %s\n", KVT_VERSION);
    return KVT_EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(g_usage, stderr);
        return KVT_EXIT_USAGE;
    }
    /* Every kvtier process: a restarted daemon binds its UCX listen port at
     * once instead of after its old connections leave TIME_WAIT.  UCX 1.13
     * sets SO_REUSEADDR only when asked, and only through the environment
     * (ucp_config_modify refuses transport keys); set here, before any
     * thread exists, rather than in net/ where setenv would race. */
    setenv("UCX_TCP_CM_REUSEADDR", "y", 0);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        fputs(g_usage, stdout);
        return KVT_EXIT_OK;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version"))
        return cmd_version(argc - 1, argv + 1);
    if (!strcmp(cmd, "kv"))
        return kvt_cmd_kv(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return kvt_cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "model"))
        return kvt_cmd_model(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate"))
        return kvt_cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve"))
        return kvt_cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "coord"))
        return kvt_cmd_coord(argc - 1, argv + 1);
    if (!strcmp(cmd, "prefill"))
        return kvt_cmd_prefill(argc - 1, argv + 1);
    if (!strcmp(cmd, "decode"))
        return kvt_cmd_decode(argc - 1, argv + 1);
    kvt_log_error("unknown command command=\"%s\"", cmd);
    fputs("run 'kvtier help' for the commands\n", stderr);
    return KVT_EXIT_USAGE;
}
