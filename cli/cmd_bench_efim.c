/* `kvtier bench efim`: the EFIM paper's workload shape (Guo et al., Euro-Par
 * 2025; DESIGN.md section 1) replayed against a running coordinator over its
 * OpenAI API, in three modes measured one after another in the same run:
 *
 *   nocache  format fim, kvtier.cache false (no reuse, nothing stored)
 *   fim      format fim (PSM), cache on: only the prefix part can hit
 *   efim     format efim, cache on: everything up to MID can hit
 *
 * Workload.  U users (threads), each on its own document of real source
 * code: a file of 6-12 KiB, else several smaller files concatenated to
 * reach 6 KiB, else a larger file cut at a line end below 12 KiB.  That is
 * the paper's 2-4k tokens with the presets' code tokenizer (about 3 bytes
 * of C per token); 16 KiB would give over 5k.  Files come from --files (a glob, or a directory read recursively)
 * or, by default, the *.c files of the kvtier source tree found above the
 * binary; they are taken in path order.  suffix = the second half of the
 * document; the prefix of round r (0-based) is the document up to
 * half - step * (R - r) bytes, so it grows by --step-bytes per round (the
 * user typed) and never reaches the suffix.  Each user sends round r+1 when
 * round r's stream has ended; max_tokens tokens, temperature 0, no stop
 * strings, stream true.
 *
 * Isolation.  All requests use one tenant (no API key).  So that modes do
 * not reuse each other's blocks, and a rerun against the same server does
 * not reuse an earlier run's, every prompt starts with one comment line
 * naming a run tag (time and pid), the user and the mode:
 * "/ * run 1a2b3c4d user 3 mode fim: kvtier bench efim * /" (without the
 * spaces inside the comment marks).  What varies comes first, so that
 * different runs, users and modes differ from their first block on.  One untimed warm-up request (plain, cache
 * off) runs before the first mode.
 *
 * Figures.  Latency: from sending the request to the end of its stream
 * ([DONE]).  TTFT: to the first SSE event whose text is not empty (the
 * first event at all when none has text).  Throughput: completed requests
 * over the mode's wall time (first request sent to last stream ended).
 * Cached-token ratio: sum of usage.prompt_tokens_details.cached_tokens over
 * sum of usage.prompt_tokens, both from the stream's last chunk.  Means and
 * nearest-rank p99s are over the successful requests.  A request fails on a
 * transport error, a non-200 status, an error event, a stream without
 * [DONE] or without usage; failures are counted per mode, logged, and make
 * the exit status 1 (the figures are still printed). */
#include "cli/bench_common.h"
#include "cli/cli.h"
#include "cli/json_out.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "net/http_client.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DOC_MIN ((size_t)6 << 10)
#define DOC_MAX ((size_t)12 << 10)
#define FILE_MAX ((size_t)4 << 20)  /* larger files are not read */
#define MAX_PATHS 100000
#define MAX_DEPTH 12
#define MAX_USERS 256
#define MAX_ROUNDS 32
#define MIN_FIRST_PREFIX 256         /* bytes of the document in round 0's prefix */
#define MAX_TOKENS_LIMIT 4096
#define TAG_MAX 96

enum { MODE_NOCACHE, MODE_FIM, MODE_EFIM, N_MODES };

static const struct {
    const char *name, *format;
    bool cache;
} g_modes[N_MODES] = {
    {"nocache", "fim", false},
    {"fim", "fim", true},
    {"efim", "efim", true},
};

typedef struct {
    char *text;         /* NUL-terminated, len bytes; valid UTF-8 */
    size_t len;
    char label[PATH_MAX];
} doc_t;

typedef struct {
    bool ok;
    uint64_t lat_ns, ttft_ns;
    uint64_t prompt, cached, completion;
} sample_t;

typedef struct {
    const char *url, *files;
    char model[256];
    unsigned users, rounds, max_tokens, step;
    int timeout_ms;
    char run_tag[16];
    char source[PATH_MAX];     /* where the documents came from */
    doc_t *docs;               /* users entries */
    sample_t *samples;         /* [mode][user][round] */
    double wall_s[N_MODES];
    kvt_bench_results_t res;
} efim_t;

typedef struct {
    efim_t *b;
    unsigned user;
    int mode;
} worker_t;

static const kvt_opt_t g_opts[] = {
    {"url", KVT_OPT_STR, NULL, "the coordinator's HTTP address HOST:PORT (kvtier serve --http); required"},
    {"model", KVT_OPT_STR, NULL, "model name to request (default: the first of GET /v1/models)"},
    {"users", KVT_OPT_U64, "16", "concurrent users, one thread and one document each (1-256)"},
    {"rounds", KVT_OPT_U64, "5", "requests per user, the prefix one step longer each time (1-32)"},
    {"max-tokens", KVT_OPT_U64, "128", "output tokens per request (1-4096)"},
    {"step-bytes", KVT_OPT_U64, "64", "bytes the prefix grows per round (what the user typed)"},
    {"files", KVT_OPT_STR, NULL,
     "source files: a glob ('src/*.c') or a directory (every text file under it); default: "
     "the *.c files of the kvtier source tree above this binary"},
    {"timeout-ms", KVT_OPT_U64, "600000", "bound on each wait for the server (connect, each read)"},
    KVT_CLI_OPT_JSON,
    KVT_CLI_OPT_LOG_LEVEL,
};

/* ---- documents ---- */

typedef struct {
    char **v;
    size_t n, cap;
} paths_t;

static bool paths_add(paths_t *p, const char *path)
{
    if (p->n == MAX_PATHS)
        return true; /* enough to choose from */
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        char **v = kvt_realloc("bench efim paths", p->v, cap * sizeof(*v));
        if (!v)
            return false;
        p->v = v;
        p->cap = cap;
    }
    size_t len = strlen(path) + 1;
    if (!(p->v[p->n] = kvt_malloc("bench efim path", len)))
        return false;
    memcpy(p->v[p->n++], path, len);
    return true;
}

static void paths_cleanup(paths_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        kvt_free(p->v[i]);
    kvt_free(p->v);
}

static bool ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

/* Regular files under dir (ext: only names ending in it), skipping hidden
 * entries and, in the source tree, build directories. */
static kvt_status_t walk(paths_t *p, const char *dir, const char *ext, int depth)
{
    DIR *d = opendir(dir);
    if (!d) {
        kvt_log_warn("cannot read directory path=%s errno=%d", dir, errno);
        return KVT_OK;
    }
    kvt_status_t st = KVT_OK;
    struct dirent *e;
    while (st == KVT_OK && (e = readdir(d)) != NULL) {
        char path[PATH_MAX];
        struct stat sb;
        if (e->d_name[0] == '.' || (ext && !strncmp(e->d_name, "build", 5)))
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path) ||
            lstat(path, &sb) != 0)
            continue;
        if (S_ISDIR(sb.st_mode) && depth < MAX_DEPTH)
            st = walk(p, path, ext, depth + 1);
        else if (S_ISREG(sb.st_mode) && (!ext || ends_with(e->d_name, ext)))
            st = paths_add(p, path) ? KVT_OK : KVT_ERR_NOMEM;
    }
    closedir(d);
    return st;
}

/* The kvtier source tree: the nearest directory above the binary that holds
 * cli/cli.h. */
static bool find_source_tree(char *root, size_t cap)
{
    char exe[PATH_MAX], probe[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return false;
    exe[n] = '\0';
    for (char *slash = strrchr(exe, '/'); slash && slash != exe; slash = strrchr(exe, '/')) {
        *slash = '\0';
        snprintf(probe, sizeof(probe), "%s/cli/cli.h", exe);
        if (access(probe, R_OK) == 0 && strlen(exe) < cap) {
            memcpy(root, exe, strlen(exe) + 1);
            return true;
        }
    }
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The candidate files, sorted by path. */
static kvt_status_t list_files(efim_t *b, paths_t *p)
{
    struct stat sb;
    kvt_status_t st = KVT_OK;
    if (!b->files) {
        if (!find_source_tree(b->source, sizeof(b->source))) {
            kvt_log_error("no kvtier source tree above this binary: name files with --files");
            return KVT_ERR_USAGE;
        }
        st = walk(p, b->source, ".c", 0);
        strncat(b->source, "/**/*.c", sizeof(b->source) - strlen(b->source) - 1);
    } else if (stat(b->files, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        st = walk(p, b->files, NULL, 0);
        snprintf(b->source, sizeof(b->source), "%s", b->files);
    } else {
        glob_t g;
        int rc = glob(b->files, 0, NULL, &g);
        for (size_t i = 0; rc == 0 && st == KVT_OK && i < g.gl_pathc; i++)
            if (stat(g.gl_pathv[i], &sb) == 0 && S_ISREG(sb.st_mode))
                st = paths_add(p, g.gl_pathv[i]) ? KVT_OK : KVT_ERR_NOMEM;
        if (rc == 0)
            globfree(&g);
        snprintf(b->source, sizeof(b->source), "%s", b->files);
    }
    if (st == KVT_OK)
        qsort(p->v, p->n, sizeof(*p->v), cmp_str);
    return st;
}

/* Text we can send: no NUL, valid UTF-8 (JSON strings must be). */
static bool is_text(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2
                                          : (c >> 3) == 30 ? 3 : 9;
        if (c == 0 || k == 9 || (k == 1 && c < 0xc2) || (k && i + k >= n))
            return false;
        for (unsigned j = 1; j <= k; j++)
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
        i += k + 1;
    }
    return true;
}

/* The file's bytes (NUL-terminated) when it is text of at most FILE_MAX. */
static char *read_text(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && sb.st_size > 0 && (size_t)sb.st_size <= FILE_MAX &&
        (buf = kvt_malloc("bench efim file", (size_t)sb.st_size + 1)) != NULL) {
        size_t n = fread(buf, 1, (size_t)sb.st_size, f);
        buf[n] = '\0';
        if (n != (size_t)sb.st_size || !is_text((unsigned char *)buf, n)) {
            kvt_free(buf);
            buf = NULL;
        } else {
            *len_p = n;
        }
    }
    fclose(f);
    return buf;
}

/* Documents are chosen in three kinds: whole files, concatenations of small
 * files, truncated large files; whole files are preferred. */
typedef struct {
    doc_t *kind[3];
    unsigned n[3];
    doc_t acc;        /* small files being concatenated */
} pick_t;

static void doc_set(doc_t *d, char *text, size_t len, const char *label)
{
    d->text = text;
    d->len = len;
    snprintf(d->label, sizeof(d->label), "%s", label);
}

/* Append a small file to the concatenation; a full one becomes a document. */
static kvt_status_t pick_small(pick_t *k, unsigned want, char *text, size_t len,
                               const char *path)
{
    doc_t *a = &k->acc;
    char *nt = kvt_realloc("bench efim document", a->text, a->len + len + 1);
    if (!nt) {
        kvt_free(text);
        return KVT_ERR_NOMEM;
    }
    memcpy(nt + a->len, text, len + 1);
    kvt_free(text);
    if (!a->len)
        snprintf(a->label, sizeof(a->label), "%s", path);
    else if (!ends_with(a->label, "+"))
        strncat(a->label, " +", sizeof(a->label) - strlen(a->label) - 1);
    a->text = nt;
    a->len += len;
    if (a->len < DOC_MIN)
        return KVT_OK;
    if (k->n[1] < want)
        k->kind[1][k->n[1]++] = *a;
    else
        kvt_free(a->text);
    memset(a, 0, sizeof(*a));
    return KVT_OK;
}

static kvt_status_t pick_file(pick_t *k, unsigned want, const char *path)
{
    size_t len;
    char *text = read_text(path, &len);
    if (!text)
        return KVT_OK; /* unreadable, binary or huge: skipped */
    if (len < DOC_MIN)
        return pick_small(k, want, text, len, path);
    int kind = 0;
    if (len > DOC_MAX) {
        char *nl = text + DOC_MAX;
        while (nl > text + DOC_MIN && nl[-1] != '\n')
            nl--;
        len = (size_t)(nl - text);
        text[len] = '\0';
        kind = 2;
    }
    if (len < DOC_MIN || k->n[kind] == want) {
        kvt_free(text);
        return KVT_OK;
    }
    doc_set(&k->kind[kind][k->n[kind]++], text, len, path);
    return KVT_OK;
}

/* b->docs: users documents from the candidate files. */
static kvt_status_t choose_docs(efim_t *b, const paths_t *p)
{
    pick_t k = {0};
    unsigned want = b->users;
    kvt_status_t st = KVT_OK;
    for (int i = 0; i < 3 && st == KVT_OK; i++)
        if (!(k.kind[i] = kvt_calloc("bench efim documents", want, sizeof(doc_t))))
            st = KVT_ERR_NOMEM;
    for (size_t i = 0; st == KVT_OK && i < p->n && k.n[0] < want; i++)
        st = pick_file(&k, want, p->v[i]);
    kvt_free(k.acc.text);
    unsigned got = 0;
    for (int i = 0; i < 3 && k.kind[i]; i++)
        for (unsigned j = 0; j < k.n[i]; j++) {
            if (st == KVT_OK && got < want)
                b->docs[got++] = k.kind[i][j];
            else
                kvt_free(k.kind[i][j].text);
        }
    for (int i = 0; i < 3; i++)
        kvt_free(k.kind[i]);
    if (st == KVT_OK && got < want) {
        kvt_log_error("not enough source text for the users users=%u documents=%u files=%zu "
                      "source=%s need=\"a file of 6-16 KiB (or smaller ones adding up) per user\"",
                      want, got, p->n, b->source);
        st = KVT_ERR_USAGE;
    }
    return st;
}

static kvt_status_t load_docs(efim_t *b)
{
    paths_t p = {0};
    b->docs = kvt_calloc("bench efim documents", b->users, sizeof(doc_t));
    kvt_status_t st = b->docs ? list_files(b, &p) : KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = choose_docs(b, &p);
    paths_cleanup(&p);
    return st;
}

/* ---- one request ---- */

typedef struct {
    uint64_t t0, first_ns, first_text_ns;
    bool done, error, usage;
    uint64_t prompt, cached, completion;
    char err[200];
} stream_t;

static uint64_t json_u64(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t)v->valuedouble : 0;
}

static void read_usage(stream_t *s, const cJSON *u)
{
    s->usage = true;
    s->prompt = json_u64(u, "prompt_tokens");
    s->completion = json_u64(u, "completion_tokens");
    s->cached = json_u64(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens_details"),
                         "cached_tokens");
}

static int on_event(const char *data, size_t len, void *arg)
{
    stream_t *s = arg;
    uint64_t now = kvt_time_ns();
    if (!s->first_ns)
        s->first_ns = now;
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        s->done = true;
        return 1;
    }
    cJSON *ev = cJSON_ParseWithLength(data, len);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(ev, "error");
    if (!ev || err) {
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(err, "message");
        snprintf(s->err, sizeof(s->err), "%s",
                 cJSON_IsString(msg) ? msg->valuestring : "an event that is not JSON");
        s->error = true;
        cJSON_Delete(ev);
        return 1;
    }
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ev, "choices"), 0);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(ch, "text");
    if (!s->first_text_ns && cJSON_IsString(text) && text->valuestring[0])
        s->first_text_ns = now;
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(ev, "usage");
    if (cJSON_IsObject(u))
        read_usage(s, u);
    cJSON_Delete(ev);
    return 0;
}

/* The request body of one round; NULL when memory runs out. */
static char *request_body(const efim_t *b, unsigned user, int mode, unsigned round, bool warmup)
{
    const doc_t *d = &b->docs[user];
    size_t half = d->len / 2;
    while (half < d->len && ((unsigned char)d->text[half] & 0xc0) == 0x80)
        half++;
    size_t end = half - (size_t)b->step * (b->rounds - round);
    while (end > 0 && ((unsigned char)d->text[end] & 0xc0) == 0x80)
        end--;
    char tag[TAG_MAX];
    int tl = snprintf(tag, sizeof(tag), "/* run %s user %u mode %s: kvtier bench efim */\n",
                      b->run_tag, user, warmup ? "warmup" : g_modes[mode].name);
    char *prompt = kvt_malloc("bench efim prompt", (size_t)tl + end + 1);
    cJSON *o = cJSON_CreateObject(), *kv = cJSON_CreateObject();
    char *body = NULL;
    if (prompt && o && kv) {
        memcpy(prompt, tag, (size_t)tl);
        memcpy(prompt + tl, d->text, end);
        prompt[(size_t)tl + end] = '\0';
        cJSON_AddStringToObject(o, "model", b->model);
        cJSON_AddStringToObject(o, "prompt", warmup ? tag : prompt);
        if (!warmup)
            cJSON_AddStringToObject(o, "suffix", d->text + half);
        cJSON_AddNumberToObject(o, "max_tokens", warmup ? 8 : b->max_tokens);
        cJSON_AddNumberToObject(o, "temperature", 0);
        cJSON_AddBoolToObject(o, "stream", true);
        cJSON_AddStringToObject(kv, "format", warmup ? "plain" : g_modes[mode].format);
        cJSON_AddBoolToObject(kv, "cache", !warmup && g_modes[mode].cache);
        cJSON_AddItemToObject(o, "kvtier", kv);
        kv = NULL;
        body = cJSON_PrintUnformatted(o);
    }
    cJSON_Delete(kv);
    cJSON_Delete(o);
    kvt_free(prompt);
    return body;
}

/* Send one request and time its stream; false (logged) when it failed. */
static bool one_request(const efim_t *b, const char *body, sample_t *out, const char *what)
{
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    stream_t s = {.t0 = kvt_time_ns()};
    kvt_http_reply_t reply;
    kvt_status_t st = kvt_http_request_sse(b->url, "/v1/completions", headers, body,
                                           strlen(body), b->timeout_ms, on_event, &s, &reply);
    uint64_t t1 = kvt_time_ns();
    if (st != KVT_OK) {
        kvt_log_error("request failed %s status=\"%s\"", what, kvt_status_str(st));
        return false;
    }
    bool ok = reply.status == 200 && s.done && !s.error && s.usage;
    if (reply.status != 200)
        kvt_log_error("request refused %s http=%u body=%.300s", what, reply.status, reply.body);
    else if (!ok)
        kvt_log_error("request failed %s error=\"%s\" done=%d usage=%d", what,
                      s.error ? s.err : "stream ended early", s.done, s.usage);
    kvt_http_reply_cleanup(&reply);
    if (ok) {
        uint64_t first = s.first_text_ns ? s.first_text_ns : s.first_ns;
        *out = (sample_t){.ok = true, .lat_ns = t1 - s.t0, .ttft_ns = first - s.t0,
                          .prompt = s.prompt, .cached = s.cached, .completion = s.completion};
    }
    return ok;
}

/* ---- modes ---- */

static sample_t *sample_at(const efim_t *b, int mode, unsigned user, unsigned round)
{
    return &b->samples[((size_t)mode * b->users + user) * b->rounds + round];
}

static void *user_main(void *arg)
{
    const worker_t *w = arg;
    const efim_t *b = w->b;
    for (unsigned r = 0; r < b->rounds; r++) {
        char what[96];
        snprintf(what, sizeof(what), "mode=%s user=%u round=%u", g_modes[w->mode].name,
                 w->user, r + 1);
        char *body = request_body(b, w->user, w->mode, r, false);
        if (!body) {
            kvt_log_error("cannot build the request %s", what);
            continue;
        }
        one_request(b, body, sample_at(b, w->mode, w->user, r), what);
        cJSON_free(body);
    }
    return NULL;
}

static kvt_status_t run_mode(efim_t *b, int mode)
{
    pthread_t tid[MAX_USERS];
    worker_t w[MAX_USERS];
    unsigned started = 0;
    kvt_log_info("bench efim mode start mode=%s users=%u rounds=%u", g_modes[mode].name,
                 b->users, b->rounds);
    uint64_t t0 = kvt_time_ns();
    for (; started < b->users; started++) {
        w[started] = (worker_t){.b = b, .user = started, .mode = mode};
        int e = pthread_create(&tid[started], NULL, user_main, &w[started]);
        if (e != 0) {
            kvt_log_error("cannot start a user thread user=%u errno=%d", started, e);
            break;
        }
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    b->wall_s[mode] = (double)(kvt_time_ns() - t0) * 1e-9;
    return started == b->users ? KVT_OK : KVT_ERR_IO;
}

/* The model name (GET /v1/models unless given), then one untimed request. */
static kvt_status_t warm_up(efim_t *b)
{
    if (!b->model[0]) {
        kvt_http_reply_t r;
        kvt_status_t st = kvt_http_request(b->url, "GET", "/v1/models", NULL, NULL, 0,
                                           b->timeout_ms, 1 << 20, &r);
        if (st != KVT_OK) {
            kvt_log_error("cannot reach the server url=%s status=\"%s\"", b->url,
                          kvt_status_str(st));
            return st;
        }
        cJSON *o = r.status == 200 ? cJSON_Parse(r.body) : NULL;
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "data"), 0), "id");
        if (cJSON_IsString(id))
            snprintf(b->model, sizeof(b->model), "%s", id->valuestring);
        else
            kvt_log_error("no model in GET /v1/models url=%s http=%u", b->url, r.status);
        cJSON_Delete(o);
        kvt_http_reply_cleanup(&r);
        if (!b->model[0])
            return KVT_ERR_CORRUPT;
    }
    char *body = request_body(b, 0, MODE_NOCACHE, 0, true);
    sample_t s;
    bool ok = body && one_request(b, body, &s, "mode=warmup");
    cJSON_free(body);
    return ok ? KVT_OK : KVT_ERR_IO;
}

/* ---- figures ---- */

typedef struct {
    unsigned ok, errors;
    double mean_lat_ms, p99_lat_ms, mean_ttft_ms, p99_ttft_ms;
    double req_s, tok_s, cached_ratio, mean_prompt;
} figs_t;

static double mean_p99(uint64_t *v, unsigned n, double *p99_ms_p)
{
    double sum = 0, p50;
    for (unsigned i = 0; i < n; i++)
        sum += (double)v[i];
    kvt_bench_percentiles(v, n, &p50, p99_ms_p);
    *p99_ms_p *= 1e-3;
    return n ? sum / n * 1e-6 : 0;
}

static void mode_figs(const efim_t *b, int mode, uint64_t *lat, uint64_t *ttft, figs_t *f)
{
    uint64_t prompt = 0, cached = 0, tokens = 0;
    memset(f, 0, sizeof(*f));
    for (unsigned u = 0; u < b->users; u++)
        for (unsigned r = 0; r < b->rounds; r++) {
            const sample_t *s = sample_at(b, mode, u, r);
            if (!s->ok) {
                f->errors++;
                continue;
            }
            lat[f->ok] = s->lat_ns;
            ttft[f->ok++] = s->ttft_ns;
            prompt += s->prompt;
            cached += s->cached;
            tokens += s->completion;
        }
    f->mean_lat_ms = mean_p99(lat, f->ok, &f->p99_lat_ms);
    f->mean_ttft_ms = mean_p99(ttft, f->ok, &f->p99_ttft_ms);
    f->req_s = b->wall_s[mode] > 0 ? f->ok / b->wall_s[mode] : 0;
    f->tok_s = b->wall_s[mode] > 0 ? (double)tokens / b->wall_s[mode] : 0;
    f->cached_ratio = prompt ? (double)cached / (double)prompt : 0;
    f->mean_prompt = f->ok ? (double)prompt / f->ok : 0;
}

/* Seven rows: mode a's figures beside mode b's. */
static void add_pair(efim_t *b, const figs_t *f, int a, int ref)
{
    static const struct {
        const char *name, *unit;
        size_t off;
        bool latency;
    } rows[] = {
        {"mean_latency_ms", "ms", offsetof(figs_t, mean_lat_ms), true},
        {"p99_latency_ms", "ms", offsetof(figs_t, p99_lat_ms), true},
        {"mean_ttft_ms", "ms", offsetof(figs_t, mean_ttft_ms), true},
        {"p99_ttft_ms", "ms", offsetof(figs_t, p99_ttft_ms), true},
        {"throughput", "req/s", offsetof(figs_t, req_s), false},
        {"output_throughput", "tok/s", offsetof(figs_t, tok_s), false},
        {"cached_token_ratio", "fraction", offsetof(figs_t, cached_ratio), false},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char name[48], ref_name[48];
        snprintf(name, sizeof(name), "%s_%s", g_modes[a].name, rows[i].name);
        snprintf(ref_name, sizeof(ref_name), "%s_%s", g_modes[ref].name, rows[i].name);
        double v = *(const double *)((const char *)&f[a] + rows[i].off);
        double rv = *(const double *)((const char *)&f[ref] + rows[i].off);
        kvt_bench_add(&b->res, name, v, rows[i].unit, ref_name, rv, rows[i].latency);
    }
}

/* The per-mode figures; the result rows (efim vs fim, fim vs nocache). */
static kvt_status_t compute(efim_t *b, figs_t f[N_MODES])
{
    size_t n = (size_t)b->users * b->rounds;
    uint64_t *lat = kvt_calloc("bench efim latencies", n, sizeof(*lat));
    uint64_t *ttft = kvt_calloc("bench efim ttfts", n, sizeof(*ttft));
    if (lat && ttft)
        for (int m = 0; m < N_MODES; m++)
            mode_figs(b, m, lat, ttft, &f[m]);
    kvt_free(lat);
    kvt_free(ttft);
    if (!lat || !ttft)
        return KVT_ERR_NOMEM;
    add_pair(b, f, MODE_EFIM, MODE_FIM);
    add_pair(b, f, MODE_FIM, MODE_NOCACHE);
    return KVT_OK;
}

/* Cached-token ratio and mean latency (ms) of one round over all users. */
static double round_cached(const efim_t *b, int mode, unsigned r, double *lat_ms_p)
{
    uint64_t p = 0, c = 0, lat = 0, n = 0;
    for (unsigned u = 0; u < b->users; u++) {
        const sample_t *s = sample_at(b, mode, u, r);
        p += s->ok ? s->prompt : 0;
        c += s->ok ? s->cached : 0;
        lat += s->ok ? s->lat_ns : 0;
        n += s->ok;
    }
    *lat_ms_p = n ? (double)lat / (double)n * 1e-6 : 0;
    return p ? (double)c / (double)p : 0;
}

static void doc_range(const efim_t *b, size_t *lo_p, size_t *hi_p)
{
    size_t lo = SIZE_MAX, hi = 0;
    for (unsigned u = 0; u < b->users; u++) {
        lo = b->docs[u].len < lo ? b->docs[u].len : lo;
        hi = b->docs[u].len > hi ? b->docs[u].len : hi;
    }
    *lo_p = lo;
    *hi_p = hi;
}

static cJSON *workload_json(const efim_t *b, const figs_t f[N_MODES])
{
    cJSON *w = cJSON_CreateObject(), *errs = cJSON_CreateObject();
    size_t lo, hi;
    doc_range(b, &lo, &hi);
    cJSON_AddStringToObject(w, "url", b->url);
    cJSON_AddStringToObject(w, "model", b->model);
    kvt_json_add_u64(w, "users", b->users);
    kvt_json_add_u64(w, "rounds", b->rounds);
    kvt_json_add_u64(w, "max_tokens", b->max_tokens);
    kvt_json_add_u64(w, "step_bytes", b->step);
    cJSON_AddStringToObject(w, "files", b->source);
    kvt_json_add_u64(w, "doc_bytes_min", lo);
    kvt_json_add_u64(w, "doc_bytes_max", hi);
    cJSON_AddStringToObject(w, "run_tag", b->run_tag);
    for (int m = 0; m < N_MODES; m++) {
        kvt_json_add_u64(errs, g_modes[m].name, f[m].errors);
        char key[48];
        snprintf(key, sizeof(key), "%s_wall_s", g_modes[m].name);
        cJSON_AddNumberToObject(w, key, b->wall_s[m]);
    }
    cJSON_AddItemToObject(w, "errors", errs);
    return w;
}

static void print_table(const efim_t *b, const figs_t f[N_MODES])
{
    size_t lo, hi;
    doc_range(b, &lo, &hi);
    printf("kvtier bench efim: %s model %s, %u users x %u rounds, %u output tokens, prefix "
           "+%u B/round\nfiles %s: %u documents of %zu-%zu B (run %s)\n\n",
           b->url, b->model, b->users, b->rounds, b->max_tokens, b->step, b->source, b->users,
           lo, hi, b->run_tag);
    printf("%-8s %5s %6s %10s %10s %10s %10s %8s %8s %7s %8s\n", "mode", "ok", "errors",
           "lat mean", "lat p99", "ttft mean", "ttft p99", "req/s", "tok/s", "cached",
           "prompt");
    for (int m = 0; m < N_MODES; m++)
        printf("%-8s %5u %6u %10.1f %10.1f %10.1f %10.1f %8.3f %8.1f %7.3f %8.0f\n",
               g_modes[m].name, f[m].ok, f[m].errors, f[m].mean_lat_ms, f[m].p99_lat_ms,
               f[m].mean_ttft_ms, f[m].p99_ttft_ms, f[m].req_s, f[m].tok_s, f[m].cached_ratio,
               f[m].mean_prompt);
    printf("(latency and ttft in ms; cached = cached / prompt tokens; prompt = mean prompt "
           "tokens)\n\nby round: cached ratio / mean latency ms");
    for (int m = 0; m < N_MODES; m++) {
        printf("\n  %-8s", g_modes[m].name);
        for (unsigned r = 0; r < b->rounds; r++) {
            double lat;
            double c = round_cached(b, m, r, &lat);
            printf("  %.3f/%.0f", c, lat);
        }
    }
    printf("\n\n");
    kvt_bench_print_table(&b->res);
}

/* ---- command ---- */

static bool in_range(const kvt_config_t *cfg, const char *name, uint64_t lo, uint64_t hi,
                     unsigned *out)
{
    uint64_t v = kvt_config_u64(cfg, name, 0);
    if (v < lo || v > hi) {
        kvt_log_error("flag out of range flag=--%s value=%llu range=%llu-%llu", name,
                      (unsigned long long)v, (unsigned long long)lo, (unsigned long long)hi);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

static bool efim_config(efim_t *b, const kvt_config_t *cfg)
{
    unsigned timeout_ms;
    b->url = kvt_cli_require(cfg, "url");
    b->files = kvt_config_str(cfg, "files");
    const char *model = kvt_config_str(cfg, "model");
    if (!b->url || !in_range(cfg, "users", 1, MAX_USERS, &b->users) ||
        !in_range(cfg, "rounds", 1, MAX_ROUNDS, &b->rounds) ||
        !in_range(cfg, "max-tokens", 1, MAX_TOKENS_LIMIT, &b->max_tokens) ||
        !in_range(cfg, "step-bytes", 1, DOC_MAX, &b->step) ||
        !in_range(cfg, "timeout-ms", 100, 3600000, &timeout_ms))
        return false;
    if (!*b->url || !strchr(b->url, ':')) {
        kvt_log_error("--url needs HOST:PORT url=\"%s\"", b->url);
        return false;
    }
    if ((size_t)b->step * b->rounds > DOC_MIN / 2 - MIN_FIRST_PREFIX) {
        kvt_log_error("prefix steps do not fit the documents step_bytes=%u rounds=%u "
                      "max=\"step*rounds <= %zu\"", b->step, b->rounds,
                      DOC_MIN / 2 - MIN_FIRST_PREFIX);
        return false;
    }
    if (model && (!*model || strlen(model) >= sizeof(b->model))) {
        kvt_log_error("bad --model (empty or over %zu bytes)", sizeof(b->model) - 1);
        return false;
    }
    snprintf(b->model, sizeof(b->model), "%s", model ? model : "");
    b->timeout_ms = (int)timeout_ms;
    snprintf(b->run_tag, sizeof(b->run_tag), "%08llx",
             (unsigned long long)((kvt_time_ns() ^ ((uint64_t)getpid() << 20)) & 0xffffffffu));
    return true;
}

static kvt_status_t efim_run(efim_t *b)
{
    kvt_status_t st = load_docs(b);
    if (st == KVT_OK) {
        b->samples = kvt_calloc("bench efim samples", (size_t)N_MODES * b->users * b->rounds,
                                sizeof(sample_t));
        st = b->samples ? warm_up(b) : KVT_ERR_NOMEM;
    }
    for (int m = 0; st == KVT_OK && m < N_MODES; m++)
        st = run_mode(b, m);
    return st;
}

static void efim_free(efim_t *b)
{
    for (unsigned u = 0; b->docs && u < b->users; u++)
        kvt_free(b->docs[u].text);
    kvt_free(b->docs);
    kvt_free(b->samples);
    kvt_free(b);
}

/* Print the figures; 0, or 1 when a request failed or printing did. */
static int efim_report(efim_t *b, bool json)
{
    figs_t f[N_MODES];
    if (compute(b, f) != KVT_OK)
        return KVT_EXIT_FAIL;
    unsigned errors = f[0].errors + f[1].errors + f[2].errors;
    int rc;
    if (json) {
        cJSON *m = kvt_json_machine(".");
        if (m)
            cJSON_AddItemToObject(m, "workload", workload_json(b, f));
        rc = kvt_bench_print_json(&b->res, "efim", ".", m);
    } else {
        print_table(b, f);
        rc = KVT_EXIT_OK;
    }
    if (errors)
        kvt_log_error("requests failed errors=%u nocache=%u fim=%u efim=%u", errors,
                      f[0].errors, f[1].errors, f[2].errors);
    return errors ? KVT_EXIT_FAIL : rc;
}

int kvt_cmd_bench_efim(int argc, char **argv)
{
    kvt_config_t cfg;
    int rc = kvt_cli_parse(
        &cfg, g_opts, (int)(sizeof(g_opts) / sizeof(g_opts[0])), argc, argv,
        "usage: kvtier bench efim --url HOST:PORT [--model NAME] [--users 16] [--rounds 5]\n"
        "                         [--max-tokens 128] [--step-bytes 64] [--files GLOB|DIR] [--json]",
        "Replay the EFIM paper's workload against a running server: U concurrent\n"
        "users, each infilling in its own source file (suffix = second half, prefix\n"
        "growing by --step-bytes per round), R rounds each, streamed.  Three modes run\n"
        "one after another: nocache (FIM, kvtier.cache false), fim (FIM, cache on),\n"
        "efim (EFIM, cache on).  Prints mean/p99 latency and TTFT, request and token\n"
        "throughput and the cached-token ratio of each, efim beside fim and fim beside\n"
        "nocache, or {\"bench\",\"machine\",\"results\"} with --json.  Exit 1 when any\n"
        "request failed.");
    if (rc != KVT_EXIT_CONTINUE)
        return rc;
    efim_t *b = kvt_calloc("bench efim state", 1, sizeof(*b));
    if (!b)
        return KVT_EXIT_FAIL;
    if (!efim_config(b, &cfg)) {
        kvt_free(b);
        return KVT_EXIT_USAGE;
    }
    kvt_status_t st = efim_run(b);
    if (st == KVT_OK)
        rc = efim_report(b, kvt_config_bool(&cfg, "json"));
    else
        rc = st == KVT_ERR_USAGE ? KVT_EXIT_USAGE : KVT_EXIT_FAIL;
    efim_free(b);
    return rc;
}
