// Package httpapi is the sync API of "da serve": an authenticated HTTP
// front for the same sync requests "da sync" publishes.
//
//	POST /api/sync/trigger   {"source": "demo", "tables": [...], "full_refresh": false}
//	GET  /api/sync/runs/{id} the run's status and per-table results
//	GET  /healthz            liveness, public
//
// Every /api route needs "Authorization: Bearer <token>"; with no token
// configured the API answers 503.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
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
	locks jetstream.KeyValue
	log   *slog.Logger
}

// New returns the API; token empty disables the /api routes (503).
func New(js jetstream.JetStream, cfg *config.Config, token string, log *slog.Logger) *API {
	if log == nil {
		log = slog.Default()
	}
	return &API{js: js, cfg: cfg, token: token, log: log.With("service", "api")}
}

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /api/sync/trigger", a.auth(a.trigger))
	mux.HandleFunc("GET /api/sync/runs/{id}", a.auth(a.status))
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

func (a *API) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.token == "" {
			fail(w, http.StatusServiceUnavailable, "the sync API is disabled: set %s", TokenEnv)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="agnes"`)
			fail(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		next(w, r)
	}
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

// trigger publishes one sync request per source (all configured sources
// when none is named) and answers 202 with the run ids, or 409 when a
// named source is already syncing.
func (a *API) trigger(w http.ResponseWriter, r *http.Request) {
	var req triggerRequest
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	// An empty body triggers every source.
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		fail(w, http.StatusBadRequest, "invalid JSON body: %v", err)
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
			RequestedAt: time.Now().UTC(), RequestedBy: "api"}
		if err := sr.Validate(); err != nil {
			fail(w, http.StatusBadRequest, "%v", err)
			return
		}
		if e, err := locks.Get(ctx, src); err == nil {
			if len(sources) == 1 {
				writeJSON(w, http.StatusConflict, map[string]string{"error": "a sync of this source is already running", "source": src, "run_id": string(e.Value())})
				return
			}
			out = append(out, triggered{RunID: string(e.Value()), Source: src, Status: "already_running"})
			continue
		}
		b, _ := json.Marshal(sr)
		if _, err := a.js.Publish(ctx, schemas.SyncSubject(src), b, jetstream.WithMsgID(sr.RunID)); err != nil {
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

func (a *API) lockBucket(ctx context.Context) (jetstream.KeyValue, error) {
	if a.locks != nil {
		return a.locks, nil
	}
	kv, err := natsbus.KeyValue(ctx, a.js, schemas.LockBucket)
	if err != nil {
		return nil, err
	}
	a.locks = kv
	return kv, nil
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

// status reads the run's events so far.
func (a *API) status(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := uuid.Parse(id); err != nil {
		fail(w, http.StatusBadRequest, "run id %q is not a UUID", id)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	cons, err := a.js.OrderedConsumer(ctx, schemas.EventStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"agnes.events.*." + id + ".>"}})
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "the bus is unavailable: %v", err)
		return
	}
	st := RunStatus{RunID: id, Status: "queued"}
	seen := 0
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(300*time.Millisecond))
		if err != nil {
			fail(w, http.StatusServiceUnavailable, "read run events: %v", err)
			return
		}
		n := 0
		for m := range batch.Messages() {
			n++
			ev, err := schemas.DecodeEvent(m.Data())
			if err != nil {
				continue
			}
			st.Source = ev.Source
			switch ev.Type {
			case schemas.EventRunStarted:
				st.Status, st.Tables = "running", ev.Tables
			case schemas.EventRunDone:
				st.Status, st.Results = "writing", ev.Results
			case schemas.EventExtractPublished:
				st.Status, st.Results, st.Path = "published", ev.Results, ev.Path
			case schemas.EventRunFailed:
				st.Status, st.Error = "failed", ev.Error
			case schemas.EventRunRejected:
				st.Status, st.Error = "rejected", ev.Error
			}
		}
		seen += n
		if n == 0 {
			break
		}
	}
	if seen == 0 {
		fail(w, http.StatusNotFound, "no run %s (runs are kept 7 days; a run just triggered may still be queued)", id)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
