package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/runs"
)

// TestInterruptedSync: Ctrl-C on an embedded "da sync" (a real process and
// signal) exits 130 saying the run was cancelled; the run's record says
// cancelled, and the next sync of the source runs at once instead of
// waiting for the lock to expire.
func TestInterruptedSync(t *testing.T) {
	da, _ := binaries(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "agnes.yaml")
	cfg := "data_dir: " + filepath.Join(dir, "data") + "\nsources:\n  - name: demo\n    connector: demo\n    config: {rows: 1000000, customer_rows: 1000}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(da, "sync", "demo", "--config", cfgPath, "--embedded")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	reading := false
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if !reading && strings.Contains(sc.Text(), "reading") {
			reading = true
			cmd.Process.Signal(syscall.SIGINT)
		}
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !reading || !errors.As(err, &exit) || exit.ExitCode() != 130 {
		t.Fatalf("interrupted da sync: %v (read started: %v)\n%s\n%s", err, reading, out.String(), stderr.String())
	}
	if !strings.Contains(out.String(), "cancelled; the live extract of demo is unchanged") {
		t.Errorf("da sync did not say what happened to the run:\n%s", out.String())
	}

	// The record says cancelled (read by da runs, in-process).
	list := exec.Command(da, "runs", "--config", cfgPath, "--json")
	b, err := list.Output()
	if err != nil {
		t.Fatalf("da runs: %v", err)
	}
	var recs []runs.Record
	if err := json.Unmarshal(b, &recs); err != nil || len(recs) != 1 || recs[0].Status != runs.Cancelled {
		t.Fatalf("da runs after the interrupt: %v %s", err, b)
	}

	// The source is free: the next sync starts at once and publishes.
	start := time.Now()
	again := exec.Command(da, "sync", "demo", "--config", cfgPath, "--embedded", "--timeout", "3m")
	if b, err := again.CombinedOutput(); err != nil || !strings.Contains(string(b), "Synced demo") {
		t.Fatalf("sync after the interrupt: %v\n%s", err, b)
	}
	t.Logf("the next sync took %s", time.Since(start).Round(time.Millisecond))
}
