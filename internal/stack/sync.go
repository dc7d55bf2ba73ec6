package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Report is the outcome of one sync run as seen by the client.
type Report struct {
	RunID   string
	Source  string
	Path    string
	Results []schemas.TableResult
	// Skipped says what discovery left out and why.
	Skipped  []string
	Rows     int64
	Failed   int
	Duration time.Duration
}

// Stats summarises the run as the Connector Kit's run statistics.
func (r *Report) Stats() connectors.RunStats {
	var st connectors.RunStats
	for _, t := range r.Results {
		if t.Status == schemas.StatusFailed {
			st.TablesFailed++
			st.Errors = append(st.Errors, t.Table+": "+t.Error)
		} else {
			st.TablesExtracted++
			st.Rows += t.Rows
		}
		for _, c := range t.SchemaChanges {
			st.SchemaChanges = append(st.SchemaChanges, t.Table+": "+c)
		}
	}
	st.Skipped = r.Skipped
	return st
}

// ErrCancelled: the run was cancelled (da cancel, the API).
var ErrCancelled = errors.New("run cancelled")

// ErrAbandoned: the run lost its producer and nothing took it over.
var ErrAbandoned = errors.New("run abandoned")

// Sync publishes req, passes each event of the run to onEvent (may be nil)
// and waits for the run's extract to be published. A run that fails as a
// whole is an error; failed tables are reported in the Report.
func Sync(ctx context.Context, js jetstream.JetStream, req schemas.SyncRequest, onEvent func(schemas.Event)) (*Report, error) {
	start := time.Now()
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	// The run's record first, so it is listed (queued) from the moment the
	// request is on the bus.
	store, err := runs.Open(ctx, js)
	if err == nil {
		err = store.Queue(ctx, req)
	}
	if err != nil {
		return nil, fmt.Errorf("record run %s: %w", req.RunID, err)
	}
	// Events are read from the stream's start for this run's subjects, so
	// nothing published before the follower starts is missed.
	if _, err := js.Publish(ctx, schemas.SyncSubject(req.Source), b, jetstream.WithMsgID(req.RunID)); err != nil {
		return nil, fmt.Errorf("publish sync request: %w", err)
	}
	var rep *Report
	var runErr error
	err = natsbus.Follow(ctx, nil, js, schemas.EventStream, schemas.RunEventsFilter(req.Source, req.RunID), 0, func(msg jetstream.Msg) bool {
		ev, err := schemas.DecodeEvent(msg.Data())
		if err != nil {
			return true
		}
		if onEvent != nil {
			onEvent(ev)
		}
		switch ev.Type {
		case schemas.EventRunFailed:
			runErr = fmt.Errorf("run %s failed: %s", req.RunID, ev.Error)
			return false
		case schemas.EventRunRejected:
			runErr = fmt.Errorf("%w; not started (%s)", schemas.ErrAlreadyRunning, ev.Error)
			return false
		case schemas.EventRunCancelled:
			runErr = fmt.Errorf("%w: run %s; the live extract is unchanged", ErrCancelled, req.RunID)
			return false
		case schemas.EventRunAbandoned:
			runErr = fmt.Errorf("%w: run %s: %s; the live extract is unchanged, sync again", ErrAbandoned, req.RunID, ev.Error)
			return false
		case schemas.EventExtractPublished:
			rep = &Report{RunID: req.RunID, Source: req.Source, Path: ev.Path, Results: ev.Results, Skipped: ev.Skipped, Duration: time.Since(start)}
			for _, r := range ev.Results {
				rep.Rows += r.Rows
				if r.Status == schemas.StatusFailed {
					rep.Failed++
				}
			}
			return false
		}
		return true
	})
	switch {
	case runErr != nil:
		return nil, runErr
	case rep != nil:
		return rep, nil
	case ctx.Err() != nil:
		return nil, fmt.Errorf("wait for run %s: %w (is a producer, writer and finalizer running?)", req.RunID, ctx.Err())
	default:
		return nil, fmt.Errorf("wait for run %s: %w", req.RunID, err)
	}
}
