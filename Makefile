# loopchat developer targets. `make test` is what CI runs.
GO ?= go

STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test deps generate check-generated vet lint fuzz cluster clean

all: build

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION) -X main.revision=$(REVISION)" -o bin/loopchat ./cmd/loopchat

## test: install missing system packages, check generated code, vet and lint, run every test with -race.
test: deps check-generated vet lint
	$(GO) test -race -timeout 15m ./...

deps:
	scripts/install-deps.sh

generate:
	$(GO) generate ./proto

check-generated:
	scripts/check-generated.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt wants the files above rewritten"; exit 1; }

lint:
	$(GO) run $(STATICCHECK) ./...

## fuzz: run each fuzzer for FUZZTIME (default 30s); new finds land in its package's testdata/fuzz.
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./codec -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)
	$(GO) test ./codec -run '^$$' -fuzz FuzzParseProxyHeader -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzParseWALRecord -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzWSFrames -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzWSHandshake -fuzztime $(FUZZTIME)
	$(GO) test ./protocol -run '^$$' -fuzz FuzzEncodeSendOK -fuzztime $(FUZZTIME)
	$(GO) test ./protocol -run '^$$' -fuzz FuzzEncodeMessagePush -fuzztime $(FUZZTIME)
	$(GO) test ./protocol -run '^$$' -fuzz FuzzDecodeFast -fuzztime $(FUZZTIME)

## cluster: redis-server + 3 nodes + loopchat lb + nginx on loopback (CLUSTER_PORT, default 7000); Ctrl-C stops all.
## REDIS=cluster: a Redis Cluster of 3 primaries + 3 replicas instead of one redis-server.
REDIS ?=
cluster: deps
	REDIS="$(REDIS)" nginx/local-cluster.sh

clean:
	rm -rf bin
