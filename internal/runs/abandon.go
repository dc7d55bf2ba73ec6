package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Abandonment: a run whose producer died holds its source's lock until the
// lock expires (schemas.LockTTL) and stays running in the history for
// good. Every producer keeps a key alive in schemas.ProducerBucket and
// names itself in the record of each run it takes (Claim), so a run whose
// producer's key is gone is known to have lost it within
// schemas.ProducerTTL. Such a run is abandoned (run_abandoned: the record
// ends abandoned, the finalizer drops its staging and frees the source)
// when nothing will take it over:
//   - the Reaper, beside every finalizer, finds no producer alive at all
//     (with one alive, the request's redelivery gives the run to it as a
//     new attempt);
//   - or a newer request of the source finds the lock held by such a run
//     (Store.TakeOver, by the producer and the sync API): the newer request
//     wins, at once.

// Claim names producer as the one running the newest attempt of req's run,
// recording the run first if no one did (a client that writes no record).
func (s *Store) Claim(ctx context.Context, req schemas.SyncRequest, producer string) (Record, error) {
	return s.Update(ctx, req.Source, req.RunID, func(r *Record) {
		if r.RunID == "" {
			*r = Queue(req)
		}
		r.Producer = producer
	})
}

// Liveness answers whether producers are alive.
type Liveness struct {
	kv jetstream.KeyValue
}

// OpenLiveness opens the producers bucket.
func OpenLiveness(ctx context.Context, js jetstream.JetStream) (*Liveness, error) {
	kv, err := natsbus.KeyValue(ctx, js, schemas.ProducerBucket)
	if err != nil {
		return nil, err
	}
	return &Liveness{kv: kv}, nil
}

// ProducerInfo is the value of a producer's key: what it can run.
type ProducerInfo struct {
	Name string `json:"name"`
	// Sources are the sources configured for it.
	Sources []string `json:"sources"`
}

// Beat keeps producer's key alive, saying which sources it runs, until ctx
// ends, then removes it.
func (l *Liveness) Beat(ctx context.Context, producer string, sources []string, log *slog.Logger) {
	b, _ := json.Marshal(ProducerInfo{Name: producer, Sources: sources})
	natsbus.Heartbeat(ctx, l.kv, producer, string(b), schemas.ProducerHeartbeat, log)
}

// Producers are the live producers and what each runs. A value that is
// not a ProducerInfo (an older producer) counts as a producer of no known
// sources.
func (l *Liveness) Producers(ctx context.Context) ([]ProducerInfo, error) {
	keys, err := l.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list producers: %w", err)
	}
	var names []string
	for k := range keys.Keys() {
		names = append(names, k)
	}
	keys.Stop()
	var out []ProducerInfo
	for _, k := range names {
		e, err := l.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // gone in between
		}
		if err != nil {
			return nil, fmt.Errorf("read producer %s: %w", k, err)
		}
		var p ProducerInfo
		if json.Unmarshal(e.Value(), &p) != nil {
			p = ProducerInfo{Name: k}
		}
		out = append(out, p)
	}
	return out, nil
}

// Alive reports whether producer refreshed its key within ProducerTTL.
func (l *Liveness) Alive(ctx context.Context, producer string) (bool, error) {
	_, err := l.kv.Get(ctx, producer)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	case errors.Is(err, jetstream.ErrInvalidKey):
		return false, nil // a forged name names no producer
	}
	return false, fmt.Errorf("read producer %s: %w", producer, err)
}

// Any reports whether any producer is alive.
func (l *Liveness) Any(ctx context.Context) (bool, error) {
	keys, err := l.kv.ListKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("list producers: %w", err)
	}
	defer keys.Stop()
	for range keys.Keys() {
		return true, nil
	}
	return false, nil
}

// deadRun reports why run of source has lost its producer, or "" when it
// has not: it has not started (queued: no producer named), it is past its
// producer (writing, ended; or its run_done is on the bus though the
// record does not show it yet), or its producer is alive.
func deadRun(ctx context.Context, store *Store, live *Liveness, source, run string) (string, error) {
	rec, err := store.Get(ctx, source, run)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if rec.Producer == "" || rec.Status.rank() > Running.rank() {
		return "", nil
	}
	if alive, err := live.Alive(ctx, rec.Producer); err != nil || alive {
		return "", err
	}
	stream, err := store.js.Stream(ctx, schemas.EventStream)
	if err != nil {
		return "", fmt.Errorf("read events of run %s: %w", run, err)
	}
	_, err = stream.GetLastMsgForSubject(ctx, schemas.EventSubject(source, run, schemas.EventRunDone))
	if err == nil {
		return "", nil // read to the end: the finalizer has it
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", fmt.Errorf("read events of run %s: %w", run, err)
	}
	return fmt.Sprintf("its producer %s stopped (no heartbeat for %s) before the run was read", rec.Producer, schemas.ProducerTTL), nil
}

// abandon announces run_abandoned for run of source.
func abandon(ctx context.Context, js jetstream.JetStream, log *slog.Logger, source, run, why string) bool {
	log.Warn("sync run abandoned", "source", source, "run", run, "why", why)
	return natsbus.Announce(ctx, js, log, schemas.Event{Type: schemas.EventRunAbandoned, RunID: run, Source: source, Error: why})
}

// TakeOver is for whoever wants the lock of source for run wants and finds
// it held by run holder (a producer given a request, the sync API): when
// holder has lost its producer, it is abandoned and its lock freed, and
// TakeOver reports true (the caller locks the source again). A live holder
// is left alone.
func (s *Store) TakeOver(ctx context.Context, log *slog.Logger, locks jetstream.KeyValue, source, holder, wants string) (bool, error) {
	if schemas.ValidateRunID(holder) != nil {
		return false, nil // not a lock any service takes
	}
	live, err := OpenLiveness(ctx, s.js)
	if err != nil {
		return false, err
	}
	why, err := deadRun(ctx, s, live, source, holder)
	if err != nil || why == "" {
		return false, err
	}
	if !abandon(ctx, s.js, log, source, holder, why+"; run "+wants+" of the source took its place") {
		return false, fmt.Errorf("announce that run %s is abandoned: %w", holder, ctx.Err())
	}
	if err := natsbus.ReleaseRun(ctx, locks, source, holder); err != nil {
		return false, err
	}
	return true, nil
}

// Lock takes the source's lock for run: before its request is published
// (the sync API, the scheduler; the producer then finds it held by its own
// run), or by the producer that got the request. It returns "" when the lock is run's, else the id of the run
// holding it. A lock held by a run whose producer died is taken over
// (TakeOver). Of concurrent callers exactly one gets the lock.
func (s *Store) Lock(ctx context.Context, log *slog.Logger, locks jetstream.KeyValue, source, run string) (string, error) {
	holder, err := natsbus.ClaimRun(ctx, locks, source, run)
	if err != nil || holder == "" {
		return holder, err
	}
	took, err := s.TakeOver(ctx, log, locks, source, holder, run)
	if err != nil {
		log.Warn("could not tell whether the running sync lost its producer", "run", holder, "source", source, "err", err)
	}
	if !took {
		return holder, nil
	}
	return natsbus.ClaimRun(ctx, locks, source, run)
}

// Reaper abandons the runs whose producer died while no producer is left
// to take them over. One runs beside every finalizer; two that find the
// same run announce it once (the event's id is deduplicated).
type Reaper struct {
	js  jetstream.JetStream
	log *slog.Logger
	// Every is how often the locks are looked at.
	Every time.Duration
}

// NewReaper returns a reaper; Run starts it.
func NewReaper(js jetstream.JetStream, log *slog.Logger) *Reaper {
	if log == nil {
		log = slog.Default()
	}
	return &Reaper{js: js, log: log.With("service", "reaper"), Every: schemas.ProducerHeartbeat}
}

// Run looks at the running syncs every Every until ctx ends.
func (r *Reaper) Run(ctx context.Context) error {
	store, err := Open(ctx, r.js)
	if err != nil {
		return err
	}
	live, err := OpenLiveness(ctx, r.js)
	if err != nil {
		return err
	}
	locks, err := natsbus.KeyValue(ctx, r.js, schemas.LockBucket)
	if err != nil {
		return err
	}
	tick := time.NewTicker(r.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := r.sweep(ctx, store, live, locks); err != nil && ctx.Err() == nil {
			r.log.Debug("looking for abandoned runs failed; again at the next tick", "err", err)
		}
	}
}

// sweep abandons each locked run that lost its producer, if no producer is
// alive.
func (r *Reaper) sweep(ctx context.Context, store *Store, live *Liveness, locks jetstream.KeyValue) error {
	keys, err := locks.ListKeys(ctx)
	if err != nil {
		return err
	}
	var sources []string
	for k := range keys.Keys() {
		sources = append(sources, k)
	}
	keys.Stop()
	for _, source := range sources {
		if schemas.ValidateName("source", source) != nil {
			continue // not a lock any service takes
		}
		holder, err := natsbus.LockHolder(ctx, locks, source)
		if err != nil || holder == "" || schemas.ValidateRunID(holder) != nil {
			continue
		}
		why, err := deadRun(ctx, store, live, source, holder)
		if err != nil || why == "" {
			continue
		}
		if alive, err := live.Any(ctx); err != nil || alive {
			// A producer will get the request again and retry the run.
			continue
		}
		abandon(ctx, r.js, r.log, source, holder, why+" and no producer is left to take it over")
	}
	return nil
}
