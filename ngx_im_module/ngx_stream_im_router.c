
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
 * every local session of its user.  A session first replays its inbox
 * after its cursor; live messages that race with the replay are left to
 * the replay, so the client sees inbox order with no gap.
 */


#define NGX_STREAM_IM_REPLAY_PAGE   100


typedef struct {
    ngx_str_node_t             sn;
    ngx_queue_t                sessions;
    ngx_queue_t                all;
} ngx_stream_im_user_t;


/* a session that ended while Redis was away: its route goes later */

typedef struct ngx_stream_im_gone_s  ngx_stream_im_gone_t;

struct ngx_stream_im_gone_s {
    ngx_stream_im_gone_t      *next;
    ngx_str_t                  args[2];     /* user, session id */
};


#define NGX_STREAM_IM_GONE_MAX      100000


static ngx_stream_im_user_t *ngx_stream_im_router_user(ngx_str_t *name);
static void ngx_stream_im_router_fanout(ngx_str_t *name,
    ngx_stream_im_msg_t *msg, ngx_stream_im_msg_id_t *mid,
    ngx_atomic_uint_t origin);
static ngx_int_t ngx_stream_im_router_route(ngx_stream_im_session_t *ctx,
    ngx_stream_im_redis_handler_pt handler, uint32_t id);
static void ngx_stream_im_router_logged_in(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r);
static void ngx_stream_im_router_page(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r);
static void ngx_stream_im_router_remove(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_router_forget(ngx_stream_im_session_t *ctx);


static ngx_rbtree_t          ngx_stream_im_users;
static ngx_rbtree_node_t     ngx_stream_im_users_sentinel;
static ngx_queue_t           ngx_stream_im_users_all;
static ngx_str_t             ngx_stream_im_sid_prefix;
static ngx_stream_im_gone_t *ngx_stream_im_gone;
static ngx_uint_t            ngx_stream_im_gone_n;


ngx_int_t
ngx_stream_im_router_init_worker(ngx_cycle_t *cycle)
{
    u_char  *p;

    ngx_rbtree_init(&ngx_stream_im_users, &ngx_stream_im_users_sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&ngx_stream_im_users_all);

    /* session ids are "<host>:<pid>:<connection number>" */

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
    sid.len = ngx_sprintf(buf, "%V%uA", &ngx_stream_im_sid_prefix,
                          ctx->session->connection->number)
              - buf;

    return &sid;
}


/* "im:{<kind>:<id>}:<suffix>": per-user keys share one cluster slot */

u_char *
ngx_stream_im_router_key(u_char *p, char *kind, ngx_str_t *id, char *suffix)
{
    return ngx_sprintf(p, "im:{%s:%V}:%s", kind, id, suffix);
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
ngx_stream_im_router_login(ngx_stream_im_session_t *ctx, uint32_t id)
{
    ngx_stream_im_user_t  *u;

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

    /* live messages until the first replay is done go to the replay */

    ctx->logging_in = 1;
    ctx->replaying = 1;

    if (ngx_stream_im_router_route(ctx, ngx_stream_im_router_logged_in, id)
        != NGX_OK)
    {
        ngx_stream_im_router_remove(ctx);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_router_route(ngx_stream_im_session_t *ctx,
    ngx_stream_im_redis_handler_pt handler, uint32_t id)
{
    ngx_str_t                  keys[2], args[5];
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     key[NGX_STREAM_IM_KEY_MAX];
    u_char                     cursor[NGX_STREAM_IM_KEY_MAX];
    u_char                     sid[NGX_STREAM_IM_SID_MAX];
    u_char                     max[NGX_INT_T_LEN];

    keys[0].data = key;
    keys[0].len = ngx_stream_im_router_key(key, "u", &ctx->user, "routes")
                  - key;

    if (handler == NULL) {

        /* re-registration after Redis came back */

        ngx_str_set(&args[0], "HSET");
        args[1] = keys[0];
        args[2] = *ngx_stream_im_router_session_id(ctx, sid);
        args[3] = *ngx_stream_im_redis_channel();

        return ngx_stream_im_redis_command(4, args, NULL, NULL);
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    keys[1].data = cursor;
    keys[1].len = ngx_stream_im_router_key(cursor, "u", &ctx->user, "cursor")
                  - cursor;

    args[0] = *ngx_stream_im_router_session_id(ctx, sid);
    args[1] = *ngx_stream_im_redis_channel();
    args[2] = ctx->device;
    args[3].data = max;
    args[3].len = ngx_sprintf(max, "%ui", iscf->max_sessions) - max;
    args[4] = ctx->user;

    ngx_stream_im_session_ref(ctx, &ref, id);

    return ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_LOGIN, 2, keys, 5,
                                    args, handler, &ref);
}


static void
ngx_stream_im_router_logged_in(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r)
{
    Im__Frame                  f;
    Im__AuthOk                 ok;
    ngx_str_t                 *sid;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     buf[NGX_STREAM_IM_SID_MAX + 1];

    ctx->logging_in = 0;

    /* the login script's reply: [1, cursor or ""] or [0, ""] when full */

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2
        || r->element[0]->type != REDIS_REPLY_INTEGER
        || r->element[1]->type != REDIS_REPLY_STRING)
    {
        /* the script may have run before the link broke */

        ngx_stream_im_router_forget(ctx);
        ngx_stream_im_router_remove(ctx);

        (void) ngx_stream_im_send_unavailable(ctx, ref->id);
        return;
    }

    if (r->element[0]->integer == 0) {
        ngx_stream_im_router_remove(ctx);

        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "user \"%V\" has too many sessions", &ctx->user);

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

    ngx_stream_im_session_signed_in(ctx);

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    sid = ngx_stream_im_router_session_id(ctx, buf);
    sid->data[sid->len] = '\0';

    im__frame__init(&f);
    im__auth_ok__init(&ok);

    ok.user = (char *) ctx->user.data;
    ok.session = (char *) sid->data;
    ok.ping_interval_ms = iscf->ping_interval;
    ok.max_frame = iscf->max_frame;

    f.id = ref->id;
    f.body_case = IM__FRAME__BODY_AUTH_OK;
    f.auth_ok = &ok;

    if (ngx_stream_im_send_frame(ctx, &f) != NGX_OK) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                  "user \"%V\" device \"%V\" signed in",
                  &ctx->user, &ctx->device);

    ngx_stream_im_router_replay(ctx);
}


void
ngx_stream_im_router_logout(ngx_stream_im_session_t *ctx)
{
    if (ctx->owner == NULL) {
        return;
    }

    ngx_stream_im_router_remove(ctx);

    /* also while logging in: the login script may have added the route */

    ngx_stream_im_router_forget(ctx);
}


static void
ngx_stream_im_router_forget(ngx_stream_im_session_t *ctx)
{
    ngx_str_t              args[2];
    ngx_stream_im_gone_t  *g;
    u_char                 sid[NGX_STREAM_IM_SID_MAX];

    args[0] = ctx->user;
    args[1] = *ngx_stream_im_router_session_id(ctx, sid);

    if (ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_LOGOUT, 0, NULL, 2,
                                 args, NULL, NULL)
        == NGX_OK)
    {
        return;
    }

    /* Redis is away: remove the route when it is back */

    if (ngx_stream_im_gone_n == NGX_STREAM_IM_GONE_MAX) {
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

    g->next = ngx_stream_im_gone;
    ngx_stream_im_gone = g;
    ngx_stream_im_gone_n++;
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

    if (ngx_queue_empty(&u->sessions)) {
        ngx_rbtree_delete(&ngx_stream_im_users, &u->sn.node);
        ngx_queue_remove(&u->all);
        ngx_free(u);
    }
}


/* one page of the inbox after the newest entry this session has */

void
ngx_stream_im_router_replay(ngx_stream_im_session_t *ctx)
{
    u_char               *p;
    ngx_str_t             argv[6];
    ngx_stream_im_ref_t   ref;
    u_char                key[NGX_STREAM_IM_KEY_MAX];
    u_char                start[2 + 2 * NGX_INT64_LEN];
    u_char                count[NGX_INT_T_LEN];

    ctx->replaying = 1;
    ctx->replay_again = 0;
    ctx->replay_paused = 0;

    p = ngx_stream_im_router_key(key, "u", &ctx->user, "inbox");

    ngx_str_set(&argv[0], "XRANGE");
    argv[1].data = key;
    argv[1].len = p - key;

    if (ctx->last.ms || ctx->last.seq) {
        argv[2].data = start;
        argv[2].len = ngx_sprintf(start, "(%uL-%uL", ctx->last.ms,
                                  ctx->last.seq)
                      - start;

    } else {
        ngx_str_set(&argv[2], "-");
    }

    ngx_str_set(&argv[3], "+");
    ngx_str_set(&argv[4], "COUNT");

    argv[5].data = count;
    argv[5].len = ngx_sprintf(count, "%d", NGX_STREAM_IM_REPLAY_PAGE) - count;

    ngx_stream_im_session_ref(ctx, &ref, 0);

    if (ngx_stream_im_redis_command(6, argv, ngx_stream_im_router_page, &ref)
        != NGX_OK)
    {
        /* Redis is down: the catch-up after it comes back does this */
        ctx->replaying = 0;
    }
}


static void
ngx_stream_im_router_page(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r)
{
    size_t                     i;
    ngx_str_t                  id, partial;
    ngx_stream_im_msg_t       *msg;
    ngx_stream_im_msg_id_t     mid;
    ngx_stream_im_srv_conf_t  *iscf;

    ctx->replaying = 0;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        return;
    }

    if (ctx->state != NGX_STREAM_IM_OPEN) {
        return;
    }

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    for (i = 0; i < r->elements; i++) {

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

        ctx->last = mid;
    }

    if (r->elements == NGX_STREAM_IM_REPLAY_PAGE || ctx->replay_again) {
        ngx_stream_im_router_replay(ctx);
    }
}


ngx_stream_im_msg_t *
ngx_stream_im_router_message(uint32_t id, ngx_str_t *msg_id,
    ngx_stream_im_msg_id_t *mid, ngx_str_t *partial)
{
    u_char               *p;
    ngx_stream_im_msg_t  *msg;

    msg = ngx_stream_im_msg_alloc(NGX_STREAM_IM_WS_HEADER_MAX
                                  + ngx_stream_im_message_size(id, msg_id,
                                                               mid->ms,
                                                               partial),
                                  ngx_cycle->log);
    if (msg == NULL) {
        return NULL;
    }

    p = ngx_stream_im_message_write(msg->data, id, msg_id, mid->ms, partial);
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
 * A message on this worker's channel (see ngx_stream_im_scripts.c):
 * serialized once, queued on every local session of its users.
 */

void
ngx_stream_im_router_deliver(ngx_str_t *payload)
{
    u_char                   *p, *end, *nl[3];
    ngx_str_t                 id, users, data, user;
    ngx_uint_t                i;
    ngx_atomic_uint_t         origin;
    ngx_stream_im_msg_t      *msg;
    ngx_stream_im_msg_id_t    mid;

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
        origin = (ngx_atomic_uint_t) ngx_atoi(p, nl[1] - p);
    }

    users.data = nl[1] + 1;
    users.len = nl[2] - users.data;

    data.data = nl[2] + 1;
    data.len = end - data.data;

    switch (payload->data[0]) {

    case 'm':
        if (ngx_stream_im_msg_id_parse(id.data, id.len, &mid) != NGX_OK) {
            return;
        }

        msg = ngx_stream_im_router_message(0, &id, &mid, &data);
        break;

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

    default:
        return;
    }

    if (msg == NULL) {
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

        ngx_stream_im_router_fanout(&user, msg,
                                    payload->data[0] == 'm' ? &mid : NULL,
                                    origin);
    }

    ngx_stream_im_msg_release(msg);
}


static void
ngx_stream_im_router_fanout(ngx_str_t *name, ngx_stream_im_msg_t *msg,
    ngx_stream_im_msg_id_t *mid, ngx_atomic_uint_t origin)
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

        if (mid == NULL) {

            /* typing: live only, no order to keep */

            (void) ngx_stream_im_queue(ctx, msg);
            continue;
        }

        if (ctx->replaying) {
            ctx->replay_again = 1;
            continue;
        }

        if (mid->ms < ctx->last.ms
            || (mid->ms == ctx->last.ms && mid->seq <= ctx->last.seq))
        {
            continue;
        }

        if (ngx_stream_im_queue(ctx, msg) != NGX_OK) {
            continue;
        }

        ctx->last = *mid;
    }
}


/*
 * The Redis link is back: routes may be gone with a restarted Redis and
 * messages were published while nobody listened, so every session
 * registers again and replays what it missed.
 */

void
ngx_stream_im_router_redis_up(void)
{
    ngx_queue_t              *uq, *q;
    ngx_stream_im_gone_t     *g;
    ngx_stream_im_user_t     *u;
    ngx_stream_im_session_t  *ctx;

    while (ngx_stream_im_gone) {
        g = ngx_stream_im_gone;

        if (ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_LOGOUT, 0, NULL, 2,
                                     g->args, NULL, NULL)
            != NGX_OK)
        {
            return;
        }

        ngx_stream_im_gone = g->next;
        ngx_stream_im_gone_n--;
        ngx_free(g);
    }

    ngx_stream_im_presence_redis_up();

    for (uq = ngx_queue_head(&ngx_stream_im_users_all);
         uq != ngx_queue_sentinel(&ngx_stream_im_users_all);
         uq = ngx_queue_next(uq))
    {
        u = ngx_queue_data(uq, ngx_stream_im_user_t, all);

        for (q = ngx_queue_head(&u->sessions);
             q != ngx_queue_sentinel(&u->sessions);
             q = ngx_queue_next(q))
        {
            ctx = ngx_queue_data(q, ngx_stream_im_session_t, queue);

            if (!ctx->authenticated || ctx->logging_in) {
                continue;
            }

            if (ngx_stream_im_router_route(ctx, NULL, 0) != NGX_OK) {
                return;
            }

            if (!ctx->replaying || ctx->replay_paused) {
                ngx_stream_im_router_replay(ctx);
            }
        }
    }
}
