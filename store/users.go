package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// userRecord is users/<8-byte id>.
type userRecord struct {
	V            int       `json:"v"`
	Email        string    `json:"email"`
	Role         Role      `json:"role"`
	PasswordHash string    `json:"password_hash"`
	CreatedAt    time.Time `json:"created_at"`

	// Per-vault roles (admin, approver, viewer) on top of Role, which holds
	// the instance-wide role ("" for a user with vault roles only).
	VaultRoles map[string]Role `json:"vault_roles,omitempty"`
	// An invited user has no password until the invite is accepted: the
	// one-time invite token's SHA-256 (hex) and its expiry.
	InviteHash      string    `json:"invite_hash,omitempty"`
	InviteExpiresAt time.Time `json:"invite_expires_at,omitzero"`
	InvitedBy       string    `json:"invited_by,omitempty"`
}

func (r userRecord) user(id uint64) User {
	return User{ID: id, Email: r.Email, Role: r.Role, PasswordHash: r.PasswordHash, CreatedAt: r.CreatedAt}
}

// sessionRecord is sessions/<32-byte token hash>.
type sessionRecord struct {
	V         int       `json:"v"`
	UserID    uint64    `json:"user_id"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	LastSeen  time.Time `json:"last_seen"`
}

func validEmail(email string) error {
	if email == "" {
		return fmt.Errorf("%w email: must not be empty", ErrInvalid)
	}
	if len(email) > 254 || strings.Count(email, "@") != 1 || strings.HasPrefix(email, "@") || strings.HasSuffix(email, "@") ||
		strings.ContainsAny(email, " \t\r\n\x00") {
		return fmt.Errorf("%w email: %q is not an email address", ErrInvalid, email)
	}
	return nil
}

// HasOwner reports whether setup has been done.
func (s *Store) HasOwner() (bool, error) {
	var has bool
	err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := bucket(tx, bucketUsers).Cursor().First()
		has = k != nil
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("read users: %w", err)
	}
	return has, nil
}

// Setup creates the first owner; ErrSetupDone once any user exists. It is
// audited as user.setup by the new owner.
func (s *Store) Setup(email, passwordHash string) (User, error) {
	email = strings.TrimSpace(email)
	if err := validEmail(email); err != nil {
		return User{}, err
	}
	if passwordHash == "" {
		return User{}, fmt.Errorf("%w password hash: must not be empty", ErrInvalid)
	}
	now := s.now().UTC()
	var u User
	m := &mutation{event: audit.Event{Time: now, Actor: audit.Actor{Kind: audit.ActorUser, Name: email}, Action: "user.setup", Target: email}}
	err := s.update(m, func(tx *bolt.Tx) error {
		b := bucket(tx, bucketUsers)
		if k, _ := b.Cursor().First(); k != nil {
			return ErrSetupDone
		}
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		rec := userRecord{V: 1, Email: email, Role: RoleOwner, PasswordHash: passwordHash, CreatedAt: now}
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		u = rec.user(id)
		return b.Put(be64(id), raw)
	})
	if err != nil {
		return User{}, fmt.Errorf("setup: %w", err)
	}
	return u, nil
}

// UserByEmail finds a user (emails compare case-insensitively).
func (s *Store) UserByEmail(email string) (User, error) {
	email = strings.TrimSpace(email)
	var u User
	found := false
	err := s.db.View(func(tx *bolt.Tx) error {
		id, rec, ok, err := getUserByEmail(bucket(tx, bucketUsers), email)
		if ok {
			u, found = rec.user(id), true
		}
		return err
	})
	if err != nil {
		return User{}, fmt.Errorf("find user: %w", err)
	}
	if !found {
		return User{}, fmt.Errorf("user %q: %w", email, ErrNotFound)
	}
	return u, nil
}

// UserByID finds a user.
func (s *Store) UserByID(id uint64) (User, error) {
	rec, err := s.userRecordByID(id)
	if err != nil {
		return User{}, err
	}
	return rec.user(id), nil
}

// CreateSession stores a session. The user must exist and ExpiresAt must be
// set; CreatedAt and LastSeen default to now.
func (s *Store) CreateSession(sess Session) error {
	if sess.TokenHash == ([32]byte{}) {
		return fmt.Errorf("create session: %w token hash: must not be zero", ErrInvalid)
	}
	if sess.ExpiresAt.IsZero() {
		return fmt.Errorf("create session: %w expires_at: must be set", ErrInvalid)
	}
	now := s.now().UTC()
	if sess.CreatedAt.IsZero() {
		sess.CreatedAt = now
	}
	if sess.LastSeen.IsZero() {
		sess.LastSeen = sess.CreatedAt
	}
	rec := sessionRecord{V: 1, UserID: sess.UserID, CreatedAt: sess.CreatedAt.UTC(), ExpiresAt: sess.ExpiresAt.UTC(), LastSeen: sess.LastSeen.UTC()}
	raw, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if bucket(tx, bucketUsers).Get(be64(sess.UserID)) == nil {
			return fmt.Errorf("user %d: %w", sess.UserID, ErrNotFound)
		}
		return bucket(tx, bucketSessions).Put(sess.TokenHash[:], raw)
	})
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// Session finds a live session by token hash; ErrNotFound if missing or expired.
func (s *Store) Session(tokenHash [32]byte) (Session, error) {
	now := s.now()
	var sess Session
	err := s.db.View(func(tx *bolt.Tx) error {
		v := bucket(tx, bucketSessions).Get(tokenHash[:])
		if v == nil {
			return fmt.Errorf("session: %w", ErrNotFound)
		}
		var rec sessionRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode session: %w", err)
		}
		if !now.Before(rec.ExpiresAt) {
			return fmt.Errorf("session expired: %w", ErrNotFound)
		}
		sess = Session{TokenHash: tokenHash, UserID: rec.UserID, CreatedAt: rec.CreatedAt, ExpiresAt: rec.ExpiresAt, LastSeen: rec.LastSeen}
		return nil
	})
	return sess, err
}

// DeleteSession ends a session. Deleting a missing session is not an error.
func (s *Store) DeleteSession(tokenHash [32]byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return bucket(tx, bucketSessions).Delete(tokenHash[:])
	})
	if err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// DeleteExpiredSessions removes sessions that expired before now and returns
// how many it removed.
func (s *Store) DeleteExpiredSessions() (int, error) {
	now := s.now()
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := bucket(tx, bucketSessions)
		var dead [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var rec sessionRecord
			if json.Unmarshal(v, &rec) != nil || !now.Before(rec.ExpiresAt) {
				dead = append(dead, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete expired sessions: %w", err)
	}
	return n, nil
}
