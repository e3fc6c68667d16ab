/* Tokenizer: Hugging Face tokenizer.json (byte-level BPE) in C.
 *
 * Supported, as found in Llama 3, Qwen2, DeepSeek-Coder and StarCoder
 * files: normalizer null or NFC (see the .c file for what NFC does here),
 * pre_tokenizer ByteLevel (with or without its own regex) or a Sequence of
 * Split (regex, through PCRE2 with UTF and UCP), Digits and ByteLevel;
 * model BPE with vocab and merges (either "a b" strings or ["a","b"]
 * pairs), ignore_merges; added_tokens (special or not); decoder ByteLevel.
 * Anything else is rejected at load with a message naming the field.
 * tokenizer_config.json, when given, supplies add_bos_token and bos/eos
 * token names.
 *
 * encode() gives exactly what Hugging Face tokenizers gives for
 * `tok.encode(text, add_special_tokens=False).ids`: added tokens found in
 * the text are split out first (special ones only with
 * KVT_TOK_PARSE_SPECIAL), the rest is normalized, pre-split and BPE-merged.
 * decode() is the inverse for byte-level tokens: decode(encode(x)) == x for
 * any bytes x that are valid UTF-8.
 *
 * The tokenizer is immutable after load and safe to use from many threads.
 * All input files are untrusted: sizes are bounded, malformed JSON or
 * inconsistent vocab/merges give KVT_ERR_INVALID with a log line naming the
 * field; nothing crashes. */
#ifndef KVT_ENGINE_TOKENIZER_H
#define KVT_ENGINE_TOKENIZER_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_TOK_MAX_FILE (256u << 20) /* tokenizer.json size bound */
#define KVT_TOK_MAX_VOCAB (1u << 22)
#define KVT_TOK_MAX_TOKEN_BYTES 1024  /* one token's text */
#define KVT_TOK_MAX_TEXT (256u << 20) /* encode: text size bound */

typedef struct kvt_tokenizer kvt_tokenizer_t;

enum {
    KVT_TOK_PARSE_SPECIAL = 1u << 0, /* encode: special added tokens in text are tokens */
    KVT_TOK_SKIP_SPECIAL = 1u << 1,  /* decode: leave special tokens out */
};

/* FIM control tokens found in the vocabulary (DESIGN.md section 5): the
 * StarCoder `<fim_prefix>` family, Qwen `<|fim_prefix|>`, DeepSeek
 * `<｜fim▁begin｜>`/`<｜fim▁hole｜>`/`<｜fim▁end｜>`, CodeLlama `<PRE>`. */
typedef struct {
    bool found;
    uint32_t pre, suf, mid;
    bool has_eot;
    uint32_t eot; /* <|endoftext|>, <|fim_pad|> style end token, if any */
} kvt_fim_tokens_t;

/* Load from a tokenizer.json path, and optionally tokenizer_config.json
 * (NULL or a missing file: defaults).  The caller destroys *tok_p. */
kvt_status_t kvt_tokenizer_load(const char *json_path, const char *config_path,
                                kvt_tokenizer_t **tok_p);
/* Same from memory (the fuzz target and embedded tokenizers use this).
 * `config_json` may be NULL. */
kvt_status_t kvt_tokenizer_load_mem(const char *json, size_t len, const char *config_json,
                                    size_t config_len, kvt_tokenizer_t **tok_p);
void kvt_tokenizer_destroy(kvt_tokenizer_t *tok);

/* Encode len bytes of text into ids[cap]; *n_p = the number of ids.
 * KVT_ERR_TOO_LARGE if cap is short (*n_p then holds the count needed, and
 * ids[] the first cap ids), or if len exceeds KVT_TOK_MAX_TEXT (*n_p = 0).
 * KVT_ERR_INVALID if the text is not valid UTF-8.  KVT_ERR_FULL if a
 * pre-tokenizer regex ran out of PCRE2's match limits (a pathological
 * pattern from the file); KVT_ERR_NOMEM. */
kvt_status_t kvt_tokenizer_encode(const kvt_tokenizer_t *tok, const char *text, size_t len,
                                  unsigned flags, uint32_t *ids, size_t cap, size_t *n_p);
/* Decode ids into out[cap] (bytes, not NUL-terminated); *len_p = bytes
 * written, or needed with KVT_ERR_TOO_LARGE.  KVT_ERR_INVALID for an id
 * outside the vocabulary. */
kvt_status_t kvt_tokenizer_decode(const kvt_tokenizer_t *tok, const uint32_t *ids, size_t n,
                                  unsigned flags, char *out, size_t cap, size_t *len_p);
/* The bytes of one token (raw bytes after byte-level decoding; the token's
 * own text for added tokens).  NULL for an id outside the vocabulary. */
const char *kvt_tokenizer_token_bytes(const kvt_tokenizer_t *tok, uint32_t id, size_t *len_p);

/* Id of a token given its vocabulary string (e.g. "<|fim_prefix|>"), or -1. */
int64_t kvt_tokenizer_find(const kvt_tokenizer_t *tok, const char *token);
/* Number of ids (largest id + 1, added tokens included). */
uint32_t kvt_tokenizer_vocab_size(const kvt_tokenizer_t *tok);
bool kvt_tokenizer_is_special(const kvt_tokenizer_t *tok, uint32_t id);
/* From tokenizer_config.json: add_bos_token and the bos token's id. */
bool kvt_tokenizer_add_bos(const kvt_tokenizer_t *tok, uint32_t *bos_p);
/* The eos token of tokenizer_config.json, if any. */
bool kvt_tokenizer_eos(const kvt_tokenizer_t *tok, uint32_t *eos_p);
void kvt_tokenizer_fim_tokens(const kvt_tokenizer_t *tok, kvt_fim_tokens_t *fim_p);

#endif
