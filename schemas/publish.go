package schemas

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PublishEvent stamps e with the current time if unset and publishes it on
// its subject with its deduplication id, waiting for the stream's ack. A
// failed publish (a server restarting, a cluster electing a leader) is
// retried with backoff for up to about 30 seconds; the id makes a retry of a
// publish that did land harmless.
func PublishEvent(ctx context.Context, js jetstream.JetStream, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, err := e.Encode()
	if err != nil {
		return fmt.Errorf("publish %s event: %w", e.Type, err)
	}
	return Retry(ctx, func() error {
		_, err := js.Publish(ctx, EventSubject(e.Source, e.RunID, e.Type), b, jetstream.WithMsgID(e.MsgID()))
		if err != nil {
			return fmt.Errorf("publish %s event: %w", e.Type, err)
		}
		return nil
	})
}

// RetryBudget is how long Retry keeps trying.
const RetryBudget = 30 * time.Second

// Retry calls fn until it succeeds, ctx ends or RetryBudget has passed,
// backing off from 100 ms to 2 s. It returns fn's last error.
func Retry(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(RetryBudget)
	delay := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(delay*2, 2*time.Second)
	}
}
