package schemas

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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

// AcquireRun takes the source's lock for run. It succeeds when the lock is
// free or already held by the same run (a retried attempt); otherwise it
// returns ErrAlreadyRunning naming the running run.
func AcquireRun(ctx context.Context, kv jetstream.KeyValue, source, run string) error {
	_, err := kv.Create(ctx, source, []byte(run))
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("lock source %s: %w", source, err)
	}
	e, err := kv.Get(ctx, source)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return AcquireRun(ctx, kv, source, run) // released in between
	}
	if err != nil {
		return fmt.Errorf("lock source %s: %w", source, err)
	}
	if string(e.Value()) == run {
		return nil
	}
	return fmt.Errorf("%w: source %s, run %s", ErrAlreadyRunning, source, e.Value())
}

// RefreshRun renews the lock of run; it does nothing if another run holds it.
func RefreshRun(ctx context.Context, kv jetstream.KeyValue, source, run string) error {
	e, err := kv.Get(ctx, source)
	if err != nil || string(e.Value()) != run {
		return err
	}
	_, err = kv.Update(ctx, source, []byte(run), e.Revision())
	return err
}

// ReleaseRun frees the source's lock if run holds it.
func ReleaseRun(ctx context.Context, kv jetstream.KeyValue, source, run string) error {
	e, err := kv.Get(ctx, source)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unlock source %s: %w", source, err)
	}
	if string(e.Value()) != run {
		return nil
	}
	if err := kv.Delete(ctx, source, jetstream.LastRevision(e.Revision())); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("unlock source %s: %w", source, err)
	}
	return nil
}
