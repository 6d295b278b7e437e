package mitm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

type connKey struct{}

// innerConnContext attaches the broker's connection state to every request
// the inner server reads from that connection.
func (b *Broker) innerConnContext(ctx context.Context, c net.Conn) context.Context {
	var tc *trackedConn
	switch v := c.(type) {
	case *tls.Conn:
		tc, _ = v.NetConn().(*trackedConn)
	case *trackedConn:
		tc = v
	}
	if tc == nil || tc.st == nil {
		return ctx
	}
	return context.WithValue(ctx, connKey{}, tc.st)
}

// reqLog collects what the one log line (and the audit rows) of a request
// say. It never holds a secret.
type reqLog struct {
	start    time.Time
	mode     string
	agent    string
	vault    string
	host     string
	method   string
	path     string
	service  string
	cred     string
	decision string
	reason   string
	code     string
	status   int
	bytes    int64
	seq      uint64
}

// serveTerminated is the inner server's handler: every request on a
// terminated TLS connection or a plain transparent connection.
func (b *Broker) serveTerminated(w http.ResponseWriter, r *http.Request) {
	st, _ := r.Context().Value(connKey{}).(*connState)
	if st == nil {
		writeAgentError(w, http.StatusInternalServerError, CodeBadRequest, "connection state missing", "")
		return
	}
	b.handle(w, r, st)
}

// handle is the one pipeline every agent request goes through, whichever
// way it arrived: identity, host binding, policy, audit intent, injection,
// forwarding, scrubbing, completion.
func (b *Broker) handle(w http.ResponseWriter, r *http.Request, st *connState) {
	rl := &reqLog{start: b.now(), mode: st.kind.String(), agent: st.agent, method: r.Method, path: r.URL.Path}
	defer b.finishLog(rl)
	deny := func(status int, code, reason, msg, hint string) {
		rl.decision, rl.reason, rl.code, rl.status = audit.DecisionDeny, reason, code, status
		b.auditDeny(r.Context(), rl)
		writeAgentError(w, status, code, msg, hint)
	}

	// Identity: re-checked on every request, so revocation applies at once.
	snap := b.snap.Load()
	if st.agent == "" {
		w.Header().Set("Connection", "close")
		deny(http.StatusForbidden, CodeAgentUnknown, "agent_unknown",
			"this connection does not come from a known agent", "Ask a human to register this host or cgroup as an agent (agent-vault agent create).")
		return
	}
	agent, ok := snap.Agent(st.agent)
	if !ok {
		w.Header().Set("Connection", "close")
		deny(http.StatusForbidden, CodeAgentUnknown, "agent_unknown",
			"agent "+st.agent+" no longer exists", "Ask a human for a new agent identity.")
		return
	}
	rl.vault = agent.Vault
	if !agent.Active(b.now()) {
		w.Header().Set("Connection", "close")
		deny(http.StatusForbidden, CodeAgentRevoked, "agent_revoked",
			"agent "+agent.Name+" is revoked or expired", "Ask a human to issue a new agent token or identity.")
		return
	}

	// One destination identity per connection.
	host := hostOnly(r.Host)
	if st.kind == kindProxyPlain {
		host = st.name
	}
	rl.host = host
	switch st.kind {
	case kindTransparentPlain:
		st.mu.Lock()
		if st.name == "" && host != "" {
			st.name = host
		}
		name := st.name
		st.mu.Unlock()
		if host != name {
			deny(http.StatusMisdirectedRequest, CodeMisdirected, "host_mismatch",
				"this connection is bound to "+name+"; the request is for "+quoteHost(host), "Open a new connection for each host.")
			return
		}
	case kindTransparentTLS, kindTunnel:
		if host != st.name {
			deny(http.StatusMisdirectedRequest, CodeMisdirected, "host_mismatch",
				"this connection's TLS name is "+st.name+"; the request is for "+quoteHost(host), "Open a new connection for each host.")
			return
		}
	}
	if host == policy.ReservedHost {
		rl.decision, rl.reason = audit.DecisionAllow, "internal"
		cw := &countingWriter{ResponseWriter: w}
		b.internal.ServeHTTP(cw, r.WithContext(withAgent(r.Context(), agent)))
		rl.status, rl.bytes = cw.code(), cw.n
		return
	}
	if host == "" {
		deny(http.StatusBadRequest, CodeBadRequest, "no_host", "the request names no host", "")
		return
	}
	if r.Method == http.MethodConnect {
		deny(http.StatusBadRequest, CodeBadRequest, "connect_in_tunnel", "CONNECT is not allowed here", "")
		return
	}
	if why := badPath(r.URL.Path); why != "" {
		deny(http.StatusBadRequest, CodeBadRequest, "bad_path", "the request path "+why, "Send a normalized path.")
		return
	}

	dec := snap.Match(agent.Vault, policy.Request{Host: host, Port: st.port, Method: r.Method, Path: r.URL.Path})
	if !dec.Allowed() {
		deny(http.StatusForbidden, CodeNoService, string(dec.Reason),
			denyMessage(agent.Vault, host, st.port, r.Method, r.URL.Path, dec.Reason), proposalHint(host))
		return
	}
	svc := dec.Service
	rl.service = svc.Name
	if svc.Auth.Kind != policy.AuthNone {
		rl.cred = svc.Auth.Credential
		if !st.kind.tls() {
			deny(http.StatusForbidden, CodeHTTPSRequired, "https_required",
				"service "+svc.Name+" attaches a credential, and credentials are only sent over https",
				"Use https://"+host+" instead of http://.")
			return
		}
	}
	var secret []byte
	if svc.Auth.Kind != policy.AuthNone {
		var ok bool
		secret, ok = b.cfg.Secrets.Secret(agent.Vault, svc.Auth.Credential)
		if !ok {
			deny(http.StatusForbidden, CodeCredentialMissing, "credential_missing",
				"service "+svc.Name+" needs credential "+svc.Auth.Credential+", which has no value in vault "+agent.Vault,
				"Ask a human to set it: agent-vault credential set --vault "+agent.Vault+" "+svc.Auth.Credential)
			return
		}
	}
	if err := b.bind(r.Context(), st); err != nil {
		var be *bindError
		if !errors.As(err, &be) {
			be = &bindError{"destination_error", http.StatusBadGateway, "the upstream could not be validated"}
		}
		code := CodeDestinationDenied
		if be.status == http.StatusBadGateway {
			code = CodeUpstreamError
		}
		deny(be.status, code, be.reason, be.msg, "")
		return
	}
	st.mu.Lock()
	d := st.dest
	st.mu.Unlock()

	// Audit intent first: nothing is attached or forwarded unaudited.
	intent := &audit.Event{
		Actor: agentActor(agent.Name), Vault: agent.Vault, Action: ActionRequest,
		Decision: audit.DecisionAllow, Reason: string(dec.Reason), Service: svc.Name,
		Credential: svc.Auth.Credential, Method: r.Method, Host: host, Path: r.URL.Path,
	}
	if err := b.appendAudit(r.Context(), intent); err != nil {
		b.log.Error("audit append failed; request refused", "agent", agent.Name, "host", host, "err", err)
		rl.decision, rl.reason, rl.code, rl.status = audit.DecisionDeny, "audit_unavailable", CodeAuditUnavailable, http.StatusServiceUnavailable
		writeAgentError(w, http.StatusServiceUnavailable, CodeAuditUnavailable,
			"the audit log cannot be written, so the request was not forwarded", "Retry later; tell a human if it persists.")
		return
	}
	rl.decision, rl.reason, rl.seq = audit.DecisionAllow, string(dec.Reason), intent.Seq

	f := &forward{svc: svc, secret: secret, host: host, port: d.port, tls: st.kind.tls(), dest: d, agentH1: r.ProtoMajor == 1}
	cw := &countingWriter{ResponseWriter: w, f: f}
	aborted := b.forward(cw, r.WithContext(context.WithValue(r.Context(), forwardKey{}, f)))
	rl.status, rl.bytes = cw.code(), cw.n
	if cw.status == 0 && f.status == http.StatusSwitchingProtocols {
		rl.status = f.status // ReverseProxy wrote the 101 on the hijacked connection
	}
	if f.errCode != "" {
		rl.code = f.errCode
	}
	complete := audit.Event{
		Actor: intent.Actor, Vault: agent.Vault, Action: ActionRequestComplete, Service: svc.Name,
		Credential: svc.Auth.Credential, Method: r.Method, Host: host, Path: r.URL.Path,
		Status: rl.status, Bytes: rl.bytes, Duration: b.now().Sub(rl.start), Ref: intent.Seq,
		Reason: f.errCode,
	}
	if aborted {
		complete.Reason, rl.code = "aborted", "aborted"
	} else if rl.status != http.StatusSwitchingProtocols {
		// the agent has its answer before the completion row and the log
		// line are written, not after
		_ = http.NewResponseController(w).Flush()
	}
	b.auditComplete(complete)
	if aborted {
		panic(http.ErrAbortHandler) // let the server drop the stream, as ReverseProxy meant (the deferred log line still runs)
	}
}

// forward runs the reverse proxy. ReverseProxy aborts a response whose body
// copy failed (either side went away) by panicking with ErrAbortHandler;
// forward reports that instead, so the completion is still audited.
func (b *Broker) forward(w http.ResponseWriter, r *http.Request) (aborted bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				// whoever logs the panic up the stack must not see the
				// credential: re-panic with its text redacted
				text := []byte(fmt.Sprint(v))
				if red := b.redactorOf(forwardFrom(r.Context())); red != nil {
					red.Redact(text)
				}
				panic(string(text))
			}
			aborted = true
		}
	}()
	b.rp.ServeHTTP(w, r)
	return false
}

func (b *Broker) finishLog(rl *reqLog) {
	// typed attributes: no boxing on the one line every request logs
	b.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("mode", rl.mode), slog.String("agent", rl.agent), slog.String("vault", rl.vault),
		slog.String("host", rl.host), slog.String("method", rl.method), slog.String("path", rl.path),
		slog.String("service", rl.service), slog.String("credential", rl.cred),
		slog.String("decision", rl.decision), slog.String("reason", rl.reason), slog.String("code", rl.code),
		slog.Int("status", rl.status), slog.Int64("bytes", rl.bytes),
		slog.Int64("duration_ms", b.now().Sub(rl.start).Milliseconds()), slog.Uint64("audit_seq", rl.seq))
}

// hostOnly strips a port and normalizes.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return policy.NormalizeHost(h)
}

func quoteHost(h string) string {
	if h == "" {
		return "no host"
	}
	return h
}

// badPath refuses paths an upstream might resolve differently from the
// prefix match: dot segments, backslashes and control characters.
func badPath(p string) string {
	if p == "" || p == "*" {
		return ""
	}
	if p[0] != '/' {
		return "must start with /"
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return "contains a control character or a backslash"
		}
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return "contains a . or .. segment"
		}
	}
	return ""
}

// denyMessage says which criterion no service of the vault met.
func denyMessage(vault, host string, port int, method, path string, reason policy.Reason) string {
	switch reason {
	case policy.ReasonPort:
		return fmt.Sprintf("vault %s has a service for %s, but not on port %d", vault, host, port)
	case policy.ReasonPath:
		return fmt.Sprintf("vault %s has a service for %s, but not for the path %s", vault, host, path)
	case policy.ReasonMethod:
		return fmt.Sprintf("vault %s has a service for %s, but not for the method %s", vault, host, method)
	case policy.ReasonUnknownVault:
		return "vault " + vault + " does not exist"
	}
	return "This agent's vault (" + vault + ") has no service for " + host + "."
}

// countingWriter records the final status and the body bytes written. It
// unwraps for http.ResponseController (flushing and WebSocket hijacking).
type countingWriter struct {
	http.ResponseWriter
	f      *forward // the forwarded request, whose 1xx headers are scrubbed; nil for internal answers
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols && w.f != nil {
		scrubInformational(w.f, w.Header())
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *countingWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// hostHeader is the outbound Host: the name, with the port when it is not
// the scheme's default.
func hostHeader(host string, port int, tls bool) string {
	if (tls && port == 443) || (!tls && port == 80) || port == 0 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}
