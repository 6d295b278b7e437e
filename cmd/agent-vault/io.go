package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func isTerminal(fd int) bool { return term.IsTerminal(fd) }

// maxSecretInput bounds what is read from stdin for a password or a value.
const maxSecretInput = 1 << 20

// stdinFd returns stdin's descriptor when stdin is a terminal.
func (a *app) stdinTerminal() (int, bool) {
	f, ok := a.stdin.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, a.isTerminal(fd)
}

// readSecret reads a password or credential value: with a no-echo prompt on
// stderr when stdin is a terminal (twice when confirm is set), else all of
// stdin without its trailing line break. Secrets never come from argv.
func (a *app) readSecret(prompt string, confirm bool) ([]byte, error) {
	if fd, ok := a.stdinTerminal(); ok {
		fmt.Fprint(a.stderr, prompt+": ")
		v, err := term.ReadPassword(fd)
		fmt.Fprintln(a.stderr)
		if err != nil {
			return nil, fmt.Errorf("read %s from the terminal: %w", prompt, err)
		}
		if confirm {
			fmt.Fprint(a.stderr, "again: ")
			again, err := term.ReadPassword(fd)
			fmt.Fprintln(a.stderr)
			if err != nil {
				return nil, fmt.Errorf("read %s from the terminal: %w", prompt, err)
			}
			if !bytes.Equal(v, again) {
				return nil, withHint(errors.New("the two entries differ"), "run the command again")
			}
		}
		if len(v) == 0 {
			return nil, withHint(fmt.Errorf("empty %s", prompt), "type it at the prompt")
		}
		return v, nil
	}
	v, err := io.ReadAll(io.LimitReader(a.stdin, maxSecretInput+1))
	if err != nil {
		return nil, fmt.Errorf("read %s from stdin: %w", prompt, err)
	}
	if len(v) > maxSecretInput {
		return nil, fmt.Errorf("%s on stdin is longer than %d bytes", prompt, maxSecretInput)
	}
	v = bytes.TrimRight(v, "\r\n")
	if len(v) == 0 {
		return nil, withHint(fmt.Errorf("no %s on stdin", prompt), "pipe it in (e.g. from a file) or run on a terminal to be prompted")
	}
	return v, nil
}

// printJSON writes v as one indented JSON document.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// table writes aligned columns; the first row is the header.
func (a *app) table(rows [][]string) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		for i, c := range r {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// printList prints items as one JSON document when asJSON is set, else as a
// table: header, then row(item) for each item.
func printList[T any](a *app, asJSON bool, items []T, header []string, row func(T) []string) error {
	if asJSON {
		return a.printJSON(items)
	}
	rows := [][]string{header}
	for _, it := range items {
		rows = append(rows, row(it))
	}
	return a.table(rows)
}

// jsonFlag gives each command --json, bound to asJSON.
func jsonFlag(asJSON *bool, cmds ...*cobra.Command) {
	for _, c := range cmds {
		c.Flags().BoolVar(asJSON, "json", false, "print one JSON document")
	}
}
