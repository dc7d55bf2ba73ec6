package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Backoff is the one retry policy of the services: a delay that starts at
// Min and doubles up to Max. The zero value waits 100 ms doubling to 2 s.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

func (b *Backoff) bounds() (time.Duration, time.Duration) {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = 100 * time.Millisecond
	}
	if hi < lo {
		hi = max(lo, 2*time.Second)
	}
	return lo, hi
}

// Next returns the delay to wait now and doubles the following one.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.bounds()
	if b.next < lo {
		b.next = lo
	}
	d := b.next
	b.next = min(b.next*2, hi)
	return d
}

// Reset starts the delays over from Min (after a success).
func (b *Backoff) Reset() { b.next = 0 }

// After is the delay after the n-th consecutive failure (n from 1), without
// changing b: the redelivery delay of a message delivered n times.
func (b Backoff) After(n uint64) time.Duration {
	lo, hi := b.bounds()
	d := lo
	for i := uint64(1); i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// Wait sleeps for the next delay; it returns ctx's error if ctx ends first.
func (b *Backoff) Wait(ctx context.Context) error {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Sleep waits d or until ctx ends; it reports whether the full time passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// RetryFor calls fn until it succeeds, ctx ends or budget has passed,
// waiting between calls as b says. It returns fn's last error.
func RetryFor(ctx context.Context, budget time.Duration, b Backoff, fn func() error) error {
	deadline := time.Now().Add(budget)
	for {
		err := fn()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		if b.Wait(ctx) != nil {
			return err
		}
	}
}

// KeepAlive tells the server every period that msgs are still being worked
// on (so a slow step is not redelivered elsewhere) and calls also, if set,
// with the same rhythm. The returned function stops it and waits.
func KeepAlive(ctx context.Context, period time.Duration, msgs []jetstream.Msg, also func()) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for _, m := range msgs {
				Settle(nil, "in progress", m.InProgress())
			}
			if also != nil {
				also()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// Settle logs the failure of an ack, nak, term or in-progress: the server
// then redelivers the message after its ack wait, which is safe (every step
// is idempotent) but slower, so it is worth a line.
func Settle(log *slog.Logger, what string, err error) {
	if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return
	}
	if log == nil {
		log = slog.Default()
	}
	log.Warn("could not settle message; the server redelivers it after its ack wait", "action", what, "err", err)
}

// ConsumeOptions configure Consume.
type ConsumeOptions struct {
	// Name says what is consumed, in logs.
	Name   string
	Logger *slog.Logger
	// Handle processes one message and settles it (ack, nak or term).
	Handle func(ctx context.Context, msg jetstream.Msg)
	// Workers is how many messages are handled at once (default 1: one
	// after another, on the loop's goroutine).
	Workers int
	// Prefetch > 0 keeps that many messages coming ahead of the handlers
	// (JetStream's Messages iterator): for short steps where throughput
	// counts. Prefetch 0 pulls a message only when a worker is free (Fetch):
	// for long steps, so a busy consumer never holds work another could
	// start at once.
	Prefetch int
	// Wait, if set, bounds how long to wait for the next message; Idle, if
	// set, runs after each message and after each wait that ended empty.
	Wait func() time.Duration
	Idle func(ctx context.Context)
	// MaxDeliver > 0 is how many deliveries a message gets. One delivered
	// more often (whoever handled it stopped or died each time, so it was
	// never settled) goes to Exhausted, with the reason, instead of Handle.
	// The durable consumer itself has no limit (MaxDeliver: Unlimited): a
	// shutdown's nak never uses up a message's last delivery on the
	// server, where it would be dropped without a word.
	MaxDeliver int
	Exhausted  func(ctx context.Context, msg jetstream.Msg, cause error)
}

// HandBack returns a message its consumer will not handle (it is shutting
// down) for another consumer. It comes back after HandBackDelay, not at
// once: a nak'ed message goes straight to the next pull, and the pulls of
// the consumer that is stopping are still open, so it would bounce between
// them and use up its deliveries in a moment.
func HandBack(log *slog.Logger, msg jetstream.Msg) {
	Settle(log, "nak", msg.NakWithDelay(HandBackDelay))
}

// HandBackDelay is how long a handed-back message waits for its next
// delivery.
const HandBackDelay = time.Second

// Unlimited is the server-side MaxDeliver of every durable consumer; the
// services count deliveries themselves (ConsumeOptions.MaxDeliver) and
// dead-letter the message that exhausts them.
const Unlimited = -1

const defaultWait = time.Second

// Consume delivers cons's messages to opts.Handle until ctx ends, then waits
// for handlers in progress. A broken pull (a server restart, a consumer
// recreated) is resumed with backoff; it returns nil when ctx ends.
// Messages prefetched but not handled when ctx ends are nak'ed, so another
// consumer gets them at once.
func Consume(ctx context.Context, cons jetstream.Consumer, opts ConsumeOptions) error {
	if opts.Workers < 1 {
		opts.Workers = 1
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &consumer{opts: opts, slots: make(chan struct{}, opts.Workers), outage: outage{log: opts.Logger,
		lost: "lost contact with the consumer's server; pulling again until the cluster answers", resumed: "consumer resumed",
		attrs: []any{"consumer", opts.Name}}}
	defer c.wg.Wait()
	if opts.Prefetch > 0 {
		return c.iterate(ctx, cons)
	}
	return c.fetch(ctx, cons)
}

type consumer struct {
	opts   ConsumeOptions
	slots  chan struct{}
	wg     sync.WaitGroup
	retry  Backoff
	outage outage
}

func (c *consumer) wait() time.Duration {
	if c.opts.Wait != nil {
		return max(c.opts.Wait(), time.Millisecond)
	}
	return defaultWait
}

func (c *consumer) idle(ctx context.Context) {
	if c.opts.Idle != nil {
		c.opts.Idle(ctx)
	}
}

// dispatch hands msg to a free worker (inline when there is one worker);
// the caller holds a slot, which the handler frees.
func (c *consumer) dispatch(ctx context.Context, msg jetstream.Msg) {
	handle := c.opts.Handle
	if n := c.opts.MaxDeliver; n > 0 && c.opts.Exhausted != nil {
		if md, err := msg.Metadata(); err == nil && md.NumDelivered > uint64(n) {
			cause := fmt.Errorf("delivered %d times without being settled (whoever handled it stopped or died each time); the limit is %d",
				md.NumDelivered, n)
			handle = func(ctx context.Context, msg jetstream.Msg) { c.opts.Exhausted(ctx, msg, cause) }
		}
	}
	if c.opts.Workers == 1 {
		handle(ctx, msg)
		<-c.slots
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.slots }()
		handle(ctx, msg)
	}()
}

// take blocks until a worker is free; false when ctx ended. An ended ctx
// wins over a free worker: select picks at random among ready cases, and a
// consumer that is stopping must not pull another message.
func (c *consumer) take(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case c.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *consumer) fetch(ctx context.Context, cons jetstream.Consumer) error {
	for c.take(ctx) {
		free := 1 + cap(c.slots) - len(c.slots)
		batch, err := cons.Fetch(free, jetstream.FetchMaxWait(c.wait()))
		if err != nil {
			<-c.slots
			if ctx.Err() != nil {
				break
			}
			c.outage.begin(err)
			c.retry.Wait(ctx)
			continue
		}
		held := true
		for msg := range batch.Messages() {
			if !held && !c.take(ctx) {
				HandBack(c.opts.Logger, msg)
				continue
			}
			held = false
			c.dispatch(ctx, msg)
		}
		if held {
			<-c.slots
		}
		// Each fetch is a new pull, so a lost server costs one fetch; a
		// pull no server answered (a cluster electing) is worth a word.
		if err := batch.Error(); err != nil && ctx.Err() == nil {
			c.outage.begin(err)
			c.retry.Wait(ctx)
		} else {
			c.retry.Reset()
			if !held {
				c.resumed()
			}
		}
		c.idle(ctx)
	}
	return nil
}

// PullHeartbeat is how often the server tells a waiting pull that it is
// still there. Two missed heartbeats mean the pull is lost (its server died
// without a word, or a new consumer leader never heard of it); the pull is
// then issued again, so a lost server costs at most two heartbeats.
const PullHeartbeat = 5 * time.Second

func (c *consumer) iterate(ctx context.Context, cons jetstream.Consumer) error {
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(c.opts.Prefetch), jetstream.PullHeartbeat(PullHeartbeat))
		if err != nil {
			c.outage.begin(err)
			c.retry.Wait(ctx)
			continue
		}
		err = c.drain(ctx, it)
		if ctx.Err() != nil {
			break
		}
		c.outage.begin(err)
		c.retry.Wait(ctx)
	}
	return nil
}

// resumed ends an outage the consumer reported.
func (c *consumer) resumed() {
	c.retry.Reset()
	c.outage.end()
}

// outage reports a lost server once at WARN (later failures at debug) and
// its end at INFO with how long it lasted. One goroutine uses it.
type outage struct {
	log           *slog.Logger
	lost, resumed string
	attrs         []any
	since         time.Time
}

func (o *outage) begin(err error) {
	attrs := append(slices.Clip(o.attrs), "err", err)
	if !o.since.IsZero() {
		o.log.Debug(o.lost, attrs...)
		return
	}
	o.since = time.Now()
	o.log.Warn(o.lost, attrs...)
}

func (o *outage) end() {
	if o.since.IsZero() {
		return
	}
	o.log.Info(o.resumed, append(slices.Clip(o.attrs), "after", time.Since(o.since).Round(time.Millisecond).String())...)
	o.since = time.Time{}
}

// pulled is one result of the iterator's Next.
type pulled struct {
	msg jetstream.Msg
	err error
}

// pump calls it.Next, without a deadline so that its heartbeat check runs,
// and hands each result to out until Next fails for good; it closes out.
// A missed heartbeat is handed on too, but the pump goes on: the iterator
// has already forgotten the lost pull and issues a new one.
func pump(it jetstream.MessagesContext, out chan<- pulled) {
	defer close(out)
	for {
		msg, err := it.Next()
		out <- pulled{msg, err}
		if err != nil && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			return
		}
	}
}

// drain handles it's messages until it breaks or ctx ends.
func (c *consumer) drain(ctx context.Context, it jetstream.MessagesContext) error {
	results := make(chan pulled)
	go pump(it, results)
	defer c.release(it, results)
	wait := time.NewTimer(c.wait())
	defer wait.Stop()
	for {
		var p pulled
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wait.C:
			c.idle(ctx)
			wait.Reset(c.wait())
			continue
		case p = <-results:
		}
		switch {
		case errors.Is(p.err, jetstream.ErrNoHeartbeat):
			c.outage.begin(p.err)
			continue
		case p.err != nil:
			return p.err
		}
		c.resumed()
		if !c.take(ctx) {
			HandBack(c.opts.Logger, p.msg)
			return ctx.Err()
		}
		c.dispatch(ctx, p.msg)
		c.idle(ctx)
		wait.Reset(c.wait())
	}
}

// release stops it and naks what it had prefetched. Draining waits for
// pulls in flight; a connection that cannot finish that is cut short.
func (c *consumer) release(it jetstream.MessagesContext, results <-chan pulled) {
	it.Drain()
	cut := time.AfterFunc(2*time.Second, it.Stop)
	defer cut.Stop()
	for p := range results {
		if p.msg != nil {
			HandBack(c.opts.Logger, p.msg)
		}
	}
}
