/*
 * Copyright (C) ngx_im authors
 */


/*
 * The JSON admin API (im_api), under its location's prefix:
 *
 *     POST   send                       store and deliver a message
 *     PUT    groups/{gid}               create or update {"open": bool}
 *     DELETE groups/{gid}
 *     POST   groups/{gid}/members       {"add": [...], "remove": [...]}
 *     GET    groups/{gid}/members
 *     POST   presence                   {"users": [...]}
 *     POST   users/{uid}/disconnect     {"device", "reason", "code"}
 *     POST   users/{uid}/revoke         {"before_ms"}
 *     GET    users/{uid}/history        ?before=&after=&limit=
 *
 * Each request is one script call on the worker's Redis link, the one
 * the WebSocket side uses, with the same scripts.  A request waiting for
 * Redis is reached from the reply by slot and generation: the client
 * may have gone and nginx freed the request meanwhile.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_stream.h>

#include "ngx_http_im.h"
#include "ngx_stream_im.h"


#define NGX_HTTP_IM_BODY_MAX           (1024 * 1024)
#define NGX_HTTP_IM_CALLS_MAX          1024
#define NGX_HTTP_IM_CALL_TIMEOUT       15000
#define NGX_HTTP_IM_HISTORY_LIMIT      50
#define NGX_HTTP_IM_HISTORY_MAX        1000
#define NGX_HTTP_IM_HISTORY_BYTES      (1024 * 1024)
#define NGX_HTTP_IM_REASON_MAX         120

#define NGX_HTTP_IM_SEND               0
#define NGX_HTTP_IM_PRESENCE           1
#define NGX_HTTP_IM_GROUP_PUT          2
#define NGX_HTTP_IM_GROUP_DELETE       3
#define NGX_HTTP_IM_GROUP_MEMBERS      4
#define NGX_HTTP_IM_GROUP_GET          5
#define NGX_HTTP_IM_DISCONNECT         6
#define NGX_HTTP_IM_REVOKE             7
#define NGX_HTTP_IM_HISTORY            8


typedef struct {
    ngx_http_request_t            *request;    /* NULL: the slot is free */
    uint32_t                       generation;
} ngx_http_im_call_t;


typedef struct {
    ngx_uint_t                     op;
    ngx_str_t                      id;         /* uid or gid of the path */
    json_t                        *body;
    char                          *reason;     /* of the status to answer */
    int64_t                        before_ms;  /* revoke: tokens before */
    ngx_str_t                     *args;       /* kick: device, code, reason;
                                                  presence: the users */
    ngx_stream_im_batched_t       *batches;    /* presence: users by batch */
    ngx_str_t                     *keys;       /* presence: of a call */
    ngx_uint_t                     nargs;
    ngx_uint_t                     next;       /* presence: the next batch */
    json_t                        *result;     /* presence: so far */
    ngx_uint_t                     slot;       /* in the call table */
    ngx_event_t                    timer;      /* while Redis has it */
    uint32_t                       generation; /* 0: no call */
    unsigned                       reverse:1;  /* history read backwards */
} ngx_http_im_api_ctx_t;


typedef ngx_int_t (*ngx_http_im_op_pt)(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
typedef ngx_int_t (*ngx_http_im_done_pt)(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, redisReply *reply);


typedef struct {
    char                          *path;       /* "groups/ /members" */
    ngx_uint_t                     method;
    ngx_uint_t                     body;       /* has a JSON body */
    ngx_http_im_op_pt              run;
    ngx_http_im_done_pt            done;
} ngx_http_im_op_t;


static ngx_int_t ngx_http_im_api_route(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, ngx_uint_t *allowed);
static void ngx_http_im_api_cleanup(void *data);
static void ngx_http_im_api_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_im_api_parse(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
static void ngx_http_im_api_run(ngx_http_request_t *r);
static ngx_int_t ngx_http_im_api_call(ngx_http_request_t *r,
    ngx_uint_t script, ngx_uint_t nkeys, ngx_str_t *keys, ngx_uint_t nargs,
    ngx_str_t *args);
static ngx_int_t ngx_http_im_api_reserve(ngx_http_request_t *r,
    ngx_stream_im_ref_t *ref);
static ngx_int_t ngx_http_im_api_issued(ngx_http_request_t *r,
    ngx_int_t rc);
static void ngx_http_im_api_release(ngx_http_request_t *r);
static ngx_http_request_t *ngx_http_im_api_lookup(ngx_stream_im_ref_t *ref);
static void ngx_http_im_api_reply(ngx_stream_im_ref_t *ref, redisReply *rr);
static void ngx_http_im_api_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_im_api_refused(ngx_http_request_t *r,
    redisReply *rr);
static ngx_int_t ngx_http_im_fail(ngx_http_request_t *r, ngx_int_t rc);
static ngx_int_t ngx_http_im_fields(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, char **names);
static ngx_int_t ngx_http_im_string(json_t *body, char *name,
    ngx_str_t *value);
static ngx_int_t ngx_http_im_ids(ngx_http_im_api_ctx_t *ctx, char *name,
    ngx_uint_t max, ngx_str_t *ids, ngx_uint_t *n);
static ngx_stream_im_srv_conf_t *ngx_http_im_stream_conf(void);
static ngx_int_t ngx_http_im_key(ngx_http_request_t *r, char *kind,
    ngx_str_t *id, char *suffix, ngx_str_t *key);
static void *ngx_http_im_pool_alloc(void *data, size_t size);
static void ngx_http_im_pool_free(void *data, void *p);

static ngx_int_t ngx_http_im_send_run(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
static void ngx_http_im_send_done(ngx_stream_im_ref_t *ref,
    ngx_stream_im_posted_t *p);
static ngx_int_t ngx_http_im_presence_run(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
static ngx_int_t ngx_http_im_presence_next(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
static ngx_int_t ngx_http_im_presence_done(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, redisReply *rr);
static ngx_int_t ngx_http_im_group_run(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
static ngx_int_t ngx_http_im_group_done(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, redisReply *rr);
static ngx_int_t ngx_http_im_kick_run(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
static ngx_int_t ngx_http_im_kick_call(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, ngx_str_t *keys, ngx_str_t *args);
static ngx_int_t ngx_http_im_kick_done(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, redisReply *rr);
static ngx_int_t ngx_http_im_history_run(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx);
static ngx_int_t ngx_http_im_history_done(ngx_http_request_t *r,
    ngx_http_im_api_ctx_t *ctx, redisReply *rr);


/* in NGX_HTTP_IM_* order; " " in a path stands for an id */

static ngx_http_im_op_t  ngx_http_im_ops[] = {
    { "send", NGX_HTTP_POST, 1,
      ngx_http_im_send_run, NULL },
    { "presence", NGX_HTTP_POST, 1,
      ngx_http_im_presence_run, ngx_http_im_presence_done },
    { "groups/ ", NGX_HTTP_PUT, 1,
      ngx_http_im_group_run, ngx_http_im_group_done },
    { "groups/ ", NGX_HTTP_DELETE, 0,
      ngx_http_im_group_run, ngx_http_im_group_done },
    { "groups/ /members", NGX_HTTP_POST, 1,
      ngx_http_im_group_run, ngx_http_im_group_done },
    { "groups/ /members", NGX_HTTP_GET, 0,
      ngx_http_im_group_run, ngx_http_im_group_done },
    { "users/ /disconnect", NGX_HTTP_POST, 1,
      ngx_http_im_kick_run, ngx_http_im_kick_done },
    { "users/ /revoke", NGX_HTTP_POST, 1,
      ngx_http_im_kick_run, ngx_http_im_kick_done },
    { "users/ /history", NGX_HTTP_GET, 0,
      ngx_http_im_history_run, ngx_http_im_history_done }
};


/* per worker: requests waiting for Redis */

static ngx_http_im_call_t  *ngx_http_im_calls;
static ngx_uint_t          *ngx_http_im_free;
static ngx_uint_t           ngx_http_im_nfree;
static uint32_t             ngx_http_im_generation;


ngx_int_t
ngx_http_im_api_handler(ngx_http_request_t *r)
{
    ngx_int_t               rc;
    ngx_uint_t              allowed;
    ngx_table_elt_t        *h;
    ngx_pool_cleanup_t     *cln;
    ngx_http_im_api_ctx_t  *ctx;

    if (ngx_http_im_authorized(r) != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        return (rc == NGX_OK) ? ngx_http_im_unauthorized(r) : rc;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_im_api_ctx_t));
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = cln->data;
    ngx_memzero(ctx, sizeof(ngx_http_im_api_ctx_t));

    cln->handler = ngx_http_im_api_cleanup;

    ngx_http_set_ctx(r, ctx, ngx_http_im_module);

    rc = ngx_http_im_api_route(r, ctx, &allowed);

    if (rc != NGX_OK) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_HTTP_NOT_ALLOWED) {
            h = ngx_list_push(&r->headers_out.headers);
            if (h == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            h->hash = 1;
            ngx_str_set(&h->key, "Allow");
            h->value.data = ngx_pnalloc(r->pool, sizeof("GET, PUT, POST, "
                                                        "DELETE"));
            if (h->value.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            h->value.len = ngx_sprintf(h->value.data, "%s%s%s%s",
                               allowed & NGX_HTTP_GET ? "GET, " : "",
                               allowed & NGX_HTTP_PUT ? "PUT, " : "",
                               allowed & NGX_HTTP_POST ? "POST, " : "",
                               allowed & NGX_HTTP_DELETE ? "DELETE, " : "")
                           - h->value.data - 2;

            return ngx_http_im_error(r, rc, "method not allowed here");
        }

        return ngx_http_im_error(r, rc, (rc == NGX_HTTP_BAD_REQUEST)
                                        ? "bad id in the path"
                                        : "no such endpoint");
    }

    if (!ngx_http_im_ops[ctx->op].body) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;

        ngx_http_im_api_run(r);

        return NGX_DONE;
    }

    if (r->headers_in.content_length_n > NGX_HTTP_IM_BODY_MAX) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_im_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                 "body larger than 1 MiB");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_im_api_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * The path after the location's prefix names the endpoint; ids in it
 * become parts of Redis keys and are checked here.
 */

static ngx_int_t
ngx_http_im_api_route(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx,
    ngx_uint_t *allowed)
{
    u_char                    *p, *last, *s, *id_end;
    ngx_uint_t                 i, found;
    ngx_str_t                  id;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    p = r->uri.data;
    last = r->uri.data + r->uri.len;

    if (r->uri.len >= clcf->name.len
        && ngx_strncmp(p, clcf->name.data, clcf->name.len) == 0)
    {
        p += clcf->name.len;
    }

    if (p < last && *p == '/') {
        p++;
    }

    *allowed = 0;
    found = 0;

    for (i = 0; i < sizeof(ngx_http_im_ops) / sizeof(ngx_http_im_ops[0]);
         i++)
    {
        s = (u_char *) ngx_http_im_ops[i].path;
        id.data = NULL;
        id.len = 0;
        id_end = p;

        /* match the path, a " " taking one segment as the id */

        while (*s && id_end <= last) {
            if (*s == ' ') {
                id.data = id_end;

                while (id_end < last && *id_end != '/') {
                    id_end++;
                }

                id.len = id_end - id.data;
                s++;
                continue;
            }

            if (id_end == last || *id_end != *s) {
                break;
            }

            id_end++;
            s++;
        }

        if (*s || id_end != last || (id.data && id.len == 0)) {
            continue;
        }

        found = 1;
        *allowed |= ngx_http_im_ops[i].method;

        if (!(r->method & ngx_http_im_ops[i].method)) {
            continue;
        }

        if (id.data && ngx_stream_im_valid_id(id.data, id.len) != NGX_OK) {
            return NGX_HTTP_BAD_REQUEST;
        }

        ctx->op = i;
        ctx->id = id;

        return NGX_OK;
    }

    return found ? NGX_HTTP_NOT_ALLOWED : NGX_HTTP_NOT_FOUND;
}


static void
ngx_http_im_api_cleanup(void *data)
{
    ngx_http_im_api_ctx_t *ctx = data;

    ngx_http_im_call_t  *call;

    if (ctx->body) {
        json_decref(ctx->body);
        ctx->body = NULL;
    }

    if (ctx->result) {
        json_decref(ctx->result);
        ctx->result = NULL;
    }

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    /* freed while Redis had its call: the reply will find nobody */

    if (ctx->generation) {
        call = &ngx_http_im_calls[ctx->slot];

        if (call->generation == ctx->generation) {
            call->request = NULL;
            call->generation = 0;
            ngx_http_im_free[ngx_http_im_nfree++] = ctx->slot;
        }

        ctx->generation = 0;
    }
}


static void
ngx_http_im_api_body(ngx_http_request_t *r)
{
    ngx_int_t               rc;
    ngx_http_im_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_im_module);

    rc = ngx_http_im_api_parse(r, ctx);

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, ngx_http_im_fail(r, rc));
        return;
    }

    ngx_http_im_api_run(r);
}


/*
 * The body, in memory or in a file, as a JSON object; empty is {}.
 * NGX_OK, or a status.
 */

static ngx_int_t
ngx_http_im_api_parse(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx)
{
    u_char        *p, *data;
    off_t          size;
    ssize_t        n;
    ngx_buf_t     *b;
    ngx_chain_t   *cl;
    json_error_t   error;

    size = 0;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            size += ngx_buf_size(cl->buf);
        }
    }

    if (size > NGX_HTTP_IM_BODY_MAX) {
        ctx->reason = "body larger than 1 MiB";
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    if (size == 0) {
        ctx->body = json_object();
        return (ctx->body == NULL) ? NGX_ERROR : NGX_OK;
    }

    data = ngx_pnalloc(r->pool, (size_t) size);
    if (data == NULL) {
        return NGX_ERROR;
    }

    p = data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, p, (size_t) (b->file_last
                                                    - b->file_pos),
                              b->file_pos);

            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    ctx->body = json_loadb((char *) data, p - data, JSON_REJECT_DUPLICATES,
                           &error);

    if (ctx->body == NULL || !json_is_object(ctx->body)) {
        ctx->reason = "the body is not a JSON object";
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* the request's one call, or its answer now */

static void
ngx_http_im_api_run(ngx_http_request_t *r)
{
    ngx_int_t               rc;
    ngx_http_im_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_im_module);

    rc = ngx_http_im_ops[ctx->op].run(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


/* NGX_DONE: the call is with Redis; else the rc of an answer sent */

static ngx_int_t
ngx_http_im_api_call(ngx_http_request_t *r, ngx_uint_t script,
    ngx_uint_t nkeys, ngx_str_t *keys, ngx_uint_t nargs, ngx_str_t *args)
{
    ngx_int_t            rc;
    ngx_stream_im_ref_t  ref;

    rc = ngx_http_im_api_reserve(r, &ref);
    if (rc != NGX_OK) {
        return ngx_http_im_fail(r, rc);
    }

    rc = ngx_stream_im_redis_eval(script, nkeys, keys, nargs, args,
                                  ngx_http_im_api_reply, &ref);

    return ngx_http_im_api_issued(r, rc);
}


/* the call went to the Redis link (NGX_OK): NGX_DONE; else the answer */

static ngx_int_t
ngx_http_im_api_issued(ngx_http_request_t *r, ngx_int_t rc)
{
    if (rc == NGX_OK) {
        return NGX_DONE;
    }

    ngx_http_im_api_release(r);

    if (rc == NGX_DECLINED) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                             "Redis is unavailable, retry");
}


/* a slot for the request while Redis has its call: NGX_OK, or a status */

static ngx_int_t
ngx_http_im_api_reserve(ngx_http_request_t *r, ngx_stream_im_ref_t *ref)
{
    ngx_uint_t              i, slot;
    ngx_http_im_call_t     *call;
    ngx_http_im_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_im_module);

    if (!ngx_stream_im_redis_up()) {
        ctx->reason = "Redis is unavailable, retry";
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (ngx_http_im_calls == NULL) {
        ngx_http_im_calls = ngx_calloc(NGX_HTTP_IM_CALLS_MAX
                                       * sizeof(ngx_http_im_call_t),
                                       ngx_cycle->log);
        ngx_http_im_free = ngx_alloc(NGX_HTTP_IM_CALLS_MAX
                                     * sizeof(ngx_uint_t), ngx_cycle->log);

        if (ngx_http_im_calls == NULL || ngx_http_im_free == NULL) {
            ngx_free(ngx_http_im_calls);
            ngx_free(ngx_http_im_free);
            ngx_http_im_calls = NULL;
            ngx_http_im_free = NULL;
            return NGX_ERROR;
        }

        for (i = 0; i < NGX_HTTP_IM_CALLS_MAX; i++) {
            ngx_http_im_free[i] = NGX_HTTP_IM_CALLS_MAX - 1 - i;
        }

        ngx_http_im_nfree = NGX_HTTP_IM_CALLS_MAX;
    }

    if (ngx_http_im_nfree == 0) {
        ctx->reason = "too many API requests in flight, retry";
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    slot = ngx_http_im_free[--ngx_http_im_nfree];
    call = &ngx_http_im_calls[slot];

    if (++ngx_http_im_generation == 0) {
        ngx_http_im_generation = 1;
    }

    call->request = r;
    call->generation = ngx_http_im_generation;

    ctx->slot = slot;
    ctx->generation = call->generation;

    ngx_memzero(ref, sizeof(ngx_stream_im_ref_t));
    ref->slot = slot;
    ref->number = call->generation;

    /* not cancelable: a worker that exits after a reload answers first */

    ctx->timer.handler = ngx_http_im_api_timeout;
    ctx->timer.data = r;
    ctx->timer.log = r->connection->log;
    ctx->timer.cancelable = 0;

    ngx_add_timer(&ctx->timer, NGX_HTTP_IM_CALL_TIMEOUT);

    return NGX_OK;
}


/* the call could not be made after all: the slot goes */

static void
ngx_http_im_api_release(ngx_http_request_t *r)
{
    ngx_http_im_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_im_module);

    ngx_http_im_calls[ctx->slot].request = NULL;
    ngx_http_im_calls[ctx->slot].generation = 0;
    ngx_http_im_free[ngx_http_im_nfree++] = ctx->slot;
    ctx->generation = 0;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }
}


/* Redis did not answer in time: its late reply will find nobody */

static void
ngx_http_im_api_timeout(ngx_event_t *ev)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ev->data;
    c = r->connection;

    ngx_http_im_api_release(r);

    ngx_http_finalize_request(r, ngx_http_im_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "Redis did not answer in time, retry"));
    ngx_http_run_posted_requests(c);
}


/* the request a reply is for, if it still waits; its slot goes */

static ngx_http_request_t *
ngx_http_im_api_lookup(ngx_stream_im_ref_t *ref)
{
    ngx_http_request_t  *r;
    ngx_http_im_call_t  *call;

    if (ref->slot >= NGX_HTTP_IM_CALLS_MAX) {
        return NULL;
    }

    call = &ngx_http_im_calls[ref->slot];

    if (call->request == NULL || call->generation != ref->number) {
        return NULL;
    }

    r = call->request;

    ngx_http_im_api_release(r);

    return r;
}


static void
ngx_http_im_api_reply(ngx_stream_im_ref_t *ref, redisReply *rr)
{
    ngx_int_t               rc;
    ngx_connection_t       *c;
    ngx_http_request_t     *r;
    ngx_http_im_api_ctx_t  *ctx;

    r = ngx_http_im_api_lookup(ref);

    if (r == NULL) {
        return;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_im_module);

    c = r->connection;

    if (rr == NULL) {
        rc = ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "Redis went away, retry");

    } else if (rr->type == REDIS_REPLY_ERROR) {
        rc = ngx_http_im_api_refused(r, rr);

    } else {
        rc = ngx_http_im_ops[ctx->op].done(r, ctx, rr);

        if (rc == NGX_AGAIN) {

            /* the request's next call is out */
            return;
        }
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/* a script refuses with "<CODE> <reason>"; other errors are Redis's */

static ngx_int_t
ngx_http_im_api_refused(ngx_http_request_t *r, redisReply *rr)
{
    size_t      len;
    ngx_uint_t  i;

    static struct {
        char        *name;
        ngx_uint_t   status;
    } codes[] = {
        { "FORBIDDEN ", NGX_HTTP_FORBIDDEN },
        { "TOO_LARGE ", NGX_HTTP_REQUEST_ENTITY_TOO_LARGE },
        { "NOT_FOUND ", NGX_HTTP_NOT_FOUND },
        { "CONFLICT ", NGX_HTTP_CONFLICT }
    };

    if (ngx_stream_im_redis_refusal(rr)) {
        for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
            len = ngx_strlen(codes[i].name);

            if (ngx_strncmp(rr->str, codes[i].name, len) == 0) {
                return ngx_http_im_error(r, codes[i].status, rr->str + len);
            }
        }
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "redis refused an API request: %s", rr->str);

    return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                             "storage unavailable, retry");
}


/* POST send */

static ngx_int_t
ngx_http_im_send_run(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx)
{
    char                      *reason;
    ngx_int_t                  rc;
    ngx_str_t                  from, to, group, body, b64, type, cmid;
    Im__Message               *msg;
    Im__Error__Code            code;
    ngx_stream_im_ref_t        ref;
    ngx_stream_im_post_t       post;
    ngx_stream_im_srv_conf_t  *iscf;

    static char  *fields[] = { "from", "to", "group", "body", "body_b64",
                               "type", "client_msg_id", NULL };

    rc = ngx_http_im_fields(r, ctx, fields);
    if (rc != NGX_OK) {
        return ngx_http_im_fail(r, rc);
    }

    if (ngx_http_im_string(ctx->body, "from", &from) != NGX_OK
        || ngx_http_im_string(ctx->body, "to", &to) == NGX_ERROR
        || ngx_http_im_string(ctx->body, "group", &group) == NGX_ERROR
        || ngx_http_im_string(ctx->body, "type", &type) == NGX_ERROR
        || ngx_http_im_string(ctx->body, "client_msg_id", &cmid)
           == NGX_ERROR)
    {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                 "\"from\" is needed; \"from\", \"to\", "
                                 "\"group\", \"type\" and \"client_msg_id\" "
                                 "are strings without NUL");
    }

    if (ngx_stream_im_valid_id(from.data, from.len) != NGX_OK) {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST, "bad \"from\"");
    }

    if (json_object_get(ctx->body, "body")
        && json_object_get(ctx->body, "body_b64"))
    {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                 "\"body\" or \"body_b64\", not both");
    }

    /* the body is bytes: a JSON string as its UTF-8, or base64 */

    body.len = 0;
    body.data = (u_char *) "";

    if (json_object_get(ctx->body, "body")) {
        if (!json_is_string(json_object_get(ctx->body, "body"))) {
            return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                     "\"body\" is a string");
        }

        body.data = (u_char *) json_string_value(json_object_get(ctx->body,
                                                                 "body"));
        body.len = json_string_length(json_object_get(ctx->body, "body"));

    } else if (json_object_get(ctx->body, "body_b64")) {
        rc = ngx_http_im_string(ctx->body, "body_b64", &b64);

        if (rc == NGX_OK) {
            body.data = ngx_pnalloc(r->pool,
                                    ngx_base64_decoded_length(b64.len) + 1);
            if (body.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            rc = ngx_decode_base64(&body, &b64);
        }

        if (rc != NGX_OK) {
            return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                     "\"body_b64\" is not base64");
        }
    }

    iscf = ngx_http_im_stream_conf();

    if (iscf == NULL) {
        return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "no stream server has \"im\"");
    }

    if (body.len > iscf->max_frame) {
        return ngx_http_im_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                 "body larger than im_max_frame");
    }

    msg = ngx_pcalloc(r->pool, sizeof(Im__Message));
    if (msg == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    im__message__init(msg);

    msg->from = (char *) from.data;
    msg->to = (char *) to.data;
    msg->group = (char *) group.data;
    msg->body.data = body.data;
    msg->body.len = body.len;
    msg->client_msg_id = (char *) cmid.data;
    msg->type = (char *) type.data;

    if (ngx_stream_im_router_check(msg, &code, &reason) != NGX_OK) {
        return ngx_http_im_error(r, (code == IM__ERROR__CODE__TOO_LARGE)
                                    ? NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                    : NGX_HTTP_BAD_REQUEST,
                                 reason);
    }

    post.msg = msg;
    ngx_str_set(&post.origin, "");
    post.inbox_max = iscf->inbox_max;
    post.group_max = iscf->group_max;
    post.backend = 1;

    /* the send script, by the path a client's Send takes */

    rc = ngx_http_im_api_reserve(r, &ref);
    if (rc != NGX_OK) {
        return ngx_http_im_fail(r, rc);
    }

    rc = ngx_stream_im_post(&post, ngx_http_im_send_done, &ref);

    if (rc == NGX_DECLINED) {
        ngx_http_im_api_release(r);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_im_api_issued(r, rc);
}


static void
ngx_http_im_send_done(ngx_stream_im_ref_t *ref, ngx_stream_im_posted_t *p)
{
    ngx_int_t            rc;
    ngx_uint_t           status;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ngx_http_im_api_lookup(ref);

    if (r == NULL) {
        return;
    }

    c = r->connection;

    if (p->rc == NGX_OK) {
        ngx_stream_im_metrics_count(NGX_STREAM_IM_M_STORED);

        rc = ngx_http_im_json(r, NGX_HTTP_OK,
                              json_pack("{s:s%, s:I, s:b}",
                                        "msg_id", p->msg_id.data,
                                        p->msg_id.len,
                                        "ts_ms", (json_int_t) p->ts,
                                        "duplicate", p->duplicate));

    } else if (p->rc == NGX_DECLINED) {
        switch (p->code) {

        case IM__ERROR__CODE__FORBIDDEN:
            status = NGX_HTTP_FORBIDDEN;
            break;

        case IM__ERROR__CODE__TOO_LARGE:
            status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
            break;

        default:
            status = NGX_HTTP_NOT_FOUND;
            break;
        }

        rc = ngx_http_im_error(r, status, p->reason);

    } else {
        rc = ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "storage unavailable, retry");
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/* POST presence {"users": [...]}: at most im_presence_max */

static ngx_int_t
ngx_http_im_presence_run(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                 *users, key;
    ngx_uint_t                 i, n;
    ngx_stream_im_srv_conf_t  *iscf;

    static char  *fields[] = { "users", NULL };

    rc = ngx_http_im_fields(r, ctx, fields);
    if (rc != NGX_OK) {
        return ngx_http_im_fail(r, rc);
    }

    iscf = ngx_http_im_stream_conf();

    if (iscf == NULL) {
        return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "no stream server has \"im\"");
    }

    users = ngx_palloc(r->pool, (iscf->presence_max + 1) * sizeof(ngx_str_t));
    if (users == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_im_ids(ctx, "users", iscf->presence_max, users,
                         &n);
    if (rc != NGX_OK) {
        return ngx_http_im_fail(r, rc);
    }

    if (!json_object_get(ctx->body, "users")) {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                 "\"users\" is needed");
    }

    if (n == 0) {
        return ngx_http_im_json(r, NGX_HTTP_OK, json_pack("{s:{}}", "users"));
    }

    /* one call per batch of users (a slot on a cluster), one by one */

    ctx->batches = ngx_palloc(r->pool, n * sizeof(ngx_stream_im_batched_t));
    ctx->keys = ngx_palloc(r->pool, 3 * n * sizeof(ngx_str_t));
    ctx->result = json_object();

    if (ctx->batches == NULL || ctx->keys == NULL || ctx->result == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < n; i++) {
        if (ngx_http_im_key(r, "u", &users[i], "routes", &key) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->batches[i].batch = ngx_stream_im_redis_batch(&key);
        ctx->batches[i].index = i;
    }

    ngx_stream_im_batch_sort(ctx->batches, n);

    ctx->args = users;
    ctx->nargs = n;
    ctx->next = 0;

    return ngx_http_im_presence_next(r, ctx);
}


static ngx_int_t
ngx_http_im_presence_next(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx)
{
    ngx_str_t                *keys, *args, *u;
    ngx_uint_t                i, k;
    ngx_stream_im_batched_t  *b;

    b = ctx->batches;

    /* one array for every batch: what a call takes is copied out */

    keys = ctx->keys;
    args = keys + 2 * ctx->nargs;

    for (i = ctx->next, k = 0;
         i < ctx->nargs && b[i].batch == b[ctx->next].batch;
         i++, k++)
    {
        u = &ctx->args[b[i].index];

        if (ngx_http_im_key(r, "u", u, "routes", &keys[2 * k]) != NGX_OK
            || ngx_http_im_key(r, "u", u, "seen", &keys[2 * k + 1])
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        args[k] = *u;
    }

    ctx->next = i;

    return ngx_http_im_api_call(r, NGX_STREAM_IM_SCRIPT_DEVICES, 2 * k, keys,
                                k, args);
}


/* {user, online, last seen ms, {device, ...}, ...} */

static ngx_int_t
ngx_http_im_presence_done(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx,
    redisReply *rr)
{
    size_t       i, j;
    json_t      *root, *users, *user, *devices;
    ngx_int_t    rc;
    redisReply  **e;

    users = ctx->result;

    if (rr->type != REDIS_REPLY_ARRAY || rr->elements % 4) {
        return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "storage unavailable, retry");
    }

    for (i = 0; i < rr->elements; i += 4) {
        e = &rr->element[i];

        if (e[0]->type != REDIS_REPLY_STRING
            || e[1]->type != REDIS_REPLY_INTEGER
            || e[2]->type != REDIS_REPLY_INTEGER
            || e[3]->type != REDIS_REPLY_ARRAY)
        {
            continue;
        }

        devices = json_array();

        for (j = 0; devices && j < e[3]->elements; j++) {
            if (e[3]->element[j]->type == REDIS_REPLY_STRING) {
                json_array_append_new(devices,
                                      json_stringn(e[3]->element[j]->str,
                                                   e[3]->element[j]->len));
            }
        }

        user = json_pack("{s:b, s:o, s:I}", "online", e[1]->integer != 0,
                         "devices", devices ? devices : json_array(),
                         "last_seen_ms", (json_int_t) e[2]->integer);

        if (user == NULL
            || json_object_setn_new_nocheck(users, e[0]->str, e[0]->len,
                                            user))
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ctx->next < ctx->nargs) {
        rc = ngx_http_im_presence_next(r, ctx);

        return (rc == NGX_DONE) ? NGX_AGAIN : rc;
    }

    root = json_object();

    /* the request's pool cleanup lets go of the result */

    if (root == NULL || json_object_set(root, "users", users)) {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_im_json(r, NGX_HTTP_OK, root);
}


/*
 * PUT groups/{gid} {"open": bool}, DELETE groups/{gid},
 * POST groups/{gid}/members {"add": [...], "remove": [...]},
 * GET groups/{gid}/members.  One admin script does them all.
 */

static ngx_int_t
ngx_http_im_group_run(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx)
{
    json_t                    *open;
    ngx_int_t                  rc;
    ngx_str_t                  keys[2], *args;
    ngx_uint_t                 nadd, nremove;
    ngx_stream_im_srv_conf_t  *iscf;
    u_char                     max[NGX_INT_T_LEN];
    u_char                     count[NGX_INT_T_LEN];

    static char  *put[] = { "open", NULL };
    static char  *members[] = { "add", "remove", NULL };

    if (ngx_http_im_key(r, "g", &ctx->id, "members", &keys[0]) != NGX_OK
        || ngx_http_im_key(r, "g", &ctx->id, "meta", &keys[1]) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    switch (ctx->op) {

    case NGX_HTTP_IM_GROUP_PUT:
        rc = ngx_http_im_fields(r, ctx, put);
        if (rc != NGX_OK) {
            return ngx_http_im_fail(r, rc);
        }

        open = json_object_get(ctx->body, "open");

        if (open && !json_is_boolean(open)) {
            return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                     "\"open\" is true or false");
        }

        args = ngx_palloc(r->pool, 2 * sizeof(ngx_str_t));
        if (args == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_str_set(&args[0], "put");

        if (open && json_is_true(open)) {
            ngx_str_set(&args[1], "1");

        } else {
            ngx_str_set(&args[1], "0");
        }

        return ngx_http_im_api_call(r, NGX_STREAM_IM_SCRIPT_ADMIN, 2, keys, 2,
                                    args);

    case NGX_HTTP_IM_GROUP_DELETE:
    case NGX_HTTP_IM_GROUP_GET:
        args = ngx_palloc(r->pool, sizeof(ngx_str_t));
        if (args == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ctx->op == NGX_HTTP_IM_GROUP_DELETE) {
            ngx_str_set(&args[0], "delete");

        } else {
            ngx_str_set(&args[0], "get");
        }

        return ngx_http_im_api_call(r, NGX_STREAM_IM_SCRIPT_ADMIN, 2, keys, 1,
                                    args);

    default: /* NGX_HTTP_IM_GROUP_MEMBERS */
        rc = ngx_http_im_fields(r, ctx, members);
        if (rc != NGX_OK) {
            return ngx_http_im_fail(r, rc);
        }

        iscf = ngx_http_im_stream_conf();

        if (iscf == NULL) {
            return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "no stream server has \"im\"");
        }

        /* each list at most a full group */

        args = ngx_palloc(r->pool,
                          (3 + 2 * (iscf->group_max + 1)) * sizeof(ngx_str_t));
        if (args == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_im_ids(ctx, "add", iscf->group_max, &args[3],
                             &nadd);
        if (rc != NGX_OK) {
            return ngx_http_im_fail(r, rc);
        }

        rc = ngx_http_im_ids(ctx, "remove", iscf->group_max,
                             &args[3 + nadd], &nremove);
        if (rc != NGX_OK) {
            return ngx_http_im_fail(r, rc);
        }

        ngx_str_set(&args[0], "members");
        args[1].data = max;
        args[1].len = ngx_sprintf(max, "%ui", iscf->group_max) - max;
        args[2].data = count;
        args[2].len = ngx_sprintf(count, "%ui", nadd) - count;

        return ngx_http_im_api_call(r, NGX_STREAM_IM_SCRIPT_ADMIN, 2, keys,
                                    3 + nadd + nremove, args);
    }
}


static ngx_int_t
ngx_http_im_group_done(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx,
    redisReply *rr)
{
    size_t   i;
    json_t  *list;

    switch (ctx->op) {

    case NGX_HTTP_IM_GROUP_PUT:
        if (rr->type != REDIS_REPLY_INTEGER) {
            break;
        }

        return ngx_http_im_json(r, rr->integer ? NGX_HTTP_CREATED
                                               : NGX_HTTP_OK,
                    json_pack("{s:s%, s:b, s:b}",
                              "group", ctx->id.data, ctx->id.len,
                              "open", json_is_true(json_object_get(ctx->body,
                                                                   "open")),
                              "created", rr->integer != 0));

    case NGX_HTTP_IM_GROUP_DELETE:
        if (rr->type != REDIS_REPLY_INTEGER) {
            break;
        }

        if (rr->integer == 0) {
            return ngx_http_im_error(r, NGX_HTTP_NOT_FOUND, "no such group");
        }

        return ngx_http_im_json(r, NGX_HTTP_OK,
                                json_pack("{s:s%, s:b}",
                                          "group", ctx->id.data, ctx->id.len,
                                          "deleted", 1));

    case NGX_HTTP_IM_GROUP_GET:
        if (rr->type != REDIS_REPLY_ARRAY || rr->elements == 0
            || rr->element[0]->type != REDIS_REPLY_INTEGER)
        {
            break;
        }

        list = json_array();
        if (list == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        for (i = 1; i < rr->elements; i++) {
            if (rr->element[i]->type == REDIS_REPLY_STRING) {
                json_array_append_new(list,
                                      json_stringn(rr->element[i]->str,
                                                   rr->element[i]->len));
            }
        }

        return ngx_http_im_json(r, NGX_HTTP_OK,
                                json_pack("{s:s%, s:b, s:o}",
                                          "group", ctx->id.data, ctx->id.len,
                                          "open",
                                          rr->element[0]->integer != 0,
                                          "members", list));

    default: /* NGX_HTTP_IM_GROUP_MEMBERS */
        if (rr->type != REDIS_REPLY_ARRAY || rr->elements != 3) {
            break;
        }

        for (i = 0; i < 3; i++) {
            if (rr->element[i]->type != REDIS_REPLY_INTEGER) {
                goto bad;
            }
        }

        return ngx_http_im_json(r, NGX_HTTP_OK,
                                json_pack("{s:s%, s:I, s:I, s:I}",
                                          "group", ctx->id.data, ctx->id.len,
                                          "added", rr->element[0]->integer,
                                          "removed", rr->element[1]->integer,
                                          "size", rr->element[2]->integer));
    }

bad:

    return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                             "storage unavailable, retry");
}


/*
 * POST users/{uid}/disconnect {"device", "reason", "code"} and
 * POST users/{uid}/revoke {"before_ms"}: the kick script tells every
 * worker holding such a session, on any node, through its route channel.
 */

static ngx_int_t
ngx_http_im_kick_run(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx)
{
    json_t           *before;
    ngx_int_t         rc;
    ngx_str_t         keys[2], *args, code;
    ngx_time_t       *tp;
    json_int_t        ms;
    Im__Error__Code   error;

    static char  *disconnect[] = { "device", "reason", "code", NULL };
    static char  *revoke[] = { "before_ms", NULL };

    args = ngx_pcalloc(r->pool, 5 * sizeof(ngx_str_t));
    if (args == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_im_key(r, "u", &ctx->id, "routes", &keys[0]) != NGX_OK
        || ngx_http_im_key(r, "u", &ctx->id, "revoked", &keys[1]) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    args[0] = ctx->id;
    ngx_str_set(&args[1], "");
    ngx_str_set(&args[4], "");

    if (ctx->op == NGX_HTTP_IM_REVOKE) {
        rc = ngx_http_im_fields(r, ctx, revoke);
        if (rc != NGX_OK) {
            return ngx_http_im_fail(r, rc);
        }

        before = json_object_get(ctx->body, "before_ms");

        if (before == NULL) {
            tp = ngx_timeofday();
            ms = (json_int_t) tp->sec * 1000 + tp->msec;

        } else if (json_is_integer(before)
                   && json_integer_value(before) >= 0
                   && json_integer_value(before) <= NGX_MAX_INT_T_VALUE / 2)
        {
            ms = json_integer_value(before);

        } else {
            return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                     "\"before_ms\" is a time in ms since "
                                     "the epoch");
        }

        args[4].data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (args[4].data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->before_ms = ms;

        args[4].len = ngx_sprintf(args[4].data, "%L", ctx->before_ms)
                      - args[4].data;

        ngx_str_set(&args[2], "2");        /* UNAUTHENTICATED */
        ngx_str_set(&args[3], "token revoked");

        return ngx_http_im_kick_call(r, ctx, keys, args);
    }

    rc = ngx_http_im_fields(r, ctx, disconnect);
    if (rc != NGX_OK) {
        return ngx_http_im_fail(r, rc);
    }

    rc = ngx_http_im_string(ctx->body, "device", &args[1]);

    if (rc == NGX_ERROR
        || (rc == NGX_OK
            && ngx_stream_im_valid_id(args[1].data, args[1].len) != NGX_OK))
    {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST, "bad \"device\"");
    }

    if (rc == NGX_DECLINED) {
        ngx_str_set(&args[1], "");
    }

    rc = ngx_http_im_string(ctx->body, "reason", &args[3]);

    if (rc == NGX_ERROR || args[3].len > NGX_HTTP_IM_REASON_MAX) {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                 "\"reason\" is a string of at most 120 "
                                 "bytes");
    }

    if (rc == NGX_DECLINED || args[3].len == 0) {
        ngx_str_set(&args[3], "disconnected by the server");
    }

    rc = ngx_http_im_string(ctx->body, "code", &code);

    if (rc == NGX_DECLINED
        || (rc == NGX_OK && ngx_strcmp(code.data, "FORBIDDEN") == 0))
    {
        error = IM__ERROR__CODE__FORBIDDEN;

    } else if (rc == NGX_OK && ngx_strcmp(code.data, "UNAUTHENTICATED") == 0)
    {
        error = IM__ERROR__CODE__UNAUTHENTICATED;

    } else {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                 "\"code\" is \"FORBIDDEN\" or "
                                 "\"UNAUTHENTICATED\"");
    }

    args[2].data = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (args[2].data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    args[2].len = ngx_sprintf(args[2].data, "%d", (int) error)
                  - args[2].data;

    return ngx_http_im_kick_call(r, ctx, keys, args);
}


/* args: user, device, code, reason, revocation time; the script's two */

static ngx_int_t
ngx_http_im_kick_call(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx,
    ngx_str_t *keys, ngx_str_t *args)
{
    ngx_str_t  argv[2];

    ctx->args = args;

    argv[0] = args[1];
    argv[1] = args[4];

    return ngx_http_im_api_call(r, NGX_STREAM_IM_SCRIPT_KICK, 2, keys, 2,
                                argv);
}


static ngx_int_t
ngx_http_im_kick_done(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx,
    redisReply *rr)
{
    size_t      i;
    json_t     *root;
    ngx_str_t   channel, parts[8];

    if (rr->type != REDIS_REPLY_ARRAY || rr->elements == 0
        || rr->element[0]->type != REDIS_REPLY_INTEGER)
    {
        return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "storage unavailable, retry");
    }

    /* "x<code>\n\n<user>\n<device>\n<reason>" to each worker holding one */

    ngx_str_set(&parts[0], "x");
    parts[1] = ctx->args[2];
    ngx_str_set(&parts[2], "\n\n");
    parts[3] = ctx->args[0];
    ngx_str_set(&parts[4], "\n");
    parts[5] = ctx->args[1];
    parts[6] = parts[4];
    parts[7] = ctx->args[3];

    for (i = 1; i < rr->elements; i++) {
        if (rr->element[i]->type != REDIS_REPLY_STRING) {
            continue;
        }

        channel.data = (u_char *) rr->element[i]->str;
        channel.len = rr->element[i]->len;

        (void) ngx_stream_im_redis_publish(&channel, parts, 8, NULL, NULL);
    }

    root = json_pack("{s:s%, s:I}", "user", ctx->id.data, ctx->id.len,
                     "disconnected", (json_int_t) rr->element[0]->integer);

    if (root && ctx->op == NGX_HTTP_IM_REVOKE) {
        json_object_set_new(root, "revoked_before_ms",
                            json_integer((json_int_t) ctx->before_ms));
    }

    return ngx_http_im_json(r, NGX_HTTP_OK, root);
}


/*
 * GET users/{uid}/history?before=&after=&limit=: a page of the inbox,
 * oldest first; with "before" or neither, the newest page before it.
 */

static ngx_int_t
ngx_http_im_history_run(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx)
{
    ngx_int_t               rc, limit;
    ngx_str_t               before, after, value, lo, hi;
    ngx_stream_im_ref_t     ref;
    ngx_stream_im_msg_id_t  lower, upper;

    limit = NGX_HTTP_IM_HISTORY_LIMIT;

    if (ngx_http_arg(r, (u_char *) "limit", 5, &value) == NGX_OK) {
        limit = ngx_atoi(value.data, value.len);

        if (limit < 1 || limit > NGX_HTTP_IM_HISTORY_MAX) {
            return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                     "\"limit\" is 1 to 1000");
        }
    }

    ngx_str_null(&before);
    ngx_str_null(&after);

    if ((ngx_http_arg(r, (u_char *) "before", 6, &before) == NGX_OK
         && ngx_stream_im_msg_id_parse(before.data, before.len, &upper)
            != NGX_OK)
        || (ngx_http_arg(r, (u_char *) "after", 5, &after) == NGX_OK
            && ngx_stream_im_msg_id_parse(after.data, after.len, &lower)
               != NGX_OK))
    {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                 "\"before\" and \"after\" are msg_ids");
    }

    if (before.len && after.len
        && (lower.ms > upper.ms
            || (lower.ms == upper.ms && lower.seq >= upper.seq)))
    {
        return ngx_http_im_error(r, NGX_HTTP_BAD_REQUEST,
                                 "\"after\" must be older than \"before\"");
    }

    /* nothing is before the first id or after the last: Redis says so */

    if ((before.len && upper.ms == 0 && upper.seq == 0)
        || (after.len && lower.ms == (uint64_t) -1
            && lower.seq == (uint64_t) -1))
    {
        return ngx_http_im_json(r, NGX_HTTP_OK,
                                json_pack("{s:[], s:b}", "messages",
                                          "more", 0));
    }

    ngx_str_set(&lo, "-");
    ngx_str_set(&hi, "+");

    if (after.len) {
        lo.data = ngx_pnalloc(r->pool, after.len + 1);
        if (lo.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        lo.len = ngx_sprintf(lo.data, "(%V", &after) - lo.data;
    }

    if (before.len) {
        hi.data = ngx_pnalloc(r->pool, before.len + 1);
        if (hi.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        hi.len = ngx_sprintf(hi.data, "(%V", &before) - hi.data;
    }

    ctx->reverse = (after.len == 0);

    rc = ngx_http_im_api_reserve(r, &ref);
    if (rc != NGX_OK) {
        return ngx_http_im_fail(r, rc);
    }

    rc = ngx_stream_im_router_inbox(&ctx->id, &lo, &hi, ctx->reverse,
                                    (ngx_uint_t) limit,
                                    NGX_HTTP_IM_HISTORY_BYTES,
                                    ngx_http_im_api_reply, &ref);

    return ngx_http_im_api_issued(r, rc);
}


/* {more, entry, ...}: each entry a stored Message */

static ngx_int_t
ngx_http_im_history_done(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx,
    redisReply *rr)
{
    size_t                   i, n;
    json_t                  *list, *m;
    ngx_str_t                id, partial, b64;
    Im__Message             *msg;
    ProtobufCAllocator       allocator;
    ngx_stream_im_msg_id_t   mid;

    if (rr->type != REDIS_REPLY_ARRAY || rr->elements == 0
        || rr->element[0]->type != REDIS_REPLY_INTEGER)
    {
        return ngx_http_im_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "storage unavailable, retry");
    }

    list = json_array();
    if (list == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    allocator.alloc = ngx_http_im_pool_alloc;
    allocator.free = ngx_http_im_pool_free;
    allocator.allocator_data = r->pool;

    n = rr->elements - 1;

    for (i = 0; i < n; i++) {

        /* oldest first, however it was read */

        if (ngx_stream_im_router_entry(rr->element[ctx->reverse ? n - i
                                                                : i + 1],
                                       &id, &mid, &partial)
            != NGX_OK)
        {
            continue;
        }

        msg = im__message__unpack(&allocator, partial.len, partial.data);

        if (msg == NULL) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "inbox entry %V is not an im.Message", &id);
            continue;
        }

        /* an entry stored before cursors existed: its id is both */

        m = json_pack("{s:s%, s:s%, s:s, s:s, s:s, s:I, s:s, s:s}",
                      "msg_id", msg->msg_id[0] ? (u_char *) msg->msg_id
                                               : id.data,
                      msg->msg_id[0] ? ngx_strlen(msg->msg_id) : id.len,
                      "cursor", id.data, id.len,
                      "from", msg->from, "to", msg->to,
                      "group", msg->group,
                      "ts_ms", (json_int_t) (msg->ts_ms ? msg->ts_ms
                                                        : mid.ms),
                      "type", msg->type, "client_msg_id",
                      msg->client_msg_id);

        if (m == NULL) {
            continue;
        }

        if (ngx_stream_im_utf8_valid(msg->body.data, msg->body.len)
            == NGX_OK)
        {
            json_object_set_new(m, "body",
                                json_stringn((char *) msg->body.data,
                                             msg->body.len));

        } else {
            b64.len = ngx_base64_encoded_length(msg->body.len);
            b64.data = ngx_pnalloc(r->pool, b64.len);

            if (b64.data) {
                ngx_encode_base64(&b64, (ngx_str_t *) &msg->body);
                json_object_set_new(m, "body_b64",
                                    json_stringn((char *) b64.data, b64.len));
            }
        }

        json_array_append_new(list, m);
    }

    return ngx_http_im_json(r, NGX_HTTP_OK,
                            json_pack("{s:o, s:b}", "messages", list,
                                      "more", rr->element[0]->integer != 0));
}


/* the answer to a helper's status, with the reason it left */

static ngx_int_t
ngx_http_im_fail(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_im_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_im_module);

    if (rc == NGX_ERROR || ctx->reason == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_im_error(r, rc, ctx->reason);
}


/*
 * Only the names given may be in the body: a typo is not ignored.
 * NGX_OK, or a status and its reason.
 */

static ngx_int_t
ngx_http_im_fields(ngx_http_request_t *r, ngx_http_im_api_ctx_t *ctx,
    char **names)
{
    u_char       *p;
    char        **n;
    size_t        len;
    const char   *key;
    json_t       *value;

    json_object_foreach(ctx->body, key, value) {
        for (n = names; *n; n++) {
            if (ngx_strcmp(*n, key) == 0) {
                break;
            }
        }

        if (*n == NULL) {
            len = sizeof("unknown field \"\"") + 64;

            p = ngx_pnalloc(r->pool, len);
            if (p == NULL) {
                return NGX_ERROR;
            }

            ngx_snprintf(p, len, "unknown field \"%*s\"%Z",
                         ngx_min(ngx_strlen(key), 64), key);

            ctx->reason = (char *) p;

            return NGX_HTTP_BAD_REQUEST;
        }
    }

    return NGX_OK;
}


/*
 * NGX_OK, NGX_DECLINED if absent (value is ""), NGX_ERROR if not a
 * string or one with a NUL inside: C strings go on from here.
 */

static ngx_int_t
ngx_http_im_string(json_t *body, char *name, ngx_str_t *value)
{
    json_t  *v;

    v = json_object_get(body, name);

    value->data = (u_char *) "";
    value->len = 0;

    if (v == NULL) {
        return NGX_DECLINED;
    }

    if (!json_is_string(v)
        || ngx_strlen(json_string_value(v)) != json_string_length(v))
    {
        return NGX_ERROR;
    }

    value->data = (u_char *) json_string_value(v);
    value->len = json_string_length(v);

    return NGX_OK;
}


/* an optional array of at most max valid ids: NGX_OK, or a status */

static ngx_int_t
ngx_http_im_ids(ngx_http_im_api_ctx_t *ctx, char *name, ngx_uint_t max,
    ngx_str_t *ids, ngx_uint_t *n)
{
    size_t   i;
    json_t  *list, *v;

    *n = 0;

    list = json_object_get(ctx->body, name);

    if (list == NULL) {
        return NGX_OK;
    }

    if (!json_is_array(list)) {
        ctx->reason = "a list of ids is an array of strings";
        return NGX_HTTP_BAD_REQUEST;
    }

    if (json_array_size(list) > max) {
        ctx->reason = "too many ids in one list";
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    json_array_foreach(list, i, v) {
        if (!json_is_string(v)
            || ngx_stream_im_valid_id((u_char *) json_string_value(v),
                                      json_string_length(v))
               != NGX_OK)
        {
            ctx->reason = "bad id in a list";
            return NGX_HTTP_BAD_REQUEST;
        }

        ids[i].data = (u_char *) json_string_value(v);
        ids[i].len = json_string_length(v);
    }

    *n = json_array_size(list);

    return NGX_OK;
}


/* the limits of the first stream server with "im", or NULL */

static ngx_stream_im_srv_conf_t *
ngx_http_im_stream_conf(void)
{
    ngx_stream_im_main_conf_t  *imcf;

    imcf = ngx_stream_cycle_get_module_main_conf(ngx_cycle,
                                                 ngx_stream_im_module);

    return imcf ? imcf->first : NULL;
}


static ngx_int_t
ngx_http_im_key(ngx_http_request_t *r, char *kind, ngx_str_t *id,
    char *suffix, ngx_str_t *key)
{
    key->data = ngx_pnalloc(r->pool, NGX_STREAM_IM_KEY_MAX);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    key->len = ngx_stream_im_router_key(key->data, kind, id, suffix)
               - key->data;

    return NGX_OK;
}


static void *
ngx_http_im_pool_alloc(void *data, size_t size)
{
    return ngx_palloc(data, size);
}


static void
ngx_http_im_pool_free(void *data, void *p)
{
    /* the request's pool frees all at once */
}
