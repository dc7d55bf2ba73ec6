package parquetfile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var schema = arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, nil)

func mustRecord(mem memory.Allocator, n int) arrow.RecordBatch {
	b := array.NewInt64Builder(mem)
	defer b.Release()
	for i := range n {
		if i%3 == 0 {
			b.AppendNull()
		} else {
			b.Append(int64(i))
		}
	}
	col := b.NewArray()
	defer col.Release()
	return array.NewRecordBatch(schema, []arrow.Array{col}, int64(n))
}

func TestCreateCommitOpen(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	dir := t.TempDir()
	final := filepath.Join(dir, "sub", "t.parquet")
	f, err := Create(final, schema, 100, map[string]string{"k": "v"}, mem)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		rec := mustRecord(mem, 90)
		if err := f.Write(rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	// Before Commit only a temporary file exists, and it does not end in .parquet.
	if _, err := os.Stat(final); !os.IsNotExist(err) {
		t.Fatal("the final name exists before Commit")
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, "sub", "*"))
	if len(tmps) != 1 || !strings.Contains(tmps[0], TempMarker) || strings.HasSuffix(tmps[0], ".parquet") {
		t.Fatalf("temporary files %v", tmps)
	}
	size, err := f.Commit()
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(final)
	if err != nil || st.Size() != size {
		t.Fatalf("stat %v, size %d vs %d", err, st.Size(), size)
	}
	r, err := Open(final, 50, mem)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.NumRows() != 270 || r.NumRowGroups() != 3 || r.Meta("k") != "v" || r.Meta("missing") != "" {
		t.Errorf("rows %d groups %d meta %q", r.NumRows(), r.NumRowGroups(), r.Meta("k"))
	}
	rr, err := r.Records(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var rows, nulls int64
	for rr.Next() {
		rows += rr.RecordBatch().NumRows()
		nulls += int64(rr.RecordBatch().Column(0).NullN())
	}
	rr.Release()
	if rows != 270 || nulls != 90 {
		t.Errorf("read %d rows %d nulls, want 270 and 90", rows, nulls)
	}
}

func TestAbortAndCleanTemps(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(filepath.Join(dir, "a.parquet"), schema, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Abort()
	f.Abort() // safe twice
	if m, _ := filepath.Glob(filepath.Join(dir, "*")); len(m) != 0 {
		t.Errorf("Abort left %v", m)
	}
	// A crash leaves temporaries; CleanTemps removes only those.
	os.MkdirAll(filepath.Join(dir, "x", "data"), 0o755)
	for _, n := range []string{"x/data/t.parquet.tmp-1", "x/extract.duckdb.tmp-2", "x/data/keep.parquet"} {
		os.WriteFile(filepath.Join(dir, n), []byte("z"), 0o644)
	}
	n, err := CleanTemps(dir)
	if err != nil || n != 2 {
		t.Errorf("CleanTemps removed %d (%v), want 2", n, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x/data/keep.parquet")); err != nil {
		t.Error("CleanTemps removed a real file")
	}
	if n, err := CleanTemps(filepath.Join(dir, "missing")); n != 0 || err != nil {
		t.Errorf("missing root: %d %v", n, err)
	}
}
