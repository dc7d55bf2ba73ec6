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
	stored map[string]*arrow.Schema
	mem    memory.Allocator
	recs   map[partKey][]arrow.RecordBatch
	rows   map[partKey]int64
	total  int64
}

type partKey struct{ table, month string }

func newChangeSet(tables []connectors.TableInfo) *changeSet {
	cs := &changeSet{tables: map[string]connectors.TableInfo{}, stored: map[string]*arrow.Schema{}, mem: memory.DefaultAllocator,
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
		rec, err := schemas.ChangeRows(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn, ch.Key, ch.Time, ch.Version, ch.Deleted, event, ch.Tables[name], cs.mem)
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
	p, req, src, state, conn, log := r.p, r.req, r.src, r.state, r.conn, r.log
	fail := func(i int, err error) { results[i] = r.failTable(ctx, results[i], err) }
	var group []int
	for i, t := range tables {
		results[i] = schemas.TableResult{Table: t.Name, Status: schemas.StatusDone, QueryMode: schemas.ModeLocal, WriteMode: schemas.WritePartitioned}
		if err := schemas.CheckPartitioned(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn); err != nil {
			fail(i, fmt.Errorf("table %s: %w", t.Name, err))
			continue
		}
		prev, err := loadSchema(ctx, state, req.Source, t.Name)
		if err != nil {
			fail(i, err)
			continue
		}
		// Partitions keep the rows of earlier schemas; the view reads them by
		// column name, so a change is published as it is, unless frozen.
		plan := tablePlan{prevSchema: prev, policy: src.Table(t.Name).SchemaPolicy, mode: schemas.WritePartitioned}
		err = plan.check(t.Schema)
		results[i].SchemaChanges = plan.changes
		if err != nil {
			fail(i, err)
			continue
		}
		group = append(group, i)
	}
	if len(group) == 0 {
		return results
	}
	cr, ok := conn.(connectors.ChangeReader)
	if !ok {
		for _, i := range group {
			fail(i, fmt.Errorf("table %s is partitioned but connector %s has no Changes method to backfill it", tables[i].Name, src.Connector))
		}
		return results
	}
	first := tables[group[0]]
	var since string
	var prevBoundary []string
	var cursorRev uint64
	if c, rev, err := loadCursor(ctx, state, req.Source, first.Name); err != nil {
		for _, i := range group {
			fail(i, err)
		}
		return results
	} else if c != nil && c.Column == schemas.VersionColumn && !req.FullRefresh {
		since, cursorRev, prevBoundary = c.Value, rev, c.Boundary
	} else {
		cursorRev = rev
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
			fail(i, err)
			return results
		}
		sinks[t.Name] = p.newSink(req.RunID, req.Source, t.Name, req.Attempt, schemas.PartitionedSchema(t.Schema), log.With("table", t.Name))
	}
	started := time.Now()
	maxVersion, boundary, err := r.backfillChanges(ctx, cr, since, prevBoundary, inGroup, sinks)
	for _, s := range sinks {
		if werr := s.wait(ctx, 0); err == nil && werr != nil {
			err = werr
		}
	}
	if err != nil {
		for _, i := range group {
			fail(i, err)
		}
		return results
	}
	for n, i := range group {
		t := tables[i]
		s := sinks[t.Name]
		enc, _ := schemas.EncodeSchema(t.Schema)
		done := r.event(schemas.EventTableDone, t.Name)
		done.Description, done.QueryMode, done.Schema, done.Batches, done.Rows = t.Description, schemas.ModeLocal, enc, s.seq, s.rows
		done.SchemaChanges, done.WriteMode, done.PrimaryKey = results[i].SchemaChanges, schemas.WritePartitioned, []string{t.Partition.KeyColumn}
		if n == 0 {
			done.CursorRevision = cursorRev
			if maxVersion != 0 {
				done.Cursor = &schemas.Cursor{Column: schemas.VersionColumn, Type: "timestamp",
					Value: time.UnixMicro(maxVersion).UTC().Format(time.RFC3339Nano), Boundary: boundary}
			} else if since != "" {
				done.Cursor = &schemas.Cursor{Column: schemas.VersionColumn, Type: "timestamp", Value: since, Boundary: prevBoundary}
			}
		}
		if since == "" && t.Partition.FullBackfillDeletes {
			done.Reconcile = started.Add(-connectors.ReconcileMargin).UnixMicro()
		}
		results[i].Batches, results[i].Rows = s.seq, s.rows
		if err := r.publish(ctx, done); err != nil {
			fail(i, err)
		}
	}
	return results
}

// backfillChanges reads every change and publishes its rows; it returns the
// newest version read and the identities of the keys at that version (the
// cursor's boundary). An incremental read (since set) drops changes older
// than the cursor and the boundary keys at exactly the cursor: they are
// published already, so a read that finds nothing new publishes nothing.
func (r *run) backfillChanges(ctx context.Context, cr connectors.ChangeReader, since string, prevBoundary []string,
	tables []connectors.TableInfo, sinks map[string]*sink) (maxVersion int64, boundary []string, err error) {
	log := r.log
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("connector panicked reading changes: %v\n%s", v, debug.Stack())
		}
	}()
	cs := newChangeSet(tables)
	defer cs.release()
	batch := int64(connectors.DefaultBatchSize)
	flush := func(k partKey) error {
		rec, err := cs.take(k)
		if err != nil {
			return err
		}
		defer rec.Release()
		s := sinks[k.table]
		s.header = partitionHeader(cs.tables[k.table], k.month)
		return s.publish(ctx, rec)
	}
	flushAll := func() error {
		for k := range cs.recs {
			if err := flush(k); err != nil {
				return err
			}
		}
		return nil
	}
	// Event numbers of a backfill: unique per change, and distinct from the
	// stream's (the bus sequence of a webhook, far below this base).
	base := time.Now().UnixMicro() * 1000
	var n, skipped int64
	last := time.Now()
	var sinceV int64 = -1 << 63
	published := map[string]bool{}
	if since != "" {
		t, err := time.Parse(time.RFC3339Nano, since)
		if err != nil {
			return 0, nil, fmt.Errorf("cursor %q is not an RFC 3339 time", since)
		}
		sinceV = t.UnixMicro()
		for _, b := range prevBoundary {
			published[b] = true
		}
	}
	var atMax []string
	for ch, rerr := range cr.Changes(ctx, connectors.ReadOptions{IncrementalKey: schemas.VersionColumn, IncrementalValue: since, BatchSize: int(batch)}) {
		if rerr != nil {
			return 0, nil, fmt.Errorf("read changes: %w", rerr)
		}
		id := keyIdentity(ch.Key)
		if ch.Version < sinceV || (ch.Version == sinceV && published[id]) {
			ch.Release()
			skipped++
			continue
		}
		if ch.Version > maxVersion {
			maxVersion, atMax = ch.Version, atMax[:0]
		}
		if ch.Version == maxVersion && !slices.Contains(atMax, id) {
			atMax = append(atMax, id)
		}
		touched, err := cs.add(ch, base+n)
		if err != nil {
			return 0, nil, err
		}
		n++
		for _, k := range touched {
			if cs.rows[k] >= batch {
				if err := flush(k); err != nil {
					return 0, nil, err
				}
			}
		}
		if cs.total >= 4*batch {
			if err := flushAll(); err != nil {
				return 0, nil, err
			}
		}
		if time.Since(last) >= progressEvery {
			last = time.Now()
			for name, s := range sinks {
				ev := r.event(schemas.EventTableProgress, name)
				ev.Batches, ev.Rows = s.seq, s.rows
				r.publish(ctx, ev)
			}
		}
	}
	if err := flushAll(); err != nil {
		return 0, nil, err
	}
	log.Debug("changes read", "changes", n, "already_published", skipped)
	if maxVersion == sinceV {
		// Nothing newer than the cursor: its boundary grows by the keys
		// first seen at it now.
		for _, b := range prevBoundary {
			if !slices.Contains(atMax, b) {
				atMax = append(atMax, b)
			}
		}
	}
	slices.Sort(atMax)
	return maxVersion, atMax, nil
}

// keyIdentity is the cursor-boundary identity of a key group.
func keyIdentity(key string) string {
	h := fnv.New64a()
	h.Write([]byte(key))
	return fmt.Sprintf("%016x", h.Sum64())
}
