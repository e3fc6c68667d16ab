/* RESP2 client (see resp.h).  One send buffer and one receive buffer, both
 * of fixed size: a reply line longer than the receive buffer, a bulk
 * length over the caller's capacity or over Redis's own 512 MiB limit is
 * refused, and any refusal mid-reply marks the connection broken. */
#include "cli/resp.h"

#include "common/alloc.h"
#include "common/log.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#define RESP_BUF 65536
#define RESP_MAX_BULK (512ull << 20) /* Redis's proto-max-bulk-len default */

struct kvt_resp {
    int fd;
    bool broken;
    size_t out_len;          /* queued bytes in out */
    size_t in_pos, in_len;   /* unread bytes are in[in_pos, in_len) */
    uint8_t out[RESP_BUF];
    uint8_t in[RESP_BUF];
};

kvt_status_t kvt_resp_connect(uint16_t port, int timeout_ms, kvt_resp_t **resp_p)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        kvt_log_debug("redis connect failed port=%u errno=%d", port, errno);
        if (fd >= 0)
            close(fd);
        return KVT_ERR_IO;
    }
    kvt_resp_t *r = kvt_calloc("resp client", 1, sizeof(*r));
    if (!r) {
        close(fd);
        return KVT_ERR_NOMEM;
    }
    r->fd = fd;
    *resp_p = r;
    return KVT_OK;
}

void kvt_resp_close(kvt_resp_t *resp)
{
    if (!resp)
        return;
    close(resp->fd);
    kvt_free(resp);
}

/* Write every byte of iov[0..n) (MSG_NOSIGNAL: a dead server is an error,
 * not SIGPIPE). */
static kvt_status_t send_all(kvt_resp_t *r, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(r->fd, &mh, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            kvt_log_error("redis send failed errno=%d", errno);
            r->broken = true;
            return KVT_ERR_IO;
        }
        while (n > 0 && (size_t)k >= iov->iov_len) {
            k -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + k;
            iov->iov_len -= (size_t)k;
        }
    }
    return KVT_OK;
}

kvt_status_t kvt_resp_flush(kvt_resp_t *resp)
{
    if (resp->broken)
        return KVT_ERR_IO;
    struct iovec iov = {.iov_base = resp->out, .iov_len = resp->out_len};
    kvt_status_t st = resp->out_len ? send_all(resp, &iov, 1) : KVT_OK;
    resp->out_len = 0;
    return st;
}

/* Append text to the send buffer, flushing first when it does not fit. */
static kvt_status_t put_text(kvt_resp_t *r, const char *text, size_t len)
{
    if (r->out_len + len > sizeof(r->out)) {
        kvt_status_t st = kvt_resp_flush(r);
        if (st != KVT_OK)
            return st;
    }
    memcpy(r->out + r->out_len, text, len);
    r->out_len += len;
    return KVT_OK;
}

/* One bulk argument: "$len\r\n" data "\r\n"; a large one goes out directly. */
static kvt_status_t put_arg(kvt_resp_t *r, const void *data, size_t len)
{
    char head[32];
    int hl = snprintf(head, sizeof(head), "$%zu\r\n", len);
    kvt_status_t st = put_text(r, head, (size_t)hl);
    if (st != KVT_OK)
        return st;
    if (r->out_len + len + 2 <= sizeof(r->out)) {
        memcpy(r->out + r->out_len, data, len);
        r->out_len += len;
        return put_text(r, "\r\n", 2);
    }
    struct iovec iov[3] = {{r->out, r->out_len}, {(void *)data, len}, {"\r\n", 2}};
    r->out_len = 0;
    return send_all(r, iov, 3);
}

kvt_status_t kvt_resp_cmd(kvt_resp_t *resp, int argc, const void *const argv[],
                          const size_t lens[])
{
    if (argc < 1 || argc > KVT_RESP_MAX_ARGS)
        return KVT_ERR_INVALID;
    if (resp->broken)
        return KVT_ERR_IO;
    char head[16];
    int hl = snprintf(head, sizeof(head), "*%d\r\n", argc);
    kvt_status_t st = put_text(resp, head, (size_t)hl);
    for (int i = 0; st == KVT_OK && i < argc; i++)
        st = put_arg(resp, argv[i], lens[i]);
    return st;
}

/* ---- replies ---- */

static kvt_status_t fill(kvt_resp_t *r)
{
    if (r->in_pos == r->in_len)
        r->in_pos = r->in_len = 0;
    else if (r->in_pos > 0 && r->in_len == sizeof(r->in)) {
        memmove(r->in, r->in + r->in_pos, r->in_len - r->in_pos);
        r->in_len -= r->in_pos;
        r->in_pos = 0;
    }
    if (r->in_len == sizeof(r->in))
        return KVT_ERR_TOO_LARGE; /* a line longer than the buffer */
    for (;;) {
        ssize_t k = recv(r->fd, r->in + r->in_len, sizeof(r->in) - r->in_len, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            kvt_log_error("redis receive failed eof=%d errno=%d", k == 0, k == 0 ? 0 : errno);
            return KVT_ERR_IO;
        }
        r->in_len += (size_t)k;
        return KVT_OK;
    }
}

/* The next "\r\n"-terminated line, NUL-terminated in place (valid until
 * the next fill). */
static kvt_status_t read_line(kvt_resp_t *r, char **line_p)
{
    size_t scanned = 0;
    for (;;) {
        uint8_t *p = r->in + r->in_pos;
        size_t avail = r->in_len - r->in_pos;
        uint8_t *nl = avail > scanned ? memchr(p + scanned, '\n', avail - scanned) : NULL;
        if (nl) {
            if (nl == p || nl[-1] != '\r')
                return KVT_ERR_CORRUPT;
            nl[-1] = '\0';
            r->in_pos += (size_t)(nl - p) + 1;
            *line_p = (char *)p;
            return KVT_OK;
        }
        scanned = avail; /* fill keeps offsets from in_pos */
        kvt_status_t st = fill(r);
        if (st != KVT_OK)
            return st;
    }
}

/* len bytes of a bulk (plus its "\r\n") into dst: first what the buffer
 * holds, then straight from the socket. */
static kvt_status_t read_bulk(kvt_resp_t *r, uint8_t *dst, size_t len)
{
    size_t have = r->in_len - r->in_pos, take = have < len ? have : len;
    memcpy(dst, r->in + r->in_pos, take);
    r->in_pos += take;
    for (size_t got = take; got < len;) {
        ssize_t k = recv(r->fd, dst + got, len - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            kvt_log_error("redis receive failed eof=%d errno=%d", k == 0, k == 0 ? 0 : errno);
            return KVT_ERR_IO;
        }
        got += (size_t)k;
    }
    while (r->in_len - r->in_pos < 2) {
        kvt_status_t st = fill(r);
        if (st != KVT_OK)
            return st;
    }
    if (memcmp(r->in + r->in_pos, "\r\n", 2) != 0)
        return KVT_ERR_CORRUPT;
    r->in_pos += 2;
    return KVT_OK;
}

/* The bulk length after '$': -1 (nil) or 0..RESP_MAX_BULK. */
static kvt_status_t parse_len(const char *text, long long *len_p)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < -1 || v > (long long)RESP_MAX_BULK)
        return KVT_ERR_CORRUPT;
    *len_p = v;
    return KVT_OK;
}

/* *intact_p: the reply was read whole even though it is not a success. */
static kvt_status_t read_reply(kvt_resp_t *r, void *dst, size_t cap, size_t *len_p,
                               bool *intact_p)
{
    char *line;
    long long len;
    kvt_status_t st = read_line(r, &line);
    if (st != KVT_OK)
        return st;
    if (len_p)
        *len_p = 0;
    switch (line[0]) {
    case '+':
    case ':':
        return KVT_OK;
    case '-':
        kvt_log_error("redis replied with an error message=\"%.200s\"", line + 1);
        *intact_p = true;
        return KVT_ERR_IO;
    case '$':
        if ((st = parse_len(line + 1, &len)) != KVT_OK)
            return st;
        if (len < 0) {
            *intact_p = true;
            return KVT_ERR_NOT_FOUND;
        }
        if (!dst || (size_t)len > cap)
            return KVT_ERR_TOO_LARGE;
        st = read_bulk(r, dst, (size_t)len);
        if (st == KVT_OK && len_p)
            *len_p = (size_t)len;
        return st;
    default:
        return KVT_ERR_CORRUPT;
    }
}

kvt_status_t kvt_resp_read(kvt_resp_t *resp, void *dst, size_t cap, size_t *len_p)
{
    kvt_status_t st = kvt_resp_flush(resp);
    if (st != KVT_OK)
        return st;
    bool intact = false;
    st = read_reply(resp, dst, cap, len_p, &intact);
    if (st != KVT_OK && !intact) {
        if (st == KVT_ERR_CORRUPT)
            kvt_log_error("redis reply malformed");
        resp->broken = true;
    }
    return st;
}
