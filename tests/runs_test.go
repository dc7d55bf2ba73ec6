package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/cli"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/httpapi"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

// waitRecord polls the run's record until done says it is there.
func waitRecord(t *testing.T, js jetstream.JetStream, source, run string, done func(runs.Record) bool) runs.Record {
	t.Helper()
	ctx := context.Background()
	store, err := runs.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	var r runs.Record
	natstest.Poll(t, 20*time.Second, func() (bool, string) {
		r, err = store.Get(ctx, source, run)
		return err == nil && done(r), "record " + string(r.Status) + " " + errString(err)
	})
	return r
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func ended(r runs.Record) bool { return r.Status.Terminal() }

// TestRunRecords: a sync leaves a record with every field the history
// promises; a run that fails has its reason; records survive a restart.
func TestRunRecords(t *testing.T) {
	dir := t.TempDir()
	st, _ := demoStack(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := uuid.NewString()
	asked := time.Now().UTC()
	if _, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: run, Source: "demo", RequestedAt: asked, RequestedBy: schemas.TriggerCLI}, nil); err != nil {
		t.Fatal(err)
	}
	r := waitRecord(t, st.JS, "demo", run, ended)
	if r.Status != runs.Published || r.Trigger != "cli" || r.Attempt != 1 || r.Error != "" || r.RunID != run || r.Source != "demo" {
		t.Errorf("record %+v", r)
	}
	if r.QueuedAt == nil || r.StartedAt == nil || r.EndedAt == nil || r.StartedAt.Before(asked.Add(-time.Second)) || r.EndedAt.Before(*r.StartedAt) {
		t.Errorf("queued %v, started %v, ended %v", r.QueuedAt, r.StartedAt, r.EndedAt)
	}
	rows := map[string]int64{"orders": 3000, "customers": 300}
	if len(r.Tables) != len(rows) {
		t.Fatalf("tables %+v", r.Tables)
	}
	for _, tb := range r.Tables {
		if tb.Status != schemas.StatusDone || tb.Rows != rows[tb.Name] || tb.Bytes <= 0 || tb.DurationMS < 0 || tb.Error != "" {
			t.Errorf("table %+v", tb)
		}
	}

	// A run of a source the producer does not know fails, with the reason.
	bad := uuid.NewString()
	if _, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: bad, Source: "nosuch", RequestedAt: time.Now().UTC(), RequestedBy: schemas.TriggerAPI}, nil); err == nil {
		t.Fatal("a sync of an unknown source succeeded")
	}
	f := waitRecord(t, st.JS, "nosuch", bad, ended)
	if f.Status != runs.Failed || !strings.Contains(f.Error, "nosuch") || f.Trigger != "api" || f.EndedAt == nil {
		t.Errorf("failed run's record %+v", f)
	}

	// The history outlives the services and the embedded server.
	if err := st.Stop(); err != nil {
		t.Fatal(err)
	}
	st2, _ := demoStack(t, dir)
	defer st2.Stop()
	store, err := runs.Open(ctx, st2.JS)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := store.Get(ctx, "demo", run); err != nil || again.Status != runs.Published || len(again.Tables) != 2 {
		t.Errorf("after a restart: %+v, %v", again, err)
	}
	if _, err := store.Get(ctx, "demo", uuid.NewString()); !errors.Is(err, runs.ErrNotFound) {
		t.Errorf("an unknown run: %v, want ErrNotFound", err)
	}
}

// TestRunHistoryListed: the runs are listed, newest first and paged, the
// same by the API (two replicas), "da runs" and "da status".
func TestRunHistoryListed(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "demo", Connector: "demo", Config: map[string]any{"rows": 3000, "customer_rows": 300}}}
	// The embedded server listens, so that the CLI can reach it.
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir,
		ListenHost: "127.0.0.1", ListenPort: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ids []string // oldest first
	for range 3 {
		id := uuid.NewString()
		if _, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: id, Source: "demo", RequestedAt: time.Now().UTC(), RequestedBy: schemas.TriggerCLI}, nil); err != nil {
			t.Fatal(err)
		}
		waitRecord(t, st.JS, "demo", id, ended)
		ids = append(ids, id)
	}
	failed := uuid.NewString()
	stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: failed, Source: "gone", RequestedAt: time.Now().UTC()}, nil)
	waitRecord(t, st.JS, "gone", failed, ended)
	newest := []string{failed, ids[2], ids[1], ids[0]}

	replicas := []*httptest.Server{
		httptest.NewServer(httpapi.New(st.JS, cfg, "s3cret", slog.New(slog.DiscardHandler)).Handler()),
		httptest.NewServer(httpapi.New(st.JS, cfg, "s3cret", slog.New(slog.DiscardHandler)).Handler()),
	}
	for i, srv := range replicas {
		defer srv.Close()
		// Pages of 3 and 1, following the cursor.
		var got []string
		next := srv.URL + "/api/sync/runs?limit=3"
		for pages := 0; next != "" && pages < 5; pages++ {
			resp, recs := getRuns(t, next)
			for _, r := range recs {
				got = append(got, r.RunID)
			}
			next = ""
			if c := resp.Header.Get("X-Next-Cursor"); c != "" {
				next = srv.URL + "/api/sync/runs?limit=3&cursor=" + c
				if !strings.Contains(resp.Header.Get("Link"), `rel="next"`) {
					t.Errorf("no Link header to the next page: %v", resp.Header)
				}
			}
		}
		if strings.Join(got, ",") != strings.Join(newest, ",") {
			t.Errorf("replica %d lists %v, want newest first %v", i, got, newest)
		}
	}
	srv := replicas[0]
	if _, recs := getRuns(t, srv.URL+"/api/sync/runs?status=failed"); len(recs) != 1 || recs[0].RunID != failed || recs[0].Error == "" {
		t.Errorf("failed runs: %+v", recs)
	}
	if _, recs := getRuns(t, srv.URL+"/api/sync/runs?source=demo&limit=1"); len(recs) != 1 || recs[0].RunID != ids[2] ||
		recs[0].Trigger != "cli" || len(recs[0].Tables) != 2 || recs[0].Tables[0].Bytes <= 0 {
		t.Errorf("newest demo run: %+v", recs)
	}
	for _, q := range []string{"status=done", "limit=0", "limit=x", "cursor=nope", "source=../x", "limit=5000"} {
		if code, body := call(t, "GET", srv.URL+"/api/sync/runs?"+q, "s3cret", ""); code != 400 || body["error"] == nil {
			t.Errorf("?%s: %d %v, want 400 naming the problem", q, code, body)
		}
	}
	code, body := call(t, "GET", srv.URL+"/api/sync/runs/"+ids[0], "s3cret", "")
	if code != 200 || body["status"] != "published" || body["trigger"] != "cli" || body["started_at"] == nil || body["tables"] == nil {
		t.Errorf("GET a run: %d %v", code, body)
	}

	var sources []runs.SourceStatus
	getJSON(t, srv.URL+"/api/sources", &sources)
	if len(sources) != 1 || sources[0].Name != "demo" || sources[0].Connector != "demo" || sources[0].LastSuccessAt == nil ||
		sources[0].FreshnessS == nil || *sources[0].FreshnessS < 0 || sources[0].LastRun == nil || sources[0].LastRun.ID != ids[2] ||
		sources[0].LastRun.Status != runs.Published || sources[0].NextRunAt != nil {
		t.Errorf("sources %+v", sources)
	}

	// The CLI reads the same history.
	var out, errb bytes.Buffer
	url := st.Server.ClientURL()
	if code := cli.Run(ctx, []string{"runs", "--nats-url", url, "--nats-creds", cliCreds(dir), "--json"}, &out, &errb); code != 0 {
		t.Fatalf("da runs: %d %s", code, errb.String())
	}
	var listed []runs.Record
	if err := json.Unmarshal(out.Bytes(), &listed); err != nil || len(listed) != 4 || listed[0].RunID != failed {
		t.Errorf("da runs --json: %v %s", err, out.String())
	}
	out.Reset()
	if code := cli.Run(ctx, []string{"runs", "--nats-url", url, "--nats-creds", cliCreds(dir), "--source", "demo", "--limit", "2"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), ids[2]) || strings.Contains(out.String(), ids[0]) || !strings.Contains(errb.String(), "--cursor") {
		t.Errorf("da runs --limit 2: %d\n%s\n%s", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := cli.Run(ctx, []string{"runs", "--nats-url", url, "--nats-creds", cliCreds(dir), "--status", "bogus"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "bogus") {
		t.Errorf("da runs --status bogus: %d %s", code, errb.String())
	}
	out.Reset()
	if code := cli.Run(ctx, []string{"status", "--nats-url", url, "--nats-creds", cliCreds(dir), "--json"}, &out, &errb); code != 0 {
		t.Fatalf("da status: %d %s", code, errb.String())
	}
	if !strings.Contains(out.String(), `"last_success_at"`) || !strings.Contains(out.String(), ids[2]) {
		t.Errorf("da status --json:\n%s", out.String())
	}
}

func getRuns(t *testing.T, url string) (*http.Response, []runs.Record) {
	t.Helper()
	var recs []runs.Record
	return getJSON(t, url, &recs), recs
}

func getJSON(t *testing.T, url string, v any) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

// liveExtract is snapshotTree of a source's folder without its .staging
// folder: what readers see. The previous run's staging may still be
// going away when the snapshot is taken (the finalizer drops it after
// publishing), which is not a change to the live extract.
func liveExtract(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	live := snapshotTree(t, dir)
	staging := filepath.Join(dir, ".staging")
	maps.DeleteFunc(live, func(p string, _ int64) bool {
		return p == staging || strings.HasPrefix(p, staging+string(filepath.Separator))
	})
	return live
}

// TestCancel: a run cancelled mid-read (through the API, then the CLI) ends
// cancelled, leaves the previous extract live and the source free for the
// next sync at once; an ended run cannot be cancelled (409).
func TestCancel(t *testing.T) {
	dir := t.TempDir()
	open := make(chan struct{})
	close(open)
	g := &gated{gates: map[string]chan struct{}{"c": open}, name: "c"}
	tr := &tracked{gated: g, ended: make(chan struct{}, 16)}
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("tests/gate_c.yaml", []byte("name: gate_c\nversion: \"1.0.0\"\ndescription: gated\ncapabilities: [discover, read]\n"),
		func(connectors.Config) (connectors.Connector, error) { return tr, nil })
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "c", Connector: "gate_c"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: reg, DataDir: dir,
		ListenHost: "127.0.0.1", ListenPort: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	srv := httptest.NewServer(httpapi.New(st.JS, cfg, "s3cret", slog.New(slog.DiscardHandler)).Handler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	setGate := func(ch chan struct{}) { g.mu.Lock(); g.gates["c"] = ch; g.mu.Unlock() }

	first := uuid.NewString()
	rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: first, Source: "c", RequestedAt: time.Now().UTC()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	extract := liveExtract(t, filepath.Dir(rep.Path))

	// cancelMidRun starts a run whose read blocks, cancels it with do and
	// checks how it ended.
	cancelMidRun := func(how string, do func(run string)) {
		setGate(make(chan struct{}))
		for len(tr.ended) > 0 {
			<-tr.ended
		}
		run := uuid.NewString()
		done := make(chan error, 1)
		go func() {
			_, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: run, Source: "c", RequestedAt: time.Now().UTC()}, nil)
			done <- err
		}()
		natstest.WaitEvents(t, st.JS, schemas.RunEventsFilter("c", run), 20*time.Second, func(evs []schemas.Event) bool {
			return slices.ContainsFunc(evs, func(e schemas.Event) bool { return e.Type == schemas.EventTableStarted })
		})
		do(run)
		// The producer stops reading (the gate stays shut).
		select {
		case <-tr.ended:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: the producer still reads the cancelled run", how)
		}
		if err := <-done; !errors.Is(err, stack.ErrCancelled) {
			t.Errorf("%s: the cancelled run's sync returned %v, want ErrCancelled", how, err)
		}
		if r := waitRecord(t, st.JS, "c", run, ended); r.Status != runs.Cancelled || r.EndedAt == nil {
			t.Errorf("%s: record %+v", how, r)
		}
		if after := liveExtract(t, filepath.Dir(rep.Path)); !maps.Equal(after, extract) {
			t.Errorf("%s: the extract folder changed: %v, was %v", how, after, extract)
		}
		layout, _ := schemas.NewLayout(dir)
		staging, err := layout.RunStaging("c", run)
		if err != nil {
			t.Fatal(err)
		}
		natstest.Poll(t, 10*time.Second, func() (bool, string) {
			_, err := os.Stat(staging)
			return errors.Is(err, os.ErrNotExist), fmt.Sprintf("staging %s left: %v", staging, err)
		})
	}
	cancelMidRun("API", func(run string) {
		if code, body := call(t, "POST", srv.URL+"/api/sync/runs/"+run+"/cancel", "s3cret", ""); code != http.StatusAccepted || body["status"] != "cancelling" {
			t.Errorf("cancel: %d %v", code, body)
		}
	})
	cancelMidRun("CLI", func(run string) {
		var out, errb bytes.Buffer
		if code := cli.Run(ctx, []string{"cancel", "--nats-url", st.Server.ClientURL(), "--nats-creds", cliCreds(dir), run}, &out, &errb); code != 0 || !strings.Contains(out.String(), "Cancelling run "+run) {
			t.Errorf("da cancel: %d %s %s", code, out.String(), errb.String())
		}
	})

	// The source is free at once: the next sync runs and publishes.
	setGate(open)
	if _, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "c", RequestedAt: time.Now().UTC()}, nil); err != nil {
		t.Fatalf("sync after the cancels: %v", err)
	}

	// An ended run cannot be cancelled; an unknown one is not found.
	waitRecord(t, st.JS, "c", first, ended)
	if code, body := call(t, "POST", srv.URL+"/api/sync/runs/"+first+"/cancel", "s3cret", ""); code != http.StatusConflict || body["status"] != "published" {
		t.Errorf("cancel a published run: %d %v, want 409", code, body)
	}
	if code, _ := call(t, "POST", srv.URL+"/api/sync/runs/"+uuid.NewString()+"/cancel", "s3cret", ""); code != http.StatusNotFound {
		t.Errorf("cancel an unknown run: %d, want 404", code)
	}
	var out, errb bytes.Buffer
	if code := cli.Run(ctx, []string{"cancel", "--nats-url", st.Server.ClientURL(), "--nats-creds", cliCreds(dir), first}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "already ended") {
		t.Errorf("da cancel of a published run: %d %s", code, errb.String())
	}
}

// tracked is a gated connector that says when a read has returned.
type tracked struct {
	*gated
	ended chan struct{}
}

func (t *tracked) Read(ctx context.Context, table string, opts connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	inner := t.gated.Read(ctx, table, opts)
	return func(yield func(arrow.RecordBatch, error) bool) {
		defer func() { t.ended <- struct{}{} }()
		inner(yield)
	}
}
