/* `kvtier bench pull`: block pull bandwidth and latency over UCX, each
 * figure beside references measured in the same run (STYLE.md).
 *
 *   pull     For each block size N: a fresh tier DIR/pull/<size> is filled
 *            with a seeded chain of M blocks and served by `kvtier kv serve`
 *            in a separate process on 127.0.0.1 (or, with --peer, by a peer
 *            already serving the same chain).  This process registers one
 *            M*N destination buffer with UCX and pulls all M blocks, --batch
 *            keys per kvt_block_client_pull (fetch; over a same-host lane
 *            blocks of 512 KiB and more, and of 64 KiB and more in pulls
 *            of 2 MiB, are read straight out of the server's memory (its
 *            pool mapped here), smaller ones inline, or RMA with --rma;
 *            checksum of every block), --iters timed rounds after one
 *            untimed warm-up round (it promotes the blocks from T2 into the
 *            server's T1).  Throughput is the median round; latencies are
 *            per request, over all rounds.  A last round pulls one key per
 *            request for the single-block latency.
 *   ucx_perftest  `ucx_perftest -t ucp_get -s N` between two processes on
 *            loopback, on kvtier's transport: UCX_TLS from --perftest-tls
 *            (default: this environment's UCX_TLS, else the transport the
 *            pull's replies took: sm when the block server answered over a
 *            same-host lane (net.h), tcp otherwise, which is what kvt_net's
 *            client-server endpoints get on loopback).  Over sm ucx_perftest
 *            reads one buffer of N bytes again and again, from cache while
 *            N fits there; the pull moves M distinct blocks.  So a second
 *            run gets one buffer of M*N bytes (ucx_perftest_get_<M*N>): as
 *            many distinct bytes per get as a pull round moves.  Bandwidth
 *            "overall" and the 50th-percentile latency of one get, from its
 *            "Final:" line (MB there = 2^20 B).
 *   memcpy   the same M blocks copied once from the chain's source into the
 *            destination in this process, best of three passes: what one
 *            pass over the bytes costs on this machine (a pull makes at
 *            least two: the copy into the destination and the checksum;
 *            an inline reply adds the transport's copies).
 *   redis    a redis-server on 127.0.0.1 holding the same blocks (key = the
 *            block key in hex), read with pipelined GETs of --batch keys
 *            straight into the same destination buffer (cli/resp.c), warm-up
 *            and rounds as for the pull; latency per batch.
 *
 * A reference whose program is not in PATH is reported absent (ref_value
 * 0, ratio 0) with a warning.  Every round's statuses and bytes are checked
 * against the source after its timing.  GB/s = 1e9 payload bytes/s.  Every
 * child process is stopped and reaped on every path (and gets SIGTERM if
 * this process dies: kvt_bench_child_spawn). */
#include "cli/bench_common.h"
#include "cli/cli.h"
#include "cli/json_out.h"
#include "cli/resp.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "kvstore/block_client.h"
#include "kvstore/tier.h"
#include "net/net.h"
#include "proto/msg.h"
#include "proto/msg.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PULL_MAX_SIZES 8
#define PULL_MAX_ITERS 100
#define PULL_TIMEOUT_MS 30000
#define CHILD_START_MS 60000
#define PERFTEST_MS 120000
#define STOP_GRACE_MS 5000

typedef struct {
    double gbps;               /* median round */
    double p50_us, p99_us;     /* per request (pull) or pipelined batch (redis) */
    double single_p50_us;      /* pull: one key per request */
} figs_t;

typedef struct {
    const char *dir, *peer;
    char root[PATH_MAX];       /* DIR/pull */
    uint64_t sizes[PULL_MAX_SIZES];
    int n_sizes;
    uint64_t m, batch, iters, seed;
    kvt_bench_chain_t c;       /* the current size's chain */
    uint8_t *dst;              /* M*N */
    uint64_t *lat;             /* ns per request, iters * requests-per-round */
    kvt_bench_phase_t *rounds; /* iters */
    char perftest[PATH_MAX], redis_bin[PATH_MAX];
    char tls_buf[256];         /* "UCX_TLS=..." for the ucx_perftest pair */
    const char *perftest_env;  /* tls_buf, or NULL: this environment as is */
    bool perftest_auto;        /* tls_buf follows the pull's transport */
    bool lane;                 /* the last pull's replies came over a lane */
    bool have_perftest, have_redis;
    bool rma;                  /* the server serves by RMA (kv serve --rma) */
    kvt_bench_child_t server, redis;
    kvt_resp_t *rc;
    kvt_bench_results_t res;
} pull_t;

static const kvt_opt_t g_opts[] = {
    {"data", KVT_OPT_STR, NULL,
     "scratch directory: tiers are filled in DIR/pull/<size> (removed after the run unless "
     "--keep); required unless --peer"},
    {"peer", KVT_OPT_STR, NULL,
     "pull from this block server instead (HOST:PORT); it must serve a tier filled by "
     "`bench pull --keep` with the same --block-bytes, --blocks and --seed; one size only"},
    {"sizes", KVT_OPT_STR, "64K,256K,1M,4M", "block payload sizes to measure (without --peer)"},
    {"block-bytes", KVT_OPT_SIZE, "1M", "block payload size with --peer"},
    {"blocks", KVT_OPT_U64, "64", "blocks M in the chain (each size holds M blocks)"},
    {"batch", KVT_OPT_U64, "16", "keys per pull request (and per pipelined Redis batch)"},
    {"iters", KVT_OPT_U64, "5", "timed rounds over all M blocks (1-100); the median counts"},
    {"seed", KVT_OPT_U64, "1", "seed for payloads, tokens and fingerprint"},
    {"perftest-tls", KVT_OPT_STR, NULL,
     "UCX_TLS for the ucx_perftest pair, so it uses kvtier's transport: by default this "
     "environment's UCX_TLS, else what the pull's replies took: sm over a same-host lane, "
     "tcp otherwise (KVT_NET_LANES=0, or a --peer on another host); 'inherit': this "
     "environment as is"},
    {"keep", KVT_OPT_BOOL, NULL, "keep DIR/pull/<size> (serve it later for --peer runs)"},
    {"rma", KVT_OPT_BOOL, NULL,
     "start the block server with --rma (RMA reads under leases) instead of inline replies"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

static uint64_t n_requests(const pull_t *p, uint64_t per)
{
    return (p->m + per - 1) / per;
}

/* "64k", "1m": the size in result names and directory names. */
static void size_label(uint64_t n, char *out, size_t cap)
{
    if (n % (1ull << 30) == 0)
        snprintf(out, cap, "%llug", (unsigned long long)(n >> 30));
    else if (n % (1ull << 20) == 0)
        snprintf(out, cap, "%llum", (unsigned long long)(n >> 20));
    else if (n % 1024 == 0)
        snprintf(out, cap, "%lluk", (unsigned long long)(n >> 10));
    else
        snprintf(out, cap, "%llu", (unsigned long long)n);
}

static double gbps_of(const pull_t *p, double seconds)
{
    return seconds > 0 ? (double)(p->c.n * p->m) / seconds * 1e-9 : 0.0;
}

/* The destination equals the source (after a round's timing). */
static kvt_status_t check_dst(const pull_t *p, const char *what)
{
    if (memcmp(p->c.src, p->dst, p->c.n * p->m) == 0)
        return KVT_OK;
    kvt_log_error("bench read back wrong bytes phase=%s block_bytes=%llu", what,
                  (unsigned long long)p->c.n);
    return KVT_ERR_CORRUPT;
}

/* ---- the block server ---- */

static kvt_status_t fill_tier(const pull_t *p, const char *path)
{
    kvt_bench_rm_tree(path);
    kvt_status_t st = kvt_bench_mkdir_p(path);
    if (st != KVT_OK)
        return st;
    kvt_tier_params_t tp = {.data_dir = path, .identity = &p->c.id,
                            .host_capacity_bytes = (p->m + 16) * p->c.n};
    kvt_tier_t *tier;
    if ((st = kvt_tier_open(&tp, &tier)) != KVT_OK) {
        kvt_log_error("cannot open the tier data=%s err=\"%s\"", path, kvt_status_str(st));
        return st;
    }
    for (uint64_t i = 0; st == KVT_OK && i < p->m; i++)
        st = kvt_tier_put(tier, &p->c.hdrs[i], p->c.src + i * p->c.n);
    if (st == KVT_OK)
        st = kvt_tier_flush(tier);
    if (st != KVT_OK)
        kvt_log_error("filling the tier failed data=%s err=\"%s\"", path, kvt_status_str(st));
    kvt_tier_close(tier);
    return st;
}

/* `kvtier kv serve` on path in a child; *peer gets its "127.0.0.1:PORT". */
static kvt_status_t server_start(pull_t *p, const char *path, char *peer, size_t cap)
{
    char exe[PATH_MAX], capacity[32], line[256];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (k <= 0) {
        kvt_log_error("cannot find this program path=/proc/self/exe");
        return KVT_ERR_IO;
    }
    exe[k] = '\0';
    snprintf(capacity, sizeof(capacity), "%llu", (unsigned long long)((p->m + 16) * p->c.n));
    char *argv[] = {exe, "kv", "serve", "--data", (char *)path, "--listen", "127.0.0.1:0",
                    "--host-capacity", capacity, "--log-level", "warn",
                    p->rma ? "--rma" : NULL, NULL};
    kvt_status_t st = kvt_bench_child_spawn(&p->server, argv, NULL, true, false);
    if (st == KVT_OK) /* other lines: UCX logs on stdout (UCX_LOG_LEVEL) */
        st = kvt_bench_child_find(&p->server, "listening ", line, sizeof(line), CHILD_START_MS);
    unsigned port = 0;
    if (st == KVT_OK && (sscanf(line, "listening 127.0.0.1:%u", &port) != 1 || !port ||
                         port > 65535))
        st = KVT_ERR_CORRUPT;
    if (st != KVT_OK) {
        kvt_log_error("block server did not start data=%s err=\"%s\"", path, kvt_status_str(st));
        kvt_bench_child_stop(&p->server, STOP_GRACE_MS);
        return st;
    }
    snprintf(peer, cap, "127.0.0.1:%u", port);
    return KVT_OK;
}

/* ---- the pull ---- */

/* One round of requests of `per` keys; latencies go to lat[0..). */
static kvt_status_t pull_round(pull_t *p, kvt_block_client_t *cl, kvt_pull_t *items,
                               uint64_t per, uint64_t *lat, double *seconds_p)
{
    memset(p->dst, 0, p->c.n * p->m);
    kvt_status_t st = KVT_OK;
    uint64_t t0 = kvt_time_ns();
    for (uint64_t j = 0, r = 0; st == KVT_OK && j < p->m; j += per, r++) {
        size_t k = (size_t)(p->m - j < per ? p->m - j : per);
        uint64_t t = kvt_time_ns();
        st = kvt_block_client_pull(cl, items + j, k, &p->c.id, PULL_TIMEOUT_MS);
        lat[r] = kvt_time_ns() - t;
    }
    *seconds_p = (double)(kvt_time_ns() - t0) * 1e-9;
    for (uint64_t i = 0; st == KVT_OK && i < p->m; i++)
        if (items[i].status != KVT_OK) {
            char hex[2 * KVT_KEY_LEN + 1];
            kvt_block_key_hex(&items[i].key, hex);
            kvt_log_error("pull of a block failed index=%llu key=%s err=\"%s\"",
                          (unsigned long long)i, hex, kvt_status_str(items[i].status));
            st = items[i].status;
        }
    if (st != KVT_OK)
        kvt_log_error("pull failed err=\"%s\"", kvt_status_str(st));
    return st == KVT_OK ? check_dst(p, "pull") : st;
}

/* Warm-up, the timed rounds, then one round of single-key requests. */
static kvt_status_t pull_measure(pull_t *p, kvt_block_client_t *cl, figs_t *f)
{
    kvt_pull_t *items = kvt_calloc("pull items", p->m, sizeof(*items));
    if (!items)
        return KVT_ERR_NOMEM;
    for (uint64_t i = 0; i < p->m; i++)
        items[i] = (kvt_pull_t){.key = p->c.hdrs[i].key, .dst = p->dst + i * p->c.n,
                                .cap = p->c.n};
    uint64_t per_round = n_requests(p, p->batch);
    double s;
    kvt_status_t st = pull_round(p, cl, items, p->batch, p->lat, &s);
    for (uint64_t r = 0; st == KVT_OK && r < p->iters; r++)
        st = pull_round(p, cl, items, p->batch, p->lat + r * per_round, &p->rounds[r].seconds);
    if (st == KVT_OK) {
        kvt_bench_percentiles(p->lat, per_round * p->iters, &f->p50_us, &f->p99_us);
        f->gbps = gbps_of(p, kvt_bench_phase_median(p->rounds, (int)p->iters)->seconds);
        st = pull_round(p, cl, items, 1, p->lat, &s);
    }
    double unused;
    if (st == KVT_OK)
        kvt_bench_percentiles(p->lat, p->m, &f->single_p50_us, &unused);
    kvt_free(items);
    return st;
}

static kvt_status_t pull_run(pull_t *p, const char *peer, figs_t *f)
{
    /* Inline replies carry payloads: accept the largest the protocol allows. */
    kvt_net_worker_params_t wp = {.max_msg_bytes = KVT_PROTO_MAX_MSG};
    kvt_net_worker_t *w;
    kvt_status_t st = kvt_net_worker_create(&wp, &w);
    if (st != KVT_OK) {
        kvt_log_error("net worker create failed err=\"%s\"", kvt_status_str(st));
        return st;
    }
    kvt_net_mem_t *mem = NULL;
    kvt_block_client_t *cl = NULL;
    st = kvt_net_mem_register(w, p->dst, p->c.n * p->m, &mem);
    if (st != KVT_OK)
        kvt_log_error("destination register failed err=\"%s\"", kvt_status_str(st));
    if (st == KVT_OK)
        st = kvt_block_client_connect(w, peer, PULL_TIMEOUT_MS, &cl);
    if (st == KVT_OK) {
        kvt_block_client_accept_rma(cl, p->rma); /* our own server: trusted */
        p->lane = kvt_block_client_lane(cl);
        if (p->perftest_auto)
            snprintf(p->tls_buf, sizeof(p->tls_buf), "UCX_TLS=%s", p->lane ? "sm,self" : "tcp");
        st = pull_measure(p, cl, f);
    }
    kvt_block_client_close(cl);
    if (mem)
        kvt_net_mem_deregister(mem);
    kvt_net_worker_destroy(w);
    return st;
}

/* ---- ucx_perftest ---- */

/* Run the client and parse its "Final:" line. */
static kvt_status_t perftest_client(pull_t *p, uint16_t port, uint64_t size, uint64_t iters,
                                    figs_t *f)
{
    char port_s[8], size_s[24], iters_s[24], warm_s[24], line[1024];
    snprintf(port_s, sizeof(port_s), "%u", port);
    snprintf(size_s, sizeof(size_s), "%llu", (unsigned long long)size);
    snprintf(iters_s, sizeof(iters_s), "%llu", (unsigned long long)iters);
    snprintf(warm_s, sizeof(warm_s), "%llu", (unsigned long long)(iters / 10));
    char *argv[] = {p->perftest, "127.0.0.1", "-p", port_s, "-t", "ucp_get", "-s", size_s,
                    "-n", iters_s, "-w", warm_s, NULL};
    kvt_bench_child_t cl;
    kvt_status_t st = kvt_bench_child_spawn(&cl, argv, p->perftest_env, true, false);
    double v[6];
    if (st == KVT_OK)
        st = kvt_bench_child_find(&cl, "Final:", line, sizeof(line), PERFTEST_MS);
    bool found = st == KVT_OK && sscanf(line, "Final: %lf %lf %lf %lf %lf %lf", &v[0], &v[1],
                                        &v[2], &v[3], &v[4], &v[5]) == 6;
    int code = -1;
    if (found && kvt_bench_child_wait(&cl, STOP_GRACE_MS, &code) == KVT_OK && code != 0)
        kvt_log_warn("ucx_perftest exited with an error after its final line code=%d", code);
    kvt_bench_child_stop(&cl, STOP_GRACE_MS);
    if (!found) {
        kvt_log_error("ucx_perftest gave no final line size=%s err=\"%s\"", size_s,
                      kvt_status_str(st));
        return st == KVT_OK ? KVT_ERR_CORRUPT : st;
    }
    f->single_p50_us = v[1];
    f->gbps = v[5] * 1048576.0 * 1e-9; /* MB/s there is 2^20 B/s */
    return KVT_OK;
}

/* One ucx_perftest server and client: gets of size bytes. */
static kvt_status_t perftest_pair(pull_t *p, uint64_t size, uint64_t iters, figs_t *f)
{
    uint16_t port = kvt_bench_free_port();
    char port_s[8];
    snprintf(port_s, sizeof(port_s), "%u", port);
    char *argv[] = {p->perftest, "-p", port_s, NULL};
    kvt_bench_child_t srv;
    kvt_status_t st = port ? kvt_bench_child_spawn(&srv, argv, p->perftest_env, false, true) : KVT_ERR_IO;
    if (st != KVT_OK)
        return st;
    st = kvt_bench_wait_listen(port, CHILD_START_MS);
    if (st != KVT_OK)
        kvt_log_error("ucx_perftest server did not listen port=%u", port);
    if (st == KVT_OK)
        st = perftest_client(p, port, size, iters, f);
    kvt_bench_child_stop(&srv, STOP_GRACE_MS);
    return st;
}

/* Gets of one block (N bytes, read again and again: from cache while N
 * fits there), then gets of one buffer as large as the pull's M blocks
 * together (ws: every get reads M*N distinct bytes, as a pull round does,
 * which no cache holds at the larger sizes). */
static kvt_status_t perftest_run(pull_t *p, figs_t *f, figs_t *ws)
{
    uint64_t iters = p->m * p->iters < 1000 ? 1000 : p->m * p->iters;
    kvt_status_t st = perftest_pair(p, p->c.n, iters, f);
    if (st == KVT_OK)
        st = perftest_pair(p, p->c.n * p->m, p->iters * 4 < 20 ? 20 : p->iters * 4, ws);
    return st;
}

/* ---- redis ---- */

static void redis_stop(pull_t *p)
{
    if (p->rc) {
        const void *argv[] = {"SHUTDOWN", "NOSAVE"};
        const size_t lens[] = {8, 6};
        if (kvt_resp_cmd(p->rc, 2, argv, lens) == KVT_OK)
            kvt_resp_flush(p->rc);
        kvt_resp_close(p->rc);
        p->rc = NULL;
    }
    kvt_bench_child_stop(&p->redis, STOP_GRACE_MS);
}

static kvt_status_t redis_start(pull_t *p)
{
    uint16_t port = kvt_bench_free_port();
    char port_s[8];
    snprintf(port_s, sizeof(port_s), "%u", port);
    char *argv[] = {p->redis_bin, "--port", port_s, "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--protected-mode", "no", NULL};
    kvt_status_t st = port ? kvt_bench_child_spawn(&p->redis, argv, NULL, false, true) : KVT_ERR_IO;
    uint64_t deadline = kvt_time_ns() + CHILD_START_MS * 1000000ull;
    while (st == KVT_OK && kvt_resp_connect(port, PULL_TIMEOUT_MS, &p->rc) != KVT_OK) {
        int code;
        if (kvt_time_ns() > deadline || kvt_bench_child_wait(&p->redis, 20, &code) == KVT_OK)
            st = KVT_ERR_IO; /* timed out, or redis-server exited */
    }
    if (st == KVT_OK) {
        const void *argv1[] = {"PING"};
        const size_t lens[] = {4};
        st = kvt_resp_cmd(p->rc, 1, argv1, lens);
        if (st == KVT_OK)
            st = kvt_resp_read(p->rc, NULL, 0, NULL);
    }
    if (st != KVT_OK) {
        kvt_log_error("redis-server did not start port=%u", port);
        redis_stop(p);
    }
    return st;
}

/* Queue one command per block of [j, j+k): SET key value or GET key. */
static kvt_status_t redis_queue(pull_t *p, uint64_t j, uint64_t k, bool set)
{
    kvt_status_t st = KVT_OK;
    for (uint64_t i = j; st == KVT_OK && i < j + k; i++) {
        char hex[2 * KVT_KEY_LEN + 1];
        kvt_block_key_hex(&p->c.hdrs[i].key, hex);
        const void *argv[] = {set ? "SET" : "GET", hex, p->c.src + i * p->c.n};
        const size_t lens[] = {3, 2 * KVT_KEY_LEN, p->c.n};
        st = kvt_resp_cmd(p->rc, set ? 3 : 2, argv, lens);
    }
    return st;
}

/* One round in batches of --batch: SETs of the chain, or timed GETs. */
static kvt_status_t redis_round(pull_t *p, bool set, uint64_t *lat, double *seconds_p)
{
    if (!set)
        memset(p->dst, 0, p->c.n * p->m);
    kvt_status_t st = KVT_OK;
    uint64_t t0 = kvt_time_ns();
    for (uint64_t j = 0, r = 0; st == KVT_OK && j < p->m; j += p->batch, r++) {
        uint64_t k = p->m - j < p->batch ? p->m - j : p->batch, t = kvt_time_ns();
        st = redis_queue(p, j, k, set);
        for (uint64_t i = j; st == KVT_OK && i < j + k; i++) {
            size_t len = 0;
            st = kvt_resp_read(p->rc, set ? NULL : p->dst + i * p->c.n, p->c.n, &len);
            if (st == KVT_OK && !set && len != p->c.n)
                st = KVT_ERR_CORRUPT;
        }
        if (lat)
            lat[r] = kvt_time_ns() - t;
    }
    if (seconds_p)
        *seconds_p = (double)(kvt_time_ns() - t0) * 1e-9;
    if (st != KVT_OK)
        kvt_log_error("redis %s failed err=\"%s\"", set ? "set" : "get", kvt_status_str(st));
    return st != KVT_OK || set ? st : check_dst(p, "redis get");
}

static kvt_status_t redis_run(pull_t *p, figs_t *f)
{
    const void *argv[] = {"FLUSHALL"};
    const size_t lens[] = {8};
    uint64_t per_round = n_requests(p, p->batch);
    kvt_status_t st = kvt_resp_cmd(p->rc, 1, argv, lens);
    if (st == KVT_OK)
        st = kvt_resp_read(p->rc, NULL, 0, NULL);
    if (st == KVT_OK)
        st = redis_round(p, true, NULL, NULL);
    if (st == KVT_OK)
        st = redis_round(p, false, NULL, NULL); /* warm-up */
    for (uint64_t r = 0; st == KVT_OK && r < p->iters; r++)
        st = redis_round(p, false, p->lat + r * per_round, &p->rounds[r].seconds);
    if (st != KVT_OK)
        return st;
    kvt_bench_percentiles(p->lat, per_round * p->iters, &f->p50_us, &f->p99_us);
    f->gbps = gbps_of(p, kvt_bench_phase_median(p->rounds, (int)p->iters)->seconds);
    return KVT_OK;
}

/* ---- one size ---- */

/* The memcpy reference: GB/s of the best of three passes. */
static double memcpy_gbps(pull_t *p)
{
    double best = 0;
    for (int pass = 0; pass < 3; pass++) {
        memset(p->dst, 0, p->c.n * p->m);
        uint64_t t0 = kvt_time_ns();
        for (uint64_t i = 0; i < p->m; i++)
            memcpy(p->dst + i * p->c.n, p->c.src + i * p->c.n, p->c.n);
        double g = gbps_of(p, (double)(kvt_time_ns() - t0) * 1e-9);
        best = g > best ? g : best;
    }
    return best;
}

static void add_rows(pull_t *p, const figs_t *pf, const figs_t *uf, const figs_t *wf,
                     const figs_t *rf)
{
    char l[24], ws[24], name[96], ref[96];
    size_label(p->c.n, l, sizeof(l));
    size_label(p->c.n * p->m, ws, sizeof(ws));
#define ROW(n_fmt, val, unit, r_fmt, rval, lat)          \
    do {                                                 \
        snprintf(name, sizeof(name), n_fmt, l);          \
        snprintf(ref, sizeof(ref), r_fmt, l);            \
        kvt_bench_add(&p->res, name, val, unit, ref, rval, lat); \
    } while (0)
    ROW("pull_%s_throughput", pf->gbps, "GB/s", "ucx_perftest_get_%s_throughput", uf->gbps, false);
    ROW("pull_%s_single_p50", pf->single_p50_us, "us", "ucx_perftest_get_%s_p50",
        uf->single_p50_us, true);
    snprintf(name, sizeof(name), "pull_%s_vs_get_%s_throughput", l, ws);
    snprintf(ref, sizeof(ref), "ucx_perftest_get_%s_throughput", ws);
    kvt_bench_add(&p->res, name, pf->gbps, "GB/s", ref, wf->gbps, false);
    ROW("pull_%s_vs_memcpy_throughput", pf->gbps, "GB/s", "memcpy_%s_throughput", memcpy_gbps(p),
        false);
    ROW("pull_%s_vs_redis_throughput", pf->gbps, "GB/s", "redis_get_%s_throughput", rf->gbps,
        false);
    ROW("pull_%s_p50", pf->p50_us, "us", "redis_get_%s_p50", rf->p50_us, true);
    ROW("pull_%s_p99", pf->p99_us, "us", "redis_get_%s_p99", rf->p99_us, true);
#undef ROW
}

/* Fill and serve (unless --peer), pull, stop the server, then the references. */
static kvt_status_t run_size(pull_t *p, uint64_t n)
{
    figs_t pf = {0}, uf = {0}, wf = {0}, rf = {0};
    char label[24], path[PATH_MAX], peer[64];
    size_label(n, label, sizeof(label));
    kvt_status_t st = kvt_bench_chain_init(&p->c, n, p->m, 5);
    if (st == KVT_OK)
        st = kvt_bench_chain_generate(&p->c, p->seed);
    if (st == KVT_OK && !(p->dst = kvt_alloc_large("pull destination", n * p->m)))
        st = KVT_ERR_NOMEM;
    if (st == KVT_OK && !p->peer) {
        if (snprintf(path, sizeof(path), "%s/%s", p->root, label) >= (int)sizeof(path))
            st = KVT_ERR_INVALID;
        if (st == KVT_OK)
            st = fill_tier(p, path);
        if (st == KVT_OK)
            st = server_start(p, path, peer, sizeof(peer));
    } else if (st == KVT_OK) {
        snprintf(peer, sizeof(peer), "%s", p->peer);
    }
    if (st == KVT_OK)
        st = pull_run(p, peer, &pf);
    kvt_bench_child_stop(&p->server, STOP_GRACE_MS);
    if (st == KVT_OK && p->have_perftest)
        st = perftest_run(p, &uf, &wf);
    if (st == KVT_OK && p->have_redis)
        st = redis_run(p, &rf);
    if (st == KVT_OK)
        add_rows(p, &pf, &uf, &wf, &rf);
    if (p->dst)
        kvt_free_large(p->dst, n * p->m);
    p->dst = NULL;
    kvt_bench_chain_cleanup(&p->c);
    return st;
}

/* ---- command ---- */

/* --sizes (or --block-bytes with --peer) into p->sizes; false on a bad list. */
static bool parse_sizes(pull_t *p, const kvt_config_t *cfg)
{
    if (p->peer) {
        p->sizes[p->n_sizes++] = kvt_config_u64(cfg, "block-bytes", 1 << 20);
    } else {
        char list[256], *save = NULL;
        snprintf(list, sizeof(list), "%s", kvt_config_str(cfg, "sizes"));
        for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (p->n_sizes == PULL_MAX_SIZES ||
                kvt_config_parse_size(t, &p->sizes[p->n_sizes]) != KVT_OK) {
                kvt_log_error("bad size list sizes=\"%s\" max=%d", kvt_config_str(cfg, "sizes"),
                              PULL_MAX_SIZES);
                return false;
            }
            p->n_sizes++;
        }
    }
    kvt_block_layout_t l;
    for (int i = 0; i < p->n_sizes; i++)
        if (kvt_bench_layout(p->sizes[i], &l) != KVT_OK) {
            kvt_log_error("no block layout fits block_bytes=%llu rule=\"a multiple of 64, at "
                          "most 1G\"", (unsigned long long)p->sizes[i]);
            return false;
        }
    return p->n_sizes > 0;
}

/* Flags into p; false on a usage error (logged). */
static bool pull_config(pull_t *p, const kvt_config_t *cfg)
{
    p->dir = kvt_config_str(cfg, "data");
    p->peer = kvt_config_str(cfg, "peer");
    p->m = kvt_config_u64(cfg, "blocks", 64);
    p->batch = kvt_config_u64(cfg, "batch", 16);
    p->iters = kvt_config_u64(cfg, "iters", 5);
    p->seed = kvt_config_u64(cfg, "seed", 1);
    p->rma = kvt_config_bool(cfg, "rma");
    if (!p->peer && !kvt_cli_require(cfg, "data"))
        return false;
    if (p->m == 0 || p->batch == 0 || p->batch > 4096 || p->iters < 1 ||
        p->iters > PULL_MAX_ITERS) {
        kvt_log_error("flag out of range blocks=%llu batch=%llu iters=%llu rule=\"blocks >= 1, "
                      "batch 1-4096, iters 1-%d\"", (unsigned long long)p->m,
                      (unsigned long long)p->batch, (unsigned long long)p->iters,
                      PULL_MAX_ITERS);
        return false;
    }
    if (p->dir && snprintf(p->root, sizeof(p->root), "%s/pull", p->dir) >= (int)sizeof(p->root)) {
        kvt_log_error("data path too long data=%s", p->dir);
        return false;
    }
    const char *tls = kvt_config_str(cfg, "perftest-tls"), *env_tls = getenv("UCX_TLS");
    p->perftest_auto = (!tls || !*tls) && !(env_tls && *env_tls);
    if (!tls || !*tls)
        tls = env_tls && *env_tls ? env_tls : "tcp"; /* auto: set again after each pull */
    if (strcmp(tls, "inherit") != 0) {
        snprintf(p->tls_buf, sizeof(p->tls_buf), "UCX_TLS=%s", tls);
        p->perftest_env = p->tls_buf;
    }
    return parse_sizes(p, cfg);
}

/* The machine object, plus what decides UCX's transport choice. */
static cJSON *pull_machine(const pull_t *p)
{
    cJSON *m = kvt_json_machine(p->dir ? p->dir : ".");
    const char *tls = getenv("UCX_TLS");
    if (m) {
        cJSON_AddStringToObject(m, "ucx_tls", tls && *tls ? tls : "default");
        cJSON_AddStringToObject(m, "ucx_perftest_tls",
                                p->perftest_env ? p->perftest_env + 8 : "inherit");
        cJSON_AddStringToObject(m, "peer", p->peer ? p->peer : "kv serve on 127.0.0.1");
        const char *lr = getenv("KVT_NET_LOCAL_READS"), *lm = getenv("KVT_NET_LOCAL_MAP");
        bool local = p->lane && !(lr && strcmp(lr, "0") == 0);
        bool mapped = !(lm && strcmp(lm, "0") == 0);
        char mode[160];
        snprintf(mode, sizeof(mode), "%s%s",
                 !local ? ""
                 : mapped ? "local reads (pool mapped) from 512 KiB, or 64 KiB in pulls of "
                            "2 MiB, else "
                          : "local reads (process_vm_readv) from 512 KiB, else ",
                 p->rma ? "rma" : "inline");
        cJSON_AddStringToObject(m, "pull_mode", mode);
        cJSON_AddBoolToObject(m, "same_host_lane", p->lane);
    }
    return m;
}

static void print_table(const pull_t *p)
{
    cJSON *m = pull_machine(p);
    const cJSON *cpu = cJSON_GetObjectItem(m, "cpu"), *tls = cJSON_GetObjectItem(m, "ucx_tls"),
                *ptls = cJSON_GetObjectItem(m, "ucx_perftest_tls"),
                *mode = cJSON_GetObjectItem(m, "pull_mode");
    printf("kvtier bench pull: %llu blocks per size, %llu keys per request, %llu rounds (median)"
           "\npeer %s, UCX_TLS %s, same-host lane %s (ucx_perftest: %s), pulls: %s, cpu %s\n\n",
           (unsigned long long)p->m, (unsigned long long)p->batch, (unsigned long long)p->iters,
           p->peer ? p->peer : "kv serve on 127.0.0.1", cJSON_IsString(tls) ? tls->valuestring : "?",
           p->lane ? "yes" : "no", cJSON_IsString(ptls) ? ptls->valuestring : "?",
           cJSON_IsString(mode) ? mode->valuestring : "?", cJSON_IsString(cpu) ? cpu->valuestring : "?");
    cJSON_Delete(m);
    kvt_bench_print_table(&p->res);
    printf("latency: pull_*_p50/p99 per request of --batch keys (redis: per pipelined batch);\n"
           "pull_*_single_p50 per one-key request (ucx_perftest: one ucp_get)\n");
}

/* Allocations, the reference programs and Redis; then every size. */
static kvt_status_t pull_all(pull_t *p)
{
    uint64_t per_round = n_requests(p, p->batch);
    p->lat = kvt_calloc("pull latencies", per_round * p->iters + p->m, sizeof(*p->lat));
    p->rounds = kvt_calloc("pull rounds", p->iters, sizeof(*p->rounds));
    if (!p->lat || !p->rounds)
        return KVT_ERR_NOMEM;
    p->have_perftest = kvt_bench_which("ucx_perftest", p->perftest, sizeof(p->perftest));
    p->have_redis = kvt_bench_which("redis-server", p->redis_bin, sizeof(p->redis_bin));
    if (!p->have_perftest)
        kvt_log_warn("ucx_perftest not in PATH: its reference is reported absent "
                     "package=ucx-utils");
    if (!p->have_redis)
        kvt_log_warn("redis-server not in PATH: its reference is reported absent "
                     "package=redis-server");
    kvt_status_t st = p->peer ? KVT_OK : kvt_bench_mkdir_p(p->root);
    if (st == KVT_OK && p->have_redis)
        st = redis_start(p);
    for (int i = 0; st == KVT_OK && i < p->n_sizes; i++)
        st = run_size(p, p->sizes[i]);
    redis_stop(p);
    kvt_bench_child_stop(&p->server, STOP_GRACE_MS);
    return st;
}

int kvt_cmd_bench_pull(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(
        &cfg, g_opts, (int)(sizeof(g_opts) / sizeof(g_opts[0])), argc, argv,
        "usage: kvtier bench pull --data DIR [--peer HOST:PORT] [--sizes 64K,256K,1M,4M]\n"
        "                         [--blocks 64] [--batch 16] [--iters 5] [--keep] [--json]",
        "Measure block pulls over UCX (kvt_block_client_pull into one registered\n"
        "buffer) from a `kvtier kv serve` child on 127.0.0.1, per block size:\n"
        "throughput (median round) and per-request latency, each beside the same\n"
        "run's ucx_perftest (ucp_get, same size) and a loopback redis-server holding\n"
        "the same blocks (pipelined GETs of --batch keys).  A missing reference\n"
        "program is reported absent (ratio 0).  Prints a table, or\n"
        "{\"bench\",\"machine\",\"results\"} with --json.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    pull_t *p = kvt_calloc("pull bench state", 1, sizeof(*p));
    if (!p)
        return KVT_EXIT_FAIL;
    if (!pull_config(p, &cfg)) {
        kvt_free(p);
        return KVT_EXIT_USAGE;
    }
    kvt_status_t st = pull_all(p);
    bool json = kvt_config_bool(&cfg, "json"), keep = kvt_config_bool(&cfg, "keep");
    if (st == KVT_OK)
        rc = json ? kvt_bench_print_json(&p->res, "pull", p->dir ? p->dir : ".", pull_machine(p))
                  : (print_table(p), 0);
    if (!p->peer && !keep)
        kvt_bench_rm_tree(p->root);
    else if (!p->peer && st == KVT_OK && !json)
        printf("kept %s/<size>; serve one with `kvtier kv serve --data %s/<size> --listen "
               "HOST:PORT --host-capacity BYTES`\nand measure it with `kvtier bench pull --peer "
               "HOST:PORT --block-bytes N --blocks %llu --seed %llu`\n",
               p->root, p->root, (unsigned long long)p->m, (unsigned long long)p->seed);
    kvt_free(p->lat);
    kvt_free(p->rounds);
    kvt_free(p);
    return st == KVT_OK ? rc : KVT_EXIT_FAIL;
}
