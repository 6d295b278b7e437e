package e2e

import (
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

func TestGatewaySmoke(t *testing.T) {
	g := appliance.StartGateway(t)
	out, errOut, code := g.Curl("-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+"/v1/models")
	if code != 0 {
		t.Fatalf("curl exit %d: %s\n%s", code, errOut, g.Srv.Log())
	}
	got := g.Received()
	if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+appliance.Secret {
		t.Fatalf("upstream received %+v", got)
	}
	if strings.Contains(out, appliance.Secret) {
		t.Fatal("the agent's response holds the secret")
	}
}
