// Package jira is the Jira Cloud connector: six tables kept in monthly
// partitions by the issue's creation month, backfilled over REST v3 and kept
// live by webhooks. Every event re-fetches its issue and replaces all of that
// issue's rows; jira:issue_deleted removes them.
package jira

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/httpclient"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

//go:embed connector.yaml
var manifest []byte

// SampleEvent is a webhook body the contract suite streams ("da connector
// test"): an update of an issue that Jira does not have, so the connector
// falls back to the event's own issue.
//
//go:embed sample_event.json
var SampleEvent []byte

// Register adds the jira connector to r.
func Register(r *connectors.Registry) {
	r.MustRegisterManifest("connectors/jira/connector.yaml", manifest, func(cfg connectors.Config) (connectors.Connector, error) {
		tokenEnv := cfg.String("token_env")
		token := os.Getenv(tokenEnv)
		if token == "" {
			return nil, fmt.Errorf("jira: the API token variable %s is not set", tokenEnv)
		}
		return New(Options{
			URL: cfg.String("url"), Email: cfg.String("email"), Token: token, JQL: cfg.String("jql"),
			PageSize: int(cfg.Int("page_size")), FetchConcurrency: int(cfg.Int("fetch_concurrency")),
			MaxRetries: int(cfg.Int("max_retries")), IncludeRestricted: cfg.Bool("include_restricted_comments"),
		})
	})
	r.SetEventValidator("jira", func(body []byte) error {
		_, err := ParseEvent(body)
		return err
	})
	r.SetSampleEvent("jira", SampleEvent)
}

// Options configure a Connector.
type Options struct {
	URL, Email, Token string
	// JQL restricts the backfill.
	JQL              string
	PageSize         int
	FetchConcurrency int
	MaxRetries       int
	// MaxRetryWait caps one wait between retries; default 30s.
	MaxRetryWait time.Duration
	// HTTPClient's transport carries the requests (default
	// http.DefaultTransport); retries are the SDK client's.
	HTTPClient *http.Client
	Mem        memory.Allocator
	// IncludeRestricted exports the bodies of comments restricted to a
	// role or group (their visibility is exported either way).
	IncludeRestricted bool
	Logger            *slog.Logger
}

// Connector reads Jira.
type Connector struct {
	opts Options
	c    *client
	log  *slog.Logger

	zoneOnce sync.Once
	zone     *time.Location
	zoneErr  error
}

var (
	_ connectors.Discoverer   = (*Connector)(nil)
	_ connectors.Reader       = (*Connector)(nil)
	_ connectors.Streamer     = (*Connector)(nil)
	_ connectors.ChangeReader = (*Connector)(nil)
	_ connectors.Checker      = (*Connector)(nil)
)

// New returns a Jira connector.
func New(opts Options) (*Connector, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("jira: url %q is not an http(s) URL", opts.URL)
	}
	if u.User != nil {
		return nil, errors.New("jira: url must not carry credentials; set config.email and the token variable")
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 50
	}
	if opts.FetchConcurrency <= 0 {
		opts.FetchConcurrency = 4
	}
	if opts.MaxRetryWait <= 0 {
		opts.MaxRetryWait = 30 * time.Second
	}
	transport := http.DefaultTransport
	if opts.HTTPClient != nil && opts.HTTPClient.Transport != nil {
		transport = opts.HTTPClient.Transport
	}
	retrying := httpclient.New(httpclient.Options{MaxRetries: opts.MaxRetries, MaxWait: opts.MaxRetryWait, Transport: transport})
	if opts.Mem == nil {
		opts.Mem = memory.DefaultAllocator
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Connector{opts: opts, log: opts.Logger.With("connector", "jira"), c: &client{base: u, email: opts.Email, token: opts.Token,
		http: retrying}}, nil
}

// Capabilities implements connectors.Connector.
func (c *Connector) Capabilities() connectors.Capability {
	return connectors.Discover | connectors.Read | connectors.Stream
}

// Check implements connectors.Checker: GET /rest/api/3/myself proves the
// site answers and the email and token are accepted, reading no issue.
func (c *Connector) Check(ctx context.Context) error {
	if _, err := c.c.myself(ctx); err != nil {
		return err
	}
	return nil
}

// Discover returns the six fixed tables.
func (c *Connector) Discover(context.Context) ([]connectors.TableInfo, error) { return tables(), nil }

// change fetches an issue and turns it into a change.
func (c *Connector) change(ctx context.Context, key string) (connectors.Change, error) {
	is, remote, err := c.c.getIssue(ctx, key)
	if err != nil {
		return connectors.Change{}, err
	}
	return c.issueChange(is, remote)
}

func (c *Connector) issueChange(is *Issue, remote []RemoteLink) (connectors.Change, error) {
	recs, created, err := issueRows(is, remote, c.opts.URL, c.opts.IncludeRestricted, c.opts.Mem)
	if err != nil {
		return connectors.Change{}, err
	}
	updated, err := ParseTime(is.Fields.Updated)
	if err != nil {
		updated = created
	}
	return connectors.Change{Key: is.Key, Time: created, Version: updated.UnixMicro(), Tables: recs}, nil
}

// Stream turns one webhook into a change of its issue: the issue as Jira has
// it now (so events arriving out of order all give the newest state), or,
// when the fetch fails, the issue the event carries, keeping the child rows
// it cannot vouch for. jira:issue_deleted deletes the issue's rows and
// refreshes the issues it was linked to (Jira removes their links without
// touching them).
func (c *Connector) Stream(ctx context.Context, body []byte) ([]connectors.Change, error) {
	ev, err := ParseEvent(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", connectors.ErrBadEvent, err)
	}
	is := ev.Issue
	if ev.WebhookEvent == EventIssueDeleted {
		return c.deleted(ctx, ev)
	}
	ch, err := c.change(ctx, is.Key)
	if err == nil {
		return []connectors.Change{ch}, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	fb, ferr := c.issueChange(is, nil)
	if ferr != nil {
		if errors.Is(err, ErrNotFound) {
			// Gone from Jira and no usable issue in the event: nothing will
			// ever make this event processable; its delete event removes it.
			return nil, fmt.Errorf("%w: issue %s is not in Jira and the event's issue is unusable: %v", connectors.ErrBadEvent, is.Key, ferr)
		}
		return nil, fmt.Errorf("fetch issue %s: %w; the event's own issue is unusable: %v", is.Key, err, ferr)
	}
	// The event's issue has no remote links and at most some comments: the
	// tables it cannot vouch for keep their rows.
	fb.Keep = unvouched(is)
	for _, t := range fb.Keep {
		if r := fb.Tables[t]; r != nil {
			r.Release()
			delete(fb.Tables, t)
		}
	}
	status := fetchStatus(err)
	metrics.ConnectorFallbacks.WithLabelValues("jira", status).Inc()
	c.log.Warn("re-fetching a webhook's issue failed; published the event's own issue and kept the rows it cannot vouch for",
		"issue", is.Key, "status", status, "kept", strings.Join(fb.Keep, ","), "err", err)
	return []connectors.Change{fb}, nil
}

// deleted is the change of jira:issue_deleted: the issue's rows go, and the
// issues it linked to are fetched again, since Jira removed their links to
// it without changing their updated time. Their version is at least the
// delete's, so the refreshed rows outrank the published ones.
func (c *Connector) deleted(ctx context.Context, ev WebhookEvent) ([]connectors.Change, error) {
	is := ev.Issue
	created, err := ParseTime(is.Fields.Created)
	if err != nil {
		return nil, fmt.Errorf("%w: deleted issue %s: created (its partition): %v", connectors.ErrBadEvent, is.Key, err)
	}
	// A delete outranks every state of the issue up to the event.
	version := ev.Timestamp * 1000
	if u, err := ParseTime(is.Fields.Updated); err == nil {
		version = max(version, u.UnixMicro()+1)
	}
	out := []connectors.Change{{Key: is.Key, Time: created, Version: version, Deleted: true}}
	seen := map[string]bool{is.Key: true}
	for _, l := range is.Fields.IssueLinks {
		other := l.OutwardIssue
		if other == nil {
			other = l.InwardIssue
		}
		if other == nil || seen[other.Key] || !IssueKeyRE.MatchString(other.Key) {
			continue
		}
		seen[other.Key] = true
		ch, err := c.change(ctx, other.Key)
		if errors.Is(err, ErrNotFound) {
			continue // gone too: its own delete removes it
		}
		if err != nil {
			for _, o := range out {
				o.Release()
			}
			return nil, fmt.Errorf("refresh issue %s, linked to the deleted %s: %w", other.Key, is.Key, err)
		}
		ch.Version = max(ch.Version, version)
		out = append(out, ch)
	}
	return out, nil
}

// unvouched lists the child tables whose rows an issue taken from a webhook
// cannot replace: remote links (never in an event), comments when the thread
// is absent or incomplete, and changelog, attachments and links when absent.
func unvouched(is *Issue) []string {
	keep := []string{TableRemoteLinks}
	if cp := is.Fields.Comment; cp == nil || cp.Total > len(cp.Comments) {
		keep = append(keep, TableComments)
	}
	if cl := is.Changelog; cl == nil || cl.Total > len(cl.Histories) {
		keep = append(keep, TableChangelog)
	}
	if is.Fields.Attachment == nil {
		keep = append(keep, TableAttachments)
	}
	if is.Fields.IssueLinks == nil {
		keep = append(keep, TableIssueLinks)
	}
	return keep
}

// fetchStatus names why a fetch failed, for logs and metrics: the HTTP
// status, or "network".
func fetchStatus(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return strconv.Itoa(ae.Status)
	}
	return "network"
}

// userZone is the API user's time zone (GET /myself), in which Jira reads
// the minute dates of JQL. It is asked once.
func (c *Connector) userZone(ctx context.Context) (*time.Location, error) {
	c.zoneOnce.Do(func() {
		var me Myself
		if me, c.zoneErr = c.c.myself(ctx); c.zoneErr != nil {
			return
		}
		if me.TimeZone == "" {
			c.zone = time.UTC
			return
		}
		c.zone, c.zoneErr = time.LoadLocation(me.TimeZone)
	})
	return c.zone, c.zoneErr
}

// unboundedFloor bounds a search with no other restriction: Jira Cloud
// refuses unbounded JQL on /search/jql, and every issue was updated after it.
const unboundedFloor = `updated >= "1970/01/01 00:00"`

// backfillJQL builds the search: the configured filter, issues updated since
// the cursor, oldest first. JQL dates are minutes in the API user's time
// zone: the cursor is written in that zone, so only the cursor's minute is
// read again. If the zone cannot be read, the cursor goes back 14 hours (the
// largest UTC offset) instead.
func (c *Connector) backfillJQL(ctx context.Context, since string) (string, error) {
	var conds []string
	if q := strings.TrimSpace(c.opts.JQL); q != "" {
		conds = append(conds, "("+q+")")
	}
	if since != "" {
		t, err := time.Parse(time.RFC3339Nano, since)
		if err != nil {
			return "", fmt.Errorf("jira: cursor %q is not an RFC 3339 time", since)
		}
		zone, err := c.userZone(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			c.log.Warn("cannot read the API user's time zone; reading the last 14 hours again", "err", err)
			zone, t = time.UTC, t.Add(-14*time.Hour)
		}
		conds = append(conds, fmt.Sprintf(`updated >= "%s"`, t.In(zone).Format("2006/01/02 15:04")))
	}
	if len(conds) == 0 {
		conds = append(conds, unboundedFloor)
	}
	return strings.Join(conds, " AND ") + " ORDER BY updated ASC", nil
}

// Changes pages the search and fetches every issue (several at a time),
// yielding one change per issue.
func (c *Connector) Changes(ctx context.Context, opts connectors.ReadOptions) iter.Seq2[connectors.Change, error] {
	return func(yield func(connectors.Change, error) bool) {
		jql, err := c.backfillJQL(ctx, opts.IncrementalValue)
		var since time.Time
		if opts.IncrementalValue != "" {
			since, _ = time.Parse(time.RFC3339Nano, opts.IncrementalValue)
		}
		if err != nil {
			yield(connectors.Change{}, err)
			return
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// Issues are fetched several at a time but yielded in search order,
		// so two reads of the same data give the same sequence.
		jobs := make(chan fetchJob)
		order := make(chan chan fetched, 2*c.opts.FetchConcurrency)
		var wg sync.WaitGroup
		for range c.opts.FetchConcurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.fetchIssues(ctx, jobs)
			}()
		}
		go c.searchIssues(ctx, jql, since, jobs, order)
		defer func() {
			cancel()
			// Drain: free what workers fetched after the consumer stopped.
			for out := range order {
				select {
				case r := <-out:
					r.ch.Release()
				default:
				}
			}
			wg.Wait()
		}()
		for out := range order {
			var r fetched
			select {
			case r = <-out:
			case <-ctx.Done():
				yield(connectors.Change{}, ctx.Err())
				return
			}
			if r.err != nil {
				yield(connectors.Change{}, r.err)
				return
			}
			if r.ok && !yield(r.ch, nil) {
				return
			}
		}
	}
}

// fetched is one issue of a backfill: its change, or why there is none
// (ok false without an error: deleted since the search).
type fetched struct {
	ch  connectors.Change
	err error
	ok  bool
}

// fetchJob asks for one issue, answered on out.
type fetchJob struct {
	key string
	out chan fetched
}

// fetchIssues answers jobs until they end.
func (c *Connector) fetchIssues(ctx context.Context, jobs <-chan fetchJob) {
	for j := range jobs {
		ch, err := c.change(ctx, j.key)
		switch {
		case errors.Is(err, ErrNotFound):
			// Deleted since the search; its delete event removes it.
			j.out <- fetched{}
		case err != nil:
			j.out <- fetched{err: fmt.Errorf("fetch issue %s: %w", j.key, err)}
		default:
			j.out <- fetched{ch: ch, ok: true}
		}
	}
}

// searchIssues pages through the search and hands each issue to a fetcher,
// queueing its answer in order; it closes both channels when done.
func (c *Connector) searchIssues(ctx context.Context, jql string, since time.Time, jobs chan<- fetchJob, order chan<- chan fetched) {
	defer func() {
		close(jobs)
		close(order)
	}()
	token := ""
	for {
		page, err := c.c.search(ctx, jql, token, c.opts.PageSize)
		if err != nil {
			out := make(chan fetched, 1)
			out <- fetched{err: fmt.Errorf("search issues: %w", err)}
			select {
			case order <- out:
			case <-ctx.Done():
			}
			return
		}
		for _, is := range page.Issues {
			// The search's minute overlap returns issues older than the
			// cursor: published already, not fetched again.
			if u, err := ParseTime(is.Fields.Updated); err == nil && u.Before(since) {
				continue
			}
			out := make(chan fetched, 1)
			select {
			case order <- out:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- fetchJob{is.Key, out}:
			case <-ctx.Done():
				return
			}
		}
		if page.IsLast || page.NextPageToken == "" {
			return
		}
		token = page.NextPageToken
	}
}

// Read yields one table's rows of a backfill. The runtime backfills all six
// tables in one pass with Changes; Read serves single-table reads
// ("da connector test") and fetches every issue.
func (c *Connector) Read(ctx context.Context, table string, opts connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		if Schemas[table] == nil {
			yield(nil, fmt.Errorf("jira has no table %q", table))
			return
		}
		for ch, err := range c.Changes(ctx, connectors.ReadOptions{IncrementalValue: opts.IncrementalValue}) {
			if err != nil {
				yield(nil, err)
				return
			}
			rec := ch.Tables[table]
			if rec != nil {
				rec.Retain()
			}
			ch.Release()
			if rec == nil {
				continue
			}
			ok := yield(rec, nil)
			rec.Release()
			if !ok {
				return
			}
		}
	}
}
