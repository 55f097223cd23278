
/*
 * Copyright (C) ngx_im authors
 */


#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <sodium.h>

#include "im_client.h"


#define IM_CLIENT_GUID         "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* between messages a parser keeps no larger reassembly buffer */
#define IM_CLIENT_PARSER_KEEP  16384

/* how long a polite close waits for the server's close frame */
#define IM_CLIENT_CLOSE_WAIT   1000

#define IM_CLIENT_HOST_MAX     256
#define IM_CLIENT_PATH_MAX     2048

#define IM_CLIENT_HS_UPGRADE     0x01
#define IM_CLIENT_HS_CONNECTION  0x02
#define IM_CLIENT_HS_ACCEPT      0x04


enum {
    im_client_sw_header = 0,
    im_client_sw_control,
    im_client_sw_data
};


static size_t im_client_header_size(size_t len);
static u_char *im_client_header(u_char *p, int opcode, size_t len,
    u_char *mask);
static void im_client_mask(u_char *p, size_t len, u_char *mask);
static int im_client_response_header(const u_char *name, size_t nlen,
    const u_char *value, size_t vlen, const char *key, unsigned *seen);
static int im_client_has_token(const u_char *p, size_t len,
    const char *token);
static int im_client_equal_nocase(const u_char *a, size_t len,
    const char *b);
static int im_client_parse_error(im_client_parser_t *p, unsigned code,
    const char *error, u_char *pos, u_char *data, size_t *consumed);
static int im_client_reserve(im_client_parser_t *p, size_t size);
static int im_client_parse_url(im_client_t *c, const char *url,
    struct sockaddr_storage *ss, socklen_t *sslen, char *host, char *path);
static int im_client_handshake(im_client_t *c, const char *host,
    const char *path, int64_t deadline);
static void im_client_refused(im_client_t *c);
static Im__Frame *im_client_message(im_client_t *c);
static void im_client_abort(im_client_t *c, unsigned code);
static int im_client_send_control(im_client_t *c, int opcode,
    const u_char *payload, size_t len);
static int im_client_write(im_client_t *c, const u_char *buf, size_t len,
    int64_t deadline);
static int im_client_wait(int fd, short events, int64_t deadline);
static void im_client_fail(im_client_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int64_t im_client_deadline(int timeout);
static int64_t im_client_now(void);


int
im_client_init(void)
{
    return (sodium_init() == -1) ? IM_CLIENT_ERROR : IM_CLIENT_OK;
}


/*
 * The upgrade request of RFC 6455 4.1.  host is the Host header as the
 * URL has it ("127.0.0.1:8080"); key_out gets the key in base64, for
 * im_client_response().  Returns the length, or -1 if buf is too small
 * or host or path could smuggle a header.
 */

ssize_t
im_client_request(u_char *buf, size_t size, const char *host,
    const char *path, char *key_out)
{
    int          n;
    const char  *p;
    u_char       raw[16];

    for (p = path; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f) {
            return -1;
        }
    }

    for (p = host; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f) {
            return -1;
        }
    }

    if (*path != '/' || *host == '\0') {
        return -1;
    }

    randombytes_buf(raw, sizeof(raw));
    (void) EVP_EncodeBlock((u_char *) key_out, raw, sizeof(raw));

    n = snprintf((char *) buf, size,
                 "GET %s HTTP/1.1\r\n"
                 "Host: %s\r\n"
                 "Upgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Protocol: im.v1\r\n"
                 "\r\n",
                 path, host, key_out);

    if (n < 0 || (size_t) n >= size) {
        return -1;
    }

    return n;
}


/* accept gets IM_CLIENT_ACCEPT_LEN bytes: base64 of SHA-1, and a NUL */

void
im_client_accept(const char *key, char *accept)
{
    size_t   len;
    u_char   md[SHA_DIGEST_LENGTH];
    u_char   text[64 + sizeof(IM_CLIENT_GUID)];

    len = strlen(key);

    if (len > 64) {
        len = 64;
    }

    memcpy(text, key, len);
    memcpy(text + len, IM_CLIENT_GUID, sizeof(IM_CLIENT_GUID) - 1);

    (void) SHA1(text, len + sizeof(IM_CLIENT_GUID) - 1, md);
    (void) EVP_EncodeBlock((u_char *) accept, md, SHA_DIGEST_LENGTH);
}


/*
 * The server's answer, parsed whole each time more of it has arrived: it
 * is small and bounded.  On success *consumed is where WebSocket frames
 * start.  A status other than 101 fails as soon as the status line is in.
 */

int
im_client_response(const u_char *buf, size_t len, const char *key,
    size_t *consumed)
{
    unsigned       seen;
    const u_char  *end, *line, *last, *vend, *colon, *name, *value, *p;

    end = buf + len;

    last = memchr(buf, '\n', len);

    if (last == NULL) {
        goto again;
    }

    line = buf;
    vend = (last > line && last[-1] == '\r') ? last - 1 : last;

    /* "HTTP/1.1 101 Switching Protocols" */

    if (vend - line < 12
        || memcmp(line, "HTTP/1.", 7) != 0
        || line[8] != ' '
        || memcmp(line + 9, "101", 3) != 0
        || (vend - line > 12 && line[12] != ' '))
    {
        return IM_CLIENT_ERROR;
    }

    seen = 0;

    for ( ;; ) {
        line = last + 1;

        last = memchr(line, '\n', end - line);

        if (last == NULL) {
            goto again;
        }

        vend = (last > line && last[-1] == '\r') ? last - 1 : last;

        if (vend == line) {
            break;
        }

        name = line;
        colon = memchr(name, ':', vend - name);

        if (colon == NULL || colon == name) {
            return IM_CLIENT_ERROR;
        }

        for (p = name; p < colon; p++) {
            if (*p <= 0x20 || *p >= 0x7f) {
                return IM_CLIENT_ERROR;
            }
        }

        value = colon + 1;

        while (value < vend && (*value == ' ' || *value == '\t')) {
            value++;
        }

        while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t')) {
            vend--;
        }

        if (im_client_response_header(name, colon - name, value,
                                      vend - value, key, &seen)
            != IM_CLIENT_OK)
        {
            return IM_CLIENT_ERROR;
        }
    }

    if (seen != (IM_CLIENT_HS_UPGRADE|IM_CLIENT_HS_CONNECTION
                 |IM_CLIENT_HS_ACCEPT))
    {
        return IM_CLIENT_ERROR;
    }

    *consumed = last + 1 - buf;

    return IM_CLIENT_OK;

again:

    if (len >= IM_CLIENT_RESPONSE_MAX) {
        return IM_CLIENT_ERROR;
    }

    return IM_CLIENT_AGAIN;
}


static int
im_client_response_header(const u_char *name, size_t nlen,
    const u_char *value, size_t vlen, const char *key, unsigned *seen)
{
    char  accept[IM_CLIENT_ACCEPT_LEN];

    if (im_client_equal_nocase(name, nlen, "upgrade")) {
        if (im_client_has_token(value, vlen, "websocket")) {
            *seen |= IM_CLIENT_HS_UPGRADE;
        }

    } else if (im_client_equal_nocase(name, nlen, "connection")) {
        if (im_client_has_token(value, vlen, "upgrade")) {
            *seen |= IM_CLIENT_HS_CONNECTION;
        }

    } else if (im_client_equal_nocase(name, nlen, "sec-websocket-accept")) {
        im_client_accept(key, accept);

        if ((*seen & IM_CLIENT_HS_ACCEPT)
            || vlen != IM_CLIENT_ACCEPT_LEN - 1
            || memcmp(value, accept, vlen) != 0)
        {
            return IM_CLIENT_ERROR;
        }

        *seen |= IM_CLIENT_HS_ACCEPT;

    } else if (im_client_equal_nocase(name, nlen, "sec-websocket-protocol")) {

        /* RFC 6455 4.1: only a subprotocol that was asked for */

        if (vlen != 5 || memcmp(value, "im.v1", 5) != 0) {
            return IM_CLIENT_ERROR;
        }

    } else if (im_client_equal_nocase(name, nlen, "sec-websocket-extensions"))
    {
        /* none was asked for */
        return IM_CLIENT_ERROR;
    }

    return IM_CLIENT_OK;
}


/* a comma-separated list holds the token, compared case-insensitively */

static int
im_client_has_token(const u_char *p, size_t len, const char *token)
{
    const u_char  *end, *s, *e;

    end = p + len;

    while (p < end) {
        s = p;

        while (p < end && *p != ',') {
            p++;
        }

        e = p++;

        while (s < e && (*s == ' ' || *s == '\t')) {
            s++;
        }

        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) {
            e--;
        }

        if (im_client_equal_nocase(s, e - s, token)) {
            return 1;
        }
    }

    return 0;
}


static int
im_client_equal_nocase(const u_char *a, size_t len, const char *b)
{
    size_t  i;
    u_char  ca, cb;

    for (i = 0; i < len; i++) {
        if (b[i] == '\0') {
            return 0;
        }

        ca = (a[i] >= 'A' && a[i] <= 'Z') ? a[i] | 0x20 : a[i];
        cb = (b[i] >= 'A' && b[i] <= 'Z') ? b[i] | 0x20 : b[i];

        if (ca != cb) {
            return 0;
        }
    }

    return b[len] == '\0';
}


/*
 * One masked client frame with FIN set.  payload may be buf plus the
 * header size: the frame is then masked in place.  Returns the length,
 * or -1 if buf is too small or a control payload is too long.
 */

ssize_t
im_client_frame(u_char *buf, size_t size, int opcode, const u_char *payload,
    size_t len)
{
    size_t   i, h;
    u_char  *p, mask[4];

    if ((opcode & ~0xf) || ((opcode & 0x8) && len > IM_CLIENT_CONTROL_MAX)) {
        return -1;
    }

    h = im_client_header_size(len);

    if (size < h || size - h < len) {
        return -1;
    }

    randombytes_buf(mask, sizeof(mask));

    p = im_client_header(buf, opcode, len, mask);

    for (i = 0; i < len; i++) {
        p[i] = payload[i] ^ mask[i & 3];
    }

    return h + len;
}


/* an im.Frame as one binary message, packed straight into buf */

ssize_t
im_client_encode(u_char *buf, size_t size, const Im__Frame *f)
{
    size_t   n, h;
    u_char  *p, mask[4];

    n = im__frame__get_packed_size(f);
    h = im_client_header_size(n);

    if (size < h || size - h < n) {
        return -1;
    }

    randombytes_buf(mask, sizeof(mask));

    p = im_client_header(buf, IM_CLIENT_WS_BINARY, n, mask);

    (void) im__frame__pack(f, p);
    im_client_mask(p, n, mask);

    return h + n;
}


size_t
im_client_encoded_size(const Im__Frame *f)
{
    size_t  n;

    n = im__frame__get_packed_size(f);

    return im_client_header_size(n) + n;
}


static size_t
im_client_header_size(size_t len)
{
    if (len < 126) {
        return 2 + 4;
    }

    if (len < 65536) {
        return 2 + 2 + 4;
    }

    return 2 + 8 + 4;
}


static u_char *
im_client_header(u_char *p, int opcode, size_t len, u_char *mask)
{
    int  i;

    *p++ = (u_char) (0x80 | opcode);

    if (len < 126) {
        *p++ = (u_char) (0x80 | len);

    } else if (len < 65536) {
        *p++ = 0x80 | 126;
        *p++ = (u_char) (len >> 8);
        *p++ = (u_char) len;

    } else {
        *p++ = 0x80 | 127;

        for (i = 56; i >= 0; i -= 8) {
            *p++ = (u_char) ((uint64_t) len >> i);
        }
    }

    memcpy(p, mask, 4);

    return p + 4;
}


static void
im_client_mask(u_char *p, size_t len, u_char *mask)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        p[i] ^= mask[i & 3];
    }
}


/* max bounds a reassembled message; 0 means IM_CLIENT_MESSAGE_MAX */

void
im_client_parser_init(im_client_parser_t *p, size_t max)
{
    memset(p, 0, sizeof(im_client_parser_t));

    p->max = max ? max : IM_CLIENT_MESSAGE_MAX;
}


void
im_client_parser_free(im_client_parser_t *p)
{
    free(p->buf);

    p->buf = NULL;
    p->size = 0;
    p->used = 0;
}


/*
 * Feeds data, any amount down to one byte.  IM_CLIENT_OK: a message is
 * in p->opcode, p->payload and p->len, and *consumed bytes were used;
 * call again with the rest.  The payload points into data when a whole
 * unfragmented message was there, else into the parser; either way it
 * lives until the next call.  IM_CLIENT_AGAIN: all of data was used and
 * more is needed.  IM_CLIENT_ERROR: p->error says what, p->code is the
 * close code to send; the parser is of no further use.
 */

int
im_client_parse(im_client_parser_t *p, u_char *data, size_t len,
    size_t *consumed)
{
    int        op;
    size_t     need, n, i;
    u_char    *pos, *end;
    uint64_t   length;

    pos = data;
    end = data + len;

    p->opcode = 0;
    p->payload = NULL;
    p->len = 0;

    if (p->message == 0 && p->size > IM_CLIENT_PARSER_KEEP) {
        im_client_parser_free(p);
    }

    for ( ;; ) {

        switch (p->state) {

        case im_client_sw_header:

            /* two bytes, then 0, 2 or 8 bytes of extended length */

            for ( ;; ) {
                need = 2;

                if (p->hlen >= 2) {
                    n = p->hdr[1] & 0x7f;
                    need += (n == 126) ? 2 : (n == 127) ? 8 : 0;
                }

                if (p->hlen == need) {
                    break;
                }

                if (pos == end) {
                    goto again;
                }

                p->hdr[p->hlen++] = *pos++;
            }

            p->hlen = 0;

            if (p->hdr[0] & 0x70) {
                return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                             "reserved bits set", pos, data,
                                             consumed);
            }

            if (p->hdr[1] & 0x80) {
                return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                             "masked server frame", pos,
                                             data, consumed);
            }

            p->fin = p->hdr[0] >> 7;
            op = p->hdr[0] & 0x0f;
            n = p->hdr[1] & 0x7f;

            if (n == 126) {
                length = (p->hdr[2] << 8) | p->hdr[3];

            } else if (n == 127) {
                length = 0;

                for (i = 2; i < 10; i++) {
                    length = (length << 8) | p->hdr[i];
                }

                if (length >> 63) {
                    return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                                 "bad frame length", pos,
                                                 data, consumed);
                }

            } else {
                length = n;
            }

            p->frame_opcode = op;
            p->remain = length;

            if (op & 0x8) {
                if (op > IM_CLIENT_WS_PONG) {
                    return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                                 "unknown opcode", pos, data,
                                                 consumed);
                }

                if (!p->fin || length > IM_CLIENT_CONTROL_MAX) {
                    return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                                 "bad control frame", pos,
                                                 data, consumed);
                }

                if (op == IM_CLIENT_WS_CLOSE && length == 1) {
                    return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                                 "bad close frame", pos,
                                                 data, consumed);
                }

                p->clen = 0;
                p->state = im_client_sw_control;
                break;
            }

            if (op == IM_CLIENT_WS_CONT) {
                if (p->message == 0) {
                    return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                                 "continuation of nothing",
                                                 pos, data, consumed);
                }

            } else if (op == IM_CLIENT_WS_TEXT || op == IM_CLIENT_WS_BINARY) {
                if (p->message) {
                    return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                                 "message inside a message",
                                                 pos, data, consumed);
                }

                p->message = op;
                p->used = 0;

            } else {
                return im_client_parse_error(p, IM_CLIENT_CLOSE_PROTOCOL,
                                             "unknown opcode", pos, data,
                                             consumed);
            }

            if (length > p->max - p->used) {
                return im_client_parse_error(p, IM_CLIENT_CLOSE_TOO_BIG,
                                             "message too large", pos, data,
                                             consumed);
            }

            if (p->fin && p->used == 0 && length <= (uint64_t) (end - pos)) {

                /* the usual case: a whole message, used where it is */

                p->opcode = p->message;
                p->payload = pos;
                p->len = length;
                p->message = 0;
                p->state = im_client_sw_header;

                pos += length;
                goto done;
            }

            if (im_client_reserve(p, p->used + length) != IM_CLIENT_OK) {
                return im_client_parse_error(p, IM_CLIENT_CLOSE_INTERNAL,
                                             "out of memory", pos, data,
                                             consumed);
            }

            p->state = im_client_sw_data;
            break;

        case im_client_sw_control:
            n = end - pos;

            if (n > p->remain) {
                n = p->remain;
            }

            memcpy(p->control + p->clen, pos, n);
            p->clen += n;
            p->remain -= n;
            pos += n;

            if (p->remain) {
                goto again;
            }

            p->opcode = p->frame_opcode;
            p->payload = p->control;
            p->len = p->clen;
            p->state = im_client_sw_header;

            goto done;

        case im_client_sw_data:
            n = end - pos;

            if (n > p->remain) {
                n = p->remain;
            }

            if (n) {
                memcpy(p->buf + p->used, pos, n);
            }

            p->used += n;
            p->remain -= n;
            pos += n;

            if (p->remain) {
                goto again;
            }

            p->state = im_client_sw_header;

            if (!p->fin) {
                break;
            }

            p->opcode = p->message;
            p->payload = p->buf ? p->buf : p->control;
            p->len = p->used;
            p->message = 0;

            goto done;
        }
    }

done:

    *consumed = pos - data;

    return IM_CLIENT_OK;

again:

    *consumed = len;

    return IM_CLIENT_AGAIN;
}


static int
im_client_parse_error(im_client_parser_t *p, unsigned code,
    const char *error, u_char *pos, u_char *data, size_t *consumed)
{
    p->error = error;
    p->code = code;

    *consumed = pos - data;

    return IM_CLIENT_ERROR;
}


static int
im_client_reserve(im_client_parser_t *p, size_t size)
{
    size_t   n;
    u_char  *buf;

    if (size <= p->size) {
        return IM_CLIENT_OK;
    }

    /* doubling keeps many small fragments cheap; max bounds it */

    n = p->size ? p->size : 4096;

    while (n < size && n < p->max) {
        n *= 2;
    }

    if (n > p->max) {
        n = p->max;
    }

    if (n < size) {
        n = size;
    }

    buf = realloc(p->buf, n);
    if (buf == NULL) {
        return IM_CLIENT_ERROR;
    }

    p->buf = buf;
    p->size = n;

    return IM_CLIENT_OK;
}


/* a close frame's payload; code is IM_CLIENT_CLOSE_NO_CODE if empty */

int
im_client_close_status(const u_char *payload, size_t len, unsigned *code,
    const u_char **reason, size_t *rlen)
{
    if (len == 1) {
        return IM_CLIENT_ERROR;
    }

    if (len == 0) {
        *code = IM_CLIENT_CLOSE_NO_CODE;
        *reason = payload;
        *rlen = 0;

        return IM_CLIENT_OK;
    }

    *code = (payload[0] << 8) | payload[1];
    *reason = payload + 2;
    *rlen = len - 2;

    return IM_CLIENT_OK;
}


/* "UNAUTHENTICATED" for im.Error.Code 2 */

const char *
im_client_error_name(int code)
{
    const ProtobufCEnumValue  *v;

    v = protobuf_c_enum_descriptor_get_value(&im__error__code__descriptor,
                                             code);

    return v ? v->name : "UNKNOWN";
}


/*
 * The blocking layer.  url is ws://HOST[:PORT][/PATH], HOST an IP
 * literal ([...] for IPv6) or localhost: no DNS, no TLS.  timeout (ms)
 * bounds the connect and the handshake, and later each write.  On
 * failure returns NULL with the reason in err.
 */

im_client_t *
im_client_connect(const char *url, int timeout, char *err, size_t size)
{
    int                       one;
    int64_t                   deadline;
    socklen_t                 sslen, len;
    im_client_t              *c;
    struct sockaddr_storage   ss;
    char                      host[IM_CLIENT_HOST_MAX];
    char                      path[IM_CLIENT_PATH_MAX];

    c = malloc(sizeof(im_client_t));
    if (c == NULL) {
        snprintf(err, size, "out of memory");
        return NULL;
    }

    memset(c, 0, offsetof(im_client_t, in));

    c->fd = -1;
    c->timeout = (timeout > 0) ? timeout : 10000;
    c->close_code = IM_CLIENT_CLOSE_ABNORMAL;
    c->pos = c->in;
    c->last = c->in;

    im_client_parser_init(&c->parser, IM_CLIENT_MESSAGE_MAX);

    deadline = im_client_deadline(c->timeout);

    if (im_client_parse_url(c, url, &ss, &sslen, host, path)
        != IM_CLIENT_OK)
    {
        goto failed;
    }

    c->fd = socket(ss.ss_family, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);

    if (c->fd == -1) {
        im_client_fail(c, "socket() failed: %s", strerror(errno));
        goto failed;
    }

    /* requests are small frames that should not wait for each other */

    one = 1;
    (void) setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    if (connect(c->fd, (struct sockaddr *) &ss, sslen) == -1) {
        if (errno != EINPROGRESS) {
            im_client_fail(c, "connect() to %s failed: %s", host,
                           strerror(errno));
            goto failed;
        }

        switch (im_client_wait(c->fd, POLLOUT, deadline)) {

        case IM_CLIENT_OK:
            break;

        case IM_CLIENT_AGAIN:
            im_client_fail(c, "connect() to %s %s", host,
                           (errno == EINTR) ? "interrupted" : "timed out");
            goto failed;

        default:
            im_client_fail(c, "poll() failed: %s", strerror(errno));
            goto failed;
        }

        one = 0;
        len = sizeof(one);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &one, &len) == -1) {
            one = errno;
        }

        if (one) {
            im_client_fail(c, "connect() to %s failed: %s", host,
                           strerror(one));
            goto failed;
        }
    }

    if (im_client_handshake(c, host, path, deadline) != IM_CLIENT_OK) {
        goto failed;
    }

    return c;

failed:

    snprintf(err, size, "%s", c->err);

    if (c->fd != -1) {
        (void) close(c->fd);
    }

    im_client_parser_free(&c->parser);
    free(c);

    return NULL;
}


static int
im_client_parse_url(im_client_t *c, const char *url,
    struct sockaddr_storage *ss, socklen_t *sslen, char *host, char *path)
{
    long                  port;
    size_t                len, alen;
    const char           *p, *end, *addr, *colon;
    struct sockaddr_in   *sin;
    struct sockaddr_in6  *sin6;
    char                  text[INET6_ADDRSTRLEN];

    if (strncasecmp(url, "wss://", 6) == 0) {
        im_client_fail(c, "\"%s\": TLS (wss://) is not supported, use ws://",
                       url);
        return IM_CLIENT_ERROR;
    }

    if (strncasecmp(url, "ws://", 5) != 0) {
        im_client_fail(c, "\"%s\": the URL must start with ws://", url);
        return IM_CLIENT_ERROR;
    }

    p = url + 5;
    end = p + strcspn(p, "/?#");
    len = end - p;

    if (len == 0 || len >= IM_CLIENT_HOST_MAX) {
        im_client_fail(c, "\"%s\": bad host", url);
        return IM_CLIENT_ERROR;
    }

    memcpy(host, p, len);
    host[len] = '\0';

    /* HOST, HOST:PORT, [V6] or [V6]:PORT */

    if (*p == '[') {
        addr = p + 1;
        colon = memchr(p, ']', len);

        if (colon == NULL) {
            goto bad_host;
        }

        alen = colon - addr;
        colon++;

        if (colon < end && *colon != ':') {
            goto bad_host;
        }

    } else {
        addr = p;
        colon = memchr(p, ':', len);
        alen = (colon ? colon : end) - addr;
    }

    port = 80;

    if (colon && colon < end) {
        port = 0;

        for (colon++; colon < end; colon++) {
            if (*colon < '0' || *colon > '9' || port > 65535) {
                goto bad_host;
            }

            port = port * 10 + (*colon - '0');
        }

        if (port == 0 || port > 65535) {
            goto bad_host;
        }
    }

    if (alen == 0 || alen >= sizeof(text)) {
        goto bad_host;
    }

    memcpy(text, addr, alen);
    text[alen] = '\0';

    memset(ss, 0, sizeof(struct sockaddr_storage));

    if (strcasecmp(text, "localhost") == 0) {
        strcpy(text, "127.0.0.1");
    }

    sin = (struct sockaddr_in *) ss;
    sin6 = (struct sockaddr_in6 *) ss;

    if (*p != '[' && inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t) port);
        *sslen = sizeof(struct sockaddr_in);

    } else if (*p == '[' && inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1)
    {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t) port);
        *sslen = sizeof(struct sockaddr_in6);

    } else {
        im_client_fail(c, "\"%s\": only IP addresses and localhost, "
                       "no DNS", text);
        return IM_CLIENT_ERROR;
    }

    /* the path and query; a fragment never goes to the server */

    len = strcspn(end, "#");

    if (*end == '/') {
        if (len >= IM_CLIENT_PATH_MAX) {
            goto bad_path;
        }

        memcpy(path, end, len);
        path[len] = '\0';

    } else {
        if (len + 1 >= IM_CLIENT_PATH_MAX) {
            goto bad_path;
        }

        path[0] = '/';
        memcpy(path + 1, end, len);
        path[len + 1] = '\0';
    }

    for (p = path; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f) {
            goto bad_path;
        }
    }

    return IM_CLIENT_OK;

bad_host:

    im_client_fail(c, "\"%s\": bad host or port", url);

    return IM_CLIENT_ERROR;

bad_path:

    im_client_fail(c, "\"%s\": bad path", url);

    return IM_CLIENT_ERROR;
}


static int
im_client_handshake(im_client_t *c, const char *host, const char *path,
    int64_t deadline)
{
    size_t   consumed;
    ssize_t  n;
    char     key[IM_CLIENT_KEY_LEN];
    u_char   request[IM_CLIENT_HOST_MAX + IM_CLIENT_PATH_MAX + 256];

    n = im_client_request(request, sizeof(request), host, path, key);

    if (n == -1) {
        im_client_fail(c, "cannot build the upgrade request");
        return IM_CLIENT_ERROR;
    }

    if (im_client_write(c, request, n, deadline) != IM_CLIENT_OK) {
        return IM_CLIENT_ERROR;
    }

    for ( ;; ) {
        switch (im_client_response(c->in, c->last - c->in, key, &consumed)) {

        case IM_CLIENT_OK:

            /* what follows the response is WebSocket already */

            c->pos = c->in + consumed;
            return IM_CLIENT_OK;

        case IM_CLIENT_ERROR:
            im_client_refused(c);
            return IM_CLIENT_ERROR;

        default:
            break;
        }

        n = recv(c->fd, c->last, c->in + sizeof(c->in) - c->last, 0);

        if (n > 0) {
            c->last += n;
            continue;
        }

        if (n == 0) {
            im_client_fail(c, "server closed the connection in the "
                           "WebSocket handshake");
            return IM_CLIENT_ERROR;
        }

        if (errno == EINTR) {
            continue;
        }

        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            im_client_fail(c, "recv() failed: %s", strerror(errno));
            return IM_CLIENT_ERROR;
        }

        switch (im_client_wait(c->fd, POLLIN, deadline)) {

        case IM_CLIENT_OK:
            break;

        case IM_CLIENT_AGAIN:
            im_client_fail(c, "WebSocket handshake %s",
                           (errno == EINTR) ? "interrupted" : "timed out");
            return IM_CLIENT_ERROR;

        default:
            im_client_fail(c, "poll() failed: %s", strerror(errno));
            return IM_CLIENT_ERROR;
        }
    }
}


/* the status line tells a refusal from a broken response */

static void
im_client_refused(im_client_t *c)
{
    size_t   n;
    u_char  *p, *end;
    char     line[81];

    end = memchr(c->in, '\n', c->last - c->in);

    if (end == NULL) {
        end = c->last;
    }

    n = 0;

    for (p = c->in; p < end && n < sizeof(line) - 1; p++) {
        if (*p >= 0x20 && *p < 0x7f) {
            line[n++] = *p;
        }
    }

    line[n] = '\0';

    if (n > 12 && memcmp(line, "HTTP/1.", 7) == 0
        && memcmp(line + 9, "101", 3) != 0)
    {
        im_client_fail(c, "server refused the upgrade: %s", line);
        return;
    }

    im_client_fail(c, "bad WebSocket handshake response: \"%s\"", line);
}


int
im_client_send_frame(im_client_t *c, const Im__Frame *f)
{
    int       rc;
    size_t    n;
    ssize_t   len;
    u_char   *buf;
    u_char    stack[4096];

    if (c->failed || c->eof || c->close_sent) {
        im_client_fail(c, "the connection is closed");
        return IM_CLIENT_ERROR;
    }

    n = im_client_encoded_size(f);

    if (n <= sizeof(stack)) {
        buf = stack;

    } else {
        buf = malloc(n);
        if (buf == NULL) {
            im_client_fail(c, "out of memory");
            return IM_CLIENT_ERROR;
        }
    }

    len = im_client_encode(buf, n, f);

    rc = im_client_write(c, buf, len, im_client_deadline(c->timeout));

    if (buf != stack) {
        free(buf);
    }

    return rc;
}


/*
 * The next im.Frame, answering pings on the way.  timeout is in ms, -1
 * waits for ever, 0 takes only what has arrived.  NULL leaves the reason
 * in c->status: IM_CLIENT_AGAIN for a timeout or a signal (errno tells
 * which), IM_CLIENT_CLOSED with c->close_code, IM_CLIENT_ERROR with
 * c->err.  The frame is the caller's: im__frame__free_unpacked(f, NULL).
 */

Im__Frame *
im_client_recv_frame(im_client_t *c, int timeout)
{
    int         rc;
    size_t      n;
    ssize_t     len;
    int64_t     deadline;
    Im__Frame  *f;

    deadline = im_client_deadline(timeout);

    for ( ;; ) {

        if (c->failed) {
            c->status = IM_CLIENT_ERROR;
            return NULL;
        }

        if (c->close_received || c->eof) {
            c->status = IM_CLIENT_CLOSED;
            return NULL;
        }

        while (c->pos < c->last) {
            rc = im_client_parse(&c->parser, c->pos, c->last - c->pos, &n);

            c->pos += n;

            if (rc == IM_CLIENT_AGAIN) {
                break;
            }

            if (rc == IM_CLIENT_ERROR) {
                im_client_fail(c, "bad frame from the server: %s",
                               c->parser.error);
                goto failed;
            }

            f = im_client_message(c);

            if (f) {
                c->status = IM_CLIENT_OK;
                return f;
            }

            if (c->failed || c->close_received) {
                break;
            }
        }

        if (c->failed || c->close_received) {
            continue;
        }

        c->pos = c->in;
        c->last = c->in;

        len = recv(c->fd, c->in, sizeof(c->in), 0);

        if (len > 0) {
            c->last = c->in + len;
            continue;
        }

        if (len == 0) {
            im_client_fail(c, "the server closed the connection without "
                           "a close frame");
            c->eof = 1;
            continue;
        }

        if (errno == EINTR) {
            continue;
        }

        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            im_client_fail(c, "recv() failed: %s", strerror(errno));
            c->failed = 1;
            continue;
        }

        rc = im_client_wait(c->fd, POLLIN, deadline);

        if (rc == IM_CLIENT_AGAIN) {
            im_client_fail(c, "%s",
                           (errno == EINTR) ? "interrupted" : "timed out");
            c->status = IM_CLIENT_AGAIN;
            return NULL;
        }

        if (rc == IM_CLIENT_ERROR) {
            im_client_fail(c, "poll() failed: %s", strerror(errno));
            c->failed = 1;
        }
    }

failed:

    im_client_abort(c, c->parser.code);

    c->status = IM_CLIENT_ERROR;

    return NULL;
}


/* a message from the parser: an im.Frame, or NULL after handling it */

static Im__Frame *
im_client_message(im_client_t *c)
{
    size_t               i, rlen;
    unsigned             code;
    Im__Frame           *f;
    const u_char        *reason;
    im_client_parser_t  *p;
    u_char               echo[2];

    p = &c->parser;

    switch (p->opcode) {

    case IM_CLIENT_WS_BINARY:
        f = im__frame__unpack(NULL, p->len, p->payload);

        if (f == NULL) {
            im_client_fail(c, "the server sent a frame that is not "
                           "an im.Frame");
            im_client_abort(c, IM_CLIENT_CLOSE_INVALID);
        }

        return f;

    case IM_CLIENT_WS_PING:
        if (im_client_send_control(c, IM_CLIENT_WS_PONG, p->payload, p->len)
            != IM_CLIENT_OK)
        {
            c->failed = 1;
        }

        return NULL;

    case IM_CLIENT_WS_PONG:
        return NULL;

    case IM_CLIENT_WS_CLOSE:
        if (im_client_close_status(p->payload, p->len, &code, &reason, &rlen)
            != IM_CLIENT_OK)
        {
            code = IM_CLIENT_CLOSE_PROTOCOL;
            reason = p->payload;
            rlen = 0;
        }

        c->close_received = 1;
        c->close_code = code;

        /* the reason goes to terminals: no control characters */

        for (i = 0; i < rlen; i++) {
            c->close_reason[i] = (reason[i] < 0x20 || reason[i] == 0x7f)
                                 ? '?' : (char) reason[i];
        }

        c->close_reason[rlen] = '\0';

        im_client_fail(c, "the server closed the connection: %u%s%.*s",
                       code, rlen ? " " : "", (int) rlen, c->close_reason);

        if (!c->close_sent) {

            /*
             * RFC 6455 5.5.1: answer with a close, echoing the code if
             * it is one that may be sent (7.4.1, 7.4.2)
             */

            if (code == IM_CLIENT_CLOSE_NO_CODE) {
                (void) im_client_send_control(c, IM_CLIENT_WS_CLOSE, echo,
                                              0);
                return NULL;
            }

            if (code < 1000 || code >= 5000
                || (code >= 1004 && code <= 1006)
                || (code >= 1015 && code < 3000))
            {
                code = IM_CLIENT_CLOSE_PROTOCOL;
            }

            echo[0] = (u_char) (code >> 8);
            echo[1] = (u_char) code;

            (void) im_client_send_control(c, IM_CLIENT_WS_CLOSE, echo, 2);
        }

        return NULL;

    default:
        im_client_fail(c, "the server sent a text message");
        im_client_abort(c, IM_CLIENT_CLOSE_DATA);
        return NULL;
    }
}


/* a goodbye with the reason, if the stream still takes it */

static void
im_client_abort(im_client_t *c, unsigned code)
{
    u_char  payload[2];

    payload[0] = (u_char) (code >> 8);
    payload[1] = (u_char) code;

    (void) im_client_send_control(c, IM_CLIENT_WS_CLOSE, payload, 2);

    c->failed = 1;
}


/*
 * Says goodbye with close 1000 unless a close was exchanged already,
 * waits a little for the server's close, and frees c.
 */

void
im_client_close(im_client_t *c)
{
    int         left;
    int64_t     deadline;
    Im__Frame  *f;
    u_char      code[2];

    if (c == NULL) {
        return;
    }

    if (c->fd != -1 && !c->failed && !c->eof && !c->close_received) {
        left = (c->timeout < IM_CLIENT_CLOSE_WAIT) ? c->timeout
                                                   : IM_CLIENT_CLOSE_WAIT;
        deadline = im_client_deadline(left);

        if (!c->close_sent) {
            code[0] = IM_CLIENT_CLOSE_NORMAL >> 8;
            code[1] = IM_CLIENT_CLOSE_NORMAL & 0xff;

            (void) im_client_send_control(c, IM_CLIENT_WS_CLOSE, code, 2);
        }

        /* frames that cross our close are dropped */

        while (c->close_sent && !c->failed && !c->eof && !c->close_received)
        {
            left = (int) (deadline - im_client_now());

            if (left <= 0) {
                break;
            }

            f = im_client_recv_frame(c, left);

            if (f) {
                im__frame__free_unpacked(f, NULL);
                continue;
            }

            if (c->status == IM_CLIENT_AGAIN) {
                break;
            }
        }
    }

    if (c->fd != -1) {
        (void) close(c->fd);
    }

    im_client_parser_free(&c->parser);
    free(c);
}


static int
im_client_send_control(im_client_t *c, int opcode, const u_char *payload,
    size_t len)
{
    ssize_t  n;
    u_char   frame[IM_CLIENT_HEADER_MAX + IM_CLIENT_CONTROL_MAX];

    if (c->failed || c->eof || c->close_sent) {
        return IM_CLIENT_ERROR;
    }

    n = im_client_frame(frame, sizeof(frame), opcode, payload, len);

    if (n == -1) {
        return IM_CLIENT_ERROR;
    }

    if (opcode == IM_CLIENT_WS_CLOSE) {
        c->close_sent = 1;
    }

    return im_client_write(c, frame, n, im_client_deadline(c->timeout));
}


/* a write cut short leaves half a frame: the stream is then unusable */

static int
im_client_write(im_client_t *c, const u_char *buf, size_t len,
    int64_t deadline)
{
    ssize_t  n;

    while (len) {
        n = send(c->fd, buf, len, MSG_NOSIGNAL);

        if (n >= 0) {
            buf += n;
            len -= n;
            continue;
        }

        if (errno == EINTR) {
            continue;
        }

        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            im_client_fail(c, "send() failed: %s", strerror(errno));
            c->failed = 1;
            return IM_CLIENT_ERROR;
        }

        switch (im_client_wait(c->fd, POLLOUT, deadline)) {

        case IM_CLIENT_OK:
            break;

        case IM_CLIENT_AGAIN:
            im_client_fail(c, "send %s",
                           (errno == EINTR) ? "interrupted" : "timed out");
            c->failed = 1;
            return IM_CLIENT_ERROR;

        default:
            im_client_fail(c, "poll() failed: %s", strerror(errno));
            c->failed = 1;
            return IM_CLIENT_ERROR;
        }
    }

    return IM_CLIENT_OK;
}


/*
 * IM_CLIENT_OK when fd is ready (or has an error for the next call to
 * find); IM_CLIENT_AGAIN with errno ETIMEDOUT or EINTR.
 */

static int
im_client_wait(int fd, short events, int64_t deadline)
{
    int             n, ms;
    int64_t         left;
    struct pollfd   pfd;

    pfd.fd = fd;
    pfd.events = events;

    for ( ;; ) {
        if (deadline < 0) {
            ms = -1;

        } else {
            left = deadline - im_client_now();

            if (left <= 0) {
                errno = ETIMEDOUT;
                return IM_CLIENT_AGAIN;
            }

            ms = (left > INT_MAX) ? INT_MAX : (int) left;
        }

        n = poll(&pfd, 1, ms);

        if (n > 0) {
            return IM_CLIENT_OK;
        }

        if (n == -1) {
            return (errno == EINTR) ? IM_CLIENT_AGAIN : IM_CLIENT_ERROR;
        }
    }
}


static void
im_client_fail(im_client_t *c, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, args);
    va_end(args);
}


/* -1 for no deadline */

static int64_t
im_client_deadline(int timeout)
{
    if (timeout < 0) {
        return -1;
    }

    return im_client_now() + timeout;
}


static int64_t
im_client_now(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
