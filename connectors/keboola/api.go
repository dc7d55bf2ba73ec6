package keboola

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/httpclient"
)

// The types below are the parts of the Storage API v2 JSON the connector
// reads; keboolatest renders the same types.

// Bucket is one entry of GET /v2/storage/buckets.
type Bucket struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Stage       string `json:"stage"`
	Description string `json:"description,omitempty"`
}

// MetadataEntry is one metadata key of a table or a column.
type MetadataEntry struct {
	Key       string `json:"key"`
	Value     string `json:"value"`
	Provider  string `json:"provider"`
	Timestamp string `json:"timestamp,omitempty"`
}

// ColumnMetadata maps a column to its metadata. The API writes an empty
// object as [] (PHP), which decodes to no entries.
type ColumnMetadata map[string][]MetadataEntry

// UnmarshalJSON accepts an object or an (empty) array.
func (m *ColumnMetadata) UnmarshalJSON(b []byte) error {
	t := bytes.TrimSpace(b)
	if len(t) > 0 && t[0] == '[' {
		var list []json.RawMessage
		if err := json.Unmarshal(t, &list); err != nil {
			return err
		}
		if len(list) > 0 {
			return fmt.Errorf("columnMetadata is a non-empty array")
		}
		*m = ColumnMetadata{}
		return nil
	}
	var v map[string][]MetadataEntry
	if err := json.Unmarshal(t, &v); err != nil {
		return err
	}
	*m = v
	return nil
}

// Table is a table of GET /buckets/{id}/tables and GET /tables/{id}.
type Table struct {
	ID             string          `json:"id"`
	Name           string          `json:"name"`
	DisplayName    string          `json:"displayName,omitempty"`
	PrimaryKey     []string        `json:"primaryKey"`
	Columns        []string        `json:"columns"`
	ColumnMetadata ColumnMetadata  `json:"columnMetadata,omitempty"`
	Metadata       []MetadataEntry `json:"metadata,omitempty"`
	RowsCount      int64           `json:"rowsCount"`
	DataSizeBytes  int64           `json:"dataSizeBytes"`
	LastChangeDate string          `json:"lastChangeDate,omitempty"`
	Bucket         *Bucket         `json:"bucket,omitempty"`
}

// Job is an asynchronous Storage job (POST export-async, GET /jobs/{id}).
type Job struct {
	ID     int64  `json:"id"`
	Status string `json:"status"` // waiting, processing, success, error
	URL    string `json:"url,omitempty"`
	// CreatedTime and StartTime are Keboola's clock (TimeLayout).
	CreatedTime string `json:"createdTime,omitempty"`
	StartTime   string `json:"startTime,omitempty"`
	Results     *struct {
		File *struct {
			ID int64 `json:"id"`
		} `json:"file,omitempty"`
	} `json:"results,omitempty"`
	Error *struct {
		Message string `json:"message"`
		Code    string `json:"code,omitempty"`
	} `json:"error,omitempty"`
}

// File is GET /files/{id}?federationToken=1: a signed URL of the data (or
// of the slice manifest when IsSliced).
type File struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	URL       string `json:"url"`
	IsSliced  bool   `json:"isSliced"`
	SizeBytes int64  `json:"sizeBytes"`
}

// SliceManifest lists the slices of a sliced file.
type SliceManifest struct {
	Entries []struct {
		URL string `json:"url"`
	} `json:"entries"`
}

// TimeLayout is how the API writes times: 2025-09-07T13:00:00+0100.
const TimeLayout = "2006-01-02T15:04:05-0700"

// ParseTime reads an API time (TimeLayout, or RFC 3339) as UTC.
func ParseTime(s string) (time.Time, error) {
	for _, l := range []string{TimeLayout, time.RFC3339Nano} {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("bad Keboola time %q", s)
}

// APIError is a non-2xx answer of the Storage API, with Keboola's message.
// It never holds the token.
type APIError struct {
	Method, Path string
	Status       int
	Message      string
	Code         string
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("keboola %s %s: HTTP %d", e.Method, e.Path, e.Status)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	switch e.Status {
	case http.StatusUnauthorized:
		msg += " (check the token in KEBOOLA_STORAGE_TOKEN)"
	case http.StatusForbidden:
		msg += " (the token may not read this bucket or table)"
	}
	return msg
}

// ErrNotFound is a 404 of the Storage API.
var ErrNotFound = errors.New("not found")

func (e *APIError) Unwrap() error {
	if e.Status == http.StatusNotFound {
		return ErrNotFound
	}
	return nil
}

// client calls the Storage API with the X-StorageApi-Token header. Signed
// file URLs are fetched with download, which never sends the token.
type client struct {
	base  *url.URL
	token string
	http  *http.Client
}

func (c *client) do(ctx context.Context, method, path string, query, form url.Values, out any) error {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawQuery = query.Encode()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	req.Header.Set("X-StorageApi-Token", c.token)
	req.Header.Set("Accept", "application/json")
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	status, data, err := httpclient.Exchange(c.http, req, "keboola "+method+" "+path, 256<<20)
	if err != nil {
		return err
	}
	if status/100 != 2 {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
			Code    string `json:"code"`
		}
		json.Unmarshal(data, &e)
		msg := e.Error
		if msg == "" {
			msg = e.Message
		}
		return &APIError{Method: method, Path: path, Status: status, Message: msg, Code: e.Code}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("keboola %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// errExpired marks a signed URL the file host refused (403): the file
// detail is asked again for fresh URLs.
var errExpired = errors.New("signed URL refused (expired)")

// download opens a signed URL. The Storage token is never sent to the file
// host; a 403 is errExpired.
func (c *client) download(ctx context.Context, rawURL string) (io.ReadCloser, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("keboola: file URL with scheme %q is not supported (only http(s) signed URLs; cloud-native s3:// or gs:// slices need the cloud SDK)", schemeOf(rawURL))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("keboola: download %s: %w", redactURL(u), err)
	}
	switch {
	case resp.StatusCode == http.StatusForbidden:
		resp.Body.Close()
		return nil, errExpired
	case resp.StatusCode/100 != 2:
		resp.Body.Close()
		return nil, fmt.Errorf("keboola: download %s: HTTP %d", redactURL(u), resp.StatusCode)
	}
	return resp.Body, nil
}

func schemeOf(raw string) string {
	if i := strings.Index(raw, "://"); i > 0 {
		return raw[:i]
	}
	return ""
}

// redactURL drops the query of a signed URL (its signature) for messages.
func redactURL(u *url.URL) string {
	c := *u
	c.RawQuery, c.User = "", nil
	return c.String()
}

func (c *client) buckets(ctx context.Context) ([]Bucket, error) {
	var out []Bucket
	err := c.do(ctx, http.MethodGet, "/v2/storage/buckets", nil, nil, &out)
	return out, err
}

func (c *client) tables(ctx context.Context, bucket string) ([]Table, error) {
	var out []Table
	q := url.Values{"include": {"columns,columnMetadata,metadata"}}
	err := c.do(ctx, http.MethodGet, "/v2/storage/buckets/"+url.PathEscape(bucket)+"/tables", q, nil, &out)
	return out, err
}

func (c *client) table(ctx context.Context, id string) (Table, error) {
	var out Table
	err := c.do(ctx, http.MethodGet, "/v2/storage/tables/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// export starts an export of table id (changedSince empty: every row) and
// waits for its job, polling with backoff up to maxPoll between polls. It
// returns the file id and when the job was created by Keboola's clock, or
// the job's error message.
func (c *client) export(ctx context.Context, id, changedSince string, maxPoll time.Duration) (int64, time.Time, error) {
	form := url.Values{"format": {"rfc"}, "gzip": {"1"}}
	if changedSince != "" {
		form.Set("changedSince", changedSince)
	}
	var job Job
	if err := c.do(ctx, http.MethodPost, "/v2/storage/tables/"+url.PathEscape(id)+"/export-async", nil, form, &job); err != nil {
		return 0, time.Time{}, err
	}
	created, cerr := ParseTime(job.CreatedTime)
	wait := min(100*time.Millisecond, maxPoll)
	for {
		switch job.Status {
		case "success":
			if job.Results == nil || job.Results.File == nil {
				return 0, time.Time{}, fmt.Errorf("keboola: export job %d of %s succeeded without a file", job.ID, id)
			}
			if cerr != nil {
				if created, cerr = ParseTime(job.CreatedTime); cerr != nil {
					return 0, time.Time{}, fmt.Errorf("keboola: export job %d of %s has no creation time: %v", job.ID, id, cerr)
				}
			}
			return job.Results.File.ID, created, nil
		case "error":
			msg := "no message"
			if job.Error != nil && job.Error.Message != "" {
				msg = job.Error.Message
			}
			return 0, time.Time{}, fmt.Errorf("keboola: export job %d of %s failed: %s", job.ID, id, msg)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, time.Time{}, ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, maxPoll)
		if err := c.do(ctx, http.MethodGet, "/v2/storage/jobs/"+strconv.FormatInt(job.ID, 10), nil, nil, &job); err != nil {
			return 0, time.Time{}, err
		}
	}
}

func (c *client) file(ctx context.Context, id int64) (File, error) {
	var out File
	err := c.do(ctx, http.MethodGet, "/v2/storage/files/"+strconv.FormatInt(id, 10), url.Values{"federationToken": {"1"}}, nil, &out)
	return out, err
}
