#!/usr/bin/env bash
#
# ngx_im: the one entry point.
#
#   ./build.sh deps    install the Debian packages the project needs
#   ./build.sh build   build build/ngx_stream_im_module.so and the tools
#   ./build.sh run     deps + build, then redis-server and nginx on loopback
#   ./build.sh test    deps + build + every test: unit, integration,
#                      the JS SDK and the web chat in Chromium,
#                      conformance, a sanitizer pass, a 60 s chaos run,
#                      a short fuzz run
#   ./build.sh test-js deps + build, then only the JS SDK's tests
#   ./build.sh bench   deps + build, then the benchmark (bench/run:
#                      --sessions N, --peers); figures in build/bench
#   ./build.sh fuzz [seconds]
#                      deps + build, then each fuzz target (60 s each)
#   ./build.sh chaos [seconds] [--seed N]
#                      deps + build + the ASan build, then the chaos run
#                      (t/chaos/run: faults, hostile and honest clients;
#                      report in build/chaos/report-<seed>.json)
#
# Everything is written under build/; nothing outside the repo but apt.

set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
build=$top/build
ngx_src=$build/nginx-src
python=/usr/bin/python3

# nginx's headers as configured, for what is built outside nginx's make
ngx_incs=(
    -I"$ngx_src/src/core" -I"$ngx_src/src/event"
    -I"$ngx_src/src/event/modules" -I"$ngx_src/src/os/unix"
    -I"$ngx_src/src/stream" -I"$ngx_src/objs"
    -I"$ngx_src/objs/addon/im_proto" -I"$top/ngx_im_module"
)

packages=(
    build-essential pkg-config
    nginx libnginx-mod-stream nginx-dev
    libpcre2-dev libssl-dev zlib1g-dev
    libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
    libhiredis-dev libsodium-dev libjansson-dev
    redis-server redis-sentinel
    python3 python3-pytest python3-websockets python3-protobuf
    python3-autobahn clang libclang-rt-14-dev llvm
    prometheus python3-prometheus-client
    curl openssl chromium
)


log() {
    printf '==> %s\n' "$*" >&2
}


deps() {
    local missing=()
    local p

    for p in "${packages[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
             | grep -q 'ok installed'
        then
            missing+=("$p")
        fi
    done

    # the machine's own Node.js and npm if it has them, Debian's if not
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        missing+=(nodejs npm)
    fi

    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi

    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}


# nginx's own source tree from nginx-dev, configured like Debian's nginx
configure_nginx() {
    local stamp=$ngx_src/objs/Makefile

    if [ -f "$stamp" ] && [ "$stamp" -nt "$top/config" ] \
       && [ "$stamp" -nt "$top/proto/im.proto" ] \
       && [ "$stamp" -nt /usr/share/nginx/src/conf_flags ]
    then
        return
    fi

    log "configuring nginx $(nginx -v 2>&1 | sed 's,.*/,,') for the module"
    rm -rf "$ngx_src"
    mkdir -p "$build"
    cp -a /usr/share/nginx/src "$ngx_src"

    # shellcheck disable=SC1091
    . "$ngx_src/conf_flags"

    (cd "$ngx_src" && ./configure "${NGX_CONF_FLAGS[@]}" \
        --with-stream=dynamic --with-stream_ssl_module \
        --with-stream_realip_module --with-stream_ssl_preread_module \
        --with-cc-opt="-g -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2" \
        --with-ld-opt="-Wl,-z,relro -Wl,-z,now" \
        --add-dynamic-module="$top" >"$build/configure.log" 2>&1) || {
        tail -20 "$build/configure.log"
        exit 1
    }
}


build_module() {
    configure_nginx
    log "building ngx_stream_im_module.so"
    make -s -C "$ngx_src" -f objs/Makefile -j"$(nproc)" \
        objs/ngx_stream_im_module.so
    # a new inode: a running nginx keeps the module it has mapped
    cp "$ngx_src/objs/ngx_stream_im_module.so" "$build/.module.so.tmp"
    mv -f "$build/.module.so.tmp" "$build/ngx_stream_im_module.so"
}


# the pure parts (framing, handshake, codec, tokens) with their unit tests
build_unit() {
    local incs=("${ngx_incs[@]}" -I"$top/t/unit")
    local m=$top/ngx_im_module
    local pure=(
        "$m/ngx_stream_im_handshake.c" "$m/ngx_stream_im_websocket.c"
        "$m/ngx_stream_im_codec.c" "$m/ngx_stream_im_auth.c"
        "$ngx_src/objs/addon/im_proto/im.pb-c.c"
    )
    local t

    log "building unit tests"
    mkdir -p "$build/unit"

    for t in "$top"/t/unit/test_*.c; do
        cc -g -O1 -Wall -Wextra -Wno-unused-parameter -Werror \
            -fsanitize=address,undefined -fno-omit-frame-pointer \
            "${incs[@]}" "$t" "${pure[@]}" \
            -lprotobuf-c -lsodium -ljansson \
            -o "$build/unit/$(basename "$t" .c)"
    done
}


# the command-line tools, sharing the module's pure token code
build_tools() {
    local pb=$ngx_src/objs/addon/im_proto

    log "building tools"
    cc -g -O2 -Wall -Wextra -Wno-unused-parameter -Werror "${ngx_incs[@]}" \
        "$top/tools/im_token.c" "$top/ngx_im_module/ngx_stream_im_auth.c" \
        -lsodium -ljansson -o "$build/im-token"

    cc -g -O2 -Wall -Wextra -Wno-unused-parameter -Werror -I"$pb" \
        "$top/tools/imcat.c" "$top/tools/im_client.c" "$pb/im.pb-c.c" \
        -lprotobuf-c -lsodium -lcrypto -o "$build/imcat"
}


# the load generator of ./build.sh bench (docs/benchmarks.md)
build_bench() {
    local pb=$ngx_src/objs/addon/im_proto

    log "building im-bench"
    cc -g -O2 -Wall -Wextra -Wno-unused-parameter -Werror \
        "${ngx_incs[@]}" -I"$top/tools" \
        "$top/tools/im_bench.c" "$top/tools/im_client.c" "$pb/im.pb-c.c" \
        "$top/ngx_im_module/ngx_stream_im_auth.c" \
        -lprotobuf-c -lsodium -ljansson -lcrypto -o "$build/im-bench"
}


# the JS SDK (clients/js): its npm packages from the lockfile, the
# descriptor generated from proto/im.proto, the browser bundle in build/web
build_js() {
    local js=$top/clients/js

    log "building the JS SDK"
    if [ ! -f "$js/node_modules/.package-lock.json" ] \
       || [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]
    then
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    (cd "$js" && node scripts/gen.js \
        && node scripts/bundle.js "$build/web/ngx-im.js")
}


build_all() {
    build_module
    build_tools
    build_bench
    build_unit
    build_js
}


run_unit() {
    local t rc=0

    for t in "$build"/unit/test_*; do
        log "unit: $(basename "$t")"
        (cd "$top/t/unit" && "$t") || rc=1
    done

    return $rc
}


run_integration() {
    log "integration tests"
    IM_MODULE="$build/ngx_stream_im_module.so" IM_BUILD="$build" \
        "$python" -m pytest -q -p no:cacheprovider "$top/t/integration" "$@"
}


# the SDK's tests and the web chat in Chromium (clients/js/test)
run_js() {
    log "JS SDK and browser tests"
    (cd "$top/clients/js" && IM_BUILD="$build" \
        node --test --test-concurrency=1 --test-timeout=180000 test/)
}


# the WebSocket conformance suite (Autobahn's categories, and more)
run_conformance() {
    log "conformance tests"
    IM_MODULE="$build/ngx_stream_im_module.so" IM_BUILD="$build" \
        "$python" -m pytest -q -p no:cacheprovider "$top/t/conformance"
}


# the module built with ASan and UBSan, under the integration tests
run_sanitized() {
    log "sanitizer pass"
    "$top/t/sanitize.sh" all
}


run_fuzz() {
    "$top/t/fuzz/run" "$@"
}


# the chaos run against the ASan build (t/chaos/README.md)
run_chaos() {
    log "chaos run"
    "$top/t/sanitize.sh" build
    "$python" "$top/t/chaos/run" --no-build "$@"
}


run_servers() {
    local dir=$build/run
    local port=${IM_PORT:-8080}
    local rport=${IM_REDIS_PORT:-6379}
    local hport=${IM_HTTP_PORT:-8081}
    local tport=${IM_TOKEN_PORT:-8082}
    local url alice bob

    mkdir -p "$dir/logs"

    if [ ! -f "$dir/im.key" ]; then
        "$build/im-token" keygen --out "$dir/im" >/dev/null
    fi

    url=ws://127.0.0.1:$port/
    alice=$("$build/im-token" mint --key "$dir/im.key" --sub alice --ttl 24h)
    bob=$("$build/im-token" mint --key "$dir/im.key" --sub bob --ttl 24h)

    sed -e "s,@DIR@,$dir,g" -e "s,@PORT@,$rport,g" \
        "$top/t/conf/redis.conf" >"$dir/redis.conf"
    sed -e "s,@MODULE@,$build/ngx_stream_im_module.so,g" \
        -e "s,@PORT@,$port,g" -e "s,@REDIS@,127.0.0.1:$rport,g" \
        -e "s,@DIR@,$dir,g" -e "s,@HTTP_PORT@,$hport,g" \
        -e "s,@WEB@,$top/examples/web-chat,g" -e "s,@BUNDLE@,$build/web,g" \
        -e "s,@TOKEN_PORT@,$tport,g" -e "s,@USER@,$(id -un),g" \
        "$top/t/conf/nginx.conf" >"$dir/nginx.conf"

    /usr/sbin/nginx -t -q -p "$dir" -c "$dir/nginx.conf"

    redis-server "$dir/redis.conf" &
    redis_pid=$!
    /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
    nginx_pid=$!
    # the web chat's demo-only token endpoint, behind nginx's /demo/token
    node "$top/examples/web-chat/demo-token.js" --port "$tport" \
        --key "$dir/im.key" --im-token "$build/im-token" --ws "$url" &
    token_pid=$!

    # Ctrl-C, a kill or an nginx that stops: all three go
    trap 'kill $nginx_pid $redis_pid $token_pid 2>/dev/null; wait' \
        EXIT INT TERM

    # the web chat's open group
    for _ in $(seq 50); do
        curl -sf -X PUT "http://127.0.0.1:$hport/im/groups/lobby" \
            -d '{"open": true}' >/dev/null && break
        sleep 0.1
    done

    cat <<EOF

ngx_im is listening on $url (subprotocol im.v1)
redis-server on 127.0.0.1:$rport, data in $dir
logs: $dir/logs/error.log

The web chat: open http://127.0.0.1:$hport/chat/ in two browsers (or a
private window) and sign in with two names.  Its token endpoint signs a
token for any name: a demo, never a deployment (docs/security.md).

Try it in two more terminals (the tokens are valid for 24 hours):

    $build/imcat --url $url --token $bob listen

    $build/imcat --url $url --token $alice send --to bob hello

A Ping gets a Pong without a token:

    $build/imcat --url $url ping

More users: $build/im-token mint --key $dir/im.key --sub carol

The admin API (docs/api.md), metrics (Prometheus) and health, on
127.0.0.1:$hport:

    curl -s -X PUT http://127.0.0.1:$hport/im/groups/team -d '{"open": true}'

    curl -s http://127.0.0.1:$hport/im/groups/team/members \\
        -d '{"add": ["alice", "bob"]}'

    curl -s http://127.0.0.1:$hport/im/send \\
        -d '{"from": "system", "group": "team", "body": "welcome"}'

    curl -s http://127.0.0.1:$hport/im/presence -d '{"users": ["bob"]}'

    curl -s http://127.0.0.1:$hport/im/users/bob/history?limit=10

    curl -s http://127.0.0.1:$hport/im/users/bob/disconnect -d '{}'

    curl -s http://127.0.0.1:$hport/im/users/bob/revoke -d '{}'

    curl -s http://127.0.0.1:$hport/metrics

    curl -si http://127.0.0.1:$hport/health

Stop with Ctrl-C.

EOF

    wait $nginx_pid
}


cmd=${1:-}
[ $# -gt 0 ] && shift

case "$cmd" in
    deps)
        deps
        ;;
    build)
        build_all
        ;;
    run)
        deps
        build_all
        run_servers
        ;;
    bench)
        deps
        build_all
        exec "$top/bench/run" "$@"
        ;;
    fuzz)
        deps
        build_all
        run_fuzz "${1:-60}"
        ;;
    chaos)
        deps
        build_all
        run_chaos "$@"
        ;;
    test-js)
        deps
        build_all
        run_js
        ;;
    test)
        deps
        build_all
        rc=0
        run_unit || rc=1
        run_integration "$@" || rc=1
        run_js || rc=1
        run_conformance || rc=1
        run_sanitized || rc=1
        run_chaos 60 || rc=1
        run_fuzz --ci || rc=1
        exit $rc
        ;;
    *)
        sed -n '3,22s/^# \{0,1\}//p' "$0"
        exit 2
        ;;
esac
