package schemas

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PublishEvent stamps e with the current time if unset and publishes it on
// its subject with its deduplication id, waiting for the stream's ack.
func PublishEvent(ctx context.Context, js jetstream.JetStream, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, err := e.Encode()
	if err != nil {
		return fmt.Errorf("publish %s event: %w", e.Type, err)
	}
	if _, err := js.Publish(ctx, EventSubject(e.Source, e.RunID, e.Type), b, jetstream.WithMsgID(e.MsgID())); err != nil {
		return fmt.Errorf("publish %s event: %w", e.Type, err)
	}
	return nil
}
