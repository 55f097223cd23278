
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * Who is online here and how messages reach them.  The worker indexes
 * its authenticated sessions by user; each session has a route in Redis
 * (im:{u:<uid>}:routes, session -> this worker's channel), and a stored
 * message published on that channel is serialized once and queued on
 * every local session of its user.
 *
 * A session takes live messages only once it has caught up: after its
 * login, and again after every "ready" of the Redis link (a new link, or
 * routes that lapsed), it replays its inbox after the newest entry it
 * has.  Each ready starts a new epoch; a session is caught up when a
 * replay read in the current epoch, issued after its route was set in
 * that epoch, found nothing more.  Live messages
 * that come before are left to the replay, so the client sees inbox
 * order with no gap, however the link failed.
 *
 * After a ready the routes of all sessions are registered again, and the
 * routes of sessions that ended meanwhile removed, paced: a bounded
 * number of commands in flight, a bounded number of sessions per turn.
 */


#define NGX_STREAM_IM_REPLAY_PAGE   100
#define NGX_STREAM_IM_RESYNC_BATCH  256
#define NGX_STREAM_IM_RESYNC_FLIGHT 2048
#define NGX_STREAM_IM_RESYNC_WAIT   20
#define NGX_STREAM_IM_GONE_MAX      100000


typedef struct {
    ngx_str_node_t             sn;
    ngx_queue_t                sessions;
    ngx_queue_t                all;
} ngx_stream_im_user_t;


/* a session that ended: its route goes, surviving a broken link */

typedef struct {
    ngx_queue_t                queue;
    uint32_t                   serial;
    ngx_uint_t                 sent;        /* the LOGOUT is in flight */
    ngx_str_t                  args[2];     /* user, session id */
} ngx_stream_im_gone_t;


static ngx_stream_im_user_t *ngx_stream_im_router_user(ngx_str_t *name);
static ngx_int_t ngx_stream_im_router_route(ngx_stream_im_session_t *ctx,
    uint32_t id, time_t iat);
static void ngx_stream_im_router_logged_in(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_router_logout(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_router_forget(ngx_stream_im_session_t *ctx);
static ngx_int_t ngx_stream_im_router_gone_send(ngx_stream_im_gone_t *g);
static void ngx_stream_im_router_gone_done(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_router_remove(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_router_replay(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_router_resume(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_router_page(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_router_deliver(ngx_str_t *channel,
    ngx_str_t *payload);
static void ngx_stream_im_router_fanout(ngx_str_t *name,
    ngx_stream_im_msg_t *msg, ngx_stream_im_msg_id_t *pos,
    ngx_atomic_uint_t origin);
static void ngx_stream_im_router_kicked(ngx_str_t *code, ngx_str_t *user,
    ngx_str_t *data);
static void ngx_stream_im_router_ready(ngx_uint_t fresh);
static void ngx_stream_im_router_resync(ngx_event_t *ev);
static ngx_int_t ngx_stream_im_router_reregister(
    ngx_stream_im_session_t *ctx);


static ngx_rbtree_t          ngx_stream_im_users;
static ngx_rbtree_node_t     ngx_stream_im_users_sentinel;
static ngx_queue_t           ngx_stream_im_users_all;
static ngx_str_t             ngx_stream_im_sid_prefix;

static ngx_queue_t           ngx_stream_im_gone;
static ngx_uint_t            ngx_stream_im_gone_n;
static uint32_t              ngx_stream_im_gone_serial;

static uint32_t              ngx_stream_im_epoch;
static ngx_event_t           ngx_stream_im_resync_ev;
static ngx_queue_t          *ngx_stream_im_resync_next;  /* user, or NULL */


ngx_int_t
ngx_stream_im_router_init_worker(ngx_cycle_t *cycle)
{
    u_char  *p;

    ngx_rbtree_init(&ngx_stream_im_users, &ngx_stream_im_users_sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&ngx_stream_im_users_all);
    ngx_queue_init(&ngx_stream_im_gone);

    ngx_stream_im_resync_ev.handler = ngx_stream_im_router_resync;
    ngx_stream_im_resync_ev.data = &ngx_stream_im_timer_ident;
    ngx_stream_im_resync_ev.log = cycle->log;
    ngx_stream_im_resync_ev.cancelable = 1;

    if (ngx_stream_im_redis_on_message(ngx_stream_im_redis_channel(),
                                       ngx_stream_im_router_deliver)
        != NGX_OK
        || ngx_stream_im_redis_on_ready(ngx_stream_im_router_ready) != NGX_OK
        || ngx_stream_im_session_on_close(ngx_stream_im_router_logout)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_stream_im_session_on_writable(ngx_stream_im_router_resume);

    /* session ids are "<host>:<pid>:<connection number>:<device>" */

    p = ngx_pnalloc(cycle->pool, cycle->hostname.len + NGX_INT64_LEN + 2);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_stream_im_sid_prefix.data = p;
    p = ngx_sprintf(p, "%V:%P:", &cycle->hostname, ngx_pid);
    ngx_stream_im_sid_prefix.len = p - ngx_stream_im_sid_prefix.data;

    return NGX_OK;
}


ngx_str_t *
ngx_stream_im_router_session_id(ngx_stream_im_session_t *ctx, u_char *buf)
{
    static ngx_str_t  sid;

    sid.data = buf;
    sid.len = ngx_sprintf(buf, "%V%uA:%V", &ngx_stream_im_sid_prefix,
                          ctx->session->connection->number, &ctx->device)
              - buf;

    return &sid;
}


/* "im:{<kind>:<id>}:<suffix>": per-user keys share one cluster slot */

u_char *
ngx_stream_im_router_key(u_char *p, char *kind, ngx_str_t *id, char *suffix)
{
    return ngx_sprintf(p, "im:{%s:%V}:%s", kind, id, suffix);
}


/*
 * What a message must be, whoever sends it: one valid recipient, a valid
 * client_msg_id if any, a short type, and a read receipt's body a msg_id.
 */

ngx_int_t
ngx_stream_im_router_check(Im__Message *m, Im__Error__Code *code,
    char **reason)
{
    char                   *target;
    size_t                  len;
    ngx_stream_im_msg_id_t  mid;

    *code = IM__ERROR__CODE__BAD_FRAME;

    target = m->to[0] ? m->to : m->group;
    len = ngx_strlen(target);

    if ((m->to[0] == '\0') == (m->group[0] == '\0')
        || ngx_stream_im_valid_id((u_char *) target, len) != NGX_OK)
    {
        *reason = "need one valid \"to\" or \"group\"";
        return NGX_DECLINED;
    }

    len = ngx_strlen(m->client_msg_id);

    if (len && ngx_stream_im_valid_id((u_char *) m->client_msg_id, len)
               != NGX_OK)
    {
        *reason = "bad client_msg_id";
        return NGX_DECLINED;
    }

    len = ngx_strlen(m->type);

    if (len > NGX_STREAM_IM_TYPE_MAX) {
        *code = IM__ERROR__CODE__TOO_LARGE;
        *reason = "type too long";
        return NGX_DECLINED;
    }

    if (ngx_stream_im_utf8_valid((u_char *) m->type, len) != NGX_OK) {
        *reason = "type is not UTF-8";
        return NGX_DECLINED;
    }

    if (ngx_strcmp(m->type, "read") == 0
        && ngx_stream_im_msg_id_parse(m->body.data, m->body.len, &mid)
           != NGX_OK)
    {
        *reason = "a read receipt's body is a msg_id";
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_stream_im_user_t *
ngx_stream_im_router_user(ngx_str_t *name)
{
    return (ngx_stream_im_user_t *)
           ngx_str_rbtree_lookup(&ngx_stream_im_users, name,
                                 ngx_crc32_short(name->data, name->len));
}


/*
 * Auth succeeded: index the session, register its route and read its
 * device's cursor in one round trip; AuthOk goes out with the reply.
 */

ngx_int_t
ngx_stream_im_router_login(ngx_stream_im_session_t *ctx, uint32_t id,
    time_t iat)
{
    ngx_stream_im_user_t  *u;

    /* indexed still when the answer to an earlier try was lost */

    if (ctx->owner) {
        goto route;
    }

    u = ngx_stream_im_router_user(&ctx->user);

    if (u == NULL) {
        u = ngx_alloc(sizeof(ngx_stream_im_user_t) + ctx->user.len,
                      ngx_cycle->log);
        if (u == NULL) {
            return NGX_ERROR;
        }

        u->sn.str.data = (u_char *) (u + 1);
        u->sn.str.len = ctx->user.len;
        ngx_memcpy(u->sn.str.data, ctx->user.data, ctx->user.len);

        u->sn.node.key = ngx_crc32_short(u->sn.str.data, u->sn.str.len);

        ngx_rbtree_insert(&ngx_stream_im_users, &u->sn.node);
        ngx_queue_init(&u->sessions);
        ngx_queue_insert_tail(&ngx_stream_im_users_all, &u->all);
    }

    ngx_queue_insert_tail(&u->sessions, &ctx->queue);
    ctx->owner = u;

route:

    /* live messages until the first replay is done go to the replay */

    ctx->logging_in = 1;
    ctx->replaying = 1;

    if (ngx_stream_im_router_route(ctx, id, iat) != NGX_OK) {
        ctx->logging_in = 0;
        ctx->replaying = 0;
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_router_route(ngx_stream_im_session_t *ctx, uint32_t id,
    time_t iat)
{
    ngx_str_t                  keys[3], args[5];
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     key[NGX_STREAM_IM_KEY_MAX];
    u_char                     cursor[NGX_STREAM_IM_KEY_MAX];
    u_char                     revoked[NGX_STREAM_IM_KEY_MAX];
    u_char                     sid[NGX_STREAM_IM_SID_MAX];
    u_char                     max[NGX_INT_T_LEN];
    u_char                     issued[NGX_INT64_LEN + 3];

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    keys[0].data = key;
    keys[0].len = ngx_stream_im_router_key(key, "u", &ctx->user, "routes")
                  - key;

    keys[1].data = cursor;
    keys[1].len = ngx_stream_im_router_key(cursor, "u", &ctx->user, "cursor")
                  - cursor;

    keys[2].data = revoked;
    keys[2].len = ngx_stream_im_router_key(revoked, "u", &ctx->user,
                                           "revoked")
                  - revoked;

    args[0] = *ngx_stream_im_router_session_id(ctx, sid);
    args[1] = *ngx_stream_im_redis_channel();
    args[2] = ctx->device;
    args[3].data = max;
    args[3].len = ngx_sprintf(max, "%ui", iscf->max_sessions) - max;
    args[4].data = issued;
    args[4].len = ngx_sprintf(issued, "%T000", iat) - issued;

    ngx_stream_im_session_ref(ctx, &ref, id);

    ctx->route_epoch = ngx_stream_im_epoch;

    return ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_LOGIN, 3, keys, 5,
                                    args, ngx_stream_im_router_logged_in,
                                    &ref);
}


/*
 * The route of a session that is signed in, again after a ready; the
 * script tells watchers the user is online if no other route of it was.
 */

static ngx_int_t
ngx_stream_im_router_reregister(ngx_stream_im_session_t *ctx)
{
    ngx_str_t            key, args[3];
    ngx_stream_im_ref_t  ref;
    u_char               buf[NGX_STREAM_IM_KEY_MAX];
    u_char               sid[NGX_STREAM_IM_SID_MAX];

    key.data = buf;
    key.len = ngx_stream_im_router_key(buf, "u", &ctx->user, "routes") - buf;

    args[0] = *ngx_stream_im_router_session_id(ctx, sid);
    args[1] = *ngx_stream_im_redis_channel();
    args[2] = ctx->user;

    /* online again, if it had no route */

    ngx_memzero(&ref, sizeof(ngx_stream_im_ref_t));
    ref.arg = 1;

    if (ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_REROUTE, 1, &key, 3,
                                 args, ngx_stream_im_routes_changed, &ref)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctx->route_epoch = ngx_stream_im_epoch;

    return NGX_OK;
}


static void
ngx_stream_im_router_logged_in(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_session_t  *ctx;

    ctx = ngx_stream_im_session_lookup(ref);

    if (ctx == NULL) {
        return;
    }

    ctx->logging_in = 0;

    /*
     * the login script's reply: [1 or 2, cursor or "", [channels], ms],
     * [0, "", [channels]] when full, or [-1, ""] when the token was
     * revoked
     */

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2
        || r->element[0]->type != REDIS_REPLY_INTEGER
        || r->element[1]->type != REDIS_REPLY_STRING
        || (r->element[0]->integer >= 0 && r->elements < 3)
        || (r->element[0]->integer > 0
            && (r->elements != 4
                || r->element[3]->type != REDIS_REPLY_INTEGER)))
    {
        /*
         * The script may have run before the link broke: the session
         * stays indexed, so that its route goes when it closes, or is
         * set again when the client retries
         */

        ctx->replaying = 0;

        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAVAILABLE);

        (void) ngx_stream_im_send_unavailable(ctx, ref->id);
        return;
    }

    if (r->element[0]->integer == -1) {
        ngx_stream_im_router_remove(ctx);

        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "user \"%V\" sent a revoked token", &ctx->user);

        ngx_stream_im_metrics_login(IM__ERROR__CODE__UNAUTHENTICATED);

        if (ngx_stream_im_send_error(ctx, ref->id,
                                     IM__ERROR__CODE__UNAUTHENTICATED,
                                     "token revoked")
            == NGX_OK)
        {
            ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY,
                                "token revoked");
        }

        return;
    }

    /* routes of workers that died count until they are found dead */

    if (r->element[0]->integer >= 0) {
        ngx_stream_im_routes_verify(&ctx->user, r->element[2]);
    }

    if (r->element[0]->integer == 0) {
        ngx_stream_im_router_remove(ctx);

        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "user \"%V\" has too many sessions", &ctx->user);

        ngx_stream_im_metrics_login(IM__ERROR__CODE__FORBIDDEN);

        if (ngx_stream_im_send_error(ctx, ref->id,
                                     IM__ERROR__CODE__FORBIDDEN,
                                     "too many sessions")
            == NGX_OK)
        {
            ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY,
                                "too many sessions");
        }

        return;
    }

    if (ngx_stream_im_msg_id_parse((u_char *) r->element[1]->str,
                                   r->element[1]->len, &ctx->last)
        != NGX_OK)
    {
        ngx_memzero(&ctx->last, sizeof(ngx_stream_im_msg_id_t));
    }

    if (r->element[0]->integer == 1) {
        ngx_stream_im_routes_presence(&ctx->user, 1,
                                      (uint64_t) r->element[3]->integer);
    }

    ngx_stream_im_session_signed_in(ctx);

    if (ngx_stream_im_router_auth_ok(ctx, ref->id) != NGX_OK) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                  "user \"%V\" device \"%V\" signed in",
                  &ctx->user, &ctx->device);

    ngx_stream_im_router_replay(ctx);
}


/*
 * The session's own send is in its inbox: if it has everything before,
 * it has that too (it holds the SendAck), and the next live message
 * follows it without a gap.
 */

void
ngx_stream_im_router_sent(ngx_stream_im_session_t *ctx,
    ngx_stream_im_posted_t *posted)
{
    if (!posted->own || ctx->replaying
        || ctx->epoch != ngx_stream_im_epoch
        || posted->previous.ms != ctx->last.ms
        || posted->previous.seq != ctx->last.seq)
    {
        return;
    }

    ctx->last = posted->cursor;
}


/* AuthOk, after a login or a refresh: the same session id */

ngx_int_t
ngx_stream_im_router_auth_ok(ngx_stream_im_session_t *ctx, uint32_t id)
{
    Im__Frame                  f;
    Im__AuthOk                 ok;
    ngx_str_t                 *sid;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     buf[NGX_STREAM_IM_SID_MAX + 1];

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    sid = ngx_stream_im_router_session_id(ctx, buf);
    sid->data[sid->len] = '\0';

    im__frame__init(&f);
    im__auth_ok__init(&ok);

    ok.user = (char *) ctx->user.data;
    ok.session = (char *) sid->data;
    ok.ping_interval_ms = iscf->ping_interval;
    ok.max_frame = iscf->max_frame;
    ok.expires_at_ms = (uint64_t) ctx->expires * 1000;

    f.id = id;
    f.body_case = IM__FRAME__BODY_AUTH_OK;
    f.auth_ok = &ok;

    return ngx_stream_im_send_frame(ctx, &f);
}


static void
ngx_stream_im_router_logout(ngx_stream_im_session_t *ctx)
{
    if (ctx->owner == NULL) {
        return;
    }

    ngx_stream_im_router_remove(ctx);

    /* also while logging in: the login script may have added the route */

    ngx_stream_im_router_forget(ctx);
}


/*
 * The route of an ended session must go, or its user shows online and
 * its slot counts against im_max_sessions_per_user: the LOGOUT is kept
 * until Redis answered it, and sent again after a broken link.
 */

static void
ngx_stream_im_router_forget(ngx_stream_im_session_t *ctx)
{
    ngx_str_t              args[2];
    ngx_stream_im_gone_t  *g;
    u_char                 sid[NGX_STREAM_IM_SID_MAX];

    args[0] = ctx->user;
    args[1] = *ngx_stream_im_router_session_id(ctx, sid);

    if (ngx_stream_im_gone_n == NGX_STREAM_IM_GONE_MAX) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "too many routes to remove, \"%V\" expires with "
                      "this worker", &args[1]);
        return;
    }

    g = ngx_alloc(sizeof(ngx_stream_im_gone_t) + args[0].len + args[1].len,
                  ngx_cycle->log);
    if (g == NULL) {
        return;
    }

    g->args[0].data = (u_char *) (g + 1);
    g->args[0].len = args[0].len;
    g->args[1].data = ngx_cpymem(g->args[0].data, args[0].data, args[0].len);
    g->args[1].len = args[1].len;
    ngx_memcpy(g->args[1].data, args[1].data, args[1].len);

    g->serial = ++ngx_stream_im_gone_serial;
    g->sent = 0;

    ngx_queue_insert_tail(&ngx_stream_im_gone, &g->queue);
    ngx_stream_im_gone_n++;

    if (ngx_stream_im_router_gone_send(g) == NGX_OK
        || !ngx_stream_im_redis_up())
    {
        /* or the link is away: the resync after its ready sends it */
        return;
    }

    /* the link is up but its buffer is full: try again shortly */

    if (!ngx_stream_im_resync_ev.timer_set
        && !ngx_stream_im_resync_ev.posted)
    {
        ngx_add_timer(&ngx_stream_im_resync_ev, NGX_STREAM_IM_RESYNC_WAIT);
    }
}


static ngx_int_t
ngx_stream_im_router_gone_send(ngx_stream_im_gone_t *g)
{
    ngx_str_t            keys[2], args[2];
    ngx_stream_im_ref_t  ref;
    u_char               routes[NGX_STREAM_IM_KEY_MAX];
    u_char               seen[NGX_STREAM_IM_KEY_MAX];

    keys[0].data = routes;
    keys[0].len = ngx_stream_im_router_key(routes, "u", &g->args[0],
                                           "routes")
                  - routes;
    keys[1].data = seen;
    keys[1].len = ngx_stream_im_router_key(seen, "u", &g->args[0], "seen")
                  - seen;

    args[0] = g->args[1];
    args[1] = g->args[0];

    ngx_memzero(&ref, sizeof(ngx_stream_im_ref_t));
    ref.arg = g->serial;

    if (ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_LOGOUT, 2, keys, 2,
                                 args, ngx_stream_im_router_gone_done, &ref)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    g->sent = 1;

    return NGX_OK;
}


static void
ngx_stream_im_router_gone_done(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_queue_t           *q;
    ngx_stream_im_gone_t  *g;

    /* replies come in order: the entry is at or near the head */

    for (q = ngx_queue_head(&ngx_stream_im_gone);
         q != ngx_queue_sentinel(&ngx_stream_im_gone);
         q = ngx_queue_next(q))
    {
        g = ngx_queue_data(q, ngx_stream_im_gone_t, queue);

        if (g->serial != ref->arg) {
            continue;
        }

        if (r == NULL) {
            g->sent = 0;
            return;
        }

        if (r->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "redis refused a logout: %s", r->str);

        } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2
                   && r->element[0]->type == REDIS_REPLY_INTEGER
                   && r->element[0]->integer == 0)
        {
            /* routes left: some may be of workers that died */

            ngx_stream_im_routes_verify(&g->args[0], r->element[1]);

        } else {
            /* {ms, user}: the last route went */

            ngx_stream_im_routes_changed(NULL, r);
        }

        ngx_queue_remove(&g->queue);
        ngx_stream_im_gone_n--;
        ngx_free(g);
        return;
    }
}


static void
ngx_stream_im_router_remove(ngx_stream_im_session_t *ctx)
{
    ngx_stream_im_user_t  *u;

    u = ctx->owner;

    if (u == NULL) {
        return;
    }

    ngx_queue_remove(&ctx->queue);
    ctx->owner = NULL;

    if (!ngx_queue_empty(&u->sessions)) {
        return;
    }

    if (ngx_stream_im_resync_next == &u->all) {
        ngx_stream_im_resync_next = ngx_queue_next(&u->all);
    }

    ngx_rbtree_delete(&ngx_stream_im_users, &u->sn.node);
    ngx_queue_remove(&u->all);
    ngx_free(u);
}


/*
 * Entries of the inbox between lo and hi ("-", "+" or "(<id>"), at most
 * count and, past the first, as many bytes as half the send queue has
 * room for.  Sized by bytes, not entries, so a page of large messages
 * costs Redis what the session can take.
 */

ngx_int_t
ngx_stream_im_router_range(ngx_stream_im_session_t *ctx, ngx_str_t *lo,
    ngx_str_t *hi, ngx_uint_t reverse, ngx_uint_t count,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref)
{
    size_t                     room;
    ngx_stream_im_srv_conf_t  *iscf;

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    /* what the send queue has room for; the script gives at least one */

    room = (ctx->out_bytes < iscf->send_queue / 2)
           ? iscf->send_queue / 2 - ctx->out_bytes : 0;

    return ngx_stream_im_router_inbox(&ctx->user, lo, hi, reverse, count,
                                      room, handler, ref);
}


/* the script's reply is {more, entry, ...} */

ngx_int_t
ngx_stream_im_router_inbox(ngx_str_t *user, ngx_str_t *lo, ngx_str_t *hi,
    ngx_uint_t reverse, ngx_uint_t count, size_t bytes,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref)
{
    ngx_str_t  key, args[5];
    u_char     buf[NGX_STREAM_IM_KEY_MAX];
    u_char     num[NGX_INT_T_LEN];
    u_char     size[NGX_SIZE_T_LEN];

    key.data = buf;
    key.len = ngx_stream_im_router_key(buf, "u", user, "inbox") - buf;

    args[0] = *lo;
    args[1] = *hi;
    args[2].data = num;
    args[2].len = ngx_sprintf(num, "%ui", count) - num;
    args[3].data = size;
    args[3].len = ngx_sprintf(size, "%uz", bytes) - size;

    if (reverse) {
        ngx_str_set(&args[4], "1");

    } else {
        ngx_str_set(&args[4], "0");
    }

    return ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_RANGE, 1, &key, 5,
                                    args, handler, ref);
}


/* one page of the inbox after the newest entry this session has */

static void
ngx_stream_im_router_replay(ngx_stream_im_session_t *ctx)
{
    ngx_str_t             lo, hi;
    ngx_stream_im_ref_t   ref;
    u_char                start[2 + 2 * NGX_INT64_LEN];

    ctx->replaying = 1;
    ctx->replay_again = 0;
    ctx->replay_paused = 0;

    if (ctx->last.ms || ctx->last.seq) {
        lo.data = start;
        lo.len = ngx_sprintf(start, "(%uL-%uL", ctx->last.ms, ctx->last.seq)
                 - start;

    } else {
        ngx_str_set(&lo, "-");
    }

    ngx_str_set(&hi, "+");

    if (ctx->last.ms == UINT64_MAX && ctx->last.seq == UINT64_MAX) {

        /* a cursor at the end of the id space: nothing can come after */

        ctx->replaying = 0;

        if (ctx->route_epoch == ngx_stream_im_epoch) {
            ctx->epoch = ngx_stream_im_epoch;
        }

        return;
    }

    /*
     * The epoch this read belongs to, 0 if the session's route was not
     * set in it yet: caught up only if it is still current when answered.
     */

    ngx_stream_im_session_ref(ctx, &ref, 0);
    ref.arg = (ctx->route_epoch == ngx_stream_im_epoch)
              ? ngx_stream_im_epoch : 0;

    if (ngx_stream_im_router_range(ctx, &lo, &hi, 0,
                                   NGX_STREAM_IM_REPLAY_PAGE,
                                   ngx_stream_im_router_page, &ref)
        != NGX_OK)
    {
        /* Redis is away: the resync after its ready does this */
        ctx->replaying = 0;
    }
}


static void
ngx_stream_im_router_resume(ngx_stream_im_session_t *ctx)
{
    if (ctx->replay_paused) {
        ngx_stream_im_router_replay(ctx);
    }
}


static void
ngx_stream_im_router_page(ngx_stream_im_ref_t *ref, redisReply *r)
{
    size_t                     i;
    ngx_str_t                  id, partial;
    ngx_stream_im_msg_t       *msg;
    ngx_stream_im_msg_id_t     mid;
    ngx_stream_im_session_t   *ctx;
    ngx_stream_im_srv_conf_t  *iscf;

    ctx = ngx_stream_im_session_lookup(ref);

    if (ctx == NULL) {
        return;
    }

    ctx->replaying = 0;

    if (r == NULL) {

        /* the link broke: the resync after its ready replays */
        return;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0
        || r->element[0]->type != REDIS_REPLY_INTEGER)
    {
        /* the next live message for the session tries again */

        ngx_log_error(NGX_LOG_ERR, ctx->session->connection->log, 0,
                      "redis refused a replay: %s",
                      r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        return;
    }

    if (ctx->state != NGX_STREAM_IM_OPEN) {
        return;
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    for (i = 1; i < r->elements; i++) {

        /*
         * a replay never fills the send queue: it waits for the client
         * to read, then goes on after the last entry queued
         */

        if (ctx->out_bytes > iscf->send_queue / 2) {
            ctx->replaying = 1;
            ctx->replay_paused = 1;
            return;
        }

        if (ngx_stream_im_router_entry(r->element[i], &id, &mid, &partial)
            != NGX_OK)
        {
            continue;
        }

        msg = ngx_stream_im_router_message(0, &id, &mid, &partial);
        if (msg == NULL) {
            return;
        }

        if (ngx_stream_im_queue(ctx, msg) != NGX_OK) {
            return;
        }

        ngx_stream_im_metrics_delivered(NGX_STREAM_IM_M_REPLAY, 1);

        ctx->last = mid;
    }

    if (ref->arg == 0 && !ctx->replay_again) {

        /* the route is not set in this epoch: the resync replays then */
        return;
    }

    if (r->element[0]->integer || ctx->replay_again
        || ref->arg != ngx_stream_im_epoch)
    {
        ngx_stream_im_router_replay(ctx);
        return;
    }

    /* nothing more in this epoch: live messages may come directly */

    ctx->epoch = ref->arg;
}


ngx_stream_im_msg_t *
ngx_stream_im_router_message(uint32_t id, ngx_str_t *cursor,
    ngx_stream_im_msg_id_t *pos, ngx_str_t *partial)
{
    u_char               *p;
    uint64_t              ts;
    ngx_str_t             msg_id;
    ngx_stream_im_msg_t  *msg;

    /* an entry stored before cursors existed: its stream id is both */

    if (ngx_stream_im_entry_has_id(partial) == NGX_OK) {
        ngx_str_null(&msg_id);
        ts = 0;

    } else {
        msg_id = *cursor;
        ts = pos->ms;
    }

    msg = ngx_stream_im_msg_alloc(NGX_STREAM_IM_WS_HEADER_MAX
                                  + ngx_stream_im_message_size(id, &msg_id,
                                                               ts, cursor,
                                                               partial),
                                  ngx_cycle->log);
    if (msg == NULL) {
        return NULL;
    }

    p = ngx_stream_im_message_write(msg->data, id, &msg_id, ts, cursor,
                                    partial);
    msg->len = p - msg->data;

    return msg;
}


/* a stream entry: [id, [field, value, ...]] with the message in "m" */

ngx_int_t
ngx_stream_im_router_entry(redisReply *e, ngx_str_t *id,
    ngx_stream_im_msg_id_t *mid, ngx_str_t *partial)
{
    size_t       j;
    redisReply  *f;

    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2
        || e->element[0]->type != REDIS_REPLY_STRING
        || e->element[1]->type != REDIS_REPLY_ARRAY)
    {
        return NGX_ERROR;
    }

    id->data = (u_char *) e->element[0]->str;
    id->len = e->element[0]->len;

    if (ngx_stream_im_msg_id_parse(id->data, id->len, mid) != NGX_OK) {
        return NGX_ERROR;
    }

    f = e->element[1];

    for (j = 0; j + 1 < f->elements; j += 2) {
        if (f->element[j]->type == REDIS_REPLY_STRING
            && f->element[j]->len == 1 && f->element[j]->str[0] == 'm'
            && f->element[j + 1]->type == REDIS_REPLY_STRING)
        {
            partial->data = (u_char *) f->element[j + 1]->str;
            partial->len = f->element[j + 1]->len;
            return NGX_OK;
        }
    }

    return NGX_ERROR;
}


/*
 * A message on this worker's channel (see ngx_stream_im_scripts.c): a
 * stored one is written once per user, with the user's cursor, and
 * queued on every local session of that user.
 */

static void
ngx_stream_im_router_deliver(ngx_str_t *channel, ngx_str_t *payload)
{
    u_char                   *p, *q, *end, *nl[3];
    ngx_int_t                 n;
    ngx_str_t                 id, users, data, user, cursor, prev;
    ngx_uint_t                i;
    ngx_atomic_uint_t         origin;
    ngx_stream_im_msg_t      *msg;
    ngx_stream_im_msg_id_t    pos[2];     /* previous, this */

    p = payload->data;
    end = p + payload->len;

    for (i = 0; i < 3; i++) {
        nl[i] = ngx_strlchr(p, end, '\n');

        if (nl[i] == NULL || payload->len == 0) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "malformed message on route channel");
            return;
        }

        p = nl[i] + 1;
    }

    id.data = payload->data + 1;
    id.len = nl[0] - id.data;

    origin = 0;
    p = nl[0] + 1;

    if ((size_t) (nl[1] - p) > ngx_stream_im_sid_prefix.len
        && ngx_strncmp(p, ngx_stream_im_sid_prefix.data,
                       ngx_stream_im_sid_prefix.len)
           == 0)
    {
        p += ngx_stream_im_sid_prefix.len;
        q = ngx_strlchr(p, nl[1], ':');
        n = ngx_atoi(p, (q ? q : nl[1]) - p);
        origin = (n == NGX_ERROR) ? 0 : (ngx_atomic_uint_t) n;
    }

    users.data = nl[1] + 1;
    users.len = nl[2] - users.data;

    data.data = nl[2] + 1;
    data.len = end - data.data;

    switch (payload->data[0]) {

    case 'm':

        /* "<user> <previous> <cursor> ...": a frame each */

        p = users.data;
        end = users.data + users.len;

        while (p < end) {
            user.data = p;
            p = ngx_strlchr(p, end, ' ');

            if (p == NULL) {
                break;
            }

            user.len = p - user.data;
            prev.data = ++p;
            p = ngx_strlchr(p, end, ' ');

            if (p == NULL) {
                break;
            }

            prev.len = p - prev.data;
            cursor.data = ++p;

            while (p < end && *p != ' ') {
                p++;
            }

            cursor.len = p - cursor.data;
            p++;

            if (ngx_stream_im_msg_id_parse(cursor.data, cursor.len, &pos[1])
                != NGX_OK
                || ngx_stream_im_msg_id_parse(prev.data, prev.len, &pos[0])
                   != NGX_OK)
            {
                break;
            }

            if (ngx_stream_im_router_user(&user) == NULL) {
                continue;
            }

            msg = ngx_stream_im_router_message(0, &cursor, &pos[1], &data);
            if (msg == NULL) {
                return;
            }

            msg->refs++;
            ngx_stream_im_router_fanout(&user, msg, pos, origin);
            ngx_stream_im_msg_release(msg);
        }

        return;

    case 't':
        msg = ngx_stream_im_msg_alloc(NGX_STREAM_IM_WS_HEADER_MAX + data.len,
                                      ngx_cycle->log);
        if (msg == NULL) {
            return;
        }

        p = ngx_stream_im_ws_header(msg->data, NGX_STREAM_IM_WS_BINARY,
                                    data.len);
        p = ngx_cpymem(p, data.data, data.len);
        msg->len = p - msg->data;
        break;

    case 'x':
        ngx_stream_im_router_kicked(&id, &users, &data);
        return;

    default:
        return;
    }

    /* keep the message alive while it is queued on the sessions */
    msg->refs++;

    p = users.data;
    end = users.data + users.len;

    while (p < end) {
        user.data = p;

        while (p < end && *p != ' ') {
            p++;
        }

        user.len = p - user.data;
        p++;

        ngx_stream_im_router_fanout(&user, msg, NULL, origin);
    }

    ngx_stream_im_msg_release(msg);
}


static void
ngx_stream_im_router_fanout(ngx_str_t *name, ngx_stream_im_msg_t *msg,
    ngx_stream_im_msg_id_t *pos, ngx_atomic_uint_t origin)
{
    ngx_queue_t              *q;
    ngx_stream_im_user_t     *u;
    ngx_stream_im_session_t  *ctx;

    u = ngx_stream_im_router_user(name);

    if (u == NULL) {
        return;
    }

    for (q = ngx_queue_head(&u->sessions);
         q != ngx_queue_sentinel(&u->sessions);
         q = ngx_queue_next(q))
    {
        ctx = ngx_queue_data(q, ngx_stream_im_session_t, queue);

        if (ctx->state != NGX_STREAM_IM_OPEN || !ctx->authenticated
            || ctx->session->connection->number == origin)
        {
            continue;
        }

        if (pos == NULL) {

            /* typing: live only, no order to keep */

            (void) ngx_stream_im_queue(ctx, msg);
            continue;
        }

        if (ctx->replaying || ctx->epoch != ngx_stream_im_epoch) {
            ctx->replay_again = 1;

            /* a catch-up that stopped on an error starts again here */

            if (!ctx->replaying
                && ctx->route_epoch == ngx_stream_im_epoch)
            {
                ngx_stream_im_router_replay(ctx);
            }

            continue;
        }

        /* the inbox order: what the replay or an earlier live one sent */

        if (pos[1].ms < ctx->last.ms
            || (pos[1].ms == ctx->last.ms && pos[1].seq <= ctx->last.seq))
        {
            continue;
        }

        /*
         * Workers publish what they stored in any order: one that does
         * not follow what the session has leaves a gap the replay fills.
         */

        if (pos[0].ms != ctx->last.ms || pos[0].seq != ctx->last.seq) {
            ctx->replay_again = 1;

            if (!ctx->replaying) {
                ngx_stream_im_router_replay(ctx);
            }

            continue;
        }

        if (ngx_stream_im_queue(ctx, msg) != NGX_OK) {
            continue;
        }

        ngx_stream_im_metrics_delivered(NGX_STREAM_IM_M_LIVE, 1);

        ctx->last = pos[1];
    }
}


/*
 * A kick on this worker's channel, from the backend's disconnect or
 * revoke: "x<code>", the user and "<device or empty>\n<reason>".
 */

static void
ngx_stream_im_router_kicked(ngx_str_t *code, ngx_str_t *user,
    ngx_str_t *data)
{
    u_char     *nl;
    ngx_int_t   n;
    ngx_str_t   device, reason;

    nl = ngx_strlchr(data->data, data->data + data->len, '\n');
    n = ngx_atoi(code->data, code->len);

    if (nl == NULL || (n != IM__ERROR__CODE__UNAUTHENTICATED
                       && n != IM__ERROR__CODE__FORBIDDEN))
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "malformed kick on route channel");
        return;
    }

    device.data = data->data;
    device.len = nl - data->data;
    reason.data = nl + 1;
    reason.len = data->data + data->len - reason.data;

    ngx_stream_im_router_kick(user, &device, (Im__Error__Code) n, &reason);
}


/* every local session of user (on device, if not empty): Error, close */

void
ngx_stream_im_router_kick(ngx_str_t *user, ngx_str_t *device,
    Im__Error__Code code, ngx_str_t *reason)
{
    size_t                    len;
    ngx_queue_t              *q;
    ngx_stream_im_user_t     *u;
    ngx_stream_im_session_t  *ctx;
    u_char                    text[NGX_STREAM_IM_WS_CONTROL_MAX];

    u = ngx_stream_im_router_user(user);

    if (u == NULL) {
        return;
    }

    /* the backend keeps reasons short, as a close frame wants them */

    len = ngx_min(reason->len, NGX_STREAM_IM_WS_CONTROL_MAX - 3);
    ngx_memcpy(text, reason->data, len);
    text[len] = '\0';

    if (ngx_stream_im_utf8_valid(text, len) != NGX_OK) {
        ngx_cpystrn(text, (u_char *) "disconnected", sizeof(text));
    }

    /* closing a session does not end it now: it stays in the queue */

    for (q = ngx_queue_head(&u->sessions);
         q != ngx_queue_sentinel(&u->sessions);
         q = ngx_queue_next(q))
    {
        ctx = ngx_queue_data(q, ngx_stream_im_session_t, queue);

        if (ctx->state != NGX_STREAM_IM_OPEN || ctx->closed
            || (device->len
                && (device->len != ctx->device.len
                    || ngx_memcmp(device->data, ctx->device.data,
                                  device->len)
                       != 0)))
        {
            continue;
        }

        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "user \"%V\" device \"%V\" disconnected by the "
                      "backend: %s", &ctx->user, &ctx->device, text);

        if (ngx_stream_im_send_error(ctx, 0, code, (char *) text)
            == NGX_OK)
        {
            ngx_stream_im_close(ctx, NGX_STREAM_IM_CLOSE_POLICY,
                                (char *) text);
        }
    }
}


/*
 * The Redis link is ready, new or after the worker's routes lapsed:
 * routes may be gone and messages were published while nobody listened.
 * A new epoch starts, and every session registers again and catches up.
 */

static void
ngx_stream_im_router_ready(ngx_uint_t fresh)
{
    ngx_stream_im_epoch++;

    ngx_stream_im_resync_next = ngx_queue_head(&ngx_stream_im_users_all);

    /* /health: not current until every route is set again */

    ngx_stream_im_metrics_routes(0);

    if (ngx_stream_im_resync_ev.timer_set) {
        ngx_del_timer(&ngx_stream_im_resync_ev);
    }

    ngx_post_event(&ngx_stream_im_resync_ev, &ngx_posted_events);
}


static void
ngx_stream_im_router_resync(ngx_event_t *ev)
{
    ngx_uint_t                n;
    ngx_queue_t              *q, *uq;
    ngx_stream_im_gone_t     *g;
    ngx_stream_im_user_t     *u;
    ngx_stream_im_session_t  *ctx;

    if (!ngx_stream_im_redis_up()) {

        /* the link broke again: its next ready starts over */
        return;
    }

    n = 0;

    /* first the routes of sessions that ended while the link was away */

    for (q = ngx_queue_head(&ngx_stream_im_gone);
         q != ngx_queue_sentinel(&ngx_stream_im_gone);
         q = ngx_queue_next(q))
    {
        g = ngx_queue_data(q, ngx_stream_im_gone_t, queue);

        if (g->sent) {
            continue;
        }

        if (n == NGX_STREAM_IM_RESYNC_BATCH
            || ngx_stream_im_redis_pending() >= NGX_STREAM_IM_RESYNC_FLIGHT)
        {
            goto again;
        }

        if (ngx_stream_im_router_gone_send(g) != NGX_OK) {
            goto again;
        }

        n++;
    }

    while (ngx_stream_im_resync_next
           && ngx_stream_im_resync_next
              != ngx_queue_sentinel(&ngx_stream_im_users_all))
    {
        if (n >= NGX_STREAM_IM_RESYNC_BATCH
            || ngx_stream_im_redis_pending() >= NGX_STREAM_IM_RESYNC_FLIGHT)
        {
            goto again;
        }

        uq = ngx_stream_im_resync_next;
        u = ngx_queue_data(uq, ngx_stream_im_user_t, all);

        for (q = ngx_queue_head(&u->sessions);
             q != ngx_queue_sentinel(&u->sessions);
             q = ngx_queue_next(q))
        {
            ctx = ngx_queue_data(q, ngx_stream_im_session_t, queue);

            n++;

            /* a login in flight registers its route itself */

            if (!ctx->authenticated || ctx->logging_in) {
                continue;
            }

            if (ngx_stream_im_router_reregister(ctx) != NGX_OK) {
                goto again;
            }

            /*
             * A replay in flight may have been read before the route was
             * set again: it reads once more when it is answered.
             */

            if (!ctx->replaying || ctx->replay_paused) {
                ngx_stream_im_router_replay(ctx);

            } else {
                ctx->replay_again = 1;
            }
        }

        ngx_stream_im_resync_next = ngx_queue_next(uq);
    }

    ngx_stream_im_resync_next = NULL;

    ngx_stream_im_metrics_routes(1);

    return;

again:

    /* the rest in a later turn, once the replies have caught up */

    if (ngx_stream_im_redis_pending() >= NGX_STREAM_IM_RESYNC_FLIGHT) {
        ngx_add_timer(ev, NGX_STREAM_IM_RESYNC_WAIT);

    } else {
        ngx_post_event(ev, &ngx_posted_next_events);
    }
}
