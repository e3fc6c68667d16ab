/* Monotonic time for latencies and timeouts (CLOCK_MONOTONIC). */
#ifndef KVT_COMMON_TIME_H
#define KVT_COMMON_TIME_H

#include <stdint.h>

uint64_t kvt_time_ns(void);

static inline double kvt_time_s(void) { return (double)kvt_time_ns() * 1e-9; }

#endif
