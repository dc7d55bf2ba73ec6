package jira_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/connectortest"
	"github.com/agnes-ai/connector-kit/connectors/connectortest/extracttest"
	"github.com/agnes-ai/connector-kit/connectors/jira"
	"github.com/agnes-ai/connector-kit/connectors/jira/jiratest"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

func column(rec arrow.RecordBatch, name string) arrow.Array {
	return rec.Column(rec.Schema().FieldIndices(name)[0])
}

// oneChange streams body and requires exactly one change.
func oneChange(t *testing.T, c *jira.Connector, body []byte) connectors.Change {
	t.Helper()
	chs, err := c.Stream(context.Background(), body)
	if err != nil || len(chs) != 1 {
		t.Fatalf("stream: %v, %d changes", err, len(chs))
	}
	return chs[0]
}

// TestChangelogOver100Histories: Jira embeds the newest 100 histories,
// newest first, and pages /changelog oldest first; every one of 150
// histories appears exactly once.
func TestChangelogOver100Histories(t *testing.T) {
	srv := jiratest.New("bot@example.com", token)
	defer srv.Close()
	is := jiratest.MakeIssue("OPS-1", 1, t0, t0.Add(time.Hour), 0)
	is.Changelog.Histories = nil
	to := "x"
	for i := range 150 {
		is.Changelog.Histories = append(is.Changelog.Histories, jira.History{ID: fmt.Sprint(1000 + i),
			Created: jira.FormatTime(t0.Add(time.Duration(i) * time.Minute)), Items: []jira.HistoryItem{{Field: "status", ToString: &to}}})
	}
	srv.Put(is, nil)
	c := open(t, srv, token)
	ch := oneChange(t, c, srv.Webhook("jira:issue_updated", "OPS-1", t0))
	defer ch.Release()
	rec := ch.Tables[jira.TableChangelog]
	ids := map[string]int{}
	col := column(rec, "change_id").(*array.String)
	for i := range col.Len() {
		ids[col.Value(i)]++
	}
	if rec.NumRows() != 150 || len(ids) != 150 {
		t.Errorf("changelog has %d rows with %d distinct ids, want 150 and 150", rec.NumRows(), len(ids))
	}
}

// TestFailedRefetchKeeps: a re-fetch answered 401 falls back to the event's
// issue, which carries no comment thread, changelog or remote links: those
// tables are kept (not emptied), and comment_count is unknown.
func TestFailedRefetchKeeps(t *testing.T) {
	srv := fakeWith(1)
	defer srv.Close()
	c := open(t, srv, token)
	is, _ := srv.Get("OPS-1")
	is.Fields.Comment, is.Changelog = nil, nil
	body, _ := json.Marshal(jira.WebhookEvent{Timestamp: t0.UnixMilli(), WebhookEvent: "jira:issue_updated", Issue: &is})
	srv.Fail("/rest/api/3/issue/OPS-1", http.StatusUnauthorized, 100, "")
	ch := oneChange(t, c, body)
	defer ch.Release()
	slices.Sort(ch.Keep)
	want := []string{jira.TableChangelog, jira.TableComments, jira.TableRemoteLinks}
	if !slices.Equal(ch.Keep, want) {
		t.Errorf("keep %v, want %v", ch.Keep, want)
	}
	for _, k := range ch.Keep {
		if ch.Tables[k] != nil {
			t.Errorf("%s is both kept and replaced", k)
		}
	}
	if err := ch.Validate(); err != nil {
		t.Error(err)
	}
	if ch.Tables[jira.TableIssues] == nil || !column(ch.Tables[jira.TableIssues], "comment_count").IsNull(0) {
		t.Error("the issue row must be published with comment_count null")
	}
	if ch.Tables[jira.TableAttachments] == nil {
		t.Error("attachments the event does carry are published")
	}
}

// TestIssueNullWithIssueKey: events with "issue": null and a top-level
// issue_key are fetched by that key; a bad key is still refused.
func TestIssueNullWithIssueKey(t *testing.T) {
	srv := fakeWith(2)
	defer srv.Close()
	c := open(t, srv, token)
	ch := oneChange(t, c, []byte(`{"timestamp":1,"webhookEvent":"comment_created","issue":null,"issue_key":"OPS-2","issue_id":"10002"}`))
	defer ch.Release()
	if ch.Key != "OPS-2" || ch.Tables[jira.TableComments] == nil {
		t.Errorf("change %s with tables %v", ch.Key, ch.Tables)
	}
	if _, err := jira.ParseEvent([]byte(`{"webhookEvent":"comment_created","issue":null,"issue_key":"OPS-2; DROP"}`)); err == nil {
		t.Error("a malformed issue_key was accepted")
	}
}

// TestDefaultJQLIsBounded: with no jql configured the backfill still works
// on a Jira that refuses unbounded searches.
func TestDefaultJQLIsBounded(t *testing.T) {
	srv := fakeWith(3)
	defer srv.Close()
	c := open(t, srv, token)
	n := 0
	for ch, err := range c.Changes(context.Background(), connectors.ReadOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		ch.Release()
	}
	if n != 3 {
		t.Errorf("%d issues, want 3", n)
	}
}

// TestDeleteRefreshesLinkedIssues: deleting an issue removes the link on the
// other issue in Jira without touching it; the delete event refreshes that
// issue, at a version that outranks its published rows.
func TestDeleteRefreshesLinkedIssues(t *testing.T) {
	srv := jiratest.New("bot@example.com", token)
	defer srv.Close()
	a := jiratest.MakeIssue("OPS-1", 1, t0, t0.Add(time.Hour), 0)
	b := jiratest.MakeIssue("OPS-2", 2, t0, t0.Add(time.Hour), 0)
	a.Fields.IssueLinks = []jira.IssueLink{{ID: "9", Type: jira.LinkType{Name: "Blocks", Inward: "is blocked by", Outward: "blocks"},
		OutwardIssue: &jira.LinkedIssue{Key: "OPS-2"}}}
	b.Fields.IssueLinks = []jira.IssueLink{{ID: "9", Type: jira.LinkType{Name: "Blocks", Inward: "is blocked by", Outward: "blocks"},
		InwardIssue: &jira.LinkedIssue{Key: "OPS-1"}}}
	srv.Put(a, nil)
	srv.Put(b, nil)
	c := open(t, srv, token)
	del := srv.Webhook(jira.EventIssueDeleted, "OPS-1", t0.Add(5*time.Hour))
	srv.Delete("OPS-1")
	chs, err := c.Stream(context.Background(), del)
	if err != nil || len(chs) != 2 {
		t.Fatalf("delete gave %d changes, %v; want the delete and OPS-2 refreshed", len(chs), err)
	}
	defer func() {
		for _, ch := range chs {
			ch.Release()
		}
	}()
	if !chs[0].Deleted || chs[0].Key != "OPS-1" {
		t.Errorf("first change %+v", chs[0])
	}
	if chs[1].Key != "OPS-2" || chs[1].Tables[jira.TableIssueLinks] != nil || chs[1].Version < chs[0].Version {
		t.Errorf("OPS-2: links %v, version %d (delete %d); want no link rows and a version at least the delete's",
			chs[1].Tables[jira.TableIssueLinks], chs[1].Version, chs[0].Version)
	}
}

// TestRestrictedComments: a comment restricted to a role or a group is not
// public, says so in visibility columns, and has no body unless the source
// includes restricted comments.
func TestRestrictedComments(t *testing.T) {
	srv := fakeWith(1)
	defer srv.Close()
	is, _ := srv.Get("OPS-1")
	is.Fields.Comment.Comments = []jira.Comment{
		{ID: "1", Body: json.RawMessage(`"open"`), Created: jira.FormatTime(t0)},
		{ID: "2", Body: json.RawMessage(`"admins only"`), Created: jira.FormatTime(t0), Visibility: &jira.Visibility{Type: "role", Value: "Administrators"}},
		{ID: "3", Body: json.RawMessage(`"group only"`), Created: jira.FormatTime(t0), Visibility: &jira.Visibility{Type: "group", Value: "jira-staff"}},
	}
	srv.Put(is, nil)
	for _, include := range []bool{false, true} {
		c, err := jira.New(jira.Options{URL: srv.URL, Email: "bot@example.com", Token: token, IncludeRestricted: include})
		if err != nil {
			t.Fatal(err)
		}
		ch := oneChange(t, c, srv.Webhook("jira:issue_updated", "OPS-1", t0))
		rec := ch.Tables[jira.TableComments]
		public := column(rec, "public").(*array.Boolean)
		body := column(rec, "body").(*array.String)
		vt, vv := column(rec, "visibility_type").(*array.String), column(rec, "visibility_value").(*array.String)
		for i, want := range []struct {
			public     bool
			body, t, v string
		}{{true, "open", "", ""}, {false, "admins only", "role", "Administrators"}, {false, "group only", "group", "jira-staff"}} {
			if public.Value(i) != want.public || vt.Value(i) != want.t || vv.Value(i) != want.v {
				t.Errorf("comment %d: public %v visibility %q %q, want %v %q %q", i+1, public.Value(i), vt.Value(i), vv.Value(i), want.public, want.t, want.v)
			}
			hidden := !want.public && !include
			if body.IsNull(i) != hidden || (!hidden && body.Value(i) != want.body) {
				t.Errorf("include=%v comment %d: body null=%v %q", include, i+1, body.IsNull(i), body.Value(i))
			}
		}
		ch.Release()
	}
}

// TestADFDocumentText: an empty document is the empty string, not null, and
// inline nodes render as the text they show.
func TestADFDocumentText(t *testing.T) {
	cases := map[string]string{
		`{"type":"doc","version":1,"content":[]}`: "",
		`{"type":"doc","content":[{"type":"paragraph","content":[{"type":"text","text":"due "},{"type":"date","attrs":{"timestamp":"1700000000000"}}]}]}`:                                                     "due 2023-11-14",
		`{"type":"doc","content":[{"type":"paragraph","content":[{"type":"status","attrs":{"text":"IN REVIEW","color":"blue"}}]}]}`:                                                                           "IN REVIEW",
		`{"type":"doc","content":[{"type":"paragraph","content":[{"type":"mention","attrs":{"id":"5b10ac8d82e05b22cc7d4ef5"}}]}]}`:                                                                            "@5b10ac8d82e05b22cc7d4ef5",
		`{"type":"doc","content":[{"type":"paragraph","content":[{"type":"emoji","attrs":{"shortName":":grinning:","text":"😀"}}]}]}`:                                                                          "😀",
		`{"type":"doc","content":[{"type":"paragraph","content":[{"type":"inlineCard","attrs":{"url":"https://example.com/x"}}]}]}`:                                                                           "https://example.com/x",
		`{"type":"doc","content":[{"type":"mediaSingle","content":[{"type":"media","attrs":{"id":"1","type":"file","alt":"diagram.png"}}]},{"type":"paragraph","content":[{"type":"text","text":"after"}]}]}`: "diagram.png\nafter",
	}
	for doc, want := range cases {
		if got := jira.ADFText([]byte(doc)); got != want {
			t.Errorf("ADFText(%s) = %q, want %q", doc, got, want)
		}
	}
	// The issue row keeps the empty description as "", an absent one as null.
	srv := fakeWith(2)
	defer srv.Close()
	is, _ := srv.Get("OPS-1")
	is.Fields.Description = json.RawMessage(`{"type":"doc","version":1,"content":[]}`)
	srv.Put(is, nil)
	is2, _ := srv.Get("OPS-2")
	is2.Fields.Description = nil
	srv.Put(is2, nil)
	c := open(t, srv, token)
	for key, null := range map[string]bool{"OPS-1": false, "OPS-2": true} {
		ch := oneChange(t, c, srv.Webhook("jira:issue_updated", key, t0))
		d := column(ch.Tables[jira.TableIssues], "description").(*array.String)
		if d.IsNull(0) != null || d.Value(0) != "" {
			t.Errorf("%s: description null=%v %q, want null=%v and empty", key, d.IsNull(0), d.Value(0), null)
		}
		ch.Release()
	}
}

// TestContractWithShippedSampleEvent: the contract suite passes with the
// sample event the connector ships, as "da connector test jira" runs it.
func TestContractWithShippedSampleEvent(t *testing.T) {
	srv := fakeWith(3)
	defer srv.Close()
	t.Setenv("JIRA_API_TOKEN", token)
	r := connectors.NewRegistry()
	jira.Register(r)
	reg, err := r.Lookup("jira")
	if err != nil {
		t.Fatal(err)
	}
	if len(reg.SampleEvent) == 0 {
		t.Fatal("jira ships no sample event")
	}
	extracttest.Run(t, connectortest.Suite{
		Registration: reg,
		Config:       map[string]any{"url": srv.URL, "email": "bot@example.com"},
		Secrets:      []string{token},
	})
}

// TestIncrementalReadsOnlyTheCursorMinute: the cursor is written in the API
// user's time zone (GET /myself), so an incremental read of an unchanged
// Jira fetches only the issues of the cursor's minute, and a later change is
// found.
func TestIncrementalReadsOnlyTheCursorMinute(t *testing.T) {
	srv := jiratest.New("bot@example.com", token)
	defer srv.Close()
	srv.TimeZone = "America/St_Johns" // -03:30: a bound written in UTC would read 3.5 hours too late
	for i := range 20 {
		srv.Put(jiratest.MakeIssue(fmt.Sprintf("OPS-%d", i+1), i+1, t0, t0.Add(time.Duration(i)*30*time.Minute), 0), nil)
	}
	c := open(t, srv, token)
	cursor := jira.FormatTime(t0.Add(19 * 30 * time.Minute))
	since, _ := jira.ParseTime(cursor)
	read := func() []string {
		var keys []string
		for ch, err := range c.Changes(context.Background(), connectors.ReadOptions{IncrementalValue: since.Format(time.RFC3339Nano)}) {
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, ch.Key)
			ch.Release()
		}
		return keys
	}
	before := srv.Requests("/rest/api/3/issue/")
	if got := read(); !slices.Equal(got, []string{"OPS-20"}) {
		t.Errorf("unchanged Jira: read %v, want only the cursor's issue OPS-20", got)
	}
	if n := srv.Requests("/rest/api/3/issue/") - before; n > 2 {
		t.Errorf("%d issue requests, want the cursor issue's 2", n)
	}
	is, _ := srv.Get("OPS-5")
	is.Fields.Updated = jira.FormatTime(since.Add(time.Minute))
	srv.Put(is, nil)
	if got := read(); !slices.Contains(got, "OPS-5") {
		t.Errorf("a change a minute after the cursor was not read: %v", got)
	}
}

// TestCheck: the health check reads no issue, passes with good credentials
// and names the 401 with bad ones.
func TestCheck(t *testing.T) {
	srv := fakeWith(1)
	defer srv.Close()
	before := srv.Requests("/rest/api/3/issue")
	if err := open(t, srv, token).Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if srv.Requests("/rest/api/3/issue") != before {
		t.Error("the check read issues")
	}
	err := open(t, srv, "rotated").Check(context.Background())
	var apiErr *jira.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Errorf("got %v, want a 401", err)
	}
}
