/* Named allocation with optional fault injection. */
#include "common/alloc.h"

#include "common/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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

void *kvt_alloc_large(const char *what, size_t size)
{
    if (injected_failure()) {
        kvt_log_error("mmap failed what=%s bytes=%zu err=injected", what, size);
        return NULL;
    }
    void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        kvt_log_error("mmap failed what=%s bytes=%zu err=%s", what, size, strerror(errno));
        return NULL;
    }
    return p;
}

void kvt_free_large(void *ptr, size_t size)
{
    if (ptr)
        munmap(ptr, size ? size : 1);
}
