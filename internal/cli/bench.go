package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
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

type benchResult struct {
	Phase   string  `json:"phase"`
	Rows    int64   `json:"rows"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
	MaxRSS  int64   `json:"max_rss_kib"`
}

func (r benchResult) rowsPerSec() float64 { return float64(r.Rows) / r.Seconds }

// runBench measures, on this machine in one run: the rows/s of a demo sync
// end to end (embedded bus, producer, writers, finalizer) and of writing the
// same rows straight from Arrow to one Parquet file. Each phase runs in its
// own child process so each peak RSS is its own.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rows := fs.Int64("rows", 1_000_000, "rows in the demo orders table")
	writers := fs.Int("writers", 2, "writer workers for the pipeline phase")
	phase := fs.String("phase", "", "run one phase in this process (direct or pipeline) and print JSON")
	dir := fs.String("dir", "", "scratch directory (default: a temporary one, removed afterwards)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "da-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	if *phase != "" {
		res, err := benchPhase(ctx, *phase, *rows, *writers, *dir)
		if err != nil {
			return err
		}
		return json.NewEncoder(stdout).Encode(res)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var results []benchResult
	for _, ph := range []string{"direct", "pipeline"} {
		cmd := exec.CommandContext(ctx, self, "bench", "--phase", ph, "--rows", fmt.Sprint(*rows),
			"--writers", fmt.Sprint(*writers), "--dir", filepath.Join(*dir, ph))
		cmd.Stderr = stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("bench phase %s: %w", ph, err)
		}
		var r benchResult
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("bench phase %s: %w", ph, err)
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.MaxRSS = ru.Maxrss
		}
		results = append(results, r)
	}
	d, p := results[0], results[1]
	fmt.Fprintf(stdout, "demo orders, %s rows, %d writers, GOMAXPROCS=%d\n", thousands(*rows), *writers, runtimeProcs())
	fmt.Fprintf(stdout, "%-34s %12s %10s %12s %12s\n", "phase", "rows/s", "seconds", "parquet", "peak RSS")
	fmt.Fprintf(stdout, "%-34s %12.0f %10.2f %12s %12s\n", "direct Arrow -> one Parquet file", d.rowsPerSec(), d.Seconds, humanBytes(d.Bytes), humanBytes(d.MaxRSS*1024))
	fmt.Fprintf(stdout, "%-34s %12.0f %10.2f %12s %12s\n", "end-to-end sync (bus + extract)", p.rowsPerSec(), p.Seconds, humanBytes(p.Bytes), humanBytes(p.MaxRSS*1024))
	fmt.Fprintf(stdout, "ratio end-to-end / direct: %.2f\n", p.rowsPerSec()/d.rowsPerSec())
	return nil
}

func benchPhase(ctx context.Context, phase string, rows int64, writers int, dir string) (benchResult, error) {
	res := benchResult{Phase: phase, Rows: rows}
	switch phase {
	case "direct":
		conn := demo.New(demo.Options{Rows: rows, BatchSize: connectors.DefaultBatchSize, Seed: 42, CustomerRows: 10000})
		start := time.Now()
		var err error
		res.Bytes, err = parquetfile.WriteAll(filepath.Join(dir, "orders.parquet"), demo.OrdersSchema,
			conn.Read(ctx, "orders", connectors.ReadOptions{}))
		if err != nil {
			return res, err
		}
		res.Seconds = time.Since(start).Seconds()
		return res, nil
	case "pipeline":
		cfg := config.Default()
		cfg.DataDir = dir
		cfg.Sources[0].Config = map[string]any{"rows": rows, "customer_rows": 10000}
		st, err := stack.Start(ctx, stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir, Writers: writers,
			Logger: newLogger(os.Stderr, slog.LevelWarn)})
		if err != nil {
			return res, err
		}
		defer st.Stop()
		req := schemas.SyncRequest{RunID: uuid.NewString(), Source: "demo", Tables: []string{"orders"}, RequestedAt: time.Now().UTC()}
		start := time.Now()
		rep, err := stack.Sync(ctx, st.JS, req, nil)
		if err != nil {
			return res, err
		}
		res.Seconds = time.Since(start).Seconds()
		if rep.Failed > 0 || rep.Rows != rows {
			return res, fmt.Errorf("bench sync: %d failed tables, %d rows", rep.Failed, rep.Rows)
		}
		for _, r := range rep.Results {
			res.Bytes += r.SizeBytes
		}
		return res, nil
	}
	return res, usageError{fmt.Errorf("unknown bench phase %q (direct or pipeline)", phase)}
}
