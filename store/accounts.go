package store

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// Roles and invites. A user has an instance-wide role (User.Role: owner,
// admin, approver or viewer, or "" for none) and per-vault roles (admin,
// approver or viewer in one vault). The effective role in a vault is the
// higher of the two. Users other than the first owner are invited: the
// invite stores a user record without a password, holding the SHA-256 of a
// one-time token; accepting it with the token sets the password.

// Account is a user with its vault roles and invite state (never a
// password hash or an invite token).
type Account struct {
	ID              uint64          `json:"id"`
	Email           string          `json:"email"`
	Role            Role            `json:"role,omitempty"`
	VaultRoles      map[string]Role `json:"vault_roles,omitempty"`
	Invited         bool            `json:"invited,omitempty"` // the invite is not accepted yet: no login
	InviteExpiresAt time.Time       `json:"invite_expires_at,omitzero"`
	InvitedBy       string          `json:"invited_by,omitempty"`
	CreatedAt       time.Time       `json:"created_at"`
}

func (r userRecord) account(id uint64) Account {
	a := Account{ID: id, Email: r.Email, Role: r.Role, VaultRoles: maps.Clone(r.VaultRoles), InvitedBy: r.InvitedBy, CreatedAt: r.CreatedAt}
	if r.InviteHash != "" {
		a.Invited, a.InviteExpiresAt = true, r.InviteExpiresAt
	}
	return a
}

// RoleRank orders roles: owner > admin > approver > viewer > none.
func RoleRank(r Role) int {
	switch r {
	case RoleOwner:
		return 4
	case RoleAdmin:
		return 3
	case RoleApprover:
		return 2
	case RoleViewer:
		return 1
	}
	return 0
}

// VaultRole is the account's effective role in vault: the higher of its
// instance-wide role and its role in that vault.
func (a Account) VaultRole(vault string) Role {
	r := a.Role
	if vr := a.VaultRoles[vault]; RoleRank(vr) > RoleRank(r) {
		r = vr
	}
	return r
}

// ValidRole checks a role name; per-vault roles may not be owner.
func ValidRole(r Role, perVault bool) error {
	switch r {
	case RoleAdmin, RoleApprover, RoleViewer:
		return nil
	case RoleOwner:
		if !perVault {
			return nil
		}
		return fmt.Errorf("%w role: owner is instance-wide; give it without a vault", ErrInvalid)
	}
	return fmt.Errorf("%w role: %q (use owner, admin, approver or viewer)", ErrInvalid, r)
}

func getUserByEmail(b *bolt.Bucket, email string) (uint64, userRecord, bool, error) {
	var (
		id    uint64
		rec   userRecord
		found bool
	)
	err := b.ForEach(func(k, v []byte) error {
		var r userRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("decode user %d: %w", binary.BigEndian.Uint64(k), err)
		}
		if strings.EqualFold(r.Email, email) {
			id, rec, found = binary.BigEndian.Uint64(k), r, true
			return errStop
		}
		return nil
	})
	if err == errStop {
		err = nil
	}
	return id, rec, found, err
}

func putUser(b *bolt.Bucket, id uint64, rec userRecord) error {
	rec.V = 1
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put(be64(id), raw)
}

// Account returns a user with its vault roles.
func (s *Store) Account(id uint64) (Account, error) {
	rec, err := s.userRecordByID(id)
	if err != nil {
		return Account{}, err
	}
	return rec.account(id), nil
}

// userRecordByID reads one user record.
func (s *Store) userRecordByID(id uint64) (userRecord, error) {
	var rec userRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := bucket(tx, bucketUsers).Get(be64(id))
		if v == nil {
			return fmt.Errorf("user %d: %w", id, ErrNotFound)
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode user %d: %w", id, err)
		}
		return nil
	})
	return rec, err
}

// Accounts lists every user (invited ones too), by id.
func (s *Store) Accounts() ([]Account, error) {
	var out []Account
	err := s.db.View(func(tx *bolt.Tx) error {
		return bucket(tx, bucketUsers).ForEach(func(k, v []byte) error {
			var rec userRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode user %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, rec.account(binary.BigEndian.Uint64(k)))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// InviteUser creates a user who cannot log in until they accept the invite
// with the token whose SHA-256 is inviteHash, before expires. With vault ""
// role is instance-wide, else it is the user's role in that vault.
// Inviting an email whose invite is still unaccepted replaces that invite;
// any other existing email gives ErrExists. Audited as user.invite.
func (s *Store) InviteUser(actor audit.Actor, email string, role Role, vault string, inviteHash [32]byte, expires time.Time) (Account, error) {
	email = strings.TrimSpace(email)
	if err := validEmail(email); err != nil {
		return Account{}, fmt.Errorf("invite user: %w", err)
	}
	if err := ValidRole(role, vault != ""); err != nil {
		return Account{}, fmt.Errorf("invite user: %w", err)
	}
	if inviteHash == ([32]byte{}) || expires.IsZero() {
		return Account{}, fmt.Errorf("invite user: %w: invite hash and expiry are required", ErrInvalid)
	}
	now := s.now().UTC()
	var out Account
	ev := audit.Event{Time: now, Actor: actor, Action: "user.invite", Vault: vault, Target: email, Reason: "role " + string(role)}
	err := s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		if vault != "" && bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return nil, vaultMissing(vault)
		}
		b := bucket(tx, bucketUsers)
		id, rec, found, err := getUserByEmail(b, email)
		if err != nil {
			return nil, err
		}
		if found && rec.InviteHash == "" {
			return nil, fmt.Errorf("user %q: %w (change their role with user grant)", email, ErrExists)
		}
		if !found {
			if id, err = b.NextSequence(); err != nil {
				return nil, err
			}
			rec = userRecord{Email: email, CreatedAt: now}
		}
		rec.Role, rec.VaultRoles = role, nil
		if vault != "" {
			rec.Role, rec.VaultRoles = "", map[string]Role{vault: role}
		}
		rec.InviteHash, rec.InviteExpiresAt, rec.InvitedBy = hex.EncodeToString(inviteHash[:]), expires.UTC(), actor.Name
		if err := putUser(b, id, rec); err != nil {
			return nil, err
		}
		out = rec.account(id)
		return []audit.Event{ev}, nil
	})
	if err != nil {
		return Account{}, fmt.Errorf("invite user: %w", err)
	}
	return out, nil
}

// AcceptInvite sets the password of the user invited with the token whose
// SHA-256 is inviteHash and ends the invite; ErrNotFound for an unknown,
// used or expired invite. Audited as user.accept.
func (s *Store) AcceptInvite(inviteHash [32]byte, passwordHash string) (User, error) {
	if passwordHash == "" {
		return User{}, fmt.Errorf("accept invite: %w password hash: must not be empty", ErrInvalid)
	}
	want := []byte(hex.EncodeToString(inviteHash[:]))
	now := s.now().UTC()
	var u User
	err := s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		b := bucket(tx, bucketUsers)
		var (
			id    uint64
			rec   userRecord
			found bool
		)
		err := b.ForEach(func(k, v []byte) error {
			var r userRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode user %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if r.InviteHash != "" && subtle.ConstantTimeCompare([]byte(r.InviteHash), want) == 1 {
				id, rec, found = binary.BigEndian.Uint64(k), r, true
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if !found || !now.Before(rec.InviteExpiresAt) {
			return nil, fmt.Errorf("invite: %w (unknown, already used or expired: ask for a new one)", ErrNotFound)
		}
		rec.PasswordHash, rec.InviteHash, rec.InviteExpiresAt = passwordHash, "", time.Time{}
		if err := putUser(b, id, rec); err != nil {
			return nil, err
		}
		u = rec.user(id)
		return []audit.Event{{Time: now, Actor: audit.Actor{Kind: audit.ActorUser, Name: rec.Email}, Action: "user.accept", Target: rec.Email}}, nil
	})
	if err != nil {
		return User{}, fmt.Errorf("accept invite: %w", err)
	}
	return u, nil
}

// GrantRole sets a user's role: instance-wide when vault is "", else in that
// vault. Role "" removes it. Taking the owner role from the last owner is
// refused. Audited as user.grant.
func (s *Store) GrantRole(actor audit.Actor, email, vault string, role Role) (Account, error) {
	if role != "" {
		if err := ValidRole(role, vault != ""); err != nil {
			return Account{}, fmt.Errorf("grant role: %w", err)
		}
	}
	if vault != "" {
		if err := policy.ValidName("vault", vault); err != nil {
			return Account{}, fmt.Errorf("grant role: %w", invalid(err))
		}
	}
	var out Account
	ev := audit.Event{Actor: actor, Action: "user.grant", Vault: vault, Target: email, Reason: "role " + string(role)}
	if role == "" {
		ev.Reason = "role removed"
	}
	err := s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		if vault != "" && role != "" && bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return nil, vaultMissing(vault)
		}
		b := bucket(tx, bucketUsers)
		id, rec, found, err := getUserByEmail(b, strings.TrimSpace(email))
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("user %q: %w", email, ErrNotFound)
		}
		if vault == "" {
			if rec.Role == RoleOwner && role != RoleOwner {
				if err := otherOwner(b, id); err != nil {
					return nil, err
				}
			}
			rec.Role = role
		} else {
			if rec.VaultRoles == nil {
				rec.VaultRoles = map[string]Role{}
			}
			if role == "" {
				delete(rec.VaultRoles, vault)
			} else {
				rec.VaultRoles[vault] = role
			}
		}
		if err := putUser(b, id, rec); err != nil {
			return nil, err
		}
		out = rec.account(id)
		ev.Target = rec.Email
		return []audit.Event{ev}, nil
	})
	if err != nil {
		return Account{}, fmt.Errorf("grant role: %w", err)
	}
	return out, nil
}

// otherOwner checks that an active owner other than id exists.
func otherOwner(b *bolt.Bucket, id uint64) error {
	found := false
	err := b.ForEach(func(k, v []byte) error {
		var r userRecord
		if json.Unmarshal(v, &r) == nil && r.Role == RoleOwner && r.InviteHash == "" && binary.BigEndian.Uint64(k) != id {
			found = true
			return errStop
		}
		return nil
	})
	if err != nil && err != errStop {
		return err
	}
	if !found {
		return fmt.Errorf("%w: this is the last owner; make another user owner first", ErrForbidden)
	}
	return nil
}

// RemoveUser deletes a user and every session of theirs. Removing the last
// owner is refused (ErrForbidden). Audited as user.remove.
func (s *Store) RemoveUser(actor audit.Actor, email string) error {
	ev := audit.Event{Actor: actor, Action: "user.remove", Target: email}
	err := s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		b := bucket(tx, bucketUsers)
		id, rec, found, err := getUserByEmail(b, strings.TrimSpace(email))
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("user %q: %w", email, ErrNotFound)
		}
		if rec.Role == RoleOwner && rec.InviteHash == "" {
			if err := otherOwner(b, id); err != nil {
				return nil, err
			}
		}
		if err := b.Delete(be64(id)); err != nil {
			return nil, err
		}
		sb := bucket(tx, bucketSessions)
		var dead [][]byte
		err = sb.ForEach(func(k, v []byte) error {
			var sr sessionRecord
			if json.Unmarshal(v, &sr) != nil || sr.UserID == id {
				dead = append(dead, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, k := range dead {
			if err := sb.Delete(k); err != nil {
				return nil, err
			}
		}
		ev.Target = rec.Email
		return []audit.Event{ev}, nil
	})
	if err != nil {
		return fmt.Errorf("remove user: %w", err)
	}
	return nil
}

// TouchSession records that a session was used at t (for the idle
// timeout). A missing session is ErrNotFound.
func (s *Store) TouchSession(tokenHash [32]byte, t time.Time) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := bucket(tx, bucketSessions)
		v := b.Get(tokenHash[:])
		if v == nil {
			return fmt.Errorf("session: %w", ErrNotFound)
		}
		var rec sessionRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode session: %w", err)
		}
		rec.LastSeen = t.UTC()
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put(tokenHash[:], raw)
	})
	if err != nil {
		return fmt.Errorf("touch session: %w", err)
	}
	return nil
}
