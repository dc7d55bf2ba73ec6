package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func runSync(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	tables := fs.String("tables", "", "comma-separated tables to sync (default: the source's configured tables, or all)")
	fullRefresh := fs.Bool("full-refresh", false, "ignore incremental state and read everything")
	timeout := fs.Duration("timeout", time.Hour, "give up waiting after this long")
	embedded := fs.Bool("embedded", false, "run the pipeline in-process on an embedded NATS (the default when no server is named); refuses a named one")
	var af apiFlags
	af.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("usage: da sync <source> [--config FILE] [--data-dir DIR] [--nats-url URL | --api URL]")}
	}
	if api, err := af.client(stderr); api != nil || err != nil {
		if err != nil {
			return err
		}
		return syncOverAPI(ctx, api, pos[0], *tables, *fullRefresh, *timeout, stdout)
	}
	cfg, err := c.load()
	if err != nil {
		return err
	}
	req := schemas.SyncRequest{RunID: uuid.NewString(), Source: pos[0], RequestedAt: time.Now().UTC(), RequestedBy: schemas.TriggerCLI, FullRefresh: *fullRefresh}
	if *tables != "" {
		for _, t := range strings.Split(*tables, ",") {
			req.Tables = append(req.Tables, strings.TrimSpace(t))
		}
	}
	if err := req.Validate(); err != nil {
		return err
	}
	src, err := cfg.Source(req.Source)
	if err != nil {
		return err
	}
	// Catch a wrong connector name or config here, before anything is published.
	reg, err := builtin.Registry().Lookup(src.Connector)
	if err != nil {
		return fmt.Errorf("source %s: %w", src.Name, err)
	}
	if _, err := reg.Manifest.ValidateConfig(src.Config); err != nil {
		return fmt.Errorf("source %s in %s: %w", src.Name, cfg.Path(), err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	log := newLogger(stderr, slog.LevelWarn)
	js, closeBus, where, err := connect(ctx, cfg, c, stack.Options{Registry: builtin.Registry(), Writers: c.writers, Logger: log}, *embedded)
	if err != nil {
		return err
	}
	defer closeBus()
	if err := serverRuns(ctx, js, cfg, req.Source, where); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Syncing source %s (run %s) on %s\n", req.Source, req.RunID, where)
	onEvent, heard := progressOrWarn(ctx, stdout, where)
	rep, err := stack.Sync(ctx, js, req, onEvent)
	heard()
	if err != nil && signalled(ctx) {
		return interrupted(js, req, stdout, log)
	}
	settle(js, req, log)
	if err != nil {
		return err
	}
	printSummary(stdout, rep)
	if rep.Failed > 0 {
		return exitCode(1)
	}
	return nil
}

// connect reaches the bus: the NATS server the flags, the environment or
// the config name (from says which), or, with none named (or embedded set),
// an embedded server started here in the data dir that runs the fallback's
// roles (stack.RoleNone: only the store) until the returned closer is
// called. Nothing is looked for where nothing was named: a server that
// happens to listen on the default port is not used.
func connect(ctx context.Context, cfg *config.Config, c commonFlags, fallback stack.Options, embedded bool) (jetstream.JetStream, func(), string, error) {
	url, from := cfg.NATS.URL, c.urlFrom
	if url != "" && embedded {
		return nil, nil, "", usageError{fmt.Errorf("--embedded and a NATS URL (from %s) exclude each other", from)}
	}
	if url != "" {
		opts := []nats.Option{nats.Timeout(2 * time.Second), nats.RetryOnFailedConnect(false)}
		identity := natsbus.RoleCLI
		if c.identity != "" {
			identity = c.identity
		}
		creds, credsFrom := c.creds(cfg, identity)
		more, err := natsbus.ClientIdentity{Creds: creds, CA: ca(cfg)}.Options()
		if err != nil {
			return nil, nil, "", fmt.Errorf("%w (from %s)", err, credsFrom)
		}
		opts = append(opts, more...)
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			hint := "start it, or name no server to run in-process"
			var unknownCA x509.UnknownAuthorityError
			if errors.As(err, &unknownCA) || strings.Contains(err.Error(), "x509:") {
				hint = "its TLS certificate is not trusted: name its CA in nats.tls.ca or $" + NATSCAEnv
			}
			if errors.Is(err, nats.ErrAuthorization) {
				hint = "the server wants an identity: pass --nats-creds FILE or set $" + NATSCredsEnv
				if creds != "" {
					hint = "it refused the identity in " + creds + " (from " + credsFrom + ")"
				}
			}
			return nil, nil, "", fmt.Errorf("connect to NATS at %s (from %s): %w (%s)", redact.URL(url), from, err, hint)
		}
		if creds != "" {
			from += ", as the identity in " + creds
		}
		js, err := jetstream.New(nc)
		if err == nil && creds == "" {
			// A server that wants no identity: make what is missing. One
			// that does was provisioned by its own da serve.
			err = natsbus.ProvisionWithRetry(ctx, js, max(cfg.NATS.Replicas, 1))
		}
		if err != nil {
			nc.Close()
			return nil, nil, "", err
		}
		return js, func() { nc.Close() }, fmt.Sprintf("%s (from %s)", redact.URL(url), from), nil
	}
	fallback.Config, fallback.DataDir = cfg, cfg.DataDir
	st, err := stack.Start(ctx, fallback)
	if err != nil {
		return nil, nil, "", err
	}
	where := "an in-process embedded NATS (no server named: --nats-url, $" + NATSURLEnv + " or nats.url)"
	if embedded {
		where = "an in-process embedded NATS"
	}
	return st.JS, func() { st.Stop() }, where, nil
}

// progressOrWarn is progress, and says so when nothing picks the request
// up for 10 s instead of waiting silently; heard stops the warning.
func progressOrWarn(ctx context.Context, stdout io.Writer, where string) (onEvent func(schemas.Event), heard func()) {
	ch := make(chan struct{})
	var once sync.Once
	heard = func() { once.Do(func() { close(ch) }) }
	go func() {
		select {
		case <-ch:
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			fmt.Fprintf(stdout, "  waiting: no producer has taken the request yet (is \"da serve\" running against %s?)\n", where)
		}
	}()
	print := progress(stdout)
	return func(ev schemas.Event) { heard(); print(ev) }, heard
}

// progress prints one line per table event.
func progress(out io.Writer) func(schemas.Event) {
	return func(ev schemas.Event) {
		switch ev.Type {
		case schemas.EventRunStarted:
			fmt.Fprintf(out, "  %d tables: %s\n", len(ev.Tables), strings.Join(ev.Tables, ", "))
		case schemas.EventTableStarted:
			fmt.Fprintf(out, "  %-24s reading\n", ev.Table)
		case schemas.EventTableProgress:
			fmt.Fprintf(out, "  %-24s %s rows read\n", ev.Table, thousands(ev.Rows))
		case schemas.EventTableDone:
			if ev.QueryMode == schemas.ModeRemote {
				fmt.Fprintf(out, "  %-24s remote\n", ev.Table)
			} else {
				fmt.Fprintf(out, "  %-24s %s rows read in %d batches, writing\n", ev.Table, thousands(ev.Rows), ev.Batches)
			}
		case schemas.EventTableFailed:
			fmt.Fprintf(out, "  %-24s FAILED: %s\n", ev.Table, ev.Error)
		}
	}
}

func printSummary(w io.Writer, rep *stack.Report) {
	st := rep.Stats()
	fmt.Fprintf(w, "\nSynced %s in %s: %d tables extracted, %d failed, %s rows read, %d schema changes\n", rep.Source,
		rep.Duration.Round(time.Millisecond), st.TablesExtracted, st.TablesFailed, thousands(st.Rows), len(st.SchemaChanges))
	for _, r := range rep.Results {
		switch {
		case r.Status == schemas.StatusFailed:
			fmt.Fprintf(w, "  %-24s FAILED  %s (its previous data, if any, stays in the extract)\n", r.Table, r.Error)
		case r.QueryMode == schemas.ModeRemote:
			fmt.Fprintf(w, "  %-24s remote\n", r.Table)
		case r.QueryMode == schemas.ModeMaterialized:
			fmt.Fprintf(w, "  %-24s %12s rows  %10s  materialized\n", r.Table, thousands(r.Rows), humanBytes(r.SizeBytes))
		default:
			line := fmt.Sprintf("  %-24s %12s rows  %10s", r.Table, thousands(r.Rows), humanBytes(r.SizeBytes))
			switch r.WriteMode {
			case schemas.WriteMerge:
				line += fmt.Sprintf("  merged by key, %s rows in the table", thousands(r.TotalRows))
			case schemas.WriteAppend:
				line += fmt.Sprintf("  appended, %s rows in the table", thousands(r.TotalRows))
			case schemas.WritePartitioned:
				line += fmt.Sprintf("  upserted by key into monthly partitions, %s rows in the table", thousands(r.TotalRows))
			}
			fmt.Fprintln(w, line)
		}
		for _, c := range r.SchemaChanges {
			fmt.Fprintf(w, "  %-24s schema: %s\n", "", c)
		}
	}
	for _, why := range rep.Skipped {
		fmt.Fprintf(w, "  skipped: %s\n", why)
	}
	abs, _ := filepath.Abs(rep.Path)
	fmt.Fprintf(w, "\nExtract: %s\n", abs)
	fmt.Fprintf(w, "Try:     duckdb -readonly %s -c \"SELECT table_name, rows, query_mode FROM _meta\"\n", abs)
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// signalled reports whether ctx, or the context it came from, ended because
// the process was told to stop (Ctrl-C, SIGTERM) rather than by --timeout.
func signalled(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), context.Canceled)
}

// interrupted cancels the run of an interrupted da sync, so that nothing of
// it is published and its source is free for the next sync at once, says so
// and exits 130. The run's record ends cancelled here: with the embedded
// pipeline, the recorder and finalizer are stopping with this process.
func interrupted(js jetstream.JetStream, req schemas.SyncRequest, stdout io.Writer, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := errors.New("the bus is unavailable")
	if store, oerr := runs.Open(ctx, js); oerr == nil {
		_, err = store.Cancel(ctx, log, req.RunID)
		if err == nil {
			_, err = store.Update(ctx, req.Source, req.RunID, func(r *runs.Record) {
				r.Apply(schemas.Event{Type: schemas.EventRunCancelled, RunID: req.RunID, Source: req.Source, Time: time.Now().UTC(),
					Error: "interrupted"})
			})
		}
	}
	if locks, lerr := natsbus.KeyValue(ctx, js, schemas.LockBucket); lerr == nil {
		natsbus.ReleaseRun(ctx, locks, req.Source, req.RunID)
	}
	switch {
	case errors.Is(err, runs.ErrFinished):
		fmt.Fprintf(stdout, "\nInterrupted: run %s had already ended (%v).\n", req.RunID, err)
	case err != nil:
		fmt.Fprintf(stdout, "\nInterrupted: could not cancel run %s (%v); its source is free again within %s.\n", req.RunID, err, schemas.LockTTL)
	default:
		fmt.Fprintf(stdout, "\nInterrupted: run %s cancelled; the live extract of %s is unchanged.\n", req.RunID, req.Source)
	}
	return exitCode(130)
}

// settle waits a moment for the run's record to end: an in-process
// pipeline stops with this command, and its recorder with it, right after
// the run's last event.
func settle(js jetstream.JetStream, req schemas.SyncRequest, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	store, err := runs.Open(ctx, js)
	if err == nil {
		_, err = store.WaitEnded(ctx, req.Source, req.RunID)
	}
	if err != nil {
		log.Warn("the run's record has not ended yet; the recorder finishes it", "run", req.RunID, "err", err)
	}
}

// ProducerWait is how long "da sync" waits for a producer to appear on a
// named server before it gives up.
var ProducerWait = 10 * time.Second

// serverRuns checks, on a named server, that a producer is running there
// and that source is one it runs, before anything is published: the
// request would otherwise wait for a producer that never comes, or run
// with that server's idea of the source. The in-process pipeline runs this
// config: nothing to check.
func serverRuns(ctx context.Context, js jetstream.JetStream, cfg *config.Config, source, where string) error {
	if cfg.NATS.URL == "" {
		return nil
	}
	live, err := runs.OpenLiveness(ctx, js)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, ProducerWait)
	defer cancel()
	poll := natsbus.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for {
		ps, err := live.Producers(wctx)
		if err == nil && len(ps) > 0 {
			known := map[string]bool{}
			for _, p := range ps {
				for _, s := range p.Sources {
					known[s] = true
				}
			}
			if known[source] {
				return nil
			}
			return fmt.Errorf("source %s is not configured on the server at %s (its producers run: %s); run da sync with the config da serve uses",
				source, where, strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		}
		if poll.Wait(wctx) != nil {
			if err != nil {
				return fmt.Errorf("ask the server at %s for its producers: %w", where, err)
			}
			return fmt.Errorf("no producer is running on the server at %s (waited %s): start \"da serve\" there, or name no server to sync in-process", where, ProducerWait)
		}
	}
}
