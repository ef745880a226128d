#!/bin/sh
# Fails when proto/chat.pb.go is not what `make generate` makes from chat.proto.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
proto/gen.sh "$tmp"
if ! diff -u proto/chat.pb.go "$tmp/chat.pb.go" >"$tmp/diff"; then
	head -40 "$tmp/diff" >&2
	echo "proto/chat.pb.go is stale: run 'make generate' and commit the result" >&2
	exit 1
fi
