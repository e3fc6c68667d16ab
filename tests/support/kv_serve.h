/* Start (and kill) the real `kvtier kv serve` daemon (KVTIER_BIN, set by
 * ctest) for integration tests.  Header-only, cmocka assertions: include after
 * <cmocka.h>.  The caller kills and reaps the returned pid. */
#ifndef KVT_TESTS_KV_SERVE_H
#define KVT_TESTS_KV_SERVE_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Serve data's tier on listen with a host pool of host_capacity (a size
 * such as "1M"); addr (64 bytes) gets the address the daemon reports. */
static inline pid_t tu_kv_serve(const char *data, const char *listen, const char *host_capacity,
                                char *addr)
{
    const char *bin = getenv("KVTIER_BIN");
    assert_non_null(bin);
    int out[2];
    assert_int_equal(pipe(out), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        execl(bin, bin, "kv", "serve", "--data", data, "--listen", listen, "--host-capacity",
              host_capacity, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    FILE *f = fdopen(out[0], "r");
    char line[128] = "";
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
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
