package natsbus_test

import (
	"context"
	"testing"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// racingKV releases the lock itself just before the caller's delete, as
// the finalizer does while a producer takes a dead run's lock over.
type racingKV struct {
	jetstream.KeyValue
	raced bool
}

func (r *racingKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	if !r.raced {
		r.raced = true
		if err := r.KeyValue.Delete(ctx, key); err != nil {
			return err
		}
	}
	return r.KeyValue.Delete(ctx, key, opts...)
}

// TestReleaseRunRacingAnotherRelease: two releases of one run's lock at
// once both succeed (one used to fail with "wrong last sequence", and a
// producer taking the lock over then rejected its own request).
func TestReleaseRunRacingAnotherRelease(t *testing.T) {
	js := natstest.MustStart(t)
	ctx := context.Background()
	kv, err := natsbus.KeyValue(ctx, js, schemas.LockBucket)
	if err != nil {
		t.Fatal(err)
	}
	const run = "00000000-0000-4000-8000-000000000001"
	if err := natsbus.AcquireRun(ctx, kv, "demo", run); err != nil {
		t.Fatal(err)
	}
	racing := &racingKV{KeyValue: kv}
	if err := natsbus.ReleaseRun(ctx, racing, "demo", run); err != nil || !racing.raced {
		t.Fatalf("release racing another: %v (raced %v)", err, racing.raced)
	}
	if holder, err := natsbus.LockHolder(ctx, kv, "demo"); err != nil || holder != "" {
		t.Fatalf("lock held by %q (%v)", holder, err)
	}
	if err := natsbus.AcquireRun(ctx, kv, "demo", "00000000-0000-4000-8000-000000000002"); err != nil {
		t.Fatalf("the source is not free: %v", err)
	}
}
