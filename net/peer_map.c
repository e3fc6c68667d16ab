/* net same-host mappings: map a same-host peer's sealed memfd region
 * (common/alloc.h, kvt_alloc_shared) read-only into this process, and copy
 * out of it with memcpy.
 *
 * Why: kvt_net_local_read (net/peer_read.c) makes the kernel walk and pin
 * the peer's pages on every call; a mapping made once lets each later read
 * run at memcpy speed, about twice process_vm_readv's on the benchmark
 * machine (bench/RESULTS.md 2026-11-23), with no system call per block.
 *
 * Why it is safe: opening /proc/PID/fd/FD needs the same ptrace permission
 * as process_vm_readv, so it reads nothing a process of that user could
 * not read already.  The file must be the one the peer named (inode and
 * size) and sealed against shrinking: a file that shrank under the mapping
 * would make loads from it fault (SIGBUS), and a hostile peer must not be
 * able to do that.  A slot rewritten after its lease is caught by the
 * caller's checksums (invariant 3), as with process_vm_readv.
 *
 * Ownership: a map holds the peer's region alive (the pages stay while
 * mapped, even after the peer exits), so its owner closes it when the
 * connection ends or the peer names another region.
 *
 * Failure: kvt_net_peer_map_open gives KVT_ERR_DENIED (no permission, or
 * the file is not sealed), KVT_ERR_CLOSED (no such process or fd),
 * KVT_ERR_IO (another file, or it cannot be mapped); the caller falls back
 * to kvt_net_local_read.  kvt_net_peer_map_read gives KVT_ERR_IO for a
 * range outside the region. */
#include "net/net.h"

#include "common/alloc.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct kvt_net_peer_map {
    kvt_net_peer_region_t region;
    const uint8_t *data; /* region.length bytes, read-only */
};

static kvt_status_t open_status(int e)
{
    return e == EACCES || e == EPERM ? KVT_ERR_DENIED
           : e == ENOENT || e == ESRCH ? KVT_ERR_CLOSED
                                       : KVT_ERR_IO;
}

/* The file must be the peer's named region and unable to shrink. */
static kvt_status_t check_file(int fd, const kvt_net_peer_region_t *r, const char **why)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        return *why = "fstat failed", KVT_ERR_IO;
    if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_ino != r->inode ||
        sb.st_size < 0 || (uint64_t)sb.st_size != r->length)
        return *why = "not the region named", KVT_ERR_IO;
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return *why = "not sealed against shrinking", KVT_ERR_DENIED;
    return KVT_OK;
}

kvt_status_t kvt_net_peer_map_open(const kvt_net_peer_region_t *region, kvt_net_peer_map_t **map_p)
{
    if (!region || !map_p || region->pid <= 0 || region->fd < 0 || !region->length ||
        region->length > SIZE_MAX || region->base > UINT64_MAX - region->length)
        return KVT_ERR_INVALID;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd/%d", region->pid, region->fd);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        kvt_log_debug("net peer map not opened path=%s cause=\"%s\"", path, strerror(e));
        return open_status(e);
    }
    const char *why = NULL;
    kvt_status_t st = check_file(fd, region, &why);
    void *p = MAP_FAILED;
    if (st == KVT_OK) {
        p = mmap(NULL, (size_t)region->length, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            why = strerror(errno);
            st = KVT_ERR_IO;
        }
    }
    close(fd); /* the mapping keeps the file */
    kvt_net_peer_map_t *m = st == KVT_OK ? kvt_calloc("peer map", 1, sizeof(*m)) : NULL;
    if (st == KVT_OK && !m)
        st = KVT_ERR_NOMEM;
    if (st != KVT_OK) {
        if (p != MAP_FAILED)
            munmap(p, (size_t)region->length);
        kvt_log_debug("net peer map refused path=%s cause=\"%s\"", path, why ? why : "no memory");
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
