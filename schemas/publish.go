package schemas

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
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

// DeadLetter builds the dead-letter message of msg for source and table:
// its body and headers (without the deduplication id), why it failed, the
// subject it came from and how often it was delivered.
func DeadLetter(msg jetstream.Msg, source, table string, cause error) *nats.Msg {
	dl := &nats.Msg{Subject: DeadLetterSubject(source, table), Data: msg.Data(), Header: nats.Header{}}
	for k, v := range msg.Headers() {
		if k != jetstream.MsgIDHeader {
			dl.Header[k] = v
		}
	}
	dl.Header.Set(HeaderDLQReason, cause.Error())
	dl.Header.Set(HeaderDLQSubject, msg.Subject())
	if md, err := msg.Metadata(); err == nil {
		dl.Header.Set(HeaderDLQDeliveries, strconv.FormatUint(md.NumDelivered, 10))
	}
	return dl
}
