// Command agent-vault is the appliance's one binary: `agent-vault server`
// runs the broker and its admin API; every other command is a client of the
// admin API (setup, login, vault, credential, service, agent, audit, ca).
//
// This package only wires: flags and environment into configs, the start
// and stop order of ARCHITECTURE.md section 8 (run.go), and errors into
// exit codes (0 success, 1 failure, 2 usage). It may import every package
// of ours; nothing imports it.
package main
