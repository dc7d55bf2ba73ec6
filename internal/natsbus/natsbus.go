// Package natsbus starts the embedded NATS JetStream server, connects clients
// and provisions the streams and durable consumers named in schemas.
package natsbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

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
	// TLSCert and TLSKey, when set, make a listening server accept TLS
	// clients only.
	TLSCert, TLSKey string
}

// DefaultMaxPayload of the embedded server. Larger messages mean fewer,
// bigger batches; NATS advises staying at or below 8 MiB.
const DefaultMaxPayload = 8 << 20

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
	// lock holds the store folder for this process (lockStore).
	lock *os.File
	// admin is the seed file of the admin identity when the server
	// requires one (it listens on a port), else "".
	admin string
}

// ErrStoreInUse: another process runs an embedded server on the same store
// folder. Two servers on one store would corrupt it.
var ErrStoreInUse = errors.New("the data dir's NATS store is in use by another da process")

// storeHolder is what the holder of a store folder writes into its lock
// file, for the message of whoever finds it taken.
type storeHolder struct {
	PID int    `json:"pid"`
	URL string `json:"url,omitempty"`
}

// lockStore takes the store folder for this process (an advisory lock on
// <dir>/da.lock, released by the kernel if the process dies).
func lockStore(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "da.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start nats: lock the store: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		var h storeHolder
		b, _ := io.ReadAll(io.LimitReader(f, 4096))
		f.Close()
		if json.Unmarshal(b, &h) == nil && h.URL != "" {
			return nil, fmt.Errorf("%w: da (pid %d) serves it at %s; pass --nats-url %s (or set DA_NATS_URL) to use that server, or stop it",
				ErrStoreInUse, h.PID, h.URL, h.URL)
		}
		if h.PID != 0 {
			return nil, fmt.Errorf("%w: da (pid %d) runs on it in-process; wait for it to finish, or use another --data-dir", ErrStoreInUse, h.PID)
		}
		return nil, fmt.Errorf("%w (%s): %v", ErrStoreInUse, dir, err)
	}
	return f, nil
}

// noteHolder writes who holds the store into its lock file.
func noteHolder(f *os.File, url string) {
	b, _ := json.Marshal(storeHolder{PID: os.Getpid(), URL: url})
	if err := f.Truncate(0); err == nil {
		f.WriteAt(b, 0)
	}
}

// StartServer starts an embedded JetStream server and waits until it is ready.
func StartServer(opts ServerOptions) (*Server, error) {
	if opts.MaxPayload == 0 {
		opts.MaxPayload = DefaultMaxPayload
	}
	if err := os.MkdirAll(opts.StoreDir, 0o755); err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	lock, err := lockStore(opts.StoreDir)
	if err != nil {
		return nil, err
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
	admin := ""
	if opts.Port == 0 {
		so.DontListen = true
	} else {
		// Listening: anonymous clients are refused.
		pubs, err := ensureIdentities(opts.StoreDir)
		if err != nil {
			lock.Close()
			return nil, err
		}
		so.Nkeys = nkeyUsers(pubs)
		admin = CredsFile(opts.StoreDir, RoleAdmin)
		if opts.TLSCert != "" {
			tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: opts.TLSCert, KeyFile: opts.TLSKey})
			if err != nil {
				lock.Close()
				return nil, fmt.Errorf("start nats: TLS certificate %s and key %s: %w", opts.TLSCert, opts.TLSKey, err)
			}
			so.TLSConfig, so.TLS, so.TLSTimeout = tc, true, 2
		}
	}
	if so.Host == "" {
		so.Host = "127.0.0.1"
	}
	ns, err := server.NewServer(so)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("start nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		lock.Close()
		return nil, fmt.Errorf("start nats: server not ready after 30s")
	}
	s := &Server{Server: ns, lock: lock, admin: admin}
	url := ""
	if !so.DontListen {
		url = ns.ClientURL()
	}
	noteHolder(lock, url)
	return s, nil
}

// Connect opens a client connection to the embedded server.
func (s *Server) Connect(name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1)}
	if s.admin != "" {
		o, err := CredsOption(s.admin)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	// The server's own services connect in-process, whether it listens
	// or not: no network, no TLS to verify.
	opts = append(opts, nats.InProcessServer(s.Server))
	url := ""
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
	if s.lock != nil {
		s.lock.Close() // releases the store
		s.lock = nil
	}
}

// Dial connects to an external server, failing fast when none answers.
func Dial(url, name string, id ClientIdentity) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(2 * time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
	}
	more, err := id.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, more...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect nats %s: %w", url, err)
	}
	return nc, nil
}

// ProvisionWithRetry is Provision retried for up to a minute, each attempt
// bounded to 10 seconds: a cluster that is still electing its leader answers
// after a while, or not at all.
func ProvisionWithRetry(ctx context.Context, js jetstream.JetStream, replicas int) error {
	return RetryFor(ctx, time.Minute, Backoff{}, func() error {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return Provision(actx, js, replicas)
	})
}

// Provision creates or updates the streams of StreamConfigs.
func Provision(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, cfg := range StreamConfigs(replicas) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range BucketConfigs(replicas) {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("provision bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// Follow delivers the messages of stream matching filter to fn, in order,
// from the first one (or from fromSeq when non-zero) until ctx ends or fn
// returns false. A broken subscription (a server restart, a cluster node
// going away) is resumed after the last delivered message, so fn sees every
// message once and in order; the break is logged once at WARN on log (nil:
// the default logger) and the resumption at INFO.
func Follow(ctx context.Context, log *slog.Logger, js jetstream.JetStream, stream, filter string, fromSeq uint64, fn func(jetstream.Msg) bool) error {
	if log == nil {
		log = slog.Default()
	}
	f := &follower{js: js, stream: stream, filter: filter, fn: fn, outage: outage{log: log,
		lost: "lost the stream's server; following again from the last message", resumed: "following resumed",
		attrs: []any{"stream", stream, "filter", filter}}}
	f.next.Store(fromSeq)
	for {
		err := f.once(ctx)
		if err == errStop || ctx.Err() != nil {
			return ctx.Err()
		}
		f.outage.begin(err)
		if !Sleep(ctx, 250*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// follower is one Follow: where it is in the stream and whom it tells.
type follower struct {
	js             jetstream.JetStream
	stream, filter string
	next           atomic.Uint64 // the stream sequence to resume from
	delivered      atomic.Uint64
	busy           atomic.Bool // fn is running: a slow fn is no stall
	fn             func(jetstream.Msg) bool
	outage         outage // touched by the following goroutine only
}

// once follows with one ordered consumer until it breaks, stalls or fn says
// stop (errStop).
func (f *follower) once(ctx context.Context) error {
	// The client recreates a broken ordered consumer under the same name,
	// and a name the cluster placed on a dead server never comes back up:
	// one attempt, then following starts over under a new name.
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{f.filter}, DeliverPolicy: jetstream.DeliverAllPolicy,
		InactiveThreshold: FollowInactiveThreshold, MaxResetAttempts: 1}
	if next := f.next.Load(); next > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, next
	}
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	cons, err := f.js.OrderedConsumer(cctx, f.stream, cfg)
	ccancel()
	if err != nil {
		return err
	}
	// The consumer is deleted when following ends; one left by a crashed
	// process goes after FollowInactiveThreshold.
	defer deleteConsumer(f.js, f.stream, cons)
	it, err := cons.Messages(jetstream.PullHeartbeat(FollowHeartbeat))
	if err != nil {
		return err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	stalled := make(chan error, 1)
	go f.watch(wctx, it, stalled)
	for {
		msg, err := it.Next()
		if err != nil {
			select {
			case why := <-stalled:
				return why
			default:
				return err
			}
		}
		if md, err := msg.Metadata(); err == nil {
			f.next.Store(md.Sequence.Stream + 1)
		}
		f.delivered.Add(1)
		f.outage.end()
		f.busy.Store(true)
		more := f.fn(msg)
		f.busy.Store(false)
		if !more {
			return errStop
		}
	}
}

// watch stops it when the consumer stalls: one whose server went away can
// stop delivering without an error. When, for two checks in a row, nothing
// was delivered while the stream holds a message for the filter past the
// last one delivered (or cannot be asked), following starts over after the
// last message delivered; the reason goes to stalled. It asks the stream,
// not the consumer: the ordered consumer's own methods wait for its
// recreation, which may never end while its server is gone.
func (f *follower) watch(ctx context.Context, it jetstream.MessagesContext, stalled chan<- error) {
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	seen, idle := f.delivered.Load(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if now := f.delivered.Load(); now != seen || f.busy.Load() {
			seen, idle = now, 0
			continue
		}
		err := f.behind(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			idle = 0
			continue
		}
		if idle++; idle >= 2 {
			stalled <- err
			it.Stop()
			return
		}
	}
}

// behind says why the follower is behind its stream: a message for the
// filter past the last one delivered, or a stream that cannot be asked; nil
// when it is not.
func (f *follower) behind(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := f.js.Stream(ctx, f.stream)
	if err != nil {
		return fmt.Errorf("follower cannot ask its stream: %w", err)
	}
	last, err := st.GetLastMsgForSubject(ctx, f.filter)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("follower cannot ask its stream: %w", err)
	case last.Sequence >= f.next.Load():
		return fmt.Errorf("the stream holds message %d for the follower, which delivers none", last.Sequence)
	}
	return nil
}

var errStop = errors.New("stop following")

// FollowHeartbeat is how often the server tells an idle follower that its
// consumer is alive; after two missed heartbeats the client recreates the
// consumer after the last message delivered.
const FollowHeartbeat = 2 * time.Second

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
	var kv jetstream.KeyValue
	err := RetryFor(ctx, time.Minute, Backoff{Min: 250 * time.Millisecond, Max: time.Second}, func() error {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var err error
		kv, err = js.KeyValue(actx, bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	return kv, nil
}
