package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// SyncRequest asks a producer to sync one source. It travels on
// SyncSubject(Source) with RunID as its message id, so a retried publish is
// deduplicated.
type SyncRequest struct {
	RunID  string   `json:"run_id"`
	Source string   `json:"source"`
	Tables []string `json:"tables,omitempty"`
	// ExceptTables are left out of the run (a source's scheduled run leaves
	// out the tables that have a schedule of their own).
	ExceptTables []string  `json:"except_tables,omitempty"`
	FullRefresh  bool      `json:"full_refresh,omitempty"`
	RequestedAt  time.Time `json:"requested_at"`
	// RequestedBy is the run's trigger: cli, api, schedule or webhook.
	RequestedBy string `json:"requested_by,omitempty"`
	// Attempt is set by the producer from the request's delivery count.
	Attempt int `json:"-"`
}

// Run triggers: who asked for a run (SyncRequest.RequestedBy, the run's
// record).
const (
	TriggerCLI      = "cli"
	TriggerAPI      = "api"
	TriggerSchedule = "schedule"
	TriggerWebhook  = "webhook"
)

// Trigger is who asked for the run: RequestedBy when it is one of the
// triggers, else api (any other client on the bus).
func (r SyncRequest) Trigger() string {
	switch r.RequestedBy {
	case TriggerCLI, TriggerAPI, TriggerSchedule, TriggerWebhook:
		return r.RequestedBy
	}
	return TriggerAPI
}

// Validate checks the request's names before they reach a file path or SQL.
func (r SyncRequest) Validate() error {
	if err := ValidateRunID(r.RunID); err != nil || r.RunID == StreamRun {
		return fmt.Errorf("sync request: run_id %q is not a UUID", r.RunID)
	}
	if err := ValidateName("source", r.Source); err != nil {
		return fmt.Errorf("sync request: %w", err)
	}
	for _, t := range append(slices.Clip(r.Tables), r.ExceptTables...) {
		if err := ValidateName("table", t); err != nil {
			return fmt.Errorf("sync request: %w", err)
		}
	}
	return nil
}

// EventType names a run event; it is the last token of the event subject.
type EventType string

const (
	EventRunStarted    EventType = "run_started"
	EventTableStarted  EventType = "table_started"
	EventTableProgress EventType = "table_progress"
	EventTableDone     EventType = "table_done"
	EventTableFailed   EventType = "table_failed"
	EventBatchWritten  EventType = "batch_written"
	EventBatchFailed   EventType = "batch_failed"
	EventRunDone       EventType = "run_done"
	EventRunFailed     EventType = "run_failed"
	// EventRunRejected answers a request for a source whose sync is running.
	EventRunRejected EventType = "run_rejected"
	// EventRunCancelled: the run was cancelled on request (da cancel, the
	// API); nothing of it is published.
	EventRunCancelled EventType = "run_cancelled"
	// EventRunAbandoned: the run's producer died and no producer is left to
	// take the run over (or a newer request of the source found it dead);
	// nothing of it is published.
	EventRunAbandoned     EventType = "run_abandoned"
	EventExtractPublished EventType = "extract_published"
	// EventStreamPublished: the finalizer is done with streamed parts (run
	// StreamRun), listed in Parts as table/part: published in the extract at
	// Path, or dropped as copies of batches already published.
	EventStreamPublished EventType = "stream_published"
)

// Query modes of a _meta row.
const (
	ModeLocal        = "local"
	ModeRemote       = "remote"
	ModeMaterialized = "materialized"
)

// Event is the envelope of every run event. Which fields are set depends on
// Type; all events carry Type, RunID, Source and Time.
type Event struct {
	Type   EventType `json:"type"`
	RunID  string    `json:"run_id"`
	Source string    `json:"source"`
	Time   time.Time `json:"time"`

	// Table events.
	Table       string `json:"table,omitempty"`
	Description string `json:"description,omitempty"`
	QueryMode   string `json:"query_mode,omitempty"`
	// Schema is the table's Arrow schema as an IPC stream with no batches.
	Schema  []byte `json:"schema,omitempty"`
	Batches int64  `json:"batches,omitempty"`
	Rows    int64  `json:"rows,omitempty"`
	Error   string `json:"error,omitempty"`
	// RemotePath is a remote table's name inside the attached catalog;
	// RemoteQuery, instead, a table function of its extension to read.
	RemotePath  []string     `json:"remote_path,omitempty"`
	RemoteQuery *RemoteQuery `json:"remote_query,omitempty"`
	// Skipped (run_done, extract_published): what discovery left out, why.
	Skipped []string `json:"skipped,omitempty"`
	// SchemaChanges describe, in words, how the table's schema differs from
	// the last published one (table_started, table_done).
	SchemaChanges []string `json:"schema_changes,omitempty"`
	// WriteMode is replace, merge or append (table_done); PrimaryKey the key
	// columns a merge uses.
	WriteMode  string   `json:"write_mode,omitempty"`
	PrimaryKey []string `json:"primary_key,omitempty"`
	// Cursor is the incremental position to commit once the table's rows are
	// published; CursorRevision the state revision it was read at (0: none).
	Cursor         *Cursor `json:"cursor,omitempty"`
	CursorRevision uint64  `json:"cursor_revision,omitempty"`
	// Reconcile (table_done of a full backfill of a partitioned table): the
	// run saw every key of the source; published keys it did not see whose
	// newest version is below this are deleted.
	Reconcile int64 `json:"reconcile,omitempty"`

	// BatchWritten: the part file (relative to the run's staging folder) and
	// the data message sequence numbers it holds, in file order, with their
	// row counts.
	Part string `json:"part,omitempty"`
	// Month is the partition of a part of a partitioned table (YYYY-MM).
	Month   string  `json:"month,omitempty"`
	Seqs    []int64 `json:"seqs,omitempty"`
	SeqRows []int64 `json:"seq_rows,omitempty"`
	Writer  string  `json:"writer,omitempty"`
	Seq     int64   `json:"seq,omitempty"`
	// Attempt is the producer's attempt at the run that made the event.
	Attempt int `json:"attempt,omitempty"`

	// RunStarted lists the tables the run will produce, and who asked for
	// the run (SyncRequest.Trigger).
	Tables  []string `json:"tables,omitempty"`
	Trigger string   `json:"trigger,omitempty"`
	// RunDone carries the remote catalog to attach, if any.
	Remote *RemoteAttach `json:"remote,omitempty"`
	// RunDone and ExtractPublished carry the outcome per table.
	Results []TableResult `json:"results,omitempty"`
	// ExtractPublished: absolute path of the published extract.
	Path string `json:"path,omitempty"`
	// StreamPublished: the streamed parts the finalizer is done with.
	Parts []string `json:"parts,omitempty"`
}

// RemoteFunctions are the extension table functions a remote view may
// read (the consumer attaches only allowlisted extensions).
var RemoteFunctions = []string{"bigquery_query"}

// RemoteQuery is a remote view over an extension's table function:
// SELECT * FROM <Function>('<arg>', ...).
type RemoteQuery struct {
	Function string   `json:"function"`
	Args     []string `json:"args"`
}

// Validate checks the function is allowlisted and the arguments hold no
// NUL or newline (they become SQL string literals, quoted).
func (q RemoteQuery) Validate() error {
	ok := false
	for _, f := range RemoteFunctions {
		ok = ok || f == q.Function
	}
	if !ok {
		return fmt.Errorf("remote query function %q is not one of %v", q.Function, RemoteFunctions)
	}
	for _, a := range q.Args {
		if strings.ContainsAny(a, "\x00") {
			return fmt.Errorf("remote query argument %q holds a NUL", a)
		}
	}
	return nil
}

// Stored reports whether a query mode keeps the rows in Parquet (local or
// materialized), as opposed to remote.
func Stored(mode string) bool { return mode == ModeLocal || mode == ModeMaterialized }

// RemoteAttach is one row of _remote_attach. TokenEnv names an environment
// variable; it is never a secret.
type RemoteAttach struct {
	Alias     string `json:"alias"`
	Extension string `json:"extension"`
	URL       string `json:"url"`
	TokenEnv  string `json:"token_env"`
}

// TableResult is the outcome of one table in a run.
type TableResult struct {
	Table         string   `json:"table"`
	Status        string   `json:"status"` // "done" or "failed"
	Rows          int64    `json:"rows"`
	TotalRows     int64    `json:"total_rows,omitempty"` // rows in the published table (merge/append)
	WriteMode     string   `json:"write_mode,omitempty"`
	SchemaChanges []string `json:"schema_changes,omitempty"`
	Batches       int64    `json:"batches,omitempty"`
	SizeBytes     int64    `json:"size_bytes,omitempty"`
	QueryMode     string   `json:"query_mode,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// Table result statuses.
const (
	StatusDone   = "done"
	StatusFailed = "failed"
)

// MaxSyncRequestTables bounds the tables one sync request may name.
const MaxSyncRequestTables = 10000

// DecodeSyncRequest unmarshals a sync request and validates it; anything
// malformed is ErrBadRequest.
func DecodeSyncRequest(b []byte) (SyncRequest, error) {
	var r SyncRequest
	if err := json.Unmarshal(b, &r); err != nil {
		return SyncRequest{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if len(r.Tables) > MaxSyncRequestTables || len(r.ExceptTables) > MaxSyncRequestTables {
		return SyncRequest{}, fmt.Errorf("%w: %d tables, at most %d", ErrBadRequest, len(r.Tables), MaxSyncRequestTables)
	}
	if err := r.Validate(); err != nil {
		return SyncRequest{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return r, nil
}

var eventTypes = map[EventType]bool{
	EventRunStarted: true, EventTableStarted: true, EventTableProgress: true, EventTableDone: true, EventTableFailed: true,
	EventBatchWritten: true, EventBatchFailed: true, EventRunDone: true, EventRunFailed: true, EventRunRejected: true,
	EventExtractPublished: true, EventStreamPublished: true, EventRunCancelled: true, EventRunAbandoned: true,
}

// Encode marshals e as JSON.
func (e Event) Encode() ([]byte, error) { return json.Marshal(e) }

// DecodeEvent unmarshals an event and validates every field that may reach
// a file path, a SQL statement or the finalizer's bookkeeping. Anything
// malformed is ErrBadEvent: the caller logs, counts and skips it.
func DecodeEvent(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

// Validate checks an event's fields: a known type, a UUID run id (or
// StreamRun), identifiers for source and tables, a well-formed part name and
// month, bounded attempts and sequence numbers.
func (e Event) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s event: %s", ErrBadEvent, e.Type, fmt.Sprintf(format, args...))
	}
	if !eventTypes[e.Type] {
		return fmt.Errorf("%w: unknown event type %q", ErrBadEvent, e.Type)
	}
	if err := ValidateRunID(e.RunID); err != nil {
		return bad("%v", err)
	}
	if err := ValidateName("source", e.Source); err != nil {
		return bad("%v", err)
	}
	if e.Table != "" {
		if err := ValidateName("table", e.Table); err != nil {
			return bad("%v", err)
		}
	}
	if e.Attempt != 0 {
		if err := ValidateAttempt(e.Attempt); err != nil {
			return bad("%v", err)
		}
	}
	if e.Month != "" {
		if err := ValidateMonth(e.Month); err != nil {
			return bad("%v", err)
		}
	}
	if e.Batches < 0 || e.Rows < 0 || e.Seq < 0 || e.Reconcile < 0 {
		return bad("negative count")
	}
	if e.Trigger != "" && (SyncRequest{RequestedBy: e.Trigger}).Trigger() != e.Trigger {
		return bad("trigger %s is not cli, api, schedule or webhook", Clip(e.Trigger))
	}
	switch e.Type {
	case EventBatchWritten:
		if err := e.validatePart(); err != nil {
			return bad("%v", err)
		}
	case EventTableDone, EventTableStarted, EventTableFailed, EventTableProgress, EventBatchFailed:
		if e.Table == "" {
			return bad("no table")
		}
	case EventStreamPublished:
		for _, p := range e.Parts {
			table, name, ok := strings.Cut(p, "/")
			if !ok || ValidateName("table", table) != nil {
				return bad("part %q is not table/part", p)
			}
			if _, err := ParsePartName(name); err != nil {
				return bad("%v", err)
			}
		}
	}
	for _, t := range e.Tables {
		if err := ValidateName("table", t); err != nil {
			return bad("%v", err)
		}
	}
	if e.RemoteQuery != nil {
		if err := e.RemoteQuery.Validate(); err != nil {
			return bad("%v", err)
		}
	}
	for _, r := range e.Results {
		if err := ValidateName("table", r.Table); err != nil {
			return bad("result: %v", err)
		}
	}
	return nil
}

// CheckEventSubject reports whether subject is where e belongs: a forged
// event naming another source or run than its subject is refused.
func CheckEventSubject(subject string, e Event) error {
	if want := EventSubject(e.Source, e.RunID, e.Type); subject != want {
		return fmt.Errorf("%w: event on %s belongs on %s", ErrBadEvent, subject, want)
	}
	return nil
}

// MsgID is the deduplication id of an event: events that may be re-sent
// after a crash get the same id every time.
func (e Event) MsgID() string {
	id := fmt.Sprintf("%s.%d.%s", e.RunID, e.Attempt, e.Type)
	switch e.Type {
	case EventBatchWritten:
		return id + "." + e.Table + "." + e.Part
	case EventBatchFailed:
		return fmt.Sprintf("%s.%s.%d", id, e.Table, e.Seq)
	case EventTableProgress:
		return fmt.Sprintf("%s.%s.%d", id, e.Table, e.Batches)
	case EventStreamPublished:
		return fmt.Sprintf("%s.%d", id, e.Time.UnixNano())
	default:
		if e.Table != "" {
			return id + "." + e.Table
		}
		return id
	}
}

// validatePart checks a batch_written event: a part name of its month and
// attempt, increasing seqs with row counts that add up to its rows.
func (e Event) validatePart() error {
	if e.Table == "" {
		return errors.New("no table")
	}
	p, err := ParsePartName(e.Part)
	if err != nil {
		return err
	}
	if p.Month != e.Month {
		return fmt.Errorf("part %q is not of month %q", e.Part, e.Month)
	}
	if e.Attempt != 0 && p.Attempt != e.Attempt {
		return fmt.Errorf("part %q is not of attempt %d", e.Part, e.Attempt)
	}
	if len(e.Seqs) == 0 || len(e.Seqs) != len(e.SeqRows) {
		return fmt.Errorf("%d seqs with %d row counts", len(e.Seqs), len(e.SeqRows))
	}
	var rows int64
	for i, s := range e.Seqs {
		if s < 0 || e.SeqRows[i] < 0 || (i > 0 && s <= e.Seqs[i-1]) {
			return errors.New("seqs must be non-negative and increasing, row counts non-negative")
		}
		rows += e.SeqRows[i]
	}
	if rows != e.Rows {
		return fmt.Errorf("seq rows add up to %d, the event says %d", rows, e.Rows)
	}
	return nil
}
