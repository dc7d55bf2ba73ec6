package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// DefaultHealthURL is where "da healthcheck" looks without an argument:
// the readiness of a "da serve --metrics-listen 127.0.0.1:9090".
const DefaultHealthURL = "http://127.0.0.1:9090/readyz"

// runHealthcheck asks a local /readyz (or /healthz) and exits 0 when it
// answers 200: a container health check for images without curl.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	target := DefaultHealthURL
	switch len(pos) {
	case 0:
	case 1:
		target = pos[0]
	default:
		return usageError{errors.New("usage: da healthcheck [URL] (default " + DefaultHealthURL + ")")}
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageError{fmt.Errorf("%q is not an http(s) URL such as %s", target, DefaultHealthURL)}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", u.Redacted(), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(stdout, "%s: %s %s", u.Redacted(), resp.Status, body)
	if resp.StatusCode != http.StatusOK {
		return exitCode(1)
	}
	return nil
}
