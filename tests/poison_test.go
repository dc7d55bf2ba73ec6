package tests

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/cli"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
)

func intBatch(tb testing.TB, name string, n int, width int) []byte {
	tb.Helper()
	schema := arrow.NewSchema([]arrow.Field{{Name: name, Type: arrow.BinaryTypes.String}}, nil)
	b := array.NewStringBuilder(memory.DefaultAllocator)
	defer b.Release()
	for i := range n {
		b.Append(noise(i, width))
	}
	col := b.NewArray()
	defer col.Release()
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, int64(n))
	defer rec.Release()
	chunks, err := schemas.EncodeBatch(rec, 8<<20)
	if err != nil {
		tb.Fatal(err)
	}
	return chunks[0].Data
}

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

// TestPoisonBatchesAreDeadLettered plays a producer by hand: one good table
// and four tables whose batch is not Arrow, has the wrong schema, is too big,
// or keeps failing past the delivery limit. The bad batches land in the
// dead-letter stream with the reason, their tables fail with that reason, the
// good table publishes, and "da dead-letters" lists them.
func TestPoisonBatchesAreDeadLettered(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, DataDir: dir, Roles: []string{stack.RoleWriter, stack.RoleFinalizer},
		ListenHost: "127.0.0.1", ListenPort: -1, MaxDeliver: 3, MaxBatchBytes: 64 << 10, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	js, ctx := st.JS, context.Background()
	run, src := uuid.NewString(), "poisoned"
	declared := arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.BinaryTypes.String}}, nil)
	enc, _ := schemas.EncodeSchema(declared)
	fp := schemas.Fingerprint(declared)
	// The staging path of "stuck" is a file, so every write of it fails.
	stuck := filepath.Join(dir, "extracts", src, ".staging", run, "stuck")
	os.MkdirAll(filepath.Dir(stuck), 0o755)
	os.WriteFile(stuck, []byte("in the way"), 0o644)

	tables := map[string][]byte{
		"good":     intBatch(t, "v", 100, 10),
		"garbage":  []byte("this is not arrow"),
		"wrongcol": intBatch(t, "other", 100, 10),
		"huge":     intBatch(t, "v", 2000, 100),
		"stuck":    intBatch(t, "v", 100, 10),
	}
	event := func(e schemas.Event) {
		e.RunID, e.Source, e.Attempt = run, src, 1
		if err := natsbus.PublishEvent(ctx, js, e); err != nil {
			t.Fatal(err)
		}
	}
	event(schemas.Event{Type: schemas.EventRunStarted})
	var results []schemas.TableResult
	for name, data := range tables {
		rows := int64(100)
		if name == "huge" {
			rows = 2000
		}
		event(schemas.Event{Type: schemas.EventTableStarted, Table: name, Schema: enc})
		h := nats.Header(schemas.DataHeader(run, src, name, 1, 0, rows))
		h.Set(schemas.HeaderSchema, fp)
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: schemas.DataSubject(src, name), Header: h, Data: data}); err != nil {
			t.Fatal(err)
		}
		event(schemas.Event{Type: schemas.EventTableDone, Table: name, Schema: enc, Batches: 1, Rows: rows, QueryMode: schemas.ModeLocal})
		results = append(results, schemas.TableResult{Table: name, Status: schemas.StatusDone, Rows: rows, Batches: 1, QueryMode: schemas.ModeLocal})
	}
	event(schemas.Event{Type: schemas.EventRunDone, Results: results})

	evs := natstest.WaitEvents(t, js, schemas.RunEventsFilter(src, run), time.Minute, func(evs []schemas.Event) bool {
		for _, e := range evs {
			if e.Type == schemas.EventExtractPublished {
				return true
			}
		}
		return false
	})
	var pub schemas.Event
	for _, e := range evs {
		if e.Type == schemas.EventExtractPublished {
			pub = e
		}
	}
	want := map[string]string{
		"good":     "",
		"garbage":  "malformed batch",
		"wrongcol": "does not match the table's declared schema",
		"huge":     "exceeds the bus payload limit",
		"stuck":    "failed 3 deliveries",
	}
	for _, r := range pub.Results {
		w := want[r.Table]
		switch {
		case w == "" && r.Status != schemas.StatusDone:
			t.Errorf("%s: %+v", r.Table, r)
		case w != "" && (r.Status != schemas.StatusFailed || !strings.Contains(r.Error, w)):
			t.Errorf("%s: status %s error %q, want failed with %q", r.Table, r.Status, r.Error, w)
		}
	}
	x, err := extractcheck.Verify(ctx, filepath.Join(dir, "extracts", src, "extract.duckdb"))
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if len(x.Meta) != 1 || x.Counts["good"] != 100 {
		t.Errorf("extract holds %v", x.Counts)
	}

	// The dead letters keep the batch, its origin and the reason.
	stream, _ := js.Stream(ctx, schemas.DeadLetterStream)
	info, _ := stream.Info(ctx)
	if info.State.Msgs != 4 {
		t.Fatalf("%d dead letters, want 4", info.State.Msgs)
	}
	for seq := uint64(1); seq <= 4; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		table := m.Header.Get(schemas.HeaderTable)
		if m.Header.Get(schemas.HeaderSource) != src || !strings.Contains(m.Header.Get(schemas.HeaderDLQReason), want[table]) ||
			m.Subject != schemas.DeadLetterSubject(src, table) || !bytes.Equal(m.Data, tables[table]) {
			t.Errorf("dead letter %d: subject %s headers %v", seq, m.Subject, m.Header)
		}
	}
	var out, errb bytes.Buffer
	if code := cli.Run(ctx, []string{"dead-letters", "--nats-url", st.Server.ClientURL(), "--nats-creds", cliCreds(dir), "--source", src}, &out, &errb); code != 0 {
		t.Fatalf("da dead-letters: %d %s", code, errb.String())
	}
	for _, w := range []string{"poisoned.garbage", "poisoned.stuck", "failed 3 deliveries", "4 dead letters"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("da dead-letters output lacks %q:\n%s", w, out.String())
		}
	}
}
