package tests

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
)

const benchRows = 1_000_000

// BenchmarkSyncDemo measures a 1M-row demo sync end to end: embedded bus,
// producer, two writers, finalizer, extract published.
func BenchmarkSyncDemo(b *testing.B) {
	dir := b.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources[0].Config = map[string]any{"rows": benchRows}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir,
		Writers: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Stop()
	b.ResetTimer()
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "demo", Tables: []string{"orders"}}, nil)
		cancel()
		if err != nil || rep.Rows != benchRows {
			b.Fatalf("sync: %v (%+v)", err, rep)
		}
	}
	b.ReportMetric(float64(benchRows)/(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e9), "rows/s")
}

// BenchmarkDirectParquet writes the same rows straight from Arrow to one
// Parquet file with the same settings, without the bus.
func BenchmarkDirectParquet(b *testing.B) {
	dir := b.TempDir()
	conn := demo.New(demo.Options{Rows: benchRows, CustomerRows: 10000, Seed: 42})
	b.ResetTimer()
	for range b.N {
		if _, err := parquetfile.WriteAll(filepath.Join(dir, "orders.parquet"), demo.OrdersSchema,
			conn.Read(context.Background(), "orders", connectors.ReadOptions{})); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchRows)/(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e9), "rows/s")
}
