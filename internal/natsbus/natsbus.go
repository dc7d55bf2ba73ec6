// Package natsbus starts the embedded NATS JetStream server, connects clients
// and provisions the streams and durable consumers named in schemas.
package natsbus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ServerOptions configure the embedded server.
type ServerOptions struct {
	// StoreDir holds JetStream file storage.
	StoreDir string
	// Host and Port to listen on; Port 0 means in-process only (no listener),
	// -1 a random port.
	Host string
	Port int
	// MaxPayload is the largest message; 0 means 8 MiB.
	MaxPayload int32
}

// DefaultMaxPayload of the embedded server. Larger messages mean fewer,
// bigger batches; NATS advises staying at or below 8 MiB.
const DefaultMaxPayload = 8 << 20

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
	inProcess bool
}

// StartServer starts an embedded JetStream server and waits until it is ready.
func StartServer(opts ServerOptions) (*Server, error) {
	if opts.MaxPayload == 0 {
		opts.MaxPayload = DefaultMaxPayload
	}
	if err := os.MkdirAll(opts.StoreDir, 0o755); err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	so := &server.Options{
		ServerName:         "agnes-embedded",
		JetStream:          true,
		StoreDir:           opts.StoreDir,
		MaxPayload:         opts.MaxPayload,
		Host:               opts.Host,
		Port:               opts.Port,
		NoSigs:             true,
		NoLog:              true,
		JetStreamMaxMemory: 256 << 20,
	}
	if opts.Port == 0 {
		so.DontListen = true
	}
	if so.Host == "" {
		so.Host = "127.0.0.1"
	}
	ns, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("start nats: server not ready after 30s")
	}
	return &Server{Server: ns, inProcess: so.DontListen}, nil
}

// Connect opens a client connection to the embedded server.
func (s *Server) Connect(name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1)}
	url := s.ClientURL()
	if s.inProcess {
		opts = append(opts, nats.InProcessServer(s.Server))
		url = ""
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect embedded nats: %w", err)
	}
	return nc, nil
}

// Stop shuts the server down and waits for it.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Dial connects to an external server, failing fast when none answers.
func Dial(url, name string) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.Timeout(2*time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("connect nats %s: %w", url, err)
	}
	return nc, nil
}

// ProvisionWithRetry is Provision retried for up to a minute, each attempt
// bounded to 10 seconds: a cluster that is still electing its leader answers
// after a while, or not at all.
func ProvisionWithRetry(ctx context.Context, js jetstream.JetStream, replicas int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	delay := 100 * time.Millisecond
	for {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		err := Provision(actx, js, replicas)
		acancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// Provision creates or updates the streams of schemas.StreamConfigs.
func Provision(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, cfg := range schemas.StreamConfigs(replicas) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      schemas.StateBucket,
		Description: "Agnes per-table state: published schema and incremental cursor",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}); err != nil {
		return fmt.Errorf("provision state bucket: %w", err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      schemas.LockBucket,
		Description: "Agnes running syncs, one key per source",
		TTL:         schemas.LockTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}); err != nil {
		return fmt.Errorf("provision lock bucket: %w", err)
	}
	return nil
}

// Follow delivers the messages of stream matching filter to fn, in order,
// from the first one (or from fromSeq when non-zero) until ctx ends or fn
// returns false. A broken subscription (a server restart, a cluster node
// going away) is resumed after the last delivered message, so fn sees every
// message once and in order.
func Follow(ctx context.Context, js jetstream.JetStream, stream, filter string, fromSeq uint64, fn func(jetstream.Msg) bool) error {
	next := fromSeq
	for {
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverAllPolicy,
			InactiveThreshold: FollowInactiveThreshold}
		if next > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, next
		}
		err := func() error {
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			cons, err := js.OrderedConsumer(cctx, stream, cfg)
			ccancel()
			if err != nil {
				return err
			}
			// The consumer is deleted when following ends; one left by a
			// crashed process goes after FollowInactiveThreshold.
			defer deleteConsumer(js, stream, cons)
			it, err := cons.Messages()
			if err != nil {
				return err
			}
			defer it.Stop()
			stop := context.AfterFunc(ctx, it.Stop)
			defer stop()
			// Watchdog: a consumer whose server went away can stall without
			// an error. If the stream holds a matching message past the last
			// one delivered while nothing arrives, start over from there.
			var delivered atomic.Uint64
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			go func() {
				t := time.NewTicker(3 * time.Second)
				defer t.Stop()
				seen, idle := delivered.Load(), 0
				for {
					select {
					case <-wctx.Done():
						return
					case <-t.C:
					}
					if now := delivered.Load(); now != seen {
						seen, idle = now, 0
						continue
					}
					idle++
					ictx, icancel := context.WithTimeout(wctx, 2*time.Second)
					st, err := js.Stream(ictx, stream)
					var info *jetstream.StreamInfo
					if err == nil {
						info, err = st.Info(ictx)
					}
					icancel()
					// Twice idle while the stream has grown past what was
					// delivered (the growth may be other subjects: then the
					// restart is merely wasted).
					if err == nil && info.State.LastSeq >= next && idle >= 2 {
						it.Stop()
						return
					}
				}
			}()
			for {
				msg, err := it.Next()
				if err != nil {
					return err
				}
				if md, err := msg.Metadata(); err == nil {
					next = md.Sequence.Stream + 1
				}
				delivered.Add(1)
				if !fn(msg) {
					return errStop
				}
			}
		}()
		if err == errStop || ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

var errStop = errors.New("stop following")

// FollowInactiveThreshold is how long the server keeps a follower's consumer
// after its client stopped asking for messages.
const FollowInactiveThreshold = 2 * time.Minute

// deleteConsumer removes the server-side consumer behind cons, if it still
// exists.
func deleteConsumer(js jetstream.JetStream, stream string, cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil || info.Name == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = js.DeleteConsumer(ctx, stream, info.Name)
}

// KeyValue opens a bucket, retrying while the bus is unavailable (up to a
// minute); the handle stays valid across reconnects.
func KeyValue(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		kv, err := js.KeyValue(actx, bucket)
		acancel()
		if err == nil {
			return kv, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open bucket %s: %w", bucket, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
