package natsbus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/nats-io/nats.go/jetstream"
)

// TestExhaustedDeliveryIsHandedOver: a message whose handler is stopped
// each time (a shutdown naks it) comes back past the limit instead of being
// dropped by the server, and goes to Exhausted with the reason, in both
// pull modes.
func TestExhaustedDeliveryIsHandedOver(t *testing.T) {
	for _, prefetch := range []int{0, 4} {
		js := natstest.MustStart(t)
		ctx := context.Background()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
			t.Fatal(err)
		}
		cons, err := js.CreateOrUpdateConsumer(ctx, "T", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy,
			MaxDeliver: natsbus.Unlimited})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, "t.x", []byte("body")); err != nil {
			t.Fatal(err)
		}
		handled, exhausted := 0, ""
		for cycle := 1; exhausted == "" && cycle <= 5; cycle++ {
			cctx, stop := context.WithCancel(ctx)
			seen := make(chan struct{}, 1)
			done := make(chan error, 1)
			go func() {
				done <- natsbus.Consume(cctx, cons, natsbus.ConsumeOptions{Name: "c", Prefetch: prefetch, MaxDeliver: 2,
					Handle: func(ctx context.Context, msg jetstream.Msg) {
						handled++
						seen <- struct{}{}
						<-ctx.Done() // shut down mid-work: hand it back, as the services do
						natsbus.HandBack(nil, msg)
					},
					Exhausted: func(ctx context.Context, msg jetstream.Msg, cause error) {
						exhausted = cause.Error()
						natsbus.Settle(nil, "term", msg.Term())
						seen <- struct{}{}
					}})
			}()
			select {
			case <-seen:
			case <-time.After(30 * time.Second):
				t.Fatalf("prefetch %d, cycle %d: the message was not delivered", prefetch, cycle)
			}
			stop()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if handled != 2 || !strings.Contains(exhausted, "delivered 3 times without being settled") {
			t.Errorf("prefetch %d: handled %d times, exhausted %q; want 2 and the third delivery exhausted", prefetch, handled, exhausted)
		}
	}
}
