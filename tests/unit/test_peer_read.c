/* Tests for net/peer_read.c: same-host reads out of another process's
 * memory. */
#include "net/net.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <cmocka.h>

/* kvt_net_local_read (net/peer_read.c), between real processes: a child's
 * bytes arrive exactly; an address not mapped there is KVT_ERR_IO; a pid
 * that no longer exists is KVT_ERR_CLOSED; a process the kernel will not
 * let us read (a root parent read by a child that became nobody) is
 * KVT_ERR_DENIED. */
static void test_local_read(void **state)
{
    (void)state;
    size_t len = (3u << 20) + 123; /* several pages, not a whole one */
    uint8_t *src = malloc(len), *dst = malloc(len);
    for (size_t i = 0; i < len; i++)
        src[i] = (uint8_t)(i * 131 + 7);
    int to_parent[2];
    assert_int_equal(pipe(to_parent), 0);
    pid_t child = fork();
    if (child == 0) { /* holds src (copied at fork) until killed */
        char c = 1;
        (void)!write(to_parent[1], &c, 1);
        pause();
        _exit(0);
    }
    char c;
    assert_int_equal(read(to_parent[0], &c, 1), 1);
    memset(dst, 0, len);
    assert_int_equal(kvt_net_local_read(child, dst, (uint64_t)(uintptr_t)src, len), KVT_OK);
    assert_memory_equal(dst, src, len);
    assert_int_equal(kvt_net_local_read(child, dst, 4096, 4096), KVT_ERR_IO);
    assert_int_equal(kvt_net_local_read(child, dst, 0, 0), KVT_OK);
    assert_int_equal(kvt_net_local_read(0, dst, (uint64_t)(uintptr_t)src, 1), KVT_ERR_INVALID);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    assert_int_equal(kvt_net_local_read(child, dst, (uint64_t)(uintptr_t)src, len), KVT_ERR_CLOSED);
    if (geteuid() == 0) {
        pid_t parent = getpid();
        pid_t reader = fork();
        if (reader == 0) {
            if (setgid(65534) != 0 || setuid(65534) != 0)
                _exit(100);
            _exit(kvt_net_local_read(parent, dst, (uint64_t)(uintptr_t)src, 4096) ==
                          KVT_ERR_DENIED
                      ? 0
                      : 101);
        }
        int ws;
        assert_int_equal(waitpid(reader, &ws, 0), reader);
        assert_true(WIFEXITED(ws));
        assert_int_equal(WEXITSTATUS(ws), 0);
    } else {
        print_message("not root: the denied case is not run\n");
    }
    close(to_parent[0]);
    close(to_parent[1]);
    free(src);
    free(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
