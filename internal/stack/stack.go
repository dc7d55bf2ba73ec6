// Package stack runs the services (producer, writers, finalizer) in one
// process against an embedded or external NATS server, and is the client
// side of a sync: publish a request, follow its events, wait for the extract.
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/finalizer"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/gateway"
	"github.com/agnes-ai/connector-kit/internal/httpapi"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/schedules"
	"github.com/agnes-ai/connector-kit/producers"
	"github.com/agnes-ai/connector-kit/writer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Roles a da process can run.
const (
	RoleProducer  = "producer"
	RoleWriter    = "writer"
	RoleFinalizer = "finalizer"
	// RoleGateway serves webhooks over HTTP (GatewayListen).
	RoleGateway = "gateway"
	// RoleAPI runs only the sync API (APIListen), with its own NATS
	// identity against an authenticated bus.
	RoleAPI = "api"
	// RoleNone runs no service: only the bus (embedded server or client).
	RoleNone = "none"
)

// DefaultGatewayListen is the gateway's address when none is given.
const DefaultGatewayListen = "127.0.0.1:8088"

// AllRoles are the roles run when none is named.
var AllRoles = []string{RoleProducer, RoleWriter, RoleFinalizer}

// Options say which services to run and where.
type Options struct {
	Config   *config.Config
	Registry *connectors.Registry
	DataDir  string
	// NATSURL is an external server; empty starts an embedded one.
	NATSURL string
	// NATSCreds is the nkey seed file proving this process's identity to
	// the server at NATSURL ("" when it needs none).
	NATSCreds string
	// NATSCA is the CA file the server at NATSURL is verified with ("":
	// the system's).
	NATSCA string
	// NoProvision: this process's identity may not create streams and
	// buckets (a role's, not admin's); it waits for those its Identity
	// uses to be made (by the server's own da serve or "da nats
	// provision"), and reconciles no schedules.
	NoProvision bool
	// Identity is the role whose identity NATSCreds proves (natsbus roles).
	Identity string
	// Listen is the embedded server's client address ("" = in-process only).
	ListenHost string
	ListenPort int
	Roles      []string
	Writers    int
	// WriterName prefixes the writers' names in events and logs, and names
	// the producer in its heartbeat (default: the host name).
	WriterName string
	Logger     *slog.Logger
	// WriterAckWait, MaxDeliver and ProducerAckWait override the services'
	// redelivery limits (zero keeps the defaults).
	WriterAckWait   time.Duration
	MaxDeliver      int
	ProducerAckWait time.Duration
	// MaxBatchBytes bounds the batches a writer accepts (zero: default).
	MaxBatchBytes int64
	// GatewayListen is the webhook gateway's address (RoleGateway); empty
	// means DefaultGatewayListen, port 0 any free port (see GatewayAddr).
	GatewayListen string
	// Partitioned tables: compaction threshold (files per partition) and
	// how long replaced files are kept (zero: finalizer defaults).
	CompactMinFiles int
	RetireGrace     time.Duration
	// StreamFlushAfter is how long writers gather streamed batches into one
	// part (zero: writer default).
	StreamFlushAfter time.Duration
	// APIListen serves the sync API (empty: off), with APIToken as the
	// admin token; MetricsListen serves /metrics (empty: off).
	APIListen     string
	APIToken      string
	MetricsListen string
	// Schedules makes this a long-running service ("da serve"): the
	// config's schedules are reconciled onto the bus at start, and the
	// producer role also runs a scheduler that turns their ticks into runs.
	Schedules bool
}

// Stack is a set of running services and, when embedded, their NATS server.
type Stack struct {
	Server *natsbus.Server
	NC     *nats.Conn
	JS     jetstream.JetStream
	// WriterStats are the writers, for their counters after Stop.
	Writers []*writer.Writer
	// Finalizer is the finalizer service, when this stack runs one.
	Finalizer *finalizer.Finalizer
	// GatewayAddr is where the webhook gateway listens (RoleGateway),
	// APIAddr the sync API and MetricsAddr /metrics, when they run.
	GatewayAddr, APIAddr, MetricsAddr string
	// servers are every HTTP server of the stack, stopped first by Stop.
	servers []*http.Server

	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
	// roles are the roles this stack runs, schedules whether it runs
	// schedulers (for /readyz).
	roles     []string
	schedules bool
}

// Start connects to (or starts) NATS, provisions the streams and starts
// the requested roles and HTTP servers. Stop stops them.
func Start(ctx context.Context, o Options) (*Stack, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if len(o.Roles) == 0 {
		o.Roles = AllRoles
	}
	if o.Writers <= 0 {
		o.Writers = 2
	}
	o.Logger = slog.New(redact.Handler(o.Logger.Handler()))
	RegisterSecrets(o.Config, o.Registry)
	redact.RegisterURL(o.NATSURL)
	metrics.AddSources(sourceNames(o.Config))
	s := &Stack{roles: o.Roles, schedules: o.Schedules}
	if err := s.connect(ctx, o); err != nil {
		return nil, err
	}
	if o.Schedules && o.Config != nil && !o.NoProvision {
		if _, err := schedules.Reconcile(ctx, s.JS, o.Config, o.Logger); err != nil {
			s.Stop()
			return nil, fmt.Errorf("schedules: %w", err)
		}
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	for _, role := range o.Roles {
		if err := s.startRole(runCtx, role, o); err != nil {
			s.Stop()
			return nil, err
		}
	}
	if err := s.startHTTP(o); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// RegisterSecrets registers every secret of cfg for scrubbing (see
// redact): the NATS URL's password or token, each source's webhook secret
// and the values its connector's manifest marks secret.
func RegisterSecrets(cfg *config.Config, reg *connectors.Registry) {
	if cfg == nil {
		return
	}
	redact.RegisterURL(cfg.NATS.URL)
	for _, src := range cfg.Sources {
		redact.Register(src.WebhookSecret)
		if reg == nil {
			continue
		}
		if r, err := reg.Lookup(src.Connector); err == nil && r.Manifest != nil {
			redact.Register(r.Manifest.Secrets(src.Config)...)
		}
	}
}

// connect starts the embedded server (or dials the external one) and
// provisions the streams.
func (s *Stack) connect(ctx context.Context, o Options) error {
	var err error
	if o.NATSURL == "" {
		so := natsbus.ServerOptions{StoreDir: filepath.Join(o.DataDir, ".nats"), Host: o.ListenHost, Port: o.ListenPort}
		if o.Config != nil {
			so.TLSCert, so.TLSKey = o.Config.NATS.TLS.Cert, o.Config.NATS.TLS.Key
		}
		s.Server, err = natsbus.StartServer(so)
		if err != nil {
			return err
		}
		s.NC, err = s.Server.Connect("da")
	} else {
		s.NC, err = natsbus.Dial(o.NATSURL, "da", natsbus.ClientIdentity{Creds: o.NATSCreds, CA: o.NATSCA})
	}
	if err != nil {
		s.stopServer()
		return err
	}
	if s.JS, err = natsbus.JetStream(s.NC, natsbus.PublishAckTimeout); err == nil {
		if o.NoProvision {
			err = natsbus.WaitProvisioned(ctx, s.JS, o.Identity, o.Logger)
		} else {
			err = natsbus.ProvisionWithRetry(ctx, s.JS, max(o.Config.NATS.Replicas, 1))
		}
	}
	if err != nil {
		s.NC.Close()
		s.stopServer()
		return err
	}
	return nil
}

// run starts one service; its error, unless it came after Stop began (a
// consumer creation cut short is part of stopping), is returned by Stop.
func (s *Stack) run(ctx context.Context, name string, log *slog.Logger, fn func(context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			log.Error("service stopped with error", "service", name, "err", err)
			s.fail(fmt.Errorf("%s: %w", name, err))
		}
	}()
}

func (s *Stack) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// startRole starts the services of one role.
func (s *Stack) startRole(ctx context.Context, role string, o Options) error {
	switch role {
	case RoleProducer:
		po := producers.Options{JS: s.JS, Registry: o.Registry, Sources: ProducerSources(o.Config),
			MaxPayload: int(s.NC.MaxPayload()), AckWait: o.ProducerAckWait, Name: o.WriterName, SourceNames: sourceNames(o.Config),
			Logger: o.Logger}
		s.run(ctx, role, o.Logger, producers.New(po).Run)
		s.run(ctx, "webhooks", o.Logger, producers.NewHooks(po).Run)
		if o.Schedules {
			s.run(ctx, "scheduler", o.Logger, schedules.New(s.JS, o.Config, o.Logger).Run)
		}
	case RoleWriter:
		for i := range o.Writers {
			w := writer.New(writer.Options{JS: s.JS, DataDir: o.DataDir, Name: writerName(o.WriterName, i),
				AckWait: o.WriterAckWait, MaxDeliver: o.MaxDeliver, MaxBatchBytes: o.MaxBatchBytes, Logger: o.Logger,
				StreamFlushAfter: o.StreamFlushAfter})
			s.Writers = append(s.Writers, w)
			s.run(ctx, role, o.Logger, w.Run)
		}
	case RoleFinalizer:
		f, err := finalizer.New(finalizer.Options{JS: s.JS, DataDir: o.DataDir, Logger: o.Logger,
			CompactMinFiles: o.CompactMinFiles, RetireGrace: o.RetireGrace})
		if err != nil {
			return err
		}
		s.Finalizer = f
		s.run(ctx, role, o.Logger, f.Run)
		s.run(ctx, "recorder", o.Logger, runs.NewRecorder(s.JS, o.Logger).Run)
		s.run(ctx, "reaper", o.Logger, runs.NewReaper(s.JS, o.Logger).Run)
	case RoleGateway:
		addr := o.GatewayListen
		if addr == "" {
			addr = DefaultGatewayListen
		}
		g := gateway.New(s.JS, o.Config, o.Registry, 0, o.Logger)
		mux := http.NewServeMux()
		g.Register(mux)
		mux.HandleFunc("GET /healthz", g.Health)
		mux.HandleFunc("GET /readyz", s.readyz)
		var err error
		s.GatewayAddr, err = s.serve("webhook gateway", addr, mux, o.Logger)
		return err
	case RoleAPI:
		if o.APIListen == "" {
			return fmt.Errorf("the api role serves the sync API: give it an address (--http-listen)")
		}
	case RoleNone:
	default:
		return fmt.Errorf("unknown role %q (valid: producer, writer, finalizer, gateway)", role)
	}
	return nil
}

// startHTTP starts the sync API and the metrics endpoint, when asked for.
func (s *Stack) startHTTP(o Options) error {
	var err error
	if o.APIListen != "" {
		if o.APIToken == "" {
			o.Logger.Info("sync API: no bootstrap admin token; only tokens made with \"da auth token create\" are accepted", "env", httpapi.TokenEnv)
		}
		api := httpapi.New(s.JS, o.Config, o.APIToken, o.Logger)
		if o.Config != nil {
			proxies, err := o.Config.API.Proxies()
			if err != nil {
				return fmt.Errorf("api.trusted_proxies: %w", err)
			}
			api.TrustProxies(proxies)
		}
		mux := http.NewServeMux()
		mux.Handle("/", api.Handler())
		mux.HandleFunc("GET /readyz", s.readyz)
		if s.APIAddr, err = s.serve("sync API", o.APIListen, mux, o.Logger); err != nil {
			return err
		}
	}
	if o.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics.Handler())
		s.HealthHandlers(mux)
		if s.MetricsAddr, err = s.serve("metrics", o.MetricsListen, mux, o.Logger); err != nil {
			return err
		}
	}
	return nil
}

// serve starts one HTTP server on addr and returns the address it listens
// on; a server that fails later is reported by Stop.
func (s *Stack) serve(name, addr string, h http.Handler, log *slog.Logger) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s: listen on %s: %w", name, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
	s.servers = append(s.servers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", "server", name, "err", err)
			s.fail(fmt.Errorf("%s: %w", name, err))
		}
	}()
	log.Info(name+" listening", "addr", ln.Addr().String())
	return ln.Addr().String(), nil
}

// ProducerSources translates the configured sources into what the
// producer needs of them.
func ProducerSources(cfg *config.Config) producers.SourceLookup {
	return func(name string) (producers.Source, error) {
		src, err := cfg.Source(name)
		if err != nil {
			return producers.Source{}, err
		}
		out := producers.Source{Name: src.Name, Connector: src.Connector, Config: src.Config, Tables: src.Tables,
			SchemaPolicy: src.SchemaPolicy, Options: make(map[string]producers.TablePolicy, len(src.TableOptions))}
		for t, o := range src.TableOptions {
			out.Options[t] = producers.TablePolicy{SchemaPolicy: o.SchemaPolicy, IncrementalKey: o.IncrementalKey,
				PrimaryKey: o.PrimaryKey, Incremental: o.Incremental, QueryMode: o.QueryMode, Query: o.Query}
		}
		return out, nil
	}
}

func writerName(base string, i int) string {
	if base == "" {
		// The host name: distinct for each replica of a container.
		base, _ = os.Hostname()
	}
	if base == "" {
		base = "writer"
	}
	return fmt.Sprintf("%s-%d", base, i+1)
}

// Stop cancels the services, waits for them to flush and stop, then closes
// the connection and the embedded server. It returns the services' errors.
func (s *Stack) Stop() error {
	// Requests in flight finish (their publish is acknowledged or fails)
	// before the bus goes away.
	for _, srv := range s.servers {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		srv.Shutdown(sctx)
		cancel()
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.NC != nil {
		s.NC.Drain()
		s.NC.Close()
	}
	s.stopServer()
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

func (s *Stack) stopServer() {
	if s.Server != nil {
		s.Server.Stop()
		s.Server = nil
	}
}

// sourceNames are the names of cfg's sources (none for a nil config).
func sourceNames(cfg *config.Config) []string {
	if cfg == nil {
		return nil
	}
	var names []string
	for _, src := range cfg.Sources {
		names = append(names, src.Name)
	}
	return names
}
