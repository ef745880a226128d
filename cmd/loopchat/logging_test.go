package main

import (
	"bytes"
	"strings"
	"testing"
)

// The process logger keeps a flood of one warning to logLinesPerSecond
// lines, in either format.
func TestProcessLoggerSamplesFloods(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var out bytes.Buffer
		log, err := newLogger(&out, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		for range 500 {
			log.Warn("request failed", "err", "redis: connection refused")
		}
		if got := strings.Count(out.String(), "request failed"); got < 1 || got > 2*logLinesPerSecond {
			t.Fatalf("%s: a 500-line flood wrote %d lines, want at most %d", format, got, 2*logLinesPerSecond)
		}
	}
}
