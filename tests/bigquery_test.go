package tests

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/bigquery"
	"github.com/agnes-ai/connector-kit/connectors/bigquery/bigquerytest"
	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
)

// startBigQuery starts the stack with one source, bqsrc, on the fake srv.
func startBigQuery(t *testing.T, srv *bigquerytest.Server, opts map[string]config.TableOptions) (string, *stack.Stack) {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "bqsrc", Connector: "bigquery",
		Config:       map[string]any{"project": "agnes-data", "billing_project": "agnes-billing", "endpoint": srv.URL, "page_size": 500},
		TableOptions: opts}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })
	return dir, st
}

// TestBigQuerySync: one BigQuery source gives remote tables (views over the
// attached bq catalog), a remote view (over bigquery_query), a materialized
// table (rows in Parquet, query_mode materialized) and skipped entries with
// their reasons; the extract opens read-only from another directory without
// the extension, its views resolve once stand-ins for the extension exist,
// and no key or token is in any file.
func TestBigQuerySync(t *testing.T) {
	srv := bigquerytest.New("agnes-data")
	defer srv.Close()
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", srv.KeyFile(t))
	fields := []bigquery.Field{{Name: "id", Type: "INT64"}, {Name: "amount", Type: "NUMERIC"}, {Name: "at", Type: "TIMESTAMP"}}
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "orders", Fields: fields, RowCount: 1234, NumBytes: 4096,
		Gen: func(i int) []any { return []any{int64(i), "1.5", time.Unix(int64(1_700_000_000+i), 0)} }})
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "history", Fields: fields})
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "by_day", Type: "VIEW", Fields: []bigquery.Field{{Name: "day", Type: "DATE"}}})
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "lake", Type: "EXTERNAL", Fields: fields})
	srv.Forbid("hr")

	dir, st := startBigQuery(t, srv, map[string]config.TableOptions{"sales_orders": {QueryMode: "materialized"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "bqsrc", RequestedAt: time.Now().UTC()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 0 {
		t.Fatalf("failed tables: %+v", rep.Results)
	}
	skipped := strings.Join(rep.Skipped, "\n")
	if !strings.Contains(skipped, "dataset hr") || !strings.Contains(skipped, "sales.lake") {
		t.Errorf("skipped: %q", skipped)
	}
	extract := filepath.Join(dir, "extracts", "bqsrc", "extract.duckdb")
	t.Chdir(t.TempDir())
	x, err := extractcheck.Verify(context.Background(), extract)
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if len(x.Remote) != 1 || x.Remote[0] != (extractcheck.RemoteRow{Alias: "bq", Extension: "bigquery", URL: "project=agnes-data", TokenEnv: ""}) {
		t.Errorf("_remote_attach %+v", x.Remote)
	}
	meta := map[string]extractcheck.MetaRow{}
	for _, m := range x.Meta {
		meta[m.Table] = m
	}
	if m := meta["sales_orders"]; m.QueryMode != "materialized" || m.Rows != 1234 || m.SizeBytes <= 0 || x.Counts["sales_orders"] != 1234 {
		t.Errorf("materialized: %+v count %d", m, x.Counts["sales_orders"])
	}
	for _, n := range []string{"sales_history", "sales_by_day"} {
		if m := meta[n]; m.QueryMode != "remote" || m.Rows != 0 || m.SizeBytes != 0 {
			t.Errorf("%s: %+v", n, m)
		}
	}
	if v := x.Views["sales_by_day"]; !strings.Contains(v, "bigquery_query('agnes-billing', 'SELECT * FROM `agnes-data.sales.by_day`')") {
		t.Errorf("view over bigquery_query: %s", v)
	}
	// The orchestrator attaches bq with the extension; stand-ins with the
	// same names show the views resolve against whatever is attached.
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{
		"ATTACH '" + extract + "' AS bqsrc (READ_ONLY)", "USE bqsrc",
		"ATTACH ':memory:' AS bq", "CREATE SCHEMA bq.sales", "CREATE TABLE bq.sales.history AS SELECT 7 AS id, 1.5 AS amount, now() AS at",
		"CREATE TEMP MACRO bigquery_query(p, q) AS TABLE SELECT DATE '2024-01-02' AS day, p AS project",
	} {
		if _, err := conn.ExecContext(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var id int64
	if err := conn.QueryRowContext(context.Background(), "SELECT id FROM sales_history").Scan(&id); err != nil || id != 7 {
		t.Errorf("remote table view against the attached catalog: %d %v", id, err)
	}
	var day time.Time
	if err := conn.QueryRowContext(context.Background(), "SELECT day FROM sales_by_day").Scan(&day); err != nil || day.Format("2006-01-02") != "2024-01-02" {
		t.Errorf("bigquery_query view against the extension's function: %v %v", day, err)
	}
	// No key or token in any file.
	pemPart := srv.PrivateKeyPEM()[40:120]
	filepath.WalkDir(filepath.Join(dir, "extracts"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), pemPart) || strings.Contains(string(b), "ya29.fake-") {
			t.Errorf("%s holds key or token material", p)
		}
		return nil
	})
}

// TestBigQueryNameCollisions: BigQuery names are case-sensitive, DuckDB's
// are not. A dataset that gains Events beside events keeps publishing
// events (the published table wins the name rule) and every other table;
// Events is skipped with a reason naming events. A table with columns id
// and ID publishes id alone, with the reason, locally and remotely.
func TestBigQueryNameCollisions(t *testing.T) {
	srv := bigquerytest.New("agnes-data")
	defer srv.Close()
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", srv.KeyFile(t))
	ev := []bigquery.Field{{Name: "id", Type: "INT64"}, {Name: "kind", Type: "STRING"}}
	cased := []bigquery.Field{{Name: "id", Type: "INT64"}, {Name: "name", Type: "STRING"}, {Name: "ID", Type: "INT64"}}
	srv.Put(&bigquerytest.Table{Dataset: "analytics", ID: "events", Fields: ev})
	srv.Put(&bigquerytest.Table{Dataset: "analytics", ID: "users", Fields: cased, RowCount: 25,
		Gen: func(i int) []any { return []any{int64(i), fmt.Sprint("u", i), int64(1000 + i)} }})
	srv.Put(&bigquerytest.Table{Dataset: "analytics", ID: "accounts", Fields: cased})

	dir, st := startBigQuery(t, srv, map[string]config.TableOptions{"analytics_users": {QueryMode: "materialized"}})
	sync := func() *stack.Report {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "bqsrc", RequestedAt: time.Now().UTC()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Failed != 0 {
			t.Fatalf("failed tables: %+v", rep.Results)
		}
		return rep
	}
	sync()
	// Events sorts before events byte by byte; the published one still wins.
	srv.Put(&bigquerytest.Table{Dataset: "analytics", ID: "Events", Fields: ev})
	rep := sync()
	skipped := strings.Join(rep.Skipped, "\n")
	for _, want := range []string{
		`table "analytics_Events": its name collides with table "analytics_events"`,
		`table "analytics_users", column "ID": its name collides with column "id"`,
		`table "analytics_accounts", column "ID": its name collides with column "id"`,
	} {
		if !strings.Contains(skipped, want) {
			t.Errorf("skipped lacks %q:\n%s", want, skipped)
		}
	}
	var tables []string
	for _, r := range rep.Results {
		tables = append(tables, r.Table)
	}
	sort.Strings(tables)
	if got := strings.Join(tables, ","); got != "analytics_accounts,analytics_events,analytics_users" {
		t.Errorf("tables synced: %s", got)
	}
	t.Chdir(t.TempDir())
	x, err := extractcheck.Verify(context.Background(), filepath.Join(dir, "extracts", "bqsrc", "extract.duckdb"))
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if x.Counts["analytics_users"] != 25 {
		t.Errorf("analytics_users rows: %d", x.Counts["analytics_users"])
	}
	var metaTables []string
	for _, m := range x.Meta {
		metaTables = append(metaTables, m.Table)
	}
	if got := strings.Join(metaTables, ","); got != "analytics_accounts,analytics_events,analytics_users" {
		t.Errorf("_meta tables: %s", got)
	}
	// The materialized table holds id and name only, with the values of id.
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var cols string
	var sum int64
	q := "SELECT string_agg(name, ',') FROM parquet_schema(?) WHERE name <> 'schema'"
	if err := db.QueryRow(q, filepath.Join(dir, "extracts", "bqsrc", "data", "analytics_users.parquet")).Scan(&cols); err != nil || cols != "id,name" {
		t.Errorf("analytics_users columns %q: %v", cols, err)
	}
	if err := db.QueryRow("SELECT sum(id) FROM read_parquet(?)", filepath.Join(dir, "extracts", "bqsrc", "data", "analytics_users.parquet")).Scan(&sum); err != nil || sum != 24*25/2 {
		t.Errorf("sum(id) %d: %v", sum, err)
	}
}
