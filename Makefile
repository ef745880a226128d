# loopchat developer targets. `make test` is what CI runs.
GO ?= go

.PHONY: all build test deps generate check-generated vet fuzz clean

all: build

build:
	$(GO) build -o bin/loopchat ./cmd/loopchat

## test: install missing system packages, check generated code, vet, run every test with -race.
test: deps check-generated vet
	$(GO) test -race -timeout 15m ./...

deps:
	scripts/install-deps.sh

generate:
	$(GO) generate ./proto

check-generated:
	scripts/check-generated.sh

vet:
	$(GO) vet ./...

## fuzz: run the codec fuzzer for FUZZTIME (default 30s); new finds land in codec/testdata/fuzz.
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./codec -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)

clean:
	rm -rf bin
