// Package httpapi is the sync API of "da serve": an authenticated HTTP
// front for the same sync requests "da sync" publishes.
//
//	POST /api/sync/trigger   {"source": "demo", "tables": [...], "full_refresh": false}
//	GET  /api/sync/runs      run records, newest first (?source=&status=&limit=&cursor=)
//	GET  /api/sync/runs/{id} the run's record
//	GET  /api/sources        each source's last run and freshness
//	POST /api/sync/runs/{id}/cancel  stop a run (202; 409 when it has ended)
//	GET  /healthz            liveness, public
//
//	GET  /api/tables         each source's tables as last published
//	GET  /api/dead-letters   batches that could not be written (?source=&limit=)
//	GET  /api/metrics        the Prometheus metrics
//	GET|POST /api/tokens, DELETE /api/tokens/{name}, GET /api/audit  (admin)
//
// Every /api route needs "Authorization: Bearer <token>" of a role that
// allows it (Routes): a stored token (internal/tokens) or the bootstrap
// admin token $DA_ADMIN_TOKEN.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/internal/schedules"
	"github.com/agnes-ai/connector-kit/internal/tokens"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

// TokenEnv names the environment variable holding the admin token.
const TokenEnv = "DA_ADMIN_TOKEN"

// maxBody bounds request bodies.
const maxBody = 64 << 10

// API serves the sync routes.
type API struct {
	js    jetstream.JetStream
	cfg   *config.Config
	token string
	log   *slog.Logger
	// trusted are the proxies whose X-Forwarded-For is believed.
	trusted []netip.Prefix
	// throttle slows down addresses whose tokens are refused.
	throttle throttle

	// mu guards the handles below, opened on first use.
	mu     sync.Mutex
	locks  jetstream.KeyValue
	events jetstream.Stream
	runs   *runs.Store
	tokens *tokens.Store
}

// New returns the API. token, when not empty, is a bootstrap admin
// credential ($DA_ADMIN_TOKEN) besides the stored tokens.
func New(js jetstream.JetStream, cfg *config.Config, token string, log *slog.Logger) *API {
	if log == nil {
		log = slog.Default()
	}
	return &API{js: js, cfg: cfg, token: token, log: log.With("service", "api")}
}

// Route is one /api route and the least role a token needs for it.
type Route struct {
	Method, Pattern string
	Role            tokens.Role
	handler         http.HandlerFunc
}

// Routes are every /api route: the only way one is served, so none is
// served without its role's check (TestRouteRoles).
func (a *API) Routes() []Route {
	return []Route{
		{"GET", "/api/sync/runs", tokens.Viewer, a.list},
		{"GET", "/api/sync/runs/{id}", tokens.Viewer, a.status},
		{"GET", "/api/sources", tokens.Viewer, a.sources},
		{"GET", "/api/tables", tokens.Viewer, a.tables},
		{"GET", "/api/dead-letters", tokens.Viewer, a.deadLetters},
		{"GET", "/api/metrics", tokens.Viewer, metrics.Handler().ServeHTTP},
		{"POST", "/api/sync/trigger", tokens.Operator, a.trigger},
		{"POST", "/api/sync/runs/{id}/cancel", tokens.Operator, a.cancel},
		{"GET", "/api/tokens", tokens.Admin, a.listTokens},
		{"POST", "/api/tokens", tokens.Admin, a.createToken},
		{"DELETE", "/api/tokens/{name}", tokens.Admin, a.revokeToken},
		{"GET", "/api/audit", tokens.Admin, a.audit},
	}
}

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	for _, rt := range a.Routes() {
		mux.HandleFunc(rt.Method+" "+rt.Pattern, a.auth(rt.Role, rt.handler))
	}
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// decodeBody is the one reader of a JSON request body: at most maxBody
// bytes, one JSON value of v's shape, no unknown field and nothing after
// it. It returns the status to answer with when the body is refused.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, emptyOK bool) (int, error) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) && emptyOK {
		return 0, nil
	}
	if err == nil {
		// Anything after the value, even a second value, is a mistake.
		var extra json.RawMessage
		if err = dec.Decode(&extra); errors.Is(err, io.EOF) {
			return 0, nil
		}
		if err == nil {
			err = errors.New("trailing data after the JSON body")
		}
		if tooLarge := (*http.MaxBytesError)(nil); !errors.As(err, &tooLarge) {
			return http.StatusBadRequest, fmt.Errorf("invalid JSON body: trailing data after the JSON value; send exactly one JSON object")
		}
	}
	if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
		return http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", maxBody)
	}
	return http.StatusBadRequest, fmt.Errorf("invalid JSON body: %v", err)
}

type triggerRequest struct {
	Source      string   `json:"source"`
	Tables      []string `json:"tables"`
	FullRefresh bool     `json:"full_refresh"`
}

type triggered struct {
	RunID  string `json:"run_id"`
	Source string `json:"source"`
	Status string `json:"status"`
}

// queue records the run as queued before its request is published.
func (a *API) queue(ctx context.Context, req schemas.SyncRequest) error {
	store, err := a.runStore(ctx)
	if err != nil {
		return err
	}
	return store.Queue(ctx, req)
}

// runStore is the run history, opened on first use.
func (a *API) runStore(ctx context.Context) (*runs.Store, error) {
	return opened(&a.mu, &a.runs, func() (*runs.Store, error) { return runs.Open(ctx, a.js) })
}

// opened is *slot, opened by open on first use (under mu); a failed open
// is tried again by the next caller.
func opened[T comparable](mu *sync.Mutex, slot *T, open func() (T, error)) (T, error) {
	mu.Lock()
	defer mu.Unlock()
	var zero T
	if *slot != zero {
		return *slot, nil
	}
	v, err := open()
	if err != nil {
		return zero, err
	}
	*slot = v
	return v, nil
}

// nonNil is s, or an empty list for nil: a JSON answer is [] rather than
// null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// list answers a page of run records, newest first, as a JSON list; the
// next page's cursor is in X-Next-Cursor and a Link header.
func (a *API) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := runs.Filter{Source: q.Get("source"), Status: runs.Status(q.Get("status")), Cursor: q.Get("cursor")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			fail(w, http.StatusBadRequest, "limit %q is not a number between 1 and %d", schemas.Clip(l), runs.MaxLimit)
			return
		}
		f.Limit = n
	}
	if err := f.Validate(); err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	a.answerRuns(w, r, func(ctx context.Context, store *runs.Store) (any, error) {
		page, err := store.List(ctx, f)
		if err != nil {
			return nil, err
		}
		if page.Next != "" {
			next := url.Values{}
			for k, v := range q {
				next[k] = v
			}
			next.Set("cursor", page.Next)
			w.Header().Set("X-Next-Cursor", page.Next)
			w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode()))
		}
		return page.Runs, nil
	})
}

// sources answers each configured source's last run and freshness.
func (a *API) sources(w http.ResponseWriter, r *http.Request) {
	a.answerRuns(w, r, func(ctx context.Context, store *runs.Store) (any, error) {
		return schedules.Sources(ctx, a.js, store, a.cfg, time.Now().UTC())
	})
}

// answerRuns answers what fn reads from the run history, or 503 when the
// bus does not answer.
func (a *API) answerRuns(w http.ResponseWriter, r *http.Request, fn func(context.Context, *runs.Store) (any, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	store, err := a.runStore(ctx)
	if err == nil {
		var v any
		if v, err = fn(ctx, store); err == nil {
			writeJSON(w, http.StatusOK, v)
			return
		}
	}
	fail(w, http.StatusServiceUnavailable, "run history: %v", err)
}

// cancel stops a run: 202 once the cancel is on the bus, 409 when the run
// has ended, 404 when there is no such run.
func (a *API) cancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := schemas.ValidateRunID(id); err != nil || id == schemas.StreamRun {
		fail(w, http.StatusBadRequest, "run id %q is not a UUID", schemas.Clip(id))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	store, err := a.runStore(ctx)
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "the bus is unavailable: %v", err)
		return
	}
	rec, err := store.Cancel(ctx, a.log, id)
	switch {
	case errors.Is(err, runs.ErrNotFound):
		fail(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, runs.ErrFinished):
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error(), "run_id": id, "status": string(rec.Status)})
	case err != nil:
		fail(w, http.StatusServiceUnavailable, "%v", err)
	default:
		a.log.Info("sync cancelled", "run", id, "source", rec.Source)
		writeJSON(w, http.StatusAccepted, map[string]string{"run_id": id, "source": rec.Source, "status": "cancelling"})
	}
}

// recordAnswer is a run's record with its tables also in the shape of
// the results of run events (results), as this route answered before.
type recordAnswer struct {
	runs.Record
	Results []schemas.TableResult `json:"results"`
}

// record answers the run's record when the history has one.
func (a *API) record(ctx context.Context, w http.ResponseWriter, id string) bool {
	store, err := a.runStore(ctx)
	if err != nil {
		return false
	}
	rec, err := store.Find(ctx, id)
	if err != nil {
		return false
	}
	ans := recordAnswer{Record: rec, Results: []schemas.TableResult{}}
	for _, t := range rec.Tables {
		ans.Results = append(ans.Results, schemas.TableResult{Table: t.Name, Status: t.Status, Rows: t.Rows, SizeBytes: t.Bytes,
			SchemaChanges: t.SchemaChanges, Error: t.Error})
	}
	writeJSON(w, http.StatusOK, ans)
	return true
}

// trigger publishes one sync request per source (all configured sources
// when none is named) and answers 202 with the run ids, or 409 when a
// named source is already syncing.
func (a *API) trigger(w http.ResponseWriter, r *http.Request) {
	var req triggerRequest
	// An empty body triggers every source.
	if status, err := decodeBody(w, r, &req, true); err != nil {
		fail(w, status, "%v", err)
		return
	}
	var sources []string
	if req.Source != "" {
		if _, err := a.cfg.Source(req.Source); err != nil {
			if schemas.ValidateName("source", req.Source) != nil {
				fail(w, http.StatusBadRequest, "%v", schemas.ValidateName("source", req.Source))
				return
			}
			fail(w, http.StatusNotFound, "%v", err)
			return
		}
		sources = []string{req.Source}
	} else {
		if len(req.Tables) > 0 {
			fail(w, http.StatusBadRequest, "tables need a source")
			return
		}
		for _, s := range a.cfg.Sources {
			sources = append(sources, s.Name)
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	locks, err := a.lockBucket(ctx)
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "the bus is unavailable: %v", err)
		return
	}
	var out []triggered
	for _, src := range sources {
		sr := schemas.SyncRequest{RunID: uuid.NewString(), Source: src, Tables: req.Tables, FullRefresh: req.FullRefresh,
			RequestedAt: time.Now().UTC(), RequestedBy: schemas.TriggerAPI}
		if err := sr.Validate(); err != nil {
			fail(w, http.StatusBadRequest, "%v", err)
			return
		}
		// Taking the source's lock for the new run and publishing are one
		// step: of concurrent triggers exactly one creates the lock (the
		// producer then finds it held by its own run), the others get 409.
		running, err := a.claim(ctx, locks, src, sr.RunID)
		if err != nil {
			fail(w, http.StatusServiceUnavailable, "lock source %s: %v", src, err)
			return
		}
		if running != "" {
			if len(sources) == 1 {
				writeJSON(w, http.StatusConflict, map[string]string{"error": "a sync of this source is already running", "source": src, "run_id": running})
				return
			}
			out = append(out, triggered{RunID: running, Source: src, Status: "already_running"})
			continue
		}
		b, _ := json.Marshal(sr)
		if err := a.queue(ctx, sr); err != nil {
			_ = natsbus.ReleaseRun(context.WithoutCancel(ctx), locks, src, sr.RunID)
			fail(w, http.StatusServiceUnavailable, "record run of %s: %v", src, err)
			return
		}
		if _, err := a.js.Publish(ctx, schemas.SyncSubject(src), b, jetstream.WithMsgID(sr.RunID)); err != nil {
			_ = natsbus.ReleaseRun(context.WithoutCancel(ctx), locks, src, sr.RunID)
			fail(w, http.StatusServiceUnavailable, "publish sync request: %v", err)
			return
		}
		a.log.Info("sync triggered", "run", sr.RunID, "source", src)
		out = append(out, triggered{RunID: sr.RunID, Source: src, Status: "queued"})
	}
	if req.Source != "" {
		writeJSON(w, http.StatusAccepted, out[0])
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"runs": out})
}

// claim takes the source's lock for run (runs.Store.Lock): "" when taken,
// else the running run's id.
func (a *API) claim(ctx context.Context, locks jetstream.KeyValue, source, run string) (string, error) {
	store, err := a.runStore(ctx)
	if err != nil {
		return "", err
	}
	return store.Lock(ctx, a.log, locks, source, run)
}

func (a *API) lockBucket(ctx context.Context) (jetstream.KeyValue, error) {
	return opened(&a.mu, &a.locks, func() (jetstream.KeyValue, error) { return natsbus.KeyValue(ctx, a.js, schemas.LockBucket) })
}

// RunStatus is the answer of GET /api/sync/runs/{id}.
type RunStatus struct {
	RunID   string                `json:"run_id"`
	Source  string                `json:"source,omitempty"`
	Status  string                `json:"status"` // queued, running, published, failed, rejected
	Error   string                `json:"error,omitempty"`
	Tables  []string              `json:"tables,omitempty"`
	Results []schemas.TableResult `json:"results,omitempty"`
	Path    string                `json:"path,omitempty"`
}

// statusEvents are the events that decide a run's status, in the order a
// run normally makes them.
var statusEvents = []schemas.EventType{schemas.EventRunStarted, schemas.EventRunDone,
	schemas.EventExtractPublished, schemas.EventRunFailed, schemas.EventRunRejected}

// status answers with the run's status from the last event of each kind
// that decides it, read with direct gets: no request creates a consumer.
func (a *API) status(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := schemas.ValidateRunID(id); err != nil || id == schemas.StreamRun {
		fail(w, http.StatusBadRequest, "run id %q is not a UUID", id)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	// The run's record; runs from before the history, from its events.
	if a.record(ctx, w, id) {
		return
	}
	stream, err := a.eventStream(ctx)
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "the bus is unavailable: %v", err)
		return
	}
	st := RunStatus{RunID: id, Status: "queued"}
	var terminal uint64
	seen := false
	for _, t := range statusEvents {
		m, err := stream.GetLastMsgForSubject(ctx, "agnes.events.*."+id+"."+string(t))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			fail(w, http.StatusServiceUnavailable, "read run events: %v", err)
			return
		}
		ev, err := schemas.DecodeEvent(m.Data)
		if err == nil {
			err = schemas.CheckEventSubject(m.Subject, ev)
		}
		if err != nil || ev.RunID != id {
			a.log.Warn("skipping malformed event", "subject", m.Subject, "err", err)
			continue
		}
		seen = true
		st.Source = ev.Source
		switch t {
		case schemas.EventRunStarted:
			st.Tables = ev.Tables
			if terminal == 0 && st.Status == "queued" {
				st.Status = "running"
			}
		case schemas.EventRunDone:
			if terminal == 0 {
				st.Status, st.Results = "writing", ev.Results
			}
		default:
			// The latest terminal event wins.
			if m.Sequence < terminal {
				continue
			}
			terminal = m.Sequence
			st.Error, st.Path = "", ""
			switch t {
			case schemas.EventExtractPublished:
				st.Status, st.Results, st.Path = "published", ev.Results, ev.Path
			case schemas.EventRunFailed:
				st.Status, st.Error = "failed", ev.Error
			case schemas.EventRunRejected:
				st.Status, st.Error = "rejected", ev.Error
			}
		}
	}
	if !seen {
		fail(w, http.StatusNotFound, "no run %s (runs are kept 7 days; a run just triggered may still be queued)", id)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) eventStream(ctx context.Context) (jetstream.Stream, error) {
	return opened(&a.mu, &a.events, func() (jetstream.Stream, error) { return a.js.Stream(ctx, schemas.EventStream) })
}
