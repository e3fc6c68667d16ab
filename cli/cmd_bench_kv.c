/* `kvtier bench kv`: T1 and T2 throughput and latency, each figure beside a
 * reference measured in the same run (STYLE.md: benchmarks are programs).
 *
 *   T1 put/get  kvt_host_pool directly (capacity = M blocks; its region is
 *               pre-faulted, as a serving node's pinned pool is) against
 *               memcpy of the same M blocks into a distinct, warmed buffer
 *               (best of three passes).
 *   T2 put      kvt_disk_tier on a fresh DB (sync_writes off) including a
 *               final kvt_disk_tier_flush, against N-sized write()s of the
 *               same bytes to a plain file followed by fsync.
 *   T2 get      after close, reopen and dropping the DB files' page cache
 *               (fdatasync + POSIX_FADV_DONTNEED), against N-sized read()s of
 *               the plain file after dropping its page cache the same way.
 *
 * Payloads are random and generated before any timing; the chain is real
 * (kvt_block_key_chain on random tokens).  Every get is checked against the
 * source bytes after its timed loop.  Throughput counts payload bytes only
 * (GB/s = 1e9 B/s).  Per-op latencies are nearest-rank p50/p99; T2 put
 * latencies exclude the final flush, its throughput includes it.
 *
 * Scratch space: DIR/bench, a node-shaped data dir whose tier is
 * DIR/bench/t2 (so `kvtier kv stats --data DIR/bench` reads it after
 * --keep) plus the reference file DIR/bench/ref-file.bin. */
#include "cli/bench_common.h"
#include "cli/cli.h"
#include "cli/json_out.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "kvstore/disk_tier.h"
#include "kvstore/host_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BENCH_MAX_ROUNDS 9

typedef kvt_bench_phase_t phase_t;

typedef struct {
    char root[PATH_MAX], db[PATH_MAX], file[PATH_MAX];
    int rounds;              /* disk phases are repeated; the median round counts */
    kvt_bench_chain_t c;     /* n, m, identity, source payloads and headers */
    uint8_t *dst;            /* M*N, kvt_alloc_large */
    uint64_t *lat;           /* per-op ns, M entries */
    kvt_bench_results_t res;
} bench_t;

static const kvt_opt_t g_opts[] = {
    {"data", KVT_OPT_STR, NULL,
     "directory on the disk to measure (created if missing); scratch space is "
     "DIR/bench, recreated each run; required"},
    {"block-bytes", KVT_OPT_SIZE, "1M",
     "payload bytes per block N: a multiple of 64 (K,V x 16 tokens x bf16) whose "
     "quotient factors into layers<=1024 x kv_heads<=1024 x head_dim<=4096; at most 1G"},
    {"blocks", KVT_OPT_U64, "256", "blocks M in the chain (needs about 3*M*N bytes of memory)"},
    {"seed", KVT_OPT_U64, "1", "seed for payloads, tokens and fingerprint"},
    {"rounds", KVT_OPT_U64, "3",
     "disk rounds (1-9): T2 and its file reference run this many times, interleaved, "
     "and each reports its median round (a shared disk's speed drifts)"},
    {"keep", KVT_OPT_BOOL, NULL, "keep DIR/bench (its tier DB DIR/bench/t2 and the reference file)"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

/* ---- helpers ---- */

/* Nearest-rank percentiles of b->lat; sorts it. */
static void finish_phase(bench_t *b, uint64_t t0, phase_t *ph)
{
    kvt_bench_phase_finish(ph, t0, b->lat, b->c.m);
}

/* Four results per phase: GB/s, blocks/s, p50 and p99 latency.  names
 * holds 8 strings: the phase's 4 names, then the reference's 4. */
static void add_phase(bench_t *b, const char *const names[8], const phase_t *ph,
                      const phase_t *ref)
{
    double bytes = (double)(b->c.n * b->c.m), ops = (double)b->c.m;
    kvt_bench_results_t *t = &b->res;
    kvt_bench_add(t, names[0], bytes / ph->seconds * 1e-9, "GB/s", names[4],
                  bytes / ref->seconds * 1e-9, false);
    kvt_bench_add(t, names[1], ops / ph->seconds, "blocks/s", names[5], ops / ref->seconds, false);
    kvt_bench_add(t, names[2], ph->p50_us, "us", names[6], ref->p50_us, true);
    kvt_bench_add(t, names[3], ph->p99_us, "us", names[7], ref->p99_us, true);
}

/* ---- files ---- */

static int drop_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    if (type != FTW_F)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* gone meanwhile (compaction, WAL rotation) */
    if (fdatasync(fd) != 0)
        kvt_log_warn("fdatasync failed path=%s errno=%d", path, errno);
    int e = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (e != 0)
        kvt_log_warn("fadvise dontneed failed path=%s errno=%d", path, e);
    close(fd);
    return 0;
}

/* Evict a file's or a directory tree's pages from the page cache. */
static void drop_cache(const char *path)
{
    if (nftw(path, drop_one, 16, FTW_PHYS) != 0)
        kvt_log_warn("page cache drop failed path=%s errno=%d", path, errno);
}

static kvt_status_t io_full(int fd, uint8_t *buf, size_t len, bool writing)
{
    while (len) {
        ssize_t k = writing ? write(fd, buf, len) : read(fd, buf, len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return KVT_ERR_IO;
        buf += k;
        len -= (size_t)k;
    }
    return KVT_OK;
}

/* ---- setup ---- */

static kvt_status_t bench_paths(bench_t *b, const char *dir)
{
    if (snprintf(b->root, sizeof(b->root), "%s/bench", dir) >= (int)sizeof(b->root) ||
        snprintf(b->db, sizeof(b->db), "%s/t2", b->root) >= (int)sizeof(b->db) ||
        snprintf(b->file, sizeof(b->file), "%s/ref-file.bin", b->root) >= (int)sizeof(b->file)) {
        kvt_log_error("data path too long data=%s", dir);
        return KVT_ERR_INVALID;
    }
    kvt_bench_rm_tree(b->root); /* fresh DB and file each run */
    return kvt_bench_mkdir_p(b->root);
}

static kvt_status_t check_dst(const bench_t *b, const char *what)
{
    if (memcmp(b->c.src, b->dst, b->c.n * b->c.m) == 0)
        return KVT_OK;
    kvt_log_error("bench read back wrong bytes phase=%s", what);
    return KVT_ERR_CORRUPT;
}

/* ---- phases ---- */

/* The memcpy reference: best of three passes, so the tiers are compared
 * with what the memory system can do, not with one unlucky pass. */
static void run_memcpy(bench_t *b, phase_t *best)
{
    memcpy(b->dst, b->c.src, b->c.n * b->c.m); /* warm both buffers */
    for (int pass = 0; pass < 3; pass++) {
        phase_t ph;
        memset(b->dst, 0, b->c.n * b->c.m);
        uint64_t t0 = kvt_time_ns();
        for (uint64_t i = 0; i < b->c.m; i++) {
            uint64_t t = kvt_time_ns();
            memcpy(b->dst + i * b->c.n, b->c.src + i * b->c.n, b->c.n);
            b->lat[i] = kvt_time_ns() - t;
        }
        finish_phase(b, t0, &ph);
        if (pass == 0 || ph.seconds < best->seconds)
            *best = ph;
    }
}

static kvt_status_t run_t1(bench_t *b, phase_t *put, phase_t *get)
{
    kvt_host_pool_params_t p = {.identity = b->c.id, .capacity_bytes = b->c.n * b->c.m};
    kvt_host_pool_t *pool;
    kvt_status_t st = kvt_host_pool_create(&p, &pool);
    if (st != KVT_OK) {
        kvt_log_error("host pool create failed status=\"%s\"", kvt_status_str(st));
        return st;
    }
    size_t region_len = 0;
    void *region = kvt_host_pool_region(pool, &region_len);
    if (region)
        memset(region, 0, region_len); /* pre-fault, as a pinned pool would be */
    uint64_t t0 = kvt_time_ns();
    for (uint64_t i = 0; st == KVT_OK && i < b->c.m; i++) {
        uint64_t t = kvt_time_ns();
        st = kvt_host_pool_put(pool, &b->c.hdrs[i], b->c.src + i * b->c.n);
        b->lat[i] = kvt_time_ns() - t;
    }
    if (st == KVT_OK) {
        finish_phase(b, t0, put);
        memset(b->dst, 0, b->c.n * b->c.m);
        kvt_block_header_t hdr;
        t0 = kvt_time_ns();
        for (uint64_t i = 0; st == KVT_OK && i < b->c.m; i++) {
            uint64_t t = kvt_time_ns();
            st = kvt_host_pool_get(pool, &b->c.hdrs[i].key, &hdr, b->dst + i * b->c.n, b->c.n);
            b->lat[i] = kvt_time_ns() - t;
        }
        if (st == KVT_OK)
            finish_phase(b, t0, get);
    }
    if (st != KVT_OK)
        kvt_log_error("host pool bench failed status=\"%s\"", kvt_status_str(st));
    kvt_host_pool_destroy(pool);
    return st == KVT_OK ? check_dst(b, "t1 get") : st;
}

static kvt_status_t t2_open(bench_t *b, kvt_disk_tier_t **t2_p)
{
    kvt_disk_tier_params_t p = {.path = b->db, .identity = &b->c.id, .create_if_missing = true};
    kvt_status_t st = kvt_disk_tier_open(&p, t2_p);
    if (st != KVT_OK)
        kvt_log_error("disk tier open failed path=%s status=\"%s\"", b->db, kvt_status_str(st));
    return st;
}

static kvt_status_t run_t2_put(bench_t *b, phase_t *put)
{
    kvt_disk_tier_t *t2;
    kvt_status_t st = t2_open(b, &t2);
    if (st != KVT_OK)
        return st;
    uint64_t t0 = kvt_time_ns();
    for (uint64_t i = 0; st == KVT_OK && i < b->c.m; i++) {
        uint64_t t = kvt_time_ns();
        st = kvt_disk_tier_put(t2, &b->c.hdrs[i], b->c.src + i * b->c.n);
        b->lat[i] = kvt_time_ns() - t;
    }
    if (st == KVT_OK)
        st = kvt_disk_tier_flush(t2);
    if (st == KVT_OK)
        finish_phase(b, t0, put);
    else
        kvt_log_error("disk tier put failed status=\"%s\"", kvt_status_str(st));
    kvt_disk_tier_close(t2);
    return st;
}

static kvt_status_t run_t2_get(bench_t *b, phase_t *get)
{
    kvt_disk_tier_t *t2;
    kvt_status_t st = t2_open(b, &t2);
    if (st != KVT_OK)
        return st;
    drop_cache(b->db);
    memset(b->dst, 0, b->c.n * b->c.m);
    kvt_block_header_t hdr;
    uint64_t t0 = kvt_time_ns();
    for (uint64_t i = 0; st == KVT_OK && i < b->c.m; i++) {
        uint64_t t = kvt_time_ns();
        st = kvt_disk_tier_get(t2, &b->c.hdrs[i].key, &hdr, b->dst + i * b->c.n, b->c.n);
        b->lat[i] = kvt_time_ns() - t;
    }
    if (st == KVT_OK)
        finish_phase(b, t0, get);
    else
        kvt_log_error("disk tier get failed status=\"%s\"", kvt_status_str(st));
    kvt_disk_tier_close(t2);
    return st == KVT_OK ? check_dst(b, "t2 get") : st;
}

/* The plain-file reference: N-sized writes + fsync, then cold N-sized reads. */
static kvt_status_t run_file(bench_t *b, phase_t *wr, phase_t *rd)
{
    unlink(b->file); /* new blocks each round, as the DB gets */
    int fd = open(b->file, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    kvt_status_t st = fd < 0 ? KVT_ERR_IO : KVT_OK;
    uint64_t t0 = kvt_time_ns();
    for (uint64_t i = 0; st == KVT_OK && i < b->c.m; i++) {
        uint64_t t = kvt_time_ns();
        st = io_full(fd, b->c.src + i * b->c.n, b->c.n, true);
        b->lat[i] = kvt_time_ns() - t;
    }
    if (st == KVT_OK && fsync(fd) != 0)
        st = KVT_ERR_IO;
    if (st == KVT_OK)
        finish_phase(b, t0, wr);
    if (fd >= 0)
        close(fd);
    if (st == KVT_OK) {
        drop_cache(b->file);
        memset(b->dst, 0, b->c.n * b->c.m);
        fd = open(b->file, O_RDONLY | O_CLOEXEC);
        st = fd < 0 ? KVT_ERR_IO : KVT_OK;
        t0 = kvt_time_ns();
        for (uint64_t i = 0; st == KVT_OK && i < b->c.m; i++) {
            uint64_t t = kvt_time_ns();
            st = io_full(fd, b->dst + i * b->c.n, b->c.n, false);
            b->lat[i] = kvt_time_ns() - t;
        }
        if (st == KVT_OK)
            finish_phase(b, t0, rd);
        if (fd >= 0)
            close(fd);
    }
    if (st != KVT_OK)
        kvt_log_error("reference file i/o failed path=%s errno=%d", b->file, errno);
    return st == KVT_OK ? check_dst(b, "file read") : st;
}

static kvt_status_t bench_run(bench_t *b)
{
    static const char *const t1_put[8] = {
        "t1_put_throughput", "t1_put_rate", "t1_put_p50", "t1_put_p99",
        "memcpy_throughput", "memcpy_rate", "memcpy_p50", "memcpy_p99"};
    static const char *const t1_get[8] = {
        "t1_get_throughput", "t1_get_rate", "t1_get_p50", "t1_get_p99",
        "memcpy_throughput", "memcpy_rate", "memcpy_p50", "memcpy_p99"};
    static const char *const t2_put[8] = {
        "t2_put_throughput", "t2_put_rate", "t2_put_p50", "t2_put_p99",
        "file_write_throughput", "file_write_rate", "file_write_p50", "file_write_p99"};
    static const char *const t2_get[8] = {
        "t2_get_throughput", "t2_get_rate", "t2_get_p50", "t2_get_p99",
        "file_read_throughput", "file_read_rate", "file_read_p50", "file_read_p99"};
    phase_t mc, p1, g1, p2[BENCH_MAX_ROUNDS], g2[BENCH_MAX_ROUNDS], fw[BENCH_MAX_ROUNDS],
        fr[BENCH_MAX_ROUNDS];
    run_memcpy(b, &mc);
    kvt_status_t st = run_t1(b, &p1, &g1);
    /* Interleaved, so a disk that speeds up or slows down during the run
     * affects the tier and its reference alike. */
    for (int r = 0; st == KVT_OK && r < b->rounds; r++) {
        kvt_bench_rm_tree(b->db); /* a fresh DB each round */
        st = run_file(b, &fw[r], &fr[r]);
        if (st == KVT_OK)
            st = run_t2_put(b, &p2[r]);
        if (st == KVT_OK)
            st = run_t2_get(b, &g2[r]);
    }
    if (st != KVT_OK)
        return st;
    add_phase(b, t1_put, &p1, &mc);
    add_phase(b, t1_get, &g1, &mc);
    add_phase(b, t2_put, kvt_bench_phase_median(p2, b->rounds),
              kvt_bench_phase_median(fw, b->rounds));
    add_phase(b, t2_get, kvt_bench_phase_median(g2, b->rounds),
              kvt_bench_phase_median(fr, b->rounds));
    return KVT_OK;
}

/* ---- output ---- */

static void print_table(const bench_t *b, const char *dir)
{
    const kvt_block_layout_t *l = &b->c.id.layout;
    cJSON *m = kvt_json_machine(dir);
    const cJSON *cpu = cJSON_GetObjectItem(m, "cpu"), *fs = cJSON_GetObjectItem(m, "filesystem");
    printf("kvtier bench kv: %llu blocks x %llu B (%s, %u layers, %u kv heads, head_dim %u, "
           "%u tokens/block)\n",
           (unsigned long long)b->c.m, (unsigned long long)b->c.n, kvt_dtype_name(l->dtype),
           l->n_layers, l->n_kv_heads, l->head_dim, l->block_tokens);
    printf("data %s (%s), cpu %s\n\n", dir, cJSON_IsString(fs) ? fs->valuestring : "?",
           cJSON_IsString(cpu) ? cpu->valuestring : "?");
    cJSON_Delete(m);
    kvt_bench_print_table(&b->res);
}

/* ---- command ---- */

/* Flags into b and its chain's buffers; a usage error returns KVT_ERR_USAGE. */
static kvt_status_t bench_setup(bench_t *b, const kvt_config_t *cfg)
{
    uint64_t rounds = kvt_config_u64(cfg, "rounds", 3);
    b->rounds = rounds >= 1 && rounds <= BENCH_MAX_ROUNDS ? (int)rounds : 0;
    if (!b->rounds) {
        kvt_log_error("rounds out of range rounds=%llu range=1-%d", (unsigned long long)rounds,
                      BENCH_MAX_ROUNDS);
        return KVT_ERR_USAGE;
    }
    kvt_status_t st = kvt_bench_chain_init(&b->c, kvt_config_u64(cfg, "block-bytes", 1 << 20),
                                           kvt_config_u64(cfg, "blocks", 256), 3);
    if (st != KVT_OK)
        return st == KVT_ERR_INVALID ? KVT_ERR_USAGE : st;
    b->dst = kvt_alloc_large("bench destination buffer", b->c.n * b->c.m);
    b->lat = kvt_calloc("bench latencies", b->c.m, sizeof(*b->lat));
    return (b->dst && b->lat) ? KVT_OK : KVT_ERR_NOMEM;
}

static void bench_free(bench_t *b)
{
    if (b->dst)
        kvt_free_large(b->dst, b->c.n * b->c.m);
    kvt_free(b->lat);
    kvt_bench_chain_cleanup(&b->c);
    kvt_free(b);
}

static int bench_kv(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(
        &cfg, g_opts, (int)(sizeof(g_opts) / sizeof(g_opts[0])), argc, argv,
        "usage: kvtier bench kv --data DIR [--block-bytes N] [--blocks M] [--keep] [--json]",
        "Measure T1 (host pool) and T2 (RocksDB tier) put/get throughput and\n"
        "per-op latency on a chain of M random blocks of N payload bytes, each\n"
        "figure beside a reference from the same run: memcpy for T1, plain-file\n"
        "write+fsync and cold read on the same disk for T2.  Prints a table, or\n"
        "{\"bench\",\"machine\",\"results\"} with --json.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    const char *dir = kvt_cli_require(&cfg, "data");
    if (!dir)
        return KVT_EXIT_USAGE;
    bench_t *b = kvt_calloc("bench state", 1, sizeof(*b));
    if (!b)
        return KVT_EXIT_FAIL;
    kvt_status_t st = bench_setup(b, &cfg);
    if (st == KVT_ERR_USAGE) {
        bench_free(b);
        return KVT_EXIT_USAGE;
    }
    if (st == KVT_OK)
        st = bench_paths(b, dir);
    if (st == KVT_OK)
        st = kvt_bench_chain_generate(&b->c, kvt_config_u64(&cfg, "seed", 1));
    if (st == KVT_OK)
        st = bench_run(b);
    if (st == KVT_OK)
        rc = kvt_config_bool(&cfg, "json") ? kvt_bench_print_json(&b->res, "kv", dir, NULL)
                                           : (print_table(b, dir), 0);
    if (b->root[0] && !kvt_config_bool(&cfg, "keep"))
        kvt_bench_rm_tree(b->root);
    else if (st == KVT_OK && !kvt_config_bool(&cfg, "json"))
        printf("kept %s (inspect: kvtier kv stats --data %s)\n", b->root, b->root);
    bench_free(b);
    return st == KVT_OK ? rc : KVT_EXIT_FAIL;
}

static const char g_bench_usage[] =
    "usage: kvtier bench <kv|pull|engine|efim> [flags]\n"
    "\n"
    "  kv       T1/T2 put and get throughput and latency beside memcpy and plain-file\n"
    "           references\n"
    "  pull     block pulls from a block server over UCX beside ucx_perftest (ucp_get)\n"
    "           and a Redis server on loopback holding the same blocks\n"
    "  engine   CPU engine prefill and decode beside a plain matrix product\n"
    "  efim     the EFIM paper's multi-user infilling workload against a running server:\n"
    "           no cache, FIM with cache and EFIM with cache, side by side\n"
    "\n"
    "Run 'kvtier bench <kv|pull|engine|efim> --help' for the flags.\n";

int kvt_cmd_bench(int argc, char **argv)
{
    if (argc < 2) {
        fputs(g_bench_usage, stderr);
        return KVT_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "help") || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        fputs(g_bench_usage, stdout);
        return KVT_EXIT_OK;
    }
    if (!strcmp(sub, "kv"))
        return bench_kv(argc - 1, argv + 1);
    if (!strcmp(sub, "pull"))
        return kvt_cmd_bench_pull(argc - 1, argv + 1);
    if (!strcmp(sub, "engine"))
        return kvt_cmd_bench_engine(argc - 1, argv + 1);
    if (!strcmp(sub, "efim"))
        return kvt_cmd_bench_efim(argc - 1, argv + 1);
    kvt_log_error("unknown bench subcommand subcommand=\"%s\"", sub);
    fputs(g_bench_usage, stderr);
    return KVT_EXIT_USAGE;
}
