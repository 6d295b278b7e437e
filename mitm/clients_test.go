package mitm

import (
	"context"
	"encoding/xml"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Real clients, as agents run them. Each one must get the response with the
// secret scrubbed, and the upstream must have received the real credential.

func lookTool(t *testing.T, name, why string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		alt := filepath.Join(build.Default.GOPATH, "bin", name)
		if _, err2 := os.Stat(alt); err2 == nil {
			return alt
		}
		t.Skipf("%s is not installed (%s)", name, why)
	}
	return p
}

func runTool(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// A clean environment: no proxy settings of the machine leak in.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func (e *env) checkScrubbedEcho(t *testing.T, client, out string) {
	t.Helper()
	if strings.Contains(out, sentinel) {
		t.Errorf("%s: the secret reached the client: %s", client, out)
	}
	if !strings.Contains(out, `"path":"/echo"`) {
		t.Errorf("%s: unexpected output %s", client, out)
	}
	got := e.up.received()
	if len(got) == 0 || got[len(got)-1].Header.Get("Authorization") != "Bearer "+sentinel {
		t.Errorf("%s: upstream did not receive the credential: %+v", client, got)
	}
}

func TestCurl(t *testing.T) {
	curl := lookTool(t, "curl", "CI installs it")
	e := newEnv(t)
	target := e.url("api.example.test", "/echo")
	for _, proto := range []string{"--http1.1", "--http2"} {
		out := runTool(t, nil, curl, "-sS", proto, "--proxy", "http://"+e.proxyAddr, "--proxy-user", "agent:"+agentToken,
			"--cacert", e.caFile, "-H", "Authorization: Bearer "+placeholder, "-w", "\nversion=%{http_version}", target)
		e.checkScrubbedEcho(t, "curl proxy "+proto, out)
		want := map[string]string{"--http1.1": "version=1.1", "--http2": "version=2"}[proto]
		if !strings.HasSuffix(strings.TrimSpace(out), want) {
			t.Errorf("curl %s: %q", proto, out[max(0, len(out)-20):])
		}
		// Transparent: curl believes it talks to the name; the socket goes to
		// the broker's transparent listener.
		out = runTool(t, nil, curl, "-sS", proto, "--connect-to", fmt.Sprintf("api.example.test:%d:%s", e.up.port, e.transAddr),
			"--cacert", e.caFile, "-H", "Authorization: Bearer "+placeholder, target)
		e.checkScrubbedEcho(t, "curl transparent "+proto, out)
	}
	// The 403 a curl user sees names the problem.
	out := runTool(t, nil, curl, "-sS", "--proxy", "http://"+e.proxyAddr, "--proxy-user", "agent:"+agentToken,
		"--cacert", e.caFile, "-i", e.url("other.example.test", "/"))
	if !strings.Contains(out, "403") || !strings.Contains(out, "x-agent-vault-error: no_service") && !strings.Contains(out, "X-Agent-Vault-Error: no_service") {
		t.Errorf("curl no_service: %s", out)
	}
}

func TestPythonURLLib(t *testing.T) {
	py := lookTool(t, "python3", "python3 is not on this machine")
	e := newEnv(t)
	script := `
import os, ssl, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["CA"])
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({"https": os.environ["PROXY"]}),
    urllib.request.HTTPSHandler(context=ctx))
req = urllib.request.Request(os.environ["URL"], headers={"Authorization": "Bearer ` + placeholder + `"})
print(opener.open(req, timeout=30).read().decode())
`
	out := runTool(t, []string{"CA=" + e.caFile, "PROXY=http://agent:" + agentToken + "@" + e.proxyAddr, "URL=" + e.url("api.example.test", "/echo")},
		py, "-c", script)
	e.checkScrubbedEcho(t, "python urllib", out)
}

// Node's fetch (undici) ignores HTTPS_PROXY, so node is driven through the
// transparent listener: the script points dns.lookup for the test name at
// loopback and dials the transparent port; SNI and Host stay the name.
func TestNodeFetchTransparent(t *testing.T) {
	node := lookTool(t, "node", "node is not on this machine")
	if v := runTool(t, nil, node, "-e", "process.stdout.write(String(typeof fetch))"); v != "function" {
		t.Skipf("node has no global fetch (node >= 18 needed)")
	}
	e := newEnv(t)
	host, port, _ := strings.Cut(e.transAddr, ":")
	script := `
const dns = require("dns");
const orig = dns.lookup;
dns.lookup = (name, opts, cb) => {
  if (typeof opts === "function") { cb = opts; opts = {}; }
  if (name === "api.example.test") {
    return opts && opts.all ? cb(null, [{address: "` + host + `", family: 4}]) : cb(null, "` + host + `", 4);
  }
  return orig(name, opts, cb);
};
fetch("https://api.example.test:` + port + `/echo", {headers: {Authorization: "Bearer ` + placeholder + `"}})
  .then(r => r.text()).then(t => console.log(t))
  .catch(e => { console.error(e, e.cause); process.exit(1); });
`
	out := runTool(t, []string{"NODE_EXTRA_CA_CERTS=" + e.caFile}, node, "-e", script)
	e.checkScrubbedEcho(t, "node fetch", out)
}

type junitReport struct {
	Suites []struct {
		Cases []struct {
			Package   string    `xml:"package,attr"`
			ClassName string    `xml:"classname,attr"`
			Failure   *struct{} `xml:"failure"`
			Skipped   *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func runH2spec(t *testing.T, bin string, port int) (passed, failed, skipped int, failures []string) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "junit.xml")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-t", "-k", "-h", "localhost", "-p", fmt.Sprint(port), "-o", "2", "-j", report)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.CombinedOutput() // exits non-zero when a case fails; the report says which
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("h2spec wrote no report: %v", err)
	}
	var r junitReport
	if err := xml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			switch {
			case c.Failure != nil:
				failed++
				failures = append(failures, c.Package+" "+c.ClassName)
			case c.Skipped != nil:
				skipped++
			default:
				passed++
			}
		}
	}
	return
}

// h2spec against the broker's HTTP/2 side (through the transparent
// listener, forwarding to a real upstream), compared with Go's own HTTP/2
// server (the upstream itself): the broker must fail no case Go passes.
func TestH2Spec(t *testing.T) {
	if testing.Short() {
		t.Skip("h2spec takes a while")
	}
	bin := lookTool(t, "h2spec", "go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible")
	e := newEnv(t)
	_, tport, _ := strings.Cut(e.transAddr, ":")
	var bport int
	fmt.Sscan(tport, &bport)
	bp, bf, bs, bfails := runH2spec(t, bin, bport)
	gp, gf, gs, gfails := runH2spec(t, bin, int(e.up.port))
	t.Logf("h2spec broker: passed=%d failed=%d skipped=%d", bp, bf, bs)
	t.Logf("h2spec go-server: passed=%d failed=%d skipped=%d", gp, gf, gs)
	goFailed := map[string]bool{}
	for _, f := range gfails {
		goFailed[f] = true
	}
	for _, f := range bfails {
		if !goFailed[f] {
			t.Errorf("h2spec case fails on the broker but not on Go's server: %s", f)
		} else {
			t.Logf("fails on both: %s", f)
		}
	}
	if bp == 0 {
		t.Fatal("h2spec passed nothing against the broker")
	}
}
