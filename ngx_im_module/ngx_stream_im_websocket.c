
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * RFC 6455 framing as a resumable parser: bytes in, payload chunks out.
 * The state lives in the session, so a frame may arrive a byte at a time
 * and nothing but the payload itself is ever buffered by the caller.
 */


static ngx_int_t ngx_stream_im_ws_header_done(ngx_stream_im_ws_parser_t *p,
    size_t max, ngx_stream_im_ws_chunk_t *ch);
static void ngx_stream_im_ws_unmask(ngx_stream_im_ws_parser_t *p, u_char *d,
    size_t n);


#define ngx_stream_im_ws_is_control(op)  ((op) & 0x8)

#define ngx_stream_im_ws_fail(ch, code, text)                                 \
    (ch)->status = code;                                                      \
    (ch)->reason = text;                                                      \
    return NGX_ERROR


enum {
    sw_start = 0,
    sw_length,
    sw_ext_length,
    sw_mask,
    sw_payload
};


ngx_int_t
ngx_stream_im_ws_parse(ngx_stream_im_ws_parser_t *p, ngx_buf_t *b,
    size_t max, ngx_stream_im_ws_chunk_t *ch)
{
    u_char    c;
    size_t    n;
    uint64_t  len;

    for ( ;; ) {

        switch (p->state) {

        case sw_start:

            if (b->pos == b->last) {
                return NGX_AGAIN;
            }

            c = *b->pos++;

            if (c & 0x70) {
                ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                      "reserved bits set");
            }

            p->fin = c >> 7;
            p->opcode = c & 0x0f;

            switch (p->opcode) {

            case NGX_STREAM_IM_WS_CONT:
                if (!p->fragmented) {
                    ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                          "continuation without a message");
                }
                break;

            case NGX_STREAM_IM_WS_TEXT:
                ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_DATA,
                                      "text frames are not supported");

            case NGX_STREAM_IM_WS_BINARY:
                if (p->fragmented) {
                    ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                          "new message inside a "
                                          "fragmented one");
                }

                p->first = 1;
                break;

            case NGX_STREAM_IM_WS_CLOSE:
            case NGX_STREAM_IM_WS_PING:
            case NGX_STREAM_IM_WS_PONG:
                if (!p->fin) {
                    ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                          "fragmented control frame");
                }
                break;

            default:
                ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                      "reserved opcode");
            }

            p->state = sw_length;
            break;

        case sw_length:

            if (b->pos == b->last) {
                return NGX_AGAIN;
            }

            c = *b->pos++;

            if (!(c & 0x80)) {
                ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                      "unmasked client frame");
            }

            c &= 0x7f;

            if (c < 126) {
                p->left = c;

                if (ngx_stream_im_ws_header_done(p, max, ch) != NGX_OK) {
                    return NGX_ERROR;
                }

                break;
            }

            p->hdr_need = (c == 126) ? 2 : 8;
            p->hdr_have = 0;
            p->state = sw_ext_length;
            break;

        case sw_ext_length:

            while (p->hdr_have < p->hdr_need && b->pos < b->last) {
                p->hdr[p->hdr_have++] = *b->pos++;
            }

            if (p->hdr_have < p->hdr_need) {
                return NGX_AGAIN;
            }

            len = 0;

            for (n = 0; n < p->hdr_need; n++) {
                len = (len << 8) | p->hdr[n];
            }

            /* RFC 6455 5.2: the minimal number of bytes MUST be used */

            if ((p->hdr_need == 2 && len < 126)
                || (p->hdr_need == 8 && len <= 0xffff))
            {
                ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                      "length not minimally encoded");
            }

            if (len >> 63) {
                ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                      "length with the top bit set");
            }

            p->left = len;

            if (ngx_stream_im_ws_header_done(p, max, ch) != NGX_OK) {
                return NGX_ERROR;
            }

            break;

        case sw_mask:

            while (p->hdr_have < 4 && b->pos < b->last) {
                p->mask[p->hdr_have++] = *b->pos++;
            }

            if (p->hdr_have < 4) {
                return NGX_AGAIN;
            }

            p->mask_pos = 0;
            p->state = sw_payload;

            if (p->left) {
                break;
            }

            /* an empty frame: report it unless it is a middle fragment */

            p->state = sw_start;

            if (ngx_stream_im_ws_is_control(p->opcode)) {
                ch->opcode = p->opcode;
                ch->first = 1;
                ch->last = 1;

            } else if (p->fin) {
                ch->opcode = NGX_STREAM_IM_WS_BINARY;
                ch->first = p->first;
                ch->last = 1;
                p->first = 0;
                p->fragmented = 0;
                p->msg_len = 0;

            } else {
                p->fragmented = 1;
                break;
            }

            ch->data = b->pos;
            ch->len = 0;
            ch->more = 0;

            return NGX_OK;

        case sw_payload:

            if (b->pos == b->last) {
                return NGX_AGAIN;
            }

            n = b->last - b->pos;

            if ((uint64_t) n > p->left) {
                n = (size_t) p->left;
            }

            ch->data = b->pos;
            ch->len = n;

            ngx_stream_im_ws_unmask(p, b->pos, n);

            b->pos += n;
            p->left -= n;
            ch->more = p->left;

            if (ngx_stream_im_ws_is_control(p->opcode)) {
                ch->opcode = p->opcode;
                ch->first = (p->hdr_have == 4);
                ch->last = (p->left == 0);

                /* hdr_have marks the first chunk of a control frame */
                p->hdr_have = 0;

            } else {
                ch->opcode = NGX_STREAM_IM_WS_BINARY;
                ch->first = p->first;
                ch->last = (p->left == 0 && p->fin);
                p->first = 0;
                p->msg_len += n;
            }

            if (p->left == 0) {
                p->state = sw_start;

                if (!ngx_stream_im_ws_is_control(p->opcode)) {
                    p->fragmented = !p->fin;

                    if (p->fin) {
                        p->msg_len = 0;
                    }
                }
            }

            return NGX_OK;
        }
    }
}


static ngx_int_t
ngx_stream_im_ws_header_done(ngx_stream_im_ws_parser_t *p, size_t max,
    ngx_stream_im_ws_chunk_t *ch)
{
    if (ngx_stream_im_ws_is_control(p->opcode)) {
        if (p->left > NGX_STREAM_IM_WS_CONTROL_MAX) {
            ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_PROTOCOL,
                                  "control frame over 125 bytes");
        }

    } else if (p->left > (uint64_t) (max - p->msg_len)) {
        ngx_stream_im_ws_fail(ch, NGX_STREAM_IM_CLOSE_TOO_BIG,
                              "message over im_max_frame");
    }

    p->hdr_have = 0;
    p->state = sw_mask;

    return NGX_OK;
}


static void
ngx_stream_im_ws_unmask(ngx_stream_im_ws_parser_t *p, u_char *d, size_t n)
{
    u_char    *end;
    uint64_t   m, w;
    ngx_uint_t i;

    end = d + n;

    while (d < end && p->mask_pos) {
        *d++ ^= p->mask[p->mask_pos];
        p->mask_pos = (p->mask_pos + 1) & 3;
    }

    /* the mask is aligned with d now: eight bytes at a time */

    for (i = 0; i < 8; i++) {
        ((u_char *) &m)[i] = p->mask[i & 3];
    }

    while (end - d >= 8) {
        ngx_memcpy(&w, d, 8);
        w ^= m;
        ngx_memcpy(d, &w, 8);
        d += 8;
    }

    while (d < end) {
        *d++ ^= p->mask[p->mask_pos];
        p->mask_pos = (p->mask_pos + 1) & 3;
    }
}


u_char *
ngx_stream_im_ws_header(u_char *p, ngx_uint_t opcode, size_t len)
{
    ngx_uint_t  i;

    *p++ = (u_char) (0x80 | opcode);

    if (len < 126) {
        *p++ = (u_char) len;

    } else if (len <= 0xffff) {
        *p++ = 126;
        *p++ = (u_char) (len >> 8);
        *p++ = (u_char) len;

    } else {
        *p++ = 127;

        for (i = 8; i > 0; i--) {
            *p++ = (u_char) ((uint64_t) len >> ((i - 1) * 8));
        }
    }

    return p;
}


/*
 * A close frame is empty, or a 2-byte status code and a UTF-8 reason.
 * On NGX_OK, *status is what to echo; on NGX_ERROR, what to close with.
 */

ngx_int_t
ngx_stream_im_ws_check_close(u_char *data, size_t len, ngx_uint_t *status)
{
    ngx_uint_t  code;

    if (len == 0) {
        *status = NGX_STREAM_IM_CLOSE_NORMAL;
        return NGX_OK;
    }

    if (len == 1) {
        *status = NGX_STREAM_IM_CLOSE_PROTOCOL;
        return NGX_ERROR;
    }

    code = (data[0] << 8) | data[1];

    /* the codes an endpoint may send, as the Autobahn suite checks them */

    if (!((code >= 1000 && code <= 1003)
          || (code >= 1007 && code <= 1011)
          || (code >= 3000 && code <= 4999)))
    {
        *status = NGX_STREAM_IM_CLOSE_PROTOCOL;
        return NGX_ERROR;
    }

    if (ngx_stream_im_utf8_valid(data + 2, len - 2) != NGX_OK) {
        *status = NGX_STREAM_IM_CLOSE_INVALID;
        return NGX_ERROR;
    }

    *status = code;

    return NGX_OK;
}


/* strict UTF-8, RFC 3629: no overlongs, no surrogates, up to U+10FFFF */

ngx_int_t
ngx_stream_im_utf8_valid(u_char *p, size_t len)
{
    u_char      *end;
    uint32_t     cp, min;
    ngx_uint_t   n;

    end = p + len;

    while (p < end) {

        if (*p < 0x80) {
            p++;
            continue;
        }

        if ((*p & 0xe0) == 0xc0) {
            cp = *p & 0x1f;
            n = 1;
            min = 0x80;

        } else if ((*p & 0xf0) == 0xe0) {
            cp = *p & 0x0f;
            n = 2;
            min = 0x800;

        } else if ((*p & 0xf8) == 0xf0) {
            cp = *p & 0x07;
            n = 3;
            min = 0x10000;

        } else {
            return NGX_ERROR;
        }

        if ((size_t) (end - p) <= n) {
            return NGX_ERROR;
        }

        for (p++; n; n--, p++) {
            if ((*p & 0xc0) != 0x80) {
                return NGX_ERROR;
            }

            cp = (cp << 6) | (*p & 0x3f);
        }

        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
