/* kvtier logging: one line per event, `key=value` fields, lowercase messages.
 *
 * Lines go to stderr as `LEVEL ts=<unix.ms> <message>`.  The level is set
 * once at start-up (--log-level / KVT_LOG_LEVEL) and read with a relaxed
 * atomic, so logging below the level costs one load and a branch. */
#ifndef KVT_COMMON_LOG_H
#define KVT_COMMON_LOG_H

#include "common/status.h"

typedef enum {
    KVT_LOG_ERROR = 0,
    KVT_LOG_WARN = 1,
    KVT_LOG_INFO = 2,
    KVT_LOG_DEBUG = 3,
} kvt_log_level_t;

void kvt_log_set_level(kvt_log_level_t level);
kvt_log_level_t kvt_log_get_level(void);

/* Parse "error|warn|info|debug"; KVT_ERR_INVALID on anything else. */
kvt_status_t kvt_log_level_parse(const char *name, kvt_log_level_t *level_p);

void kvt_log_write(kvt_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define kvt_log_error(...) kvt_log_write(KVT_LOG_ERROR, __VA_ARGS__)
#define kvt_log_warn(...) kvt_log_write(KVT_LOG_WARN, __VA_ARGS__)
#define kvt_log_info(...) kvt_log_write(KVT_LOG_INFO, __VA_ARGS__)
#define kvt_log_debug(...)                                \
    do {                                                  \
        if (kvt_log_get_level() >= KVT_LOG_DEBUG)         \
            kvt_log_write(KVT_LOG_DEBUG, __VA_ARGS__);    \
    } while (0)

#endif
