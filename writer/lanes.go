package writer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// consumers creates (or updates) the shared consumer of plain data
// subjects and one consumer per lane (schemas.LaneConsumer). A work-queue
// stream needs its consumers' filters not to overlap, so the shared one is
// narrowed first: before lanes it took every subject.
func (w *Writer) consumers(ctx context.Context) (plain jetstream.Consumer, lanes []jetstream.Consumer, err error) {
	cfg := func(name, filter string) jetstream.ConsumerConfig {
		return jetstream.ConsumerConfig{Durable: name, FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: w.opts.AckWait, MaxDeliver: natsbus.Unlimited, MaxAckPending: 20000}
	}
	if plain, err = w.opts.JS.CreateOrUpdateConsumer(ctx, schemas.DataStream, cfg(schemas.WriterConsumer, schemas.PlainDataFilter)); err != nil {
		return nil, nil, fmt.Errorf("create consumer %s: %w", schemas.WriterConsumer, err)
	}
	for i := range schemas.DataLanes {
		c, err := w.opts.JS.CreateOrUpdateConsumer(ctx, schemas.DataStream, cfg(schemas.LaneConsumer(i), schemas.LaneFilter(i)))
		if err != nil {
			return nil, nil, fmt.Errorf("create consumer %s: %w", schemas.LaneConsumer(i), err)
		}
		lanes = append(lanes, c)
	}
	return plain, lanes, nil
}

// lanes shares the data lanes out among the live writers. Each writer puts
// a key in schemas.WriterBucket every schemas.WriterHeartbeat and watches
// the others'; the live ones, sorted by key, take lane i in turn (the
// writer at i mod n), so each gets an even share, and a writer not heard
// from for schemas.WriterTTL (killed, cut off) loses its lanes to the
// rest. While two writers disagree for a moment both read a lane: a table's
// parts may then mix seqs, which costs the finalizer a re-encode, never
// rows.
type lanes struct {
	w *Writer
	// ctx is the writer's: batches, parts and their events outlive the
	// lane they came on (a lane handed to another writer stops its pull,
	// not the writes of what it delivered).
	ctx  context.Context
	kv   jetstream.KeyValue
	key  string
	cons []jetstream.Consumer
	// seen is when each other writer was last heard from.
	seen    map[string]time.Time
	running map[int]context.CancelFunc
	wg      sync.WaitGroup
	// mine is the lanes this writer reads.
	mine []int
}

// run keeps the lanes shared until ctx ends, then stops reading them and
// removes the writer's key, so that the others take its lanes at once.
func (l *lanes) run(ctx context.Context) {
	defer l.stopAll()
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		l.kv.Delete(dctx, l.key)
	}()
	l.beat(ctx)
	// The watch of the bucket, opened again when it breaks.
	var watcher jetstream.KeyWatcher
	var updates <-chan jetstream.KeyValueEntry
	rewatch := func() {
		if watcher != nil {
			watcher.Stop()
		}
		watcher, updates = nil, nil
		if w, err := l.kv.WatchAll(ctx); err == nil {
			watcher, updates = w, w.Updates()
		}
	}
	defer func() {
		if watcher != nil {
			watcher.Stop()
		}
	}()
	rewatch()
	// Until the watch has delivered the keys already there, this writer
	// does not know its peers and takes no lane.
	ready := false
	tick := time.NewTicker(schemas.WriterHeartbeat / 2)
	defer tick.Stop()
	beat := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-updates:
			switch {
			case !ok:
				updates, ready = nil, false // the watch broke: open it again below
			case e == nil:
				ready = true
			default:
				l.note(e, ready)
			}
			if ready {
				l.assign(ctx)
			}
			continue
		case <-tick.C:
		}
		if time.Since(beat) >= schemas.WriterHeartbeat {
			l.beat(ctx)
			beat = time.Now()
		}
		if updates == nil {
			rewatch()
		}
		if ready {
			l.assign(ctx)
		}
	}
}

// beat refreshes the writer's key; a failure (the bus away) is retried at
// the next beat, and the others may meanwhile take this writer's lanes.
func (l *lanes) beat(ctx context.Context) {
	bctx, cancel := context.WithTimeout(ctx, schemas.WriterHeartbeat)
	defer cancel()
	if _, err := l.kv.PutString(bctx, l.key, l.w.opts.Name); err != nil && ctx.Err() == nil {
		l.w.log.Debug("writer heartbeat failed", "err", err)
	}
}

// note records an entry of the bucket. A key already there when the watch
// began counts only if it was written within WriterTTL (by the server's
// clock); later puts count from when they arrive.
func (l *lanes) note(e jetstream.KeyValueEntry, live bool) {
	if e.Key() == l.key {
		return
	}
	switch {
	case e.Operation() != jetstream.KeyValuePut:
		delete(l.seen, e.Key())
	case live || time.Since(e.Created()) < schemas.WriterTTL:
		l.seen[e.Key()] = time.Now()
	}
}

// assign starts reading the lanes that are this writer's share now and
// stops reading the rest.
func (l *lanes) assign(ctx context.Context) {
	members := []string{l.key}
	for k, t := range l.seen {
		if time.Since(t) < schemas.WriterTTL {
			members = append(members, k)
		} else {
			delete(l.seen, k)
		}
	}
	slices.Sort(members)
	me := slices.Index(members, l.key)
	var mine []int
	for i := range schemas.DataLanes {
		if i%len(members) == me {
			mine = append(mine, i)
		}
	}
	if slices.Equal(mine, l.mine) {
		return
	}
	for i, stop := range l.running {
		if !slices.Contains(mine, i) {
			stop()
			delete(l.running, i)
		}
	}
	prefetch := max(2, l.w.opts.Prefetch/len(mine))
	for _, i := range mine {
		if l.running[i] == nil {
			lctx, cancel := context.WithCancel(ctx)
			l.running[i] = cancel
			l.consume(lctx, l.cons[i], schemas.LaneConsumer(i), i, prefetch)
		}
	}
	l.w.log.Info("lanes assigned", "writers", len(members), "lanes", fmt.Sprint(mine))
	l.mine = mine
	l.w.lanes.Store(&mine)
}

// consume reads cons, the consumer of lane (-1: plain subjects), in the
// background until ctx ends.
func (l *lanes) consume(ctx context.Context, cons jetstream.Consumer, name string, lane, prefetch int) {
	w := l.w
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		err := natsbus.Consume(ctx, cons, natsbus.ConsumeOptions{Name: name, Logger: w.log, Prefetch: prefetch,
			Handle:     func(_ context.Context, m jetstream.Msg) { w.handleLane(ctx, l.ctx, lane, m) },
			Wait:       w.fetchWaitLocked,
			Idle:       func(context.Context) { w.flushDueLocked(l.ctx) },
			MaxDeliver: w.opts.MaxDeliver,
			Exhausted:  func(_ context.Context, m jetstream.Msg, cause error) { w.exhaustedLocked(l.ctx, m, cause) }})
		if err != nil && !errors.Is(err, context.Canceled) {
			w.log.Error("consumer stopped", "consumer", name, "err", err)
		}
	}()
}

func (l *lanes) stopAll() {
	for i, stop := range l.running {
		stop()
		delete(l.running, i)
	}
	l.wg.Wait()
}

// Lanes is the lanes the writer reads now.
func (w *Writer) Lanes() []int {
	if p := w.lanes.Load(); p != nil {
		return *p
	}
	return nil
}

// handleLane hands a batch that came on lane (-1: a plain subject) to the
// writer once gate lets it.
func (w *Writer) handleLane(pull, ctx context.Context, lane int, msg jetstream.Msg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gate(pull, lane)
	w.handle(ctx, msg)
}

// gate holds a batch of a lane on which no part is in the making while
// MaxOpenLanes other lanes have one, until one of them is written, FlushAfter
// passes or pull ends. A writer behind its lanes would otherwise take all of
// them in turn and build a part on each at once: memory for every lane, and
// each part cut short by the time limit. The gate makes it finish the
// chunks it started first. The caller holds mu; gate releases it while it
// waits.
func (w *Writer) gate(pull context.Context, lane int) {
	if lane < 0 {
		return
	}
	var deadline <-chan time.Time
	for w.open[lane] == 0 && len(w.open) >= w.opts.MaxOpenLanes {
		if deadline == nil {
			t := time.NewTimer(w.opts.FlushAfter)
			defer t.Stop()
			deadline = t.C
		}
		closed := w.laneClosed
		w.mu.Unlock()
		expired := false
		select {
		case <-closed:
		case <-deadline:
			expired = true
		case <-pull.Done():
			expired = true
		}
		w.mu.Lock()
		if expired {
			return
		}
	}
}

// opened and closed count the buffers open on a lane; the caller holds mu.
func (w *Writer) opened(lane int) {
	if lane >= 0 {
		w.open[lane]++
		w.PeakOpenLanes = max(w.PeakOpenLanes, len(w.open))
	}
}

func (w *Writer) closed(lane int) {
	if lane < 0 {
		return
	}
	if w.open[lane]--; w.open[lane] <= 0 {
		delete(w.open, lane)
		close(w.laneClosed)
		w.laneClosed = make(chan struct{})
	}
}
