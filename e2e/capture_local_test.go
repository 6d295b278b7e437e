package e2e

import (
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

func TestLocalSmoke(t *testing.T) {
	l := appliance.StartLocal(t)
	out, errOut, code := l.Curl("-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+"/v1/models")
	if code != 0 {
		t.Fatalf("curl exit %d: %s\n%s", code, errOut, l.Srv.Log())
	}
	got := l.Received()
	if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+appliance.Secret {
		t.Fatalf("upstream received %+v", got)
	}
	if strings.Contains(out, appliance.Secret) {
		t.Fatal("the agent's response holds the secret")
	}
}
