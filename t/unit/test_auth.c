
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include <sodium.h>
#include <jansson.h>

#include "ngx_stream_im.h"
#include "unit.h"


#define TEST_TOKEN_MAX   16384
#define TEST_NOW         1700000000   /* 2023-11-14T22:13:20Z */
#define TEST_EXP         2177452800   /* 2039-01-01T00:00:00Z */
#define TEST_SIG_LEN     crypto_sign_BYTES


typedef struct {
    u_char                         pk[crypto_sign_PUBLICKEYBYTES];
    u_char                         sk[crypto_sign_SECRETKEYBYTES];
} test_key_t;


static u_char *test_le64(u_char *p, uint64_t n);
static void test_sign(u_char *sk, u_char *m, size_t mlen, u_char *f,
    size_t flen, u_char *i, size_t ilen, u_char *sig);
static size_t test_assemble(char *out, char *prefix, u_char *body,
    size_t blen, u_char *f, size_t flen);
static size_t test_mint(u_char *sk, char *m, char *footer, char *implicit,
    char *out);
static ngx_int_t test_openl(u_char *token, size_t len, u_char *keys,
    ngx_uint_t n, char *implicit, char *expect);
static ngx_int_t test_open(char *token, u_char *key, char *implicit,
    char *expect);
static ngx_int_t test_key(char *text, u_char *key);
static ngx_int_t test_claims(char *json, time_t now,
    ngx_stream_im_claims_t *claims);

static void test_vectors(void);
static void test_keys(void);
static void test_rotation(void);
static void test_minting(void);
static void test_tampering(void);
static void test_format(void);
static void test_sizes(void);
static void test_claims_time(void);
static void test_claims_sub(void);
static void test_claims_json(void);
static void test_valid_id(void);


static char        *test_err;
static test_key_t   test_k1, test_k2, test_k3;


static u_char *
test_le64(u_char *p, uint64_t n)
{
    ngx_uint_t  i;

    n &= 0x7fffffffffffffffULL;

    for (i = 0; i < 8; i++) {
        *p++ = (u_char) (n & 0xff);
        n >>= 8;
    }

    return p;
}


/* an independent PAE, so a shared mistake cannot make both sides agree */

static void
test_sign(u_char *sk, u_char *m, size_t mlen, u_char *f, size_t flen,
    u_char *i, size_t ilen, u_char *sig)
{
    u_char  *pae, *p;

    pae = malloc(5 * 8 + 10 + mlen + flen + ilen);
    if (pae == NULL) {
        abort();
    }

    p = test_le64(pae, 4);
    p = test_le64(p, 10);
    p = ngx_cpymem(p, "v4.public.", 10);
    p = test_le64(p, mlen);
    p = ngx_cpymem(p, m, mlen);
    p = test_le64(p, flen);
    p = ngx_cpymem(p, f, flen);
    p = test_le64(p, ilen);
    p = ngx_cpymem(p, i, ilen);

    crypto_sign_detached(sig, NULL, pae, p - pae, sk);

    free(pae);
}


static size_t
test_assemble(char *out, char *prefix, u_char *body, size_t blen, u_char *f,
    size_t flen)
{
    char  *p, *end;

    end = out + TEST_TOKEN_MAX;

    p = stpcpy(out, prefix);
    sodium_bin2base64(p, end - p, body, blen,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    p += strlen(p);

    if (flen) {
        *p++ = '.';
        sodium_bin2base64(p, end - p, f, flen,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        p += strlen(p);
    }

    return p - out;
}


static size_t
test_mint(u_char *sk, char *m, char *footer, char *implicit, char *out)
{
    size_t   mlen, flen, ilen;
    u_char  *body;

    mlen = strlen(m);
    flen = strlen(footer);
    ilen = strlen(implicit);

    body = malloc(mlen + TEST_SIG_LEN);
    if (body == NULL) {
        abort();
    }

    ngx_memcpy(body, m, mlen);
    test_sign(sk, (u_char *) m, mlen, (u_char *) footer, flen,
              (u_char *) implicit, ilen, body + mlen);

    mlen = test_assemble(out, "v4.public.", body, mlen + TEST_SIG_LEN,
                         (u_char *) footer, flen);

    free(body);

    return mlen;
}


/*
 * NGX_OK only if the token opens and its payload is exactly "expect";
 * scratch is exactly token->len bytes so ASan sees any overrun
 */

static ngx_int_t
test_openl(u_char *token, size_t len, u_char *keys, ngx_uint_t n,
    char *implicit, char *expect)
{
    u_char       *buf;
    ngx_int_t     rc;
    ngx_str_t     t, imp, payload;
    ngx_array_t   a;

    buf = malloc(len ? len : 1);
    if (buf == NULL) {
        abort();
    }

    t.data = token;
    t.len = len;

    a.elts = keys;
    a.nelts = n;
    a.size = NGX_STREAM_IM_KEY_LEN;
    a.nalloc = n;
    a.pool = NULL;

    if (implicit) {
        imp.data = (u_char *) implicit;
        imp.len = strlen(implicit);
    }

    payload.data = NULL;
    payload.len = 0;
    test_err = NULL;

    rc = ngx_stream_im_token_open(&t, &a, implicit ? &imp : NULL, buf,
                                  &payload, &test_err);

    if (rc == NGX_OK) {
        if (payload.data < buf || payload.data + payload.len > buf + len
            || (expect != NULL
                && (payload.len != strlen(expect)
                    || ngx_memcmp(payload.data, expect, payload.len) != 0)))
        {
            rc = NGX_ERROR;
        }

    } else if (rc == NGX_DECLINED && test_err == NULL) {
        rc = NGX_ERROR;
    }

    free(buf);

    return rc;
}


static ngx_int_t
test_open(char *token, u_char *key, char *implicit, char *expect)
{
    return test_openl((u_char *) token, strlen(token), key, 1, implicit,
                      expect);
}


static ngx_int_t
test_key(char *text, u_char *key)
{
    return ngx_stream_im_key_parse((u_char *) text, strlen(text), key);
}


static ngx_int_t
test_claims(char *json, time_t now, ngx_stream_im_claims_t *claims)
{
    ngx_str_t  payload;

    payload.data = (u_char *) json;
    payload.len = strlen(json);
    test_err = NULL;

    ngx_memzero(claims, sizeof(ngx_stream_im_claims_t));

    return ngx_stream_im_token_claims(&payload, now, claims, &test_err);
}


static void
test_vectors(void)
{
    char          *name, *token, *payload, *implicit, *hex;
    char           out[TEST_TOKEN_MAX];
    u_char         key[NGX_STREAM_IM_KEY_LEN], spk[NGX_STREAM_IM_KEY_LEN];
    u_char         sk[crypto_sign_SECRETKEYBYTES];
    size_t         i, opened, declined, have;
    json_t        *root, *tests, *t;
    ngx_int_t      rc, expect;
    json_error_t   error;

    root = json_load_file("paseto-v4.json", 0, &error);
    check(root != NULL);

    if (root == NULL) {
        return;
    }

    tests = json_object_get(root, "tests");
    check(json_array_size(tests) > 0);

    /* vectors for v4.local carry no public key: use one of the others */

    have = 0;

    json_array_foreach(tests, i, t) {
        hex = (char *) json_string_value(json_object_get(t, "public-key"));

        if (hex != NULL && have == 0) {
            check(test_key(hex, spk) == NGX_OK);
            have = 1;
        }
    }

    check(have == 1);

    opened = 0;
    declined = 0;

    json_array_foreach(tests, i, t) {
        name = (char *) json_string_value(json_object_get(t, "name"));
        token = (char *) json_string_value(json_object_get(t, "token"));
        payload = (char *) json_string_value(json_object_get(t, "payload"));
        implicit = (char *) json_string_value(
                                 json_object_get(t, "implicit-assertion"));
        hex = (char *) json_string_value(json_object_get(t, "public-key"));

        check(name != NULL && token != NULL && implicit != NULL);

        if (name == NULL || token == NULL || implicit == NULL) {
            continue;
        }

        if (hex != NULL) {
            check(test_key(hex, key) == NGX_OK);

        } else {
            ngx_memcpy(key, spk, NGX_STREAM_IM_KEY_LEN);
        }

        expect = (!json_is_true(json_object_get(t, "expect-fail"))
                  && strncmp(token, "v4.public.", 10) == 0)
                 ? NGX_OK : NGX_DECLINED;

        rc = test_open(token, key, implicit, payload);

        if (rc != expect) {
            fprintf(stderr, "vector %s: %d, expected %d (%s)\n",
                    name, (int) rc, (int) expect,
                    test_err ? test_err : "-");
        }

        check(rc == expect);

        if (expect == NGX_OK) {
            opened++;

            /* the same token with no implicit assertion, or a wrong one */

            if (implicit[0] != '\0') {
                check(test_open(token, key, NULL, NULL) == NGX_DECLINED);

            } else {
                check(test_open(token, key, "x", NULL) == NGX_DECLINED);
            }

            /* deterministic Ed25519: the test's own signer agrees */

            hex = (char *) json_string_value(json_object_get(t,
                                                             "secret-key"));
            check(hex != NULL
                  && sodium_hex2bin(sk, sizeof(sk), hex, strlen(hex), NULL,
                                    NULL, NULL) == 0);

            test_mint(sk, payload,
                      (char *) json_string_value(json_object_get(t, "footer")),
                      implicit, out);
            check(strcmp(out, token) == 0);

        } else {
            declined++;
        }
    }

    /* 4-S-1..3 open; 4-E-*, 4-F-* are refused */

    check(opened == 3);
    check(declined == json_array_size(tests) - 3);

    json_decref(root);
}


static void
test_keys(void)
{
    char    text[256], token[TEST_TOKEN_MAX], *p;
    u_char  key[NGX_STREAM_IM_KEY_LEN];
    size_t  len;

    static char  hex[] =
        "1eb9dbbbbc047c03fd70604e0071f0987e16b28b757225c11f00415d0e20b1a2";
    static char  paserk[] =
        "k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaI";
    static u_char  bin[] = {
        0x1e, 0xb9, 0xdb, 0xbb, 0xbc, 0x04, 0x7c, 0x03,
        0xfd, 0x70, 0x60, 0x4e, 0x00, 0x71, 0xf0, 0x98,
        0x7e, 0x16, 0xb2, 0x8b, 0x75, 0x72, 0x25, 0xc1,
        0x1f, 0x00, 0x41, 0x5d, 0x0e, 0x20, 0xb1, 0xa2
    };

    check(test_key(hex, key) == NGX_OK
          && ngx_memcmp(key, bin, sizeof(bin)) == 0);

    ngx_memzero(key, sizeof(key));
    check(test_key(paserk, key) == NGX_OK
          && ngx_memcmp(key, bin, sizeof(bin)) == 0);

    /* the way key files are written: a trailing newline, maybe CRLF */

    snprintf(text, sizeof(text), "%s\n", hex);
    check(test_key(text, key) == NGX_OK);

    snprintf(text, sizeof(text), " \t\r\n%s \t\r\n", hex);
    check(test_key(text, key) == NGX_OK
          && ngx_memcmp(key, bin, sizeof(bin)) == 0);

    snprintf(text, sizeof(text), "\n%s\r\n", paserk);
    check(test_key(text, key) == NGX_OK
          && ngx_memcmp(key, bin, sizeof(bin)) == 0);

    /* upper case hex */

    snprintf(text, sizeof(text), "%s", hex);
    for (p = text; *p; p++) {
        if (*p >= 'a' && *p <= 'f') {
            *p -= 'a' - 'A';
        }
    }

    check(test_key(text, key) == NGX_OK
          && ngx_memcmp(key, bin, sizeof(bin)) == 0);

    check(test_key("", key) == NGX_DECLINED);
    check(test_key(" \n\r\t", key) == NGX_DECLINED);
    check(ngx_stream_im_key_parse(NULL, 0, key) == NGX_DECLINED);

    /* 63 and 65 hex digits, 62 and 66 */

    snprintf(text, sizeof(text), "%.63s", hex);
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "%sa", hex);
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "%.62s", hex);
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "%s00", hex);
    check(test_key(text, key) == NGX_DECLINED);

    /* a non-hex digit, inner whitespace, a comment, a NUL */

    snprintf(text, sizeof(text), "%s", hex);
    text[10] = 'g';
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "%.32s %s", hex, hex + 32);
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "%.32s\n%s", hex, hex + 32);
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "%s # key", hex);
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "%s", hex);
    text[20] = '\0';
    check(ngx_stream_im_key_parse((u_char *) text, 64, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "0x%.62s", hex);
    check(test_key(text, key) == NGX_DECLINED);

    /* a 64-byte secret key is not a public key */

    snprintf(text, sizeof(text), "%s%s", hex, hex);
    check(test_key(text, key) == NGX_DECLINED);

    /* not a point a signature can be checked against */

    snprintf(text, sizeof(text), "%064d", 0);
    check(test_key(text, key) == NGX_DECLINED);

    snprintf(text, sizeof(text), "01%062d", 0);
    check(test_key(text, key) == NGX_DECLINED);

    /* PASERK: other types, lengths, padding, alphabet, trailing bits */

    check(test_key("k4.secret.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaI",
                   key) == NGX_DECLINED);
    check(test_key("k4.local.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaI",
                   key) == NGX_DECLINED);
    check(test_key("k3.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaI",
                   key) == NGX_DECLINED);
    check(test_key("K4.PUBLIC.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaI",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.", key) == NGX_DECLINED);
    check(test_key("k4.public", key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsa",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaIA",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaI=",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaJ",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4g+aI",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4g/aI",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4W ot1ciXBHwBBXQ4gsaI",
                   key) == NGX_DECLINED);
    check(test_key("k4.public.Hrnbu7wEfAP9cGBOAHHwmH4Wsot1ciXBHwBBXQ4gsaI.x",
                   key) == NGX_DECLINED);

    /* the PASERK form of a generated key opens that key's tokens */

    p = stpcpy(text, "k4.public.");
    sodium_bin2base64(p, text + sizeof(text) - p, test_k1.pk, 32,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);

    ngx_memzero(key, sizeof(key));
    check(test_key(text, key) == NGX_OK
          && ngx_memcmp(key, test_k1.pk, 32) == 0);

    len = test_mint(test_k1.sk, "{\"sub\":\"alice\"}", "", "", token);
    check(len > 0);
    check(test_open(token, key, NULL, "{\"sub\":\"alice\"}") == NGX_OK);
}


#define NGX_STREAM_IM_TOKEN_MAX_TEST  8192


static void
test_rotation(void)
{
    char    token[TEST_TOKEN_MAX];
    u_char  keys[3 * NGX_STREAM_IM_KEY_LEN];

    test_mint(test_k2.sk, "{\"sub\":\"bob\"}", "", "", token);

    /* the old key first, the new one second, as during a rotation */

    ngx_memcpy(keys, test_k1.pk, 32);
    ngx_memcpy(keys + 32, test_k2.pk, 32);
    check(test_openl((u_char *) token, strlen(token), keys, 2, NULL,
                     "{\"sub\":\"bob\"}") == NGX_OK);

    ngx_memcpy(keys + 64, test_k3.pk, 32);
    check(test_openl((u_char *) token, strlen(token), keys + 32, 2, NULL,
                     "{\"sub\":\"bob\"}") == NGX_OK);
    check(test_openl((u_char *) token, strlen(token), keys, 3, NULL,
                     "{\"sub\":\"bob\"}") == NGX_OK);

    /* neither key, one wrong key, no keys at all */

    ngx_memcpy(keys + 32, test_k3.pk, 32);
    check(test_openl((u_char *) token, strlen(token), keys, 2, NULL, NULL)
          == NGX_DECLINED);
    check(test_openl((u_char *) token, strlen(token), keys, 1, NULL, NULL)
          == NGX_DECLINED);
    check(test_openl((u_char *) token, strlen(token), keys, 0, NULL, NULL)
          == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "bad signature") == 0);
}


/* what the tools mint is what the test mints, and opens alike */

static void
test_minting(void)
{
    char        token[TEST_TOKEN_MAX];
    u_char      buf[NGX_STREAM_IM_TOKEN_MAX_TEST + 1];
    ngx_str_t   claims, footer, t;
    static u_char  big[NGX_STREAM_IM_TOKEN_MAX_TEST];

    ngx_str_set(&claims, "{\"sub\":\"carol\"}");
    ngx_str_set(&footer, "kid-7");

    check(ngx_stream_im_token_sign(&claims, &footer, test_k1.sk, buf, &t)
          == NGX_OK);

    test_mint(test_k1.sk, "{\"sub\":\"carol\"}", "kid-7", "", token);
    check(t.len == strlen(token) && ngx_memcmp(t.data, token, t.len) == 0);

    check(test_openl(t.data, t.len, test_k1.pk, 1, NULL,
                     "{\"sub\":\"carol\"}") == NGX_OK);

    check(ngx_stream_im_token_sign(&claims, NULL, test_k2.sk, buf, &t)
          == NGX_OK);
    check(test_openl(t.data, t.len, test_k2.pk, 1, NULL,
                     "{\"sub\":\"carol\"}") == NGX_OK);

    /* a token nginx would refuse as too long is not minted */

    ngx_memset(big, 'x', sizeof(big));
    footer.data = big;
    footer.len = sizeof(big) - 100;

    check(ngx_stream_im_token_sign(&claims, &footer, test_k1.sk, buf, &t)
          == NGX_DECLINED);
}


static void
test_tampering(void)
{
    char        token[TEST_TOKEN_MAX];
    char       *m, *footer;
    u_char      body[256], f[64];
    size_t      mlen, flen, blen, i, len;
    ngx_uint_t  accepted;

    m = "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\"}";
    footer = "{\"kid\":\"k1\"}";

    mlen = strlen(m);
    flen = strlen(footer);
    blen = mlen + TEST_SIG_LEN;

    ngx_memcpy(body, m, mlen);
    ngx_memcpy(f, footer, flen);
    test_sign(test_k1.sk, (u_char *) m, mlen, f, flen, (u_char *) "", 0,
              body + mlen);

    len = test_assemble(token, "v4.public.", body, blen, f, flen);
    check(test_openl((u_char *) token, len, test_k1.pk, 1, NULL, m)
          == NGX_OK);

    /* every single bit of payload and signature */

    accepted = 0;

    for (i = 0; i < blen * 8; i++) {
        body[i / 8] ^= 1 << (i % 8);
        len = test_assemble(token, "v4.public.", body, blen, f, flen);
        body[i / 8] ^= 1 << (i % 8);

        if (test_openl((u_char *) token, len, test_k1.pk, 1, NULL, NULL)
            != NGX_DECLINED)
        {
            accepted++;
        }
    }

    check(accepted == 0);

    /* and of the footer */

    accepted = 0;

    for (i = 0; i < flen * 8; i++) {
        f[i / 8] ^= 1 << (i % 8);
        len = test_assemble(token, "v4.public.", body, blen, f, flen);
        f[i / 8] ^= 1 << (i % 8);

        if (test_openl((u_char *) token, len, test_k1.pk, 1, NULL, NULL)
            != NGX_DECLINED)
        {
            accepted++;
        }
    }

    check(accepted == 0);

    /* the footer dropped, or one added, or the signature truncated */

    len = test_assemble(token, "v4.public.", body, blen, f, 0);
    check(test_openl((u_char *) token, len, test_k1.pk, 1, NULL, NULL)
          == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "bad signature") == 0);

    len = test_assemble(token, "v4.public.", body, blen - 1, f, flen);
    check(test_openl((u_char *) token, len, test_k1.pk, 1, NULL, NULL)
          == NGX_DECLINED);

    test_mint(test_k1.sk, m, "", "", token);
    check(test_open(token, test_k1.pk, NULL, m) == NGX_OK);
    strcat(token, ".eyJraWQiOiJrMSJ9");
    check(test_open(token, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* the implicit assertion is bound */

    test_mint(test_k1.sk, m, "", "device-1", token);
    check(test_open(token, test_k1.pk, "device-1", m) == NGX_OK);
    check(test_open(token, test_k1.pk, "device-2", NULL) == NGX_DECLINED);
    check(test_open(token, test_k1.pk, "", NULL) == NGX_DECLINED);
    check(test_open(token, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* an empty implicit assertion is the same as none */

    test_mint(test_k1.sk, m, "", "", token);
    check(test_open(token, test_k1.pk, "", m) == NGX_OK);
    check(test_open(token, test_k1.pk, NULL, m) == NGX_OK);

    /* signed by another key, then relabelled */

    test_mint(test_k2.sk, m, "", "", token);
    check(test_open(token, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* an empty payload is a valid token; its claims are not */

    test_mint(test_k1.sk, "", "", "", token);
    check(test_open(token, test_k1.pk, NULL, "") == NGX_OK);
}


static void
test_format(void)
{
    char     token[TEST_TOKEN_MAX], copy[TEST_TOKEN_MAX + 64], *m, *p, *dot;
    u_char   body[256];
    size_t   len, blen;

    static char  *invalid = "+/=* \t\r\n!~$\x80\xff";

    m = "{\"sub\":\"alice\"}";

    len = test_mint(test_k1.sk, m, "", "", token);
    check(test_open(token, test_k1.pk, NULL, m) == NGX_OK);

    /* the exact header */

    ngx_memcpy(copy, token, len + 1);
    ngx_memcpy(copy, "v3", 2);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_err != NULL
          && strcmp(test_err, "not a v4.public token") == 0);

    ngx_memcpy(copy, "V4.PUBLIC.", 10);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    snprintf(copy, sizeof(copy), "v4.local.%s", token + 10);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    snprintf(copy, sizeof(copy), "v4.publi.%s", token + 10);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    snprintf(copy, sizeof(copy), " %s", token);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    snprintf(copy, sizeof(copy), "v4.public%s", token + 10);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    check(test_open("", test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_open("v4", test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_open("v4.public", test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* empty and short bodies */

    check(test_open("v4.public.", test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "token too short") == 0);
    check(test_open("v4.public..", test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_open("v4.public..eyJ9", test_k1.pk, NULL, NULL)
          == NGX_DECLINED);

    ngx_memzero(body, 63);
    test_assemble(copy, "v4.public.", body, 63, NULL, 0);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "token too short") == 0);

    /* dots: a trailing one, an empty footer, a third part */

    snprintf(copy, sizeof(copy), "%s.", token);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    snprintf(copy, sizeof(copy), "%s.Zm9v.", token);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    snprintf(copy, sizeof(copy), "%s.Zm9v.YmFy", token);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    snprintf(copy, sizeof(copy), "%s..Zm9v", token);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* padding, in the body and in the footer */

    blen = strlen(m) + TEST_SIG_LEN;
    check(blen % 3 != 0);

    snprintf(copy, sizeof(copy), "%s=", token);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "bad base64") == 0);

    snprintf(copy, sizeof(copy), "%s==", token);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    test_mint(test_k1.sk, m, "kid", "", copy);
    check(test_open(copy, test_k1.pk, NULL, m) == NGX_OK);
    strcat(copy, "=");
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* one invalid character anywhere, in the body and in the footer */

    for (p = invalid; *p; p++) {
        snprintf(copy, sizeof(copy), "%s", token);
        copy[20] = *p;
        check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

        snprintf(copy, sizeof(copy), "%s", token);
        copy[strlen(copy) - 1] = *p;
        check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

        test_mint(test_k1.sk, m, "kid", "", copy);
        dot = strchr(copy + 10, '.');
        dot[2] = *p;
        check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);
    }

    /* a NUL in the middle, which a C string API would have cut */

    ngx_memcpy(copy, token, strlen(token) + 1);
    copy[30] = '\0';
    check(test_openl((u_char *) copy, strlen(token), test_k1.pk, 1, NULL,
                     NULL) == NGX_DECLINED);

    /* a length no base64 text has: 4k + 1 */

    len = strlen(token);
    ngx_memcpy(copy, token, len + 1);

    while ((len - 10) % 4 != 1) {
        copy[len++] = 'A';
    }

    copy[len] = '\0';
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* non-zero trailing bits: decodes to the same bytes, yet not canonical */

    ngx_memcpy(copy, token, strlen(token) + 1);
    p = copy + strlen(copy) - 1;
    p = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
               "0123456789-_", *p);
    check(p != NULL);

    if (p != NULL) {
        copy[strlen(copy) - 1] = p[1];
        check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);
    }

    /* standard base64 instead of URL-safe */

    len = 0;

    for (blen = 0; len == 0 && blen < 1000; blen++) {
        char  sub[32];

        snprintf(sub, sizeof(sub), "{\"sub\":\"u%zu\"}", blen);
        test_mint(test_k1.sk, sub, "", "", copy);

        for (p = copy + 10; *p; p++) {
            if (*p == '-' || *p == '_') {
                *p = (*p == '-') ? '+' : '/';
                len = 1;
            }
        }
    }

    check(len == 1);
    check(test_open(copy, test_k1.pk, NULL, NULL) == NGX_DECLINED);
}


static void
test_sizes(void)
{
    char    *m, *big, *token;
    size_t   len;

    token = malloc(TEST_TOKEN_MAX);
    m = malloc(TEST_TOKEN_MAX);
    big = malloc(1024 * 1024 + 1);

    if (token == NULL || m == NULL || big == NULL) {
        abort();
    }

    /* 8192 bytes is the limit, inclusive */

    memset(m, 'x', 6072);
    m[6072] = '\0';
    len = test_mint(test_k1.sk, m, "", "", token);
    check(len == 8192);
    check(test_open(token, test_k1.pk, NULL, m) == NGX_OK);

    memset(m, 'x', 6073);
    m[6073] = '\0';
    len = test_mint(test_k1.sk, m, "", "", token);
    check(len == 8193);
    check(test_open(token, test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "token too long") == 0);

    /* the same limit counts the footer, and big footers still fit */

    memset(m, 'x', 3000);
    m[3000] = '\0';
    memset(big, 'f', 3000);
    big[3000] = '\0';
    len = test_mint(test_k1.sk, m, big, "", token);
    check(len > 8000 && len <= 8192);
    check(test_open(token, test_k1.pk, NULL, m) == NGX_OK);

    memset(big, 'f', 3100);
    big[3100] = '\0';
    len = test_mint(test_k1.sk, m, big, "", token);
    check(len > 8192);
    check(test_open(token, test_k1.pk, NULL, NULL) == NGX_DECLINED);

    /* the implicit assertion is bounded too, at 1024 bytes */

    memset(big, 'i', 1024);
    big[1024] = '\0';
    memset(m, 'x', 6000);
    m[6000] = '\0';
    test_mint(test_k1.sk, m, "kid", big, token);
    check(test_open(token, test_k1.pk, big, m) == NGX_OK);

    big[1024] = 'i';
    big[1025] = '\0';
    test_mint(test_k1.sk, m, "kid", big, token);
    check(test_open(token, test_k1.pk, big, NULL) == NGX_DECLINED);

    /* 1 MiB of plausible token, refused before any work */

    memcpy(big, "v4.public.", 10);
    memset(big + 10, 'A', 1024 * 1024 - 10);
    big[1024 * 1024] = '\0';
    check(test_open(big, test_k1.pk, NULL, NULL) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "token too long") == 0);

    free(token);
    free(m);
    free(big);
}


static void
test_claims_time(void)
{
    char                    json[512];
    size_t                  i;
    ngx_stream_im_claims_t  c;

    static char  *bad[] = {
        "2039-13-01T00:00:00Z",
        "2039-00-01T00:00:00Z",
        "2039-01-00T00:00:00Z",
        "2039-01-32T00:00:00Z",
        "2039-02-29T00:00:00Z",
        "2100-02-29T00:00:00Z",
        "2039-04-31T00:00:00Z",
        "2039-01-01T24:00:00Z",
        "2039-01-01T00:60:00Z",
        "2039-01-01T00:00:61Z",
        "2039-01-01T00:00:00+24:00",
        "2039-01-01T00:00:00+00:60",
        "2039-01-01T00:00:00+0000",
        "2039-01-01T00:00:00+00",
        "2039-01-01T00:00:00+00:00:00",
        "2039-01-01T00:00:00",
        "2039-01-01T00:00Z",
        "2039-01-01",
        "2039-01-01Z",
        "2039-01-01 00:00:00Z",
        "2039-01-01_00:00:00Z",
        "2039-1-01T00:00:00Z",
        "2039-01-1T00:00:00Z",
        "39-01-01T00:00:00Z",
        "+2039-01-01T00:00:00Z",
        "12039-01-01T00:00:00Z",
        " 2039-01-01T00:00:00Z",
        "2039-01-01T00:00:00Z ",
        "2039-01-01T00:00:00ZZ",
        "2039-01-01T00:00:00.Z",
        "2039-01-01T00:00:00,5Z",
        "2039-01-01T00:00:00.5",
        "2039-01-01T00:00:00UTC",
        "2039-01-01T00:00:00GMT",
        "2039/01/01T00:00:00Z",
        "2039-01-01T00-00-00Z",
        "2039-0a-01T00:00:00Z",
        "2039-01-01T0 :00:00Z",
        "yesterday",
        "tomorrow",
        "",
        "Z"
    };

    static char  *bad_type[] = {
        "2177452800", "2177452800.5", "true", "null", "[]", "{}",
        "[\"2039-01-01T00:00:00Z\"]"
    };

#define CLAIMS(exp) "{\"sub\":\"alice\",\"exp\":\"" exp "\"}"

    check(test_claims(CLAIMS("2039-01-01T00:00:00+00:00"), TEST_NOW, &c)
          == NGX_OK);
    check(c.exp == TEST_EXP && c.user_len == 5
          && ngx_memcmp(c.user, "alice", 5) == 0);

    check(test_claims(CLAIMS("2039-01-01T00:00:00Z"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("2039-01-01t00:00:00z"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("2039-01-01T00:00:00-00:00"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("2039-01-01T00:00:00.999999999Z"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("2039-01-01T00:00:00.1+00:00"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("2039-01-01T05:30:00+05:30"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("2038-12-31T16:00:00-08:00"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("2039-01-01T00:00:00+23:59"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP - 23 * 3600 - 59 * 60);
    check(test_claims(CLAIMS("2040-02-29T00:00:00Z"), TEST_NOW, &c)
          == NGX_OK && c.exp == 2214086400);
    check(test_claims(CLAIMS("2000-02-29T00:00:00Z"), 0, &c)
          == NGX_OK && c.exp == 951782400);
    check(test_claims(CLAIMS("2038-12-31T23:59:60Z"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);
    check(test_claims(CLAIMS("9999-12-31T23:59:59Z"), TEST_NOW, &c)
          == NGX_OK && c.exp > TEST_EXP);

    /* exp is exclusive: a token dies at that second */

    check(test_claims(CLAIMS("2023-11-14T22:13:21Z"), TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_NOW + 1);
    check(test_claims(CLAIMS("2023-11-14T22:13:20Z"), TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "expired") == 0);
    check(test_claims(CLAIMS("2023-11-14T22:13:20.999Z"), TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_claims(CLAIMS("2023-11-15T00:13:20+02:00"), TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_claims(CLAIMS("2022-01-01T00:00:00+00:00"), TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_claims(CLAIMS("1970-01-01T00:00:00Z"), TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_claims(CLAIMS("0000-01-01T00:00:00Z"), TEST_NOW, &c)
          == NGX_DECLINED);

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(json, sizeof(json),
                 "{\"sub\":\"alice\",\"exp\":\"%s\"}", bad[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);
        check(test_err != NULL && strcmp(test_err, "bad exp") == 0);

        snprintf(json, sizeof(json),
                 "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\","
                 "\"nbf\":\"%s\"}", bad[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);

        snprintf(json, sizeof(json),
                 "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\","
                 "\"iat\":\"%s\"}", bad[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);
    }

    for (i = 0; i < sizeof(bad_type) / sizeof(bad_type[0]); i++) {
        snprintf(json, sizeof(json),
                 "{\"sub\":\"alice\",\"exp\":%s}", bad_type[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);
        check(test_err != NULL && strcmp(test_err, "bad exp") == 0);

        snprintf(json, sizeof(json),
                 "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\","
                 "\"nbf\":%s}", bad_type[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);
        check(test_err != NULL && strcmp(test_err, "bad nbf") == 0);

        snprintf(json, sizeof(json),
                 "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\","
                 "\"iat\":%s}", bad_type[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);
        check(test_err != NULL && strcmp(test_err, "bad iat") == 0);
    }

    check(test_claims("{\"sub\":\"alice\"}", TEST_NOW, &c) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "no exp") == 0);

    /* nbf and iat are inclusive: valid from that second */

#define CLAIMS2(name, t)                                                      \
    "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\",\"" name "\":\""     \
    t "\"}"

    check(test_claims(CLAIMS2("nbf", "2023-11-14T22:13:20Z"), TEST_NOW, &c)
          == NGX_OK);
    check(test_claims(CLAIMS2("nbf", "2020-01-01T00:00:00Z"), TEST_NOW, &c)
          == NGX_OK);
    check(test_claims(CLAIMS2("nbf", "2023-11-14T22:13:21Z"), TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "not yet valid") == 0);
    check(test_claims(CLAIMS2("nbf", "2038-01-01T00:00:00Z"), TEST_NOW, &c)
          == NGX_DECLINED);

    check(test_claims(CLAIMS2("iat", "2023-11-14T22:13:20Z"), TEST_NOW, &c)
          == NGX_OK && c.iat == TEST_NOW);
    check(test_claims(CLAIMS2("iat", "2023-11-14T23:13:20+01:00"), TEST_NOW,
                      &c) == NGX_OK && c.iat == TEST_NOW);

    /* no iat: issued at the epoch, as revocation counts it */

    check(test_claims(CLAIMS2("nbf", "2023-11-14T22:13:20Z"), TEST_NOW, &c)
          == NGX_OK && c.iat == 0);
    check(test_claims(CLAIMS2("iat", "2023-11-14T22:13:21Z"), TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "issued in the future") == 0);
    check(test_claims(CLAIMS2("iat", "2023-11-14T23:13:21+01:00"), TEST_NOW,
                      &c) == NGX_DECLINED);

    check(test_claims("{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\","
                      "\"nbf\":\"2023-01-01T00:00:00Z\","
                      "\"iat\":\"2023-01-01T00:00:00Z\"}", TEST_NOW, &c)
          == NGX_OK && c.exp == TEST_EXP);

#undef CLAIMS
#undef CLAIMS2
}


static void
test_claims_sub(void)
{
    char                    json[512], sub[128];
    size_t                  i;
    ngx_stream_im_claims_t  c;

    static char  *good[] = {
        "a", "alice", "Alice.Smith", "alice@example.com", "user_1",
        "a-b", "0", "_", ".", "@", "-", "..", "A.B_C-D@E"
    };

    static char  *bad[] = {
        "\"\"", "\"a*b\"", "\"a b\"", "\" alice\"", "\"alice \"",
        "\"a\\r\\nb\"", "\"a\\nb\"", "\"a\\tb\"", "\"a\\u0000b\"",
        "\"\\u0000\"", "\"{\"", "\"}\"", "\"{alice}\"", "\"a:b\"",
        "\"a/b\"", "\"a\\\\b\"", "\"a\\\"b\"", "\"a+b\"", "\"a#b\"",
        "\"a?b\"", "\"a[b\"", "\"a`b\"", "\"a~b\"", "\"caf\\u00e9\"",
        "\"caf\xc3\xa9\"", "\"a%2Ab\"",
        "42", "0", "true", "false", "null", "[\"alice\"]", "{\"id\":\"a\"}"
    };

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(json, sizeof(json),
                 "{\"sub\":\"%s\",\"exp\":\"2039-01-01T00:00:00Z\"}", good[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_OK
              && c.user_len == strlen(good[i])
              && ngx_memcmp(c.user, good[i], c.user_len) == 0);
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(json, sizeof(json),
                 "{\"sub\":%s,\"exp\":\"2039-01-01T00:00:00Z\"}", bad[i]);
        check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);
    }

    /* 64 characters is the longest id */

    memset(sub, 'a', 64);
    sub[64] = '\0';
    snprintf(json, sizeof(json),
             "{\"sub\":\"%s\",\"exp\":\"2039-01-01T00:00:00Z\"}", sub);
    check(test_claims(json, TEST_NOW, &c) == NGX_OK && c.user_len == 64
          && ngx_memcmp(c.user, sub, 64) == 0);

    sub[64] = 'a';
    sub[65] = '\0';
    snprintf(json, sizeof(json),
             "{\"sub\":\"%s\",\"exp\":\"2039-01-01T00:00:00Z\"}", sub);
    check(test_claims(json, TEST_NOW, &c) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "bad sub") == 0);

    check(test_claims("{\"exp\":\"2039-01-01T00:00:00Z\"}", TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "no sub") == 0);

    check(test_claims("{\"Sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\"}",
                      TEST_NOW, &c) == NGX_DECLINED);

    check(test_claims("{\"sub\":42,\"exp\":\"2039-01-01T00:00:00Z\"}",
                      TEST_NOW, &c) == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "bad sub") == 0);

    /* two subjects: which one would a downstream parser pick? */

    check(test_claims("{\"sub\":\"alice\",\"sub\":\"bob\","
                      "\"exp\":\"2039-01-01T00:00:00Z\"}", TEST_NOW, &c)
          == NGX_DECLINED);
    check(test_claims("{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\","
                      "\"exp\":\"2039-01-02T00:00:00Z\"}", TEST_NOW, &c)
          == NGX_DECLINED);
}


static void
test_claims_json(void)
{
    size_t                  i;
    ngx_str_t               payload;
    ngx_stream_im_claims_t  c;

    static char  *bad[] = {
        "", " ", "{", "}", "[]", "[{\"sub\":\"alice\"}]", "\"alice\"", "42",
        "null", "true",
        "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\"",
        "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\"} x",
        "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\"}{}",
        "{sub:\"alice\",exp:\"2039-01-01T00:00:00Z\"}",
        "{'sub':'alice','exp':'2039-01-01T00:00:00Z'}",
        "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\",}",
        "{\"sub\":\"al\xffice\",\"exp\":\"2039-01-01T00:00:00Z\"}",
        "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00:00Z\",\"x\":\"\xc3\"}"
    };

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        check(test_claims(bad[i], TEST_NOW, &c) == NGX_DECLINED);
        check(test_err != NULL);
    }

    /* whitespace and claims nobody asked for are fine */

    check(test_claims(" {\n\"data\":{\"x\":[1,2,3]}, \"sub\" : \"alice\","
                      "\"aud\":\"chat\",\"jti\":\"1\","
                      "\"exp\":\"2039-01-01T00:00:00Z\"}\n", TEST_NOW, &c)
          == NGX_OK && c.user_len == 5 && c.exp == TEST_EXP);

    /* the payload is not NUL-terminated: only len bytes count */

    payload.data = (u_char *) "{\"sub\":\"alice\","
                              "\"exp\":\"2039-01-01T00:00:00Z\"}garbage";
    payload.len = strlen((char *) payload.data) - 7;
    test_err = NULL;
    check(ngx_stream_im_token_claims(&payload, TEST_NOW, &c, &test_err)
          == NGX_OK && c.exp == TEST_EXP);

    payload.len--;
    check(ngx_stream_im_token_claims(&payload, TEST_NOW, &c, &test_err)
          == NGX_DECLINED);
    check(test_err != NULL && strcmp(test_err, "bad json") == 0);

    /* an embedded NUL byte, raw */

    payload.data = (u_char *) "{\"sub\":\"alice\",\"exp\":\"2039-01-01T00:00"
                              ":00Z\"}\0";
    payload.len = strlen((char *) payload.data) + 1;
    check(ngx_stream_im_token_claims(&payload, TEST_NOW, &c, &test_err)
          == NGX_DECLINED);
}


static void
test_valid_id(void)
{
    u_char      id[80];
    ngx_uint_t  c, ok, wrong;

    check(ngx_stream_im_valid_id((u_char *) "a", 1) == NGX_OK);
    check(ngx_stream_im_valid_id((u_char *) "a", 0) == NGX_DECLINED);
    check(ngx_stream_im_valid_id(NULL, 0) == NGX_DECLINED);
    check(ngx_stream_im_valid_id((u_char *) "alice@example.com", 17)
          == NGX_OK);
    check(ngx_stream_im_valid_id((u_char *) "a.b_c-d@E9", 10) == NGX_OK);

    /* only the given length counts */

    check(ngx_stream_im_valid_id((u_char *) "alice bob", 5) == NGX_OK);
    check(ngx_stream_im_valid_id((u_char *) "alice bob", 6) == NGX_DECLINED);
    check(ngx_stream_im_valid_id((u_char *) "ab\0c", 4) == NGX_DECLINED);

    memset(id, 'Z', sizeof(id));
    check(ngx_stream_im_valid_id(id, 63) == NGX_OK);
    check(ngx_stream_im_valid_id(id, 64) == NGX_OK);
    check(ngx_stream_im_valid_id(id, 65) == NGX_DECLINED);
    check(ngx_stream_im_valid_id(id, 80) == NGX_DECLINED);

    /* every byte value, alone and last in a valid id */

    wrong = 0;

    for (c = 0; c < 256; c++) {
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
             || (c >= '0' && c <= '9')
             || c == '_' || c == '.' || c == '@' || c == '-';

        id[0] = (u_char) c;

        if ((ngx_stream_im_valid_id(id, 1) == NGX_OK) != ok) {
            wrong++;
        }

        id[0] = 'a';
        id[63] = (u_char) c;

        if ((ngx_stream_im_valid_id(id, 64) == NGX_OK) != ok) {
            wrong++;
        }

        id[63] = 'Z';
    }

    check(wrong == 0);
}


int
main(void)
{
    if (sodium_init() == -1) {
        fprintf(stderr, "sodium_init() failed\n");
        return 1;
    }

    crypto_sign_keypair(test_k1.pk, test_k1.sk);
    crypto_sign_keypair(test_k2.pk, test_k2.sk);
    crypto_sign_keypair(test_k3.pk, test_k3.sk);

    test_vectors();
    test_keys();
    test_rotation();
    test_minting();
    test_tampering();
    test_format();
    test_sizes();
    test_claims_time();
    test_claims_sub();
    test_claims_json();
    test_valid_id();

    return unit_done("auth");
}
