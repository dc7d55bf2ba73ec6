package schemas

import (
	"errors"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"orders", true},
		{"_meta2", true},
		{"A", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"1orders", false},
		{"orders-2024", false},
		{"or ders", false},
		{"orders;DROP", false},
		{"../etc", false},
		{"ordérs", false},
		{"orders\n", false},
	} {
		err := ValidateName("table", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), "table")) {
			t.Errorf("ValidateName(%q) error %q does not name the kind or wrap ErrInvalidName", tc.name, err)
		}
	}
}

func mustRecord(tb testing.TB, mem memory.Allocator, n int, width int) arrow.RecordBatch {
	tb.Helper()
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	for i := range n {
		b.Field(0).(*array.Int64Builder).Append(int64(i))
		if i%5 == 0 {
			b.Field(1).(*array.StringBuilder).AppendNull()
		} else {
			b.Field(1).(*array.StringBuilder).Append(noise(i, width))
		}
	}
	return b.NewRecordBatch()
}

func TestEncodeDecodeBatch(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		defer mem.AssertSize(t, 0)
		rec := mustRecord(t, mem, 1000, 10)
		defer rec.Release()
		chunks, err := EncodeBatch(rec, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(chunks) != 1 || chunks[0].Rows != 1000 {
			t.Fatalf("got %d chunks (%v rows), want 1 of 1000", len(chunks), chunks[0].Rows)
		}
		got, err := DecodeBatch(chunks[0].Data, mem)
		if err != nil {
			t.Fatal(err)
		}
		defer got.Release()
		if !array.RecordEqual(got, rec) {
			t.Error("decoded batch differs")
		}
	})
	t.Run("SplitUnderLimit", func(t *testing.T) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		defer mem.AssertSize(t, 0)
		rec := mustRecord(t, mem, 20_000, 200)
		defer rec.Release()
		const limit = 256 << 10
		chunks, err := EncodeBatch(rec, limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(chunks) < 2 {
			t.Fatalf("a large batch was not split: %d chunk(s)", len(chunks))
		}
		var off int64
		for i, c := range chunks {
			if len(c.Data) > limit-headerRoom {
				t.Errorf("chunk %d is %d bytes, over the limit %d", i, len(c.Data), limit-headerRoom)
			}
			got, err := DecodeBatch(c.Data, mem)
			if err != nil {
				t.Fatal(err)
			}
			want := rec.NewSlice(off, off+c.Rows)
			if got.NumRows() != c.Rows || !array.RecordEqual(got, want) {
				t.Errorf("chunk %d does not hold rows %d..%d", i, off, off+c.Rows)
			}
			got.Release()
			want.Release()
			off += c.Rows
		}
		if off != rec.NumRows() {
			t.Errorf("chunks hold %d rows, want %d", off, rec.NumRows())
		}
	})
	t.Run("ErrOversized", func(t *testing.T) {
		rec := mustRecord(t, memory.DefaultAllocator, 2, 100_000)
		defer rec.Release()
		if _, err := EncodeBatch(rec, 64<<10); !errors.Is(err, ErrOversized) {
			t.Fatalf("got %v, want ErrOversized", err)
		}
	})
	t.Run("ErrBadBatch", func(t *testing.T) {
		for _, data := range [][]byte{nil, []byte("not arrow"), {0xff, 0xff, 0xff, 0xff, 1, 2, 3}} {
			if _, err := DecodeBatch(data, memory.DefaultAllocator); !errors.Is(err, ErrBadBatch) {
				t.Errorf("DecodeBatch(%q) = %v, want ErrBadBatch", data, err)
			}
		}
		// A schema-only stream holds no batch.
		s, _ := EncodeSchema(arrow.NewSchema([]arrow.Field{{Name: "a", Type: arrow.PrimitiveTypes.Int32}}, nil))
		if _, err := DecodeBatch(s, memory.DefaultAllocator); !errors.Is(err, ErrBadBatch) {
			t.Errorf("schema-only stream: got %v, want ErrBadBatch", err)
		}
	})
}

func TestSchemaRoundTrip(t *testing.T) {
	s := arrow.NewSchema([]arrow.Field{
		{Name: "d", Type: &arrow.Decimal128Type{Precision: 18, Scale: 2}},
		{Name: "ts", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}, Nullable: true},
	}, nil)
	b, err := EncodeSchema(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeSchema(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(s) {
		t.Errorf("got %s, want %s", got, s)
	}
}

func TestParseDataHeader(t *testing.T) {
	good := nats.Header(DataHeader(testRun, "demo", "orders", 1, 7, 100))
	good.Set(HeaderSchema, "fp")
	ref, err := ParseDataHeader(good)
	if err != nil {
		t.Fatal(err)
	}
	if ref != (BatchRef{Run: testRun, Source: "demo", Table: "orders", Seq: 7, Rows: 100, Attempt: 1}) {
		t.Errorf("got %+v", ref)
	}
	if got := good.Get("Nats-Msg-Id"); got != testRun+".1.orders.7" {
		t.Errorf("msg id %q, want %s.1.orders.7", got, testRun)
	}
	for name, mutate := range map[string]func(h nats.Header){
		"ErrNoRun":      func(h nats.Header) { h.Del(HeaderRun) },
		"ErrBadTable":   func(h nats.Header) { h.Set(HeaderTable, "bad-table") },
		"ErrBadSource":  func(h nats.Header) { h.Set(HeaderSource, "") },
		"ErrBadSeq":     func(h nats.Header) { h.Set(HeaderSeq, "x") },
		"ErrNegSeq":     func(h nats.Header) { h.Set(HeaderSeq, "-1") },
		"ErrMissingRow": func(h nats.Header) { h.Del(HeaderRows) },
		"ErrNoAttempt":  func(h nats.Header) { h.Del(HeaderAttempt) },
		"ErrBigAttempt": func(h nats.Header) { h.Set(HeaderAttempt, "1000000") },
		"ErrNoSchema":   func(h nats.Header) { h.Del(HeaderSchema) },
		"ErrRunEscapes": func(h nats.Header) { h.Set(HeaderRun, "../../../../../x") },
		"ErrRunDots":    func(h nats.Header) { h.Set(HeaderRun, "..") },
		"ErrRunUpper":   func(h nats.Header) { h.Set(HeaderRun, strings.ToUpper(testRun)) },
	} {
		t.Run(name, func(t *testing.T) {
			h := nats.Header(DataHeader(testRun, "demo", "orders", 1, 7, 100))
			h.Set(HeaderSchema, "fp")
			mutate(h)
			if _, err := ParseDataHeader(h); !errors.Is(err, ErrBadBatch) {
				t.Errorf("got %v, want ErrBadBatch", err)
			}
		})
	}
}

func TestSyncRequestValidate(t *testing.T) {
	ok := SyncRequest{RunID: testRun, Source: "demo", Tables: []string{"orders"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]SyncRequest{
		"ErrNoRun":     {Source: "demo"},
		"ErrBadSource": {RunID: testRun, Source: "de mo"},
		"ErrBadTable":  {RunID: testRun, Source: "demo", Tables: []string{"x;y"}},
		"ErrBadRun":    {RunID: "../../victim", Source: "demo"},
		"ErrStreamRun": {RunID: StreamRun, Source: "demo"},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, r)
		}
	}
}

func TestEventMsgIDDeterministic(t *testing.T) {
	a := Event{Type: EventBatchWritten, RunID: "r", Source: "s", Table: "t", Part: "p1"}
	b := a
	b.Writer = "other"
	if a.MsgID() != b.MsgID() {
		t.Error("the same part announced twice must deduplicate")
	}
	c := a
	c.Part = "p2"
	if a.MsgID() == c.MsgID() {
		t.Error("different parts must not deduplicate")
	}
	if (Event{Type: EventTableDone, RunID: "r", Table: "a"}).MsgID() == (Event{Type: EventTableDone, RunID: "r", Table: "b"}).MsgID() {
		t.Error("table events of different tables must not deduplicate")
	}
	e, err := DecodeEvent([]byte(`{"type":"run_done","run_id":"` + testRun + `","source":"s"}`))
	if err != nil || e.Type != EventRunDone {
		t.Errorf("DecodeEvent = %+v, %v", e, err)
	}
	if _, err := DecodeEvent([]byte(`{"type":"run_done"}`)); err == nil {
		t.Error("an event without run_id and source was accepted")
	}
}

func TestSubjects(t *testing.T) {
	if got := DataSubject("demo", "orders"); got != "agnes.data.demo.orders" {
		t.Errorf("DataSubject = %q", got)
	}
	if got := LaneSubject("demo", "orders", 7); got != "agnes.data.demo.orders.7" {
		t.Errorf("LaneSubject = %q", got)
	}
	for subject, want := range map[string]int{"agnes.data.demo.orders": -1, "agnes.data.demo.orders.0": 0, "agnes.data.demo.orders.15": 15} {
		if got, ok := SubjectLane(subject, "demo", "orders"); !ok || got != want {
			t.Errorf("SubjectLane(%q) = %d, %v; want %d", subject, got, ok, want)
		}
	}
	for _, subject := range []string{"agnes.data.demo.orders.16", "agnes.data.demo.orders.07", "agnes.data.demo.orders.", "agnes.data.demo.orders.-1",
		"agnes.data.demo.orders.x", "agnes.data.demo.other.1", "agnes.data.demo.orders.1.2", "agnes.data.demo.orders.+1"} {
		if _, ok := SubjectLane(subject, "demo", "orders"); ok {
			t.Errorf("SubjectLane accepted %q", subject)
		}
	}
	// Consecutive chunks go to consecutive lanes, so a table's chunks
	// spread over every writer.
	for c := range int64(2 * DataLanes) {
		if a, b := Lane("r", "s", "t", c), Lane("r", "s", "t", c+1); b != (a+1)%DataLanes {
			t.Fatalf("chunk %d on lane %d, chunk %d on lane %d", c, a, c+1, b)
		}
	}
	if got := EventSubject("demo", "r1", EventRunDone); got != "agnes.events.demo.r1.run_done" {
		t.Errorf("EventSubject = %q", got)
	}
	if got := HookSubject("jira"); got != "agnes.hooks.jira" {
		t.Errorf("HookSubject = %q", got)
	}
	if got := EventSubject("jira", StreamRun, EventBatchWritten); got != "agnes.stream.jira.batch_written" {
		t.Errorf("stream run event subject = %q", got)
	}
}

// noise returns n incompressible letters derived from seed.
func noise(seed, n int) string {
	x := uint64(seed)*0x9E3779B97F4A7C15 + 1
	buf := make([]byte, n)
	for i := range buf {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		buf[i] = 'a' + byte(x%26)
	}
	return string(buf)
}

func TestDiffSchemas(t *testing.T) {
	prev := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "qty", Type: arrow.PrimitiveTypes.Int32},
		{Name: "gone", Type: arrow.BinaryTypes.String},
		{Name: "n", Type: arrow.BinaryTypes.String},
	}, nil)
	next := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "qty", Type: arrow.PrimitiveTypes.Int64},
		{Name: "n", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "new", Type: arrow.FixedWidthTypes.Boolean},
	}, nil)
	got := strings.Join(DiffSchemas(prev, next), "; ")
	want := "column qty changed type from int32 to int64; column n changed from not null to nullable; added column new (bool); removed column gone (utf8)"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if DiffSchemas(prev, prev) != nil || DiffSchemas(nil, next) != nil {
		t.Error("no change must give nil")
	}
}
