/* safetensors reader and writer (format and checks: safetensors.h).
 *
 * The reader parses the header with cJSON from a NUL-terminated copy (so
 * cJSON never runs past the header, whatever bytes it holds), turns it into
 * a name-sorted array of kvt_st_tensor_t pointing into the mapping, and
 * frees the JSON tree: lookups are binary searches and the file costs one
 * small array beside its mapping.  Every number is checked to be an integer
 * below 2^53 (exact in cJSON's double) before it is used. */
#include "engine/safetensors.h"

#include "common/alloc.h"
#include "common/le.h"
#include "common/log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c copies F32 data as is: little-endian hosts only"
#endif

#define MAX_EXACT (1ull << 53) /* integers cJSON's double holds exactly */

struct kvt_st_file {
    char *path;
    const uint8_t *base; /* the whole image */
    size_t size;
    bool mapped;         /* base is our mmap (else borrowed) */
    kvt_st_tensor_t *tensors;
    size_t n;
    char *names;         /* every tensor name, NUL-separated */
};

/* ---- scalar conversions ---- */

float kvt_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0 && man == 0) {
        bits = sign;
    } else if (exp == 0) {
        /* Subnormal: man * 2^-24; shift the leading 1 into the implicit bit. */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400u));
        bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13; /* inf, or NaN keeping its payload */
    } else {
        bits = sign | (exp + 112u) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float kvt_bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t kvt_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(x >> 16 | 0x40u); /* quiet NaN; never rounds to inf */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

uint16_t kvt_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu);
    if (ax >= 0x477ff000u) /* >= 65520: rounds to infinity */
        return sign | 0x7c00u;
    if (ax < 0x33000000u) /* < 2^-25 (2^-25 itself ties to even 0) */
        return sign;
    uint32_t r, rem, half;
    if (ax < 0x38800000u) {
        /* Half subnormal: round(value * 2^24) = mantissa >> (126 - exp). */
        uint32_t shift = 126u - (ax >> 23), m = (ax & 0x7fffffu) | 0x800000u;
        r = m >> shift;
        rem = m & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
    } else {
        uint32_t rebased = ax - 0x38000000u; /* exponent bias 127 -> 15 */
        r = rebased >> 13;
        rem = rebased & 0x1fffu;
        half = 0x1000u;
    }
    if (rem > half || (rem == half && (r & 1u)))
        r++; /* a carry moves into the exponent, up to infinity: still right */
    return sign | (uint16_t)r;
}

const char *kvt_st_dtype_name(kvt_dtype_t dtype)
{
    switch (dtype) {
    case KVT_DTYPE_F32: return "F32";
    case KVT_DTYPE_BF16: return "BF16";
    case KVT_DTYPE_F16: return "F16";
    default: return NULL;
    }
}

static size_t dtype_size(kvt_dtype_t dtype) { return dtype == KVT_DTYPE_F32 ? 4 : 2; }

void kvt_st_to_f32(const kvt_st_tensor_t *t, uint64_t first, uint64_t n, float *out)
{
    const uint8_t *p = t->data + first * dtype_size(t->dtype);
    switch (t->dtype) {
    case KVT_DTYPE_F32:
        memcpy(out, p, n * 4);
        break;
    case KVT_DTYPE_BF16:
        for (uint64_t i = 0; i < n; i++)
            out[i] = kvt_bf16_to_f32(kvt_le_get16(p + 2 * i));
        break;
    default:
        for (uint64_t i = 0; i < n; i++)
            out[i] = kvt_f16_to_f32(kvt_le_get16(p + 2 * i));
        break;
    }
}

/* ---- reader ---- */

/* A JSON number that is an integer in [0, 2^53]. */
static bool json_u64(const cJSON *item, uint64_t *v_p)
{
    if (!cJSON_IsNumber(item))
        return false;
    double d = item->valuedouble;
    if (!(d >= 0.0 && d <= (double)MAX_EXACT) || d != (double)(uint64_t)d)
        return false;
    *v_p = (uint64_t)d;
    return true;
}

static kvt_status_t bad(const kvt_st_file_t *f, const char *tensor, const char *field,
                        const char *why, kvt_status_t st)
{
    kvt_log_error("bad safetensors file file=%s tensor=%s field=%s error=\"%s\"", f->path,
                  tensor ? tensor : "-", field, why);
    return st;
}

static kvt_status_t parse_dtype(const kvt_st_file_t *f, const char *name, const cJSON *v,
                                kvt_dtype_t *dtype_p)
{
    if (!cJSON_IsString(v))
        return bad(f, name, "dtype", "not a string", KVT_ERR_INVALID);
    static const kvt_dtype_t known[] = {KVT_DTYPE_F32, KVT_DTYPE_BF16, KVT_DTYPE_F16};
    for (size_t i = 0; i < 3; i++) {
        if (!strcmp(v->valuestring, kvt_st_dtype_name(known[i]))) {
            *dtype_p = known[i];
            return KVT_OK;
        }
    }
    kvt_log_error("unsupported tensor dtype file=%s tensor=%s field=dtype dtype=\"%.32s\" "
                  "supported=BF16,F16,F32",
                  f->path, name, v->valuestring);
    return KVT_ERR_INVALID;
}

static kvt_status_t parse_shape(const kvt_st_file_t *f, const char *name, const cJSON *v,
                                kvt_st_tensor_t *t)
{
    if (!cJSON_IsArray(v))
        return bad(f, name, "shape", "not an array", KVT_ERR_INVALID);
    int rank = cJSON_GetArraySize(v);
    if (rank > KVT_ST_MAX_RANK)
        return bad(f, name, "shape", "rank above 4", KVT_ERR_TOO_LARGE);
    t->rank = (uint32_t)rank;
    t->n_elems = 1;
    int i = 0;
    for (const cJSON *d = v->child; d; d = d->next, i++) {
        if (!json_u64(d, &t->shape[i]))
            return bad(f, name, "shape", "dimension is not a non-negative integer",
                       KVT_ERR_INVALID);
        if (__builtin_mul_overflow(t->n_elems, t->shape[i], &t->n_elems) ||
            t->n_elems > MAX_EXACT)
            return bad(f, name, "shape", "element count overflows", KVT_ERR_TOO_LARGE);
    }
    t->nbytes = t->n_elems * dtype_size(t->dtype);
    return KVT_OK;
}

static kvt_status_t parse_offsets(const kvt_st_file_t *f, const char *name, const cJSON *v,
                                  uint64_t data_size, kvt_st_tensor_t *t)
{
    uint64_t begin, end;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !json_u64(v->child, &begin) ||
        !json_u64(v->child->next, &end))
        return bad(f, name, "data_offsets", "not two non-negative integers", KVT_ERR_INVALID);
    if (begin > end || end > data_size)
        return bad(f, name, "data_offsets", "outside the data section", KVT_ERR_CORRUPT);
    if (end - begin != t->nbytes)
        return bad(f, name, "data_offsets", "size does not match dtype and shape",
                   KVT_ERR_CORRUPT);
    t->offset = begin;
    return KVT_OK;
}

static kvt_status_t parse_tensor(const kvt_st_file_t *f, const cJSON *item, uint64_t data_size,
                                 kvt_st_tensor_t *t)
{
    const char *name = item->string;
    size_t len = strlen(name);
    if (len == 0 || len > KVT_ST_MAX_NAME)
        return bad(f, NULL, "name", "empty or longer than 1024 bytes", KVT_ERR_INVALID);
    if (!cJSON_IsObject(item))
        return bad(f, name, "entry", "not an object", KVT_ERR_INVALID);
    kvt_status_t st = parse_dtype(f, name, cJSON_GetObjectItemCaseSensitive(item, "dtype"),
                                  &t->dtype);
    if (st == KVT_OK)
        st = parse_shape(f, name, cJSON_GetObjectItemCaseSensitive(item, "shape"), t);
    if (st == KVT_OK)
        st = parse_offsets(f, name, cJSON_GetObjectItemCaseSensitive(item, "data_offsets"),
                           data_size, t);
    return st;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const kvt_st_tensor_t *)a)->name, ((const kvt_st_tensor_t *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const kvt_st_tensor_t *x = *(const kvt_st_tensor_t *const *)a;
    const kvt_st_tensor_t *y = *(const kvt_st_tensor_t *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Names unique, non-empty tensors disjoint (empty ones occupy nothing). */
static kvt_status_t check_layout(kvt_st_file_t *f)
{
    qsort(f->tensors, f->n, sizeof(*f->tensors), cmp_name);
    for (size_t i = 1; i < f->n; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
            return bad(f, f->tensors[i].name, "name", "tensor named twice", KVT_ERR_CORRUPT);
    const kvt_st_tensor_t **by_off = kvt_malloc("safetensors order", f->n * sizeof(*by_off));
    if (!by_off)
        return KVT_ERR_NOMEM;
    size_t m = 0;
    for (size_t i = 0; i < f->n; i++)
        if (f->tensors[i].nbytes)
            by_off[m++] = &f->tensors[i];
    qsort(by_off, m, sizeof(*by_off), cmp_offset);
    kvt_status_t st = KVT_OK;
    for (size_t i = 1; i < m && st == KVT_OK; i++)
        if (by_off[i]->offset < by_off[i - 1]->offset + by_off[i - 1]->nbytes)
            st = bad(f, by_off[i]->name, "data_offsets", "overlaps another tensor",
                     KVT_ERR_CORRUPT);
    kvt_free(by_off);
    return st;
}

/* Copy the names into one block so the JSON tree can go. */
static kvt_status_t keep_names(kvt_st_file_t *f)
{
    size_t total = 0;
    for (size_t i = 0; i < f->n; i++)
        total += strlen(f->tensors[i].name) + 1;
    if (!(f->names = kvt_malloc("safetensors names", total)))
        return KVT_ERR_NOMEM;
    char *p = f->names;
    for (size_t i = 0; i < f->n; i++) {
        size_t len = strlen(f->tensors[i].name) + 1;
        memcpy(p, f->tensors[i].name, len);
        f->tensors[i].name = p;
        p += len;
    }
    return KVT_OK;
}

static kvt_status_t parse_entries(kvt_st_file_t *f, const cJSON *root, uint64_t hlen)
{
    uint64_t data_size = f->size - 8 - hlen;
    size_t n = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") != 0)
            n++;
        else if (!cJSON_IsObject(it))
            return bad(f, NULL, "__metadata__", "not an object", KVT_ERR_INVALID);
    }
    if (!(f->tensors = kvt_calloc("safetensors tensors", n ? n : 1, sizeof(*f->tensors))))
        return KVT_ERR_NOMEM;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__"))
            continue;
        kvt_st_tensor_t *t = &f->tensors[f->n];
        kvt_status_t st = parse_tensor(f, it, data_size, t);
        if (st != KVT_OK)
            return st;
        t->name = it->string; /* until keep_names */
        t->data = f->base + 8 + hlen + t->offset;
        f->n++;
    }
    kvt_status_t st = check_layout(f);
    return st == KVT_OK ? keep_names(f) : st;
}

static bool all_space(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return false;
    return true;
}

static kvt_status_t parse_image(kvt_st_file_t *f)
{
    if (f->size < 8)
        return bad(f, NULL, "header_length", "file shorter than 8 bytes", KVT_ERR_TRUNCATED);
    uint64_t hlen = kvt_le_get64(f->base);
    if (hlen > KVT_ST_MAX_HEADER)
        return bad(f, NULL, "header_length", "header above 100 MB", KVT_ERR_TOO_LARGE);
    if (hlen > f->size - 8)
        return bad(f, NULL, "header_length", "header runs past the end of the file",
                   KVT_ERR_TRUNCATED);
    char *text = kvt_malloc("safetensors header", hlen + 1);
    if (!text)
        return KVT_ERR_NOMEM;
    memcpy(text, f->base + 8, hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    kvt_status_t st;
    if (!root || !end || !all_space(end, text + hlen))
        st = bad(f, NULL, "header", "not valid JSON", KVT_ERR_INVALID);
    else if (!cJSON_IsObject(root))
        st = bad(f, NULL, "header", "not a JSON object", KVT_ERR_INVALID);
    else
        st = parse_entries(f, root, hlen);
    cJSON_Delete(root);
    kvt_free(text);
    return st;
}

static kvt_st_file_t *file_new(const char *path)
{
    kvt_st_file_t *f = kvt_calloc("safetensors file", 1, sizeof(*f));
    if (f && !(f->path = strdup(path))) {
        kvt_log_error("allocation failed what=safetensors path");
        kvt_free(f);
        f = NULL;
    }
    return f;
}

static kvt_status_t finish_open(kvt_st_file_t *f, kvt_st_file_t **file_p)
{
    kvt_status_t st = parse_image(f);
    if (st != KVT_OK) {
        kvt_st_close(f);
        return st;
    }
    *file_p = f;
    return KVT_OK;
}

kvt_status_t kvt_st_open_mem(const void *data, size_t len, const char *what,
                             kvt_st_file_t **file_p)
{
    kvt_st_file_t *f = file_new(what ? what : "(memory)");
    if (!f)
        return KVT_ERR_NOMEM;
    f->base = data;
    f->size = len;
    return finish_open(f, file_p);
}

kvt_status_t kvt_st_open(const char *path, kvt_st_file_t **file_p)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        kvt_log_error("cannot open safetensors file file=%s err=\"%s\"", path, strerror(e));
        return e == ENOENT ? KVT_ERR_NOT_FOUND : KVT_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        kvt_log_error("not a regular file file=%s", path);
        close(fd);
        return KVT_ERR_IO;
    }
    kvt_st_file_t *f = file_new(path);
    if (!f) {
        close(fd);
        return KVT_ERR_NOMEM;
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            kvt_log_error("cannot map safetensors file file=%s err=\"%s\"", path,
                          strerror(errno));
            close(fd);
            kvt_st_close(f);
            return KVT_ERR_IO;
        }
        f->base = p;
        f->mapped = true;
    }
    close(fd);
    return finish_open(f, file_p);
}

void kvt_st_close(kvt_st_file_t *file)
{
    if (!file)
        return;
    if (file->mapped)
        munmap((void *)file->base, file->size);
    kvt_free(file->tensors);
    kvt_free(file->names);
    free(file->path);
    kvt_free(file);
}

const char *kvt_st_path(const kvt_st_file_t *file) { return file->path; }
size_t kvt_st_count(const kvt_st_file_t *file) { return file->n; }

const kvt_st_tensor_t *kvt_st_at(const kvt_st_file_t *file, size_t i)
{
    return i < file->n ? &file->tensors[i] : NULL;
}

const kvt_st_tensor_t *kvt_st_find(const kvt_st_file_t *file, const char *name)
{
    size_t lo = 0, hi = file->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, file->tensors[mid].name);
        if (c == 0)
            return &file->tensors[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- writer ---- */

struct kvt_st_writer {
    char *path, *partial;
    int fd;
    size_t n;
    uint64_t *offset, *nbytes; /* per tensor, within the data section */
    uint64_t data_start;       /* 8 + header length */
    uint64_t data_bytes;
    _Atomic uint64_t put;      /* bytes put so far */
};

/* A growable text buffer for the header; bounded by KVT_ST_MAX_HEADER. */
typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *s, size_t len)
{
    if (b->failed)
        return;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *p = cap > KVT_ST_MAX_HEADER + 16 ? NULL
                                               : kvt_realloc("safetensors header", b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, len);
    b->len += len;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf_t *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_fmt_u64(sbuf_t *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    sb_add(b, tmp, (size_t)n);
}

/* A JSON string literal: quotes, backslashes and control bytes escaped. */
static void sb_json_str(sbuf_t *b, const char *s)
{
    sb_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            sb_add(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            sb_add(b, esc, 6);
        } else {
            sb_add(b, (const char *)&c, 1);
        }
    }
    sb_add(b, "\"", 1);
}

static kvt_status_t check_spec(const kvt_st_spec_t *s, uint64_t *nbytes_p)
{
    if (!s->name || !*s->name || strlen(s->name) > KVT_ST_MAX_NAME ||
        !strcmp(s->name, "__metadata__") || !kvt_st_dtype_name(s->dtype) ||
        s->rank > KVT_ST_MAX_RANK) {
        kvt_log_error("bad tensor spec tensor=%s", s->name ? s->name : "(null)");
        return KVT_ERR_INVALID;
    }
    uint64_t n = 1;
    for (uint32_t d = 0; d < s->rank; d++)
        if (__builtin_mul_overflow(n, s->shape[d], &n) || n > MAX_EXACT / 4) {
            kvt_log_error("tensor too large tensor=%s", s->name);
            return KVT_ERR_INVALID;
        }
    *nbytes_p = n * dtype_size(s->dtype);
    return KVT_OK;
}

/* The header text, space-padded to a multiple of 8; fills offsets. */
static kvt_status_t build_header(kvt_st_writer_t *w, const kvt_st_spec_t *specs, sbuf_t *b)
{
    sb_str(b, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t at = 0;
    for (size_t i = 0; i < w->n; i++) {
        const kvt_st_spec_t *s = &specs[i];
        kvt_status_t st = check_spec(s, &w->nbytes[i]);
        if (st != KVT_OK)
            return st;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(specs[j].name, s->name)) {
                kvt_log_error("tensor named twice tensor=%s", s->name);
                return KVT_ERR_INVALID;
            }
        w->offset[i] = at;
        sb_str(b, ",");
        sb_json_str(b, s->name);
        sb_str(b, ":{\"dtype\":\"");
        sb_str(b, kvt_st_dtype_name(s->dtype));
        sb_str(b, "\",\"shape\":[");
        for (uint32_t d = 0; d < s->rank; d++) {
            if (d)
                sb_str(b, ",");
            sb_fmt_u64(b, s->shape[d]);
        }
        sb_str(b, "],\"data_offsets\":[");
        sb_fmt_u64(b, at);
        sb_str(b, ",");
        sb_fmt_u64(b, at + w->nbytes[i]);
        sb_str(b, "]}");
        at += w->nbytes[i];
    }
    sb_str(b, "}");
    while (!b->failed && b->len % 8)
        sb_str(b, " ");
    if (b->failed || b->len > KVT_ST_MAX_HEADER) {
        kvt_log_error("safetensors header too large tensors=%zu", w->n);
        return KVT_ERR_TOO_LARGE;
    }
    w->data_bytes = at;
    w->data_start = 8 + b->len;
    return KVT_OK;
}

static kvt_status_t pwrite_all(int fd, const void *bytes, size_t len, uint64_t at,
                               const char *path)
{
    const uint8_t *p = bytes;
    while (len > 0) {
        ssize_t k = pwrite(fd, p, len, (off_t)at);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            kvt_log_error("write failed file=%s offset=%llu err=\"%s\"", path,
                          (unsigned long long)at, k < 0 ? strerror(errno) : "no progress");
            return KVT_ERR_IO;
        }
        p += k;
        len -= (size_t)k;
        at += (uint64_t)k;
    }
    return KVT_OK;
}

static kvt_status_t writer_open_file(kvt_st_writer_t *w, const sbuf_t *hdr)
{
    struct stat sb;
    if (lstat(w->path, &sb) == 0) {
        kvt_log_error("file exists, not overwritten file=%s", w->path);
        return KVT_ERR_EXISTS;
    }
    w->fd = open(w->partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        kvt_log_error("cannot create file file=%s err=\"%s\"", w->partial, strerror(errno));
        return KVT_ERR_IO;
    }
    uint8_t len8[8];
    kvt_le_put64(len8, hdr->len);
    kvt_status_t st = pwrite_all(w->fd, len8, 8, 0, w->partial);
    if (st == KVT_OK)
        st = pwrite_all(w->fd, hdr->p, hdr->len, 8, w->partial);
    /* Full length up front: unwritten ranges read as zeros, never short. */
    if (st == KVT_OK && ftruncate(w->fd, (off_t)(w->data_start + w->data_bytes)) != 0) {
        kvt_log_error("cannot size file file=%s err=\"%s\"", w->partial, strerror(errno));
        st = KVT_ERR_IO;
    }
    return st;
}

kvt_status_t kvt_st_writer_create(const char *path, const kvt_st_spec_t *specs, size_t n,
                                  kvt_st_writer_t **writer_p)
{
    kvt_st_writer_t *w = kvt_calloc("safetensors writer", 1, sizeof(*w));
    if (!w)
        return KVT_ERR_NOMEM;
    w->fd = -1;
    w->n = n;
    size_t plen = strlen(path) + sizeof(".partial");
    w->path = strdup(path);
    w->partial = kvt_malloc("safetensors path", plen);
    w->offset = kvt_calloc("safetensors offsets", n ? n : 1, sizeof(uint64_t));
    w->nbytes = kvt_calloc("safetensors sizes", n ? n : 1, sizeof(uint64_t));
    if (!w->path || !w->partial || !w->offset || !w->nbytes) {
        kvt_st_writer_destroy(w);
        return KVT_ERR_NOMEM;
    }
    snprintf(w->partial, plen, "%s.partial", path);
    sbuf_t hdr = {0};
    kvt_status_t st = build_header(w, specs, &hdr);
    if (st == KVT_OK)
        st = writer_open_file(w, &hdr);
    kvt_free(hdr.p);
    if (st != KVT_OK) {
        kvt_st_writer_destroy(w);
        return st;
    }
    *writer_p = w;
    return KVT_OK;
}

kvt_status_t kvt_st_writer_put(kvt_st_writer_t *w, size_t i, uint64_t at, const void *bytes,
                               size_t len)
{
    if (i >= w->n || at > w->nbytes[i] || len > w->nbytes[i] - at) {
        kvt_log_error("write outside tensor file=%s tensor=%zu offset=%llu len=%zu", w->path,
                      i, (unsigned long long)at, len);
        return KVT_ERR_INVALID;
    }
    kvt_status_t st = pwrite_all(w->fd, bytes, len, w->data_start + w->offset[i] + at,
                                 w->partial);
    if (st == KVT_OK)
        atomic_fetch_add(&w->put, (uint64_t)len);
    return st;
}

uint64_t kvt_st_writer_tensor_bytes(const kvt_st_writer_t *w, size_t i)
{
    return i < w->n ? w->nbytes[i] : 0;
}

uint64_t kvt_st_writer_file_bytes(const kvt_st_writer_t *w)
{
    return w->data_start + w->data_bytes;
}

kvt_status_t kvt_st_writer_finish(kvt_st_writer_t *w)
{
    kvt_status_t st = KVT_OK;
    if (atomic_load(&w->put) != w->data_bytes) {
        kvt_log_error("tensor data incomplete file=%s put=%llu expected=%llu", w->path,
                      (unsigned long long)atomic_load(&w->put),
                      (unsigned long long)w->data_bytes);
        st = KVT_ERR_TRUNCATED;
    }
    if (st == KVT_OK) {
        int rc = close(w->fd);
        w->fd = -1;
        if (rc != 0 || rename(w->partial, w->path) != 0) {
            kvt_log_error("cannot complete file file=%s err=\"%s\"", w->path, strerror(errno));
            st = KVT_ERR_IO;
        }
    }
    kvt_st_writer_destroy(w); /* removes PATH.partial if it is still there */
    return st;
}

void kvt_st_writer_destroy(kvt_st_writer_t *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->partial)
        unlink(w->partial);
    free(w->path);
    kvt_free(w->partial);
    kvt_free(w->offset);
    kvt_free(w->nbytes);
    kvt_free(w);
}
