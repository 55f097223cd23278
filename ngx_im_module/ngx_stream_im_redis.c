
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>
#include <ngx_sha1.h>

#include "ngx_stream_im.h"


/*
 * The worker's link to Redis: two sockets owned by nginx, one for
 * commands and one for the worker's route channel subscription.  hiredis
 * only parses replies; commands are written in RESP straight into one
 * output buffer, so every command of an event loop turn goes out in one
 * write.  Replies come back in order and find their callbacks in a ring;
 * a callback reaches its session by connection slot and number, never by
 * a pointer that a closed connection could have left dangling.
 */


#define NGX_STREAM_IM_REDIS_DOWN        0
#define NGX_STREAM_IM_REDIS_CONNECTING  1
#define NGX_STREAM_IM_REDIS_LOADING     2
#define NGX_STREAM_IM_REDIS_UP          3

#define NGX_STREAM_IM_REDIS_BUF         16384
#define NGX_STREAM_IM_REDIS_OUT_MAX     (64 * 1024 * 1024)
#define NGX_STREAM_IM_REDIS_TIMEOUT     3000
#define NGX_STREAM_IM_REDIS_BACKOFF_MIN 100
#define NGX_STREAM_IM_REDIS_BACKOFF_MAX 5000
#define NGX_STREAM_IM_REDIS_HEARTBEAT   5000
#define NGX_STREAM_IM_REDIS_ALIVE_TTL   "15000"


typedef struct {
    ngx_stream_im_redis_handler_pt  handler;
    ngx_stream_im_ref_t             ref;
} ngx_stream_im_redis_cb_t;





typedef struct {
    ngx_connection_t               *connection;
    redisReader                    *reader;

    u_char                         *out;        /* commands not yet sent */
    size_t                          out_pos;
    size_t                          out_len;
    size_t                          out_size;

    ngx_stream_im_redis_cb_t       *cbs;        /* a ring, size power of 2 */
    ngx_uint_t                      cb_head;
    ngx_uint_t                      cb_count;
    ngx_uint_t                      cb_size;

    unsigned                        connected:1;
    unsigned                        subscriber:1;
} ngx_stream_im_redis_conn_t;


typedef struct {
    ngx_stream_im_redis_conn_t      cmd;
    ngx_stream_im_redis_conn_t      sub;
    ngx_addr_t                     *addr;
    ngx_uint_t                      state;
    ngx_uint_t                      pending;    /* replies before UP */
    ngx_uint_t                      heartbeat_pending;
    ngx_msec_t                      backoff;
    ngx_event_t                     reconnect;
    ngx_event_t                     heartbeat;
    ngx_str_t                       channel;
    ngx_str_t                       alive;
} ngx_stream_im_redis_t;


static ngx_int_t ngx_stream_im_redis_connect_one(
    ngx_stream_im_redis_conn_t *rc);
static void ngx_stream_im_redis_connected(ngx_stream_im_redis_conn_t *rc);
static void ngx_stream_im_redis_start_link(void);
static void ngx_stream_im_redis_loaded(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r);
static void ngx_stream_im_redis_fail(char *why);
static void ngx_stream_im_redis_close_one(ngx_stream_im_redis_conn_t *rc);
static void ngx_stream_im_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_heartbeat_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_read_handler(ngx_event_t *rev);
static void ngx_stream_im_redis_write_handler(ngx_event_t *wev);
static ngx_int_t ngx_stream_im_redis_reply(ngx_stream_im_redis_conn_t *rc,
    redisReply *r);
static void ngx_stream_im_redis_push(redisReply *r);
static void ngx_stream_im_redis_heartbeat_reply(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r);
static u_char *ngx_stream_im_redis_log_error(ngx_log_t *log, u_char *buf,
    size_t len);
static ngx_int_t ngx_stream_im_redis_append(ngx_stream_im_redis_conn_t *rc,
    ngx_uint_t argc, ngx_str_t *argv);
static ngx_int_t ngx_stream_im_redis_push_cb(ngx_stream_im_redis_conn_t *rc,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref);
static ngx_int_t ngx_stream_im_redis_send(ngx_stream_im_redis_conn_t *rc,
    ngx_uint_t argc, ngx_str_t *argv, ngx_stream_im_redis_handler_pt handler,
    ngx_stream_im_ref_t *ref);


static ngx_stream_im_redis_t  ngx_stream_im_redis;
static ngx_log_t              ngx_stream_im_redis_log;

static u_char  ngx_stream_im_redis_buf[NGX_STREAM_IM_REDIS_BUF];



ngx_int_t
ngx_stream_im_redis_init_worker(ngx_cycle_t *cycle, ngx_addr_t *addr)
{
    u_char                        *p;
    ngx_uint_t                     i;
    ngx_sha1_t                     sha1;
    ngx_stream_im_redis_t         *rd;
    ngx_stream_im_script_t  *sc;
    u_char                         digest[20];

    rd = &ngx_stream_im_redis;

    rd->addr = addr;
    rd->cmd.subscriber = 0;

    /* errors of the Redis sockets say what they are about */

    ngx_stream_im_redis_log = *cycle->log;
    ngx_stream_im_redis_log.handler = ngx_stream_im_redis_log_error;
    ngx_stream_im_redis_log.data = rd;
    ngx_stream_im_redis_log.action = "talking to redis";

    rd->sub.subscriber = 1;

    /* each worker process has its own channel, unique across reloads */

    p = ngx_pnalloc(cycle->pool, sizeof("im:route::") - 1 + cycle->hostname.len
                                 + NGX_INT64_LEN + sizeof(":alive") - 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    rd->channel.data = p;
    p = ngx_sprintf(p, "im:route:%V:%P", &cycle->hostname, ngx_pid);
    rd->channel.len = p - rd->channel.data;

    rd->alive.data = rd->channel.data;
    p = ngx_cpymem(p, ":alive", sizeof(":alive") - 1);
    rd->alive.len = p - rd->alive.data;

    sc = ngx_stream_im_scripts;

    for (i = 0; i < NGX_STREAM_IM_SCRIPTS; i++) {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, sc[i].text.data, sc[i].text.len);
        ngx_sha1_final(digest, &sha1);
        ngx_hex_dump(sc[i].sha, digest, sizeof(digest));
    }

    rd->reconnect.handler = ngx_stream_im_redis_reconnect_handler;
    rd->reconnect.data = &ngx_stream_im_timer_ident;
    rd->reconnect.log = cycle->log;
    rd->reconnect.cancelable = 1;

    rd->heartbeat.handler = ngx_stream_im_redis_heartbeat_handler;
    rd->heartbeat.data = &ngx_stream_im_timer_ident;
    rd->heartbeat.log = cycle->log;
    rd->heartbeat.cancelable = 1;

    rd->backoff = NGX_STREAM_IM_REDIS_BACKOFF_MIN;

    ngx_stream_im_redis_start_link();

    return NGX_OK;
}


ngx_str_t *
ngx_stream_im_redis_channel(void)
{
    return &ngx_stream_im_redis.channel;
}


ngx_int_t
ngx_stream_im_redis_up(void)
{
    return ngx_stream_im_redis.state == NGX_STREAM_IM_REDIS_UP;
}


/*
 * Queues a command; its reply reaches handler with the session that ref
 * names, or with NULL if that session is gone (handler may be NULL).
 */

ngx_int_t
ngx_stream_im_redis_command(ngx_uint_t argc, ngx_str_t *argv,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref)
{
    if (ngx_stream_im_redis.state != NGX_STREAM_IM_REDIS_UP) {
        return NGX_DECLINED;
    }

    return ngx_stream_im_redis_send(&ngx_stream_im_redis.cmd, argc, argv,
                                    handler, ref);
}


ngx_int_t
ngx_stream_im_redis_eval(ngx_uint_t script, ngx_uint_t nkeys, ngx_str_t *keys,
    ngx_uint_t nargs, ngx_str_t *args, ngx_stream_im_redis_handler_pt handler,
    ngx_stream_im_ref_t *ref)
{
    ngx_uint_t  i, n;
    ngx_str_t   argv[16];
    u_char      num[NGX_INT_T_LEN];

    n = 0;

    ngx_str_set(&argv[n], "EVALSHA");
    n++;

    argv[n].data = ngx_stream_im_scripts[script].sha;
    argv[n].len = 40;
    n++;

    argv[n].data = num;
    argv[n].len = ngx_sprintf(num, "%ui", nkeys) - num;
    n++;

    for (i = 0; i < nkeys; i++) {
        argv[n++] = keys[i];
    }

    for (i = 0; i < nargs; i++) {
        argv[n++] = args[i];
    }

    return ngx_stream_im_redis_command(n, argv, handler, ref);
}


/* the worker is leaving: its routes are dead now, not in 15 seconds */

void
ngx_stream_im_redis_exit_worker(void)
{
    ngx_str_t                    argv[2];
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_conn_t  *rc;

    rd = &ngx_stream_im_redis;
    rc = &rd->cmd;

    if (rd->state == NGX_STREAM_IM_REDIS_UP) {
        ngx_str_set(&argv[0], "DEL");
        argv[1] = rd->alive;

        if (ngx_stream_im_redis_append(rc, 2, argv) == NGX_OK) {
            (void) rc->connection->send(rc->connection, rc->out + rc->out_pos,
                                        rc->out_len - rc->out_pos);
        }
    }

    /* no session waits for a reply any more */

    rd->state = NGX_STREAM_IM_REDIS_DOWN;
    rd->cmd.cb_count = 0;
    rd->sub.cb_count = 0;

    ngx_stream_im_redis_close_one(&rd->cmd);
    ngx_stream_im_redis_close_one(&rd->sub);
}


static void
ngx_stream_im_redis_start_link(void)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    rd->state = NGX_STREAM_IM_REDIS_CONNECTING;

    if (ngx_stream_im_redis_connect_one(&rd->cmd) != NGX_OK
        || ngx_stream_im_redis_connect_one(&rd->sub) != NGX_OK)
    {
        ngx_stream_im_redis_fail("cannot connect");
    }
}


static ngx_int_t
ngx_stream_im_redis_connect_one(ngx_stream_im_redis_conn_t *rc)
{
    ngx_int_t               rv;
    ngx_connection_t       *c;
    ngx_peer_connection_t   pc;

    rc->reader = redisReaderCreate();
    if (rc->reader == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(&pc, sizeof(ngx_peer_connection_t));

    pc.sockaddr = ngx_stream_im_redis.addr->sockaddr;
    pc.socklen = ngx_stream_im_redis.addr->socklen;
    pc.name = &ngx_stream_im_redis.addr->name;
    pc.get = ngx_event_get_peer;
    pc.log = &ngx_stream_im_redis_log;
    pc.log_error = NGX_ERROR_ERR;

    rv = ngx_event_connect_peer(&pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        return NGX_ERROR;
    }

    c = pc.connection;
    c->data = rc;
    c->log = &ngx_stream_im_redis_log;
    c->read->handler = ngx_stream_im_redis_read_handler;
    c->write->handler = ngx_stream_im_redis_write_handler;

    rc->connection = c;

    if (rv == NGX_AGAIN) {
        ngx_add_timer(c->write, NGX_STREAM_IM_REDIS_TIMEOUT);
        return NGX_OK;
    }

    ngx_stream_im_redis_connected(rc);

    return NGX_OK;
}


static void
ngx_stream_im_redis_connected(ngx_stream_im_redis_conn_t *rc)
{
    ngx_uint_t              i;
    ngx_str_t               argv[3];
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    rc->connected = 1;

    if (!rd->cmd.connected || !rd->sub.connected) {
        return;
    }

    /*
     * Both sockets are up: load the script (a restarted Redis has lost
     * it), subscribe, and only then take commands from sessions.
     */

    rd->state = NGX_STREAM_IM_REDIS_LOADING;
    rd->pending = NGX_STREAM_IM_SCRIPTS + 1;

    for (i = 0; i < NGX_STREAM_IM_SCRIPTS; i++) {
        ngx_str_set(&argv[0], "SCRIPT");
        ngx_str_set(&argv[1], "LOAD");
        argv[2] = ngx_stream_im_scripts[i].text;

        if (ngx_stream_im_redis_send(&rd->cmd, 3, argv,
                                     ngx_stream_im_redis_loaded, NULL)
            != NGX_OK)
        {
            ngx_stream_im_redis_fail("no memory");
            return;
        }
    }

    ngx_str_set(&argv[0], "SUBSCRIBE");
    argv[1] = rd->channel;

    if (ngx_stream_im_redis_send(&rd->sub, 2, argv,
                                 ngx_stream_im_redis_loaded, NULL)
        != NGX_OK)
    {
        ngx_stream_im_redis_fail("no memory");
    }
}


static void
ngx_stream_im_redis_loaded(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL) {
        return;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "redis refused setup: %s", r->str);
        ngx_stream_im_redis_fail("setup failed");
        return;
    }

    if (--rd->pending) {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "redis %V is up, channel \"%V\"", &rd->addr->name,
                  &rd->channel);

    rd->state = NGX_STREAM_IM_REDIS_UP;
    rd->backoff = NGX_STREAM_IM_REDIS_BACKOFF_MIN;

    ngx_stream_im_redis_heartbeat_handler(&rd->heartbeat);

    /* sessions re-register and catch up on what they missed meanwhile */

    ngx_stream_im_router_redis_up();
}


/*
 * Any fault drops both sockets: pending commands are answered with
 * NULL, sessions stay up, and the link comes back after a backoff.
 */

static void
ngx_stream_im_redis_fail(char *why)
{
    ngx_msec_t              delay;
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->state == NGX_STREAM_IM_REDIS_DOWN) {
        return;
    }

    rd->state = NGX_STREAM_IM_REDIS_DOWN;
    rd->heartbeat_pending = 0;

    ngx_stream_im_redis_close_one(&rd->cmd);
    ngx_stream_im_redis_close_one(&rd->sub);

    if (rd->heartbeat.timer_set) {
        ngx_del_timer(&rd->heartbeat);
    }

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "redis %V: %s, worker is exiting", &rd->addr->name,
                      why);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "redis %V: %s, reconnecting", &rd->addr->name, why);

    /* capped exponential backoff, jittered so workers do not stampede */

    delay = rd->backoff + (ngx_msec_t) ngx_random() % (rd->backoff / 2 + 1);

    rd->backoff = ngx_min(rd->backoff * 2, NGX_STREAM_IM_REDIS_BACKOFF_MAX);

    ngx_add_timer(&rd->reconnect, delay);
}


static void
ngx_stream_im_redis_close_one(ngx_stream_im_redis_conn_t *rc)
{
    ngx_stream_im_redis_cb_t  *cb;
    ngx_stream_im_session_t   *ctx;

    if (rc->connection) {
        ngx_close_connection(rc->connection);
        rc->connection = NULL;
    }

    if (rc->reader) {
        redisReaderFree(rc->reader);
        rc->reader = NULL;
    }

    rc->connected = 0;
    rc->out_pos = 0;
    rc->out_len = 0;

    while (rc->cb_count) {
        cb = &rc->cbs[rc->cb_head];

        rc->cb_head = (rc->cb_head + 1) & (rc->cb_size - 1);
        rc->cb_count--;

        if (cb->handler == NULL) {
            continue;
        }

        ctx = ngx_stream_im_session_lookup(&cb->ref);

        if (ctx || cb->ref.number == 0) {
            cb->handler(ctx, &cb->ref, NULL);
        }
    }

    rc->cb_head = 0;
}


static void
ngx_stream_im_redis_reconnect_handler(ngx_event_t *ev)
{
    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_stream_im_redis_start_link();
}


static void
ngx_stream_im_redis_heartbeat_handler(ngx_event_t *ev)
{
    ngx_str_t               argv[6];
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->state != NGX_STREAM_IM_REDIS_UP) {
        return;
    }

    /* a Redis that stopped answering without closing is down too */

    if (rd->heartbeat_pending) {
        ngx_stream_im_redis_fail("no reply for a heartbeat period");
        return;
    }

    /* routes to this worker count only while this key lives */

    ngx_str_set(&argv[0], "SET");
    argv[1] = rd->alive;
    ngx_str_set(&argv[2], "1");
    ngx_str_set(&argv[3], "PX");
    ngx_str_set(&argv[4], NGX_STREAM_IM_REDIS_ALIVE_TTL);

    if (ngx_stream_im_redis_send(&rd->cmd, 5, argv,
                                 ngx_stream_im_redis_heartbeat_reply, NULL)
        == NGX_OK)
    {
        rd->heartbeat_pending = 1;
    }

    ngx_add_timer(&rd->heartbeat, NGX_STREAM_IM_REDIS_HEARTBEAT);
}


static void
ngx_stream_im_redis_heartbeat_reply(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis.heartbeat_pending = 0;

    if (r && r->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "redis refused the heartbeat: %s", r->str);
    }
}


static void
ngx_stream_im_redis_read_handler(ngx_event_t *rev)
{
    ssize_t                      n;
    redisReply                  *r;
    ngx_connection_t            *c;
    ngx_stream_im_redis_conn_t  *rc;

    c = rev->data;
    rc = c->data;

    if (c->close) {

        /*
         * worker_shutdown_timeout: the sessions are being closed and
         * their routes must still go out, so the link stays until exit
         */

        c->close = 0;
    }

    for ( ;; ) {
        n = c->recv(c, ngx_stream_im_redis_buf, NGX_STREAM_IM_REDIS_BUF);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_stream_im_redis_fail("connection closed");
            return;
        }

        if (redisReaderFeed(rc->reader, (char *) ngx_stream_im_redis_buf, n)
            != REDIS_OK)
        {
            ngx_stream_im_redis_fail("bad reply");
            return;
        }

        for ( ;; ) {
            if (redisReaderGetReply(rc->reader, (void **) &r) != REDIS_OK) {
                ngx_stream_im_redis_fail("bad reply");
                return;
            }

            if (r == NULL) {
                break;
            }

            if (ngx_stream_im_redis_reply(rc, r) != NGX_OK) {
                freeReplyObject(r);
                ngx_stream_im_redis_fail("unexpected reply");
                return;
            }

            freeReplyObject(r);

            if (rc->connection == NULL) {
                return;
            }
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_stream_im_redis_fail("event error");
    }
}


static ngx_int_t
ngx_stream_im_redis_reply(ngx_stream_im_redis_conn_t *rc, redisReply *r)
{
    ngx_stream_im_redis_cb_t   cb;
    ngx_stream_im_session_t   *ctx;

    if (rc->subscriber
        && r->type == REDIS_REPLY_ARRAY && r->elements == 3
        && r->element[0]->type == REDIS_REPLY_STRING
        && ngx_strcmp(r->element[0]->str, "message") == 0)
    {
        ngx_stream_im_redis_push(r);
        return NGX_OK;
    }

    if (rc->cb_count == 0) {
        return NGX_ERROR;
    }

    cb = rc->cbs[rc->cb_head];

    rc->cb_head = (rc->cb_head + 1) & (rc->cb_size - 1);
    rc->cb_count--;

    if (r->type == REDIS_REPLY_ERROR
        && ngx_strncmp(r->str, "NOSCRIPT", 8) == 0)
    {
        /* someone flushed the script cache: "unavailable", and reload */

        ctx = ngx_stream_im_session_lookup(&cb.ref);

        if (cb.handler && (ctx || cb.ref.number == 0)) {
            cb.handler(ctx, &cb.ref, NULL);
        }

        ngx_stream_im_redis_fail("script cache flushed");
        return NGX_OK;
    }

    if (cb.handler == NULL) {
        if (r->type == REDIS_REPLY_ERROR) {

            /* a script's refusal is the client's fault, not Redis' */

            if (ngx_stream_im_redis_refusal(r)) {
                ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                              "request refused: %s", r->str);

            } else {
                ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                              "redis error: %s", r->str);
            }
        }

        return NGX_OK;
    }

    ctx = ngx_stream_im_session_lookup(&cb.ref);

    if (ctx || cb.ref.number == 0) {
        cb.handler(ctx, &cb.ref, r);
    }

    return NGX_OK;
}


static u_char *
ngx_stream_im_redis_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    ngx_stream_im_redis_t *rd = log->data;

    return ngx_snprintf(buf, len, " while %s %V", log->action,
                        &rd->addr->name);
}


/* the scripts refuse bad requests with "<CODE> <reason>" */

ngx_int_t
ngx_stream_im_redis_refusal(redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR
           && (ngx_strncmp(r->str, "FORBIDDEN ", 10) == 0
               || ngx_strncmp(r->str, "TOO_LARGE ", 10) == 0
               || ngx_strncmp(r->str, "NOT_FOUND ", 10) == 0);
}


/* a message on the worker's route channel, or on a presence channel */

static void
ngx_stream_im_redis_push(redisReply *r)
{
    ngx_str_t    channel, payload, user;
    redisReply  *ch, *p;

    ch = r->element[1];
    p = r->element[2];

    if (ch->type != REDIS_REPLY_STRING || p->type != REDIS_REPLY_STRING) {
        return;
    }

    channel.data = (u_char *) ch->str;
    channel.len = ch->len;

    payload.data = (u_char *) p->str;
    payload.len = p->len;

    if (channel.len == ngx_stream_im_redis.channel.len
        && ngx_strncmp(channel.data, ngx_stream_im_redis.channel.data,
                       channel.len)
           == 0)
    {
        ngx_stream_im_router_deliver(&payload);
        return;
    }

    if (channel.len > sizeof("im:presence:") - 1
        && ngx_strncmp(channel.data, "im:presence:",
                       sizeof("im:presence:") - 1)
           == 0)
    {
        user.data = channel.data + sizeof("im:presence:") - 1;
        user.len = channel.len - (sizeof("im:presence:") - 1);

        ngx_stream_im_presence_event(&user, &payload);
    }
}


/* SUBSCRIBE or UNSUBSCRIBE on the subscriber connection */

ngx_int_t
ngx_stream_im_redis_subscribe(ngx_str_t *argv)
{
    if (ngx_stream_im_redis.state != NGX_STREAM_IM_REDIS_UP) {
        return NGX_DECLINED;
    }

    return ngx_stream_im_redis_send(&ngx_stream_im_redis.sub, 2, argv, NULL,
                                    NULL);
}


static void
ngx_stream_im_redis_write_handler(ngx_event_t *wev)
{
    int                          err;
    ssize_t                      n;
    socklen_t                    len;
    ngx_connection_t            *c;
    ngx_stream_im_redis_conn_t  *rc;

    c = wev->data;
    rc = c->data;

    if (!rc->connected) {

        if (wev->timedout) {
            ngx_stream_im_redis_fail("connect timed out");
            return;
        }

        if (wev->timer_set) {
            ngx_del_timer(wev);
        }

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_log_error(NGX_LOG_ERR, c->log, err, "connect() to %V failed",
                          &ngx_stream_im_redis.addr->name);
            ngx_stream_im_redis_fail("cannot connect");
            return;
        }

        ngx_stream_im_redis_connected(rc);

        if (rc->connection == NULL) {
            return;
        }
    }

    while (rc->out_pos < rc->out_len) {
        n = c->send(c, rc->out + rc->out_pos, rc->out_len - rc->out_pos);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR) {
            ngx_stream_im_redis_fail("send failed");
            return;
        }

        rc->out_pos += n;
    }

    if (rc->out_pos == rc->out_len) {
        rc->out_pos = 0;
        rc->out_len = 0;
        return;
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ngx_stream_im_redis_fail("event error");
    }
}


static ngx_int_t
ngx_stream_im_redis_send(ngx_stream_im_redis_conn_t *rc, ngx_uint_t argc,
    ngx_str_t *argv, ngx_stream_im_redis_handler_pt handler,
    ngx_stream_im_ref_t *ref)
{
    if (ngx_stream_im_redis_push_cb(rc, handler, ref) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_stream_im_redis_append(rc, argc, argv) != NGX_OK) {
        rc->cb_count--;
        return NGX_ERROR;
    }

    /* what the rest of this event loop turn adds goes in the same write */

    if (rc->connected) {
        ngx_post_event(rc->connection->write, &ngx_posted_events);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_redis_append(ngx_stream_im_redis_conn_t *rc, ngx_uint_t argc,
    ngx_str_t *argv)
{
    u_char      *p;
    size_t       need, size;
    ngx_uint_t   i;

    need = sizeof("*\r\n") - 1 + NGX_INT_T_LEN;

    for (i = 0; i < argc; i++) {
        need += sizeof("$\r\n\r\n") - 1 + NGX_SIZE_T_LEN + argv[i].len;
    }

    if (rc->out_len + need > rc->out_size) {

        if (rc->out_len + need > NGX_STREAM_IM_REDIS_OUT_MAX) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "redis output buffer is full");
            return NGX_ERROR;
        }

        size = ngx_max(rc->out_size * 2, rc->out_len + need);
        size = ngx_max(size, NGX_STREAM_IM_REDIS_BUF);

        p = ngx_alloc(size, ngx_cycle->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (rc->out) {
            ngx_memcpy(p, rc->out + rc->out_pos, rc->out_len - rc->out_pos);
            ngx_free(rc->out);
        }

        rc->out_len -= rc->out_pos;
        rc->out_pos = 0;
        rc->out = p;
        rc->out_size = size;
    }

    p = rc->out + rc->out_len;

    p = ngx_sprintf(p, "*%ui\r\n", argc);

    for (i = 0; i < argc; i++) {
        p = ngx_sprintf(p, "$%uz\r\n", argv[i].len);
        p = ngx_cpymem(p, argv[i].data, argv[i].len);
        *p++ = CR;
        *p++ = LF;
    }

    rc->out_len = p - rc->out;

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_redis_push_cb(ngx_stream_im_redis_conn_t *rc,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref)
{
    ngx_uint_t                 i, size;
    ngx_stream_im_redis_cb_t  *cbs, *cb;

    if (rc->cb_count == rc->cb_size) {
        size = rc->cb_size ? rc->cb_size * 2 : 256;

        cbs = ngx_alloc(size * sizeof(ngx_stream_im_redis_cb_t),
                        ngx_cycle->log);
        if (cbs == NULL) {
            return NGX_ERROR;
        }

        for (i = 0; i < rc->cb_count; i++) {
            cbs[i] = rc->cbs[(rc->cb_head + i) & (rc->cb_size - 1)];
        }

        if (rc->cbs) {
            ngx_free(rc->cbs);
        }

        rc->cbs = cbs;
        rc->cb_head = 0;
        rc->cb_size = size;
    }

    cb = &rc->cbs[(rc->cb_head + rc->cb_count) & (rc->cb_size - 1)];

    cb->handler = handler;

    if (ref) {
        cb->ref = *ref;

    } else {
        ngx_memzero(&cb->ref, sizeof(ngx_stream_im_ref_t));
    }

    rc->cb_count++;

    return NGX_OK;
}
