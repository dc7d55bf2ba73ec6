package finalizer

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// flakyKV answers its first fail Gets with a bus timeout, as a bucket
// does while its stream elects a leader.
type flakyKV struct {
	jetstream.KeyValue
	fail, gets atomic.Int32
}

func (k *flakyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.gets.Add(1)
	if k.fail.Add(-1) >= 0 {
		return nil, nats.ErrTimeout
	}
	return k.KeyValue.Get(ctx, key)
}

// openState opens the state and lock buckets a finalizer opens in Run.
func openState(t *testing.T, f *Finalizer, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	ctx := context.Background()
	var err error
	if f.state, err = natsbus.KeyValue(ctx, js, schemas.StateBucket); err != nil {
		t.Fatal(err)
	}
	if f.lockKV, err = natsbus.KeyValue(ctx, js, schemas.LockBucket); err != nil {
		t.Fatal(err)
	}
	return f.state
}

// stagedRun is a complete run of source with one incremental table t of
// three batches, its parts staged on disk.
func stagedRun(t *testing.T, f *Finalizer, source, runID string) *runState {
	t.Helper()
	dir := f.staging(source, runID, "t")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := mustPart(t, dir, "p.part", 0, 1, 2)
	enc, err := schemas.EncodeSchema(idSchema)
	if err != nil {
		t.Fatal(err)
	}
	tbl := doneTable(3, 1, announced(filepath.Base(p.path), 1, 0, 1, 2))
	tbl.done.Table, tbl.done.Schema, tbl.done.WriteMode = "t", enc, schemas.WriteReplace
	tbl.done.Cursor = &schemas.Cursor{Column: "id", Type: "int64", Value: "29"}
	return &runState{source: source, tables: map[string]*tableState{"t": tbl},
		done: &schemas.Event{Type: schemas.EventRunDone, RunID: runID, Source: source, Attempt: 1,
			Results: []schemas.TableResult{{Table: "t", Status: schemas.StatusDone, QueryMode: schemas.ModeLocal}}}}
}

// TestFinalizeRetriesOnlyWhatMayPass: a bus timeout while the run is
// finalized is retried until it passes (and the run publishes once); a
// damaged catalog, which no retry mends, fails the run at the first try.
func TestFinalizeRetriesOnlyWhatMayPass(t *testing.T) {
	ctx := context.Background()
	js := natstest.MustStart(t)
	dataDir := t.TempDir()
	f, err := New(Options{JS: js, DataDir: dataDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	real := openState(t, f, js)
	kv := &flakyKV{KeyValue: real}
	kv.fail.Store(2)
	f.state = kv

	o := newOwner(f, "src")
	r := stagedRun(t, f, "src", runA)
	attempts := 0
	for r.ready() && attempts < 10 {
		attempts++
		o.finalizeRun(ctx, runA, r)
	}
	if !r.published || r.failed || attempts != 3 {
		t.Fatalf("published %v failed %v after %d attempts, want published after 3 (two bus timeouts)", r.published, r.failed, attempts)
	}
	if got := kv.gets.Load(); got != 3 {
		t.Errorf("cursor read %d times, want 3", got)
	}
	x, err := extractcheck.Verify(ctx, filepath.Join(dataDir, "extracts", "src", schemas.ExtractFile))
	if err != nil || x.Counts["t"] != 30 {
		t.Errorf("published: %v, %+v", err, x)
	}
	e, err := real.Get(ctx, schemas.CursorKey("src", "t"))
	if err != nil || !strings.Contains(string(e.Value()), "29") {
		t.Errorf("cursor not committed: %v", err)
	}

	// A damaged catalog: one try, then run_failed with the reason.
	dir := filepath.Join(dataDir, "extracts", "src2", ".agnes")
	os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "catalog.json"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	o2 := newOwner(f, "src2")
	r2 := stagedRun(t, f, "src2", runB)
	o2.finalizeRun(ctx, runB, r2)
	if !r2.failed || r2.published {
		t.Fatalf("damaged catalog: failed %v published %v after one try, want failed", r2.failed, r2.published)
	}
	evs := natstest.WaitEvents(t, js, "agnes.events.>", 10*time.Second, func(evs []schemas.Event) bool {
		for _, ev := range evs {
			if ev.Type == schemas.EventRunFailed && ev.RunID == runB {
				return true
			}
		}
		return false
	})
	for _, ev := range evs {
		if ev.Type == schemas.EventRunFailed && ev.RunID == runB && !strings.Contains(ev.Error, "load catalog") {
			t.Errorf("run_failed says %q", ev.Error)
		}
	}
}

// TestRefusedAnnouncementIsRetried: the bus refuses extract_published for
// longer than a publish's own retry budget; the finalizer keeps trying
// until the bus takes it, and whoever waits for the run sees it, once.
func TestRefusedAnnouncementIsRetried(t *testing.T) {
	budget := natsbus.RetryBudget
	natsbus.RetryBudget = 300 * time.Millisecond
	t.Cleanup(func() { natsbus.RetryBudget = budget })
	ctx := context.Background()
	real := natstest.MustStart(t)
	js := natstest.Refuse(real, "."+string(schemas.EventExtractPublished), 12)
	f, err := New(Options{JS: js, DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	openState(t, f, real)
	r := stagedRun(t, f, "src", runA)
	newOwner(f, "src").finalizeRun(ctx, runA, r)
	if got := js.Refused.Load(); got != 12 {
		t.Errorf("refused %d times, want 12", got)
	}
	evs := natstest.WaitEvents(t, real, "agnes.events.src.>", 10*time.Second, func(evs []schemas.Event) bool {
		for _, ev := range evs {
			if ev.Type == schemas.EventExtractPublished && ev.RunID == runA {
				return true
			}
		}
		return false
	})
	n := 0
	for _, ev := range evs {
		if ev.Type == schemas.EventExtractPublished {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d extract_published events, want 1", n)
	}
}
