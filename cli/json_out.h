/* JSON output for --json: helpers over cJSON so every command prints the
 * same shapes (identity, tier stats) and exactly one object on stdout. */
#ifndef KVT_CLI_JSON_OUT_H
#define KVT_CLI_JSON_OUT_H

#include "kvstore/events.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Print obj unformatted on one line of stdout and delete it (obj may be
 * NULL after a failed allocation).  Returns 0 on success, 1 on failure. */
int kvt_json_print(cJSON *obj);

/* Add raw bytes (generated text) as a JSON string: invalid UTF-8 and NUL
 * bytes become U+FFFD, one per byte, so the output is always valid JSON
 * text (cJSON strings cannot hold NUL).  false on allocation failure. */
bool kvt_json_add_bytes_as_text(cJSON *obj, const char *name, const char *bytes, size_t len);

/* Counters go out as JSON numbers; exact below 2^53, which byte and block
 * counts of one node stay under. */
void kvt_json_add_u64(cJSON *obj, const char *name, uint64_t value);

/* {"dtype","n_layers","n_kv_heads","head_dim","block_tokens",
 *  "payload_bytes","fingerprint"} (fingerprint in full hex). */
cJSON *kvt_json_identity(const kvt_block_identity_t *id);

/* {"state","blocks","bytes","capacity_bytes","hits","misses","puts",
 *  "evictions","corrupt","no_parent","pinned"}; state says where the
 * figures come from ("not running", "on disk", "running"). */
cJSON *kvt_json_tier_stats(const kvt_tier_stats_t *stats, const char *state);

/* The machine a benchmark ran on: {"cpu","cores","mem_bytes","kernel",
 * "filesystem" (of dir, from statfs),"date" (UTC, ISO 8601)}. */
cJSON *kvt_json_machine(const char *dir);

#endif
