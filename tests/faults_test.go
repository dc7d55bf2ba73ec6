package tests

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go/jetstream"
)

// TestWritersScaleOut: 1, 2 and 4 writer processes publish the same rows,
// and with several writers each does part of the work. A table travels in
// chunks of a row group, one lane each (schemas.Lane), so 600,000 rows are
// enough chunks for 4 writers.
func TestWritersScaleOut(t *testing.T) {
	rows := int64(600_000)
	if *soak {
		rows = 1_000_000
	}
	for _, n := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("Writers%d", n), func(t *testing.T) {
			e := newProcEnv(t, 1, rows, rows/10)
			e.serve("producer", "producer")
			e.serve("finalizer", "finalizer")
			for i := range n {
				e.serve(fmt.Sprintf("w%d", i+1), "writer")
			}
			start := time.Now()
			run := e.startSync()
			ev := e.finish(run, 3*time.Minute)
			took := time.Since(start)
			if ev.Type != schemas.EventExtractPublished {
				t.Fatalf("run failed: %s", ev.Error)
			}
			e.verifyPublished()
			shares := e.writerShares(run)
			t.Logf("%d writer process(es): %d rows in %s (%.0f rows/s); shares %v", n, rows+rows/10, took.Round(time.Millisecond),
				float64(rows+rows/10)/took.Seconds(), shares)
			if len(shares) != n {
				t.Errorf("%d writers did work, want %d: %v", len(shares), n, shares)
			}
		})
	}
}

func seeded(t *testing.T) int64 {
	if *trialSeed != 0 {
		return *trialSeed
	}
	return time.Now().UnixNano()
}

// TestKillWriterTrials: kill -9 a writer at a random moment while a run's
// parts are being written, start a replacement, and check that nothing is
// lost or duplicated. A kill counts only if a part of the run was written
// after it (the kill hit the writing, not a finished run); trials repeat
// until the wanted number of kills hit, and the test fails if too few do.
func TestKillWriterTrials(t *testing.T) {
	trials, rows := 10, int64(200_000)
	if *soak {
		trials, rows = 50, 400_000
	}
	e := newProcEnv(t, 1, rows, rows/10)
	e.serve("producer", "producer")
	e.serve("finalizer", "finalizer")
	writers := []*proc{e.serve("w1", "writer"), e.serve("w2", "writer")}
	hits := 0
	for trial := 0; hits < trials; trial++ {
		if trial == 3*trials {
			t.Fatalf("only %d of %d kills hit a run while its parts were written; the trials prove too little", hits, trial)
		}
		seed := seeded(t) + int64(trial)
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		// The moment of the kill, counted from the run's first part.
		delay := time.Duration(rng.IntN(200)) * time.Millisecond
		victim := rng.IntN(len(writers))
		t.Logf("trial %d: seed %d (replay with -trial-seed %d): kill w%d %s after the first part", trial, seed, seed, victim+1, delay)
		run := e.startSync()
		e.waitBatchWritten(run)
		time.Sleep(delay)
		killed := time.Now()
		writers[victim].kill()
		writers[victim] = e.serve(fmt.Sprintf("w%d-%d", victim+1, trial), "writer")
		ev := e.finish(run, 2*time.Minute)
		if ev.Type != schemas.EventExtractPublished {
			t.Fatalf("trial %d (seed %d): run failed: %s", trial, seed, ev.Error)
		}
		for _, r := range ev.Results {
			if r.Status != schemas.StatusDone {
				t.Fatalf("trial %d (seed %d): table %s failed: %s", trial, seed, r.Table, r.Error)
			}
		}
		e.verifyPublished()
		if t.Failed() {
			t.Fatalf("trial %d failed; replay with -trial-seed %d", trial, seed)
		}
		if last, ok := e.eventTime(run, schemas.EventBatchWritten); !ok || !last.After(killed) {
			t.Logf("trial %d: every part was written before the kill; not counted", trial)
			continue
		}
		hits++
	}
	t.Logf("%d kills hit a run while its parts were written", hits)
}

// TestKillProducer: the producer dies mid-table; the request is redelivered
// to a new producer, which publishes everything again as a new attempt; the
// published tables hold exactly the source's rows.
func TestKillProducer(t *testing.T) {
	e := newProcEnv(t, 1, 300_000, 20_000)
	p := e.serve("producer", "producer")
	e.serve("finalizer", "finalizer")
	e.serve("w1", "writer")
	e.serve("w2", "writer")
	run := e.startSync()
	// Kill it as soon as it has started reading the first table.
	if _, ok := e.waitEvent(run, time.Minute, isType(schemas.EventTableStarted)); !ok {
		t.Fatal("the producer did not start")
	}
	p.kill()
	if _, ok := e.waitEvent(run, time.Second, isType(schemas.EventRunDone)); ok {
		t.Fatal("the producer finished before it was killed; the trial proves nothing")
	}
	p2 := e.serve("producer2", "producer")
	ev := e.finish(run, 2*time.Minute)
	if ev.Type != schemas.EventExtractPublished || anyFailed(ev) {
		t.Fatalf("run after the producer was killed: %+v", ev)
	}
	e.verifyPublished()
	if !strings.Contains(p2.output(), "retrying sync run") {
		t.Errorf("the second producer did not take the run over as a new attempt:\n%s", tail(p2.output(), 10))
	}
}

// TestAbandonedRun: the only producer is killed mid-table and none takes
// its place: within seconds the run is recorded abandoned, its staging is
// dropped and the source is free. A producer started afterwards drops the
// dead run's redelivered request instead of retrying it, and runs the next
// sync at once.
func TestAbandonedRun(t *testing.T) {
	e := newProcEnv(t, 1, 300_000, 20_000)
	p := e.serve("producer", "producer")
	e.serve("finalizer", "finalizer")
	e.serve("w1", "writer")
	run := e.startSync()
	if _, ok := e.waitEvent(run, time.Minute, isType(schemas.EventTableStarted)); !ok {
		t.Fatal("the producer did not start")
	}
	p.kill()
	killed := time.Now()
	ev, ok := e.waitEvent(run, time.Minute, isType(schemas.EventRunAbandoned, schemas.EventRunDone))
	switch {
	case !ok:
		t.Fatalf("the run was not abandoned in a minute\n%s", tail(e.procs[1].output(), 20))
	case ev.Type == schemas.EventRunDone:
		t.Fatal("the producer finished before it was killed; the trial proves nothing")
	}
	t.Logf("abandoned %s after the kill: %s", time.Since(killed).Round(100*time.Millisecond), ev.Error)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := runs.Open(ctx, e.js)
	if err != nil {
		t.Fatal(err)
	}
	var rec runs.Record
	natstest.Poll(t, 30*time.Second, func() (bool, string) {
		rec, err = store.Get(ctx, "demo", run)
		return err == nil && rec.Status == runs.Abandoned, fmt.Sprintf("record %+v, %v", rec, err)
	})
	if rec.EndedAt == nil || !strings.Contains(rec.Error, "no producer is left") || !strings.HasPrefix(rec.Producer, "producer.") {
		t.Errorf("record %+v", rec)
	}
	layout, _ := schemas.NewLayout(e.dataDir)
	staging, err := layout.RunStaging("demo", run)
	if err != nil {
		t.Fatal(err)
	}
	natstest.Poll(t, 30*time.Second, func() (bool, string) {
		_, err := os.Stat(staging)
		return errors.Is(err, os.ErrNotExist), fmt.Sprintf("staging %s left: %v", staging, err)
	})
	locks, err := natsbus.KeyValue(ctx, e.js, schemas.LockBucket)
	if err != nil {
		t.Fatal(err)
	}
	if holder, err := natsbus.LockHolder(ctx, locks, "demo"); err != nil || holder != "" {
		t.Fatalf("the source is still locked by %q (%v)", holder, err)
	}

	// A new producer: the next sync runs at once; the dead run stays dead.
	p2 := e.serve("producer2", "producer")
	next := e.startSync()
	if ev := e.finish(next, 2*time.Minute); ev.Type != schemas.EventExtractPublished || anyFailed(ev) {
		t.Fatalf("the next sync: %+v", ev)
	}
	e.verifyPublished()
	natstest.Poll(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(p2.output(), "sync request dropped: its run has ended"), "the new producer has not dropped the dead run's request:\n" + tail(p2.output(), 10)
	})
	if strings.Contains(p2.output(), "retrying sync run") {
		t.Errorf("the new producer retried the abandoned run:\n%s", tail(p2.output(), 10))
	}
}

// TestKillFinalizer: the finalizer dies while publishing; the live extract
// stays valid and complete, and a new finalizer publishes the run.
func TestKillFinalizer(t *testing.T) {
	e := newProcEnv(t, 1, 600_000, 20_000)
	e.serve("producer", "producer")
	f := e.serve("finalizer", "finalizer")
	e.serve("w1", "writer")
	e.serve("w2", "writer")
	first := e.startSync()
	if ev := e.finish(first, 2*time.Minute); ev.Type != schemas.EventExtractPublished {
		t.Fatalf("first run: %s", ev.Error)
	}
	run := e.startSync()
	if _, ok := e.waitEvent(run, 2*time.Minute, isType(schemas.EventRunDone)); !ok {
		t.Fatal("the run did not produce")
	}
	f.kill()
	if _, done := e.waitEvent(run, 10*time.Millisecond, isType(schemas.EventExtractPublished)); done {
		t.Fatal("the finalizer published before it was killed; the trial proves nothing")
	}
	e.verifyPublished() // the live extract is whole: the first run's, or this one's if the swap happened
	e.serve("finalizer2", "finalizer")
	if ev := e.finish(run, 2*time.Minute); ev.Type != schemas.EventExtractPublished {
		t.Fatalf("run after finalizer restart: %s", ev.Error)
	}
	e.verifyPublished()
}

// TestNATSRestart: the NATS server is killed while a run's parts are
// written and restarted on the same storage; the run completes, or fails
// cleanly and a re-run completes. A kill after the run was published tests
// nothing: the trial is repeated, and fails if no kill hits.
func TestNATSRestart(t *testing.T) {
	e := newProcEnv(t, 1, 300_000, 20_000)
	e.serveAll(2)
	for attempt := 1; ; attempt++ {
		run := e.startSync()
		e.waitBatchWritten(run)
		killed := time.Now()
		e.servers[0].kill()
		// The server stays down a moment, as a crashed one would.
		time.Sleep(500 * time.Millisecond)
		e.restartServer(0)
		ev := e.finish(run, 3*time.Minute)
		if ev.Type != schemas.EventExtractPublished || anyFailed(ev) {
			t.Logf("the run did not complete after the restart (%s %s); running again", ev.Type, ev.Error)
			if ev2 := e.finish(e.startSync(), 3*time.Minute); ev2.Type != schemas.EventExtractPublished || anyFailed(ev2) {
				t.Fatalf("re-run after restart: %+v", ev2)
			}
		}
		e.verifyPublished()
		if at, ok := e.eventTime(run, schemas.EventExtractPublished); !ok || at.After(killed) {
			return
		}
		if attempt == 3 {
			t.Fatal("in 3 runs the server was killed only after the run was published; the trial proves nothing")
		}
		t.Logf("attempt %d: the run was published before the server was killed; again", attempt)
	}
}

// busiestLane is the writers' consumer with the most batches waiting or
// being written.
func busiestLane(ctx context.Context, t *testing.T, js jetstream.JetStream) jetstream.Consumer {
	t.Helper()
	var busiest jetstream.Consumer
	var most uint64
	for _, name := range schemas.WriterConsumers() {
		cons, err := js.Consumer(ctx, schemas.DataStream, name)
		if err != nil {
			t.Fatal(err)
		}
		ci := cons.CachedInfo()
		if n := ci.NumPending + uint64(ci.NumAckPending); busiest == nil || n > most {
			busiest, most = cons, n
		}
	}
	return busiest
}

func anyFailed(ev schemas.Event) bool {
	for _, r := range ev.Results {
		if r.Status != schemas.StatusDone {
			return true
		}
	}
	return false
}

// TestClusterNodeLoss: three NATS nodes with replicated streams, every core
// kept busy; the node leading the writers' consumer is killed (SIGKILL)
// mid-run; the run completes with nothing lost. With -soak it repeats ten
// times, each on a fresh cluster.
func TestClusterNodeLoss(t *testing.T) {
	trials := 1
	if *soak {
		trials = 10
	}
	for trial := range trials {
		t.Run(fmt.Sprintf("Trial%d", trial+1), clusterNodeLoss)
	}
}

func clusterNodeLoss(t *testing.T) {
	e := newProcEnv(t, 3, 300_000, 20_000)
	contend(t)
	e.serveAll(2)
	run := e.startSync()
	e.waitBatchWritten(run)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons := busiestLane(ctx, t, e.js)
	leader := consumerLeader(t, cons)
	t.Logf("killing %s, the leader of %s, the busiest writers' consumer", leader, cons.CachedInfo().Name)
	e.servers[slices.IndexFunc(e.servers, func(p *proc) bool { return p.name == "nats"+leader[1:] })].kill()
	ev := e.finish(run, 3*time.Minute)
	if ev.Type != schemas.EventExtractPublished || anyFailed(ev) {
		t.Fatalf("run with a node down: %+v", ev)
	}
	e.verifyPublished()
}

// TestReaderProcess: a separate process opens the extract read-only in a
// loop while syncs repeat; it never fails to open it or sees a partial table.
func TestReaderProcess(t *testing.T) {
	e := newProcEnv(t, 1, 100_000, 10_000)
	e.serve("producer", "producer")
	e.serve("finalizer", "finalizer")
	e.serve("w1", "writer")
	if ev := e.finish(e.startSync(), 2*time.Minute); ev.Type != schemas.EventExtractPublished {
		t.Fatal(ev.Error)
	}
	da, _ := binaries(t)
	reader := startProc(t, e.dir, "reader", da, "verify", "demo", "--data-dir", e.dataDir, "--loop")
	for range 4 {
		if ev := e.finish(e.startSync(), 2*time.Minute); ev.Type != schemas.EventExtractPublished {
			t.Fatal(ev.Error)
		}
	}
	reads := readerTally(t, reader, 5)
	t.Logf("reader process: %d reads during 4 syncs, no failure", reads)
}

// serveAll starts a producer, a finalizer and n writers.
func (e *procEnv) serveAll(writers int) {
	e.serve("producer", "producer")
	e.serve("finalizer", "finalizer")
	for i := range writers {
		e.serve(fmt.Sprintf("w%d", i+1), "writer")
	}
}

// waitBatchWritten waits until the run has written its first part.
func (e *procEnv) waitBatchWritten(run string) {
	e.t.Helper()
	if _, ok := e.waitEvent(run, time.Minute, isType(schemas.EventBatchWritten)); !ok {
		e.t.Fatal("no batch was written")
	}
}

// growing is a connector whose table gains rows at every read, so two
// snapshots never agree on its count.
type growing struct{ reads atomic.Int64 }

func (g *growing) Capabilities() connectors.Capability { return connectors.Discover | connectors.Read }
func (g *growing) Discover(context.Context) ([]connectors.TableInfo, error) {
	return []connectors.TableInfo{{Name: "grows", Schema: gatedSchema}, {Name: "also_grows", Schema: gatedSchema}}, nil
}
func (g *growing) Read(_ context.Context, table string, _ connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	n := 5_000 + 977*g.reads.Add(1)
	return func(yield func(arrow.RecordBatch, error) bool) {
		b := array.NewInt64Builder(memory.DefaultAllocator)
		defer b.Release()
		for i := range n {
			b.Append(i)
		}
		col := b.NewArray()
		defer col.Release()
		rec := array.NewRecordBatch(gatedSchema, []arrow.Array{col}, n)
		defer rec.Release()
		yield(rec, nil)
	}
}

// TestSnapshotReaderDuringSwaps: a separate process opens the extract
// read-only in a loop, as the orchestrator does, during 30 extract swaps of
// tables whose row counts change every run; every open compares each
// view's count with the same snapshot's _meta.rows and never sees a
// mismatch (each published table version is a file of its own that no
// later publish touches).
func TestSnapshotReaderDuringSwaps(t *testing.T) {
	const swaps = 30
	da, _ := binaries(t)
	g := &growing{}
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("tests/growing.yaml", []byte("name: growing\nversion: \"1.0.0\"\ndescription: grows\ncapabilities: [discover, read]\n"),
		func(connectors.Config) (connectors.Connector, error) { return g, nil })
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "grow", Connector: "growing"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: reg, DataDir: dir, Writers: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	syncSource(t, st, "grow")
	reader := startProc(t, dir, "reader", da, "verify", "grow", "--data-dir", dir, "--loop")
	for range swaps {
		syncSource(t, st, "grow")
	}
	reads := readerTally(t, reader, swaps)
	t.Logf("reader process: %d reads during %d swaps, no mismatch", reads, swaps)
}

// readerTally stops a "da verify --loop" process and fails t unless it
// read at least minReads times without a failure; it returns the reads.
func readerTally(t *testing.T, reader *proc, minReads int) int {
	t.Helper()
	reader.stop()
	out := reader.output()
	var reads, failures int
	for _, l := range strings.Split(out, "\n") {
		fmt.Sscanf(l, "reads=%d failures=%d", &reads, &failures)
	}
	if reads < minReads || failures != 0 || strings.Contains(out, "FAIL") {
		t.Fatalf("reader: reads=%d failures=%d\n%s", reads, failures, tail(out, 20))
	}
	return reads
}
