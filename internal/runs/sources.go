package runs

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/schemas"
)

// SourceRef is a configured source.
type SourceRef struct{ Name, Connector string }

// SourceRefs are the sources cfg configures.
func SourceRefs(cfg *config.Config) []SourceRef {
	var refs []SourceRef
	for _, s := range cfg.Sources {
		refs = append(refs, SourceRef{Name: s.Name, Connector: s.Connector})
	}
	return refs
}

// LastRun is a source's newest run.
type LastRun struct {
	ID      string     `json:"id"`
	Status  Status     `json:"status"`
	EndedAt *time.Time `json:"ended_at"`
}

// SourceStatus is one source in "da status" and GET /api/sources.
type SourceStatus struct {
	Name      string `json:"name"`
	Connector string `json:"connector"`
	// LastSuccessAt is when the newest published run ended; FreshnessS the
	// seconds since. Both null until a run is published (within the
	// history's retention).
	LastSuccessAt *time.Time `json:"last_success_at"`
	FreshnessS    *float64   `json:"freshness_s"`
	LastRun       *LastRun   `json:"last_run"`
	// NextRunAt is when a schedule runs the source next (null: none).
	NextRunAt *time.Time `json:"next_run_at"`
}

// Sources summarises the history of each configured source, at now.
func (s *Store) Sources(ctx context.Context, sources []SourceRef, now time.Time) ([]SourceStatus, error) {
	all, err := s.All(ctx, "")
	if err != nil {
		return nil, err
	}
	bySource := map[string][]Record{}
	for _, r := range all {
		bySource[r.Source] = append(bySource[r.Source], r)
	}
	out := make([]SourceStatus, 0, len(sources))
	for _, src := range sources {
		st := SourceStatus{Name: src.Name, Connector: src.Connector}
		rs := bySource[src.Name]
		slices.SortFunc(rs, newer)
		if len(rs) > 0 {
			st.LastRun = &LastRun{ID: rs[0].RunID, Status: rs[0].Status, EndedAt: rs[0].EndedAt}
		}
		for _, r := range rs {
			if r.Status == Published && r.EndedAt != nil && (st.LastSuccessAt == nil || r.EndedAt.After(*st.LastSuccessAt)) {
				st.LastSuccessAt = r.EndedAt
			}
		}
		if st.LastSuccessAt != nil {
			f := now.Sub(*st.LastSuccessAt).Seconds()
			st.FreshnessS = &f
		}
		out = append(out, st)
	}
	return out, nil
}

// PublishedTable is a table as its newest published run left it.
type PublishedTable struct {
	Source      string     `json:"source"`
	Table       string     `json:"table"`
	Rows        int64      `json:"rows"`
	Bytes       int64      `json:"bytes"`
	RunID       string     `json:"run_id"`
	PublishedAt *time.Time `json:"published_at"`
}

// Tables lists the tables of source (every source when empty) as the
// newest published run that wrote each left them, by source and table.
func (s *Store) Tables(ctx context.Context, source string) ([]PublishedTable, error) {
	all, err := s.All(ctx, source)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all, newer)
	seen := map[string]bool{}
	out := []PublishedTable{}
	for _, r := range all {
		if r.Status != Published {
			continue
		}
		for _, t := range r.Tables {
			key := r.Source + "." + t.Name
			if t.Status != schemas.StatusDone || seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, PublishedTable{Source: r.Source, Table: t.Name, Rows: t.Rows, Bytes: t.Bytes, RunID: r.RunID, PublishedAt: r.EndedAt})
		}
	}
	slices.SortFunc(out, func(a, b PublishedTable) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Table, b.Table))
	})
	return out, nil
}
