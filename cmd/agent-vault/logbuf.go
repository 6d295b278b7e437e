package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// The server logs a line per brokered request. Written straight to stderr
// (a pipe to journald, or the log file) that is a write(2) per request, a
// few percent of the broker's CPU under load. logBuffer gathers lines and
// writes them at most logFlushEvery later; a line at Warn or above is
// written at once with everything before it, and Close writes the rest.
// A crash of the process can lose the last logFlushEvery of Info lines,
// never an audit row (the audit log is the record of requests).

const logFlushEvery = 50 * time.Millisecond

type logBuffer struct {
	mu      sync.Mutex
	w       *bufio.Writer
	pending bool // a flush is scheduled
	closed  bool
}

func newLogBuffer(w io.Writer) *logBuffer { return &logBuffer{w: bufio.NewWriterSize(w, 64<<10)} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		n, err := b.w.Write(p)
		if err == nil {
			err = b.w.Flush()
		}
		return n, err
	}
	n, err := b.w.Write(p)
	if !b.pending {
		b.pending = true
		time.AfterFunc(logFlushEvery, b.timedFlush)
	}
	return n, err
}

func (b *logBuffer) timedFlush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = false
	_ = b.w.Flush()
}

// Flush writes every buffered line now.
func (b *logBuffer) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.w.Flush()
}

// Close flushes and makes later writes unbuffered.
func (b *logBuffer) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	_ = b.w.Flush()
}

// urgentHandler flushes the buffer after every record at Warn or above, so
// warnings and errors are never held back.
type urgentHandler struct {
	slog.Handler
	buf *logBuffer
}

func (h urgentHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		h.buf.Flush()
	}
	return err
}

func (h urgentHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return urgentHandler{h.Handler.WithAttrs(as), h.buf}
}

func (h urgentHandler) WithGroup(name string) slog.Handler {
	return urgentHandler{h.Handler.WithGroup(name), h.buf}
}
