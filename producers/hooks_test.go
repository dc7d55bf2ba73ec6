package producers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// stuckStream is a streaming connector whose Stream works until it is
// stopped: every delivery of a webhook ends in a shutdown.
type stuckStream struct{ calls chan struct{} }

func (stuckStream) Capabilities() connectors.Capability {
	return connectors.Discover | connectors.Stream
}
func (stuckStream) Discover(context.Context) ([]connectors.TableInfo, error) {
	schema := arrow.NewSchema([]arrow.Field{{Name: "key", Type: arrow.BinaryTypes.String},
		{Name: "at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}}}, nil)
	return []connectors.TableInfo{{Name: "items", Schema: schema, Capabilities: connectors.Stream,
		Partition: &connectors.Partitioning{KeyColumn: "key", TimeColumn: "at"}}}, nil
}
func (s stuckStream) Stream(ctx context.Context, _ []byte) ([]connectors.Change, error) {
	s.calls <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestWebhookStoppedOnEveryDeliveryIsDeadLettered: an accepted webhook
// whose processing is cut short by a shutdown on every delivery is not
// dropped once its deliveries run out: the delivery past the limit moves it
// to the dead-letter stream with the reason.
func TestWebhookStoppedOnEveryDeliveryIsDeadLettered(t *testing.T) {
	js := natstest.MustStart(t)
	conn := stuckStream{calls: make(chan struct{}, 1)}
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("stuck.yaml", []byte("name: stuck\nversion: \"1.0.0\"\ndescription: test\ncapabilities: [discover, stream]\n"),
		func(connectors.Config) (connectors.Connector, error) { return conn, nil })
	sources := func(string) (Source, error) { return Source{Name: "hooked", Connector: "stuck"}, nil }
	ctx := context.Background()
	msg := nats.NewMsg(schemas.HookSubject("hooked"))
	msg.Header.Set(schemas.HeaderSource, "hooked")
	msg.Data = []byte(`{"event":"x"}`)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	dl, err := js.Stream(ctx, schemas.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	// A short ack wait: a delivery to a stopped processor's pull comes back
	// quickly (it counts as a delivery too).
	opts := Options{JS: js, Registry: reg, Sources: sources, AckWait: time.Second, Logger: slog.New(slog.DiscardHandler)}
	var got *jetstream.RawStreamMsg
	calls := 0
	for cycle := 1; got == nil; cycle++ {
		if cycle > 3*hookMaxDeliver {
			t.Fatalf("no dead letter after %d processor restarts (%d deliveries processed): the webhook was dropped", cycle-1, calls)
		}
		hctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- NewHooks(opts).Run(hctx) }()
		natstest.Poll(t, 30*time.Second, func() (bool, string) {
			select {
			case <-conn.calls:
				calls++
				return true, ""
			default:
			}
			got, err = dl.GetLastMsgForSubject(ctx, schemas.DeadLetterSubject("hooked", "_webhooks"))
			return err == nil, "neither a delivery nor a dead letter"
		})
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("processed %d times; dead letter: %s", calls, got.Header.Get(schemas.HeaderDLQReason))
	if calls > hookMaxDeliver {
		t.Errorf("processed %d times, the limit is %d", calls, hookMaxDeliver)
	}
	if string(got.Data) != `{"event":"x"}` || !strings.Contains(got.Header.Get(schemas.HeaderDLQReason), "without being settled") {
		t.Errorf("dead letter %q, reason %q", got.Data, got.Header.Get(schemas.HeaderDLQReason))
	}
	select {
	case <-conn.calls:
		t.Error("the exhausted webhook was processed again")
	default:
	}
}

// TestRunFailedReachesTheBusBeforeTheAck: the bus refuses run_failed for
// longer than a publish's own retry budget; the producer keeps trying
// before it settles the request, so whoever waits for the run hears how it
// ended.
func TestRunFailedReachesTheBusBeforeTheAck(t *testing.T) {
	budget := natsbus.RetryBudget
	natsbus.RetryBudget = 300 * time.Millisecond
	t.Cleanup(func() { natsbus.RetryBudget = budget })
	real := natstest.MustStart(t)
	js := natstest.Refuse(real, "."+string(schemas.EventRunFailed), 10)
	sources := func(name string) (Source, error) { return Source{}, fmt.Errorf("unknown source %q", name) }
	p := New(Options{JS: js, Registry: connectors.NewRegistry(), Sources: sources, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	req, _ := json.Marshal(schemas.SyncRequest{RunID: run1, Source: "gone", RequestedAt: time.Now().UTC()})
	if _, err := real.Publish(ctx, schemas.SyncSubject("gone"), req); err != nil {
		t.Fatal(err)
	}
	evs := natstest.WaitEvents(t, real, schemas.RunEventsFilter("gone", run1), 30*time.Second, func(evs []schemas.Event) bool {
		return slices.ContainsFunc(evs, func(e schemas.Event) bool { return e.Type == schemas.EventRunFailed })
	})
	if js.Refused.Load() != 10 || !strings.Contains(evs[len(evs)-1].Error, `unknown source "gone"`) {
		t.Errorf("refused %d times; events %+v", js.Refused.Load(), evs)
	}
}
