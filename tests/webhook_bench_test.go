package tests

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/jira"
	"github.com/agnes-ai/connector-kit/connectors/jira/jiratest"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go"
)

// BenchmarkWebhooks measures, with the target month of the issues table
// holding 10,000 and then 1,000,000 rows: sustained webhook events per
// second through the gateway (accepted, and processed until published), and
// the p50/p99 time from a POST to its row being visible through a freshly
// opened extract.duckdb, under a steady background load.
//
//	go test ./tests -run '^$' -bench BenchmarkWebhooks -benchtime 1x -timeout 30m
func BenchmarkWebhooks(b *testing.B) {
	for _, rows := range []int{10_000, 1_000_000} {
		b.Run(fmt.Sprintf("month_rows=%d", rows), func(b *testing.B) { benchWebhooks(b, rows) })
	}
}

const (
	benchHot     = 200  // issues the events are about
	benchBurst   = 2000 // events of the throughput phase
	benchProbes  = 60   // latency probes
	benchClients = 16
)

func benchWebhooks(b *testing.B, monthRows int) {
	e := startJira(b, jiraOpts{logger: slog.New(slog.DiscardHandler)})
	created := time.Date(2024, 1, 15, 0, 0, 0, 0, time.UTC)
	for i := range benchHot {
		e.srv.Put(jiratest.MakeIssue(fmt.Sprintf("HOT-%d", i), 900000+i, created.Add(time.Duration(i)*time.Minute), created.Add(time.Hour), 2), nil)
	}
	preload(b, e, monthRows, created)

	for range b.N {
		// Throughput: a burst from concurrent clients.
		var next atomic.Int64
		var failed atomic.Int64
		start := time.Now()
		var wg sync.WaitGroup
		for range benchClients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= benchBurst {
						return
					}
					key := fmt.Sprintf("HOT-%d", i%benchHot)
					if code, _ := e.post("jira", e.srv.Webhook("jira:issue_updated", key, created), hookSecret, nil); code != http.StatusOK {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		accepted := time.Since(start)
		e.quiet()
		processed := time.Since(start)
		if failed.Load() > 0 {
			b.Fatalf("%d webhooks were not accepted", failed.Load())
		}
		b.ReportMetric(float64(benchBurst)/accepted.Seconds(), "accepted_events/s")
		b.ReportMetric(float64(benchBurst)/processed.Seconds(), "published_events/s")

		// Latency under a steady background load of 20 events/s.
		ctx, cancel := context.WithCancel(context.Background())
		bg := make(chan struct{})
		go func() {
			defer close(bg)
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					e.post("jira", e.srv.Webhook("jira:issue_updated", fmt.Sprintf("HOT-%d", 100+i%100), created), hookSecret, nil)
				}
			}
		}()
		lat := make([]time.Duration, 0, benchProbes)
		at := created.Add(48 * time.Hour)
		for p := range benchProbes {
			key := fmt.Sprintf("HOT-%d", p%100)
			summary := fmt.Sprintf("probe %d", p)
			at = at.Add(time.Minute)
			e.update(key, summary, 2, at)
			body := e.srv.Webhook("jira:issue_updated", key, at)
			t0 := time.Now()
			e.hookBody(body)
			if err := waitVisible(e.extract, key, summary, 30*time.Second); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		cancel()
		<-bg
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50_ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99_ms")
		b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max_ms")
	}
	e.quiet()
	x := e.verify()
	for _, m := range x.Meta {
		if m.Table == jira.TableIssues && m.Rows != int64(monthRows+benchHot) {
			b.Errorf("issues: _meta %d rows, want %d", m.Rows, monthRows+benchHot)
		}
	}
}

// waitVisible polls freshly opened read-only connections to the extract
// until the issue shows the summary.
func waitVisible(path, key, summary string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		db, err := sql.Open("duckdb", path+"?access_mode=read_only")
		if err == nil {
			var n int64
			err = db.QueryRow("SELECT count(*) FROM issues WHERE issue_key = ? AND summary = ?", key, summary).Scan(&n)
			db.Close()
			if err == nil && n == 1 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s with summary %q not visible after %v (last error %v)", key, summary, timeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// preload puts n issue rows of month created into the extract through the
// bus, as streamed batches of 10,000 rows, and waits until they are visible.
func preload(b *testing.B, e *jiraEnv, n int, created time.Time) {
	b.Helper()
	schema := schemas.PartitionedSchema(jira.Schemas[jira.TableIssues])
	fp := schemas.Fingerprint(schema)
	ctx := context.Background()
	const per = 10_000
	seq := int64(1) << 40
	for off := 0; off < n; off += per {
		rec := bigIssues(schema, off, min(per, n-off), created)
		chunks, err := schemas.EncodeBatch(rec, int(e.st.NC.MaxPayload()))
		rec.Release()
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range chunks {
			m := &nats.Msg{Subject: schemas.DataSubject("jira", jira.TableIssues), Data: c.Data,
				Header: schemas.DataHeader(schemas.StreamRun, "jira", jira.TableIssues, 1, seq, c.Rows)}
			m.Header.Set(schemas.HeaderSchema, fp)
			m.Header.Set(schemas.HeaderMonth, schemas.Month(created))
			m.Header.Set(schemas.HeaderKeyColumn, "issue_key")
			if _, err := e.js.PublishMsg(ctx, m); err != nil {
				b.Fatal(err)
			}
			seq++
		}
	}
	e.quiet()
	if got := scalar(b, e.extract, "SELECT count(*) FROM issues").(int64); got != int64(n) {
		b.Fatalf("preloaded %d rows, the view shows %d", n, got)
	}
}

// bigIssues builds rows of the stored issues schema: keys BIG-off..,
// created in the month of created, version 1.
func bigIssues(schema *arrow.Schema, off, n int, created time.Time) arrow.RecordBatch {
	bld := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer bld.Release()
	for i := range n {
		k := off + i
		for j, f := range schema.Fields() {
			fb := bld.Field(j)
			switch f.Name {
			case "issue_key":
				fb.(*array.StringBuilder).Append(fmt.Sprintf("BIG-%d", k))
			case "issue_created", "updated":
				fb.(*array.TimestampBuilder).Append(arrow.Timestamp(created.Add(time.Duration(k) * time.Second).UnixMicro()))
			case "summary":
				fb.(*array.StringBuilder).Append(fmt.Sprintf("Preloaded issue %d about subsystem %d", k, k%97))
			case "status", "priority", "issue_type", "project_key":
				fb.(*array.StringBuilder).Append([]string{"Open", "Done", "In Progress"}[k%3])
			case "comment_count", "attachment_count", "link_count":
				fb.(*array.Int64Builder).Append(int64(k % 7))
			case schemas.VersionColumn:
				fb.(*array.Int64Builder).Append(1)
			case schemas.DeletedColumn:
				fb.(*array.BooleanBuilder).Append(false)
			case schemas.EventColumn:
				fb.(*array.Int64Builder).Append(int64(k))
			default:
				fb.AppendNull()
			}
		}
	}
	return bld.NewRecordBatch()
}
