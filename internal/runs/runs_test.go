package runs

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

const run1 = "00000000-0000-4000-8000-000000000001"

var t0 = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)

func ev(typ schemas.EventType, sec int, mod func(*schemas.Event)) schemas.Event {
	e := schemas.Event{Type: typ, RunID: run1, Source: "demo", Time: t0.Add(time.Duration(sec) * time.Second), Attempt: 1}
	if mod != nil {
		mod(&e)
	}
	return e
}

// history is a published run of two tables, one failed.
func history() []schemas.Event {
	return []schemas.Event{
		ev(schemas.EventRunStarted, 1, func(e *schemas.Event) { e.Tables = []string{"orders", "customers"}; e.Trigger = schemas.TriggerAPI }),
		ev(schemas.EventTableStarted, 2, func(e *schemas.Event) { e.Table = "orders"; e.SchemaChanges = []string{"added column note"} }),
		ev(schemas.EventTableStarted, 2, func(e *schemas.Event) { e.Table = "customers" }),
		ev(schemas.EventTableDone, 5, func(e *schemas.Event) { e.Table = "orders"; e.Rows = 1000 }),
		ev(schemas.EventTableFailed, 4, func(e *schemas.Event) { e.Table = "customers"; e.Error = "HTTP 500" }),
		ev(schemas.EventRunDone, 6, func(e *schemas.Event) {
			e.Results = []schemas.TableResult{{Table: "orders", Status: "done", Rows: 1000}, {Table: "customers", Status: "failed", Error: "HTTP 500"}}
		}),
		ev(schemas.EventExtractPublished, 8, func(e *schemas.Event) {
			e.Attempt = 0 // the finalizer's events carry none
			e.Results = []schemas.TableResult{{Table: "orders", Status: "done", Rows: 1000, SizeBytes: 4096}, {Table: "customers", Status: "failed", Error: "HTTP 500"}}
			e.Path = "/data/extracts/demo/extract.duckdb"
		}),
	}
}

func fold(evs []schemas.Event) Record {
	var r Record
	for _, e := range evs {
		r.Apply(e)
	}
	return r
}

func TestApplyFoldsARun(t *testing.T) {
	r := fold(history())
	if r.Status != Published || r.Trigger != "api" || r.Attempt != 1 || r.Path == "" {
		t.Fatalf("record %+v", r)
	}
	if !r.StartedAt.Equal(t0.Add(time.Second)) || !r.EndedAt.Equal(t0.Add(8*time.Second)) {
		t.Errorf("started %v, ended %v", r.StartedAt, r.EndedAt)
	}
	if len(r.Tables) != 2 {
		t.Fatalf("tables %+v", r.Tables)
	}
	o, c := r.Tables[0], r.Tables[1]
	if o.Name != "orders" || o.Status != "done" || o.Rows != 1000 || o.Bytes != 4096 || o.DurationMS != 3000 ||
		!reflect.DeepEqual(o.SchemaChanges, []string{"added column note"}) || o.Error != "" {
		t.Errorf("orders %+v", o)
	}
	if c.Name != "customers" || c.Status != "failed" || c.Error != "HTTP 500" || c.DurationMS != 2000 {
		t.Errorf("customers %+v", c)
	}
	// The JSON names the interface promises.
	b, _ := json.Marshal(r)
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"run_id", "source", "trigger", "attempt", "started_at", "ended_at", "status", "error", "tables"} {
		if _, ok := m[k]; !ok {
			t.Errorf("record JSON lacks %q: %s", k, b)
		}
	}
	tab := m["tables"].([]any)[0].(map[string]any)
	for _, k := range []string{"rows", "bytes", "duration_ms", "schema_changes", "error"} {
		if _, ok := tab[k]; !ok {
			t.Errorf("table JSON lacks %q: %s", k, b)
		}
	}
}

// TestApplyInAnyOrder: recorders may store a run's events in any order and
// more than once; the record comes out the same.
func TestApplyInAnyOrder(t *testing.T) {
	want := fold(history())
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		evs := append(history(), history()[rng.IntN(7)])
		rng.Shuffle(len(evs), func(a, b int) { evs[a], evs[b] = evs[b], evs[a] })
		got := fold(evs)
		// Tables may be listed in another order; compare by name.
		if got.Status != want.Status || !got.StartedAt.Equal(*want.StartedAt) || !got.EndedAt.Equal(*want.EndedAt) || len(got.Tables) != 2 {
			t.Fatalf("order %d: %+v, want %+v", i, got, want)
		}
		for _, wt := range want.Tables {
			found := false
			for _, gt := range got.Tables {
				if gt.Name == wt.Name {
					found = reflect.DeepEqual(gt, wt)
				}
			}
			if !found {
				t.Fatalf("order %d: table %s is %+v, want %+v", i, wt.Name, got.Tables, wt)
			}
		}
	}
}

// TestApplyTerminalStays: the first terminal status is final, and a newer
// attempt's table figures replace an older attempt's.
func TestApplyTerminalStays(t *testing.T) {
	r := fold([]schemas.Event{
		ev(schemas.EventRunStarted, 1, nil),
		ev(schemas.EventRunFailed, 3, func(e *schemas.Event) { e.Error = "connector: boom" }),
		ev(schemas.EventRunRejected, 4, func(e *schemas.Event) { e.Error = "late" }),
		ev(schemas.EventRunStarted, 5, nil),
	})
	if r.Status != Failed || r.Error != "connector: boom" || !r.EndedAt.Equal(t0.Add(3*time.Second)) {
		t.Errorf("record %+v", r)
	}
	r = fold([]schemas.Event{
		ev(schemas.EventTableDone, 2, func(e *schemas.Event) { e.Table = "t"; e.Rows = 5 }),
		ev(schemas.EventTableStarted, 3, func(e *schemas.Event) { e.Table = "t"; e.Attempt = 2 }),
		ev(schemas.EventTableDone, 4, func(e *schemas.Event) { e.Table = "t"; e.Rows = 1 }), // attempt 1, late
	})
	if tb := r.Tables[0]; tb.Attempt != 2 || tb.Rows != 0 || tb.Status != "running" || r.Attempt != 2 {
		t.Errorf("table %+v, attempt %d: the second attempt's table must replace the first's", tb, r.Attempt)
	}
}

func TestParseStatus(t *testing.T) {
	for _, s := range Statuses {
		if got, ok := ParseStatus(string(s)); !ok || got != s {
			t.Errorf("ParseStatus(%q) = %q, %v", s, got, ok)
		}
	}
	if _, ok := ParseStatus("done"); ok {
		t.Error("ParseStatus accepted done")
	}
}

// TestRecorder: events on the bus become the record; a queued record keeps
// what only the request knows; a forged event is dropped.
func TestRecorder(t *testing.T) {
	js := natstest.MustStart(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	req := schemas.SyncRequest{RunID: run1, Source: "demo", RequestedAt: t0, RequestedBy: schemas.TriggerCLI}
	if err := store.Queue(ctx, req); err != nil {
		t.Fatal(err)
	}
	if r, err := store.Get(ctx, "demo", run1); err != nil || r.Status != Queued || r.Trigger != "cli" || !r.QueuedAt.Equal(t0) {
		t.Fatalf("queued record %+v, %v", r, err)
	}
	done := make(chan error, 1)
	go func() { done <- NewRecorder(js, nil).Run(ctx) }()
	// A forged event first: its subject names another run than its body.
	// Recorded, it would have failed run1.
	forged := ev(schemas.EventRunFailed, 0, func(e *schemas.Event) { e.Error = "forged" })
	publish(t, js, schemas.EventSubject("demo", "00000000-0000-4000-8000-000000000009", schemas.EventRunFailed), forged)
	for _, e := range history() {
		e.Trigger = ""
		publish(t, js, schemas.EventSubject(e.Source, e.RunID, e.Type), e)
	}
	var r Record
	natstest.Poll(t, 10*time.Second, func() (bool, string) {
		r, err = store.Get(ctx, "demo", run1)
		return err == nil && r.Status == Published, "record " + string(r.Status)
	})
	if r.Trigger != "cli" || !r.QueuedAt.Equal(t0) || len(r.Tables) != 2 || r.Tables[0].Bytes != 4096 || r.Error != "" {
		t.Errorf("record %+v", r)
	}
	if _, err := store.Get(ctx, "demo", "00000000-0000-4000-8000-000000000009"); err == nil {
		t.Error("a forged event made a record")
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func publish(t *testing.T, js jetstream.JetStream, subject string, e schemas.Event) {
	t.Helper()
	b, _ := json.Marshal(e)
	if _, err := js.Publish(context.Background(), subject, b); err != nil {
		t.Fatal(err)
	}
}

// TestListPages: pages follow each other without gaps or repeats, also
// when runs started at the same instant; filters and cursors are checked.
func TestListPages(t *testing.T) {
	js := natstest.MustStart(t)
	ctx := context.Background()
	store, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range 7 {
		id := "00000000-0000-4000-8000-00000000001" + string(rune('0'+i))
		at := t0.Add(time.Duration(i/3) * time.Second) // three share an instant
		if _, err := store.Update(ctx, "demo", id, func(r *Record) {
			*r = Record{RunID: id, Source: "demo", Status: Published, StartedAt: &at}
			if i == 6 {
				r.Status = Failed
			}
		}); err != nil {
			t.Fatal(err)
		}
		want[id] = true
	}
	var got []Record
	cur := ""
	for range 10 {
		p, err := store.List(ctx, Filter{Limit: 2, Cursor: cur})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p.Runs...)
		if cur = p.Next; cur == "" {
			break
		}
	}
	if len(got) != 7 {
		t.Fatalf("pages hold %d runs, want 7", len(got))
	}
	for i, r := range got {
		if !want[r.RunID] {
			t.Errorf("run %s listed twice or unknown", r.RunID)
		}
		delete(want, r.RunID)
		if i > 0 && newer(got[i-1], r) >= 0 {
			t.Errorf("%s listed before %s: not newest first", got[i-1].RunID, r.RunID)
		}
	}
	if p, err := store.List(ctx, Filter{Status: Failed}); err != nil || len(p.Runs) != 1 {
		t.Errorf("failed runs: %+v, %v", p.Runs, err)
	}
	if p, err := store.List(ctx, Filter{Source: "other"}); err != nil || len(p.Runs) != 0 || p.Runs == nil {
		t.Errorf("another source's runs: %#v, %v", p.Runs, err)
	}
	for _, f := range []Filter{{Cursor: "x"}, {Status: "done"}, {Limit: MaxLimit + 1}, {Source: "a b"}} {
		if _, err := store.List(ctx, f); err == nil {
			t.Errorf("filter %+v accepted", f)
		}
	}
}

// TestApplyCancelled: a cancel ends a running or writing run; it does not
// undo a published one.
func TestApplyCancelled(t *testing.T) {
	r := fold([]schemas.Event{ev(schemas.EventRunStarted, 1, nil), ev(schemas.EventRunDone, 2, nil),
		ev(schemas.EventRunCancelled, 3, func(e *schemas.Event) { e.Error = "cancelled on request" })})
	if r.Status != Cancelled || r.Error != "cancelled on request" || !r.EndedAt.Equal(t0.Add(3*time.Second)) {
		t.Errorf("record %+v", r)
	}
	r = fold(append(history(), ev(schemas.EventRunCancelled, 9, nil)))
	if r.Status != Published {
		t.Errorf("a cancel after the publish made the record %s", r.Status)
	}
}
