
/*
 * Copyright (C) ngx_im authors
 */


/*
 * Counters and worker health in a shared memory zone: the stream side
 * adds to them, the http side (im_metrics, im_health) reads them.  A
 * leaf: it calls no other file of the module.
 */


#ifndef _NGX_STREAM_IM_METRICS_H_INCLUDED_
#define _NGX_STREAM_IM_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_STREAM_IM_VERSION            "0.11.0"

#define NGX_STREAM_IM_METRICS_ZONE_MIN   (32 * 1024)
#define NGX_STREAM_IM_METRICS_ZONE_SIZE  (128 * 1024)

/* im.Frame body cases run 0..27; one more slot counts what did not decode */
#define NGX_STREAM_IM_M_FRAME_TYPES      28
#define NGX_STREAM_IM_M_FRAME_INVALID    NGX_STREAM_IM_M_FRAME_TYPES

/* im.Error.Code runs 0..8; after them, a token refreshed */
#define NGX_STREAM_IM_M_CODES            9
#define NGX_STREAM_IM_M_REFRESH          NGX_STREAM_IM_M_CODES

#define NGX_STREAM_IM_M_LIVE             0
#define NGX_STREAM_IM_M_REPLAY           1
#define NGX_STREAM_IM_M_SYNC             2

#define NGX_STREAM_IM_M_SEND_ACK         0
#define NGX_STREAM_IM_M_ROUNDTRIP        1

#define NGX_STREAM_IM_M_STORED           0
#define NGX_STREAM_IM_M_CUTOFFS          1
#define NGX_STREAM_IM_M_RATE_LIMITED     2
#define NGX_STREAM_IM_M_GOAWAYS          3
#define NGX_STREAM_IM_M_RECONNECTS       4
#define NGX_STREAM_IM_M_WAIT_FAILED      5
#define NGX_STREAM_IM_M_COUNTERS         6

/* what /health says of a worker whose state is older than this */
#define NGX_STREAM_IM_M_STALLED          15000


ngx_shm_zone_t *ngx_stream_im_metrics_zone(ngx_conf_t *cf, ngx_str_t *name,
    size_t size, void *tag);
ngx_int_t ngx_stream_im_metrics_init_worker(ngx_shm_zone_t *zone,
    ngx_log_t *log);
void ngx_stream_im_metrics_exit_worker(void);

void ngx_stream_im_metrics_count(ngx_uint_t counter);
void ngx_stream_im_metrics_frame(ngx_uint_t type);
void ngx_stream_im_metrics_login(ngx_uint_t code);
void ngx_stream_im_metrics_error(ngx_uint_t code);
void ngx_stream_im_metrics_close(ngx_uint_t status);
void ngx_stream_im_metrics_delivered(ngx_uint_t path, ngx_uint_t n);
uint32_t ngx_stream_im_metrics_clock(void);
void ngx_stream_im_metrics_observe(ngx_uint_t histogram, uint32_t start);
void ngx_stream_im_metrics_sessions(ngx_uint_t authenticated,
    ngx_uint_t unauthenticated);
void ngx_stream_im_metrics_link(ngx_uint_t command, ngx_uint_t subscriber);
void ngx_stream_im_metrics_routes(ngx_uint_t current);

size_t ngx_stream_im_metrics_text_size(void);
u_char *ngx_stream_im_metrics_text(u_char *p, u_char *last);
size_t ngx_stream_im_metrics_health_size(void);
u_char *ngx_stream_im_metrics_health(u_char *p, u_char *last,
    ngx_uint_t *ok);


#endif /* _NGX_STREAM_IM_METRICS_H_INCLUDED_ */
