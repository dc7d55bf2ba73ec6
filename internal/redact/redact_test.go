package redact

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	t.Cleanup(reset)
	Register("kbc-1234-secret-token", "short", "kbc-1234")
	RegisterURL("nats://agnes:s3cr3t-pass@10.0.0.1:4222,nats://tok3n-only-value@10.0.0.2:4222")
	for in, want := range map[string]string{
		`HTTP 401: Invalid access token "kbc-1234-secret-token"`:             `HTTP 401: Invalid access token "[REDACTED]"`,
		"token kbc-1234 and kbc-1234-secret-token":                           "token [REDACTED] and [REDACTED]",
		"connect to NATS at nats://agnes:s3cr3t-pass@10.0.0.1:4222: refused": "connect to NATS at nats://[REDACTED]@10.0.0.1:4222: refused",
		"password s3cr3t-pass echoed":                                        "password [REDACTED] echoed",
		"bare tok3n-only-value":                                              "bare [REDACTED]",
		"a short word stays":                                                 "a short word stays",
		"https://example.com/path?q=1":                                       "https://example.com/path?q=1",
	} {
		if got := String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTerminal(t *testing.T) {
	for in, want := range map[string]string{
		"plain\nlines\tand tabs":        "plain\nlines\tand tabs",
		"\x1b[31mred\x1b[0m":            `\x1b[31mred\x1b[0m`,
		"back\rover":                    `back\rover`,
		"bell\a and \u202eRTL override": `bell\a and \u202eRTL override`,
		"bad \xff byte":                 `bad \ufffd byte`,
	} {
		if got := Terminal(in); got != want {
			t.Errorf("Terminal(%q) = %q, want %q", in, got, want)
		}
	}
}

type stringer struct{ s string }

func (s stringer) String() string { return s.s }

func TestHandler(t *testing.T) {
	t.Cleanup(reset)
	Register("kbc-1234-secret-token")
	var buf bytes.Buffer
	log := slog.New(Handler(slog.NewTextHandler(&buf, nil))).With("url", "nats://u:p4ssw0rd@h:4222")
	log.Info("token kbc-1234-secret-token in the message",
		"err", fmt.Errorf("upstream: %w", errors.New("bad token kbc-1234-secret-token")),
		"str", stringer{"kbc-1234-secret-token"},
		slog.Group("g", "v", "kbc-1234-secret-token"),
		"list", []string{"kbc-1234-secret-token"})
	out := buf.String()
	if strings.Contains(out, "kbc-1234-secret-token") || strings.Contains(out, "p4ssw0rd") {
		t.Errorf("secret in the log: %s", out)
	}
	if strings.Count(out, Mask) != 6 {
		t.Errorf("want 6 masks: %s", out)
	}
}

// TestHandlerWrapsOnce: wrapping a scrubbing handler again (the CLI's
// logger handed to stack.Start) does not scrub every record twice.
func TestHandlerWrapsOnce(t *testing.T) {
	inner := slog.NewTextHandler(&bytes.Buffer{}, nil)
	once := Handler(inner)
	twice := Handler(once)
	if h, ok := twice.(handler); !ok || h.h != slog.Handler(inner) {
		t.Errorf("Handler(Handler(h)) nests: %#v", twice)
	}
}
