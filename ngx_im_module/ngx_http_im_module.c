
/*
 * Copyright (C) ngx_im authors
 */


/*
 * The http side of ngx_im, in the same .so as the stream side: handlers
 * enabled per location, so that nginx's own allow/deny, auth_request,
 * TLS and access log serve them.
 *
 *     location = /metrics { im_metrics; }   Prometheus text, all workers
 *     location = /health  { im_health; }    200 or 503, per worker
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_stream_im_metrics.h"


static char *ngx_http_im_handler_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_im_metrics_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_im_health_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_im_start(ngx_http_request_t *r);
static ngx_int_t ngx_http_im_send(ngx_http_request_t *r, ngx_uint_t status,
    char *type, ngx_buf_t *b);


static ngx_command_t  ngx_http_im_commands[] = {

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

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
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


/* im_metrics, im_health: the location's content handler is in cmd->post */

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


static ngx_int_t
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
