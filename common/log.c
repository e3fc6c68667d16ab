/* Logging to stderr.  One fprintf per line so concurrent lines do not
 * interleave (stdio locks the stream for the duration of the call). */
#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Atomic int g_level = KVT_LOG_WARN;

static const char *const g_names[] = {"error", "warn", "info", "debug"};

void kvt_log_set_level(kvt_log_level_t level)
{
    atomic_store_explicit(&g_level, (int)level, memory_order_relaxed);
}

kvt_log_level_t kvt_log_get_level(void)
{
    return (kvt_log_level_t)atomic_load_explicit(&g_level, memory_order_relaxed);
}

kvt_status_t kvt_log_level_parse(const char *name, kvt_log_level_t *level_p)
{
    for (int i = 0; i < 4; i++) {
        if (name && strcmp(name, g_names[i]) == 0) {
            *level_p = (kvt_log_level_t)i;
            return KVT_OK;
        }
    }
    return KVT_ERR_INVALID;
}

void kvt_log_write(kvt_log_level_t level, const char *fmt, ...)
{
    if ((int)level > atomic_load_explicit(&g_level, memory_order_relaxed))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fprintf(stderr, "%s ts=%lld.%03ld %s\n", g_names[level], (long long)ts.tv_sec,
            ts.tv_nsec / 1000000, msg);
}
