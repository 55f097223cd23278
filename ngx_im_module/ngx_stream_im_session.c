
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>
#include <ngx_sha1.h>

#include "ngx_stream_im.h"


/*
 * A session's life: the HTTP upgrade, then WebSocket frames until one
 * side closes.  Reads go to one worker-wide buffer; a session keeps only
 * the part of a frame that has not arrived whole, and its output queue
 * holds references to serialized frames that other sessions may share.
 */


#define NGX_STREAM_IM_RECV_SIZE        65536
#define NGX_STREAM_IM_RECV_ROUNDS      8
#define NGX_STREAM_IM_SEND_IOVS        64
#define NGX_STREAM_IM_CLOSE_TIMEOUT    3000
#define NGX_STREAM_IM_LINGER_TIMEOUT   2000
#define NGX_STREAM_IM_CLOSE_HANDLERS   4

#define NGX_STREAM_IM_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


static void ngx_stream_im_read_handler(ngx_event_t *rev);
static void ngx_stream_im_write_handler(ngx_event_t *wev);
static void ngx_stream_im_timeout(ngx_stream_im_session_t *ctx);
static ngx_msec_t ngx_stream_im_token_left(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_set_timer(ngx_stream_im_session_t *ctx);
static ngx_int_t ngx_stream_im_read_handshake(ngx_stream_im_session_t *ctx,
    ngx_buf_t *b);
static ngx_int_t ngx_stream_im_upgrade(ngx_stream_im_session_t *ctx,
    ngx_stream_im_handshake_t *hs);
static ngx_int_t ngx_stream_im_send_raw(ngx_stream_im_session_t *ctx,
    u_char *data, size_t len);
static ngx_int_t ngx_stream_im_read_frames(ngx_stream_im_session_t *ctx,
    ngx_buf_t *b);
static ngx_int_t ngx_stream_im_chunk(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ws_chunk_t *ch);
static ngx_int_t ngx_stream_im_append(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ws_chunk_t *ch);
static ngx_int_t ngx_stream_im_control(ngx_stream_im_session_t *ctx,
    ngx_uint_t opcode, u_char *data, size_t len);
static ngx_int_t ngx_stream_im_message(ngx_stream_im_session_t *ctx,
    u_char *data, size_t len);
static ngx_int_t ngx_stream_im_send_control(ngx_stream_im_session_t *ctx,
    ngx_uint_t opcode, u_char *data, size_t len);
static ngx_int_t ngx_stream_im_flush(ngx_stream_im_session_t *ctx);
static ngx_int_t ngx_stream_im_drain(ngx_stream_im_session_t *ctx);
static ngx_int_t ngx_stream_im_rate(ngx_stream_im_session_t *ctx,
    ngx_uint_t frames, size_t bytes);
static void ngx_stream_im_linger(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_free_partial(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_finalize(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_cleanup(void *data);


static u_char               *ngx_stream_im_recv_buf;
static ngx_stream_im_msg_t  *ngx_stream_im_ping_msg;
static ngx_uint_t            ngx_stream_im_unauthenticated;
static ngx_uint_t            ngx_stream_im_authenticated;

/* what the files above the session registered */
static ngx_stream_im_frame_pt    ngx_stream_im_frame_handler;
static ngx_stream_im_session_pt  ngx_stream_im_writable_handler;
static ngx_stream_im_session_pt
    ngx_stream_im_close_handlers[NGX_STREAM_IM_CLOSE_HANDLERS];
static ngx_uint_t                ngx_stream_im_nclose;


ngx_int_t
ngx_stream_im_session_init_worker(ngx_cycle_t *cycle)
{
    u_char  *p;

    ngx_stream_im_recv_buf = ngx_alloc(NGX_STREAM_IM_RECV_SIZE, cycle->log);
    if (ngx_stream_im_recv_buf == NULL) {
        return NGX_ERROR;
    }

    /* every heartbeat ping is the same two bytes: share one copy */

    ngx_stream_im_ping_msg = ngx_stream_im_msg_alloc(2, cycle->log);
    if (ngx_stream_im_ping_msg == NULL) {
        return NGX_ERROR;
    }

    p = ngx_stream_im_ws_header(ngx_stream_im_ping_msg->data,
                                NGX_STREAM_IM_WS_PING, 0);

    ngx_stream_im_ping_msg->len = p - ngx_stream_im_ping_msg->data;
    ngx_stream_im_ping_msg->refs = 1;

    return NGX_OK;
}


/* decoded client frames go to handler */

void
ngx_stream_im_session_on_frame(ngx_stream_im_frame_pt handler)
{
    ngx_stream_im_frame_handler = handler;
}


/* handler runs once however a session ends, before its pool goes */

ngx_int_t
ngx_stream_im_session_on_close(ngx_stream_im_session_pt handler)
{
    if (ngx_stream_im_nclose == NGX_STREAM_IM_CLOSE_HANDLERS) {
        return NGX_ERROR;
    }

    ngx_stream_im_close_handlers[ngx_stream_im_nclose++] = handler;

    return NGX_OK;
}


/* handler runs when an open session's send queue is down to a quarter */

void
ngx_stream_im_session_on_writable(ngx_stream_im_session_pt handler)
{
    ngx_stream_im_writable_handler = handler;
}


void
ngx_stream_im_session_handler(ngx_stream_session_t *s)
{
    ngx_str_t                  response;
    ngx_connection_t          *c;
    ngx_pool_cleanup_t        *cln;
    ngx_stream_im_session_t   *ctx;
    ngx_stream_im_srv_conf_t  *iscf;

    c = s->connection;
    c->log->action = "reading WebSocket handshake";

    iscf = ngx_stream_get_module_srv_conf(s, ngx_stream_im_module);

    ctx = ngx_pcalloc(c->pool, sizeof(ngx_stream_im_session_t));
    if (ctx == NULL) {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    cln = ngx_pool_cleanup_add(c->pool, 0);
    if (cln == NULL) {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    cln->handler = ngx_stream_im_cleanup;
    cln->data = ctx;

    ctx->session = s;
    ctx->out_last = &ctx->out;
    ngx_queue_init(&ctx->watching);
    ctx->start = ngx_current_msec;
    ctx->last_in = ctx->start;
    ctx->rate_last = ctx->start;
    ctx->rate_frames = (int32_t) iscf->rate_burst * 1000;
    ctx->rate_bytes = (int32_t) iscf->rate_bytes * 2;

    ngx_stream_set_ctx(s, ctx, ngx_stream_im_module);

    c->read->handler = ngx_stream_im_read_handler;
    c->write->handler = ngx_stream_im_write_handler;

    ngx_stream_im_unauthenticated++;
    ngx_stream_im_metrics_sessions(ngx_stream_im_authenticated,
                                   ngx_stream_im_unauthenticated);

    if (ngx_stream_im_unauthenticated > iscf->max_unauthenticated) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "too many unauthenticated connections, "
                      "im_max_unauthenticated is %ui",
                      iscf->max_unauthenticated);

        if (ngx_stream_im_handshake_error(503, &response) != NGX_OK
            || ngx_stream_im_send_raw(ctx, response.data, response.len)
               != NGX_OK)
        {
            ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return;
        }

        ctx->state = NGX_STREAM_IM_LAST_WRITE;
        ngx_add_timer(c->read, NGX_STREAM_IM_CLOSE_TIMEOUT);
        return;
    }

    /* the handshake and then Auth must both come within im_auth_timeout */

    ngx_add_timer(c->read, iscf->auth_timeout);

    ngx_stream_im_read_handler(c->read);
}


static void
ngx_stream_im_read_handler(ngx_event_t *rev)
{
    ssize_t                   n;
    ngx_buf_t                 b;
    ngx_int_t                 rc;
    ngx_uint_t                i;
    ngx_connection_t         *c;
    ngx_stream_session_t     *s;
    ngx_stream_im_session_t  *ctx;

    c = rev->data;
    s = c->data;
    ctx = ngx_stream_get_module_ctx(s, ngx_stream_im_module);

    if (rev->timedout) {
        rev->timedout = 0;
        ngx_stream_im_timeout(ctx);
        return;
    }

    if (c->close) {

        if (ctx->draining || ctx->state != NGX_STREAM_IM_OPEN) {

            /* worker_shutdown_timeout: a last word, no more waiting */

            if (ctx->state == NGX_STREAM_IM_OPEN) {
                ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_GOING_AWAY,
                                    "server restarting");
                (void) ngx_stream_im_flush(ctx);
            }

            ngx_stream_im_finalize(ctx);
            return;
        }

        c->close = 0;

        if (ngx_stream_im_drain(ctx) != NGX_OK) {
            ngx_stream_im_finalize(ctx);
            return;
        }
    }

    ngx_memzero(&b, sizeof(ngx_buf_t));

    for (i = 0; i < NGX_STREAM_IM_RECV_ROUNDS; i++) {

        n = c->recv(c, ngx_stream_im_recv_buf, NGX_STREAM_IM_RECV_SIZE);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "client closed connection");
            ngx_stream_im_finalize(ctx);
            return;
        }

        ctx->last_in = ngx_current_msec;

        (void) ngx_stream_im_rate(ctx, 0, n);

        b.pos = ngx_stream_im_recv_buf;
        b.last = b.pos + n;

        switch (ctx->state) {

        case NGX_STREAM_IM_HANDSHAKE:
            rc = ngx_stream_im_read_handshake(ctx, &b);
            break;

        case NGX_STREAM_IM_LAST_WRITE:
        case NGX_STREAM_IM_LINGER:

            /* the session is over; what the client still sends is moot */

            rc = NGX_OK;
            break;

        default:
            rc = ngx_stream_im_read_frames(ctx, &b);
        }

        if (rc == NGX_DONE) {
            return;
        }

        if (rc == NGX_ERROR) {
            ngx_stream_im_finalize(ctx);
            return;
        }
    }

    if (i == NGX_STREAM_IM_RECV_ROUNDS) {

        /* a busy client waits for the next turn, after the others */

        ngx_post_event(rev, &ngx_posted_next_events);
        return;
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_stream_im_finalize(ctx);
    }
}


static void
ngx_stream_im_timeout(ngx_stream_im_session_t *ctx)
{
    ngx_msec_t                 now;
    ngx_connection_t          *c;
    ngx_stream_im_srv_conf_t  *iscf;

    c = ctx->session->connection;
    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    /* a token ends the session also while it drains */

    if (ctx->state == NGX_STREAM_IM_OPEN && ctx->authenticated
        && ngx_time() >= ctx->expires)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0, "client's token expired");

        if (ngx_stream_im_send_error(ctx, 0, IM__ERROR__CODE__UNAUTHENTICATED,
                                     "token expired")
            != NGX_OK)
        {
            ngx_stream_im_finalize(ctx);
            return;
        }

        ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY, "token expired");
        return;
    }

    if (ctx->draining && ctx->state == NGX_STREAM_IM_OPEN) {
        ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_GOING_AWAY,
                            "server restarting");
        return;
    }

    switch (ctx->state) {

    case NGX_STREAM_IM_HANDSHAKE:
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out in WebSocket handshake");
        ngx_stream_im_finalize(ctx);
        return;

    case NGX_STREAM_IM_CLOSING:
    case NGX_STREAM_IM_LAST_WRITE:
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out in WebSocket close");
        ngx_stream_im_finalize(ctx);
        return;

    case NGX_STREAM_IM_LINGER:
        ngx_stream_im_finalize(ctx);
        return;
    }

    now = ngx_current_msec;

    if (!ctx->authenticated && now - ctx->start >= iscf->auth_timeout) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "client sent no Auth in time");
        ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY,
                            "authentication timeout");
        return;
    }

    if (now - ctx->last_in >= iscf->idle_timeout) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0, "client is idle");
        ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_GOING_AWAY,
                            "idle timeout");
        return;
    }

    if (now - ctx->last_in >= iscf->ping_interval
        && now - ctx->last_ping >= iscf->ping_interval)
    {
        if (ngx_stream_im_queue(ctx, ngx_stream_im_ping_msg) != NGX_OK) {
            ngx_stream_im_finalize(ctx);
            return;
        }

        ctx->last_ping = now;
    }

    ngx_stream_im_set_timer(ctx);
}


/* ms until the session's token expires, 0 if it has */

static ngx_msec_t
ngx_stream_im_token_left(ngx_stream_im_session_t *ctx)
{
    ngx_time_t      *tp;
    ngx_msec_int_t   left;

    tp = ngx_timeofday();
    left = (ctx->expires - tp->sec) * 1000 - (ngx_msec_int_t) tp->msec;

    return (left > 0) ? (ngx_msec_t) left : 0;
}


/*
 * One timer per open session, re-armed only when it fires: reads just
 * note the time, so a busy session costs no timer operations.
 */

static void
ngx_stream_im_set_timer(ngx_stream_im_session_t *ctx)
{
    ngx_msec_t                 now, at, next, left;
    ngx_connection_t          *c;
    ngx_stream_im_srv_conf_t  *iscf;

    c = ctx->session->connection;
    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    now = ngx_current_msec;

    at = ctx->last_in + iscf->idle_timeout;

    next = ngx_max(ctx->last_in, ctx->last_ping) + iscf->ping_interval;
    at = ngx_min(at, next);

    if (!ctx->authenticated) {
        at = ngx_min(at, ctx->start + iscf->auth_timeout);

    } else {
        left = ngx_stream_im_token_left(ctx);

        /* the token ends first: fire just after its exp, never before */

        if (left < at - now) {
            at = now + left + 1;
        }
    }

    next = ((ngx_msec_int_t) (at - now) > 0) ? at - now : 1;

    c->read->cancelable = 1;
    ngx_add_timer(c->read, next);
}


static ngx_int_t
ngx_stream_im_read_handshake(ngx_stream_im_session_t *ctx, ngx_buf_t *b)
{
    u_char                    *start, *end, *buf;
    size_t                     n;
    ngx_int_t                  rc;
    ngx_buf_t                  rest;
    ngx_str_t                  response;
    ngx_connection_t          *c;
    ngx_stream_im_srv_conf_t  *iscf;
    ngx_stream_im_handshake_t  hs;

    c = ctx->session->connection;
    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    if (ctx->handshake) {
        n = ngx_min((size_t) (b->last - b->pos),
                    NGX_STREAM_IM_HANDSHAKE_MAX - ctx->handshake_len);

        ngx_memcpy(ctx->handshake + ctx->handshake_len, b->pos, n);
        ctx->handshake_len += n;
        b->pos += n;

        start = ctx->handshake;
        end = start + ctx->handshake_len;

    } else {
        start = b->pos;
        end = b->last;
        b->pos = b->last;
    }

    rc = ngx_stream_im_handshake_parse(start, end, &hs);

    if (rc == NGX_AGAIN) {
        if (ctx->handshake == NULL) {

            /* kept only until the request is whole */

            ctx->handshake = ngx_alloc(NGX_STREAM_IM_HANDSHAKE_MAX, c->log);
            if (ctx->handshake == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(ctx->handshake, start, end - start);
            ctx->handshake_len = end - start;
        }

        return NGX_OK;
    }

    if (rc == NGX_OK
        && ngx_stream_im_handshake_origin_allowed(iscf->origins, &hs.origin)
           != NGX_OK)
    {
        rc = NGX_ERROR;
        hs.status = 403;
        hs.reason = "Origin not allowed";
    }

    if (rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "client sent invalid WebSocket handshake: %s",
                      hs.reason);

        if (ngx_stream_im_handshake_error(hs.status, &response) != NGX_OK
            || ngx_stream_im_send_raw(ctx, response.data, response.len)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_stream_im_free_partial(ctx);
        ctx->state = NGX_STREAM_IM_LAST_WRITE;

        return NGX_OK;
    }

    if (ngx_stream_im_upgrade(ctx, &hs) != NGX_OK) {
        return NGX_ERROR;
    }

    /*
     * Frames the client sent right behind its request: the buffer is
     * this function's now, whatever the frames make of the session.
     */

    if (ctx->handshake) {
        buf = ctx->handshake;
        ctx->handshake = NULL;

        ngx_memzero(&rest, sizeof(ngx_buf_t));
        rest.pos = hs.end;
        rest.last = end;

        rc = ngx_stream_im_read_frames(ctx, &rest);

        ngx_free(buf);

        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_stream_im_read_frames(ctx, b);
    }

    b->pos = hs.end;

    return ngx_stream_im_read_frames(ctx, b);
}


static ngx_int_t
ngx_stream_im_upgrade(ngx_stream_im_session_t *ctx,
    ngx_stream_im_handshake_t *hs)
{
    u_char            *p;
    ngx_str_t          src, dst;
    ngx_sha1_t         sha1;
    ngx_connection_t  *c;
    u_char             digest[20];
    u_char             response[sizeof("HTTP/1.1 101 Switching Protocols\r\n"
                                       "Upgrade: websocket\r\n"
                                       "Connection: Upgrade\r\n"
                                       "Sec-WebSocket-Accept: \r\n"
                                       "Sec-WebSocket-Protocol: im.v1\r\n"
                                       "\r\n") + 28];

    c = ctx->session->connection;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, hs->key.data, hs->key.len);
    ngx_sha1_update(&sha1, NGX_STREAM_IM_WS_GUID,
                    sizeof(NGX_STREAM_IM_WS_GUID) - 1);
    ngx_sha1_final(digest, &sha1);

    p = ngx_cpymem(response, "HTTP/1.1 101 Switching Protocols\r\n"
                             "Upgrade: websocket\r\n"
                             "Connection: Upgrade\r\n"
                             "Sec-WebSocket-Accept: ",
                   sizeof("HTTP/1.1 101 Switching Protocols\r\n"
                          "Upgrade: websocket\r\n"
                          "Connection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: ") - 1);

    src.data = digest;
    src.len = sizeof(digest);
    dst.data = p;

    ngx_encode_base64(&dst, &src);

    p += dst.len;

    if (hs->subprotocol) {
        p = ngx_cpymem(p, "\r\nSec-WebSocket-Protocol: im.v1",
                       sizeof("\r\nSec-WebSocket-Protocol: im.v1") - 1);
    }

    p = ngx_cpymem(p, "\r\n\r\n", 4);

    if (ngx_stream_im_send_raw(ctx, response, p - response) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->state = NGX_STREAM_IM_OPEN;

    /* graceful shutdown reaches an idle session through c->close */
    c->idle = 1;
    c->log->action = "processing WebSocket frames";

    if (ngx_exiting) {
        return ngx_stream_im_drain(ctx);
    }

    ngx_stream_im_set_timer(ctx);

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_send_raw(ngx_stream_im_session_t *ctx, u_char *data,
    size_t len)
{
    ngx_stream_im_msg_t  *msg;

    msg = ngx_stream_im_msg_alloc(len, ctx->session->connection->log);
    if (msg == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(msg->data, data, len);

    return ngx_stream_im_queue(ctx, msg);
}


static ngx_int_t
ngx_stream_im_read_frames(ngx_stream_im_session_t *ctx, ngx_buf_t *b)
{
    ngx_int_t                  rc;
    ngx_connection_t          *c;
    ngx_stream_im_srv_conf_t  *iscf;
    ngx_stream_im_ws_chunk_t   ch;

    c = ctx->session->connection;
    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    while (ctx->state == NGX_STREAM_IM_OPEN
           || ctx->state == NGX_STREAM_IM_CLOSING)
    {
        rc = ngx_stream_im_ws_parse(&ctx->parser, b, iscf->max_frame, &ch);

        if (rc == NGX_AGAIN) {
            return NGX_OK;
        }

        if (rc == NGX_ERROR) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "client sent invalid WebSocket frame: %s",
                          ch.reason);

            if (ctx->state == NGX_STREAM_IM_CLOSING) {
                ngx_stream_im_finalize(ctx);
                return NGX_DONE;
            }

            /* what follows cannot be parsed: say why and stop reading */

            ngx_stream_im_fail(ctx, ch.status, ch.reason);

            return NGX_OK;
        }

        rc = ngx_stream_im_chunk(ctx, &ch);

        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_chunk(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ws_chunk_t *ch)
{
    ngx_int_t  rc;

    if (ch->last && ch->opcode == NGX_STREAM_IM_WS_PING) {
        rc = ngx_stream_im_rate(ctx, 1, 0);

        if (rc != NGX_OK) {

            /* over the rate: no pong; only this ping's own buffer goes */

            if (ctx->control) {
                ngx_free(ctx->control);
                ctx->control = NULL;
            }

            return NGX_OK;
        }
    }

    if (ch->opcode != NGX_STREAM_IM_WS_BINARY) {

        if (ch->first && ch->last) {
            return ngx_stream_im_control(ctx, ch->opcode, ch->data, ch->len);
        }

        if (ch->first) {
            ctx->control = ngx_alloc(NGX_STREAM_IM_WS_CONTROL_MAX,
                                     ctx->session->connection->log);
            if (ctx->control == NULL) {
                return NGX_ERROR;
            }

            ctx->control_len = 0;
        }

        ngx_memcpy(ctx->control + ctx->control_len, ch->data, ch->len);
        ctx->control_len += ch->len;

        if (!ch->last) {
            return NGX_OK;
        }

        rc = ngx_stream_im_control(ctx, ch->opcode, ctx->control,
                                   ctx->control_len);

        if (rc != NGX_DONE && ctx->control) {
            ngx_free(ctx->control);
            ctx->control = NULL;
        }

        return rc;
    }

    if (ctx->state != NGX_STREAM_IM_OPEN) {

        /* closing: the rest of a data message is read and dropped */

        if (ctx->message) {
            ngx_free(ctx->message);
            ctx->message = NULL;
            ctx->message_len = 0;
            ctx->message_size = 0;
        }

        return NGX_OK;
    }

    if (ch->first && ch->last) {

        /* the common case: the whole message is in the read buffer */

        return ngx_stream_im_message(ctx, ch->data, ch->len);
    }

    if (ngx_stream_im_append(ctx, ch) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!ch->last) {
        return NGX_OK;
    }

    rc = ngx_stream_im_message(ctx, ctx->message, ctx->message_len);

    if (rc != NGX_DONE && ctx->message) {
        ngx_free(ctx->message);
        ctx->message = NULL;
        ctx->message_len = 0;
        ctx->message_size = 0;
    }

    return rc;
}


static ngx_int_t
ngx_stream_im_append(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ws_chunk_t *ch)
{
    u_char                    *p;
    size_t                     need, size;
    ngx_stream_im_srv_conf_t  *iscf;

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    /* the parser has checked that the message fits in im_max_frame */

    need = ctx->message_len + ch->len + (size_t) ch->more;

    if (need > ctx->message_size) {
        size = ngx_max(need, ngx_min(2 * ctx->message_size, iscf->max_frame));

        p = ngx_alloc(size, ctx->session->connection->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (ctx->message) {
            ngx_memcpy(p, ctx->message, ctx->message_len);
            ngx_free(ctx->message);
        }

        ctx->message = p;
        ctx->message_size = size;
    }

    ngx_memcpy(ctx->message + ctx->message_len, ch->data, ch->len);
    ctx->message_len += ch->len;

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_control(ngx_stream_im_session_t *ctx, ngx_uint_t opcode,
    u_char *data, size_t len)
{
    u_char             code[2];
    ngx_uint_t         status;
    ngx_connection_t  *c;

    c = ctx->session->connection;

    switch (opcode) {

    case NGX_STREAM_IM_WS_PING:

        if (ctx->state != NGX_STREAM_IM_OPEN) {
            return NGX_OK;
        }

        return ngx_stream_im_send_control(ctx, NGX_STREAM_IM_WS_PONG, data,
                                          len);

    case NGX_STREAM_IM_WS_PONG:
        return NGX_OK;
    }

    /* close */

    if (ngx_stream_im_ws_check_close(data, len, &status) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "client sent invalid close frame");

        if (ctx->state == NGX_STREAM_IM_OPEN) {
            ngx_stream_im_fail(ctx, status, "invalid close frame");
            return NGX_OK;
        }

    } else if (ctx->state == NGX_STREAM_IM_OPEN) {
        ngx_log_debug1(NGX_LOG_DEBUG_STREAM, c->log, 0,
                       "im client close %ui", status);

        code[0] = (u_char) (status >> 8);
        code[1] = (u_char) status;

        ngx_stream_im_metrics_close(status);

        if (ngx_stream_im_send_control(ctx, NGX_STREAM_IM_WS_CLOSE, code, 2)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ctx->closed = 1;
    }

    /* both closes are sent: drop the connection once ours is out */

    c->log->action = "closing WebSocket";

    if (ctx->out == NULL) {
        ngx_stream_im_finalize(ctx);
        return NGX_DONE;
    }

    ctx->state = NGX_STREAM_IM_LAST_WRITE;
    c->read->cancelable = 0;
    ngx_add_timer(c->read, NGX_STREAM_IM_CLOSE_TIMEOUT);

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_message(ngx_stream_im_session_t *ctx, u_char *data,
    size_t len)
{
    ngx_int_t   rc;
    Im__Frame  *f;

    rc = ngx_stream_im_rate(ctx, 1, 0);

    if (rc == NGX_ABORT) {
        return NGX_OK;
    }

    f = ngx_stream_im_decode(ngx_stream_im_worker_arena(), data, len);

    ngx_stream_im_metrics_frame(f ? (ngx_uint_t) f->body_case
                                  : NGX_STREAM_IM_M_FRAME_INVALID);

    if (f == NULL) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a frame that is not an im.Frame");

        return ngx_stream_im_send_error(ctx, 0, IM__ERROR__CODE__BAD_FRAME,
                                        "not an im.Frame");
    }

    if (ngx_stream_im_canonical(f, len) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a string with a NUL in it");

        if (f->body_case != IM__FRAME__BODY_AUTH) {
            return ngx_stream_im_send_error(ctx, f->id,
                                            IM__ERROR__CODE__BAD_FRAME,
                                            "a string holds a NUL");
        }

        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAUTHENTICATED);

        if (ngx_stream_im_send_error(ctx, f->id,
                                     IM__ERROR__CODE__UNAUTHENTICATED,
                                     "malformed token")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY,
                            "authentication failed");
        return NGX_OK;
    }

    if (rc == NGX_DECLINED) {

        /* over the rate: the request is refused, with its id */

        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client is over im_rate");

        if (f->body_case == IM__FRAME__BODY_AUTH) {
            ngx_stream_im_metrics_login(IM__ERROR__CODE__RATE_LIMITED);
        }

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__RATE_LIMITED,
                                        "over the rate limit");
    }

    return ngx_stream_im_frame_handler(ctx, f);
}


ngx_int_t
ngx_stream_im_send_frame(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    size_t                n;
    u_char               *p;
    ngx_stream_im_msg_t  *msg;

    n = ngx_stream_im_encoded_size(f);

    msg = ngx_stream_im_msg_alloc(NGX_STREAM_IM_WS_HEADER_MAX + n,
                                  ctx->session->connection->log);
    if (msg == NULL) {
        return NGX_ERROR;
    }

    p = ngx_stream_im_encode(msg->data, f, n);
    msg->len = p - msg->data;

    return ngx_stream_im_queue(ctx, msg);
}


ngx_int_t
ngx_stream_im_send_error(ngx_stream_im_session_t *ctx, uint32_t id,
    Im__Error__Code code, char *reason)
{
    Im__Frame  f;
    Im__Error  e;

    im__frame__init(&f);
    im__error__init(&e);

    e.code = code;
    e.reason = reason;

    f.id = id;
    f.body_case = IM__FRAME__BODY_ERROR;
    f.error = &e;

    ngx_stream_im_metrics_error(code);

    if (code == IM__ERROR__CODE__RATE_LIMITED) {
        ngx_stream_im_metrics_count(NGX_STREAM_IM_M_RATE_LIMITED);
    }

    return ngx_stream_im_send_frame(ctx, &f);
}


/* Redis is away: the client may retry, a retried Send is stored once */

ngx_int_t
ngx_stream_im_send_unavailable(ngx_stream_im_session_t *ctx, uint32_t id)
{
    return ngx_stream_im_send_error(ctx, id, IM__ERROR__CODE__UNAVAILABLE,
                                    "storage unavailable, retry");
}


static ngx_int_t
ngx_stream_im_send_control(ngx_stream_im_session_t *ctx, ngx_uint_t opcode,
    u_char *data, size_t len)
{
    u_char               *p;
    ngx_stream_im_msg_t  *msg;

    msg = ngx_stream_im_msg_alloc(2 + len, ctx->session->connection->log);
    if (msg == NULL) {
        return NGX_ERROR;
    }

    p = ngx_stream_im_ws_header(msg->data, opcode, len);
    p = ngx_cpymem(p, data, len);
    msg->len = p - msg->data;

    return ngx_stream_im_queue(ctx, msg);
}


/*
 * Starts the closing handshake: our close frame goes out, frames other
 * than the peer's close are ignored, and the peer has a few seconds.
 */

void
ngx_stream_im_close(ngx_stream_im_session_t *ctx, ngx_uint_t status,
    char *reason)
{
    size_t             len;
    u_char            *p;
    ngx_connection_t  *c;
    u_char             payload[NGX_STREAM_IM_WS_CONTROL_MAX];

    c = ctx->session->connection;
    c->log->action = "closing WebSocket";

    len = ngx_min(ngx_strlen(reason), NGX_STREAM_IM_WS_CONTROL_MAX - 2);

    payload[0] = (u_char) (status >> 8);
    payload[1] = (u_char) status;
    p = ngx_cpymem(payload + 2, reason, len);

    /*
     * The parser keeps its place: the frame the client is in the middle
     * of is read to its end, and its close frame after it is found.
     */

    ctx->state = NGX_STREAM_IM_CLOSING;

    ngx_stream_im_metrics_close(status);

    if (ngx_stream_im_send_control(ctx, NGX_STREAM_IM_WS_CLOSE, payload,
                                   p - payload)
        != NGX_OK)
    {
        /* no memory for a goodbye: the write handler will just close */
        ctx->state = NGX_STREAM_IM_LAST_WRITE;
        ngx_post_event(c->write, &ngx_posted_events);
    }

    /* nothing may follow the close frame (RFC 6455 5.5.1) */

    ctx->closed = 1;

    c->read->cancelable = 0;
    ngx_add_timer(c->read, NGX_STREAM_IM_CLOSE_TIMEOUT);
}


/* names a session for an asynchronous reply: slot and serial number */

void
ngx_stream_im_session_ref(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, uint32_t id)
{
    ngx_connection_t  *c;

    c = ctx->session->connection;

    ref->slot = c - ngx_cycle->connections;
    ref->number = c->number;
    ref->id = id;
    ref->arg = 0;
}


ngx_stream_im_session_t *
ngx_stream_im_session_lookup(ngx_stream_im_ref_t *ref)
{
    ngx_connection_t  *c;

    if (ref->number == 0 || ref->slot >= ngx_cycle->connection_n) {
        return NULL;
    }

    c = &ngx_cycle->connections[ref->slot];

    /* a closed or reused connection has another number, or no socket */

    if (c->fd == (ngx_socket_t) -1 || c->number != ref->number) {
        return NULL;
    }

    return ngx_stream_get_module_ctx((ngx_stream_session_t *) c->data,
                                     ngx_stream_im_module);
}


/*
 * Fails the WebSocket connection (RFC 6455 7.1.7): a close frame with
 * the reason, then no more reading of frames.
 */

void
ngx_stream_im_fail(ngx_stream_im_session_t *ctx, ngx_uint_t status,
    char *reason)
{
    ngx_stream_im_close(ctx, status, reason);

    ctx->state = NGX_STREAM_IM_LAST_WRITE;
}


/*
 * All is sent: our FIN goes first, and what the client still sends is
 * read and dropped for a while, so that no reset destroys the close
 * frame or HTTP response in flight.
 */

static void
ngx_stream_im_linger(ngx_stream_im_session_t *ctx)
{
    ngx_connection_t  *c;

    c = ctx->session->connection;

    if (c->ssl == NULL
        && ngx_shutdown_socket(c->fd, NGX_WRITE_SHUTDOWN) == -1)
    {
        ngx_stream_im_finalize(ctx);
        return;
    }

    ctx->state = NGX_STREAM_IM_LINGER;

    c->read->cancelable = 0;
    ngx_add_timer(c->read, NGX_STREAM_IM_LINGER_TIMEOUT);

    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
        return;
    }

    /*
     * a connection refused with 503 was never read from: arm its read
     * event, so that the client's FIN frees its slot before the linger
     */

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_stream_im_finalize(ctx);
    }
}


ngx_stream_im_msg_t *
ngx_stream_im_msg_alloc(size_t len, ngx_log_t *log)
{
    ngx_stream_im_msg_t  *msg;

    msg = ngx_alloc(offsetof(ngx_stream_im_msg_t, data) + len, log);
    if (msg == NULL) {
        return NULL;
    }

    msg->refs = 0;
    msg->len = len;

    return msg;
}


void
ngx_stream_im_msg_release(ngx_stream_im_msg_t *msg)
{
    if (--msg->refs == 0) {
        ngx_free(msg);
    }
}


/* queues a reference; frames queued in one event loop turn go together */

ngx_int_t
ngx_stream_im_queue(ngx_stream_im_session_t *ctx, ngx_stream_im_msg_t *msg)
{
    ngx_connection_t          *c;
    ngx_stream_im_out_t       *out;
    ngx_stream_im_srv_conf_t  *iscf;

    c = ctx->session->connection;
    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    if (ctx->closed) {

        /* a late reply after our close frame: dropped */

        if (msg->refs == 0) {
            ngx_free(msg);
        }

        return NGX_DECLINED;
    }

    if (ctx->out_bytes + msg->len > iscf->send_queue
        && ctx->state == NGX_STREAM_IM_OPEN
        && (ngx_stream_im_flush(ctx) == NGX_ERROR
            || ctx->out_bytes + msg->len > iscf->send_queue))
    {
        /* a client that cannot keep up replays from its cursor later */

        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "client is too slow, im_send_queue is full");

        ngx_stream_im_metrics_count(NGX_STREAM_IM_M_CUTOFFS);

        ctx->state = NGX_STREAM_IM_LAST_WRITE;
        ctx->overflow = 1;
        ngx_post_event(c->write, &ngx_posted_events);

        if (msg->refs == 0) {
            ngx_free(msg);
        }

        return NGX_DECLINED;
    }

    out = ngx_alloc(sizeof(ngx_stream_im_out_t), c->log);
    if (out == NULL) {
        if (msg->refs == 0) {
            ngx_free(msg);
        }

        return NGX_ERROR;
    }

    msg->refs++;
    ctx->out_bytes += msg->len;

    out->next = NULL;
    out->msg = msg;

    *ctx->out_last = out;
    ctx->out_last = &out->next;

    ngx_post_event(c->write, &ngx_posted_events);

    return NGX_OK;
}


static void
ngx_stream_im_write_handler(ngx_event_t *wev)
{
    ngx_connection_t          *c;
    ngx_stream_session_t      *s;
    ngx_stream_im_session_t   *ctx;
    ngx_stream_im_srv_conf_t  *iscf;

    c = wev->data;
    s = c->data;
    ctx = ngx_stream_get_module_ctx(s, ngx_stream_im_module);

    if (ctx->overflow || ngx_stream_im_flush(ctx) == NGX_ERROR) {
        ngx_stream_im_finalize(ctx);
        return;
    }

    if (ctx->out == NULL && ctx->state == NGX_STREAM_IM_LAST_WRITE) {
        ngx_stream_im_linger(ctx);
        return;
    }

    if (ctx->replay_paused && ctx->state == NGX_STREAM_IM_OPEN) {
        iscf = ngx_stream_get_module_srv_conf(s, ngx_stream_im_module);

        if (ctx->out_bytes <= iscf->send_queue / 4) {
            ngx_stream_im_writable_handler(ctx);
        }
    }
}


static ngx_int_t
ngx_stream_im_flush(ngx_stream_im_session_t *ctx)
{
    off_t                 sent;
    size_t                rest;
    ngx_uint_t            n;
    ngx_chain_t          *cl;
    ngx_connection_t     *c;
    ngx_stream_im_out_t  *out;
    ngx_buf_t             bufs[NGX_STREAM_IM_SEND_IOVS];
    ngx_chain_t           chain[NGX_STREAM_IM_SEND_IOVS];

    c = ctx->session->connection;

    while (ctx->out) {

        if (!c->write->ready) {
            break;
        }

        n = 0;

        for (out = ctx->out; out && n < NGX_STREAM_IM_SEND_IOVS;
             out = out->next)
        {
            ngx_memzero(&bufs[n], sizeof(ngx_buf_t));
            bufs[n].memory = 1;
            bufs[n].pos = out->msg->data + (n == 0 ? ctx->out_pos : 0);
            bufs[n].last = out->msg->data + out->msg->len;

            chain[n].buf = &bufs[n];
            chain[n].next = NULL;

            if (n) {
                chain[n - 1].next = &chain[n];
            }

            n++;
        }

        sent = c->sent;

        cl = c->send_chain(c, chain, 0);

        if (cl == NGX_CHAIN_ERROR) {
            c->error = 1;
            return NGX_ERROR;
        }

        sent = c->sent - sent;

        while (ctx->out) {
            out = ctx->out;
            rest = out->msg->len - ctx->out_pos;

            if ((off_t) rest > sent) {
                ctx->out_pos += (size_t) sent;
                break;
            }

            sent -= rest;
            ctx->out_pos = 0;
            ctx->out = out->next;
            ctx->out_bytes -= out->msg->len;

            ngx_stream_im_msg_release(out->msg);
            ngx_free(out);
        }

        if (cl) {
            break;
        }
    }

    if (ctx->out == NULL) {
        ctx->out_last = &ctx->out;
        return NGX_OK;
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


/*
 * The worker is exiting (reload, upgrade): each session is told when to
 * reconnect, spread over im_drain_window so the new workers are not hit
 * all at once, and is served until then.
 */

static ngx_int_t
ngx_stream_im_drain(ngx_stream_im_session_t *ctx)
{
    Im__Frame                  f;
    Im__Goaway                 goaway;
    ngx_msec_t                 delay;
    ngx_connection_t          *c;
    ngx_stream_im_srv_conf_t  *iscf;

    c = ctx->session->connection;
    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    delay = iscf->drain_window ? ngx_random() % iscf->drain_window : 0;

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, c->log, 0,
                   "im drain, reconnect after %M", delay);

    im__frame__init(&f);
    im__goaway__init(&goaway);

    goaway.reconnect_after_ms = delay;

    f.body_case = IM__FRAME__BODY_GOAWAY;
    f.goaway = &goaway;

    ctx->draining = 1;

    /* no room for a Goaway: the caller ends the session */

    if (ngx_stream_im_send_frame(ctx, &f) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_stream_im_metrics_count(NGX_STREAM_IM_M_GOAWAYS);

    /* the worker waits for this timer: the session ends in time */

    if (ctx->authenticated) {
        delay = ngx_min(delay, ngx_stream_im_token_left(ctx));
    }

    c->read->cancelable = 0;
    ngx_add_timer(c->read, delay + 1);

    return NGX_OK;
}


/*
 * Token buckets on frames and bytes: a frame over the rate is refused,
 * a client that keeps on past the burst is cut off.
 */

static ngx_int_t
ngx_stream_im_rate(ngx_stream_im_session_t *ctx, ngx_uint_t frames,
    size_t bytes)
{
    int64_t                    f, b, elapsed;
    ngx_msec_t                 now;
    ngx_stream_im_srv_conf_t  *iscf;

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    if (iscf->rate == 0 || ctx->state != NGX_STREAM_IM_OPEN) {
        return NGX_OK;
    }

    now = ngx_current_msec;
    elapsed = ngx_min((int64_t) (now - ctx->rate_last), 60000);
    ctx->rate_last = now;

    f = ctx->rate_frames + elapsed * (int64_t) iscf->rate;
    f = ngx_min(f, (int64_t) iscf->rate_burst * 1000);
    f -= (int64_t) frames * 1000;

    b = ctx->rate_bytes + elapsed * (int64_t) iscf->rate_bytes / 1000;
    b = ngx_min(b, (int64_t) iscf->rate_bytes * 2);
    b -= (int64_t) bytes;

    ctx->rate_frames = (int32_t) ngx_max(f, INT32_MIN);
    ctx->rate_bytes = (int32_t) ngx_max(b, INT32_MIN);

    if (b >= 0) {
        ctx->rate_debt = 0;
    }

    if (f >= 0 && b >= 0) {
        return NGX_OK;
    }

    if (f > -(int64_t) iscf->rate_burst * 1000
        && (b > -(int64_t) iscf->rate_bytes * 2 || ctx->rate_debt))
    {
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                  "client exceeded im_rate, cut off");

    ngx_stream_im_metrics_count(NGX_STREAM_IM_M_RATE_LIMITED);

    ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY,
                        "rate limit exceeded");

    return NGX_ABORT;
}


/*
 * Work done for the session that its bytes of input did not show: taken
 * from its byte budget, so its next frames are refused until the budget
 * has grown back; such a debt alone does not cut the client off.
 */

void
ngx_stream_im_session_charge(ngx_stream_im_session_t *ctx, size_t bytes)
{
    int64_t                    b;
    ngx_stream_im_srv_conf_t  *iscf;

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    if (iscf->rate == 0) {
        return;
    }

    b = (int64_t) ctx->rate_bytes - (int64_t) ngx_min(bytes, INT32_MAX);

    ctx->rate_bytes = (int32_t) ngx_max(b, INT32_MIN);
    ctx->rate_debt = (ctx->rate_bytes < 0);
}


void
ngx_stream_im_session_signed_in(ngx_stream_im_session_t *ctx)
{
    ctx->authenticated = 1;
    ngx_stream_im_unauthenticated--;
    ngx_stream_im_authenticated++;
    ngx_stream_im_metrics_sessions(ngx_stream_im_authenticated,
                                   ngx_stream_im_unauthenticated);
    ngx_stream_im_metrics_login(0);

    /* the token may end before the timer set for Auth fires */

    ngx_stream_im_session_rearm(ctx);
}


/* the session's timer again, e.g. when its token's end moved */

void
ngx_stream_im_session_rearm(ngx_stream_im_session_t *ctx)
{
    ngx_msec_t    left;
    ngx_event_t  *rev;

    rev = ctx->session->connection->read;

    if (ctx->state == NGX_STREAM_IM_OPEN && ctx->draining) {

        /* a draining session keeps its timer, unless the token ends first */

        left = ctx->authenticated ? ngx_stream_im_token_left(ctx) + 1 : 0;

        if (left && rev->timer_set
            && (ngx_msec_int_t) (rev->timer.key - ngx_current_msec)
               > (ngx_msec_int_t) left)
        {
            ngx_add_timer(rev, left);
        }

        return;
    }

    if (ctx->state == NGX_STREAM_IM_OPEN) {
        ngx_stream_im_set_timer(ctx);
    }
}


static void
ngx_stream_im_free_partial(ngx_stream_im_session_t *ctx)
{
    if (ctx->handshake) {
        ngx_free(ctx->handshake);
        ctx->handshake = NULL;
    }

    if (ctx->message) {
        ngx_free(ctx->message);
        ctx->message = NULL;
        ctx->message_len = 0;
        ctx->message_size = 0;
    }

    if (ctx->control) {
        ngx_free(ctx->control);
        ctx->control = NULL;
    }
}


static void
ngx_stream_im_finalize(ngx_stream_im_session_t *ctx)
{
    ngx_stream_finalize_session(ctx->session, NGX_STREAM_OK);
}


/* runs however the session ends: the pool goes, so do the heap parts */

static void
ngx_stream_im_cleanup(void *data)
{
    ngx_stream_im_session_t *ctx = data;

    ngx_uint_t            i;
    ngx_stream_im_out_t  *out;

    if (ctx->authenticated) {
        ngx_stream_im_authenticated--;

    } else {
        ngx_stream_im_unauthenticated--;
    }

    ngx_stream_im_metrics_sessions(ngx_stream_im_authenticated,
                                   ngx_stream_im_unauthenticated);

    for (i = 0; i < ngx_stream_im_nclose; i++) {
        ngx_stream_im_close_handlers[i](ctx);
    }

    ngx_stream_im_free_partial(ctx);

    while (ctx->out) {
        out = ctx->out;
        ctx->out = out->next;

        ngx_stream_im_msg_release(out->msg);
        ngx_free(out);
    }
}
