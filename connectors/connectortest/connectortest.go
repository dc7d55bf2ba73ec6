// Package connectortest is the contract every connector runs: discovery
// returns valid tables, reads match the declared schemas, a full extract
// through the real pipeline honours the extract contract, remote info holds
// no secret, invalid config fails clearly, two full reads give the same data
// and an incremental sync from the latest state adds no duplicates.
//
// A connector's test calls Run; "da connector test" runs the same Checks.
package connectortest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/google/uuid"
)

// Suite describes the connector under test.
type Suite struct {
	// Registration is the connector's manifest and factory.
	Registration connectors.Registration
	// Config is a valid config for it (small data, local fake servers).
	Config map[string]any
	// InvalidConfig must be rejected; nil derives one from the manifest by
	// giving the first config field a value of the wrong type.
	InvalidConfig map[string]any
	// Secrets are values that must never appear in remote info or in any
	// file of the extract.
	Secrets []string
	// Incremental maps tables to their cursor column, to check that an
	// incremental sync from the latest state adds no duplicates.
	Incremental map[string]string
	// StreamEvent is a sample pushed event (a webhook body) for connectors
	// that declare stream; required for them.
	StreamEvent []byte
	// TableOptions are the source's table_options for the full-extract
	// checks (query_mode, incremental by the source's change time, ...);
	// tables with incremental set are checked like Incremental ones.
	TableOptions map[string]config.TableOptions
	// Tables lists the tables to sync when the connector cannot discover.
	Tables []string
	// MaxBatches bounds how many batches per table the read checks take
	// (0 means all).
	MaxBatches int
}

// Check is one named contract check.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// Run runs every check as a subtest.
func Run(t *testing.T, s Suite) {
	t.Helper()
	for _, c := range Checks(s) {
		t.Run(c.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := c.Run(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Checks returns the contract checks for s, in order.
func Checks(s Suite) []Check {
	return []Check{
		{"ManifestMatchesConnector", s.manifest},
		{"InvalidConfigFails", s.invalidConfig},
		{"DiscoverReturnsValidTables", s.discover},
		{"ReadMatchesDeclaredSchema", s.readSchema},
		{"TwoFullReadsAreIdentical", s.twoReads},
		{"RemoteInfoHasNoSecret", s.remote},
		{"StreamYieldsDeclaredTables", s.stream},
		{"FullExtractIsValid", s.fullExtract},
	}
}

func (s Suite) open() (connectors.Connector, error) {
	cfg, err := s.Registration.Manifest.ValidateConfig(s.Config)
	if err != nil {
		return nil, err
	}
	c, err := s.Registration.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("build connector: %w", err)
	}
	return c, nil
}

func (s Suite) manifest(ctx context.Context) error {
	m := s.Registration.Manifest
	c, err := s.open()
	if err != nil {
		return err
	}
	if err := connectors.CheckImplements(m.Name, c); err != nil {
		return err
	}
	if c.Capabilities() != m.Capabilities {
		return fmt.Errorf("connector declares %s, its manifest %s", c.Capabilities(), m.Capabilities)
	}
	return nil
}

func (s Suite) invalidConfig(ctx context.Context) error {
	bad := s.InvalidConfig
	m := s.Registration.Manifest
	if bad == nil {
		keys := make([]string, 0, len(m.Config))
		for k := range m.Config {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		bad = map[string]any{}
		for k, v := range s.Config {
			bad[k] = v
		}
		if len(keys) == 0 {
			bad["no_such_option"] = true
		} else {
			k := keys[0]
			switch m.Config[k].Type {
			case "string":
				bad[k] = 12345
			default:
				bad[k] = "not-a-" + m.Config[k].Type
			}
		}
	}
	_, err := m.ValidateConfig(bad)
	if err == nil {
		return fmt.Errorf("config %v was accepted", bad)
	}
	if !errors.Is(err, connectors.ErrInvalidConfig) || !strings.Contains(err.Error(), "field") && !strings.Contains(err.Error(), "additional") {
		return fmt.Errorf("the error does not name the field: %v", err)
	}
	return nil
}

func (s Suite) tables(ctx context.Context, c connectors.Connector) ([]connectors.TableInfo, error) {
	d, ok := c.(connectors.Discoverer)
	if !ok || !c.Capabilities().Has(connectors.Discover) {
		return nil, nil
	}
	return d.Discover(ctx)
}

func (s Suite) discover(ctx context.Context) error {
	c, err := s.open()
	if err != nil {
		return err
	}
	if !c.Capabilities().Has(connectors.Discover) {
		return nil
	}
	ts, err := s.tables(ctx, c)
	if err != nil {
		return fmt.Errorf("discover: %w", err)
	}
	if len(ts) == 0 {
		return errors.New("discover returned no table")
	}
	seen := map[string]bool{}
	for _, t := range ts {
		if err := schemas.ValidateName("table", t.Name); err != nil {
			return err
		}
		if seen[t.Name] {
			return fmt.Errorf("table %s discovered twice", t.Name)
		}
		seen[t.Name] = true
		if t.Capabilities == 0 || t.Capabilities&^c.Capabilities() != 0 {
			return fmt.Errorf("table %s declares %s, the connector %s", t.Name, t.Capabilities, c.Capabilities())
		}
		if t.Capabilities.Has(connectors.Read) && t.Schema == nil {
			return fmt.Errorf("readable table %s has no schema", t.Name)
		}
		for _, k := range t.PrimaryKey {
			if t.Schema != nil && len(t.Schema.FieldIndices(k)) != 1 {
				return fmt.Errorf("table %s: primary key column %q is not in its schema", t.Name, k)
			}
		}
	}
	return nil
}

func (s Suite) readable(ctx context.Context) (connectors.Reader, []connectors.TableInfo, error) {
	c, err := s.open()
	if err != nil {
		return nil, nil, err
	}
	r, ok := c.(connectors.Reader)
	if !ok || !c.Capabilities().Has(connectors.Read) {
		return nil, nil, nil
	}
	ts, err := s.tables(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	if ts == nil {
		for _, n := range s.Tables {
			ts = append(ts, connectors.TableInfo{Name: n, Capabilities: connectors.Read})
		}
	}
	var out []connectors.TableInfo
	for _, t := range ts {
		if t.Capabilities.Has(connectors.Read) {
			out = append(out, t)
		}
	}
	return r, out, nil
}

func (s Suite) readSchema(ctx context.Context) error {
	r, ts, err := s.readable(ctx)
	if err != nil || r == nil {
		return err
	}
	for _, t := range ts {
		n := 0
		for rec, err := range r.Read(ctx, t.Name, connectors.ReadOptions{BatchSize: 100}) {
			if err != nil {
				return fmt.Errorf("read %s: %w", t.Name, err)
			}
			if t.Schema != nil && !rec.Schema().Equal(t.Schema) {
				return fmt.Errorf("read %s: batch schema\n%s\ndiffers from the declared\n%s", t.Name, rec.Schema(), t.Schema)
			}
			if n++; s.MaxBatches > 0 && n >= s.MaxBatches {
				break
			}
		}
	}
	return nil
}

func (s Suite) twoReads(ctx context.Context) error {
	r, ts, err := s.readable(ctx)
	if err != nil || r == nil {
		return err
	}
	for _, t := range ts {
		a, err := readTable(ctx, r, t)
		if err != nil {
			return err
		}
		b, err := readTable(ctx, r, t)
		if err != nil {
			a.Release()
			return err
		}
		equal := array.TableEqual(a, b)
		a.Release()
		b.Release()
		if !equal {
			return fmt.Errorf("two full reads of %s gave different data", t.Name)
		}
	}
	return nil
}

func readTable(ctx context.Context, r connectors.Reader, t connectors.TableInfo) (arrow.Table, error) {
	var recs []arrow.RecordBatch
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	schema := t.Schema
	for rec, err := range r.Read(ctx, t.Name, connectors.ReadOptions{}) {
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t.Name, err)
		}
		rec.Retain()
		recs = append(recs, rec)
		schema = rec.Schema()
	}
	if schema == nil {
		schema = arrow.NewSchema(nil, nil)
	}
	return array.NewTableFromRecords(schema, recs), nil
}

var envNameRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)

func (s Suite) secrets() []string {
	out := slices.Clone(s.Secrets)
	for _, v := range s.Registration.Manifest.Auth.EnvVars {
		if val := os.Getenv(v.Name); len(val) >= 6 {
			out = append(out, val)
		}
	}
	return out
}

func (s Suite) remote(ctx context.Context) error {
	c, err := s.open()
	if err != nil {
		return err
	}
	rm, ok := c.(connectors.Remoter)
	if !ok || !c.Capabilities().Has(connectors.Remote) {
		return nil
	}
	info, err := rm.Remote(ctx)
	if err != nil {
		return fmt.Errorf("remote: %w", err)
	}
	if err := schemas.ValidateName("extension", info.Extension); err != nil {
		return err
	}
	if info.Alias != "" {
		if err := schemas.ValidateName("alias", info.Alias); err != nil {
			return err
		}
	}
	if info.URL == "" {
		return errors.New("remote info has no url")
	}
	if info.TokenEnv != "" && !envNameRE.MatchString(info.TokenEnv) {
		return fmt.Errorf("token_env %q is not an environment variable name; it must name the variable, never hold the token", info.TokenEnv)
	}
	for _, sec := range s.secrets() {
		if sec != "" && strings.Contains(info.URL+info.TokenEnv+info.Alias+info.Extension, sec) {
			return errors.New("remote info contains a secret")
		}
	}
	return nil
}

func (s Suite) stream(ctx context.Context) error {
	c, err := s.open()
	if err != nil {
		return err
	}
	st, ok := c.(connectors.Streamer)
	if !ok || !c.Capabilities().Has(connectors.Stream) {
		return nil
	}
	event := s.StreamEvent
	if event == nil {
		event = s.Registration.SampleEvent
	}
	if event == nil {
		return errors.New("the connector declares stream but ships no sample event: register one with Registry.SetSampleEvent (or set Suite.StreamEvent)")
	}
	out, err := st.Stream(ctx, event)
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	defer func() {
		for _, ch := range out {
			ch.Release()
		}
	}()
	if len(out) == 0 {
		return errors.New("the sample event gave no changes")
	}
	ts, err := s.tables(ctx, c)
	if err != nil {
		return err
	}
	declared := map[string]connectors.TableInfo{}
	streamed := 0
	for _, t := range ts {
		declared[t.Name] = t
		if t.Partition != nil {
			streamed++
			if err := schemas.CheckPartitioned(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn); err != nil {
				return fmt.Errorf("table %s: %w", t.Name, err)
			}
		}
	}
	if streamed == 0 {
		return errors.New("the connector streams but declares no partitioned table (TableInfo.Partition) to stream into")
	}
	for _, ch := range out {
		if err := ch.Validate(); err != nil {
			return err
		}
		for table, r := range ch.Tables {
			t, known := declared[table]
			if !known || t.Partition == nil {
				return fmt.Errorf("stream yielded rows for %s, which discover does not list as partitioned", table)
			}
			if !r.Schema().Equal(t.Schema) {
				return fmt.Errorf("stream batch for %s has schema\n%s\nnot the declared\n%s", table, r.Schema(), t.Schema)
			}
			// The runtime's own conversion checks every row carries the key.
			stored, err := schemas.ChangeRows(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn, ch.Key, ch.Time, ch.Version, false, 1, r, memory.DefaultAllocator)
			if err != nil {
				return fmt.Errorf("stream rows for %s: %w", table, err)
			}
			stored.Release()
		}
	}
	return nil
}

// fullExtract syncs the connector through the real pipeline (embedded bus,
// producer, writers, finalizer) into a temporary folder, checks the extract,
// then, for the Incremental tables, syncs again and checks nothing doubled.
func (s Suite) fullExtract(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "connectortest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	name := s.Registration.Manifest.Name
	if caps := s.Registration.Manifest.Capabilities; !caps.Has(connectors.Read) && !caps.Has(connectors.Remote) {
		return nil // nothing a batch sync publishes
	}
	reg := connectors.NewRegistry()
	if err := reg.Register(s.Registration); err != nil {
		return err
	}
	src := config.Source{Name: "contract", Connector: name, Config: s.Config, Tables: s.Tables, TableOptions: map[string]config.TableOptions{}}
	incremental := map[string]string{}
	for t, o := range s.TableOptions {
		src.TableOptions[t] = o
		if o.Incremental {
			incremental[t] = ""
		}
	}
	for t, col := range s.Incremental {
		o := src.TableOptions[t]
		o.IncrementalKey = col
		src.TableOptions[t] = o
		incremental[t] = col
	}
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{src}
	st, err := stack.Start(ctx, stack.Options{Config: cfg, Registry: reg, DataDir: dir, Writers: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer st.Stop()
	sync := func() (*stack.Report, error) {
		rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "contract", RequestedAt: time.Now().UTC()}, nil)
		if err != nil {
			return nil, err
		}
		for _, r := range rep.Results {
			if r.Status != schemas.StatusDone {
				return rep, fmt.Errorf("table %s failed: %s", r.Table, r.Error)
			}
		}
		return rep, nil
	}
	if _, err := sync(); err != nil {
		return err
	}
	path := filepath.Join(dir, "extracts", "contract", "extract.duckdb")
	x, err := extractcheck.Verify(ctx, path)
	if err != nil {
		return fmt.Errorf("extract breaks the contract: %w", err)
	}
	if len(x.Meta) == 0 {
		return errors.New("the extract has no table")
	}
	if err := s.noSecretInFiles(filepath.Join(dir, "extracts")); err != nil {
		return err
	}
	if len(incremental) == 0 {
		return nil
	}
	before, err := distinctCounts(ctx, path, incremental)
	if err != nil {
		return err
	}
	if _, err := sync(); err != nil {
		return fmt.Errorf("incremental sync: %w", err)
	}
	after, err := distinctCounts(ctx, path, incremental)
	if err != nil {
		return err
	}
	for t := range incremental {
		if after[t] != before[t] {
			return fmt.Errorf("table %s: %v rows before and %v after an incremental sync of unchanged data", t, before[t], after[t])
		}
	}
	return nil
}

// distinctCounts returns "rows/distinct rows" per table.
func distinctCounts(ctx context.Context, path string, tables map[string]string) (map[string]string, error) {
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	out := map[string]string{}
	for t := range tables {
		var n, d int64
		if err := db.QueryRowContext(ctx, `SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT * FROM "`+t+`")) FROM "`+t+`"`).Scan(&n, &d); err != nil {
			return nil, fmt.Errorf("count %s: %w", t, err)
		}
		if n != d {
			return nil, fmt.Errorf("table %s holds %d rows but %d distinct", t, n, d)
		}
		out[t] = fmt.Sprint(n)
	}
	return out, nil
}

func (s Suite) noSecretInFiles(root string) error {
	secrets := s.secrets()
	if len(secrets) == 0 {
		return nil
	}
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, sec := range secrets {
			if sec != "" && strings.Contains(string(b), sec) {
				return fmt.Errorf("file %s contains a secret", p)
			}
		}
		return nil
	})
}
