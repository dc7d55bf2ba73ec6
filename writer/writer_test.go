package writer

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var testSchema = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)

// Run ids of the tests.
const (
	run1 = "00000000-0000-4000-8000-000000000001"
	run2 = "00000000-0000-4000-8000-000000000002"
	run3 = "00000000-0000-4000-8000-000000000003"
)

func stagingDir(tb testing.TB, dataDir, source, run, table string) string {
	tb.Helper()
	dir, err := schemas.LayoutAt(dataDir).TableStaging(source, run, table)
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

func mustBatch(tb testing.TB, from, n int64) []byte {
	tb.Helper()
	b := array.NewInt64Builder(memory.DefaultAllocator)
	defer b.Release()
	for i := range n {
		b.Append(from + i)
	}
	col := b.NewArray()
	defer col.Release()
	rec := array.NewRecordBatch(testSchema, []arrow.Array{col}, n)
	defer rec.Release()
	chunks, err := schemas.EncodeBatch(rec, 1<<20)
	if err != nil {
		tb.Fatal(err)
	}
	return chunks[0].Data
}

// announceRun publishes run_started of run of source "src", as a producer
// does before its first batch.
func announceRun(tb testing.TB, js jetstream.JetStream, run string) {
	tb.Helper()
	ev := schemas.Event{Type: schemas.EventRunStarted, RunID: run, Source: "src", Attempt: 1}
	if err := natsbus.PublishEvent(context.Background(), js, ev); err != nil {
		tb.Fatal(err)
	}
}

func publish(tb testing.TB, js jetstream.JetStream, run string, seq, rows int64, data []byte, msgID string) {
	tb.Helper()
	announceRun(tb, js, run)
	h := nats.Header(schemas.DataHeader(run, "src", "things", 1, seq, rows))
	h.Set(schemas.HeaderSchema, schemas.Fingerprint(testSchema))
	if msgID != "" {
		h.Set(jetstream.MsgIDHeader, msgID)
	}
	if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: schemas.DataSubject("src", "things"), Header: h, Data: data}); err != nil {
		tb.Fatal(err)
	}
}

func startWriter(tb testing.TB, js jetstream.JetStream, dir string, mem memory.Allocator) (*Writer, func()) {
	tb.Helper()
	w := New(Options{JS: js, DataDir: dir, Name: "w1", RowGroupRows: 1000, FlushAfter: 100 * time.Millisecond, Mem: mem,
		Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return w, func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
	}
}

func TestWriterWritesPartsAndAcks(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	for seq := range int64(5) {
		publish(t, js, run1, seq, 100, mustBatch(t, seq*100, 100), "")
	}
	// A redelivered copy of batch 2 under another message id.
	publish(t, js, run1, 2, 100, mustBatch(t, 200, 100), "copy-of-2")
	w, stop := startWriter(t, js, dir, mem)

	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run1+".batch_written", 10*time.Second, func(evs []schemas.Event) bool {
		seen := map[int64]bool{}
		for _, e := range evs {
			for _, s := range e.Seqs {
				seen[s] = true
			}
		}
		return len(seen) == 5
	})
	stop()
	mem.AssertSize(t, 0)
	if w.Rows != 500 {
		t.Errorf("writer wrote %d rows, want 500 (the duplicate dropped)", w.Rows)
	}
	var total int64
	for _, e := range evs {
		path := filepath.Join(stagingDir(t, dir, "src", run1, "things"), e.Part)
		r, err := parquetfile.Open(path, 1000, nil)
		if err != nil {
			t.Fatal(err)
		}
		seqs, rows, err := schemas.ParseSeqs(r.Meta(schemas.SeqsMetaKey))
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for i := range seqs {
			if seqs[i] != e.Seqs[i] || rows[i] != e.SeqRows[i] {
				t.Errorf("part %s metadata %v/%v disagrees with its event %v/%v", e.Part, seqs, rows, e.Seqs, e.SeqRows)
			}
			sum += rows[i]
		}
		if r.NumRows() != sum || e.Rows != sum {
			t.Errorf("part %s holds %d rows, metadata %d, event %d", e.Part, r.NumRows(), sum, e.Rows)
		}
		if r.NumRowGroups() != 1 {
			t.Errorf("part %s has %d row groups, want 1 (not one per message)", e.Part, r.NumRowGroups())
		}
		total += r.NumRows()
		r.Close()
		if !strings.HasSuffix(e.Part, ".part") {
			t.Errorf("part %q could be globbed as Parquet by readers", e.Part)
		}
	}
	if total < 500 {
		t.Errorf("parts hold %d rows, want at least 500", total)
	}
	cons, err := js.Consumer(context.Background(), schemas.DataStream, schemas.WriterConsumer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		t.Errorf("pending %d, ack pending %d: batches were not acked after writing", info.NumPending, info.NumAckPending)
	}
}

func TestWriterPoison(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	publish(t, js, run2, 0, 10, []byte("definitely not arrow"), "")
	publish(t, js, run2, 1, 99, mustBatch(t, 0, 10), "") // header lies about rows
	publish(t, js, run2, 2, 10, mustBatch(t, 0, 10), "")
	_, stop := startWriter(t, js, dir, memory.DefaultAllocator)
	defer stop()
	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run2+".>", 30*time.Second, func(evs []schemas.Event) bool {
		var failed, written int
		for _, e := range evs {
			switch e.Type {
			case schemas.EventBatchFailed:
				failed++
			case schemas.EventBatchWritten:
				written++
			}
		}
		return failed == 2 && written == 1
	})
	for _, e := range evs {
		if e.Type != schemas.EventBatchFailed {
			continue
		}
		if e.Table != "things" || e.Source != "src" || e.Error == "" {
			t.Errorf("batch_failed lacks table, source or reason: %+v", e)
		}
		if e.Seq == 0 && !strings.Contains(e.Error, "malformed batch") {
			t.Errorf("seq 0 reason %q does not say the batch is malformed", e.Error)
		}
		if e.Seq == 1 && !strings.Contains(e.Error, "99 rows") {
			t.Errorf("seq 1 reason %q does not say the row count is wrong", e.Error)
		}
	}
}

func TestPartNameDeterministic(t *testing.T) {
	dir := t.TempDir()
	w := New(Options{DataDir: dir})
	mk := func() *buffer {
		b := &buffer{key: bufferKey{run: run3, source: "s", table: "t", attempt: 1}, schema: testSchema}
		for seq := range int64(3) {
			rec, err := schemas.DecodeBatch(mustBatch(t, seq*10, 10), memory.DefaultAllocator)
			if err != nil {
				t.Fatal(err)
			}
			b.entries = append(b.entries, entry{ref: schemas.BatchRef{Seq: seq, Rows: 10}, rec: rec})
			b.rows += 10
		}
		return b
	}
	b1, b2 := mk(), mk()
	e1, err := w.writePart(b1)
	if err != nil {
		t.Fatal(err)
	}
	e2, err := w.writePart(b2)
	if err != nil {
		t.Fatal(err)
	}
	if e1.Part != e2.Part {
		t.Errorf("the same batches gave parts %s and %s", e1.Part, e2.Part)
	}
	files, _ := os.ReadDir(stagingDir(t, dir, "s", run3, "t"))
	if len(files) != 1 {
		t.Errorf("rewriting the same batches left %d files, want 1", len(files))
	}
}

// TestSlowWriteIsNotRedelivered: a write that takes longer than the ack wait
// signals progress, so its batches are not handed to another writer.
func TestSlowWriteIsNotRedelivered(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	var slowed atomic.Bool
	slow := New(Options{JS: js, DataDir: dir, Name: "slow", AckWait: time.Second, FlushAfter: 50 * time.Millisecond, Prefetch: 100,
		Logger: slog.New(slog.DiscardHandler), beforeWrite: func() {
			if slowed.CompareAndSwap(false, true) {
				time.Sleep(3500 * time.Millisecond)
			}
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { slow.Run(ctx); close(done) }()
	for seq := range int64(3) {
		publish(t, js, run3, seq, 10, mustBatch(t, seq*10, 10), "")
	}
	// Wait until the slow writer holds them, then start a second writer.
	natstest.Poll(t, 10*time.Second, func() (bool, string) { return slowed.Load(), "the slow writer never started writing" })
	fast := New(Options{JS: js, DataDir: dir, Name: "fast", AckWait: time.Second, FlushAfter: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	go func() { fast.Run(ctx) }()
	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run3+".batch_written", 20*time.Second, func(evs []schemas.Event) bool { return len(evs) > 0 })
	cancel()
	<-done
	if len(evs) != 1 || evs[0].Writer != "slow" || len(evs[0].Seqs) != 3 {
		t.Errorf("batch_written events %+v: the batches were redelivered to another writer", evs)
	}
	cons, _ := js.Consumer(context.Background(), schemas.DataStream, schemas.WriterConsumer)
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 {
		t.Errorf("%d batches were redelivered during a slow write", info.NumRedelivered)
	}
}

func TestRedeliveryBackoff(t *testing.T) {
	for delivered, want := range map[uint64]time.Duration{1: 250 * time.Millisecond, 2: 500 * time.Millisecond, 3: time.Second,
		5: 4 * time.Second, 8: 30 * time.Second, 40: 30 * time.Second} {
		if got := backoff(delivered); got != want {
			t.Errorf("delivery %d: delay %s, want %s", delivered, got, want)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	err := Options{}.Validate()
	if err == nil || !strings.Contains(err.Error(), "no JetStream client") || !strings.Contains(err.Error(), "no data dir") {
		t.Errorf("empty options: %v", err)
	}
	js := natstest.MustStart(t)
	if err := (Options{JS: js, DataDir: t.TempDir(), AckWait: -time.Second}).Validate(); err == nil {
		t.Error("a negative ack wait was accepted")
	}
	if err := (Options{JS: js, DataDir: t.TempDir()}).Validate(); err != nil {
		t.Errorf("valid options: %v", err)
	}
	if err := New(Options{}).Run(context.Background()); err == nil {
		t.Error("Run started without a bus")
	}
}

// publishOn publishes batch 0 (10 rows) of table src.things of run on
// subject, with nothing announced first.
func publishOn(tb testing.TB, js jetstream.JetStream, subject, run string) {
	tb.Helper()
	h := nats.Header(schemas.DataHeader(run, "src", "things", 1, 0, 10))
	h.Set(schemas.HeaderSchema, schemas.Fingerprint(testSchema))
	if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Header: h, Data: mustBatch(tb, 0, 10)}); err != nil {
		tb.Fatal(err)
	}
}

// TestWriterRefusesSubjectHeaderMismatch: a batch published on one
// table's subject whose headers name another table is dead-lettered with
// the reason, not staged.
func TestWriterRefusesSubjectHeaderMismatch(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	publishOn(t, js, schemas.DataSubject("src", "other"), run2)
	_, stop := startWriter(t, js, dir, memory.DefaultAllocator)
	defer stop()
	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run2+".>", 10*time.Second, func(evs []schemas.Event) bool { return len(evs) > 0 })
	if e := evs[0]; e.Type != schemas.EventBatchFailed || !strings.Contains(e.Error, "published on \"agnes.data.src.other\", but its headers name table src.things") {
		t.Errorf("event %+v", e)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "extracts", "src", ".staging", "*", "*", "*")); len(m) != 0 {
		t.Errorf("staged: %v", m)
	}
}

// TestWriterRefusesUnknownRun: a well-formed batch of a run that was never
// started is dead-lettered with the reason and stages nothing; once the
// run's run_started is on the bus, its batches are staged.
func TestWriterRefusesUnknownRun(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	publishOn(t, js, schemas.DataSubject("src", "things"), run2)
	_, stop := startWriter(t, js, dir, memory.DefaultAllocator)
	defer stop()
	dlq, err := js.Stream(context.Background(), schemas.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	var dl *jetstream.RawStreamMsg
	natstest.Poll(t, 10*time.Second, func() (bool, string) {
		dl, err = dlq.GetLastMsgForSubject(context.Background(), schemas.DeadLetterSubject("src", "things"))
		return err == nil, fmt.Sprintf("no dead letter: %v", err)
	})
	if r := dl.Header.Get(schemas.HeaderDLQReason); !strings.Contains(r, "run "+run2+" of source src was never started") {
		t.Errorf("dead letter reason %q does not say the run was never started", r)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "extracts", "src", ".staging", run2)); len(m) != 0 {
		t.Errorf("a run that was never started has staging: %v", m)
	}
	// Nobody waits for a run that does not exist: no batch_failed for it.
	events, err := js.Stream(context.Background(), schemas.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := events.Info(context.Background(), jetstream.WithSubjectFilter("agnes.events.src."+run2+".>"))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.State.Subjects) != 0 {
		t.Errorf("events of a run that was never started: %v", info.State.Subjects)
	}
	publish(t, js, run2, 1, 10, mustBatch(t, 10, 10), "")
	natstest.WaitEvents(t, js, "agnes.events.src."+run2+".>", 10*time.Second, func(evs []schemas.Event) bool {
		for _, e := range evs {
			if e.Type == schemas.EventBatchWritten && e.Seqs[0] == 1 {
				return true
			}
		}
		return false
	})
}

// TestWriterPartsHoldConsecutiveSeqs: batches arriving out of order are cut
// into parts that each hold a run of consecutive seqs, so the finalizer can
// join the parts without re-encoding them; a run shorter than a quarter of
// a row group is not cut (writers taking a table's batches in turn would
// otherwise write a part per batch).
func TestWriterPartsHoldConsecutiveSeqs(t *testing.T) {
	js := natstest.MustStart(t)
	dir := t.TempDir()
	// 300-row batches against 1,000-row row groups: runs of 2 are long enough.
	for _, seq := range []int64{0, 1, 2, 5, 6, 3, 4} {
		publish(t, js, run1, seq, 300, mustBatch(t, seq*300, 300), "")
	}
	// 10-row batches: a run of one is too short to cut.
	for _, seq := range []int64{0, 2, 1} {
		publish(t, js, run2, seq, 10, mustBatch(t, seq*10, 10), "")
	}
	_, stop := startWriter(t, js, dir, memory.DefaultAllocator)
	defer stop()
	parts := func(run string, seqs int) []string {
		evs := natstest.WaitEvents(t, js, "agnes.events.src."+run+".batch_written", 10*time.Second, func(evs []schemas.Event) bool {
			n := 0
			for _, e := range evs {
				n += len(e.Seqs)
			}
			return n == seqs
		})
		var out []string
		for _, e := range evs {
			out = append(out, fmt.Sprint(e.Seqs))
		}
		slices.Sort(out)
		return out
	}
	if got := fmt.Sprint(parts(run1, 7)); got != "[[0 1 2] [3 4] [5 6]]" {
		t.Errorf("parts %s; want [0 1 2], [3 4] and [5 6]", got)
	}
	if got := fmt.Sprint(parts(run2, 3)); got != "[[0 1 2]]" {
		t.Errorf("short runs: parts %s; want one part", got)
	}
}
