package schedules

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// zoneDir is where this test package's made-up time zones live. Go reads
// $ZONEINFO once, at the first zone lookup of the process, so it is set
// before any test runs; real zones still resolve (Go falls back to the
// system's and its embedded database).
var zoneDir = func() string {
	dir, err := os.MkdirTemp("", "agnes-zoneinfo-")
	if err != nil {
		panic(err)
	}
	os.Setenv("ZONEINFO", dir)
	return dir
}()

// writeZone writes a TZif (version 1) zone name whose clocks go forward an
// hour (to daylight saving time) at change. Like a real zone's, the change
// is at a whole hour of its wall clock: the standard offset is chosen so
// (an odd number of seconds; zones may have any).
func writeZone(t *testing.T, name string, change time.Time) {
	t.Helper()
	std := int32(change.Unix() % 3600)
	var b bytes.Buffer
	b.WriteString("TZif")
	b.Write(make([]byte, 16)) // version 1, reserved
	abbrev := []byte("STD\x00DST\x00")
	for _, n := range []uint32{0, 0, 0, 1, 2, uint32(len(abbrev))} { // isut, isstd, leap, time, type, char counts
		binary.Write(&b, binary.BigEndian, n)
	}
	binary.Write(&b, binary.BigEndian, int32(change.Unix()))
	b.WriteByte(1) // the change goes to type 1
	for _, tt := range []struct {
		off   int32
		dst   byte
		index byte
	}{{-std, 0, 0}, {3600 - std, 1, 4}} {
		binary.Write(&b, binary.BigEndian, tt.off)
		b.WriteByte(tt.dst)
		b.WriteByte(tt.index)
	}
	b.Write(abbrev)
	path := filepath.Join(zoneDir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestServerFiresAcrossDST drives the bus's own scheduler across a
// daylight-saving change: a made-up zone moves its clocks forward an hour
// a few seconds from now, and a daily cron spec names a wall time just
// after the change. The server must fire at that wall time (a few seconds
// from now, by the new offset), not an hour later (by the old one), and
// say that the next fire is a day later at the same wall time.
func TestServerFiresAcrossDST(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a clock change a few seconds away")
	}
	change := time.Now().Add(6 * time.Second).Truncate(time.Second)
	zone := fmt.Sprintf("AgnesTest/DST%d", change.Unix())
	writeZone(t, zone, change)
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	fire := change.Add(3 * time.Second)
	wall := fire.In(loc)
	if before := change.Add(-time.Second).In(loc); before.Minute() != 59 || wall.Minute() != 0 || before.Hour() == wall.Hour()-1 {
		t.Fatalf("the made-up zone does not skip an hour at a whole hour: %s, then %s", before, wall)
	}
	spec := fmt.Sprintf("%d %d %d * * *", wall.Second(), wall.Minute(), wall.Hour())
	js := natstest.MustStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := parse(t, fmt.Sprintf("sources:\n  - {name: a, connector: demo, schedule: %q, schedule_timezone: %s}\n", spec, zone))
	if _, err := Reconcile(ctx, js, cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var tick jetstream.Msg
	fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
	defer fcancel()
	natsbus.Follow(fctx, nil, js, schemas.ScheduleStream, schemas.TickSubject("a", ""), 0, func(m jetstream.Msg) bool {
		tick = m
		return false
	})
	if tick == nil {
		t.Fatalf("%q in %s did not fire by %s (wall %s); the server used the old offset?", spec, zone, fire.UTC(), wall)
	}
	md, err := tick.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if d := md.Timestamp.Sub(fire); d < -time.Second || d > 2*time.Second {
		t.Errorf("fired at %s, want %s (wall %s in %s)", md.Timestamp.UTC(), fire.UTC(), wall, zone)
	}
	// The server writes the next fire in the zone's wall time (RFC 3339
	// keeps the offset's minutes only; this zone's has seconds too), so
	// the wall time is compared: the same, a day later.
	next, err := time.Parse(time.RFC3339Nano, tick.Headers().Get(headerNext))
	wantNext := wall.AddDate(0, 0, 1)
	sameWall := func(a, b time.Time) bool {
		return a.Year() == b.Year() && a.YearDay() == b.YearDay() && a.Hour() == b.Hour() && a.Minute() == b.Minute() && a.Second() == b.Second()
	}
	if err != nil || !sameWall(next, wantNext) {
		t.Errorf("next fire %v (%v), want %s", next, err, wantNext)
	}
	// Our own computation of next_run_at agrees with the server's.
	s, _ := schemas.ParseSchedule(spec, zone)
	if ours := s.Next(fire).In(loc); !sameWall(ours, wantNext) {
		t.Errorf("ParseSchedule's next %s, the server's %s", ours, next)
	}
	t.Logf("%q in %s: clocks forward at %s; fired at %s, next %s", spec, zone, change.UTC().Format(time.TimeOnly),
		md.Timestamp.UTC().Format(time.StampMilli), tick.Headers().Get(headerNext))
}
