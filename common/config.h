/* Configuration: a table of options, each with a default and a help string,
 * filled from the command line and the environment.
 *
 * Precedence: `--name value` / `--name=value` on the command line, then the
 * environment variable KVT_<NAME> (upper case, '-' -> '_'), then the table's
 * default.  Boolean options take no value (`--json`), or `--json=false`.
 * Sizes accept K/M/G/T suffixes (powers of 1024) and plain byte counts.
 * The config borrows the table and argv/environment strings; it owns
 * nothing and needs no cleanup. */
#ifndef KVT_COMMON_CONFIG_H
#define KVT_COMMON_CONFIG_H

#include "common/status.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define KVT_CONFIG_MAX_OPTS 64
#define KVT_CONFIG_MAX_POSITIONAL 16

typedef enum {
    KVT_OPT_STR,
    KVT_OPT_U64,
    KVT_OPT_SIZE,
    KVT_OPT_BOOL,
    KVT_OPT_F64, /* a finite decimal number: 0.7, 1e-3 */
} kvt_opt_type_t;

typedef struct {
    const char *name;          /* "data": --data and KVT_DATA */
    kvt_opt_type_t type;
    const char *default_value; /* NULL: unset unless given */
    const char *help;
} kvt_opt_t;

typedef struct {
    const kvt_opt_t *opts;  /* read-only: the table */
    int n_opts;
    const char *values[KVT_CONFIG_MAX_OPTS]; /* read-only: effective values */
    const char *positional[KVT_CONFIG_MAX_POSITIONAL];
    int n_positional;
    bool help;              /* --help or -h was given */
} kvt_config_t;

/* Parse argv (argv[0] is skipped) against the table.  Unknown options,
 * missing values and bad numbers give KVT_ERR_USAGE with a logged message;
 * values are type-checked here so later getters cannot fail on them. */
kvt_status_t kvt_config_parse(kvt_config_t *cfg, const kvt_opt_t *opts, int n_opts,
                              int argc, char **argv);

/* Effective string value, or NULL when unset.  Asking for a name not in the
 * table is a programming error and returns NULL. */
const char *kvt_config_str(const kvt_config_t *cfg, const char *name);
/* Numeric value (U64 or SIZE); `fallback` when unset. */
uint64_t kvt_config_u64(const kvt_config_t *cfg, const char *name, uint64_t fallback);
/* F64 value; `fallback` when unset. */
double kvt_config_f64(const kvt_config_t *cfg, const char *name, double fallback);
bool kvt_config_bool(const kvt_config_t *cfg, const char *name);

/* Parse "123", "64K", "1M", "2G", "1T" into bytes. */
kvt_status_t kvt_config_parse_size(const char *text, uint64_t *bytes_p);

/* Print the option table as help text. */
void kvt_config_usage(FILE *out, const kvt_opt_t *opts, int n_opts);

#endif
