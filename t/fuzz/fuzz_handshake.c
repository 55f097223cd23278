
/*
 * Copyright (C) ngx_im authors
 */


/*
 * The HTTP/1.1 upgrade request parser, as the session calls it: on the
 * bytes gathered so far, again after every read, until it answers.
 *
 * Input: the bytes a client sends.  Parsed whole, and on a few prefixes
 * (where a read could have ended): a prefix may only wait for more or
 * give the same answer as the whole; an error always has a response;
 * an accepted request has a valid key, ends inside the input, and is
 * checked against an im_origins list.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"
#include "fuzz.h"


static ngx_int_t fuzz_parse(const uint8_t *data, size_t len,
    ngx_stream_im_handshake_t *hs, size_t *end);


static ngx_str_t  fuzz_origins[] = {
    ngx_string("https://chat.example.com"),
    ngx_string("http://127.0.0.1:8080")
};


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t                      end, pend, cut;
    uint32_t                    seed;
    ngx_int_t                   rc, prc;
    ngx_str_t                   response;
    ngx_uint_t                  i;
    ngx_stream_im_handshake_t   hs, phs;

    /* the session stops gathering at 8 KiB: so does the harness */

    if (size > NGX_STREAM_IM_HANDSHAKE_MAX) {
        size = NGX_STREAM_IM_HANDSHAKE_MAX;
    }

    rc = fuzz_parse(data, size, &hs, &end);

    if (rc == NGX_ERROR) {
        fuzz_assert(hs.reason != NULL);
        fuzz_assert(ngx_stream_im_handshake_error(hs.status, &response)
                    == NGX_OK);
        fuzz_assert(response.len > 0);

    } else if (rc == NGX_OK) {
        fuzz_assert(end <= size);
        fuzz_assert(hs.key.len == 24);
        fuzz_assert((hs.seen & 0x0f) == 0x0f);

    } else {
        fuzz_assert(rc == NGX_AGAIN);
        fuzz_assert(size < NGX_STREAM_IM_HANDSHAKE_MAX);
    }

    /* where reads could have ended: a few prefixes, the input decides */

    seed = (uint32_t) size * 2654435761U;

    for (i = 0; i < 4 && size > 1; i++) {
        cut = 1 + fuzz_random(&seed) % (size - 1);

        prc = fuzz_parse(data, cut, &phs, &pend);

        if (prc == NGX_AGAIN) {
            continue;
        }

        /* an answer on a prefix is final: the whole says the same */

        fuzz_assert(prc == rc);

        if (rc == NGX_OK) {
            fuzz_assert(pend == end);

        } else {
            fuzz_assert(phs.status == hs.status);
        }
    }

    return 0;
}


static ngx_int_t
fuzz_parse(const uint8_t *data, size_t len, ngx_stream_im_handshake_t *hs,
    size_t *end)
{
    u_char       *p;
    ngx_int_t     rc;
    ngx_array_t   origins;

    p = fuzz_dup(data, len);

    rc = ngx_stream_im_handshake_parse(p, p + len, hs);

    *end = (rc == NGX_OK) ? (size_t) (hs->end - p) : 0;

    if (rc == NGX_OK) {
        fuzz_assert(hs->end > p && hs->end <= p + len);
        fuzz_assert(hs->key.data >= p && hs->key.data + 24 <= hs->end);
        fuzz_assert(hs->origin.data == NULL
                    || (hs->origin.data >= p
                        && hs->origin.data + hs->origin.len <= hs->end));

        /* the origin check reads the request: while it is there */

        ngx_memzero(&origins, sizeof(ngx_array_t));
        origins.elts = fuzz_origins;
        origins.nelts = sizeof(fuzz_origins) / sizeof(ngx_str_t);
        origins.size = sizeof(ngx_str_t);

        (void) ngx_stream_im_handshake_origin_allowed(&origins, &hs->origin);
        fuzz_assert(ngx_stream_im_handshake_origin_allowed(NULL, &hs->origin)
                    == NGX_OK);
    }

    /* what points into the request is gone with it */

    free(p);

    hs->key.data = NULL;
    hs->origin.data = NULL;
    hs->end = NULL;

    return rc;
}
