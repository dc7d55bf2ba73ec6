package tests

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
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
