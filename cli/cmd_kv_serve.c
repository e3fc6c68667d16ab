/* `kvtier kv serve`: a standalone block server over a node's tier, for
 * tests, benchmarks and dedicated store nodes.  It opens DIR's tier (T1 in
 * memory over DIR/t2), serves pulls on --listen until SIGINT or SIGTERM,
 * and prints one line "listening HOST:PORT" on stdout once it accepts
 * connections (with port 0 that line tells the port chosen). */
#include "cli/cli.h"

#include "common/log.h"
#include "kvstore/block_server.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const kvt_opt_t g_opts[] = {
    {"data", KVT_OPT_STR, NULL, "the node's data directory (tier in DIR/t2); required"},
    {"listen", KVT_OPT_STR, "127.0.0.1:7470", "UCX listen address HOST:PORT (port 0: any)"},
    {"host-capacity", KVT_OPT_SIZE, "1G", "host pool (T1) bytes: the memory peers read from"},
    {"disk-capacity", KVT_OPT_SIZE, "0", "disk tier (T2) bytes (0: unlimited)"},
    {"lease-ms", KVT_OPT_U64, "30000", "with --rma: how long pinned blocks wait for their reader"},
    {"rma", KVT_OPT_BOOL, NULL,
     "serve by RMA reads of the host pool to clients that take RMA replies (KVT_PULL_RMA=1 "
     "in theirs; RDMA fabrics, trusted peers only: over TCP UCX emulates RMA without bounds "
     "checks); default, and to other clients: payloads inline in replies"},
    KVT_CLI_OPT_LOG_LEVEL,
};

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int serve(const kvt_config_t *cfg, const char *data)
{
    kvt_tier_params_t tp = {
        .data_dir = data,
        .host_capacity_bytes = kvt_config_u64(cfg, "host-capacity", 1ull << 30),
        .disk_capacity_bytes = kvt_config_u64(cfg, "disk-capacity", 0),
    };
    kvt_tier_t *tier;
    kvt_status_t st = kvt_tier_open(&tp, &tier);
    if (st != KVT_OK) {
        kvt_log_error("cannot open the tier data=%s err=\"%s\"", data, kvt_status_str(st));
        return KVT_EXIT_FAIL;
    }
    const char *listen = kvt_config_str(cfg, "listen");
    uint64_t lease_ms = kvt_config_u64(cfg, "lease-ms", 30000);
    kvt_block_server_params_t sp = {.tier = tier, .listen = listen,
                                    .lease_ms = lease_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)lease_ms,
                                    .rma = kvt_config_bool(cfg, "rma")};
    kvt_block_server_t *srv;
    if ((st = kvt_block_server_start(&sp, &srv)) != KVT_OK) {
        kvt_tier_close(tier);
        return KVT_EXIT_FAIL;
    }
    char host[256];
    const char *colon = strrchr(listen, ':');
    size_t hl = colon ? (size_t)(colon - listen) : strlen(listen);
    snprintf(host, sizeof(host), "%.*s", (int)(hl < sizeof(host) ? hl : sizeof(host) - 1), listen);
    printf("listening %s:%u\n", host, kvt_block_server_port(srv));
    fflush(stdout);
    /* The signals are blocked outside sigsuspend, so one that arrives
     * between the check and the wait is not lost. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    while (!g_stop)
        sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
    kvt_block_server_stop(srv);
    kvt_tier_close(tier);
    return KVT_EXIT_OK;
}

int kvt_cmd_kv_serve(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, g_opts, (int)(sizeof(g_opts) / sizeof(g_opts[0])), argc, argv,
                           "usage: kvtier kv serve --data DIR [--listen HOST:PORT]",
                           "Serve the blocks of DIR's tier to peers over UCX (block pulls with\n"
                           "leases) until SIGINT or SIGTERM.  Prints \"listening HOST:PORT\".");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    const char *data = kvt_cli_require(&cfg, "data");
    if (!data)
        return KVT_EXIT_USAGE;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return serve(&cfg, data);
}
