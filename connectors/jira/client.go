package jira

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

	"github.com/agnes-ai/connector-kit/connectors/httpclient"
)

// ErrNotFound is a 404 from Jira: the issue does not exist or the user may
// not see it.
var ErrNotFound = errors.New("not found")

// APIError is a non-2xx answer from Jira, with its error messages. It never
// holds credentials.
type APIError struct {
	Method, Path string
	Status       int
	Messages     []string
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("jira %s %s: HTTP %d", e.Method, e.Path, e.Status)
	if len(e.Messages) > 0 {
		msg += ": " + strings.Join(e.Messages, "; ")
	}
	switch e.Status {
	case http.StatusUnauthorized:
		msg += " (check config.email and the API token in the token_env variable)"
	case http.StatusForbidden:
		msg += " (the user lacks permission)"
	}
	return msg
}

func (e *APIError) Unwrap() error {
	if e.Status == http.StatusNotFound {
		return ErrNotFound
	}
	return nil
}

// client calls Jira Cloud REST v3 with basic auth through the SDK's
// retrying HTTP client (429 and 5xx retried with backoff, Retry-After
// honoured).
type client struct {
	base  *url.URL
	email string
	token string
	http  *http.Client
}

func (c *client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		payload, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	req.SetBasicAuth(c.email, c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// The path has no secret in it.
	status, data, err := httpclient.Exchange(c.http, req, "jira "+method+" "+path, 64<<20)
	if err != nil {
		return err
	}
	if status/100 != 2 {
		return &APIError{Method: method, Path: path, Status: status, Messages: errorMessages(data)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("jira %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// errorMessages extracts Jira's {"errorMessages": [...], "errors": {...}}.
func errorMessages(data []byte) []string {
	var e struct {
		ErrorMessages []string          `json:"errorMessages"`
		Errors        map[string]string `json:"errors"`
	}
	if json.Unmarshal(data, &e) != nil {
		return nil
	}
	out := e.ErrorMessages
	for k, v := range e.Errors {
		out = append(out, k+": "+v)
	}
	return out
}

// getIssue fetches one issue with its changelog, every comment, every
// changelog entry and its remote links.
func (c *client) getIssue(ctx context.Context, key string) (*Issue, []RemoteLink, error) {
	var is Issue
	esc := "/rest/api/3/issue/" + url.PathEscape(key)
	if err := c.do(ctx, http.MethodGet, esc, url.Values{"expand": {"renderedFields,changelog"}}, nil, &is); err != nil {
		return nil, nil, err
	}
	if cp := is.Fields.Comment; cp != nil && len(cp.Comments) < cp.Total {
		all := cp.Comments
		for len(all) < cp.Total {
			var page CommentPage
			q := url.Values{"startAt": {strconv.Itoa(len(all))}, "maxResults": {"100"}}
			if err := c.do(ctx, http.MethodGet, esc+"/comment", q, nil, &page); err != nil {
				return nil, nil, err
			}
			if len(page.Comments) == 0 {
				break
			}
			all = append(all, page.Comments...)
			cp.Total = page.Total
		}
		cp.Comments = all
	}
	if cl := is.Changelog; cl != nil && len(cl.Histories) < cl.Total {
		// The embedded page holds the newest histories, newest first; the
		// changelog endpoint pages oldest first. Page it from the start and
		// keep each history once, by id.
		all, err := c.changelog(ctx, esc)
		if err != nil {
			return nil, nil, err
		}
		seen := map[string]bool{}
		merged := make([]History, 0, len(all)+len(cl.Histories))
		for _, h := range append(all, cl.Histories...) {
			if !seen[h.ID] {
				seen[h.ID] = true
				merged = append(merged, h)
			}
		}
		cl.Histories, cl.Total = merged, len(merged)
	}
	var links []RemoteLink
	if err := c.do(ctx, http.MethodGet, esc+"/remotelink", nil, nil, &links); err != nil {
		return nil, nil, err
	}
	return &is, links, nil
}

// changelog pages GET /issue/{key}/changelog from the start.
func (c *client) changelog(ctx context.Context, esc string) ([]History, error) {
	var all []History
	for {
		var page ChangelogPage
		q := url.Values{"startAt": {strconv.Itoa(len(all))}, "maxResults": {"100"}}
		if err := c.do(ctx, http.MethodGet, esc+"/changelog", q, nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Values...)
		if len(page.Values) == 0 || page.IsLast || len(all) >= page.Total {
			return all, nil
		}
	}
}

// Myself is the part of GET /rest/api/3/myself the connector reads.
type Myself struct {
	AccountID    string `json:"accountId"`
	EmailAddress string `json:"emailAddress,omitempty"`
	TimeZone     string `json:"timeZone"`
}

// myself returns the API user, whose time zone JQL dates are read in.
func (c *client) myself(ctx context.Context) (Myself, error) {
	var m Myself
	err := c.do(ctx, http.MethodGet, "/rest/api/3/myself", nil, nil, &m)
	return m, err
}

// search returns one page of issue keys matching jql.
func (c *client) search(ctx context.Context, jql, token string, pageSize int) (SearchResponse, error) {
	var out SearchResponse
	req := SearchRequest{JQL: jql, NextPageToken: token, MaxResults: pageSize, Fields: []string{"updated"}}
	err := c.do(ctx, http.MethodPost, "/rest/api/3/search/jql", nil, req, &out)
	return out, err
}
