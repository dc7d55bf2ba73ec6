package finalizer

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
)

const (
	runA = "0b9f3c1e-5d7a-4e2b-9c61-3f8a2d4e6b10"
	runB = "1c8e2d0f-4e6b-4f3a-8d52-2e7b1c3d5a21"
)

func mustFinalizer(tb testing.TB, dataDir string) *Finalizer {
	tb.Helper()
	f, err := New(Options{JS: natstest.MustStart(tb), DataDir: dataDir, RetireGrace: time.Minute})
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// stageRun makes the staging folder of run under staging with one part,
// last changed at, and returns it.
func stageRun(staging, run string, at time.Time) string {
	dir := filepath.Join(staging, run, "orders")
	os.MkdirAll(dir, 0o755)
	p := filepath.Join(dir, "x.part")
	os.WriteFile(p, []byte("x"), 0o644)
	for _, q := range []string{p, dir, filepath.Dir(dir)} {
		os.Chtimes(q, at, at)
	}
	return filepath.Dir(dir)
}

// TestCleanOrphans: the staging of a run no event mentions goes once nothing
// wrote to it for OrphanAge; known runs, the stream run, fresh folders and
// folders not named after a run stay.
func TestCleanOrphans(t *testing.T) {
	dataDir := t.TempDir()
	f := mustFinalizer(t, dataDir)
	staging := filepath.Join(dataDir, "extracts", "demo", schemas.StagingFolder)
	now := time.Now()
	old := now.Add(-2 * OrphanAge)
	mk := func(name string, at time.Time) string { return stageRun(staging, name, at) }
	orphan := mk(runA, old)
	known := mk(runB, old)
	fresh := mk("2d7f3e1a-3f5c-4a2b-9e43-1d6c0b2e4f32", now)
	stream := mk(schemas.StreamRun, old)
	odd := mk("not-a-run", old)
	o := f.owner("demo")
	o.runs[runB] = &runState{source: "demo"}
	o.cleanOrphans(now)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphaned staging %s stayed", orphan)
	}
	for _, keep := range []string{known, fresh, stream, odd} {
		if _, err := os.Stat(keep); err != nil {
			t.Errorf("%s was removed: %v", keep, err)
		}
	}
}

// TestSweepStaging: the owner sweeps staging when the history is read and
// then every SweepEvery, not in between: a published run's staging goes, a
// run no event mentions goes once idle for OrphanAge, and so does a run
// that stopped without an end (not published or failed, its lock gone);
// the staging of a run that still holds its source's lock stays.
func TestSweepStaging(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	js := natstest.MustStart(t)
	f, err := New(Options{JS: js, DataDir: dataDir, RetireGrace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if f.lockKV, err = natsbus.KeyValue(ctx, js, schemas.LockBucket); err != nil {
		t.Fatal(err)
	}
	const (
		runC = "2d7f3e1a-3f5c-4a2b-9e43-1d6c0b2e4f32"
		runD = "3e8a4f2b-4a6d-4b3c-8f54-2e7d1c3f5a43"
	)
	staging := filepath.Join(dataDir, "extracts", "demo", schemas.StagingFolder)
	old := time.Now().Add(-2 * OrphanAge)
	mk := func(run string) string { return stageRun(staging, run, old) }
	abandoned, running, published, orphan := mk(runA), mk(runB), mk(runC), mk(runD)
	o := f.owner("demo")
	o.runs[runA] = &runState{source: "demo"}
	o.runs[runB] = &runState{source: "demo"}
	o.runs[runC] = &runState{source: "demo", published: true}
	if err := natsbus.AcquireRun(ctx, f.lockKV, "demo", runB); err != nil {
		t.Fatal(err)
	}
	gone := func(when string, dirs ...string) {
		t.Helper()
		for _, d := range dirs {
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Errorf("%s: %s stayed (%v)", when, d, err)
			}
		}
	}
	o.act(ctx)
	if _, err := os.Stat(abandoned); err != nil {
		t.Fatalf("swept before the history was read: %v", err)
	}
	o.runsLive = true
	o.act(ctx)
	gone("first sweep", abandoned, published, orphan)
	if _, err := os.Stat(running); err != nil {
		t.Errorf("the staging of a run holding its lock was removed: %v", err)
	}
	// The next sweep waits for SweepEvery.
	orphan = mk(runD)
	o.act(ctx)
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("swept again before SweepEvery: %v", err)
	}
	o.sweepAt = time.Now().Add(-time.Second)
	o.act(ctx)
	gone("sweep due", orphan)
}

// TestSyncLinks: data/<table>.parquet is replaced by a link to the newest
// version without touching the version an older extract reads; a table
// that switched to partitions loses its link.
func TestSyncLinks(t *testing.T) {
	dataDir := t.TempDir()
	v1, _ := schemas.VersionRel("t", runA)
	v2, _ := schemas.VersionRel("t", runB)
	for _, v := range []string{v1, v2} {
		os.MkdirAll(filepath.Dir(filepath.Join(dataDir, v)), 0o755)
		os.WriteFile(filepath.Join(dataDir, v), []byte(v), 0o644)
	}
	os.WriteFile(filepath.Join(dataDir, "p.parquet"), []byte("old single file"), 0o644)
	cat := &catalog{Tables: map[string]catalogTable{
		"t": {QueryMode: schemas.ModeLocal, Version: v1},
		"p": {QueryMode: schemas.ModeLocal, Partitioned: true},
	}}
	link := filepath.Join(dataDir, "t.parquet")
	for _, want := range []string{v1, v2, v2} {
		ct := cat.Tables["t"]
		ct.Version = want
		cat.Tables["t"] = ct
		if err := syncLinks(dataDir, cat); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(link); string(b) != want {
			t.Errorf("link reads %q, want %q", b, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dataDir, v1)); string(b) != v1 {
		t.Errorf("the older version changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "p.parquet")); !os.IsNotExist(err) {
		t.Errorf("a partitioned table kept its single-file link: %v", err)
	}
}

// TestDeleteRetired: retired versions go after the grace period, and a
// retired path that leaves the data folder is never deleted.
func TestDeleteRetired(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	f := mustFinalizer(t, dataDir)
	v1, _ := schemas.VersionRel("t", runA)
	os.MkdirAll(filepath.Dir(filepath.Join(dataDir, v1)), 0o755)
	os.WriteFile(filepath.Join(dataDir, v1), []byte("v1"), 0o644)
	outside := filepath.Join(root, "outside.txt")
	os.WriteFile(outside, []byte("keep"), 0o644)
	now := time.Now()
	cat := &catalog{Tables: map[string]catalogTable{}, Retired: []retiredFile{{Path: v1, At: now}, {Path: "../outside.txt", At: now.Add(-time.Hour)}}}
	f.deleteRetired(dataDir, cat, now.Add(30*time.Second))
	if _, err := os.Stat(filepath.Join(dataDir, v1)); err != nil {
		t.Errorf("a version retired 30 s ago (grace 1 min) was deleted: %v", err)
	}
	f.deleteRetired(dataDir, cat, now.Add(2*time.Minute))
	if _, err := os.Stat(filepath.Join(dataDir, v1)); !os.IsNotExist(err) {
		t.Errorf("a version retired past the grace stayed: %v", err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("a retired path outside the data folder was deleted: %v", err)
	}
	if len(cat.Retired) != 0 {
		t.Errorf("retired list %v, want empty", cat.Retired)
	}
}
