package tests

import (
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsCountASync: a sync moves the service counters by what it did,
// and the handler serves them in the Prometheus format.
func TestMetricsCountASync(t *testing.T) {
	demo := func(c *prometheus.CounterVec, labels ...string) float64 {
		return testutil.ToFloat64(c.WithLabelValues(append([]string{"demo"}, labels...)...))
	}
	rowsBefore, readBefore, pubBefore := demo(metrics.RowsWritten), demo(metrics.RowsRead), demo(metrics.ExtractsPublished)
	endedBefore, bytesBefore := demo(metrics.RunsEnded, "published"), demo(metrics.BytesSent)
	start := time.Now()
	root := t.TempDir()
	mustSync(t, writeConfig(t, root, 12_000, 3_000), filepath.Join(root, "data"))
	if got := demo(metrics.RowsWritten) - rowsBefore; got != 15_000 {
		t.Errorf("writer rows counter moved by %v, want 15000", got)
	}
	if got := demo(metrics.RowsRead) - readBefore; got != 15_000 {
		t.Errorf("producer rows counter moved by %v, want 15000", got)
	}
	if got := demo(metrics.ExtractsPublished) - pubBefore; got != 1 {
		t.Errorf("extracts published moved by %v, want 1", got)
	}
	if got := demo(metrics.RunsEnded, "published") - endedBefore; got != 1 {
		t.Errorf("agnes_runs_total{source=demo,status=published} moved by %v, want 1", got)
	}
	if got := demo(metrics.BytesSent) - bytesBefore; got <= 0 {
		t.Errorf("producer bytes moved by %v", got)
	}
	if last := testutil.ToFloat64(metrics.LastSuccess.WithLabelValues("demo")); last < float64(start.Unix()) || last > float64(time.Now().Unix()+1) {
		t.Errorf("last success %v, want between %d and now", last, start.Unix())
	}
	rec := httptest.NewRecorder()
	metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, name := range []string{`agnes_writer_rows_total{source="demo"}`, "agnes_finalizer_publish_seconds_bucket",
		`agnes_producer_tables_total{source="demo",status="done"}`, `agnes_run_duration_seconds_count{source="demo"}`,
		`agnes_source_last_success_timestamp_seconds{source="demo"}`, `agnes_build_info{goversion="go`, "go_goroutines"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestMetricsSourceLabelsBounded: a source name read from the bus that is
// not configured (forged) is labelled _other, not given a series of its own.
func TestMetricsSourceLabelsBounded(t *testing.T) {
	metrics.AddSources([]string{"crm"})
	if got := metrics.Source("crm"); got != "crm" {
		t.Errorf("configured source labelled %q", got)
	}
	if got := metrics.Source("forged_source_9f2"); got != metrics.Other {
		t.Errorf("unconfigured source labelled %q, want %q", got, metrics.Other)
	}
}
