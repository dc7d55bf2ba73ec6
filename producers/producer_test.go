package producers

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go/jetstream"
)

var wide = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}, {Name: "s", Type: arrow.BinaryTypes.String}}, nil)

// tcon has a good wide table and a table whose batches drift from its
// declared schema.
type tcon struct{}

// Run ids of the tests.
const (
	run1 = "00000000-0000-4000-8000-0000000000a1"
	run2 = "00000000-0000-4000-8000-0000000000a2"
)

func (tcon) Capabilities() connectors.Capability { return connectors.Discover | connectors.Read }
func (tcon) Discover(context.Context) ([]connectors.TableInfo, error) {
	return []connectors.TableInfo{
		{Name: "wide", Schema: wide, Capabilities: connectors.Read},
		{Name: "drifting", Schema: arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int32}}, nil), Capabilities: connectors.Read},
	}, nil
}
func (tcon) Read(_ context.Context, table string, _ connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		for b := range 3 {
			bld := array.NewRecordBuilder(memory.DefaultAllocator, wide)
			for i := range 2000 {
				bld.Field(0).(*array.Int64Builder).Append(int64(b*2000 + i))
				bld.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("%0100d", b*2000+i))
			}
			rec := bld.NewRecordBatch()
			bld.Release()
			ok := yield(rec, nil)
			rec.Release()
			if !ok {
				return
			}
		}
	}
}

const manifest = "name: tcon\nversion: \"1.0.0\"\ndescription: test\ncapabilities: [discover, read]\n"

func start(tb testing.TB, maxPayload int) jetstream.JetStream {
	tb.Helper()
	js := natstest.MustStart(tb)
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("tcon.yaml", []byte(manifest), func(connectors.Config) (connectors.Connector, error) { return tcon{}, nil })
	sources := func(name string) (Source, error) {
		if name != "src" {
			return Source{}, fmt.Errorf("unknown source %q", name)
		}
		return Source{Name: "src", Connector: "tcon"}, nil
	}
	p := New(Options{JS: js, Registry: reg, Sources: sources, MaxPayload: maxPayload, ChunkRows: testChunkRows,
		Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	return js
}

// testChunkRows makes a 6,000-row table travel on several lanes.
const testChunkRows = 1000

func request(tb testing.TB, js jetstream.JetStream, run, source string) {
	tb.Helper()
	b, _ := json.Marshal(schemas.SyncRequest{RunID: run, Source: source, RequestedAt: time.Now().UTC()})
	if _, err := js.Publish(context.Background(), schemas.SyncSubject(source), b); err != nil {
		tb.Fatal(err)
	}
}

func until(t schemas.EventType) func([]schemas.Event) bool {
	return func(evs []schemas.Event) bool {
		for _, e := range evs {
			if e.Type == t {
				return true
			}
		}
		return false
	}
}

func TestProducerPublishesAndIsolates(t *testing.T) {
	const limit = 12 << 10 // forces splitting of the batches
	js := start(t, limit)
	request(t, js, run1, "src")
	evs := natstest.WaitEvents(t, js, "agnes.events.src."+run1+".>", 20*time.Second, until(schemas.EventRunDone))
	byType := map[schemas.EventType][]schemas.Event{}
	for _, e := range evs {
		byType[e.Type] = append(byType[e.Type], e)
	}
	if len(byType[schemas.EventRunStarted]) != 1 || strings.Join(byType[schemas.EventRunStarted][0].Tables, ",") != "wide,drifting" {
		t.Errorf("run_started: %+v", byType[schemas.EventRunStarted])
	}
	if len(byType[schemas.EventTableFailed]) != 1 || byType[schemas.EventTableFailed][0].Table != "drifting" ||
		!strings.Contains(byType[schemas.EventTableFailed][0].Error, "does not match the declared schema") {
		t.Errorf("table_failed: %+v", byType[schemas.EventTableFailed])
	}
	done := byType[schemas.EventTableDone]
	if len(done) != 1 || done[0].Table != "wide" || done[0].Rows != 6000 {
		t.Fatalf("table_done: %+v", done)
	}
	if done[0].Batches <= 3 {
		t.Errorf("%d messages for 3 oversized batches: nothing was split", done[0].Batches)
	}
	res := byType[schemas.EventRunDone][0].Results
	if len(res) != 2 || res[0].Status != schemas.StatusDone || res[1].Status != schemas.StatusFailed {
		t.Errorf("run_done results %+v", res)
	}

	// The data stream holds exactly the announced messages, seq 0..n-1, each under the limit.
	stream, _ := js.Stream(context.Background(), schemas.DataStream)
	cons, err := stream.CreateConsumer(context.Background(), jetstream.ConsumerConfig{Durable: "check", AckPolicy: jetstream.AckExplicitPolicy,
		FilterSubject: schemas.DataSubject("src", "wide") + ".*"})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(int(done[0].Batches)+5, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var rows, n, chunk, chunkRows int64
	lanes := map[int]bool{}
	for m := range batch.Messages() {
		ref, err := schemas.ParseDataHeader(m.Headers())
		if err != nil {
			t.Fatal(err)
		}
		// Each chunk of about testChunkRows rows goes on the next lane.
		if want := schemas.LaneSubject("src", "wide", schemas.Lane(run1, "src", "wide", chunk)); m.Subject() != want {
			t.Errorf("message %d (chunk %d) on %s, want %s", n, chunk, m.Subject(), want)
		}
		lanes[schemas.Lane(run1, "src", "wide", chunk)] = true
		if chunkRows += ref.Rows; chunkRows >= testChunkRows {
			chunk, chunkRows = chunk+1, 0
		}
		if ref.Seq != n {
			t.Errorf("message %d has seq %d", n, ref.Seq)
		}
		if len(m.Data()) > limit {
			t.Errorf("message of %d bytes over the %d limit", len(m.Data()), limit)
		}
		rows += ref.Rows
		n++
	}
	if len(lanes) < 5 {
		t.Errorf("6000 rows in chunks of %d went on %d lanes", testChunkRows, len(lanes))
	}
	if n != done[0].Batches || rows != 6000 {
		t.Errorf("stream holds %d messages / %d rows, announced %d / 6000", n, rows, done[0].Batches)
	}
}

func TestProducerRunFailures(t *testing.T) {
	js := start(t, 1<<20)
	request(t, js, run2, "nosuch")
	evs := natstest.WaitEvents(t, js, "agnes.events.nosuch."+run2+".>", 10*time.Second, until(schemas.EventRunFailed))
	if e := evs[len(evs)-1]; !strings.Contains(e.Error, `unknown source "nosuch"`) {
		t.Errorf("run_failed reason %q", e.Error)
	}
	// A request that is not JSON is dropped, not retried forever.
	if _, err := js.Publish(context.Background(), schemas.SyncSubject("src"), []byte("{nope")); err != nil {
		t.Fatal(err)
	}
	natstest.Poll(t, 10*time.Second, func() (bool, string) {
		cons, err := js.Consumer(context.Background(), schemas.SyncStream, schemas.ProducerConsumer)
		if err == nil {
			info, err := cons.Info(context.Background())
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
				return true, ""
			}
		}
		return false, "the malformed request was not terminated"
	})
}

func TestOptionsValidate(t *testing.T) {
	err := Options{}.Validate()
	for _, want := range []string{"no JetStream client", "no connector registry", "no source lookup"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("empty options: %v, want %q", err, want)
		}
	}
	if err := New(Options{}).Run(context.Background()); err == nil {
		t.Error("Run started without a bus")
	}
	if err := NewHooks(Options{}).Run(context.Background()); err == nil {
		t.Error("the webhook processor started without a bus")
	}
}
