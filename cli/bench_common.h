/* What the `kvtier bench ...` programs share (STYLE.md: benchmarks are
 * programs): the seeded block chain they measure, timing phases with
 * nearest-rank percentiles, the results table printed as text or as the
 * DESIGN.md section 5 JSON, scratch directories, and child processes
 * (servers and reference tools a benchmark starts and must always reap). */
#ifndef KVT_CLI_BENCH_COMMON_H
#define KVT_CLI_BENCH_COMMON_H

#include "kvstore/block.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define KVT_BENCH_MAX_RESULTS 48

/* ---- the block chain ---- */

/* M blocks of N payload bytes: random payloads, a random fingerprint and
 * random tokens, all from one seed, chained with kvt_block_key_chain (so
 * the same seed, N and M give the same keys and bytes in any process). */
typedef struct {
    uint64_t n, m;
    kvt_block_identity_t id;     /* layout chosen for N, fingerprint from the seed */
    uint8_t *src;                /* M*N payload bytes, kvt_alloc_large */
    kvt_block_header_t *hdrs;    /* M headers; hdrs[i].key is block i's key */
} kvt_bench_chain_t;

/* The layout whose payload is exactly n bytes, closest to head_dim 128 and
 * 8 kv heads (16 tokens, bf16).  KVT_ERR_INVALID when none fits. */
kvt_status_t kvt_bench_layout(uint64_t n, kvt_block_layout_t *layout_p);

/* Pick the layout and allocate the chain's buffers.  copies: how many M*N
 * buffers the whole benchmark holds, for the check against this machine's
 * memory.  KVT_ERR_INVALID (no layout fits n, or m is 0: a usage error,
 * logged), KVT_ERR_TOO_LARGE (logged), KVT_ERR_NOMEM.  On failure c needs
 * no cleanup. */
kvt_status_t kvt_bench_chain_init(kvt_bench_chain_t *c, uint64_t n, uint64_t m, unsigned copies);
/* Fill payloads, fingerprint, keys and headers from seed. */
kvt_status_t kvt_bench_chain_generate(kvt_bench_chain_t *c, uint64_t seed);
void kvt_bench_chain_cleanup(kvt_bench_chain_t *c);

/* ---- timing ---- */

typedef struct {
    double seconds;
    double p50_us, p99_us;
} kvt_bench_phase_t;

/* Nearest-rank p50/p99 of lat[0..n) nanoseconds, in microseconds; sorts lat. */
void kvt_bench_percentiles(uint64_t *lat, size_t n, double *p50_us_p, double *p99_us_p);
/* ph = seconds since t0 (kvt_time_ns) and the percentiles of lat. */
void kvt_bench_phase_finish(kvt_bench_phase_t *ph, uint64_t t0, uint64_t *lat, size_t n);
/* The phase with the median time among ph[0..n) (sorts ph). */
const kvt_bench_phase_t *kvt_bench_phase_median(kvt_bench_phase_t *ph, int n);

/* ---- results ---- */

typedef struct {
    char name[48], unit[16], ref_name[48];
    double value, ref_value;
    bool latency; /* ratio = ref/value (lower is better), else value/ref */
} kvt_bench_result_t;

typedef struct {
    kvt_bench_result_t res[KVT_BENCH_MAX_RESULTS];
    int n;
} kvt_bench_results_t;

/* Append a row (dropped past KVT_BENCH_MAX_RESULTS; names are truncated to
 * their fields). */
void kvt_bench_add(kvt_bench_results_t *t, const char *name, double value, const char *unit,
                   const char *ref_name, double ref_value, bool latency);
/* Higher is better; 0 when the reference (or a latency value) is 0. */
double kvt_bench_ratio(const kvt_bench_result_t *r);
/* {"bench":bench,"machine":machine,"results":[...]} on one stdout line.
 * machine is consumed; NULL gives kvt_json_machine(dir).  Returns 0 or 1. */
int kvt_bench_print_json(const kvt_bench_results_t *t, const char *bench, const char *dir,
                         cJSON *machine);
/* The rows as an aligned text table, then the line that explains ratios. */
void kvt_bench_print_table(const kvt_bench_results_t *t);

/* ---- files ---- */

/* Remove a tree (no error if it is missing; failures are logged). */
void kvt_bench_rm_tree(const char *path);
/* mkdir -p; KVT_ERR_IO (logged) when the last component cannot be made. */
kvt_status_t kvt_bench_mkdir_p(const char *path);

/* ---- child processes ---- */

/* A child started by kvt_bench_child_spawn.  The child gets SIGTERM if this
 * process dies first (PR_SET_PDEATHSIG), so none outlives a crashed bench. */
typedef struct {
    pid_t pid;      /* 0: none */
    int out_fd;     /* read end of the child's stdout, or -1 */
    char buf[4096]; /* bytes read from out_fd not yet returned as lines */
    size_t len;
} kvt_bench_child_t;

/* The full path of program name found in $PATH (false when absent). */
bool kvt_bench_which(const char *name, char *path, size_t cap);
/* fork + execve(argv[0], argv) (a path: see kvt_bench_which) with this
 * environment, where env_set ("NAME=value", may be NULL) replaces or adds
 * one variable; stdin from /dev/null; stdout to a pipe (capture) or
 * /dev/null; stderr inherited unless quiet.  KVT_ERR_IO when it cannot
 * fork (logged); a program that cannot be executed exits 127. */
kvt_status_t kvt_bench_child_spawn(kvt_bench_child_t *ch, char *const argv[], const char *env_set,
                                   bool capture, bool quiet);
/* The next stdout line (without its newline) within timeout_ms.  KVT_ERR_AGAIN
 * on timeout, KVT_ERR_CLOSED at end of output, KVT_ERR_TOO_LARGE for a line
 * longer than the buffer. */
kvt_status_t kvt_bench_child_line(kvt_bench_child_t *ch, char *line, size_t cap, int timeout_ms);
/* The first stdout line starting with prefix within timeout_ms, skipping
 * others (and overlong ones); statuses as kvt_bench_child_line. */
kvt_status_t kvt_bench_child_find(kvt_bench_child_t *ch, const char *prefix, char *line,
                                  size_t cap, int timeout_ms);
/* Wait up to timeout_ms for the child to exit by itself and reap it:
 * *exit_p gets its exit status (-1 if a signal ended it).  KVT_ERR_AGAIN
 * while it still runs (it is left running: stop it). */
kvt_status_t kvt_bench_child_wait(kvt_bench_child_t *ch, int timeout_ms, int *exit_p);
/* SIGTERM, then SIGKILL after grace_ms; always reaps and closes.  No-op on
 * an empty or already reaped child. */
void kvt_bench_child_stop(kvt_bench_child_t *ch, int grace_ms);

/* A TCP port on 127.0.0.1 free at the time of the call, or 0. */
uint16_t kvt_bench_free_port(void);
/* Wait until something listens on 127.0.0.1:port (read from /proc/net/tcp,
 * so the listener sees no probe connection) or timeout_ms passes. */
kvt_status_t kvt_bench_wait_listen(uint16_t port, int timeout_ms);

#endif
