package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/httpapi"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
)

// gatedStack starts a stack with a source "slow" whose read waits until
// the returned gate is closed, besides the given sources.
func gatedStack(tb testing.TB, dir string, sources ...config.Source) (*stack.Stack, *config.Config, chan struct{}) {
	tb.Helper()
	gates := map[string]chan struct{}{"a": make(chan struct{})}
	reg := connectors.NewRegistry()
	demo.Register(reg)
	reg.MustRegisterManifest("tests/gate_a.yaml", []byte("name: gate_a\nversion: \"1.0.0\"\ndescription: gated\ncapabilities: [discover, read]\n"),
		func(connectors.Config) (connectors.Connector, error) { return &gated{gates: gates, name: "a"}, nil })
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = append(sources, config.Source{Name: "slow", Connector: "gate_a"})
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: reg, DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	return st, cfg, gates["a"]
}

func call(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestSyncAPI: trigger a sync over HTTP, follow its status to published,
// get 409 for a source already syncing, and the auth and input errors.
func TestSyncAPI(t *testing.T) {
	st, cfg, gate := gatedStack(t, t.TempDir(),
		config.Source{Name: "demo", Connector: "demo", Config: map[string]any{"rows": 5000, "customer_rows": 100}})
	defer st.Stop()
	srv := httptest.NewServer(httpapi.New(st.JS, cfg, "s3cret", slog.New(slog.DiscardHandler)).Handler())
	defer srv.Close()
	off := httptest.NewServer(httpapi.New(st.JS, cfg, "", slog.New(slog.DiscardHandler)).Handler())
	defer off.Close()

	if code, _ := call(t, "GET", srv.URL+"/healthz", "", ""); code != 200 {
		t.Errorf("healthz %d", code)
	}
	for _, tc := range []struct {
		name, url, token, body string
		want                   int
	}{
		{"NoBootstrapToken", off.URL + "/api/sync/trigger", "s3cret", `{"source":"demo"}`, 401},
		{"NoToken", srv.URL + "/api/sync/trigger", "", `{"source":"demo"}`, 401},
		{"WrongToken", srv.URL + "/api/sync/trigger", "guess", `{"source":"demo"}`, 401},
		{"BadJSON", srv.URL + "/api/sync/trigger", "s3cret", `{"source":`, 400},
		{"UnknownField", srv.URL + "/api/sync/trigger", "s3cret", `{"sauce":"demo"}`, 400},
		{"TrailingData", srv.URL + "/api/sync/trigger", "s3cret", `{"source":"demo"}xyz`, 400},
		{"TwoValues", srv.URL + "/api/sync/trigger", "s3cret", `{"source":"demo"} {"source":"demo"}`, 400},
		{"BadName", srv.URL + "/api/sync/trigger", "s3cret", `{"source":"../x"}`, 400},
		{"UnknownSource", srv.URL + "/api/sync/trigger", "s3cret", `{"source":"nope"}`, 404},
		{"TooLarge", srv.URL + "/api/sync/trigger", "s3cret", `{"source":"demo","tables":["` + strings.Repeat("a", 200<<10) + `"]}`, 413},
		{"BadRunID", srv.URL + "/api/sync/runs/xyz", "s3cret", ``, 400},
		{"UnknownRun", srv.URL + "/api/sync/runs/7d0f1b8e-0000-4000-8000-000000000000", "s3cret", ``, 404},
	} {
		method := "POST"
		if strings.Contains(tc.url, "/runs/") {
			method = "GET"
		}
		if code, body := call(t, method, tc.url, tc.token, tc.body); code != tc.want || body["error"] == nil {
			t.Errorf("%s: %d %v, want %d with an error", tc.name, code, body, tc.want)
		}
	}

	code, body := call(t, "POST", srv.URL+"/api/sync/trigger", "s3cret", `{"source":"demo"}`)
	if code != http.StatusAccepted || body["run_id"] == nil {
		t.Fatalf("trigger: %d %v", code, body)
	}
	run := body["run_id"].(string)
	natstest.Poll(t, time.Minute, func() (bool, string) {
		code, body = call(t, "GET", srv.URL+"/api/sync/runs/"+run, "s3cret", "")
		return code == 200 && body["status"] == "published", fmt.Sprintf("run status %d %v", code, body)
	})
	if res, _ := body["results"].([]any); len(res) != 2 {
		t.Errorf("results %v", body["results"])
	}
	if r := waitRecord(t, st.JS, "demo", run, ended); r.Trigger != "api" || r.Status != runs.Published || r.QueuedAt == nil {
		t.Errorf("the triggered run's record %+v", r)
	}

	// A source whose sync is running answers 409.
	code, body = call(t, "POST", srv.URL+"/api/sync/trigger", "s3cret", `{"source":"slow"}`)
	if code != http.StatusAccepted {
		t.Fatalf("trigger slow: %d %v", code, body)
	}
	slowRun := body["run_id"].(string)
	natstest.Poll(t, 30*time.Second, func() (bool, string) {
		code, body = call(t, "POST", srv.URL+"/api/sync/trigger", "s3cret", `{"source":"slow"}`)
		return code == http.StatusConflict, fmt.Sprintf("second trigger of a running source: %d %v", code, body)
	})
	if body["run_id"] != slowRun {
		t.Errorf("409 names run %v, want %s", body["run_id"], slowRun)
	}
	close(gate)

	// A source locked by a run whose producer is gone (no heartbeat) is
	// taken over at once: 202, and the dead run is recorded abandoned.
	ctx := context.Background()
	dead := uuid.NewString()
	store, err := runs.Open(ctx, st.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Claim(ctx, schemas.SyncRequest{RunID: dead, Source: "demo", RequestedAt: time.Now().UTC()}, "gone.00000001"); err != nil {
		t.Fatal(err)
	}
	locks, err := natsbus.KeyValue(ctx, st.JS, schemas.LockBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := natsbus.AcquireRun(ctx, locks, "demo", dead); err != nil {
		t.Fatal(err)
	}
	code, body = call(t, "POST", srv.URL+"/api/sync/trigger", "s3cret", `{"source":"demo"}`)
	if code != http.StatusAccepted {
		t.Fatalf("trigger over a dead run: %d %v", code, body)
	}
	if r := waitRecord(t, st.JS, "demo", dead, ended); r.Status != runs.Abandoned || !strings.Contains(r.Error, "took its place") {
		t.Errorf("the dead run's record %+v", r)
	}
	if r := waitRecord(t, st.JS, "demo", body["run_id"].(string), ended); r.Status != runs.Published {
		t.Errorf("the run that took its place: %+v", r)
	}
}

// TestAPIRoleProcess: "da serve --role api" against an authenticated
// nats-server, with its own identity and no data dir: the bootstrap admin
// makes an operator token, which triggers a sync that the other processes
// publish, and reads its record; a viewer token may read but not trigger.
func TestAPIRoleProcess(t *testing.T) {
	e := newProcEnv(t, 1, 2000, 10)
	e.serveAll(1)
	t.Setenv(httpapi.TokenEnv, "boot-s3cret")
	port := freePort(t)
	api := e.serve("api", "api", "--http-listen", fmt.Sprintf("127.0.0.1:%d", port), "--data-dir", filepath.Join(e.dir, "nowhere"))
	waitPort(t, api, port)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	token := func(name, role string) string {
		code, body := call(t, "POST", base+"/api/tokens", "boot-s3cret", `{"name":"`+name+`","role":"`+role+`"}`)
		if code != http.StatusCreated {
			t.Fatalf("create %s token: %d %v\n%s", role, code, body, api.output())
		}
		return body["token"].(string)
	}
	op, viewer := token("ops", "operator"), token("dash", "viewer")
	if code, body := call(t, "POST", base+"/api/sync/trigger", viewer, `{"source":"demo"}`); code != http.StatusForbidden {
		t.Errorf("a viewer triggered a sync: %d %v", code, body)
	}
	code, body := call(t, "POST", base+"/api/sync/trigger", op, `{"source":"demo"}`)
	if code != http.StatusAccepted {
		t.Fatalf("trigger: %d %v\n%s", code, body, api.output())
	}
	run := body["run_id"].(string)
	natstest.Poll(t, 2*time.Minute, func() (bool, string) {
		code, body = call(t, "GET", base+"/api/sync/runs/"+run, viewer, "")
		return code == 200 && body["status"] == "published", fmt.Sprintf("run %d %v", code, body)
	})
	e.verifyPublished()
	if _, err := os.Stat(filepath.Join(e.dir, "nowhere")); err == nil {
		t.Errorf("the api process made a data dir")
	}
}
