package finalizer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
)

// claimWindow is how long a streamed batch's seq is remembered: a batch
// redelivered to a second writer (the first died between announcing its
// part and acking) arrives well within it.
const claimWindow = 15 * time.Minute

// streamState is what the finalizer knows of one source's streamed parts.
type streamState struct {
	// pending parts, by table/part, not yet in a published extract.
	pending map[string]*pendingPart
	// claimed seqs: the first part announced with a seq owns it; a later
	// part holding it again is a redelivery's copy.
	claimed   map[tableSeq]time.Time
	lastPrune time.Time
	// tables: description and schema of the streamed tables, as the
	// producer announced them.
	tables map[string]schemas.Event
}

type tableSeq struct {
	table string
	seq   int64
}

type pendingPart struct {
	ev    schemas.Event
	owned []int64 // seqs this part is the first to hold
}

func newStreamState() *streamState {
	return &streamState{pending: map[string]*pendingPart{}, claimed: map[tableSeq]time.Time{}, tables: map[string]schemas.Event{}}
}

// adoptStaged makes pending the streamed parts found in staging whose
// announcement is no longer on the bus (the finalizer was down for longer
// than StreamEventRetention): a part still in staging was never published.
func (o *owner) adoptStaged() {
	f, source := o.f, o.source
	staging, err := f.layout.RunStaging(source, schemas.StreamRun)
	if err != nil {
		return
	}
	parts, _ := filepath.Glob(filepath.Join(staging, "*", "*.part"))
	for _, path := range parts {
		table := filepath.Base(filepath.Dir(path))
		name := filepath.Base(path)
		if want, err := f.layout.TableStaging(source, schemas.StreamRun, table); err != nil || filepath.Dir(path) != want {
			metrics.MalformedInput.WithLabelValues("staged_part").Inc()
			f.log.Warn("staged part outside the layout; left in place", "path", path)
			continue
		}
		if _, known := o.stream.pending[table+"/"+name]; known {
			continue
		}
		ev, err := stagedPart(source, table, path)
		if err != nil {
			f.log.Warn("staged part without announcement is unreadable; left in place", "path", path, "err", err)
			continue
		}
		f.log.Warn("publishing a staged part whose announcement expired", "source", source, "table", table, "part", name)
		o.applyStream(ev)
	}
}

// stagedPart rebuilds a part's batch_written event from the part itself.
func stagedPart(source, table, path string) (schemas.Event, error) {
	name := filepath.Base(path)
	pn, err := schemas.ParsePartName(name)
	if err != nil {
		return schemas.Event{}, err
	}
	if pn.Month == "" {
		return schemas.Event{}, fmt.Errorf("part name %q has no month", name)
	}
	if err := schemas.ValidateName("source", source); err != nil {
		return schemas.Event{}, err
	}
	if err := schemas.ValidateName("table", table); err != nil {
		return schemas.Event{}, err
	}
	r, err := parquetfile.Open(path, 1, nil)
	if err != nil {
		return schemas.Event{}, err
	}
	defer r.Close()
	seqs, rows, err := schemas.ParseSeqs(r.Meta(schemas.SeqsMetaKey))
	if err != nil {
		return schemas.Event{}, err
	}
	key := r.Meta(schemas.KeyColumnMetaKey)
	if key == "" {
		return schemas.Event{}, errors.New("part names no key column")
	}
	st, err := os.Stat(path)
	if err != nil {
		return schemas.Event{}, err
	}
	var total int64
	for _, n := range rows {
		total += n
	}
	ev := schemas.Event{Type: schemas.EventBatchWritten, RunID: schemas.StreamRun, Source: source, Table: table, Attempt: pn.Attempt,
		Part: name, Month: pn.Month, PrimaryKey: []string{key}, Seqs: seqs, SeqRows: rows, Rows: total, Time: st.ModTime().UTC()}
	if err := ev.Validate(); err != nil {
		return schemas.Event{}, err
	}
	return ev, nil
}

// applyStream folds an event of the stream run into the stream state.
func (o *owner) applyStream(ev schemas.Event) {
	st := o.stream
	switch ev.Type {
	case schemas.EventBatchWritten:
		if st.pending[ev.Table+"/"+ev.Part] != nil {
			return // announced again (or adopted from staging before its announcement arrived)
		}
		pp := &pendingPart{ev: ev}
		for _, s := range ev.Seqs {
			k := tableSeq{ev.Table, s}
			if _, ok := st.claimed[k]; ok {
				continue
			}
			st.claimed[k] = ev.Time
			pp.owned = append(pp.owned, s)
		}
		st.pending[ev.Table+"/"+ev.Part] = pp
		if ev.Time.Sub(st.lastPrune) > claimWindow/2 {
			st.lastPrune = ev.Time
			for k, t := range st.claimed {
				if ev.Time.Sub(t) > claimWindow {
					delete(st.claimed, k)
				}
			}
		}
	case schemas.EventStreamPublished:
		for _, p := range ev.Parts {
			delete(st.pending, p)
		}
	case schemas.EventTableStarted:
		st.tables[ev.Table] = ev
	case schemas.EventBatchFailed:
		o.f.log.Warn("a streamed batch was dead-lettered", "source", ev.Source, "table", ev.Table, "seq", ev.Seq, "err", ev.Error)
	}
}

// publishStream moves streamed parts into their partitions and publishes
// an extract reading them. It returns the parts it is done with (published,
// dropped as copies, or set aside as unusable) and the event announcing them.
func (f *Finalizer) publishStream(ctx context.Context, source string, batch []*pendingPart, tables map[string]schemas.Event) ([]string, *schemas.Event, error) {
	start := time.Now()
	dir, dataDir, err := f.sourceDirs(source)
	if err != nil {
		return nil, nil, err
	}
	cat, err := loadCatalog(dir)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().UTC()
	byTable, done := f.placeBatch(ctx, source, batch, tables, dataDir)
	if len(byTable) == 0 {
		// Only copies of published batches: nothing to rebuild, but say the
		// parts are handled.
		return done, &schemas.Event{Type: schemas.EventStreamPublished, RunID: schemas.StreamRun, Source: source, Parts: done}, nil
	}
	var results []schemas.TableResult
	var rows int64
	if err := f.applyTables(ctx, cat, dataDir, byTable, now); err != nil {
		return nil, nil, err
	}
	for _, pt := range byTable {
		ct := cat.Tables[pt.name]
		var added int64
		for _, a := range pt.adds {
			added += a.Rows
		}
		rows += added
		results = append(results, schemas.TableResult{Table: pt.name, Status: schemas.StatusDone, Rows: added, TotalRows: ct.Rows,
			SizeBytes: ct.SizeBytes, WriteMode: schemas.WritePartitioned, QueryMode: schemas.ModeLocal})
	}
	failed, err := f.publishCatalog(ctx, dir, cat, now)
	if err != nil {
		return nil, nil, err
	}
	for i, res := range results {
		if why, ok := failed[res.Table]; ok {
			results[i].Status, results[i].Error = schemas.StatusFailed, "publish: "+why.Error()
		}
	}
	sort.Slice(results, func(i, j int) bool { return results[i].Table < results[j].Table })
	ev := &schemas.Event{Type: schemas.EventStreamPublished, RunID: schemas.StreamRun, Source: source, Results: results,
		Parts: done, Path: filepath.Join(dir, schemas.ExtractFile)}
	metrics.StreamPublishes.Inc()
	metrics.PublishSeconds.Observe(time.Since(start).Seconds())
	f.log.Debug("streamed parts published", "source", source, "parts", len(done), "rows", rows, "duration", time.Since(start).Round(time.Millisecond))
	return done, ev, nil
}

// placeBatch moves the parts of batch into their partitions, by table;
// done are the parts it is finished with (placed, dropped as copies, or set
// aside as unusable).
func (f *Finalizer) placeBatch(ctx context.Context, source string, batch []*pendingPart, tables map[string]schemas.Event, dataDir string) (map[string]*partitionedTable, []string) {
	sort.Slice(batch, func(i, j int) bool { return batch[i].ev.Part < batch[j].ev.Part })
	byTable := map[string]*partitionedTable{}
	var done []string
	for _, pp := range batch {
		ev := pp.ev
		done = append(done, ev.Table+"/"+ev.Part)
		pf, ok, err := f.placeStreamed(ctx, source, pp, dataDir)
		if err != nil {
			f.log.Error("streamed part set aside", "source", source, "table", ev.Table, "part", ev.Part, "err", err)
			f.setAside(source, ev)
			continue
		}
		if !ok {
			continue
		}
		pt := byTable[ev.Table]
		if pt == nil {
			pt = &partitionedTable{name: ev.Table, keyCol: ev.PrimaryKey[0], runID: schemas.StreamRun,
				description: tables[ev.Table].Description, schema: tables[ev.Table].Schema}
			byTable[ev.Table] = pt
		}
		pt.adds = append(pt.adds, pf)
	}
	return byTable, done
}

// applyTables adds the placed files to their tables in the catalog, the
// tables at once (each is counted, and compacted if need be, on its own).
func (f *Finalizer) applyTables(ctx context.Context, cat *catalog, dataDir string, byTable map[string]*partitionedTable, now time.Time) error {
	for _, pt := range byTable {
		if ct, ok := cat.Tables[pt.name]; ok && ct.Partitioned && ct.KeyColumn != "" {
			pt.keyCol = ct.KeyColumn
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(byTable))
	edits := make([]tableEdit, len(byTable))
	i := 0
	for _, pt := range byTable {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			edits[i], errs[i] = f.partitionEdit(ctx, cat.Tables[pt.name], dataDir, *pt, now)
		}(i)
		i++
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, e := range edits {
		cat.apply(e, now)
	}
	return nil
}

// streamedPaths are where a streamed part is staged and where it goes:
// its path relative to the data folder and in full.
func (f *Finalizer) streamedPaths(source string, ev schemas.Event, dataDir string) (src, rel, final string, err error) {
	if err := schemas.ValidateName("table", ev.Table); err != nil {
		return "", "", "", err
	}
	if err := schemas.ValidateMonth(ev.Month); err != nil {
		return "", "", "", err
	}
	if len(ev.PrimaryKey) != 1 {
		return "", "", "", errors.New("streamed part names no key column")
	}
	pn, err := schemas.ParsePartName(ev.Part)
	if err != nil {
		return "", "", "", err
	}
	if src, err = f.layout.Part(source, schemas.StreamRun, ev.Table, pn); err != nil {
		return "", "", "", err
	}
	if rel, err = schemas.PartitionRel(ev.Table, ev.Month, "s-"+pn.Stem()+".parquet"); err != nil {
		return "", "", "", err
	}
	final = filepath.Join(dataDir, rel)
	if err := f.layout.Within(final); err != nil {
		return "", "", "", err
	}
	return src, rel, final, nil
}

// placeStreamed moves one streamed part into its partition (or rewrites it
// with only the batches it is the first to hold). ok is false when there is
// nothing to add: every batch is a copy, or the part was placed and
// compacted away before a restart.
func (f *Finalizer) placeStreamed(ctx context.Context, source string, pp *pendingPart, dataDir string) (partFile, bool, error) {
	ev := pp.ev
	src, rel, final, err := f.streamedPaths(source, ev, dataDir)
	if err != nil {
		return partFile{}, false, err
	}
	var rows int64
	for i, s := range ev.Seqs {
		if slices.Contains(pp.owned, s) {
			rows += ev.SeqRows[i]
		}
	}
	if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
		if st, err := os.Stat(final); err == nil && rows > 0 {
			return partFile{Path: rel, Month: ev.Month, Rows: rows, Size: st.Size()}, true, nil
		}
		return partFile{}, false, nil
	}
	if len(pp.owned) == 0 {
		os.Remove(src)
		return partFile{}, false, nil
	}
	r, err := parquetfile.Open(src, 1, nil)
	if err != nil {
		return partFile{}, false, err
	}
	schema := r.Schema
	n := r.NumRows()
	r.Close()
	if err := schemas.CheckStored(schema, ev.PrimaryKey[0]); err != nil {
		return partFile{}, false, err
	}
	var want int64
	for _, c := range ev.SeqRows {
		want += c
	}
	if n != want {
		return partFile{}, false, fmt.Errorf("part holds %d rows, announced %d", n, want)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return partFile{}, false, err
	}
	if len(pp.owned) == len(ev.Seqs) {
		st, err := os.Stat(src)
		if err != nil {
			return partFile{}, false, err
		}
		if err := os.Rename(src, final); err != nil {
			return partFile{}, false, err
		}
		return partFile{Path: rel, Month: ev.Month, Rows: rows, Size: st.Size()}, true, nil
	}
	p := part{path: src, month: ev.Month, seqs: ev.Seqs, seqRows: ev.SeqRows}
	size, err := rewriteSeqs(ctx, p, pp.owned, schema, final, f.opts.RowGroupRows, f)
	if err != nil {
		return partFile{}, false, err
	}
	os.Remove(src)
	return partFile{Path: rel, Month: ev.Month, Rows: rows, Size: size}, true, nil
}

// setAside moves an unusable streamed part out of the way, kept for
// inspection.
func (f *Finalizer) setAside(source string, ev schemas.Event) {
	dir, err := f.layout.Rejected(source)
	if err != nil {
		return
	}
	pn, err := schemas.ParsePartName(ev.Part)
	if err != nil {
		return
	}
	src, err := f.layout.Part(source, schemas.StreamRun, ev.Table, pn)
	if err != nil {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	os.Rename(src, filepath.Join(dir, ev.Table+"-"+pn.String()))
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:16]
}
