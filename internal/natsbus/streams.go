package natsbus

import (
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfigs returns the JetStream streams the services need. replicas is
// 1 for a single server and 3 for a cluster.
func StreamConfigs(replicas int) []jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	return []jetstream.StreamConfig{
		{
			Name:        schemas.SyncStream,
			Description: "Agnes sync requests",
			Subjects:    []string{"agnes.sync.*"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			Duplicates:  10 * time.Minute,
		},
		{
			Name:        schemas.DataStream,
			Description: "Agnes Arrow IPC batches, one subject per table",
			Subjects:    []string{"agnes.data.*.*"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			Duplicates:  10 * time.Minute,
		},
		{
			Name:        schemas.EventStream,
			Description: "Agnes run events",
			Subjects:    []string{"agnes.events.>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			MaxAge:      7 * 24 * time.Hour,
			Duplicates:  10 * time.Minute,
		},
		{
			Name:        schemas.StreamEventStream,
			Description: "Agnes events of streamed (webhook) data: parts written and published",
			Subjects:    []string{"agnes.stream.>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			MaxAge:      schemas.StreamEventRetention,
			Duplicates:  10 * time.Minute,
		},
		{
			Name:        schemas.HookStream,
			Description: "Agnes webhook bodies accepted by the gateway, one subject per source",
			Subjects:    []string{"agnes.hooks.*"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			Duplicates:  10 * time.Minute,
		},
		{
			Name:        schemas.DeadLetterStream,
			Description: "Agnes batches that could not be written, with the reason",
			Subjects:    []string{"agnes.dlq.>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			MaxAge:      30 * 24 * time.Hour,
		},
	}
}
