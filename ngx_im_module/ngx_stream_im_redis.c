
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
 *     DOWN -> [RESOLVING] -> CONNECTING -> LOADING -> READY
 *                                              -> DRAINING (worker exit)
 *
 * Only READY takes commands from above and passes channel messages on;
 * what arrives before it is covered by the catch-up the ready handlers
 * start.  Any fault goes back to DOWN, and a backoff later, CONNECTING.
 *
 * Under Sentinel, RESOLVING asks one sentinel for the master on a short
 * query connection before each connect, and a third socket stays
 * subscribed to a sentinel's +switch-master to drop a demoted master at
 * once; a master must say "master" to ROLE before it is used, and a
 * READONLY or LOADING reply drops it.
 *
 * With im_redis_wait, the reply of a replicated script (a send) is held
 * until a WAIT behind it says enough replicas have it; one WAIT is in
 * flight at a time and covers every write before it.
 */


#define NGX_STREAM_IM_REDIS_DOWN        0
#define NGX_STREAM_IM_REDIS_RESOLVING   1
#define NGX_STREAM_IM_REDIS_CONNECTING  2
#define NGX_STREAM_IM_REDIS_LOADING     3
#define NGX_STREAM_IM_REDIS_READY       4
#define NGX_STREAM_IM_REDIS_DRAINING    5

/* the sockets: commands, the route channel, and the sentinels' two */
#define NGX_STREAM_IM_REDIS_CMD         0
#define NGX_STREAM_IM_REDIS_SUB         1
#define NGX_STREAM_IM_REDIS_QUERY       2
#define NGX_STREAM_IM_REDIS_WATCH       3

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
#define NGX_STREAM_IM_REDIS_LAPSED      3000
#define NGX_STREAM_IM_REDIS_SETUP       6000
#define NGX_STREAM_IM_REDIS_WATCH_RETRY 1000
#define NGX_STREAM_IM_REDIS_WATCH_MAX   30000
#define NGX_STREAM_IM_REDIS_SWITCH_GAP  1000
#define NGX_STREAM_IM_SENTINEL_REPLY    65536


typedef struct {
    ngx_stream_im_redis_handler_pt  handler;
    ngx_stream_im_ref_t             ref;
    uint32_t                        start;      /* for the roundtrip */
    uint32_t                        replicated; /* held for WAIT */
} ngx_stream_im_redis_cb_t;


typedef struct {
    ngx_str_t                       prefix;
    ngx_stream_im_redis_message_pt  handler;
} ngx_stream_im_redis_sub_t;


/* a reply held until the WAIT behind it is answered */

typedef struct {
    ngx_stream_im_redis_handler_pt  handler;
    ngx_stream_im_ref_t             ref;
    redisReply                     *reply;
} ngx_stream_im_redis_held_t;


typedef struct {
    ngx_connection_t               *connection;
    redisReader                    *reader;
    ngx_addr_t                     *addr;       /* the peer */
    ngx_log_t                       log;

    u_char                         *out;        /* commands not yet sent */
    size_t                          out_pos;
    size_t                          out_len;
    size_t                          out_size;

    ngx_stream_im_redis_cb_t       *cbs;        /* a ring, size power of 2 */
    ngx_uint_t                      cb_head;
    ngx_uint_t                      cb_count;
    ngx_uint_t                      cb_size;

    size_t                          partial;    /* fed, no reply yet */
    ngx_uint_t                      kind;
    unsigned                        connected:1;
} ngx_stream_im_redis_conn_t;


typedef struct {
    ngx_stream_im_redis_conn_t      cmd;
    ngx_stream_im_redis_conn_t      sub;
    ngx_stream_im_redis_conn_t      query;
    ngx_stream_im_redis_conn_t      watch;
    ngx_stream_im_redis_conf_t     *conf;
    ngx_addr_t                     *addr;       /* the Redis in use */
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
    ngx_uint_t                      cluster;    /* cluster_enabled:1 */
    ngx_uint_t                      unreplicated; /* releasing unconfirmed */
    ngx_msec_t                      backoff;
    ngx_event_t                     reconnect;
    ngx_event_t                     heartbeat;
    ngx_event_t                     setup;
    ngx_event_t                     lapsed;     /* routes set once more */
    ngx_str_t                       channel;
    ngx_str_t                       alive;

    /* Sentinel: the master's address as last resolved */
    ngx_addr_t                      master;
    ngx_sockaddr_t                  master_sockaddr;
    u_char                          master_text[NGX_SOCKADDR_STRLEN];
    ngx_uint_t                      sentinel;   /* the next to query */
    ngx_uint_t                      watched;    /* the next to watch */
    ngx_uint_t                      watch_pong_pending;
    ngx_msec_t                      watch_ping_at;
    ngx_msec_t                      watch_backoff;
    ngx_msec_t                      switched_at;
    ngx_event_t                     switch_later;
    u_char                          switch_to[NGX_SOCKADDR_STRLEN];
    size_t                          switch_to_len;
    ngx_event_t                     watch_retry;

    /* im_redis_wait */
    ngx_str_t                       wait_args[3];
    ngx_str_t                       wait_check[3];
    u_char                          wait_num[NGX_INT_T_LEN];
    u_char                          wait_ms[NGX_INT_T_LEN];
    ngx_uint_t                      wait_needed;   /* writes not covered */
    ngx_uint_t                      wait_inflight;
    ngx_stream_im_redis_held_t     *held;
    ngx_uint_t                      nheld;
    ngx_uint_t                      held_size;
} ngx_stream_im_redis_t;


static void ngx_stream_im_redis_timer(ngx_event_t *ev,
    ngx_event_handler_pt handler, ngx_cycle_t *cycle);
static ngx_int_t ngx_stream_im_redis_connect_one(
    ngx_stream_im_redis_conn_t *rc, ngx_addr_t *addr);
static void ngx_stream_im_redis_connected(ngx_stream_im_redis_conn_t *rc);
static ngx_int_t ngx_stream_im_redis_load(void);
static ngx_int_t ngx_stream_im_redis_auth(ngx_stream_im_redis_conn_t *rc,
    ngx_str_t *user, ngx_str_t *password,
    ngx_stream_im_redis_handler_pt handler);
static void ngx_stream_im_redis_start_link(void);
static void ngx_stream_im_redis_loaded(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_role(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_mode(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_sentinel_auth(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_resolved(ngx_stream_im_ref_t *ref,
    redisReply *r);
static ngx_int_t ngx_stream_im_redis_set_master(redisReply *ip,
    redisReply *port);
static void ngx_stream_im_redis_watch_start(void);
static void ngx_stream_im_redis_watch_fail(char *why);
static void ngx_stream_im_redis_watch_retry_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_watch_reply(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_switched(redisReply *r);
static void ngx_stream_im_redis_follow_switch(ngx_event_t *ev);
static void ngx_stream_im_redis_setup_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_call_ready(ngx_uint_t fresh);
static void ngx_stream_im_redis_fail(char *why);
static void ngx_stream_im_redis_conn_fail(ngx_stream_im_redis_conn_t *rc,
    char *why);
static ngx_int_t ngx_stream_im_redis_wait_append(void);
static void ngx_stream_im_redis_waited(ngx_stream_im_ref_t *ref,
    redisReply *r);
static ngx_int_t ngx_stream_im_redis_hold(ngx_stream_im_redis_cb_t *cb,
    redisReply *r);
static void ngx_stream_im_redis_release(ngx_uint_t ok);
static void ngx_stream_im_redis_hold_next(ngx_stream_im_redis_conn_t *rc);
static void ngx_stream_im_redis_close_one(ngx_stream_im_redis_conn_t *rc);
static void ngx_stream_im_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_heartbeat_handler(ngx_event_t *ev);
static void ngx_stream_im_redis_heartbeat_reply(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_redis_lapsed_handler(ngx_event_t *ev);
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
static ngx_int_t ngx_stream_im_redis_reserve(ngx_stream_im_redis_conn_t *rc,
    size_t need);
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
ngx_stream_im_redis_init_worker(ngx_cycle_t *cycle,
    ngx_stream_im_redis_conf_t *conf)
{
    u_char                  *p;
    ngx_uint_t               i;
    ngx_sha1_t               sha1;
    ngx_stream_im_redis_t   *rd;
    ngx_stream_im_script_t  *sc;
    u_char                   digest[20];

    rd = &ngx_stream_im_redis;

    rd->conf = conf;
    rd->addr = conf->addr;
    rd->cmd.kind = NGX_STREAM_IM_REDIS_CMD;
    rd->sub.kind = NGX_STREAM_IM_REDIS_SUB;
    rd->query.kind = NGX_STREAM_IM_REDIS_QUERY;
    rd->watch.kind = NGX_STREAM_IM_REDIS_WATCH;

    if (conf->sentinels) {

        /* named by the master's name until a sentinel tells its address */

        rd->master.name = conf->master;
        rd->addr = &rd->master;
    }

    if (conf->wait) {
        ngx_str_set(&rd->wait_check[0], "WAIT");
        ngx_str_set(&rd->wait_check[1], "0");
        ngx_str_set(&rd->wait_check[2], "1");

        ngx_str_set(&rd->wait_args[0], "WAIT");

        rd->wait_args[1].data = rd->wait_num;
        rd->wait_args[1].len = ngx_sprintf(rd->wait_num, "%ui", conf->wait)
                               - rd->wait_num;

        rd->wait_args[2].data = rd->wait_ms;
        rd->wait_args[2].len = ngx_sprintf(rd->wait_ms, "%M",
                                           conf->wait_timeout)
                               - rd->wait_ms;
    }

    /* errors of the Redis sockets say what they are about */

    ngx_stream_im_redis_log = *cycle->log;
    ngx_stream_im_redis_log.handler = ngx_stream_im_redis_log_error;
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

    ngx_stream_im_redis_timer(&rd->reconnect,
                              ngx_stream_im_redis_reconnect_handler, cycle);
    ngx_stream_im_redis_timer(&rd->heartbeat,
                              ngx_stream_im_redis_heartbeat_handler, cycle);
    ngx_stream_im_redis_timer(&rd->setup, ngx_stream_im_redis_setup_handler,
                              cycle);
    ngx_stream_im_redis_timer(&rd->lapsed, ngx_stream_im_redis_lapsed_handler,
                              cycle);
    ngx_stream_im_redis_timer(&rd->switch_later,
                              ngx_stream_im_redis_follow_switch, cycle);
    ngx_stream_im_redis_timer(&rd->watch_retry,
                              ngx_stream_im_redis_watch_retry_handler, cycle);

    rd->backoff = NGX_STREAM_IM_REDIS_BACKOFF_MIN;

    return NGX_OK;
}


/* the link's timers: not a connection's, never waited for at exit */

static void
ngx_stream_im_redis_timer(ngx_event_t *ev, ngx_event_handler_pt handler,
    ngx_cycle_t *cycle)
{
    ev->handler = handler;
    ev->data = &ngx_stream_im_timer_ident;
    ev->log = cycle->log;
    ev->cancelable = 1;
}


/* the handlers are registered: connect */

void
ngx_stream_im_redis_start(void)
{
    if (ngx_stream_im_redis.conf->sentinels) {
        ngx_stream_im_redis_watch_start();
    }

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

    if (rc == NGX_OK && ngx_stream_im_scripts[script].replicated
        && ngx_stream_im_redis.conf->wait)
    {
        ngx_stream_im_redis_hold_next(&ngx_stream_im_redis.cmd);
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
    ngx_uint_t                   i;
    ngx_str_t                    argv[2];
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_conn_t  *rc;

    rd = &ngx_stream_im_redis;
    rc = &rd->cmd;

    if (rd->state == NGX_STREAM_IM_REDIS_READY) {
        rd->state = NGX_STREAM_IM_REDIS_DRAINING;

        ngx_str_set(&argv[0], "DEL");
        argv[1] = rd->alive;

        /*
         * a WAIT in flight holds what is behind it, and Redis drops the
         * commands of a client that leaves while blocked: wait it out
         */

        if (ngx_stream_im_redis_send(rc, 2, argv, NULL, NULL) == NGX_OK) {
            ngx_stream_im_redis_flush_sync(rc, NGX_STREAM_IM_REDIS_EXIT_WAIT
                                   + (rd->wait_inflight
                                      ? rd->conf->wait_timeout : 0));
        }
    }

    /* no session waits for a reply any more */

    rd->state = NGX_STREAM_IM_REDIS_DOWN;
    rd->cmd.cb_count = 0;
    rd->sub.cb_count = 0;
    rd->query.cb_count = 0;
    rd->watch.cb_count = 0;

    for (i = 0; i < rd->nheld; i++) {
        freeReplyObject(rd->held[i].reply);
    }

    rd->nheld = 0;

    ngx_stream_im_redis_close_one(&rd->cmd);
    ngx_stream_im_redis_close_one(&rd->sub);
    ngx_stream_im_redis_close_one(&rd->query);
    ngx_stream_im_redis_close_one(&rd->watch);

    ngx_free(rd->cmd.out);
    ngx_free(rd->sub.out);
    ngx_free(rd->query.out);
    ngx_free(rd->watch.out);
    ngx_free(rd->cmd.cbs);
    ngx_free(rd->sub.cbs);
    ngx_free(rd->query.cbs);
    ngx_free(rd->watch.cbs);
    ngx_free(rd->held);

    rd->held = NULL;
    rd->held_size = 0;

    ngx_memzero(&rd->cmd, sizeof(ngx_stream_im_redis_conn_t));
    ngx_memzero(&rd->sub, sizeof(ngx_stream_im_redis_conn_t));
    ngx_memzero(&rd->query, sizeof(ngx_stream_im_redis_conn_t));
    ngx_memzero(&rd->watch, sizeof(ngx_stream_im_redis_conn_t));
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

        /*
         * not c->recv(): outside the event loop the read event does not
         * know what poll() saw, and with EPOLLRDHUP it would read nothing
         */

        n = recv(c->fd, ngx_stream_im_redis_buf, NGX_STREAM_IM_REDIS_BUF, 0);

        if (n == -1 && (ngx_errno == NGX_EAGAIN || ngx_errno == NGX_EINTR)) {
            continue;
        }

        if (n <= 0
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
    ngx_addr_t             *sentinel;
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    ngx_add_timer(&rd->setup, NGX_STREAM_IM_REDIS_SETUP);

    if (rd->conf->sentinels) {

        /* where the master is now, from one sentinel, then connect */

        rd->state = NGX_STREAM_IM_REDIS_RESOLVING;

        sentinel = rd->conf->sentinels->elts;

        if (ngx_stream_im_redis_connect_one(&rd->query,
                                            &sentinel[rd->sentinel])
            != NGX_OK)
        {
            ngx_stream_im_redis_conn_fail(&rd->query, "cannot connect");
        }

        return;
    }

    rd->state = NGX_STREAM_IM_REDIS_CONNECTING;

    if (ngx_stream_im_redis_connect_one(&rd->cmd, rd->addr) != NGX_OK
        || ngx_stream_im_redis_connect_one(&rd->sub, rd->addr) != NGX_OK)
    {
        ngx_stream_im_redis_fail("cannot connect");
    }
}


static ngx_int_t
ngx_stream_im_redis_connect_one(ngx_stream_im_redis_conn_t *rc,
    ngx_addr_t *addr)
{
    ngx_int_t               rv;
    ngx_connection_t       *c;
    ngx_peer_connection_t   pc;

    rc->addr = addr;

    rc->log = ngx_stream_im_redis_log;
    rc->log.data = rc;

    rc->reader = redisReaderCreate();
    if (rc->reader == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(&pc, sizeof(ngx_peer_connection_t));

    pc.sockaddr = addr->sockaddr;
    pc.socklen = addr->socklen;
    pc.name = &addr->name;
    pc.get = ngx_event_get_peer;
    pc.log = &rc->log;
    pc.log_error = NGX_ERROR_ERR;

    rv = ngx_event_connect_peer(&pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        return NGX_ERROR;
    }

    c = pc.connection;
    c->data = rc;
    c->log = &rc->log;
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
    ngx_str_t                    argv[3];
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_conf_t  *conf;

    rd = &ngx_stream_im_redis;
    conf = rd->conf;

    rc->connected = 1;

    switch (rc->kind) {

    case NGX_STREAM_IM_REDIS_QUERY:
        ngx_str_set(&argv[0], "SENTINEL");
        ngx_str_set(&argv[1], "get-master-addr-by-name");
        argv[2] = conf->master;

        if (ngx_stream_im_redis_auth(rc, &conf->sentinel_user,
                                     &conf->sentinel_password,
                                     ngx_stream_im_redis_sentinel_auth)
            != NGX_OK
            || ngx_stream_im_redis_send(rc, 3, argv,
                                        ngx_stream_im_redis_resolved, NULL)
               != NGX_OK)
        {
            ngx_stream_im_redis_fail("no memory");
        }

        return;

    case NGX_STREAM_IM_REDIS_WATCH:
        ngx_str_set(&argv[0], "SUBSCRIBE");
        ngx_str_set(&argv[1], "+switch-master");

        rd->watch_pong_pending = 0;

        if (ngx_stream_im_redis_auth(rc, &conf->sentinel_user,
                                     &conf->sentinel_password,
                                     ngx_stream_im_redis_watch_reply)
            != NGX_OK
            || ngx_stream_im_redis_send(rc, 2, argv,
                                        ngx_stream_im_redis_watch_reply, NULL)
               != NGX_OK)
        {
            ngx_stream_im_redis_watch_fail("no memory");
        }

        return;
    }

    if (!rd->cmd.connected || !rd->sub.connected) {
        return;
    }

    /*
     * Both sockets are up: log in, load the scripts (a restarted Redis
     * has lost them), subscribe, and only then take commands from
     * sessions.
     */

    rd->state = NGX_STREAM_IM_REDIS_LOADING;

    if (ngx_stream_im_redis_load() != NGX_OK) {
        ngx_stream_im_redis_fail("no memory");
    }
}


static ngx_int_t
ngx_stream_im_redis_load(void)
{
    ngx_uint_t                   i;
    ngx_str_t                    argv[3];
    u_char                       db[NGX_INT_T_LEN];
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_conf_t  *conf;

    rd = &ngx_stream_im_redis;
    conf = rd->conf;

    rd->pending = NGX_STREAM_IM_SCRIPTS;

    if (conf->password.len) {
        rd->pending += 2;

        if (ngx_stream_im_redis_auth(&rd->cmd, &conf->user, &conf->password,
                                     ngx_stream_im_redis_loaded)
            != NGX_OK
            || ngx_stream_im_redis_auth(&rd->sub, &conf->user,
                                        &conf->password,
                                        ngx_stream_im_redis_loaded)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (conf->db > 0) {
        rd->pending++;

        ngx_str_set(&argv[0], "SELECT");
        argv[1].data = db;
        argv[1].len = ngx_sprintf(db, "%i", conf->db) - db;

        if (ngx_stream_im_redis_send(&rd->cmd, 2, argv,
                                     ngx_stream_im_redis_loaded, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (conf->wait) {

        /* a WAIT the server refuses (an ACL) is a setup failure */

        rd->pending++;

        if (ngx_stream_im_redis_send(&rd->cmd, 3, rd->wait_check,
                                     ngx_stream_im_redis_loaded, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (conf->sentinels) {

        /* a sentinel's answer may be stale: the master must say so */

        rd->pending++;

        ngx_str_set(&argv[0], "ROLE");

        if (ngx_stream_im_redis_send(&rd->cmd, 1, argv,
                                     ngx_stream_im_redis_role, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    for (i = 0; i < NGX_STREAM_IM_SCRIPTS; i++) {
        ngx_str_set(&argv[0], "SCRIPT");
        ngx_str_set(&argv[1], "LOAD");
        argv[2] = ngx_stream_im_scripts[i].text;

        if (ngx_stream_im_redis_send(&rd->cmd, 3, argv,
                                     ngx_stream_im_redis_loaded, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /*
     * The route channel, plain and sharded: a cluster publishes sharded
     * (INFO says which this is, for what the worker publishes itself).
     */

    rd->pending += 3;

    ngx_str_set(&argv[0], "SUBSCRIBE");
    argv[1] = rd->channel;

    if (ngx_stream_im_redis_send(&rd->sub, 2, argv,
                                 ngx_stream_im_redis_loaded, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&argv[0], "SSUBSCRIBE");

    if (ngx_stream_im_redis_send(&rd->sub, 2, argv,
                                 ngx_stream_im_redis_loaded, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&argv[0], "INFO");
    ngx_str_set(&argv[1], "cluster");

    return ngx_stream_im_redis_send(&rd->cmd, 2, argv,
                                    ngx_stream_im_redis_mode, NULL);
}


static void
ngx_stream_im_redis_mode(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL || rd->state != NGX_STREAM_IM_REDIS_LOADING) {
        return;
    }

    if (r->type == REDIS_REPLY_STRING) {
        rd->cluster = (ngx_strstrn((u_char *) r->str, "cluster_enabled:1",
                                   sizeof("cluster_enabled:1") - 2)
                       != NULL);
    }

    ngx_stream_im_redis_loaded(ref, r);
}


/* AUTH [user] password first on a socket, when there is a password */

static ngx_int_t
ngx_stream_im_redis_auth(ngx_stream_im_redis_conn_t *rc, ngx_str_t *user,
    ngx_str_t *password, ngx_stream_im_redis_handler_pt handler)
{
    ngx_uint_t  argc;
    ngx_str_t   argv[3];

    if (password->len == 0) {
        return NGX_OK;
    }

    ngx_str_set(&argv[0], "AUTH");
    argc = 1;

    if (user->len) {
        argv[argc++] = *user;
    }

    argv[argc++] = *password;

    return ngx_stream_im_redis_send(rc, argc, argv, handler, NULL);
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

    if (rd->setup.timer_set) {
        ngx_del_timer(&rd->setup);
    }

    if (rd->ups++) {
        ngx_stream_im_metrics_count(NGX_STREAM_IM_M_RECONNECTS);
    }

    ngx_stream_im_redis_heartbeat_handler(&rd->heartbeat);

    /* the subscriptions are new and anything may have been missed */

    ngx_stream_im_redis_call_ready(1);

    /*
     * A worker that read this one's alive key as gone just before it was
     * set again may still remove a route set again since: once more, a
     * little later.
     */

    if (!rd->lapsed.timer_set) {
        ngx_add_timer(&rd->lapsed, NGX_STREAM_IM_REDIS_LAPSED);
    }
}


/* ROLE: a master answers {"master", offset, replicas} */

static void
ngx_stream_im_redis_role(ngx_stream_im_ref_t *ref, redisReply *r)
{
    redisReply             *role;
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL || rd->state != NGX_STREAM_IM_REDIS_LOADING
        || r->type == REDIS_REPLY_ERROR)
    {
        ngx_stream_im_redis_loaded(ref, r);
        return;
    }

    role = (r->type == REDIS_REPLY_ARRAY && r->elements > 0)
           ? r->element[0] : NULL;

    if (role == NULL || role->type != REDIS_REPLY_STRING
        || role->len != 6 || ngx_strncmp(role->str, "master", 6) != 0)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "redis %V is not the master of \"%V\" (yet), "
                      "asking the sentinels again",
                      &rd->addr->name, &rd->conf->master);
        ngx_stream_im_redis_fail("not a master");
        return;
    }

    ngx_stream_im_redis_loaded(ref, r);
}


static void
ngx_stream_im_redis_sentinel_auth(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL || r->type != REDIS_REPLY_ERROR
        || rd->state != NGX_STREAM_IM_REDIS_RESOLVING)
    {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "sentinel %V refused AUTH: %s", &rd->query.addr->name,
                  r->str);

    ngx_stream_im_redis_fail("sentinel refused AUTH");
}


/* SENTINEL get-master-addr-by-name: {ip, port}, or nil when unknown */

static void
ngx_stream_im_redis_resolved(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL || rd->state != NGX_STREAM_IM_REDIS_RESOLVING) {
        return;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2
        || r->element[0]->type != REDIS_REPLY_STRING
        || r->element[1]->type != REDIS_REPLY_STRING
        || ngx_stream_im_redis_set_master(r->element[0], r->element[1])
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sentinel %V gave no address for master \"%V\"%s%s",
                      &rd->query.addr->name, &rd->conf->master,
                      r->type == REDIS_REPLY_ERROR ? ": " : "",
                      r->type == REDIS_REPLY_ERROR ? r->str : "");
        ngx_stream_im_redis_fail("no master address");
        return;
    }

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "sentinel %V: master \"%V\" is %V",
                  &rd->query.addr->name, &rd->conf->master,
                  &rd->master.name);

    ngx_stream_im_redis_close_one(&rd->query);

    rd->state = NGX_STREAM_IM_REDIS_CONNECTING;

    if (ngx_stream_im_redis_connect_one(&rd->cmd, rd->addr) != NGX_OK
        || ngx_stream_im_redis_connect_one(&rd->sub, rd->addr) != NGX_OK)
    {
        ngx_stream_im_redis_fail("cannot connect");
    }
}


/* a sentinel's answer is an IP literal: never a name to resolve */

static ngx_int_t
ngx_stream_im_redis_set_master(redisReply *ip, redisReply *port)
{
    ngx_int_t               n, rc;
    ngx_addr_t              addr;
    ngx_pool_t             *pool;
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    n = ngx_atoi((u_char *) port->str, port->len);

    if (ip->len == 0 || ip->len > NGX_INET6_ADDRSTRLEN
        || n < 1 || n > 65535)
    {
        return NGX_ERROR;
    }

    pool = ngx_create_pool(NGX_MIN_POOL_SIZE, ngx_cycle->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_parse_addr(pool, &addr, (u_char *) ip->str, ip->len);

    if (rc == NGX_OK && addr.socklen <= sizeof(ngx_sockaddr_t)) {
        ngx_memcpy(&rd->master_sockaddr, addr.sockaddr, addr.socklen);

        rd->master.sockaddr = &rd->master_sockaddr.sockaddr;
        rd->master.socklen = addr.socklen;
        ngx_inet_set_port(rd->master.sockaddr, (in_port_t) n);

        rd->master.name.data = rd->master_text;
        rd->master.name.len = ngx_sock_ntop(rd->master.sockaddr,
                                            rd->master.socklen,
                                            rd->master_text,
                                            NGX_SOCKADDR_STRLEN, 1);

    } else {
        rc = NGX_ERROR;
    }

    ngx_destroy_pool(pool);

    return rc;
}


/*
 * A socket subscribed to one sentinel's +switch-master: a failover is
 * followed at once, not after the old master's connection times out.
 */

static void
ngx_stream_im_redis_watch_start(void)
{
    ngx_addr_t             *sentinel;
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    sentinel = rd->conf->sentinels->elts;

    if (ngx_stream_im_redis_connect_one(&rd->watch, &sentinel[rd->watched])
        != NGX_OK)
    {
        ngx_stream_im_redis_watch_fail("cannot connect");
    }
}


static void
ngx_stream_im_redis_watch_fail(char *why)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->watch.addr) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sentinel %V: %s, watching the next one",
                      &rd->watch.addr->name, why);
    }

    ngx_stream_im_redis_close_one(&rd->watch);

    rd->watch_pong_pending = 0;
    rd->watched = (rd->watched + 1) % rd->conf->sentinels->nelts;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (rd->watch_backoff == 0) {
        rd->watch_backoff = NGX_STREAM_IM_REDIS_WATCH_RETRY;
    }

    ngx_add_timer(&rd->watch_retry, rd->watch_backoff
                  + (ngx_msec_t) ngx_random() % (rd->watch_backoff / 2 + 1));

    rd->watch_backoff = ngx_min(rd->watch_backoff * 2,
                                NGX_STREAM_IM_REDIS_WATCH_MAX);
}


static void
ngx_stream_im_redis_watch_retry_handler(ngx_event_t *ev)
{
    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_stream_im_redis_watch_start();
}


/* the AUTH, SUBSCRIBE and PING replies of the watching socket */

static void
ngx_stream_im_redis_watch_reply(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL) {
        return;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sentinel %V refused: %s", &rd->watch.addr->name,
                      r->str);
        ngx_stream_im_redis_watch_fail("refused");
        return;
    }

    /* subscribed, or a PING answered: the sentinel works */

    rd->watch_pong_pending = 0;
    rd->watch_backoff = 0;
}


/* "+switch-master": "<name> <old ip> <old port> <new ip> <new port>" */

static void
ngx_stream_im_redis_switched(redisReply *r)
{
    u_char                 *p, *last;
    ngx_str_t               f[5];
    ngx_uint_t              n;
    redisReply             *payload;
    ngx_stream_im_redis_t  *rd;
    u_char                  name[NGX_SOCKADDR_STRLEN];
    size_t                  len;

    rd = &ngx_stream_im_redis;
    payload = r->element[2];

    if (payload->type != REDIS_REPLY_STRING) {
        return;
    }

    p = (u_char *) payload->str;
    last = p + payload->len;

    for (n = 0; n < 5 && p < last; n++) {
        f[n].data = p;

        while (p < last && *p != ' ') {
            p++;
        }

        f[n].len = p - f[n].data;

        if (p < last) {
            p++;
        }
    }

    if (n != 5 || p != last || f[0].len != rd->conf->master.len
        || ngx_strncmp(f[0].data, rd->conf->master.data, f[0].len) != 0
        || f[3].len + f[4].len + 3 > sizeof(name))
    {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "sentinel %V: master \"%V\" switched from %V:%V to %V:%V",
                  &rd->watch.addr->name, &f[0], &f[1], &f[2], &f[3], &f[4]);

    if (ngx_strlchr(f[3].data, f[3].data + f[3].len, ':')) {
        len = ngx_sprintf(name, "[%V]:%V", &f[3], &f[4]) - name;

    } else {
        len = ngx_sprintf(name, "%V:%V", &f[3], &f[4]) - name;
    }

    ngx_memcpy(rd->switch_to, name, len);
    rd->switch_to_len = len;

    /*
     * At once, unless switches come faster than failovers can: then one
     * a second, the last one announced, so a flood of them (a sentinel
     * gone wrong) does not rebuild the link and every route over and over
     */

    if (rd->switched_at != 0
        && ngx_current_msec - rd->switched_at < NGX_STREAM_IM_REDIS_SWITCH_GAP)
    {
        if (!rd->switch_later.timer_set) {
            ngx_add_timer(&rd->switch_later, NGX_STREAM_IM_REDIS_SWITCH_GAP
                          - (ngx_current_msec - rd->switched_at));
        }

        return;
    }

    ngx_stream_im_redis_follow_switch(&rd->switch_later);
}


static void
ngx_stream_im_redis_follow_switch(ngx_event_t *ev)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    rd->switched_at = ngx_current_msec;
    rd->backoff = NGX_STREAM_IM_REDIS_BACKOFF_MIN;

    if (rd->state == NGX_STREAM_IM_REDIS_DOWN) {

        /* waiting to retry: ask the sentinels now */

        if (rd->reconnect.timer_set) {
            ngx_add_timer(&rd->reconnect, rd->backoff);
        }

        return;
    }

    if (rd->state >= NGX_STREAM_IM_REDIS_CONNECTING
        && rd->addr->name.len == rd->switch_to_len
        && ngx_strncmp(rd->addr->name.data, rd->switch_to,
                       rd->switch_to_len)
           == 0)
    {
        return;
    }

    ngx_stream_im_redis_fail("the sentinels switched the master");
}


static void
ngx_stream_im_redis_setup_handler(ngx_event_t *ev)
{
    ngx_stream_im_redis_fail("setup timed out");
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
    char                   *what;
    ngx_str_t              *name;
    ngx_msec_t              delay;
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (rd->state == NGX_STREAM_IM_REDIS_DOWN) {
        return;
    }

    /* while resolving, the master's address is a stale one */

    if (rd->state == NGX_STREAM_IM_REDIS_RESOLVING && rd->query.addr) {
        what = "sentinel";
        name = &rd->query.addr->name;

    } else {
        what = "redis";
        name = &rd->addr->name;
    }

    if (rd->conf->sentinels && rd->state < NGX_STREAM_IM_REDIS_READY) {

        /*
         * this sentinel did not lead to a master that works (it is down,
         * or stale): the next one is asked next
         */

        rd->sentinel = (rd->sentinel + 1) % rd->conf->sentinels->nelts;
    }

    rd->state = NGX_STREAM_IM_REDIS_DOWN;
    ngx_stream_im_metrics_link(0, 0);

    rd->heartbeat_pending = 0;
    rd->pong_pending = 0;
    rd->alive_set = 0;
    rd->stalled = 0;

    ngx_stream_im_redis_close_one(&rd->query);
    ngx_stream_im_redis_close_one(&rd->cmd);
    ngx_stream_im_redis_close_one(&rd->sub);

    if (rd->heartbeat.timer_set) {
        ngx_del_timer(&rd->heartbeat);
    }

    if (rd->setup.timer_set) {
        ngx_del_timer(&rd->setup);
    }

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "%s %V: %s, worker is exiting", what, name, why);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "%s %V: %s, reconnecting", what, name, why);

    /* capped exponential backoff, jittered so workers do not stampede */

    delay = rd->backoff + (ngx_msec_t) ngx_random() % (rd->backoff / 2 + 1);

    rd->backoff = ngx_min(rd->backoff * 2, NGX_STREAM_IM_REDIS_BACKOFF_MAX);

    ngx_add_timer(&rd->reconnect, delay);
}


/* the watching socket fails alone; any other takes the link down */

static void
ngx_stream_im_redis_conn_fail(ngx_stream_im_redis_conn_t *rc, char *why)
{
    if (rc->kind == NGX_STREAM_IM_REDIS_WATCH) {
        ngx_stream_im_redis_watch_fail(why);
        return;
    }

    ngx_stream_im_redis_fail(why);
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
    rc->partial = 0;

    if (rc->kind == NGX_STREAM_IM_REDIS_CMD) {

        /* stored, maybe, but not known to be replicated: unavailable */

        ngx_stream_im_redis.wait_needed = 0;
        ngx_stream_im_redis.wait_inflight = 0;
        ngx_stream_im_redis_release(0);
    }

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

    /* a sentinel that went silent would hide the next failover */

    /* (the heartbeat also runs when the link comes up: one period) */

    if (rd->watch.connected) {
        if (rd->watch_pong_pending) {
            if (ngx_current_msec - rd->watch_ping_at
                >= NGX_STREAM_IM_REDIS_HEARTBEAT)
            {
                ngx_stream_im_redis_watch_fail(
                                            "no reply for a heartbeat period");
            }

        } else if (ngx_stream_im_redis_send(&rd->watch, 1, argv,
                                            ngx_stream_im_redis_watch_reply,
                                            NULL)
                   == NGX_OK)
        {
            rd->watch_pong_pending = 1;
            rd->watch_ping_at = ngx_current_msec;
        }
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

        /*
         * A worker that read the key as gone just before it was set
         * again may still remove a route set again since: once more,
         * a little later.
         */

        if (!rd->lapsed.timer_set) {
            ngx_add_timer(&rd->lapsed, NGX_STREAM_IM_REDIS_LAPSED);
        }
    }

    rd->alive_set = 1;
}


static void
ngx_stream_im_redis_lapsed_handler(ngx_event_t *ev)
{
    if (ngx_stream_im_redis.state == NGX_STREAM_IM_REDIS_READY) {
        ngx_stream_im_redis_call_ready(0);
    }
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
    ngx_int_t                    rv;
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

    if (rc->kind == NGX_STREAM_IM_REDIS_SUB) {
        ngx_stream_im_redis_check_stall();
    }

    for ( ;; ) {

        while (replies < NGX_STREAM_IM_REDIS_REPLIES_MAX) {
            if (redisReaderGetReply(rc->reader, (void **) &r) != REDIS_OK) {
                ngx_log_error(NGX_LOG_ERR, c->log, 0, "bad reply: %s",
                              rc->reader->errstr);
                ngx_stream_im_redis_conn_fail(rc, "bad reply");
                return;
            }

            if (r == NULL) {
                break;
            }

            replies++;
            rc->partial = 0;

            rv = ngx_stream_im_redis_reply(rc, r);

            if (rv == NGX_ERROR) {
                freeReplyObject(r);
                ngx_stream_im_redis_conn_fail(rc, "unexpected reply");
                return;
            }

            if (rv != NGX_DONE) {
                freeReplyObject(r);
            }

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
            ngx_stream_im_redis_conn_fail(rc, "connection closed");
            return;
        }

        bytes += n;
        rc->partial += n;

        /* what a sentinel has to say is small: hiredis sets no bound */

        if (rc->kind >= NGX_STREAM_IM_REDIS_QUERY
            && rc->partial > NGX_STREAM_IM_SENTINEL_REPLY)
        {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "a reply of more than %d bytes",
                          NGX_STREAM_IM_SENTINEL_REPLY);
            ngx_stream_im_redis_conn_fail(rc, "oversized reply");
            return;
        }

        if (redisReaderFeed(rc->reader, (char *) ngx_stream_im_redis_buf, n)
            != REDIS_OK)
        {
            ngx_stream_im_redis_conn_fail(rc, "bad reply");
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_stream_im_redis_conn_fail(rc, "event error");
    }
}


/*
 * NGX_DONE: the reply is held for a WAIT and not to be freed yet;
 * NGX_ERROR: a reply nobody asked for.
 */

static ngx_int_t
ngx_stream_im_redis_reply(ngx_stream_im_redis_conn_t *rc, redisReply *r)
{
    ngx_stream_im_redis_cb_t  cb;

    if (rc->kind >= NGX_STREAM_IM_REDIS_SUB
        && r->type == REDIS_REPLY_ARRAY && r->elements == 3
        && r->element[0]->type == REDIS_REPLY_STRING
        && (ngx_strcmp(r->element[0]->str, "message") == 0
            || ngx_strcmp(r->element[0]->str, "smessage") == 0))
    {
        if (rc->kind == NGX_STREAM_IM_REDIS_SUB) {
            ngx_stream_im_redis_push(r);

        } else if (rc->kind == NGX_STREAM_IM_REDIS_WATCH) {
            ngx_stream_im_redis_switched(r);
        }

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

    if (r->type == REDIS_REPLY_ERROR
        && rc->kind == NGX_STREAM_IM_REDIS_CMD
        && (ngx_strncmp(r->str, "READONLY", 8) == 0
            || ngx_strncmp(r->str, "LOADING", 7) == 0
            || ngx_strncmp(r->str, "MASTERDOWN", 10) == 0))
    {
        /* a demoted master, or one still loading: never write to it */

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "redis %V: %s", &ngx_stream_im_redis.addr->name,
                      r->str);

        if (cb.handler) {
            cb.handler(&cb.ref, NULL);
        }

        ngx_stream_im_redis_fail("not a writable master");
        return NGX_OK;
    }

    if (cb.replicated && r->type != REDIS_REPLY_ERROR) {
        return ngx_stream_im_redis_hold(&cb, r);
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
    ngx_stream_im_redis_conn_t *rc = log->data;

    return ngx_snprintf(buf, len, " while %s %V",
                        rc->kind >= NGX_STREAM_IM_REDIS_QUERY
                        ? "talking to sentinel" : log->action,
                        &rc->addr->name);
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
 * A subscription to one channel, or its end, on the subscriber
 * connection; sharded on a cluster.  Each is answered once.
 */

ngx_int_t
ngx_stream_im_redis_subscribe(ngx_str_t *channel, ngx_uint_t on)
{
    ngx_str_t  argv[2];

    if (ngx_stream_im_redis.state != NGX_STREAM_IM_REDIS_READY) {
        return NGX_DECLINED;
    }

    if (ngx_stream_im_redis.cluster) {
        if (on) {
            ngx_str_set(&argv[0], "SSUBSCRIBE");

        } else {
            ngx_str_set(&argv[0], "SUNSUBSCRIBE");
        }

    } else if (on) {
        ngx_str_set(&argv[0], "SUBSCRIBE");

    } else {
        ngx_str_set(&argv[0], "UNSUBSCRIBE");
    }

    argv[1] = *channel;

    return ngx_stream_im_redis_send(&ngx_stream_im_redis.sub, 2, argv,
                                    NULL, NULL);
}


/* handler is called once the subscriptions asked for before are made */

ngx_int_t
ngx_stream_im_redis_subscribed(ngx_stream_im_redis_handler_pt handler)
{
    ngx_str_t  argv[1];

    if (ngx_stream_im_redis.state != NGX_STREAM_IM_REDIS_READY) {
        return NGX_DECLINED;
    }

    ngx_str_set(&argv[0], "PING");

    return ngx_stream_im_redis_send(&ngx_stream_im_redis.sub, 1, argv,
                                    handler, NULL);
}


/*
 * PUBLISH (SPUBLISH on a cluster: plain PUBLISH is copied to every node)
 * of a payload given in parts, written straight into the output buffer.
 * The reply is the number of subscribers that got it.
 */

ngx_int_t
ngx_stream_im_redis_publish(ngx_str_t *channel, ngx_str_t *parts,
    ngx_uint_t nparts, ngx_stream_im_redis_handler_pt handler,
    ngx_stream_im_ref_t *ref)
{
    u_char                      *p;
    char                        *cmd;
    size_t                       len;
    ngx_uint_t                   i;
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_conn_t  *rc;

    rd = &ngx_stream_im_redis;
    rc = &rd->cmd;

    if (rd->state != NGX_STREAM_IM_REDIS_READY) {
        return NGX_DECLINED;
    }

    cmd = rd->cluster ? "SPUBLISH" : "PUBLISH";

    len = 0;

    for (i = 0; i < nparts; i++) {
        len += parts[i].len;
    }

    if (ngx_stream_im_redis_reserve(rc, sizeof("*3\r\n$8\r\nSPUBLISH\r\n") - 1
                                        + 2 * (sizeof("$\r\n\r\n") - 1
                                               + NGX_SIZE_T_LEN)
                                        + channel->len + len)
        != NGX_OK
        || ngx_stream_im_redis_push_cb(rc, handler, ref) != NGX_OK)
    {
        return NGX_ERROR;
    }

    p = rc->out + rc->out_len;

    p = ngx_sprintf(p, "*3\r\n$%uz\r\n%s\r\n$%uz\r\n%V\r\n$%uz\r\n",
                    ngx_strlen(cmd), cmd, channel->len, channel, len);

    for (i = 0; i < nparts; i++) {
        if (parts[i].len) {
            p = ngx_cpymem(p, parts[i].data, parts[i].len);
        }
    }

    *p++ = CR;
    *p++ = LF;

    rc->out_len = p - rc->out;

    if (rc->connected) {
        ngx_post_event(rc->connection->write, &ngx_posted_events);
    }

    return NGX_OK;
}


/*
 * How commands are batched: on a cluster a script takes the keys of one
 * slot, on one Redis any keys.
 */

ngx_uint_t
ngx_stream_im_redis_batch(ngx_str_t *key)
{
    if (!ngx_stream_im_redis.cluster) {
        return 0;
    }

    return ngx_stream_im_slot(key->data, key->len);
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
            ngx_stream_im_redis_conn_fail(rc, "connect timed out");
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
                          &rc->addr->name);
            ngx_stream_im_redis_conn_fail(rc, "cannot connect");
            return;
        }

        ngx_stream_im_redis_connected(rc);

        if (rc->connection == NULL) {
            return;
        }
    }

    /* the writes of this turn are covered by one WAIT behind them */

    if (rc->kind == NGX_STREAM_IM_REDIS_CMD
        && ngx_stream_im_redis_wait_append() != NGX_OK)
    {
        ngx_stream_im_redis_fail("no memory");
        return;
    }

    while (rc->out_pos < rc->out_len) {
        n = c->send(c, rc->out + rc->out_pos, rc->out_len - rc->out_pos);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR) {
            ngx_stream_im_redis_conn_fail(rc, "send failed");
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
        ngx_stream_im_redis_conn_fail(rc, "event error");
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
    size_t       need;
    ngx_uint_t   i;

    need = sizeof("*\r\n") - 1 + NGX_INT_T_LEN;

    for (i = 0; i < argc; i++) {
        need += sizeof("$\r\n\r\n") - 1 + NGX_SIZE_T_LEN + argv[i].len;
    }

    if (ngx_stream_im_redis_reserve(rc, need) != NGX_OK) {
        return NGX_ERROR;
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


/* room for need more bytes in the output buffer */

static ngx_int_t
ngx_stream_im_redis_reserve(ngx_stream_im_redis_conn_t *rc, size_t need)
{
    u_char  *p;
    size_t   size;

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
    cb->replicated = 0;

    if (ref) {
        cb->ref = *ref;

    } else {
        ngx_memzero(&cb->ref, sizeof(ngx_stream_im_ref_t));
    }

    rc->cb_count++;

    return NGX_OK;
}


/* the command just queued is a replicated write: its reply waits */

static void
ngx_stream_im_redis_hold_next(ngx_stream_im_redis_conn_t *rc)
{
    rc->cbs[(rc->cb_head + rc->cb_count - 1) & (rc->cb_size - 1)]
        .replicated = 1;

    ngx_stream_im_redis.wait_needed = 1;
}


static ngx_int_t
ngx_stream_im_redis_wait_append(void)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    /*
     * Redis holds every command behind a WAIT until it returns: with one
     * in flight, a dead replica delays a worker by one timeout at a time,
     * not by one per turn.
     */

    if (!rd->wait_needed || rd->wait_inflight
        || rd->state != NGX_STREAM_IM_REDIS_READY)
    {
        return NGX_OK;
    }

    if (ngx_stream_im_redis_push_cb(&rd->cmd, ngx_stream_im_redis_waited,
                                    NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_stream_im_redis_append(&rd->cmd, 3, rd->wait_args) != NGX_OK) {
        rd->cmd.cb_count--;
        return NGX_ERROR;
    }

    rd->wait_needed = 0;
    rd->wait_inflight = 1;

    return NGX_OK;
}


/* WAIT answers how many replicas have every write before it */

static void
ngx_stream_im_redis_waited(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_redis_t  *rd;

    rd = &ngx_stream_im_redis;

    if (r == NULL) {
        return;
    }

    rd->wait_inflight = 0;

    if (r->type != REDIS_REPLY_INTEGER) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "redis %V refused WAIT: %s", &rd->addr->name,
                      r->type == REDIS_REPLY_ERROR ? r->str : "a bad reply");

        ngx_stream_im_redis_release(0);
        ngx_stream_im_redis_fail("WAIT refused");
        return;
    }

    if (r->integer >= (long long) rd->conf->wait) {
        ngx_stream_im_redis_release(1);

    } else {
        if (rd->nheld) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "redis %V: %L of %ui replicas in %M ms, "
                          "%ui sends answered as unavailable",
                          &rd->addr->name, r->integer, rd->conf->wait,
                          rd->conf->wait_timeout, rd->nheld);

            ngx_stream_im_metrics_count(NGX_STREAM_IM_M_WAIT_FAILED);
        }

        ngx_stream_im_redis_release(0);
    }

    if (rd->wait_needed && rd->cmd.connected) {
        ngx_post_event(rd->cmd.connection->write, &ngx_posted_events);
    }
}


static ngx_int_t
ngx_stream_im_redis_hold(ngx_stream_im_redis_cb_t *cb, redisReply *r)
{
    ngx_uint_t                   size;
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_held_t  *held;

    rd = &ngx_stream_im_redis;

    if (rd->nheld == rd->held_size) {
        size = rd->held_size ? rd->held_size * 2 : 64;

        held = ngx_alloc(size * sizeof(ngx_stream_im_redis_held_t),
                         ngx_cycle->log);
        if (held == NULL) {
            if (cb->handler) {
                cb->handler(&cb->ref, NULL);
            }

            return NGX_OK;
        }

        if (rd->held) {
            ngx_memcpy(held, rd->held,
                       rd->nheld * sizeof(ngx_stream_im_redis_held_t));
            ngx_free(rd->held);
        }

        rd->held = held;
        rd->held_size = size;
    }

    held = &rd->held[rd->nheld++];

    held->handler = cb->handler;
    held->ref = cb->ref;
    held->reply = r;

    return NGX_DONE;
}


/*
 * The held replies go to their handlers, or NULL ("unavailable": the
 * client sends again with the same client_msg_id) when not replicated.
 * The list is emptied first: a handler may take the link down.
 */

static void
ngx_stream_im_redis_release(ngx_uint_t ok)
{
    ngx_uint_t                   i, n;
    ngx_stream_im_redis_t       *rd;
    ngx_stream_im_redis_held_t  *held, h;

    rd = &ngx_stream_im_redis;

    held = rd->held;
    n = rd->nheld;
    rd->nheld = 0;

    /* the writes were made: only their replicas are not confirmed */

    rd->unreplicated = !ok;

    for (i = 0; i < n; i++) {
        h = held[i];

        if (h.handler) {
            h.handler(&h.ref, h.reply);
        }

        freeReplyObject(h.reply);
    }

    rd->unreplicated = 0;
}


/*
 * In the handler of a replicated write (a script marked so, or the
 * barrier): 0 when its reply came but WAIT did not confirm its replicas.
 */

ngx_uint_t
ngx_stream_im_redis_replicated(void)
{
    return !ngx_stream_im_redis.unreplicated;
}


/*
 * handler hears once every write queued before is on im_redis_wait
 * replicas, or not (ngx_stream_im_redis_replicated()); NGX_DECLINED
 * without im_redis_wait.
 */

ngx_int_t
ngx_stream_im_redis_barrier(ngx_stream_im_redis_handler_pt handler,
    ngx_stream_im_ref_t *ref)
{
    ngx_str_t  argv[1];

    if (!ngx_stream_im_redis.conf->wait) {
        return NGX_DECLINED;
    }

    ngx_str_set(&argv[0], "PING");

    if (ngx_stream_im_redis_command(1, argv, handler, ref) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_stream_im_redis_hold_next(&ngx_stream_im_redis.cmd);

    return NGX_OK;
}
