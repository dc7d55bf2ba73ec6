package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
)

// Health is the answer of /healthz and /readyz.
type Health struct {
	// Status is ok (/healthz), ready or not_ready (/readyz).
	Status string `json:"status"`
	// Checks says, per check, "ok" or what is wrong.
	Checks map[string]string `json:"checks,omitempty"`
}

// consumers are the durable consumers each role reads, by stream.
func (s *Stack) consumers() [][2]string {
	var out [][2]string
	for _, role := range s.roles {
		switch role {
		case RoleProducer:
			out = append(out, [2]string{schemas.SyncStream, schemas.ProducerConsumer}, [2]string{schemas.HookStream, schemas.HookConsumer})
			if s.schedules {
				out = append(out, [2]string{schemas.ScheduleStream, schemas.SchedulerConsumer})
			}
		case RoleWriter:
			out = append(out, [2]string{schemas.DataStream, schemas.WriterConsumer})
			for i := range schemas.DataLanes {
				out = append(out, [2]string{schemas.DataStream, schemas.LaneConsumer(i)})
			}
		case RoleFinalizer:
			out = append(out, [2]string{schemas.EventStream, runs.RecorderConsumer})
		}
	}
	return out
}

// Ready checks what this process needs to do its work: the bus connected
// and answering, the durable consumers of its roles present, and the
// finalizer done replaying the events that were there when it started.
func (s *Stack) Ready(ctx context.Context) Health {
	h := Health{Status: "ready", Checks: map[string]string{}}
	fail := func(check, format string, args ...any) {
		h.Status, h.Checks[check] = "not_ready", fmt.Sprintf(format, args...)
	}
	h.Checks["bus"] = "ok"
	if st := s.NC.Status(); st != nats.CONNECTED {
		fail("bus", "not connected to NATS (%s)", st)
	} else if _, err := s.JS.AccountInfo(ctx); err != nil {
		fail("bus", "JetStream does not answer: %v", err)
	}
	if cs := s.consumers(); len(cs) > 0 {
		h.Checks["consumers"] = "ok"
		if h.Checks["bus"] == "ok" {
			for _, c := range cs {
				if _, err := s.JS.Consumer(ctx, c[0], c[1]); err != nil {
					fail("consumers", "consumer %s on %s: %v", c[1], c[0], err)
					break
				}
			}
		} else {
			fail("consumers", "unknown: the bus is not reachable")
		}
	}
	if s.Finalizer != nil {
		h.Checks["finalizer"] = "ok"
		if !s.Finalizer.CaughtUp() {
			fail("finalizer", "replaying the events that were there at start")
		}
	}
	return h
}

// HealthHandlers adds GET /healthz (liveness: the process answers) and GET
// /readyz (Ready; 503 when not ready) to mux.
func (s *Stack) HealthHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeHealth(w, http.StatusOK, Health{Status: "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
}

// readyz answers Ready: 200 when ready, else 503 saying why.
func (s *Stack) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	h := s.Ready(ctx)
	code := http.StatusOK
	if h.Status != "ready" {
		code = http.StatusServiceUnavailable
	}
	writeHealth(w, code, h)
}

func writeHealth(w http.ResponseWriter, code int, h Health) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(h)
}
