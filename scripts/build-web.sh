#!/bin/sh
# Rebuilds web/dist/app.js — the script of the chat page a node serves with
# --web, committed and embedded in the binary (go:embed) with web/src's
# index.html and style.css, so building and testing need no Node — from
# web/src/app.js and proto/chat.proto: protoc-gen-es makes the protobuf
# code, esbuild bundles it with @bufbuild/protobuf and the page's script.
# Needs node/npm (versions pinned in web/package-lock.json) and protoc. Run
# it after changing web/src/*.js, proto/chat.proto or web/package*.json, and
# commit web/dist/: TestDistIsFresh (web/) fails while dist/ is stale.
set -eu
cd "$(dirname "$0")/.."
command -v npm >/dev/null || { echo "build-web: npm is missing (Debian: apt-get install npm)" >&2; exit 1; }
command -v protoc >/dev/null || { echo "build-web: protoc is missing: run make deps" >&2; exit 1; }

(cd web && npm ci --no-audit --no-fund --loglevel=error)
rm -rf web/gen
mkdir -p web/gen web/dist
protoc --plugin=protoc-gen-es=web/node_modules/.bin/protoc-gen-es --es_out=web/gen --es_opt=target=js \
	-I proto proto/chat.proto
web/node_modules/.bin/esbuild web/src/app.js --bundle --format=iife --target=es2020 --minify \
	--charset=utf8 --legal-comments=none --log-level=warning --outfile=web/dist/app.js
# What dist/ was built from; TestDistIsFresh compares it with the tree.
sha256sum proto/chat.proto scripts/build-web.sh web/package.json web/package-lock.json \
	$(find web/src -type f -name '*.js' | LC_ALL=C sort) >web/dist/inputs.sha256
ls -l web/dist
