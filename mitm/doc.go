// Package mitm owns the broker's data path: the transparent and explicit-proxy
// accept loops, the decision taken on the TLS ClientHello (agent identity,
// SNI, destination binding), TLS termination with leaves from mitm/ca,
// HTTP/1.1 serving in each connection's goroutine (serveH1, with
// net/http's parser; see h1server.go for what it keeps and leaves out of
// net/http's server) and HTTP/2 and plain-HTTP serving with net/http,
// per-request authorization
// against the current policy snapshot, the audit intent written before any
// credential is attached, injection (mitm/inject) and forwarding with
// httputil.ReverseProxy to the validated upstream address, and scrubbing of
// the injected values from responses (mitm/scrub).
//
// It may import policy, audit and its own sub-packages (mitm/ca, mitm/inject,
// mitm/scrub); never store, redirect, admin or dnsproxy. What it needs from
// them arrives through small interfaces and functions in Config (Secrets,
// audit.Sink, Origin, Resolve, DestinationAllowed, DialControl) that cmd wires.
//
// Upstream connections are pooled keyed by scheme and "name:port" (the
// bound name sits in URL.Host and becomes the TLS ServerName), so a
// connection opened for one name is never reused for another. Requests from
// HTTP/1.1 agents without a body or with a body of known length up to 1 MiB
// take h1Transport, which writes the request and reads the response in the
// handler's goroutine on a pooled HTTP/1.1 connection (net/http's Transport
// hands each request through two more goroutines, and on small VMs each
// hand-off wakes an idle vCPU: see h1transport.go). Their chunked or large
// uploads take an http.Transport that speaks only HTTP/1.1 (no HTTP/2 flow
// control or framing on a large body: see newTransport); HTTP/2 agents,
// gRPC among them, take one that speaks HTTP/2 upstream where offered. The
// dial itself takes the addresses validated for the request
// (the transparent connection's original destination, or the broker's own
// resolution for CONNECT); two agents whose validated addresses for the same
// name differ may share a pooled, certificate-verified connection to either.
// A transparent connection's destination is checked in the ClientHello
// (refused with an alert); a CONNECT tunnel's at its first request (a
// readable 403/502). Names with no service still complete the handshake and
// every request on them gets 403 no_service with a hint; nothing is sent
// upstream. inject.Apply runs for every auth kind, so an agent's own
// Authorization and Proxy-* headers never pass, auth none included.
//
// Agent-facing TLS: one shared server configuration, so session tickets
// resume across an agent's connections (every ClientHello is still decided);
// agents on loopback get X25519 key exchange, agents on other hosts Go's
// default post-quantum hybrid first (see loopbackCurves). Compiled scrubbers
// are cached by a digest of the injected values and dropped on every policy
// swap.
//
// Responses of known length go to the agent in one write when the upstream
// is done (ReverseProxy's FlushInterval 0: event streams and bodies of
// unknown length are still flushed as they arrive), and the response is
// flushed before the completion row and the log line are written. A body
// of known length over 1 MiB from the pooled HTTP/1.1 transport is read
// ahead of the handler by a goroutine of its own, in 512 KiB chunks
// (prefetcher: decrypting the next chunk while the last is scrubbed,
// encrypted and written; at most 16 bodies at once), and so is an HTTP/1.1
// agent's upload of that size, from the agent (readAheadUpload).
// Completion audit rows ("request.complete") never hold up the response:
// a Sink that takes follow-up rows (audit.FollowUpSink, the store) records
// them inline without waiting; any other Sink gets them from a goroutine,
// retried a few times, and Shutdown waits for every one of them.
//
// WebSocket: on a request carrying a credential, the upstream's messages
// are scrubbed after the 101 (wsScrubber: each data message as one stream
// across its fragments, re-fragmented on the way; control frames on their
// own; lengths kept; a value split across two messages is not found, as a
// message is the unit an agent reads). The agent's compression offer
// (Sec-WebSocket-Extensions) is not passed on, and an upgrade the broker
// cannot read (another protocol, a negotiated extension, a masked or
// reserved-bit frame, fragments out of order) is refused or ended, never
// relayed. The agent's own frames pass unchanged.
//
// ECH (a departure from ARCHITECTURE.md section 3, which says to deny it):
// the broker decides on the ClientHello's outer name like on any other SNI
// and completes (or refuses) the handshake as that name; it never reads or
// forwards the encrypted inner hello. Browsers send GREASE ECH on every
// connection, so denying every hello that carries the extension would break
// them, while a real ECH attempt is simply rejected by a server without ECH
// keys and the client retries without it. The DNS proxy withholds HTTPS/SVCB
// records, so clients get no ECH configuration through the appliance anyway.
//
// A bound transparent connection holds its destination's DNS pin
// (Config.HoldDestination) until it closes, so a long-lived connection is
// never orphaned by its lease expiring.
package mitm
