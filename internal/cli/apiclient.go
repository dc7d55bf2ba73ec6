package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/redact"
)

// API client environment.
const (
	APIURLEnv = "DA_API_URL"
	TokenEnv  = "DA_TOKEN"
)

// apiFlags are --api and --token: a command that has them goes through a
// da serve's sync API instead of the bus when an API URL is given.
type apiFlags struct {
	url, token string
}

func (f *apiFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "api", "", "a da serve's sync API (http://host:port) to go through instead of the bus (default $"+APIURLEnv+")")
	fs.StringVar(&f.token, "token", "", "the API token for --api (default $"+TokenEnv+"; a flag shows in the process list, so prefer the variable)")
}

// tokenAPI is the sync API a command goes through, with its token.
type tokenAPI struct {
	url, token string
}

// client is the API to go through (nil: none named, use the bus). It
// checks the URL and finds the token, saying where it came from.
func (f *apiFlags) client(stderr io.Writer) (*tokenAPI, error) {
	raw := f.url
	if raw == "" {
		raw = os.Getenv(APIURLEnv)
	}
	if raw == "" {
		if f.token != "" || os.Getenv(TokenEnv) != "" {
			fmt.Fprintf(stderr, "note: the API token is used only with --api URL or $%s; going through the bus\n", APIURLEnv)
		}
		return nil, nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, usageError{fmt.Errorf("--api %s is not an http(s) URL such as http://127.0.0.1:8081 (no credentials in it)", redact.URL(raw))}
	}
	tok, from := f.token, "--token"
	if tok == "" {
		tok, from = os.Getenv(TokenEnv), "$"+TokenEnv
	}
	if tok == "" {
		return nil, usageError{fmt.Errorf("--api needs an API token: set $%s (or pass --token)", TokenEnv)}
	}
	redact.Register(tok)
	fmt.Fprintf(stderr, "using %s with the API token from %s\n", u.Redacted(), from)
	return &tokenAPI{url: strings.TrimRight(u.String(), "/"), token: tok}, nil
}

// call sends a request to the API and decodes a 2xx answer into out; any
// other answer is an error with the API's reason. It returns the answer's
// headers.
func (t *tokenAPI) call(ctx context.Context, method, path string, body, out any) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, t.url+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+t.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		json.Unmarshal(b, &e)
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, redact.Terminal(e.Error))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return nil, fmt.Errorf("%s %s: the answer is not what a sync API sends: %w", method, path, err)
		}
	}
	return resp.Header, nil
}
