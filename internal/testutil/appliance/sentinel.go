package appliance

import (
	"encoding/base64"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/internal/harness"
)

// AssertNoSecretAnywhere is run at the end of every appliance test: the
// real credential (Secret, and any other value the test set) must appear
// nowhere but on the wire to the upstream — not in the server's log, and
// not in clear (raw or base64) in any file of its data dir (the store is
// encrypted with the master password; the audit journal holds no values).
func AssertNoSecretAnywhere(t *testing.T, srv *harness.Server, more ...string) {
	t.Helper()
	var forms []string
	for _, s := range append([]string{Secret}, more...) {
		forms = append(forms, s, base64.StdEncoding.EncodeToString([]byte(s)), base64.RawStdEncoding.EncodeToString([]byte(s)))
	}
	log := srv.Log()
	for _, f := range forms {
		if strings.Contains(log, f) {
			t.Errorf("the server log holds the secret")
		}
	}
	filepath.WalkDir(srv.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, f := range forms {
			if strings.Contains(string(data), f) {
				t.Errorf("%s holds the secret in clear", path)
			}
		}
		return nil
	})
}
