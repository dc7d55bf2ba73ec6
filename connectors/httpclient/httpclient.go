// Package httpclient is the retrying HTTP client connectors share: 429 and
// 5xx answers and network errors are retried with exponential backoff,
// Retry-After (seconds or an HTTP date) is honoured up to a cap, and after
// the last attempt the last answer is returned as it is, so the connector
// can report the source's own error message. It is built on
// hashicorp/go-retryablehttp.
package httpclient

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Defaults of Options.
const (
	DefaultMaxRetries = 6
	DefaultMinWait    = 500 * time.Millisecond
	DefaultMaxWait    = 30 * time.Second
	DefaultTimeout    = 60 * time.Second
)

// Options configure a client.
type Options struct {
	// MaxRetries is how often a failed request is retried (0: none).
	MaxRetries int
	// MinWait and MaxWait bound one wait between attempts; a Retry-After
	// longer than MaxWait is cut to MaxWait.
	MinWait, MaxWait time.Duration
	// Timeout bounds one attempt, including reading the body headers.
	Timeout time.Duration
	// Transport is the underlying transport (tests: a fake's).
	Transport http.RoundTripper
	// Retry, when set, replaces the retry policy: it is asked after every
	// attempt whether to try again.
	Retry func(ctx context.Context, resp *http.Response, err error) (bool, error)
}

// New returns an *http.Client that retries as Options say. Requests with a
// body are replayed from memory, so bodies must be small (API calls, not
// uploads).
func New(o Options) *http.Client {
	if o.MinWait <= 0 {
		o.MinWait = DefaultMinWait
	}
	if o.MaxWait <= 0 {
		o.MaxWait = DefaultMaxWait
	}
	if o.MaxWait < o.MinWait {
		o.MinWait = o.MaxWait
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	c := retryablehttp.NewClient()
	c.Logger = nil // URLs may name signed files; nothing is logged here
	c.RetryMax = o.MaxRetries
	c.RetryWaitMin, c.RetryWaitMax = o.MinWait, o.MaxWait
	c.HTTPClient.Timeout = o.Timeout
	if o.Transport != nil {
		c.HTTPClient.Transport = o.Transport
	}
	c.CheckRetry = retryablehttp.DefaultRetryPolicy
	if o.Retry != nil {
		c.CheckRetry = o.Retry
	}
	c.Backoff = backoff
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	return c.StandardClient()
}

// backoff waits Retry-After when the answer has one (capped at max), else
// min doubling per attempt up to max.
func backoff(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500) {
		if ra, ok := RetryAfter(resp.Header.Get("Retry-After")); ok {
			return clamp(ra, 0, max)
		}
	}
	d := min << clampInt(attempt, 0, 30)
	return clamp(d, min, max)
}

// RetryAfter parses a Retry-After header: delay seconds or an HTTP date.
func RetryAfter(h string) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(h); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}

func clamp(d, lo, hi time.Duration) time.Duration { return min(max(d, lo), hi) }
func clampInt(n, lo, hi int) int                  { return min(max(n, lo), hi) }

// Exchange sends req with c and reads the answer's body, at most limit
// bytes. A transport error is returned wrapped with label
// (the context's own error when the request was cancelled); any status,
// 2xx or not, comes back with its body for the caller to judge.
func Exchange(c *http.Client, req *http.Request, label string, limit int64) (int, []byte, error) {
	resp, err := c.Do(req)
	if err != nil {
		if cerr := req.Context().Err(); cerr != nil {
			return 0, nil, cerr
		}
		return 0, nil, fmt.Errorf("%s: %w", label, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil && resp.StatusCode/100 == 2 {
		return resp.StatusCode, nil, fmt.Errorf("%s: read body: %w", label, err)
	}
	return resp.StatusCode, body, nil
}
