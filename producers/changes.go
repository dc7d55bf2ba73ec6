package producers

import (
	"context"
	"fmt"
	"hash/fnv"
	"runtime/debug"
	"slices"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go"
)

// changeSet turns changes into the stored rows of partitioned tables,
// grouped by table and month, ready to publish.
type changeSet struct {
	tables map[string]connectors.TableInfo
	// cols maps a change's rows onto the published columns (the name
	// rule); a table missing from it keeps its rows as they are.
	cols   map[string]connectors.Columns
	stored map[string]*arrow.Schema
	mem    memory.Allocator
	recs   map[partKey][]arrow.RecordBatch
	rows   map[partKey]int64
	total  int64
}

type partKey struct{ table, month string }

func newChangeSet(tables []connectors.TableInfo, cols map[string]connectors.Columns) *changeSet {
	cs := &changeSet{tables: map[string]connectors.TableInfo{}, cols: cols, stored: map[string]*arrow.Schema{}, mem: memory.DefaultAllocator,
		recs: map[partKey][]arrow.RecordBatch{}, rows: map[partKey]int64{}}
	for _, t := range tables {
		cs.tables[t.Name] = t
		cs.stored[t.Name] = schemas.PartitionedSchema(t.Schema)
	}
	return cs
}

// add stores one change: its rows in every table of the set, a marker row
// where it has none (or deletes the key). event breaks ties between changes
// of one version. It takes ownership of the change's batches.
func (cs *changeSet) add(ch connectors.Change, event int64) ([]partKey, error) {
	defer ch.Release()
	if err := ch.Validate(); err != nil {
		return nil, err
	}
	for name := range ch.Tables {
		if _, ok := cs.tables[name]; !ok {
			return nil, fmt.Errorf("change of %s has rows for %q, which is not a partitioned table of this sync", ch.Key, name)
		}
	}
	month := schemas.Month(ch.Time)
	var touched []partKey
	for name, t := range cs.tables {
		if slices.Contains(ch.Keep, name) {
			continue // no rows and no marker: the key's rows stay as published
		}
		rows := ch.Tables[name]
		if c, ok := cs.cols[name]; ok && c.Keep != nil && rows != nil {
			p, err := c.Project(name, rows)
			if err != nil {
				return nil, fmt.Errorf("table %s, key %s: %w", name, ch.Key, err)
			}
			defer p.Release()
			rows = p
		}
		rec, err := schemas.ChangeRows(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn, ch.Key, ch.Time, ch.Version, ch.Deleted, event, rows, cs.mem)
		if err != nil {
			return nil, fmt.Errorf("table %s, key %s: %w", name, ch.Key, err)
		}
		k := partKey{name, month}
		cs.recs[k] = append(cs.recs[k], rec)
		cs.rows[k] += rec.NumRows()
		cs.total += rec.NumRows()
		touched = append(touched, k)
	}
	return touched, nil
}

// take removes and returns the rows of one table and month as one batch.
func (cs *changeSet) take(k partKey) (arrow.RecordBatch, error) {
	recs := cs.recs[k]
	delete(cs.recs, k)
	cs.total -= cs.rows[k]
	delete(cs.rows, k)
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	return schemas.ConcatBatches(cs.stored[k.table], recs, cs.mem)
}

func (cs *changeSet) release() {
	for k := range cs.recs {
		for _, r := range cs.recs[k] {
			r.Release()
		}
		delete(cs.recs, k)
	}
}

// partitionHeader says where a data message's rows land.
func partitionHeader(t connectors.TableInfo, month string) nats.Header {
	h := nats.Header{}
	h.Set(schemas.HeaderMonth, month)
	h.Set(schemas.HeaderKeyColumn, t.Partition.KeyColumn)
	return h
}

// changeTables backfills a run's partitioned tables in one pass of the
// connector's Changes: every change becomes rows (or a marker) in every
// table, published per table and month. The version cursor (the newest
// change published) is kept with the first table.
func (r *run) changeTables(ctx context.Context, tables []connectors.TableInfo) []schemas.TableResult {
	results := make([]schemas.TableResult, len(tables))
	failAll := func(group []int, err error) []schemas.TableResult {
		for _, i := range group {
			results[i] = r.failTable(ctx, results[i], err)
		}
		return results
	}
	group := r.checkPartitioned(ctx, tables, results)
	if len(group) == 0 {
		return results
	}
	cr, ok := r.conn.(connectors.ChangeReader)
	if !ok {
		for _, i := range group {
			failAll([]int{i}, fmt.Errorf("table %s is partitioned but connector %s has no Changes method to backfill it", tables[i].Name, r.src.Connector))
		}
		return results
	}
	c, cursorRev, err := loadCursor(ctx, r.state, r.req.Source, tables[group[0]].Name)
	if err != nil {
		return failAll(group, err)
	}
	var cur backfillCursor
	if c != nil && c.Column == schemas.VersionColumn && !r.req.FullRefresh {
		cur = backfillCursor{since: c.Value, boundary: c.Boundary}
	}
	var inGroup []connectors.TableInfo
	sinks := map[string]*sink{}
	for _, i := range group {
		t := tables[i]
		inGroup = append(inGroup, t)
		enc, _ := schemas.EncodeSchema(t.Schema)
		start := r.event(schemas.EventTableStarted, t.Name)
		start.Description, start.Schema, start.SchemaChanges = t.Description, enc, results[i].SchemaChanges
		if err := r.publish(ctx, start); err != nil {
			return failAll([]int{i}, err)
		}
		sinks[t.Name] = r.p.newSink(r.req.RunID, r.req.Source, t.Name, r.req.Attempt, schemas.PartitionedSchema(t.Schema), r.log.With("table", t.Name))
	}
	started := time.Now()
	maxVersion, boundary, err := r.backfillChanges(ctx, cr, cur.since, cur.boundary, inGroup, sinks)
	for _, s := range sinks {
		if werr := s.wait(ctx, 0); err == nil && werr != nil {
			err = werr
		}
	}
	if err != nil {
		return failAll(group, err)
	}
	for n, i := range group {
		t, s := tables[i], sinks[tables[i].Name]
		done := r.event(schemas.EventTableDone, t.Name)
		done.Schema, _ = schemas.EncodeSchema(t.Schema)
		done.Description, done.QueryMode, done.Batches, done.Rows = t.Description, schemas.ModeLocal, s.seq, s.rows
		done.SchemaChanges, done.WriteMode, done.PrimaryKey = results[i].SchemaChanges, schemas.WritePartitioned, []string{t.Partition.KeyColumn}
		if n == 0 {
			done.CursorRevision, done.Cursor = cursorRev, cur.next(maxVersion, boundary)
		}
		if cur.since == "" && t.Partition.FullBackfillDeletes {
			done.Reconcile = started.Add(-connectors.ReconcileMargin).UnixMicro()
		}
		results[i].Batches, results[i].Rows = s.seq, s.rows
		if err := r.publish(ctx, done); err != nil {
			failAll([]int{i}, err)
		}
	}
	return results
}

// backfillCursor is where an incremental backfill starts: the version
// published last and the keys already published at exactly it.
type backfillCursor struct {
	since    string
	boundary []string
}

// next is the cursor to commit after a backfill that read up to maxVersion
// (0: nothing newer), with the keys at it.
func (c backfillCursor) next(maxVersion int64, boundary []string) *schemas.Cursor {
	switch {
	case maxVersion != 0:
		return &schemas.Cursor{Column: schemas.VersionColumn, Type: "timestamp",
			Value: time.UnixMicro(maxVersion).UTC().Format(time.RFC3339Nano), Boundary: boundary}
	case c.since != "":
		return &schemas.Cursor{Column: schemas.VersionColumn, Type: "timestamp", Value: c.since, Boundary: c.boundary}
	}
	return nil
}

// checkPartitioned fills the results of the partitioned tables and returns
// the indexes of those that can be backfilled: their schema suits a
// partitioned table and passes the schema policy. Partitions keep the rows
// of earlier schemas and the view reads them by column name, so a change is
// published as it is, unless frozen.
func (r *run) checkPartitioned(ctx context.Context, tables []connectors.TableInfo, results []schemas.TableResult) []int {
	var group []int
	for i, t := range tables {
		results[i] = schemas.TableResult{Table: t.Name, Status: schemas.StatusDone, QueryMode: schemas.ModeLocal, WriteMode: schemas.WritePartitioned}
		err := schemas.CheckPartitioned(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn)
		if err != nil {
			err = fmt.Errorf("table %s: %w", t.Name, err)
		}
		var prev *arrow.Schema
		if err == nil {
			prev, err = loadSchema(ctx, r.state, r.req.Source, t.Name)
		}
		if err == nil {
			plan := tablePlan{prevSchema: prev, policy: r.src.Table(t.Name).SchemaPolicy, mode: schemas.WritePartitioned}
			err = plan.check(t.Schema)
			results[i].SchemaChanges = plan.changes
		}
		if err != nil {
			results[i] = r.failTable(ctx, results[i], err)
			continue
		}
		group = append(group, i)
	}
	return group
}

// backfill is one pass over a connector's changes into the sinks of the
// partitioned tables.
type backfill struct {
	r     *run
	cs    *changeSet
	sinks map[string]*sink
	batch int64
	// sinceV is the cursor's version; published the keys at exactly it
	// already published.
	sinceV    int64
	published map[string]bool
	// maxVersion is the newest version read, atMax the keys at it.
	maxVersion int64
	atMax      []string
	n, skipped int64
}

// backfillChanges reads every change and publishes its rows; it returns the
// newest version read and the identities of the keys at that version (the
// cursor's boundary). An incremental read (since set) drops changes older
// than the cursor and the boundary keys at exactly the cursor: they are
// published already, so a read that finds nothing new publishes nothing.
func (r *run) backfillChanges(ctx context.Context, cr connectors.ChangeReader, since string, prevBoundary []string,
	tables []connectors.TableInfo, sinks map[string]*sink) (maxVersion int64, boundary []string, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("connector panicked reading changes: %v\n%s", v, debug.Stack())
		}
	}()
	b := &backfill{r: r, cs: newChangeSet(tables, r.columns), sinks: sinks, batch: int64(connectors.DefaultBatchSize),
		sinceV: -1 << 63, published: map[string]bool{}}
	defer b.cs.release()
	if since != "" {
		t, err := time.Parse(time.RFC3339Nano, since)
		if err != nil {
			return 0, nil, fmt.Errorf("cursor %q is not an RFC 3339 time", since)
		}
		b.sinceV = t.UnixMicro()
		for _, k := range prevBoundary {
			b.published[k] = true
		}
	}
	// Event numbers of a backfill: unique per change, and distinct from the
	// stream's (the bus sequence of a webhook, far below this base).
	base := time.Now().UnixMicro() * 1000
	last := time.Now()
	for ch, rerr := range cr.Changes(ctx, connectors.ReadOptions{IncrementalKey: schemas.VersionColumn, IncrementalValue: since, BatchSize: int(b.batch)}) {
		if rerr != nil {
			return 0, nil, fmt.Errorf("read changes: %w", rerr)
		}
		if err := b.add(ctx, ch, base); err != nil {
			return 0, nil, err
		}
		if time.Since(last) >= progressEvery {
			last = time.Now()
			b.progress(ctx)
		}
	}
	if err := b.flushAll(ctx); err != nil {
		return 0, nil, err
	}
	r.log.Debug("changes read", "changes", b.n, "already_published", b.skipped)
	if b.maxVersion == b.sinceV {
		// Nothing newer than the cursor: its boundary grows by the keys
		// first seen at it now.
		for _, k := range prevBoundary {
			if !slices.Contains(b.atMax, k) {
				b.atMax = append(b.atMax, k)
			}
		}
	}
	slices.Sort(b.atMax)
	return b.maxVersion, b.atMax, nil
}

// add takes one change (unless it is published already) and publishes
// what filled a batch.
func (b *backfill) add(ctx context.Context, ch connectors.Change, base int64) error {
	id := keyIdentity(ch.Key)
	if ch.Version < b.sinceV || (ch.Version == b.sinceV && b.published[id]) {
		ch.Release()
		b.skipped++
		return nil
	}
	if ch.Version > b.maxVersion {
		b.maxVersion, b.atMax = ch.Version, b.atMax[:0]
	}
	if ch.Version == b.maxVersion && !slices.Contains(b.atMax, id) {
		b.atMax = append(b.atMax, id)
	}
	touched, err := b.cs.add(ch, base+b.n)
	if err != nil {
		return err
	}
	b.n++
	for _, k := range touched {
		if b.cs.rows[k] >= b.batch {
			if err := b.flush(ctx, k); err != nil {
				return err
			}
		}
	}
	if b.cs.total >= 4*b.batch {
		return b.flushAll(ctx)
	}
	return nil
}

func (b *backfill) flush(ctx context.Context, k partKey) error {
	rec, err := b.cs.take(k)
	if err != nil {
		return err
	}
	defer rec.Release()
	s := b.sinks[k.table]
	s.header = partitionHeader(b.cs.tables[k.table], k.month)
	return s.publish(ctx, rec)
}

func (b *backfill) flushAll(ctx context.Context) error {
	for k := range b.cs.recs {
		if err := b.flush(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

func (b *backfill) progress(ctx context.Context) {
	for name, s := range b.sinks {
		ev := b.r.event(schemas.EventTableProgress, name)
		ev.Batches, ev.Rows = s.seq, s.rows
		b.r.publish(ctx, ev)
	}
}

// keyIdentity is the cursor-boundary identity of a key group.
func keyIdentity(key string) string {
	h := fnv.New64a()
	h.Write([]byte(key))
	return fmt.Sprintf("%016x", h.Sum64())
}
