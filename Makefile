# Agent Vault. `make run` starts the appliance, `make test` runs every test.
GO       ?= go
BIN      := bin/agent-vault
DATA_DIR ?= $(CURDIR)/.agent-vault
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
RUN_FLAGS ?=
TEST_FLAGS ?=

.PHONY: build run demo test vet generate bench bench-quick clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/agent-vault

# Starts the server in the foreground with its store under ./.agent-vault.
# It asks for a master password on a terminal (or reads AGENT_VAULT_MASTER_PASSWORD).
run: build
	$(BIN) server --data-dir $(DATA_DIR) $(RUN_FLAGS)

# Every test. Privileged tests (netns, iptables, eBPF) run as root and skip
# otherwise; AGENT_VAULT_REQUIRE_PRIVILEGED=1 turns those skips into failures.
# The concurrent packages run a second time under the race detector.
RACE_PKGS := ./policy ./audit ./store ./admin/... ./mitm/... ./dnsproxy
test: vet
	$(GO) test -count=1 $(TEST_FLAGS) ./...
	$(GO) test -race -count=1 $(TEST_FLAGS) $(RACE_PKGS)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

# Regenerates the eBPF objects from bpf/*.c (needs clang, llvm, libbpf-dev);
# bpf's tests fail when the committed objects are stale.
generate:
	$(GO) generate ./bpf

clean:
	rm -rf bin

# The offline walk-through: a real server, a local echo upstream, one brokered request.
demo: build
	$(GO) run ./internal/demo -bin $(BIN)

# Benchmarks: ratios against direct access to the same upstream, in one run.
bench: build
	$(GO) run ./internal/bench -bin $(BIN)

bench-quick: build
	$(GO) run ./internal/bench -bin $(BIN) -quick
