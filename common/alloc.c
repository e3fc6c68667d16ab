/* Named allocation with optional fault injection. */
#include "common/alloc.h"

#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

static _Atomic long g_fail_after = -1;

static int injected_failure(void)
{
    long n = atomic_load_explicit(&g_fail_after, memory_order_relaxed);
    if (n < 0)
        return 0;
    /* Count down; the call that finds 0 fails and turns injection off. */
    while (n >= 0) {
        if (atomic_compare_exchange_weak(&g_fail_after, &n, n - 1))
            return n == 0;
    }
    return 0;
}

void kvt_alloc_fail_after(long n) { atomic_store(&g_fail_after, n); }

void *kvt_malloc(const char *what, size_t size)
{
    void *p = injected_failure() ? NULL : malloc(size ? size : 1);
    if (!p)
        kvt_log_error("allocation failed what=%s bytes=%zu", what, size);
    return p;
}

void *kvt_calloc(const char *what, size_t count, size_t size)
{
    void *p = injected_failure() ? NULL : calloc(count ? count : 1, size ? size : 1);
    if (!p)
        kvt_log_error("allocation failed what=%s count=%zu bytes=%zu", what, count, size);
    return p;
}

void *kvt_realloc(const char *what, void *ptr, size_t size)
{
    void *p = injected_failure() ? NULL : realloc(ptr, size ? size : 1);
    if (!p)
        kvt_log_error("reallocation failed what=%s bytes=%zu", what, size);
    return p;
}

void kvt_free(void *ptr) { free(ptr); }

static void *map_anon(const char *what, size_t size)
{
    void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        kvt_log_error("mmap failed what=%s bytes=%zu err=%s", what, size, strerror(errno));
        return NULL;
    }
    return p;
}

void *kvt_alloc_large(const char *what, size_t size)
{
    if (injected_failure()) {
        kvt_log_error("mmap failed what=%s bytes=%zu err=injected", what, size);
        return NULL;
    }
    return map_anon(what, size);
}

void kvt_free_large(void *ptr, size_t size)
{
    if (ptr)
        munmap(ptr, size ? size : 1);
}

/* The seals are what make the mapping safe for a reader in another
 * process: a file that cannot shrink cannot turn the reader's loads into
 * SIGBUS.  MADV_HUGEPAGE takes effect only where the system allows huge
 * pages for shared memory (shmem_enabled); it is a hint, not needed. */
void *kvt_alloc_shared(const char *what, size_t size, int *fd_p)
{
    *fd_p = -1;
    if (injected_failure()) {
        kvt_log_error("mmap failed what=%s bytes=%zu err=injected", what, size);
        return NULL;
    }
    size = size ? size : 1;
    /* A file larger than RLIMIT_FSIZE would raise SIGXFSZ at ftruncate,
     * which kills the process: such a region stays private. */
    struct rlimit fl;
    if (getrlimit(RLIMIT_FSIZE, &fl) == 0 && fl.rlim_cur != RLIM_INFINITY && fl.rlim_cur < size) {
        kvt_log_info("region stays private what=%s bytes=%zu cause=\"file size limit\"", what, size);
        return map_anon(what, size);
    }
    int fd = memfd_create(what, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        kvt_log_info("memfd not available, region stays private what=%s err=%s", what,
                     strerror(errno));
        if (fd >= 0)
            close(fd);
        return map_anon(what, size);
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        kvt_log_error("mmap failed what=%s bytes=%zu err=%s", what, size, strerror(errno));
        close(fd);
        return NULL;
    }
    (void)madvise(p, size, MADV_HUGEPAGE);
    *fd_p = fd;
    return p;
}

void kvt_free_shared(void *ptr, size_t size, int fd)
{
    kvt_free_large(ptr, size);
    if (fd >= 0)
        close(fd);
}
