
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include <sodium.h>
#include <jansson.h>

#include "ngx_stream_im.h"


#define NGX_STREAM_IM_V4_PUBLIC      "v4.public."
#define NGX_STREAM_IM_PASERK_PUBLIC  "k4.public."

#define NGX_STREAM_IM_TOKEN_MAX      8192
#define NGX_STREAM_IM_IMPLICIT_MAX   1024
#define NGX_STREAM_IM_SIG_LEN        crypto_sign_BYTES

/*
 * PAE of the four pieces: a count and four lengths of 8 bytes each,
 * the header, and what decodes from the token (less than the token itself)
 */

#define NGX_STREAM_IM_PAE_MAX                                                 \
    (5 * 8 + sizeof(NGX_STREAM_IM_V4_PUBLIC) - 1 + NGX_STREAM_IM_TOKEN_MAX    \
     + NGX_STREAM_IM_IMPLICIT_MAX)


static u_char *ngx_stream_im_le64(u_char *p, uint64_t n);
static u_char *ngx_stream_im_pae_piece(u_char *p, u_char *data, size_t len);
static ngx_int_t ngx_stream_im_claim_time(json_t *root, char *name,
    time_t *t);
static ngx_int_t ngx_stream_im_parse_time(u_char *p, size_t len, time_t *t);
static ngx_int_t ngx_stream_im_digits(u_char *p, ngx_uint_t n);


ngx_int_t
ngx_stream_im_valid_id(u_char *p, size_t len)
{
    u_char  *last;

                    /* [A-Za-z0-9_.@-] */

    static uint32_t  id[] = {
        0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */

                    /* ?>=< ;:98 7654 3210  /.-, +*)( '&%$ #"!  */
        0x03ff6000, /* 0000 0011 1111 1111  0110 0000 0000 0000 */

                    /* _^]\ [ZYX WVUT SRQP  ONML KJIH GFED CBA@ */
        0x87ffffff, /* 1000 0111 1111 1111  1111 1111 1111 1111 */

                    /*  ~}| {zyx wvut srqp  onml kjih gfed cba` */
        0x07fffffe, /* 0000 0111 1111 1111  1111 1111 1111 1110 */

        0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
        0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
        0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
        0x00000000  /* 0000 0000 0000 0000  0000 0000 0000 0000 */
    };

    if (len == 0 || len > NGX_STREAM_IM_ID_MAX) {
        return NGX_DECLINED;
    }

    for (last = p + len; p < last; p++) {
        if ((id[*p >> 5] & (1U << (*p & 0x1f))) == 0) {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_stream_im_key_parse(u_char *data, size_t len, u_char *key)
{
    u_char  *p, *last;
    size_t   n;

    /* idempotent; the key is parsed before any token is verified */

    if (len == 0 || sodium_init() == -1) {
        return NGX_DECLINED;
    }

    p = data;
    last = data + len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == CR || *p == LF)) {
        p++;
    }

    while (last > p
           && (last[-1] == ' ' || last[-1] == '\t'
               || last[-1] == CR || last[-1] == LF))
    {
        last--;
    }

    n = sizeof(NGX_STREAM_IM_PASERK_PUBLIC) - 1;

    if ((size_t) (last - p) > n
        && ngx_memcmp(p, NGX_STREAM_IM_PASERK_PUBLIC, n) == 0)
    {
        if (sodium_base642bin(key, NGX_STREAM_IM_KEY_LEN,
                              (char *) p + n, last - p - n, NULL, &n, NULL,
                              sodium_base64_VARIANT_URLSAFE_NO_PADDING)
            != 0)
        {
            return NGX_DECLINED;
        }

    } else {
        if (sodium_hex2bin(key, NGX_STREAM_IM_KEY_LEN, (char *) p, last - p,
                           NULL, &n, NULL)
            != 0)
        {
            return NGX_DECLINED;
        }
    }

    if (n != NGX_STREAM_IM_KEY_LEN) {
        return NGX_DECLINED;
    }

    /* a small order or non-canonical point would never verify anything */

    if (crypto_core_ed25519_is_valid_point(key) == 0) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


ngx_int_t
ngx_stream_im_token_open(ngx_str_t *token, ngx_array_t *keys,
    ngx_str_t *implicit, u_char *buf, ngx_str_t *payload, char **err)
{
    u_char      *p, *last, *dot, *key, *footer, *f;
    u_char       pae[NGX_STREAM_IM_PAE_MAX];
    size_t       n, mlen, flen, ilen;
    ngx_uint_t   i;

    if (token->len > NGX_STREAM_IM_TOKEN_MAX) {
        *err = "token too long";
        return NGX_DECLINED;
    }

    ilen = (implicit == NULL) ? 0 : implicit->len;

    if (ilen > NGX_STREAM_IM_IMPLICIT_MAX) {
        *err = "implicit assertion too long";
        return NGX_DECLINED;
    }

    n = sizeof(NGX_STREAM_IM_V4_PUBLIC) - 1;

    if (token->len < n
        || ngx_memcmp(token->data, NGX_STREAM_IM_V4_PUBLIC, n) != 0)
    {
        *err = "not a v4.public token";
        return NGX_DECLINED;
    }

    p = token->data + n;
    last = token->data + token->len;

    dot = ngx_strlchr(p, last, '.');

    if (dot == NULL) {
        dot = last;
        footer = last;

    } else {
        footer = dot + 1;

        /* an empty footer would be a second spelling of the same token */

        if (footer == last || ngx_strlchr(footer, last, '.') != NULL) {
            *err = "malformed token";
            return NGX_DECLINED;
        }
    }

    /* base64 decodes to less than it takes, so buf holds both parts */

    if (sodium_base642bin(buf, token->len, (char *) p, dot - p, NULL, &mlen,
                          NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING)
        != 0)
    {
        *err = "bad base64";
        return NGX_DECLINED;
    }

    if (mlen < NGX_STREAM_IM_SIG_LEN) {
        *err = "token too short";
        return NGX_DECLINED;
    }

    f = buf + mlen;
    mlen -= NGX_STREAM_IM_SIG_LEN;

    if (sodium_base642bin(f, token->len - (f - buf), (char *) footer,
                          last - footer, NULL, &flen, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING)
        != 0)
    {
        *err = "bad base64 in footer";
        return NGX_DECLINED;
    }

    p = ngx_stream_im_le64(pae, 4);
    p = ngx_stream_im_pae_piece(p, (u_char *) NGX_STREAM_IM_V4_PUBLIC, n);
    p = ngx_stream_im_pae_piece(p, buf, mlen);
    p = ngx_stream_im_pae_piece(p, f, flen);
    p = ngx_stream_im_pae_piece(p, ilen ? implicit->data : NULL, ilen);

    /* several keys are configured while one of them is being rotated */

    key = keys->elts;

    for (i = 0; i < keys->nelts; i++) {

        if (crypto_sign_verify_detached(buf + mlen, pae, p - pae, key) == 0) {
            payload->data = buf;
            payload->len = mlen;
            return NGX_OK;
        }

        key += NGX_STREAM_IM_KEY_LEN;
    }

    *err = "bad signature";
    return NGX_DECLINED;
}


static u_char *
ngx_stream_im_le64(u_char *p, uint64_t n)
{
    ngx_uint_t  i;

    /* PASETO clears the top bit for languages without unsigned integers */

    n &= 0x7fffffffffffffffULL;

    for (i = 0; i < 8; i++) {
        *p++ = (u_char) (n & 0xff);
        n >>= 8;
    }

    return p;
}


static u_char *
ngx_stream_im_pae_piece(u_char *p, u_char *data, size_t len)
{
    p = ngx_stream_im_le64(p, len);

    if (len == 0) {
        return p;
    }

    return ngx_cpymem(p, data, len);
}


/*
 * Signs claims into a v4.public token, as an app's backend does; the
 * tools mint with it.  buf has room for NGX_STREAM_IM_TOKEN_MAX + 1.
 */

ngx_int_t
ngx_stream_im_token_sign(ngx_str_t *claims, ngx_str_t *footer,
    u_char *secret, u_char *buf, ngx_str_t *token)
{
    u_char  *p, *last;
    size_t   n, flen, need;
    u_char   pae[NGX_STREAM_IM_PAE_MAX];
    u_char   body[NGX_STREAM_IM_TOKEN_MAX + NGX_STREAM_IM_SIG_LEN];

    n = sizeof(NGX_STREAM_IM_V4_PUBLIC) - 1;
    flen = (footer == NULL) ? 0 : footer->len;

    need = n + sodium_base64_ENCODED_LEN(claims->len + NGX_STREAM_IM_SIG_LEN,
                                   sodium_base64_VARIANT_URLSAFE_NO_PADDING)
           + (flen ? 1 + sodium_base64_ENCODED_LEN(flen,
                                   sodium_base64_VARIANT_URLSAFE_NO_PADDING)
                   : 0);

    /* the encoded lengths count a NUL each */

    if (need > NGX_STREAM_IM_TOKEN_MAX + 2) {
        return NGX_DECLINED;
    }

    p = ngx_stream_im_le64(pae, 4);
    p = ngx_stream_im_pae_piece(p, (u_char *) NGX_STREAM_IM_V4_PUBLIC, n);
    p = ngx_stream_im_pae_piece(p, claims->data, claims->len);
    p = ngx_stream_im_pae_piece(p, flen ? footer->data : NULL, flen);
    p = ngx_stream_im_pae_piece(p, NULL, 0);

    ngx_memcpy(body, claims->data, claims->len);

    crypto_sign_detached(body + claims->len, NULL, pae, p - pae, secret);

    last = buf + NGX_STREAM_IM_TOKEN_MAX + 1;

    p = ngx_cpymem(buf, NGX_STREAM_IM_V4_PUBLIC, n);
    sodium_bin2base64((char *) p, last - p, body,
                      claims->len + NGX_STREAM_IM_SIG_LEN,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    p += ngx_strlen(p);

    if (flen) {
        *p++ = '.';
        sodium_bin2base64((char *) p, last - p, footer->data, flen,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        p += ngx_strlen(p);
    }

    token->data = buf;
    token->len = p - buf;

    return (token->len <= NGX_STREAM_IM_TOKEN_MAX) ? NGX_OK : NGX_DECLINED;
}


ngx_int_t
ngx_stream_im_token_claims(ngx_str_t *payload, time_t now,
    ngx_stream_im_claims_t *claims, char **err)
{
    time_t         t, expire;
    json_t        *root, *sub;
    ngx_int_t      rc;
    json_error_t   error;

    root = json_loadb((char *) payload->data, payload->len,
                      JSON_REJECT_DUPLICATES, &error);

    if (root == NULL) {
        *err = "bad json";
        return NGX_DECLINED;
    }

    if (!json_is_object(root)) {
        *err = "claims not an object";
        goto failed;
    }

    sub = json_object_get(root, "sub");

    if (sub == NULL) {
        *err = "no sub";
        goto failed;
    }

    if (!json_is_string(sub)
        || ngx_stream_im_valid_id((u_char *) json_string_value(sub),
                                  json_string_length(sub))
           != NGX_OK)
    {
        *err = "bad sub";
        goto failed;
    }

    rc = ngx_stream_im_claim_time(root, "exp", &expire);

    if (rc == NGX_DECLINED) {
        *err = "no exp";
        goto failed;
    }

    if (rc == NGX_ERROR) {
        *err = "bad exp";
        goto failed;
    }

    if (expire <= now) {
        *err = "expired";
        goto failed;
    }

    rc = ngx_stream_im_claim_time(root, "nbf", &t);

    if (rc == NGX_ERROR) {
        *err = "bad nbf";
        goto failed;
    }

    if (rc == NGX_OK && t > now) {
        *err = "not yet valid";
        goto failed;
    }

    rc = ngx_stream_im_claim_time(root, "iat", &t);

    if (rc == NGX_ERROR) {
        *err = "bad iat";
        goto failed;
    }

    if (rc == NGX_OK && t > now) {
        *err = "issued in the future";
        goto failed;
    }

    /* no iat: issued at the epoch, for revocation */

    claims->iat = (rc == NGX_OK) ? t : 0;

    claims->user_len = json_string_length(sub);
    ngx_memcpy(claims->user, json_string_value(sub), claims->user_len);
    claims->exp = expire;

    json_decref(root);

    return NGX_OK;

failed:

    json_decref(root);

    return NGX_DECLINED;
}


static ngx_int_t
ngx_stream_im_claim_time(json_t *root, char *name, time_t *t)
{
    json_t  *v;

    v = json_object_get(root, name);

    if (v == NULL) {
        return NGX_DECLINED;
    }

    if (!json_is_string(v)) {
        return NGX_ERROR;
    }

    return ngx_stream_im_parse_time((u_char *) json_string_value(v),
                                    json_string_length(v), t);
}


static ngx_int_t
ngx_stream_im_parse_time(u_char *p, size_t len, time_t *t)
{
    u_char     *last;
    struct tm   tm;
    ngx_int_t   year, month, day, hour, min, sec, off, oh, om, mday;

    static ngx_int_t  mdays[] = {
        31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
    };

    /* RFC 3339 5.6: YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm) */

    if (len < sizeof("YYYY-MM-DDTHH:MM:SSZ") - 1
        || p[4] != '-' || p[7] != '-' || (p[10] != 'T' && p[10] != 't')
        || p[13] != ':' || p[16] != ':')
    {
        return NGX_ERROR;
    }

    year = ngx_stream_im_digits(p, 4);
    month = ngx_stream_im_digits(p + 5, 2);
    day = ngx_stream_im_digits(p + 8, 2);
    hour = ngx_stream_im_digits(p + 11, 2);
    min = ngx_stream_im_digits(p + 14, 2);
    sec = ngx_stream_im_digits(p + 17, 2);

    if (year == NGX_ERROR || month < 1 || month > 12 || day < 1
        || hour < 0 || hour > 23 || min < 0 || min > 59
        || sec < 0 || sec > 60)
    {
        return NGX_ERROR;
    }

    mday = mdays[month - 1];

    if (month == 2
        && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
    {
        mday++;
    }

    if (day > mday) {
        return NGX_ERROR;
    }

    last = p + len;
    p += sizeof("YYYY-MM-DDTHH:MM:SS") - 1;

    /* fractions of a second cannot matter to a validity window */

    if (*p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p == last) {
        return NGX_ERROR;
    }

    if (*p == 'Z' || *p == 'z') {
        off = 0;
        p++;

    } else if ((*p == '+' || *p == '-') && last - p >= 6 && p[3] == ':') {
        oh = ngx_stream_im_digits(p + 1, 2);
        om = ngx_stream_im_digits(p + 4, 2);

        if (oh < 0 || oh > 23 || om < 0 || om > 59) {
            return NGX_ERROR;
        }

        off = oh * 3600 + om * 60;

        if (*p == '-') {
            off = -off;
        }

        p += 6;

    } else {
        return NGX_ERROR;
    }

    if (p != last) {
        return NGX_ERROR;
    }

    ngx_memzero(&tm, sizeof(struct tm));

    tm.tm_year = year - 1900;
    tm.tm_mon = month - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;

    /* timegm() normalizes the fields, so the offset folds into seconds */

    tm.tm_sec = sec - off;

    ngx_set_errno(0);

    *t = timegm(&tm);

    if (*t == (time_t) -1 && ngx_errno != 0) {

        /* a 32-bit time_t ends in 2038: later is simply far future */

        if (year < 1970) {
            return NGX_ERROR;
        }

        *t = NGX_MAX_TIME_T_VALUE;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_stream_im_digits(u_char *p, ngx_uint_t n)
{
    ngx_int_t  value;

    for (value = 0; n; n--, p++) {

        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        value = value * 10 + (*p - '0');
    }

    return value;
}
