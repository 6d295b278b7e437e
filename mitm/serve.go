package mitm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// start launches the goroutines every listener shares: the inner HTTP server
// fed with terminated connections and the sweeper that closes connections of
// agents whose expiry passed.
func (b *Broker) start() {
	b.startOnce.Do(func() {
		if !b.enter() {
			return
		}
		go func() {
			defer b.wg.Done()
			_ = b.inner.Serve(b.innerLn)
		}()
		if !b.enter() {
			return
		}
		go func() {
			defer b.wg.Done()
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-b.stopSweep:
					return
				case <-t.C:
					b.closeInactive()
				}
			}
		}()
	})
}

// enter registers one goroutine with the broker, unless it is shutting down.
func (b *Broker) enter() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return false
	}
	b.wg.Add(1)
	return true
}

func (b *Broker) isClosed() bool { return b.closed.Load() }

func (b *Broker) addListener(l net.Listener) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return false
	}
	b.listeners[l] = struct{}{}
	return true
}

func (b *Broker) removeListener(l net.Listener) {
	b.mu.Lock()
	delete(b.listeners, l)
	b.mu.Unlock()
}

// ServeTransparent accepts redirected connections (TLS or plain HTTP) on l
// until Shutdown, then returns ErrServerClosed. It needs Config.Origin.
func (b *Broker) ServeTransparent(l net.Listener) error {
	if b.cfg.Origin == nil {
		return errors.New("serve transparent: Config.Origin is required")
	}
	b.start()
	if !b.addListener(l) {
		l.Close()
		return ErrServerClosed
	}
	defer b.removeListener(l)
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if b.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("transparent listener: %w", err)
			}
			// EMFILE and friends: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			b.log.Warn("transparent accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !b.enter() {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer b.wg.Done()
			b.handleTransparent(c)
		}()
	}
}

// ServeProxy serves the explicit proxy (CONNECT and absolute-form HTTP) on l
// until Shutdown, then returns ErrServerClosed.
func (b *Broker) ServeProxy(l net.Listener) error {
	b.start()
	if b.isClosed() {
		l.Close()
		return ErrServerClosed
	}
	return b.front.Serve(&trackingListener{Listener: l, b: b})
}

// Shutdown stops the listeners, lets in-flight requests finish until ctx is
// done, then closes every remaining connection (hijacked WebSockets
// included), waits for the broker's goroutines and for every pending
// completion audit row, and drops idle upstream connections. It returns
// ctx's error if it had to cut requests short.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	if b.closed.Load() {
		b.mu.Unlock()
		return nil
	}
	b.closed.Store(true)
	ls := make([]net.Listener, 0, len(b.listeners))
	for l := range b.listeners {
		ls = append(ls, l)
	}
	b.mu.Unlock()
	close(b.stopSweep)
	for _, l := range ls {
		l.Close()
	}
	var firstErr error
	if err := b.front.Shutdown(ctx); err != nil {
		firstErr = err
		b.front.Close()
	}
	b.innerLn.Close()
	if err := b.inner.Shutdown(ctx); err != nil {
		if firstErr == nil {
			firstErr = err
		}
		b.inner.Close()
	}
	if err := b.drainH1(ctx); err != nil && firstErr == nil {
		firstErr = err
	}
	b.closeAll()
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		b.closeAll()
		<-done // every goroutine is bounded once its connection is closed
		if firstErr == nil {
			firstErr = ctx.Err()
		}
	}
	b.transport.CloseIdleConnections()
	b.upload1.CloseIdleConnections()
	b.h1.CloseIdleConnections()
	return firstErr
}

// drainH1 is http.Server.Shutdown for serveH1's connections: it closes
// those waiting for their next request and waits for the others to finish
// the one they are serving (they stop after it), until ctx is done.
func (b *Broker) drainH1(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := 0
		idle := b.connsWhere(func(_ string, tc *trackedConn) bool {
			if tc.st == nil || !tc.st.h1 {
				return false
			}
			if tc.st.h1Busy.Load() {
				busy++ // under b.mu, as connsWhere calls this
				return false
			}
			return true
		})
		for _, tc := range idle {
			tc.Close()
		}
		if busy == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// trackedConn is every client connection the broker holds, below TLS. It
// remembers bytes already read (a peeked first byte, a hijacked bufio
// buffer), carries the connection's state for the HTTP server, and leaves
// the per-agent registry when closed.
type trackedConn struct {
	net.Conn
	b      *Broker
	prefix []byte
	st     *connState
	agent  string // registry key, guarded by b.mu
	once   sync.Once

	// corking: serveH1 gathers the TLS records of one large body write
	// and sends them in one write(2) (one wake-up of the agent, not one
	// per 16 KiB record)
	corkMu sync.Mutex
	wbuf   *[]byte // from corkPool while corked; nil otherwise
}

func (c *trackedConn) Write(p []byte) (int, error) {
	c.corkMu.Lock()
	if c.wbuf != nil {
		*c.wbuf = append(*c.wbuf, p...)
		c.corkMu.Unlock()
		return len(p), nil
	}
	c.corkMu.Unlock()
	return c.Conn.Write(p)
}

// corkCap is a cork buffer's capacity: four full TLS records with their
// overhead, the largest body write (ReverseProxy's 64 KiB copy buffer, which
// an unscrubbed body of known length fills; a scrubbed one comes in 32 KiB
// chunks). Buffers come from corkPool for one corked write and go back after
// it, so an agent connection holds none between writes. (Grown by append
// and kept per connection instead, a buffer passed its keep limit on the
// second record and was allocated again for every write: 58 KiB of garbage
// and ~9 page faults per 32 KiB sent.)
const corkCap = 4*corkAbove + 4096

var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, corkCap); return &b }}

// cork holds writes until uncork.
func (c *trackedConn) cork() {
	c.corkMu.Lock()
	if c.wbuf == nil {
		c.wbuf = corkPool.Get().(*[]byte)
	}
	c.corkMu.Unlock()
}

// uncork sends what cork held, in one write, and gives the buffer back.
func (c *trackedConn) uncork() error {
	c.corkMu.Lock()
	buf := c.wbuf
	c.wbuf = nil
	c.corkMu.Unlock()
	if buf == nil {
		return nil
	}
	var err error
	if len(*buf) > 0 {
		_, err = c.Conn.Write(*buf)
	}
	if cap(*buf) == corkCap { // not one append had to grow
		*buf = (*buf)[:0]
		corkPool.Put(buf)
	}
	return err
}

func (c *trackedConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		if st := c.b.untrack(c); st != nil {
			st.releaseHold()
		}
	})
	return c.Conn.Close()
}

func (b *Broker) track(c net.Conn, agent string) *trackedConn {
	tc := &trackedConn{Conn: c, b: b, agent: agent}
	b.mu.Lock()
	set := b.conns[agent]
	if set == nil {
		set = map[*trackedConn]struct{}{}
		b.conns[agent] = set
	}
	set[tc] = struct{}{}
	b.mu.Unlock()
	return tc
}

// retrack files a connection under the agent it authenticated as.
func (b *Broker) retrack(tc *trackedConn, agent string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if tc.agent == agent {
		return
	}
	set := b.conns[tc.agent]
	if _, ok := set[tc]; !ok {
		return // already closed
	}
	delete(set, tc)
	if len(set) == 0 {
		delete(b.conns, tc.agent)
	}
	tc.agent = agent
	if b.conns[agent] == nil {
		b.conns[agent] = map[*trackedConn]struct{}{}
	}
	b.conns[agent][tc] = struct{}{}
}

// untrack removes tc from the registry and returns its state (read under
// b.mu: Close may run on another goroutine, e.g. revocation, while the
// connection's own goroutine publishes the state with setState).
func (b *Broker) untrack(tc *trackedConn) *connState {
	b.mu.Lock()
	defer b.mu.Unlock()
	if set := b.conns[tc.agent]; set != nil {
		delete(set, tc)
		if len(set) == 0 {
			delete(b.conns, tc.agent)
		}
	}
	return tc.st
}

// setState attaches the connection's state once it is known; the
// connection is already registered, so a concurrent Close may read it.
func (b *Broker) setState(tc *trackedConn, st *connState) {
	b.mu.Lock()
	tc.st = st
	b.mu.Unlock()
}

// closeInactive closes every live connection of an agent that the current
// snapshot no longer has, or has revoked or expired.
func (b *Broker) closeInactive() {
	snap, now := b.snap.Load(), b.now()
	for _, tc := range b.connsWhere(func(agent string, _ *trackedConn) bool {
		if agent == "" {
			return false
		}
		a, ok := snap.Agent(agent)
		return !ok || !a.Active(now)
	}) {
		b.log.Info("closing connection of inactive agent", "agent", tc.agent, "peer", tc.RemoteAddr().String())
		tc.Close()
	}
}

func (b *Broker) closeAll() {
	for _, tc := range b.connsWhere(func(string, *trackedConn) bool { return true }) {
		tc.Close()
	}
}

// connsWhere is the tracked connections match says yes to (given the
// agent each belongs to, "" before it is known), collected under b.mu and
// returned for the caller to act on after it is released.
func (b *Broker) connsWhere(match func(agent string, tc *trackedConn) bool) []*trackedConn {
	var out []*trackedConn
	b.mu.Lock()
	defer b.mu.Unlock()
	for agent, set := range b.conns {
		for tc := range set {
			if match(agent, tc) {
				out = append(out, tc)
			}
		}
	}
	return out
}

// trackingListener registers the explicit proxy's connections so revocation
// and Shutdown reach them, hijacked CONNECT tunnels included.
type trackingListener struct {
	net.Listener
	b *Broker
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.b.track(c, ""), nil
}

// chanListener hands connections the broker accepted and terminated itself
// to the inner http.Server.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c over; false when the listener is closed (the caller closes c).
func (l *chanListener) push(c net.Conn) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4zero} }
