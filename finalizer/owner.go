package finalizer

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agnes-ai/connector-kit/internal/errclass"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
)

// owner is the one goroutine that decides for one source. It folds the
// source's run and stream events into its state, finalizes its runs,
// publishes its streamed parts and compacts its partitions, one job at a
// time: nothing else reads or writes that state or the source's extract
// folder, so none of it needs a lock. The event followers only route events
// to it (see route); a compaction's merges are built on a helper goroutine
// that reports back through the inbox, so events do not wait for them.
type owner struct {
	f      *Finalizer
	source string
	inbox  mailbox

	runs map[string]*runState
	// dirty are the runs touched since the last look: only they can have
	// become complete.
	dirty  map[string]bool
	stream *streamState
	// runsLive, streamLive: the replay of that event stream caught up, so
	// the history is known and acting on it is safe.
	runsLive, streamLive bool
	// streamRetry paces a failing publish of streamed parts; runs have
	// their own in runState.
	streamRetry retry
	// compacting: merges are being built beside the loop; compactDue: a
	// publish of streamed parts left partitions that may need one.
	compacting, compactDue bool
	// sweepAt is when staging is next swept (see SweepEvery); zero: at once.
	sweepAt time.Time
	helpers sync.WaitGroup
	// busy mirrors "there is work": read by Finalizer.Busy.
	busy atomic.Bool
}

// retry is the pacing of one job that failed: when it may run again and
// since when it fails.
type retry struct {
	since, at time.Time
	backoff   natsbus.Backoff
}

func (r *retry) due(now time.Time) bool { return !now.Before(r.at) }

// failed records a failure at now and schedules the next try.
func (r *retry) failed(now time.Time) time.Duration {
	if r.since.IsZero() {
		r.since = now
	}
	d := r.backoff.Next()
	r.at = now.Add(d)
	return d
}

// reset forgets the failures after a success: the next one waits the
// shortest delay.
func (r *retry) reset() {
	r.since, r.at = time.Time{}, time.Time{}
	r.backoff.Reset()
}

// message is what the followers and helpers send an owner.
type message struct {
	run, stream    *schemas.Event
	runsCaughtUp   bool
	streamCaughtUp bool
	built          *compactionBuild
}

// mailbox is an owner's unbounded inbox: routing never blocks on a busy
// owner, and everything that arrived while a job ran is folded before the
// next one (so a burst of streamed parts is published together).
type mailbox struct {
	mu     sync.Mutex
	queue  []message
	notify chan struct{}
}

func (m *mailbox) put(msg message) {
	m.mu.Lock()
	m.queue = append(m.queue, msg)
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

func (m *mailbox) take() []message {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.queue
	m.queue = nil
	return q
}

func (m *mailbox) empty() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.queue) == 0
}

func newOwner(f *Finalizer, source string) *owner {
	o := &owner{f: f, source: source, inbox: mailbox{notify: make(chan struct{}, 1)},
		runs: map[string]*runState{}, dirty: map[string]bool{}, stream: newStreamState()}
	o.streamRetry.backoff = natsbus.Backoff{Min: 200 * time.Millisecond, Max: 15 * time.Second}
	return o
}

// loop runs the owner until ctx ends, then waits for its helpers.
func (o *owner) loop(ctx context.Context) {
	defer o.helpers.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		o.busy.Store(true)
		for _, m := range o.inbox.take() {
			o.fold(ctx, m)
		}
		if ctx.Err() != nil {
			return
		}
		wait := o.act(ctx)
		o.busy.Store(o.working())
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-o.inbox.notify:
		case <-timer.C:
		}
	}
}

// working reports whether anything waits: streamed parts to publish or a
// compaction (messages not yet folded are the inbox's, which Busy reads).
func (o *owner) working() bool {
	return len(o.stream.pending) > 0 || o.compacting || o.compactDue
}

func (o *owner) fold(ctx context.Context, m message) {
	switch {
	case m.run != nil:
		o.applyRun(*m.run)
		o.dirty[m.run.RunID] = true
	case m.stream != nil:
		o.applyStream(*m.stream)
	case m.runsCaughtUp:
		// The history is read: the first act sweeps staging at once.
		o.runsLive = true
		for id := range o.runs {
			o.dirty[id] = true
		}
	case m.streamCaughtUp:
		o.streamLive = true
		o.adoptStaged()
	case m.built != nil:
		o.compacting = false
		if err := o.applyCompaction(ctx, m.built); err != nil {
			o.f.log.Warn("compact partitions", "source", o.source, "err", err)
		}
	}
}

// idleWait is how long an owner with nothing scheduled sleeps before it
// looks again (a message wakes it at once).
const idleWait = time.Minute

// act does the jobs that are due, in order: runs that became complete (or
// whose retry is due), then pending streamed parts, then a compaction. It
// returns how long to wait before the next scheduled job.
func (o *owner) act(ctx context.Context) time.Duration {
	now := time.Now()
	wait := idleWait
	if o.runsLive {
		if !now.Before(o.sweepAt) {
			o.sweep(ctx, now)
			o.sweepAt = now.Add(SweepEvery)
		}
		wait = min(wait, o.sweepAt.Sub(now))
		ids := make([]string, 0, len(o.dirty))
		for id := range o.dirty {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			r := o.runs[id]
			if r == nil || !r.ready() {
				delete(o.dirty, id)
				continue
			}
			if !r.retry.due(now) {
				wait = min(wait, r.retry.at.Sub(now))
				continue
			}
			if o.compacting && r.placesPartitions() {
				continue // after the compaction: its result wakes the loop
			}
			o.finalizeRun(ctx, id, r)
			if r.ready() {
				wait = min(wait, time.Until(r.retry.at))
			} else {
				delete(o.dirty, id)
			}
		}
	}
	// Placing parts into partitions waits for a compaction in progress:
	// both rewrite the same partitions and catalog entries.
	if o.streamLive && len(o.stream.pending) > 0 && !o.compacting {
		if !o.streamRetry.due(now) {
			return min(wait, o.streamRetry.at.Sub(now))
		}
		o.publishPending(ctx)
		if len(o.stream.pending) > 0 {
			return min(wait, time.Until(o.streamRetry.at))
		}
	}
	if o.compactDue && !o.compacting && len(o.stream.pending) == 0 {
		o.compactDue = false
		o.startCompaction(ctx)
	}
	return max(wait, time.Millisecond)
}

// finalizeRun publishes one complete run. Finalizing is idempotent, so a
// failure of the bus or the disk is retried with backoff for
// FinalizeRetryBudget before the run is reported failed.
func (o *owner) finalizeRun(ctx context.Context, id string, r *runState) {
	f := o.f
	start := time.Now()
	ev, err := f.finalize(ctx, id, r)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		// An error that repeats on every try fails the run at once; any
		// other is retried for FinalizeRetryBudget.
		if errclass.IsDeterministic(err) || (!r.retry.since.IsZero() && now.Sub(r.retry.since) > FinalizeRetryBudget) {
			f.log.Error("finalize run", "run", id, "source", r.source, "err", err)
			r.failed = true
			f.release(ctx, r.source, id)
			f.announce(ctx, schemas.Event{Type: schemas.EventRunFailed, RunID: id, Source: r.source,
				Attempt: r.done.Attempt, Error: "finalize: " + err.Error()})
			return
		}
		metrics.FinalizeFailures.WithLabelValues(metrics.Source(r.source)).Inc()
		f.log.Warn("finalize run failed; retrying", "run", id, "source", r.source, "err", err, "in", r.retry.failed(now))
		return
	}
	// Published: the extract_published event that follows only confirms it.
	r.published, r.tables = true, map[string]*tableState{}
	// Free the source before announcing, so whoever waits for the
	// announcement can start the next sync at once.
	f.release(ctx, r.source, id)
	if !f.announce(ctx, ev) {
		return
	}
	// The parts are no longer referenced: the published file is a copy or a
	// hard link.
	f.dropStaging(r.source, id)
	metrics.ExtractsPublished.WithLabelValues(metrics.Source(r.source)).Inc()
	metrics.PublishSeconds.Observe(time.Since(start).Seconds())
	f.log.Info("extract published", "run", id, "source", r.source, "path", ev.Path, "tables", len(ev.Results),
		"duration", time.Since(start).Round(time.Millisecond))
}

// publishPending publishes the source's pending streamed parts in one
// extract.
func (o *owner) publishPending(ctx context.Context) {
	st := o.stream
	batch := make([]*pendingPart, 0, len(st.pending))
	for _, pp := range st.pending {
		batch = append(batch, pp)
	}
	done, ev, err := o.f.publishStream(ctx, o.source, batch, st.tables)
	for _, k := range done {
		delete(st.pending, k)
	}
	if ev != nil {
		o.f.announce(ctx, *ev)
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		metrics.FinalizeFailures.WithLabelValues(metrics.Source(o.source)).Inc()
		d := o.streamRetry.failed(time.Now())
		o.f.log.Warn("publish streamed parts failed; retrying", "source", o.source, "parts", len(batch), "err", err, "in", d)
		return
	}
	o.streamRetry.reset()
	// Nothing waits once the parts are in: compact what they left behind.
	o.compactDue = true
}
