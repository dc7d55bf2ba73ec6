package httpapi

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/tokens"
	"github.com/agnes-ai/connector-kit/schemas"
)

// BootstrapName is how the bootstrap admin token ($DA_ADMIN_TOKEN) is
// named in audits.
const BootstrapName = "bootstrap"

// TrustProxies makes the API believe the first hop of X-Forwarded-For in
// requests that come from one of these networks (a reverse proxy of
// yours); from anywhere else the header is ignored.
func (a *API) TrustProxies(nets []netip.Prefix) { a.trusted = nets }

// caller is who made a request.
type caller struct {
	name string
	role tokens.Role
	ip   string
}

type callerKey struct{}

func callerOf(r *http.Request) caller {
	c, _ := r.Context().Value(callerKey{}).(caller)
	return c
}

// auth lets a request through when its bearer token is valid and its
// role allows need: 401 without a valid token, 403 with too small a role,
// 503 when the token store cannot be read.
func (a *API) auth(need tokens.Role, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := caller{ip: a.clientIP(r)}
		if wait := a.throttle.blocked(c.ip, time.Now()); wait > 0 {
			tooMany(w, wait)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok || got == "":
			unauthorized(w, "missing bearer token: send \"Authorization: Bearer <token>\" (make one with da auth token create)")
			return
		case a.token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) == 1:
			c.name, c.role = BootstrapName, tokens.Admin
		default:
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			defer cancel()
			store, err := a.tokenStore(ctx)
			var t tokens.Token
			if err == nil {
				t, err = store.Authenticate(ctx, got, c.ip)
			}
			if errors.Is(err, tokens.ErrInvalid) {
				a.throttle.failed(c.ip, time.Now())
				a.log.Warn("API token refused", "ip", c.ip, "path", r.URL.Path)
				unauthorized(w, "invalid, revoked or expired token")
				return
			}
			if err != nil {
				fail(w, http.StatusServiceUnavailable, "cannot check the token: %v", err)
				return
			}
			c.name, c.role = t.Name, t.Role
		}
		if !c.role.Allows(need) {
			fail(w, http.StatusForbidden, "token %s has the role %s; %s %s needs %s", c.name, c.role, r.Method, r.URL.Path, need)
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	}
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="agnes"`)
	fail(w, http.StatusUnauthorized, "%s", msg)
}

// clientIP is the address a request came from: the peer's, or the first
// hop of X-Forwarded-For when the peer is a trusted proxy and the hop is
// an address.
func (a *API) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	peer = peer.Unmap()
	xff := r.Header.Get("X-Forwarded-For")
	if xff == "" {
		return peer.String()
	}
	for _, n := range a.trusted {
		if n.Contains(peer) {
			first, _, _ := strings.Cut(xff, ",")
			if hop, err := netip.ParseAddr(strings.TrimSpace(first)); err == nil {
				return hop.Unmap().String()
			}
			break
		}
	}
	return peer.String()
}

// tokenStore is the token store, opened on first use.
func (a *API) tokenStore(ctx context.Context) (*tokens.Store, error) {
	return opened(&a.mu, &a.tokens, func() (*tokens.Store, error) { return tokens.Open(ctx, a.js, a.log) })
}

type createTokenRequest struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	ExpiresIn string `json:"expires_in"`
}

// createToken makes a token: 201 with the token, shown only now.
func (a *API) createToken(w http.ResponseWriter, r *http.Request) {
	var req createTokenRequest
	if status, err := decodeBody(w, r, &req, false); err != nil {
		fail(w, status, "%v", err)
		return
	}
	role, err := tokens.ParseRole(req.Role)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	ttl := tokens.DefaultExpiry
	if req.ExpiresIn != "" {
		if ttl, err = tokens.ParseExpiry(req.ExpiresIn); err != nil {
			fail(w, http.StatusBadRequest, "expires_in: %v", err)
			return
		}
	}
	store, err := a.tokenStore(r.Context())
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "the bus is unavailable: %v", err)
		return
	}
	c := callerOf(r)
	secret, t, err := store.Create(r.Context(), req.Name, role, ttl, c.name, c.ip)
	switch {
	case errors.Is(err, schemas.ErrInvalidName):
		fail(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, tokens.ErrExists):
		fail(w, http.StatusConflict, "%v", err)
	case err != nil:
		fail(w, http.StatusServiceUnavailable, "%v", err)
	default:
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusCreated, map[string]any{"name": t.Name, "role": t.Role, "token": secret, "expires_at": t.ExpiresAt})
	}
}

// listTokens answers every token's record, never a token.
func (a *API) listTokens(w http.ResponseWriter, r *http.Request) {
	store, err := a.tokenStore(r.Context())
	var list []tokens.Token
	if err == nil {
		list, err = store.List(r.Context())
	}
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(list))
}

// revokeToken deletes a token: every replica refuses it from its next
// request on.
func (a *API) revokeToken(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	store, err := a.tokenStore(r.Context())
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "the bus is unavailable: %v", err)
		return
	}
	c := callerOf(r)
	err = store.Revoke(r.Context(), name, c.name, c.ip)
	switch {
	case errors.Is(err, schemas.ErrInvalidName):
		fail(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, tokens.ErrNotFound):
		fail(w, http.StatusNotFound, "%v", err)
	case err != nil:
		fail(w, http.StatusServiceUnavailable, "%v", err)
	default:
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "revoked": true})
	}
}

// limitParam is the ?limit= of a listing: def when absent, 400 when not a
// number from 1 to most.
func limitParam(w http.ResponseWriter, r *http.Request, def, most int) (int, bool) {
	l := r.URL.Query().Get("limit")
	if l == "" {
		return def, true
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 1 || n > most {
		fail(w, http.StatusBadRequest, "limit %s is not a number between 1 and %d", schemas.Clip(l), most)
		return 0, false
	}
	return n, true
}

// audit answers the last audit entries, oldest first.
func (a *API) audit(w http.ResponseWriter, r *http.Request) {
	limit, ok := limitParam(w, r, 100, tokens.MaxList)
	if !ok {
		return
	}
	store, err := a.tokenStore(r.Context())
	var list []tokens.Entry
	if err == nil {
		list, err = store.Audit().List(r.Context(), limit)
	}
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(list))
}

// tables answers each source's tables as the newest published run left
// them (?source= for one).
func (a *API) tables(w http.ResponseWriter, r *http.Request) {
	source := r.URL.Query().Get("source")
	if source != "" {
		if err := schemas.ValidateName("source", source); err != nil {
			fail(w, http.StatusBadRequest, "%v", err)
			return
		}
	}
	a.answerRuns(w, r, func(ctx context.Context, store *runs.Store) (any, error) {
		return store.Tables(ctx, source)
	})
}

// deadLetters answers the last dead letters (?source=, ?limit=).
func (a *API) deadLetters(w http.ResponseWriter, r *http.Request) {
	limit, ok := limitParam(w, r, 100, natsbus.MaxDeadLetters)
	if !ok {
		return
	}
	source := r.URL.Query().Get("source")
	if source != "" {
		if err := schemas.ValidateName("source", source); err != nil {
			fail(w, http.StatusBadRequest, "%v", err)
			return
		}
	}
	list, err := natsbus.DeadLetters(r.Context(), a.js, source, limit)
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	for i := range list {
		list[i].Reason = redact.String(list[i].Reason)
	}
	writeJSON(w, http.StatusOK, nonNil(list))
}
