
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * A decoded client frame goes to the handler of its body.  Requests that
 * need Redis answer from the reply's callback, which finds the session
 * through its ref: the session may have gone while the reply was out.
 */


#define NGX_STREAM_IM_TOKEN_MAX     8192
#define NGX_STREAM_IM_SYNC_MAX      1000
#define NGX_STREAM_IM_TYPING_EVERY  1000


static ngx_int_t ngx_stream_im_ping(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
static ngx_int_t ngx_stream_im_auth(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
static ngx_int_t ngx_stream_im_target(ngx_stream_im_session_t *ctx,
    uint32_t id, char *to, char *group, ngx_str_t *kind, ngx_str_t *target);
static ngx_int_t ngx_stream_im_send(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
static void ngx_stream_im_script_error(ngx_stream_im_session_t *ctx,
    uint32_t id, redisReply *r);
static ngx_int_t ngx_stream_im_typing(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
static ngx_int_t ngx_stream_im_group(ngx_stream_im_session_t *ctx,
    Im__Frame *f, char *group, char *op);
static void ngx_stream_im_grouped(ngx_stream_im_ref_t *ref, redisReply *r);
static void ngx_stream_im_sent(ngx_stream_im_ref_t *ref,
    ngx_stream_im_posted_t *posted);
static ngx_int_t ngx_stream_im_ack(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
static ngx_int_t ngx_stream_im_sync(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
static void ngx_stream_im_synced(ngx_stream_im_ref_t *ref, redisReply *r);
static ngx_int_t ngx_stream_im_refresh(ngx_stream_im_session_t *ctx,
    Im__Frame *f, ngx_stream_im_claims_t *claims);
static void ngx_stream_im_refreshed(ngx_stream_im_ref_t *ref,
    redisReply *r);
static ngx_int_t ngx_stream_im_sync_done(ngx_stream_im_session_t *ctx,
    uint32_t id, ngx_str_t *last, ngx_uint_t more);
static ngx_int_t ngx_stream_im_dispatch(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
static ngx_int_t ngx_stream_im_pstrdup(ngx_stream_im_session_t *ctx,
    ngx_str_t *dst, u_char *src, size_t len);


void
ngx_stream_im_dispatch_init_worker(void)
{
    ngx_stream_im_session_on_frame(ngx_stream_im_dispatch);
}


static ngx_int_t
ngx_stream_im_dispatch(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    ngx_log_t  *log;

    log = ctx->session->connection->log;

    switch (f->body_case) {

    case IM__FRAME__BODY_PING:
        return ngx_stream_im_ping(ctx, f);

    case IM__FRAME__BODY_AUTH:
        return ngx_stream_im_auth(ctx, f);

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

    switch (f->body_case) {

    case IM__FRAME__BODY_SEND:
        return ngx_stream_im_send(ctx, f);

    case IM__FRAME__BODY_ACK:
        return ngx_stream_im_ack(ctx, f);

    case IM__FRAME__BODY_SYNC:
        return ngx_stream_im_sync(ctx, f);

    case IM__FRAME__BODY_TYPING:
        return ngx_stream_im_typing(ctx, f);

    case IM__FRAME__BODY_PRESENCE_SUB:
        return ngx_stream_im_presence_sub(ctx, f);

    case IM__FRAME__BODY_GROUP_JOIN:
        return ngx_stream_im_group(ctx, f, f->group_join->group, "join");

    case IM__FRAME__BODY_GROUP_LEAVE:
        return ngx_stream_im_group(ctx, f, f->group_leave->group, "leave");

    default:
        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__UNAVAILABLE,
                                        "not available on this server");
    }
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


static ngx_int_t
ngx_stream_im_auth(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    char                      *err;
    size_t                     len;
    ngx_str_t                  token, payload, device;
    ngx_log_t                 *log;
    ngx_stream_im_claims_t     claims;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     buf[NGX_STREAM_IM_TOKEN_MAX];

    log = ctx->session->connection->log;

    if (ctx->logging_in) {
        ngx_log_error(NGX_LOG_INFO, log, 0, "client sent a second Auth");

        ngx_stream_im_metrics_login(IM__ERROR__CODE__BAD_FRAME);

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "already authenticated");
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    token.data = (u_char *) f->auth->token;
    token.len = ngx_strlen(f->auth->token);

    if (token.len > NGX_STREAM_IM_TOKEN_MAX) {
        err = "token too long";
        goto failed;
    }

    if (ngx_stream_im_token_open(&token, &iscf->keys, NULL, buf, &payload,
                                 &err)
        != NGX_OK
        || ngx_stream_im_token_claims(&payload, ngx_time(), &claims, &err)
           != NGX_OK)
    {
        goto failed;
    }

    if (ctx->authenticated) {
        return ngx_stream_im_refresh(ctx, f, &claims);
    }

    device.data = (u_char *) f->auth->device;
    device.len = ngx_strlen(f->auth->device);

    if (device.len == 0) {
        ngx_str_set(&device, "default");
    }

    if (ngx_stream_im_valid_id(device.data, device.len) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, log, 0, "client sent a bad device id");

        ngx_stream_im_metrics_login(IM__ERROR__CODE__BAD_FRAME);

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "bad device id");
    }

    if (!ngx_stream_im_redis_up()) {
        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAVAILABLE);
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    /* the user and device live as long as the session */

    len = claims.user_len;

    if (ctx->user.data == NULL
        && (ngx_stream_im_pstrdup(ctx, &ctx->user, claims.user, len)
            != NGX_OK
            || ngx_stream_im_pstrdup(ctx, &ctx->device, device.data,
                                     device.len)
               != NGX_OK))
    {
        return NGX_ERROR;
    }

    if (ctx->user.len != len
        || ngx_memcmp(ctx->user.data, claims.user, len) != 0
        || ctx->device.len != device.len
        || ngx_memcmp(ctx->device.data, device.data, device.len) != 0)
    {
        /* a retry after "unavailable" must be the same identity */

        ngx_stream_im_metrics_login(IM__ERROR__CODE__BAD_FRAME);

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "identity changed");
    }

    ctx->expires = claims.exp;

    if (ngx_stream_im_router_login(ctx, f->id, claims.iat) != NGX_OK) {
        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAVAILABLE);
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_INFO, log, 0, "client sent a bad token: %s", err);

    ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAUTHENTICATED);

    if (ctx->authenticated) {

        /* a failed refresh: the session lasts until the old token expires */

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__UNAUTHENTICATED,
                                        err);
    }

    if (ngx_stream_im_send_error(ctx, f->id,
                                 IM__ERROR__CODE__UNAUTHENTICATED, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY,
                        "authentication failed");

    return NGX_OK;
}


/*
 * Auth on a signed-in session: a fresh token for the same user (and
 * device) moves the session's end to its exp, answered with AuthOk.
 */

static ngx_int_t
ngx_stream_im_refresh(ngx_stream_im_session_t *ctx, Im__Frame *f,
    ngx_stream_im_claims_t *claims)
{
    ngx_str_t             device, key, arg;
    ngx_log_t            *log;
    ngx_stream_im_ref_t   ref;
    u_char                buf[NGX_STREAM_IM_KEY_MAX];
    u_char                issued[NGX_TIME_T_LEN + 3];

    log = ctx->session->connection->log;

    device.data = (u_char *) f->auth->device;
    device.len = ngx_strlen(f->auth->device);

    if (claims->user_len != ctx->user.len
        || ngx_memcmp(claims->user, ctx->user.data, ctx->user.len) != 0)
    {
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "client sent a token of another user");

        ngx_stream_im_metrics_login(IM__ERROR__CODE__FORBIDDEN);

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__FORBIDDEN,
                                        "token of another user");
    }

    if (device.len
        && (device.len != ctx->device.len
            || ngx_memcmp(device.data, ctx->device.data, device.len) != 0))
    {
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "client sent Auth for another device");

        ngx_stream_im_metrics_login(IM__ERROR__CODE__BAD_FRAME);

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "identity changed");
    }

    if (!ngx_stream_im_redis_up()) {
        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAVAILABLE);
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    /* a token issued before the user was revoked is refused here too */

    key.data = buf;
    key.len = ngx_stream_im_router_key(buf, "u", &ctx->user, "revoked")
              - buf;

    arg.data = issued;
    arg.len = ngx_sprintf(issued, "%T000", claims->iat) - issued;

    ngx_stream_im_session_ref(ctx, &ref, f->id);

    /* exp rides along, in seconds: fits until 2106 */

    ref.arg = (uint32_t) ngx_min(claims->exp, (time_t) NGX_MAX_UINT32_VALUE);

    if (ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_REVOKED, 1, &key, 1,
                                 &arg, ngx_stream_im_refreshed, &ref)
        != NGX_OK)
    {
        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAVAILABLE);
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    return NGX_OK;
}


static void
ngx_stream_im_refreshed(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_session_t  *ctx;

    ctx = ngx_stream_im_session_lookup(ref);

    if (ctx == NULL || ctx->closed) {
        return;
    }

    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAVAILABLE);
        (void) ngx_stream_im_send_unavailable(ctx, ref->id);
        return;
    }

    if (r->integer) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "user \"%V\" refreshed with a revoked token",
                      &ctx->user);

        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAUTHENTICATED);

        (void) ngx_stream_im_send_error(ctx, ref->id,
                                        IM__ERROR__CODE__UNAUTHENTICATED,
                                        "token revoked");
        return;
    }

    ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                  "user \"%V\" device \"%V\" refreshed the token",
                  &ctx->user, &ctx->device);

    ctx->expires = (time_t) ref->arg;

    ngx_stream_im_session_rearm(ctx);

    ngx_stream_im_metrics_login(NGX_STREAM_IM_M_REFRESH);

    (void) ngx_stream_im_router_auth_ok(ctx, ref->id);
}


static ngx_int_t
ngx_stream_im_sync_done(ngx_stream_im_session_t *ctx, uint32_t id,
    ngx_str_t *last, ngx_uint_t more)
{
    Im__Frame     f;
    Im__SyncDone  done;

    im__frame__init(&f);
    im__sync_done__init(&done);

    if (last && last->len) {
        /* hiredis strings are NUL-terminated */
        done.last = (char *) last->data;
    }

    done.more = more;

    f.id = id;
    f.body_case = IM__FRAME__BODY_SYNC_DONE;
    f.sync_done = &done;

    return ngx_stream_im_send_frame(ctx, &f);
}


static ngx_int_t
ngx_stream_im_pstrdup(ngx_stream_im_session_t *ctx, ngx_str_t *dst,
    u_char *src, size_t len)
{
    /* NUL-terminated: protobuf-c wants C strings when they go out */

    dst->data = ngx_pnalloc(ctx->session->connection->pool, len + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, src, len);
    dst->data[len] = '\0';
    dst->len = len;

    return NGX_OK;
}


/*
 * Exactly one of to and group names the recipients; both are ids that
 * become parts of Redis keys, so they are checked here.
 */

static ngx_int_t
ngx_stream_im_target(ngx_stream_im_session_t *ctx, uint32_t id, char *to,
    char *group, ngx_str_t *kind, ngx_str_t *target)
{
    target->data = (u_char *) (to[0] ? to : group);
    target->len = ngx_strlen((char *) target->data);

    if ((to[0] == '\0') == (group[0] == '\0')
        || ngx_stream_im_valid_id(target->data, target->len) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a bad recipient");

        (void) ngx_stream_im_send_error(ctx, id, IM__ERROR__CODE__BAD_FRAME,
                                        "need one valid \"to\" or "
                                        "\"group\"");
        return NGX_DECLINED;
    }

    if (to[0]) {
        ngx_str_set(kind, "u");

    } else {
        ngx_str_set(kind, "g");
    }

    return NGX_OK;
}


/* SendAck waits for the send script's reply */

static ngx_int_t
ngx_stream_im_send(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    char                      *reason;
    ngx_int_t                  rc;
    Im__Send                  *m;
    Im__Message                msg;
    Im__Error__Code            code;
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_post_t       post;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     sid[NGX_STREAM_IM_SID_MAX];

    m = f->send;

    im__message__init(&msg);

    msg.from = (char *) ctx->user.data;
    msg.to = m->to;
    msg.group = m->group;
    msg.body = m->body;
    msg.client_msg_id = m->client_msg_id;
    msg.type = m->type;

    if (ngx_stream_im_router_check(&msg, &code, &reason) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a bad Send: %s", reason);

        return ngx_stream_im_send_error(ctx, f->id, code, reason);
    }

    if (!ngx_stream_im_redis_up()) {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    post.msg = &msg;
    post.origin = *ngx_stream_im_router_session_id(ctx, sid);
    post.inbox_max = iscf->inbox_max;
    post.group_max = iscf->group_max;
    post.backend = 0;

    ngx_stream_im_session_ref(ctx, &ref, f->id);

    /* when the Send was read, for ngx_im_send_ack_seconds */

    ref.arg = ngx_stream_im_metrics_clock();

    rc = ngx_stream_im_post(&post, ngx_stream_im_sent, &ref);

    if (rc == NGX_DECLINED) {
        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__TOO_LARGE,
                                        "message too large");
    }

    if (rc != NGX_OK) {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    return NGX_OK;
}


/*
 * A script refuses with "<CODE> <reason>"; anything else from Redis is
 * its own trouble, which the client can only retry.
 */

static void
ngx_stream_im_script_error(ngx_stream_im_session_t *ctx, uint32_t id,
    redisReply *r)
{
    char             *reason;
    Im__Error__Code   code;

    if (ngx_stream_im_post_refusal(r, &code, &reason) == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client request refused: %s", r->str);

    } else {
        code = IM__ERROR__CODE__UNAVAILABLE;
        reason = "storage unavailable, retry";

        if (r && r->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "redis refused a request: %s", r->str);
        }
    }

    (void) ngx_stream_im_send_error(ctx, id, code, reason);
}


static ngx_int_t
ngx_stream_im_typing(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    size_t                     n;
    ngx_str_t                  kind, target, to, group, frame;
    ngx_msec_t                 now;
    Im__Frame                  out;
    Im__Typing                 typing;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     sid[NGX_STREAM_IM_SID_MAX];

    if (ngx_stream_im_target(ctx, f->id, f->typing->to, f->typing->group,
                             &kind, &target)
        != NGX_OK)
    {
        return NGX_OK;
    }

    /* at most one a second: a keystroke each is not worth a round trip */

    now = ngx_current_msec;

    if (now - ctx->typing_at < NGX_STREAM_IM_TYPING_EVERY
        && ctx->typing_at != 0)
    {
        return NGX_OK;
    }

    ctx->typing_at = now;

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    im__frame__init(&out);
    im__typing__init(&typing);

    typing.to = f->typing->to;
    typing.group = f->typing->group;
    typing.from = (char *) ctx->user.data;

    out.body_case = IM__FRAME__BODY_TYPING;
    out.typing = &typing;

    n = im__frame__get_packed_size(&out);

    frame.data = ngx_stream_im_arena_alloc(ngx_stream_im_worker_arena(), n);
    if (frame.data == NULL) {
        return NGX_OK;
    }

    frame.len = im__frame__pack(&out, frame.data);

    if (kind.data[0] == 'g') {
        ngx_str_null(&to);
        group = target;

    } else {
        to = target;
        ngx_str_null(&group);
    }

    /* ephemeral: if Redis is down, nobody hears it, which is fine */

    ngx_stream_im_post_typing(&ctx->user, &to, &group, &frame,
                              ngx_stream_im_router_session_id(ctx, sid),
                              iscf->group_max);

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_group(ngx_stream_im_session_t *ctx, Im__Frame *f, char *group,
    char *op)
{
    ngx_str_t                  id, keys[2], args[3];
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     gmax[NGX_INT_T_LEN];
    u_char                     members[NGX_STREAM_IM_KEY_MAX];
    u_char                     meta[NGX_STREAM_IM_KEY_MAX];

    id.data = (u_char *) group;
    id.len = ngx_strlen(group);

    if (ngx_stream_im_valid_id(id.data, id.len) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a bad group id");

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "bad group id");
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    keys[0].data = members;
    keys[0].len = ngx_stream_im_router_key(members, "g", &id, "members")
                  - members;
    keys[1].data = meta;
    keys[1].len = ngx_stream_im_router_key(meta, "g", &id, "meta") - meta;

    args[0] = ctx->user;
    args[1].data = (u_char *) op;
    args[1].len = ngx_strlen(op);
    args[2].data = gmax;
    args[2].len = ngx_sprintf(gmax, "%ui", iscf->group_max) - gmax;

    ngx_stream_im_session_ref(ctx, &ref, f->id);

    if (ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_GROUP, 2, keys, 3,
                                 args, ngx_stream_im_grouped, &ref)
        != NGX_OK)
    {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    return NGX_OK;
}


static void
ngx_stream_im_grouped(ngx_stream_im_ref_t *ref, redisReply *r)
{
    Im__Ok                    ok;
    Im__Frame                 f;
    ngx_stream_im_session_t  *ctx;

    ctx = ngx_stream_im_session_lookup(ref);

    if (ctx == NULL) {
        return;
    }

    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        ngx_stream_im_script_error(ctx, ref->id, r);
        return;
    }

    im__frame__init(&f);
    im__ok__init(&ok);

    f.id = ref->id;
    f.body_case = IM__FRAME__BODY_OK;
    f.ok = &ok;

    (void) ngx_stream_im_send_frame(ctx, &f);
}


/* SendAck once the message is in every inbox */

static void
ngx_stream_im_sent(ngx_stream_im_ref_t *ref, ngx_stream_im_posted_t *posted)
{
    Im__Frame                 f;
    Im__SendAck               ack;
    ngx_stream_im_session_t  *ctx;

    ctx = ngx_stream_im_session_lookup(ref);

    if (ctx == NULL) {
        return;
    }

    if (posted->rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client's send refused: %s", posted->reason);

        (void) ngx_stream_im_send_error(ctx, ref->id, posted->code,
                                        posted->reason);
        return;
    }

    if (posted->rc != NGX_OK) {
        (void) ngx_stream_im_send_unavailable(ctx, ref->id);
        return;
    }

    /*
     * A group send stores its entry once per member: that counts against
     * the sender's im_rate bytes, so one member cannot grow Redis by the
     * group's size times its own rate.
     */

    if (posted->stored) {
        ngx_stream_im_session_charge(ctx, posted->stored);
    }

    ngx_stream_im_router_sent(ctx, posted);

    im__frame__init(&f);
    im__send_ack__init(&ack);

    ack.client_msg_id = (char *) posted->client_msg_id.data;
    ack.msg_id = (char *) posted->msg_id.data;
    ack.ts_ms = posted->ts;

    f.id = ref->id;
    f.body_case = IM__FRAME__BODY_SEND_ACK;
    f.send_ack = &ack;

    ngx_stream_im_metrics_count(NGX_STREAM_IM_M_STORED);

    if (ngx_stream_im_send_frame(ctx, &f) == NGX_OK) {
        ngx_stream_im_metrics_observe(NGX_STREAM_IM_M_SEND_ACK, ref->arg);
    }
}


static ngx_int_t
ngx_stream_im_ack(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    u_char                  *p;
    ngx_str_t                argv[4];
    ngx_stream_im_msg_id_t   mid;
    u_char                   key[NGX_STREAM_IM_KEY_MAX];

    argv[3].data = (u_char *) f->ack->up_to;
    argv[3].len = ngx_strlen(f->ack->up_to);

    if (ngx_stream_im_msg_id_parse(argv[3].data, argv[3].len, &mid)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a bad Ack");

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "bad msg_id");
    }

    p = ngx_stream_im_router_key(key, "u", &ctx->user, "cursor");

    ngx_str_set(&argv[0], "HSET");
    argv[1].data = key;
    argv[1].len = p - key;
    argv[2] = ctx->device;

    /* Ack has no reply: if Redis is down, the client acks again later */

    (void) ngx_stream_im_redis_command(4, argv, NULL, NULL);

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_sync(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    uint32_t                   limit;
    ngx_str_t                  after, before, lo, hi;
    ngx_uint_t                 reverse;
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_msg_id_t     mid_after, mid_before;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     lbuf[2 + NGX_STREAM_IM_ID_MAX];
    u_char                     hbuf[2 + NGX_STREAM_IM_ID_MAX];

    after.data = (u_char *) f->sync->after;
    after.len = ngx_strlen(f->sync->after);

    before.data = (u_char *) f->sync->before;
    before.len = ngx_strlen(f->sync->before);

    limit = f->sync->limit;

    if (limit == 0 || limit > NGX_STREAM_IM_SYNC_MAX) {
        limit = NGX_STREAM_IM_SYNC_MAX;
    }

    if ((after.len
         && ngx_stream_im_msg_id_parse(after.data, after.len, &mid_after)
            != NGX_OK)
        || (before.len
            && ngx_stream_im_msg_id_parse(before.data, before.len,
                                          &mid_before)
               != NGX_OK))
    {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a bad Sync");

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "bad msg_id");
    }

    /* nothing is after the last id or before the first: Redis says so */

    if ((after.len && mid_after.ms == UINT64_MAX && mid_after.seq == UINT64_MAX)
        || (before.len && mid_before.ms == 0 && mid_before.seq == 0))
    {
        return ngx_stream_im_sync_done(ctx, f->id, NULL, 0);
    }

    /* exclusive bounds, "(" of Redis 6.2; a parsed id fits the buffers */

    if (after.len) {
        lo.data = lbuf;
        lo.len = ngx_sprintf(lbuf, "(%V", &after) - lbuf;

    } else {
        ngx_str_set(&lo, "-");
    }

    if (before.len) {
        hi.data = hbuf;
        hi.len = ngx_sprintf(hbuf, "(%V", &before) - hbuf;

    } else {
        ngx_str_set(&hi, "+");
    }

    /*
     * One Sync at a time, and none while half the send queue waits: each
     * costs Redis a page, which a client that does not read would only
     * make it read again and again.
     */

    if (ctx->syncing) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client sent a Sync while one is in flight");

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__RATE_LIMITED,
                                        "one Sync at a time");
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    if (ctx->out_bytes >= iscf->send_queue / 2) {
        return ngx_stream_im_sync_done(ctx, f->id, NULL, 1);
    }

    /* scroll-back: newest first */

    reverse = (before.len && after.len == 0);

    ngx_stream_im_session_ref(ctx, &ref, f->id);

    if (ngx_stream_im_router_range(ctx, &lo, &hi, reverse, limit,
                                   ngx_stream_im_synced, &ref)
        != NGX_OK)
    {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    ctx->syncing = 1;

    return NGX_OK;
}


/* the range script's reply: {more, entry, ...} */

static void
ngx_stream_im_synced(ngx_stream_im_ref_t *ref, redisReply *r)
{
    size_t                     i;
    ngx_str_t                  id, partial, last;
    ngx_stream_im_msg_t       *msg;
    ngx_stream_im_msg_id_t     mid;
    ngx_stream_im_session_t   *ctx;
    ngx_stream_im_srv_conf_t  *iscf;

    ctx = ngx_stream_im_session_lookup(ref);

    if (ctx == NULL) {
        return;
    }

    ctx->syncing = 0;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0
        || r->element[0]->type != REDIS_REPLY_INTEGER)
    {
        (void) ngx_stream_im_send_unavailable(ctx, ref->id);
        return;
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    ngx_str_null(&last);

    for (i = 1; i < r->elements; i++) {

        /* a page never fills the send queue: the client asks for more */

        if (ctx->out_bytes > iscf->send_queue / 2) {
            break;
        }

        if (ngx_stream_im_router_entry(r->element[i], &id, &mid, &partial)
            != NGX_OK)
        {
            continue;
        }

        msg = ngx_stream_im_router_message(ref->id, &id, &mid, &partial);
        if (msg == NULL) {
            return;
        }

        if (ngx_stream_im_queue(ctx, msg) != NGX_OK) {
            return;
        }

        ngx_stream_im_metrics_delivered(NGX_STREAM_IM_M_SYNC, 1);

        last = id;
    }

    (void) ngx_stream_im_sync_done(ctx, ref->id, &last,
                                   r->element[0]->integer
                                   || i < r->elements);
}
