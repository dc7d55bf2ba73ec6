// Package parquetfile writes Parquet files atomically (temporary name in the
// target folder, fsync, rename, fsync folder) with the project's settings,
// and reads them back as Arrow record streams. It links no DuckDB.
package parquetfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/google/uuid"
)

// DefaultRowGroupRows is the target row-group length: large enough for good
// compression and scan speed, small enough to keep a writer's memory flat.
const DefaultRowGroupRows = 128 * 1024

// TempMarker is in the name of every temporary file; temporary names never
// end in ".parquet" because readers glob for that suffix.
const TempMarker = ".tmp-"

// TempName is a fresh temporary name beside final: two writers of one
// file (a retried step, a compaction beside a placement) never share one.
func TempName(final string) string {
	return final + TempMarker + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
}

// WriterProperties are the Parquet settings used everywhere: zstd,
// statistics, row groups of rowGroupRows, and dictionary encoding for string
// and binary columns only. Dictionary-encoding numeric columns (ids,
// timestamps, amounts) costs most of the encoding time for little gain once
// zstd has compressed the plain values.
func WriterProperties(schema *arrow.Schema, rowGroupRows int64, mem memory.Allocator) *parquet.WriterProperties {
	if rowGroupRows <= 0 {
		rowGroupRows = DefaultRowGroupRows
	}
	opts := []parquet.WriterProperty{
		parquet.WithCompression(compress.Codecs.Zstd),
		parquet.WithCompressionLevel(1),
		parquet.WithDictionaryDefault(false),
		parquet.WithStats(true),
		parquet.WithMaxRowGroupLength(rowGroupRows),
		parquet.WithAllocator(mem),
	}
	for _, f := range schema.Fields() {
		switch f.Type.ID() {
		case arrow.STRING, arrow.LARGE_STRING, arrow.BINARY, arrow.LARGE_BINARY:
			opts = append(opts, parquet.WithDictionaryFor(f.Name, true))
		}
	}
	return parquet.NewWriterProperties(opts...)
}

// File is a Parquet file being written under a temporary name.
type File struct {
	final string
	tmp   string
	f     *os.File
	w     *pqarrow.FileWriter
	done  bool
}

// Create starts writing the Parquet file that Commit will place at final.
// meta is stored as file key-value metadata; the Arrow schema is stored too,
// so a reader gets back the exact Arrow types.
func Create(final string, schema *arrow.Schema, rowGroupRows int64, meta map[string]string, mem memory.Allocator) (*File, error) {
	if mem == nil {
		mem = memory.DefaultAllocator
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create parquet %s: %w", final, err)
	}
	tmp := TempName(final)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create parquet %s: %w", final, err)
	}
	// The Parquet writer closes a sink that is an io.Closer; hide Close so
	// the file stays open for fsync.
	w, err := pqarrow.NewFileWriter(schema, writeOnly{f}, WriterProperties(schema, rowGroupRows, mem),
		pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema(), pqarrow.WithAllocator(mem)))
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("create parquet %s: %w", final, err)
	}
	for k, v := range meta {
		if err := w.AppendKeyValueMetadata(k, v); err != nil {
			w.Close()
			f.Close()
			os.Remove(tmp)
			return nil, fmt.Errorf("create parquet %s: %w", final, err)
		}
	}
	return &File{final: final, tmp: tmp, f: f, w: w}, nil
}

type writeOnly struct{ io.Writer }

// Write appends rec to the current row group, starting a new one when it is full.
func (p *File) Write(rec arrow.RecordBatch) error {
	if err := p.w.WriteBuffered(rec); err != nil {
		return fmt.Errorf("write parquet %s: %w", p.final, err)
	}
	return nil
}

// Commit closes the file, fsyncs it, renames it to its final name and fsyncs
// the folder. It returns the file's size.
func (p *File) Commit() (int64, error) {
	p.done = true
	if err := p.w.Close(); err != nil {
		p.f.Close()
		os.Remove(p.tmp)
		return 0, fmt.Errorf("close parquet %s: %w", p.final, err)
	}
	return place(p.f, p.tmp, p.final)
}

// place fsyncs and closes f, written at tmp, renames it to final and
// fsyncs the folder. It returns the file's size; on failure tmp is gone.
func place(f *os.File, tmp, final string) (int64, error) {
	size, err := syncClose(f)
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("sync parquet %s: %w", final, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("rename parquet %s: %w", final, err)
	}
	if err := SyncDir(filepath.Dir(final)); err != nil {
		return 0, err
	}
	return size, nil
}

// Abort discards an uncommitted file. It is safe to call after Commit.
func (p *File) Abort() {
	if p.done {
		return
	}
	p.done = true
	p.w.Close()
	p.f.Close()
	os.Remove(p.tmp)
}

func syncClose(f *os.File) (int64, error) {
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, err
	}
	return st.Size(), f.Close()
}

// SyncDir fsyncs a folder so a rename in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// ReplaceFile atomically places src at dst (rename) and fsyncs the folder.
func ReplaceFile(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	return SyncDir(filepath.Dir(dst))
}

// CleanTemps removes temporary files (names containing TempMarker) under
// root, left by a crash. It returns how many it removed.
func CleanTemps(root string) (int, error) {
	n := 0
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), TempMarker) {
			if err := os.Remove(path); err == nil {
				n++
			}
		}
		return nil
	})
	return n, err
}

// Reader streams the record batches of one Parquet file.
type Reader struct {
	pf     *file.Reader
	fr     *pqarrow.FileReader
	Schema *arrow.Schema
}

// Open opens a Parquet file for streaming reads of batchRows rows.
func Open(path string, batchRows int64, mem memory.Allocator) (*Reader, error) {
	if mem == nil {
		mem = memory.DefaultAllocator
	}
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		return nil, fmt.Errorf("open parquet %s: %w", path, err)
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: batchRows}, mem)
	if err != nil {
		pf.Close()
		return nil, fmt.Errorf("open parquet %s: %w", path, err)
	}
	s, err := fr.Schema()
	if err != nil {
		pf.Close()
		return nil, fmt.Errorf("open parquet %s: %w", path, err)
	}
	return &Reader{pf: pf, fr: fr, Schema: s}, nil
}

// Meta returns the file's key-value metadata value for key, or "".
func (r *Reader) Meta(key string) string {
	if v := r.pf.MetaData().KeyValueMetadata().FindValue(key); v != nil {
		return *v
	}
	return ""
}

// NumRows is the file's row count from its footer.
func (r *Reader) NumRows() int64 { return r.pf.NumRows() }

// NumRowGroups is the file's row-group count.
func (r *Reader) NumRowGroups() int { return r.pf.NumRowGroups() }

// Records returns a reader over all rows; the caller releases it.
func (r *Reader) Records(ctx context.Context) (pqarrow.RecordReader, error) {
	rr, err := r.fr.GetRecordReader(ctx, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("read parquet: %w", err)
	}
	return rr, nil
}

// Close closes the file.
func (r *Reader) Close() error { return r.pf.Close() }

// WriteAll writes every batch of recs to a new file at final (atomically, as
// Create and Commit do) and returns its size. The first error from recs or
// the writer aborts the file.
func WriteAll(final string, schema *arrow.Schema, recs iter.Seq2[arrow.RecordBatch, error]) (int64, error) {
	f, err := Create(final, schema, 0, nil, nil)
	if err != nil {
		return 0, err
	}
	for rec, err := range recs {
		if err == nil {
			err = f.Write(rec)
		}
		if err != nil {
			f.Abort()
			return 0, err
		}
	}
	return f.Commit()
}
