package writer

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func runWriter(t *testing.T, js jetstream.JetStream, dir, name string, opts Options) (*Writer, context.CancelFunc) {
	t.Helper()
	opts.JS, opts.DataDir, opts.Name, opts.Logger = js, dir, name, slog.New(slog.DiscardHandler)
	w := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return w, stop
}

// shared reports whether the writers' lanes are disjoint and together
// number want.
func shared(want int, ws ...*Writer) (bool, string) {
	var all []int
	var desc []string
	for _, w := range ws {
		l := w.Lanes()
		all = append(all, l...)
		desc = append(desc, fmt.Sprint(l))
	}
	slices.Sort(all)
	return len(all) == want && len(slices.Compact(all)) == want, fmt.Sprintf("lanes %v", desc)
}

// TestLanesSharedOut: live writers split the lanes evenly; a writer that
// stops beating loses its share after WriterTTL, one that stops cleanly at
// once.
func TestLanesSharedOut(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	w1, _ := runWriter(t, js, dir, "w1", Options{})
	natstest.Poll(t, 10*time.Second, func() (bool, string) { return shared(schemas.DataLanes, w1) })
	w2, stop2 := runWriter(t, js, dir, "w2", Options{})
	natstest.Poll(t, 10*time.Second, func() (bool, string) {
		ok, desc := shared(schemas.DataLanes, w1, w2)
		return ok && len(w1.Lanes()) == schemas.DataLanes/2, desc
	})

	// A peer that beats once and then dies without a word: while it is
	// live, w1 and w2 leave it its share; after WriterTTL they take it back.
	ctx := context.Background()
	kv, err := natsbus.KeyValue(ctx, js, schemas.WriterBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(ctx, "peer.00000000", "peer"); err != nil {
		t.Fatal(err)
	}
	natstest.Poll(t, 10*time.Second, func() (bool, string) {
		n := len(w1.Lanes()) + len(w2.Lanes())
		ok, desc := shared(n, w1, w2)
		return ok && n < schemas.DataLanes && n >= schemas.DataLanes*2/3, desc
	})
	gone := time.Now()
	natstest.Poll(t, 10*time.Second, func() (bool, string) { return shared(schemas.DataLanes, w1, w2) })
	if since := time.Since(gone); since < schemas.WriterTTL/2 {
		t.Errorf("the dead peer's lanes were taken back after %v; it was live for WriterTTL %v", since, schemas.WriterTTL)
	}

	// w2 stops cleanly: w1 reads every lane again.
	stop2()
	natstest.Poll(t, 5*time.Second, func() (bool, string) { return shared(schemas.DataLanes, w1) })
}

func publishLane(t *testing.T, js jetstream.JetStream, run string, lane int, seq int64) {
	t.Helper()
	h := nats.Header(schemas.DataHeader(run, "src", "things", 1, seq, 10))
	h.Set(schemas.HeaderSchema, schemas.Fingerprint(testSchema))
	if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: schemas.LaneSubject("src", "things", lane), Header: h,
		Data: mustBatch(t, seq*10, 10)}); err != nil {
		t.Fatal(err)
	}
}

// TestLanesKeepRunsApart: a writer reading two chunks of a table at once,
// on two lanes, writes each chunk as its own part of consecutive seqs,
// however their batches interleave.
func TestLanesKeepRunsApart(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	announceRun(t, js, run1)
	for seq := range int64(5) {
		publishLane(t, js, run1, 3, seq)
		publishLane(t, js, run1, 4, seq+5)
	}
	runWriter(t, js, dir, "w1", Options{RowGroupRows: 50, FlushAfter: 5 * time.Second})
	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run1+".batch_written", 20*time.Second, func(evs []schemas.Event) bool {
		n := 0
		for _, e := range evs {
			n += len(e.Seqs)
		}
		return n >= 10
	})
	var parts [][]int64
	for _, e := range evs {
		parts = append(parts, e.Seqs)
	}
	slices.SortFunc(parts, func(a, b []int64) int { return int(a[0] - b[0]) })
	if want := [][]int64{{0, 1, 2, 3, 4}, {5, 6, 7, 8, 9}}; fmt.Sprint(parts) != fmt.Sprint(want) {
		t.Errorf("parts hold seqs %v, want %v", parts, want)
	}
}

// TestWriterBoundsHeldBytes: batches of many tables held at once stay
// under MaxHeldBytes; the largest buffer is written early.
func TestWriterBoundsHeldBytes(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	announceRun(t, js, run1)
	batch := mustBatch(t, 0, 10)
	rec, err := schemas.DecodeBatch(batch, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	per := recordBytes(rec)
	rec.Release()
	for lane := range 8 {
		publishLane(t, js, run1, lane, int64(lane))
	}
	w, stop := runWriter(t, js, dir, "w1", Options{RowGroupRows: 1 << 20, FlushAfter: time.Hour, MaxHeldBytes: 3 * per, MaxOpenLanes: 8})
	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run1+".batch_written", 20*time.Second, func(evs []schemas.Event) bool {
		return len(evs) >= 5
	})
	stop()
	if len(evs) < 5 {
		t.Errorf("%d parts written before stopping with 8 batches held and room for 3", len(evs))
	}
	if w.held != 0 {
		t.Errorf("held %d bytes after stopping", w.held)
	}
}

// TestLaneHandover: a lane changes hands in the middle of a chunk (a
// writer joins); every batch is written once, and the parts are runs of
// consecutive seqs that together hold the chunk, so the finalizer joins them.
func TestLaneHandover(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	announceRun(t, js, run1)
	opts := Options{RowGroupRows: 1 << 20, FlushAfter: 300 * time.Millisecond}
	w1, _ := runWriter(t, js, dir, "w1", opts)
	natstest.Poll(t, 10*time.Second, func() (bool, string) { return shared(schemas.DataLanes, w1) })
	// A source publishing at a steady pace while w2 joins.
	const n = 300
	pace := time.NewTicker(5 * time.Millisecond)
	defer pace.Stop()
	var w2 *Writer
	for seq := range int64(n) {
		<-pace.C
		publishLane(t, js, run1, 3, seq)
		if seq == n/3 {
			w2, _ = runWriter(t, js, dir, "w2", opts)
		}
	}
	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run1+".batch_written", 30*time.Second, func(evs []schemas.Event) bool {
		seen := map[int64]bool{}
		for _, e := range evs {
			for _, s := range e.Seqs {
				seen[s] = true
			}
		}
		return len(seen) == n
	})
	natstest.Poll(t, 10*time.Second, func() (bool, string) { return shared(schemas.DataLanes, w1, w2) })
	held := map[int64]int{}
	for _, e := range evs {
		for i, s := range e.Seqs {
			held[s]++
			if i > 0 && s != e.Seqs[i-1]+1 {
				t.Errorf("part %s by %s holds seqs %v: not a run", e.Part, e.Writer, e.Seqs)
				break
			}
		}
		t.Logf("%s: %d..%d", e.Writer, e.Seqs[0], e.Seqs[len(e.Seqs)-1])
	}
	for s, k := range held {
		if k != 1 {
			t.Errorf("seq %d written %d times", s, k)
		}
	}
}

// TestGateFinishesStartedChunks: a writer behind on three lanes builds one
// part at a time with MaxOpenLanes 1, instead of one on every lane at once,
// and every part is a whole chunk.
func TestGateFinishesStartedChunks(t *testing.T) {
	for _, maxOpen := range []int{1, 2} {
		t.Run(fmt.Sprint("MaxOpenLanes", maxOpen), func(t *testing.T) {
			js := natstest.MustStart(t)
			dir := t.TempDir()
			announceRun(t, js, run1)
			// Three chunks of 5 batches, published in turn, all waiting
			// before the writer starts.
			for i := range int64(5) {
				for lane := range int64(3) {
					publishLane(t, js, run1, int(lane)+3, lane*5+i)
				}
			}
			w, stop := runWriter(t, js, dir, "w1", Options{RowGroupRows: 50, FlushAfter: 10 * time.Second, MaxOpenLanes: maxOpen})
			evs := natstest.WaitEvents(t, js, "agnes.events.src."+run1+".batch_written", 20*time.Second, func(evs []schemas.Event) bool {
				return len(evs) >= 3
			})
			stop()
			var parts [][]int64
			for _, e := range evs {
				parts = append(parts, e.Seqs)
			}
			slices.SortFunc(parts, func(a, b []int64) int { return int(a[0] - b[0]) })
			if want := [][]int64{{0, 1, 2, 3, 4}, {5, 6, 7, 8, 9}, {10, 11, 12, 13, 14}}; fmt.Sprint(parts) != fmt.Sprint(want) {
				t.Errorf("parts hold seqs %v, want %v", parts, want)
			}
			if w.PeakOpenLanes > maxOpen {
				t.Errorf("%d lanes had a part in the making at once, MaxOpenLanes %d", w.PeakOpenLanes, maxOpen)
			}
		})
	}
}
