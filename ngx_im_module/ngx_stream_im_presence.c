
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * Who is online, for those who asked.  A user goes online with the first
 * session and offline with the last one (the login and logout scripts
 * publish on im:presence:<uid>); the worker subscribes to the channel of
 * every user one of its sessions watches, once, and passes a change on
 * after a second, so a reconnecting device is not seen to flap.
 */


#define NGX_STREAM_IM_PRESENCE_COALESCE  1000


typedef struct {
    ngx_str_node_t             sn;
    ngx_queue_t                watchers;
    ngx_queue_t                all;
    ngx_event_t                timer;
    uint64_t                   last_seen;
    unsigned                   online:1;      /* as last heard */
} ngx_stream_im_watch_t;


typedef struct {
    ngx_queue_t                link;          /* in the watch */
    ngx_queue_t                own;           /* in the session */
    ngx_stream_im_session_t   *ctx;
    ngx_stream_im_watch_t     *watch;
    unsigned                   told:1;        /* as last passed on */
    unsigned                   known:1;       /* the answer is out */
} ngx_stream_im_watcher_t;


static ngx_stream_im_watch_t *ngx_stream_im_presence_watch(ngx_str_t *user);
static ngx_int_t ngx_stream_im_presence_channel(ngx_str_t *user,
    char *command);
static void ngx_stream_im_presence_state(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r);
static ngx_int_t ngx_stream_im_presence_send(ngx_stream_im_session_t *ctx,
    uint32_t id, ngx_str_t *user, ngx_uint_t online, uint64_t last_seen);
static void ngx_stream_im_presence_timer(ngx_event_t *ev);
static void ngx_stream_im_presence_unwatch(ngx_stream_im_watcher_t *w);
static ngx_stream_im_watcher_t *ngx_stream_im_presence_watcher(
    ngx_stream_im_watch_t *watch, ngx_stream_im_session_t *ctx);


static ngx_rbtree_t          ngx_stream_im_watches;
static ngx_rbtree_node_t     ngx_stream_im_watches_sentinel;
static ngx_queue_t           ngx_stream_im_watches_all;


void
ngx_stream_im_presence_init_worker(void)
{
    ngx_rbtree_init(&ngx_stream_im_watches, &ngx_stream_im_watches_sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&ngx_stream_im_watches_all);
}


static ngx_stream_im_watch_t *
ngx_stream_im_presence_watch(ngx_str_t *user)
{
    return (ngx_stream_im_watch_t *)
           ngx_str_rbtree_lookup(&ngx_stream_im_watches, user,
                                 ngx_crc32_short(user->data, user->len));
}


/*
 * PresenceSub{users}: watch them from now on, and answer at once with a
 * Presence per user, read from Redis in one round trip.
 */

ngx_int_t
ngx_stream_im_presence_sub(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    size_t                     i, n;
    ngx_str_t                  user, *args;
    ngx_queue_t               *q;
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_watch_t     *watch;
    ngx_stream_im_watcher_t   *w;
    ngx_stream_im_srv_conf_t  *iscf;

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    n = 0;

    for (q = ngx_queue_head(&ctx->watching);
         q != ngx_queue_sentinel(&ctx->watching);
         q = ngx_queue_next(q))
    {
        n++;
    }

    if (f->presence_sub->n_users == 0) {
        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "no users");
    }

    for (i = 0; i < f->presence_sub->n_users; i++) {
        user.data = (u_char *) f->presence_sub->users[i];
        user.len = ngx_strlen(f->presence_sub->users[i]);

        watch = ngx_stream_im_presence_watch(&user);

        if (watch == NULL || ngx_stream_im_presence_watcher(watch, ctx) == NULL)
        {
            n++;
        }
    }

    if (n > iscf->presence_max) {
        ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                      "client watches over im_presence_max users");

        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__TOO_LARGE,
                                        "over im_presence_max users");
    }

    if (!ngx_stream_im_redis_up()) {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    args = ngx_stream_im_arena_alloc(ngx_stream_im_worker_arena(),
                                     f->presence_sub->n_users
                                     * sizeof(ngx_str_t));
    if (args == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < f->presence_sub->n_users; i++) {
        user.data = (u_char *) f->presence_sub->users[i];
        user.len = ngx_strlen(f->presence_sub->users[i]);

        if (ngx_stream_im_valid_id(user.data, user.len) != NGX_OK) {
            ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                          "client sent a bad user id in PresenceSub");

            return ngx_stream_im_send_error(ctx, f->id,
                                            IM__ERROR__CODE__BAD_FRAME,
                                            "bad user id");
        }

        args[i] = user;
    }

    for (i = 0; i < f->presence_sub->n_users; i++) {
        user = args[i];

        watch = ngx_stream_im_presence_watch(&user);

        if (watch == NULL) {
            watch = ngx_calloc(sizeof(ngx_stream_im_watch_t) + user.len,
                               ngx_cycle->log);
            if (watch == NULL) {
                return NGX_ERROR;
            }

            watch->sn.str.data = (u_char *) (watch + 1);
            watch->sn.str.len = user.len;
            ngx_memcpy(watch->sn.str.data, user.data, user.len);
            watch->sn.node.key = ngx_crc32_short(user.data, user.len);

            watch->timer.handler = ngx_stream_im_presence_timer;
            watch->timer.data = &ngx_stream_im_timer_ident;
            watch->timer.log = ngx_cycle->log;
            watch->timer.cancelable = 1;

            ngx_queue_init(&watch->watchers);
            ngx_rbtree_insert(&ngx_stream_im_watches, &watch->sn.node);
            ngx_queue_insert_tail(&ngx_stream_im_watches_all, &watch->all);

            (void) ngx_stream_im_presence_channel(&watch->sn.str,
                                                  "SUBSCRIBE");
        }

        /* watching one user twice is watching it once */

        if (ngx_stream_im_presence_watcher(watch, ctx)) {
            continue;
        }

        w = ngx_alloc(sizeof(ngx_stream_im_watcher_t), ngx_cycle->log);
        if (w == NULL) {
            return NGX_ERROR;
        }

        w->ctx = ctx;
        w->watch = watch;
        w->told = 0;
        w->known = 0;
        ngx_queue_insert_tail(&watch->watchers, &w->link);
        ngx_queue_insert_tail(&ctx->watching, &w->own);
    }

    ngx_stream_im_session_ref(ctx, &ref, f->id);
    ref.arg = (uint32_t) f->presence_sub->n_users;

    if (ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_PRESENCE, 0, NULL,
                                 f->presence_sub->n_users, args,
                                 ngx_stream_im_presence_state, &ref)
        != NGX_OK)
    {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    return NGX_OK;
}


static ngx_stream_im_watcher_t *
ngx_stream_im_presence_watcher(ngx_stream_im_watch_t *watch,
    ngx_stream_im_session_t *ctx)
{
    ngx_queue_t              *q;
    ngx_stream_im_watcher_t  *w;

    for (q = ngx_queue_head(&watch->watchers);
         q != ngx_queue_sentinel(&watch->watchers);
         q = ngx_queue_next(q))
    {
        w = ngx_queue_data(q, ngx_stream_im_watcher_t, link);

        if (w->ctx == ctx) {
            return w;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_stream_im_presence_channel(ngx_str_t *user, char *command)
{
    ngx_str_t  argv[2];
    u_char     channel[sizeof("im:presence:") + NGX_STREAM_IM_ID_MAX];

    argv[0].data = (u_char *) command;
    argv[0].len = ngx_strlen(command);
    argv[1].data = channel;
    argv[1].len = ngx_sprintf(channel, "im:presence:%V", user) - channel;

    return ngx_stream_im_redis_subscribe(argv);
}


/* the script's reply: [user, online, last_seen_ms, ...] */

static void
ngx_stream_im_presence_state(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r)
{
    size_t                    i;
    ngx_str_t                 user;
    ngx_uint_t                online;
    redisReply              **e;
    ngx_stream_im_watch_t    *watch;
    ngx_stream_im_watcher_t  *w;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY
        || r->elements != 3 * (size_t) ref->arg)
    {
        (void) ngx_stream_im_send_unavailable(ctx, ref->id);
        return;
    }

    e = r->element;

    for (i = 0; i < r->elements; i += 3) {
        if (e[i]->type != REDIS_REPLY_STRING
            || e[i + 1]->type != REDIS_REPLY_INTEGER
            || e[i + 2]->type != REDIS_REPLY_INTEGER)
        {
            continue;
        }

        user.data = (u_char *) e[i]->str;
        user.len = e[i]->len;
        online = (e[i + 1]->integer != 0);

        /* changes after this answer are passed on from this state */

        watch = ngx_stream_im_presence_watch(&user);
        w = watch ? ngx_stream_im_presence_watcher(watch, ctx) : NULL;

        if (w) {
            w->told = online;
            w->known = 1;
        }

        if (ngx_stream_im_presence_send(ctx, ref->id, &user, online,
                                        e[i + 2]->integer)
            != NGX_OK)
        {
            return;
        }
    }
}


static ngx_int_t
ngx_stream_im_presence_send(ngx_stream_im_session_t *ctx, uint32_t id,
    ngx_str_t *user, ngx_uint_t online, uint64_t last_seen)
{
    Im__Frame     f;
    Im__Presence  p;
    u_char        name[NGX_STREAM_IM_ID_MAX + 1];

    ngx_memcpy(name, user->data, user->len);
    name[user->len] = '\0';

    im__frame__init(&f);
    im__presence__init(&p);

    p.user = (char *) name;
    p.online = online;
    p.last_seen_ms = last_seen;

    f.id = id;
    f.body_case = IM__FRAME__BODY_PRESENCE;
    f.presence = &p;

    return ngx_stream_im_send_frame(ctx, &f);
}


/* a message on im:presence:<uid>: "<1 or 0> <ms>" */

void
ngx_stream_im_presence_event(ngx_str_t *user, ngx_str_t *payload)
{
    ngx_stream_im_watch_t  *watch;

    watch = ngx_stream_im_presence_watch(user);

    if (watch == NULL || payload->len < 3) {
        return;
    }

    watch->online = (payload->data[0] == '1');
    watch->last_seen = (uint64_t) ngx_atoi(payload->data + 2,
                                           payload->len - 2);

    /* a change is passed on once it has held for a second */

    ngx_add_timer(&watch->timer, NGX_STREAM_IM_PRESENCE_COALESCE);
}


static void
ngx_stream_im_presence_timer(ngx_event_t *ev)
{
    ngx_queue_t              *q;
    ngx_stream_im_watch_t    *watch;
    ngx_stream_im_watcher_t  *w;

    watch = (ngx_stream_im_watch_t *)
                ((u_char *) ev - offsetof(ngx_stream_im_watch_t, timer));

    for (q = ngx_queue_head(&watch->watchers);
         q != ngx_queue_sentinel(&watch->watchers);
         q = ngx_queue_next(q))
    {
        w = ngx_queue_data(q, ngx_stream_im_watcher_t, link);

        if (!w->known || w->told == watch->online
            || w->ctx->state != NGX_STREAM_IM_OPEN)
        {
            continue;
        }

        w->told = watch->online;

        (void) ngx_stream_im_presence_send(w->ctx, 0, &watch->sn.str,
                                           watch->online, watch->last_seen);
    }
}


/* the session is closing: it watches no one any more */

void
ngx_stream_im_presence_leave(ngx_stream_im_session_t *ctx)
{
    ngx_queue_t              *q;
    ngx_stream_im_watcher_t  *w;

    while (!ngx_queue_empty(&ctx->watching)) {
        q = ngx_queue_head(&ctx->watching);
        w = ngx_queue_data(q, ngx_stream_im_watcher_t, own);

        ngx_stream_im_presence_unwatch(w);
    }
}


static void
ngx_stream_im_presence_unwatch(ngx_stream_im_watcher_t *w)
{
    ngx_stream_im_watch_t  *watch;

    watch = w->watch;

    ngx_queue_remove(&w->link);
    ngx_queue_remove(&w->own);
    ngx_free(w);

    if (!ngx_queue_empty(&watch->watchers)) {
        return;
    }

    (void) ngx_stream_im_presence_channel(&watch->sn.str, "UNSUBSCRIBE");

    if (watch->timer.timer_set) {
        ngx_del_timer(&watch->timer);
    }

    ngx_rbtree_delete(&ngx_stream_im_watches, &watch->sn.node);
    ngx_queue_remove(&watch->all);
    ngx_free(watch);
}


/* the subscriber connection is new: subscribe again to every channel */

void
ngx_stream_im_presence_redis_up(void)
{
    ngx_queue_t            *q;
    ngx_stream_im_watch_t  *watch;

    for (q = ngx_queue_head(&ngx_stream_im_watches_all);
         q != ngx_queue_sentinel(&ngx_stream_im_watches_all);
         q = ngx_queue_next(q))
    {
        watch = ngx_queue_data(q, ngx_stream_im_watch_t, all);

        if (ngx_stream_im_presence_channel(&watch->sn.str, "SUBSCRIBE")
            != NGX_OK)
        {
            return;
        }
    }
}
