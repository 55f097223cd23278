
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * The im_redis directives: where the worker's Redis is (one address, a
 * unix socket, or the sentinels that know it), the secrets to log in
 * with, the database, and how many replicas must hold a message before
 * its SendAck.
 */


#define NGX_STREAM_IM_REDIS_PORT          6379
#define NGX_STREAM_IM_SENTINEL_PORT       26379
#define NGX_STREAM_IM_SENTINELS_MAX       16
#define NGX_STREAM_IM_SECRET_MAX          512
#define NGX_STREAM_IM_MASTER_NAME_MAX     128

/* a WAIT holds the commands behind it: below the heartbeat's period */
#define NGX_STREAM_IM_REDIS_WAIT_MAX      3000
#define NGX_STREAM_IM_REDIS_REPLICAS_MAX  16


static ngx_int_t ngx_stream_im_redis_parse_ip(ngx_conf_t *cf, ngx_str_t *s,
    in_port_t port, ngx_addr_t *addr);
static char *ngx_stream_im_redis_sentinels(ngx_conf_t *cf,
    ngx_stream_im_redis_conf_t *rcf, ngx_str_t *value);
static char *ngx_stream_im_redis_secret(ngx_conf_t *cf, ngx_str_t *path,
    ngx_str_t *user, ngx_str_t *password);


void
ngx_stream_im_redis_conf_init(ngx_stream_im_redis_conf_t *rcf)
{
    rcf->db = NGX_CONF_UNSET;
    rcf->wait_timeout = NGX_CONF_UNSET_MSEC;
}


/* the default, 127.0.0.1:6379, when im_redis was not given */

char *
ngx_stream_im_redis_conf_merge(ngx_conf_t *cf,
    ngx_stream_im_redis_conf_t *rcf)
{
    ngx_str_t  s;

    if (rcf->db == NGX_CONF_UNSET) {
        rcf->db = -1;
    }

    if (rcf->wait_timeout == NGX_CONF_UNSET_MSEC) {
        rcf->wait_timeout = 0;
    }

    if (rcf->set) {
        return NGX_CONF_OK;
    }

    rcf->addr = ngx_pcalloc(cf->pool, sizeof(ngx_addr_t));
    if (rcf->addr == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&s, "127.0.0.1");

    if (ngx_stream_im_redis_parse_ip(cf, &s, NGX_STREAM_IM_REDIS_PORT,
                                     rcf->addr)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* im_redis 127.0.0.1:6379 | unix:/path | sentinel:H:P[,H:P...]/NAME */

char *
ngx_stream_im_redis_set(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_im_main_conf_t *imcf = conf;

    ngx_str_t                   *value;
    ngx_url_t                    u;
    ngx_stream_im_redis_conf_t  *rcf;

    rcf = &imcf->redis;

    if (rcf->set) {
        return "is duplicate: a stream block has one Redis";
    }

    rcf->set = 1;

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "sentinel:", 9) == 0) {
        return ngx_stream_im_redis_sentinels(cf, rcf, &value[1]);
    }

    rcf->addr = ngx_pcalloc(cf->pool, sizeof(ngx_addr_t));
    if (rcf->addr == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_strncmp(value[1].data, "unix:", 5) == 0) {
        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = value[1];

        if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
            if (u.err) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s in \"%V\"",
                                   u.err, &value[1]);
            }

            return NGX_CONF_ERROR;
        }

        *rcf->addr = u.addrs[0];

        return NGX_CONF_OK;
    }

    if (ngx_stream_im_redis_parse_ip(cf, &value[1], NGX_STREAM_IM_REDIS_PORT,
                                     rcf->addr)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* an IP literal only: a worker must never block on DNS */

static ngx_int_t
ngx_stream_im_redis_parse_ip(ngx_conf_t *cf, ngx_str_t *s, in_port_t port,
    ngx_addr_t *addr)
{
    ngx_int_t  rc;

    rc = ngx_parse_addr_port(cf->pool, addr, s->data, s->len);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_DECLINED) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_redis\" needs an IP address with an "
                           "optional port, unix:/path or sentinel:, "
                           "not \"%V\"", s);
        return NGX_ERROR;
    }

    if (ngx_inet_get_port(addr->sockaddr) == 0) {
        ngx_inet_set_port(addr->sockaddr, port);
    }

    addr->name.data = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN);
    if (addr->name.data == NULL) {
        return NGX_ERROR;
    }

    addr->name.len = ngx_sock_ntop(addr->sockaddr, addr->socklen,
                                   addr->name.data, NGX_SOCKADDR_STRLEN, 1);

    return NGX_OK;
}


static char *
ngx_stream_im_redis_sentinels(ngx_conf_t *cf, ngx_stream_im_redis_conf_t *rcf,
    ngx_str_t *value)
{
    u_char      *p, *last, *comma, *slash;
    ngx_str_t    s;
    ngx_addr_t  *addr;

    p = value->data + sizeof("sentinel:") - 1;
    last = value->data + value->len;

    slash = ngx_strlchr(p, last, '/');

    if (slash == NULL || slash == p || slash + 1 == last
        || last - (slash + 1) > NGX_STREAM_IM_MASTER_NAME_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_redis %V\" needs "
                           "sentinel:HOST:PORT[,HOST:PORT...]/MASTER_NAME",
                           value);
        return NGX_CONF_ERROR;
    }

    rcf->master.data = slash + 1;
    rcf->master.len = last - (slash + 1);

    for (s.data = rcf->master.data; s.data < last; s.data++) {
        if (*s.data <= ' ' || *s.data >= 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid master name \"%V\"", &rcf->master);
            return NGX_CONF_ERROR;
        }
    }

    rcf->sentinels = ngx_array_create(cf->pool, 3, sizeof(ngx_addr_t));
    if (rcf->sentinels == NULL) {
        return NGX_CONF_ERROR;
    }

    for ( ;; ) {
        comma = ngx_strlchr(p, slash, ',');
        if (comma == NULL) {
            comma = slash;
        }

        if (rcf->sentinels->nelts == NGX_STREAM_IM_SENTINELS_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "more than %d sentinels in \"%V\"",
                               NGX_STREAM_IM_SENTINELS_MAX, value);
            return NGX_CONF_ERROR;
        }

        addr = ngx_array_push(rcf->sentinels);
        if (addr == NULL) {
            return NGX_CONF_ERROR;
        }

        s.data = p;
        s.len = comma - p;

        if (ngx_stream_im_redis_parse_ip(cf, &s, NGX_STREAM_IM_SENTINEL_PORT,
                                         addr)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        if (comma == slash) {
            return NGX_CONF_OK;
        }

        p = comma + 1;
    }
}


/* im_redis_password FILE, im_redis_sentinel_password FILE */

char *
ngx_stream_im_redis_password(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_im_main_conf_t *imcf = conf;

    ngx_str_t  *value, *user, *password;

    value = cf->args->elts;

    if (cmd->offset) {
        user = &imcf->redis.sentinel_user;
        password = &imcf->redis.sentinel_password;

    } else {
        user = &imcf->redis.user;
        password = &imcf->redis.password;
    }

    if (password->data) {
        return "is duplicate";
    }

    return ngx_stream_im_redis_secret(cf, &value[1], user, password);
}


/*
 * The file holds "password" or "user password" (a Redis 6 ACL user) on
 * one line; a file keeps the secret out of nginx.conf and of "nginx -T".
 */

static char *
ngx_stream_im_redis_secret(ngx_conf_t *cf, ngx_str_t *path, ngx_str_t *user,
    ngx_str_t *password)
{
    u_char           *p, *last, *space;
    ssize_t           n;
    ngx_file_t        file;
    ngx_file_info_t   fi;
    u_char            buf[NGX_STREAM_IM_SECRET_MAX + 3];

    if (ngx_conf_full_name(cf->cycle, path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = *path;
    file.log = cf->log;

    /* non-blocking: a FIFO must not hang "nginx -t" */

    file.fd = ngx_open_file(path->data, NGX_FILE_RDONLY|NGX_FILE_NONBLOCK,
                            NGX_FILE_OPEN, 0);

    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", path);
        return NGX_CONF_ERROR;
    }

    n = NGX_ERROR;

    /* the line, a CR LF after it at most */

    if (ngx_fd_info(file.fd, &fi) != NGX_FILE_ERROR && ngx_is_file(&fi)
        && ngx_file_size(&fi) <= NGX_STREAM_IM_SECRET_MAX + 2)
    {
        n = ngx_read_file(&file, buf, sizeof(buf), 0);
    }

    ngx_close_file(file.fd);

    if (n == NGX_ERROR || n > NGX_STREAM_IM_SECRET_MAX + 2) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is not a password file (one line of at "
                           "most %d bytes)", path, NGX_STREAM_IM_SECRET_MAX);
        return NGX_CONF_ERROR;
    }

    last = buf + n;

    if (last > buf && last[-1] == LF) {
        last--;
    }

    if (last > buf && last[-1] == CR) {
        last--;
    }

    if (last - buf > NGX_STREAM_IM_SECRET_MAX) {
        last = NULL;

    } else {
        for (p = buf; p < last; p++) {
            if (*p < ' ' || *p == 0x7f) {
                last = NULL;
                break;
            }
        }
    }

    if (last == NULL || last == buf) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is not a password file (one line of at "
                           "most %d bytes)", path, NGX_STREAM_IM_SECRET_MAX);
        return NGX_CONF_ERROR;
    }

    space = ngx_strlchr(buf, last, ' ');
    p = buf;

    if (space) {
        user->len = space - buf;
        p = space + 1;
    }

    password->len = last - p;

    if (password->len == 0 || (space && user->len == 0)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" holds no password", path);
        return NGX_CONF_ERROR;
    }

    if (space) {
        user->data = ngx_pnalloc(cf->pool, user->len);
        if (user->data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(user->data, buf, user->len);
    }

    password->data = ngx_pnalloc(cf->pool, password->len);
    if (password->data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(password->data, p, password->len);

    ngx_explicit_memzero(buf, sizeof(buf));

    return NGX_CONF_OK;
}


/* im_redis_wait N TIMEOUT: a SendAck only once N replicas have it */

char *
ngx_stream_im_redis_wait_set(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_im_main_conf_t *imcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_msec_t   timeout;

    if (imcf->redis.wait_timeout != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);

    if (n == NGX_ERROR || n > NGX_STREAM_IM_REDIS_REPLICAS_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_redis_wait\" needs a number of replicas "
                           "from 0 to %d, not \"%V\"",
                           NGX_STREAM_IM_REDIS_REPLICAS_MAX, &value[1]);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 2) {

        /* "im_redis_wait 0;" says it is off */

        if (n != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"im_redis_wait\" needs a timeout after "
                               "the number of replicas");
            return NGX_CONF_ERROR;
        }

        imcf->redis.wait = 0;
        imcf->redis.wait_timeout = 0;

        return NGX_CONF_OK;
    }

    timeout = ngx_parse_time(&value[2], 0);

    if (timeout == (ngx_msec_t) NGX_ERROR || timeout == 0
        || timeout > NGX_STREAM_IM_REDIS_WAIT_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"im_redis_wait\" needs a timeout from 1ms to "
                           "%dms, not \"%V\"", NGX_STREAM_IM_REDIS_WAIT_MAX,
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    imcf->redis.wait = n;
    imcf->redis.wait_timeout = timeout;

    return NGX_CONF_OK;
}
