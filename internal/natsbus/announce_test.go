package natsbus_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
)

// TestAnnounceReportsTheFirstRefusal: Announce tries once per round of its
// own backoff, so the first refusal is reported at once and the event is
// published once the bus takes it (before, an inner 30 s retry hid every
// refusal shorter than that, and the two loops' waits added up).
func TestAnnounceReportsTheFirstRefusal(t *testing.T) {
	js := natstest.Refuse(natstest.MustStart(t), "."+string(schemas.EventRunFailed), 2)
	var logs natstest.LogBuffer
	ev := schemas.Event{Type: schemas.EventRunFailed, RunID: "7d0f1b8e-0000-4000-8000-000000000000", Source: "demo", Error: "boom"}
	if !natsbus.Announce(context.Background(), js, slog.New(slog.NewJSONHandler(&logs, nil)), ev) {
		t.Fatalf("not announced:\n%s", logs.String())
	}
	if js.Refused.Load() != 2 || strings.Count(logs.String(), "the bus did not take the event") != 1 || !strings.Contains(logs.String(), "announcement taken") {
		t.Errorf("%d refusals; log:\n%s", js.Refused.Load(), logs.String())
	}
}
