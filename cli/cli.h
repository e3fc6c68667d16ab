/* The kvtier command line: dispatch and the conventions every command shares.
 *
 * Each top-level command is one function `int kvt_cmd_<name>(argc, argv)`
 * where argv[0] is the command's own name ("kv", "bench") and the return
 * value is the process exit status: 0 success, 1 failure, 2 usage error
 * (DESIGN.md section 5).  Commands describe their flags in a kvt_opt_t
 * table; kvt_cli_parse() handles --help, --log-level and stray arguments
 * the same way for all of them.  The CLI is the only code that prints:
 * results on stdout, logs (kvt_log_*) on stderr. */
#ifndef KVT_CLI_CLI_H
#define KVT_CLI_CLI_H

#include "common/config.h"

#include <stddef.h>
#include <stdint.h>

#ifndef KVT_VERSION
#define KVT_VERSION "unknown"
#endif

enum {
    KVT_EXIT_OK = 0,
    KVT_EXIT_FAIL = 1,
    KVT_EXIT_USAGE = 2,
    KVT_EXIT_CONTINUE = -1, /* kvt_cli_parse: go on and run the command */
};

/* Rows every command's table carries. */
#define KVT_CLI_OPT_LOG_LEVEL \
    {"log-level", KVT_OPT_STR, "warn", "log level on stderr: error|warn|info|debug"}
#define KVT_CLI_OPT_JSON {"json", KVT_OPT_BOOL, NULL, "print exactly one JSON object on stdout"}

/* Parse argv (argv[0] = the subcommand's name) against opts and apply
 * --log-level.  On --help prints `usage`, `about` and the flag table to
 * stdout and returns KVT_EXIT_OK; on a usage error logs it and returns
 * KVT_EXIT_USAGE; otherwise returns KVT_EXIT_CONTINUE. */
int kvt_cli_parse(kvt_config_t *cfg, const kvt_opt_t *opts, int n_opts, int argc, char **argv,
                  const char *usage, const char *about);

/* A required string flag: NULL (and a logged usage error) when unset. */
const char *kvt_cli_require(const kvt_config_t *cfg, const char *name);

/* "1.50 GiB"-style text for a byte count (powers of 1024). */
void kvt_cli_fmt_bytes(uint64_t bytes, char *out, size_t cap);

/* `kvtier kv stats|verify|ls` (cmd_kv.c). */
int kvt_cmd_kv(int argc, char **argv);
/* `kvtier kv serve` (cmd_kv_serve.c); argv[0] is "serve". */
int kvt_cmd_kv_serve(int argc, char **argv);
/* `kvtier bench kv|pull|engine|efim` (cmd_bench_kv.c). */
int kvt_cmd_bench(int argc, char **argv);
/* `kvtier bench engine` (cmd_bench_engine.c); argv[0] is "engine". */
int kvt_cmd_bench_engine(int argc, char **argv);
/* `kvtier generate` (cmd_generate.c). */
int kvt_cmd_generate(int argc, char **argv);
/* `kvtier bench pull` (cmd_bench_pull.c); argv[0] is "pull". */
int kvt_cmd_bench_pull(int argc, char **argv);
/* `kvtier bench efim` (cmd_bench_efim.c); argv[0] is "efim". */
int kvt_cmd_bench_efim(int argc, char **argv);
/* `kvtier serve|coord|prefill|decode` (cmd_serve.c). */
int kvt_cmd_serve(int argc, char **argv);
int kvt_cmd_coord(int argc, char **argv);
int kvt_cmd_prefill(int argc, char **argv);
int kvt_cmd_decode(int argc, char **argv);
/* `kvtier model init|info` (cmd_model.c). */
int kvt_cmd_model(int argc, char **argv);

#endif
