package httpclient

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// flaky answers the first len(codes) requests with those codes (and
// Retry-After when ra is set), then 200 echoing the body.
func flaky(t *testing.T, ra string, codes ...int) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		if i < len(codes) {
			if ra != "" {
				w.Header().Set("Retry-After", ra)
			}
			w.WriteHeader(codes[i])
			io.WriteString(w, `{"error":"try again"}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestRetries(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		srv, n := flaky(t, "", 503, 429, 500)
		c := New(Options{MaxRetries: 5, MinWait: time.Millisecond, MaxWait: 5 * time.Millisecond})
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("payload"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "payload" || n.Load() != 4 {
			t.Errorf("status %d body %q after %d requests; want 200, the body replayed, 4 requests", resp.StatusCode, b, n.Load())
		}
	})
	t.Run("ErrNotRetried", func(t *testing.T) {
		srv, n := flaky(t, "", 400)
		resp, err := New(Options{MaxRetries: 5, MinWait: time.Millisecond}).Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 || n.Load() != 1 {
			t.Errorf("a 400 was retried: %d requests, status %d", n.Load(), resp.StatusCode)
		}
	})
	t.Run("ErrLastAnswerKept", func(t *testing.T) {
		srv, n := flaky(t, "0", 502, 502, 502, 502)
		resp, err := New(Options{MaxRetries: 2, MinWait: time.Millisecond}).Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 502 || !strings.Contains(string(b), "try again") || n.Load() != 3 {
			t.Errorf("after the retries: status %d body %q, %d requests; want the last 502 with its body after 3", resp.StatusCode, b, n.Load())
		}
	})
	t.Run("RetryAfterHonouredAndCapped", func(t *testing.T) {
		srv, _ := flaky(t, "1", 429)
		start := time.Now()
		resp, err := New(Options{MaxRetries: 1, MinWait: time.Millisecond, MaxWait: 5 * time.Second}).Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if waited := time.Since(start); waited < 900*time.Millisecond {
			t.Errorf("Retry-After: 1 waited only %v", waited)
		}
		if d := backoff(time.Millisecond, 2*time.Second, 0, &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"3600"}}}); d != 2*time.Second {
			t.Errorf("a Retry-After of an hour waits %v, want the 2s cap", d)
		}
	})
	t.Run("ErrCancelled", func(t *testing.T) {
		srv, _ := flaky(t, "10", 503, 503)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
		start := time.Now()
		if _, err := New(Options{MaxRetries: 5, MaxWait: time.Minute}).Do(req); err == nil {
			t.Error("a cancelled request succeeded")
		}
		if time.Since(start) > 5*time.Second {
			t.Error("cancellation did not stop the wait")
		}
	})
}

func TestRetryAfter(t *testing.T) {
	for h, want := range map[string]time.Duration{"": -1, "5": 5 * time.Second, "x": -1, "-3": -1} {
		got, ok := RetryAfter(h)
		if (want < 0) == ok || (ok && got != want) {
			t.Errorf("RetryAfter(%q) = %v %v", h, got, ok)
		}
	}
	if d, ok := RetryAfter(time.Now().Add(2 * time.Minute).UTC().Format(http.TimeFormat)); !ok || d < time.Minute {
		t.Errorf("HTTP date: %v %v", d, ok)
	}
}
