package schedules

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

// Scheduler turns the ticks the bus fires into runs. Any number run (one
// beside each producer of "da serve"); they share one durable consumer,
// so each tick is taken by one of them, and a tick taken twice (a
// redelivery) gives the same run id, so it still makes one run.
type Scheduler struct {
	js    jetstream.JetStream
	cfg   *config.Config
	log   *slog.Logger
	store *runs.Store
	locks jetstream.KeyValue
}

// New returns a scheduler for cfg's sources; Run starts it.
func New(js jetstream.JetStream, cfg *config.Config, log *slog.Logger) *Scheduler {
	if log == nil {
		log = slog.Default()
	}
	return &Scheduler{js: js, cfg: cfg, log: log.With("service", "scheduler")}
}

// Run takes ticks until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	var err error
	if s.store, err = runs.Open(ctx, s.js); err != nil {
		return err
	}
	if s.locks, err = natsbus.KeyValue(ctx, s.js, schemas.LockBucket); err != nil {
		return err
	}
	// Ticks fired while no scheduler ran are not caught up on: a
	// scheduler starting for the first time takes only new ones.
	cons, err := s.js.CreateOrUpdateConsumer(ctx, schemas.ScheduleStream, jetstream.ConsumerConfig{
		Durable: schemas.SchedulerConsumer, FilterSubject: schemas.TickFilter, DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: natsbus.Unlimited})
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", schemas.SchedulerConsumer, err)
	}
	s.log.Info("scheduler started", "schedules", len(Defs(s.cfg)))
	return natsbus.Consume(ctx, cons, natsbus.ConsumeOptions{Name: schemas.SchedulerConsumer, Logger: s.log, Handle: s.handle,
		MaxDeliver: 20, Exhausted: func(_ context.Context, msg jetstream.Msg, cause error) {
			s.log.Error("schedule tick dropped", "subject", schemas.Clip(msg.Subject()), "err", cause)
			natsbus.Settle(s.log, "term", msg.Term())
		}})
}

// TickRun is the run id of the tick stored at seq at time at: the same
// for every delivery of the tick, distinct for every tick.
func TickRun(seq uint64, at time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], seq)
	binary.BigEndian.PutUint64(b[8:], uint64(at.UnixNano()))
	return uuid.NewHash(sha1.New(), tickNamespace, b[:], 5).String()
}

var tickNamespace = uuid.MustParse("6b3f7c2e-2f4d-4a8e-9a51-0d1e7c0a5a11")

// request is the sync request of the tick msg: its source (and table) from
// the subject, checked against the config. ok is false (and the tick
// settled) for a tick of no configured schedule.
func (s *Scheduler) request(msg jetstream.Msg) (req schemas.SyncRequest, ok bool) {
	source, table, err := schemas.ParseScheduleSubject(msg.Subject())
	var src config.Source
	if err == nil {
		src, err = s.cfg.Source(source)
	}
	if err == nil && (table == "" && src.Schedule == "" || table != "" && src.TableOptions[table].Schedule == "") {
		err = fmt.Errorf("no schedule of %s is configured here; the next \"da serve\" start removes it", msg.Subject())
	}
	md, merr := msg.Metadata()
	if err == nil && merr != nil {
		err = merr
	}
	if err != nil {
		s.log.Warn("schedule tick ignored", "subject", schemas.Clip(msg.Subject()), "err", err)
		natsbus.Settle(s.log, "term", msg.Term())
		return req, false
	}
	req = schemas.SyncRequest{RunID: TickRun(md.Sequence.Stream, md.Timestamp), Source: source, RequestedAt: md.Timestamp.UTC(),
		RequestedBy: schemas.TriggerSchedule}
	if table != "" {
		req.Tables = []string{table}
	} else {
		req.ExceptTables = src.ScheduledTables()
	}
	return req, true
}

// handle makes one run of a tick: the source's lock is taken for it (as
// the sync API does) and its request published; a source still syncing
// another run gets the run recorded skipped instead.
func (s *Scheduler) handle(ctx context.Context, msg jetstream.Msg) {
	req, ok := s.request(msg)
	if !ok {
		return
	}
	log := s.log.With("run", req.RunID, "source", req.Source)
	holder, err := s.store.Lock(ctx, s.log, s.locks, req.Source, req.RunID)
	if err != nil {
		log.Warn("scheduled run: could not lock the source; retrying", "err", err)
		natsbus.Settle(log, "nak", msg.NakWithDelay(time.Second))
		return
	}
	if holder != "" {
		reason := fmt.Sprintf("skipped: the source was still syncing run %s when the schedule fired", holder)
		if _, err := s.store.Skip(ctx, req, reason); err != nil {
			log.Warn("record skipped run; retrying", "err", err)
			natsbus.Settle(log, "nak", msg.NakWithDelay(time.Second))
			return
		}
		metrics.ScheduleTicks.WithLabelValues(req.Source, "skipped").Inc()
		log.Info("scheduled run skipped: source still syncing", "running", holder)
		natsbus.Settle(log, "ack", msg.Ack())
		return
	}
	if err := s.publish(ctx, req); err != nil {
		// The lock is released for the retry (or the next tick).
		_ = natsbus.ReleaseRun(context.WithoutCancel(ctx), s.locks, req.Source, req.RunID)
		log.Warn("scheduled run: could not queue; retrying", "err", err)
		natsbus.Settle(log, "nak", msg.NakWithDelay(time.Second))
		return
	}
	metrics.ScheduleTicks.WithLabelValues(req.Source, "queued").Inc()
	log.Info("scheduled run queued", "tables", req.Tables, "except", req.ExceptTables)
	natsbus.Settle(log, "ack", msg.Ack())
}

// publish records the run queued and publishes its request.
func (s *Scheduler) publish(ctx context.Context, req schemas.SyncRequest) error {
	if err := s.store.Queue(ctx, req); err != nil {
		return err
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	_, err = s.js.Publish(ctx, schemas.SyncSubject(req.Source), b, jetstream.WithMsgID(req.RunID))
	return err
}
