package jira

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The types below are the parts of Jira Cloud REST v3 JSON the connector
// reads; the fake server in jiratest renders the same types.

// User is a Jira user reference.
type User struct {
	AccountID    string `json:"accountId,omitempty"`
	EmailAddress string `json:"emailAddress,omitempty"`
	DisplayName  string `json:"displayName,omitempty"`
}

// Named is any {"name": ...} reference (issue type, priority, resolution).
type Named struct {
	Name string `json:"name"`
}

// Status is an issue status with its category.
type Status struct {
	Name           string `json:"name"`
	StatusCategory *Named `json:"statusCategory,omitempty"`
}

// Project is the issue's project.
type Project struct {
	Key  string `json:"key"`
	Name string `json:"name"`
}

// Comment is one issue comment; Body is an Atlassian Document Format node.
type Comment struct {
	ID        string          `json:"id"`
	Author    *User           `json:"author,omitempty"`
	Body      json.RawMessage `json:"body,omitempty"`
	Created   string          `json:"created"`
	Updated   string          `json:"updated,omitempty"`
	JSDPublic *bool           `json:"jsdPublic,omitempty"`
	// Visibility restricts the comment to a project role or a group.
	Visibility *Visibility `json:"visibility,omitempty"`
}

// Visibility is a comment's restriction: {"type": "role"|"group", "value": ...}.
type Visibility struct {
	Type       string `json:"type"`
	Value      string `json:"value"`
	Identifier string `json:"identifier,omitempty"`
}

// Public reports whether everyone who can see the issue can see the
// comment: no role or group restriction, and not a Service Management
// internal note.
func (c Comment) Public() bool {
	return c.Visibility == nil && (c.JSDPublic == nil || *c.JSDPublic)
}

// CommentPage is a page of comments (the issue's comment field, or
// GET /issue/{key}/comment).
type CommentPage struct {
	StartAt    int       `json:"startAt"`
	MaxResults int       `json:"maxResults"`
	Total      int       `json:"total"`
	Comments   []Comment `json:"comments"`
}

// HistoryItem is one changed field of a history entry.
type HistoryItem struct {
	Field      string  `json:"field"`
	FromString *string `json:"fromString"`
	ToString   *string `json:"toString"`
}

// History is one changelog entry.
type History struct {
	ID      string        `json:"id"`
	Author  *User         `json:"author,omitempty"`
	Created string        `json:"created"`
	Items   []HistoryItem `json:"items"`
}

// Changelog is the first page of history, embedded by expand=changelog.
type Changelog struct {
	StartAt    int       `json:"startAt"`
	MaxResults int       `json:"maxResults"`
	Total      int       `json:"total"`
	Histories  []History `json:"histories"`
}

// ChangelogPage is GET /issue/{key}/changelog.
type ChangelogPage struct {
	StartAt    int       `json:"startAt"`
	MaxResults int       `json:"maxResults"`
	Total      int       `json:"total"`
	IsLast     bool      `json:"isLast"`
	Values     []History `json:"values"`
}

// Attachment is an attachment's metadata.
type Attachment struct {
	ID       string `json:"id"`
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
	MimeType string `json:"mimeType"`
	Author   *User  `json:"author,omitempty"`
	Created  string `json:"created"`
	Content  string `json:"content"`
}

// LinkType names a link and its two directions.
type LinkType struct {
	Name    string `json:"name"`
	Inward  string `json:"inward"`
	Outward string `json:"outward"`
}

// LinkedIssue is the other end of an issue link.
type LinkedIssue struct {
	Key    string `json:"key"`
	Fields struct {
		Summary  string  `json:"summary"`
		Status   *Status `json:"status,omitempty"`
		Priority *Named  `json:"priority,omitempty"`
	} `json:"fields"`
}

// IssueLink links the issue to another, in one direction.
type IssueLink struct {
	ID           string       `json:"id"`
	Type         LinkType     `json:"type"`
	InwardIssue  *LinkedIssue `json:"inwardIssue,omitempty"`
	OutwardIssue *LinkedIssue `json:"outwardIssue,omitempty"`
}

// RemoteLink is one entry of GET /issue/{key}/remotelink.
type RemoteLink struct {
	ID          int64  `json:"id"`
	Self        string `json:"self,omitempty"`
	Application *struct {
		Type string `json:"type"`
		Name string `json:"name"`
	} `json:"application,omitempty"`
	Object struct {
		URL   string `json:"url"`
		Title string `json:"title"`
	} `json:"object"`
}

// Fields are the issue fields the connector reads.
type Fields struct {
	Summary        string          `json:"summary"`
	Description    json.RawMessage `json:"description,omitempty"`
	IssueType      *Named          `json:"issuetype,omitempty"`
	Status         *Status         `json:"status,omitempty"`
	Priority       *Named          `json:"priority,omitempty"`
	Resolution     *Named          `json:"resolution,omitempty"`
	Project        *Project        `json:"project,omitempty"`
	Creator        *User           `json:"creator,omitempty"`
	Reporter       *User           `json:"reporter,omitempty"`
	Assignee       *User           `json:"assignee,omitempty"`
	Created        string          `json:"created"`
	Updated        string          `json:"updated"`
	ResolutionDate *string         `json:"resolutiondate,omitempty"`
	DueDate        *string         `json:"duedate,omitempty"`
	Labels         []string        `json:"labels,omitempty"`
	Attachment     []Attachment    `json:"attachment,omitempty"`
	Comment        *CommentPage    `json:"comment,omitempty"`
	IssueLinks     []IssueLink     `json:"issuelinks,omitempty"`
}

// Issue is GET /rest/api/3/issue/{key}?expand=renderedFields,changelog (and
// the issue object of a webhook and of a search result).
type Issue struct {
	ID        string     `json:"id"`
	Key       string     `json:"key"`
	Self      string     `json:"self,omitempty"`
	Fields    Fields     `json:"fields"`
	Changelog *Changelog `json:"changelog,omitempty"`
}

// SearchRequest is the body of POST /rest/api/3/search/jql.
type SearchRequest struct {
	JQL           string   `json:"jql"`
	NextPageToken string   `json:"nextPageToken,omitempty"`
	MaxResults    int      `json:"maxResults,omitempty"`
	Fields        []string `json:"fields,omitempty"`
}

// SearchResponse is its answer; the last page has no nextPageToken.
type SearchResponse struct {
	Issues        []Issue `json:"issues"`
	NextPageToken string  `json:"nextPageToken,omitempty"`
	IsLast        bool    `json:"isLast"`
}

// WebhookEvent is a Jira webhook body. Some events (comment and worklog
// events of some sites) carry "issue": null and name the issue by a
// top-level issue_key (and issue_id) instead.
type WebhookEvent struct {
	Timestamp    int64  `json:"timestamp"`
	WebhookEvent string `json:"webhookEvent"`
	Issue        *Issue `json:"issue,omitempty"`
	IssueKey     string `json:"issue_key,omitempty"`
	IssueID      string `json:"issue_id,omitempty"`
}

// Webhook event names with a special meaning.
const EventIssueDeleted = "jira:issue_deleted"

// IssueKeyRE is what an issue key looks like.
var IssueKeyRE = regexp.MustCompile(`^[A-Z][A-Z0-9]{0,31}-[0-9]{1,12}$`)

// TimeLayout is how Jira writes timestamps: 2024-01-15T10:30:00.000+0000.
const TimeLayout = "2006-01-02T15:04:05.000-0700"

// ParseTime parses a Jira timestamp (also RFC 3339).
func ParseTime(s string) (time.Time, error) {
	for _, l := range []string{TimeLayout, time.RFC3339Nano, "2006-01-02T15:04:05-0700"} {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("bad Jira timestamp %q", s)
}

// FormatTime writes t the way Jira does.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeLayout) }

// ParseEvent decodes and checks a webhook body: a JSON object naming an
// event and an issue whose key looks like a Jira key.
func ParseEvent(body []byte) (WebhookEvent, error) {
	var ev WebhookEvent
	if len(strings.TrimSpace(string(body))) == 0 {
		return ev, fmt.Errorf("empty body")
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		return ev, fmt.Errorf("body is not a Jira webhook JSON object: %v", err)
	}
	if ev.WebhookEvent == "" {
		return ev, fmt.Errorf("body has no webhookEvent")
	}
	if ev.Issue == nil && ev.IssueKey != "" {
		// Only the key is known: the issue is fetched from Jira.
		ev.Issue = &Issue{Key: ev.IssueKey, ID: ev.IssueID}
	}
	if ev.Issue == nil {
		return ev, fmt.Errorf("event %s carries no issue and no issue_key", ev.WebhookEvent)
	}
	if !IssueKeyRE.MatchString(ev.Issue.Key) {
		return ev, fmt.Errorf("issue key %q does not match %s", truncate(ev.Issue.Key, 80), IssueKeyRE)
	}
	return ev, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// ADFPresent reports whether a document field holds a document (possibly
// empty), as opposed to being absent or null.
func ADFPresent(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}

// ADFText turns an Atlassian Document Format node into plain text: text
// nodes joined, blocks separated by newlines, inline nodes (date, status,
// mention, emoji, cards, media) rendered as the text they show. A JSON
// string (API v2) is returned as it is.
func ADFText(raw json.RawMessage) string {
	if !ADFPresent(raw) {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n adfNode
	if json.Unmarshal(raw, &n) != nil {
		return ""
	}
	var b strings.Builder
	n.write(&b)
	return strings.TrimRight(b.String(), "\n")
}

// attrString reads a string attribute (numbers are formatted, so a
// timestamp sent as a JSON number still reads).
func attrString(attrs map[string]any, k string) string {
	switch v := attrs[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return ""
}

type adfNode struct {
	Type    string         `json:"type"`
	Text    string         `json:"text"`
	Attrs   map[string]any `json:"attrs"`
	Content []adfNode      `json:"content"`
}

func (n adfNode) write(b *strings.Builder) {
	switch n.Type {
	case "text":
		b.WriteString(n.Text)
		return
	case "hardBreak":
		b.WriteByte('\n')
		return
	case "date":
		// attrs.timestamp: milliseconds since the epoch, as a string (UTC day).
		if ms, err := strconv.ParseInt(attrString(n.Attrs, "timestamp"), 10, 64); err == nil {
			b.WriteString(time.UnixMilli(ms).UTC().Format("2006-01-02"))
		}
		return
	case "status":
		b.WriteString(attrString(n.Attrs, "text"))
		return
	case "mention":
		if t := attrString(n.Attrs, "text"); t != "" {
			b.WriteString(t)
		} else if id := attrString(n.Attrs, "id"); id != "" {
			b.WriteString("@" + id)
		}
		return
	case "emoji":
		if t := attrString(n.Attrs, "text"); t != "" {
			b.WriteString(t)
		} else {
			b.WriteString(attrString(n.Attrs, "shortName"))
		}
		return
	case "inlineCard", "blockCard", "embedCard":
		b.WriteString(attrString(n.Attrs, "url"))
		return
	case "media", "mediaInline":
		if alt := attrString(n.Attrs, "alt"); alt != "" {
			b.WriteString(alt)
		} else {
			b.WriteString("[attachment]")
		}
		return
	case "placeholder":
		return // editor hint text, not content
	}
	for _, c := range n.Content {
		c.write(b)
	}
	switch n.Type {
	case "paragraph", "heading", "codeBlock", "blockquote", "rule", "listItem", "tableRow", "panel",
		"taskItem", "decisionItem", "mediaSingle", "mediaGroup", "expand", "nestedExpand":
		if s := b.String(); s != "" && !strings.HasSuffix(s, "\n") {
			b.WriteByte('\n')
		}
	case "tableCell", "tableHeader":
		b.WriteByte('\t')
	}
}
