
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"
#include "unit.h"


#define TEST_IN_MAX      (256 * 1024)
#define TEST_LOG_MAX     (1024 * 1024)
#define TEST_RECS        64
#define TEST_BIG         ((size_t) 1 << 20)
#define TEST_SEED        20240611

/* length forms of test_frame(): the shortest, or forced */
#define TEST_MIN         0
#define TEST_7           7
#define TEST_16          16
#define TEST_64          64

#define TEST_CONT        NGX_STREAM_IM_WS_CONT
#define TEST_TEXT        NGX_STREAM_IM_WS_TEXT
#define TEST_BIN         NGX_STREAM_IM_WS_BINARY
#define TEST_CLOSE       NGX_STREAM_IM_WS_CLOSE
#define TEST_PING        NGX_STREAM_IM_WS_PING
#define TEST_PONG        NGX_STREAM_IM_WS_PONG

#define test_b0(fin, rsv, op)                                                 \
    (u_char) (((fin) << 7) | ((rsv) << 4) | (op))

/* check, and say which case failed */
#define test_check(expr, what)                                                \
    do {                                                                      \
        check(expr);                                                          \
                                                                              \
        if (!(expr)) {                                                        \
            fprintf(stderr, "    while testing %s\n", what);                  \
        }                                                                     \
    } while (0)


typedef struct {
    ngx_uint_t                     opcode;
    size_t                         len;
    uint64_t                       more;
    unsigned                       first:1;
    unsigned                       last:1;
} test_rec_t;


/*
 * What the parser said about an input: every chunk as text, "{op:" where
 * a message (or a control frame) starts, the payload in hex, "}" where it
 * ends, so that any split of the same input must give the same text.
 */

typedef struct {
    u_char                        *log;
    size_t                         len;
    ngx_int_t                      rc;
    ngx_uint_t                     status;
    char                          *reason;
    size_t                         used;       /* input consumed */
    ngx_uint_t                     chunks;
    ngx_uint_t                     bad;        /* broken invariants */
    test_rec_t                     rec[TEST_RECS];
} test_run_t;


static size_t test_frame(u_char *out, u_char b0, ngx_uint_t form,
    uint64_t len, u_char *mask, u_char *data, size_t n);
static uint32_t test_random(void);
static void test_run_init(test_run_t *r);
static void test_run_free(test_run_t *r);
static void test_log(test_run_t *r, char *text);
static void test_log_hex(test_run_t *r, u_char *data, size_t len);
static void test_log_msg(test_run_t *r, ngx_uint_t opcode, u_char *data,
    size_t len);
static void test_feed(u_char *in, size_t len, size_t max, size_t *pieces,
    test_run_t *r);
static void test_run3(char *what, u_char *in, size_t len, size_t max,
    test_run_t *expect, ngx_int_t rc, ngx_uint_t status, test_run_t *whole);
static void test_violation(char *what, u_char *in, size_t len, size_t max,
    ngx_uint_t status);
static ngx_uint_t test_rec(test_run_t *r, ngx_uint_t i, ngx_uint_t opcode,
    size_t len, uint64_t more, ngx_uint_t first, ngx_uint_t last);

static void test_single(void);
static void test_fragmented(void);
static void test_empty(void);
static void test_bad_bits(void);
static void test_bad_control(void);
static void test_bad_sequence(void);
static void test_bad_length(void);
static void test_too_big(void);
static void test_unmask(void);
static void test_more(void);
static void test_header(void);
static void test_close(void);
static void test_utf8(void);


static u_char     test_mask1[4] = { 0x37, 0xfa, 0x21, 0x3d };
static u_char     test_mask2[4] = { 0x00, 0xff, 0x80, 0x01 };
static u_char     test_zero[4];
static u_char    *test_in;
static u_char    *test_data;
static uint32_t   test_seed;


/* a client frame: any first byte, mask, length form, announced length */

static size_t
test_frame(u_char *out, u_char b0, ngx_uint_t form, uint64_t len,
    u_char *mask, u_char *data, size_t n)
{
    u_char      *p;
    size_t       i;
    ngx_uint_t   k;

    p = out;
    *p++ = b0;

    if (form == TEST_MIN) {
        form = (len < 126) ? TEST_7 : (len <= 0xffff) ? TEST_16 : TEST_64;
    }

    switch (form) {

    case TEST_7:
        *p++ = (u_char) ((mask ? 0x80 : 0) | len);
        break;

    case TEST_16:
        *p++ = (u_char) ((mask ? 0x80 : 0) | 126);
        *p++ = (u_char) (len >> 8);
        *p++ = (u_char) len;
        break;

    default: /* TEST_64 */
        *p++ = (u_char) ((mask ? 0x80 : 0) | 127);

        for (k = 8; k > 0; k--) {
            *p++ = (u_char) (len >> ((k - 1) * 8));
        }
    }

    if (mask == NULL) {
        for (i = 0; i < n; i++) {
            *p++ = data[i];
        }

        return p - out;
    }

    p = ngx_cpymem(p, mask, 4);

    for (i = 0; i < n; i++) {
        *p++ = data[i] ^ mask[i & 3];
    }

    return p - out;
}


static uint32_t
test_random(void)
{
    test_seed = test_seed * 1103515245 + 12345;

    return (test_seed >> 16) & 0x7fff;
}


static void
test_run_init(test_run_t *r)
{
    ngx_memzero(r, sizeof(test_run_t));

    r->log = malloc(TEST_LOG_MAX);
    if (r->log == NULL) {
        abort();
    }
}


static void
test_run_free(test_run_t *r)
{
    free(r->log);
}


static void
test_log(test_run_t *r, char *text)
{
    size_t  n;

    n = ngx_strlen(text);

    if (r->len + n > TEST_LOG_MAX) {
        r->bad++;
        return;
    }

    r->len = ngx_cpymem(r->log + r->len, text, n) - r->log;
}


static void
test_log_hex(test_run_t *r, u_char *data, size_t len)
{
    size_t   i;
    u_char  *p;

    static u_char  hex[] = "0123456789abcdef";

    if (r->len + 2 * len > TEST_LOG_MAX) {
        r->bad++;
        return;
    }

    p = r->log + r->len;

    for (i = 0; i < len; i++) {
        *p++ = hex[data[i] >> 4];
        *p++ = hex[data[i] & 0xf];
    }

    r->len = p - r->log;
}


/* what a whole message or control frame should look like in a log */

static void
test_log_msg(test_run_t *r, ngx_uint_t opcode, u_char *data, size_t len)
{
    char  open[8];

    snprintf(open, sizeof(open), "{%x:", (unsigned) opcode);

    test_log(r, open);
    test_log_hex(r, data, len);
    test_log(r, "}");
}


/*
 * Feeds the input in pieces of the given sizes, each copied into a buffer
 * of its own exact size, so that ASan sees any read past b->last.
 */

static void
test_feed(u_char *in, size_t len, size_t max, size_t *pieces,
    test_run_t *r)
{
    char                        open[8];
    size_t                      off, n;
    u_char                     *piece;
    uint64_t                    more;
    ngx_int_t                   rc;
    ngx_buf_t                   b;
    ngx_uint_t                  op;
    test_rec_t                 *rec;
    ngx_stream_im_ws_chunk_t    ch;
    ngx_stream_im_ws_parser_t   p;

    ngx_memzero(&p, sizeof(ngx_stream_im_ws_parser_t));
    ngx_memzero(&ch, sizeof(ngx_stream_im_ws_chunk_t));

    rc = NGX_AGAIN;
    off = 0;
    more = 0;
    op = 0;

    while (off < len) {
        n = *pieces++;

        piece = malloc(n);
        if (piece == NULL) {
            abort();
        }

        ngx_memcpy(piece, in + off, n);

        ngx_memzero(&b, sizeof(ngx_buf_t));
        b.start = piece;
        b.pos = piece;
        b.last = piece + n;
        b.end = piece + n;

        for ( ;; ) {
            ngx_memzero(&ch, sizeof(ngx_stream_im_ws_chunk_t));

            rc = ngx_stream_im_ws_parse(&p, &b, max, &ch);

            if (rc != NGX_OK) {
                break;
            }

            if (r->chunks < TEST_RECS) {
                rec = &r->rec[r->chunks];
                rec->opcode = ch.opcode;
                rec->len = ch.len;
                rec->more = ch.more;
                rec->first = ch.first;
                rec->last = ch.last;
            }

            r->chunks++;

            /* the chunk lies in what was fed, and agrees with the last */

            if (ch.data < piece || ch.data + ch.len > b.pos
                || b.pos > b.last)
            {
                r->bad++;
            }

            if (ch.opcode != TEST_BIN && ch.opcode != TEST_CLOSE
                && ch.opcode != TEST_PING && ch.opcode != TEST_PONG)
            {
                r->bad++;
            }

            if (more && (ch.len + ch.more != more || ch.opcode != op
                         || ch.first))
            {
                r->bad++;
            }

            if ((ch.len == 0 && (more || ch.more || !ch.last))
                || (ch.more && ch.last))
            {
                r->bad++;
            }

            more = ch.more;
            op = ch.opcode;

            if (ch.first) {
                snprintf(open, sizeof(open), "{%x:", (unsigned) ch.opcode);
                test_log(r, open);
            }

            test_log_hex(r, ch.data, ch.len);

            if (ch.last) {
                test_log(r, "}");
            }
        }

        r->used = off + (b.pos - piece);

        /* on NGX_AGAIN the caller may drop the buffer: all of it is used */

        if (rc == NGX_AGAIN && b.pos != b.last) {
            r->bad++;
        }

        free(piece);

        off += n;

        if (rc == NGX_ERROR) {
            r->status = ch.status;
            r->reason = ch.reason;
            break;
        }
    }

    r->rc = rc;
}


/* the same input whole, byte by byte, and in random pieces */

static void
test_run3(char *what, u_char *in, size_t len, size_t max, test_run_t *expect,
    ngx_int_t rc, ngx_uint_t status, test_run_t *whole)
{
    size_t      *pieces, i, n, left;
    test_run_t   r[3];
    ngx_uint_t   k;

    pieces = malloc((len + 1) * sizeof(size_t));
    if (pieces == NULL) {
        abort();
    }

    for (k = 0; k < 3; k++) {
        test_run_init(&r[k]);

        switch (k) {

        case 0:
            pieces[0] = len;
            break;

        case 1:
            for (i = 0; i < len; i++) {
                pieces[i] = 1;
            }

            break;

        default:
            test_seed = TEST_SEED;

            for (i = 0, left = len; left; i++) {
                n = 1 + test_random() % 97;
                pieces[i] = ngx_min(left, n);
                left -= pieces[i];
            }
        }

        test_feed(in, len, max, pieces, &r[k]);

        test_check(r[k].rc == rc, what);
        test_check(r[k].bad == 0, what);
        test_check(r[k].len == expect->len
                   && ngx_memcmp(r[k].log, expect->log, r[k].len) == 0,
                   what);

        if (r[k].len != expect->len
            || ngx_memcmp(r[k].log, expect->log, r[k].len) != 0)
        {
            fprintf(stderr, "    got %.*s\n    not %.*s\n",
                    (int) ngx_min(r[k].len, 200), r[k].log,
                    (int) ngx_min(expect->len, 200), expect->log);
        }

        if (rc == NGX_ERROR) {
            test_check(r[k].status == status, what);
            test_check(r[k].reason != NULL, what);

            if (r[k].status != status) {
                fprintf(stderr, "    status %u, not %u\n",
                        (unsigned) r[k].status, (unsigned) status);
            }

        } else {
            test_check(r[k].used == len, what);
        }

        if (k > 0) {
            test_check(r[k].used == r[0].used, what);
        }
    }

    if (whole) {
        test_run_free(whole);
        *whole = r[0];

    } else {
        test_run_free(&r[0]);
    }

    test_run_free(&r[1]);
    test_run_free(&r[2]);

    free(pieces);
}


/* a violation in a frame of its own */

static void
test_violation(char *what, u_char *in, size_t len, size_t max,
    ngx_uint_t status)
{
    test_run_t  e;

    /* a violation in the first frame: no chunk before it */

    test_run_init(&e);
    test_run3(what, in, len, max, &e, NGX_ERROR, status, NULL);
    test_run_free(&e);
}


static ngx_uint_t
test_rec(test_run_t *r, ngx_uint_t i, ngx_uint_t opcode, size_t len,
    uint64_t more, ngx_uint_t first, ngx_uint_t last)
{
    test_rec_t  *rec;

    if (i >= r->chunks || i >= TEST_RECS) {
        return 0;
    }

    rec = &r->rec[i];

    return rec->opcode == opcode && rec->len == len && rec->more == more
           && rec->first == first && rec->last == last;
}


static void
test_single(void)
{
    char        what[64];
    size_t      n;
    u_char     *p;
    test_run_t  e, w;
    ngx_uint_t  k;

    static size_t  sizes[] = { 0, 1, 125, 126, 1000, 65535, 65536, 70000 };

    for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_MIN, sizes[k],
                       test_mask1, test_data, sizes[k]);

        test_run_init(&e);
        test_run_init(&w);
        test_log_msg(&e, TEST_BIN, test_data, sizes[k]);

        snprintf(what, sizeof(what), "binary frame of %u",
                 (unsigned) sizes[k]);
        test_run3(what, test_in, n, TEST_BIG, &e, NGX_AGAIN, 0, &w);

        test_check(w.chunks == 1, what);
        test_check(test_rec(&w, 0, TEST_BIN, sizes[k], 0, 1, 1), what);

        test_run_free(&e);
        test_run_free(&w);
    }

    /* messages back to back, a control frame between, a zero mask */

    p = test_in;
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 300, test_mask2,
                    test_data, 300);
    p += test_frame(p, test_b0(1, 0, TEST_PING), TEST_MIN, 4, test_zero,
                    (u_char *) "ping", 4);
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 5, test_mask1,
                    test_data + 300, 5);

    test_run_init(&e);
    test_run_init(&w);
    test_log_msg(&e, TEST_BIN, test_data, 300);
    test_log_msg(&e, TEST_PING, (u_char *) "ping", 4);
    test_log_msg(&e, TEST_BIN, test_data + 300, 5);

    test_run3("two messages and a ping", test_in, p - test_in, TEST_BIG, &e,
              NGX_AGAIN, 0, &w);

    check(w.chunks == 3);
    check(test_rec(&w, 0, TEST_BIN, 300, 0, 1, 1));
    check(test_rec(&w, 1, TEST_PING, 4, 0, 1, 1));
    check(test_rec(&w, 2, TEST_BIN, 5, 0, 1, 1));

    test_run_free(&e);
    test_run_free(&w);

    /* a close frame with a status and a reason */

    n = test_frame(test_in, test_b0(1, 0, TEST_CLOSE), TEST_MIN, 5,
                   test_mask1, (u_char *) "\x03\xe8" "bye", 5);

    test_run_init(&e);
    test_run_init(&w);
    test_log_msg(&e, TEST_CLOSE, (u_char *) "\x03\xe8" "bye", 5);

    test_run3("close frame", test_in, n, 1024, &e, NGX_AGAIN, 0, &w);

    check(test_rec(&w, 0, TEST_CLOSE, 5, 0, 1, 1));

    test_run_free(&e);
    test_run_free(&w);
}


static void
test_fragmented(void)
{
    u_char      *p;
    test_run_t   e, w;

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 6, test_mask1,
                    (u_char *) "hello ", 6);
    p += test_frame(p, test_b0(1, 0, TEST_PING), TEST_MIN, 2, test_mask2,
                    (u_char *) "p1", 2);
    p += test_frame(p, test_b0(0, 0, TEST_CONT), TEST_MIN, 3, test_mask1,
                    (u_char *) "wor", 3);
    p += test_frame(p, test_b0(1, 0, TEST_PONG), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 2, test_mask2,
                    (u_char *) "ld", 2);
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 1, test_mask2,
                    (u_char *) "x", 1);

    test_run_init(&e);
    test_run_init(&w);

    test_log(&e, "{2:");
    test_log_hex(&e, (u_char *) "hello ", 6);
    test_log_msg(&e, TEST_PING, (u_char *) "p1", 2);
    test_log_hex(&e, (u_char *) "wor", 3);
    test_log_msg(&e, TEST_PONG, NULL, 0);
    test_log_hex(&e, (u_char *) "ld", 2);
    test_log(&e, "}");
    test_log_msg(&e, TEST_BIN, (u_char *) "x", 1);

    test_run3("fragments and control frames", test_in, p - test_in, 1024,
              &e, NGX_AGAIN, 0, &w);

    /* data "first" on the first chunk only, "last" on the final only */

    check(w.chunks == 6);
    check(test_rec(&w, 0, TEST_BIN, 6, 0, 1, 0));
    check(test_rec(&w, 1, TEST_PING, 2, 0, 1, 1));
    check(test_rec(&w, 2, TEST_BIN, 3, 0, 0, 0));
    check(test_rec(&w, 3, TEST_PONG, 0, 0, 1, 1));
    check(test_rec(&w, 4, TEST_BIN, 2, 0, 0, 1));
    check(test_rec(&w, 5, TEST_BIN, 1, 0, 1, 1));

    test_run_free(&e);
    test_run_free(&w);

    /* a close frame may come between fragments too */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 200, test_mask1,
                    test_data, 200);
    p += test_frame(p, test_b0(1, 0, TEST_CLOSE), TEST_MIN, 2, test_mask2,
                    (u_char *) "\x03\xe8", 2);
    p += test_frame(p, test_b0(0, 0, TEST_CONT), TEST_MIN, 70000,
                    test_mask2, test_data + 200, 70000);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 1, test_mask1,
                    test_data + 70200, 1);

    test_run_init(&e);
    test_run_init(&w);

    test_log(&e, "{2:");
    test_log_hex(&e, test_data, 200);
    test_log_msg(&e, TEST_CLOSE, (u_char *) "\x03\xe8", 2);
    test_log_hex(&e, test_data + 200, 70001);
    test_log(&e, "}");

    test_run3("long fragmented message", test_in, p - test_in, TEST_BIG, &e,
              NGX_AGAIN, 0, &w);

    check(w.chunks == 4);
    check(test_rec(&w, 0, TEST_BIN, 200, 0, 1, 0));
    check(test_rec(&w, 1, TEST_CLOSE, 2, 0, 1, 1));
    check(test_rec(&w, 2, TEST_BIN, 70000, 0, 0, 0));
    check(test_rec(&w, 3, TEST_BIN, 1, 0, 0, 1));

    test_run_free(&e);
    test_run_free(&w);
}


static void
test_empty(void)
{
    u_char      *p;
    test_run_t   e, w;

    /* empty control frames and an empty message */

    p = test_in;
    p += test_frame(p, test_b0(1, 0, TEST_PING), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_CLOSE), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 0, test_mask2,
                    NULL, 0);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{9:}{8:}{2:}");

    test_run3("empty frames", test_in, p - test_in, 1024, &e, NGX_AGAIN, 0,
              &w);

    check(w.chunks == 3);
    check(test_rec(&w, 0, TEST_PING, 0, 0, 1, 1));
    check(test_rec(&w, 1, TEST_CLOSE, 0, 0, 1, 1));
    check(test_rec(&w, 2, TEST_BIN, 0, 0, 1, 1));

    test_run_free(&e);
    test_run_free(&w);

    /* an empty middle fragment gives no chunk, an empty final one does */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 2, test_mask1,
                    (u_char *) "ab", 2);
    p += test_frame(p, test_b0(0, 0, TEST_CONT), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(0, 0, TEST_CONT), TEST_MIN, 0, test_mask2,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 0, test_mask1,
                    NULL, 0);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{2:6162}");

    test_run3("empty middle and final fragments", test_in, p - test_in, 1024,
              &e, NGX_AGAIN, 0, &w);

    check(w.chunks == 2);
    check(test_rec(&w, 0, TEST_BIN, 2, 0, 1, 0));
    check(test_rec(&w, 1, TEST_BIN, 0, 0, 0, 1));

    test_run_free(&e);
    test_run_free(&w);

    /* an empty first fragment: "first" goes with the first data chunk */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_PING), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(0, 0, TEST_CONT), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 2, test_mask2,
                    (u_char *) "cd", 2);

    /* and one of empty fragments only */

    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 0, test_mask1,
                    NULL, 0);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{9:}{2:6364}{2:}");

    test_run3("empty first fragment", test_in, p - test_in, 1024, &e,
              NGX_AGAIN, 0, &w);

    check(w.chunks == 3);
    check(test_rec(&w, 0, TEST_PING, 0, 0, 1, 1));
    check(test_rec(&w, 1, TEST_BIN, 2, 0, 1, 1));
    check(test_rec(&w, 2, TEST_BIN, 0, 0, 1, 1));

    test_run_free(&e);
    test_run_free(&w);

    /* nothing at all, and a header that is not complete yet */

    test_run_init(&e);
    test_run_init(&w);

    test_run3("no input", test_in, 0, 1024, &e, NGX_AGAIN, 0, &w);
    check(w.chunks == 0);

    p = test_in;
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_64, 70000, test_mask1,
                    test_data, 0);

    test_run3("header only", test_in, p - test_in, TEST_BIG, &e, NGX_AGAIN,
              0, &w);
    check(w.chunks == 0);

    test_run_free(&e);
    test_run_free(&w);
}


static void
test_bad_bits(void)
{
    char        what[64];
    size_t      n;
    ngx_uint_t  rsv, op;

    for (rsv = 1; rsv < 8; rsv++) {
        n = test_frame(test_in, test_b0(1, rsv, TEST_BIN), TEST_MIN, 1,
                       test_mask1, (u_char *) "x", 1);
        snprintf(what, sizeof(what), "rsv %u", (unsigned) rsv);
        test_violation(what, test_in, n, 1024, NGX_STREAM_IM_CLOSE_PROTOCOL);

        n = test_frame(test_in, test_b0(1, rsv, TEST_PING), TEST_MIN, 0,
                       test_mask1, NULL, 0);
        test_violation(what, test_in, n, 1024, NGX_STREAM_IM_CLOSE_PROTOCOL);
    }

    for (op = 3; op < 16; op++) {
        if (op >= TEST_CLOSE && op <= TEST_PONG) {
            continue;
        }

        n = test_frame(test_in, test_b0(1, 0, op), TEST_MIN, 1, test_mask1,
                       (u_char *) "x", 1);
        snprintf(what, sizeof(what), "opcode 0x%x", (unsigned) op);
        test_violation(what, test_in, n, 1024, NGX_STREAM_IM_CLOSE_PROTOCOL);
    }

    n = test_frame(test_in, test_b0(1, 0, TEST_TEXT), TEST_MIN, 2,
                   test_mask1, (u_char *) "hi", 2);
    test_violation("text", test_in, n, 1024, NGX_STREAM_IM_CLOSE_DATA);

    n = test_frame(test_in, test_b0(0, 0, TEST_TEXT), TEST_MIN, 2,
                   test_mask1, (u_char *) "hi", 2);
    test_violation("text fragment", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_DATA);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_MIN, 2, NULL,
                   (u_char *) "hi", 2);
    test_violation("unmasked binary", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_PING), TEST_MIN, 0, NULL,
                   NULL, 0);
    test_violation("unmasked ping", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);
}


static void
test_bad_control(void)
{
    size_t      n;
    u_char     *p;
    test_run_t  e, w;

    /* 125 bytes is the most a control frame may carry */

    n = test_frame(test_in, test_b0(1, 0, TEST_PING), TEST_MIN, 125,
                   test_mask1, test_data, 125);

    test_run_init(&e);
    test_run_init(&w);
    test_log_msg(&e, TEST_PING, test_data, 125);
    test_run3("ping of 125", test_in, n, 1024, &e, NGX_AGAIN, 0, &w);
    test_run_free(&e);
    test_run_free(&w);

    n = test_frame(test_in, test_b0(1, 0, TEST_PING), TEST_16, 126,
                   test_mask1, test_data, 126);
    test_violation("ping of 126", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_CLOSE), TEST_16, 200,
                   test_mask1, test_data, 200);
    test_violation("close of 200", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_PONG), TEST_64, 70000,
                   test_mask1, test_data, 0);
    test_violation("pong of 70000", test_in, n, TEST_BIG,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(0, 0, TEST_PING), TEST_MIN, 1,
                   test_mask1, (u_char *) "x", 1);
    test_violation("fragmented ping", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(0, 0, TEST_PONG), TEST_MIN, 0,
                   test_mask1, NULL, 0);
    test_violation("fragmented pong", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(0, 0, TEST_CLOSE), TEST_MIN, 2,
                   test_mask1, (u_char *) "\x03\xe8", 2);
    test_violation("fragmented close", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    /* and inside a fragmented message, after its first chunk */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 1, test_mask1,
                    (u_char *) "a", 1);
    p += test_frame(p, test_b0(0, 0, TEST_PING), TEST_MIN, 1, test_mask1,
                    (u_char *) "b", 1);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{2:61");
    test_run3("fragmented ping inside a message", test_in, p - test_in, 1024,
              &e, NGX_ERROR, NGX_STREAM_IM_CLOSE_PROTOCOL, &w);
    test_run_free(&e);
    test_run_free(&w);
}


static void
test_bad_sequence(void)
{
    size_t      n;
    u_char     *p;
    test_run_t  e, w;

    n = test_frame(test_in, test_b0(1, 0, TEST_CONT), TEST_MIN, 1,
                   test_mask1, (u_char *) "a", 1);
    test_violation("orphan final continuation", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(0, 0, TEST_CONT), TEST_MIN, 1,
                   test_mask1, (u_char *) "a", 1);
    test_violation("orphan continuation", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    /* a continuation after a message that has ended */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 1, test_mask1,
                    (u_char *) "a", 1);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 1, test_mask1,
                    (u_char *) "b", 1);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 1, test_mask1,
                    (u_char *) "c", 1);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{2:6162}");
    test_run3("continuation after the end", test_in, p - test_in, 1024, &e,
              NGX_ERROR, NGX_STREAM_IM_CLOSE_PROTOCOL, &w);
    test_run_free(&e);
    test_run_free(&w);

    /* a new message before the fragmented one has ended */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 1, test_mask1,
                    (u_char *) "a", 1);
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 1, test_mask1,
                    (u_char *) "b", 1);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{2:61");
    test_run3("binary inside fragmented", test_in, p - test_in, 1024, &e,
              NGX_ERROR, NGX_STREAM_IM_CLOSE_PROTOCOL, &w);
    test_run_free(&e);
    test_run_free(&w);

    /* the same, the first fragment empty */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 1, test_mask1,
                    (u_char *) "b", 1);

    test_violation("binary after an empty fragment", test_in, p - test_in,
                   1024, NGX_STREAM_IM_CLOSE_PROTOCOL);
}


static void
test_bad_length(void)
{
    size_t      n;
    test_run_t  e, w;

    /* the shortest form is a MUST */

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_16, 0, test_mask1,
                   NULL, 0);
    test_violation("0 in 16 bits", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_16, 125,
                   test_mask1, test_data, 125);
    test_violation("125 in 16 bits", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_PING), TEST_16, 5,
                   test_mask1, test_data, 5);
    test_violation("ping of 5 in 16 bits", test_in, n, 1024,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64, 0, test_mask1,
                   NULL, 0);
    test_violation("0 in 64 bits", test_in, n, TEST_BIG,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64, 125,
                   test_mask1, test_data, 125);
    test_violation("125 in 64 bits", test_in, n, TEST_BIG,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64, 126,
                   test_mask1, test_data, 126);
    test_violation("126 in 64 bits", test_in, n, TEST_BIG,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64, 65535,
                   test_mask1, test_data, 65535);
    test_violation("65535 in 64 bits", test_in, n, TEST_BIG,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    /* the smallest of each form is fine */

    test_run_init(&e);
    test_run_init(&w);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_16, 126,
                   test_mask1, test_data, 126);
    test_log_msg(&e, TEST_BIN, test_data, 126);
    test_run3("126 in 16 bits", test_in, n, 1024, &e, NGX_AGAIN, 0, &w);

    test_run_free(&e);
    test_run_free(&w);

    test_run_init(&e);
    test_run_init(&w);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64, 65536,
                   test_mask1, test_data, 65536);
    test_log_msg(&e, TEST_BIN, test_data, 65536);
    test_run3("65536 in 64 bits", test_in, n, TEST_BIG, &e, NGX_AGAIN, 0,
              &w);

    test_run_free(&e);
    test_run_free(&w);

    /* the most significant bit MUST be 0, whatever the limit */

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64,
                   (uint64_t) 1 << 63, test_mask1, NULL, 0);
    test_violation("2^63", test_in, n, (size_t) -1,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64, (uint64_t) -1,
                   test_mask1, NULL, 0);
    test_violation("2^64 - 1", test_in, n, (size_t) -1,
                   NGX_STREAM_IM_CLOSE_PROTOCOL);
}


static void
test_too_big(void)
{
    size_t      n;
    u_char     *p;
    test_run_t  e, w;

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_MIN, 1001,
                   test_mask1, test_data, 1001);
    test_violation("1001 over 1000", test_in, n, 1000,
                   NGX_STREAM_IM_CLOSE_TOO_BIG);

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_MIN, 126,
                   test_mask1, test_data, 126);
    test_violation("126 over 125", test_in, n, 125,
                   NGX_STREAM_IM_CLOSE_TOO_BIG);

    /* the announced length is enough: no mask, no payload needed */

    n = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_64,
                   (uint64_t) 1 << 62, test_mask1, NULL, 0) - 4;
    check(n == 10);

    test_run_init(&e);
    test_run_init(&w);
    test_run3("2^62", test_in, n, 65536, &e, NGX_ERROR,
              NGX_STREAM_IM_CLOSE_TOO_BIG, &w);
    check(w.used == 10);
    test_run_free(&e);
    test_run_free(&w);

    /* exactly the limit, twice: the count restarts with every message */

    p = test_in;
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 1000, test_mask1,
                    test_data, 1000);
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 600, test_mask2,
                    test_data, 600);
    p += test_frame(p, test_b0(1, 0, TEST_PING), TEST_MIN, 100, test_mask2,
                    test_data, 100);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 400, test_mask1,
                    test_data + 600, 400);
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 1000, test_mask2,
                    test_data, 1000);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 0, test_mask2,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 1000, test_mask1,
                    test_data, 1000);

    test_run_init(&e);
    test_run_init(&w);
    test_log_msg(&e, TEST_BIN, test_data, 1000);
    test_log(&e, "{2:");
    test_log_hex(&e, test_data, 600);
    test_log_msg(&e, TEST_PING, test_data, 100);
    test_log_hex(&e, test_data + 600, 400);
    test_log(&e, "}");
    test_log_msg(&e, TEST_BIN, test_data, 1000);
    test_log_msg(&e, TEST_BIN, test_data, 1000);

    test_run3("messages of exactly the limit", test_in, p - test_in, 1000,
              &e, NGX_AGAIN, 0, &w);

    test_run_free(&e);
    test_run_free(&w);

    /* fragments that together are over it, a ping between */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 600, test_mask2,
                    test_data, 600);
    p += test_frame(p, test_b0(1, 0, TEST_PING), TEST_MIN, 1, test_mask2,
                    (u_char *) "p", 1);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 401, test_mask1,
                    test_data, 401);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{2:");
    test_log_hex(&e, test_data, 600);
    test_log_msg(&e, TEST_PING, (u_char *) "p", 1);

    test_run3("fragments over the limit", test_in, p - test_in, 1000, &e,
              NGX_ERROR, NGX_STREAM_IM_CLOSE_TOO_BIG, &w);

    test_run_free(&e);
    test_run_free(&w);

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 400, test_mask2,
                    test_data, 400);
    p += test_frame(p, test_b0(0, 0, TEST_CONT), TEST_MIN, 400, test_mask1,
                    test_data, 400);
    p += test_frame(p, test_b0(0, 0, TEST_CONT), TEST_MIN, 0, test_mask1,
                    NULL, 0);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 201, test_mask1,
                    test_data, 201);

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{2:");
    test_log_hex(&e, test_data, 400);
    test_log_hex(&e, test_data, 400);

    test_run3("three fragments over the limit", test_in, p - test_in, 1000,
              &e, NGX_ERROR, NGX_STREAM_IM_CLOSE_TOO_BIG, &w);

    test_run_free(&e);
    test_run_free(&w);

    /* a continuation announcing 2^62 */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 1, test_mask2,
                    (u_char *) "a", 1);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_64, (uint64_t) 1 << 62,
                    test_mask1, NULL, 0) - 4;

    test_run_init(&e);
    test_run_init(&w);
    test_log(&e, "{2:61");

    test_run3("continuation of 2^62", test_in, p - test_in, 65536, &e,
              NGX_ERROR, NGX_STREAM_IM_CLOSE_TOO_BIG, &w);

    test_run_free(&e);
    test_run_free(&w);
}


/* unmasking must not care where the reads split a frame */

static void
test_unmask(void)
{
    size_t      len, total, hlen, i, j, k, pieces[3];
    u_char      mask[4], ref[64], plain[64];
    ngx_uint_t  errors;
    test_run_t  e, r;

    errors = 0;

    test_run_init(&e);
    test_run_init(&r);

    for (len = 1; len <= 40; len++) {

        for (k = 0; k < len; k++) {
            plain[k] = (u_char) (k * 29 + len);
        }

        for (k = 0; k < 4; k++) {
            mask[k] = (u_char) (0x5a + 0x31 * k + len);
        }

        total = test_frame(test_in, test_b0(1, 0, TEST_BIN), TEST_MIN, len,
                           mask, plain, len);
        hlen = total - len;

        /* the reference: the wire bytes XOR the mask, done here */

        for (k = 0; k < len; k++) {
            ref[k] = test_in[hlen + k] ^ mask[k % 4];
        }

        check(ngx_memcmp(ref, plain, len) == 0);

        e.len = 0;
        test_log_msg(&e, TEST_BIN, ref, len);

        /* every pair of cuts: each offset of the mask at each boundary */

        for (i = 1; i < total; i++) {
            for (j = i; j < total; j++) {
                pieces[0] = i;
                pieces[1] = j - i;
                pieces[2] = total - j;

                if (pieces[1] == 0) {
                    pieces[1] = pieces[2];
                }

                ngx_memzero(r.rec, sizeof(r.rec));
                r.len = 0;
                r.chunks = 0;
                r.bad = 0;

                test_feed(test_in, total, 1024, pieces, &r);

                if (r.rc != NGX_AGAIN || r.bad
                    || r.len != e.len
                    || ngx_memcmp(r.log, e.log, e.len) != 0)
                {
                    if (errors++ < 5) {
                        fprintf(stderr, "unmask: len %u, cuts %u %u: %.*s\n",
                                (unsigned) len, (unsigned) i, (unsigned) j,
                                (int) r.len, r.log);
                    }
                }
            }
        }
    }

    check(errors == 0);

    test_run_free(&e);
    test_run_free(&r);
}


static void
test_more(void)
{
    size_t      n, pieces[4];
    u_char     *p;
    test_run_t  r;

    p = test_in;
    p += test_frame(p, test_b0(1, 0, TEST_BIN), TEST_MIN, 100, test_mask1,
                    test_data, 100);
    p += test_frame(p, test_b0(1, 0, TEST_PING), TEST_MIN, 1, test_mask1,
                    (u_char *) "q", 1);
    n = p - test_in;

    check(n == 6 + 100 + 6 + 1);

    /* the header and 30 bytes, 50 bytes, the rest and the next frame */

    pieces[0] = 6 + 30;
    pieces[1] = 50;
    pieces[2] = 20 + 7;

    test_run_init(&r);
    test_feed(test_in, n, 1024, pieces, &r);

    check(r.rc == NGX_AGAIN);
    check(r.bad == 0);
    check(r.chunks == 4);
    check(test_rec(&r, 0, TEST_BIN, 30, 70, 1, 0));
    check(test_rec(&r, 1, TEST_BIN, 50, 20, 0, 0));
    check(test_rec(&r, 2, TEST_BIN, 20, 0, 0, 1));
    check(test_rec(&r, 3, TEST_PING, 1, 0, 1, 1));

    test_run_free(&r);

    /* a control frame in pieces: "first" only on its first chunk */

    n = test_frame(test_in, test_b0(1, 0, TEST_PONG), TEST_MIN, 100,
                   test_mask2, test_data, 100);

    pieces[0] = 6 + 1;
    pieces[1] = 98;
    pieces[2] = 1;

    test_run_init(&r);
    test_feed(test_in, n, 1024, pieces, &r);

    check(r.rc == NGX_AGAIN);
    check(r.bad == 0);
    check(r.chunks == 3);
    check(test_rec(&r, 0, TEST_PONG, 1, 99, 1, 0));
    check(test_rec(&r, 1, TEST_PONG, 98, 1, 0, 0));
    check(test_rec(&r, 2, TEST_PONG, 1, 0, 0, 1));

    test_run_free(&r);

    /* a fragment's "more" is of the frame, not of the message */

    p = test_in;
    p += test_frame(p, test_b0(0, 0, TEST_BIN), TEST_MIN, 10, test_mask1,
                    test_data, 10);
    p += test_frame(p, test_b0(1, 0, TEST_CONT), TEST_MIN, 10, test_mask1,
                    test_data, 10);
    n = p - test_in;

    pieces[0] = 6 + 4;
    pieces[1] = 6 + 6;
    pieces[2] = 10;

    test_run_init(&r);
    test_feed(test_in, n, 1024, pieces, &r);

    check(r.rc == NGX_AGAIN);
    check(r.bad == 0);
    check(r.chunks == 3);
    check(test_rec(&r, 0, TEST_BIN, 4, 6, 1, 0));
    check(test_rec(&r, 1, TEST_BIN, 6, 0, 0, 0));
    check(test_rec(&r, 2, TEST_BIN, 10, 0, 0, 1));

    test_run_free(&r);
}


static void
test_header(void)
{
    u_char      buf[32], *p;
    size_t      n;
    ngx_uint_t  i;

    static struct {
        uint64_t   len;
        size_t     n;
        char      *bytes;
    } cases[] = {
        { 0, 2, "\x82\x00" },
        { 125, 2, "\x82\x7d" },
        { 126, 4, "\x82\x7e\x00\x7e" },
        { 65535, 4, "\x82\x7e\xff\xff" },
        { 65536, 10, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" },
        { ((uint64_t) 1 << 32) + 5, 10,
          "\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x05" }
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ngx_memset(buf, 0xee, sizeof(buf));

        p = ngx_stream_im_ws_header(buf, TEST_BIN, (size_t) cases[i].len);

        n = p - buf;

        check(n == cases[i].n);
        check(n <= NGX_STREAM_IM_WS_HEADER_MAX);
        check(ngx_memcmp(buf, cases[i].bytes, cases[i].n) == 0);
        check(buf[cases[i].n] == 0xee);

        if (ngx_memcmp(buf, cases[i].bytes, cases[i].n) != 0) {
            fprintf(stderr, "    header of %llu\n",
                    (unsigned long long) cases[i].len);
        }
    }

    /* server control frames */

    p = ngx_stream_im_ws_header(buf, TEST_CLOSE, 2);
    check(p - buf == 2 && buf[0] == 0x88 && buf[1] == 0x02);

    p = ngx_stream_im_ws_header(buf, TEST_PONG, 125);
    check(p - buf == 2 && buf[0] == 0x8a && buf[1] == 0x7d);
}


static void
test_close(void)
{
    u_char      buf[130];
    ngx_uint_t  i, status;

    static ngx_uint_t  valid[] = {
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999,
        4000, 4999
    };

    static char  reason[] = "\x0f\xa0" "going, caf\xc3\xa9 \xe2\x82\xac "
                            "\xf0\x9f\x98\x80";

    static ngx_uint_t  invalid[] = {
        0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 2000, 2999,
        5000, 65535
    };

    status = 0;
    check(ngx_stream_im_ws_check_close(buf, 0, &status) == NGX_OK);
    check(status == NGX_STREAM_IM_CLOSE_NORMAL);

    buf[0] = 0x03;
    status = 0;
    check(ngx_stream_im_ws_check_close(buf, 1, &status) == NGX_ERROR);
    check(status == NGX_STREAM_IM_CLOSE_PROTOCOL);

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        buf[0] = (u_char) (valid[i] >> 8);
        buf[1] = (u_char) valid[i];
        status = 0;

        check(ngx_stream_im_ws_check_close(buf, 2, &status) == NGX_OK);
        check(status == valid[i]);

        if (status != valid[i]) {
            fprintf(stderr, "    close code %u\n", (unsigned) valid[i]);
        }
    }

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        buf[0] = (u_char) (invalid[i] >> 8);
        buf[1] = (u_char) invalid[i];
        status = 0;

        check(ngx_stream_im_ws_check_close(buf, 2, &status) == NGX_ERROR);
        check(status == NGX_STREAM_IM_CLOSE_PROTOCOL);

        if (status != NGX_STREAM_IM_CLOSE_PROTOCOL) {
            fprintf(stderr, "    close code %u\n", (unsigned) invalid[i]);
        }
    }

    /* the reason */

    ngx_memcpy(buf, reason, sizeof(reason) - 1);
    status = 0;
    check(ngx_stream_im_ws_check_close(buf, sizeof(reason) - 1, &status)
          == NGX_OK);
    check(status == 4000);

    ngx_memcpy(buf, "\x03\xe8" "bad \xc0\x80", 2 + 6);
    status = 0;
    check(ngx_stream_im_ws_check_close(buf, 2 + 6, &status) == NGX_ERROR);
    check(status == NGX_STREAM_IM_CLOSE_INVALID);

    ngx_memcpy(buf, "\x03\xe8" "\xed\xa0\x80", 2 + 3);
    status = 0;
    check(ngx_stream_im_ws_check_close(buf, 2 + 3, &status) == NGX_ERROR);
    check(status == NGX_STREAM_IM_CLOSE_INVALID);

    /* a reason cut in the middle of a character */

    ngx_memcpy(buf, "\x03\xe8" "\xe2\x82", 2 + 2);
    status = 0;
    check(ngx_stream_im_ws_check_close(buf, 2 + 2, &status) == NGX_ERROR);
    check(status == NGX_STREAM_IM_CLOSE_INVALID);

    /* the longest reason a control frame holds */

    buf[0] = 0x03;
    buf[1] = 0xe9;
    ngx_memset(buf + 2, 'r', 123);
    status = 0;
    check(ngx_stream_im_ws_check_close(buf, 125, &status) == NGX_OK);
    check(status == 1001);
}


static void
test_utf8(void)
{
    u_char      *p;
    ngx_uint_t   i;

    static struct {
        char        *text;
        size_t       len;
        ngx_int_t    rc;
    } cases[] = {
        { "", 0, NGX_OK },
        { "hello, world", 12, NGX_OK },
        { "\x00\x7f", 2, NGX_OK },
        { "\xc2\x80", 2, NGX_OK },                  /* U+0080 */
        { "caf\xc3\xa9", 5, NGX_OK },
        { "\xdf\xbf", 2, NGX_OK },                  /* U+07FF */
        { "\xe0\xa0\x80", 3, NGX_OK },              /* U+0800 */
        { "\xe2\x82\xac", 3, NGX_OK },              /* euro sign */
        { "\xed\x9f\xbf", 3, NGX_OK },              /* U+D7FF */
        { "\xee\x80\x80", 3, NGX_OK },              /* U+E000 */
        { "\xef\xbf\xbf", 3, NGX_OK },              /* U+FFFF */
        { "\xf0\x90\x80\x80", 4, NGX_OK },          /* U+10000 */
        { "\xf0\x9f\x98\x80", 4, NGX_OK },          /* an emoji */
        { "\xf4\x8f\xbf\xbf", 4, NGX_OK },          /* U+10FFFF */
        { "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 11, NGX_OK },

        /* overlong */
        { "\xc0\x80", 2, NGX_ERROR },
        { "\xc1\xbf", 2, NGX_ERROR },
        { "\xe0\x80\x80", 3, NGX_ERROR },
        { "\xe0\x9f\xbf", 3, NGX_ERROR },
        { "\xf0\x80\x80\x80", 4, NGX_ERROR },
        { "\xf0\x8f\xbf\xbf", 4, NGX_ERROR },

        /* surrogates */
        { "\xed\xa0\x80", 3, NGX_ERROR },
        { "\xed\xbf\xbf", 3, NGX_ERROR },
        { "\xed\xa0\xbd\xed\xb8\x80", 6, NGX_ERROR },

        /* over U+10FFFF */
        { "\xf4\x90\x80\x80", 4, NGX_ERROR },
        { "\xf5\x80\x80\x80", 4, NGX_ERROR },
        { "\xf7\xbf\xbf\xbf", 4, NGX_ERROR },

        /* truncated, alone and at the end */
        { "\xc2", 1, NGX_ERROR },
        { "\xe2\x82", 2, NGX_ERROR },
        { "\xf0\x9f\x98", 3, NGX_ERROR },
        { "ok\xe2", 3, NGX_ERROR },
        { "ok\xf0\x9f", 4, NGX_ERROR },
        { "\xe2\x82" "a", 3, NGX_ERROR },
        { "\xc2" "a", 2, NGX_ERROR },

        /* lone continuation bytes */
        { "\x80", 1, NGX_ERROR },
        { "\xbf", 1, NGX_ERROR },
        { "a\x80z", 3, NGX_ERROR },
        { "\xc3\xa9\xa9", 3, NGX_ERROR },

        /* never in UTF-8 */
        { "\xfe", 1, NGX_ERROR },
        { "\xff", 1, NGX_ERROR },
        { "\xf8\x88\x80\x80\x80", 5, NGX_ERROR },
        { "\xfc\x84\x80\x80\x80\x80", 6, NGX_ERROR },
        { "a\xfe\xfe\xff\xff", 5, NGX_ERROR }
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {

        /* an exact copy, so that ASan sees a read past the end */

        p = malloc(cases[i].len + 1);
        if (p == NULL) {
            abort();
        }

        ngx_memcpy(p, cases[i].text, cases[i].len);

        check(ngx_stream_im_utf8_valid(p, cases[i].len) == cases[i].rc);

        if (ngx_stream_im_utf8_valid(p, cases[i].len) != cases[i].rc) {
            fprintf(stderr, "    utf-8 case %u\n", (unsigned) i);
        }

        free(p);
    }

    /* a valid text is not valid with its last byte cut off */

    p = malloc(3);
    if (p == NULL) {
        abort();
    }

    ngx_memcpy(p, "\xe2\x82\xac", 3);

    check(ngx_stream_im_utf8_valid(p, 3) == NGX_OK);
    check(ngx_stream_im_utf8_valid(p, 2) == NGX_ERROR);
    check(ngx_stream_im_utf8_valid(p, 1) == NGX_ERROR);
    check(ngx_stream_im_utf8_valid(p, 0) == NGX_OK);

    free(p);
}


int
main(void)
{
    size_t  i;

    test_in = malloc(TEST_IN_MAX);
    test_data = malloc(TEST_IN_MAX);

    if (test_in == NULL || test_data == NULL) {
        return 2;
    }

    for (i = 0; i < TEST_IN_MAX; i++) {
        test_data[i] = (u_char) (i * 7 + (i >> 8));
    }

    test_single();
    test_fragmented();
    test_empty();
    test_bad_bits();
    test_bad_control();
    test_bad_sequence();
    test_bad_length();
    test_too_big();
    test_unmask();
    test_more();
    test_header();
    test_close();
    test_utf8();

    free(test_in);
    free(test_data);

    return unit_done("test_websocket");
}
