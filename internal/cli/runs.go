package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/schedules"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// openRuns reaches the bus as the read-only commands do and opens the run
// history; it returns it with a closer.
func openRuns(ctx context.Context, c commonFlags, log *slog.Logger) (*history, func(), error) {
	cfg, err := c.load()
	if err != nil {
		return nil, nil, err
	}
	js, closeBus, _, err := connect(ctx, cfg, c, stack.Options{Roles: []string{stack.RoleNone}, Logger: log}, false)
	if err != nil {
		return nil, nil, err
	}
	store, err := runs.Open(ctx, js)
	if err != nil {
		closeBus()
		return nil, nil, err
	}
	return &history{Store: store, js: js, cfg: cfg}, closeBus, nil
}

// history is the run history on the bus the config names.
type history struct {
	*runs.Store
	js  jetstream.JetStream
	cfg *config.Config
}

// runRuns lists runs, newest first.
func runRuns(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("runs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	var f runs.Filter
	fs.StringVar(&f.Source, "source", "", "only runs of this source")
	status := fs.String("status", "", "only runs in this status: queued, running, writing, published, failed, rejected, skipped, cancelled, abandoned")
	fs.IntVar(&f.Limit, "limit", runs.DefaultLimit, fmt.Sprintf("at most this many runs, newest first (up to %d)", runs.MaxLimit))
	fs.StringVar(&f.Cursor, "cursor", "", "continue after the page that printed this cursor")
	asJSON := fs.Bool("json", false, "print a JSON list of run records")
	var af apiFlags
	af.register(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	f.Status = runs.Status(*status)
	if err := f.Validate(); err != nil {
		return usageError{err}
	}
	page, err := listRuns(ctx, c, af, f, stderr)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(page.Runs); err != nil {
			return err
		}
	} else {
		printRuns(stdout, page.Runs)
	}
	if page.Next != "" {
		fmt.Fprintf(stderr, "more runs: da runs --cursor %s\n", page.Next)
	}
	return nil
}

// listRuns reads a page of runs through the API, when one is named, or
// from the bus.
func listRuns(ctx context.Context, c commonFlags, af apiFlags, f runs.Filter, stderr io.Writer) (runs.Page, error) {
	api, err := af.client(stderr)
	if err != nil {
		return runs.Page{}, err
	}
	if api != nil {
		q := url.Values{}
		for k, v := range map[string]string{"source": f.Source, "status": string(f.Status), "cursor": f.Cursor} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if f.Limit > 0 {
			q.Set("limit", strconv.Itoa(f.Limit))
		}
		var page runs.Page
		h, err := api.call(ctx, "GET", "/api/sync/runs?"+q.Encode(), nil, &page.Runs)
		if err == nil {
			page.Next = h.Get("X-Next-Cursor")
		}
		return page, err
	}
	store, closeBus, err := openRuns(ctx, c, newLogger(stderr, slog.LevelWarn))
	if err != nil {
		return runs.Page{}, err
	}
	defer closeBus()
	return store.List(ctx, f)
}

func printRuns(w io.Writer, rs []runs.Record) {
	fmt.Fprintf(w, "%-36s  %-16s %-8s %-9s %-20s %9s %11s  %s\n", "RUN", "SOURCE", "TRIGGER", "STATUS", "STARTED", "DURATION", "ROWS", "ERROR")
	for _, r := range rs {
		var rows int64
		for _, t := range r.Tables {
			rows += t.Rows
		}
		started, took := "-", "-"
		if r.StartedAt != nil {
			started = r.StartedAt.Local().Format("2006-01-02 15:04:05")
			if r.EndedAt != nil {
				took = r.EndedAt.Sub(*r.StartedAt).Round(100 * time.Millisecond).String()
			}
		}
		fmt.Fprintf(w, "%-36s  %-16s %-8s %-9s %-20s %9s %11s  %s\n", r.RunID, r.Source, r.Trigger, r.Status, started, took,
			thousands(rows), oneLine(r.Error, 80))
	}
	if len(rs) == 0 {
		fmt.Fprintln(w, "(no runs)")
	}
}

// oneLine is s on one line, cut to n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// runStatus shows each configured source's freshness and last run.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	asJSON := fs.Bool("json", false, "print a JSON list, one object per source")
	var af apiFlags
	af.register(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	sts, err := sourceStatuses(ctx, c, af, stderr)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(sts)
	}
	fmt.Fprintf(stdout, "%-16s %-12s %-20s %10s  %-36s %-9s %s\n", "SOURCE", "CONNECTOR", "LAST SUCCESS", "FRESHNESS", "LAST RUN", "STATUS", "NEXT RUN")
	for _, s := range sts {
		success, fresh, last, status := "never", "-", "-", "-"
		if s.LastSuccessAt != nil {
			success = s.LastSuccessAt.Local().Format("2006-01-02 15:04:05")
			fresh = time.Duration(*s.FreshnessS * float64(time.Second)).Round(time.Second).String()
		}
		if s.LastRun != nil {
			last, status = s.LastRun.ID, string(s.LastRun.Status)
		}
		fmt.Fprintf(stdout, "%-16s %-12s %-20s %10s  %-36s %-9s %s\n", s.Name, s.Connector, success, fresh, last, status, "-")
	}
	return nil
}

// sourceStatuses reads each source's status through the API, when one is
// named, or from the bus.
func sourceStatuses(ctx context.Context, c commonFlags, af apiFlags, stderr io.Writer) ([]runs.SourceStatus, error) {
	api, err := af.client(stderr)
	if err != nil {
		return nil, err
	}
	if api != nil {
		var sts []runs.SourceStatus
		_, err := api.call(ctx, "GET", "/api/sources", nil, &sts)
		return sts, err
	}
	h, closeBus, err := openRuns(ctx, c, newLogger(stderr, slog.LevelWarn))
	if err != nil {
		return nil, err
	}
	defer closeBus()
	return schedules.Sources(ctx, h.js, h.Store, h.cfg, time.Now().UTC())
}

// runCancel stops a run.
func runCancel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cancel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	var af apiFlags
	af.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || schemas.ValidateRunID(pos[0]) != nil {
		return usageError{errors.New("usage: da cancel <run-id> (a UUID, as da runs lists it)")}
	}
	api, err := af.client(stderr)
	if err != nil {
		return err
	}
	if api != nil {
		var ans struct{ Source string }
		if _, err := api.call(ctx, "POST", "/api/sync/runs/"+pos[0]+"/cancel", nil, &ans); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Cancelling run %s of source %s; the live extract stays as it is.\n", pos[0], redact.Terminal(ans.Source))
		return nil
	}
	log := newLogger(stderr, slog.LevelWarn)
	store, closeBus, err := openRuns(ctx, c, log)
	if err != nil {
		return err
	}
	defer closeBus()
	rec, err := store.Cancel(ctx, log, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Cancelling run %s of source %s; the live extract stays as it is.\n", pos[0], rec.Source)
	return nil
}
