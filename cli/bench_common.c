/* Shared pieces of the `kvtier bench ...` programs (see bench_common.h):
 * the seeded chain, percentiles, the results table and its two printed
 * forms, scratch directories, and child processes that are always reaped. */
#include "cli/bench_common.h"

#include "cli/cli.h"
#include "cli/json_out.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BENCH_TOKENS 16u
#define BENCH_DTYPE KVT_DTYPE_BF16
#define BENCH_UNIT (2u * BENCH_TOKENS * 2u) /* K and V x 16 tokens x bf16 */

/* ---- the block chain ---- */

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

kvt_status_t kvt_bench_layout(uint64_t n, kvt_block_layout_t *layout_p)
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
                *layout_p = (kvt_block_layout_t){.n_layers = (uint32_t)(r / kv),
                                                 .n_kv_heads = (uint32_t)kv,
                                                 .head_dim = (uint32_t)hd,
                                                 .block_tokens = BENCH_TOKENS,
                                                 .dtype = BENCH_DTYPE};
            }
        }
    }
    if (best == INT_MAX || kvt_block_layout_payload_bytes(layout_p) != n)
        return KVT_ERR_INVALID;
    return KVT_OK;
}

kvt_status_t kvt_bench_chain_init(kvt_bench_chain_t *c, uint64_t n, uint64_t m, unsigned copies)
{
    memset(c, 0, sizeof(*c));
    c->n = n;
    c->m = m;
    if (kvt_bench_layout(n, &c->id.layout) != KVT_OK || m == 0) {
        kvt_log_error("no block layout fits block_bytes=%llu blocks=%llu rule=\"block bytes a "
                      "multiple of 64, at most 1G, blocks >= 1\"",
                      (unsigned long long)n, (unsigned long long)m);
        return KVT_ERR_INVALID;
    }
    uint64_t total = n * m;
    uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    if (total / m != n || total > phys / 4 || copies * total > phys / 10 * 8) {
        char need[32];
        kvt_cli_fmt_bytes(copies * total, need, sizeof(need));
        kvt_log_error("bench too large for this machine blocks=%llu block_bytes=%llu needs=\"%s\"",
                      (unsigned long long)m, (unsigned long long)n, need);
        return KVT_ERR_TOO_LARGE;
    }
    c->src = kvt_alloc_large("bench source payloads", total);
    c->hdrs = kvt_calloc("bench headers", m, sizeof(*c->hdrs));
    if (!c->src || !c->hdrs) {
        kvt_bench_chain_cleanup(c);
        return KVT_ERR_NOMEM;
    }
    return KVT_OK;
}

void kvt_bench_chain_cleanup(kvt_bench_chain_t *c)
{
    if (c->src)
        kvt_free_large(c->src, c->n * c->m);
    kvt_free(c->hdrs);
    c->src = NULL;
    c->hdrs = NULL;
}

kvt_status_t kvt_bench_chain_generate(kvt_bench_chain_t *c, uint64_t seed)
{
    uint64_t s = seed, *words = (uint64_t *)c->src;
    for (uint64_t i = 0; i < c->n * c->m / 8; i++)
        words[i] = splitmix64(&s);
    for (int i = 0; i < KVT_FINGERPRINT_LEN; i++)
        c->id.fingerprint[i] = (uint8_t)splitmix64(&s);
    size_t n_tokens = (size_t)c->m * BENCH_TOKENS, n_keys = 0;
    uint32_t *tokens = kvt_malloc("bench tokens", n_tokens * sizeof(uint32_t));
    kvt_block_key_t *keys = kvt_malloc("bench keys", (size_t)c->m * sizeof(*keys));
    kvt_block_key_t root;
    kvt_status_t st = (tokens && keys) ? KVT_OK : KVT_ERR_NOMEM;
    for (size_t i = 0; st == KVT_OK && i < n_tokens; i++)
        tokens[i] = (uint32_t)(splitmix64(&s) % 151936);
    if (st == KVT_OK)
        st = kvt_block_key_root(c->id.fingerprint, NULL, 0, &root);
    if (st == KVT_OK)
        st = kvt_block_key_chain(&root, BENCH_TOKENS, tokens, n_tokens, keys, c->m, &n_keys);
    for (uint64_t i = 0; st == KVT_OK && i < c->m; i++) {
        st = kvt_block_header_make(&c->hdrs[i], &c->id, i ? &keys[i - 1] : &root, (uint32_t)i,
                                   tokens + i * BENCH_TOKENS, c->src + i * c->n);
        if (st == KVT_OK && (n_keys != c->m || !kvt_block_key_eq(&c->hdrs[i].key, &keys[i])))
            st = KVT_ERR_INVALID;
    }
    if (st != KVT_OK)
        kvt_log_error("bench block setup failed status=\"%s\"", kvt_status_str(st));
    kvt_free(tokens);
    kvt_free(keys);
    return st;
}

/* ---- timing ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void kvt_bench_percentiles(uint64_t *lat, size_t n, double *p50_us_p, double *p99_us_p)
{
    if (n == 0) {
        *p50_us_p = *p99_us_p = 0;
        return;
    }
    qsort(lat, n, sizeof(uint64_t), cmp_u64);
    *p50_us_p = (double)lat[(50 * n + 99) / 100 - 1] * 1e-3;
    *p99_us_p = (double)lat[(99 * n + 99) / 100 - 1] * 1e-3;
}

void kvt_bench_phase_finish(kvt_bench_phase_t *ph, uint64_t t0, uint64_t *lat, size_t n)
{
    ph->seconds = (double)(kvt_time_ns() - t0) * 1e-9;
    kvt_bench_percentiles(lat, n, &ph->p50_us, &ph->p99_us);
}

static int cmp_phase(const void *a, const void *b)
{
    double x = ((const kvt_bench_phase_t *)a)->seconds, y = ((const kvt_bench_phase_t *)b)->seconds;
    return x < y ? -1 : x > y;
}

const kvt_bench_phase_t *kvt_bench_phase_median(kvt_bench_phase_t *ph, int n)
{
    qsort(ph, (size_t)n, sizeof(*ph), cmp_phase);
    return &ph[n / 2];
}

/* ---- results ---- */

void kvt_bench_add(kvt_bench_results_t *t, const char *name, double value, const char *unit,
                   const char *ref_name, double ref_value, bool latency)
{
    if (t->n >= KVT_BENCH_MAX_RESULTS)
        return;
    kvt_bench_result_t *r = &t->res[t->n++];
    snprintf(r->name, sizeof(r->name), "%s", name);
    snprintf(r->unit, sizeof(r->unit), "%s", unit);
    snprintf(r->ref_name, sizeof(r->ref_name), "%s", ref_name);
    r->value = value;
    r->ref_value = ref_value;
    r->latency = latency;
}

double kvt_bench_ratio(const kvt_bench_result_t *r)
{
    double num = r->latency ? r->ref_value : r->value, den = r->latency ? r->value : r->ref_value;
    return den > 0 ? num / den : 0.0;
}

int kvt_bench_print_json(const kvt_bench_results_t *t, const char *bench, const char *dir,
                         cJSON *machine)
{
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!machine)
        machine = kvt_json_machine(dir);
    if (!o || !arr) {
        cJSON_Delete(o);
        cJSON_Delete(arr);
        cJSON_Delete(machine);
        return kvt_json_print(NULL);
    }
    cJSON_AddStringToObject(o, "bench", bench);
    cJSON_AddItemToObject(o, "machine", machine);
    for (int i = 0; i < t->n; i++) {
        const kvt_bench_result_t *r = &t->res[i];
        cJSON *e = cJSON_CreateObject();
        if (!e)
            break;
        cJSON_AddStringToObject(e, "name", r->name);
        cJSON_AddNumberToObject(e, "value", r->value);
        cJSON_AddStringToObject(e, "unit", r->unit);
        cJSON_AddStringToObject(e, "ref_name", r->ref_name);
        cJSON_AddNumberToObject(e, "ref_value", r->ref_value);
        cJSON_AddNumberToObject(e, "ratio", kvt_bench_ratio(r));
        cJSON_AddItemToArray(arr, e);
    }
    cJSON_AddItemToObject(o, "results", arr);
    return kvt_json_print(o);
}

void kvt_bench_print_table(const kvt_bench_results_t *t)
{
    int wn = 20, wr = 22; /* widened for longer names, never narrowed */
    for (int i = 0; i < t->n; i++) {
        int ln = (int)strlen(t->res[i].name), lr = (int)strlen(t->res[i].ref_name);
        wn = ln > wn ? ln : wn;
        wr = lr > wr ? lr : wr;
    }
    printf("%-*s %12s %-9s %-*s %12s %8s\n", wn, "name", "value", "unit", wr, "reference",
           "ref value", "ratio");
    for (int i = 0; i < t->n; i++) {
        const kvt_bench_result_t *r = &t->res[i];
        printf("%-*s %12.2f %-9s %-*s %12.2f %8.2f\n", wn, r->name, r->value, r->unit, wr,
               r->ref_name, r->ref_value, kvt_bench_ratio(r));
    }
    printf("\nratio: higher is better (value/ref for throughput, ref/value for latency)\n");
}

/* ---- files ---- */

static int rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    if (remove(path) != 0 && errno != ENOENT)
        kvt_log_warn("remove failed path=%s errno=%d", path, errno);
    return 0;
}

void kvt_bench_rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0)
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

kvt_status_t kvt_bench_mkdir_p(const char *path)
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

/* ---- child processes ---- */

/* In the child, between fork and exec: only async-signal-safe calls. */
static void child_exec(char *const argv[], char *const envp[], int out_fd, bool quiet,
                       pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) /* the parent died before prctl */
        _exit(127);
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC); /* dup2 copies lose CLOEXEC */
    if (null_fd < 0)
        _exit(127);
    dup2(null_fd, STDIN_FILENO);
    dup2(out_fd >= 0 ? out_fd : null_fd, STDOUT_FILENO);
    if (quiet)
        dup2(null_fd, STDERR_FILENO);
    execve(argv[0], argv, envp);
    _exit(127);
}

/* environ with the variable of env_set ("NAME=value") replaced or added;
 * environ itself when env_set is NULL.  Free with env_free. */
static char **env_with(const char *env_set)
{
    if (!env_set)
        return environ;
    size_t n = 0, name_len = strcspn(env_set, "=") + 1, k = 0;
    while (environ[n])
        n++;
    char **env = kvt_calloc("child environment", n + 2, sizeof(char *));
    for (size_t i = 0; env && i < n; i++)
        if (strncmp(environ[i], env_set, name_len) != 0)
            env[k++] = environ[i];
    if (env)
        env[k] = (char *)env_set;
    return env;
}

static void env_free(char **env)
{
    if (env != environ)
        kvt_free(env);
}

kvt_status_t kvt_bench_child_spawn(kvt_bench_child_t *ch, char *const argv[], const char *env_set,
                                   bool capture, bool quiet)
{
    int fds[2] = {-1, -1};
    memset(ch, 0, sizeof(*ch));
    ch->out_fd = -1;
    char **env = env_with(env_set);
    if (!env)
        return KVT_ERR_NOMEM;
    if (capture && pipe2(fds, O_CLOEXEC) != 0) {
        kvt_log_error("pipe failed program=%s errno=%d", argv[0], errno);
        env_free(env);
        return KVT_ERR_IO;
    }
    fflush(NULL); /* the child must not repeat buffered output */
    pid_t parent = getpid(), pid = fork();
    if (pid == 0)
        child_exec(argv, env, fds[1], quiet, parent);
    env_free(env);
    if (fds[1] >= 0)
        close(fds[1]);
    if (pid < 0) {
        kvt_log_error("fork failed program=%s errno=%d", argv[0], errno);
        if (fds[0] >= 0)
            close(fds[0]);
        return KVT_ERR_IO;
    }
    ch->pid = pid;
    ch->out_fd = fds[0];
    return KVT_OK;
}

bool kvt_bench_which(const char *name, char *path, size_t cap)
{
    const char *dirs = getenv("PATH");
    while (dirs && *dirs) {
        size_t len = strcspn(dirs, ":");
        int k = snprintf(path, cap, "%.*s/%s", (int)len, dirs, name);
        if (len > 0 && k > 0 && (size_t)k < cap && access(path, X_OK) == 0)
            return true;
        dirs += len + (dirs[len] == ':');
    }
    return false;
}

static int ms_left(uint64_t deadline_ns)
{
    uint64_t now = kvt_time_ns();
    return now >= deadline_ns ? 0 : (int)((deadline_ns - now) / 1000000 + 1);
}

kvt_status_t kvt_bench_child_line(kvt_bench_child_t *ch, char *line, size_t cap, int timeout_ms)
{
    uint64_t deadline = kvt_time_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        char *nl = memchr(ch->buf, '\n', ch->len);
        if (nl) {
            size_t n = (size_t)(nl - ch->buf);
            if (n >= cap)
                return KVT_ERR_TOO_LARGE;
            memcpy(line, ch->buf, n);
            line[n] = '\0';
            ch->len -= n + 1;
            memmove(ch->buf, nl + 1, ch->len);
            return KVT_OK;
        }
        if (ch->len == sizeof(ch->buf))
            return KVT_ERR_TOO_LARGE;
        if (ch->out_fd < 0)
            return KVT_ERR_CLOSED;
        struct pollfd p = {.fd = ch->out_fd, .events = POLLIN};
        int left = ms_left(deadline), r = left ? poll(&p, 1, left) : 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return KVT_ERR_AGAIN;
        ssize_t k = read(ch->out_fd, ch->buf + ch->len, sizeof(ch->buf) - ch->len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return KVT_ERR_CLOSED;
        ch->len += (size_t)k;
    }
}

kvt_status_t kvt_bench_child_find(kvt_bench_child_t *ch, const char *prefix, char *line,
                                  size_t cap, int timeout_ms)
{
    uint64_t deadline = kvt_time_ns() + (uint64_t)timeout_ms * 1000000ull;
    size_t plen = strlen(prefix);
    for (;;) {
        int left = ms_left(deadline);
        kvt_status_t st = left ? kvt_bench_child_line(ch, line, cap, left) : KVT_ERR_AGAIN;
        if (st == KVT_ERR_TOO_LARGE) /* an overlong line: skip what is buffered */
            ch->len = 0;
        else if (st != KVT_OK || !strncmp(line, prefix, plen))
            return st;
    }
}

static void child_reaped(kvt_bench_child_t *ch, int wstatus, int *exit_p)
{
    if (exit_p)
        *exit_p = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
    ch->pid = 0;
    if (ch->out_fd >= 0)
        close(ch->out_fd);
    ch->out_fd = -1;
}

kvt_status_t kvt_bench_child_wait(kvt_bench_child_t *ch, int timeout_ms, int *exit_p)
{
    uint64_t deadline = kvt_time_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (ch->pid > 0) {
        int ws;
        pid_t r = waitpid(ch->pid, &ws, WNOHANG);
        if (r == ch->pid || (r < 0 && errno != EINTR)) {
            child_reaped(ch, r == ch->pid ? ws : 0, exit_p);
            return KVT_OK;
        }
        if (!ms_left(deadline))
            return KVT_ERR_AGAIN;
        nanosleep(&(struct timespec){.tv_nsec = 5000000}, NULL);
    }
    return KVT_OK;
}

void kvt_bench_child_stop(kvt_bench_child_t *ch, int grace_ms)
{
    if (ch->pid <= 0)
        return;
    kill(ch->pid, SIGTERM);
    if (kvt_bench_child_wait(ch, grace_ms, NULL) == KVT_OK)
        return;
    kvt_log_warn("child ignored sigterm, killing pid=%d", (int)ch->pid);
    kill(ch->pid, SIGKILL);
    int ws;
    while (waitpid(ch->pid, &ws, 0) < 0 && errno == EINTR)
        ;
    child_reaped(ch, ws, NULL);
}

uint16_t kvt_bench_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    uint16_t port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Whether /proc/net/tcp lists 127.0.0.1:port or 0.0.0.0:port in LISTEN (0A). */
static bool listening(uint16_t port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    char line[512];
    bool found = false;
    while (f && !found && fgets(line, sizeof(line), f)) {
        unsigned addr, lport, state;
        if (sscanf(line, " %*u: %8X:%4X %*8X:%*4X %2X", &addr, &lport, &state) == 3)
            found = lport == port && state == 0x0A &&
                    (addr == 0 || addr == 0x0100007Fu); /* little-endian 127.0.0.1 */
    }
    if (f)
        fclose(f);
    return found;
}

kvt_status_t kvt_bench_wait_listen(uint16_t port, int timeout_ms)
{
    uint64_t deadline = kvt_time_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (!listening(port)) {
        if (!ms_left(deadline))
            return KVT_ERR_AGAIN;
        nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
    }
    return KVT_OK;
}
