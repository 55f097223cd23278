
/*
 * Copyright (C) ngx_im authors
 */


#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "im_client.h"


#define IMCAT_OK           0
#define IMCAT_ERROR        1
#define IMCAT_USAGE        2

#define IMCAT_URL          "ws://127.0.0.1:8080/"
#define IMCAT_TIMEOUT      10000
#define IMCAT_LINE_MAX     65536
#define IMCAT_BODY_MAX     (IM_CLIENT_MESSAGE_MAX / 2)
#define IMCAT_PING_GAP     1000
#define IMCAT_HISTORY_ROUNDS  100000

/* imcat_line() after "/quit" */
#define IMCAT_QUIT         3


typedef struct {
    im_client_t   *client;
    char          *url;
    char          *token;
    char          *device;
    char          *to;            /* send: the recipient; chat: the peer */
    char          *group;         /* send: the group instead */
    char          *after;         /* history: start after this cursor */
    char          *cmid;
    char          *user;          /* as AuthOk names us */
    int            timeout;       /* ms */
    int            wait;          /* ms, -1 for ever */
    long           count;
    long           received;
    uint32_t       next_id;
    unsigned       pending;       /* chat: requests without a reply */
    unsigned       show:1;        /* print and ack messages */
    unsigned       history:1;     /* only Sync's messages, no acks */
    unsigned       lost:1;        /* stdout failed */
} imcat_t;


static int imcat_listen(imcat_t *ic);
static int imcat_send(imcat_t *ic, char **args, int nargs);
static int imcat_ping(imcat_t *ic);
static int imcat_presence(imcat_t *ic, char **users, int nusers);
static int imcat_history(imcat_t *ic);
static int imcat_chat(imcat_t *ic);
static int imcat_chat_input(imcat_t *ic, char *buf, size_t *used, int eof);
static int imcat_line(imcat_t *ic, char *line);
static int imcat_connect(imcat_t *ic, int auth);
static uint32_t imcat_request(imcat_t *ic, Im__Frame *f);
static uint32_t imcat_send_message(imcat_t *ic, char *to, char *group,
    u_char *body, size_t len, char *cmid);
static Im__Frame *imcat_reply(imcat_t *ic, uint32_t id, const char *what);
static int imcat_drain(imcat_t *ic);
static void imcat_push(imcat_t *ic, Im__Frame *f);
static void imcat_message(imcat_t *ic, Im__Message *m);
static void imcat_error(Im__Error *e);
static void imcat_failed(imcat_t *ic, const char *what);
static int imcat_printable(u_char *p, size_t len);
static int imcat_read_body(u_char **body, size_t *len);
static int imcat_seconds(char *text, int *ms);
static int imcat_usage(char *fmt, char *arg);
static void imcat_signal(int signo);
static int64_t imcat_msec(void);
static int64_t imcat_usec(void);
static uint64_t imcat_wall_msec(void);


static volatile sig_atomic_t  imcat_stop;

static char  *imcat_synopsis =
    "usage: imcat [options] listen [--count N] [--wait SECONDS]\n"
    "       imcat [options] send --to USER|--group GROUP "
    "[--client-msg-id ID] [TEXT...]\n"
    "       imcat [options] presence USER...\n"
    "       imcat [options] history [--after CURSOR] [--count N]\n"
    "       imcat [options] ping [--count N]\n"
    "       imcat [options] [chat]\n";

static char  *imcat_help =
    "\n"
    "options:\n"
    "  -u, --url URL          ws://HOST[:PORT][/PATH], HOST an IP address\n"
    "                         or localhost; default $IM_URL or "
    IMCAT_URL "\n"
    "  -t, --token TOKEN      PASETO v4.public token; default $IM_TOKEN\n"
    "  -d, --device ID        device id (the server's default: "
    "\"default\")\n"
    "      --timeout SECONDS  bounds connect, auth and each reply "
    "(default 10)\n"
    "  -c, --count N          listen: exit after N messages; "
    "ping: N pings;\n"
    "                         history: at most N messages\n"
    "  -W, --wait SECONDS     listen: stop after SECONDS (an error if\n"
    "                         --count is not reached by then)\n"
    "      --to USER          send: the recipient\n"
    "  -g, --group GROUP      send: to the group (its members)\n"
    "      --after CURSOR     history: the messages after this one\n"
    "      --client-msg-id ID\n"
    "                         send: the dedup id (default random)\n"
    "  -h, --help\n"
    "\n"
    "listen  prints each message as \"CURSOR FROM -> TO: BODY\" and acks\n"
    "        it; BODY is 0x and hex unless it is printable UTF-8\n"
    "send    sends TEXT, or stdin without TEXT; prints the msg_id once\n"
    "        the server has stored the message\n"
    "presence  prints \"presence USER online|offline[, last seen MS]\"\n"
    "        for each USER, as the server knows it now\n"
    "history prints the inbox (\"CURSOR FROM -> TO: BODY\") page by\n"
    "        page with Sync, without moving the device's cursor\n"
    "ping    times an application Ping; authenticates only with a token\n"
    "chat    reads stdin: \"@USER text\" sends to USER, plain text to the\n"
    "        last USER, \"/sync [AFTER [LIMIT]]\", \"/ping\", \"/quit\";\n"
    "        prints what arrives; at the end waits for pending replies\n"
    "\n"
    "exit status: 0 done, 1 error, 2 usage\n";

static struct option  imcat_options[] = {
    { "url", required_argument, NULL, 'u' },
    { "token", required_argument, NULL, 't' },
    { "device", required_argument, NULL, 'd' },
    { "timeout", required_argument, NULL, 'T' },
    { "count", required_argument, NULL, 'c' },
    { "wait", required_argument, NULL, 'W' },
    { "to", required_argument, NULL, 'o' },
    { "group", required_argument, NULL, 'g' },
    { "after", required_argument, NULL, 'a' },
    { "client-msg-id", required_argument, NULL, 'i' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


int
main(int argc, char **argv)
{
    int                rc, ch;
    char              *end, *command;
    imcat_t            ic;
    struct sigaction   sa;

    memset(&ic, 0, sizeof(imcat_t));

    ic.url = getenv("IM_URL");
    ic.token = getenv("IM_TOKEN");
    ic.timeout = IMCAT_TIMEOUT;
    ic.wait = -1;
    ic.next_id = 1;

    opterr = 0;

    while ((ch = getopt_long(argc, argv, ":u:t:d:c:W:g:h", imcat_options,
                             NULL))
           != -1)
    {
        switch (ch) {

        case 'u':
            ic.url = optarg;
            break;

        case 't':
            ic.token = optarg;
            break;

        case 'd':
            ic.device = optarg;
            break;

        case 'T':
            if (imcat_seconds(optarg, &ic.timeout) != IMCAT_OK
                || ic.timeout == 0)
            {
                return imcat_usage("bad --timeout \"%s\"", optarg);
            }

            break;

        case 'W':
            if (imcat_seconds(optarg, &ic.wait) != IMCAT_OK) {
                return imcat_usage("bad --wait \"%s\"", optarg);
            }

            break;

        case 'c':
            errno = 0;
            ic.count = strtol(optarg, &end, 10);

            if (errno || *end != '\0' || end == optarg || ic.count <= 0) {
                return imcat_usage("bad --count \"%s\"", optarg);
            }

            break;

        case 'o':
            ic.to = optarg;
            break;

        case 'g':
            ic.group = optarg;
            break;

        case 'a':
            ic.after = optarg;
            break;

        case 'i':
            ic.cmid = optarg;
            break;

        case 'h':
            fputs(imcat_synopsis, stdout);
            fputs(imcat_help, stdout);
            return IMCAT_OK;

        case ':':
            return imcat_usage("option \"%s\" needs a value",
                               argv[optind - 1]);

        default:
            return imcat_usage("unknown option \"%s\"", argv[optind - 1]);
        }
    }

    command = (optind < argc) ? argv[optind++] : "chat";

    if (strcmp(command, "help") == 0) {
        fputs(imcat_synopsis, stdout);
        fputs(imcat_help, stdout);
        return IMCAT_OK;
    }

    if (strcmp(command, "listen") != 0 && strcmp(command, "send") != 0
        && strcmp(command, "ping") != 0 && strcmp(command, "chat") != 0
        && strcmp(command, "presence") != 0
        && strcmp(command, "history") != 0)
    {
        return imcat_usage("unknown command \"%s\"", command);
    }

    if (strcmp(command, "send") != 0 && strcmp(command, "presence") != 0
        && optind < argc)
    {
        return imcat_usage("unexpected argument \"%s\"", argv[optind]);
    }

    if (strcmp(command, "send") == 0
        && (ic.to == NULL) == (ic.group == NULL))
    {
        return imcat_usage("send needs --to USER or --group GROUP", NULL);
    }

    if (strcmp(command, "presence") == 0 && optind == argc) {
        return imcat_usage("presence needs at least one USER", NULL);
    }

    if (strcmp(command, "ping") != 0
        && (ic.token == NULL || ic.token[0] == '\0'))
    {
        return imcat_usage("%s needs a token: --token or $IM_TOKEN",
                           command);
    }

    if (ic.url == NULL) {
        ic.url = IMCAT_URL;
    }

    if (im_client_init() != IM_CLIENT_OK) {
        fprintf(stderr, "imcat: sodium_init() failed\n");
        return IMCAT_ERROR;
    }

    /* no SA_RESTART: a signal must end a wait in poll() */

    memset(&sa, 0, sizeof(struct sigaction));
    sa.sa_handler = imcat_signal;
    sigemptyset(&sa.sa_mask);

    (void) sigaction(SIGINT, &sa, NULL);
    (void) sigaction(SIGTERM, &sa, NULL);

    /*
     * SIGPIPE stays: "imcat listen | head -1" ends as other filters do,
     * before it acks a message nobody read.  Sockets use MSG_NOSIGNAL.
     */

    /* a line at a time, for whoever reads us through a pipe */

    setvbuf(stdout, NULL, _IOLBF, 0);

    if (strcmp(command, "listen") == 0) {
        rc = imcat_listen(&ic);

    } else if (strcmp(command, "send") == 0) {
        rc = imcat_send(&ic, argv + optind, argc - optind);

    } else if (strcmp(command, "ping") == 0) {
        rc = imcat_ping(&ic);

    } else if (strcmp(command, "presence") == 0) {
        rc = imcat_presence(&ic, argv + optind, argc - optind);

    } else if (strcmp(command, "history") == 0) {
        rc = imcat_history(&ic);

    } else {
        rc = imcat_chat(&ic);
    }

    im_client_close(ic.client);
    free(ic.user);

    if (ic.to != NULL && strcmp(command, "chat") == 0) {
        free(ic.to);
    }

    return rc;
}


static int
imcat_listen(imcat_t *ic)
{
    int           left;
    int64_t       deadline;
    Im__Frame    *f;
    im_client_t  *c;

    /* what arrives with AuthOk counts too */

    ic->show = 1;

    if (imcat_connect(ic, 1) != IMCAT_OK) {
        return IMCAT_ERROR;
    }

    c = ic->client;

    deadline = (ic->wait >= 0) ? imcat_msec() + ic->wait : -1;

    while (ic->count == 0 || ic->received < ic->count) {

        if (imcat_stop) {
            return IMCAT_OK;
        }

        if (ic->lost) {
            return IMCAT_ERROR;
        }

        left = -1;

        if (deadline >= 0) {
            left = (int) (deadline - imcat_msec());
            left = (left < 0) ? 0 : left;
        }

        f = im_client_recv_frame(c, left);

        if (f) {
            imcat_push(ic, f);
            im__frame__free_unpacked(f, NULL);
            continue;
        }

        if (c->status == IM_CLIENT_AGAIN) {
            if (imcat_stop) {
                return IMCAT_OK;
            }

            if (ic->count) {
                fprintf(stderr, "imcat: %ld of %ld messages in time\n",
                        ic->received, ic->count);
                return IMCAT_ERROR;
            }

            return IMCAT_OK;
        }

        fprintf(stderr, "imcat: %s\n", c->err);

        if (c->status == IM_CLIENT_CLOSED && ic->count == 0
            && (c->close_code == IM_CLIENT_CLOSE_NORMAL
                || c->close_code == IM_CLIENT_CLOSE_AWAY))
        {
            return IMCAT_OK;
        }

        return IMCAT_ERROR;
    }

    return IMCAT_OK;
}


static int
imcat_send(imcat_t *ic, char **args, int nargs)
{
    int         i, rc;
    size_t      len;
    u_char     *body, *p;
    uint32_t    id;
    Im__Frame  *f;

    if (nargs) {
        len = nargs - 1;

        for (i = 0; i < nargs; i++) {
            len += strlen(args[i]);
        }

        body = malloc(len + 1);
        if (body == NULL) {
            fprintf(stderr, "imcat: out of memory\n");
            return IMCAT_ERROR;
        }

        p = body;

        for (i = 0; i < nargs; i++) {
            if (i) {
                *p++ = ' ';
            }

            p = (u_char *) stpcpy((char *) p, args[i]);
        }

    } else if (imcat_read_body(&body, &len) != IMCAT_OK) {
        return IMCAT_ERROR;
    }

    rc = IMCAT_ERROR;

    if (imcat_connect(ic, 1) != IMCAT_OK) {
        goto done;
    }

    id = imcat_send_message(ic, ic->to, ic->group, body, len, ic->cmid);
    if (id == 0) {
        goto done;
    }

    f = imcat_reply(ic, id, "the SendAck");
    if (f == NULL) {
        goto done;
    }

    if (f->body_case == IM__FRAME__BODY_SEND_ACK) {
        printf("%s\n", f->send_ack->msg_id);
        rc = IMCAT_OK;

    } else if (f->body_case == IM__FRAME__BODY_ERROR) {
        imcat_error(f->error);

    } else {
        fprintf(stderr, "imcat: frame %d in reply to Send\n",
                (int) f->body_case);
    }

    im__frame__free_unpacked(f, NULL);

done:

    free(body);

    return rc;
}


/* one PresenceSub: a Presence per user answers it */

static int
imcat_presence(imcat_t *ic, char **users, int nusers)
{
    int               rc, got;
    uint32_t          id;
    Im__Frame         frame, *f;
    Im__PresenceSub   sub;

    if (imcat_connect(ic, 1) != IMCAT_OK) {
        return IMCAT_ERROR;
    }

    im__frame__init(&frame);
    im__presence_sub__init(&sub);

    sub.n_users = nusers;
    sub.users = users;
    frame.body_case = IM__FRAME__BODY_PRESENCE_SUB;
    frame.presence_sub = &sub;

    id = imcat_request(ic, &frame);
    if (id == 0) {
        return IMCAT_ERROR;
    }

    rc = IMCAT_OK;

    for (got = 0; got < nusers; got++) {
        f = imcat_reply(ic, id, "the Presence");
        if (f == NULL) {
            return IMCAT_ERROR;
        }

        if (f->body_case == IM__FRAME__BODY_ERROR) {
            imcat_error(f->error);
            rc = IMCAT_ERROR;
            got = nusers;

        } else {
            imcat_push(ic, f);
        }

        im__frame__free_unpacked(f, NULL);
    }

    return rc;
}


/* Sync, page after page, until the inbox or --count is done */

static int
imcat_history(imcat_t *ic)
{
    int         rc, round;
    char       *after;
    uint32_t    id;
    Im__Sync    sync;
    Im__Frame   frame, *f;

    ic->show = 1;
    ic->history = 1;

    if (imcat_connect(ic, 1) != IMCAT_OK) {
        return IMCAT_ERROR;
    }

    after = strdup(ic->after ? ic->after : "");
    if (after == NULL) {
        fprintf(stderr, "imcat: out of memory\n");
        return IMCAT_ERROR;
    }

    rc = IMCAT_ERROR;

    for (round = 0; round < IMCAT_HISTORY_ROUNDS; round++) {

        if (imcat_stop || ic->lost
            || (ic->count && ic->received >= ic->count))
        {
            rc = ic->lost ? IMCAT_ERROR : IMCAT_OK;
            break;
        }

        im__frame__init(&frame);
        im__sync__init(&sync);

        sync.after = after;
        sync.limit = ic->count ? (uint32_t) (ic->count - ic->received) : 0;
        frame.body_case = IM__FRAME__BODY_SYNC;
        frame.sync = &sync;

        id = imcat_request(ic, &frame);
        if (id == 0) {
            break;
        }

        f = imcat_reply(ic, id, "the SyncDone");
        if (f == NULL) {
            break;
        }

        if (f->body_case != IM__FRAME__BODY_SYNC_DONE) {
            if (f->body_case == IM__FRAME__BODY_ERROR) {
                imcat_error(f->error);
            }

            im__frame__free_unpacked(f, NULL);
            break;
        }

        if (!f->sync_done->more) {
            im__frame__free_unpacked(f, NULL);
            rc = IMCAT_OK;
            break;
        }

        if (f->sync_done->last[0]) {
            free(after);
            after = strdup(f->sync_done->last);

            if (after == NULL) {
                fprintf(stderr, "imcat: out of memory\n");
                im__frame__free_unpacked(f, NULL);
                return IMCAT_ERROR;
            }

        } else {
            /* the server's send queue is half full: ask again soon */
            (void) poll(NULL, 0, 50);
        }

        im__frame__free_unpacked(f, NULL);
    }

    free(after);

    return rc;
}


static int
imcat_ping(imcat_t *ic)
{
    int         left;
    long        i, count;
    int64_t     start, next;
    uint32_t    id;
    Im__Ping    ping;
    Im__Frame   frame, *f;

    if (imcat_connect(ic, ic->token != NULL && ic->token[0] != '\0')
        != IMCAT_OK)
    {
        return IMCAT_ERROR;
    }

    count = ic->count ? ic->count : 1;
    next = imcat_msec();

    for (i = 1; i <= count; i++) {

        /* between pings the connection is served, as ping(8) sleeps */

        while ((left = (int) (next - imcat_msec())) > 0) {
            f = im_client_recv_frame(ic->client, left);

            if (f) {
                imcat_push(ic, f);
                im__frame__free_unpacked(f, NULL);
                continue;
            }

            if (ic->client->status != IM_CLIENT_AGAIN || imcat_stop) {
                imcat_failed(ic, "the next ping");
                return IMCAT_ERROR;
            }
        }

        im__frame__init(&frame);
        im__ping__init(&ping);

        ping.ts_ms = imcat_wall_msec();
        frame.body_case = IM__FRAME__BODY_PING;
        frame.ping = &ping;

        next = imcat_msec() + IMCAT_PING_GAP;
        start = imcat_usec();

        id = imcat_request(ic, &frame);
        if (id == 0) {
            return IMCAT_ERROR;
        }

        f = imcat_reply(ic, id, "the Pong");
        if (f == NULL) {
            return IMCAT_ERROR;
        }

        if (f->body_case != IM__FRAME__BODY_PONG) {
            if (f->body_case == IM__FRAME__BODY_ERROR) {
                imcat_error(f->error);

            } else {
                fprintf(stderr, "imcat: frame %d in reply to Ping\n",
                        (int) f->body_case);
            }

            im__frame__free_unpacked(f, NULL);
            return IMCAT_ERROR;
        }

        im__frame__free_unpacked(f, NULL);

        printf("pong from %s: seq=%ld time=%.3f ms\n", ic->url, i,
               (imcat_usec() - start) / 1000.0);
    }

    return IMCAT_OK;
}


/*
 * stdin and the socket in one poll(): what is typed goes out at once,
 * what arrives is printed as it comes.  At the end of the input the
 * replies still due are awaited, for --timeout at most.
 */

static int
imcat_chat(imcat_t *ic)
{
    int              n, rc, open;
    char            *buf;
    size_t           used;
    ssize_t          len;
    int64_t          deadline, left;
    struct pollfd    pfd[2];

    /* the peer changes with each "@USER" */

    if (ic->to) {
        ic->to = strdup(ic->to);
        if (ic->to == NULL) {
            fprintf(stderr, "imcat: out of memory\n");
            return IMCAT_ERROR;
        }
    }

    ic->show = 1;

    if (imcat_connect(ic, 1) != IMCAT_OK) {
        return IMCAT_ERROR;
    }

    if (isatty(STDIN_FILENO)) {
        fprintf(stderr, "imcat: signed in as %s; \"@USER text\" sends, "
                "/quit ends\n", ic->user);
    }

    buf = malloc(IMCAT_LINE_MAX);
    if (buf == NULL) {
        fprintf(stderr, "imcat: out of memory\n");
        return IMCAT_ERROR;
    }

    used = 0;
    open = 1;
    deadline = 0;
    rc = IMCAT_OK;

    /* what came with AuthOk sits in the buffer, out of poll()'s sight */

    if (imcat_drain(ic) != IMCAT_OK) {
        rc = IMCAT_ERROR;
        goto done;
    }

    for ( ;; ) {

        if (imcat_stop) {
            break;
        }

        if (ic->lost) {
            rc = IMCAT_ERROR;
            break;
        }

        if (!open && ic->pending == 0) {
            break;
        }

        pfd[0].fd = ic->client->fd;
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        pfd[1].fd = STDIN_FILENO;
        pfd[1].events = POLLIN;
        pfd[1].revents = 0;

        left = -1;

        if (!open) {
            left = deadline - imcat_msec();

            if (left <= 0) {
                fprintf(stderr, "imcat: timed out waiting for %u "
                        "repl%s\n", ic->pending,
                        (ic->pending == 1) ? "y" : "ies");
                rc = IMCAT_ERROR;
                break;
            }
        }

        n = poll(pfd, open ? 2 : 1, (int) left);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            fprintf(stderr, "imcat: poll() failed: %s\n", strerror(errno));
            rc = IMCAT_ERROR;
            break;
        }

        if (pfd[0].revents && imcat_drain(ic) != IMCAT_OK) {
            rc = IMCAT_ERROR;
            break;
        }

        if (!open || pfd[1].revents == 0) {
            continue;
        }

        len = read(STDIN_FILENO, buf + used, IMCAT_LINE_MAX - used);

        if (len == -1) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }

            fprintf(stderr, "imcat: reading stdin: %s\n", strerror(errno));
            rc = IMCAT_ERROR;
            break;
        }

        used += len;

        n = imcat_chat_input(ic, buf, &used, len == 0);

        if (n == IMCAT_ERROR) {
            rc = IMCAT_ERROR;
            break;
        }

        if (n == IMCAT_QUIT || len == 0) {
            open = 0;
            deadline = imcat_msec() + ic->timeout;
        }
    }

done:

    free(buf);

    return rc;
}


/* the complete lines in buf; at eof the rest is a line too */

static int
imcat_chat_input(imcat_t *ic, char *buf, size_t *used, int eof)
{
    int      rc;
    char    *p, *nl, *end;

    p = buf;
    end = buf + *used;

    for ( ;; ) {
        nl = memchr(p, '\n', end - p);

        if (nl == NULL) {
            if (!eof && p == buf && *used == IMCAT_LINE_MAX) {
                fprintf(stderr, "imcat: line longer than %d bytes\n",
                        IMCAT_LINE_MAX - 1);
                return IMCAT_ERROR;
            }

            if (!eof || p == end) {
                break;
            }

            nl = end;
            end[0] = '\0';

            /* buf has room: a full buffer without a newline failed above */

        } else {
            *nl = '\0';
        }

        if (nl > p && nl[-1] == '\r') {
            nl[-1] = '\0';
        }

        rc = imcat_line(ic, p);

        p = (nl < end) ? nl + 1 : end;

        if (rc != IMCAT_OK) {
            return rc;
        }
    }

    *used = end - p;
    memmove(buf, p, *used);

    return IMCAT_OK;
}


static int
imcat_line(imcat_t *ic, char *line)
{
    char       *to, *text, *after, *limit;
    size_t      n;
    uint32_t    id;
    Im__Ping    ping;
    Im__Sync    sync;
    Im__Frame   f;

    while (*line == ' ' || *line == '\t') {
        line++;
    }

    if (*line == '\0') {
        return IMCAT_OK;
    }

    if (strcmp(line, "/quit") == 0) {
        return IMCAT_QUIT;
    }

    if (strcmp(line, "/help") == 0) {
        fprintf(stderr, "\"@USER text\" sends to USER, plain text to the "
                "last USER; /sync [AFTER [LIMIT]], /ping, /quit\n");
        return IMCAT_OK;
    }

    if (strcmp(line, "/ping") == 0) {
        im__frame__init(&f);
        im__ping__init(&ping);

        ping.ts_ms = imcat_wall_msec();
        f.body_case = IM__FRAME__BODY_PING;
        f.ping = &ping;

        id = imcat_request(ic, &f);

        goto sent;
    }

    if (strncmp(line, "/sync", 5) == 0
        && (line[5] == '\0' || line[5] == ' '))
    {
        im__frame__init(&f);
        im__sync__init(&sync);

        after = strtok(line + 5, " \t");
        limit = after ? strtok(NULL, " \t") : NULL;

        sync.after = after ? after : "";
        sync.limit = limit ? (uint32_t) strtoul(limit, NULL, 10) : 0;
        f.body_case = IM__FRAME__BODY_SYNC;
        f.sync = &sync;

        id = imcat_request(ic, &f);

        goto sent;
    }

    if (line[0] == '/') {
        fprintf(stderr, "imcat: unknown command \"%s\", try /help\n", line);
        return IMCAT_OK;
    }

    text = line;

    if (line[0] == '@') {
        to = line + 1;
        n = strcspn(to, " \t");

        text = to + n;

        while (*text == ' ' || *text == '\t') {
            text++;
        }

        to[n] = '\0';

        if (n == 0) {
            fprintf(stderr, "imcat: \"@\" wants a user\n");
            return IMCAT_OK;
        }

        free(ic->to);

        ic->to = strdup(to);
        if (ic->to == NULL) {
            fprintf(stderr, "imcat: out of memory\n");
            return IMCAT_ERROR;
        }

        if (*text == '\0') {
            return IMCAT_OK;
        }
    }

    if (ic->to == NULL) {
        fprintf(stderr, "imcat: to whom?  Start with \"@USER text\"\n");
        return IMCAT_OK;
    }

    id = imcat_send_message(ic, ic->to, NULL, (u_char *) text, strlen(text),
                            NULL);

sent:

    if (id == 0) {
        return IMCAT_ERROR;
    }

    ic->pending++;

    return IMCAT_OK;
}


static int
imcat_connect(imcat_t *ic, int auth)
{
    char        err[256];
    uint32_t    id;
    Im__Auth    a;
    Im__Frame   f, *r;

    ic->client = im_client_connect(ic->url, ic->timeout, err, sizeof(err));

    if (ic->client == NULL) {
        fprintf(stderr, "imcat: %s\n", err);
        return IMCAT_ERROR;
    }

    if (!auth) {
        return IMCAT_OK;
    }

    im__frame__init(&f);
    im__auth__init(&a);

    a.token = ic->token;
    a.device = ic->device ? ic->device : "";
    f.body_case = IM__FRAME__BODY_AUTH;
    f.auth = &a;

    id = imcat_request(ic, &f);
    if (id == 0) {
        return IMCAT_ERROR;
    }

    r = imcat_reply(ic, id, "AuthOk");
    if (r == NULL) {
        return IMCAT_ERROR;
    }

    if (r->body_case == IM__FRAME__BODY_AUTH_OK) {
        ic->user = strdup(r->auth_ok->user);
        im__frame__free_unpacked(r, NULL);

        if (ic->user == NULL) {
            fprintf(stderr, "imcat: out of memory\n");
            return IMCAT_ERROR;
        }

        return IMCAT_OK;
    }

    if (r->body_case == IM__FRAME__BODY_ERROR) {
        imcat_error(r->error);

    } else {
        fprintf(stderr, "imcat: frame %d in reply to Auth\n",
                (int) r->body_case);
    }

    im__frame__free_unpacked(r, NULL);

    return IMCAT_ERROR;
}


/* f goes out with the next request id, which is returned; 0 on error */

static uint32_t
imcat_request(imcat_t *ic, Im__Frame *f)
{
    f->id = ic->next_id++;

    if (ic->next_id == 0) {
        ic->next_id = 1;
    }

    if (im_client_send_frame(ic->client, f) != IM_CLIENT_OK) {
        fprintf(stderr, "imcat: %s\n", ic->client->err);
        return 0;
    }

    return f->id;
}


static uint32_t
imcat_send_message(imcat_t *ic, char *to, char *group, u_char *body,
    size_t len, char *cmid)
{
    Im__Send   s;
    Im__Frame  f;
    u_char     raw[16];
    char       id[2 * sizeof(raw) + 1];

    if (cmid == NULL) {
        randombytes_buf(raw, sizeof(raw));
        cmid = sodium_bin2hex(id, sizeof(id), raw, sizeof(raw));
    }

    im__frame__init(&f);
    im__send__init(&s);

    if (group) {
        s.group = group;

    } else {
        s.to = to;
    }

    s.body.data = body;
    s.body.len = len;
    s.client_msg_id = cmid;
    s.type = "text";
    f.body_case = IM__FRAME__BODY_SEND;
    f.send = &s;

    return imcat_request(ic, &f);
}


/*
 * The reply to request id, within --timeout; what comes before it is
 * a push, printed if we print.  A Message is never a reply: a Sync's
 * messages carry its id, its SyncDone ends it.
 */

static Im__Frame *
imcat_reply(imcat_t *ic, uint32_t id, const char *what)
{
    int         left;
    int64_t     deadline;
    Im__Frame  *f;

    deadline = imcat_msec() + ic->timeout;

    for ( ;; ) {
        left = (int) (deadline - imcat_msec());

        f = im_client_recv_frame(ic->client, (left > 0) ? left : 0);

        if (f == NULL) {
            imcat_failed(ic, what);
            return NULL;
        }

        if (f->id == id && f->body_case != IM__FRAME__BODY_MESSAGE) {
            return f;
        }

        imcat_push(ic, f);
        im__frame__free_unpacked(f, NULL);
    }
}


/* all the frames that have arrived */

static int
imcat_drain(imcat_t *ic)
{
    Im__Frame  *f;

    for ( ;; ) {
        f = im_client_recv_frame(ic->client, 0);

        if (f == NULL) {
            break;
        }

        imcat_push(ic, f);
        im__frame__free_unpacked(f, NULL);
    }

    if (ic->client->status == IM_CLIENT_AGAIN) {
        return IMCAT_OK;
    }

    fprintf(stderr, "imcat: %s\n", ic->client->err);

    return IMCAT_ERROR;
}


static void
imcat_push(imcat_t *ic, Im__Frame *f)
{
    int  reply;

    reply = (f->id != 0 && f->body_case != IM__FRAME__BODY_MESSAGE);

    if (reply && ic->pending) {
        ic->pending--;
    }

    switch (f->body_case) {

    case IM__FRAME__BODY_MESSAGE:

        /* history: the replay after AuthOk (id 0) is not what was asked */

        if (ic->show && !ic->lost && (!ic->history || f->id != 0)) {
            imcat_message(ic, f->message);
        }

        break;

    case IM__FRAME__BODY_SEND_ACK:
        printf("sent %s\n", f->send_ack->msg_id);
        break;

    case IM__FRAME__BODY_SYNC_DONE:
        printf("sync done%s%s%s\n",
               f->sync_done->last[0] ? ", last " : "",
               f->sync_done->last, f->sync_done->more ? ", more" : "");
        break;

    case IM__FRAME__BODY_PRESENCE:
        printf("presence %s %s", f->presence->user,
               f->presence->online ? "online" : "offline");

        if (f->presence->last_seen_ms) {
            printf(", last seen %llu",
                   (unsigned long long) f->presence->last_seen_ms);
        }

        printf("\n");
        break;

    case IM__FRAME__BODY_TYPING:
        printf("typing %s -> %s%s\n", f->typing->from,
               f->typing->to[0] ? "" : "#",
               f->typing->to[0] ? f->typing->to : f->typing->group);
        break;

    case IM__FRAME__BODY_PONG:
        printf("pong %lld ms\n",
               (long long) (imcat_wall_msec() - f->pong->ts_ms));
        break;

    case IM__FRAME__BODY_OK:
        printf("ok\n");
        break;

    case IM__FRAME__BODY_ERROR:
        imcat_error(f->error);
        break;

    case IM__FRAME__BODY_GOAWAY:
        fprintf(stderr, "imcat: the server is going away, reconnect after "
                "%u ms\n", f->goaway->reconnect_after_ms);
        break;

    default:

        /* a server ping is for the module, and AuthOk came already */

        break;
    }
}


static void
imcat_message(imcat_t *ic, Im__Message *m)
{
    char      *cursor;
    size_t     i;
    Im__Ack    ack;
    Im__Frame  f;

    /* its place in the inbox, which --after and Ack take */

    cursor = m->cursor[0] ? m->cursor : m->msg_id;

    printf("%s %s -> %s%s: ", cursor, m->from,
           m->to[0] ? "" : "#", m->to[0] ? m->to : m->group);

    if (imcat_printable(m->body.data, m->body.len)) {
        fwrite(m->body.data, 1, m->body.len, stdout);

    } else {
        fputs("0x", stdout);

        for (i = 0; i < m->body.len; i++) {
            printf("%02x", m->body.data[i]);
        }
    }

    putchar('\n');

    if (fflush(stdout) == EOF || ferror(stdout)) {
        if (!ic->lost) {
            fprintf(stderr, "imcat: writing stdout: %s\n", strerror(errno));
        }

        ic->lost = 1;
        return;
    }

    ic->received++;

    if (ic->history) {
        return;
    }

    /* shown, so the device has it: the cursor moves on */

    im__frame__init(&f);
    im__ack__init(&ack);

    ack.up_to = cursor;
    f.body_case = IM__FRAME__BODY_ACK;
    f.ack = &ack;

    if (im_client_send_frame(ic->client, &f) != IM_CLIENT_OK) {
        fprintf(stderr, "imcat: %s\n", ic->client->err);
    }
}


static void
imcat_error(Im__Error *e)
{
    fprintf(stderr, "error %s: %s\n", im_client_error_name(e->code),
            e->reason);
}


static void
imcat_failed(imcat_t *ic, const char *what)
{
    if (ic->client->status != IM_CLIENT_AGAIN) {
        fprintf(stderr, "imcat: %s\n", ic->client->err);

    } else if (imcat_stop) {
        fprintf(stderr, "imcat: interrupted\n");

    } else {
        fprintf(stderr, "imcat: timed out waiting for %s\n", what);
    }
}


/* valid UTF-8 without control characters: it fits on one line */

static int
imcat_printable(u_char *p, size_t len)
{
    size_t    i, k, n;
    uint32_t  u;

    for (i = 0; i < len; i += n + 1) {

        if (p[i] < 0x80) {
            if (p[i] < 0x20 || p[i] == 0x7f) {
                return 0;
            }

            n = 0;
            continue;
        }

        if (p[i] >= 0xc2 && p[i] <= 0xdf) {
            n = 1;
            u = p[i] & 0x1f;

        } else if (p[i] >= 0xe0 && p[i] <= 0xef) {
            n = 2;
            u = p[i] & 0x0f;

        } else if (p[i] >= 0xf0 && p[i] <= 0xf4) {
            n = 3;
            u = p[i] & 0x07;

        } else {
            return 0;
        }

        if (len - i - 1 < n) {
            return 0;
        }

        for (k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            u = (u << 6) | (p[i + k] & 0x3f);
        }

        if ((n == 2 && u < 0x800)
            || (n == 3 && (u < 0x10000 || u > 0x10ffff))
            || (u >= 0xd800 && u <= 0xdfff)
            || (u >= 0x80 && u <= 0x9f)
            || u == 0x2028 || u == 0x2029)
        {
            return 0;
        }
    }

    return 1;
}


static int
imcat_read_body(u_char **body, size_t *len)
{
    u_char   *buf;
    size_t    n;
    ssize_t   r;

    buf = malloc(IMCAT_BODY_MAX + 1);
    if (buf == NULL) {
        fprintf(stderr, "imcat: out of memory\n");
        return IMCAT_ERROR;
    }

    n = 0;

    for ( ;; ) {
        r = read(STDIN_FILENO, buf + n, IMCAT_BODY_MAX + 1 - n);

        if (r == 0) {
            break;
        }

        if (r == -1) {
            if (errno == EINTR && !imcat_stop) {
                continue;
            }

            fprintf(stderr, "imcat: reading stdin: %s\n", strerror(errno));
            free(buf);
            return IMCAT_ERROR;
        }

        n += r;

        if (n > IMCAT_BODY_MAX) {
            fprintf(stderr, "imcat: the message is larger than %d bytes\n",
                    IMCAT_BODY_MAX);
            free(buf);
            return IMCAT_ERROR;
        }
    }

    *body = buf;
    *len = n;

    return IMCAT_OK;
}


/* "10", "0.5": seconds, to ms */

static int
imcat_seconds(char *text, int *ms)
{
    char    *end;
    double   s;

    errno = 0;
    s = strtod(text, &end);

    if (errno || end == text || *end != '\0' || !isfinite(s) || s < 0
        || s > 86400 * 365)
    {
        return IMCAT_ERROR;
    }

    *ms = (int) (s * 1000 + 0.5);

    return IMCAT_OK;
}


static int
imcat_usage(char *fmt, char *arg)
{
    if (fmt) {
        fputs("imcat: ", stderr);
        fprintf(stderr, fmt, arg);
        fputs("\n", stderr);
    }

    fputs(imcat_synopsis, stderr);
    fputs("try \"imcat --help\"\n", stderr);

    return IMCAT_USAGE;
}


static void
imcat_signal(int signo)
{
    imcat_stop = 1;
}


static int64_t
imcat_msec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


static int64_t
imcat_usec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static uint64_t
imcat_wall_msec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_REALTIME, &ts);

    return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
