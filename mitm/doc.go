// Package mitm owns the broker's data path: the transparent and explicit-proxy
// accept loops, the decision taken on the TLS ClientHello (agent identity,
// SNI, destination binding), TLS termination with leaves from mitm/ca,
// HTTP/1.1 and HTTP/2 serving with net/http, per-request authorization
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
// Completion audit rows ("request.complete") are appended asynchronously
// after the response has been streamed, so the response never waits on the
// audit store; they are retried a few times, and Shutdown waits for every one
// of them. WebSocket traffic after the 101 upgrade is relayed as opaque bytes:
// its frames are not scrubbed in either direction (the upgrade response's
// headers are).
package mitm
