package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
)

// The roles the bench reports, in order.
const roleWriterName = "writer"

var benchRoles = []string{"producer", roleWriterName, "finalizer", "nats"}

// procUsage is what a finished child process used.
type procUsage struct {
	cpu     float64 // user + system seconds
	peakRSS int64   // bytes
}

func usageOf(ps *os.ProcessState) procUsage {
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return procUsage{}
	}
	sec := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	// Linux reports ru_maxrss in KiB.
	return procUsage{cpu: sec(ru.Utime) + sec(ru.Stime), peakRSS: ru.Maxrss * 1024}
}

// runPhase runs "da bench --phase <phase>" as a child process and reads
// its result.
func runPhase(ctx context.Context, o benchOptions, phase string, stderr io.Writer) (phaseResult, procUsage, error) {
	self, err := os.Executable()
	if err != nil {
		return phaseResult{}, procUsage{}, err
	}
	cmd := exec.CommandContext(ctx, self, "bench", "--phase", phase, "--rows", fmt.Sprint(o.rows),
		"--tables", fmt.Sprint(o.tables), "--dir", o.dir)
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return phaseResult{}, procUsage{}, fmt.Errorf("bench phase %s: %w", phase, err)
	}
	var r phaseResult
	if err := json.Unmarshal(out, &r); err != nil {
		return phaseResult{}, procUsage{}, fmt.Errorf("bench phase %s printed %q: %w", phase, out, err)
	}
	return r, usageOf(cmd.ProcessState), nil
}

// benchProc is one "da serve" process of the pipeline phase.
type benchProc struct {
	role, name string
	cmd        *exec.Cmd
	ready      chan struct{}
	exited     chan struct{}
	mu         sync.Mutex
	log        *bytes.Buffer
	usage      procUsage
	// peers is how many writers a writer last shared the lanes with.
	peers atomic.Int64
}

type pipelineResult struct {
	seconds float64
	bytes   int64
	procs   []*benchProc
}

// benchPipeline starts NATS, a finalizer, a producer and the writers as
// separate "da serve" processes, syncs the demo tables once, stops them
// and reads what each used.
func benchPipeline(ctx context.Context, o benchOptions, stderr io.Writer) (*pipelineResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(o.dir, "pipeline")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	cfgPath := filepath.Join(dir, "agnes.yaml")
	cfg := fmt.Sprintf("data_dir: %s\nsources:\n  - name: demo\n    connector: demo\n    config: {rows: %d, customer_rows: 10000, order_tables: %d}\n",
		filepath.Join(dir, "data"), o.rows/int64(o.tables), o.tables)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	res := &pipelineResult{}
	defer func() {
		for _, p := range res.procs {
			p.kill()
		}
	}()
	start := func(role, name string, args ...string) (*benchProc, error) {
		args = append([]string{"serve", "--config", cfgPath, "--name", name, "--writers", "1"}, args...)
		p, err := startBenchProc(self, role, name, args, filepath.Join(dir, name+".log"), o.procEnv(dir, name))
		if err == nil {
			res.procs = append(res.procs, p)
		}
		return p, err
	}
	// The bus first, then every role, each waiting until it serves.
	if _, err := start("nats", "nats", "--role", "none", "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		return nil, err
	}
	if err := res.procs[0].wait(ctx); err != nil {
		return nil, err
	}
	roles := [][2]string{{"finalizer", "finalizer"}, {"producer", "producer"}}
	for i := range o.writers {
		roles = append(roles, [2]string{roleWriterName, fmt.Sprintf("w%d", i+1)})
	}
	for _, r := range roles {
		if _, err := start(r[0], r[1], "--role", r[0], "--nats-url", url); err != nil {
			return nil, err
		}
	}
	for _, p := range res.procs[1:] {
		if err := p.wait(ctx); err != nil {
			return nil, err
		}
	}
	// The steady state is measured: every writer reading its share of the
	// lanes.
	if err := settled(ctx, res.procs, o.writers); err != nil {
		return nil, err
	}
	// The bus listens, so it wants an identity: the CLI's, from its data dir.
	creds := natsbus.CredsFile(filepath.Join(dir, "data", ".nats"), natsbus.RoleCLI)
	if res.seconds, res.bytes, err = benchSync(ctx, url, creds, o); err != nil {
		for _, p := range res.procs {
			fmt.Fprintf(stderr, "--- %s\n%s", p.name, p.lastLog(10))
		}
		return nil, err
	}
	// Stop the services before the bus, so each ends as in production.
	for i := len(res.procs) - 1; i >= 0; i-- {
		if err := res.procs[i].stop(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// benchSync runs one sync of every orders table and times it from the
// request to the published extract.
func benchSync(ctx context.Context, url, creds string, o benchOptions) (float64, int64, error) {
	nc, err := natsbus.Dial(url, "da-bench", natsbus.ClientIdentity{Creds: creds})
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, err := natsbus.JetStream(nc, natsbus.PublishAckTimeout)
	if err != nil {
		return 0, 0, err
	}
	tables := make([]string, o.tables)
	for k := range tables {
		tables[k] = demo.OrderTable(k + 1)
	}
	req := schemas.SyncRequest{RunID: uuid.NewString(), Source: "demo", Tables: tables, RequestedAt: time.Now().UTC()}
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	start := time.Now()
	rep, err := stack.Sync(ctx, js, req, nil)
	if err != nil {
		return 0, 0, err
	}
	took := time.Since(start).Seconds()
	if rep.Failed > 0 || rep.Rows != o.rows {
		return 0, 0, fmt.Errorf("bench sync: %d failed tables, %d rows of %d", rep.Failed, rep.Rows, o.rows)
	}
	var size int64
	for _, r := range rep.Results {
		size += r.SizeBytes
	}
	return took, size, nil
}

// procEnv is what the bench adds to a pipeline process's environment.
func (o benchOptions) procEnv(dir, name string) []string {
	var env []string
	if o.gomaxprocs > 0 {
		env = append(env, fmt.Sprintf("GOMAXPROCS=%d", o.gomaxprocs))
	}
	if o.profile {
		env = append(env, ProfileEnv+"="+filepath.Join(dir, name+".cpu.pprof"))
	}
	return env
}

// startBenchProc starts a process and keeps its log in logPath, and its
// last lines in memory for errors.
func startBenchProc(bin, role, name string, args []string, logPath string, env []string) (*benchProc, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &benchProc{role: role, name: name, ready: make(chan struct{}), exited: make(chan struct{}), log: &bytes.Buffer{}}
	p.cmd = exec.Command(bin, args...)
	// The bus address comes from the flags only.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NATS_URL=") && !strings.HasPrefix(kv, "LOG_LEVEL=") && !strings.HasPrefix(kv, "GOMAXPROCS=") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	// The bench reads the writers' INFO lines (settled).
	if os.Getenv("LOG_LEVEL") == "debug" {
		p.cmd.Env = append(p.cmd.Env, "LOG_LEVEL=debug")
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	pr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	go func() {
		once := false
		defer logFile.Close()
		for l := range lines {
			p.appendLog(l)
			fmt.Fprintln(logFile, l)
			if strings.Contains(l, "lanes assigned") {
				var rec struct{ Writers int64 }
				if json.Unmarshal([]byte(l), &rec) == nil {
					p.peers.Store(rec.Writers)
				}
			}
			if !once && strings.Contains(l, "da serving") {
				once = true
				close(p.ready)
			}
		}
		p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// appendLog keeps the last 64 KB of the process's log for errors.
func (p *benchProc) appendLog(l string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.log.Len() > 64<<10 {
		rest := p.log.Bytes()[32<<10:]
		p.log = bytes.NewBuffer(append([]byte(nil), rest...))
	}
	p.log.WriteString(l + "\n")
}

// lastLog is the end of the process's log.
func (p *benchProc) lastLog(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return lastLines(p.log.String(), n)
}

// wait returns once the process serves, or with its log if it exits first.
func (p *benchProc) wait(ctx context.Context) error {
	select {
	case <-p.ready:
		return nil
	case <-p.exited:
		return fmt.Errorf("bench: %s exited before serving:\n%s", p.name, p.lastLog(15))
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("bench: %s did not serve within 2 minutes:\n%s", p.name, p.lastLog(15))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ProfileEnv names a file to write the process's CPU profile to ("da bench
// --profile" sets it for each pipeline process).
const ProfileEnv = "DA_CPU_PROFILE"

// ProfileFromEnv starts a CPU profile when ProfileEnv is set; the returned
// function stops it and writes the file.
func ProfileFromEnv(stderr io.Writer) (stop func()) {
	path := os.Getenv(ProfileEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(stderr, "da: %s=%s: %v; not profiling\n", ProfileEnv, path, err)
		if f != nil {
			f.Close()
		}
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// settled waits until every writer process shares the lanes with n.
func settled(ctx context.Context, procs []*benchProc, n int) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		waiting := ""
		for _, p := range procs {
			if p.role == roleWriterName && p.peers.Load() != int64(n) {
				waiting = p.name
			}
		}
		if waiting == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: writer %s did not see all %d writers within 30 s", waiting, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// stop ends the process with SIGTERM and records what it used.
func (p *benchProc) stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("bench: %s did not stop within a minute", p.name)
	}
	p.usage = usageOf(p.cmd.ProcessState)
	return nil
}

func (p *benchProc) kill() {
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Kill()
		<-p.exited
	}
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n") + "\n"
}
