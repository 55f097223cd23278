
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>
#include <ngx_sha1.h>

#include <poll.h>

#include "ngx_stream_im.h"


/*
 * The worker's link to Redis: two sockets owned by nginx, one for
 * commands and one for the worker's route channel subscription.  hiredis
 * only parses replies; commands are written in RESP straight into one
 * output buffer, so every command of an event loop turn goes out in one
 * write.  Replies come back in order and find their callbacks in a ring;
 * a callback gets back the ref it was queued with, by which it finds its
 * session, never by a pointer that a closed connection left dangling.
 *
 * The link knows nothing of what runs above it: channel messages go to
 * the handlers registered for their channel's prefix, and "ready" (the
 * scripts are loaded and the subscription is answered, or the worker's
 * routes lapsed while the link stayed up) goes to the ready handlers.
 *
 *     DOWN -> CONNECTING -> LOADING -> READY -> DRAINING (worker exit)
 *
 * Only READY takes commands from above and passes channel messages on;
 * what arrives before it is covered by the catch-up the ready handlers
 * start.  Any fault goes back to DOWN, and a backoff later, CONNECTING.
 */


#define NGX_STREAM_IM_REDIS_DOWN        0
#define NGX_STREAM_IM_REDIS_CONNECTING  1
#define NGX_STREAM_IM_REDIS_LOADING     2
#define NGX_STREAM_IM_REDIS_READY       3
#define NGX_STREAM_IM_REDIS_DRAINING    4

#define NGX_STREAM_IM_REDIS_BUF         16384
#define NGX_STREAM_IM_REDIS_READ_MAX    (256 * 1024)
#define NGX_STREAM_IM_REDIS_REPLIES_MAX 1024
#define NGX_STREAM_IM_REDIS_ARGS        16
#define NGX_STREAM_IM_REDIS_HANDLERS    4
#define NGX_STREAM_IM_REDIS_EXIT_WAIT   1000
#define NGX_STREAM_IM_REDIS_OUT_MAX     (64 * 1024 * 1024)
#define NGX_STREAM_IM_REDIS_TIMEOUT     3000
#define NGX_STREAM_IM_REDIS_BACKOFF_MIN 100
#define NGX_STREAM_IM_REDIS_BACKOFF_MAX 5000
#define NGX_STREAM_IM_REDIS_HEARTBEAT   5000
#define NGX_STREAM_IM_REDIS_ALIVE_TTL   "15000"
#define NGX_STREAM_IM_REDIS_STALL       12000


typedef struct {
    ngx_stream_im_redis_handler_pt  handler;
    ngx_stream_im_ref_t             ref;
    uint32_t                        start;      /* for the roundtrip */
} ngx_stream_im_redis_cb_t;


typedef struct {
    ngx_str_t                       prefix;
    ngx_stream_im_redis_message_pt  handler;
} ngx_stream_im_redis_sub_t;


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
    ngx_uint_t                      pending;    /* replies before READY */
    ngx_uint_t                      heartbeat_pending;
    ngx_uint_t                      pong_pending;
    ngx_uint_t                      alive_set;  /* a heartbeat was stored */
    ngx_uint_t                      stalled;    /* resync started for it */
    ngx_msec_t                      alive_at;   /* last heartbeat stored */
    ngx_uint_t                      nsubs;
    ngx_uint_t                      nready;
    ngx_stream_im_redis_sub_t       subs[NGX_STREAM_IM_REDIS_HANDLERS];
    ngx_stream_im_redis_ready_pt    ready[NGX_STREAM_IM_REDIS_HANDLERS];
    ngx_uint_t                      ups;        /* times it was READY */
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
static void ngx_stream_im_redis_loaded(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_call_ready(ngx_uint_t fresh);
static void ngx_stream_im_redis_fail(char *why);
static void ngx_stream_im_redis_close_one(ngx_stream_im_redis_conn_t *rc);
static void ngx_stream_im_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_heartbeat_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_heartbeat_reply(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_pong(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_check_stall(void);
static void ngx_stream_im_redis_read_handler(ngx_event_t *rev);
static void ngx_stream_im_redis_write_handler(ngx_event_t *wev);
static ngx_int_t ngx_stream_im_redis_reply(ngx_stream_im_redis_conn_t *rc,
    redisReply *r);
static void ngx_stream_im_redis_push(redisReply *r);
static void ngx_stream_im_redis_flush_sync(ngx_stream_im_redis_conn_t *rc,
    ngx_msec_t timeout);
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
    u_char                  *p;
    ngx_uint_t               i;
    ngx_sha1_t               sha1;
    ngx_stream_im_redis_t   *rd;
    ngx_stream_im_script_t  *sc;
    u_char                   digest[20];

    rd = &ngx_stream_im_redis;

    rd->addr = addr;
    rd->cmd.subscriber = 0;
    rd->sub.subscriber = 1;

    /* errors of the Redis sockets say what they are about */

    ngx_stream_im_redis_log = *cycle->log;
    ngx_stream_im_redis_log.handler = ngx_stream_im_redis_log_error;
    ngx_stream_im_redis_log.data = rd;
    ngx_stream_im_redis_log.action = "talking to redis";

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

    return NGX_OK;
}


/* the handlers are registered: connect */

void
ngx_stream_im_redis_start(void)
{
    ngx_stream_im_redis_start_link();
}


/* messages on channels that start with prefix go to handler */

ngx_int_t
ngx_stream_im_redis_on_message(ngx_str_t *prefix,
    ngx_stream_im_redis_message_pt handler)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->nsubs == NGX_STREAM_IM_REDIS_HANDLERS) {
        return NGX_ERROR;
    }

    rd->subs[rd->nsubs].prefix = *prefix;
    rd->subs[rd->nsubs].handler = handler;
    rd->nsubs++;

    return NGX_OK;
}


ngx_int_t
ngx_stream_im_redis_on_ready(ngx_stream_im_redis_ready_pt handler)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->nready == NGX_STREAM_IM_REDIS_HANDLERS) {
        return NGX_ERROR;
    }

    rd->ready[rd->nready++] = handler;

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
    return ngx_stream_im_redis.state == NGX_STREAM_IM_REDIS_READY;
}


/* how many commands wait for their replies */

ngx_uint_t
ngx_stream_im_redis_pending(void)
{
    return ngx_stream_im_redis.cmd.cb_count;
}


/*
 * Queues a command; its reply, or NULL if the link broke first, reaches
 * handler with the ref given here (handler may be NULL).
 */

ngx_int_t
ngx_stream_im_redis_command(ngx_uint_t argc, ngx_str_t *argv,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref)
{
    if (ngx_stream_im_redis.state != NGX_STREAM_IM_REDIS_READY) {
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
    ngx_int_t    rc;
    ngx_uint_t   i, n;
    ngx_str_t   *argv;
    ngx_str_t    stack[NGX_STREAM_IM_REDIS_ARGS];
    u_char       num[NGX_INT_T_LEN];

    /* a client's list (PresenceSub) may be long: never a fixed array */

    n = 3 + nkeys + nargs;

    if (n <= NGX_STREAM_IM_REDIS_ARGS) {
        argv = stack;

    } else {
        argv = ngx_alloc(n * sizeof(ngx_str_t), ngx_cycle->log);
        if (argv == NULL) {
            return NGX_ERROR;
        }
    }

    ngx_str_set(&argv[0], "EVALSHA");

    argv[1].data = ngx_stream_im_scripts[script].sha;
    argv[1].len = 40;

    argv[2].data = num;
    argv[2].len = ngx_sprintf(num, "%ui", nkeys) - num;

    n = 3;

    for (i = 0; i < nkeys; i++) {
        argv[n++] = keys[i];
    }

    for (i = 0; i < nargs; i++) {
        argv[n++] = args[i];
    }

    rc = ngx_stream_im_redis_command(n, argv, handler, ref);

    if (argv != stack) {
        ngx_free(argv);
    }

    return rc;
}


/*
 * The worker is leaving: what it queued (the routes of its sessions)
 * goes out, and its routes are dead now, not in 15 seconds.  It waits a
 * little for the replies: a socket closed with replies unread is reset,
 * and a reset may take the last commands with it.
 */

void
ngx_stream_im_redis_exit_worker(void)
{
    ngx_str_t                    argv[2];
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_conn_t  *rc;

    rd = &ngx_stream_im_redis;
    rc = &rd->cmd;

    if (rd->state == NGX_STREAM_IM_REDIS_READY) {
        rd->state = NGX_STREAM_IM_REDIS_DRAINING;

        ngx_str_set(&argv[0], "DEL");
        argv[1] = rd->alive;

        if (ngx_stream_im_redis_send(rc, 2, argv, NULL, NULL) == NGX_OK) {
            ngx_stream_im_redis_flush_sync(rc, NGX_STREAM_IM_REDIS_EXIT_WAIT);
        }
    }

    /* no session waits for a reply any more */

    rd->state = NGX_STREAM_IM_REDIS_DOWN;
    rd->cmd.cb_count = 0;
    rd->sub.cb_count = 0;

    ngx_stream_im_redis_close_one(&rd->cmd);
    ngx_stream_im_redis_close_one(&rd->sub);

    ngx_free(rd->cmd.out);
    ngx_free(rd->sub.out);
    ngx_free(rd->cmd.cbs);
    ngx_free(rd->sub.cbs);

    ngx_memzero(&rd->cmd, sizeof(ngx_stream_im_redis_conn_t));
    ngx_memzero(&rd->sub, sizeof(ngx_stream_im_redis_conn_t));
}


/* at exit only: write out what is queued and read every reply, in time */

static void
ngx_stream_im_redis_flush_sync(ngx_stream_im_redis_conn_t *rc,
    ngx_msec_t timeout)
{
    int                events;
    ssize_t            n;
    ngx_msec_t         start, left;
    redisReply        *r;
    struct pollfd      pfd;
    ngx_connection_t  *c;

    c = rc->connection;

    if (c == NULL || !rc->connected) {
        return;
    }

    ngx_time_update();
    start = ngx_current_msec;

    while (rc->cb_count) {

        left = timeout - (ngx_current_msec - start);

        if ((ngx_msec_int_t) left <= 0) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "redis %V: %ui replies not read at exit",
                          &ngx_stream_im_redis.addr->name, rc->cb_count);
            return;
        }

        events = POLLIN;

        if (rc->out_pos < rc->out_len) {
            events |= POLLOUT;
        }

        pfd.fd = c->fd;
        pfd.events = (short) events;
        pfd.revents = 0;

        if (poll(&pfd, 1, (int) left) == -1 && ngx_errno != NGX_EINTR) {
            return;
        }

        ngx_time_update();

        if (pfd.revents & POLLOUT) {
            n = c->send(c, rc->out + rc->out_pos, rc->out_len - rc->out_pos);

            if (n == NGX_ERROR) {
                return;
            }

            if (n > 0) {
                rc->out_pos += n;
            }
        }

        if (!(pfd.revents & (POLLIN|POLLHUP|POLLERR))) {
            continue;
        }

        n = c->recv(c, ngx_stream_im_redis_buf, NGX_STREAM_IM_REDIS_BUF);

        if (n == NGX_AGAIN) {
            continue;
        }

        if (n == NGX_ERROR || n == 0
            || redisReaderFeed(rc->reader, (char *) ngx_stream_im_redis_buf, n)
               != REDIS_OK)
        {
            return;
        }

        while (rc->cb_count) {
            if (redisReaderGetReply(rc->reader, (void **) &r) != REDIS_OK) {
                return;
            }

            if (r == NULL) {
                break;
            }

            freeReplyObject(r);

            rc->cb_head = (rc->cb_head + 1) & (rc->cb_size - 1);
            rc->cb_count--;
        }
    }
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
     * Both sockets are up: load the scripts (a restarted Redis has lost
     * them), subscribe, and only then take commands from sessions.
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
ngx_stream_im_redis_loaded(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL || rd->state != NGX_STREAM_IM_REDIS_LOADING) {
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

    rd->state = NGX_STREAM_IM_REDIS_READY;
    rd->backoff = NGX_STREAM_IM_REDIS_BACKOFF_MIN;

    if (rd->ups++) {
        ngx_stream_im_metrics_count(NGX_STREAM_IM_M_RECONNECTS);
    }

    ngx_stream_im_redis_heartbeat_handler(&rd->heartbeat);

    /* the subscriptions are new and anything may have been missed */

    ngx_stream_im_redis_call_ready(1);
}


static void
ngx_stream_im_redis_call_ready(ngx_uint_t fresh)
{
    ngx_uint_t              i;
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    for (i = 0; i < rd->nready && rd->state == NGX_STREAM_IM_REDIS_READY; i++)
    {
        rd->ready[i](fresh);
    }
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
    ngx_stream_im_metrics_link(0, 0);

    rd->heartbeat_pending = 0;
    rd->pong_pending = 0;
    rd->alive_set = 0;
    rd->stalled = 0;

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

        if (cb->handler) {
            cb->handler(&cb->ref, NULL);
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

    /* /health sees a worker that retries, not one that stalled */

    ngx_stream_im_metrics_link(0, 0);

    ngx_stream_im_redis_start_link();
}


static void
ngx_stream_im_redis_heartbeat_handler(ngx_event_t *ev)
{
    ngx_str_t               argv[6];
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->state != NGX_STREAM_IM_REDIS_READY) {
        return;
    }

    /*
     * A Redis that stopped answering without closing is down too, on
     * either socket: a subscriber connection dropped silently on the way
     * would leave every session deaf while sends still work.
     */

    if (rd->heartbeat_pending || rd->pong_pending) {
        ngx_stream_im_redis_fail("no reply for a heartbeat period");
        return;
    }

    ngx_stream_im_redis_check_stall();

    if (rd->state != NGX_STREAM_IM_REDIS_READY) {
        return;
    }

    /* both sockets answered the last heartbeat */

    ngx_stream_im_metrics_link(1, 1);

    ngx_str_set(&argv[0], "PING");

    if (ngx_stream_im_redis_send(&rd->sub, 1, argv, ngx_stream_im_redis_pong,
                                 NULL)
        == NGX_OK)
    {
        rd->pong_pending = 1;
    }

    /*
     * Routes to this worker count only while this key lives; GET tells
     * whether it lapsed meanwhile (the worker was stalled).
     */

    ngx_str_set(&argv[0], "SET");
    argv[1] = rd->alive;
    ngx_str_set(&argv[2], "1");
    ngx_str_set(&argv[3], "PX");
    ngx_str_set(&argv[4], NGX_STREAM_IM_REDIS_ALIVE_TTL);
    ngx_str_set(&argv[5], "GET");

    if (ngx_stream_im_redis_send(&rd->cmd, 6, argv,
                                 ngx_stream_im_redis_heartbeat_reply, NULL)
        == NGX_OK)
    {
        rd->heartbeat_pending = 1;
    }

    ngx_add_timer(&rd->heartbeat, NGX_STREAM_IM_REDIS_HEARTBEAT);
}


static void
ngx_stream_im_redis_heartbeat_reply(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    rd->heartbeat_pending = 0;

    if (r == NULL) {
        return;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "redis refused the heartbeat: %s", r->str);
        return;
    }

    rd->alive_at = ngx_current_msec;
    rd->stalled = 0;

    if (r->type == REDIS_REPLY_NIL && rd->alive_set) {

        /*
         * The key expired under a live link: other workers have dropped
         * this worker's routes and published past it.
         */

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "redis %V: the routes of this worker lapsed, "
                      "registering them again", &rd->addr->name);

        ngx_stream_im_redis_call_ready(0);
    }

    rd->alive_set = 1;
}


static void
ngx_stream_im_redis_pong(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis.pong_pending = 0;
}


/*
 * The worker was stopped or starved long enough for its alive key to
 * lapse: other workers may have dropped its routes and published past
 * it.  Checked before channel messages are passed on, since after a
 * stall the sockets are read before the heartbeat timer runs.
 */

static void
ngx_stream_im_redis_check_stall(void)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->state != NGX_STREAM_IM_REDIS_READY || !rd->alive_set
        || rd->stalled
        || ngx_current_msec - rd->alive_at < NGX_STREAM_IM_REDIS_STALL)
    {
        return;
    }

    rd->stalled = 1;

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "redis %V: no heartbeat stored for %M ms, the routes of "
                  "this worker may have lapsed, registering them again",
                  &rd->addr->name, ngx_current_msec - rd->alive_at);

    ngx_stream_im_redis_call_ready(0);
}


/*
 * Replies are handled up to a count and a byte budget per event; the
 * rest waits for the next turn of the event loop, after other sockets.
 */

static void
ngx_stream_im_redis_read_handler(ngx_event_t *rev)
{
    size_t                       bytes;
    ssize_t                      n;
    ngx_uint_t                   replies;
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

    bytes = 0;
    replies = 0;

    if (rc->subscriber) {
        ngx_stream_im_redis_check_stall();
    }

    for ( ;; ) {

        while (replies < NGX_STREAM_IM_REDIS_REPLIES_MAX) {
            if (redisReaderGetReply(rc->reader, (void **) &r) != REDIS_OK) {
                ngx_stream_im_redis_fail("bad reply");
                return;
            }

            if (r == NULL) {
                break;
            }

            replies++;

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

        if (replies == NGX_STREAM_IM_REDIS_REPLIES_MAX
            || bytes >= NGX_STREAM_IM_REDIS_READ_MAX)
        {
            ngx_post_event(rev, &ngx_posted_next_events);
            return;
        }

        n = c->recv(c, ngx_stream_im_redis_buf, NGX_STREAM_IM_REDIS_BUF);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_stream_im_redis_fail("connection closed");
            return;
        }

        bytes += n;

        if (redisReaderFeed(rc->reader, (char *) ngx_stream_im_redis_buf, n)
            != REDIS_OK)
        {
            ngx_stream_im_redis_fail("bad reply");
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_stream_im_redis_fail("event error");
    }
}


static ngx_int_t
ngx_stream_im_redis_reply(ngx_stream_im_redis_conn_t *rc, redisReply *r)
{
    ngx_stream_im_redis_cb_t  cb;

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

    ngx_stream_im_metrics_observe(NGX_STREAM_IM_M_ROUNDTRIP, cb.start);

    if (r->type == REDIS_REPLY_ERROR
        && ngx_strncmp(r->str, "NOSCRIPT", 8) == 0)
    {
        /* someone flushed the script cache: "unavailable", and reload */

        if (cb.handler) {
            cb.handler(&cb.ref, NULL);
        }

        ngx_stream_im_redis_fail("script cache flushed");
        return NGX_OK;
    }

    if (cb.handler) {
        cb.handler(&cb.ref, r);
        return NGX_OK;
    }

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
               || ngx_strncmp(r->str, "NOT_FOUND ", 10) == 0
               || ngx_strncmp(r->str, "CONFLICT ", 9) == 0);
}


/*
 * A message on a subscribed channel, to the handler of its prefix; only
 * a ready link passes it on: before, the catch-up of "ready" covers it.
 */

static void
ngx_stream_im_redis_push(redisReply *r)
{
    ngx_str_t                   channel, payload;
    ngx_uint_t                  i;
    redisReply                 *ch, *p;
    ngx_stream_im_redis_t      *rd;
    ngx_stream_im_redis_sub_t  *sub;

    rd = &ngx_stream_im_redis;

    ch = r->element[1];
    p = r->element[2];

    if (rd->state != NGX_STREAM_IM_REDIS_READY
        || ch->type != REDIS_REPLY_STRING || p->type != REDIS_REPLY_STRING)
    {
        return;
    }

    channel.data = (u_char *) ch->str;
    channel.len = ch->len;

    payload.data = (u_char *) p->str;
    payload.len = p->len;

    for (i = 0; i < rd->nsubs; i++) {
        sub = &rd->subs[i];

        if (channel.len >= sub->prefix.len
            && ngx_strncmp(channel.data, sub->prefix.data, sub->prefix.len)
               == 0)
        {
            sub->handler(&channel, &payload);
            return;
        }
    }
}


/*
 * A command on the subscriber connection: SUBSCRIBE or UNSUBSCRIBE of
 * one channel, or PING, each answered once.
 */

ngx_int_t
ngx_stream_im_redis_subscriber(ngx_uint_t argc, ngx_str_t *argv,
    ngx_stream_im_redis_handler_pt handler)
{
    if (ngx_stream_im_redis.state != NGX_STREAM_IM_REDIS_READY) {
        return NGX_DECLINED;
    }

    return ngx_stream_im_redis_send(&ngx_stream_im_redis.sub, argc, argv,
                                    handler, NULL);
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
    cb->start = ngx_stream_im_metrics_clock();

    if (ref) {
        cb->ref = *ref;

    } else {
        ngx_memzero(&cb->ref, sizeof(ngx_stream_im_ref_t));
    }

    rc->cb_count++;

    return NGX_OK;
}
