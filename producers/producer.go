// Package producers runs connectors for sync requests: it takes requests from
// the sync work queue (each taken by exactly one producer), discovers and
// reads tables, and publishes Arrow IPC batches and run events on the bus.
package producers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults.
const (
	DefaultConcurrency      = 4
	DefaultTableConcurrency = 2
	DefaultAckWait          = 30 * time.Second
	// DefaultMaxInFlight bounds unacknowledged async publishes per table, which
	// bounds the producer's memory however large the table is.
	DefaultMaxInFlight = 32
	// DefaultMaxBacklog bounds the batches waiting for a writer: past it the
	// producer waits, so a fast source cannot pile a whole table into the
	// bus ahead of slow writers.
	DefaultMaxBacklog = 256
	backlogCheckEvery = 16
	progressEvery     = time.Second
)

// SourceLookup returns the configuration of a source by name.
type SourceLookup func(name string) (config.Source, error)

// Options configure a Producer.
type Options struct {
	JS       jetstream.JetStream
	Registry *connectors.Registry
	Sources  SourceLookup
	// MaxPayload is the bus's largest message; batches are split to fit.
	MaxPayload int
	// Concurrency is how many runs this producer works on at once.
	Concurrency int
	// TableConcurrency is how many tables of one run are read at once.
	TableConcurrency int
	AckWait          time.Duration
	MaxInFlight      int
	MaxBacklog       int
	Logger           *slog.Logger
}

// Producer consumes sync requests and publishes their data.
type Producer struct {
	opts  Options
	log   *slog.Logger
	state jetstream.KeyValue
	locks jetstream.KeyValue
}

// New returns a Producer; Run starts it.
func New(opts Options) *Producer {
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.TableConcurrency <= 0 {
		opts.TableConcurrency = DefaultTableConcurrency
	}
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxBacklog <= 0 {
		opts.MaxBacklog = DefaultMaxBacklog
	}
	if opts.MaxPayload <= 0 {
		opts.MaxPayload = 1 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Producer{opts: opts, log: opts.Logger.With("service", "producer")}
}

// Run takes sync requests until ctx ends, then waits for runs in progress to
// stop. A request is acked when its run's events are all on the bus.
func (p *Producer) Run(ctx context.Context) error {
	cons, err := p.opts.JS.CreateOrUpdateConsumer(ctx, schemas.SyncStream, jetstream.ConsumerConfig{
		Durable:       schemas.ProducerConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.opts.AckWait,
		MaxDeliver:    5,
		MaxAckPending: 1000,
	})
	if err != nil {
		return fmt.Errorf("producer: create consumer: %w", err)
	}
	if p.state, err = natsbus.KeyValue(ctx, p.opts.JS, schemas.StateBucket); err != nil {
		return fmt.Errorf("producer: %w", err)
	}
	if p.locks, err = natsbus.KeyValue(ctx, p.opts.JS, schemas.LockBucket); err != nil {
		return fmt.Errorf("producer: %w", err)
	}
	p.log.Info("producer started", "concurrency", p.opts.Concurrency)
	// A run takes minutes: a request is pulled only when a slot is free, so
	// a busy producer never holds one another producer could start.
	err = natsbus.Consume(ctx, cons, natsbus.ConsumeOptions{Name: schemas.ProducerConsumer, Logger: p.log,
		Workers: p.opts.Concurrency, Handle: p.handle})
	p.log.Info("producer stopped")
	return err
}

func (p *Producer) handle(ctx context.Context, msg jetstream.Msg) {
	req, err := schemas.DecodeSyncRequest(msg.Data())
	if err != nil {
		// Nothing of a malformed request is trusted, not even its run id:
		// it is dropped without an event.
		p.log.Error("dropping malformed sync request", "subject", msg.Subject(), "err", err)
		metrics.MalformedInput.WithLabelValues("sync_request").Inc()
		natsbus.Settle(p.log, "term", msg.Term())
		return
	}
	if want := schemas.SyncSubject(req.Source); msg.Subject() != want {
		p.log.Error("dropping sync request published on another source's subject", "subject", msg.Subject(), "source", req.Source)
		metrics.MalformedInput.WithLabelValues("sync_request").Inc()
		natsbus.Settle(p.log, "term", msg.Term())
		return
	}
	locks := p.locks
	err = natsbus.AcquireRun(ctx, locks, req.Source, req.RunID)
	if errors.Is(err, schemas.ErrAlreadyRunning) {
		p.log.Warn("sync request rejected: source already syncing", "run", req.RunID, "source", req.Source, "err", err)
		metrics.RunsRejected.Inc()
		p.publishEvent(ctx, schemas.Event{Type: schemas.EventRunRejected, RunID: req.RunID, Source: req.Source, Error: err.Error()})
		natsbus.Settle(p.log, "term", msg.Term())
		return
	}
	if err != nil {
		p.log.Error("lock source; will retry", "run", req.RunID, "source", req.Source, "err", err)
		natsbus.Settle(p.log, "nak", msg.NakWithDelay(time.Second))
		return
	}
	req.Attempt = 1
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 1 {
		// A redelivered request: an earlier attempt died mid-run. This
		// attempt publishes everything again under its own number.
		req.Attempt = int(md.NumDelivered)
		p.log.Warn("retrying sync run", "run", req.RunID, "source", req.Source, "attempt", req.Attempt)
	}
	stop := natsbus.KeepAlive(ctx, min(p.opts.AckWait/3, schemas.LockTTL/4), []jetstream.Msg{msg}, func() {
		if err := natsbus.RefreshRun(ctx, locks, req.Source, req.RunID); err != nil {
			p.log.Warn("refresh source lock", "run", req.RunID, "source", req.Source, "err", err)
		}
	})
	metrics.RunsStarted.Inc()
	err = p.run(ctx, req)
	stop()
	if ctx.Err() != nil {
		// Shutting down: leave the request for redelivery to another producer.
		natsbus.Settle(p.log, "nak", msg.Nak())
		return
	}
	if err != nil {
		p.log.Error("sync run failed", "run", req.RunID, "source", req.Source, "err", err)
		metrics.RunsFailed.Inc()
		if err := natsbus.ReleaseRun(ctx, locks, req.Source, req.RunID); err != nil {
			p.log.Warn("release source lock", "run", req.RunID, "source", req.Source, "err", err)
		}
		p.publishEvent(ctx, schemas.Event{Type: schemas.EventRunFailed, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Error: err.Error()})
	}
	natsbus.Settle(p.log, "ack", msg.DoubleAck(ctx))
}

// run executes one sync request. A returned error fails the whole run; a
// table's error only fails that table.
func (p *Producer) run(ctx context.Context, req schemas.SyncRequest) error {
	src, err := p.opts.Sources(req.Source)
	if err != nil {
		return err
	}
	conn, _, err := p.opts.Registry.Open(src.Connector, src.Config)
	if err != nil {
		return fmt.Errorf("source %s: %w", req.Source, err)
	}
	// A source that cannot be reached or refuses the credentials fails the
	// run before anything is read, with the reason.
	if err := p.opts.Registry.Health(ctx, src.Connector, src.Config, conn); err != nil {
		return fmt.Errorf("source %s: %w", req.Source, err)
	}
	caps := conn.Capabilities()
	var tables []connectors.TableInfo
	var skipped []string
	if d, ok := conn.(connectors.Discoverer); ok && caps.Has(connectors.Discover) {
		if tables, err = d.Discover(ctx); err != nil {
			return fmt.Errorf("discover %s: %w", req.Source, err)
		}
		if sk, ok := conn.(connectors.Skipper); ok {
			skipped = sk.Skipped()
			for _, why := range skipped {
				p.log.Warn("discovery skipped", "run", req.RunID, "source", req.Source, "reason", why)
			}
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
	for name := range src.TableOptions {
		if _, err := connectors.SelectTables(tables, []string{name}); err != nil {
			return fmt.Errorf("source %s: table_options.%s: %w; correct or remove the entry", req.Source, name, err)
		}
	}
	want := req.Tables
	if len(want) == 0 {
		want = src.Tables
	}
	if tables, err = connectors.SelectTables(tables, want); err != nil {
		return fmt.Errorf("source %s: %w", req.Source, err)
	}
	// Partitioned tables fed only by pushed events have nothing to sync.
	tables = slices.DeleteFunc(tables, func(t connectors.TableInfo) bool {
		tcaps := t.Capabilities
		if tcaps == 0 {
			tcaps = caps
		}
		return t.Partition != nil && !tcaps.Has(connectors.Read)
	})
	if len(tables) == 0 {
		return fmt.Errorf("source %s: the connector offers no tables", req.Source)
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		if err := schemas.ValidateName("table", t.Name); err != nil {
			return fmt.Errorf("source %s: %w", req.Source, err)
		}
		names[i] = t.Name
	}
	var remote *schemas.RemoteAttach
	anyRemote := slices.ContainsFunc(tables, func(t connectors.TableInfo) bool { return remoteTable(src, conn, t) })
	if r, ok := conn.(connectors.Remoter); ok && caps.Has(connectors.Remote) && anyRemote {
		info, err := r.Remote(ctx)
		if err != nil {
			return fmt.Errorf("remote info of %s: %w", req.Source, err)
		}
		if remote, err = remoteRow(info); err != nil {
			return fmt.Errorf("remote info of %s: %w", req.Source, err)
		}
	}
	state := p.state
	if err := p.publishEvent(ctx, schemas.Event{Type: schemas.EventRunStarted, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Tables: names}); err != nil {
		return err
	}
	p.log.Info("sync run started", "run", req.RunID, "source", req.Source, "tables", len(tables))

	// Partitioned tables are backfilled together, one pass over the source.
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
	sem := make(chan struct{}, p.opts.TableConcurrency)
	var wg sync.WaitGroup
	if len(parted) > 0 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			partedResults = p.changeTables(ctx, req, src, state, conn, parted)
			for _, r := range partedResults {
				metrics.TablesRead.WithLabelValues(r.Status).Inc()
			}
		}()
	}
	for i, t := range plain {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = p.table(ctx, req, src, state, conn, t)
			metrics.TablesRead.WithLabelValues(results[i].Status).Inc()
		}()
	}
	wg.Wait()
	results = append(results, partedResults...)
	if err := ctx.Err(); err != nil {
		return err
	}
	done := schemas.Event{Type: schemas.EventRunDone, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Results: results, Remote: remote,
		Skipped: skipped}
	if err := p.publishEvent(ctx, done); err != nil {
		return err
	}
	var failed int
	for _, r := range results {
		if r.Status == schemas.StatusFailed {
			failed++
		}
	}
	p.log.Info("sync run produced", "run", req.RunID, "source", req.Source, "tables", len(results), "failed", failed)
	return nil
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
func remoteTable(src config.Source, conn connectors.Connector, t connectors.TableInfo) bool {
	caps := t.Capabilities
	if caps == 0 {
		caps = conn.Capabilities()
	}
	switch src.Table(t.Name).QueryMode {
	case "remote":
		return true
	case "local", "materialized":
		return false
	}
	_, canRead := conn.(connectors.Reader)
	return caps.Has(connectors.Remote) && (t.PreferRemote || !caps.Has(connectors.Read) || !canRead)
}

// table reads one table and publishes its batches; it never returns an error,
// only a result with status failed.
func (p *Producer) table(ctx context.Context, req schemas.SyncRequest, src config.Source, state jetstream.KeyValue, conn connectors.Connector, t connectors.TableInfo) (res schemas.TableResult) {
	res = schemas.TableResult{Table: t.Name, Status: schemas.StatusDone, QueryMode: schemas.ModeLocal}
	log := p.log.With("run", req.RunID, "source", req.Source, "table", t.Name)
	fail := func(err error) schemas.TableResult {
		res.Status, res.Error = schemas.StatusFailed, err.Error()
		log.Warn("table failed", "err", err)
		p.publishEvent(ctx, schemas.Event{Type: schemas.EventTableFailed, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Table: t.Name,
			Error: res.Error, SchemaChanges: res.SchemaChanges})
		return res
	}
	caps := t.Capabilities
	if caps == 0 {
		caps = conn.Capabilities()
	}
	reader, canRead := conn.(connectors.Reader)
	if remoteTable(src, conn, t) || !caps.Has(connectors.Read) || !canRead {
		if src.Table(t.Name).QueryMode == "remote" && (!caps.Has(connectors.Remote) || (len(t.RemotePath) == 0 && t.RemoteQuery == nil)) {
			return fail(fmt.Errorf("table %s: table_options.%s.query_mode is remote, but connector %s offers it only locally", t.Name, t.Name, src.Connector))
		}
		if caps.Has(connectors.Remote) {
			res.QueryMode = schemas.ModeRemote
			ev := schemas.Event{Type: schemas.EventTableDone, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Table: t.Name,
				Description: t.Description, QueryMode: schemas.ModeRemote, RemotePath: t.RemotePath}
			if q := t.RemoteQuery; q != nil {
				ev.RemoteQuery = &schemas.RemoteQuery{Function: q.Function, Args: q.Args}
			}
			if t.Schema != nil {
				ev.Schema, _ = schemas.EncodeSchema(t.Schema)
			}
			if err := p.publishEvent(ctx, ev); err != nil {
				return fail(err)
			}
			return res
		}
		return fail(fmt.Errorf("table %s: declares neither read nor remote", t.Name))
	}
	opts := src.Table(t.Name)
	if opts.QueryMode == schemas.ModeMaterialized {
		res.QueryMode = schemas.ModeMaterialized
	}
	if opts.Query != "" {
		// The table is the query's result: its schema is the query's.
		t.Schema = nil
	}
	pk := opts.PrimaryKey
	if len(pk) == 0 {
		pk = t.PrimaryKey
	}
	prevSchema, err := loadSchema(ctx, state, req.Source, t.Name)
	if err != nil {
		return fail(err)
	}
	var cursor *schemas.Cursor
	var cursorRev uint64
	if opts.IncrementalKey != "" || opts.Incremental {
		if cursor, cursorRev, err = loadCursor(ctx, state, req.Source, t.Name); err != nil {
			return fail(err)
		}
	}
	plan := tablePlan{prevSchema: prevSchema, policy: opts.SchemaPolicy, incrementalKey: opts.IncrementalKey, pk: pk, mode: schemas.WriteReplace}
	if opts.Incremental {
		sr, ok := conn.(connectors.SourceCursorReader)
		if !ok {
			return fail(fmt.Errorf("table %s: table_options.%s.incremental needs a connector that keeps the source's change time; connector %s does not: use incremental_key with a column instead",
				t.Name, t.Name, src.Connector))
		}
		if len(pk) == 0 {
			return fail(fmt.Errorf("table %s: table_options.%s.incremental needs a primary key to merge changed rows by; the table has none (set table_options.%s.primary_key or read it in full)",
				t.Name, t.Name, t.Name))
		}
		plan.source = sr
		if cursor != nil && cursor.Column == schemas.SourceCursorColumn && !req.FullRefresh {
			plan.cursor = cursor
		}
	} else if cursor != nil && cursor.Column == opts.IncrementalKey && !req.FullRefresh {
		plan.cursor = cursor
	}
	// A table whose schema is known up front is checked before reading.
	if t.Schema != nil {
		if err := plan.check(t.Schema); err != nil {
			res.SchemaChanges = plan.changes
			return fail(err)
		}
	}
	start := schemas.Event{Type: schemas.EventTableStarted, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Table: t.Name,
		Description: t.Description, SchemaChanges: plan.changes}
	if t.Schema != nil {
		b, err := schemas.EncodeSchema(t.Schema)
		if err != nil {
			return fail(err)
		}
		start.Schema = b
	}
	if err := p.publishEvent(ctx, start); err != nil {
		return fail(err)
	}
	plan.query = opts.Query
	schema, batches, rows, next, err := p.publishTable(ctx, req, reader, t, &plan, log)
	res.Batches, res.Rows, res.SchemaChanges, res.WriteMode = batches, rows, plan.changes, plan.mode
	if err != nil {
		return fail(err)
	}
	enc, err := schemas.EncodeSchema(schema)
	if err != nil {
		return fail(err)
	}
	done := schemas.Event{Type: schemas.EventTableDone, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Table: t.Name,
		Description: t.Description, QueryMode: res.QueryMode, Schema: enc, Batches: batches, Rows: rows,
		SchemaChanges: plan.changes, WriteMode: plan.mode, PrimaryKey: pk, Cursor: next, CursorRevision: cursorRev}
	if err := p.publishEvent(ctx, done); err != nil {
		return fail(err)
	}
	log.Debug("table produced", "batches", batches, "rows", rows, "mode", plan.mode)
	return res
}

// tablePlan is how one table is read this run: the schema check and whether
// the read is incremental.
type tablePlan struct {
	prevSchema     *arrow.Schema
	policy         string
	incrementalKey string
	pk             []string
	cursor         *schemas.Cursor // committed cursor to read from; nil: full read
	// source, when set, reads changes by the source's own cursor.
	source connectors.SourceCursorReader
	// query is the source's own query for the table, if any.
	query   string
	changes []string
	mode    string
	checked bool
}

// check compares schema with the last published one and settles the plan:
// a frozen table with changes fails; a changed schema forces a full read,
// since old rows cannot be merged with rows of another shape.
func (pl *tablePlan) check(schema *arrow.Schema) error {
	pl.checked = true
	pl.changes = schemas.DiffSchemas(pl.prevSchema, schema)
	if len(pl.changes) > 0 && pl.policy == config.PolicyFreeze {
		return fmt.Errorf("schema changed and the table's schema policy is freeze (%s); its previous data stays published",
			strings.Join(pl.changes, "; "))
	}
	if len(pl.changes) > 0 {
		pl.cursor = nil
	}
	if pl.cursor != nil {
		pl.mode = schemas.WriteAppend
		if len(pl.pk) > 0 {
			pl.mode = schemas.WriteMerge
		}
	}
	return nil
}

func loadSchema(ctx context.Context, kv jetstream.KeyValue, source, table string) (*arrow.Schema, error) {
	e, err := kv.Get(ctx, schemas.SchemaKey(source, table))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load schema state of %s: %w", table, err)
	}
	s, err := schemas.DecodeSchema(e.Value())
	if err != nil {
		return nil, fmt.Errorf("load schema state of %s: %w", table, err)
	}
	return s, nil
}

func loadCursor(ctx context.Context, kv jetstream.KeyValue, source, table string) (*schemas.Cursor, uint64, error) {
	e, err := kv.Get(ctx, schemas.CursorKey(source, table))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("load cursor of %s: %w", table, err)
	}
	c, err := schemas.DecodeCursor(e.Value())
	if err != nil {
		return nil, 0, fmt.Errorf("load cursor of %s: %w", table, err)
	}
	return &c, e.Revision(), nil
}

// publishTable reads the table and publishes every batch, returning the
// table's schema, how many messages and rows it published and the cursor to
// commit. A panic in the connector is turned into an error.
func (p *Producer) publishTable(ctx context.Context, req schemas.SyncRequest, r connectors.Reader, t connectors.TableInfo, plan *tablePlan, log *slog.Logger) (schema *arrow.Schema, seq, rows int64, next *schemas.Cursor, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("connector panicked reading %s: %v\n%s", t.Name, v, debug.Stack())
		}
	}()
	schema = t.Schema
	out := p.newSink(req.RunID, req.Source, t.Name, req.Attempt, schema, log)
	defer func() { seq, rows = out.seq, out.rows }()
	fail := func(err error) (*arrow.Schema, int64, int64, *schemas.Cursor, error) {
		out.wait(ctx, 0)
		return schema, 0, 0, nil, err
	}
	var track *tracker
	opts := connectors.ReadOptions{BatchSize: connectors.DefaultBatchSize, IncrementalKey: plan.incrementalKey, Query: plan.query}
	if plan.cursor != nil {
		opts.IncrementalValue = plan.cursor.Value
	}
	publish := func(rec arrow.RecordBatch) error { return out.publish(ctx, rec) }
	lastProgress := time.Now()
	batches := r.Read(ctx, t.Name, opts)
	var sourceNext func() string
	if plan.source != nil {
		from := ""
		if plan.cursor != nil {
			from = plan.cursor.Value
		}
		opts.IncrementalKey, opts.IncrementalValue = "", ""
		batches, sourceNext = plan.source.ReadChanged(ctx, t.Name, from, opts)
	}
	for rec, rerr := range batches {
		if rerr != nil {
			return fail(fmt.Errorf("read %s: %w", t.Name, rerr))
		}
		if schema == nil {
			schema = rec.Schema()
			out.fingerprint = schemas.Fingerprint(schema)
		} else if !rec.Schema().Equal(schema) {
			return fail(fmt.Errorf("read %s: batch schema does not match the declared schema:\n got: %s\nwant: %s", t.Name, rec.Schema(), schema))
		}
		if !plan.checked {
			incremental := plan.cursor != nil
			if err := plan.check(schema); err != nil {
				return fail(err)
			}
			if incremental && plan.cursor == nil {
				return fail(fmt.Errorf("table %s: schema changed (%s) during an incremental read; run the sync with --full-refresh",
					t.Name, strings.Join(plan.changes, "; ")))
			}
		}
		if plan.incrementalKey != "" && track == nil {
			if track, err = newTracker(schema, plan.incrementalKey, plan.pk, plan.cursor); err != nil {
				return fail(fmt.Errorf("table %s: %w", t.Name, err))
			}
		}
		if rec.NumRows() == 0 {
			continue
		}
		if track == nil {
			if err := publish(rec); err != nil {
				return fail(err)
			}
		} else {
			kept := track.keep(rec)
			for i, k := range kept {
				if err := publish(k); err != nil {
					for _, r := range kept[i:] {
						r.Release()
					}
					return fail(err)
				}
				k.Release()
			}
		}
		if time.Since(lastProgress) >= progressEvery {
			lastProgress = time.Now()
			p.publishEvent(ctx, schemas.Event{Type: schemas.EventTableProgress, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Table: t.Name, Batches: out.seq, Rows: out.rows})
		}
	}
	if err := out.wait(ctx, 0); err != nil {
		return fail(err)
	}
	if schema == nil {
		return fail(fmt.Errorf("read %s: no schema declared and no batch read", t.Name))
	}
	if !plan.checked {
		if err := plan.check(schema); err != nil {
			return fail(err)
		}
	}
	switch {
	case sourceNext != nil:
		next = &schemas.Cursor{Column: schemas.SourceCursorColumn, Type: "source", Value: sourceNext()}
	case track != nil:
		next = track.next()
	case plan.incrementalKey != "":
		next = plan.cursor
	}
	return schema, 0, 0, next, nil
}

// waitBacklog blocks while more than MaxBacklog batches wait for a writer.
func (p *Producer) waitBacklog(ctx context.Context, log *slog.Logger) error {
	cons, err := p.opts.JS.Consumer(ctx, schemas.DataStream, schemas.WriterConsumer)
	if err != nil {
		// No writer consumer yet: writers have not started; the stream
		// keeps the batches until they do.
		return nil
	}
	delay := 10 * time.Millisecond
	warned := time.Now()
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("check writer backlog: %w", err)
		}
		if info.NumPending <= uint64(p.opts.MaxBacklog) {
			return nil
		}
		if time.Since(warned) > 30*time.Second {
			warned = time.Now()
			log.Warn("waiting for writers: backlog over limit", "pending", info.NumPending, "limit", p.opts.MaxBacklog)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

// publishEvent publishes e and waits for the stream's acknowledgement.
func (p *Producer) publishEvent(ctx context.Context, e schemas.Event) error {
	return natsbus.PublishEvent(ctx, p.opts.JS, e)
}
