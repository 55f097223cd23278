
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * im.Frame on the wire: one per WebSocket binary message.  Decoding
 * allocates from a bump arena that is reset for every frame, so what a
 * client sends can never grow memory past the arena, and encoding writes
 * the WebSocket header and the packed frame into one caller's buffer.
 */


static void ngx_stream_im_arena_free(void *data, void *p);
static size_t ngx_stream_im_varint_size(uint64_t v);
static u_char *ngx_stream_im_varint(u_char *p, uint64_t v);
static size_t ngx_stream_im_message_inner(ngx_str_t *msg_id, uint64_t ts,
    ngx_str_t *cursor, ngx_str_t *partial);


void
ngx_stream_im_arena_init(ngx_stream_im_arena_t *a, u_char *start, size_t size)
{
    a->start = start;
    a->pos = start;
    a->end = start + size;
}


Im__Frame *
ngx_stream_im_decode(ngx_stream_im_arena_t *a, u_char *data, size_t len)
{
    ProtobufCAllocator  allocator;

    a->pos = a->start;

    allocator.alloc = ngx_stream_im_arena_alloc;
    allocator.free = ngx_stream_im_arena_free;
    allocator.allocator_data = a;

    return im__frame__unpack(&allocator, len, data);
}


/*
 * protobuf-c hands strings over NUL-terminated, without a length: a
 * string with a NUL inside would be cut short unseen.  Such a frame (or
 * one not encoded as protobuf encoders do it) packs shorter again.
 */

ngx_int_t
ngx_stream_im_canonical(Im__Frame *f, size_t len)
{
    return (im__frame__get_packed_size(f) == len) ? NGX_OK : NGX_DECLINED;
}


void *
ngx_stream_im_arena_alloc(void *data, size_t size)
{
    ngx_stream_im_arena_t *a = data;

    u_char  *p;

    p = ngx_align_ptr(a->pos, sizeof(void *));

    if (p > a->end || size > (size_t) (a->end - p)) {
        return NULL;
    }

    a->pos = p + size;

    return p;
}


static void
ngx_stream_im_arena_free(void *data, void *p)
{
    /* the arena is reset as a whole before the next frame */
}


size_t
ngx_stream_im_encoded_size(Im__Frame *f)
{
    return im__frame__get_packed_size(f);
}


u_char *
ngx_stream_im_encode(u_char *p, Im__Frame *f, size_t size)
{
    p = ngx_stream_im_ws_header(p, NGX_STREAM_IM_WS_BINARY, size);

    return p + im__frame__pack(f, p);
}


/*
 * A stored inbox entry is a packed im.Message with msg_id and ts_ms
 * (entries stored before cursors existed have neither: their stream id
 * is both); protobuf fields may come in any order, so a delivered
 * Message is the stored bytes with the inbox position (and for an old
 * entry msg_id and ts_ms) written around them, with no re-encoding.
 */

size_t
ngx_stream_im_message_size(uint32_t id, ngx_str_t *msg_id, uint64_t ts,
    ngx_str_t *cursor, ngx_str_t *partial)
{
    size_t  inner, n;

    inner = ngx_stream_im_message_inner(msg_id, ts, cursor, partial);

    n = 1 + ngx_stream_im_varint_size(inner) + inner;

    if (id) {
        n += 1 + ngx_stream_im_varint_size(id);
    }

    return n;
}


u_char *
ngx_stream_im_message_write(u_char *p, uint32_t id, ngx_str_t *msg_id,
    uint64_t ts, ngx_str_t *cursor, ngx_str_t *partial)
{
    p = ngx_stream_im_ws_header(p, NGX_STREAM_IM_WS_BINARY,
                                ngx_stream_im_message_size(id, msg_id, ts,
                                                           cursor, partial));

    if (id) {
        *p++ = (1 << 3) | PROTOBUF_C_WIRE_TYPE_VARINT;
        p = ngx_stream_im_varint(p, id);
    }

    *p++ = (IM__FRAME__BODY_MESSAGE << 3)
           | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    p = ngx_stream_im_varint(p, ngx_stream_im_message_inner(msg_id, ts,
                                                            cursor,
                                                            partial));

    if (msg_id->len) {
        *p++ = (1 << 3) | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
        p = ngx_stream_im_varint(p, msg_id->len);
        p = ngx_cpymem(p, msg_id->data, msg_id->len);
    }

    if (ts) {
        *p++ = (6 << 3) | PROTOBUF_C_WIRE_TYPE_VARINT;
        p = ngx_stream_im_varint(p, ts);
    }

    p = ngx_cpymem(p, partial->data, partial->len);

    if (cursor->len) {
        *p++ = (9 << 3) | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
        p = ngx_stream_im_varint(p, cursor->len);
        p = ngx_cpymem(p, cursor->data, cursor->len);
    }

    return p;
}


/* an entry packed with its msg_id starts with field 1 */

ngx_int_t
ngx_stream_im_entry_has_id(ngx_str_t *partial)
{
    return (partial->len
            && partial->data[0] == ((1 << 3)
                                    | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED))
           ? NGX_OK : NGX_DECLINED;
}


static size_t
ngx_stream_im_message_inner(ngx_str_t *msg_id, uint64_t ts,
    ngx_str_t *cursor, ngx_str_t *partial)
{
    size_t  n;

    n = partial->len;

    if (msg_id->len) {
        n += 1 + ngx_stream_im_varint_size(msg_id->len) + msg_id->len;
    }

    if (ts) {
        n += 1 + ngx_stream_im_varint_size(ts);
    }

    if (cursor->len) {
        n += 1 + ngx_stream_im_varint_size(cursor->len) + cursor->len;
    }

    return n;
}


static size_t
ngx_stream_im_varint_size(uint64_t v)
{
    size_t  n;

    for (n = 1; v >= 0x80; n++) {
        v >>= 7;
    }

    return n;
}


static u_char *
ngx_stream_im_varint(u_char *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (u_char) (v | 0x80);
        v >>= 7;
    }

    *p++ = (u_char) v;

    return p;
}


/* a Redis stream id, "<ms>-<seq>", both decimal without sign */

ngx_int_t
ngx_stream_im_msg_id_parse(u_char *p, size_t len, ngx_stream_im_msg_id_t *id)
{
    u_char    *end;
    uint64_t  *v, d;

    id->ms = 0;
    id->seq = 0;

    if (len == 0 || len > 41) {
        return NGX_ERROR;
    }

    end = p + len;
    v = &id->ms;

    for ( ;; ) {
        if (p == end || *p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        while (p < end && *p >= '0' && *p <= '9') {
            d = *p++ - '0';

            if (*v > (UINT64_MAX - d) / 10) {
                return NGX_ERROR;
            }

            *v = *v * 10 + d;
        }

        if (p == end) {
            return (v == &id->seq) ? NGX_OK : NGX_ERROR;
        }

        if (*p != '-' || v == &id->seq) {
            return NGX_ERROR;
        }

        p++;
        v = &id->seq;
    }
}


/* what a stored entry starts with: its msg_id and ts_ms */

u_char *
ngx_stream_im_entry_head(u_char *p, ngx_str_t *msg_id, uint64_t ts)
{
    *p++ = (1 << 3) | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    p = ngx_stream_im_varint(p, msg_id->len);
    p = ngx_cpymem(p, msg_id->data, msg_id->len);

    *p++ = (6 << 3) | PROTOBUF_C_WIRE_TYPE_VARINT;

    return ngx_stream_im_varint(p, ts);
}


/*
 * The Redis Cluster slot of a key: CRC16 (XMODEM) of the key, or of what
 * is between its first "{" and the next "}" if that is not empty.
 */

ngx_uint_t
ngx_stream_im_slot(u_char *key, size_t len)
{
    u_char    *p, *end, *open, *close;
    uint16_t   crc;
    ngx_uint_t i;

    p = key;
    end = key + len;

    open = ngx_strlchr(key, end, '{');

    if (open) {
        close = ngx_strlchr(open + 1, end, '}');

        if (close && close > open + 1) {
            p = open + 1;
            end = close;
        }
    }

    crc = 0;

    while (p < end) {
        crc ^= (uint16_t) (*p++ << 8);

        for (i = 0; i < 8; i++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc & (NGX_STREAM_IM_SLOTS - 1);
}
