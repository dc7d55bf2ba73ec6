// Package schedules runs the configured sync schedules on the bus: each is
// a nats-server message schedule in the AGNES_SCHEDULES stream, which the
// server fires (replicated with the stream, surviving restarts, once per
// tick) as a tick message; the scheduler turns each tick into one run.
// "da serve" reconciles the config's schedules into the stream at start.
// See docs/schedules.md.
package schedules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Message-schedule headers (nats-server ADR-51).
const (
	headerSchedule = "Nats-Schedule"
	headerTarget   = "Nats-Schedule-Target"
	headerZone     = "Nats-Schedule-Time-Zone"
	// headerNext is set on a tick: when the schedule fires next.
	headerNext = "Nats-Schedule-Next"
)

// Def is the body of a schedule message: what it schedules.
type Def struct {
	Source string `json:"source"`
	Table  string `json:"table,omitempty"`
	Spec   string `json:"schedule"`
	Zone   string `json:"schedule_timezone,omitempty"`
}

// subject is where the schedule is kept.
func (d Def) subject() string { return schemas.ScheduleSubject(d.Source, d.Table) }

// msg is the schedule message of d.
func (d Def) msg() *nats.Msg {
	m := nats.NewMsg(d.subject())
	m.Data, _ = json.Marshal(d)
	m.Header.Set(headerSchedule, d.Spec)
	m.Header.Set(headerTarget, schemas.TickSubject(d.Source, d.Table))
	if d.Zone != "" {
		m.Header.Set(headerZone, d.Zone)
	}
	return m
}

// same reports whether the stored schedule message m is d's, so that an
// unchanged schedule is left as it is (publishing it again would restart
// an @every interval).
func (d Def) same(m *jetstream.RawStreamMsg) bool {
	want := d.msg()
	for _, h := range []string{headerSchedule, headerTarget, headerZone} {
		if m.Header.Get(h) != want.Header.Get(h) {
			return false
		}
	}
	return string(m.Data) == string(want.Data)
}

// Defs are the schedules the config asks for.
func Defs(cfg *config.Config) []Def {
	var out []Def
	for _, src := range cfg.Sources {
		for _, s := range src.Schedules() {
			out = append(out, Def{Source: s.Source, Table: s.Table, Spec: s.Spec, Zone: s.Zone})
		}
	}
	return out
}

// Changes says what Reconcile did, by schedule subject.
type Changes struct {
	Added, Changed, Removed, Kept []string
}

// ErrNoSchedules: the server does not run message schedules.
var ErrNoSchedules = errors.New("the NATS server does not run message schedules (nats-server 2.12 or newer is needed)")

// Reconcile makes the stream's schedules the config's: it adds the new
// ones, replaces the changed ones and removes those no longer configured
// (with their ticks). An unchanged schedule is left alone.
func Reconcile(ctx context.Context, js jetstream.JetStream, cfg *config.Config, log *slog.Logger) (Changes, error) {
	var ch Changes
	stream, err := js.Stream(ctx, schemas.ScheduleStream)
	if err != nil {
		return ch, fmt.Errorf("open the schedules stream: %w", err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(schemas.ScheduleFilter))
	if err != nil {
		return ch, fmt.Errorf("read the schedules: %w", err)
	}
	want := Defs(cfg)
	if !info.Config.AllowMsgSchedules {
		if len(want) == 0 {
			return ch, nil
		}
		return ch, fmt.Errorf("%w: stream %s does not allow them, so the configured schedules cannot run", ErrNoSchedules, schemas.ScheduleStream)
	}
	for _, d := range want {
		m, err := stream.GetLastMsgForSubject(ctx, d.subject())
		switch {
		case err == nil && d.same(m):
			ch.Kept = append(ch.Kept, d.subject())
			continue
		case err == nil:
			ch.Changed = append(ch.Changed, d.subject())
			// The old schedule's ticks tell the old next time.
			if err := purge(ctx, stream, schemas.TickSubject(d.Source, d.Table)); err != nil {
				return ch, err
			}
		case errors.Is(err, jetstream.ErrMsgNotFound):
			ch.Added = append(ch.Added, d.subject())
		default:
			return ch, fmt.Errorf("read schedule %s: %w", d.subject(), err)
		}
		if _, err := js.PublishMsg(ctx, d.msg()); err != nil {
			return ch, fmt.Errorf("store schedule %s (%q): %w", d.subject(), d.Spec, err)
		}
	}
	for subj := range info.State.Subjects {
		if slices.ContainsFunc(want, func(d Def) bool { return d.subject() == subj }) {
			continue
		}
		source, table, err := schemas.ParseScheduleSubject(subj)
		if err != nil {
			log.Warn("removing a schedule with a malformed subject", "subject", schemas.Clip(subj), "err", err)
		}
		if err := purge(ctx, stream, subj); err != nil {
			return ch, err
		}
		if err == nil {
			if err := purge(ctx, stream, schemas.TickSubject(source, table)); err != nil {
				return ch, err
			}
		}
		ch.Removed = append(ch.Removed, subj)
	}
	slices.Sort(ch.Removed)
	if len(ch.Added)+len(ch.Changed)+len(ch.Removed) > 0 {
		log.Info("schedules reconciled", "added", ch.Added, "changed", ch.Changed, "removed", ch.Removed, "kept", len(ch.Kept))
	}
	return ch, nil
}

func purge(ctx context.Context, stream jetstream.Stream, subject string) error {
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
		return fmt.Errorf("remove %s: %w", subject, err)
	}
	return nil
}

// NextRuns is when each scheduled source next runs: the earliest next
// tick of its own schedule and its tables'. The server says when a
// schedule that has fired fires next (the tick's Nats-Schedule-Next);
// before its first tick it is computed by the server's rules from when the
// schedule was stored.
func NextRuns(ctx context.Context, js jetstream.JetStream, cfg *config.Config, now time.Time) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	defs := Defs(cfg)
	if len(defs) == 0 {
		return out, nil
	}
	stream, err := js.Stream(ctx, schemas.ScheduleStream)
	if err != nil {
		return nil, fmt.Errorf("open the schedules stream: %w", err)
	}
	for _, d := range defs {
		next, err := nextRun(ctx, stream, d, now)
		if err != nil {
			return nil, err
		}
		if next.IsZero() {
			continue
		}
		if cur, ok := out[d.Source]; !ok || next.Before(cur) {
			out[d.Source] = next
		}
	}
	return out, nil
}

// nextRun is when d fires next; zero when it is not on the bus (yet).
func nextRun(ctx context.Context, stream jetstream.Stream, d Def, now time.Time) (time.Time, error) {
	sched, err := schemas.ParseSchedule(d.Spec, d.Zone)
	if err != nil {
		return time.Time{}, err
	}
	tick, err := stream.GetLastMsgForSubject(ctx, schemas.TickSubject(d.Source, d.Table))
	if err == nil {
		if next, perr := time.Parse(time.RFC3339Nano, tick.Header.Get(headerNext)); perr == nil && !next.Before(now.Add(-time.Second)) {
			return next.UTC(), nil
		}
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return time.Time{}, fmt.Errorf("read the ticks of %s: %w", d.subject(), err)
	}
	def, err := stream.GetLastMsgForSubject(ctx, d.subject())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read schedule %s: %w", d.subject(), err)
	}
	// Not fired yet, or its last tick is stale (the bus was down): the
	// next one after the later of the schedule's storing and now, as the
	// server skips ahead.
	next := sched.Next(def.Time)
	if next.Before(now) {
		next = sched.Next(now)
	}
	return next, nil
}

// Sources is runs.Store.Sources of cfg's sources with next_run_at filled
// from the schedules on the bus.
func Sources(ctx context.Context, js jetstream.JetStream, store *runs.Store, cfg *config.Config, now time.Time) ([]runs.SourceStatus, error) {
	sts, err := store.Sources(ctx, runs.SourceRefs(cfg), now)
	if err != nil {
		return nil, err
	}
	next, err := NextRuns(ctx, js, cfg, now)
	if err != nil {
		return nil, err
	}
	for i, st := range sts {
		if t, ok := next[st.Name]; ok {
			sts[i].NextRunAt = &t
		}
	}
	return sts, nil
}
