package tests

import (
	"context"
	"errors"
	"iter"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/google/uuid"
)

// gated reads one small table, but only once its gate is open.
type gated struct {
	mu    sync.Mutex
	gates map[string]chan struct{}
	name  string
}

var gatedSchema = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)

func (g *gated) Capabilities() connectors.Capability { return connectors.Discover | connectors.Read }
func (g *gated) Discover(context.Context) ([]connectors.TableInfo, error) {
	return []connectors.TableInfo{{Name: "t", Schema: gatedSchema, Capabilities: connectors.Read}}, nil
}
func (g *gated) Read(ctx context.Context, _ string, _ connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		g.mu.Lock()
		gate := g.gates[g.name]
		g.mu.Unlock()
		select {
		case <-gate:
		case <-ctx.Done():
			yield(nil, ctx.Err())
			return
		}
		b := array.NewInt64Builder(memory.DefaultAllocator)
		defer b.Release()
		b.AppendValues([]int64{1, 2, 3}, nil)
		col := b.NewArray()
		defer col.Release()
		rec := array.NewRecordBatch(gatedSchema, []arrow.Array{col}, 3)
		defer rec.Release()
		yield(rec, nil)
	}
}

func TestConcurrentSources(t *testing.T) {
	dir := t.TempDir()
	gates := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{})}
	reg := connectors.NewRegistry()
	for _, n := range []string{"a", "b"} {
		reg.MustRegisterManifest("tests/gate_"+n+".yaml", []byte("name: gate_"+n+"\nversion: \"1.0.0\"\ndescription: gated\ncapabilities: [discover, read]\n"),
			func(connectors.Config) (connectors.Connector, error) { return &gated{gates: gates, name: n}, nil })
	}
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "a", Connector: "gate_a"}, {Name: "b", Connector: "gate_b"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: reg, DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	runA := uuid.NewString()
	doneA := make(chan error, 1)
	go func() {
		_, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: runA, Source: "a"}, nil)
		doneA <- err
	}()
	natstest.WaitEvents(t, st.JS, schemas.RunEventsFilter("a", runA), 20*time.Second, func(evs []schemas.Event) bool {
		for _, e := range evs {
			if e.Type == schemas.EventTableStarted {
				return true
			}
		}
		return false
	})

	// A second request for a while A runs is answered as already running.
	second := uuid.NewString()
	_, err = stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: second, Source: "a"}, nil)
	if !errors.Is(err, schemas.ErrAlreadyRunning) {
		t.Fatalf("second sync of a running source: %v, want ErrAlreadyRunning", err)
	}
	// Its record says so and names the running run; the running run is running.
	if r := waitRecord(t, st.JS, "a", second, ended); r.Status != runs.Rejected || !strings.Contains(r.Error, runA) {
		t.Errorf("rejected run's record %+v", r)
	}
	if r := waitRecord(t, st.JS, "a", runA, func(r runs.Record) bool { return r.Status != runs.Queued }); r.Status != runs.Running {
		t.Errorf("running run's record %+v", r)
	}

	// Source b syncs to the end while a is still running.
	close(gates["b"])
	if rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "b"}, nil); err != nil || rep.Rows != 3 {
		t.Fatalf("sync b while a runs: %v %+v", err, rep)
	}
	select {
	case err := <-doneA:
		t.Fatalf("a finished before its gate opened: %v", err)
	default:
	}

	close(gates["a"])
	if err := <-doneA; err != nil {
		t.Fatalf("sync a: %v", err)
	}
	// The lock is released with the publish: a new sync of a runs.
	if _, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "a"}, nil); err != nil {
		t.Fatalf("sync a again: %v", err)
	}
}
