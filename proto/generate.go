// Package chatpb is the generated Go code for chat.proto, the loopchat wire
// schema. Regenerate it with `make generate` (or `go generate ./proto`);
// proto/gen.sh pins protoc and protoc-gen-go.
package chatpb

//go:generate ./gen.sh
