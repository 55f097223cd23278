
/*
 * Copyright (C) ngx_im authors
 */


#ifndef _NGX_STREAM_IM_H_INCLUDED_
#define _NGX_STREAM_IM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include <hiredis/hiredis.h>

#include "im.pb-c.h"
#include "ngx_stream_im_metrics.h"


#define NGX_STREAM_IM_ID_MAX           64
#define NGX_STREAM_IM_KEY_MAX          (NGX_STREAM_IM_ID_MAX * 2 + 32)
#define NGX_STREAM_IM_SID_MAX                                                 \
    (NGX_MAXHOSTNAMELEN + 2 * NGX_INT64_LEN + NGX_STREAM_IM_ID_MAX + 3)
#define NGX_STREAM_IM_HANDSHAKE_MAX    8192
#define NGX_STREAM_IM_KEY_LEN          32
#define NGX_STREAM_IM_TYPE_MAX         64
#define NGX_STREAM_IM_CHANNEL_MAX                                             \
    (sizeof("im:route::") + NGX_MAXHOSTNAMELEN + NGX_INT64_LEN)
#define NGX_STREAM_IM_SLOTS            16384

/* im_rate counts thousandths of a frame in an int32_t */
#define NGX_STREAM_IM_RATE_MAX         (NGX_MAX_INT32_VALUE / 1000)

/* WebSocket opcodes, RFC 6455 5.2 */
#define NGX_STREAM_IM_WS_CONT          0x0
#define NGX_STREAM_IM_WS_TEXT          0x1
#define NGX_STREAM_IM_WS_BINARY        0x2
#define NGX_STREAM_IM_WS_CLOSE         0x8
#define NGX_STREAM_IM_WS_PING          0x9
#define NGX_STREAM_IM_WS_PONG          0xa

#define NGX_STREAM_IM_WS_CONTROL_MAX   125
#define NGX_STREAM_IM_WS_HEADER_MAX    10

/* WebSocket close codes, RFC 6455 7.4.1 */
#define NGX_STREAM_IM_CLOSE_NORMAL     1000
#define NGX_STREAM_IM_CLOSE_GOING_AWAY 1001
#define NGX_STREAM_IM_CLOSE_PROTOCOL   1002
#define NGX_STREAM_IM_CLOSE_DATA       1003
#define NGX_STREAM_IM_CLOSE_INVALID    1007
#define NGX_STREAM_IM_CLOSE_POLICY     1008
#define NGX_STREAM_IM_CLOSE_TOO_BIG    1009
#define NGX_STREAM_IM_CLOSE_INTERNAL   1011


typedef struct {
    ngx_array_t                    keys;       /* of u_char[KEY_LEN] */
    ngx_array_t                   *origins;    /* of ngx_str_t */
    ngx_msec_t                     auth_timeout;
    ngx_msec_t                     ping_interval;
    ngx_msec_t                     idle_timeout;
    size_t                         max_frame;
    size_t                         send_queue;
    ngx_uint_t                     inbox_max;
    ngx_uint_t                     max_sessions;
    ngx_uint_t                     max_unauthenticated;
    ngx_msec_t                     drain_window;
    ngx_uint_t                     group_max;
    ngx_uint_t                     presence_max;
    ngx_uint_t                     rate;       /* frames/s, 0: off */
    ngx_uint_t                     rate_burst;
    size_t                         rate_bytes; /* bytes/s */
    ngx_flag_t                     enabled;
} ngx_stream_im_srv_conf_t;


/* where the worker's Redis is and how to talk to it (im_redis*) */

typedef struct {
    ngx_addr_t                    *addr;       /* NULL: ask the sentinels */
    ngx_array_t                   *sentinels;  /* of ngx_addr_t */
    ngx_str_t                      master;     /* the sentinels' name of it */
    ngx_str_t                      user;       /* AUTH, from a file */
    ngx_str_t                      password;
    ngx_str_t                      sentinel_user;
    ngx_str_t                      sentinel_password;
    ngx_int_t                      db;         /* SELECT, -1: not set */
    ngx_uint_t                     wait;       /* replicas before SendAck */
    ngx_msec_t                     wait_timeout;
    ngx_flag_t                     set;        /* im_redis was given */
} ngx_stream_im_redis_conf_t;


typedef struct {
    ngx_stream_im_redis_conf_t     redis;      /* one link per worker */
    ngx_stream_im_srv_conf_t      *first;      /* the first im server's */
    ngx_shm_zone_t                *metrics;
    size_t                         max_frame;  /* the largest of all servers */
    ngx_flag_t                     enabled;
} ngx_stream_im_main_conf_t;


/* the resumable frame parser state, a few bytes per session */

typedef struct {
    uint64_t                       left;       /* payload still to come */
    size_t                         msg_len;    /* data message so far */
    u_char                         mask[4];
    u_char                         hdr[8];     /* extended length bytes */
    unsigned                       state:4;
    unsigned                       opcode:4;
    unsigned                       fin:1;
    unsigned                       fragmented:1;
    unsigned                       first:1;
    unsigned                       mask_pos:2;
    unsigned                       hdr_need:4;
    unsigned                       hdr_have:4;
} ngx_stream_im_ws_parser_t;


/* one chunk of payload, unmasked in place, or a protocol violation */

typedef struct {
    u_char                        *data;
    size_t                         len;
    uint64_t                       more;       /* bytes of this frame after */
    ngx_uint_t                     opcode;
    ngx_uint_t                     status;     /* close code on NGX_ERROR */
    char                          *reason;
    unsigned                       first:1;    /* message starts here */
    unsigned                       last:1;     /* message ends here */
} ngx_stream_im_ws_chunk_t;


#define NGX_STREAM_IM_HS_HOST          0x01
#define NGX_STREAM_IM_HS_UPGRADE       0x02
#define NGX_STREAM_IM_HS_CONNECTION    0x04
#define NGX_STREAM_IM_HS_VERSION       0x08


typedef struct {
    ngx_uint_t                     status;     /* HTTP status on error */
    char                          *reason;
    u_char                        *end;        /* first byte after headers */
    ngx_str_t                      key;
    ngx_str_t                      origin;
    ngx_uint_t                     seen;       /* NGX_STREAM_IM_HS_* */
    unsigned                       subprotocol:1;  /* client offers im.v1 */
} ngx_stream_im_handshake_t;


/* the verified claims of a token */

typedef struct {
    u_char                         user[NGX_STREAM_IM_ID_MAX];
    size_t                         user_len;
    time_t                         exp;
    time_t                         iat;        /* 0: none */
} ngx_stream_im_claims_t;


/* a bump allocator for decoding: reset after every frame */

typedef struct {
    u_char                        *start;
    u_char                        *pos;
    u_char                        *end;
} ngx_stream_im_arena_t;


/* a serialized server frame, shared by every session it is queued on */

typedef struct {
    ngx_uint_t                     refs;
    size_t                         len;
    u_char                         data[1];
} ngx_stream_im_msg_t;


/* how an asynchronous reply finds its session, if it still exists */

typedef struct {
    ngx_uint_t                     slot;       /* in ngx_cycle->connections */
    ngx_atomic_uint_t              number;     /* c->number, 0: no session */
    uint32_t                       id;         /* the client's request id */
    uint32_t                       arg;
} ngx_stream_im_ref_t;


/* an inbox position: a Redis stream id */

typedef struct {
    uint64_t                       ms;
    uint64_t                       seq;
} ngx_stream_im_msg_id_t;


/* a message to store and deliver: a client's Send or the backend's */

typedef struct {
    Im__Message                   *msg;        /* from, to or group, ... */
    ngx_str_t                      origin;     /* session id, or empty */
    ngx_uint_t                     inbox_max;
    ngx_uint_t                     group_max;
    unsigned                       backend:1;
} ngx_stream_im_post_t;


typedef struct ngx_stream_im_out_s  ngx_stream_im_out_t;

struct ngx_stream_im_out_s {
    ngx_stream_im_out_t           *next;
    ngx_stream_im_msg_t           *msg;
};


typedef struct {
    ngx_stream_session_t          *session;
    ngx_stream_im_ws_parser_t      parser;

    u_char                        *handshake;  /* partial request */
    size_t                         handshake_len;

    u_char                        *message;    /* partial data message */
    size_t                         message_len;
    size_t                         message_size;

    u_char                        *control;    /* partial control frame */
    size_t                         control_len;

    ngx_stream_im_out_t           *out;
    ngx_stream_im_out_t          **out_last;
    size_t                         out_pos;    /* sent of the first msg */
    size_t                         out_bytes;

    ngx_msec_t                     start;
    ngx_msec_t                     last_in;
    ngx_msec_t                     last_ping;
    time_t                         expires;    /* the token's exp */

    ngx_str_t                      user;
    ngx_str_t                      device;
    void                          *owner;      /* the worker's user entry */
    ngx_queue_t                    queue;      /* sessions of that user */
    ngx_queue_t                    watching;   /* presence watchers */
    ngx_stream_im_msg_id_t         last;       /* newest entry sent */

    uint32_t                       epoch;      /* caught up in this epoch */
    uint32_t                       route_epoch; /* route set in this one */

    ngx_msec_t                     rate_last;
    ngx_msec_t                     typing_at;
    int32_t                        rate_frames; /* thousandths of a frame */
    int32_t                        rate_bytes;

    unsigned                       state:3;
    unsigned                       authenticated:1;
    unsigned                       logging_in:1;
    unsigned                       replaying:1;
    unsigned                       replay_again:1;
    unsigned                       replay_paused:1;
    unsigned                       overflow:1;
    unsigned                       draining:1;
    unsigned                       closed:1;   /* our close frame is queued */
    unsigned                       syncing:1;  /* a Sync is in flight */
    unsigned                       rate_debt:1; /* charged past the budget */
} ngx_stream_im_session_t;


#define NGX_STREAM_IM_HANDSHAKE        0
#define NGX_STREAM_IM_OPEN             1
#define NGX_STREAM_IM_CLOSING          2   /* close sent, awaiting peer's */
#define NGX_STREAM_IM_LAST_WRITE       3   /* close once output is sent */
#define NGX_STREAM_IM_LINGER           4   /* output sent, draining input */


/* handshake: pure */
ngx_int_t ngx_stream_im_handshake_parse(u_char *start, u_char *end,
    ngx_stream_im_handshake_t *hs);
ngx_int_t ngx_stream_im_handshake_origin_allowed(ngx_array_t *origins,
    ngx_str_t *origin);
ngx_int_t ngx_stream_im_handshake_error(ngx_uint_t status,
    ngx_str_t *response);

/* WebSocket framing: pure */
ngx_int_t ngx_stream_im_ws_parse(ngx_stream_im_ws_parser_t *p, ngx_buf_t *b,
    size_t max, ngx_stream_im_ws_chunk_t *ch);
u_char *ngx_stream_im_ws_header(u_char *p, ngx_uint_t opcode, size_t len);
ngx_int_t ngx_stream_im_ws_check_close(u_char *data, size_t len,
    ngx_uint_t *status);
ngx_int_t ngx_stream_im_utf8_valid(u_char *p, size_t len);

/* codec: pure */
void ngx_stream_im_arena_init(ngx_stream_im_arena_t *a, u_char *start,
    size_t size);
Im__Frame *ngx_stream_im_decode(ngx_stream_im_arena_t *a, u_char *data,
    size_t len);
ngx_int_t ngx_stream_im_canonical(Im__Frame *f, size_t len);
void *ngx_stream_im_arena_alloc(void *data, size_t size);
size_t ngx_stream_im_encoded_size(Im__Frame *f);
u_char *ngx_stream_im_encode(u_char *p, Im__Frame *f, size_t size);
size_t ngx_stream_im_message_size(uint32_t id, ngx_str_t *msg_id,
    uint64_t ts, ngx_str_t *cursor, ngx_str_t *partial);
u_char *ngx_stream_im_message_write(u_char *p, uint32_t id, ngx_str_t *msg_id,
    uint64_t ts, ngx_str_t *cursor, ngx_str_t *partial);
ngx_int_t ngx_stream_im_entry_has_id(ngx_str_t *partial);
u_char *ngx_stream_im_entry_head(u_char *p, ngx_str_t *msg_id, uint64_t ts);
ngx_uint_t ngx_stream_im_slot(u_char *key, size_t len);
ngx_int_t ngx_stream_im_msg_id_parse(u_char *p, size_t len,
    ngx_stream_im_msg_id_t *id);

/* tokens and identities: pure */
ngx_int_t ngx_stream_im_valid_id(u_char *p, size_t len);
ngx_int_t ngx_stream_im_key_parse(u_char *data, size_t len, u_char *key);
ngx_int_t ngx_stream_im_token_open(ngx_str_t *token, ngx_array_t *keys,
    ngx_str_t *implicit, u_char *buf, ngx_str_t *payload, char **err);
ngx_int_t ngx_stream_im_token_claims(ngx_str_t *payload, time_t now,
    ngx_stream_im_claims_t *claims, char **err);
ngx_int_t ngx_stream_im_token_sign(ngx_str_t *claims, ngx_str_t *footer,
    u_char *secret, u_char *buf, ngx_str_t *token);

/* session: the connection's life and its output queue */
typedef ngx_int_t (*ngx_stream_im_frame_pt)(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
typedef void (*ngx_stream_im_session_pt)(ngx_stream_im_session_t *ctx);

ngx_int_t ngx_stream_im_session_init_worker(ngx_cycle_t *cycle);
void ngx_stream_im_session_on_frame(ngx_stream_im_frame_pt handler);
ngx_int_t ngx_stream_im_session_on_close(ngx_stream_im_session_pt handler);
void ngx_stream_im_session_on_writable(ngx_stream_im_session_pt handler);
void ngx_stream_im_session_handler(ngx_stream_session_t *s);
ngx_stream_im_msg_t *ngx_stream_im_msg_alloc(size_t len, ngx_log_t *log);
void ngx_stream_im_msg_release(ngx_stream_im_msg_t *msg);
ngx_int_t ngx_stream_im_queue(ngx_stream_im_session_t *ctx,
    ngx_stream_im_msg_t *msg);
ngx_int_t ngx_stream_im_send_frame(ngx_stream_im_session_t *ctx,
    Im__Frame *f);
ngx_int_t ngx_stream_im_send_error(ngx_stream_im_session_t *ctx,
    uint32_t id, Im__Error__Code code, char *reason);
ngx_int_t ngx_stream_im_send_unavailable(ngx_stream_im_session_t *ctx,
    uint32_t id);
void ngx_stream_im_close(ngx_stream_im_session_t *ctx, ngx_uint_t status,
    char *reason);
void ngx_stream_im_fail(ngx_stream_im_session_t *ctx, ngx_uint_t status,
    char *reason);

void ngx_stream_im_session_signed_in(ngx_stream_im_session_t *ctx);
void ngx_stream_im_session_rearm(ngx_stream_im_session_t *ctx);
void ngx_stream_im_session_charge(ngx_stream_im_session_t *ctx,
    size_t bytes);
ngx_stream_im_session_t *ngx_stream_im_session_lookup(
    ngx_stream_im_ref_t *ref);
void ngx_stream_im_session_ref(ngx_stream_im_session_t *ctx,
    ngx_stream_im_ref_t *ref, uint32_t id);

/* Redis adapter */
#define NGX_STREAM_IM_SCRIPT_ID        0
#define NGX_STREAM_IM_SCRIPT_STORE     1
#define NGX_STREAM_IM_SCRIPT_MEMBERS   2
#define NGX_STREAM_IM_SCRIPT_ROUTES    3
#define NGX_STREAM_IM_SCRIPT_LOGIN     4
#define NGX_STREAM_IM_SCRIPT_LOGOUT    5
#define NGX_STREAM_IM_SCRIPT_PRUNE     6
#define NGX_STREAM_IM_SCRIPT_REROUTE   7
#define NGX_STREAM_IM_SCRIPT_PRESENCE  8
#define NGX_STREAM_IM_SCRIPT_RANGE     9
#define NGX_STREAM_IM_SCRIPT_REVOKED   10
#define NGX_STREAM_IM_SCRIPT_KICK      11
#define NGX_STREAM_IM_SCRIPT_DEVICES   12
#define NGX_STREAM_IM_SCRIPT_GROUP     13
#define NGX_STREAM_IM_SCRIPT_ADMIN     14
#define NGX_STREAM_IM_SCRIPTS          15


/* a Lua script of ngx_stream_im_scripts.c and its SHA-1 for EVALSHA */

typedef struct {
    ngx_str_t                      text;
    u_char                         sha[41];
    ngx_uint_t                     replicated; /* reply waits for WAIT */
} ngx_stream_im_script_t;

extern ngx_stream_im_script_t  ngx_stream_im_scripts[];

/* a reply (NULL: the link broke first) with the ref it was queued with */
typedef void (*ngx_stream_im_redis_handler_pt)(ngx_stream_im_ref_t *ref,
    redisReply *r);

/* a message on a subscribed channel */
typedef void (*ngx_stream_im_redis_message_pt)(ngx_str_t *channel,
    ngx_str_t *payload);

/* the link is ready: fresh, a new link; else the routes lapsed */
typedef void (*ngx_stream_im_redis_ready_pt)(ngx_uint_t fresh);

void ngx_stream_im_redis_conf_init(ngx_stream_im_redis_conf_t *rcf);
char *ngx_stream_im_redis_conf_merge(ngx_conf_t *cf,
    ngx_stream_im_redis_conf_t *rcf);
char *ngx_stream_im_redis_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_stream_im_redis_password(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_stream_im_redis_wait_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_stream_im_redis_init_worker(ngx_cycle_t *cycle,
    ngx_stream_im_redis_conf_t *conf);
void ngx_stream_im_redis_start(void);
ngx_int_t ngx_stream_im_redis_on_message(ngx_str_t *prefix,
    ngx_stream_im_redis_message_pt handler);
ngx_int_t ngx_stream_im_redis_on_ready(ngx_stream_im_redis_ready_pt handler);
ngx_int_t ngx_stream_im_redis_up(void);
ngx_uint_t ngx_stream_im_redis_pending(void);
ngx_str_t *ngx_stream_im_redis_channel(void);
ngx_int_t ngx_stream_im_redis_command(ngx_uint_t argc, ngx_str_t *argv,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref);
ngx_int_t ngx_stream_im_redis_eval(ngx_uint_t script, ngx_uint_t nkeys,
    ngx_str_t *keys, ngx_uint_t nargs, ngx_str_t *args,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref);
void ngx_stream_im_redis_exit_worker(void);
ngx_int_t ngx_stream_im_redis_subscribe(ngx_str_t *channel, ngx_uint_t on);
ngx_int_t ngx_stream_im_redis_subscribed(
    ngx_stream_im_redis_handler_pt handler);
ngx_int_t ngx_stream_im_redis_publish(ngx_str_t *channel, ngx_str_t *parts,
    ngx_uint_t nparts, ngx_stream_im_redis_handler_pt handler,
    ngx_stream_im_ref_t *ref);
ngx_uint_t ngx_stream_im_redis_batch(ngx_str_t *key);
ngx_uint_t ngx_stream_im_redis_replicated(void);
ngx_int_t ngx_stream_im_redis_barrier(ngx_stream_im_redis_handler_pt handler,
    ngx_stream_im_ref_t *ref);
ngx_int_t ngx_stream_im_redis_refusal(redisReply *r);

/* routing: the worker's users, routes in Redis, delivery and replay */
ngx_int_t ngx_stream_im_router_init_worker(ngx_cycle_t *cycle);
ngx_int_t ngx_stream_im_router_login(ngx_stream_im_session_t *ctx,
    uint32_t id, time_t iat);
ngx_int_t ngx_stream_im_router_check(Im__Message *m, Im__Error__Code *code,
    char **reason);
ngx_int_t ngx_stream_im_router_entry(redisReply *e, ngx_str_t *id,
    ngx_stream_im_msg_id_t *mid, ngx_str_t *partial);
ngx_stream_im_msg_t *ngx_stream_im_router_message(uint32_t id,
    ngx_str_t *cursor, ngx_stream_im_msg_id_t *pos, ngx_str_t *partial);
ngx_int_t ngx_stream_im_router_range(ngx_stream_im_session_t *ctx,
    ngx_str_t *lo, ngx_str_t *hi, ngx_uint_t reverse, ngx_uint_t count,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref);
ngx_int_t ngx_stream_im_router_inbox(ngx_str_t *user, ngx_str_t *lo,
    ngx_str_t *hi, ngx_uint_t reverse, ngx_uint_t count, size_t bytes,
    ngx_stream_im_redis_handler_pt handler, ngx_stream_im_ref_t *ref);
void ngx_stream_im_router_kick(ngx_str_t *user, ngx_str_t *device,
    Im__Error__Code code, ngx_str_t *reason);
ngx_int_t ngx_stream_im_router_auth_ok(ngx_stream_im_session_t *ctx,
    uint32_t id);
ngx_str_t *ngx_stream_im_router_session_id(ngx_stream_im_session_t *ctx,
    u_char *buf);
u_char *ngx_stream_im_router_key(u_char *p, char *kind, ngx_str_t *id,
    char *suffix);

/* route channels: which have a worker behind them; presence changes */
ngx_int_t ngx_stream_im_routes_live(ngx_str_t *channel);
void ngx_stream_im_routes_suspect(ngx_str_t *channel, ngx_str_t *user);
void ngx_stream_im_routes_judge(ngx_str_t *channel);
void ngx_stream_im_routes_verify(ngx_str_t *user, redisReply *channels);
void ngx_stream_im_routes_prune(ngx_str_t *args, ngx_uint_t nargs);
void ngx_stream_im_routes_changed(ngx_stream_im_ref_t *ref, redisReply *r);
void ngx_stream_im_routes_presence(ngx_str_t *user, ngx_uint_t online,
    uint64_t ms);

/* sends: a message into its inboxes, typing to the live routes */
typedef struct {
    ngx_int_t                      rc;         /* NGX_OK: stored,
                                                  NGX_DECLINED: refused,
                                                  NGX_ERROR: unavailable */
    Im__Error__Code                code;       /* of a refusal */
    char                          *reason;
    ngx_str_t                      msg_id;
    uint64_t                       ts;
    ngx_str_t                      client_msg_id;
    size_t                         stored;     /* bytes a group send
                                                  stored */
    ngx_stream_im_msg_id_t         cursor;     /* of the sender's copy */
    ngx_stream_im_msg_id_t         previous;   /* the entry before it */
    unsigned                       own:1;      /* the two are set */
    unsigned                       duplicate:1;
} ngx_stream_im_posted_t;

typedef void (*ngx_stream_im_posted_pt)(ngx_stream_im_ref_t *ref,
    ngx_stream_im_posted_t *posted);

void ngx_stream_im_router_sent(ngx_stream_im_session_t *ctx,
    ngx_stream_im_posted_t *posted);

/* a user's place in a list grouped by Redis batch */
typedef struct {
    ngx_uint_t                     batch;
    ngx_uint_t                     index;
} ngx_stream_im_batched_t;

ngx_int_t ngx_stream_im_post_init_worker(ngx_cycle_t *cycle);
void ngx_stream_im_batch_sort(ngx_stream_im_batched_t *b, ngx_uint_t n);
ngx_int_t ngx_stream_im_post_refusal(redisReply *r, Im__Error__Code *code,
    char **reason);
ngx_int_t ngx_stream_im_post(ngx_stream_im_post_t *post,
    ngx_stream_im_posted_pt handler, ngx_stream_im_ref_t *ref);
void ngx_stream_im_post_typing(ngx_str_t *sender, ngx_str_t *to,
    ngx_str_t *group, ngx_str_t *frame, ngx_str_t *origin,
    ngx_uint_t group_max);

/* presence: watchers of users' online state */
ngx_int_t ngx_stream_im_presence_init_worker(void);
ngx_int_t ngx_stream_im_presence_sub(ngx_stream_im_session_t *ctx,
    Im__Frame *f);

/* dispatch of decoded client frames */
void ngx_stream_im_dispatch_init_worker(void);

ngx_stream_im_arena_t *ngx_stream_im_worker_arena(void);


extern ngx_module_t      ngx_stream_im_module;
extern ngx_connection_t  ngx_stream_im_timer_ident;


#endif /* _NGX_STREAM_IM_H_INCLUDED_ */
