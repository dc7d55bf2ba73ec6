package tests

import (
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsCountASync: a sync moves the service counters by what it did,
// and the handler serves them in the Prometheus format.
func TestMetricsCountASync(t *testing.T) {
	rowsBefore := testutil.ToFloat64(metrics.RowsWritten)
	readBefore := testutil.ToFloat64(metrics.RowsRead)
	pubBefore := testutil.ToFloat64(metrics.ExtractsPublished)
	root := t.TempDir()
	mustSync(t, writeConfig(t, root, 12_000, 3_000), filepath.Join(root, "data"))
	if got := testutil.ToFloat64(metrics.RowsWritten) - rowsBefore; got != 15_000 {
		t.Errorf("writer rows counter moved by %v, want 15000", got)
	}
	if got := testutil.ToFloat64(metrics.RowsRead) - readBefore; got != 15_000 {
		t.Errorf("producer rows counter moved by %v, want 15000", got)
	}
	if got := testutil.ToFloat64(metrics.ExtractsPublished) - pubBefore; got != 1 {
		t.Errorf("extracts published moved by %v, want 1", got)
	}
	rec := httptest.NewRecorder()
	metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, name := range []string{"agnes_writer_rows_total", "agnes_finalizer_publish_seconds_bucket", "agnes_producer_tables_total{status=\"done\"}", "go_goroutines"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}
