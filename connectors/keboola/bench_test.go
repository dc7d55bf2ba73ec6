package keboola_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/keboola"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var benchRows = func() int {
	if n, err := strconv.Atoi(os.Getenv("KEBOOLA_BENCH_ROWS")); err == nil && n > 0 {
		return n
	}
	return 1_000_000
}()

func benchTable() (*arrow.Schema, func(int) []string) {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "v", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	return schema, func(i int) []string {
		return []string{fmt.Sprint(i), fmt.Sprint(float64(i) / 4), fmt.Sprintf("row %d", i)}
	}
}

// peakRSS is the process's peak resident set (VmHWM) in MiB.
func peakRSS() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkExport reads a sliced, gzipped export of benchRows rows
// (KEBOOLA_BENCH_ROWS, default 1 M) from the fake Storage API through the
// connector (job, file detail, manifest, slices, CSV to Arrow), and parses
// the same gzip CSV in memory with the same decoder: the ratio of the two
// is the cost of the API, the HTTP transfer and the slicing.
//
//	KEBOOLA_BENCH_ROWS=5000000 go test ./connectors/keboola -run '^$' -bench BenchmarkExport -benchtime 1x
func BenchmarkExport(b *testing.B) {
	schema, gen := benchTable()
	tbl := genTable("bench", benchRows)
	srv := fake(b, tbl)
	srv.SliceRows = 250_000
	srv.CacheSlices = true
	srv.JobPolls = 0
	mem := &peakAllocator{Allocator: memory.NewGoAllocator()}
	c := open(b, srv, keboola.Options{Mem: mem})
	read := func() int64 {
		var n int64
		for rec, err := range c.Read(context.Background(), "bench", connectors.ReadOptions{BatchSize: 10_000}) {
			if err != nil {
				b.Fatal(err)
			}
			n += rec.NumRows()
		}
		return n
	}
	read() // warm the fake's slice cache: its gzip is not what is measured

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	for i := range benchRows {
		r := gen(i)
		fmt.Fprintf(zw, "%q,%q,%q\n", r[0], r[1], r[2])
	}
	zw.Close()

	b.ResetTimer()
	var connRate, parseRate float64
	for range b.N {
		start := time.Now()
		if n := read(); n != int64(benchRows) {
			b.Fatalf("%d rows", n)
		}
		connRate = float64(benchRows) / time.Since(start).Seconds()
		start = time.Now()
		n, err := keboola.DecodeCSV(bytes.NewReader(gz.Bytes()), schema, false, 10_000, memory.NewGoAllocator(), func(r arrow.RecordBatch) bool {
			r.Release()
			return true
		})
		if err != nil || n != int64(benchRows) {
			b.Fatalf("parse: %d rows, %v", n, err)
		}
		parseRate = float64(benchRows) / time.Since(start).Seconds()
	}
	b.ReportMetric(connRate, "export_rows/s")
	b.ReportMetric(parseRate, "parse_rows/s")
	b.ReportMetric(connRate/parseRate, "ratio")
	b.ReportMetric(float64(mem.peak)/(1<<20), "peak_arrow_MiB")
	b.ReportMetric(peakRSS(), "peak_rss_MiB")
}
