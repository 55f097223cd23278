/*
 * Copyright (C) ngx_im authors
 */


#ifndef _NGX_HTTP_IM_H_INCLUDED_
#define _NGX_HTTP_IM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>


#define NGX_HTTP_IM_KEY_HASH_LEN       32


typedef struct {
    u_char                        *key_hash;   /* of im_api_key, or NULL */
} ngx_http_im_loc_conf_t;


ngx_int_t ngx_http_im_api_handler(ngx_http_request_t *r);

ngx_int_t ngx_http_im_authorized(ngx_http_request_t *r);
ngx_int_t ngx_http_im_unauthorized(ngx_http_request_t *r);
ngx_int_t ngx_http_im_send(ngx_http_request_t *r, ngx_uint_t status,
    char *type, ngx_buf_t *b);
ngx_int_t ngx_http_im_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *root);
ngx_int_t ngx_http_im_error(ngx_http_request_t *r, ngx_uint_t status,
    char *reason);


extern ngx_module_t  ngx_http_im_module;


#endif /* _NGX_HTTP_IM_H_INCLUDED_ */
