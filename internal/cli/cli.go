// Package cli implements the da command: sync, serve, bench and connector.
// cmd/da only calls Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/stack"
)

const usage = `da — the Agnes Connector Kit

Usage:
  da sync <source> [flags]      run a sync and wait for its extract
  da serve [flags]              run the services until SIGINT/SIGTERM
  da connector list             list the built-in connectors
  da connector discover <src>   show a source's tables and Arrow schemas
  da connector test <src>       run the contract checks against a source
  da connector check <src>      test a source's connection and credentials (reads no data)
  da connector new <name>       scaffold a connector (--caps discover,read,...)
  da verify <source>            check a published extract against the contract
  da dead-letters [--source s]  list batches that could not be written, with the reason
  da runs [flags]               list past and current runs, newest first (--source, --status, --limit, --json)
  da status [--json]            each source's last run and freshness
  da cancel <run-id>            stop a run; the live extract stays as it is
  da auth token create|list|revoke   the sync API's tokens (--role viewer|operator|admin); da auth audit
  da nats config|provision      an external nats-server's users and permissions; provision it as admin
  da healthcheck [URL]          exit 0 when a da serve's /readyz answers 200 (default ` + DefaultHealthURL + `)
  da bench [flags]              measure end-to-end and direct Parquet throughput
  da help                       show this help

Run "da <command> -h" for a command's flags. runs, status, cancel and auth go through a
sync API instead of the bus with --api URL ($DA_API_URL) and a token (--token or $DA_TOKEN).
`

// Run executes the da command line and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "sync":
		err = runSync(ctx, args[1:], stdout, stderr)
	case "serve":
		err = runServe(ctx, args[1:], stdout, stderr)
	case "bench":
		err = runBench(ctx, args[1:], stdout, stderr)
	case "dead-letters":
		err = runDeadLetters(ctx, args[1:], stdout, stderr)
	case "runs":
		err = runRuns(ctx, args[1:], stdout, stderr)
	case "status":
		err = runStatus(ctx, args[1:], stdout, stderr)
	case "cancel":
		err = runCancel(ctx, args[1:], stdout, stderr)
	case "nats":
		err = runNATS(ctx, args[1:], stdout, stderr)
	case "auth":
		err = runAuth(ctx, args[1:], stdout, stderr)
	case "healthcheck":
		err = runHealthcheck(ctx, args[1:], stdout, stderr)
	case "verify":
		err = runVerify(ctx, args[1:], stdout, stderr)
	case "connector", "connectors":
		err = runConnector(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "da: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	var ec exitCode
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ec):
		return int(ec)
	default:
		fmt.Fprintf(stderr, "da %s: %s\n", args[0], redact.Terminal(redact.String(err.Error())))
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
}

// exitCode ends the command with a code after it has printed its own report.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

type usageError struct{ error }

// parseArgs parses flags that may come before, between or after positional
// arguments, returning the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parseFlagsOnly parses args of a command that takes no positional
// argument.
func parseFlagsOnly(fs *flag.FlagSet, args []string) error {
	pos, err := parseArgs(fs, args)
	if err == nil && len(pos) > 0 {
		err = usageError{fmt.Errorf("unexpected argument %q", pos[0])}
	}
	return err
}

// commonFlags are shared by sync, serve and bench.
type commonFlags struct {
	configPath string
	dataDir    string
	natsURL    string
	writers    int
	// urlFrom says where the NATS URL came from (for "da sync" to print),
	// set by load; "" when none is configured.
	urlFrom string
	// natsCreds is --nats-creds.
	natsCreds string
	// identity is the role whose identity connect uses from the data dir
	// ("": cli).
	identity string
}

// NATSCredsEnv names the nkey seed file a client proves its identity with.
const NATSCredsEnv = "DA_NATS_CREDS"

// NATSCAEnv names the CA file a client verifies a TLS server with.
const NATSCAEnv = "DA_NATS_CA"

// ca is the CA file to verify a named server with: $DA_NATS_CA, else the
// config's nats.tls.ca ("" : the system's).
func ca(cfg *config.Config) string {
	if v := os.Getenv(NATSCAEnv); v != "" {
		return v
	}
	return cfg.NATS.TLS.CA
}

// creds is the identity file to connect to a named server as role with,
// and where it came from: --nats-creds, $DA_NATS_CREDS, or the file of
// that role in the data dir (the data dir of the server's own da serve);
// "" when there is none (a server that needs none).
func (c *commonFlags) creds(cfg *config.Config, role string) (path, from string) {
	switch {
	case c.natsCreds != "":
		return c.natsCreds, "--nats-creds"
	case os.Getenv(NATSCredsEnv) != "":
		return os.Getenv(NATSCredsEnv), "$" + NATSCredsEnv
	}
	p := natsbus.CredsFile(filepath.Join(cfg.DataDir, ".nats"), role)
	if _, err := os.Stat(p); err == nil {
		return p, "the data dir"
	}
	return "", ""
}

// NATSURLEnv names the NATS server for every command (NATS_URL is read too,
// for compatibility).
const NATSURLEnv = "DA_NATS_URL"

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.configPath, "config", "", "config file (YAML, ${ENV} expanded); default: a built-in demo source")
	fs.StringVar(&c.dataDir, "data-dir", "", "data directory; extracts go to <data-dir>/extracts/<source>/ (default ./data)")
	fs.StringVar(&c.natsURL, "nats-url", "", "NATS server URL (default: $DA_NATS_URL, $NATS_URL, the config's nats.url; none: an in-process embedded server)")
	fs.IntVar(&c.writers, "writers", 2, "writer workers in this process")
	fs.StringVar(&c.natsCreds, "nats-creds", "", "nkey seed file of this process's NATS identity (default: $DA_NATS_CREDS, or the role's file in <data-dir>/.nats/creds/)")
}

// load reads the config and applies flag and environment overrides.
func (c *commonFlags) load() (*config.Config, error) {
	var cfg *config.Config
	var err error
	if c.configPath == "" {
		cfg = config.Default()
	} else if cfg, err = config.Load(c.configPath); err != nil {
		return nil, err
	}
	if c.dataDir != "" {
		cfg.DataDir = c.dataDir
	} else if v := os.Getenv("DA_DATA_DIR"); v != "" {
		cfg.DataDir = v
	}
	switch {
	case c.natsURL != "":
		cfg.NATS.URL, c.urlFrom = c.natsURL, "--nats-url"
	case os.Getenv(NATSURLEnv) != "":
		cfg.NATS.URL, c.urlFrom = os.Getenv(NATSURLEnv), "$"+NATSURLEnv
	case cfg.NATS.URL != "":
		c.urlFrom = "nats.url in " + cfg.Path()
	case os.Getenv("NATS_URL") != "":
		cfg.NATS.URL, c.urlFrom = os.Getenv("NATS_URL"), "$NATS_URL"
	}
	if c.writers < 1 {
		return nil, usageError{fmt.Errorf("--writers must be at least 1, got %d", c.writers)}
	}
	stack.RegisterSecrets(cfg, builtin.Registry())
	return cfg, nil
}

// newLogger logs JSON when stderr is not a terminal and text when it is, at
// LOG_LEVEL (debug, info, warn, error) or def.
func newLogger(w io.Writer, def slog.Level) *slog.Logger {
	level := def
	if v := os.Getenv("LOG_LEVEL"); v != "" {
		_ = level.UnmarshalText([]byte(strings.ToUpper(v)))
	}
	opts := &slog.HandlerOptions{Level: level}
	if isTerminal(w) {
		return slog.New(redact.Handler(slog.NewTextHandler(w, opts)))
	}
	return slog.New(redact.Handler(slog.NewJSONHandler(w, opts)))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
