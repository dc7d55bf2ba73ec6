package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotFound: no record of that run (never asked for, or expired).
var ErrNotFound = errors.New("no such run")

// Store reads and writes run records.
type Store struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

// Open opens the runs bucket, retrying while the bus is unavailable.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := natsbus.KeyValue(ctx, js, schemas.RunsBucket)
	if err != nil {
		return nil, err
	}
	return &Store{js: js, kv: kv}, nil
}

// Key is a run's key in the bucket. Both parts were validated (an
// identifier and a UUID), so the key is a valid subject token pair.
func Key(source, run string) string { return source + "." + run }

// Get reads the record of run of source.
func (s *Store) Get(ctx context.Context, source, run string) (Record, error) {
	r, _, err := s.get(ctx, source, run)
	return r, err
}

func (s *Store) get(ctx context.Context, source, run string) (Record, uint64, error) {
	e, err := s.kv.Get(ctx, Key(source, run))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Record{}, 0, fmt.Errorf("%w: run %s of source %s", ErrNotFound, run, source)
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("read run %s: %w", run, err)
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return Record{}, 0, fmt.Errorf("run %s: stored record is not JSON: %w", run, err)
	}
	return r, e.Revision(), nil
}

// Update applies fn to the record of run of source (a new one when there
// is none) and stores it, again from a fresh read when another writer got
// there first.
func (s *Store) Update(ctx context.Context, source, run string, fn func(*Record)) (Record, error) {
	for {
		r, rev, err := s.get(ctx, source, run)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return Record{}, err
		}
		fn(&r)
		b, err := json.Marshal(r)
		if err != nil {
			return Record{}, err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, Key(source, run), b)
		} else {
			_, err = s.kv.Update(ctx, Key(source, run), b, rev)
		}
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongRevision(err) {
			return Record{}, fmt.Errorf("store run %s: %w", run, err)
		}
		if ctx.Err() != nil {
			return Record{}, ctx.Err()
		}
	}
}

// isWrongRevision: the record changed since it was read.
func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// Queue records a requested run before its request is published.
func (s *Store) Queue(ctx context.Context, req schemas.SyncRequest) error {
	_, err := s.Update(ctx, req.Source, req.RunID, func(r *Record) {
		q := Queue(req)
		if r.RunID == "" {
			*r = q
			return
		}
		// Events came first (a slow requester): keep them, add what only
		// the request knows.
		r.QueuedAt, r.Trigger = q.QueuedAt, q.Trigger
	})
	return err
}

// Recorder folds run events into records. Any number may run (one per
// finalizer); they share one durable consumer, and Apply makes the order
// in which they store events irrelevant.
type Recorder struct {
	js    jetstream.JetStream
	store *Store
	log   *slog.Logger
}

// RecorderConsumer is the recorders' durable consumer on the event stream.
const RecorderConsumer = "recorders"

// NewRecorder returns a recorder; Run starts it.
func NewRecorder(js jetstream.JetStream, log *slog.Logger) *Recorder {
	if log == nil {
		log = slog.Default()
	}
	return &Recorder{js: js, log: log.With("service", "recorder")}
}

// Run records events until ctx ends.
func (r *Recorder) Run(ctx context.Context) error {
	store, err := Open(ctx, r.js)
	if err != nil {
		return err
	}
	r.store = store
	var filters []string
	for _, t := range Recorded {
		filters = append(filters, "agnes.events.*.*."+string(t))
	}
	cons, err := r.js.CreateOrUpdateConsumer(ctx, schemas.EventStream, jetstream.ConsumerConfig{Durable: RecorderConsumer,
		FilterSubjects: filters, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: natsbus.Unlimited})
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", RecorderConsumer, err)
	}
	r.seedLastSuccess(ctx)
	r.log.Info("recorder started")
	return natsbus.Consume(ctx, cons, natsbus.ConsumeOptions{Name: RecorderConsumer, Logger: r.log, Prefetch: 64, Handle: r.handle,
		MaxDeliver: 10, Exhausted: func(_ context.Context, msg jetstream.Msg, cause error) {
			r.log.Error("run event not recorded", "subject", schemas.Clip(msg.Subject()), "err", cause)
			natsbus.Settle(r.log, "term", msg.Term())
		}})
}

// handle records one event. An event that is not what its subject says
// (forged or corrupt) is dropped with a line; a store failure is retried.
func (r *Recorder) handle(ctx context.Context, msg jetstream.Msg) {
	ev, err := schemas.DecodeEvent(msg.Data())
	if err == nil {
		err = schemas.CheckEventSubject(msg.Subject(), ev)
	}
	if err == nil && ev.RunID == schemas.StreamRun {
		err = errors.New("the stream run has no record")
	}
	if err != nil {
		r.log.Warn("run event not recorded", "subject", schemas.Clip(msg.Subject()), "err", err)
		natsbus.Settle(r.log, "term", msg.Term())
		return
	}
	var was Status
	rec, err := r.store.Update(ctx, ev.Source, ev.RunID, func(rec *Record) { was = rec.Status; rec.Apply(ev) })
	if err != nil {
		r.log.Warn("could not record run event; retrying", "run", ev.RunID, "type", ev.Type, "err", err)
		natsbus.Settle(r.log, "nak", msg.NakWithDelay(time.Second))
		return
	}
	if rec.Status != was && rec.Status.Terminal() {
		observeEnd(rec)
	}
	natsbus.Settle(r.log, "ack", msg.Ack())
}

// ErrFinished: the run is over; it cannot be cancelled.
var ErrFinished = errors.New("the run has already ended")

// Cancel asks for run to stop: it marks the record, so that a producer
// about to take or running the run stops it, and announces run_cancelled,
// so that the finalizer drops what the run staged and frees the source, and
// the record ends cancelled. A run that has ended is ErrFinished.
func (s *Store) Cancel(ctx context.Context, log *slog.Logger, run string) (Record, error) {
	rec, err := s.Find(ctx, run)
	if err != nil {
		return Record{}, err
	}
	var finished Status
	rec, err = s.Update(ctx, rec.Source, run, func(r *Record) {
		if finished = ""; r.Status.Terminal() {
			finished = r.Status
			return
		}
		r.CancelRequested = true
	})
	if err != nil {
		return Record{}, err
	}
	if finished != "" {
		return rec, fmt.Errorf("%w: run %s is %s", ErrFinished, run, finished)
	}
	ev := schemas.Event{Type: schemas.EventRunCancelled, RunID: run, Source: rec.Source, Error: "cancelled on request"}
	if !natsbus.Announce(ctx, s.js, log, ev) {
		return rec, fmt.Errorf("announce the cancel of run %s: the bus did not take it; cancel again", run)
	}
	return rec, nil
}

// Ended reports whether a request of run must not run (again): a cancel
// was asked for, or its record has ended (cancelled, abandoned, or a
// redelivery of a run that already has its answer). A missing record (a
// client that wrote none) has not.
func (s *Store) Ended(ctx context.Context, source, run string) (Status, bool) {
	r, err := s.Get(ctx, source, run)
	if err != nil {
		return "", false
	}
	if r.CancelRequested {
		return Cancelled, true
	}
	return r.Status, r.Status.Terminal()
}

// stopped: the producer must stop reading the run.
func (r Record) stopped() bool {
	return r.CancelRequested || r.Status == Cancelled || r.Status == Abandoned
}

// WatchCancel calls cancel once a cancel of run is asked for or the run
// is found abandoned, until ctx ends. A watch that cannot start leaves the run uncancellable through the
// producer (the finalizer still drops it).
func (s *Store) WatchCancel(ctx context.Context, source, run string, cancel func()) {
	w, err := s.kv.Watch(ctx, Key(source, run), jetstream.UpdatesOnly())
	if err != nil {
		return
	}
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				var r Record
				if e != nil && json.Unmarshal(e.Value(), &r) == nil && r.stopped() {
					cancel()
					return
				}
			}
		}
	}()
}

// Skip records req as skipped for reason: a scheduled tick that found its
// source still syncing. The record is final at once; nothing runs.
func (s *Store) Skip(ctx context.Context, req schemas.SyncRequest, reason string) (Record, error) {
	return s.Update(ctx, req.Source, req.RunID, func(r *Record) {
		if r.RunID == "" {
			*r = Queue(req)
		}
		r.end(Skipped, reason, time.Now().UTC())
	})
}

// WaitEnded waits until the record of run has a final status, or ctx ends.
func (s *Store) WaitEnded(ctx context.Context, source, run string) (Record, error) {
	w, err := s.kv.Watch(ctx, Key(source, run))
	if err != nil {
		return Record{}, fmt.Errorf("watch run %s: %w", run, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return Record{}, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return Record{}, fmt.Errorf("watch run %s: closed", run)
			}
			var r Record
			if e != nil && e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &r) == nil && r.Status.Terminal() {
				return r, nil
			}
		}
	}
}

// observeEnd counts a run that just ended (exactly one Update moves a
// record to its final status, so each run is counted once however many
// recorders run) and, for a published one, its source's last success.
func observeEnd(rec Record) {
	source := metrics.Source(rec.Source)
	metrics.RunsEnded.WithLabelValues(source, string(rec.Status)).Inc()
	start := rec.StartedAt
	if start == nil {
		start = rec.QueuedAt
	}
	if start != nil && rec.EndedAt != nil && !rec.EndedAt.Before(*start) && rec.Status != Skipped && rec.Status != Rejected {
		metrics.RunSeconds.WithLabelValues(source).Observe(rec.EndedAt.Sub(*start).Seconds())
	}
	if rec.Status == Published && rec.EndedAt != nil && source != metrics.Other {
		setLastSuccess(source, *rec.EndedAt)
	}
}

// setLastSuccess moves the source's last-success gauge forward, never back
// (records may end out of order).
func setLastSuccess(source string, at time.Time) {
	lastMu.Lock()
	defer lastMu.Unlock()
	if v := float64(at.UnixNano()) / 1e9; v > last[source] {
		last[source] = v
		metrics.LastSuccess.WithLabelValues(source).Set(v)
	}
}

var (
	lastMu sync.Mutex
	last   = map[string]float64{}
)

// seedLastSuccess sets each configured source's last success from the
// history at start, so that a fresh process does not look stale.
func (r *Recorder) seedLastSuccess(ctx context.Context) {
	var refs []SourceRef
	for _, name := range metrics.Sources() {
		refs = append(refs, SourceRef{Name: name})
	}
	if len(refs) == 0 {
		return
	}
	sts, err := r.store.Sources(ctx, refs, time.Now())
	if err != nil {
		r.log.Warn("could not read the last successes for the metrics", "err", err)
		return
	}
	for _, st := range sts {
		if st.LastSuccessAt != nil {
			setLastSuccess(st.Name, *st.LastSuccessAt)
		}
	}
}
