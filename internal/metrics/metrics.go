// Package metrics holds the Prometheus metrics of the services and serves
// them. Steady-state numbers go here rather than to the logs.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry holds every metric below plus the Go and process collectors.
var Registry = prometheus.NewRegistry()

var (
	// Producer.
	RunsStarted  = counter("agnes_producer_runs_started_total", "Sync runs a producer started (attempts included).")
	RunsFailed   = counter("agnes_producer_runs_failed_total", "Sync runs that failed as a whole in a producer.")
	RunsRejected = counter("agnes_producer_runs_rejected_total", "Sync requests rejected because the source was already syncing.")
	TablesRead   = counterVec("agnes_producer_tables_total", "Tables read, by outcome.", "status")
	RowsRead     = counter("agnes_producer_rows_total", "Rows published on the bus.")
	BatchesSent  = counter("agnes_producer_batches_total", "Data messages published on the bus.")

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
	BatchesWritten = counter("agnes_writer_batches_total", "Data messages written into parts and acked.")
	RowsWritten    = counter("agnes_writer_rows_total", "Rows written into parts.")
	PartsWritten   = counter("agnes_writer_parts_total", "Parquet parts written.")
	WriteFailures  = counter("agnes_writer_write_failures_total", "Part writes that failed (batches redelivered).")
	DeadLetters    = counter("agnes_writer_dead_letters_total", "Batches moved to the dead-letter stream.")
	PartSeconds    = histogram("agnes_writer_part_seconds", "Time to write, sync and announce one part.")

	// Finalizer.
	ExtractsPublished = counter("agnes_finalizer_extracts_published_total", "Extracts published.")
	FinalizeFailures  = counter("agnes_finalizer_failures_total", "Finalizations that failed (retried or reported).")
	PublishSeconds    = histogram("agnes_finalizer_publish_seconds", "Time to assemble tables and swap an extract.")
	StreamPublishes   = counter("agnes_finalizer_stream_publishes_total", "Extracts published for streamed parts.")
	Compactions       = counter("agnes_finalizer_compactions_total", "Partition compactions published.")

	// Every service: input read from the bus that did not validate and was
	// skipped (kind: event, sync_request, staged_part).
	MalformedInput = counterVec("agnes_malformed_input_total", "Messages or files that failed validation and were skipped, by kind.", "kind")
)

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
