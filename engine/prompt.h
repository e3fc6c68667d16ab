/* Prompt formats: plain, FIM (PSM) and EFIM token sequences (DESIGN.md
 * sections 1 and 4).
 *
 *   plain  [bos] prefix
 *   fim    [bos] PRE prefix SUF suffix MID
 *   efim   [bos] PRE prefix0 SUF suffix MID inc
 *
 * where, for EFIM, prefix0 is the first anchor_len bytes of the prefix (the
 * text as it was when the file was first seen) and inc is the rest (what
 * the user typed since).  Each text piece is tokenized on its own
 * ("fragment tokenization"), so everything up to MID is the same token
 * sequence in every round of a session and its KV blocks are reused.
 * Special-token text inside user text is NOT parsed as special tokens: a
 * user cannot forge a control token.
 *
 * `stable_tokens` is the length of the part that later requests of the same
 * session share: up to and including MID for EFIM, the prefix part for FIM
 * and plain. */
#ifndef KVT_ENGINE_PROMPT_H
#define KVT_ENGINE_PROMPT_H

#include "common/status.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    KVT_FORMAT_PLAIN = 0,
    KVT_FORMAT_FIM = 1,
    KVT_FORMAT_EFIM = 2,
} kvt_prompt_format_t;

typedef struct {
    kvt_prompt_format_t format;
    const char *prefix; /* text before the cursor */
    size_t prefix_len;
    const char *suffix; /* text after it; NULL = none */
    size_t suffix_len;
    size_t anchor_len;  /* efim: bytes of prefix that are prefix0 (<= prefix_len) */
    bool add_bos;
    uint32_t bos;
} kvt_prompt_t;

/* "plain" | "fim" | "efim"; KVT_ERR_INVALID otherwise. */
kvt_status_t kvt_prompt_format_parse(const char *name, kvt_prompt_format_t *format_p);
const char *kvt_prompt_format_name(kvt_prompt_format_t format);

/* Resolve FIM tokens: `spec` "PRE,SUF,MID" names three vocabulary strings;
 * NULL or "" takes the ones the tokenizer declares.  KVT_ERR_NOT_FOUND when
 * the model has none (plain prompts still work). */
kvt_status_t kvt_prompt_fim_tokens(const kvt_tokenizer_t *tok, const char *spec,
                                   kvt_fim_tokens_t *fim_p);

/* Build the token sequence into ids[cap]; *n_p = its length (or the length
 * needed, with KVT_ERR_TOO_LARGE); *stable_p = stable_tokens (may be NULL).
 * fim may be NULL for plain prompts.  KVT_ERR_INVALID: anchor past the
 * prefix, FIM/EFIM without FIM tokens, text that is not UTF-8. */
kvt_status_t kvt_prompt_build(const kvt_tokenizer_t *tok, const kvt_fim_tokens_t *fim,
                              const kvt_prompt_t *prompt, uint32_t *ids, size_t cap,
                              size_t *n_p, size_t *stable_p);

/* The ids generation stops at: the model's eos ids, the tokenizer's eos
 * and, when fim is given and found, the FIM end-of-text token; duplicates
 * once.  Writes at most cap ids; returns how many. */
size_t kvt_prompt_stop_ids(const kvt_model_config_t *cfg, const kvt_tokenizer_t *tok,
                           const kvt_fim_tokens_t *fim, uint32_t *ids, size_t cap);

#endif
