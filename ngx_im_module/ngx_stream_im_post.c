
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * A message on its way into the inboxes, and typing on its way to the
 * live routes.  A send takes a few calls, each touching one Redis
 * Cluster slot (ngx_stream_im_scripts.c):
 *
 *     [members]  the group's members, and whether the sender is one
 *     id         dedup and the message id, in the sender's slot
 *     store      the entry into each inbox and its cursor there, one call
 *                per batch of users (a slot on a cluster), in parallel
 *
 * and then the worker publishes what each store returned to the live
 * routes, and marks the dedup key stored.  A send whose store failed is
 * answered UNAVAILABLE and its key marked failed; a retry with the same
 * client_msg_id then stores again under the same msg_id, so an inbox may
 * hold a message twice, never lose it: clients deduplicate by msg_id.  A
 * retry that finds the first try still storing (marked neither way, and
 * younger than PENDING) asks again a little later.
 *
 * A send's state lives in a pool of its own, found by the replies
 * through a table slot and its generation.
 */


#define NGX_STREAM_IM_POST_BATCH     256
#define NGX_STREAM_IM_POST_MAX       65536
#define NGX_STREAM_IM_TYPING_MAX     "1000"
#define NGX_STREAM_IM_TYPING_FLIGHT  4096
#define NGX_STREAM_IM_PENDING        5000
#define NGX_STREAM_IM_PENDING_POLL   20


typedef struct {
    ngx_pool_t                *pool;
    uint32_t                   slot;       /* in the table */
    uint32_t                   gen;
    ngx_stream_im_posted_pt    handler;
    ngx_stream_im_ref_t        ref;        /* the caller's */
    ngx_str_t                  sender;
    ngx_str_t                  to;         /* user, or empty */
    ngx_str_t                  group;      /* or group */
    ngx_str_t                  origin;
    ngx_str_t                  cmid;
    ngx_str_t                  tail;       /* the Message without id, ts */
    ngx_str_t                  entry;      /* with them: what is stored */
    ngx_str_t                  dedup;
    ngx_stream_im_posted_t     result;
    u_char                     msg_id[NGX_INT64_LEN * 2 + 2];
    ngx_str_t                 *users;      /* who gets it */
    ngx_uint_t                 nusers;
    ngx_uint_t                 inbox_max;
    ngx_uint_t                 group_max;
    ngx_uint_t                 pending;    /* store calls out */
    ngx_array_t                routes;     /* of ngx_stream_im_post_route_t */
    ngx_stream_im_batched_t   *batched;    /* the users, by batch */
    ngx_event_t                again;      /* asks the id again */
    ngx_msec_t                 poll;
    unsigned                   typing:1;
    unsigned                   backend:1;
    unsigned                   failed:1;
    unsigned                   unreplicated:1;
} ngx_stream_im_send_t;


/* a channel a send goes out on, and the lists of users on it */

typedef struct {
    ngx_str_t                  channel;
    ngx_array_t                lists;      /* of ngx_str_t */
} ngx_stream_im_post_route_t;


typedef struct {
    ngx_stream_im_send_t      *send;
    uint32_t                   gen;
    uint32_t                   next_free;
} ngx_stream_im_send_slot_t;


static ngx_stream_im_send_t *ngx_stream_im_post_new(void);
static ngx_int_t ngx_stream_im_post_copy(ngx_pool_t *pool, ngx_str_t *dst,
    char *src);
static ngx_stream_im_send_t *ngx_stream_im_post_find(
    ngx_stream_im_ref_t *ref);
static void ngx_stream_im_post_ref(ngx_stream_im_send_t *s,
    ngx_stream_im_ref_t *ref);
static ngx_int_t ngx_stream_im_post_members(ngx_stream_im_send_t *s,
    size_t size);
static void ngx_stream_im_post_members_done(ngx_stream_im_ref_t *ref,
    redisReply *r);
static ngx_int_t ngx_stream_im_post_id(ngx_stream_im_send_t *s);
static void ngx_stream_im_post_id_done(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_post_confirmed(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_post_again(ngx_event_t *ev);
static void ngx_stream_im_post_mark(ngx_stream_im_send_t *s, char *state);
static ngx_int_t ngx_stream_im_post_fan(ngx_stream_im_send_t *s);
static void ngx_stream_im_post_stored(ngx_stream_im_ref_t *ref,
    redisReply *r);
static void ngx_stream_im_post_routed(ngx_stream_im_ref_t *ref,
    redisReply *r);
static ngx_uint_t ngx_stream_im_post_refusals(redisReply *cursors);
static void ngx_stream_im_post_own(ngx_stream_im_send_t *s,
    redisReply *cursors, ngx_uint_t start);
static ngx_int_t ngx_stream_im_post_collect(ngx_stream_im_send_t *s,
    redisReply *r, size_t from);
static void ngx_stream_im_post_publish(ngx_stream_im_send_t *s);
static void ngx_stream_im_post_finish(ngx_stream_im_send_t *s,
    ngx_int_t rc);
static void ngx_stream_im_post_refused(ngx_stream_im_send_t *s,
    redisReply *r);
static int ngx_libc_cdecl ngx_stream_im_batch_cmp(const void *a,
    const void *b);


static ngx_uint_t                  ngx_stream_im_typings;
static ngx_stream_im_send_slot_t  *ngx_stream_im_sends;
static ngx_uint_t                  ngx_stream_im_nsends;
static uint32_t                    ngx_stream_im_send_free = UINT32_MAX;
static uint32_t                    ngx_stream_im_send_gen;
static uint32_t                   *ngx_stream_im_slot_tags;


/*
 * A key named after each Redis Cluster slot, "im:{<tag>}:seq", for the
 * slot's message counter: the first number whose text hashes there.
 */

ngx_int_t
ngx_stream_im_post_init_worker(ngx_cycle_t *cycle)
{
    u_char      buf[NGX_INT32_LEN];
    uint32_t    k;
    ngx_uint_t  slot, left;

    ngx_stream_im_slot_tags = ngx_palloc(cycle->pool,
                                         NGX_STREAM_IM_SLOTS
                                         * sizeof(uint32_t));
    if (ngx_stream_im_slot_tags == NULL) {
        return NGX_ERROR;
    }

    ngx_memset(ngx_stream_im_slot_tags, 0xff,
               NGX_STREAM_IM_SLOTS * sizeof(uint32_t));

    left = NGX_STREAM_IM_SLOTS;

    for (k = 0; left && k < 100000000; k++) {
        slot = ngx_stream_im_slot(buf, ngx_sprintf(buf, "%uD", k) - buf);

        if (ngx_stream_im_slot_tags[slot] == UINT32_MAX) {
            ngx_stream_im_slot_tags[slot] = k;
            left--;
        }
    }

    return left ? NGX_ERROR : NGX_OK;
}


/*
 * Stores a message and tells handler what became of it.  NGX_DECLINED:
 * the message does not fit in memory; NGX_ERROR: Redis is not there.
 */

ngx_int_t
ngx_stream_im_post(ngx_stream_im_post_t *post,
    ngx_stream_im_posted_pt handler, ngx_stream_im_ref_t *ref)
{
    size_t                 n;
    Im__Message           *m;
    ngx_stream_im_send_t  *s;

    if (!ngx_stream_im_redis_up()) {
        return NGX_ERROR;
    }

    s = ngx_stream_im_post_new();
    if (s == NULL) {
        return NGX_ERROR;
    }

    m = post->msg;

    n = im__message__get_packed_size(m);

    s->tail.data = ngx_pnalloc(s->pool, n);
    if (s->tail.data == NULL) {
        ngx_stream_im_post_finish(s, NGX_ABORT);
        return NGX_DECLINED;
    }

    s->tail.len = im__message__pack(m, s->tail.data);

    s->handler = handler;
    s->ref = *ref;
    s->inbox_max = post->inbox_max;
    s->group_max = post->group_max;
    s->backend = post->backend;

    if (ngx_stream_im_post_copy(s->pool, &s->sender, m->from) != NGX_OK
        || ngx_stream_im_post_copy(s->pool, &s->to, m->to) != NGX_OK
        || ngx_stream_im_post_copy(s->pool, &s->group, m->group) != NGX_OK
        || ngx_stream_im_post_copy(s->pool, &s->cmid, m->client_msg_id)
           != NGX_OK)
    {
        ngx_stream_im_post_finish(s, NGX_ABORT);
        return NGX_DECLINED;
    }

    s->origin.data = ngx_pstrdup(s->pool, &post->origin);
    s->origin.len = post->origin.len;

    if (s->origin.len && s->origin.data == NULL) {
        ngx_stream_im_post_finish(s, NGX_ABORT);
        return NGX_DECLINED;
    }

    if (s->group.len) {
        if (ngx_stream_im_post_members(s, s->tail.len) != NGX_OK) {
            ngx_stream_im_post_finish(s, NGX_ABORT);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    /* the recipient's copy, and the sender's unless that is the same */

    s->users = ngx_palloc(s->pool, 2 * sizeof(ngx_str_t));
    if (s->users == NULL) {
        ngx_stream_im_post_finish(s, NGX_ABORT);
        return NGX_DECLINED;
    }

    s->users[0] = s->to;
    s->nusers = 1;

    if (!s->backend
        && (s->to.len != s->sender.len
            || ngx_memcmp(s->to.data, s->sender.data, s->to.len) != 0))
    {
        s->users[s->nusers++] = s->sender;
    }

    if (ngx_stream_im_post_id(s) != NGX_OK) {
        ngx_stream_im_post_finish(s, NGX_ABORT);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Typing goes to the live routes only: of the user, or of the group's
 * members but the sender in groups of up to a thousand.
 */

void
ngx_stream_im_post_typing(ngx_str_t *sender, ngx_str_t *to,
    ngx_str_t *group, ngx_str_t *frame, ngx_str_t *origin,
    ngx_uint_t group_max)
{
    ngx_stream_im_send_t  *s;

    /* ephemeral: a flood of typing never crowds sends out */

    if (!ngx_stream_im_redis_up()
        || ngx_stream_im_typings >= NGX_STREAM_IM_TYPING_FLIGHT)
    {
        return;
    }

    s = ngx_stream_im_post_new();
    if (s == NULL) {
        return;
    }

    s->typing = 1;
    ngx_stream_im_typings++;
    s->group_max = group_max;

    s->sender.data = ngx_pstrdup(s->pool, sender);
    s->sender.len = sender->len;
    s->to.data = ngx_pstrdup(s->pool, to);
    s->to.len = to->len;
    s->group.data = ngx_pstrdup(s->pool, group);
    s->group.len = group->len;
    s->entry.data = ngx_pstrdup(s->pool, frame);
    s->entry.len = frame->len;
    s->origin.data = ngx_pstrdup(s->pool, origin);
    s->origin.len = origin->len;

    if ((s->sender.len && s->sender.data == NULL)
        || (s->to.len && s->to.data == NULL)
        || (s->group.len && s->group.data == NULL)
        || (s->entry.len && s->entry.data == NULL)
        || (s->origin.len && s->origin.data == NULL))
    {
        ngx_stream_im_post_finish(s, NGX_ABORT);
        return;
    }

    if (s->group.len) {
        if (ngx_stream_im_post_members(s, 0) != NGX_OK) {
            ngx_stream_im_post_finish(s, NGX_ABORT);
        }

        return;
    }

    /* typing to oneself is nobody's business */

    if (s->to.len == s->sender.len
        && ngx_memcmp(s->to.data, s->sender.data, s->to.len) == 0)
    {
        ngx_stream_im_post_finish(s, NGX_ABORT);
        return;
    }

    s->users = &s->to;
    s->nusers = 1;

    if (ngx_stream_im_post_fan(s) != NGX_OK) {
        ngx_stream_im_post_finish(s, NGX_ABORT);
    }
}


static ngx_int_t
ngx_stream_im_post_copy(ngx_pool_t *pool, ngx_str_t *dst, char *src)
{
    dst->len = ngx_strlen(src);

    if (dst->len == 0) {
        dst->data = (u_char *) "";
        return NGX_OK;
    }

    dst->data = ngx_pnalloc(pool, dst->len + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, src, dst->len + 1);

    return NGX_OK;
}


static ngx_stream_im_send_t *
ngx_stream_im_post_new(void)
{
    uint32_t                    i;
    ngx_uint_t                  n;
    ngx_pool_t                 *pool;
    ngx_stream_im_send_t       *s;
    ngx_stream_im_send_slot_t  *slots;

    if (ngx_stream_im_send_free == UINT32_MAX) {

        if (ngx_stream_im_nsends == NGX_STREAM_IM_POST_MAX) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "%d sends in flight, refusing more",
                          NGX_STREAM_IM_POST_MAX);
            return NULL;
        }

        n = ngx_stream_im_nsends ? ngx_stream_im_nsends * 2 : 64;

        slots = ngx_alloc(n * sizeof(ngx_stream_im_send_slot_t),
                          ngx_cycle->log);
        if (slots == NULL) {
            return NULL;
        }

        if (ngx_stream_im_sends) {
            ngx_memcpy(slots, ngx_stream_im_sends,
                       ngx_stream_im_nsends
                       * sizeof(ngx_stream_im_send_slot_t));
            ngx_free(ngx_stream_im_sends);
        }

        for (i = ngx_stream_im_nsends; i < n; i++) {
            slots[i].send = NULL;
            slots[i].gen = 0;
            slots[i].next_free = (i + 1 < n) ? i + 1 : UINT32_MAX;
        }

        ngx_stream_im_send_free = ngx_stream_im_nsends;
        ngx_stream_im_sends = slots;
        ngx_stream_im_nsends = n;
    }

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        return NULL;
    }

    s = ngx_pcalloc(pool, sizeof(ngx_stream_im_send_t));
    if (s == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    s->pool = pool;

    i = ngx_stream_im_send_free;
    ngx_stream_im_send_free = ngx_stream_im_sends[i].next_free;

    if (++ngx_stream_im_send_gen == 0) {
        ngx_stream_im_send_gen = 1;
    }

    s->gen = ngx_stream_im_send_gen;
    s->slot = i;

    ngx_stream_im_sends[i].send = s;
    ngx_stream_im_sends[i].gen = s->gen;

    return s;
}


/* how a reply finds the send again */

static void
ngx_stream_im_post_ref(ngx_stream_im_send_t *s, ngx_stream_im_ref_t *ref)
{
    ngx_memzero(ref, sizeof(ngx_stream_im_ref_t));

    ref->slot = s->slot;
    ref->number = s->gen;
}


static ngx_stream_im_send_t *
ngx_stream_im_post_find(ngx_stream_im_ref_t *ref)
{
    ngx_stream_im_send_slot_t  *slot;

    if (ref->slot >= ngx_stream_im_nsends) {
        return NULL;
    }

    slot = &ngx_stream_im_sends[ref->slot];

    if (slot->send == NULL || slot->gen != ref->number) {
        return NULL;
    }

    return slot->send;
}


static ngx_int_t
ngx_stream_im_post_members(ngx_stream_im_send_t *s, size_t size)
{
    ngx_str_t            key, args[5];
    ngx_stream_im_ref_t  ref;
    u_char               buf[NGX_STREAM_IM_KEY_MAX];
    u_char               max[NGX_INT_T_LEN];
    u_char               bytes[NGX_SIZE_T_LEN];

    key.data = buf;
    key.len = ngx_stream_im_router_key(buf, "g", &s->group, "members") - buf;

    args[0] = s->sender;
    args[1].data = max;
    args[1].len = ngx_sprintf(max, "%ui", s->group_max) - max;
    args[2].data = bytes;
    args[2].len = ngx_sprintf(bytes, "%uz", size) - bytes;

    if (s->backend) {
        ngx_str_set(&args[3], "1");

    } else {
        ngx_str_set(&args[3], "0");
    }

    if (s->typing) {
        ngx_str_set(&args[4], NGX_STREAM_IM_TYPING_MAX);

    } else {
        ngx_str_set(&args[4], "");
    }

    ngx_stream_im_post_ref(s, &ref);

    return ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_MEMBERS, 1, &key, 5,
                                    args, ngx_stream_im_post_members_done,
                                    &ref);
}


static void
ngx_stream_im_post_members_done(ngx_stream_im_ref_t *ref, redisReply *r)
{
    size_t                 i;
    ngx_str_t             *u;
    ngx_stream_im_send_t  *s;

    s = ngx_stream_im_post_find(ref);

    if (s == NULL) {
        return;
    }

    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        if (s->typing) {
            ngx_stream_im_post_finish(s, NGX_ABORT);
            return;
        }

        ngx_stream_im_post_refused(s, r);
        return;
    }

    s->users = ngx_palloc(s->pool, (r->elements + 1) * sizeof(ngx_str_t));
    if (s->users == NULL) {
        ngx_stream_im_post_finish(s, NGX_ERROR);
        return;
    }

    s->nusers = 0;

    for (i = 0; i < r->elements; i++) {
        if (r->element[i]->type != REDIS_REPLY_STRING
            || ngx_stream_im_valid_id((u_char *) r->element[i]->str,
                                      r->element[i]->len)
               != NGX_OK)
        {
            continue;
        }

        u = &s->users[s->nusers];

        u->len = r->element[i]->len;

        /* typing reaches the other members only */

        if (s->typing && u->len == s->sender.len
            && ngx_memcmp(r->element[i]->str, s->sender.data, u->len) == 0)
        {
            continue;
        }

        u->data = ngx_pnalloc(s->pool, u->len);
        if (u->data == NULL) {
            ngx_stream_im_post_finish(s, NGX_ERROR);
            return;
        }

        ngx_memcpy(u->data, r->element[i]->str, u->len);
        s->nusers++;
    }

    if (s->typing) {
        if (s->nusers == 0 || ngx_stream_im_post_fan(s) != NGX_OK) {
            ngx_stream_im_post_finish(s, NGX_ABORT);
        }

        return;
    }

    if (ngx_stream_im_post_id(s) != NGX_OK) {
        ngx_stream_im_post_finish(s, NGX_ERROR);
    }
}


static ngx_int_t
ngx_stream_im_post_id(ngx_stream_im_send_t *s)
{
    ngx_str_t            keys[2], arg;
    ngx_uint_t           slot;
    ngx_stream_im_ref_t  ref;
    u_char               seq[NGX_STREAM_IM_KEY_MAX];
    u_char               num[NGX_INT_T_LEN];

    /* the sender's slot, by its routes key: all its keys are there */

    s->dedup.data = ngx_pnalloc(s->pool, NGX_STREAM_IM_KEY_MAX);
    if (s->dedup.data == NULL) {
        return NGX_ERROR;
    }

    s->dedup.len = ngx_stream_im_router_key(s->dedup.data, "u", &s->sender,
                                            "routes")
                   - s->dedup.data;

    slot = ngx_stream_im_slot(s->dedup.data, s->dedup.len);

    if (s->cmid.len) {
        s->dedup.len = ngx_sprintf(ngx_stream_im_router_key(s->dedup.data,
                                                            "u", &s->sender,
                                                            "dedup:"),
                                   "%V", &s->cmid)
                       - s->dedup.data;

    } else {
        s->dedup.len = 0;
    }

    keys[0].data = seq;
    keys[0].len = ngx_sprintf(seq, "im:{%uD}:seq",
                              ngx_stream_im_slot_tags[slot])
                  - seq;
    keys[1] = s->dedup;

    arg.data = num;
    arg.len = ngx_sprintf(num, "%ui", slot) - num;

    ngx_stream_im_post_ref(s, &ref);

    return ngx_stream_im_redis_eval(NGX_STREAM_IM_SCRIPT_ID,
                                    s->dedup.len ? 2 : 1, keys, 1, &arg,
                                    ngx_stream_im_post_id_done, &ref);
}


/* {state, msg_id, ts_ms} */

static void
ngx_stream_im_post_id_done(ngx_stream_im_ref_t *ref, redisReply *r)
{
    u_char                 *p;
    size_t                  n;
    ngx_stream_im_msg_id_t  mid;
    ngx_stream_im_send_t   *s;

    s = ngx_stream_im_post_find(ref);

    if (s == NULL) {
        return;
    }

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4
        || r->element[0]->type != REDIS_REPLY_STRING
        || r->element[0]->len != 1
        || r->element[1]->type != REDIS_REPLY_STRING
        || r->element[2]->type != REDIS_REPLY_INTEGER
        || r->element[3]->type != REDIS_REPLY_INTEGER
        || ngx_stream_im_msg_id_parse((u_char *) r->element[1]->str,
                                      r->element[1]->len, &mid)
           != NGX_OK)
    {
        ngx_stream_im_post_refused(s, r);
        return;
    }

    n = r->element[1]->len;
    ngx_memcpy(s->msg_id, r->element[1]->str, n);
    s->msg_id[n] = '\0';

    s->result.msg_id.data = s->msg_id;
    s->result.msg_id.len = n;
    s->result.ts = (uint64_t) r->element[2]->integer;

    if (r->element[0]->str[0] == 'd') {
        s->result.duplicate = 1;

        /* stored in full, by this try or another: on the replicas too? */

        switch (ngx_stream_im_redis_barrier(ngx_stream_im_post_confirmed,
                                            ref))
        {
        case NGX_DECLINED:
            ngx_stream_im_post_finish(s, NGX_OK);
            break;

        case NGX_ERROR:
            ngx_stream_im_post_finish(s, NGX_ERROR);
            break;
        }

        return;
    }

    /* the first try may be storing still: its outcome decides */

    if (r->element[0]->str[0] == 'p'
        && r->element[3]->integer < NGX_STREAM_IM_PENDING
        && r->element[3]->integer >= 0)
    {
        s->poll = s->poll ? ngx_min(s->poll * 2, 500)
                          : NGX_STREAM_IM_PENDING_POLL;

        s->again.handler = ngx_stream_im_post_again;
        s->again.data = s;
        s->again.log = ngx_cycle->log;
        s->again.cancelable = 1;

        ngx_add_timer(&s->again, s->poll);
        return;
    }

    /* the entry: msg_id and ts_ms in front of the rest */

    s->entry.data = ngx_pnalloc(s->pool, s->tail.len + n + 2
                                         + 2 * NGX_INT64_LEN);
    if (s->entry.data == NULL) {
        ngx_stream_im_post_finish(s, NGX_ERROR);
        return;
    }

    p = ngx_stream_im_entry_head(s->entry.data, &s->result.msg_id,
                                 s->result.ts);
    p = ngx_cpymem(p, s->tail.data, s->tail.len);
    s->entry.len = p - s->entry.data;

    if (ngx_stream_im_post_fan(s) != NGX_OK) {
        ngx_stream_im_post_finish(s, NGX_ERROR);
    }
}


static void
ngx_stream_im_post_confirmed(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_send_t  *s;

    s = ngx_stream_im_post_find(ref);

    if (s == NULL) {
        return;
    }

    ngx_stream_im_post_finish(s, (r && ngx_stream_im_redis_replicated())
                                 ? NGX_OK : NGX_ERROR);
}


static void
ngx_stream_im_post_again(ngx_event_t *ev)
{
    ngx_stream_im_send_t  *s;

    s = ev->data;

    if (ngx_stream_im_post_id(s) != NGX_OK) {
        ngx_stream_im_post_finish(s, NGX_ERROR);
    }
}


/*
 * The users grouped by batch, a call for each batch (at most BATCH
 * users): store for a send, routes for typing.
 */

static ngx_int_t
ngx_stream_im_post_fan(ngx_stream_im_send_t *s)
{
    u_char                   *kbuf;
    ngx_str_t                 key, *keys, *args;
    ngx_uint_t                i, j, k, n, nkeys, nargs, script;
    ngx_stream_im_ref_t       ref;
    ngx_stream_im_batched_t  *b;
    u_char                    max[NGX_INT_T_LEN];
    u_char                    buf[NGX_STREAM_IM_KEY_MAX];

    /* the keys of a batch are copied out when it is queued: one buffer */

    n = ngx_min(s->nusers, NGX_STREAM_IM_POST_BATCH);

    b = ngx_palloc(s->pool, s->nusers * sizeof(ngx_stream_im_batched_t));
    keys = ngx_palloc(s->pool, 2 * n * sizeof(ngx_str_t));
    args = ngx_palloc(s->pool, (n + 3) * sizeof(ngx_str_t));
    kbuf = ngx_pnalloc(s->pool, 2 * n * NGX_STREAM_IM_KEY_MAX);

    if (b == NULL || keys == NULL || args == NULL || kbuf == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < s->nusers; i++) {
        key.data = buf;
        key.len = ngx_stream_im_router_key(buf, "u", &s->users[i], "inbox")
                  - buf;

        b[i].batch = ngx_stream_im_redis_batch(&key);
        b[i].index = i;
    }

    ngx_stream_im_batch_sort(b, s->nusers);

    s->batched = b;

    if (s->typing) {
        script = NGX_STREAM_IM_SCRIPT_ROUTES;
        args[0] = s->origin;
        nargs = 1;

    } else {
        script = NGX_STREAM_IM_SCRIPT_STORE;
        args[0] = s->entry;
        args[1].data = max;
        args[1].len = ngx_sprintf(max, "%ui", s->inbox_max) - max;
        args[2] = s->origin;
        nargs = 3;
    }

    ngx_stream_im_post_ref(s, &ref);

    for (i = 0; i < s->nusers; i = j) {

        for (j = i, n = 0;
             j < s->nusers && n < NGX_STREAM_IM_POST_BATCH
             && b[j].batch == b[i].batch;
             j++, n++)
        {
            k = b[j].index;

            keys[2 * n].data = kbuf + 2 * n * NGX_STREAM_IM_KEY_MAX;
            keys[2 * n].len = ngx_stream_im_router_key(keys[2 * n].data, "u",
                                                       &s->users[k], "inbox")
                              - keys[2 * n].data;

            keys[2 * n + 1].data = keys[2 * n].data + NGX_STREAM_IM_KEY_MAX;
            keys[2 * n + 1].len = ngx_stream_im_router_key(
                                      keys[2 * n + 1].data, "u",
                                      &s->users[k], "routes")
                                  - keys[2 * n + 1].data;

            args[nargs + n] = s->users[k];
        }

        if (s->typing) {

            /* typing needs the routes only */

            for (k = 0; k < n; k++) {
                keys[k] = keys[2 * k + 1];
            }

            nkeys = n;

        } else {
            nkeys = 2 * n;
        }

        /* where the batch starts: its replies are in its users' order */

        ref.arg = (uint32_t) i;

        if (ngx_stream_im_redis_eval(script, nkeys, keys, nargs + n, args,
                                     s->typing ? ngx_stream_im_post_routed
                                               : ngx_stream_im_post_stored,
                                     &ref)
            != NGX_OK)
        {
            s->failed = 1;
            break;
        }

        s->pending++;
    }

    return s->pending ? NGX_OK : NGX_ERROR;
}


/* users by batch, in the order they came within one */

void
ngx_stream_im_batch_sort(ngx_stream_im_batched_t *b, ngx_uint_t n)
{
    ngx_qsort(b, n, sizeof(ngx_stream_im_batched_t), ngx_stream_im_batch_cmp);
}


static int ngx_libc_cdecl
ngx_stream_im_batch_cmp(const void *a, const void *b)
{
    const ngx_stream_im_batched_t  *x = a, *y = b;

    if (x->batch != y->batch) {
        return (x->batch < y->batch) ? -1 : 1;
    }

    return (x->index < y->index) ? -1 : (x->index > y->index);
}


/* {{cursor, ...}, channel, "<user> <cursor> ...", ...} */

static void
ngx_stream_im_post_stored(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_send_t  *s;

    s = ngx_stream_im_post_find(ref);

    if (s == NULL) {
        return;
    }

    s->pending--;

    if (r && !ngx_stream_im_redis_replicated()) {

        /* stored, but WAIT did not see it on enough replicas */

        s->unreplicated = 1;
    }

    if (r == NULL || r->type != REDIS_REPLY_ARRAY
               || r->elements % 2 == 0
               || r->element[0]->type != REDIS_REPLY_ARRAY)
    {
        if (r && r->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "redis refused to store a message: %s", r->str);
        }

        s->failed = 1;

    } else {
        ngx_stream_im_post_own(s, r->element[0], ref->arg);

        /* what was stored goes out live, an inbox that refused or not */

        if (ngx_stream_im_post_collect(s, r, 1) != NGX_OK
            || ngx_stream_im_post_refusals(r->element[0]))
        {
            s->failed = 1;
        }
    }

    if (s->pending) {
        return;
    }

    /* live once stored: what was stored, if not everywhere */

    ngx_stream_im_post_publish(s);

    if (s->failed) {

        /* a retry stores again at once */

        ngx_stream_im_post_mark(s, " f");
        ngx_stream_im_post_finish(s, NGX_ERROR);
        return;
    }

    /*
     * in every inbox now: a retry is a plain duplicate, acknowledged once
     * its replicas are confirmed
     */

    ngx_stream_im_post_mark(s, "");

    if (s->unreplicated) {
        ngx_stream_im_post_finish(s, NGX_ERROR);
        return;
    }

    if (s->group.len) {
        s->result.stored = s->nusers * s->entry.len;
    }

    ngx_stream_im_post_finish(s, NGX_OK);
}


/* the dedup key says how the send went: "<id> <ms><state>" */

static void
ngx_stream_im_post_mark(ngx_stream_im_send_t *s, char *state)
{
    ngx_str_t  argv[5];
    u_char     value[NGX_INT64_LEN * 3 + 4];

    if (s->dedup.len == 0) {
        return;
    }

    ngx_str_set(&argv[0], "SET");
    argv[1] = s->dedup;
    argv[2].data = value;
    argv[2].len = ngx_sprintf(value, "%V %uL%s", &s->result.msg_id,
                              s->result.ts, state)
                  - value;
    ngx_str_set(&argv[3], "XX");
    ngx_str_set(&argv[4], "KEEPTTL");

    (void) ngx_stream_im_redis_command(5, argv, NULL, NULL);
}


/* typing: {channel, "<user> ...", ...} */

static void
ngx_stream_im_post_routed(ngx_stream_im_ref_t *ref, redisReply *r)
{
    ngx_stream_im_send_t  *s;

    s = ngx_stream_im_post_find(ref);

    if (s == NULL) {
        return;
    }

    s->pending--;

    if (r && r->type == REDIS_REPLY_ARRAY && r->elements % 2 == 0) {
        (void) ngx_stream_im_post_collect(s, r, 0);
    }

    if (s->pending == 0) {
        ngx_stream_im_post_publish(s);
        ngx_stream_im_post_finish(s, NGX_OK);
    }
}


/* an inbox of the batch refused the entry: its cursor is "" */

static ngx_uint_t
ngx_stream_im_post_refusals(redisReply *cursors)
{
    size_t  j;

    for (j = 0; j < cursors->elements; j++) {
        if (cursors->element[j]->type != REDIS_REPLY_STRING
            || cursors->element[j]->len == 0)
        {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "redis refused to store a message in an inbox");
            return 1;
        }
    }

    return 0;
}


/* where the sender's own copy went: {cursor, previous, ...} */

static void
ngx_stream_im_post_own(ngx_stream_im_send_t *s, redisReply *cursors,
    ngx_uint_t start)
{
    size_t      j, k;
    ngx_str_t  *u;

    if (s->backend) {
        return;
    }

    for (j = 0; 2 * j + 1 < cursors->elements; j++) {
        k = start + j;

        if (k >= s->nusers) {
            return;
        }

        u = &s->users[s->batched[k].index];

        if (u->len != s->sender.len
            || ngx_memcmp(u->data, s->sender.data, u->len) != 0)
        {
            continue;
        }

        if (cursors->element[2 * j]->type != REDIS_REPLY_STRING
            || cursors->element[2 * j + 1]->type != REDIS_REPLY_STRING
            || ngx_stream_im_msg_id_parse(
                   (u_char *) cursors->element[2 * j]->str,
                   cursors->element[2 * j]->len, &s->result.cursor)
               != NGX_OK
            || ngx_stream_im_msg_id_parse(
                   (u_char *) cursors->element[2 * j + 1]->str,
                   cursors->element[2 * j + 1]->len, &s->result.previous)
               != NGX_OK)
        {
            return;
        }

        s->result.own = 1;
        return;
    }
}


/* the channels of a store (or routes) reply, with who on each gets it */

static ngx_int_t
ngx_stream_im_post_collect(ngx_stream_im_send_t *s, redisReply *r,
    size_t from)
{
    size_t                  i;
    ngx_str_t              *piece;
    ngx_uint_t              k;
    redisReply             *ch, *list;
    ngx_stream_im_post_route_t  *rt;

    if (s->routes.elts == NULL
        && ngx_array_init(&s->routes, s->pool, 4,
                          sizeof(ngx_stream_im_post_route_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = from; i + 1 < r->elements; i += 2) {
        ch = r->element[i];
        list = r->element[i + 1];

        if (ch->type != REDIS_REPLY_STRING
            || list->type != REDIS_REPLY_STRING || list->len == 0)
        {
            continue;
        }

        rt = s->routes.elts;

        for (k = 0; k < s->routes.nelts; k++) {
            if (rt[k].channel.len == ch->len
                && ngx_memcmp(rt[k].channel.data, ch->str, ch->len) == 0)
            {
                break;
            }
        }

        if (k == s->routes.nelts) {
            rt = ngx_array_push(&s->routes);
            if (rt == NULL) {
                return NGX_ERROR;
            }

            rt->channel.len = ch->len;
            rt->channel.data = ngx_pnalloc(s->pool, ch->len);

            if (rt->channel.data == NULL
                || ngx_array_init(&rt->lists, s->pool, 2, sizeof(ngx_str_t))
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            ngx_memcpy(rt->channel.data, ch->str, ch->len);

        } else {
            rt = &rt[k];
        }

        piece = ngx_array_push(&rt->lists);
        if (piece == NULL) {
            return NGX_ERROR;
        }

        piece->len = list->len;
        piece->data = ngx_pnalloc(s->pool, list->len);
        if (piece->data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(piece->data, list->str, list->len);
    }

    return NGX_OK;
}


/*
 * Once every call is answered, each channel gets one message:
 * "m<msg_id>\n<origin>\n<user> <previous> <cursor> ...\n<entry>" or
 * "t\n<origin>\n<user> ...\n<frame>".  The users on a channel whose
 * worker is not known to be alive are noted for their routes to be
 * judged.
 */

static void
ngx_stream_im_post_publish(ngx_stream_im_send_t *s)
{
    u_char                      *p, *end;
    ngx_str_t                   *parts, *lists, user;
    ngx_uint_t                   i, j, k, n;
    ngx_stream_im_post_route_t  *rt;

    rt = s->routes.elts;

    for (i = 0; i < s->routes.nelts; i++) {
        lists = rt[i].lists.elts;

        if (ngx_stream_im_routes_live(&rt[i].channel) != NGX_OK) {

            /* "<user> <cursor> <user> ..." or "<user> <user> ..." */

            for (j = 0; j < rt[i].lists.nelts; j++) {
                p = lists[j].data;
                end = p + lists[j].len;

                while (p < end) {
                    user.data = p;

                    while (p < end && *p != ' ') {
                        p++;
                    }

                    user.len = p - user.data;

                    ngx_stream_im_routes_suspect(&rt[i].channel, &user);

                    /* past "<previous> <cursor>" */

                    for (k = 0; !s->typing && k < 2 && p; k++) {
                        p = ngx_strlchr(p + 1, end, ' ');
                    }

                    if (p == NULL) {
                        break;
                    }

                    p++;
                }
            }

            ngx_stream_im_routes_judge(&rt[i].channel);
        }

        /*
         * Even to a channel found dead: a worker that was stopped comes
         * back under it, and nobody else would tell it what it missed.
         */

        n = rt[i].lists.nelts;

        parts = ngx_palloc(s->pool, (6 + 2 * n) * sizeof(ngx_str_t));
        if (parts == NULL) {
            return;
        }

        if (s->typing) {
            ngx_str_set(&parts[0], "t");
            ngx_str_null(&parts[1]);

        } else {
            ngx_str_set(&parts[0], "m");
            parts[1] = s->result.msg_id;
        }

        ngx_str_set(&parts[2], "\n");
        parts[3] = s->origin;
        parts[4] = parts[2];

        for (j = 0; j < n; j++) {
            if (j) {
                ngx_str_set(&parts[4 + 2 * j], " ");
            }

            parts[5 + 2 * j] = lists[j];
        }

        parts[4 + 2 * n] = parts[2];
        parts[5 + 2 * n] = s->entry;

        (void) ngx_stream_im_redis_publish(&rt[i].channel, parts, 6 + 2 * n,
                                           NULL, NULL);
    }
}


/*
 * A script refuses with "<CODE> <reason>": the client's Error code and
 * the reason (in r); NGX_DECLINED for anything else, Redis's own trouble.
 */

ngx_int_t
ngx_stream_im_post_refusal(redisReply *r, Im__Error__Code *code,
    char **reason)
{
    size_t      len;
    ngx_uint_t  i;

    static struct {
        char             *name;
        Im__Error__Code   code;
    } codes[] = {
        { "FORBIDDEN ", IM__ERROR__CODE__FORBIDDEN },
        { "TOO_LARGE ", IM__ERROR__CODE__TOO_LARGE },
        { "NOT_FOUND ", IM__ERROR__CODE__NOT_FOUND }
    };

    if (r == NULL || !ngx_stream_im_redis_refusal(r)) {
        return NGX_DECLINED;
    }

    for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        len = ngx_strlen(codes[i].name);

        if (ngx_strncmp(r->str, codes[i].name, len) == 0) {
            *code = codes[i].code;
            *reason = r->str + len;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static void
ngx_stream_im_post_refused(ngx_stream_im_send_t *s, redisReply *r)
{
    char    *reason;
    size_t   len;

    if (ngx_stream_im_post_refusal(r, &s->result.code, &reason) == NGX_OK) {
        len = ngx_strlen(reason) + 1;
        s->result.reason = ngx_pnalloc(s->pool, len);

        if (s->result.reason) {
            ngx_memcpy(s->result.reason, reason, len);
            ngx_stream_im_post_finish(s, NGX_DECLINED);
            return;
        }
    }

    if (r && r->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "redis refused a send: %s", r->str);
    }

    ngx_stream_im_post_finish(s, NGX_ERROR);
}


/*
 * rc: NGX_OK stored, NGX_DECLINED refused, NGX_ERROR unavailable, and
 * NGX_ABORT: the caller hears nothing (it was told at once, or typing).
 */

static void
ngx_stream_im_post_finish(ngx_stream_im_send_t *s, ngx_int_t rc)
{
    if (s->again.timer_set) {
        ngx_del_timer(&s->again);
    }

    if (s->typing) {
        ngx_stream_im_typings--;
    }

    ngx_stream_im_sends[s->slot].send = NULL;
    ngx_stream_im_sends[s->slot].next_free = ngx_stream_im_send_free;
    ngx_stream_im_send_free = s->slot;

    if (rc != NGX_ABORT && s->handler) {
        s->result.rc = rc;
        s->result.client_msg_id = s->cmid;
        s->handler(&s->ref, &s->result);
    }

    ngx_destroy_pool(s->pool);
}
