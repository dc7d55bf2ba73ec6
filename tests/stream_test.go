package tests

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/connectors/jira"
	"github.com/agnes-ai/connector-kit/connectors/jira/jiratest"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	jiraToken  = "jira-api-token-never-written"
	hookSecret = "webhook-secret-never-written"
)

var jiraT0 = time.Date(2024, 1, 3, 8, 0, 0, 0, time.UTC)

// jiraEnv is a whole stack (producer, writers, finalizer, gateway) with a
// "jira" source reading a fake Jira.
type jiraEnv struct {
	t       testing.TB
	js      jetstream.JetStream
	root    string
	srv     *jiratest.Server
	st      *stack.Stack
	dataDir string
	extract string
	url     string // gateway base URL
	track   *partTracker
}

type jiraOpts struct {
	compactMinFiles int
	retireGrace     time.Duration
	logger          *slog.Logger
	// roles default to all four; root and srv reuse an earlier env's data
	// folder and fake Jira (a restart).
	roles []string
	root  string
	srv   *jiratest.Server
}

func startJira(t testing.TB, o jiraOpts) *jiraEnv {
	t.Helper()
	srv := o.srv
	if srv == nil {
		srv = jiratest.New("bot@example.com", jiraToken)
		t.Cleanup(srv.Close)
	}
	t.Setenv("JIRA_API_TOKEN", jiraToken)
	t.Setenv("TEST_HOOK_SECRET", hookSecret)
	root := o.root
	if root == "" {
		root = t.TempDir()
	}
	roles := o.roles
	if roles == nil {
		roles = []string{stack.RoleProducer, stack.RoleWriter, stack.RoleFinalizer, stack.RoleGateway}
	}
	cfgPath := filepath.Join(root, "agnes.yaml")
	yaml := fmt.Sprintf(`sources:
  - name: jira
    connector: jira
    webhook_secret: ${TEST_HOOK_SECRET}
    config:
      url: %s
      email: bot@example.com
      page_size: 25
  - name: jira_nosecret
    connector: jira
    config:
      url: %s
      email: bot@example.com
  - name: demo
    connector: demo
    webhook_secret: x
    config:
      rows: 10
`, srv.URL, srv.URL)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(root, "data")
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dataDir,
		Roles: roles, Writers: 2,
		GatewayListen: "127.0.0.1:0", CompactMinFiles: o.compactMinFiles, RetireGrace: o.retireGrace, Logger: o.logger})
	if err != nil {
		t.Fatal(err)
	}
	e := &jiraEnv{t: t, js: st.JS, srv: srv, st: st, root: root, dataDir: dataDir, extract: filepath.Join(dataDir, "extracts", "jira", "extract.duckdb"),
		url: "http://" + st.GatewayAddr}
	e.track = trackParts(t, st.JS)
	t.Cleanup(e.stop)
	return e
}

func (e *jiraEnv) stop() {
	if e.st == nil {
		return
	}
	if err := e.st.Stop(); err != nil {
		e.t.Errorf("stop stack: %v", err)
	}
	e.st = nil
}

// post sends a webhook body signed with secret (none when empty).
func (e *jiraEnv) post(source string, body []byte, secret string, header map[string]string) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+"/webhooks/"+source, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("X-Hub-Signature-256", jiratest.Sign(secret, body))
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// hook posts a signed webhook for key and requires 200.
func (e *jiraEnv) hook(event, key string, at time.Time) {
	e.t.Helper()
	e.hookBody(e.srv.Webhook(event, key, at))
}

func (e *jiraEnv) hookBody(body []byte) {
	e.t.Helper()
	if code, out := e.post("jira", body, hookSecret, nil); code != http.StatusOK {
		e.t.Fatalf("webhook answered %d: %s", code, out)
	}
}

// partTracker follows the event stream: streamed parts written by writers
// and the parts the finalizer is done with.
type partTracker struct {
	mu        sync.Mutex
	written   map[string]bool
	done      map[string]bool
	lastSeq   uint64
	published int
}

func trackParts(t testing.TB, js jetstream.JetStream) *partTracker {
	pt := &partTracker{written: map[string]bool{}, done: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		natsbus.Follow(ctx, nil, js, schemas.StreamEventStream, "agnes.stream.>", 0, func(m jetstream.Msg) bool {
			ev, err := schemas.DecodeEvent(m.Data())
			md, _ := m.Metadata()
			pt.mu.Lock()
			defer pt.mu.Unlock()
			if md != nil {
				pt.lastSeq = md.Sequence.Stream
			}
			if err != nil {
				return true
			}
			switch ev.Type {
			case schemas.EventBatchWritten:
				pt.written[ev.Table+"/"+ev.Part] = true
			case schemas.EventStreamPublished:
				pt.published++
				for _, p := range ev.Parts {
					pt.done[p] = true
				}
			}
			return true
		})
	}()
	t.Cleanup(func() { cancel(); <-finished })
	return pt
}

// quiet waits until every accepted webhook is processed, written and
// published (or dropped as a copy): the hook and data queues are empty and
// the finalizer is done with every streamed part written so far.
func (e *jiraEnv) quiet() {
	e.t.Helper()
	ctx := context.Background()
	natstest.Poll(e.t, 90*time.Second, func() (bool, string) { return e.isQuiet(ctx) })
}

func (e *jiraEnv) isQuiet(ctx context.Context) (bool, string) {
	if e.st != nil && e.st.Finalizer != nil && e.st.Finalizer.Busy() {
		return false, "the finalizer is publishing or compacting"
	}
	consumers := []struct{ stream, consumer string }{{schemas.HookStream, schemas.HookConsumer}}
	for _, name := range schemas.WriterConsumers() {
		consumers = append(consumers, struct{ stream, consumer string }{schemas.DataStream, name})
	}
	for _, c := range consumers {
		cons, err := e.js.Consumer(ctx, c.stream, c.consumer)
		if err != nil {
			return false, err.Error()
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		if info.NumPending > 0 || info.NumAckPending > 0 || info.NumRedelivered > 0 {
			return false, fmt.Sprintf("%s: %d pending, %d unacked", c.consumer, info.NumPending, info.NumAckPending)
		}
	}
	s, err := e.js.Stream(ctx, schemas.StreamEventStream)
	if err != nil {
		return false, err.Error()
	}
	info, err := s.Info(ctx)
	if err != nil {
		return false, err.Error()
	}
	e.track.mu.Lock()
	defer e.track.mu.Unlock()
	if e.track.lastSeq < info.State.LastSeq {
		return false, "events not yet read"
	}
	for p := range e.track.written {
		if !e.track.done[p] {
			return false, "part " + p + " not yet published"
		}
	}
	return true, ""
}

// query runs q on a freshly opened read-only extract.
func queryExtract(t testing.TB, path, q string, args ...any) [][]any {
	t.Helper()
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out [][]any
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, vals)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func scalar(t testing.TB, path, q string, args ...any) any {
	t.Helper()
	r := queryExtract(t, path, q, args...)
	if len(r) != 1 || len(r[0]) != 1 {
		t.Fatalf("%s: %d rows", q, len(r))
	}
	return r[0][0]
}

// issueState is what the extract shows of one issue.
type issueState struct {
	summary  string
	updated  time.Time
	comments int64
	rows     map[string]int64
}

// snapshot reads what the extract shows of every issue, from one freshly
// opened connection.
func (e *jiraEnv) snapshot() map[string]*issueState {
	e.t.Helper()
	out := map[string]*issueState{}
	get := func(key string) *issueState {
		s := out[key]
		if s == nil {
			s = &issueState{rows: map[string]int64{}}
			out[key] = s
		}
		return s
	}
	db, err := sql.Open("duckdb", e.extract+"?access_mode=read_only")
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	for _, table := range jira.TableNames {
		rows, err := db.Query("SELECT issue_key, count(*) FROM " + table + " GROUP BY issue_key")
		if err != nil {
			e.t.Fatal(err)
		}
		for rows.Next() {
			var k string
			var n int64
			if err := rows.Scan(&k, &n); err != nil {
				e.t.Fatal(err)
			}
			get(k).rows[table] = n
		}
		rows.Close()
	}
	rows, err := db.Query("SELECT issue_key, summary, updated, comment_count FROM issues")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var st issueState
		var comments sql.NullInt64
		if err := rows.Scan(&k, &st.summary, &st.updated, &comments); err != nil {
			e.t.Fatal(err)
		}
		s := get(k)
		s.summary, s.updated, s.comments = st.summary, st.updated.UTC(), comments.Int64
		if !comments.Valid {
			s.comments = -1 // unknown
		}
	}
	return out
}

func (e *jiraEnv) state(key string) issueState {
	e.t.Helper()
	if s := e.snapshot()[key]; s != nil {
		return *s
	}
	return issueState{rows: map[string]int64{}}
}

// wantLike checks the extract shows key exactly as the fake Jira has it
// (or nothing when Jira no longer has it), with no duplicated rows.
func (e *jiraEnv) wantLike(key string) { e.wantAllLike(key) }

// wantAllLike checks every key against one snapshot.
func (e *jiraEnv) wantAllLike(keys ...string) {
	e.t.Helper()
	snap := e.snapshot()
	for _, key := range keys {
		got := snap[key]
		if got == nil {
			got = &issueState{rows: map[string]int64{}}
		}
		is, ok := e.srv.Get(key)
		if !ok {
			for table, n := range got.rows {
				if n != 0 {
					e.t.Errorf("%s is deleted but has %d rows in %s", key, n, table)
				}
			}
			continue
		}
		updated, _ := jira.ParseTime(is.Fields.Updated)
		if got.summary != is.Fields.Summary || !got.updated.Equal(updated) {
			e.t.Errorf("%s: extract has summary %q updated %s, Jira has %q %s", key, got.summary, got.updated, is.Fields.Summary, updated)
		}
		comments := int64(len(is.Fields.Comment.Comments))
		if got.rows[jira.TableIssues] != 1 || got.rows[jira.TableComments] != comments || got.comments != comments {
			e.t.Errorf("%s: %d issue rows, %d comment rows (count %d), want 1 and %d", key, got.rows[jira.TableIssues],
				got.rows[jira.TableComments], got.comments, comments)
		}
	}
}

// update changes an issue in the fake Jira: a new summary, n comments, and
// an updated time at.
func (e *jiraEnv) update(key, summary string, comments int, at time.Time) {
	is, ok := e.srv.Get(key)
	if !ok {
		e.t.Fatalf("no issue %s", key)
	}
	created, _ := jira.ParseTime(is.Fields.Created)
	id := 0
	fmt.Sscan(is.ID, &id)
	fresh := jiratest.MakeIssue(key, id, created, at, comments)
	fresh.Fields.Summary = summary
	e.srv.Put(fresh, nil)
}

func (e *jiraEnv) verify() *extractcheck.Extract {
	e.t.Helper()
	var opts []extractcheck.Option
	if e.st == nil {
		// Other processes may be compacting: temporary files can exist.
		opts = append(opts, extractcheck.WhileWriting())
	}
	x, err := extractcheck.Verify(context.Background(), e.extract, opts...)
	if err != nil {
		e.t.Fatalf("extract breaks the contract: %v", err)
	}
	for _, table := range jira.TableNames {
		if !strings.Contains(x.Views[table], "hive_partitioning") || !strings.Contains(x.Views[table], "union_by_name") {
			e.t.Errorf("view %s does not read hive partitions by name: %s", table, x.Views[table])
		}
	}
	b, err := os.ReadFile(filepath.Join(e.dataDir, "extracts", "jira", ".agnes", "catalog.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, secret := range []string{jiraToken, hookSecret} {
		if bytes.Contains(b, []byte(secret)) {
			e.t.Error("a secret is in the catalog")
		}
	}
	return x
}

func TestGatewayStatusCodes(t *testing.T) {
	e := startJira(t, jiraOpts{})
	e.srv.Put(jiratest.MakeIssue("OPS-1", 1, jiraT0, jiraT0.Add(time.Hour), 2), nil)
	good := e.srv.Webhook("jira:issue_created", "OPS-1", jiraT0)
	sig := jiratest.Sign(hookSecret, good)
	bareSig := strings.TrimPrefix(sig, "sha256=")
	altered := bytes.Replace(good, []byte("OPS-1"), []byte("OPS-2"), 1)
	big := append([]byte(`{"webhookEvent":"x","issue":{"key":"OPS-1"},"pad":"`), bytes.Repeat([]byte("a"), schemas.MaxHookBytes)...)
	big = append(big, `"}`...)
	signed := func(b string) ([]byte, map[string]string) {
		return []byte(b), map[string]string{"X-Hub-Signature-256": jiratest.Sign(hookSecret, []byte(b))}
	}
	invalid, invalidH := signed(`{"webhookEvent": "jira:issue_updated", "issue": {"key": "OPS-1"`)
	badKey, badKeyH := signed(`{"webhookEvent":"jira:issue_updated","issue":{"key":"OPS-1; DROP TABLE issues"}}`)
	noIssue, noIssueH := signed(`{"webhookEvent":"jira:issue_updated"}`)
	cases := []struct {
		name   string
		source string
		body   []byte
		header map[string]string
		want   int
		says   string
	}{
		{"no secret configured", "jira_nosecret", good, map[string]string{"X-Hub-Signature-256": sig}, 503, "no webhook_secret"},
		{"unknown source", "nope", good, map[string]string{"X-Hub-Signature-256": sig}, 404, "no webhook endpoint"},
		{"source that does not stream", "demo", good, map[string]string{"X-Hub-Signature-256": jiratest.Sign("x", good)}, 404, "no webhook endpoint"},
		{"unsafe source name", "..", good, nil, 404, ""},
		{"missing signature", "jira", good, nil, 401, "missing signature"},
		{"forged signature", "jira", good, map[string]string{"X-Hub-Signature-256": jiratest.Sign("guess", good)}, 401, "does not match"},
		{"body altered after signing", "jira", altered, map[string]string{"X-Hub-Signature-256": sig}, 401, "does not match"},
		{"malformed signature", "jira", good, map[string]string{"X-Hub-Signature-256": "sha256=xyz"}, 401, "malformed"},
		{"sha1 signature", "jira", good, map[string]string{"X-Hub-Signature": "sha1=" + bareSig[:40]}, 401, "only sha256"},
		{"empty body", "jira", nil, map[string]string{"X-Hub-Signature-256": jiratest.Sign(hookSecret, nil)}, 400, "empty body"},
		{"invalid JSON", "jira", invalid, invalidH, 400, "JSON"},
		{"bad issue key", "jira", badKey, badKeyH, 400, "does not match"},
		{"no issue", "jira", noIssue, noIssueH, 400, "carries no issue"},
		{"oversized body", "jira", big, map[string]string{"X-Hub-Signature-256": jiratest.Sign(hookSecret, big)}, 413, "larger than"},
		{"valid, sha256= prefix", "jira", good, map[string]string{"X-Hub-Signature-256": sig}, 200, "accepted"},
		{"valid, bare hex", "jira", good, map[string]string{"X-Hub-Signature-256": bareSig}, 200, "accepted"},
		{"valid, X-Hub-Signature", "jira", good, map[string]string{"X-Hub-Signature": sig}, 200, "accepted"},
	}
	for _, c := range cases {
		code, out := e.post(c.source, c.body, "", c.header)
		if code != c.want || !strings.Contains(out, c.says) {
			t.Errorf("%s: answered %d %s, want %d containing %q", c.name, code, out, c.want, c.says)
		}
		if strings.Contains(out, hookSecret) || strings.Contains(out, jiraToken) {
			t.Errorf("%s: the answer contains a secret", c.name)
		}
		// An unauthenticated caller learns nothing of the configuration.
		if code == http.StatusNotFound && (strings.Contains(out, "jira_nosecret") || strings.Contains(out, "yaml") || strings.Contains(out, e.root)) {
			t.Errorf("%s: the 404 reveals internals: %s", c.name, out)
		}
	}
	// A retried delivery (same Jira delivery id) is stored once.
	h := map[string]string{"X-Hub-Signature-256": sig, "X-Atlassian-Webhook-Identifier": "delivery-1"}
	code1, out1 := e.post("jira", good, "", h)
	code2, out2 := e.post("jira", good, "", h)
	var a1, a2 struct {
		Seq       uint64 `json:"seq"`
		Duplicate bool   `json:"duplicate"`
	}
	json.Unmarshal([]byte(out1), &a1)
	json.Unmarshal([]byte(out2), &a2)
	if code1 != 200 || code2 != 200 || a1.Duplicate || !a2.Duplicate || a1.Seq != a2.Seq {
		t.Errorf("redelivery: %d %s / %d %s", code1, out1, code2, out2)
	}
	// Well formed but never processable (a delete without the issue's
	// created time, which picks its partition): accepted, then
	// dead-lettered at once with the reason, losing nothing else.
	dead := []byte(`{"timestamp":1,"webhookEvent":"jira:issue_deleted","issue":{"key":"OPS-404","fields":{}}}`)
	if code, out := e.post("jira", dead, hookSecret, nil); code != 200 {
		t.Fatalf("dead event: %d %s", code, out)
	}
	// Health.
	resp, err := http.Get(e.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	// Only the accepted events reached the extract: OPS-1 once, as Jira has it.
	e.quiet()
	e.wantLike("OPS-1")
	if n := scalar(t, e.extract, "SELECT count(*) FROM issues").(int64); n != 1 {
		t.Errorf("issues has %d rows, want 1", n)
	}
	if d := scalar(t, e.extract, "SELECT description FROM _meta WHERE table_name = 'comments'").(string); !strings.HasPrefix(d, "Jira issue comments") {
		t.Errorf("a streamed table's _meta description is %q", d)
	}
	if m := scalar(t, e.extract, "SELECT month FROM issues").(string); m != "2024-01" {
		t.Errorf("OPS-1 is in month %s, want 2024-01 (its created month)", m)
	}
	e.verify()
	dlq, err := e.js.Stream(context.Background(), schemas.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dlq.GetLastMsgForSubject(context.Background(), schemas.DeadLetterSubject("jira", "_webhooks"))
	if err != nil {
		t.Fatalf("the unprocessable webhook is not in the dead-letter stream: %v", err)
	}
	if reason := m.Header.Get(schemas.HeaderDLQReason); !strings.Contains(reason, "OPS-404") || !strings.Contains(reason, "created") || string(m.Data) != string(dead) {
		t.Errorf("dead letter: reason %q, body %s", reason, m.Data)
	}
}

func TestWebhooksOutOfOrderDuplicatedAndDeleted(t *testing.T) {
	e := startJira(t, jiraOpts{})
	// OPS-1 goes through three states; each event is captured with the
	// issue it embeds at that time.
	e.srv.Put(jiratest.MakeIssue("OPS-1", 1, jiraT0, jiraT0.Add(time.Hour), 5), nil)
	v1 := e.srv.Webhook("jira:issue_created", "OPS-1", jiraT0.Add(time.Hour))
	e.update("OPS-1", "second", 3, jiraT0.Add(2*time.Hour))
	v2 := e.srv.Webhook("jira:issue_updated", "OPS-1", jiraT0.Add(2*time.Hour))
	e.update("OPS-1", "third", 1, jiraT0.Add(3*time.Hour))
	v3 := e.srv.Webhook("jira:issue_updated", "OPS-1", jiraT0.Add(3*time.Hour))
	// Another issue in another month is untouched by all of this.
	e.srv.Put(jiratest.MakeIssue("OPS-2", 2, jiraT0.AddDate(0, 2, 0), jiraT0.AddDate(0, 2, 1), 2), nil)
	e.hook("jira:issue_created", "OPS-2", jiraT0)

	// Jira cannot be reached for OPS-1 (404 here), so each event falls back
	// to its own embedded issue: they arrive newest first and repeated.
	final, _ := e.srv.Get("OPS-1")
	e.srv.Delete("OPS-1")
	for _, b := range [][]byte{v3, v1, v2, v3, v1} {
		e.hookBody(b)
	}
	e.quiet()
	got := e.state("OPS-1")
	if got.summary != "third" || got.rows[jira.TableIssues] != 1 || got.rows[jira.TableComments] != 1 || got.rows[jira.TableChangelog] != 3 {
		t.Errorf("after out-of-order and duplicated events OPS-1 is %+v, want the third state once (1 comment)", got)
	}
	e.srv.Put(final, nil)
	e.wantLike("OPS-2")
	e.verify()

	// A delete removes the issue from every table; a stale update arriving
	// after it does not bring it back.
	e.srv.Delete("OPS-1")
	e.hookBody(func() []byte {
		b := bytes.Replace(v3, []byte(`"jira:issue_updated"`), []byte(`"`+jira.EventIssueDeleted+`"`), 1)
		return bytes.Replace(b, []byte(fmt.Sprint(jiraT0.Add(3*time.Hour).UnixMilli())), []byte(fmt.Sprint(jiraT0.Add(4*time.Hour).UnixMilli())), 1)
	}())
	e.hookBody(v2)
	e.quiet()
	e.wantLike("OPS-1")
	e.wantLike("OPS-2")
	x := e.verify()
	for _, m := range x.Meta {
		if m.Table == jira.TableIssues && m.Rows != 1 {
			t.Errorf("_meta says issues has %d rows, want 1 (OPS-2)", m.Rows)
		}
	}
}

func TestBackfillRacesWebhooks(t *testing.T) {
	e := startJira(t, jiraOpts{})
	const n = 120
	for i := 1; i <= n; i++ {
		created := jiraT0.AddDate(0, i%5, 0).Add(time.Duration(i) * time.Minute)
		e.srv.Put(jiratest.MakeIssue(fmt.Sprintf("OPS-%d", i), i, created, created.Add(time.Hour), i%6), nil)
	}
	// Jira changes exactly around the backfill's fetch of chosen issues,
	// each change followed by its webhook: updated just before the backfill
	// reads the issue, just after, deleted just before, just after.
	var mu sync.Mutex
	fired := map[string]bool{}
	var hookErrs []string
	now := jiraT0.AddDate(1, 0, 0)
	act := func(key string, after bool) {
		var i int
		fmt.Sscanf(key, "OPS-%d", &i)
		kind := i % 8
		if (after && kind != 3 && kind != 7) || (!after && kind != 1 && kind != 5) {
			return
		}
		mu.Lock()
		if fired[key] {
			mu.Unlock()
			return
		}
		fired[key] = true
		now = now.Add(time.Minute)
		at := now
		mu.Unlock()
		var body []byte
		if kind == 5 || kind == 7 {
			is, _ := e.srv.Get(key)
			e.srv.Delete(key)
			body, _ = json.Marshal(jira.WebhookEvent{Timestamp: at.UnixMilli(), WebhookEvent: jira.EventIssueDeleted, Issue: &is})
		} else {
			e.update(key, "changed during the backfill", i%4, at)
			body = e.srv.Webhook("jira:issue_updated", key, at)
		}
		if code, out := e.post("jira", body, hookSecret, nil); code != http.StatusOK {
			mu.Lock()
			hookErrs = append(hookErrs, fmt.Sprintf("%s: %d %s", key, code, out))
			mu.Unlock()
		}
	}
	e.srv.BeforeIssue = func(key string) { act(key, false) }
	e.srv.AfterIssue = func(key string) { act(key, true) }

	ctx := context.Background()
	r, err := stack.Sync(ctx, e.st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "jira", RequestedAt: time.Now()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.TablesFailed != 0 || st.TablesExtracted != 6 {
		t.Fatalf("backfill: %+v", st)
	}
	e.quiet()
	mu.Lock()
	if len(fired) != n/2 || len(hookErrs) > 0 {
		t.Fatalf("%d of %d planned changes happened; webhook errors: %v", len(fired), n/2, hookErrs)
	}
	mu.Unlock()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("OPS-%d", i+1)
	}
	e.wantAllLike(keys...)
	x := e.verify()
	var live int64
	for i := 1; i <= n; i++ {
		if _, ok := e.srv.Get(fmt.Sprintf("OPS-%d", i)); ok {
			live++
		}
	}
	for _, m := range x.Meta {
		if m.Table == jira.TableIssues && (m.Rows != live || x.Counts[m.Table] != live) {
			t.Errorf("issues: _meta %d, view %d, Jira has %d", m.Rows, x.Counts[m.Table], live)
		}
	}
	// Months are the issues' creation months, never arrival time.
	months := queryExtract(t, e.extract, "SELECT DISTINCT month FROM comments ORDER BY month")
	if len(months) != 5 || months[0][0] != "2024-01" || months[4][0] != "2024-05" {
		t.Errorf("comment partitions: %v", months)
	}
}

func TestCompactionWhileReading(t *testing.T) {
	e := startJira(t, jiraOpts{compactMinFiles: 4, retireGrace: 300 * time.Millisecond})
	keys := []string{"OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"}
	for i, k := range keys {
		e.srv.Put(jiratest.MakeIssue(k, i+1, jiraT0.Add(time.Duration(i)*time.Hour), jiraT0.Add(time.Duration(i+1)*time.Hour), 2), nil)
		e.hook("jira:issue_created", k, jiraT0)
	}
	e.quiet()

	// A reader opens the extract again and again and queries every view
	// while events are published and partitions compacted.
	// Each open runs to its end (never cancelled mid-query): DuckDB's
	// instance cache spins forever on reopening a path whose previous
	// instance a cancelled query still holds.
	ctx, cancel := context.WithCancel(context.Background())
	var reads, failures int
	var firstErr error
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for ctx.Err() == nil {
			x, err := extractcheck.Verify(context.Background(), e.extract, extractcheck.WhileWriting())
			if err == nil && x.Counts[jira.TableIssues] != int64(len(keys)) {
				err = fmt.Errorf("issues view has %d rows, want %d", x.Counts[jira.TableIssues], len(keys))
			}
			reads++
			if err != nil {
				failures++
				if firstErr == nil {
					firstErr = err
				}
			}
		}
	}()
	at := jiraT0.Add(24 * time.Hour)
	for i := range 40 {
		k := keys[i%len(keys)]
		at = at.Add(time.Minute)
		e.update(k, fmt.Sprintf("update %d", i), i%3, at)
		e.hook("jira:issue_updated", k, at)
		if i%2 == 1 {
			e.quiet() // separate publishes, so files accumulate
		}
	}
	e.quiet()
	cancel()
	<-readerDone
	if reads < 5 || failures > 0 {
		t.Fatalf("reader: %d reads, %d failures, first: %v", reads, failures, firstErr)
	}
	e.wantAllLike(keys...)
	cat := readCatalog(t, filepath.Join(e.dataDir, "extracts", "jira"))
	files := cat.Tables[jira.TableIssues].Files
	compacted := 0
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f.Path), "c-") {
			compacted++
		}
	}
	if compacted == 0 || len(files) >= 20 {
		t.Errorf("issues partition has %d files (%d compacted): no compaction happened", len(files), compacted)
	}
	// Replaced files are deleted once the grace period has passed and a
	// later publish runs; what the extract reads always exists.
	dir := filepath.Join(e.dataDir, "extracts", "jira", "data", jira.TableIssues, "month=2024-01")
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		on, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
		cat = readCatalog(t, filepath.Join(e.dataDir, "extracts", "jira"))
		if len(on) == len(filesOf(cat, jira.TableIssues)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d files on disk, the catalog lists %d: retired files were not deleted", len(on), len(filesOf(cat, jira.TableIssues)))
		}
		time.Sleep(100 * time.Millisecond)
		e.hook("jira:issue_updated", keys[i%len(keys)], at)
		e.quiet()
	}
	e.verify()
}

type testCatalog struct {
	Tables map[string]struct {
		Files []struct {
			Path  string `json:"path"`
			Month string `json:"month"`
		} `json:"files"`
	} `json:"tables"`
}

func readCatalog(t testing.TB, dir string) testCatalog {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ".agnes", "catalog.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c testCatalog
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func filesOf(c testCatalog, table string) []string {
	var out []string
	for _, f := range c.Tables[table].Files {
		if f.Month == "2024-01" {
			out = append(out, f.Path)
		}
	}
	return out
}

// An accepted webhook is on the bus: a stack that stops before any of it
// was processed loses nothing; the next one publishes it.
func TestAcceptedWebhooksSurviveRestart(t *testing.T) {
	gw := startJira(t, jiraOpts{roles: []string{stack.RoleGateway}})
	for i := 1; i <= 8; i++ {
		key := fmt.Sprintf("OPS-%d", i)
		gw.srv.Put(jiratest.MakeIssue(key, i, jiraT0.AddDate(0, i%2, 0), jiraT0.AddDate(0, i%2, 1), i%3), nil)
		gw.hook("jira:issue_created", key, jiraT0)
	}
	gw.srv.Delete("OPS-8")
	gw.hookBody(func() []byte {
		is := jiratest.MakeIssue("OPS-8", 8, jiraT0, jiraT0.AddDate(0, 0, 1), 0)
		b, _ := json.Marshal(jira.WebhookEvent{Timestamp: jiraT0.AddDate(0, 1, 0).UnixMilli(), WebhookEvent: jira.EventIssueDeleted, Issue: &is})
		return b
	}())
	gw.stop()

	e := startJira(t, jiraOpts{root: gw.root, srv: gw.srv})
	e.quiet()
	keys := make([]string, 8)
	for i := range keys {
		keys[i] = fmt.Sprintf("OPS-%d", i+1)
	}
	e.wantAllLike(keys...)
	if n := scalar(t, e.extract, "SELECT count(*) FROM issues").(int64); n != 7 {
		t.Errorf("issues has %d rows, want 7", n)
	}
	e.verify()
}

// A full backfill removes issues deleted while no webhook reached us; an
// incremental one cannot tell and keeps them.
func TestFullBackfillDeletesUnseenIssues(t *testing.T) {
	e := startJira(t, jiraOpts{})
	keys := make([]string, 10)
	for i := range keys {
		keys[i] = fmt.Sprintf("OPS-%d", i+1)
		e.srv.Put(jiratest.MakeIssue(keys[i], i+1, jiraT0.AddDate(0, i%2, 0), jiraT0.AddDate(0, i%2, 1), i%3), nil)
	}
	sync := func(full bool) {
		t.Helper()
		r, err := stack.Sync(context.Background(), e.js, schemas.SyncRequest{RunID: uuid.NewString(), Source: "jira", FullRefresh: full, RequestedAt: time.Now()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st := r.Stats(); st.TablesFailed != 0 {
			t.Fatalf("sync: %+v", st)
		}
	}
	sync(true)
	e.wantAllLike(keys...)

	// Three issues disappear from Jira without a webhook.
	for _, k := range []string{"OPS-2", "OPS-5", "OPS-6"} {
		e.srv.Delete(k)
	}
	sync(false)
	if n := scalar(t, e.extract, "SELECT count(*) FROM issues").(int64); n != 10 {
		t.Fatalf("an incremental backfill changed the issue count to %d", n)
	}
	sync(true)
	e.wantAllLike(keys...)
	if n := scalar(t, e.extract, "SELECT count(*) FROM issues").(int64); n != 7 {
		t.Fatalf("after a full backfill issues has %d rows, want 7", n)
	}
	for _, table := range jira.TableNames {
		if n := scalar(t, e.extract, "SELECT count(*) FROM "+table+" WHERE issue_key IN ('OPS-2', 'OPS-5', 'OPS-6')").(int64); n != 0 {
			t.Errorf("%s still has %d rows of deleted issues", table, n)
		}
	}
	// A backfill that sees nothing deletes nothing (a broken filter is
	// likelier than a Jira without issues).
	for _, k := range keys {
		e.srv.Delete(k)
	}
	sync(true)
	if n := scalar(t, e.extract, "SELECT count(*) FROM issues").(int64); n != 7 {
		t.Fatalf("an empty full backfill left %d issues, want the 7 there were", n)
	}
	e.verify()
}

// TestFailedRefetchKeepsChildRows: when a webhook's issue cannot be fetched
// again (a rotated token: 401), the event's own copy updates the issue, and
// the child rows it cannot vouch for (comments, changelog and remote links
// it does not carry) stay as published instead of disappearing.
func TestFailedRefetchKeepsChildRows(t *testing.T) {
	e := startJira(t, jiraOpts{})
	e.srv.Put(jiratest.MakeIssue("OPS-7", 7, jiraT0, jiraT0.Add(time.Hour), 2), []jira.RemoteLink{{ID: 70, Object: struct {
		URL   string `json:"url"`
		Title string `json:"title"`
	}{URL: "https://wiki.example/70", Title: "Runbook"}}})
	e.hook("jira:issue_created", "OPS-7", jiraT0)
	e.quiet()
	before := e.state("OPS-7")
	if before.rows[jira.TableComments] != 2 || before.rows[jira.TableRemoteLinks] != 1 || before.rows[jira.TableChangelog] == 0 {
		t.Fatalf("before: %+v", before)
	}
	is, _ := e.srv.Get("OPS-7")
	is.Fields.Summary = "renamed in Jira"
	is.Fields.Updated = jira.FormatTime(jiraT0.Add(2 * time.Hour))
	is.Fields.Comment, is.Changelog = nil, nil
	body, _ := json.Marshal(jira.WebhookEvent{Timestamp: jiraT0.Add(2 * time.Hour).UnixMilli(), WebhookEvent: "jira:issue_updated", Issue: &is})
	e.srv.Fail("/rest/api/3/issue/OPS-7", http.StatusUnauthorized, 1000, "")
	e.hookBody(body)
	e.quiet()
	got := e.state("OPS-7")
	if got.summary != "renamed in Jira" {
		t.Errorf("the event's own issue was not published: summary %q", got.summary)
	}
	for _, table := range []string{jira.TableComments, jira.TableChangelog, jira.TableRemoteLinks} {
		if got.rows[table] != before.rows[table] {
			t.Errorf("%s: %d rows after the failed re-fetch, %d before: rows the event cannot vouch for were dropped", table, got.rows[table], before.rows[table])
		}
	}
	if got.comments != -1 {
		t.Errorf("comment_count %d, want null (the event does not say)", got.comments)
	}
	e.verify()
}

// TestIncrementalSyncWithNothingChanged: a second sync of an unchanged Jira
// reads only the cursor's minute again (in the API user's time zone),
// fetches at most the issue at the cursor, and writes no new Parquet file.
func TestIncrementalSyncWithNothingChanged(t *testing.T) {
	e := startJira(t, jiraOpts{})
	e.srv.TimeZone = "America/New_York"
	for i := range 30 {
		at := jiraT0.Add(time.Duration(i) * 20 * time.Minute) // updates spread over 10 hours
		e.srv.Put(jiratest.MakeIssue(fmt.Sprintf("OPS-%d", i+1), i+1, jiraT0, at, 1), nil)
	}
	if rep := syncSource(t, e.st, "jira"); rep.Failed != 0 {
		t.Fatalf("backfill: %+v", rep.Results)
	}
	files := func() []string {
		var out []string
		filepath.WalkDir(filepath.Join(e.dataDir, "extracts", "jira", "data"), func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".parquet") {
				out = append(out, p)
			}
			return nil
		})
		return out
	}
	before := files()
	fetches, searches := e.srv.Requests("/rest/api/3/issue/"), e.srv.Requests("/rest/api/3/search/jql")
	if rep := syncSource(t, e.st, "jira"); rep.Failed != 0 {
		t.Fatalf("incremental: %+v", rep.Results)
	}
	if n := e.srv.Requests("/rest/api/3/issue/") - fetches; n > 4 {
		t.Errorf("an incremental sync with nothing changed made %d issue requests, want at most the cursor issue's (4)", n)
	}
	if n := e.srv.Requests("/rest/api/3/search/jql") - searches; n != 1 {
		t.Errorf("%d searches, want 1", n)
	}
	if after := files(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("an incremental sync with nothing changed wrote files: %d before, %d after", len(before), len(after))
	}
	// A change one minute after the cursor is found, in the user's zone.
	e.update("OPS-3", "changed later", 2, jiraT0.Add(30*20*time.Minute))
	if rep := syncSource(t, e.st, "jira"); rep.Failed != 0 {
		t.Fatalf("incremental: %+v", rep.Results)
	}
	e.wantAllLike("OPS-1", "OPS-3", "OPS-30")
	e.verify()
}
