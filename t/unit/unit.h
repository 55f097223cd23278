
/*
 * Copyright (C) ngx_im authors
 */


#ifndef _NGX_STREAM_IM_UNIT_H_INCLUDED_
#define _NGX_STREAM_IM_UNIT_H_INCLUDED_


#include <stdio.h>


/* a check that counts, and names the file and line when it fails */

static int  unit_passed;
static int  unit_failed;


#define check(expr)                                                           \
    do {                                                                      \
        if (expr) {                                                           \
            unit_passed++;                                                    \
                                                                              \
        } else {                                                              \
            unit_failed++;                                                    \
            fprintf(stderr, "%s:%d: check failed: %s\n",                      \
                    __FILE__, __LINE__, #expr);                               \
        }                                                                     \
    } while (0)


static int
unit_done(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, unit_passed, unit_failed);

    return unit_failed ? 1 : 0;
}


#endif /* _NGX_STREAM_IM_UNIT_H_INCLUDED_ */
