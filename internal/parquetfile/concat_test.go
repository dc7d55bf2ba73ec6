package parquetfile

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var wideSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
	{Name: "score", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
}, nil)

// wideRecord holds rows from..from+n-1; names repeat (dictionary pages)
// and every fifth value is null.
func wideRecord(from, n int64) arrow.RecordBatch {
	b := array.NewRecordBuilder(memory.DefaultAllocator, wideSchema)
	defer b.Release()
	for i := from; i < from+n; i++ {
		b.Field(0).(*array.Int64Builder).Append(i)
		if i%5 == 0 {
			b.Field(1).(*array.StringBuilder).AppendNull()
			b.Field(2).(*array.Float64Builder).AppendNull()
		} else {
			b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("name-%d", i%37))
			b.Field(2).(*array.Float64Builder).Append(float64(i) / 4)
		}
	}
	return b.NewRecordBatch()
}

func writePart(t *testing.T, path string, from int64, batches ...int64) {
	t.Helper()
	f, err := Create(path, wideSchema, 1000, map[string]string{"seqs": "x", "keep": "y"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range batches {
		rec := wideRecord(from, n)
		from += n
		if err := f.Write(rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	if _, err := f.Commit(); err != nil {
		t.Fatal(err)
	}
}

// readRows reads every row of path as "id|name|score" strings, in order.
func readRows(t *testing.T, path string) ([]string, *Reader) {
	t.Helper()
	r, err := Open(path, 257, nil)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := r.Records(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Release()
	var rows []string
	for rr.Next() {
		rec := rr.RecordBatch()
		for i := range int(rec.NumRows()) {
			rows = append(rows, fmt.Sprintf("%s|%s|%s", rec.Column(0).ValueStr(i), rec.Column(1).ValueStr(i), rec.Column(2).ValueStr(i)))
		}
	}
	if err := rr.Err(); err != nil {
		t.Fatal(err)
	}
	return rows, r
}

// TestConcat: parts of one, two and three row groups joined byte for byte
// read back as the same rows in the same order, with every row group and
// the first part's metadata less the dropped key; parts of another schema
// are refused.
func TestConcat(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.part"), filepath.Join(dir, "b.part"), filepath.Join(dir, "c.part")
	writePart(t, a, 0, 700)
	writePart(t, b, 700, 600, 900) // two row groups: 1000 + 500
	writePart(t, c, 2200, 1000, 1000, 300)
	final := filepath.Join(dir, "out", "t.parquet")
	size, err := Concat(final, []string{a, b, c}, "seqs")
	if err != nil {
		t.Fatal(err)
	}
	got, r := readRows(t, final)
	defer r.Close()
	var want []string
	for _, p := range []string{a, b, c} {
		rows, pr := readRows(t, p)
		pr.Close()
		want = append(want, rows...)
	}
	if len(got) != 4500 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("joined file holds %d rows; want the parts' 4500 in order (first %v, want %v)", len(got), got[:min(3, len(got))], want[:3])
	}
	if r.NumRowGroups() != 6 || r.NumRows() != 4500 {
		t.Errorf("%d row groups, %d rows; want 6, 4500", r.NumRowGroups(), r.NumRows())
	}
	if r.Meta("seqs") != "" || r.Meta("keep") != "y" {
		t.Errorf("metadata seqs=%q keep=%q; want the dropped key gone and the other kept", r.Meta("seqs"), r.Meta("keep"))
	}
	pa, err := Open(a, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Schema.Equal(pa.Schema) {
		t.Errorf("schema %s, the parts' is %s", r.Schema, pa.Schema)
	}
	pa.Close()
	if size <= 0 {
		t.Errorf("size %d", size)
	}
	other := filepath.Join(dir, "other.part")
	f, err := Create(other, schema, 10, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := mustRecord(memory.DefaultAllocator, 5)
	f.Write(rec)
	rec.Release()
	if _, err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := Concat(filepath.Join(dir, "bad.parquet"), []string{a, other}); !errors.Is(err, ErrNotConcatenable) {
		t.Errorf("parts of two schemas: %v, want ErrNotConcatenable", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "bad.parquet*")); len(m) != 0 {
		t.Errorf("a refused join left %v", m)
	}
}
