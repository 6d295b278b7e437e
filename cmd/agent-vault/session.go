package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/agentvault/agent-vault/admin/client"
)

// serverURL is --server, else AGENT_VAULT_ADDR, else the default.
func (a *app) serverURL() string {
	if a.server != "" {
		return a.server
	}
	if v := a.getenv("AGENT_VAULT_ADDR"); v != "" {
		return v
	}
	return client.DefaultAddr
}

// savedSession is one login, kept per server address.
type savedSession struct {
	Token     string    `json:"token"`
	Email     string    `json:"email"`
	ExpiresAt time.Time `json:"expires_at"`
}

type sessionFile struct {
	Sessions map[string]savedSession `json:"sessions"`
}

// sessionPath is agent-vault/session.json under the user's config dir
// ($XDG_CONFIG_HOME or ~/.config).
func (a *app) sessionPath() (string, error) {
	dir := a.getenv("XDG_CONFIG_HOME")
	if dir == "" {
		var err error
		if dir, err = os.UserConfigDir(); err != nil {
			return "", fmt.Errorf("find the config dir for the session file: %w", err)
		}
	}
	return filepath.Join(dir, "agent-vault", "session.json"), nil
}

func (a *app) loadSessions() (sessionFile, string, error) {
	sf := sessionFile{Sessions: map[string]savedSession{}}
	p, err := a.sessionPath()
	if err != nil {
		return sf, "", err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return sf, p, nil
	} else if err != nil {
		return sf, p, fmt.Errorf("read session file: %w", err)
	}
	if err := json.Unmarshal(b, &sf); err != nil {
		return sf, p, withHint(fmt.Errorf("session file %s is damaged", p), "delete it and log in again")
	}
	if sf.Sessions == nil {
		sf.Sessions = map[string]savedSession{}
	}
	return sf, p, nil
}

// saveSession stores (or, with a zero session, forgets) the session for the
// server, in a file of mode 0600 written atomically.
func (a *app) saveSession(server string, s savedSession) (string, error) {
	sf, p, err := a.loadSessions()
	if err != nil {
		return "", err
	}
	if s.Token == "" {
		delete(sf.Sessions, server)
	} else {
		sf.Sessions[server] = s
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", fmt.Errorf("create config dir: %w", err)
	}
	b, err := json.MarshalIndent(sf, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode session file: %w", err)
	}
	if err := writeFileAtomic(p, append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("save session: %w", err)
	}
	return p, nil
}

// client returns an API client of the server, authenticated by
// AGENT_VAULT_TOKEN or the session saved by login.
func (a *app) client() (*client.Client, error) {
	c, err := client.New(a.serverURL())
	if err != nil {
		return nil, usagef("%v", err)
	}
	if tok := a.getenv("AGENT_VAULT_TOKEN"); tok != "" {
		c.SetToken(tok)
		return c, nil
	}
	sf, _, err := a.loadSessions()
	if err != nil {
		return nil, err
	}
	if s, ok := sf.Sessions[c.BaseURL()]; ok {
		c.SetToken(s.Token)
	}
	return c, nil
}
