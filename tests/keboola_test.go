package tests

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/connectors/keboola"
	"github.com/agnes-ai/connector-kit/connectors/keboola/keboolatest"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
)

const kbcToken = "kbc-token-never-written-anywhere"

// kbcOrders is a table whose rows and change times the test edits.
type kbcOrders struct {
	mu      sync.Mutex
	rows    [][]string
	changed []time.Time
}

func (o *kbcOrders) set(id, amount string, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, r := range o.rows {
		if r[0] == id {
			o.rows[i], o.changed[i] = []string{id, amount}, at
			return
		}
	}
	o.rows, o.changed = append(o.rows, []string{id, amount}), append(o.changed, at)
}

// TestKeboolaSync: one Keboola source gives local tables (exported,
// incremental by changedSince and merged by key), a remote table (a view
// over the attached kbc catalog with its _remote_attach row) and a failing
// export that fails only its table; the extract keeps the contract, also
// read from another working directory.
func TestKeboolaSync(t *testing.T) {
	srv := keboolatest.New(kbcToken)
	defer srv.Close()
	srv.JobPolls = 1
	orders := &kbcOrders{}
	long := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 1; i <= 4; i++ {
		orders.set(fmt.Sprint(i), fmt.Sprint(i*10), long)
	}
	num := []keboola.MetadataEntry{{Key: "KBC.datatype.basetype", Value: "INTEGER", Provider: "storage"}}
	ordersTbl := &keboolatest.Table{Bucket: "in.c-crm", Name: "orders", PrimaryKey: []string{"id"}, Columns: []string{"id", "amount"},
		ColumnMetadata: map[string][]keboola.MetadataEntry{"id": num, "amount": num}, Description: "CRM orders"}
	ordersTbl.RowCount = 0
	ordersTbl.Gen = func(i int) []string { orders.mu.Lock(); defer orders.mu.Unlock(); return orders.rows[i] }
	ordersTbl.ChangedAt = func(i int) time.Time { orders.mu.Lock(); defer orders.mu.Unlock(); return orders.changed[i] }
	srv.Put(ordersTbl)
	srv.Put(&keboolatest.Table{Bucket: "in.c-web", Name: "events", Columns: []string{"id", "kind"}, Rows: [][]string{{"1", "click"}}})
	srv.Put(&keboolatest.Table{Bucket: "in.c-crm", Name: "nokey", Columns: []string{"id"}, Rows: [][]string{{"1"}}})
	srv.Put(&keboolatest.Table{Bucket: "in.c-crm", Name: "broken", Columns: []string{"id"}, Rows: [][]string{{"1"}},
		FailExport: "Export of in.c-crm.broken failed: the table is being restored"})
	t.Setenv(keboola.TokenEnv, kbcToken)

	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "kbc", Connector: "keboola", Config: map[string]any{"url": srv.URL + "/", "job_poll_max_seconds": 1},
		TableOptions: map[string]config.TableOptions{"orders": {Incremental: true}, "events": {QueryMode: "remote"}, "nokey": {Incremental: true}}}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	sync := func() map[string]schemas.TableResult {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "kbc", RequestedAt: time.Now().UTC()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return results(rep)
	}
	extract := filepath.Join(dir, "extracts", "kbc", "extract.duckdb")
	setCount := func(n int) {
		orders.mu.Lock()
		defer orders.mu.Unlock()
		ordersTbl.RowCount = n
	}
	setCount(4)
	res := sync()
	if r := res["broken"]; r.Status != schemas.StatusFailed || !strings.Contains(r.Error, "the table is being restored") {
		t.Errorf("broken: %+v, want failed with Keboola's message", r)
	}
	if r := res["nokey"]; r.Status != schemas.StatusFailed || !strings.Contains(r.Error, "needs a primary key") {
		t.Errorf("an incremental table without a key: %+v, want a clear error", r)
	}
	if res["orders"].Status != schemas.StatusDone || res["events"].QueryMode != schemas.ModeRemote {
		t.Errorf("orders %+v, events %+v", res["orders"], res["events"])
	}
	t.Chdir(t.TempDir())
	x, err := extractcheck.Verify(context.Background(), extract)
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if len(x.Remote) != 1 || x.Remote[0] != (extractcheck.RemoteRow{Alias: "kbc", Extension: "keboola", URL: srv.URL, TokenEnv: keboola.TokenEnv}) {
		t.Errorf("_remote_attach %+v", x.Remote)
	}
	if v := x.Views["events"]; !strings.Contains(v, `kbc."in.c-web".events`) && !strings.Contains(v, `kbc."in.c-web"."events"`) {
		t.Errorf("events view: %s", v)
	}
	for _, m := range x.Meta {
		if m.Table == "events" && (m.QueryMode != "remote" || m.Rows != 0 || m.SizeBytes != 0) {
			t.Errorf("events _meta %+v", m)
		}
		if m.Table == "orders" && (m.QueryMode != "local" || m.Rows != 4 || m.Description != "CRM orders") {
			t.Errorf("orders _meta %+v", m)
		}
	}

	// Two rows change and one is added in Keboola: the incremental export
	// asks for what changed since the previous export began, and the rows
	// are merged by id.
	now := time.Now()
	orders.set("2", "999", now)
	orders.set("5", "50", now)
	setCount(5)
	sync()
	exports := srv.Exports("in.c-crm.orders")
	if len(exports) != 2 || exports[0] != "" || exports[1] == "" {
		t.Fatalf("exports %q: the first full, the incremental one with changedSince", exports)
	}
	got := queryExtract(t, extract, "SELECT count(*), count(DISTINCT id), sum(amount), max(CASE WHEN id = 2 THEN amount END) FROM orders")
	if fmt.Sprint(got[0]) != "[5 5 1129 999]" {
		t.Errorf("orders after the incremental sync: count, distinct, sum, amount of 2 = %v, want [5 5 1129 999]", got[0])
	}
	// Nothing changed: no duplicates, same data.
	sync()
	if again := queryExtract(t, extract, "SELECT count(*), count(DISTINCT id), sum(amount) FROM orders"); fmt.Sprint(again[0]) != "[5 5 1129]" {
		t.Errorf("after an unchanged incremental sync: %v", again[0])
	}
	if srv.TokenLeaks() != 0 {
		t.Errorf("the Storage token reached the file host %d times", srv.TokenLeaks())
	}
	if _, err := extractcheck.Verify(context.Background(), extract); err != nil {
		t.Errorf("contract after incremental syncs: %v", err)
	}
}

// TestKeboolaTokenEchoedUpstreamIsScrubbed: Keboola answers an export with
// a message that repeats the Storage API token; the token reaches neither
// the logs, nor any event, nor the run's result: it is masked wherever the
// message goes.
func TestKeboolaTokenEchoedUpstreamIsScrubbed(t *testing.T) {
	srv := keboolatest.New(kbcToken)
	defer srv.Close()
	srv.JobPolls = 1
	srv.Put(&keboolatest.Table{Bucket: "in.c-crm", Name: "ok", Columns: []string{"id"}, Rows: [][]string{{"1"}}})
	srv.Put(&keboolatest.Table{Bucket: "in.c-crm", Name: "echo", Columns: []string{"id"}, Rows: [][]string{{"1"}},
		FailExport: "Export failed: token " + kbcToken + " may not read in.c-crm.echo"})
	t.Setenv(keboola.TokenEnv, kbcToken)
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "kbc", Connector: "keboola", Config: map[string]any{"url": srv.URL, "job_poll_max_seconds": 1}}}
	var logs natstest.LogBuffer
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir,
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "kbc", RequestedAt: time.Now().UTC()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := results(rep)["echo"]; r.Status != schemas.StatusFailed || strings.Contains(r.Error, kbcToken) || !strings.Contains(r.Error, "token [REDACTED] may not read") {
		t.Errorf("echo: %+v", r)
	}
	evs := natstest.WaitEvents(t, st.JS, "agnes.events.kbc.>", 10*time.Second, func(evs []schemas.Event) bool {
		return slices.ContainsFunc(evs, func(e schemas.Event) bool { return e.Type == schemas.EventExtractPublished })
	})
	for _, ev := range evs {
		b, _ := ev.Encode()
		if strings.Contains(string(b), kbcToken) {
			t.Errorf("event %s holds the token: %s", ev.Type, b)
		}
	}
	if strings.Contains(logs.String(), kbcToken) {
		t.Errorf("the log holds the token")
	}
	if !strings.Contains(logs.String(), "[REDACTED]") {
		t.Errorf("the failure was not logged at all")
	}
}
