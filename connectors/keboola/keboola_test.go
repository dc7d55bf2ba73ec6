package keboola_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/connectortest"
	"github.com/agnes-ai/connector-kit/connectors/connectortest/extracttest"
	"github.com/agnes-ai/connector-kit/connectors/keboola"
	"github.com/agnes-ai/connector-kit/connectors/keboola/keboolatest"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

const token = "kbc-storage-token-never-written"

var t0 = time.Date(2025, 9, 7, 12, 0, 0, 0, time.UTC)

func meta(provider string, kv ...string) []keboola.MetadataEntry {
	var out []keboola.MetadataEntry
	for i := 0; i < len(kv); i += 2 {
		out = append(out, keboola.MetadataEntry{Key: kv[i], Value: kv[i+1], Provider: provider})
	}
	return out
}

// ordersTable has a typed column of every kind and the values that break
// naive CSV readers.
func ordersTable() *keboolatest.Table {
	return &keboolatest.Table{Bucket: "in.c-crm", Name: "orders", PrimaryKey: []string{"id"}, Description: "Orders from the CRM",
		Columns: []string{"id", "amount", "status", "created_at", "day", "paid", "note"},
		ColumnMetadata: map[string][]keboola.MetadataEntry{
			"id": meta("storage", "KBC.datatype.basetype", "INTEGER"),
			// The cascade: user beats storage, wherever the entries are.
			"amount":     append(meta("storage", "KBC.datatype.basetype", "STRING"), meta("user", "KBC.datatype.basetype", "NUMERIC")...),
			"status":     meta("keboola.snowflake-transformation", "KBC.datatype.basetype", "STRING"),
			"created_at": meta("storage", "KBC.datatype.basetype", "TIMESTAMP", "KBC.datatype.type", "TIMESTAMP_TZ"),
			"day":        append(meta("ai-metadata-enrichment", "KBC.datatype.basetype", "DATE"), meta("storage", "KBC.datatype.basetype", "STRING")...),
			"paid":       meta("storage", "KBC.datatype.basetype", "BOOLEAN"),
		},
		Rows: [][]string{
			{"1", "10.5", "new", "2025-09-07 13:00:00+0100", "2025-09-07", "true", "plain"},
			{"2", "", "", "2025-09-07T12:00:00.123456Z", "", "", ""},
			{"3", "7", "NULL", "2025-09-07 12:00:00.5-02:00", "2025-01-31", "0", "line one\nline \"two\", with comma"},
			{"4", "0", "  padded  ", "2025-09-07 12:00:00", "2025-02-28", "1", "NULL"},
		},
		ChangedAt: func(int) time.Time { return t0 },
	}
}

func customersTable() *keboolatest.Table {
	return &keboolatest.Table{Bucket: "in.c-crm", Name: "customers", PrimaryKey: []string{"id"}, EmptyMetadataAsArray: true,
		Columns: []string{"id", "name"}, Rows: [][]string{{"1", "Ada"}, {"2", "Alan"}}}
}

func fake(t testing.TB, tables ...*keboolatest.Table) *keboolatest.Server {
	t.Helper()
	srv := keboolatest.New(token)
	t.Cleanup(srv.Close)
	for _, tb := range tables {
		srv.Put(tb)
	}
	return srv
}

func open(t testing.TB, srv *keboolatest.Server, o keboola.Options) *keboola.Connector {
	t.Helper()
	o.URL, o.Token = srv.URL+"/", token
	if o.MaxRetries == 0 {
		o.MaxRetries = 3
	}
	o.MaxRetryWait, o.MaxPoll = 2*time.Second, 20*time.Millisecond
	c, err := keboola.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readAll(t testing.TB, c *keboola.Connector, table string) (arrow.RecordBatch, error) {
	t.Helper()
	var recs []arrow.RecordBatch
	var schema *arrow.Schema
	for rec, err := range c.Read(context.Background(), table, connectors.ReadOptions{BatchSize: 2}) {
		if err != nil {
			for _, r := range recs {
				r.Release()
			}
			return nil, err
		}
		rec.Retain()
		schema = rec.Schema()
		recs = append(recs, rec)
	}
	if schema == nil {
		return nil, nil
	}
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	cols := make([]arrow.Array, schema.NumFields())
	var n int64
	for _, r := range recs {
		n += r.NumRows()
	}
	for c := range cols {
		parts := make([]arrow.Array, len(recs))
		for i, r := range recs {
			parts[i] = r.Column(c)
		}
		col, err := array.Concatenate(parts, memory.DefaultAllocator)
		if err != nil {
			return nil, err
		}
		defer col.Release()
		cols[c] = col
	}
	return array.NewRecordBatch(schema, cols, n), nil
}

func TestDiscover(t *testing.T) {
	srv := fake(t, ordersTable(), customersTable())
	tables, err := open(t, srv, keboola.Options{}).Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 2 || tables[0].Name != "customers" || tables[1].Name != "orders" {
		t.Fatalf("tables %+v", tables)
	}
	orders := tables[1]
	want := map[string]string{"id": "int64", "amount": "float64", "status": "utf8", "created_at": "timestamp[us, tz=UTC]",
		"day": "date32", "paid": "bool", "note": "utf8"}
	for _, f := range orders.Schema.Fields() {
		if f.Type.String() != want[f.Name] || !f.Nullable {
			t.Errorf("orders.%s: %s (nullable %v), want %s", f.Name, f.Type, f.Nullable, want[f.Name])
		}
	}
	if !slices.Equal(orders.PrimaryKey, []string{"id"}) || orders.Description != "Orders from the CRM" ||
		!slices.Equal(orders.RemotePath, []string{"in.c-crm", "orders"}) {
		t.Errorf("orders: key %v description %q remote %v", orders.PrimaryKey, orders.Description, orders.RemotePath)
	}
	for _, f := range tables[0].Schema.Fields() {
		if f.Type.ID() != arrow.STRING {
			t.Errorf("customers (no metadata, [] from PHP): %s is %s, want string", f.Name, f.Type)
		}
	}
	// A stack whose listing lacks the columns: the table detail gives them.
	srv.ListWithoutColumns = true
	again, err := open(t, srv, keboola.Options{}).Discover(context.Background())
	if err != nil || len(again) != 2 || !again[1].Schema.Equal(orders.Schema) || srv.Requests("/v2/storage/tables/in.c-crm.orders") == 0 {
		t.Errorf("discovery through the table detail: %v", err)
	}
	srv.ListWithoutColumns = false
	// Offsets are normalised to UTC.
	if got := fmt.Sprint(keboola.ParseTimestamp("2025-09-07 13:00:00+0100")); !strings.HasPrefix(got, "2025-09-07 12:00:00 +0000") {
		t.Errorf("offset normalised to %s", got)
	}
}

func TestReadValues(t *testing.T) {
	srv := fake(t, ordersTable())
	rec, err := readAll(t, open(t, srv, keboola.Options{}), "orders")
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Release()
	if rec.NumRows() != 4 {
		t.Fatalf("%d rows", rec.NumRows())
	}
	col := func(name string) arrow.Array { return rec.Column(rec.Schema().FieldIndices(name)[0]) }
	amount := col("amount").(*array.Float64)
	status := col("status").(*array.String)
	note := col("note").(*array.String)
	created := col("created_at").(*array.Timestamp)
	if amount.Value(0) != 10.5 || !amount.IsNull(1) || amount.Value(2) != 7 {
		t.Errorf("amount %v", amount)
	}
	if !status.IsNull(1) || status.Value(2) != "NULL" || status.Value(3) != "  padded  " {
		t.Errorf("status: \"\" must be null, NULL and padding kept: %v", status)
	}
	if note.Value(2) != "line one\nline \"two\", with comma" || note.Value(3) != "NULL" {
		t.Errorf("note %q %q", note.Value(2), note.Value(3))
	}
	for i, want := range []time.Time{t0, t0.Add(123456 * time.Microsecond), t0.Add(2*time.Hour + 500*time.Millisecond), t0} {
		if got := time.UnixMicro(int64(created.Value(i))).UTC(); !got.Equal(want) {
			t.Errorf("created_at[%d] = %s, want %s (UTC)", i, got, want)
		}
	}
	if d := col("day").(*array.Date32); !d.IsNull(1) || d.Value(2).ToTime().Format("2006-01-02") != "2025-01-31" {
		t.Errorf("day %v", d)
	}
	if p := col("paid").(*array.Boolean); !p.Value(0) || !p.IsNull(1) || p.Value(2) || !p.Value(3) {
		t.Errorf("paid %v", p)
	}
	if srv.TokenLeaks() != 0 {
		t.Errorf("the Storage token was sent to the file host %d times", srv.TokenLeaks())
	}
}

func genTable(name string, rows int) *keboolatest.Table {
	return &keboolatest.Table{Bucket: "in.c-big", Name: name, PrimaryKey: []string{"id"}, Columns: []string{"id", "v", "s"},
		ColumnMetadata: map[string][]keboola.MetadataEntry{"id": meta("storage", "KBC.datatype.basetype", "INTEGER"),
			"v": meta("storage", "KBC.datatype.basetype", "NUMERIC")},
		RowCount: rows, Gen: func(i int) []string {
			return []string{fmt.Sprint(i), fmt.Sprint(float64(i) / 4), fmt.Sprintf("row %d", i)}
		}}
}

func TestSlicesAndUnsliced(t *testing.T) {
	sliced := genTable("sliced", 2500)
	empty := genTable("empty", 0)
	whole := genTable("whole", 30)
	whole.Unsliced = true
	srv := fake(t, sliced, empty, whole)
	srv.SliceRows = 1000
	c := open(t, srv, keboola.Options{})
	for name, n := range map[string]int64{"sliced": 2500, "empty": 0, "whole": 30} {
		rec, err := readAll(t, c, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n == 0 {
			if rec != nil {
				t.Errorf("empty: %d rows", rec.NumRows())
				rec.Release()
			}
			continue
		}
		ids := rec.Column(0).(*array.Int64)
		if rec.NumRows() != n || ids.Value(0) != 0 || ids.Value(int(n)-1) != n-1 {
			t.Errorf("%s: %d rows, first %d last %d; want %d in order", name, rec.NumRows(), ids.Value(0), ids.Value(int(n)-1), n)
		}
		rec.Release()
	}
}

func TestFailuresAndRetries(t *testing.T) {
	broken := genTable("broken", 10)
	broken.FailExport = "Table export failed: warehouse is unavailable"
	srv := fake(t, genTable("ok", 10), broken)
	c := open(t, srv, keboola.Options{})
	if _, err := readAll(t, c, "broken"); err == nil || !strings.Contains(err.Error(), "warehouse is unavailable") {
		t.Errorf("failing job: %v, want Keboola's message", err)
	}
	srv.Fail("/v2/storage/buckets", http.StatusTooManyRequests, 1, "1")
	srv.Fail("/v2/storage/jobs/", http.StatusServiceUnavailable, 2, "")
	srv.Fail("/download/", http.StatusBadGateway, 1, "")
	start := time.Now()
	c = open(t, srv, keboola.Options{})
	rec, err := readAll(t, c, "ok")
	if err != nil {
		t.Fatalf("429/503/502 were not retried: %v", err)
	}
	rec.Release()
	if time.Since(start) < 900*time.Millisecond {
		t.Error("Retry-After: 1 was not honoured")
	}
	// An expired signed URL gets a fresh file detail; the rows come once.
	srv.ExpireNext(2)
	rec, err = readAll(t, c, "ok")
	if err != nil || rec.NumRows() != 10 {
		t.Fatalf("after expired URLs: %v", err)
	}
	rec.Release()
	srv.ExpireNext(100)
	if _, err := readAll(t, c, "ok"); err == nil {
		t.Error("URLs that keep expiring must fail the read")
	}
	// A wrong token is a 401 that says where the token comes from.
	bad, _ := keboola.New(keboola.Options{URL: srv.URL, Token: "wrong"})
	_, err = bad.Discover(context.Background())
	var apiErr *keboola.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 401 || !strings.Contains(err.Error(), keboola.TokenEnv) || strings.Contains(err.Error(), "wrong") {
		t.Errorf("wrong token: %v", err)
	}
	if srv.TokenLeaks() != 0 {
		t.Errorf("the Storage token was sent to the file host %d times", srv.TokenLeaks())
	}
}

func TestNames(t *testing.T) {
	crm := ordersTable()
	erp := ordersTable()
	erp.Bucket = "in.c-erp"
	unsafe := genTable("my-table", 1)
	srv := fake(t, crm, erp, unsafe)
	_, err := open(t, srv, keboola.Options{}).Discover(context.Background())
	for _, want := range []string{"in.c-crm.orders and in.c-erp.orders", `"orders"`, "config.table_names", "in.c-big.my-table"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("collision and unsafe name: %v lacks %q", err, want)
		}
	}
	tables, err := open(t, srv, keboola.Options{Names: map[string]string{"in.c-erp.orders": "erp_orders", "in.c-big.my-table": "my_table"}}).Discover(context.Background())
	if err != nil || len(tables) != 3 {
		t.Fatalf("with table_names: %v %d tables", err, len(tables))
	}
	only, err := open(t, srv, keboola.Options{Buckets: []string{"in.c-erp"}}).Discover(context.Background())
	if err != nil || len(only) != 1 || only[0].RemotePath[0] != "in.c-erp" {
		t.Errorf("buckets filter: %v %+v", err, only)
	}
	if _, err := open(t, srv, keboola.Options{Buckets: []string{"in.c-nope"}}).Discover(context.Background()); err == nil || !strings.Contains(err.Error(), "in.c-nope") {
		t.Errorf("unknown bucket: %v", err)
	}
}

// peakAllocator tracks the most bytes held at once.
type peakAllocator struct {
	memory.Allocator
	cur, peak int
}

func (p *peakAllocator) Allocate(n int) []byte {
	p.cur += n
	p.peak = max(p.peak, p.cur)
	return p.Allocator.Allocate(n)
}
func (p *peakAllocator) Reallocate(n int, b []byte) []byte {
	p.cur += n - len(b)
	p.peak = max(p.peak, p.cur)
	return p.Allocator.Reallocate(n, b)
}
func (p *peakAllocator) Free(b []byte) { p.cur -= len(b); p.Allocator.Free(b) }

// TestBoundedMemory: a table far larger than one batch is streamed: the
// Arrow memory held at once stays near one batch, whatever the table size.
func TestBoundedMemory(t *testing.T) {
	srv := fake(t, genTable("big", 200_000))
	srv.SliceRows = 50_000
	mem := &peakAllocator{Allocator: memory.NewGoAllocator()}
	c := open(t, srv, keboola.Options{Mem: mem})
	var rows int64
	for rec, err := range c.Read(context.Background(), "big", connectors.ReadOptions{BatchSize: 5000}) {
		if err != nil {
			t.Fatal(err)
		}
		rows += rec.NumRows()
	}
	if rows != 200_000 {
		t.Fatalf("%d rows", rows)
	}
	if mem.peak > 4<<20 || mem.cur != 0 {
		t.Errorf("peak Arrow memory %d bytes (%d still held) for a %d-row table read in 5,000-row batches", mem.peak, mem.cur, rows)
	}
}

func TestHealthCheck(t *testing.T) {
	srv := fake(t)
	t.Setenv(keboola.TokenEnv, token)
	r := connectors.NewRegistry()
	keboola.Register(r)
	cfg := map[string]any{"url": srv.URL + "/"}
	c, _, err := r.Open("keboola", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Health(context.Background(), "keboola", cfg, c); err != nil {
		t.Errorf("healthy: %v", err)
	}
	if srv.Requests("/v2/storage/tokens/verify") != 1 {
		t.Error("the check did not verify the token")
	}
	t.Setenv(keboola.TokenEnv, "rotated")
	if err := r.Health(context.Background(), "keboola", cfg, c); !errors.Is(err, connectors.ErrUnhealthy) || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "rotated") {
		t.Errorf("wrong token: %v", err)
	}
}

func TestContract(t *testing.T) {
	web := genTable("events", 40)
	web.Bucket = "in.c-web"
	srv := fake(t, ordersTable(), customersTable(), web)
	t.Setenv(keboola.TokenEnv, token)
	r := connectors.NewRegistry()
	keboola.Register(r)
	reg, err := r.Lookup("keboola")
	if err != nil {
		t.Fatal(err)
	}
	extracttest.Run(t, connectortest.Suite{
		Registration: reg,
		Config:       map[string]any{"url": srv.URL, "job_poll_max_seconds": 1},
		Secrets:      []string{token},
		TableOptions: map[string]config.TableOptions{"orders": {Incremental: true}, "events": {QueryMode: "remote"}},
	})
}

// TestIncrementalUsesKeboolaClock: the cursor is the export job's creation
// time by Keboola's clock, so a local clock an hour ahead of Keboola's
// loses no change.
func TestIncrementalUsesKeboolaClock(t *testing.T) {
	changed := []time.Time{t0, t0, t0}
	tbl := genTable("skewed", 3)
	tbl.ChangedAt = func(i int) time.Time { return changed[i] }
	srv := fake(t, tbl)
	srv.ClockSkew = -time.Hour
	c := open(t, srv, keboola.Options{})
	read := func(cursor string) ([]int64, string) {
		batches, next := c.ReadChanged(context.Background(), "skewed", cursor, connectors.ReadOptions{})
		var ids []int64
		for rec, err := range batches {
			if err != nil {
				t.Fatal(err)
			}
			for i := range int(rec.NumRows()) {
				ids = append(ids, rec.Column(0).(*array.Int64).Value(i))
			}
		}
		return ids, next()
	}
	ids, cursor := read("")
	if len(ids) != 3 {
		t.Fatalf("full export: %v", ids)
	}
	if at, err := time.Parse(time.RFC3339, cursor); err != nil || at.After(time.Now().Add(-30*time.Minute)) {
		t.Fatalf("cursor %q is not Keboola's (an hour behind): %v", cursor, err)
	}
	changed[1] = srv.Now().Add(time.Second) // changed in Keboola after the export
	ids, _ = read(cursor)
	if !slices.Equal(ids, []int64{1}) {
		t.Errorf("incremental export read %v, want the changed row 1 only", ids)
	}
	if ex := srv.Exports("in.c-big.skewed"); len(ex) != 2 || ex[1] != cursor {
		t.Errorf("exports %q, want changedSince = the previous job's creation time %s", ex, cursor)
	}
}
