package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus/natstest"
	"github.com/agnes-ai/connector-kit/internal/tokens"
	"github.com/nats-io/nats.go/jetstream"
)

const bootstrap = "boot-s3cret"

func testAPI(t *testing.T) (jetstream.JetStream, *API, *httptest.Server) {
	t.Helper()
	js := natstest.MustStart(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	a := New(js, cfg, bootstrap, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return js, a, srv
}

func do(t *testing.T, method, url, token, body string, hdr ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// makeToken creates a token over HTTP as the bootstrap admin.
func makeToken(t *testing.T, url, name string, role tokens.Role) string {
	t.Helper()
	code, b := do(t, "POST", url+"/api/tokens", bootstrap, `{"name":"`+name+`","role":"`+string(role)+`","expires_in":"30d"}`)
	var out struct {
		Name, Role, Token string
		ExpiresAt         *time.Time `json:"expires_at"`
	}
	if code != http.StatusCreated || json.Unmarshal(b, &out) != nil || out.Token == "" || out.Name != name || out.ExpiresAt == nil {
		t.Fatalf("create token %s: %d %s", name, code, b)
	}
	return out.Token
}

// TestRouteRoles: every /api route refuses a request without a valid
// token (401) and one whose role is below the route's (403), and lets the
// route's role through. The routes come from Routes, the only way a route
// is served (checked on the package's source below), so a new route
// without a role fails here.
func TestRouteRoles(t *testing.T) {
	_, a, srv := testAPI(t)
	// Each route's forged tokens come from an address of their own, so
	// the throttle of failed authentications (TestThrottle) stays out.
	a.TrustProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	byRole := map[tokens.Role]string{}
	for _, r := range tokens.Roles {
		byRole[r] = makeToken(t, srv.URL, "t_"+string(r), r)
	}
	// Each route's role, as the threat model (docs/security.md) states it:
	// a route added without a line here fails.
	want := map[string]tokens.Role{
		"GET /api/sync/runs":              tokens.Viewer,
		"GET /api/sync/runs/{id}":         tokens.Viewer,
		"GET /api/sources":                tokens.Viewer,
		"GET /api/tables":                 tokens.Viewer,
		"GET /api/dead-letters":           tokens.Viewer,
		"GET /api/metrics":                tokens.Viewer,
		"POST /api/sync/trigger":          tokens.Operator,
		"POST /api/sync/runs/{id}/cancel": tokens.Operator,
		"GET /api/tokens":                 tokens.Admin,
		"POST /api/tokens":                tokens.Admin,
		"DELETE /api/tokens/{name}":       tokens.Admin,
		"GET /api/audit":                  tokens.Admin,
	}
	routes := a.Routes()
	if len(routes) != len(want) {
		t.Errorf("%d routes served, %d expected", len(routes), len(want))
	}
	for i, rt := range routes {
		from := fmt.Sprintf("198.51.100.%d", i+1)
		if w, ok := want[rt.Method+" "+rt.Pattern]; !ok || w != rt.Role || rt.handler == nil {
			t.Errorf("%s %s: role %q, want %q (listed: %v), handler set %v", rt.Method, rt.Pattern, rt.Role, w, ok, rt.handler != nil)
			continue
		}
		path := strings.NewReplacer("{id}", "7d0f1b8e-0000-4000-8000-000000000000", "{name}", "nobody").Replace(rt.Pattern)
		body := ""
		if rt.Method == "POST" {
			body = `{"source":"nope"}`
		}
		for _, tok := range []string{"", "agt_t_viewer_" + strings.Repeat("0", 64), "guess"} {
			if code, b := do(t, rt.Method, srv.URL+path, tok, body, "X-Forwarded-For", from); code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q: %d %s, want 401", rt.Method, path, tok, code, b)
			}
		}
		for _, role := range tokens.Roles {
			code, b := do(t, rt.Method, srv.URL+path, byRole[role], body)
			switch {
			case !role.Allows(rt.Role) && code != http.StatusForbidden:
				t.Errorf("%s %s as %s: %d %s, want 403", rt.Method, path, role, code, b)
			case role.Allows(rt.Role) && (code == http.StatusUnauthorized || code == http.StatusForbidden):
				t.Errorf("%s %s as %s: %d %s, want it let through", rt.Method, path, role, code, b)
			}
		}
	}
	if got := strings.Join(routePatterns(t), " | "); got != `GET /healthz | rt.Method+" "+rt.Pattern` {
		t.Errorf("the package serves routes other than Routes' and /healthz: %s", got)
	}
}

// routePatterns lists the first argument of every Handle and HandleFunc
// call in the package's source.
func routePatterns(t *testing.T) []string {
	files, _ := filepath.Glob("*.go")
	var out []string
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		file, err := parser.ParseFile(fset, f, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok && (sel.Sel.Name == "Handle" || sel.Sel.Name == "HandleFunc") {
				arg := string(src[fset.Position(call.Args[0].Pos()).Offset:fset.Position(call.Args[0].End()).Offset])
				if s, err := strconv.Unquote(arg); err == nil {
					arg = s
				}
				out = append(out, arg)
			}
			return true
		})
	}
	slices.Sort(out)
	return out
}

// TestTokenAPI: create, list and revoke over HTTP; a revocation through
// one API replica is seen by another at its next request; bad input is
// refused with the reason.
func TestTokenAPI(t *testing.T) {
	js, _, srv := testAPI(t)
	replica := httptest.NewServer(New(js, config.Default(), "", slog.New(slog.DiscardHandler)).Handler())
	defer replica.Close()
	op := makeToken(t, srv.URL, "ci", tokens.Operator)
	op2 := makeToken(t, srv.URL, "ci_2", tokens.Operator)
	if code, b := do(t, "GET", replica.URL+"/api/sync/runs", op, ""); code != http.StatusOK {
		t.Fatalf("the operator token on the second replica: %d %s", code, b)
	}
	code, b := do(t, "GET", srv.URL+"/api/tokens", bootstrap, "")
	var list []tokens.Token
	if code != 200 || json.Unmarshal(b, &list) != nil || len(list) != 2 || list[0].Name != "ci" || list[0].LastUsedAt == nil ||
		strings.Contains(string(b), op[len(op)-64:]) || strings.Contains(string(b), `"hash"`) {
		t.Fatalf("list: %d %s", code, b)
	}
	if code, b := do(t, "DELETE", srv.URL+"/api/tokens/ci", bootstrap, ""); code != http.StatusOK {
		t.Fatalf("revoke: %d %s", code, b)
	}
	if code, b := do(t, "GET", replica.URL+"/api/sync/runs", op, ""); code != http.StatusUnauthorized {
		t.Errorf("a revoked token on the second replica: %d %s, want 401", code, b)
	}
	if code, _ := do(t, "GET", replica.URL+"/api/sync/runs", op2, ""); code != http.StatusOK {
		t.Errorf("the rotated token after the old one's revocation: %d", code)
	}
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/api/tokens", `{"name":"ci_2","role":"viewer"}`, http.StatusConflict},
		{"POST", "/api/tokens", `{"name":"x","role":"root"}`, http.StatusBadRequest},
		{"POST", "/api/tokens", `{"name":"../x","role":"viewer"}`, http.StatusBadRequest},
		{"POST", "/api/tokens", `{"name":"x","role":"viewer","expires_in":"soon"}`, http.StatusBadRequest},
		{"POST", "/api/tokens", `{"name":"x","role":"viewer","secret":"mine"}`, http.StatusBadRequest},
		{"DELETE", "/api/tokens/ci", ``, http.StatusNotFound},
		{"GET", "/api/audit?limit=0", ``, http.StatusBadRequest},
		{"GET", "/api/dead-letters?source=../x", ``, http.StatusBadRequest},
	} {
		if code, b := do(t, c.method, srv.URL+c.path, bootstrap, c.body); code != c.want || !strings.Contains(string(b), `"error"`) {
			t.Errorf("%s %s %s: %d %s, want %d with an error", c.method, c.path, c.body, code, b, c.want)
		}
	}
	code, b = do(t, "GET", srv.URL+"/api/audit", bootstrap, "")
	var entries []tokens.Entry
	if code != 200 || json.Unmarshal(b, &entries) != nil {
		t.Fatalf("audit: %d %s", code, b)
	}
	var actions []string
	for _, e := range entries {
		actions = append(actions, e.Action+":"+e.Token+":"+e.By)
	}
	if want := "token_created:ci:bootstrap token_created:ci_2:bootstrap token_new_ip:ci:ci token_revoked:ci:bootstrap token_new_ip:ci_2:ci_2"; strings.Join(actions, " ") != want {
		t.Errorf("audit %v, want %s", actions, want)
	}
}

// TestForwardedFor: a token's use is noted from the first hop of
// X-Forwarded-For only when the request comes from a trusted proxy.
func TestForwardedFor(t *testing.T) {
	js, a, srv := testAPI(t)
	a.TrustProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	untrusting := httptest.NewServer(New(js, config.Default(), "", slog.New(slog.DiscardHandler)).Handler())
	defer untrusting.Close()
	v := makeToken(t, srv.URL, "dash", tokens.Viewer)
	do(t, "GET", untrusting.URL+"/api/sources", v, "", "X-Forwarded-For", "198.51.100.7")
	do(t, "GET", srv.URL+"/api/sources", v, "", "X-Forwarded-For", "203.0.113.9, 10.0.0.1")
	do(t, "GET", srv.URL+"/api/sources", v, "", "X-Forwarded-For", "not-an-ip")
	store, err := tokens.Open(context.Background(), js, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := store.Audit().List(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, e := range entries {
		if e.Action == tokens.ActionNewIP {
			ips = append(ips, e.IP)
		}
	}
	if strings.Join(ips, " ") != "127.0.0.1 203.0.113.9" {
		t.Errorf("new-address audits from %v, want 127.0.0.1 (the untrusting replica ignores the header) then 203.0.113.9", ips)
	}
}

// TestThrottle: an address whose tokens are refused FailBurst times gets
// 429 with Retry-After, even with a good token, without its token being
// looked at; another address is not held back.
func TestThrottle(t *testing.T) {
	_, a, srv := testAPI(t)
	a.TrustProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	good := makeToken(t, srv.URL, "dash", tokens.Viewer)
	for i := range FailBurst {
		if code, b := do(t, "GET", srv.URL+"/api/sources", fmt.Sprintf("guess%d", i), "", "X-Forwarded-For", "192.0.2.1"); code != http.StatusUnauthorized {
			t.Fatalf("try %d: %d %s, want 401", i, code, b)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/api/sources", nil)
	req.Header.Set("Authorization", "Bearer "+good)
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if wait, _ := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != http.StatusTooManyRequests || wait < 1 || wait > int(FailEvery.Seconds()) {
		t.Errorf("after %d refusals: %d, Retry-After %q; want 429 and a wait of 1 to %v s", FailBurst, resp.StatusCode, resp.Header.Get("Retry-After"), FailEvery.Seconds())
	}
	if code, b := do(t, "GET", srv.URL+"/api/sources", good, "", "X-Forwarded-For", "192.0.2.2"); code != http.StatusOK {
		t.Errorf("another address: %d %s", code, b)
	}
	var th throttle
	now := time.Now()
	for range FailBurst {
		th.failed("x", now)
	}
	if th.blocked("x", now) == 0 || th.blocked("x", now.Add(FailEvery)) != 0 {
		t.Errorf("a try is given back after %v", FailEvery)
	}
}
