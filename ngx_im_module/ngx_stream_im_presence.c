
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
#define NGX_STREAM_IM_PRESENCE_BATCH     128
#define NGX_STREAM_IM_PRESENCE_FIRST     0x80000000


typedef struct ngx_stream_im_watcher_s  ngx_stream_im_watcher_t;

typedef struct {
    ngx_str_node_t             sn;
    ngx_queue_t                watchers;
    ngx_queue_t                all;
    ngx_event_t                timer;
    uint64_t                   last_seen;
    ngx_stream_im_watcher_t   *mark;          /* of the session at hand */
    ngx_uint_t                 mark_gen;
    unsigned                   online:1;      /* as last heard */
} ngx_stream_im_watch_t;


struct ngx_stream_im_watcher_s {
    ngx_queue_t                link;          /* in the watch */
    ngx_queue_t                own;           /* in the session */
    ngx_stream_im_session_t   *ctx;
    ngx_stream_im_watch_t     *watch;
    unsigned                   told:1;        /* as last passed on */
    unsigned                   known:1;       /* the answer is out */
};


static ngx_stream_im_watch_t *ngx_stream_im_presence_watch(ngx_str_t *user);
static ngx_uint_t ngx_stream_im_presence_mark(ngx_stream_im_session_t *ctx);
static ngx_stream_im_watcher_t *ngx_stream_im_presence_marked(
    ngx_stream_im_watch_t *watch);
static ngx_int_t ngx_stream_im_presence_channel(ngx_str_t *user,
    ngx_uint_t on);
static ngx_int_t ngx_stream_im_presence_query(ngx_str_t *users, size_t n,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref);
static void ngx_stream_im_presence_state(ngx_stream_im_ref_t *ref,
    redisReply *r);
static ngx_stream_im_msg_t *ngx_stream_im_presence_frame(uint32_t id,
    ngx_str_t *user, ngx_uint_t online, uint64_t last_seen);
static void ngx_stream_im_presence_event(ngx_str_t *channel,
    ngx_str_t *payload);
static void ngx_stream_im_presence_timer(ngx_event_t *ev);
static void ngx_stream_im_presence_leave(ngx_stream_im_session_t *ctx);
static void ngx_stream_im_presence_unwatch(ngx_stream_im_watcher_t *w);
static void ngx_stream_im_presence_heard(ngx_stream_im_watch_t *watch,
    ngx_uint_t online, uint64_t last_seen);
static void ngx_stream_im_presence_ready(ngx_uint_t fresh);
static void ngx_stream_im_presence_subscribed(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_presence_refresh(ngx_stream_im_ref_t *ref,
    redisReply *r);


static ngx_rbtree_t          ngx_stream_im_watches;
static ngx_rbtree_node_t     ngx_stream_im_watches_sentinel;
static ngx_queue_t           ngx_stream_im_watches_all;
static ngx_uint_t            ngx_stream_im_mark_gen;

static ngx_str_t  ngx_stream_im_presence_prefix = ngx_string("im:presence:");


ngx_int_t
ngx_stream_im_presence_init_worker(void)
{
    ngx_rbtree_init(&ngx_stream_im_watches, &ngx_stream_im_watches_sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&ngx_stream_im_watches_all);

    if (ngx_stream_im_redis_on_message(&ngx_stream_im_presence_prefix,
                                       ngx_stream_im_presence_event)
        != NGX_OK
        || ngx_stream_im_redis_on_ready(ngx_stream_im_presence_ready)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_stream_im_session_on_close(ngx_stream_im_presence_leave);
}


static ngx_stream_im_watch_t *
ngx_stream_im_presence_watch(ngx_str_t *user)
{
    return (ngx_stream_im_watch_t *)
           ngx_str_rbtree_lookup(&ngx_stream_im_watches, user,
                                 ngx_crc32_short(user->data, user->len));
}


/*
 * The watches of one session marked, so that "does it watch this user"
 * costs the same however many others watch that user too.
 */

static ngx_uint_t
ngx_stream_im_presence_mark(ngx_stream_im_session_t *ctx)
{
    ngx_uint_t                n;
    ngx_queue_t              *q;
    ngx_stream_im_watcher_t  *w;

    ngx_stream_im_mark_gen++;

    n = 0;

    for (q = ngx_queue_head(&ctx->watching);
         q != ngx_queue_sentinel(&ctx->watching);
         q = ngx_queue_next(q))
    {
        w = ngx_queue_data(q, ngx_stream_im_watcher_t, own);

        w->watch->mark = w;
        w->watch->mark_gen = ngx_stream_im_mark_gen;
        n++;
    }

    return n;
}


static ngx_stream_im_watcher_t *
ngx_stream_im_presence_marked(ngx_stream_im_watch_t *watch)
{
    if (watch && watch->mark_gen == ngx_stream_im_mark_gen) {
        return watch->mark;
    }

    return NULL;
}


/*
 * PresenceSub{users}: watch them from now on, and answer at once with a
 * Presence per user, read from Redis in one round trip.  A list longer
 * than im_presence_max is refused before anything is looked up.
 */

ngx_int_t
ngx_stream_im_presence_sub(ngx_stream_im_session_t *ctx, Im__Frame *f)
{
    size_t                     i, n, nusers;
    ngx_str_t                  user, *args;
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_watch_t     *watch;
    ngx_stream_im_watcher_t   *w;
    ngx_stream_im_srv_conf_t  *iscf;

    iscf = ngx_stream_get_module_srv_conf(ctx->session, ngx_stream_im_module);

    nusers = f->presence_sub->n_users;

    if (nusers == 0) {
        return ngx_stream_im_send_error(ctx, f->id,
                                        IM__ERROR__CODE__BAD_FRAME,
                                        "no users");
    }

    if (nusers > iscf->presence_max) {
        goto too_many;
    }

    args = ngx_stream_im_arena_alloc(ngx_stream_im_worker_arena(),
                                     nusers * sizeof(ngx_str_t));
    if (args == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < nusers; i++) {
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

    /* the watches it has and the new ones together, each user once */

    n = ngx_stream_im_presence_mark(ctx);

    for (i = 0; i < nusers; i++) {
        watch = ngx_stream_im_presence_watch(&args[i]);

        if (watch && watch->mark_gen == ngx_stream_im_mark_gen) {
            continue;
        }

        n++;

        if (watch) {

            /* a user named twice in the list counts once */

            watch->mark = NULL;
            watch->mark_gen = ngx_stream_im_mark_gen;
        }
    }

    if (n > iscf->presence_max) {
        goto too_many;
    }

    if (!ngx_stream_im_redis_up()) {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    (void) ngx_stream_im_presence_mark(ctx);

    for (i = 0; i < nusers; i++) {
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

            (void) ngx_stream_im_presence_channel(&watch->sn.str, 1);
        }

        /* watching one user twice is watching it once */

        if (ngx_stream_im_presence_marked(watch)) {
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

        watch->mark = w;
        watch->mark_gen = ngx_stream_im_mark_gen;
    }

    ngx_stream_im_session_ref(ctx, &ref, f->id);
    ref.arg = (uint32_t) nusers;

    if (ngx_stream_im_presence_query(args, nusers,
                                     ngx_stream_im_presence_state, &ref)
        != NGX_OK)
    {
        return ngx_stream_im_send_unavailable(ctx, f->id);
    }

    return NGX_OK;

too_many:

    ngx_log_error(NGX_LOG_INFO, ctx->session->connection->log, 0,
                  "client watches over im_presence_max users");

    return ngx_stream_im_send_error(ctx, f->id, IM__ERROR__CODE__TOO_LARGE,
                                    "over im_presence_max users");
}


static ngx_int_t
ngx_stream_im_presence_channel(ngx_str_t *user, ngx_uint_t on)
{
    ngx_str_t  channel;
    u_char     buf[sizeof("im:presence:") + NGX_STREAM_IM_ID_MAX];

    channel.data = buf;
    channel.len = ngx_sprintf(buf, "im:presence:%V", user) - buf;

    return ngx_stream_im_redis_subscribe(&channel, on);
}


/*
 * The presence script for users: one call per batch (a slot on a
 * cluster), each answered with ref->arg users.
 */

static ngx_int_t
ngx_stream_im_presence_query(ngx_str_t *users, size_t n,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref)
{
    u_char                   *kbuf;
    size_t                    i, j, k;
    ngx_int_t                 rc;
    ngx_str_t                *keys, *args, key;
    ngx_stream_im_ref_t       r;
    ngx_stream_im_batched_t  *b;

    b = ngx_alloc(n * sizeof(ngx_stream_im_batched_t), ngx_cycle->log);
    keys = ngx_alloc(3 * n * sizeof(ngx_str_t), ngx_cycle->log);
    kbuf = ngx_alloc(2 * n * NGX_STREAM_IM_KEY_MAX, ngx_cycle->log);

    if (b == NULL || keys == NULL || kbuf == NULL) {
        rc = NGX_ERROR;
        goto done;
    }

    args = keys + 2 * n;

    for (i = 0; i < n; i++) {
        key.data = kbuf;
        key.len = ngx_stream_im_router_key(kbuf, "u", &users[i], "routes")
                  - kbuf;

        b[i].batch = ngx_stream_im_redis_batch(&key);
        b[i].index = i;
    }

    ngx_stream_im_batch_sort(b, n);

    if (ref) {
        r = *ref;

    } else {
        ngx_memzero(&r, sizeof(ngx_stream_im_ref_t));
    }

    rc = NGX_OK;

    /*
     * Each batch is answered on its own; only the first answers an error
     * for the request (the client hears one), and a batch that cannot be
     * queued after others were leaves its users unanswered.
     */

    for (i = 0; i < n && rc == NGX_OK; i = j) {

        for (j = i, k = 0; j < n && b[j].batch == b[i].batch; j++, k++) {
            keys[2 * k].data = kbuf + 2 * k * NGX_STREAM_IM_KEY_MAX;
            keys[2 * k].len = ngx_stream_im_router_key(keys[2 * k].data, "u",
                                                       &users[b[j].index],
                                                       "routes")
                              - keys[2 * k].data;

            keys[2 * k + 1].data = keys[2 * k].data + NGX_STREAM_IM_KEY_MAX;
            keys[2 * k + 1].len = ngx_stream_im_router_key(
                                      keys[2 * k + 1].data, "u",
                                      &users[b[j].index], "seen")
                                  - keys[2 * k + 1].data;

            args[k] = users[b[j].index];
        }

        r.arg = (uint32_t) k | (i == 0 ? NGX_STREAM_IM_PRESENCE_FIRST : 0);

        rc = ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_PRESENCE, 2 * k,
                                      keys, k, args, handler, &r);

        if (rc != NGX_OK && i) {
            rc = NGX_OK;
            break;
        }
    }

done:

    if (b) {
        ngx_free(b);
    }

    if (keys) {
        ngx_free(keys);
    }

    if (kbuf) {
        ngx_free(kbuf);
    }

    return rc;
}


/* the script's reply: [user, online, last_seen_ms, ...] */

static void
ngx_stream_im_presence_state(ngx_stream_im_ref_t *ref, redisReply *r)
{
    size_t                    i;
    ngx_str_t                 user;
    ngx_uint_t                online;
    redisReply              **e;
    ngx_stream_im_msg_t      *msg;
    ngx_stream_im_session_t  *ctx;
    ngx_stream_im_watcher_t  *w;

    ctx = ngx_stream_im_session_lookup(ref);

    if (ctx == NULL) {
        return;
    }

    if (r == NULL || r->type != REDIS_REPLY_ARRAY
        || r->elements
           != 3 * (size_t) (ref->arg & ~NGX_STREAM_IM_PRESENCE_FIRST))
    {
        if (ref->arg & NGX_STREAM_IM_PRESENCE_FIRST) {
            (void) ngx_stream_im_send_unavailable(ctx, ref->id);
        }

        return;
    }

    (void) ngx_stream_im_presence_mark(ctx);

    e = r->element;

    for (i = 0; i < r->elements; i += 3) {
        if (e[i]->type != REDIS_REPLY_STRING
            || e[i]->len > NGX_STREAM_IM_ID_MAX
            || e[i + 1]->type != REDIS_REPLY_INTEGER
            || e[i + 2]->type != REDIS_REPLY_INTEGER)
        {
            continue;
        }

        user.data = (u_char *) e[i]->str;
        user.len = e[i]->len;
        online = (e[i + 1]->integer != 0);

        /* changes after this answer are passed on from this state */

        w = ngx_stream_im_presence_marked(ngx_stream_im_presence_watch(&user));

        if (w) {
            w->told = online;
            w->known = 1;
        }

        msg = ngx_stream_im_presence_frame(ref->id, &user, online,
                                           e[i + 2]->integer);
        if (msg == NULL) {
            return;
        }

        if (ngx_stream_im_queue(ctx, msg) != NGX_OK) {
            return;
        }
    }
}


static ngx_stream_im_msg_t *
ngx_stream_im_presence_frame(uint32_t id, ngx_str_t *user, ngx_uint_t online,
    uint64_t last_seen)
{
    size_t                n;
    u_char               *p;
    Im__Frame             f;
    Im__Presence          pr;
    ngx_stream_im_msg_t  *msg;
    u_char                name[NGX_STREAM_IM_ID_MAX + 1];

    ngx_memcpy(name, user->data, user->len);
    name[user->len] = '\0';

    im__frame__init(&f);
    im__presence__init(&pr);

    pr.user = (char *) name;
    pr.online = online;
    pr.last_seen_ms = last_seen;

    f.id = id;
    f.body_case = IM__FRAME__BODY_PRESENCE;
    f.presence = &pr;

    n = ngx_stream_im_encoded_size(&f);

    msg = ngx_stream_im_msg_alloc(NGX_STREAM_IM_WS_HEADER_MAX + n,
                                  ngx_cycle->log);
    if (msg == NULL) {
        return NULL;
    }

    p = ngx_stream_im_encode(msg->data, &f, n);
    msg->len = p - msg->data;

    return msg;
}


/* a message on im:presence:<uid>: "<1 or 0> <ms>" */

static void
ngx_stream_im_presence_event(ngx_str_t *channel, ngx_str_t *payload)
{
    ngx_str_t               user;
    ngx_stream_im_watch_t  *watch;

    user.data = channel->data + ngx_stream_im_presence_prefix.len;
    user.len = channel->len - ngx_stream_im_presence_prefix.len;

    watch = ngx_stream_im_presence_watch(&user);

    if (watch == NULL || payload->len < 3) {
        return;
    }

    ngx_stream_im_presence_heard(watch, payload->data[0] == '1',
                                 (uint64_t) ngx_atoi(payload->data + 2,
                                                     payload->len - 2));
}


/* a change is passed on once it has held for a second */

static void
ngx_stream_im_presence_heard(ngx_stream_im_watch_t *watch, ngx_uint_t online,
    uint64_t last_seen)
{
    watch->online = online;
    watch->last_seen = last_seen;

    ngx_add_timer(&watch->timer, NGX_STREAM_IM_PRESENCE_COALESCE);
}


static void
ngx_stream_im_presence_timer(ngx_event_t *ev)
{
    ngx_queue_t              *q;
    ngx_stream_im_msg_t      *msg;
    ngx_stream_im_watch_t    *watch;
    ngx_stream_im_watcher_t  *w;

    watch = (ngx_stream_im_watch_t *)
                ((u_char *) ev - offsetof(ngx_stream_im_watch_t, timer));

    /* one frame for every watcher that is told */

    msg = ngx_stream_im_presence_frame(0, &watch->sn.str, watch->online,
                                       watch->last_seen);
    if (msg == NULL) {
        return;
    }

    msg->refs++;

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

        (void) ngx_stream_im_queue(w->ctx, msg);
    }

    ngx_stream_im_msg_release(msg);
}


/* the session is closing: it watches no one any more */

static void
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

    (void) ngx_stream_im_presence_channel(&watch->sn.str, 0);

    if (watch->timer.timer_set) {
        ngx_del_timer(&watch->timer);
    }

    ngx_rbtree_delete(&ngx_stream_im_watches, &watch->sn.node);
    ngx_queue_remove(&watch->all);
    ngx_free(watch);
}


/*
 * The subscriber connection is new: subscribe again to every channel,
 * and once that holds (a PING behind the SUBSCRIBEs is answered), read
 * every watched user's state again: changes published while the link was
 * away were never heard.
 */

static void
ngx_stream_im_presence_ready(ngx_uint_t fresh)
{
    ngx_queue_t            *q;
    ngx_stream_im_watch_t  *watch;

    if (!fresh || ngx_queue_empty(&ngx_stream_im_watches_all)) {
        return;
    }

    for (q = ngx_queue_head(&ngx_stream_im_watches_all);
         q != ngx_queue_sentinel(&ngx_stream_im_watches_all);
         q = ngx_queue_next(q))
    {
        watch = ngx_queue_data(q, ngx_stream_im_watch_t, all);

        if (ngx_stream_im_presence_channel(&watch->sn.str, 1)
            != NGX_OK)
        {
            return;
        }
    }

    (void) ngx_stream_im_redis_subscribed(ngx_stream_im_presence_subscribed);
}


static void
ngx_stream_im_presence_subscribed(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_uint_t              n;
    ngx_str_t              *args;
    ngx_queue_t            *q;
    ngx_stream_im_watch_t  *watch;

    if (r == NULL) {
        return;
    }

    args = ngx_alloc(NGX_STREAM_IM_PRESENCE_BATCH * sizeof(ngx_str_t),
                     ngx_cycle->log);
    if (args == NULL) {
        return;
    }

    n = 0;
    q = ngx_queue_head(&ngx_stream_im_watches_all);

    /* a script call per batch of users, the last one maybe shorter */

    while (q != ngx_queue_sentinel(&ngx_stream_im_watches_all) || n) {

        if (q != ngx_queue_sentinel(&ngx_stream_im_watches_all)) {
            watch = ngx_queue_data(q, ngx_stream_im_watch_t, all);
            args[n++] = watch->sn.str;
            q = ngx_queue_next(q);

            if (n < NGX_STREAM_IM_PRESENCE_BATCH
                && q != ngx_queue_sentinel(&ngx_stream_im_watches_all))
            {
                continue;
            }
        }

        if (ngx_stream_im_presence_query(args, n,
                                         ngx_stream_im_presence_refresh,
                                         NULL)
            != NGX_OK)
        {
            break;
        }

        n = 0;
    }

    ngx_free(args);
}


/* the presence script's reply, for the watches rather than a request */

static void
ngx_stream_im_presence_refresh(ngx_stream_im_ref_t *ref, redisReply *r)
{
    size_t                  i;
    ngx_str_t               user;
    redisReply            **e;
    ngx_stream_im_watch_t  *watch;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements % 3) {
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

        watch = ngx_stream_im_presence_watch(&user);

        if (watch) {
            ngx_stream_im_presence_heard(watch, e[i + 1]->integer != 0,
                                         e[i + 2]->integer);
        }
    }
}
