package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/jira/jiratest"
)

// TestStreamProcessesKilled: webhooks flow through separate gateway,
// producer, writer and finalizer processes while a writer, the producer and
// the finalizer are killed with SIGKILL and replaced; in the end every
// issue is exactly as Jira has it, once.
func TestStreamProcessesKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("process trial")
	}
	e := newProcEnv(t, 1, 10, 10)
	srv := jiratest.New("bot@example.com", jiraToken)
	defer srv.Close()
	t.Setenv("JIRA_API_TOKEN", jiraToken)
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "  - name: jira\n    connector: jira\n    webhook_secret: %s\n    config: {url: %q, email: bot@example.com}\n", hookSecret, srv.URL)
	f.Close()
	gwPort := freePort(t)
	gw := e.serve("gateway", "gateway", "--webhook-listen", fmt.Sprintf("127.0.0.1:%d", gwPort))
	producer := e.serve("producer", "producer")
	w1 := e.serve("w1", "writer")
	e.serve("w2", "writer")
	fin := e.serve("finalizer", "finalizer")
	waitPort(t, gw, gwPort)

	j := &jiraEnv{t: t, js: e.js, srv: srv, dataDir: e.dataDir, url: fmt.Sprintf("http://127.0.0.1:%d", gwPort),
		extract: filepath.Join(e.dataDir, "extracts", "jira", "extract.duckdb")}
	j.track = trackParts(t, e.js)
	const issues = 40
	keys := make([]string, issues)
	for i := range keys {
		keys[i] = fmt.Sprintf("OPS-%d", i+1)
		srv.Put(jiratest.MakeIssue(keys[i], i+1, jiraT0.AddDate(0, i%3, 0), jiraT0.AddDate(0, i%3, 1), i%4), nil)
	}
	at := jiraT0.AddDate(1, 0, 0)
	for i := range 300 {
		switch i {
		case 80:
			w1.kill()
		case 120:
			producer.kill()
		case 150:
			fin.kill()
		case 170:
			e.serve("producer2", "producer")
		case 200:
			e.serve("finalizer2", "finalizer")
			e.serve("w3", "writer")
		}
		key := keys[(i*7)%issues]
		at = at.Add(time.Minute)
		j.update(key, fmt.Sprintf("event %d", i), i%5, at)
		j.hook("jira:issue_updated", key, at)
	}
	j.quiet()
	j.wantAllLike(keys...)
	x := j.verify()
	if x.Counts["issues"] != issues {
		t.Errorf("issues view has %d rows, want %d", x.Counts["issues"], issues)
	}
}
