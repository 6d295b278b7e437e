//go:build race

package mitm

const raceEnabled = true
