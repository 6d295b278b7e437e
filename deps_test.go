// Package agentvault_test holds repository-wide checks: the import direction
// of ARCHITECTURE.md section 2 and a package doc comment in every package.
package agentvault_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/agentvault/agent-vault"

// allowed lists, per package of ours, the packages of ours it may import
// (directly or not). A package not listed here fails the test: add it with
// the design's blessing. cmd/... may import everything.
var allowed = map[string][]string{
	"policy":                      {},
	"audit":                       {},
	"bpf":                         {},
	"mitm/ca":                     {},
	"mitm/scrub":                  {},
	"mitm/inject":                 {"policy"},
	"store":                       {"policy", "audit"},
	"redirect":                    {"bpf"},
	"dnsproxy":                    {"policy", "audit"},
	"mitm":                        {"policy", "audit", "mitm/ca", "mitm/inject", "mitm/scrub"},
	"admin":                       {"store", "policy", "audit"},
	"internal/harness":            {},
	"internal/testutil/netns":     {},
	"internal/testutil/appliance": {"internal/harness", "internal/testutil/netns"},
}

// rules returns what a package may import: its own entry, or, for a
// sub-package without one, its nearest listed parent's entry plus that parent.
func rules(name string) ([]string, bool) {
	if may, ok := allowed[name]; ok {
		return may, true
	}
	for parent := name; strings.Contains(parent, "/"); {
		parent = parent[:strings.LastIndex(parent, "/")]
		if may, ok := allowed[parent]; ok {
			return append([]string{parent}, may...), true
		}
	}
	return nil, false
}

func listed(name string) bool { _, ok := allowed[name]; return ok }

type pkg struct {
	ImportPath string
	Name       string
	Doc        string
	Deps       []string
	GoFiles    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

func TestImportDirection(t *testing.T) {
	for _, p := range listPackages(t) {
		name := rel(p.ImportPath)
		if len(p.GoFiles) == 0 || name == "" || strings.HasPrefix(name, "cmd/") || strings.HasPrefix(name, "internal/") && allowed[name] == nil {
			continue
		}
		may, ok := rules(name)
		if !ok {
			t.Errorf("package %s is not in the import table of deps_test.go (ARCHITECTURE.md section 2)", name)
			continue
		}
		for _, d := range p.Deps {
			if !strings.HasPrefix(d, module+"/") {
				continue
			}
			dep := rel(d)
			if dep == "cmd" || strings.HasPrefix(dep, "cmd/") {
				t.Errorf("%s imports %s: nothing below cmd imports cmd", name, dep)
				continue
			}
			if strings.HasPrefix(dep, "internal/") && !strings.HasPrefix(name, "internal/") {
				// internal helpers are for tests and tools; production packages stay off them
				t.Errorf("%s imports test helper %s", name, dep)
				continue
			}
			okDep := strings.HasPrefix(dep, name+"/") // a package may use its own sub-packages
			for _, m := range may {
				if dep == m || strings.HasPrefix(dep, m+"/") && !listed(dep) {
					okDep = true
				}
			}
			if !okDep {
				t.Errorf("%s imports %s, which ARCHITECTURE.md section 2 does not allow", name, dep)
			}
		}
	}
}

func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listPackages(t) {
		if len(p.GoFiles) == 0 {
			continue
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no package doc comment (add a doc.go saying what it owns)", p.ImportPath)
		}
	}
}
