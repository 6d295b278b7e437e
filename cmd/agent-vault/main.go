package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: -ldflags '-X main.version=...'.
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	a := newApp()
	a.reexec = reexecWithSysmonSetting
	code := execute(ctx, a, os.Args[1:])
	stop()
	os.Exit(code)
}
