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

#define BENCH_TOKENS 16u
#define BENCH_DTYPE KVT_DTYPE_BF16
#define BENCH_UNIT (2u * BENCH_TOKENS * 2u) /* K and V x 16 tokens x bf16 */
#define BENCH_MAX_RESULTS 32
#define BENCH_MAX_ROUNDS 9

typedef struct {
    const char *name, *unit, *ref_name;
    double value, ref_value;
    bool latency; /* ratio = ref/value (lower is better), else value/ref */
} result_t;

typedef struct {
    double seconds;
    double p50_us, p99_us;
} phase_t;

typedef struct {
    char root[PATH_MAX], db[PATH_MAX], file[PATH_MAX];
    uint64_t n, m;
    int rounds;              /* disk phases are repeated; the median round counts */
    kvt_block_identity_t id;
    uint8_t *src, *dst;      /* M*N each, kvt_alloc_large */
    kvt_block_header_t *hdrs;
    uint64_t *lat;           /* per-op ns, M entries */
    result_t res[BENCH_MAX_RESULTS];
    int n_res;
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

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int ilog2(uint64_t v)
{
    int r = 0;
    while (v >>= 1)
        r++;
    return r;
}

/* Layout with payload exactly n bytes, closest to head_dim 128, 8 kv heads. */
static kvt_status_t pick_layout(uint64_t n, kvt_block_layout_t *l_p)
{
    if (n == 0 || n % BENCH_UNIT || n > KVT_BLOCK_MAX_PAYLOAD)
        return KVT_ERR_INVALID;
    uint64_t m = n / BENCH_UNIT;
    int best = INT_MAX;
    for (uint64_t hd = 1; hd <= KVT_BLOCK_MAX_HEAD_DIM && hd <= m; hd++) {
        if (m % hd)
            continue;
        uint64_t r = m / hd;
        for (uint64_t kv = 1; kv <= KVT_BLOCK_MAX_KV_HEADS && kv <= r; kv++) {
            if (r % kv || r / kv > KVT_BLOCK_MAX_LAYERS)
                continue;
            int score = abs(ilog2(hd) - 7) + abs(ilog2(kv) - 3) + ((hd & (hd - 1)) ? 10 : 0) +
                        ((kv & (kv - 1)) ? 10 : 0);
            if (score < best) {
                best = score;
                *l_p = (kvt_block_layout_t){.n_layers = (uint32_t)(r / kv),
                                            .n_kv_heads = (uint32_t)kv,
                                            .head_dim = (uint32_t)hd,
                                            .block_tokens = BENCH_TOKENS,
                                            .dtype = BENCH_DTYPE};
            }
        }
    }
    if (best == INT_MAX || kvt_block_layout_payload_bytes(l_p) != n)
        return KVT_ERR_INVALID;
    return KVT_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentiles of b->lat; sorts it. */
static void finish_phase(bench_t *b, uint64_t t0, phase_t *ph)
{
    ph->seconds = (double)(kvt_time_ns() - t0) * 1e-9;
    qsort(b->lat, b->m, sizeof(uint64_t), cmp_u64);
    ph->p50_us = (double)b->lat[(50 * b->m + 99) / 100 - 1] * 1e-3;
    ph->p99_us = (double)b->lat[(99 * b->m + 99) / 100 - 1] * 1e-3;
}

static void add_result(bench_t *b, const char *name, double value, const char *unit,
                       const char *ref_name, double ref_value, bool latency)
{
    if (b->n_res < BENCH_MAX_RESULTS)
        b->res[b->n_res++] = (result_t){name, unit, ref_name, value, ref_value, latency};
}

/* Four results per phase: GB/s, blocks/s, p50 and p99 latency.  names
 * holds 8 strings: the phase's 4 names, then the reference's 4. */
static void add_phase(bench_t *b, const char *const names[8], const phase_t *ph,
                      const phase_t *ref)
{
    double bytes = (double)(b->n * b->m), ops = (double)b->m;
    add_result(b, names[0], bytes / ph->seconds * 1e-9, "GB/s", names[4],
               bytes / ref->seconds * 1e-9, false);
    add_result(b, names[1], ops / ph->seconds, "blocks/s", names[5], ops / ref->seconds, false);
    add_result(b, names[2], ph->p50_us, "us", names[6], ref->p50_us, true);
    add_result(b, names[3], ph->p99_us, "us", names[7], ref->p99_us, true);
}

static double ratio_of(const result_t *r)
{
    double num = r->latency ? r->ref_value : r->value, den = r->latency ? r->value : r->ref_value;
    return den > 0 ? num / den : 0.0;
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

static int rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    if (remove(path) != 0 && errno != ENOENT)
        kvt_log_warn("remove failed path=%s errno=%d", path, errno);
    return 0;
}

static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0)
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static kvt_status_t mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            break;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
        kvt_log_error("cannot create directory path=%s errno=%d", tmp, errno);
        return KVT_ERR_IO;
    }
    return KVT_OK;
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
    rm_tree(b->root); /* fresh DB and file each run */
    return mkdir_p(b->root);
}

static kvt_status_t bench_alloc(bench_t *b)
{
    uint64_t total = b->n * b->m;
    uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    if (b->m == 0 || total / b->m != b->n || total > phys / 4 || 3 * total > phys / 10 * 8) {
        char need[32];
        kvt_cli_fmt_bytes(3 * total, need, sizeof(need));
        kvt_log_error("bench too large for this machine blocks=%llu block_bytes=%llu needs=\"%s\"",
                      (unsigned long long)b->m, (unsigned long long)b->n, need);
        return KVT_ERR_TOO_LARGE;
    }
    b->src = kvt_alloc_large("bench source payloads", total);
    b->dst = kvt_alloc_large("bench destination buffer", total);
    b->hdrs = kvt_calloc("bench headers", b->m, sizeof(*b->hdrs));
    b->lat = kvt_calloc("bench latencies", b->m, sizeof(*b->lat));
    return (b->src && b->dst && b->hdrs && b->lat) ? KVT_OK : KVT_ERR_NOMEM;
}

static void bench_free(bench_t *b)
{
    if (b->src)
        kvt_free_large(b->src, b->n * b->m);
    if (b->dst)
        kvt_free_large(b->dst, b->n * b->m);
    kvt_free(b->hdrs);
    kvt_free(b->lat);
}

/* Random payloads, fingerprint and tokens; the key chain and headers. */
static kvt_status_t bench_blocks(bench_t *b, uint64_t seed)
{
    uint64_t s = seed, *words = (uint64_t *)b->src;
    for (uint64_t i = 0; i < b->n * b->m / 8; i++)
        words[i] = splitmix64(&s);
    for (int i = 0; i < KVT_FINGERPRINT_LEN; i++)
        b->id.fingerprint[i] = (uint8_t)splitmix64(&s);
    size_t n_tokens = (size_t)b->m * BENCH_TOKENS, n_keys = 0;
    uint32_t *tokens = kvt_malloc("bench tokens", n_tokens * sizeof(uint32_t));
    kvt_block_key_t *keys = kvt_malloc("bench keys", (size_t)b->m * sizeof(*keys));
    kvt_block_key_t root;
    kvt_status_t st = (tokens && keys) ? KVT_OK : KVT_ERR_NOMEM;
    for (size_t i = 0; st == KVT_OK && i < n_tokens; i++)
        tokens[i] = (uint32_t)(splitmix64(&s) % 151936);
    if (st == KVT_OK)
        st = kvt_block_key_root(b->id.fingerprint, NULL, 0, &root);
    if (st == KVT_OK)
        st = kvt_block_key_chain(&root, BENCH_TOKENS, tokens, n_tokens, keys, b->m, &n_keys);
    for (uint64_t i = 0; st == KVT_OK && i < b->m; i++) {
        st = kvt_block_header_make(&b->hdrs[i], &b->id, i ? &keys[i - 1] : &root, (uint32_t)i,
                                   tokens + i * BENCH_TOKENS, b->src + i * b->n);
        if (st == KVT_OK && (n_keys != b->m || !kvt_block_key_eq(&b->hdrs[i].key, &keys[i])))
            st = KVT_ERR_INVALID;
    }
    if (st != KVT_OK)
        kvt_log_error("bench block setup failed status=\"%s\"", kvt_status_str(st));
    kvt_free(tokens);
    kvt_free(keys);
    return st;
}

static kvt_status_t check_dst(const bench_t *b, const char *what)
{
    if (memcmp(b->src, b->dst, b->n * b->m) == 0)
        return KVT_OK;
    kvt_log_error("bench read back wrong bytes phase=%s", what);
    return KVT_ERR_CORRUPT;
}

/* ---- phases ---- */

/* The memcpy reference: best of three passes, so the tiers are compared
 * with what the memory system can do, not with one unlucky pass. */
static void run_memcpy(bench_t *b, phase_t *best)
{
    memcpy(b->dst, b->src, b->n * b->m); /* warm both buffers */
    for (int pass = 0; pass < 3; pass++) {
        phase_t ph;
        memset(b->dst, 0, b->n * b->m);
        uint64_t t0 = kvt_time_ns();
        for (uint64_t i = 0; i < b->m; i++) {
            uint64_t t = kvt_time_ns();
            memcpy(b->dst + i * b->n, b->src + i * b->n, b->n);
            b->lat[i] = kvt_time_ns() - t;
        }
        finish_phase(b, t0, &ph);
        if (pass == 0 || ph.seconds < best->seconds)
            *best = ph;
    }
}

static kvt_status_t run_t1(bench_t *b, phase_t *put, phase_t *get)
{
    kvt_host_pool_params_t p = {.identity = b->id, .capacity_bytes = b->n * b->m};
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
    for (uint64_t i = 0; st == KVT_OK && i < b->m; i++) {
        uint64_t t = kvt_time_ns();
        st = kvt_host_pool_put(pool, &b->hdrs[i], b->src + i * b->n);
        b->lat[i] = kvt_time_ns() - t;
    }
    if (st == KVT_OK) {
        finish_phase(b, t0, put);
        memset(b->dst, 0, b->n * b->m);
        kvt_block_header_t hdr;
        t0 = kvt_time_ns();
        for (uint64_t i = 0; st == KVT_OK && i < b->m; i++) {
            uint64_t t = kvt_time_ns();
            st = kvt_host_pool_get(pool, &b->hdrs[i].key, &hdr, b->dst + i * b->n, b->n);
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
    kvt_disk_tier_params_t p = {.path = b->db, .identity = &b->id, .create_if_missing = true};
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
    for (uint64_t i = 0; st == KVT_OK && i < b->m; i++) {
        uint64_t t = kvt_time_ns();
        st = kvt_disk_tier_put(t2, &b->hdrs[i], b->src + i * b->n);
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
    memset(b->dst, 0, b->n * b->m);
    kvt_block_header_t hdr;
    uint64_t t0 = kvt_time_ns();
    for (uint64_t i = 0; st == KVT_OK && i < b->m; i++) {
        uint64_t t = kvt_time_ns();
        st = kvt_disk_tier_get(t2, &b->hdrs[i].key, &hdr, b->dst + i * b->n, b->n);
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
    for (uint64_t i = 0; st == KVT_OK && i < b->m; i++) {
        uint64_t t = kvt_time_ns();
        st = io_full(fd, b->src + i * b->n, b->n, true);
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
        memset(b->dst, 0, b->n * b->m);
        fd = open(b->file, O_RDONLY | O_CLOEXEC);
        st = fd < 0 ? KVT_ERR_IO : KVT_OK;
        t0 = kvt_time_ns();
        for (uint64_t i = 0; st == KVT_OK && i < b->m; i++) {
            uint64_t t = kvt_time_ns();
            st = io_full(fd, b->dst + i * b->n, b->n, false);
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

static int cmp_phase(const void *a, const void *b)
{
    double x = ((const phase_t *)a)->seconds, y = ((const phase_t *)b)->seconds;
    return x < y ? -1 : x > y;
}

/* The round with the median time (sorts the array). */
static const phase_t *median_round(phase_t *ph, int n)
{
    qsort(ph, (size_t)n, sizeof(*ph), cmp_phase);
    return &ph[n / 2];
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
        rm_tree(b->db); /* a fresh DB each round */
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
    add_phase(b, t2_put, median_round(p2, b->rounds), median_round(fw, b->rounds));
    add_phase(b, t2_get, median_round(g2, b->rounds), median_round(fr, b->rounds));
    return KVT_OK;
}

/* ---- output ---- */

static int print_json(const bench_t *b, const char *dir)
{
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!o || !arr) {
        cJSON_Delete(o);
        cJSON_Delete(arr);
        return kvt_json_print(NULL);
    }
    cJSON_AddStringToObject(o, "bench", "kv");
    cJSON_AddItemToObject(o, "machine", kvt_json_machine(dir));
    for (int i = 0; i < b->n_res; i++) {
        const result_t *r = &b->res[i];
        cJSON *e = cJSON_CreateObject();
        if (!e)
            break;
        cJSON_AddStringToObject(e, "name", r->name);
        cJSON_AddNumberToObject(e, "value", r->value);
        cJSON_AddStringToObject(e, "unit", r->unit);
        cJSON_AddStringToObject(e, "ref_name", r->ref_name);
        cJSON_AddNumberToObject(e, "ref_value", r->ref_value);
        cJSON_AddNumberToObject(e, "ratio", ratio_of(r));
        cJSON_AddItemToArray(arr, e);
    }
    cJSON_AddItemToObject(o, "results", arr);
    return kvt_json_print(o);
}

static void print_table(const bench_t *b, const char *dir)
{
    const kvt_block_layout_t *l = &b->id.layout;
    cJSON *m = kvt_json_machine(dir);
    const cJSON *cpu = cJSON_GetObjectItem(m, "cpu"), *fs = cJSON_GetObjectItem(m, "filesystem");
    printf("kvtier bench kv: %llu blocks x %llu B (%s, %u layers, %u kv heads, head_dim %u, "
           "%u tokens/block)\n",
           (unsigned long long)b->m, (unsigned long long)b->n, kvt_dtype_name(l->dtype),
           l->n_layers, l->n_kv_heads, l->head_dim, l->block_tokens);
    printf("data %s (%s), cpu %s\n\n", dir, cJSON_IsString(fs) ? fs->valuestring : "?",
           cJSON_IsString(cpu) ? cpu->valuestring : "?");
    cJSON_Delete(m);
    printf("%-20s %12s %-9s %-22s %12s %8s\n", "name", "value", "unit", "reference", "ref value",
           "ratio");
    for (int i = 0; i < b->n_res; i++) {
        const result_t *r = &b->res[i];
        printf("%-20s %12.2f %-9s %-22s %12.2f %8.2f\n", r->name, r->value, r->unit, r->ref_name,
               r->ref_value, ratio_of(r));
    }
    printf("\nratio: higher is better (value/ref for throughput, ref/value for latency)\n");
}

/* ---- command ---- */

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
    b->n = kvt_config_u64(&cfg, "block-bytes", 1 << 20);
    b->m = kvt_config_u64(&cfg, "blocks", 256);
    uint64_t rounds = kvt_config_u64(&cfg, "rounds", 3);
    b->rounds = rounds >= 1 && rounds <= BENCH_MAX_ROUNDS ? (int)rounds : 0;
    if (!b->rounds) {
        kvt_log_error("rounds out of range rounds=%llu range=1-%d", (unsigned long long)rounds,
                      BENCH_MAX_ROUNDS);
        kvt_free(b);
        return KVT_EXIT_USAGE;
    }
    if (pick_layout(b->n, &b->id.layout) != KVT_OK || b->m == 0) {
        kvt_log_error("no block layout fits block_bytes=%llu blocks=%llu rule=\"block bytes a "
                      "multiple of 64, at most 1G, blocks >= 1\"",
                      (unsigned long long)b->n, (unsigned long long)b->m);
        kvt_free(b);
        return KVT_EXIT_USAGE;
    }
    kvt_status_t st = bench_alloc(b);
    if (st == KVT_OK)
        st = bench_paths(b, dir);
    if (st == KVT_OK)
        st = bench_blocks(b, kvt_config_u64(&cfg, "seed", 1));
    if (st == KVT_OK)
        st = bench_run(b);
    if (st == KVT_OK)
        rc = kvt_config_bool(&cfg, "json") ? print_json(b, dir) : (print_table(b, dir), 0);
    if (b->root[0] && !kvt_config_bool(&cfg, "keep"))
        rm_tree(b->root);
    else if (st == KVT_OK && !kvt_config_bool(&cfg, "json"))
        printf("kept %s (inspect: kvtier kv stats --data %s)\n", b->root, b->root);
    bench_free(b);
    kvt_free(b);
    return st == KVT_OK ? rc : KVT_EXIT_FAIL;
}

static const char g_bench_usage[] =
    "usage: kvtier bench <kv> [flags]\n"
    "\n"
    "  kv       T1/T2 put and get throughput and latency beside memcpy and plain-file\n"
    "           references\n"
    "\n"
    "Not built yet: pull, engine, efim.  Run 'kvtier bench kv --help' for its flags.\n";

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
    kvt_log_error("unknown bench subcommand subcommand=\"%s\"", sub);
    fputs(g_bench_usage, stderr);
    return KVT_EXIT_USAGE;
}
