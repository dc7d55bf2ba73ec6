package finalizer

import (
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"os"
	"path/filepath"
	"testing"
	"time"

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

// TestCleanOrphans: the staging of a run no event mentions goes once nothing
// wrote to it for OrphanAge; known runs, the stream run, fresh folders and
// folders not named after a run stay.
func TestCleanOrphans(t *testing.T) {
	dataDir := t.TempDir()
	f := mustFinalizer(t, dataDir)
	staging := filepath.Join(dataDir, "extracts", "demo", schemas.StagingFolder)
	now := time.Now()
	old := now.Add(-2 * OrphanAge)
	mk := func(name string, at time.Time) string {
		dir := filepath.Join(staging, name, "orders")
		os.MkdirAll(dir, 0o755)
		p := filepath.Join(dir, "x.part")
		os.WriteFile(p, []byte("x"), 0o644)
		for _, q := range []string{p, dir, filepath.Dir(dir)} {
			os.Chtimes(q, at, at)
		}
		return filepath.Dir(dir)
	}
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
