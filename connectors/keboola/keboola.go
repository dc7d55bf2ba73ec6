// Package keboola is the Keboola Storage connector: the tables of chosen
// buckets, discovered through the Storage API v2 with their column types
// (metadata provider cascade), read by asynchronous exports (sliced,
// gzipped, headerless CSV streamed straight into Arrow batches), or offered
// as remote views over Keboola's DuckDB extension. Incremental tables are
// exported with changedSince, Keboola's change time.
package keboola

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/httpclient"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

//go:embed connector.yaml
var manifest []byte

// TokenEnv is the variable holding the Storage API token; the extract's
// _remote_attach row names it.
const TokenEnv = "KEBOOLA_STORAGE_TOKEN"

// Alias is the attach alias of the remote catalog.
const Alias = "kbc"

// Register adds the keboola connector to r.
func Register(r *connectors.Registry) {
	r.MustRegisterManifest("connectors/keboola/connector.yaml", manifest, func(cfg connectors.Config) (connectors.Connector, error) {
		token := os.Getenv(TokenEnv)
		if token == "" {
			return nil, fmt.Errorf("keboola: the Storage API token variable %s is not set", TokenEnv)
		}
		opts := Options{URL: cfg.String("url"), Token: token, BatchSize: int(cfg.Int("batch_size")),
			Overlap:    time.Duration(cfg.Int("incremental_overlap_seconds")) * time.Second,
			MaxPoll:    time.Duration(cfg.Int("job_poll_max_seconds")) * time.Second,
			MaxRetries: int(cfg.Int("max_retries"))}
		var err error
		if opts.Buckets, err = cfg.Strings("buckets"); err != nil {
			return nil, fmt.Errorf("keboola: %w", err)
		}
		if opts.Names, err = cfg.StringMap("table_names"); err != nil {
			return nil, fmt.Errorf("keboola: %w", err)
		}
		return New(opts)
	})
}

// Options configure a Connector.
type Options struct {
	// URL is the stack URL, e.g. https://connection.keboola.com.
	URL, Token string
	// Buckets limits the sync to these bucket ids (default: all).
	Buckets []string
	// Names maps Keboola table ids to extract table names.
	Names map[string]string
	// Overlap moves changedSince back from the previous export's start.
	Overlap    time.Duration
	BatchSize  int
	MaxPoll    time.Duration
	MaxRetries int
	// MaxRetryWait caps one wait between retries (default 30s).
	MaxRetryWait time.Duration
	// Transport carries the requests (tests); default http.DefaultTransport.
	Transport http.RoundTripper
	Mem       memory.Allocator
}

// Connector reads Keboola Storage.
type Connector struct {
	opts Options
	c    *client
	url  string // stack URL without a trailing slash

	mu     sync.Mutex
	byName map[string]Table // discovered tables by extract name
}

var (
	_ connectors.Discoverer         = (*Connector)(nil)
	_ connectors.Reader             = (*Connector)(nil)
	_ connectors.Remoter            = (*Connector)(nil)
	_ connectors.SourceCursorReader = (*Connector)(nil)
)

// New returns a Keboola connector.
func New(opts Options) (*Connector, error) {
	u, err := url.Parse(strings.TrimRight(opts.URL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("keboola: url %q is not an http(s) stack URL", opts.URL)
	}
	if u.User != nil || u.RawQuery != "" {
		return nil, errors.New("keboola: url must be the bare stack URL; the token comes from " + TokenEnv)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = connectors.DefaultBatchSize
	}
	if opts.MaxPoll <= 0 {
		opts.MaxPoll = 5 * time.Second
	}
	if opts.Mem == nil {
		opts.Mem = memory.DefaultAllocator
	}
	transport := opts.Transport
	if transport == nil {
		transport = http.DefaultTransport
	}
	hc := httpclient.New(httpclient.Options{MaxRetries: opts.MaxRetries, MaxWait: opts.MaxRetryWait, Transport: transport,
		Timeout: 10 * time.Minute})
	return &Connector{opts: opts, url: u.String(), c: &client{base: u, token: opts.Token, http: hc}}, nil
}

// Capabilities implements connectors.Connector.
func (c *Connector) Capabilities() connectors.Capability {
	return connectors.Discover | connectors.Read | connectors.Remote
}

// Remote names the attached catalog: Keboola's DuckDB extension at the
// stack URL, its token in KEBOOLA_STORAGE_TOKEN.
func (c *Connector) Remote(context.Context) (connectors.RemoteAttachInfo, error) {
	return connectors.RemoteAttachInfo{Extension: "keboola", URL: c.url, TokenEnv: TokenEnv, Alias: Alias}, nil
}

// Discover lists the tables of the selected buckets with their Arrow
// schemas, primary keys and descriptions. Two tables with one extract name,
// or a name that is not an identifier, is an error naming the
// config.table_names entry that fixes it.
func (c *Connector) Discover(ctx context.Context) ([]connectors.TableInfo, error) {
	buckets, err := c.c.buckets(ctx)
	if err != nil {
		return nil, fmt.Errorf("list buckets: %w", err)
	}
	var ids []string
	have := map[string]bool{}
	for _, b := range buckets {
		have[b.ID] = true
		if len(c.opts.Buckets) == 0 || slices.Contains(c.opts.Buckets, b.ID) {
			ids = append(ids, b.ID)
		}
	}
	for _, want := range c.opts.Buckets {
		if !have[want] {
			return nil, fmt.Errorf("keboola: config.buckets names %q, which the token cannot read (buckets: %s)", want, strings.Join(sortedKeys(have), ", "))
		}
	}
	sort.Strings(ids)
	var all []Table
	for _, id := range ids {
		ts, err := c.c.tables(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("list tables of bucket %s: %w", id, err)
		}
		for _, t := range ts {
			if len(t.Columns) == 0 {
				// A listing without columns (older stacks ignore include):
				// the table detail has them, with the key and metadata.
				if t, err = c.c.table(ctx, t.ID); err != nil {
					return nil, fmt.Errorf("table detail: %w", err)
				}
			}
			if t.Bucket == nil {
				t.Bucket = &Bucket{ID: id}
			}
			all = append(all, t)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	byName := map[string]Table{}
	var problems []string
	for _, t := range all {
		name := c.nameOf(t)
		if err := schemas.ValidateName("table", name); err != nil {
			problems = append(problems, fmt.Sprintf("table %s: its name %q is not an identifier; set config.table_names: {%q: <name>}", t.ID, name, t.ID))
			continue
		}
		if prev, dup := byName[name]; dup {
			problems = append(problems, fmt.Sprintf("tables %s and %s are both named %q; set config.table_names: {%q: <another name>}", prev.ID, t.ID, name, t.ID))
			continue
		}
		byName[name] = t
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("keboola: %s", strings.Join(problems, "; "))
	}
	c.mu.Lock()
	c.byName = byName
	c.mu.Unlock()
	out := make([]connectors.TableInfo, 0, len(byName))
	for _, name := range sortedKeys(byName) {
		t := byName[name]
		bucket := t.Bucket.ID
		out = append(out, connectors.TableInfo{Name: name, Schema: schemaOf(t), Capabilities: connectors.Read | connectors.Remote,
			PrimaryKey: t.PrimaryKey, Description: description(t), RemotePath: []string{bucket, t.Name}})
	}
	return out, nil
}

func (c *Connector) nameOf(t Table) string {
	if n, ok := c.opts.Names[t.ID]; ok {
		return n
	}
	return t.Name
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// lookup returns the Keboola table behind an extract name, discovering
// first if need be.
func (c *Connector) lookup(ctx context.Context, name string) (Table, error) {
	c.mu.Lock()
	t, ok := c.byName[name]
	known := c.byName != nil
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	if !known {
		if _, err := c.Discover(ctx); err != nil {
			return Table{}, err
		}
		return c.lookup(ctx, name)
	}
	return Table{}, fmt.Errorf("%w %q", connectors.ErrUnknownTable, name)
}

// Read exports the whole table and yields its rows.
func (c *Connector) Read(ctx context.Context, table string, opts connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	batches, _ := c.ReadChanged(ctx, table, "", opts)
	return batches
}

// ReadChanged exports the rows changed since cursor (the start of the
// previous export by Keboola's clock, RFC 3339; empty: every row) and
// yields them. The next cursor is this export job's creation time, by
// Keboola's clock (so the local clock's skew cannot lose rows): changedSince
// is inclusive, so rows changed while the export ran come again next time
// and the runtime merges them by primary key.
func (c *Connector) ReadChanged(ctx context.Context, table, cursor string, opts connectors.ReadOptions) (iter.Seq2[arrow.RecordBatch, error], func() string) {
	var started time.Time
	next := func() string { return started.Format(time.RFC3339) }
	return func(yield func(arrow.RecordBatch, error) bool) {
		t, err := c.lookup(ctx, table)
		if err != nil {
			yield(nil, err)
			return
		}
		since := ""
		if cursor != "" {
			at, err := time.Parse(time.RFC3339, cursor)
			if err != nil {
				yield(nil, fmt.Errorf("keboola: cursor %q of %s is not an RFC 3339 time", cursor, table))
				return
			}
			since = at.Add(-c.opts.Overlap).UTC().Format(time.RFC3339)
		}
		fileID, at, err := c.c.export(ctx, t.ID, since, c.opts.MaxPoll)
		started = at
		if err != nil {
			yield(nil, err)
			return
		}
		batch := opts.BatchSize
		if batch <= 0 {
			batch = c.opts.BatchSize
		}
		schema := schemaOf(t)
		stopped := false
		emit := func(rec arrow.RecordBatch) bool {
			ok := yield(rec, nil)
			rec.Release()
			stopped = !ok
			return ok
		}
		if err := c.stream(ctx, fileID, schema, batch, emit); err != nil && !stopped {
			yield(nil, fmt.Errorf("table %s (%s): %w", table, t.ID, err))
		}
	}, next
}

// stream downloads an exported file (or each slice of it, in manifest
// order) and turns its CSV into batches. A signed URL the host refuses
// (expired) gets a fresh file detail, up to three times per part; nothing
// of a part is emitted before its download started, so a retry never
// repeats rows.
func (c *Connector) stream(ctx context.Context, fileID int64, schema *arrow.Schema, batch int, emit func(arrow.RecordBatch) bool) error {
	f, err := c.c.file(ctx, fileID)
	if err != nil {
		return fmt.Errorf("file detail: %w", err)
	}
	if !f.IsSliced {
		return c.part(ctx, fileID, -1, f.URL, f, schema, batch, emit)
	}
	manifest, err := c.manifest(ctx, fileID, &f)
	if err != nil {
		return err
	}
	for i, e := range manifest.Entries {
		if err := c.part(ctx, fileID, i, e.URL, f, schema, batch, emit); err != nil {
			return err
		}
	}
	return nil
}

// manifest fetches the slice manifest, refreshing the file detail when
// its signed URL expired.
func (c *Connector) manifest(ctx context.Context, fileID int64, f *File) (SliceManifest, error) {
	for attempt := 0; ; attempt++ {
		body, err := c.c.download(ctx, f.URL)
		if errors.Is(err, errExpired) && attempt < 3 {
			if *f, err = c.c.file(ctx, fileID); err != nil {
				return SliceManifest{}, fmt.Errorf("refresh file detail: %w", err)
			}
			continue
		}
		if err != nil {
			return SliceManifest{}, fmt.Errorf("slice manifest: %w", err)
		}
		var m SliceManifest
		err = json.NewDecoder(body).Decode(&m)
		body.Close()
		if err != nil {
			return SliceManifest{}, fmt.Errorf("slice manifest is not JSON: %w", err)
		}
		return m, nil
	}
}

// part streams one slice (index i) or the whole unsliced file (i < 0).
// Slices have no header row; an unsliced export has one.
func (c *Connector) part(ctx context.Context, fileID int64, i int, u string, f File, schema *arrow.Schema, batch int, emit func(arrow.RecordBatch) bool) error {
	for attempt := 0; ; attempt++ {
		body, err := c.c.download(ctx, u)
		if errors.Is(err, errExpired) && attempt < 3 {
			if f, err = c.c.file(ctx, fileID); err != nil {
				return fmt.Errorf("refresh file detail: %w", err)
			}
			u = f.URL
			if i >= 0 {
				m, err := c.manifest(ctx, fileID, &f)
				if err != nil {
					return err
				}
				if i >= len(m.Entries) {
					return fmt.Errorf("slice %d is gone from the refreshed manifest", i)
				}
				u = m.Entries[i].URL
			}
			continue
		}
		if err != nil {
			return err
		}
		name := f.Name
		if pu, perr := url.Parse(u); perr == nil {
			name = pu.Path
		}
		r, closeZ, err := maybeGunzip(body, name)
		if err != nil {
			body.Close()
			return err
		}
		_, err = csvBatches(r, schema, i < 0, batch, c.opts.Mem, emit)
		closeZ()
		body.Close()
		if err != nil {
			where := "file"
			if i >= 0 {
				where = fmt.Sprintf("slice %d", i)
			}
			return fmt.Errorf("%s: %w", where, err)
		}
		return nil
	}
}
