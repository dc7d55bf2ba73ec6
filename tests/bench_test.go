package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// TestBenchCommand: "da bench --json" prints every figure the interface
// names, figures that agree with each other (the ratio, the RSS sum, CPU
// for every role), and keeps the direct phase's Parquet files in --dir;
// rows that do not split over the tables are a usage error.
func TestBenchCommand(t *testing.T) {
	da, _ := binaries(t)
	dir := t.TempDir()
	cmd := exec.Command(da, "bench", "--rows", "40000", "--writers", "2", "--tables", "4", "--dir", dir, "--json", "--profile", "--gomaxprocs", "1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("da bench: %v\n%s", err, stderr.String())
	}
	var rep struct {
		Rows                 int64              `json:"rows"`
		Writers              int                `json:"writers"`
		Tables               int                `json:"tables"`
		Direct               float64            `json:"direct_rows_per_s"`
		Pipeline             float64            `json:"pipeline_rows_per_s"`
		Ratio                float64            `json:"ratio"`
		PeakRSS              int64              `json:"pipeline_peak_rss_bytes"`
		CPU                  map[string]float64 `json:"cpu_seconds"`
		RoleRSS              map[string]int64   `json:"peak_rss_bytes"`
		DuckDB               float64            `json:"duckdb_copy_rows_per_s"`
		CPUSecondsPerMillion float64            `json:"cpu_seconds_per_million_rows"`
		PipelineGOMAXPROCS   int                `json:"pipeline_gomaxprocs"`
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	if rep.Rows != 40000 || rep.Writers != 2 || rep.Tables != 4 {
		t.Errorf("rows %d, writers %d, tables %d; want 40000, 2, 4", rep.Rows, rep.Writers, rep.Tables)
	}
	if rep.Direct <= 0 || rep.Pipeline <= 0 || rep.DuckDB <= 0 {
		t.Errorf("rates direct %f, pipeline %f, duckdb %f: each must be measured", rep.Direct, rep.Pipeline, rep.DuckDB)
	}
	if want := rep.Pipeline / rep.Direct; math.Abs(rep.Ratio-want) > 1e-9*want {
		t.Errorf("ratio %f, pipeline / direct is %f", rep.Ratio, want)
	}
	var rss int64
	var cpu float64
	for _, role := range []string{"producer", "writer", "finalizer", "nats"} {
		if rep.CPU[role] <= 0 || rep.RoleRSS[role] <= 0 {
			t.Errorf("role %s: CPU %f s, peak RSS %d: not measured", role, rep.CPU[role], rep.RoleRSS[role])
		}
		rss += rep.RoleRSS[role]
		cpu += rep.CPU[role]
	}
	if rep.PeakRSS != rss {
		t.Errorf("pipeline peak RSS %d, the roles' sum is %d", rep.PeakRSS, rss)
	}
	if want := cpu / 0.04; math.Abs(rep.CPUSecondsPerMillion-want) > 1e-6*want {
		t.Errorf("CPU seconds per million rows %f, want %f", rep.CPUSecondsPerMillion, want)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "direct", "*.parquet"))
	var rows int64
	for _, f := range files {
		r, err := parquetfile.Open(f, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		rows += r.NumRows()
		r.Close()
	}
	if len(files) != 4 || rows != 40000 {
		t.Errorf("direct files %v hold %d rows; want 4 files, 40000 rows", files, rows)
	}
	if rep.PipelineGOMAXPROCS != 1 {
		t.Errorf("pipeline_gomaxprocs %d, want 1", rep.PipelineGOMAXPROCS)
	}
	// Each pipeline process left its log and a CPU profile; the finalizer
	// says how it assembled each table, and the writers' parts were joined.
	for _, name := range []string{"nats", "finalizer", "producer", "w1", "w2"} {
		prof, err := os.ReadFile(filepath.Join(dir, "pipeline", name+".cpu.pprof"))
		if err != nil || len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
			t.Errorf("%s: no gzipped CPU profile (%v)", name, err)
		}
	}
	flog, err := os.ReadFile(filepath.Join(dir, "pipeline", "finalizer.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(flog), `"how":"linked"`) + strings.Count(string(flog), `"how":"joined`); n != 4 {
		t.Errorf("%d of 4 tables linked or joined; the finalizer's log:\n%s", n, flog)
	}
	bad := exec.Command(da, "bench", "--rows", "10", "--tables", "3")
	msg, err := bad.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(msg), "does not split evenly") {
		t.Errorf("rows that do not split over the tables: %v, %s; want exit 2 naming the problem", err, msg)
	}
	msg, err = exec.Command(da, "bench", "--profile").CombinedOutput()
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(msg), "--profile needs --dir") {
		t.Errorf("--profile without --dir: %v, %s; want exit 2 naming the problem", err, msg)
	}
}
