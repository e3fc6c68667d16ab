/* Tests for net/peer_read.c and net/peer_map.c: same-host reads out of
 * another process's memory, by process_vm_readv and by mapping its sealed
 * memfd. */
#include "net/net.h"

#include "common/alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

/* A child that holds a memfd region (sealed as kvt_alloc_shared makes it,
 * or not) filled with a pattern, until killed; *region_p names it as a
 * server's reply would. */
static pid_t region_child(size_t len, bool sealed, kvt_net_peer_region_t *region_p)
{
    int fd = -1;
    uint8_t *p;
    if (sealed) {
        p = kvt_alloc_shared("test region", len, &fd);
    } else {
        fd = memfd_create("test region", MFD_CLOEXEC);
        assert_int_equal(ftruncate(fd, (off_t)len), 0);
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    assert_true(fd >= 0 && p && p != MAP_FAILED);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 131 + 7);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    *region_p = (kvt_net_peer_region_t){.pid = child, .fd = fd, .inode = (uint64_t)sb.st_ino,
                                        .base = (uint64_t)(uintptr_t)p, .length = len};
    kvt_free_shared(p, len, fd); /* the child has them now */
    return child;
}

/* kvt_net_peer_map_* (net/peer_map.c): a child's sealed region maps and
 * reads exactly, at its addresses; a range outside it is KVT_ERR_IO; a
 * region named wrongly (inode, size) is refused as KVT_ERR_IO, an
 * unsealed one as KVT_ERR_DENIED (it could shrink under the map: SIGBUS),
 * a gone process or fd as KVT_ERR_CLOSED.  The map outlives the child. */
static void test_peer_map(void **state)
{
    (void)state;
    size_t len = (2u << 20) + 4096;
    kvt_net_peer_region_t r;
    pid_t child = region_child(len, true, &r);
    uint8_t *dst = malloc(len);
    kvt_net_peer_map_t *map = NULL;
    kvt_net_peer_region_t bad = r;
    bad.inode++;
    assert_int_equal(kvt_net_peer_map_open(&bad, &map), KVT_ERR_IO);
    bad = r;
    bad.length -= 4096;
    assert_int_equal(kvt_net_peer_map_open(&bad, &map), KVT_ERR_IO);
    bad = r;
    bad.fd = 1000;
    assert_int_equal(kvt_net_peer_map_open(&bad, &map), KVT_ERR_CLOSED);
    assert_null(map);
    assert_int_equal(kvt_net_peer_map_open(&r, &map), KVT_OK);
    assert_true(kvt_net_peer_map_is(map, &r));
    assert_false(kvt_net_peer_map_is(map, &bad));
    memset(dst, 0, len);
    assert_int_equal(kvt_net_peer_map_read(map, dst, r.base + 100, len - 100), KVT_OK);
    for (size_t i = 100; i < len; i++)
        if (dst[i - 100] != (uint8_t)(i * 131 + 7))
            fail_msg("byte %zu differs", i);
    assert_int_equal(kvt_net_peer_map_read(map, dst, r.base + len - 1, 2), KVT_ERR_IO);
    assert_int_equal(kvt_net_peer_map_read(map, dst, r.base - 1, 1), KVT_ERR_IO);
    assert_int_equal(kvt_net_peer_map_read(map, dst, UINT64_MAX, 1), KVT_ERR_IO);
    assert_int_equal(kvt_net_peer_map_read(map, dst, r.base + len, 0), KVT_OK);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    assert_int_equal(kvt_net_peer_map_read(map, dst, r.base, 1), KVT_OK); /* still mapped */
    assert_int_equal(dst[0], 7);
    kvt_net_peer_map_close(map);
    map = NULL;
    assert_int_equal(kvt_net_peer_map_open(&r, &map), KVT_ERR_CLOSED);

    child = region_child(len, false, &r);
    assert_int_equal(kvt_net_peer_map_open(&r, &map), KVT_ERR_DENIED);
    assert_null(map);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    free(dst);
}

/* A region named by one of our own fds, as a server would name it. */
static kvt_net_peer_region_t region_of(int fd, size_t len)
{
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    return (kvt_net_peer_region_t){.pid = getpid(), .fd = fd, .inode = (uint64_t)sb.st_ino,
                                   .base = 1u << 20, .length = len};
}

/* Files that are not a sealed tmpfs region are refused, at once: a FIFO
 * (an open by path would block on it), a file on disk, and a sealed
 * hugetlbfs memfd (a hole punched in it faults when the huge page pool is
 * empty), where the system has one. */
static void test_peer_map_refuses_other_files(void **state)
{
    (void)state;
    kvt_net_peer_map_t *map = NULL;
    char dir[] = "/tmp/kvt-peer-map-XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int fifo = open(path, O_RDWR | O_CLOEXEC); /* opens at once for O_RDWR */
    assert_true(fifo >= 0);
    kvt_net_peer_region_t r = region_of(fifo, 4096);
    assert_int_equal(kvt_net_peer_map_open(&r, &map), KVT_ERR_DENIED);
    close(fifo);
    unlink(path);
    snprintf(path, sizeof(path), "%s/file", dir);
    int file = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    assert_int_equal(ftruncate(file, 4096), 0);
    r = region_of(file, 4096);
    assert_int_equal(kvt_net_peer_map_open(&r, &map), KVT_ERR_DENIED);
    close(file);
    unlink(path);
    rmdir(dir);
    size_t huge = 2u << 20;
    int h = memfd_create("huge", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
    if (h >= 0 && ftruncate(h, (off_t)huge) == 0 && fcntl(h, F_ADD_SEALS, F_SEAL_SHRINK) == 0) {
        r = region_of(h, huge);
        assert_int_equal(kvt_net_peer_map_open(&r, &map), KVT_ERR_IO);
    } else {
        print_message("no sealed hugetlbfs memfd here: that case is not run\n");
    }
    if (h >= 0)
        close(h);
    assert_null(map);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_read),
        cmocka_unit_test(test_peer_map),
        cmocka_unit_test(test_peer_map_refuses_other_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
