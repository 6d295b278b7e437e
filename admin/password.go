package admin

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// MinPasswordLength is the shortest password setup accepts.
const MinPasswordLength = 8

// maxPasswordLength bounds the work a login can ask for.
const maxPasswordLength = 1024

var b64 = base64.RawStdEncoding

// hashPassword returns an Argon2id hash in the PHC string format:
// $argon2id$v=19$m=<KiB>,t=<time>,p=<threads>$<salt>$<hash>.
func hashPassword(password string, p PasswordParams) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("read random salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, 32)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.MemoryKiB, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

var errBadHash = errors.New("stored password hash is malformed")

// verifyPassword reports whether password matches the PHC-encoded hash, in
// constant time with respect to the password.
func verifyPassword(password, encoded string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	var p PasswordParams
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.MemoryKiB, &p.Time, &p.Threads); err != nil {
		return false, errBadHash
	}
	if p.MemoryKiB < 8 || p.MemoryKiB > 4<<20 || p.Time < 1 || p.Time > 64 || p.Threads < 1 {
		return false, errBadHash
	}
	salt, err := b64.DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return false, errBadHash
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) < 16 || len(want) > 64 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// Token prefixes make leaked tokens recognisable to secret scanners.
const (
	sessionTokenPrefix = "avs_"
	agentTokenPrefix   = "ava_"
)

// newToken returns a random 256-bit token with its prefix, and the SHA-256 of
// the whole token string, which is all the store keeps.
func newToken(prefix string) (string, [32]byte, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", [32]byte{}, fmt.Errorf("read random token: %w", err)
	}
	tok := prefix + base64.RawURLEncoding.EncodeToString(raw)
	return tok, TokenHash(tok), nil
}

// TokenHash is how a session or agent token is stored and looked up: the
// SHA-256 of the token string exactly as the client presents it. The data
// path hashes an agent's proxy token the same way to find it in a
// policy.Snapshot (AgentByTokenHash).
func TokenHash(token string) [32]byte { return sha256.Sum256([]byte(token)) }
