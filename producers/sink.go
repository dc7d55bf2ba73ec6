package producers

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// sink publishes one table's batches of one run attempt: numbered data
// messages, at most MaxInFlight unacknowledged, a retried publish
// deduplicated by its message id.
type sink struct {
	p           *Producer
	run, source string
	table       string
	attempt     int
	subject     string
	fingerprint string
	// header adds headers to every message (the partition month).
	header   nats.Header
	seq      int64 // next message number
	rows     int64
	inflight []jetstream.PubAckFuture
	log      *slog.Logger
	// backlog: wait for writers when too many batches are pending.
	backlog bool
	// endSeq, when set, is the first message number the sink may not use.
	endSeq int64
	// chunk is the number of the chunk being published, chunkRows the rows
	// in it so far: the lane of the next message (schemas.Lane). The
	// stream run has no lanes.
	chunk, chunkRows int64
}

func (p *Producer) newSink(run, source, table string, attempt int, schema *arrow.Schema, log *slog.Logger) *sink {
	s := &sink{p: p, run: run, source: source, table: table, attempt: attempt, subject: schemas.DataSubject(source, table), log: log, backlog: true}
	if schema != nil {
		s.fingerprint = schemas.Fingerprint(schema)
	}
	return s
}

// wait blocks until at most keep publishes are unacknowledged.
func (s *sink) wait(ctx context.Context, keep int) error {
	for len(s.inflight) > keep {
		f := s.inflight[0]
		s.inflight = s.inflight[1:]
		select {
		case <-f.Ok():
		case err := <-f.Err():
			// Retry the same message: its id makes a duplicate harmless.
			m := f.Msg()
			if rerr := natsbus.Retry(ctx, func() error {
				_, err := s.p.opts.JS.PublishMsg(ctx, m)
				return err
			}); rerr != nil {
				return fmt.Errorf("publish batch of %s: %w (first error: %v)", s.table, rerr, err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// nextSubject is the subject of the next message, of rows rows: the plain
// table subject for the stream run, else the lane of the current chunk. A
// chunk ends with the message that brings it to ChunkRows rows.
func (s *sink) nextSubject(rows int64) string {
	if s.run == schemas.StreamRun {
		return s.subject
	}
	subject := schemas.LaneSubject(s.source, s.table, schemas.Lane(s.run, s.source, s.table, s.chunk))
	if s.chunkRows += rows; s.chunkRows >= s.p.opts.ChunkRows {
		s.chunk, s.chunkRows = s.chunk+1, 0
	}
	return subject
}

// publish sends rec, split to fit the bus's payload limit.
func (s *sink) publish(ctx context.Context, rec arrow.RecordBatch) error {
	chunks, err := schemas.EncodeBatch(rec, s.p.opts.MaxPayload)
	if err != nil {
		return fmt.Errorf("encode %s: %w", s.table, err)
	}
	if s.endSeq > 0 && s.seq+int64(len(chunks)) > s.endSeq {
		return fmt.Errorf("%w: the rows of %s need more than the %d messages an event may publish per table", connectors.ErrBadEvent, s.table, hookSeqSpan)
	}
	if s.fingerprint == "" {
		// No declared schema: the first batch's schema is the table's.
		s.fingerprint = schemas.Fingerprint(rec.Schema())
	}
	for _, c := range chunks {
		m := &nats.Msg{Subject: s.nextSubject(c.Rows), Data: c.Data, Header: schemas.DataHeader(s.run, s.source, s.table, s.attempt, s.seq, c.Rows)}
		m.Header.Set(schemas.HeaderSchema, s.fingerprint)
		for k, v := range s.header {
			m.Header[k] = v
		}
		var f jetstream.PubAckFuture
		if err := natsbus.Retry(ctx, func() (err error) {
			f, err = s.p.opts.JS.PublishMsgAsync(m)
			return err
		}); err != nil {
			return fmt.Errorf("publish batch of %s: %w", s.table, err)
		}
		s.inflight = append(s.inflight, f)
		s.seq++
		metrics.BatchesSent.WithLabelValues(metrics.Source(s.source)).Inc()
		metrics.BytesSent.WithLabelValues(metrics.Source(s.source)).Add(float64(len(c.Data)))
		if s.backlog && s.seq%backlogCheckEvery == 0 {
			if err := s.p.waitBacklog(ctx, s.log); err != nil {
				return err
			}
		}
		if err := s.wait(ctx, s.p.opts.MaxInFlight); err != nil {
			return err
		}
	}
	s.rows += rec.NumRows()
	metrics.RowsRead.WithLabelValues(metrics.Source(s.source)).Add(float64(rec.NumRows()))
	return nil
}
