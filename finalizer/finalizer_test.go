package finalizer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/finalizer/duck"
	"github.com/agnes-ai/connector-kit/internal/errclass"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var idSchema = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)

// mustPart writes a staged part holding the given seqs, each seq s holding
// rows [s*10, s*10+10).
func mustPart(tb testing.TB, dir, name string, seqs ...int64) part {
	tb.Helper()
	f, err := parquetfile.Create(filepath.Join(dir, name), idSchema, 1000, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	p := part{path: filepath.Join(dir, name)}
	for _, s := range seqs {
		b := array.NewInt64Builder(memory.DefaultAllocator)
		for i := range int64(10) {
			b.Append(s*10 + i)
		}
		col := b.NewArray()
		rec := array.NewRecordBatch(idSchema, []arrow.Array{col}, 10)
		if err := f.Write(rec); err != nil {
			tb.Fatal(err)
		}
		rec.Release()
		col.Release()
		b.Release()
		p.seqs = append(p.seqs, s)
		p.seqRows = append(p.seqRows, 10)
	}
	if _, err := f.Commit(); err != nil {
		tb.Fatal(err)
	}
	return p
}

func readIDs(tb testing.TB, path string) []int64 {
	tb.Helper()
	r, err := parquetfile.Open(path, 7, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	rr, err := r.Records(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	defer rr.Release()
	var ids []int64
	for rr.Next() {
		ids = append(ids, rr.RecordBatch().Column(0).(*array.Int64).Int64Values()...)
	}
	return ids
}

func TestCover(t *testing.T) {
	parts := []part{{path: "b", seqs: []int64{1, 2}}, {path: "a", seqs: []int64{0, 1}}}
	owner := cover(parts, 3)
	if owner == nil || owner[0] != 1 || owner[1] != 1 || owner[2] != 0 {
		t.Errorf("owner = %v, want [1 1 0] (first part by name wins)", owner)
	}
	if cover(parts, 4) != nil {
		t.Error("seq 3 is not held by any part, yet the table counts as complete")
	}
	if o := cover(nil, 0); o == nil || len(o) != 0 {
		t.Error("an empty table is complete")
	}
}

func TestAssembleDeduplicatesAndOrders(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	dir := t.TempDir()
	// Two writers interleaved, and a redelivery that wrote seqs 2 and 3 twice.
	parts := []part{
		mustPart(t, dir, "p1.part", 0, 2, 4),
		mustPart(t, dir, "p2.part", 1, 3, 5),
		mustPart(t, dir, "p3.part", 2, 3, 6),
	}
	owner := cover(parts, 7)
	if owner == nil {
		t.Fatal("not covered")
	}
	dst := filepath.Join(dir, "out.parquet")
	size, _, err := assemble(context.Background(), dst, idSchema, parts, owner, 25, mem)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dst); st.Size() != size {
		t.Errorf("reported size %d, file is %d", size, st.Size())
	}
	ids := readIDs(t, dst)
	if len(ids) != 70 {
		t.Fatalf("%d rows, want 70", len(ids))
	}
	for i, id := range ids {
		if id != int64(i) {
			t.Fatalf("row %d is %d: rows are duplicated, lost or out of order", i, id)
		}
	}
	r, _ := parquetfile.Open(dst, 1, nil)
	if r.NumRowGroups() != 3 {
		t.Errorf("%d row groups for 70 rows at 25 per group, want 3", r.NumRowGroups())
	}
	r.Close()
}

func TestAssembleSinglePartLinks(t *testing.T) {
	dir := t.TempDir()
	p := mustPart(t, dir, "only.part", 0, 1, 2)
	dst := filepath.Join(dir, "t.parquet")
	if _, _, err := assemble(context.Background(), dst, idSchema, []part{p}, cover([]part{p}, 3), 0, nil); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(dst)
	b, _ := os.Stat(p.path)
	if !os.SameFile(a, b) {
		t.Error("a part holding the whole table was rewritten instead of linked")
	}
}

// TestAssembleJoinsConsecutiveParts: parts that each hold a run of
// consecutive seqs, end to end, are joined without re-encoding (their row
// groups kept, a duplicate part left out) into a file DuckDB reads with
// every row once, in order; a gap in a part's run makes it re-encode.
func TestAssembleJoinsConsecutiveParts(t *testing.T) {
	dir := t.TempDir()
	parts := []part{
		mustPart(t, dir, "a.part", 0, 1, 2),
		mustPart(t, dir, "b.part", 3, 4),
		mustPart(t, dir, "c.part", 5, 6),
		mustPart(t, dir, "d.part", 3, 4), // a redelivered copy: b comes first by name
	}
	owner := cover(parts, 7)
	dst := filepath.Join(dir, "out.parquet")
	size, _, err := assemble(context.Background(), dst, idSchema, parts, owner, 25, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dst); st.Size() != size {
		t.Errorf("reported size %d, file is %d", size, st.Size())
	}
	r, err := parquetfile.Open(dst, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.NumRowGroups() != 3 || r.Meta(schemas.SeqsMetaKey) != "" {
		t.Errorf("%d row groups, seqs metadata %q; want the 3 parts' row groups and no part seqs", r.NumRowGroups(), r.Meta(schemas.SeqsMetaKey))
	}
	r.Close()
	db, err := duck.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ids string
	if err := db.QueryRow("SELECT string_agg(id::VARCHAR, ',' ORDER BY file_row_number) FROM read_parquet(?, file_row_number = true)", dst).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 70 {
		want = append(want, fmt.Sprint(i))
	}
	if ids != strings.Join(want, ",") {
		t.Errorf("DuckDB reads %s in file order; want 0..69", ids)
	}
	// Runs of 23 rows on average make row groups too small to keep when a
	// row group holds 1,000: the parts are written again, as one.
	small := filepath.Join(dir, "small.parquet")
	if _, _, err := assemble(context.Background(), small, idSchema, parts, owner, 1000, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := parquetfile.Open(small, 1, nil); err != nil || r.NumRowGroups() != 1 || r.NumRows() != 70 {
		t.Errorf("short runs: %v; want them written again as one row group of 70 rows", err)
	} else {
		r.Close()
	}
	// A part whose seqs skip one cannot be joined as it stands.
	gap := []part{mustPart(t, dir, "g1.part", 0, 2), mustPart(t, dir, "g2.part", 1, 3)}
	dst2 := filepath.Join(dir, "gap.parquet")
	if _, _, err := assemble(context.Background(), dst2, idSchema, gap, cover(gap, 4), 25, nil); err != nil {
		t.Fatal(err)
	}
	got := readIDs(t, dst2)
	for i, id := range got {
		if id != int64(i) {
			t.Fatalf("interleaved parts: row %d is %d", i, id)
		}
	}
	if len(got) != 40 {
		t.Errorf("interleaved parts: %d rows, want 40", len(got))
	}
	r2, _ := parquetfile.Open(dst2, 1, nil)
	if r2.NumRowGroups() != 2 {
		t.Errorf("interleaved parts: %d row groups; want them re-encoded at 25 rows per group (2)", r2.NumRowGroups())
	}
	r2.Close()
}

func TestAssembleErrors(t *testing.T) {
	dir := t.TempDir()
	p := mustPart(t, dir, "p.part", 0, 1)
	other := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}}, nil)
	_, _, err := assemble(context.Background(), filepath.Join(dir, "x.parquet"), other, []part{p}, cover([]part{p}, 2), 0, nil)
	if !errors.Is(err, errPartMismatch) || !strings.Contains(err.Error(), "schema") {
		t.Errorf("schema mismatch: got %v", err)
	}
	lying := p
	lying.seqRows = []int64{10, 11}
	_, _, err = assemble(context.Background(), filepath.Join(dir, "y.parquet"), idSchema, []part{lying}, cover([]part{lying}, 2), 0, nil)
	if !errors.Is(err, errPartMismatch) {
		t.Errorf("row count mismatch: got %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.parquet*")); len(m) != 0 {
		t.Errorf("failed assembly left files: %v", m)
	}
}

func TestBuildExtract(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o755)
	p := mustPart(t, dir, "p.part", 0, 1, 2)
	os.Link(p.path, filepath.Join(data, "things.parquet"))
	empty := filepath.Join(data, "nothing.parquet")
	if _, err := writeEmpty(empty, idSchema, nil); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(data, "things.parquet"))
	est, _ := os.Stat(empty)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	rows := []duck.Table{
		{Table: "things", Description: "it's things", Rows: 30, SizeBytes: st.Size(), ExtractedAt: at, QueryMode: schemas.ModeLocal, Path: filepath.Join(data, "things.parquet")},
		{Table: "nothing", Rows: 0, SizeBytes: est.Size(), ExtractedAt: at, QueryMode: schemas.ModeLocal, Path: empty},
		{Table: "far_away", Description: "remote", Rows: 99, SizeBytes: 99, ExtractedAt: at, QueryMode: schemas.ModeRemote,
			RemotePath: []string{"in.c-main", "far"}, Schema: idSchema},
		{Table: "unviewed", Description: "remote without a path", ExtractedAt: at, QueryMode: schemas.ModeRemote},
	}
	remote := []schemas.RemoteAttach{{Alias: "kbc", Extension: "keboola", URL: "https://connection.keboola.com/", TokenEnv: "KEBOOLA_STORAGE_TOKEN"}}
	if failed, err := duck.Build(context.Background(), dir, rows, remote); err != nil || len(failed) != 0 {
		t.Fatal(failed, err)
	}
	x, err := extractcheck.Verify(context.Background(), filepath.Join(dir, schemas.ExtractFile))
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	got := map[string]extractcheck.MetaRow{}
	for _, m := range x.Meta {
		got[m.Table] = m
	}
	if r := got["far_away"]; r.Rows != 0 || r.SizeBytes != 0 || r.QueryMode != "remote" {
		t.Errorf("remote row %+v, want rows = size_bytes = 0", r)
	}
	if r := got["things"]; r.Rows != 30 || r.Description != "it's things" || !r.ExtractedAt.Equal(at) {
		t.Errorf("things row %+v", r)
	}
	if x.Counts["nothing"] != 0 || got["nothing"].Rows != 0 {
		t.Errorf("empty table: count %d", x.Counts["nothing"])
	}
	if v := x.Views["far_away"]; !strings.Contains(v, `kbc."in.c-main".far`) {
		t.Errorf("remote view %q does not read the attached catalog", v)
	}
	if _, ok := x.Views["unviewed"]; ok {
		t.Error("a remote table without a path got a view")
	}
	if len(x.Remote) != 1 || x.Remote[0] != (extractcheck.RemoteRow{Alias: "kbc", Extension: "keboola", URL: "https://connection.keboola.com", TokenEnv: "KEBOOLA_STORAGE_TOKEN"}) {
		t.Errorf("_remote_attach = %+v", x.Remote)
	}
}

// TestBuildExtractLeavesOutFailedTables: a table whose name, path or view
// cannot be published is left out with why (deterministic: not worth a
// retry), and the extract holds every other table; only what fails the
// whole file (a bad alias) is an error.
func TestBuildExtractLeavesOutFailedTables(t *testing.T) {
	dir := t.TempDir()
	p := mustPart(t, dir, "p.part", 0, 1)
	os.MkdirAll(filepath.Join(dir, "data"), 0o755)
	things := filepath.Join(dir, "data", "things.parquet")
	if err := os.Link(p.path, things); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(things)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	rows := []duck.Table{
		{Table: "bad name", QueryMode: schemas.ModeRemote},
		{Table: "rel", QueryMode: schemas.ModeLocal, Path: "data/rel.parquet"},
		{Table: "things", QueryMode: schemas.ModeLocal, Path: things, Rows: 20, SizeBytes: st.Size(), ExtractedAt: at},
		// DuckDB compares view names without regard to case: a Catalog
		// error that would repeat on every try.
		{Table: "THINGS", QueryMode: schemas.ModeLocal, Path: things, Rows: 20, SizeBytes: st.Size(), ExtractedAt: at},
		{Table: "deep", QueryMode: schemas.ModeRemote, RemotePath: []string{"a", "b", "c"}},
		{Table: "gone", QueryMode: schemas.ModeLocal, Path: filepath.Join(dir, "missing.parquet")},
	}
	failed, err := duck.Build(context.Background(), dir, rows, []schemas.RemoteAttach{{Alias: "kbc", Extension: "keboola"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bad name", "rel", "THINGS", "deep", "gone"} {
		if !errclass.IsDeterministic(failed[n]) {
			t.Errorf("%s: %v, want a deterministic failure", n, failed[n])
		}
	}
	if !strings.Contains(fmt.Sprint(failed["THINGS"]), "already exists") || len(failed) != 5 {
		t.Errorf("failed %v", failed)
	}
	x, err := extractcheck.Verify(context.Background(), filepath.Join(dir, schemas.ExtractFile))
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if len(x.Meta) != 1 || x.Meta[0].Table != "things" || x.Counts["things"] != 20 {
		t.Errorf("_meta %+v counts %v", x.Meta, x.Counts)
	}
	bad := t.TempDir()
	if _, err := duck.Build(context.Background(), bad, nil, []schemas.RemoteAttach{{Alias: "x'; DROP", Extension: "keboola"}}); !errors.Is(err, schemas.ErrInvalidName) || !errclass.IsDeterministic(err) {
		t.Errorf("bad alias: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(bad, "*")); len(m) != 0 {
		t.Errorf("a refused build left files: %v", m)
	}
}

// TestRepublishLinkedPart: publishing the same single-part table twice (a
// retried finalization) leaves no temporary link behind.
func TestRepublishLinkedPart(t *testing.T) {
	dir := t.TempDir()
	p := mustPart(t, dir, "only.part", 0, 1)
	final := filepath.Join(dir, "t.parquet")
	for range 2 {
		tmp := final + parquetfile.TempMarker + "run"
		if _, _, err := assemble(context.Background(), tmp, idSchema, []part{p}, cover([]part{p}, 2), 0, nil); err != nil {
			t.Fatal(err)
		}
		if err := publishMoves([]move{{tmp: tmp, final: final}}); err != nil {
			t.Fatal(err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*"+parquetfile.TempMarker+"*")); len(m) != 0 {
		t.Errorf("left %v", m)
	}
}
