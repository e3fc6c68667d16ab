/* Running the kvtier binary from a test: fork/exec $KVTIER_BIN (set by
 * ctest) with arguments, capture its stdout, return its exit status; and
 * small string scans of its JSON output, so tests need no JSON library.
 * Header-only (each test is one executable); include after cmocka.h. */
#ifndef KVT_TESTS_RUNBIN_H
#define KVT_TESTS_RUNBIN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TU_OUT_CAP (256 * 1024)

static const char *tu_bin;       /* the binary; set from $KVTIER_BIN */
static char tu_out[TU_OUT_CAP]; /* stdout of the last run, NUL-terminated */

/* Run tu_bin with args (NULL-terminated); env is "NAME=VALUE" or NULL.
 * Returns the exit status (-1 if killed by a signal). */
static inline int tu_run_env(const char *env, const char *const *args)
{
    const char *argv[48] = {tu_bin};
    int argc = 1;
    while (args[argc - 1] && argc < 47) {
        argv[argc] = args[argc - 1];
        argc++;
    }
    argv[argc] = NULL;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pfd[1], STDOUT_FILENO);
        close(pfd[0]);
        close(pfd[1]);
        if (env)
            putenv((char *)env);
        execv(tu_bin, (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t len = 0;
    ssize_t k;
    char sink[4096];
    while ((k = read(pfd[0], len < TU_OUT_CAP - 1 ? tu_out + len : sink,
                     len < TU_OUT_CAP - 1 ? TU_OUT_CAP - 1 - len : sizeof(sink))) > 0)
        if (len < TU_OUT_CAP - 1)
            len += (size_t)k;
    tu_out[len] = '\0';
    close(pfd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#define TU_RUN(...) tu_run_env(NULL, (const char *const[]){__VA_ARGS__, NULL})
#define TU_RUN_ENV(env, ...) tu_run_env(env, (const char *const[]){__VA_ARGS__, NULL})

/* The number after "key": in json, searching from the first `anchor`. */
static inline long long tu_json_num(const char *json, const char *anchor, const char *key)
{
    const char *p = anchor ? strstr(json, anchor) : json;
    assert_non_null(p);
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    p = strstr(p, pat);
    assert_non_null(p);
    return strtoll(p + strlen(pat), NULL, 10);
}

static inline int tu_count_of(const char *s, const char *what)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

#endif
