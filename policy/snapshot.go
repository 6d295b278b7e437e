package policy

import (
	"net/netip"
	"slices"
	"strings"
)

// Snapshot is an immutable view of every vault's services and every agent,
// built once per change by the control plane and read without locks by the
// data path. Nothing returned by a Snapshot may be modified.
type Snapshot struct {
	version uint64
	vaults  map[string]*vaultIndex
	agents  map[string]*Agent
	byToken map[[32]byte]*Agent
	byCg    map[uint64]*Agent
	sources []sourceEntry // sorted longest prefix first
}

type vaultIndex struct {
	services  []Service
	exact     map[string][]*Service // by host, most specific first
	wildcards []*Service            // longest suffix first, then most specific
}

type sourceEntry struct {
	prefix netip.Prefix
	agent  *Agent
}

// Input is what a Snapshot is built from. Services and agents naming a vault
// not listed in Vaults are ignored.
type Input struct {
	Version  uint64
	Vaults   []string
	Services []Service
	Agents   []Agent
}

// NewSnapshot builds a snapshot. It copies its input, so the caller may reuse
// the slices.
func NewSnapshot(in Input) *Snapshot {
	s := &Snapshot{
		version: in.Version,
		vaults:  make(map[string]*vaultIndex, len(in.Vaults)),
		agents:  make(map[string]*Agent, len(in.Agents)),
		byToken: make(map[[32]byte]*Agent, len(in.Agents)),
		byCg:    make(map[uint64]*Agent),
	}
	for _, v := range in.Vaults {
		s.vaults[v] = &vaultIndex{exact: map[string][]*Service{}}
	}
	for _, svc := range in.Services {
		if vi := s.vaults[svc.Vault]; vi != nil {
			svc.Methods = slices.Clone(svc.Methods)
			svc.Auth.In = slices.Clone(svc.Auth.In)
			svc.Auth.BodyFields = slices.Clone(svc.Auth.BodyFields)
			vi.services = append(vi.services, svc)
		}
	}
	for _, vi := range s.vaults {
		slices.SortFunc(vi.services, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
		for i := range vi.services {
			svc := &vi.services[i]
			if strings.HasPrefix(svc.Host, "*.") {
				vi.wildcards = append(vi.wildcards, svc)
			} else {
				vi.exact[svc.Host] = append(vi.exact[svc.Host], svc)
			}
		}
		for _, list := range vi.exact {
			slices.SortStableFunc(list, bySpecificity)
		}
		slices.SortStableFunc(vi.wildcards, func(a, b *Service) int {
			if d := len(b.Host) - len(a.Host); d != 0 {
				return d
			}
			return bySpecificity(a, b)
		})
	}
	for _, a := range in.Agents {
		if s.vaults[a.Vault] == nil {
			continue
		}
		a := a
		a.Sources = slices.Clone(a.Sources)
		ap := &a
		s.agents[a.Name] = ap
		if a.TokenHash != ([32]byte{}) {
			s.byToken[a.TokenHash] = ap
		}
		if a.CgroupID != 0 {
			s.byCg[a.CgroupID] = ap
		}
		for _, p := range a.Sources {
			s.sources = append(s.sources, sourceEntry{p.Masked(), ap})
		}
	}
	slices.SortStableFunc(s.sources, func(a, b sourceEntry) int { return b.prefix.Bits() - a.prefix.Bits() })
	return s
}

// bySpecificity orders services of the same host pattern: a specific port
// before any port, then the longer path prefix first.
func bySpecificity(a, b *Service) int {
	if (a.Port != 0) != (b.Port != 0) {
		if a.Port != 0 {
			return -1
		}
		return 1
	}
	return len(b.Path) - len(a.Path)
}

// Version is the change counter the snapshot was built at.
func (s *Snapshot) Version() uint64 { return s.version }

// HasVault reports whether the vault exists.
func (s *Snapshot) HasVault(vault string) bool { return s.vaults[vault] != nil }

// Services returns the vault's services ordered by name.
func (s *Snapshot) Services(vault string) []Service {
	if vi := s.vaults[vault]; vi != nil {
		return vi.services
	}
	return nil
}

// HostAllowed reports whether any service of the vault matches host, on any
// port, path or method. The TLS ClientHello and the DNS proxy decide on this:
// they know the name but not yet the request.
func (s *Snapshot) HostAllowed(vault, host string) bool {
	vi := s.vaults[vault]
	if vi == nil {
		return false
	}
	if len(vi.exact[host]) > 0 {
		return true
	}
	for _, w := range vi.wildcards {
		if wildcardMatch(w.Host, host) {
			return true
		}
	}
	return false
}

// Match decides one request against the vault's services. It does not
// allocate.
func (s *Snapshot) Match(vault string, r Request) Decision {
	vi := s.vaults[vault]
	if vi == nil {
		return Decision{Action: Deny, Reason: ReasonUnknownVault}
	}
	best := ReasonNoHost
	try := func(list []*Service) *Service {
		for _, svc := range list {
			if svc.Port != 0 && svc.Port != r.Port {
				best = furthest(best, ReasonPort)
				continue
			}
			if !PathHasPrefix(r.Path, svc.Path) {
				best = furthest(best, ReasonPath)
				continue
			}
			if len(svc.Methods) > 0 && !slices.Contains(svc.Methods, r.Method) {
				best = furthest(best, ReasonMethod)
				continue
			}
			return svc
		}
		return nil
	}
	if svc := try(vi.exact[r.Host]); svc != nil {
		return Decision{Action: Allow, Reason: ReasonMatched, Service: svc}
	}
	for i, w := range vi.wildcards {
		if !wildcardMatch(w.Host, r.Host) {
			continue
		}
		// try the run of wildcards sharing this pattern, already ordered
		j := i
		for j < len(vi.wildcards) && vi.wildcards[j].Host == w.Host {
			j++
		}
		if svc := try(vi.wildcards[i:j]); svc != nil {
			return Decision{Action: Allow, Reason: ReasonMatched, Service: svc}
		}
	}
	return Decision{Action: Deny, Reason: best}
}

// furthest returns whichever reason got further through host, port, path,
// method.
func furthest(a, b Reason) Reason {
	rank := func(r Reason) int {
		switch r {
		case ReasonPort:
			return 1
		case ReasonPath:
			return 2
		case ReasonMethod:
			return 3
		}
		return 0
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// wildcardMatch reports whether host is strictly below the pattern's suffix:
// "*.example.com" matches "a.example.com" and "a.b.example.com", not
// "example.com".
func wildcardMatch(pattern, host string) bool {
	suffix := pattern[1:] // ".example.com"
	return len(host) > len(suffix) && strings.HasSuffix(host, suffix)
}

// PathHasPrefix reports whether path is under prefix on a segment boundary:
// "/v1" covers "/v1" and "/v1/x" but not "/v10". An empty prefix covers all.
func PathHasPrefix(path, prefix string) bool {
	if prefix == "" || prefix == "/" {
		return true
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || prefix[len(prefix)-1] == '/' || path[len(prefix)] == '/' || path[len(prefix)] == '?'
}

// Agent returns the agent with that name.
func (s *Snapshot) Agent(name string) (*Agent, bool) {
	a, ok := s.agents[name]
	return a, ok
}

// Agents returns every agent, in no particular order.
func (s *Snapshot) Agents() []*Agent {
	out := make([]*Agent, 0, len(s.agents))
	for _, a := range s.agents {
		out = append(out, a)
	}
	return out
}

// AgentByTokenHash finds the agent holding a token (shape E).
func (s *Snapshot) AgentByTokenHash(h [32]byte) (*Agent, bool) {
	a, ok := s.byToken[h]
	return a, ok
}

// AgentBySource finds the agent bound to the most specific source prefix
// containing addr (shape G). IPv4-mapped IPv6 addresses count as IPv4.
func (s *Snapshot) AgentBySource(addr netip.Addr) (*Agent, bool) {
	addr = addr.Unmap()
	for _, e := range s.sources {
		if e.prefix.Contains(addr) {
			return e.agent, true
		}
	}
	return nil, false
}

// AgentByCgroupID finds the agent bound to a cgroup (shape L).
func (s *Snapshot) AgentByCgroupID(id uint64) (*Agent, bool) {
	a, ok := s.byCg[id]
	return a, ok
}
