// Package ca owns the broker's certificate authority: generating the root
// (ECDSA P-256, MaxPathLenZero, about ten years, a random suffix in its common
// name so two installations never share a name), loading it back from DER, and
// minting short-lived leaf certificates for exactly the TLS SNI the broker
// terminates, kept in a bounded cache.
//
// Leaves share one ECDSA P-256 key generated in memory when an Authority is
// created and never stored: minting is then one signature (tens of
// microseconds) instead of a key generation plus a signature. This costs no
// isolation: the leaf key lives in the same process memory as the root key,
// which can mint a leaf for any name anyway, and it dies with the process.
// The cache is a CLOCK (second-chance) approximation of LRU: a hit takes a
// read lock, one map lookup and one atomic load, and allocates nothing.
// Concurrent first requests for one name are coalesced, so a name is minted
// once; no lock is held while signing. A leaf is renewed once two thirds of
// its lifetime have passed, so a handshake never receives a leaf about to
// expire.
//
// The key is handed in and out as PKCS#8 DER; encrypting it at rest is the
// store's business. This package imports nothing of ours.
package ca
