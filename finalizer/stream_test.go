package finalizer

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go/jetstream"
)

var itemSchema = arrow.NewSchema([]arrow.Field{
	{Name: "key", Type: arrow.BinaryTypes.String},
	{Name: "at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}},
	{Name: "val", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
}, nil)

// streamPart writes a streamed part of the items table: seq s holds two
// rows of key k<s>, version s, and returns its batch_written event. name is
// a part name, or a short tag a part name is made from.
func streamPart(t *testing.T, dataDir, name string, seqs ...int64) schemas.Event {
	t.Helper()
	if _, err := schemas.ParsePartName(name); err != nil {
		name = schemas.PartName{Month: "2024-01", Attempt: 1, First: seqs[0], Last: seqs[len(seqs)-1],
			Hash: fmt.Sprintf("%012x", []byte(name))}.String()
	}
	stored := schemas.PartitionedSchema(itemSchema)
	dir := filepath.Join(dataDir, "extracts", "src", ".staging", schemas.StreamRun, "items")
	f, err := parquetfile.Create(filepath.Join(dir, name), stored, 1000, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ev := schemas.Event{Type: schemas.EventBatchWritten, RunID: schemas.StreamRun, Source: "src", Table: "items", Attempt: 1,
		Part: name, Month: "2024-01", PrimaryKey: []string{"key"}}
	at := time.Date(2024, 1, 9, 0, 0, 0, 0, time.UTC)
	for _, s := range seqs {
		b := array.NewRecordBuilder(memory.DefaultAllocator, stored)
		for i := range 2 {
			b.Field(0).(*array.StringBuilder).Append(fmt.Sprintf("k%d", s))
			b.Field(1).(*array.TimestampBuilder).Append(arrow.Timestamp(at.UnixMicro()))
			b.Field(2).(*array.Int64Builder).Append(s*10 + int64(i))
			b.Field(3).(*array.Int64Builder).Append(s)
			b.Field(4).(*array.BooleanBuilder).Append(false)
			b.Field(5).(*array.Int64Builder).Append(s)
		}
		rec := b.NewRecordBatch()
		if err := f.Write(rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
		b.Release()
		ev.Seqs, ev.SeqRows, ev.Rows = append(ev.Seqs, s), append(ev.SeqRows, 2), ev.Rows+2
	}
	if _, err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	return ev
}

func runFinalizer(t *testing.T, js jetstream.JetStream, dataDir string) func() {
	t.Helper()
	f, err := New(Options{JS: js, DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// A streamed batch redelivered to a second writer (the first died between
// announcing its part and acking) arrives in two parts; the extract holds
// its rows once, also after a restart replays the events.
func TestStreamedCopiesPublishedOnce(t *testing.T) {
	js := natstest.MustStart(t)
	dataDir := t.TempDir()
	ctx := context.Background()
	a := streamPart(t, dataDir, "a.part", 1, 2)
	b := streamPart(t, dataDir, "b.part", 2, 3)
	c := streamPart(t, dataDir, "c.part", 2)
	for _, ev := range []schemas.Event{a, b, c} {
		if err := natsbus.PublishEvent(ctx, js, ev); err != nil {
			t.Fatal(err)
		}
	}
	stop := runFinalizer(t, js, dataDir)
	natstest.WaitEvents(t, js, "agnes.stream.src.stream_published", 30*time.Second, func(evs []schemas.Event) bool {
		n := 0
		for _, e := range evs {
			n += len(e.Parts)
		}
		return n == 3
	})
	stop()
	extract := filepath.Join(dataDir, "extracts", "src", schemas.ExtractFile)
	check := func() {
		t.Helper()
		x, err := extractcheck.Verify(ctx, extract)
		if err != nil {
			t.Fatal(err)
		}
		if x.Counts["items"] != 6 {
			t.Fatalf("items has %d rows, want 6 (keys k1..k3, two rows each, seq 2 once)", x.Counts["items"])
		}
		db, err := sql.Open("duckdb", extract+"?access_mode=read_only")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var distinct int
		if err := db.QueryRow("SELECT count(DISTINCT val) FROM items").Scan(&distinct); err != nil || distinct != 6 {
			t.Fatalf("distinct values %d (%v), want 6", distinct, err)
		}
	}
	check()
	cat, err := loadCatalog(filepath.Join(dataDir, "extracts", "src"))
	if err != nil {
		t.Fatal(err)
	}
	files := cat.Tables["items"].Files
	if len(files) != 2 || files[0].Rows != 4 || files[1].Rows != 2 {
		t.Fatalf("files %+v: want a.part whole (4 rows) and b.part without seq 2 (2 rows); c.part dropped", files)
	}
	// A restart replays the same events: nothing is added twice.
	d := streamPart(t, dataDir, "d.part", 4)
	stop = runFinalizer(t, js, dataDir)
	if err := natsbus.PublishEvent(ctx, js, d); err != nil {
		t.Fatal(err)
	}
	natstest.WaitEvents(t, js, "agnes.stream.src.stream_published", 30*time.Second, func(evs []schemas.Event) bool {
		for _, e := range evs {
			for _, p := range e.Parts {
				if p == "items/"+d.Part {
					return true
				}
			}
		}
		return false
	})
	stop()
	x, err := extractcheck.Verify(ctx, extract)
	if err != nil {
		t.Fatal(err)
	}
	if x.Counts["items"] != 8 {
		t.Fatalf("after a restart items has %d rows, want 8", x.Counts["items"])
	}
}

func TestCompactionTiers(t *testing.T) {
	for size, want := range map[int64]int{0: 0, 100 << 10: 0, 256 << 10: 1, 1 << 20: 2, 4 << 20: 3, 64 << 20: 5} {
		if got := compactionTier(size); got != want {
			t.Errorf("tier(%d) = %d, want %d", size, got, want)
		}
	}
}

// A part left in staging whose announcement expired (the finalizer was down
// longer than the stream events are kept) is still published, once.
func TestStagedPartWithoutAnnouncementIsPublished(t *testing.T) {
	js := natstest.MustStart(t)
	dataDir := t.TempDir()
	ev := streamPart(t, dataDir, "m2024-01-a1-s0000000005-0000000006-abcabcabcabc.part", 5, 6)
	path := filepath.Join(dataDir, "extracts", "src", ".staging", schemas.StreamRun, "items", ev.Part)
	// What the writer records in a part besides the rows.
	rewriteWithMeta(t, path, map[string]string{"agnes.seqs": "5:2,6:2", "agnes.key_column": "key"})
	stop := runFinalizer(t, js, dataDir)
	natstest.WaitEvents(t, js, "agnes.stream.src.stream_published", 30*time.Second, func(evs []schemas.Event) bool { return len(evs) > 0 })
	// Its announcement arriving late changes nothing.
	if err := natsbus.PublishEvent(context.Background(), js, ev); err != nil {
		t.Fatal(err)
	}
	natstest.WaitEvents(t, js, "agnes.stream.src.stream_published", 30*time.Second, func(evs []schemas.Event) bool { return len(evs) > 1 })
	stop()
	x, err := extractcheck.Verify(context.Background(), filepath.Join(dataDir, "extracts", "src", schemas.ExtractFile))
	if err != nil {
		t.Fatal(err)
	}
	if x.Counts["items"] != 4 {
		t.Fatalf("items has %d rows, want 4", x.Counts["items"])
	}
}

// rewriteWithMeta rewrites a part with key-value metadata.
func rewriteWithMeta(t *testing.T, path string, meta map[string]string) {
	t.Helper()
	r, err := parquetfile.Open(path, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := r.Records(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out, err := parquetfile.Create(path, r.Schema, 1000, meta, nil)
	if err != nil {
		t.Fatal(err)
	}
	for rr.Next() {
		if err := out.Write(rr.RecordBatch()); err != nil {
			t.Fatal(err)
		}
	}
	rr.Release()
	r.Close()
	if _, err := out.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestCompactionBesidePlacement: streamed parts keep arriving while the
// partitions they land in are compacted (a compaction is due after every
// publish with CompactMinFiles 2). Placement waits for a compaction in
// progress and every temporary name is unique, so under -race the extract
// ends with every row once and nothing temporary is left.
func TestCompactionBesidePlacement(t *testing.T) {
	js := natstest.MustStart(t)
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	f, err := New(Options{JS: js, DataDir: dataDir, CompactMinFiles: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	const parts = 24
	for i := int64(1); i <= parts; i++ {
		ev := streamPart(t, dataDir, fmt.Sprintf("p%02d.pt", i), i)
		if err := natsbus.PublishEvent(ctx, js, ev); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			// Started once a part is whole: a starting finalizer removes
			// the temporary files a crash left, a part being written too.
			go func() { done <- f.Run(ctx) }()
		}
		if i == 1 || i%3 == 0 {
			// Let a publish (and the compaction after it) start before the
			// next parts arrive.
			natstest.WaitEvents(t, js, "agnes.stream.src.stream_published", 30*time.Second, func(evs []schemas.Event) bool {
				n := 0
				for _, e := range evs {
					n += len(e.Parts)
				}
				return n >= int(i)
			})
		}
	}
	natstest.Poll(t, 30*time.Second, func() (bool, string) { return !f.Busy(), "finalizer busy" })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	x, err := extractcheck.Verify(context.Background(), filepath.Join(dataDir, "extracts", "src", schemas.ExtractFile))
	if err != nil {
		t.Fatal(err)
	}
	if x.Counts["items"] != 2*parts {
		t.Errorf("items has %d rows, want %d", x.Counts["items"], 2*parts)
	}
	cat, err := loadCatalog(filepath.Join(dataDir, "extracts", "src"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(cat.Tables["items"].Files); n >= parts {
		t.Errorf("%d partition files for %d parts: nothing was compacted", n, parts)
	}
	filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), parquetfile.TempMarker) {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

// TestPlacementWaitsForCompaction: while a compaction of the source is
// built, neither streamed parts nor a run with partitioned tables are
// placed; once its result is in, they are.
func TestPlacementWaitsForCompaction(t *testing.T) {
	dataDir := t.TempDir()
	f := mustFinalizer(t, dataDir)
	openState(t, f, f.opts.JS)
	ctx := context.Background()
	o := newOwner(f, "src")
	o.streamLive, o.runsLive = true, true
	o.applyStream(streamPart(t, dataDir, "a.part", 1, 2))
	parted := doneTable(1, 1)
	parted.done.WriteMode = schemas.WritePartitioned
	r := &runState{source: "src", tables: map[string]*tableState{"items": parted},
		done: &schemas.Event{Type: schemas.EventRunDone, RunID: runA, Source: "src", Attempt: 1}}
	o.runs[runA], o.dirty[runA] = r, true
	if !r.ready() {
		t.Fatal("the run is not ready")
	}
	o.compacting = true
	o.act(ctx)
	if len(o.stream.pending) != 1 || !r.ready() || !r.retry.since.IsZero() {
		t.Fatalf("placed during a compaction: pending %d, run ready %v, tried %v", len(o.stream.pending), r.ready(), !r.retry.since.IsZero())
	}
	if !o.dirty[runA] {
		t.Error("the held run is forgotten")
	}
	o.compacting = false
	o.act(ctx)
	if len(o.stream.pending) != 0 {
		t.Errorf("streamed parts still pending after the compaction: %d", len(o.stream.pending))
	}
	if r.ready() && r.retry.since.IsZero() {
		t.Error("the run was not taken up after the compaction")
	}
}
