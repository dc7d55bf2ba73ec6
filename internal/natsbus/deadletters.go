package natsbus

import (
	"context"
	"fmt"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetterEntry is one batch the writers could not write, from its headers
// (untrusted text: shown, never used as a path or command).
type DeadLetterEntry struct {
	At         time.Time `json:"at"`
	Source     string    `json:"source"`
	Table      string    `json:"table"`
	Run        string    `json:"run"`
	Seq        string    `json:"seq"`
	Deliveries string    `json:"deliveries"`
	Reason     string    `json:"reason"`
}

// MaxDeadLetters bounds a listing.
const MaxDeadLetters = 1000

// DeadLetters returns the last limit (at most MaxDeadLetters) dead
// letters, of source only when it is not empty, oldest first.
func DeadLetters(ctx context.Context, js jetstream.JetStream, source string, limit int) ([]DeadLetterEntry, error) {
	limit = min(max(limit, 1), MaxDeadLetters)
	filter := "agnes.dlq.>"
	if source != "" {
		if err := schemas.ValidateName("source", source); err != nil {
			return nil, err
		}
		filter = "agnes.dlq." + source + ".>"
	}
	stream, err := js.Stream(ctx, schemas.DeadLetterStream)
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream: %w", err)
	}
	var out []DeadLetterEntry
	if info.State.Msgs == 0 {
		return out, nil
	}
	last := info.State.LastSeq
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = Follow(fctx, nil, js, schemas.DeadLetterStream, filter, 0, func(m jetstream.Msg) bool {
		md, _ := m.Metadata()
		if md != nil && md.Sequence.Stream > last {
			return false
		}
		h := m.Headers()
		d := DeadLetterEntry{Source: h.Get(schemas.HeaderSource), Table: h.Get(schemas.HeaderTable), Run: h.Get(schemas.HeaderRun),
			Seq: h.Get(schemas.HeaderSeq), Deliveries: h.Get(schemas.HeaderDLQDeliveries), Reason: h.Get(schemas.HeaderDLQReason)}
		if md != nil {
			d.At = md.Timestamp.UTC()
		}
		out = append(out, d)
		if len(out) > limit {
			out = out[1:]
		}
		return md == nil || md.Sequence.Stream < last
	})
	if err != nil && fctx.Err() == nil {
		return nil, err
	}
	return out, nil
}
