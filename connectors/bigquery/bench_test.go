package bigquery_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/bigquery"
	"github.com/agnes-ai/connector-kit/connectors/bigquery/bigquerytest"
)

// BenchmarkDiscover: 1,000 tables across 20 datasets, lists paged 50 at a
// time, every table fetched for its schema.
//
//	go test ./connectors/bigquery -run '^$' -bench BenchmarkDiscover -benchtime 3x
func BenchmarkDiscover(b *testing.B) {
	srv := fakeBQ(b)
	srv.PageCap = 50
	for d := range 20 {
		for t := range 50 {
			srv.Put(&bigquerytest.Table{Dataset: fmt.Sprintf("ds%02d", d), ID: fmt.Sprintf("t%03d", t),
				Fields: []bigquery.Field{{Name: "id", Type: "INT64"}, {Name: "name", Type: "STRING"}, {Name: "at", Type: "TIMESTAMP"}}})
		}
	}
	c := open(b, srv, bigquery.Options{})
	b.ResetTimer()
	for range b.N {
		tables, err := c.Discover(context.Background())
		if err != nil || len(tables) != 1000 {
			b.Fatalf("%d tables, %v", len(tables), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/discovery")
}

// BenchmarkMaterialize reads BQ_BENCH_ROWS rows (default 1 M) of a
// five-column table through jobs.query and getQueryResults pages of 10,000
// rows. The fake renders its JSON in the same process, so the figure is a
// floor.
//
//	go test ./connectors/bigquery -run '^$' -bench BenchmarkMaterialize -benchtime 1x
func BenchmarkMaterialize(b *testing.B) {
	rows := 1_000_000
	if n, err := strconv.Atoi(os.Getenv("BQ_BENCH_ROWS")); err == nil && n > 0 {
		rows = n
	}
	srv := fakeBQ(b)
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "big", RowCount: rows, NumBytes: 1 << 20,
		Fields: []bigquery.Field{{Name: "id", Type: "INT64"}, {Name: "amount", Type: "NUMERIC"}, {Name: "name", Type: "STRING"},
			{Name: "at", Type: "TIMESTAMP"}, {Name: "ok", Type: "BOOL"}},
		Gen: func(i int) []any {
			return []any{int64(i), "12.5", "row", t0.Add(time.Duration(i) * time.Second), i%2 == 0}
		}})
	c := open(b, srv, bigquery.Options{PageSize: 10_000})
	if _, err := c.Discover(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var rate float64
	for range b.N {
		start := time.Now()
		var n int64
		for rec, err := range c.Read(context.Background(), "sales_big", connectors.ReadOptions{BatchSize: 10_000}) {
			if err != nil {
				b.Fatal(err)
			}
			n += rec.NumRows()
		}
		if n != int64(rows) {
			b.Fatalf("%d rows", n)
		}
		rate = float64(rows) / time.Since(start).Seconds()
	}
	b.ReportMetric(rate, "rows/s")
}
