package natsbus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ServerTLS are the certificate and key files a nats-server presents to
// clients.
type ServerTLS struct {
	Cert, Key string
}

// ServerConfig renders the authorization (and TLS) part of a nats-server
// config for an external server: one nkey user per role, with the same
// permissions an embedded server gives it (Permissions). pubs holds each
// role's public key (EnsureIdentities). It is JSON, which the nats-server
// config format accepts, so every subject stays a literal string. Run the
// server with it and its own flags: nats-server -c FILE --jetstream ...
func ServerConfig(pubs map[string]string, tls *ServerTLS) ([]byte, error) {
	type user struct {
		Nkey        string `json:"nkey"`
		Permissions any    `json:"permissions,omitempty"`
	}
	var users []user
	for _, role := range IdentityRoles {
		pub := pubs[role]
		if !strings.HasPrefix(pub, "U") {
			return nil, fmt.Errorf("nats server config: no public user key for role %s", role)
		}
		u := user{Nkey: pub}
		if p := Permissions(role); p != nil {
			u.Permissions = p
		}
		users = append(users, u)
	}
	conf := map[string]any{"authorization": map[string]any{"users": users}}
	if tls != nil && (tls.Cert != "" || tls.Key != "") {
		if tls.Cert == "" || tls.Key == "" {
			return nil, fmt.Errorf("nats server config: TLS needs both a certificate and a key")
		}
		conf["tls"] = map[string]any{"cert_file": tls.Cert, "key_file": tls.Key, "timeout": 2}
	}
	// No HTML escaping: a subject's ">" stays ">" for the reader.
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(conf); err != nil {
		return nil, err
	}
	var out strings.Builder
	out.WriteString("# NATS server config made by \"da nats config\": one nkey user per Agnes role,\n")
	out.WriteString("# each allowed only its own subjects (docs/security-bus.md). It holds public\n")
	out.WriteString("# keys only; the seeds stay with the clients. Use: nats-server -c <this file>\n")
	out.WriteString("# --jetstream --store_dir <dir> (flags add to it).\n")
	for _, role := range IdentityRoles {
		fmt.Fprintf(&out, "# %-9s %s\n", role, pubs[role])
	}
	out.Write(b.Bytes())
	return []byte(out.String()), nil
}

// ProvisionedStreams are the streams (buckets as KV_<bucket>) role's
// identity may ask about: those it needs made before it starts. Admin,
// which makes them, needs all.
func ProvisionedStreams(role string) []string {
	var names []string
	p := Permissions(role)
	if p == nil {
		for _, c := range StreamConfigs(1) {
			names = append(names, c.Name)
		}
		for _, b := range BucketConfigs(1) {
			names = append(names, "KV_"+b.Bucket)
		}
		return names
	}
	for _, subj := range p.Publish.Allow {
		if name, ok := strings.CutPrefix(subj, "$JS.API.STREAM.INFO."); ok && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// WaitProvisioned waits until every stream role uses exists, for a
// service whose identity may not make them: it says once, at WARN, which
// is missing and how to make it, then checks every second until ctx ends.
func WaitProvisioned(ctx context.Context, js jetstream.JetStream, role string, log *slog.Logger) error {
	warned := false
	for {
		missing := ""
		for _, name := range ProvisionedStreams(role) {
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := js.Stream(actx, name)
			cancel()
			if err != nil {
				missing = fmt.Sprintf("%s (%v)", name, err)
				break
			}
		}
		if missing == "" {
			if warned {
				log.Info("the streams are there; starting")
			}
			return nil
		}
		if !warned {
			log.Warn("waiting for the streams to be made: run \"da nats provision\" as admin (or start the server's own da serve)",
				"identity", role, "missing", missing)
			warned = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for stream %s to be provisioned: %w", missing, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
