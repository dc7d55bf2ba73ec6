// Package bigquery is the Google BigQuery connector. By default every table
// is published remote: a view over the bq catalog DuckDB's bigquery
// extension attaches (tables), or over bigquery_query (views and
// materialized views, which the extension reads through the jobs API). A
// table with query_mode materialized is read through the REST API (a dry
// run first, refused above a byte cap; then jobs.query and getQueryResults)
// into Parquet. Credentials are Application Default Credentials.
package bigquery

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/httpclient"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"golang.org/x/oauth2"
)

//go:embed connector.yaml
var manifest []byte

// Alias is the attach alias of the remote catalog.
const Alias = "bq"

// DefaultEndpoint is the REST root of BigQuery.
const DefaultEndpoint = "https://bigquery.googleapis.com"

// Register adds the bigquery connector to r.
func Register(r *connectors.Registry) {
	r.MustRegisterManifest("connectors/bigquery/connector.yaml", manifest, func(cfg connectors.Config) (connectors.Connector, error) {
		opts := Options{Project: cfg.String("project"), BillingProject: cfg.String("billing_project"), Endpoint: cfg.String("endpoint"),
			MaxBytes: cfg.Int("max_bytes_per_materialize"), PageSize: int(cfg.Int("page_size")), MaxRetries: int(cfg.Int("max_retries"))}
		var err error
		if opts.Datasets, err = cfg.Strings("datasets"); err != nil {
			return nil, fmt.Errorf("bigquery: %w", err)
		}
		if opts.Names, err = cfg.StringMap("table_names"); err != nil {
			return nil, fmt.Errorf("bigquery: %w", err)
		}
		return New(opts)
	})
}

// Options configure a Connector.
type Options struct {
	Project, BillingProject string
	Datasets                []string
	// Names maps "<dataset>.<table>" to an extract name.
	Names    map[string]string
	Endpoint string
	// MaxBytes caps what a materialized table's query may scan (dry run).
	MaxBytes   int64
	PageSize   int
	MaxRetries int
	// MaxRetryWait caps one wait between retries (default 30s).
	MaxRetryWait time.Duration
	// Transport carries the requests (default http.DefaultTransport).
	Transport http.RoundTripper
	// TokenSource, when set, replaces Application Default Credentials.
	TokenSource oauth2.TokenSource
	Mem         memory.Allocator
}

// Connector reads BigQuery.
type Connector struct {
	opts Options
	c    *client
	auth *authTransport

	mu      sync.Mutex
	byName  map[string]Table
	skipped []string
}

var (
	_ connectors.Discoverer = (*Connector)(nil)
	_ connectors.Reader     = (*Connector)(nil)
	_ connectors.Remoter    = (*Connector)(nil)
	_ connectors.Checker    = (*Connector)(nil)
	_ connectors.Skipper    = (*Connector)(nil)
)

// New returns a BigQuery connector; credentials are found on first use.
func New(opts Options) (*Connector, error) {
	if opts.Project == "" {
		return nil, errors.New("bigquery: config.project is required")
	}
	if opts.BillingProject == "" {
		opts.BillingProject = opts.Project
	}
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	u, err := url.Parse(strings.TrimRight(opts.Endpoint, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("bigquery: endpoint %q is not an http(s) URL", opts.Endpoint)
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 10 << 30
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 10_000
	}
	if opts.Mem == nil {
		opts.Mem = memory.DefaultAllocator
	}
	base := opts.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	auth := &authTransport{base: base}
	if opts.TokenSource != nil {
		auth.ts = opts.TokenSource
	} else {
		auth.fresh = func() (oauth2.TokenSource, error) { return defaultCredentials(context.Background()) }
	}
	hc := httpclient.New(httpclient.Options{MaxRetries: opts.MaxRetries, MaxWait: opts.MaxRetryWait, Transport: auth, Retry: retryPolicy})
	return &Connector{opts: opts, auth: auth, c: &client{base: u, http: hc}}, nil
}

// retryPolicy retries what BigQuery says is transient: 429, 5xx, and 403
// rateLimitExceeded (which BigQuery also sends), besides network errors.
func retryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		return true, nil
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return true, nil
	case resp.StatusCode == http.StatusForbidden:
		// BigQuery sends some rate limits as 403: read the reason and put
		// the body back for the caller.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return rateLimited(parseError("", "", resp.StatusCode, body).Reason), nil
	}
	return false, nil
}

// credentials makes sure a token source exists (found lazily, so opening
// the connector for "da connector list" needs no credentials).
func (c *Connector) credentials() error {
	c.auth.mu.Lock()
	defer c.auth.mu.Unlock()
	if c.auth.ts != nil {
		return nil
	}
	ts, err := defaultCredentials(context.Background())
	if err != nil {
		return err
	}
	c.auth.ts = ts
	return nil
}

// Capabilities implements connectors.Connector.
func (c *Connector) Capabilities() connectors.Capability {
	return connectors.Discover | connectors.Read | connectors.Remote
}

// Remote names the attached catalog: DuckDB's bigquery extension on the
// data project; the extension finds credentials itself (no token variable).
func (c *Connector) Remote(context.Context) (connectors.RemoteAttachInfo, error) {
	return connectors.RemoteAttachInfo{Extension: "bigquery", URL: "project=" + c.opts.Project, Alias: Alias}, nil
}

// Check lists one dataset page: credentials work and the project answers.
func (c *Connector) Check(ctx context.Context) error {
	if err := c.credentials(); err != nil {
		return err
	}
	_, err := c.c.datasets(ctx, c.opts.Project, "")
	return err
}

// Skipped reports what the last discovery left out and why: datasets the
// credentials cannot read, tables of kinds that cannot be published, names
// that cannot be made identifiers.
func (c *Connector) Skipped() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.skipped)
}

// Discover lists the datasets (or the configured ones) and their tables,
// with each table's schema, description and kind. Tables are remote by
// default (PreferRemote); views and materialized views get a bigquery_query
// view; other kinds are skipped with a reason.
func (c *Connector) Discover(ctx context.Context) ([]connectors.TableInfo, error) {
	if err := c.credentials(); err != nil {
		return nil, err
	}
	datasets, err := c.listDatasets(ctx)
	if err != nil {
		return nil, err
	}
	refs, skipped, err := c.listTables(ctx, datasets)
	if err != nil {
		return nil, err
	}
	tables, err := c.details(ctx, refs)
	if err != nil {
		return nil, err
	}
	byName := map[string]Table{}
	var out []connectors.TableInfo
	for _, t := range tables {
		ref := t.TableReference
		name := c.nameOf(ref)
		if err := schemas.ValidateName("table", name); err != nil {
			skipped = append(skipped, fmt.Sprintf("table %s.%s: the name %q is not an identifier; set config.table_names: {%q: <name>}", ref.DatasetID, ref.TableID, name, ref.DatasetID+"."+ref.TableID))
			continue
		}
		if prev, dup := byName[name]; dup {
			skipped = append(skipped, fmt.Sprintf("table %s.%s: %q is also the name of %s.%s; set config.table_names", ref.DatasetID, ref.TableID, name, prev.TableReference.DatasetID, prev.TableReference.TableID))
			continue
		}
		info, err := c.tableInfo(name, t)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("table %s.%s: %v", ref.DatasetID, ref.TableID, err))
			continue
		}
		byName[name] = t
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	c.mu.Lock()
	c.byName, c.skipped = byName, skipped
	c.mu.Unlock()
	return out, nil
}

// listDatasets is the configured datasets, or every dataset of the project.
func (c *Connector) listDatasets(ctx context.Context) ([]string, error) {
	datasets := c.opts.Datasets
	if len(datasets) == 0 {
		token := ""
		for {
			page, err := c.c.datasets(ctx, c.opts.Project, token)
			if err != nil {
				return nil, fmt.Errorf("list datasets of %s: %w", c.opts.Project, err)
			}
			for _, d := range page.Datasets {
				datasets = append(datasets, d.DatasetReference.DatasetID)
			}
			if page.NextPageToken == "" {
				break
			}
			token = page.NextPageToken
		}
	}
	sort.Strings(datasets)
	return datasets, nil
}

// listTables is every table of the datasets; a dataset the credentials may
// not list (or that is gone) is skipped with the reason.
func (c *Connector) listTables(ctx context.Context, datasets []string) (refs []TableRef, skipped []string, err error) {
	for _, ds := range datasets {
		token := ""
		for {
			page, err := c.c.tables(ctx, c.opts.Project, ds, token)
			if errors.Is(err, ErrForbidden) || errors.Is(err, ErrNotFound) {
				skipped = append(skipped, fmt.Sprintf("dataset %s: %v", ds, err))
				break
			}
			if err != nil {
				return nil, nil, fmt.Errorf("list tables of %s: %w", ds, err)
			}
			for _, t := range page.Tables {
				refs = append(refs, t.TableReference)
			}
			if page.NextPageToken == "" {
				break
			}
			token = page.NextPageToken
		}
	}
	return refs, skipped, nil
}

// tableInfo describes one table or view: read by a query, published as a
// remote table (a view through bigquery_query).
func (c *Connector) tableInfo(name string, t Table) (connectors.TableInfo, error) {
	ref := t.TableReference
	info := connectors.TableInfo{Name: name, Description: t.Description, PreferRemote: true}
	if t.Schema != nil {
		s, err := arrowSchema(*t.Schema)
		if err != nil {
			return info, err
		}
		info.Schema = s
	}
	switch t.Type {
	case "TABLE", "":
		info.Capabilities = connectors.Read | connectors.Remote
		info.RemotePath = []string{ref.DatasetID, ref.TableID}
	case "VIEW", "MATERIALIZED_VIEW":
		info.Capabilities = connectors.Read | connectors.Remote
		info.RemoteQuery = &connectors.RemoteQuery{Function: "bigquery_query",
			Args: []string{c.opts.BillingProject, "SELECT * FROM " + quoteRef(ref)}}
	default:
		return info, fmt.Errorf("type %s is neither a table nor a view; not published", t.Type)
	}
	return info, nil
}

// details gets every table (8 at a time); one that vanished meanwhile
// (404) is left out.
func (c *Connector) details(ctx context.Context, refs []TableRef) ([]Table, error) {
	out := make([]Table, len(refs))
	errs := make([]error, len(refs))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, r := range refs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = c.c.table(ctx, r)
		}()
	}
	wg.Wait()
	kept := out[:0]
	for i, t := range out {
		switch {
		case errors.Is(errs[i], ErrNotFound):
		case errs[i] != nil:
			return nil, fmt.Errorf("get table %s.%s: %w", refs[i].DatasetID, refs[i].TableID, errs[i])
		default:
			kept = append(kept, t)
		}
	}
	return kept, nil
}

func (c *Connector) nameOf(ref TableRef) string {
	if n, ok := c.opts.Names[ref.DatasetID+"."+ref.TableID]; ok {
		return n
	}
	return ref.DatasetID + "_" + ref.TableID
}

// quoteRef is a table's standard-SQL reference `project.dataset.table`.
func quoteRef(ref TableRef) string {
	return "`" + strings.ReplaceAll(ref.ProjectID+"."+ref.DatasetID+"."+ref.TableID, "`", "") + "`"
}

// Read materializes a table: its query (opts.Query, default SELECT * FROM
// the table) is dry-run and refused above MaxBytes, then run, and its
// result pages are converted to batches of the result schema.
func (c *Connector) Read(ctx context.Context, table string, opts connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		c.mu.Lock()
		t, ok := c.byName[table]
		c.mu.Unlock()
		if !ok {
			if _, err := c.Discover(ctx); err != nil {
				yield(nil, err)
				return
			}
			c.mu.Lock()
			t, ok = c.byName[table]
			c.mu.Unlock()
			if !ok {
				yield(nil, fmt.Errorf("%w %q", connectors.ErrUnknownTable, table))
				return
			}
		}
		sql := opts.Query
		if sql == "" {
			sql = "SELECT * FROM " + quoteRef(t.TableReference)
		}
		if err := c.materialize(ctx, table, sql, t.Location, opts.BatchSize, yield); err != nil {
			yield(nil, err)
		}
	}
}

func (c *Connector) materialize(ctx context.Context, table, sql, location string, batch int, yield func(arrow.RecordBatch, error) bool) error {
	page, err := c.runQuery(ctx, table, sql, location)
	if err != nil {
		return err
	}
	if page.Schema == nil {
		return fmt.Errorf("the query of %s returned no schema", table)
	}
	schema, err := arrowSchema(*page.Schema)
	if err != nil {
		return err
	}
	if batch <= 0 {
		batch = connectors.DefaultBatchSize
	}
	b := array.NewRecordBuilder(c.opts.Mem, schema)
	defer b.Release()
	n := 0
	flush := func() bool {
		if n == 0 {
			return true
		}
		rec := b.NewRecordBatch()
		n = 0
		ok := yield(rec, nil)
		rec.Release()
		return ok
	}
	fields := page.Schema.Fields
	for {
		for _, row := range page.Rows {
			if err := appendRow(b, fields, row); err != nil {
				return fmt.Errorf("table %s: %w", table, err)
			}
			n++
			if n >= batch && !flush() {
				return nil
			}
		}
		if page.PageToken == "" {
			break
		}
		if page, err = c.c.results(ctx, page.JobReference, page.PageToken, c.opts.PageSize); err != nil {
			return fmt.Errorf("read the results of %s: %w", table, err)
		}
	}
	flush()
	return nil
}

// appendRow appends one result row ({"f": [{"v": cell}, ...]}).
func appendRow(b *array.RecordBuilder, fields []Field, row map[string]any) error {
	cells, _ := row["f"].([]any)
	if len(cells) != len(fields) {
		return fmt.Errorf("a result row has %d cells, the schema %d", len(cells), len(fields))
	}
	for i, cell := range cells {
		m, _ := cell.(map[string]any)
		if err := appendValue(b.Field(i), fields[i], m["v"]); err != nil {
			return err
		}
	}
	return nil
}

// runQuery dry-runs sql against the scan limit, runs it and waits for the
// job: the first page of results.
func (c *Connector) runQuery(ctx context.Context, table, sql, location string) (QueryResponse, error) {
	dry, err := c.c.query(ctx, c.opts.BillingProject, QueryRequest{Query: sql, DryRun: true, Location: location})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return QueryResponse{}, fmt.Errorf("table %s is gone from BigQuery: %w", table, err)
		}
		return QueryResponse{}, fmt.Errorf("dry run of %s: %w", table, err)
	}
	scanned, _ := strconv.ParseInt(dry.TotalBytesProcessed, 10, 64)
	if scanned > c.opts.MaxBytes {
		return QueryResponse{}, fmt.Errorf("the query of %s would scan %d bytes, over max_bytes_per_materialize (%d): raise the limit or narrow table_options.%s.query", table, scanned, c.opts.MaxBytes, table)
	}
	page, err := c.c.query(ctx, c.opts.BillingProject, QueryRequest{Query: sql, MaxResults: c.opts.PageSize, TimeoutMs: 10_000, Location: location})
	if err != nil {
		return QueryResponse{}, fmt.Errorf("query %s: %w", table, err)
	}
	wait := 100 * time.Millisecond
	for !page.JobComplete {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return QueryResponse{}, ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, 5*time.Second)
		if page, err = c.c.results(ctx, page.JobReference, "", c.opts.PageSize); err != nil {
			return QueryResponse{}, fmt.Errorf("wait for the query of %s: %w", table, err)
		}
	}
	return page, nil
}
