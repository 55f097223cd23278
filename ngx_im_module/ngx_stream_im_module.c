
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


static void *ngx_stream_im_create_main_conf(ngx_conf_t *cf);
static char *ngx_stream_im_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_stream_im_create_srv_conf(ngx_conf_t *cf);
static char *ngx_stream_im_merge_srv_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_stream_im(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_stream_im_token_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_im_origins(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_im_metrics_zone_set(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_stream_im_rate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_stream_im_init_process(ngx_cycle_t *cycle);
static void ngx_stream_im_exit_process(ngx_cycle_t *cycle);


static ngx_conf_num_bounds_t  ngx_stream_im_max_frame_bounds = {
    ngx_conf_check_num_bounds, 1024, 16 * 1024 * 1024
};


static ngx_conf_num_bounds_t  ngx_stream_im_inbox_max_bounds = {
    ngx_conf_check_num_bounds, 1, 100000000
};


static ngx_conf_num_bounds_t  ngx_stream_im_db_bounds = {
    ngx_conf_check_num_bounds, 0, 65535
};


static ngx_conf_num_bounds_t  ngx_stream_im_count_bounds = {
    ngx_conf_check_num_bounds, 1, 1000000
};


static ngx_command_t  ngx_stream_im_commands[] = {

    { ngx_string("im"),
      NGX_STREAM_SRV_CONF|NGX_CONF_NOARGS,
      ngx_stream_im,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_redis"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_stream_im_redis_set,
      NGX_STREAM_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_redis_password"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_stream_im_redis_password,
      NGX_STREAM_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_redis_sentinel_password"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_stream_im_redis_password,
      NGX_STREAM_MAIN_CONF_OFFSET,
      1,
      NULL },

    { ngx_string("im_redis_db"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_MAIN_CONF_OFFSET,
      offsetof(ngx_stream_im_main_conf_t, redis)
          + offsetof(ngx_stream_im_redis_conf_t, db),
      &ngx_stream_im_db_bounds },

    { ngx_string("im_redis_wait"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE12,
      ngx_stream_im_redis_wait_set,
      NGX_STREAM_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_token_key"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_stream_im_token_key,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_auth_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, auth_timeout),
      NULL },

    { ngx_string("im_ping_interval"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, ping_interval),
      NULL },

    { ngx_string("im_idle_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, idle_timeout),
      NULL },

    { ngx_string("im_max_frame"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, max_frame),
      &ngx_stream_im_max_frame_bounds },

    { ngx_string("im_send_queue"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, send_queue),
      NULL },

    { ngx_string("im_inbox_max"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, inbox_max),
      &ngx_stream_im_inbox_max_bounds },

    { ngx_string("im_max_sessions_per_user"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, max_sessions),
      &ngx_stream_im_count_bounds },

    { ngx_string("im_max_unauthenticated"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, max_unauthenticated),
      &ngx_stream_im_count_bounds },

    { ngx_string("im_group_max_members"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, group_max),
      &ngx_stream_im_count_bounds },

    { ngx_string("im_presence_max"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, presence_max),
      &ngx_stream_im_count_bounds },

    { ngx_string("im_drain_window"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_im_srv_conf_t, drain_window),
      NULL },

    { ngx_string("im_rate"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE123,
      ngx_stream_im_rate,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_metrics_zone"),
      NGX_STREAM_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_stream_im_metrics_zone_set,
      NGX_STREAM_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_origins"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_1MORE,
      ngx_stream_im_origins,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_stream_module_t  ngx_stream_im_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_stream_im_create_main_conf,        /* create main configuration */
    ngx_stream_im_init_main_conf,          /* init main configuration */

    ngx_stream_im_create_srv_conf,         /* create server configuration */
    ngx_stream_im_merge_srv_conf           /* merge server configuration */
};


ngx_module_t  ngx_stream_im_module = {
    NGX_MODULE_V1,
    &ngx_stream_im_module_ctx,             /* module context */
    ngx_stream_im_commands,                /* module directives */
    NGX_STREAM_MODULE,                     /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_stream_im_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_stream_im_exit_process,            /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/*
 * Worker-wide scratch: frames are decoded from it and nothing in it
 * outlives one event handler, so idle sessions hold no buffers.
 */
static ngx_stream_im_arena_t  ngx_stream_im_arena;


/* what a timer that is not a connection's shows nginx's debug log */
ngx_connection_t  ngx_stream_im_timer_ident;


static void *
ngx_stream_im_create_main_conf(ngx_conf_t *cf)
{
    ngx_stream_im_main_conf_t  *imcf;

    imcf = ngx_pcalloc(cf->pool, sizeof(ngx_stream_im_main_conf_t));
    if (imcf == NULL) {
        return NULL;
    }

    ngx_stream_im_redis_conf_init(&imcf->redis);

    return imcf;
}


static char *
ngx_stream_im_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_stream_im_main_conf_t *imcf = conf;

    return ngx_stream_im_redis_conf_merge(cf, &imcf->redis);
}


static void *
ngx_stream_im_create_srv_conf(ngx_conf_t *cf)
{
    ngx_stream_im_srv_conf_t  *iscf;

    iscf = ngx_pcalloc(cf->pool, sizeof(ngx_stream_im_srv_conf_t));
    if (iscf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     iscf->keys = { 0 };
     *     iscf->origins = NULL;
     */

    iscf->auth_timeout = NGX_CONF_UNSET_MSEC;
    iscf->ping_interval = NGX_CONF_UNSET_MSEC;
    iscf->idle_timeout = NGX_CONF_UNSET_MSEC;
    iscf->max_frame = NGX_CONF_UNSET_SIZE;
    iscf->send_queue = NGX_CONF_UNSET_SIZE;
    iscf->inbox_max = NGX_CONF_UNSET_UINT;
    iscf->max_sessions = NGX_CONF_UNSET_UINT;
    iscf->max_unauthenticated = NGX_CONF_UNSET_UINT;
    iscf->drain_window = NGX_CONF_UNSET_MSEC;
    iscf->group_max = NGX_CONF_UNSET_UINT;
    iscf->presence_max = NGX_CONF_UNSET_UINT;
    iscf->rate = NGX_CONF_UNSET_UINT;
    iscf->rate_burst = NGX_CONF_UNSET_UINT;
    iscf->rate_bytes = NGX_CONF_UNSET_SIZE;

    return iscf;
}


static char *
ngx_stream_im_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_stream_im_srv_conf_t *prev = parent;
    ngx_stream_im_srv_conf_t *conf = child;

    ngx_str_t                    name;
    ngx_stream_im_main_conf_t   *imcf;
    ngx_stream_core_srv_conf_t  *cscf;

    if (conf->keys.nelts == 0) {
        conf->keys = prev->keys;
    }

    if (conf->origins == NULL) {
        conf->origins = prev->origins;
    }

    ngx_conf_merge_msec_value(conf->auth_timeout, prev->auth_timeout, 10000);
    ngx_conf_merge_msec_value(conf->ping_interval, prev->ping_interval,
                              30000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout, 90000);
    ngx_conf_merge_size_value(conf->max_frame, prev->max_frame, 65536);
    ngx_conf_merge_size_value(conf->send_queue, prev->send_queue, 262144);
    ngx_conf_merge_uint_value(conf->inbox_max, prev->inbox_max, 10000);
    ngx_conf_merge_uint_value(conf->max_sessions, prev->max_sessions, 16);
    ngx_conf_merge_uint_value(conf->max_unauthenticated,
                              prev->max_unauthenticated, 4096);
    ngx_conf_merge_msec_value(conf->drain_window, prev->drain_window, 10000);
    ngx_conf_merge_uint_value(conf->group_max, prev->group_max, 500);
    ngx_conf_merge_uint_value(conf->presence_max, prev->presence_max, 200);

    if (conf->rate == NGX_CONF_UNSET_UINT) {
        conf->rate = (prev->rate == NGX_CONF_UNSET_UINT) ? 100 : prev->rate;
        conf->rate_burst = (prev->rate_burst == NGX_CONF_UNSET_UINT)
                           ? 200 : prev->rate_burst;
        conf->rate_bytes = (prev->rate_bytes == NGX_CONF_UNSET_SIZE)
                           ? 1048576 : prev->rate_bytes;
    }

    if (conf->ping_interval == 0 || conf->auth_timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_ping_interval\" and \"im_auth_timeout\" "
                           "must not be zero");
        return NGX_CONF_ERROR;
    }

    if (conf->idle_timeout <= conf->ping_interval) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_idle_timeout\" must be greater than "
                           "\"im_ping_interval\"");
        return NGX_CONF_ERROR;
    }

    if (conf->send_queue < 2 * conf->max_frame) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_send_queue\" must be at least twice "
                           "\"im_max_frame\"");
        return NGX_CONF_ERROR;
    }

    if (conf->rate && 2 * conf->rate_bytes < conf->max_frame) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_rate\" bytes must be at least half of "
                           "\"im_max_frame\"");
        return NGX_CONF_ERROR;
    }

    imcf = ngx_stream_conf_get_module_main_conf(cf, ngx_stream_im_module);

    cscf = ngx_stream_conf_get_module_srv_conf(cf, ngx_stream_core_module);

    if (conf->enabled && cscf->handler != ngx_stream_im_session_handler) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im\" conflicts with another content handler "
                           "(proxy_pass, return, ...) in the same server");
        return NGX_CONF_ERROR;
    }

    if (conf->enabled && conf->keys.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im\" needs at least one \"im_token_key\"");
        return NGX_CONF_ERROR;
    }

    if (conf->max_frame > imcf->max_frame) {
        imcf->max_frame = conf->max_frame;
    }

    if (conf->enabled) {
        imcf->enabled = 1;

        if (imcf->first == NULL) {
            imcf->first = conf;
        }

        /* no im_metrics_zone: an implicit one */

        if (imcf->metrics == NULL) {
            ngx_str_set(&name, "ngx_im_metrics");

            imcf->metrics = ngx_stream_im_metrics_zone(cf, &name,
                                            NGX_STREAM_IM_METRICS_ZONE_SIZE,
                                            &ngx_stream_im_module);
            if (imcf->metrics == NULL) {
                return NGX_CONF_ERROR;
            }
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_stream_im(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_im_srv_conf_t *iscf = conf;

    ngx_stream_core_srv_conf_t  *cscf;

    cscf = ngx_stream_conf_get_module_srv_conf(cf, ngx_stream_core_module);

    if (cscf->handler) {
        return "is duplicate or conflicts with another content handler";
    }

    cscf->handler = ngx_stream_im_session_handler;
    iscf->enabled = 1;

    return NGX_CONF_OK;
}


static char *
ngx_stream_im_token_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_im_srv_conf_t *iscf = conf;

    u_char          *key;
    ssize_t          n;
    ngx_str_t       *value;
    ngx_file_t       file;
    ngx_file_info_t  fi;
    u_char           buf[1024];

    value = cf->args->elts;

    if (ngx_conf_full_name(cf->cycle, &value[1], 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (iscf->keys.elts == NULL
        && ngx_array_init(&iscf->keys, cf->pool, 2, NGX_STREAM_IM_KEY_LEN)
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = value[1];
    file.log = cf->log;

    file.fd = ngx_open_file(value[1].data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > (off_t) sizeof(buf))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is not a public key file", &value[1]);
        goto failed;
    }

    n = ngx_read_file(&file, buf, sizeof(buf), 0);

    if (n == NGX_ERROR) {
        goto failed;
    }

    key = ngx_array_push(&iscf->keys);
    if (key == NULL) {
        goto failed;
    }

    if (ngx_stream_im_key_parse(buf, n, key) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" holds no Ed25519 public key "
                           "(64 hex digits or k4.public.<base64url>)",
                           &value[1]);
        goto failed;
    }

    ngx_close_file(file.fd);

    return NGX_CONF_OK;

failed:

    ngx_close_file(file.fd);

    return NGX_CONF_ERROR;
}


static char *
ngx_stream_im_origins(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_im_srv_conf_t *iscf = conf;

    u_char      *p, *host;
    ngx_str_t   *value, *origin;
    ngx_uint_t   i;

    if (iscf->origins == NULL) {
        iscf->origins = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
        if (iscf->origins == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        /* an origin is scheme://host[:port], RFC 6454, nothing more */

        if (ngx_strncmp(value[i].data, "https://", 8) == 0) {
            host = value[i].data + 8;

        } else if (ngx_strncmp(value[i].data, "http://", 7) == 0) {
            host = value[i].data + 7;

        } else {
            goto invalid;
        }

        if (host == value[i].data + value[i].len) {
            goto invalid;
        }

        for (p = host; p < value[i].data + value[i].len; p++) {
            if (*p == '/' || *p == '?' || *p == '#' || *p == '@') {
                goto invalid;
            }
        }

        origin = ngx_array_push(iscf->origins);
        if (origin == NULL) {
            return NGX_CONF_ERROR;
        }

        *origin = value[i];
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid origin \"%V\", expected "
                       "http[s]://host[:port]", &value[i]);

    return NGX_CONF_ERROR;
}


/* im_metrics_zone <name> <size> */

static char *
ngx_stream_im_metrics_zone_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_stream_im_main_conf_t *imcf = conf;

    ssize_t     size;
    ngx_str_t  *value;

    if (imcf->metrics) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[2]);

    if (value[1].len == 0 || size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid im_metrics_zone \"%V %V\"",
                           &value[1], &value[2]);
        return NGX_CONF_ERROR;
    }

    if (size < NGX_STREAM_IM_METRICS_ZONE_MIN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "im_metrics_zone \"%V\" is too small, at least "
                           "%uzk", &value[1],
                           (size_t) NGX_STREAM_IM_METRICS_ZONE_MIN / 1024);
        return NGX_CONF_ERROR;
    }

    imcf->metrics = ngx_stream_im_metrics_zone(cf, &value[1], size,
                                               &ngx_stream_im_module);

    return imcf->metrics ? NGX_CONF_OK : NGX_CONF_ERROR;
}


/* im_rate off | <n>r/s [burst=<n>] [bytes=<size>] */

static char *
ngx_stream_im_rate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_im_srv_conf_t *iscf = conf;

    ssize_t      size;
    ngx_int_t    n;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (iscf->rate != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    i = 1;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts != 2) {
            return "takes no parameters with \"off\"";
        }

        iscf->rate = 0;
        iscf->rate_burst = 0;
        iscf->rate_bytes = 0;

        return NGX_CONF_OK;
    }

    if (value[1].len < 4
        || ngx_strncmp(value[1].data + value[1].len - 3, "r/s", 3) != 0
        || (n = ngx_atoi(value[1].data, value[1].len - 3)) <= 0
        || n > NGX_STREAM_IM_RATE_MAX)
    {
        goto invalid;
    }

    iscf->rate = n;
    iscf->rate_burst = ngx_min(2 * n, NGX_STREAM_IM_RATE_MAX);
    iscf->rate_bytes = 1048576;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0) {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);

            if (n <= 0 || n > NGX_STREAM_IM_RATE_MAX) {
                goto invalid;
            }

            iscf->rate_burst = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "bytes=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            size = ngx_parse_size(&s);

            if (size <= 0 || size > 0x3fffffff) {
                goto invalid;
            }

            iscf->rate_bytes = size;
            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid im_rate \"%V\", expected "
                       "off or <n>r/s [burst=<n>] [bytes=<size>]",
                       &value[i < cf->args->nelts ? i : 1]);

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_stream_im_init_process(ngx_cycle_t *cycle)
{
    size_t                      size;
    u_char                     *p;
    ngx_stream_im_main_conf_t  *imcf;

    imcf = ngx_stream_cycle_get_module_main_conf(cycle, ngx_stream_im_module);

    /* no server speaks IM: nothing to set up */

    if (imcf == NULL || !imcf->enabled) {
        return NGX_OK;
    }

    ngx_stream_im_timer_ident.fd = (ngx_socket_t) -1;

    /*
     * protobuf-c copies every string, adds a struct per message and
     * scratch per field: a frame of many tiny fields takes up to about
     * twenty times its wire size.  Pages never touched cost nothing.
     */

    size = 24 * imcf->max_frame + 65536;

    p = ngx_alloc(size, cycle->log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_stream_im_arena_init(&ngx_stream_im_arena, p, size);

    /* the lower layers first, then the handlers the upper ones register */

    if (ngx_stream_im_session_init_worker(cycle) != NGX_OK
        || ngx_stream_im_redis_init_worker(cycle, &imcf->redis) != NGX_OK
        || ngx_stream_im_router_init_worker(cycle) != NGX_OK
        || ngx_stream_im_post_init_worker(cycle) != NGX_OK
        || ngx_stream_im_presence_init_worker() != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_stream_im_dispatch_init_worker();

    if (ngx_stream_im_metrics_init_worker(imcf->metrics, cycle->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_stream_im_redis_start();

    return NGX_OK;
}


static void
ngx_stream_im_exit_process(ngx_cycle_t *cycle)
{
    ngx_stream_im_main_conf_t  *imcf;

    imcf = ngx_stream_cycle_get_module_main_conf(cycle, ngx_stream_im_module);

    if (imcf && imcf->enabled) {
        ngx_stream_im_redis_exit_worker();
        ngx_stream_im_metrics_exit_worker();
    }
}


ngx_stream_im_arena_t *
ngx_stream_im_worker_arena(void)
{
    return &ngx_stream_im_arena;
}
