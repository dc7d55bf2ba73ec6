package cli

import (
	"os"

	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/agnes-ai/connector-kit/internal/httpapi"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/stack"
)

type roleList []string

func (r *roleList) String() string { return strings.Join(*r, ",") }
func (r *roleList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		switch p = strings.TrimSpace(p); p {
		case stack.RoleProducer, stack.RoleWriter, stack.RoleFinalizer, stack.RoleGateway, stack.RoleAPI, stack.RoleNone:
			*r = append(*r, p)
		default:
			return fmt.Errorf("unknown role %q (valid: producer, writer, finalizer, gateway, api, none)", p)
		}
	}
	return nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	var roles roleList
	fs.Var(&roles, "role", "service to run: producer, writer, finalizer, gateway, api (only the sync API), or none (only the bus: the embedded NATS server) (repeatable; default all)")
	webhookListen := fs.String("webhook-listen", stack.DefaultGatewayListen, "address of the webhook gateway (POST /webhooks/{source}, GET /healthz) when the gateway role runs")
	listen := fs.String("nats-listen", "127.0.0.1:4222", "client address of the embedded NATS server (when --nats-url is not set)")
	ackWait := fs.Duration("ack-wait", 0, "how long a writer may hold a batch without signalling progress before it is redelivered (default 60s)")
	maxDeliver := fs.Int("max-deliver", 0, "deliveries of a batch before it is dead-lettered (default 10)")
	producerAckWait := fs.Duration("producer-ack-wait", 0, "how long a producer may go silent before its sync request is redelivered (default 30s)")
	retireGrace := fs.Duration("retire-grace", 0, "how long a file the live extract no longer reads is kept for readers of an older extract (default 5m)")
	name := fs.String("name", "", "name of this process's writers in events and logs (default: the host name, distinct for each container replica)")
	metricsListen := fs.String("metrics-listen", "", "address serving Prometheus metrics at /metrics; empty: off")
	httpListen := fs.String("http-listen", "", "address of the sync API (POST /api/sync/trigger, GET /api/sync/runs/{id}); empty: off. Needs $"+httpapi.TokenEnv)
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	cfg, err := c.load()
	if err != nil {
		return err
	}
	log := newLogger(stderr, slog.LevelInfo)
	host, portS, err := net.SplitHostPort(*listen)
	if err != nil {
		return usageError{fmt.Errorf("--nats-listen %q: %w", *listen, err)}
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return usageError{fmt.Errorf("--nats-listen %q: bad port", *listen)}
	}
	if len(roles) == 0 {
		roles = orAll(nil)
	}
	// Against a named server: the identity of this process's one role (all
	// of them: admin).
	identity := natsbus.RoleAdmin
	if len(roles) == 1 && roles[0] != stack.RoleNone {
		identity = roles[0]
	}
	creds, _ := c.creds(cfg, identity)
	st, err := stack.Start(ctx, stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: cfg.DataDir,
		NATSURL: cfg.NATS.URL, NATSCreds: creds, NATSCA: ca(cfg), NoProvision: creds != "" && identity != natsbus.RoleAdmin, Identity: identity, ListenHost: host, ListenPort: port, Roles: roles, Writers: c.writers, Logger: log,
		GatewayListen: *webhookListen,
		WriterAckWait: *ackWait, MaxDeliver: *maxDeliver, ProducerAckWait: *producerAckWait, WriterName: *name,
		RetireGrace: *retireGrace, APIListen: *httpListen, APIToken: os.Getenv(httpapi.TokenEnv), MetricsListen: *metricsListen,
		Schedules: true})
	if err != nil {
		return err
	}
	where := cfg.NATS.URL
	if st.Server != nil {
		where = st.Server.ClientURL() + " (embedded)"
	}
	log.Info("da serving", "nats", redact.URL(where), "roles", strings.Join(orAll(roles), ","), "data_dir", cfg.DataDir)
	<-ctx.Done()
	log.Info("shutting down")
	return st.Stop()
}

func orAll(r []string) []string {
	if len(r) == 0 {
		return append(slices.Clone(stack.AllRoles), stack.RoleGateway)
	}
	return r
}
