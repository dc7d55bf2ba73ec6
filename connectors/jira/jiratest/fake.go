// Package jiratest is a fake Jira Cloud server for tests. It speaks the REST
// v3 shapes the connector uses: POST /rest/api/3/search/jql paged by
// nextPageToken (refusing unbounded JQL, reading JQL dates in the API user's
// time zone), GET /rest/api/3/issue/{key} with the newest histories of the
// changelog (newest first, as Jira embeds them) and the first comment page,
// comment paging, changelog paging (oldest first), remote links,
// GET /rest/api/3/myself, basic auth (401), 404 for unknown issues, deletes
// that remove the links other issues had to the deleted one (without
// changing them), and injected 429 (with Retry-After) and 5xx answers.
package jiratest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/jira"
)

// Server is a fake Jira.
type Server struct {
	*httptest.Server
	Email, Token string
	// CommentPage and ChangelogPage are the page sizes of embedded comments
	// and histories (small values force the connector to page).
	CommentPage, ChangelogPage int
	// TimeZone is the API user's zone (GET /myself); JQL dates are read in it.
	TimeZone string
	// MaxSearchPage caps maxResults of a search.
	MaxSearchPage int
	// IssueDelay slows every issue GET down (a slow Jira).
	IssueDelay time.Duration
	// BeforeIssue and AfterIssue, when set, run around every issue GET
	// (before the issue is read, after the answer is written), outside the
	// server's lock: tests change Jira exactly between a backfill's search
	// and its fetch of an issue, or right after it.
	BeforeIssue, AfterIssue func(key string)

	mu       sync.Mutex
	issues   map[string]*jira.Issue
	remote   map[string][]jira.RemoteLink
	faults   []fault
	requests map[string]int
}

type fault struct {
	prefix     string
	status     int
	retryAfter string
	left       int
}

// New starts a fake Jira with basic-auth credentials email and token.
func New(email, token string) *Server {
	s := &Server{Email: email, Token: token, CommentPage: 5, ChangelogPage: 100, MaxSearchPage: 100, TimeZone: "UTC",
		issues: map[string]*jira.Issue{}, remote: map[string][]jira.RemoteLink{}, requests: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Put stores (or replaces) an issue with its remote links.
func (s *Server) Put(is jira.Issue, remote []jira.RemoteLink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := is
	s.issues[is.Key] = &c
	s.remote[is.Key] = remote
}

// Get returns a copy of a stored issue.
func (s *Server) Get(key string) (jira.Issue, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	is, ok := s.issues[key]
	if !ok {
		return jira.Issue{}, false
	}
	return *is, true
}

// Delete removes an issue. As Jira does, the links other issues had to it
// go too, without changing those issues' updated time (and no webhook tells
// of them).
func (s *Server) Delete(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.issues, key)
	delete(s.remote, key)
	for k, is := range s.issues {
		kept := slices.DeleteFunc(slices.Clone(is.Fields.IssueLinks), func(l jira.IssueLink) bool {
			return (l.OutwardIssue != nil && l.OutwardIssue.Key == key) || (l.InwardIssue != nil && l.InwardIssue.Key == key)
		})
		if len(kept) != len(is.Fields.IssueLinks) {
			c := *is
			c.Fields.IssueLinks = kept
			s.issues[k] = &c
		}
	}
}

// Fail makes the next n requests whose path starts with prefix answer
// status, with a Retry-After header when retryAfter is set.
func (s *Server) Fail(prefix string, status, n int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{prefix: prefix, status: status, retryAfter: retryAfter, left: n})
}

// Requests counts the requests served (after auth) whose path starts with prefix.
func (s *Server) Requests(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, c := range s.requests {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func jiraError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"errorMessages": []string{msg}, "errors": map[string]string{}})
}

var issuePath = regexp.MustCompile(`^/rest/api/3/issue/([^/]+)(/comment|/changelog|/remotelink)?$`)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	email, token, ok := r.BasicAuth()
	if !ok || email != s.Email || token != s.Token {
		jiraError(w, http.StatusUnauthorized, "Client must be authenticated to access this resource.")
		return
	}
	if s.fault(w, r) {
		return
	}
	if r.URL.Path == "/rest/api/3/search/jql" && r.Method == http.MethodPost {
		s.search(w, r)
		return
	}
	if r.URL.Path == "/rest/api/3/myself" && r.Method == http.MethodGet {
		writeJSON(w, http.StatusOK, jira.Myself{AccountID: "u-api", EmailAddress: s.Email, TimeZone: s.TimeZone})
		return
	}
	m := issuePath.FindStringSubmatch(r.URL.Path)
	if m == nil || r.Method != http.MethodGet {
		jiraError(w, http.StatusNotFound, "No such resource")
		return
	}
	if m[2] == "" && s.IssueDelay > 0 {
		select {
		case <-time.After(s.IssueDelay):
		case <-r.Context().Done():
			return
		}
	}
	if m[2] == "" && s.BeforeIssue != nil {
		s.BeforeIssue(m[1])
	}
	if m[2] == "" && s.AfterIssue != nil {
		defer s.AfterIssue(m[1])
	}
	s.mu.Lock()
	is, ok := s.issues[m[1]]
	var c jira.Issue
	if ok {
		c = *is
	}
	remote := s.remote[m[1]]
	s.mu.Unlock()
	if !ok {
		jiraError(w, http.StatusNotFound, "Issue does not exist or you do not have permission to see it.")
		return
	}
	s.issueResource(w, r, m[2], c, remote)
}

// fault counts the request and answers it with the next injected fault
// for its path, if any.
func (s *Server) fault(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	s.requests[r.URL.Path]++
	for i := range s.faults {
		f := &s.faults[i]
		if f.left > 0 && strings.HasPrefix(r.URL.Path, f.prefix) {
			f.left--
			s.mu.Unlock()
			if f.retryAfter != "" {
				w.Header().Set("Retry-After", f.retryAfter)
			}
			jiraError(w, f.status, http.StatusText(f.status))
			return true
		}
	}
	s.mu.Unlock()
	return false
}

// issueResource answers GET /issue/{key} and its paged sub-resources.
func (s *Server) issueResource(w http.ResponseWriter, r *http.Request, sub string, c jira.Issue, remote []jira.RemoteLink) {
	startAt, _ := strconv.Atoi(r.URL.Query().Get("startAt"))
	maxResults, _ := strconv.Atoi(r.URL.Query().Get("maxResults"))
	if maxResults <= 0 || maxResults > 100 {
		maxResults = 50
	}
	switch sub {
	case "":
		writeJSON(w, http.StatusOK, s.render(c))
	case "/comment":
		var all []jira.Comment
		if c.Fields.Comment != nil {
			all = c.Fields.Comment.Comments
		}
		writeJSON(w, http.StatusOK, jira.CommentPage{StartAt: startAt, MaxResults: maxResults, Total: len(all), Comments: page(all, startAt, maxResults)})
	case "/changelog":
		var all []jira.History
		if c.Changelog != nil {
			all = c.Changelog.Histories
		}
		vals := page(all, startAt, maxResults)
		writeJSON(w, http.StatusOK, jira.ChangelogPage{StartAt: startAt, MaxResults: maxResults, Total: len(all),
			IsLast: startAt+len(vals) >= len(all), Values: vals})
	case "/remotelink":
		if remote == nil {
			remote = []jira.RemoteLink{}
		}
		writeJSON(w, http.StatusOK, remote)
	}
}

func page[T any](all []T, start, n int) []T {
	if start >= len(all) {
		return []T{}
	}
	return all[start:min(start+n, len(all))]
}

// render is the issue GET answer: the first page of comments and histories.
func (s *Server) render(is jira.Issue) jira.Issue {
	if is.Fields.Comment != nil {
		all := is.Fields.Comment.Comments
		is.Fields.Comment = &jira.CommentPage{StartAt: 0, MaxResults: s.CommentPage, Total: len(all), Comments: page(all, 0, s.CommentPage)}
	} else {
		is.Fields.Comment = &jira.CommentPage{Comments: []jira.Comment{}}
	}
	if is.Changelog != nil {
		// Jira embeds the newest histories, newest first.
		all := is.Changelog.Histories
		newest := slices.Clone(all[max(0, len(all)-s.ChangelogPage):])
		slices.Reverse(newest)
		is.Changelog = &jira.Changelog{StartAt: 0, MaxResults: s.ChangelogPage, Total: len(all), Histories: newest}
	}
	is.Self = s.URL + "/rest/api/3/issue/" + is.ID
	return is
}

var (
	updatedSince = regexp.MustCompile(`updated >= "([0-9/: ]+)"`)
	orderBy      = regexp.MustCompile(`(?i)\s*ORDER BY .*$`)
)

// search supports the JQL the connector writes: optional
// `updated >= "yyyy/MM/dd HH:mm"` clauses (in the user's TimeZone; the
// latest bound wins), ORDER BY updated ASC. A query with no restriction is
// refused, as Jira Cloud refuses it. Timestamps of one format compare as text.
func (s *Server) search(w http.ResponseWriter, r *http.Request) {
	var req jira.SearchRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		jiraError(w, http.StatusBadRequest, "Invalid request payload: "+err.Error())
		return
	}
	if strings.TrimSpace(orderBy.ReplaceAllString(req.JQL, "")) == "" {
		jiraError(w, http.StatusBadRequest, "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.")
		return
	}
	loc, err := time.LoadLocation(s.TimeZone)
	if err != nil {
		loc = time.UTC
	}
	var since time.Time
	for _, m := range updatedSince.FindAllStringSubmatch(req.JQL, -1) {
		t, err := time.ParseInLocation("2006/01/02 15:04", m[1], loc)
		if err != nil {
			jiraError(w, http.StatusBadRequest, "Error in the JQL Query: "+err.Error())
			return
		}
		if t.After(since) {
			since = t
		}
	}
	s.mu.Lock()
	var list []*jira.Issue
	for _, is := range s.issues {
		u, _ := jira.ParseTime(is.Fields.Updated)
		if !u.Before(since) {
			list = append(list, is)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(list, func(a, b *jira.Issue) int {
		if c := strings.Compare(a.Fields.Updated, b.Fields.Updated); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	// The token is a keyset position (the last issue's sort key), as Jira's
	// enhanced search pages: an issue updated during paging moves behind the
	// position and is returned again later, none is skipped.
	if req.NextPageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(req.NextPageToken)
		after, key, ok := strings.Cut(string(b), "|")
		if err != nil || !ok {
			jiraError(w, http.StatusBadRequest, "Invalid nextPageToken")
			return
		}
		i := 0
		for i < len(list) && (list[i].Fields.Updated < after || (list[i].Fields.Updated == after && list[i].Key <= key)) {
			i++
		}
		list = list[i:]
	}
	n := req.MaxResults
	if n <= 0 || n > s.MaxSearchPage {
		n = min(50, s.MaxSearchPage)
	}
	out := jira.SearchResponse{Issues: []jira.Issue{}}
	for _, is := range page(list, 0, n) {
		out.Issues = append(out.Issues, jira.Issue{ID: is.ID, Key: is.Key, Fields: jira.Fields{Updated: is.Fields.Updated}})
	}
	if n < len(list) {
		last := list[n-1]
		out.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(last.Fields.Updated + "|" + last.Key))
	} else {
		out.IsLast = true
	}
	writeJSON(w, http.StatusOK, out)
}

// Sign is the X-Hub-Signature-256 value of body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Webhook is a webhook body for the issue as stored, or for a bare issue
// reference when the server no longer has it.
func (s *Server) Webhook(event, key string, at time.Time) []byte {
	is, ok := s.Get(key)
	if !ok {
		is = jira.Issue{Key: key}
	}
	b, err := json.Marshal(jira.WebhookEvent{Timestamp: at.UnixMilli(), WebhookEvent: event, Issue: &is})
	if err != nil {
		panic(err)
	}
	return b
}

// MakeIssue builds a realistic issue: n comments, a changelog of two
// histories, an attachment, a link; created and updated as given.
func MakeIssue(key string, id int, created, updated time.Time, comments int) jira.Issue {
	user := &jira.User{AccountID: "u1", EmailAddress: "ada@example.com", DisplayName: "Ada Lovelace"}
	adf := func(text string) json.RawMessage {
		b, _ := json.Marshal(map[string]any{"type": "doc", "version": 1, "content": []any{
			map[string]any{"type": "paragraph", "content": []any{map[string]any{"type": "text", "text": text}}}}})
		return b
	}
	is := jira.Issue{ID: strconv.Itoa(id), Key: key, Fields: jira.Fields{
		Summary: "Summary of " + key, Description: adf("Description of " + key),
		IssueType: &jira.Named{Name: "Task"}, Status: &jira.Status{Name: "In Progress", StatusCategory: &jira.Named{Name: "In Progress"}},
		Priority: &jira.Named{Name: "Medium"}, Project: &jira.Project{Key: strings.Split(key, "-")[0], Name: "Project " + strings.Split(key, "-")[0]},
		Creator: user, Reporter: user, Assignee: &jira.User{AccountID: "u2", EmailAddress: "alan@example.com", DisplayName: "Alan Turing"},
		Created: jira.FormatTime(created), Updated: jira.FormatTime(updated), Labels: []string{"backend", "urgent"},
		Attachment: []jira.Attachment{{ID: fmt.Sprintf("%d01", id), Filename: "log.txt", Size: 1234, MimeType: "text/plain", Author: user,
			Created: jira.FormatTime(created), Content: "https://jira.example/attachment/content/" + strconv.Itoa(id)}},
		IssueLinks: []jira.IssueLink{{ID: fmt.Sprintf("%d02", id), Type: jira.LinkType{Name: "Blocks", Inward: "is blocked by", Outward: "blocks"},
			OutwardIssue: &jira.LinkedIssue{Key: "OTHER-1"}}},
		Comment: &jira.CommentPage{},
	}}
	for i := range comments {
		is.Fields.Comment.Comments = append(is.Fields.Comment.Comments, jira.Comment{ID: fmt.Sprintf("%d%03d", id, i), Author: user,
			Body: adf(fmt.Sprintf("comment %d on %s", i, key)), Created: jira.FormatTime(created.Add(time.Duration(i) * time.Minute)),
			Updated: jira.FormatTime(created.Add(time.Duration(i) * time.Minute))})
	}
	from, to := "To Do", "In Progress"
	is.Changelog = &jira.Changelog{Histories: []jira.History{
		{ID: fmt.Sprintf("%d1", id), Author: user, Created: jira.FormatTime(created.Add(time.Hour)), Items: []jira.HistoryItem{{Field: "status", FromString: &from, ToString: &to}}},
		{ID: fmt.Sprintf("%d2", id), Author: user, Created: jira.FormatTime(updated), Items: []jira.HistoryItem{{Field: "labels", ToString: &to}, {Field: "priority", FromString: &from}}},
	}}
	return is
}
