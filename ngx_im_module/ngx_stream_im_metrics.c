
/*
 * Copyright (C) ngx_im authors
 */


/*
 * Metrics and health of every worker, in one shared memory zone.
 *
 * Counters are atomic adds, one per event, no lock.  A gauge or a
 * link state belongs to one worker: each worker owns a slot, writes
 * only its own, and readers sum the slots of the workers that still
 * run, so a worker that was killed takes its gauges along.  Slots are
 * claimed under the zone's mutex at worker start and given back at
 * exit; every claim clears the slots of workers that died, so a pid
 * reused later does not bring a dead worker back.  A worker that found
 * no free slot (more than 128 workers, old ones still draining) tries
 * again at each heartbeat, and /health fails while one is unseen.
 *
 * The zone outlives a reload (same name and size): counters go on.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <time.h>

#include "ngx_stream_im_metrics.h"
#include "im.pb-c.h"


#define NGX_STREAM_IM_M_MAGIC    0x696d6d31      /* "imm1" */
#define NGX_STREAM_IM_M_WORKERS  128
#define NGX_STREAM_IM_M_BUCKETS  14
#define NGX_STREAM_IM_M_CLOSES   9               /* 8 codes, then others */

/* a new worker's first seconds: its links come up while others serve */
#define NGX_STREAM_IM_M_STARTING 10000

/* a resync after a ready takes a moment; a longer one is a fault */
#define NGX_STREAM_IM_M_RESYNC   3000


typedef struct {
    ngx_atomic_t                  bucket[NGX_STREAM_IM_M_BUCKETS + 1];
    ngx_atomic_t                  sum_us;
} ngx_stream_im_histogram_t;


typedef struct {
    ngx_pid_t                     pid;
    ngx_msec_t                    claimed;
    ngx_msec_t                    updated;
    ngx_msec_t                    stale;      /* routes stale since */
    ngx_uint_t                    authenticated;
    ngx_uint_t                    unauthenticated;
    unsigned                      command:1;
    unsigned                      subscriber:1;
    unsigned                      routes:1;
    unsigned                      ready:1;    /* healthy at least once */
} ngx_stream_im_worker_t;


typedef struct {
    uint32_t                      magic;
    uint32_t                      size;
    ngx_atomic_t                  counter[NGX_STREAM_IM_M_COUNTERS];
    ngx_atomic_t                  frames[NGX_STREAM_IM_M_FRAME_TYPES + 1];
    ngx_atomic_t                  logins[NGX_STREAM_IM_M_CODES + 1];
    ngx_atomic_t                  unslotted;  /* workers without a slot */
    ngx_atomic_t                  errors[NGX_STREAM_IM_M_CODES];
    ngx_atomic_t                  closes[NGX_STREAM_IM_M_CLOSES];
    ngx_atomic_t                  delivered[3];
    ngx_stream_im_histogram_t     histogram[2];
    ngx_stream_im_worker_t        worker[NGX_STREAM_IM_M_WORKERS];
} ngx_stream_im_metrics_t;


static ngx_int_t ngx_stream_im_metrics_init_zone(ngx_shm_zone_t *zone,
    void *data);
static ngx_int_t ngx_stream_im_metrics_claim(void);
static ngx_uint_t ngx_stream_im_metrics_running(ngx_pid_t pid);
static ngx_uint_t ngx_stream_im_metrics_workers(ngx_stream_im_worker_t *copy);
static ngx_uint_t ngx_stream_im_metrics_stalled(ngx_stream_im_worker_t *w);
static ngx_uint_t ngx_stream_im_metrics_starting(ngx_stream_im_worker_t *w);
static ngx_uint_t ngx_stream_im_metrics_resyncing(
    ngx_stream_im_worker_t *w);
static ngx_uint_t ngx_stream_im_metrics_healthy(ngx_stream_im_worker_t *w);
static u_char *ngx_stream_im_metrics_family(u_char *p, u_char *last,
    char *name, char *type, char *help);
static u_char *ngx_stream_im_metrics_code_name(u_char *p, u_char *last,
    ngx_uint_t code);
static u_char *ngx_stream_im_metrics_histogram(u_char *p, u_char *last,
    char *name, char *help, ngx_stream_im_histogram_t *h);


static ngx_stream_im_metrics_t  *ngx_stream_im_metrics;
static ngx_slab_pool_t          *ngx_stream_im_metrics_shpool;
static ngx_stream_im_worker_t   *ngx_stream_im_metrics_self;


static ngx_uint_t  ngx_stream_im_close_codes[NGX_STREAM_IM_M_CLOSES - 1] = {
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011
};

static uint32_t  ngx_stream_im_bucket_us[NGX_STREAM_IM_M_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000
};

static char  *ngx_stream_im_bucket_le[NGX_STREAM_IM_M_BUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1", "2.5", "5", "10"
};

static char  *ngx_stream_im_paths[3] = { "live", "replay", "sync" };

static char  *ngx_stream_im_counter_names[NGX_STREAM_IM_M_COUNTERS][2] = {
    { "ngx_im_messages_stored_total",
      "Messages stored (one per SendAck, a group send counts once)." },
    { "ngx_im_slow_consumer_cutoffs_total",
      "Sessions closed because im_send_queue was full." },
    { "ngx_im_rate_limited_total",
      "Frames refused or sessions cut off by im_rate." },
    { "ngx_im_goaways_total",
      "Goaway frames sent (reload, quit)." },
    { "ngx_im_redis_reconnects_total",
      "Redis links brought up again after a failure." },
    { "ngx_im_redis_wait_failed_total",
      "WAITs answered by fewer replicas than im_redis_wait in time "
      "(the sends behind them were answered UNAVAILABLE)." }
};


ngx_shm_zone_t *
ngx_stream_im_metrics_zone(ngx_conf_t *cf, ngx_str_t *name, size_t size,
    void *tag)
{
    ngx_shm_zone_t  *zone;

    zone = ngx_shared_memory_add(cf, name, size, tag);
    if (zone == NULL) {
        return NULL;
    }

    zone->init = ngx_stream_im_metrics_init_zone;

    return zone;
}


static ngx_int_t
ngx_stream_im_metrics_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_slab_pool_t          *shpool;
    ngx_stream_im_metrics_t  *m;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    /* a reload: the counters go on, unless this build lays them out anew */

    m = data ? data : shpool->data;

    if (m && m->magic == NGX_STREAM_IM_M_MAGIC
        && m->size == sizeof(ngx_stream_im_metrics_t))
    {
        zone->data = m;
        shpool->data = m;
        return NGX_OK;
    }

    m = ngx_slab_calloc(shpool, sizeof(ngx_stream_im_metrics_t));
    if (m == NULL) {
        ngx_log_error(NGX_LOG_EMERG, zone->shm.log, 0,
                      "im_metrics_zone \"%V\" is too small", &zone->shm.name);
        return NGX_ERROR;
    }

    m->magic = NGX_STREAM_IM_M_MAGIC;
    m->size = sizeof(ngx_stream_im_metrics_t);

    zone->data = m;
    shpool->data = m;

    return NGX_OK;
}


ngx_int_t
ngx_stream_im_metrics_init_worker(ngx_shm_zone_t *zone, ngx_log_t *log)
{
    ngx_stream_im_metrics = zone->data;
    ngx_stream_im_metrics_shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (ngx_stream_im_metrics_claim() != NGX_OK) {
        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->unslotted, 1);

        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "im metrics: all %d worker slots are taken, "
                      "trying again at each heartbeat",
                      NGX_STREAM_IM_M_WORKERS);
    }

    return NGX_OK;
}


/* a slot for this worker; the slots of dead workers are cleared */

static ngx_int_t
ngx_stream_im_metrics_claim(void)
{
    ngx_uint_t               i;
    ngx_stream_im_worker_t  *w, *free;

    free = NULL;

    ngx_shmtx_lock(&ngx_stream_im_metrics_shpool->mutex);

    for (i = 0; i < NGX_STREAM_IM_M_WORKERS; i++) {
        w = &ngx_stream_im_metrics->worker[i];

        if (w->pid && !ngx_stream_im_metrics_running(w->pid)) {
            ngx_memzero(w, sizeof(ngx_stream_im_worker_t));
        }

        if (w->pid == 0 && free == NULL) {
            free = w;
        }
    }

    if (free) {
        free->pid = ngx_pid;
        free->claimed = ngx_current_msec;
        free->updated = ngx_current_msec;
    }

    ngx_shmtx_unlock(&ngx_stream_im_metrics_shpool->mutex);

    ngx_stream_im_metrics_self = free;

    return free ? NGX_OK : NGX_DECLINED;
}


void
ngx_stream_im_metrics_exit_worker(void)
{
    if (ngx_stream_im_metrics_self) {
        ngx_stream_im_metrics_self->pid = 0;
        ngx_stream_im_metrics_self = NULL;

    } else if (ngx_stream_im_metrics) {
        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->unslotted, -1);
    }
}


/* every worker runs as the same user: EPERM is another user's process */

static ngx_uint_t
ngx_stream_im_metrics_running(ngx_pid_t pid)
{
    return pid != 0 && kill(pid, 0) == 0;
}


void
ngx_stream_im_metrics_count(ngx_uint_t counter)
{
    if (ngx_stream_im_metrics) {
        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->counter[counter],
                                    1);
    }
}


void
ngx_stream_im_metrics_frame(ngx_uint_t type)
{
    if (ngx_stream_im_metrics) {
        type = ngx_min(type, NGX_STREAM_IM_M_FRAME_INVALID);
        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->frames[type], 1);
    }
}


/*
 * 0: signed in; NGX_STREAM_IM_M_REFRESH: a token refreshed; else the
 * im.Error.Code that refused the Auth
 */

void
ngx_stream_im_metrics_login(ngx_uint_t code)
{
    if (ngx_stream_im_metrics && code <= NGX_STREAM_IM_M_REFRESH) {
        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->logins[code], 1);
    }
}


void
ngx_stream_im_metrics_error(ngx_uint_t code)
{
    if (ngx_stream_im_metrics && code < NGX_STREAM_IM_M_CODES) {
        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->errors[code], 1);
    }
}


void
ngx_stream_im_metrics_close(ngx_uint_t status)
{
    ngx_uint_t  i;

    if (ngx_stream_im_metrics == NULL) {
        return;
    }

    for (i = 0; i < NGX_STREAM_IM_M_CLOSES - 1; i++) {
        if (ngx_stream_im_close_codes[i] == status) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->closes[i], 1);
}


void
ngx_stream_im_metrics_delivered(ngx_uint_t path, ngx_uint_t n)
{
    if (ngx_stream_im_metrics && n) {
        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->delivered[path],
                                    n);
    }
}


/* microseconds, wrapping: a start time for ngx_stream_im_metrics_observe */

uint32_t
ngx_stream_im_metrics_clock(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint32_t) ((uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
}


void
ngx_stream_im_metrics_observe(ngx_uint_t histogram, uint32_t start)
{
    uint32_t                    us;
    ngx_uint_t                  i;
    ngx_stream_im_histogram_t  *h;

    if (ngx_stream_im_metrics == NULL) {
        return;
    }

    us = ngx_stream_im_metrics_clock() - start;
    h = &ngx_stream_im_metrics->histogram[histogram];

    for (i = 0; i < NGX_STREAM_IM_M_BUCKETS; i++) {
        if (us <= ngx_stream_im_bucket_us[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&h->bucket[i], 1);
    (void) ngx_atomic_fetch_add(&h->sum_us, us);
}


void
ngx_stream_im_metrics_sessions(ngx_uint_t authenticated,
    ngx_uint_t unauthenticated)
{
    if (ngx_stream_im_metrics_self) {
        ngx_stream_im_metrics_self->authenticated = authenticated;
        ngx_stream_im_metrics_self->unauthenticated = unauthenticated;
    }
}


/* the Redis link reports its state at each change and each heartbeat */

void
ngx_stream_im_metrics_link(ngx_uint_t command, ngx_uint_t subscriber)
{
    ngx_stream_im_worker_t  *w;

    if (ngx_stream_im_metrics_self == NULL) {

        /* no slot at start: maybe the old workers have gone since */

        if (ngx_stream_im_metrics == NULL
            || ngx_stream_im_metrics_claim() != NGX_OK)
        {
            return;
        }

        (void) ngx_atomic_fetch_add(&ngx_stream_im_metrics->unslotted, -1);
    }

    w = ngx_stream_im_metrics_self;

    w->command = command;
    w->subscriber = subscriber;
    w->updated = ngx_current_msec;

    if (ngx_stream_im_metrics_healthy(w)) {
        w->ready = 1;
    }
}


void
ngx_stream_im_metrics_routes(ngx_uint_t current)
{
    ngx_stream_im_worker_t  *w;

    w = ngx_stream_im_metrics_self;

    if (w) {
        if (w->routes && !current) {
            w->stale = ngx_current_msec;
        }

        w->routes = current;

        if (ngx_stream_im_metrics_healthy(w)) {
            w->ready = 1;
        }
    }
}


/* the running workers' slots, copied once: one answer sees one state */

static ngx_uint_t
ngx_stream_im_metrics_workers(ngx_stream_im_worker_t *copy)
{
    ngx_uint_t               i, n;
    ngx_stream_im_worker_t  *w;

    n = 0;

    for (i = 0; i < NGX_STREAM_IM_M_WORKERS; i++) {
        w = &ngx_stream_im_metrics->worker[i];
        copy[n] = *w;

        if (ngx_stream_im_metrics_running(copy[n].pid)) {
            n++;
        }
    }

    return n;
}


/* the exposition is bounded: fixed families, one line per worker slot */

size_t
ngx_stream_im_metrics_text_size(void)
{
    return 32768 + NGX_STREAM_IM_M_WORKERS * 64;
}


u_char *
ngx_stream_im_metrics_text(u_char *p, u_char *last)
{
    ngx_uint_t                       i, n, auth, unauth;
    const ProtobufCFieldDescriptor  *fd;
    ngx_stream_im_metrics_t         *m;
    ngx_stream_im_worker_t           w[NGX_STREAM_IM_M_WORKERS];

    p = ngx_stream_im_metrics_family(p, last, "ngx_im_build_info", "gauge",
                                     "The ngx_im module's version.");
    p = ngx_slprintf(p, last, "ngx_im_build_info{version=\"%s\"} 1\n",
                     NGX_STREAM_IM_VERSION);

    m = ngx_stream_im_metrics;

    if (m == NULL) {
        return p;
    }

    n = ngx_stream_im_metrics_workers(w);

    auth = 0;
    unauth = 0;

    for (i = 0; i < n; i++) {
        auth += w[i].authenticated;
        unauth += w[i].unauthenticated;
    }

    p = ngx_stream_im_metrics_family(p, last, "ngx_im_sessions", "gauge",
                                     "Open WebSocket sessions.");
    p = ngx_slprintf(p, last,
                     "ngx_im_sessions{state=\"authenticated\"} %ui\n"
                     "ngx_im_sessions{state=\"unauthenticated\"} %ui\n",
                     auth, unauth);

    p = ngx_stream_im_metrics_family(p, last, "ngx_im_logins_total",
                                     "counter", "Auth frames answered, by "
                                     "result (ok, refresh or the refusal's "
                                     "code).");

    for (i = 0; i <= NGX_STREAM_IM_M_REFRESH; i++) {
        if (i == 0 || m->logins[i]) {
            p = ngx_slprintf(p, last, "ngx_im_logins_total{result=\"");
            p = (i == 0) ? ngx_slprintf(p, last, "ok")
                : (i == NGX_STREAM_IM_M_REFRESH)
                  ? ngx_slprintf(p, last, "refresh")
                  : ngx_stream_im_metrics_code_name(p, last, i);
            p = ngx_slprintf(p, last, "\"} %uA\n", m->logins[i]);
        }
    }

    p = ngx_stream_im_metrics_family(p, last, "ngx_im_frames_received_total",
                                     "counter", "im.Frame messages received, "
                                     "by body (invalid: did not decode).");

    for (i = 0; i <= NGX_STREAM_IM_M_FRAME_INVALID; i++) {
        if (m->frames[i] == 0) {
            continue;
        }

        if (i == NGX_STREAM_IM_M_FRAME_INVALID) {
            p = ngx_slprintf(p, last, "ngx_im_frames_received_total"
                             "{type=\"invalid\"} %uA\n", m->frames[i]);
            continue;
        }

        fd = protobuf_c_message_descriptor_get_field(&im__frame__descriptor,
                                                     (unsigned) i);

        p = ngx_slprintf(p, last, "ngx_im_frames_received_total"
                         "{type=\"%s\"} %uA\n",
                         (i == 0 || fd == NULL) ? "empty" : fd->name,
                         m->frames[i]);
    }

    for (i = 0; i < NGX_STREAM_IM_M_COUNTERS; i++) {
        p = ngx_stream_im_metrics_family(p, last,
                                         ngx_stream_im_counter_names[i][0],
                                         "counter",
                                         ngx_stream_im_counter_names[i][1]);
        p = ngx_slprintf(p, last, "%s %uA\n",
                         ngx_stream_im_counter_names[i][0], m->counter[i]);
    }

    p = ngx_stream_im_metrics_family(p, last,
                                     "ngx_im_messages_delivered_total",
                                     "counter", "Message frames queued to "
                                     "sessions, by path.");

    for (i = 0; i < 3; i++) {
        p = ngx_slprintf(p, last, "ngx_im_messages_delivered_total"
                         "{path=\"%s\"} %uA\n", ngx_stream_im_paths[i],
                         m->delivered[i]);
    }

    p = ngx_stream_im_metrics_family(p, last, "ngx_im_errors_total",
                                     "counter", "Error frames sent, by code.");

    for (i = 0; i < NGX_STREAM_IM_M_CODES; i++) {
        if (m->errors[i]) {
            p = ngx_slprintf(p, last, "ngx_im_errors_total{code=\"");
            p = ngx_stream_im_metrics_code_name(p, last, i);
            p = ngx_slprintf(p, last, "\"} %uA\n", m->errors[i]);
        }
    }

    p = ngx_stream_im_metrics_family(p, last, "ngx_im_closes_total",
                                     "counter", "WebSocket close frames the "
                                     "server sent, by status code.");

    for (i = 0; i < NGX_STREAM_IM_M_CLOSES; i++) {
        if (m->closes[i] == 0) {
            continue;
        }

        if (i == NGX_STREAM_IM_M_CLOSES - 1) {
            p = ngx_slprintf(p, last, "ngx_im_closes_total{code=\"other\"} "
                             "%uA\n", m->closes[i]);

        } else {
            p = ngx_slprintf(p, last, "ngx_im_closes_total{code=\"%ui\"} "
                             "%uA\n", ngx_stream_im_close_codes[i],
                             m->closes[i]);
        }
    }

    p = ngx_stream_im_metrics_family(p, last, "ngx_im_redis_up", "gauge",
                                     "1 when the worker's Redis command and "
                                     "subscriber links are up.");

    for (i = 0; i < n; i++) {
        p = ngx_slprintf(p, last, "ngx_im_redis_up{worker=\"%P\"} %d\n",
                         w[i].pid, (w[i].command && w[i].subscriber) ? 1 : 0);
    }

    p = ngx_stream_im_metrics_histogram(p, last, "ngx_im_send_ack_seconds",
                                        "From a Send read to its SendAck "
                                        "queued.", &m->histogram[0]);

    return ngx_stream_im_metrics_histogram(p, last,
                                           "ngx_im_redis_roundtrip_seconds",
                                           "From a Redis command queued to "
                                           "its reply.", &m->histogram[1]);
}


static u_char *
ngx_stream_im_metrics_family(u_char *p, u_char *last, char *name, char *type,
    char *help)
{
    return ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                        name, help, name, type);
}


static u_char *
ngx_stream_im_metrics_code_name(u_char *p, u_char *last, ngx_uint_t code)
{
    const char                *s;
    const ProtobufCEnumValue  *v;

    v = protobuf_c_enum_descriptor_get_value(&im__error__code__descriptor,
                                             (int) code);
    if (v == NULL) {
        return ngx_slprintf(p, last, "%ui", code);
    }

    for (s = v->name; *s && p < last; s++) {
        *p++ = ngx_tolower(*s);
    }

    return p;
}


static u_char *
ngx_stream_im_metrics_histogram(u_char *p, u_char *last, char *name,
    char *help, ngx_stream_im_histogram_t *h)
{
    ngx_uint_t         i;
    ngx_atomic_uint_t  n, sum;

    p = ngx_stream_im_metrics_family(p, last, name, "histogram", help);

    /* the sum first: a concurrent observation may only raise the count */

    sum = h->sum_us;
    n = 0;

    for (i = 0; i < NGX_STREAM_IM_M_BUCKETS; i++) {
        n += h->bucket[i];
        p = ngx_slprintf(p, last, "%s_bucket{le=\"%s\"} %uA\n", name,
                         ngx_stream_im_bucket_le[i], n);
    }

    n += h->bucket[NGX_STREAM_IM_M_BUCKETS];

    return ngx_slprintf(p, last, "%s_bucket{le=\"+Inf\"} %uA\n"
                        "%s_sum %uA.%06uA\n%s_count %uA\n",
                        name, n, name, sum / 1000000, sum % 1000000,
                        name, n);
}


size_t
ngx_stream_im_metrics_health_size(void)
{
    return 256 + NGX_STREAM_IM_M_WORKERS * 128;
}


/*
 * *ok: every running worker's links are up and its routes are current,
 * but for one that is just starting while another one serves
 */

u_char *
ngx_stream_im_metrics_health(u_char *p, u_char *last, ngx_uint_t *ok)
{
    ngx_uint_t                i, n, good, serving, unslotted;
    ngx_stream_im_metrics_t  *m;
    ngx_stream_im_worker_t    w[NGX_STREAM_IM_M_WORKERS];

    m = ngx_stream_im_metrics;

    if (m == NULL) {
        *ok = 0;
        return ngx_slprintf(p, last, "{\"status\":\"unavailable\","
                            "\"reason\":\"no im server in this "
                            "configuration\"}\n");
    }

    n = ngx_stream_im_metrics_workers(w);
    unslotted = m->unslotted;

    good = 1;
    serving = 0;

    for (i = 0; i < n; i++) {
        if (ngx_stream_im_metrics_healthy(&w[i])) {
            serving++;

        } else if (!ngx_stream_im_metrics_starting(&w[i])) {
            good = 0;
        }
    }

    *ok = (good && serving && unslotted == 0);

    p = ngx_slprintf(p, last, "{\"status\":\"%s\",", *ok ? "ok"
                                                        : "unavailable");

    if (unslotted) {
        p = ngx_slprintf(p, last, "\"unseen_workers\":%ui,", unslotted);
    }

    p = ngx_slprintf(p, last, "\"workers\":[");

    for (i = 0; i < n; i++) {
        p = ngx_slprintf(p, last, "%s{\"pid\":%P,\"command\":\"%s\","
                         "\"subscriber\":\"%s\",\"routes\":\"%s\","
                         "\"stalled\":%s,\"starting\":%s}",
                         i ? "," : "", w[i].pid,
                         w[i].command ? "up" : "down",
                         w[i].subscriber ? "up" : "down",
                         w[i].routes ? "current"
                         : ngx_stream_im_metrics_resyncing(&w[i])
                           ? "resyncing" : "stale",
                         ngx_stream_im_metrics_stalled(&w[i])
                         ? "true" : "false",
                         (!ngx_stream_im_metrics_healthy(&w[i])
                          && ngx_stream_im_metrics_starting(&w[i]))
                         ? "true" : "false");
    }

    return ngx_slprintf(p, last, "]}\n");
}


static ngx_uint_t
ngx_stream_im_metrics_stalled(ngx_stream_im_worker_t *w)
{
    return (ngx_msec_int_t) (ngx_current_msec - w->updated)
           >= NGX_STREAM_IM_M_STALLED;
}


/* never ready yet and young: its links are still coming up */

static ngx_uint_t
ngx_stream_im_metrics_starting(ngx_stream_im_worker_t *w)
{
    return !w->ready
           && (ngx_msec_int_t) (ngx_current_msec - w->claimed)
              < NGX_STREAM_IM_M_STARTING;
}


/* routes being set again after a ready, for a moment */

static ngx_uint_t
ngx_stream_im_metrics_resyncing(ngx_stream_im_worker_t *w)
{
    return !w->routes && w->ready
           && (ngx_msec_int_t) (ngx_current_msec - w->stale)
              < NGX_STREAM_IM_M_RESYNC;
}


static ngx_uint_t
ngx_stream_im_metrics_healthy(ngx_stream_im_worker_t *w)
{
    return w->command && w->subscriber
           && (w->routes || ngx_stream_im_metrics_resyncing(w))
           && !ngx_stream_im_metrics_stalled(w);
}
