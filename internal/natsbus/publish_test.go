package natsbus

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestAsyncPublishWithoutAckTimesOut: a publish whose ack never comes (here
// a plain subscriber that takes the message and answers nothing, as a
// stream leader killed mid-publish would) fails after the ack timeout
// instead of being awaited forever.
func TestAsyncPublishWithoutAckTimesOut(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("silent.>")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	js, err := JetStream(nc, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	f, err := js.PublishAsync("silent.x", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.Ok():
		t.Fatal("acked by nobody")
	case err := <-f.Err():
		if !errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
			t.Fatalf("err %v, want %v", err, jetstream.ErrAsyncPublishTimeout)
		}
	case <-time.After(time.Minute):
		t.Fatal("the publish was still waiting for its ack after a minute")
	}
}
