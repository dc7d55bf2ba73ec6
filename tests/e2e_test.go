package tests

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/internal/cli"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

const (
	e2eOrders    = 200_000
	e2eCustomers = 25_000
)

// writeConfig writes a config with one demo source and returns its path.
func writeConfig(tb testing.TB, dir string, orders, customers int) string {
	tb.Helper()
	p := filepath.Join(dir, "agnes.yaml")
	cfg := fmt.Sprintf(`sources:
  - name: demo
    connector: demo
    config:
      rows: %d
      customer_rows: %d
      batch_size: 7000
`, orders, customers)
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

// mustSync runs "da sync demo" through the real entry point.
func mustSync(tb testing.TB, cfgPath, dataDir string, extra ...string) string {
	tb.Helper()
	var out, errb bytes.Buffer
	args := append([]string{"sync", "demo", "--config", cfgPath, "--data-dir", dataDir, "--embedded", "--writers", "2"}, extra...)
	if code := cli.Run(context.Background(), args, &out, &errb); code != 0 {
		tb.Fatalf("da sync exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	return out.String()
}

func TestSyncDemoEndToEnd(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	cfg := writeConfig(t, root, e2eOrders, e2eCustomers)
	started := time.Now().UTC().Add(-time.Second)
	out := mustSync(t, cfg, dataDir)
	for _, want := range []string{"Synced demo", "orders", "customers", "225,000 rows", "0 failed", "extract.duckdb"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	extract := filepath.Join(dataDir, "extracts", "demo", "extract.duckdb")

	// Open from another working directory: the views' paths must be absolute.
	t.Chdir(t.TempDir())
	x, err := extractcheck.Verify(context.Background(), extract)
	if err != nil {
		t.Fatalf("extract breaks the contract: %v", err)
	}
	t.Run("Meta", func(t *testing.T) {
		want := map[string]int64{"orders": e2eOrders, "customers": e2eCustomers}
		if len(x.Meta) != len(want) {
			t.Fatalf("_meta has %d rows, want %d: %+v", len(x.Meta), len(want), x.Meta)
		}
		for _, m := range x.Meta {
			if m.Rows != want[m.Table] || x.Counts[m.Table] != want[m.Table] {
				t.Errorf("%s: _meta rows %d, view count %d, want %d", m.Table, m.Rows, x.Counts[m.Table], want[m.Table])
			}
			if m.QueryMode != "local" {
				t.Errorf("%s: query_mode %q, want local", m.Table, m.QueryMode)
			}
			if m.ExtractedAt.Before(started) || m.ExtractedAt.After(time.Now().UTC().Add(time.Second)) {
				t.Errorf("%s: extracted_at %s is not the UTC time of this run (started %s)", m.Table, m.ExtractedAt, started)
			}
			if m.Description == "" || m.SizeBytes <= 0 {
				t.Errorf("%s: description %q size %d", m.Table, m.Description, m.SizeBytes)
			}
			// The view reads the table's published version, an immutable
			// file of its own; data/<table>.parquet links the same file.
			versions := filepath.Join(dataDir, "extracts", "demo", "data", ".versions", m.Table)
			got := regexp.MustCompile(`'(/[^']+)'`).FindStringSubmatch(x.Views[m.Table])
			if got == nil || filepath.Dir(got[1]) != versions {
				t.Errorf("view %s does not read an absolute path in %s: %s", m.Table, versions, x.Views[m.Table])
				continue
			}
			v, err1 := os.Stat(got[1])
			l, err2 := os.Stat(filepath.Join(dataDir, "extracts", "demo", "data", m.Table+".parquet"))
			if err1 != nil || err2 != nil || !os.SameFile(v, l) {
				t.Errorf("data/%s.parquet is not the version the view reads (%v, %v)", m.Table, err1, err2)
			}
		}
		if len(x.Remote) != 0 {
			t.Errorf("demo has no remote tables, _remote_attach has %v", x.Remote)
		}
	})
	t.Run("NoLeftovers", func(t *testing.T) {
		entries, _ := os.ReadDir(filepath.Join(dataDir, "extracts", "demo", ".staging"))
		if len(entries) != 0 {
			t.Errorf("staging not cleaned: %v", entries)
		}
		files, _ := os.ReadDir(filepath.Join(dataDir, "extracts", "demo", "data"))
		var names []string
		for _, f := range files {
			names = append(names, f.Name())
		}
		if strings.Join(names, ",") != ".versions,customers.parquet,orders.parquet" {
			t.Errorf("data/ holds %v, want exactly .versions, customers.parquet and orders.parquet", names)
		}
	})
	t.Run("ArrowRoundTrip", func(t *testing.T) {
		gen := demo.New(demo.Options{Rows: e2eOrders, CustomerRows: e2eCustomers, Seed: 42})
		for _, tc := range []struct {
			table  string
			schema *arrow.Schema
		}{{"orders", demo.OrdersSchema}, {"customers", demo.CustomersSchema}} {
			got := readParquet(t, filepath.Join(dataDir, "extracts", "demo", "data", tc.table+".parquet"))
			want := readAll(t, gen, tc.table)
			if got.NumCols() != int64(tc.schema.NumFields()) || got.NumRows() != want.NumRows() {
				t.Fatalf("%s: %d columns, %d rows; want %d, %d", tc.table, got.NumCols(), got.NumRows(), tc.schema.NumFields(), want.NumRows())
			}
			for i, f := range tc.schema.Fields() {
				g := got.Schema().Field(i)
				// Parquet adds field-id metadata; names, types and nullability must be exact.
				if g.Name != f.Name || g.Nullable != f.Nullable || !arrow.TypeEqual(g.Type, f.Type) {
					t.Errorf("%s: column %d is %s %s (nullable %v), want %s %s (nullable %v)", tc.table, i, g.Name, g.Type, g.Nullable, f.Name, f.Type, f.Nullable)
					continue
				}
				if !array.ChunkedEqual(got.Column(i).Data(), want.Column(i).Data()) {
					t.Errorf("%s.%s: values differ from the source's", tc.table, f.Name)
				}
			}
			got.Release()
			want.Release()
		}
	})
	t.Run("DuckDBTypesAndValues", func(t *testing.T) {
		db := openRO(t, extract)
		types := map[string]string{}
		rows, err := db.Query(`SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'orders'`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var c, ty string
			rows.Scan(&c, &ty)
			types[c] = ty
		}
		rows.Close()
		want := map[string]string{"id": "BIGINT", "quantity": "INTEGER", "amount": "DOUBLE", "price": "DECIMAL(18,2)",
			"status": "VARCHAR", "is_paid": "BOOLEAN", "order_date": "DATE", "created_at": "TIMESTAMP WITH TIME ZONE"}
		for c, ty := range want {
			if types[c] != ty {
				t.Errorf("orders.%s is %s in DuckDB, want %s", c, types[c], ty)
			}
		}
		var ids, nullNotes, nullAmounts int64
		if err := db.QueryRow(`SELECT sum(id), count(*) FILTER (note IS NULL), count(*) FILTER (amount IS NULL) FROM orders`).Scan(&ids, &nullNotes, &nullAmounts); err != nil {
			t.Fatal(err)
		}
		if wantIDs := int64(e2eOrders) * (e2eOrders + 1) / 2; ids != wantIDs {
			t.Errorf("sum(id) = %d, want %d", ids, wantIDs)
		}
		// Rows i%7==3 have NULL notes and i%11==5 NULL amounts.
		if want := countMod(e2eOrders, 7, 3); nullNotes != want {
			t.Errorf("NULL notes = %d, want %d", nullNotes, want)
		}
		if want := countMod(e2eOrders, 11, 5); nullAmounts != want {
			t.Errorf("NULL amounts = %d, want %d", nullAmounts, want)
		}
	})
}

func countMod(n, m, r int64) int64 {
	var c int64
	for i := int64(0); i < n; i++ {
		if i%m == r {
			c++
		}
	}
	return c
}

// TestResyncWhileQuerying re-syncs while a reader keeps opening the extract
// read-only and counting every table: the reader never gets an error or a
// table whose count disagrees with a complete sync.
func TestResyncWhileQuerying(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	cfg := writeConfig(t, root, 60_000, 5_000)
	mustSync(t, cfg, dataDir)
	extract := filepath.Join(dataDir, "extracts", "demo", "extract.duckdb")
	want := map[string]int64{"orders": 60_000, "customers": 5_000}

	var stop atomic.Bool
	var reads atomic.Int64
	var mu sync.Mutex
	var failures []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			if err := readOnce(extract, want); err != nil {
				mu.Lock()
				failures = append(failures, err.Error())
				mu.Unlock()
			}
			reads.Add(1)
		}
	}()
	for range 3 {
		mustSync(t, cfg, dataDir)
	}
	// Make sure the reader overlapped at least a few full open-and-count cycles.
	deadline := time.Now().Add(30 * time.Second)
	for reads.Load() < 5 && time.Now().Before(deadline) {
		mustSync(t, cfg, dataDir)
	}
	stop.Store(true)
	<-done
	if len(failures) > 0 {
		t.Fatalf("reader saw %d failures in %d reads; first: %s", len(failures), reads.Load(), failures[0])
	}
	if reads.Load() < 5 {
		t.Fatalf("reader completed only %d reads", reads.Load())
	}
	t.Logf("reader completed %d reads during re-syncs without an error", reads.Load())
}

func readOnce(path string, want map[string]int64) error {
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.Query(`SELECT table_name, rows FROM _meta`)
	if err != nil {
		return fmt.Errorf("read _meta: %w", err)
	}
	meta := map[string]int64{}
	for rows.Next() {
		var n string
		var r int64
		rows.Scan(&n, &r)
		meta[n] = r
	}
	rows.Close()
	for table, w := range want {
		if meta[table] != w {
			return fmt.Errorf("_meta rows of %s = %d, want %d", table, meta[table], w)
		}
		var n int64
		if err := db.QueryRow(`SELECT count(*) FROM "` + table + `"`).Scan(&n); err != nil {
			return fmt.Errorf("count %s: %w", table, err)
		}
		if n != w {
			return fmt.Errorf("%s has %d rows, want %d", table, n, w)
		}
	}
	return nil
}

func openRO(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func readParquet(tb testing.TB, path string) arrow.Table {
	tb.Helper()
	f, err := file.OpenParquetFile(path, false)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	fr, err := pqarrow.NewFileReader(f, pqarrow.ArrowReadProperties{BatchSize: 64 << 10}, memory.DefaultAllocator)
	if err != nil {
		tb.Fatal(err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return tbl
}

func readAll(tb testing.TB, c *demo.Connector, table string) arrow.Table {
	tb.Helper()
	var recs []arrow.RecordBatch
	var schema *arrow.Schema
	for rec, err := range c.Read(context.Background(), table, connectors.ReadOptions{BatchSize: 50_000}) {
		if err != nil {
			tb.Fatal(err)
		}
		rec.Retain()
		recs = append(recs, rec)
		schema = rec.Schema()
	}
	tbl := array.NewTableFromRecords(schema, recs)
	for _, r := range recs {
		r.Release()
	}
	return tbl
}
