
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * The HTTP/1.1 upgrade request of RFC 6455 4.2.1, parsed whole once its
 * empty line has arrived: the request is small and bounded, and a parse
 * from the start keeps no state between reads.
 */


static ngx_int_t ngx_stream_im_handshake_header(ngx_stream_im_handshake_t *hs,
    u_char *name, size_t nlen, u_char *value, size_t vlen);
static ngx_int_t ngx_stream_im_has_token(u_char *p, size_t len, char *token,
    ngx_uint_t nocase);
static ngx_int_t ngx_stream_im_equal_nocase(u_char *a, size_t len, char *b);
static ngx_int_t ngx_stream_im_valid_key(u_char *p, size_t len);


#define ngx_stream_im_hs_fail(hs, code, text)                                 \
    (hs)->status = code;                                                      \
    (hs)->reason = text;                                                      \
    return NGX_ERROR


static ngx_str_t  ngx_stream_im_http_errors[] = {
    ngx_string("HTTP/1.1 400 Bad Request\r\n"
               "Connection: close\r\n"
               "Content-Length: 0\r\n\r\n"),
    ngx_string("HTTP/1.1 403 Forbidden\r\n"
               "Connection: close\r\n"
               "Content-Length: 0\r\n\r\n"),
    ngx_string("HTTP/1.1 405 Method Not Allowed\r\n"
               "Allow: GET\r\n"
               "Connection: close\r\n"
               "Content-Length: 0\r\n\r\n"),
    ngx_string("HTTP/1.1 426 Upgrade Required\r\n"
               "Upgrade: websocket\r\n"
               "Sec-WebSocket-Version: 13\r\n"
               "Connection: close\r\n"
               "Content-Length: 0\r\n\r\n"),
    ngx_string("HTTP/1.1 431 Request Header Fields Too Large\r\n"
               "Connection: close\r\n"
               "Content-Length: 0\r\n\r\n"),
    ngx_string("HTTP/1.1 503 Service Unavailable\r\n"
               "Connection: close\r\n"
               "Content-Length: 0\r\n\r\n")
};


ngx_int_t
ngx_stream_im_handshake_parse(u_char *start, u_char *end,
    ngx_stream_im_handshake_t *hs)
{
    u_char  *p, *line, *last, *name, *colon, *value, *vend;

    ngx_memzero(hs, sizeof(ngx_stream_im_handshake_t));

    /* the request must end within the limit, however it arrived */

    if (end - start > NGX_STREAM_IM_HANDSHAKE_MAX) {
        end = start + NGX_STREAM_IM_HANDSHAKE_MAX;
    }

    /* the request line */

    last = ngx_strlchr(start, end, '\n');

    if (last == NULL) {
        goto again;
    }

    line = start;
    vend = (last > line && last[-1] == '\r') ? last - 1 : last;

    if (vend - line < 4 || ngx_memcmp(line, "GET ", 4) != 0) {
        ngx_stream_im_hs_fail(hs, 405, "method is not GET");
    }

    p = line + 4;

    while (p < vend && *p != ' ') {
        if (*p < 0x21 || *p == 0x7f) {
            ngx_stream_im_hs_fail(hs, 400, "bad request target");
        }

        p++;
    }

    if (p == line + 4
        || vend - p != 9
        || ngx_memcmp(p, " HTTP/1.", 8) != 0
        || p[8] < '1' || p[8] > '9')
    {
        ngx_stream_im_hs_fail(hs, 400, "bad request line");
    }

    /* header lines up to the empty one */

    for ( ;; ) {
        line = last + 1;

        last = ngx_strlchr(line, end, '\n');

        if (last == NULL) {
            goto again;
        }

        vend = (last > line && last[-1] == '\r') ? last - 1 : last;

        if (vend == line) {
            break;
        }

        name = line;
        colon = ngx_strlchr(name, vend, ':');

        if (colon == NULL || colon == name) {
            ngx_stream_im_hs_fail(hs, 400, "bad header line");
        }

        for (p = name; p < colon; p++) {
            if (*p <= 0x20 || *p >= 0x7f) {
                ngx_stream_im_hs_fail(hs, 400, "bad header name");
            }
        }

        value = colon + 1;

        while (value < vend && (*value == ' ' || *value == '\t')) {
            value++;
        }

        while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t')) {
            vend--;
        }

        if (ngx_stream_im_handshake_header(hs, name, colon - name, value,
                                           vend - value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    hs->end = last + 1;

    /* RFC 6455 4.2.1 and 4.4: what a server must see before it agrees */

    if (!(hs->seen & NGX_STREAM_IM_HS_HOST)) {
        ngx_stream_im_hs_fail(hs, 400, "no Host header");
    }

    if (!(hs->seen & NGX_STREAM_IM_HS_UPGRADE)) {
        ngx_stream_im_hs_fail(hs, 426, "not a WebSocket upgrade");
    }

    if (!(hs->seen & NGX_STREAM_IM_HS_CONNECTION)) {
        ngx_stream_im_hs_fail(hs, 400, "no \"Connection: Upgrade\"");
    }

    if (!(hs->seen & NGX_STREAM_IM_HS_VERSION)) {
        ngx_stream_im_hs_fail(hs, 426, "WebSocket version is not 13");
    }

    if (hs->key.len == 0) {
        ngx_stream_im_hs_fail(hs, 400, "no Sec-WebSocket-Key");
    }

    return NGX_OK;

again:

    if (end - start >= NGX_STREAM_IM_HANDSHAKE_MAX) {
        ngx_stream_im_hs_fail(hs, 431, "handshake too large");
    }

    return NGX_AGAIN;
}


static ngx_int_t
ngx_stream_im_handshake_header(ngx_stream_im_handshake_t *hs, u_char *name,
    size_t nlen, u_char *value, size_t vlen)
{
    if (ngx_stream_im_equal_nocase(name, nlen, "host")) {
        hs->seen |= NGX_STREAM_IM_HS_HOST;

    } else if (ngx_stream_im_equal_nocase(name, nlen, "upgrade")) {
        if (ngx_stream_im_has_token(value, vlen, "websocket", 1)) {
            hs->seen |= NGX_STREAM_IM_HS_UPGRADE;
        }

    } else if (ngx_stream_im_equal_nocase(name, nlen, "connection")) {
        if (ngx_stream_im_has_token(value, vlen, "upgrade", 1)) {
            hs->seen |= NGX_STREAM_IM_HS_CONNECTION;
        }

    } else if (ngx_stream_im_equal_nocase(name, nlen,
                                          "sec-websocket-version"))
    {
        if (vlen == 2 && value[0] == '1' && value[1] == '3') {
            hs->seen |= NGX_STREAM_IM_HS_VERSION;

        } else {
            hs->seen &= ~NGX_STREAM_IM_HS_VERSION;
        }

    } else if (ngx_stream_im_equal_nocase(name, nlen, "sec-websocket-key")) {
        if (hs->key.len || ngx_stream_im_valid_key(value, vlen) != NGX_OK) {
            ngx_stream_im_hs_fail(hs, 400, "bad Sec-WebSocket-Key");
        }

        hs->key.data = value;
        hs->key.len = vlen;

    } else if (ngx_stream_im_equal_nocase(name, nlen,
                                          "sec-websocket-protocol"))
    {
        /* subprotocol names are case-sensitive, RFC 6455 4.1 */

        if (ngx_stream_im_has_token(value, vlen, "im.v1", 0)) {
            hs->subprotocol = 1;
        }

    } else if (ngx_stream_im_equal_nocase(name, nlen, "origin")) {
        if (hs->origin.data) {
            ngx_stream_im_hs_fail(hs, 400, "more than one Origin");
        }

        hs->origin.data = value;
        hs->origin.len = vlen;
    }

    return NGX_OK;
}


/* a comma-separated list holds the token */

static ngx_int_t
ngx_stream_im_has_token(u_char *p, size_t len, char *token,
    ngx_uint_t nocase)
{
    u_char  *end, *s, *e;

    end = p + len;

    while (p < end) {
        s = p;

        while (p < end && *p != ',') {
            p++;
        }

        e = p;

        if (p < end) {
            p++;
        }

        while (s < e && (*s == ' ' || *s == '\t')) {
            s++;
        }

        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) {
            e--;
        }

        if (nocase) {
            if (ngx_stream_im_equal_nocase(s, e - s, token)) {
                return 1;
            }

        } else if ((size_t) (e - s) == ngx_strlen(token)
                   && ngx_strncmp(s, token, e - s) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_stream_im_equal_nocase(u_char *a, size_t len, char *b)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (b[i] == '\0' || ngx_tolower(a[i]) != ngx_tolower((u_char) b[i])) {
            return 0;
        }
    }

    return b[len] == '\0';
}


/* base64 of 16 bytes: 22 significant characters, the last with 2 bits */

static ngx_int_t
ngx_stream_im_valid_key(u_char *p, size_t len)
{
    size_t  i;

    if (len != 24 || p[22] != '=' || p[23] != '=') {
        return NGX_DECLINED;
    }

    for (i = 0; i < 22; i++) {
        if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '+' || p[i] == '/'))
        {
            return NGX_DECLINED;
        }
    }

    if (ngx_strlchr((u_char *) "AQgw", (u_char *) "AQgw" + 4, p[21])
        == NULL)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * With no im_origins every origin is welcome; with a list, a browser's
 * Origin must be on it.  Native clients send no Origin and pass.
 */

ngx_int_t
ngx_stream_im_handshake_origin_allowed(ngx_array_t *origins,
    ngx_str_t *origin)
{
    u_char      *s;
    ngx_str_t   *o;
    ngx_uint_t   i, j;

    if (origins == NULL || origin->data == NULL) {
        return NGX_OK;
    }

    o = origins->elts;

    for (i = 0; i < origins->nelts; i++) {
        if (o[i].len != origin->len) {
            continue;
        }

        s = o[i].data;

        for (j = 0; j < origin->len; j++) {
            if (ngx_tolower(s[j]) != ngx_tolower(origin->data[j])) {
                break;
            }
        }

        if (j == origin->len) {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_stream_im_handshake_error(ngx_uint_t status, ngx_str_t *response)
{
    ngx_uint_t  i;

    switch (status) {
    case 400:
        i = 0;
        break;
    case 403:
        i = 1;
        break;
    case 405:
        i = 2;
        break;
    case 426:
        i = 3;
        break;
    case 431:
        i = 4;
        break;
    case 503:
        i = 5;
        break;
    default:
        return NGX_ERROR;
    }

    *response = ngx_stream_im_http_errors[i];

    return NGX_OK;
}
