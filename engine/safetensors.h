/* safetensors: read and write the Hugging Face tensor file format.
 *
 * Format (https://github.com/huggingface/safetensors):
 *
 *     u64le  N            length of the JSON header
 *     N      header       {"NAME": {"dtype": "BF16", "shape": [..],
 *                          "data_offsets": [BEGIN, END]}, ...,
 *                          "__metadata__": {"k": "v"}}  (space padded)
 *     ...    data         tensors, row-major, little-endian; offsets are
 *                         relative to the first byte after the header
 *
 * The reader maps a file (or borrows a memory image, for fuzzing) and checks
 * everything before a tensor can be looked up: N <= KVT_ST_MAX_HEADER and
 * within the file, valid JSON with only whitespace after it, dtype one of
 * BF16/F16/F32 (others are rejected by name), rank <= KVT_ST_MAX_RANK, an
 * element count that does not overflow, END - BEGIN == elements * dtype
 * size, END within the data section, no two tensors overlapping and no name
 * twice.  Failures are KVT_ERR_INVALID, KVT_ERR_CORRUPT, KVT_ERR_TOO_LARGE
 * or KVT_ERR_TRUNCATED, logged once with the file and the tensor or field.
 *
 * The writer lays the header out first (tensors in the caller's order,
 * "__metadata__": {"format": "pt"} as PyTorch's save_file writes it, padded
 * with spaces to a multiple of 8 bytes like the Rust implementation), so
 * every tensor's file offset is known before any data exists: callers then
 * put bytes at any offset of any tensor from any thread (pwrite), and the
 * whole tensor set never has to be in memory.  The file is written under
 * PATH.partial and renamed to PATH by kvt_st_writer_finish once every byte
 * of every tensor has been put. */
#ifndef KVT_ENGINE_SAFETENSORS_H
#define KVT_ENGINE_SAFETENSORS_H

#include "common/status.h"
#include "kvstore/block.h" /* kvt_dtype_t */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_ST_MAX_HEADER (100u * 1000u * 1000u) /* as the Rust reader */
#define KVT_ST_MAX_RANK 4
#define KVT_ST_MAX_NAME 1024

/* One tensor of an open file.  Read-only; valid until the file is closed. */
typedef struct {
    const char *name;      /* NUL-terminated */
    kvt_dtype_t dtype;     /* KVT_DTYPE_F32, KVT_DTYPE_BF16 or KVT_DTYPE_F16 */
    uint32_t rank;
    uint64_t shape[KVT_ST_MAX_RANK];
    uint64_t n_elems;      /* product of shape (1 for rank 0) */
    uint64_t offset;       /* of the data, from the start of the data section */
    uint64_t nbytes;       /* n_elems * dtype size */
    const uint8_t *data;   /* nbytes bytes inside the mapping */
} kvt_st_tensor_t;

typedef struct kvt_st_file kvt_st_file_t;

/* Map and check the file at path.  The caller closes *file_p.  I/O errors
 * are KVT_ERR_IO / KVT_ERR_NOT_FOUND; format errors as in the file
 * comment. */
kvt_status_t kvt_st_open(const char *path, kvt_st_file_t **file_p);
/* Check an image already in memory; the file borrows data, which must
 * outlive it.  `what` names it in log lines. */
kvt_status_t kvt_st_open_mem(const void *data, size_t len, const char *what,
                             kvt_st_file_t **file_p);
void kvt_st_close(kvt_st_file_t *file);

/* The path (or `what`) the file was opened with. */
const char *kvt_st_path(const kvt_st_file_t *file);
/* Tensors, sorted by name (strcmp order). */
size_t kvt_st_count(const kvt_st_file_t *file);
const kvt_st_tensor_t *kvt_st_at(const kvt_st_file_t *file, size_t i);
/* NULL when there is no tensor of that name. */
const kvt_st_tensor_t *kvt_st_find(const kvt_st_file_t *file, const char *name);

/* "F32" / "BF16" / "F16"; NULL for other dtypes. */
const char *kvt_st_dtype_name(kvt_dtype_t dtype);

/* Convert elements [first, first + n) of a tensor to f32.  Cannot fail:
 * the caller keeps first + n <= t->n_elems. */
void kvt_st_to_f32(const kvt_st_tensor_t *t, uint64_t first, uint64_t n, float *out);

/* Scalar conversions.  f16 handles subnormals, infinities and NaN
 * exactly; float -> bf16/f16 round to nearest even (NaN stays NaN). */
float kvt_f16_to_f32(uint16_t h);
float kvt_bf16_to_f32(uint16_t b);
uint16_t kvt_f32_to_f16(float f);
uint16_t kvt_f32_to_bf16(float f);

/* --- writer --- */

typedef struct {
    const char *name;  /* borrowed until kvt_st_writer_create returns */
    kvt_dtype_t dtype;
    uint32_t rank;
    uint64_t shape[KVT_ST_MAX_RANK];
} kvt_st_spec_t;

typedef struct kvt_st_writer kvt_st_writer_t;

/* Create PATH.partial and write its header for the tensors in `specs`
 * (data in that order).  Fails with KVT_ERR_INVALID on a bad spec or a
 * duplicate name, KVT_ERR_EXISTS if PATH exists, KVT_ERR_IO otherwise. */
kvt_status_t kvt_st_writer_create(const char *path, const kvt_st_spec_t *specs, size_t n,
                                  kvt_st_writer_t **writer_p);
/* Put len bytes at byte offset `at` of tensor i.  Thread-safe for
 * disjoint ranges.  KVT_ERR_INVALID if the range is outside the tensor,
 * KVT_ERR_IO if the write fails. */
kvt_status_t kvt_st_writer_put(kvt_st_writer_t *w, size_t i, uint64_t at, const void *bytes,
                               size_t len);
/* Bytes of tensor i, and of the whole file. */
uint64_t kvt_st_writer_tensor_bytes(const kvt_st_writer_t *w, size_t i);
uint64_t kvt_st_writer_file_bytes(const kvt_st_writer_t *w);
/* Check that every byte was put, close and rename PATH.partial to PATH;
 * destroys the writer whatever the outcome (KVT_ERR_TRUNCATED when bytes
 * are missing, KVT_ERR_IO). */
kvt_status_t kvt_st_writer_finish(kvt_st_writer_t *w);
/* Abandon: close and remove PATH.partial.  NULL is a no-op. */
void kvt_st_writer_destroy(kvt_st_writer_t *w);

#endif
