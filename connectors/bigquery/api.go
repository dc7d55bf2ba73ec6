package bigquery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/agnes-ai/connector-kit/connectors/httpclient"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
)

// Scope is the OAuth scope the connector asks for: listing, reading and
// querying (dry runs and materialized tables run queries).
const Scope = "https://www.googleapis.com/auth/bigquery"

// The types below are the parts of the BigQuery REST v2 JSON the connector
// reads; bigquerytest renders the same types.

// DatasetList is GET /projects/{p}/datasets.
type DatasetList struct {
	Datasets []struct {
		DatasetReference struct {
			DatasetID string `json:"datasetId"`
			ProjectID string `json:"projectId"`
		} `json:"datasetReference"`
	} `json:"datasets"`
	NextPageToken string `json:"nextPageToken,omitempty"`
}

// TableRef names a table.
type TableRef struct {
	ProjectID string `json:"projectId"`
	DatasetID string `json:"datasetId"`
	TableID   string `json:"tableId"`
}

// TableList is GET /projects/{p}/datasets/{d}/tables.
type TableList struct {
	Tables []struct {
		TableReference TableRef `json:"tableReference"`
		Type           string   `json:"type"`
	} `json:"tables"`
	NextPageToken string `json:"nextPageToken,omitempty"`
	TotalItems    int    `json:"totalItems,omitempty"`
}

// Table is GET /projects/{p}/datasets/{d}/tables/{t}. NumRows and
// NumBytes are strings in the API (int64 as JSON strings).
type Table struct {
	TableReference TableRef `json:"tableReference"`
	Type           string   `json:"type"` // TABLE, VIEW, MATERIALIZED_VIEW, EXTERNAL, SNAPSHOT, ...
	Description    string   `json:"description,omitempty"`
	Schema         *Schema  `json:"schema,omitempty"`
	NumRows        string   `json:"numRows,omitempty"`
	NumBytes       string   `json:"numBytes,omitempty"`
	Location       string   `json:"location,omitempty"`
}

// QueryRequest is the body of POST /projects/{p}/queries.
type QueryRequest struct {
	Query        string `json:"query"`
	UseLegacySQL bool   `json:"useLegacySql"`
	DryRun       bool   `json:"dryRun,omitempty"`
	MaxResults   int    `json:"maxResults,omitempty"`
	TimeoutMs    int    `json:"timeoutMs,omitempty"`
	Location     string `json:"location,omitempty"`
}

// JobRef names a query job.
type JobRef struct {
	ProjectID string `json:"projectId"`
	JobID     string `json:"jobId"`
	Location  string `json:"location,omitempty"`
}

// QueryResponse is the answer of jobs.query and jobs.getQueryResults: a
// page of rows in the f/v form, with the next page's token.
type QueryResponse struct {
	JobComplete         bool             `json:"jobComplete"`
	JobReference        JobRef           `json:"jobReference"`
	Schema              *Schema          `json:"schema,omitempty"`
	Rows                []map[string]any `json:"rows,omitempty"`
	PageToken           string           `json:"pageToken,omitempty"`
	TotalRows           string           `json:"totalRows,omitempty"`
	TotalBytesProcessed string           `json:"totalBytesProcessed,omitempty"`
}

// APIError is a non-2xx answer, with BigQuery's reason and message. It
// never holds a token.
type APIError struct {
	Method, Path string
	Status       int
	Reason       string
	Message      string
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("bigquery %s %s: HTTP %d", e.Method, e.Path, e.Status)
	if e.Reason != "" {
		msg += " " + e.Reason
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Status == http.StatusUnauthorized {
		msg += " (check the credentials: GOOGLE_APPLICATION_CREDENTIALS or the metadata server)"
	}
	return msg
}

// ErrNotFound and ErrForbidden are 404 and 403 (other than rate limits).
var (
	ErrNotFound  = errors.New("not found")
	ErrForbidden = errors.New("forbidden")
)

func (e *APIError) Unwrap() error {
	switch {
	case e.Status == http.StatusNotFound:
		return ErrNotFound
	case e.Status == http.StatusForbidden && !rateLimited(e.Reason):
		return ErrForbidden
	}
	return nil
}

func rateLimited(reason string) bool {
	return reason == "rateLimitExceeded" || reason == "quotaExceeded" || reason == "userRateLimitExceeded"
}

func parseError(method, path string, status int, data []byte) *APIError {
	var e struct {
		Error struct {
			Message string `json:"message"`
			Errors  []struct {
				Reason string `json:"reason"`
			} `json:"errors"`
		} `json:"error"`
	}
	json.Unmarshal(data, &e)
	ae := &APIError{Method: method, Path: path, Status: status, Message: e.Error.Message}
	if len(e.Error.Errors) > 0 {
		ae.Reason = e.Error.Errors[0].Reason
	}
	return ae
}

// authTransport adds the bearer token to every request. A 401 gets one
// retry with a token from freshly found credentials (a revoked or rotated
// token); the token source refreshes before expiry by itself.
type authTransport struct {
	base  http.RoundTripper
	fresh func() (oauth2.TokenSource, error)

	mu sync.Mutex
	ts oauth2.TokenSource
}

func (a *authTransport) source() oauth2.TokenSource {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ts
}

func (a *authTransport) send(req *http.Request, ts oauth2.TokenSource) (*http.Response, error) {
	tok, err := ts.Token()
	if err != nil {
		return nil, fmt.Errorf("bigquery: get an access token: %w", err)
	}
	r := req.Clone(req.Context())
	if req.GetBody != nil {
		if r.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	tok.SetAuthHeader(r)
	return a.base.RoundTrip(r)
}

func (a *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := a.send(req, a.source())
	if err != nil || resp.StatusCode != http.StatusUnauthorized || a.fresh == nil {
		return resp, err
	}
	ts, ferr := a.fresh()
	if ferr != nil {
		return resp, nil
	}
	resp.Body.Close()
	a.mu.Lock()
	a.ts = ts
	a.mu.Unlock()
	return a.send(req, ts)
}

// defaultCredentials finds Application Default Credentials: the key file
// named by GOOGLE_APPLICATION_CREDENTIALS (its token_uri honoured), else the
// metadata server (GCE_METADATA_HOST overrides its address).
func defaultCredentials(ctx context.Context) (oauth2.TokenSource, error) {
	creds, err := google.FindDefaultCredentials(context.WithoutCancel(ctx), Scope)
	if err != nil {
		return nil, fmt.Errorf("bigquery: find credentials (set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on GCP): %w", err)
	}
	return creds.TokenSource, nil
}

// client calls the BigQuery REST API.
type client struct {
	base *url.URL
	http *http.Client
}

func (c *client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + "/bigquery/v2" + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	status, data, err := httpclient.Exchange(c.http, req, "bigquery "+method+" "+path, 512<<20)
	if err != nil {
		return err
	}
	if status/100 != 2 {
		return parseError(method, path, status, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("bigquery %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func (c *client) datasets(ctx context.Context, project, token string) (DatasetList, error) {
	var out DatasetList
	q := url.Values{"maxResults": {"1000"}}
	if token != "" {
		q.Set("pageToken", token)
	}
	err := c.do(ctx, http.MethodGet, "/projects/"+url.PathEscape(project)+"/datasets", q, nil, &out)
	return out, err
}

func (c *client) tables(ctx context.Context, project, dataset, token string) (TableList, error) {
	var out TableList
	q := url.Values{"maxResults": {"1000"}}
	if token != "" {
		q.Set("pageToken", token)
	}
	err := c.do(ctx, http.MethodGet, "/projects/"+url.PathEscape(project)+"/datasets/"+url.PathEscape(dataset)+"/tables", q, nil, &out)
	return out, err
}

func (c *client) table(ctx context.Context, ref TableRef) (Table, error) {
	var out Table
	err := c.do(ctx, http.MethodGet, "/projects/"+url.PathEscape(ref.ProjectID)+"/datasets/"+url.PathEscape(ref.DatasetID)+
		"/tables/"+url.PathEscape(ref.TableID), nil, nil, &out)
	return out, err
}

func (c *client) query(ctx context.Context, project string, req QueryRequest) (QueryResponse, error) {
	var out QueryResponse
	err := c.do(ctx, http.MethodPost, "/projects/"+url.PathEscape(project)+"/queries", nil, req, &out)
	return out, err
}

func (c *client) results(ctx context.Context, job JobRef, pageToken string, maxResults int) (QueryResponse, error) {
	var out QueryResponse
	q := url.Values{"maxResults": {fmt.Sprint(maxResults)}, "timeoutMs": {"10000"}}
	if pageToken != "" {
		q.Set("pageToken", pageToken)
	}
	if job.Location != "" {
		q.Set("location", job.Location)
	}
	err := c.do(ctx, http.MethodGet, "/projects/"+url.PathEscape(job.ProjectID)+"/queries/"+url.PathEscape(job.JobID), q, nil, &out)
	return out, err
}
