package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startBus starts a NATS server on a random port with the streams
// provisioned and returns its URL and a client; the server wants an
// identity, whose files are in store (natsbus.CredsFile).
func startBus(t *testing.T) (string, jetstream.JetStream, string) {
	t.Helper()
	return natstest.Listening(t, "127.0.0.1", -1)
}

// TestNATSCredentialsAreNotPrinted: a password in the NATS URL appears
// neither in da sync's error nor in da serve's log.
func TestNATSCredentialsAreNotPrinted(t *testing.T) {
	const pw = "s3cr3t-nats-pw"
	dir := t.TempDir()
	code, _, errs := run(t, "sync", "demo", "--data-dir", dir, "--nats-url", "nats://agnes:"+pw+"@127.0.0.1:1")
	if code == 0 || strings.Contains(errs, pw) || !strings.Contains(errs, "nats://[REDACTED]@127.0.0.1:1") {
		t.Errorf("code %d, stderr %q", code, errs)
	}
	url, _, _ := startBus(t)
	withPW := strings.Replace(url, "nats://", "nats://agnes:"+pw+"@", 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var errb natstest.LogBuffer
	go func() {
		done <- Run(ctx, []string{"serve", "--data-dir", dir, "--nats-url", withPW, "--role", "finalizer"}, &bytes.Buffer{}, &errb)
	}()
	// The bus wants an nkey identity, so the password is refused: the
	// error names the server, without the password.
	select {
	case code := <-done:
		if code == 0 || !strings.Contains(errb.String(), "Authorization Violation") {
			t.Errorf("serve with a URL password the bus refuses: exit %d\n%s", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	cancel()
	if out := errb.String(); strings.Contains(out, pw) || !strings.Contains(out, "[REDACTED]@127.0.0.1") {
		t.Errorf("serve log:\n%s", out)
	}
}

// TestDeadLettersShowControlCharacters: headers of a dead letter are
// untrusted; da dead-letters shows their escape sequences instead of
// sending them to the terminal.
func TestDeadLettersShowControlCharacters(t *testing.T) {
	url, js, store := startBus(t)
	msg := nats.NewMsg(schemas.DeadLetterSubject("demo", "orders"))
	msg.Header.Set(schemas.HeaderSource, "demo")
	msg.Header.Set(schemas.HeaderTable, "orders\x1b[2J")
	msg.Header.Set(schemas.HeaderDLQReason, "bad \x1b]0;owned\x07 batch")
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "dead-letters", "--nats-url", url, "--data-dir", t.TempDir(), "--nats-creds", natsbus.CredsFile(store, natsbus.RoleCLI))
	if code != 0 {
		t.Fatalf("code %d: %s", code, errs)
	}
	if strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `orders\x1b[2J`) || !strings.Contains(out, `bad \x1b]0;owned\a batch`) {
		t.Errorf("output %q", out)
	}
}
