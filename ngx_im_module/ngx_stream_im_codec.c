
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


static void *ngx_stream_im_arena_alloc(void *data, size_t size);
static void ngx_stream_im_arena_free(void *data, void *p);


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


static void *
ngx_stream_im_arena_alloc(void *data, size_t size)
{
    ngx_stream_im_arena_t *a = data;

    u_char  *p;

    p = ngx_align_ptr(a->pos, sizeof(void *));

    if (size > (size_t) (a->end - p)) {
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
