package mitm

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// disconnectAfter is how long a request may run before serveH1 starts
// watching its connection for the agent leaving: fast requests never pay
// for a watcher, a slow upstream call (a model's answer) is canceled soon
// after its agent went away, as net/http's server would.
var disconnectAfter = time.Second

// disconnectWatch cancels a request whose agent closed the connection:
// disconnectAfter into a request, once the request body was read to its
// end, a goroutine peeks at the connection, and an error or EOF there
// means the agent left. A byte that arrives instead (a pipelined request)
// stays in br for the next request. One per connection, armed per request.
type disconnectWatch struct {
	c     net.Conn
	timer *time.Timer

	mu     sync.Mutex
	br     *bufio.Reader      // the request's reader
	body   *bodyEnd           // its body; nil when it has none
	cancel context.CancelFunc // cancels it; nil when not armed
	done   chan struct{}      // closed when the peeking goroutine ended; nil if none started
}

func newDisconnectWatch(c net.Conn) *disconnectWatch {
	w := &disconnectWatch{c: c}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

// start arms the watch for one request read through br.
func (w *disconnectWatch) start(br *bufio.Reader, body *bodyEnd, cancel context.CancelFunc) {
	w.mu.Lock()
	w.br, w.body, w.cancel = br, body, cancel
	w.mu.Unlock()
	w.timer.Reset(disconnectAfter)
}

func (w *disconnectWatch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cancel == nil || w.done != nil || (w.body != nil && !w.body.done.Load()) {
		return // the handler may still read the body from br
	}
	done, cancel, br := make(chan struct{}), w.cancel, w.br
	w.done = done
	go func() {
		defer close(done)
		if _, err := br.Peek(1); err != nil && !isTimeout(err) {
			cancel()
		}
	}()
}

// stop disarms the watch before anyone reads from br again; it does
// nothing when the watch is not armed.
func (w *disconnectWatch) stop() {
	w.timer.Stop()
	w.mu.Lock()
	if w.cancel == nil { // not armed
		w.mu.Unlock()
		return
	}
	done := w.done
	w.br, w.body, w.cancel, w.done = nil, nil, nil, nil
	w.mu.Unlock()
	if done != nil {
		w.c.SetReadDeadline(time.Unix(1, 0)) // unblock the peek
		<-done
		w.c.SetReadDeadline(time.Time{})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bodyEnd notes when a request body was read to its end.
type bodyEnd struct {
	io.ReadCloser
	done atomic.Bool
}

func (b *bodyEnd) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done.Store(true)
	}
	return n, err
}
