package gateway

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
)

func TestVerify(t *testing.T) {
	body := []byte(`{"webhookEvent":"jira:issue_updated","issue":{"key":"OPS-1"}}`)
	m := hmac.New(sha256.New, []byte("s3cret"))
	m.Write(body)
	sig := hex.EncodeToString(m.Sum(nil))
	ok := []http.Header{
		{HeaderSignature256: {"sha256=" + sig}},
		{HeaderSignature256: {sig}},
		{HeaderSignature256: {"SHA256=" + strings.ToUpper(sig)}},
		{HeaderSignature: {"sha256=" + sig}},
	}
	for _, h := range ok {
		if err := Verify("s3cret", body, h); err != nil {
			t.Errorf("%v: %v", h, err)
		}
	}
	bad := map[string]http.Header{
		"missing signature":   {},
		"does not match":      {HeaderSignature256: {"sha256=" + strings.Repeat("0", 64)}},
		"malformed signature": {HeaderSignature256: {"sha256=" + sig[:10]}},
		"only sha256":         {HeaderSignature: {"sha1=" + sig[:40]}},
	}
	for want, h := range bad {
		if err := Verify("s3cret", body, h); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: want %q, got %v", h, want, err)
		}
	}
	// The 256 header wins over the legacy one.
	if err := Verify("s3cret", body, http.Header{HeaderSignature256: {"sha256=" + strings.Repeat("0", 64)}, HeaderSignature: {"sha256=" + sig}}); err == nil {
		t.Error("a wrong X-Hub-Signature-256 was overridden by X-Hub-Signature")
	}
	// Another secret, or a changed body, fails.
	if Verify("other", body, ok[0]) == nil || Verify("s3cret", append(body, ' '), ok[0]) == nil {
		t.Error("signature accepted for another secret or body")
	}
}

// When the bus does not store the body the webhook is answered 503, so
// the sender retries; nothing is acknowledged that was not stored.
func TestBusFailureAnswers503(t *testing.T) {
	js := natstest.MustStart(t)
	if err := js.DeleteStream(context.Background(), schemas.HookStream); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("test.yaml", []byte("sources:\n  - name: jira\n    connector: jira\n    webhook_secret: s3cret\n    config: {url: http://jira.invalid, email: a@b.c}\n"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	g := New(js, cfg, builtin.Registry(), 0, slog.New(slog.DiscardHandler))
	g.Register(mux)
	mux.HandleFunc("GET /healthz", g.Health)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	body := []byte(`{"webhookEvent":"jira:issue_updated","issue":{"key":"OPS-1"}}`)
	m := hmac.New(sha256.New, []byte("s3cret"))
	m.Write(body)
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/webhooks/jira", bytes.NewReader(body))
	req.Header.Set(HeaderSignature256, "sha256="+hex.EncodeToString(m.Sum(nil)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(out), "retry later") {
		t.Fatalf("answered %d %s, want 503 asking to retry", resp.StatusCode, out)
	}
	resp, err = http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("healthz answered %d without the hook stream, want 503", resp.StatusCode)
	}
}
