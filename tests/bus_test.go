package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/cli"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// cliCreds is the CLI's identity file of the embedded server of a stack
// whose data dir is dir.
func cliCreds(dir string) string {
	return natsbus.CredsFile(filepath.Join(dir, ".nats"), natsbus.RoleCLI)
}

// stranger is a NATS server that happens to listen on the default port,
// with the streams provisioned: what "da sync" used to send its request to.
func stranger(t *testing.T) (jetstream.JetStream, string, string) {
	t.Helper()
	url, js, store := natstest.Listening(t, "127.0.0.1", 4222)
	return js, url, natsbus.CredsFile(store, natsbus.RoleCLI)
}

// streamMsgs counts the messages in stream on js's bus.
func streamMsgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestNoSurpriseServers: with no server named, "da sync" runs in-process
// even while a stranger listens on 127.0.0.1:4222; a named server (flag or
// DA_NATS_URL) is used and named in the output, and a request it cannot
// run (no producer, or a source it does not run) fails before anything is
// published, naming the server.
func TestNoSurpriseServers(t *testing.T) {
	t.Setenv("NATS_URL", "")
	t.Setenv(cli.NATSURLEnv, "")
	js, url, creds := stranger(t)
	root := t.TempDir()
	cfg := writeConfig(t, root, 2000, 100)
	dataDir := filepath.Join(root, "data")
	run := func(args ...string) (int, string) {
		var o, e bytes.Buffer
		code := cli.Run(context.Background(), append([]string{"sync", "demo", "--config", cfg, "--data-dir", dataDir}, args...), &o, &e)
		return code, o.String() + e.String()
	}
	if code, out := run(); code != 0 || !strings.Contains(out, "in-process embedded NATS (no server named") {
		t.Errorf("da sync with no server named: exit %d, and did it say it ran in-process?\n%s", code, out)
	}
	if n := streamMsgs(t, js, schemas.SyncStream); n != 0 {
		t.Fatalf("the stranger on 4222 got %d sync requests", n)
	}

	defer func(w time.Duration) { cli.ProducerWait = w }(cli.ProducerWait)
	cli.ProducerWait = time.Second
	// Named by the flag: no producer runs there.
	code, msg := run("--nats-url", url, "--nats-creds", creds)
	if code != 1 || !strings.Contains(msg, "no producer is running on the server at "+url+" (from --nats-url, as the identity in "+creds+")") {
		t.Errorf("da sync against a server with no producer: exit %d\n%s", code, msg)
	}
	// Named by DA_NATS_URL: its producer runs other sources.
	live, err := runs.OpenLiveness(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go live.Beat(ctx, "elsewhere.00000001", []string{"crm", "erp"}, nil)
	natstest.Poll(t, 10*time.Second, func() (bool, string) {
		ps, err := live.Producers(context.Background())
		return err == nil && len(ps) == 1, "the stranger's producer has not beaten yet"
	})
	t.Setenv(cli.NATSURLEnv, url)
	t.Setenv(cli.NATSCredsEnv, creds)
	code, msg = run()
	if code != 1 || !regexp.MustCompile(`source demo is not configured on the server at \S+ \(from \$DA_NATS_URL, as the identity in \S+\) \(its producers run: crm, erp\)`).MatchString(msg) {
		t.Errorf("da sync of a source the server does not run: exit %d\n%s", code, msg)
	}
	if n := streamMsgs(t, js, schemas.SyncStream); n != 0 {
		t.Errorf("the refused syncs published %d requests", n)
	}
}

// TestStoreHeldByOneProcess: a second embedded server on a data dir whose
// store a running "da serve" holds is refused, naming the URL to use
// instead; two servers on one store would corrupt it.
func TestStoreHeldByOneProcess(t *testing.T) {
	t.Setenv("NATS_URL", "")
	t.Setenv(cli.NATSURLEnv, "")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var errb natstest.LogBuffer
	go func() {
		done <- cli.Run(ctx, []string{"serve", "--data-dir", dir, "--nats-listen", "127.0.0.1:-1", "--role", "none"}, &bytes.Buffer{}, &errb)
	}()
	defer func() { cancel(); <-done }()
	natstest.Poll(t, 20*time.Second, func() (bool, string) {
		return strings.Contains(errb.String(), "da serving"), "serve did not start: " + errb.String()
	})
	var o, e bytes.Buffer
	code := cli.Run(context.Background(), []string{"runs", "--data-dir", dir}, &o, &e)
	if code != 1 || !regexp.MustCompile(`in use by another da process: da \(pid \d+\) serves it at nats://127\.0\.0\.1:\d+; pass --nats-url nats://127\.0\.0\.1:\d+`).MatchString(e.String()) {
		t.Errorf("da runs beside a da serve on the same data dir: exit %d\n%s%s", code, o.String(), e.String())
	}
}

// busOnly starts the embedded server of data dir dir listening on a port,
// with no service: the streams provisioned by its admin identity.
func busOnly(t *testing.T, dir string) *stack.Stack {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = dir
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir,
		ListenHost: "127.0.0.1", ListenPort: -1, Roles: []string{stack.RoleNone}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })
	return st
}

// TestAnonymousRefused: an embedded server that listens on a port refuses
// anonymous clients and unknown identities, and takes each role's identity
// from the 0600 files it made in the data dir.
func TestAnonymousRefused(t *testing.T) {
	dir := t.TempDir()
	st := busOnly(t, dir)
	url := st.Server.ClientURL()
	if nc, err := nats.Connect(url); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("anonymous client: %v, want an authorization violation", err)
		if nc != nil {
			nc.Close()
		}
	}
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	stranger := filepath.Join(t.TempDir(), "stranger.nk")
	os.WriteFile(stranger, seed, 0o600)
	opt, err := natsbus.CredsOption(stranger)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, opt); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("an unknown identity: %v, want an authorization violation", err)
		if nc != nil {
			nc.Close()
		}
	}
	store := filepath.Join(dir, ".nats")
	if fi, err := os.Stat(filepath.Join(store, "creds")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("credentials folder: %v %v, want mode 700", fi.Mode(), err)
	}
	for _, role := range natsbus.IdentityRoles {
		path := natsbus.CredsFile(store, role)
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, want mode 600", path, err)
			continue
		}
		opt, err := natsbus.CredsOption(path)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(url, opt)
		if err != nil {
			t.Errorf("%s's identity refused: %v", role, err)
			continue
		}
		nc.Close()
	}
	// A seed file others can read is refused before it is used.
	os.Chmod(stranger, 0o644)
	if _, err := natsbus.CredsOption(stranger); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable seed file: %v", err)
	}
	// The CLI finds its identity in the data dir it shares with the server.
	var o, e bytes.Buffer
	if code := cli.Run(context.Background(), []string{"runs", "--nats-url", url, "--data-dir", dir}, &o, &e); code != 0 {
		t.Errorf("da runs with the data dir's identity: %d %s", code, e.String())
	}
	if code := cli.Run(context.Background(), []string{"runs", "--nats-url", url, "--data-dir", t.TempDir()}, &o, &e); code != 1 ||
		!strings.Contains(e.String(), "pass --nats-creds FILE or set $DA_NATS_CREDS") {
		t.Errorf("da runs without an identity: %d %s", code, e.String())
	}
}

// TestRolePermissions: each role's identity may use its own subjects and
// is refused outside them (the server reports a permissions violation and
// nothing reaches the stream): a writer cannot ask for a sync, the gateway
// cannot read data, the CLI cannot publish data.
func TestRolePermissions(t *testing.T) {
	dir := t.TempDir()
	st := busOnly(t, dir)
	checkRolePermissions(t, st.Server.ClientURL(), st.JS, func(role string) string { return natsbus.CredsFile(filepath.Join(dir, ".nats"), role) })
}

// TestExternalServerPermissions: a nats-server process run with the config
// "da nats config" makes refuses anonymous clients and enforces the same
// permissions, role by role; services and "da sync" with their own
// identities publish an extract through it.
func TestExternalServerPermissions(t *testing.T) {
	e := newProcEnv(t, 1, 10, 10)
	if nc, err := nats.Connect(e.url); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("anonymous client of the external server: %v, want an authorization violation", err)
		if nc != nil {
			nc.Close()
		}
	}
	checkRolePermissions(t, e.url, e.js, e.credsFile)
	// The compose shape: each service with its own identity, "da sync"
	// with the CLI's.
	e.serveAll(1)
	t.Setenv(cli.NATSCredsEnv, e.credsFile(natsbus.RoleCLI))
	var o, eb bytes.Buffer
	if code := cli.Run(context.Background(), []string{"sync", "demo", "--config", e.cfgPath}, &o, &eb); code != 0 ||
		!strings.Contains(o.String(), "as the identity in "+e.credsFile(natsbus.RoleCLI)) {
		t.Fatalf("da sync as the CLI identity: %d\n%s\n%s", code, o.String(), eb.String())
	}
	e.verifyPublished()
}

// checkRolePermissions checks each role's identity (its seed file is
// creds(role)) against the server at url; admin is the server's admin.
func checkRolePermissions(t *testing.T, url string, admin jetstream.JetStream, creds func(role string) string) {
	as := func(role string) (jetstream.JetStream, <-chan error) {
		opt, err := natsbus.CredsOption(creds(role))
		if err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 16)
		nc, err := nats.Connect(url, opt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return js, errs
	}
	refused := func(role, what string, errs <-chan error, op func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := op(ctx); err == nil {
			t.Errorf("%s could %s", role, what)
			return
		}
		select {
		case err := <-errs:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Errorf("%s %s: %v, want a permissions violation", role, what, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s %s: no permissions violation reported", role, what)
		}
	}
	allowed := func(role, what string, op func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := op(ctx); err != nil {
			t.Errorf("%s could not %s: %v", role, what, err)
		}
	}
	publish := func(js jetstream.JetStream, subject string) func(context.Context) error {
		return func(ctx context.Context) error { _, err := js.Publish(ctx, subject, []byte("{}")); return err }
	}
	readData := func(js jetstream.JetStream) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := js.CreateConsumer(ctx, schemas.DataStream, jetstream.ConsumerConfig{FilterSubject: "agnes.data.>"})
			return err
		}
	}

	writer, werrs := as(natsbus.RoleWriter)
	refused("writer", "publish a sync request", werrs, publish(writer, schemas.SyncSubject("demo")))
	allowed("writer", "read data", readData(writer))

	gateway, gerrs := as(natsbus.RoleGateway)
	refused("gateway", "read data", gerrs, readData(gateway))
	refused("gateway", "publish a sync request", gerrs, publish(gateway, schemas.SyncSubject("demo")))
	allowed("gateway", "publish a webhook", publish(gateway, schemas.HookSubject("demo")))

	cliJS, cerrs := as(natsbus.RoleCLI)
	refused("cli", "publish data", cerrs, publish(cliJS, schemas.DataSubject("demo", "orders")))
	refused("cli", "read data", cerrs, readData(cliJS))
	allowed("cli", "publish a sync request", publish(cliJS, schemas.SyncSubject("demo")))

	api, aerrs := as(natsbus.RoleAPI)
	refused("api", "publish data", aerrs, publish(api, schemas.DataSubject("demo", "orders")))
	refused("api", "read data", aerrs, readData(api))
	allowed("api", "write a token record", func(ctx context.Context) error {
		kv, err := api.KeyValue(ctx, schemas.TokenBucket)
		if err == nil {
			_, err = kv.Put(ctx, "probe", []byte("{}"))
		}
		return err
	})
	refused("cli", "write a token record", cerrs, func(ctx context.Context) error {
		_, err := cliJS.Publish(ctx, "$KV."+schemas.TokenBucket+".probe", []byte("{}"))
		return err
	})

	producer, perrs := as(natsbus.RoleProducer)
	refused("producer", "publish a webhook", perrs, publish(producer, schemas.HookSubject("demo")))
	finalizer, ferrs := as(natsbus.RoleFinalizer)
	refused("finalizer", "publish data", ferrs, publish(finalizer, schemas.DataSubject("demo", "orders")))

	if n := streamMsgs(t, admin, schemas.DataStream); n != 0 {
		t.Errorf("%d data messages got through", n)
	}
	if n := streamMsgs(t, admin, schemas.SyncStream); n != 1 {
		t.Errorf("%d sync requests stored, want the CLI's one", n)
	}
}

// TestCLIIdentityRunsTheCLI: with only the CLI's identity, every CLI
// command works against a da serve that listens: sync (request, events,
// record), runs, status, cancel and dead letters.
func TestCLIIdentityRunsTheCLI(t *testing.T) {
	t.Setenv("NATS_URL", "")
	t.Setenv(cli.NATSURLEnv, "")
	t.Setenv(cli.NATSCredsEnv, "")
	root := t.TempDir()
	cfgPath := writeConfig(t, root, 3000, 100)
	dir := filepath.Join(root, "data")
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = dir
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir,
		ListenHost: "127.0.0.1", ListenPort: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	creds := cliCreds(dir)
	run := func(args ...string) (int, string) {
		var o, e bytes.Buffer
		code := cli.Run(context.Background(), append(args, "--config", cfgPath, "--nats-url", st.Server.ClientURL(), "--nats-creds", creds), &o, &e)
		return code, o.String() + e.String()
	}
	code, out := run("sync", "demo")
	if code != 0 || !strings.Contains(out, "Synced demo") || !strings.Contains(out, "as the identity in "+creds) {
		t.Fatalf("da sync as the CLI: %d\n%s", code, out)
	}
	id := regexp.MustCompile(`run ([0-9a-f-]{36})`).FindStringSubmatch(out)
	for _, args := range [][]string{{"runs"}, {"status"}, {"dead-letters"}} {
		if code, out := run(args...); code != 0 {
			t.Errorf("da %s as the CLI: %d\n%s", args[0], code, out)
		}
	}
	if code, out := run("cancel", id[1]); code != 1 || !strings.Contains(out, "already ended") {
		t.Errorf("da cancel of an ended run as the CLI: %d\n%s", code, out)
	}
}

// TestServiceWaitsForProvision: a service whose identity may not make
// streams, started before they are made, says what is missing and how to
// make it, and starts once "da nats provision" has run.
func TestServiceWaitsForProvision(t *testing.T) {
	e := newProcEnv(t, 1, 10, 10)
	if err := e.js.DeleteStream(context.Background(), schemas.DataStream); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	w := e.serve("w1", "writer", "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", port))
	natstest.Poll(t, time.Minute, func() (bool, string) {
		return strings.Contains(w.output(), `waiting for the streams to be made: run \"da nats provision\" as admin`) &&
			strings.Contains(w.output(), schemas.DataStream), "the writer has not said it waits for " + schemas.DataStream
	})
	e.provision()
	natstest.Poll(t, time.Minute, func() (bool, string) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	if strings.Contains(w.output(), "service stopped with error") {
		t.Errorf("the writer failed instead of waiting:\n%s", w.output())
	}
}
