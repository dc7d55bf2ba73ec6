package schemas

import (
	"errors"
	"time"
)

// LockBucket holds one key per source while a sync of it is running; its
// value is the run id. Keys expire LockTTL after their last refresh, so a
// lock left by a crashed process does not block a source for long.
const LockBucket = "AGNES_LOCKS"

// LockTTL is how long a lock lives without a refresh; holders refresh it
// every LockTTL/4.
const LockTTL = 2 * time.Minute

// ErrAlreadyRunning marks a sync request for a source whose sync is running.
var ErrAlreadyRunning = errors.New("a sync of this source is already running")

// RunsBucket keeps one record per run (internal/runs), keyed
// "<source>.<run>", for RunRetention after its last change.
const RunsBucket = "AGNES_RUNS"

// RunRetention is how long a run's record is kept after its last change.
const RunRetention = 30 * 24 * time.Hour

// ProducerBucket holds one key per live producer (memory storage), put
// every ProducerHeartbeat; a key not refreshed for ProducerTTL expires.
// A run record names the producer that runs it, so a run whose producer's
// key is gone has lost its producer (internal/runs, abandonment).
const ProducerBucket = "AGNES_PRODUCERS"

// Producer heartbeat timing.
const (
	ProducerHeartbeat = time.Second
	ProducerTTL       = 6 * ProducerHeartbeat
)
