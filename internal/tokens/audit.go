package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Audit actions.
const (
	ActionCreated = "token_created"
	ActionRevoked = "token_revoked"
	// ActionNewIP: a token was used from an address it had not been used
	// from before.
	ActionNewIP = "token_new_ip"
)

// Entry is one audit entry: who did what to which token, from where.
type Entry struct {
	At        time.Time  `json:"at"`
	Action    string     `json:"action"`
	Token     string     `json:"token"`
	Role      Role       `json:"role,omitempty"`
	By        string     `json:"by,omitempty"` // the token (or "cli", "bootstrap") that did it
	IP        string     `json:"ip,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// Audit writes audit entries to the log and to the audit stream, and
// reads them back.
type Audit struct {
	js  jetstream.JetStream
	log *slog.Logger
}

// Record logs e and keeps it in the audit stream. A failure to keep it is
// logged at ERROR (with the entry): the action it records has happened.
func (a *Audit) Record(ctx context.Context, e Entry) {
	if e.At.IsZero() {
		e.At = time.Now().UTC()
	}
	a.log.Info("audit", "action", e.Action, "token", e.Token, "role", string(e.Role), "by", e.By, "ip", e.IP)
	b, err := json.Marshal(e)
	if err == nil {
		_, err = a.js.Publish(context.WithoutCancel(ctx), schemas.AuditSubject(e.Action), b)
	}
	if err != nil {
		a.log.Error("audit entry not kept", "action", e.Action, "token", e.Token, "err", err)
	}
}

// MaxList bounds a listing.
const MaxList = 1000

// List returns the last limit entries (at most MaxList), oldest first.
func (a *Audit) List(ctx context.Context, limit int) ([]Entry, error) {
	limit = min(max(limit, 1), MaxList)
	stream, err := a.js.Stream(ctx, schemas.AuditStream)
	if err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	first, last := info.State.FirstSeq, info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil, nil
	}
	if last >= uint64(limit) && last-uint64(limit)+1 > first {
		first = last - uint64(limit) + 1
	}
	var out []Entry
	for seq := first; seq <= last; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // aged out meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("audit entry %d: %w", seq, err)
		}
		var e Entry
		if err := json.Unmarshal(m.Data, &e); err != nil || schemas.AuditSubject(e.Action) != m.Subject {
			continue // not ours: the stream takes what its subjects are sent
		}
		out = append(out, e)
	}
	return out, nil
}
