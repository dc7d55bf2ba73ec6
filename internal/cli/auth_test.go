package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/internal/tokens"
)

// TestAuthTokenCommands: create prints the token once (alone on stdout),
// list shows it without the token, revoke removes it, the audit has both,
// and bad input says what is wrong.
func TestAuthTokenCommands(t *testing.T) {
	t.Setenv("NATS_URL", "")
	t.Setenv(NATSURLEnv, "")
	dir := t.TempDir()
	code, out, errs := run(t, "auth", "token", "create", "--name", "ci", "--role", "operator", "--expires", "30d", "--data-dir", dir)
	secret := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(secret, tokens.Prefix+"ci_") || strings.Count(out, "\n") != 1 || !strings.Contains(errs, "shown only now") {
		t.Fatalf("create: %d %q %q", code, out, errs)
	}
	code, out, errs = run(t, "auth", "token", "list", "--json", "--data-dir", dir)
	var list []tokens.Token
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].Name != "ci" || list[0].Role != tokens.Operator ||
		list[0].ExpiresAt == nil || strings.Contains(out, secret) || strings.Contains(out, `"hash"`) {
		t.Fatalf("list: %d %s %s", code, out, errs)
	}
	if code, out, _ := run(t, "auth", "token", "list", "--data-dir", dir); code != 0 || !strings.Contains(out, "ci ") || !strings.Contains(out, "operator") {
		t.Errorf("list table: %d %s", code, out)
	}
	if code, out, errs := run(t, "auth", "token", "revoke", "ci", "--data-dir", dir); code != 0 || !strings.Contains(out, "Revoked token ci") {
		t.Errorf("revoke: %d %s %s", code, out, errs)
	}
	if code, out, _ := run(t, "auth", "token", "list", "--json", "--data-dir", dir); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("list after revoke: %d %s", code, out)
	}
	code, out, _ = run(t, "auth", "audit", "--json", "--data-dir", dir)
	var entries []tokens.Entry
	if code != 0 || json.Unmarshal([]byte(out), &entries) != nil || len(entries) != 2 || entries[0].Action != tokens.ActionCreated ||
		entries[1].Action != tokens.ActionRevoked || entries[1].Token != "ci" {
		t.Errorf("audit: %d %s", code, out)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"auth", "token", "create", "--name", "x", "--role", "root"}, 2, "viewer, operator, admin"},
		{[]string{"auth", "token", "create", "--name", "x", "--role", "viewer", "--expires", "soon"}, 2, "such as 30d"},
		{[]string{"auth", "token", "create", "--name", "bad-name", "--role", "viewer"}, 1, "token name"},
		{[]string{"auth", "token", "revoke", "nobody"}, 1, "no token of that name"},
		{[]string{"auth", "token", "revoke"}, 2, "usage: da auth token revoke <name>"},
		{[]string{"auth", "frob"}, 2, "da auth token create"},
	} {
		if code, _, errs := run(t, append(c.args, "--data-dir", dir)...); code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%v: %d %q, want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
}

// TestAuthTokenCommandsOverAPI: with --api the token commands go through
// a sync API with the token from --token or $DA_TOKEN, and say which.
func TestAuthTokenCommandsOverAPI(t *testing.T) {
	t.Setenv("NATS_URL", "")
	t.Setenv(NATSURLEnv, "")
	t.Setenv(TokenEnv, "")
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, DataDir: cfg.DataDir, Roles: []string{stack.RoleNone},
		APIListen: "127.0.0.1:0", APIToken: "boot", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	api := "http://" + st.APIAddr
	code, out, errs := run(t, "auth", "token", "create", "--api", api, "--token", "boot", "--name", "dash", "--role", "viewer", "--json")
	var c Created
	if code != 0 || json.Unmarshal([]byte(out), &c) != nil || c.Name != "dash" || !strings.HasPrefix(c.Token, tokens.Prefix) ||
		!strings.Contains(errs, "with the API token from --token") {
		t.Fatalf("create over the API: %d %s %s", code, out, errs)
	}
	t.Setenv(TokenEnv, "boot")
	if code, out, errs := run(t, "auth", "token", "list", "--api", api); code != 0 || !strings.Contains(out, "dash") || !strings.Contains(errs, "from $DA_TOKEN") {
		t.Errorf("list over the API: %d %s %s", code, out, errs)
	}
	// A viewer token may not manage tokens: the API's reason comes back.
	t.Setenv(TokenEnv, c.Token)
	if code, _, errs := run(t, "auth", "token", "revoke", "dash", "--api", api); code != 1 || !strings.Contains(errs, "403") || !strings.Contains(errs, "needs admin") {
		t.Errorf("revoke with a viewer token: %d %s", code, errs)
	}
	t.Setenv(TokenEnv, "boot")
	if code, out, errs := run(t, "auth", "token", "revoke", "dash", "--api", api); code != 0 || !strings.Contains(out, "Revoked token dash") {
		t.Errorf("revoke over the API: %d %s %s", code, out, errs)
	}
	t.Setenv(TokenEnv, "")
	if code, _, errs := run(t, "auth", "token", "list", "--api", api); code != 2 || !strings.Contains(errs, "set $DA_TOKEN") {
		t.Errorf("no token: %d %s", code, errs)
	}
	if code, _, errs := run(t, "auth", "token", "list", "--api", "ftp://x", "--token", "boot"); code != 2 || !strings.Contains(errs, "not an http(s) URL") {
		t.Errorf("a bad --api: %d %s", code, errs)
	}
}

// TestRunsStatusCancelOverAPI: da sync, runs, status and cancel go
// through a sync API with --api and a token of the role each needs.
func TestRunsStatusCancelOverAPI(t *testing.T) {
	t.Setenv("NATS_URL", "")
	t.Setenv(NATSURLEnv, "")
	t.Setenv(APIURLEnv, "")
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Sources = []config.Source{{Name: "demo", Connector: "demo", Config: map[string]any{"rows": 500, "customer_rows": 10}}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: cfg.DataDir,
		APIListen: "127.0.0.1:0", APIToken: "boot", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	api := "http://" + st.APIAddr
	store, err := tokens.Open(context.Background(), st.JS, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	viewer, _, _ := store.Create(context.Background(), "dash", tokens.Viewer, 0, "test", "")
	t.Setenv(TokenEnv, "boot")
	code, out, errs := run(t, "status", "--api", api, "--json")
	var sts []runs.SourceStatus
	if code != 0 || json.Unmarshal([]byte(out), &sts) != nil || len(sts) != 1 || sts[0].Name != "demo" || !strings.Contains(errs, "from $DA_TOKEN") {
		t.Fatalf("status over the API: %d %s %s", code, out, errs)
	}
	// A sync through the API, followed to its end.
	code, out, errs = run(t, "sync", "demo", "--api", api)
	var trig struct{ RunID string }
	fmt.Sscanf(out[strings.Index(out, "(run ")+len("(run "):], "%36s", &trig.RunID)
	if code != 0 || !strings.Contains(out, "Published ") || !strings.Contains(out, "orders") || !strings.Contains(errs, "from $DA_TOKEN") {
		t.Fatalf("sync over the API: %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs := run(t, "sync", "nope", "--api", api); code != 1 || !strings.Contains(errs, "404") {
		t.Errorf("sync of an unknown source over the API: %d %s %s", code, out, errs)
	}
	var list []runs.Record
	natstest.Poll(t, time.Minute, func() (bool, string) {
		code, out, errs := run(t, "runs", "--api", api, "--token", viewer, "--json", "--limit", "5")
		list = nil
		json.Unmarshal([]byte(out), &list)
		return code == 0 && len(list) == 1 && list[0].RunID == trig.RunID && list[0].Status == runs.Published && list[0].Trigger == "api",
			fmt.Sprintf("runs: %d %s %s", code, out, errs)
	})
	if code, _, errs := run(t, "cancel", trig.RunID, "--api", api, "--token", viewer); code != 1 || !strings.Contains(errs, "403") {
		t.Errorf("cancel with a viewer token: %d %s", code, errs)
	}
	if code, _, errs := run(t, "cancel", trig.RunID, "--api", api); code != 1 || !strings.Contains(errs, "409") {
		t.Errorf("cancel of an ended run with the admin token: %d %s", code, errs)
	}
}
