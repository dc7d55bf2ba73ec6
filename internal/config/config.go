// Package config loads the da configuration: the data directory, the NATS
// connection and the list of sources. YAML with ${ENV} expansion; with no
// file, a built-in default with a demo source is used.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"gopkg.in/yaml.v3"
)

// Config is the whole da configuration.
type Config struct {
	// DataDir is where extracts and staging live; default ./data.
	DataDir string `yaml:"data_dir"`
	// NATS says where the bus is; empty URL means embedded.
	NATS NATS `yaml:"nats"`
	// Sources are the configured data sources.
	Sources []Source `yaml:"sources"`
	// API configures the sync API of "da serve --http-listen".
	API API `yaml:"api"`

	path string
}

// NATS configures the bus connection.
type NATS struct {
	URL      string  `yaml:"url"`
	Replicas int     `yaml:"replicas"`
	TLS      NATSTLS `yaml:"tls"`
}

// API configures the sync API.
type API struct {
	// TrustedProxies are the reverse proxies (addresses or CIDR networks)
	// whose X-Forwarded-For the API believes: a token's last use is noted
	// from the header's first hop. Empty: the header is ignored.
	TrustedProxies []string `yaml:"trusted_proxies"`
}

// Proxies parses TrustedProxies (checked by Validate).
func (a API) Proxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, p := range a.TrustedProxies {
		if pre, err := netip.ParsePrefix(p); err == nil {
			out = append(out, pre.Masked())
			continue
		}
		addr, err := netip.ParseAddr(p)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or a CIDR network such as 10.0.0.0/8", p)
		}
		out = append(out, netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen()))
	}
	return out, nil
}

// NATSTLS are the paths of the bus's TLS files (never their contents).
type NATSTLS struct {
	// Cert and Key are the certificate (chain) and key an embedded server
	// that listens presents; it then accepts TLS clients only.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// CA is the certificate authority clients verify the server with
	// (default: the system's); $DA_NATS_CA overrides it.
	CA string `yaml:"ca"`
}

// Source is one configured data source.
type Source struct {
	// Name is the source name: the extract folder and the ATTACH alias.
	Name string `yaml:"name"`
	// Connector names a registered connector.
	Connector string `yaml:"connector"`
	// Config is the connector's config, validated against its manifest.
	Config map[string]any `yaml:"config"`
	// Tables optionally limits the sync to these tables.
	Tables []string `yaml:"tables"`
	// SchemaPolicy is the default policy for schema changes: evolve
	// (publish the new schema) or freeze (fail the table, keep its data).
	SchemaPolicy string `yaml:"schema_policy"`
	// TableOptions tune single tables.
	TableOptions map[string]TableOptions `yaml:"table_options"`
	// WebhookSecret is the shared secret webhooks for this source are
	// signed with (HMAC-SHA256 of the body); usually ${VAR}. Without it the
	// gateway refuses the source's webhooks (503).
	WebhookSecret string `yaml:"webhook_secret"`
	// Schedule syncs the source on a schedule fired by the bus (see
	// schemas.ParseSchedule): "@every 15m", "@daily" or 6-field cron
	// "sec min hour day-of-month month day-of-week". Tables with their own
	// schedule (table_options.<t>.schedule) are left out of these runs.
	Schedule string `yaml:"schedule"`
	// ScheduleTimezone is the IANA zone cron specs and aliases run in
	// (default UTC), for the source and its tables.
	ScheduleTimezone string `yaml:"schedule_timezone"`
}

// TableOptions tune how one table is synced.
type TableOptions struct {
	// SchemaPolicy overrides the source's policy for this table.
	SchemaPolicy string `yaml:"schema_policy"`
	// IncrementalKey is the cursor column: later runs read only rows whose
	// value is at or past the last published one.
	IncrementalKey string `yaml:"incremental_key"`
	// PrimaryKey overrides the connector's key; incremental runs on a keyed
	// table merge rows into the table (latest wins) instead of appending.
	PrimaryKey []string `yaml:"primary_key"`
	// Incremental reads only what changed since the last published run, by
	// the source's own change time (connectors.SourceCursorReader, e.g.
	// Keboola's changedSince), merging by primary key.
	Incremental bool `yaml:"incremental"`
	// QueryMode is local (the rows are copied into Parquet), remote (a view
	// over the source's attached catalog) or materialized (a remote table's
	// rows, or Query's, copied into Parquet), for tables whose connector
	// offers them; the default is the connector's.
	QueryMode string `yaml:"query_mode"`
	// Query is the source's own query a materialized table is read by
	// (BigQuery SQL); the table's schema is then the query's.
	Query string `yaml:"query"`
	// Schedule syncs this table alone on its own schedule, instead of with
	// the source's runs; in the source's schedule_timezone.
	Schedule string `yaml:"schedule"`
}

// Schema policies.
const (
	PolicyEvolve = "evolve"
	PolicyFreeze = "freeze"
)

// Table returns the effective options of one table of the source.
func (s Source) Table(name string) TableOptions {
	o := s.TableOptions[name]
	if o.SchemaPolicy == "" {
		o.SchemaPolicy = s.SchemaPolicy
	}
	if o.SchemaPolicy == "" {
		o.SchemaPolicy = PolicyEvolve
	}
	return o
}

// DefaultDataDir is used when neither the file nor a flag sets one.
const DefaultDataDir = "./data"

// Default returns the built-in configuration: one demo source.
func Default() *Config {
	return &Config{
		DataDir: DefaultDataDir,
		Sources: []Source{{Name: "demo", Connector: "demo", Config: map[string]any{}}},
		path:    "built-in default config",
	}
}

// Load reads the YAML file at path, expands ${VAR} and ${VAR:-default}, and
// validates it. An unset variable without a default is an error naming it.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return Parse(path, raw)
}

// Parse is Load on bytes already read; path names the file in errors.
// ${VAR} is expanded inside YAML values only (not in comments or keys), and
// an expanded value is typed as if written in place: "rows: ${N}" with N=5
// is the integer 5, while a quoted "${N}" stays a string.
func Parse(path string, raw []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	if err := expandNode(&doc); err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	cfg := &Config{path: path}
	if doc.Kind != 0 {
		expanded, err := yaml.Marshal(&doc)
		if err != nil {
			return nil, fmt.Errorf("load config %s: %w", path, err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(expanded))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil {
			return nil, fmt.Errorf("load config %s: %w", path, err)
		}
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func expandNode(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "${") {
		v, err := expandEnv([]byte(n.Value))
		if err != nil {
			return err
		}
		n.Value = string(v)
		if n.Style == 0 {
			n.Tag = "" // let YAML type the expanded plain value
		}
		return nil
	}
	for i, c := range n.Content {
		// Keys of mappings are never expanded.
		if n.Kind == yaml.MappingNode && i%2 == 0 {
			continue
		}
		if err := expandNode(c); err != nil {
			return err
		}
	}
	return nil
}

var envRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

func expandEnv(raw []byte) ([]byte, error) {
	var missing []string
	out := envRE.ReplaceAllFunc(raw, func(m []byte) []byte {
		g := envRE.FindSubmatch(m)
		if v, ok := os.LookupEnv(string(g[1])); ok {
			return []byte(v)
		}
		if g[2] != nil {
			return g[3]
		}
		missing = append(missing, string(g[1]))
		return m
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("environment variable %s is not set (use ${%s:-default} for an optional value)",
			strings.Join(missing, ", "), missing[0])
	}
	return out, nil
}

// Validate checks names and uniqueness; errors name the file and the field.
func (c *Config) Validate() error {
	var errs []error
	seen := map[string]bool{}
	for i, s := range c.Sources {
		field := fmt.Sprintf("sources[%d]", i)
		if err := schemas.ValidateName("source", s.Name); err != nil {
			errs = append(errs, fmt.Errorf("%s: field %s.name: %w", c.path, field, err))
		}
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("%s: field %s.name: source %q is defined twice", c.path, field, s.Name))
		}
		seen[s.Name] = true
		if s.Connector == "" {
			errs = append(errs, fmt.Errorf("%s: field %s.connector: is required", c.path, field))
		}
		for j, t := range s.Tables {
			if err := schemas.ValidateName("table", t); err != nil {
				errs = append(errs, fmt.Errorf("%s: field %s.tables[%d]: %w", c.path, field, j, err))
			}
		}
		policyOK := func(f, p string) {
			if p != "" && p != PolicyEvolve && p != PolicyFreeze {
				errs = append(errs, fmt.Errorf("%s: field %s: %q is not one of evolve, freeze", c.path, f, p))
			}
		}
		policyOK(field+".schema_policy", s.SchemaPolicy)
		errs = append(errs, c.validateSchedules(field, s)...)
		for t, o := range s.TableOptions {
			f := field + ".table_options." + t
			if err := schemas.ValidateName("table", t); err != nil {
				errs = append(errs, fmt.Errorf("%s: field %s: %w", c.path, f, err))
			}
			policyOK(f+".schema_policy", o.SchemaPolicy)
			if o.QueryMode != "" && o.QueryMode != "local" && o.QueryMode != "remote" && o.QueryMode != "materialized" {
				errs = append(errs, fmt.Errorf("%s: field %s.query_mode: %q is not one of local, remote, materialized", c.path, f, o.QueryMode))
			}
			if o.Query != "" && o.QueryMode != "materialized" {
				errs = append(errs, fmt.Errorf("%s: field %s.query: a query needs query_mode: materialized", c.path, f))
			}
			if o.Incremental && o.IncrementalKey != "" {
				errs = append(errs, fmt.Errorf("%s: field %s: set incremental (the source's change time) or incremental_key (a column), not both", c.path, f))
			}
			for _, k := range o.PrimaryKey {
				if strings.TrimSpace(k) == "" {
					errs = append(errs, fmt.Errorf("%s: field %s.primary_key: empty column name", c.path, f))
				}
			}
		}
	}
	if (c.NATS.TLS.Cert == "") != (c.NATS.TLS.Key == "") {
		errs = append(errs, fmt.Errorf("%s: field nats.tls: set both cert and key (the server's certificate and its key), or neither", c.path))
	}
	if _, err := c.API.Proxies(); err != nil {
		errs = append(errs, fmt.Errorf("%s: field api.trusted_proxies: %w", c.path, err))
	}
	if c.NATS.Replicas < 0 || c.NATS.Replicas > 5 {
		errs = append(errs, fmt.Errorf("%s: field nats.replicas: %d is not between 1 and 5", c.path, c.NATS.Replicas))
	}
	return errors.Join(errs...)
}

// validateSchedules checks the source's schedule, its time zone and its
// tables' schedules; errors name the field.
func (c *Config) validateSchedules(field string, s Source) []error {
	if s.ScheduleTimezone != "" {
		if _, err := time.LoadLocation(s.ScheduleTimezone); err != nil || s.ScheduleTimezone == "Local" {
			return []error{fmt.Errorf("%s: field %s.schedule_timezone: %q is not an IANA time zone name such as Europe/Prague", c.path, field, s.ScheduleTimezone)}
		}
	}
	var errs []error
	check := func(f, spec string) {
		if _, err := schemas.ParseSchedule(spec, s.ScheduleTimezone); err != nil {
			errs = append(errs, fmt.Errorf("%s: field %s: %w", c.path, f, err))
		}
	}
	if s.Schedule != "" {
		check(field+".schedule", s.Schedule)
	}
	for _, t := range slices.Sorted(maps.Keys(s.TableOptions)) {
		if spec := s.TableOptions[t].Schedule; spec != "" {
			check(field+".table_options."+t+".schedule", spec)
		}
	}
	return errs
}

// Schedules are the configured schedules of the source: its own (Table
// "") and each table's, sorted by table.
func (s Source) Schedules() []SourceSchedule {
	var out []SourceSchedule
	if s.Schedule != "" {
		out = append(out, SourceSchedule{Source: s.Name, Spec: s.Schedule, Zone: s.ScheduleTimezone})
	}
	for _, t := range slices.Sorted(maps.Keys(s.TableOptions)) {
		if spec := s.TableOptions[t].Schedule; spec != "" {
			out = append(out, SourceSchedule{Source: s.Name, Table: t, Spec: spec, Zone: s.ScheduleTimezone})
		}
	}
	return out
}

// ScheduledTables are the tables with a schedule of their own: the
// source's scheduled runs leave them out.
func (s Source) ScheduledTables() []string {
	var out []string
	for _, t := range slices.Sorted(maps.Keys(s.TableOptions)) {
		if s.TableOptions[t].Schedule != "" {
			out = append(out, t)
		}
	}
	return out
}

// SourceSchedule is one configured schedule: of a source (Table "") or of
// one of its tables.
type SourceSchedule struct {
	Source, Table, Spec, Zone string
}

// ErrUnknownSource marks a source name that is not configured.
var ErrUnknownSource = errors.New("unknown source")

// Source returns the named source, or ErrUnknownSource listing the known ones.
func (c *Config) Source(name string) (Source, error) {
	var names []string
	for _, s := range c.Sources {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Source{}, fmt.Errorf("%w %q in %s (configured: %s)", ErrUnknownSource, name, c.path, strings.Join(names, ", "))
}

// Path names where the config came from.
func (c *Config) Path() string { return c.path }
