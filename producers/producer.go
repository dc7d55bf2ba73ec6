// Package producers runs connectors for sync requests: it takes requests from
// the sync work queue (each taken by exactly one producer), discovers and
// reads tables, and publishes Arrow IPC batches and run events on the bus.
package producers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults.
const (
	DefaultConcurrency      = 4
	DefaultTableConcurrency = 2
	DefaultAckWait          = 30 * time.Second
	// DefaultMaxInFlight bounds unacknowledged async publishes per table, which
	// bounds the producer's memory however large the table is.
	DefaultMaxInFlight = 32
	// DefaultMaxBacklog bounds the batches waiting for a writer: past it the
	// producer waits, so a fast source cannot pile a whole table into the
	// bus ahead of slow writers.
	DefaultMaxBacklog = 256
	backlogCheckEvery = 16
	progressEvery     = time.Second
)

// Options configure a Producer.
type Options struct {
	JS       jetstream.JetStream
	Registry *connectors.Registry
	Sources  SourceLookup
	// MaxPayload is the bus's largest message; batches are split to fit.
	MaxPayload int
	// Concurrency is how many runs this producer works on at once.
	Concurrency int
	// TableConcurrency is how many tables of one run are read at once.
	TableConcurrency int
	AckWait          time.Duration
	MaxInFlight      int
	MaxBacklog       int
	// ChunkRows is how many rows of a table go on one lane before the next
	// chunk takes the next lane (schemas.Lane): a writer's row group, so
	// that a chunk is a part.
	ChunkRows int64
	// Name names the producer in its heartbeat key and in the records of
	// the runs it takes (default: the host name).
	Name string
	// SourceNames are the configured sources, announced in the heartbeat
	// so that a client can tell whether this server runs a source.
	SourceNames []string
	Logger      *slog.Logger
}

// Validate reports options a producer cannot run with.
func (o Options) Validate() error {
	var errs []error
	if o.JS == nil {
		errs = append(errs, errors.New("no JetStream client"))
	}
	if o.Registry == nil {
		errs = append(errs, errors.New("no connector registry"))
	}
	if o.Sources == nil {
		errs = append(errs, errors.New("no source lookup"))
	}
	if o.Concurrency < 0 || o.TableConcurrency < 0 || o.MaxInFlight < 0 || o.MaxBacklog < 0 || o.AckWait < 0 || o.ChunkRows < 0 {
		errs = append(errs, errors.New("negative concurrency, in-flight, backlog or ack wait"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("producer options: %w", err)
	}
	return nil
}

// Producer consumes sync requests and publishes their data.
type Producer struct {
	opts  Options
	log   *slog.Logger
	state jetstream.KeyValue
	locks jetstream.KeyValue
	runs  *runs.Store
	live  *runs.Liveness
	// id is the producer's key in schemas.ProducerBucket.
	id string
}

// New returns a Producer; Run starts it.
func New(opts Options) *Producer {
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.TableConcurrency <= 0 {
		opts.TableConcurrency = DefaultTableConcurrency
	}
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxBacklog <= 0 {
		opts.MaxBacklog = DefaultMaxBacklog
	}
	if opts.MaxPayload <= 0 {
		opts.MaxPayload = 1 << 20
	}
	if opts.ChunkRows <= 0 {
		opts.ChunkRows = parquetfile.DefaultRowGroupRows
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Name == "" {
		opts.Name, _ = os.Hostname()
	}
	return &Producer{opts: opts, log: opts.Logger.With("service", "producer")}
}

// Run takes sync requests until ctx ends, then waits for runs in progress to
// stop. A request is acked when its run's events are all on the bus.
func (p *Producer) Run(ctx context.Context) error {
	if err := p.opts.Validate(); err != nil {
		return err
	}
	cons, err := p.opts.JS.CreateOrUpdateConsumer(ctx, schemas.SyncStream, jetstream.ConsumerConfig{
		Durable:       schemas.ProducerConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.opts.AckWait,
		MaxDeliver:    natsbus.Unlimited,
		MaxAckPending: 1000,
	})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	if p.state, err = natsbus.KeyValue(ctx, p.opts.JS, schemas.StateBucket); err != nil {
		return err
	}
	if p.locks, err = natsbus.KeyValue(ctx, p.opts.JS, schemas.LockBucket); err != nil {
		return err
	}
	if p.runs, err = runs.Open(ctx, p.opts.JS); err != nil {
		return err
	}
	if p.live, err = runs.OpenLiveness(ctx, p.opts.JS); err != nil {
		return err
	}
	// The heartbeat says this producer is alive to whoever looks for runs
	// that lost theirs; it stops (and its key goes) when Run returns.
	p.id = natsbus.MemberKey(p.opts.Name)
	beatCtx, stopBeat := context.WithCancel(ctx)
	beating := make(chan struct{})
	go func() { defer close(beating); p.live.Beat(beatCtx, p.id, p.opts.SourceNames, p.log) }()
	defer func() { stopBeat(); <-beating }()
	p.log.Info("producer started", "concurrency", p.opts.Concurrency, "id", p.id)
	// A run takes minutes: a request is pulled only when a slot is free, so
	// a busy producer never holds one another producer could start.
	err = natsbus.Consume(ctx, cons, natsbus.ConsumeOptions{Name: schemas.ProducerConsumer, Logger: p.log,
		Workers: p.opts.Concurrency, Handle: p.handle, MaxDeliver: SyncMaxDeliver, Exhausted: p.exhausted})
	p.log.Info("producer stopped")
	return err
}

// request reads the sync request msg carries. A request that is malformed,
// on another source's subject, or of a run cancelled while queued or
// already ended is settled here and ok is false.
func (p *Producer) request(ctx context.Context, msg jetstream.Msg) (req schemas.SyncRequest, ok bool) {
	req, err := schemas.DecodeSyncRequest(msg.Data())
	switch {
	case err != nil:
		// Nothing of a malformed request is trusted, not even its run id:
		// it is dropped without an event.
		p.log.Error("dropping malformed sync request", "subject", msg.Subject(), "err", err)
		metrics.MalformedInput.WithLabelValues("sync_request").Inc()
	case msg.Subject() != schemas.SyncSubject(req.Source):
		p.log.Error("dropping sync request published on another source's subject", "subject", msg.Subject(), "source", req.Source)
		metrics.MalformedInput.WithLabelValues("sync_request").Inc()
	default:
		status, ended := p.runs.Ended(ctx, req.Source, req.RunID)
		if !ended {
			return req, true
		}
		// Cancelled while queued, or abandoned (or over) before this
		// delivery: whoever ended it announced it.
		p.log.Info("sync request dropped: its run has ended", "run", req.RunID, "source", req.Source, "status", status)
	}
	natsbus.Settle(p.log, "term", msg.Term())
	return req, false
}

// lock takes the source's lock for the run of req, and names this producer
// in its record. A lock held by a run whose producer died is taken over
// (runs.TakeOver); one held by a live run answers run_rejected. ok is false
// when the request was settled here.
func (p *Producer) lock(ctx context.Context, msg jetstream.Msg, req schemas.SyncRequest) bool {
	if _, err := p.runs.Claim(ctx, req, p.id); err != nil {
		p.log.Warn("could not name this producer in the run's record; it cannot be found abandoned if this producer dies", "run", req.RunID, "err", err)
	}
	holder, err := p.runs.Lock(ctx, p.log, p.locks, req.Source, req.RunID)
	if err == nil && holder != "" {
		err = fmt.Errorf("%w: source %s, run %s", schemas.ErrAlreadyRunning, req.Source, holder)
	}
	if errors.Is(err, schemas.ErrAlreadyRunning) {
		p.log.Warn("sync request rejected: source already syncing", "run", req.RunID, "source", req.Source, "err", err)
		metrics.RunsRejected.WithLabelValues(metrics.Source(req.Source)).Inc()
		// The answer is on the bus before the request is settled: whoever
		// waits for the run hears it.
		if !natsbus.Announce(ctx, p.opts.JS, p.log, schemas.Event{Type: schemas.EventRunRejected, RunID: req.RunID, Source: req.Source, Error: err.Error(),
			Trigger: req.Trigger()}) {
			natsbus.HandBack(p.log, msg)
			return false
		}
		natsbus.Settle(p.log, "term", msg.Term())
		return false
	}
	if err != nil {
		p.log.Error("lock source; will retry", "run", req.RunID, "source", req.Source, "err", err)
		natsbus.Settle(p.log, "nak", msg.NakWithDelay(time.Second))
		return false
	}
	return true
}

func (p *Producer) handle(ctx context.Context, msg jetstream.Msg) {
	req, ok := p.request(ctx, msg)
	if !ok {
		return
	}
	if !p.lock(ctx, msg, req) {
		return
	}
	locks := p.locks
	req.Attempt = 1
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 1 {
		// A redelivered request: an earlier attempt died mid-run. This
		// attempt publishes everything again under its own number.
		req.Attempt = int(md.NumDelivered)
		p.log.Warn("retrying sync run", "run", req.RunID, "source", req.Source, "attempt", req.Attempt)
	}
	stop := natsbus.KeepAlive(ctx, min(p.opts.AckWait/3, schemas.LockTTL/4), []jetstream.Msg{msg}, func() {
		if err := natsbus.RefreshRun(ctx, locks, req.Source, req.RunID); err != nil {
			p.log.Warn("refresh source lock", "run", req.RunID, "source", req.Source, "err", err)
		}
	})
	metrics.RunsStarted.WithLabelValues(metrics.Source(req.Source)).Inc()
	// A cancel asked for while the run runs stops its reads, and so does
	// finding it abandoned (this producer was cut off for ProducerTTL).
	runCtx, cancelRun := context.WithCancelCause(ctx)
	p.runs.WatchCancel(runCtx, req.Source, req.RunID, func() { cancelRun(errCancelled) })
	err := p.runRequest(runCtx, req)
	cancelled := context.Cause(runCtx) == errCancelled
	cancelRun(nil)
	stop()
	if ctx.Err() != nil {
		// Shutting down: leave the request for redelivery to another producer.
		natsbus.HandBack(p.log, msg)
		return
	}
	if cancelled {
		// The canceller announced run_cancelled (or the reaper
		// run_abandoned); the finalizer drops what the run staged. The
		// source is free at once.
		p.log.Info("sync run stopped: cancelled or abandoned", "run", req.RunID, "source", req.Source)
		if err := natsbus.ReleaseRun(ctx, locks, req.Source, req.RunID); err != nil {
			p.log.Warn("release source lock", "run", req.RunID, "source", req.Source, "err", err)
		}
		natsbus.Settle(p.log, "term", msg.Term())
		return
	}
	if err != nil {
		p.log.Error("sync run failed", "run", req.RunID, "source", req.Source, "err", err)
		metrics.RunsFailed.WithLabelValues(metrics.Source(req.Source)).Inc()
		if err := natsbus.ReleaseRun(ctx, locks, req.Source, req.RunID); err != nil {
			p.log.Warn("release source lock", "run", req.RunID, "source", req.Source, "err", err)
		}
		if !natsbus.Announce(ctx, p.opts.JS, p.log, schemas.Event{Type: schemas.EventRunFailed, RunID: req.RunID, Attempt: req.Attempt, Source: req.Source, Error: err.Error(),
			Trigger: req.Trigger()}) {
			// Not on the bus: the request comes back for another attempt
			// rather than leaving its waiters without an answer.
			natsbus.HandBack(p.log, msg)
			return
		}
	}
	natsbus.Settle(p.log, "ack", msg.DoubleAck(ctx))
}

// SyncMaxDeliver is how many deliveries a sync request gets: one a
// producer took more often without finishing (it stopped or died each
// time) is reported failed and dead-lettered (see exhausted).
const SyncMaxDeliver = 5

// exhausted ends a sync request delivered more than SyncMaxDeliver times:
// run_failed with the reason (so da sync and the API stop waiting), then
// the request goes to the dead-letter stream for inspection.
func (p *Producer) exhausted(ctx context.Context, msg jetstream.Msg, cause error) {
	source, table := "_unknown", "_sync"
	if req, err := schemas.DecodeSyncRequest(msg.Data()); err == nil && msg.Subject() == schemas.SyncSubject(req.Source) {
		source = req.Source
		p.log.Error("sync request exhausted its deliveries", "run", req.RunID, "source", req.Source, "err", cause)
		if !natsbus.Announce(ctx, p.opts.JS, p.log, schemas.Event{Type: schemas.EventRunFailed, RunID: req.RunID, Source: req.Source,
			Error: cause.Error()}) {
			natsbus.Settle(p.log, "nak", msg.NakWithDelay(time.Second))
			return
		}
	}
	natsbus.Bury(ctx, p.opts.JS, p.log, msg, natsbus.DeadLetter(msg, source, table, cause), time.Second)
}

// errCancelled is the cause of a run context ended by a cancel request.
var errCancelled = errors.New("run cancelled on request")

// waitBacklog blocks while more than MaxBacklog batches wait for a writer
// (on every lane together).
func (p *Producer) waitBacklog(ctx context.Context, log *slog.Logger) error {
	stream, err := p.opts.JS.Stream(ctx, schemas.DataStream)
	if err != nil {
		return fmt.Errorf("check writer backlog: %w", err)
	}
	poll := natsbus.Backoff{Min: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	warned := time.Now()
	for {
		// A cluster electing a new leader answers after a while.
		var info *jetstream.StreamInfo
		if err := natsbus.Retry(ctx, func() (err error) {
			info, err = stream.Info(ctx)
			return err
		}); err != nil {
			return fmt.Errorf("check writer backlog: %w", err)
		}
		// No consumer yet: writers have not started; the stream keeps the
		// batches until they do. The work queue holds what no writer has
		// acked: waiting, and being written.
		if info.State.Consumers == 0 || info.State.Msgs <= uint64(p.opts.MaxBacklog) {
			return nil
		}
		if time.Since(warned) > 30*time.Second {
			warned = time.Now()
			log.Warn("waiting for writers: backlog over limit", "batches", info.State.Msgs, "limit", p.opts.MaxBacklog)
		}
		if err := poll.Wait(ctx); err != nil {
			return err
		}
	}
}

// publishEvent publishes e and waits for the stream's acknowledgement.
func (p *Producer) publishEvent(ctx context.Context, e schemas.Event) error {
	return natsbus.PublishEvent(ctx, p.opts.JS, e)
}
