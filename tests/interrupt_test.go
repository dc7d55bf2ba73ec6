package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/runs"
)

// startReading starts an embedded "da sync" of a 1 M-row demo source and
// returns once it prints that it is reading; the rest of its output is
// collected in the background (out is complete once done is closed).
func startReading(t *testing.T, da, cfgPath string) (cmd *exec.Cmd, out *strings.Builder, stderr *bytes.Buffer, done chan struct{}) {
	t.Helper()
	cmd = exec.Command(da, "sync", "demo", "--config", cfgPath, "--embedded")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr = &bytes.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	out = &strings.Builder{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "reading") {
			done = make(chan struct{})
			go func() {
				defer close(done)
				for sc.Scan() {
					out.WriteString(sc.Text() + "\n")
				}
			}()
			return cmd, out, stderr, done
		}
	}
	cmd.Wait()
	t.Fatalf("da sync never started reading:\n%s\n%s", out.String(), stderr.String())
	return
}

// demoConfig writes a config with a 1 M-row demo source.
func demoConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "agnes.yaml")
	cfg := "data_dir: " + filepath.Join(dir, "data") + "\nsources:\n  - name: demo\n    connector: demo\n    config: {rows: 1000000, customer_rows: 1000}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath
}

// listRuns is "da runs --json" (in-process on the config's data dir).
func listRuns(t *testing.T, da, cfgPath string) []runs.Record {
	t.Helper()
	b, err := exec.Command(da, "runs", "--config", cfgPath, "--json").Output()
	if err != nil {
		t.Fatalf("da runs: %v", err)
	}
	var recs []runs.Record
	if err := json.Unmarshal(b, &recs); err != nil {
		t.Fatalf("da runs: %v %s", err, b)
	}
	return recs
}

// syncAgain runs the next embedded sync, which must start at once and
// publish.
func syncAgain(t *testing.T, da, cfgPath string) {
	t.Helper()
	start := time.Now()
	again := exec.Command(da, "sync", "demo", "--config", cfgPath, "--embedded", "--timeout", "3m")
	if b, err := again.CombinedOutput(); err != nil || !strings.Contains(string(b), "Synced demo") {
		t.Fatalf("the next sync: %v\n%s", err, b)
	}
	t.Logf("the next sync took %s", time.Since(start).Round(time.Millisecond))
}

// TestInterruptedSync: Ctrl-C on an embedded "da sync" (a real process and
// signal) exits 130 saying the run was cancelled; the run's record says
// cancelled, and the next sync of the source runs at once instead of
// waiting for the lock to expire.
func TestInterruptedSync(t *testing.T) {
	da, _ := binaries(t)
	cfgPath := demoConfig(t)
	cmd, out, stderr, done := startReading(t, da, cfgPath)
	cmd.Process.Signal(syscall.SIGINT)
	<-done
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 130 {
		t.Fatalf("interrupted da sync: %v\n%s\n%s", err, out.String(), stderr.String())
	}
	if !strings.Contains(out.String(), "cancelled; the live extract of demo is unchanged") {
		t.Errorf("da sync did not say what happened to the run:\n%s", out.String())
	}
	if recs := listRuns(t, da, cfgPath); len(recs) != 1 || recs[0].Status != runs.Cancelled {
		t.Fatalf("da runs after the interrupt: %+v", recs)
	}
	syncAgain(t, da, cfgPath)
}

// TestKilledSync: an embedded "da sync" killed mid-read (SIGKILL: no
// chance to cancel) leaves its run running and its source locked. The next
// sync finds the run's producer gone: it records the run abandoned, takes
// the source at once (not after the lock's two minutes) and publishes.
func TestKilledSync(t *testing.T) {
	da, _ := binaries(t)
	cfgPath := demoConfig(t)
	cmd, _, _, done := startReading(t, da, cfgPath)
	cmd.Process.Kill()
	<-done
	cmd.Wait()
	recs := listRuns(t, da, cfgPath)
	if len(recs) != 1 || recs[0].Status.Terminal() || recs[0].Producer == "" {
		t.Fatalf("da runs after the kill: %+v; want one run not ended, naming its producer", recs)
	}
	killed := recs[0].RunID
	syncAgain(t, da, cfgPath)
	recs = listRuns(t, da, cfgPath)
	i := slices.IndexFunc(recs, func(r runs.Record) bool { return r.RunID == killed })
	if len(recs) != 2 || i < 0 || recs[i].Status != runs.Abandoned || recs[i].EndedAt == nil ||
		!strings.Contains(recs[i].Error, "stopped") || recs[1-i].Status != runs.Published {
		t.Fatalf("da runs after the next sync: %+v; want the killed run abandoned and the next published", recs)
	}
	t.Logf("the killed run: %s", recs[i].Error)
}
