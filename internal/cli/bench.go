package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/finalizer/duck"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
)

// benchReport is what "da bench --json" prints: one run of each phase on
// this machine.
type benchReport struct {
	Rows       int64 `json:"rows"`
	Writers    int   `json:"writers"`
	Tables     int   `json:"tables"`
	GOMAXPROCS int   `json:"gomaxprocs"`
	// PipelineGOMAXPROCS is each pipeline process's (--gomaxprocs).
	PipelineGOMAXPROCS int `json:"pipeline_gomaxprocs"`
	// DirectRowsPerS: the demo rows written straight from Arrow to one
	// Parquet file per table, in one goroutine.
	DirectRowsPerS float64 `json:"direct_rows_per_s"`
	DirectSeconds  float64 `json:"direct_seconds"`
	// PipelineRowsPerS: the same rows through a sync with every role in
	// its own process (NATS, producer, each writer, finalizer), from the
	// request to the extract's publication.
	PipelineRowsPerS float64 `json:"pipeline_rows_per_s"`
	PipelineSeconds  float64 `json:"pipeline_seconds"`
	Ratio            float64 `json:"ratio"`
	// DuckDBCopyRowsPerS: DuckDB's COPY … TO (FORMAT parquet, COMPRESSION
	// zstd) of the same rows, already in a DuckDB table.
	DuckDBCopyRowsPerS float64 `json:"duckdb_copy_rows_per_s"`
	// PipelinePeakRSSBytes is the sum of each pipeline process's peak RSS:
	// an upper bound of what the pipeline held at once.
	PipelinePeakRSSBytes int64 `json:"pipeline_peak_rss_bytes"`
	DirectPeakRSSBytes   int64 `json:"direct_peak_rss_bytes"`
	// CPUSeconds and PeakRSSBytes per role: producer, writer (all writer
	// processes), finalizer, nats. CPU counts user and system time of the
	// whole process life, start and stop included.
	CPUSeconds               map[string]float64 `json:"cpu_seconds"`
	PeakRSSBytes             map[string]int64   `json:"peak_rss_bytes"`
	CPUSecondsPerMillionRows float64            `json:"cpu_seconds_per_million_rows"`
	// WriterPeakRSSBytes is the largest writer process's peak RSS.
	WriterPeakRSSBytes int64 `json:"writer_peak_rss_bytes"`
	ParquetBytes       struct {
		Direct   int64 `json:"direct"`
		Pipeline int64 `json:"pipeline"`
		DuckDB   int64 `json:"duckdb"`
	} `json:"parquet_bytes"`
}

// phaseResult is what a phase's child process prints.
type phaseResult struct {
	Rows    int64   `json:"rows"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
}

func (r phaseResult) rowsPerSec() float64 { return float64(r.Rows) / r.Seconds }

// benchOptions are the flags of da bench.
type benchOptions struct {
	rows          int64
	writers       int
	tables        int
	dir           string
	asJSON        bool
	keepDir       bool
	profile       bool
	gomaxprocs    int
	pipelineFlags []string
}

// runBench measures, on this machine in one run: the demo rows written
// straight from Arrow to Parquet, the same rows through a sync with every
// role in its own process, and DuckDB's own COPY of them. Each phase runs
// in its own child process so each peak RSS and CPU time is its own.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o benchOptions
	fs.Int64Var(&o.rows, "rows", 1_000_000, "rows in all, spread evenly over the tables")
	fs.IntVar(&o.writers, "writers", 2, "writer processes in the pipeline phase")
	fs.IntVar(&o.tables, "tables", 1, "tables shaped like the demo orders table (orders, orders_2, …)")
	fs.StringVar(&o.dir, "dir", "", "working directory, kept afterwards (the direct Parquet files in <dir>/direct/); default: a temporary one, removed")
	fs.BoolVar(&o.asJSON, "json", false, "print one JSON object instead of a table")
	fs.IntVar(&o.gomaxprocs, "gomaxprocs", 0, "GOMAXPROCS of each pipeline process (default: the Go runtime's, all cores)")
	fs.BoolVar(&o.profile, "profile", false, "keep a CPU profile of each pipeline process in <dir>/pipeline/<name>.cpu.pprof (needs --dir)")
	phase := fs.String("phase", "", "internal: run one phase (direct or duckdb) in this process and print JSON")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if o.gomaxprocs < 0 {
		return usageError{fmt.Errorf("--gomaxprocs must be positive, got %d", o.gomaxprocs)}
	}
	if o.rows < 1 || o.writers < 1 || o.tables < 1 || o.tables > demo.MaxOrderTables {
		return usageError{fmt.Errorf("--rows and --writers must be at least 1 and --tables between 1 and %d", demo.MaxOrderTables)}
	}
	if o.profile && o.dir == "" {
		return usageError{errors.New("--profile needs --dir: the profiles are kept there")}
	}
	if o.rows%int64(o.tables) != 0 {
		return usageError{fmt.Errorf("--rows %d does not split evenly over --tables %d", o.rows, o.tables)}
	}
	if *phase != "" {
		res, err := benchPhase(ctx, *phase, o)
		if err != nil {
			return err
		}
		return json.NewEncoder(stdout).Encode(res)
	}
	o.keepDir = o.dir != ""
	if !o.keepDir {
		d, err := os.MkdirTemp("", "da-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	rep, err := benchAll(ctx, o, stderr)
	if err != nil {
		return err
	}
	if o.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printBench(stdout, rep)
	return nil
}

// benchAll runs the three phases and puts their figures together.
func benchAll(ctx context.Context, o benchOptions, stderr io.Writer) (*benchReport, error) {
	rep := &benchReport{Rows: o.rows, Writers: o.writers, Tables: o.tables, GOMAXPROCS: runtimeProcs(), PipelineGOMAXPROCS: runtimeProcs()}
	if o.gomaxprocs > 0 {
		rep.PipelineGOMAXPROCS = o.gomaxprocs
	}
	direct, usage, err := runPhase(ctx, o, "direct", stderr)
	if err != nil {
		return nil, err
	}
	rep.DirectRowsPerS, rep.DirectSeconds, rep.ParquetBytes.Direct = direct.rowsPerSec(), direct.Seconds, direct.Bytes
	rep.DirectPeakRSSBytes = usage.peakRSS
	copied, _, err := runPhase(ctx, o, "duckdb", stderr)
	if err != nil {
		return nil, err
	}
	rep.DuckDBCopyRowsPerS, rep.ParquetBytes.DuckDB = copied.rowsPerSec(), copied.Bytes
	pipe, err := benchPipeline(ctx, o, stderr)
	if err != nil {
		return nil, err
	}
	rep.PipelineSeconds = pipe.seconds
	rep.PipelineRowsPerS = float64(o.rows) / pipe.seconds
	rep.Ratio = rep.PipelineRowsPerS / rep.DirectRowsPerS
	rep.ParquetBytes.Pipeline = pipe.bytes
	rep.CPUSeconds, rep.PeakRSSBytes = map[string]float64{}, map[string]int64{}
	var cpu float64
	for _, p := range pipe.procs {
		rep.CPUSeconds[p.role] += p.usage.cpu
		rep.PeakRSSBytes[p.role] += p.usage.peakRSS
		rep.PipelinePeakRSSBytes += p.usage.peakRSS
		if p.role == roleWriterName {
			rep.WriterPeakRSSBytes = max(rep.WriterPeakRSSBytes, p.usage.peakRSS)
		}
		cpu += p.usage.cpu
	}
	rep.CPUSecondsPerMillionRows = cpu / (float64(o.rows) / 1e6)
	return rep, nil
}

// benchPhase runs one in-process phase: the direct write, or DuckDB's
// COPY of the direct phase's files.
func benchPhase(ctx context.Context, phase string, o benchOptions) (phaseResult, error) {
	res := phaseResult{Rows: o.rows}
	perTable := o.rows / int64(o.tables)
	directDir := filepath.Join(o.dir, "direct")
	switch phase {
	case "direct":
		if err := os.MkdirAll(directDir, 0o755); err != nil {
			return res, err
		}
		conn := demo.New(demo.Options{Rows: perTable, BatchSize: connectors.DefaultBatchSize, Seed: 42, CustomerRows: 10000,
			OrderTables: o.tables})
		start := time.Now()
		for k := 1; k <= o.tables; k++ {
			name := demo.OrderTable(k)
			n, err := parquetfile.WriteAll(filepath.Join(directDir, name+".parquet"), demo.OrdersSchema,
				conn.Read(ctx, name, connectors.ReadOptions{}))
			if err != nil {
				return res, err
			}
			res.Bytes += n
		}
		res.Seconds = time.Since(start).Seconds()
		return res, nil
	case "duckdb":
		files, err := filepath.Glob(filepath.Join(directDir, "*.parquet"))
		if err != nil || len(files) != o.tables {
			return res, fmt.Errorf("the direct phase's %d files are not in %s (found %d)", o.tables, directDir, len(files))
		}
		sort.Strings(files)
		dst := filepath.Join(o.dir, "duckdb", "orders.parquet")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return res, err
		}
		rows, took, size, err := duck.CopyBench(ctx, files, dst)
		if err != nil {
			return res, err
		}
		if rows != o.rows {
			return res, fmt.Errorf("DuckDB read %d rows of the direct files, want %d", rows, o.rows)
		}
		res.Seconds, res.Bytes = took.Seconds(), size
		return res, nil
	}
	return res, usageError{fmt.Errorf("unknown bench phase %q (direct or duckdb)", phase)}
}

func printBench(w io.Writer, r *benchReport) {
	fmt.Fprintf(w, "demo orders: %s rows in %d table(s), %d writer process(es), GOMAXPROCS=%d (pipeline processes: %d)\n",
		thousands(r.Rows), r.Tables, r.Writers, r.GOMAXPROCS, r.PipelineGOMAXPROCS)
	fmt.Fprintf(w, "%-40s %12s %10s %12s %12s\n", "phase", "rows/s", "seconds", "parquet", "peak RSS")
	fmt.Fprintf(w, "%-40s %12.0f %10.2f %12s %12s\n", "direct Arrow -> Parquet, one goroutine", r.DirectRowsPerS, r.DirectSeconds,
		humanBytes(r.ParquetBytes.Direct), humanBytes(r.DirectPeakRSSBytes))
	fmt.Fprintf(w, "%-40s %12.0f %10.2f %12s %12s\n", "sync, one process per role", r.PipelineRowsPerS, r.PipelineSeconds,
		humanBytes(r.ParquetBytes.Pipeline), humanBytes(r.PipelinePeakRSSBytes))
	fmt.Fprintf(w, "%-40s %12.0f %10s %12s %12s\n", "DuckDB COPY to Parquet (zstd)", r.DuckDBCopyRowsPerS, "",
		humanBytes(r.ParquetBytes.DuckDB), "")
	fmt.Fprintf(w, "ratio sync / direct: %.2f\n", r.Ratio)
	fmt.Fprintf(w, "%-12s %12s %14s\n", "role", "CPU seconds", "peak RSS")
	for _, role := range benchRoles {
		fmt.Fprintf(w, "%-12s %12.2f %14s\n", role, r.CPUSeconds[role], humanBytes(r.PeakRSSBytes[role]))
	}
	fmt.Fprintf(w, "CPU seconds per million rows, all roles: %.2f\n", r.CPUSecondsPerMillionRows)
}
