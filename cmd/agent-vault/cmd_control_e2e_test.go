package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/store"
)

// End-to-end tests of the control plane with the built binary: proposals,
// roles, the audit chain's tamper evidence, retention and the live tail.

type e2eProposal struct {
	ID       uint64
	State    string
	Revision int
	Hash     string
	Vault    string
	Agent    string
}

// ownerWorld starts a server with an owner, vault prod and agent bot, and
// returns the agent's token.
func ownerWorld(t *testing.T) (*operator, string) {
	t.Helper()
	o := newOperator(t, t.TempDir())
	o.start()
	o.ok("owner password 1\n", "setup", "--email", "owner@example.com")
	o.ok("", "vault", "create", "prod")
	var agent struct{ Token string }
	o.json(&agent, "agent", "create", "--vault", "prod", "bot")
	return o, agent.Token
}

func (o *operator) asAgent(tok string, want int, stdin string, args ...string) string {
	o.t.Helper()
	return o.run(want, stdin, []string{"AGENT_VAULT_TOKEN=" + tok}, args...).Stdout
}

func (o *operator) propose(tok string, args ...string) e2eProposal {
	o.t.Helper()
	out := o.asAgent(tok, 0, "", append(append([]string{"proposal", "create"}, args...), "--json")...)
	var p e2eProposal
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		o.t.Fatalf("proposal create --json printed %q: %v", out, err)
	}
	return p
}

func TestProposalEndToEnd(t *testing.T) {
	o, tok := ownerWorld(t)
	gh := []string{"--name", "gh", "--host", "api.github.com", "--auth", "bearer", "--credential", "GH_TOKEN", "--reason", "open pull requests"}

	if out := o.asAgent(tok, 0, "", "whoami"); !strings.Contains(out, "Agent bot of vault prod") {
		t.Fatalf("agent whoami: %q", out)
	}
	p := o.propose(tok, gh...)
	if p.ID == 0 || p.State != "pending" || p.Agent != "bot" || p.Vault != "prod" || len(p.Hash) != 64 {
		t.Fatalf("proposal = %+v", p)
	}
	id := fmt.Sprint(p.ID)

	// the agent cannot approve itself, nor change services or credentials
	r := o.run(1, e2eSentinel, []string{"AGENT_VAULT_TOKEN=" + tok}, "proposal", "approve", id, "--hash", p.Hash)
	if !strings.Contains(r.Stderr, "agent token") {
		t.Fatalf("agent approving: %q", r.Stderr)
	}
	o.run(1, "", []string{"AGENT_VAULT_TOKEN=" + tok}, "proposal", "reject", id)
	o.run(1, "", []string{"AGENT_VAULT_TOKEN=" + tok}, "service", "add", "--vault", "prod", "--name", "x", "--host", "x.example.com", "--auth", "none")
	o.run(1, e2eSentinel, []string{"AGENT_VAULT_TOKEN=" + tok}, "credential", "set", "--vault", "prod", "GH_TOKEN")
	o.run(1, "", []string{"AGENT_VAULT_TOKEN=" + tok}, "audit", "list")
	// raw API: 403 for the agent token on approve
	code, _ := httpRequest("POST", "http://"+o.srv.AdminAddr+"/api/v1/proposals/"+id+"/approve",
		`{"hash":"`+p.Hash+`","value":"x"}`, tok)
	if code != 403 {
		t.Fatalf("agent token on approve: HTTP %d, want 403", code)
	}

	// the human sees it with its hash; approving without the hash is a usage error
	show := o.ok("", "proposal", "show", id)
	if !strings.Contains(show, "Content hash: "+p.Hash) || !strings.Contains(show, "api.github.com") {
		t.Fatalf("proposal show:\n%s", show)
	}
	o.run(2, e2eSentinel, nil, "proposal", "approve", id)

	// the agent edits it after it was shown: the old hash no longer approves
	edited := o.propose(tok, "--name", "gh", "--host", "uploads.github.com", "--auth", "bearer", "--credential", "GH_TOKEN", "--reason", "upload assets")
	if edited.ID != p.ID || edited.Revision != 2 || edited.Hash == p.Hash {
		t.Fatalf("edited = %+v", edited)
	}
	r = o.run(1, e2eSentinel+"\n", nil, "proposal", "approve", id, "--hash", p.Hash)
	if !strings.Contains(r.Stderr, "changed since it was shown") {
		t.Fatalf("stale approval: %q", r.Stderr)
	}
	var shown e2eProposal
	o.json(&shown, "proposal", "show", id)
	if shown.Hash != edited.Hash || shown.State != "pending" {
		t.Fatalf("after the stale attempt: %+v", shown)
	}
	if out := o.ok(e2eSentinel+"\n", "proposal", "approve", id, "--hash", shown.Hash); !strings.Contains(out, "approved") {
		t.Fatalf("approve: %q", out)
	}
	var svcs []struct{ Name, Host string }
	o.json(&svcs, "service", "list", "--vault", "prod")
	if len(svcs) != 1 || svcs[0].Name != "gh" || svcs[0].Host != "uploads.github.com" {
		t.Fatalf("services = %+v", svcs)
	}
	var creds []struct{ Key string }
	o.json(&creds, "credential", "list", "--vault", "prod")
	if len(creds) != 1 || creds[0].Key != "GH_TOKEN" {
		t.Fatalf("credentials = %+v", creds)
	}
	o.run(1, "x\n", nil, "proposal", "approve", id, "--hash", shown.Hash)

	// concurrent approvals of one proposal apply once
	sl := o.propose(tok, "--name", "slack", "--host", "slack.com", "--auth", "bearer", "--credential", "SLACK", "--reason", "post builds")
	const n = 6
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = o.srv.CLI(fmt.Sprintf("%s-%d\n", e2eSentinel, i), nil, "proposal", "approve", fmt.Sprint(sl.ID), "--hash", sl.Hash).Code
		}()
	}
	wg.Wait()
	okCount := 0
	for _, c := range codes {
		if c == 0 {
			okCount++
		} else if c != 1 {
			t.Fatalf("approve exit codes %v", codes)
		}
	}
	if okCount != 1 {
		t.Fatalf("%d concurrent approvals applied (exit codes %v), want 1", okCount, codes)
	}

	var page struct {
		Events []struct {
			Action, Target, Service string
			Actor                   struct{ Kind, Name string }
		}
	}
	o.json(&page, "audit", "list", "--limit", "1000")
	count := map[string]int{}
	for _, e := range page.Events {
		count[e.Action]++
		if e.Action == "proposal.approve" && (e.Actor.Kind != "user" || e.Actor.Name != "owner@example.com") {
			t.Fatalf("approval row without the approving user: %+v", e)
		}
		if e.Action == "proposal.create" && (e.Actor.Kind != "agent" || e.Actor.Name != "bot") {
			t.Fatalf("proposal row without the agent: %+v", e)
		}
	}
	if count["proposal.approve"] != 2 || count["service.add"] != 2 || count["proposal.create"] != 2 || count["proposal.update"] != 1 {
		t.Fatalf("audit actions = %v", count)
	}
	if out := o.ok("", "audit", "verify"); !strings.Contains(out, "intact") {
		t.Fatalf("verify: %q", out)
	}
	if strings.Contains(o.out.String(), e2eSentinel) || strings.Contains(o.srv.Log(), e2eSentinel) {
		t.Fatal("a credential value appears in CLI output or the server log")
	}
}

// httpRequest sends a JSON request with a bearer token and returns the status.
func httpRequest(method, url, body, token string) (int, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func TestRolesEndToEnd(t *testing.T) {
	o, tok := ownerWorld(t)
	o.ok("", "vault", "create", "dev")
	// each user keeps their session in their own config dir
	userEnv := func(name string) []string {
		return []string{"XDG_CONFIG_HOME=" + filepath.Join(t.TempDir(), name)}
	}
	invite := func(email, role string, extra ...string) []string {
		var inv struct {
			InviteToken string `json:"invite_token"`
		}
		o.json(&inv, append([]string{"user", "invite", "--email", email, "--role", role}, extra...)...)
		env := userEnv(email)
		o.run(1, "", env, "login", "--email", email) // nothing to log in with before accepting
		o.run(0, inv.InviteToken+"\nthe new password\n", env, "user", "accept")
		o.run(1, inv.InviteToken+"\nanother password\n", env, "user", "accept")
		return env
	}
	viewer := invite("viewer@example.com", "viewer")
	approver := invite("approver@example.com", "approver", "--vault", "prod")
	o.run(2, "", nil, "user", "invite", "--email", "x@example.com")

	p := o.propose(tok, "--name", "gh", "--host", "api.github.com", "--auth", "bearer", "--credential", "GH_TOKEN", "--reason", "PRs")
	add := []string{"service", "add", "--vault", "prod", "--name", "open", "--host", "open.example.com", "--auth", "none"}

	// viewer: reads, cannot write
	o.run(0, "", viewer, "service", "list", "--vault", "prod")
	r := o.run(1, "", viewer, add...)
	if !strings.Contains(r.Stderr, "role") {
		t.Fatalf("viewer adding a service: %q", r.Stderr)
	}
	o.run(1, e2eSentinel, viewer, "credential", "set", "--vault", "prod", "K")
	o.run(1, e2eSentinel, viewer, "proposal", "approve", fmt.Sprint(p.ID), "--hash", p.Hash)
	o.run(1, "", viewer, "vault", "create", "mine")

	// approver of prod: cannot add services directly, approves proposals
	o.run(1, "", approver, add...)
	o.run(1, "", approver, "service", "list", "--vault", "dev")
	o.run(1, "", approver, "audit", "list")
	o.run(0, "", approver, "audit", "list", "--vault", "prod")
	if out := o.run(0, e2eSentinel, approver, "proposal", "approve", fmt.Sprint(p.ID), "--hash", p.Hash).Stdout; !strings.Contains(out, "approved") {
		t.Fatalf("approver approves: %q", out)
	}
	if out := o.run(0, "", approver, "whoami").Stdout; !strings.Contains(out, "approver in prod") {
		t.Fatalf("approver whoami: %q", out)
	}
	o.run(1, "", approver, "user", "list")

	// the owner lists, changes and removes users
	var users []struct {
		Email      string
		Role       string
		VaultRoles map[string]string `json:"vault_roles"`
	}
	o.json(&users, "user", "list")
	if len(users) != 3 || users[2].VaultRoles["prod"] != "approver" {
		t.Fatalf("users = %+v", users)
	}
	o.ok("", "user", "grant", "viewer@example.com", "--role", "admin", "--vault", "prod")
	o.run(0, "", viewer, add...)
	o.ok("", "user", "remove", "viewer@example.com")
	o.run(1, "", viewer, "service", "list", "--vault", "prod")
	o.run(1, "", nil, "user", "remove", "owner@example.com")
	o.ok("", "logout")
	o.run(1, "", nil, "vault", "list")
}

// TestAuditTamperRetentionAndTail: a row altered in the bbolt file is named
// by audit verify; a retention prune keeps verify green; audit tail
// delivers a new row.
func TestAuditTamperRetentionAndTail(t *testing.T) {
	o, tok := ownerWorld(t)
	o.propose(tok, "--name", "gh", "--host", "api.github.com", "--auth", "bearer", "--credential", "GH_TOKEN", "--reason", "PRs")

	// live tail: a new row arrives (the tail starts with the next row, so
	// keep making rows until it has printed one)
	cmd := exec.Command(bin, "audit", "tail", "--json", "--count", "1", "--action", "vault.create")
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+o.srv.ConfigHome, "AGENT_VAULT_ADDR=http://"+o.srv.AdminAddr)
	var tailOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &tailOut, &tailOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	})
	var tailErr error
	finished := false
	for i := 0; i < 100 && !finished; i++ {
		o.ok("", "vault", "create", fmt.Sprintf("tail%d", i))
		select {
		case tailErr = <-done:
			finished = true
		case <-time.After(200 * time.Millisecond):
		}
	}
	if !finished || tailErr != nil {
		t.Fatalf("audit tail did not deliver a row (finished %v, %v): %s", finished, tailErr, tailOut.String())
	}
	sc := bufio.NewScanner(&tailOut)
	var row struct {
		Seq    uint64
		Action string
		Hash   string
	}
	if !sc.Scan() || json.Unmarshal(sc.Bytes(), &row) != nil || row.Action != "vault.create" || row.Hash == "" {
		t.Fatalf("tail printed %q", tailOut.String())
	}

	var v struct {
		OK   bool
		Rows uint64
	}
	o.json(&v, "audit", "verify")
	if !v.OK || v.Rows < 5 {
		t.Fatalf("verify = %+v", v)
	}
	o.stop()
	dbPath := filepath.Join(o.srv.DataDir, storeFile)

	// retention: prune the oldest rows with the store's API, restart, verify
	st, err := store.Open(dbPath, store.Options{Password: []byte(masterPW), KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	rows, _, err := st.AuditList(store.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	cut := rows[len(rows)/2].Time // rows come newest first: prune the older half
	removed, err := st.PruneAudit(cut)
	if err != nil || removed == 0 {
		t.Fatalf("prune = %d, %v", removed, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	o.start()
	o.json(&v, "audit", "verify")
	if !v.OK {
		t.Fatalf("verify after a retention prune = %+v", v)
	}
	var page struct{ Events []struct{ Action string } }
	o.json(&page, "audit", "list", "--action", "audit.prune")
	if len(page.Events) != 1 {
		t.Fatalf("prune rows = %+v", page.Events)
	}
	var exported bytes.Buffer
	exported.WriteString(o.ok("", "audit", "export"))
	lines := strings.Split(strings.TrimSpace(exported.String()), "\n")
	if uint64(len(lines)) != v.Rows {
		t.Fatalf("export has %d lines, verify counted %d rows", len(lines), v.Rows)
	}

	// tamper: alter one row in the bbolt file; verify names it
	o.stop()
	var target uint64
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		c := b.Cursor()
		k, val := c.First()
		k, val = c.Next() // the second row left
		target = uint64(k[7]) | uint64(k[6])<<8 | uint64(k[5])<<16 | uint64(k[4])<<24
		altered := bytes.Replace(val, []byte(`"action":"`), []byte(`"action":"x`), 1)
		return b.Put(append([]byte(nil), k...), altered)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	o.start()
	r := o.run(1, "", nil, "audit", "verify")
	if !strings.Contains(r.Stderr, fmt.Sprintf("broken at row %d", target)) {
		t.Fatalf("verify after tampering with row %d: %q", target, r.Stderr)
	}
}

// TestAuditRetentionFlag: with --audit-retention the server prunes at
// start: rows older than the retention go, one audit.prune row records it,
// and verify stays green. Without the flag they stay.
func TestAuditRetentionFlag(t *testing.T) {
	for _, keep := range []string{"", "24h"} {
		t.Run("retention="+keep, func(t *testing.T) {
			o := newOperator(t, t.TempDir())
			if err := os.MkdirAll(o.srv.DataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			// a store whose first rows are three days old
			old := time.Now().Add(-72 * time.Hour)
			st, err := store.Open(filepath.Join(o.srv.DataDir, storeFile), store.Options{Password: []byte(masterPW), KDF: testKDF, Now: func() time.Time { return old }})
			if err != nil {
				t.Fatal(err)
			}
			for range 5 {
				if err := st.Append(context.Background(), &audit.Event{Actor: audit.System, Action: "test.old"}); err != nil {
					t.Fatal(err)
				}
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			var args []string
			if keep != "" {
				args = []string{"--audit-retention", keep}
			}
			o.start(args...)
			o.ok("owner password 1\n", "setup", "--email", "owner@example.com")
			count := func(action string) int {
				var page struct{ Events []struct{ Action string } }
				o.json(&page, "audit", "list", "--action", action)
				return len(page.Events)
			}
			wantOld, wantPrune := 5, 0
			if keep != "" {
				wantOld, wantPrune = 0, 1
			}
			// the prune runs in the background right after start
			deadline := time.Now().Add(10 * time.Second)
			for count("audit.prune") != wantPrune && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			if got, prunes := count("test.old"), count("audit.prune"); got != wantOld || prunes != wantPrune {
				t.Fatalf("old rows %d, prune rows %d; want %d, %d", got, prunes, wantOld, wantPrune)
			}
			var v struct{ OK bool }
			o.json(&v, "audit", "verify")
			if !v.OK {
				t.Fatalf("verify = %+v", v)
			}
		})
	}
}
