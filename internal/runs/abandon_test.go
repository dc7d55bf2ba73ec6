package runs

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// TestApplyAbandoned: run_abandoned ends a running run with its reason; an
// extract published after all wins in either order.
func TestApplyAbandoned(t *testing.T) {
	gone := ev(schemas.EventRunAbandoned, 3, func(e *schemas.Event) { e.Attempt = 0; e.Error = "its producer p.1 stopped" })
	r := fold([]schemas.Event{ev(schemas.EventRunStarted, 1, nil), gone})
	if r.Status != Abandoned || r.Error != "its producer p.1 stopped" || !r.EndedAt.Equal(t0.Add(3*time.Second)) {
		t.Errorf("record %+v", r)
	}
	for _, evs := range [][]schemas.Event{append(history(), gone), append([]schemas.Event{gone}, history()...)} {
		if r := fold(evs); r.Status != Published || r.Error != "" || !r.EndedAt.Equal(t0.Add(8*time.Second)) {
			t.Errorf("abandoned and published: record %s %q %v, want published", r.Status, r.Error, r.EndedAt)
		}
	}
	if r := fold([]schemas.Event{ev(schemas.EventRunFailed, 2, nil), gone}); r.Status != Failed {
		t.Errorf("a failed run became %s", r.Status)
	}
}

// reaperEnv is a bus with the stores the reaper reads.
type reaperEnv struct {
	js    jetstream.JetStream
	store *Store
	live  *Liveness
	locks jetstream.KeyValue
}

func newReaperEnv(t *testing.T) *reaperEnv {
	js := natstest.MustStart(t)
	ctx := context.Background()
	e := &reaperEnv{js: js}
	var err error
	if e.store, err = Open(ctx, js); err != nil {
		t.Fatal(err)
	}
	if e.live, err = OpenLiveness(ctx, js); err != nil {
		t.Fatal(err)
	}
	if e.locks, err = natsbus.KeyValue(ctx, js, schemas.LockBucket); err != nil {
		t.Fatal(err)
	}
	return e
}

// running makes run of source running under producer, holding the lock.
func (e *reaperEnv) running(t *testing.T, source, run, producer string) {
	t.Helper()
	ctx := context.Background()
	req := schemas.SyncRequest{RunID: run, Source: source, RequestedAt: t0}
	if _, err := e.store.Claim(ctx, req, producer); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Update(ctx, source, run, func(r *Record) {
		r.Apply(schemas.Event{Type: schemas.EventRunStarted, RunID: run, Source: source, Time: t0})
	}); err != nil {
		t.Fatal(err)
	}
	if err := natsbus.AcquireRun(ctx, e.locks, source, run); err != nil {
		t.Fatal(err)
	}
}

// abandoned reports whether run_abandoned of run is on the bus, and why.
func (e *reaperEnv) abandoned(t *testing.T, source, run string) (string, bool) {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, schemas.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, schemas.EventSubject(source, run, schemas.EventRunAbandoned))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	got, err := schemas.DecodeEvent(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return got.Error, true
}

const (
	runA = "00000000-0000-4000-8000-00000000000a"
	runB = "00000000-0000-4000-8000-00000000000b"
	runC = "00000000-0000-4000-8000-00000000000c"
)

// TestReaperAbandonsOnlyDeadRunsWithNoSuccessor: a run whose producer's
// key is gone is abandoned when no producer is alive; not while one is
// (it will retry the run), not when its producer is alive, and not when
// its run_done is on the bus (the finalizer has it).
func TestReaperAbandonsOnlyDeadRunsWithNoSuccessor(t *testing.T) {
	e := newReaperEnv(t)
	ctx := context.Background()
	r := NewReaper(e.js, slog.New(slog.DiscardHandler))
	kv, err := natsbus.KeyValue(ctx, e.js, schemas.ProducerBucket)
	if err != nil {
		t.Fatal(err)
	}
	e.running(t, "a", runA, "p-dead.00000001")
	e.running(t, "b", runB, "p-live.00000002")
	e.running(t, "c", runC, "p-dead.00000001")
	if _, err := e.js.Publish(ctx, schemas.EventSubject("c", runC, schemas.EventRunDone), mustEncode(t, schemas.Event{Type: schemas.EventRunDone, RunID: runC, Source: "c", Time: t0, Attempt: 1})); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(ctx, "p-live.00000002", "p-live"); err != nil {
		t.Fatal(err)
	}
	// A live producer (p-live) will take run A's request over: nothing is
	// abandoned.
	if err := r.sweep(ctx, e.store, e.live, e.locks); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ source, run string }{{"a", runA}, {"b", runB}, {"c", runC}} {
		if why, ok := e.abandoned(t, c.source, c.run); ok {
			t.Errorf("run of %s abandoned while a producer lives: %s", c.source, why)
		}
	}
	// p-live stops (its key goes, as at its end): run A is abandoned; run
	// B, whose producer that was, too; run C was read to the end.
	if err := kv.Delete(ctx, "p-live.00000002"); err != nil {
		t.Fatal(err)
	}
	if err := r.sweep(ctx, e.store, e.live, e.locks); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ source, run string }{{"a", runA}, {"b", runB}} {
		if why, ok := e.abandoned(t, c.source, c.run); !ok || !strings.Contains(why, "no producer is left") {
			t.Errorf("run of %s: abandoned %v (%q), want abandoned with no producer left", c.source, ok, why)
		}
	}
	if why, ok := e.abandoned(t, "c", runC); ok {
		t.Errorf("a run read to the end was abandoned: %s", why)
	}
}

// TestTakeOver: a newer request takes the lock of a run whose producer is
// dead (and abandons it), never of a live one's.
func TestTakeOver(t *testing.T) {
	e := newReaperEnv(t)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	kv, err := natsbus.KeyValue(ctx, e.js, schemas.ProducerBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(ctx, "p-live.00000002", "p-live"); err != nil {
		t.Fatal(err)
	}
	e.running(t, "a", runA, "p-live.00000002")
	if took, err := e.store.TakeOver(ctx, log, e.locks, "a", runA, runB); err != nil || took {
		t.Fatalf("took the lock of a live run: %v %v", took, err)
	}
	if holder, _ := natsbus.LockHolder(ctx, e.locks, "a"); holder != runA {
		t.Fatalf("lock held by %q", holder)
	}
	e.running(t, "b", runC, "p-dead.00000001")
	took, err := e.store.TakeOver(ctx, log, e.locks, "b", runC, runB)
	if err != nil || !took {
		t.Fatalf("did not take the lock of a dead run: %v %v", took, err)
	}
	if holder, _ := natsbus.LockHolder(ctx, e.locks, "b"); holder != "" {
		t.Errorf("lock still held by %q", holder)
	}
	if why, ok := e.abandoned(t, "b", runC); !ok || !strings.Contains(why, "took its place") {
		t.Errorf("abandoned %v %q", ok, why)
	}
}

func mustEncode(t *testing.T, e schemas.Event) []byte {
	t.Helper()
	b, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
