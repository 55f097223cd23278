
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"
#include "unit.h"


#define TEST_KEY         "dGhlIHNhbXBsZSBub25jZQ=="

#define TEST_GET         "GET /chat?room=1 HTTP/1.1\r\n"
#define TEST_HOST        "Host: im.example.com\r\n"
#define TEST_UPGRADE     "Upgrade: websocket\r\n"
#define TEST_CONN        "Connection: Upgrade\r\n"
#define TEST_KEY_H       "Sec-WebSocket-Key: " TEST_KEY "\r\n"
#define TEST_VERSION     "Sec-WebSocket-Version: 13\r\n"
#define TEST_ORIGIN      "Origin: https://app.example.com\r\n"
#define TEST_PROTO       "Sec-WebSocket-Protocol: chat, im.v1\r\n"

#define TEST_REQUEST                                                          \
    TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H TEST_ORIGIN          \
    TEST_PROTO TEST_VERSION "\r\n"

/* a masked empty ping that a client may send right behind the request */
#define TEST_TAIL        "\x89\x80\x01\x02\x03\x04"

/* a request with one header line put in, after Host */
#define test_with(line)                                                       \
    TEST_GET TEST_HOST line TEST_UPGRADE TEST_CONN TEST_KEY_H TEST_VERSION    \
    "\r\n"


typedef struct {
    char                          *request;
    ngx_uint_t                     status;
    char                          *what;
} test_error_t;


static ngx_int_t test_parse(u_char *data, size_t len,
    ngx_stream_im_handshake_t *hs);
static ngx_int_t test_parse_text(char *text, ngx_stream_im_handshake_t *hs);
static ngx_uint_t test_equal(ngx_str_t *s, char *text);
static ngx_uint_t test_contains(ngx_str_t *s, char *text);
static ngx_int_t test_origin(ngx_array_t *list, char *text);

static void test_valid(void);
static void test_line_endings(void);
static void test_names(void);
static void test_tokens(void);
static void test_prefixes(void);
static void test_errors(void);
static void test_too_large(void);
static void test_origins(void);
static void test_responses(void);


static u_char  *test_buf;


/*
 * Parses a copy in a buffer of exactly the given length, so that ASan
 * sees a read past the end; pointers in hs are moved back to data.
 */

static ngx_int_t
test_parse(u_char *data, size_t len, ngx_stream_im_handshake_t *hs)
{
    u_char     *copy;
    ngx_int_t   rc;

    copy = malloc(len ? len : 1);
    if (copy == NULL) {
        abort();
    }

    ngx_memcpy(copy, data, len);

    rc = ngx_stream_im_handshake_parse(copy, copy + len, hs);

    if (hs->end) {
        hs->end = data + (hs->end - copy);
    }

    if (hs->key.data) {
        hs->key.data = data + (hs->key.data - copy);
    }

    if (hs->origin.data) {
        hs->origin.data = data + (hs->origin.data - copy);
    }

    free(copy);

    return rc;
}


static ngx_int_t
test_parse_text(char *text, ngx_stream_im_handshake_t *hs)
{
    return test_parse((u_char *) text, ngx_strlen(text), hs);
}


static ngx_uint_t
test_equal(ngx_str_t *s, char *text)
{
    size_t  n;

    n = ngx_strlen(text);

    return s->len == n && s->data != NULL
           && ngx_memcmp(s->data, text, n) == 0;
}


static ngx_uint_t
test_contains(ngx_str_t *s, char *text)
{
    size_t  n, i;

    n = ngx_strlen(text);

    for (i = 0; i + n <= s->len; i++) {
        if (ngx_memcmp(s->data + i, text, n) == 0) {
            return 1;
        }
    }

    return 0;
}


static void
test_valid(void)
{
    size_t                      len;
    ngx_int_t                   rc;
    ngx_stream_im_handshake_t   hs;

    len = sizeof(TEST_REQUEST) - 1;

    ngx_memcpy(test_buf, TEST_REQUEST TEST_TAIL, len + 6);

    rc = test_parse(test_buf, len + 6, &hs);

    check(rc == NGX_OK);
    check(hs.end == test_buf + len);
    check(hs.end[0] == 0x89);
    check(test_equal(&hs.key, TEST_KEY));
    check(test_equal(&hs.origin, "https://app.example.com"));
    check(hs.subprotocol == 1);
    check(hs.seen == (NGX_STREAM_IM_HS_HOST | NGX_STREAM_IM_HS_UPGRADE
                      | NGX_STREAM_IM_HS_CONNECTION
                      | NGX_STREAM_IM_HS_VERSION));

    /* the request alone */

    rc = test_parse(test_buf, len, &hs);

    check(rc == NGX_OK);
    check(hs.end == test_buf + len);

    /* no Origin, no subprotocol, values with spaces and tabs around */

    rc = test_parse_text(TEST_GET TEST_HOST
                         "Upgrade:websocket\r\n"
                         "Connection: \t Upgrade \t\r\n"
                         "Sec-WebSocket-Key:   " TEST_KEY "  \r\n"
                         "Sec-WebSocket-Version:13\r\n"
                         "X-Other: whatever: with colons\r\n"
                         "\r\n", &hs);

    check(rc == NGX_OK);
    check(test_equal(&hs.key, TEST_KEY));
    check(hs.origin.data == NULL);
    check(hs.subprotocol == 0);

    /* an Origin that is empty is still an Origin */

    rc = test_parse_text(test_with("Origin:\r\n"), &hs);

    check(rc == NGX_OK);
    check(hs.origin.data != NULL && hs.origin.len == 0);

    /* other subprotocols only */

    rc = test_parse_text(test_with("Sec-WebSocket-Protocol: im.v2, chat\r\n"),
                         &hs);

    check(rc == NGX_OK);
    check(hs.subprotocol == 0);

    rc = test_parse_text(test_with("Sec-WebSocket-Protocol: im.v1\r\n"), &hs);

    check(rc == NGX_OK);
    check(hs.subprotocol == 1);

    rc = test_parse_text(test_with("Sec-WebSocket-Protocol: im.v10\r\n"),
                         &hs);

    check(rc == NGX_OK);
    check(hs.subprotocol == 0);

    /* other keys: the last character carries 2 bits, the rest are 0 */

    rc = test_parse_text(TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
                         "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
                         TEST_VERSION "\r\n", &hs);

    check(rc == NGX_OK);

    rc = test_parse_text(TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
                         "Sec-WebSocket-Key: +/+/+/+/+/+/+/+/09azAw==\r\n"
                         TEST_VERSION "\r\n", &hs);

    check(rc == NGX_OK);
    check(test_equal(&hs.key, "+/+/+/+/+/+/+/+/09azAw=="));

    /* HTTP/1.1 and up; any request target */

    rc = test_parse_text("GET / HTTP/1.2\r\n" TEST_HOST TEST_UPGRADE
                         TEST_CONN TEST_KEY_H TEST_VERSION "\r\n", &hs);

    check(rc == NGX_OK);

    rc = test_parse_text("GET http://im.example.com/x?a=b%20c HTTP/1.1\r\n"
                         TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H
                         TEST_VERSION "\r\n", &hs);

    check(rc == NGX_OK);
}


static void
test_line_endings(void)
{
    size_t                      len;
    ngx_int_t                   rc;
    ngx_stream_im_handshake_t   hs;

    static char  lf[] = "GET /chat HTTP/1.1\n"
                        "Host: im.example.com\n"
                        "Upgrade: websocket\n"
                        "Connection: Upgrade\n"
                        "Sec-WebSocket-Key: " TEST_KEY "\n"
                        "Origin: https://app.example.com\n"
                        "Sec-WebSocket-Protocol: im.v1\n"
                        "Sec-WebSocket-Version: 13\n"
                        "\n";

    static char  mixed[] = "GET /chat HTTP/1.1\r\n"
                           "Host: im.example.com\n"
                           "Upgrade: websocket\r\n"
                           "Connection: Upgrade\n"
                           "Sec-WebSocket-Key: " TEST_KEY "\r\n"
                           "Sec-WebSocket-Version: 13\n"
                           "\r\n";

    len = sizeof(lf) - 1;

    ngx_memcpy(test_buf, lf, len);
    ngx_memcpy(test_buf + len, TEST_TAIL, 6);

    rc = test_parse(test_buf, len + 6, &hs);

    check(rc == NGX_OK);
    check(hs.end == test_buf + len);
    check(test_equal(&hs.key, TEST_KEY));
    check(test_equal(&hs.origin, "https://app.example.com"));
    check(hs.subprotocol == 1);

    len = sizeof(mixed) - 1;

    ngx_memcpy(test_buf, mixed, len);
    ngx_memcpy(test_buf + len, TEST_TAIL, 6);

    rc = test_parse(test_buf, len + 6, &hs);

    check(rc == NGX_OK);
    check(hs.end == test_buf + len);
    check(test_equal(&hs.key, TEST_KEY));
}


static void
test_names(void)
{
    ngx_int_t                   rc;
    ngx_stream_im_handshake_t   hs;

    rc = test_parse_text("GET /chat HTTP/1.1\r\n"
                         "hOST: im.example.com\r\n"
                         "UPGRADE: websocket\r\n"
                         "connection: Upgrade\r\n"
                         "SEC-WEBSOCKET-KEY: " TEST_KEY "\r\n"
                         "oRiGiN: https://app.example.com\r\n"
                         "sec-websocket-protocol: im.v1\r\n"
                         "sec-WebSocket-VERSION: 13\r\n"
                         "\r\n", &hs);

    check(rc == NGX_OK);
    check(test_equal(&hs.key, TEST_KEY));
    check(test_equal(&hs.origin, "https://app.example.com"));
    check(hs.subprotocol == 1);

    /* a name that only starts like a known one is another header */

    rc = test_parse_text(TEST_GET "Hostname: x\r\n" TEST_UPGRADE TEST_CONN
                         TEST_KEY_H TEST_VERSION "\r\n", &hs);

    check(rc == NGX_ERROR);
    check(hs.status == 400);

    rc = test_parse_text(TEST_GET "Hos: x\r\n" TEST_UPGRADE TEST_CONN
                         TEST_KEY_H TEST_VERSION "\r\n", &hs);

    check(rc == NGX_ERROR);
    check(hs.status == 400);
}


static void
test_tokens(void)
{
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_stream_im_handshake_t   hs;

    static char  *good[] = {
        test_with("Connection: keep-alive, Upgrade\r\n"),
        test_with("Connection: Upgrade,keep-alive\r\n"),
        test_with("Connection: keep-alive ,\tupgrade\t, close\r\n"),
        test_with("Connection: UPGRADE\r\n"),
        test_with("Upgrade: WebSocket\r\n"),
        test_with("Upgrade: WEBSOCKET\r\n"),
        test_with("Upgrade: foo/1, websocket\r\n"),
        test_with("Upgrade: ,websocket,\r\n"),
        NULL
    };

    /* headers that repeat are each looked at */

    static char  repeated[] =
        TEST_GET TEST_HOST
        "Connection: keep-alive\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: h2c\r\n"
        "Upgrade: websocket\r\n"
        TEST_KEY_H TEST_VERSION "\r\n";

    for (i = 0; good[i]; i++) {
        rc = test_parse_text(good[i], &hs);

        check(rc == NGX_OK);

        if (rc != NGX_OK) {
            fprintf(stderr, "    token case %u: %s\n", (unsigned) i,
                    hs.reason ? hs.reason : "again");
        }
    }

    rc = test_parse_text(repeated, &hs);
    check(rc == NGX_OK);
}


/* a request that has not ended asks for more, whatever is missing */

static void
test_prefixes(void)
{
    size_t                      len, n;
    ngx_int_t                   rc;
    ngx_uint_t                  again, k;
    ngx_stream_im_handshake_t   hs;

    static char  *requests[] = {
        TEST_REQUEST,
        "GET /chat HTTP/1.1\n"
        "Host: im.example.com\n"
        "Upgrade: websocket\n"
        "Connection: Upgrade\n"
        "Sec-WebSocket-Key: " TEST_KEY "\n"
        "Sec-WebSocket-Version: 13\n"
        "\n",
        NULL
    };

    for (k = 0; requests[k]; k++) {
        len = ngx_strlen(requests[k]);
        again = 0;

        for (n = 0; n < len; n++) {
            rc = test_parse((u_char *) requests[k], n, &hs);

            if (rc == NGX_AGAIN) {
                again++;

            } else {
                fprintf(stderr, "    prefix of %u: rc %d, %s\n",
                        (unsigned) n, (int) rc,
                        hs.reason ? hs.reason : "-");
            }
        }

        check(again == len);

        rc = test_parse((u_char *) requests[k], len, &hs);
        check(rc == NGX_OK);
    }
}


static void
test_errors(void)
{
    char                       *text;
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_stream_im_handshake_t   hs;

    static test_error_t  cases[] = {

        /* the request line */

        { "POST /chat HTTP/1.1\r\n" TEST_HOST TEST_UPGRADE TEST_CONN
          TEST_KEY_H TEST_VERSION "\r\n", 405, "POST" },
        { "HEAD /chat HTTP/1.1\r\n\r\n", 405, "HEAD" },
        { "get /chat HTTP/1.1\r\n\r\n", 405, "lowercase get" },
        { "GE\r\n\r\n", 405, "short method" },
        { "\r\n\r\n", 405, "empty request line" },
        { "GET /chat HTTP/1.0\r\n" TEST_HOST TEST_UPGRADE TEST_CONN
          TEST_KEY_H TEST_VERSION "\r\n", 400, "HTTP/1.0" },
        { "GET /chat HTTP/2.0\r\n\r\n", 400, "HTTP/2.0" },
        { "GET /chat HTTP/1.11\r\n\r\n", 400, "HTTP/1.11" },
        { "GET /chat HTTP/1.x\r\n\r\n", 400, "HTTP/1.x" },
        { "GET /chat http/1.1\r\n\r\n", 400, "lowercase http" },
        { "GET /chat\r\n\r\n", 400, "HTTP/0.9" },
        { "GET  HTTP/1.1\r\n\r\n", 400, "no target" },
        { "GET /a b HTTP/1.1\r\n\r\n", 400, "space in target" },
        { "GET /chat HTTP/1.1 \r\n\r\n", 400, "space at the end" },
        { "GET /ch\x01t HTTP/1.1\r\n\r\n", 400, "control in target" },
        { "GET /ch\x7ft HTTP/1.1\r\n\r\n", 400, "DEL in target" },

        /* what a WebSocket upgrade must have */

        { TEST_GET TEST_UPGRADE TEST_CONN TEST_KEY_H TEST_VERSION "\r\n",
          400, "no Host" },
        { TEST_GET TEST_HOST TEST_CONN TEST_KEY_H TEST_VERSION "\r\n",
          426, "no Upgrade" },
        { TEST_GET TEST_HOST "Upgrade: h2c\r\n" TEST_CONN TEST_KEY_H
          TEST_VERSION "\r\n", 426, "Upgrade: h2c" },
        { TEST_GET TEST_HOST "Upgrade: websocket2\r\n" TEST_CONN TEST_KEY_H
          TEST_VERSION "\r\n", 426, "Upgrade: websocket2" },
        { TEST_GET TEST_HOST TEST_UPGRADE "Connection: keep-alive\r\n"
          TEST_KEY_H TEST_VERSION "\r\n", 400, "Connection: keep-alive" },
        { TEST_GET TEST_HOST TEST_UPGRADE "Connection: upgrader\r\n"
          TEST_KEY_H TEST_VERSION "\r\n", 400, "Connection: upgrader" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_KEY_H TEST_VERSION "\r\n",
          400, "no Connection" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H
          "Sec-WebSocket-Version: 8\r\n\r\n", 426, "version 8" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H
          "Sec-WebSocket-Version: 130\r\n\r\n", 426, "version 130" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H
          "Sec-WebSocket-Version: 13, 8\r\n\r\n", 426, "version list" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H "\r\n",
          426, "no version" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H TEST_VERSION
          "Sec-WebSocket-Version: 8\r\n\r\n", 426, "version 13, then 8" },

        /* the key */

        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_VERSION "\r\n",
          400, "no key" },
        { test_with("Sec-WebSocket-Key:\r\n"), 400, "empty key" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n"
          TEST_VERSION "\r\n", 400, "key of 23" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ===\r\n"
          TEST_VERSION "\r\n", 400, "key of 25" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAA\r\n"
          TEST_VERSION "\r\n", 400, "key without padding" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBu*25jZQ==\r\n"
          TEST_VERSION "\r\n", 400, "key with *" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBu-25jZQ==\r\n"
          TEST_VERSION "\r\n", 400, "key in base64url" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBu 25jZQ==\r\n"
          TEST_VERSION "\r\n", 400, "key with a space" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZB==\r\n"
          TEST_VERSION "\r\n", 400, "key with trailing bits" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ/==\r\n"
          TEST_VERSION "\r\n", 400, "key ending in /" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H TEST_KEY_H
          TEST_VERSION "\r\n", 400, "two keys" },
        { TEST_GET TEST_HOST TEST_UPGRADE TEST_CONN TEST_KEY_H
          "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
          TEST_VERSION "\r\n", 400, "two different keys" },

        /* header lines */

        { test_with("Origin: https://a.example.com\r\n"
                    "Origin: https://b.example.com\r\n"), 400,
          "two Origins" },
        { test_with("Origin: https://a.example.com\r\n"
                    "origin: https://a.example.com\r\n"), 400,
          "the same Origin twice" },
        { test_with("X-No-Colon\r\n"), 400, "no colon" },
        { test_with(": value\r\n"), 400, "no name" },
        { test_with("Host : im.example.com\r\n"), 400, "space in name" },
        { test_with(" folded: value\r\n"), 400, "folded line" },
        { test_with("X-\x01: value\r\n"), 400, "control in name" },
        { test_with("X-\x80: value\r\n"), 400, "8-bit name" },

        { NULL, 0, NULL }
    };

    for (i = 0; cases[i].request; i++) {
        text = cases[i].request;

        rc = test_parse_text(text, &hs);

        check(rc == NGX_ERROR);
        check(hs.status == cases[i].status);
        check(hs.reason != NULL);

        if (rc != NGX_ERROR || hs.status != cases[i].status) {
            fprintf(stderr, "    %s: rc %d, status %u, %s\n",
                    cases[i].what, (int) rc, (unsigned) hs.status,
                    hs.reason ? hs.reason : "-");
        }
    }
}


static void
test_too_large(void)
{
    u_char                     *p;
    size_t                      len;
    ngx_int_t                   rc;
    ngx_stream_im_handshake_t   hs;

    /* header lines that never end in an empty one */

    p = ngx_cpymem(test_buf, TEST_GET TEST_HOST,
                   sizeof(TEST_GET TEST_HOST) - 1);

    while (p - test_buf < NGX_STREAM_IM_HANDSHAKE_MAX + 100) {
        p = ngx_cpymem(p, "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                       48);
    }

    for (len = 0; len < (size_t) (p - test_buf); len++) {
        rc = test_parse(test_buf, len, &hs);

        if (len < NGX_STREAM_IM_HANDSHAKE_MAX) {
            if (rc != NGX_AGAIN) {
                check(rc == NGX_AGAIN);
                fprintf(stderr, "    %u bytes: %d\n", (unsigned) len,
                        (int) rc);
                break;
            }

        } else if (rc != NGX_ERROR || hs.status != 431) {
            check(rc == NGX_ERROR && hs.status == 431);
            fprintf(stderr, "    %u bytes: %d, %u\n", (unsigned) len,
                    (int) rc, (unsigned) hs.status);
            break;
        }
    }

    rc = test_parse(test_buf, NGX_STREAM_IM_HANDSHAKE_MAX - 1, &hs);
    check(rc == NGX_AGAIN);

    rc = test_parse(test_buf, NGX_STREAM_IM_HANDSHAKE_MAX, &hs);
    check(rc == NGX_ERROR);
    check(hs.status == 431);
    check(hs.reason != NULL);

    /* a request line that never ends */

    p = ngx_cpymem(test_buf, "GET /", 5);
    ngx_memset(p, 'a', NGX_STREAM_IM_HANDSHAKE_MAX);

    rc = test_parse(test_buf, NGX_STREAM_IM_HANDSHAKE_MAX - 1, &hs);
    check(rc == NGX_AGAIN);

    rc = test_parse(test_buf, NGX_STREAM_IM_HANDSHAKE_MAX, &hs);
    check(rc == NGX_ERROR);
    check(hs.status == 431);
}


static ngx_int_t
test_origin(ngx_array_t *list, char *text)
{
    ngx_str_t  origin;

    origin.data = (u_char *) text;
    origin.len = text ? ngx_strlen(text) : 0;

    return ngx_stream_im_handshake_origin_allowed(list, &origin);
}


static void
test_origins(void)
{
    ngx_array_t  list;

    static ngx_str_t  allowed[] = {
        ngx_string("https://app.example.com"),
        ngx_string("http://localhost:8080")
    };

    list.elts = allowed;
    list.nelts = 2;
    list.size = sizeof(ngx_str_t);
    list.nalloc = 2;
    list.pool = NULL;

    /* no list: everyone */

    check(test_origin(NULL, "https://evil.example.net") == NGX_OK);
    check(test_origin(NULL, NULL) == NGX_OK);

    /* a list: native clients, with no Origin, still pass */

    check(test_origin(&list, NULL) == NGX_OK);

    check(test_origin(&list, "https://app.example.com") == NGX_OK);
    check(test_origin(&list, "http://localhost:8080") == NGX_OK);
    check(test_origin(&list, "HTTPS://App.Example.COM") == NGX_OK);
    check(test_origin(&list, "http://LOCALHOST:8080") == NGX_OK);

    check(test_origin(&list, "https://app.example.com:8443")
          == NGX_DECLINED);
    check(test_origin(&list, "http://localhost:8081") == NGX_DECLINED);
    check(test_origin(&list, "http://localhost") == NGX_DECLINED);
    check(test_origin(&list, "http://app.example.com") == NGX_DECLINED);
    check(test_origin(&list, "https://app.example.co") == NGX_DECLINED);
    check(test_origin(&list, "https://app.example.com.evil.net")
          == NGX_DECLINED);
    check(test_origin(&list, "https://evil.example.net") == NGX_DECLINED);
    check(test_origin(&list, "null") == NGX_DECLINED);
    check(test_origin(&list, "") == NGX_DECLINED);

    /* an empty list lets no browser in */

    list.nelts = 0;

    check(test_origin(&list, "https://app.example.com") == NGX_DECLINED);
    check(test_origin(&list, NULL) == NGX_OK);
}


static void
test_responses(void)
{
    ngx_str_t   r;
    ngx_uint_t  i;

    static struct {
        ngx_uint_t   status;
        char        *line;
        char        *header;
    } cases[] = {
        { 400, "HTTP/1.1 400 Bad Request\r\n", NULL },
        { 403, "HTTP/1.1 403 Forbidden\r\n", NULL },
        { 405, "HTTP/1.1 405 Method Not Allowed\r\n", "\r\nAllow: GET\r\n" },
        { 426, "HTTP/1.1 426 Upgrade Required\r\n",
          "\r\nSec-WebSocket-Version: 13\r\n" },
        { 431, "HTTP/1.1 431 Request Header Fields Too Large\r\n", NULL },
        { 503, "HTTP/1.1 503 Service Unavailable\r\n", NULL }
    };

    static ngx_uint_t  unknown[] = { 0, 200, 101, 404, 500, 502, 1002 };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ngx_str_null(&r);

        check(ngx_stream_im_handshake_error(cases[i].status, &r) == NGX_OK);

        check(r.len > ngx_strlen(cases[i].line)
              && ngx_memcmp(r.data, cases[i].line,
                            ngx_strlen(cases[i].line)) == 0);

        check(r.len >= 4
              && ngx_memcmp(r.data + r.len - 4, "\r\n\r\n", 4) == 0);

        check(test_contains(&r, "\r\nConnection: close\r\n"));
        check(test_contains(&r, "\r\nContent-Length: 0\r\n"));

        if (cases[i].header) {
            check(test_contains(&r, cases[i].header));
        }

        /* one response, no empty line inside it */

        check(test_contains(&r, "\r\n\r\n")
              && ngx_memcmp(r.data + r.len - 4, "\r\n\r\n", 4) == 0
              && r.len - 4
                 == (size_t) ((u_char *) strstr((char *) r.data, "\r\n\r\n")
                              - r.data));
    }

    for (i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        ngx_str_null(&r);

        check(ngx_stream_im_handshake_error(unknown[i], &r) == NGX_ERROR);
        check(r.data == NULL);
    }
}


int
main(void)
{
    test_buf = malloc(2 * NGX_STREAM_IM_HANDSHAKE_MAX);
    if (test_buf == NULL) {
        return 2;
    }

    test_valid();
    test_line_endings();
    test_names();
    test_tokens();
    test_prefixes();
    test_errors();
    test_too_large();
    test_origins();
    test_responses();

    free(test_buf);

    return unit_done("test_handshake");
}
