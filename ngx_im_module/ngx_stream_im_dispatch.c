
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/* a decoded client frame goes to the handler of its body */


static ngx_int_t ngx_stream_im_ping(ngx_stream_im_session_t *ctx,
    Im__Frame *f);


ngx_int_t
ngx_stream_im_dispatch(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    ngx_log_t  *log;

    log = ctx->session->connection->log;

    switch (f->body_case) {

    case IM__FRAME__BODY_PING:
        return ngx_stream_im_ping(ctx, f);

    case IM__FRAME__BODY_PONG:

        /* an answer to nothing we asked: heartbeat traffic, ignored */

        return NGX_OK;

    case IM__FRAME__BODY__NOT_SET:
        ngx_log_error(NGX_LOG_INFO, log, 0, "client sent an empty frame");

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "frame has no body");

    case IM__FRAME__BODY_AUTH_OK:
    case IM__FRAME__BODY_SEND_ACK:
    case IM__FRAME__BODY_MESSAGE:
    case IM__FRAME__BODY_SYNC_DONE:
    case IM__FRAME__BODY_PRESENCE:
    case IM__FRAME__BODY_ERROR:
    case IM__FRAME__BODY_GOAWAY:
    case IM__FRAME__BODY_OK:
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "client sent server frame %d", (int) f->body_case);

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "a server-to-client frame");

    default:
        break;
    }

    if (!ctx->authenticated) {
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "client sent frame %d before Auth",
                      (int) f->body_case);

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__UNAUTHENTICATED,
                                        "authenticate first");
    }

    return ngx_stream_im_send_error(ctx, f->id, IM__ERROR__CODE__UNAVAILABLE,
                                    "not available on this server");
}


static ngx_int_t
ngx_stream_im_ping(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    Im__Frame  reply;
    Im__Pong   pong;

    im__frame__init(&reply);
    im__pong__init(&pong);

    pong.ts_ms = f->ping->ts_ms;

    reply.id = f->id;
    reply.body_case = IM__FRAME__BODY_PONG;
    reply.pong = &pong;

    return ngx_stream_im_send_frame(ctx, &reply);
}
