package tests

import (
	"slices"
	"strings"
	"testing"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
)

func wantRows(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("published rows\n got %v\nwant %v", got, want)
	}
}

func onlyResult(t *testing.T, rep *stack.Report) schemas.TableResult {
	t.Helper()
	if len(rep.Results) != 1 {
		t.Fatalf("results %+v", rep.Results)
	}
	return rep.Results[0]
}

func TestSchemaEvolution(t *testing.T) {
	e := newLedgerEnv(t, config.Source{})
	e.l.set(nil, row(int64(1), int64(1), "a"))
	e.sync(t, false)
	next := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "cursor", Type: arrow.PrimitiveTypes.Int32}, // retyped
		{Name: "extra", Type: arrow.PrimitiveTypes.Int64},  // added; val removed
	}, nil)
	e.l.set(next, row(int64(1), int64(1), int64(7)), row(int64(2), int64(2), int64(8)))
	res := onlyResult(t, e.sync(t, false))
	got := strings.Join(res.SchemaChanges, "; ")
	for _, w := range []string{"column cursor changed type from int64 to int32", "added column extra (int64)", "removed column val (utf8)"} {
		if !strings.Contains(got, w) {
			t.Errorf("schema changes %q lack %q", got, w)
		}
	}
	if res.Status != schemas.StatusDone {
		t.Fatalf("evolve policy failed the table: %+v", res)
	}
	db := openRO(t, e.dataDir+"/extracts/lg/extract.duckdb")
	var n, extra int64
	if err := db.QueryRow(`SELECT count(*), sum(extra) FROM "rows"`).Scan(&n, &extra); err != nil {
		t.Fatalf("the new schema is not published: %v", err)
	}
	if n != 2 || extra != 15 {
		t.Errorf("count %d sum(extra) %d", n, extra)
	}
	// A third run with the same schema reports no change.
	if res := onlyResult(t, e.sync(t, false)); len(res.SchemaChanges) != 0 {
		t.Errorf("unchanged schema reported changes: %v", res.SchemaChanges)
	}
}

func TestSchemaFreezeKeepsOldData(t *testing.T) {
	e := newLedgerEnv(t, config.Source{SchemaPolicy: config.PolicyFreeze})
	e.l.set(nil, row(int64(1), int64(1), "a"), row(int64(2), int64(2), "b"))
	e.sync(t, false)
	next := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "cursor", Type: arrow.PrimitiveTypes.Int64},
		{Name: "val", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "surprise", Type: arrow.FixedWidthTypes.Boolean},
	}, nil)
	e.l.set(next, row(int64(9), int64(9), "z", nil))
	rep := e.sync(t, false)
	res := onlyResult(t, rep)
	if res.Status != schemas.StatusFailed || !strings.Contains(res.Error, "freeze") || !strings.Contains(res.Error, "added column surprise") {
		t.Errorf("frozen table: %+v", res)
	}
	wantRows(t, e.table(t), "1|1|a", "2|2|b")
}

// TestIncrementalBoundary: rows sharing the last cursor value arrive exactly
// once, on a table without a key (new rows are appended).
func TestIncrementalBoundary(t *testing.T) {
	e := newLedgerEnv(t, config.Source{TableOptions: map[string]config.TableOptions{"rows": {IncrementalKey: "cursor"}}})
	e.l.set(nil, row(int64(1), int64(1), "a"), row(int64(2), int64(2), "b"), row(int64(3), int64(2), "c"))
	if res := onlyResult(t, e.sync(t, false)); res.WriteMode != schemas.WriteReplace || res.Rows != 3 {
		t.Errorf("first run %+v", res)
	}
	if c := e.cursor(t); c == nil || c.Value != "2" || len(c.Boundary) != 2 {
		t.Fatalf("cursor after the first run: %+v", c)
	}
	// A late row with the boundary value and a newer one.
	e.l.set(nil, row(int64(1), int64(1), "a"), row(int64(2), int64(2), "b"), row(int64(3), int64(2), "c"),
		row(int64(4), int64(2), "d"), row(int64(5), int64(3), "e"))
	res := onlyResult(t, e.sync(t, false))
	if res.WriteMode != schemas.WriteAppend || res.Rows != 2 || res.TotalRows != 5 {
		t.Errorf("incremental run %+v: want 2 new rows appended, 5 in all", res)
	}
	wantRows(t, e.table(t), "1|1|a", "2|2|b", "3|2|c", "4|2|d", "5|3|e")
	// Nothing new: nothing added.
	res = onlyResult(t, e.sync(t, false))
	if res.Rows != 0 || res.TotalRows != 5 {
		t.Errorf("idle run %+v", res)
	}
	wantRows(t, e.table(t), "1|1|a", "2|2|b", "3|2|c", "4|2|d", "5|3|e")
	// --full-refresh starts over from the source as it is now.
	e.l.set(nil, row(int64(9), int64(9), "z"))
	res = onlyResult(t, e.sync(t, true))
	if res.WriteMode != schemas.WriteReplace {
		t.Errorf("full refresh mode %q", res.WriteMode)
	}
	wantRows(t, e.table(t), "9|9|z")
	if c := e.cursor(t); c == nil || c.Value != "9" {
		t.Errorf("cursor after full refresh %+v", c)
	}
}

// TestIncrementalMergeByKey: a keyed table merges new rows, latest wins.
func TestIncrementalMergeByKey(t *testing.T) {
	e := newLedgerEnv(t, config.Source{TableOptions: map[string]config.TableOptions{"rows": {IncrementalKey: "cursor", PrimaryKey: []string{"id"}}}})
	e.l.set(nil, row(int64(1), int64(10), "a"), row(int64(2), int64(10), "b"), row(int64(3), int64(11), "c"))
	e.sync(t, false)
	// id 2 updated twice since (the latest wins), id 4 is new, id 1 untouched.
	e.l.set(nil, row(int64(1), int64(10), "a"), row(int64(3), int64(11), "c"),
		row(int64(2), int64(12), "b1"), row(int64(4), int64(12), "d"), row(int64(2), int64(13), "b2"))
	res := onlyResult(t, e.sync(t, false))
	if res.WriteMode != schemas.WriteMerge {
		t.Errorf("mode %q, want merge", res.WriteMode)
	}
	wantRows(t, e.table(t), "1|10|a", "2|13|b2", "3|11|c", "4|12|d")
}

// TestCursorAdvancesOnlyAfterPublish: a run whose data is written but whose
// extract is not published (no finalizer running, as after a crash) leaves
// the cursor where it was; once a finalizer runs, the run is published once.
func TestCursorAdvancesOnlyAfterPublish(t *testing.T) {
	src := config.Source{TableOptions: map[string]config.TableOptions{"rows": {IncrementalKey: "cursor"}}}
	e := newLedgerEnv(t, src)
	e.l.set(nil, row(int64(1), int64(1), "a"))
	e.sync(t, false)
	before := e.cursor(t)
	e.st.Stop()

	// Producer and writers only: the run's rows reach staging, nothing publishes.
	e.start(t, stack.RoleProducer, stack.RoleWriter)
	e.l.set(nil, row(int64(1), int64(1), "a"), row(int64(2), int64(2), "b"))
	runID := publishOnly(t, e.st.JS, "lg")
	waitRunDone(t, e.st.JS, "lg", runID)
	if c := e.cursor(t); c == nil || c.Value != before.Value {
		t.Fatalf("the cursor moved to %+v before the extract was published (was %+v)", c, before)
	}
	wantRows(t, e.table(t), "1|1|a")
	e.st.Stop()

	// A finalizer comes back: it finishes the pending run, exactly once.
	e.start(t)
	waitPublished(t, e.st.JS, "lg", runID)
	wantRows(t, e.table(t), "1|1|a", "2|2|b")
	if c := e.cursor(t); c == nil || c.Value != "2" {
		t.Errorf("cursor after publish %+v", c)
	}
	// And the next run adds nothing twice.
	e.sync(t, false)
	wantRows(t, e.table(t), "1|1|a", "2|2|b")
}

// TestColumnNameCollisions: a source with columns id and ID (one column to
// DuckDB) publishes the first, id, with the values of id, and says ID was
// left out, whether the schema is declared by discovery or only known
// from the first batch (a table read by query).
func TestColumnNameCollisions(t *testing.T) {
	cased := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "cursor", Type: arrow.PrimitiveTypes.Int64},
		{Name: "val", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "ID", Type: arrow.PrimitiveTypes.Int64},
	}, nil)
	for name, src := range map[string]config.Source{
		"declared":    {},
		"first batch": {TableOptions: map[string]config.TableOptions{"rows": {QueryMode: "materialized", Query: "SELECT * FROM rows"}}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newLedgerEnv(t, src)
			e.l.set(cased, row(int64(1), int64(1), "a", int64(100)), row(int64(2), int64(2), "b", int64(200)))
			rep := e.sync(t, false)
			if res := onlyResult(t, rep); res.Status != schemas.StatusDone {
				t.Fatalf("table failed: %+v", res)
			}
			if !slices.ContainsFunc(rep.Skipped, func(s string) bool {
				return strings.Contains(s, `table "rows", column "ID": its name collides with column "id"`)
			}) {
				t.Errorf("skipped %q", rep.Skipped)
			}
			wantRows(t, e.table(t), "1|1|a", "2|2|b")
			db := openRO(t, e.dataDir+"/extracts/lg/extract.duckdb")
			var cols string
			if err := db.QueryRow(`SELECT string_agg(column_name, ',' ORDER BY column_index) FROM duckdb_columns() WHERE table_name = 'rows'`).Scan(&cols); err != nil || cols != "id,cursor,val" {
				t.Errorf("columns %q: %v", cols, err)
			}
		})
	}
}
