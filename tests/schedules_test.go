package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/cli"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/schedules"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// scheduledRuns lists the runs of source a schedule fired.
func scheduledRuns(t *testing.T, js jetstream.JetStream, source string) []runs.Record {
	t.Helper()
	ctx := context.Background()
	store, err := runs.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	all, err := store.All(ctx, source)
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(all, func(r runs.Record) bool { return r.Trigger != schemas.TriggerSchedule })
}

// ticks are the run ids of the ticks the bus fired for subject, by when
// each was fired.
func ticks(t *testing.T, js jetstream.JetStream, subject string) map[string]time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, schemas.ScheduleStream)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Time{}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			out[schedules.TickRun(md.Sequence.Stream, md.Timestamp)] = md.Timestamp
		}
		if n == 0 {
			return out
		}
	}
}

// checkOneRunPerTick: every scheduled run comes from a distinct tick, and
// every tick fired more than settle ago made a run.
func checkOneRunPerTick(t *testing.T, recs []runs.Record, fired map[string]time.Time, settle time.Duration) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range recs {
		if _, ok := fired[r.RunID]; !ok {
			t.Errorf("scheduled run %s matches no tick", r.RunID)
		}
		if seen[r.RunID] {
			t.Errorf("run %s recorded twice", r.RunID)
		}
		seen[r.RunID] = true
	}
	for id, at := range fired {
		if !seen[id] && time.Since(at) > settle {
			t.Errorf("the tick of %s (run %s) made no run", at.Format(time.RFC3339Nano), id)
		}
	}
}

// TestSchedulesFire: "@every 2s" on a source fires runs with distinct ids,
// each published and triggered by the schedule, one per tick; /api/sources
// shows when the next comes.
func TestSchedulesFire(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "demo", Connector: "demo", Config: map[string]any{"rows": 2000, "customer_rows": 50}, Schedule: "@every 2s"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir, Schedules: true,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	var recs []runs.Record
	natstest.Poll(t, time.Minute, func() (bool, string) {
		recs = scheduledRuns(t, st.JS, "demo")
		n := 0
		for _, r := range recs {
			if r.Status == runs.Published {
				n++
			}
		}
		return n >= 3, fmt.Sprintf("%d scheduled runs published: %+v", n, recs)
	})
	for _, r := range recs {
		if r.Status != runs.Published && r.Status != runs.Skipped && r.Status.Terminal() {
			t.Errorf("scheduled run %s ended %s: %s", r.RunID, r.Status, r.Error)
		}
	}
	checkOneRunPerTick(t, recs, ticks(t, st.JS, schemas.TickSubject("demo", "")), 5*time.Second)
	now := time.Now().UTC()
	ctx := context.Background()
	store, _ := runs.Open(ctx, st.JS)
	sts, err := schedules.Sources(ctx, st.JS, store, cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	if next := sts[0].NextRunAt; next == nil || next.Before(now.Add(-time.Second)) || next.After(now.Add(3*time.Second)) {
		t.Errorf("next_run_at %v at %s, want within the next 2 s", next, now)
	}
}

// TestScheduledTickSkipped: a tick that finds its source still syncing
// records a skipped run naming the running one, and starts nothing; the
// running sync is undisturbed.
func TestScheduledTickSkipped(t *testing.T) {
	dir := t.TempDir()
	gates := map[string]chan struct{}{"s": make(chan struct{})}
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("tests/gate_s.yaml", []byte("name: gate_s\nversion: \"1.0.0\"\ndescription: gated\ncapabilities: [discover, read]\n"),
		func(connectors.Config) (connectors.Connector, error) { return &gated{gates: gates, name: "s"}, nil })
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "slow", Connector: "gate_s", Schedule: "@every 1s"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: reg, DataDir: dir, Schedules: true,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	// A run holds the source (the first tick's, or ours): every later tick
	// is skipped while the gate is shut.
	var skipped []runs.Record
	natstest.Poll(t, 30*time.Second, func() (bool, string) {
		skipped = slices.DeleteFunc(scheduledRuns(t, st.JS, "slow"), func(r runs.Record) bool { return r.Status != runs.Skipped })
		return len(skipped) >= 2, fmt.Sprintf("%d skipped", len(skipped))
	})
	running := slices.DeleteFunc(scheduledRuns(t, st.JS, "slow"), func(r runs.Record) bool { return r.Status.Terminal() })
	if len(running) != 1 {
		t.Fatalf("running scheduled runs %+v, want the one holding the source", running)
	}
	for _, r := range skipped {
		if !strings.Contains(r.Error, running[0].RunID) || r.EndedAt == nil || r.StartedAt != nil {
			t.Errorf("skipped record %+v, want one naming run %s, ended and never started", r, running[0].RunID)
		}
	}
	close(gates["s"])
	waitRecord(t, st.JS, "slow", running[0].RunID, func(r runs.Record) bool { return r.Status == runs.Published })
}

// TestSchedulesOnCluster: on a 3-node cluster with two producer processes
// (each running a scheduler), "@every 2s" fires runs with distinct ids,
// each tick made exactly one run, whichever scheduler took it.
func TestSchedulesOnCluster(t *testing.T) {
	e := newProcEnv(t, 3, 2000, 50)
	e.schedule("@every 2s")
	p1 := e.serve("p1", "producer")
	p2 := e.serve("p2", "producer")
	e.serve("finalizer", "finalizer")
	e.serve("w1", "writer")
	var recs []runs.Record
	natstest.Poll(t, 2*time.Minute, func() (bool, string) {
		recs = scheduledRuns(t, e.js, "demo")
		n := 0
		for _, r := range recs {
			if r.Status == runs.Published {
				n++
			}
		}
		return n >= 5, fmt.Sprintf("%d scheduled runs published", n)
	})
	for _, r := range recs {
		if r.Status == runs.Failed || r.Status == runs.Rejected {
			t.Errorf("scheduled run %s ended %s: %s", r.RunID, r.Status, r.Error)
		}
	}
	checkOneRunPerTick(t, recs, ticks(t, e.js, schemas.TickSubject("demo", "")), 10*time.Second)
	took := func(p *proc) int {
		return strings.Count(p.output(), "scheduled run queued") + strings.Count(p.output(), "scheduled run skipped")
	}
	t.Logf("%d scheduled runs; ticks taken by p1: %d, p2: %d", len(recs), took(p1), took(p2))
	e.verifyPublished()
}

// TestReadyz: every role's HTTP listener answers /healthz and /readyz;
// /readyz fails, saying why, while the bus is down, and recovers with it.
func TestReadyz(t *testing.T) {
	e := newProcEnv(t, 1, 1000, 10)
	free := freePorts(t, 3)
	ports := map[string]int{"producer": free[0], "finalizer": free[1], "writer": free[2]}
	for role, port := range ports {
		e.serve(role, role, "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", port))
	}
	get := func(port int, path string) (int, stack.Health) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			return 0, stack.Health{Status: err.Error()}
		}
		defer resp.Body.Close()
		var h stack.Health
		json.NewDecoder(resp.Body).Decode(&h)
		return resp.StatusCode, h
	}
	waitAll := func(want int, why string) {
		for role, port := range ports {
			natstest.Poll(t, time.Minute, func() (bool, string) {
				code, h := get(port, "/readyz")
				return code == want, fmt.Sprintf("%s /readyz %d %+v, want %d (%s)", role, code, h, want, why)
			})
		}
	}
	waitAll(http.StatusOK, "all up")
	for role, port := range ports {
		if code, h := get(port, "/healthz"); code != http.StatusOK || h.Status != "ok" {
			t.Errorf("%s /healthz %d %+v", role, code, h)
		}
		_, h := get(port, "/readyz")
		want := map[string]string{"bus": "ok", "consumers": "ok"}
		if role == "finalizer" {
			want["finalizer"] = "ok"
		}
		if !maps.Equal(h.Checks, want) {
			t.Errorf("%s /readyz checks %v, want %v", role, h.Checks, want)
		}
	}
	healthcheck := func() int {
		var out, errb strings.Builder
		return cli.Run(context.Background(), []string{"healthcheck", fmt.Sprintf("http://127.0.0.1:%d/readyz", ports["writer"])}, &out, &errb)
	}
	if code := healthcheck(); code != 0 {
		t.Errorf("da healthcheck of a ready writer exited %d", code)
	}
	e.servers[0].kill()
	waitAll(http.StatusServiceUnavailable, "the bus is down")
	if code := healthcheck(); code != 1 {
		t.Errorf("da healthcheck with the bus down exited %d, want 1", code)
	}
	if _, h := get(ports["producer"], "/readyz"); h.Status != "not_ready" || h.Checks["bus"] == "ok" {
		t.Errorf("/readyz with the bus down: %+v", h)
	}
	if code, _ := get(ports["producer"], "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz (liveness) with the bus down: %d", code)
	}
	e.restartServer(0)
	waitAll(http.StatusOK, "the bus is back")
}
