package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/schedules"
)

const natsUsage = `usage:
  da nats config --creds-dir DIR [--role-dirs] [--out FILE] [--tls-cert F --tls-key F]
      make each role's nkey seed in DIR (kept if there) and write a nats-server
      config with one user per role and its permissions (public keys only)
  da nats provision [--config F] [--nats-url URL] [--nats-creds ADMIN_SEED]
      as admin: create the streams and buckets and apply the config's schedules
`

// runNATS runs "da nats config" and "da nats provision": what an external
// nats-server needs, the same identities and permissions an embedded one
// has (docs/security-bus.md).
func runNATS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New(natsUsage)}
	}
	switch args[0] {
	case "config":
		return runNATSConfig(args[1:], stdout, stderr)
	case "provision":
		return runNATSProvision(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, natsUsage)
		return nil
	}
	return usageError{fmt.Errorf("unknown nats command %q\n%s", args[0], natsUsage)}
}

func runNATSConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("nats config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("creds-dir", "", "folder of the seed files: <dir>/<role>.nk (0600, folder 0700); existing ones are kept")
	roleDirs := fs.Bool("role-dirs", false, "put each seed in a folder of its own, <dir>/<role>/<role>.nk, to mount one per service")
	out := fs.String("out", "-", "the nats-server config file to write (- : standard output)")
	cert := fs.String("tls-cert", "", "the server's TLS certificate file, as the server sees it (with --tls-key)")
	key := fs.String("tls-key", "", "the server's TLS key file, as the server sees it")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{errors.New("--creds-dir is required: the folder to keep the roles' seed files in")}
	}
	seed := func(role string) string { return filepath.Join(*dir, role+".nk") }
	if *roleDirs {
		seed = func(role string) string { return filepath.Join(*dir, role, role+".nk") }
	}
	pubs, err := natsbus.EnsureIdentities(seed)
	if err != nil {
		return err
	}
	conf, err := natsbus.ServerConfig(pubs, &natsbus.ServerTLS{Cert: *cert, Key: *key})
	if err != nil {
		return usageError{err}
	}
	if *out == "-" {
		_, err = stdout.Write(conf)
		return err
	}
	if err := writeFileReplace(*out, conf, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s: %d users (%s); their seeds are in %s\n", *out, len(pubs), strings.Join(natsbus.IdentityRoles, ", "), *dir)
	return nil
}

// writeFileReplace writes path through a temporary file and a rename, so
// a reader sees the old file or the new one.
func writeFileReplace(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return parquetfile.ReplaceFile(tmp.Name(), path)
}

// runNATSProvision connects to a named server as admin, creates what is
// missing and makes the schedules the config's: the step an external
// server needs before services that run with their own identities, which
// may not create streams, start.
func runNATSProvision(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("nats provision", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	cfg, err := c.load()
	if err != nil {
		return err
	}
	if cfg.NATS.URL == "" {
		return usageError{fmt.Errorf("no server named: pass --nats-url, set $%s or the config's nats.url (an embedded server provisions itself)", NATSURLEnv)}
	}
	creds, credsFrom := c.creds(cfg, natsbus.RoleAdmin)
	nc, err := natsbus.Dial(cfg.NATS.URL, "da-provision", natsbus.ClientIdentity{Creds: creds, CA: ca(cfg)})
	if err != nil {
		if creds != "" {
			err = fmt.Errorf("%w (as the identity in %s, from %s)", err, creds, credsFrom)
		}
		return err
	}
	defer nc.Close()
	js, err := natsbus.JetStream(nc, natsbus.PublishAckTimeout)
	if err != nil {
		return err
	}
	if err := natsbus.ProvisionWithRetry(ctx, js, max(cfg.NATS.Replicas, 1)); err != nil {
		return fmt.Errorf("provision %s: %w (is the identity admin's?)", redact.URL(cfg.NATS.URL), err)
	}
	ch, err := schedules.Reconcile(ctx, js, cfg, newLogger(stderr, slog.LevelWarn))
	if err != nil {
		return fmt.Errorf("schedules: %w", err)
	}
	fmt.Fprintf(stdout, "provisioned %s: streams and buckets ready; schedules added %d, changed %d, removed %d, kept %d\n",
		redact.URL(cfg.NATS.URL), len(ch.Added), len(ch.Changed), len(ch.Removed), len(ch.Kept))
	return nil
}
