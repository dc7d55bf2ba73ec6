package natsbus

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestServerConfigParses: the config made for an external nats-server
// parses with the server's own parser into exactly the users and
// permissions an embedded server gives each role.
func TestServerConfigParses(t *testing.T) {
	dir := t.TempDir()
	pubs, err := EnsureIdentities(func(role string) string { return filepath.Join(dir, "creds", role, role+".nk") })
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range IdentityRoles {
		st, err := os.Stat(filepath.Join(dir, "creds", role, role+".nk"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s seed: %v %v", role, err, st)
		}
	}
	conf, err := ServerConfig(pubs, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "nats.conf")
	os.WriteFile(path, conf, 0o644)
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server cannot parse the config: %v\n%s", err, conf)
	}
	if len(opts.Nkeys) != len(IdentityRoles) {
		t.Fatalf("%d nkey users, want %d", len(opts.Nkeys), len(IdentityRoles))
	}
	for _, u := range opts.Nkeys {
		var role string
		for r, pub := range pubs {
			if pub == u.Nkey {
				role = r
			}
		}
		if role == "" {
			t.Fatalf("user %s is no role's", u.Nkey)
		}
		want := Permissions(role)
		if want == nil {
			if u.Permissions != nil {
				t.Errorf("admin has permissions %+v, want none (everything)", u.Permissions)
			}
			continue
		}
		if u.Permissions == nil || !reflect.DeepEqual(u.Permissions.Publish.Allow, want.Publish.Allow) ||
			!reflect.DeepEqual(u.Permissions.Subscribe.Allow, want.Subscribe.Allow) {
			t.Errorf("%s: permissions %+v, want %+v", role, u.Permissions, want)
		}
		if role == RoleWriter && slices.Contains(u.Permissions.Publish.Allow, "agnes.sync.>") {
			t.Errorf("writer may ask for syncs")
		}
	}
	// TLS: the files are named for the server (which loads them at start).
	withTLS, err := ServerConfig(pubs, &ServerTLS{Cert: "/etc/nats/cert.pem", Key: "/etc/nats/key.pem"})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(withTLS), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	var parsed struct {
		TLS struct {
			Cert string `json:"cert_file"`
			Key  string `json:"key_file"`
		} `json:"tls"`
	}
	if err := json.Unmarshal([]byte(strings.Join(lines, "\n")), &parsed); err != nil || parsed.TLS.Cert != "/etc/nats/cert.pem" || parsed.TLS.Key != "/etc/nats/key.pem" {
		t.Errorf("TLS block %+v (%v):\n%s", parsed, err, withTLS)
	}
	// A missing key is refused, not silently plain-text.
	if _, err := ServerConfig(pubs, &ServerTLS{Cert: "c.pem"}); err == nil {
		t.Error("a certificate without a key was accepted")
	}
}
