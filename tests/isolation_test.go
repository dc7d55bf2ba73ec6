package tests

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
)

func startFixture(tb testing.TB, f *fixture, dataDir string) *stack.Stack {
	tb.Helper()
	cfg := config.Default()
	cfg.DataDir = dataDir
	cfg.Sources = []config.Source{{Name: "fx", Connector: "fixture"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: fixtureRegistry(f), DataDir: dataDir,
		Writers: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Stop() })
	return st
}

func syncFixture(tb testing.TB, st *stack.Stack) *stack.Report { return syncSource(tb, st, "fx") }

// syncSource runs one sync of source on st and waits for its extract.
func syncSource(tb testing.TB, st *stack.Stack, source string) *stack.Report {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: source, RequestedAt: time.Now().UTC()}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return rep
}

func results(rep *stack.Report) map[string]schemas.TableResult {
	m := map[string]schemas.TableResult{}
	for _, r := range rep.Results {
		m[r.Table] = r
	}
	return m
}

// TestTableErrorsAreIsolated: one table errors and one panics mid-read; the
// others publish, the failed ones keep their previous data, and the extract
// keeps the contract (including an empty table and a remote table).
func TestTableErrorsAreIsolated(t *testing.T) {
	dataDir := t.TempDir()
	f := &fixture{caps: connectors.Discover | connectors.Read | connectors.Remote}
	st := startFixture(t, f, dataDir)
	extract := filepath.Join(dataDir, "extracts", "fx", "extract.duckdb")

	// First run: everything succeeds.
	rep := syncFixture(t, st)
	if rep.Failed != 0 {
		t.Fatalf("first run failed tables: %+v", rep.Results)
	}
	x, err := extractcheck.Verify(context.Background(), extract)
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if x.Counts["good"] != 1000 || x.Counts["broken"] != 1000 || x.Counts["empty"] != 0 {
		t.Errorf("counts %v", x.Counts)
	}

	// Second run: broken errors, panicky panics.
	f.fail = map[string]string{"broken": "error", "panicky": "panic"}
	rep = syncFixture(t, st)
	res := results(rep)
	if rep.Failed != 2 {
		t.Errorf("%d failed tables, want 2: %+v", rep.Failed, rep.Results)
	}
	if r := res["broken"]; r.Status != schemas.StatusFailed || !strings.Contains(r.Error, "source said 503") {
		t.Errorf("broken: %+v", r)
	}
	if r := res["panicky"]; r.Status != schemas.StatusFailed || !strings.Contains(r.Error, "panicked") {
		t.Errorf("panicky: %+v", r)
	}
	for _, ok := range []string{"good", "empty", "far_away"} {
		if res[ok].Status != schemas.StatusDone {
			t.Errorf("%s did not complete: %+v", ok, res[ok])
		}
	}
	x, err = extractcheck.Verify(context.Background(), extract)
	if err != nil {
		t.Fatalf("contract after partial failure: %v", err)
	}
	// The failed tables' previous data stays live; nothing partial shows.
	if x.Counts["broken"] != 1000 || x.Counts["panicky"] != 1000 || x.Counts["good"] != 1000 {
		t.Errorf("counts after failures %v: previous data must stay", x.Counts)
	}
	meta := map[string]extractcheck.MetaRow{}
	for _, m := range x.Meta {
		meta[m.Table] = m
	}
	if r := meta["far_away"]; r.QueryMode != "remote" || r.Rows != 0 || r.SizeBytes != 0 {
		t.Errorf("remote row %+v", r)
	}
	if v := x.Views["far_away"]; !strings.Contains(v, `kbc."in.c-main"."far-away"`) {
		t.Errorf("remote view over the attached alias: %q", v)
	}
	if len(x.Remote) != 1 || x.Remote[0].URL != "https://connection.keboola.com" || x.Remote[0].TokenEnv != "KEBOOLA_STORAGE_TOKEN" {
		t.Errorf("_remote_attach %+v", x.Remote)
	}
}

// TestPublishFailureStaysTheTables: a table whose view cannot be created
// (a remote path DuckDB cannot name: a deterministic error) is left out of
// the new extract with its previous version kept, the run records why, and
// every other table publishes, in one attempt: nothing is retried.
func TestPublishFailureStaysTheTables(t *testing.T) {
	dataDir := t.TempDir()
	f := &fixture{caps: connectors.Discover | connectors.Read | connectors.Remote}
	var logs natstest.LogBuffer
	cfg := config.Default()
	cfg.DataDir = dataDir
	cfg.Sources = []config.Source{{Name: "fx", Connector: "fixture"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: fixtureRegistry(f), DataDir: dataDir,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	if rep := syncFixture(t, st); rep.Failed != 0 {
		t.Fatalf("first sync: %+v", rep.Results)
	}
	f.remotePath.Store(&[]string{"in.c-main", "far-away", "deeper"})
	rep := syncFixture(t, st)
	res := results(rep)
	if r := res["far_away"]; r.Status != schemas.StatusFailed || !strings.Contains(r.Error, "more than schema and table") {
		t.Errorf("far_away: %+v", r)
	}
	for _, n := range []string{"good", "empty", "broken", "panicky"} {
		if res[n].Status != schemas.StatusDone {
			t.Errorf("%s: %+v", n, res[n])
		}
	}
	x, err := extractcheck.Verify(context.Background(), filepath.Join(dataDir, "extracts", "fx", "extract.duckdb"))
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if v := x.Views["far_away"]; !strings.Contains(v, `"in.c-main"."far-away"`) {
		t.Errorf("far_away's previous view is not kept: %q", v)
	}
	if x.Counts["good"] != 1000 {
		t.Errorf("good rows %d", x.Counts["good"])
	}
	out := logs.String()
	if n := strings.Count(out, "finalize run failed; retrying"); n != 0 {
		t.Errorf("a deterministic failure was retried %d times", n)
	}
	if n := strings.Count(out, "table left out of the extract"); n != 1 {
		t.Errorf("the view was tried %d times, want once:\n%s", n, out)
	}
}
