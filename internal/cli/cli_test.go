package cli

import (
	"bytes"
	"context"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func run(tb testing.TB, args ...string) (int, string, string) {
	tb.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(tb testing.TB, dir, name, body string) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestUsage(t *testing.T) {
	if code, _, errs := run(t); code != 2 || !strings.Contains(errs, "da sync <source>") {
		t.Errorf("no args: code %d, stderr %q", code, errs)
	}
	if code, _, errs := run(t, "frobnicate"); code != 2 || !strings.Contains(errs, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: code %d, stderr %q", code, errs)
	}
	if code, out, _ := run(t, "help"); code != 0 || !strings.Contains(out, "da serve") {
		t.Errorf("help: code %d", code)
	}
	if code, _, errs := run(t, "sync"); code != 2 || !strings.Contains(errs, "usage: da sync <source>") {
		t.Errorf("sync without source: code %d, stderr %q", code, errs)
	}
	if code, _, errs := run(t, "sync", "demo", "--writers", "0"); code != 2 || !strings.Contains(errs, "--writers") {
		t.Errorf("bad flag value: code %d, stderr %q", code, errs)
	}
}

func TestConnectorList(t *testing.T) {
	code, out, _ := run(t, "connector", "list")
	if code != 0 || !strings.Contains(out, "demo") || !strings.Contains(out, "discover,read") || !strings.Contains(out, "1.0.0") {
		t.Errorf("code %d, out:\n%s", code, out)
	}
}

// TestSyncBadInput: every mistake is reported clearly, before or instead of a run.
func TestSyncBadInput(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	badConnector := writeFile(t, dir, "c1.yaml", "sources:\n  - name: s\n    connector: nope\n")
	badValue := writeFile(t, dir, "c2.yaml", "sources:\n  - name: s\n    connector: demo\n    config:\n      rows: many\n")
	badName := writeFile(t, dir, "c3.yaml", "sources:\n  - name: s-1\n    connector: demo\n")
	for _, tc := range []struct {
		name string
		args []string
		says []string
	}{
		{"ErrUnknownSource", []string{"sync", "nope"}, []string{`unknown source "nope"`, "configured: demo"}},
		{"ErrBadSourceName", []string{"sync", "../etc"}, []string{`source "../etc" must match`}},
		{"ErrBadTableName", []string{"sync", "demo", "--tables", "a;b"}, []string{`table "a;b" must match`}},
		{"ErrUnknownConnector", []string{"sync", "s", "--config", badConnector}, []string{`unknown connector "nope"`, "available: bigquery, demo, jira, keboola"}},
		{"ErrConfigType", []string{"sync", "s", "--config", badValue}, []string{"invalid connector config", `"rows"`, "integer", "c2.yaml"}},
		{"ErrConfigName", []string{"sync", "s-1", "--config", badName}, []string{"c3.yaml", "sources[0].name"}},
		{"ErrMissingConfig", []string{"sync", "demo", "--config", filepath.Join(dir, "missing.yaml")}, []string{"missing.yaml", "no such file"}},
		{"ErrUnknownTable", []string{"sync", "demo", "--embedded", "--tables", "nope"}, []string{`unknown table "nope"`, "orders, customers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(tc.args, "--data-dir", data)
			code, _, errs := run(t, args...)
			if code == 0 {
				t.Fatal("succeeded")
			}
			for _, w := range tc.says {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not say %q", errs, w)
				}
			}
		})
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var errb natstest.LogBuffer
	go func() {
		done <- Run(ctx, []string{"serve", "--data-dir", dir, "--nats-listen", "127.0.0.1:-1"}, &bytes.Buffer{}, &errb)
	}()
	natstest.Poll(t, 20*time.Second, func() (bool, string) {
		out := errb.String()
		return strings.Contains(out, "finalizer started") && strings.Contains(out, "producer started"), "serve did not start: " + out
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve exited %d: %s", code, errb.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop after cancel")
	}
	for _, w := range []string{"da serving", "shutting down", "producer stopped", "writer stopped", "finalizer stopped"} {
		if !strings.Contains(errb.String(), w) {
			t.Errorf("serve log lacks %q", w)
		}
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1000: "-1,000"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestConnectorDiscoverAndTest(t *testing.T) {
	code, out, errs := run(t, "connector", "discover", "demo")
	if code != 0 || !strings.Contains(out, "orders  [read]  key: id") || !strings.Contains(out, "created_at") || !strings.Contains(out, "timestamp[us, tz=UTC]") {
		t.Errorf("discover: code %d\n%s%s", code, out, errs)
	}
	if code, _, errs := run(t, "connector", "discover", "nope"); code == 0 || !strings.Contains(errs, `unknown source "nope"`) {
		t.Errorf("discover unknown source: %d %s", code, errs)
	}
	dir := t.TempDir()
	cfg := writeFile(t, dir, "a.yaml", "sources:\n  - name: small\n    connector: demo\n    config: {rows: 2000, customer_rows: 100}\n    table_options:\n      orders: {incremental_key: id}\n")
	code, out, errs = run(t, "connector", "test", "small", "--config", cfg)
	if code != 0 || strings.Count(out, "PASS") != 9 || !strings.Contains(out, "all checks passed") {
		t.Errorf("test: code %d\n%s%s", code, out, errs)
	}
	bad := writeFile(t, dir, "b.yaml", "sources:\n  - name: small\n    connector: demo\n    config: {rows: -5}\n")
	code, out, _ = run(t, "connector", "test", "small", "--config", bad)
	if code != 1 || !strings.Contains(out, "FAIL  ManifestMatchesConnector") || !strings.Contains(out, "checks failed") {
		t.Errorf("test with bad config: code %d\n%s", code, out)
	}
	if code, out, errs := run(t, "connector", "check", "demo"); code != 0 || !strings.Contains(out, "source demo (connector demo) is healthy") {
		t.Errorf("check: code %d\n%s%s", code, out, errs)
	}
	if code, _, _ := run(t, "connector", "frob"); code != 2 {
		t.Errorf("unknown subcommand: %d", code)
	}
}
