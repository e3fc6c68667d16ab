/* `kvtier coord`, `kvtier prefill`, `kvtier decode` and `kvtier serve`
 * (DESIGN.md sections 4 and 5): the daemons.  Each runs until SIGINT or
 * SIGTERM, then stops cleanly (the tier flushed and closed).
 *
 * serve is the embedded default: a coordinator, one prefill node and one
 * decode node in one process over one data directory, talking UCX over
 * loopback exactly as separate processes do.  Without --model it makes
 * (once) a random-weight `small` model under DATA/model. */
#include "cli/cli.h"
#include "cli/node_http.h"

#include "common/log.h"
#include "coord/coord.h"
#include "decode/decode.h"
#include "engine/model_init.h"
#include "prefill/prefill.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENGINE_OPTS                                                                          \
    {"device", KVT_OPT_STR, "cpu", "cpu|cuda:N"},                                            \
    {"threads", KVT_OPT_U64, "0", "engine worker threads (0 = all cores)"},                  \
    {"kv-dtype", KVT_OPT_STR, "bf16", "KV cache dtype: bf16|f32"},                           \
    {"block-tokens", KVT_OPT_U64, "16", "tokens per KV block (B)"}

#define COORD_OPTS                                                                           \
    {"api-keys", KVT_OPT_STR, NULL, "KEY=TENANT,... or @FILE (a KEY=TENANT per line); clients send Authorization: Bearer KEY"}, \
    {"model-name", KVT_OPT_STR, NULL, "the model id clients name (default: the model dir's name)"}, \
    {"rebase-tokens", KVT_OPT_U64, "512", "EFIM: new anchor when inc grows past this"},        \
    {"max-tokens-limit", KVT_OPT_U64, "4096", "largest max_tokens a request may ask"},        \
    {"temperature", KVT_OPT_F64, "0", "sampling temperature when a request names none"},      \
    {"fim-tokens", KVT_OPT_STR, NULL, "PRE,SUF,MID token strings (default: the tokenizer's)"}

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig, g_stop = 1; }

static void wait_for_signal(void)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    while (!g_stop)
        pause();
    kvt_log_info("stopping");
}

static int engine_opts(const kvt_config_t *cfg, kvt_engine_opts_t *eo)
{
    memset(eo, 0, sizeof(*eo));
    if (kvt_device_parse(kvt_config_str(cfg, "device"), &eo->device) != KVT_OK)
        return KVT_EXIT_USAGE;
    const char *dt = kvt_config_str(cfg, "kv-dtype");
    uint64_t b = kvt_config_u64(cfg, "block-tokens", 16), th = kvt_config_u64(cfg, "threads", 0);
    if ((strcmp(dt, "bf16") && strcmp(dt, "f32")) || b == 0 || b > KVT_BLOCK_MAX_TOKENS ||
        th > 1024) {
        kvt_log_error("bad engine flags kv_dtype=%s block_tokens=%llu threads=%llu", dt,
                      (unsigned long long)b, (unsigned long long)th);
        return KVT_EXIT_USAGE;
    }
    eo->kv_dtype = strcmp(dt, "f32") ? KVT_DTYPE_BF16 : KVT_DTYPE_F32;
    eo->block_tokens = (uint32_t)b;
    eo->n_threads = (uint32_t)th;
    return KVT_EXIT_CONTINUE;
}

static void coord_params(const kvt_config_t *cfg, kvt_coord_params_t *cp)
{
    memset(cp, 0, sizeof(*cp));
    cp->api_keys = kvt_config_str(cfg, "api-keys");
    cp->model_name = kvt_config_str(cfg, "model-name");
    cp->fim_tokens = kvt_config_str(cfg, "fim-tokens");
    cp->rebase_tokens = (uint32_t)kvt_config_u64(cfg, "rebase-tokens", 512);
    cp->max_tokens = (uint32_t)kvt_config_u64(cfg, "max-tokens-limit", 4096);
    cp->temperature = kvt_config_f64(cfg, "temperature", 0);
}

/* Model + tokenizer, shared by the nodes of one process. */
static kvt_status_t load_model(const char *dir, kvt_model_t **model_p, kvt_tokenizer_t **tok_p)
{
    char json[PATH_MAX], tcfg[PATH_MAX];
    if ((size_t)snprintf(json, sizeof(json), "%s/tokenizer.json", dir) >= sizeof(json) ||
        (size_t)snprintf(tcfg, sizeof(tcfg), "%s/tokenizer_config.json", dir) >= sizeof(tcfg))
        return KVT_ERR_TOO_LARGE;
    kvt_status_t st = kvt_model_load(dir, model_p);
    if (st == KVT_OK && (st = kvt_tokenizer_load(json, tcfg, tok_p)) != KVT_OK)
        kvt_model_destroy(*model_p);
    if (st != KVT_OK)
        kvt_log_error("cannot load the model dir=%s status=%s", dir, kvt_status_str(st));
    return st;
}

static void default_id(const char *role, char *out, size_t cap)
{
    char host[64] = "node";
    gethostname(host, sizeof(host) - 1);
    snprintf(out, cap, "%s-%s-%d", role, host, (int)getpid());
}

/* --- kvtier coord --- */

static const kvt_opt_t g_coord_opts[] = {
    {"model", KVT_OPT_STR, NULL, "model directory (the coordinator reads its tokenizer and config)"},
    {"http", KVT_OPT_STR, "127.0.0.1:8000", "HTTP listen address (OpenAI API)"},
    {"listen", KVT_OPT_STR, "127.0.0.1:7000", "UCX address the nodes connect to"},
    COORD_OPTS,
    KVT_CLI_OPT_LOG_LEVEL,
};

int kvt_cmd_coord(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, g_coord_opts, (int)(sizeof(g_coord_opts) / sizeof(g_coord_opts[0])),
                           argc, argv, "usage: kvtier coord --model DIR [--http H:P] [--listen H:P]",
                           "Run the coordinator: the OpenAI-compatible HTTP API, EFIM anchors,\n"
                           "the global block index and routing.  Nodes connect to --listen.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    kvt_coord_params_t cp;
    coord_params(&cfg, &cp);
    cp.model_dir = kvt_cli_require(&cfg, "model");
    cp.http = kvt_config_str(&cfg, "http");
    cp.listen = kvt_config_str(&cfg, "listen");
    if (!cp.model_dir)
        return KVT_EXIT_USAGE;
    kvt_coord_t *c;
    if (kvt_coord_start(&cp, &c) != KVT_OK)
        return KVT_EXIT_FAIL;
    fprintf(stderr, "kvtier coord: http=%s (port %u) ucx_port=%u\n", cp.http, kvt_coord_http_port(c),
            kvt_coord_ucx_port(c));
    wait_for_signal();
    kvt_coord_stop(c);
    return KVT_EXIT_OK;
}

/* --- kvtier prefill / decode --- */

static const kvt_opt_t g_prefill_opts[] = {
    {"model", KVT_OPT_STR, NULL, "model directory"},
    {"data", KVT_OPT_STR, NULL, "the node's tier directory"},
    {"listen", KVT_OPT_STR, "127.0.0.1:0", "UCX address of its block server (peers pull here)"},
    {"coord", KVT_OPT_STR, "127.0.0.1:7000", "the coordinator's UCX address"},
    {"node-id", KVT_OPT_STR, NULL, "unique node name (default: prefill-HOST-PID)"},
    {"http", KVT_OPT_STR, NULL, "HTTP address of /healthz, /readyz, /metrics (default: none)"},
    {"host-capacity", KVT_OPT_SIZE, "1G", "host pool (T1) size"},
    {"disk-capacity", KVT_OPT_SIZE, "0", "disk tier (T2) size (0 = unlimited)"},
    ENGINE_OPTS,
    KVT_CLI_OPT_LOG_LEVEL,
};

int kvt_cmd_prefill(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, g_prefill_opts,
                           (int)(sizeof(g_prefill_opts) / sizeof(g_prefill_opts[0])), argc, argv,
                           "usage: kvtier prefill --model DIR --data DIR --coord H:P [--listen H:P]",
                           "Run a prefill node: compute prompts' KV blocks, keep them in its\n"
                           "tier and serve them to decode nodes and peers.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    kvt_prefill_params_t pp = {0};
    if ((rc = engine_opts(&cfg, &pp.engine)) != KVT_EXIT_CONTINUE)
        return rc;
    const char *model_dir = kvt_cli_require(&cfg, "model");
    pp.data_dir = kvt_cli_require(&cfg, "data");
    if (!model_dir || !pp.data_dir)
        return KVT_EXIT_USAGE;
    char id[128];
    default_id("prefill", id, sizeof(id));
    pp.node_id = kvt_config_str(&cfg, "node-id") ? kvt_config_str(&cfg, "node-id") : id;
    pp.listen = kvt_config_str(&cfg, "listen");
    pp.coord = kvt_config_str(&cfg, "coord");
    pp.host_capacity_bytes = kvt_config_u64(&cfg, "host-capacity", 1ull << 30);
    pp.disk_capacity_bytes = kvt_config_u64(&cfg, "disk-capacity", 0);
    kvt_model_t *model;
    kvt_tokenizer_t *tok;
    if (load_model(model_dir, &model, &tok) != KVT_OK)
        return KVT_EXIT_FAIL;
    pp.model = model;
    pp.tok = tok;
    kvt_prefill_t *node;
    kvt_status_t st = kvt_prefill_start(&pp, &node);
    kvt_http_server_t *http = NULL;
    const char *http_addr = kvt_config_str(&cfg, "http");
    if (st == KVT_OK && http_addr && (st = kvt_node_http_start(http_addr, node, NULL, &http)) != KVT_OK)
        kvt_prefill_stop(node);
    if (st == KVT_OK) {
        fprintf(stderr, "kvtier prefill: id=%s blocks_port=%u\n", pp.node_id,
                kvt_prefill_port(node));
        wait_for_signal();
        if (http)
            kvt_http_stop(http);
        kvt_prefill_stop(node);
    }
    kvt_tokenizer_destroy(tok);
    kvt_model_destroy(model);
    return st == KVT_OK ? KVT_EXIT_OK : KVT_EXIT_FAIL;
}

static const kvt_opt_t g_decode_opts[] = {
    {"model", KVT_OPT_STR, NULL, "model directory"},
    {"coord", KVT_OPT_STR, "127.0.0.1:7000", "the coordinator's UCX address"},
    {"node-id", KVT_OPT_STR, NULL, "unique node name (default: decode-HOST-PID)"},
    {"http", KVT_OPT_STR, NULL, "HTTP address of /healthz, /readyz, /metrics (default: none)"},
    {"max-seqs", KVT_OPT_U64, "16", "sequences decoded together"},
    ENGINE_OPTS,
    KVT_CLI_OPT_LOG_LEVEL,
};

int kvt_cmd_decode(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, g_decode_opts,
                           (int)(sizeof(g_decode_opts) / sizeof(g_decode_opts[0])), argc, argv,
                           "usage: kvtier decode --model DIR --coord H:P [--max-seqs N]",
                           "Run a decode node: pull prompts' blocks from prefill nodes and\n"
                           "generate with continuous batching.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    kvt_decode_params_t dp = {0};
    if ((rc = engine_opts(&cfg, &dp.engine)) != KVT_EXIT_CONTINUE)
        return rc;
    const char *model_dir = kvt_cli_require(&cfg, "model");
    uint64_t ms = kvt_config_u64(&cfg, "max-seqs", 16);
    if (!model_dir || ms == 0 || ms > 1024) {
        if (model_dir)
            kvt_log_error("bad --max-seqs value=%llu expected=1..1024", (unsigned long long)ms);
        return KVT_EXIT_USAGE;
    }
    char id[128];
    default_id("decode", id, sizeof(id));
    dp.node_id = kvt_config_str(&cfg, "node-id") ? kvt_config_str(&cfg, "node-id") : id;
    dp.coord = kvt_config_str(&cfg, "coord");
    dp.max_seqs = (uint32_t)ms;
    kvt_model_t *model;
    kvt_tokenizer_t *tok;
    if (load_model(model_dir, &model, &tok) != KVT_OK)
        return KVT_EXIT_FAIL;
    dp.model = model;
    dp.tok = tok;
    kvt_decode_t *node;
    kvt_status_t st = kvt_decode_start(&dp, &node);
    kvt_http_server_t *http = NULL;
    const char *http_addr = kvt_config_str(&cfg, "http");
    if (st == KVT_OK && http_addr && (st = kvt_node_http_start(http_addr, NULL, node, &http)) != KVT_OK)
        kvt_decode_stop(node);
    if (st == KVT_OK) {
        fprintf(stderr, "kvtier decode: id=%s\n", dp.node_id);
        wait_for_signal();
        if (http)
            kvt_http_stop(http);
        kvt_decode_stop(node);
    }
    kvt_tokenizer_destroy(tok);
    kvt_model_destroy(model);
    return st == KVT_OK ? KVT_EXIT_OK : KVT_EXIT_FAIL;
}

/* --- kvtier serve --- */

static const kvt_opt_t g_serve_opts[] = {
    {"model", KVT_OPT_STR, NULL, "model directory (default: DATA/model, made once from --preset)"},
    {"preset", KVT_OPT_STR, "small", "preset of the default model (random weights)"},
    {"data", KVT_OPT_STR, "./data", "data directory: the tier in DATA/tier"},
    {"http", KVT_OPT_STR, "127.0.0.1:8000", "HTTP listen address (OpenAI API)"},
    {"host-capacity", KVT_OPT_SIZE, "1G", "host pool (T1) size"},
    {"max-seqs", KVT_OPT_U64, "16", "sequences decoded together"},
    COORD_OPTS,
    ENGINE_OPTS,
    KVT_CLI_OPT_LOG_LEVEL,
};

/* DATA/model: made from the preset on first run (seed 1: the same weights
 * on every machine). */
static kvt_status_t default_model(const char *data, const char *preset, char *dir, size_t cap)
{
    if ((size_t)snprintf(dir, cap, "%s/model", data) >= cap)
        return KVT_ERR_TOO_LARGE;
    char probe[PATH_MAX + 16];
    snprintf(probe, sizeof(probe), "%s/config.json", dir);
    if (access(probe, F_OK) == 0)
        return KVT_OK;
    mkdir(data, 0755);
    kvt_log_info("making the default model preset=%s dir=%s", preset, dir);
    kvt_model_init_params_t ip = {.preset = preset, .out_dir = dir, .seed = 1};
    kvt_model_init_result_t res;
    kvt_status_t st = kvt_model_init(&ip, &res);
    if (st != KVT_OK)
        kvt_log_error("cannot make the default model dir=%s status=%s", dir, kvt_status_str(st));
    return st;
}

typedef struct {
    kvt_model_t *model;
    kvt_tokenizer_t *tok;
    kvt_coord_t *coord;
    kvt_prefill_t *prefill;
    kvt_decode_t *decode;
} serve_t;

static kvt_status_t serve_start(serve_t *s, const kvt_config_t *cfg, const char *model_dir,
                                const kvt_engine_opts_t *eo)
{
    char tier[PATH_MAX], coord_addr[64];
    const char *data = kvt_config_str(cfg, "data");
    snprintf(tier, sizeof(tier), "%s/tier", data);
    mkdir(data, 0755); /* the tier makes its own directory, not its parents */
    kvt_status_t st = load_model(model_dir, &s->model, &s->tok);
    kvt_coord_params_t cp;
    coord_params(cfg, &cp);
    cp.model_dir = model_dir;
    cp.http = kvt_config_str(cfg, "http");
    cp.listen = "127.0.0.1:0";
    if (!cp.model_name && !kvt_config_str(cfg, "model"))
        cp.model_name = kvt_config_str(cfg, "preset"); /* the default model is named after it */
    if (st == KVT_OK)
        st = kvt_coord_start(&cp, &s->coord);
    if (st != KVT_OK)
        return st;
    snprintf(coord_addr, sizeof(coord_addr), "127.0.0.1:%u", kvt_coord_ucx_port(s->coord));
    kvt_prefill_params_t pp = {.model = s->model, .tok = s->tok, .engine = *eo, .data_dir = tier,
                               .host_capacity_bytes = kvt_config_u64(cfg, "host-capacity", 1ull << 30),
                               .listen = "127.0.0.1:0", .coord = coord_addr,
                               .node_id = "prefill-0"};
    st = kvt_prefill_start(&pp, &s->prefill);
    kvt_decode_params_t dp = {.model = s->model, .tok = s->tok, .engine = *eo,
                              .coord = coord_addr, .node_id = "decode-0",
                              .max_seqs = (uint32_t)kvt_config_u64(cfg, "max-seqs", 16)};
    if (st == KVT_OK)
        st = kvt_decode_start(&dp, &s->decode);
    return st;
}

static void serve_stop(serve_t *s)
{
    /* The nodes first: a coordinator that left first would have them
     * retrying their links until they stop. */
    kvt_decode_stop(s->decode);
    kvt_prefill_stop(s->prefill);
    kvt_coord_stop(s->coord);
    kvt_tokenizer_destroy(s->tok);
    kvt_model_destroy(s->model);
}

int kvt_cmd_serve(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(&cfg, g_serve_opts, (int)(sizeof(g_serve_opts) / sizeof(g_serve_opts[0])),
                           argc, argv, "usage: kvtier serve [--model DIR] [--data DIR] [--http H:P]",
                           "All roles in one process: a coordinator (OpenAI API on --http), one\n"
                           "prefill node with its tier in DATA/tier, one decode node.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    kvt_engine_opts_t eo;
    if ((rc = engine_opts(&cfg, &eo)) != KVT_EXIT_CONTINUE)
        return rc;
    uint64_t ms = kvt_config_u64(&cfg, "max-seqs", 16);
    if (ms == 0 || ms > 1024) {
        kvt_log_error("bad --max-seqs value=%llu expected=1..1024", (unsigned long long)ms);
        return KVT_EXIT_USAGE;
    }
    char dir[PATH_MAX];
    const char *model_dir = kvt_config_str(&cfg, "model");
    if (!model_dir) {
        if (default_model(kvt_config_str(&cfg, "data"), kvt_config_str(&cfg, "preset"), dir,
                          sizeof(dir)) != KVT_OK)
            return KVT_EXIT_FAIL;
        model_dir = dir;
    }
    serve_t s = {0};
    kvt_status_t st = serve_start(&s, &cfg, model_dir, &eo);
    if (st == KVT_OK) {
        fprintf(stderr, "kvtier serve: http=%s (port %u) model=%s\n", kvt_config_str(&cfg, "http"),
                kvt_coord_http_port(s.coord), model_dir);
        wait_for_signal();
    }
    serve_stop(&s);
    return st == KVT_OK ? KVT_EXIT_OK : KVT_EXIT_FAIL;
}
