package connectors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Checker is implemented by connectors that can test their connection
// cheaply, reading no data (Airbyte's check): credentials valid, source
// reachable. A connector without it is checked by its manifest's
// health_check alone.
type Checker interface {
	Check(ctx context.Context) error
}

// ErrUnhealthy marks a failed health check.
var ErrUnhealthy = errors.New("health check failed")

var placeholderRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// Check tests a connector before extraction: the manifest's health_check
// request, if it declares one, then the connector's own Check, if it has
// one. An error wraps ErrUnhealthy and never contains a secret.
func Check(ctx context.Context, m *Manifest, cfg Config, c Connector, client *http.Client) error {
	if m.HealthCheck != nil {
		if err := manifestCheck(ctx, m, cfg, client); err != nil {
			return err
		}
	}
	if ch, ok := c.(Checker); ok {
		if err := ch.Check(ctx); err != nil {
			return fmt.Errorf("%w: connector %s: %w", ErrUnhealthy, m.Name, err)
		}
	}
	return nil
}

// manifestCheck makes the manifest's health_check request. ${key} in the
// endpoint and headers is a config value (endpoint: URL-safe) or, in
// headers only, one of the manifest's auth.env_vars.
func manifestCheck(ctx context.Context, m *Manifest, cfg Config, client *http.Client) error {
	hc := m.HealthCheck
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: connector %s (%s): %s", ErrUnhealthy, m.Name, m.Path, fmt.Sprintf(format, args...))
	}
	var missing []string
	endpoint := placeholderRE.ReplaceAllStringFunc(hc.Endpoint, func(p string) string {
		k := placeholderRE.FindStringSubmatch(p)[1]
		v, ok := cfg[k]
		if !ok {
			missing = append(missing, k)
			return ""
		}
		return strings.TrimRight(fmt.Sprint(v), "/")
	})
	if len(missing) > 0 {
		return fail("health_check.endpoint names config %s, which is not set", strings.Join(missing, ", "))
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fail("health_check.endpoint %q is not an http(s) URL", endpoint)
	}
	var secrets []string
	headers := http.Header{}
	for name, tmpl := range hc.Headers {
		v := placeholderRE.ReplaceAllStringFunc(tmpl, func(p string) string {
			k := placeholderRE.FindStringSubmatch(p)[1]
			if slices.ContainsFunc(m.Auth.EnvVars, func(e EnvVar) bool { return e.Name == k }) {
				s := os.Getenv(k)
				if s == "" {
					missing = append(missing, "$"+k)
				}
				secrets = append(secrets, s)
				return s
			}
			if v, ok := cfg[k]; ok {
				return fmt.Sprint(v)
			}
			missing = append(missing, k)
			return ""
		})
		headers.Set(name, v)
	}
	if len(missing) > 0 {
		return fail("health_check.headers need %s, which is not set", strings.Join(missing, ", "))
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(hc.TimeoutSeconds)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, strings.ToUpper(hc.Method), u.String(), nil)
	if err != nil {
		return fail("%v", err)
	}
	req.Header = headers
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		msg := err.Error()
		for _, s := range secrets {
			if s != "" {
				msg = strings.ReplaceAll(msg, s, "***")
			}
		}
		return fail("%s %s: %s", req.Method, redact(u), msg)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != hc.ExpectStatus {
		hint := ""
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			hint = " (check the credentials in " + envNames(m) + ")"
		}
		return fail("%s %s answered %d, want %d%s", req.Method, redact(u), resp.StatusCode, hc.ExpectStatus, hint)
	}
	return nil
}

// redact drops the query and user info of a URL for messages.
func redact(u *url.URL) string {
	c := *u
	c.User, c.RawQuery = nil, ""
	return c.String()
}

func envNames(m *Manifest) string {
	var out []string
	for _, e := range m.Auth.EnvVars {
		out = append(out, e.Name)
	}
	if len(out) == 0 {
		return "the connector's config"
	}
	return strings.Join(out, ", ")
}
