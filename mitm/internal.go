package mitm

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/agentvault/agent-vault/policy"
)

type agentKey struct{}

func withAgent(ctx context.Context, a *policy.Agent) context.Context {
	return context.WithValue(ctx, agentKey{}, a)
}

// AgentFromContext returns the agent of a request served on
// agent-vault.internal (for Config.Internal handlers). The agent was
// identified by its network identity or its proxy token, and is active.
func AgentFromContext(ctx context.Context) (policy.Agent, bool) {
	a, ok := ctx.Value(agentKey{}).(*policy.Agent)
	if !ok || a == nil {
		return policy.Agent{}, false
	}
	return *a, true
}

// newInternal serves the reserved name agent-vault.internal: whoami here,
// everything else through Config.Internal.
func (b *Broker) newInternal() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/whoami", func(w http.ResponseWriter, r *http.Request) {
		a, _ := AgentFromContext(r.Context())
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]string{"agent": a.Name, "vault": a.Vault})
	})
	if b.cfg.Internal != nil {
		mux.Handle("/", b.cfg.Internal)
	} else {
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			writeAgentError(w, http.StatusNotFound, CodeNotFound, "agent-vault.internal has no "+r.Method+" "+r.URL.Path,
				"GET /v1/whoami says who you are.")
		})
	}
	return mux
}
