package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agnes-ai/connector-kit/internal/cli"
)

// TestConnectorNewScaffold generates connectors with "da connector new" into
// a fresh module that depends on this one, then builds them and runs their
// generated contract tests with the go tool.
func TestConnectorNewScaffold(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a separate module")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	gomod := "module example.com/myconnectors\n\ngo 1.26\n\nrequire github.com/agnes-ai/connector-kit v0.0.0\n\nreplace github.com/agnes-ai/connector-kit => " + root + "\n"
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(mod, "go.sum"), sum, 0o644)

	cases := map[string]string{
		"hubspot": "discover,read",
		"lake":    "discover,read,stream,remote,write",
		"plain":   "read",
	}
	for name, caps := range cases {
		var out, errb bytes.Buffer
		code := cli.Run(context.Background(), []string{"connector", "new", name, "--caps", caps, "--dir", filepath.Join(mod, "connectors")}, &out, &errb)
		if code != 0 {
			t.Fatalf("da connector new %s: exit %d: %s", name, code, errb.String())
		}
		if !strings.Contains(out.String(), "builtin.go") {
			t.Errorf("the output does not say how to register the connector:\n%s", out.String())
		}
		for _, f := range []string{"connector.yaml", name + ".go", name + "_test.go"} {
			if _, err := os.Stat(filepath.Join(mod, "connectors", name, f)); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
	}
	// A second scaffold over an existing folder is refused.
	var errb bytes.Buffer
	if code := cli.Run(context.Background(), []string{"connector", "new", "hubspot", "--dir", filepath.Join(mod, "connectors")}, &bytes.Buffer{}, &errb); code == 0 || !strings.Contains(errb.String(), "already exists") {
		t.Errorf("overwrote an existing connector: %d %s", code, errb.String())
	}
	if code := cli.Run(context.Background(), []string{"connector", "new", "Bad-Name"}, &bytes.Buffer{}, &errb); code != 2 {
		t.Errorf("a bad name was accepted: %d", code)
	}

	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		t.Logf("go %s:\n%s", strings.Join(args, " "), b)
	}
	run("vet", "./...")
	run("test", "-count=1", "./...")
}
