/* Tokenizer internals shared by engine/tokenizer*.c (not for other modules).
 *
 *   tokenizer.c         public API: file reading, tokenizer_config.json,
 *                       decode, lookups, FIM tokens, the encode driver
 *   tokenizer_load.c    tokenizer.json -> the structures below
 *   tokenizer_pre.c     UTF-8, added-token matching, normalizer check,
 *                       pre-tokenizer stages (PCRE2), byte-level stage
 *   tokenizer_bpe.c     hash maps (string -> id, pair -> merge) and the
 *                       BPE merge loop
 *
 * Everything here is built at load and read-only afterwards; encode keeps
 * its mutable state in a tok_ws_t of its own, so one tokenizer serves many
 * threads. */
#ifndef KVT_ENGINE_TOKENIZER_INT_H
#define KVT_ENGINE_TOKENIZER_INT_H

#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOK_MAX_STAGES 16   /* pre-tokenizers after flattening Sequences */
#define TOK_MAX_NESTING 8   /* Sequence inside Sequence */
#define TOK_MAX_PATTERN 65536 /* one Split pattern, bytes */
#define TOK_NONE UINT32_MAX

/* Per-id flags. */
enum {
    TOK_F_PRESENT = 1, /* the id names a token (ids may have holes) */
    TOK_F_ADDED = 2,   /* an added token: decodes to its content */
    TOK_F_SPECIAL = 4, /* a special added token */
};

/* String -> value map.  Values index caller-owned arrays off[]/len[] that
 * locate each key in arena; the map itself stores only hashes and values,
 * so it is built once the arena is complete. */
typedef struct {
    uint32_t *slots; /* value + 1; 0 = empty */
    uint32_t *hashes;
    uint32_t mask;
    uint32_t n;
    const char *arena;
    const uint32_t *off;
    const uint16_t *len;
} tok_strmap_t;

/* (left id, right id) -> (rank, merged id). */
typedef struct {
    uint64_t *keys; /* left << 32 | right; UINT64_MAX = empty */
    uint32_t *rank;
    uint32_t *merged;
    uint32_t mask;
    uint32_t n;
} tok_pairmap_t;

/* A growable byte buffer with a hard maximum. */
typedef struct {
    char *p;
    size_t len, cap, max;
} tok_buf_t;

typedef enum {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_behavior_t;

typedef enum { TOK_STAGE_SPLIT, TOK_STAGE_BYTELEVEL } tok_stage_kind_t;

/* One pre-tokenizer.  Split and Digits are TOK_STAGE_SPLIT (Digits is the
 * pattern \p{N}, Isolated or Contiguous); ByteLevel is always the last stage
 * and owns the GPT-2 regex when use_regex is set (re NULL otherwise). */
typedef struct {
    tok_stage_kind_t kind;
    pcre2_code *re;
    tok_behavior_t behavior;
    bool invert;
    bool add_prefix_space;
} tok_stage_t;

typedef struct {
    uint32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added_t;

/* Byte trie over added-token contents: leftmost-longest matching. */
typedef struct {
    int32_t child, sibling;
    int32_t added; /* index into tok->added, or -1 */
    uint8_t byte;
} tok_trie_node_t;

typedef struct {
    tok_trie_node_t *nodes;
    uint32_t n, cap;
    int32_t root[256];
} tok_trie_t;

struct kvt_tokenizer {
    uint32_t vocab_size; /* largest id + 1 */
    uint8_t *flags;      /* [vocab_size] TOK_F_* */
    /* What each id decodes to (raw bytes; content for added tokens). */
    tok_buf_t dec;
    uint32_t *dec_off;
    uint16_t *dec_len;
    /* Model vocabulary strings (byte-level form), by id. */
    tok_buf_t vs;
    uint32_t *vs_off;
    uint16_t *vs_len;
    tok_strmap_t vocab_map; /* model vocab string -> id */
    tok_pairmap_t merges;
    uint32_t byte_id[256]; /* id of each byte's byte-level character */
    bool ignore_merges;
    bool fuse_unk;
    uint32_t unk_id; /* TOK_NONE without unk_token */

    /* Added tokens, in file order; contents in added_text. */
    tok_added_t *added;
    uint32_t n_added;
    uint32_t n_new_added; /* added tokens not in the model vocabulary */
    tok_buf_t added_text;
    uint32_t *added_off;
    uint16_t *added_len;
    tok_strmap_t added_map; /* content -> index into added */
    tok_trie_t trie_raw;    /* tokens matched on the input (normalized false) */
    tok_trie_t trie_norm;   /* tokens matched after the normalizer */
    pcre2_code *word_re;    /* \w of Rust's regex, for single_word */

    bool nfc;
    pcre2_code *nfc_re; /* characters that may change under NFC */

    tok_stage_t stages[TOK_MAX_STAGES];
    int n_stages;

    bool add_bos, has_bos, has_eos;
    uint32_t bos, eos;
};

/* A piece of text: offset and length into some buffer, and a flag. */
typedef struct {
    size_t off, len;
    bool flag;
} tok_span_t;

typedef struct {
    tok_span_t *v;
    size_t n, cap;
} tok_spans_t;

typedef struct {
    int32_t prev, next;
    uint32_t id;
    bool gone;
} tok_sym_t;

typedef struct {
    uint32_t rank, pos, merged;
} tok_merge_t;

/* encode's working state: one per call. */
typedef struct {
    const kvt_tokenizer_t *tok;
    unsigned flags;
    uint32_t *ids; /* caller's buffer */
    size_t cap, n; /* n counts past cap, to report the size needed */
    pcre2_match_data *md;
    tok_spans_t spans[2], matches;
    tok_buf_t scratch; /* prefix-space copies, ignore_merges lookups */
    tok_sym_t *sym;
    size_t sym_cap;
    tok_merge_t *heap;
    size_t heap_n, heap_cap;
} tok_ws_t;

/* --- tokenizer_bpe.c --- */
kvt_status_t tok_buf_append(tok_buf_t *b, const void *p, size_t n, const char *what);
void tok_buf_free(tok_buf_t *b);
uint32_t tok_hash(const char *s, size_t n);
kvt_status_t tok_strmap_init(tok_strmap_t *m, uint32_t n_max, const char *arena,
                             const uint32_t *off, const uint16_t *len);
/* KVT_ERR_EXISTS (nothing inserted) if the key is already there. */
kvt_status_t tok_strmap_put(tok_strmap_t *m, uint32_t value);
uint32_t tok_strmap_get(const tok_strmap_t *m, const char *s, size_t n);
void tok_strmap_free(tok_strmap_t *m);
kvt_status_t tok_pairmap_init(tok_pairmap_t *m, uint32_t n_max);
/* A later merge of the same pair replaces the earlier (as HF's HashMap). */
void tok_pairmap_put(tok_pairmap_t *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged);
bool tok_pairmap_get(const tok_pairmap_t *m, uint32_t a, uint32_t b, uint32_t *rank_p,
                     uint32_t *merged_p);
void tok_pairmap_free(tok_pairmap_t *m);
/* BPE over the bytes of one pre-token; ids appended through tok_ws_emit. */
kvt_status_t tok_bpe(tok_ws_t *ws, const uint8_t *s, size_t n);
void tok_ws_emit(tok_ws_t *ws, uint32_t id);

/* --- tokenizer_pre.c --- */
bool tok_utf8_valid(const char *s, size_t n);
/* Decode one code point of valid UTF-8 at s; *len_p its byte length. */
uint32_t tok_utf8_decode(const char *s, size_t *len_p);
size_t tok_utf8_encode(uint32_t cp, char *out);
/* GPT-2 bytes_to_unicode and its inverse (-1 for unmapped code points). */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);
kvt_status_t tok_regex_compile(const char *pat, size_t len, bool literal, const char *field,
                               pcre2_code **re_p);
kvt_status_t tok_trie_add(tok_trie_t *t, const char *s, size_t n, int32_t added);
void tok_trie_free(tok_trie_t *t);
kvt_status_t tok_spans_push(tok_spans_t *v, size_t off, size_t len, bool flag);
/* Added tokens, normalizer, pre-tokenizers and BPE over text[0..len). */
kvt_status_t tok_encode_text(tok_ws_t *ws, const char *text, size_t len);

/* --- tokenizer_load.c --- */
kvt_status_t tok_load_json(kvt_tokenizer_t *tok, const char *json, size_t len);
kvt_status_t tok_load_config(kvt_tokenizer_t *tok, const char *json, size_t len);
void tok_free_parts(kvt_tokenizer_t *tok);

#endif
