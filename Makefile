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

.PHONY: all build build-pkcs11 test test-pkcs11 spire demo vet fmt fmtcheck cross man completions dist-bin release deb check-deb check-static image bench bench-smoke microbench soak fuzz clean

all: build

## build: compile the tunnel binary into bin/tunnel
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tunnel

## build-pkcs11: bin/tunnel with keys in PKCS#11 tokens (--key pkcs11:...);
## needs cgo and a C compiler, and links dynamically (it loads the token's
## module at run time), unlike the static release binaries
build-pkcs11:
	CGO_ENABLED=1 $(GO) build -tags pkcs11 -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tunnel

## test: vet, gofmt check, then every test (unit and end-to-end) with -race,
## then the PKCS#11 tests built with -tags pkcs11 (SoftHSM2). The SPIFFE
## tests need SPIRE built first (make spire; .ci/run does it).
test: vet fmtcheck
	@if [ -z "$(RACE)" ]; then \
		if [ -n "$$CI" ]; then \
			echo "make test: -race needs cgo and a C compiler (apt-get install gcc libc6-dev)" >&2; exit 1; \
		fi; \
		echo "WARNING: cgo is off (no C compiler?): running the tests WITHOUT -race" >&2; \
	fi
	$(GO) test $(RACE) -count=1 ./...
	$(MAKE) --no-print-directory test-pkcs11

## test-pkcs11: the trust package's PKCS#11 tests with -tags pkcs11, against
## a SoftHSM2 token made at test time (apt-get install softhsm2 opensc)
test-pkcs11:
	$(GO) vet -tags pkcs11 ./trust/
	$(GO) test $(RACE) -count=1 -tags pkcs11 -run 'PKCS11' ./trust/

## spire: build spire-server and spire-agent (SPIRE 1.13.3) into the cache
## the SPIFFE tests use ($$TUNNEL_SPIRE_DIR or ~/.cache/tunnel-spire); about
## 9 minutes cold, nothing when cached
spire:
	scripts/spire/build.sh

## soak: random streams across 20 client sessions with backend restarts and
## certificate reloads for SOAK_DURATION (default 10m); CI runs 60s
SOAK_DURATION ?= 10m
soak:
	TUNNEL_SOAK_DURATION=$(SOAK_DURATION) $(GO) test $(RACE) -count=1 -timeout 2h -run '^TestSoak$$' -v ./e2e/

## fuzz: every fuzz target for FUZZTIME each (default 30s; CI runs 10s)
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
## platform Go users expect, without cgo and with -trimpath, as make release
## builds: the packages it compiles are the release build's, from the cache
CROSS_TARGETS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64 freebsd/amd64 freebsd/arm64
cross:
	@set -e; for t in $(CROSS_TARGETS); do \
		echo "go vet ./... ($$t)"; \
		CGO_ENABLED=0 GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet -trimpath ./...; \
	done

# Release artefacts. A release binary is static (no cgo), with trimmed
# paths and the version stamped; the Dockerfile copies the linux one.
DIST      ?= dist
PKG_BUILD ?= build/pkg
RELEASE_TARGETS ?= $(CROSS_TARGETS)
TARGET_OS   ?= $(shell $(GO) env GOOS)
TARGET_ARCH ?= $(shell $(GO) env GOARCH)
DEB_ARCH    ?= $(TARGET_ARCH)
# A Debian version must start with a digit: v1.2.3 -> 1.2.3,
# v1.2.3-4-gabc1234 -> 1.2.3+4.gabc1234, a bare commit -> 0.0.0+git.COMMIT.
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E -e 's/^v([0-9])/\1/' -e '/^[0-9]+\./!s/^/0.0.0+git./' -e 's/-/+/' -e 's/-/./g')

## man: the tunnel(1) man page, from the command definitions, in build/man
man: build
	@mkdir -p build/man
	$(BIN) man > build/man/tunnel.1
	@echo "wrote build/man/tunnel.1 (man -l build/man/tunnel.1)"

## completions: bash, zsh and fish completion scripts in build/completions
completions: build
	@mkdir -p build/completions
	$(BIN) completion bash > build/completions/tunnel.bash
	$(BIN) completion zsh > build/completions/_tunnel
	$(BIN) completion fish > build/completions/tunnel.fish

## dist-bin: one release binary, dist/tunnel-OS-ARCH (make dist-bin TARGET_OS=freebsd TARGET_ARCH=arm64)
dist-bin:
	@mkdir -p $(DIST)
	CGO_ENABLED=0 GOOS=$(TARGET_OS) GOARCH=$(TARGET_ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' \
		-o $(DIST)/tunnel-$(TARGET_OS)-$(TARGET_ARCH)$(if $(filter windows,$(TARGET_OS)),.exe) ./cmd/tunnel

## deb: the Debian package for DEB_ARCH (default: this machine's) in dist/, with nfpm
deb: man completions
	$(MAKE) --no-print-directory dist-bin TARGET_OS=linux TARGET_ARCH=$(DEB_ARCH)
	@rm -rf $(PKG_BUILD) && mkdir -p $(PKG_BUILD)
	cp $(DIST)/tunnel-linux-$(DEB_ARCH) $(PKG_BUILD)/tunnel
	for u in tunnel-server.service tunnel-client.service tunnel-server.socket; do \
		sed 's|/usr/local/bin/tunnel|/usr/bin/tunnel|g' examples/systemd/$$u > $(PKG_BUILD)/$$u; \
	done
	gzip -9n < build/man/tunnel.1 > $(PKG_BUILD)/tunnel.1.gz
	cp build/completions/tunnel.bash build/completions/_tunnel build/completions/tunnel.fish $(PKG_BUILD)/
	DEB_ARCH=$(DEB_ARCH) DEB_VERSION='$(DEB_VERSION)' PKG_BUILD=$(PKG_BUILD) \
		$(GO) tool nfpm package --config packaging/nfpm.yaml --packager deb --target $(DIST)/

## check-deb: install the .deb of make deb on this machine (root), check it,
## reinstall it, remove and purge it (what CI runs)
check-deb:
	packaging/check-deb $(DIST)/tunnel_$(DEB_VERSION)_$(DEB_ARCH).deb '$(VERSION)'

## release: release binaries for RELEASE_TARGETS (the 8 of make cross), the
## .deb for each linux target, and dist/SHA256SUMS
release:
	rm -rf $(DIST)
	@set -e; for t in $(RELEASE_TARGETS); do \
		$(MAKE) --no-print-directory dist-bin TARGET_OS=$${t%/*} TARGET_ARCH=$${t#*/}; \
	done
	@set -e; for t in $(filter linux/%,$(RELEASE_TARGETS)); do \
		$(MAKE) --no-print-directory deb DEB_ARCH=$${t#*/}; \
	done
	cd $(DIST) && sha256sum $$(ls | grep -v '^SHA256SUMS$$') > SHA256SUMS
	@cat $(DIST)/SHA256SUMS

## check-static: the linux binary the Dockerfile copies is static, trimmed
## and version-stamped (what CI checks where no container engine runs)
check-static:
	packaging/check-static Dockerfile $(DIST) $(TARGET_ARCH) '$(VERSION)'

## image: the container image tunnel:VERSION from the Dockerfile (needs a
## container engine and dist/tunnel-linux-ARCH from make release or dist-bin)
image:
	docker build --build-arg TARGETARCH=$(TARGET_ARCH) -t tunnel:$(VERSION) .

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
	rm -rf bin build $(DIST)
