package producers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Hook processing limits.
const (
	// hookSeqSpan is how many data messages one webhook may publish per
	// table: its messages are numbered hookSeq*hookSeqSpan + i.
	hookSeqSpan     = 64
	hookMaxDeliver  = 8
	hookAckWait     = 30 * time.Second
	hookConcurrency = 8
)

// hookRetry spaces the redeliveries of a webhook that failed.
var hookRetry = natsbus.Backoff{Min: time.Second, Max: 30 * time.Second}

// ErrBadEvent marks an event that can never be processed (dead-lettered at
// once rather than retried).
var ErrBadEvent = connectors.ErrBadEvent

// streamSource is an opened streaming connector with its partitioned tables.
type streamSource struct {
	conn   connectors.Streamer
	tables []connectors.TableInfo
	// cols is the name rule applied to each table's columns.
	cols map[string]connectors.Columns
}

// hooks turns accepted webhook bodies into data batches of the stream run:
// the connector's Stream gives changes, each change becomes rows (or
// markers) per partitioned table, numbered from the body's bus sequence so a
// redelivered body publishes the same message ids. The body is acked only
// after its batches are on the bus. A body held by a producer that died is
// redelivered after the producer ack wait (--producer-ack-wait).
type hooks struct {
	p       *Producer
	mu      sync.Mutex
	sources map[string]*streamSource
}

// Hooks is the webhook processor: a service of its own beside the
// producer, consuming AGNES_HOOKS.
type Hooks struct{ h *hooks }

// NewHooks returns the webhook processor; Run starts it.
func NewHooks(opts Options) *Hooks {
	p := New(opts)
	p.log = p.opts.Logger.With("service", "webhooks")
	return &Hooks{h: &hooks{p: p, sources: map[string]*streamSource{}}}
}

// Run processes accepted webhook bodies until ctx ends.
func (s *Hooks) Run(ctx context.Context) error {
	p := s.h.p
	if err := p.opts.Validate(); err != nil {
		return err
	}
	cons, err := p.opts.JS.CreateOrUpdateConsumer(ctx, schemas.HookStream, jetstream.ConsumerConfig{
		Durable:       schemas.HookConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.opts.AckWait,
		MaxDeliver:    natsbus.Unlimited,
		MaxAckPending: 1000,
	})
	if err != nil {
		return fmt.Errorf("create hook consumer: %w", err)
	}
	return natsbus.Consume(ctx, cons, natsbus.ConsumeOptions{Name: schemas.HookConsumer, Logger: p.log,
		Workers: hookConcurrency, Prefetch: hookConcurrency, Handle: s.h.handle,
		MaxDeliver: hookMaxDeliver, Exhausted: func(ctx context.Context, msg jetstream.Msg, cause error) {
			source := msg.Headers().Get(schemas.HeaderSource)
			p.log.Error("dead-lettering webhook", "source", source, "err", cause)
			s.h.deadLetter(ctx, msg, source, cause)
		}})
}

func (h *hooks) source(ctx context.Context, name string) (*streamSource, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sources[name]; s != nil {
		return s, nil
	}
	src, err := h.p.opts.Sources(name)
	if err != nil {
		return nil, err
	}
	conn, _, err := h.p.opts.Registry.Open(src.Connector, src.Config)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", name, err)
	}
	st, ok := conn.(connectors.Streamer)
	if !ok || !conn.Capabilities().Has(connectors.Stream) {
		return nil, fmt.Errorf("%w: source %s (connector %s) does not stream", ErrBadEvent, name, src.Connector)
	}
	d, ok := conn.(connectors.Discoverer)
	if !ok {
		return nil, fmt.Errorf("%w: source %s: a streaming connector must declare its tables (discover)", ErrBadEvent, name)
	}
	all, err := d.Discover(ctx)
	if err != nil {
		return nil, fmt.Errorf("discover %s: %w", name, err)
	}
	s := &streamSource{conn: st, cols: map[string]connectors.Columns{}}
	var streamed []connectors.TableInfo
	for _, t := range all {
		if t.Partition != nil && t.Capabilities.Has(connectors.Stream) {
			streamed = append(streamed, t)
		}
	}
	// The name rule, as for a sync: the choice between colliding tables
	// prefers the one already published.
	streamed, skipped := connectors.ResolveTables(streamed, func(table string) bool {
		_, err := h.p.state.Get(ctx, schemas.SchemaKey(name, table))
		return err == nil
	})
	for _, t := range streamed {
		c := connectors.ResolveColumns(t.Name, t.Schema)
		s.cols[t.Name], t.Schema = c, c.Schema
		skipped = append(skipped, c.Skipped...)
		if err := schemas.CheckPartitioned(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn); err != nil {
			return nil, fmt.Errorf("%w: source %s, table %s: %v", ErrBadEvent, name, t.Name, err)
		}
		s.tables = append(s.tables, t)
	}
	for _, why := range skipped {
		h.p.log.Warn("streamed table left out", "source", name, "reason", why)
	}
	if len(s.tables) == 0 {
		return nil, fmt.Errorf("%w: source %s has no partitioned streaming tables", ErrBadEvent, name)
	}
	// Describe the streamed tables to the finalizer (description and
	// schema in _meta and the catalog before any backfill ran).
	for _, t := range s.tables {
		enc, err := schemas.EncodeSchema(t.Schema)
		if err != nil {
			return nil, err
		}
		if err := h.p.publishEvent(ctx, schemas.Event{Type: schemas.EventTableStarted, RunID: schemas.StreamRun, Source: name,
			Table: t.Name, Description: t.Description, Schema: enc}); err != nil {
			return nil, err
		}
	}
	h.sources[name] = s
	return s, nil
}

func (h *hooks) handle(ctx context.Context, msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil {
		natsbus.Settle(h.p.log, "nak", msg.Nak())
		return
	}
	source := msg.Headers().Get(schemas.HeaderSource)
	log := h.p.log.With("source", source, "hook_seq", md.Sequence.Stream)
	// A slow source (Jira retrying a 429) must not get the body redelivered
	// to another producer while this one still works on it.
	stop := natsbus.KeepAlive(ctx, max(h.p.opts.AckWait/3, 100*time.Millisecond), []jetstream.Msg{msg}, nil)
	err = h.process(ctx, msg, source, int64(md.Sequence.Stream))
	stop()
	if err == nil {
		natsbus.Settle(log, "ack", msg.Ack())
		metrics.HooksProcessed.Inc()
		return
	}
	if ctx.Err() != nil {
		natsbus.HandBack(log, msg)
		return
	}
	if errors.Is(err, ErrBadEvent) || md.NumDelivered >= hookMaxDeliver {
		log.Error("dead-lettering webhook", "deliveries", md.NumDelivered, "err", err)
		h.deadLetter(ctx, msg, source, err)
		return
	}
	log.Warn("webhook failed; will retry", "deliveries", md.NumDelivered, "err", err)
	natsbus.Settle(log, "nak", msg.NakWithDelay(hookRetry.After(md.NumDelivered)))
}

func (h *hooks) process(ctx context.Context, msg jetstream.Msg, source string, hookSeq int64) error {
	if err := schemas.ValidateName("source", source); err != nil {
		return fmt.Errorf("%w: header %s: %v", ErrBadEvent, schemas.HeaderSource, err)
	}
	s, err := h.source(ctx, source)
	if err != nil {
		return err
	}
	changes, err := s.conn.Stream(ctx, msg.Data())
	if err != nil {
		for _, c := range changes {
			c.Release()
		}
		return err
	}
	cs := newChangeSet(s.tables, s.cols)
	defer cs.release()
	for _, ch := range changes {
		if _, err := cs.add(ch, hookSeq); err != nil {
			return fmt.Errorf("%w: %v", ErrBadEvent, err)
		}
	}
	sinks := map[string]*sink{}
	for k := range cs.recs {
		out := sinks[k.table]
		if out == nil {
			out = h.p.newSink(schemas.StreamRun, source, k.table, 1, cs.stored[k.table], h.p.log)
			out.seq, out.endSeq, out.backlog = hookSeq*hookSeqSpan, (hookSeq+1)*hookSeqSpan, false
			sinks[k.table] = out
		}
		rec, err := cs.take(k)
		if err != nil {
			return err
		}
		out.header = partitionHeader(cs.tables[k.table], k.month)
		err = out.publish(ctx, rec)
		rec.Release()
		if err != nil {
			return err
		}
	}
	for _, out := range sinks {
		if err := out.wait(ctx, 0); err != nil {
			return err
		}
	}
	return nil
}

func (h *hooks) deadLetter(ctx context.Context, msg jetstream.Msg, source string, cause error) {
	if schemas.ValidateName("source", source) != nil {
		source = "_unknown"
	}
	dl := natsbus.DeadLetter(msg, source, "_webhooks", cause)
	dl.Header.Set(schemas.HeaderSource, source)
	natsbus.Bury(ctx, h.p.opts.JS, h.p.log, msg, dl, 30*time.Second)
}
