package schemas

import (
	"encoding/json"
	"fmt"
	"time"
)

// SyncRequest asks a producer to sync one source. It travels on
// SyncSubject(Source) with RunID as its message id, so a retried publish is
// deduplicated.
type SyncRequest struct {
	RunID       string    `json:"run_id"`
	Source      string    `json:"source"`
	Tables      []string  `json:"tables,omitempty"`
	FullRefresh bool      `json:"full_refresh,omitempty"`
	RequestedAt time.Time `json:"requested_at"`
	RequestedBy string    `json:"requested_by,omitempty"`
	// Attempt is set by the producer from the request's delivery count.
	Attempt int `json:"-"`
}

// Validate checks the request's names before they reach a file path or SQL.
func (r SyncRequest) Validate() error {
	if r.RunID == "" {
		return fmt.Errorf("sync request: run_id is empty")
	}
	if err := ValidateName("source", r.Source); err != nil {
		return fmt.Errorf("sync request: %w", err)
	}
	for _, t := range r.Tables {
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
	EventRunRejected      EventType = "run_rejected"
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
	// RemotePath is a remote table's name inside the attached catalog.
	RemotePath []string `json:"remote_path,omitempty"`
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

	// RunStarted lists the tables the run will produce.
	Tables []string `json:"tables,omitempty"`
	// RunDone carries the remote catalog to attach, if any.
	Remote *RemoteAttach `json:"remote,omitempty"`
	// RunDone and ExtractPublished carry the outcome per table.
	Results []TableResult `json:"results,omitempty"`
	// ExtractPublished: absolute path of the published extract.
	Path string `json:"path,omitempty"`
	// StreamPublished: the streamed parts the finalizer is done with.
	Parts []string `json:"parts,omitempty"`
}

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

// Encode marshals e as JSON.
func (e Event) Encode() ([]byte, error) { return json.Marshal(e) }

// DecodeEvent unmarshals an event and checks its envelope.
func DecodeEvent(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("decode event: %w", err)
	}
	if e.Type == "" || e.RunID == "" || e.Source == "" {
		return e, fmt.Errorf("decode event: missing type, run_id or source")
	}
	return e, nil
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
