#!/bin/sh
# Generates chat.pb.go into OUT (default: this directory) with pinned tools:
# protoc-gen-go at the version go.mod requires, and protoc at PROTOC_VERSION.
set -eu
PROTOC_VERSION=3.21.12
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
have=$(protoc --version 2>/dev/null | awk '{print $2}') || true
if [ "$have" != "$PROTOC_VERSION" ]; then
	echo "proto/gen.sh: need protoc $PROTOC_VERSION (Debian 12 protobuf-compiler), found '${have:-none}'" >&2
	exit 1
fi
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd "$here/.." && GOBIN="$bin" go install google.golang.org/protobuf/cmd/protoc-gen-go)
cd "$here"
protoc --plugin=protoc-gen-go="$bin/protoc-gen-go" --go_out="$out" --go_opt=paths=source_relative chat.proto
