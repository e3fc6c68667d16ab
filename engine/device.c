/* Device dispatch: the one engine file that knows whether CUDA is built in
 * (DESIGN.md section 2).  With KVT_HAVE_CUDA it routes GPU engines to
 * forward_cuda.c and gpu_weights.c; without it a GPU engine cannot be
 * created (kvt_device_parse and kvt_dev_create answer KVT_ERR_NOT_FOUND)
 * and only the CPU branches below are reachable.
 *
 * The CPU branches are exactly the code the CPU engine ran before devices
 * existed: kvt_fwd_pass, kvt_kv_pool_put, header + pointer into the slot.
 *
 * It also holds the GPU reference measurements of `kvtier bench engine`
 * (engine/device.h), so the CLI needs no CUDA header either. */
#include "engine/device.h"
#include "engine/engineInt.h"

#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef KVT_HAVE_CUDA
#include "engine/gpu_engineInt.h"
#endif

void kvt_device_name(kvt_device_t d, char *text, size_t cap)
{
    if (KVT_DEVICE_IS_CUDA(d))
        snprintf(text, cap, "cuda:%d", KVT_DEVICE_CUDA_INDEX(d));
    else
        snprintf(text, cap, "cpu");
}

kvt_status_t kvt_device_parse(const char *text, kvt_device_t *device_p)
{
    if (text && strcmp(text, "cpu") == 0) {
        *device_p = KVT_DEVICE_CPU;
        return KVT_OK;
    }
    long n = 0;
    if (text && strcmp(text, "cuda") != 0) {
        char *end = NULL;
        if (strncmp(text, "cuda:", 5) != 0 || text[5] < '0' || text[5] > '9') {
            kvt_log_error("bad device value=\"%s\" expected=cpu|cuda:N", text);
            return KVT_ERR_INVALID;
        }
        errno = 0;
        n = strtol(text + 5, &end, 10);
        if (errno || *end || n > 1023) {
            kvt_log_error("bad device value=\"%s\" expected=cpu|cuda:N", text);
            return KVT_ERR_INVALID;
        }
    } else if (!text) {
        return KVT_ERR_INVALID;
    }
#ifdef KVT_HAVE_CUDA
    int count = kvt_gpu_device_count();
    if (n >= count) {
        kvt_log_error("device not available device=%s cuda_devices=%d", text, count);
        return KVT_ERR_NOT_FOUND;
    }
    *device_p = KVT_DEVICE_CUDA(n);
    return KVT_OK;
#else
    kvt_log_error("device not available in this build (built without CUDA) device=%s "
                  "available=cpu", text);
    return KVT_ERR_NOT_FOUND;
#endif
}

/* --- engine dispatch --- */

kvt_status_t kvt_dev_create(kvt_engine_t *e, uint32_t n_blocks)
{
#ifdef KVT_HAVE_CUDA
    return kvt_gpu_engine_create(e, n_blocks);
#else
    (void)n_blocks;
    kvt_log_error("engine: built without CUDA device=cuda:%d", KVT_DEVICE_CUDA_INDEX(e->device));
    return KVT_ERR_NOT_FOUND;
#endif
}

void kvt_dev_destroy(kvt_engine_t *e)
{
#ifdef KVT_HAVE_CUDA
    kvt_gpu_engine_destroy(e);
#else
    (void)e;
#endif
}

kvt_status_t kvt_dev_pass(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups,
                          size_t n_rows, float *logits, size_t logits_row0, size_t n_logits)
{
#ifdef KVT_HAVE_CUDA
    if (e->gpu)
        return kvt_gpu_engine_pass(e, groups, n_groups, n_rows, logits, logits_row0, n_logits);
#endif
    kvt_fwd_pass(e, groups, n_groups, n_rows, logits, logits_row0, n_logits);
    return KVT_OK;
}

kvt_status_t kvt_dev_pool_put_batch(kvt_engine_t *e, const kvt_block_header_t *hdrs,
                                    const void *const *payloads, size_t n, kvt_status_t *st)
{
#ifdef KVT_HAVE_CUDA
    if (e->gpu)
        return kvt_gpu_engine_put_batch(e, hdrs, payloads, n, st);
#endif
    for (size_t i = 0; i < n; i++)
        st[i] = kvt_kv_pool_put(&e->pool, &e->identity, &hdrs[i], payloads[i],
                                hdrs[i].payload_len);
    return KVT_OK;
}

kvt_status_t kvt_dev_seq_blocks(const kvt_engine_t *e, const kvt_seq_t *s, size_t from,
                                size_t n, kvt_block_header_t *hdrs, const void **payloads)
{
#ifdef KVT_HAVE_CUDA
    if (e->gpu)
        return kvt_gpu_engine_seq_blocks(e, s, from, n, hdrs, payloads);
#endif
    for (size_t i = from; i < from + n; i++) {
        const kvt_block_key_t *parent = i ? &s->keys[i - 1] : &s->root;
        const uint8_t *payload = kvt_kv_pool_data(&e->pool, s->slots[i]);
        kvt_status_t st = kvt_block_header_make(&hdrs[i - from], &e->identity, parent,
                                                (uint32_t)i, s->tokens + i * e->B, payload);
        if (st != KVT_OK)
            return st;
        payloads[i - from] = payload;
    }
    return KVT_OK;
}

size_t kvt_dev_stage_blocks(const kvt_engine_t *e)
{
#ifdef KVT_HAVE_CUDA
    if (e->gpu)
        return kvt_gpu_engine_stage_blocks(e);
#endif
    (void)e;
    return 0;
}

void *kvt_dev_stage_buf(const kvt_engine_t *e, size_t i)
{
#ifdef KVT_HAVE_CUDA
    if (e->gpu)
        return kvt_gpu_engine_stage_buf(e, i);
#endif
    (void)e;
    (void)i;
    return NULL;
}

kvt_status_t kvt_dev_tail_copy(const kvt_engine_t *e, uint32_t slot, uint32_t t, void *host,
                               bool to_host)
{
#ifdef KVT_HAVE_CUDA
    if (e->gpu)
        return kvt_gpu_engine_tail_copy(e, slot, t, host, to_host);
#endif
    size_t section = (size_t)e->B * e->kv_row * e->kv_size;
    size_t rows = (size_t)t * e->kv_row * e->kv_size;
    uint8_t *d = kvt_kv_pool_data(&e->pool, slot), *h = host;
    for (size_t i = 0; i < 2 * (size_t)e->cfg.n_layers; i++) {
        if (to_host)
            memcpy(h + i * rows, d + i * section, rows);
        else
            memcpy(d + i * section, h + i * rows, rows);
    }
    return KVT_OK;
}

/* --- bench references (engine/device.h) --- */

bool kvt_device_have_cuda(void)
{
#ifdef KVT_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

kvt_status_t kvt_device_describe(kvt_device_t d, char *text, size_t cap)
{
#ifdef KVT_HAVE_CUDA
    if (KVT_DEVICE_IS_CUDA(d)) {
        kvt_gpu_describe(KVT_DEVICE_CUDA_INDEX(d), text, cap);
        return KVT_OK;
    }
#endif
    kvt_device_name(d, text, cap);
    return KVT_DEVICE_IS_CUDA(d) ? KVT_ERR_NOT_FOUND : KVT_OK;
}

kvt_status_t kvt_device_ref_gemm(kvt_device_t d, size_t m, size_t k, size_t n, double *tflops_p)
{
#ifdef KVT_HAVE_CUDA
    if (KVT_DEVICE_IS_CUDA(d))
        return kvt_gpu_ref_gemm(KVT_DEVICE_CUDA_INDEX(d), m, k, n, tflops_p);
#endif
    (void)m, (void)k, (void)n, (void)tflops_p;
    return KVT_ERR_NOT_FOUND;
}

kvt_status_t kvt_device_ref_copy(kvt_device_t d, size_t bytes, size_t piece,
                                 kvt_device_copy_ref_t *ref_p)
{
#ifdef KVT_HAVE_CUDA
    if (KVT_DEVICE_IS_CUDA(d))
        return kvt_gpu_ref_copy(KVT_DEVICE_CUDA_INDEX(d), bytes, piece, ref_p);
#endif
    (void)bytes, (void)piece, (void)ref_p;
    return KVT_ERR_NOT_FOUND;
}
