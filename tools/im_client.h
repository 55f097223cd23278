
/*
 * Copyright (C) ngx_im authors
 */


#ifndef _IM_CLIENT_H_INCLUDED_
#define _IM_CLIENT_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "im.pb-c.h"


/*
 * A WebSocket client of ngx_im.  The request builder, response check,
 * frame writers and frame parser are pure: buffers in, results out, no
 * global state and no I/O, so an event loop can hold many sessions.
 * im_client_connect() and the calls on im_client_t are the blocking
 * layer for command-line tools; every wait there is bounded.
 *
 * Call im_client_init() once before anything that needs random bytes.
 */


#define IM_CLIENT_OK             0
#define IM_CLIENT_ERROR         -1
#define IM_CLIENT_AGAIN          1     /* need more input; or timed out */
#define IM_CLIENT_CLOSED         2     /* the connection is over */

#define IM_CLIENT_WS_CONT        0x0
#define IM_CLIENT_WS_TEXT        0x1
#define IM_CLIENT_WS_BINARY      0x2
#define IM_CLIENT_WS_CLOSE       0x8
#define IM_CLIENT_WS_PING        0x9
#define IM_CLIENT_WS_PONG        0xa

#define IM_CLIENT_CLOSE_NORMAL   1000
#define IM_CLIENT_CLOSE_AWAY     1001
#define IM_CLIENT_CLOSE_PROTOCOL 1002
#define IM_CLIENT_CLOSE_DATA     1003
#define IM_CLIENT_CLOSE_NO_CODE  1005  /* never sent: close without code */
#define IM_CLIENT_CLOSE_ABNORMAL 1006  /* never sent: no close frame seen */
#define IM_CLIENT_CLOSE_INVALID  1007
#define IM_CLIENT_CLOSE_TOO_BIG  1009
#define IM_CLIENT_CLOSE_INTERNAL 1011

/* "dGhlIHNhbXBsZSBub25jZQ==" and its NUL */
#define IM_CLIENT_KEY_LEN        25
#define IM_CLIENT_ACCEPT_LEN     29

#define IM_CLIENT_CONTROL_MAX    125
#define IM_CLIENT_HEADER_MAX     14    /* 2 + 8 length + 4 mask */
#define IM_CLIENT_RESPONSE_MAX   8192
#define IM_CLIENT_MESSAGE_MAX    (1024 * 1024)
#define IM_CLIENT_BUFFER_SIZE    16384


/*
 * The incremental parser of server frames.  im_client_parse() eats
 * bytes and stops after each complete message: data messages are
 * reassembled from fragments, control frames come out as they arrive.
 * A ping is the caller's to answer with a pong of the same payload.
 */

typedef struct {
    /* the message found by the last call that returned IM_CLIENT_OK */
    int            opcode;
    u_char        *payload;         /* in the input or in buf */
    size_t         len;

    /* what went wrong, and the close code to send for it */
    const char    *error;
    unsigned       code;

    size_t         max;

    /* the frame being read */
    int            state;
    unsigned       fin:1;
    int            frame_opcode;
    uint64_t       remain;
    size_t         hlen;
    u_char         hdr[10];

    /* the data message being reassembled: opcode 0 when there is none */
    int            message;
    u_char        *buf;
    size_t         size;
    size_t         used;

    size_t         clen;
    u_char         control[IM_CLIENT_CONTROL_MAX];
} im_client_parser_t;


/* a blocking connection, for tools; see im_client_connect() */

typedef struct {
    int                  fd;
    int                  timeout;         /* ms: writes and the close */

    /* the result of the last im_client_recv_frame() */
    int                  status;

    unsigned             close_sent:1;
    unsigned             close_received:1;
    unsigned             eof:1;
    unsigned             failed:1;        /* the stream is unusable */

    /* the server's close: IM_CLIENT_CLOSE_ABNORMAL if there was none */
    unsigned             close_code;
    char                 close_reason[IM_CLIENT_CONTROL_MAX + 1];

    char                 err[256];

    im_client_parser_t   parser;

    u_char              *pos;
    u_char              *last;
    u_char               in[IM_CLIENT_BUFFER_SIZE];
} im_client_t;


int im_client_init(void);

ssize_t im_client_request(u_char *buf, size_t size, const char *host,
    const char *path, char *key_out);
int im_client_response(const u_char *buf, size_t len, const char *key,
    size_t *consumed);
void im_client_accept(const char *key, char *accept);

ssize_t im_client_frame(u_char *buf, size_t size, int opcode,
    const u_char *payload, size_t len);
ssize_t im_client_encode(u_char *buf, size_t size, const Im__Frame *f);
size_t im_client_encoded_size(const Im__Frame *f);

void im_client_parser_init(im_client_parser_t *p, size_t max);
int im_client_parse(im_client_parser_t *p, u_char *data, size_t len,
    size_t *consumed);
void im_client_parser_free(im_client_parser_t *p);
int im_client_close_status(const u_char *payload, size_t len,
    unsigned *code, const u_char **reason, size_t *rlen);

const char *im_client_error_name(int code);

im_client_t *im_client_connect(const char *url, int timeout, char *err,
    size_t size);
int im_client_send_frame(im_client_t *c, const Im__Frame *f);
Im__Frame *im_client_recv_frame(im_client_t *c, int timeout);
void im_client_close(im_client_t *c);


#endif /* _IM_CLIENT_H_INCLUDED_ */
