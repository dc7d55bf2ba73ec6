// Package metrics holds the Prometheus metrics of the services and serves
// them. Steady-state numbers go here rather than to the logs.
package metrics

import (
	"maps"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry holds every metric below plus the Go and process collectors.
var Registry = prometheus.NewRegistry()

var (
	// Producer. Source labels are configured sources only (Source).
	RunsStarted  = counterVec("agnes_producer_runs_started_total", "Sync runs a producer started (attempts included), by source.", "source")
	RunsFailed   = counterVec("agnes_producer_runs_failed_total", "Sync runs that failed as a whole in a producer, by source.", "source")
	RunsRejected = counterVec("agnes_producer_runs_rejected_total", "Sync requests rejected because the source was already syncing, by source.", "source")
	TablesRead   = counterVec("agnes_producer_tables_total", "Tables read, by source and outcome.", "source", "status")
	RowsRead     = counterVec("agnes_producer_rows_total", "Rows published on the bus, by source.", "source")
	BytesSent    = counterVec("agnes_producer_bytes_total", "Arrow IPC bytes published on the bus, by source.", "source")
	BatchesSent  = counterVec("agnes_producer_batches_total", "Data messages published on the bus, by source.", "source")

	// ConnectorFallbacks counts webhooks whose issue could not be fetched
	// again, published from the event's own copy instead (by HTTP status).
	ConnectorFallbacks = counterVec("agnes_connector_refetch_fallbacks_total", "Pushed events whose entity could not be fetched again and was published from the event's own copy, by connector and status.", "connector", "status")

	// Scheduler: ticks of the schedules, by configured source and outcome
	// (queued, skipped).
	ScheduleTicks = counterVec("agnes_scheduler_ticks_total", "Schedule ticks turned into runs, by source and outcome (queued, skipped).", "source", "outcome")

	HooksProcessed = counter("agnes_producer_webhooks_processed_total", "Webhook bodies turned into data batches.")

	// Gateway.
	WebhooksReceived = counterVec("agnes_gateway_webhooks_total", "Webhook requests, by HTTP status answered.", "code")
	WebhookSeconds   = histogram("agnes_gateway_webhook_seconds", "Time from a webhook request to its durable publish.")

	// Writer.
	BatchesWritten = counterVec("agnes_writer_batches_total", "Data messages written into parts and acked, by source.", "source")
	RowsWritten    = counterVec("agnes_writer_rows_total", "Rows written into parts, by source.", "source")
	PartsWritten   = counterVec("agnes_writer_parts_total", "Parquet parts written, by source.", "source")
	WriteFailures  = counterVec("agnes_writer_write_failures_total", "Part writes that failed (batches redelivered), by source.", "source")
	DeadLetters    = counter("agnes_writer_dead_letters_total", "Batches moved to the dead-letter stream.")
	PartSeconds    = histogram("agnes_writer_part_seconds", "Time to write, sync and announce one part.")

	// Finalizer.
	ExtractsPublished = counterVec("agnes_finalizer_extracts_published_total", "Extracts published, by source.", "source")
	FinalizeFailures  = counterVec("agnes_finalizer_failures_total", "Finalizations that failed (retried or reported), by source.", "source")
	PublishSeconds    = histogram("agnes_finalizer_publish_seconds", "Time to assemble tables and swap an extract.")
	StreamPublishes   = counter("agnes_finalizer_stream_publishes_total", "Extracts published for streamed parts.")
	Compactions       = counter("agnes_finalizer_compactions_total", "Partition compactions published.")

	// Runs, from the run history (the recorder beside each finalizer): each
	// run counted once when it ends.
	RunsEnded  = counterVec("agnes_runs_total", "Runs that ended, by source and final status (published, failed, rejected, skipped, cancelled, abandoned).", "source", "status")
	RunSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "agnes_run_duration_seconds",
		Help: "Time from a run's start (or its queueing) to its end, by source.", Buckets: prometheus.ExponentialBuckets(0.25, 2, 16)}, []string{"source"})
	LastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "agnes_source_last_success_timestamp_seconds",
		Help: "When the source's newest published run ended (Unix seconds); absent until one is known."}, []string{"source"})

	// BuildInfo is 1, labelled with the version of da.
	BuildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "agnes_build_info", Help: "1, labelled with the build's version and Go version."},
		[]string{"version", "goversion"})

	// Every service: input read from the bus that did not validate and was
	// skipped (kind: event, sync_request, staged_part).
	MalformedInput = counterVec("agnes_malformed_input_total", "Messages or files that failed validation and were skipped, by kind.", "kind")
)

// Other is the source label of a source that is not configured: names read
// from the bus may be forged, and each would otherwise be a new series.
const Other = "_other"

var (
	sourcesMu sync.RWMutex
	sources   map[string]bool
)

// AddSources names configured sources, the only source labels used (a
// process has one config; tests start many).
func AddSources(names []string) {
	sourcesMu.Lock()
	defer sourcesMu.Unlock()
	if sources == nil {
		sources = map[string]bool{}
	}
	for _, n := range names {
		sources[n] = true
	}
}

// Sources are the configured sources (AddSources), sorted.
func Sources() []string {
	sourcesMu.RLock()
	defer sourcesMu.RUnlock()
	return slices.Sorted(maps.Keys(sources))
}

// Source is the label of source name: the name when it is configured,
// else Other.
func Source(name string) string {
	sourcesMu.RLock()
	defer sourcesMu.RUnlock()
	if sources[name] {
		return name
	}
	return Other
}

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		RunSeconds, LastSuccess, BuildInfo)
	BuildInfo.WithLabelValues(Version(), runtime.Version()).Set(1)
}

// Version is da's version: the module version it was built as, else the
// VCS revision it was built from, else "devel".
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}

func counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	Registry.MustRegister(c)
	return c
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	Registry.MustRegister(c)
	return c
}

func histogram(name, help string) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)})
	Registry.MustRegister(h)
	return h
}

// Handler serves the registry in the Prometheus text format.
func Handler() http.Handler {
	return promhttp.HandlerFor(Registry, promhttp.HandlerOpts{Registry: Registry})
}
