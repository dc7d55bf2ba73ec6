package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Report is the outcome of one sync run as seen by the client.
type Report struct {
	RunID    string
	Source   string
	Path     string
	Results  []schemas.TableResult
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
	return st
}

// Sync publishes req, passes each event of the run to onEvent (may be nil)
// and waits for the run's extract to be published. A run that fails as a
// whole is an error; failed tables are reported in the Report.
func Sync(ctx context.Context, js jetstream.JetStream, req schemas.SyncRequest, onEvent func(schemas.Event)) (*Report, error) {
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, schemas.EventStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{schemas.RunEventsFilter(req.Source, req.RunID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("follow run events: %w", err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := js.Publish(ctx, schemas.SyncSubject(req.Source), b, jetstream.WithMsgID(req.RunID)); err != nil {
		return nil, fmt.Errorf("publish sync request: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("follow run events: %w", err)
	}
	defer it.Stop()
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("wait for run %s: %w (is a producer, writer and finalizer running?)", req.RunID, ctx.Err())
			}
			return nil, fmt.Errorf("wait for run %s: %w", req.RunID, err)
		}
		ev, err := schemas.DecodeEvent(msg.Data())
		if err != nil {
			continue
		}
		if onEvent != nil {
			onEvent(ev)
		}
		switch ev.Type {
		case schemas.EventRunFailed:
			return nil, fmt.Errorf("run %s failed: %s", req.RunID, ev.Error)
		case schemas.EventExtractPublished:
			rep := &Report{RunID: req.RunID, Source: req.Source, Path: ev.Path, Results: ev.Results, Duration: time.Since(start)}
			for _, r := range ev.Results {
				rep.Rows += r.Rows
				if r.Status == schemas.StatusFailed {
					rep.Failed++
				}
			}
			return rep, nil
		}
	}
}
