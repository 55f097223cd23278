
/*
 * Copyright (C) ngx_im authors
 */


/*
 * The RFC 6455 frame parser, fed the way a session feeds it: reads of any
 * size, payload unmasked in place, control frames gathered in a 125-byte
 * buffer, data messages counted against im_max_frame.
 *
 * Input: byte 0 picks im_max_frame (bits 0-1) and how reads are cut
 * (bits 2-3: byte by byte, 1-16, 1-4096 bytes, or whole); bytes 1-4 seed
 * the read sizes; the rest is what the client sent after the handshake.
 *
 * The same bytes are parsed twice, cut into reads and whole: both runs
 * must tell the same story (messages, payloads, the error and where).
 * The UTF-8 check of close reasons is compared with a reference.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"
#include "fuzz.h"


typedef struct {
    uint64_t                       hash;
    ngx_int_t                      rc;         /* NGX_AGAIN or NGX_ERROR */
    ngx_uint_t                     status;
    size_t                         at;         /* where parsing stopped */
} fuzz_run_t;


static void fuzz_feed(u_char *in, size_t len, size_t max, ngx_uint_t mode,
    uint32_t seed, fuzz_run_t *run);
static void fuzz_close(u_char *data, size_t len);


static size_t  fuzz_max[] = { 1024, 65536, 1048576, 16777216 };


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char      *in;
    size_t       len, max;
    uint32_t     seed;
    ngx_uint_t   mode;
    fuzz_run_t   cut, whole;

    if (size < 5) {
        return 0;
    }

    max = fuzz_max[data[0] & 3];
    mode = (data[0] >> 2) & 3;
    seed = (uint32_t) data[1] | (uint32_t) data[2] << 8
           | (uint32_t) data[3] << 16 | (uint32_t) data[4] << 24;

    len = size - 5;

    /* the validator on anything at all, against the reference */

    fuzz_assert((ngx_stream_im_utf8_valid((u_char *) data + 5, len)
                 == NGX_OK)
                == fuzz_utf8_valid(data + 5, len));

    in = fuzz_dup(data + 5, len);
    fuzz_feed(in, len, max, mode, seed, &cut);
    free(in);

    in = fuzz_dup(data + 5, len);
    fuzz_feed(in, len, max, 3, 0, &whole);
    free(in);

    fuzz_assert(cut.rc == whole.rc);
    fuzz_assert(cut.status == whole.status);
    fuzz_assert(cut.at == whole.at);
    fuzz_assert(cut.hash == whole.hash);

    return 0;
}


static void
fuzz_feed(u_char *in, size_t len, size_t max, ngx_uint_t mode,
    uint32_t seed, fuzz_run_t *run)
{
    u_char                     *read, *control, *before;
    size_t                      off, n, msg_len, control_len;
    uint64_t                    hash;
    ngx_int_t                   rc;
    ngx_buf_t                   b;
    ngx_uint_t                  in_msg, in_control;
    ngx_stream_im_ws_chunk_t    ch;
    ngx_stream_im_ws_parser_t   p;

    ngx_memzero(&p, sizeof(ngx_stream_im_ws_parser_t));
    ngx_memzero(run, sizeof(fuzz_run_t));

    hash = 0xcbf29ce484222325ULL;
    msg_len = 0;
    control_len = 0;
    in_msg = 0;
    in_control = 0;
    rc = NGX_AGAIN;

    control = malloc(NGX_STREAM_IM_WS_CONTROL_MAX);
    if (control == NULL) {
        abort();
    }

    for (off = 0; off < len && rc != NGX_ERROR; off += n) {

        switch (mode) {
        case 0:
            n = 1;
            break;
        case 1:
            n = 1 + fuzz_random(&seed) % 16;
            break;
        case 2:
            n = 1 + fuzz_random(&seed) % 4096;
            break;
        default:
            n = len;
        }

        n = ngx_min(n, len - off);

        /* each read in a buffer of its own size: overreads show */

        read = malloc(n);
        if (read == NULL) {
            abort();
        }

        ngx_memcpy(read, in + off, n);

        ngx_memzero(&b, sizeof(ngx_buf_t));
        b.pos = read;
        b.last = read + n;

        for ( ;; ) {
            ngx_memzero(&ch, sizeof(ngx_stream_im_ws_chunk_t));
            before = b.pos;

            rc = ngx_stream_im_ws_parse(&p, &b, max, &ch);

            fuzz_assert(b.pos >= before && b.pos <= b.last);

            if (rc == NGX_AGAIN) {
                fuzz_assert(b.pos == b.last);
                break;
            }

            if (rc == NGX_ERROR) {
                fuzz_assert(ch.status == NGX_STREAM_IM_CLOSE_PROTOCOL
                            || ch.status == NGX_STREAM_IM_CLOSE_DATA
                            || ch.status == NGX_STREAM_IM_CLOSE_TOO_BIG);
                fuzz_assert(ch.reason != NULL);

                run->status = ch.status;
                run->at = off + (b.pos - read);
                fuzz_hash(&hash, "X", 1);
                break;
            }

            fuzz_assert(rc == NGX_OK);
            fuzz_assert(ch.data >= read && ch.data + ch.len == b.pos);

            /* the payload as it arrived, unmasked: both runs must agree */

            if (ch.opcode == NGX_STREAM_IM_WS_BINARY) {
                /* control frames come whole between data chunks */

                fuzz_assert(!in_control);

                if (ch.first) {
                    fuzz_assert(!in_msg);
                    in_msg = 1;
                    msg_len = 0;
                    fuzz_hash(&hash, "[", 1);

                } else {
                    fuzz_assert(in_msg);
                }

                msg_len += ch.len;

                /* what the session allocates for the message: bounded */

                fuzz_assert(msg_len + ch.more <= max);

                fuzz_hash(&hash, ch.data, ch.len);

                if (ch.last) {
                    fuzz_assert(ch.more == 0);
                    fuzz_hash(&hash, "]", 1);
                    fuzz_hash_int(&hash, msg_len);
                    in_msg = 0;
                }

                continue;
            }

            fuzz_assert(ch.opcode == NGX_STREAM_IM_WS_CLOSE
                        || ch.opcode == NGX_STREAM_IM_WS_PING
                        || ch.opcode == NGX_STREAM_IM_WS_PONG);

            if (ch.first) {
                fuzz_assert(!in_control);
                in_control = 1;
                control_len = 0;
                fuzz_hash_int(&hash, ch.opcode);

            } else {
                fuzz_assert(in_control);
            }

            /* the session's control buffer is 125 bytes */

            fuzz_assert(control_len + ch.len + ch.more
                        <= NGX_STREAM_IM_WS_CONTROL_MAX);

            ngx_memcpy(control + control_len, ch.data, ch.len);
            control_len += ch.len;

            if (ch.last) {
                fuzz_assert(ch.more == 0);
                fuzz_hash(&hash, control, control_len);
                in_control = 0;

                if (ch.opcode == NGX_STREAM_IM_WS_CLOSE) {
                    fuzz_close(control, control_len);
                }
            }
        }

        free(read);
    }

    free(control);

    run->rc = (rc == NGX_ERROR) ? NGX_ERROR : NGX_AGAIN;
    run->hash = hash;
}


static void
fuzz_close(u_char *data, size_t len)
{
    ngx_int_t   rc;
    ngx_uint_t  status, code;

    rc = ngx_stream_im_ws_check_close(data, len, &status);

    if (len == 0) {
        fuzz_assert(rc == NGX_OK && status == NGX_STREAM_IM_CLOSE_NORMAL);
        return;
    }

    if (len == 1) {
        fuzz_assert(rc == NGX_ERROR
                    && status == NGX_STREAM_IM_CLOSE_PROTOCOL);
        return;
    }

    code = (data[0] << 8) | data[1];

    if (!((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011)
          || (code >= 3000 && code <= 4999)))
    {
        fuzz_assert(rc == NGX_ERROR
                    && status == NGX_STREAM_IM_CLOSE_PROTOCOL);
        return;
    }

    if (!fuzz_utf8_valid(data + 2, len - 2)) {
        fuzz_assert(rc == NGX_ERROR && status == NGX_STREAM_IM_CLOSE_INVALID);
        return;
    }

    fuzz_assert(rc == NGX_OK && status == code);
}
