package tests

import (
	"context"
	"encoding/json"
	"iter"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

// ledger is a mutable in-memory source: the test edits its rows and schema
// between runs. Its one table "rows" has columns id, cursor and val (plus
// extra columns the test adds); Read honours the incremental cursor
// inclusively (cursor >= value), as connectors must.
type ledger struct {
	mu     sync.Mutex
	schema *arrow.Schema
	rows   [][]any // values in schema order; int64 for ints, string, nil
	pk     []string
}

const ledgerManifest = `name: ledger
version: "0.1.0"
description: "Mutable in-memory test source"
capabilities: [discover, read]
`

func newLedger() *ledger {
	return &ledger{schema: arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "cursor", Type: arrow.PrimitiveTypes.Int64},
		{Name: "val", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)}
}

func (l *ledger) set(schema *arrow.Schema, rows ...[]any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if schema != nil {
		l.schema = schema
	}
	l.rows = rows
}

func (l *ledger) Capabilities() connectors.Capability { return connectors.Discover | connectors.Read }

func (l *ledger) Discover(context.Context) ([]connectors.TableInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return []connectors.TableInfo{{Name: "rows", Schema: l.schema, Capabilities: connectors.Read, PrimaryKey: l.pk}}, nil
}

func (l *ledger) Read(_ context.Context, _ string, opts connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		l.mu.Lock()
		schema, rows := l.schema, slices.Clone(l.rows)
		l.mu.Unlock()
		ci := schema.FieldIndices("cursor")
		b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
		defer b.Release()
		for _, r := range rows {
			if opts.IncrementalValue != "" && len(ci) == 1 {
				from, _ := strconv.ParseInt(opts.IncrementalValue, 10, 64)
				if r[ci[0]].(int64) < from {
					continue
				}
			}
			for c, v := range r {
				fb := b.Field(c)
				switch x := v.(type) {
				case nil:
					fb.AppendNull()
				case int64:
					switch bb := fb.(type) {
					case *array.Int64Builder:
						bb.Append(x)
					case *array.Int32Builder:
						bb.Append(int32(x))
					}
				case string:
					fb.(*array.StringBuilder).Append(x)
				}
			}
		}
		rec := b.NewRecordBatch()
		defer rec.Release()
		yield(rec, nil)
	}
}

type ledgerEnv struct {
	l       *ledger
	dataDir string
	cfg     *config.Config
	st      *stack.Stack
}

func newLedgerEnv(t *testing.T, src config.Source, roles ...string) *ledgerEnv {
	t.Helper()
	e := &ledgerEnv{l: newLedger(), dataDir: t.TempDir()}
	src.Name, src.Connector = "lg", "ledger"
	e.cfg = config.Default()
	e.cfg.DataDir = e.dataDir
	e.cfg.Sources = []config.Source{src}
	e.start(t, roles...)
	return e
}

func (e *ledgerEnv) start(t *testing.T, roles ...string) {
	t.Helper()
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("tests/ledger.yaml", []byte(ledgerManifest), func(connectors.Config) (connectors.Connector, error) { return e.l, nil })
	st, err := stack.Start(context.Background(), stack.Options{Config: e.cfg, Registry: reg, DataDir: e.dataDir, Roles: roles,
		Writers: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	t.Cleanup(func() { st.Stop() })
}

func (e *ledgerEnv) sync(t *testing.T, full bool) *stack.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := stack.Sync(ctx, e.st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "lg", FullRefresh: full}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// table returns the published rows as "id|cursor|val" strings, sorted.
func (e *ledgerEnv) table(t *testing.T) []string {
	t.Helper()
	db := openRO(t, e.dataDir+"/extracts/lg/extract.duckdb")
	rows, err := db.Query(`SELECT id::VARCHAR || '|' || cursor::VARCHAR || '|' || coalesce(val, 'NULL') FROM "rows" ORDER BY ALL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		rows.Scan(&s)
		out = append(out, s)
	}
	db.Close()
	return out
}

func (e *ledgerEnv) cursor(t *testing.T) *schemas.Cursor {
	t.Helper()
	kv, err := e.st.JS.KeyValue(context.Background(), schemas.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	en, err := kv.Get(context.Background(), schemas.CursorKey("lg", "rows"))
	if err != nil {
		return nil
	}
	c, err := schemas.DecodeCursor(en.Value())
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

func row(v ...any) []any { return v }

func publishOnly(t *testing.T, js jetstream.JetStream, source string) string {
	t.Helper()
	id := uuid.NewString()
	b, _ := json.Marshal(schemas.SyncRequest{RunID: id, Source: source})
	if _, err := js.Publish(context.Background(), schemas.SyncSubject(source), b); err != nil {
		t.Fatal(err)
	}
	return id
}

func waitFor(t *testing.T, js jetstream.JetStream, source, run string, typ schemas.EventType) {
	t.Helper()
	natstest.WaitEvents(t, js, schemas.RunEventsFilter(source, run), 30*time.Second, func(evs []schemas.Event) bool {
		for _, e := range evs {
			if e.Type == typ {
				return true
			}
		}
		return false
	})
}

func waitRunDone(t *testing.T, js jetstream.JetStream, source, run string) {
	waitFor(t, js, source, run, schemas.EventRunDone)
}
func waitPublished(t *testing.T, js jetstream.JetStream, source, run string) {
	waitFor(t, js, source, run, schemas.EventExtractPublished)
}
