package runs

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Page sizes of List.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// ErrBadCursor: a cursor List did not make.
var ErrBadCursor = errors.New("bad cursor: pass the next_cursor of the previous page unchanged")

// Filter selects runs for List.
type Filter struct {
	Source string
	Status Status
	// Limit is the page size (DefaultLimit when 0, at most MaxLimit).
	Limit int
	// Cursor continues after the previous page.
	Cursor string
}

// Validate checks a filter from a user.
func (f Filter) Validate() error {
	if f.Source != "" {
		if err := schemas.ValidateName("source", f.Source); err != nil {
			return err
		}
	}
	if f.Status != "" {
		if _, ok := ParseStatus(string(f.Status)); !ok {
			return fmt.Errorf("status %q is not one of %s", schemas.Clip(string(f.Status)), statusList())
		}
	}
	if f.Limit < 0 || f.Limit > MaxLimit {
		return fmt.Errorf("limit %d is not between 1 and %d", f.Limit, MaxLimit)
	}
	if f.Cursor != "" {
		if _, err := parseCursor(f.Cursor); err != nil {
			return err
		}
	}
	return nil
}

func statusList() string {
	names := make([]string, len(Statuses))
	for i, s := range Statuses {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// Page is one page of runs, newest first; Next continues it ("" at the end).
type Page struct {
	Runs []Record
	Next string
}

// At is when the run happened for ordering: its start, else when it was
// asked for, else its end.
func (r Record) At() time.Time {
	for _, t := range []*time.Time{r.StartedAt, r.QueuedAt, r.EndedAt} {
		if t != nil {
			return *t
		}
	}
	return time.Time{}
}

// newer orders records newest first, then by run id.
func newer(a, b Record) int {
	if c := b.At().Compare(a.At()); c != 0 {
		return c
	}
	return cmp.Compare(b.RunID, a.RunID)
}

type cursor struct {
	at  time.Time
	run string
}

func (c cursor) String() string {
	return base64.RawURLEncoding.EncodeToString([]byte(c.at.UTC().Format(time.RFC3339Nano) + "|" + c.run))
}

func parseCursor(s string) (cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) > 128 {
		return cursor{}, ErrBadCursor
	}
	at, run, ok := strings.Cut(string(b), "|")
	t, err := time.Parse(time.RFC3339Nano, at)
	if !ok || err != nil || schemas.ValidateRunID(run) != nil {
		return cursor{}, ErrBadCursor
	}
	return cursor{t, run}, nil
}

// All reads every record of source (all sources when ""), in no order.
func (s *Store) All(ctx context.Context, source string) ([]Record, error) {
	pattern := ">"
	if source != "" {
		pattern = source + ".*"
	}
	return s.watch(ctx, pattern)
}

// watch reads the records whose keys match pattern.
func (s *Store) watch(ctx context.Context, pattern string) ([]Record, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := s.kv.Watch(ctx, pattern, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read run history: %w", err)
	}
	defer w.Stop()
	var out []Record
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("read run history: %w", ctx.Err())
			}
			if e == nil {
				return out, nil // every record there was
			}
			var r Record
			if json.Unmarshal(e.Value(), &r) == nil && r.RunID != "" {
				out = append(out, r)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("read run history: %w", ctx.Err())
		}
	}
}

// List returns a page of runs matching f, newest first.
func (s *Store) List(ctx context.Context, f Filter) (Page, error) {
	if err := f.Validate(); err != nil {
		return Page{}, err
	}
	all, err := s.All(ctx, f.Source)
	if err != nil {
		return Page{}, err
	}
	if f.Status != "" {
		all = slices.DeleteFunc(all, func(r Record) bool { return r.Status != f.Status })
	}
	slices.SortFunc(all, newer)
	if f.Cursor != "" {
		c, _ := parseCursor(f.Cursor)
		after := Record{RunID: c.run, StartedAt: &c.at}
		all = slices.DeleteFunc(all, func(r Record) bool { return newer(r, after) <= 0 })
	}
	limit := cmp.Or(f.Limit, DefaultLimit)
	p := Page{Runs: all[:min(limit, len(all))]}
	if len(all) > limit {
		last := p.Runs[len(p.Runs)-1]
		p.Next = cursor{last.At(), last.RunID}.String()
	}
	if p.Runs == nil {
		p.Runs = []Record{}
	}
	return p, nil
}

// Find reads the record of run, whatever its source.
func (s *Store) Find(ctx context.Context, run string) (Record, error) {
	if err := schemas.ValidateRunID(run); err != nil {
		return Record{}, err
	}
	found, err := s.watch(ctx, "*."+run)
	if err != nil {
		return Record{}, err
	}
	if len(found) == 0 {
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, run)
	}
	return found[0], nil
}
