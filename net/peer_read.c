/* net same-host reads: copy bytes straight out of a same-host peer's
 * memory with process_vm_readv(2), the system call UCX's cma transport is
 * built on, without an endpoint or an rkey.
 *
 * Why: over a same-host lane the block server's replies go through UCX
 * 1.13's shared-memory queue in 8 KiB fragments (a reply made of several
 * segments is never sent by cma), so each payload was copied into the
 * queue, out of it, and again into the caller's buffer.  A client reading
 * the server's pinned T1 memory itself makes one copy, into its
 * destination, and the server makes none (docs/net.md, "A pull").
 *
 * Why it is safe: the kernel allows the read only where the reader may
 * ptrace the peer (same user, and the Yama policy; UCX's cma sets
 * PR_SET_PTRACER_ANY under Yama scope 1, in every process that loads it),
 * so it reads nothing a process of that user could not read already.  It
 * writes only into the reader's own buffer.  What it read is checked by
 * the caller (block checksums, invariant 3): a stale address or a pid
 * that now names another process gives a failed block, never a wrong one.
 *
 * Failure: KVT_ERR_DENIED when the kernel refuses (EPERM: another user,
 * or a ptrace policy), KVT_ERR_CLOSED when no such process exists, and
 * KVT_ERR_IO when the range is not mapped there (EFAULT) or the read came
 * back short without an error. */
#include "net/net.h"

#include "common/log.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

kvt_status_t kvt_net_local_read(int pid, void *local, uint64_t remote, size_t len)
{
    if (pid <= 0 || (!local && len) || remote > UINT64_MAX - len)
        return KVT_ERR_INVALID;
    size_t done = 0;
    while (done < len) {
        struct iovec l = {.iov_base = (char *)local + done, .iov_len = len - done};
        struct iovec r = {.iov_base = (void *)(uintptr_t)(remote + done), .iov_len = len - done};
        ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (n > 0) {
            done += (size_t)n; /* short only at a page the peer has not mapped */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        int e = n < 0 ? errno : EFAULT; /* 0 bytes: nothing more there */
        kvt_status_t st = e == EPERM ? KVT_ERR_DENIED : e == ESRCH ? KVT_ERR_CLOSED : KVT_ERR_IO;
        kvt_log_debug("net local read failed pid=%d len=%zu done=%zu cause=\"%s\"", pid, len, done,
                      strerror(e));
        return st;
    }
    return KVT_OK;
}
