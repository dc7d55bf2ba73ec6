package finalizer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/finalizer/duck"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
)

// Defaults of partitioned tables.
const (
	// DefaultCompactMinFiles: a partition with this many files is compacted.
	DefaultCompactMinFiles = 8
	// DefaultCompactSmallBytes: files below this size are merged by
	// compaction; larger ones are left as they are.
	DefaultCompactSmallBytes = 64 << 20
	// DefaultRetireGrace is how long a file no published extract references
	// is kept for readers still querying an older extract.
	DefaultRetireGrace = 5 * time.Minute
)

// duck returns the finalizer's in-memory DuckDB, used to count and compact
// partitions.
func (f *Finalizer) duck() (*sql.DB, error) {
	f.duckOnce.Do(func() {
		f.duckDB, f.duckErr = duck.Open()
	})
	return f.duckDB, f.duckErr
}

func absFiles(dataDir string, files []partFile) []string {
	out := make([]string, len(files))
	for i, p := range files {
		out[i] = filepath.Join(dataDir, p.Path)
	}
	return out
}

// recount returns the visible rows of a month after adds joined the files
// old. Only the keys the new files hold can change, so the count moves by
// their visible rows after minus before, found in one scan restricted to
// those keys (compacted files are sorted by key, so most row groups are
// skipped): the cost of an event does not grow with its partition.
func (f *Finalizer) recount(ctx context.Context, db *sql.DB, dataDir string, ct catalogTable, month string, old, adds []partFile) (int64, error) {
	prev, known := ct.MonthRows[month]
	all := absFiles(dataDir, filesOf(ct.Files, month))
	if !known || len(old) == 0 {
		return duck.CountVisible(ctx, db, all, ct.KeyColumn)
	}
	before, after, err := duck.CountChanged(ctx, db, all, absFiles(dataDir, adds), ct.KeyColumn)
	if err != nil {
		return 0, err
	}
	return prev - before + after, nil
}

// partitionedTable describes what a publish adds to a partitioned table.
type partitionedTable struct {
	name, keyCol, description, runID string
	schema                           []byte
	adds                             []partFile
	// reconcile: the adds are a full backfill; keys they lack whose newest
	// version is below this are deleted (see Partitioning.FullBackfillDeletes).
	reconcile int64
}

// applyPartitioned adds files to a partitioned table in the catalog,
// compacts the partitions they land in when they hold too many files,
// recounts those partitions and retires what compaction replaced. The
// extract is built afterwards; until then the live extract still reads the
// old file set.
func (f *Finalizer) applyPartitioned(ctx context.Context, cat *catalog, dataDir string, pt partitionedTable, now time.Time) error {
	e, err := f.partitionEdit(ctx, cat.Tables[pt.name], dataDir, pt, now)
	if err != nil {
		return err
	}
	cat.apply(e, now)
	return nil
}

// tableEdit is what updating one table does to the catalog: its new entry
// and, in order, the files it retires or brings back. Edits are computed
// from the catalog's values (several tables at once) and applied one by one.
type tableEdit struct {
	name  string
	entry catalogTable
	files []fileEdit
}

type fileEdit struct {
	path   string
	retire bool // else unretire
}

func (e *tableEdit) retire(paths ...string) {
	for _, p := range paths {
		e.files = append(e.files, fileEdit{path: p, retire: true})
	}
}

func (e *tableEdit) unretire(path string) { e.files = append(e.files, fileEdit{path: path}) }

// apply records e in the catalog.
func (c *catalog) apply(e tableEdit, now time.Time) {
	for _, fe := range e.files {
		if fe.retire {
			c.retire([]string{fe.path}, now)
		} else {
			c.unretire(fe.path)
		}
	}
	c.Tables[e.name] = e.entry
}

// partitionEdit is the edit that adds pt's files to the table whose entry
// is old (zero if none): delete markers of a reconciling backfill, the
// months recounted, a month with far too many files compacted on the way.
// It reads only old and the files; the catalog is not touched.
func (f *Finalizer) partitionEdit(ctx context.Context, old catalogTable, dataDir string, pt partitionedTable, now time.Time) (tableEdit, error) {
	e := tableEdit{name: pt.name}
	if err := schemas.ValidateName("key column", pt.keyCol); err != nil {
		return e, fmt.Errorf("table %s: %w", pt.name, err)
	}
	ct := partitionedEntry(&e, old, pt, now)
	added := newFilesByMonth(ct, pt.adds)
	db, err := f.duck()
	if err != nil {
		return e, err
	}
	if pt.reconcile > 0 && len(pt.schema) > 0 {
		if err := f.reconcile(ctx, db, dataDir, &ct, pt, added); err != nil {
			return e, fmt.Errorf("table %s: %w", pt.name, err)
		}
	}
	for m, adds := range added {
		before := filesOf(ct.Files, m)
		ct.Files = append(ct.Files, adds...)
		for _, a := range adds {
			e.unretire(a.Path)
		}
		n, err := f.recount(ctx, db, dataDir, ct, m, before, adds)
		if err != nil {
			return e, fmt.Errorf("table %s, month %s: %w", pt.name, m, err)
		}
		ct.MonthRows[m] = n
		// Compaction runs when the source is idle (startCompaction); only a
		// partition with far too many files is compacted on the way.
		// Compaction keeps what the view shows, so the count stays.
		if len(filesOf(ct.Files, m)) >= 4*f.opts.CompactMinFiles {
			if _, err := f.maybeCompact(ctx, db, &e, &ct, dataDir, pt.name, m); err != nil {
				return e, fmt.Errorf("table %s, month %s: %w", pt.name, m, err)
			}
		}
	}
	ct.Rows, ct.SizeBytes = 0, 0
	for _, n := range ct.MonthRows {
		ct.Rows += n
	}
	for _, p := range ct.Files {
		ct.SizeBytes += p.Size
	}
	sort.Slice(ct.Files, func(i, j int) bool { return ct.Files[i].Path < ct.Files[j].Path })
	e.entry = ct
	return e, nil
}

// partitionedEntry is the catalog entry pt updates: the table's, or a new
// one when it was not partitioned before (its batch version is retired:
// never both layouts).
func partitionedEntry(e *tableEdit, ct catalogTable, pt partitionedTable, now time.Time) catalogTable {
	if !ct.Partitioned && schemas.Stored(ct.QueryMode) {
		// The link is removed once the extract is swapped.
		if ct.Version != "" {
			e.retire(ct.Version)
		} else {
			e.retire(pt.name + ".parquet")
		}
	}
	if !ct.Partitioned {
		ct = catalogTable{Partitioned: true, MonthRows: map[string]int64{}}
	}
	// The edit owns its entry: nothing it changes shows in the catalog
	// before it is applied.
	ct.MonthRows, ct.Files = maps.Clone(ct.MonthRows), slices.Clone(ct.Files)
	if ct.MonthRows == nil {
		ct.MonthRows = map[string]int64{}
	}
	ct.QueryMode, ct.KeyColumn, ct.ExtractedAt, ct.RunID = schemas.ModeLocal, pt.keyCol, now, pt.runID
	if pt.description != "" {
		ct.Description = pt.description
	}
	if len(pt.schema) > 0 {
		ct.Schema = pt.schema
	}
	return ct
}

// newFilesByMonth are the files of adds the entry does not hold yet (a
// retried publish counted the others already), by month.
func newFilesByMonth(ct catalogTable, adds []partFile) map[string][]partFile {
	have := map[string]bool{}
	for _, p := range ct.Files {
		have[p.Path] = true
	}
	added := map[string][]partFile{}
	for _, a := range adds {
		if have[a.Path] {
			continue
		}
		have[a.Path] = true
		added[a.Month] = append(added[a.Month], a)
	}
	return added
}

// reconcile writes delete markers, after a full backfill, for the keys
// the backfill did not see whose newest published version is below
// pt.reconcile: they were deleted at the source while no event reached us.
// The markers of a month join that month's new files (added).
func (f *Finalizer) reconcile(ctx context.Context, db *sql.DB, dataDir string, ct *catalogTable, pt partitionedTable, added map[string][]partFile) error {
	declared, err := schemas.DecodeSchema(pt.schema)
	if err != nil {
		return err
	}
	timeCol := ""
	for _, fl := range declared.Fields() {
		if fl.Name != pt.keyCol && !fl.Nullable && fl.Type.ID() == arrow.TIMESTAMP {
			timeCol = fl.Name
		}
	}
	if timeCol == "" {
		return fmt.Errorf("no time column to write delete markers with")
	}
	marker := "d-" + pt.runID[:min(8, len(pt.runID))] + ".parquet"
	for _, p := range ct.Files {
		if filepath.Base(p.Path) == marker {
			return nil // a retried publish: this run's markers are in place
		}
	}
	// The run's own files, all of them (on a retry some may be published).
	newFiles := absFiles(dataDir, pt.adds)
	if len(newFiles) == 0 {
		// A backfill that saw no key at all is more likely a broken filter
		// or an empty answer than a source that lost everything.
		f.log.Warn("a full backfill saw no keys; nothing is deleted", "table", pt.name)
		return nil
	}
	months := map[string]bool{}
	for _, p := range ct.Files {
		months[p.Month] = true
	}
	for m := range months {
		old := absFiles(dataDir, filesOf(ct.Files, m))
		rel, err := schemas.PartitionRel(pt.name, m, marker)
		if err != nil {
			return err
		}
		dst := filepath.Join(dataDir, rel)
		if err := f.layout.Within(dst); err != nil {
			return err
		}
		tmp := parquetfile.TempName(dst)
		n, err := duck.DeleteMarkers(ctx, db, old, newFiles, pt.keyCol, timeCol, pt.reconcile, tmp)
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("reconcile month %s: %w", m, err)
		}
		if n == 0 {
			os.Remove(tmp)
			continue
		}
		st, err := os.Stat(tmp)
		if err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		f.log.Info("full backfill deletes keys it did not see", "table", pt.name, "month", m, "keys", n)
		added[m] = append(added[m], partFile{Path: rel, Month: m, Rows: n, Size: st.Size()})
	}
	return nil
}

// compactionBuild is an idle compaction of one source: the merges planned
// from its catalog, built beside the owner's loop (their inputs never
// change), then swapped in by the owner; a merge whose inputs changed in
// between is dropped.
type compactionBuild struct {
	plan []*compaction
	errs []error
	took time.Duration
}

// startCompaction plans the merges every partition of the source needs and
// builds them on a helper goroutine, which hands the result back through
// the inbox.
func (o *owner) startCompaction(ctx context.Context) {
	f := o.f
	dir, dataDir, err := f.sourceDirs(o.source)
	if err != nil {
		return
	}
	cat, err := loadCatalog(dir)
	if err != nil {
		f.log.Warn("compact partitions", "source", o.source, "err", err)
		return
	}
	plan := f.planCompactions(cat)
	if len(plan) == 0 {
		return
	}
	db, err := f.duck()
	if err != nil {
		f.log.Warn("compact partitions", "source", o.source, "err", err)
		return
	}
	o.compacting = true
	o.helpers.Add(1)
	go func() {
		defer o.helpers.Done()
		b := &compactionBuild{plan: plan, errs: make([]error, len(plan))}
		start := time.Now()
		var wg sync.WaitGroup
		for i, c := range plan {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.errs[i] = c.build(ctx, db, dataDir)
			}()
		}
		wg.Wait()
		b.took = time.Since(start)
		o.inbox.put(message{built: b})
	}()
}

// planCompactions is every merge the catalog's partitions need now.
func (f *Finalizer) planCompactions(cat *catalog) []*compaction {
	var plan []*compaction
	for name, ct := range cat.Tables {
		if !ct.Partitioned {
			continue
		}
		months := map[string]bool{}
		for _, p := range ct.Files {
			months[p.Month] = true
		}
		for m := range months {
			if c := f.pickCompaction(&ct, name, m); c != nil {
				plan = append(plan, c)
			}
		}
	}
	return plan
}

// applyCompaction swaps the built merges into the catalog, when their
// inputs are still the files they merged, and publishes the new file set.
func (o *owner) applyCompaction(ctx context.Context, b *compactionBuild) error {
	f := o.f
	dir, dataDir, err := f.sourceDirs(o.source)
	if err != nil {
		return err
	}
	cat, err := loadCatalog(dir)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	applied := 0
	for i, c := range b.plan {
		ct, ok := cat.Tables[c.table]
		e := tableEdit{name: c.table}
		if b.errs[i] != nil || !ok || !ct.Partitioned || !c.apply(&e, &ct) {
			if b.errs[i] == nil && !slices.ContainsFunc(ct.Files, func(p partFile) bool { return p.Path == c.out.Path }) {
				os.Remove(filepath.Join(dataDir, c.out.Path))
			}
			continue
		}
		e.entry = ct
		cat.apply(e, now)
		applied++
		f.logCompaction(c, b.took)
	}
	if err := errors.Join(b.errs...); err != nil {
		f.log.Warn("compaction failed", "source", o.source, "err", err)
	}
	if applied == 0 {
		return nil
	}
	// A table the extract cannot hold went back to its entry before the
	// compaction (publishCatalog logged it): nothing else to do.
	_, err = f.publishCatalog(ctx, dir, cat, now)
	return err
}

func filesOf(files []partFile, month string) []partFile {
	var out []partFile
	for _, p := range files {
		if p.Month == month {
			out = append(out, p)
		}
	}
	return out
}

// compactionTier groups files of similar size: below 256 KiB, then one
// tier per factor of 4.
func compactionTier(size int64) int {
	t := 0
	for s := size / (256 << 10); s > 0; s /= 4 {
		t++
	}
	return t
}

// compaction is one planned merge: the input files of one partition and
// the file they become.
type compaction struct {
	table, month, keyCol string
	inputs               []partFile
	out                  partFile
}

// pickCompaction plans the merge of one size tier of a partition once the
// tier holds CompactMinFiles files: event parts merge into bigger files,
// those into bigger ones, so every row is rewritten a logarithmic number of
// times and an event never rewrites its whole partition. Files above
// CompactSmallBytes are left alone. It returns nil when nothing is due.
func (f *Finalizer) pickCompaction(ct *catalogTable, table, month string) *compaction {
	tiers := map[int][]partFile{}
	for _, p := range filesOf(ct.Files, month) {
		if p.Size < f.opts.CompactSmallBytes {
			t := compactionTier(p.Size)
			tiers[t] = append(tiers[t], p)
		}
	}
	var small []partFile
	for t := 0; t <= 32 && small == nil; t++ {
		if len(tiers[t]) >= f.opts.CompactMinFiles {
			small = tiers[t]
		}
	}
	if len(small) < 2 {
		return nil
	}
	names := make([]string, len(small))
	for i, p := range small {
		names[i] = p.Path
	}
	rel, err := schemas.PartitionRel(table, month, "c-"+shortHash(strings.Join(names, "\n"))+".parquet")
	if err != nil {
		f.log.Error("compaction output refused", "table", table, "month", month, "err", err)
		return nil
	}
	return &compaction{table: table, month: month, keyCol: ct.KeyColumn, inputs: small, out: partFile{Path: rel, Month: month}}
}

// build writes the compacted file. Its inputs never change, so it needs no
// lock.
func (c *compaction) build(ctx context.Context, db *sql.DB, dataDir string) error {
	rows, size, err := duck.Compact(ctx, db, absFiles(dataDir, c.inputs), c.keyCol, filepath.Join(dataDir, c.out.Path))
	c.out.Rows, c.out.Size = rows, size
	return err
}

// apply swaps the inputs for the compacted file in the catalog table and
// retires them; it reports false, changing nothing, when an input is no
// longer in the table (compacted or replaced meanwhile).
func (c *compaction) apply(e *tableEdit, ct *catalogTable) bool {
	for _, in := range c.inputs {
		if !slices.ContainsFunc(ct.Files, func(p partFile) bool { return p.Path == in.Path }) {
			return false
		}
	}
	names := make([]string, len(c.inputs))
	for i, p := range c.inputs {
		names[i] = p.Path
	}
	ct.Files = slices.DeleteFunc(ct.Files, func(p partFile) bool { return slices.Contains(names, p.Path) })
	ct.Files = append(ct.Files, c.out)
	ct.SizeBytes = 0
	for _, p := range ct.Files {
		ct.SizeBytes += p.Size
	}
	sort.Slice(ct.Files, func(i, j int) bool { return ct.Files[i].Path < ct.Files[j].Path })
	e.unretire(c.out.Path)
	e.retire(names...)
	metrics.Compactions.Inc()
	return true
}

// maybeCompact compacts one partition on the spot, when a merge is due.
func (f *Finalizer) maybeCompact(ctx context.Context, db *sql.DB, e *tableEdit, ct *catalogTable, dataDir, table, month string) (bool, error) {
	c := f.pickCompaction(ct, table, month)
	if c == nil {
		return false, nil
	}
	start := time.Now()
	if err := c.build(ctx, db, dataDir); err != nil {
		return false, err
	}
	c.apply(e, ct)
	f.logCompaction(c, time.Since(start))
	return true, nil
}

func (f *Finalizer) logCompaction(c *compaction, took time.Duration) {
	var before int64
	for _, p := range c.inputs {
		before += p.Rows
	}
	f.log.Info("partition compacted", "table", c.table, "month", c.month, "files", len(c.inputs), "rows_before", before,
		"rows_after", c.out.Rows, "duration", took.Round(time.Millisecond))
}

func (c *catalog) retire(paths []string, now time.Time) {
	for _, p := range paths {
		c.Retired = append(c.Retired, retiredFile{Path: p, At: now})
	}
}

func (c *catalog) unretire(path string) {
	c.Retired = slices.DeleteFunc(c.Retired, func(r retiredFile) bool { return r.Path == path })
}

// deleteRetired removes retired files older than the grace period. It runs
// after an extract swap, so no published extract references them.
func (f *Finalizer) deleteRetired(dataDir string, cat *catalog, now time.Time) {
	cat.Retired = slices.DeleteFunc(cat.Retired, func(r retiredFile) bool {
		if now.Sub(r.At) < f.opts.RetireGrace {
			return false
		}
		p, err := inDir(dataDir, r.Path)
		if err != nil {
			f.log.Warn("not deleting retired file", "err", err)
			return true
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			f.log.Warn("delete retired file", "path", r.Path, "err", err)
			return false
		}
		return true
	})
}

// placeRun puts a run's parts of a partitioned table into the table's
// partitions: a part whose every batch is the run's chosen copy is moved as
// it is; one holding batches another part also holds is rewritten with only
// its own. A retried finalization finds its parts already in place.
func (f *Finalizer) placeRun(ctx context.Context, runID, source, table string, t *tableState, dataDir string) ([]partFile, []move, error) {
	declared, err := schemas.DecodeSchema(t.done.Schema)
	if err != nil {
		return nil, nil, fmt.Errorf("table %s: %w", table, err)
	}
	stored := schemas.PartitionedSchema(declared)
	parts := partsOf(f.staging(source, runID, table), t.doneParts())
	owner := cover(parts, t.done.Batches)
	if owner == nil {
		return nil, nil, fmt.Errorf("table %s: not every batch is written", table)
	}
	own := map[int][]int64{}
	for seq, i := range owner {
		own[i] = append(own[i], int64(seq))
	}
	var adds []partFile
	var moves []move
	var total int64
	for i, seqs := range own {
		p := parts[i]
		if err := schemas.ValidateMonth(p.month); err != nil {
			return nil, nil, fmt.Errorf("table %s, part %s: %w", table, filepath.Base(p.path), err)
		}
		var rows int64
		for j, s := range p.seqs {
			if slices.Contains(seqs, s) {
				rows += p.seqRows[j]
			}
		}
		total += rows
		name := "r" + runID[:min(8, len(runID))] + "-" + strings.TrimSuffix(filepath.Base(p.path), ".part") + ".parquet"
		rel, err := schemas.PartitionRel(table, p.month, name)
		if err != nil {
			return nil, nil, err
		}
		final := filepath.Join(dataDir, rel)
		if err := f.layout.Within(final); err != nil {
			return nil, nil, err
		}
		if _, err := os.Stat(p.path); errors.Is(err, os.ErrNotExist) {
			st, err := os.Stat(final)
			if err != nil {
				return nil, nil, fmt.Errorf("table %s: part %s is gone and was not placed", table, filepath.Base(p.path))
			}
			adds = append(adds, partFile{Path: rel, Month: p.month, Rows: rows, Size: st.Size()})
			continue
		}
		if err := checkPart(p, stored); err != nil {
			return nil, nil, fmt.Errorf("table %s: %w", table, err)
		}
		if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
			return nil, nil, err
		}
		if len(seqs) == len(p.seqs) {
			st, err := os.Stat(p.path)
			if err != nil {
				return nil, nil, err
			}
			moves = append(moves, move{p.path, final})
			adds = append(adds, partFile{Path: rel, Month: p.month, Rows: rows, Size: st.Size()})
			continue
		}
		size, err := rewriteSeqs(ctx, p, seqs, stored, final, f.opts.RowGroupRows, f)
		if err != nil {
			return nil, nil, fmt.Errorf("table %s: %w", table, err)
		}
		adds = append(adds, partFile{Path: rel, Month: p.month, Rows: rows, Size: size})
	}
	if total != t.done.Rows {
		return nil, nil, fmt.Errorf("table %s: written batches hold %d rows, the producer sent %d", table, total, t.done.Rows)
	}
	return adds, moves, nil
}

// rewriteSeqs writes the rows of the given seqs of part p to final.
func rewriteSeqs(ctx context.Context, p part, seqs []int64, schema *arrow.Schema, final string, rowGroupRows int64, f *Finalizer) (int64, error) {
	c, err := openCursor(ctx, p, schema, f.opts.Mem)
	if err != nil {
		return 0, err
	}
	defer c.close()
	out, err := parquetfile.Create(final, schema, rowGroupRows, nil, f.opts.Mem)
	if err != nil {
		return 0, err
	}
	sorted := slices.Sorted(slices.Values(seqs))
	for _, s := range sorted {
		if err := c.copySeq(s, out.Write); err != nil {
			out.Abort()
			return 0, err
		}
	}
	return out.Commit()
}
