
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include <sodium.h>
#include <jansson.h>

#include "ngx_stream_im.h"


#define IM_TOKEN_OK        0
#define IM_TOKEN_ERROR     1
#define IM_TOKEN_USAGE     2

/* what ngx_stream_im_token_open() accepts */
#define IM_TOKEN_MAX       8192

#define IM_TOKEN_TTL       (24 * 60 * 60)
#define IM_TOKEN_TTL_MAX   (3650 * 24 * 60 * 60)

#define IM_TOKEN_FILE_MAX  1024


static int im_token_keygen(int argc, char **argv);
static int im_token_mint(int argc, char **argv);
static int im_token_pub(int argc, char **argv);
static int im_token_options(int argc, char **argv, char **names,
    char **values);
static int im_token_usage(char *fmt, char *arg);
static int im_token_create(char *prefix, char *suffix, mode_t mode,
    char **path);
static int im_token_write(int fd, char *path, u_char *data, size_t len);
static int im_token_read_key(char *path, u_char *sk);
static int im_token_ttl(char *text, time_t *ttl);
static void im_token_time(time_t t, char *buf, size_t size);


static char  *im_token_synopsis =
    "usage: im-token keygen --out PREFIX\n"
    "       im-token mint --key PREFIX.key --sub USER [--ttl 24h]"
    " [--footer TEXT]\n"
    "       im-token pub --key PREFIX.key\n";

static char  *im_token_help =
    "\n"
    "keygen  writes PREFIX.key (Ed25519 secret key, hex, mode 0600) and\n"
    "        PREFIX.pub (public key, hex, for nginx's im_token_key), and\n"
    "        prints the public key as PASERK k4.public\n"
    "mint    prints a PASETO v4.public token for USER; --ttl takes\n"
    "        Ns, Nm, Nh or Nd\n"
    "pub     prints the public key of a secret key file, hex\n";


int
main(int argc, char **argv)
{
    if (argc < 2) {
        return im_token_usage(NULL, NULL);
    }

    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0
        || strcmp(argv[1], "help") == 0)
    {
        fputs(im_token_synopsis, stdout);
        fputs(im_token_help, stdout);
        return IM_TOKEN_OK;
    }

    if (sodium_init() == -1) {
        fprintf(stderr, "im-token: sodium_init() failed\n");
        return IM_TOKEN_ERROR;
    }

    if (strcmp(argv[1], "keygen") == 0) {
        return im_token_keygen(argc - 2, argv + 2);
    }

    if (strcmp(argv[1], "mint") == 0) {
        return im_token_mint(argc - 2, argv + 2);
    }

    if (strcmp(argv[1], "pub") == 0) {
        return im_token_pub(argc - 2, argv + 2);
    }

    return im_token_usage("unknown command \"%s\"", argv[1]);
}


static int
im_token_keygen(int argc, char **argv)
{
    int      rc, kfd, pfd;
    char    *names[] = { "--out", NULL };
    char    *values[] = { NULL };
    char    *kpath, *ppath;
    char     hex[2 * crypto_sign_SECRETKEYBYTES + 2];
    char     b64[sodium_base64_ENCODED_LEN(crypto_sign_PUBLICKEYBYTES,
                 sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    u_char   pk[crypto_sign_PUBLICKEYBYTES];
    u_char   sk[crypto_sign_SECRETKEYBYTES];

    rc = im_token_options(argc, argv, names, values);
    if (rc != IM_TOKEN_OK) {
        return rc;
    }

    if (values[0] == NULL || values[0][0] == '\0') {
        return im_token_usage("keygen needs --out PREFIX", NULL);
    }

    /* never overwrite a key: the old one may still sign live tokens */

    kfd = im_token_create(values[0], ".key", 0600, &kpath);
    if (kfd == -1) {
        return IM_TOKEN_ERROR;
    }

    pfd = im_token_create(values[0], ".pub", 0644, &ppath);
    if (pfd == -1) {
        close(kfd);
        unlink(kpath);
        free(kpath);
        return IM_TOKEN_ERROR;
    }

    crypto_sign_keypair(pk, sk);

    sodium_bin2hex(hex, sizeof(hex) - 1, sk, sizeof(sk));
    strcat(hex, "\n");
    rc = im_token_write(kfd, kpath, (u_char *) hex, strlen(hex));

    if (rc == IM_TOKEN_OK) {
        sodium_bin2hex(hex, sizeof(hex) - 1, pk, sizeof(pk));
        strcat(hex, "\n");
        rc = im_token_write(pfd, ppath, (u_char *) hex, strlen(hex));

    } else {
        close(pfd);
    }

    if (rc != IM_TOKEN_OK) {
        unlink(kpath);
        unlink(ppath);

    } else {
        sodium_bin2base64(b64, sizeof(b64), pk, sizeof(pk),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        printf("k4.public.%s\n", b64);
    }

    sodium_memzero(sk, sizeof(sk));
    sodium_memzero(hex, sizeof(hex));
    free(kpath);
    free(ppath);

    return rc;
}


static int
im_token_mint(int argc, char **argv)
{
    int            rc;
    char          *names[] = { "--key", "--sub", "--ttl", "--footer", NULL };
    char          *values[] = { NULL, NULL, NULL, NULL };
    char          *m, iat[32], expire[32];
    time_t         now, ttl;
    json_t        *claims;
    ngx_str_t      c, f, token;
    u_char         sk[crypto_sign_SECRETKEYBYTES];
    u_char         buf[IM_TOKEN_MAX + 1];

    rc = im_token_options(argc, argv, names, values);
    if (rc != IM_TOKEN_OK) {
        return rc;
    }

    if (values[0] == NULL || values[1] == NULL) {
        return im_token_usage("mint needs --key FILE and --sub USER", NULL);
    }

    if (ngx_stream_im_valid_id((u_char *) values[1], strlen(values[1]))
        != NGX_OK)
    {
        return im_token_usage("bad --sub \"%s\": 1-64 characters of "
                              "[A-Za-z0-9_.@-]", values[1]);
    }

    ttl = IM_TOKEN_TTL;

    if (values[2] != NULL && im_token_ttl(values[2], &ttl) != IM_TOKEN_OK) {
        return im_token_usage("bad --ttl \"%s\": Ns, Nm, Nh or Nd, "
                              "at most 3650d", values[2]);
    }

    if (im_token_read_key(values[0], sk) != IM_TOKEN_OK) {
        return IM_TOKEN_ERROR;
    }

    now = time(NULL);
    im_token_time(now, iat, sizeof(iat));
    im_token_time(now + ttl, expire, sizeof(expire));

    claims = json_pack("{s:s, s:s, s:s}", "sub", values[1], "iat", iat,
                       "exp", expire);
    if (claims == NULL) {
        fprintf(stderr, "im-token: json_pack() failed\n");
        sodium_memzero(sk, sizeof(sk));
        return IM_TOKEN_ERROR;
    }

    m = json_dumps(claims, JSON_COMPACT);
    json_decref(claims);

    if (m == NULL) {
        fprintf(stderr, "im-token: json_dumps() failed\n");
        sodium_memzero(sk, sizeof(sk));
        return IM_TOKEN_ERROR;
    }

    c.data = (u_char *) m;
    c.len = strlen(m);

    if (values[3] != NULL) {
        f.data = (u_char *) values[3];
        f.len = strlen(values[3]);
    }

    rc = IM_TOKEN_OK;

    if (ngx_stream_im_token_sign(&c, values[3] ? &f : NULL, sk, buf, &token)
        != NGX_OK)
    {
        fprintf(stderr, "im-token: the token would be over %d bytes, "
                "the most nginx accepts: shorten --footer\n", IM_TOKEN_MAX);
        rc = IM_TOKEN_ERROR;

    } else {
        printf("%.*s\n", (int) token.len, token.data);
    }

    sodium_memzero(sk, sizeof(sk));
    free(m);

    return rc;
}


static int
im_token_pub(int argc, char **argv)
{
    int     rc;
    char   *names[] = { "--key", NULL };
    char   *values[] = { NULL };
    char    hex[2 * crypto_sign_PUBLICKEYBYTES + 1];
    u_char  pk[crypto_sign_PUBLICKEYBYTES];
    u_char  sk[crypto_sign_SECRETKEYBYTES];

    rc = im_token_options(argc, argv, names, values);
    if (rc != IM_TOKEN_OK) {
        return rc;
    }

    if (values[0] == NULL) {
        return im_token_usage("pub needs --key FILE", NULL);
    }

    if (im_token_read_key(values[0], sk) != IM_TOKEN_OK) {
        return IM_TOKEN_ERROR;
    }

    crypto_sign_ed25519_sk_to_pk(pk, sk);
    sodium_memzero(sk, sizeof(sk));

    sodium_bin2hex(hex, sizeof(hex), pk, sizeof(pk));
    printf("%s\n", hex);

    return IM_TOKEN_OK;
}


/* "--name value" pairs; each name at most once */

static int
im_token_options(int argc, char **argv, char **names, char **values)
{
    int  i, n;

    for (i = 0; i < argc; i++) {

        for (n = 0; names[n]; n++) {
            if (strcmp(argv[i], names[n]) == 0) {
                break;
            }
        }

        if (names[n] == NULL) {
            return im_token_usage("unknown option \"%s\"", argv[i]);
        }

        if (i + 1 == argc) {
            return im_token_usage("option \"%s\" needs a value", argv[i]);
        }

        if (values[n] != NULL) {
            return im_token_usage("option \"%s\" given twice", argv[i]);
        }

        values[n] = argv[++i];
    }

    return IM_TOKEN_OK;
}


static int
im_token_usage(char *fmt, char *arg)
{
    if (fmt != NULL) {
        fputs("im-token: ", stderr);
        fprintf(stderr, fmt, arg);
        fputs("\n", stderr);
    }

    fputs(im_token_synopsis, stderr);

    return IM_TOKEN_USAGE;
}


static int
im_token_create(char *prefix, char *suffix, mode_t mode, char **path)
{
    int  fd;

    *path = malloc(strlen(prefix) + strlen(suffix) + 1);
    if (*path == NULL) {
        fprintf(stderr, "im-token: out of memory\n");
        return -1;
    }

    strcpy(stpcpy(*path, prefix), suffix);

    fd = open(*path, O_WRONLY | O_CREAT | O_EXCL, mode);

    if (fd == -1) {
        fprintf(stderr, "im-token: cannot create \"%s\": %s%s\n", *path,
                strerror(errno),
                errno == EEXIST ? " (remove it first to replace it)" : "");
        free(*path);
        *path = NULL;
    }

    return fd;
}


static int
im_token_write(int fd, char *path, u_char *data, size_t len)
{
    ssize_t  n;

    while (len) {
        n = write(fd, data, len);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            fprintf(stderr, "im-token: write to \"%s\" failed: %s\n", path,
                    strerror(errno));
            close(fd);
            return IM_TOKEN_ERROR;
        }

        data += n;
        len -= n;
    }

    if (fsync(fd) == -1 || close(fd) == -1) {
        fprintf(stderr, "im-token: write to \"%s\" failed: %s\n", path,
                strerror(errno));
        return IM_TOKEN_ERROR;
    }

    return IM_TOKEN_OK;
}


/*
 * the 64-byte secret key in hex, as keygen writes it; not the 32-byte
 * seed, which a public key file given by mistake would pass for
 */

static int
im_token_read_key(char *path, u_char *sk)
{
    int      fd, rc;
    char    *p, *last;
    char     buf[IM_TOKEN_FILE_MAX + 1];
    u_char   pk[crypto_sign_PUBLICKEYBYTES];
    u_char   check[crypto_sign_SECRETKEYBYTES];
    size_t   len;
    ssize_t  n;

    fd = open(path, O_RDONLY);
    if (fd == -1) {
        fprintf(stderr, "im-token: cannot open \"%s\": %s\n", path,
                strerror(errno));
        return IM_TOKEN_ERROR;
    }

    n = 0;
    len = 0;

    while (len < sizeof(buf)) {
        n = read(fd, buf + len, sizeof(buf) - len);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            break;
        }

        len += n;
    }

    if (n == -1) {
        fprintf(stderr, "im-token: cannot read \"%s\": %s\n", path,
                strerror(errno));
        close(fd);
        return IM_TOKEN_ERROR;
    }

    close(fd);

    p = buf;
    last = buf + len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == CR || *p == LF)) {
        p++;
    }

    while (last > p
           && (last[-1] == ' ' || last[-1] == '\t'
               || last[-1] == CR || last[-1] == LF))
    {
        last--;
    }

    if (last - p == 2 * crypto_sign_SECRETKEYBYTES
        && sodium_hex2bin(sk, crypto_sign_SECRETKEYBYTES, p, last - p,
                          NULL, NULL, NULL) == 0)
    {
        /* the public half must belong to the seed, or tokens won't verify */

        crypto_sign_seed_keypair(pk, check, sk);

        rc = sodium_memcmp(check, sk, sizeof(check));
        sodium_memzero(check, sizeof(check));
        sodium_memzero(buf, sizeof(buf));

        if (rc == 0) {
            return IM_TOKEN_OK;
        }

        sodium_memzero(sk, crypto_sign_SECRETKEYBYTES);
        fprintf(stderr, "im-token: \"%s\": the public half does not match "
                "the secret half\n", path);
        return IM_TOKEN_ERROR;
    }

    sodium_memzero(buf, sizeof(buf));
    fprintf(stderr, "im-token: \"%s\" is not an Ed25519 secret key "
            "(128 hex digits)\n", path);

    return IM_TOKEN_ERROR;
}


static int
im_token_ttl(char *text, time_t *ttl)
{
    char      *p;
    uint64_t   n, unit;

    n = 0;

    for (p = text; *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (*p - '0');

        if (n > IM_TOKEN_TTL_MAX) {
            return IM_TOKEN_ERROR;
        }
    }

    if (p == text || n == 0) {
        return IM_TOKEN_ERROR;
    }

    switch (*p) {
    case 's':
        unit = 1;
        break;
    case 'm':
        unit = 60;
        break;
    case 'h':
        unit = 60 * 60;
        break;
    case 'd':
        unit = 24 * 60 * 60;
        break;
    default:
        return IM_TOKEN_ERROR;
    }

    if (p[1] != '\0' || n * unit > IM_TOKEN_TTL_MAX) {
        return IM_TOKEN_ERROR;
    }

    *ttl = n * unit;

    return IM_TOKEN_OK;
}


static void
im_token_time(time_t t, char *buf, size_t size)
{
    struct tm  tm;

    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
