package natsbus

import (
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfigs returns the JetStream streams the services need. replicas is
// 1 for a single server and 3 for a cluster. Every stream deduplicates
// publishes within 10 minutes by their message id, except the dead letters
// (a batch dead-lettered twice is two records of what happened).
func StreamConfigs(replicas int) []jetstream.StreamConfig {
	replicas = max(replicas, 1)
	stream := func(name, description, subjects string, retention jetstream.RetentionPolicy, maxAge time.Duration) jetstream.StreamConfig {
		return jetstream.StreamConfig{Name: name, Description: description, Subjects: []string{subjects}, Retention: retention,
			Storage: jetstream.FileStorage, Replicas: replicas, MaxAge: maxAge, Duplicates: 10 * time.Minute}
	}
	dlq := stream(schemas.DeadLetterStream, "Agnes batches that could not be written, with the reason", "agnes.dlq.>",
		jetstream.LimitsPolicy, 30*24*time.Hour)
	dlq.Duplicates = 0
	// The data stream takes the plain subjects and each lane's, and no
	// other: a batch on a lane no consumer reads would wait forever.
	data := stream(schemas.DataStream, "Agnes Arrow IPC batches, one subject per table and lane", schemas.PlainDataFilter,
		jetstream.WorkQueuePolicy, 0)
	for i := range schemas.DataLanes {
		data.Subjects = append(data.Subjects, schemas.LaneFilter(i))
	}
	// The schedules: one message per scheduled source or table (rolled up,
	// so the newest is the schedule) that the server fires as ticks on
	// their own subjects, the last 100 of each kept.
	sched := stream(schemas.ScheduleStream, "Agnes schedules (nats-server message schedules) and the ticks they fire", "agnes.schedules.>",
		jetstream.LimitsPolicy, 0)
	sched.AllowMsgSchedules, sched.AllowRollup, sched.MaxMsgsPerSubject = true, true, 100
	return []jetstream.StreamConfig{
		stream(schemas.SyncStream, "Agnes sync requests", "agnes.sync.*", jetstream.WorkQueuePolicy, 0),
		data,
		stream(schemas.EventStream, "Agnes run events", "agnes.events.>", jetstream.LimitsPolicy, 7*24*time.Hour),
		stream(schemas.StreamEventStream, "Agnes events of streamed (webhook) data: parts written and published", "agnes.stream.>",
			jetstream.LimitsPolicy, schemas.StreamEventRetention),
		stream(schemas.HookStream, "Agnes webhook bodies accepted by the gateway, one subject per source", "agnes.hooks.*",
			jetstream.WorkQueuePolicy, 0),
		dlq,
		sched,
		stream(schemas.AuditStream, "Agnes audit entries: API tokens created, revoked and used from a new address", "agnes.audit.*",
			jetstream.LimitsPolicy, schemas.AuditRetention),
	}
}

// BucketConfigs returns the key-value buckets the services need.
func BucketConfigs(replicas int) []jetstream.KeyValueConfig {
	replicas = max(replicas, 1)
	return []jetstream.KeyValueConfig{
		{Bucket: schemas.StateBucket, Description: "Agnes per-table state: published schema and incremental cursor",
			History: 5, Storage: jetstream.FileStorage, Replicas: replicas},
		{Bucket: schemas.LockBucket, Description: "Agnes running syncs, one key per source",
			TTL: schemas.LockTTL, Storage: jetstream.FileStorage, Replicas: replicas},
		{Bucket: schemas.RunsBucket, Description: "Agnes run history, one record per run, kept 30 days after its last change",
			TTL: schemas.RunRetention, Storage: jetstream.FileStorage, Replicas: replicas},
		{Bucket: schemas.WriterBucket, Description: "Agnes live writers, one key per writer, refreshed every second; the lanes of the data stream are shared among them",
			TTL: time.Minute, Storage: jetstream.MemoryStorage, Replicas: replicas},
		{Bucket: schemas.ProducerBucket, Description: "Agnes live producers, one key per producer, refreshed every second and gone six seconds after its last refresh",
			TTL: schemas.ProducerTTL, Storage: jetstream.MemoryStorage, Replicas: replicas},
		{Bucket: schemas.TokenBucket, Description: "Agnes API tokens, one record per token name: role, expiry, last use and the token's SHA-256",
			History: 1, Storage: jetstream.FileStorage, Replicas: replicas},
	}
}
