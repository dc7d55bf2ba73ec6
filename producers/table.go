package producers

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"runtime/debug"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nats-io/nats.go/jetstream"
)

// table reads one table and publishes its batches; it never returns an
// error, only a result with status failed.
func (r *run) table(ctx context.Context, t connectors.TableInfo) schemas.TableResult {
	res := schemas.TableResult{Table: t.Name, Status: schemas.StatusDone, QueryMode: schemas.ModeLocal}
	reader, canRead := r.conn.(connectors.Reader)
	if r.remoteTable(t) || !tableCaps(r.conn, t).Has(connectors.Read) || !canRead {
		return r.remoteTableDone(ctx, res, t)
	}
	opts := r.src.Table(t.Name)
	if opts.QueryMode == schemas.ModeMaterialized {
		res.QueryMode = schemas.ModeMaterialized
	}
	cols := r.columns[t.Name]
	if opts.Query != "" {
		// The table is the query's result: its schema is the query's.
		t.Schema, cols = nil, connectors.Columns{}
	}
	plan, err := r.planTable(ctx, t, opts)
	if err == nil {
		err = r.startTable(ctx, t, plan)
	}
	if err != nil {
		res.SchemaChanges = plan.changes
		return r.failTable(ctx, res, err)
	}
	out := r.publishTable(ctx, reader, t, plan, cols)
	res.Batches, res.Rows, res.SchemaChanges, res.WriteMode = out.batches, out.rows, plan.changes, plan.mode
	if out.err != nil {
		return r.failTable(ctx, res, out.err)
	}
	enc, err := schemas.EncodeSchema(out.schema)
	if err != nil {
		return r.failTable(ctx, res, err)
	}
	done := r.event(schemas.EventTableDone, t.Name)
	done.Description, done.QueryMode, done.Schema, done.Batches, done.Rows = t.Description, res.QueryMode, enc, out.batches, out.rows
	done.SchemaChanges, done.WriteMode, done.PrimaryKey, done.Cursor, done.CursorRevision = plan.changes, plan.mode, plan.pk, out.next, plan.cursorRev
	if err := r.publish(ctx, done); err != nil {
		return r.failTable(ctx, res, err)
	}
	r.log.Debug("table produced", "table", t.Name, "batches", out.batches, "rows", out.rows, "mode", plan.mode)
	return res
}

// remoteTableDone publishes a table the extract reads from the source
// itself: nothing is read, table_done describes the view.
func (r *run) remoteTableDone(ctx context.Context, res schemas.TableResult, t connectors.TableInfo) schemas.TableResult {
	caps := tableCaps(r.conn, t)
	if r.src.Table(t.Name).QueryMode == schemas.ModeRemote && (!caps.Has(connectors.Remote) || (len(t.RemotePath) == 0 && t.RemoteQuery == nil)) {
		return r.failTable(ctx, res, fmt.Errorf("table %s: table_options.%s.query_mode is remote, but connector %s offers it only locally",
			t.Name, t.Name, r.src.Connector))
	}
	if !caps.Has(connectors.Remote) {
		return r.failTable(ctx, res, fmt.Errorf("table %s: declares neither read nor remote", t.Name))
	}
	res.QueryMode = schemas.ModeRemote
	ev := r.event(schemas.EventTableDone, t.Name)
	ev.Description, ev.QueryMode, ev.RemotePath = t.Description, schemas.ModeRemote, t.RemotePath
	if q := t.RemoteQuery; q != nil {
		ev.RemoteQuery = &schemas.RemoteQuery{Function: q.Function, Args: q.Args}
	}
	if t.Schema != nil {
		ev.Schema, _ = schemas.EncodeSchema(t.Schema)
	}
	if err := r.publish(ctx, ev); err != nil {
		return r.failTable(ctx, res, err)
	}
	return res
}

// startTable announces the table with its declared schema, if any.
func (r *run) startTable(ctx context.Context, t connectors.TableInfo, plan *tablePlan) error {
	start := r.event(schemas.EventTableStarted, t.Name)
	start.Description, start.SchemaChanges = t.Description, plan.changes
	if t.Schema != nil {
		b, err := schemas.EncodeSchema(t.Schema)
		if err != nil {
			return err
		}
		start.Schema = b
	}
	return r.publish(ctx, start)
}

// tablePlan is how one table is read this run: the schema check and whether
// the read is incremental.
type tablePlan struct {
	prevSchema     *arrow.Schema
	policy         string
	incrementalKey string
	pk             []string
	cursor         *schemas.Cursor // committed cursor to read from; nil: full read
	cursorRev      uint64          // the revision of the cursor read (0: none)
	// source, when set, reads changes by the source's own cursor.
	source connectors.SourceCursorReader
	// query is the source's own query for the table, if any.
	query   string
	changes []string
	mode    string
	checked bool
}

// planTable loads the table's published schema and cursor and settles how
// it is read; a table whose schema is known up front is checked now.
func (r *run) planTable(ctx context.Context, t connectors.TableInfo, opts TablePolicy) (*tablePlan, error) {
	plan := &tablePlan{policy: opts.SchemaPolicy, incrementalKey: opts.IncrementalKey, pk: opts.PrimaryKey,
		mode: schemas.WriteReplace, query: opts.Query}
	if len(plan.pk) == 0 {
		plan.pk = t.PrimaryKey
	}
	var err error
	if plan.prevSchema, err = loadSchema(ctx, r.state, r.req.Source, t.Name); err != nil {
		return plan, err
	}
	var cursor *schemas.Cursor
	if opts.IncrementalKey != "" || opts.Incremental {
		if cursor, plan.cursorRev, err = loadCursor(ctx, r.state, r.req.Source, t.Name); err != nil {
			return plan, err
		}
	}
	fresh := cursor != nil && !r.req.FullRefresh
	if opts.Incremental {
		sr, ok := r.conn.(connectors.SourceCursorReader)
		if !ok {
			return plan, fmt.Errorf("table %s: table_options.%s.incremental needs a connector that keeps the source's change time; connector %s does not: use incremental_key with a column instead",
				t.Name, t.Name, r.src.Connector)
		}
		if len(plan.pk) == 0 {
			return plan, fmt.Errorf("table %s: table_options.%s.incremental needs a primary key to merge changed rows by; the table has none (set table_options.%s.primary_key or read it in full)",
				t.Name, t.Name, t.Name)
		}
		plan.source = sr
		if fresh && cursor.Column == schemas.SourceCursorColumn {
			plan.cursor = cursor
		}
	} else if fresh && cursor.Column == opts.IncrementalKey {
		plan.cursor = cursor
	}
	if t.Schema != nil {
		return plan, plan.check(t.Schema)
	}
	return plan, nil
}

// check compares schema with the last published one and settles the plan:
// a frozen table with changes fails; a changed schema forces a full read,
// since old rows cannot be merged with rows of another shape.
func (pl *tablePlan) check(schema *arrow.Schema) error {
	pl.checked = true
	pl.changes = schemas.DiffSchemas(pl.prevSchema, schema)
	if len(pl.changes) > 0 && pl.policy == PolicyFreeze {
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

// tableOutcome is what reading and publishing a table gave.
type tableOutcome struct {
	schema        *arrow.Schema
	batches, rows int64
	// next is the cursor to commit once the extract is published.
	next *schemas.Cursor
	err  error
}

// tableRead is one table being read and published.
type tableRead struct {
	r     *run
	t     connectors.TableInfo
	plan  *tablePlan
	out   *sink
	track *tracker
	// cols maps the batches the connector delivers onto the published
	// columns; its Raw is nil until the schema is known.
	cols         connectors.Columns
	schema       *arrow.Schema
	lastProgress time.Time
}

// publishTable reads the table and publishes every batch. A panic in the
// connector is turned into an error.
func (r *run) publishTable(ctx context.Context, reader connectors.Reader, t connectors.TableInfo, plan *tablePlan, cols connectors.Columns) (o tableOutcome) {
	rd := &tableRead{r: r, t: t, plan: plan, cols: cols, schema: t.Schema, lastProgress: time.Now(),
		out: r.p.newSink(r.req.RunID, r.req.Source, t.Name, r.req.Attempt, t.Schema, r.log.With("table", t.Name))}
	defer func() {
		if v := recover(); v != nil {
			o.err = fmt.Errorf("connector panicked reading %s: %v\n%s", t.Name, v, debug.Stack())
		}
		o.schema, o.batches, o.rows = rd.schema, rd.out.seq, rd.out.rows
		if o.err != nil {
			rd.out.wait(ctx, 0)
			o.next = nil
		}
	}()
	batches, sourceNext := rd.batches(ctx, reader)
	for rec, err := range batches {
		if err != nil {
			return tableOutcome{err: fmt.Errorf("read %s: %w", t.Name, err)}
		}
		if err := rd.batch(ctx, rec); err != nil {
			return tableOutcome{err: err}
		}
	}
	if err := rd.out.wait(ctx, 0); err != nil {
		return tableOutcome{err: err}
	}
	if rd.schema == nil {
		return tableOutcome{err: fmt.Errorf("read %s: no schema declared and no batch read", t.Name)}
	}
	if !plan.checked {
		if err := plan.check(rd.schema); err != nil {
			return tableOutcome{err: err}
		}
	}
	switch {
	case sourceNext != nil:
		o.next = &schemas.Cursor{Column: schemas.SourceCursorColumn, Type: "source", Value: sourceNext()}
	case rd.track != nil:
		o.next = rd.track.next()
	case plan.incrementalKey != "":
		o.next = plan.cursor
	}
	return o
}

// batches starts the read: by the incremental key, or by the source's own
// change time, whose next cursor sourceNext gives once the read is done.
func (rd *tableRead) batches(ctx context.Context, reader connectors.Reader) (iter.Seq2[arrow.RecordBatch, error], func() string) {
	plan := rd.plan
	opts := connectors.ReadOptions{BatchSize: connectors.DefaultBatchSize, IncrementalKey: plan.incrementalKey, Query: plan.query}
	if plan.cursor != nil {
		opts.IncrementalValue = plan.cursor.Value
	}
	if plan.source == nil {
		return reader.Read(ctx, rd.t.Name, opts), nil
	}
	from := ""
	if plan.cursor != nil {
		from = plan.cursor.Value
	}
	opts.IncrementalKey, opts.IncrementalValue = "", ""
	return plan.source.ReadChanged(ctx, rd.t.Name, from, opts)
}

// batch checks one batch read and publishes it (the rows past the cursor
// of an incremental read), with a progress event about once a second.
func (rd *tableRead) batch(ctx context.Context, rec arrow.RecordBatch) error {
	t, plan := rd.t, rd.plan
	if rd.cols.Raw == nil {
		// No declared schema: the first batch's is the table's, under the
		// name rule like a declared one.
		rd.cols = connectors.ResolveColumns(t.Name, rec.Schema())
		rd.r.skip(rd.cols.Skipped)
		rd.schema = rd.cols.Schema
		rd.out.fingerprint = schemas.Fingerprint(rd.schema)
	}
	rec, err := rd.cols.Project(t.Name, rec)
	if err != nil {
		return err
	}
	defer rec.Release()
	if !plan.checked {
		incremental := plan.cursor != nil
		if err := plan.check(rd.schema); err != nil {
			return err
		}
		if incremental && plan.cursor == nil {
			return fmt.Errorf("table %s: schema changed (%s) during an incremental read; run the sync with --full-refresh",
				t.Name, strings.Join(plan.changes, "; "))
		}
	}
	if plan.incrementalKey != "" && rd.track == nil {
		var err error
		if rd.track, err = newTracker(rd.schema, plan.incrementalKey, plan.pk, plan.cursor); err != nil {
			return fmt.Errorf("table %s: %w", t.Name, err)
		}
	}
	if rec.NumRows() == 0 {
		return nil
	}
	if err := rd.send(ctx, rec); err != nil {
		return err
	}
	if time.Since(rd.lastProgress) >= progressEvery {
		rd.lastProgress = time.Now()
		ev := rd.r.event(schemas.EventTableProgress, t.Name)
		ev.Batches, ev.Rows = rd.out.seq, rd.out.rows
		rd.r.publish(ctx, ev)
	}
	return nil
}

// send publishes rec, or the rows of it past the cursor.
func (rd *tableRead) send(ctx context.Context, rec arrow.RecordBatch) error {
	if rd.track == nil {
		return rd.out.publish(ctx, rec)
	}
	kept := rd.track.keep(rec)
	for i, k := range kept {
		if err := rd.out.publish(ctx, k); err != nil {
			for _, r := range kept[i:] {
				r.Release()
			}
			return err
		}
		k.Release()
	}
	return nil
}
