# tunnel: build, test and demo targets. Needs only Go (and a C compiler for
# the race detector); .ci/run installs the rest of what the tests use.

GO      ?= go
BIN     ?= bin/tunnel
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --verify -q HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Extra flags for the demo, e.g. make demo DEMO_ARGS='--duration 10s'.
DEMO_ARGS ?=

# -race needs cgo, which needs a C compiler (gcc, libc6-dev). Without one,
# `make test` runs without -race and says so; under CI it fails instead.
RACE := $(if $(filter 1,$(shell $(GO) env CGO_ENABLED 2>/dev/null)),-race,)

.PHONY: all build test demo vet fmt fmtcheck cross bench bench-smoke microbench soak fuzz clean

all: build

## build: compile the tunnel binary into bin/tunnel
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tunnel

## test: vet, gofmt check, then every test (unit and end-to-end) with -race
test: vet fmtcheck
	@if [ -z "$(RACE)" ]; then \
		if [ -n "$$CI" ]; then \
			echo "make test: -race needs cgo and a C compiler (apt-get install gcc libc6-dev)" >&2; exit 1; \
		fi; \
		echo "WARNING: cgo is off (no C compiler?): running the tests WITHOUT -race" >&2; \
	fi
	$(GO) test $(RACE) -count=1 ./...

## soak: random streams across 20 client sessions with backend restarts and
## certificate reloads for SOAK_DURATION (default 10m); CI runs 60s
SOAK_DURATION ?= 10m
soak:
	TUNNEL_SOAK_DURATION=$(SOAK_DURATION) $(GO) test $(RACE) -count=1 -timeout 2h -run '^TestSoak$$' -v ./e2e/

## fuzz: every fuzz target for FUZZTIME each (default 30s; CI runs this)
FUZZTIME ?= 30s
fuzz:
	scripts/fuzz.sh $(FUZZTIME)

## demo: build, then run a server, a client and an echo backend on loopback
demo: build
	$(BIN) demo $(DEMO_ARGS)

## vet: go vet on every package
vet:
	$(GO) vet ./...

## cross: go vet (which type-checks every package and its tests) for each
## platform Go users expect, without cgo, as a release build is made
CROSS_TARGETS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64 freebsd/amd64 freebsd/arm64
cross:
	@set -e; for t in $(CROSS_TARGETS); do \
		echo "go vet ./... ($$t)"; \
		CGO_ENABLED=0 GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet ./...; \
	done

## fmt: rewrite the sources with gofmt
fmt:
	gofmt -w .

## fmtcheck: fail if gofmt would change any file
fmtcheck:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then \
		echo "gofmt: these files need formatting (run make fmt):" >&2; \
		echo "$$out" >&2; exit 1; \
	fi

## bench: the benchmark suite (scripts/bench): direct TCP, the tunnel and
## stunnel interleaved, 5 rounds (about 4 minutes); rewrites the generated
## section of docs/BENCHMARKS.md and docs/bench/latest.json. Installs
## nothing: apt-get install stunnel4 first.
bench:
	$(GO) run ./scripts/bench

## bench-smoke: one round of small sizes, as CI runs it; writes nothing under docs/
bench-smoke:
	$(GO) run ./scripts/bench --smoke

## microbench: only the Go microbenchmarks (go test -bench)
microbench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## clean: remove build output
clean:
	rm -rf bin
