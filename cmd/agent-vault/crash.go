package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
)

// crashFile, in the data dir, holds the runtime's reports of fatal errors.
const crashFile = "crash.log"

// crashKeep: a crash.log larger than this at start moves to crash.log.1
// (replacing the one there), so restarts after crashes cannot fill the disk.
const crashKeep = 16 << 20

// keepCrashOutput has the runtime write a fatal error's whole report (the
// panic, every goroutine's state with sysmonSetting, the tracebacks) to
// crash.log as well as to stderr. Why: stderr goes to journald, which keeps
// only so much of a burst, and a crash is exactly when the report matters.
// The file is appended to: the restart after a crash must not wipe it. It
// holds what stderr gets (handler panics are recovered and logged redacted
// by mitm and never reach it; tracebacks show argument words, not the bytes
// they point to) and is private to the data dir's owner.
func keepCrashOutput(dataDir string, log *slog.Logger) {
	path := filepath.Join(dataDir, crashFile)
	if st, err := os.Stat(path); err == nil && st.Size() > crashKeep {
		_ = os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		log.Warn("fatal errors will be reported on stderr only", "file", path, "err", err)
		return
	}
	defer f.Close() // the runtime keeps its own descriptor
	if err := debug.SetCrashOutput(f, debug.CrashOptions{}); err != nil {
		log.Warn("fatal errors will be reported on stderr only", "file", path, "err", err)
	}
}
