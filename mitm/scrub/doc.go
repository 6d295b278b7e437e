// Package scrub owns removing secret values from what an upstream sends back
// to an agent: Forms lists every encoded form of the injected secrets an
// upstream could echo (raw, JSON-escaped, percent-encoded, base64 at each of
// the three byte alignments), Reader redacts them from a streamed response
// body and Header from response headers.
//
// Redaction keeps lengths: every byte of an occurrence is overwritten by a
// marker of the same length ("[REDACTED]" for ten bytes, "[REDACTED***]"
// when longer, "****" when shorter), so a Content-Length stays right and the
// data path never has to reframe a response. Overlapping and adjacent
// occurrences are covered as one run; a run split across reads may show as
// two adjacent markers. Partial echoes (a truncated secret) are not forms and
// pass unchanged.
//
// Reader streams with bounded memory: it holds back only a tail of at most
// the longest form minus one byte, and only bytes that could still be the
// start of a form; every other byte is returned by the Read that received
// it, so server-sent events are not delayed. The search picks for every form
// its rarest byte (by a fixed frequency table of HTTP and JSON text), finds
// candidates with bytes.IndexByte (SIMD) and verifies them, which runs at
// several GB/s when nothing matches. A Reader sees bytes as they come from the
// upstream: compressed bodies must be decoded before scrubbing.
//
// It imports nothing of ours.
package scrub
