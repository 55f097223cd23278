
/*
 * Copyright (C) ngx_im authors
 */


/*
 * im-bench: an epoll load generator for ngx_im, and for the peers it is
 * compared with (nchan over WebSocket, mosquitto over MQTT 3.1.1).
 *
 * The parent forks --procs children; each holds a slice of the sessions
 * on non-blocking sockets bound to loopback source addresses 127.0.0.2
 * and up, and runs the phases the parent orders through shared memory:
 *
 *   login    connect, upgrade, Auth (im) / subscribe (nchan) /
 *            CONNECT+SUBSCRIBE (mqtt), with a bounded window in flight
 *   hold     everyone idle; the parent reads the servers' memory
 *   chat     pairs (2k, 2k+1) send each other messages at an offered
 *            rate; the body carries the sender's CLOCK_MONOTONIC time
 *   lanying  users arrive at a paced rate, log in, and send to their
 *            partner every --interval seconds once both are in
 *
 * The parent reads the servers' CPU time (utime+stime, /proc/PID/stat)
 * and memory (VmRSS and Pss) around the phases and writes JSON.  Every
 * loop is bounded in count and in time; the children die with the
 * parent; everything stops by itself.
 */


#define _GNU_SOURCE

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <jansson.h>
#include <sodium.h>

#include "ngx_stream_im.h"
#include "im_client.h"


#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT  24
#endif


#define BENCH_MAX_PROCS       64
#define BENCH_FD_MAX          19000      /* sessions per process: < 20000 */
#define BENCH_RBUF            (256 * 1024)
#define BENCH_HS_SIZE         2048       /* handshake: key + response */
#define BENCH_OUT_MAX         (8 * 1024 * 1024)
#define BENCH_BODY_MIN        25
#define BENCH_BODY_MAX        4096
#define BENCH_EVENTS          1024
#define BENCH_SENDS_PER_TICK  4096
#define BENCH_CONNECTS_PER_TICK 512

#define PROTO_IM              0
#define PROTO_NCHAN           1
#define PROTO_MQTT            2

/* session states */
#define S_NONE                0
#define S_CONNECTING          1
#define S_HANDSHAKE           2
#define S_AUTH                3
#define S_CONNACK             4
#define S_SUBACK              5
#define S_OPEN                6
#define S_CLOSED              7

/* orders from the parent */
#define CMD_NONE              0
#define CMD_LOGIN             1
#define CMD_IDLE              2
#define CMD_CHAT              3
#define CMD_LANYING           4
#define CMD_STOP              5

#define ACK_NONE              0
#define ACK_BATCH             1
#define ACK_EACH              2

#define NS                    1000000000LL


/* a log-linear histogram of nanoseconds: 64 sub-buckets per power of 2 */

#define HIST_SUB_BITS         6
#define HIST_SUB              (1 << HIST_SUB_BITS)
#define HIST_BUCKETS          ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

typedef struct {
    uint64_t      count;
    uint64_t      sum;
    uint64_t      max;
    uint32_t      b[HIST_BUCKETS];
} hist_t;


typedef struct {
    uint64_t      login_ok;
    uint64_t      login_failed;
    uint64_t      login_timeout;
    uint64_t      closed;            /* open sessions the server closed */
    uint64_t      sent;
    uint64_t      acked;             /* SendAck / PUBACK */
    uint64_t      delivered;
    uint64_t      stale;             /* bodies of another phase */
    uint64_t      send_full;         /* sends dropped: output backlog */
    uint64_t      errors[16];        /* im.Error codes */
    uint64_t      close_codes[16];   /* WebSocket closes 1000..1015 */
    int64_t       login_first_ns;
    int64_t       login_last_ns;
    hist_t        login;             /* connect -> logged in */
    hist_t        upgrade;           /* connect -> 101 / CONNACK */
    hist_t        auth;              /* Auth -> AuthOk */
    hist_t        e2e;               /* sender clock -> receiver clock */
    hist_t        ack;               /* Send -> SendAck */
} stats_t;


typedef struct {
    int           ack;               /* the last gen done */
    int           ready;
    int           failed;
    pid_t         pid;
    uint32_t      sessions;
    char          err[200];
    stats_t       st;
} slot_t;


typedef struct {
    int           cmd;
    int           gen;

    /* parameters of the current order, per child */
    double        rate;              /* chat: messages/s */
    double        arrival;           /* lanying: logins/s */
    double        interval;          /* lanying: s between a user's sends */
    int64_t       end_ns;            /* sending stops */
    uint32_t      tag;               /* bodies of this phase */
    uint32_t      window;            /* logins in flight */

    uint64_t      sent;              /* all children, atomic */
    uint64_t      delivered;

    slot_t        child[BENCH_MAX_PROCS];
} shm_t;


typedef struct {
    int                  fd;
    uint8_t              state;
    uint8_t              pollout;
    uint8_t              eligible;
    uint16_t             mqtt_pid;
    uint16_t             hs_len;
    uint32_t             out_len;
    uint32_t             out_size;
    uint32_t             in_len;
    uint32_t             in_size;
    int64_t              t0;         /* connect started */
    int64_t              t_auth;     /* Auth sent */
    u_char              *hs;         /* during the handshake only */
    char                *token;      /* until Auth is sent */
    u_char              *out;        /* unsent output */
    u_char              *in;         /* a partial MQTT packet */
    im_client_parser_t  *ws;
} sess_t;


/* options */

typedef struct {
    int           proto;
    char         *host;
    int           port;
    uint32_t      sessions;
    int           procs;
    int           src;
    char         *key;
    char         *phases;
    uint32_t      window;
    double        login_timeout;
    double        hold;
    double        rate;
    double        chat;
    double        drain;
    size_t        body;
    int           cmid;
    int           ack;
    double        arrival;
    double        interval;
    double        lanying_chat;
    char         *prefix;
    pid_t         nginx_pid;
    pid_t         redis_pid;
    pid_t         broker_pid;
    int           redis_port;
    char         *json;
    double        max_time;
    int           quiet;
} options_t;


/* a child's world */

typedef struct {
    int           index;
    uint32_t      lo;                /* global index of sessions[0] */
    uint32_t      n;
    sess_t       *s;
    int           ep;

    int           gen;
    int           cmd;
    int           logging_in;
    int           lanying;
    uint32_t      next;              /* next session to connect */
    uint32_t      inflight;
    uint32_t      window;
    uint32_t      first_pending;
    int64_t       last_scan;
    int64_t       last_connect;
    int64_t       login_deadline_ns;
    double        connect_budget;
    double        arrival;

    int           sending;
    double        rate;
    double        interval;
    double        budget;
    int64_t       last_tick;
    int64_t       end_ns;
    uint32_t      tag;
    uint32_t     *eligible;
    uint32_t      neligible;
    uint32_t      rr;

    uint64_t      seq;

    stats_t      *st;
} child_t;


static options_t             opt;
static shm_t                *shm;
static struct sockaddr_in    dst;
static char                  host_header[64];
static u_char               *rbuf;
static uint64_t              rng_state;
static u_char                secret[crypto_sign_SECRETKEYBYTES];

/* the Ack of the read batch being processed */
static char                  batch_id[64];
static size_t                batch_id_len;


static void usage(void);
static int parse_options(int argc, char **argv);
static int64_t now_ns(void);
static uint64_t rng(void);
static void hist_add(hist_t *h, uint64_t v);
static void hist_merge(hist_t *d, const hist_t *s);
static double hist_pct(const hist_t *h, double q);
static double hist_avg(const hist_t *h);

static int child_main(int index, uint32_t lo, uint32_t n);
static void child_order(child_t *c, int64_t now);
static void child_tick(child_t *c, int64_t now);
static void child_ack(child_t *c);
static char *mint(const char *user, time_t now);
static void user_name(char *buf, size_t size, uint32_t idx);

static void sess_connect(child_t *c, uint32_t i, int64_t now);
static void sess_event(child_t *c, uint32_t i, uint32_t events);
static void sess_connected(child_t *c, sess_t *s, uint32_t i);
static void sess_read(child_t *c, sess_t *s, uint32_t i);
static int sess_write(child_t *c, sess_t *s, uint32_t i, const u_char *data,
    size_t len);
static void sess_flush(child_t *c, sess_t *s, uint32_t i);
static void sess_close(child_t *c, sess_t *s, uint32_t i, int timeout);
static void sess_opened(child_t *c, sess_t *s, uint32_t i, int64_t now);
static void sess_eligible(child_t *c, uint32_t i);

static void ws_handshake_data(child_t *c, sess_t *s, uint32_t i, u_char *data,
    size_t len);
static void ws_feed(child_t *c, sess_t *s, uint32_t i, u_char *data,
    size_t len);
static int ws_send(child_t *c, sess_t *s, uint32_t i, int opcode,
    const u_char *payload, size_t len);
static int im_send_frame(child_t *c, sess_t *s, uint32_t i,
    const Im__Frame *f);
static void im_frame(child_t *c, sess_t *s, uint32_t i, u_char *data,
    size_t len);

static void mqtt_feed(child_t *c, sess_t *s, uint32_t i, u_char *data,
    size_t len);
static int mqtt_packet(child_t *c, sess_t *s, uint32_t i, u_char type,
    u_char *body, size_t len);
static void mqtt_connect(child_t *c, sess_t *s, uint32_t i);

static void chat_send(child_t *c, uint32_t i, int64_t now);
static size_t body_make(u_char *b, uint32_t tag, int64_t ts);
static int body_parse(const u_char *b, size_t len, uint32_t *tag,
    int64_t *ts);
static void delivered(child_t *c, const u_char *body, size_t len);


/* ---------------------------------------------------------------- */


static void
usage(void)
{
    fputs(
"usage: im-bench --port PORT [options]\n"
"\n"
"  --proto im|nchan|mqtt   protocol of the server (im)\n"
"  --host ADDR             server address (127.0.0.1; loopback only)\n"
"  --sessions N            sessions (20000)\n"
"  --procs N               client processes (max(2, N/15000))\n"
"  --src N                 source addresses 127.0.0.2.. (N/4000 + 1)\n"
"  --key FILE              Ed25519 secret key (hex) to mint tokens (im)\n"
"  --prefix P              user ids are P<index> (u)\n"
"  --phases LIST           login,hold,chat or lanying (login,hold,chat);\n"
"                          chat:R is one more chat at R messages/s\n"
"  --window N              logins in flight, all processes (512)\n"
"  --login-timeout S       per login (30)\n"
"  --hold S                idle seconds before memory is read (10)\n"
"  --rate R                chat messages/s offered, all processes (10000)\n"
"  --chat S                chat seconds (20)\n"
"  --drain S               wait for messages in flight (5)\n"
"  --body N                message body bytes (64)\n"
"  --no-cmid               im: no client_msg_id (no dedup key)\n"
"  --ack none|batch|each   im: Ack per read batch (batch)\n"
"  --arrival R             lanying: logins/s (1000)\n"
"  --interval S            lanying: seconds between a user's sends (2)\n"
"  --lanying-chat S        lanying: chat seconds after the arrivals (10)\n"
"  --nginx-pid PID         nginx master: its workers are measured\n"
"  --redis-pid PID         redis-server to measure\n"
"  --broker-pid PID        another server process to measure (mosquitto)\n"
"  --redis-port PORT       read INFO memory of this Redis\n"
"  --json FILE             write the results there\n"
"  --max-time S            stop whatever happens after S seconds (900)\n"
"  --quiet                 no progress lines\n",
        stderr);
}


static int
parse_options(int argc, char **argv)
{
    int    i;
    char  *a, *v;

    opt.proto = PROTO_IM;
    opt.host = "127.0.0.1";
    opt.sessions = 20000;
    opt.phases = "login,hold,chat";
    opt.window = 512;
    opt.login_timeout = 30;
    opt.hold = 10;
    opt.rate = 10000;
    opt.chat = 20;
    opt.drain = 5;
    opt.body = 64;
    opt.cmid = 1;
    opt.ack = ACK_BATCH;
    opt.arrival = 1000;
    opt.interval = 2;
    opt.lanying_chat = 10;
    opt.prefix = "u";
    opt.max_time = 900;

    for (i = 1; i < argc; i++) {
        a = argv[i];

        if (strcmp(a, "--no-cmid") == 0) {
            opt.cmid = 0;
            continue;
        }

        if (strcmp(a, "--quiet") == 0) {
            opt.quiet = 1;
            continue;
        }

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            exit(0);
        }

        if (i + 1 >= argc) {
            fprintf(stderr, "im-bench: %s needs a value\n", a);
            return -1;
        }

        v = argv[++i];

        if (strcmp(a, "--proto") == 0) {
            if (strcmp(v, "im") == 0) {
                opt.proto = PROTO_IM;
            } else if (strcmp(v, "nchan") == 0) {
                opt.proto = PROTO_NCHAN;
            } else if (strcmp(v, "mqtt") == 0) {
                opt.proto = PROTO_MQTT;
            } else {
                fprintf(stderr, "im-bench: unknown --proto %s\n", v);
                return -1;
            }

        } else if (strcmp(a, "--host") == 0) {
            opt.host = v;
        } else if (strcmp(a, "--port") == 0) {
            opt.port = atoi(v);
        } else if (strcmp(a, "--sessions") == 0) {
            opt.sessions = (uint32_t) strtoul(v, NULL, 10);
        } else if (strcmp(a, "--procs") == 0) {
            opt.procs = atoi(v);
        } else if (strcmp(a, "--src") == 0) {
            opt.src = atoi(v);
        } else if (strcmp(a, "--key") == 0) {
            opt.key = v;
        } else if (strcmp(a, "--prefix") == 0) {
            opt.prefix = v;
        } else if (strcmp(a, "--phases") == 0) {
            opt.phases = v;
        } else if (strcmp(a, "--window") == 0) {
            opt.window = (uint32_t) strtoul(v, NULL, 10);
        } else if (strcmp(a, "--login-timeout") == 0) {
            opt.login_timeout = atof(v);
        } else if (strcmp(a, "--hold") == 0) {
            opt.hold = atof(v);
        } else if (strcmp(a, "--rate") == 0) {
            opt.rate = atof(v);
        } else if (strcmp(a, "--chat") == 0) {
            opt.chat = atof(v);
        } else if (strcmp(a, "--drain") == 0) {
            opt.drain = atof(v);
        } else if (strcmp(a, "--body") == 0) {
            opt.body = (size_t) strtoul(v, NULL, 10);
        } else if (strcmp(a, "--ack") == 0) {
            if (strcmp(v, "none") == 0) {
                opt.ack = ACK_NONE;
            } else if (strcmp(v, "batch") == 0) {
                opt.ack = ACK_BATCH;
            } else if (strcmp(v, "each") == 0) {
                opt.ack = ACK_EACH;
            } else {
                fprintf(stderr, "im-bench: unknown --ack %s\n", v);
                return -1;
            }

        } else if (strcmp(a, "--arrival") == 0) {
            opt.arrival = atof(v);
        } else if (strcmp(a, "--interval") == 0) {
            opt.interval = atof(v);
        } else if (strcmp(a, "--lanying-chat") == 0) {
            opt.lanying_chat = atof(v);
        } else if (strcmp(a, "--nginx-pid") == 0) {
            opt.nginx_pid = atoi(v);
        } else if (strcmp(a, "--redis-pid") == 0) {
            opt.redis_pid = atoi(v);
        } else if (strcmp(a, "--broker-pid") == 0) {
            opt.broker_pid = atoi(v);
        } else if (strcmp(a, "--redis-port") == 0) {
            opt.redis_port = atoi(v);
        } else if (strcmp(a, "--json") == 0) {
            opt.json = v;
        } else if (strcmp(a, "--max-time") == 0) {
            opt.max_time = atof(v);
        } else {
            fprintf(stderr, "im-bench: unknown option %s\n", a);
            return -1;
        }
    }

    if (opt.port <= 0 || opt.port > 65535) {
        fprintf(stderr, "im-bench: --port is required\n");
        return -1;
    }

    if (opt.sessions < 2 || opt.sessions > 2000000) {
        fprintf(stderr, "im-bench: --sessions must be 2..2000000\n");
        return -1;
    }

    if (opt.proto == PROTO_IM && opt.key == NULL) {
        fprintf(stderr, "im-bench: --key is required for --proto im\n");
        return -1;
    }

    if (opt.body < BENCH_BODY_MIN || opt.body > BENCH_BODY_MAX) {
        fprintf(stderr, "im-bench: --body must be %d..%d\n",
                BENCH_BODY_MIN, BENCH_BODY_MAX);
        return -1;
    }

    if (opt.window == 0 || opt.rate < 0 || opt.chat < 0 || opt.hold < 0
        || opt.arrival <= 0 || opt.interval <= 0 || opt.login_timeout <= 0
        || opt.max_time <= 0 || opt.drain < 0)
    {
        fprintf(stderr, "im-bench: bad numeric option\n");
        return -1;
    }

    if (strlen(opt.prefix) > 40) {
        fprintf(stderr, "im-bench: --prefix too long\n");
        return -1;
    }

    if (opt.procs == 0) {
        opt.procs = (int) ((opt.sessions + 14999) / 15000);

        if (opt.procs < 2) {
            opt.procs = 2;
        }
    }

    if (opt.procs < 1 || opt.procs > BENCH_MAX_PROCS) {
        fprintf(stderr, "im-bench: --procs must be 1..%d\n",
                BENCH_MAX_PROCS);
        return -1;
    }

    if ((opt.sessions + opt.procs - 1) / opt.procs > BENCH_FD_MAX) {
        fprintf(stderr, "im-bench: over %d sessions per process: "
                "raise --procs\n", BENCH_FD_MAX);
        return -1;
    }

    /*
     * connect() looks for a free port of its source address by probing
     * the range (28,000 ports here): the fuller, the longer.  A few
     * thousand per address keeps that cheap.
     */

    if (opt.src == 0) {
        opt.src = (int) ((opt.sessions + 3999) / 4000) + 1;
    }

    if (opt.src < 1 || opt.src > 250) {
        fprintf(stderr, "im-bench: --src must be 1..250\n");
        return -1;
    }

    return 0;
}


static int64_t
now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (int64_t) ts.tv_sec * NS + ts.tv_nsec;
}


/*
 * xorshift64*: WebSocket mask keys and keys of the upgrade.  RFC 6455
 * wants masks a proxy cannot predict; a load generator on loopback
 * needs no more, and getrandom() per frame would cost a syscall.
 */

static uint64_t
rng(void)
{
    uint64_t  x;

    x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;

    return x * 0x2545f4914f6cdd1dULL;
}


static void
hist_add(hist_t *h, uint64_t v)
{
    int       e;
    unsigned  b;

    if (v < HIST_SUB) {
        b = (unsigned) v;

    } else {
        e = 63 - __builtin_clzll(v);
        b = (unsigned) ((e - HIST_SUB_BITS + 1) * HIST_SUB
                        + ((v >> (e - HIST_SUB_BITS)) - HIST_SUB));
    }

    h->b[b]++;
    h->count++;
    h->sum += v;

    if (v > h->max) {
        h->max = v;
    }
}


static void
hist_merge(hist_t *d, const hist_t *s)
{
    int  i;

    for (i = 0; i < HIST_BUCKETS; i++) {
        d->b[i] += s->b[i];
    }

    d->count += s->count;
    d->sum += s->sum;

    if (s->max > d->max) {
        d->max = s->max;
    }
}


/* the value of quantile q, in ms: middle of its bucket (error < 1%) */

static double
hist_pct(const hist_t *h, double q)
{
    int       i;
    unsigned  e;
    uint64_t  rank, seen, low, width;
    double    v;

    if (h->count == 0) {
        return 0;
    }

    rank = (uint64_t) (q * (double) h->count + 0.999999);

    if (rank < 1) {
        rank = 1;
    }

    if (rank >= h->count) {
        return (double) h->max / 1e6;
    }

    seen = 0;

    for (i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];

        if (seen >= rank) {
            break;
        }
    }

    if (i < HIST_SUB) {
        low = (uint64_t) i;
        width = 1;

    } else {
        e = (unsigned) i / HIST_SUB + HIST_SUB_BITS - 1;
        width = 1ULL << (e - HIST_SUB_BITS);
        low = (uint64_t) (i % HIST_SUB + HIST_SUB) << (e - HIST_SUB_BITS);
    }

    v = (double) low + (double) width / 2;

    if (v > (double) h->max) {
        v = (double) h->max;
    }

    return v / 1e6;
}


static double
hist_avg(const hist_t *h)
{
    return h->count ? (double) h->sum / (double) h->count / 1e6 : 0;
}


/* ---------------------------------------------------------------- */
/* tokens: PASETO v4.public, as tools/im_token.c mints them */


static int
read_secret(const char *path)
{
    int      fd;
    char     hex[2 * crypto_sign_SECRETKEYBYTES + 16];
    size_t   bin;
    ssize_t  n;

    fd = open(path, O_RDONLY|O_CLOEXEC);
    if (fd == -1) {
        fprintf(stderr, "im-bench: %s: %s\n", path, strerror(errno));
        return -1;
    }

    n = read(fd, hex, sizeof(hex) - 1);
    close(fd);

    if (n < 2 * crypto_sign_SECRETKEYBYTES) {
        fprintf(stderr, "im-bench: %s: not a hex Ed25519 secret key\n",
                path);
        return -1;
    }

    hex[n] = '\0';

    if (sodium_hex2bin(secret, sizeof(secret), hex, n, " \r\n", &bin, NULL)
        != 0 || bin != sizeof(secret))
    {
        fprintf(stderr, "im-bench: %s: not a hex Ed25519 secret key\n",
                path);
        return -1;
    }

    return 0;
}


static void
rfc3339(time_t t, char *buf, size_t size)
{
    struct tm  tm;

    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}


static char *
mint(const char *user, time_t now)
{
    char       *m, *token, iat[32], exp[32];
    json_t     *claims;
    ngx_str_t   c, t;
    u_char      buf[8192 + 1];

    rfc3339(now, iat, sizeof(iat));
    rfc3339(now + 3600 * 6, exp, sizeof(exp));

    claims = json_pack("{s:s, s:s, s:s}", "sub", user, "iat", iat,
                       "exp", exp);
    if (claims == NULL) {
        return NULL;
    }

    m = json_dumps(claims, JSON_COMPACT);
    json_decref(claims);

    if (m == NULL) {
        return NULL;
    }

    c.data = (u_char *) m;
    c.len = strlen(m);

    token = NULL;

    if (ngx_stream_im_token_sign(&c, NULL, secret, buf, &t) == NGX_OK) {
        token = strndup((char *) t.data, t.len);
    }

    free(m);

    return token;
}


static void
user_name(char *buf, size_t size, uint32_t idx)
{
    snprintf(buf, size, "%s%" PRIu32, opt.prefix, idx);
}


/* ---------------------------------------------------------------- */
/* the child */


static int
child_main(int index, uint32_t lo, uint32_t n)
{
    int                  i, nev;
    char                 user[64];
    time_t               t;
    int64_t              now, hard;
    uint32_t             k;
    child_t              c;
    slot_t              *slot;
    struct epoll_event  *evs;

    slot = &shm->child[index];

    prctl(PR_SET_PDEATHSIG, SIGKILL);

    if (getppid() == 1) {
        _exit(1);
    }

    signal(SIGPIPE, SIG_IGN);

    randombytes_buf(&rng_state, sizeof(rng_state));
    rng_state |= 1;

    memset(&c, 0, sizeof(child_t));

    c.index = index;
    c.lo = lo;
    c.n = n;
    c.st = &slot->st;
    c.gen = 0;

    c.s = calloc(n ? n : 1, sizeof(sess_t));
    c.eligible = calloc(n ? n : 1, sizeof(uint32_t));
    rbuf = malloc(BENCH_RBUF);
    evs = calloc(BENCH_EVENTS, sizeof(struct epoll_event));

    if (c.s == NULL || c.eligible == NULL || rbuf == NULL || evs == NULL) {
        snprintf(slot->err, sizeof(slot->err), "out of memory");
        slot->failed = 1;
        _exit(1);
    }

    for (k = 0; k < n; k++) {
        c.s[k].fd = -1;
    }

    c.ep = epoll_create1(EPOLL_CLOEXEC);
    if (c.ep == -1) {
        snprintf(slot->err, sizeof(slot->err), "epoll_create1(): %s",
                 strerror(errno));
        slot->failed = 1;
        _exit(1);
    }

    /* tokens before the clock starts: signing is the client's cost */

    if (opt.proto == PROTO_IM) {
        t = time(NULL);

        for (k = 0; k < n; k++) {
            user_name(user, sizeof(user), lo + k);

            c.s[k].token = mint(user, t);

            if (c.s[k].token == NULL) {
                snprintf(slot->err, sizeof(slot->err), "cannot mint");
                slot->failed = 1;
                _exit(1);
            }
        }
    }

    hard = now_ns() + (int64_t) (opt.max_time * NS);

    slot->sessions = n;
    __atomic_store_n(&slot->ready, 1, __ATOMIC_RELEASE);

    for ( ;; ) {
        nev = epoll_wait(c.ep, evs, BENCH_EVENTS,
                         (c.sending || c.logging_in) ? 1 : 20);

        if (nev == -1 && errno != EINTR) {
            snprintf(slot->err, sizeof(slot->err), "epoll_wait(): %s",
                     strerror(errno));
            slot->failed = 1;
            _exit(1);
        }

        for (i = 0; i < nev; i++) {
            sess_event(&c, evs[i].data.u32, evs[i].events);
        }

        now = now_ns();

        if (__atomic_load_n(&shm->gen, __ATOMIC_ACQUIRE) != c.gen) {
            child_order(&c, now);
        }

        child_tick(&c, now);

        if (now > hard) {
            snprintf(slot->err, sizeof(slot->err), "--max-time reached");
            slot->failed = 1;
            _exit(3);
        }
    }
}


static void
child_ack(child_t *c)
{
    __atomic_store_n(&shm->child[c->index].ack, c->gen, __ATOMIC_RELEASE);
}


static void
child_order(child_t *c, int64_t now)
{
    uint32_t  i;

    c->gen = __atomic_load_n(&shm->gen, __ATOMIC_ACQUIRE);
    c->cmd = shm->cmd;

    switch (c->cmd) {

    case CMD_LOGIN:
    case CMD_LANYING:
        c->st->login_ok = 0;
        c->st->login_failed = 0;
        c->st->login_timeout = 0;
        c->st->login_first_ns = 0;
        c->st->login_last_ns = 0;
        memset(&c->st->login, 0, sizeof(hist_t));
        memset(&c->st->upgrade, 0, sizeof(hist_t));
        memset(&c->st->auth, 0, sizeof(hist_t));

        c->logging_in = 1;
        c->window = shm->window;
        c->next = 0;
        c->inflight = 0;
        c->first_pending = 0;
        c->connect_budget = 0;
        c->last_scan = now;
        c->last_connect = now;
        c->lanying = (c->cmd == CMD_LANYING);
        c->arrival = shm->arrival;

        if (c->cmd == CMD_LOGIN) {
            break;
        }

        /* lanying sends while users arrive */
        /* fall through */

    case CMD_CHAT:
        c->st->sent = 0;
        c->st->acked = 0;
        c->st->delivered = 0;
        c->st->stale = 0;
        c->st->send_full = 0;
        memset(&c->st->e2e, 0, sizeof(hist_t));
        memset(&c->st->ack, 0, sizeof(hist_t));

        c->sending = 1;
        c->rate = shm->rate;
        c->interval = shm->interval;
        c->end_ns = shm->end_ns;
        c->tag = shm->tag;
        c->budget = 0;
        c->last_tick = now;
        c->rr = 0;
        c->neligible = 0;

        for (i = 0; i < c->n; i++) {
            c->s[i].eligible = 0;
        }

        for (i = 0; i < c->n; i += 2) {
            sess_eligible(c, i);
        }

        if (c->cmd == CMD_CHAT) {
            child_ack(c);
        }

        break;

    case CMD_IDLE:
        c->sending = 0;
        child_ack(c);
        break;

    case CMD_STOP:
        for (i = 0; i < c->n; i++) {
            if (c->s[i].fd != -1) {
                close(c->s[i].fd);
            }
        }

        child_ack(c);
        _exit(0);

    default:
        break;
    }
}


/* a pair becomes a pair of senders when both of its sessions are open */

static void
sess_eligible(child_t *c, uint32_t i)
{
    uint32_t  a, b;

    if (!c->sending) {
        return;
    }

    a = i & ~1u;
    b = a + 1;

    if (b >= c->n || c->s[a].state != S_OPEN || c->s[b].state != S_OPEN
        || c->s[a].eligible)
    {
        return;
    }

    c->s[a].eligible = 1;
    c->s[b].eligible = 1;
    c->eligible[c->neligible++] = a;
    c->eligible[c->neligible++] = b;
}


static void
child_tick(child_t *c, int64_t now)
{
    int       k;
    uint32_t  i, j, tries;
    double    rate;
    sess_t   *s;

    if (c->logging_in) {

        /* lanying: users arrive at a steady pace */

        if (c->lanying) {
            c->connect_budget += (double) (now - c->last_connect) / 1e9
                                 * c->arrival;
            c->last_connect = now;

            if (c->connect_budget > c->arrival) {
                c->connect_budget = c->arrival;
            }
        }

        for (k = 0; k < BENCH_CONNECTS_PER_TICK && c->next < c->n; k++) {

            if (c->lanying) {
                if (c->connect_budget < 1) {
                    break;
                }

                c->connect_budget -= 1;

            } else if (c->inflight >= c->window) {
                break;
            }

            sess_connect(c, c->next++, now);
        }

        /* login timeouts, ten times a second */

        if (now - c->last_scan > NS / 10) {
            c->last_scan = now;

            while (c->first_pending < c->next
                   && c->s[c->first_pending].state >= S_OPEN)
            {
                c->first_pending++;
            }

            for (j = c->first_pending; j < c->next; j++) {
                s = &c->s[j];

                if (s->state > S_NONE && s->state < S_OPEN
                    && now - s->t0 > (int64_t) (opt.login_timeout * NS))
                {
                    sess_close(c, s, j, 1);
                }
            }
        }

        if (c->next == c->n && c->inflight == 0) {
            c->logging_in = 0;
            child_ack(c);
        }
    }

    if (!c->sending) {
        return;
    }

    if (now >= c->end_ns) {
        c->sending = 0;
        return;
    }

    rate = c->lanying ? (double) c->neligible / c->interval : c->rate;

    c->budget += (double) (now - c->last_tick) / 1e9 * rate;
    c->last_tick = now;

    /* a stalled client catches up, but not by more than a second */

    if (c->budget > rate + 1) {
        c->budget = rate + 1;
    }

    for (k = 0; k < BENCH_SENDS_PER_TICK && c->budget >= 1; k++) {

        if (c->neligible == 0) {
            break;
        }

        /* the next pair member still open, round robin */

        for (tries = 0; tries < c->neligible; tries++) {
            i = c->eligible[c->rr++ % c->neligible];

            if (c->s[i].state == S_OPEN && c->s[i ^ 1].state == S_OPEN) {
                break;
            }
        }

        if (tries == c->neligible) {
            break;
        }

        chat_send(c, i, now);
        c->budget -= 1;
    }
}


static void
sess_connect(child_t *c, uint32_t i, int64_t now)
{
    int                  fd, one;
    uint32_t             g;
    sess_t              *s;
    struct sockaddr_in   src;
    struct epoll_event   ev;

    s = &c->s[i];
    g = c->lo + i;

    s->t0 = now;
    c->inflight++;

    if (c->st->login_first_ns == 0) {
        c->st->login_first_ns = now;
    }

    fd = socket(AF_INET, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);

    if (fd == -1) {
        snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                 "socket(): %s", strerror(errno));
        s->state = S_CONNECTING;
        sess_close(c, s, i, 0);
        return;
    }

    s->fd = fd;
    s->state = S_CONNECTING;

    one = 1;
    (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    (void) setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one,
                      sizeof(one));

    /* 127.0.0.2, .3, ...: each source address has its own ports */

    memset(&src, 0, sizeof(src));
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000002 + g % (uint32_t) opt.src);

    if (bind(fd, (struct sockaddr *) &src, sizeof(src)) == -1) {
        snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                 "bind(): %s", strerror(errno));
        sess_close(c, s, i, 0);
        return;
    }

    if (connect(fd, (struct sockaddr *) &dst, sizeof(dst)) == -1
        && errno != EINPROGRESS)
    {
        snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                 "connect(): %s", strerror(errno));
        sess_close(c, s, i, 0);
        return;
    }

    ev.events = EPOLLIN|EPOLLOUT;
    ev.data.u32 = i;
    s->pollout = 1;

    if (epoll_ctl(c->ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
        snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                 "epoll_ctl(): %s", strerror(errno));
        sess_close(c, s, i, 0);
        return;
    }
}


static void
sess_event(child_t *c, uint32_t i, uint32_t events)
{
    int        err;
    sess_t    *s;
    socklen_t  len;

    if (i >= c->n) {
        return;
    }

    s = &c->s[i];

    if (s->fd == -1) {
        return;
    }

    if (s->state == S_CONNECTING) {
        err = 0;
        len = sizeof(err);

        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) {
            err = errno;
        }

        if (err) {
            snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                     "connect(): %s", strerror(err));
            sess_close(c, s, i, 0);
            return;
        }

        if (!(events & (EPOLLOUT|EPOLLIN|EPOLLERR|EPOLLHUP))) {
            return;
        }

        sess_connected(c, s, i);
        return;
    }

    if (events & EPOLLOUT) {
        sess_flush(c, s, i);

        if (s->fd == -1) {
            return;
        }
    }

    if (events & (EPOLLIN|EPOLLERR|EPOLLHUP)) {
        sess_read(c, s, i);
    }
}


static void
sess_pollout(child_t *c, sess_t *s, uint32_t i, int on)
{
    struct epoll_event  ev;

    if (s->pollout == on) {
        return;
    }

    ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
    ev.data.u32 = i;

    if (epoll_ctl(c->ep, EPOLL_CTL_MOD, s->fd, &ev) == 0) {
        s->pollout = (uint8_t) on;
    }
}


static void
sess_connected(child_t *c, sess_t *s, uint32_t i)
{
    int      n;
    char     path[160], a[64], b[64], *key;
    u_char   raw[16];
    u_char   req[512];

    sess_pollout(c, s, i, 0);

    if (opt.proto == PROTO_MQTT) {
        s->state = S_CONNACK;
        mqtt_connect(c, s, i);
        return;
    }

    s->hs = malloc(BENCH_HS_SIZE);
    if (s->hs == NULL) {
        sess_close(c, s, i, 0);
        return;
    }

    key = (char *) s->hs;
    s->hs_len = 0;

    if (opt.proto == PROTO_IM) {
        n = (int) im_client_request(req, sizeof(req), host_header, "/", key);

    } else {

        /* nchan: subscribe to my channel, publish to my partner's */

        user_name(a, sizeof(a), c->lo + i);
        user_name(b, sizeof(b), (c->lo + i) ^ 1);
        snprintf(path, sizeof(path), "/chat/%s/%s", a, b);

        *(uint64_t *) raw = rng();
        *(uint64_t *) (raw + 8) = rng();
        sodium_bin2base64(key, IM_CLIENT_KEY_LEN, raw, sizeof(raw),
                          sodium_base64_VARIANT_ORIGINAL);

        n = snprintf((char *) req, sizeof(req),
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "\r\n",
                     path, host_header, key);
    }

    if (n <= 0 || (size_t) n >= sizeof(req)) {
        sess_close(c, s, i, 0);
        return;
    }

    s->state = S_HANDSHAKE;

    (void) sess_write(c, s, i, req, (size_t) n);
}


static void
sess_read(child_t *c, sess_t *s, uint32_t i)
{
    int      k;
    ssize_t  n;

    batch_id_len = 0;

    for (k = 0; k < 8; k++) {
        n = recv(s->fd, rbuf, BENCH_RBUF, 0);

        if (n > 0) {
            if (opt.proto == PROTO_MQTT) {
                mqtt_feed(c, s, i, rbuf, (size_t) n);

            } else if (s->state == S_HANDSHAKE) {
                ws_handshake_data(c, s, i, rbuf, (size_t) n);

            } else {
                ws_feed(c, s, i, rbuf, (size_t) n);
            }

            if (s->fd == -1) {
                return;
            }

            if ((size_t) n < BENCH_RBUF) {
                break;
            }

            continue;
        }

        if (n == 0) {
            sess_close(c, s, i, 0);
            return;
        }

        if (errno == EINTR) {
            continue;
        }

        if (errno != EAGAIN) {
            sess_close(c, s, i, 0);
        }

        break;
    }

    /* im: one Ack for all the messages of this read */

    if (batch_id_len && opt.ack == ACK_BATCH && s->state == S_OPEN) {
        Im__Frame  f = IM__FRAME__INIT;
        Im__Ack    ack = IM__ACK__INIT;

        batch_id[batch_id_len] = '\0';
        ack.up_to = batch_id;
        f.body_case = IM__FRAME__BODY_ACK;
        f.ack = &ack;

        (void) im_send_frame(c, s, i, &f);
    }

    batch_id_len = 0;
}


static int
sess_write(child_t *c, sess_t *s, uint32_t i, const u_char *data, size_t len)
{
    size_t    size;
    ssize_t   n;
    u_char   *p;

    if (s->fd == -1) {
        return -1;
    }

    if (s->out_len == 0) {
        n = send(s->fd, data, len, MSG_NOSIGNAL);

        if (n == (ssize_t) len) {
            return 0;
        }

        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                sess_close(c, s, i, 0);
                return -1;
            }

            n = 0;
        }

        data += n;
        len -= (size_t) n;
    }

    if (s->out_len + len > BENCH_OUT_MAX) {
        sess_close(c, s, i, 0);
        return -1;
    }

    if (s->out_len + len > s->out_size) {
        size = s->out_size ? s->out_size : 1024;

        while (size < s->out_len + len) {
            size *= 2;
        }

        p = realloc(s->out, size);
        if (p == NULL) {
            sess_close(c, s, i, 0);
            return -1;
        }

        s->out = p;
        s->out_size = (uint32_t) size;
    }

    memcpy(s->out + s->out_len, data, len);
    s->out_len += (uint32_t) len;

    sess_pollout(c, s, i, 1);

    return 0;
}


static void
sess_flush(child_t *c, sess_t *s, uint32_t i)
{
    ssize_t  n;

    while (s->out_len) {
        n = send(s->fd, s->out, s->out_len, MSG_NOSIGNAL);

        if (n > 0) {
            memmove(s->out, s->out + n, s->out_len - (size_t) n);
            s->out_len -= (uint32_t) n;
            continue;
        }

        if (n < 0 && errno == EINTR) {
            continue;
        }

        if (n < 0 && errno == EAGAIN) {
            return;
        }

        sess_close(c, s, i, 0);
        return;
    }

    free(s->out);
    s->out = NULL;
    s->out_size = 0;

    sess_pollout(c, s, i, 0);
}


static void
sess_close(child_t *c, sess_t *s, uint32_t i, int timeout)
{
    if (s->fd != -1) {
        close(s->fd);
        s->fd = -1;
    }

    if (s->state >= S_CONNECTING && s->state < S_OPEN) {
        c->inflight--;

        if (timeout) {
            c->st->login_timeout++;
        } else {
            c->st->login_failed++;
        }

    } else if (s->state == S_OPEN) {
        c->st->closed++;
    }

    s->state = S_CLOSED;

    free(s->hs);
    free(s->out);
    free(s->in);
    free(s->token);

    s->hs = NULL;
    s->out = NULL;
    s->in = NULL;
    s->token = NULL;
    s->out_len = 0;
    s->out_size = 0;
    s->in_len = 0;
    s->in_size = 0;

    if (s->ws) {
        im_client_parser_free(s->ws);
        free(s->ws);
        s->ws = NULL;
    }
}


static void
sess_opened(child_t *c, sess_t *s, uint32_t i, int64_t now)
{
    s->state = S_OPEN;
    c->inflight--;
    c->st->login_ok++;
    c->st->login_last_ns = now;

    hist_add(&c->st->login, (uint64_t) (now - s->t0));

    if (s->t_auth) {
        hist_add(&c->st->auth, (uint64_t) (now - s->t_auth));
    }

    sess_eligible(c, i);
}


/* ---------------------------------------------------------------- */
/* WebSocket: ngx_im and nchan */


static void
ws_handshake_data(child_t *c, sess_t *s, uint32_t i, u_char *data,
    size_t len)
{
    int                 rc;
    size_t              take, consumed, room;
    u_char             *resp;
    int64_t             now;
    Im__Frame           f = IM__FRAME__INIT;
    Im__Auth            auth = IM__AUTH__INIT;

    /* the key in the first 32 bytes, the response after it */

    resp = s->hs + 32;
    room = BENCH_HS_SIZE - 32 - s->hs_len;
    take = len < room ? len : room;

    memcpy(resp + s->hs_len, data, take);
    s->hs_len += (uint16_t) take;

    rc = im_client_response(resp, s->hs_len, (char *) s->hs, &consumed);

    if (rc == IM_CLIENT_AGAIN) {
        if (s->hs_len == BENCH_HS_SIZE - 32) {
            sess_close(c, s, i, 0);
        }

        return;
    }

    if (rc != IM_CLIENT_OK) {
        snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                 "upgrade refused: %.60s", resp);
        sess_close(c, s, i, 0);
        return;
    }

    now = now_ns();
    hist_add(&c->st->upgrade, (uint64_t) (now - s->t0));

    s->ws = malloc(sizeof(im_client_parser_t));
    if (s->ws == NULL) {
        sess_close(c, s, i, 0);
        return;
    }

    im_client_parser_init(s->ws, 0);

    if (opt.proto == PROTO_IM) {
        auth.token = s->token;
        auth.device = "bench";
        f.id = 1;
        f.body_case = IM__FRAME__BODY_AUTH;
        f.auth = &auth;

        s->state = S_AUTH;
        s->t_auth = now;

        if (im_send_frame(c, s, i, &f) != 0) {
            return;
        }

        free(s->token);
        s->token = NULL;

    } else {
        sess_opened(c, s, i, now);
    }

    /* frames right behind the response */

    if (consumed < s->hs_len) {
        ws_feed(c, s, i, resp + consumed, s->hs_len - consumed);

        if (s->fd == -1) {
            return;
        }
    }

    free(s->hs);
    s->hs = NULL;

    if (take < len) {
        ws_feed(c, s, i, data + take, len - take);
    }
}


static void
ws_feed(child_t *c, sess_t *s, uint32_t i, u_char *data, size_t len)
{
    int                  rc;
    size_t               used;
    unsigned             code;
    const u_char        *reason;
    size_t               rlen;
    im_client_parser_t  *p;

    p = s->ws;

    while (len && s->fd != -1) {
        rc = im_client_parse(p, data, len, &used);

        data += used;
        len -= used;

        if (rc == IM_CLIENT_AGAIN) {
            return;
        }

        if (rc == IM_CLIENT_ERROR) {
            snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                     "bad frame: %s", p->error);
            sess_close(c, s, i, 0);
            return;
        }

        switch (p->opcode) {

        case IM_CLIENT_WS_BINARY:
            if (opt.proto == PROTO_IM) {
                im_frame(c, s, i, p->payload, p->len);
            } else {
                delivered(c, p->payload, p->len);
            }

            break;

        case IM_CLIENT_WS_TEXT:
            if (opt.proto == PROTO_NCHAN) {
                delivered(c, p->payload, p->len);
            }

            break;

        case IM_CLIENT_WS_PING:
            (void) ws_send(c, s, i, IM_CLIENT_WS_PONG, p->payload, p->len);
            break;

        case IM_CLIENT_WS_CLOSE:
            if (im_client_close_status(p->payload, p->len, &code, &reason,
                                       &rlen)
                == IM_CLIENT_OK
                && code >= 1000 && code < 1016)
            {
                c->st->close_codes[code - 1000]++;
            }

            sess_close(c, s, i, 0);
            return;

        default:
            break;
        }
    }
}


static size_t
ws_header(u_char *p, int opcode, size_t len, uint32_t mask)
{
    u_char  *start;

    start = p;

    *p++ = (u_char) (0x80 | opcode);

    if (len < 126) {
        *p++ = (u_char) (0x80 | len);

    } else if (len < 65536) {
        *p++ = 0x80 | 126;
        *p++ = (u_char) (len >> 8);
        *p++ = (u_char) len;

    } else {
        *p++ = 0x80 | 127;
        *p++ = 0;
        *p++ = 0;
        *p++ = 0;
        *p++ = 0;
        *p++ = (u_char) (len >> 24);
        *p++ = (u_char) (len >> 16);
        *p++ = (u_char) (len >> 8);
        *p++ = (u_char) len;
    }

    memcpy(p, &mask, 4);

    return (size_t) (p + 4 - start);
}


static void
ws_mask(u_char *p, size_t len, uint32_t mask)
{
    size_t   k;
    u_char   m[4];

    memcpy(m, &mask, 4);

    for (k = 0; k < len; k++) {
        p[k] ^= m[k & 3];
    }
}


static int
ws_send(child_t *c, sess_t *s, uint32_t i, int opcode, const u_char *payload,
    size_t len)
{
    size_t    h;
    uint32_t  mask;
    u_char    buf[IM_CLIENT_HEADER_MAX + BENCH_BODY_MAX + 256];

    if (len > BENCH_BODY_MAX + 256) {
        return -1;
    }

    mask = (uint32_t) rng();
    h = ws_header(buf, opcode, len, mask);
    memcpy(buf + h, payload, len);
    ws_mask(buf + h, len, mask);

    return sess_write(c, s, i, buf, h + len);
}


static int
im_send_frame(child_t *c, sess_t *s, uint32_t i, const Im__Frame *f)
{
    int       rc;
    size_t    n, h;
    uint32_t  mask;
    u_char   *buf, stack[8192];

    n = im__frame__get_packed_size(f);

    buf = (n + IM_CLIENT_HEADER_MAX <= sizeof(stack)) ? stack
                                                      : malloc(n + 16);
    if (buf == NULL) {
        return -1;
    }

    mask = (uint32_t) rng();
    h = ws_header(buf, IM_CLIENT_WS_BINARY, n, mask);
    (void) im__frame__pack(f, buf + h);
    ws_mask(buf + h, n, mask);

    rc = sess_write(c, s, i, buf, h + n);

    if (buf != stack) {
        free(buf);
    }

    return rc;
}


static int64_t
hex_value(const char *p, size_t len)
{
    size_t   k;
    int64_t  v;

    v = 0;

    for (k = 0; k < len; k++) {
        if (!isxdigit((u_char) p[k])) {
            return -1;
        }

        v = v * 16 + (isdigit((u_char) p[k]) ? p[k] - '0'
                                             : (tolower(p[k]) - 'a' + 10));
    }

    return v;
}


static void
im_frame(child_t *c, sess_t *s, uint32_t i, u_char *data, size_t len)
{
    size_t      n;
    int64_t     now, ts;
    Im__Frame  *f;
    const char *cmid;

    f = im__frame__unpack(NULL, len, data);

    if (f == NULL) {
        snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                 "the server sent a frame that is not an im.Frame");
        sess_close(c, s, i, 0);
        return;
    }

    switch (f->body_case) {

    case IM__FRAME__BODY_AUTH_OK:
        if (s->state == S_AUTH) {
            sess_opened(c, s, i, now_ns());
        }

        break;

    case IM__FRAME__BODY_MESSAGE:
        delivered(c, f->message->body.data, f->message->body.len);

        /* the cursor is what a device acknowledges */

        if (opt.ack != ACK_NONE && f->message->cursor != NULL) {
            n = strlen(f->message->cursor);

            if (n < sizeof(batch_id)) {
                memcpy(batch_id, f->message->cursor, n);
                batch_id_len = n;
            }

            if (opt.ack == ACK_EACH && batch_id_len) {
                Im__Frame  a = IM__FRAME__INIT;
                Im__Ack    ack = IM__ACK__INIT;

                batch_id[batch_id_len] = '\0';
                ack.up_to = batch_id;
                a.body_case = IM__FRAME__BODY_ACK;
                a.ack = &ack;

                (void) im_send_frame(c, s, i, &a);
                batch_id_len = 0;
            }
        }

        break;

    case IM__FRAME__BODY_SEND_ACK:
        c->st->acked++;

        /* client_msg_id is "c<send time, hex>-<index>" */

        cmid = f->send_ack->client_msg_id;

        if (cmid && cmid[0] == 'c' && strlen(cmid) > 17) {
            ts = hex_value(cmid + 1, 16);
            now = now_ns();

            if (ts > 0 && now >= ts) {
                hist_add(&c->st->ack, (uint64_t) (now - ts));
            }
        }

        break;

    case IM__FRAME__BODY_ERROR:
        if ((unsigned) f->error->code < 16) {
            c->st->errors[f->error->code]++;
        }

        if (s->state == S_AUTH) {
            snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                     "Auth refused: %s %.80s",
                     im_client_error_name(f->error->code),
                     f->error->reason ? f->error->reason : "");
            sess_close(c, s, i, 0);
        }

        break;

    default:
        break;
    }

    im__frame__free_unpacked(f, NULL);
}


/* ---------------------------------------------------------------- */
/* MQTT 3.1.1, the minimum: CONNECT, SUBSCRIBE, PUBLISH QoS 1, PUBACK */


static u_char *
mqtt_length(u_char *p, size_t n)
{
    do {
        *p = (u_char) (n & 0x7f);
        n >>= 7;

        if (n) {
            *p |= 0x80;
        }

        p++;

    } while (n);

    return p;
}


static u_char *
mqtt_string(u_char *p, const char *s, size_t len)
{
    *p++ = (u_char) (len >> 8);
    *p++ = (u_char) len;

    return (u_char *) mempcpy(p, s, len);
}


static void
mqtt_connect(child_t *c, sess_t *s, uint32_t i)
{
    char     id[64];
    size_t   idlen;
    u_char   buf[128], *p;

    idlen = (size_t) snprintf(id, sizeof(id), "c%" PRIu32, c->lo + i);

    p = buf;
    *p++ = 0x10;
    p = mqtt_length(p, 10 + 2 + idlen);
    p = mqtt_string(p, "MQTT", 4);
    *p++ = 4;                  /* 3.1.1 */
    *p++ = 0x02;               /* clean session */
    *p++ = 0;                  /* keep alive 0: off, as im pings at 30 s */
    *p++ = 0;
    p = mqtt_string(p, id, idlen);

    (void) sess_write(c, s, i, buf, (size_t) (p - buf));
}


static void
mqtt_subscribe(child_t *c, sess_t *s, uint32_t i)
{
    char     topic[80], user[64];
    size_t   tlen;
    u_char   buf[128], *p;

    user_name(user, sizeof(user), c->lo + i);
    tlen = (size_t) snprintf(topic, sizeof(topic), "u/%s", user);

    p = buf;
    *p++ = 0x82;
    p = mqtt_length(p, 2 + 2 + tlen + 1);
    *p++ = 0;
    *p++ = 1;                  /* packet id */
    p = mqtt_string(p, topic, tlen);
    *p++ = 1;                  /* QoS 1 */

    (void) sess_write(c, s, i, buf, (size_t) (p - buf));
}


static void
mqtt_feed(child_t *c, sess_t *s, uint32_t i, u_char *data, size_t len)
{
    int       k;
    size_t    rem, total, size;
    u_char   *p, *end, *b;

    if (s->in_len) {
        if (s->in_len + len > s->in_size) {
            size = s->in_size;

            while (size < s->in_len + len) {
                size *= 2;
            }

            if (size > BENCH_OUT_MAX) {
                sess_close(c, s, i, 0);
                return;
            }

            b = realloc(s->in, size);
            if (b == NULL) {
                sess_close(c, s, i, 0);
                return;
            }

            s->in = b;
            s->in_size = (uint32_t) size;
        }

        memcpy(s->in + s->in_len, data, len);
        s->in_len += (uint32_t) len;

        p = s->in;
        end = s->in + s->in_len;

    } else {
        p = data;
        end = data + len;
    }

    while (end - p >= 2 && s->fd != -1) {
        rem = 0;

        for (k = 0; k < 4; k++) {
            if (p + 1 + k >= end) {
                goto partial;
            }

            rem |= (size_t) (p[1 + k] & 0x7f) << (7 * k);

            if (!(p[1 + k] & 0x80)) {
                break;
            }
        }

        if (k == 4) {
            sess_close(c, s, i, 0);
            return;
        }

        total = 1 + (size_t) k + 1 + rem;

        if ((size_t) (end - p) < total) {
            goto partial;
        }

        if (mqtt_packet(c, s, i, p[0], p + 2 + k, rem) != 0) {
            return;
        }

        p += total;
    }

partial:

    if (s->fd == -1) {
        return;
    }

    len = (size_t) (end - p);

    if (len == 0) {
        s->in_len = 0;

        if (s->in_size > 65536) {
            free(s->in);
            s->in = NULL;
            s->in_size = 0;
        }

        return;
    }

    if (s->in && p >= s->in && p < s->in + s->in_size) {
        memmove(s->in, p, len);
        s->in_len = (uint32_t) len;
        return;
    }

    size = 4096;

    while (size < len) {
        size *= 2;
    }

    if (s->in_size < size) {
        b = realloc(s->in, size);
        if (b == NULL) {
            sess_close(c, s, i, 0);
            return;
        }

        s->in = b;
        s->in_size = (uint32_t) size;
    }

    memcpy(s->in, p, len);
    s->in_len = (uint32_t) len;
}


static int
mqtt_packet(child_t *c, sess_t *s, uint32_t i, u_char type, u_char *body,
    size_t len)
{
    int      qos;
    size_t   tlen, off;
    u_char   ack[4];

    switch (type >> 4) {

    case 2:                                 /* CONNACK */
        if (s->state != S_CONNACK || len < 2 || body[1] != 0) {
            snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                     "CONNACK refused");
            sess_close(c, s, i, 0);
            return -1;
        }

        hist_add(&c->st->upgrade, (uint64_t) (now_ns() - s->t0));

        s->state = S_SUBACK;
        mqtt_subscribe(c, s, i);
        break;

    case 9:                                 /* SUBACK */
        if (s->state != S_SUBACK || len < 3 || body[2] == 0x80) {
            snprintf(shm->child[c->index].err, sizeof(shm->child[0].err),
                     "SUBACK refused");
            sess_close(c, s, i, 0);
            return -1;
        }

        sess_opened(c, s, i, now_ns());
        break;

    case 3:                                 /* PUBLISH */
        qos = (type >> 1) & 3;

        if (len < 2) {
            break;
        }

        tlen = ((size_t) body[0] << 8) | body[1];
        off = 2 + tlen + (qos ? 2 : 0);

        if (off > len) {
            break;
        }

        delivered(c, body + off, len - off);

        if (qos == 1) {
            ack[0] = 0x40;
            ack[1] = 2;
            ack[2] = body[2 + tlen];
            ack[3] = body[3 + tlen];

            if (sess_write(c, s, i, ack, 4) != 0) {
                return -1;
            }
        }

        break;

    case 4:                                 /* PUBACK */
        c->st->acked++;
        break;

    default:
        break;
    }

    return s->fd == -1 ? -1 : 0;
}


/* ---------------------------------------------------------------- */
/* chat */


/* "T" <send time: 16 hex> <phase tag: 8 hex>, padded to --body */

static size_t
body_make(u_char *b, uint32_t tag, int64_t ts)
{
    static const char  hex[] = "0123456789abcdef";
    int                k;

    b[0] = 'T';

    for (k = 0; k < 16; k++) {
        b[1 + k] = (u_char) hex[((uint64_t) ts >> (60 - 4 * k)) & 0xf];
    }

    for (k = 0; k < 8; k++) {
        b[17 + k] = (u_char) hex[(tag >> (28 - 4 * k)) & 0xf];
    }

    memset(b + 25, 'x', opt.body - 25);

    return opt.body;
}


static int
body_parse(const u_char *b, size_t len, uint32_t *tag, int64_t *ts)
{
    int64_t  t, g;

    if (len < 25 || b[0] != 'T') {
        return -1;
    }

    t = hex_value((const char *) b + 1, 16);
    g = hex_value((const char *) b + 17, 8);

    if (t < 0 || g < 0) {
        return -1;
    }

    *ts = t;
    *tag = (uint32_t) g;

    return 0;
}


static void
delivered(child_t *c, const u_char *body, size_t len)
{
    int64_t   ts, now;
    uint32_t  tag;

    if (body_parse(body, len, &tag, &ts) != 0 || tag != c->tag) {
        c->st->stale++;
        return;
    }

    now = now_ns();

    c->st->delivered++;
    __atomic_fetch_add(&shm->delivered, 1, __ATOMIC_RELAXED);

    if (now >= ts) {
        hist_add(&c->st->e2e, (uint64_t) (now - ts));
    }
}


static void
chat_send(child_t *c, uint32_t i, int64_t now)
{
    int        rc;
    char       to[64], cmid[48], topic[80];
    size_t     blen, tlen;
    sess_t    *s;
    u_char     body[BENCH_BODY_MAX], buf[BENCH_BODY_MAX + 128], *p;
    uint16_t   pid;

    s = &c->s[i];

    blen = body_make(body, c->tag, now);
    user_name(to, sizeof(to), (c->lo + i) ^ 1);

    switch (opt.proto) {

    case PROTO_IM: {
        Im__Frame  f = IM__FRAME__INIT;
        Im__Send   snd = IM__SEND__INIT;

        snd.to = to;
        snd.body.data = body;
        snd.body.len = blen;

        if (opt.cmid) {
            snprintf(cmid, sizeof(cmid), "c%016" PRIx64 "-%" PRIx64,
                     (uint64_t) now, c->seq++);
            snd.client_msg_id = cmid;
        }

        f.id = 2;
        f.body_case = IM__FRAME__BODY_SEND;
        f.send = &snd;

        rc = im_send_frame(c, s, i, &f);
        break;
    }

    case PROTO_NCHAN:
        rc = ws_send(c, s, i, IM_CLIENT_WS_TEXT, body, blen);
        break;

    default:
        tlen = (size_t) snprintf(topic, sizeof(topic), "u/%s", to);

        pid = ++s->mqtt_pid;

        if (pid == 0) {
            pid = s->mqtt_pid = 1;
        }

        p = buf;
        *p++ = 0x32;                   /* PUBLISH, QoS 1 */
        p = mqtt_length(p, 2 + tlen + 2 + blen);
        p = mqtt_string(p, topic, tlen);
        *p++ = (u_char) (pid >> 8);
        *p++ = (u_char) pid;
        p = (u_char *) mempcpy(p, body, blen);

        rc = sess_write(c, s, i, buf, (size_t) (p - buf));
        break;
    }

    if (rc != 0) {
        c->st->send_full++;
        return;
    }

    c->st->sent++;
    __atomic_fetch_add(&shm->sent, 1, __ATOMIC_RELAXED);
}


/* ---------------------------------------------------------------- */
/* the parent: /proc, Redis INFO, phases, results */


typedef struct {
    double        cpu_s[4];          /* nginx, redis, broker, clients */
    double        ctxsw[3];          /* switches: nginx, redis, broker */
    long          rss_kb[3];
    long          pss_kb[3];
    long          redis_used;
    int           nginx_workers;
} sample_t;


static pid_t  children[BENCH_MAX_PROCS];


static int
proc_stat(pid_t pid, pid_t *ppid, double *cpu)
{
    int      fd;
    char     buf[1024], *p;
    ssize_t  n;
    unsigned long long  ut, st;
    long long           cut, cst;
    int                 pp;

    snprintf(buf, sizeof(buf), "/proc/%d/stat", (int) pid);

    fd = open(buf, O_RDONLY|O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);

    if (n <= 0) {
        return -1;
    }

    buf[n] = '\0';

    p = strrchr(buf, ')');
    if (p == NULL) {
        return -1;
    }

    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime cutime cstime */

    if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu "
               "%lld %lld", &pp, &ut, &st, &cut, &cst) != 5)
    {
        return -1;
    }

    if (ppid) {
        *ppid = pp;
    }

    if (cpu) {
        *cpu = (double) (ut + st + (unsigned long long) (cut + cst))
               / (double) sysconf(_SC_CLK_TCK);
    }

    return 0;
}


static int
proc_children(pid_t parent, pid_t *out, int max)
{
    int             n;
    pid_t           pid, pp;
    DIR            *d;
    struct dirent  *e;

    d = opendir("/proc");
    if (d == NULL) {
        return 0;
    }

    n = 0;

    while ((e = readdir(d)) != NULL && n < max) {
        if (!isdigit((u_char) e->d_name[0])) {
            continue;
        }

        pid = atoi(e->d_name);

        if (proc_stat(pid, &pp, NULL) == 0 && pp == parent) {
            out[n++] = pid;
        }
    }

    closedir(d);

    return n;
}


static long
proc_field_kb(const char *path, const char *name)
{
    long    v;
    FILE   *f;
    char    line[256];
    size_t  len;

    f = fopen(path, "re");
    if (f == NULL) {
        return -1;
    }

    v = -1;
    len = strlen(name);

    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, name, len) == 0) {
            v = strtol(line + len, NULL, 10);
            break;
        }
    }

    fclose(f);

    return v;
}


/* how often the server slept and woke (or was preempted) */

static void
proc_switches(pid_t pid, double *ctxsw)
{
    long  v;
    char  path[64];

    snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
    v = proc_field_kb(path, "voluntary_ctxt_switches:");
    *ctxsw += v > 0 ? v : 0;
    v = proc_field_kb(path, "nonvoluntary_ctxt_switches:");
    *ctxsw += v > 0 ? v : 0;
}


static void
proc_mem(pid_t pid, long *rss, long *pss)
{
    long  v;
    char  path[64];

    snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
    v = proc_field_kb(path, "VmRSS:");
    *rss += v > 0 ? v : 0;

    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int) pid);
    v = proc_field_kb(path, "Pss:");
    *pss += v > 0 ? v : 0;
}


/* used_memory of INFO memory, over a blocking socket with timeouts */

static long
redis_used_memory(int port)
{
    int                 fd;
    long                v;
    char                buf[8192], *p;
    size_t              got;
    ssize_t             n;
    struct timeval      tv;
    struct sockaddr_in  sin;

    fd = socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -1;
    }

    tv.tv_sec = 2;
    tv.tv_usec = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t) port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    if (connect(fd, (struct sockaddr *) &sin, sizeof(sin)) == -1
        || send(fd, "INFO memory\r\n", 13, MSG_NOSIGNAL) != 13)
    {
        close(fd);
        return -1;
    }

    got = 0;
    v = -1;

    while (got < sizeof(buf) - 1) {
        n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);

        if (n <= 0) {
            break;
        }

        got += (size_t) n;
        buf[got] = '\0';

        p = strstr(buf, "\r\nused_memory:");

        if (p && strchr(p + 14, '\r')) {
            v = strtol(p + 14, NULL, 10);
            break;
        }
    }

    close(fd);

    return v;
}


static void
sample(sample_t *sm)
{
    int     k, n;
    pid_t   w[256];
    double  cpu;

    memset(sm, 0, sizeof(sample_t));

    if (opt.nginx_pid) {
        if (proc_stat(opt.nginx_pid, NULL, &cpu) == 0) {
            sm->cpu_s[0] += cpu;
        }

        n = proc_children(opt.nginx_pid, w, 256);
        sm->nginx_workers = n;

        for (k = 0; k < n; k++) {
            if (proc_stat(w[k], NULL, &cpu) == 0) {
                sm->cpu_s[0] += cpu;
            }

            proc_mem(w[k], &sm->rss_kb[0], &sm->pss_kb[0]);
            proc_switches(w[k], &sm->ctxsw[0]);
        }
    }

    if (opt.redis_pid && proc_stat(opt.redis_pid, NULL, &cpu) == 0) {
        sm->cpu_s[1] = cpu;
        proc_mem(opt.redis_pid, &sm->rss_kb[1], &sm->pss_kb[1]);
        proc_switches(opt.redis_pid, &sm->ctxsw[1]);
    }

    if (opt.broker_pid && proc_stat(opt.broker_pid, NULL, &cpu) == 0) {
        sm->cpu_s[2] = cpu;
        proc_mem(opt.broker_pid, &sm->rss_kb[2], &sm->pss_kb[2]);
        proc_switches(opt.broker_pid, &sm->ctxsw[2]);
    }

    for (k = 0; k < opt.procs; k++) {
        if (children[k] && proc_stat(children[k], NULL, &cpu) == 0) {
            sm->cpu_s[3] += cpu;
        }
    }

    sm->redis_used = opt.redis_port ? redis_used_memory(opt.redis_port) : -1;
}


static double
server_cpu(const sample_t *a, const sample_t *b)
{
    return (b->cpu_s[0] - a->cpu_s[0]) + (b->cpu_s[1] - a->cpu_s[1])
           + (b->cpu_s[2] - a->cpu_s[2]);
}


static void
load_avg(char *buf, size_t size)
{
    int      fd;
    ssize_t  n;
    char    *p;

    buf[0] = '\0';

    fd = open("/proc/loadavg", O_RDONLY|O_CLOEXEC);
    if (fd == -1) {
        return;
    }

    n = read(fd, buf, size - 1);
    close(fd);

    buf[n > 0 ? n : 0] = '\0';

    /* the three averages only */

    p = buf;

    for (n = 0; n < 3 && (p = strchr(p, ' ')) != NULL; n++) {
        p++;
    }

    if (p) {
        p[-1] = '\0';
    }
}


static void
say(const char *fmt, ...)
{
    va_list  ap;

    if (opt.quiet) {
        return;
    }

    va_start(ap, fmt);
    fputs("im-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}


static void
kill_children(void)
{
    int  k;

    for (k = 0; k < opt.procs; k++) {
        if (children[k] > 0) {
            kill(children[k], SIGKILL);
        }
    }

    for (k = 0; k < opt.procs; k++) {
        if (children[k] > 0) {
            (void) waitpid(children[k], NULL, 0);
            children[k] = 0;
        }
    }
}


static void
on_signal(int signo)
{
    kill_children();
    _exit(128 + signo);
}


/* a child that died, or had to give up */

static int
children_alive(void)
{
    int    k, status;
    pid_t  pid;

    for (k = 0; k < opt.procs; k++) {
        if (shm->child[k].failed) {
            fprintf(stderr, "im-bench: client %d: %s\n", k,
                    shm->child[k].err);
            return 0;
        }

        pid = waitpid(children[k], &status, WNOHANG);

        if (pid == children[k]) {
            children[k] = 0;
            fprintf(stderr, "im-bench: client %d exited (%d): %s\n", k,
                    status, shm->child[k].err);
            return 0;
        }
    }

    return 1;
}


static int
order(int cmd, double timeout)
{
    int      k, done, gen;
    int64_t  deadline;

    shm->cmd = cmd;
    gen = __atomic_add_fetch(&shm->gen, 1, __ATOMIC_ACQ_REL);

    deadline = now_ns() + (int64_t) (timeout * NS);

    for ( ;; ) {
        done = 0;

        for (k = 0; k < opt.procs; k++) {
            if (__atomic_load_n(&shm->child[k].ack, __ATOMIC_ACQUIRE)
                == gen)
            {
                done++;
            }
        }

        if (done == opt.procs) {
            return 0;
        }

        if (!children_alive()) {
            return -1;
        }

        if (now_ns() > deadline) {
            fprintf(stderr, "im-bench: clients did not finish in %.0f s\n",
                    timeout);
            return -1;
        }

        usleep(2000);
    }
}


static void
merge(stats_t *t)
{
    int       k, j;
    stats_t  *s;

    memset(t, 0, sizeof(stats_t));

    for (k = 0; k < opt.procs; k++) {
        s = &shm->child[k].st;

        t->login_ok += s->login_ok;
        t->login_failed += s->login_failed;
        t->login_timeout += s->login_timeout;
        t->closed += s->closed;
        t->sent += s->sent;
        t->acked += s->acked;
        t->delivered += s->delivered;
        t->stale += s->stale;
        t->send_full += s->send_full;

        for (j = 0; j < 16; j++) {
            t->errors[j] += s->errors[j];
            t->close_codes[j] += s->close_codes[j];
        }

        if (s->login_first_ns
            && (t->login_first_ns == 0
                || s->login_first_ns < t->login_first_ns))
        {
            t->login_first_ns = s->login_first_ns;
        }

        if (s->login_last_ns > t->login_last_ns) {
            t->login_last_ns = s->login_last_ns;
        }

        hist_merge(&t->login, &s->login);
        hist_merge(&t->upgrade, &s->upgrade);
        hist_merge(&t->auth, &s->auth);
        hist_merge(&t->e2e, &s->e2e);
        hist_merge(&t->ack, &s->ack);
    }
}


static json_t *
json_hist(const hist_t *h)
{
    return json_pack("{s:I, s:f, s:f, s:f, s:f, s:f, s:f}",
                     "count", (json_int_t) h->count,
                     "avg_ms", hist_avg(h),
                     "p50_ms", hist_pct(h, 0.50),
                     "p99_ms", hist_pct(h, 0.99),
                     "p999_ms", hist_pct(h, 0.999),
                     "max_ms", (double) h->max / 1e6,
                     "p90_ms", hist_pct(h, 0.90));
}


static json_t *
json_errors(const stats_t *t)
{
    int      k;
    json_t  *o;

    o = json_object();

    for (k = 0; k < 16; k++) {
        if (t->errors[k]) {
            json_object_set_new(o, im_client_error_name(k),
                                json_integer((json_int_t) t->errors[k]));
        }
    }

    for (k = 0; k < 16; k++) {
        if (t->close_codes[k]) {
            char  name[32];

            snprintf(name, sizeof(name), "close_%d", 1000 + k);
            json_object_set_new(o, name,
                                json_integer((json_int_t) t->close_codes[k]));
        }
    }

    return o;
}


static json_t *
json_login(const stats_t *t)
{
    double  secs;

    secs = (double) (t->login_last_ns - t->login_first_ns) / 1e9;

    return json_pack("{s:I, s:I, s:I, s:f, s:f, s:o, s:o, s:o}",
                     "ok", (json_int_t) t->login_ok,
                     "failed", (json_int_t) t->login_failed,
                     "timeout", (json_int_t) t->login_timeout,
                     "seconds", secs,
                     "per_s", secs > 0 ? (double) t->login_ok / secs : 0.0,
                     "login", json_hist(&t->login),
                     "upgrade", json_hist(&t->upgrade),
                     "auth", json_hist(&t->auth));
}


static json_t *
json_sample(const sample_t *a, const sample_t *b)
{
    return json_pack("{s:f, s:f, s:f, s:f}",
                     "nginx", b->cpu_s[0] - a->cpu_s[0],
                     "redis", b->cpu_s[1] - a->cpu_s[1],
                     "broker", b->cpu_s[2] - a->cpu_s[2],
                     "clients", b->cpu_s[3] - a->cpu_s[3]);
}


/* sends at the offered rate until end, then waits for the rest */

static int
run_chat(int cmd, double rate, double seconds, double arrival_s,
    json_t **out)
{
    int       rc;
    char      la0[64], la1[64];
    double    wall, cpu, cli;
    int64_t   t0, t1, end, deadline;
    stats_t   t;
    sample_t  a, b;
    uint64_t  sent, got;
    static uint32_t  tag = 0;

    tag = (uint32_t) now_ns() ^ (tag + 0x9e3779b9);

    shm->sent = 0;
    shm->delivered = 0;
    shm->rate = rate / opt.procs;
    shm->arrival = opt.arrival / opt.procs;
    shm->interval = opt.interval;
    shm->tag = tag;
    shm->window = (opt.window + opt.procs - 1) / opt.procs;

    load_avg(la0, sizeof(la0));
    sample(&a);

    t0 = now_ns();
    end = t0 + (int64_t) ((arrival_s + seconds) * NS);
    shm->end_ns = end;

    /* lanying: the order is done when every user has logged in */

    rc = order(cmd, cmd == CMD_LANYING ? arrival_s + opt.login_timeout + 30
                                        : 10);
    if (rc != 0) {
        return -1;
    }

    while (now_ns() < end) {
        if (!children_alive()) {
            return -1;
        }

        usleep(10000);
    }

    deadline = end + (int64_t) (opt.drain * NS);

    for ( ;; ) {
        sent = __atomic_load_n(&shm->sent, __ATOMIC_RELAXED);
        got = __atomic_load_n(&shm->delivered, __ATOMIC_RELAXED);

        if (got >= sent || now_ns() > deadline) {
            break;
        }

        usleep(2000);
    }

    t1 = now_ns();
    sample(&b);
    load_avg(la1, sizeof(la1));

    if (order(CMD_IDLE, 10) != 0) {
        return -1;
    }

    merge(&t);

    wall = (double) (t1 - t0) / 1e9;
    cpu = server_cpu(&a, &b);
    cli = b.cpu_s[3] - a.cpu_s[3];

    *out = json_pack("{s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:f, s:o, "
                     "s:o, s:f, s:f, s:f, s:o, s:o, s:s, s:s}",
                     "offered_per_s", rate,
                     "seconds", seconds,
                     "wall_s", wall,
                     "sent", (json_int_t) t.sent,
                     "acked", (json_int_t) t.acked,
                     "delivered", (json_int_t) t.delivered,
                     "stale", (json_int_t) t.stale,
                     "send_dropped", (json_int_t) t.send_full,
                     "delivered_per_s", (double) t.delivered / wall,
                     "latency", json_hist(&t.e2e),
                     "ack_latency", json_hist(&t.ack),
                     "server_cpu_s", cpu,
                     "server_cpu_us_per_msg",
                         t.delivered ? cpu * 1e6 / (double) t.delivered : 0.0,
                     "client_cpu_us_per_msg",
                         t.delivered ? cli * 1e6 / (double) t.delivered : 0.0,
                     "cpu_s", json_sample(&a, &b),
                     "errors", json_errors(&t),
                     "load_before", la0,
                     "load_after", la1);

    json_object_set_new(*out, "sessions_closed_so_far",
                        json_integer((json_int_t) t.closed));

    if (t.delivered) {
        json_object_set_new(*out, "per_msg", json_pack(
            "{s:f, s:f, s:f}",
            "nginx_ctx_switches", (b.ctxsw[0] - a.ctxsw[0]) / t.delivered,
            "redis_ctx_switches", (b.ctxsw[1] - a.ctxsw[1]) / t.delivered,
            "broker_ctx_switches", (b.ctxsw[2] - a.ctxsw[2]) / t.delivered));
    }

    if (cmd == CMD_LANYING) {
        json_object_set_new(*out, "login", json_login(&t));
        json_object_set_new(*out, "closed",
                            json_integer((json_int_t) t.closed));
    }

    say("%s: sent %" PRIu64 ", delivered %" PRIu64 " (%.0f/s), "
        "p50 %.2f ms, p99 %.2f ms, p999 %.2f ms, server %.1f us/msg",
        cmd == CMD_LANYING ? "lanying" : "chat", t.sent, t.delivered,
        (double) t.delivered / wall, hist_pct(&t.e2e, 0.5),
        hist_pct(&t.e2e, 0.99), hist_pct(&t.e2e, 0.999),
        t.delivered ? cpu * 1e6 / (double) t.delivered : 0.0);

    return 0;
}


int
main(int argc, char **argv)
{
    int        k, rc, status;
    char       la[64], *ph, *tok, *save;
    pid_t      pid;
    uint32_t   chunk, lo, n;
    int64_t    deadline;
    json_t    *res, *j;
    stats_t    t;
    sample_t   base, after_login, held;
    double     seconds, rate;
    char       name[64];
    struct sigaction  sa;

    if (parse_options(argc, argv) != 0) {
        usage();
        return 2;
    }

    if (im_client_init() != IM_CLIENT_OK) {
        fprintf(stderr, "im-bench: sodium_init() failed\n");
        return 1;
    }

    if (opt.key && read_secret(opt.key) != 0) {
        return 1;
    }

    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t) opt.port);

    if (inet_pton(AF_INET, opt.host, &dst.sin_addr) != 1
        || (ntohl(dst.sin_addr.s_addr) >> 24) != 127)
    {
        fprintf(stderr, "im-bench: --host must be a loopback IPv4 "
                "address\n");
        return 2;
    }

    snprintf(host_header, sizeof(host_header), "%s:%d", opt.host, opt.port);

    shm = mmap(NULL, sizeof(shm_t), PROT_READ|PROT_WRITE,
               MAP_SHARED|MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED) {
        fprintf(stderr, "im-bench: mmap(): %s\n", strerror(errno));
        return 1;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* even slices: the pairs (2k, 2k+1) stay in one process */

    chunk = (opt.sessions + (uint32_t) opt.procs - 1) / (uint32_t) opt.procs;
    chunk = (chunk + 1) & ~1u;

    for (k = 0; k < opt.procs; k++) {
        lo = (uint32_t) k * chunk;
        n = lo >= opt.sessions ? 0 : opt.sessions - lo;
        n = n < chunk ? n : chunk;

        pid = fork();

        if (pid == -1) {
            fprintf(stderr, "im-bench: fork(): %s\n", strerror(errno));
            kill_children();
            return 1;
        }

        if (pid == 0) {
            _exit(child_main(k, lo, n));
        }

        children[k] = pid;
        shm->child[k].pid = pid;
    }

    res = json_object();

    json_object_set_new(res, "proto", json_string(
        opt.proto == PROTO_IM ? "im"
        : opt.proto == PROTO_NCHAN ? "nchan" : "mqtt"));
    json_object_set_new(res, "sessions", json_integer(opt.sessions));
    json_object_set_new(res, "procs", json_integer(opt.procs));
    json_object_set_new(res, "source_addresses", json_integer(opt.src));
    json_object_set_new(res, "body_bytes", json_integer((json_int_t) opt.body));
    json_object_set_new(res, "client_msg_id", json_boolean(opt.cmid));
    json_object_set_new(res, "ack", json_string(
        opt.ack == ACK_NONE ? "none" : opt.ack == ACK_EACH ? "each"
                                                           : "batch"));

    /* tokens are minted: wait for every child */

    deadline = now_ns() + 120 * NS;

    for (k = 0; k < opt.procs; k++) {
        while (!__atomic_load_n(&shm->child[k].ready, __ATOMIC_ACQUIRE)) {
            if (!children_alive() || now_ns() > deadline) {
                fprintf(stderr, "im-bench: clients did not start\n");
                kill_children();
                return 1;
            }

            usleep(5000);
        }
    }

    rc = 0;
    sample(&base);
    after_login = base;

    json_object_set_new(res, "nginx_workers",
                        json_integer(base.nginx_workers));

    ph = strdup(opt.phases);

    for (tok = strtok_r(ph, ",", &save); tok && rc == 0;
         tok = strtok_r(NULL, ",", &save))
    {
        if (strcmp(tok, "login") == 0) {
            say("login: %u sessions, %d processes, window %u",
                opt.sessions, opt.procs, opt.window);

            shm->window = (opt.window + opt.procs - 1) / opt.procs;
            load_avg(la, sizeof(la));

            sample(&base);

            if (order(CMD_LOGIN, opt.login_timeout * 4
                                 + opt.sessions / 200.0 + 60) != 0)
            {
                rc = 1;
                break;
            }

            sample(&after_login);
            merge(&t);

            j = json_login(&t);
            json_object_set_new(j, "load_before", json_string(la));
            json_object_set_new(j, "server_cpu_s",
                                json_real(server_cpu(&base, &after_login)));
            json_object_set_new(j, "server_cpu_us_per_login",
                json_real(t.login_ok ? server_cpu(&base, &after_login) * 1e6
                                       / (double) t.login_ok : 0));
            json_object_set_new(j, "cpu_s", json_sample(&base, &after_login));
            json_object_set_new(j, "errors", json_errors(&t));
            json_object_set_new(res, "login", j);

            say("login: %" PRIu64 " ok, %" PRIu64 " failed, %" PRIu64
                " timed out; avg %.2f ms, p99 %.2f ms, %.0f/s",
                t.login_ok, t.login_failed, t.login_timeout,
                hist_avg(&t.login), hist_pct(&t.login, 0.99),
                json_real_value(json_object_get(j, "per_s")));

            if (t.login_ok == 0) {
                fprintf(stderr, "im-bench: no session logged in: %s\n",
                        shm->child[0].err);
                rc = 1;
            }

        } else if (strcmp(tok, "hold") == 0) {
            say("hold: %.0f s", opt.hold);

            deadline = now_ns() + (int64_t) (opt.hold * NS);

            while (now_ns() < deadline && children_alive()) {
                usleep(20000);
            }

            sample(&held);
            merge(&t);
            load_avg(la, sizeof(la));

            n = (uint32_t) (t.login_ok - t.closed);

            j = json_pack("{s:f, s:I, s:I, s:o, s:o, s:o, s:o}",
                          "seconds", opt.hold,
                          "open", (json_int_t) n,
                          "closed", (json_int_t) t.closed,
                          "rss_kb_before", json_pack("{s:I, s:I, s:I}",
                              "nginx", (json_int_t) base.rss_kb[0],
                              "redis", (json_int_t) base.rss_kb[1],
                              "broker", (json_int_t) base.rss_kb[2]),
                          "rss_kb_after", json_pack("{s:I, s:I, s:I}",
                              "nginx", (json_int_t) held.rss_kb[0],
                              "redis", (json_int_t) held.rss_kb[1],
                              "broker", (json_int_t) held.rss_kb[2]),
                          "pss_kb_before", json_pack("{s:I, s:I, s:I}",
                              "nginx", (json_int_t) base.pss_kb[0],
                              "redis", (json_int_t) base.pss_kb[1],
                              "broker", (json_int_t) base.pss_kb[2]),
                          "pss_kb_after", json_pack("{s:I, s:I, s:I}",
                              "nginx", (json_int_t) held.pss_kb[0],
                              "redis", (json_int_t) held.pss_kb[1],
                              "broker", (json_int_t) held.pss_kb[2]));

            if (n > 0) {
                json_object_set_new(j, "bytes_per_session", json_pack(
                    "{s:f, s:f, s:f, s:f, s:f, s:f}",
                    "nginx", (held.rss_kb[0] - base.rss_kb[0]) * 1024.0 / n,
                    "redis", (held.rss_kb[1] - base.rss_kb[1]) * 1024.0 / n,
                    "broker", (held.rss_kb[2] - base.rss_kb[2]) * 1024.0 / n,
                    "nginx_pss",
                        (held.pss_kb[0] - base.pss_kb[0]) * 1024.0 / n,
                    "redis_pss",
                        (held.pss_kb[1] - base.pss_kb[1]) * 1024.0 / n,
                    "broker_pss",
                        (held.pss_kb[2] - base.pss_kb[2]) * 1024.0 / n));

                if (base.redis_used >= 0 && held.redis_used >= 0) {
                    json_object_set_new(j, "redis_used_memory_per_session",
                        json_real((double) (held.redis_used
                                            - base.redis_used) / n));
                }
            }

            json_object_set_new(j, "server_cpu_s",
                                json_real(server_cpu(&after_login, &held)));
            json_object_set_new(j, "load", json_string(la));
            json_object_set_new(res, "hold", j);

            say("hold: %u open; nginx %+ld kB, redis %+ld kB, broker "
                "%+ld kB RSS", n, held.rss_kb[0] - base.rss_kb[0],
                held.rss_kb[1] - base.rss_kb[1],
                held.rss_kb[2] - base.rss_kb[2]);

        } else if (strcmp(tok, "chat") == 0
                   || strncmp(tok, "chat:", 5) == 0)
        {
            /* "chat:R" is another chat phase at R messages/s */

            rate = tok[4] ? atof(tok + 5) : opt.rate;

            if (rate <= 0) {
                fprintf(stderr, "im-bench: bad phase \"%s\"\n", tok);
                rc = 2;
                break;
            }

            say("chat: %.0f messages/s for %.0f s", rate, opt.chat);

            if (run_chat(CMD_CHAT, rate, opt.chat, 0, &j) != 0) {
                rc = 1;
                break;
            }

            snprintf(name, sizeof(name), "chat_%.0f", rate);
            json_object_set_new(res, tok[4] ? name : "chat", j);

        } else if (strcmp(tok, "lanying") == 0) {
            seconds = opt.sessions / opt.arrival;

            say("lanying: %u users arriving at %.0f/s, a message every "
                "%.1f s each, %.0f s more", opt.sessions, opt.arrival,
                opt.interval, opt.lanying_chat);

            if (run_chat(CMD_LANYING, 0, opt.lanying_chat, seconds, &j)
                != 0)
            {
                rc = 1;
                break;
            }

            json_object_set_new(j, "arrival_per_s", json_real(opt.arrival));
            json_object_set_new(j, "interval_s", json_real(opt.interval));
            json_object_set_new(res, "lanying", j);

            merge(&t);
            say("lanying: login avg %.2f ms, p99 %.2f ms (%" PRIu64 " ok, %"
                PRIu64 " failed)", hist_avg(&t.login),
                hist_pct(&t.login, 0.99), t.login_ok,
                t.login_failed + t.login_timeout);

        } else {
            fprintf(stderr, "im-bench: unknown phase \"%s\"\n", tok);
            rc = 2;
        }
    }

    free(ph);

    /* the children exit on it: no acks to wait for */

    shm->cmd = CMD_STOP;
    (void) __atomic_add_fetch(&shm->gen, 1, __ATOMIC_ACQ_REL);

    deadline = now_ns() + 10 * NS;

    for (k = 0; k < opt.procs; k++) {
        while (children[k] > 0) {
            pid = waitpid(children[k], &status, WNOHANG);

            if (pid == children[k] || pid == -1) {
                children[k] = 0;
                break;
            }

            if (now_ns() > deadline) {
                break;
            }

            usleep(5000);
        }
    }

    kill_children();

    for (k = 0; k < opt.procs; k++) {
        if (shm->child[k].err[0]) {
            json_object_set_new(res, "last_client_error",
                                json_string(shm->child[k].err));
            break;
        }
    }

    json_object_set_new(res, "ok", json_boolean(rc == 0));

    if (opt.json) {
        if (json_dump_file(res, opt.json, JSON_INDENT(2)) != 0) {
            fprintf(stderr, "im-bench: cannot write %s\n", opt.json);
            rc = 1;
        }

    } else {
        json_dumpf(res, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
    }

    json_decref(res);

    return rc;
}
