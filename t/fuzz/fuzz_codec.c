
/*
 * Copyright (C) ngx_im authors
 */


/*
 * The protobuf side of a client message: ngx_stream_im_decode() into the
 * worker's bounded arena, then what the dispatcher does with a decoded
 * frame short of Redis (ngx_stream_im_dispatch() itself needs nginx's
 * core and a Redis link, so its pure checks are modelled here, calling
 * the module's own helpers: ngx_stream_im_valid_id(),
 * ngx_stream_im_msg_id_parse(), the Send's stored form packed into the
 * arena), then the server's side: the reply encoded with
 * ngx_stream_im_encode(), a stored entry turned into a Message frame by
 * ngx_stream_im_message_write().
 *
 * Input: one WebSocket message's payload, at most im_max_frame (64k).
 *
 * Oracles: protobuf-c with its own allocator (the arena may refuse a
 * frame only by running out; set FUZZ_ARENA_STRICT=1 to make that a
 * crash), the reference id and msg_id checks of fuzz.h and below,
 * encoded sizes that match what was written, and a written Message
 * that decodes to what was put in.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"
#include "fuzz.h"


#define FUZZ_MAX_FRAME   65536
#define FUZZ_ARENA_SIZE  (4 * FUZZ_MAX_FRAME + 65536)


static void fuzz_dispatch(Im__Frame *f, ngx_stream_im_arena_t *arena,
    const uint8_t *data, size_t size);
static ngx_int_t fuzz_id(char *s);
static ngx_int_t fuzz_msg_id(u_char *p, size_t len);
static void fuzz_send(Im__Frame *f, ngx_stream_im_arena_t *arena);
static void fuzz_reencode(Im__Frame *f);
static void fuzz_message(uint32_t id, u_char *msg_id, size_t id_len,
    uint64_t ts, u_char *partial, size_t len, ngx_uint_t valid);
static u_char *fuzz_ws_payload(u_char *p, size_t *len);


static u_char                 *fuzz_arena_mem;
static ngx_stream_im_arena_t   fuzz_arena;
static ngx_uint_t              fuzz_strict;


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_arena_mem = malloc(FUZZ_ARENA_SIZE);
    if (fuzz_arena_mem == NULL) {
        abort();
    }

    ngx_stream_im_arena_init(&fuzz_arena, fuzz_arena_mem, FUZZ_ARENA_SIZE);

    fuzz_strict = (getenv("FUZZ_ARENA_STRICT") != NULL);

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *in;
    Im__Frame  *f, *g;

    if (size > FUZZ_MAX_FRAME) {
        return 0;
    }

    in = fuzz_dup(data, size);

    f = ngx_stream_im_decode(&fuzz_arena, in, size);

    /* protobuf-c on its own allocator: the same verdict, unless out of room */

    g = im__frame__unpack(NULL, size, in);

    if (f != NULL) {
        fuzz_assert(g != NULL);
        fuzz_assert(fuzz_arena.pos <= fuzz_arena.end);
        fuzz_assert(f->body_case == g->body_case && f->id == g->id);

        fuzz_dispatch(f, &fuzz_arena, data, size);

    } else if (g != NULL && fuzz_strict) {
        fprintf(stderr, "a %zu-byte frame does not fit the %d-byte arena\n",
                size, FUZZ_ARENA_SIZE);
        abort();
    }

    if (g != NULL) {
        im__frame__free_unpacked(g, NULL);
    }

    /* any bytes may be a stored entry: Redis holds what a script wrote */

    fuzz_message(7, (u_char *) "1700000000000-0", 15, 1700000000000ULL,
                 in, size, 0);

    free(in);

    return 0;
}


/* what ngx_stream_im_dispatch() checks before it goes to Redis */

static void
fuzz_dispatch(Im__Frame *f, ngx_stream_im_arena_t *arena,
    const uint8_t *data, size_t size)
{
    size_t      n, i;
    ngx_uint_t  ok;

    switch (f->body_case) {

    case IM__FRAME__BODY_AUTH:
        n = ngx_strlen(f->auth->token);
        (void) n;
        (void) fuzz_id(f->auth->device[0] ? f->auth->device : "default");
        break;

    case IM__FRAME__BODY_SEND:
        ok = (f->send->to[0] == '\0') != (f->send->group[0] == '\0');
        ok = ok && fuzz_id(f->send->to[0] ? f->send->to : f->send->group)
                   == NGX_OK;

        if (f->send->client_msg_id[0]) {
            ok = ok && fuzz_id(f->send->client_msg_id) == NGX_OK;
        }

        ok = ok && ngx_strlen(f->send->type) <= 64;

        if (ngx_strcmp(f->send->type, "read") == 0) {
            ok = ok && fuzz_msg_id(f->send->body.data, f->send->body.len)
                       == NGX_OK;
        }

        if (ok) {
            fuzz_send(f, arena);
        }

        break;

    case IM__FRAME__BODY_ACK:
        (void) fuzz_msg_id((u_char *) f->ack->up_to,
                           ngx_strlen(f->ack->up_to));
        break;

    case IM__FRAME__BODY_SYNC:
        (void) fuzz_msg_id((u_char *) f->sync->after,
                           ngx_strlen(f->sync->after));
        (void) fuzz_msg_id((u_char *) f->sync->before,
                           ngx_strlen(f->sync->before));
        break;

    case IM__FRAME__BODY_TYPING:
        (void) fuzz_id(f->typing->to);
        (void) fuzz_id(f->typing->group);
        break;

    case IM__FRAME__BODY_PRESENCE_SUB:
        for (i = 0; i < f->presence_sub->n_users; i++) {
            (void) fuzz_id(f->presence_sub->users[i]);
        }

        break;

    case IM__FRAME__BODY_GROUP_JOIN:
        (void) fuzz_id(f->group_join->group);
        break;

    case IM__FRAME__BODY_GROUP_LEAVE:
        (void) fuzz_id(f->group_leave->group);
        break;

    default:
        break;
    }

    /*
     * Replies are frames like these, built by the server: whatever came
     * in must encode, and encode canonically.  Unknown fields are left
     * out: the server never sends them back, and protobuf-c keeps some
     * that it would refuse in its own output (a field number 0 spelled
     * as a two-byte varint, regress-field-zero-tag).
     */

    f->base.n_unknown_fields = 0;

    if (f->body_case != IM__FRAME__BODY__NOT_SET) {
        ((ProtobufCMessage *) f->auth)->n_unknown_fields = 0;
    }

    fuzz_reencode(f);
}


/* ngx_stream_im_valid_id() against the reference */

static ngx_int_t
fuzz_id(char *s)
{
    size_t     len;
    ngx_int_t  rc;

    len = ngx_strlen(s);

    rc = ngx_stream_im_valid_id((u_char *) s, len);

    fuzz_assert((rc == NGX_OK) == fuzz_id_valid((u_char *) s, len));

    return rc;
}


/* ngx_stream_im_msg_id_parse() against a reference: <u64>-<u64> */

static ngx_int_t
fuzz_msg_id(u_char *p, size_t len)
{
    size_t                  i, dash;
    uint64_t                v[2], d;
    ngx_int_t               rc;
    ngx_uint_t              ok, part, digits;
    ngx_stream_im_msg_id_t  id;

    rc = ngx_stream_im_msg_id_parse(p, len, &id);

    ok = (len > 0 && len <= 41);
    part = 0;
    digits = 0;
    dash = 0;
    v[0] = 0;
    v[1] = 0;

    for (i = 0; ok && i < len; i++) {

        if (p[i] == '-' && part == 0 && digits) {
            part = 1;
            digits = 0;
            dash = i;
            continue;
        }

        if (p[i] < '0' || p[i] > '9') {
            ok = 0;
            break;
        }

        d = p[i] - '0';

        if (v[part] > (UINT64_MAX - d) / 10) {
            ok = 0;
            break;
        }

        v[part] = v[part] * 10 + d;
        digits++;
    }

    ok = ok && part == 1 && digits > 0 && dash > 0;

    fuzz_assert((rc == NGX_OK) == ok);

    if (ok) {
        fuzz_assert(id.ms == v[0] && id.seq == v[1]);
    }

    return rc;
}


/* the stored entry, packed into the arena behind the decoded frame */

static void
fuzz_send(Im__Frame *f, ngx_stream_im_arena_t *arena)
{
    u_char       *p;
    size_t        n, len;
    Im__Message   msg;

    im__message__init(&msg);

    msg.from = "alice";
    msg.to = f->send->to;
    msg.group = f->send->group;
    msg.body = f->send->body;
    msg.client_msg_id = f->send->client_msg_id;
    msg.type = f->send->type;

    n = im__message__get_packed_size(&msg);

    p = ngx_stream_im_arena_alloc(arena, n);
    if (p == NULL) {

        /* TOO_LARGE "message too large": the arena is spent */
        return;
    }

    fuzz_assert(p + n <= arena->end);

    len = im__message__pack(&msg, p);
    fuzz_assert(len == n);

    /* delivered: the entry with its msg_id and ts in front */

    fuzz_message(f->id, (u_char *) "1700000000000-42", 16, 1700000000000ULL,
                 p, len, 1);
}


static void
fuzz_reencode(Im__Frame *f)
{
    u_char     *buf, *p, *payload, *again;
    size_t      n, len, n2;
    Im__Frame  *g;

    n = ngx_stream_im_encoded_size(f);

    buf = malloc(NGX_STREAM_IM_WS_HEADER_MAX + n);
    if (buf == NULL) {
        abort();
    }

    p = ngx_stream_im_encode(buf, f, n);
    fuzz_assert(p <= buf + NGX_STREAM_IM_WS_HEADER_MAX + n);

    payload = fuzz_ws_payload(buf, &len);
    fuzz_assert(len == n && payload + len == p);

    /* the encoding is canonical: decoded and encoded again, the same */

    g = im__frame__unpack(NULL, len, payload);
    fuzz_assert(g != NULL);

    n2 = im__frame__get_packed_size(g);
    fuzz_assert(n2 == n);

    again = malloc(n2 ? n2 : 1);
    if (again == NULL) {
        abort();
    }

    fuzz_assert(im__frame__pack(g, again) == n2);
    fuzz_assert(ngx_memcmp(again, payload, n2) == 0);

    free(again);
    im__frame__free_unpacked(g, NULL);
    free(buf);
}


/*
 * ngx_stream_im_message_write(): the size said first is the size
 * written, and a valid stored entry becomes a Message that decodes,
 * with its cursor
 */

static void
fuzz_message(uint32_t id, u_char *msg_id, size_t id_len, uint64_t ts,
    u_char *partial, size_t len, ngx_uint_t valid)
{
    u_char     *buf, *p, *payload;
    size_t      size, plen;
    ngx_str_t   mid, part;
    Im__Frame  *g;

    mid.data = msg_id;
    mid.len = id_len;
    part.data = partial;
    part.len = len;

    /* an old entry's: its stream id is both msg_id and cursor */

    size = ngx_stream_im_message_size(id, &mid, ts, &mid, &part);

    buf = malloc(NGX_STREAM_IM_WS_HEADER_MAX + size);
    if (buf == NULL) {
        abort();
    }

    p = ngx_stream_im_message_write(buf, id, &mid, ts, &mid, &part);
    fuzz_assert(p <= buf + NGX_STREAM_IM_WS_HEADER_MAX + size);

    payload = fuzz_ws_payload(buf, &plen);
    fuzz_assert(plen == size && payload + plen == p);

    g = im__frame__unpack(NULL, plen, payload);

    if (valid) {
        fuzz_assert(g != NULL);
        fuzz_assert(g->id == id);
        fuzz_assert(g->body_case == IM__FRAME__BODY_MESSAGE);
        fuzz_assert(ngx_strlen(g->message->msg_id) == id_len
                    && ngx_memcmp(g->message->msg_id, msg_id, id_len) == 0);
        fuzz_assert(g->message->ts_ms == ts);
        fuzz_assert(ngx_strlen(g->message->cursor) == id_len
                    && ngx_memcmp(g->message->cursor, msg_id, id_len) == 0);
        fuzz_assert(ngx_strcmp(g->message->from, "alice") == 0);
    }

    if (g != NULL) {
        im__frame__free_unpacked(g, NULL);
    }

    free(buf);
}


/* a server frame: FIN + binary, unmasked, minimal length */

static u_char *
fuzz_ws_payload(u_char *p, size_t *len)
{
    size_t      n;
    ngx_uint_t  i;

    fuzz_assert(p[0] == 0x82);
    fuzz_assert((p[1] & 0x80) == 0);

    n = p[1] & 0x7f;
    p += 2;

    if (n == 126) {
        n = (size_t) p[0] << 8 | p[1];
        fuzz_assert(n >= 126);
        p += 2;

    } else if (n == 127) {
        n = 0;

        for (i = 0; i < 8; i++) {
            n = (n << 8) | p[i];
        }

        fuzz_assert(n > 0xffff);
        p += 8;
    }

    *len = n;

    return p;
}
