/* Named allocation.
 *
 * Every allocation names what it is for, so an out-of-memory failure is
 * logged once with the name and size where it happens.  Large regions (pools
 * that are later pinned or registered with UCX/CUDA) come from mmap, page
 * aligned.  Tests can inject failures: kvt_alloc_fail_after(n) makes the
 * (n+1)-th allocation from now fail, like SQLite's fault injection. */
#ifndef KVT_COMMON_ALLOC_H
#define KVT_COMMON_ALLOC_H

#include <stddef.h>

void *kvt_malloc(const char *what, size_t size);
void *kvt_calloc(const char *what, size_t count, size_t size);
void *kvt_realloc(const char *what, void *ptr, size_t size);
void kvt_free(void *ptr);

/* Page-aligned anonymous mapping; release with kvt_free_large(ptr, size). */
void *kvt_alloc_large(const char *what, size_t size);
void kvt_free_large(void *ptr, size_t size);

/* Page-aligned shared mapping of a sealed memfd (its size can neither
 * shrink nor grow), so that a same-host process allowed to ptrace this one
 * can copy the fd (pidfd_getfd) and map the region itself
 * (net/peer_map.c).
 * *fd_p gets the memfd, or -1 where memfd is not available: the region is
 * then an anonymous mapping as kvt_alloc_large's.  Release with
 * kvt_free_shared(ptr, size, fd). */
void *kvt_alloc_shared(const char *what, size_t size, int *fd_p);
void kvt_free_shared(void *ptr, size_t size, int fd);

/* Fault injection: n >= 0 fails the allocation after n successes; -1 turns
 * injection off.  Process-wide; for tests only. */
void kvt_alloc_fail_after(long n);

#endif
