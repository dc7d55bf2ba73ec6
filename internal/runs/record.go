// Package runs keeps the history of sync runs: one record per run in the
// AGNES_RUNS key-value bucket (schemas.RunsBucket), queued by whoever asks
// for the run and moved on by the recorder, which folds the run's events
// into it (Record.Apply). See docs/runs.md.
package runs

import (
	"slices"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
)

// Status is where a run is.
type Status string

// Run statuses (docs/runs.md says when each is set).
const (
	Queued    Status = "queued"
	Running   Status = "running"
	Writing   Status = "writing"
	Published Status = "published"
	Failed    Status = "failed"
	Rejected  Status = "rejected"
	Skipped   Status = "skipped"
	Cancelled Status = "cancelled"
	Abandoned Status = "abandoned"
)

// Statuses lists every status.
var Statuses = []Status{Queued, Running, Writing, Published, Failed, Rejected, Skipped, Cancelled, Abandoned}

// ParseStatus reads a status named by a user; ok false for any other word.
func ParseStatus(s string) (Status, bool) {
	st := Status(s)
	return st, slices.Contains(Statuses, st)
}

// Terminal reports whether a run in status s is over.
func (s Status) Terminal() bool { return s.rank() == 3 }

// rank orders the statuses a run moves through: a record never moves back.
func (s Status) rank() int {
	switch s {
	case Queued, "":
		return 0
	case Running:
		return 1
	case Writing:
		return 2
	}
	return 3
}

// Table is one table of a run.
type Table struct {
	Name string `json:"name"`
	// Status is running, done or failed.
	Status        string   `json:"status"`
	Rows          int64    `json:"rows"`
	Bytes         int64    `json:"bytes"`
	DurationMS    int64    `json:"duration_ms"`
	SchemaChanges []string `json:"schema_changes"`
	Error         string   `json:"error"`
	// Attempt is the producer's attempt the table's figures come from.
	Attempt   int        `json:"attempt,omitempty"`
	StartedAt *time.Time `json:"started_at,omitempty"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
}

// Record is the history of one run.
type Record struct {
	RunID   string `json:"run_id"`
	Source  string `json:"source"`
	Trigger string `json:"trigger"`
	Attempt int    `json:"attempt"`
	// QueuedAt is when the run was asked for.
	QueuedAt  *time.Time `json:"queued_at,omitempty"`
	StartedAt *time.Time `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at"`
	Status    Status     `json:"status"`
	Error     string     `json:"error"`
	Tables    []Table    `json:"tables"`
	// Skipped is what discovery left out, and why.
	Skipped []string `json:"skipped,omitempty"`
	// Path is the published extract.
	Path string `json:"path,omitempty"`
	// CancelRequested: a cancel was asked for (Store.Cancel).
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// Producer is the producer running the newest attempt: its key in
	// schemas.ProducerBucket (Store.Claim). A run whose producer's key is
	// gone may be abandoned (Reaper).
	Producer string `json:"producer,omitempty"`
}

// Queue starts the record of a requested run.
func Queue(req schemas.SyncRequest) Record {
	at := req.RequestedAt.UTC()
	return Record{RunID: req.RunID, Source: req.Source, Trigger: req.Trigger(), Status: Queued, QueuedAt: &at, Tables: []Table{}}
}

// Recorded are the event types that move a record.
var Recorded = []schemas.EventType{schemas.EventRunStarted, schemas.EventTableStarted, schemas.EventTableDone, schemas.EventTableFailed,
	schemas.EventRunDone, schemas.EventRunFailed, schemas.EventRunRejected, schemas.EventExtractPublished, schemas.EventRunCancelled, schemas.EventRunAbandoned}

// Apply folds one event of the run into the record. Events may come more
// than once and out of order (two recorders, redeliveries): a status never
// moves back and the first terminal status stays, start times keep the
// earliest and a table's figures come from its newest attempt.
func (r *Record) Apply(ev schemas.Event) {
	if r.RunID == "" {
		r.RunID, r.Source, r.Status = ev.RunID, ev.Source, Queued
	}
	if r.Tables == nil {
		r.Tables = []Table{}
	}
	r.Attempt = max(r.Attempt, ev.Attempt)
	if r.Trigger == "" && ev.Trigger != "" {
		r.Trigger = ev.Trigger
	}
	at := ev.Time.UTC()
	switch ev.Type {
	case schemas.EventRunStarted:
		r.StartedAt = earliest(r.StartedAt, at)
		for _, t := range ev.Tables {
			r.table(t, ev.Attempt)
		}
		r.move(Running, at)
	case schemas.EventTableStarted, schemas.EventTableDone, schemas.EventTableFailed:
		r.applyTable(ev, at)
		r.move(Running, at)
	case schemas.EventRunDone:
		r.Skipped = ev.Skipped
		r.applyResults(ev.Results, ev.Attempt)
		r.move(Writing, at)
	case schemas.EventExtractPublished:
		r.applyResults(ev.Results, ev.Attempt)
		r.Path = ev.Path
		r.end(Published, "", at)
	case schemas.EventRunFailed:
		r.end(Failed, ev.Error, at)
	case schemas.EventRunRejected:
		r.end(Rejected, ev.Error, at)
	case schemas.EventRunCancelled:
		r.end(Cancelled, ev.Error, at)
	case schemas.EventRunAbandoned:
		r.end(Abandoned, ev.Error, at)
	}
}

// move raises the status to s unless the run is past it.
func (r *Record) move(s Status, at time.Time) {
	if s.rank() > r.Status.rank() {
		r.Status = s
	}
	if s == Running {
		r.StartedAt = earliest(r.StartedAt, at)
	}
}

// end sets the run's final status once. The one exception: a run found
// abandoned whose extract was published after all (its producer had
// finished just before it went away) is published: that is what readers see.
func (r *Record) end(s Status, reason string, at time.Time) {
	if r.Status.Terminal() && (r.Status != Abandoned || s != Published) {
		return
	}
	r.Status, r.Error = s, reason
	r.EndedAt = &at
}

// table is the entry of table name, made if need be; an event of a newer
// attempt starts it over.
func (r *Record) table(name string, attempt int) *Table {
	i := slices.IndexFunc(r.Tables, func(t Table) bool { return t.Name == name })
	if i < 0 {
		r.Tables = append(r.Tables, Table{Name: name, Status: "running", SchemaChanges: []string{}, Attempt: attempt})
		return &r.Tables[len(r.Tables)-1]
	}
	t := &r.Tables[i]
	switch {
	case t.Attempt == 0:
		// Made by the finalizer's results, which are the newest attempt's.
		t.Attempt = attempt
	case attempt > t.Attempt:
		*t = Table{Name: name, Status: "running", SchemaChanges: []string{}, Attempt: attempt}
	}
	return t
}

func (r *Record) applyTable(ev schemas.Event, at time.Time) {
	t := r.table(ev.Table, ev.Attempt)
	if stale(ev.Attempt, t.Attempt) {
		return // an older attempt's late event
	}
	if len(ev.SchemaChanges) > 0 {
		t.SchemaChanges = ev.SchemaChanges
	}
	switch ev.Type {
	case schemas.EventTableStarted:
		t.StartedAt = earliest(t.StartedAt, at)
	case schemas.EventTableDone:
		t.Status, t.Rows, t.EndedAt = schemas.StatusDone, ev.Rows, &at
	case schemas.EventTableFailed:
		t.Status, t.Error, t.EndedAt = schemas.StatusFailed, ev.Error, &at
	}
	t.duration()
}

// applyResults takes the per-table outcome of run_done or
// extract_published: the final status, rows and size of each table.
func (r *Record) applyResults(results []schemas.TableResult, attempt int) {
	for _, res := range results {
		t := r.table(res.Table, attempt)
		if stale(attempt, t.Attempt) {
			continue
		}
		t.Status, t.Rows = res.Status, res.Rows
		if res.SizeBytes > 0 {
			t.Bytes = res.SizeBytes
		}
		if res.Error != "" {
			t.Error = res.Error
		}
		if len(res.SchemaChanges) > 0 {
			t.SchemaChanges = res.SchemaChanges
		}
	}
}

// stale reports whether figures of attempt are older than the table's. The
// finalizer's events carry no attempt (0): they are about the attempt it
// published, the newest.
func stale(attempt, tables int) bool { return attempt != 0 && attempt < tables }

// duration is from the table's start to its end, once both are known.
func (t *Table) duration() {
	if t.StartedAt != nil && t.EndedAt != nil && !t.EndedAt.Before(*t.StartedAt) {
		t.DurationMS = t.EndedAt.Sub(*t.StartedAt).Milliseconds()
	}
}

func earliest(cur *time.Time, at time.Time) *time.Time {
	if cur == nil || at.Before(*cur) {
		return &at
	}
	return cur
}
