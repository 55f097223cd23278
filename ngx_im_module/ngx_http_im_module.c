
/*
 * Copyright (C) ngx_im authors
 */


/*
 * The http side of ngx_im, in the same .so as the stream side: handlers
 * enabled per location, so that nginx's own allow/deny, auth_request,
 * TLS and access log serve them.
 *
 *     location /im/       { im_api; }       the JSON admin API
 *     location = /metrics { im_metrics; }   Prometheus text, all workers
 *     location = /health  { im_health; }    200 or 503, per worker
 *
 * im_api_key FILE adds a bearer secret to those of the locations it is
 * set for (or inherited by).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sodium.h>

#include "ngx_http_im.h"
#include "ngx_stream_im_metrics.h"


#define NGX_HTTP_IM_KEY_FILE_MAX       4096


static void *ngx_http_im_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_im_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_im_handler_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_im_api_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_im_metrics_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_im_health_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_im_start(ngx_http_request_t *r);


static ngx_command_t  ngx_http_im_commands[] = {

    { ngx_string("im_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_im_handler_set,
      0,
      0,
      ngx_http_im_api_handler },

    { ngx_string("im_api_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_im_api_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("im_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_im_handler_set,
      0,
      0,
      ngx_http_im_metrics_handler },

    { ngx_string("im_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_im_handler_set,
      0,
      0,
      ngx_http_im_health_handler },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_im_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_im_create_loc_conf,           /* create location configuration */
    ngx_http_im_merge_loc_conf             /* merge location configuration */
};


ngx_module_t  ngx_http_im_module = {
    NGX_MODULE_V1,
    &ngx_http_im_module_ctx,               /* module context */
    ngx_http_im_commands,                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_im_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_im_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_im_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->key_hash = NGX_CONF_UNSET_PTR;

    return conf;
}


static char *
ngx_http_im_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_im_loc_conf_t *prev = parent;
    ngx_http_im_loc_conf_t *conf = child;

    ngx_conf_merge_ptr_value(conf->key_hash, prev->key_hash, NULL);

    return NGX_CONF_OK;
}


/* im_api, im_metrics, im_health: the content handler is in cmd->post */

static char *
ngx_http_im_handler_set(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate";
    }

    clcf->handler = (ngx_http_handler_pt) cmd->post;

    return NGX_CONF_OK;
}


/*
 * The secret is kept as its BLAKE2b hash: comparing hashes in constant
 * time tells an attacker neither the secret's bytes nor its length.
 */

static char *
ngx_http_im_api_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_im_loc_conf_t *ilcf = conf;

    u_char     *p, *last;
    ssize_t     n;
    ngx_fd_t    fd;
    ngx_str_t  *value, name;
    u_char      buf[NGX_HTTP_IM_KEY_FILE_MAX + 1];

    if (ilcf->key_hash != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", name.data);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, buf, sizeof(buf));

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_ALERT, cf, ngx_errno,
                           ngx_close_file_n " \"%s\" failed", name.data);
    }

    if (n == -1 || n > NGX_HTTP_IM_KEY_FILE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cannot read \"%s\", or it is longer than %d "
                           "bytes", name.data, NGX_HTTP_IM_KEY_FILE_MAX);
        return NGX_CONF_ERROR;
    }

    /* the secret is the file's first line, without its spaces */

    p = buf;
    last = buf + n;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == '\n' || last[-1] == '\r'
                        || last[-1] == ' ' || last[-1] == '\t'))
    {
        last--;
    }

    if (last - p < 16 || ngx_strlchr(p, last, '\n') != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" must hold one line of at least 16 "
                           "bytes", name.data);
        return NGX_CONF_ERROR;
    }

    ilcf->key_hash = ngx_palloc(cf->pool, NGX_HTTP_IM_KEY_HASH_LEN);
    if (ilcf->key_hash == NULL) {
        return NGX_CONF_ERROR;
    }

    if (sodium_init() == -1
        || crypto_generichash(ilcf->key_hash, NGX_HTTP_IM_KEY_HASH_LEN, p,
                              last - p, NULL, 0)
           != 0)
    {
        return NGX_CONF_ERROR;
    }

    sodium_memzero(buf, sizeof(buf));

    return NGX_CONF_OK;
}


/* NGX_OK, or NGX_DECLINED: answer with ngx_http_im_unauthorized() */

ngx_int_t
ngx_http_im_authorized(ngx_http_request_t *r)
{
    u_char                  *p, *last;
    ngx_table_elt_t         *auth;
    ngx_http_im_loc_conf_t  *ilcf;
    u_char                   hash[NGX_HTTP_IM_KEY_HASH_LEN];

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_im_module);

    if (ilcf->key_hash == NULL) {
        return NGX_OK;
    }

    auth = r->headers_in.authorization;

    if (auth && auth->value.len > sizeof("Bearer ") - 1
        && ngx_strncasecmp(auth->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1)
           == 0)
    {
        p = auth->value.data + sizeof("Bearer ") - 1;
        last = auth->value.data + auth->value.len;

        while (p < last && *p == ' ') {
            p++;
        }

        if (crypto_generichash(hash, sizeof(hash), p, last - p, NULL, 0)
            == 0
            && sodium_memcmp(hash, ilcf->key_hash, sizeof(hash)) == 0)
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_im_unauthorized(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "WWW-Authenticate");
    ngx_str_set(&h->value, "Bearer");

    return ngx_http_im_error(r, NGX_HTTP_UNAUTHORIZED,
                             "a bearer token (im_api_key) is needed");
}


static ngx_int_t
ngx_http_im_metrics_handler(ngx_http_request_t *r)
{
    size_t      size;
    ngx_int_t   rc;
    ngx_buf_t  *b;

    rc = ngx_http_im_start(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_im_authorized(r) != NGX_OK) {
        return ngx_http_im_unauthorized(r);
    }

    size = ngx_stream_im_metrics_text_size();

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_stream_im_metrics_text(b->pos, b->end);

    return ngx_http_im_send(r, NGX_HTTP_OK,
                            "text/plain; version=0.0.4; charset=utf-8", b);
}


static ngx_int_t
ngx_http_im_health_handler(ngx_http_request_t *r)
{
    size_t      size;
    ngx_int_t   rc;
    ngx_buf_t  *b;
    ngx_uint_t  ok;

    rc = ngx_http_im_start(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_im_authorized(r) != NGX_OK) {
        return ngx_http_im_unauthorized(r);
    }

    size = ngx_stream_im_metrics_health_size();

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_stream_im_metrics_health(b->pos, b->end, &ok);

    return ngx_http_im_send(r, ok ? NGX_HTTP_OK
                                  : NGX_HTTP_SERVICE_UNAVAILABLE,
                            "application/json", b);
}


/* GET and HEAD only; a body, if any, is not read */

static ngx_int_t
ngx_http_im_start(ngx_http_request_t *r)
{
    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    return ngx_http_discard_request_body(r);
}


ngx_int_t
ngx_http_im_send(ngx_http_request_t *r, ngx_uint_t status, char *type,
    ngx_buf_t *b)
{
    ngx_int_t         rc;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    /* a scrape or a probe is never to be cached */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* a JSON reply: root is consumed */

ngx_int_t
ngx_http_im_json(ngx_http_request_t *r, ngx_uint_t status, json_t *root)
{
    char       *text;
    size_t      len;
    ngx_buf_t  *b;

    if (root == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = json_dumps(root, JSON_COMPACT);
    json_decref(root);

    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(text);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        ngx_free(text);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->pos, text, len);
    *b->last++ = '\n';

    ngx_free(text);

    return ngx_http_im_send(r, status, "application/json", b);
}


/* {"error": CODE, "reason": "..."}, CODE named after the status */

ngx_int_t
ngx_http_im_error(ngx_http_request_t *r, ngx_uint_t status, char *reason)
{
    char        *code;
    ngx_uint_t   i;

    static struct {
        ngx_uint_t   status;
        char        *code;
    } codes[] = {
        { NGX_HTTP_BAD_REQUEST, "BAD_REQUEST" },
        { NGX_HTTP_UNAUTHORIZED, "UNAUTHENTICATED" },
        { NGX_HTTP_FORBIDDEN, "FORBIDDEN" },
        { NGX_HTTP_NOT_FOUND, "NOT_FOUND" },
        { NGX_HTTP_NOT_ALLOWED, "METHOD_NOT_ALLOWED" },
        { NGX_HTTP_CONFLICT, "CONFLICT" },
        { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "TOO_LARGE" },
        { NGX_HTTP_SERVICE_UNAVAILABLE, "UNAVAILABLE" }
    };

    code = "INTERNAL";

    for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (codes[i].status == status) {
            code = codes[i].code;
            break;
        }
    }

    if (status < NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "im api: %ui %s", status, reason);
    }

    return ngx_http_im_json(r, status, json_pack("{s:s, s:s}", "error", code,
                                                 "reason", reason));
}
