package tests

import (
	"context"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/google/uuid"
)

// counted counts discoveries: a failed health check must come before any.
type counted struct{ discovered *atomic.Int32 }

func (c counted) Capabilities() connectors.Capability { return connectors.Discover | connectors.Read }
func (c counted) Discover(context.Context) ([]connectors.TableInfo, error) {
	c.discovered.Add(1)
	return []connectors.TableInfo{{Name: "t", Schema: gatedSchema}}, nil
}
func (c counted) Read(context.Context, string, connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(func(arrow.RecordBatch, error) bool) {}
}

// TestHealthCheckBeforeSync: the manifest's health check runs before the
// sync reads anything; a failing one fails the run with the status and
// nothing is discovered.
func TestHealthCheckBeforeSync(t *testing.T) {
	var healthy atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	var discovered atomic.Int32
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("tests/hc.yaml", []byte("name: hc\nversion: \"1.0.0\"\ndescription: checked\ncapabilities: [discover, read]\n"+
		"config:\n  url: {type: string, required: true}\nhealth_check:\n  endpoint: \"${url}/health\"\n"),
		func(connectors.Config) (connectors.Connector, error) { return counted{&discovered}, nil })
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "hc", Connector: "hc", Config: map[string]any{"url": srv.URL}}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: reg, DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "hc", RequestedAt: time.Now().UTC()}, nil)
	if err == nil || !strings.Contains(err.Error(), "health check failed") || !strings.Contains(err.Error(), "503") {
		t.Fatalf("got %v, want the run failed by the health check naming the 503", err)
	}
	if n := discovered.Load(); n != 0 {
		t.Errorf("the source was discovered %d times despite the failed check", n)
	}
	healthy.Store(true)
	syncSource(t, st, "hc")
	if discovered.Load() != 1 {
		t.Error("a healthy source was not synced")
	}
}
