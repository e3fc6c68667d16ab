/* Start (and kill) the real `kvtier kv serve` daemon (KVTIER_BIN, set by
 * ctest), or any child whose first line of output the test waits for, for
 * integration tests.  Header-only, cmocka assertions: include after
 * <cmocka.h>.  The caller kills and reaps the returned pid. */
#ifndef KVT_TESTS_KV_SERVE_H
#define KVT_TESTS_KV_SERVE_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Start path with argv (NULL-terminated) and its stdout on a pipe; line
 * (cap bytes) gets the first line it prints, and the pipe is closed after
 * it.  Returns the child's pid; the caller kills and reaps it. */
static inline pid_t tu_spawn_first_line(const char *path, char *const argv[], char *line,
                                        int cap)
{
    int out[2];
    assert_int_equal(pipe(out), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        execv(path, argv);
        _exit(127);
    }
    close(out[1]);
    FILE *f = fdopen(out[0], "r");
    line[0] = '\0';
    assert_non_null(fgets(line, cap, f));
    fclose(f);
    return pid;
}

/* Serve data's tier on listen with a host pool of host_capacity (a size
 * such as "1M"); addr (64 bytes) gets the address the daemon reports. */
static inline pid_t tu_kv_serve(const char *data, const char *listen, const char *host_capacity,
                                char *addr)
{
    const char *bin = getenv("KVTIER_BIN");
    assert_non_null(bin);
    char *const argv[] = {(char *)bin,       "kv",         "serve",
                          "--data",          (char *)data, "--listen",
                          (char *)listen,    "--host-capacity",
                          (char *)host_capacity, NULL};
    char line[128];
    pid_t pid = tu_spawn_first_line(bin, argv, line, sizeof(line));
    assert_int_equal(sscanf(line, "listening %63s", addr), 1);
    return pid;
}

/* A thread body that SIGKILLs *(pid_t *)arg 300 ms after it starts: the
 * daemon dies while the test's client is in the middle of its pulls. */
static inline void *tu_kill_in_300ms(void *arg)
{
    usleep(300000);
    kill(*(pid_t *)arg, SIGKILL);
    return NULL;
}

#endif
