/* Text for kvt_status_t codes. */
#include "common/status.h"

const char *kvt_status_str(kvt_status_t status)
{
    switch (status) {
    case KVT_OK: return "ok";
    case KVT_ERR_INVALID: return "invalid argument or input";
    case KVT_ERR_NOMEM: return "out of memory";
    case KVT_ERR_IO: return "i/o error";
    case KVT_ERR_NOT_FOUND: return "not found";
    case KVT_ERR_CORRUPT: return "corrupt data";
    case KVT_ERR_FULL: return "capacity exhausted";
    case KVT_ERR_NO_PARENT: return "parent block not resident";
    case KVT_ERR_MISMATCH: return "layout or model fingerprint mismatch";
    case KVT_ERR_TOO_LARGE: return "length exceeds bound";
    case KVT_ERR_TRUNCATED: return "truncated input";
    case KVT_ERR_BUSY: return "busy";
    case KVT_ERR_AGAIN: return "try again";
    case KVT_ERR_CLOSED: return "closed";
    case KVT_ERR_USAGE: return "usage error";
    case KVT_ERR_EXISTS: return "already present";
    case KVT_ERR_DENIED: return "not permitted";
    }
    return "unknown status";
}
