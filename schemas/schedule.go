package schemas

import (
	"errors"
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // zones resolve on machines without a zoneinfo database

	"github.com/robfig/cron/v3"
)

// Schedules are fired by the bus: nats-server's message schedules (a
// stream with AllowMsgSchedules, headers Nats-Schedule and
// Nats-Schedule-Time-Zone). Schedule accepts exactly the forms that
// server runs, so a config the validation passes is one the bus takes
// (TestScheduleFormsAcceptedByServer publishes each form to the embedded
// server):
//   - "@every <duration>", at least a second, in UTC (the server refuses a
//     time zone with it);
//   - the aliases @yearly, @annually, @monthly, @weekly, @daily,
//     @midnight and @hourly;
//   - 6-field cron, "sec min hour day-of-month month day-of-week", whose
//     fields are *, ?, values, ranges a-b, lists a,b and steps */n, a/n
//     or a-b/n; months and days of the week may be named (JAN, MON).
//
// The server's cron is robfig/cron's algorithm; this package parses with
// that library (the 6-field parser with descriptors), which is also how
// next_run_at is computed before a schedule first fires.

// ScheduleAliases are the named schedules the bus's scheduler accepts.
var ScheduleAliases = []string{"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}

// MinScheduleInterval is the shortest @every the bus's scheduler fires.
const MinScheduleInterval = time.Second

// Schedule is a parsed schedule spec and its time zone.
type Schedule struct {
	// Spec is the spec as configured (trimmed).
	Spec string
	// Zone is the IANA time zone name, "" for UTC.
	Zone string
	// Every is the interval of an "@every" spec, else 0.
	Every time.Duration

	loc  *time.Location
	cron cron.Schedule
}

var cronParser = cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ErrBadSchedule marks a schedule spec or time zone the bus cannot run.
var ErrBadSchedule = errors.New("bad schedule")

// ParseSchedule checks spec and zone and returns the schedule. Errors say
// what was wrong and show the accepted forms.
func ParseSchedule(spec, zone string) (Schedule, error) {
	spec = strings.TrimSpace(spec)
	s := Schedule{Spec: spec, Zone: zone, loc: time.UTC}
	bad := func(format string, args ...any) (Schedule, error) {
		return Schedule{}, fmt.Errorf("%w: "+format, append([]any{ErrBadSchedule}, args...)...)
	}
	if spec == "" {
		return bad(`empty; use e.g. "@every 15m", "@hourly" or "0 */15 * * * *" (sec min hour day-of-month month day-of-week)`)
	}
	if zone != "" {
		loc, err := time.LoadLocation(zone)
		if err != nil || zone == "Local" {
			return bad("time zone %q is not an IANA time zone name such as Europe/Prague", zone)
		}
		s.loc = loc
	}
	if rest, ok := strings.CutPrefix(spec, "@every"); ok {
		if zone != "" {
			return bad("%q: a time zone applies to cron specs and aliases such as @daily, not to @every (the bus runs @every in UTC)", spec)
		}
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || !strings.HasPrefix(rest, " ") {
			return bad("%q: %q is not a duration such as 15m or 1h30m", spec, strings.TrimSpace(rest))
		}
		if d < MinScheduleInterval {
			return bad("%q: the interval must be at least %s", spec, MinScheduleInterval)
		}
		s.Every = d
		return s, nil
	}
	if strings.HasPrefix(spec, "@") {
		for _, a := range ScheduleAliases {
			if spec == a {
				c, err := cronParser.Parse(spec)
				if err != nil {
					return bad("%q: %v", spec, err)
				}
				s.cron = c
				return s, nil
			}
		}
		return bad("%q: unknown alias; use @every <duration> or one of %s", spec, strings.Join(ScheduleAliases, ", "))
	}
	if strings.Contains(spec, "=") {
		return bad("%q: set the time zone with schedule_timezone, not in the spec", spec)
	}
	if n := len(strings.Fields(spec)); n != 6 {
		return bad("%q: a cron spec has 6 fields (sec min hour day-of-month month day-of-week), this has %d", spec, n)
	}
	c, err := cronParser.Parse(spec)
	if err != nil {
		return bad("%q: %v", spec, err)
	}
	s.cron = c
	return s, nil
}

// Next is when the schedule fires after t, by the server's rules: an
// @every schedule fires its interval after t rounded to the second (t is
// when it was stored or last fired); a cron schedule at the next matching
// wall time in its zone.
func (s Schedule) Next(t time.Time) time.Time {
	if s.Every > 0 {
		return t.UTC().Round(time.Second).Add(s.Every)
	}
	if s.cron == nil {
		return time.Time{}
	}
	return s.cron.Next(t.In(s.loc)).UTC()
}

// Location is the schedule's time zone (UTC when none is set).
func (s Schedule) Location() *time.Location { return s.loc }
