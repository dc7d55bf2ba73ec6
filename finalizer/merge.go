package finalizer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// part is one staged Parquet part announced by a batch_written event.
type part struct {
	path    string
	month   string
	seqs    []int64
	seqRows []int64
}

// cover picks, for every seq in [0, n), one part that holds it (the first by
// name). It returns nil when some seq is not yet held by any part.
func cover(parts []part, n int64) []int {
	owner := make([]int, n)
	for i := range owner {
		owner[i] = -1
	}
	idx := make([]int, len(parts))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return parts[idx[a]].path < parts[idx[b]].path })
	missing := n
	for _, i := range idx {
		for _, s := range parts[i].seqs {
			if s >= 0 && s < n && owner[s] < 0 {
				owner[s] = i
				missing--
			}
		}
	}
	if missing > 0 {
		return nil
	}
	return owner
}

// sameColumns reports whether two schemas have the same column names, types
// and nullability, ignoring metadata.
func sameColumns(a, b *arrow.Schema) bool {
	if a.NumFields() != b.NumFields() {
		return false
	}
	for i := range a.NumFields() {
		fa, fb := a.Field(i), b.Field(i)
		if fa.Name != fb.Name || fa.Nullable != fb.Nullable || !arrow.TypeEqual(fa.Type, fb.Type) {
			return false
		}
	}
	return true
}

var errPartMismatch = errors.New("staged part does not match its announcement")

// assemble writes the table's batches 0..n-1, each taken once from its owning
// part, in seq order, into a new Parquet file at dst (through a temporary name
// that is renamed). Nothing is re-encoded when it need not be: when the
// parts in use each hold a run of consecutive seqs, whole, that together
// run from 0 to n-1 (writers cut a part wherever its seqs stop being
// consecutive), one part is hard-linked and several are joined row group by
// row group (parquetfile.Concat), their bytes copied. Otherwise (parts that
// overlap after a redelivery, or interleave, or runs too short to make
// good row groups) the batches are decoded and written again. It returns
// the file's size.
func assemble(ctx context.Context, dst string, schema *arrow.Schema, parts []part, owner []int, rowGroupRows int64, mem memory.Allocator) (int64, string, error) {
	runs := wholeRuns(parts, owner)
	why := "the parts are not whole runs of consecutive batches"
	if len(runs) > 0 {
		why = fmt.Sprintf("%d runs of %d rows on average, under a quarter row group", len(runs), runRows(runs)/int64(len(runs)))
	}
	if len(runs) > 0 && joinable(runs, rowGroupRows) {
		for _, p := range runs {
			if err := checkPart(p, schema); err != nil {
				return 0, "", err
			}
		}
		if len(runs) == 1 {
			size, err := link(runs[0].path, dst)
			return size, "linked", err
		}
		paths := make([]string, len(runs))
		for i, p := range runs {
			paths[i] = p.path
		}
		size, err := parquetfile.Concat(dst, paths, schemas.SeqsMetaKey)
		if !errors.Is(err, parquetfile.ErrNotConcatenable) {
			return size, fmt.Sprintf("joined %d parts", len(runs)), err
		}
		why = err.Error()
	}
	out, err := parquetfile.Create(dst, schema, rowGroupRows, nil, mem)
	if err != nil {
		return 0, "", err
	}
	if err := eachBatch(ctx, schema, parts, owner, mem, out.Write); err != nil {
		out.Abort()
		return 0, "", err
	}
	size, err := out.Commit()
	return size, "re-encoded: " + why, err
}

// wholeRuns is the parts that hold the table end to end, in order: each
// owns every seq it holds, its seqs are consecutive, and each starts where
// the one before ended. It is nil when the owned parts are not like that.
func wholeRuns(parts []part, owner []int) []part {
	n := int64(len(owner))
	var runs []part
	for next := int64(0); next < n; {
		i := owner[next]
		p := parts[i]
		for j, s := range p.seqs {
			if s != next+int64(j) || s >= n || owner[s] != i {
				return nil
			}
		}
		runs = append(runs, p)
		next += int64(len(p.seqs))
	}
	return runs
}

// joinable reports whether joining runs gives row groups worth reading:
// on average at least a quarter of rowGroupRows. Several writers keeping
// up with one table take its batches in turn, so their runs can be a
// batch or two; a file of such row groups is written again instead.
func joinable(runs []part, rowGroupRows int64) bool {
	if len(runs) == 1 {
		return true
	}
	if rowGroupRows <= 0 {
		rowGroupRows = parquetfile.DefaultRowGroupRows
	}
	return runRows(runs)/int64(len(runs)) >= rowGroupRows/4
}

// runRows is the rows the parts hold.
func runRows(runs []part) int64 {
	var rows int64
	for _, p := range runs {
		for _, n := range p.seqRows {
			rows += n
		}
	}
	return rows
}

// link hard-links the part at src to dst and returns its size.
func link(src, dst string) (int64, error) {
	os.Remove(dst)
	if err := os.Link(src, dst); err != nil {
		return 0, fmt.Errorf("link part %s: %w", src, err)
	}
	st, err := os.Stat(dst)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// eachBatch passes the table's batches 0..n-1 to fn in seq order, each taken
// once from its owning part, as records with exactly schema.
func eachBatch(ctx context.Context, schema *arrow.Schema, parts []part, owner []int, mem memory.Allocator, fn func(arrow.RecordBatch) error) error {
	cursors := make([]*cursor, len(parts))
	defer func() {
		for _, c := range cursors {
			if c != nil {
				c.close()
			}
		}
	}()
	write := func(rec arrow.RecordBatch) error {
		r := array.NewRecordBatch(schema, rec.Columns(), rec.NumRows())
		defer r.Release()
		return fn(r)
	}
	for seq := range int64(len(owner)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		i := owner[seq]
		c := cursors[i]
		if c == nil {
			var err error
			if c, err = openCursor(ctx, parts[i], schema, mem); err != nil {
				return err
			}
			cursors[i] = c
		}
		if err := c.copySeq(seq, write); err != nil {
			return err
		}
		if c.next >= len(c.p.seqs) {
			// Release a finished part at once: memory stays bounded by the
			// parts in use, not by the table's size.
			c.close()
			cursors[i] = nil
		}
	}
	return nil
}

func checkPart(p part, schema *arrow.Schema) error {
	r, err := parquetfile.Open(p.path, 1, nil)
	if err != nil {
		return err
	}
	defer r.Close()
	if !sameColumns(r.Schema, schema) {
		return fmt.Errorf("%w: part %s has schema %s, the table declares %s", errPartMismatch, filepath.Base(p.path), r.Schema, schema)
	}
	var want int64
	for _, n := range p.seqRows {
		want += n
	}
	if r.NumRows() != want {
		return fmt.Errorf("%w: part %s holds %d rows, announced %d", errPartMismatch, filepath.Base(p.path), r.NumRows(), want)
	}
	return nil
}

// cursor reads a part forward, one seq at a time.
type cursor struct {
	p    part
	r    *parquetfile.Reader
	rr   pqarrow.RecordReader
	cur  arrow.RecordBatch
	off  int64
	next int // index into p.seqs of the next unread seq
}

func openCursor(ctx context.Context, p part, schema *arrow.Schema, mem memory.Allocator) (*cursor, error) {
	if err := checkPart(p, schema); err != nil {
		return nil, err
	}
	r, err := parquetfile.Open(p.path, 16*1024, mem)
	if err != nil {
		return nil, err
	}
	rr, err := r.Records(ctx)
	if err != nil {
		r.Close()
		return nil, err
	}
	return &cursor{p: p, r: r, rr: rr}, nil
}

func (c *cursor) close() {
	c.rr.Release()
	c.r.Close()
}

// copySeq skips the rows of seqs before seq and passes seq's rows to write.
func (c *cursor) copySeq(seq int64, write func(arrow.RecordBatch) error) error {
	for c.next < len(c.p.seqs) && c.p.seqs[c.next] < seq {
		if err := c.take(c.p.seqRows[c.next], nil); err != nil {
			return err
		}
		c.next++
	}
	if c.next >= len(c.p.seqs) || c.p.seqs[c.next] != seq {
		return fmt.Errorf("%w: part %s does not hold batch %d in order", errPartMismatch, filepath.Base(c.p.path), seq)
	}
	n := c.p.seqRows[c.next]
	c.next++
	return c.take(n, write)
}

func (c *cursor) take(n int64, write func(arrow.RecordBatch) error) error {
	for n > 0 {
		if c.cur == nil || c.off == c.cur.NumRows() {
			if !c.rr.Next() {
				if err := c.rr.Err(); err != nil {
					return fmt.Errorf("read part %s: %w", filepath.Base(c.p.path), err)
				}
				return fmt.Errorf("%w: part %s ended early", errPartMismatch, filepath.Base(c.p.path))
			}
			c.cur, c.off = c.rr.RecordBatch(), 0
		}
		k := min(n, c.cur.NumRows()-c.off)
		if write != nil {
			s := c.cur.NewSlice(c.off, c.off+k)
			err := write(s)
			s.Release()
			if err != nil {
				return err
			}
		}
		c.off += k
		n -= k
	}
	return nil
}

// writeEmpty writes a valid Parquet file with schema and no rows.
func writeEmpty(dst string, schema *arrow.Schema, mem memory.Allocator) (int64, error) {
	f, err := parquetfile.Create(dst, schema, 0, nil, mem)
	if err != nil {
		return 0, err
	}
	return f.Commit()
}

func partsOf(dir string, evs map[string]schemas.Event) []part {
	names := make([]string, 0, len(evs))
	for n := range evs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]part, 0, len(names))
	for _, n := range names {
		e := evs[n]
		out = append(out, part{path: filepath.Join(dir, n), month: e.Month, seqs: e.Seqs, seqRows: e.SeqRows})
	}
	return out
}

// RunMetaKey in a merged or appended table file names the run that made it.
const RunMetaKey = "agnes.run"

// appliedBy reports whether the file at path was made by run, with its rows
// and size.
func appliedBy(path, run string) (bool, int64, int64) {
	r, err := parquetfile.Open(path, 1, nil)
	if err != nil {
		return false, 0, 0
	}
	defer r.Close()
	if r.Meta(RunMetaKey) != run {
		return false, 0, 0
	}
	st, err := os.Stat(path)
	if err != nil {
		return false, 0, 0
	}
	return true, r.NumRows(), st.Size()
}

// merger combines the previous file of a table with a run's batches:
// appended after them, or merged by primary key (the run's latest row for a
// key replaces every previous row with that key).
type merger struct {
	schema *arrow.Schema
	// parts and owner are the run's batches: owner[seq] is the part
	// holding seq.
	parts []part
	owner []int
	// prev is the live file, mode append or merge, pk the key of a merge.
	prev, mode string
	pk         []string
	run        string
	// Output tuning.
	rowGroupRows int64
	mem          memory.Allocator

	keyCols []int
	// last is the position of each key's latest new row (merge only).
	last map[uint64]int64
}

// combine writes the combined table at dst; the file records the run, so a
// retried finalization knows it is applied.
func (m *merger) combine(ctx context.Context, dst string) (assembled, error) {
	old, err := parquetfile.Open(m.prev, 16*1024, m.mem)
	if err != nil {
		return assembled{}, err
	}
	defer old.Close()
	if !sameColumns(old.Schema, m.schema) {
		return assembled{}, fmt.Errorf("the published data has schema %s, the new rows %s; run the sync with --full-refresh", old.Schema, m.schema)
	}
	if err := m.keys(ctx); err != nil {
		return assembled{}, err
	}
	out, err := parquetfile.Create(dst, m.schema, m.rowGroupRows, map[string]string{RunMetaKey: m.run}, m.mem)
	if err != nil {
		return assembled{}, err
	}
	var rows int64
	write := func(rec arrow.RecordBatch) error {
		rows += rec.NumRows()
		return out.Write(rec)
	}
	err = m.copyOld(ctx, old, write)
	if err == nil {
		err = m.copyNew(ctx, write)
	}
	if err != nil {
		out.Abort()
		return assembled{}, err
	}
	size, err := out.Commit()
	if err != nil {
		return assembled{}, err
	}
	return assembled{size: size, rows: rows}, nil
}

// keys finds, for a merge, the key columns and the last position of each
// key among the new rows: only that row is kept.
func (m *merger) keys(ctx context.Context) error {
	if m.mode != schemas.WriteMerge {
		return nil
	}
	for _, k := range m.pk {
		idx := m.schema.FieldIndices(k)
		if len(idx) != 1 {
			return fmt.Errorf("primary key column %q is not a column of the table", k)
		}
		m.keyCols = append(m.keyCols, idx[0])
	}
	m.last = map[uint64]int64{}
	var pos int64
	return eachBatch(ctx, m.schema, m.parts, m.owner, m.mem, func(rec arrow.RecordBatch) error {
		for i := range int(rec.NumRows()) {
			m.last[schemas.RowKey(rec, i, m.keyCols)] = pos
			pos++
		}
		return nil
	})
}

// copyOld writes the previous rows, without those whose key the run
// replaces.
func (m *merger) copyOld(ctx context.Context, old *parquetfile.Reader, write func(arrow.RecordBatch) error) error {
	rr, err := old.Records(ctx)
	if err != nil {
		return err
	}
	defer rr.Release()
	for rr.Next() {
		rec := rr.RecordBatch()
		if m.last == nil {
			r := array.NewRecordBatch(m.schema, rec.Columns(), rec.NumRows())
			err := write(r)
			r.Release()
			if err != nil {
				return err
			}
			continue
		}
		keep := func(i int) bool { _, replaced := m.last[schemas.RowKey(rec, i, m.keyCols)]; return !replaced }
		if err := writeRuns(m.schema, rec, keep, write); err != nil {
			return err
		}
	}
	return rr.Err()
}

// copyNew writes the run's rows: all of them, or each key's latest.
func (m *merger) copyNew(ctx context.Context, write func(arrow.RecordBatch) error) error {
	var pos int64
	return eachBatch(ctx, m.schema, m.parts, m.owner, m.mem, func(rec arrow.RecordBatch) error {
		if m.last == nil {
			return write(rec)
		}
		base := pos
		pos += rec.NumRows()
		return writeRuns(m.schema, rec, func(i int) bool { return m.last[schemas.RowKey(rec, i, m.keyCols)] == base+int64(i) }, write)
	})
}

// writeRuns passes the contiguous runs of rows of rec for which keep is true.
func writeRuns(schema *arrow.Schema, rec arrow.RecordBatch, keep func(int) bool, write func(arrow.RecordBatch) error) error {
	n := int(rec.NumRows())
	start := -1
	emit := func(end int) error {
		if start < 0 {
			return nil
		}
		s := rec.NewSlice(int64(start), int64(end))
		r := array.NewRecordBatch(schema, s.Columns(), s.NumRows())
		s.Release()
		err := write(r)
		r.Release()
		start = -1
		return err
	}
	for i := range n {
		if keep(i) {
			if start < 0 {
				start = i
			}
			continue
		}
		if err := emit(i); err != nil {
			return err
		}
	}
	return emit(n)
}
