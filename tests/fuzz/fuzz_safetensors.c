/* Fuzz target for the safetensors reader (engine/safetensors.h).
 *
 * Whatever the input, kvt_st_open_mem must not crash, leak or read outside
 * the image, and must fail with one of its documented statuses leaving the
 * output pointer alone.  When it accepts, every promise of the header is
 * re-checked here independently of safetensors.c: each tensor lies inside
 * the data section and has the size its dtype and shape give, no two
 * non-empty tensors overlap, names are unique and sorted and found by
 * kvt_st_find; then every element of each (small) tensor is converted, so
 * a wrong bound shows up under AddressSanitizer.  Any violation aborts.
 *
 * Built with libFuzzer (clang -fsanitize=fuzzer, KVT_FUZZ_LIBFUZZER) and
 * with fuzz_safetensors_driver.c for compilers without it.  Rejections log
 * one line each, so the target turns logging off. */
#include "engine/safetensors.h"

#include "common/le.h"
#include "common/log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CONVERT_MAX 4096 /* elements converted per tensor */

static uint64_t elem_size(kvt_dtype_t d)
{
    if (d == KVT_DTYPE_F32)
        return 4;
    if (d == KVT_DTYPE_BF16 || d == KVT_DTYPE_F16)
        return 2;
    abort(); /* no other dtype may be accepted */
}

static void check_tensor(const kvt_st_file_t *f, const kvt_st_tensor_t *t, const uint8_t *data,
                         size_t size, uint64_t data_start)
{
    static float out[CONVERT_MAX];
    if (!t->name[0] || strlen(t->name) > KVT_ST_MAX_NAME || t->rank > KVT_ST_MAX_RANK)
        abort();
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->rank; d++)
        if (__builtin_mul_overflow(n, t->shape[d], &n))
            abort();
    if (n != t->n_elems || t->nbytes != n * elem_size(t->dtype))
        abort();
    if (t->offset > size - data_start || t->nbytes > size - data_start - t->offset)
        abort();
    if (t->data != data + data_start + t->offset)
        abort();
    if (kvt_st_find(f, t->name) != t)
        abort();
    uint64_t m = n < CONVERT_MAX ? n : CONVERT_MAX;
    kvt_st_to_f32(t, 0, m, out);
    if (n > m)
        kvt_st_to_f32(t, n - 1, 1, out); /* the last element too */
    if (t->dtype == KVT_DTYPE_F32 && m && memcmp(out, t->data + (n > m ? (n - 1) * 4 : 0), 4))
        abort();
}

static void check_accepted(const kvt_st_file_t *f, const uint8_t *data, size_t size)
{
    if (size < 8)
        abort();
    uint64_t hlen = kvt_le_get64(data);
    if (hlen > KVT_ST_MAX_HEADER || hlen > size - 8)
        abort();
    size_t n = kvt_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const kvt_st_tensor_t *t = kvt_st_at(f, i);
        check_tensor(f, t, data, size, 8 + hlen);
        if (i > 0 && strcmp(kvt_st_at(f, i - 1)->name, t->name) >= 0)
            abort();
        for (size_t j = 0; j < i && n <= 256; j++) {
            const kvt_st_tensor_t *u = kvt_st_at(f, j);
            if (t->nbytes && u->nbytes && t->offset < u->offset + u->nbytes &&
                u->offset < t->offset + t->nbytes)
                abort();
        }
    }
    if (kvt_st_at(f, n) != NULL || kvt_st_find(f, "__metadata__") != NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kvt_log_set_level((kvt_log_level_t)-1); /* below error: silent */
    kvt_st_file_t *const sentinel = (kvt_st_file_t *)(uintptr_t)0x5a5a;
    kvt_st_file_t *f = sentinel;
    kvt_status_t st = kvt_st_open_mem(data, size, "fuzz", &f);
    if (st == KVT_OK) {
        check_accepted(f, data, size);
        kvt_st_close(f);
        return 0;
    }
    if (f != sentinel)
        abort();
    if (st != KVT_ERR_INVALID && st != KVT_ERR_CORRUPT && st != KVT_ERR_TOO_LARGE &&
        st != KVT_ERR_TRUNCATED && st != KVT_ERR_NOMEM)
        abort();
    return 0;
}
