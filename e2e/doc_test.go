// Package e2e holds privileged end-to-end tests: the real agent-vault
// binary as a gateway (iptables) or on the box (eBPF) in network namespaces,
// with real clients that have no proxy settings, held against the matrix of
// TESTING.md. They skip without root and fail instead under
// AGENT_VAULT_REQUIRE_PRIVILEGED=1.
package e2e

import (
	"os"
	"testing"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

func TestMain(m *testing.M) {
	code := m.Run()
	appliance.RemoveBinary()
	os.Exit(code)
}
