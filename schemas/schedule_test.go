package schemas_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// scheduleForms are specs with a zone, and whether ParseSchedule accepts
// them.
var scheduleForms = []struct {
	spec, zone string
	ok         bool
}{
	{"@every 2s", "", true},
	{"@every 1h30m", "", true},
	{"@every 1s", "", true},
	{"@hourly", "", true},
	{"@daily", "Europe/Prague", true},
	{"@midnight", "", true},
	{"@weekly", "America/New_York", true},
	{"@monthly", "", true},
	{"@yearly", "", true},
	{"@annually", "", true},
	{"0 */15 * * * *", "", true},
	{"0 30 2 * * *", "Europe/Prague", true},
	{"*/5 * * * * ?", "", true},
	{"0 0 9-17 * * MON-FRI", "Europe/Prague", true},
	{"0 0 0 1,15 JAN,jul *", "", true},
	{"30 5/10 * * * *", "", true},
	{"0 0 12 ? * sun", "Asia/Tokyo", true},
	// Refused.
	{"@every 500ms", "", false},
	{"@every 1m", "Europe/Prague", false},
	{"@every", "", false},
	{"@reboot", "", false},
	{"*/15 * * * *", "", false},
	{"0 60 * * * *", "", false},
	{"0 0 25 * * *", "", false},
	{"0 0 0 32 * *", "", false},
	{"0 0 0 * 13 *", "", false},
	{"0 0 0 * * 7", "", false},
	{"0 0 0 * * FUNDAY", "", false},
	{"0 5-1 * * * *", "", false},
	{"0 */0 * * * *", "", false},
	{"CRON_TZ=Europe/Prague 0 0 0 * * *", "", false},
	{"@daily", "Mars/Olympus", false},
	{"@daily", "Local", false},
	{"", "", false},
}

// TestScheduleFormsAcceptedByServer: every form ParseSchedule accepts is
// accepted by the bus's scheduler (the embedded nats-server), and every
// form it refuses would be refused or misread there: the validation and
// the server agree.
func TestScheduleFormsAcceptedByServer(t *testing.T) {
	js := natstest.MustStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FORMS", Subjects: []string{"forms.>"}, AllowMsgSchedules: true, AllowRollup: true}); err != nil {
		t.Fatal(err)
	}
	for i, f := range scheduleForms {
		_, perr := schemas.ParseSchedule(f.spec, f.zone)
		if (perr == nil) != f.ok {
			t.Errorf("ParseSchedule(%q, %q) = %v, want ok %v", f.spec, f.zone, perr, f.ok)
		}
		if perr != nil && !errors.Is(perr, schemas.ErrBadSchedule) {
			t.Errorf("ParseSchedule(%q): %v is not ErrBadSchedule", f.spec, perr)
		}
		msg := nats.NewMsg(fmt.Sprintf("forms.def.%d", i))
		msg.Header.Set("Nats-Schedule", f.spec)
		msg.Header.Set("Nats-Schedule-Target", fmt.Sprintf("forms.fire.%d", i))
		if f.zone != "" {
			msg.Header.Set("Nats-Schedule-Time-Zone", f.zone)
		}
		_, serr := js.PublishMsg(ctx, msg)
		switch {
		case f.ok && serr != nil:
			t.Errorf("%q in %q: accepted here, refused by the server: %v", f.spec, f.zone, serr)
		case !f.ok && serr == nil && f.spec != "" && f.zone != "Local":
			// (An empty spec is no schedule to the server; "Local" is the
			// server machine's zone, refused here on purpose: the config
			// must mean the same wherever the bus runs.)
			t.Errorf("%q in %q: refused here, accepted by the server: widen ParseSchedule", f.spec, f.zone)
		}
	}
}

// TestScheduleNext: the next fire time by the server's rules, in the
// schedule's zone, also across the DST changes of Europe/Prague.
func TestScheduleNext(t *testing.T) {
	prague, _ := time.LoadLocation("Europe/Prague")
	for _, tc := range []struct {
		spec, zone string
		after      time.Time
		want       time.Time
	}{
		{"@every 15m", "", time.Date(2026, 3, 1, 10, 0, 0, 400e6, time.UTC), time.Date(2026, 3, 1, 10, 15, 0, 0, time.UTC)},
		{"0 */15 * * * *", "", time.Date(2026, 3, 1, 10, 7, 0, 0, time.UTC), time.Date(2026, 3, 1, 10, 15, 0, 0, time.UTC)},
		{"@daily", "Europe/Prague", time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 2, 0, 0, 0, 0, prague)},
		// Spring forward: 2026-03-29 02:00 CET becomes 03:00 CEST. 02:30
		// does not exist that day; the next day is at 02:30 CEST.
		{"0 30 2 * * *", "Europe/Prague", time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 30, 2, 30, 0, 0, prague)},
		// 09:00 wall time on both sides of the change: 08:00 UTC, then 07:00 UTC.
		{"0 0 9 * * *", "Europe/Prague", time.Date(2026, 3, 28, 9, 0, 0, 0, time.UTC), time.Date(2026, 3, 29, 9, 0, 0, 0, prague)},
		// Fall back: 2026-10-25 03:00 CEST becomes 02:00 CET.
		{"0 0 9 * * *", "Europe/Prague", time.Date(2026, 10, 24, 8, 0, 0, 0, time.UTC), time.Date(2026, 10, 25, 9, 0, 0, 0, prague)},
	} {
		s, err := schemas.ParseSchedule(tc.spec, tc.zone)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Next(tc.after); !got.Equal(tc.want) {
			t.Errorf("%q in %q after %s: %s, want %s", tc.spec, tc.zone, tc.after, got, tc.want.UTC())
		}
	}
}
