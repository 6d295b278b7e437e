package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The committed capture_bpfel.{go,o} are what capture.c compiles to today:
// the go:generate line of gen.go is run into a temp dir and the outputs
// compared byte for byte. Needs clang and llvm-strip (Debian: clang llvm
// libbpf-dev); skips without them, except in CI or with
// AGENT_VAULT_REQUIRE_PRIVILEGED=1, where a missing toolchain fails.
func TestGeneratedObjectsFresh(t *testing.T) {
	for _, tool := range []string{"clang", "llvm-strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" || os.Getenv("AGENT_VAULT_REQUIRE_PRIVILEGED") == "1" {
				t.Fatalf("%s not found: cannot check the committed BPF objects (apt-get install clang llvm libbpf-dev)", tool)
			}
			t.Skipf("%s not found: cannot check the committed BPF objects", tool)
		}
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "//go:generate go run github.com/cilium/ebpf/cmd/bpf2go "
	var args []string
	for _, l := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(l, prefix) {
			args = strings.Fields(strings.TrimPrefix(l, prefix))
		}
	}
	if args == nil {
		t.Fatal("no bpf2go go:generate line in gen.go")
	}
	dir := t.TempDir()
	cmdArgs := append([]string{"run", "github.com/cilium/ebpf/cmd/bpf2go", "-output-dir", dir}, args...)
	cmd := exec.Command("go", cmdArgs...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=bpf", "GOFILE=gen.go")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(cmdArgs, " "), err, out)
	}
	for _, f := range []string{"capture_bpfel.go", "capture_bpfel.o"} {
		want, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate` (go generate ./bpf) and commit the result", f)
		}
	}
}
