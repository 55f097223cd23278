
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"
#include "unit.h"


#define TEST_ARENA_BIG   (1024 * 1024)
#define TEST_BODY_BIG    70000
#define TEST_GUARD       0xa5
#define TEST_SEED        20240611

#define test_streq(a, b)  (strcmp((a), (b)) == 0)


static u_char *test_encode(char *what, Im__Frame *f, size_t *hlen,
    size_t *n);
static Im__Frame *test_roundtrip(char *what, Im__Frame *f);
static Im__Frame *test_decode(u_char *data, size_t len);
static ngx_uint_t test_bin(ProtobufCBinaryData *a, ProtobufCBinaryData *b);
static ngx_uint_t test_same(Im__Frame *a, Im__Frame *b);
static ngx_uint_t test_guard(u_char *p, size_t len);
static uint32_t test_random(void);

static void test_pong(void);
static void test_error(void);
static void test_message(void);
static void test_bodies(void);
static void test_garbage(void);
static void test_truncated(void);
static void test_wire_types(void);
static void test_varints(void);
static void test_exhaustion(void);
static void test_reset(void);
static void test_unaligned(void);
static void test_fuzz(void);
static void test_splice(void);
static void test_canonical(void);
static void test_msg_id(void);


static ngx_stream_im_arena_t   test_arena;
static u_char                 *test_arena_mem;
static u_char                 *test_body;
static uint32_t                test_seed;


/*
 * Encodes into a buffer of exactly NGX_STREAM_IM_WS_HEADER_MAX + n, checks
 * the WebSocket header and that the payload is what protobuf-c packs.
 */

static u_char *
test_encode(char *what, Im__Frame *f, size_t *hlen, size_t *n)
{
    u_char    *buf, *end, *packed;
    size_t     size, h, i;
    uint64_t   len;

    size = ngx_stream_im_encoded_size(f);

    buf = malloc(NGX_STREAM_IM_WS_HEADER_MAX + size);
    packed = malloc(size + 1);

    if (buf == NULL || packed == NULL) {
        abort();
    }

    end = ngx_stream_im_encode(buf, f, size);

    /* FIN, no RSV bits, binary; a server frame is not masked */

    check(buf[0] == 0x82);
    check((buf[1] & 0x80) == 0);

    if (size < 126) {
        h = 2;
        len = buf[1];

    } else if (size <= 0xffff) {
        h = 4;
        check(buf[1] == 126);
        len = (buf[2] << 8) | buf[3];

    } else {
        h = 10;
        check(buf[1] == 127);

        for (len = 0, i = 2; i < 10; i++) {
            len = (len << 8) | buf[i];
        }
    }

    check(len == size);
    check(end == buf + h + size);

    check(im__frame__pack(f, packed) == size);
    check(ngx_memcmp(buf + h, packed, size) == 0);

    if (len != size || end != buf + h + size) {
        fprintf(stderr, "    while encoding %s\n", what);
    }

    free(packed);

    *hlen = h;
    *n = size;

    return buf;
}


/* decodes a copy of exactly len bytes, so that ASan sees any over-read */

static Im__Frame *
test_decode(u_char *data, size_t len)
{
    u_char     *copy;
    Im__Frame  *f;

    copy = malloc(len ? len : 1);
    if (copy == NULL) {
        abort();
    }

    ngx_memcpy(copy, data, len);

    f = ngx_stream_im_decode(&test_arena, copy, len);

    /* protobuf-c copies strings and bytes: the input may go now */

    ngx_memset(copy, 0, len);
    free(copy);

    check(test_arena.pos >= test_arena.start
          && test_arena.pos <= test_arena.end);

    return f;
}


/* encode, decode into the big arena, and encode the result again */

static Im__Frame *
test_roundtrip(char *what, Im__Frame *f)
{
    u_char     *buf, *again;
    size_t      hlen, n, h2, n2;
    Im__Frame  *d;

    buf = test_encode(what, f, &hlen, &n);

    d = test_decode(buf + hlen, n);

    check(d != NULL);

    if (d == NULL) {
        fprintf(stderr, "    while decoding %s\n", what);
        free(buf);
        return NULL;
    }

    check(test_same(f, d));

    if (!test_same(f, d)) {
        fprintf(stderr, "    %s differs after a round trip\n", what);
    }

    again = test_encode(what, d, &h2, &n2);

    check(h2 == hlen && n2 == n && ngx_memcmp(again, buf, hlen + n) == 0);

    free(again);
    free(buf);

    return d;
}


static ngx_uint_t
test_bin(ProtobufCBinaryData *a, ProtobufCBinaryData *b)
{
    return a->len == b->len
           && (a->len == 0 || ngx_memcmp(a->data, b->data, a->len) == 0);
}


static ngx_uint_t
test_same(Im__Frame *a, Im__Frame *b)
{
    size_t  i;

    if (a->id != b->id || a->body_case != b->body_case) {
        return 0;
    }

    switch (a->body_case) {

    case IM__FRAME__BODY__NOT_SET:
        return 1;

    case IM__FRAME__BODY_AUTH:
        return test_streq(a->auth->token, b->auth->token)
               && test_streq(a->auth->device, b->auth->device);

    case IM__FRAME__BODY_AUTH_OK:
        return test_streq(a->auth_ok->user, b->auth_ok->user)
               && test_streq(a->auth_ok->session, b->auth_ok->session)
               && a->auth_ok->ping_interval_ms
                  == b->auth_ok->ping_interval_ms
               && a->auth_ok->max_frame == b->auth_ok->max_frame;

    case IM__FRAME__BODY_SEND:
        return test_streq(a->send->to, b->send->to)
               && test_streq(a->send->group, b->send->group)
               && test_bin(&a->send->body, &b->send->body)
               && test_streq(a->send->client_msg_id,
                             b->send->client_msg_id)
               && test_streq(a->send->type, b->send->type);

    case IM__FRAME__BODY_SEND_ACK:
        return test_streq(a->send_ack->client_msg_id,
                          b->send_ack->client_msg_id)
               && test_streq(a->send_ack->msg_id, b->send_ack->msg_id)
               && a->send_ack->ts_ms == b->send_ack->ts_ms;

    case IM__FRAME__BODY_MESSAGE:
        return test_streq(a->message->msg_id, b->message->msg_id)
               && test_streq(a->message->from, b->message->from)
               && test_streq(a->message->to, b->message->to)
               && test_streq(a->message->group, b->message->group)
               && test_bin(&a->message->body, &b->message->body)
               && a->message->ts_ms == b->message->ts_ms
               && test_streq(a->message->client_msg_id,
                             b->message->client_msg_id)
               && test_streq(a->message->type, b->message->type);

    case IM__FRAME__BODY_ACK:
        return test_streq(a->ack->up_to, b->ack->up_to);

    case IM__FRAME__BODY_SYNC:
        return test_streq(a->sync->after, b->sync->after)
               && a->sync->limit == b->sync->limit;

    case IM__FRAME__BODY_SYNC_DONE:
        return test_streq(a->sync_done->last, b->sync_done->last)
               && !a->sync_done->more == !b->sync_done->more;

    case IM__FRAME__BODY_PRESENCE_SUB:
        if (a->presence_sub->n_users != b->presence_sub->n_users) {
            return 0;
        }

        for (i = 0; i < a->presence_sub->n_users; i++) {
            if (!test_streq(a->presence_sub->users[i],
                            b->presence_sub->users[i]))
            {
                return 0;
            }
        }

        return 1;

    case IM__FRAME__BODY_PRESENCE:
        return test_streq(a->presence->user, b->presence->user)
               && !a->presence->online == !b->presence->online
               && a->presence->last_seen_ms == b->presence->last_seen_ms;

    case IM__FRAME__BODY_TYPING:
        return test_streq(a->typing->to, b->typing->to)
               && test_streq(a->typing->group, b->typing->group)
               && test_streq(a->typing->from, b->typing->from);

    case IM__FRAME__BODY_GROUP_JOIN:
        return test_streq(a->group_join->group, b->group_join->group);

    case IM__FRAME__BODY_GROUP_LEAVE:
        return test_streq(a->group_leave->group, b->group_leave->group);

    case IM__FRAME__BODY_PING:
        return a->ping->ts_ms == b->ping->ts_ms;

    case IM__FRAME__BODY_PONG:
        return a->pong->ts_ms == b->pong->ts_ms;

    case IM__FRAME__BODY_ERROR:
        return a->error->code == b->error->code
               && test_streq(a->error->reason, b->error->reason);

    case IM__FRAME__BODY_GOAWAY:
        return a->goaway->reconnect_after_ms
               == b->goaway->reconnect_after_ms;

    case IM__FRAME__BODY_OK:
        return b->ok != NULL;

    default:
        return 0;
    }
}


static ngx_uint_t
test_guard(u_char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] != TEST_GUARD) {
            return 0;
        }
    }

    return 1;
}


static uint32_t
test_random(void)
{
    test_seed = test_seed * 1103515245 + 12345;

    return (test_seed >> 16) & 0x7fff;
}


static void
test_pong(void)
{
    u_char     *buf;
    size_t      hlen, n;
    Im__Pong    pong = IM__PONG__INIT;
    Im__Frame   f = IM__FRAME__INIT, *d;

    pong.ts_ms = 1700000000123ULL;

    f.id = 7;
    f.body_case = IM__FRAME__BODY_PONG;
    f.pong = &pong;

    buf = test_encode("pong", &f, &hlen, &n);

    check(hlen == 2);
    check(buf[1] == n);

    d = test_decode(buf + hlen, n);

    check(d != NULL);

    if (d) {
        check(d->id == 7);
        check(d->body_case == IM__FRAME__BODY_PONG);
        check(d->pong != NULL && d->pong->ts_ms == 1700000000123ULL);
    }

    free(buf);
}


static void
test_error(void)
{
    u_char     *buf;
    size_t      hlen, n;
    Im__Error   error = IM__ERROR__INIT;
    Im__Frame   f = IM__FRAME__INIT, *d;

    error.code = IM__ERROR__CODE__TOO_LARGE;
    error.reason = "frame over im_max_frame";

    f.id = 4294967295U;
    f.body_case = IM__FRAME__BODY_ERROR;
    f.error = &error;

    buf = test_encode("error", &f, &hlen, &n);

    check(hlen == 2);

    d = test_decode(buf + hlen, n);

    check(d != NULL);

    if (d) {
        check(d->id == 4294967295U);
        check(d->body_case == IM__FRAME__BODY_ERROR);
        check(d->error->code == IM__ERROR__CODE__TOO_LARGE);
        check(test_streq(d->error->reason, "frame over im_max_frame"));

        /* the strings are in the arena */

        check((u_char *) d->error->reason >= test_arena.start
              && (u_char *) d->error->reason < test_arena.pos);
    }

    free(buf);
}


static void
test_message(void)
{
    u_char       *buf;
    size_t        hlen, n;
    Im__Frame     f = IM__FRAME__INIT, *d;
    Im__Message   m = IM__MESSAGE__INIT;

    m.msg_id = "1700000000123-0";
    m.from = "alice";
    m.to = "bob";
    m.group = "";
    m.body.data = test_body;
    m.body.len = TEST_BODY_BIG;
    m.ts_ms = 1700000000123ULL;
    m.client_msg_id = "c-42";
    m.type = "text/plain";

    f.body_case = IM__FRAME__BODY_MESSAGE;
    f.message = &m;

    buf = test_encode("message of 70000", &f, &hlen, &n);

    check(hlen == 10);
    check(n > TEST_BODY_BIG);

    d = test_decode(buf + hlen, n);

    check(d != NULL);

    if (d) {
        check(d->id == 0);
        check(d->body_case == IM__FRAME__BODY_MESSAGE);
        check(test_streq(d->message->msg_id, "1700000000123-0"));
        check(test_streq(d->message->from, "alice"));
        check(test_streq(d->message->to, "bob"));
        check(test_streq(d->message->group, ""));
        check(d->message->body.len == TEST_BODY_BIG);
        check(ngx_memcmp(d->message->body.data, test_body, TEST_BODY_BIG)
              == 0);
        check(d->message->ts_ms == 1700000000123ULL);
        check(test_streq(d->message->client_msg_id, "c-42"));
        check(test_streq(d->message->type, "text/plain"));
    }

    free(buf);

    /* the 16-bit length form */

    m.body.len = 300;

    buf = test_encode("message of 300", &f, &hlen, &n);

    check(hlen == 4);
    check(n > 300 && n <= 0xffff);

    d = test_decode(buf + hlen, n);

    check(d != NULL && test_same(&f, d));

    free(buf);

    /* the largest frame the 16-bit form holds, and the next */

    m.body.len = 1;
    n = ngx_stream_im_encoded_size(&f);
    m.body.len = 0xffff - n - 8;

    while (ngx_stream_im_encoded_size(&f) < 0xffff) {
        m.body.len++;
    }

    check(ngx_stream_im_encoded_size(&f) == 0xffff);

    buf = test_encode("frame of 65535", &f, &hlen, &n);
    check(hlen == 4 && buf[2] == 0xff && buf[3] == 0xff);
    free(buf);

    m.body.len++;

    buf = test_encode("frame of 65536", &f, &hlen, &n);
    check(n == 0x10000 && hlen == 10);
    free(buf);
}


static void
test_bodies(void)
{
    char        *users[] = { "alice", "bob", "carol-\xc3\xa9" };
    ngx_uint_t   i, k;
    Im__Frame    f, *d;

    Im__Auth          auth = IM__AUTH__INIT;
    Im__AuthOk        auth_ok = IM__AUTH_OK__INIT;
    Im__Send          send = IM__SEND__INIT;
    Im__SendAck       send_ack = IM__SEND_ACK__INIT;
    Im__Message       message = IM__MESSAGE__INIT;
    Im__Ack           ack = IM__ACK__INIT;
    Im__Sync          sync = IM__SYNC__INIT;
    Im__SyncDone      sync_done = IM__SYNC_DONE__INIT;
    Im__PresenceSub   presence_sub = IM__PRESENCE_SUB__INIT;
    Im__Presence      presence = IM__PRESENCE__INIT;
    Im__Typing        typing = IM__TYPING__INIT;
    Im__GroupJoin     group_join = IM__GROUP_JOIN__INIT;
    Im__GroupLeave    group_leave = IM__GROUP_LEAVE__INIT;
    Im__Ping          ping = IM__PING__INIT;
    Im__Pong          pong = IM__PONG__INIT;
    Im__Error         error = IM__ERROR__INIT;
    Im__Goaway        goaway = IM__GOAWAY__INIT;
    Im__Ok            ok = IM__OK__INIT;

    static Im__Frame__BodyCase  cases[] = {
        IM__FRAME__BODY__NOT_SET,
        IM__FRAME__BODY_AUTH,
        IM__FRAME__BODY_AUTH_OK,
        IM__FRAME__BODY_SEND,
        IM__FRAME__BODY_SEND_ACK,
        IM__FRAME__BODY_MESSAGE,
        IM__FRAME__BODY_ACK,
        IM__FRAME__BODY_SYNC,
        IM__FRAME__BODY_SYNC_DONE,
        IM__FRAME__BODY_PRESENCE_SUB,
        IM__FRAME__BODY_PRESENCE,
        IM__FRAME__BODY_TYPING,
        IM__FRAME__BODY_GROUP_JOIN,
        IM__FRAME__BODY_GROUP_LEAVE,
        IM__FRAME__BODY_PING,
        IM__FRAME__BODY_PONG,
        IM__FRAME__BODY_ERROR,
        IM__FRAME__BODY_GOAWAY,
        IM__FRAME__BODY_OK
    };

    auth.token = "v4.public.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
    auth.device = "phone";

    auth_ok.user = "alice";
    auth_ok.session = "s-1-2";
    auth_ok.ping_interval_ms = 25000;
    auth_ok.max_frame = 65536;

    send.to = "bob";
    send.group = "g1";
    send.body.data = (u_char *) "\x00\x01\xfe\xff hi";
    send.body.len = 7;
    send.client_msg_id = "c-1";
    send.type = "text/plain";

    send_ack.client_msg_id = "c-1";
    send_ack.msg_id = "1700000000123-0";
    send_ack.ts_ms = 1700000000123ULL;

    message.msg_id = "1700000000123-1";
    message.from = "alice";
    message.to = "bob";
    message.group = "g1";
    message.body.data = test_body;
    message.body.len = 1000;
    message.ts_ms = (uint64_t) -1;
    message.client_msg_id = "c-2";
    message.type = "image/png";

    ack.up_to = "1700000000123-1";

    sync.after = "1700000000000-0";
    sync.limit = 100;

    sync_done.last = "1700000000123-1";
    sync_done.more = 1;

    presence_sub.n_users = 3;
    presence_sub.users = users;

    presence.user = "bob";
    presence.online = 1;
    presence.last_seen_ms = 1700000000999ULL;

    typing.to = "bob";
    typing.group = "g1";
    typing.from = "alice";

    group_join.group = "g1";
    group_leave.group = "g2";

    ping.ts_ms = 1;
    pong.ts_ms = 0xffffffffffULL;

    error.code = IM__ERROR__CODE__INTERNAL;
    error.reason = "redis is away";

    goaway.reconnect_after_ms = 5000;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        im__frame__init(&f);

        f.id = 1000 + i;
        f.body_case = cases[i];

        switch (cases[i]) {

        case IM__FRAME__BODY_AUTH:
            f.auth = &auth;
            break;

        case IM__FRAME__BODY_AUTH_OK:
            f.auth_ok = &auth_ok;
            break;

        case IM__FRAME__BODY_SEND:
            f.send = &send;
            break;

        case IM__FRAME__BODY_SEND_ACK:
            f.send_ack = &send_ack;
            break;

        case IM__FRAME__BODY_MESSAGE:
            f.message = &message;
            break;

        case IM__FRAME__BODY_ACK:
            f.ack = &ack;
            break;

        case IM__FRAME__BODY_SYNC:
            f.sync = &sync;
            break;

        case IM__FRAME__BODY_SYNC_DONE:
            f.sync_done = &sync_done;
            break;

        case IM__FRAME__BODY_PRESENCE_SUB:
            f.presence_sub = &presence_sub;
            break;

        case IM__FRAME__BODY_PRESENCE:
            f.presence = &presence;
            break;

        case IM__FRAME__BODY_TYPING:
            f.typing = &typing;
            break;

        case IM__FRAME__BODY_GROUP_JOIN:
            f.group_join = &group_join;
            break;

        case IM__FRAME__BODY_GROUP_LEAVE:
            f.group_leave = &group_leave;
            break;

        case IM__FRAME__BODY_PING:
            f.ping = &ping;
            break;

        case IM__FRAME__BODY_PONG:
            f.pong = &pong;
            break;

        case IM__FRAME__BODY_ERROR:
            f.error = &error;
            break;

        case IM__FRAME__BODY_GOAWAY:
            f.goaway = &goaway;
            break;

        case IM__FRAME__BODY_OK:
            f.ok = &ok;
            break;

        default:
            break;
        }

        d = test_roundtrip("a body", &f);

        if (d == NULL) {
            fprintf(stderr, "    body case %d\n", (int) cases[i]);
            continue;
        }

        check(d->id == 1000 + i);
        check(d->body_case == cases[i]);
    }

    /* a few of them field by field, in case test_same() is wrong too */

    im__frame__init(&f);
    f.body_case = IM__FRAME__BODY_PRESENCE_SUB;
    f.presence_sub = &presence_sub;

    d = test_roundtrip("presence sub", &f);

    if (d) {
        check(d->presence_sub->n_users == 3);

        for (k = 0; k < 3 && k < d->presence_sub->n_users; k++) {
            check(test_streq(d->presence_sub->users[k], users[k]));
        }
    }

    im__frame__init(&f);
    f.body_case = IM__FRAME__BODY_SEND;
    f.send = &send;

    d = test_roundtrip("send", &f);

    if (d) {
        check(test_streq(d->send->to, "bob"));
        check(test_streq(d->send->group, "g1"));
        check(d->send->body.len == 7);
        check(ngx_memcmp(d->send->body.data, "\x00\x01\xfe\xff hi", 7)
              == 0);
        check(test_streq(d->send->client_msg_id, "c-1"));
        check(test_streq(d->send->type, "text/plain"));
    }

    im__frame__init(&f);
    f.body_case = IM__FRAME__BODY_AUTH_OK;
    f.auth_ok = &auth_ok;

    d = test_roundtrip("auth ok", &f);

    if (d) {
        check(test_streq(d->auth_ok->user, "alice"));
        check(test_streq(d->auth_ok->session, "s-1-2"));
        check(d->auth_ok->ping_interval_ms == 25000);
        check(d->auth_ok->max_frame == 65536);
    }

    /* an empty frame is an im.Frame too: id 0 and no body */

    d = test_decode((u_char *) "", 0);

    check(d != NULL && d->id == 0
          && d->body_case == IM__FRAME__BODY__NOT_SET);
}


static void
test_garbage(void)
{
    ngx_uint_t  i;

    static struct {
        char        *data;
        size_t       len;
    } cases[] = {
        { "\xff", 1 },
        { "\xff\xff\xff\xff\xff", 5 },
        { "\x80", 1 },                          /* a tag that never ends */
        { "\x00\x00", 2 },                      /* field number 0 */
        { "\x08", 1 },                          /* a tag and no value */
        { "\x0a", 1 },                          /* no length */
        { "\x0b\x0c", 2 },                      /* groups */
        { "\x0e\x00", 2 },                      /* wire type 6 */
        { "\x0f\x00", 2 },                      /* wire type 7 */
        { "GET / HTTP/1.1\r\n\r\n", 18 },
        { "{\"id\":1,\"ping\":{}}", 18 },
        { "\x72\xff\xff\xff\xff\x0f", 6 },      /* 4 GiB Message */
        { "\x72\x05\x0a\x03" "ab", 6 },         /* a string cut short */
        { NULL, 0 }
    };

    for (i = 0; cases[i].data; i++) {
        check(test_decode((u_char *) cases[i].data, cases[i].len) == NULL);

        if (test_decode((u_char *) cases[i].data, cases[i].len) != NULL) {
            fprintf(stderr, "    garbage case %u\n", (unsigned) i);
        }
    }
}


static void
test_truncated(void)
{
    u_char       *buf;
    size_t        hlen, n, k, bad;
    Im__Frame     f = IM__FRAME__INIT, *d;
    Im__Message   m = IM__MESSAGE__INIT;

    m.msg_id = "1700000000123-0";
    m.from = "alice";
    m.to = "bob";
    m.body.data = test_body;
    m.body.len = 300;
    m.ts_ms = 1700000000123ULL;

    f.id = 5;
    f.body_case = IM__FRAME__BODY_MESSAGE;
    f.message = &m;

    buf = test_encode("message to cut", &f, &hlen, &n);

    /* "\x08\x05" is the id; the Message is one field after it */

    check(buf[hlen] == 0x08 && buf[hlen + 1] == 0x05);

    d = test_decode(buf + hlen, 2);
    check(d != NULL && d->id == 5
          && d->body_case == IM__FRAME__BODY__NOT_SET);

    check(test_decode(buf + hlen, 1) == NULL);

    bad = 0;

    for (k = 3; k < n; k++) {
        if (test_decode(buf + hlen, k) != NULL) {
            if (bad++ < 5) {
                fprintf(stderr, "    %u of %u bytes decoded\n",
                        (unsigned) k, (unsigned) n);
            }
        }
    }

    check(bad == 0);

    d = test_decode(buf + hlen, n);
    check(d != NULL && test_same(&f, d));

    free(buf);

    /* the big one, cut in a few places */

    m.body.len = TEST_BODY_BIG;

    buf = test_encode("big message to cut", &f, &hlen, &n);

    check(test_decode(buf + hlen, n - 1) == NULL);
    check(test_decode(buf + hlen, n / 2) == NULL);
    check(test_decode(buf + hlen, 10) == NULL);
    check(test_decode(buf + hlen, n) != NULL);

    free(buf);
}


static void
test_wire_types(void)
{
    ngx_uint_t  i;

    static struct {
        char        *data;
        size_t       len;
    } cases[] = {
        { "\x0a\x01\x05", 3 },                  /* id, length-delimited */
        { "\x0d\x05\x00\x00\x00", 5 },          /* id, fixed32 */
        { "\x09\x05\x00\x00\x00\x00\x00\x00\x00", 9 },  /* id, fixed64 */
        { "\xc0\x01\x05", 3 },                  /* pong, varint */
        { "\xc5\x01\x05\x00\x00\x00", 6 },      /* pong, fixed32 */
        { "\xc2\x01\x02\x0a\x00", 5 },          /* pong.ts_ms, bytes */
        { "\xca\x01\x02\x0a\x00", 5 },          /* error.code, bytes */
        { "\xca\x01\x02\x10\x01", 5 },          /* error.reason, varint */
        { "\x92\x01\x02\x08\x01", 5 },          /* presence_sub.users */
        { NULL, 0 }
    };

    for (i = 0; cases[i].data; i++) {
        check(test_decode((u_char *) cases[i].data, cases[i].len) == NULL);

        if (test_decode((u_char *) cases[i].data, cases[i].len) != NULL) {
            fprintf(stderr, "    wire type case %u\n", (unsigned) i);
        }
    }

    /* the right wire types decode */

    check(test_decode((u_char *) "\x08\x05", 2) != NULL);
    check(test_decode((u_char *) "\xc2\x01\x02\x08\x05", 5) != NULL);
}


static void
test_varints(void)
{
    Im__Frame  *d;

    /* ten bytes is the longest varint */

    d = test_decode((u_char *) "\x08\x81\x80\x80\x80\x80\x80\x80\x80\x80\x00",
                    11);
    check(d != NULL && d->id == 1);

    d = test_decode((u_char *) "\xc2\x01\x0b\x08"
                    "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 14);
    check(d != NULL && d->pong->ts_ms == (uint64_t) -1);

    /* eleven is too many: as a value, a nested value, a tag, a length */

    check(test_decode((u_char *) "\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80"
                      "\x80\x01", 12)
          == NULL);

    check(test_decode((u_char *) "\xc2\x01\x0c\x08"
                      "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 15)
          == NULL);

    check(test_decode((u_char *) "\x88\x80\x80\x80\x80\x80\x80\x80\x80\x80"
                      "\x00\x05", 12)
          == NULL);

    check(test_decode((u_char *) "\xc2\x01\x82\x80\x80\x80\x80\x80\x80\x80"
                      "\x80\x80\x00\x08\x05", 15)
          == NULL);
}


/* what a client sends can never grow memory past the arena */

static void
test_exhaustion(void)
{
    char                    **users, *names;
    u_char                   *buf, *mem;
    size_t                    hlen, n, i;
    Im__Frame                 f = IM__FRAME__INIT, *d;
    Im__Pong                  pong = IM__PONG__INIT;
    Im__Message               m = IM__MESSAGE__INIT;
    Im__PresenceSub           sub = IM__PRESENCE_SUB__INIT;
    ngx_stream_im_arena_t     a;

    users = malloc(3000 * sizeof(char *));
    names = malloc(3000 * 16);

    if (users == NULL || names == NULL) {
        abort();
    }

    for (i = 0; i < 3000; i++) {
        users[i] = names + i * 16;
        snprintf(users[i], 16, "user-%04u", (unsigned) i);
    }

    sub.n_users = 3000;
    sub.users = users;

    f.body_case = IM__FRAME__BODY_PRESENCE_SUB;
    f.presence_sub = &sub;

    buf = test_encode("presence sub of 3000", &f, &hlen, &n);

    /* a 4 KiB arena of its own, so that ASan sees a write past it */

    mem = malloc(4096);
    if (mem == NULL) {
        abort();
    }

    ngx_stream_im_arena_init(&a, mem, 4096);

    d = ngx_stream_im_decode(&a, buf + hlen, n);

    check(d == NULL);
    check(a.pos >= a.start && a.pos <= a.end);

    /* the same arena is good for the next frame */

    pong.ts_ms = 77;

    f.body_case = IM__FRAME__BODY_PONG;
    f.pong = &pong;

    free(buf);
    buf = test_encode("pong after", &f, &hlen, &n);

    d = ngx_stream_im_decode(&a, buf + hlen, n);

    check(d != NULL && d->pong->ts_ms == 77);

    free(buf);

    /* bytes over the arena */

    m.body.data = test_body;
    m.body.len = 4096;

    f.body_case = IM__FRAME__BODY_MESSAGE;
    f.message = &m;

    buf = test_encode("message over 4 KiB", &f, &hlen, &n);

    d = ngx_stream_im_decode(&a, buf + hlen, n);

    check(d == NULL);
    check(a.pos >= a.start && a.pos <= a.end);

    free(buf);

    /* and no arena at all */

    ngx_stream_im_arena_init(&a, mem, 0);

    d = ngx_stream_im_decode(&a, (u_char *) "\x08\x05", 2);
    check(d == NULL);
    check(a.pos == a.start);

    free(mem);
    free(names);
    free(users);
}


static void
test_reset(void)
{
    u_char                 *buf, *mem;
    size_t                  hlen, n, used;
    Im__Frame               f = IM__FRAME__INIT, *d;
    Im__Message             m = IM__MESSAGE__INIT;
    ngx_stream_im_arena_t   a;

    m.msg_id = "1700000000123-0";
    m.from = "alice";
    m.to = "bob";
    m.body.data = test_body;
    m.body.len = 100;
    m.ts_ms = 1;

    f.id = 3;
    f.body_case = IM__FRAME__BODY_MESSAGE;
    f.message = &m;

    buf = test_encode("message", &f, &hlen, &n);

    /* how much the frame takes */

    d = test_decode(buf + hlen, n);
    check(d != NULL);

    used = test_arena.pos - test_arena.start;
    check(used > 100);

    /* an arena that holds it once: twice works only if it is reset */

    mem = malloc(used);
    if (mem == NULL) {
        abort();
    }

    ngx_stream_im_arena_init(&a, mem, used);

    d = ngx_stream_im_decode(&a, buf + hlen, n);
    check(d != NULL && test_same(&f, d));

    d = ngx_stream_im_decode(&a, buf + hlen, n);
    check(d != NULL && test_same(&f, d));

    d = ngx_stream_im_decode(&a, buf + hlen, n);
    check(d != NULL && test_same(&f, d));
    check(a.pos == a.end);

    free(mem);

    /* and a byte less is not enough */

    mem = malloc(used - 1);
    if (mem == NULL) {
        abort();
    }

    ngx_stream_im_arena_init(&a, mem, used - 1);

    d = ngx_stream_im_decode(&a, buf + hlen, n);
    check(d == NULL);
    check(a.pos <= a.end);

    free(mem);
    free(buf);
}


/*
 * An arena whose end is not pointer-aligned.  The worker arena is
 * 4 * im_max_frame + 65536 bytes: with an odd im_max_frame, 65535 say,
 * its end is 4 bytes off.  An allocation must never go past the end.
 */

static void
test_unaligned(void)
{
    u_char                 *mem, *buf, *p;
    size_t                  size, hlen, n, i, max, wire;
    Im__Frame               f = IM__FRAME__INIT, *d;
    Im__PresenceSub         sub = IM__PRESENCE_SUB__INIT;
    ngx_stream_im_arena_t   a;

    /* allocations as dispatch makes them: 12 bytes hold 9, then nothing */

    mem = malloc(64);
    if (mem == NULL) {
        abort();
    }

    ngx_stream_im_arena_init(&a, mem, 12);

    p = ngx_stream_im_arena_alloc(&a, 9);
    check(p == mem);

    p = ngx_stream_im_arena_alloc(&a, 1);
    check(p == NULL);

    if (p != NULL) {
        fprintf(stderr, "    arena of 12 bytes: 9 bytes, then 1 byte at "
                "offset %d\n", (int) (p - mem));
    }

    free(mem);

    /* a tiny arena at an odd address */

    mem = malloc(256);
    if (mem == NULL) {
        abort();
    }

    ngx_memset(mem, TEST_GUARD, 256);
    ngx_stream_im_arena_init(&a, mem + 1, 4);

    d = ngx_stream_im_decode(&a, (u_char *) "\x08\x05", 2);

    check(d == NULL);
    check(a.pos <= a.end);
    check(test_guard(mem + 5, 256 - 5));

    free(mem);

    /*
     * What a client may send with "im_max_frame 65535;": 4200 empty
     * names, 8 KiB on the wire.  protobuf-c's scan slabs, the array and
     * the names fill the arena up to its last aligned slot.
     */

    max = 65535;
    size = 4 * max + 65536;

    sub.n_users = 4200;
    sub.users = malloc(sub.n_users * sizeof(char *));
    if (sub.users == NULL) {
        abort();
    }

    for (i = 0; i < sub.n_users; i++) {
        sub.users[i] = "";
    }

    f.body_case = IM__FRAME__BODY_PRESENCE_SUB;
    f.presence_sub = &sub;

    buf = test_encode("presence sub of empty names", &f, &hlen, &n);

    wire = n;
    check(wire <= max);

    mem = malloc(size + 65536);
    if (mem == NULL) {
        abort();
    }

    ngx_memset(mem, TEST_GUARD, size + 65536);
    ngx_stream_im_arena_init(&a, mem, size);

    d = ngx_stream_im_decode(&a, buf + hlen, n);

    check(d == NULL);
    check(a.pos <= a.end);
    check(test_guard(mem + size, 65536));

    if (a.pos > a.end || !test_guard(mem + size, 65536)) {
        for (p = mem + size + 65536; p > mem + size; p--) {
            if (p[-1] != TEST_GUARD) {
                break;
            }
        }

        fprintf(stderr, "    a frame of %u bytes decoded %s, the arena "
                "of %u bytes written %u bytes past its end\n",
                (unsigned) wire, d ? "fine" : "to NULL", (unsigned) size,
                (unsigned) (p - (mem + size)));
    }

    free(mem);
    free(buf);
    free(sub.users);
}


/* random bytes and bit flips: no crash, and the arena stays in bounds */

static void
test_fuzz(void)
{
    u_char                 *mem, data[64], *buf;
    size_t                  len, hlen, n, i, k;
    Im__Frame               f = IM__FRAME__INIT, *d;
    Im__Message             m = IM__MESSAGE__INIT;
    ngx_uint_t              out;
    ngx_stream_im_arena_t   a;

    mem = malloc(512);
    if (mem == NULL) {
        abort();
    }

    ngx_stream_im_arena_init(&a, mem, 512);

    test_seed = TEST_SEED;
    out = 0;

    for (i = 0; i < 20000; i++) {
        len = test_random() % sizeof(data);

        for (k = 0; k < len; k++) {
            data[k] = (u_char) test_random();
        }

        (void) ngx_stream_im_decode(&a, data, len);

        if (a.pos < a.start || a.pos > a.end) {
            out++;
        }
    }

    m.msg_id = "1700000000123-0";
    m.from = "alice";
    m.to = "bob";
    m.body.data = test_body;
    m.body.len = 40;

    f.id = 300;
    f.body_case = IM__FRAME__BODY_MESSAGE;
    f.message = &m;

    buf = test_encode("message to flip", &f, &hlen, &n);

    for (i = 0; i < n * 8; i++) {
        buf[hlen + i / 8] ^= (u_char) (1 << (i % 8));

        d = ngx_stream_im_decode(&a, buf + hlen, n);

        if (a.pos < a.start || a.pos > a.end) {
            out++;
        }

        if (d && d->body_case == IM__FRAME__BODY_MESSAGE
            && d->message->body.len > n)
        {
            out++;
        }

        buf[hlen + i / 8] ^= (u_char) (1 << (i % 8));
    }

    check(out == 0);

    free(buf);
    free(mem);
}


/*
 * A stored entry (a packed Message without msg_id and ts_ms) with the two
 * fields written in front must decode as the whole Message.
 */

static void
test_splice(void)
{
    u_char       *buf, *partial, *end;
    size_t        plen, n, h, i;
    uint32_t      id;
    uint64_t      len, ts;
    ngx_str_t     msg_id, part, cursor;
    Im__Frame    *d;
    ngx_uint_t    k;
    Im__Message   m = IM__MESSAGE__INIT;

    static struct {
        uint32_t   id;
        uint64_t   ts;
        size_t     body;
    } cases[] = {
        { 12, 1700000000123ULL, 10 },
        { 0, 1700000000123ULL, 10 },
        { 1, 0, 0 },
        { 0, 0, 200 },
        { 4294967295U, (uint64_t) -1, 65000 },
        { 9, 5, TEST_BODY_BIG }
    };

    m.from = "alice";
    m.to = "bob";
    m.group = "g1";
    m.client_msg_id = "c-7";
    m.type = "text/plain";
    m.body.data = test_body;

    msg_id.data = (u_char *) "1700000000123-42";
    msg_id.len = sizeof("1700000000123-42") - 1;

    cursor.data = (u_char *) "1700000000999-3";
    cursor.len = sizeof("1700000000999-3") - 1;

    for (k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        id = cases[k].id;
        ts = cases[k].ts;
        m.body.len = cases[k].body;

        plen = im__message__get_packed_size(&m);

        partial = malloc(plen);
        if (partial == NULL) {
            abort();
        }

        im__message__pack(&m, partial);

        part.data = partial;
        part.len = plen;

        n = ngx_stream_im_message_size(id, &msg_id, ts, &cursor, &part);

        buf = malloc(NGX_STREAM_IM_WS_HEADER_MAX + n);
        if (buf == NULL) {
            abort();
        }

        end = ngx_stream_im_message_write(buf, id, &msg_id, ts, &cursor,
                                          &part);

        check(buf[0] == 0x82);

        if (n < 126) {
            h = 2;
            len = buf[1];

        } else if (n <= 0xffff) {
            h = 4;
            len = (buf[2] << 8) | buf[3];

        } else {
            h = 10;

            for (len = 0, i = 2; i < 10; i++) {
                len = (len << 8) | buf[i];
            }
        }

        check(len == n);
        check(end == buf + h + n);

        d = test_decode(buf + h, n);

        check(d != NULL);

        if (d == NULL) {
            fprintf(stderr, "    splice case %u\n", (unsigned) k);
            free(buf);
            free(partial);
            continue;
        }

        check(d->id == id);
        check(d->body_case == IM__FRAME__BODY_MESSAGE);
        check(test_streq(d->message->msg_id, "1700000000123-42"));
        check(d->message->ts_ms == ts);
        check(test_streq(d->message->cursor, "1700000000999-3"));
        check(ngx_stream_im_entry_has_id(&part) == NGX_DECLINED);
        check(test_streq(d->message->from, "alice"));
        check(test_streq(d->message->to, "bob"));
        check(test_streq(d->message->group, "g1"));
        check(test_streq(d->message->client_msg_id, "c-7"));
        check(test_streq(d->message->type, "text/plain"));
        check(test_bin(&d->message->body, &m.body));

        free(buf);
        free(partial);
    }
}


/*
 * A stored entry with its msg_id and ts_ms in front (ngx_stream_im_
 * entry_head) gets only the cursor written after it.
 */

static void
test_entry(void)
{
    u_char       *entry, *buf, *p, *end;
    size_t        tlen, n, h;
    uint64_t      ts;
    ngx_str_t     msg_id, cursor, none, part;
    Im__Frame    *d;
    ngx_uint_t    k;
    Im__Message   m = IM__MESSAGE__INIT;

    static size_t  bodies[] = { 0, 1, 127, 128, 70000 };

    m.from = "alice";
    m.to = "bob";
    m.type = "read";
    m.body.data = test_body;

    msg_id.data = (u_char *) "1800000000000-1638400042";
    msg_id.len = sizeof("1800000000000-1638400042") - 1;
    cursor.data = (u_char *) "1800000000002-0";
    cursor.len = sizeof("1800000000002-0") - 1;
    ngx_str_null(&none);
    ts = 1800000000000ULL;

    for (k = 0; k < sizeof(bodies) / sizeof(bodies[0]); k++) {
        m.body.len = bodies[k];

        tlen = im__message__get_packed_size(&m);

        entry = malloc(tlen + msg_id.len + 2 + 2 * 10);
        if (entry == NULL) {
            abort();
        }

        p = ngx_stream_im_entry_head(entry, &msg_id, ts);
        p += im__message__pack(&m, p);

        part.data = entry;
        part.len = p - entry;

        check(ngx_stream_im_entry_has_id(&part) == NGX_OK);

        n = ngx_stream_im_message_size(7, &none, 0, &cursor, &part);

        buf = malloc(NGX_STREAM_IM_WS_HEADER_MAX + n);
        if (buf == NULL) {
            abort();
        }

        end = ngx_stream_im_message_write(buf, 7, &none, 0, &cursor, &part);

        h = (n < 126) ? 2 : (n <= 0xffff) ? 4 : 10;

        check(end == buf + h + n);

        d = test_decode(buf + h, n);

        check(d != NULL);

        if (d) {
            check(d->id == 7);
            check(test_streq(d->message->msg_id, "1800000000000-1638400042"));
            check(d->message->ts_ms == ts);
            check(test_streq(d->message->cursor, "1800000000002-0"));
            check(test_streq(d->message->from, "alice"));
            check(test_streq(d->message->type, "read"));
            check(test_bin(&d->message->body, &m.body));
        }

        free(buf);
        free(entry);
    }

    part.len = 0;
    check(ngx_stream_im_entry_has_id(&part) == NGX_DECLINED);
}


/* the slots Redis Cluster gives (CLUSTER KEYSLOT) */

static void
test_slot(void)
{
    ngx_uint_t  i;

    static struct {
        char        *key;
        ngx_uint_t   slot;
    } cases[] = {
        { "foo", 12182 },
        { "bar", 5061 },
        { "{user1000}.following", 3443 },
        { "im:{u:alice}:inbox", 5797 },
        { "u:alice", 5797 },
        { "{}x", 10595 },
        { "a{}b{c}", 7353 },
        { "{{a}}", 10276 },
        { "abc{", 3048 },
        { "", 0 },
        { "123456789", 12739 }
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (ngx_stream_im_slot((u_char *) cases[i].key,
                               strlen(cases[i].key))
            != cases[i].slot)
        {
            fprintf(stderr, "    slot of \"%s\"\n", cases[i].key);
            check(0);
        }
    }
}


static void
test_msg_id(void)
{
    ngx_uint_t              i;
    ngx_stream_im_msg_id_t  id;

    static struct {
        char        *text;
        ngx_int_t    rc;
        uint64_t     ms;
        uint64_t     seq;
    } cases[] = {
        { "1700000000123-0", NGX_OK, 1700000000123ULL, 0 },
        { "0-0", NGX_OK, 0, 0 },
        { "0-1", NGX_OK, 0, 1 },
        { "007-08", NGX_OK, 7, 8 },
        { "18446744073709551615-18446744073709551615", NGX_OK,
          (uint64_t) -1, (uint64_t) -1 },
        { "18446744073709551616-0", NGX_ERROR, 0, 0 },
        { "0-18446744073709551616", NGX_ERROR, 0, 0 },
        { "99999999999999999999-0", NGX_ERROR, 0, 0 },
        { "", NGX_ERROR, 0, 0 },
        { "1", NGX_ERROR, 0, 0 },
        { "1-", NGX_ERROR, 0, 0 },
        { "-1", NGX_ERROR, 0, 0 },
        { "-", NGX_ERROR, 0, 0 },
        { "1-2-3", NGX_ERROR, 0, 0 },
        { "1--2", NGX_ERROR, 0, 0 },
        { "+1-2", NGX_ERROR, 0, 0 },
        { "1-+2", NGX_ERROR, 0, 0 },
        { " 1-2", NGX_ERROR, 0, 0 },
        { "1-2 ", NGX_ERROR, 0, 0 },
        { "1x-2", NGX_ERROR, 0, 0 },
        { "1-2x", NGX_ERROR, 0, 0 },
        { "*", NGX_ERROR, 0, 0 },
        { "$", NGX_ERROR, 0, 0 },
        { "000000000000000000000000000000000000000-00", NGX_ERROR, 0, 0 },
        { NULL, 0, 0, 0 }
    };

    for (i = 0; cases[i].text; i++) {
        ngx_memset(&id, 0xee, sizeof(id));

        check(ngx_stream_im_msg_id_parse((u_char *) cases[i].text,
                                         ngx_strlen(cases[i].text), &id)
              == cases[i].rc);

        if (cases[i].rc == NGX_OK) {
            check(id.ms == cases[i].ms && id.seq == cases[i].seq);
        }
    }

    /* the length bounds the parse */

    check(ngx_stream_im_msg_id_parse((u_char *) "12-34", 4, &id) == NGX_OK);
    check(id.ms == 12 && id.seq == 3);
}


/* a string with a NUL inside decodes cut short: canonical() sees it */

static void
test_canonical(void)
{
    Im__Frame  *f;
    u_char      good[] = "\x08\x07\x62\x05\x0a\x03" "bob";
    u_char      nul[] = "\x08\x07\x62\x05\x0a\x03" "b\0b";
    u_char      twice[] = "\x08\x07\x08\x07\xba\x01\x00";

    f = ngx_stream_im_decode(&test_arena, good, sizeof(good) - 1);
    check(f != NULL && test_streq(f->send->to, "bob"));
    check(f && ngx_stream_im_canonical(f, sizeof(good) - 1) == NGX_OK);

    f = ngx_stream_im_decode(&test_arena, nul, sizeof(nul) - 1);
    check(f != NULL && test_streq(f->send->to, "b"));
    check(f && ngx_stream_im_canonical(f, sizeof(nul) - 1) == NGX_DECLINED);

    /* the same field twice is not how an encoder writes a frame */

    f = ngx_stream_im_decode(&test_arena, twice, sizeof(twice) - 1);
    check(f != NULL && f->id == 7);
    check(f && ngx_stream_im_canonical(f, sizeof(twice) - 1)
               == NGX_DECLINED);
}


int
main(void)
{
    size_t  i;

    test_arena_mem = malloc(TEST_ARENA_BIG);
    test_body = malloc(TEST_BODY_BIG);

    if (test_arena_mem == NULL || test_body == NULL) {
        return 2;
    }

    for (i = 0; i < TEST_BODY_BIG; i++) {
        test_body[i] = (u_char) (i * 13 + (i >> 9));
    }

    ngx_stream_im_arena_init(&test_arena, test_arena_mem, TEST_ARENA_BIG);

    test_pong();
    test_error();
    test_message();
    test_bodies();
    test_garbage();
    test_truncated();
    test_wire_types();
    test_varints();
    test_exhaustion();
    test_reset();
    test_fuzz();
    test_splice();
    test_entry();
    test_slot();
    test_msg_id();
    test_canonical();
    test_unaligned();

    free(test_arena_mem);
    free(test_body);

    return unit_done("test_codec");
}
