package schemas

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Stream names.
const (
	// SyncStream holds sync requests; a work queue, so each request is taken
	// by exactly one producer.
	SyncStream = "AGNES_SYNC"
	// DataStream holds Arrow IPC batches; a work queue shared by all writers.
	DataStream = "AGNES_DATA"
	// EventStream holds run events; the finalizer and CLIs read it.
	EventStream = "AGNES_EVENTS"
	// StreamEventStream holds the events of the stream run (streamed parts
	// written and published): many and short-lived, so they are kept apart
	// from run events with a shorter retention.
	StreamEventStream = "AGNES_STREAM_EVENTS"
	// DeadLetterStream keeps batches that can never be written, with the
	// reason, for inspection ("da dead-letters").
	DeadLetterStream = "AGNES_DLQ"
	// HookStream holds accepted webhook bodies until a producer has turned
	// them into data batches; a work queue.
	HookStream = "AGNES_HOOKS"
	// ScheduleStream keeps the schedules (nats-server message schedules,
	// one per scheduled source or table) and the ticks they fire.
	ScheduleStream = "AGNES_SCHEDULES"
)

// Durable consumer names.
const (
	ProducerConsumer = "producers"
	WriterConsumer   = "writers"
	HookConsumer     = "streamers"
	// SchedulerConsumer reads the ticks of the schedules.
	SchedulerConsumer = "schedulers"
)

// Schedule subjects: a schedule message of a source (table "") or of one
// of its tables, and the ticks it fires.
const (
	ScheduleFilter = "agnes.schedules.def.>"
	TickFilter     = "agnes.schedules.tick.>"
)

// ScheduleSubject is where the schedule of source (or of its table) is
// kept.
func ScheduleSubject(source, table string) string {
	return scheduleSubject("agnes.schedules.def.", source, table)
}

// TickSubject is where the schedule of source (or of its table) fires.
func TickSubject(source, table string) string {
	return scheduleSubject("agnes.schedules.tick.", source, table)
}

func scheduleSubject(prefix, source, table string) string {
	if table == "" {
		return prefix + source
	}
	return prefix + source + "." + table
}

// ParseScheduleSubject reads the source and table (maybe "") of a schedule
// or tick subject, validating both names.
func ParseScheduleSubject(subject string) (source, table string, err error) {
	rest, ok := strings.CutPrefix(subject, "agnes.schedules.def.")
	if !ok {
		rest, ok = strings.CutPrefix(subject, "agnes.schedules.tick.")
	}
	if !ok {
		return "", "", fmt.Errorf("%q is not a schedule subject", Clip(subject))
	}
	source, table, _ = strings.Cut(rest, ".")
	if err := ValidateName("source", source); err != nil {
		return "", "", fmt.Errorf("schedule subject %q: %w", Clip(subject), err)
	}
	if table != "" || strings.HasSuffix(rest, ".") {
		if err := ValidateName("table", table); err != nil {
			return "", "", fmt.Errorf("schedule subject %q: %w", Clip(subject), err)
		}
	}
	return source, table, nil
}

// Header names carried by data messages.
const (
	HeaderRun    = "Agnes-Run"
	HeaderSource = "Agnes-Source"
	HeaderTable  = "Agnes-Table"
	HeaderSeq    = "Agnes-Seq"
	// HeaderAttempt numbers the producer's attempts at a run: a run retried
	// after a producer crash publishes its batches again under a new
	// attempt, and only the last attempt's batches are published.
	HeaderAttempt = "Agnes-Attempt"
	HeaderRows    = "Agnes-Rows"
	// HeaderSchema is the fingerprint of the table's declared schema; a
	// batch whose schema has another fingerprint is poison.
	HeaderSchema = "Agnes-Schema"
	// Dead-letter headers: why, from where, after how many deliveries.
	HeaderDLQReason     = "Agnes-Dlq-Reason"
	HeaderDLQSubject    = "Agnes-Dlq-Subject"
	HeaderDLQDeliveries = "Agnes-Dlq-Deliveries"
	HeaderDLQWriter     = "Agnes-Dlq-Writer"
)

// SyncSubject is the subject a sync request for source is published to.
func SyncSubject(source string) string { return "agnes.sync." + source }

// HookSubject is where the gateway puts a webhook body for source.
func HookSubject(source string) string { return "agnes.hooks." + source }

// DataSubject is the subject of the data batches of one table.
func DataSubject(source, table string) string { return "agnes.data." + source + "." + table }

// EventSubject is the subject of one event of a run; events of the stream
// run go to StreamEventStream.
func EventSubject(source, run string, t EventType) string {
	if run == StreamRun {
		return StreamEventSubject(source, t)
	}
	return "agnes.events." + source + "." + run + "." + string(t)
}

// StreamEventSubject is the subject of an event of source's stream run.
func StreamEventSubject(source string, t EventType) string {
	return "agnes.stream." + source + "." + string(t)
}

// StreamEventRetention is how long events of the stream run are kept: a
// finalizer down for longer leaves the parts written meanwhile in staging.
const StreamEventRetention = 48 * time.Hour

// DeadLetterSubject is where a bad batch of a table is kept.
func DeadLetterSubject(source, table string) string { return "agnes.dlq." + source + "." + table }

// RunEventsFilter matches every event of one run.
func RunEventsFilter(source, run string) string { return "agnes.events." + source + "." + run + ".>" }

// DataMsgID is the deduplication id of the seq-th data message of a table in
// one attempt of a run.
func DataMsgID(run, table string, attempt int, seq int64) string {
	return run + "." + strconv.Itoa(attempt) + "." + table + "." + strconv.FormatInt(seq, 10)
}

// MaxHookBytes is the largest webhook body the gateway accepts: the bus's
// default 1 MiB message limit less room for headers.
const MaxHookBytes = 1<<20 - 16<<10

// HeaderMsgID is JetStream's deduplication header.
const HeaderMsgID = "Nats-Msg-Id"

// DataHeader builds the headers of one data message (a nats.Header).
func DataHeader(run, source, table string, attempt int, seq, rows int64) map[string][]string {
	return map[string][]string{
		HeaderRun:     {run},
		HeaderSource:  {source},
		HeaderTable:   {table},
		HeaderSeq:     {strconv.FormatInt(seq, 10)},
		HeaderAttempt: {strconv.Itoa(attempt)},
		HeaderRows:    {strconv.FormatInt(rows, 10)},
		HeaderMsgID:   {DataMsgID(run, table, attempt, seq)},
	}
}

// headerValue is the first value of key in h, as nats.Header.Get reads it.
func headerValue(h map[string][]string, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// BatchRef identifies one data message: which run, source and table it
// belongs to and its position in the table's sequence.
type BatchRef struct {
	Run     string
	Source  string
	Table   string
	Seq     int64
	Rows    int64
	Attempt int
}

// ParseDataHeader reads a BatchRef from data message headers; a missing or
// malformed header is ErrBadBatch. Every field is validated (the run id is a
// UUID or StreamRun, names are identifiers, numbers are bounded), so the
// result is safe to build paths from; on error, fields that did not validate
// may be set and must not be used for paths.
func ParseDataHeader(h map[string][]string) (BatchRef, error) {
	ref := BatchRef{Run: headerValue(h, HeaderRun), Source: headerValue(h, HeaderSource), Table: headerValue(h, HeaderTable)}
	if err := ValidateRunID(ref.Run); err != nil {
		ref.Run = ""
		return ref, fmt.Errorf("%w: header %s: %v", ErrBadBatch, HeaderRun, err)
	}
	if err := ValidateName("source", ref.Source); err != nil {
		return ref, fmt.Errorf("%w: header %s: %v", ErrBadBatch, HeaderSource, err)
	}
	if err := ValidateName("table", ref.Table); err != nil {
		return ref, fmt.Errorf("%w: header %s: %v", ErrBadBatch, HeaderTable, err)
	}
	var err error
	if ref.Seq, err = strconv.ParseInt(headerValue(h, HeaderSeq), 10, 64); err != nil || ref.Seq < 0 {
		return ref, fmt.Errorf("%w: header %s=%s is not a non-negative integer", ErrBadBatch, HeaderSeq, Clip(headerValue(h, HeaderSeq)))
	}
	if ref.Rows, err = strconv.ParseInt(headerValue(h, HeaderRows), 10, 64); err != nil || ref.Rows < 0 {
		return ref, fmt.Errorf("%w: header %s=%s is not a non-negative integer", ErrBadBatch, HeaderRows, Clip(headerValue(h, HeaderRows)))
	}
	if ref.Attempt, err = strconv.Atoi(headerValue(h, HeaderAttempt)); err != nil || ValidateAttempt(ref.Attempt) != nil {
		return ref, fmt.Errorf("%w: header %s=%s is not an integer in 1..%d", ErrBadBatch, HeaderAttempt, Clip(headerValue(h, HeaderAttempt)), MaxAttempt)
	}
	if headerValue(h, HeaderSchema) == "" {
		return ref, fmt.Errorf("%w: missing header %s (the fingerprint of the table's declared schema)", ErrBadBatch, HeaderSchema)
	}
	return ref, nil
}
