package tests

import (
	"context"
	"fmt"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/httpapi"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func demoStack(tb testing.TB, dataDir string) (*stack.Stack, *config.Config) {
	tb.Helper()
	cfg := config.Default()
	cfg.DataDir = dataDir
	cfg.Sources = []config.Source{{Name: "demo", Connector: "demo", Config: map[string]any{"rows": 3000, "customer_rows": 300}}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dataDir,
		Writers: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	return st, cfg
}

func syncDemo(tb testing.TB, st *stack.Stack) *stack.Report { return syncSource(tb, st, "demo") }

// snapshotTree lists every path under dir with its size, to compare before
// and after.
func snapshotTree(tb testing.TB, dir string) map[string]int64 {
	tb.Helper()
	out := map[string]int64{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil {
			out[p] = info.Size()
		}
		return nil
	})
	return out
}

// TestForgedBusInputTouchesNothing: events whose run id climbs out of the
// staging folder, and a valid batch whose run header does, once deleted the
// live extract (or any directory) and wrote parts outside the data dir.
// They are refused: nothing outside the data dir changes, the extract stays
// whole, and a finalizer restart (which replays the events) changes nothing
// either.
func TestForgedBusInputTouchesNothing(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	victim := filepath.Join(root, "victim")
	os.MkdirAll(victim, 0o755)
	os.WriteFile(filepath.Join(victim, "precious.txt"), []byte("keep me"), 0o644)
	st, _ := demoStack(t, dataDir)
	syncDemo(t, st)
	extract := filepath.Join(dataDir, "extracts", "demo", "extract.duckdb")
	outside := snapshotTree(t, victim)
	ctx := context.Background()

	forged := []struct{ subject, body string }{
		{"agnes.events.demo.x.run_rejected", `{"type":"run_rejected","run_id":"..","source":"demo"}`},
		{"agnes.events.demo.x.run_failed", `{"type":"run_failed","run_id":"../../../../victim","source":"demo"}`},
		{"agnes.events.demo.x.run_failed", `{"type":"run_failed","run_id":"../..","source":"demo"}`},
		{"agnes.events.demo.y.batch_written", `{"type":"batch_written","run_id":"` + uuid.NewString() +
			`","source":"demo","table":"orders","attempt":1,"part":"../../../../../victim/precious.txt","seqs":[0],"seq_rows":[1],"rows":1}`},
	}
	for _, f := range forged {
		if _, err := st.JS.Publish(ctx, f.subject, []byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	// A valid batch whose run header climbs out of the data dir.
	sch := arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.BinaryTypes.String}}, nil)
	h := nats.Header(schemas.DataHeader(uuid.NewString(), "demo", "orders", 1, 0, 10))
	h.Set(schemas.HeaderRun, "../../../../x")
	h.Set(schemas.HeaderSchema, schemas.Fingerprint(sch))
	if _, err := st.JS.PublishMsg(ctx, &nats.Msg{Subject: schemas.DataSubject("demo", "orders"), Header: h, Data: intBatch(t, "v", 10, 5)}); err != nil {
		t.Fatal(err)
	}
	waitDeadLetters(t, st.JS, 1)
	// Events are applied in order, so once a later run is published the
	// forged ones have been read.
	rep := syncDemo(t, st)
	check := func(when string) {
		t.Helper()
		if got := snapshotTree(t, victim); fmt.Sprint(got) != fmt.Sprint(outside) {
			t.Errorf("%s: the folder outside the data dir changed: %v, was %v", when, got, outside)
		}
		if _, err := os.Stat(filepath.Join(root, "x")); !os.IsNotExist(err) {
			t.Errorf("%s: a part was written outside the data dir (%v)", when, err)
		}
		x, err := extractcheck.Verify(ctx, extract)
		if err != nil {
			t.Fatalf("%s: the live extract: %v", when, err)
		}
		if x.Counts["orders"] != 3000 || x.Counts["customers"] != 300 {
			t.Errorf("%s: counts %v", when, x.Counts)
		}
	}
	check("after the forged input")
	if rep.Failed != 0 {
		t.Errorf("the next run failed tables: %+v", rep.Results)
	}
	// A restart replays every event, forged ones included.
	st.Stop()
	st, _ = demoStack(t, dataDir)
	defer st.Stop()
	syncDemo(t, st)
	check("after a finalizer restart")
}

// waitDeadLetters waits until the dead-letter stream holds n messages.
func waitDeadLetters(tb testing.TB, js jetstream.JetStream, n uint64) []*jetstream.RawStreamMsg {
	tb.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, schemas.DeadLetterStream)
	if err != nil {
		tb.Fatal(err)
	}
	poll(tb, 30*time.Second, func() bool {
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs >= n
	})
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); seq <= n; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// poll waits until cond holds, failing tb after timeout.
func poll(tb testing.TB, timeout time.Duration, cond func() bool) {
	tb.Helper()
	natstest.Poll(tb, timeout, func() (bool, string) { return cond(), "condition not met" })
}

// TestHeaderlessBatchIsDeadLettered: a batch without the schema fingerprint
// (so with a schema nobody declared) for a run that never existed is
// dead-lettered with the reason instead of staying in staging forever.
func TestHeaderlessBatchIsDeadLettered(t *testing.T) {
	dataDir := t.TempDir()
	st, _ := demoStack(t, dataDir)
	defer st.Stop()
	run := uuid.NewString()
	h := nats.Header(schemas.DataHeader(run, "demo", "orders", 1, 0, 10))
	if _, err := st.JS.PublishMsg(context.Background(), &nats.Msg{Subject: schemas.DataSubject("demo", "orders"), Header: h,
		Data: intBatch(t, "not_an_orders_column", 10, 5)}); err != nil {
		t.Fatal(err)
	}
	dl := waitDeadLetters(t, st.JS, 1)
	if r := dl[0].Header.Get(schemas.HeaderDLQReason); !strings.Contains(r, "missing header "+schemas.HeaderSchema) {
		t.Errorf("dead letter reason %q does not name the missing schema header", r)
	}
	if m, _ := filepath.Glob(filepath.Join(dataDir, "extracts", "demo", ".staging", run, "*", "*")); len(m) != 0 {
		t.Errorf("the batch was staged: %v", m)
	}
}

func consumerCount(tb testing.TB, js jetstream.JetStream, stream string) int {
	tb.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		tb.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return info.State.Consumers
}

// TestStatusRequestsCreateNoConsumers: 2,000 status requests leave the
// number of consumers on the event stream where it was, and the status
// still answers (each request used to leave a consumer behind until the
// server's limit refused them all).
func TestStatusRequestsCreateNoConsumers(t *testing.T) {
	dataDir := t.TempDir()
	st, cfg := demoStack(t, dataDir)
	defer st.Stop()
	rep := syncDemo(t, st)
	srv := httptest.NewServer(httpapi.New(st.JS, cfg, "s3cret", slog.New(slog.DiscardHandler)).Handler())
	defer srv.Close()
	before := consumerCount(t, st.JS, schemas.EventStream)
	const requests, clients = 2000, 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < requests; i += clients {
				req, _ := http.NewRequest("GET", srv.URL+"/api/sync/runs/"+rep.RunID, nil)
				req.Header.Set("Authorization", "Bearer s3cret")
				resp, err := http.DefaultClient.Do(req)
				code := 0
				if err == nil {
					code = resp.StatusCode
					resp.Body.Close()
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if codes[200] != requests {
		t.Errorf("status answers %v, want %d × 200", codes, requests)
	}
	if after := consumerCount(t, st.JS, schemas.EventStream); after > before {
		t.Errorf("%d consumers on %s after %d status requests, %d before", after, schemas.EventStream, requests, before)
	}
	code, body := call(t, "GET", srv.URL+"/api/sync/runs/"+rep.RunID, "s3cret", "")
	if code != 200 || body["status"] != "published" || body["source"] != "demo" {
		t.Errorf("status %d %v", code, body)
	}
	// A finished follower (what "da sync" runs) deletes its consumer too.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "demo", RequestedAt: time.Now().UTC()}, nil); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, func() bool { return consumerCount(t, st.JS, schemas.EventStream) <= before })
}

// TestConcurrentTriggersGetOne202: ten simultaneous triggers of one source
// get exactly one 202; the others get 409 naming that run.
func TestConcurrentTriggersGetOne202(t *testing.T) {
	st, cfg, gate := gatedStack(t, t.TempDir())
	defer st.Stop()
	srv := httptest.NewServer(httpapi.New(st.JS, cfg, "s3cret", slog.New(slog.DiscardHandler)).Handler())
	defer srv.Close()

	const n = 10
	type answer struct {
		code int
		run  string
	}
	answers := make([]answer, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			code, body := call(t, "POST", srv.URL+"/api/sync/trigger", "s3cret", `{"source":"slow"}`)
			run, _ := body["run_id"].(string)
			answers[i] = answer{code, run}
		}()
	}
	close(start)
	wg.Wait()
	var accepted []string
	conflicts := map[string]int{}
	for _, a := range answers {
		switch a.code {
		case http.StatusAccepted:
			accepted = append(accepted, a.run)
		case http.StatusConflict:
			conflicts[a.run]++
		default:
			t.Errorf("answer %d", a.code)
		}
	}
	if len(accepted) != 1 || conflicts[accepted[0]] != n-1 {
		t.Fatalf("202s for %v, 409s naming %v; want one 202 and %d 409s naming its run", accepted, conflicts, n-1)
	}
	close(gate)
	poll(t, time.Minute, func() bool {
		_, body := call(t, "GET", srv.URL+"/api/sync/runs/"+accepted[0], "s3cret", "")
		return body["status"] == "published"
	})
}

// TestUnknownTableOptionIsRefused: table_options naming a table the source
// does not have fails the run with a message naming the entry and the
// tables there are, instead of being ignored.
func TestUnknownTableOptionIsRefused(t *testing.T) {
	dataDir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dataDir
	cfg.Sources = []config.Source{{Name: "demo", Connector: "demo", Config: map[string]any{"rows": 100, "customer_rows": 10},
		TableOptions: map[string]config.TableOptions{"ordrs": {IncrementalKey: "id"}}}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dataDir,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "demo", RequestedAt: time.Now().UTC()}, nil)
	if err == nil || !strings.Contains(err.Error(), "table_options.ordrs") || !strings.Contains(err.Error(), "orders") {
		t.Fatalf("got %v, want an error naming table_options.ordrs and the tables the source has", err)
	}
}

// TestSourceFolderLinkedOutOfTheDataDir: when a source's folder inside the
// data dir is a symbolic link to a folder outside it, a sync writes nothing
// there: the run fails with an error naming the link, its batches are
// dead-lettered with the same reason, and the folder outside is untouched.
func TestSourceFolderLinkedOutOfTheDataDir(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	victim := filepath.Join(root, "victim")
	if err := os.MkdirAll(filepath.Join(dataDir, "extracts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(victim, "precious.txt"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dataDir, "extracts", "demo")); err != nil {
		t.Fatal(err)
	}
	before := snapshotTree(t, victim)
	st, _ := demoStack(t, dataDir)
	defer st.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "demo", RequestedAt: time.Now().UTC()}, nil)
	if err == nil || !strings.Contains(err.Error(), "through a symbolic link") {
		t.Fatalf("sync through a linked source folder: %+v, %v; want a failure naming the link; victim %v", rep, err, snapshotTree(t, victim))
	}
	dl := waitDeadLetters(t, st.JS, 1)
	if r := dl[0].Header.Get(schemas.HeaderDLQReason); !strings.Contains(r, "leads out of the data dir") {
		t.Errorf("dead letter reason %q does not name the link", r)
	}
	if got := snapshotTree(t, victim); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("the folder outside the data dir changed: %v, was %v", got, before)
	}
}
