/* kvtier status codes.
 *
 * Every fallible function returns kvt_status_t: KVT_OK (0) on success, a
 * negative code on failure.  Foreign errors (errno, RocksDB, UCX, CUDA) are
 * converted at the boundary and their cause is logged there, once. */
#ifndef KVT_COMMON_STATUS_H
#define KVT_COMMON_STATUS_H

typedef enum {
    KVT_OK = 0,
    KVT_ERR_INVALID = -1,     /* bad argument or malformed input */
    KVT_ERR_NOMEM = -2,       /* allocation failed */
    KVT_ERR_IO = -3,          /* file system or database I/O failed */
    KVT_ERR_NOT_FOUND = -4,   /* no such key / file / entry */
    KVT_ERR_CORRUPT = -5,     /* checksum or structure mismatch */
    KVT_ERR_FULL = -6,        /* capacity exhausted, nothing evictable */
    KVT_ERR_NO_PARENT = -7,   /* parent block absent: would break prefix closure */
    KVT_ERR_MISMATCH = -8,    /* wrong layout or model fingerprint */
    KVT_ERR_TOO_LARGE = -9,   /* a length exceeds its bound */
    KVT_ERR_TRUNCATED = -10,  /* input ended early */
    KVT_ERR_BUSY = -11,       /* resource pinned or in use */
    KVT_ERR_AGAIN = -12,      /* would block; retry later */
    KVT_ERR_CLOSED = -13,     /* object is shutting down */
    KVT_ERR_USAGE = -14,      /* command-line usage error */
    KVT_ERR_EXISTS = -15,     /* already present */
    KVT_ERR_DENIED = -16,     /* not permitted (by the kernel or a policy) */
} kvt_status_t;

/* Static, lowercase description of a status code; never NULL. */
const char *kvt_status_str(kvt_status_t status);

#endif
