
/*
 * Copyright (C) ngx_im authors
 */


/*
 * The token verifier: ngx_stream_im_token_open() with one fixed Ed25519
 * key, then ngx_stream_im_token_claims() at a fixed time, as the Auth
 * handler calls them (a buffer the size of the token, no implicit
 * assertion).
 *
 * Input: byte 0 picks the mode, the rest is
 *   0-3  a token as a client sends it in Auth.token;
 *   4-5  a claims payload, which the harness signs with the fixed key
 *        (so the JSON and time checks are reached at all), then opens;
 *   6    a claims payload given straight to ngx_stream_im_token_claims();
 *   7    an im_token_key file's text for ngx_stream_im_key_parse().
 *
 * The fixed key is the one t/fuzz/seeds.py mints the seeds with: seed bytes
 * 1..32.  "Now" is 2031-01-01T00:00:00Z, so the seeds' tokens (minted
 * with ten years to live) stay valid, and the corpus does not age.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include <sodium.h>

#include "ngx_stream_im.h"
#include "fuzz.h"


#define FUZZ_NOW         1924992000
#define FUZZ_TOKEN_MAX   8192


static void fuzz_open(u_char *token, size_t len);
static void fuzz_signed(const uint8_t *payload, size_t len);
static void fuzz_claims(u_char *payload, size_t len);


static u_char        fuzz_pk[crypto_sign_PUBLICKEYBYTES];
static u_char        fuzz_sk[crypto_sign_SECRETKEYBYTES];
static ngx_array_t   fuzz_keys;


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    u_char      seed[crypto_sign_SEEDBYTES];
    ngx_uint_t  i;

    if (sodium_init() == -1) {
        abort();
    }

    for (i = 0; i < sizeof(seed); i++) {
        seed[i] = (u_char) (i + 1);
    }

    crypto_sign_seed_keypair(fuzz_pk, fuzz_sk, seed);

    ngx_memzero(&fuzz_keys, sizeof(ngx_array_t));
    fuzz_keys.elts = fuzz_pk;
    fuzz_keys.nelts = 1;
    fuzz_keys.size = NGX_STREAM_IM_KEY_LEN;

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char  *p;
    u_char   key[NGX_STREAM_IM_KEY_LEN];

    if (size < 1) {
        return 0;
    }

    switch (data[0] & 7) {

    case 4:
    case 5:
        fuzz_signed(data + 1, size - 1);
        break;

    case 6:
        p = fuzz_dup(data + 1, size - 1);
        fuzz_claims(p, size - 1);
        free(p);
        break;

    case 7:
        p = fuzz_dup(data + 1, size - 1);

        if (ngx_stream_im_key_parse(p, size - 1, key) == NGX_OK) {
            fuzz_assert(crypto_core_ed25519_is_valid_point(key));
        }

        free(p);
        break;

    default:
        p = fuzz_dup(data + 1, size - 1);
        fuzz_open(p, size - 1);
        free(p);
    }

    return 0;
}


static void
fuzz_open(u_char *token, size_t len)
{
    char       *err;
    u_char     *buf;
    ngx_int_t   rc;
    ngx_str_t   t, payload;

    /* the Auth handler refuses longer tokens before it opens them */

    if (len > FUZZ_TOKEN_MAX) {
        return;
    }

    t.data = token;
    t.len = len;
    err = NULL;

    /* exactly the token's size: the verifier promises no more */

    buf = malloc(len ? len : 1);
    if (buf == NULL) {
        abort();
    }

    rc = ngx_stream_im_token_open(&t, &fuzz_keys, NULL, buf, &payload, &err);

    if (rc == NGX_OK) {
        fuzz_assert(payload.data == buf && payload.len <= len);
        fuzz_claims(payload.data, payload.len);

    } else {
        fuzz_assert(rc == NGX_DECLINED && err != NULL);
    }

    free(buf);
}


/* PASETO v4.public of the payload, signed here, with an optional footer */

static void
fuzz_signed(const uint8_t *payload, size_t len)
{
    u_char     *m, *token, *p, *pae;
    size_t      tlen, plen, flen;
    uint64_t    n;
    ngx_uint_t  i, k;
    u_char      sig[crypto_sign_BYTES];
    size_t      lens[4];
    u_char     *pieces[4];

    static u_char  header[] = "v4.public.";
    static u_char  footer[] = "{\"kid\":\"fuzz\"}";

    if (len > 4096) {
        return;
    }

    flen = (len & 1) ? sizeof(footer) - 1 : 0;

    pieces[0] = header;
    lens[0] = sizeof(header) - 1;
    pieces[1] = (u_char *) payload;
    lens[1] = len;
    pieces[2] = footer;
    lens[2] = flen;
    pieces[3] = NULL;
    lens[3] = 0;

    pae = malloc(8 + 4 * 8 + lens[0] + len + flen);
    if (pae == NULL) {
        abort();
    }

    p = pae;

    for (n = 4, k = 0; k < 8; k++) {
        *p++ = (u_char) (n >> (8 * k));
    }

    for (i = 0; i < 4; i++) {
        for (n = lens[i], k = 0; k < 8; k++) {
            *p++ = (u_char) (n >> (8 * k));
        }

        if (lens[i]) {
            p = ngx_cpymem(p, pieces[i], lens[i]);
        }
    }

    crypto_sign_detached(sig, NULL, pae, p - pae, fuzz_sk);
    free(pae);

    m = malloc(len + sizeof(sig));
    if (m == NULL) {
        abort();
    }

    if (len) {
        ngx_memcpy(m, payload, len);
    }

    ngx_memcpy(m + len, sig, sizeof(sig));

    plen = sodium_base64_ENCODED_LEN(len + sizeof(sig),
                                 sodium_base64_VARIANT_URLSAFE_NO_PADDING);

    tlen = sizeof(header) - 1 + plen + 1
           + sodium_base64_ENCODED_LEN(sizeof(footer),
                                 sodium_base64_VARIANT_URLSAFE_NO_PADDING);

    token = malloc(tlen);
    if (token == NULL) {
        abort();
    }

    p = ngx_cpymem(token, header, sizeof(header) - 1);

    sodium_bin2base64((char *) p, plen, m, len + sizeof(sig),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    p += ngx_strlen(p);

    if (flen) {
        *p++ = '.';
        sodium_bin2base64((char *) p, tlen - (p - token), footer, flen,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        p += ngx_strlen(p);
    }

    free(m);

    /* what was signed opens, and gives back the payload */

    {
        char       *err;
        u_char     *buf;
        ngx_str_t   t, out;

        t.data = token;
        t.len = p - token;
        err = NULL;

        if (t.len <= FUZZ_TOKEN_MAX) {
            buf = malloc(t.len);
            if (buf == NULL) {
                abort();
            }

            fuzz_assert(ngx_stream_im_token_open(&t, &fuzz_keys, NULL, buf,
                                                 &out, &err)
                        == NGX_OK);
            fuzz_assert(out.len == len
                        && (len == 0
                            || ngx_memcmp(out.data, payload, len) == 0));

            fuzz_claims(out.data, out.len);

            /* and one flipped bit anywhere breaks it */

            if (t.len > 10) {
                token[10 + len % (t.len - 10)] ^= 0x01;

                fuzz_assert(ngx_stream_im_token_open(&t, &fuzz_keys, NULL,
                                                     buf, &out, &err)
                            != NGX_OK);
            }

            free(buf);
        }
    }

    free(token);
}


static void
fuzz_claims(u_char *payload, size_t len)
{
    char                    *err;
    ngx_int_t                rc;
    ngx_str_t                p;
    ngx_stream_im_claims_t   claims;

    p.data = payload;
    p.len = len;
    err = NULL;

    rc = ngx_stream_im_token_claims(&p, FUZZ_NOW, &claims, &err);

    if (rc == NGX_OK) {

        /* the user goes into Redis keys: it must be a valid id */

        fuzz_assert(claims.user_len >= 1 && claims.user_len <= 64);
        fuzz_assert(fuzz_id_valid(claims.user, claims.user_len));
        fuzz_assert(claims.exp > FUZZ_NOW);

    } else {
        fuzz_assert(rc == NGX_DECLINED && err != NULL);
    }
}
