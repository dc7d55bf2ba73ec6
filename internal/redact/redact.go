// Package redact keeps secrets and hostile text out of what we print and
// store. Secrets (the values of the variables and config fields a
// connector's manifest marks secret, webhook secrets, the password or
// token in a NATS URL) are registered once when the config is read; every
// log record (Handler), every event's error text (String, applied in
// natsbus.PublishEvent) and every error the CLI prints then has them
// replaced with [REDACTED], whatever upstream message echoed them. URLs
// lose their userinfo wherever they are printed (URL). Untrusted text
// bound for a terminal has its control characters shown, not sent
// (Terminal).
package redact

import (
	"context"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"
)

// Mask replaces a secret.
const Mask = "[REDACTED]"

// MinSecretLen: shorter values are not registered (they would mask common
// words; no credential is that short).
const MinSecretLen = 6

var (
	mu      sync.RWMutex
	secrets []string
)

// Register adds secret values to scrub from now on.
func Register(values ...string) {
	mu.Lock()
	defer mu.Unlock()
	for _, v := range values {
		v = strings.TrimSpace(v)
		if len(v) < MinSecretLen || slices.Contains(secrets, v) {
			continue
		}
		secrets = append(secrets, v)
	}
	// Longest first, so a secret containing another is masked whole.
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
}

// RegisterURL registers the password, or the lone token, of a URL's
// userinfo (each of a comma-separated list).
func RegisterURL(raw string) {
	for _, one := range strings.Split(raw, ",") {
		u, err := url.Parse(strings.TrimSpace(one))
		if err != nil || u.User == nil {
			continue
		}
		if p, ok := u.User.Password(); ok {
			Register(p)
		} else {
			Register(u.User.Username())
		}
	}
}

// userinfo matches the userinfo of a URL in free text.
var userinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@`)

// URL is s with the userinfo of every URL in it masked
// (nats://user:pass@host → nats://[REDACTED]@host).
func URL(s string) string { return userinfo.ReplaceAllString(s, "${1}"+Mask+"@") }

// String is s with every registered secret and every URL's userinfo
// masked.
func String(s string) string {
	mu.RLock()
	for _, v := range secrets {
		if strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, Mask)
		}
	}
	mu.RUnlock()
	return URL(s)
}

// Terminal is untrusted text made safe to print: control characters
// (escape sequences, carriage returns, bells) are shown as Go escapes;
// newlines and tabs stay.
func Terminal(s string) string {
	if !strings.ContainsFunc(s, unsafeRune) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r == unicode.ReplacementChar {
			b.WriteString(`\ufffd`)
			continue
		}
		if unsafeRune(r) {
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func unsafeRune(r rune) bool {
	return r != '\n' && r != '\t' && (unicode.IsControl(r) || r == unicode.ReplacementChar || unicode.Is(unicode.Bidi_Control, r))
}

// Handler wraps h so every record's message and attribute values are
// scrubbed (String) before h sees them.
func Handler(h slog.Handler) slog.Handler {
	if x, ok := h.(handler); ok {
		// Already scrubbing (the CLI's logger handed to stack.Start): once
		// is enough.
		return x
	}
	return handler{h}
}

type handler struct{ h slog.Handler }

func (x handler) Enabled(ctx context.Context, l slog.Level) bool { return x.h.Enabled(ctx, l) }

func (x handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(scrub(a))
		return true
	})
	return x.h.Handle(ctx, out)
}

func (x handler) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = scrub(a)
	}
	return handler{x.h.WithAttrs(clean)}
}

func (x handler) WithGroup(name string) slog.Handler { return handler{x.h.WithGroup(name)} }

// scrub masks secrets in one attribute: strings, errors and anything
// printed by its String or Error method; groups attribute by attribute.
func scrub(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, String(v.String()))
	case slog.KindGroup:
		as := v.Group()
		clean := make([]slog.Attr, len(as))
		for i, g := range as {
			clean[i] = scrub(g)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(clean...)}
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, String(x.Error()))
		case interface{ String() string }:
			return slog.String(a.Key, String(x.String()))
		case []string:
			out := make([]string, len(x))
			for i, s := range x {
				out[i] = String(s)
			}
			return slog.Any(a.Key, out)
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// reset forgets every secret (tests).
func reset() {
	mu.Lock()
	secrets = nil
	mu.Unlock()
}
