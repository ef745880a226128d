#!/bin/sh
# Installs the Debian packages the test suite needs, and only those missing:
# protoc (generated-code check), redis-server and redis-cli (cluster tests;
# redis-cli joins the Redis Cluster tests start), nginx with the
# stream module (load-balancer tests), prlimit (descriptor-limit tests; part
# of util-linux, which Debian always has), chromium (the web page's browser
# tests drive it headless; Debian's package, no browser download).
set -eu
missing=""
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$missing libnginx-mod-stream"
command -v prlimit >/dev/null 2>&1 || missing="$missing util-linux"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
[ -z "$missing" ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
# shellcheck disable=SC2086
$sudo apt-get install -y -q --no-install-recommends $missing >/dev/null
