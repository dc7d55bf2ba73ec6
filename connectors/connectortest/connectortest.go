// Package connectortest is the contract every connector runs: discovery
// returns valid tables, reads match the declared schemas, a full extract
// through the real pipeline honours the extract contract, remote info holds
// no secret, invalid config fails clearly, two full reads give the same data
// and an incremental sync from the latest state adds no duplicates.
//
// This package holds the protocol checks, which call the connector alone;
// package extracttest adds the check through the real pipeline (bus,
// writers, finalizer, DuckDB). A connector's test calls extracttest.Run;
// "da connector test" runs the same checks.
package connectortest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
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

// Run runs the protocol checks as subtests.
func Run(t *testing.T, s Suite) {
	t.Helper()
	RunChecks(t, Checks(s))
}

// RunChecks runs checks as subtests, each with five minutes.
func RunChecks(t *testing.T, checks []Check) {
	t.Helper()
	for _, c := range checks {
		t.Run(c.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := c.Run(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Checks returns the protocol checks for s, in order: they call the
// connector directly, with no engine and no DuckDB. The full-extract check
// through the real pipeline is in package extracttest.
func Checks(s Suite) []Check {
	return []Check{
		{"ManifestMatchesConnector", s.manifest},
		{"InvalidConfigFails", s.invalidConfig},
		{"DiscoverReturnsValidTables", s.discover},
		{"ReadMatchesDeclaredSchema", s.readSchema},
		{"TwoFullReadsAreIdentical", s.twoReads},
		{"RemoteInfoHasNoSecret", s.remote},
		{"StreamYieldsDeclaredTables", s.stream},
		{"ChangesMatchDeclaredTables", s.changes},
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

// SecretValues are the values no file or remote info may hold: Secrets and
// the values of the manifest's secret environment variables.
func (s Suite) SecretValues() []string {
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
	for _, sec := range s.SecretValues() {
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
		if err := checkChange(ch, declared, "stream"); err != nil {
			return err
		}
	}
	return nil
}

// checkChange checks one change against the declared tables: its own
// fields, rows only for partitioned tables, in their declared schema, each
// row carrying the change's key.
func checkChange(ch connectors.Change, declared map[string]connectors.TableInfo, from string) error {
	if err := ch.Validate(); err != nil {
		return err
	}
	for table, r := range ch.Tables {
		t, known := declared[table]
		if !known || t.Partition == nil {
			return fmt.Errorf("%s yielded rows for %s, which discover does not list as partitioned", from, table)
		}
		if !r.Schema().Equal(t.Schema) {
			return fmt.Errorf("%s batch for %s has schema\n%s\nnot the declared\n%s", from, table, r.Schema(), t.Schema)
		}
		// The runtime's own conversion checks every row carries the key.
		stored, err := schemas.ChangeRows(t.Schema, t.Partition.KeyColumn, t.Partition.TimeColumn, ch.Key, ch.Time, ch.Version, false, 1, r, memory.DefaultAllocator)
		if err != nil {
			return fmt.Errorf("%s rows for %s: %w", from, table, err)
		}
		stored.Release()
	}
	return nil
}

// maxChanges bounds how many changes the Changes check reads.
const maxChanges = 1000

// changes checks a connector that backfills partitioned tables
// (connectors.ChangeReader): every change of a full read is valid for the
// declared tables, two changes of one key never share a version, and the
// read ends (or stops when asked).
func (s Suite) changes(ctx context.Context) error {
	c, err := s.open()
	if err != nil {
		return err
	}
	cr, ok := c.(connectors.ChangeReader)
	if !ok {
		return nil
	}
	ts, err := s.tables(ctx, c)
	if err != nil {
		return err
	}
	declared := map[string]connectors.TableInfo{}
	backfilled := 0
	for _, t := range ts {
		declared[t.Name] = t
		if t.Partition != nil && tableReads(c, t) {
			backfilled++
		}
	}
	if backfilled == 0 {
		return errors.New("the connector has a Changes method but declares no partitioned table it reads (TableInfo.Partition with read)")
	}
	seen := map[string]int64{}
	n := 0
	for ch, err := range cr.Changes(ctx, connectors.ReadOptions{BatchSize: connectors.DefaultBatchSize}) {
		if err != nil {
			return fmt.Errorf("changes: %w", err)
		}
		err := checkChange(ch, declared, "changes")
		v, dup := seen[ch.Key]
		ch.Release()
		if err != nil {
			return err
		}
		if dup && v == ch.Version {
			return fmt.Errorf("changes yielded key %q twice at version %d: versions must order a key's changes", ch.Key, ch.Version)
		}
		seen[ch.Key] = ch.Version
		if n++; n >= maxChanges {
			break
		}
	}
	return nil
}

// tableReads reports whether t is read by batch syncs.
func tableReads(c connectors.Connector, t connectors.TableInfo) bool {
	caps := t.Capabilities
	if caps == 0 {
		caps = c.Capabilities()
	}
	return caps.Has(connectors.Read)
}
