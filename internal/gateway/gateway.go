// Package gateway is the webhook role of "da serve": it turns signed webhook
// requests into messages on the bus and answers only after JetStream has
// acknowledged them.
//
//	POST /webhooks/{source}   a webhook for a streaming source (Jira: /webhooks/jira)
//	GET  /healthz             200 while the bus is reachable, else 503
//
// A request is checked in this order: the source streams (404), a secret is
// configured (503), the body fits (413), the body is not empty (400), the
// HMAC-SHA256 signature of the raw body matches (401), the event is well
// formed for the connector (400); then it is published (503 if the bus does
// not acknowledge) and answered 200.
package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Signature headers, in order of preference.
const (
	HeaderSignature256 = "X-Hub-Signature-256"
	HeaderSignature    = "X-Hub-Signature"
	// HeaderDeliveryID is Jira's id of one webhook delivery; a retried
	// delivery carries the same id and is stored once.
	HeaderDeliveryID = "X-Atlassian-Webhook-Identifier"
)

// PublishTimeout bounds the wait for the bus's acknowledgement.
const PublishTimeout = 10 * time.Second

// Gateway serves webhooks.
type Gateway struct {
	js       jetstream.JetStream
	cfg      *config.Config
	registry *connectors.Registry
	maxBody  int64
	log      *slog.Logger
}

// New returns a gateway; maxBody <= 0 means schemas.MaxHookBytes.
func New(js jetstream.JetStream, cfg *config.Config, registry *connectors.Registry, maxBody int64, log *slog.Logger) *Gateway {
	if maxBody <= 0 || maxBody > schemas.MaxHookBytes {
		maxBody = schemas.MaxHookBytes
	}
	if log == nil {
		log = slog.Default()
	}
	return &Gateway{js: js, cfg: cfg, registry: registry, maxBody: maxBody, log: log.With("service", "gateway")}
}

// Register adds the gateway's routes to mux.
func (g *Gateway) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /webhooks/{source}", g.webhook)
}

// Health answers 200 while the bus answers, 503 otherwise.
func (g *Gateway) Health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := g.js.Stream(ctx, schemas.HookStream); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": "the bus does not answer: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Accepted is the answer to a webhook stored on the bus.
type Accepted struct {
	Status    string `json:"status"`
	Source    string `json:"source"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

func (g *Gateway) webhook(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	source := r.PathValue("source")
	code := http.StatusOK
	reject := func(c int, format string, args ...any) {
		code = c
		msg := fmt.Sprintf(format, args...)
		g.log.Warn("webhook rejected", "source", source, "status", c, "reason", msg, "remote", r.RemoteAddr)
		writeJSON(w, c, map[string]string{"error": msg})
	}
	defer func() { metrics.WebhooksReceived.WithLabelValues(fmt.Sprint(code)).Inc() }()

	src, reg, err := g.lookup(source)
	if err != nil {
		// The caller is not authenticated yet: the reason (config path,
		// configured sources) goes to the log only.
		code = http.StatusNotFound
		g.log.Warn("webhook rejected", "source", source, "status", code, "reason", err.Error(), "remote", r.RemoteAddr)
		writeJSON(w, code, map[string]string{"error": "no webhook endpoint for this source"})
		return
	}
	if src.WebhookSecret == "" {
		reject(http.StatusServiceUnavailable, "webhooks for %s are disabled: no webhook_secret is configured for the source", source)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			reject(http.StatusRequestEntityTooLarge, "body larger than %d bytes", g.maxBody)
			return
		}
		reject(http.StatusBadRequest, "read body: %v", err)
		return
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		reject(http.StatusBadRequest, "empty body")
		return
	}
	if err := Verify(src.WebhookSecret, body, r.Header); err != nil {
		reject(http.StatusUnauthorized, "%v", err)
		return
	}
	validate := reg.ValidateEvent
	if validate == nil {
		validate = jsonObject
	}
	if err := validate(body); err != nil {
		reject(http.StatusBadRequest, "%v", err)
		return
	}
	msg := &nats.Msg{Subject: schemas.HookSubject(source), Data: body, Header: nats.Header{}}
	msg.Header.Set(schemas.HeaderSource, source)
	if id := r.Header.Get(HeaderDeliveryID); id != "" && len(id) <= 128 {
		msg.Header.Set(jetstream.MsgIDHeader, source+"."+id)
	}
	ctx, cancel := context.WithTimeout(r.Context(), PublishTimeout)
	defer cancel()
	ack, err := g.js.PublishMsg(ctx, msg)
	if err != nil {
		reject(http.StatusServiceUnavailable, "the event could not be stored on the bus, retry later: %v", err)
		return
	}
	metrics.WebhookSeconds.Observe(time.Since(start).Seconds())
	writeJSON(w, http.StatusOK, Accepted{Status: "accepted", Source: source, Seq: ack.Sequence, Duplicate: ack.Duplicate})
}

// lookup returns a source that streams and its connector registration.
func (g *Gateway) lookup(source string) (config.Source, connectors.Registration, error) {
	if err := schemas.ValidateName("source", source); err != nil {
		return config.Source{}, connectors.Registration{}, err
	}
	src, err := g.cfg.Source(source)
	if err != nil {
		return src, connectors.Registration{}, err
	}
	reg, err := g.registry.Lookup(src.Connector)
	if err != nil {
		return src, reg, err
	}
	if !reg.Manifest.Capabilities.Has(connectors.Stream) {
		return src, reg, fmt.Errorf("source %s (connector %s) does not accept webhooks: the connector does not stream", source, src.Connector)
	}
	return src, reg, nil
}

// Verify checks the body's HMAC-SHA256 signature under secret, taken from
// X-Hub-Signature-256 or else X-Hub-Signature, with or without the
// "sha256=" prefix; the comparison takes constant time.
func Verify(secret string, body []byte, h http.Header) error {
	sig := h.Get(HeaderSignature256)
	if sig == "" {
		sig = h.Get(HeaderSignature)
	}
	if sig == "" {
		return fmt.Errorf("missing signature: send the HMAC-SHA256 of the body in %s", HeaderSignature256)
	}
	if alg, rest, ok := strings.Cut(sig, "="); ok {
		if !strings.EqualFold(alg, "sha256") {
			return fmt.Errorf("unsupported signature algorithm %q: only sha256", alg)
		}
		sig = rest
	}
	got, err := hex.DecodeString(strings.TrimSpace(sig))
	if err != nil || len(got) != sha256.Size {
		return errors.New("malformed signature: want 64 hex digits")
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	if !hmac.Equal(got, m.Sum(nil)) {
		return errors.New("signature does not match the body")
	}
	return nil
}

func jsonObject(body []byte) error {
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("body is not a JSON object: %v", err)
	}
	return nil
}
