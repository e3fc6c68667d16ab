/* The cluster end to end, as separate processes on 127.0.0.1: `kvtier
 * coord`, two `kvtier prefill` and two `kvtier decode` nodes with the tiny
 * model, driven over HTTP (net/http_client.h).
 *
 * Answers equal `kvtier generate` (plain, FIM, EFIM; greedy and seeded
 * sampling); a 5-round EFIM session on a real source file reuses
 * everything up to MID from round 2 on while FIM reuses less; SSE streams
 * carry the same text and end with [DONE]; bad input gets the right 4xx
 * with an OpenAI-style body and the server keeps serving; API keys; and
 * faults: kill -9 of a prefill node under load, of the decode node serving
 * a stream, and of the coordinator (restarted on the same ports: the nodes
 * come back and the index is rebuilt from their snapshots).
 *
 * Every child is forked from the main thread with PR_SET_PDEATHSIG, so a
 * test process that dies takes them along; teardown kills and reaps the
 * rest. */
#include "tests/support/testutil.h"

// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
// clang-format on
#include "tests/support/runbin.h"

#include "common/alloc.h"
#include "net/http_client.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#define HTTP_TIMEOUT_MS 60000
#define READY_TIMEOUT_MS 30000
#define MAX_BODY (8u << 20)

/* --- processes --- */

typedef struct {
    pid_t pid;
    char name[32];
    char log[600];
    const char *args[24];
    char argbuf[8][600];
} child_t;

enum { C_COORD, C_P0, C_P1, C_D0, C_D1, C_ACOORD, C_AP, C_AD, C_N };

static char *g_dir;
static char g_model[512];
static child_t g_ch[C_N];
static uint16_t g_http, g_ucx, g_ahttp, g_aucx;
static uint16_t g_dhttp[2]; /* d0's and d1's /metrics (as first started) */
static char g_url[64], g_aurl[64];
static int g_coord_gen; /* coordinator restarts: one log file each */

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void spawn(child_t *c)
{
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(c->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        const char *argv[26] = {tu_bin};
        for (int i = 0; c->args[i] && i < 24; i++)
            argv[i + 1] = c->args[i];
        execv(tu_bin, (char *const *)argv);
        _exit(127);
    }
    c->pid = pid;
}

/* SIGKILL and reap (no-op when not running). */
static void kill9(child_t *c)
{
    if (c->pid <= 0)
        return;
    kill(c->pid, SIGKILL);
    waitpid(c->pid, NULL, 0);
    c->pid = 0;
}

static bool alive(child_t *c)
{
    if (c->pid <= 0)
        return false;
    int st;
    if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
        c->pid = 0;
        return false;
    }
    return true;
}

static void set_args(child_t *c, const char *name, const char *const *args)
{
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->log, sizeof(c->log), "%s/%s.log", g_dir, name);
    int i = 0;
    for (; args[i]; i++)
        c->args[i] = args[i];
    c->args[i] = NULL;
}

static void start_coord(child_t *c, const char *name, uint16_t http, uint16_t ucx,
                        const char *keys)
{
    snprintf(c->argbuf[0], sizeof(c->argbuf[0]), "127.0.0.1:%u", http);
    snprintf(c->argbuf[1], sizeof(c->argbuf[1]), "127.0.0.1:%u", ucx);
    const char *a[] = {"coord", "--model", g_model, "--http", c->argbuf[0], "--listen",
                       c->argbuf[1], "--log-level", "debug", keys ? "--api-keys" : NULL, keys,
                       NULL};
    set_args(c, name, a);
    spawn(c);
}

static void start_prefill(child_t *c, const char *id, uint16_t ucx)
{
    snprintf(c->argbuf[0], sizeof(c->argbuf[0]), "127.0.0.1:%u", ucx);
    snprintf(c->argbuf[1], sizeof(c->argbuf[1]), "%s/data-%s", g_dir, id);
    const char *a[] = {"prefill", "--model", g_model, "--data", c->argbuf[1], "--coord",
                       c->argbuf[0], "--node-id", id, "--threads", "1", "--log-level", "info",
                       NULL};
    set_args(c, id, a);
    spawn(c);
}

/* http: the node's /metrics port, 0 for none. */
static void start_decode(child_t *c, const char *id, uint16_t ucx, uint16_t http)
{
    snprintf(c->argbuf[0], sizeof(c->argbuf[0]), "127.0.0.1:%u", ucx);
    snprintf(c->argbuf[1], sizeof(c->argbuf[1]), "127.0.0.1:%u", http);
    const char *a[] = {"decode", "--model", g_model, "--coord", c->argbuf[0], "--node-id", id,
                       "--threads", "1", "--log-level", "info", http ? "--http" : NULL,
                       c->argbuf[1], NULL};
    set_args(c, id, a);
    spawn(c);
}

/* --- HTTP --- */

static const char *const g_json_hdr[] = {"Content-Type: application/json", NULL};

static unsigned http_get(const char *url, const char *path, char **body_p)
{
    kvt_http_reply_t r;
    if (kvt_http_request(url, "GET", path, NULL, NULL, 0, 2000, MAX_BODY, &r) != KVT_OK)
        return 0;
    unsigned st = r.status;
    if (body_p)
        *body_p = strdup(r.body);
    kvt_http_reply_cleanup(&r);
    return st;
}

/* The value of a metric line starting with `name ` (-1: none). */
static long long metric(const char *url, const char *name)
{
    char *body = NULL;
    if (http_get(url, "/metrics", &body) != 200) {
        free(body);
        return -1;
    }
    long long v = -1;
    size_t nl = strlen(name);
    for (const char *p = body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, nl) == 0 && p[nl] == ' ')
            v = strtoll(p + nl + 1, NULL, 10);
    free(body);
    return v;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* /readyz is 200 and the coordinator counts n_prefill and n_decode live
 * nodes; fails the test after READY_TIMEOUT_MS or when a child died. */
static void wait_cluster(const char *url, child_t *coord, long long n_prefill, long long n_decode)
{
    long long until = now_ms() + READY_TIMEOUT_MS;
    for (;;) {
        assert_true(alive(coord));
        if (http_get(url, "/readyz", NULL) == 200 &&
            metric(url, "kvtier_nodes{role=\"prefill\"}") == n_prefill &&
            metric(url, "kvtier_nodes{role=\"decode\"}") == n_decode)
            return;
        if (now_ms() > until)
            fail_msg("cluster at %s not ready after %d ms (logs in %s)", url, READY_TIMEOUT_MS,
                     g_dir);
        usleep(100 * 1000);
    }
}

typedef struct {
    unsigned status;
    cJSON *json; /* the parsed body, or NULL */
    char *body;
} resp_t;

static void resp_free(resp_t *r)
{
    cJSON_Delete(r->json);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

static resp_t post_raw(const char *url, const char *method, const char *path,
                       const char *const *hdrs, const char *body)
{
    kvt_http_reply_t r;
    resp_t out = {0};
    kvt_status_t st = kvt_http_request(url, method, path, hdrs, body, body ? strlen(body) : 0,
                                       HTTP_TIMEOUT_MS, MAX_BODY, &r);
    if (st != KVT_OK)
        return out; /* status 0: transport failure */
    out.status = r.status;
    out.body = strdup(r.body);
    out.json = cJSON_Parse(r.body);
    kvt_http_reply_cleanup(&r);
    return out;
}

static resp_t complete(const char *url, cJSON *req)
{
    char *body = cJSON_PrintUnformatted(req);
    resp_t r = post_raw(url, "POST", "/v1/completions", g_json_hdr, body);
    free(body);
    return r;
}

static const char *resp_text(const resp_t *r)
{
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(r->json, "choices"), 0);
    cJSON *t = cJSON_GetObjectItem(ch, "text");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static long resp_usage(const resp_t *r, const char *key)
{
    cJSON *u = cJSON_GetObjectItem(r->json, "usage");
    cJSON *v = strcmp(key, "cached_tokens") == 0
                   ? cJSON_GetObjectItem(cJSON_GetObjectItem(u, "prompt_tokens_details"), key)
                   : cJSON_GetObjectItem(u, key);
    assert_true(cJSON_IsNumber(v));
    return (long)v->valuedouble;
}

/* An OpenAI-style error body: {"error":{"message": "...", "type", ...}}. */
static void assert_error_body(const resp_t *r, unsigned status)
{
    if (r->status != status)
        fail_msg("want %u, got %u: %s", status, r->status, r->body ? r->body : "(none)");
    cJSON *e = cJSON_GetObjectItem(r->json, "error");
    assert_true(cJSON_IsObject(e));
    cJSON *m = cJSON_GetObjectItem(e, "message");
    assert_true(cJSON_IsString(m) && m->valuestring[0]);
    assert_true(cJSON_IsString(cJSON_GetObjectItem(e, "type")));
}

/* A request object: format NULL leaves the default; temperature < 0 none. */
static cJSON *mkreq(const char *prompt, const char *suffix, const char *format, int max_tokens,
                    double temperature, long seed)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", "tiny");
    cJSON_AddStringToObject(o, "prompt", prompt);
    if (suffix)
        cJSON_AddStringToObject(o, "suffix", suffix);
    cJSON_AddNumberToObject(o, "max_tokens", max_tokens);
    if (temperature >= 0)
        cJSON_AddNumberToObject(o, "temperature", temperature);
    if (seed >= 0)
        cJSON_AddNumberToObject(o, "seed", (double)seed);
    if (format) {
        cJSON *k = cJSON_AddObjectToObject(o, "kvtier");
        cJSON_AddStringToObject(k, "format", format);
    }
    return o;
}

/* --- the reference: `kvtier generate --json` --- */

/* The text generate prints (malloc'd). anchor: efim's prefix0 or NULL. */
static char *reference(const char *prompt, const char *suffix, const char *format,
                       const char *anchor, int max_tokens, double temperature, long seed)
{
    char mt[32], temp[32], sd[32];
    snprintf(mt, sizeof(mt), "%d", max_tokens);
    snprintf(temp, sizeof(temp), "%g", temperature < 0 ? 0 : temperature);
    snprintf(sd, sizeof(sd), "%ld", seed < 0 ? 0 : seed);
    const char *a[32] = {"generate", "--model", g_model, "--prompt", prompt, "--max-tokens", mt,
                         "--temperature", temp, "--seed", sd, "--json"};
    int n = 12;
    if (suffix) {
        a[n++] = "--suffix";
        a[n++] = suffix;
    }
    if (format) {
        a[n++] = "--format";
        a[n++] = format;
    }
    if (anchor) {
        a[n++] = "--anchor";
        a[n++] = anchor;
    }
    a[n] = NULL;
    assert_int_equal(tu_run_env(NULL, a), 0);
    cJSON *j = cJSON_Parse(tu_out);
    assert_non_null(j);
    cJSON *t = cJSON_GetObjectItem(j, "text");
    assert_true(cJSON_IsString(t));
    char *s = strdup(t->valuestring);
    cJSON_Delete(j);
    return s;
}

/* --- SSE --- */

typedef struct {
    char *text;
    size_t len, cap;
    int events, text_events;
    bool done, error, after_done;
    char id[64];
    char finish[32];
    /* kill the decode node serving the stream after this many text events */
    int kill_after;
    bool killed;
    char killed_name[32];
} sse_t;

static void sse_append(sse_t *s, const char *t)
{
    size_t n = strlen(t);
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->text = realloc(s->text, s->cap);
    }
    memcpy(s->text + s->len, t, n + 1);
    s->len += n;
}

static void kill_serving_decode(sse_t *s);

static int on_event(const char *data, size_t len, void *arg)
{
    (void)len;
    sse_t *s = arg;
    s->events++;
    if (s->done) {
        s->after_done = true;
        return 0;
    }
    if (strcmp(data, "[DONE]") == 0) {
        s->done = true;
        return 0;
    }
    cJSON *j = cJSON_Parse(data);
    assert_non_null(j);
    if (cJSON_GetObjectItem(j, "error")) {
        s->error = true;
    } else {
        cJSON *id = cJSON_GetObjectItem(j, "id");
        if (cJSON_IsString(id))
            snprintf(s->id, sizeof(s->id), "%s", id->valuestring);
        cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
        cJSON *t = cJSON_GetObjectItem(ch, "text");
        assert_true(cJSON_IsString(t));
        if (t->valuestring[0]) {
            sse_append(s, t->valuestring);
            s->text_events++;
        }
        cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
        if (cJSON_IsString(f))
            snprintf(s->finish, sizeof(s->finish), "%s", f->valuestring);
    }
    cJSON_Delete(j);
    if (s->kill_after && !s->killed && s->text_events >= s->kill_after)
        kill_serving_decode(s);
    return 0;
}

static unsigned stream(const char *url, cJSON *req, sse_t *s)
{
    cJSON_AddBoolToObject(req, "stream", true);
    char *body = cJSON_PrintUnformatted(req);
    kvt_http_reply_t r;
    assert_int_equal(kvt_http_request_sse(url, "/v1/completions", g_json_hdr, body,
                                          strlen(body), HTTP_TIMEOUT_MS, on_event, s, &r),
                     KVT_OK);
    free(body);
    unsigned st = r.status;
    kvt_http_reply_cleanup(&r);
    if (!s->text)
        sse_append(s, "");
    return st;
}

/* --- fixture --- */

static char *g_src;      /* engine/sample.c */
static size_t g_src_len;

static char *read_file(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    *len_p = (size_t)n;
    return b;
}

static void start_main_cluster(void)
{
    start_coord(&g_ch[C_COORD], "coord-0", g_http, g_ucx, NULL);
    start_prefill(&g_ch[C_P0], "p0", g_ucx);
    start_prefill(&g_ch[C_P1], "p1", g_ucx);
    start_decode(&g_ch[C_D0], "d0", g_ucx, g_dhttp[0]);
    start_decode(&g_ch[C_D1], "d1", g_ucx, g_dhttp[1]);
    wait_cluster(g_url, &g_ch[C_COORD], 2, 2);
}

static int setup(void **state)
{
    (void)state;
    tu_bin = getenv("KVTIER_BIN");
    if (!tu_bin)
        return -1;
    g_dir = tu_tmpdir("cluster");
    snprintf(g_model, sizeof(g_model), "%s/tiny", g_dir);
    if (TU_RUN("model", "init", "--preset", "tiny", "--out", g_model, "--seed", "1") != 0)
        return -1;
    g_src = read_file(KVT_SOURCE_DIR "/engine/sample.c", &g_src_len);
    g_http = free_port();
    do
        g_ucx = free_port();
    while (g_ucx == g_http);
    for (int i = 0; i < 2; i++)
        do
            g_dhttp[i] = free_port();
        while (g_dhttp[i] == g_http || g_dhttp[i] == g_ucx || (i && g_dhttp[1] == g_dhttp[0]));
    snprintf(g_url, sizeof(g_url), "127.0.0.1:%u", g_http);
    start_main_cluster();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < C_N; i++)
        kill9(&g_ch[i]);
    if (getenv("KVT_KEEP_TMP") == NULL)
        tu_rmtree(g_dir);
    free(g_dir);
    free(g_src);
    return 0;
}

/* --- 1. the same answers as `kvtier generate` --- */

static void check_same(const char *prompt, const char *suffix, const char *format,
                       const char *anchor, double temperature, long seed)
{
    cJSON *req = mkreq(prompt, suffix, format, 16, temperature, seed);
    resp_t r = complete(g_url, req);
    cJSON_Delete(req);
    if (r.status != 200)
        fail_msg("status %u body %s", r.status, r.body ? r.body : "");
    char *ref = reference(prompt, suffix, format, anchor, 16, temperature, seed);
    assert_non_null(resp_text(&r));
    assert_string_equal(resp_text(&r), ref);
    assert_int_equal(resp_usage(&r, "completion_tokens"), 16);
    free(ref);
    resp_free(&r);
}

/* A decode node counter summed over d0 and d1 (their /metrics). */
static long long decode_metric(const char *name)
{
    long long sum = 0;
    for (int i = 0; i < 2; i++) {
        char url[64];
        snprintf(url, sizeof(url), "127.0.0.1:%u", g_dhttp[i]);
        long long v = metric(url, name);
        assert_true(v >= 0);
        sum += v;
    }
    return sum;
}

static void test_same_as_generate(void **state)
{
    (void)state;
    long long adopted0 = decode_metric("kvtier_decode_adopted_prompts_total");
    long long tails0 = decode_metric("kvtier_decode_pulled_tails_total");
    static const char *pre = "static int add(int a, int b)\n{\n    int c = ";
    static const char *suf = ";\n    return c;\n}\n";
    for (int k = 0; k < 2; k++) {
        double t = k ? 0.8 : 0;
        long seed = k ? 7 : -1;
        check_same("def main():\n    ", NULL, NULL, NULL, t, seed);
        check_same(pre, suf, "fim", NULL, t, seed);
        check_same(pre, suf, "efim", NULL, t, seed);
    }
    /* EFIM with inc: the anchor is the first prompt (made above), this one
     * extends it. */
    char typed[256];
    snprintf(typed, sizeof(typed), "%sa + b", pre);
    check_same(typed, suf, "efim", pre, 0, -1);
    check_same(typed, suf, "efim", pre, 0.8, 7);
    /* "cache": false: the same answer, nothing reused. */
    cJSON *req = mkreq(typed, suf, NULL, 16, 0, -1);
    cJSON_AddBoolToObject(cJSON_GetObjectItem(req, "kvtier") ? cJSON_GetObjectItem(req, "kvtier")
                                                             : cJSON_AddObjectToObject(req, "kvtier"),
                          "cache", false);
    resp_t r = complete(g_url, req);
    cJSON_Delete(req);
    assert_int_equal(r.status, 200);
    assert_int_equal(resp_usage(&r, "cached_tokens"), 0);
    char *ref = reference(typed, suf, "efim", NULL, 16, 0, -1);
    assert_string_equal(resp_text(&r), ref);
    free(ref);
    resp_free(&r);
    /* Every request with the cache on reached its decode node whole: its
     * full blocks and its partial tail pulled from the prefill node, no
     * token computed there -- and the answers above equal generate's. */
    long long adopted = decode_metric("kvtier_decode_adopted_prompts_total") - adopted0;
    long long tails = decode_metric("kvtier_decode_pulled_tails_total") - tails0;
    print_message("decode nodes adopted %lld prompts whole, %lld with a pulled tail\n", adopted,
                  tails);
    assert_int_equal(adopted, 8);
    assert_true(tails >= 6);
}

/* --- 2. a 5-round session on a real source file --- */

#define ROUNDS 5
#define CHUNK 80

typedef struct {
    long prompt, cached;
    char *text;
} round_t;

/* The prefix of round r (0-based): the cursor moves CHUNK bytes a round
 * towards the middle, where the suffix starts. */
static void session(const char *format, round_t *out)
{
    size_t mid = g_src_len / 2;
    const char *suffix = g_src + mid;
    for (int r = 0; r < ROUNDS; r++) {
        size_t plen = mid - (size_t)(ROUNDS - 1 - r) * CHUNK;
        char *prompt = strndup(g_src, plen);
        cJSON *req = mkreq(prompt, suffix, format, 8, 0, -1);
        resp_t rs = complete(g_url, req);
        cJSON_Delete(req);
        if (rs.status != 200)
            fail_msg("round %d status %u body %s", r, rs.status, rs.body ? rs.body : "");
        out[r].prompt = resp_usage(&rs, "prompt_tokens");
        out[r].cached = resp_usage(&rs, "cached_tokens");
        out[r].text = strdup(resp_text(&rs));
        resp_free(&rs);
        free(prompt);
    }
}

static void test_efim_session(void **state)
{
    (void)state;
    round_t efim[ROUNDS], fim[ROUNDS];
    session("efim", efim);
    session("fim", fim);
    size_t mid = g_src_len / 2;
    /* Round 1 (index 0) has no inc: its prompt is exactly the stable part,
     * PRE prefix0 SUF suffix MID.  Every later round starts with those
     * tokens, so its cache covers at least their full blocks. */
    long stable = efim[0].prompt, floor16 = stable / 16 * 16;
    for (int r = 0; r < ROUNDS; r++) {
        print_message("round %d: efim prompt=%ld cached=%ld | fim prompt=%ld cached=%ld\n", r + 1,
                      efim[r].prompt, efim[r].cached, fim[r].prompt, fim[r].cached);
        if (r == 0)
            continue;
        assert_true(efim[r].prompt > efim[r - 1].prompt);
        assert_true(efim[r].cached >= floor16);
        assert_true(efim[r].cached >= efim[r - 1].cached);
        /* FIM: the suffix comes after the prefix that changed, so only
         * (part of) the prefix is reused. */
        assert_true(fim[r].cached < efim[r].cached);
        assert_true(fim[r].cached < fim[r].prompt - (efim[0].prompt / 4));
    }
    /* The answers are the reference's (EFIM rounds with prefix0 = round 1). */
    char *prefix0 = strndup(g_src, mid - (ROUNDS - 1) * CHUNK);
    for (int r = 0; r < ROUNDS; r += 2) {
        char *prompt = strndup(g_src, mid - (size_t)(ROUNDS - 1 - r) * CHUNK);
        char *ref = reference(prompt, g_src + mid, "efim", prefix0, 8, 0, -1);
        assert_string_equal(efim[r].text, ref);
        free(ref);
        ref = reference(prompt, g_src + mid, "fim", NULL, 8, 0, -1);
        assert_string_equal(fim[r].text, ref);
        free(ref);
        free(prompt);
    }
    free(prefix0);
    for (int r = 0; r < ROUNDS; r++) {
        free(efim[r].text);
        free(fim[r].text);
    }
}

/* --- 3. streaming --- */

static void check_stream(const char *prompt, const char *suffix, int max_tokens)
{
    cJSON *req = mkreq(prompt, suffix, NULL, max_tokens, 0, -1);
    resp_t whole = complete(g_url, req);
    assert_int_equal(whole.status, 200);
    sse_t s = {0};
    assert_int_equal(stream(g_url, req, &s), 200);
    cJSON_Delete(req);
    assert_true(s.done);
    assert_false(s.after_done);
    assert_false(s.error);
    assert_true(s.text_events > 0);
    assert_string_equal(s.text, resp_text(&whole));
    assert_string_equal(s.finish, "length");
    free(s.text);
    resp_free(&whole);
}

/* A stop string from the middle of the answer cuts both forms there. */
static void check_stop(const char *prompt)
{
    char *ref = reference(prompt, NULL, NULL, NULL, 48, 0, -1);
    size_t n = strlen(ref);
    assert_true(n > 20);
    char stop[8];
    size_t at = n / 2;
    while (at < n && ((unsigned char)ref[at] & 0xc0) == 0x80)
        at++; /* start on a character */
    snprintf(stop, sizeof(stop), "%.3s", ref + at);
    size_t cut = (size_t)(strstr(ref, stop) - ref);
    cJSON *req = mkreq(prompt, NULL, NULL, 48, 0, -1);
    cJSON *arr = cJSON_AddArrayToObject(req, "stop");
    cJSON_AddItemToArray(arr, cJSON_CreateString(stop));
    resp_t whole = complete(g_url, req);
    assert_int_equal(whole.status, 200);
    assert_int_equal(strlen(resp_text(&whole)), cut);
    assert_memory_equal(resp_text(&whole), ref, cut);
    sse_t s = {0};
    assert_int_equal(stream(g_url, req, &s), 200);
    cJSON_Delete(req);
    assert_true(s.done);
    assert_false(s.error);
    assert_string_equal(s.text, resp_text(&whole));
    assert_string_equal(s.finish, "stop");
    free(s.text);
    free(ref);
    resp_free(&whole);
}

static void test_stream(void **state)
{
    (void)state;
    check_stream("int main(void)\n{\n", NULL, 64);
    check_stream("for (int i = 0; ", "\n}\n", 200);
    /* A short prompt that ends at once. */
    check_stream("x", NULL, 1);
    check_stop("while (running) {\n");
}

/* --- 4. bad input --- */

static void expect_status(const char *method, const char *path, const char *body,
                          unsigned status)
{
    resp_t r = post_raw(g_url, method, path, g_json_hdr, body);
    assert_error_body(&r, status);
    resp_free(&r);
}

static void assert_still_serving(const char *url, const char *const *hdrs)
{
    resp_t r = post_raw(url, "POST", "/v1/completions", hdrs,
                        "{\"model\":\"tiny\",\"prompt\":\"ok\",\"max_tokens\":4}");
    if (r.status != 200)
        fail_msg("status %u body %s", r.status, r.body ? r.body : "");
    assert_non_null(resp_text(&r));
    assert_int_equal(resp_usage(&r, "completion_tokens"), 4);
    resp_free(&r);
}

static void test_bad_input(void **state)
{
    (void)state;
    const char *P = "POST", *C = "/v1/completions";
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":", 400);
    expect_status(P, C, "not json at all", 400);
    expect_status(P, C, "[1,2]", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":\"x\",\"max_tokens\":\"x\"}", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":7}", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":\"x\",\"temperature\":\"hot\"}", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":\"x\",\"stream\":\"yes\"}", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"max_tokens\":4}", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":\"x\",\"max_tokens\":100000000}", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":\"x\",\"max_tokens\":-1}", 400);
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":\"x\",\"kvtier\":{\"format\":\"zz\"}}",
                  400);
    /* Prompt + max_tokens over tiny's max_position_embeddings (4096). */
    expect_status(P, C, "{\"model\":\"tiny\",\"prompt\":\"x\",\"max_tokens\":4096}", 400);
    /* A prompt alone over the context: ~6000 distinct words. */
    size_t cap = 100000, at = 0;
    char *big = malloc(cap);
    at += (size_t)snprintf(big, cap, "{\"model\":\"tiny\",\"max_tokens\":4,\"prompt\":\"");
    for (int i = 0; i < 6000; i++)
        at += (size_t)snprintf(big + at, cap - at, "w%d ", i);
    snprintf(big + at, cap - at, "\"}");
    resp_t r = post_raw(g_url, P, C, g_json_hdr, big);
    assert_error_body(&r, 400);
    assert_non_null(strstr(r.body, "context_length_exceeded"));
    resp_free(&r);
    free(big);
    expect_status(P, C, "{\"model\":\"gpt-4\",\"prompt\":\"x\"}", 404);
    expect_status("GET", C, NULL, 405);
    expect_status("PUT", C, "{}", 405);
    expect_status("DELETE", "/v1/models", NULL, 405);
    expect_status("GET", "/v1/nothing", NULL, 404);
    expect_status(P, "/", "{}", 404);
    assert_int_equal(http_get(g_url, "/healthz", NULL), 200);
    assert_int_equal(http_get(g_url, "/readyz", NULL), 200);
    assert_still_serving(g_url, g_json_hdr);
}

static void test_api_keys(void **state)
{
    (void)state;
    g_ahttp = free_port();
    do
        g_aucx = free_port();
    while (g_aucx == g_ahttp || g_aucx == g_http || g_aucx == g_ucx);
    snprintf(g_aurl, sizeof(g_aurl), "127.0.0.1:%u", g_ahttp);
    start_coord(&g_ch[C_ACOORD], "acoord", g_ahttp, g_aucx, "k1=alice,k2=bob");
    start_prefill(&g_ch[C_AP], "ap", g_aucx);
    start_decode(&g_ch[C_AD], "ad", g_aucx, 0);
    wait_cluster(g_aurl, &g_ch[C_ACOORD], 1, 1);
    const char *body = "{\"model\":\"tiny\",\"prompt\":\"ok\",\"max_tokens\":4}";
    const char *const none[] = {"Content-Type: application/json", NULL};
    const char *const wrong[] = {"Content-Type: application/json", "Authorization: Bearer k3",
                                 NULL};
    const char *const notbearer[] = {"Content-Type: application/json", "Authorization: k1", NULL};
    const char *const good[] = {"Content-Type: application/json", "Authorization: Bearer k1",
                                NULL};
    resp_t r = post_raw(g_aurl, "POST", "/v1/completions", none, body);
    assert_error_body(&r, 401);
    resp_free(&r);
    r = post_raw(g_aurl, "POST", "/v1/completions", wrong, body);
    assert_error_body(&r, 401);
    resp_free(&r);
    r = post_raw(g_aurl, "POST", "/v1/completions", notbearer, body);
    assert_error_body(&r, 401);
    resp_free(&r);
    assert_still_serving(g_aurl, good);
    /* The same EFIM request twice: the second reuses the tenant's blocks;
     * the other tenant's first request does not. */
    cJSON *req = mkreq("int x = compute(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q);\n"
                       "int y = ", ";\nreturn x + y + z + w + v + u + t + s;\n", NULL, 4, 0, -1);
    char *rb = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    const char *const bob[] = {"Content-Type: application/json", "Authorization: Bearer k2",
                               NULL};
    long cached[3];
    const char *const *who[3] = {good, good, bob};
    for (int i = 0; i < 3; i++) {
        r = post_raw(g_aurl, "POST", "/v1/completions", who[i], rb);
        assert_int_equal(r.status, 200);
        cached[i] = resp_usage(&r, "cached_tokens");
        resp_free(&r);
    }
    free(rb);
    assert_int_equal(cached[0], 0);
    assert_true(cached[1] > 0);
    assert_int_equal(cached[2], 0);
    for (int i = C_ACOORD; i <= C_AD; i++)
        kill9(&g_ch[i]);
}

/* --- 5. faults --- */

typedef struct {
    const char *prompt;
    resp_t r;
} job_t;

static void *job_main(void *arg)
{
    job_t *j = arg;
    cJSON *req = mkreq(j->prompt, NULL, NULL, 8, 0, -1);
    j->r = complete(g_url, req);
    cJSON_Delete(req);
    return NULL;
}

#define JOBS 4

static void test_kill_prefill(void **state)
{
    (void)state;
    size_t len;
    char *src = read_file(KVT_SOURCE_DIR "/engine/engine.c", &len);
    assert_true(len > 12000);
    job_t jobs[JOBS];
    char *refs[JOBS];
    for (int i = 0; i < JOBS; i++) {
        /* distinct long prompts (~3000 tokens): nothing cached */
        jobs[i].prompt = strndup(src + 300 * (size_t)i, 9000);
        refs[i] = reference(jobs[i].prompt, NULL, NULL, NULL, 8, 0, -1);
    }
    long long retries0 = metric(g_url, "kvtier_retries_total");
    pthread_t th[JOBS];
    for (int i = 0; i < JOBS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, job_main, &jobs[i]), 0);
    usleep(60 * 1000); /* dispatched, not done: each prefill takes ~200 ms */
    kill9(&g_ch[C_P0]);
    int ok = 0;
    for (int i = 0; i < JOBS; i++) {
        pthread_join(th[i], NULL);
        job_t *j = &jobs[i];
        if (j->r.status == 200) {
            assert_non_null(resp_text(&j->r));
            assert_string_equal(resp_text(&j->r), refs[i]);
            ok++;
        } else {
            assert_error_body(&j->r, j->r.status);
            assert_true(j->r.status >= 500);
        }
        resp_free(&j->r);
        free((char *)j->prompt);
        free(refs[i]);
    }
    long long retries1 = metric(g_url, "kvtier_retries_total");
    print_message("kill prefill: %d/%d answered, retries %lld -> %lld\n", ok, JOBS, retries0,
                  retries1);
    /* p1 is alive: the requests p0 had were retried there. */
    assert_int_equal(ok, JOBS);
    assert_true(retries1 > retries0);
    free(src);
    /* p0 comes back over its own tier and serves again. */
    start_prefill(&g_ch[C_P0], "p0", g_ucx);
    wait_cluster(g_url, &g_ch[C_COORD], 2, 2);
    assert_still_serving(g_url, g_json_hdr);
}

/* The coordinator's log names the decode slot of each request
 * ("route decode id=ID node=SLOT") and each node's slot ("node registered
 * node=NAME role=decode slot=SLOT"). */
static int decode_child_of(const char *log, const char *id)
{
    size_t len;
    char *text = read_file(log, &len);
    char pat[96];
    snprintf(pat, sizeof(pat), "route decode id=%s node=", id);
    int slot = -1;
    for (const char *p = text; (p = strstr(p, pat)); p += strlen(pat))
        slot = atoi(p + strlen(pat));
    int child = -1;
    for (const char *p = text; slot >= 0 && (p = strstr(p, "node registered node=")); p++) {
        char name[32] = "", role[16] = "";
        int s = -1;
        if (sscanf(p, "node registered node=%31s role=%15s slot=%d", name, role, &s) == 3 &&
            s == slot && strcmp(role, "decode") == 0)
            child = strcmp(name, "d0") == 0 ? C_D0 : strcmp(name, "d1") == 0 ? C_D1 : -1;
    }
    free(text);
    return child;
}

static void kill_serving_decode(sse_t *s)
{
    char log[600];
    snprintf(log, sizeof(log), "%s/coord-%d.log", g_dir, g_coord_gen);
    int c = decode_child_of(log, s->id);
    assert_true(c == C_D0 || c == C_D1);
    snprintf(s->killed_name, sizeof(s->killed_name), "%s", g_ch[c].name);
    kill9(&g_ch[c]);
    s->killed = true;
}

static void test_kill_decode_mid_stream(void **state)
{
    (void)state;
    const char *prompt = "static void run(void)\n{\n";
    const int max_tokens = 3000;
    char *ref = reference(prompt, NULL, NULL, NULL, max_tokens, 0, -1);
    long long retries0 = metric(g_url, "kvtier_retries_total");
    cJSON *req = mkreq(prompt, NULL, NULL, max_tokens, 0, -1);
    sse_t s = {.kill_after = 20};
    assert_int_equal(stream(g_url, req, &s), 200);
    cJSON_Delete(req);
    long long retries1 = metric(g_url, "kvtier_retries_total");
    print_message("killed %s mid-stream: %d text events, error=%d, retries %lld -> %lld\n",
                  s.killed_name, s.text_events, s.error, retries0, retries1);
    assert_true(s.killed);
    assert_true(s.done); /* the stream ends properly either way */
    assert_false(s.after_done);
    /* Never a wrong answer: what came is the reference's beginning ... */
    assert_true(s.len <= strlen(ref));
    assert_memory_equal(s.text, ref, s.len);
    /* ... and either all of it, or an error event says it is not. */
    if (!s.error) {
        assert_string_equal(s.text, ref);
        assert_string_equal(s.finish, "length");
        assert_true(retries1 > retries0); /* the kill did hit the stream */
    }
    free(s.text);
    free(ref);
    /* Back to two decode nodes. */
    int c = strcmp(s.killed_name, "d0") == 0 ? C_D0 : C_D1;
    start_decode(&g_ch[c], s.killed_name, g_ucx, 0);
    wait_cluster(g_url, &g_ch[C_COORD], 2, 2);
    assert_still_serving(g_url, g_json_hdr);
}

static void test_kill_coordinator(void **state)
{
    (void)state;
    static const char *pre = "/* a session from before the restart */\n"
                             "static size_t count_lines(const char *s, size_t n)\n{\n"
                             "    size_t lines = 0;\n    for (size_t i = 0; i < n; i++)\n";
    static const char *suf = "\n    return lines;\n}\n\nint main(void) { return 0; }\n";
    cJSON *req = mkreq(pre, suf, NULL, 8, 0, -1);
    resp_t a = complete(g_url, req);
    assert_int_equal(a.status, 200);
    assert_true(resp_usage(&a, "prompt_tokens") >= 32);
    kill9(&g_ch[C_COORD]);
    /* Down: nothing answers. */
    assert_int_equal(http_get(g_url, "/healthz", NULL), 0);
    g_coord_gen++;
    char name[32];
    snprintf(name, sizeof(name), "coord-%d", g_coord_gen);
    start_coord(&g_ch[C_COORD], name, g_http, g_ucx, NULL);
    wait_cluster(g_url, &g_ch[C_COORD], 2, 2);
    /* Each node's snapshot follows its registration on the same
     * connection; give the last one a moment to land. */
    usleep(300 * 1000);
    /* The new coordinator has no anchors and no index of its own: the
     * same request builds the same tokens, and finds their blocks through
     * the index rebuilt from the nodes' snapshots. */
    resp_t b = complete(g_url, req);
    cJSON_Delete(req);
    assert_int_equal(b.status, 200);
    assert_string_equal(resp_text(&b), resp_text(&a));
    long cached = resp_usage(&b, "cached_tokens");
    print_message("after the coordinator restart: cached_tokens=%ld of %ld\n", cached,
                  resp_usage(&b, "prompt_tokens"));
    assert_true(cached > 0);
    assert_true(cached >= resp_usage(&b, "prompt_tokens") / 16 * 16 - 16);
    resp_free(&a);
    resp_free(&b);
    assert_still_serving(g_url, g_json_hdr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_as_generate),
        cmocka_unit_test(test_efim_session),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_api_keys),
        cmocka_unit_test(test_kill_prefill),
        cmocka_unit_test(test_kill_decode_mid_stream),
        cmocka_unit_test(test_kill_coordinator),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
