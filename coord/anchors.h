/* EFIM anchors (DESIGN.md sections 1 and 4, step 2): the coordinator's memory
 * of the `prefix0` each (tenant, model, suffix) was first seen with.
 *
 * An anchor maps (tenant, model, suffix) -> prefix0 text.  A request whose
 * prompt extends a stored prefix0 is rewritten as `<PRE> prefix0 <SUF> suffix
 * <MID> inc`, so every round of a session shares the KV of everything up to
 * <MID>.  Anchors are grouped by SHA-256 over the length-prefixed tenant,
 * model and suffix: one tenant's lookups can never reach another's anchors
 * (invariant 6), and only the digest of the suffix is kept, not its text.
 *
 * Ownership: the table owns copies of every prefix0; callers keep their
 * strings.  Bounds: at most max_anchors anchors and max_bytes bytes of
 * prefix0 text in all; adding past either evicts least-recently-used
 * anchors (a find that hits counts as a use).  The group hash table grows by
 * doubling up to a hard cap derived from max_anchors; a failed growth only
 * lengthens chains.
 *
 * Thread-safety: every call takes one internal mutex (SHA-256 is computed
 * outside it); HTTP threads may call concurrently.  create/destroy are not
 * concurrent with anything else on the same table.
 *
 * Failure: add fails with KVT_ERR_TOO_LARGE or KVT_ERR_NOMEM and then leaves
 * the table exactly as it was (it allocates before it evicts).  find never
 * fails; an internal error (SHA-256 context) reads as a miss. */
#ifndef KVT_COORD_ANCHORS_H
#define KVT_COORD_ANCHORS_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_anchors kvt_anchors_t;

/* Create an empty table.  max_anchors >= 1, max_bytes >= 1 (total prefix0
 * bytes held), else KVT_ERR_INVALID; KVT_ERR_NOMEM.  *anchors_p is set only
 * on success and released with kvt_anchors_destroy. */
kvt_status_t kvt_anchors_create(size_t max_anchors, size_t max_bytes, kvt_anchors_t **anchors_p);

/* Free the table and every prefix0 it holds.  NULL is a no-op. */
void kvt_anchors_destroy(kvt_anchors_t *anchors);

/* The anchor of (tenant, model, suffix) whose prefix0 is a byte prefix of
 * prompt[0..prompt_len) -- the longest such; it becomes most recently used.
 * true and *prefix0_len_p when found, false otherwise (*prefix0_len_p is
 * untouched).  tenant/model are NUL-terminated strings; suffix is bytes
 * (suffix_len 0 allows suffix == NULL, likewise prompt).  Borrows every
 * argument for the call only. */
bool kvt_anchors_find(kvt_anchors_t *a, const char *tenant, const char *model, const char *suffix,
                      size_t suffix_len, const char *prompt, size_t prompt_len,
                      size_t *prefix0_len_p);

/* Add an anchor with prefix0 = prompt[0..prompt_len), copied (a rebase adds
 * a new one beside the old; an identical existing one is only touched).
 * Evicts least-recently-used anchors, of any group, to stay within both
 * bounds.  KVT_ERR_TOO_LARGE when prompt_len > max_bytes (nothing stored,
 * nothing evicted); KVT_ERR_NOMEM (nothing stored, nothing evicted). */
kvt_status_t kvt_anchors_add(kvt_anchors_t *a, const char *tenant, const char *model,
                             const char *suffix, size_t suffix_len, const char *prompt,
                             size_t prompt_len);

typedef struct {
    uint64_t anchors; /* held now */
    uint64_t bytes;   /* prefix0 bytes held now */
    uint64_t hits;    /* finds that found an anchor */
    uint64_t misses;  /* finds that did not */
    uint64_t added;   /* anchors stored (touches of an identical one excluded) */
    uint64_t evicted; /* anchors evicted for either bound */
} kvt_anchors_stats_t;

/* A consistent snapshot of the counters (taken under the lock). */
void kvt_anchors_stats(kvt_anchors_t *a, kvt_anchors_stats_t *stats_p);

#endif
