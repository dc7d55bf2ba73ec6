package tests

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	soak      = flag.Bool("soak", false, "run the long fault trials (more trials, more rows)")
	trialSeed = flag.Int64("trial-seed", 0, "replay fault trials from this seed")
)

// --- binaries ---

var (
	buildOnce              sync.Once
	daBin, natsBin, binErr = "", "", error(nil)
)

// binaries builds the da binary and a nats-server binary (from the module
// already in go.mod) once per test run.
func binaries(t *testing.T) (string, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("process tests build binaries")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "agnes-bin-")
		if err != nil {
			binErr = err
			return
		}
		daBin, natsBin = filepath.Join(dir, "da"), filepath.Join(dir, "nats-server")
		for _, b := range [][]string{{daBin, "../cmd/da"}, {natsBin, "github.com/nats-io/nats-server/v2"}} {
			out, err := exec.Command("go", "build", "-o", b[0], b[1]).CombinedOutput()
			if err != nil {
				binErr = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return daBin, natsBin
}

// --- processes ---

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(t *testing.T, dir, name, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "LOG_LEVEL=info")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits, killing after 20 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func freePort(t *testing.T) int {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts returns n distinct free ports: every listener stays open
// until all are chosen, so the kernel cannot hand the same port out twice
// (a cluster's client and route ports once collided that way).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// waitPort waits for p to listen on port; p exiting first (a port taken
// meanwhile, a bad flag) fails at once with its output. The wait is long
// because a loaded CI machine starts processes slowly.
func waitPort(t *testing.T, p *proc, port int) {
	t.Helper()
	natstest.Poll(t, time.Minute, func() (bool, string) {
		select {
		case <-p.done:
			t.Fatalf("%s exited before listening on port %d:\n%s", p.name, port, p.output())
		default:
		}
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return false, fmt.Sprintf("nothing listens on port %d", port)
		}
		c.Close()
		return true, ""
	})
}

// contend keeps every core busy with spinning goroutines until the test
// ends, so the processes under test run as on a loaded machine: timeouts
// tuned to an idle box fail here instead of in CI.
func contend(t *testing.T) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				if n%1_000_000 == 0 {
					select {
					case <-stop:
						return
					default:
					}
				}
			}
		}()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
}

// --- an environment of processes ---

type procEnv struct {
	t        *testing.T
	dir      string
	dataDir  string
	cfgPath  string
	creds    string // the roles' seed files
	url      string
	urls     []string   // per server
	natsArgs [][]string // per server, to restart it
	servers  []*proc
	procs    []*proc
	nc       *nats.Conn
	js       jetstream.JetStream
	rows     int64
	custRows int64
}

// newProcEnv starts nServers NATS servers (a cluster when more than one),
// with authentication on: "da nats config" makes each role's identity and
// the servers' config; the environment provisions the streams as admin
// ("da nats provision") and every process uses its own role's identity.
// It writes a config with a demo source of rows orders.
func newProcEnv(t *testing.T, nServers int, rows, custRows int64) *procEnv {
	t.Helper()
	da, natsBin := binaries(t)
	e := &procEnv{t: t, dir: t.TempDir(), rows: rows, custRows: custRows}
	e.dataDir = filepath.Join(e.dir, "data")
	e.creds = filepath.Join(e.dir, "creds")
	natsConf := filepath.Join(e.dir, "nats.conf")
	if out, err := exec.Command(da, "nats", "config", "--creds-dir", e.creds, "--role-dirs", "--out", natsConf).CombinedOutput(); err != nil {
		t.Fatalf("da nats config: %v\n%s", err, out)
	}
	all := freePorts(t, 2*nServers)
	ports, cports := all[:nServers], all[nServers:]
	var urls, routes []string
	for i := range nServers {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", cports[i]))
	}
	for i := range nServers {
		args := []string{"-c", natsConf, "-a", "127.0.0.1", "-p", fmt.Sprint(ports[i]), "-js", "-sd", filepath.Join(e.dir, fmt.Sprintf("nats%d", i)), "-n", fmt.Sprintf("n%d", i)}
		if nServers > 1 {
			args = append(args, "-cluster_name", "agnes", "-cluster", routes[i], "-routes", strings.Join(routes, ","))
		}
		e.natsArgs = append(e.natsArgs, args)
		e.servers = append(e.servers, startProc(t, e.dir, fmt.Sprintf("nats%d", i), natsBin, args...))
	}
	for i, p := range ports {
		waitPort(t, e.servers[i], p)
	}
	e.urls = urls
	e.url = strings.Join(urls, ",")
	replicas := 1
	if nServers >= 3 {
		replicas = 3
	}
	cfg := fmt.Sprintf("data_dir: %s\nnats:\n  url: %s\n  replicas: %d\nsources:\n  - name: demo\n    connector: demo\n    config: {rows: %d, customer_rows: %d, batch_size: 5000}\n",
		e.dataDir, e.url, replicas, rows, custRows)
	e.cfgPath = filepath.Join(e.dir, "agnes.yaml")
	os.WriteFile(e.cfgPath, []byte(cfg), 0o644)
	e.nc = e.connect(e.url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	e.js, _ = jetstream.New(e.nc)
	e.provision()
	return e
}

// credsFile is the seed file of role's identity, in a folder of its own
// as the compose file mounts it.
func (e *procEnv) credsFile(role string) string { return filepath.Join(e.creds, role, role+".nk") }

// connect connects to url as admin.
func (e *procEnv) connect(url string, opts ...nats.Option) *nats.Conn {
	e.t.Helper()
	admin, err := natsbus.CredsOption(e.credsFile(natsbus.RoleAdmin))
	if err != nil {
		e.t.Fatal(err)
	}
	nc, err := nats.Connect(url, append(opts, admin)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

// provision runs "da nats provision" as admin: streams, buckets and the
// config's schedules.
func (e *procEnv) provision() {
	e.t.Helper()
	da, _ := binaries(e.t)
	cmd := exec.Command(da, "nats", "provision", "--config", e.cfgPath, "--nats-creds", e.credsFile(natsbus.RoleAdmin))
	if out, err := cmd.CombinedOutput(); err != nil {
		for _, p := range e.servers {
			e.t.Logf("--- %s\n%s", p.name, tail(p.output(), 10))
		}
		e.t.Fatalf("da nats provision: %v\n%s", err, out)
	}
}

// schedule gives the demo source a schedule in the config and applies it.
func (e *procEnv) schedule(spec string) {
	e.t.Helper()
	b, err := os.ReadFile(e.cfgPath)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "    connector: demo\n", fmt.Sprintf("    connector: demo\n    schedule: %q\n", spec), 1)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.provision()
}

// serve starts "da serve" with one role.
func (e *procEnv) serve(name, role string, extra ...string) *proc {
	e.t.Helper()
	da, _ := binaries(e.t)
	args := append([]string{"serve", "--role", role, "--config", e.cfgPath, "--writers", "1", "--name", name, "--nats-creds", e.credsFile(role),
		"--ack-wait", "2s", "--producer-ack-wait", "3s"}, extra...)
	p := startProc(e.t, e.dir, name, da, args...)
	e.procs = append(e.procs, p)
	return p
}

func (e *procEnv) restartServer(i int) {
	e.t.Helper()
	_, natsBin := binaries(e.t)
	e.servers[i] = startProc(e.t, e.dir, fmt.Sprintf("nats%d", i), natsBin, e.natsArgs[i]...)
}

// startSync publishes a sync request and returns its run id.
func (e *procEnv) startSync() string {
	e.t.Helper()
	id := uuid.NewString()
	b := fmt.Sprintf(`{"run_id":%q,"source":"demo","requested_at":%q}`, id, time.Now().UTC().Format(time.RFC3339Nano))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := natsbus.Retry(ctx, func() error {
		_, err := e.js.Publish(ctx, schemas.SyncSubject("demo"), []byte(b), jetstream.WithMsgID(id))
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	return id
}

// waitEvent waits for an event of the run matching pred and returns it.
func (e *procEnv) waitEvent(run string, timeout time.Duration, pred func(schemas.Event) bool) (schemas.Event, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var found schemas.Event
	ok := false
	natsbus.Follow(ctx, nil, e.js, schemas.EventStream, schemas.RunEventsFilter("demo", run), 0, func(m jetstream.Msg) bool {
		ev, err := schemas.DecodeEvent(m.Data())
		if err == nil && pred(ev) {
			found, ok = ev, true
			return false
		}
		return true
	})
	return found, ok
}

// eventTime is when the bus stored the last event of type typ of run, and
// whether there is one.
func (e *procEnv) eventTime(run string, typ schemas.EventType) (time.Time, bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var m *jetstream.RawStreamMsg
	err := natsbus.Retry(ctx, func() error {
		s, err := e.js.Stream(ctx, schemas.EventStream)
		if err != nil {
			return err
		}
		m, err = s.GetLastMsgForSubject(ctx, schemas.EventSubject("demo", run, typ))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		e.t.Fatalf("read the %s event of run %s: %v", typ, run, err)
	}
	if m == nil {
		return time.Time{}, false
	}
	return m.Time, true
}

func isType(types ...schemas.EventType) func(schemas.Event) bool {
	return func(e schemas.Event) bool {
		for _, t := range types {
			if e.Type == t {
				return true
			}
		}
		return false
	}
}

// finish waits for the run's outcome: the extract_published event, or
// run_failed.
func (e *procEnv) finish(run string, timeout time.Duration) schemas.Event {
	e.t.Helper()
	ev, ok := e.waitEvent(run, timeout, isType(schemas.EventExtractPublished, schemas.EventRunFailed, schemas.EventRunRejected))
	if !ok {
		var logs strings.Builder
		for _, p := range append(e.servers, e.procs...) {
			fmt.Fprintf(&logs, "--- %s\n%s\n", p.name, tail(p.output(), 15))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.dumpBus(ctx, &logs)
		if st, err := e.js.Stream(ctx, schemas.EventStream); err != nil {
			fmt.Fprintf(&logs, "event stream: %v\n", err)
		} else if m, err := st.GetLastMsgForSubject(ctx, schemas.EventSubject("demo", run, schemas.EventExtractPublished)); err != nil {
			fmt.Fprintf(&logs, "last extract_published: %v\n", err)
		} else {
			fmt.Fprintf(&logs, "extract_published IS in the stream at seq %d\n", m.Sequence)
		}
		e.t.Fatalf("run %s did not finish in %s\n%s", run, timeout, logs.String())
	}
	return ev
}

// dumpBus writes what the bus knows of the run's machinery: each durable
// consumer's leader, pending, ack-pending and waiting pulls, and the
// streams' leaders and sizes.
func (e *procEnv) dumpBus(ctx context.Context, w io.Writer) {
	consumers := [][2]string{{schemas.SyncStream, schemas.ProducerConsumer}}
	for _, name := range schemas.WriterConsumers() {
		consumers = append(consumers, [2]string{schemas.DataStream, name})
	}
	for _, c := range consumers {
		info, err := e.js.Consumer(ctx, c[0], c[1])
		if err != nil {
			fmt.Fprintf(w, "consumer %s: %v\n", c[1], err)
			continue
		}
		ci := info.CachedInfo()
		leader := ""
		if ci.Cluster != nil {
			leader = ci.Cluster.Leader
		}
		fmt.Fprintf(w, "consumer %s: leader %q pending %d ack-pending %d waiting %d redelivered %d delivered %d acked %d\n",
			c[1], leader, ci.NumPending, ci.NumAckPending, ci.NumWaiting, ci.NumRedelivered, ci.Delivered.Stream, ci.AckFloor.Stream)
	}
	for _, name := range []string{schemas.SyncStream, schemas.DataStream, schemas.EventStream} {
		st, err := e.js.Stream(ctx, name)
		if err != nil {
			fmt.Fprintf(w, "stream %s: %v\n", name, err)
			continue
		}
		si := st.CachedInfo()
		leader := ""
		if si.Cluster != nil {
			leader = si.Cluster.Leader
		}
		fmt.Fprintf(w, "stream %s: leader %q msgs %d last seq %d consumers %d\n", name, leader, si.State.Msgs, si.State.LastSeq, si.State.Consumers)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// writerShares counts the rows each writer wrote in the run's published attempt.
func (e *procEnv) writerShares(run string) map[string]int64 {
	shares := map[string]int64{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, _ := e.js.Stream(ctx, schemas.EventStream)
	info, _ := stream.Info(ctx)
	last := info.State.LastSeq
	natsbus.Follow(ctx, nil, e.js, schemas.EventStream, schemas.EventSubject("demo", run, schemas.EventBatchWritten), 0, func(m jetstream.Msg) bool {
		ev, _ := schemas.DecodeEvent(m.Data())
		shares[ev.Writer] += ev.Rows
		md, _ := m.Metadata()
		return md != nil && md.Sequence.Stream < last
	})
	return shares
}

// --- checking published data against the source ---

var (
	refMu   sync.Mutex
	refSums = map[string]map[string]string{}
)

// tableSums fingerprints each demo table as "rows/distinct ids/sum of row
// hashes": equal sums mean equal row multisets.
func tableSums(t *testing.T, db *sql.DB, from func(table string) string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for table, schema := range map[string][]string{"orders": names(demo.OrdersSchema.Fields()), "customers": names(demo.CustomersSchema.Fields())} {
		var n, d int64
		var h string
		q := fmt.Sprintf(`SELECT count(*), count(DISTINCT id), sum(hash(%s))::VARCHAR FROM %s`, strings.Join(schema, ", "), from(table))
		if err := db.QueryRow(q).Scan(&n, &d, &h); err != nil {
			t.Fatalf("fingerprint %s: %v", table, err)
		}
		out[table] = fmt.Sprintf("%d/%d/%s", n, d, h)
	}
	return out
}

func names(fields []arrow.Field) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = `"` + f.Name + `"`
	}
	return out
}

// reference computes the fingerprints of the demo source's own data.
func reference(t *testing.T, rows, cust int64) map[string]string {
	t.Helper()
	key := fmt.Sprintf("%d/%d", rows, cust)
	refMu.Lock()
	defer refMu.Unlock()
	if s, ok := refSums[key]; ok {
		return s
	}
	dir := t.TempDir()
	c := demo.New(demo.Options{Rows: rows, CustomerRows: cust, Seed: 42})
	tables, _ := c.Discover(context.Background())
	for _, ti := range tables {
		if _, err := parquetfile.WriteAll(filepath.Join(dir, ti.Name+".parquet"), ti.Schema,
			c.Read(context.Background(), ti.Name, connectors.ReadOptions{})); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := tableSums(t, db, func(table string) string {
		return fmt.Sprintf("read_parquet('%s')", filepath.Join(dir, table+".parquet"))
	})
	refSums[key] = s
	return s
}

// verifyPublished checks the extract's contract and that every published
// table holds exactly the source's rows: none lost, none duplicated.
func (e *procEnv) verifyPublished() {
	e.t.Helper()
	path := filepath.Join(e.dataDir, "extracts", "demo", "extract.duckdb")
	if _, err := extractcheck.Verify(context.Background(), path); err != nil {
		var logs strings.Builder
		for _, p := range e.procs {
			if strings.HasPrefix(p.name, "finalizer") {
				fmt.Fprintf(&logs, "--- %s\n%s\n", p.name, tail(p.output(), 30))
			}
		}
		e.t.Fatalf("extract contract: %v\n%s", err, logs.String())
	}
	db := openRO(e.t, path)
	got := tableSums(e.t, db, func(table string) string { return `"` + table + `"` })
	db.Close()
	want := reference(e.t, e.rows, e.custRows)
	for table, w := range want {
		if got[table] != w {
			e.t.Errorf("%s: published rows/distinct/hash %s, source %s", table, got[table], w)
		}
	}
}
