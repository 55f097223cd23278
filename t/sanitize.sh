#!/usr/bin/env bash
#
# The sanitizer pass: the module built a second time with AddressSanitizer
# and UndefinedBehaviorSanitizer, and integration tests run against it in
# Debian's own /usr/sbin/nginx with the ASan runtime preloaded.
#
#   t/sanitize.sh build           build/asan/ngx_stream_im_module.so
#   t/sanitize.sh test [args]     the tests against it (args go to pytest)
#   t/sanitize.sh [all] [args]    both: what `./build.sh test` runs
#
# Needs ./build.sh build first (the configured tree in build/nginx-src).
#
# Where reports go: every nginx (master and workers) writes ASan, LSan and
# UBSan reports to its stderr, which nginx points at its error.log once
# the configuration is read (stderr.log before that).  The tests fail on
# "AddressSanitizer", "LeakSanitizer" and "runtime error:" in either, so
# a report fails the test that caused it.  `nginx -t` runs write theirs
# to build/asan/reports/, and this script fails on any file there; it
# also sweeps every error.log and stderr.log of the run once more.
#
# Leaks: a worker's leaks at exit count.  nginx unloads its modules
# before a worker exits, which would leave a leak's stack without names
# and make the module's globals look lost: a preloaded no-op dlclose()
# keeps the module mapped.  With it, Debian's nginx core leaks nothing at
# a worker's exit, so build/asan/lsan.supp (LSAN_OPTIONS=suppressions=)
# is empty; should a core allocation site show up, suppress it by the
# core function's name, never by main or ngx_alloc, which every module
# allocation passes through.  `nginx -t` returns from main() without
# freeing its cycle, by design: leak checking is off for it only.
#
# NGX_DEBUG_PALLOC is defined for the module's objects as asked, but it
# is read only by ngx_palloc.c, inside the nginx binary: without
# rebuilding nginx's core it has no effect, and memory from nginx pools
# is not checked byte by byte.  The module's own heap (ngx_alloc) is.
#
# IM_ASAN_TESTS overrides the test files (default: the parsers and the
# session lifecycle, see below); IM_ASAN_CONFORMANCE=0 leaves out
# t/conformance.

set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build
asan=$build/asan
python=/usr/bin/python3

san="-fsanitize=address,undefined -fno-omit-frame-pointer"

# the files whose code paths are the hostile-input surface: handshake,
# framing, protobuf, tokens, floods, the session's whole life, and the
# Redis link's (Sentinel answers, failover, replies held for WAIT)
default_tests=(
    t/integration/test_handshake.py
    t/integration/test_websocket.py
    t/integration/test_auth_tokens.py
    t/integration/test_messaging.py
    t/integration/test_limits.py
    t/integration/test_hostile.py
    t/integration/test_token_lifetime.py
    t/integration/test_api.py
    t/integration/test_sentinel.py
)


log() {
    printf '==> %s\n' "$*" >&2
}


build_asan() {
    local src=$build/nginx-src
    local dst=$asan/nginx-src
    local so=$asan/ngx_stream_im_module.so
    local cflags f stale=0

    if [ ! -f "$src/objs/Makefile" ]; then
        echo "t/sanitize.sh: no $src/objs/Makefile, run ./build.sh build" >&2
        exit 1
    fi

    if [ -f "$so" ]; then
        for f in "$top"/ngx_im_module/* "$src/objs/Makefile" \
                 "$src/objs/addon/im_proto/im.pb-c.c" "$0"
        do
            if [ "$f" -nt "$so" ]; then
                stale=1
            fi
        done

        if [ $stale -eq 0 ]; then
            return
        fi
    fi

    log "building the module with ASan and UBSan"

    # a copy of the configured tree: its objects must not mix with the
    # plain build's, and make must not take the copied ones as fresh

    mkdir -p "$asan"
    rm -rf "$dst"
    cp -a "$src" "$dst"
    find "$dst/objs" \( -name '*.o' -o -name '*.so' \) -delete

    cflags=$(sed -n 's/^CFLAGS =[[:space:]]*//p' "$dst/objs/Makefile")

    make -s -C "$dst" -f objs/Makefile -j"$(nproc)" \
        CFLAGS="$cflags -O1 $san -DNGX_DEBUG_PALLOC=1" \
        LINK="cc $san" \
        objs/ngx_stream_im_module.so

    cp "$dst/objs/ngx_stream_im_module.so" "$asan/.module.so.tmp"
    mv -f "$asan/.module.so.tmp" "$so"
}


write_runtime() {
    local libasan symbolizer

    libasan=$(gcc -print-file-name=libasan.so)
    libasan=$(readlink -f "$libasan")

    if [ ! -f "$libasan" ]; then
        echo "t/sanitize.sh: no libasan.so (gcc)" >&2
        exit 1
    fi

    symbolizer=$(command -v llvm-symbolizer || true)

    mkdir -p "$asan/reports"

    # nginx unloads its modules when the cycle pool goes, before a worker
    # exits and LSan looks for leaks: a no-op dlclose() keeps the module
    # mapped, so a leak's stack names the module's functions

    printf 'int dlclose(void *handle) { (void) handle; return 0; }\n' \
        >"$asan/nodlclose.c"
    cc -shared -fPIC -O2 -o "$asan/nodlclose.so" "$asan/nodlclose.c"

    # nginx core's allocation sites that a worker never frees: none so
    # far (see the top of this file)

    cat >"$asan/lsan.supp" <<'EOF'
# leak:<an nginx core function>, one a line
EOF

    # nginx clears its workers' environment (but TZ), so the runtime's
    # options are given here, read once by the master, inherited by fork

    cat >"$asan/nginx" <<EOF
#!/bin/sh
# nginx with the ASan runtime preloaded (written by t/sanitize.sh)
opts=detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=40
opts=\$opts:detect_odr_violation=0:print_suppressions=0
for a in "\$@"; do
    if [ "\$a" = "-t" ]; then
        # nginx -t's output is not checked by the tests: keep it here;
        # it returns from main() without freeing its cycle, by design
        opts=\$opts:detect_leaks=0:log_path=$asan/reports/nginx-t
    fi
done
export ASAN_OPTIONS="\$opts"
export LSAN_OPTIONS="suppressions=$asan/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0"
${symbolizer:+export ASAN_SYMBOLIZER_PATH=$symbolizer}
export LD_PRELOAD="$libasan $asan/nodlclose.so"
exec /usr/sbin/nginx "\$@"
EOF
    chmod +x "$asan/nginx"

    # imtest.NGINX is fixed; this plugin points it at the wrapper

    cat >"$asan/im_asan_plugin.py" <<EOF
# loaded with -p im_asan_plugin by t/sanitize.sh
import sys


def pytest_configure(config):
    sys.path.insert(0, "$top/t/integration")
    import imtest
    imtest.NGINX = "$asan/nginx"


def pytest_report_header(config):
    return "sanitizer pass: nginx with ASan+UBSan preloaded ($asan/nginx)"
EOF
}


# every report of the run, wherever it landed; 0 if there is none

sweep() {
    local dir=$1
    local pat='AddressSanitizer|LeakSanitizer|runtime error:'
    local found=0 f

    for f in "$asan"/reports/*; do
        [ -f "$f" ] || continue
        log "sanitizer report: $f"
        head -60 "$f" >&2
        found=1
    done

    while IFS= read -r f; do
        log "sanitizer report in $f"
        grep -E -A 30 "$pat" "$f" | head -60 >&2
        found=1
    done < <(grep -rlE --include=error.log --include=stderr.log \
                 "$pat" "$dir" 2>/dev/null || true)

    return $found
}


test_asan() {
    local files=() f rc=0 start
    local tmp=$asan/tmp

    write_runtime
    rm -f "$asan"/reports/*

    if [ -n "${IM_ASAN_TESTS:-}" ]; then
        read -r -a files <<<"$IM_ASAN_TESTS"

    else
        for f in "${default_tests[@]}"; do
            if [ -f "$top/$f" ]; then
                files+=("$top/$f")
            fi
        done

        if [ "${IM_ASAN_CONFORMANCE:-1}" != 0 ] \
           && [ -d "$top/t/conformance" ]
        then
            files+=("$top/t/conformance")
        fi
    fi

    log "sanitizer pass: ${files[*]#$top/}"
    start=$(date +%s)

    (cd "$top" && PYTHONPATH=$asan \
        IM_MODULE=$asan/ngx_stream_im_module.so IM_BUILD=$build \
        "$python" -m pytest -q -p no:cacheprovider -p im_asan_plugin \
            --basetemp="$tmp" "${files[@]}" "$@") || rc=1

    if ! sweep "$tmp"; then
        rc=1
    fi

    log "sanitizer pass took $(( $(date +%s) - start )) s"

    return $rc
}


cmd=${1:-all}
[ $# -gt 0 ] && shift

case "$cmd" in
    build)
        build_asan
        ;;
    test)
        test_asan "$@"
        ;;
    all)
        build_asan
        test_asan "$@"
        ;;
    *)
        sed -n '3,9s/^# \{0,1\}//p' "$0"
        exit 2
        ;;
esac
