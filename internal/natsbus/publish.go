package natsbus

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/agnes-ai/connector-kit/internal/errclass"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/redact"
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
	publish, err := eventPublisher(js, e)
	if err != nil {
		return err
	}
	return Retry(ctx, func() error { return publish(ctx) })
}

// eventPublisher encodes e (scrubbed) once and returns one attempt at
// publishing it, deduplicated by the event's id.
func eventPublisher(js jetstream.JetStream, e schemas.Event) (func(context.Context) error, error) {
	scrubEvent(&e)
	b, err := e.Encode()
	if err != nil {
		return nil, fmt.Errorf("publish %s event: %w", e.Type, err)
	}
	subject, id := schemas.EventSubject(e.Source, e.RunID, e.Type), e.MsgID()
	return func(ctx context.Context) error {
		if _, err := js.Publish(ctx, subject, b, jetstream.WithMsgID(id)); err != nil {
			return fmt.Errorf("publish %s event: %w", e.Type, err)
		}
		return nil
	}, nil
}

// scrubEvent masks secrets in the texts of an event that can carry an
// upstream's words (errors, skipped reasons, schema changes).
func scrubEvent(e *schemas.Event) {
	e.Error = redact.String(e.Error)
	if len(e.Results) > 0 {
		e.Results = slices.Clone(e.Results)
		for i := range e.Results {
			e.Results[i].Error = redact.String(e.Results[i].Error)
		}
	}
	for _, l := range []*[]string{&e.Skipped, &e.SchemaChanges} {
		if len(*l) > 0 {
			c := slices.Clone(*l)
			for i := range c {
				c[i] = redact.String(c[i])
			}
			*l = c
		}
	}
}

// RetryBudget is how long Retry keeps trying (a variable so tests can
// show what outlasts it).
var RetryBudget = 30 * time.Second

// Retry calls fn until it succeeds, ctx ends or RetryBudget has passed,
// backing off from 100 ms to 2 s. It returns fn's last error.
func Retry(ctx context.Context, fn func() error) error {
	return RetryFor(ctx, RetryBudget, Backoff{}, fn)
}

// Bury stores dl (built by DeadLetter) in the dead-letter stream and then
// terminates msg. When the dead letter cannot be stored, msg is nak'ed to
// come back after retry (consumers have no server-side delivery limit, so
// it is not lost) and Bury reports false.
func Bury(ctx context.Context, js jetstream.JetStream, log *slog.Logger, msg jetstream.Msg, dl *nats.Msg, retry time.Duration) bool {
	if err := Retry(ctx, func() error { _, err := js.PublishMsg(ctx, dl); return err }); err != nil {
		log.Error("store dead letter; leaving the message for redelivery", "subject", dl.Subject, "err", err)
		Settle(log, "nak", msg.NakWithDelay(retry))
		return false
	}
	metrics.DeadLetters.Inc()
	Settle(log, "term", msg.Term())
	return true
}

// Announce publishes a terminal event (a run published, failed or
// rejected; streamed parts published) and reports whether the bus took
// it. Whoever waits for a run (da sync, the API) waits for these events,
// so a refusal the bus may get over (an election, a node lost, a timeout)
// is retried, backing off up to AnnounceBackoffMax, until the bus takes it
// or ctx ends; every try carries the same message id, so the stream keeps
// one copy. Only a refusal that repeats on every try gives up.
func Announce(ctx context.Context, js jetstream.JetStream, log *slog.Logger, ev schemas.Event) bool {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	log = log.With("type", ev.Type, "source", ev.Source, "run", ev.RunID)
	publish, err := eventPublisher(js, ev)
	if err != nil {
		log.Error("announce: the event cannot be encoded", "err", err)
		return false
	}
	// One loop of single attempts: the first refusal is reported at once,
	// and the backoff is this loop's alone.
	b := Backoff{Min: 100 * time.Millisecond, Max: AnnounceBackoffMax}
	var refused time.Time
	for {
		err := publish(ctx)
		switch {
		case err == nil:
			if !refused.IsZero() {
				log.Info("announcement taken", "after", time.Since(refused).Round(time.Millisecond))
			}
			return true
		case ctx.Err() != nil:
			return false
		case errclass.IsDeterministic(err):
			log.Error("announce: the bus refuses the event for good", "err", err)
			return false
		case refused.IsZero():
			refused = time.Now()
			log.Warn("announce: the bus did not take the event; retrying until it does", "err", err)
		}
		if b.Wait(ctx) != nil {
			return false
		}
	}
}

// AnnounceBackoffMax is the longest wait between two tries of an
// announcement: the pace Retry keeps, so an announcement is taken within
// 2 s of the bus coming back, at the cost of one publish every 2 s while
// it is away.
const AnnounceBackoffMax = 2 * time.Second

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
	dl.Header.Set(schemas.HeaderDLQReason, redact.String(cause.Error()))
	dl.Header.Set(schemas.HeaderDLQSubject, msg.Subject())
	if md, err := msg.Metadata(); err == nil {
		dl.Header.Set(schemas.HeaderDLQDeliveries, strconv.FormatUint(md.NumDelivered, 10))
	}
	return dl
}
