
/*
 * Copyright (C) ngx_im authors
 */


#ifndef _NGX_STREAM_IM_FUZZ_H_INCLUDED_
#define _NGX_STREAM_IM_FUZZ_H_INCLUDED_


#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>


/*
 * A broken invariant is a crash: libFuzzer keeps the input as an
 * artifact, and the runner fails.
 */

#define fuzz_assert(expr)                                                     \
    do {                                                                      \
        if (!(expr)) {                                                        \
            fprintf(stderr, "%s:%d: invariant broken: %s\n",                  \
                    __FILE__, __LINE__, #expr);                               \
            abort();                                                          \
        }                                                                     \
    } while (0)


/* a copy of the input on the heap, exactly its size, for ASan to guard */

static u_char *
fuzz_dup(const uint8_t *data, size_t size)
{
    u_char  *p;

    p = malloc(size ? size : 1);
    if (p == NULL) {
        abort();
    }

    if (size) {
        memcpy(p, data, size);
    }

    return p;
}


/* xorshift32: chunk sizes and choices, derived from the input */

static uint32_t
fuzz_random(uint32_t *state)
{
    uint32_t  x;

    x = *state ? *state : 0x9e3779b9;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;

    *state = x;

    return x;
}


/* FNV-1a: what a parser said, as one number to compare two runs by */

static void
fuzz_hash(uint64_t *h, const void *data, size_t len)
{
    const u_char  *p;

    for (p = data; len; len--, p++) {
        *h ^= *p;
        *h *= 0x100000001b3ULL;
    }
}


static void
fuzz_hash_int(uint64_t *h, uint64_t v)
{
    fuzz_hash(h, &v, sizeof(v));
}


/* strict UTF-8 (RFC 3629, Unicode table 3-7), the reference */

static int
fuzz_utf8_valid(const u_char *p, size_t len)
{
    size_t   i, n;
    u_char   c, lo, hi;

    i = 0;

    while (i < len) {
        c = p[i];
        lo = 0x80;
        hi = 0xbf;

        if (c < 0x80) {
            i++;
            continue;

        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;

        } else if (c == 0xe0) {
            n = 2;
            lo = 0xa0;

        } else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) {
            n = 2;

        } else if (c == 0xed) {
            n = 2;
            hi = 0x9f;

        } else if (c == 0xf0) {
            n = 3;
            lo = 0x90;

        } else if (c >= 0xf1 && c <= 0xf3) {
            n = 3;

        } else if (c == 0xf4) {
            n = 3;
            hi = 0x8f;

        } else {
            return 0;
        }

        if (len - i <= n) {
            return 0;
        }

        if (p[i + 1] < lo || p[i + 1] > hi) {
            return 0;
        }

        for (i += 2, n--; n; n--, i++) {
            if (p[i] < 0x80 || p[i] > 0xbf) {
                return 0;
            }
        }
    }

    return 1;
}


/* the id charset of DESIGN.md: 1-64 of [A-Za-z0-9_.@-] */

static int
fuzz_id_valid(const u_char *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > 64) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '.'
              || p[i] == '@' || p[i] == '-'))
        {
            return 0;
        }
    }

    return 1;
}


#endif /* _NGX_STREAM_IM_FUZZ_H_INCLUDED_ */
