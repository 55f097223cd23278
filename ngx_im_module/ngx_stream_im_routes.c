
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * Whether a route channel still has a worker behind it.  A script sees
 * only its own slot, not the alive key of another worker's channel, so
 * the workers judge: a channel a script returns is looked up here; one
 * not known alive has its alive key read (at most once per heartbeat, a
 * dead one once a second, one read at a time), and the users a script
 * returns with it are noted; their routes to it go only when a read made
 * after they were noted finds the key gone, as a worker that was stopped
 * comes back with the same channel.  The table is small (a deployment
 * has as many channels as worker processes): a channel has its place
 * among a few next to its hash, and only an entry nothing waits on gives
 * its place up.
 *
 * Presence changes are published here too, from the time a script says
 * a user's first route came or last one went.
 */


#define NGX_STREAM_IM_ROUTES_SIZE       256
#define NGX_STREAM_IM_ROUTES_PROBE      8
#define NGX_STREAM_IM_ROUTES_ALIVE_FOR  5000
#define NGX_STREAM_IM_ROUTES_RECHECK    1000
#define NGX_STREAM_IM_ROUTES_SUSPECTS   32

#define NGX_STREAM_IM_ROUTE_UNKNOWN     0
#define NGX_STREAM_IM_ROUTE_ALIVE       1
#define NGX_STREAM_IM_ROUTE_DEAD        2


typedef struct {
    u_char                    *name;
    size_t                     len;
    ngx_msec_t                 checked;
    uint32_t                   gen;
    ngx_uint_t                 state;
    ngx_uint_t                 nsuspects;
    u_char                    *suspects;   /* users seen with it dead */
    unsigned                   inflight:1; /* a check is out */
} ngx_stream_im_route_t;


static ngx_stream_im_route_t *ngx_stream_im_routes_find(ngx_str_t *channel);
static void ngx_stream_im_routes_check(ngx_stream_im_route_t *rt);
static void ngx_stream_im_routes_checked(ngx_stream_im_ref_t *ref,
    redisReply *r);


static ngx_stream_im_route_t  ngx_stream_im_routes[NGX_STREAM_IM_ROUTES_SIZE];
static uint32_t               ngx_stream_im_routes_gen;


/*
 * NGX_OK: the channel's worker is alive (checked lately); NGX_DECLINED:
 * it is gone, nobody hears the channel; NGX_AGAIN: not known.
 */

ngx_int_t
ngx_stream_im_routes_live(ngx_str_t *channel)
{
    ngx_stream_im_route_t  *rt;

    if (channel->len == ngx_stream_im_redis_channel()->len
        && ngx_memcmp(channel->data, ngx_stream_im_redis_channel()->data,
                      channel->len)
           == 0)
    {
        return NGX_OK;
    }

    rt = ngx_stream_im_routes_find(channel);

    if (rt == NULL) {
        return NGX_AGAIN;
    }

    if (rt->state == NGX_STREAM_IM_ROUTE_DEAD) {
        return NGX_DECLINED;
    }

    if (rt->state == NGX_STREAM_IM_ROUTE_ALIVE
        && ngx_current_msec - rt->checked < NGX_STREAM_IM_ROUTES_ALIVE_FOR)
    {
        return NGX_OK;
    }

    return NGX_AGAIN;
}


/*
 * A user's route to a channel not known alive: it goes if a check made
 * from now on (ngx_stream_im_routes_judge) finds the alive key gone.
 */

void
ngx_stream_im_routes_suspect(ngx_str_t *channel, ngx_str_t *user)
{
    u_char                 *p;
    ngx_stream_im_route_t  *rt;

    if (ngx_stream_im_routes_live(channel) == NGX_OK
        || user->len == 0 || user->len > NGX_STREAM_IM_ID_MAX)
    {
        return;
    }

    rt = ngx_stream_im_routes_find(channel);

    if (rt == NULL) {
        return;
    }

    if (rt->suspects == NULL) {
        rt->suspects = ngx_alloc(NGX_STREAM_IM_ROUTES_SUSPECTS
                                 * (NGX_STREAM_IM_ID_MAX + 1),
                                 ngx_cycle->log);
        if (rt->suspects == NULL) {
            return;
        }
    }

    /* a full list: the rest are seen again later */

    if (rt->nsuspects < NGX_STREAM_IM_ROUTES_SUSPECTS) {
        p = rt->suspects + rt->nsuspects++ * (NGX_STREAM_IM_ID_MAX + 1);
        *p++ = (u_char) user->len;
        ngx_memcpy(p, user->data, user->len);
    }
}


/*
 * The channel's alive key is read unless that was done lately: a dead
 * channel again after a second, any other after a heartbeat.
 */

void
ngx_stream_im_routes_judge(ngx_str_t *channel)
{
    ngx_msec_t              age;
    ngx_stream_im_route_t  *rt;

    if (ngx_stream_im_routes_live(channel) == NGX_OK) {
        return;
    }

    rt = ngx_stream_im_routes_find(channel);

    if (rt == NULL) {
        return;
    }

    if (rt->inflight) {
        return;
    }

    age = ngx_current_msec - rt->checked;

    if (rt->state == NGX_STREAM_IM_ROUTE_UNKNOWN
        || (rt->state == NGX_STREAM_IM_ROUTE_DEAD
            && age >= NGX_STREAM_IM_ROUTES_RECHECK)
        || age >= NGX_STREAM_IM_ROUTES_ALIVE_FOR)
    {
        ngx_stream_im_routes_check(rt);
    }
}


static void
ngx_stream_im_routes_check(ngx_stream_im_route_t *rt)
{
    ngx_str_t            argv[2];
    ngx_stream_im_ref_t  ref;
    u_char               key[NGX_STREAM_IM_CHANNEL_MAX + 8];

    argv[0].data = (u_char *) "EXISTS";
    argv[0].len = sizeof("EXISTS") - 1;
    argv[1].data = key;
    argv[1].len = ngx_sprintf(key, "%*s:alive", rt->len, rt->name) - key;

    ngx_memzero(&ref, sizeof(ngx_stream_im_ref_t));
    ref.slot = rt - ngx_stream_im_routes;
    ref.number = rt->gen;

    /* the suspects noted so far are judged by this check */

    ref.arg = (uint32_t) rt->nsuspects;

    if (ngx_stream_im_redis_command(2, argv, ngx_stream_im_routes_checked,
                                    &ref)
        == NGX_OK)
    {
        rt->checked = ngx_current_msec;
        rt->inflight = 1;
    }
}


static ngx_stream_im_route_t *
ngx_stream_im_routes_find(ngx_str_t *channel)
{
    ngx_uint_t              i, h;
    ngx_stream_im_route_t  *rt, *free;

    if (channel->len == 0 || channel->len > NGX_STREAM_IM_CHANNEL_MAX) {
        return NULL;
    }

    h = ngx_crc32_short(channel->data, channel->len);
    free = NULL;

    for (i = 0; i < NGX_STREAM_IM_ROUTES_PROBE; i++) {
        rt = &ngx_stream_im_routes[(h + i) % NGX_STREAM_IM_ROUTES_SIZE];

        if (rt->len == channel->len
            && ngx_memcmp(rt->name, channel->data, channel->len) == 0)
        {
            return rt;
        }

        /* a place nothing waits on: no read out, nobody to prune */

        if (free == NULL && !rt->inflight && rt->nsuspects == 0
            && (rt->state != NGX_STREAM_IM_ROUTE_DEAD
                || ngx_current_msec - rt->checked
                   >= NGX_STREAM_IM_ROUTES_ALIVE_FOR))
        {
            free = rt;
        }
    }

    /* all taken: the channel goes unjudged for now */

    if (free == NULL) {
        return NULL;
    }

    rt = free;

    if (rt->name == NULL) {
        rt->name = ngx_alloc(NGX_STREAM_IM_CHANNEL_MAX, ngx_cycle->log);
        if (rt->name == NULL) {
            return NULL;
        }
    }

    ngx_memcpy(rt->name, channel->data, channel->len);
    rt->len = channel->len;
    rt->state = NGX_STREAM_IM_ROUTE_UNKNOWN;
    rt->checked = ngx_current_msec;
    rt->nsuspects = 0;
    rt->gen = ++ngx_stream_im_routes_gen;

    return rt;
}


static void
ngx_stream_im_routes_checked(ngx_stream_im_ref_t *ref, redisReply *r)
{
    u_char                 *p;
    ngx_str_t               args[2];
    ngx_uint_t              i, n;
    ngx_stream_im_route_t  *rt;

    rt = &ngx_stream_im_routes[ref->slot];

    if (rt->gen != ref->number) {
        return;
    }

    rt->inflight = 0;

    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        return;
    }

    n = ngx_min((ngx_uint_t) ref->arg, rt->nsuspects);

    if (r->integer) {
        rt->state = NGX_STREAM_IM_ROUTE_ALIVE;
        rt->nsuspects = 0;
        return;
    }

    if (rt->state != NGX_STREAM_IM_ROUTE_DEAD) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "route channel \"%*s\" has no worker, its routes go "
                      "as they are seen", rt->len, rt->name);
    }

    rt->state = NGX_STREAM_IM_ROUTE_DEAD;

    /* the suspects noted before this check was made lose their route */

    args[1].data = rt->name;
    args[1].len = rt->len;

    for (i = 0; i < n; i++) {
        p = rt->suspects + i * (NGX_STREAM_IM_ID_MAX + 1);
        args[0].len = *p;
        args[0].data = p + 1;

        ngx_stream_im_routes_prune(args, 2);
    }

    if (n < rt->nsuspects) {
        ngx_memmove(rt->suspects,
                    rt->suspects + n * (NGX_STREAM_IM_ID_MAX + 1),
                    (rt->nsuspects - n) * (NGX_STREAM_IM_ID_MAX + 1));
    }

    rt->nsuspects -= n;
}


/*
 * The channels a script returned with a user's routes ({channel, ...}):
 * the user's routes to those found dead go.
 */

void
ngx_stream_im_routes_verify(ngx_str_t *user, redisReply *channels)
{
    size_t     i;
    ngx_str_t  ch;

    if (channels == NULL || channels->type != REDIS_REPLY_ARRAY) {
        return;
    }

    for (i = 0; i < channels->elements; i++) {
        if (channels->element[i]->type != REDIS_REPLY_STRING) {
            continue;
        }

        ch.data = (u_char *) channels->element[i]->str;
        ch.len = channels->element[i]->len;

        if (ngx_stream_im_routes_live(&ch) != NGX_OK) {
            ngx_stream_im_routes_suspect(&ch, user);
            ngx_stream_im_routes_judge(&ch);
        }
    }
}


/* args: the user, then channels of dead workers */

void
ngx_stream_im_routes_prune(ngx_str_t *args, ngx_uint_t nargs)
{
    ngx_str_t  keys[2];
    u_char     routes[NGX_STREAM_IM_KEY_MAX];
    u_char     seen[NGX_STREAM_IM_KEY_MAX];

    keys[0].data = routes;
    keys[0].len = ngx_stream_im_router_key(routes, "u", &args[0], "routes")
                  - routes;
    keys[1].data = seen;
    keys[1].len = ngx_stream_im_router_key(seen, "u", &args[0], "seen")
                  - seen;

    (void) ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_PRUNE, 2, keys,
                                    nargs, args, ngx_stream_im_routes_changed,
                                    NULL);
}


/*
 * A script's {ms, user}: the user's first route came (ref->arg 1) or its
 * last went (0).  Anything else is no change.
 */

void
ngx_stream_im_routes_changed(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_str_t  user;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2
        || r->element[0]->type != REDIS_REPLY_INTEGER
        || r->element[1]->type != REDIS_REPLY_STRING)
    {
        if (r && r->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "redis refused a route change: %s", r->str);
        }

        return;
    }

    user.data = (u_char *) r->element[1]->str;
    user.len = r->element[1]->len;

    if (ngx_stream_im_valid_id(user.data, user.len) != NGX_OK) {
        return;
    }

    ngx_stream_im_routes_presence(&user, ref && ref->arg,
                                  (uint64_t) r->element[0]->integer);
}


/* "1 <ms>" or "0 <ms>" on im:presence:<uid> */

void
ngx_stream_im_routes_presence(ngx_str_t *user, ngx_uint_t online,
    uint64_t ms)
{
    ngx_str_t  channel, payload;
    u_char     ch[sizeof("im:presence:") + NGX_STREAM_IM_ID_MAX];
    u_char     text[2 + NGX_INT64_LEN];

    channel.data = ch;
    channel.len = ngx_sprintf(ch, "im:presence:%V", user) - ch;

    payload.data = text;
    payload.len = ngx_sprintf(text, "%c %uL", online ? '1' : '0', ms) - text;

    (void) ngx_stream_im_redis_publish(&channel, &payload, 1, NULL, NULL);
}
