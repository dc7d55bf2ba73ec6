package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
)

func openStore(t *testing.T) (*Store, *natstest.LogBuffer) {
	t.Helper()
	js := natstest.MustStart(t)
	var logs natstest.LogBuffer
	s, err := Open(context.Background(), js, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, &logs
}

// TestCreateListRevoke: a token is shown once and stored as its hash;
// it authenticates with its role, a wrong or forged one does not; a
// revoked one stops at once; names are unique.
func TestCreateListRevoke(t *testing.T) {
	ctx := context.Background()
	s, logs := openStore(t)
	secret, tok, err := s.Create(ctx, "ci_bot", Operator, 30*24*time.Hour, "cli", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, "agt_ci_bot_") || len(secret) != len("agt_ci_bot_")+64 || tok.Hash != "" {
		t.Fatalf("token %q, record %+v", secret, tok)
	}
	e, err := s.kv.Get(ctx, "ci_bot")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(e.Value()), secret[len(secret)-64:]) || !strings.Contains(string(e.Value()), hash(secret)) {
		t.Errorf("stored record %s must hold the hash, not the token", e.Value())
	}
	if _, _, err := s.Create(ctx, "ci_bot", Viewer, 0, "cli", ""); !errors.Is(err, ErrExists) {
		t.Errorf("a second token of the same name: %v", err)
	}
	got, err := s.Authenticate(ctx, secret, "10.0.0.1")
	if err != nil || got.Role != Operator || got.Name != "ci_bot" {
		t.Fatalf("authenticate: %+v %v", got, err)
	}
	wrong := secret[:len(secret)-1] + map[bool]string{true: "0", false: "1"}[secret[len(secret)-1] != '0']
	for _, bad := range []string{wrong, "agt_ci_bot_zz", "agt_../x_" + strings.Repeat("a", 64), "", "Bearer " + secret, "agt_nobody_" + strings.Repeat("a", 64)} {
		if _, err := s.Authenticate(ctx, bad, "10.0.0.1"); !errors.Is(err, ErrInvalid) {
			t.Errorf("token %q: %v, want invalid", bad, err)
		}
	}
	// Rotation: a second token valid beside the first.
	secret2, _, err := s.Create(ctx, "ci_bot_2", Operator, 0, "cli", "")
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "ci_bot" || list[1].Name != "ci_bot_2" || list[0].Hash != "" ||
		list[0].LastUsedIP != "10.0.0.1" || list[0].ExpiresAt == nil || list[1].ExpiresAt != nil {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := s.Revoke(ctx, "ci_bot", "cli", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, secret, "10.0.0.1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("a revoked token: %v", err)
	}
	if _, err := s.Authenticate(ctx, secret2, "10.0.0.1"); err != nil {
		t.Errorf("the new token after the old one's revocation: %v", err)
	}
	if err := s.Revoke(ctx, "ci_bot", "cli", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoking twice: %v", err)
	}
	if strings.Contains(logs.String(), secret[len(secret)-64:]) {
		t.Errorf("a token reached the log:\n%s", logs.String())
	}
}

// TestExpiry: an expired token is refused.
func TestExpiry(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	secret, _, err := s.Create(ctx, "short", Viewer, time.Hour, "cli", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, secret, "1.2.3.4"); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	now = now.Add(time.Hour)
	if _, err := s.Authenticate(ctx, secret, "1.2.3.4"); !errors.Is(err, ErrInvalid) {
		t.Errorf("at expiry: %v, want invalid", err)
	}
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "2w": 14 * 24 * time.Hour, "12h": 12 * time.Hour, "never": 0} {
		if d, err := ParseExpiry(in); err != nil || d != want {
			t.Errorf("ParseExpiry(%q) = %v %v, want %v", in, d, err, want)
		}
	}
	for _, bad := range []string{"", "0d", "-1d", "1s", "soon", "99999d"} {
		if _, err := ParseExpiry(bad); err == nil {
			t.Errorf("ParseExpiry(%q) accepted", bad)
		}
	}
}

// TestAuditNewIP: create, revoke and the first use from each address are
// audited once each (in the log and the audit stream); repeated use from a
// known address is not, and its last use is noted at most every minute.
func TestAuditNewIP(t *testing.T) {
	ctx := context.Background()
	s, logs := openStore(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	secret, _, err := s.Create(ctx, "ops", Admin, 0, "bootstrap", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"} {
		if _, err := s.Authenticate(ctx, secret, ip); err != nil {
			t.Fatal(err)
		}
	}
	_, rev, _ := s.get(ctx, "ops")
	now = now.Add(2 * UseInterval)
	if _, err := s.Authenticate(ctx, secret, "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	tok, rev2, _ := s.get(ctx, "ops")
	if rev2 == rev || tok.LastUsedAt == nil || !tok.LastUsedAt.Equal(now) {
		t.Errorf("a use a while later was not noted: %+v", tok)
	}
	if err := s.Revoke(ctx, "ops", "cli", ""); err != nil {
		t.Fatal(err)
	}
	entries, err := s.Audit().List(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Action+":"+e.IP)
	}
	want := "token_created:192.0.2.1 token_new_ip:10.0.0.1 token_new_ip:10.0.0.2 token_revoked:"
	if strings.Join(got, " ") != want {
		t.Errorf("audit entries %v, want %s", got, want)
	}
	if n := strings.Count(logs.String(), `"msg":"audit"`); n != 4 {
		t.Errorf("%d audit log lines, want 4:\n%s", n, logs.String())
	}
	// Something else on the audit subjects is not taken for an entry.
	b, _ := json.Marshal(Entry{Action: "token_created", Token: "forged"})
	s.audit.js.Publish(ctx, schemas.AuditSubject("other"), b)
	if entries, _ := s.Audit().List(ctx, 2); len(entries) != 1 || entries[0].Action != ActionRevoked {
		t.Errorf("last entries %+v, want only the revocation", entries)
	}
}

func TestRoles(t *testing.T) {
	for _, c := range []struct {
		have, need Role
		ok         bool
	}{{Viewer, Viewer, true}, {Viewer, Operator, false}, {Operator, Viewer, true}, {Operator, Admin, false}, {Admin, Operator, true}, {"root", Viewer, false}} {
		if c.have.Allows(c.need) != c.ok {
			t.Errorf("%s allows %s: %v", c.have, c.need, !c.ok)
		}
	}
	if _, err := ParseRole("root"); err == nil || !strings.Contains(err.Error(), "viewer, operator, admin") {
		t.Errorf("ParseRole(root): %v", err)
	}
}

// BenchmarkAuthenticate: the cost a token check adds to every API
// request (a KV read and a constant-time compare; the use is noted at
// most once a minute).
func BenchmarkAuthenticate(b *testing.B) {
	js := natstest.MustStart(b)
	s, err := Open(context.Background(), js, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	secret, _, err := s.Create(context.Background(), "bench", Viewer, 0, "bench", "")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Authenticate(context.Background(), secret, "10.0.0.1"); err != nil {
			b.Fatal(err)
		}
	}
}
