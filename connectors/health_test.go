package connectors

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type checking struct {
	fake
	err error
}

func (c checking) Check(context.Context) error { return c.err }

func healthManifest(t *testing.T, endpoint string) *Manifest {
	t.Helper()
	m, err := ParseManifest("test/connector.yaml", []byte(`name: hc
version: "1.0.0"
description: health checked
capabilities: [discover]
auth:
  type: token
  env_vars:
    - name: HC_TOKEN
      required: true
config:
  url: {type: string, required: true}
health_check:
  endpoint: "`+endpoint+`"
  headers:
    X-Token: "${HC_TOKEN}"
`))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCheck(t *testing.T) {
	const secret = "hc-secret-token-value"
	t.Setenv("HC_TOKEN", secret)
	status := http.StatusOK
	var gotPath, gotToken string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotToken = r.URL.Path, r.Header.Get("X-Token")
		w.WriteHeader(status)
	}))
	defer srv.Close()
	m := healthManifest(t, "${url}/v2/storage/tokens/verify")
	cfg := Config{"url": srv.URL + "/"}
	t.Run("OK", func(t *testing.T) {
		if err := Check(context.Background(), m, cfg, fake{}, nil); err != nil {
			t.Fatal(err)
		}
		if gotPath != "/v2/storage/tokens/verify" || gotToken != secret {
			t.Errorf("request %s with token %q", gotPath, gotToken)
		}
	})
	t.Run("ErrStatus", func(t *testing.T) {
		status = http.StatusUnauthorized
		defer func() { status = http.StatusOK }()
		err := Check(context.Background(), m, cfg, fake{}, nil)
		if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "answered 401") || !strings.Contains(err.Error(), "HC_TOKEN") {
			t.Errorf("got %v, want ErrUnhealthy naming the status and the token variable", err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Error("the error contains the token")
		}
	})
	t.Run("ErrUnreachable", func(t *testing.T) {
		err := Check(context.Background(), m, Config{"url": "http://127.0.0.1:1"}, fake{}, nil)
		if !errors.Is(err, ErrUnhealthy) || strings.Contains(err.Error(), secret) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("ErrMissingConfig", func(t *testing.T) {
		err := Check(context.Background(), healthManifest(t, "${host}/x"), cfg, fake{}, nil)
		if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "host") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("ErrChecker", func(t *testing.T) {
		err := Check(context.Background(), m, cfg, checking{err: errors.New("token expired")}, nil)
		if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "token expired") {
			t.Errorf("got %v", err)
		}
	})
}
