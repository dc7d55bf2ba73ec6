package natsbus

import (
	"context"
	"errors"
	"fmt"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// ClaimRun takes the source's lock for run and returns "", or, when another
// run holds it, that run's id. Claiming a lock run already holds succeeds
// (a retry, or a producer finding the lock its requester took for it).
func ClaimRun(ctx context.Context, kv jetstream.KeyValue, source, run string) (string, error) {
	for {
		_, err := kv.Create(ctx, source, []byte(run))
		if err == nil {
			return "", nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", fmt.Errorf("lock source %s: %w", source, err)
		}
		e, err := kv.Get(ctx, source)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released in between
		}
		if err != nil {
			return "", fmt.Errorf("lock source %s: %w", source, err)
		}
		if string(e.Value()) == run {
			return "", nil
		}
		return string(e.Value()), nil
	}
}

// AcquireRun is ClaimRun with a held lock as schemas.ErrAlreadyRunning.
func AcquireRun(ctx context.Context, kv jetstream.KeyValue, source, run string) error {
	holder, err := ClaimRun(ctx, kv, source, run)
	if err == nil && holder != "" {
		err = fmt.Errorf("%w: source %s, run %s", schemas.ErrAlreadyRunning, source, holder)
	}
	return err
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

// ReleaseRun frees the source's lock if run holds it. Two releasing at once
// (the finalizer and a producer taking the lock over) both succeed.
func ReleaseRun(ctx context.Context, kv jetstream.KeyValue, source, run string) error {
	for {
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
		err = kv.Delete(ctx, source, jetstream.LastRevision(e.Revision()))
		if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			return fmt.Errorf("unlock source %s: %w", source, err)
		}
		// Changed since it was read (released, or taken): read it again.
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// LockHolder is the run holding the source's lock, or "" when it is free.
func LockHolder(ctx context.Context, kv jetstream.KeyValue, source string) (string, error) {
	e, err := kv.Get(ctx, source)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read lock of source %s: %w", source, err)
	}
	return string(e.Value()), nil
}
