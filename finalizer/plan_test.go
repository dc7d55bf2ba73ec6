package finalizer

import (
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
)

// part announces a part of table holding seqs, for attempt.
func announced(name string, attempt int, seqs ...int64) schemas.Event {
	rows := make([]int64, len(seqs))
	for i := range rows {
		rows[i] = 10
	}
	return schemas.Event{Type: schemas.EventBatchWritten, Part: name, Attempt: attempt, Seqs: seqs, SeqRows: rows}
}

func doneTable(batches int64, attempt int, parts ...schemas.Event) *tableState {
	t := &tableState{done: &schemas.Event{Type: schemas.EventTableDone, Batches: batches, Attempt: attempt, Rows: batches * 10},
		parts: map[string]schemas.Event{}}
	for _, p := range parts {
		t.parts[p.Part] = p
	}
	return t
}

func TestRunComplete(t *testing.T) {
	done := func(tables ...schemas.TableResult) *schemas.Event {
		return &schemas.Event{Type: schemas.EventRunDone, Results: tables}
	}
	ok := schemas.TableResult{Table: "orders", Status: schemas.StatusDone, QueryMode: schemas.ModeLocal}
	cases := []struct {
		name string
		run  runState
		want bool
	}{
		{"no run_done yet", runState{tables: map[string]*tableState{"orders": doneTable(1, 1, announced("a", 1, 0))}}, false},
		{"every seq written", runState{done: done(ok), tables: map[string]*tableState{
			"orders": doneTable(3, 1, announced("a", 1, 0, 1), announced("b", 1, 2))}}, true},
		{"a seq missing", runState{done: done(ok), tables: map[string]*tableState{
			"orders": doneTable(3, 1, announced("a", 1, 0, 1))}}, false},
		{"parts of an earlier attempt do not count", runState{done: done(ok), tables: map[string]*tableState{
			"orders": doneTable(2, 2, announced("a", 1, 0, 1))}}, false},
		{"no table_done yet", runState{done: done(ok), tables: map[string]*tableState{}}, false},
		{"an empty table needs no part", runState{done: done(ok), tables: map[string]*tableState{"orders": doneTable(0, 1)}}, true},
		{"a failed table waits for nothing", runState{done: done(schemas.TableResult{Table: "orders", Status: schemas.StatusFailed}),
			tables: map[string]*tableState{}}, true},
		{"a remote table waits for nothing", runState{done: done(schemas.TableResult{Table: "v", Status: schemas.StatusDone,
			QueryMode: schemas.ModeRemote}), tables: map[string]*tableState{}}, true},
		{"a dead-lettered batch fails the table instead of waiting", runState{done: done(ok), tables: map[string]*tableState{
			"orders": func() *tableState {
				t := doneTable(2, 1, announced("a", 1, 0))
				t.batchFailed = map[int]string{1: "bad"}
				return t
			}()}}, true},
		{"published runs are not ready", runState{published: true, done: done(ok), tables: map[string]*tableState{
			"orders": doneTable(0, 1)}}, false},
	}
	for _, c := range cases {
		got := c.run.ready()
		if c.run.done != nil && !c.run.published {
			got = c.run.complete()
		}
		if got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestPlanTable(t *testing.T) {
	run := runA
	partitioned := doneTable(1, 1, announced("a", 1, 0))
	partitioned.done.WriteMode, partitioned.done.PrimaryKey = schemas.WritePartitioned, []string{"id"}
	keyless := doneTable(1, 1, announced("a", 1, 0))
	keyless.done.WriteMode = schemas.WritePartitioned
	failedBatch := doneTable(1, 1)
	failedBatch.batchFailed = map[int]string{1: "batch 0 could not be written: bad"}
	done := func(table, mode string) schemas.TableResult {
		return schemas.TableResult{Table: table, Status: schemas.StatusDone, QueryMode: mode}
	}
	cases := []struct {
		name    string
		res     schemas.TableResult
		t       *tableState
		step    tableStep
		failure string // substring of the error of a refused table
	}{
		{"batch table becomes a version", done("orders", schemas.ModeLocal), doneTable(1, 1, announced("a", 1, 0)), stepVersion, ""},
		{"remote table is a view", done("v", schemas.ModeRemote), nil, stepRemote, ""},
		{"failed by the producer stays failed", schemas.TableResult{Table: "orders", Status: schemas.StatusFailed, Error: "read"}, nil, stepReport, "read"},
		{"unsafe name is refused", done("../x", schemas.ModeLocal), doneTable(1, 1), stepReport, "table"},
		{"no table_done", done("orders", schemas.ModeLocal), nil, stepReport, "no table_done"},
		{"dead-lettered batch", done("orders", schemas.ModeLocal), failedBatch, stepReport, "could not be written"},
		{"partitioned table", done("issues", schemas.ModeLocal), partitioned, stepPartitioned, ""},
		{"partitioned without key", done("issues", schemas.ModeLocal), keyless, stepReport, "key column"},
	}
	for _, c := range cases {
		pl := planTable(run, c.res, c.t)
		if pl.step != c.step {
			t.Errorf("%s: step %d, want %d", c.name, pl.step, c.step)
		}
		if c.failure != "" && (pl.res.Status != schemas.StatusFailed || !strings.Contains(pl.res.Error, c.failure)) {
			t.Errorf("%s: result %+v, want failed with %q", c.name, pl.res, c.failure)
		}
		if c.failure == "" && pl.res.Status != schemas.StatusDone {
			t.Errorf("%s: result %+v, want done", c.name, pl.res)
		}
		if pl.step == stepVersion && pl.version != ".versions/orders/"+run+".parquet" {
			t.Errorf("%s: version %q", c.name, pl.version)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	if _, err := New(Options{}); err == nil || !strings.Contains(err.Error(), "no JetStream client") || !strings.Contains(err.Error(), "no data dir") {
		t.Errorf("empty options: %v", err)
	}
	if err := (Options{DataDir: "x", RetireGrace: -time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("negative grace: %v", err)
	}
}

// TestRetryResetStartsOver: after a success the next failure waits the
// shortest delay again, not the one the earlier failures had reached.
func TestRetryResetStartsOver(t *testing.T) {
	r := retry{backoff: natsbus.Backoff{Min: time.Second, Max: time.Minute}}
	now := time.Now()
	for range 4 {
		r.failed(now)
	}
	r.reset()
	if !r.since.IsZero() || !r.due(now) {
		t.Errorf("after reset: since %v, due %v", r.since, r.due(now))
	}
	if d := r.failed(now); d != time.Second {
		t.Errorf("first failure after a reset waits %v, want 1s", d)
	}
}
