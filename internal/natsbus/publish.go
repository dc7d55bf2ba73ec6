package natsbus

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishAckTimeout bounds the wait for the ack of an asynchronous publish.
// Without it an ack lost with its server (a stream leader killed after it
// took the message) is awaited forever; with it the publish fails and is
// retried under its deduplication id.
const PublishAckTimeout = 10 * time.Second

// JetStream returns nc's JetStream client, whose asynchronous publishes fail
// with jetstream.ErrAsyncPublishTimeout when no ack came within ackTimeout.
func JetStream(nc *nats.Conn, ackTimeout time.Duration) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(ackTimeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nil
}

// PublishEvent stamps e with the current time if unset and publishes it on
// its subject with its deduplication id, waiting for the stream's ack. A
// failed publish (a server restarting, a cluster electing a leader) is
// retried with backoff for up to about 30 seconds; the id makes a retry of a
// publish that did land harmless.
func PublishEvent(ctx context.Context, js jetstream.JetStream, e schemas.Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, err := e.Encode()
	if err != nil {
		return fmt.Errorf("publish %s event: %w", e.Type, err)
	}
	return Retry(ctx, func() error {
		_, err := js.Publish(ctx, schemas.EventSubject(e.Source, e.RunID, e.Type), b, jetstream.WithMsgID(e.MsgID()))
		if err != nil {
			return fmt.Errorf("publish %s event: %w", e.Type, err)
		}
		return nil
	})
}

// RetryBudget is how long Retry keeps trying (a variable so tests can
// show what outlasts it).
var RetryBudget = 30 * time.Second

// Retry calls fn until it succeeds, ctx ends or RetryBudget has passed,
// backing off from 100 ms to 2 s. It returns fn's last error.
func Retry(ctx context.Context, fn func() error) error {
	return RetryFor(ctx, RetryBudget, Backoff{}, fn)
}

// DeadLetter builds the dead-letter message of msg for source and table:
// its body and headers (without the deduplication id), why it failed, the
// subject it came from and how often it was delivered.
func DeadLetter(msg jetstream.Msg, source, table string, cause error) *nats.Msg {
	dl := &nats.Msg{Subject: schemas.DeadLetterSubject(source, table), Data: msg.Data(), Header: nats.Header{}}
	for k, v := range msg.Headers() {
		if k != jetstream.MsgIDHeader {
			dl.Header[k] = v
		}
	}
	dl.Header.Set(schemas.HeaderDLQReason, cause.Error())
	dl.Header.Set(schemas.HeaderDLQSubject, msg.Subject())
	if md, err := msg.Metadata(); err == nil {
		dl.Header.Set(schemas.HeaderDLQDeliveries, strconv.FormatUint(md.NumDelivered, 10))
	}
	return dl
}
