package jira

import (
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// FuzzWebhookBody: whatever a webhook body holds, ParseEvent either refuses
// it or yields an issue whose key matches the key rule (the key becomes a
// row key and a log field), and turning the event's own issue into rows
// never panics and releases every buffer.
func FuzzWebhookBody(f *testing.F) {
	f.Add([]byte(`{"webhookEvent":"jira:issue_updated","timestamp":1700000000000,"issue":{"key":"ABC-1","fields":{"created":"2024-01-03T08:00:00.000+0000","updated":"2024-01-03T09:00:00.000+0000","summary":"x"}}}`))
	f.Add([]byte(`{"webhookEvent":"jira:issue_deleted","issue":{"key":"../../x-1","fields":{}}}`))
	f.Add([]byte(`{"webhookEvent":"comment_created","issue":null,"issue_key":"ABC-2"}`))
	f.Add([]byte(`{"webhookEvent":"jira:issue_created","issue":{"key":"A-1","fields":{"description":{"type":"doc","content":[{"type":"date","attrs":{"timestamp":"1700000000000"}}]},"comment":{"comments":[{"id":"1","body":"hi"}]}}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := ParseEvent(body)
		if err != nil {
			return
		}
		if ev.Issue == nil || !IssueKeyRE.MatchString(ev.Issue.Key) {
			t.Fatalf("accepted an event with issue %+v", ev.Issue)
		}
		mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
		recs, _, err := issueRows(ev.Issue, nil, "https://jira.example.com", false, mem)
		if err == nil {
			for _, r := range recs {
				r.Release()
			}
		}
		mem.AssertSize(t, 0)
	})
}
