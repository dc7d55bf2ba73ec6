// Package natstest starts an in-process JetStream server for tests, with the
// project's streams provisioned.
package natstest

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/nats-io/nats.go/jetstream"
)

// MustStart starts an embedded server in a temporary folder, provisions the
// streams and returns a JetStream client; everything stops at test cleanup.
func MustStart(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	srv, err := natsbus.StartServer(natsbus.ServerOptions{StoreDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	nc, err := srv.Connect("test")
	if err != nil {
		srv.Stop()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		nc.Close()
		srv.Stop()
	})
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	if err := natsbus.Provision(context.Background(), js, 1); err != nil {
		tb.Fatal(err)
	}
	return js
}

// Listening starts an embedded server on host:port (port -1: any free
// one), which wants an identity, with the streams provisioned; it returns
// the server's URL, an admin client and the store folder holding the
// roles' seed files (natsbus.CredsFile). Everything stops at test cleanup.
func Listening(tb testing.TB, host string, port int) (string, jetstream.JetStream, string) {
	tb.Helper()
	store := tb.TempDir()
	srv, err := natsbus.StartServer(natsbus.ServerOptions{StoreDir: store, Host: host, Port: port})
	if err != nil {
		tb.Fatalf("listen on %s:%d: %v", host, port, err)
	}
	tb.Cleanup(srv.Stop)
	nc, err := srv.Connect("test")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	if err := natsbus.Provision(context.Background(), js, 1); err != nil {
		tb.Fatal(err)
	}
	return srv.ClientURL(), js, store
}

// WaitEvents reads events matching filter from the start of the event stream
// until done returns true for the events seen so far, or the deadline passes.
func WaitEvents(tb testing.TB, js jetstream.JetStream, filter string, timeout time.Duration, done func([]schemas.Event) bool) []schemas.Event {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream := schemas.EventStream
	if strings.HasPrefix(filter, "agnes.stream.") {
		stream = schemas.StreamEventStream
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		tb.Fatal(err)
	}
	var evs []schemas.Event
	for {
		batch, err := cons.Fetch(100, jetstream.FetchMaxWait(100*time.Millisecond))
		if err != nil && ctx.Err() == nil {
			continue
		}
		if err == nil {
			for m := range batch.Messages() {
				ev, err := schemas.DecodeEvent(m.Data())
				if err != nil {
					tb.Fatal(err)
				}
				evs = append(evs, ev)
			}
			if done(evs) {
				return evs
			}
		}
		if ctx.Err() != nil {
			tb.Fatalf("events on %s: condition not met after %s; saw %d events", filter, timeout, len(evs))
		}
	}
}

// Poll checks cond every 20 ms until it holds, failing the test after
// timeout with what cond last said (why it does not hold yet).
func Poll(tb testing.TB, timeout time.Duration, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not after %s: %s", timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LogBuffer collects log output written from several goroutines.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// RefusingJS is a JetStream client whose first Refuse publications to a
// subject ending in Suffix are refused with a 503, as a stream without a
// leader refuses them; Refused counts them.
type RefusingJS struct {
	jetstream.JetStream
	Suffix          string
	Refuse, Refused atomic.Int32
}

// Refuse wraps js so that its next n publications to subjects ending in
// suffix are refused.
func Refuse(js jetstream.JetStream, suffix string, n int32) *RefusingJS {
	r := &RefusingJS{JetStream: js, Suffix: suffix}
	r.Refuse.Store(n)
	return r
}

func (j *RefusingJS) Publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if strings.HasSuffix(subj, j.Suffix) && j.Refuse.Add(-1) >= 0 {
		j.Refused.Add(1)
		return nil, &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}
	}
	return j.JetStream.Publish(ctx, subj, data, opts...)
}
