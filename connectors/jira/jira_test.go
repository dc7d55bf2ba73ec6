package jira_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/connectortest"
	"github.com/agnes-ai/connector-kit/connectors/connectortest/extracttest"
	"github.com/agnes-ai/connector-kit/connectors/jira"
	"github.com/agnes-ai/connector-kit/connectors/jira/jiratest"
	"github.com/apache/arrow-go/v18/arrow/array"
)

const token = "s3cr3t-api-token-value"

var t0 = time.Date(2024, 1, 10, 9, 0, 0, 0, time.UTC)

func fakeWith(n int) *jiratest.Server {
	srv := jiratest.New("bot@example.com", token)
	for i := 1; i <= n; i++ {
		created := t0.AddDate(0, i%3, i)
		comments := i % 4
		if i == 2 {
			comments = 12 // more than one comment page
		}
		srv.Put(jiratest.MakeIssue(fmt.Sprintf("OPS-%d", i), 10000+i, created, created.Add(time.Duration(i)*time.Hour), comments),
			[]jira.RemoteLink{{ID: int64(i), Object: struct {
				URL   string `json:"url"`
				Title string `json:"title"`
			}{URL: "https://wiki.example/" + fmt.Sprint(i), Title: "Runbook"}}})
	}
	return srv
}

func open(t *testing.T, srv *jiratest.Server, tok string) *jira.Connector {
	t.Helper()
	c, err := jira.New(jira.Options{URL: srv.URL, Email: "bot@example.com", Token: tok, PageSize: 5, MaxRetries: 3, MaxRetryWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBackfillPagesEverything(t *testing.T) {
	srv := fakeWith(12)
	defer srv.Close()
	srv.ChangelogPage = 1
	c := open(t, srv, token)
	rows := map[string]int64{}
	keys := map[string]bool{}
	for ch, err := range c.Changes(context.Background(), connectors.ReadOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		keys[ch.Key] = true
		if ch.Time.IsZero() || ch.Version == 0 || ch.Deleted {
			t.Errorf("change %s: time %v version %d deleted %v", ch.Key, ch.Time, ch.Version, ch.Deleted)
		}
		for table, rec := range ch.Tables {
			if !rec.Schema().Equal(jira.Schemas[table]) {
				t.Errorf("%s: schema %s", table, rec.Schema())
			}
			rows[table] += rec.NumRows()
		}
		if ch.Key == "OPS-2" {
			if n := ch.Tables[jira.TableComments].NumRows(); n != 12 {
				t.Errorf("OPS-2 has %d comment rows, want all 12 (paged)", n)
			}
			body := ch.Tables[jira.TableComments].Column(ch.Tables[jira.TableComments].Schema().FieldIndices("body")[0]).(*array.String).Value(11)
			if body != "comment 11 on OPS-2" {
				t.Errorf("comment body from ADF = %q", body)
			}
		}
		ch.Release()
	}
	if len(keys) != 12 {
		t.Fatalf("backfill yielded %d issues, want 12", len(keys))
	}
	// 12 issues over search pages of 5 = 3 pages.
	if n := srv.Requests("/rest/api/3/search/jql"); n != 3 {
		t.Errorf("%d search requests, want 3", n)
	}
	if srv.Requests("/rest/api/3/issue/OPS-2/comment") == 0 {
		t.Error("comments beyond the first page were not fetched")
	}
	if srv.Requests("/rest/api/3/issue/OPS-1/changelog") == 0 {
		t.Error("changelog beyond the first page was not fetched")
	}
	// Each issue: 1 issue row, 3 changelog items, 1 attachment, 1 link, 1 remote link.
	wantComments := int64(12)
	for i := 1; i <= 12; i++ {
		if i != 2 {
			wantComments += int64(i % 4)
		}
	}
	want := map[string]int64{jira.TableIssues: 12, jira.TableComments: wantComments, jira.TableChangelog: 36,
		jira.TableAttachments: 12, jira.TableIssueLinks: 12, jira.TableRemoteLinks: 12}
	for table, n := range want {
		if rows[table] != n {
			t.Errorf("%s: %d rows, want %d", table, rows[table], n)
		}
	}
}

func TestErrorsAndRetries(t *testing.T) {
	srv := fakeWith(3)
	defer srv.Close()
	ctx := context.Background()

	// Wrong token: a clear 401 that never repeats the token.
	for _, err := range open(t, srv, "wrong-token").Changes(ctx, connectors.ReadOptions{}) {
		var apiErr *jira.APIError
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized || !strings.Contains(err.Error(), "token_env") {
			t.Fatalf("want a 401 APIError naming what to check, got %v", err)
		}
		if strings.Contains(err.Error(), "wrong-token") {
			t.Fatal("the error repeats the token")
		}
		break
	}

	// 429 with Retry-After and 503 are retried; Retry-After is honoured.
	srv.Fail("/rest/api/3/search/jql", http.StatusTooManyRequests, 1, "1")
	srv.Fail("/rest/api/3/issue/OPS-1", http.StatusServiceUnavailable, 2, "")
	start := time.Now()
	n := 0
	for ch, err := range open(t, srv, token).Changes(ctx, connectors.ReadOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		ch.Release()
	}
	if n != 3 {
		t.Fatalf("%d issues after retries, want 3", n)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Errorf("a 429 with Retry-After: 1 was retried after %v", waited)
	}

	// Past the retry budget the error says what failed.
	srv.Fail("/rest/api/3/search/jql", http.StatusBadGateway, 10, "0")
	for _, err := range open(t, srv, token).Changes(ctx, connectors.ReadOptions{}) {
		if err == nil || !strings.Contains(err.Error(), "HTTP 502") {
			t.Fatalf("want the last 502, got %v", err)
		}
		break
	}
}

func TestStream(t *testing.T) {
	srv := fakeWith(2)
	defer srv.Close()
	c := open(t, srv, token)
	ctx := context.Background()

	// An update re-fetches the issue as Jira has it now.
	is, _ := srv.Get("OPS-1")
	body := srv.Webhook("jira:issue_updated", "OPS-1", t0)
	is.Fields.Summary = "changed after the event"
	is.Fields.Updated = jira.FormatTime(t0.Add(48 * time.Hour))
	srv.Put(is, nil)
	chs, err := c.Stream(ctx, body)
	if err != nil || len(chs) != 1 {
		t.Fatalf("stream: %v, %d changes", err, len(chs))
	}
	ch := chs[0]
	summary := ch.Tables[jira.TableIssues].Column(jira.Schemas[jira.TableIssues].FieldIndices("summary")[0]).(*array.String).Value(0)
	if summary != "changed after the event" || ch.Version != t0.Add(48*time.Hour).UnixMicro() {
		t.Errorf("stream did not re-fetch: summary %q version %d", summary, ch.Version)
	}
	if _, ok := ch.Tables[jira.TableRemoteLinks]; ok {
		t.Error("remote links of the re-fetched issue should be empty now")
	}
	ch.Release()

	// The fetch fails (404 here): the event's own issue is used.
	body2 := srv.Webhook("jira:issue_updated", "OPS-2", t0)
	srv.Delete("OPS-2")
	chs, err = c.Stream(ctx, body2)
	if err != nil || len(chs) != 1 || chs[0].Key != "OPS-2" || chs[0].Tables[jira.TableIssues] == nil {
		t.Fatalf("fallback to the embedded issue: %v %v", err, chs)
	}
	chs[0].Release()

	// A delete outranks every state up to the event.
	del := srv.Webhook(jira.EventIssueDeleted, "OPS-1", t0.Add(72*time.Hour))
	chs, err = c.Stream(ctx, del)
	if err != nil || len(chs) != 1 || !chs[0].Deleted || chs[0].Version <= t0.Add(48*time.Hour).UnixMicro() {
		t.Fatalf("delete: %v %+v", err, chs)
	}

	for name, bad := range map[string]string{
		"empty":       "",
		"not json":    "{nope",
		"no issue":    `{"webhookEvent":"jira:issue_updated"}`,
		"bad key":     `{"webhookEvent":"jira:issue_updated","issue":{"key":"ops-1"}}`,
		"key too big": `{"webhookEvent":"jira:issue_updated","issue":{"key":"A-1234567890123"}}`,
		"no event":    `{"issue":{"key":"OPS-1"}}`,
	} {
		if _, err := jira.ParseEvent([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestADFText(t *testing.T) {
	doc := `{"type":"doc","content":[{"type":"paragraph","content":[{"type":"text","text":"Hello "},{"type":"mention","attrs":{"text":"@Ada"}}]},
		{"type":"bulletList","content":[{"type":"listItem","content":[{"type":"paragraph","content":[{"type":"text","text":"one"}]}]}]},
		{"type":"paragraph","content":[{"type":"text","text":"a"},{"type":"hardBreak"},{"type":"text","text":"b"}]}]}`
	if got := jira.ADFText([]byte(doc)); got != "Hello @Ada\none\na\nb" {
		t.Errorf("ADFText = %q", got)
	}
	if got := jira.ADFText([]byte(`"plain v2 text"`)); got != "plain v2 text" {
		t.Errorf("ADFText(string) = %q", got)
	}
}

func TestContract(t *testing.T) {
	srv := fakeWith(7)
	defer srv.Close()
	t.Setenv("JIRA_API_TOKEN", token)
	r := connectors.NewRegistry()
	jira.Register(r)
	reg, err := r.Lookup("jira")
	if err != nil {
		t.Fatal(err)
	}
	extracttest.Run(t, connectortest.Suite{
		Registration: reg,
		Config:       map[string]any{"url": srv.URL, "email": "bot@example.com", "page_size": 3},
		Secrets:      []string{token},
		Incremental:  map[string]string{jira.TableIssues: "updated"},
		StreamEvent:  srv.Webhook("jira:issue_updated", "OPS-3", t0),
	})
}
