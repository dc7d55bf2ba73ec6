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
// that Commit renames). When one part holds exactly the whole table it is
// hard-linked instead of rewritten. It returns the file's size.
func assemble(ctx context.Context, dst string, schema *arrow.Schema, parts []part, owner []int, rowGroupRows int64, mem memory.Allocator) (int64, error) {
	if len(parts) == 1 && int64(len(parts[0].seqs)) == int64(len(owner)) && len(owner) > 0 {
		if err := checkPart(parts[0], schema); err != nil {
			return 0, err
		}
		os.Remove(dst)
		if err := os.Link(parts[0].path, dst); err != nil {
			return 0, fmt.Errorf("link part %s: %w", parts[0].path, err)
		}
		st, err := os.Stat(dst)
		if err != nil {
			return 0, err
		}
		return st.Size(), nil
	}
	out, err := parquetfile.Create(dst, schema, rowGroupRows, nil, mem)
	if err != nil {
		return 0, err
	}
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
		return out.Write(r)
	}
	for seq := range int64(len(owner)) {
		if err := ctx.Err(); err != nil {
			out.Abort()
			return 0, err
		}
		i := owner[seq]
		c := cursors[i]
		if c == nil {
			if c, err = openCursor(ctx, parts[i], schema, mem); err != nil {
				out.Abort()
				return 0, err
			}
			cursors[i] = c
		}
		if err := c.copySeq(seq, write); err != nil {
			out.Abort()
			return 0, err
		}
		if c.next >= len(c.p.seqs) {
			// Release a finished part at once: memory stays bounded by the
			// parts in use, not by the table's size.
			c.close()
			cursors[i] = nil
		}
	}
	return out.Commit()
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
		out = append(out, part{path: filepath.Join(dir, n), seqs: e.Seqs, seqRows: e.SeqRows})
	}
	return out
}
