package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNATSConfigCommand: "da nats config" makes the roles' seeds once and
// keeps them (a second run writes the same users), writes the config with
// public keys only, and says what is wrong with bad flags.
func TestNATSConfigCommand(t *testing.T) {
	dir := t.TempDir()
	creds, out := filepath.Join(dir, "creds"), filepath.Join(dir, "nats.conf")
	if code, _, errs := run(t, "nats", "config", "--creds-dir", creds, "--out", out); code != 0 || !strings.Contains(errs, "wrote "+out) {
		t.Fatalf("nats config: %d %s", code, errs)
	}
	first, _ := os.ReadFile(out)
	seed, err := os.ReadFile(filepath.Join(creds, "writer.nk"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(first), strings.TrimSpace(string(seed))) || !strings.Contains(string(first), `"nkey": "U`) {
		t.Errorf("the config must hold public keys only:\n%s", first)
	}
	code, stdout, _ := run(t, "nats", "config", "--creds-dir", creds)
	if code != 0 || stdout != string(first) {
		t.Errorf("a second run changed the users (code %d):\n%s", code, stdout)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"nats", "config"}, "--creds-dir is required"},
		{[]string{"nats", "config", "--creds-dir", creds, "--tls-cert", "c.pem"}, "both a certificate and a key"},
		{[]string{"nats", "frob"}, `unknown nats command "frob"`},
		{[]string{"nats"}, "da nats provision"},
		{[]string{"nats", "provision", "--data-dir", dir}, "no server named"},
	} {
		t.Setenv("NATS_URL", "")
		t.Setenv(NATSURLEnv, "")
		if code, _, errs := run(t, c.args...); code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("%v: code %d, stderr %q, want 2 and %q", c.args, code, errs, c.want)
		}
	}
}
