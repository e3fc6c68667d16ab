/* net same-host mappings: map a same-host peer's sealed memfd region
 * (common/alloc.h, kvt_alloc_shared) read-only into this process, and copy
 * out of it with memcpy.
 *
 * Why: kvt_net_local_read (net/peer_read.c) makes the kernel walk and pin
 * the peer's pages on every call; a mapping made once lets each later read
 * run at memcpy speed, about twice process_vm_readv's on the benchmark
 * machine (bench/RESULTS.md 2026-11-23), with no system call per block.
 *
 * How: the peer's fd is copied with pidfd_getfd(2), never opened by path:
 * opening /proc/PID/fd/N would open whatever the peer names (a FIFO
 * blocks the open forever, a device opens with side effects) and needs
 * only ptrace READ permission.  pidfd_getfd needs ptrace ATTACH
 * permission, as process_vm_readv does, so this reads nothing a process
 * of that user could not read already.
 *
 * What makes the mapping safe to load from: the file is checked, seals
 * first, to be sealed against shrinking (so its size can never drop below
 * what fstat then sees: a file that shrank under the mapping would make
 * loads fault, SIGBUS), on tmpfs (a hugetlbfs memfd can be sealed too,
 * but a hole punched in it faults when the huge page pool is empty), a
 * regular file, and the one the peer named (inode and size).  A hole
 * punched in a tmpfs file reads as zeros.  A slot rewritten after its
 * lease, or zeros, are caught by the caller's checksums (invariant 3), as
 * with process_vm_readv.
 *
 * Ownership: a map holds the peer's region alive (the pages stay while
 * mapped, even after the peer exits), so its owner closes it when the
 * connection ends or the peer names another region.
 *
 * Failure: kvt_net_peer_map_open gives KVT_ERR_DENIED (no permission, a
 * kernel without pidfd_getfd, or a file not sealed), KVT_ERR_CLOSED (no
 * such process or fd), KVT_ERR_NOMEM (out of fds, memory or address
 * space: may pass), KVT_ERR_IO (not the file named, or not a sealed tmpfs
 * file, or it cannot be mapped); the caller falls back to
 * kvt_net_local_read.  kvt_net_peer_map_read gives KVT_ERR_IO for a range
 * outside the region. */
#include "net/net.h"

#include "common/alloc.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

struct kvt_net_peer_map {
    kvt_net_peer_region_t region;
    const uint8_t *data; /* region.length bytes, read-only */
};

static kvt_status_t errno_status(int e)
{
    return e == EPERM || e == EACCES || e == ENOSYS        ? KVT_ERR_DENIED
           : e == ESRCH || e == EBADF                      ? KVT_ERR_CLOSED
           : e == EMFILE || e == ENFILE || e == ENOMEM     ? KVT_ERR_NOMEM
                                                           : KVT_ERR_IO;
}

/* The peer's fd, copied into this process (close-on-exec), or -1. */
static int peer_fd(const kvt_net_peer_region_t *r, kvt_status_t *st_p)
{
    int pidfd = pidfd_open(r->pid, 0);
    int fd = pidfd < 0 ? -1 : pidfd_getfd(pidfd, r->fd, 0);
    int e = errno;
    if (pidfd >= 0)
        close(pidfd);
    if (fd < 0) {
        kvt_log_debug("net peer map: no fd pid=%d fd=%d cause=\"%s\"", r->pid, r->fd, strerror(e));
        *st_p = errno_status(e);
    }
    return fd;
}

/* Seals before the size: once it cannot shrink, the size fstat reports
 * is a floor for as long as the file lives. */
static kvt_status_t check_file(int fd, const kvt_net_peer_region_t *r, const char **why)
{
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return *why = "not sealed against shrinking", KVT_ERR_DENIED;
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0 || fs.f_type != TMPFS_MAGIC)
        return *why = "not a tmpfs file", KVT_ERR_IO;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        return *why = "not a regular file", KVT_ERR_IO;
    if ((uint64_t)sb.st_ino != r->inode || sb.st_size < 0 || (uint64_t)sb.st_size != r->length)
        return *why = "not the region named", KVT_ERR_IO;
    return KVT_OK;
}

kvt_status_t kvt_net_peer_map_open(const kvt_net_peer_region_t *region, kvt_net_peer_map_t **map_p)
{
    if (!region || !map_p || region->pid <= 0 || region->fd < 0 || !region->length ||
        region->length > SIZE_MAX || region->base > UINT64_MAX - region->length)
        return KVT_ERR_INVALID;
    kvt_status_t st = KVT_OK;
    int fd = peer_fd(region, &st);
    if (fd < 0)
        return st;
    const char *why = NULL;
    st = check_file(fd, region, &why);
    void *p = MAP_FAILED;
    if (st == KVT_OK) {
        p = mmap(NULL, (size_t)region->length, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            why = strerror(errno);
            st = errno == ENOMEM ? KVT_ERR_NOMEM : KVT_ERR_IO;
        }
    }
    close(fd); /* the mapping keeps the file */
    kvt_net_peer_map_t *m = st == KVT_OK ? kvt_calloc("peer map", 1, sizeof(*m)) : NULL;
    if (st == KVT_OK && !m)
        st = KVT_ERR_NOMEM;
    if (st != KVT_OK) {
        if (p != MAP_FAILED)
            munmap(p, (size_t)region->length);
        kvt_log_debug("net peer map refused pid=%d fd=%d cause=\"%s\"", region->pid, region->fd,
                      why ? why : "no memory");
        return st;
    }
    m->region = *region;
    m->data = p;
    *map_p = m;
    return KVT_OK;
}

bool kvt_net_peer_region_same(const kvt_net_peer_region_t *a, const kvt_net_peer_region_t *b)
{
    return a->pid == b->pid && a->fd == b->fd && a->inode == b->inode && a->base == b->base &&
           a->length == b->length;
}

bool kvt_net_peer_map_is(const kvt_net_peer_map_t *map, const kvt_net_peer_region_t *region)
{
    return map && region && kvt_net_peer_region_same(&map->region, region);
}

kvt_status_t kvt_net_peer_map_read(const kvt_net_peer_map_t *map, void *local, uint64_t remote,
                                   size_t len)
{
    if (!map || (!local && len))
        return KVT_ERR_INVALID;
    uint64_t base = map->region.base, end = base + map->region.length;
    if (remote < base || remote > end || len > end - remote)
        return KVT_ERR_IO; /* not in the region: as an unmapped address */
    memcpy(local, map->data + (remote - base), len);
    return KVT_OK;
}

void kvt_net_peer_map_close(kvt_net_peer_map_t *map)
{
    if (!map)
        return;
    munmap((void *)map->data, (size_t)map->region.length);
    kvt_free(map);
}
