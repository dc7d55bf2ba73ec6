package producers

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// run is one attempt of one sync request: what every step of it needs.
type run struct {
	p     *Producer
	req   schemas.SyncRequest
	src   Source
	conn  connectors.Connector
	state jetstream.KeyValue
	log   *slog.Logger
	// columns is the name rule applied to each declared schema (by table),
	// settled before the tables are read.
	columns map[string]connectors.Columns
	// mu guards skipped: columns left out of tables whose schema is only
	// known from their first batch, noted while tables are read.
	mu      sync.Mutex
	skipped []string
}

// skip notes what a table read left out, for run_done.skipped.
func (r *run) skip(why []string) {
	for _, w := range why {
		r.log.Warn("left out of the extract", "reason", w)
	}
	r.mu.Lock()
	r.skipped = append(r.skipped, why...)
	r.mu.Unlock()
}

// event is the envelope of every event of the run: its type, run, attempt,
// source and (when set) table.
func (r *run) event(t schemas.EventType, table string) schemas.Event {
	return schemas.Event{Type: t, RunID: r.req.RunID, Attempt: r.req.Attempt, Source: r.req.Source, Table: table}
}

// publish publishes e and waits for the stream's acknowledgement.
func (r *run) publish(ctx context.Context, e schemas.Event) error { return r.p.publishEvent(ctx, e) }

// failTable reports a table failed with err and returns its result.
func (r *run) failTable(ctx context.Context, res schemas.TableResult, err error) schemas.TableResult {
	res.Status, res.Error = schemas.StatusFailed, err.Error()
	r.log.Warn("table failed", "table", res.Table, "err", err)
	ev := r.event(schemas.EventTableFailed, res.Table)
	ev.Error, ev.SchemaChanges = res.Error, res.SchemaChanges
	if perr := r.publish(ctx, ev); perr != nil {
		r.log.Warn("report table failed", "table", res.Table, "err", perr)
	}
	return res
}

// runRequest executes one sync request. A returned error fails the whole
// run; a table's error only fails that table.
func (p *Producer) runRequest(ctx context.Context, req schemas.SyncRequest) error {
	src, err := p.opts.Sources(req.Source)
	if err != nil {
		return err
	}
	conn, _, err := p.opts.Registry.Open(src.Connector, src.Config)
	if err != nil {
		return fmt.Errorf("source %s: %w", req.Source, err)
	}
	r := &run{p: p, req: req, src: src, conn: conn, state: p.state, log: p.log.With("run", req.RunID, "source", req.Source),
		columns: map[string]connectors.Columns{}}
	// A source that cannot be reached or refuses the credentials fails the
	// run before anything is read, with the reason.
	if err := p.opts.Registry.Health(ctx, src.Connector, src.Config, conn); err != nil {
		return fmt.Errorf("source %s: %w", req.Source, err)
	}
	tables, skipped, err := r.catalog(ctx)
	if err != nil {
		return err
	}
	remote, err := r.remoteInfo(ctx, tables)
	if err != nil {
		return err
	}
	started := r.event(schemas.EventRunStarted, "")
	started.Trigger = r.req.Trigger()
	for _, t := range tables {
		started.Tables = append(started.Tables, t.Name)
	}
	if err := r.publish(ctx, started); err != nil {
		return err
	}
	r.log.Info("sync run started", "tables", len(tables))
	results := r.readTables(ctx, tables)
	if err := ctx.Err(); err != nil {
		return err
	}
	done := r.event(schemas.EventRunDone, "")
	r.mu.Lock()
	done.Results, done.Remote, done.Skipped = results, remote, append(skipped, r.skipped...)
	r.mu.Unlock()
	if err := r.publish(ctx, done); err != nil {
		return err
	}
	failed := 0
	for _, res := range results {
		if res.Status == schemas.StatusFailed {
			failed++
		}
	}
	r.log.Info("sync run produced", "tables", len(results), "failed", failed)
	return nil
}

// catalog is the tables this run syncs: discovered (or, without discovery,
// the configured list), checked against the table options and narrowed to
// the request's tables; skipped says what discovery left out.
func (r *run) catalog(ctx context.Context) (tables []connectors.TableInfo, skipped []string, err error) {
	conn, src, source := r.conn, r.src, r.req.Source
	caps := conn.Capabilities()
	if d, ok := conn.(connectors.Discoverer); ok && caps.Has(connectors.Discover) {
		if tables, err = d.Discover(ctx); err != nil {
			return nil, nil, fmt.Errorf("discover %s: %w", source, err)
		}
		if sk, ok := conn.(connectors.Skipper); ok {
			skipped = sk.Skipped()
		}
		// One name rule for every connector: names that cannot be views and
		// names that collide are left out here, visibly.
		var clashes []string
		tables, clashes = connectors.ResolveTables(tables, r.published(ctx))
		skipped = append(skipped, clashes...)
		for _, why := range skipped {
			r.log.Warn("discovery skipped", "reason", why)
		}
	} else {
		// Without discovery the configured table list is the catalog; the
		// schema comes from the first batch.
		for _, t := range src.Tables {
			tables = append(tables, connectors.TableInfo{Name: t, Capabilities: caps &^ connectors.Discover})
		}
	}
	// table_options naming a table the source lacks is a mistake in the
	// config (a typo, a renamed table): refused before anything is read.
	for name := range src.Options {
		if _, err := connectors.SelectTables(tables, []string{name}); err != nil {
			return nil, nil, fmt.Errorf("source %s: table_options.%s: %w; correct or remove the entry", source, name, err)
		}
	}
	want := r.req.Tables
	if len(want) == 0 {
		want = src.Tables
	}
	if tables, err = connectors.SelectTables(tables, want); err != nil {
		return nil, nil, fmt.Errorf("source %s: %w", source, err)
	}
	tables = slices.DeleteFunc(tables, func(t connectors.TableInfo) bool { return slices.Contains(r.req.ExceptTables, t.Name) })
	// Partitioned tables fed only by pushed events have nothing to sync.
	tables = slices.DeleteFunc(tables, func(t connectors.TableInfo) bool {
		return t.Partition != nil && !tableCaps(conn, t).Has(connectors.Read)
	})
	if len(tables) == 0 {
		return nil, nil, fmt.Errorf("source %s: the connector offers no tables", source)
	}
	for i, t := range tables {
		if err := schemas.ValidateName("table", t.Name); err != nil {
			return nil, nil, fmt.Errorf("source %s: %w", source, err)
		}
		// Columns whose names collide: the first is kept (see
		// connectors.ResolveColumns); batches are projected as they are read.
		c := connectors.ResolveColumns(t.Name, t.Schema)
		r.columns[t.Name] = c
		tables[i].Schema = c.Schema
		for _, why := range c.Skipped {
			r.log.Warn("discovery skipped", "reason", why)
		}
		skipped = append(skipped, c.Skipped...)
	}
	return tables, skipped, nil
}

// published reports whether a table of the source was published before
// (its schema is recorded), for the name rule's choice between colliding
// tables. A state that cannot be read counts as not published: the choice
// falls back to byte order, which is deterministic too.
func (r *run) published(ctx context.Context) func(string) bool {
	return func(table string) bool {
		_, err := r.state.Get(ctx, schemas.SchemaKey(r.req.Source, table))
		return err == nil
	}
}

// tableCaps are the capabilities of one table: its own, else the
// connector's.
func tableCaps(conn connectors.Connector, t connectors.TableInfo) connectors.Capability {
	if t.Capabilities != 0 {
		return t.Capabilities
	}
	return conn.Capabilities()
}

// remoteInfo is how the extract attaches the source, when a table of the
// run is published as a remote view.
func (r *run) remoteInfo(ctx context.Context, tables []connectors.TableInfo) (*schemas.RemoteAttach, error) {
	rm, ok := r.conn.(connectors.Remoter)
	if !ok || !r.conn.Capabilities().Has(connectors.Remote) ||
		!slices.ContainsFunc(tables, func(t connectors.TableInfo) bool { return r.remoteTable(t) }) {
		return nil, nil
	}
	info, err := rm.Remote(ctx)
	if err != nil {
		return nil, fmt.Errorf("remote info of %s: %w", r.req.Source, err)
	}
	remote, err := remoteRow(info)
	if err != nil {
		return nil, fmt.Errorf("remote info of %s: %w", r.req.Source, err)
	}
	return remote, nil
}

// readTables reads the run's tables, TableConcurrency at a time; the
// partitioned tables are backfilled together, in one pass over the source.
func (r *run) readTables(ctx context.Context, tables []connectors.TableInfo) []schemas.TableResult {
	var plain, parted []connectors.TableInfo
	for _, t := range tables {
		if t.Partition != nil {
			parted = append(parted, t)
		} else {
			plain = append(plain, t)
		}
	}
	results := make([]schemas.TableResult, len(plain))
	var partedResults []schemas.TableResult
	sem := make(chan struct{}, r.p.opts.TableConcurrency)
	var wg sync.WaitGroup
	spawn := func(fn func()) {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn()
		}()
	}
	if len(parted) > 0 {
		spawn(func() {
			partedResults = r.changeTables(ctx, parted)
			for _, res := range partedResults {
				metrics.TablesRead.WithLabelValues(metrics.Source(r.req.Source), res.Status).Inc()
			}
		})
	}
	for i, t := range plain {
		spawn(func() {
			results[i] = r.table(ctx, t)
			metrics.TablesRead.WithLabelValues(metrics.Source(r.req.Source), results[i].Status).Inc()
		})
	}
	wg.Wait()
	return append(results, partedResults...)
}

func remoteRow(info connectors.RemoteAttachInfo) (*schemas.RemoteAttach, error) {
	alias := info.Alias
	if alias == "" {
		alias = info.Extension
	}
	r := &schemas.RemoteAttach{Alias: alias, Extension: info.Extension, URL: info.URL, TokenEnv: info.TokenEnv}
	if err := schemas.ValidateName("alias", r.Alias); err != nil {
		return nil, err
	}
	if err := schemas.ValidateName("extension", r.Extension); err != nil {
		return nil, err
	}
	if r.TokenEnv != "" {
		if err := schemas.ValidateName("token_env", r.TokenEnv); err != nil {
			return nil, fmt.Errorf("token_env must name an environment variable: %w", err)
		}
	}
	return r, nil
}

// remoteTable reports whether t is published as a remote view: the source
// asks for it (table_options.<t>.query_mode: remote), or the connector
// offers the table only remotely.
func (r *run) remoteTable(t connectors.TableInfo) bool {
	caps := tableCaps(r.conn, t)
	switch r.src.Table(t.Name).QueryMode {
	case schemas.ModeRemote:
		return true
	case schemas.ModeLocal, schemas.ModeMaterialized:
		return false
	}
	_, canRead := r.conn.(connectors.Reader)
	return caps.Has(connectors.Remote) && (t.PreferRemote || !caps.Has(connectors.Read) || !canRead)
}
