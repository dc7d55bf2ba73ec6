package demo

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

func readAll(tb testing.TB, c *Connector, table string, batch int) []arrow.RecordBatch {
	tb.Helper()
	var out []arrow.RecordBatch
	for rec, err := range c.Read(context.Background(), table, connectors.ReadOptions{BatchSize: batch}) {
		if err != nil {
			tb.Fatal(err)
		}
		rec.Retain()
		out = append(out, rec)
	}
	return out
}

func release(recs []arrow.RecordBatch) {
	for _, r := range recs {
		r.Release()
	}
}

func TestDiscoverAndRead(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	c := New(Options{Rows: 2500, CustomerRows: 300, Seed: 7, Mem: mem})
	tables, err := c.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 2 {
		t.Fatalf("%d tables", len(tables))
	}
	want := map[string]int64{"orders": 2500, "customers": 300}
	for _, ti := range tables {
		recs := readAll(t, c, ti.Name, 1000)
		var rows int64
		for i, r := range recs {
			if !r.Schema().Equal(ti.Schema) {
				t.Errorf("%s batch %d schema differs from the declared one", ti.Name, i)
			}
			if r.NumRows() > 1000 {
				t.Errorf("%s batch %d has %d rows, batch size is 1000", ti.Name, i, r.NumRows())
			}
			rows += r.NumRows()
		}
		if rows != want[ti.Name] {
			t.Errorf("%s: %d rows, want %d", ti.Name, rows, want[ti.Name])
		}
		release(recs)
	}
}

func TestDeterministic(t *testing.T) {
	a := New(Options{Rows: 3000, CustomerRows: 10, Seed: 42})
	b := New(Options{Rows: 3000, CustomerRows: 10, Seed: 42})
	ra, rb := readAll(t, a, "orders", 3000), readAll(t, b, "orders", 1000)
	defer release(ra)
	defer release(rb)
	ta, tb := array.NewTableFromRecords(OrdersSchema, ra), array.NewTableFromRecords(OrdersSchema, rb)
	defer ta.Release()
	defer tb.Release()
	if !array.TableEqual(ta, tb) {
		t.Error("the same seed gave different data, or batch size changed values")
	}
	c := New(Options{Rows: 3000, CustomerRows: 10, Seed: 43})
	rc := readAll(t, c, "orders", 3000)
	defer release(rc)
	if array.RecordEqual(ra[0], rc[0]) {
		t.Error("a different seed gave the same data")
	}
}

func TestTypesAndNulls(t *testing.T) {
	c := New(Options{Rows: 100, CustomerRows: 100, Seed: 1})
	recs := readAll(t, c, "orders", 100)
	defer release(recs)
	r := recs[0]
	wantTypes := map[string]arrow.Type{"id": arrow.INT64, "quantity": arrow.INT32, "amount": arrow.FLOAT64, "price": arrow.DECIMAL128,
		"status": arrow.STRING, "is_paid": arrow.BOOL, "order_date": arrow.DATE32, "created_at": arrow.TIMESTAMP}
	for name, ty := range wantTypes {
		idx := r.Schema().FieldIndices(name)
		if len(idx) != 1 || r.Column(idx[0]).DataType().ID() != ty {
			t.Errorf("column %s missing or not %s", name, ty)
		}
	}
	ts := r.Schema().Field(r.Schema().FieldIndices("created_at")[0]).Type.(*arrow.TimestampType)
	if ts.Unit != arrow.Microsecond || ts.TimeZone != "UTC" {
		t.Errorf("created_at is %s, want timestamp[us, UTC]", ts)
	}
	if r.Column(r.Schema().FieldIndices("note")[0]).NullN() == 0 || r.Column(r.Schema().FieldIndices("amount")[0]).NullN() == 0 {
		t.Error("nullable columns hold no nulls")
	}
}

func TestErrUnknownTable(t *testing.T) {
	c := New(Options{Rows: 1})
	for _, err := range c.Read(context.Background(), "nope", connectors.ReadOptions{}) {
		if !errors.Is(err, connectors.ErrUnknownTable) {
			t.Errorf("got %v, want ErrUnknownTable", err)
		}
		return
	}
	t.Error("reading an unknown table yielded nothing")
}

func TestRegisterValidatesConfig(t *testing.T) {
	r := connectors.NewRegistry()
	Register(r)
	if _, _, err := r.Open("demo", map[string]any{"rows": "many"}); !errors.Is(err, connectors.ErrInvalidConfig) {
		t.Errorf("got %v, want ErrInvalidConfig", err)
	}
	conn, m, err := r.Open("demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "demo" || conn.Capabilities() != connectors.Discover|connectors.Read {
		t.Errorf("manifest %s caps %v", m.Name, conn.Capabilities())
	}
	if conn.(*Connector).opts.Rows != 100000 || conn.(*Connector).opts.BatchSize != 10000 {
		t.Errorf("defaults not applied: %+v", conn.(*Connector).opts)
	}
}

func TestStopEarlyReleases(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	c := New(Options{Rows: 10_000, Mem: mem})
	n := 0
	for _, err := range c.Read(context.Background(), "orders", connectors.ReadOptions{BatchSize: 100}) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}
}

func TestIncrementalOnID(t *testing.T) {
	c := New(Options{Rows: 100})
	var ids []int64
	for rec, err := range c.Read(context.Background(), "orders", connectors.ReadOptions{IncrementalKey: "id", IncrementalValue: "95"}) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec.Column(0).(*array.Int64).Int64Values()...)
	}
	if len(ids) != 6 || ids[0] != 95 || ids[5] != 100 {
		t.Errorf("ids %v, want 95..100 (inclusive)", ids)
	}
	for _, err := range c.Read(context.Background(), "orders", connectors.ReadOptions{IncrementalKey: "id", IncrementalValue: "x"}) {
		if err == nil {
			t.Error("a non-integer cursor was accepted")
		}
		break
	}
}

// TestOrderTables: order_tables adds tables shaped and sized like orders
// with their own values; names past the count, or spelled otherwise, are
// unknown.
func TestOrderTables(t *testing.T) {
	c := New(Options{Rows: 500, CustomerRows: 10, Seed: 42, OrderTables: 3})
	tables, err := c.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ti := range tables {
		names = append(names, ti.Name)
	}
	if got := strings.Join(names, ","); got != "orders,customers,orders_2,orders_3" {
		t.Fatalf("tables %s", got)
	}
	first := readAll(t, c, "orders", 500)
	defer release(first)
	for _, name := range []string{"orders_2", "orders_3"} {
		recs := readAll(t, c, name, 500)
		if len(recs) != 1 || recs[0].NumRows() != 500 {
			t.Fatalf("%s: %d batches", name, len(recs))
		}
		if array.RecordEqual(recs[0], first[0]) {
			t.Errorf("%s holds the same values as orders", name)
		}
		release(recs)
	}
	for _, bad := range []string{"orders_4", "orders_1", "orders_02", "orders_x"} {
		for _, err := range c.Read(context.Background(), bad, connectors.ReadOptions{}) {
			if !errors.Is(err, connectors.ErrUnknownTable) {
				t.Errorf("%s: %v, want ErrUnknownTable", bad, err)
			}
			break
		}
	}
}
