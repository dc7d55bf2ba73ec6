package schedules

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

func parse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("agnes.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// stored is each schedule on the bus: its spec and zone, by subject, and
// the sequence of its message.
func stored(t *testing.T, js jetstream.JetStream) map[string][3]string {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, schemas.ScheduleStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(schemas.ScheduleFilter))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][3]string{}
	for subj := range info.State.Subjects {
		m, err := s.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			t.Fatal(err)
		}
		out[subj] = [3]string{m.Header.Get(headerSchedule), m.Header.Get(headerZone), time.Duration(m.Sequence).String()}
	}
	return out
}

// TestReconcile: the config's schedules become schedule messages; a second
// start changes nothing (an @every is not restarted); a changed schedule is
// replaced and a removed one (of a source or a table) goes.
func TestReconcile(t *testing.T) {
	js := natstest.MustStart(t)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	first := parse(t, `
sources:
  - {name: a, connector: demo, schedule: "@every 1h"}
  - name: b
    connector: demo
    schedule: "@daily"
    schedule_timezone: Europe/Prague
    table_options:
      orders: {schedule: "0 0 * * * *"}
  - {name: c, connector: demo, schedule: "@hourly"}
  - {name: d, connector: demo}
`)
	ch, err := Reconcile(ctx, js, first, log)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ch.Added)
	if want := []string{"agnes.schedules.def.a", "agnes.schedules.def.b", "agnes.schedules.def.b.orders", "agnes.schedules.def.c"}; !slices.Equal(ch.Added, want) {
		t.Fatalf("added %v, want %v", ch.Added, want)
	}
	before := stored(t, js)
	if got := before["agnes.schedules.def.b"]; got[0] != "@daily" || got[1] != "Europe/Prague" {
		t.Errorf("b's schedule %v", got)
	}
	if got := before["agnes.schedules.def.b.orders"]; got[0] != "0 0 * * * *" || got[1] != "Europe/Prague" {
		t.Errorf("b.orders' schedule %v", got)
	}
	ch, err = Reconcile(ctx, js, first, log)
	if err != nil || len(ch.Added)+len(ch.Changed)+len(ch.Removed) != 0 || len(ch.Kept) != 4 {
		t.Fatalf("the same config again: %+v, %v", ch, err)
	}
	if again := stored(t, js); !maps.Equal(again, before) {
		t.Errorf("an unchanged schedule was stored again: %v, was %v", again, before)
	}
	second := parse(t, `
sources:
  - {name: a, connector: demo, schedule: "@every 2h"}
  - {name: b, connector: demo, schedule: "@daily", schedule_timezone: Europe/Prague}
  - {name: c, connector: demo}
`)
	ch, err = Reconcile(ctx, js, second, log)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ch.Changed, []string{"agnes.schedules.def.a"}) || !slices.Equal(ch.Removed, []string{"agnes.schedules.def.b.orders", "agnes.schedules.def.c"}) ||
		!slices.Equal(ch.Kept, []string{"agnes.schedules.def.b"}) {
		t.Fatalf("changes %+v", ch)
	}
	after := stored(t, js)
	if len(after) != 2 || after["agnes.schedules.def.a"][0] != "@every 2h" || after["agnes.schedules.def.b"] != before["agnes.schedules.def.b"] {
		t.Errorf("schedules after the change: %v", after)
	}
}

// TestTickRun: a tick's run id is the same for each delivery and differs
// between ticks.
func TestTickRun(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	a, b, c := TickRun(7, at), TickRun(7, at), TickRun(8, at)
	if a != b || a == c || TickRun(7, at.Add(time.Nanosecond)) == a {
		t.Errorf("run ids %s %s %s", a, b, c)
	}
	if err := schemas.ValidateRunID(a); err != nil {
		t.Error(err)
	}
}
